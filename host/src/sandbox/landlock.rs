//! Filesystem and network rules (Landlock): the disk image, the socket's directory and the
//! audit directories, and nothing else; no TCP bind or connect. Landlock applies to the
//! calling thread and every thread it starts afterwards.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};

use super::{Enforcement, SandboxError};

/// The newest Landlock ABI this code asks for; older kernels get what they support
/// (best effort), and the status says how much was enforced.
const ABI_WANTED: ABI = ABI::V5;

/// What the process needs to reach by path.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Allowed {
    /// The disk image, when it is opened by path (`None`: its fd was passed in, and no path
    /// is reachable at all).
    pub disk: Option<PathBuf>,
    /// Whether the image is opened read-only.
    pub read_only: bool,
    /// The socket path, when the process binds it. The socket is bound before the sandbox;
    /// its directory gets file removal only, to clean the socket up when the start fails
    /// after binding (neither thread's seccomp filter allows removal once serving).
    pub socket: Option<PathBuf>,
    /// Audit log base path and key file, when there is a log (their directories get file
    /// creation, writing and removal for rotation and recovery).
    pub audit: Vec<PathBuf>,
}

/// The directory holding `p` (absolute).
pub fn dir_of(p: &Path) -> Result<PathBuf, SandboxError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|_| SandboxError::NoDirectory(p.to_path_buf()))?
            .join(p)
    };
    abs.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| SandboxError::NoDirectory(p.to_path_buf()))
}

/// Restricts this thread and the threads it starts later to `allowed`.
pub fn restrict(allowed: &Allowed) -> Result<Enforcement, SandboxError> {
    let abi = ABI_WANTED;
    let mut ruleset = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .create()?;
    if let Some(disk) = &allowed.disk {
        let mut disk_access = AccessFs::from_read(abi);
        if !allowed.read_only {
            disk_access |= AccessFs::WriteFile;
        }
        ruleset = ruleset.add_rules(path_beneath_rules([disk], disk_access))?;
    }
    if let Some(socket) = &allowed.socket {
        let sock_access = AccessFs::RemoveFile;
        ruleset = ruleset.add_rules(path_beneath_rules([dir_of(socket)?], sock_access))?;
    }
    // Audit directories: read back the newest file on restart, write, create (rotation,
    // key), truncate (torn-tail recovery), remove (a partial rotation redone).
    let audit_access = AccessFs::from_read(abi)
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::RemoveFile
        | AccessFs::Truncate;
    for p in &allowed.audit {
        ruleset = ruleset.add_rules(path_beneath_rules([dir_of(p)?], audit_access))?;
    }
    let status = ruleset.restrict_self()?;
    if !status.no_new_privs {
        super::privileges::set_no_new_privs()?;
    }
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    })
}

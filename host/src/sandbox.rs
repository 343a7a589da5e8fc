//! The device process's sandbox, applied before any thread that touches guest data starts.
//!
//! Filesystem (Landlock): the process may reach its disk image, its socket's directory and
//! its audit log's directories, and nothing else; TCP bind and connect are denied outright
//! (no network rule is granted). Privileges: `no_new_privs`. Landlock applies to the calling
//! thread and every thread it starts afterwards, so [`apply`] runs before the audit writer
//! and the vfio-user server start.
//!
//! On a kernel without Landlock the process says so in its log, and refuses to start when
//! the operator asked for `--require-sandbox`.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, RulesetAttr, RulesetCreatedAttr, RulesetError,
    RulesetStatus, ABI,
};
use thiserror::Error;

/// The newest Landlock ABI this code asks for; older kernels get what they support
/// (best effort), and the status says how much was enforced.
const ABI_WANTED: ABI = ABI::V5;

/// Errors applying the sandbox.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// Landlock refused the ruleset.
    #[error("landlock ruleset")]
    Landlock(#[from] RulesetError),
    /// A path to allow does not exist or has no parent directory.
    #[error("sandbox path {0} has no directory")]
    NoDirectory(PathBuf),
    /// The sandbox is required and the kernel cannot enforce it.
    #[error("the sandbox is required (--require-sandbox) but the kernel enforces {0}")]
    NotEnforced(&'static str),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("setting no_new_privs failed")]
    NoNewPrivs(#[source] std::io::Error),
}

/// What the process needs to reach.
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    /// The disk image.
    pub disk: PathBuf,
    /// Whether the image is opened read-only.
    pub read_only: bool,
    /// The socket path (its directory gets socket creation and removal).
    pub socket: PathBuf,
    /// Audit log base path and key file, when there is a log (their directories get file
    /// creation, writing and removal for rotation and recovery).
    pub audit: Vec<PathBuf>,
}

/// How much of the sandbox the kernel enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Enforcement {
    /// Everything asked for.
    Full,
    /// Part of it (an older Landlock ABI).
    Partial,
    /// Nothing: no Landlock in this kernel.
    None,
}

impl Enforcement {
    /// A word for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "fully enforced",
            Self::Partial => "partially enforced",
            Self::None => "not enforced (no Landlock)",
        }
    }
}

fn dir_of(p: &Path) -> Result<PathBuf, SandboxError> {
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

/// Applies the sandbox to this thread and the threads it starts later. With `required`,
/// anything short of full enforcement is an error.
pub fn apply(allowed: &Allowed, required: bool) -> Result<Enforcement, SandboxError> {
    let abi = ABI_WANTED;
    let mut disk_access = AccessFs::from_read(abi);
    if !allowed.read_only {
        disk_access |= AccessFs::WriteFile;
    }
    // Socket directory: create the socket (under a temporary name), rename it into place,
    // remove a stale one.
    let sock_dir = dir_of(&allowed.socket)?;
    let sock_access = AccessFs::MakeSock | AccessFs::RemoveFile;
    let mut ruleset = landlock::Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules([&allowed.disk], disk_access))?
        .add_rules(path_beneath_rules([&sock_dir], sock_access))?;
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
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    };
    if !status.no_new_privs {
        set_no_new_privs()?;
    }
    if required && enforcement != Enforcement::Full {
        return Err(SandboxError::NotEnforced(enforcement.name()));
    }
    Ok(enforcement)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: no exec can ever gain privileges.
pub fn set_no_new_privs() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Tries to open `path` for reading under the sandbox: `Ok` when the sandbox lets it
/// through, the error otherwise. For operators checking a deployment, and for tests.
pub fn probe(path: &Path) -> Result<(), std::io::Error> {
    std::fs::File::open(path).map(drop)
}

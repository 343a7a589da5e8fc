//! The device process's sandbox. A hostile guest drives this process, so a bug in it must
//! give the attacker nothing beyond the pool, the disk image, the socket and the audit log.
//!
//! The layers, in the order the process applies them (`docs/sandbox.md` has the whole
//! picture and how to check a running host):
//!
//! 1. [`privileges`]: every capability dropped, and the switch to an unprivileged user
//!    when started as root (`--user`), before any thread starts;
//! 2. [`landlock`]: the filesystem restricted to the disk image, the socket's directory
//!    and the audit directories, no TCP; `no_new_privs`;
//! 3. [`limits`]: an address-space bound sized from the pool;
//! 4. [`seccomp`]: an allow-list per thread (the device thread, the audit writer); any other
//!    call kills the process.
//!
//! On a kernel without Landlock the process says so in its log, and refuses to start when
//! the operator asked for `--require-sandbox`.

pub mod landlock;
pub mod limits;
pub mod privileges;
pub mod seccomp;

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors applying the sandbox.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// Landlock refused the ruleset.
    #[error("landlock ruleset")]
    Landlock(#[from] ::landlock::RulesetError),
    /// A path to allow does not exist or has no parent directory.
    #[error("sandbox path {0} has no directory")]
    NoDirectory(PathBuf),
    /// The sandbox is required and the kernel cannot enforce it.
    #[error("the sandbox is required (--require-sandbox) but the kernel enforces {0}")]
    NotEnforced(&'static str),
    /// The user to run as is unusable.
    #[error("user {0}")]
    User(String),
    /// Dropping privileges failed.
    #[error("dropping privileges: {0}")]
    Privileges(String),
    /// A resource limit could not be set.
    #[error("resource limit: {0}")]
    Limits(String),
    /// A seccomp filter could not be built.
    #[error("seccomp filter")]
    Seccomp(#[from] swiotlb_shared::seccomp::SeccompError),
    /// A seccomp filter could not be installed.
    #[error("installing the {role} seccomp filter")]
    SeccompInstall {
        /// The thread role whose filter it is.
        role: &'static str,
        /// What seccompiler said.
        #[source]
        source: seccompiler::Error,
    },
}

/// How much of the filesystem sandbox the kernel enforces.
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

/// Applies the filesystem sandbox to this thread and the threads it starts later. With
/// `required`, anything short of full enforcement is an error.
pub fn restrict_files(
    allowed: &landlock::Allowed,
    required: bool,
) -> Result<Enforcement, SandboxError> {
    let enforcement = landlock::restrict(allowed)?;
    if required && enforcement != Enforcement::Full {
        return Err(SandboxError::NotEnforced(enforcement.name()));
    }
    Ok(enforcement)
}

/// Tries to open `path` for reading under the sandbox: `Ok` when the sandbox lets it
/// through, the error otherwise. For operators checking a deployment, and for tests.
pub fn probe(path: &Path) -> Result<(), std::io::Error> {
    std::fs::File::open(path).map(drop)
}

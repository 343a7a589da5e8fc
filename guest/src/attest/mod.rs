//! Attestation on the driver's side: what produces the evidence that binds this driver's
//! session, and the mailbox through which the device receives it.
//!
//! - [`Attester`]: the platform that signs a REPORT_DATA; [`choose`] builds the one asked
//!   for.
//! - [`ConfigfsTsm`] (`configfs_tsm.rs`): Linux configfs-tsm, one interface for SEV-SNP and
//!   TDX.
//! - [`Emulated`] (`emulated.rs`): the emulated platform for CI, signed by a test-only key.
//! - [`mailbox`]: the device's side of the protocol as the driver speaks it: read the nonce,
//!   build the transcript, hand over the evidence, read the verdict.

mod configfs_tsm;
mod emulated;
pub mod mailbox;

use std::path::{Path, PathBuf};

use swiotlb_shared::transcript::PlatformKind;
use thiserror::Error;

pub use configfs_tsm::{ConfigfsTsm, TSM_REPORT_DIR};
pub use emulated::Emulated;

/// Errors producing evidence.
#[derive(Debug, Error)]
pub enum AttestError {
    /// No attester can run here.
    #[error("no attestation platform: {0}")]
    Unavailable(String),
    /// The platform interface failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The platform returned something unusable.
    #[error("platform returned unusable evidence: {0}")]
    Bad(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AttestError {
    let what = what.into();
    move |source| AttestError::Io { what, source }
}

/// Produces evidence over a REPORT_DATA.
pub trait Attester: Send + Sync {
    /// The platform that signs.
    fn platform(&self) -> PlatformKind;
    /// Evidence (encoded [`swiotlb_attest::Evidence`]) whose REPORT_DATA is `report_data`.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError>;
}

/// Which attester to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttesterChoice {
    /// configfs-tsm if present; otherwise none.
    Auto,
    /// SEV-SNP through configfs-tsm.
    Snp,
    /// TDX through configfs-tsm.
    Tdx,
    /// The emulated platform with this ARK key.
    Emulated(PathBuf),
}

/// Builds the attester asked for. `Auto` without a platform returns `Ok(None)`: the device
/// then decides (a device that requires attestation will refuse I/O).
pub fn choose(choice: &AttesterChoice) -> Result<Option<Box<dyn Attester>>, AttestError> {
    let root = Path::new(TSM_REPORT_DIR);
    Ok(match choice {
        AttesterChoice::Auto => match ConfigfsTsm::open(root, None) {
            Ok(t) => Some(Box::new(t)),
            Err(AttestError::Unavailable(_)) => None,
            Err(e) => return Err(e),
        },
        AttesterChoice::Snp => Some(Box::new(ConfigfsTsm::open(root, Some(PlatformKind::Snp))?)),
        AttesterChoice::Tdx => Some(Box::new(ConfigfsTsm::open(root, Some(PlatformKind::Tdx))?)),
        AttesterChoice::Emulated(key) => Some(Box::new(Emulated::from_key_file(key)?)),
    })
}

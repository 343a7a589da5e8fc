//! Attestation evidence that binds what a SWIOTLB virtio pair negotiated: SEV-SNP reports,
//! TDX quotes, and the EMULATED platform of CI.
//!
//! Layered as go-sev-guest is:
//! - **parse**, strictly ([`snp::report`], [`tdx::quote`], [`evidence`]): sizes, versions,
//!   reserved "must be zero" ranges; never panics on any bytes;
//! - **verify** ([`snp::verify`], [`tdx::verify`], [`emulated`]): signatures and certificate
//!   chains up to roots pinned in this binary (AMD ARK/ASK/ASVK for Milan, Genoa, Turin;
//!   the Intel SGX Root CA), and the rules that bind a report to its certificate;
//! - **validate** ([`policy`]): what the verifier wants (platforms, debug, VMPL, minimum
//!   TCB, measurements, REPORT_DATA, HOST_DATA, RTMRs); unset options are not checked and
//!   every mismatch is reported at once.
//!
//! Beside them: [`verdict`], the outcome with every reason; [`x509`], the little of X.509
//! the certificate chains need (parsing, PEM stacks, one signature checked by another);
//! [`time`], Unix seconds from the clock or from RFC 3339 text (`--now`).
//!
//! [`Verifier`] runs all three on an evidence blob and returns a [`Verdict`] with every
//! reason. The REPORT_DATA the device expects is the transcript hash of
//! [`swiotlb_shared::transcript`]. `docs/attestation.md` says what each verifier checks and
//! what it does not.

pub mod emulated;
pub mod evidence;
pub mod policy;
pub mod snp;
pub mod tdx;
pub mod time;
pub mod verdict;
mod verifier;
pub mod x509;

pub use evidence::Evidence;
pub use policy::Policy;
pub use swiotlb_shared::transcript::PlatformKind;
pub use verdict::{Reason, ReasonKind, Verdict};
pub use verifier::Verifier;

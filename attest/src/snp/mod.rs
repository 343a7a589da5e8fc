//! AMD SEV-SNP: [`report`] (strict parse), [`verify`] (chain to the pinned AMD roots,
//! signature, TCB and CHIP_ID binding), [`certs`] (roots, VCEK/VLEK certificates), [`tcb`]
//! (TCB layouts).

pub mod certs;
pub mod report;
pub mod tcb;
pub mod verify;

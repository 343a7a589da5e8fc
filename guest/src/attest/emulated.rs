//! The emulated attester for CI: evidence in the real byte layout, signed by a test-only
//! key; every verdict on it says EMULATED, and a device accepts it only when its policy says
//! so.

use std::fs;
use std::path::Path;

use swiotlb_attest::emulated::{ReportOptions, Signer};
use swiotlb_shared::transcript::PlatformKind;

use super::{io, AttestError, Attester};

/// The emulated platform.
pub struct Emulated {
    signer: Signer,
    measurement: [u8; 48],
}

impl Emulated {
    /// An emulated attester signing with the emulated ARK in `key` (PKCS#8, as
    /// `swiotlb-attest emulated-keygen` writes it).
    pub fn from_key_file(key: &Path) -> Result<Self, AttestError> {
        let pk8 = fs::read(key).map_err(io(format!("reading emulated key {}", key.display())))?;
        let signer = Signer::from_pkcs8(&pk8).map_err(|e| AttestError::Bad(e.to_string()))?;
        Ok(Self::with_signer(signer))
    }

    /// An emulated attester with an existing signer.
    pub fn with_signer(signer: Signer) -> Self {
        // The "launch measurement" of an emulated guest: the hash of this driver's name and
        // version, so policies can pin it like a real one.
        let d = ring::digest::digest(
            &ring::digest::SHA384,
            concat!("swiotlb-guest ", env!("CARGO_PKG_VERSION")).as_bytes(),
        );
        let mut measurement = [0u8; 48];
        measurement.copy_from_slice(d.as_ref());
        Self {
            signer,
            measurement,
        }
    }
}

impl Attester for Emulated {
    fn platform(&self) -> PlatformKind {
        PlatformKind::Emulated
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        self.signer
            .sign_report(report_data, &self.measurement, &ReportOptions::default())
            .and_then(|e| {
                e.encode()
                    .map_err(|e| swiotlb_attest::emulated::EmulatedError::Key(e.to_string()))
            })
            .map_err(|e| AttestError::Bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulated_attester_produces_evidence_the_verifier_accepts() {
        let signer = Signer::generate().unwrap();
        let v = signer.verifier();
        let a = Emulated::with_signer(signer);
        let rd = [7u8; 64];
        let ev = a.evidence(&rd).unwrap();
        let policy = swiotlb_attest::Policy {
            allow_emulated: true,
            ..Default::default()
        };
        let verifier = swiotlb_attest::Verifier::new(policy).with_emulated(v);
        assert!(verifier.verify(&ev, &|_| Some(rd)).accepted);
        assert!(!verifier.verify(&ev, &|_| Some([8u8; 64])).accepted);
    }
}

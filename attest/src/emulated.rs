//! The EMULATED platform, for CI without SEV-SNP or TDX hardware. **Never evidence of a
//! confidential VM**: it proves only that someone holding the emulated ARK's private key
//! signed the report.
//!
//! It keeps the SEV-SNP byte layout, so the same parser, the same signature rules and the
//! same policy checks run on it, with a test-only key chain in place of AMD's:
//!
//! - the **emulated ARK**: an ECDSA P-384 key pair. `swiotlb-attest emulated-keygen` writes
//!   its private key (PKCS#8) and public key; the verifier pins the public key;
//! - the **emulated VCEK**: an ECDSA P-384 key pair made fresh by each [`Signer`], with a
//!   random CHIP_ID, certified by the ARK with an [`EmulatedCert`] (a fixed 296-byte
//!   structure, not X.509, so it cannot be mistaken for an AMD certificate);
//! - the report: version 2 SNP layout, SIGNING_KEY = VCEK, signed by the emulated VCEK over
//!   `[0, 0x2A0)` with R and S little-endian, exactly as AMD firmware signs.
//!
//! Evidence from a [`Signer`] carries the platform tag EMULATED; a verdict on it says
//! `"platform": "emulated"` and `"emulated": true`, and the policy refuses it unless
//! `allow_emulated` is set.
//!
//! Emulated VCEK certificate (all integers little-endian):
//!
//! ```text
//! offset  size  field
//! 0       16    magic "SWIOTLB-EMU-VCEK"
//! 16      4     version (1)
//! 20      4     reserved, zero
//! 24      8     TCB (SNP pre-Turin layout), equal to the report's REPORTED_TCB
//! 32      64    CHIP_ID, equal to the report's CHIP_ID
//! 96      97    VCEK public key, uncompressed P-384 point (0x04 || X || Y)
//! 193     7     reserved, zero
//! 200     96    ARK signature over [0, 200): ECDSA P-384 SHA-384, big-endian r || s
//! ```

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P384_SHA384_FIXED,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use swiotlb_shared::transcript::PlatformKind;

use crate::evidence::Evidence;
use crate::snp::report::{self, Report, SigningKey, REPORT_LEN, SIGNED_LEN};
use crate::snp::tcb::Tcb;
use crate::snp::verify::{check_binding, check_signature};
use crate::verdict::{Reason, ReasonKind};

/// Magic of an emulated VCEK certificate.
pub const CERT_MAGIC: [u8; 16] = *b"SWIOTLB-EMU-VCEK";
/// Version of the certificate format.
pub const CERT_VERSION: u32 = 1;
/// Size of an emulated VCEK certificate.
pub const CERT_LEN: usize = 296;
/// Bytes of the certificate covered by the ARK's signature.
pub const CERT_SIGNED_LEN: usize = 200;
/// Bytes of an uncompressed P-384 public key.
pub const PUBLIC_KEY_LEN: usize = 97;

/// The TCB the emulated platform reports (and certifies).
pub const EMULATED_TCB: Tcb = Tcb {
    fmc: None,
    bootloader: 1,
    tee: 1,
    snp: 1,
    microcode: 1,
};

/// Errors of the emulated platform.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EmulatedError {
    /// The key is not a P-384 PKCS#8 key, or randomness failed.
    #[error("emulated key: {0}")]
    Key(String),
    /// The public key is not an uncompressed P-384 point (97 bytes, or their hex).
    #[error("emulated ARK public key must be 97 bytes (0x04 || X || Y) or their hex")]
    PublicKey,
    /// The certificate is malformed.
    #[error("emulated VCEK certificate: {0}")]
    Cert(&'static str),
    /// The report options make an invalid report.
    #[error("emulated report")]
    Report(#[from] report::ReportError),
}

/// The emulated VCEK certificate's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatedCert {
    /// The certified TCB (raw, pre-Turin layout).
    pub tcb: u64,
    /// The certified CHIP_ID.
    pub chip_id: [u8; 64],
    /// The VCEK public key.
    pub vcek_public_key: [u8; PUBLIC_KEY_LEN],
}

impl EmulatedCert {
    fn signed_part(&self) -> [u8; CERT_SIGNED_LEN] {
        let mut b = [0u8; CERT_SIGNED_LEN];
        b[0..16].copy_from_slice(&CERT_MAGIC);
        b[16..20].copy_from_slice(&CERT_VERSION.to_le_bytes());
        b[24..32].copy_from_slice(&self.tcb.to_le_bytes());
        b[32..96].copy_from_slice(&self.chip_id);
        b[96..193].copy_from_slice(&self.vcek_public_key);
        b
    }

    /// Parses a certificate (strictly: size, magic, version, zero reserved bytes) and returns
    /// it with the signed bytes and the signature. The signature is not checked here.
    pub fn parse(bytes: &[u8]) -> Result<(Self, &[u8], &[u8]), EmulatedError> {
        if bytes.len() != CERT_LEN {
            return Err(EmulatedError::Cert("not 296 bytes"));
        }
        if bytes[0..16] != CERT_MAGIC {
            return Err(EmulatedError::Cert("bad magic"));
        }
        if bytes[16..20] != CERT_VERSION.to_le_bytes() {
            return Err(EmulatedError::Cert("unknown version"));
        }
        if bytes[20..24]
            .iter()
            .chain(&bytes[193..200])
            .any(|&b| b != 0)
        {
            return Err(EmulatedError::Cert("reserved bytes are not zero"));
        }
        let mut tcb = [0u8; 8];
        tcb.copy_from_slice(&bytes[24..32]);
        let mut chip_id = [0u8; 64];
        chip_id.copy_from_slice(&bytes[32..96]);
        let mut key = [0u8; PUBLIC_KEY_LEN];
        key.copy_from_slice(&bytes[96..193]);
        if key[0] != 4 {
            return Err(EmulatedError::Cert("VCEK key is not an uncompressed point"));
        }
        Ok((
            Self {
                tcb: u64::from_le_bytes(tcb),
                chip_id,
                vcek_public_key: key,
            },
            &bytes[..CERT_SIGNED_LEN],
            &bytes[CERT_SIGNED_LEN..],
        ))
    }
}

/// What goes into an emulated report besides REPORT_DATA and MEASUREMENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// Guest POLICY (bit 17 must be set; bit 19 is DEBUG).
    pub guest_policy: u64,
    /// VMPL.
    pub vmpl: u32,
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            host_data: [0; 32],
            // SMT allowed, reserved bit 17 set, debug off: what QEMU launches by default.
            guest_policy: report::POLICY_SMT | report::POLICY_RESERVED_ONE,
            vmpl: 0,
            family_id: [0; 16],
            image_id: [0; 16],
        }
    }
}

fn key_err(e: impl std::fmt::Display) -> EmulatedError {
    EmulatedError::Key(e.to_string())
}

/// The guest side of the emulated platform: signs reports like SEV-SNP firmware would, with
/// a fresh emulated VCEK certified by the emulated ARK.
pub struct Signer {
    rng: SystemRandom,
    ark_public_key: [u8; PUBLIC_KEY_LEN],
    vcek: EcdsaKeyPair,
    cert: Vec<u8>,
    chip_id: [u8; 64],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("emulated::Signer")
            .field("ark_public_key", &hex::encode(self.ark_public_key))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new emulated ARK private key, PKCS#8 DER (what `emulated-keygen` writes).
    pub fn generate_ark_pkcs8() -> Result<Vec<u8>, EmulatedError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(key_err)
    }

    /// The public key (uncompressed point) of an ARK PKCS#8 key.
    pub fn public_key_of(ark_pkcs8: &[u8]) -> Result<[u8; PUBLIC_KEY_LEN], EmulatedError> {
        let rng = SystemRandom::new();
        let ark = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, ark_pkcs8, &rng)
            .map_err(key_err)?;
        ark.public_key()
            .as_ref()
            .try_into()
            .map_err(|_| EmulatedError::PublicKey)
    }

    /// A signer with a fresh ARK (for tests that need no key files).
    pub fn generate() -> Result<Self, EmulatedError> {
        Self::from_pkcs8(&Self::generate_ark_pkcs8()?)
    }

    /// A signer whose VCEK (fresh, with a random CHIP_ID) is certified by the ARK
    /// `ark_pkcs8` (PKCS#8 DER, ECDSA P-384).
    pub fn from_pkcs8(ark_pkcs8: &[u8]) -> Result<Self, EmulatedError> {
        let rng = SystemRandom::new();
        let ark = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, ark_pkcs8, &rng)
            .map_err(key_err)?;
        let vcek_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .map_err(key_err)?;
        let vcek =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, vcek_pkcs8.as_ref(), &rng)
                .map_err(key_err)?;
        let mut chip_id = [0u8; 64];
        rng.fill(&mut chip_id).map_err(key_err)?;
        let cert = EmulatedCert {
            tcb: EMULATED_TCB.to_raw(false),
            chip_id,
            vcek_public_key: vcek
                .public_key()
                .as_ref()
                .try_into()
                .map_err(|_| EmulatedError::PublicKey)?,
        };
        let signed = cert.signed_part();
        let sig = ark.sign(&rng, &signed).map_err(key_err)?;
        let mut cert_bytes = signed.to_vec();
        cert_bytes.extend_from_slice(sig.as_ref());
        let ark_public_key = ark
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| EmulatedError::PublicKey)?;
        Ok(Self {
            rng,
            ark_public_key,
            vcek,
            cert: cert_bytes,
            chip_id,
        })
    }

    /// The ARK's public key: what a verifier pins.
    pub fn ark_public_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.ark_public_key
    }

    /// A verifier that trusts this signer's ARK.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            ark_public_key: self.ark_public_key,
        }
    }

    /// The emulated VCEK certificate.
    pub fn certificate(&self) -> &[u8] {
        &self.cert
    }

    /// Signs an emulated report of `report_data` and `measurement` and returns the evidence
    /// (platform tag EMULATED, the report, the emulated VCEK certificate).
    pub fn sign_report(
        &self,
        report_data: &[u8; 64],
        measurement: &[u8; 48],
        opts: &ReportOptions,
    ) -> Result<Evidence, EmulatedError> {
        let tcb = EMULATED_TCB.to_raw(false);
        let mut b = vec![0u8; REPORT_LEN];
        b[0x00..0x04].copy_from_slice(&2u32.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&opts.guest_policy.to_le_bytes());
        b[0x10..0x20].copy_from_slice(&opts.family_id);
        b[0x20..0x30].copy_from_slice(&opts.image_id);
        b[0x30..0x34].copy_from_slice(&opts.vmpl.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&report::SIG_ALGO_ECDSA_P384_SHA384.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&tcb.to_le_bytes());
        b[0x50..0x90].copy_from_slice(report_data);
        b[0x90..0xC0].copy_from_slice(measurement);
        b[0xC0..0xE0].copy_from_slice(&opts.host_data);
        b[0x180..0x188].copy_from_slice(&tcb.to_le_bytes());
        b[0x1A0..0x1E0].copy_from_slice(&self.chip_id);
        b[0x1E0..0x1E8].copy_from_slice(&tcb.to_le_bytes());
        b[0x1F0..0x1F8].copy_from_slice(&tcb.to_le_bytes());
        // Refuse options that make a report no verifier would parse.
        Report::parse(&b)?;
        let sig = self
            .vcek
            .sign(&self.rng, &b[..SIGNED_LEN])
            .map_err(key_err)?;
        let sig = sig.as_ref();
        for (i, off) in [report::SIG_R_OFFSET, report::SIG_S_OFFSET]
            .into_iter()
            .enumerate()
        {
            for j in 0..48 {
                b[off + j] = sig[i * 48 + 47 - j];
            }
        }
        Ok(Evidence {
            platform: PlatformKind::Emulated,
            report: b,
            endorsement: self.cert.clone(),
            chain: Vec::new(),
        })
    }
}

/// The device side of the emulated platform: trusts one emulated ARK public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    ark_public_key: [u8; PUBLIC_KEY_LEN],
}

impl Verifier {
    /// A verifier trusting `public_key`: 97 bytes (uncompressed P-384 point), or those
    /// bytes as hex text (what `emulated-keygen` writes to `ark.pub.hex`).
    pub fn new(public_key: &[u8]) -> Result<Self, EmulatedError> {
        let raw = if public_key.len() == PUBLIC_KEY_LEN {
            public_key.to_vec()
        } else {
            let text = std::str::from_utf8(public_key).map_err(|_| EmulatedError::PublicKey)?;
            hex::decode(text.trim()).map_err(|_| EmulatedError::PublicKey)?
        };
        let key: [u8; PUBLIC_KEY_LEN] = raw.try_into().map_err(|_| EmulatedError::PublicKey)?;
        if key[0] != 4 {
            return Err(EmulatedError::PublicKey);
        }
        Ok(Self {
            ark_public_key: key,
        })
    }

    /// The pinned ARK public key.
    pub fn public_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.ark_public_key
    }

    /// Verifies a parsed emulated report and its emulated VCEK certificate: the
    /// certificate's ARK signature, the report's VCEK signature, and the binding rules
    /// (TCB and CHIP_ID equal the certificate's). Returns every reason found.
    pub fn verify(&self, report: &Report, cert: &[u8]) -> Vec<Reason> {
        let mut reasons = Vec::new();
        let (parsed, signed, sig) = match EmulatedCert::parse(cert) {
            Ok(p) => p,
            Err(e) => {
                reasons.push(Reason::new(ReasonKind::Malformed, e.to_string()));
                return reasons;
            }
        };
        if UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &self.ark_public_key[..])
            .verify(signed, sig)
            .is_err()
        {
            reasons.push(Reason::new(
                ReasonKind::Chain,
                "emulated VCEK certificate is not signed by the trusted emulated ARK",
            ));
            return reasons;
        }
        if report.signing_key != SigningKey::Vcek {
            reasons.push(Reason::new(
                ReasonKind::SigningKey,
                format!(
                    "emulated report says it is signed by the {}, expected the (emulated) VCEK",
                    report.signing_key.name()
                ),
            ));
            return reasons;
        }
        reasons.extend(check_signature(
            report,
            &parsed.vcek_public_key,
            "emulated VCEK",
        ));
        reasons.extend(check_binding(
            report,
            &Tcb::from_raw(parsed.tcb, false),
            Some(&parsed.chip_id),
            false,
            "emulated VCEK",
        ));
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_report_verifies_under_its_ark_only() {
        let s = Signer::generate().unwrap();
        let ev = s
            .sign_report(&[7; 64], &[8; 48], &ReportOptions::default())
            .unwrap();
        assert_eq!(ev.platform, PlatformKind::Emulated);
        let r = Report::parse(&ev.report).unwrap();
        assert_eq!(r.report_data, [7; 64]);
        assert_eq!(r.measurement, [8; 48]);
        assert!(s.verifier().verify(&r, &ev.endorsement).is_empty());
        let other = Signer::generate().unwrap();
        let reasons = other.verifier().verify(&r, &ev.endorsement);
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].kind, ReasonKind::Chain);
    }

    #[test]
    fn a_vcek_of_the_same_ark_cannot_vouch_for_another_chip() {
        let ark = Signer::generate_ark_pkcs8().unwrap();
        let a = Signer::from_pkcs8(&ark).unwrap();
        let b = Signer::from_pkcs8(&ark).unwrap();
        let ev = a
            .sign_report(&[0; 64], &[0; 48], &ReportOptions::default())
            .unwrap();
        let r = Report::parse(&ev.report).unwrap();
        // b's certificate is genuine but certifies another key and chip.
        let kinds: Vec<_> = b
            .verifier()
            .verify(&r, b.certificate())
            .iter()
            .map(|x| x.kind)
            .collect();
        assert_eq!(kinds, vec![ReasonKind::Signature, ReasonKind::ChipId]);
    }

    #[test]
    fn certificate_is_strict() {
        let s = Signer::generate().unwrap();
        let c = s.certificate().to_vec();
        assert_eq!(c.len(), CERT_LEN);
        assert!(EmulatedCert::parse(&c).is_ok());
        for i in [0usize, 16, 20, 193, 199] {
            let mut bad = c.clone();
            bad[i] ^= 1;
            assert!(EmulatedCert::parse(&bad).is_err(), "byte {i}");
        }
        assert!(EmulatedCert::parse(&c[..CERT_LEN - 1]).is_err());
    }

    #[test]
    fn public_key_forms() {
        let s = Signer::generate().unwrap();
        let k = *s.ark_public_key();
        assert_eq!(Verifier::new(&k).unwrap().public_key(), &k);
        assert_eq!(
            Verifier::new(format!("{}\n", hex::encode(k)).as_bytes()).unwrap(),
            s.verifier()
        );
        assert!(Verifier::new(&k[1..]).is_err());
        assert_eq!(
            Signer::public_key_of(&Signer::generate_ark_pkcs8().unwrap())
                .unwrap()
                .len(),
            PUBLIC_KEY_LEN
        );
    }

    #[test]
    fn invalid_options_are_refused() {
        let s = Signer::generate().unwrap();
        let opts = ReportOptions {
            guest_policy: 0,
            ..ReportOptions::default()
        };
        assert!(matches!(
            s.sign_report(&[0; 64], &[0; 48], &opts),
            Err(EmulatedError::Report(_))
        ));
    }
}

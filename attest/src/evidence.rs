//! The evidence blob: what the guest places in the pool for the device to verify.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "SWEV"
//! 4       1     format version (1)
//! 5       1     platform tag: 1 SEV-SNP, 2 TDX, 3 EMULATED (transcript::PlatformKind)
//! 6       2     reserved, zero
//! 8       4     report length R (le32)       <= MAX_REPORT_LEN
//! 12      4     endorsement length E (le32)  <= MAX_ENDORSEMENT_LEN
//! 16      4     chain length C (le32)        <= MAX_CHAIN_LEN
//! 20      R     report: SNP/emulated report (1184 bytes) or TDX quote
//! 20+R    E     endorsement: VCEK/VLEK DER (SNP), emulated VCEK certificate (emulated),
//!               empty (TDX: the PCK chain is inside the quote)
//! 20+R+E  C     chain: optional PEM intermediates (SNP: ASK/ASVK then ARK), else empty
//! ```
//!
//! The total must be exactly `20 + R + E + C`. Decoding never panics and never allocates
//! more than the input it was given.

use swiotlb_shared::little_endian::u32_at;
use swiotlb_shared::transcript::PlatformKind;

/// Magic at offset 0.
pub const MAGIC: [u8; 4] = *b"SWEV";
/// Format version.
pub const FORMAT_VERSION: u8 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 20;

/// Largest report: an SNP report is 1184 bytes; a TDX v4 quote with its QE report, QE
/// authentication data and PEM PCK chain is about 5 KB (the Intel samples are 4.9-5.0 KB).
/// 32 KiB leaves room for longer chains without letting a peer make the device read much.
pub const MAX_REPORT_LEN: usize = 32 * 1024;
/// Largest endorsement certificate: a VCEK/VLEK is about 1.4 KB DER (RSA-4096 signature and
/// AMD's extensions); the emulated certificate is 296 bytes.
pub const MAX_ENDORSEMENT_LEN: usize = 8 * 1024;
/// Largest chain: AMD's ASK+ARK PEM is 4.6 KB; with an ASVK as well about 7 KB.
pub const MAX_CHAIN_LEN: usize = 16 * 1024;
/// Largest blob: the header and every part at its maximum (57,364 bytes, under the
/// device's 64 KiB evidence window).
pub const MAX_EVIDENCE_LEN: usize =
    HEADER_LEN + MAX_REPORT_LEN + MAX_ENDORSEMENT_LEN + MAX_CHAIN_LEN;

/// Errors of encoding or decoding evidence.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EvidenceError {
    /// Shorter than the header, or the lengths do not add up to the size.
    #[error("evidence is {got} bytes but its header says {want}")]
    Length {
        /// Actual size.
        got: usize,
        /// Size the header implies.
        want: usize,
    },
    /// Larger than [`MAX_EVIDENCE_LEN`].
    #[error("evidence is {0} bytes, larger than {MAX_EVIDENCE_LEN}")]
    TooLarge(usize),
    /// Wrong magic.
    #[error("evidence does not start with \"SWEV\"")]
    Magic,
    /// Unknown format version.
    #[error("evidence format version {0} is not supported (expected {FORMAT_VERSION})")]
    Version(u8),
    /// Unknown platform tag.
    #[error("evidence platform tag {0} is unknown")]
    Platform(u8),
    /// Reserved header bytes are not zero.
    #[error("evidence header reserved bytes are not zero")]
    Reserved,
    /// A part is longer than its limit.
    #[error("evidence {part} is {len} bytes, larger than its {max}-byte limit")]
    PartTooLarge {
        /// Which part.
        part: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A part the platform requires is empty, or one it forbids is present.
    #[error("{0}")]
    Shape(&'static str),
}

/// Evidence: a platform tag, the report or quote, and certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The platform that produced it.
    pub platform: PlatformKind,
    /// SNP/emulated report or TDX quote.
    pub report: Vec<u8>,
    /// VCEK/VLEK DER, or the emulated VCEK certificate; empty for TDX.
    pub endorsement: Vec<u8>,
    /// Optional PEM chain; empty when absent.
    pub chain: Vec<u8>,
}

impl Evidence {
    /// Checks limits and the shape each platform requires.
    pub fn check(&self) -> Result<(), EvidenceError> {
        for (part, len, max) in [
            ("report", self.report.len(), MAX_REPORT_LEN),
            ("endorsement", self.endorsement.len(), MAX_ENDORSEMENT_LEN),
            ("chain", self.chain.len(), MAX_CHAIN_LEN),
        ] {
            if len > max {
                return Err(EvidenceError::PartTooLarge { part, len, max });
            }
        }
        if self.report.is_empty() {
            return Err(EvidenceError::Shape("evidence has no report"));
        }
        match self.platform {
            PlatformKind::Snp | PlatformKind::Emulated if self.endorsement.is_empty() => Err(
                EvidenceError::Shape("SNP and emulated evidence need an endorsement certificate"),
            ),
            PlatformKind::Tdx if !self.endorsement.is_empty() || !self.chain.is_empty() => {
                Err(EvidenceError::Shape(
                    "TDX evidence carries its PCK chain in the quote: endorsement and chain must be empty",
                ))
            }
            PlatformKind::Emulated if !self.chain.is_empty() => Err(EvidenceError::Shape(
                "emulated evidence has no chain",
            )),
            _ => Ok(()),
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Result<Vec<u8>, EvidenceError> {
        self.check()?;
        let mut b = Vec::with_capacity(
            HEADER_LEN + self.report.len() + self.endorsement.len() + self.chain.len(),
        );
        b.extend_from_slice(&MAGIC);
        b.push(FORMAT_VERSION);
        b.push(self.platform as u8);
        b.extend_from_slice(&[0, 0]);
        // Each part is below its limit (checked above), far below u32::MAX.
        for part in [&self.report, &self.endorsement, &self.chain] {
            b.extend_from_slice(&(part.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(&self.report);
        b.extend_from_slice(&self.endorsement);
        b.extend_from_slice(&self.chain);
        Ok(b)
    }

    /// Decodes the wire form. Strict: magic, version, known platform, zero reserved bytes,
    /// every length within its limit and the total exact.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE_LEN {
            return Err(EvidenceError::TooLarge(bytes.len()));
        }
        if bytes.len() < HEADER_LEN {
            return Err(EvidenceError::Length {
                got: bytes.len(),
                want: HEADER_LEN,
            });
        }
        if bytes[0..4] != MAGIC {
            return Err(EvidenceError::Magic);
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(EvidenceError::Version(bytes[4]));
        }
        let platform = PlatformKind::from_u8(bytes[5]).ok_or(EvidenceError::Platform(bytes[5]))?;
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(EvidenceError::Reserved);
        }
        // Inside the HEADER_LEN bytes checked above.
        let len_at = |at| {
            u32_at(bytes, at)
                .map(|n| n as usize)
                .map_err(|_| EvidenceError::Length {
                    got: bytes.len(),
                    want: HEADER_LEN,
                })
        };
        let (r, e, c) = (len_at(8)?, len_at(12)?, len_at(16)?);
        for (part, len, max) in [
            ("report", r, MAX_REPORT_LEN),
            ("endorsement", e, MAX_ENDORSEMENT_LEN),
            ("chain", c, MAX_CHAIN_LEN),
        ] {
            if len > max {
                return Err(EvidenceError::PartTooLarge { part, len, max });
            }
        }
        // Bounded by the limits above: no overflow.
        let want = HEADER_LEN + r + e + c;
        if bytes.len() != want {
            return Err(EvidenceError::Length {
                got: bytes.len(),
                want,
            });
        }
        let ev = Self {
            platform,
            report: bytes[HEADER_LEN..HEADER_LEN + r].to_vec(),
            endorsement: bytes[HEADER_LEN + r..HEADER_LEN + r + e].to_vec(),
            chain: bytes[HEADER_LEN + r + e..].to_vec(),
        };
        ev.check()?;
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Evidence {
        Evidence {
            platform: PlatformKind::Snp,
            report: vec![1; 1184],
            endorsement: vec![2; 1360],
            chain: b"-----BEGIN CERTIFICATE-----".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let b = e.encode().unwrap();
        assert_eq!(&b[..4], b"SWEV");
        assert_eq!(b[5], 1);
        assert_eq!(b.len(), HEADER_LEN + 1184 + 1360 + 27);
        assert_eq!(Evidence::decode(&b).unwrap(), e);
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let mut e = sample();
        e.report = vec![0; MAX_REPORT_LEN + 1];
        assert!(matches!(
            e.encode(),
            Err(EvidenceError::PartTooLarge { part: "report", .. })
        ));
        let mut b = sample().encode().unwrap();
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Evidence::decode(&b),
            Err(EvidenceError::PartTooLarge {
                part: "endorsement",
                ..
            })
        ));
        assert!(matches!(
            Evidence::decode(&vec![0; MAX_EVIDENCE_LEN + 1]),
            Err(EvidenceError::TooLarge(_))
        ));
        assert_eq!(MAX_EVIDENCE_LEN, 57_364);
    }

    #[test]
    fn header_fields_are_strict() {
        let good = sample().encode().unwrap();
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Evidence::decode(&b), Err(EvidenceError::Magic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(Evidence::decode(&b), Err(EvidenceError::Version(2)));
        let mut b = good.clone();
        b[5] = 4;
        assert_eq!(Evidence::decode(&b), Err(EvidenceError::Platform(4)));
        let mut b = good.clone();
        b[7] = 1;
        assert_eq!(Evidence::decode(&b), Err(EvidenceError::Reserved));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            Evidence::decode(&b),
            Err(EvidenceError::Length { .. })
        ));
        assert!(matches!(
            Evidence::decode(&good[..good.len() - 1]),
            Err(EvidenceError::Length { .. })
        ));
    }

    #[test]
    fn platform_shapes_are_enforced() {
        let tdx_with_cert = Evidence {
            platform: PlatformKind::Tdx,
            ..sample()
        };
        assert!(matches!(
            tdx_with_cert.encode(),
            Err(EvidenceError::Shape(_))
        ));
        let snp_without_cert = Evidence {
            endorsement: vec![],
            ..sample()
        };
        assert!(matches!(
            snp_without_cert.encode(),
            Err(EvidenceError::Shape(_))
        ));
        let tdx = Evidence {
            platform: PlatformKind::Tdx,
            report: vec![1; 5000],
            endorsement: vec![],
            chain: vec![],
        };
        assert_eq!(Evidence::decode(&tdx.encode().unwrap()).unwrap(), tdx);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            if let Ok(e) = Evidence::decode(&bytes) {
                prop_assert!(e.report.len() <= MAX_REPORT_LEN);
                prop_assert!(e.endorsement.len() <= MAX_ENDORSEMENT_LEN);
                prop_assert!(e.chain.len() <= MAX_CHAIN_LEN);
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn decode_never_panics_on_mutated_headers(
            r in 0u32..70000, e in 0u32..70000, c in 0u32..70000,
            tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[FORMAT_VERSION, tag, 0, 0]);
            for x in [r, e, c] {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b.extend_from_slice(&body);
            let _ = Evidence::decode(&b);
        }
    }
}

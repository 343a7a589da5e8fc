//! Strict parse of an SEV-SNP attestation report (SEV-SNP Firmware ABI specification,
//! ATTESTATION_REPORT structure), versions 2 to 5.
//!
//! Parsing checks the shape only: the size (0x4A0 bytes), a known version, the signature
//! algorithm, and that every reserved ("must be zero") range and bit is zero, as
//! go-sev-guest's `abi.ReportToProto` does. Nothing here says the report is genuine: that
//! is [`super::verify`]'s job.
//!
//! | offset | field | notes |
//! |---|---|---|
//! | 0x000 | VERSION (u32) | 2, 3, 4 or 5 |
//! | 0x004 | GUEST_SVN (u32) | |
//! | 0x008 | POLICY (u64) | bit 17 must be 1; bits 26..63 must be 0; DEBUG is bit 19 |
//! | 0x010 | FAMILY_ID (16) | |
//! | 0x020 | IMAGE_ID (16) | |
//! | 0x030 | VMPL (u32) | 0..=3 |
//! | 0x034 | SIGNATURE_ALGO (u32) | 1 = ECDSA P-384 with SHA-384 |
//! | 0x038 | CURRENT_TCB (u64) | |
//! | 0x040 | PLATFORM_INFO (u64) | |
//! | 0x048 | signer info (u32) | bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_ID, bits 2..4 SIGNING_KEY, bits 5..31 zero |
//! | 0x04C | reserved (4) | zero |
//! | 0x050 | REPORT_DATA (64) | |
//! | 0x090 | MEASUREMENT (48) | |
//! | 0x0C0 | HOST_DATA (32) | |
//! | 0x0E0 | ID_KEY_DIGEST (48) | |
//! | 0x110 | AUTHOR_KEY_DIGEST (48) | |
//! | 0x140 | REPORT_ID (32) | |
//! | 0x160 | REPORT_ID_MA (32) | |
//! | 0x180 | REPORTED_TCB (u64) | |
//! | 0x188 | CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (v3+) | zero in v2 |
//! | 0x18B | reserved (21) | zero |
//! | 0x1A0 | CHIP_ID (64) | |
//! | 0x1E0 | COMMITTED_TCB (u64) | |
//! | 0x1E8 | CURRENT build, minor, major; reserved | 0x1EB zero |
//! | 0x1EC | COMMITTED build, minor, major; reserved | 0x1EF zero |
//! | 0x1F0 | LAUNCH_TCB (u64) | |
//! | 0x1F8 | LAUNCH_MIT_VECTOR, CURRENT_MIT_VECTOR (u64 each, v5) | zero before v5 |
//! | 0x208 | reserved (152) | zero |
//! | 0x2A0 | SIGNATURE: R (72, little-endian), S (72, little-endian), reserved (368) | reserved zero |

use swiotlb_shared::little_endian::{array_at, bytes_at, u32_at, u64_at, OutOfBounds};

use super::tcb::Tcb;

/// Size of a report.
pub const REPORT_LEN: usize = 0x4A0;
/// End of the signed part: the signature covers `[0, SIGNED_LEN)`.
pub const SIGNED_LEN: usize = 0x2A0;
/// Offset of the little-endian R component.
pub const SIG_R_OFFSET: usize = 0x2A0;
/// Offset of the little-endian S component.
pub const SIG_S_OFFSET: usize = 0x2E8;
/// Bytes of each of R and S.
pub const SIG_COMPONENT_LEN: usize = 72;

/// POLICY bit: SMT allowed.
pub const POLICY_SMT: u64 = 1 << 16;
/// POLICY bit 17: reserved, must be one.
pub const POLICY_RESERVED_ONE: u64 = 1 << 17;
/// POLICY bit: a migration agent may be associated.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// POLICY bit 19: DEBUG. The host may decrypt guest memory: never a confidential VM.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Lowest reserved (must-be-zero) POLICY bit: bits 20..25 are SINGLE_SOCKET, CXL_ALLOW,
/// MEM_AES_256_XTS, RAPL_DIS, CIPHERTEXT_HIDING, PAGE_SWAP_DISABLE.
pub const POLICY_MBZ_FROM_BIT: u32 = 26;

/// SIGNATURE_ALGO value of ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Errors of parsing a report.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReportError {
    /// Not 0x4A0 bytes.
    #[error("SNP report is {0} bytes, expected {REPORT_LEN}")]
    Length(usize),
    /// Version outside 2..=5.
    #[error("SNP report version {0} is not supported (2 to 5)")]
    Version(u32),
    /// A must-be-zero range holds non-zero bytes.
    #[error("SNP report reserved bytes [{start:#x}, {end:#x}) are not zero")]
    Reserved {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
    },
    /// Reserved POLICY bits are wrong.
    #[error("SNP guest policy {0:#x}: bit 17 must be one and bits 26 to 63 zero")]
    Policy(u64),
    /// Reserved signer-info bits are set, or SIGNING_KEY is reserved.
    #[error("SNP signer info {0:#x}: reserved bits set or SIGNING_KEY reserved (2 to 6)")]
    SignerInfo(u32),
    /// Unknown signature algorithm.
    #[error("SNP signature algorithm {0} is not ECDSA P-384 with SHA-384 (1)")]
    SignatureAlgo(u32),
    /// VMPL above 3.
    #[error("SNP VMPL {0} is not 0 to 3")]
    Vmpl(u32),
    /// Hex text that is not a report.
    #[error("SNP report hex text is malformed")]
    Hex,
}

/// Which key signed the report (SIGNING_KEY, bits 2..4 of the byte at 0x48).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key (0).
    Vcek,
    /// Versioned Loaded Endorsement Key (1), chained through the ASVK.
    Vlek,
    /// No key (7): the report is unsigned.
    None,
}

impl SigningKey {
    /// Upper-case name, as AMD writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
            Self::None => "none",
        }
    }
}

/// A parsed report. Integers are decoded; the bytes are kept for signature checking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    raw: Box<[u8; REPORT_LEN]>,
    /// VERSION.
    pub version: u32,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// POLICY.
    pub policy: u64,
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// VMPL.
    pub vmpl: u32,
    /// CURRENT_TCB (raw; its layout depends on the product).
    pub current_tcb: u64,
    /// PLATFORM_INFO.
    pub platform_info: u64,
    /// AUTHOR_KEY_EN.
    pub author_key_en: bool,
    /// MASK_CHIP_ID: the host masked CHIP_ID (it is then zero).
    pub mask_chip_id: bool,
    /// SIGNING_KEY.
    pub signing_key: SigningKey,
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// MEASUREMENT.
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID_MA.
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB (raw; its layout depends on the product).
    pub reported_tcb: u64,
    /// CPUID family, model, stepping (version 3 and later).
    pub cpuid: Option<(u8, u8, u8)>,
    /// CHIP_ID.
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB (raw).
    pub committed_tcb: u64,
    /// LAUNCH_TCB (raw).
    pub launch_tcb: u64,
    /// Firmware version (major, minor, build) now running.
    pub current_version: (u8, u8, u8),
    /// Firmware version committed.
    pub committed_version: (u8, u8, u8),
    /// LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR (version 5).
    pub mit_vectors: Option<(u64, u64)>,
}

/// A field read past the end: the report's length is wrong. (Every field is at a constant
/// offset inside [`REPORT_LEN`], checked first, so this is only the bounds-checked reader's
/// answer, never a panic.)
impl From<OutOfBounds> for ReportError {
    fn from(e: OutOfBounds) -> Self {
        Self::Length(e.actual)
    }
}

/// A firmware version stored as build, minor, major bytes at `at`, as (major, minor, build).
fn version_at(b: &[u8], at: usize) -> Result<(u8, u8, u8), ReportError> {
    let [build, minor, major] = array_at(b, at)?;
    Ok((major, minor, build))
}

fn mbz(b: &[u8], start: usize, end: usize) -> Result<(), ReportError> {
    if bytes_at(b, start, end.saturating_sub(start))?
        .iter()
        .all(|&x| x == 0)
    {
        Ok(())
    } else {
        Err(ReportError::Reserved { start, end })
    }
}

impl Report {
    /// Parses exactly [`REPORT_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        let raw: Box<[u8; REPORT_LEN]> = Box::new(
            bytes
                .try_into()
                .map_err(|_| ReportError::Length(bytes.len()))?,
        );
        // All offsets below are constants inside REPORT_LEN: the reads cannot fail.
        let b: &[u8] = &raw[..];
        let version = u32_at(b, 0x00)?;
        if !(2..=5).contains(&version) {
            return Err(ReportError::Version(version));
        }
        let policy = u64_at(b, 0x08)?;
        if policy & POLICY_RESERVED_ONE == 0 || policy >> POLICY_MBZ_FROM_BIT != 0 {
            return Err(ReportError::Policy(policy));
        }
        let vmpl = u32_at(b, 0x30)?;
        if vmpl > 3 {
            return Err(ReportError::Vmpl(vmpl));
        }
        let algo = u32_at(b, 0x34)?;
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ReportError::SignatureAlgo(algo));
        }
        let signer = u32_at(b, 0x48)?;
        let signing_key = match (signer >> 2) & 7 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            _ => return Err(ReportError::SignerInfo(signer)),
        };
        if signer >> 5 != 0 {
            return Err(ReportError::SignerInfo(signer));
        }
        mbz(b, 0x4C, 0x50)?;
        let cpuid = if version >= 3 {
            mbz(b, 0x18B, 0x1A0)?;
            let [family, model, stepping] = array_at(b, 0x188)?;
            Some((family, model, stepping))
        } else {
            mbz(b, 0x188, 0x1A0)?;
            None
        };
        mbz(b, 0x1EB, 0x1EC)?;
        mbz(b, 0x1EF, 0x1F0)?;
        let mit_vectors = if version >= 5 {
            mbz(b, 0x208, SIGNED_LEN)?;
            Some((u64_at(b, 0x1F8)?, u64_at(b, 0x200)?))
        } else {
            mbz(b, 0x1F8, SIGNED_LEN)?;
            None
        };
        mbz(b, SIG_S_OFFSET + SIG_COMPONENT_LEN, REPORT_LEN)?;
        Ok(Self {
            version,
            guest_svn: u32_at(b, 0x04)?,
            policy,
            family_id: array_at(b, 0x10)?,
            image_id: array_at(b, 0x20)?,
            vmpl,
            current_tcb: u64_at(b, 0x38)?,
            platform_info: u64_at(b, 0x40)?,
            author_key_en: signer & 1 != 0,
            mask_chip_id: signer & 2 != 0,
            signing_key,
            report_data: array_at(b, 0x50)?,
            measurement: array_at(b, 0x90)?,
            host_data: array_at(b, 0xC0)?,
            id_key_digest: array_at(b, 0xE0)?,
            author_key_digest: array_at(b, 0x110)?,
            report_id: array_at(b, 0x140)?,
            report_id_ma: array_at(b, 0x160)?,
            reported_tcb: u64_at(b, 0x180)?,
            cpuid,
            chip_id: array_at(b, 0x1A0)?,
            committed_tcb: u64_at(b, 0x1E0)?,
            current_version: version_at(b, 0x1E8)?,
            committed_version: version_at(b, 0x1EC)?,
            launch_tcb: u64_at(b, 0x1F0)?,
            mit_vectors,
            raw,
        })
    }

    /// Parses a report given as raw bytes or as hex text (whitespace ignored), the two forms
    /// in which reports are published.
    pub fn parse_any(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() == REPORT_LEN {
            return Self::parse(bytes);
        }
        Self::parse(&decode_hex_text(bytes).ok_or(ReportError::Hex)?)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The signed part `[0, 0x2A0)`.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// The signature as big-endian `r || s` of 48 bytes each (P-384), as `ring` takes it.
    /// `None` if a little-endian component has non-zero bytes above 48 bytes.
    pub fn signature_fixed(&self) -> Option<[u8; 96]> {
        let mut out = [0u8; 96];
        for (i, off) in [SIG_R_OFFSET, SIG_S_OFFSET].into_iter().enumerate() {
            let le = &self.raw[off..off + SIG_COMPONENT_LEN];
            if le[48..].iter().any(|&x| x != 0) {
                return None;
            }
            for j in 0..48 {
                out[i * 48 + j] = le[47 - j];
            }
        }
        Some(out)
    }

    /// Whether DEBUG (policy bit 19) is set.
    pub fn debug(&self) -> bool {
        self.policy & POLICY_DEBUG != 0
    }

    /// REPORTED_TCB decoded for the product's layout.
    pub fn reported_tcb_for(&self, turin_layout: bool) -> Tcb {
        Tcb::from_raw(self.reported_tcb, turin_layout)
    }
}

/// Decodes hex text (whitespace ignored, optional `0x` prefix) of exactly one report.
pub fn decode_hex_text(text: &[u8]) -> Option<Vec<u8>> {
    // Hex text of a report is 2 * 0x4A0 digits plus whitespace; bound the scan.
    if text.len() > 4 * REPORT_LEN {
        return None;
    }
    let s = std::str::from_utf8(text).ok()?;
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    hex::decode(digits).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zero report with the fields that must hold valid values set.
    pub(crate) fn minimal(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        b[0..4].copy_from_slice(&version.to_le_bytes());
        b[8..16].copy_from_slice(&(POLICY_RESERVED_ONE | POLICY_SMT).to_le_bytes());
        b[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn minimal_reports_of_each_version_parse() {
        for v in 2..=5 {
            let r = Report::parse(&minimal(v)).unwrap();
            assert_eq!(r.version, v);
            assert_eq!(r.cpuid.is_some(), v >= 3);
            assert_eq!(r.mit_vectors.is_some(), v >= 5);
            assert_eq!(r.signing_key, SigningKey::Vcek);
        }
        for v in [0, 1, 6, 0x100] {
            assert_eq!(Report::parse(&minimal(v)), Err(ReportError::Version(v)));
        }
    }

    #[test]
    fn wrong_length_is_refused() {
        assert_eq!(Report::parse(&[]), Err(ReportError::Length(0)));
        assert_eq!(
            Report::parse(&vec![0; REPORT_LEN + 1]),
            Err(ReportError::Length(REPORT_LEN + 1))
        );
    }

    #[test]
    fn every_must_be_zero_byte_is_checked() {
        for version in [2u32, 3, 5] {
            let mut ranges = vec![(0x4C, 0x50), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x330, 0x4A0)];
            ranges.push(if version >= 3 {
                (0x18B, 0x1A0)
            } else {
                (0x188, 0x1A0)
            });
            ranges.push(if version >= 5 {
                (0x208, 0x2A0)
            } else {
                (0x1F8, 0x2A0)
            });
            for (start, end) in ranges {
                for i in start..end {
                    let mut b = minimal(version);
                    b[i] = 0x01;
                    assert_eq!(
                        Report::parse(&b),
                        Err(ReportError::Reserved { start, end }),
                        "version {version} byte {i:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn policy_signer_info_vmpl_and_algorithm_are_checked() {
        let mut b = minimal(2);
        b[8..16].copy_from_slice(&POLICY_SMT.to_le_bytes());
        assert!(matches!(Report::parse(&b), Err(ReportError::Policy(_))));
        for bit in POLICY_MBZ_FROM_BIT..64 {
            let mut b = minimal(2);
            let p = POLICY_RESERVED_ONE | (1u64 << bit);
            b[8..16].copy_from_slice(&p.to_le_bytes());
            assert_eq!(Report::parse(&b), Err(ReportError::Policy(p)));
        }
        for key in 2..=6u32 {
            let mut b = minimal(2);
            b[0x48..0x4C].copy_from_slice(&(key << 2).to_le_bytes());
            assert!(matches!(Report::parse(&b), Err(ReportError::SignerInfo(_))));
        }
        let mut b = minimal(2);
        b[0x48..0x4C].copy_from_slice(&(1u32 << 5).to_le_bytes());
        assert!(matches!(Report::parse(&b), Err(ReportError::SignerInfo(_))));
        let mut b = minimal(2);
        b[0x48] = 1 << 2 | 2;
        let r = Report::parse(&b).unwrap();
        assert_eq!(r.signing_key, SigningKey::Vlek);
        assert!(r.mask_chip_id);
        let mut b = minimal(2);
        b[0x30] = 4;
        assert_eq!(Report::parse(&b), Err(ReportError::Vmpl(4)));
        let mut b = minimal(2);
        b[0x34] = 2;
        assert_eq!(Report::parse(&b), Err(ReportError::SignatureAlgo(2)));
    }

    #[test]
    fn signature_is_converted_from_little_endian() {
        let mut b = minimal(2);
        b[SIG_R_OFFSET] = 0x11; // least significant byte of r
        b[SIG_S_OFFSET + 47] = 0x22; // most significant byte of s
        let sig = Report::parse(&b).unwrap().signature_fixed().unwrap();
        assert_eq!(sig[47], 0x11);
        assert_eq!(sig[48], 0x22);
        b[SIG_R_OFFSET + 50] = 1;
        assert_eq!(Report::parse(&b).unwrap().signature_fixed(), None);
    }

    #[test]
    fn hex_text_is_accepted() {
        let b = minimal(2);
        let text = hex::encode(&b);
        let with_lines: String = text
            .as_bytes()
            .chunks(64)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(
            Report::parse_any(with_lines.as_bytes()).unwrap().as_bytes()[..],
            b[..]
        );
        assert_eq!(Report::parse_any(b"zz"), Err(ReportError::Hex));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), REPORT_LEN..=REPORT_LEN)) {
            let _ = Report::parse(&bytes);
        }
    }
}

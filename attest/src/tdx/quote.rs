//! Strict parse of an Intel TDX quote, version 4 (Intel TDX DCAP Quote Generation Library,
//! "Quote Format"), with ECDSA-256-with-P-256 attestation keys and QE report certification
//! data that carries the PCK certificate chain (certification data type 5).
//!
//! ```text
//! 0x000  header (48): version u16 = 4, attestation key type u16 = 2 (ECDSA P-256),
//!        TEE type u32 = 0x81 (TDX), reserved u16, reserved u16, QE vendor ID (16),
//!        user data (20)
//! 0x030  TD report body (584): TEE_TCB_SVN (16), MRSEAM (48), MRSIGNERSEAM (48),
//!        SEAMATTRIBUTES (8), TDATTRIBUTES (8), XFAM (8), MRTD (48), MRCONFIGID (48),
//!        MROWNER (48), MROWNERCONFIG (48), RTMR0..3 (4 x 48), REPORTDATA (64)
//! 0x278  signature data length u32
//! 0x27C  ECDSA signature (64, r || s big-endian) over [0, 0x278)
//!        attestation public key (64, x || y)
//!        certification data: type u16 = 6 (QE report certification data), size u32,
//!          QE report (384, SGX report body), QE report signature (64),
//!          QE authentication data: size u16, data,
//!          certification data: type u16 = 5 (PCK chain, PEM), size u32, data
//! ```
//!
//! Every length must agree exactly; bytes after the signature data must be zero (quote
//! buffers are padded). The reserved header words are not checked: they are signed, and
//! Intel's libraries put QE and PCE SVNs there.

use swiotlb_shared::little_endian::{array_at, u16_at, Cursor, OutOfBounds};

/// Bytes of the header.
pub const HEADER_LEN: usize = 48;
/// Bytes of a TDX 1.0 TD report body.
pub const BODY_LEN: usize = 584;
/// End of the part signed by the attestation key.
pub const SIGNED_LEN: usize = HEADER_LEN + BODY_LEN;
/// Bytes of an SGX report body (the QE report).
pub const QE_REPORT_LEN: usize = 384;
/// Largest quote accepted: the PEM PCK chain is about 3.7 KB in Intel's samples; 32 KiB
/// matches the evidence blob's report limit.
pub const MAX_QUOTE_LEN: usize = 32 * 1024;

/// Quote version 4.
pub const VERSION_4: u16 = 4;
/// Attestation key type ECDSA-256-with-P-256.
pub const ATT_KEY_ECDSA_P256: u16 = 2;
/// TEE type TDX.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// Certification data type: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;
/// Certification data type: PCK leaf, intermediate and root certificates (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Intel's QE vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];

/// TDATTRIBUTES bit 0: the TD is in debug mode (its memory is readable by the host).
pub const TD_ATTR_DEBUG: u64 = 1;

/// Errors of parsing a quote.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QuoteError {
    /// Too short for its fixed parts, or larger than [`MAX_QUOTE_LEN`].
    #[error("TDX quote is {0} bytes: too short or too long")]
    Length(usize),
    /// A header field is not what a v4 ECDSA TDX quote has.
    #[error("TDX quote header: {0}")]
    Header(String),
    /// Lengths inside the signature data do not agree.
    #[error("TDX quote signature data: {0}")]
    Structure(&'static str),
    /// Non-zero bytes after the signature data.
    #[error("TDX quote has non-zero bytes after its signature data")]
    Trailing,
}

/// The TD report body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM.
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: u64,
    /// TDATTRIBUTES.
    pub td_attributes: u64,
    /// XFAM.
    pub xfam: u64,
    /// MRTD: the TD's build-time measurement.
    pub mr_td: [u8; 48],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..3.
    pub rtmrs: [[u8; 48]; 4],
    /// REPORTDATA.
    pub report_data: [u8; 64],
}

/// The QE's SGX report body, as far as the verifier uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QeReport {
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// REPORTDATA: SHA-256(attestation key || QE auth data) then 32 zero bytes.
    pub report_data: [u8; 64],
}

/// A parsed v4 TDX quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    raw: Vec<u8>,
    /// QE vendor ID.
    pub qe_vendor_id: [u8; 16],
    /// The TD report body.
    pub body: TdReport,
    /// Attestation key signature, r || s.
    pub signature: [u8; 64],
    /// Attestation public key, x || y.
    pub attestation_key: [u8; 64],
    /// The QE report, raw (signed by the PCK key).
    pub qe_report_raw: [u8; QE_REPORT_LEN],
    /// The QE report, parsed.
    pub qe_report: QeReport,
    /// QE report signature by the PCK key, r || s.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain, PEM (trailing NULs kept: the PEM reader drops them).
    pub pck_chain_pem: Vec<u8>,
}

/// A field read past the end of the quote or of its signature data.
impl From<OutOfBounds> for QuoteError {
    fn from(_: OutOfBounds) -> Self {
        Self::Structure("a length runs past the end")
    }
}

impl Quote {
    /// Parses a quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() < SIGNED_LEN + 4 || bytes.len() > MAX_QUOTE_LEN {
            return Err(QuoteError::Length(bytes.len()));
        }
        let mut c = Cursor::new(bytes);
        let version = c.u16()?;
        let key_type = c.u16()?;
        let tee_type = c.u32()?;
        if version != VERSION_4 {
            return Err(QuoteError::Header(format!("version {version}, expected 4")));
        }
        if key_type != ATT_KEY_ECDSA_P256 {
            return Err(QuoteError::Header(format!(
                "attestation key type {key_type}, expected 2 (ECDSA P-256)"
            )));
        }
        if tee_type != TEE_TYPE_TDX {
            return Err(QuoteError::Header(format!(
                "TEE type {tee_type:#x}, expected 0x81 (TDX)"
            )));
        }
        c.bytes(4)?; // reserved words (QE/PCE SVN in Intel's libraries); signed
        let qe_vendor_id = c.array()?;
        c.bytes(20)?; // user data
        let body = TdReport {
            tee_tcb_svn: c.array()?,
            mr_seam: c.array()?,
            mr_signer_seam: c.array()?,
            seam_attributes: c.u64()?,
            td_attributes: c.u64()?,
            xfam: c.u64()?,
            mr_td: c.array()?,
            mr_config_id: c.array()?,
            mr_owner: c.array()?,
            mr_owner_config: c.array()?,
            rtmrs: [c.array()?, c.array()?, c.array()?, c.array()?],
            report_data: c.array()?,
        };
        debug_assert_eq!(c.position(), SIGNED_LEN);
        let sig_len = c.u32()? as usize;
        let sig_start = c.position();
        let sig_end = sig_start
            .checked_add(sig_len)
            .filter(|&e| e <= bytes.len())
            .ok_or(QuoteError::Structure("signature data runs past the end"))?;
        if bytes[sig_end..].iter().any(|&b| b != 0) {
            return Err(QuoteError::Trailing);
        }
        let mut s = Cursor::new(&bytes[sig_start..sig_end]);
        let signature = s.array()?;
        let attestation_key = s.array()?;
        if s.u16()? != CERT_TYPE_QE_REPORT {
            return Err(QuoteError::Structure(
                "certification data is not QE report certification data (type 6)",
            ));
        }
        let cd_len = s.u32()? as usize;
        if s.remaining() != cd_len {
            return Err(QuoteError::Structure(
                "QE report certification data size disagrees with the signature data size",
            ));
        }
        let qe_report_raw: [u8; QE_REPORT_LEN] = s.array()?;
        let qe_report_signature = s.array()?;
        let auth_len = usize::from(s.u16()?);
        let qe_auth_data = s.bytes(auth_len)?.to_vec();
        if s.u16()? != CERT_TYPE_PCK_CHAIN {
            return Err(QuoteError::Structure(
                "QE certification data is not a PCK certificate chain (type 5)",
            ));
        }
        let chain_len = s.u32()? as usize;
        if s.remaining() != chain_len {
            return Err(QuoteError::Structure(
                "PCK chain size disagrees with the certification data size",
            ));
        }
        let pck_chain_pem = s.bytes(chain_len)?.to_vec();
        // SGX report body offsets, all inside its QE_REPORT_LEN bytes.
        let q = &qe_report_raw[..];
        let qe_report = QeReport {
            mr_enclave: array_at(q, 64)?,
            mr_signer: array_at(q, 128)?,
            isv_prod_id: u16_at(q, 256)?,
            isv_svn: u16_at(q, 258)?,
            report_data: array_at(q, 320)?,
        };
        Ok(Self {
            raw: bytes[..sig_end].to_vec(),
            qe_vendor_id,
            body,
            signature,
            attestation_key,
            qe_report_raw,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
        })
    }

    /// The quote's bytes without trailing padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The part signed by the attestation key: header and TD report body.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// Whether the TD DEBUG attribute is set.
    pub fn debug(&self) -> bool {
        self.body.td_attributes & TD_ATTR_DEBUG != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_long_and_foreign_quotes_are_refused() {
        assert_eq!(Quote::parse(&[]), Err(QuoteError::Length(0)));
        assert!(matches!(
            Quote::parse(&vec![0; MAX_QUOTE_LEN + 1]),
            Err(QuoteError::Length(_))
        ));
        let mut b = vec![0u8; 2000];
        b[0] = 3;
        assert!(matches!(Quote::parse(&b), Err(QuoteError::Header(_))));
        b[0] = 4;
        b[2] = 2;
        b[4] = 0; // SGX
        assert!(matches!(Quote::parse(&b), Err(QuoteError::Header(_))));
        b[4] = 0x81;
        b[SIGNED_LEN..SIGNED_LEN + 4].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(Quote::parse(&b), Err(QuoteError::Structure(_))));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200), len in 0u32..1400) {
            let mut b = vec![0u8; SIGNED_LEN];
            b[0] = 4;
            b[2] = 2;
            b[4] = 0x81;
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&tail);
            let _ = Quote::parse(&b);
        }
    }
}

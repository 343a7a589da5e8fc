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

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuoteError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(QuoteError::Structure("a length runs past the end"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], QuoteError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, QuoteError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, QuoteError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, QuoteError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
}

impl Quote {
    /// Parses a quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() < SIGNED_LEN + 4 || bytes.len() > MAX_QUOTE_LEN {
            return Err(QuoteError::Length(bytes.len()));
        }
        let mut c = Cursor { b: bytes, pos: 0 };
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
        c.take(4)?; // reserved words (QE/PCE SVN in Intel's libraries); signed
        let qe_vendor_id = c.arr()?;
        c.take(20)?; // user data
        let body = TdReport {
            tee_tcb_svn: c.arr()?,
            mr_seam: c.arr()?,
            mr_signer_seam: c.arr()?,
            seam_attributes: c.u64()?,
            td_attributes: c.u64()?,
            xfam: c.u64()?,
            mr_td: c.arr()?,
            mr_config_id: c.arr()?,
            mr_owner: c.arr()?,
            mr_owner_config: c.arr()?,
            rtmrs: [c.arr()?, c.arr()?, c.arr()?, c.arr()?],
            report_data: c.arr()?,
        };
        debug_assert_eq!(c.pos, SIGNED_LEN);
        let sig_len = c.u32()? as usize;
        let sig_start = c.pos;
        let sig_end = sig_start
            .checked_add(sig_len)
            .filter(|&e| e <= bytes.len())
            .ok_or(QuoteError::Structure("signature data runs past the end"))?;
        if bytes[sig_end..].iter().any(|&b| b != 0) {
            return Err(QuoteError::Trailing);
        }
        let mut s = Cursor {
            b: &bytes[..sig_end],
            pos: sig_start,
        };
        let signature = s.arr()?;
        let attestation_key = s.arr()?;
        if s.u16()? != CERT_TYPE_QE_REPORT {
            return Err(QuoteError::Structure(
                "certification data is not QE report certification data (type 6)",
            ));
        }
        let cd_len = s.u32()? as usize;
        if s.pos.checked_add(cd_len) != Some(sig_end) {
            return Err(QuoteError::Structure(
                "QE report certification data size disagrees with the signature data size",
            ));
        }
        let qe_report_raw: [u8; QE_REPORT_LEN] = s.arr()?;
        let qe_report_signature = s.arr()?;
        let auth_len = usize::from(s.u16()?);
        let qe_auth_data = s.take(auth_len)?.to_vec();
        if s.u16()? != CERT_TYPE_PCK_CHAIN {
            return Err(QuoteError::Structure(
                "QE certification data is not a PCK certificate chain (type 5)",
            ));
        }
        let chain_len = s.u32()? as usize;
        if s.pos.checked_add(chain_len) != Some(sig_end) {
            return Err(QuoteError::Structure(
                "PCK chain size disagrees with the certification data size",
            ));
        }
        let pck_chain_pem = s.take(chain_len)?.to_vec();
        let q = &qe_report_raw;
        let mut mr_enclave = [0u8; 32];
        mr_enclave.copy_from_slice(&q[64..96]);
        let mut mr_signer = [0u8; 32];
        mr_signer.copy_from_slice(&q[128..160]);
        let mut qe_rd = [0u8; 64];
        qe_rd.copy_from_slice(&q[320..384]);
        let qe_report = QeReport {
            mr_enclave,
            mr_signer,
            isv_prod_id: u16::from_le_bytes([q[256], q[257]]),
            isv_svn: u16::from_le_bytes([q[258], q[259]]),
            report_data: qe_rd,
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

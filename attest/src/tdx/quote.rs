//! Strict parse of an Intel TDX quote, versions 4 and 5 (Intel TDX DCAP Quote Generation
//! Library, "Quote Format"), with ECDSA-256-with-P-256 attestation keys and QE report
//! certification data that carries the PCK certificate chain (certification data type 5).
//!
//! ```text
//! 0x000  header (48): version u16 = 4 or 5, attestation key type u16 = 2 (ECDSA P-256),
//!        TEE type u32 = 0x81 (TDX), QE SVN u16, PCE SVN u16 (both "reserved" for TDX
//!        and zero in every real quote), QE vendor ID (16), user data (20)
//! v4:
//! 0x030  TD report body, TDX 1.0 (584 bytes)
//! v5:
//! 0x030  body descriptor: type u16 (2 TDX 1.0, 3 TDX 1.5, 4 TDX 1.5 with service TD
//!        extensions), size u32 (584, 648 or 885: exactly the type's size)
//! 0x036  TD report body of that type
//! then   signature data length u32, and the signature data:
//!        ECDSA signature (64, r || s big-endian) over the header, the descriptor (v5) and
//!          the body
//!        attestation public key (64, x || y)
//!        certification data: type u16 = 6 (QE report certification data), size u32,
//!          QE report (384, SGX report body), QE report signature (64),
//!          QE authentication data: size u16, data,
//!          certification data: type u16 = 5 (PCK chain, PEM), size u32, data
//! ```
//!
//! TD report body (offsets inside the body):
//!
//! | offset | field | body types |
//! |---|---|---|
//! | 0 | TEE_TCB_SVN (16) | all |
//! | 16 | MRSEAM (48), MRSIGNERSEAM (48) | all |
//! | 112 | SEAMATTRIBUTES (8), TDATTRIBUTES (8), XFAM (8) | all |
//! | 136 | MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG (48 each) | all |
//! | 328 | RTMR0..3 (4 x 48) | all |
//! | 520 | REPORTDATA (64) | all |
//! | 584 | TEE_TCB_SVN2 (16), MRSERVICETD (48) | 3, 4 |
//! | 648 | VM index (1), TD ID (32), device info hash (48), initial service TD hash (48) and attributes (8), initial CPUSVN (16), TEE_TCB_SVN (16) and FMSPC (12), current service TD hash (48) and attributes (8) | 4 |
//!
//! Every length must agree exactly. Bytes after the signature data are not signed: they are
//! counted ([`Quote::trailing_len`]), kept out of everything else (the signed bytes, the
//! collateral check, the verdict's fields), and never refuse a quote (go-tdx-guest keeps
//! them as "extra bytes"; quote buffers are padded).

use swiotlb_shared::little_endian::{array_at, u16_at, Cursor, OutOfBounds};

/// Bytes of the header.
pub const HEADER_LEN: usize = 48;
/// Bytes of the v5 body descriptor (type u16, size u32).
pub const BODY_DESCRIPTOR_LEN: usize = 6;
/// Bytes of a TDX 1.0 TD report body (v4, and v5 body type 2).
pub const BODY_LEN: usize = 584;
/// Bytes of a TDX 1.5 TD report body (v5 body type 3): TEE_TCB_SVN2 and MRSERVICETD added.
pub const BODY_15_LEN: usize = 648;
/// Bytes of a TDX 1.5 TD report body with the service TD extensions (v5 body type 4).
pub const BODY_15_EX_LEN: usize = 885;
/// End of the part a v4 quote's attestation key signs.
pub const SIGNED_LEN: usize = HEADER_LEN + BODY_LEN;
/// Bytes of an SGX report body (the QE report).
pub const QE_REPORT_LEN: usize = 384;
/// Largest quote accepted: the PEM PCK chain is about 3.7 KB in Intel's samples; 32 KiB
/// matches the evidence blob's report limit.
pub const MAX_QUOTE_LEN: usize = 32 * 1024;

/// Quote version 4 (TDX 1.0 body only).
pub const VERSION_4: u16 = 4;
/// Quote version 5 (a body descriptor names the body type).
pub const VERSION_5: u16 = 5;
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

/// The body a quote carries (v5 body descriptor type; v4 always carries TDX 1.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyType {
    /// TDX 1.0 TD report (type 2; the only body of a v4 quote).
    Td10,
    /// TDX 1.5 TD report (type 3): adds TEE_TCB_SVN2 and MRSERVICETD.
    Td15,
    /// TDX 1.5 TD report with service TD extensions (type 4).
    Td15Ex,
}

impl BodyType {
    /// The v5 body descriptor's type value.
    pub fn code(self) -> u16 {
        match self {
            Self::Td10 => 2,
            Self::Td15 => 3,
            Self::Td15Ex => 4,
        }
    }

    /// The body type of a v5 descriptor's type value.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            2 => Some(Self::Td10),
            3 => Some(Self::Td15),
            4 => Some(Self::Td15Ex),
            _ => None,
        }
    }

    /// Bytes of this body.
    pub fn size(self) -> usize {
        match self {
            Self::Td10 => BODY_LEN,
            Self::Td15 => BODY_15_LEN,
            Self::Td15Ex => BODY_15_EX_LEN,
        }
    }
}

/// Errors of parsing a quote.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QuoteError {
    /// Too short for its fixed parts, or larger than [`MAX_QUOTE_LEN`].
    #[error("TDX quote is {0} bytes: too short or too long")]
    Length(usize),
    /// A header field is not what a v4 or v5 ECDSA TDX quote has.
    #[error("TDX quote header: {0}")]
    Header(String),
    /// The v5 body descriptor names a body this parser does not read, or the wrong size.
    #[error("TDX quote v5 body: {0}")]
    Body(String),
    /// Lengths inside the signature data do not agree.
    #[error("TDX quote signature data: {0}")]
    Structure(&'static str),
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
    /// TEE_TCB_SVN2 (TDX 1.5 bodies).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// MRSERVICETD (TDX 1.5 bodies): the hash of the service TDs bound at creation.
    pub mr_service_td: Option<[u8; 48]>,
    /// The service TD extensions (body type 4).
    pub extension: Option<TdReportExtension>,
}

/// The fields a TDX 1.5 body of type 4 adds (Intel's `sgx_report2_body_v1_5_ex_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdReportExtension {
    /// VM index: 0 for an unpartitioned TD or the L1 VMM.
    pub vm_index: u8,
    /// TD instance ID, regenerated on relaunch.
    pub td_id: [u8; 32],
    /// Hash of the device information.
    pub dev_info: [u8; 48],
    /// SERVTD_HASH of the service TDs bound when the TD was created.
    pub init_service_td_hash: [u8; 48],
    /// Their attributes.
    pub init_service_td_attributes: u64,
    /// CPUSVN when the TD was created.
    pub init_cpu_svn: [u8; 16],
    /// TEE_TCB_SVN when the TD was created.
    pub init_tee_tcb_svn: [u8; 16],
    /// FMSPC of the platform the TD was created on.
    pub init_tee_fmspc: [u8; 12],
    /// SERVTD_HASH of the service TDs bound now.
    pub cur_service_td_hash: [u8; 48],
    /// Their attributes.
    pub cur_service_td_attributes: u64,
}

/// The QE's SGX report body, as far as the verifier uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QeReport {
    /// CPUSVN.
    pub cpu_svn: [u8; 16],
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN: the QE's security version, signed by the PCK key.
    pub isv_svn: u16,
    /// REPORTDATA: SHA-256(attestation key || QE auth data) then 32 zero bytes.
    pub report_data: [u8; 64],
}

/// A parsed v4 or v5 TDX quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    raw: Vec<u8>,
    signed_len: usize,
    trailing: usize,
    /// VERSION: 4 or 5.
    pub version: u16,
    /// The body type (v4: always TDX 1.0).
    pub body_type: BodyType,
    /// The header's QE SVN word (bytes 8..10). Reserved for TDX: zero in every real quote;
    /// the QE's signed SVN is [`QeReport::isv_svn`].
    pub header_qe_svn: u16,
    /// The header's PCE SVN word (bytes 10..12). Reserved for TDX, like the QE SVN word; the
    /// PCE SVN a PCK certificate was issued for is in its SGX extensions.
    pub header_pce_svn: u16,
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

/// Reads the TD report body of `body_type` from `c` (which holds at least its length).
fn read_body(c: &mut Cursor<'_>, body_type: BodyType) -> Result<TdReport, OutOfBounds> {
    let mut body = TdReport {
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
        tee_tcb_svn2: None,
        mr_service_td: None,
        extension: None,
    };
    if body_type != BodyType::Td10 {
        body.tee_tcb_svn2 = Some(c.array()?);
        body.mr_service_td = Some(c.array()?);
    }
    if body_type == BodyType::Td15Ex {
        body.extension = Some(TdReportExtension {
            vm_index: c.u8()?,
            td_id: c.array()?,
            dev_info: c.array()?,
            init_service_td_hash: c.array()?,
            init_service_td_attributes: c.u64()?,
            init_cpu_svn: c.array()?,
            init_tee_tcb_svn: c.array()?,
            init_tee_fmspc: c.array()?,
            cur_service_td_hash: c.array()?,
            cur_service_td_attributes: c.u64()?,
        });
    }
    Ok(body)
}

impl Quote {
    /// Parses a quote. Bytes after the signature data are counted, never read.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteError> {
        if bytes.len() < SIGNED_LEN + 4 || bytes.len() > MAX_QUOTE_LEN {
            return Err(QuoteError::Length(bytes.len()));
        }
        let mut c = Cursor::new(bytes);
        let version = c.u16()?;
        let key_type = c.u16()?;
        let tee_type = c.u32()?;
        if version != VERSION_4 && version != VERSION_5 {
            return Err(QuoteError::Header(format!(
                "version {version}, expected 4 or 5"
            )));
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
        let header_qe_svn = c.u16()?;
        let header_pce_svn = c.u16()?;
        let qe_vendor_id = c.array()?;
        c.bytes(20)?; // user data
        let body_type = if version == VERSION_4 {
            BodyType::Td10
        } else {
            let code = c.u16()?;
            let size = c.u32()?;
            let t = BodyType::from_code(code).ok_or_else(|| {
                QuoteError::Body(match code {
                    1 => "type 1 is an SGX enclave report, not a TD report".into(),
                    _ => format!("type {code} is unknown (2, 3 or 4)"),
                })
            })?;
            if size as usize != t.size() {
                return Err(QuoteError::Body(format!(
                    "type {code} is {} bytes, the descriptor says {size}",
                    t.size()
                )));
            }
            t
        };
        let body = read_body(&mut c, body_type)?;
        let signed_len = c.position();
        let sig_len = c.u32()? as usize;
        let sig_start = c.position();
        let sig_end = sig_start
            .checked_add(sig_len)
            .filter(|&e| e <= bytes.len())
            .ok_or(QuoteError::Structure("signature data runs past the end"))?;
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
            cpu_svn: array_at(q, 0)?,
            mr_enclave: array_at(q, 64)?,
            mr_signer: array_at(q, 128)?,
            isv_prod_id: u16_at(q, 256)?,
            isv_svn: u16_at(q, 258)?,
            report_data: array_at(q, 320)?,
        };
        Ok(Self {
            raw: bytes[..sig_end].to_vec(),
            signed_len,
            trailing: bytes.len() - sig_end,
            version,
            body_type,
            header_qe_svn,
            header_pce_svn,
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

    /// The quote's bytes up to the end of its signature data (trailing bytes left out).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The part signed by the attestation key: the header, the v5 body descriptor and the
    /// TD report body.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..self.signed_len]
    }

    /// How many bytes followed the signature data (unsigned; never interpreted).
    pub fn trailing_len(&self) -> usize {
        self.trailing
    }

    /// Whether the TD DEBUG attribute is set.
    pub fn debug(&self) -> bool {
        self.body.td_attributes & TD_ATTR_DEBUG != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v4 or v5 quote of zeros with a valid header and an empty (inconsistent) signature
    /// data of `sig_len` bytes.
    fn skeleton(version: u16, body: Option<(u16, u32)>) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&version.to_le_bytes());
        b[2..4].copy_from_slice(&ATT_KEY_ECDSA_P256.to_le_bytes());
        b[4..8].copy_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        let len = match body {
            Some((t, size)) => {
                b.extend_from_slice(&t.to_le_bytes());
                b.extend_from_slice(&size.to_le_bytes());
                BodyType::from_code(t).map_or(BODY_LEN, BodyType::size)
            }
            None => BODY_LEN,
        };
        b.resize(b.len() + len, 0);
        b.extend_from_slice(&0u32.to_le_bytes());
        b.resize(b.len() + 200, 0);
        b
    }

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
        b[0] = 6;
        assert!(matches!(Quote::parse(&b), Err(QuoteError::Header(_))));
        b[0] = 4;
        b[2] = 2;
        b[4] = 0; // SGX
        assert!(matches!(Quote::parse(&b), Err(QuoteError::Header(_))));
        b[4] = 0x81;
        b[SIGNED_LEN..SIGNED_LEN + 4].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(Quote::parse(&b), Err(QuoteError::Structure(_))));
    }

    #[test]
    fn v5_body_descriptors_are_strict() {
        // Every known type with its size reaches the signature data (empty here).
        for t in [BodyType::Td10, BodyType::Td15, BodyType::Td15Ex] {
            let b = skeleton(5, Some((t.code(), t.size() as u32)));
            assert!(
                matches!(Quote::parse(&b), Err(QuoteError::Structure(_))),
                "{t:?}"
            );
        }
        for (t, size) in [
            (1u16, 384u32),
            (0, 584),
            (5, 584),
            (3, 584),
            (2, 648),
            (4, 648),
        ] {
            let b = skeleton(5, Some((t, size)));
            assert!(
                matches!(Quote::parse(&b), Err(QuoteError::Body(_))),
                "type {t} size {size}"
            );
        }
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

        #[test]
        fn v5_parse_never_panics(
            body_type in 0u16..6, size in 0u32..1000, len in 0u32..1400,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1400),
        ) {
            let mut b = vec![0u8; HEADER_LEN];
            b[0] = 5;
            b[2] = 2;
            b[4] = 0x81;
            b.extend_from_slice(&body_type.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.resize(HEADER_LEN + BODY_DESCRIPTOR_LEN + size as usize, 0);
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&tail);
            let _ = Quote::parse(&b);
        }
    }
}

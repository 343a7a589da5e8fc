//! Verification of a parsed TDX quote:
//!
//! 1. the QE vendor is Intel;
//! 2. the PCK certificate chain in the quote leads to the **pinned** Intel SGX Root CA (the
//!    root the quote carries must be byte-identical to it, or absent);
//! 3. the QE report is signed by the PCK key (ECDSA P-256);
//! 4. the QE report binds the attestation key: REPORTDATA[0..32] =
//!    SHA-256(attestation key || QE authentication data) and REPORTDATA[32..64] = 0;
//! 5. the header, the v5 body descriptor and the TD report body are signed by the
//!    attestation key;
//! 6. with CRLs given on their own, the root CA CRL must not list the PCK CA (nor the root)
//!    and the PCK CRL must not list the PCK certificate; each must be signed by its issuer
//!    and current;
//! 7. with collateral (feature `tdx-collateral`), `dcap-qvl` checks TCB info, QE identity and
//!    the collateral's CRLs against the same root at the caller's time, and reports the TCB
//!    status and advisory IDs.
//!
//! The root is the pinned Intel SGX Root CA unless the caller trusts another
//! ([`Trust::root`], go-tdx-guest's `TrustedRoots`).
//!
//! Policy (debug, MRTD, RTMRs, REPORTDATA, accepted TCB statuses) is in [`crate::policy`].

use std::sync::OnceLock;

use ring::digest;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

use super::pck::PckInfo;
use super::quote::{Quote, INTEL_QE_VENDOR_ID};
use crate::crl::Crl;
use crate::snp::verify::cert_reason;
use crate::verdict::{Reason, ReasonKind};
use crate::x509::{pem_to_certs, Cert};

/// The Intel SGX Root CA, pinned (PEM). SHA-256 fingerprint
/// 44:A0:19:6B:2B:99:F8:89:B8:E1:49:E9:5B:80:7A:35:0E:74:24:96:43:99:E8:85:A7:CB:B8:CC:FA:B6:74:D3.
pub const INTEL_SGX_ROOT_CA_PEM: &[u8] = include_bytes!("roots/intel_sgx_root_ca.pem");

/// The pinned Intel SGX Root CA.
pub fn intel_root() -> &'static Cert {
    static ROOT: OnceLock<Cert> = OnceLock::new();
    ROOT.get_or_init(|| {
        // A constant of this crate, parsed by the test `pinned_intel_root_is_self_signed`;
        // a failure here is a build defect, not input.
        let mut v = pem_to_certs(INTEL_SGX_ROOT_CA_PEM, "Intel SGX Root CA")
            .expect("pinned Intel root parses");
        v.remove(0)
    })
}

/// Common names of the intermediates that issue PCK certificates.
const PCK_CA_NAMES: [&str; 2] = ["Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA"];

/// TDX collateral (JSON as `dcap-qvl` and PCCS clients write it).
#[derive(Clone, Debug)]
pub struct Collateral {
    #[cfg(feature = "tdx-collateral")]
    inner: dcap_qvl::QuoteCollateralV3,
}

/// Largest collateral file read: Intel's is about 16 KB (TCB info, QE identity, their
/// issuer chains and two CRLs, hex-encoded).
pub const MAX_COLLATERAL_LEN: usize = 1024 * 1024;

/// Errors of reading collateral.
#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    /// Not the expected JSON.
    #[error("TDX collateral is not valid collateral JSON")]
    Json(#[from] serde_json::Error),
    /// Too large.
    #[error("TDX collateral is {0} bytes, larger than {MAX_COLLATERAL_LEN}")]
    TooLarge(usize),
    /// This build cannot check collateral.
    #[error("this build has no TDX collateral support (feature tdx-collateral)")]
    Unsupported,
}

impl Collateral {
    /// Reads collateral JSON (`pck_crl_issuer_chain`, `root_ca_crl`, `pck_crl`,
    /// `tcb_info_issuer_chain`, `tcb_info`, `tcb_info_signature`,
    /// `qe_identity_issuer_chain`, `qe_identity`, `qe_identity_signature`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, CollateralError> {
        if bytes.len() > MAX_COLLATERAL_LEN {
            return Err(CollateralError::TooLarge(bytes.len()));
        }
        #[cfg(feature = "tdx-collateral")]
        {
            Ok(Self {
                inner: serde_json::from_slice(bytes)?,
            })
        }
        #[cfg(not(feature = "tdx-collateral"))]
        {
            Err(CollateralError::Unsupported)
        }
    }
}

/// What collateral checking established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollateralStatus {
    /// TCB status, e.g. "UpToDate".
    pub status: String,
    /// Intel security advisories that apply.
    pub advisory_ids: Vec<String>,
}

/// What verification established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The collateral's verdict, when collateral was given and verified.
    pub collateral: Option<CollateralStatus>,
    /// The PCK certificate's SGX extensions, once its chain verified.
    pub pck: Option<PckInfo>,
}

/// What a quote is verified against: the root, and CRLs given on their own.
#[derive(Clone, Copy, Debug)]
pub struct Trust<'a> {
    /// The root CA (normally [`intel_root`]).
    pub root: &'a Cert,
    /// Intel's root CA CRL (lists revoked PCK CAs).
    pub root_ca_crl: Option<&'a Crl>,
    /// Intel's PCK CRL of the PCK chain's CA (lists revoked PCK certificates).
    pub pck_crl: Option<&'a Crl>,
}

impl Default for Trust<'static> {
    fn default() -> Self {
        Self {
            root: intel_root(),
            root_ca_crl: None,
            pck_crl: None,
        }
    }
}

/// Checks the PCK chain to `root`; returns the leaf and its CA.
fn pck_chain(quote: &Quote, root: &Cert, now: Option<u64>) -> Result<(Cert, Cert), Reason> {
    let certs = pem_to_certs(&quote.pck_chain_pem, "PCK chain").map_err(|e| cert_reason(&e))?;
    let (leaf, rest) = certs
        .split_first()
        .ok_or_else(|| Reason::new(ReasonKind::Chain, "PCK chain is empty"))?;
    let (ca, tail) = rest
        .split_first()
        .ok_or_else(|| Reason::new(ReasonKind::Chain, "PCK chain has no intermediate CA"))?;
    match tail {
        [] => {}
        [r] if r == root => {}
        _ => {
            return Err(Reason::new(
                ReasonKind::Chain,
                "PCK chain does not end at the pinned Intel SGX Root CA",
            ))
        }
    }
    let chain = |e| cert_reason(&e);
    if !ca
        .common_name()
        .is_some_and(|cn| PCK_CA_NAMES.contains(&cn.as_str()))
    {
        return Err(Reason::new(
            ReasonKind::Chain,
            "PCK chain intermediate is not an Intel SGX PCK CA",
        ));
    }
    if leaf.common_name().as_deref() != Some("Intel SGX PCK Certificate") {
        return Err(Reason::new(
            ReasonKind::Chain,
            "PCK chain leaf is not an Intel SGX PCK Certificate",
        ));
    }
    ca.verify_issued_by(root, "PCK CA", "Intel SGX Root CA")
        .map_err(chain)?;
    leaf.verify_issued_by(ca, "PCK certificate", "PCK CA")
        .map_err(chain)?;
    if let Some(now) = now {
        root.check_validity(now, "Intel SGX Root CA")
            .map_err(chain)?;
        ca.check_validity(now, "PCK CA").map_err(chain)?;
        leaf.check_validity(now, "PCK certificate").map_err(chain)?;
    }
    Ok((leaf.clone(), ca.clone()))
}

/// The CRLs given on their own, applied to a verified chain.
fn check_crls(trust: &Trust<'_>, leaf: &Cert, ca: &Cert, now: Option<u64>) -> Vec<Reason> {
    let revocation = |e: crate::crl::CrlError| Reason::new(ReasonKind::Revocation, e.to_string());
    let mut reasons = Vec::new();
    if let Some(crl) = trust.root_ca_crl {
        if let Err(e) = crl.check(ca, "PCK CA", trust.root, "Intel SGX Root CA", now) {
            reasons.push(revocation(e));
        } else if crl.lists(trust.root) {
            reasons.push(Reason::new(
                ReasonKind::Revocation,
                "the root CA CRL revokes the root CA itself",
            ));
        }
    }
    if let Some(crl) = trust.pck_crl {
        if let Err(e) = crl.check(leaf, "PCK certificate", ca, "the PCK chain's CA", now) {
            reasons.push(revocation(e));
        }
    }
    reasons
}

/// Verifies a parsed quote against `trust`. `now` (Unix seconds) is when certificates must be
/// valid and CRLs current (`None`: not checked); collateral needs it and is refused without
/// it. Returns what was established and every reason found.
pub fn verify(
    quote: &Quote,
    trust: &Trust<'_>,
    collateral: Option<&Collateral>,
    now: Option<u64>,
) -> (Verified, Vec<Reason>) {
    let mut reasons = Vec::new();
    let mut verified = Verified::default();
    if quote.qe_vendor_id != INTEL_QE_VENDOR_ID {
        reasons.push(Reason::new(
            ReasonKind::QeBinding,
            format!(
                "QE vendor ID {} is not Intel's",
                hex::encode(quote.qe_vendor_id)
            ),
        ));
    }
    match pck_chain(quote, trust.root, now) {
        Err(r) => reasons.push(r),
        Ok((pck, ca)) => match pck.p256_public_key("PCK certificate") {
            Err(e) => reasons.push(cert_reason(&e)),
            Ok(key) => {
                match PckInfo::from_cert(&pck) {
                    Ok(info) => verified.pck = Some(info),
                    Err(e) => reasons.push(Reason::new(ReasonKind::Chain, e.to_string())),
                }
                reasons.extend(check_crls(trust, &pck, &ca, now));
                if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
                    .verify(&quote.qe_report_raw, &quote.qe_report_signature)
                    .is_err()
                {
                    reasons.push(Reason::new(
                        ReasonKind::QeBinding,
                        "QE report signature does not verify under the PCK key",
                    ));
                }
            }
        },
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&quote.attestation_key);
    ctx.update(&quote.qe_auth_data);
    let h = ctx.finish();
    if quote.qe_report.report_data[..32] != *h.as_ref()
        || quote.qe_report.report_data[32..].iter().any(|&b| b != 0)
    {
        reasons.push(Reason::new(
            ReasonKind::QeBinding,
            "QE report data is not SHA-256(attestation key || QE auth data) followed by zeros",
        ));
    }
    let mut ak = [0u8; 65];
    ak[0] = 4;
    ak[1..].copy_from_slice(&quote.attestation_key);
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &ak[..])
        .verify(quote.signed_bytes(), &quote.signature)
        .is_err()
    {
        reasons.push(Reason::new(
            ReasonKind::Signature,
            "TDX quote signature does not verify under its attestation key",
        ));
    }
    if let Some(c) = collateral {
        match now {
            None => reasons.push(Reason::new(
                ReasonKind::Collateral,
                "TDX collateral given without a verification time",
            )),
            Some(now) => match check_collateral(quote, trust.root, c, now) {
                Ok(s) => verified.collateral = Some(s),
                Err(r) => reasons.push(r),
            },
        }
    }
    (verified, reasons)
}

#[cfg(feature = "tdx-collateral")]
fn check_collateral(
    quote: &Quote,
    root: &Cert,
    c: &Collateral,
    now: u64,
) -> Result<CollateralStatus, Reason> {
    // Debug and service TDs are policy questions here, reported once by `Policy::validate`.
    let v = dcap_qvl::verify::QuoteVerifier::new(root.der().to_vec())
        .allow_debug(true)
        .allow_service_td(true);
    match v.verify(quote.as_bytes(), &c.inner, now) {
        Ok(r) => Ok(CollateralStatus {
            status: r.status,
            advisory_ids: r.advisory_ids,
        }),
        Err(e) => Err(Reason::new(
            ReasonKind::Collateral,
            format!("TDX collateral check failed: {e:#}"),
        )),
    }
}

#[cfg(not(feature = "tdx-collateral"))]
fn check_collateral(
    _: &Quote,
    _: &Cert,
    _: &Collateral,
    _: u64,
) -> Result<CollateralStatus, Reason> {
    Err(Reason::new(
        ReasonKind::Collateral,
        "this build has no TDX collateral support",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_intel_root_is_self_signed() {
        let r = intel_root();
        r.verify_issued_by(r, "root", "root").unwrap();
        assert_eq!(r.common_name().as_deref(), Some("Intel SGX Root CA"));
        let fp = digest::digest(&digest::SHA256, r.der());
        assert_eq!(
            hex::encode(fp.as_ref()),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
    }
}

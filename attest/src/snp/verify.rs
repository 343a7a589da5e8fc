//! Verification of a parsed SEV-SNP report: the VCEK/VLEK chain to a pinned AMD root, the
//! report's signature, and the rules that bind the report to its certificate (REPORTED_TCB
//! equals the certificate's TCB extensions, CHIP_ID equals its hwID unless masked, the CPUID
//! product agrees with the chain). Policy (debug, VMPL, measurements, ...) is not checked
//! here: see [`crate::policy`].

use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};

use super::certs::{verify_chain, AmdRoots, Endorsement, Product};
use super::report::{Report, SigningKey};
use super::tcb::Tcb;
use crate::crl::Crl;
use crate::verdict::{Reason, ReasonKind};
use crate::x509::{pem_to_certs, CertError};

/// What verification established.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The product whose ARK anchors the chain, once the chain verified.
    pub product: Option<Product>,
}

/// Maps a certificate error to a reason.
pub(crate) fn cert_reason(e: &CertError) -> Reason {
    let kind = match e {
        CertError::Malformed { .. } | CertError::TooLarge { .. } | CertError::Pem(_) => {
            ReasonKind::Malformed
        }
        CertError::Expired { .. } => ReasonKind::Validity,
        _ => ReasonKind::Chain,
    };
    Reason::new(kind, e.to_string())
}

/// Checks the report's ECDSA P-384/SHA-384 signature over `[0, 0x2A0)` with the uncompressed
/// public key `key` (97 bytes).
pub fn check_signature(report: &Report, key: &[u8], signer: &str) -> Option<Reason> {
    let bad = || {
        Reason::new(
            ReasonKind::Signature,
            format!("SNP report signature does not verify under the {signer} key"),
        )
    };
    let Some(sig) = report.signature_fixed() else {
        return Some(bad());
    };
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key)
        .verify(report.signed_bytes(), &sig)
        .err()
        .map(|_| bad())
}

/// The binding rules between a report and the certificate of its signing key:
/// REPORTED_TCB equals `cert_tcb`, and (for a VCEK) CHIP_ID equals `hwid` unless masked.
pub fn check_binding(
    report: &Report,
    cert_tcb: &Tcb,
    hwid: Option<&[u8]>,
    turin_layout: bool,
    signer: &str,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let reported = report.reported_tcb_for(turin_layout);
    if !Tcb::reserved_clear(report.reported_tcb, turin_layout) {
        reasons.push(Reason::new(
            ReasonKind::TcbMismatch,
            format!(
                "REPORTED_TCB {:#018x} has reserved bytes set",
                report.reported_tcb
            ),
        ));
    }
    if reported != *cert_tcb {
        reasons.push(Reason::new(
            ReasonKind::TcbMismatch,
            format!("REPORTED_TCB ({reported}) differs from the {signer} certificate's TCB ({cert_tcb})"),
        ));
    }
    if report.mask_chip_id {
        if report.chip_id.iter().any(|&b| b != 0) {
            reasons.push(Reason::new(
                ReasonKind::ChipId,
                "MASK_CHIP_ID is set but CHIP_ID is not zero",
            ));
        }
    } else if let Some(hwid) = hwid {
        let n = hwid.len().min(report.chip_id.len());
        let matches = report.chip_id[..n] == hwid[..n]
            && hwid.len() <= report.chip_id.len()
            && report.chip_id[n..].iter().all(|&b| b == 0);
        if !matches {
            reasons.push(Reason::new(
                ReasonKind::ChipId,
                format!("CHIP_ID differs from the {signer} certificate's hwID"),
            ));
        }
    }
    reasons
}

/// Verifies a parsed report signed by a real AMD key.
///
/// `endorsement_der` is the VCEK or VLEK certificate; `chain_pem` optional intermediates
/// (ASK/ASVK, ARK) that are used only if a pinned ARK signed them; `crls` AMD CRLs, of which
/// those issued by the ARK that anchors the chain are applied to the intermediate (ASK or
/// ASVK); `now` the time (Unix seconds) at which certificates must be valid and CRLs
/// current, or `None` not to check validity. Returns what was established and every reason
/// found.
pub fn verify(
    report: &Report,
    endorsement_der: &[u8],
    chain_pem: Option<&[u8]>,
    roots: &AmdRoots,
    crls: &[Crl],
    now: Option<u64>,
) -> (Verified, Vec<Reason>) {
    let mut reasons = Vec::new();
    let mut verified = Verified::default();
    if report.signing_key == SigningKey::None {
        reasons.push(Reason::new(
            ReasonKind::SigningKey,
            "SNP report is unsigned (SIGNING_KEY = 7)",
        ));
        return (verified, reasons);
    }
    let endorsement = match Endorsement::from_der(endorsement_der) {
        Ok(e) => e,
        Err(e) => {
            reasons.push(cert_reason(&e));
            return (verified, reasons);
        }
    };
    if endorsement.kind != report.signing_key {
        reasons.push(Reason::new(
            ReasonKind::SigningKey,
            format!(
                "SNP report says it is signed by the {} but the certificate is a {}",
                report.signing_key.name(),
                endorsement.kind.name()
            ),
        ));
        return (verified, reasons);
    }
    let signer = endorsement.kind.name();
    let supplied = match chain_pem {
        Some(pem) => match pem_to_certs(pem, "chain") {
            Ok(c) => c,
            Err(e) => {
                reasons.push(cert_reason(&e));
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let chain = match verify_chain(&endorsement, &supplied, roots, now) {
        Ok(ok) => ok,
        Err(e) => {
            reasons.push(cert_reason(&e));
            return (verified, reasons);
        }
    };
    let product = chain.product;
    verified.product = Some(product);
    let inter_what = match endorsement.kind {
        SigningKey::Vlek => "ASVK",
        _ => "ASK",
    };
    for crl in crls.iter().filter(|c| c.named_for(&chain.ark)) {
        if let Err(e) = crl.check(&chain.intermediate, inter_what, &chain.ark, "ARK", now) {
            reasons.push(Reason::new(ReasonKind::Revocation, e.to_string()));
        }
    }
    // The chain is trusted from here: the leaf's key is AMD's.
    match endorsement.cert.p384_public_key(signer) {
        Ok(key) => reasons.extend(check_signature(report, key, signer)),
        Err(e) => reasons.push(cert_reason(&e)),
    }
    if let Some(name) = &endorsement.product_name {
        if !name.starts_with(product.name()) {
            reasons.push(Reason::new(
                ReasonKind::Chain,
                format!(
                    "{signer} productName {name:?} is not a {} product",
                    product.name()
                ),
            ));
        }
    }
    if let Some((family, model, _)) = report.cpuid {
        if let Some(p) = Product::from_cpuid(family, model) {
            if p != product {
                reasons.push(Reason::new(
                    ReasonKind::Chain,
                    format!(
                        "report CPUID (family {family:#x}, model {model:#x}) is {} but the {signer} chains to ARK-{}",
                        p.name(),
                        product.name()
                    ),
                ));
            }
        }
    }
    let hwid = match endorsement.kind {
        SigningKey::Vcek => endorsement.hwid.as_deref(),
        _ => None,
    };
    reasons.extend(check_binding(
        report,
        &endorsement.tcb,
        hwid,
        product.turin_layout(),
        signer,
    ));
    (verified, reasons)
}

//! Attestation evidence as a hostile guest places it: SEV-SNP reports and TDX quotes,
//! parsed and verified with the default policy. A verdict is always produced; it accepts
//! only when it lists no reason.

use swiotlb_attest::{Evidence, PlatformKind, Policy, Verdict, Verifier};

fn check(v: &Verdict) {
    assert_eq!(
        v.accepted,
        v.reasons.is_empty(),
        "a verdict accepts exactly when it has no reason: {v:?}"
    );
}

fn verifier() -> Verifier {
    Verifier::new(Policy::default())
}

/// Length of an SNP attestation report.
pub const SNP_REPORT_LEN: usize = 0x4a0;

/// An SNP report (the first 0x4A0 bytes) followed by its VCEK or VLEK (DER), so a seed made
/// of a real report and its certificate reaches the signature and chain checks; and the
/// same bytes as a raw evidence blob.
pub fn snp_report(data: &[u8]) {
    let v = verifier();
    let (report, endorsement) = data.split_at(data.len().min(SNP_REPORT_LEN));
    let ev = Evidence {
        platform: PlatformKind::Snp,
        report: report.to_vec(),
        endorsement: endorsement.to_vec(),
        chain: Vec::new(),
    };
    check(&v.verify_evidence(&ev, Some(&[0u8; 64])));
    check(&v.verify_evidence(&ev, None));
    check(&v.verify(data, &|_| None));
}

/// A TDX quote (its certification data carries the PCK chain).
pub fn tdx_quote(data: &[u8]) {
    let v = verifier();
    let ev = Evidence {
        platform: PlatformKind::Tdx,
        report: data.to_vec(),
        endorsement: Vec::new(),
        chain: Vec::new(),
    };
    check(&v.verify_evidence(&ev, Some(&[0u8; 64])));
    check(&v.verify(data, &|_| Some([0u8; 64])));
}

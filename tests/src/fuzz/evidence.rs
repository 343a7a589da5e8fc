//! Attestation evidence as a hostile guest places it: SEV-SNP reports and TDX quotes (v4
//! and v5, with trailing bytes), parsed and verified with the default policy. A verdict is
//! always produced; it accepts only when it lists no reason. And what reaches a verifier
//! or a relying party from elsewhere: revocation lists and signed EARs.

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

/// A revocation list as given to the verifier (a file the operator fetched): parsed, then
/// checked as a list for the pinned Milan ASK under its ARK; it never verifies, and nothing
/// panics.
pub fn crl(data: &[u8]) {
    use swiotlb_attest::crl::Crl;
    use swiotlb_attest::snp::certs::AmdRoots;
    let Ok(crl) = Crl::from_der(data, "CRL") else {
        return;
    };
    let milan = &AmdRoots::pinned().products[0];
    let _ = crl.window();
    let _ = crl.lists(&milan.ask);
    assert!(
        crl.check(&milan.ask, "ASK", &milan.ark, "ARK", Some(0))
            .is_err(),
        "a CRL the fuzzer made verified under AMD's ARK"
    );
}

/// An EAR JWT as a relying party receives it, checked against a fixed public key whose
/// private key was thrown away when it was made: it never verifies, and nothing panics.
pub fn ear_jwt(data: &[u8]) {
    let jwk = serde_json::json!({
        "crv": "Ed25519",
        "kty": "OKP",
        "x": "YdOihg5FLdm1e7xdh6MPlB5J_dzodWosFeBLB0VU6BI",
    });
    let token = String::from_utf8_lossy(data);
    assert!(
        swiotlb_attest::ear::verify_jwt(&token, &jwk).is_err(),
        "a JWT the fuzzer made verified"
    );
}

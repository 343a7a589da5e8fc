//! Revocation lists: Intel's real root CA and PCK CRLs (from dcap-qvl's collateral) on the
//! real quote, and, where only constructed evidence can show a revoked or stale list, the
//! TEST-ONLY chains of `tests/data/test-pki` (see `common/testpki.rs`).

mod common;

use common::testpki::{self, TEST_NOW};
use common::NOW;
use swiotlb_attest::crl::{Crl, CrlError};
use swiotlb_attest::{Evidence, PlatformKind, Policy, ReasonKind, Verdict, Verifier};

fn tdx(quote: Vec<u8>) -> Evidence {
    Evidence {
        platform: PlatformKind::Tdx,
        report: quote,
        endorsement: Vec::new(),
        chain: Vec::new(),
    }
}

fn dcap_quote() -> Vec<u8> {
    common::read(common::dcap_samples().join("tdx_quote"))
}

/// The real root CA and PCK CRLs of dcap-qvl's collateral.
fn real_intel_crls() -> (Crl, Crl) {
    let c: serde_json::Value = serde_json::from_slice(&common::read(
        common::dcap_samples().join("tdx_quote_collateral.json"),
    ))
    .unwrap();
    let der = |k: &str| hex::decode(c[k].as_str().unwrap()).unwrap();
    (
        Crl::from_der(&der("root_ca_crl"), "root CA CRL").unwrap(),
        Crl::from_der(&der("pck_crl"), "PCK CRL").unwrap(),
    )
}

fn only(v: &Verdict, kind: ReasonKind, needle: &str) {
    assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
    assert_eq!(v.reasons[0].kind, kind, "{:?}", v.reasons);
    assert!(v.reasons[0].message.contains(needle), "{}", v.reasons[0]);
}

#[test]
fn intels_real_crls_do_not_revoke_the_real_quotes_chain() {
    let (root_crl, pck_crl) = real_intel_crls();
    let (this, next) = pck_crl.window();
    assert!(
        this <= NOW && next.is_some_and(|n| NOW <= n),
        "{this} {next:?}"
    );
    let v = Verifier::new(Policy::default())
        .with_intel_crls(Some(root_crl.clone()), Some(pck_crl.clone()))
        .at_time(NOW)
        .verify_evidence(&tdx(dcap_quote()), None);
    assert!(v.accepted, "{:?}", v.reasons);
    // The same lists after their nextUpdate are refused, not ignored.
    let later = next.unwrap() + 1;
    let v = Verifier::new(Policy::default())
        .with_intel_crls(None, Some(pck_crl))
        .at_time(later)
        .verify_evidence(&tdx(dcap_quote()), None);
    assert!(v.has(ReasonKind::Revocation), "{:?}", v.reasons);
}

#[test]
fn a_crl_of_another_issuer_is_refused() {
    // The real PCK CRL given as the root CA CRL: not issued by the root.
    let (_, pck_crl) = real_intel_crls();
    let v = Verifier::new(Policy::default())
        .with_intel_crls(Some(pck_crl), None)
        .at_time(NOW)
        .verify_evidence(&tdx(dcap_quote()), None);
    only(
        &v,
        ReasonKind::Revocation,
        "is not issued by Intel SGX Root CA",
    );
    // A test PCK CRL on the real chain: another CA's list.
    let v = Verifier::new(Policy::default())
        .with_intel_crls(None, Some(testpki::intel_crl("pck-crl")))
        .at_time(NOW)
        .verify_evidence(&tdx(dcap_quote()), None);
    only(
        &v,
        ReasonKind::Revocation,
        "is not issued by the PCK chain's CA",
    );
}

/// CONSTRUCTED: the real quote re-signed by the test chain.
fn constructed(root_crl: &str, pck_crl: &str) -> Verdict {
    Verifier::new(Policy::default())
        .with_intel_root(testpki::intel_root())
        .with_intel_crls(
            Some(testpki::intel_crl(root_crl)),
            Some(testpki::intel_crl(pck_crl)),
        )
        .at_time(TEST_NOW)
        .verify_evidence(&tdx(testpki::resign_tdx(&dcap_quote(), |_| {})), None)
}

#[test]
fn a_revoked_pck_certificate_or_pck_ca_is_rejected_constructed() {
    assert!(constructed("root-crl", "pck-crl").accepted);
    only(
        &constructed("root-crl", "pck-crl-revoked"),
        ReasonKind::Revocation,
        "revokes the PCK certificate",
    );
    only(
        &constructed("root-crl-ca-revoked", "pck-crl"),
        ReasonKind::Revocation,
        "revokes the PCK CA",
    );
    only(
        &constructed("root-crl", "pck-crl-stale"),
        ReasonKind::Revocation,
        "is not current",
    );
}

#[test]
fn the_collaterals_crls_revoke_too_constructed() {
    let q = testpki::resign_tdx(&dcap_quote(), |_| {});
    for (root_crl, pck_crl, ok) in [
        ("root-crl", "pck-crl", true),
        ("root-crl", "pck-crl-revoked", false),
        ("root-crl-ca-revoked", "pck-crl", false),
    ] {
        let v = Verifier::new(Policy::default())
            .with_intel_root(testpki::intel_root())
            .with_tdx_collateral(testpki::tdx_collateral("UpToDate", &[], root_crl, pck_crl))
            .at_time(TEST_NOW)
            .verify_evidence(&tdx(q.clone()), None);
        assert_eq!(v.accepted, ok, "{root_crl} {pck_crl}: {:?}", v.reasons);
        if !ok {
            only(&v, ReasonKind::Collateral, "CertRevoked");
        }
    }
}

/// CONSTRUCTED: the virtee report re-signed by the test VCEK under the test ARK and ASK.
fn snp_with(crls: &[&str]) -> Verdict {
    let mut v = Verifier::new(Policy::default()).with_amd_roots(testpki::amd_roots());
    for c in crls {
        v = v.with_amd_crl(testpki::amd_crl(c));
    }
    v.at_time(TEST_NOW).verify_evidence(
        &testpki::resign_snp(&common::virtee_from_sev_crate().report),
        None,
    )
}

#[test]
fn an_amd_crl_revoking_the_ask_rejects_constructed() {
    assert!(snp_with(&[]).accepted);
    assert!(snp_with(&["crl"]).accepted);
    only(
        &snp_with(&["crl-ask-revoked"]),
        ReasonKind::Revocation,
        "revokes the ASK",
    );
    only(
        &snp_with(&["crl-stale"]),
        ReasonKind::Revocation,
        "is not current",
    );
    // Every CRL of the chain's ARK applies.
    let v = snp_with(&["crl", "crl-ask-revoked"]);
    only(&v, ReasonKind::Revocation, "revokes the ASK");
}

#[test]
fn an_amd_crl_of_another_ark_is_left_aside() {
    // The test ARK's CRL revokes "its" ASK; the real report chains to AMD's pinned Milan
    // ARK, which did not issue it.
    let v = Verifier::new(Policy::default())
        .with_amd_crl(testpki::amd_crl("crl-ask-revoked"))
        .at_time(NOW)
        .verify_evidence(
            &Evidence {
                platform: PlatformKind::Snp,
                report: common::virtee_from_sev_crate().report,
                endorsement: common::virtee_from_sev_crate().vcek,
                chain: Vec::new(),
            },
            None,
        );
    assert!(v.accepted, "{:?}", v.reasons);
}

#[test]
fn crl_parsing_and_signatures_are_strict() {
    let good = testpki::amd_crl("crl");
    let roots = testpki::amd_roots();
    let ark = &roots.products[0].ark;
    let ask = &roots.products[0].ask;
    good.verify_signed_by(ark, "ARK").unwrap();
    assert!(matches!(
        good.verify_signed_by(ask, "ASK"),
        Err(CrlError::Issuer { .. })
    ));
    // One flipped bit inside the signed part breaks the signature (or the parse).
    let der = good.der().to_vec();
    for i in [30, der.len() / 2, der.len() - 300] {
        let mut b = der.clone();
        b[i] ^= 1;
        if let Ok(c) = Crl::from_der(&b, "AMD CRL") {
            assert!(c.verify_signed_by(ark, "ARK").is_err(), "byte {i}");
        }
    }
    assert!(Crl::from_der(&der[..der.len() - 1], "AMD CRL").is_err());
}

//! The verdict as an EAT Attestation Result on real evidence (the virtee report, dcap-qvl's
//! quote with its collateral, go-sev-guest's debug report) and on constructed collateral
//! for a TCB status other than UpToDate.

mod common;

use common::testpki::{self, TEST_NOW};
use common::NOW;
use serde_json::Value;
use swiotlb_attest::ear::{verify_jwt, EarAlg, EarSigner, EAT_PROFILE};
use swiotlb_attest::tdx::verify::Collateral;
use swiotlb_attest::{Evidence, PlatformKind, Policy, Verifier};

fn virtee() -> Evidence {
    common::virtee_from_sev_crate().evidence(false)
}

fn tdx(quote: Vec<u8>) -> Evidence {
    Evidence {
        platform: PlatformKind::Tdx,
        report: quote,
        endorsement: Vec::new(),
        chain: Vec::new(),
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

#[test]
fn a_real_accepted_report_gives_an_affirming_ear_with_its_evidence_digest() {
    let ev = virtee();
    let blob = ev.encode().unwrap();
    let policy = Policy::default();
    let verifier = Verifier::new(policy.clone()).at_time(NOW);
    let verdict = verifier.verify(&blob, &|_| None);
    assert!(verdict.accepted, "{:?}", verdict.reasons);
    assert_eq!(
        verdict.evidence_sha256.as_deref(),
        Some(sha256(&blob).as_str())
    );
    let ear: Value = serde_json::from_str(&verifier.ear(&verdict).unwrap()).unwrap();
    assert_eq!(ear["eat_profile"], EAT_PROFILE);
    assert_eq!(ear["iat"], NOW);
    assert_eq!(ear["ear.verifier-id"]["developer"], "swiotlb-attest");
    let snp = &ear["submods"]["snp"];
    assert_eq!(snp["ear.status"], "affirming");
    let tv = &snp["ear.trustworthiness-vector"];
    for claim in [
        "instance-identity",
        "configuration",
        "hardware",
        "runtime-opaque",
    ] {
        assert_eq!(tv[claim], 2, "{claim}");
    }
    assert!(tv.get("executables").is_none(), "no measurement pinned");
    assert_eq!(
        snp["ear.appraisal-policy-id"],
        format!("urn:swiotlb-attest:policy:sha256:{}", policy.digest())
    );
    let annotated = &snp["ear.veraison.annotated-evidence"];
    assert_eq!(annotated["evidence_sha256"], sha256(&blob));
    assert_eq!(
        annotated["measurement"],
        verdict.measurement.clone().unwrap()
    );
    assert_eq!(annotated["tcb"]["product"], "Milan");
}

#[test]
fn signed_ears_of_real_evidence_verify_with_the_public_jwk() {
    for alg in [EarAlg::EdDsa, EarAlg::Es256] {
        let signer = EarSigner::from_pkcs8(&EarSigner::generate_pkcs8(alg).unwrap()).unwrap();
        let verifier = Verifier::new(Policy::default())
            .with_ear_signer(signer.clone())
            .at_time(NOW);
        let verdict = verifier.verify_evidence(&virtee(), None);
        let jwt = verifier.ear(&verdict).unwrap();
        let header: Value =
            serde_json::from_slice(&base64_url(jwt.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["kid"], signer.kid());
        let claims = verify_jwt(&jwt, &signer.public_jwk()).unwrap();
        assert_eq!(claims["submods"]["snp"]["ear.status"], "affirming");
    }
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[test]
fn a_rejected_real_report_is_contraindicated_with_the_failed_claims() {
    let Some(dir) = common::vectors("ear rejected go-sev-guest") else {
        return;
    };
    let c = common::gsg(&dir);
    let verifier = Verifier::new(Policy {
        measurements: Some(vec![[0; 48]]),
        ..Policy::default()
    })
    .at_time(NOW);
    let verdict = verifier.verify_evidence(&c.evidence(true), None);
    let ear: Value = serde_json::from_str(&verifier.ear(&verdict).unwrap()).unwrap();
    let snp = &ear["submods"]["snp"];
    assert_eq!(snp["ear.status"], "contraindicated");
    let tv = &snp["ear.trustworthiness-vector"];
    assert_eq!(tv["configuration"], 96, "debug");
    assert_eq!(
        tv["runtime-opaque"], 96,
        "debug: memory visible to the host"
    );
    assert_eq!(tv["executables"], 33, "measurement not recognized");
    assert_eq!(tv["instance-identity"], 2, "the signature itself verified");
    assert_eq!(
        snp["ear.veraison.annotated-evidence"]["reasons"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_real_quote_with_collateral_affirms_genuine_hardware() {
    let d = common::dcap_samples();
    let col = Collateral::from_json(&common::read(d.join("tdx_quote_collateral.json"))).unwrap();
    let q = common::read(d.join("tdx_quote"));
    let mut extra = q.clone();
    extra.extend_from_slice(b"unsigned");
    let verifier = Verifier::new(Policy::default())
        .with_tdx_collateral(col)
        .at_time(NOW);
    let verdict = verifier.verify_evidence(&tdx(extra), None);
    assert!(verdict.accepted, "{:?}", verdict.reasons);
    let ear: Value = serde_json::from_str(&verifier.ear(&verdict).unwrap()).unwrap();
    let t = &ear["submods"]["tdx"];
    assert_eq!(t["ear.status"], "affirming");
    assert_eq!(t["ear.trustworthiness-vector"]["hardware"], 2);
    assert_eq!(
        t["ear.veraison.annotated-evidence"]["tcb"]["status"],
        "UpToDate"
    );
    assert_eq!(
        t["ear.veraison.annotated-evidence"]["trailing_bytes"],
        70 + 8
    );
}

#[test]
fn an_accepted_status_other_than_up_to_date_is_a_warning_constructed() {
    let q = testpki::resign_tdx(
        &common::read(common::dcap_samples().join("tdx_quote")),
        |_| {},
    );
    let verifier = Verifier::new(Policy {
        tdx_tcb_statuses: vec!["UpToDate".into(), "SWHardeningNeeded".into()],
        ..Policy::default()
    })
    .with_intel_root(testpki::intel_root())
    .with_tdx_collateral(testpki::tdx_collateral(
        "SWHardeningNeeded",
        &["INTEL-SA-00615"],
        "root-crl",
        "pck-crl",
    ))
    .at_time(TEST_NOW);
    let verdict = verifier.verify_evidence(&tdx(q), None);
    assert!(verdict.accepted, "{:?}", verdict.reasons);
    let ear: Value = serde_json::from_str(&verifier.ear(&verdict).unwrap()).unwrap();
    let t = &ear["submods"]["tdx"];
    assert_eq!(t["ear.status"], "warning");
    assert_eq!(t["ear.trustworthiness-vector"]["hardware"], 32);
    assert_eq!(
        t["ear.veraison.annotated-evidence"]["tcb"]["advisory_ids"],
        serde_json::json!(["INTEL-SA-00615"])
    );
}

#[test]
fn an_emulated_ear_is_never_affirming() {
    let signer = swiotlb_attest::emulated::Signer::generate().unwrap();
    let ev = signer
        .sign_report(&[1; 64], &[2; 48], &Default::default())
        .unwrap();
    let verifier = Verifier::new(Policy {
        allow_emulated: true,
        ..Policy::default()
    })
    .with_emulated(signer.verifier());
    let verdict = verifier.verify_evidence(&ev, None);
    assert!(verdict.accepted);
    let ear: Value = serde_json::from_str(&verifier.ear(&verdict).unwrap()).unwrap();
    assert_eq!(ear["submods"]["emulated"]["ear.status"], "contraindicated");
}

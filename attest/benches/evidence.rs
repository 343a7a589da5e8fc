//! Micro-benchmark of evidence verification per second: what the device's attestation gate
//! does with the evidence a guest puts in the pool (decode, strict parse, signatures and
//! chain, binding rules, policy). Each against its limit, measured in the same run: the
//! signature checks verification cannot skip, done with `ring` directly on the same bytes.
//!
//! - emulated platform: evidence signed by a freshly generated emulated ARK/VCEK, verified by
//!   `Verifier` with the emulated verifier; limit: two ECDSA P-384 verifications (the VCEK
//!   certificate under the ARK, the report under the VCEK);
//! - SEV-SNP: the real Milan report in `../shared/vectors/snp/virtee-sev/` (or
//!   `$SWIOTLB_VECTORS/snp/virtee-sev/`) with its VCEK and chain, verified against the
//!   pinned AMD roots; limit: one RSA-PSS-4096 verification (the VCEK under the pinned ASK)
//!   and one ECDSA P-384 verification (the report under the VCEK). When the vectors are
//!   absent this part says so loudly and is skipped.
//!
//! Interleaved rounds, medians; ratios are medians of per-round ratios. Never a pass/fail.
//!
//! `cargo bench -p swiotlb-attest --bench evidence [-- --quick]`

#[path = "../../shared/benches/support/measure.rs"]
mod measure;

use measure::{each, measure, median, speed_ratio, Run};

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED, RSA_PSS_2048_8192_SHA384};
use swiotlb_attest::emulated::{EmulatedCert, ReportOptions, Signer};
use swiotlb_attest::snp::report::{decode_hex_text, Report};
use swiotlb_attest::x509::{pem_to_certs, Cert};
use swiotlb_attest::{Evidence, PlatformKind, Policy, Verifier};
use x509_cert::der::Decode;

/// 2025-07-01T00:00:00Z: inside the validity of the vectors' certificates (as in the tests).
const NOW: u64 = 1_751_328_000;

/// Prints one limit/verifier pair and records it.
fn print_pair(
    what: &str,
    limit: &str,
    r: &[Vec<f64>],
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    let per_s = |v: &[f64]| 1e9 / median(v);
    println!(
        "  {what:<9} {:<40} {:>7.0}/s {:>8.1} us",
        format!("limit: {limit}"),
        per_s(&r[0]),
        median(&r[0]) / 1e3
    );
    println!(
        "  {what:<9} {:<40} {:>7.0}/s {:>8.1} us  speed vs limit {:.3}",
        "Verifier::verify",
        per_s(&r[1]),
        median(&r[1]) / 1e3,
        speed_ratio(&r[1], &r[0])
    );
    let k = what.to_lowercase();
    json.insert(format!("{k}_limit_per_s"), serde_json::json!(per_s(&r[0])));
    json.insert(format!("{k}_verify_per_s"), serde_json::json!(per_s(&r[1])));
    json.insert(
        format!("{k}_verify_vs_limit"),
        serde_json::json!(speed_ratio(&r[1], &r[0])),
    );
}

fn emulated(rounds: usize, slice: Duration, json: &mut serde_json::Map<String, serde_json::Value>) {
    // Cannot fail: key generation only fails without system randomness.
    let signer = Signer::generate().expect("emulated signer");
    let report_data = [0x42u8; 64];
    let ev = signer
        .sign_report(&report_data, &[0x24; 48], &ReportOptions::default())
        .expect("emulated report");
    let wire = ev.encode().expect("evidence encodes");
    let verifier = Verifier::new(Policy {
        allow_emulated: true,
        ..Policy::default()
    })
    .with_emulated(signer.verifier());
    let expect = |_: PlatformKind| Some(report_data);
    let verdict = verifier.verify(&wire, &expect);
    assert!(
        verdict.accepted,
        "emulated evidence refused: {:?}",
        verdict.reasons
    );

    let (cert, cert_signed, cert_sig) = EmulatedCert::parse(&ev.endorsement).expect("cert");
    let parsed = Report::parse(&ev.report).expect("report");
    let report_sig = parsed.signature_fixed().expect("signature");
    let ark = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, signer.ark_public_key().to_vec());
    let vcek = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, cert.vcek_public_key.to_vec());
    assert!(ark.verify(cert_signed, cert_sig).is_ok());
    assert!(vcek.verify(parsed.signed_bytes(), &report_sig).is_ok());

    let mut cases: Vec<Run<'_>> = vec![
        each(|n| {
            for _ in 0..n {
                black_box(ark.verify(black_box(cert_signed), cert_sig).is_ok());
                black_box(
                    vcek.verify(black_box(parsed.signed_bytes()), &report_sig)
                        .is_ok(),
                );
            }
        }),
        each(|n| {
            for _ in 0..n {
                black_box(verifier.verify(black_box(&wire), &expect).accepted);
            }
        }),
    ];
    let r = measure(&mut cases, rounds, slice);
    drop(cases);
    print_pair("Emulated", "2 x ECDSA P-384", &r, json);
}

fn vectors_dir() -> PathBuf {
    match std::env::var_os("SWIOTLB_VECTORS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    }
}

fn snp(rounds: usize, slice: Duration, json: &mut serde_json::Map<String, serde_json::Value>) {
    let dir = vectors_dir().join("snp/virtee-sev");
    let read = |name: &str| std::fs::read(dir.join(name));
    let (Ok(hex), Ok(vcek_der), Ok(chain)) = (
        read("report_milan.hex"),
        read("vcek_milan.der"),
        read("cert_chain_milan"),
    ) else {
        println!(
            "  !!! SNP: {} not found (set SWIOTLB_VECTORS): SNP verification NOT MEASURED !!!",
            dir.display()
        );
        json.insert("snp_measured".into(), serde_json::json!(false));
        return;
    };
    let report = decode_hex_text(&hex).expect("report_milan.hex is hex");
    let wire = Evidence {
        platform: PlatformKind::Snp,
        report: report.clone(),
        endorsement: vcek_der.clone(),
        chain: chain.clone(),
    }
    .encode()
    .expect("evidence encodes");
    let verifier = Verifier::new(Policy::default()).at_time(NOW);
    let any = |_: PlatformKind| None;
    let verdict = verifier.verify(&wire, &any);
    assert!(
        verdict.accepted,
        "virtee report refused: {:?}",
        verdict.reasons
    );

    // The limit's inputs: the VCEK's signed part and signature, the ASK's RSA key, the
    // report's signed part and signature, the VCEK's P-384 key.
    let vcek = Cert::from_der(&vcek_der, "VCEK").expect("VCEK parses");
    let vcek_x509 = x509_cert::Certificate::from_der(&vcek_der).expect("VCEK parses");
    let vcek_sig = vcek_x509
        .signature()
        .as_bytes()
        .expect("whole bytes")
        .to_vec();
    let ask = pem_to_certs(&chain, "chain")
        .expect("chain parses")
        .into_iter()
        .find(|c| c.common_name().as_deref() == Some("SEV-Milan"))
        .expect("the chain has the Milan ASK");
    let ask_x509 = x509_cert::Certificate::from_der(ask.der()).expect("ASK parses");
    let ask_key = ask_x509
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let rsa = UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA384, ask_key);
    let parsed = Report::parse(&report).expect("report parses");
    let report_sig = parsed.signature_fixed().expect("signature");
    let ecdsa = UnparsedPublicKey::new(
        &ECDSA_P384_SHA384_FIXED,
        vcek.p384_public_key("VCEK").expect("P-384 key").to_vec(),
    );
    assert!(rsa.verify(vcek.tbs_der(), &vcek_sig).is_ok());
    assert!(ecdsa.verify(parsed.signed_bytes(), &report_sig).is_ok());

    let mut cases: Vec<Run<'_>> = vec![
        each(|n| {
            for _ in 0..n {
                black_box(rsa.verify(black_box(vcek.tbs_der()), &vcek_sig).is_ok());
                black_box(
                    ecdsa
                        .verify(black_box(parsed.signed_bytes()), &report_sig)
                        .is_ok(),
                );
            }
        }),
        each(|n| {
            for _ in 0..n {
                black_box(verifier.verify(black_box(&wire), &any).accepted);
            }
        }),
    ];
    let r = measure(&mut cases, rounds, slice);
    drop(cases);
    print_pair("SNP", "RSA-PSS-4096 + ECDSA P-384", &r, json);
    json.insert("snp_measured".into(), serde_json::json!(true));
}

fn main() {
    let (rounds, slice) = measure::plan(Duration::from_millis(60), Duration::from_millis(300));
    println!("evidence verification: {rounds} interleaved rounds of ~{slice:?} (median)");
    let mut json = serde_json::Map::new();
    emulated(rounds, slice, &mut json);
    snp(rounds, slice, &mut json);
    println!("{}", serde_json::Value::Object(json));
}

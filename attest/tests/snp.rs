//! SEV-SNP verification on real reports: the virtee Milan report (from the `sev` crate's
//! published source, and from ../shared/vectors) and the go-sev-guest report (debug on).

mod common;

use common::{SnpCase, NOW};
use swiotlb_attest::snp::certs::{AmdRoots, Endorsement, Product};
use swiotlb_attest::snp::report::{Report, ReportError, SigningKey, SIGNED_LEN};
use swiotlb_attest::{Evidence, PlatformKind, Policy, ReasonKind, Verdict, Verifier};

fn verify(c: &SnpCase, policy: Policy) -> Verdict {
    Verifier::new(policy)
        .at_time(NOW)
        .verify_evidence(&c.evidence(true), None)
}

fn allow_debug() -> Policy {
    Policy {
        allow_debug: true,
        ..Policy::default()
    }
}

#[test]
fn virtee_report_from_the_sev_crate_is_accepted_with_and_without_its_chain() {
    let c = common::virtee_from_sev_crate();
    let v = verify(&c, Policy::default());
    assert!(v.accepted, "{:?}", v.reasons);
    assert_eq!(v.platform, Some(PlatformKind::Snp));
    assert!(!v.emulated);
    let v = Verifier::new(Policy::default())
        .at_time(NOW)
        .verify_evidence(&c.evidence(false), None);
    assert!(v.accepted, "pinned roots alone suffice: {:?}", v.reasons);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["platform"], "snp");
    assert_eq!(json["tcb"]["product"], "Milan");
    assert_eq!(json["tcb"]["reported"]["microcode"], 0x73);
}

#[test]
fn virtee_report_from_the_vectors_is_accepted() {
    let Some(dir) = common::vectors("virtee_report_from_the_vectors_is_accepted") else {
        return;
    };
    let c = common::virtee(&dir);
    assert_eq!(c.report, common::virtee_from_sev_crate().report);
    assert!(verify(&c, Policy::default()).accepted);
}

#[test]
fn go_sev_guest_report_is_rejected_for_debug_and_accepted_when_debug_is_allowed() {
    let Some(dir) = common::vectors("go_sev_guest_report_is_rejected_for_debug") else {
        return;
    };
    let c = common::gsg(&dir);
    let v = verify(&c, Policy::default());
    assert!(!v.accepted);
    assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
    assert_eq!(v.reasons[0].kind, ReasonKind::Debug);
    let v = verify(&c, allow_debug());
    assert!(v.accepted, "{:?}", v.reasons);
    assert_eq!(
        &v.report_data.unwrap()[..12],
        "010203040500",
        "REPORT_DATA = 01 02 03 04 05 then zeros"
    );
}

/// Every single-byte change over the signed part `[0, 0x2A0)` is rejected: either the
/// strict parse refuses it, or the signature (and usually the binding rules) fail.
fn every_signed_byte_matters(c: &SnpCase) {
    let verifier = Verifier::new(allow_debug()).at_time(NOW);
    assert!(verifier.verify_evidence(&c.evidence(false), None).accepted);
    let mut parse_refused = 0;
    for i in 0..SIGNED_LEN {
        let mut ev = c.evidence(false);
        ev.report[i] ^= 0x01;
        let v = verifier.verify_evidence(&ev, None);
        assert!(!v.accepted, "{}: flipping byte {i:#x} was accepted", c.name);
        if v.has(ReasonKind::Malformed) {
            parse_refused += 1;
        } else {
            assert!(
                v.has(ReasonKind::Signature) || v.has(ReasonKind::SigningKey),
                "{}: byte {i:#x}: {:?}",
                c.name,
                v.reasons
            );
        }
    }
    // The must-be-zero ranges and fields like VERSION are refused before any crypto.
    assert!(parse_refused > 0);
}

#[test]
fn every_single_byte_change_of_the_signed_part_is_rejected_virtee() {
    every_signed_byte_matters(&common::virtee_from_sev_crate());
}

#[test]
fn every_single_byte_change_of_the_signed_part_is_rejected_go_sev_guest() {
    let Some(dir) = common::vectors("every_single_byte_change_go_sev_guest") else {
        return;
    };
    every_signed_byte_matters(&common::gsg(&dir));
}

#[test]
fn a_changed_signature_is_rejected() {
    let c = common::virtee_from_sev_crate();
    let verifier = Verifier::new(Policy::default()).at_time(NOW);
    for off in [0x2A0, 0x2A0 + 47, 0x2E8, 0x2E8 + 47] {
        let mut ev = c.evidence(false);
        ev.report[off] ^= 0x80;
        let v = verifier.verify_evidence(&ev, None);
        assert!(v.has(ReasonKind::Signature), "{off:#x}: {:?}", v.reasons);
    }
    // The unused high bytes of R and S must be zero: checked by the signature decoder.
    let mut ev = c.evidence(false);
    ev.report[0x2A0 + 60] = 1;
    assert!(verifier
        .verify_evidence(&ev, None)
        .has(ReasonKind::Signature));
}

#[test]
fn the_other_reports_vcek_is_rejected() {
    let Some(dir) = common::vectors("the_other_reports_vcek_is_rejected") else {
        return;
    };
    let virtee = common::virtee_from_sev_crate();
    let gsg = common::gsg(&dir);
    for (report, cert) in [(&virtee, &gsg), (&gsg, &virtee)] {
        let c = SnpCase {
            name: "swapped",
            report: report.report.clone(),
            vcek: cert.vcek.clone(),
            chain: report.chain.clone(),
        };
        let v = verify(&c, allow_debug());
        assert!(!v.accepted);
        // A genuine VCEK of another chip: chain fine, signature, TCB and CHIP_ID all wrong.
        assert!(v.has(ReasonKind::Signature), "{:?}", v.reasons);
        assert!(v.has(ReasonKind::ChipId));
        assert!(v.has(ReasonKind::TcbMismatch));
    }
}

#[test]
fn must_be_zero_violations_in_a_real_report_are_rejected_at_parse() {
    let c = common::virtee_from_sev_crate();
    for (off, start, end) in [
        (0x4C, 0x4C, 0x50),
        (0x190, 0x188, 0x1A0),
        (0x1EB, 0x1EB, 0x1EC),
        (0x200, 0x1F8, 0x2A0),
        (0x400, 0x330, 0x4A0),
    ] {
        let mut r = c.report.clone();
        r[off] = 0xff;
        assert_eq!(Report::parse(&r), Err(ReportError::Reserved { start, end }));
        let v = Verifier::new(Policy::default())
            .at_time(NOW)
            .verify_evidence(
                &Evidence {
                    report: r,
                    ..c.evidence(false)
                },
                None,
            );
        assert_eq!(v.reasons.len(), 1);
        assert_eq!(v.reasons[0].kind, ReasonKind::Malformed);
    }
}

#[test]
fn a_corrupted_certificate_or_a_foreign_chain_is_rejected() {
    let c = common::virtee_from_sev_crate();
    // A byte inside the VCEK's signed part (its public key) changed: RSA-PSS fails.
    let mut bad = c.vcek.clone();
    let n = bad.len();
    bad[n / 3] ^= 1;
    let v = Verifier::new(Policy::default())
        .at_time(NOW)
        .verify_evidence(
            &Evidence {
                endorsement: bad,
                ..c.evidence(false)
            },
            None,
        );
    assert!(!v.accepted);
    assert!(
        v.has(ReasonKind::Chain) || v.has(ReasonKind::Malformed),
        "{:?}",
        v.reasons
    );
    // A supplied chain that no pinned ARK signed is ignored: the pinned roots still decide.
    let turin_chain = common::read(common::sev_certs_data().join("cert_chain_turin"));
    let v = Verifier::new(Policy::default())
        .at_time(NOW)
        .verify_evidence(
            &Evidence {
                chain: turin_chain,
                ..c.evidence(false)
            },
            None,
        );
    assert!(v.accepted, "{:?}", v.reasons);
}

#[test]
fn certificates_outside_their_validity_are_rejected() {
    let c = common::virtee_from_sev_crate();
    // The virtee VCEK is valid from 2023-04-03.
    let v = Verifier::new(Policy::default())
        .at_time(1_600_000_000)
        .verify_evidence(&c.evidence(false), None);
    assert!(v.has(ReasonKind::Validity), "{:?}", v.reasons);
}

#[test]
fn a_vlek_claim_needs_a_vlek_chained_through_the_asvk() {
    let c = common::virtee_from_sev_crate();
    // SIGNING_KEY = VLEK (bits 2..4 of byte 0x48) with the VCEK certificate.
    let mut ev = c.evidence(false);
    ev.report[0x48] |= 1 << 2;
    assert_eq!(
        Report::parse(&ev.report).unwrap().signing_key,
        SigningKey::Vlek
    );
    let v = Verifier::new(Policy::default())
        .at_time(NOW)
        .verify_evidence(&ev, None);
    assert!(v.has(ReasonKind::SigningKey), "{:?}", v.reasons);
    // The pinned ASVK of every product is signed by its ARK, and the VCEK does not verify
    // under any ASVK.
    let roots = AmdRoots::pinned();
    let e = Endorsement::from_der(&c.vcek).unwrap();
    for pr in &roots.products {
        pr.asvk.verify_issued_by(&pr.ark, "ASVK", "ARK").unwrap();
        assert!(e.cert.verify_issued_by(&pr.asvk, "VCEK", "ASVK").is_err());
    }
}

#[test]
fn unsigned_reports_are_rejected() {
    let c = common::virtee_from_sev_crate();
    let mut ev = c.evidence(false);
    ev.report[0x48] |= 7 << 2;
    let v = Verifier::new(Policy::default())
        .at_time(NOW)
        .verify_evidence(&ev, None);
    assert!(v.has(ReasonKind::SigningKey));
}

#[test]
fn policy_checks_on_a_real_report_are_all_reported() {
    let c = common::virtee_from_sev_crate();
    let p = Policy {
        vmpl: Some(1),
        measurements: Some(vec![[0; 48]]),
        host_data: Some([1; 32]),
        report_data: Some([2; 64]),
        minimum_tcb: Some(swiotlb_attest::snp::tcb::Tcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 9,
            microcode: 0x73,
        }),
        ..Policy::default()
    };
    let v = verify(&c, p);
    let kinds: Vec<_> = v.reasons.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ReasonKind::Vmpl,
            ReasonKind::MinimumTcb,
            ReasonKind::Measurement,
            ReasonKind::ReportData,
            ReasonKind::HostData
        ]
    );
    let m = Report::parse(&c.report).unwrap().measurement;
    let ok = Policy {
        measurements: Some(vec![[0; 48], m]),
        ..Policy::default()
    };
    assert!(verify(&c, ok).accepted);
}

#[test]
fn pinned_roots_equal_the_sev_crate_builtins_and_the_vectors() {
    let sev_src = common::crate_dir("sev").join("src/certs/snp/builtin");
    for (product, ark, ask, _) in swiotlb_attest::snp::certs::PINNED_PEMS {
        let dir = sev_src.join(product.name().to_lowercase());
        assert_eq!(common::read(dir.join("ark.pem")), ark, "{product:?} ARK");
        assert_eq!(common::read(dir.join("ask.pem")), ask, "{product:?} ASK");
    }
    let certs = common::sev_certs_data();
    let milan = [pinned_ask_ark(Product::Milan)].concat();
    assert_eq!(common::read(certs.join("cert_chain_milan")), milan);
    let turin =
        swiotlb_attest::x509::pem_to_ders(&common::read(certs.join("cert_chain_turin"))).unwrap();
    let pinned_turin = swiotlb_attest::x509::pem_to_ders(&pinned_ask_ark(Product::Turin)).unwrap();
    assert_eq!(turin, pinned_turin);
    if let Some(dir) = common::vectors("pinned_roots_equal_the_vectors") {
        assert_eq!(
            common::read(dir.join("snp/virtee-sev/cert_chain_milan")),
            milan
        );
        assert_eq!(
            common::read(dir.join("snp/go-sev-guest/ask_ark_milan.pem")),
            milan
        );
    }
}

fn pinned_ask_ark(p: Product) -> Vec<u8> {
    let (_, ark, ask, _) = swiotlb_attest::snp::certs::PINNED_PEMS
        .into_iter()
        .find(|x| x.0 == p)
        .unwrap();
    [ask, ark].concat()
}

#[test]
fn turin_vcek_extensions_use_the_turin_layout() {
    let d = common::sev_certs_data();
    let e = Endorsement::from_der(&common::read(d.join("vcek_turin.der"))).unwrap();
    assert_eq!(e.kind, SigningKey::Vcek);
    assert_eq!(e.product_name.as_deref(), Some("Turin"));
    assert_eq!(e.tcb.fmc, Some(0));
    assert_eq!(e.tcb.microcode, 9);
    assert_eq!(e.hwid.as_ref().map(Vec::len), Some(8));
    let ok =
        swiotlb_attest::snp::certs::verify_chain(&e, &[], AmdRoots::pinned(), Some(NOW)).unwrap();
    assert_eq!(ok.product, Product::Turin);
    // A Turin-layout REPORTED_TCB built from the certificate decodes back to it.
    let raw = e.tcb.to_raw(true);
    assert_eq!(swiotlb_attest::snp::tcb::Tcb::from_raw(raw, true), e.tcb);
}

/// The `sev` crate, an independent implementation, agrees on the real reports.
#[test]
fn the_sev_crate_agrees_on_the_real_reports() {
    use sev::certs::snp::{ca, Certificate, Chain, Verifiable};
    use sev::firmware::guest::AttestationReport;
    use sev::parser::ByteParser;
    let c = common::virtee_from_sev_crate();
    let ours = Report::parse(&c.report).unwrap();
    let theirs = AttestationReport::from_bytes(&c.report).unwrap();
    assert_eq!(theirs.measurement, ours.measurement);
    assert_eq!(theirs.report_data, ours.report_data);
    assert_eq!(theirs.chip_id, ours.chip_id);
    assert_eq!(u64::from(theirs.policy), ours.policy);
    let ders = swiotlb_attest::x509::pem_to_ders(&c.chain).unwrap();
    let chain = Chain {
        ca: ca::Chain {
            ark: Certificate::from_der(&ders[1]).unwrap(),
            ask: Certificate::from_der(&ders[0]).unwrap(),
        },
        vek: Certificate::from_der(&c.vcek).unwrap(),
    };
    (&chain, &theirs).verify().unwrap();
    let mut bad = c.report.clone();
    bad[0x90] ^= 1;
    let theirs_bad = AttestationReport::from_bytes(&bad).unwrap();
    assert!((&chain, &theirs_bad).verify().is_err());
}

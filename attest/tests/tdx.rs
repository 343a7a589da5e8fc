//! TDX verification on real quotes: dcap-qvl's samples (from the `dcap-qvl` crate's published
//! source, and from ../shared/vectors) with their collateral: a v4 quote, a v5 quote with a
//! TDX 1.5 body (type 3) whose TCB level is out of date, and a v5 quote with a type 4 body;
//! and trustee's debug TD quote.

mod common;

use common::NOW;
use swiotlb_attest::tdx::quote::{BodyType, Quote, SIGNED_LEN};
use swiotlb_attest::tdx::verify::Collateral;
use swiotlb_attest::verdict::TcbInfo;
use swiotlb_attest::{Evidence, PlatformKind, Policy, ReasonKind, Verdict, Verifier};

/// 2025-06-19T10:32:27Z: the later issue date of the collateral (QE identity).
const COLLATERAL_ISSUED: u64 = 1_750_329_147;
/// 2025-07-19T10:16:03Z: the earlier next update of the collateral (TCB info).
const COLLATERAL_NEXT_UPDATE: u64 = 1_752_920_163;

/// 2026-03-01T00:00:00Z: inside the window of the v5 (type 3) quote's collateral,
/// 2026-02-18T10:58:51Z .. 2026-03-20T10:42:15Z.
const OUTDATED_NOW: u64 = 1_772_323_200;
/// 2026-10-20T00:00:00Z: inside the window of the v5 (type 4) quote's collateral,
/// 2026-10-08T00:09:46Z .. 2026-11-06T23:45:11Z.
const TD15EX_NOW: u64 = 1_792_454_400;

fn ev(quote: &[u8]) -> Evidence {
    Evidence {
        platform: PlatformKind::Tdx,
        report: quote.to_vec(),
        endorsement: Vec::new(),
        chain: Vec::new(),
    }
}

fn dcap_quote() -> Vec<u8> {
    common::read(common::dcap_samples().join("tdx_quote"))
}

fn dcap_collateral() -> Collateral {
    Collateral::from_json(&common::read(
        common::dcap_samples().join("tdx_quote_collateral.json"),
    ))
    .unwrap()
}

/// The v5 quote with a TDX 1.5 body (type 3) and its collateral, from the dcap-qvl crate.
fn outdated() -> (Vec<u8>, Collateral) {
    let d = common::dcap_samples();
    (
        common::read(d.join("tdx_quote_outdated")),
        Collateral::from_json(&common::read(d.join("tdx_quote_outdated_collateral.json"))).unwrap(),
    )
}

/// The v5 quote with a type 4 body and its collateral, from the dcap-qvl crate.
fn td15ex() -> (Vec<u8>, Collateral) {
    let d = common::dcap_samples();
    (
        common::read(d.join("tdx_quote_td15ex")),
        Collateral::from_json(&common::read(d.join("tdx_quote_td15ex_collateral.json"))).unwrap(),
    )
}

fn verify(quote: &[u8], policy: Policy) -> Verdict {
    Verifier::new(policy)
        .at_time(NOW)
        .verify_evidence(&ev(quote), None)
}

#[test]
fn dcap_quote_verifies_signature_qe_binding_and_pck_chain() {
    let q = dcap_quote();
    let parsed = Quote::parse(&q).unwrap();
    assert!(!parsed.debug());
    let v = verify(&q, Policy::default());
    assert!(v.accepted, "{:?}", v.reasons);
    assert_eq!(v.platform, Some(PlatformKind::Tdx));
    assert_eq!(
        v.measurement.as_deref(),
        Some(hex::encode(parsed.body.mr_td).as_str())
    );
}

#[test]
fn dcap_quote_from_the_vectors_is_the_same_and_verifies() {
    let Some(dir) = common::vectors("dcap_quote_from_the_vectors") else {
        return;
    };
    let q = common::read(dir.join("tdx/dcap-qvl/tdx_quote"));
    assert_eq!(q, dcap_quote());
    assert!(verify(&q, Policy::default()).accepted);
    let col = Collateral::from_json(&common::read(
        dir.join("tdx/dcap-qvl/tdx_quote_collateral.json"),
    ))
    .unwrap();
    let v = Verifier::new(Policy::default())
        .with_tdx_collateral(col)
        .at_time(NOW)
        .verify_evidence(&ev(&q), None);
    assert!(v.accepted, "{:?}", v.reasons);
}

#[test]
fn collateral_is_checked_inside_its_window_only() {
    let q = dcap_quote();
    for now in [COLLATERAL_ISSUED + 3600, NOW, COLLATERAL_NEXT_UPDATE - 3600] {
        let v = Verifier::new(Policy::default())
            .with_tdx_collateral(dcap_collateral())
            .at_time(now)
            .verify_evidence(&ev(&q), None);
        assert!(v.accepted, "at {now}: {:?}", v.reasons);
        match v.tcb {
            Some(TcbInfo::Tdx { status, .. }) => assert_eq!(status.as_deref(), Some("UpToDate")),
            other => panic!("{other:?}"),
        }
    }
    for now in [COLLATERAL_ISSUED - 3600, COLLATERAL_NEXT_UPDATE + 3600] {
        let v = Verifier::new(Policy::default())
            .with_tdx_collateral(dcap_collateral())
            .at_time(now)
            .verify_evidence(&ev(&q), None);
        assert!(!v.accepted, "at {now}");
        assert!(v.has(ReasonKind::Collateral), "{:?}", v.reasons);
    }
}

#[test]
fn a_tcb_status_outside_the_policy_is_rejected() {
    let p = Policy {
        tdx_tcb_statuses: vec!["SWHardeningNeeded".into()],
        ..Policy::default()
    };
    let v = Verifier::new(p)
        .with_tdx_collateral(dcap_collateral())
        .at_time(NOW)
        .verify_evidence(&ev(&dcap_quote()), None);
    assert!(v.has(ReasonKind::Collateral));
}

#[test]
fn trustee_debug_quote_is_rejected_unless_debug_is_allowed() {
    let Some(dir) = common::vectors("trustee_debug_quote") else {
        return;
    };
    let q = common::read(dir.join("tdx/trustee/tdx_quote_4.dat"));
    assert!(Quote::parse(&q).unwrap().debug());
    let v = verify(&q, Policy::default());
    assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
    assert_eq!(v.reasons[0].kind, ReasonKind::Debug);
    let v = verify(
        &q,
        Policy {
            allow_debug: true,
            ..Policy::default()
        },
    );
    assert!(v.accepted, "{:?}", v.reasons);
}

#[test]
fn every_single_byte_change_of_the_signed_region_is_rejected() {
    let q = dcap_quote();
    let verifier = Verifier::new(Policy {
        allow_debug: true,
        ..Policy::default()
    })
    .at_time(NOW);
    for i in 0..SIGNED_LEN {
        let mut b = q.clone();
        b[i] ^= 0x01;
        let v = verifier.verify_evidence(&ev(&b), None);
        assert!(!v.accepted, "byte {i:#x} accepted");
        assert!(
            v.has(ReasonKind::Signature)
                || v.has(ReasonKind::Malformed)
                || v.has(ReasonKind::QeBinding),
            "byte {i:#x}: {:?}",
            v.reasons
        );
    }
}

#[test]
fn signature_qe_report_and_auth_data_changes_are_rejected() {
    let q = dcap_quote();
    let p = Quote::parse(&q).unwrap();
    let verifier = Verifier::new(Policy::default()).at_time(NOW);
    let sig = SIGNED_LEN + 4;
    let ak = sig + 64;
    let qe_report = ak + 64 + 6;
    let qe_sig = qe_report + 384;
    let auth = qe_sig + 64 + 2;
    for (off, kind) in [
        (sig + 10, ReasonKind::Signature),
        (ak + 10, ReasonKind::QeBinding),
        (qe_report + 64, ReasonKind::QeBinding),
        (qe_report + 330, ReasonKind::QeBinding),
        (qe_sig + 5, ReasonKind::QeBinding),
        (auth, ReasonKind::QeBinding),
    ] {
        let mut b = q.clone();
        b[off] ^= 0x01;
        let v = verifier.verify_evidence(&ev(&b), None);
        assert!(v.has(kind), "offset {off:#x}: {:?}", v.reasons);
    }
    assert_eq!(p.qe_auth_data.len(), 32);
}

#[test]
fn a_chain_to_another_root_is_rejected() {
    let q = dcap_quote();
    let p = Quote::parse(&q).unwrap();
    let pem = String::from_utf8(p.pck_chain_pem.clone()).unwrap();
    // Drop the intermediate: the leaf then claims the root as its CA.
    let blocks: Vec<&str> = pem.split_inclusive("-----END CERTIFICATE-----\n").collect();
    assert!(blocks.len() >= 3);
    let swapped = format!("{}{}{}", blocks[0], blocks[2], blocks[1]);
    let mut b = q.clone();
    let start = b
        .windows(27)
        .position(|w| w == b"-----BEGIN CERTIFICATE-----")
        .unwrap();
    b[start..start + swapped.len()].copy_from_slice(swapped.as_bytes());
    let v = verify(&b, Policy::default());
    assert!(v.has(ReasonKind::Chain), "{:?}", v.reasons);
}

#[test]
fn mrtd_rtmr_and_report_data_policies_are_checked_together() {
    let q = dcap_quote();
    let p = Quote::parse(&q).unwrap();
    let policy = Policy {
        measurements: Some(vec![[0; 48]]),
        rtmrs: [Some([0; 48]), None, None, Some(p.body.rtmrs[3])],
        report_data: Some([0; 64]),
        ..Policy::default()
    };
    let kinds: Vec<_> = verify(&q, policy).reasons.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ReasonKind::Measurement,
            ReasonKind::ReportData,
            ReasonKind::Rtmr
        ]
    );
    let ok = Policy {
        measurements: Some(vec![p.body.mr_td]),
        rtmrs: p.body.rtmrs.map(Some),
        report_data: Some(p.body.report_data),
        ..Policy::default()
    };
    assert!(verify(&q, ok).accepted);
}

#[test]
fn trailing_bytes_are_counted_never_read_and_truncation_is_rejected() {
    let q = dcap_quote();
    let padding = q.len() - Quote::parse(&q).unwrap().as_bytes().len();
    assert_eq!(padding, 70, "the sample ends with 70 zero bytes of padding");
    let plain = verify(&q, Policy::default());
    assert!(plain.accepted, "{:?}", plain.reasons);
    assert_eq!(plain.trailing_bytes, Some(70));
    for tail in [&b"unsigned trailing bytes"[..], &[0xff; 1000], &[1]] {
        let mut b = q.clone();
        b.extend_from_slice(tail);
        let v = verify(&b, Policy::default());
        assert!(v.accepted, "{:?}", v.reasons);
        assert_eq!(v.trailing_bytes, Some(70 + tail.len()));
        assert_eq!((&v.measurement, &v.tcb), (&plain.measurement, &plain.tcb));
        // The collateral check sees the quote without them.
        let c = Verifier::new(Policy::default())
            .with_tdx_collateral(dcap_collateral())
            .at_time(NOW)
            .verify_evidence(&ev(&b), None);
        assert!(c.accepted, "{:?}", c.reasons);
    }
    // A non-zero byte in what was padding is outside the signed data too.
    let mut b = q.clone();
    let last = b.len() - 1;
    b[last] = 1;
    assert!(verify(&b, Policy::default()).accepted);
    assert!(verify(&q[..q.len() - 100], Policy::default()).has(ReasonKind::Malformed));
}

#[test]
fn v5_quote_with_a_tdx_1_5_body_from_the_vectors_verifies() {
    let Some(dir) = common::vectors("v5_quote_with_a_tdx_1_5_body") else {
        return;
    };
    let q = common::read(dir.join("tdx/dcap-qvl/tdx_quote_outdated"));
    assert_eq!(q, outdated().0);
    let p = Quote::parse(&q).unwrap();
    assert_eq!((p.version, p.body_type), (5, BodyType::Td15));
    assert_eq!(
        p.body.tee_tcb_svn2.map(hex::encode).as_deref(),
        Some("0d010300000000000000000000000000")
    );
    assert_eq!(p.body.mr_service_td, Some([0; 48]));
    assert_eq!(p.signed_bytes().len(), 48 + 6 + 648);
    assert_eq!(p.trailing_len(), 0);
    let v = Verifier::new(Policy::default())
        .at_time(OUTDATED_NOW)
        .verify_evidence(&ev(&q), None);
    assert!(v.accepted, "{:?}", v.reasons);
    let j = serde_json::to_value(&v).unwrap();
    assert_eq!(j["tcb"]["quote_version"], 5);
    assert_eq!(j["tcb"]["body_type"], "td15");
    assert_eq!(j["tcb"]["tee_tcb_svn2"], "0d010300000000000000000000000000");
    assert_eq!(j["tcb"]["qe_svn"], 7);
    assert_eq!(j["trailing_bytes"], 0);
}

/// The v5 quote's platform TCB is below every level its collateral's TCB info lists for its
/// FMSPC: there is no status to judge, and no policy can accept it (dcap-qvl's own test needs
/// a TCB-info override to get a status out of it). TCB statuses judged by policy are tested
/// on constructed collateral in `tdx_constructed.rs`.
#[test]
fn the_v5_quotes_tcb_matches_no_level_of_its_collateral_whatever_the_policy() {
    let (q, col) = outdated();
    let every_status = Policy {
        tdx_tcb_statuses: swiotlb_attest::policy::TDX_TCB_STATUSES
            .map(String::from)
            .to_vec(),
        ..Policy::default()
    };
    for p in [Policy::default(), every_status] {
        let v = Verifier::new(p)
            .with_tdx_collateral(col.clone())
            .at_time(OUTDATED_NOW)
            .verify_evidence(&ev(&q), None);
        assert!(!v.accepted);
        assert_eq!(v.reasons.len(), 1, "{:?}", v.reasons);
        assert_eq!(v.reasons[0].kind, ReasonKind::Collateral);
        assert!(
            v.reasons[0].message.contains("No matching TCB level"),
            "{}",
            v.reasons[0]
        );
    }
}

#[test]
fn v5_quote_with_a_type_4_body_verifies_with_its_collateral() {
    let (q, col) = td15ex();
    let p = Quote::parse(&q).unwrap();
    assert_eq!((p.version, p.body_type), (5, BodyType::Td15Ex));
    let ext = p.body.extension.as_ref().unwrap();
    assert_ne!(ext.td_id, [0; 32]);
    assert_eq!(p.signed_bytes().len(), 48 + 6 + 885);
    let v = Verifier::new(Policy::default())
        .with_tdx_collateral(col)
        .at_time(TD15EX_NOW)
        .verify_evidence(&ev(&q), None);
    assert!(v.accepted, "{:?}", v.reasons);
    match v.tcb {
        Some(TcbInfo::Tdx { status, .. }) => assert_eq!(status.as_deref(), Some("UpToDate")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_single_byte_change_of_a_v5_signed_region_is_rejected() {
    for (q, now) in [(outdated().0, OUTDATED_NOW), (td15ex().0, TD15EX_NOW)] {
        let n = Quote::parse(&q).unwrap().signed_bytes().len();
        let verifier = Verifier::new(Policy {
            allow_debug: true,
            ..Policy::default()
        })
        .at_time(now);
        assert!(verifier.verify_evidence(&ev(&q), None).accepted);
        for i in 0..n {
            let mut b = q.clone();
            b[i] ^= 0x01;
            let v = verifier.verify_evidence(&ev(&b), None);
            assert!(!v.accepted, "byte {i:#x} accepted");
            assert!(
                v.has(ReasonKind::Signature)
                    || v.has(ReasonKind::Malformed)
                    || v.has(ReasonKind::QeBinding),
                "byte {i:#x}: {:?}",
                v.reasons
            );
        }
    }
}

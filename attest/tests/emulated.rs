//! The emulated platform end to end, and the flow the device and driver will follow: the
//! driver hashes its transcript into REPORT_DATA, signs, encodes the evidence; the device
//! rebuilds the transcript from what it observed and verifies.

use swiotlb_attest::emulated::{ReportOptions, Signer};
use swiotlb_attest::snp::report::POLICY_DEBUG;
use swiotlb_attest::{Evidence, PlatformKind, Policy, ReasonKind, Verifier};
use swiotlb_shared::transcript::{DeviceIdentity, InstanceId, QueueRings, Transcript};

fn emulated_policy() -> Policy {
    Policy {
        allow_emulated: true,
        ..Policy::default()
    }
}

fn transcript(platform: PlatformKind, nonce: [u8; 32]) -> Transcript {
    Transcript {
        platform,
        nonce,
        identity: DeviceIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 2,
            instance_id: InstanceId::Short([9; 16]),
        },
        device_features: 1 << 32 | 1 << 27,
        driver_features: 1 << 32 | 1 << 27,
        pool_base: 0x80_0000_0000,
        pool_size: 16 << 20,
        queues: vec![QueueRings {
            index: 0,
            desc: 0x80_0000_0000,
            avail: 0x80_0000_1000,
            used: 0x80_0000_2000,
            size: 256,
        }],
    }
}

#[test]
fn sign_then_verify_round_trips_and_is_marked_emulated() {
    let s = Signer::generate().unwrap();
    let blob = s
        .sign_report(&[1; 64], &[2; 48], &ReportOptions::default())
        .unwrap()
        .encode()
        .unwrap();
    assert_eq!(blob[5], PlatformKind::Emulated as u8);
    let v = Verifier::new(emulated_policy())
        .with_emulated(s.verifier())
        .verify(&blob, &|_| Some([1; 64]));
    assert!(v.accepted, "{:?}", v.reasons);
    assert!(v.emulated);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["platform"], "emulated");
    assert_eq!(json["emulated"], true);
    assert_eq!(json["measurement"], hex::encode([2u8; 48]));
}

#[test]
fn emulated_evidence_is_rejected_unless_the_policy_allows_it() {
    let s = Signer::generate().unwrap();
    let blob = s
        .sign_report(&[1; 64], &[2; 48], &ReportOptions::default())
        .unwrap()
        .encode()
        .unwrap();
    let v = Verifier::new(Policy::default())
        .with_emulated(s.verifier())
        .verify(&blob, &|_| None);
    assert!(!v.accepted);
    assert_eq!(v.reasons.len(), 1);
    assert_eq!(v.reasons[0].kind, ReasonKind::Platform);
    assert!(v.emulated);
    // Allowed by policy but no trust anchor configured: still rejected.
    let v = Verifier::new(emulated_policy()).verify(&blob, &|_| None);
    assert!(v.has(ReasonKind::Platform));
    // Another ARK: rejected.
    let other = Signer::generate().unwrap();
    let v = Verifier::new(emulated_policy())
        .with_emulated(other.verifier())
        .verify(&blob, &|_| None);
    assert!(v.has(ReasonKind::Chain));
}

#[test]
fn a_report_data_mismatch_is_reported_with_every_other_mismatch() {
    let s = Signer::generate().unwrap();
    let opts = ReportOptions {
        guest_policy: ReportOptions::default().guest_policy | POLICY_DEBUG,
        vmpl: 2,
        host_data: [5; 32],
        ..ReportOptions::default()
    };
    let blob = s
        .sign_report(&[1; 64], &[2; 48], &opts)
        .unwrap()
        .encode()
        .unwrap();
    let policy = Policy {
        measurements: Some(vec![[3; 48]]),
        host_data: Some([6; 32]),
        ..emulated_policy()
    };
    let v = Verifier::new(policy)
        .with_emulated(s.verifier())
        .verify(&blob, &|_| Some([4; 64]));
    let kinds: Vec<_> = v.reasons.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ReasonKind::Debug,
            ReasonKind::Vmpl,
            ReasonKind::Measurement,
            ReasonKind::ReportData,
            ReasonKind::HostData
        ],
        "{:?}",
        v.reasons
    );
}

#[test]
fn tampered_emulated_reports_and_tag_swaps_are_rejected() {
    let s = Signer::generate().unwrap();
    let ev = s
        .sign_report(&[1; 64], &[2; 48], &ReportOptions::default())
        .unwrap();
    let verifier = Verifier::new(Policy {
        allow_emulated: true,
        platforms: Some(vec![PlatformKind::Snp, PlatformKind::Emulated]),
        ..Policy::default()
    })
    .with_emulated(s.verifier());
    for i in (0..0x2A0).step_by(7) {
        let mut bad = ev.clone();
        bad.report[i] ^= 0x10;
        assert!(
            !verifier.verify_evidence(&bad, None).accepted,
            "byte {i:#x}"
        );
    }
    // Emulated evidence relabelled as SEV-SNP: the emulated certificate is no X.509 VCEK.
    let relabelled = Evidence {
        platform: PlatformKind::Snp,
        ..ev.clone()
    };
    let v = verifier.verify_evidence(&relabelled, None);
    assert!(v.has(ReasonKind::Malformed), "{:?}", v.reasons);
    assert!(!v.emulated);
}

#[test]
fn the_device_accepts_the_drivers_transcript_and_nothing_else() {
    // Driver side: the transcript of what it negotiated, for the platform it runs on.
    let nonce = [0x42; 32];
    let driver = transcript(PlatformKind::Emulated, nonce);
    let signer = Signer::generate().unwrap();
    let blob = signer
        .sign_report(
            &driver.report_data().unwrap(),
            &[0; 48],
            &ReportOptions::default(),
        )
        .unwrap()
        .encode()
        .unwrap();
    // Device side: rebuild from its own observations, for the platform the evidence claims.
    let verifier = Verifier::new(emulated_policy()).with_emulated(signer.verifier());
    let observed = |p: PlatformKind| transcript(p, nonce).report_data().ok();
    assert!(verifier.verify(&blob, &observed).accepted);
    // A new reset (new nonce) or a different pool: the same evidence no longer verifies.
    let after_reset = |p: PlatformKind| transcript(p, [0x43; 32]).report_data().ok();
    assert!(verifier
        .verify(&blob, &after_reset)
        .has(ReasonKind::ReportData));
    let moved = |p: PlatformKind| {
        let mut t = transcript(p, nonce);
        t.pool_base += 0x10_0000;
        t.report_data().ok()
    };
    assert!(verifier.verify(&blob, &moved).has(ReasonKind::ReportData));
    // A driver that declined SWIOTLB cannot pass off its transcript.
    let mut declined = transcript(PlatformKind::Emulated, nonce);
    declined.driver_features &= !(1 << 27);
    let blob = signer
        .sign_report(
            &declined.report_data().unwrap(),
            &[0; 48],
            &ReportOptions::default(),
        )
        .unwrap()
        .encode()
        .unwrap();
    assert!(verifier
        .verify(&blob, &observed)
        .has(ReasonKind::ReportData));
}

#[test]
fn garbage_evidence_is_a_malformed_rejection() {
    let v = Verifier::new(Policy::default()).verify(b"not evidence", &|_| None);
    assert!(!v.accepted);
    assert_eq!(v.platform, None);
    assert!(v.has(ReasonKind::Malformed));
}

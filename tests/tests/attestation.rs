//! The attestation gate end to end, in emulated mode, against the real host binary: the
//! device serves no I/O until evidence binding what *it* observed verifies.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use swiotlb_attest::emulated::Signer;
use swiotlb_guest::attest::Emulated;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::testing::raw_driver::{RawDriver, BLK_T_OUT, DEFAULT_FEATURES, STATUS_UNSET};
use swiotlb_guest::{BlockDriver, BlockError, Options};
use swiotlb_shared::features::{bit, VIRTIO_F_SWIOTLB};
use swiotlb_shared::pci::attest_mailbox as mb;
use swiotlb_tests::raw_session::{
    emulated_ark, mailbox_u32, ready, sign, submit, submit_at, transcript_of, QSIZE,
};
use swiotlb_tests::{bin, HostProcess};
use tempfile::TempDir;

const DISK_SIZE: usize = 1 << 20;

struct Fixture {
    dir: TempDir,
    disk: PathBuf,
    key: PathBuf,
    signer: Signer,
    host: HostProcess,
}

/// A host that requires attestation and admits the emulated platform with a fresh ARK.
fn fixture(extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0x5au8; DISK_SIZE]).unwrap();
    let (signer, key, pubfile) = emulated_ark(dir.path());
    let mut args = vec![
        "--log",
        "warn",
        "--attestation",
        "required",
        "--allow-emulated",
        "--emulated-ark",
        pubfile.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let host = HostProcess::spawn(dir.path(), &disk, &args);
    Fixture {
        dir,
        disk,
        key,
        signer,
        host,
    }
}

fn kinds(s: &Value) -> Vec<String> {
    s["findings_by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap().to_string())
        .collect()
}

/// Posts an OUT request over sector 0 and kicks; returns whether the device completed it.
fn try_write(d: &mut RawDriver) -> bool {
    let req = d
        .prepare_blk(BLK_T_OUT, 0, 512, Some(&[0xa5u8; 512]))
        .unwrap();
    d.write_chain(0, &req.descs).unwrap();
    d.submit(0).unwrap();
    d.used_idx().unwrap() == 1 && d.blk_status(&req).unwrap() != STATUS_UNSET
}

fn image_untouched(disk: &Path) -> bool {
    std::fs::read(disk).unwrap().iter().all(|b| *b == 0x5a)
}

#[test]
fn emulated_evidence_opens_the_gate_and_the_guest_cli_does_io() {
    let f = fixture(&[]);
    let out = Command::new(bin("swiotlb-guest"))
        .arg("--socket")
        .arg(&f.host.socket)
        .args(["--json", "--attester", "emulated", "--emulated-key"])
        .arg(&f.key)
        .args(["roundtrip", "--size", "256K"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = &f.host.session(1)["summary"];
    assert_eq!(s["attestation_state"], "accepted");
    assert_eq!(s["attestation"]["platform"], "emulated");
    assert!(s["chains"].as_u64().unwrap() > 0, "I/O was served");
    assert_eq!(s["findings"], 0);
}

#[test]
fn a_driver_that_never_attests_gets_no_io_served() {
    let f = fixture(&[]);
    let mut d = RawDriver::connect(&f.host.socket).unwrap();
    ready(&mut d);
    assert_eq!(mailbox_u32(&mut d, mb::STATE), mb::STATE_AWAITING);
    assert!(!try_write(&mut d), "no completion without attestation");
    assert_eq!(d.used_idx().unwrap(), 0);
    drop(d);
    let s = &f.host.session(1)["summary"];
    assert_eq!(s["attestation_state"], "awaiting");
    assert_eq!(s["chains"], 0, "no chain was even looked at");
    assert!(image_untouched(&f.disk));

    // The library driver without an attester says why it cannot proceed.
    let c = VfioUserClient::connect(&f.host.socket).unwrap();
    let e = BlockDriver::open(c, &Options::default()).err().unwrap();
    assert!(matches!(e, BlockError::AttestationRequired), "{e}");
}

#[test]
fn valid_evidence_from_a_raw_driver_opens_the_gate_and_deferred_io_is_served() {
    let f = fixture(&[]);
    let mut d = RawDriver::connect(&f.host.socket).unwrap();
    let rings = ready(&mut d);
    assert!(!try_write(&mut d), "deferred before attestation");
    let t = transcript_of(&mut d, DEFAULT_FEATURES, rings);
    assert_eq!(submit(&mut d, &sign(&f.signer, &t)), mb::STATE_ACCEPTED);
    // The doorbell rung before attestation is served once the gate opens.
    assert_eq!(d.used_idx().unwrap(), 1);
    drop(d);
    assert_eq!(std::fs::read(&f.disk).unwrap()[..512], [0xa5u8; 512]);
}

#[test]
fn replayed_evidence_from_an_earlier_session_is_rejected() {
    let f = fixture(&[]);
    let mut d = RawDriver::connect(&f.host.socket).unwrap();
    let rings = ready(&mut d);
    let t = transcript_of(&mut d, DEFAULT_FEATURES, rings);
    let evidence = sign(&f.signer, &t);
    assert_eq!(submit(&mut d, &evidence), mb::STATE_ACCEPTED);
    drop(d);

    // Same layout, same bus addresses: only the nonce differs, and that is enough.
    let mut d = RawDriver::connect(&f.host.socket).unwrap();
    let rings2 = ready(&mut d);
    assert_eq!(rings, rings2, "identical session apart from the nonce");
    assert_eq!(submit(&mut d, &evidence), mb::STATE_REJECTED);
    assert!(
        d.needs_reset().unwrap(),
        "rejection sets DEVICE_NEEDS_RESET"
    );
    assert!(!try_write(&mut d));
    drop(d);
    let s = &f.host.session(2)["summary"];
    assert_eq!(s["attestation_state"], "rejected");
    assert!(
        kinds(s).contains(&"attestation_rejected".to_string()),
        "{s}"
    );
    let reasons = s["attestation"]["reasons"].to_string();
    assert!(reasons.contains("ReportData"), "{reasons}");
    assert!(image_untouched(&f.disk));
}

#[test]
fn evidence_claiming_swiotlb_the_host_did_not_observe_is_rejected() {
    // A relaxed device lets a driver without SWIOTLB through negotiation; its evidence then
    // claims SWIOTLB was accepted. The device hashes what it saw, so the claim fails.
    let f = fixture(&["--allow-no-swiotlb"]);
    let features = DEFAULT_FEATURES & !bit(VIRTIO_F_SWIOTLB);
    let mut d = RawDriver::connect_with(&f.host.socket, features).unwrap();
    let rings = ready(&mut d);
    let lie = transcript_of(&mut d, features | bit(VIRTIO_F_SWIOTLB), rings);
    assert_eq!(submit(&mut d, &sign(&f.signer, &lie)), mb::STATE_REJECTED);
    drop(d);
    let s = &f.host.session(1)["summary"];
    assert_eq!(s["attestation_state"], "rejected");
    assert!(s["attestation"]["reasons"]
        .to_string()
        .contains("ReportData"));

    // The same driver telling the truth is accepted: the rejection was the lie, nothing else.
    let mut d = RawDriver::connect_with(&f.host.socket, features).unwrap();
    let rings = ready(&mut d);
    let truth = transcript_of(&mut d, features, rings);
    assert_eq!(submit(&mut d, &sign(&f.signer, &truth)), mb::STATE_ACCEPTED);
}

#[test]
fn evidence_outside_the_pool_and_evidence_of_every_wrong_size_are_rejected() {
    let f = fixture(&[]);
    let mut d = RawDriver::connect(&f.host.socket).unwrap();
    ready(&mut d);
    assert_eq!(submit_at(&mut d, 0x1000, 1184), mb::STATE_REJECTED);
    drop(d);
    let s = &f.host.session(1)["summary"];
    assert!(
        kinds(s).contains(&"evidence_outside_pool".to_string()),
        "{s}"
    );
    assert!(s["dma_violations"].as_u64().unwrap() >= 1);

    for len in [0usize, 1, 15, 1183, 1185, 4096] {
        let mut d = RawDriver::connect(&f.host.socket).unwrap();
        ready(&mut d);
        let junk = vec![0x42u8; len];
        let state = if len == 0 {
            let at = d.bus(d.scratch_area());
            submit_at(&mut d, at, 0)
        } else {
            submit(&mut d, &junk)
        };
        assert_eq!(state, mb::STATE_REJECTED, "evidence of {len} bytes");
    }
}

#[test]
fn evidence_submitted_before_driver_ok_is_rejected() {
    let f = fixture(&[]);
    let mut d = RawDriver::connect(&f.host.socket).unwrap();
    d.setup_standard_queue(QSIZE).unwrap();
    let emu = Emulated::with_signer(f.signer);
    let ev = swiotlb_guest::attest::Attester::evidence(&emu, &[0u8; 64]).unwrap();
    assert_eq!(submit(&mut d, &ev), mb::STATE_REJECTED);
    let _ = &f.dir;
}

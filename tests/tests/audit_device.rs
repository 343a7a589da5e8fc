//! The device's audit log end to end: the real host binary writes it while a hostile driver
//! and a normal one use the device; `swiotlb-audit` then verifies it and finds what happened.

use std::process::Command;

use serde_json::Value;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::testing::raw_driver::{Desc, RawDriver, BLK_T_OUT};
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_tests::{audit_log_files as log_files, bin, disk_image, HostProcess};

fn audit(args: &[&str], files: &[std::path::PathBuf]) -> (i32, String) {
    let out = Command::new(bin("swiotlb-audit"))
        .args(&args[..1])
        .args(files)
        .args(&args[1..])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn dma_outside_the_pool_is_a_detection_finding_and_every_dma_is_in_a_log_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", 1 << 20);
    let logdir = dir.path().join("audit");
    std::fs::create_dir(&logdir).unwrap();
    let log = logdir.join("device.jsonl");
    let mut host = HostProcess::spawn(
        dir.path(),
        &disk,
        &[
            "--log",
            "warn",
            "--sessions",
            "2",
            "--audit-mode",
            "full",
            "--audit-log",
            log.to_str().unwrap(),
        ],
    );

    // Session 1: a hostile driver points an OUT request's data outside the pool.
    let mut d = RawDriver::connect(&host.socket).unwrap();
    d.setup_standard_queue(64).unwrap();
    d.driver_ok().unwrap();
    let req = d
        .prepare_blk(BLK_T_OUT, 0, 512, Some(&[0xa5; 512]))
        .unwrap();
    let mut descs = req.descs;
    descs[1] = Desc {
        addr: 0x1000,
        ..descs[1]
    };
    d.write_chain(0, &descs).unwrap();
    d.submit(0).unwrap();
    assert!(d.needs_reset().unwrap());
    drop(d);

    // Session 2: a normal driver does real I/O.
    let c = VfioUserClient::connect(&host.socket).unwrap();
    let mut drv = BlockDriver::open(c, &Options::default()).unwrap();
    drv.write_at(4096, &[0x3c; 8192]).unwrap();
    let mut back = vec![0u8; 8192];
    drv.read_at(4096, &mut back).unwrap();
    assert_eq!(back, vec![0x3c; 8192]);
    drop(drv);
    let s2 = host.session(2)["summary"].clone();
    assert!(
        host.wait().success(),
        "host exits cleanly and closes its log"
    );

    let files = log_files(&logdir);
    assert!(!files.is_empty(), "log written");
    let key = logdir.join("device.key.pub");
    let key = key.to_str().unwrap();

    let (rc, out) = audit(&["verify", "--key", key], &files);
    assert_eq!(rc, 0, "an untampered device log verifies: {out}");

    let (rc, findings) = audit(&["show", "--class", "finding", "--json"], &files);
    assert_eq!(rc, 0);
    let f: Vec<Value> = findings
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(f.len(), 1, "exactly one finding: {findings}");
    assert_eq!(f[0]["class_uid"], 2004, "OCSF Detection Finding");
    assert!(findings.contains("descriptor_outside_pool"), "{findings}");
    assert!(
        findings.contains("0x1000") || findings.contains("4096"),
        "address recorded: {findings}"
    );

    // Full mode: one Memory Activity record per descriptor the device checked, and the
    // counts agree with the device's own counters.
    let (rc, stats) = audit(&["stats", "--json"], &files);
    assert_eq!(rc, 0);
    let st: Value = serde_json::from_str(&stats).unwrap();
    let q = &st["devices"][0]["queues"][0];
    let dmas = q["dmas"].as_u64().unwrap();
    assert_eq!(
        dmas,
        s2["dma_descriptors"].as_u64().unwrap(),
        "{stats} vs {s2}"
    );
    assert_eq!(
        q["dma_records"].as_u64().unwrap(),
        dmas,
        "every DMA recorded in full mode"
    );
    assert_eq!(st["devices"][0]["dma_violations"], 1);

    // One altered byte in the middle of the log is caught and named.
    let first = &files[0];
    let mut text = std::fs::read_to_string(first).unwrap();
    let at = text.find("Peripheral Activity").unwrap();
    text.replace_range(at..at + 1, "p");
    std::fs::write(first, text).unwrap();
    let (rc, out) = audit(&["verify", "--key", key, "--json"], &files);
    assert_eq!(rc, 1, "tampered: {out}");
    assert!(out.contains("altered"), "{out}");
}

//! Every record a real device writes is valid OCSF: checked against the official OCSF JSON
//! schema of the version the record names (`tests/ocsf/validate.py`), over a log that saw
//! honest I/O, attestation accepted and refused, a DMA outside the pool, device resets and
//! rotation; and the records of the writer's recoveries (restart after a clean stop, after
//! a crash that tore a line, a new log after a file that does not verify).

mod ocsf_support;

use std::collections::BTreeSet;
use std::process::Command;

use ocsf_support::*;
use swiotlb_host::audit::{AuditConfig, AuditLog};
use swiotlb_host::findings::{Finding, FindingKind};
use swiotlb_shared::audit::DeviceIdentity;
use swiotlb_tests::bin;

#[test]
fn every_record_of_a_real_device_log_is_valid_ocsf_of_the_version_it_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Device::start(tmp.path(), 3);
    dev.drive_three_sessions();
    assert!(dev.host.wait().success(), "host exits cleanly");

    let files = log_files(&dev.logdir);
    assert!(files.len() >= 3, "rotated at 16 KiB: {files:?}");
    let out = Command::new(bin("swiotlb-audit"))
        .arg("verify")
        .args(&files)
        .arg("--key")
        .arg(dev.key())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the log verifies: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The log holds every kind of record, each naming OCSF 1.7.0 and a consistent type.
    let records = json_lines(&files);
    let kinds: BTreeSet<(u64, String)> = records.iter().map(kind).collect();
    for (class, activity) in [
        (1004, "DMA Batch"),
        (1004, "DMA Summary"),
        (1008, "Start"),
        (1008, "Rotate"),
        (1008, "Stop"),
        (1008, "Checkpoint"),
        (1010, "Connect"),
        (1010, "Disconnect"),
        (2003, "Create"),
        (2004, "Create"),
        (5019, "Log"),
    ] {
        assert!(
            kinds.contains(&(class, activity.to_string())),
            "no {class} {activity} record in {kinds:?}"
        );
    }
    let verdicts: BTreeSet<bool> = records
        .iter()
        .filter_map(|r| r["unmapped"]["attestation"]["passed"].as_bool())
        .collect();
    assert_eq!(verdicts, [false, true].into(), "accepted and refused");
    assert!(records
        .iter()
        .any(|r| r["unmapped"]["finding"]["dma_violation"] == true));
    let resets = records
        .iter()
        .filter(|r| r["unmapped"]["config"]["change"] == "reset")
        .count();
    assert!(
        resets >= 4,
        "a reset per session and the driver's own: {resets}"
    );
    for r in &records {
        assert_eq!(r["metadata"]["version"], "1.7.0", "{r}");
        let (c, a) = (
            r["class_uid"].as_u64().unwrap(),
            r["activity_id"].as_u64().unwrap(),
        );
        assert_eq!(r["type_uid"].as_u64().unwrap(), c * 100 + a, "{r}");
        assert_eq!(r["category_uid"].as_u64().unwrap(), c / 1000, "{r}");
        if [1004, 1008, 1010].contains(&c) {
            // The actor is the device process: the one that wrote the record.
            let p = &r["actor"]["process"];
            assert_eq!(p["name"], "swiotlb-host", "{r}");
            assert!(p["pid"].as_u64().unwrap() > 0, "{r}");
            assert!(
                p["user"]["uid"].as_str().unwrap().parse::<u32>().is_ok(),
                "{r}"
            );
        }
    }

    let Some(python) = ocsf_python() else {
        return;
    };
    let (ok, report) = validate(&python, "1.7.0", &files);
    eprintln!("{report}");
    assert!(ok, "records that are not valid OCSF 1.7.0:\n{report}");
    for class in ["1004", "1008", "1010", "2003", "2004", "5019"] {
        assert!(
            report.contains(&format!("ok   OCSF 1.7.0 {class} ")),
            "class {class} checked: {report}"
        );
    }
    assert!(
        report.contains(&format!("{n} of {n} records valid OCSF", n = records.len())),
        "{report}"
    );
}

#[test]
fn the_records_of_every_recovery_of_the_writer_are_valid_ocsf() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("audit.jsonl");
    let mut cfg = AuditConfig::new(&base);
    cfg.checkpoint_every_records = 4;
    let dev = DeviceIdentity {
        uid: "0123456789abcdef".into(),
        name: "virtio-blk swiotlb (disk.img)".into(),
    };
    let finding = |i: u64| {
        Finding::new(FindingKind::ZeroLengthDescriptor, format!("descriptor {i}"))
            .at(0, Some(i as u16))
            .range(0x80_0000_0000 + i * 4096, 0)
    };
    // A clean stop, then a restart in the same file.
    for i in 0..2 {
        let (log, h) = AuditLog::open(cfg.clone(), dev.clone()).unwrap();
        h.finding(&finding(i)).unwrap();
        log.close().unwrap();
    }
    // A crash that left a torn line: the restart cuts it off and records it.
    let file = tmp.path().join("audit.000001.jsonl");
    let mut text = std::fs::read(&file).unwrap();
    text.extend_from_slice(b"{\"class_uid\":20");
    std::fs::write(&file, &text).unwrap();
    let (log, h) = AuditLog::open(cfg.clone(), dev.clone()).unwrap();
    h.finding(&finding(2)).unwrap();
    log.close().unwrap();
    // A file that no longer verifies: a new log starts in the next file, saying why.
    let mut text = std::fs::read(&file).unwrap();
    let at = text.len() / 2;
    text[at] ^= 1;
    std::fs::write(&file, &text).unwrap();
    let (log, h) = AuditLog::open(cfg, dev).unwrap();
    h.finding(&finding(3)).unwrap();
    log.close().unwrap();

    let second = tmp.path().join("audit.000002.jsonl");
    let records = json_lines(std::slice::from_ref(&second));
    assert_eq!(records[0]["unmapped"]["log"]["action"], "start");
    assert!(records[0]["unmapped"]["log"]["detail"].as_str().unwrap() != "");
    // The first file, as it was before the edit, holds the restarts.
    text[at] ^= 1;
    std::fs::write(&file, &text).unwrap();
    let first = json_lines(std::slice::from_ref(&file));
    let restarts: Vec<_> = first
        .iter()
        .filter(|r| r["unmapped"]["log"]["action"] == "restart")
        .collect();
    assert_eq!(restarts.len(), 2);
    assert!(restarts[1]["unmapped"]["log"]["torn"].is_object());
    assert_eq!(restarts[1]["severity_id"], 2);

    let Some(python) = ocsf_python() else {
        return;
    };
    let (ok, report) = validate(&python, "1.7.0", &[file, second]);
    eprintln!("{report}");
    assert!(ok, "records that are not valid OCSF 1.7.0:\n{report}");
}

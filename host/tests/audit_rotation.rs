//! Rotation: each file's first record names the previous file's final checkpoint; the
//! files verify as one log, a missing or misplaced file is detected, and any later file
//! verifies on its own from the state it carries.

mod audit_support;

use std::time::Duration;

use audit_support::*;
use swiotlb_host::audit::AuditLog;
use swiotlb_shared::audit::{Event, LogAction, Reason};

fn rotated_log(
    tag: &str,
) -> (
    Scratch,
    Vec<std::path::PathBuf>,
    swiotlb_shared::audit::VerifierKey,
) {
    let s = Scratch::new(tag);
    let mut cfg = config(&s.base());
    cfg.rotate_bytes = Some(8 << 10);
    let key = write_findings(cfg, 60);
    let f = files(&s.base());
    assert!(f.len() >= 4, "expected several files, got {}", f.len());
    (s, f, key)
}

#[test]
fn a_log_rotated_by_size_verifies_across_files() {
    let (_s, f, key) = rotated_log("rot-ok");
    let r = verify_paths(&f, &key, false);
    assert!(r.ok, "{:?}", r.failure);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // Sequences continue across files, and each later file starts with a rotation record
    // naming the previous file's last line (its final checkpoint).
    let mut seq = 0;
    for (i, path) in f.iter().enumerate() {
        let recs = records(path);
        let first = recs[0].log_event().unwrap();
        if i == 0 {
            assert_eq!(first.action, LogAction::Start);
        } else {
            assert_eq!(first.action, LogAction::Rotate);
            let prev = records(&f[i - 1]);
            let last = prev.last().unwrap();
            assert_eq!(
                first.previous.as_ref().unwrap().checkpoint,
                last.checkpoint_note().unwrap()
            );
            assert_eq!(
                first.previous.as_ref().unwrap().file,
                f[i - 1].file_name().unwrap().to_string_lossy()
            );
        }
        assert!(recs.last().unwrap().checkpoint_note().is_some());
        for r in recs {
            assert_eq!(r.sequence(), seq);
            seq += 1;
        }
    }
    let findings: usize = f
        .iter()
        .flat_map(|p| records(p))
        .filter(|r| matches!(r.event(), Some(Event::Finding(_))))
        .count();
    assert_eq!(findings, 60);
}

#[test]
fn a_missing_middle_file_is_detected() {
    let (_s, mut f, key) = rotated_log("rot-missing");
    let removed = f.remove(2);
    let r = verify_paths(&f, &key, false);
    let fail = r.failure.unwrap();
    assert_eq!(fail.reason, Reason::MissingFile, "{fail}");
    assert_eq!(fail.file, f[2].file_name().unwrap().to_string_lossy());
    assert_eq!(fail.line, 1);
    assert!(
        fail.detail
            .contains(&*removed.file_name().unwrap().to_string_lossy()),
        "{fail}"
    );
}

#[test]
fn files_given_out_of_order_break_the_chain() {
    let (_s, mut f, key) = rotated_log("rot-order");
    f.swap(1, 2);
    let fail = verify_paths(&f, &key, false).failure.unwrap();
    assert_eq!(fail.reason, Reason::MissingFile, "{fail}");
    let (_s2, mut g, key2) = rotated_log("rot-order2");
    g.swap(2, 3);
    g.truncate(3);
    // File 4 given after file 2: it continues from file 3, which is missing.
    let fail = verify_paths(&g, &key2, false).failure.unwrap();
    assert_eq!(fail.reason, Reason::MissingFile, "{fail}");
    // File 2 given after file 3: it does not continue it.
    let (_s3, mut h, key3) = rotated_log("rot-order3");
    h.swap(1, 2);
    let fail = verify_paths(&h[1..], &key3, false).failure.unwrap();
    assert_eq!(fail.reason, Reason::ChainBroken, "{fail}");
}

#[test]
fn a_later_file_verifies_on_its_own_from_the_checkpoint_it_names() {
    let (_s, f, key) = rotated_log("rot-alone");
    let r = verify_paths(&f[2..], &key, false);
    assert!(r.ok, "{:?}", r.failure);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    // A tampered peak is caught.
    let mut l = lines(&f[2]);
    let s = String::from_utf8(l[0].clone()).unwrap();
    let peaks_at = s.find("\"peaks\":[\"").unwrap() + 10;
    let mut b = s.into_bytes();
    b[peaks_at] = if b[peaks_at] == b'A' { b'B' } else { b'A' };
    l[0] = b;
    write_lines(&f[2], &l);
    let fail = verify_paths(&f[2..], &key, false).failure.unwrap();
    assert_eq!(
        (fail.reason, fail.index),
        (
            Reason::Altered,
            records(&f[1]).len() as u64 + records(&f[0]).len() as u64
        )
    );
}

#[test]
fn a_log_rotated_by_age_verifies() {
    let s = Scratch::new("rot-age");
    let mut cfg = config(&s.base());
    cfg.checkpoint_every = Duration::from_millis(50);
    cfg.rotate_every = Some(Duration::from_millis(120));
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    for i in 0..8 {
        send_findings(&h, i, 1);
        std::thread::sleep(Duration::from_millis(60));
    }
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(f.len() >= 2, "{}", f.len());
    let r = verify_paths(&f, &key, false);
    assert!(r.ok, "{:?}", r.failure);
}

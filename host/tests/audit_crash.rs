//! Crash recovery: a child process writing heavily is killed with SIGKILL; every
//! checkpointed record still verifies, and a restart removes the torn last line, records it
//! in a restart record, and leaves a log that verifies in full.

mod audit_support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit_support::*;
use swiotlb_host::audit::{AuditLog, AuditMode};
use swiotlb_shared::audit::{Event, LogAction};

const CHILD_ENV: &str = "SWIOTLB_AUDIT_CRASH_CHILD_DIR";

fn child_config(base: &std::path::Path) -> swiotlb_host::audit::AuditConfig {
    let mut c = config(base);
    c.mode = AuditMode::Full;
    c.checkpoint_every_records = 200;
    c.checkpoint_every = Duration::from_millis(20);
    c.queue_capacity = 64;
    c
}

/// The child: writes findings and DMAs until killed. Does nothing in a normal test run.
#[test]
fn crash_child_writes_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let base = std::path::Path::new(&dir).join("audit.jsonl");
    let (_log, h) = AuditLog::open(child_config(&base), device()).unwrap();
    for i in 0.. {
        h.finding(&finding(i)).unwrap();
        let chain = (0..8u16).map(|d| (0x80_0000_0000 + u64::from(d) * 2048, 2048, d % 2 == 0));
        h.record_chain(0, 0, chain).unwrap();
    }
}

#[test]
fn after_sigkill_checkpointed_records_verify_and_a_restart_records_the_torn_line() {
    let s = Scratch::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child_writes_until_killed", "--nocapture"])
        .env(CHILD_ENV, &s.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let file = s.0.join("audit.000001.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(&file).map_or(0, |m| m.len()) < 2 << 20 {
        assert!(Instant::now() < deadline, "child wrote too little");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let key_text = fs::read_to_string(s.0.join("audit.key.pub")).unwrap();
    let key = swiotlb_shared::audit::VerifierKey::from_file_text(&key_text).unwrap();
    // Not a closed log: strict verification says so ...
    let strict = verify_paths(std::slice::from_ref(&file), &key, false);
    assert!(!strict.ok);
    // ... and every checkpointed record verifies.
    let live = verify_paths(std::slice::from_ref(&file), &key, true);
    assert!(live.ok, "{:?}", live.failure);
    let covered = live.latest.as_ref().unwrap().size;
    assert!(covered > 100, "{covered}");
    let before = fs::read(&file).unwrap();

    // A SIGKILL lands between write(2) calls most of the time; when it left whole lines
    // only, tear the last one as a kill inside a write would.
    let mut data = before.clone();
    if data.last() == Some(&b'\n') {
        let start = data[..data.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let cut = start + (data.len() - start) / 2;
        data.truncate(cut);
        fs::write(&file, &data).unwrap();
    }
    let complete = data.iter().rposition(|b| *b == b'\n').unwrap() + 1;
    let torn_len = (data.len() - complete) as u64;
    assert!(torn_len > 0);
    let kept_lines = data[..complete].split(|b| *b == b'\n').count() - 1;

    // Restart.
    let (log, _h) = AuditLog::open(child_config(&s.base()), device()).unwrap();
    log.close().unwrap();

    let r = verify_paths(std::slice::from_ref(&file), &key, false);
    assert!(r.ok, "{:?}", r.failure);
    let after = fs::read(&file).unwrap();
    assert_eq!(
        &after[..complete],
        &data[..complete],
        "complete lines kept as they were"
    );
    let recs = records(&file);
    let restart = recs[kept_lines].log_event().unwrap();
    assert_eq!(restart.action, LogAction::Restart);
    assert!(restart.unclean);
    let torn = restart.torn.as_ref().unwrap();
    assert_eq!((torn.offset, torn.len), (complete as u64, torn_len));
    assert_eq!(
        torn.sha256,
        swiotlb_shared::audit::merkle::sha256(&data[complete..])
    );
    // Every record the last pre-crash checkpoint covered is still there, unchanged.
    for (i, r) in recs.iter().take(covered as usize).enumerate() {
        assert_eq!(r.sequence(), i as u64);
    }
    assert!(recs
        .iter()
        .any(|r| matches!(r.event(), Some(Event::DmaBatch(_)))));
}

#[test]
fn a_clean_restart_continues_the_file_with_a_restart_record() {
    let s = Scratch::new("restart");
    let key = write_findings(config(&s.base()), 5);
    let (log, h) = AuditLog::open(config(&s.base()), device()).unwrap();
    send_findings(&h, 5, 3);
    log.close().unwrap();
    let f = files(&s.base());
    assert_eq!(f.len(), 1);
    assert!(verify_paths(&f, &key, false).ok);
    let restarts: Vec<_> = records(&f[0])
        .into_iter()
        .filter_map(|r| r.log_event().cloned())
        .filter(|l| l.action == LogAction::Restart)
        .collect();
    assert_eq!(restarts.len(), 1);
    assert!(!restarts[0].unclean && restarts[0].torn.is_none());
}

#[test]
fn a_tampered_file_is_left_alone_and_a_new_log_starts() {
    let s = Scratch::new("restart-tampered");
    let key = write_findings(config(&s.base()), 10);
    let f = files(&s.base());
    let mut l = lines(&f[0]);
    l.remove(4);
    write_lines(&f[0], &l);
    let tampered = fs::read(&f[0]).unwrap();
    let (log, _h) = AuditLog::open(config(&s.base()), device()).unwrap();
    log.close().unwrap();
    let f = files(&s.base());
    assert_eq!(f.len(), 2);
    assert_eq!(fs::read(&f[0]).unwrap(), tampered);
    assert!(verify_paths(&f[1..], &key, false).ok);
    let start = records(&f[1])[0].log_event().cloned().unwrap();
    assert_eq!(start.action, LogAction::Start);
    assert!(
        start.detail.contains("failed verification"),
        "{}",
        start.detail
    );
}

#[test]
fn a_crash_between_creating_a_rotated_file_and_its_first_line_is_repaired() {
    let s = Scratch::new("crash-rotate");
    let key = write_findings(config(&s.base()), 6);
    // The next file exists with part of its first line: the rotation was cut short.
    let next = swiotlb_host::audit::file_name(&s.base(), 2);
    fs::write(&next, b"{\"class_uid\":1008,\"cla").unwrap();
    let (log, h) = AuditLog::open(config(&s.base()), device()).unwrap();
    send_findings(&h, 6, 2);
    log.close().unwrap();
    let f = files(&s.base());
    assert_eq!(f.len(), 2);
    let r = verify_paths(&f, &key, false);
    assert!(r.ok, "{:?}", r.failure);
    let first = records(&f[1])[0].log_event().cloned().unwrap();
    assert_eq!(first.action, LogAction::Rotate);
    assert_eq!(first.torn.unwrap().len, 22);
}

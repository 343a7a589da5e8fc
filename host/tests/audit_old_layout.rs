//! Logs of the first record layout (OCSF 1.5.0) keep working: the fixture, written by the
//! writer before records moved to OCSF 1.7.0, verifies, and the current writer continues it
//! (a restart in the same file), so one file holds both layouts and still verifies.

mod audit_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use audit_support::*;
use swiotlb_host::audit::AuditLog;
use swiotlb_shared::audit::ocsf::OcsfVersion;
use swiotlb_shared::audit::{Event, LogAction, VerifierKey};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/audit-ocsf-1.5.0")
}

fn fixture_key(dir: &Path) -> VerifierKey {
    let text = fs::read_to_string(dir.join("audit.key.pub")).unwrap();
    VerifierKey::from_file_text(&text).unwrap()
}

#[test]
fn a_log_of_ocsf_1_5_0_records_verifies() {
    let files = files(&fixture().join("audit.jsonl"));
    assert_eq!(files.len(), 6);
    let r = verify_paths(&files, &fixture_key(&fixture()), false);
    assert!(r.ok, "{:?}", r.failure);
    let mut n = 0;
    for f in &files {
        for rec in records(f) {
            assert_eq!(rec.ocsf_version(), Some(OcsfVersion::V1_5_0));
            assert!(rec.actor.is_none());
            n += 1;
        }
    }
    assert_eq!(r.lines, n);
}

#[test]
fn the_writer_continues_a_log_of_ocsf_1_5_0_records_in_the_current_layout() {
    let s = Scratch::new("old-layout");
    for e in fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, s.0.join(p.file_name().unwrap())).unwrap();
    }
    // Git keeps no file mode: the signing key is private again, as the writer made it.
    fs::set_permissions(s.0.join("audit.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let before = files(&s.base());
    let old_last = records(before.last().unwrap()).len();

    let (log, h) = AuditLog::open(config(&s.base()), device()).unwrap();
    send_findings(&h, 0, 3);
    log.close().unwrap();

    let after = files(&s.base());
    assert_eq!(after, before, "continued in the same file");
    let recs = records(after.last().unwrap());
    assert!(recs[..old_last]
        .iter()
        .all(|r| r.ocsf_version() == Some(OcsfVersion::V1_5_0)));
    let new = &recs[old_last..];
    assert!(!new.is_empty());
    assert!(new
        .iter()
        .all(|r| r.ocsf_version() == Some(OcsfVersion::CURRENT)));
    assert!(matches!(
        new[0].event(),
        Some(Event::Log(l)) if l.action == LogAction::Restart
    ));
    let actor = new[0].actor.as_ref().unwrap().process.as_ref().unwrap();
    assert_eq!(actor.pid, std::process::id());
    let r = verify_paths(&after, &fixture_key(&s.0), false);
    assert!(r.ok, "{:?}", r.failure);
}

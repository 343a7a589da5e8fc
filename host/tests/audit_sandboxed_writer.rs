//! The audit writer under its own seccomp filter (as the device process runs it): it
//! rotates files, checkpoints on a timer and in full mode, and the log verifies. A call the
//! filter does not allow would kill this test process, so every path exercised here is one
//! the filter provably allows. The filter is per thread: the writer thread exits with it,
//! and the test thread is unaffected.

mod audit_support;

use std::time::Duration;

use audit_support::*;
use swiotlb_host::audit::{AuditError, AuditLog, AuditMode, WriterSetupError};
use swiotlb_host::sandbox::seccomp::{install, Role};
use swiotlb_host::sandbox::SandboxError;

/// The writer's seccomp filter, as the device process installs it.
fn writer_filter() -> Result<(), SandboxError> {
    install(Role::AuditWriter)
}

/// [`writer_filter`] as the audit log takes a writer setup: its error kept whole.
const WRITER_SETUP: fn() -> Result<(), WriterSetupError> = || Ok(writer_filter()?);

#[test]
fn a_sandboxed_writer_rotates_checkpoints_and_its_log_verifies() {
    let s = Scratch::new("sandboxed-writer");
    let mut cfg = config(&s.base());
    cfg.rotate_bytes = Some(8 << 10);
    cfg.checkpoint_every = Duration::from_millis(20);
    cfg.mode = AuditMode::Full;
    cfg.writer_setup = Some(WRITER_SETUP);
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    send_findings(&h, 0, 40);
    for head in 0..64u16 {
        h.record_chain(
            0,
            head,
            [(0x8000_0000_0000 + u64::from(head) * 4096, 4096, true)],
        )
        .unwrap();
    }
    // Let the interval checkpoint fire at least once.
    std::thread::sleep(Duration::from_millis(60));
    send_findings(&h, 40, 20);
    let key = log.verifier_key().clone();
    log.close().unwrap();
    let f = files(&s.base());
    assert!(f.len() >= 3, "expected rotation, got {} files", f.len());
    let r = verify_paths(&f, &key, false);
    assert!(r.ok, "{:?}", r.failure);

    // Reopening recovers the log (on the opening thread), and the sandboxed writer goes on.
    let mut cfg = config(&s.base());
    cfg.rotate_bytes = Some(8 << 10);
    cfg.writer_setup = Some(WRITER_SETUP);
    let key2 = write_findings(cfg, 30);
    assert_eq!(key, key2);
    let r = verify_paths(&files(&s.base()), &key, false);
    assert!(r.ok, "{:?}", r.failure);
}

#[test]
fn a_writer_setup_that_fails_stops_the_open_with_its_reason() {
    let s = Scratch::new("writer-setup-fails");
    let mut cfg = config(&s.base());
    cfg.writer_setup = Some(|| Err("no filter for this test".into()));
    let err = AuditLog::open(cfg, device()).err().expect("open must fail");
    assert!(matches!(err, AuditError::WriterSetup(_)), "{err:?}");
    // The reason is the error's source, so it is in the chain an operator reads.
    let err = swiotlb_shared::error_chain(&err);
    assert!(err.contains("no filter for this test"), "{err}");
}

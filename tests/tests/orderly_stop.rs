//! The host stopped in the middle of I/O, as operators stop it: SIGTERM (`systemctl stop`)
//! and SIGINT end it in order (exit 0, every acknowledged write in the image, an audit log
//! that verifies as intact), SIGKILL leaves a log that verifies as open, never as tampered,
//! and the driver on the other side gets errors, not a hang.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::{BlockDriver, Options};
use swiotlb_tests::{audit_log_files, bin, disk_image, HostProcess};

const BLOCK: usize = 4096;
const DISK: u64 = 4 << 20;

/// The block written at `i`: its index in every 8 bytes, so a block in the wrong place or
/// a stale one shows.
fn block(i: u64, round: u64) -> Vec<u8> {
    (0..BLOCK / 8)
        .flat_map(|_| (i | round << 32).to_le_bytes())
        .collect()
}

/// `swiotlb-audit verify` on the log in `dir`: its exit status and stdout.
fn verify(dir: &Path) -> (i32, String) {
    let files = audit_log_files(dir);
    let out = Command::new(bin("swiotlb-audit"))
        .arg("verify")
        .args(&files)
        .arg("--key")
        .arg(dir.join("device.key.pub"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A host serving forever (no `--sessions`) with an audit log in `<dir>/audit`.
fn host(dir: &Path, disk: &Path, mode: &str) -> HostProcess {
    let log = dir.join("audit").join("device.jsonl");
    HostProcess::spawn(
        dir,
        disk,
        &[
            "--log",
            "info",
            "--audit-mode",
            mode,
            "--audit-log",
            log.to_str().unwrap(),
        ],
    )
}

/// What the writer saw: blocks acknowledged (index, round) and the error that ended it.
struct Writes {
    acked: Vec<(u64, u64)>,
    ended_by: String,
    /// From the host's end to the driver's first error.
    elapsed_after_stop: Option<Duration>,
}

/// Writes blocks round after round until a request fails; `stopped` is set by the test when
/// it stops the host.
fn writer(
    socket: PathBuf,
    running: Arc<AtomicBool>,
    stopped: Arc<std::sync::Mutex<Option<Instant>>>,
) -> Writes {
    let c = VfioUserClient::connect(&socket).unwrap();
    let opts = Options {
        timeout: Duration::from_secs(3),
        ..Options::default()
    };
    let mut drv = BlockDriver::open(c, &opts).unwrap();
    let mut acked = Vec::new();
    let blocks = DISK / BLOCK as u64;
    let mut round = 1u64;
    loop {
        for i in 0..blocks {
            running.store(true, Ordering::Release);
            match drv.write_at(i * BLOCK as u64, &block(i, round)) {
                Ok(()) => acked.push((i, round)),
                Err(e) => {
                    let at = stopped.lock().unwrap().map(|t| t.elapsed());
                    return Writes {
                        acked,
                        ended_by: e.to_string(),
                        elapsed_after_stop: at,
                    };
                }
            }
        }
        round += 1;
    }
}

/// Starts the writer and waits until it has written for a while.
fn start_writer(
    socket: &Path,
) -> (
    std::thread::JoinHandle<Writes>,
    Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let running = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(std::sync::Mutex::new(None));
    let (s, r, st) = (socket.to_path_buf(), running.clone(), stopped.clone());
    let t = std::thread::spawn(move || writer(s, r, st));
    let start = Instant::now();
    while !running.load(Ordering::Acquire) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "writer never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    (t, stopped)
}

fn signal(host: &HostProcess, sig: libc::c_int) {
    // SAFETY: kill with a valid signal to the child's pid, which the test owns.
    assert_eq!(unsafe { libc::kill(host.pid() as libc::pid_t, sig) }, 0);
}

/// Every acknowledged write (its last round per block) is in the image.
fn assert_acked_writes_in_image(disk: &Path, w: &Writes) {
    let image = std::fs::read(disk).unwrap();
    let mut last = std::collections::BTreeMap::new();
    for (i, r) in &w.acked {
        last.insert(*i, *r);
    }
    assert!(!last.is_empty(), "no write was acknowledged");
    for (i, r) in last {
        let at = (i as usize) * BLOCK;
        let got = &image[at..at + BLOCK];
        // A later, unacknowledged write of the same block may have landed too.
        assert!(
            got == block(i, r).as_slice() || got == block(i, r + 1).as_slice(),
            "block {i}: acknowledged round {r} is not in the image"
        );
    }
}

#[test]
fn sigterm_and_sigint_mid_io_stop_in_order_with_a_log_that_verifies_intact() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        for mode in ["summary", "full"] {
            let dir = tempfile::tempdir().unwrap();
            let disk = disk_image(dir.path(), "disk.img", DISK);
            let mut h = host(dir.path(), &disk, mode);
            let (writer, stopped) = start_writer(&h.socket);

            signal(&h, sig);
            let t = Instant::now();
            let st = h.wait();
            let took = t.elapsed();
            *stopped.lock().unwrap() = Some(Instant::now());
            assert!(
                st.success(),
                "{name} ({mode}): the host exits 0 after an orderly stop: {st:?}"
            );
            assert!(
                took < Duration::from_secs(10),
                "{name} ({mode}): the stop took {took:?}"
            );
            let stopping = h.event("stopping", 1);
            assert_eq!(stopping["signal"], name, "{stopping}");
            assert_eq!(h.session(1)["ended"], "stopped");

            let w = writer.join().unwrap();
            assert!(
                w.elapsed_after_stop
                    .is_some_and(|d| d < Duration::from_secs(5)),
                "{name} ({mode}): the driver saw an error, not a hang ({:?}: {})",
                w.elapsed_after_stop,
                w.ended_by
            );
            assert_acked_writes_in_image(&disk, &w);

            let (rc, out) = verify(&dir.path().join("audit"));
            assert_eq!(rc, 0, "{name} ({mode}): the log is intact: {out}");
            assert!(out.starts_with("OK:"), "{out}");
        }
    }
}

#[test]
fn sigkill_mid_io_leaves_an_open_log_never_tampered_and_the_next_start_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_image(dir.path(), "disk.img", DISK);
    let audit = dir.path().join("audit");
    let mut h = host(dir.path(), &disk, "full");
    let (writer, stopped) = start_writer(&h.socket);
    signal(&h, libc::SIGKILL);
    let st = h.wait();
    *stopped.lock().unwrap() = Some(Instant::now());
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL)
    );
    let w = writer.join().unwrap();
    assert!(
        w.elapsed_after_stop
            .is_some_and(|d| d < Duration::from_secs(5)),
        "the driver saw an error, not a hang ({:?}: {})",
        w.elapsed_after_stop,
        w.ended_by
    );

    let (rc, out) = verify(&audit);
    assert_eq!(rc, 3, "killed: open, not tampered: {out}");
    assert!(out.starts_with("OPEN:"), "{out}");
    assert!(!out.contains("TAMPERED"), "{out}");

    // The next start recovers the log; an orderly stop then closes it.
    let mut h = host(dir.path(), &disk, "full");
    signal(&h, libc::SIGTERM);
    assert!(h.wait().success());
    let (rc, out) = verify(&audit);
    assert_eq!(rc, 0, "after the restart and an orderly stop: {out}");
}

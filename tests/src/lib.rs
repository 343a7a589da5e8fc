//! Test harness for end-to-end and adversarial tests: the real `swiotlb-host` binary as a
//! separate process (with its per-session JSON summaries), an in-process host for fast
//! tests, and sparse disk images.
//!
//! The binaries are found beside the test executable (`target/<profile>/`); `cargo test
//! --workspace` builds them before any test runs. A missing binary fails loudly with how to
//! build it, never silently.
//!
//! A host child's log (its stderr: the `tracing` lines) goes to a file, not into the test
//! output; it is printed only when the test that started it fails ([`ChildLog`]).

pub mod fuzz;
pub mod raw_session;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swiotlb_host::devices::block::{disk::DiskImage, Block};
use swiotlb_host::pci::function::SessionSummary;
use swiotlb_host::vfio_user::{ProtocolStats, Server, SessionEnd};
use swiotlb_host::virtio::Policy;
use swiotlb_host::VirtioPciFunction;

/// Default pool for tests: 16 MiB, as the host's default.
pub const POOL_SIZE: u64 = 16 << 20;

/// The `.jsonl` files of an audit log directory, oldest first (their names number them).
pub fn audit_log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading audit directory {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    v.sort();
    v
}

/// Path of a workspace binary built beside the running test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "binary {} is missing: build it with `cargo build --workspace --bins` (or run `cargo test --workspace`)",
        p.display()
    );
    p
}

/// A sparse disk image of `size` bytes filled with zeros.
pub fn disk_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("create disk image");
    f.set_len(size).expect("size disk image");
    p
}

/// Waits until `path` exists (a socket being bound), up to 10 s.
pub fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} did not appear within 10 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process's stderr, kept in a temporary file and printed (on the test's stderr,
/// which the test harness shows with the failure) only if the thread that holds it is
/// panicking when it is dropped: a passing test prints nothing of it.
pub struct ChildLog {
    file: tempfile::NamedTempFile,
    name: String,
}

impl ChildLog {
    /// A new empty log for the child `name` (said when the log is printed).
    pub fn new(name: &str) -> Self {
        Self {
            file: tempfile::Builder::new()
                .prefix(&format!("{name}-"))
                .suffix(".log")
                .tempfile()
                .expect("create a child log file"),
            name: name.to_string(),
        }
    }

    /// The file, for the child's stderr (`Command::stderr`).
    pub fn stdio(&self) -> Stdio {
        let f: File = self
            .file
            .as_file()
            .try_clone()
            .expect("reopen the child log");
        Stdio::from(f)
    }

    /// Where the log is (removed when the log is dropped).
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let text = std::fs::read(self.path()).map_or_else(
            |e| format!("(cannot read {}: {e})", self.path().display()),
            |b| String::from_utf8_lossy(&b).into_owned(),
        );
        eprintln!(
            "---- {} log (stderr) ----\n{}---- end of {} log ----",
            self.name, text, self.name
        );
    }
}

/// The `swiotlb-host` binary running as a child process, its log in a [`ChildLog`].
pub struct HostProcess {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    summaries: Arc<Mutex<Vec<serde_json::Value>>>,
    reader: Option<JoinHandle<()>>,
    /// Held for its drop, which comes after the child is stopped (fields drop after
    /// `Drop::drop`), so a failed test prints the whole log.
    _log: ChildLog,
}

impl HostProcess {
    /// Starts `swiotlb-host --socket <dir>/host.sock --disk <disk> <extra...>`. Unless
    /// `extra` speaks of attestation, the host runs with `--attestation off` (the tests that
    /// exercise attestation say so).
    pub fn spawn(dir: &Path, disk: &Path, extra: &[&str]) -> Self {
        let attest = extra
            .iter()
            .any(|a| a.starts_with("--attestation") || a.starts_with("--allow-emulated"));
        let off: &[&str] = if attest {
            &[]
        } else {
            &["--attestation", "off"]
        };
        let socket = dir.join("host.sock");
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(bin("swiotlb-host"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(disk)
            .args(extra)
            .args(off);
        Self::start(cmd, socket)
    }

    /// Starts `cmd` (a `swiotlb-host` command line the caller built), whose clients
    /// connect to `socket`, and waits for the socket to appear.
    pub fn start(mut cmd: Command, socket: PathBuf) -> Self {
        let log = ChildLog::new("swiotlb-host");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log.stdio())
            // Plain text in the log file, not terminal colour codes.
            .env("NO_COLOR", "1")
            .spawn()
            .expect("start swiotlb-host");
        let out = child.stdout.take().expect("piped stdout");
        let summaries = Arc::new(Mutex::new(Vec::new()));
        let s2 = summaries.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let mut all = s2.lock().expect("summaries lock");
                    all.push(v);
                }
            }
        });
        let host = Self {
            child,
            socket,
            summaries,
            reader: Some(reader),
            _log: log,
        };
        wait_for(&host.socket);
        host
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the `n`-th session summary (1-based), up to 10 s, and returns it.
    pub fn session(&self, n: usize) -> serde_json::Value {
        self.event("session_end", n)
    }

    /// Waits for the `n`-th JSON line (1-based) whose `event` is `event`, up to 10 s.
    pub fn event(&self, event: &str, n: usize) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let found = self
                .summaries
                .lock()
                .expect("lock")
                .iter()
                .filter(|v| v["event"] == event)
                .nth(n - 1)
                .cloned();
            if let Some(v) = found {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {event} line number {n} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit (it was started with `--sessions N`). The log stays
    /// with `self`, for a test that fails after this.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let st = self.child.wait().expect("wait for swiotlb-host");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        st
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an in-process session ended with.
pub type SessionRecord = (String, SessionSummary, ProtocolStats);

/// A host served from a thread of the test process (fast; no binary needed).
pub struct InProcessHost {
    /// Its socket.
    pub socket: PathBuf,
    handle: Option<JoinHandle<Vec<SessionRecord>>>,
}

impl InProcessHost {
    /// Serves `sessions` clients on `<dir>/host.sock` with a block device on `disk`.
    pub fn start(dir: &Path, disk: &Path, sessions: u64, read_only: bool, policy: Policy) -> Self {
        let socket = dir.join("host.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind host socket");
        let image = DiskImage::open(disk, read_only).expect("open disk image");
        let function = VirtioPciFunction::new(Box::new(Block::new(image)), POOL_SIZE, policy)
            .expect("create function");
        let handle = std::thread::spawn(move || {
            let mut server = Server::new(function);
            let mut records = Vec::new();
            server
                .run(&listener, Some(sessions), |end, summary, proto| {
                    let e = match end {
                        SessionEnd::Closed => "closed".to_string(),
                        SessionEnd::ProtocolError(e) => format!("protocol error: {e}"),
                        SessionEnd::Stopped => "stopped".to_string(),
                    };
                    records.push((e, summary.clone(), *proto));
                })
                .expect("serve");
            records
        });
        Self {
            socket,
            handle: Some(handle),
        }
    }

    /// Waits for every session to end and returns how each ended.
    pub fn finish(mut self) -> Vec<SessionRecord> {
        self.handle
            .take()
            .expect("not finished twice")
            .join()
            .expect("host thread panicked")
    }
}

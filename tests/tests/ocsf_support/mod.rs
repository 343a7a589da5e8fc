//! Shared by the OCSF tests (`ocsf_schema.rs`, `siem_feed.rs`): a real `swiotlb-host` that
//! writes an audit log while drivers use it honestly and dishonestly, and the checkers those
//! tests run beyond cargo (the official OCSF schema through `tests/ocsf/validate.py`, a real
//! rsyslogd), each found through an environment variable the test command sets.
//!
//! A checker that is missing is said loudly on stderr; it fails the test only when the
//! environment demands it (`tests/run.sh` does), so a developer without it still runs the
//! rest, and CI cannot pass without it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use swiotlb_attest::emulated::Signer;
use swiotlb_guest::ring::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use swiotlb_guest::testing::raw_driver::{Desc, RawDriver, BLK_T_OUT, DEFAULT_FEATURES};
use swiotlb_shared::pci::attest_mailbox as mb;
use swiotlb_tests::raw_session::{ready, sign, submit, transcript_of, QSIZE};
use swiotlb_tests::{bin, HostProcess};

/// Python of a venv with `ocsf-json-schema` and `jsonschema` (set by `tests/run.sh`).
pub const PYTHON_VAR: &str = "SWIOTLB_OCSF_PYTHON";
/// Set (to anything) when the OCSF schema check must run: its absence is then a failure.
pub const REQUIRE_OCSF_VAR: &str = "SWIOTLB_REQUIRE_OCSF_CHECK";
/// The rsyslogd to run (default: `rsyslogd` in `/usr/sbin`, `/sbin` or `PATH`).
pub const RSYSLOGD_VAR: &str = "SWIOTLB_RSYSLOGD";
/// Set (to anything) when the rsyslog test must run.
pub const REQUIRE_RSYSLOG_VAR: &str = "SWIOTLB_REQUIRE_RSYSLOG";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// Says loudly that `what` is missing and why; panics (fails the test) when `require_var`
/// is set, else the caller returns without the check.
pub fn missing(what: &str, how: &str, require_var: &str) {
    let banner = "!".repeat(78);
    // Straight to the process's stderr, not through the test harness's capture: a passing
    // test must still say what it did not check.
    let _ = writeln!(
        std::io::stderr(),
        "{banner}\nNOT CHECKED: {what}\n{how}\n(this test fails instead when {require_var} is set, \
         as tests/run.sh sets it)\n{banner}"
    );
    assert!(
        std::env::var_os(require_var).is_none(),
        "{what}: required by {require_var}, but missing: {how}"
    );
}

/// The Python that validates against the OCSF schema, or `None` after saying so.
pub fn ocsf_python() -> Option<PathBuf> {
    match std::env::var_os(PYTHON_VAR) {
        Some(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
        Some(p) => {
            missing(
                "records against the official OCSF schema",
                &format!("{PYTHON_VAR}={} does not exist", Path::new(&p).display()),
                REQUIRE_OCSF_VAR,
            );
            None
        }
        None => {
            missing(
                "records against the official OCSF schema",
                &format!(
                    "{PYTHON_VAR} is not set: point it at a Python with ocsf-json-schema and \
                     jsonschema (tests/run.sh makes one)"
                ),
                REQUIRE_OCSF_VAR,
            );
            None
        }
    }
}

/// Runs `tests/ocsf/validate.py --require-version <v>` over `files`: (passed, its output).
pub fn validate(python: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(python)
        .arg(repo().join("tests/ocsf/validate.py"))
        .args(["--require-version", version])
        .args(files)
        .output()
        .expect("run validate.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The rsyslogd to run, or `None` after saying so.
pub fn rsyslogd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(RSYSLOGD_VAR) {
        return Some(PathBuf::from(p));
    }
    let candidates = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"];
    if let Some(p) = candidates.iter().map(Path::new).find(|p| p.exists()) {
        return Some(p.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("rsyslogd"))
            .find(|p| p.exists())
        {
            return Some(p);
        }
    }
    missing(
        "the rsyslog configuration in deploy/rsyslog against a real rsyslogd",
        "rsyslogd is not installed (Debian: apt-get install rsyslog; tests/run.sh does)",
        REQUIRE_RSYSLOG_VAR,
    );
    None
}

/// The numbered files of the log at `dir/<stem>.jsonl`, oldest first.
pub use swiotlb_tests::audit_log_files as log_files;

/// Every line of `files`, parsed as JSON.
pub fn json_lines(files: &[PathBuf]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `(class_uid, activity_name)` of a record.
pub fn kind(r: &Value) -> (u64, String) {
    (
        r["class_uid"].as_u64().unwrap_or(0),
        r["activity_name"].as_str().unwrap_or("").to_string(),
    )
}

/// A device with attestation required (emulated platform, a fresh ARK), its audit log in
/// `<dir>/audit/device.jsonl`: full mode, files rotated at 16 KiB, a checkpoint every 8
/// records, serving `sessions` sessions.
pub struct Device {
    pub dir: PathBuf,
    pub logdir: PathBuf,
    pub host: HostProcess,
    /// The emulated platform's signing key (PKCS#8), for the guest CLI.
    pub ark_key: PathBuf,
    pub signer: Signer,
}

impl Device {
    pub fn start(dir: &Path, sessions: u64) -> Self {
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let pk8 = Signer::generate_ark_pkcs8().unwrap();
        let ark_key = dir.join("emulated-ark.pk8");
        std::fs::write(&ark_key, &pk8).unwrap();
        let pubfile = dir.join("emulated-ark.pub");
        std::fs::write(&pubfile, Signer::public_key_of(&pk8).unwrap()).unwrap();
        let logdir = dir.join("audit");
        std::fs::create_dir_all(&logdir).unwrap();
        let log = logdir.join("device.jsonl");
        let sessions = sessions.to_string();
        let host = HostProcess::spawn(
            dir,
            &disk,
            &[
                "--log",
                "warn",
                "--attestation",
                "required",
                "--allow-emulated",
                "--emulated-ark",
                pubfile.to_str().unwrap(),
                "--audit-log",
                log.to_str().unwrap(),
                "--audit-mode",
                "full",
                "--audit-rotate-size",
                "16K",
                "--audit-checkpoint-records",
                "8",
                "--sessions",
                &sessions,
            ],
        );
        Self {
            dir: dir.to_path_buf(),
            logdir,
            host,
            signer: Signer::from_pkcs8(&pk8).unwrap(),
            ark_key,
        }
    }

    /// The verifier key file of the log.
    pub fn key(&self) -> PathBuf {
        self.logdir.join("device.key.pub")
    }

    /// Three sessions: honest attested I/O through the guest CLI (attestation accepted);
    /// evidence that lies about the session (attestation refused); evidence that is
    /// accepted, then a descriptor outside the pool (a finding and DEVICE_NEEDS_RESET), and
    /// the driver resetting the device.
    pub fn drive_three_sessions(&self) {
        let out = Command::new(bin("swiotlb-guest"))
            .arg("--socket")
            .arg(&self.host.socket)
            .args(["--json", "--attester", "emulated", "--emulated-key"])
            .arg(&self.ark_key)
            .args(["roundtrip", "--size", "256K"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "guest CLI: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            self.host.session(1)["summary"]["attestation_state"],
            "accepted"
        );

        let mut d = RawDriver::connect(&self.host.socket).unwrap();
        let rings = ready(&mut d);
        let lie = transcript_of(&mut d, DEFAULT_FEATURES, (rings.0 + 4096, rings.1, rings.2));
        assert_eq!(
            submit(&mut d, &sign(&self.signer, &lie)),
            mb::STATE_REJECTED
        );
        drop(d);
        assert_eq!(
            self.host.session(2)["summary"]["attestation_state"],
            "rejected"
        );

        let mut d = RawDriver::connect(&self.host.socket).unwrap();
        let rings = ready(&mut d);
        let truth = transcript_of(&mut d, DEFAULT_FEATURES, rings);
        assert_eq!(
            submit(&mut d, &sign(&self.signer, &truth)),
            mb::STATE_ACCEPTED
        );
        one_pass_of_long_chains(&mut d);
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
        d.transport().reset().unwrap();
        drop(d);
        let s3 = self.host.session(3)["summary"].clone();
        assert_eq!(s3["dma_violations"], 1, "{s3}");
    }
}

/// Chains in one pass over the queue, each an indirect table as long as the queue: 2048
/// descriptors, which the device packs in about 8 KiB (4 bytes a descriptor).
pub const LONG_CHAINS: u16 = 32;

/// Makes [`LONG_CHAINS`] OUT requests available at once and kicks once: each an indirect
/// table of [`QSIZE`] descriptors (the header, 512-byte data descriptors, the status), so the
/// device takes them in one pass and full mode records them in one DMA batch record of
/// some thousands of descriptors (its line over 8 KiB: longer than rsyslog's default
/// message).
fn one_pass_of_long_chains(d: &mut RawDriver) {
    let used = d.used_idx().unwrap();
    let data_descs = u32::from(QSIZE) - 2;
    for i in 0..LONG_CHAINS {
        let area = d.scratch_area() + (1 << 20) + u64::from(i) * (64 << 10);
        let (header, status, table, data) = (area, area + 256, area + 512, area + 4096);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&BLK_T_OUT.to_le_bytes());
        h[8..16].copy_from_slice(&(u64::from(i) * u64::from(data_descs)).to_le_bytes());
        d.pool().write(header, &h).unwrap();
        d.pool().write(status, &[0xff]).unwrap();
        d.pool()
            .write(data, &vec![0x5a; data_descs as usize * 512])
            .unwrap();
        let mut descs = vec![Desc {
            addr: d.bus(header),
            len: 16,
            flags: VIRTQ_DESC_F_NEXT,
            next: 0,
        }];
        descs.extend((0..u64::from(data_descs)).map(|k| Desc {
            addr: d.bus(data + k * 512),
            len: 512,
            flags: VIRTQ_DESC_F_NEXT,
            next: 0,
        }));
        descs.push(Desc {
            addr: d.bus(status),
            len: 1,
            flags: VIRTQ_DESC_F_WRITE,
            next: 0,
        });
        let at = d.write_table(table, &descs).unwrap();
        d.write_desc(
            i,
            Desc {
                addr: at,
                len: u32::from(QSIZE) * 16,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        )
        .unwrap();
        d.publish(i).unwrap();
    }
    d.kick(0).unwrap();
    wait_until(10, "the long chains are served", || {
        d.used_idx().unwrap() == used.wrapping_add(LONG_CHAINS)
    });
}

/// Waits up to `secs` for `f` to hold.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

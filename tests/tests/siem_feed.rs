//! The SIEM feed: `swiotlb-audit export` writes verified records as OCSF JSON Lines,
//! follows a log as it grows across rotation, stops at a record that does not verify, and
//! stops in order; the rsyslog configuration in `deploy/rsyslog/` forwards a live device's
//! feed, run by the exporter unit's own command line, through a real rsyslogd, intact.

mod ocsf_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ocsf_support::*;
use serde_json::Value;
use swiotlb_tests::bin;

fn fixture() -> PathBuf {
    repo().join("tests/fixtures/audit-ocsf-1.5.0")
}

fn export_args(logs: &[&Path], key: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin("swiotlb-audit"));
    c.arg("export").args(logs).arg("--key").arg(key).args(extra);
    c
}

/// `export` of `logs` that must succeed: its stdout, as lines.
fn export_lines(logs: &[&Path], key: &Path, extra: &[&str]) -> Vec<String> {
    let out = export_args(logs, key, extra).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `export` of the whole fixture, as lines.
fn fixture_export(extra: &[&str]) -> Vec<String> {
    export_lines(
        &[&fixture().join("audit.jsonl")],
        &fixture().join("audit.key.pub"),
        extra,
    )
}

fn index_of(line: &str) -> u64 {
    let v: Value = serde_json::from_str(line).unwrap();
    v["unmapped"]["proof"]["index"].as_u64().unwrap()
}

fn sigterm(c: &Child) {
    // SAFETY: kill has no memory effects; the pid is our own child's, not yet reaped.
    let rc = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

fn wait_exit(c: &mut Child, secs: u64) -> std::process::ExitStatus {
    let mut st = None;
    wait_until(secs, "the process exits", || {
        st = c.try_wait().unwrap();
        st.is_some()
    });
    st.unwrap()
}

#[test]
fn export_writes_every_covered_record_once_with_its_proof_as_valid_ocsf() {
    let lines = fixture_export(&[]);
    // 39 lines: all but the closing checkpoint, which no later checkpoint covers.
    assert_eq!(lines.len(), 38);
    for (i, l) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap();
        let p = &v["unmapped"]["proof"];
        assert_eq!(p["index"], i as u64);
        assert_eq!(v["metadata"]["sequence"], i as u64);
        assert!(p["checkpoint_size"].as_u64().unwrap() > i as u64, "{p}");
        assert_eq!(p["upgraded_from"], "1.5.0", "the fixture's layout, said");
        assert!(p["file"].as_str().unwrap().starts_with("audit.00000"));
        assert_eq!(v["metadata"]["version"], "1.7.0");
    }
    // Per DMA: one Memory Activity Read or Write record for each of the 1000 descriptors.
    let per_dma = fixture_export(&["--per-dma"]);
    let dmas: Vec<Value> = per_dma
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["unmapped"]["dma"].is_object())
        .collect();
    assert_eq!(dmas.len(), 1000);
    assert_eq!(
        per_dma.len() - dmas.len(),
        38 - 2,
        "two chains records expanded"
    );
    let writes = dmas.iter().filter(|v| v["activity_id"] == 8).count();
    assert_eq!(writes, 500, "odd descriptors are device-writable");
    assert_eq!(dmas[1]["type_uid"], 100408);
    assert_eq!(dmas[1]["base_address"], dmas[1]["unmapped"]["dma"]["addr"]);

    let Some(python) = ocsf_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, lines.join("\n") + "\n").unwrap();
    std::fs::write(&b, per_dma.join("\n") + "\n").unwrap();
    let (ok, report) = validate(&python, "1.7.0", &[a, b]);
    eprintln!("{report}");
    assert!(ok, "{report}");
}

#[test]
fn export_follows_a_log_written_in_pieces_across_rotation_and_a_renamed_file() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("log");
    std::fs::create_dir(&logdir).unwrap();
    let out = dir.path().join("feed.jsonl");
    let err = dir.path().join("feed.err");
    // Started before the log has any file: it waits for the first.
    let mut exporter = export_args(
        &[&logdir.join("audit.jsonl")],
        &fixture().join("audit.key.pub"),
        &["--follow", "--poll-ms", "10"],
    )
    .stdout(std::fs::File::create(&out).unwrap())
    .stderr(std::fs::File::create(&err).unwrap())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The fixture's files, appended in pieces that cut lines anywhere, one file after the
    // other as the writer does; the second is renamed once the fourth is being written.
    for i in 1..=6 {
        let name = format!("audit.{i:06}.jsonl");
        let data = std::fs::read(fixture().join(&name)).unwrap();
        let mut f = std::fs::File::create(logdir.join(&name)).unwrap();
        for piece in data.chunks(997) {
            f.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        if i == 4 {
            std::fs::rename(
                logdir.join("audit.000002.jsonl"),
                logdir.join("audit.000002.jsonl.archived"),
            )
            .unwrap();
        }
    }
    let want = fixture_export(&[]);
    wait_until(20, "every covered record exported", || {
        std::fs::read_to_string(&out).unwrap().lines().count() >= want.len()
    });
    std::thread::sleep(Duration::from_millis(100));
    sigterm(&exporter);
    let st = wait_exit(&mut exporter, 10);
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(st.success(), "orderly stop: {st:?} {stderr}");
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    let got: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, want, "followed, the same records as read at once");
}

#[test]
fn export_stops_at_the_first_record_that_does_not_verify_and_writes_nothing_from_it() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let f3 = dir.path().join("audit.000003.jsonl");
    let text = std::fs::read_to_string(&f3).unwrap();
    let first_index = index_of_record(text.lines().next().unwrap());
    // Change one byte of the file's fourth record.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let bad = index_of_record(&lines[3]);
    lines[3] = lines[3].replacen("\"time\":1", "\"time\":2", 1);
    std::fs::write(&f3, lines.join("\n") + "\n").unwrap();

    let out = export_args(
        &[&dir.path().join("audit.jsonl")],
        &dir.path().join("audit.key.pub"),
        &[],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "tampered: {stderr}");
    assert!(stderr.contains("altered"), "{stderr}");
    let written: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(index_of)
        .collect();
    assert!(!written.is_empty());
    let last = *written.last().unwrap();
    assert!(
        last < bad,
        "nothing from record {bad} on: last written {last}"
    );
    assert!(
        last >= first_index.saturating_sub(1),
        "what was proven was written"
    );
}

fn index_of_record(line: &str) -> u64 {
    let v: Value = serde_json::from_str(line).unwrap();
    v["metadata"]["sequence"].as_u64().unwrap()
}

#[test]
fn a_restarted_export_goes_on_after_the_last_record_its_state_names() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let key = fixture().join("audit.key.pub");
    let files: Vec<PathBuf> = (1..=6)
        .map(|i| fixture().join(format!("audit.{i:06}.jsonl")))
        .collect();
    let run = |files: &[PathBuf]| {
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        export_lines(&refs, &key, &["--state", state.to_str().unwrap()])
    };
    let mut first = run(&files[..3]);
    assert!(!first.is_empty());
    let second = run(&files);
    assert!(!second.is_empty());
    first.extend(second);
    assert_eq!(first, fixture_export(&[]), "each record once, in order");
    assert!(run(&files).is_empty(), "nothing new");

    // A state of another log is refused, not applied.
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let other = serde_json::json!({"index": 3, "checkpoint_size": 1,
        "checkpoint_root": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="});
    assert_ne!(s["checkpoint_root"], other["checkpoint_root"]);
    std::fs::write(&state, other.to_string()).unwrap();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = export_args(&refs, &key, &["--state", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another log"));
}

#[test]
fn export_stops_in_order_when_its_reader_goes_away() {
    let mut c = export_args(
        &[&fixture().join("audit.jsonl")],
        &fixture().join("audit.key.pub"),
        &["--per-dma", "--follow"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut first = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(index_of(&first), 0);
    // The reader is gone (its end of the pipe closed).
    let st = wait_exit(&mut c, 10);
    let mut stderr = String::new();
    c.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(st.success(), "{st:?}: {stderr}");
    assert!(stderr.contains("stdout closed"), "{stderr}");
}

/// The exporter unit's ExecStart, with the unit's paths replaced by the test's.
fn unit_command(vm: &str, subst: &[(&str, &Path)]) -> Command {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/swiotlb-audit-export@.service"))
        .unwrap();
    let joined = unit.replace("\\\n", " ");
    let exec = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words: Vec<String> = exec
        .replace("%i", vm)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for w in &mut words {
        for (from, to) in subst {
            if w.as_str() == *from {
                *w = to.to_str().unwrap().to_string();
            }
        }
    }
    assert_eq!(words[0], "/usr/bin/swiotlb-audit");
    let mut c = Command::new(bin("swiotlb-audit"));
    c.args(&words[1..]);
    c
}

#[test]
fn the_rsyslog_configuration_forwards_a_live_device_feed_intact_as_valid_ocsf() {
    let Some(rsyslogd) = rsyslogd() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut dev = Device::start(t, 3);

    // The exporter as its unit runs it, appending to the file rsyslog reads.
    let export_dir = t.join("export");
    std::fs::create_dir(&export_dir).unwrap();
    let feed = export_dir.join("vm1.ocsf.jsonl");
    let state = t.join("vm1.state.json");
    // The key is written when the device opens its log.
    wait_until(10, "the verifier key is written", || dev.key().exists());
    let exporter_log = ChildLogFile::new(&t.join("exporter.log"));
    let mut exporter = unit_command(
        "vm1",
        &[
            (
                "/var/log/swiotlb/vm1/device.jsonl",
                &dev.logdir.join("device.jsonl"),
            ),
            ("/etc/swiotlb/vm1.audit.pub", &dev.key()),
            ("/var/lib/swiotlb-export/vm1.state.json", &state),
        ],
    )
    .stdout(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&feed)
            .unwrap(),
    )
    .stderr(exporter_log.stdio())
    .spawn()
    .unwrap();

    // The SIEM: a local TCP listener that keeps what arrives.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&received);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });

    // rsyslogd with the shipped configuration, its paths and target pointed at the test's.
    let work = t.join("rsyslog");
    std::fs::create_dir(&work).unwrap();
    let conf = std::fs::read_to_string(repo().join("deploy/rsyslog/swiotlb-ocsf.conf"))
        .unwrap()
        .replace("/var/log/swiotlb-export", export_dir.to_str().unwrap())
        .replace(
            "target=\"siem.example.net\" port=\"6514\"",
            &format!("target=\"127.0.0.1\" port=\"{port}\""),
        );
    assert!(
        conf.contains(&format!("port=\"{port}\"")),
        "the target is set"
    );
    std::fs::write(work.join("swiotlb-ocsf.conf"), conf).unwrap();
    let main = work.join("rsyslog.conf");
    std::fs::write(
        &main,
        format!(
            "global(workDirectory=\"{w}\")\ninclude(file=\"{w}/swiotlb-ocsf.conf\")\n",
            w = work.display()
        ),
    )
    .unwrap();
    let rs_log = ChildLogFile::new(&work.join("rsyslogd.log"));
    let mut rsyslog = Command::new(&rsyslogd)
        .args(["-n", "-i"])
        .arg(work.join("rsyslogd.pid"))
        .arg("-f")
        .arg(&main)
        .stdout(rs_log.stdio())
        .stderr(rs_log.stdio())
        .spawn()
        .unwrap();

    dev.drive_three_sessions();
    assert!(dev.host.wait().success(), "host exits cleanly");

    // Everything the stopped log's checkpoints cover reaches the feed, then the SIEM.
    let files = log_files(&dev.logdir);
    let total: usize = json_lines(&files).len();
    let covered = || std::fs::read_to_string(&feed).unwrap().lines().count();
    for _ in 0..600 {
        if covered() == total - 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        covered(),
        total - 1,
        "the exporter writes every record but the closing checkpoint: {}",
        exporter_log.text()
    );
    let sent = std::fs::read_to_string(&feed).unwrap();
    wait_until(30, "rsyslog forwards every record", || {
        received.lock().unwrap().len() >= sent.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let got = String::from_utf8(received.lock().unwrap().clone()).unwrap();
    let rs_text = rs_log.text();
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        sent.lines().collect::<Vec<_>>(),
        "every record arrives whole, once, in order (rsyslogd: {rs_text})"
    );
    let longest = sent.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest > 8192,
        "a record longer than rsyslog's default message size went through: {longest}"
    );

    sigterm(&exporter);
    assert!(wait_exit(&mut exporter, 10).success());
    sigterm(&rsyslog);
    wait_exit(&mut rsyslog, 10);

    let Some(python) = ocsf_python() else {
        return;
    };
    let siem = t.join("siem.jsonl");
    std::fs::write(&siem, &got).unwrap();
    let (ok, report) = validate(&python, "1.7.0", &[siem]);
    eprintln!("{report}");
    assert!(ok, "{report}");
}

/// A file for a child's output, shown on failure through the assertion messages.
struct ChildLogFile(PathBuf);

impl ChildLogFile {
    fn new(p: &Path) -> Self {
        std::fs::File::create(p).unwrap();
        Self(p.to_path_buf())
    }

    fn stdio(&self) -> Stdio {
        Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&self.0)
                .unwrap(),
        )
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
}

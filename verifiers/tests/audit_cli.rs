//! The `swiotlb-audit` tool on real logs written by the device's own writer: `verify` exits
//! 0 intact, 1 tampered, 2 unreadable, 3 open, and names the record; `show` filters by class and
//! time and `stats` counts per device and queue; `prove` gives the proofs of the naive
//! RFC 6962 computation against the latest checkpoint.

#[path = "../../host/tests/audit_support/mod.rs"]
mod audit_support;

use std::process::Command;

use audit_support::proofs::*;
use audit_support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swiotlb_host::audit::AuditLog;
use swiotlb_shared::audit::ConfigChange;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_swiotlb-audit"))
}

/// Runs the tool with `args`: its exit status and stdout.
fn run(args: &[&str]) -> (i32, String) {
    let out = tool().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `prove ARGS --json`, which must succeed: its JSON.
fn prove(args: &[&str]) -> serde_json::Value {
    let out = tool()
        .arg("prove")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_tool_exits_0_intact_1_tampered_2_unreadable_and_names_the_record() {
    let (s, path, _key) = closed_log("tool", 16);
    let pubkey = s.0.join("audit.key.pub");
    let ok = tool()
        .args([
            "verify",
            path.to_str().unwrap(),
            "--key",
            pubkey.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("OK:"));

    let mut l = lines(&path);
    let i = event_line(&path, 5);
    l.remove(i);
    write_lines(&path, &l);
    let bad = tool()
        .args([
            "verify",
            path.to_str().unwrap(),
            "--key",
            pubkey.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["failure"]["reason"], "deleted");
    assert_eq!(v["failure"]["index"], i as u64);

    let missing = tool()
        .args([
            "verify",
            "/nonexistent/audit.000001.jsonl",
            "--key",
            pubkey.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let nokey = tool()
        .args([
            "verify",
            path.to_str().unwrap(),
            "--key",
            "/nonexistent.pub",
        ])
        .output()
        .unwrap();
    assert_eq!(nokey.status.code(), Some(2));
}

#[test]
fn a_log_its_writer_did_not_close_is_open_exit_3_naming_the_unproven_records() {
    let (s, path, _key) = closed_log("open", 16);
    let pubkey = s.0.join("audit.key.pub");
    let l = lines(&path);
    // The writer died before its stop record: the last records after the last checkpoint
    // are unproven.
    let cut = l.len() - 2;
    write_lines(&path, &l[..cut]);
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            path.to_str().unwrap(),
            "--key",
            pubkey.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tool().args(&args).output().unwrap()
    };
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("OPEN:"), "{text}");
    assert!(text.contains("no stop record"), "{text}");
    assert!(!text.contains("TAMPERED"), "{text}");

    let out = verify(&["--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "open");
    assert_eq!(v["ok"], false);
    let recs = records(&path);
    let last_cp = recs
        .iter()
        .rposition(|r| r.checkpoint_note().is_some())
        .unwrap() as u64;
    assert_eq!(v["open"]["last_checkpoint"], last_cp);
    assert_eq!(v["open"]["first_unproven"], last_cp + 1);
    assert_eq!(v["open"]["unproven"], cut as u64 - last_cp - 1);
    assert_eq!(v["open"]["stop_record"], false);

    // A live log is expected to be open.
    let out = verify(&["--live", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["ok"].as_bool()),
        (Some("open"), Some(true))
    );

    // The closed log is intact.
    write_lines(&path, &l);
    let out = verify(&["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "intact");
}

#[test]
fn show_filters_by_class_and_time_and_stats_counts_per_device_and_queue() {
    let s = Scratch::new("showstats");
    let (log, h) = AuditLog::open(config(&s.base()), device()).unwrap();
    send_findings(&h, 0, 3);
    dmas(&h);
    h.config_change(ConfigChange::BarProgrammed {
        bar: 2,
        address: 0x80_0000_0000,
        size: 16 << 20,
    })
    .unwrap();
    log.close().unwrap();
    let f = files(&s.base());
    let p = f[0].to_str().unwrap();

    let (code, out) = run(&["show", p, "--class", "finding", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3);
    assert!(out.lines().all(|l| l.contains("\"class_uid\":2004")));
    let (_, out) = run(&["show", p, "--class", "config"]);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("BAR 2 programmed at 0x8000000000"));
    let (_, out) = run(&["show", p, "--since", "4102444800000"]);
    assert!(out.is_empty(), "{out}");
    let (_, out) = run(&["show", p, "--since", "2000-01-01T00:00:00Z"]);
    assert_eq!(out.lines().count(), records(&f[0]).len());

    let (code, out) = run(&["stats", p, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = &v["devices"][0];
    assert_eq!(d["uid"], "test-dev-0");
    assert_eq!(d["findings"]["descriptor_outside_pool"], 3);
    assert_eq!(d["dma_violations"], 3);
    let total: u64 = d["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["dmas"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1000);
    let q0 = d["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == 0)
        .unwrap();
    assert_eq!(q0["findings"], 3);
}

#[test]
fn the_prove_tool_gives_the_naive_proofs_against_the_latest_checkpoint() {
    let l = log("proof-tool");
    let (size, _) = *l.checkpoints.last().unwrap();
    let all: Vec<&str> = l.files.iter().map(|f| f.to_str().unwrap()).collect();
    let key = l.files[0].with_file_name("audit.key.pub");
    let b64 = |v: Vec<H>| v.iter().map(|h| B64.encode(h)).collect::<Vec<_>>();
    for m in [0, 7, size / 2, size - 1] {
        let mut args = all.clone();
        let idx = m.to_string();
        args.extend(["--index", &idx, "--key", key.to_str().unwrap()]);
        let v = prove(&args);
        assert_eq!(v["tree_size"], size as u64);
        assert_eq!(v["root"], B64.encode(mth(&l.lines[..size])));
        assert_eq!(v["checkpoint_signature_checked"], true);
        let proof: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
        assert_eq!(proof, b64(path(m, &l.lines[..size])));
        assert_eq!(v["record"].as_str().unwrap().as_bytes(), &l.lines[m][..]);
    }
    // From the last file alone, for a record in it.
    let last = l.files.last().unwrap().to_str().unwrap();
    let m = size - 2;
    let v = prove(&[last, "--index", &m.to_string()]);
    let proof: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
    assert_eq!(proof, b64(path(m, &l.lines[..size])));
    // Consistency between two checkpoints.
    let (a, _) = l.checkpoints[3];
    let mut args = all.clone();
    let (sa, sb) = (a.to_string(), size.to_string());
    args.extend(["--consistency", &sa, &sb]);
    let v = prove(&args);
    let proof: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
    assert_eq!(proof, b64(subproof(a, &l.lines[..size], true)));
    assert_eq!(v["old_root"], B64.encode(mth(&l.lines[..a])));
}

/// The log file and verifier key of the fixture log under `tests/data/<name>`.
fn fixture_log(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    (dir.join("audit.000001.jsonl"), dir.join("audit.key.pub"))
}

/// A full-mode log of the earlier format (its DMAs in `dma_chains` records, one JSON object
/// per descriptor), as the writer wrote it before DMA batches: 96 chains of three on queues
/// 0 and 1, a finding, a summary.
fn dma_chains_log() -> (std::path::PathBuf, std::path::PathBuf) {
    fixture_log("full-mode-dma-chains")
}

#[test]
fn a_full_mode_log_of_dma_chains_records_still_verifies_shows_and_counts() {
    let (log, key) = dma_chains_log();
    let (p, k) = (log.to_str().unwrap(), key.to_str().unwrap());
    let (code, out) = run(&["verify", p, "--key", k, "--json"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["show", p, "--class", "dma"]);
    assert_eq!(code, 0);
    let dmas: Vec<&str> = out.lines().filter(|l| l.contains(" desc ")).collect();
    assert_eq!(dmas.len(), 288);
    // Chain 5 (queue 1, head 5) at 0x8000100000 + 5 * 0x1800: its data, 0x800 further.
    assert!(
        dmas.contains(&"           queue 1 head 5 desc 1: 0x8000108000+4096 w"),
        "{out}"
    );
    let (_, out) = run(&["stats", p, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let recorded: u64 = v["devices"][0]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["dma_records"].as_u64().unwrap())
        .sum();
    assert_eq!(recorded, 288);
}

#[test]
fn show_expands_a_dma_batch_into_one_line_per_dma_and_stats_counts_them() {
    let s = Scratch::new("show-batch");
    let mut cfg = config(&s.base());
    cfg.mode = swiotlb_host::audit::AuditMode::Full;
    let (log, h) = AuditLog::open(cfg, device()).unwrap();
    let (n, _) = dmas(&h);
    log.close().unwrap();
    let f = files(&s.base());
    let p = f[0].to_str().unwrap();
    let (code, out) = run(&["show", p, "--class", "dma"]);
    assert_eq!(code, 0);
    assert!(out.contains("Memory Activity"), "{out}");
    assert!(out.contains("DMA Batch"), "{out}");
    let dmas: Vec<&str> = out.lines().filter(|l| l.contains(" desc ")).collect();
    assert_eq!(dmas.len() as u64, n);
    // Descriptor i = 4j + k of chain j (queue j % 3, head j % 64), as `dmas` sent them.
    for (i, line) in dmas.iter().enumerate() {
        let (i, j) = (i as u64, i as u64 / 4);
        let dir = if i % 2 == 1 { 'w' } else { 'r' };
        let want = format!(
            "queue {} head {} desc {}: {:#x}+{} {dir}",
            j % 3,
            j % 64,
            i % 4,
            0x80_0000_0000 + i * 4096,
            512 + i
        );
        assert_eq!(line.trim(), want);
    }
    let (_, out) = run(&["stats", p, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for q in v["devices"][0]["queues"].as_array().unwrap() {
        assert_eq!(q["dma_records"], q["dmas"], "{q}");
    }
}

/// A full-mode log whose DMA batch records are packed in `chains-le/1` (13 bytes a
/// descriptor), as the writer wrote them before `chains-varint/1`: 96 chains of three on
/// queues 0 and 1 (chain j at 0x8000100000 + j * 0x1800: a 16-byte header, 4 KiB of data
/// 0x800 further, a status byte 0x10 further), a finding, a summary.
fn dma_batch_le_log() -> (std::path::PathBuf, std::path::PathBuf) {
    fixture_log("full-mode-dma-batch-le")
}

#[test]
fn a_full_mode_log_of_fixed_width_batches_still_verifies_shows_counts_and_exports() {
    let (log, key) = dma_batch_le_log();
    let (p, k) = (log.to_str().unwrap(), key.to_str().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(r#""format":"chains-le/1""#));
    let (code, out) = run(&["verify", p, "--key", k, "--json"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["show", p, "--class", "dma"]);
    assert_eq!(code, 0);
    let dmas: Vec<&str> = out.lines().filter(|l| l.contains(" desc ")).collect();
    assert_eq!(dmas.len(), 288);
    for line in [
        "queue 1 head 5 desc 0: 0x8000107800+16 r",
        "queue 1 head 5 desc 1: 0x8000108000+4096 w",
        "queue 0 head 4 desc 2: 0x8000106010+1 w",
    ] {
        assert!(dmas.iter().any(|l| l.trim() == line), "{line}: {out}");
    }
    let (_, out) = run(&["stats", p, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let recorded: u64 = v["devices"][0]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["dma_records"].as_u64().unwrap())
        .sum();
    assert_eq!(recorded, 288);
    // Exported one record per DMA: 96 device reads (headers) and 192 writes.
    let (code, out) = run(&["export", "--per-dma", "--key", k, p]);
    assert_eq!(code, 0, "{out}");
    let per_dma: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["class_uid"] == 1004 && r["activity_id"] != 99)
        .collect();
    assert_eq!(per_dma.len(), 288);
    let reads = per_dma.iter().filter(|r| r["activity_id"] == 7).count();
    assert_eq!((reads, per_dma.len() - reads), (96, 192));
}

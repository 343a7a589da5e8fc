//! The `swiotlb-attest` binary: exit 0 accepted, 1 rejected with every reason, 2 unreadable.

#[path = "../../attest/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_swiotlb-attest"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run swiotlb-attest")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

const NOW: &str = "2025-07-01T00:00:00Z";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn virtee_report_from_the_sev_crate_exits_0_with_json() {
    let d = common::sev_certs_data();
    let o = run(&[
        "verify",
        "--report",
        p(&d.join("report_milan.hex")),
        "--vcek",
        p(&d.join("vcek_milan.der")),
        "--chain",
        p(&d.join("cert_chain_milan")),
        "--now",
        NOW,
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let j = json(&o);
    assert_eq!(j["verdict"], "accepted");
    assert_eq!(j["platform"], "snp");
    assert_eq!(j["emulated"], false);
    assert_eq!(j["tcb"]["reported"]["snp"], 8);
    assert!(j["measurement"].as_str().unwrap().starts_with("7a1e5c26"));
    assert_eq!(j["reasons"], serde_json::json!([]));
}

#[test]
fn go_sev_guest_report_exits_1_then_0_with_allow_debug() {
    let Some(v) = common::vectors("cli go_sev_guest") else {
        return;
    };
    let d = v.join("snp/go-sev-guest");
    let (report, vcek) = (d.join("attestation.bin"), d.join("vcek.der"));
    let base = [
        "verify",
        "--report",
        p(&report),
        "--vcek",
        p(&vcek),
        "--now",
        NOW,
    ];
    let o = run(&base);
    assert_eq!(code(&o), 1);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("rejected") && out.contains("DEBUG"), "{out}");
    let mut args = base.to_vec();
    args.push("--allow-debug");
    assert_eq!(code(&run(&args)), 0);
    // The wrong VCEK (the virtee chip's) lists every reason at once.
    let mut args = base.to_vec();
    let other = v.join("snp/virtee-sev/vcek_milan.der");
    args[4] = p(&other);
    args.push("--json");
    let o = run(&args);
    assert_eq!(code(&o), 1);
    let kinds: Vec<String> = json(&o)["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["debug", "signature", "tcb_mismatch", "chip_id"]);
}

#[test]
fn a_report_data_or_vmpl_or_key_kind_mismatch_exits_1() {
    let d = common::sev_certs_data();
    let (report, vcek) = (d.join("report_milan.hex"), d.join("vcek_milan.der"));
    let base = [
        "verify",
        "--report",
        p(&report),
        "--vcek",
        p(&vcek),
        "--now",
        NOW,
    ];
    let mut a = base.to_vec();
    let zeros = "00".repeat(64);
    a.extend(["--report-data", &zeros, "--vmpl", "1"]);
    let o = run(&a);
    assert_eq!(code(&o), 1);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("REPORT_DATA") && out.contains("VMPL"), "{out}");
    let mut a = base.to_vec();
    a[3] = "--vlek";
    let o = run(&a);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("SIGNING_KEY"));
}

#[test]
fn unreadable_inputs_exit_2() {
    let d = common::sev_certs_data();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a report").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "allow_debugg = true\n").unwrap();
    let report = d.join("report_milan.hex");
    let vcek = d.join("vcek_milan.der");
    for args in [
        vec![
            "verify",
            "--report",
            "/nonexistent/report",
            "--vcek",
            p(&vcek),
        ],
        vec!["verify", "--report", p(&junk), "--vcek", p(&vcek)],
        vec![
            "verify",
            "--report",
            p(&report),
            "--vcek",
            p(&vcek),
            "--policy",
            p(&policy),
        ],
        vec![
            "verify",
            "--report",
            p(&report),
            "--vcek",
            p(&vcek),
            "--now",
            "yesterday",
        ],
        vec![
            "verify",
            "--report",
            p(&report),
            "--vcek",
            p(&vcek),
            "--report-data",
            "abc",
        ],
        vec!["verify", "--evidence", p(&junk)],
        vec!["verify", "--report", p(&report)],
        vec!["verify"],
    ] {
        let o = run(&args);
        assert_eq!(
            code(&o),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = run(&["verify", "--evidence", "/nonexistent", "--json"]);
    assert_eq!(code(&o), 2);
    assert_eq!(json(&o)["verdict"], "error");
}

#[test]
fn tdx_quotes_exit_0_and_1() {
    let s = common::dcap_samples();
    let o = run(&[
        "verify",
        "--tdx-quote",
        p(&s.join("tdx_quote")),
        "--collateral",
        p(&s.join("tdx_quote_collateral.json")),
        "--now",
        NOW,
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let j = json(&o);
    assert_eq!(j["platform"], "tdx");
    assert_eq!(j["tcb"]["status"], "UpToDate");
    // After the collateral's next update: rejected.
    let o = run(&[
        "verify",
        "--tdx-quote",
        p(&s.join("tdx_quote")),
        "--collateral",
        p(&s.join("tdx_quote_collateral.json")),
        "--now",
        "2025-08-01T00:00:00Z",
    ]);
    assert_eq!(code(&o), 1);
    if let Some(v) = common::vectors("cli trustee") {
        let q = v.join("tdx/trustee/tdx_quote_4.dat");
        assert_eq!(
            code(&run(&["verify", "--tdx-quote", p(&q), "--now", NOW])),
            1
        );
        assert_eq!(
            code(&run(&[
                "verify",
                "--tdx-quote",
                p(&q),
                "--now",
                NOW,
                "--allow-debug"
            ])),
            0
        );
        // A collateral directory is accepted too.
        let o = run(&[
            "verify",
            "--tdx-quote",
            p(&v.join("tdx/dcap-qvl/tdx_quote")),
            "--collateral",
            p(&v.join("tdx/dcap-qvl")),
            "--now",
            NOW,
        ]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    }
}

#[test]
fn emulated_keygen_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = run(&["emulated-keygen", "--out", p(&keys)]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "emulated-ark.pk8",
        "emulated-ark.pub",
        "emulated-ark.pub.hex",
    ] {
        assert!(keys.join(f).is_file(), "{f}");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("emulated-ark.pk8"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }
    // Refuses to overwrite a key.
    assert_eq!(code(&run(&["emulated-keygen", "--out", p(&keys)])), 2);
    let ev = dir.path().join("evidence.bin");
    let rd = "ab".repeat(64);
    let o = run(&[
        "emulated-sign",
        "--key",
        p(&keys.join("emulated-ark.pk8")),
        "--report-data",
        &rd,
        "--out",
        p(&ev),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let public = keys.join("emulated-ark.pub.hex");
    let verify = |extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--evidence",
            p(&ev),
            "--emulated-ark",
            p(&public),
            "--json",
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let o = verify(&[]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["reasons"][0]["kind"], "platform");
    assert_eq!(json(&o)["emulated"], true);
    let o = verify(&["--allow-emulated", "--report-data", &rd]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let j = json(&o);
    assert_eq!(j["platform"], "emulated");
    assert_eq!(j["emulated"], true);
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "allow_emulated = true\nplatforms = [\"emulated\"]\n",
    )
    .unwrap();
    assert_eq!(code(&verify(&["--policy", p(&policy)])), 0);
    let zeros = "00".repeat(64);
    assert_eq!(
        code(&verify(&["--allow-emulated", "--report-data", &zeros])),
        1
    );
}

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

#[test]
fn v5_quotes_and_trailing_bytes_exit_0() {
    let s = common::dcap_samples();
    let o = run(&[
        "verify",
        "--tdx-quote",
        p(&s.join("tdx_quote_td15ex")),
        "--collateral",
        p(&s.join("tdx_quote_td15ex_collateral.json")),
        "--now",
        "2026-10-20T00:00:00Z",
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let j = json(&o);
    assert_eq!(j["tcb"]["quote_version"], 5);
    assert_eq!(j["tcb"]["body_type"], "td15_ex");
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("quote");
    let mut b = common::read(s.join("tdx_quote"));
    b.extend_from_slice(b"unsigned bytes");
    std::fs::write(&q, b).unwrap();
    let o = run(&["verify", "--tdx-quote", p(&q), "--now", NOW]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("trailing bytes: 84"), "{text}");
}

#[test]
fn every_policy_option_is_reachable_with_set() {
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
        "--json",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        run(&a)
    };
    let o = with(&["--set", "snp.guest_policy.smt=\"forbidden\""]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["reasons"][0]["kind"], "guest_policy");
    let o = with(&[
        "--set",
        "snp.guest_policy.smt = \"required\"",
        "--set",
        "snp.minimum_version=\"1.52\"",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    // A setting over a policy file overrides it.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "[snp]\nminimum_build = 9\n").unwrap();
    assert_eq!(code(&with(&["--policy", p(&policy)])), 1);
    assert_eq!(
        code(&with(&[
            "--policy",
            p(&policy),
            "--set",
            "snp.minimum_build=4"
        ])),
        0
    );
    // Typos and bad values are unreadable input.
    for bad in ["snp.guest_policy.smtt=\"required\"", "nonsense", "vmpl=9"] {
        let o = with(&["--set", bad]);
        assert_eq!(code(&o), 2, "{bad}");
    }
}

#[test]
fn crl_flags_take_real_intel_crls_and_constructed_amd_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = common::dcap_samples();
    let c: serde_json::Value =
        serde_json::from_slice(&common::read(s.join("tdx_quote_collateral.json"))).unwrap();
    for k in ["root_ca_crl", "pck_crl"] {
        std::fs::write(
            dir.path().join(k),
            hex::decode(c[k].as_str().unwrap()).unwrap(),
        )
        .unwrap();
    }
    let o = run(&[
        "verify",
        "--tdx-quote",
        p(&s.join("tdx_quote")),
        "--root-ca-crl",
        p(&dir.path().join("root_ca_crl")),
        "--pck-crl",
        p(&dir.path().join("pck_crl")),
        "--now",
        NOW,
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    // The PCK CRL given as the root CA CRL: issued by the wrong CA.
    let o = run(&[
        "verify",
        "--tdx-quote",
        p(&s.join("tdx_quote")),
        "--root-ca-crl",
        p(&dir.path().join("pck_crl")),
        "--now",
        NOW,
        "--json",
    ]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["reasons"][0]["kind"], "revocation");
    assert_eq!(
        code(&run(&[
            "verify",
            "--tdx-quote",
            p(&s.join("tdx_quote")),
            "--pck-crl",
            p(&s.join("tdx_quote")),
        ])),
        2,
        "not a CRL"
    );
    // CONSTRUCTED: the virtee report re-signed by the test VCEK, under the test roots.
    let ev = common::testpki::resign_snp(&common::virtee_from_sev_crate().report);
    let (report, vcek) = (dir.path().join("report.bin"), dir.path().join("vcek.der"));
    std::fs::write(&report, &ev.report).unwrap();
    std::fs::write(&vcek, &ev.endorsement).unwrap();
    let pki = common::testpki::dir().join("amd");
    let roots = dir.path().join("roots.pem");
    std::fs::write(
        &roots,
        [
            common::read(pki.join("ark.pem")),
            common::read(pki.join("ask.pem")),
        ]
        .concat(),
    )
    .unwrap();
    let amd = |crl: &str| {
        run(&[
            "verify",
            "--report",
            p(&report),
            "--vcek",
            p(&vcek),
            "--amd-roots",
            p(&roots),
            "--amd-crl",
            p(&pki.join(crl)),
            "--now",
            "2027-01-01T00:00:00Z",
            "--json",
        ])
    };
    let o = amd("crl.der");
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let o = amd("crl-ask-revoked.der");
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["reasons"][0]["kind"], "revocation");
}

#[test]
fn ear_keygen_and_a_signed_ear_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let d = common::sev_certs_data();
    for alg in ["ed25519", "es256"] {
        let keys = dir.path().join(alg);
        let o = run(&["ear-keygen", "--alg", alg, "--out", p(&keys)]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.join("ear-key.pk8"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others");
        }
        assert_eq!(
            code(&run(&["ear-keygen", "--alg", alg, "--out", p(&keys)])),
            2,
            "refuses to overwrite"
        );
        let ear = keys.join("ear.jwt");
        let o = run(&[
            "verify",
            "--report",
            p(&d.join("report_milan.hex")),
            "--vcek",
            p(&d.join("vcek_milan.der")),
            "--now",
            NOW,
            "--ear-key",
            p(&keys.join("ear-key.pk8")),
            "--ear-out",
            p(&ear),
        ]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
        let jwk: serde_json::Value =
            serde_json::from_slice(&common::read(keys.join("ear-key.jwk"))).unwrap();
        let jwt = String::from_utf8(common::read(&ear)).unwrap();
        let claims = swiotlb_attest::ear::verify_jwt(jwt.trim(), &jwk).unwrap();
        assert_eq!(claims["submods"]["snp"]["ear.status"], "affirming");
        assert_eq!(claims["iat"], 1_751_328_000);
    }
    // Without a key, the EAR is JSON; a rejection is contraindicated.
    let ear = dir.path().join("ear.json");
    let o = run(&[
        "verify",
        "--report",
        p(&d.join("report_milan.hex")),
        "--vcek",
        p(&d.join("vcek_milan.der")),
        "--now",
        NOW,
        "--vmpl",
        "1",
        "--ear-out",
        p(&ear),
    ]);
    assert_eq!(code(&o), 1);
    let claims: serde_json::Value = serde_json::from_slice(&common::read(&ear)).unwrap();
    assert_eq!(claims["submods"]["snp"]["ear.status"], "contraindicated");
}

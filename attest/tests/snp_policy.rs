//! Every SEV-SNP policy option, each way: on the real virtee Milan report (the `sev` crate's,
//! so always there) where the report's own values can pass and fail the option, and on
//! CONSTRUCTED reports (the real report with a field changed, re-signed by the TEST-ONLY
//! chain of `tests/data/test-pki`) where no real report has the value (an ID block, a v3
//! CPUID, provisional firmware).
//!
//! The virtee report: version 2, POLICY 0x30000 (ABI 0.0, SMT, no debug), PLATFORM_INFO 0x1
//! (SMT_EN), GUEST_SVN 0, every TCB bootloader 3 / tee 0 / snp 8 / microcode 0x73, firmware
//! 1.52 build 4 both current and committed, no ID block, FAMILY_ID and IMAGE_ID zero.

mod common;

use common::testpki::{self, TEST_NOW};
use common::NOW;
use swiotlb_attest::snp::report::Report;
use swiotlb_attest::{Evidence, Policy, ReasonKind, Verdict, Verifier};

fn real() -> Evidence {
    common::virtee_from_sev_crate().evidence(false)
}

fn report() -> Report {
    Report::parse(&real().report).unwrap()
}

/// The policy read from `toml` (the `[snp]` table and friends).
fn policy(toml: &str) -> Policy {
    Policy::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e:?}"))
}

fn verify_real(toml: &str) -> Verdict {
    Verifier::new(policy(toml))
        .at_time(NOW)
        .verify_evidence(&real(), None)
}

/// CONSTRUCTED: the real report changed by `edit`, re-signed by the test VCEK.
fn verify_constructed(toml: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Verdict {
    let mut r = real().report;
    edit(&mut r);
    Verifier::new(policy(toml))
        .with_amd_roots(testpki::amd_roots())
        .at_time(TEST_NOW)
        .verify_evidence(&testpki::resign_snp(&r), None)
}

/// Accepted, or rejected with exactly `kinds`.
fn expect(v: &Verdict, kinds: &[ReasonKind], what: &str) {
    let got: Vec<_> = v.reasons.iter().map(|r| r.kind).collect();
    assert_eq!(got, kinds, "{what}: {:?}", v.reasons);
    assert_eq!(v.accepted, kinds.is_empty(), "{what}");
}

#[test]
fn the_constructed_report_verifies_only_under_the_test_roots() {
    expect(&verify_constructed("", |_| {}), &[], "test roots");
    let v = Verifier::new(Policy::default())
        .at_time(TEST_NOW)
        .verify_evidence(&testpki::resign_snp(&real().report), None);
    assert!(v.has(ReasonKind::Chain), "{:?}", v.reasons);
}

#[test]
fn minimum_abi() {
    expect(&verify_real("[snp]\nminimum_abi = \"0.0\""), &[], "0.0");
    expect(
        &verify_real("[snp]\nminimum_abi = \"0.1\""),
        &[ReasonKind::GuestPolicy],
        "0.1",
    );
    // CONSTRUCTED: ABI 1.55 in the guest policy.
    let abi = |r: &mut Vec<u8>| {
        r[8] = 55;
        r[9] = 1;
    };
    expect(
        &verify_constructed("[snp]\nminimum_abi = \"1.55\"", abi),
        &[],
        "1.55",
    );
    expect(
        &verify_constructed("[snp]\nminimum_abi = \"1.56\"", abi),
        &[ReasonKind::GuestPolicy],
        "1.56",
    );
}

#[test]
fn guest_policy_bits_each_way() {
    // SMT (bit 16) is set in the real report; every other rule's bit is clear.
    let set = ["smt"];
    let clear = [
        "migrate_ma",
        "single_socket",
        "cxl_allowed",
        "mem_aes_256_xts",
        "rapl_disabled",
        "ciphertext_hiding",
        "page_swap_disabled",
    ];
    for name in set.iter().chain(&clear) {
        let is_set = set.contains(name);
        for (rule, ok) in [
            ("required", is_set),
            ("forbidden", !is_set),
            ("allowed", true),
        ] {
            let v = verify_real(&format!("[snp.guest_policy]\n{name} = \"{rule}\""));
            let kinds: &[ReasonKind] = if ok { &[] } else { &[ReasonKind::GuestPolicy] };
            expect(&v, kinds, &format!("{name} {rule}"));
        }
    }
    // CONSTRUCTED: the bits the real report lacks, set (SINGLE_SOCKET 20 .. PAGE_SWAP 25,
    // MIGRATE_MA 18), so "required" passes and "forbidden" fails for each.
    for (name, bit) in [
        ("migrate_ma", 18u32),
        ("single_socket", 20),
        ("cxl_allowed", 21),
        ("mem_aes_256_xts", 22),
        ("rapl_disabled", 23),
        ("ciphertext_hiding", 24),
        ("page_swap_disabled", 25),
    ] {
        let set_bit = |r: &mut Vec<u8>| {
            let p = u64::from_le_bytes(r[8..16].try_into().unwrap()) | 1 << bit;
            r[8..16].copy_from_slice(&p.to_le_bytes());
        };
        let v = verify_constructed(
            &format!("[snp.guest_policy]\n{name} = \"required\""),
            set_bit,
        );
        expect(&v, &[], &format!("{name} required, set"));
        let v = verify_constructed(
            &format!("[snp.guest_policy]\n{name} = \"forbidden\""),
            set_bit,
        );
        expect(
            &v,
            &[ReasonKind::GuestPolicy],
            &format!("{name} forbidden, set"),
        );
    }
}

#[test]
fn debug_is_allow_debug_on_the_real_go_sev_guest_report() {
    let Some(dir) = common::vectors("debug_is_allow_debug") else {
        return;
    };
    let c = common::gsg(&dir);
    let ev = c.evidence(true);
    for (allow, kinds) in [(false, &[ReasonKind::Debug][..]), (true, &[])] {
        let v = Verifier::new(Policy {
            allow_debug: allow,
            ..Policy::default()
        })
        .at_time(NOW)
        .verify_evidence(&ev, None);
        expect(&v, kinds, "allow_debug");
    }
}

#[test]
fn platform_info_bits_each_way() {
    let set = ["smt_enabled"];
    let clear = [
        "tsme_enabled",
        "ecc_enabled",
        "rapl_disabled",
        "ciphertext_hiding_enabled",
        "alias_check_complete",
        "tio_enabled",
    ];
    for name in set.iter().chain(&clear) {
        let is_set = set.contains(name);
        for (rule, ok) in [
            ("required", is_set),
            ("forbidden", !is_set),
            ("allowed", true),
        ] {
            let v = verify_real(&format!("[snp.platform_info]\n{name} = \"{rule}\""));
            let kinds: &[ReasonKind] = if ok { &[] } else { &[ReasonKind::PlatformInfo] };
            expect(&v, kinds, &format!("{name} {rule}"));
        }
    }
    // CONSTRUCTED: every PLATFORM_INFO bit set.
    let all = |r: &mut Vec<u8>| r[0x40] = 0xbf;
    let toml = format!(
        "[snp.platform_info]\n{}",
        set.iter()
            .chain(&clear)
            .map(|n| format!("{n} = \"required\"\n"))
            .collect::<String>()
    );
    expect(
        &verify_constructed(&toml, all),
        &[],
        "all required, all set",
    );
}

#[test]
fn tcb_and_firmware_minimums() {
    let tcb = |table: &str, snp: u8| {
        format!("[snp.{table}]\nbootloader = 3\ntee = 0\nsnp = {snp}\nmicrocode = 115\n")
    };
    for table in [
        "minimum_current_tcb",
        "minimum_committed_tcb",
        "minimum_launch_tcb",
    ] {
        expect(&verify_real(&tcb(table, 8)), &[], table);
        let v = verify_real(&tcb(table, 9));
        expect(&v, &[ReasonKind::MinimumTcb], table);
        let field = table
            .trim_start_matches("minimum_")
            .trim_end_matches("_tcb")
            .to_uppercase();
        assert!(
            v.reasons[0].message.starts_with(&format!("{field}_TCB")),
            "{}",
            v.reasons[0]
        );
    }
    expect(&verify_real("[snp]\nminimum_build = 4"), &[], "build 4");
    // Both CURRENT and COMMITTED are below.
    expect(
        &verify_real("[snp]\nminimum_build = 5"),
        &[ReasonKind::MinimumTcb, ReasonKind::MinimumTcb],
        "build 5",
    );
    expect(
        &verify_real("[snp]\nminimum_version = \"1.52\""),
        &[],
        "1.52",
    );
    expect(
        &verify_real("[snp]\nminimum_version = \"1.53\""),
        &[ReasonKind::MinimumTcb, ReasonKind::MinimumTcb],
        "1.53",
    );
    expect(&verify_real("[snp]\nminimum_guest_svn = 0"), &[], "svn 0");
    expect(
        &verify_real("[snp]\nminimum_guest_svn = 1"),
        &[ReasonKind::MinimumTcb],
        "svn 1",
    );
    // CONSTRUCTED: GUEST_SVN 7.
    let svn = |r: &mut Vec<u8>| r[4] = 7;
    expect(
        &verify_constructed("[snp]\nminimum_guest_svn = 7", svn),
        &[],
        "svn 7",
    );
}

#[test]
fn a_reported_tcb_above_the_current_one_is_always_refused_constructed() {
    // CURRENT_TCB's SNP level one below REPORTED_TCB's (which the VCEK certifies).
    let v = verify_constructed("", |r| r[0x38 + 6] = 7);
    expect(&v, &[ReasonKind::TcbMismatch], "reported above current");
    // Below is the host's choice (a fleet-wide floor): fine.
    let v = verify_constructed("", |r| r[0x38 + 6] = 9);
    expect(&v, &[], "reported below current");
}

#[test]
fn provisional_firmware() {
    // The real report's committed firmware is its current one.
    for permit in ["false", "true"] {
        let v = verify_real(&format!("[snp]\npermit_provisional_firmware = {permit}"));
        expect(&v, &[], permit);
    }
    // CONSTRUCTED: COMMITTED_TCB one SNP level below CURRENT, then one above; committed
    // build one below.
    let committed_snp = |snp: u8| {
        move |r: &mut Vec<u8>| {
            r[0x1E0 + 6] = snp;
        }
    };
    let strict = "[snp]\npermit_provisional_firmware = false";
    let permit = "[snp]\npermit_provisional_firmware = true";
    expect(
        &verify_constructed(strict, committed_snp(7)),
        &[ReasonKind::ProvisionalFirmware],
        "strict, below",
    );
    expect(
        &verify_constructed(permit, committed_snp(7)),
        &[],
        "permit, below",
    );
    expect(
        &verify_constructed(permit, committed_snp(9)),
        &[ReasonKind::ProvisionalFirmware],
        "permit, above",
    );
    let committed_build = |r: &mut Vec<u8>| r[0x1EC] = 3;
    expect(
        &verify_constructed(strict, committed_build),
        &[ReasonKind::ProvisionalFirmware],
        "strict, build below",
    );
    expect(
        &verify_constructed(permit, committed_build),
        &[],
        "permit, build below",
    );
    // Unset: not checked.
    expect(&verify_constructed("", committed_snp(9)), &[], "unset");
}

#[test]
fn id_block_and_author_key() {
    let id = "ab".repeat(48);
    let author = "cd".repeat(48);
    let other = "ef".repeat(48);
    let trust_id = format!("[snp]\ntrusted_id_key_digests = [\"{id}\"]");
    // The real report has no ID block.
    expect(
        &verify_real(&trust_id),
        &[ReasonKind::IdBlock],
        "real, no ID block",
    );
    expect(&verify_real(""), &[], "unset");
    // CONSTRUCTED: an ID block with ID_KEY_DIGEST 0xab..; then an author key 0xcd.. too.
    let with_id = |r: &mut Vec<u8>| r[0xE0..0x110].fill(0xab);
    let with_author = |r: &mut Vec<u8>| {
        r[0xE0..0x110].fill(0xab);
        r[0x110..0x140].fill(0xcd);
        r[0x48] |= 1; // AUTHOR_KEY_EN
    };
    expect(
        &verify_constructed(&trust_id, with_id),
        &[],
        "trusted ID key",
    );
    expect(
        &verify_constructed(
            &format!("[snp]\ntrusted_id_key_digests = [\"{other}\"]"),
            with_id,
        ),
        &[ReasonKind::IdBlock],
        "untrusted ID key",
    );
    expect(
        &verify_constructed(
            &format!("[snp]\nrequire_id_block = true\ntrusted_id_key_digests = [\"{id}\"]"),
            with_id,
        ),
        &[],
        "required and trusted",
    );
    let require_author =
        format!("[snp]\nrequire_author_key = true\ntrusted_author_key_digests = [\"{author}\"]");
    expect(
        &verify_constructed(&require_author, with_author),
        &[],
        "trusted author",
    );
    expect(
        &verify_constructed(&require_author, with_id),
        &[ReasonKind::IdBlock],
        "author key required, none",
    );
    expect(
        &verify_constructed(
            &format!(
                "[snp]\nrequire_author_key = true\ntrusted_author_key_digests = [\"{other}\"]"
            ),
            with_author,
        ),
        &[ReasonKind::IdBlock],
        "untrusted author",
    );
    // A trusted author vouches for an untrusted ID key.
    expect(
        &verify_constructed(
            &format!("[snp]\ntrusted_author_key_digests = [\"{author}\"]"),
            with_author,
        ),
        &[],
        "ID key trusted through its author",
    );
    // Requirements without trusted keys are a policy error, not a silent pass.
    for bad in [
        "[snp]\nrequire_id_block = true",
        "[snp]\nrequire_author_key = true",
    ] {
        assert!(Policy::from_toml(bad).is_err(), "{bad}");
    }
}

#[test]
fn identity_fields() {
    let r = report();
    let cases = [
        ("image_id", hex::encode(r.image_id), "11".repeat(16)),
        ("family_id", hex::encode(r.family_id), "11".repeat(16)),
        ("report_id", hex::encode(r.report_id), "11".repeat(32)),
        ("report_id_ma", hex::encode(r.report_id_ma), "11".repeat(32)),
    ];
    for (key, good, bad) in cases {
        expect(
            &verify_real(&format!("[snp]\n{key} = \"{good}\"")),
            &[],
            key,
        );
        expect(
            &verify_real(&format!("[snp]\n{key} = \"{bad}\"")),
            &[ReasonKind::Identity],
            key,
        );
    }
    let chip = hex::encode(r.chip_id);
    expect(
        &verify_real(&format!(
            "[snp]\nchip_ids = [\"{}\", \"{chip}\"]",
            "00".repeat(64)
        )),
        &[],
        "chip",
    );
    expect(
        &verify_real(&format!("[snp]\nchip_ids = [\"{}\"]", "00".repeat(64))),
        &[ReasonKind::Identity],
        "chip",
    );
    // CONSTRUCTED: an IMAGE_ID and FAMILY_ID set at launch.
    let ids = |r: &mut Vec<u8>| {
        r[0x10..0x20].fill(0x22);
        r[0x20..0x30].fill(0x33);
    };
    let toml = format!(
        "[snp]\nfamily_id = \"{}\"\nimage_id = \"{}\"",
        "22".repeat(16),
        "33".repeat(16)
    );
    expect(&verify_constructed(&toml, ids), &[], "ids");
}

#[test]
fn cpuid_of_version_3_reports() {
    let toml = "[snp.cpuid]\nfamily = 0x19\nmodel = 0x01\nstepping = 1";
    // The real report is version 2: it carries no CPUID.
    expect(&verify_real(toml), &[ReasonKind::Cpuid], "v2");
    // CONSTRUCTED: the report as version 3 with Milan's CPUID (family 19h, model 01h,
    // stepping 1).
    let v3 = |r: &mut Vec<u8>| {
        r[0] = 3;
        r[0x188..0x18B].copy_from_slice(&[0x19, 0x01, 0x01]);
    };
    expect(&verify_constructed(toml, v3), &[], "v3 Milan");
    expect(
        &verify_constructed("[snp.cpuid]\nmodel = 0x02\nstepping = 0", v3),
        &[ReasonKind::Cpuid, ReasonKind::Cpuid],
        "v3 model and stepping",
    );
    expect(
        &verify_constructed("[snp.cpuid]\nfamily = 0x19", v3),
        &[],
        "family only",
    );
}

#[test]
fn every_snp_mismatch_is_reported_at_once() {
    let toml = format!(
        r#"
vmpl = 1
[snp]
minimum_abi = "1.0"
minimum_guest_svn = 1
minimum_build = 9
trusted_id_key_digests = ["{k}"]
image_id = "{i}"
[snp.guest_policy]
smt = "forbidden"
[snp.platform_info]
ecc_enabled = "required"
[snp.minimum_launch_tcb]
bootloader = 4
tee = 0
snp = 8
microcode = 115
[snp.cpuid]
family = 0x19
"#,
        k = "ab".repeat(48),
        i = "11".repeat(16)
    );
    let v = verify_real(&toml);
    let kinds: Vec<_> = v.reasons.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ReasonKind::Vmpl,
            ReasonKind::GuestPolicy,
            ReasonKind::GuestPolicy,
            ReasonKind::PlatformInfo,
            ReasonKind::MinimumTcb,
            ReasonKind::MinimumTcb,
            ReasonKind::MinimumTcb,
            ReasonKind::MinimumTcb,
            ReasonKind::IdBlock,
            ReasonKind::Identity,
            ReasonKind::Cpuid,
        ],
        "{:#?}",
        v.reasons
    );
}

#[test]
fn snp_options_apply_to_emulated_reports_too() {
    let signer = swiotlb_attest::emulated::Signer::generate().unwrap();
    let ev = signer
        .sign_report(&[1; 64], &[2; 48], &Default::default())
        .unwrap();
    let p = policy("allow_emulated = true\n[snp.guest_policy]\nsmt = \"forbidden\"");
    let v = Verifier::new(p)
        .with_emulated(signer.verifier())
        .verify_evidence(&ev, None);
    expect(&v, &[ReasonKind::GuestPolicy], "emulated SMT");
}

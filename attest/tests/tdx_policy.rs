//! Every TDX policy option, each way: on real quotes (dcap-qvl's v4 sample and its v5
//! type 3 and type 4 samples, trustee's debug TD) where their own values pass and fail
//! the option, and on CONSTRUCTED quotes (a real quote with a field changed, re-signed by
//! the TEST-ONLY chain of `tests/data/test-pki`) and constructed collateral where no real
//! evidence has the value (reserved attribute bits, a TCB status other than UpToDate).

mod common;

use common::testpki::{self, TEST_NOW};
use common::NOW;
use swiotlb_attest::tdx::quote::Quote;
use swiotlb_attest::verdict::TcbInfo;
use swiotlb_attest::{Evidence, PlatformKind, Policy, ReasonKind, Verdict, Verifier};

/// 2026-03-01: inside the PCK validity of the v5 type 3 sample.
const OUTDATED_NOW: u64 = 1_772_323_200;
/// 2026-10-20: inside the collateral window of the v5 type 4 sample.
const TD15EX_NOW: u64 = 1_792_454_400;

fn ev(quote: &[u8]) -> Evidence {
    Evidence {
        platform: PlatformKind::Tdx,
        report: quote.to_vec(),
        endorsement: Vec::new(),
        chain: Vec::new(),
    }
}

fn sample(name: &str) -> Vec<u8> {
    common::read(common::dcap_samples().join(name))
}

fn policy(toml: &str) -> Policy {
    Policy::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e:?}"))
}

/// The v4 sample (TDATTRIBUTES 0x10000000: SEPT_VE_DISABLE only).
fn v4(toml: &str) -> Verdict {
    Verifier::new(policy(toml))
        .at_time(NOW)
        .verify_evidence(&ev(&sample("tdx_quote")), None)
}

/// The v5 type 3 sample.
fn v5(toml: &str) -> Verdict {
    Verifier::new(policy(toml))
        .at_time(OUTDATED_NOW)
        .verify_evidence(&ev(&sample("tdx_quote_outdated")), None)
}

/// The v5 type 4 sample (with a non-zero MRCONFIGID).
fn v5ex(toml: &str) -> Verdict {
    Verifier::new(policy(toml))
        .at_time(TD15EX_NOW)
        .verify_evidence(&ev(&sample("tdx_quote_td15ex")), None)
}

/// CONSTRUCTED: the v4 sample with its signed part changed by `edit`, re-signed.
fn constructed(toml: &str, edit: impl FnOnce(&mut [u8])) -> Verdict {
    Verifier::new(policy(toml))
        .with_intel_root(testpki::intel_root())
        .at_time(TEST_NOW)
        .verify_evidence(&ev(&testpki::resign_tdx(&sample("tdx_quote"), edit)), None)
}

fn expect(v: &Verdict, kinds: &[ReasonKind], what: &str) {
    let got: Vec<_> = v.reasons.iter().map(|r| r.kind).collect();
    assert_eq!(got, kinds, "{what}: {:?}", v.reasons);
    assert_eq!(v.accepted, kinds.is_empty(), "{what}");
}

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

#[test]
fn mrseam_and_mrsignerseam() {
    let q = Quote::parse(&sample("tdx_quote")).unwrap();
    let seam = h(&q.body.mr_seam);
    let other = "11".repeat(48);
    expect(
        &v4(&format!("[tdx]\nmr_seams = [\"{other}\", \"{seam}\"]")),
        &[],
        "seam",
    );
    expect(
        &v4(&format!("[tdx]\nmr_seams = [\"{other}\"]")),
        &[ReasonKind::Seam],
        "other seam",
    );
    expect(
        &v4(&format!("[tdx]\nmr_signer_seam = \"{}\"", "00".repeat(48))),
        &[],
        "Intel's module: zero signer",
    );
    expect(
        &v4(&format!("[tdx]\nmr_signer_seam = \"{other}\"")),
        &[ReasonKind::Seam],
        "signer",
    );
}

#[test]
fn td_attributes_exact_and_bit_by_bit() {
    expect(&v4("[tdx]\ntd_attributes = \"0x10000000\""), &[], "exact");
    expect(
        &v4("[tdx]\ntd_attributes = \"0x50000000\""),
        &[ReasonKind::TdAttributes],
        "exact, other",
    );
    // SEPT_VE_DISABLE (28) is set in the sample; every other named bit is clear.
    let all = [
        "hgs_plus_prof",
        "perf_prof",
        "pmt_prof",
        "icssd",
        "servtd_ext",
        "lass",
        "sept_ve_disable",
        "migratable",
        "pks",
        "kl",
        "tpa",
        "perfmon",
    ];
    for name in all {
        let is_set = name == "sept_ve_disable";
        for (rule, ok) in [
            ("required", is_set),
            ("forbidden", !is_set),
            ("allowed", true),
        ] {
            let kinds: &[ReasonKind] = if ok { &[] } else { &[ReasonKind::TdAttributes] };
            expect(
                &v4(&format!("[tdx.attributes]\n{name} = \"{rule}\"")),
                kinds,
                &format!("{name} {rule}"),
            );
        }
    }
    // CONSTRUCTED: PKS (30), KL (31) and PERFMON (63) set, so "required" passes.
    let set = |b: &mut [u8]| {
        let off = 48 + 120;
        let a =
            u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) | 1 << 30 | 1 << 31 | 1 << 63;
        b[off..off + 8].copy_from_slice(&a.to_le_bytes());
    };
    expect(
        &constructed(
            "[tdx.attributes]\npks = \"required\"\nkl = \"required\"\nperfmon = \"required\"",
            set,
        ),
        &[],
        "pks kl perfmon required, set",
    );
    expect(
        &constructed("[tdx]\ntd_attributes = \"0xd0000000d0000000\"", set),
        &[ReasonKind::TdAttributes],
        "hex with bit 63",
    );
}

#[test]
fn debug_is_allow_debug_on_trustees_real_debug_td() {
    let Some(dir) = common::vectors("debug_is_allow_debug") else {
        return;
    };
    let q = common::read(dir.join("tdx/trustee/tdx_quote_4.dat"));
    for (toml, kinds) in [("", &[ReasonKind::Debug][..]), ("allow_debug = true", &[])] {
        let v = Verifier::new(policy(toml))
            .at_time(NOW)
            .verify_evidence(&ev(&q), None);
        expect(&v, kinds, toml);
    }
}

#[test]
fn reserved_attribute_bits_are_always_refused_constructed() {
    for bit in [1u32, 7, 24, 40] {
        let v = constructed("", |b| {
            let off = 48 + 120;
            let a = u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) | 1 << bit;
            b[off..off + 8].copy_from_slice(&a.to_le_bytes());
        });
        expect(&v, &[ReasonKind::TdAttributes], &format!("bit {bit}"));
        assert!(
            v.reasons[0].message.contains("reserves"),
            "{}",
            v.reasons[0]
        );
    }
}

#[test]
fn xfam() {
    expect(&v4("[tdx]\nxfam = \"0x602e7\""), &[], "xfam");
    expect(
        &v4("[tdx]\nxfam = \"0x602e3\""),
        &[ReasonKind::Xfam],
        "xfam other",
    );
    expect(&v5("[tdx]\nxfam = \"0x00000000000618e7\""), &[], "v5 xfam");
}

#[test]
fn owner_registers() {
    let q = Quote::parse(&sample("tdx_quote_td15ex")).unwrap();
    let config = h(&q.body.mr_config_id);
    assert_ne!(
        q.body.mr_config_id, [0; 48],
        "the type 4 sample has an MRCONFIGID"
    );
    let zero = "00".repeat(48);
    let other = "11".repeat(48);
    expect(
        &v5ex(&format!("[tdx]\nmr_config_id = \"{config}\"")),
        &[],
        "config",
    );
    expect(
        &v5ex(&format!("[tdx]\nmr_config_id = \"{zero}\"")),
        &[ReasonKind::TdConfig],
        "config zero",
    );
    for key in ["mr_owner", "mr_owner_config"] {
        expect(&v4(&format!("[tdx]\n{key} = \"{zero}\"")), &[], key);
        expect(
            &v4(&format!("[tdx]\n{key} = \"{other}\"")),
            &[ReasonKind::TdConfig],
            key,
        );
    }
}

#[test]
fn mrservicetd_needs_a_tdx_1_5_body() {
    let zero = "00".repeat(48);
    expect(
        &v5(&format!("[tdx]\nmr_service_td = \"{zero}\"")),
        &[],
        "v5 zero",
    );
    expect(
        &v5(&format!("[tdx]\nmr_service_td = \"{}\"", "11".repeat(48))),
        &[ReasonKind::ServiceTd],
        "v5 other",
    );
    expect(
        &v4(&format!("[tdx]\nmr_service_td = \"{zero}\"")),
        &[ReasonKind::ServiceTd],
        "v4 has none",
    );
}

#[test]
fn tee_tcb_svns() {
    // v4 sample TEE_TCB_SVN 06 01 03 00..; v5 type 3: 07 01 03 00.., TEE_TCB_SVN2 0d 01 03.
    let svn = |b: &[u8]| format!("{:0<32}", h(b));
    expect(
        &v4(&format!(
            "[tdx]\nminimum_tee_tcb_svn = \"{}\"",
            svn(&[6, 1, 3])
        )),
        &[],
        "equal",
    );
    expect(
        &v4(&format!(
            "[tdx]\nminimum_tee_tcb_svn = \"{}\"",
            svn(&[6, 2, 0])
        )),
        &[ReasonKind::MinimumTcb],
        "byte 1 below",
    );
    expect(
        &v5(&format!(
            "[tdx]\nminimum_tee_tcb_svn2 = \"{}\"",
            svn(&[13, 1, 3])
        )),
        &[],
        "svn2 equal",
    );
    expect(
        &v5(&format!("[tdx]\nminimum_tee_tcb_svn2 = \"{}\"", svn(&[14]))),
        &[ReasonKind::MinimumTcb],
        "svn2 below",
    );
    expect(
        &v4(&format!("[tdx]\nminimum_tee_tcb_svn2 = \"{}\"", svn(&[1]))),
        &[ReasonKind::MinimumTcb],
        "v4 has no svn2",
    );
}

#[test]
fn qe_and_pce_svns_are_the_signed_ones() {
    let v = v4("");
    let Some(TcbInfo::Tdx {
        qe_svn, pce_svn, ..
    }) = v.tcb
    else {
        panic!("{:?}", v.tcb)
    };
    let pce = pce_svn.expect("the PCK certificate's PCESVN");
    assert_eq!(qe_svn, 6);
    // The header words go-tdx-guest reads are zero in the real quote.
    let q = Quote::parse(&sample("tdx_quote")).unwrap();
    assert_eq!((q.header_qe_svn, q.header_pce_svn), (0, 0));
    expect(&v4("[tdx]\nminimum_qe_svn = 6"), &[], "qe 6");
    expect(
        &v4("[tdx]\nminimum_qe_svn = 7"),
        &[ReasonKind::MinimumTcb],
        "qe 7",
    );
    expect(&v4(&format!("[tdx]\nminimum_pce_svn = {pce}")), &[], "pce");
    expect(
        &v4(&format!("[tdx]\nminimum_pce_svn = {}", pce + 1)),
        &[ReasonKind::MinimumTcb],
        "pce + 1",
    );
}

#[test]
fn qe_vendor_id() {
    let intel = "939a7233f79c4ca9940a0db3957f0607";
    expect(
        &v4(&format!("[tdx]\nqe_vendor_id = \"{intel}\"")),
        &[],
        "intel",
    );
    expect(
        &v4(&format!("[tdx]\nqe_vendor_id = \"{}\"", "00".repeat(16))),
        &[ReasonKind::Identity],
        "other",
    );
}

#[test]
fn accepted_mrtds_and_rtmrs_on_a_v5_quote() {
    let q = Quote::parse(&sample("tdx_quote_outdated")).unwrap();
    let toml = format!(
        "measurements = [\"{}\", \"{}\"]\nrtmr0 = \"{}\"\nrtmr3 = \"{}\"",
        "00".repeat(48),
        h(&q.body.mr_td),
        h(&q.body.rtmrs[0]),
        h(&q.body.rtmrs[3])
    );
    expect(&v5(&toml), &[], "v5 MRTD set and RTMRs");
    expect(
        &v5(&format!(
            "measurements = [\"{}\"]\nrtmr1 = \"{}\"",
            "00".repeat(48),
            "11".repeat(48)
        )),
        &[ReasonKind::Measurement, ReasonKind::Rtmr],
        "v5 other",
    );
}

/// CONSTRUCTED collateral: every TCB level of the real TCB info given `status`, re-signed.
fn with_status(toml: &str, status: &str, advisories: &[&str]) -> Verdict {
    Verifier::new(policy(toml))
        .with_intel_root(testpki::intel_root())
        .with_tdx_collateral(testpki::tdx_collateral(
            status, advisories, "root-crl", "pck-crl",
        ))
        .at_time(TEST_NOW)
        .verify_evidence(
            &ev(&testpki::resign_tdx(&sample("tdx_quote"), |_| {})),
            None,
        )
}

#[test]
fn tcb_statuses_are_judged_by_policy_with_their_advisories_constructed() {
    for status in [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    ] {
        let advisories: &[&str] = if status == "UpToDate" {
            &[]
        } else {
            &["INTEL-SA-00001", "INTEL-SA-00002"]
        };
        let v = with_status("", status, advisories);
        let Some(TcbInfo::Tdx {
            status: got,
            advisory_ids,
            ..
        }) = &v.tcb
        else {
            panic!("{:?}", v.tcb)
        };
        assert_eq!(got.as_deref(), Some(status), "{:?}", v.reasons);
        assert_eq!(advisory_ids, advisories);
        if status == "UpToDate" {
            expect(&v, &[], status);
        } else {
            expect(&v, &[ReasonKind::Collateral], status);
            assert!(v.reasons[0].message.contains(status));
            let ok = with_status(
                &format!("tdx_tcb_statuses = [\"UpToDate\", \"{status}\"]"),
                status,
                advisories,
            );
            expect(&ok, &[], &format!("{status} accepted"));
        }
    }
    // Revoked is refused whatever the policy (and no policy may list it).
    let v = with_status("", "Revoked", &["INTEL-SA-00003"]);
    expect(&v, &[ReasonKind::Collateral], "Revoked");
    assert!(v.reasons[0].message.contains("Revoked"), "{}", v.reasons[0]);
}

#[test]
fn every_tdx_mismatch_is_reported_at_once() {
    let toml = format!(
        r#"
measurements = ["{z}"]
[tdx]
mr_seams = ["{z}"]
td_attributes = "0x0"
xfam = "0x0"
mr_owner = "{o}"
mr_service_td = "{z}"
minimum_qe_svn = 100
qe_vendor_id = "{v}"
[tdx.attributes]
pks = "required"
"#,
        z = "00".repeat(48),
        o = "11".repeat(48),
        v = "00".repeat(16)
    );
    let kinds: Vec<_> = v4(&toml).reasons.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        vec![
            ReasonKind::Measurement,
            ReasonKind::Seam,
            ReasonKind::TdAttributes,
            ReasonKind::TdAttributes,
            ReasonKind::Xfam,
            ReasonKind::TdConfig,
            ReasonKind::ServiceTd,
            ReasonKind::MinimumTcb,
            ReasonKind::Identity,
        ]
    );
}

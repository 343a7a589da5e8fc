//! Validation: what the verifier *wants* of evidence that verified, as go-sev-guest's and
//! go-tdx-guest's `validate` packages. Every option that is unset is not checked, and every
//! mismatch is reported, not just the first.
//!
//! Defaults are the safe ones: only SEV-SNP and TDX accepted, emulated evidence refused,
//! debug refused, VMPL 0 expected (SNP), TDX TCB status `UpToDate`. A policy is built in
//! code or read from TOML (`docs/attestation.md` lists every key beside the go-sev-guest and
//! go-tdx-guest option it matches):
//!
//! ```toml
//! platforms = ["snp", "tdx"]       # or with "emulated" (needs allow_emulated too)
//! allow_emulated = false
//! allow_debug = false
//! vmpl = 0                         # 0..=3, or "any"
//! measurements = ["<96 hex digits>"]  # SNP MEASUREMENT or TDX MRTD
//! report_data = "<128 hex digits>"
//! host_data = "<64 hex digits>"
//! rtmr0 = "<96 hex digits>"        # rtmr0..rtmr3, TDX
//! tdx_tcb_statuses = ["UpToDate"]  # with collateral
//! [minimum_tcb]                    # SEV-SNP REPORTED_TCB, component-wise
//! bootloader = 3
//! tee = 0
//! snp = 8
//! microcode = 115
//! [snp]                            # the rest of SEV-SNP: see `snp::SnpPolicy`
//! minimum_version = "1.55"
//! [snp.guest_policy]
//! smt = "forbidden"                # "required", "forbidden" or "allowed" (not checked)
//! [tdx]                            # the rest of TDX: see `tdx::TdxPolicy`
//! mr_seams = ["<96 hex digits>"]
//! [tdx.attributes]
//! sept_ve_disable = "required"
//! ```
//!
//! Parts: [`snp`] (SEV-SNP options), [`tdx`] (TDX options), [`hexser`] (hex in the
//! policy's JSON form, from which its digest is taken).

pub mod hexser;
pub mod snp;
pub mod tdx;

use serde::{Deserialize, Serialize};
use swiotlb_shared::transcript::PlatformKind;

use crate::snp::report::Report;
use crate::snp::tcb::Tcb;
use crate::tdx::pck::PckInfo;
use crate::tdx::quote::Quote;
use crate::verdict::{Reason, ReasonKind};

pub use snp::SnpPolicy;
pub use tdx::TdxPolicy;

/// Largest policy file read: policies are a few lines; a measurement list of a few hundred
/// entries stays far below this.
pub const MAX_POLICY_LEN: usize = 256 * 1024;

/// The TDX TCB statuses a policy may accept (Intel's TCB info v3 and dcap-qvl's names).
/// `Revoked` is not among them: dcap-qvl refuses a revoked TCB level whatever the policy.
pub const TDX_TCB_STATUSES: [&str; 8] = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
];

/// What a policy asks of one bit: that it be set, that it be clear, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitRule {
    /// The bit must be set.
    Required,
    /// The bit must be clear.
    Forbidden,
    /// Either (the same as leaving the key out).
    Allowed,
}

impl BitRule {
    /// The reason `name` (bit `bit` of `what`, value `value`) breaks this rule, if it does.
    fn check(self, what: &str, name: &str, bit: u32, value: u64) -> Option<String> {
        let set = value >> bit & 1 == 1;
        match (self, set) {
            (Self::Required, false) => Some(format!(
                "{what} bit {bit} ({name}) is clear and the policy requires it"
            )),
            (Self::Forbidden, true) => Some(format!(
                "{what} bit {bit} ({name}) is set and the policy forbids it"
            )),
            _ => None,
        }
    }
}

/// Checks every `(name, bit, rule)` against `value`, one reason per broken rule.
fn check_bits(
    kind: ReasonKind,
    what: &str,
    value: u64,
    rules: &[(&'static str, u32, Option<BitRule>)],
    out: &mut Vec<Reason>,
) {
    for &(name, bit, rule) in rules {
        if let Some(msg) = rule.and_then(|r| r.check(what, name, bit, value)) {
            out.push(Reason::new(kind, msg));
        }
    }
}

/// What the verifier requires of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Platforms accepted; `None`: SEV-SNP and TDX. The emulated platform is accepted only
    /// if this allows it *and* [`Policy::allow_emulated`] is set.
    #[serde(serialize_with = "ser_platforms")]
    pub platforms: Option<Vec<PlatformKind>>,
    /// Accept evidence from the emulated platform (CI). Never set this in production.
    pub allow_emulated: bool,
    /// Accept guests with debug on (SNP policy bit 19, TD attribute DEBUG).
    pub allow_debug: bool,
    /// The VMPL the SNP report must come from; `None`: any.
    pub vmpl: Option<u32>,
    /// Minimum SNP REPORTED_TCB, component-wise; `None`: not checked.
    pub minimum_tcb: Option<Tcb>,
    /// Allowed launch measurements (SNP MEASUREMENT, TDX MRTD); `None`: any.
    #[serde(with = "hexser::opt_vec")]
    pub measurements: Option<Vec<[u8; 48]>>,
    /// Expected REPORT_DATA; `None`: not checked (the caller may still pass the transcript
    /// hash it expects to [`Policy::validate`]).
    #[serde(with = "hexser::opt")]
    pub report_data: Option<[u8; 64]>,
    /// Expected SNP HOST_DATA; `None`: not checked.
    #[serde(with = "hexser::opt")]
    pub host_data: Option<[u8; 32]>,
    /// Expected TDX RTMR0..3; `None` entries are not checked.
    #[serde(serialize_with = "hexser::ser_rtmrs")]
    pub rtmrs: [Option<[u8; 48]>; 4],
    /// TCB statuses accepted when TDX collateral is checked.
    pub tdx_tcb_statuses: Vec<String>,
    /// The rest of SEV-SNP (and emulated) evidence.
    pub snp: SnpPolicy,
    /// The rest of TDX evidence.
    pub tdx: TdxPolicy,
}

fn ser_platforms<S: serde::Serializer>(
    p: &Option<Vec<PlatformKind>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        None => s.serialize_none(),
        Some(v) => s.collect_seq(v.iter().map(|k| k.as_str())),
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            platforms: None,
            allow_emulated: false,
            allow_debug: false,
            vmpl: Some(0),
            minimum_tcb: None,
            measurements: None,
            report_data: None,
            host_data: None,
            rtmrs: [None; 4],
            tdx_tcb_statuses: vec!["UpToDate".to_string()],
            snp: SnpPolicy::default(),
            tdx: TdxPolicy::default(),
        }
    }
}

/// Errors of reading a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, or unknown keys.
    #[error("policy is not valid TOML")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range or of the wrong length.
    #[error("policy key {key}: {detail}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Larger than [`MAX_POLICY_LEN`].
    #[error("policy is {0} bytes, larger than {MAX_POLICY_LEN}")]
    TooLarge(usize),
    /// A `KEY=VALUE` setting (the command line's `--set`) that is not one.
    #[error("setting {0:?} is not KEY=VALUE with a TOML value")]
    Setting(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VmplSetting {
    Level(u32),
    Word(String),
}

/// A TCB in a policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcbFile {
    fmc: Option<u8>,
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
}

impl From<TcbFile> for Tcb {
    fn from(t: TcbFile) -> Self {
        Tcb {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    platforms: Option<Vec<String>>,
    allow_emulated: Option<bool>,
    allow_debug: Option<bool>,
    vmpl: Option<VmplSetting>,
    minimum_tcb: Option<TcbFile>,
    measurements: Option<Vec<String>>,
    report_data: Option<String>,
    host_data: Option<String>,
    rtmr0: Option<String>,
    rtmr1: Option<String>,
    rtmr2: Option<String>,
    rtmr3: Option<String>,
    tdx_tcb_statuses: Option<Vec<String>>,
    snp: Option<snp::SnpFile>,
    tdx: Option<tdx::TdxFile>,
}

/// Decodes `N` bytes of hex (an optional `0x` prefix is allowed).
pub fn parse_hex<const N: usize>(key: &'static str, s: &str) -> Result<[u8; N], PolicyError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let v = hex::decode(t).map_err(|e| PolicyError::Value {
        key,
        detail: format!("not hex ({e})"),
    })?;
    v.try_into().map_err(|v: Vec<u8>| PolicyError::Value {
        key,
        detail: format!("{} bytes, expected {N}", v.len()),
    })
}

/// Decodes an optional hex value.
fn opt_hex<const N: usize>(
    key: &'static str,
    s: Option<String>,
) -> Result<Option<[u8; N]>, PolicyError> {
    s.map(|s| parse_hex(key, &s)).transpose()
}

/// Decodes an optional list of hex values.
fn opt_hex_list<const N: usize>(
    key: &'static str,
    s: Option<Vec<String>>,
) -> Result<Option<Vec<[u8; N]>>, PolicyError> {
    s.map(|l| l.iter().map(|s| parse_hex(key, s)).collect())
        .transpose()
}

/// Decodes a 64-bit number written as hex text ("0x10000000"), as the specifications write
/// attribute words (a TOML integer cannot hold bit 63).
fn parse_u64_hex(key: &'static str, s: &str) -> Result<u64, PolicyError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    u64::from_str_radix(t, 16).map_err(|e| PolicyError::Value {
        key,
        detail: format!("not a 64-bit hex number ({e})"),
    })
}

/// Decodes "major.minor" into its two numbers.
fn parse_version(key: &'static str, s: &str) -> Result<(u8, u8), PolicyError> {
    let bad = || PolicyError::Value {
        key,
        detail: format!("{s:?} is not major.minor, each 0 to 255"),
    };
    let (a, b) = s.trim().split_once('.').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
}

impl Policy {
    /// Reads a TOML policy. Unknown keys are errors (a typo must not disable a check);
    /// absent keys take the defaults of [`Policy::default`].
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        Self::from_toml_with(text, &[])
    }

    /// Reads a TOML policy with `settings` applied on top: each `KEY=VALUE`, where KEY is a
    /// dotted key as in the file (`snp.guest_policy.smt`, `tdx.minimum_qe_svn`) and VALUE is
    /// a TOML value (`"forbidden"`, `8`, `["ab…"]`). This is how the command line reaches
    /// every option, spelled as in the file.
    pub fn from_toml_with(text: &str, settings: &[String]) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let mut table: toml::Table = toml::from_str(text)?;
        for s in settings {
            apply_setting(&mut table, s)?;
        }
        let f: PolicyFile = toml::Value::Table(table).try_into()?;
        Self::from_file(f)
    }

    fn from_file(f: PolicyFile) -> Result<Self, PolicyError> {
        let mut p = Policy::default();
        if let Some(list) = f.platforms {
            let mut v = Vec::new();
            for name in list {
                v.push(
                    PlatformKind::from_name(&name).ok_or_else(|| PolicyError::Value {
                        key: "platforms",
                        detail: format!("unknown platform {name:?} (snp, tdx, emulated)"),
                    })?,
                );
            }
            p.platforms = Some(v);
        }
        if let Some(b) = f.allow_emulated {
            p.allow_emulated = b;
        }
        if let Some(b) = f.allow_debug {
            p.allow_debug = b;
        }
        match f.vmpl {
            None => {}
            Some(VmplSetting::Level(n)) if n <= 3 => p.vmpl = Some(n),
            Some(VmplSetting::Word(w)) if w == "any" => p.vmpl = None,
            Some(_) => {
                return Err(PolicyError::Value {
                    key: "vmpl",
                    detail: "must be 0 to 3 or \"any\"".into(),
                })
            }
        }
        p.minimum_tcb = f.minimum_tcb.map(Tcb::from);
        p.measurements = opt_hex_list("measurements", f.measurements)?;
        p.report_data = opt_hex("report_data", f.report_data)?;
        p.host_data = opt_hex("host_data", f.host_data)?;
        for (i, (key, v)) in [
            ("rtmr0", f.rtmr0),
            ("rtmr1", f.rtmr1),
            ("rtmr2", f.rtmr2),
            ("rtmr3", f.rtmr3),
        ]
        .into_iter()
        .enumerate()
        {
            p.rtmrs[i] = opt_hex(key, v)?;
        }
        if let Some(s) = f.tdx_tcb_statuses {
            for status in &s {
                if !TDX_TCB_STATUSES.contains(&status.as_str()) {
                    return Err(PolicyError::Value {
                        key: "tdx_tcb_statuses",
                        detail: format!(
                            "{status:?} is not a TCB status a policy can accept ({})",
                            TDX_TCB_STATUSES.join(", ")
                        ),
                    });
                }
            }
            p.tdx_tcb_statuses = s;
        }
        if let Some(s) = f.snp {
            p.snp = SnpPolicy::from_file(s)?;
        }
        if let Some(t) = f.tdx {
            p.tdx = TdxPolicy::from_file(t)?;
        }
        Ok(p)
    }

    /// The policy's digest: SHA-256 of its JSON form (keys in declaration order, byte
    /// strings in hex), hex. Two policies that check the same things have the same digest;
    /// verdicts and EARs name the policy by it.
    pub fn digest(&self) -> String {
        // Serializing plain data to a string cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &json))
    }

    /// Whether `platform` is allowed, with the reason when not.
    pub fn check_platform(&self, platform: PlatformKind) -> Option<Reason> {
        if platform == PlatformKind::Emulated && !self.allow_emulated {
            return Some(Reason::new(
                ReasonKind::Platform,
                "evidence is from the EMULATED platform, which the policy does not allow (allow_emulated = false)",
            ));
        }
        let allowed = match &self.platforms {
            Some(list) => list.contains(&platform),
            None => platform != PlatformKind::Emulated || self.allow_emulated,
        };
        (!allowed).then(|| {
            Reason::new(
                ReasonKind::Platform,
                format!("platform {platform} is not among the policy's platforms"),
            )
        })
    }

    /// Checks verified claims against the policy; `expected_report_data` is the transcript
    /// hash the caller computed (checked in addition to [`Policy::report_data`]). Returns
    /// every mismatch: the checks common to all platforms first, then the platform's own.
    pub fn validate(&self, c: &Claims<'_>, expected_report_data: Option<&[u8; 64]>) -> Vec<Reason> {
        let mut r = Vec::new();
        r.extend(self.check_platform(c.platform));
        if c.debug && !self.allow_debug {
            r.push(Reason::new(
                ReasonKind::Debug,
                match c.platform {
                    PlatformKind::Tdx => "TD attribute DEBUG is set and the policy forbids debug",
                    _ => "guest policy bit 19 (DEBUG) is set and the policy forbids debug",
                },
            ));
        }
        if let (Some(want), Some(got)) = (self.vmpl, c.vmpl) {
            if want != got {
                r.push(Reason::new(
                    ReasonKind::Vmpl,
                    format!("VMPL is {got}, the policy expects {want}"),
                ));
            }
        }
        if let (Some(min), Some(tcb)) = (&self.minimum_tcb, &c.tcb) {
            let low = tcb.below(min);
            if !low.is_empty() {
                r.push(Reason::new(
                    ReasonKind::MinimumTcb,
                    format!(
                        "REPORTED_TCB ({tcb}) is below the minimum ({min}) in: {}",
                        low.join(", ")
                    ),
                ));
            }
        }
        if let Some(list) = &self.measurements {
            if !list.contains(c.measurement) {
                r.push(Reason::new(
                    ReasonKind::Measurement,
                    format!(
                        "measurement {} is not among the {} allowed",
                        hex::encode(c.measurement),
                        list.len()
                    ),
                ));
            }
        }
        for (what, want) in [
            ("the policy's", self.report_data.as_ref()),
            ("the transcript's", expected_report_data),
        ] {
            if let Some(want) = want {
                if want != c.report_data {
                    r.push(Reason::new(
                        ReasonKind::ReportData,
                        format!(
                            "REPORT_DATA {} differs from {what} {}",
                            hex::encode(c.report_data),
                            hex::encode(want)
                        ),
                    ));
                }
            }
        }
        if let Some(want) = &self.host_data {
            match c.host_data {
                Some(got) if got == want => {}
                Some(got) => r.push(Reason::new(
                    ReasonKind::HostData,
                    format!(
                        "HOST_DATA {} differs from the policy's {}",
                        hex::encode(got),
                        hex::encode(want)
                    ),
                )),
                None => r.push(Reason::new(
                    ReasonKind::HostData,
                    "the policy expects HOST_DATA but the platform has none",
                )),
            }
        }
        for (i, want) in self.rtmrs.iter().enumerate() {
            let Some(want) = want else { continue };
            match c.rtmrs {
                Some(got) if &got[i] == want => {}
                Some(got) => r.push(Reason::new(
                    ReasonKind::Rtmr,
                    format!(
                        "RTMR{i} {} differs from the policy's {}",
                        hex::encode(got[i]),
                        hex::encode(want)
                    ),
                )),
                None => r.push(Reason::new(
                    ReasonKind::Rtmr,
                    format!("the policy expects RTMR{i} but the platform has none"),
                )),
            }
        }
        if let Some(status) = c.tdx_tcb_status {
            if !self.tdx_tcb_statuses.iter().any(|s| s == status) {
                r.push(Reason::new(
                    ReasonKind::Collateral,
                    format!(
                        "TDX TCB status {status} is not among the accepted ({})",
                        self.tdx_tcb_statuses.join(", ")
                    ),
                ));
            }
        }
        match c.detail {
            Detail::None => {}
            Detail::Snp { report, turin } => self.snp.validate(report, turin, &mut r),
            Detail::Tdx { quote, pck } => self.tdx.validate(quote, pck, &mut r),
        }
        r
    }
}

/// Applies one `KEY=VALUE` setting to a policy table.
fn apply_setting(table: &mut toml::Table, setting: &str) -> Result<(), PolicyError> {
    let bad = || PolicyError::Setting(setting.to_string());
    let (key, value) = setting.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    // Parse the value as the right-hand side of a TOML key.
    let doc: toml::Table = toml::from_str(&format!("v = {}", value.trim())).map_err(|_| bad())?;
    let value = doc.get("v").cloned().ok_or_else(bad)?;
    let mut path: Vec<&str> = key.split('.').map(str::trim).collect();
    let last = path.pop().filter(|k| !k.is_empty()).ok_or_else(bad)?;
    let mut t = table;
    for part in path {
        if part.is_empty() {
            return Err(bad());
        }
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(bad)?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// What a verifier read from evidence, in the terms the policy speaks.
#[derive(Clone, Debug)]
pub struct Claims<'a> {
    /// The platform.
    pub platform: PlatformKind,
    /// Whether debug is on.
    pub debug: bool,
    /// SNP VMPL.
    pub vmpl: Option<u32>,
    /// SNP REPORTED_TCB.
    pub tcb: Option<Tcb>,
    /// Launch measurement (SNP MEASUREMENT, TDX MRTD).
    pub measurement: &'a [u8; 48],
    /// REPORT_DATA.
    pub report_data: &'a [u8; 64],
    /// SNP HOST_DATA.
    pub host_data: Option<&'a [u8; 32]>,
    /// TDX RTMRs.
    pub rtmrs: Option<&'a [[u8; 48]; 4]>,
    /// TDX TCB status from collateral, when checked.
    pub tdx_tcb_status: Option<&'a str>,
    /// The report or quote itself, for the platform's own options.
    pub detail: Detail<'a>,
}

/// The evidence behind [`Claims`], for the options only one platform has.
#[derive(Clone, Copy, Debug)]
pub enum Detail<'a> {
    /// Nothing more (only the common options are checked).
    None,
    /// An SEV-SNP or emulated report; `turin` when its TCBs use the Turin layout.
    Snp {
        /// The report.
        report: &'a Report,
        /// Whether TCB versions are in the Turin layout.
        turin: bool,
    },
    /// A TDX quote, with its PCK certificate's SGX extensions once the chain verified.
    Tdx {
        /// The quote.
        quote: &'a Quote,
        /// The PCK certificate's SGX extensions.
        pck: Option<&'a PckInfo>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims<'a>(m: &'a [u8; 48], rd: &'a [u8; 64], hd: &'a [u8; 32]) -> Claims<'a> {
        Claims {
            platform: PlatformKind::Snp,
            debug: false,
            vmpl: Some(0),
            tcb: Some(Tcb {
                fmc: None,
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
            }),
            measurement: m,
            report_data: rd,
            host_data: Some(hd),
            rtmrs: None,
            tdx_tcb_status: None,
            detail: Detail::None,
        }
    }

    #[test]
    fn default_policy_accepts_plain_snp_claims() {
        let (m, rd, hd) = ([1u8; 48], [2u8; 64], [3u8; 32]);
        assert!(Policy::default()
            .validate(&claims(&m, &rd, &hd), None)
            .is_empty());
    }

    #[test]
    fn every_mismatch_is_reported_at_once() {
        let (m, rd, hd) = ([1u8; 48], [2u8; 64], [3u8; 32]);
        let mut c = claims(&m, &rd, &hd);
        c.debug = true;
        c.vmpl = Some(2);
        let p = Policy {
            measurements: Some(vec![[9; 48]]),
            report_data: Some([8; 64]),
            host_data: Some([7; 32]),
            minimum_tcb: Some(Tcb {
                fmc: None,
                bootloader: 4,
                tee: 0,
                snp: 8,
                microcode: 115,
            }),
            rtmrs: [Some([0; 48]), None, None, None],
            ..Policy::default()
        };
        let kinds: Vec<_> = p
            .validate(&c, Some(&[6; 64]))
            .iter()
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                ReasonKind::Debug,
                ReasonKind::Vmpl,
                ReasonKind::MinimumTcb,
                ReasonKind::Measurement,
                ReasonKind::ReportData,
                ReasonKind::ReportData,
                ReasonKind::HostData,
                ReasonKind::Rtmr,
            ]
        );
    }

    #[test]
    fn emulated_needs_explicit_permission() {
        let p = Policy::default();
        assert!(p.check_platform(PlatformKind::Emulated).is_some());
        assert!(p.check_platform(PlatformKind::Snp).is_none());
        assert!(p.check_platform(PlatformKind::Tdx).is_none());
        let p = Policy {
            allow_emulated: true,
            ..Policy::default()
        };
        assert!(p.check_platform(PlatformKind::Emulated).is_none());
        let p = Policy {
            allow_emulated: true,
            platforms: Some(vec![PlatformKind::Snp]),
            ..Policy::default()
        };
        assert!(p.check_platform(PlatformKind::Emulated).is_some());
        assert!(p.check_platform(PlatformKind::Tdx).is_some());
        let p = Policy {
            platforms: Some(vec![PlatformKind::Emulated]),
            ..Policy::default()
        };
        assert!(p.check_platform(PlatformKind::Emulated).is_some());
    }

    #[test]
    fn toml_policy_reads_every_common_key() {
        let text = format!(
            r#"
platforms = ["snp", "emulated"]
allow_emulated = true
allow_debug = true
vmpl = "any"
measurements = ["{m}"]
report_data = "{rd}"
host_data = "0x{hd}"
rtmr2 = "{m}"
tdx_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
[minimum_tcb]
bootloader = 3
tee = 0
snp = 8
microcode = 115
fmc = 1
"#,
            m = "ab".repeat(48),
            rd = "cd".repeat(64),
            hd = "ef".repeat(32)
        );
        let p = Policy::from_toml(&text).unwrap();
        assert_eq!(
            p.platforms,
            Some(vec![PlatformKind::Snp, PlatformKind::Emulated])
        );
        assert!(p.allow_emulated && p.allow_debug);
        assert_eq!(p.vmpl, None);
        assert_eq!(p.measurements, Some(vec![[0xab; 48]]));
        assert_eq!(p.report_data, Some([0xcd; 64]));
        assert_eq!(p.host_data, Some([0xef; 32]));
        assert_eq!(p.rtmrs, [None, None, Some([0xab; 48]), None]);
        assert_eq!(p.minimum_tcb.unwrap().fmc, Some(1));
        assert_eq!(p.tdx_tcb_statuses.len(), 2);
        assert_eq!(Policy::from_toml("").unwrap(), Policy::default());
    }

    #[test]
    fn toml_policy_refuses_typos_and_bad_values() {
        assert!(matches!(
            Policy::from_toml("allow_debugg = true"),
            Err(PolicyError::Toml(_))
        ));
        assert!(matches!(
            Policy::from_toml("vmpl = 4"),
            Err(PolicyError::Value { key: "vmpl", .. })
        ));
        assert!(matches!(
            Policy::from_toml("report_data = \"abcd\""),
            Err(PolicyError::Value {
                key: "report_data",
                ..
            })
        ));
        assert!(matches!(
            Policy::from_toml("platforms = [\"sev\"]"),
            Err(PolicyError::Value {
                key: "platforms",
                ..
            })
        ));
        for status in ["Revoked", "uptodate", "Unknown"] {
            assert!(
                matches!(
                    Policy::from_toml(&format!("tdx_tcb_statuses = [\"{status}\"]")),
                    Err(PolicyError::Value {
                        key: "tdx_tcb_statuses",
                        ..
                    })
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn settings_reach_every_key_spelled_as_in_the_file() {
        let p = Policy::from_toml_with(
            "allow_debug = false\n[snp.guest_policy]\nsmt = \"required\"\n",
            &[
                "allow_debug = true".into(),
                "snp.guest_policy.smt=\"forbidden\"".into(),
                "tdx.minimum_qe_svn = 7".into(),
                "tdx.attributes.sept_ve_disable = \"required\"".into(),
                format!("measurements = [\"{}\"]", "00".repeat(48)),
            ],
        )
        .unwrap();
        assert!(p.allow_debug);
        assert_eq!(p.snp.guest_policy.smt, Some(BitRule::Forbidden));
        assert_eq!(p.tdx.minimum_qe_svn, Some(7));
        assert_eq!(p.tdx.attributes.sept_ve_disable, Some(BitRule::Required));
        assert_eq!(p.measurements, Some(vec![[0; 48]]));
        for bad in [
            "novalue",
            "=1",
            "x = not toml",
            "snp..smt = 1",
            "allow_debug.x = 1",
        ] {
            assert!(
                Policy::from_toml_with("allow_debug = true", &[bad.into()]).is_err(),
                "{bad}"
            );
        }
        assert!(matches!(
            Policy::from_toml_with("", &["snp.guest_policy.smtt = \"required\"".into()]),
            Err(PolicyError::Toml(_))
        ));
    }

    #[test]
    fn the_digest_tells_policies_apart() {
        let a = Policy::default();
        let b = Policy {
            allow_debug: true,
            ..Policy::default()
        };
        assert_eq!(a.digest(), Policy::default().digest());
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
    }
}

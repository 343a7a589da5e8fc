//! Validation: what the verifier *wants* of evidence that verified, as go-sev-guest's
//! `validate` package. Every option that is `None` is not checked, and every mismatch is
//! reported, not just the first.
//!
//! Defaults are the safe ones: only SEV-SNP and TDX accepted, emulated evidence refused,
//! debug refused, VMPL 0 expected (SNP). A policy is built in code or read from TOML
//! (`docs/attestation.md` lists the keys):
//!
//! ```toml
//! platforms = ["snp", "tdx"]       # or with "emulated" (needs allow_emulated too)
//! allow_emulated = false
//! allow_debug = false
//! vmpl = 0                         # 0..=3, or "any"
//! measurements = ["<96 hex digits>"]
//! report_data = "<128 hex digits>"
//! host_data = "<64 hex digits>"
//! rtmr0 = "<96 hex digits>"        # rtmr0..rtmr3, TDX
//! tdx_tcb_statuses = ["UpToDate"]  # with collateral
//! [minimum_tcb]                    # SEV-SNP, component-wise
//! bootloader = 3
//! tee = 0
//! snp = 8
//! microcode = 115
//! ```

use serde::Deserialize;
use swiotlb_shared::transcript::PlatformKind;

use crate::snp::tcb::Tcb;
use crate::verdict::{Reason, ReasonKind};

/// Largest policy file read: policies are a few lines; a measurement list of a few hundred
/// entries stays far below this.
pub const MAX_POLICY_LEN: usize = 256 * 1024;

/// What the verifier requires of evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Platforms accepted; `None`: SEV-SNP and TDX. The emulated platform is accepted only
    /// if this allows it *and* [`Policy::allow_emulated`] is set.
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
    pub measurements: Option<Vec<[u8; 48]>>,
    /// Expected REPORT_DATA; `None`: not checked (the caller may still pass the transcript
    /// hash it expects to [`Policy::validate`]).
    pub report_data: Option<[u8; 64]>,
    /// Expected SNP HOST_DATA; `None`: not checked.
    pub host_data: Option<[u8; 32]>,
    /// Expected TDX RTMR0..3; `None` entries are not checked.
    pub rtmrs: [Option<[u8; 48]>; 4],
    /// TCB statuses accepted when TDX collateral is checked.
    pub tdx_tcb_statuses: Vec<String>,
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
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VmplSetting {
    Level(u32),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcbFile {
    fmc: Option<u8>,
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
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

impl Policy {
    /// Reads a TOML policy. Unknown keys are errors (a typo must not disable a check);
    /// absent keys take the defaults of [`Policy::default`].
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge(text.len()));
        }
        let f: PolicyFile = toml::from_str(text)?;
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
        p.minimum_tcb = f.minimum_tcb.map(|t| Tcb {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        });
        if let Some(list) = f.measurements {
            p.measurements = Some(
                list.iter()
                    .map(|s| parse_hex::<48>("measurements", s))
                    .collect::<Result<_, _>>()?,
            );
        }
        if let Some(s) = f.report_data {
            p.report_data = Some(parse_hex("report_data", &s)?);
        }
        if let Some(s) = f.host_data {
            p.host_data = Some(parse_hex("host_data", &s)?);
        }
        for (i, (key, v)) in [
            ("rtmr0", f.rtmr0),
            ("rtmr1", f.rtmr1),
            ("rtmr2", f.rtmr2),
            ("rtmr3", f.rtmr3),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(s) = v {
                p.rtmrs[i] = Some(parse_hex(key, &s)?);
            }
        }
        if let Some(s) = f.tdx_tcb_statuses {
            p.tdx_tcb_statuses = s;
        }
        Ok(p)
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
    /// every mismatch.
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
        r
    }
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
    fn toml_policy_reads_every_key() {
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
    }
}

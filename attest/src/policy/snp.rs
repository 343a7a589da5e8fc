//! SEV-SNP options beyond the common ones (go-sev-guest's `validate.Options`): the guest
//! policy and PLATFORM_INFO bit by bit, the ABI minimum, TCB and firmware minimums, the
//! ID block keys, the identity fields and the CPUID of version 3+ reports. They apply to
//! emulated reports too, which have the same layout. Always checked: REPORTED_TCB is not
//! above CURRENT_TCB.
//!
//! ```toml
//! [snp]
//! minimum_abi = "1.51"                 # guest policy ABI_MAJOR.ABI_MINOR
//! minimum_guest_svn = 1
//! minimum_build = 21                   # CURRENT and COMMITTED firmware build
//! minimum_version = "1.55"             # CURRENT and COMMITTED firmware major.minor
//! permit_provisional_firmware = false  # false: COMMITTED must equal CURRENT; true: <=
//! require_id_block = true              # an ID block whose key (or author key) is trusted
//! require_author_key = false           # AUTHOR_KEY_EN set and its digest trusted
//! trusted_id_key_digests = ["<96 hex>"]      # SHA-384 of the ID key (SEV-SNP ABI form)
//! trusted_author_key_digests = ["<96 hex>"]
//! image_id = "<32 hex>"
//! family_id = "<32 hex>"
//! report_id = "<64 hex>"
//! report_id_ma = "<64 hex>"
//! chip_ids = ["<128 hex>"]
//! [snp.guest_policy]                   # "required", "forbidden" or "allowed"
//! smt = "allowed"                      # DEBUG is `allow_debug`
//! migrate_ma = "forbidden"
//! single_socket = "required"
//! cxl_allowed = "forbidden"
//! mem_aes_256_xts = "required"
//! rapl_disabled = "required"
//! ciphertext_hiding = "required"
//! page_swap_disabled = "required"
//! [snp.platform_info]                  # same words
//! smt_enabled = "forbidden"
//! tsme_enabled = "allowed"
//! ecc_enabled = "required"
//! rapl_disabled = "allowed"
//! ciphertext_hiding_enabled = "allowed"
//! alias_check_complete = "required"
//! tio_enabled = "allowed"
//! [snp.minimum_current_tcb]            # like [minimum_tcb]; also _committed_ and _launch_
//! bootloader = 3
//! tee = 0
//! snp = 8
//! microcode = 115
//! [snp.cpuid]                          # report version 3 and later
//! family = 0x19
//! model = 0x01
//! stepping = 1
//! ```

use serde::{Deserialize, Serialize};

use super::{check_bits, hexser, opt_hex, opt_hex_list, parse_hex, parse_version};
use super::{BitRule, PolicyError, TcbFile};
use crate::snp::report::Report;
use crate::snp::tcb::Tcb;
use crate::verdict::{Reason, ReasonKind};

/// The guest policy's bits, one rule each (DEBUG is [`super::Policy::allow_debug`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestPolicyRules {
    /// Bit 16, SMT: the guest may run with simultaneous multithreading.
    pub smt: Option<BitRule>,
    /// Bit 18, MIGRATE_MA: a migration agent may be associated.
    pub migrate_ma: Option<BitRule>,
    /// Bit 20, SINGLE_SOCKET: the guest may be activated on one socket only.
    pub single_socket: Option<BitRule>,
    /// Bit 21, CXL_ALLOW: CXL may be populated with guest memory.
    pub cxl_allowed: Option<BitRule>,
    /// Bit 22, MEM_AES_256_XTS: AES-256-XTS memory encryption is required.
    pub mem_aes_256_xts: Option<BitRule>,
    /// Bit 23, RAPL_DIS: Running Average Power Limit must be disabled.
    pub rapl_disabled: Option<BitRule>,
    /// Bit 24, CIPHERTEXT_HIDING: ciphertext hiding must be enabled.
    pub ciphertext_hiding: Option<BitRule>,
    /// Bit 25, PAGE_SWAP_DISABLE: guest page swapping is disabled.
    pub page_swap_disabled: Option<BitRule>,
}

impl GuestPolicyRules {
    /// Each rule with its name and bit.
    pub fn rules(&self) -> [(&'static str, u32, Option<BitRule>); 8] {
        [
            ("SMT", 16, self.smt),
            ("MIGRATE_MA", 18, self.migrate_ma),
            ("SINGLE_SOCKET", 20, self.single_socket),
            ("CXL_ALLOW", 21, self.cxl_allowed),
            ("MEM_AES_256_XTS", 22, self.mem_aes_256_xts),
            ("RAPL_DIS", 23, self.rapl_disabled),
            ("CIPHERTEXT_HIDING", 24, self.ciphertext_hiding),
            ("PAGE_SWAP_DISABLE", 25, self.page_swap_disabled),
        ]
    }
}

/// PLATFORM_INFO's bits, one rule each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformInfoRules {
    /// Bit 0, SMT_EN: SMT is enabled on the host.
    pub smt_enabled: Option<BitRule>,
    /// Bit 1, TSME_EN: transparent SME is enabled.
    pub tsme_enabled: Option<BitRule>,
    /// Bit 2, ECC_EN: the platform uses error-correcting memory.
    pub ecc_enabled: Option<BitRule>,
    /// Bit 3, RAPL_DIS: RAPL is disabled.
    pub rapl_disabled: Option<BitRule>,
    /// Bit 4, CIPHERTEXT_HIDING_EN: ciphertext hiding is enabled in DRAM.
    pub ciphertext_hiding_enabled: Option<BitRule>,
    /// Bit 5, ALIAS_CHECK_COMPLETE: the memory alias check has completed.
    pub alias_check_complete: Option<BitRule>,
    /// Bit 7, TIO_EN: SEV-TIO is enabled.
    pub tio_enabled: Option<BitRule>,
}

impl PlatformInfoRules {
    /// Each rule with its name and bit.
    pub fn rules(&self) -> [(&'static str, u32, Option<BitRule>); 7] {
        [
            ("SMT_EN", 0, self.smt_enabled),
            ("TSME_EN", 1, self.tsme_enabled),
            ("ECC_EN", 2, self.ecc_enabled),
            ("RAPL_DIS", 3, self.rapl_disabled),
            ("CIPHERTEXT_HIDING_EN", 4, self.ciphertext_hiding_enabled),
            ("ALIAS_CHECK_COMPLETE", 5, self.alias_check_complete),
            ("TIO_EN", 7, self.tio_enabled),
        ]
    }
}

/// The CPUID family, model and stepping a version 3+ report must carry (each exact).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRule {
    /// CPUID_FAM_ID (extended family + base family, e.g. 0x19).
    pub family: Option<u8>,
    /// CPUID_MOD_ID (extended model << 4 | base model).
    pub model: Option<u8>,
    /// CPUID_STEP.
    pub stepping: Option<u8>,
}

/// The SEV-SNP options beyond the common ones. Every `None` (and every empty list, and
/// every `false`) is not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SnpPolicy {
    /// Minimum guest policy ABI version (ABI_MAJOR, ABI_MINOR).
    pub minimum_abi: Option<(u8, u8)>,
    /// The guest policy's bits.
    pub guest_policy: GuestPolicyRules,
    /// PLATFORM_INFO's bits.
    pub platform_info: PlatformInfoRules,
    /// Minimum GUEST_SVN.
    pub minimum_guest_svn: Option<u32>,
    /// Minimum CURRENT_TCB, component-wise.
    pub minimum_current_tcb: Option<Tcb>,
    /// Minimum COMMITTED_TCB, component-wise.
    pub minimum_committed_tcb: Option<Tcb>,
    /// Minimum LAUNCH_TCB, component-wise.
    pub minimum_launch_tcb: Option<Tcb>,
    /// Minimum firmware build, of both CURRENT and COMMITTED.
    pub minimum_build: Option<u8>,
    /// Minimum firmware (major, minor), of both CURRENT and COMMITTED.
    pub minimum_version: Option<(u8, u8)>,
    /// `Some(false)`: COMMITTED TCB and firmware must equal CURRENT; `Some(true)`: they
    /// may be below it (firmware not yet committed).
    pub permit_provisional_firmware: Option<bool>,
    /// The guest must have been launched with an ID block whose ID key, or author key, is
    /// trusted. (Giving trusted keys implies it.)
    pub require_id_block: bool,
    /// AUTHOR_KEY_EN must be set and AUTHOR_KEY_DIGEST among the trusted author keys.
    pub require_author_key: bool,
    /// ID keys trusted to sign ID blocks: SHA-384 of the key in the SEV-SNP ABI form, as
    /// ID_KEY_DIGEST shows it.
    #[serde(serialize_with = "hexser::vec::serialize")]
    pub trusted_id_key_digests: Vec<[u8; 48]>,
    /// Author keys trusted to sign ID keys, the same way.
    #[serde(serialize_with = "hexser::vec::serialize")]
    pub trusted_author_key_digests: Vec<[u8; 48]>,
    /// Expected IMAGE_ID.
    #[serde(with = "hexser::opt")]
    pub image_id: Option<[u8; 16]>,
    /// Expected FAMILY_ID.
    #[serde(with = "hexser::opt")]
    pub family_id: Option<[u8; 16]>,
    /// Expected REPORT_ID.
    #[serde(with = "hexser::opt")]
    pub report_id: Option<[u8; 32]>,
    /// Expected REPORT_ID_MA.
    #[serde(with = "hexser::opt")]
    pub report_id_ma: Option<[u8; 32]>,
    /// Allowed CHIP_IDs.
    #[serde(with = "hexser::opt_vec")]
    pub chip_ids: Option<Vec<[u8; 64]>>,
    /// CPUID family, model and stepping (reports of version 3 and later).
    pub cpuid: CpuidRule,
}

/// The `[snp]` table of a policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnpFile {
    minimum_abi: Option<String>,
    guest_policy: Option<GuestPolicyRules>,
    platform_info: Option<PlatformInfoRules>,
    minimum_guest_svn: Option<u32>,
    minimum_current_tcb: Option<TcbFile>,
    minimum_committed_tcb: Option<TcbFile>,
    minimum_launch_tcb: Option<TcbFile>,
    minimum_build: Option<u8>,
    minimum_version: Option<String>,
    permit_provisional_firmware: Option<bool>,
    require_id_block: Option<bool>,
    require_author_key: Option<bool>,
    trusted_id_key_digests: Option<Vec<String>>,
    trusted_author_key_digests: Option<Vec<String>>,
    image_id: Option<String>,
    family_id: Option<String>,
    report_id: Option<String>,
    report_id_ma: Option<String>,
    chip_ids: Option<Vec<String>>,
    cpuid: Option<CpuidRule>,
}

/// `what` of `got` below `min` in some component, as a reason.
fn tcb_below(what: &str, got: &Tcb, min: &Option<Tcb>, out: &mut Vec<Reason>) {
    if let Some(min) = min {
        let low = got.below(min);
        if !low.is_empty() {
            out.push(Reason::new(
                ReasonKind::MinimumTcb,
                format!(
                    "{what} ({got}) is below the minimum ({min}) in: {}",
                    low.join(", ")
                ),
            ));
        }
    }
}

/// Compares an identity field.
fn field<const N: usize>(name: &str, got: &[u8; N], want: &Option<[u8; N]>, out: &mut Vec<Reason>) {
    if let Some(want) = want {
        if want != got {
            out.push(Reason::new(
                ReasonKind::Identity,
                format!(
                    "{name} {} differs from the policy's {}",
                    hex::encode(got),
                    hex::encode(want)
                ),
            ));
        }
    }
}

impl SnpPolicy {
    pub(crate) fn from_file(f: SnpFile) -> Result<Self, PolicyError> {
        let hashes = |key: &'static str, l: Option<Vec<String>>| -> Result<Vec<[u8; 48]>, _> {
            l.unwrap_or_default()
                .iter()
                .map(|s| parse_hex(key, s))
                .collect()
        };
        let p = Self {
            minimum_abi: f
                .minimum_abi
                .map(|s| parse_version("snp.minimum_abi", &s))
                .transpose()?,
            guest_policy: f.guest_policy.unwrap_or_default(),
            platform_info: f.platform_info.unwrap_or_default(),
            minimum_guest_svn: f.minimum_guest_svn,
            minimum_current_tcb: f.minimum_current_tcb.map(Tcb::from),
            minimum_committed_tcb: f.minimum_committed_tcb.map(Tcb::from),
            minimum_launch_tcb: f.minimum_launch_tcb.map(Tcb::from),
            minimum_build: f.minimum_build,
            minimum_version: f
                .minimum_version
                .map(|s| parse_version("snp.minimum_version", &s))
                .transpose()?,
            permit_provisional_firmware: f.permit_provisional_firmware,
            require_id_block: f.require_id_block.unwrap_or(false),
            require_author_key: f.require_author_key.unwrap_or(false),
            trusted_id_key_digests: hashes("snp.trusted_id_key_digests", f.trusted_id_key_digests)?,
            trusted_author_key_digests: hashes(
                "snp.trusted_author_key_digests",
                f.trusted_author_key_digests,
            )?,
            image_id: opt_hex("snp.image_id", f.image_id)?,
            family_id: opt_hex("snp.family_id", f.family_id)?,
            report_id: opt_hex("snp.report_id", f.report_id)?,
            report_id_ma: opt_hex("snp.report_id_ma", f.report_id_ma)?,
            chip_ids: opt_hex_list("snp.chip_ids", f.chip_ids)?,
            cpuid: f.cpuid.unwrap_or_default(),
        };
        if p.require_author_key && p.trusted_author_key_digests.is_empty() {
            return Err(PolicyError::Value {
                key: "snp.require_author_key",
                detail: "needs snp.trusted_author_key_digests".into(),
            });
        }
        if p.require_id_block
            && p.trusted_id_key_digests.is_empty()
            && p.trusted_author_key_digests.is_empty()
        {
            return Err(PolicyError::Value {
                key: "snp.require_id_block",
                detail: "needs snp.trusted_id_key_digests or snp.trusted_author_key_digests".into(),
            });
        }
        Ok(p)
    }

    /// Checks a report (verified, or emulated) against these options; `turin` when its TCB
    /// versions use the Turin layout. Appends every mismatch to `out`.
    pub fn validate(&self, r: &Report, turin: bool, out: &mut Vec<Reason>) {
        let abi = ((r.policy >> 8 & 0xff) as u8, (r.policy & 0xff) as u8);
        if let Some(min) = self.minimum_abi {
            if abi < min {
                out.push(Reason::new(
                    ReasonKind::GuestPolicy,
                    format!(
                        "guest policy ABI {}.{} is below the minimum {}.{}",
                        abi.0, abi.1, min.0, min.1
                    ),
                ));
            }
        }
        check_bits(
            ReasonKind::GuestPolicy,
            "guest policy",
            r.policy,
            &self.guest_policy.rules(),
            out,
        );
        check_bits(
            ReasonKind::PlatformInfo,
            "PLATFORM_INFO",
            r.platform_info,
            &self.platform_info.rules(),
            out,
        );
        if let Some(min) = self.minimum_guest_svn {
            if r.guest_svn < min {
                out.push(Reason::new(
                    ReasonKind::MinimumTcb,
                    format!("GUEST_SVN {} is below the minimum {min}", r.guest_svn),
                ));
            }
        }
        let current = Tcb::from_raw(r.current_tcb, turin);
        let committed = Tcb::from_raw(r.committed_tcb, turin);
        let launch = Tcb::from_raw(r.launch_tcb, turin);
        let reported = Tcb::from_raw(r.reported_tcb, turin);
        // Always: the host may report a TCB below what runs, never above (the VCEK it
        // presents is for REPORTED_TCB; go-sev-guest checks the same).
        let above = current.below(&reported);
        if !above.is_empty() {
            out.push(Reason::new(
                ReasonKind::TcbMismatch,
                format!(
                    "REPORTED_TCB ({reported}) is above CURRENT_TCB ({current}) in: {}",
                    above.join(", ")
                ),
            ));
        }
        tcb_below("CURRENT_TCB", &current, &self.minimum_current_tcb, out);
        tcb_below(
            "COMMITTED_TCB",
            &committed,
            &self.minimum_committed_tcb,
            out,
        );
        tcb_below("LAUNCH_TCB", &launch, &self.minimum_launch_tcb, out);
        for (what, (major, minor, build)) in [
            ("current", r.current_version),
            ("committed", r.committed_version),
        ] {
            if let Some(min) = self.minimum_build {
                if build < min {
                    out.push(Reason::new(
                        ReasonKind::MinimumTcb,
                        format!("{what} firmware build {build} is below the minimum {min}"),
                    ));
                }
            }
            if let Some(min) = self.minimum_version {
                if (major, minor) < min {
                    out.push(Reason::new(
                        ReasonKind::MinimumTcb,
                        format!(
                            "{what} firmware {major}.{minor} is below the minimum {}.{}",
                            min.0, min.1
                        ),
                    ));
                }
            }
        }
        let (cv, uv) = (r.committed_version, r.current_version);
        match self.permit_provisional_firmware {
            Some(false) if committed != current || cv != uv => {
                out.push(Reason::new(
                    ReasonKind::ProvisionalFirmware,
                    format!(
                        "committed firmware ({committed}, {}) differs from the current ({current}, {}) and provisional firmware is not permitted",
                        dotted(cv),
                        dotted(uv)
                    ),
                ));
            }
            Some(true)
                if !current.below(&committed).is_empty()
                    || (cv.0, cv.1) > (uv.0, uv.1)
                    || cv.2 > uv.2 =>
            {
                out.push(Reason::new(
                    ReasonKind::ProvisionalFirmware,
                    format!(
                        "committed firmware ({committed}, {}) is above the current ({current}, {})",
                        dotted(cv),
                        dotted(uv)
                    ),
                ));
            }
            _ => {}
        }
        self.validate_keys(r, out);
        field("IMAGE_ID", &r.image_id, &self.image_id, out);
        field("FAMILY_ID", &r.family_id, &self.family_id, out);
        field("REPORT_ID", &r.report_id, &self.report_id, out);
        field("REPORT_ID_MA", &r.report_id_ma, &self.report_id_ma, out);
        if let Some(list) = &self.chip_ids {
            if !list.contains(&r.chip_id) {
                out.push(Reason::new(
                    ReasonKind::Identity,
                    format!(
                        "CHIP_ID {} is not among the {} allowed",
                        hex::encode(r.chip_id),
                        list.len()
                    ),
                ));
            }
        }
        let want = self.cpuid;
        if want != CpuidRule::default() {
            match r.cpuid {
                None => out.push(Reason::new(
                    ReasonKind::Cpuid,
                    format!(
                        "the policy expects a CPUID but a version {} report carries none",
                        r.version
                    ),
                )),
                Some((family, model, stepping)) => {
                    for (name, got, want) in [
                        ("family", family, want.family),
                        ("model", model, want.model),
                        ("stepping", stepping, want.stepping),
                    ] {
                        if want.is_some_and(|w| w != got) {
                            out.push(Reason::new(
                                ReasonKind::Cpuid,
                                format!(
                                    "CPUID {name} {got:#x} differs from the policy's {:#x}",
                                    want.unwrap_or(0)
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// The ID block rules: once any is set, the guest must have been launched with an ID
    /// block whose ID key is trusted, or whose author key is (go-sev-guest's rules).
    fn validate_keys(&self, r: &Report, out: &mut Vec<Reason>) {
        let lists =
            !self.trusted_id_key_digests.is_empty() || !self.trusted_author_key_digests.is_empty();
        if !(lists || self.require_id_block || self.require_author_key) {
            return;
        }
        let bad = |m: String| Reason::new(ReasonKind::IdBlock, m);
        if self.require_author_key && !r.author_key_en {
            out.push(bad(
                "AUTHOR_KEY_EN is clear: the ID block has no author key, which the policy requires"
                    .into(),
            ));
            return;
        }
        if r.id_key_digest.iter().all(|&b| b == 0) {
            out.push(bad(
                "ID_KEY_DIGEST is zero: the guest was launched without an ID block".into(),
            ));
            return;
        }
        let author_trusted = r.author_key_en
            && self
                .trusted_author_key_digests
                .contains(&r.author_key_digest);
        if self.require_author_key && !author_trusted {
            out.push(bad(format!(
                "AUTHOR_KEY_DIGEST {} is not a trusted author key",
                hex::encode(r.author_key_digest)
            )));
            return;
        }
        if !author_trusted && !self.trusted_id_key_digests.contains(&r.id_key_digest) {
            out.push(bad(format!(
                "ID_KEY_DIGEST {} is not a trusted ID key{}",
                hex::encode(r.id_key_digest),
                if r.author_key_en {
                    ", nor is its author key"
                } else {
                    ""
                }
            )));
        }
    }
}

/// A firmware version (major, minor, build) as "major.minor.build".
fn dotted((major, minor, build): (u8, u8, u8)) -> String {
    format!("{major}.{minor}.{build}")
}

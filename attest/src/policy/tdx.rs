//! TDX options beyond the common ones (go-tdx-guest's `validate.Options`): the SEAM module,
//! TD attributes bit by bit, XFAM, the owner's configuration registers, the service TD,
//! and the TEE, QE and PCE security versions. MRTD and the RTMRs are the common
//! `measurements` and `rtmr0`..`rtmr3`; DEBUG is `allow_debug`.
//!
//! ```toml
//! [tdx]
//! mr_seams = ["<96 hex>"]                # accepted TDX module measurements
//! mr_signer_seam = "<96 hex>"            # zero for Intel's module
//! td_attributes = "0x0000000010000000"   # exact TDATTRIBUTES (hex number)
//! xfam = "0x00000000000602e7"            # exact XFAM (hex number)
//! mr_config_id = "<96 hex>"
//! mr_owner = "<96 hex>"
//! mr_owner_config = "<96 hex>"
//! mr_service_td = "<96 hex>"             # TDX 1.5 bodies only
//! minimum_tee_tcb_svn = "<32 hex>"       # component-wise
//! minimum_tee_tcb_svn2 = "<32 hex>"      # TDX 1.5 bodies only
//! minimum_qe_svn = 7                     # the QE report's ISVSVN
//! minimum_pce_svn = 11                   # the PCK certificate's PCESVN
//! qe_vendor_id = "<32 hex>"
//! [tdx.attributes]                       # "required", "forbidden" or "allowed"
//! sept_ve_disable = "required"
//! pks = "allowed"
//! kl = "forbidden"
//! perfmon = "allowed"
//! migratable = "forbidden"
//! ```
//!
//! Always checked: TDATTRIBUTES bits the TDX 1.5 ABI reserves (1-3, 7-15, 23-26, 32-61)
//! must be zero.

use serde::{Deserialize, Serialize};

use super::{check_bits, hexser, opt_hex, opt_hex_list, parse_u64_hex};
use super::{BitRule, PolicyError};
use crate::tdx::pck::PckInfo;
use crate::tdx::quote::Quote;
use crate::verdict::{Reason, ReasonKind};

/// TDATTRIBUTES bits the TDX 1.5 ABI (348551-008US, table 3.23) reserves: must be zero.
pub const TD_ATTRIBUTES_RESERVED: u64 = ones(1, 3) | ones(7, 15) | ones(23, 26) | ones(32, 61);

const fn ones(first: u32, last: u32) -> u64 {
    (u64::MAX << first) & (u64::MAX >> (63 - last))
}

/// The TD attributes' bits, one rule each (DEBUG is [`super::Policy::allow_debug`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdAttributeRules {
    /// Bit 4, HGS_PLUS_PROF: HGS+ profiling (a debug-class "TD under debug" flag).
    pub hgs_plus_prof: Option<BitRule>,
    /// Bit 5, PERF_PROF: performance profiling (TUD).
    pub perf_prof: Option<BitRule>,
    /// Bit 6, PMT_PROF: PMT profiling (TUD).
    pub pmt_prof: Option<BitRule>,
    /// Bit 16, ICSSD: instruction-count based single-step defense.
    pub icssd: Option<BitRule>,
    /// Bit 17, SERVTD_EXT: the report includes the service TD extension hash.
    pub servtd_ext: Option<BitRule>,
    /// Bit 27, LASS: the TD may use linear address space separation.
    pub lass: Option<BitRule>,
    /// Bit 28, SEPT_VE_DISABLE: EPT violations on pending pages are not turned into #VE.
    pub sept_ve_disable: Option<BitRule>,
    /// Bit 29, MIGRATABLE: the TD may be migrated by a migration TD.
    pub migratable: Option<BitRule>,
    /// Bit 30, PKS: the TD may use supervisor protection keys.
    pub pks: Option<BitRule>,
    /// Bit 31, KL: the TD may use Key Locker.
    pub kl: Option<BitRule>,
    /// Bit 62, TPA: the TD is a TDX Connect provisioning agent.
    pub tpa: Option<BitRule>,
    /// Bit 63, PERFMON: the TD may use perfmon and PERF_METRICS.
    pub perfmon: Option<BitRule>,
}

impl TdAttributeRules {
    /// Each rule with its name and bit.
    pub fn rules(&self) -> [(&'static str, u32, Option<BitRule>); 12] {
        [
            ("HGS_PLUS_PROF", 4, self.hgs_plus_prof),
            ("PERF_PROF", 5, self.perf_prof),
            ("PMT_PROF", 6, self.pmt_prof),
            ("ICSSD", 16, self.icssd),
            ("SERVTD_EXT", 17, self.servtd_ext),
            ("LASS", 27, self.lass),
            ("SEPT_VE_DISABLE", 28, self.sept_ve_disable),
            ("MIGRATABLE", 29, self.migratable),
            ("PKS", 30, self.pks),
            ("KL", 31, self.kl),
            ("TPA", 62, self.tpa),
            ("PERFMON", 63, self.perfmon),
        ]
    }
}

/// The TDX options beyond the common ones. Every `None` is not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TdxPolicy {
    /// Accepted MRSEAMs (TDX module measurements).
    #[serde(with = "hexser::opt_vec")]
    pub mr_seams: Option<Vec<[u8; 48]>>,
    /// Expected MRSIGNERSEAM.
    #[serde(with = "hexser::opt")]
    pub mr_signer_seam: Option<[u8; 48]>,
    /// Expected TDATTRIBUTES, exactly.
    pub td_attributes: Option<u64>,
    /// TDATTRIBUTES bit by bit.
    pub attributes: TdAttributeRules,
    /// Expected XFAM, exactly.
    pub xfam: Option<u64>,
    /// Expected MRCONFIGID.
    #[serde(with = "hexser::opt")]
    pub mr_config_id: Option<[u8; 48]>,
    /// Expected MROWNER.
    #[serde(with = "hexser::opt")]
    pub mr_owner: Option<[u8; 48]>,
    /// Expected MROWNERCONFIG.
    #[serde(with = "hexser::opt")]
    pub mr_owner_config: Option<[u8; 48]>,
    /// Expected MRSERVICETD (a TDX 1.0 body has none and fails this check).
    #[serde(with = "hexser::opt")]
    pub mr_service_td: Option<[u8; 48]>,
    /// Minimum TEE_TCB_SVN, byte by byte.
    #[serde(with = "hexser::opt")]
    pub minimum_tee_tcb_svn: Option<[u8; 16]>,
    /// Minimum TEE_TCB_SVN2, byte by byte (a TDX 1.0 body has none and fails this check).
    #[serde(with = "hexser::opt")]
    pub minimum_tee_tcb_svn2: Option<[u8; 16]>,
    /// Minimum QE SVN: the ISVSVN of the QE report the PCK key signed.
    pub minimum_qe_svn: Option<u16>,
    /// Minimum PCE SVN: the PCESVN of the PCK certificate's TCB level.
    pub minimum_pce_svn: Option<u16>,
    /// Expected QE vendor ID (the verifier already requires Intel's).
    #[serde(with = "hexser::opt")]
    pub qe_vendor_id: Option<[u8; 16]>,
}

/// The `[tdx]` table of a policy file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TdxFile {
    mr_seams: Option<Vec<String>>,
    mr_signer_seam: Option<String>,
    td_attributes: Option<String>,
    attributes: Option<TdAttributeRules>,
    xfam: Option<String>,
    mr_config_id: Option<String>,
    mr_owner: Option<String>,
    mr_owner_config: Option<String>,
    mr_service_td: Option<String>,
    minimum_tee_tcb_svn: Option<String>,
    minimum_tee_tcb_svn2: Option<String>,
    minimum_qe_svn: Option<u16>,
    minimum_pce_svn: Option<u16>,
    qe_vendor_id: Option<String>,
}

/// Compares a 48-byte register.
fn register(
    kind: ReasonKind,
    name: &str,
    got: Option<&[u8; 48]>,
    want: &Option<[u8; 48]>,
    out: &mut Vec<Reason>,
) {
    let Some(want) = want else { return };
    match got {
        Some(got) if got == want => {}
        Some(got) => out.push(Reason::new(
            kind,
            format!(
                "{name} {} differs from the policy's {}",
                hex::encode(got),
                hex::encode(want)
            ),
        )),
        None => out.push(Reason::new(
            kind,
            format!("the policy expects {name} but a TDX 1.0 report body has none"),
        )),
    }
}

/// Checks an SVN array byte by byte against a minimum.
fn svn_below(name: &str, got: Option<&[u8; 16]>, min: &Option<[u8; 16]>, out: &mut Vec<Reason>) {
    let Some(min) = min else { return };
    match got {
        None => out.push(Reason::new(
            ReasonKind::MinimumTcb,
            format!("the policy expects {name} but a TDX 1.0 report body has none"),
        )),
        Some(got) => {
            let low: Vec<String> = (0..16)
                .filter(|&i| got[i] < min[i])
                .map(|i| i.to_string())
                .collect();
            if !low.is_empty() {
                out.push(Reason::new(
                    ReasonKind::MinimumTcb,
                    format!(
                        "{name} {} is below the minimum {} in byte {}",
                        hex::encode(got),
                        hex::encode(min),
                        low.join(", ")
                    ),
                ));
            }
        }
    }
}

impl TdxPolicy {
    pub(crate) fn from_file(f: TdxFile) -> Result<Self, PolicyError> {
        Ok(Self {
            mr_seams: opt_hex_list("tdx.mr_seams", f.mr_seams)?,
            mr_signer_seam: opt_hex("tdx.mr_signer_seam", f.mr_signer_seam)?,
            td_attributes: f
                .td_attributes
                .map(|s| parse_u64_hex("tdx.td_attributes", &s))
                .transpose()?,
            attributes: f.attributes.unwrap_or_default(),
            xfam: f.xfam.map(|s| parse_u64_hex("tdx.xfam", &s)).transpose()?,
            mr_config_id: opt_hex("tdx.mr_config_id", f.mr_config_id)?,
            mr_owner: opt_hex("tdx.mr_owner", f.mr_owner)?,
            mr_owner_config: opt_hex("tdx.mr_owner_config", f.mr_owner_config)?,
            mr_service_td: opt_hex("tdx.mr_service_td", f.mr_service_td)?,
            minimum_tee_tcb_svn: opt_hex("tdx.minimum_tee_tcb_svn", f.minimum_tee_tcb_svn)?,
            minimum_tee_tcb_svn2: opt_hex("tdx.minimum_tee_tcb_svn2", f.minimum_tee_tcb_svn2)?,
            minimum_qe_svn: f.minimum_qe_svn,
            minimum_pce_svn: f.minimum_pce_svn,
            qe_vendor_id: opt_hex("tdx.qe_vendor_id", f.qe_vendor_id)?,
        })
    }

    /// Checks a quote (and its PCK certificate's SGX extensions, once verified) against
    /// these options. Appends every mismatch to `out`.
    pub fn validate(&self, q: &Quote, pck: Option<&PckInfo>, out: &mut Vec<Reason>) {
        let b = &q.body;
        if let Some(list) = &self.mr_seams {
            if !list.contains(&b.mr_seam) {
                out.push(Reason::new(
                    ReasonKind::Seam,
                    format!(
                        "MRSEAM {} is not among the {} allowed",
                        hex::encode(b.mr_seam),
                        list.len()
                    ),
                ));
            }
        }
        register(
            ReasonKind::Seam,
            "MRSIGNERSEAM",
            Some(&b.mr_signer_seam),
            &self.mr_signer_seam,
            out,
        );
        let reserved = b.td_attributes & TD_ATTRIBUTES_RESERVED;
        if reserved != 0 {
            out.push(Reason::new(
                ReasonKind::TdAttributes,
                format!(
                    "TDATTRIBUTES {:#018x} sets bits the TDX ABI reserves ({reserved:#x})",
                    b.td_attributes
                ),
            ));
        }
        if let Some(want) = self.td_attributes {
            if want != b.td_attributes {
                out.push(Reason::new(
                    ReasonKind::TdAttributes,
                    format!(
                        "TDATTRIBUTES {:#018x} differs from the policy's {want:#018x}",
                        b.td_attributes
                    ),
                ));
            }
        }
        check_bits(
            ReasonKind::TdAttributes,
            "TDATTRIBUTES",
            b.td_attributes,
            &self.attributes.rules(),
            out,
        );
        if let Some(want) = self.xfam {
            if want != b.xfam {
                out.push(Reason::new(
                    ReasonKind::Xfam,
                    format!(
                        "XFAM {:#018x} differs from the policy's {want:#018x}",
                        b.xfam
                    ),
                ));
            }
        }
        register(
            ReasonKind::TdConfig,
            "MRCONFIGID",
            Some(&b.mr_config_id),
            &self.mr_config_id,
            out,
        );
        register(
            ReasonKind::TdConfig,
            "MROWNER",
            Some(&b.mr_owner),
            &self.mr_owner,
            out,
        );
        register(
            ReasonKind::TdConfig,
            "MROWNERCONFIG",
            Some(&b.mr_owner_config),
            &self.mr_owner_config,
            out,
        );
        register(
            ReasonKind::ServiceTd,
            "MRSERVICETD",
            b.mr_service_td.as_ref(),
            &self.mr_service_td,
            out,
        );
        svn_below(
            "TEE_TCB_SVN",
            Some(&b.tee_tcb_svn),
            &self.minimum_tee_tcb_svn,
            out,
        );
        svn_below(
            "TEE_TCB_SVN2",
            b.tee_tcb_svn2.as_ref(),
            &self.minimum_tee_tcb_svn2,
            out,
        );
        if let Some(min) = self.minimum_qe_svn {
            let got = q.qe_report.isv_svn;
            if got < min {
                out.push(Reason::new(
                    ReasonKind::MinimumTcb,
                    format!("QE SVN (the QE report's ISVSVN) {got} is below the minimum {min}"),
                ));
            }
        }
        if let Some(min) = self.minimum_pce_svn {
            match pck {
                Some(p) if p.pce_svn >= min => {}
                Some(p) => out.push(Reason::new(
                    ReasonKind::MinimumTcb,
                    format!(
                        "PCE SVN (the PCK certificate's PCESVN) {} is below the minimum {min}",
                        p.pce_svn
                    ),
                )),
                None => out.push(Reason::new(
                    ReasonKind::MinimumTcb,
                    "the policy expects a minimum PCE SVN but the PCK certificate did not verify",
                )),
            }
        }
        if let Some(want) = self.qe_vendor_id {
            if want != q.qe_vendor_id {
                out.push(Reason::new(
                    ReasonKind::Identity,
                    format!(
                        "QE vendor ID {} differs from the policy's {}",
                        hex::encode(q.qe_vendor_id),
                        hex::encode(want)
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_attribute_bits_are_those_of_the_abi() {
        let defined = [
            0u32, 4, 5, 6, 16, 17, 18, 19, 20, 21, 22, 27, 28, 29, 30, 31, 62, 63,
        ];
        for bit in 0..64 {
            assert_eq!(
                TD_ATTRIBUTES_RESERVED >> bit & 1 == 0,
                defined.contains(&bit),
                "bit {bit}"
            );
        }
    }
}

//! The outcome of verifying evidence: accepted or not, with every reason listed.

use serde::Serialize;
use swiotlb_shared::transcript::PlatformKind;

/// What kind of check a [`Reason`] comes from. Stable names (snake_case in JSON) so audit
/// records and tests can match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// The evidence, report, quote or a certificate could not be parsed (strictly).
    Malformed,
    /// The report's or quote's signature does not verify.
    Signature,
    /// A certificate chain does not lead to a pinned root, or uses an unexpected algorithm.
    Chain,
    /// A certificate is outside its validity window.
    Validity,
    /// REPORTED_TCB differs from the endorsement certificate's TCB extensions.
    TcbMismatch,
    /// CHIP_ID differs from the VCEK's hwID.
    ChipId,
    /// The report's SIGNING_KEY does not match the certificate given.
    SigningKey,
    /// TDX: the QE report does not bind the attestation key, or is not signed by the PCK.
    QeBinding,
    /// TDX: collateral (TCB info, QE identity, CRLs) failed or the TCB status is not allowed.
    Collateral,
    /// The platform is not allowed by the policy, or no trust anchor is configured for it.
    Platform,
    /// Debug is on (SNP policy bit 19, TD attribute DEBUG) and the policy forbids it.
    Debug,
    /// The VMPL is not the expected one.
    Vmpl,
    /// A TCB, firmware or security version is below the policy's minimum (SNP REPORTED,
    /// CURRENT, COMMITTED, LAUNCH TCB, firmware build and version, GUEST_SVN; TDX
    /// TEE_TCB_SVN, TEE_TCB_SVN2, QE SVN, PCE SVN).
    MinimumTcb,
    /// SNP: the COMMITTED firmware differs from (or is above) the CURRENT one.
    ProvisionalFirmware,
    /// SNP: a guest policy bit or the policy ABI version is not what the policy wants.
    GuestPolicy,
    /// SNP: a PLATFORM_INFO bit is not what the policy wants.
    PlatformInfo,
    /// SNP: the ID block (ID key, author key) is missing or not trusted.
    IdBlock,
    /// An identity field differs (SNP IMAGE_ID, FAMILY_ID, REPORT_ID, REPORT_ID_MA,
    /// CHIP_ID; TDX QE vendor ID).
    Identity,
    /// SNP: the report's CPUID family, model or stepping is not the policy's.
    Cpuid,
    /// TDX: MRSEAM or MRSIGNERSEAM is not an allowed TDX module.
    Seam,
    /// TDX: TDATTRIBUTES differs, breaks a bit rule, or sets reserved bits.
    TdAttributes,
    /// TDX: XFAM differs.
    Xfam,
    /// TDX: MRCONFIGID, MROWNER or MROWNERCONFIG differs.
    TdConfig,
    /// TDX: MRSERVICETD differs (or the body has none).
    ServiceTd,
    /// A certificate on the path is on a revocation list, or a given list cannot be used
    /// (not signed by the issuer, out of date).
    Revocation,
    /// The launch measurement (SNP MEASUREMENT, TDX MRTD) is not an allowed one.
    Measurement,
    /// TDX: an RTMR differs from the expected value.
    Rtmr,
    /// REPORT_DATA differs from the expected transcript hash.
    ReportData,
    /// SNP: HOST_DATA differs from the expected value.
    HostData,
}

/// One reason for rejecting evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The check it comes from.
    pub kind: ReasonKind,
    /// What was wrong, in words.
    pub message: String,
}

impl Reason {
    /// A reason of `kind`.
    pub fn new(kind: ReasonKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// TCB information reported in a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TcbInfo {
    /// SEV-SNP (and emulated): the TCB versions decoded, the firmware versions, and the
    /// product if known.
    Snp {
        /// The product whose ARK anchors the chain (absent when emulated or unverified).
        #[serde(skip_serializing_if = "Option::is_none")]
        product: Option<crate::snp::certs::Product>,
        /// REPORTED_TCB: the one the VCEK certifies.
        reported: crate::snp::tcb::Tcb,
        /// CURRENT_TCB.
        current: crate::snp::tcb::Tcb,
        /// COMMITTED_TCB.
        committed: crate::snp::tcb::Tcb,
        /// LAUNCH_TCB.
        launch: crate::snp::tcb::Tcb,
        /// Firmware now running, "major.minor.build".
        current_firmware: String,
        /// Firmware committed, "major.minor.build".
        committed_firmware: String,
    },
    /// TDX: the quote's form, its TCB SVNs, and the collateral's TCB status when collateral
    /// was checked.
    Tdx {
        /// Quote version (4 or 5).
        quote_version: u16,
        /// TD report body type.
        body_type: crate::tdx::quote::BodyType,
        /// TEE_TCB_SVN, hex.
        tee_tcb_svn: String,
        /// TEE_TCB_SVN2, hex (TDX 1.5 bodies).
        #[serde(skip_serializing_if = "Option::is_none")]
        tee_tcb_svn2: Option<String>,
        /// The QE's ISVSVN, from the QE report the PCK key signed.
        qe_svn: u16,
        /// The PCE SVN the PCK certificate was issued for (once its chain verified).
        #[serde(skip_serializing_if = "Option::is_none")]
        pce_svn: Option<u16>,
        /// The platform's FMSPC from the PCK certificate, hex.
        #[serde(skip_serializing_if = "Option::is_none")]
        fmspc: Option<String>,
        /// TCB status from the collateral (e.g. "UpToDate").
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        /// Advisory IDs from the collateral.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        advisory_ids: Vec<String>,
    },
}

/// The verdict on one piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `"accepted"` or `"rejected"`.
    pub verdict: &'static str,
    /// Whether the evidence is accepted: no reason was found.
    pub accepted: bool,
    /// The platform the evidence claims (`null` if the evidence could not be parsed).
    #[serde(serialize_with = "ser_platform")]
    pub platform: Option<PlatformKind>,
    /// True when the evidence comes from the emulated platform: never a confidential VM.
    pub emulated: bool,
    /// The launch measurement (SNP MEASUREMENT, TDX MRTD), hex.
    pub measurement: Option<String>,
    /// TCB information.
    pub tcb: Option<TcbInfo>,
    /// The REPORT_DATA the evidence carries, hex.
    pub report_data: Option<String>,
    /// Every reason for rejection; empty when accepted.
    pub reasons: Vec<Reason>,
    /// SHA-256 of the evidence blob, hex: what ties this verdict (and its EAR) to the
    /// evidence an audit record keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_sha256: Option<String>,
    /// TDX: how many unsigned bytes followed the quote's signature data. They are never
    /// read; this count is all that is reported of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trailing_bytes: Option<usize>,
}

fn ser_platform<S: serde::Serializer>(p: &Option<PlatformKind>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(k) => s.serialize_str(k.as_str()),
        None => s.serialize_none(),
    }
}

impl Verdict {
    /// A verdict from its parts; accepted exactly when `reasons` is empty.
    pub fn new(
        platform: Option<PlatformKind>,
        measurement: Option<String>,
        tcb: Option<TcbInfo>,
        report_data: Option<String>,
        reasons: Vec<Reason>,
    ) -> Self {
        let accepted = reasons.is_empty();
        Self {
            verdict: if accepted { "accepted" } else { "rejected" },
            accepted,
            platform,
            emulated: platform == Some(PlatformKind::Emulated),
            measurement,
            tcb,
            report_data,
            reasons,
            evidence_sha256: None,
            trailing_bytes: None,
        }
    }

    /// A rejection before anything could be parsed.
    pub fn unparsed(platform: Option<PlatformKind>, reason: Reason) -> Self {
        Self::new(platform, None, None, None, vec![reason])
    }

    /// Adds a reason (the verdict becomes a rejection).
    pub fn push(&mut self, reason: Reason) {
        self.reasons.push(reason);
        self.accepted = false;
        self.verdict = "rejected";
    }

    /// Whether some reason is of `kind`.
    pub fn has(&self, kind: ReasonKind) -> bool {
        self.reasons.iter().any(|r| r.kind == kind)
    }

    /// The reasons' messages, one per line.
    pub fn reasons_text(&self) -> String {
        self.reasons
            .iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

//! The entry point: parse, verify and validate one evidence blob into a [`Verdict`].

use swiotlb_shared::transcript::PlatformKind;

use crate::crl::Crl;
use crate::ear::{EarError, EarSigner};
use crate::emulated;
use crate::evidence::Evidence;
use crate::policy::{Claims, Detail, Policy};
use crate::snp::certs::{AmdRoots, Product};
use crate::snp::report::Report;
use crate::snp::tcb::Tcb;
use crate::tdx::quote::Quote;
use crate::tdx::verify::{intel_root, Collateral, Trust};
use crate::verdict::{Reason, ReasonKind, TcbInfo, Verdict};
use crate::x509::Cert;

/// Verifies evidence against pinned roots and a [`Policy`].
///
/// ```
/// use swiotlb_attest::{emulated, Policy, Verifier};
/// let signer = emulated::Signer::generate().unwrap();
/// let evidence = signer
///     .sign_report(&[1; 64], &[2; 48], &emulated::ReportOptions::default())
///     .unwrap()
///     .encode()
///     .unwrap();
/// let verifier = Verifier::new(Policy { allow_emulated: true, ..Policy::default() })
///     .with_emulated(signer.verifier());
/// let verdict = verifier.verify(&evidence, &|_| Some([1; 64]));
/// assert!(verdict.accepted && verdict.emulated);
/// ```
#[derive(Clone, Debug)]
pub struct Verifier {
    policy: Policy,
    emulated: Option<emulated::Verifier>,
    collateral: Option<Collateral>,
    now: Option<u64>,
    amd_roots: Option<AmdRoots>,
    intel_root: Option<Cert>,
    amd_crls: Vec<Crl>,
    root_ca_crl: Option<Crl>,
    pck_crl: Option<Crl>,
    ear_signer: Option<EarSigner>,
}

impl Verifier {
    /// A verifier with `policy`, the pinned AMD and Intel roots, no emulated trust anchor
    /// (emulated evidence is refused), no TDX collateral, and the system clock.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            emulated: None,
            collateral: None,
            now: None,
            amd_roots: None,
            intel_root: None,
            amd_crls: Vec::new(),
            root_ca_crl: None,
            pck_crl: None,
            ear_signer: None,
        }
    }

    /// Signs the EARs of [`Verifier::ear`] with `signer` (a JWT); without one they are
    /// plain JSON.
    pub fn with_ear_signer(mut self, signer: EarSigner) -> Self {
        self.ear_signer = Some(signer);
        self
    }

    /// The EAR signer, if any.
    pub fn ear_signer(&self) -> Option<&EarSigner> {
        self.ear_signer.as_ref()
    }

    /// The EAT Attestation Result of `verdict` under this verifier's policy, issued now (or
    /// at [`Verifier::at_time`]'s time): a compact JWT when a signer is set, else the claims'
    /// JSON text.
    pub fn ear(&self, verdict: &Verdict) -> Result<String, EarError> {
        let claims = crate::ear::claims(verdict, &self.policy, self.now());
        match &self.ear_signer {
            Some(s) => s.sign(&claims),
            None => Ok(serde_json::to_string(&claims)?),
        }
    }

    /// Trusts `roots` instead of the pinned AMD roots (go-sev-guest's `TrustedRoots`): for
    /// a private test chain, or roots AMD re-issues before this binary is updated.
    pub fn with_amd_roots(mut self, roots: AmdRoots) -> Self {
        self.amd_roots = Some(roots);
        self
    }

    /// Trusts `root` instead of the pinned Intel SGX Root CA (go-tdx-guest's
    /// `TrustedRoots`), for the PCK chain and the collateral alike.
    pub fn with_intel_root(mut self, root: Cert) -> Self {
        self.intel_root = Some(root);
        self
    }

    /// Applies an AMD CRL (from the KDS, `/vcek/v1/{product}/crl`): when its issuer is the
    /// ARK that anchors a report's chain, it must be signed by that ARK, be current, and not
    /// list the ASK or ASVK the chain goes through. CRLs of other products are left aside.
    pub fn with_amd_crl(mut self, crl: Crl) -> Self {
        self.amd_crls.push(crl);
        self
    }

    /// Applies Intel's root CA CRL (it must not list the quote's PCK CA) and PCK CRL (it
    /// must not list the PCK certificate, and must come from the chain's CA), each signed by
    /// its issuer and current, in addition to those the collateral carries.
    pub fn with_intel_crls(mut self, root_ca_crl: Option<Crl>, pck_crl: Option<Crl>) -> Self {
        if root_ca_crl.is_some() {
            self.root_ca_crl = root_ca_crl;
        }
        if pck_crl.is_some() {
            self.pck_crl = pck_crl;
        }
        self
    }

    /// Trusts the emulated ARK of `v` (the policy must also allow emulated evidence).
    pub fn with_emulated(mut self, v: emulated::Verifier) -> Self {
        self.emulated = Some(v);
        self
    }

    /// Checks TDX quotes against `collateral` too.
    pub fn with_tdx_collateral(mut self, collateral: Collateral) -> Self {
        self.collateral = Some(collateral);
        self
    }

    /// Verifies as of `unix_secs` (certificate validity, collateral freshness) instead of
    /// the system clock.
    pub fn at_time(mut self, unix_secs: u64) -> Self {
        self.now = Some(unix_secs);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn now(&self) -> u64 {
        self.now.unwrap_or_else(crate::time::now_unix)
    }

    /// Verifies an evidence blob. `report_data_for` gives the REPORT_DATA expected for the
    /// platform the evidence claims (the device computes the transcript hash with that
    /// platform kind); `None` means "not checked" (the policy's `report_data` still is).
    pub fn verify(
        &self,
        evidence: &[u8],
        report_data_for: &dyn Fn(PlatformKind) -> Option<[u8; 64]>,
    ) -> Verdict {
        let digest = Some(sha256_hex(evidence));
        match Evidence::decode(evidence) {
            Ok(ev) => {
                let expected = report_data_for(ev.platform);
                self.verify_decoded(&ev, expected.as_ref(), digest)
            }
            Err(e) => {
                let mut v = Verdict::unparsed(
                    evidence.get(5).copied().and_then(PlatformKind::from_u8),
                    Reason::new(ReasonKind::Malformed, e.to_string()),
                );
                v.evidence_sha256 = digest;
                v
            }
        }
    }

    /// The verdict on a report or quote that does not parse: malformed, plus whether the
    /// platform itself is allowed, so every reason is still reported together.
    fn unparsable(&self, platform: PlatformKind, e: &dyn std::fmt::Display) -> Verdict {
        let mut reasons: Vec<Reason> = self.policy.check_platform(platform).into_iter().collect();
        reasons.push(Reason::new(ReasonKind::Malformed, e.to_string()));
        Verdict::new(Some(platform), None, None, None, reasons)
    }

    /// Verifies decoded evidence against `expected_report_data` (if any) and the policy. The
    /// verdict's evidence digest is that of the evidence's encoding.
    pub fn verify_evidence(
        &self,
        ev: &Evidence,
        expected_report_data: Option<&[u8; 64]>,
    ) -> Verdict {
        let digest = ev.encode().ok().map(|b| sha256_hex(&b));
        self.verify_decoded(ev, expected_report_data, digest)
    }

    fn verify_decoded(
        &self,
        ev: &Evidence,
        expected_report_data: Option<&[u8; 64]>,
        digest: Option<String>,
    ) -> Verdict {
        let mut v = self.verify_parts(ev, expected_report_data);
        v.evidence_sha256 = digest;
        v
    }

    fn verify_parts(&self, ev: &Evidence, expected_report_data: Option<&[u8; 64]>) -> Verdict {
        match ev.platform {
            PlatformKind::Snp | PlatformKind::Emulated => {
                let report = match Report::parse(&ev.report) {
                    Ok(r) => r,
                    Err(e) => return self.unparsable(ev.platform, &e),
                };
                self.verify_snp_report(ev, &report, expected_report_data)
            }
            PlatformKind::Tdx => match Quote::parse(&ev.report) {
                Ok(q) => self.verify_tdx_quote(&q, expected_report_data),
                Err(e) => self.unparsable(ev.platform, &e),
            },
        }
    }

    /// Verifies a parsed SNP or emulated report (the evidence supplies the platform and the
    /// certificates).
    fn verify_snp_report(
        &self,
        ev: &Evidence,
        report: &Report,
        expected_report_data: Option<&[u8; 64]>,
    ) -> Verdict {
        let now = self.now();
        let (product, mut reasons) = match ev.platform {
            PlatformKind::Emulated => match &self.emulated {
                Some(v) => (None, v.verify(report, &ev.endorsement)),
                None => (
                    None,
                    vec![Reason::new(
                        ReasonKind::Platform,
                        "no emulated ARK public key is configured: emulated evidence cannot be verified",
                    )],
                ),
            },
            _ => {
                let chain = (!ev.chain.is_empty()).then_some(ev.chain.as_slice());
                let (v, r) = crate::snp::verify::verify(
                    report,
                    &ev.endorsement,
                    chain,
                    match &self.amd_roots {
                        Some(r) => r,
                        None => AmdRoots::pinned(),
                    },
                    &self.amd_crls,
                    Some(now),
                );
                (v.product, r)
            }
        };
        let turin = product.map_or_else(
            || {
                report
                    .cpuid
                    .and_then(|(f, m, _)| Product::from_cpuid(f, m))
                    .is_some_and(Product::turin_layout)
            },
            Product::turin_layout,
        );
        let tcb = report.reported_tcb_for(turin);
        let claims = Claims {
            platform: ev.platform,
            debug: report.debug(),
            vmpl: Some(report.vmpl),
            tcb: Some(tcb),
            measurement: &report.measurement,
            report_data: &report.report_data,
            host_data: Some(&report.host_data),
            rtmrs: None,
            tdx_tcb_status: None,
            detail: Detail::Snp { report, turin },
        };
        // Policy reasons first: they say what the evidence *is*; then how it failed.
        let mut all = self.policy.validate(&claims, expected_report_data);
        all.append(&mut reasons);
        Verdict::new(
            Some(ev.platform),
            Some(hex::encode(report.measurement)),
            Some(TcbInfo::Snp {
                product,
                reported: tcb,
                current: Tcb::from_raw(report.current_tcb, turin),
                committed: Tcb::from_raw(report.committed_tcb, turin),
                launch: Tcb::from_raw(report.launch_tcb, turin),
                current_firmware: firmware(report.current_version),
                committed_firmware: firmware(report.committed_version),
            }),
            Some(hex::encode(report.report_data)),
            all,
        )
    }

    /// Verifies a parsed TDX quote.
    fn verify_tdx_quote(&self, q: &Quote, expected_report_data: Option<&[u8; 64]>) -> Verdict {
        let trust = Trust {
            root: match &self.intel_root {
                Some(r) => r,
                None => intel_root(),
            },
            root_ca_crl: self.root_ca_crl.as_ref(),
            pck_crl: self.pck_crl.as_ref(),
        };
        let (v, mut reasons) =
            crate::tdx::verify::verify(q, &trust, self.collateral.as_ref(), Some(self.now()));
        let status = v.collateral.as_ref().map(|c| c.status.as_str());
        let claims = Claims {
            platform: PlatformKind::Tdx,
            debug: q.debug(),
            vmpl: None,
            tcb: None,
            measurement: &q.body.mr_td,
            report_data: &q.body.report_data,
            host_data: None,
            rtmrs: Some(&q.body.rtmrs),
            tdx_tcb_status: status,
            detail: Detail::Tdx {
                quote: q,
                pck: v.pck.as_ref(),
            },
        };
        let mut all = self.policy.validate(&claims, expected_report_data);
        all.append(&mut reasons);
        let mut verdict = Verdict::new(
            Some(PlatformKind::Tdx),
            Some(hex::encode(q.body.mr_td)),
            Some(TcbInfo::Tdx {
                quote_version: q.version,
                body_type: q.body_type,
                tee_tcb_svn: hex::encode(q.body.tee_tcb_svn),
                tee_tcb_svn2: q.body.tee_tcb_svn2.map(hex::encode),
                qe_svn: q.qe_report.isv_svn,
                pce_svn: v.pck.map(|p| p.pce_svn),
                fmspc: v.pck.map(|p| hex::encode(p.fmspc)),
                status: v.collateral.as_ref().map(|c| c.status.clone()),
                advisory_ids: v.collateral.map(|c| c.advisory_ids).unwrap_or_default(),
            }),
            Some(hex::encode(q.body.report_data)),
            all,
        );
        verdict.trailing_bytes = Some(q.trailing_len());
        verdict
    }
}

/// SHA-256 of `b`, hex.
fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// A firmware version (major, minor, build) as "major.minor.build".
fn firmware((major, minor, build): (u8, u8, u8)) -> String {
    format!("{major}.{minor}.{build}")
}

// The device keeps one verifier for its lifetime, possibly on a worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Verifier>();
    send_sync::<crate::emulated::Signer>();
};

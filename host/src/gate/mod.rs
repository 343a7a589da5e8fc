//! The attestation gate: the device serves no queue until the driver's evidence verifies.
//!
//! The driver reads the nonce (fresh on every reset) and the instance ID from the mailbox,
//! builds the transcript of what it negotiated, has its platform sign
//! `REPORT_DATA = SHA-512(domain || transcript)`, places the evidence in the pool and rings
//! the mailbox doorbell. The device rebuilds the transcript from what *it* observed and
//! asks its [`EvidenceVerifier`]; only an accepted verdict opens the gate.
//!
//! This module holds the gate's state and mailbox registers; `session` holds what the
//! device observed and [`Gate::judge`], which reads the evidence and gives the verdict.

mod session;

use ring::rand::{SecureRandom, SystemRandom};
use swiotlb_shared::pci::attest_mailbox as mb;
use swiotlb_shared::transcript::PlatformKind;

pub use session::{Judgement, ObservedSession, Submission, VerdictRecord};

/// Largest evidence the device reads from the pool: an SNP report (1184 bytes) with a VCEK
/// and a PEM chain, or a TDX quote with its PCK chain, fit in well under 64 KiB.
pub const MAX_EVIDENCE_LEN: u32 = 64 * 1024;

/// The verdict on one piece of evidence.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Whether the gate opens.
    pub accepted: bool,
    /// Platform the evidence came from ("snp", "tdx", "emulated", or "unknown").
    pub platform: String,
    /// Every reason for a rejection (empty when accepted).
    pub reasons: Vec<String>,
    /// Launch measurement, hex, when the evidence carries one.
    pub measurement: Option<String>,
    /// The REPORT_DATA the device expected, hex.
    pub expected_report_data: String,
}

/// REPORT_DATA the device expects for evidence of a given platform.
pub type ReportDataFor<'a> = dyn Fn(PlatformKind) -> Option<[u8; 64]> + 'a;

/// The project's verifier: `swiotlb-attest`, with its policy.
impl EvidenceVerifier for swiotlb_attest::Verifier {
    fn verify(&self, evidence: &[u8], report_data_for: &ReportDataFor<'_>) -> Verdict {
        let v = swiotlb_attest::Verifier::verify(self, evidence, report_data_for);
        let expected = v
            .platform
            .and_then(report_data_for)
            .map(|rd| rd.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default();
        Verdict {
            accepted: v.accepted,
            // `emulated` is its own platform kind, so the name already says EMULATED.
            platform: v
                .platform
                .map_or("unknown", PlatformKind::as_str)
                .to_string(),
            reasons: v
                .reasons
                .iter()
                .map(|r| format!("{:?}: {r}", r.kind))
                .collect(),
            measurement: v.measurement.clone(),
            expected_report_data: expected,
        }
    }
}

/// Verifies evidence against the device's own view of the session.
pub trait EvidenceVerifier: Send {
    /// Verifies `evidence` (signatures, chain, policy) and checks that its REPORT_DATA is
    /// `report_data_for(platform)`, the transcript hash the device computed for the
    /// platform the evidence claims.
    fn verify(&self, evidence: &[u8], report_data_for: &ReportDataFor<'_>) -> Verdict;
}

/// The gate's state, as the mailbox's STATE register shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    /// No evidence accepted yet.
    Awaiting,
    /// Evidence accepted: I/O is served.
    Accepted,
    /// Evidence rejected: the device needs a reset.
    Rejected,
    /// Attestation is off.
    NotRequired,
}

impl GateState {
    fn register(self) -> u32 {
        match self {
            Self::Awaiting => mb::STATE_AWAITING,
            Self::Accepted => mb::STATE_ACCEPTED,
            Self::Rejected => mb::STATE_REJECTED,
            Self::NotRequired => mb::STATE_NOT_REQUIRED,
        }
    }
}

/// What a mailbox write asks of the function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateRequest {
    /// Verify `len` bytes of evidence at bus address `addr`.
    Submit {
        /// Bus address (to be checked against the pool).
        addr: u64,
        /// Length (already bounded by [`MAX_EVIDENCE_LEN`]).
        len: u32,
    },
}

/// The gate.
pub struct Gate {
    verifier: Option<Box<dyn EvidenceVerifier>>,
    state: GateState,
    nonce: [u8; mb::NONCE_LEN],
    instance_id: [u8; mb::INSTANCE_ID_LEN],
    evidence_addr: u64,
    evidence_len: u32,
    reasons: u32,
    rng: SystemRandom,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("required", &self.verifier.is_some())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate that requires evidence checked by `verifier`, or none (`None`: attestation
    /// off, queues served without evidence).
    pub fn new(verifier: Option<Box<dyn EvidenceVerifier>>) -> Self {
        let rng = SystemRandom::new();
        let mut instance_id = [0u8; mb::INSTANCE_ID_LEN];
        // The system RNG only fails if the kernel has none; a zero ID is then visible in
        // every transcript rather than a crash.
        let _ = rng.fill(&mut instance_id);
        let mut g = Self {
            state: GateState::Awaiting,
            verifier,
            nonce: [0; mb::NONCE_LEN],
            instance_id,
            evidence_addr: 0,
            evidence_len: 0,
            reasons: 0,
            rng,
        };
        g.reset();
        g
    }

    /// Requires evidence checked by `verifier` from now on (the instance ID is kept).
    pub fn set_verifier(&mut self, verifier: Box<dyn EvidenceVerifier>) {
        self.verifier = Some(verifier);
        self.reset();
    }

    /// Whether attestation is required.
    pub fn required(&self) -> bool {
        self.verifier.is_some()
    }

    /// The state.
    pub fn state(&self) -> GateState {
        self.state
    }

    /// Whether queues may be served.
    pub fn open(&self) -> bool {
        matches!(self.state, GateState::Accepted | GateState::NotRequired)
    }

    /// The current nonce.
    pub fn nonce(&self) -> &[u8; mb::NONCE_LEN] {
        &self.nonce
    }

    /// The device's instance ID.
    pub fn instance_id(&self) -> &[u8; mb::INSTANCE_ID_LEN] {
        &self.instance_id
    }

    /// Device reset: a fresh nonce, the gate closed again (evidence for the previous nonce
    /// can never be replayed).
    pub fn reset(&mut self) {
        if self.rng.fill(&mut self.nonce).is_err() {
            // Without randomness no evidence can be fresh: keep the gate shut for good.
            self.nonce = [0; mb::NONCE_LEN];
            self.state = GateState::Rejected;
            tracing::error!("no system randomness: the attestation gate stays closed");
            return;
        }
        self.state = if self.required() {
            GateState::Awaiting
        } else {
            GateState::NotRequired
        };
        self.evidence_addr = 0;
        self.evidence_len = 0;
        self.reasons = 0;
    }

    /// The pool moved: evidence naming the old address no longer describes the session, so
    /// an accepted gate closes until the driver attests again.
    pub fn pool_moved(&mut self) {
        if self.state == GateState::Accepted {
            self.state = GateState::Awaiting;
        }
    }

    /// Reads mailbox registers at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        let mut regs = [0u8; 0x58];
        regs[0..4].copy_from_slice(&mb::MAGIC_VALUE.to_le_bytes());
        regs[4..8].copy_from_slice(&mb::VERSION_VALUE.to_le_bytes());
        regs[8..12].copy_from_slice(&self.state.register().to_le_bytes());
        regs[12..16].copy_from_slice(&self.reasons.to_le_bytes());
        regs[16..24].copy_from_slice(&self.evidence_addr.to_le_bytes());
        regs[24..28].copy_from_slice(&self.evidence_len.to_le_bytes());
        regs[32..64].copy_from_slice(&self.nonce);
        regs[64..80].copy_from_slice(&self.instance_id);
        regs[80..84].copy_from_slice(&MAX_EVIDENCE_LEN.to_le_bytes());
        regs[84..88].copy_from_slice(&u32::from(self.required()).to_le_bytes());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|j| regs.get(j))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes mailbox registers; returns a request when the doorbell was rung.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<GateRequest> {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        match (offset, data.len()) {
            (mb::EVIDENCE_ADDR, 8) => self.evidence_addr = v,
            (mb::EVIDENCE_ADDR, 4) => {
                self.evidence_addr = (self.evidence_addr & !0xffff_ffff) | (v & 0xffff_ffff)
            }
            (o, 4) if o == mb::EVIDENCE_ADDR + 4 => {
                self.evidence_addr = (self.evidence_addr & 0xffff_ffff) | (v << 32)
            }
            (mb::EVIDENCE_LEN, 4) => self.evidence_len = (v as u32).min(MAX_EVIDENCE_LEN),
            (mb::DOORBELL, 4) if v as u32 == mb::SUBMIT => {
                return Some(GateRequest::Submit {
                    addr: self.evidence_addr,
                    len: self.evidence_len,
                });
            }
            _ => {}
        }
        None
    }

    /// Verifies `evidence` and moves the gate. With attestation off there is nothing to
    /// verify: the gate stays open and the verdict says so.
    pub fn decide(&mut self, evidence: &[u8], report_data_for: &ReportDataFor<'_>) -> Verdict {
        let Some(v) = &self.verifier else {
            return Verdict {
                accepted: true,
                platform: "none".into(),
                reasons: vec!["attestation is off on this device".into()],
                measurement: None,
                expected_report_data: String::new(),
            };
        };
        // The verifier treats a missing REPORT_DATA as "not checked": never hand it one.
        let mut all = Vec::new();
        for p in PlatformKind::ALL {
            match report_data_for(p) {
                Some(rd) => all.push((p, rd)),
                None => return self.reject("the device cannot compute its own transcript"),
            }
        }
        let lookup = |p: PlatformKind| all.iter().find(|(k, _)| *k == p).map(|(_, rd)| *rd);
        let verdict = v.verify(evidence, &lookup);
        self.reasons = verdict.reasons.len() as u32;
        self.state = if verdict.accepted {
            GateState::Accepted
        } else {
            GateState::Rejected
        };
        verdict
    }

    /// Rejects without verifying (evidence unreadable, submitted at the wrong time).
    pub fn reject(&mut self, why: &str) -> Verdict {
        self.reasons = 1;
        self.state = GateState::Rejected;
        Verdict {
            accepted: false,
            platform: "unknown".into(),
            reasons: vec![why.to_string()],
            measurement: None,
            expected_report_data: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AcceptIf(Vec<u8>);
    impl EvidenceVerifier for AcceptIf {
        fn verify(&self, evidence: &[u8], rd: &ReportDataFor<'_>) -> Verdict {
            let expected = rd(PlatformKind::Emulated).unwrap_or([0; 64]);
            let ok = evidence == self.0.as_slice();
            Verdict {
                accepted: ok,
                platform: "emulated".into(),
                reasons: if ok { vec![] } else { vec!["mismatch".into()] },
                measurement: None,
                expected_report_data: expected.iter().map(|b| format!("{b:02x}")).collect(),
            }
        }
    }

    #[test]
    fn nonce_is_fresh_on_every_reset_and_gate_closes() {
        let mut g = Gate::new(Some(Box::new(AcceptIf(vec![1, 2, 3]))));
        let n1 = *g.nonce();
        assert!(!g.open());
        assert!(g.decide(&[1, 2, 3], &|_| Some([0; 64])).accepted);
        assert!(g.open());
        g.reset();
        assert_ne!(*g.nonce(), n1, "a reset draws a new nonce");
        assert!(!g.open(), "a reset closes the gate");
        assert!(!g.decide(&[9], &|_| Some([0; 64])).accepted);
        assert_eq!(g.state(), GateState::Rejected);
    }

    #[test]
    fn mailbox_registers_read_and_doorbell_submits() {
        let mut g = Gate::new(Some(Box::new(AcceptIf(vec![]))));
        let mut m = [0u8; 4];
        g.read(mb::MAGIC, &mut m);
        assert_eq!(&m, b"SWAT");
        g.write(mb::EVIDENCE_ADDR, &0x80_0000_1000u64.to_le_bytes());
        g.write(mb::EVIDENCE_LEN, &(1u32 << 30).to_le_bytes());
        let mut nonce = [0u8; 32];
        g.read(mb::NONCE, &mut nonce);
        assert_eq!(&nonce, g.nonce());
        assert_eq!(
            g.write(mb::DOORBELL, &mb::SUBMIT.to_le_bytes()),
            Some(GateRequest::Submit {
                addr: 0x80_0000_1000,
                len: MAX_EVIDENCE_LEN
            }),
            "length is clamped to the maximum"
        );
        assert_eq!(g.write(mb::DOORBELL, &7u32.to_le_bytes()), None);
    }

    #[test]
    fn gate_off_is_open_and_says_not_required() {
        let g = Gate::new(None);
        assert!(g.open());
        let mut s = [0u8; 4];
        g.read(mb::STATE, &mut s);
        assert_eq!(u32::from_le_bytes(s), mb::STATE_NOT_REQUIRED);
    }
}

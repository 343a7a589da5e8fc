//! The session the gate judges evidence against: what the device itself observed (PCI IDs,
//! features, the pool, the enabled queues, the nonce), collected when the driver rings the
//! mailbox doorbell, and the verdict on the evidence read from the pool.

use swiotlb_shared::audit::schema::AttestationVerdict;
use swiotlb_shared::layout::PoolWindow;
use swiotlb_shared::pci::{attest_mailbox as mb, status};
use swiotlb_shared::transcript::{
    DeviceIdentity, InstanceId, PlatformKind, QueueRings, Transcript, TranscriptError,
};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{Gate, Verdict};
use crate::audit::{AuditError, AuditHandle};
use crate::findings::{Finding, FindingKind};
use crate::pool::Pool;
use crate::virtio::transport::VirtioPciTransport;

/// What the device observed of a session, from which it rebuilds the transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedSession {
    /// The nonce of this reset.
    pub nonce: [u8; mb::NONCE_LEN],
    /// The device's instance ID.
    pub instance_id: [u8; mb::INSTANCE_ID_LEN],
    /// PCI vendor, device, subsystem vendor, subsystem IDs.
    pub pci_ids: [u16; 4],
    /// Features offered.
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Pool bus address.
    pub pool_base: u64,
    /// Pool size.
    pub pool_size: u64,
    /// Enabled queues, in index order.
    pub queues: Vec<QueueRings>,
}

impl ObservedSession {
    /// What the device itself observed of this session: the gate's nonce and instance ID,
    /// the function's PCI IDs, the transport's features and enabled queues, and the pool
    /// where it is decoded.
    pub fn observe(
        gate: &Gate,
        pci_ids: [u16; 4],
        transport: &VirtioPciTransport,
        window: PoolWindow,
    ) -> Self {
        Self {
            nonce: *gate.nonce(),
            instance_id: *gate.instance_id(),
            pci_ids,
            device_features: transport.device_features(),
            driver_features: transport.driver_features(),
            pool_base: window.base(),
            pool_size: window.size(),
            queues: transport
                .queues()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.queue.ready())
                .map(|(i, s)| QueueRings {
                    index: i as u16,
                    desc: s.queue.desc_table(),
                    avail: s.queue.avail_ring(),
                    used: s.queue.used_ring(),
                    size: s.queue.size(),
                })
                .collect(),
        }
    }

    /// The transcript of this session as signed by `platform`.
    pub fn transcript(&self, platform: PlatformKind) -> Transcript {
        Transcript {
            platform,
            nonce: self.nonce,
            identity: DeviceIdentity {
                vendor_id: self.pci_ids[0],
                device_id: self.pci_ids[1],
                subsystem_vendor_id: self.pci_ids[2],
                subsystem_id: self.pci_ids[3],
                instance_id: InstanceId::Short(self.instance_id),
            },
            device_features: self.device_features,
            driver_features: self.driver_features,
            pool_base: self.pool_base,
            pool_size: self.pool_size,
            queues: self.queues.clone(),
        }
    }

    /// REPORT_DATA for every platform, or why it cannot be computed.
    pub fn report_data_all(&self) -> Result<Vec<(PlatformKind, [u8; 64])>, TranscriptError> {
        PlatformKind::ALL
            .iter()
            .map(|p| self.transcript(*p).report_data().map(|rd| (*p, rd)))
            .collect()
    }
}

/// Evidence the driver submitted through the mailbox, with the parts of the function the
/// gate judges it against.
pub struct Submission<'a> {
    /// Bus address of the evidence (to be checked against the pool).
    pub addr: u64,
    /// Its length (already bounded by [`MAX_EVIDENCE_LEN`](super::MAX_EVIDENCE_LEN)).
    pub len: u32,
    /// PCI vendor, device, subsystem vendor, subsystem IDs, as config space shows them.
    pub pci_ids: [u16; 4],
    /// The transport: status, features and queues.
    pub transport: &'a VirtioPciTransport,
    /// The pool the evidence is read from.
    pub pool: &'a mut Pool,
}

/// What the gate made of one submission.
pub struct Judgement {
    /// The verdict; the gate has moved accordingly.
    pub verdict: Verdict,
    /// The finding the submission itself is (evidence outside the pool), to be recorded
    /// before the verdict.
    pub finding: Option<Finding>,
    /// The verdict's audit record.
    pub record: VerdictRecord,
}

/// The audit record of a verdict: the evidence as read and the transcript the device
/// checked it against (encoded; empty when there was none), kept so the verdict can be
/// re-checked offline.
pub struct VerdictRecord {
    verdict: AttestationVerdict,
    /// SHA-256 of the transcript, which an accepted verdict binds the log to.
    transcript_hash: Option<[u8; 32]>,
}

impl VerdictRecord {
    fn new(verdict: &Verdict, evidence: Vec<u8>, transcript: Vec<u8>) -> Self {
        let reason = if verdict.accepted {
            format!(
                "accepted: {} evidence binds the observed session",
                verdict.platform
            )
        } else {
            verdict.reasons.join("; ")
        };
        let transcript_hash = verdict.accepted.then(|| {
            let mut th = [0u8; 32];
            th.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &transcript).as_ref());
            th
        });
        Self {
            verdict: AttestationVerdict {
                passed: verdict.accepted,
                reason,
                evidence,
                transcript,
            },
            transcript_hash,
        }
    }

    /// Appends the verdict to the audit log; after an accepted one, the log's records are
    /// bound to the transcript hash.
    pub fn send(self, h: &AuditHandle) -> Result<(), AuditError> {
        h.attestation_verdict(self.verdict)?;
        if let Some(th) = self.transcript_hash {
            h.set_transcript_hash(th)?;
        }
        Ok(())
    }
}

impl Judgement {
    fn new(verdict: Verdict, evidence: Vec<u8>, transcript: Vec<u8>) -> Self {
        Self {
            record: VerdictRecord::new(&verdict, evidence, transcript),
            verdict,
            finding: None,
        }
    }
}

impl Gate {
    /// The driver rang the mailbox doorbell: reads its evidence from the pool and has it
    /// verified against the session as the device observed it, which opens or shuts the
    /// gate. Evidence is refused unread before DRIVER_OK, while the pool is not decoded, and
    /// when it does not lie in the pool.
    pub fn judge(&mut self, s: Submission<'_>) -> Judgement {
        let (addr, len) = (s.addr, s.len);
        if !self.required() {
            return Judgement::new(self.decide(&[], &|_| None), Vec::new(), Vec::new());
        }
        if s.transport.status() & status::DRIVER_OK == 0 {
            let v = self.reject("evidence submitted before DRIVER_OK: the session is not complete");
            return Judgement::new(v, Vec::new(), Vec::new());
        }
        let Ok(Some(view)) = s.pool.view() else {
            let v = self.reject("evidence submitted while the pool is not decoded");
            return Judgement::new(v, Vec::new(), Vec::new());
        };
        if len == 0 || !view.window.contains(addr, u64::from(len)) {
            let finding = Finding::new(
                FindingKind::EvidenceOutsidePool,
                "attestation evidence outside the pool",
            )
            .range(addr, u64::from(len));
            let v = self.reject("evidence outside the pool");
            return Judgement {
                finding: Some(finding),
                ..Judgement::new(v, Vec::new(), Vec::new())
            };
        }
        let mut evidence = vec![0u8; len as usize];
        if let Err(e) = view.mem.read_slice(&mut evidence, GuestAddress(addr)) {
            let v = self.reject(&format!("evidence unreadable: {e}"));
            return Judgement::new(v, Vec::new(), Vec::new());
        }
        let observed = ObservedSession::observe(self, s.pci_ids, s.transport, view.window);
        let verdict = match observed.report_data_all() {
            Ok(all) => self.decide(&evidence, &|p| {
                all.iter().find(|(k, _)| *k == p).map(|(_, rd)| *rd)
            }),
            Err(e) => self.reject(&format!("transcript: {e}")),
        };
        let transcript = PlatformKind::from_name(&verdict.platform)
            .and_then(|p| observed.transcript(p).encode().ok())
            .unwrap_or_default();
        Judgement::new(verdict, evidence, transcript)
    }
}

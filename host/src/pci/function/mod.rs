//! The virtio-pci function: configuration space, the register BAR, the pool BAR, the
//! transport and the device, as a vfio-user server presents them.
//!
//! Region layout (VFIO PCI region indexes): BAR0 holds the virtio registers and the MSI-X
//! table; BAR2 (64-bit, prefetchable) is the SWIOTLB pool; region 7 is config space.
//!
//! - `config_template`: the configuration space a new session finds;
//! - `registers`: region reads and writes, decoded to the structure they reach;
//! - `summary`: the state at the end of a session.
//!
//! The queues are served by the queue engine ([`crate::virtio::queue_engine`]), attestation
//! evidence is judged by the [`gate`](crate::gate); this module holds what ties them to PCI:
//! BARs, interrupts, findings and resets.

mod config_template;
mod registers;
mod summary;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use swiotlb_shared::audit::schema::{ConfigChange, PeripheralAction, PeripheralEvent};
use swiotlb_shared::pci::{cfg, device_layout as dl};
use thiserror::Error;

use super::config_space::ConfigSpace;
use super::interrupts::{Interrupts, IrqAction, IrqError};
use crate::audit::{AuditError, AuditHandle};
use crate::findings::{Finding, FindingCounters, FindingKind};
use crate::gate::{EvidenceVerifier, Gate, Submission, Verdict};
use crate::pool::{Pool, PoolError};
use crate::virtio::metrics::DmaCounters;
use crate::virtio::queue_engine::{self, Deferred, QueueHost, QueueParts, Rearm};
use crate::virtio::transport::{Policy, VirtioPciTransport};
use crate::virtio::VirtioDevice;

pub use summary::SessionSummary;

/// VFIO region index of the register BAR.
pub const REGION_REGS: u32 = dl::REGS_BAR as u32;
/// VFIO region index of the pool BAR.
pub const REGION_POOL: u32 = dl::POOL_BAR as u32;
/// VFIO region index of PCI config space.
pub const REGION_CONFIG: u32 = 7;
/// Number of VFIO regions of a PCI device (BARs 0-5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;
/// Widest single access to the register BAR (one 64-bit register).
pub const MAX_REG_ACCESS: usize = 8;

/// Errors of region access.
#[derive(Debug, Error)]
pub enum AccessError {
    /// The region does not exist or has size zero.
    #[error("region {0} does not exist")]
    NoRegion(u32),
    /// The access does not lie inside the region.
    #[error("access at {offset:#x} of {len} bytes is outside region {region}")]
    OutOfRange {
        /// Region index.
        region: u32,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: usize,
    },
    /// Register accesses are 1 to 8 bytes.
    #[error("register access of {0} bytes (1 to 8 allowed)")]
    BadWidth(usize),
    /// Reading or writing the pool file failed.
    #[error("pool access failed")]
    Pool(#[source] std::io::Error),
}

impl AccessError {
    /// The errno a vfio-user server answers with.
    pub fn errno(&self) -> u32 {
        match self {
            Self::Pool(_) => libc::EIO as u32,
            _ => libc::EINVAL as u32,
        }
    }
}

/// The function.
pub struct VirtioPciFunction {
    template: ConfigSpace,
    config: ConfigSpace,
    pool: Pool,
    transport: VirtioPciTransport,
    device: Box<dyn VirtioDevice + Send>,
    policy: Policy,
    interrupts: Interrupts,
    isr: u8,
    msix_table: Vec<u8>,
    findings: Arc<FindingCounters>,
    dma: Arc<DmaCounters>,
    trapped_pool: AtomicU64,
    pool_moves: u64,
    last_pool_address: Option<u64>,
    gate: Gate,
    audit: Option<AuditHandle>,
    /// Queues notified while the gate was shut, served once it opens.
    deferred: Deferred,
    last_verdict: Option<Verdict>,
}

impl VirtioPciFunction {
    /// A function presenting `device` with a pool of `pool_size` bytes.
    pub fn new(
        device: Box<dyn VirtioDevice + Send>,
        pool_size: u64,
        policy: Policy,
    ) -> Result<Self, PoolError> {
        let pool = Pool::new(pool_size)?;
        let msix_vectors = device.num_queues() + 1;
        let template = config_template::build(device.device_type(), pool_size, msix_vectors);
        let transport = VirtioPciTransport::new(device.as_ref(), policy, msix_vectors);
        Ok(Self {
            config: template.clone(),
            template,
            pool,
            transport,
            device,
            policy,
            interrupts: Interrupts::new(msix_vectors),
            isr: 0,
            msix_table: vec![0; usize::from(msix_vectors) * dl::MSIX_ENTRY_SIZE as usize],
            findings: Arc::new(FindingCounters::default()),
            dma: Arc::new(DmaCounters::default()),
            trapped_pool: AtomicU64::new(0),
            pool_moves: 0,
            last_pool_address: None,
            gate: Gate::new(None),
            audit: None,
            deferred: Deferred::default(),
            last_verdict: None,
        })
    }

    /// Requires attestation: queues are served only once evidence checked by `verifier`
    /// binds what the device observed.
    pub fn with_attestation(mut self, verifier: Box<dyn EvidenceVerifier>) -> Self {
        self.gate.set_verifier(verifier);
        self
    }

    /// Records every finding, every checked DMA, configuration changes, attestation
    /// verdicts and sessions in the tamper-evident audit log behind `handle`. A full log
    /// queue makes the device wait (back-pressure) rather than drop a record.
    pub fn with_audit(mut self, handle: AuditHandle) -> Self {
        self.audit = Some(handle);
        self
    }

    /// Sends one record to the audit log, if there is one.
    fn audit(&self, send: impl FnOnce(&AuditHandle) -> Result<(), AuditError>) {
        if let Some(h) = &self.audit {
            if let Err(e) = send(h) {
                tracing::error!(error = %e, "audit log record lost: the writer stopped");
            }
        }
    }

    /// A client connected (`peer` names it) or left (with its session summary).
    pub fn audit_peripheral(&self, connect: bool, peer: &str) {
        let session = (!connect).then(|| serde_json::to_value(self.summary()).unwrap_or_default());
        self.audit(|h| {
            h.peripheral(PeripheralEvent {
                action: if connect {
                    PeripheralAction::Connect
                } else {
                    PeripheralAction::Disconnect
                },
                peer: peer.to_string(),
                session,
            })
        });
    }

    /// The attestation gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The last attestation verdict of this session.
    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.last_verdict.as_ref()
    }

    /// The finding counters.
    pub fn findings(&self) -> Arc<FindingCounters> {
        self.findings.clone()
    }

    /// The DMA counters.
    pub fn dma(&self) -> Arc<DmaCounters> {
        self.dma.clone()
    }

    /// The pool (for its fd and size).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The transport (for negotiated state).
    pub fn transport(&self) -> &VirtioPciTransport {
        &self.transport
    }

    /// Size of region `index`, 0 if absent.
    pub fn region_size(&self, index: u32) -> u64 {
        match index {
            REGION_REGS => dl::REGS_BAR_SIZE,
            REGION_POOL => self.pool.size(),
            REGION_CONFIG => cfg::SIZE as u64,
            _ => 0,
        }
    }

    /// IRQ vectors of VFIO IRQ index `index`.
    pub fn irq_count(&self, index: u32) -> u32 {
        self.interrupts.count(index)
    }

    /// Function-level reset: pristine config space, transport and device reset, pool
    /// undecoded and zeroed, interrupts dropped. A new client always starts here.
    pub fn reset(&mut self) {
        self.config = self.template.clone();
        self.virtio_reset();
        self.interrupts.clear();
        self.msix_table.fill(0);
        self.pool.place(None);
        self.last_pool_address = None;
        self.last_verdict = None;
        self.audit(|h| {
            h.config_change(ConfigChange::Reset {
                reason: "function reset (new session or DEVICE_RESET)".into(),
            })
        });
        // Counters are per session: a new client starts from zero.
        self.findings = Arc::new(FindingCounters::default());
        self.dma = Arc::new(DmaCounters::default());
        self.trapped_pool.store(0, Ordering::Relaxed);
        self.pool_moves = 0;
        self.device.clear_metrics();
    }

    /// Device reset (the driver wrote 0 to device_status, or a function reset): transport
    /// and device state, and the pool zeroed, so nothing the driver posted before the reset
    /// (rings, requests, data) is seen or processed after it.
    fn virtio_reset(&mut self) {
        self.transport.reset();
        self.device.reset();
        if let Err(e) = self.pool.clear() {
            tracing::error!(error = %e, "clearing the pool on reset failed");
        }
        self.isr = 0;
        // A fresh nonce: evidence from before the reset can never be replayed.
        self.gate.reset();
        self.deferred.clear();
    }

    fn record(&mut self, f: Finding) {
        self.findings.record(&f);
        self.audit(|h| h.finding(&f));
        if f.kind.is_dma_violation()
            || matches!(
                f.kind,
                FindingKind::ChainTooLong
                    | FindingKind::DescriptorIndexOutOfRange
                    | FindingKind::ReadableAfterWritable
                    | FindingKind::ZeroLengthDescriptor
                    | FindingKind::ChainLengthOverflow
                    | FindingKind::BadIndirectTable
                    | FindingKind::AvailIndexJump
            )
        {
            self.needs_reset();
        }
    }

    fn needs_reset(&mut self) {
        if self.transport.set_needs_reset() {
            // Configuration-change notification (virtio 1.2, 4.1.5.3).
            self.isr |= 2;
            let v = self.transport.config_msix_vector();
            self.raise(v);
        }
    }

    fn raise(&mut self, msix_vector: u16) {
        let sent = if self.config.msix_active() {
            self.interrupts.msix(msix_vector)
        } else if !self.config.intx_disabled() {
            self.isr |= 1;
            self.interrupts.intx()
        } else {
            false
        };
        if sent {
            DmaCounters::add(&self.dma.interrupts, 1);
        }
    }

    fn follow_bars(&mut self) {
        let at = self.config.bar_address(dl::POOL_BAR);
        if self.pool.place(at) {
            if let Some(a) = at {
                let size = self.pool.size();
                let bar = dl::POOL_BAR;
                match self.last_pool_address {
                    Some(from) if from != a => {
                        self.pool_moves += 1;
                        self.gate.pool_moved();
                        self.audit(|h| {
                            h.config_change(ConfigChange::BarMoved {
                                bar,
                                from,
                                to: a,
                                size,
                            })
                        });
                    }
                    Some(_) => {}
                    None => self.audit(|h| {
                        h.config_change(ConfigChange::BarProgrammed {
                            bar,
                            address: a,
                            size,
                        })
                    }),
                }
                self.last_pool_address = Some(a);
            }
            tracing::info!(
                target: "swiotlb::config",
                pool_bus_address = ?at.map(|a| format!("{a:#x}")),
                "pool BAR decode changed"
            );
        }
    }

    /// A doorbell for queue `q`: process every available chain, then ask the driver for the
    /// next doorbell (EVENT_IDX `avail_event`, or the used ring's NO_NOTIFY flag cleared).
    pub fn notify(&mut self, q: u16) {
        self.notify_with(q, Rearm::Yes);
    }

    /// As [`notify`](Self::notify); with [`Rearm::No`] the driver is not asked for the next
    /// doorbell, because the caller goes on polling the queue (see
    /// [`poll_queues`](Self::poll_queues)).
    pub fn notify_with(&mut self, q: u16, rearm: Rearm) {
        queue_engine::notify(self, q, rearm);
    }

    /// Offset in the register BAR of queue `q`'s doorbell.
    pub fn doorbell_offset(&self, q: u16) -> u64 {
        u64::from(dl::NOTIFY_OFFSET) + u64::from(q) * u64::from(dl::NOTIFY_OFF_MULTIPLIER)
    }

    /// One look at every enabled queue without a doorbell, for a caller that polls: a queue
    /// whose available index moved is processed. With [`Rearm::No`] the driver is left
    /// believing the device is awake (no doorbell is asked for); the caller must make one
    /// last call with [`Rearm::Yes`] before it stops polling and sleeps, which asks for the
    /// next doorbell and processes whatever raced in. Returns whether any chain was taken.
    /// Does nothing before DRIVER_OK, while attestation is pending, or while the pool is not
    /// decoded (a doorbell then records what is wrong, as before).
    pub fn poll_queues(&mut self, rearm: Rearm) -> bool {
        queue_engine::poll(self, rearm)
    }

    /// PCI vendor, device, subsystem vendor and subsystem IDs, as config space shows them.
    fn pci_ids(&self) -> [u16; 4] {
        let mut ids = [0u8; 8];
        let _ = self.config.read(0, &mut ids[..4]);
        let _ = self
            .config
            .read(u64::from(cfg::SUBSYSTEM_VENDOR_ID), &mut ids[4..]);
        [
            u16::from_le_bytes([ids[0], ids[1]]),
            u16::from_le_bytes([ids[2], ids[3]]),
            u16::from_le_bytes([ids[4], ids[5]]),
            u16::from_le_bytes([ids[6], ids[7]]),
        ]
    }

    /// The driver rang the attestation doorbell: the gate judges its evidence against the
    /// session as the device observed it. A rejection is a finding and needs a reset; an
    /// acceptance serves the doorbells held back meanwhile.
    fn attest(&mut self, addr: u64, len: u32) {
        let submission = Submission {
            addr,
            len,
            pci_ids: self.pci_ids(),
            transport: &self.transport,
            pool: &mut self.pool,
        };
        let judgement = self.gate.judge(submission);
        if let Some(f) = judgement.finding {
            self.record(f);
        }
        self.audit(|h| judgement.record.send(h));
        let verdict = judgement.verdict;
        tracing::info!(
            target: "swiotlb::attestation",
            accepted = verdict.accepted,
            platform = %verdict.platform,
            reasons = ?verdict.reasons,
            "attestation verdict"
        );
        if !verdict.accepted {
            self.record(Finding::new(
                FindingKind::AttestationRejected,
                format!("evidence rejected: {}", verdict.reasons.join("; ")),
            ));
            self.needs_reset();
        }
        self.last_verdict = Some(verdict);
        if self.gate.open() {
            queue_engine::serve_deferred(self);
        }
    }

    /// Applies a SET_IRQS.
    pub fn set_irqs(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
    ) -> Result<(), IrqError> {
        self.interrupts.set(index, start, count, action)
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }
}

/// The queue engine works on the transport, the device and the pool; findings, resets and
/// interrupts go through the function, which knows how the driver listens.
impl QueueHost for VirtioPciFunction {
    fn parts(&mut self) -> QueueParts<'_> {
        QueueParts {
            transport: &mut self.transport,
            device: self.device.as_mut(),
            pool: &mut self.pool,
            gate_open: self.gate.open(),
            deferred: &mut self.deferred,
            dma: &self.dma,
            audit: self.audit.as_ref(),
        }
    }

    fn record_finding(&mut self, f: Finding) {
        self.record(f);
    }

    fn device_needs_reset(&mut self) {
        self.needs_reset();
    }

    fn interrupt(&mut self, msix_vector: u16) {
        self.raise(msix_vector);
    }
}

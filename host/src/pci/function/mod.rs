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

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use seccompiler::BpfProgram;
use swiotlb_shared::features::{VIRTIO_BLK_F_MQ, VIRTIO_RING_F_INDIRECT_DESC};
use swiotlb_shared::layout::PoolWindow;
use virtio_queue::QueueT;

use swiotlb_shared::audit::schema::{ConfigChange, PeripheralAction, PeripheralEvent};
use swiotlb_shared::pci::{cfg, device_layout as dl};
use thiserror::Error;

use super::config_space::ConfigSpace;
use super::interrupts::{Interrupts, IrqAction, IrqError};
use crate::audit::{AuditError, AuditHandle};
use crate::cpus::Placement;
use crate::findings::{self, Finding, FindingCounters, FindingKind};
use crate::gate::{EvidenceVerifier, Gate, Submission, Verdict};
use crate::pool::{Pool, PoolError};
use crate::virtio::metrics::DmaCounters;
use crate::virtio::queue_engine::{self, Deferred, QueueHost, QueueParts, Rearm};
use crate::virtio::transport::{Policy, VirtioPciTransport};
use crate::virtio::workers::{lock, Job, QueueWorkers, Signals, WorkerError};
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
    /// Shared with the queue workers, which interrupt the driver themselves.
    interrupts: Arc<Mutex<Interrupts>>,
    isr: Arc<AtomicU8>,
    msix_table: Vec<u8>,
    findings: Arc<FindingCounters>,
    /// DMA counters of the queues this thread serves, and the interrupts it sends.
    dma: Arc<DmaCounters>,
    /// Each queue worker's own DMA counters, by queue; summed with `dma` in the summary.
    queue_dma: Vec<Arc<DmaCounters>>,
    /// A parked thread per queue, when the process started them.
    workers: Option<QueueWorkers>,
    /// The run of the workers in progress: what they share, and what it was started for.
    run: Option<(Arc<Signals>, RunKey)>,
    /// The client's doorbell eventfds (ioeventfds), by queue, for the workers to wait on.
    doorbells: Vec<Arc<OwnedFd>>,
    /// How long a worker polls its ring after the last chain (zero: never).
    worker_poll: Duration,
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
        mut device: Box<dyn VirtioDevice + Send>,
        pool_size: u64,
        policy: Policy,
    ) -> Result<Self, PoolError> {
        let mut pool = Pool::new(pool_size)?;
        let pinned = device.attach_pool(pool.mapping());
        pool.set_pinned(pinned);
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
            interrupts: Arc::new(Mutex::new(Interrupts::new(msix_vectors))),
            isr: Arc::new(AtomicU8::new(0)),
            msix_table: vec![0; usize::from(msix_vectors) * dl::MSIX_ENTRY_SIZE as usize],
            findings: Arc::new(FindingCounters::default()),
            dma: Arc::new(DmaCounters::default()),
            queue_dma: (0..msix_vectors - 1).map(|_| Arc::default()).collect(),
            workers: None,
            run: None,
            doorbells: Vec::new(),
            worker_poll: Duration::ZERO,
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

    /// Starts a parked worker thread per queue (when the device has more than one), each
    /// moving to its CPU of `cpus` and installing `filter` on itself first: once the driver
    /// negotiates VIRTIO_BLK_F_MQ, every queue is served on its own thread
    /// ([`crate::virtio::workers`]). Without this, or when MQ is not negotiated, the thread
    /// that owns the function serves every queue.
    pub fn with_queue_workers(
        mut self,
        filter: Option<Arc<BpfProgram>>,
        cpus: Option<&Placement>,
    ) -> Result<Self, WorkerError> {
        let n = self.transport.queues().len() as u16;
        if crate::virtio::workers::worker_threads(n) > 0 {
            self.workers = Some(QueueWorkers::spawn(n, filter, cpus)?);
        }
        Ok(self)
    }

    /// Queue workers poll their ring for `budget` after the last chain before sleeping.
    pub fn set_worker_poll(&mut self, budget: Duration) {
        self.worker_poll = budget;
    }

    /// The client's doorbell eventfds, by queue: queue workers wait on these. Parks the
    /// workers; the next register access starts them again with the new doorbells.
    pub fn set_doorbells(&mut self, fds: Vec<Arc<OwnedFd>>) {
        self.park_workers();
        self.doorbells = fds;
    }

    /// Whether queue workers are serving (the caller then leaves the rings to them).
    pub fn workers_serving(&self) -> bool {
        self.workers.as_ref().is_some_and(QueueWorkers::any_serving)
    }

    /// Whether a worker serves queue `q` (its doorbell eventfd is the worker's to wait on).
    pub fn worker_serves(&self, q: u16) -> bool {
        self.workers.as_ref().is_some_and(|w| w.serving(q))
    }

    /// Parks every queue worker: each finishes its pass (every chain it took completed and
    /// published) and hands its ring state back. What they found is folded into the status.
    pub fn park_workers(&mut self) {
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        for (q, queue) in w.park_all() {
            if let Some(slot) = self.transport.queue_mut(q) {
                slot.queue = queue;
            }
        }
        self.absorb_worker_findings();
        self.run = None;
    }

    /// A worker flagged a finding that needs a reset: the status says so from now on.
    fn absorb_worker_findings(&mut self) {
        if let Some((signals, _)) = &self.run {
            if signals.needs_reset.load(Ordering::Acquire) {
                self.transport.set_needs_reset();
            }
        }
    }

    /// What a run of the workers depends on: when any of it changes, they are parked and
    /// started again (or left parked).
    fn run_key(&mut self) -> Option<RunKey> {
        self.workers.as_ref()?;
        let mq = self.transport.negotiated(VIRTIO_BLK_F_MQ);
        if !mq || !self.transport.live() || !self.gate.open() {
            return None;
        }
        let window = self.pool.view().ok().flatten()?.window;
        Some(RunKey {
            window,
            msix_active: self.config.msix_active(),
            intx_disabled: self.config.intx_disabled(),
            config_vector: self.transport.config_msix_vector(),
            doorbells: self.doorbells.len(),
        })
    }

    /// Starts, keeps or parks the queue workers for the state the function is in now: they
    /// serve while the driver negotiated MQ, the device is live, the gate is open and the
    /// pool is decoded.
    fn sync_workers(&mut self) {
        self.absorb_worker_findings();
        let want = self.run_key();
        if self.run.as_ref().map(|(_, k)| k) == want.as_ref() {
            return;
        }
        self.park_workers();
        if let Some(key) = want {
            self.start_workers(key);
        }
    }

    fn start_workers(&mut self, key: RunKey) {
        let Ok(Some(view)) = self.pool.view() else {
            return;
        };
        let signals = Arc::new(Signals {
            findings: self.findings.clone(),
            audit: self.audit.clone(),
            needs_reset: Default::default(),
            interrupts: self.interrupts.clone(),
            isr: self.isr.clone(),
            msix_active: key.msix_active,
            intx_disabled: key.intx_disabled,
            config_vector: key.config_vector,
        });
        let indirect = self.transport.negotiated(VIRTIO_RING_F_INDIRECT_DESC);
        let Some(w) = self.workers.as_mut() else {
            return;
        };
        for q in 0..self.transport.queues().len() as u16 {
            let Some(slot) = self.transport.queues().get(usize::from(q)) else {
                break;
            };
            if !slot.queue.ready() {
                continue; // A doorbell for it is a finding, on this thread.
            }
            // The worker's own copy; the one here is stale until it comes back on parking.
            let Ok(queue) = virtio_queue::Queue::try_from(slot.queue.state()) else {
                continue;
            };
            let msix_vector = slot.msix_vector;
            let Some(device) = self.device.queue_device(q) else {
                continue; // The device serves this queue only on this thread.
            };
            let Some(doorbell) = self
                .doorbells
                .get(usize::from(q))
                .cloned()
                .or_else(|| w.own_doorbell(q))
            else {
                continue;
            };
            let dma = self
                .queue_dma
                .get(usize::from(q))
                .cloned()
                .unwrap_or_default();
            let job = Job {
                q,
                queue,
                msix_vector,
                view: view.clone(),
                indirect,
                device,
                dma,
                signals: signals.clone(),
                doorbell,
                poll: self.worker_poll,
            };
            if w.start(job).is_err() {
                tracing::error!(
                    queue = q,
                    "queue worker busy: the queue is served on this thread"
                );
            }
        }
        tracing::debug!(target: "swiotlb::config", "queue workers started");
        self.run = Some((signals, key));
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
        lock(&self.interrupts).count(index)
    }

    /// Function-level reset: pristine config space, transport and device reset, pool
    /// undecoded and zeroed, interrupts dropped. A new client always starts here.
    pub fn reset(&mut self) {
        self.park_workers();
        self.config = self.template.clone();
        self.virtio_reset();
        lock(&self.interrupts).clear();
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
        self.queue_dma = self.queue_dma.iter().map(|_| Arc::default()).collect();
        self.trapped_pool.store(0, Ordering::Relaxed);
        self.pool_moves = 0;
        self.device.clear_metrics();
    }

    /// Device reset (the driver wrote 0 to device_status, or a function reset): transport
    /// and device state, and the pool zeroed, so nothing the driver posted before the reset
    /// (rings, requests, data) is seen or processed after it.
    fn virtio_reset(&mut self) {
        // No worker may look at a ring while the pool is zeroed and the queues reset.
        self.park_workers();
        self.transport.reset();
        self.device.reset();
        if let Err(e) = self.pool.clear() {
            tracing::error!(error = %e, "clearing the pool on reset failed");
        }
        self.isr.store(0, Ordering::Release);
        // A fresh nonce: evidence from before the reset can never be replayed.
        self.gate.reset();
        self.deferred.clear();
    }

    fn record(&mut self, f: Finding) {
        self.findings.record(&f);
        self.audit(|h| h.finding(&f));
        if findings::needs_reset(f.kind) {
            self.needs_reset();
        }
    }

    fn needs_reset(&mut self) {
        if self.transport.set_needs_reset() {
            // Configuration-change notification (virtio 1.2, 4.1.5.3).
            self.isr.fetch_or(2, Ordering::AcqRel);
            let v = self.transport.config_msix_vector();
            self.raise(v);
        }
    }

    fn raise(&mut self, msix_vector: u16) {
        let sent = if self.config.msix_active() {
            lock(&self.interrupts).msix(msix_vector)
        } else if !self.config.intx_disabled() {
            self.isr.fetch_or(1, Ordering::AcqRel);
            lock(&self.interrupts).intx()
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
        if self.workers.as_ref().is_some_and(|w| w.ring(q)) {
            return; // Its worker serves it.
        }
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
        if self.workers_serving() {
            return false; // The workers poll their own rings.
        }
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
        lock(&self.interrupts).set(index, start, count, action)
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }
}

/// What a run of the queue workers was started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunKey {
    window: PoolWindow,
    msix_active: bool,
    intx_disabled: bool,
    config_vector: u16,
    doorbells: usize,
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

//! The queue engine: what a doorbell, or a poll, does to a virtqueue. Every available chain
//! is checked against the pool before the device sees it, handed to the device, returned on
//! the used ring, and the driver is asked for its next doorbell (re-armed) or not, as the
//! caller says.
//!
//! The engine knows virtio, not PCI. It reaches the function around it through
//! `QueueHost`, which says how a finding is recorded, how the device is marked as needing
//! a reset and how the driver is interrupted (cloud-hypervisor keeps interrupt delivery
//! behind its transport's `VirtioInterrupt` the same way).

use std::sync::atomic::Ordering;

use swiotlb_shared::features::VIRTIO_RING_F_INDIRECT_DESC;
use swiotlb_shared::pci::status;
use virtio_queue::QueueT;

use crate::audit::AuditHandle;
use crate::findings::{Finding, FindingKind};
use crate::pool::{Pool, PoolGuestMemory, PoolView};
use crate::virtio::chain::{ChainContext, CheckedChain};
use crate::virtio::device::{Handled, QueueDevice, VirtioDevice};
use crate::virtio::metrics::DmaCounters;
use crate::virtio::transport::VirtioPciTransport;

/// Whether processing a queue asks the driver for its next doorbell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rearm {
    /// Yes: the device is about to wait for a doorbell.
    Yes,
    /// No: the device goes on polling the queue, so doorbells would be wasted.
    No,
}

/// Doorbells rung while the attestation gate was shut, one bit a queue, served once it
/// opens. A device has at most 64 queues here; a doorbell for a higher one is not kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Deferred(u64);

impl Deferred {
    /// Remembers a doorbell for queue `q`.
    pub(crate) fn defer(&mut self, q: u16) {
        self.0 |= 1u64.checked_shl(u32::from(q)).unwrap_or(0);
    }

    /// Forgets every deferred doorbell (a reset).
    pub(crate) fn clear(&mut self) {
        self.0 = 0;
    }

    /// The deferred queues, in index order.
    fn queues(self) -> impl Iterator<Item = u16> {
        (0..64u16).filter(move |q| self.0 & (1u64 << q) != 0)
    }
}

/// The parts of the function one engine step works on, borrowed apart.
pub(crate) struct QueueParts<'a> {
    /// The transport, holding the queues.
    pub transport: &'a mut VirtioPciTransport,
    /// The device the checked chains go to.
    pub device: &'a mut dyn VirtioDevice,
    /// The pool, mapped when it is decoded.
    pub pool: &'a mut Pool,
    /// Whether the attestation gate lets queues be served.
    pub gate_open: bool,
    /// Doorbells held back while the gate is shut.
    pub deferred: &'a mut Deferred,
    /// DMA counters of the session.
    pub dma: &'a DmaCounters,
    /// The audit log, if there is one: every checked chain is recorded.
    pub audit: Option<&'a AuditHandle>,
}

/// How the engine reaches the function around it.
pub(crate) trait QueueHost {
    /// The parts an engine step works on.
    fn parts(&mut self) -> QueueParts<'_>;
    /// A policy violation: count it, log it, and set DEVICE_NEEDS_RESET where it calls for
    /// one.
    fn record_finding(&mut self, f: Finding);
    /// The device cannot go on (the pool cannot be mapped): set DEVICE_NEEDS_RESET.
    fn device_needs_reset(&mut self);
    /// Interrupt the driver on `msix_vector`, in whatever way it enabled.
    fn interrupt(&mut self, msix_vector: u16);
}

/// What a doorbell leads to.
enum Doorbell {
    /// Nothing: before DRIVER_OK, or deferred until the gate opens.
    Ignore,
    /// A finding: the doorbell is wrong.
    Refuse(Finding),
    /// The pool cannot be mapped.
    Unmappable,
    /// Serve the queue in this pool.
    Serve(PoolView),
}

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Processed {
    /// Chains were taken.
    pub took: bool,
    /// The driver asked to be interrupted for them, on this vector.
    pub interrupt: Option<u16>,
}

/// A doorbell for queue `q`: process every available chain, then, with [`Rearm::Yes`], ask
/// the driver for the next doorbell (EVENT_IDX `avail_event`, or the used ring's NO_NOTIFY
/// flag cleared).
pub(crate) fn notify(host: &mut impl QueueHost, q: u16, rearm: Rearm) {
    match doorbell(host.parts(), q) {
        Doorbell::Ignore => {}
        Doorbell::Refuse(f) => host.record_finding(f),
        Doorbell::Unmappable => host.device_needs_reset(),
        Doorbell::Serve(view) => {
            run_queue(host, q, &view, rearm);
        }
    }
}

fn doorbell(p: QueueParts<'_>, q: u16) -> Doorbell {
    if !p.transport.live() {
        if p.transport.status() & status::DEVICE_NEEDS_RESET == 0 {
            tracing::debug!(queue = q, "notification before DRIVER_OK ignored");
        }
        return Doorbell::Ignore;
    }
    let Some(ready) = p
        .transport
        .queues()
        .get(usize::from(q))
        .map(|s| s.queue.ready())
    else {
        return Doorbell::Refuse(Finding::new(
            FindingKind::BadQueueNotify,
            format!("notification for nonexistent queue {q}"),
        ));
    };
    if !ready {
        return Doorbell::Refuse(
            Finding::new(
                FindingKind::BadQueueNotify,
                "notification for a queue not enabled",
            )
            .at(q, None),
        );
    }
    if !p.gate_open {
        // No I/O before the evidence verifies: remember the doorbell for later.
        p.deferred.defer(q);
        tracing::debug!(queue = q, "notification deferred: attestation pending");
        return Doorbell::Ignore;
    }
    match p.pool.view() {
        Ok(Some(v)) => Doorbell::Serve(v),
        Ok(None) => Doorbell::Refuse(
            Finding::new(
                FindingKind::PoolNotDecoded,
                "notification while the pool BAR is not decoded",
            )
            .at(q, None),
        ),
        Err(e) => {
            tracing::error!(error = %e, "pool cannot be mapped");
            Doorbell::Unmappable
        }
    }
}

/// The gate opened: serves, in queue order, every doorbell that rang while it was shut.
pub(crate) fn serve_deferred(host: &mut impl QueueHost) {
    let deferred = std::mem::take(host.parts().deferred);
    for q in deferred.queues() {
        notify(host, q, Rearm::Yes);
    }
}

/// One look at every enabled queue without a doorbell: a queue whose available index moved
/// is processed, and with [`Rearm::Yes`] every enabled queue is, to ask for its next
/// doorbell and take what raced in. Returns whether any chain was taken. The caller's side
/// of the contract is on [`VirtioPciFunction::poll_queues`](crate::VirtioPciFunction).
pub(crate) fn poll(host: &mut impl QueueHost, rearm: Rearm) -> bool {
    let p = host.parts();
    if !p.transport.live() || !p.gate_open {
        return false;
    }
    let Ok(Some(view)) = p.pool.view() else {
        return false;
    };
    let mut took = false;
    for q in 0..p.transport.queues().len() {
        let q = q as u16;
        let p = host.parts();
        let Some(slot) = p.transport.queues().get(usize::from(q)) else {
            break;
        };
        if !slot.queue.ready() {
            continue;
        }
        let moved = slot
            .queue
            .avail_idx(&*view.mem, Ordering::Acquire)
            .map_or(true, |a| a.0 != slot.queue.next_avail());
        if moved || rearm == Rearm::Yes {
            took |= run_queue(host, q, &view, rearm);
        }
    }
    took
}

/// Processes queue `q` and interrupts the driver if it asked to be; returns whether any
/// chain was taken.
fn run_queue(host: &mut impl QueueHost, q: u16, view: &PoolView, rearm: Rearm) -> bool {
    let result = {
        let p = host.parts();
        let indirect = p.transport.negotiated(VIRTIO_RING_F_INDIRECT_DESC);
        let (dma, audit, device) = (p.dma, p.audit, p.device);
        let Some(slot) = p.transport.queue_mut(q) else {
            return false;
        };
        let mut on_device = OnDevice { device, q };
        process_queue(
            QueueWork {
                q,
                queue: &mut slot.queue,
                msix_vector: slot.msix_vector,
                device: &mut on_device,
                indirect,
                dma,
                audit,
            },
            view,
            rearm,
        )
    };
    match result {
        Ok(Processed { took, interrupt }) => {
            if let Some(v) = interrupt {
                host.interrupt(v);
            }
            took
        }
        Err(r) => {
            host.record_finding(r.finding);
            if let Some(head) = r.head {
                if let Some(slot) = host.parts().transport.queue_mut(q) {
                    publish_rejected(&mut slot.queue, &view.mem, head);
                }
            }
            true
        }
    }
}

/// The whole device, seen as the part serving queue `q`.
struct OnDevice<'a> {
    device: &'a mut dyn VirtioDevice,
    q: u16,
}

impl QueueDevice for OnDevice<'_> {
    fn handle_chain(&mut self, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled {
        self.device.handle_chain(self.q, mem, chain)
    }

    fn complete(&mut self, mem: &PoolGuestMemory, done: &mut dyn FnMut(u16, u32)) {
        self.device.complete(self.q, mem, done);
    }
}

/// What one pass over one queue works on, whichever thread makes it.
pub(crate) struct QueueWork<'a> {
    /// The queue's index.
    pub q: u16,
    /// Its ring state.
    pub queue: &'a mut virtio_queue::Queue,
    /// Its MSI-X vector.
    pub msix_vector: u16,
    /// The part of the device serving it.
    pub device: &'a mut dyn QueueDevice,
    /// VIRTIO_RING_F_INDIRECT_DESC was negotiated.
    pub indirect: bool,
    /// Where its checked DMAs are counted.
    pub dma: &'a DmaCounters,
    /// The audit log, if there is one: every checked chain is recorded.
    pub audit: Option<&'a AuditHandle>,
}

/// A pass that ended on a finding.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// What is wrong.
    pub finding: Finding,
    /// The chain that was refused, to be returned on the used ring with nothing written
    /// ([`publish_rejected`]) once the finding is recorded, so that a driver which sees it
    /// also sees DEVICE_NEEDS_RESET.
    pub head: Option<u16>,
}

impl From<Finding> for Rejected {
    fn from(finding: Finding) -> Self {
        Self {
            finding,
            head: None,
        }
    }
}

/// Returns refused chain `head` with nothing written, so the driver is not left waiting.
pub(crate) fn publish_rejected(queue: &mut virtio_queue::Queue, mem: &PoolGuestMemory, head: u16) {
    let _ = queue.add_used(mem, head, 0);
}

/// Processes one queue: what was taken and whether the driver must be interrupted.
pub(crate) fn process_queue(
    w: QueueWork<'_>,
    view: &PoolView,
    rearm: Rearm,
) -> Result<Processed, Rejected> {
    let QueueWork {
        q,
        queue,
        msix_vector,
        device,
        indirect,
        dma,
        audit,
    } = w;
    let mem = &*view.mem;
    // Sent when dropped: on every way out of this pass, before the caller records a
    // finding, so the log keeps the device's order.
    let mut audit_batch = audit.map(|h| h.dma_batch());
    VirtioPciTransport::check_rings(q, queue, Some(view.window))?;
    let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(|e| {
        Finding::new(
            FindingKind::RingOutsidePool,
            format!("available ring unreadable: {e}"),
        )
        .at(q, None)
    })?;
    let pending = avail - std::num::Wrapping(queue.next_avail());
    if pending.0 > queue.size() {
        return Err(Finding::new(
            FindingKind::AvailIndexJump,
            format!(
                "available index moved by {} on a queue of {}",
                pending.0,
                queue.size()
            ),
        )
        .at(q, None)
        .into());
    }
    let ctx_base = ChainContext {
        mem,
        window: view.window,
        desc_table: queue.desc_table(),
        queue_size: queue.size(),
        indirect,
        queue: q,
    };
    let mut used_any = false;
    loop {
        // No doorbells while the device is taking chains (with EVENT_IDX this is the
        // stale `avail_event`; without, the used ring's NO_NOTIFY flag).
        let _ = queue.disable_notification(mem);
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            DmaCounters::add(&dma.chains, 1);
            match ctx_base.check(head) {
                Ok(c) => {
                    if let Some(b) = &mut audit_batch {
                        // Every descriptor of the chain; the pass's chains go to the log
                        // in one message. Blocks when the log queue is full:
                        // back-pressure, never a dropped record.
                        let descs = c.descs.iter().map(|d| (d.addr, d.len, d.writable));
                        if let Err(e) = b.record_chain(q, head, descs) {
                            tracing::error!(error = %e, "audit log DMA record lost");
                        }
                    }
                    // From the chain's totals: a few adds per chain, not two per
                    // descriptor (each locked add costs ~2.5 ns; BENCHMARKS.md).
                    let readable = c.readable().len() as u64;
                    let writable = c.writable().len() as u64;
                    if readable != 0 {
                        DmaCounters::add(&dma.readable_descriptors, readable);
                        DmaCounters::add(&dma.readable_bytes, c.readable_len);
                    }
                    if writable != 0 {
                        DmaCounters::add(&dma.writable_descriptors, writable);
                        DmaCounters::add(&dma.writable_bytes, c.writable_len);
                    }
                    if c.indirect_tables != 0 {
                        DmaCounters::add(&dma.indirect_tables, u64::from(c.indirect_tables));
                    }
                    if let Handled::Done(used) = device.handle_chain(mem, &c) {
                        if let Err(e) = queue.add_used(mem, head, used) {
                            tracing::warn!(error = %e, "add_used failed");
                        }
                    }
                    used_any = true;
                }
                Err(f) => {
                    DmaCounters::add(&dma.chains_rejected, 1);
                    // The chains started before this one finish first; the caller records
                    // the finding and then returns this chain with nothing written; the
                    // device then needs a reset.
                    complete(device, queue, mem);
                    return Err(Rejected {
                        finding: f,
                        head: Some(head),
                    });
                }
            }
        }
        // The chains the device started in this pass (one batch of disk I/O) finish here,
        // before the driver is re-armed or interrupted.
        complete(device, queue, mem);
        // Ask for the next doorbell, then look again for chains that raced in. Without
        // EVENT_IDX this clears NO_NOTIFY, and virtio-queue reports no race.
        if rearm == Rearm::No || !queue.enable_notification(mem).unwrap_or(false) {
            break;
        }
    }
    let interrupt = used_any && queue.needs_notification(mem).unwrap_or(true);
    Ok(Processed {
        took: used_any,
        interrupt: interrupt.then_some(msix_vector),
    })
}

/// Finishes the chains `device` started and puts each on the used ring.
fn complete(device: &mut dyn QueueDevice, queue: &mut virtio_queue::Queue, mem: &PoolGuestMemory) {
    device.complete(mem, &mut |head, used| {
        if let Err(e) = queue.add_used(mem, head, used) {
            tracing::warn!(error = %e, "add_used failed");
        }
    });
}

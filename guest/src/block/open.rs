//! Bringing the block device up: how to open it ([`Options`]), feature negotiation with
//! VIRTIO_F_SWIOTLB, the pool's layout and mapping, queue and interrupt setup, DRIVER_OK,
//! and attestation through the device's mailbox; then what was negotiated ([`BlockInfo`]).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use swiotlb_shared::blk::{config as blk_config, BlkConfig};
use swiotlb_shared::features::{
    bit, feature_names, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_F_SWIOTLB, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::layout::{
    slots_for, LayoutError, PoolLayout, PoolWindow, MAX_QUEUE_SIZE, SLOT_SIZE,
};
use swiotlb_shared::pci::{common, status};
use swiotlb_shared::transcript::QueueRings;

use super::{BlockDriver, BlockError};
use crate::attest::mailbox::{self, MailboxError, Session};
use crate::attest::Attester;
use crate::pci::PciAccess;
use crate::pool::{PoolMemory, SlotAllocator};
use crate::ring::SplitRing;
use crate::virtio_pci::{TransportError, VirtioPci};

/// Default time to wait for the device before declaring it dead.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most request queues the driver sets up: each costs a ring block, indirect tables and a
/// share of the pool's slots, and an interrupt vector.
pub const MAX_QUEUES: u16 = 16;

/// How to open the device.
#[derive(Debug, Clone)]
pub struct Options {
    /// Decline VIRTIO_F_SWIOTLB (for testing the device's policy). The driver then reports
    /// what the device did and never reaches DRIVER_OK.
    pub decline_swiotlb: bool,
    /// How long to wait for a completion.
    pub timeout: Duration,
    /// Largest queue size to use.
    pub queue_size: u16,
    /// Use indirect descriptors when offered.
    pub indirect: bool,
    /// How long to poll the used ring for a completion before asking for an interrupt and
    /// sleeping on it (interrupts suppressed meanwhile, EVENT_IDX `used_event` left behind).
    /// Zero: sleep at once. Without interrupts the driver always polls (and naps after
    /// [`NAP_AFTER_SPINS`](super::NAP_AFTER_SPINS) empty looks).
    pub poll: Duration,
    /// Most requests in flight at once (the queue depth); 0: as many as the ring and the
    /// pool hold.
    pub max_in_flight: u16,
    /// Request queues to set up (1 to [`MAX_QUEUES`]), when the device offers
    /// VIRTIO_BLK_F_MQ with that many; the pool is split evenly between them. The driver
    /// returned by `open` drives queue 0, the others come from
    /// [`BlockDriver::take_queues`](super::BlockDriver::take_queues).
    pub queues: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            decline_swiotlb: false,
            timeout: DEFAULT_TIMEOUT,
            queue_size: MAX_QUEUE_SIZE,
            indirect: true,
            poll: Duration::ZERO,
            max_in_flight: 0,
            queues: 1,
        }
    }
}

/// What was negotiated and where the pool is.
#[derive(Debug, Clone, Serialize)]
pub struct BlockInfo {
    /// Features the device offered.
    pub device_features: u64,
    /// Features negotiated.
    pub driver_features: u64,
    /// Names of the negotiated features.
    pub negotiated: Vec<String>,
    /// Pool bus address.
    pub pool_bus_address: u64,
    /// Pool size in bytes.
    pub pool_size: u64,
    /// Disk capacity in bytes.
    pub capacity: u64,
    /// Read-only disk.
    pub read_only: bool,
    /// Queue size in use.
    pub queue_size: u16,
    /// Request queues the device has (`num_queues` with VIRTIO_BLK_F_MQ, else 1).
    pub device_queues: u16,
    /// Request queues set up, each with its own pool area.
    pub queues: u16,
    /// Bounce slots per queue area.
    pub slots: u64,
    /// What came of attestation: "accepted (snp|tdx|emulated)", "not required by the
    /// device", or "device has no attestation mailbox".
    pub attestation: String,
    /// The memory type of the driver's pool mapping on a real PCI function
    /// ("write-back (/dev/mem)", ...); `None` over vfio-user (shared RAM on both sides).
    pub pool_memory: Option<String>,
}

impl<P: PciAccess> BlockDriver<P> {
    /// Probes, negotiates VIRTIO_F_SWIOTLB, lays out the pool, sets up the queue and
    /// reaches DRIVER_OK.
    pub fn open(pci: P, opts: &Options) -> Result<Self, BlockError> {
        Self::open_attested(pci, opts, None)
    }

    /// As [`open`](Self::open), then proves the session to the device with evidence from
    /// `attester` when the device asks for it.
    pub fn open_attested(
        pci: P,
        opts: &Options,
        attester: Option<&dyn Attester>,
    ) -> Result<Self, BlockError> {
        let mut vp = VirtioPci::probe(pci)?;
        let mut wanted = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_F_SWIOTLB)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_RO)
            | bit(VIRTIO_BLK_F_DISCARD)
            | bit(VIRTIO_BLK_F_WRITE_ZEROES)
            | bit(VIRTIO_BLK_F_MQ);
        if opts.indirect {
            wanted |= bit(VIRTIO_RING_F_INDIRECT_DESC);
        }
        if opts.decline_swiotlb {
            wanted &= !bit(VIRTIO_F_SWIOTLB);
        }
        let offered = {
            vp.reset()?;
            vp.device_features()?
        };
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(BlockError::NotModern);
        }
        if !opts.decline_swiotlb && offered & bit(VIRTIO_F_SWIOTLB) == 0 {
            return Err(BlockError::NoSwiotlbOffered);
        }
        let pool_region = vp.caps().swiotlb;
        if !opts.decline_swiotlb && pool_region.is_none() {
            return Err(BlockError::NoPoolCapability);
        }
        let (_, accepted, ok) = vp.negotiate(wanted)?;
        let failed = status::ACKNOWLEDGE | status::DRIVER | status::FAILED;
        if !ok {
            let _ = vp.set_status(failed);
            if opts.decline_swiotlb {
                return Err(BlockError::SwiotlbRequired);
            }
            return Err(BlockError::FeaturesRefused {
                accepted,
                names: feature_names(accepted).join(","),
            });
        }
        if opts.decline_swiotlb {
            let _ = vp.set_status(failed | status::FEATURES_OK);
            return Err(BlockError::DeclinedButAccepted);
        }
        let pool = pool_region.ok_or(BlockError::NoPoolCapability)?;
        let bar_addr = vp.bar_address(pool.bar)?;
        let base = bar_addr
            .checked_add(pool.offset)
            .ok_or(TransportError::BadRegister {
                what: "pool BAR address",
                value: bar_addr,
            })?;
        let window = PoolWindow::new(base, pool.len)?;
        let mapping = vp
            .pci()
            .map_bar(pool.bar, pool.offset, pool.len)
            .map_err(TransportError::from)?;
        let mem = Arc::new(PoolMemory::new(mapping));
        // Whatever the device left in the pool is not ours to trust or to leak: start clean.
        mem.zero(0, pool.len as usize)?;

        // The whole virtio-blk configuration the device presents (up to what this driver
        // knows), read once and checked for the negotiated features, before any queue is
        // set up: it says how many there are.
        let cfg_len = (vp.caps().device.len as usize).min(blk_config::LEN);
        let mut cfg_bytes = vec![0u8; cfg_len];
        vp.read_device_config(0, &mut cfg_bytes)?;
        let config = match BlkConfig::parse(accepted, &cfg_bytes) {
            Ok(c) => c,
            Err(e) => {
                let _ = vp.set_status(failed | status::FEATURES_OK);
                return Err(e.into());
            }
        };
        let transport_queues = vp.num_queues()?;
        if config.num_queues > transport_queues {
            let _ = vp.set_status(failed | status::FEATURES_OK);
            return Err(BlockError::QueueCount {
                num_queues: config.num_queues,
                transport: transport_queues,
            });
        }
        let wanted = config.num_queues.min(opts.queues.max(1)).min(MAX_QUEUES);
        let max = vp.queue_max_size(0)?;
        if max == 0 {
            return Err(TransportError::BadRegister {
                what: "queue 0 size",
                value: 0,
            }
            .into());
        }
        // Largest power of two not above the device's maximum, ours, or the layout's.
        let cap = max.min(opts.queue_size).min(MAX_QUEUE_SIZE);
        let qsize = 1u16 << (15 - cap.leading_zeros().min(15));
        // As many of the wanted queues as the pool holds with a full area each: a small pool
        // (1 MiB holds one queue of 128) serves fewer queues rather than none.
        let (nq, layout) = fit_queues(pool.len, wanted, qsize)?;
        if nq < wanted {
            tracing::info!(
                wanted,
                queues = nq,
                pool = pool.len,
                "the pool holds fewer queues than wanted: using {nq}"
            );
        }
        for q in 1..nq {
            let m = vp.queue_max_size(q)?;
            if m < qsize {
                let _ = vp.set_status(failed | status::FEATURES_OK);
                return Err(TransportError::BadRegister {
                    what: "queue size",
                    value: u64::from(m),
                }
                .into());
            }
        }
        let indirect = accepted & bit(VIRTIO_RING_F_INDIRECT_DESC) != 0;
        if !indirect && qsize < 3 {
            let _ = vp.set_status(failed | status::FEATURES_OK);
            return Err(BlockError::QueueTooSmall(qsize));
        }
        let event_idx = accepted & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        // A vector per queue (queue i on vector i) and one for configuration changes.
        let mut irqs: Vec<Option<OwnedFd>> = (0..nq).map(|_| None).collect();
        let vectors = nq + 1;
        if let Some(fds) = vp
            .pci()
            .enable_msix(vectors)
            .map_err(TransportError::from)?
        {
            if fds.len() == usize::from(vectors) {
                vp.set_config_vector(nq)?;
                for (slot, fd) in irqs.iter_mut().zip(fds) {
                    *slot = Some(fd);
                }
            }
        }
        let mut rings = Vec::with_capacity(usize::from(nq));
        for (q, ql) in layout.queues.iter().enumerate() {
            let ring = SplitRing::new(mem.clone(), window, *ql, indirect, event_idx)?;
            let vector = if irqs[q].is_some() {
                q as u16
            } else {
                common::NO_VECTOR
            };
            vp.setup_queue(
                q as u16,
                qsize,
                (ring.desc_bus(), ring.avail_bus(), ring.used_bus()),
                vector,
            )?;
            rings.push(ring);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        vp.set_status(s | status::DRIVER_OK)?;
        let st = vp.status()?;
        if st & status::DEVICE_NEEDS_RESET != 0 || st & status::DRIVER_OK == 0 {
            return Err(BlockError::NeedsReset);
        }
        let capacity = config.capacity;
        let ql0 = layout.queues[0];
        let info = BlockInfo {
            device_features: offered,
            driver_features: accepted,
            negotiated: feature_names(accepted),
            pool_bus_address: base,
            pool_size: pool.len,
            capacity,
            read_only: accepted & bit(VIRTIO_BLK_F_RO) != 0,
            queue_size: qsize,
            device_queues: config.num_queues,
            queues: nq,
            slots: ql0.slot_count,
            attestation: String::new(),
            pool_memory: vp
                .pci()
                .pool_memory_type()
                .map(|t| t.describe().to_string()),
        };
        let all_rings: Vec<QueueRings> = rings
            .iter()
            .enumerate()
            .map(|(q, r)| QueueRings {
                index: q as u16,
                desc: r.desc_bus(),
                avail: r.avail_bus(),
                used: r.used_bus(),
                size: r.size(),
            })
            .collect();
        let vp = Arc::new(Mutex::new(vp));
        let mut drivers: Vec<Self> = rings
            .into_iter()
            .zip(irqs)
            .zip(layout.queues.iter())
            .enumerate()
            .map(|(q, ((ring, irq), ql))| Self {
                vp: vp.clone(),
                queue: q as u16,
                siblings: Vec::new(),
                mem: mem.clone(),
                layout: *ql,
                ring,
                slots: SlotAllocator::new(ql.slot_count),
                irq,
                timeout: opts.timeout,
                poll: opts.poll,
                max_in_flight: opts.max_in_flight,
                latencies: None,
                pending: (0..qsize).map(|_| None).collect(),
                info: BlockInfo {
                    slots: ql.slot_count,
                    ..info.clone()
                },
                stopped: false,
                window,
                config,
            })
            .collect();
        let siblings = drivers.split_off(1);
        let mut me = drivers.pop().ok_or(BlockError::QueueCount {
            num_queues: 0,
            transport: transport_queues,
        })?;
        match me.attest(attester, all_rings) {
            Ok(outcome) => {
                me.info.attestation = outcome.clone();
                me.siblings = siblings
                    .into_iter()
                    .map(|mut d| {
                        d.info.attestation = outcome.clone();
                        d
                    })
                    .collect();
                Ok(me)
            }
            Err(e) => {
                let _ = super::lock(&me.vp).set_status(s | status::DRIVER_OK | status::FAILED);
                Err(e)
            }
        }
    }

    /// Proves this session to the device through its attestation mailbox
    /// ([`mailbox::prove`]), lending bounce slots for the evidence and zeroing and freeing
    /// them once the device has answered.
    fn attest(
        &mut self,
        attester: Option<&dyn Attester>,
        queues: Vec<QueueRings>,
    ) -> Result<String, BlockError> {
        let session = Session {
            device_features: self.info.device_features,
            driver_features: self.info.driver_features,
            pool: self.window,
            queues,
        };
        let mut lent = None;
        let Self {
            vp,
            mem,
            layout,
            slots,
            window,
            timeout,
            ..
        } = self;
        let outcome = mailbox::prove(
            &mut super::lock(vp),
            session,
            attester,
            *timeout,
            |evidence| {
                let len = evidence.len() as u64;
                let run = slots
                    .alloc(slots_for(len) as u32)
                    .ok_or(BlockError::PoolExhausted(len))?;
                lent = Some(run);
                let off = layout.slots + u64::from(run.first) * SLOT_SIZE;
                mem.write(off, evidence)?;
                window
                    .bus_of(off, len)
                    .ok_or(MailboxError::EvidenceOutsidePool.into())
            },
        );
        if let Some(run) = lent {
            self.release(run, std::iter::empty());
        }
        outcome
    }
}

/// The most queues, from `wanted` down to one, whose layout the pool holds at `qsize`, and
/// that layout. The error is one queue's: the pool cannot serve the device at all.
fn fit_queues(pool: u64, wanted: u16, qsize: u16) -> Result<(u16, PoolLayout), LayoutError> {
    let mut nq = wanted.max(1);
    loop {
        match PoolLayout::new(pool, nq, qsize) {
            Ok(layout) => return Ok((nq, layout)),
            Err(LayoutError::TooFewSlots { .. } | LayoutError::BadQueueCount(_)) if nq > 1 => {
                nq -= 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_pool_serves_fewer_queues_rather_than_none() {
        // 1 MiB holds one queue of 256 with a full area (a maximal mapping's slots), not two.
        assert!(PoolLayout::new(1 << 20, 2, 256).is_err());
        let (nq, layout) = fit_queues(1 << 20, 2, 256).unwrap();
        assert_eq!((nq, layout.queues.len()), (1, 1));
        // 16 MiB holds both.
        let (nq, layout) = fit_queues(16 << 20, 2, 256).unwrap();
        assert_eq!((nq, layout.queues.len()), (2, 2));
        // Never more than wanted, and at least one.
        assert_eq!(fit_queues(16 << 20, 1, 256).unwrap().0, 1);
        assert_eq!(fit_queues(16 << 20, 0, 256).unwrap().0, 1);
        // A pool that cannot hold even one queue: the one queue's error.
        assert!(matches!(
            fit_queues(1 << 20, 4, 8192),
            Err(LayoutError::TooFewSlots { .. } | LayoutError::BadQueueSize(_))
        ));
    }
}

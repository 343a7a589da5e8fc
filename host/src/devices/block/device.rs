//! The virtio-blk device model: configuration space and request execution.

use std::sync::{Arc, Mutex};

use swiotlb_shared::blk::config as blk_config;
use swiotlb_shared::features::{
    bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::layout::INDIRECT_TABLE_DESCS;
use swiotlb_shared::pci::VIRTIO_ID_BLOCK;

use super::disk::DiskImage;
use super::lane::{lock, BlockQueue, Lane, LaneState};
use super::metrics::BlockMetrics;
use super::request::SECTOR_SIZE;
use super::uring::UringEngine;
use crate::pool::{PoolGuestMemory, PoolMapping};
use crate::virtio::chain::CheckedChain;
use crate::virtio::device::{Handled, QueueDevice, VirtioDevice};

/// Size of each request queue. 256 is the largest queue the layout allows and what Linux's
/// virtio-blk uses by default.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments in one request: one indirect table of the driver holds the header, the
/// segments and the status.
pub const SEG_MAX: u32 = INDIRECT_TABLE_DESCS as u32 - 2;
/// Ranges in one DISCARD or WRITE_ZEROES request. It bounds the range array the device
/// copies out of the pool per request (32 × 16 bytes).
pub const MAX_RANGES: u32 = 32;
/// Sectors in one DISCARD or WRITE_ZEROES range (1 GiB): bounds the time one range holds
/// the queue.
pub const MAX_RANGE_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// Bytes of `struct virtio_blk_config` up to and including `write_zeroes_may_unmap`'s padding.
pub const CONFIG_LEN: usize = 60;

/// How the block device is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockConfig {
    /// Refuse writes (and offer VIRTIO_BLK_F_RO).
    pub read_only: bool,
}

/// How the device moves data between the image and the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// A locked-down io_uring: the reads and writes of one pass over a queue in one batch,
    /// into the pool registered as a fixed buffer. Falls back to [`IoEngine::Sync`], saying
    /// so once, where the kernel refuses io_uring.
    #[default]
    Uring,
    /// One `preadv`/`pwritev` per request.
    Sync,
}

impl IoEngine {
    /// The engine's name, as the command line and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Sync => "sync",
        }
    }
}

/// Request queues a device may have. Each has a worker thread, a disk ring and a share of
/// the pool; 16 is more than the CPUs a device process is usually given and keeps those
/// costs bounded (the MSI-X table and the notify area have room for far more).
pub const MAX_QUEUES: u16 = 16;

/// A virtio-blk device on a raw image.
#[derive(Debug)]
pub struct Block {
    disk: Arc<DiskImage>,
    config: [u8; CONFIG_LEN],
    metrics: Arc<BlockMetrics>,
    /// The engine asked for.
    wanted: IoEngine,
    /// Per request queue: its ring and the requests of its pass. A worker serving the
    /// queue locks its own lane only, so queues never share a lock.
    lanes: Vec<Arc<Mutex<LaneState>>>,
}

impl Block {
    /// A block device on `disk`.
    pub fn new(disk: DiskImage) -> Self {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&(disk.capacity() / SECTOR_SIZE).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_RANGES.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_RANGES.to_le_bytes());
        c[56] = 1;
        Self {
            disk: Arc::new(disk),
            config: c,
            metrics: Arc::new(BlockMetrics::default()),
            wanted: IoEngine::Sync,
            lanes: vec![Arc::default()],
        }
    }

    /// Serves `n` request queues (1 to [`MAX_QUEUES`], clamped), offering VIRTIO_BLK_F_MQ
    /// with `num_queues = n` when `n > 1`. One queue (the default) is the device without
    /// MQ. Call before the pool is attached: each queue gets its own disk ring then.
    pub fn with_queues(mut self, n: u16) -> Self {
        let n = n.clamp(1, MAX_QUEUES);
        self.lanes = (0..n).map(|_| Arc::default()).collect();
        self.config[blk_config::NUM_QUEUES..blk_config::NUM_QUEUES + 2]
            .copy_from_slice(&n.to_le_bytes());
        self
    }

    /// Moves data with `engine` (the default of [`Block::new`] is [`IoEngine::Sync`]). The
    /// ring itself is set up when the pool is attached.
    pub fn with_io_engine(mut self, engine: IoEngine) -> Self {
        self.wanted = engine;
        self
    }

    /// The engine in use: [`IoEngine::Uring`] only once a ring is set up.
    pub fn io_engine(&self) -> IoEngine {
        if self.lanes.first().is_some_and(|l| lock(l).ring.is_some()) {
            IoEngine::Uring
        } else {
            IoEngine::Sync
        }
    }

    /// The metrics, shared with whoever reports them.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.disk.capacity()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_RING_F_EVENT_IDX);
        if self.disk.read_only() {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        if self.lanes.len() > 1 {
            f |= bit(VIRTIO_BLK_F_MQ);
        }
        f
    }

    fn num_queues(&self) -> u16 {
        self.lanes.len() as u16
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(o) = usize::try_from(offset) else {
            return;
        };
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = o.checked_add(i).and_then(|j| self.config.get(j)) {
                *b = *v;
            }
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE, not offered.
    }

    fn handle_chain(&mut self, queue: u16, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled {
        match self.lanes.get(usize::from(queue)) {
            Some(lane) => Lane {
                disk: &self.disk,
                metrics: &self.metrics,
                st: &mut lock(lane),
            }
            .handle_chain(mem, chain),
            // The transport has exactly as many queues as lanes; nothing to do otherwise.
            None => Handled::Done(0),
        }
    }

    fn complete(&mut self, queue: u16, mem: &PoolGuestMemory, done: &mut dyn FnMut(u16, u32)) {
        if let Some(lane) = self.lanes.get(usize::from(queue)) {
            Lane {
                disk: &self.disk,
                metrics: &self.metrics,
                st: &mut lock(lane),
            }
            .complete(mem, done);
        }
    }

    fn queue_device(&mut self, queue: u16) -> Option<Box<dyn QueueDevice + Send>> {
        let lane = self.lanes.get(usize::from(queue))?.clone();
        Some(Box::new(BlockQueue {
            disk: self.disk.clone(),
            metrics: self.metrics.clone(),
            lane,
        }))
    }

    fn attach_pool(&mut self, mapping: PoolMapping) -> bool {
        if self.wanted != IoEngine::Uring {
            return false;
        }
        // One device thread uses a lone queue's ring; with several queues each ring is made
        // here and used by its queue's worker.
        let single_issuer = self.lanes.len() == 1;
        let mut pinned = true;
        for (q, lane) in self.lanes.iter().enumerate() {
            let mut st = lock(lane);
            if let Some(r) = &st.ring {
                pinned &= r.pinned();
                continue;
            }
            let ring = UringEngine::new(
                self.disk.file(),
                u32::from(QUEUE_SIZE),
                Some(mapping),
                single_issuer,
            );
            match ring {
                Ok(r) => {
                    tracing::info!(
                        queue = q,
                        fixed_buffer = r.pinned(),
                        "disk I/O through a restricted io_uring"
                    );
                    pinned &= r.pinned();
                    st.ring = Some(r);
                }
                Err(e) => {
                    tracing::warn!(
                        queue = q,
                        error = %swiotlb_shared::error_chain(&e),
                        "io_uring unavailable: disk I/O falls back to preadv/pwritev"
                    );
                    return false;
                }
            }
        }
        pinned
    }

    fn reset(&mut self) {}

    fn metrics(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.metrics.snapshot()).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("io_engine".into(), self.io_engine().name().into());
        }
        v
    }

    fn clear_metrics(&mut self) {
        self.metrics = Arc::new(BlockMetrics::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use std::collections::BTreeMap;

    #[test]
    fn without_io_uring_the_device_falls_back_to_plain_calls() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let pool = Pool::new(1 << 20).unwrap();
        let mapping = pool.mapping();
        let disk = DiskImage::open(f.path(), false).unwrap();
        // As under kernel.io_uring_disabled or a container profile: io_uring_setup fails.
        let refuse = seccompiler::SeccompFilter::new(
            BTreeMap::from([(libc::SYS_io_uring_setup, vec![])]),
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Errno(libc::EPERM as u32),
            std::env::consts::ARCH.try_into().unwrap(),
        )
        .unwrap();
        let prog: seccompiler::BpfProgram = refuse.try_into().unwrap();
        let engine = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            let mut b = Block::new(disk).with_io_engine(IoEngine::Uring);
            let pinned = b.attach_pool(mapping);
            (pinned, b.io_engine())
        })
        .join()
        .unwrap();
        assert_eq!(engine, (false, IoEngine::Sync));
        // Where the kernel allows it, the same device gets its ring.
        let disk = DiskImage::open(f.path(), false).unwrap();
        let mut b = Block::new(disk).with_io_engine(IoEngine::Uring);
        b.attach_pool(mapping);
        assert_eq!(b.io_engine(), IoEngine::Uring);
        drop(pool);
    }

    #[test]
    fn several_queues_offer_mq_and_say_how_many_in_the_configuration() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let open = || DiskImage::open(f.path(), false).unwrap();
        let num_queues = |b: &Block| {
            let mut n = [0u8; 2];
            b.read_config(blk_config::NUM_QUEUES as u64, &mut n);
            u16::from_le_bytes(n)
        };
        let one = Block::new(open());
        assert_eq!((one.num_queues(), num_queues(&one)), (1, 1));
        assert_eq!(
            one.features() & bit(VIRTIO_BLK_F_MQ),
            0,
            "no MQ with one queue"
        );
        let three = Block::new(open()).with_queues(3);
        assert_eq!((three.num_queues(), num_queues(&three)), (3, 3));
        assert_ne!(three.features() & bit(VIRTIO_BLK_F_MQ), 0);
        let mut three = three;
        assert!(three.queue_device(2).is_some() && three.queue_device(3).is_none());
        let many = Block::new(open()).with_queues(1000);
        assert_eq!(many.num_queues(), MAX_QUEUES);
        assert_eq!(Block::new(open()).with_queues(0).num_queues(), 1);
    }
}

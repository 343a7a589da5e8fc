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
use vm_memory::{Bytes, GuestAddress};

use super::disk::DiskImage;
use super::metrics::BlockMetrics;
use super::request::{
    self, gather, scatter, Request, RequestType, Segment, RANGE_SIZE, SECTOR_SIZE,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use super::uring::{Finished, UringEngine, MAX_RING_SEGMENTS};
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

/// What a chain needs when its I/O completes.
#[derive(Clone, Copy, Debug)]
struct OnRing {
    /// The chain's head index.
    head: u16,
    /// Bus address of the status byte.
    status_addr: u64,
}

/// A read or write held until the end of the pass, to go to the ring with the others.
#[derive(Debug)]
struct Held {
    tag: OnRing,
    write: bool,
    /// Image offset.
    offset: u64,
    /// The pool buffers.
    segs: Vec<Segment>,
    /// Total bytes of `segs`.
    len: u64,
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

/// What one request queue's disk I/O keeps between chains.
#[derive(Debug, Default)]
struct LaneState {
    /// The ring, once the pool is attached and the kernel allowed one.
    ring: Option<UringEngine<Held>>,
    /// Reads and writes of this pass, made when it ends.
    held: Vec<Held>,
    /// Chains finished while the ring was drained in the middle of a pass (before a
    /// FLUSH, say): handed out with the pass's other completions.
    finished: Vec<(u16, u32)>,
}

/// One queue's disk I/O at work: the image, the metrics and the queue's own state.
struct Lane<'a> {
    disk: &'a DiskImage,
    metrics: &'a BlockMetrics,
    st: &'a mut LaneState,
}

/// The part of a [`Block`] that serves one request queue on its worker thread.
#[derive(Debug)]
pub struct BlockQueue {
    disk: Arc<DiskImage>,
    metrics: Arc<BlockMetrics>,
    lane: Arc<Mutex<LaneState>>,
}

/// Locks a lane. A lane is only ever locked by the one thread serving its queue (a worker,
/// or the function's own thread when no worker does), so a poisoned lock can only follow a
/// panic, which aborts the process (`panic = "abort"`): its state is taken as it is.
fn lock(lane: &Mutex<LaneState>) -> std::sync::MutexGuard<'_, LaneState> {
    lane.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl QueueDevice for BlockQueue {
    fn handle_chain(&mut self, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled {
        let mut st = lock(&self.lane);
        Lane {
            disk: &self.disk,
            metrics: &self.metrics,
            st: &mut st,
        }
        .handle_chain(mem, chain)
    }

    fn complete(&mut self, mem: &PoolGuestMemory, done: &mut dyn FnMut(u16, u32)) {
        let mut st = lock(&self.lane);
        Lane {
            disk: &self.disk,
            metrics: &self.metrics,
            st: &mut st,
        }
        .complete(mem, done);
    }
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

impl Lane<'_> {
    /// Holds a read or write for the ring, to go with the pass's others; `false` when it
    /// must go the synchronous way.
    fn start(&mut self, mem: &PoolGuestMemory, req: &Request, offset: u64, head: u16) -> bool {
        if self.st.ring.is_none()
            || req.data.len() > MAX_RING_SEGMENTS
            || !self.disk.transfer_aligned(mem, offset, &req.data)
        {
            return false;
        }
        if self.st.held.len() >= usize::from(QUEUE_SIZE) {
            self.flush(mem);
        }
        self.st.held.push(Held {
            tag: OnRing {
                head,
                status_addr: req.status_addr,
            },
            write: req.ty == RequestType::Out,
            offset,
            segs: req.data.clone(),
            len: req.data_len,
        });
        true
    }

    /// Makes every held read and write and finishes each chain into `self.st.finished`: a
    /// lone one with one plain call (there is nothing to batch, and a ring round trip costs
    /// more than a `preadv` on this kind of machine: BENCHMARKS.md), several as one batch
    /// on the ring.
    fn flush(&mut self, mem: &PoolGuestMemory) {
        let held = std::mem::take(&mut self.st.held);
        let (disk, m) = (self.disk, self.metrics);
        let Some(ring) = self.st.ring.as_mut().filter(|_| held.len() > 1) else {
            for h in held {
                BlockMetrics::add(&m.single_calls, 1);
                let r = Self::plain(disk, mem, h.write, h.offset, &h.segs).map(|()| h.len);
                self.st.finished.push(Self::finish(m, mem, &h, r));
            }
            return;
        };
        let mut fallback = Vec::new();
        for mut h in held {
            // The ring keeps its own copy of the segments (for a short transfer).
            let segs = std::mem::take(&mut h.segs);
            match ring.push(mem, h.write, h.offset, &segs, h) {
                Ok(()) => {}
                Err((e, mut h)) => {
                    h.segs = segs;
                    // Cannot happen for a checked chain (every buffer is in the pool, the
                    // ring has a slot per queue entry); a plain call still serves it.
                    tracing::debug!(error = %e, "request not put on the ring");
                    fallback.push(h);
                }
            }
        }
        if ring.in_flight() != 0 {
            BlockMetrics::add(&m.ring_batches, 1);
            BlockMetrics::add(&m.ring_requests, ring.in_flight() as u64);
        }
        let finished = &mut self.st.finished;
        ring.reap(|f: Finished<Held>| {
            let segs = f.req.segs;
            let h = f.req.tag;
            let r = match f.result {
                Ok(n) if n >= h.len => Ok(h.len),
                Ok(n) => {
                    // A short transfer: the rest with a plain call.
                    BlockMetrics::add(&m.short_transfers, 1);
                    let rest = skip(&segs, n);
                    Self::plain(disk, mem, h.write, h.offset + n, &rest).map(|()| h.len)
                }
                Err(e) => Err(e),
            };
            finished.push(Self::finish(m, mem, &h, r));
        });
        for h in fallback {
            let r = Self::plain(disk, mem, h.write, h.offset, &h.segs).map(|()| h.len);
            finished.push(Self::finish(m, mem, &h, r));
        }
    }

    /// One read or write with a plain call.
    fn plain(
        disk: &DiskImage,
        mem: &PoolGuestMemory,
        write: bool,
        offset: u64,
        segs: &[Segment],
    ) -> std::io::Result<()> {
        if write {
            disk.write_from(mem, offset, segs)
        } else {
            disk.read_into(mem, offset, segs)
        }
    }

    /// The status byte, the metrics and the used length of a held request that is done.
    fn finish(
        m: &BlockMetrics,
        mem: &PoolGuestMemory,
        h: &Held,
        result: std::io::Result<u64>,
    ) -> (u16, u32) {
        let (status, written) = match result {
            Ok(_) if h.write => {
                BlockMetrics::add(&m.writes, 1);
                BlockMetrics::add(&m.write_bytes, h.len);
                (VIRTIO_BLK_S_OK, 0)
            }
            Ok(_) => {
                BlockMetrics::add(&m.reads, 1);
                BlockMetrics::add(&m.read_bytes, h.len);
                (VIRTIO_BLK_S_OK, h.len as u32)
            }
            Err(e) => {
                tracing::warn!(error = %e, offset = h.offset, "block I/O failed");
                BlockMetrics::add(&m.io_errors, 1);
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        let used = if mem
            .write_obj(status, GuestAddress(h.tag.status_addr))
            .is_ok()
        {
            written.saturating_add(1)
        } else {
            0
        };
        (h.tag.head, used)
    }

    /// Executes `req`, or starts it on the ring (`None`); returns its status and the bytes
    /// written into writable data buffers.
    fn execute(&mut self, mem: &PoolGuestMemory, req: &Request, head: u16) -> Option<(u8, u32)> {
        let disk_rw = matches!(req.ty, RequestType::In | RequestType::Out);
        if !disk_rw {
            // FLUSH covers the writes before it; DISCARD and WRITE_ZEROES are not
            // reordered around them either: finish what is on the ring first.
            self.flush(mem);
        }
        if disk_rw && !(req.ty == RequestType::Out && self.disk.read_only()) {
            let offset = req.sector.checked_mul(SECTOR_SIZE);
            let ok_range = offset.is_some_and(|o| self.disk.in_range(o, req.data_len));
            if ok_range && req.data_len % SECTOR_SIZE == 0 {
                if let Some(o) = offset {
                    if self.start(mem, req, o, head) {
                        return None;
                    }
                }
            }
        }
        Some(self.execute_now(mem, req))
    }

    /// Executes `req` with plain calls.
    fn execute_now(&self, mem: &PoolGuestMemory, req: &Request) -> (u8, u32) {
        let m = self.metrics;
        let writes = matches!(
            req.ty,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        );
        if writes && self.disk.read_only() {
            BlockMetrics::add(&m.io_errors, 1);
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        match req.ty {
            RequestType::In | RequestType::Out => {
                let offset = req.sector.checked_mul(SECTOR_SIZE);
                let ok_range = offset.is_some_and(|o| self.disk.in_range(o, req.data_len));
                if !ok_range || req.data_len % SECTOR_SIZE != 0 {
                    BlockMetrics::add(&m.io_errors, 1);
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let offset = offset.unwrap_or(0);
                let (res, count, bytes) = if req.ty == RequestType::In {
                    (
                        self.disk.read_into(mem, offset, &req.data),
                        &m.reads,
                        &m.read_bytes,
                    )
                } else {
                    (
                        self.disk.write_from(mem, offset, &req.data),
                        &m.writes,
                        &m.write_bytes,
                    )
                };
                match res {
                    Ok(()) => {
                        BlockMetrics::add(count, 1);
                        BlockMetrics::add(bytes, req.data_len);
                        let written = if req.ty == RequestType::In {
                            req.data_len
                        } else {
                            0
                        };
                        (VIRTIO_BLK_S_OK, written as u32)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, sector = req.sector, "block I/O failed");
                        BlockMetrics::add(&m.io_errors, 1);
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            RequestType::Flush => match self.disk.flush() {
                Ok(()) => {
                    BlockMetrics::add(&m.flushes, 1);
                    (VIRTIO_BLK_S_OK, 0)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "flush failed");
                    BlockMetrics::add(&m.io_errors, 1);
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            RequestType::GetId => {
                let id = self.disk.id();
                let n = (req.data_len as usize).min(id.len());
                match scatter(mem, &req.data, &id[..n]) {
                    Ok(()) => {
                        BlockMetrics::add(&m.get_ids, 1);
                        (VIRTIO_BLK_S_OK, n as u32)
                    }
                    Err(_) => {
                        BlockMetrics::add(&m.io_errors, 1);
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => self.ranges(mem, req),
            RequestType::Unsupported(t) => {
                tracing::debug!(request_type = t, "unsupported block request");
                BlockMetrics::add(&m.unsupported, 1);
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// DISCARD / WRITE_ZEROES: every range is read once, checked, then applied.
    fn ranges(&self, mem: &PoolGuestMemory, req: &Request) -> (u8, u32) {
        let m = self.metrics;
        let n = req.data_len / RANGE_SIZE;
        if req.data_len % RANGE_SIZE != 0 || n == 0 || n > u64::from(MAX_RANGES) {
            BlockMetrics::add(&m.io_errors, 1);
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut raw = vec![0u8; req.data_len as usize];
        if gather(mem, &req.data, &mut raw).is_err() {
            BlockMetrics::add(&m.io_errors, 1);
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut ranges = Vec::with_capacity(n as usize);
        for r in raw.chunks_exact(RANGE_SIZE as usize) {
            let mut s = [0u8; 8];
            s.copy_from_slice(&r[0..8]);
            let sector = u64::from_le_bytes(s);
            let sectors = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
            let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
            let unmap = flags & 1 != 0;
            // Reserved flag bits, a DISCARD with unmap, or an oversized range: IOERR
            // (virtio 1.2, 5.2.6.2 "device MUST set status to VIRTIO_BLK_S_UNSUPP" for
            // unmap on DISCARD; we answer UNSUPP for that one).
            if req.ty == RequestType::Discard && unmap {
                BlockMetrics::add(&m.unsupported, 1);
                return (VIRTIO_BLK_S_UNSUPP, 0);
            }
            let off = sector.checked_mul(SECTOR_SIZE);
            let len = u64::from(sectors) * SECTOR_SIZE;
            match off {
                Some(o)
                    if flags & !1 == 0
                        && sectors <= MAX_RANGE_SECTORS
                        && self.disk.in_range(o, len) =>
                {
                    ranges.push((o, len, unmap));
                }
                _ => {
                    BlockMetrics::add(&m.io_errors, 1);
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
            }
        }
        for (o, len, unmap) in ranges {
            let r = if req.ty == RequestType::Discard {
                self.disk.discard(o, len)
            } else {
                self.disk.write_zeroes(o, len, unmap)
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "discard/write-zeroes failed");
                BlockMetrics::add(&m.io_errors, 1);
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        }
        let c = if req.ty == RequestType::Discard {
            &m.discards
        } else {
            &m.write_zeroes
        };
        BlockMetrics::add(c, 1);
        (VIRTIO_BLK_S_OK, 0)
    }

    /// Handles one checked chain of this queue: finishes it, or starts it on the ring.
    fn handle_chain(&mut self, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled {
        let req = match request::parse(mem, chain) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    error = %swiotlb_shared::error_chain(&e),
                    head = chain.head,
                    "malformed block request"
                );
                BlockMetrics::add(&self.metrics.malformed, 1);
                // With a status byte, answer IOERR; without one there is nothing to say.
                if let Some(last) = chain.writable().last() {
                    let at = last.addr + u64::from(last.len) - 1;
                    if mem.write_obj(VIRTIO_BLK_S_IOERR, GuestAddress(at)).is_ok() {
                        return Handled::Done(1);
                    }
                }
                return Handled::Done(0);
            }
        };
        let Some((status, written)) = self.execute(mem, &req, chain.head) else {
            return Handled::Started;
        };
        if mem
            .write_obj(status, GuestAddress(req.status_addr))
            .is_err()
        {
            return Handled::Done(0);
        }
        Handled::Done(written.saturating_add(1))
    }

    /// Finishes every chain this queue started.
    fn complete(&mut self, mem: &PoolGuestMemory, done: &mut dyn FnMut(u16, u32)) {
        self.flush(mem);
        for (head, used) in self.st.finished.drain(..) {
            done(head, used);
        }
    }
}

/// `segs` without their first `n` bytes.
fn skip(segs: &[Segment], mut n: u64) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        let len = u64::from(s.len);
        if n >= len {
            n -= len;
            continue;
        }
        // n < len <= u32::MAX.
        out.push(Segment {
            addr: s.addr + n,
            len: (len - n) as u32,
        });
        n = 0;
    }
    out
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

    #[test]
    fn skip_drops_bytes_across_segments() {
        let segs = [
            Segment {
                addr: 0x1000,
                len: 512,
            },
            Segment {
                addr: 0x3000,
                len: 1024,
            },
        ];
        assert_eq!(skip(&segs, 0), segs.to_vec());
        assert_eq!(
            skip(&segs, 700),
            vec![Segment {
                addr: 0x3000 + 188,
                len: 836
            }]
        );
        assert!(skip(&segs, 1536).is_empty());
    }
}

//! The virtio-blk device model: configuration space and request execution.

use std::sync::Arc;

use swiotlb_shared::features::{
    bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::layout::INDIRECT_TABLE_DESCS;
use swiotlb_shared::pci::VIRTIO_ID_BLOCK;
use vm_memory::{Bytes, GuestAddress};

use super::disk::DiskImage;
use super::metrics::BlockMetrics;
use super::request::{
    self, gather, scatter, Request, RequestType, RANGE_SIZE, SECTOR_SIZE, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use crate::pool::PoolGuestMemory;
use crate::virtio::chain::CheckedChain;
use crate::virtio::device::VirtioDevice;

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

/// A virtio-blk device on a raw image.
#[derive(Debug)]
pub struct Block {
    disk: DiskImage,
    config: [u8; CONFIG_LEN],
    metrics: Arc<BlockMetrics>,
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
            disk,
            config: c,
            metrics: Arc::new(BlockMetrics::default()),
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

    /// Executes `req` and returns its status and the bytes written into writable data buffers.
    fn execute(&self, mem: &PoolGuestMemory, req: &Request) -> (u8, u32) {
        let m = &self.metrics;
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
        let m = &self.metrics;
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
}

/// Copies `src` into the start of `segs`.
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
        f
    }

    fn num_queues(&self) -> u16 {
        1
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

    fn handle_chain(&mut self, _queue: u16, mem: &PoolGuestMemory, chain: &CheckedChain) -> u32 {
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
                        return 1;
                    }
                }
                return 0;
            }
        };
        let (status, written) = self.execute(mem, &req);
        if mem
            .write_obj(status, GuestAddress(req.status_addr))
            .is_err()
        {
            return 0;
        }
        written.saturating_add(1)
    }

    fn reset(&mut self) {}

    fn metrics(&self) -> serde_json::Value {
        serde_json::to_value(self.metrics.snapshot()).unwrap_or_default()
    }

    fn clear_metrics(&mut self) {
        self.metrics = Arc::new(BlockMetrics::default());
    }
}

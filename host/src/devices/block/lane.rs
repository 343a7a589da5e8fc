//! One request queue's disk I/O: the state a queue keeps between chains (its ring, the
//! requests of its pass), the requests themselves, and the part of the device a queue's
//! worker thread holds ([`BlockQueue`]). Queues share the image and the metrics, nothing else.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::device::{MAX_RANGES, MAX_RANGE_SECTORS, QUEUE_SIZE};
use super::disk::DiskImage;
use super::metrics::BlockMetrics;
use super::request::{
    self, gather, scatter, Request, RequestType, Segment, RANGE_SIZE, SECTOR_SIZE,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use super::uring::{Finished, UringEngine, MAX_RING_SEGMENTS};
use crate::pool::PoolGuestMemory;
use crate::virtio::chain::CheckedChain;
use crate::virtio::device::{Handled, QueueDevice};

/// What a chain needs when its I/O completes.
#[derive(Clone, Copy, Debug)]
pub(super) struct OnRing {
    /// The chain's head index.
    head: u16,
    /// Bus address of the status byte.
    status_addr: u64,
}

/// A read or write held until the end of the pass, to go to the ring with the others.
#[derive(Debug)]
pub(super) struct Held {
    tag: OnRing,
    write: bool,
    /// Image offset.
    offset: u64,
    /// The pool buffers.
    segs: Vec<Segment>,
    /// Total bytes of `segs`.
    len: u64,
}

/// What one request queue's disk I/O keeps between chains.
#[derive(Debug, Default)]
pub(super) struct LaneState {
    /// The ring, once the pool is attached and the kernel allowed one.
    pub(super) ring: Option<UringEngine<Held>>,
    /// Reads and writes of this pass, made when it ends.
    held: Vec<Held>,
    /// Chains finished while the ring was drained in the middle of a pass (before a
    /// FLUSH, say): handed out with the pass's other completions.
    finished: Vec<(u16, u32)>,
}

/// One queue's disk I/O at work: the image, the metrics and the queue's own state.
pub(super) struct Lane<'a> {
    pub(super) disk: &'a DiskImage,
    pub(super) metrics: &'a BlockMetrics,
    pub(super) st: &'a mut LaneState,
}

/// The part of a [`Block`](super::Block) that serves one request queue on its worker thread.
#[derive(Debug)]
pub struct BlockQueue {
    pub(super) disk: Arc<DiskImage>,
    pub(super) metrics: Arc<BlockMetrics>,
    pub(super) lane: Arc<Mutex<LaneState>>,
}

/// Locks a lane. A lane is only ever locked by the one thread serving its queue (a worker,
/// or the function's own thread when no worker does), so a poisoned lock can only follow a
/// panic, which aborts the process (`panic = "abort"`): its state is taken as it is.
pub(super) fn lock(lane: &Mutex<LaneState>) -> std::sync::MutexGuard<'_, LaneState> {
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

impl Lane<'_> {
    /// Holds a read or write for the ring, to go with the pass's others; `false` when it
    /// must go the synchronous way.
    /// Takes the request's segments when it does.
    fn start(&mut self, mem: &PoolGuestMemory, req: &mut Request, offset: u64, head: u16) -> bool {
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
            segs: std::mem::take(&mut req.data),
            len: req.data_len,
        });
        true
    }

    /// Makes every held read and write and finishes each chain into `self.st.finished`: a
    /// lone one with one plain call (there is nothing to batch, and a ring round trip costs
    /// more than a `preadv` on this kind of machine: BENCHMARKS.md), several as one batch
    /// on the ring.
    fn flush(&mut self, mem: &PoolGuestMemory) {
        // Taken out and put back empty, so its room serves the next pass.
        let mut held = std::mem::take(&mut self.st.held);
        self.flush_held(mem, &mut held);
        self.st.held = held;
    }

    fn flush_held(&mut self, mem: &PoolGuestMemory, held: &mut Vec<Held>) {
        let (disk, m) = (self.disk, self.metrics);
        let Some(ring) = self.st.ring.as_mut().filter(|_| held.len() > 1) else {
            for h in held.drain(..) {
                BlockMetrics::add(&m.single_calls, 1);
                let r = Self::plain(disk, mem, h.write, h.offset, &h.segs).map(|()| h.len);
                self.st.finished.push(Self::finish(m, mem, &h, r));
            }
            return;
        };
        let mut fallback = Vec::new();
        for mut h in held.drain(..) {
            // The ring keeps the segments (for a short transfer) and hands them back.
            let segs = std::mem::take(&mut h.segs);
            if let Err(refused) = ring.push(mem, h.write, h.offset, segs, h) {
                let mut h = refused.tag;
                h.segs = refused.segs;
                // Cannot happen for a checked chain (every buffer is in the pool, the ring
                // has a slot per queue entry); a plain call still serves it.
                tracing::debug!(error = %refused.error, "request not put on the ring");
                fallback.push(h);
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
    fn execute(
        &mut self,
        mem: &PoolGuestMemory,
        req: &mut Request,
        head: u16,
    ) -> Option<(u8, u32)> {
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
    pub(super) fn handle_chain(&mut self, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled {
        let mut req = match request::parse(mem, chain) {
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
        let Some((status, written)) = self.execute(mem, &mut req, chain.head) else {
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
    pub(super) fn complete(&mut self, mem: &PoolGuestMemory, done: &mut dyn FnMut(u16, u32)) {
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

#[cfg(test)]
mod tests {
    use super::*;

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

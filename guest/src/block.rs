//! The virtio-blk driver over the SWIOTLB pool: every request's header, data and status
//! live in bounce slots of the pool; the caller's buffers never reach the device.
//!
//! - Submit: allocate slots, copy the caller's data in, post the chain, ring the doorbell.
//! - Complete: read the status byte once, copy out at most `min(used_len, posted)` bytes,
//!   zero every slot before it goes back to the allocator so nothing stale is ever exposed.
//! - Any nonsense from the device (unknown used id, index jump, short OK read, a device that
//!   never answers) is a clear error; the driver then refuses further I/O until reopened.
//!
//! Bringing the device up (negotiation, pool layout, queue setup, attestation) is in
//! `block/open.rs`, the driver's errors in `block/error.rs`, what a request is in
//! `block/request.rs`, keeping several in flight in `block/pipeline.rs`.

mod error;
mod open;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use swiotlb_shared::features::{bit, VIRTIO_RING_F_INDIRECT_DESC};
use swiotlb_shared::layout::{slots_for, PoolWindow, QueueLayout, MAX_MAPPING, SLOT_SIZE};
use swiotlb_shared::pci::status;

use crate::pci::PciAccess;
use crate::pool::{PoolMemory, SlotAllocator, SlotRun};
use crate::ring::{Completion, RingError, Segment, SplitRing};
use crate::virtio_pci::VirtioPci;

pub use error::BlockError;
pub use open::{BlockInfo, Options, DEFAULT_TIMEOUT, MAX_QUEUES};

mod pipeline;
mod request;

pub use request::Request;
use request::{range_payload, Build, Pending, Sink};

use swiotlb_shared::blk::BlkConfig;
pub use swiotlb_shared::blk::{ID_BYTES, SECTOR_SIZE};
use swiotlb_shared::blk::{
    VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK, VIRTIO_BLK_S_UNSUPP as S_UNSUPP,
    VIRTIO_BLK_T_DISCARD as T_DISCARD, VIRTIO_BLK_T_FLUSH as T_FLUSH,
    VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN, VIRTIO_BLK_T_OUT as T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
};
/// Largest data payload of one request the driver builds (1 MiB = four maximal mappings).
/// Larger transfers are split into several requests in flight together.
pub const MAX_REQUEST_BYTES: u64 = 4 * MAX_MAPPING;
/// Without an interrupt, the looks at the used ring before the driver starts napping.
pub const NAP_AFTER_SPINS: u32 = 4096;
/// Without an interrupt, how long the driver naps between looks once it has spun
/// [`NAP_AFTER_SPINS`] times.
const NAP: Duration = Duration::from_micros(50);
/// Offsets inside a request's control slot: header, status byte, then small payloads
/// (GET_ID answer, DISCARD/WRITE_ZEROES range).
const CTL_HEADER: u64 = 0;
const CTL_STATUS: u64 = 16;
const CTL_PAYLOAD: u64 = 64;

/// The virtio-blk driver.
pub struct BlockDriver<P: PciAccess> {
    /// The transport, shared by the drivers of every queue of the device: used to ring this
    /// queue's doorbell and, off the data path, to read the status.
    vp: Arc<Mutex<VirtioPci<P>>>,
    /// The virtqueue this driver drives.
    queue: u16,
    /// The drivers of the device's other queues, set up at open until taken
    /// ([`BlockDriver::take_queues`]).
    siblings: Vec<BlockDriver<P>>,
    mem: Arc<PoolMemory>,
    layout: QueueLayout,
    ring: SplitRing,
    slots: SlotAllocator,
    irq: Option<OwnedFd>,
    timeout: Duration,
    pending: Vec<Option<Pending>>,
    info: BlockInfo,
    stopped: bool,
    window: PoolWindow,
    poll: Duration,
    max_in_flight: u16,
    /// Post-to-completion times, when recording ([`BlockDriver::record_latencies`]).
    latencies: Option<Vec<Duration>>,
    /// The device's virtio-blk configuration, read once at open.
    config: BlkConfig,
}

impl<P: PciAccess> BlockDriver<P> {
    /// What was negotiated.
    pub fn info(&self) -> &BlockInfo {
        &self.info
    }

    /// The underlying transport (shared by the drivers of every queue of the device).
    pub fn transport(&self) -> MutexGuard<'_, VirtioPci<P>> {
        lock(&self.vp)
    }

    /// The virtqueue this driver drives.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The drivers of the device's other request queues (VIRTIO_BLK_F_MQ), each driving its
    /// own virtqueue with its own pool area, slot allocator and interrupt: nothing of the
    /// data path is shared between them but the transport's lock, taken only to ring a
    /// doorbell the device asked for. Empty after the first call, or with one queue.
    pub fn take_queues(&mut self) -> Vec<BlockDriver<P>> {
        std::mem::take(&mut self.siblings)
    }

    fn check_io(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if offset % SECTOR_SIZE != 0 || len % SECTOR_SIZE != 0 {
            return Err(BlockError::Unaligned { offset, len });
        }
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.info.capacity)
        {
            return Err(BlockError::OutOfRange {
                offset,
                len,
                capacity: self.info.capacity,
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of 512).
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let builds = self.scattered(&[(offset, buf.len())], buf.len(), None)?;
        self.run(builds, buf)
    }

    /// Reads several ranges at once, all in flight together (as many as the ring and the
    /// pool hold): range `i` of `lens[i]` bytes at `offsets[i]` lands in `buf` after the
    /// ranges before it. A range larger than [`max_part_bytes`](Self::max_part_bytes) goes as
    /// several requests.
    pub fn read_scattered(
        &mut self,
        ranges: &[(u64, usize)],
        buf: &mut [u8],
    ) -> Result<(), BlockError> {
        let builds = self.scattered(ranges, buf.len(), None)?;
        self.run(builds, buf)
    }

    /// Writes several ranges at once, all in flight together (up to `max_in_flight`): range
    /// `i` takes `lens[i]` bytes of `data` after the ranges before it, to `offsets[i]`. Each
    /// range larger than [`max_part_bytes`](Self::max_part_bytes) goes as several requests.
    pub fn write_scattered(
        &mut self,
        ranges: &[(u64, usize)],
        data: &[u8],
    ) -> Result<(), BlockError> {
        if self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let builds = self.scattered(ranges, data.len(), Some(data))?;
        self.run(builds, &mut [])
    }

    /// One request per range of `ranges`, which must add up to `total` bytes: reads into
    /// the caller's buffer when `data` is `None`, else writes of `data`, range after range.
    fn scattered<'a>(
        &self,
        ranges: &[(u64, usize)],
        total: usize,
        data: Option<&'a [u8]>,
    ) -> Result<VecDeque<Build<'a>>, BlockError> {
        let sum: usize = ranges.iter().map(|r| r.1).sum();
        if sum != total {
            return Err(BlockError::OutOfRange {
                offset: 0,
                len: sum as u64,
                capacity: total as u64,
            });
        }
        let part = self.max_part_bytes() as usize;
        let mut builds = VecDeque::with_capacity(ranges.len());
        let mut at = 0usize;
        for &(offset, len) in ranges {
            self.check_io(offset, len as u64)?;
            // A range larger than the pool holds at once goes as several requests.
            let mut done = 0usize;
            while done < len {
                let n = (len - done).min(part);
                let sector = (offset + done as u64) / SECTOR_SIZE;
                let here = at + done;
                builds.push_back(match data {
                    Some(d) => Build {
                        ty: T_OUT,
                        sector,
                        out: Some(&d[here..here + n]),
                        in_len: 0,
                        ctl_payload: None,
                        sink: Sink::None,
                    },
                    None => Build {
                        ty: T_IN,
                        sector,
                        out: None,
                        in_len: n as u32,
                        ctl_payload: None,
                        sink: Sink::Read {
                            at: here,
                            len: n as u32,
                        },
                    },
                });
                done += n;
            }
            at += len;
        }
        Ok(builds)
    }

    /// Sets the most requests in flight at once (0: as many as the ring and the pool hold).
    pub fn set_max_in_flight(&mut self, n: u16) {
        self.max_in_flight = n;
    }

    /// Starts (or stops) recording each request's time from posting to completion; see
    /// [`take_latencies`](Self::take_latencies). Off by default: it reads the clock twice a
    /// request.
    pub fn record_latencies(&mut self, on: bool) {
        self.latencies = on.then(Vec::new);
    }

    /// The latencies recorded since the last call, in completion order.
    pub fn take_latencies(&mut self) -> Vec<Duration> {
        self.latencies
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Writes `data` at `offset` (both multiples of 512).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.check_io(offset, data.len() as u64)?;
        if self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let builds = self.scattered(&[(offset, data.len())], data.len(), Some(data))?;
        self.run(builds, &mut [])
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self) -> Result<(), BlockError> {
        self.single(T_FLUSH, None, Sink::None, &mut [])
    }

    /// Returns the device ID (up to 20 bytes, NUL-padded).
    pub fn get_id(&mut self) -> Result<[u8; ID_BYTES], BlockError> {
        let mut id = [0u8; ID_BYTES];
        self.single(T_GET_ID, None, Sink::Id, &mut id)?;
        Ok(id)
    }

    /// Discards `[offset, offset + len)`.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.range_request(T_DISCARD, offset, len, false)
    }

    /// Writes zeroes to `[offset, offset + len)`; `unmap` lets the device deallocate.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.range_request(T_WRITE_ZEROES, offset, len, unmap)
    }

    fn range_request(
        &mut self,
        ty: u32,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), BlockError> {
        self.check_io(offset, len)?;
        if self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let sectors = u32::try_from(len / SECTOR_SIZE).map_err(|_| BlockError::OutOfRange {
            offset,
            len,
            capacity: self.info.capacity,
        })?;
        let r = range_payload(offset / SECTOR_SIZE, sectors, unmap);
        self.single(ty, Some(r), Sink::None, &mut [])
    }

    fn single(
        &mut self,
        ty: u32,
        ctl_payload: Option<[u8; 16]>,
        sink: Sink,
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        let in_len = if matches!(sink, Sink::Id) {
            ID_BYTES as u32
        } else {
            0
        };
        let mut q = VecDeque::new();
        q.push_back(Build {
            ty,
            sector: 0,
            out: None,
            in_len,
            ctl_payload,
            sink,
        });
        self.run(q, out)
    }

    /// Submits every build, keeping as many in flight as the ring and the pool allow, and
    /// waits for all of them. The first error stops the driver.
    fn run(&mut self, mut builds: VecDeque<Build<'_>>, dst: &mut [u8]) -> Result<(), BlockError> {
        if self.stopped || self.ring.is_broken() {
            return Err(BlockError::Stopped);
        }
        let r = self.run_inner(&mut builds, dst);
        if r.is_err() {
            self.stopped = true;
        }
        r
    }

    fn run_inner(
        &mut self,
        builds: &mut VecDeque<Build<'_>>,
        dst: &mut [u8],
    ) -> Result<(), BlockError> {
        let mut first_err = None;
        loop {
            let mut posted = false;
            while first_err.is_none() && !self.at_depth() {
                let Some(b) = builds.pop_front() else { break };
                match self.submit(&b)? {
                    Some(p) => {
                        let head = usize::from(p.head);
                        if let Some(slot) = self.pending.get_mut(head) {
                            *slot = Some(p);
                        }
                        posted = true;
                    }
                    None => {
                        // No room: put it back and wait for completions.
                        builds.push_front(b);
                        break;
                    }
                }
            }
            if posted && self.ring.should_notify()? {
                lock(&self.vp).notify(self.queue)?;
            }
            if self.ring.in_flight() == 0 {
                if let Some(b) = builds.front() {
                    if first_err.is_none() {
                        let need = b.out.map_or(u64::from(b.in_len), |o| o.len() as u64);
                        return Err(BlockError::PoolExhausted(need));
                    }
                }
                return first_err.map_or(Ok(()), Err);
            }
            // A later timeout must not hide an earlier error: report the first one.
            let c = match self.wait_completion() {
                Ok(c) => c,
                Err(e) => return Err(first_err.unwrap_or(e)),
            };
            if let Err(e) = self.complete(c, dst) {
                first_err.get_or_insert(e);
            }
        }
    }

    /// Builds and posts one request; `None` when the ring or the pool is full right now.
    fn submit(&mut self, b: &Build<'_>) -> Result<Option<Pending>, BlockError> {
        if self.ring.num_free() < 3 && !self.ring_uses_indirect() {
            return Ok(None);
        }
        let Some(ctl) = self.slots.alloc(1) else {
            return Ok(None);
        };
        let mut data = Vec::new();
        let total = b.out.map_or(u64::from(b.in_len), |o| o.len() as u64);
        let bulk = b.ty == T_IN || b.ty == T_OUT;
        let mut left = if bulk { total } else { 0 };
        while left > 0 {
            let n = left.min(MAX_MAPPING);
            match self.slots.alloc(slots_for(n) as u32) {
                Some(run) => data.push((run, n)),
                None => {
                    self.release(ctl, data.iter().map(|(r, _)| *r));
                    return Ok(None);
                }
            }
            left -= n;
        }
        let off = |run: &SlotRun| self.layout.slots + u64::from(run.first) * SLOT_SIZE;
        let ctl_off = off(&ctl);
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&b.ty.to_le_bytes());
        hdr[8..16].copy_from_slice(&b.sector.to_le_bytes());
        self.mem.write(ctl_off + CTL_HEADER, &hdr)?;
        self.mem.write(ctl_off + CTL_STATUS, &[0xff])?;
        let mut segs = vec![Segment::readable(ctl_off + CTL_HEADER, 16)];
        if let Some(p) = b.ctl_payload {
            self.mem.write(ctl_off + CTL_PAYLOAD, &p)?;
            segs.push(Segment::readable(ctl_off + CTL_PAYLOAD, 16));
        }
        let mut copied = 0usize;
        for (run, n) in &data {
            let o = off(run);
            if let Some(src) = b.out {
                // Copy in on submit.
                self.mem.write(o, &src[copied..copied + *n as usize])?;
                copied += *n as usize;
                segs.push(Segment::readable(o, *n as u32));
            } else {
                segs.push(Segment::writable(o, *n as u32));
            }
        }
        if matches!(b.sink, Sink::Id) {
            segs.push(Segment::writable(ctl_off + CTL_PAYLOAD, ID_BYTES as u32));
        }
        segs.push(Segment::writable(ctl_off + CTL_STATUS, 1));
        match self.ring.add(&segs) {
            Ok(head) => Ok(Some(Pending {
                head,
                ctl,
                data: data.into_iter().map(|(r, _)| r).collect(),
                sink: match b.sink {
                    Sink::None => Sink::None,
                    Sink::Id => Sink::Id,
                    Sink::Read { at, len } => Sink::Read { at, len },
                },
                posted: self.latencies.as_ref().map(|_| Instant::now()),
                token: 0,
            })),
            Err(RingError::Full { .. }) => {
                let runs: Vec<SlotRun> = data.iter().map(|(r, _)| *r).collect();
                self.release(ctl, runs);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn ring_uses_indirect(&self) -> bool {
        self.info.driver_features & bit(VIRTIO_RING_F_INDIRECT_DESC) != 0
    }

    /// Zeroes and frees the slots of a request.
    fn release(&mut self, ctl: SlotRun, data: impl IntoIterator<Item = SlotRun>) {
        for run in std::iter::once(ctl).chain(data) {
            let o = self.layout.slots + u64::from(run.first) * SLOT_SIZE;
            // Zero before reuse so a later request never exposes this one's data. Both calls
            // are on runs this driver allocated inside its area, so they cannot fail; if they
            // did, the slot is leaked rather than reused dirty.
            if self.mem.zero(o, run.bytes() as usize).is_ok() {
                let _ = self.slots.free(run);
            }
        }
    }

    /// Whether as many requests are in flight as `max_in_flight` allows.
    fn at_depth(&self) -> bool {
        self.max_in_flight != 0 && self.ring.in_flight() >= self.max_in_flight
    }

    /// Waits for the next completion, up to the timeout: polls the used ring for up to
    /// `poll`, then (with an interrupt) arms it, looks once more and sleeps on it; without
    /// an interrupt, keeps polling and naps between looks.
    fn wait_completion(&mut self) -> Result<Completion, BlockError> {
        if let Some(c) = self.ring.poll_used()? {
            return Ok(c);
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut spins = 0u32;
        loop {
            if let Some(c) = self.ring.poll_used()? {
                return Ok(c);
            }
            spins = spins.wrapping_add(1);
            // A clock read costs more than a look at the ring: read it every 64 looks.
            if spins % 64 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_error());
            }
            if now - start < self.poll {
                std::hint::spin_loop();
                continue;
            }
            match &self.irq {
                Some(fd) => {
                    self.ring.arm_interrupt()?;
                    if let Some(c) = self.ring.poll_used()? {
                        return Ok(c);
                    }
                    wait_eventfd(fd, deadline - now).map_err(BlockError::Wait)?;
                }
                None if spins < NAP_AFTER_SPINS => std::hint::spin_loop(),
                None => std::thread::sleep(NAP),
            }
        }
    }

    /// Why nothing completed: the device asked for a reset, reset itself (DRIVER_OK gone,
    /// or this queue disabled), or simply did not answer.
    fn timeout_error(&mut self) -> BlockError {
        let mut vp = lock(&self.vp);
        let Ok(s) = vp.status() else {
            return BlockError::Timeout(self.timeout);
        };
        if s & status::DEVICE_NEEDS_RESET != 0 {
            return BlockError::NeedsReset;
        }
        let queue_enabled = vp.queue_enabled(self.queue).unwrap_or(true);
        if s & status::DRIVER_OK == 0 || !queue_enabled {
            return BlockError::DeviceReset {
                status: s,
                queue_enabled,
            };
        }
        BlockError::Timeout(self.timeout)
    }

    /// Finishes a completion: status read once, data copied out within what was posted.
    fn complete(&mut self, c: Completion, dst: &mut [u8]) -> Result<(), BlockError> {
        let Some(p) = self
            .pending
            .get_mut(usize::from(c.head))
            .and_then(Option::take)
        else {
            // The ring only returns heads it posted; a head with no request is a driver bug.
            return Err(BlockError::Ring(RingError::BogusUsedId {
                id: u32::from(c.head),
            }));
        };
        let ctl_off = self.layout.slots + u64::from(p.ctl.first) * SLOT_SIZE;
        if let (Some(t), Some(v)) = (p.posted, self.latencies.as_mut()) {
            v.push(t.elapsed());
        }
        let result = self.finish(&p, &c, ctl_off, dst);
        self.release(p.ctl, p.data.iter().copied());
        result
    }

    fn finish(
        &self,
        p: &Pending,
        c: &Completion,
        ctl_off: u64,
        dst: &mut [u8],
    ) -> Result<(), BlockError> {
        let used = c.clamped_len();
        if used == 0 {
            // Nothing written, not even the status: the device rejected the chain.
            return Err(self.status_error());
        }
        let mut st = [0u8; 1];
        self.mem.read(ctl_off + CTL_STATUS, &mut st)?;
        match st[0] {
            S_OK => {}
            S_IOERR => return Err(BlockError::DeviceIoError),
            S_UNSUPP => return Err(BlockError::Unsupported),
            other => return Err(BlockError::BadStatus(other)),
        }
        match p.sink {
            Sink::None => Ok(()),
            Sink::Id => {
                // Copy out at most what the device says it wrote, and never more than posted.
                let n = ((used - 1) as usize).min(ID_BYTES).min(dst.len());
                self.mem.read(ctl_off + CTL_PAYLOAD, &mut dst[..n])?;
                Ok(())
            }
            Sink::Read { at, len } => {
                let expected = len + 1;
                if used < expected {
                    return Err(BlockError::ShortCompletion { used, expected });
                }
                let end = at.checked_add(len as usize).filter(|e| *e <= dst.len());
                let Some(end) = end else {
                    return Err(BlockError::ShortCompletion { used, expected });
                };
                let out = &mut dst[at..end];
                let mut done = 0usize;
                for run in &p.data {
                    let o = self.layout.slots + u64::from(run.first) * SLOT_SIZE;
                    let n = (out.len() - done).min(MAX_MAPPING as usize);
                    self.mem.read(o, &mut out[done..done + n])?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    fn status_error(&self) -> BlockError {
        BlockError::NeedsReset
    }
}

/// Waits until `fd` (an eventfd) is readable or `timeout` passes, then drains it.
fn wait_eventfd(fd: &OwnedFd, timeout: Duration) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is a valid pollfd for the duration of the call; nfds is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    if rc > 0 {
        let mut v = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer from a valid eventfd.
        unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    }
    Ok(())
}

/// Locks the shared transport. Only a panic while it is held could poison it, and a panic
/// aborts the process (`panic = "abort"`).
fn lock<P: PciAccess>(vp: &Mutex<VirtioPci<P>>) -> MutexGuard<'_, VirtioPci<P>> {
    vp.lock().unwrap_or_else(PoisonError::into_inner)
}

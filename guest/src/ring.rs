//! The driver side of a virtio split virtqueue (virtio 1.2, 2.7) living in the SWIOTLB pool.
//!
//! The descriptor table, available ring, used ring and indirect tables are all in the pool,
//! which the (possibly hostile) device can read and write at any time. So the driver keeps its
//! own private copy of everything it needs (free list, per-head bookkeeping, shadow indexes),
//! never reads back what it wrote, and reads each device-written value (used index, used
//! element, suppression fields) once into a local before validating it.
//!
//! Every address put into a descriptor is a bus address computed with
//! [`PoolWindow::bus_of`], so no descriptor ever points outside the pool.
//!
//! Ordering: descriptor and avail-entry writes happen before the release store of
//! `avail.idx`; the used element is read after the acquire load of `used.idx`; a `SeqCst`
//! fence separates publishing `avail.idx` from reading the device's suppression field, and
//! writing `used_event` (only when the driver is about to sleep:
//! [`SplitRing::arm_interrupt`]) from the next read of `used.idx`.
//!
//! After an error caused by device data ([`RingError::UsedIndexJump`],
//! [`RingError::BogusUsedId`]) the ring is *broken*: every later call fails with
//! [`RingError::Broken`] and the caller must reset the device.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use swiotlb_shared::descriptor::{Descriptor, DESC_SIZE};
use swiotlb_shared::layout::{
    avail_ring_size, desc_table_size, used_ring_size, PoolWindow, QueueLayout,
    INDIRECT_TABLE_DESCS, MAX_QUEUE_SIZE,
};
use thiserror::Error;

use crate::pool::{PoolAccessError, PoolMemory};

// Re-exported: the adversarial tests build descriptors by these names.
pub use swiotlb_shared::descriptor::{
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

/// Used-ring flag: the device asks not to be notified (without EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Bytes of one used-ring element (`id: u32`, `len: u32`).
const USED_ELEM_SIZE: u64 = 8;
/// Most segments in one submission.
const MAX_SEGS: usize = INDIRECT_TABLE_DESCS as usize;

/// Errors of the split ring.
#[derive(Debug, Error)]
pub enum RingError {
    /// An earlier device error broke the ring; the device must be reset.
    #[error("virtqueue is broken by an earlier device error; reset the device")]
    Broken,
    /// The queue size is zero, not a power of two, or too large.
    #[error("queue size {0} is not a power of two in [1, {MAX_QUEUE_SIZE}]")]
    BadQueueSize(u16),
    /// The pool window and the mapped pool differ in size.
    #[error("pool window of {window:#x} bytes does not match the {pool:#x}-byte mapped pool")]
    WindowMismatch {
        /// Window size.
        window: u64,
        /// Mapped pool size.
        pool: u64,
    },
    /// A ring area does not lie inside the pool, is misaligned, or overlaps another.
    #[error("{what} at pool offset {offset:#x} ({len} bytes) is outside the pool, misaligned or overlapping")]
    BadArea {
        /// Which area.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A submission has no segments or more than an indirect table holds.
    #[error("{0} segments; a submission needs 1..={INDIRECT_TABLE_DESCS}")]
    BadSegmentCount(usize),
    /// A segment has length zero.
    #[error("segment {index} has length zero")]
    EmptySegment {
        /// Segment index.
        index: usize,
    },
    /// A device-readable segment follows a device-writable one.
    #[error("segment {index} is device-readable but follows a device-writable segment")]
    ReadableAfterWritable {
        /// Segment index.
        index: usize,
    },
    /// A segment does not lie inside the pool window.
    #[error("segment {index} at pool offset {offset:#x} ({len} bytes) is outside the pool window")]
    SegmentOutsideWindow {
        /// Segment index.
        index: usize,
        /// Pool offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// The device-writable bytes of a submission exceed `u32::MAX`.
    #[error("device-writable bytes of a submission exceed u32::MAX")]
    WritableTooLong,
    /// Not enough free descriptors.
    #[error("virtqueue full: need {needed} descriptors, {free} free")]
    Full {
        /// Descriptors needed.
        needed: u16,
        /// Descriptors free.
        free: u16,
    },
    /// The device moved `used.idx` by more than the chains in flight (or backwards).
    #[error("device moved used.idx from {last_used} to {used_idx} with only {in_flight} chains in flight")]
    UsedIndexJump {
        /// Driver's last seen used index.
        last_used: u16,
        /// Index the device published.
        used_idx: u16,
        /// Chains in flight.
        in_flight: u16,
    },
    /// The device completed an id that is out of range or not a chain in flight.
    #[error("device completed id {id}, which is out of range, never posted or already completed")]
    BogusUsedId {
        /// The id the device wrote.
        id: u32,
    },
    /// A pool access failed (a ring area outside the mapping: a driver bug).
    #[error("pool access failed")]
    Memory(#[from] PoolAccessError),
}

/// One buffer of a submission, by pool offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the buffer from the pool start.
    pub offset: u64,
    /// Length in bytes (non-zero).
    pub len: u32,
    /// Whether the device writes (rather than reads) the buffer.
    pub device_writable: bool,
}

impl Segment {
    /// A device-readable segment.
    pub fn readable(offset: u64, len: u32) -> Self {
        Self {
            offset,
            len,
            device_writable: false,
        }
    }

    /// A device-writable segment.
    pub fn writable(offset: u64, len: u32) -> Self {
        Self {
            offset,
            len,
            device_writable: true,
        }
    }
}

/// A chain the device returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index, as returned by [`SplitRing::add`].
    pub head: u16,
    /// Length the device claims to have written (untrusted).
    pub used_len: u32,
    /// Device-writable bytes the driver posted in this chain.
    pub posted_writable: u32,
}

impl Completion {
    /// The used length clamped to what was posted: the most bytes the caller may consume.
    pub fn clamped_len(&self) -> u32 {
        self.used_len.min(self.posted_writable)
    }

    /// Whether the device claimed more bytes than were posted writable.
    pub fn len_exceeds_posted(&self) -> bool {
        self.used_len > self.posted_writable
    }
}

/// Counters of one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Chains added.
    pub added: u64,
    /// Chains completed.
    pub completed: u64,
    /// Chains added through an indirect table.
    pub indirect: u64,
    /// Completions whose used length exceeded the posted writable bytes.
    pub bogus_len: u64,
    /// `should_notify` calls that asked for a notification.
    pub notifies: u64,
    /// `should_notify` calls where the device suppressed the notification.
    pub suppressed: u64,
}

/// Driver bookkeeping of one head descriptor.
#[derive(Clone, Copy, Debug, Default)]
struct HeadState {
    in_flight: bool,
    /// Ring descriptors the chain holds.
    ndescs: u16,
    /// Last ring descriptor of the chain (its private `next` is relinked on free).
    tail: u16,
    /// Device-writable bytes posted.
    posted_writable: u32,
}

/// `vring_need_event` (virtio 1.2, 2.7.10): whether moving the index from `old` to `new`
/// crosses `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Driver side of one split virtqueue in the pool.
pub struct SplitRing {
    mem: Arc<PoolMemory>,
    window: PoolWindow,
    layout: QueueLayout,
    indirect: bool,
    event_idx: bool,
    size: u16,
    /// Private free-list links (never read back from the pool).
    next: Vec<u16>,
    free_head: u16,
    num_free: u16,
    heads: Vec<HeadState>,
    in_flight: u16,
    /// Shadow of `avail.idx`.
    avail_idx: u16,
    /// Chains added since the last `should_notify`.
    num_added: u32,
    /// Used index the driver has consumed up to.
    last_used: u16,
    broken: bool,
    stats: RingStats,
}

impl std::fmt::Debug for SplitRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitRing")
            .field("layout", &self.layout)
            .field("indirect", &self.indirect)
            .field("event_idx", &self.event_idx)
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl SplitRing {
    /// Sets up the queue described by `layout` in `mem`, whose bus window is `window`.
    /// `indirect` and `event_idx` say whether VIRTIO_RING_F_INDIRECT_DESC and
    /// VIRTIO_RING_F_EVENT_IDX were negotiated. Checks every ring area lies inside the pool
    /// (and the window), is aligned and does not overlap the others, then zeroes the
    /// descriptor table, available ring and used ring.
    pub fn new(
        mem: Arc<PoolMemory>,
        window: PoolWindow,
        layout: QueueLayout,
        indirect: bool,
        event_idx: bool,
    ) -> Result<Self, RingError> {
        let size = layout.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(RingError::BadQueueSize(size));
        }
        if window.size() != mem.size() {
            return Err(RingError::WindowMismatch {
                window: window.size(),
                pool: mem.size(),
            });
        }
        let mut areas = vec![
            ("descriptor table", layout.desc, desc_table_size(size), 16),
            ("available ring", layout.avail, avail_ring_size(size), 2),
            ("used ring", layout.used, used_ring_size(size), 4),
        ];
        if indirect {
            let len = u64::from(size) * u64::from(INDIRECT_TABLE_DESCS) * DESC_SIZE;
            areas.push(("indirect tables", layout.indirect, len, 16));
        }
        for &(what, offset, len, align) in &areas {
            let ok = offset % align == 0
                && offset.checked_add(len).is_some_and(|e| e <= mem.size())
                && window.bus_of(offset, len).is_some();
            let overlaps = areas.iter().any(|&(w2, o2, l2, _)| {
                w2 != what && offset < o2.saturating_add(l2) && o2 < offset.saturating_add(len)
            });
            if !ok || overlaps {
                return Err(RingError::BadArea { what, offset, len });
            }
        }
        let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        mem.zero(layout.desc, usize_of(desc_table_size(size)))?;
        mem.zero(layout.avail, usize_of(avail_ring_size(size)))?;
        mem.zero(layout.used, usize_of(used_ring_size(size)))?;
        // Free list 0 -> 1 -> ... -> size-1; the last link is never followed (num_free bounds).
        let next = (1..=size).map(|i| i % size).collect();
        Ok(Self {
            mem,
            window,
            layout,
            indirect,
            event_idx,
            size,
            next,
            free_head: 0,
            num_free: size,
            heads: vec![HeadState::default(); usize::from(size)],
            in_flight: 0,
            avail_idx: 0,
            num_added: 0,
            last_used: 0,
            broken: false,
            stats: RingStats::default(),
        })
    }

    /// Queue size (descriptors in the table).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors in the table.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains posted and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether a device error broke the ring.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// The queue's layout in the pool.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// Bus address of the descriptor table, for the transport to program.
    pub fn desc_bus(&self) -> u64 {
        self.window.base() + self.layout.desc // checked in `new`
    }

    /// Bus address of the available ring, for the transport to program.
    pub fn avail_bus(&self) -> u64 {
        self.window.base() + self.layout.avail // checked in `new`
    }

    /// Bus address of the used ring, for the transport to program.
    pub fn used_bus(&self) -> u64 {
        self.window.base() + self.layout.used // checked in `new`
    }

    fn desc_off(&self, i: u16) -> u64 {
        self.layout.desc + u64::from(i) * DESC_SIZE
    }

    fn avail_entry_off(&self, slot: u16) -> u64 {
        self.layout.avail + 4 + 2 * u64::from(slot & (self.size - 1))
    }

    fn used_event_off(&self) -> u64 {
        self.layout.avail + 4 + 2 * u64::from(self.size)
    }

    fn used_elem_off(&self, slot: u16) -> u64 {
        self.layout.used + 4 + USED_ELEM_SIZE * u64::from(slot & (self.size - 1))
    }

    fn avail_event_off(&self) -> u64 {
        self.layout.used + 4 + USED_ELEM_SIZE * u64::from(self.size)
    }

    fn next_of(&self, i: u16) -> u16 {
        self.next.get(usize::from(i)).copied().unwrap_or(0)
    }

    /// Posts a chain of `segs` (device-readable ones first) and publishes it in the available
    /// ring. Returns the head descriptor index, which [`poll_used`](Self::poll_used) reports
    /// on completion. With indirect descriptors negotiated, a chain of several segments takes
    /// one ring descriptor pointing at the head's indirect table. Invalid input is refused
    /// before anything is written.
    pub fn add(&mut self, segs: &[Segment]) -> Result<u16, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        let n = segs.len();
        if n == 0 || n > MAX_SEGS {
            return Err(RingError::BadSegmentCount(n));
        }
        // Validated descriptors about to be written; `next` is set as they are linked.
        let mut descs = [Descriptor::default(); MAX_SEGS];
        let mut writable_seen = false;
        let mut posted_writable: u32 = 0;
        for (index, (seg, d)) in segs.iter().zip(descs.iter_mut()).enumerate() {
            if seg.len == 0 {
                return Err(RingError::EmptySegment { index });
            }
            if seg.device_writable {
                writable_seen = true;
                posted_writable = posted_writable
                    .checked_add(seg.len)
                    .ok_or(RingError::WritableTooLong)?;
            } else if writable_seen {
                return Err(RingError::ReadableAfterWritable { index });
            }
            let addr = self.window.bus_of(seg.offset, u64::from(seg.len)).ok_or(
                RingError::SegmentOutsideWindow {
                    index,
                    offset: seg.offset,
                    len: seg.len,
                },
            )?;
            *d = Descriptor {
                addr,
                len: seg.len,
                flags: if seg.device_writable {
                    VIRTQ_DESC_F_WRITE
                } else {
                    0
                },
                next: 0,
            };
        }
        let descs = descs.get(..n).unwrap_or(&[]);
        let use_indirect = self.indirect && n > 1;
        let needed = if use_indirect { 1 } else { n as u16 }; // n <= 64
        if needed > self.num_free {
            return Err(RingError::Full {
                needed,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let tail = if use_indirect {
            self.write_indirect(head, descs)?;
            head
        } else {
            self.write_direct(head, descs)?
        };
        self.free_head = self.next_of(tail);
        self.num_free -= needed;

        let slot = self.avail_idx;
        self.mem.store_u16(self.avail_entry_off(slot), head)?;
        self.avail_idx = slot.wrapping_add(1);
        // Release: the descriptors and the ring entry are visible before the new index.
        self.mem.store_u16(self.layout.avail + 2, self.avail_idx)?;

        if let Some(h) = self.heads.get_mut(usize::from(head)) {
            *h = HeadState {
                in_flight: true,
                ndescs: needed,
                tail,
                posted_writable,
            };
        }
        self.in_flight += 1;
        self.num_added = self.num_added.saturating_add(1);
        self.stats.added += 1;
        if use_indirect {
            self.stats.indirect += 1;
        }
        Ok(head)
    }

    /// Writes `descs` into `head`'s indirect table and `head` as the ring descriptor.
    fn write_indirect(&self, head: u16, descs: &[Descriptor]) -> Result<(), RingError> {
        let mut table = [0u8; MAX_SEGS * DESC_SIZE as usize];
        let n = descs.len();
        for (i, (d, chunk)) in descs
            .iter()
            .zip(table.chunks_exact_mut(DESC_SIZE as usize))
            .enumerate()
        {
            let last = i + 1 == n;
            let flags = d.flags | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let next = if last { 0 } else { (i + 1) as u16 };
            chunk.copy_from_slice(&Descriptor { flags, next, ..*d }.to_bytes());
        }
        let bytes = n as u64 * DESC_SIZE; // n <= 64
        let table_off = self.layout.indirect_table(head); // in range: checked in `new`
        let table_bus = self
            .window
            .bus_of(table_off, bytes)
            .ok_or(RingError::BadArea {
                what: "indirect table",
                offset: table_off,
                len: bytes,
            })?;
        self.mem.write(
            table_off,
            table.get(..n * DESC_SIZE as usize).unwrap_or(&[]),
        )?;
        self.mem.write(
            self.desc_off(head),
            &Descriptor {
                addr: table_bus,
                len: bytes as u32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            }
            .to_bytes(),
        )?;
        Ok(())
    }

    /// Writes `descs` as a direct chain along the free list from `head`; returns the tail.
    fn write_direct(&self, head: u16, descs: &[Descriptor]) -> Result<u16, RingError> {
        let mut i = head;
        let n = descs.len();
        for (k, d) in descs.iter().enumerate() {
            let last = k + 1 == n;
            let nx = self.next_of(i);
            let (flags, next) = if last {
                (d.flags, 0)
            } else {
                (d.flags | VIRTQ_DESC_F_NEXT, nx)
            };
            self.mem.write(
                self.desc_off(i),
                &Descriptor { flags, next, ..*d }.to_bytes(),
            )?;
            if last {
                break;
            }
            i = nx;
        }
        Ok(i)
    }

    /// Whether the device wants a notification for the chains added since the last call.
    /// Call once after a batch of [`add`](Self::add)s, then notify the device if `true`.
    /// With EVENT_IDX this applies `vring_need_event` to the device's `avail_event`;
    /// without, it honours `VIRTQ_USED_F_NO_NOTIFY`. Each field is read once.
    pub fn should_notify(&mut self) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if self.num_added == 0 {
            return Ok(false);
        }
        let added = self.num_added;
        self.num_added = 0;
        // The avail.idx store must be visible before we read the device's suppression field.
        fence(Ordering::SeqCst);
        let notify = if added > u32::from(u16::MAX) {
            true
        } else if self.event_idx {
            let event = self.mem.load_u16(self.avail_event_off())?;
            let new = self.avail_idx;
            let old = new.wrapping_sub(added as u16);
            need_event(event, new, old)
        } else {
            self.mem.load_u16(self.layout.used)? & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if notify {
            self.stats.notifies += 1;
        } else {
            self.stats.suppressed += 1;
        }
        Ok(notify)
    }

    /// Asks the device for an interrupt at the next completion (with EVENT_IDX, `used_event`
    /// = the used index consumed so far; without it the driver never suppresses interrupts).
    /// Call before sleeping on the interrupt, then [`poll_used`](Self::poll_used) once
    /// more: a completion that landed before this store is found by that poll, one after it
    /// interrupts. While the driver is awake and polling, `used_event` stays behind and the
    /// device sends no interrupts it would not wait for.
    pub fn arm_interrupt(&mut self) -> Result<(), RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        if self.event_idx {
            self.mem.store_u16(self.used_event_off(), self.last_used)?;
            // Orders the store before the next read of used.idx.
            fence(Ordering::SeqCst);
        }
        Ok(())
    }

    /// Takes the next completed chain from the used ring, if any. Validates the device's
    /// used index and element; a device error breaks the ring. On success the chain's
    /// descriptors return to the free list. A used length above the posted writable bytes
    /// is reported as is (see [`Completion::clamped_len`]) and counted in
    /// [`RingStats::bogus_len`].
    pub fn poll_used(&mut self) -> Result<Option<Completion>, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        match self.poll_inner() {
            Err(e) => {
                self.broken = true;
                Err(e)
            }
            ok => ok,
        }
    }

    /// Whether the device has completed a chain the driver has not taken yet: one read of
    /// `used.idx`; [`poll_used`](Self::poll_used) validates whatever it finds.
    pub fn has_used(&self) -> Result<bool, RingError> {
        if self.broken {
            return Err(RingError::Broken);
        }
        Ok(self.mem.load_u16(self.layout.used + 2)? != self.last_used)
    }

    fn poll_inner(&mut self) -> Result<Option<Completion>, RingError> {
        // Acquire: the element below is read after the index.
        let used_idx = self.mem.load_u16(self.layout.used + 2)?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        if used_idx.wrapping_sub(self.last_used) > self.in_flight {
            return Err(RingError::UsedIndexJump {
                last_used: self.last_used,
                used_idx,
                in_flight: self.in_flight,
            });
        }
        let elem = self.used_elem_off(self.last_used);
        let id = self.mem.load_u32(elem)?;
        let used_len = self.mem.load_u32(elem + 4)?;
        let head = u16::try_from(id)
            .ok()
            .filter(|h| *h < self.size)
            .ok_or(RingError::BogusUsedId { id })?;
        let state = match self.heads.get_mut(usize::from(head)) {
            Some(s) if s.in_flight => s,
            _ => return Err(RingError::BogusUsedId { id }),
        };
        let HeadState {
            ndescs,
            tail,
            posted_writable,
            ..
        } = *state;
        state.in_flight = false;
        if let Some(link) = self.next.get_mut(usize::from(tail)) {
            *link = self.free_head;
        }
        self.free_head = head;
        self.num_free += ndescs;
        self.in_flight -= 1;
        self.last_used = self.last_used.wrapping_add(1);
        self.stats.completed += 1;
        if used_len > posted_writable {
            self.stats.bogus_len += 1;
        }
        Ok(Some(Completion {
            head,
            used_len,
            posted_writable,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Mapping;
    use swiotlb_shared::layout::PoolLayout;

    const POOL: u64 = 1 << 20;
    const BASE: u64 = 0x1_0000_0000;

    /// A parsed descriptor as the device sees it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Seen {
        addr: u64,
        len: u32,
        writable: bool,
    }

    /// A minimal device: pops the avail ring, walks chains (following indirect tables),
    /// and pushes used elements, all through the pool.
    struct FakeDevice {
        mem: Arc<PoolMemory>,
        window: PoolWindow,
        q: QueueLayout,
        last_avail: u16,
        used_idx: u16,
        /// Every descriptor address the device saw, ring and table.
        addrs: Vec<(u64, u64)>,
    }

    impl FakeDevice {
        fn read_desc(&mut self, off: u64) -> (u64, u32, u16, u16) {
            let mut b = [0u8; Descriptor::SIZE];
            self.mem.read(off, &mut b).unwrap();
            let Descriptor {
                addr,
                len,
                flags,
                next,
            } = Descriptor::from_bytes(&b);
            self.addrs.push((addr, u64::from(len)));
            assert!(
                self.window.contains(addr, u64::from(len)),
                "descriptor address {addr:#x}+{len} outside the window"
            );
            (addr, len, flags, next)
        }

        /// Pops one chain: (head, segments, whether it was indirect, table offset).
        fn pop(&mut self) -> Option<(u16, Vec<Seen>, Option<u64>)> {
            let size = self.q.size;
            let idx = self.mem.load_u16(self.q.avail + 2).unwrap();
            if idx == self.last_avail {
                return None;
            }
            let head = self
                .mem
                .load_u16(self.q.avail + 4 + 2 * u64::from(self.last_avail % size))
                .unwrap();
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut out = Vec::new();
            let (addr, len, flags, _) = self.read_desc(self.q.desc + u64::from(head) * 16);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                assert_eq!(flags, VIRTQ_DESC_F_INDIRECT);
                let table = self.window.offset_of(addr, u64::from(len)).unwrap();
                let mut i = 0u16;
                loop {
                    assert!(u32::from(i) * 16 < len);
                    let (a, l, f, nx) = self.read_desc(table + u64::from(i) * 16);
                    out.push(Seen {
                        addr: a,
                        len: l,
                        writable: f & VIRTQ_DESC_F_WRITE != 0,
                    });
                    if f & VIRTQ_DESC_F_NEXT == 0 {
                        break;
                    }
                    i = nx;
                }
                assert_eq!(out.len() as u32 * 16, len);
                return Some((head, out, Some(table)));
            }
            let mut d = head;
            for _ in 0..size {
                let (a, l, f, nx) = self.read_desc(self.q.desc + u64::from(d) * 16);
                out.push(Seen {
                    addr: a,
                    len: l,
                    writable: f & VIRTQ_DESC_F_WRITE != 0,
                });
                if f & VIRTQ_DESC_F_NEXT == 0 {
                    return Some((head, out, None));
                }
                d = nx;
            }
            panic!("descriptor loop");
        }

        fn push_used(&mut self, id: u32, len: u32) {
            let e = self.q.used + 4 + 8 * u64::from(self.used_idx % self.q.size);
            self.mem.store_u32(e, id).unwrap();
            self.mem.store_u32(e + 4, len).unwrap();
            self.used_idx = self.used_idx.wrapping_add(1);
            self.set_used_idx(self.used_idx);
        }

        fn set_used_idx(&mut self, idx: u16) {
            self.mem.store_u16(self.q.used + 2, idx).unwrap();
        }
    }

    fn setup(queue_size: u16, indirect: bool, event_idx: bool) -> (SplitRing, FakeDevice) {
        let mem = Arc::new(PoolMemory::new(Mapping::anonymous(POOL as usize).unwrap()));
        // Dirty the pool so construction must zero the rings.
        mem.write(0, &[0xa5; 64 * 1024]).unwrap();
        let window = PoolWindow::new(BASE, POOL).unwrap();
        let q = PoolLayout::new(POOL, 1, queue_size).unwrap().queues[0];
        let ring = SplitRing::new(mem.clone(), window, q, indirect, event_idx).unwrap();
        let dev = FakeDevice {
            mem,
            window,
            q,
            last_avail: 0,
            used_idx: 0,
            addrs: Vec::new(),
        };
        (ring, dev)
    }

    fn slot(q: &QueueLayout, i: u64) -> u64 {
        q.slot(i)
    }

    fn request(q: &QueueLayout, i: u64) -> Vec<Segment> {
        vec![
            Segment::readable(slot(q, i), 16),
            Segment::writable(slot(q, i + 1), 4096),
            Segment::writable(slot(q, i + 3), 1),
        ]
    }

    fn avail_idx(dev: &FakeDevice) -> u16 {
        dev.mem.load_u16(dev.q.avail + 2).unwrap()
    }

    #[test]
    fn construction_zeroes_rings_and_reports_bus_addresses() {
        let (ring, dev) = setup(16, false, false);
        let mut b = vec![0u8; desc_table_size(16) as usize];
        dev.mem.read(dev.q.desc, &mut b).unwrap();
        assert!(b.iter().all(|x| *x == 0));
        assert_eq!(avail_idx(&dev), 0);
        assert_eq!(dev.mem.load_u16(dev.q.used + 2).unwrap(), 0);
        assert_eq!(ring.desc_bus(), BASE + dev.q.desc);
        assert_eq!(ring.avail_bus(), BASE + dev.q.avail);
        assert_eq!(ring.used_bus(), BASE + dev.q.used);
        assert_eq!(
            (ring.size(), ring.num_free(), ring.in_flight()),
            (16, 16, 0)
        );
    }

    #[test]
    fn layout_outside_pool_or_mismatched_window_is_refused() {
        let mem = Arc::new(PoolMemory::new(Mapping::anonymous(POOL as usize).unwrap()));
        let window = PoolWindow::new(BASE, POOL).unwrap();
        let mut q = PoolLayout::new(POOL, 1, 16).unwrap().queues[0];
        let small = PoolWindow::new(BASE, POOL / 2).unwrap();
        assert!(matches!(
            SplitRing::new(mem.clone(), small, q, false, false),
            Err(RingError::WindowMismatch { .. })
        ));
        q.used = POOL - 8;
        assert!(matches!(
            SplitRing::new(mem.clone(), window, q, false, false),
            Err(RingError::BadArea { .. })
        ));
        let mut q2 = PoolLayout::new(POOL, 1, 16).unwrap().queues[0];
        q2.avail = q2.desc + 16; // overlaps the descriptor table
        assert!(matches!(
            SplitRing::new(mem.clone(), window, q2, false, false),
            Err(RingError::BadArea { .. })
        ));
        let mut q3 = PoolLayout::new(POOL, 1, 16).unwrap().queues[0];
        q3.size = 12;
        assert!(matches!(
            SplitRing::new(mem, window, q3, false, false),
            Err(RingError::BadQueueSize(12))
        ));
    }

    #[test]
    fn direct_chain_round_trips() {
        let (mut ring, mut dev) = setup(16, false, false);
        let segs = request(&dev.q, 0);
        let head = ring.add(&segs).unwrap();
        assert_eq!(ring.num_free(), 13);
        assert_eq!(ring.in_flight(), 1);
        let (h, seen, table) = dev.pop().unwrap();
        assert_eq!(h, head);
        assert_eq!(table, None);
        let want: Vec<Seen> = segs
            .iter()
            .map(|s| Seen {
                addr: BASE + s.offset,
                len: s.len,
                writable: s.device_writable,
            })
            .collect();
        assert_eq!(seen, want);
        assert_eq!(ring.poll_used().unwrap(), None);
        dev.push_used(u32::from(head), 4097);
        let c = ring.poll_used().unwrap().unwrap();
        assert_eq!(
            c,
            Completion {
                head,
                used_len: 4097,
                posted_writable: 4097
            }
        );
        assert!(!c.len_exceeds_posted());
        assert_eq!(ring.poll_used().unwrap(), None);
        assert_eq!((ring.num_free(), ring.in_flight()), (16, 0));
    }

    #[test]
    fn indirect_table_is_used_and_lies_in_the_queue_indirect_area() {
        let (mut ring, mut dev) = setup(16, true, false);
        let area = dev.q.indirect..dev.q.indirect + 16 * u64::from(INDIRECT_TABLE_DESCS) * 16;
        let mut heads = Vec::new();
        for i in 0..16 {
            heads.push(ring.add(&request(&dev.q, i * 4)).unwrap());
        }
        assert_eq!(ring.num_free(), 0, "one ring descriptor per indirect chain");
        for (i, head) in heads.iter().enumerate() {
            let (h, seen, table) = dev.pop().unwrap();
            assert_eq!(h, *head);
            let table = table.expect("indirect");
            assert_eq!(table, dev.q.indirect_table(h));
            assert!(area.contains(&table));
            assert_eq!(seen.len(), 3);
            assert_eq!(seen[0].addr, BASE + slot(&dev.q, i as u64 * 4));
        }
        assert_eq!(ring.stats().indirect, 16);
        // A single segment stays direct.
        for h in heads {
            dev.push_used(u32::from(h), 0);
            ring.poll_used().unwrap().unwrap();
        }
        ring.add(&[Segment::writable(slot(&dev.q, 0), 512)])
            .unwrap();
        assert_eq!(dev.pop().unwrap().2, None);
    }

    #[test]
    fn maximal_indirect_chain_is_accepted_and_one_more_segment_is_not() {
        let (mut ring, mut dev) = setup(16, true, false);
        let segs: Vec<_> = (0..64)
            .map(|i| Segment::writable(slot(&dev.q, i), 2048))
            .collect();
        let head = ring.add(&segs).unwrap();
        let (h, seen, _) = dev.pop().unwrap();
        assert_eq!((h, seen.len()), (head, 64));
        let mut more = segs.clone();
        more.push(Segment::writable(slot(&dev.q, 64), 1));
        assert!(matches!(
            ring.add(&more),
            Err(RingError::BadSegmentCount(65))
        ));
        dev.push_used(u32::from(head), 64 * 2048);
        assert_eq!(ring.poll_used().unwrap().unwrap().clamped_len(), 64 * 2048);
    }

    #[test]
    fn every_descriptor_address_is_inside_the_window() {
        for indirect in [false, true] {
            let (mut ring, mut dev) = setup(32, indirect, false);
            let last = POOL - 100;
            for i in 0..8 {
                let mut segs = request(&dev.q, i * 4);
                segs.push(Segment::writable(last, 100)); // touches the very end
                ring.add(&segs).unwrap();
            }
            while dev.pop().is_some() {}
            assert!(!dev.addrs.is_empty());
            for (a, l) in &dev.addrs {
                assert!(dev.window.contains(*a, *l));
            }
        }
    }

    #[test]
    fn free_list_is_restored_after_completions() {
        for indirect in [false, true] {
            let (mut ring, mut dev) = setup(16, indirect, false);
            for round in 0..3 {
                let mut heads = Vec::new();
                loop {
                    match ring.add(&request(&dev.q, 0)) {
                        Ok(h) => heads.push(h),
                        Err(RingError::Full { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                let want = if indirect { 16 } else { 5 };
                assert_eq!(heads.len(), want, "round {round}");
                while let Some((h, _, _)) = dev.pop() {
                    dev.push_used(u32::from(h), 1);
                }
                // Complete them all (in order the device chose).
                let mut done = Vec::new();
                while let Some(c) = ring.poll_used().unwrap() {
                    done.push(c.head);
                }
                done.sort_unstable();
                heads.sort_unstable();
                assert_eq!(done, heads);
                assert_eq!((ring.num_free(), ring.in_flight()), (16, 0));
            }
        }
    }

    #[test]
    fn out_of_order_completion_frees_the_right_descriptors() {
        let (mut ring, mut dev) = setup(8, false, false);
        let a = ring.add(&request(&dev.q, 0)).unwrap();
        let b = ring.add(&request(&dev.q, 4)).unwrap();
        dev.pop();
        dev.pop();
        dev.push_used(u32::from(b), 0);
        dev.push_used(u32::from(a), 0);
        assert_eq!(ring.poll_used().unwrap().unwrap().head, b);
        assert_eq!(ring.num_free(), 5);
        assert_eq!(ring.poll_used().unwrap().unwrap().head, a);
        assert_eq!(ring.num_free(), 8);
        // Fill the whole table with single descriptors: all distinct.
        let mut hs: Vec<_> = (0..8)
            .map(|i| ring.add(&[Segment::readable(slot(&dev.q, i), 8)]).unwrap())
            .collect();
        hs.sort_unstable();
        hs.dedup();
        assert_eq!(hs.len(), 8);
    }

    #[test]
    fn used_id_never_posted_is_rejected_and_breaks_the_ring() {
        let (mut ring, mut dev) = setup(16, false, false);
        let head = ring.add(&request(&dev.q, 0)).unwrap();
        dev.pop();
        dev.push_used(u32::from(head) + 5, 0);
        assert!(
            matches!(ring.poll_used(), Err(RingError::BogusUsedId { id }) if id == u32::from(head) + 5)
        );
        assert!(ring.is_broken());
        assert!(matches!(ring.poll_used(), Err(RingError::Broken)));
        assert!(matches!(
            ring.add(&request(&dev.q, 0)),
            Err(RingError::Broken)
        ));
        assert!(matches!(ring.should_notify(), Err(RingError::Broken)));
    }

    #[test]
    fn used_id_completed_twice_is_rejected() {
        let (mut ring, mut dev) = setup(16, false, false);
        let a = ring.add(&request(&dev.q, 0)).unwrap();
        let _b = ring.add(&request(&dev.q, 4)).unwrap();
        dev.push_used(u32::from(a), 0);
        dev.push_used(u32::from(a), 0);
        assert_eq!(ring.poll_used().unwrap().unwrap().head, a);
        assert!(matches!(
            ring.poll_used(),
            Err(RingError::BogusUsedId { .. })
        ));
        assert!(ring.is_broken());
    }

    #[test]
    fn used_id_out_of_range_is_rejected() {
        for id in [16u32, 0x1_0000, u32::MAX] {
            let (mut ring, mut dev) = setup(16, false, false);
            ring.add(&request(&dev.q, 0)).unwrap();
            dev.push_used(id, 0);
            assert!(
                matches!(ring.poll_used(), Err(RingError::BogusUsedId { id: got }) if got == id)
            );
        }
    }

    #[test]
    fn used_index_jumping_ahead_is_rejected() {
        let (mut ring, mut dev) = setup(16, false, false);
        let a = ring.add(&request(&dev.q, 0)).unwrap();
        ring.add(&request(&dev.q, 4)).unwrap();
        dev.push_used(u32::from(a), 0);
        dev.set_used_idx(3); // two in flight, claims three
        assert!(matches!(
            ring.poll_used(),
            Err(RingError::UsedIndexJump {
                last_used: 0,
                used_idx: 3,
                in_flight: 2
            })
        ));
        assert!(ring.is_broken());
    }

    #[test]
    fn used_index_moving_backwards_is_rejected() {
        let (mut ring, mut dev) = setup(16, false, false);
        let a = ring.add(&request(&dev.q, 0)).unwrap();
        dev.push_used(u32::from(a), 0);
        ring.poll_used().unwrap().unwrap();
        ring.add(&request(&dev.q, 0)).unwrap();
        dev.set_used_idx(0);
        assert!(matches!(
            ring.poll_used(),
            Err(RingError::UsedIndexJump { .. })
        ));
    }

    #[test]
    fn used_len_above_posted_is_reported_clamped_and_counted() {
        let (mut ring, mut dev) = setup(16, false, false);
        let h = ring.add(&request(&dev.q, 0)).unwrap();
        dev.push_used(u32::from(h), u32::MAX);
        let c = ring.poll_used().unwrap().unwrap();
        assert_eq!(c.used_len, u32::MAX);
        assert_eq!(c.posted_writable, 4097);
        assert_eq!(c.clamped_len(), 4097);
        assert!(c.len_exceeds_posted());
        assert_eq!(ring.stats().bogus_len, 1);
        assert!(!ring.is_broken());
        // A read-only chain posted 0 writable bytes: any used length is clamped to 0.
        let h = ring
            .add(&[Segment::readable(slot(&dev.q, 0), 512)])
            .unwrap();
        dev.push_used(u32::from(h), 512);
        let c = ring.poll_used().unwrap().unwrap();
        assert_eq!((c.posted_writable, c.clamped_len()), (0, 0));
        assert_eq!(ring.stats().bogus_len, 2);
    }

    fn assert_refused_without_writing(ring: &mut SplitRing, dev: &FakeDevice, segs: &[Segment]) {
        let mut before = vec![0u8; (dev.q.used - dev.q.desc) as usize];
        dev.mem.read(dev.q.desc, &mut before).unwrap();
        let free = ring.num_free();
        assert!(ring.add(segs).is_err());
        let mut after = vec![0u8; before.len()];
        dev.mem.read(dev.q.desc, &mut after).unwrap();
        assert!(
            before == after,
            "refused submission wrote descriptors or the avail ring"
        );
        assert_eq!(ring.num_free(), free);
        assert!(!ring.is_broken());
    }

    #[test]
    fn readable_after_writable_is_refused_without_writing() {
        let (mut ring, dev) = setup(16, true, false);
        let q = dev.q;
        let segs = [
            Segment::readable(slot(&q, 0), 16),
            Segment::writable(slot(&q, 1), 16),
            Segment::readable(slot(&q, 2), 16),
        ];
        assert!(matches!(
            ring.add(&segs),
            Err(RingError::ReadableAfterWritable { index: 2 })
        ));
        assert_refused_without_writing(&mut ring, &dev, &segs);
        assert_eq!(avail_idx(&dev), 0);
    }

    #[test]
    fn out_of_window_segments_are_refused_without_writing() {
        for indirect in [false, true] {
            let (mut ring, dev) = setup(16, indirect, false);
            let q = dev.q;
            for bad in [
                Segment::writable(POOL, 1),
                Segment::writable(POOL - 1, 2),
                Segment::writable(u64::MAX, 1),
                Segment::writable(u64::MAX - BASE + 1, 16), // base + offset wraps
            ] {
                let segs = [Segment::readable(slot(&q, 0), 16), bad];
                assert!(matches!(
                    ring.add(&segs),
                    Err(RingError::SegmentOutsideWindow { index: 1, .. })
                ));
                assert_refused_without_writing(&mut ring, &dev, &segs);
            }
            assert_eq!(avail_idx(&dev), 0);
        }
    }

    #[test]
    fn empty_or_zero_length_submissions_are_refused() {
        let (mut ring, dev) = setup(16, false, false);
        assert!(matches!(ring.add(&[]), Err(RingError::BadSegmentCount(0))));
        let segs = [Segment::readable(slot(&dev.q, 0), 0)];
        assert!(matches!(
            ring.add(&segs),
            Err(RingError::EmptySegment { index: 0 })
        ));
        assert_refused_without_writing(&mut ring, &dev, &segs);
    }

    #[test]
    fn writable_bytes_overflowing_u32_are_refused() {
        let size = 64u64 << 20;
        let mem = Arc::new(PoolMemory::new(Mapping::anonymous(size as usize).unwrap()));
        let q = PoolLayout::new(size, 1, 16).unwrap().queues[0];
        let window = PoolWindow::new(BASE, size).unwrap();
        let mut ring = SplitRing::new(mem, window, q, true, false).unwrap();
        // 64 overlapping segments of 64 MiB: 2^32 writable bytes.
        let segs = vec![Segment::writable(0, 64 << 20); 64];
        assert!(matches!(ring.add(&segs), Err(RingError::WritableTooLong)));
        assert!(ring.add(&segs[..63]).is_ok());
    }

    #[test]
    fn full_ring_reports_full() {
        let (mut ring, dev) = setup(4, false, false);
        ring.add(&request(&dev.q, 0)).unwrap();
        assert!(matches!(
            ring.add(&request(&dev.q, 0)),
            Err(RingError::Full { needed: 3, free: 1 })
        ));
        assert_refused_without_writing(&mut ring, &dev, &request(&dev.q, 0));
    }

    #[test]
    fn notification_honours_no_notify_flag_without_event_idx() {
        let (mut ring, dev) = setup(16, false, false);
        assert!(!ring.should_notify().unwrap(), "nothing added");
        ring.add(&request(&dev.q, 0)).unwrap();
        assert!(ring.should_notify().unwrap());
        dev.mem
            .store_u16(dev.q.used, VIRTQ_USED_F_NO_NOTIFY)
            .unwrap();
        ring.add(&request(&dev.q, 4)).unwrap();
        assert!(!ring.should_notify().unwrap());
        assert_eq!(ring.stats().suppressed, 1);
    }

    #[test]
    fn notification_follows_avail_event_with_event_idx() {
        let (mut ring, dev) = setup(16, false, true);
        let avail_event = dev.q.used + 4 + 8 * 16;
        // Device wants a kick when avail.idx passes 0 (i.e. on the first add).
        ring.add(&request(&dev.q, 0)).unwrap();
        assert!(ring.should_notify().unwrap());
        // Device has not caught up: avail_event still 0, adding index 1 does not cross it.
        ring.add(&request(&dev.q, 4)).unwrap();
        assert!(!ring.should_notify().unwrap());
        // Device now asks for a kick once index 2 is published: adding 2 -> 3 crosses it.
        dev.mem.store_u16(avail_event, 2).unwrap();
        ring.add(&request(&dev.q, 8)).unwrap();
        assert!(ring.should_notify().unwrap());
        assert!(need_event(0xffff, 0, 0xfffe), "wraps");
        assert!(!need_event(5, 5, 4));
    }

    #[test]
    fn used_event_moves_only_when_the_driver_arms_the_interrupt() {
        let (mut ring, mut dev) = setup(16, false, true);
        let used_event = dev.q.avail + 4 + 2 * 16;
        let a = ring.add(&request(&dev.q, 0)).unwrap();
        let b = ring.add(&request(&dev.q, 4)).unwrap();
        dev.push_used(u32::from(a), 0);
        dev.push_used(u32::from(b), 0);
        ring.poll_used().unwrap().unwrap();
        // Polling leaves used_event behind: the device need not interrupt a driver that is
        // awake.
        assert_eq!(dev.mem.load_u16(used_event).unwrap(), 0);
        ring.arm_interrupt().unwrap();
        assert_eq!(dev.mem.load_u16(used_event).unwrap(), 1);
        ring.poll_used().unwrap().unwrap();
        assert_eq!(dev.mem.load_u16(used_event).unwrap(), 1);
        ring.arm_interrupt().unwrap();
        assert_eq!(dev.mem.load_u16(used_event).unwrap(), 2);
    }

    #[test]
    fn arming_without_event_idx_writes_nothing() {
        let (mut ring, dev) = setup(16, false, false);
        let used_event = dev.q.avail + 4 + 2 * 16;
        dev.mem.store_u16(used_event, 0x1234).unwrap();
        ring.arm_interrupt().unwrap();
        assert_eq!(dev.mem.load_u16(used_event).unwrap(), 0x1234);
    }

    #[test]
    fn indexes_wrap_past_u16() {
        let (mut ring, mut dev) = setup(4, true, true);
        for i in 0..70_000u32 {
            let h = ring.add(&request(&dev.q, 0)).unwrap();
            let (ph, _, _) = dev.pop().unwrap();
            assert_eq!(ph, h);
            dev.push_used(u32::from(h), i % 5000);
            let c = ring.poll_used().unwrap().unwrap();
            assert_eq!(c.head, h);
        }
        assert_eq!((ring.num_free(), ring.in_flight()), (4, 0));
    }
}

//! Pool arithmetic: the bus window every DMA is checked against, and how the driver carves
//! the pool into rings, indirect tables and bounce slots.
//!
//! All `(addr, len)` arithmetic here is checked; nothing wraps.

use thiserror::Error;

/// Bytes of one bounce slot, as Linux swiotlb's `IO_TLB_SIZE` (2 KiB).
pub const SLOT_SIZE: u64 = 2048;
/// Largest single mapping, as Linux swiotlb's `IO_TLB_SEGSIZE` × `IO_TLB_SIZE` (256 KiB).
/// Larger buffers are split into several descriptors.
pub const MAX_MAPPING: u64 = 256 * 1024;
/// Slots in the largest mapping.
pub const MAX_MAPPING_SLOTS: u64 = MAX_MAPPING / SLOT_SIZE;
/// Page size the pool and its carve-outs are aligned to.
pub const PAGE_SIZE: u64 = 4096;
/// Smallest pool the driver accepts: rings for one queue plus at least four maximal mappings.
pub const MIN_POOL_SIZE: u64 = 1024 * 1024;
/// Largest pool either side accepts (1 GiB): it bounds the memory a device process maps.
pub const MAX_POOL_SIZE: u64 = 1024 * 1024 * 1024;
/// Largest queue size either side accepts (virtio-blk devices rarely exceed 256).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Bytes of one split-ring descriptor.
pub const DESC_SIZE: u64 = 16;
/// Descriptors in one indirect table the driver builds (1 KiB a table). Also the largest
/// indirect table the device accepts: it bounds the work one chain can cause.
pub const INDIRECT_TABLE_DESCS: u16 = 64;

/// Errors of pool layout arithmetic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// The pool size is not a power of two.
    #[error("pool size {0:#x} is not a power of two")]
    NotPowerOfTwo(u64),
    /// The pool is smaller than the minimum or larger than the maximum.
    #[error("pool size {size:#x} is outside [{min:#x}, {max:#x}]")]
    PoolSizeOutOfRange {
        /// Offered size.
        size: u64,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// Queue size zero, not a power of two, or too large.
    #[error("queue size {0} is not a power of two in [1, {MAX_QUEUE_SIZE}]")]
    BadQueueSize(u16),
    /// No queues, or more than the pool can hold.
    #[error("{0} queues do not fit the pool")]
    BadQueueCount(u16),
    /// Rings and tables leave too few bounce slots.
    #[error("pool of {pool:#x} bytes leaves {slots} slots per queue, need {need}")]
    TooFewSlots {
        /// Pool size.
        pool: u64,
        /// Slots left for each queue.
        slots: u64,
        /// Slots needed for one maximal mapping.
        need: u64,
    },
    /// The window's end does not fit 64 bits.
    #[error("window at {base:#x} of {size:#x} bytes overflows the 64-bit bus")]
    WindowOverflow {
        /// Bus base.
        base: u64,
        /// Size.
        size: u64,
    },
}

/// A pool's bus window: `[base, base + size)`. The only memory the device may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    base: u64,
    end: u64,
}

impl PoolWindow {
    /// A window at bus address `base` of `size` bytes. Fails if the end overflows.
    pub fn new(base: u64, size: u64) -> Result<Self, LayoutError> {
        let end = base
            .checked_add(size)
            .ok_or(LayoutError::WindowOverflow { base, size })?;
        Ok(Self { base, end })
    }

    /// Bus address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.end - self.base
    }

    /// Whether `[addr, addr + len)` lies wholly inside the window. An overflowing
    /// `addr + len` is outside. A zero-length range is inside if `addr` is inside or at the end.
    #[inline]
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.base && end <= self.end,
            None => false,
        }
    }

    /// Offset of `addr` from the base when `[addr, addr + len)` is inside.
    #[inline]
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        self.contains(addr, len).then(|| addr - self.base)
    }

    /// Bus address of `offset` when `[offset, offset + len)` is inside.
    #[inline]
    pub fn bus_of(&self, offset: u64, len: u64) -> Option<u64> {
        let addr = self.base.checked_add(offset)?;
        self.contains(addr, len).then_some(addr)
    }
}

/// Bytes of a split ring's descriptor table.
pub const fn desc_table_size(queue_size: u16) -> u64 {
    DESC_SIZE * queue_size as u64
}

/// Bytes of a split ring's available ring, `used_event` included.
pub const fn avail_ring_size(queue_size: u16) -> u64 {
    6 + 2 * queue_size as u64
}

/// Bytes of a split ring's used ring, `avail_event` included.
pub const fn used_ring_size(queue_size: u16) -> u64 {
    6 + 8 * queue_size as u64
}

/// Rounds `v` up to a multiple of the power of two `align`; `None` on overflow.
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// Slots needed for `len` bytes (at least one).
pub const fn slots_for(len: u64) -> u64 {
    if len == 0 {
        1
    } else {
        len.div_ceil(SLOT_SIZE)
    }
}

/// Where one queue's structures live, as byte offsets from the pool start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue size (number of descriptors).
    pub size: u16,
    /// Descriptor table (16-byte aligned).
    pub desc: u64,
    /// Available ring (2-byte aligned).
    pub avail: u64,
    /// Used ring (4-byte aligned).
    pub used: u64,
    /// First indirect table; `size` tables of [`INDIRECT_TABLE_DESCS`] descriptors follow.
    pub indirect: u64,
    /// First bounce slot of this queue's area.
    pub slots: u64,
    /// Number of bounce slots in this queue's area.
    pub slot_count: u64,
}

impl QueueLayout {
    /// Offset of indirect table `i` (one per descriptor head).
    pub fn indirect_table(&self, i: u16) -> u64 {
        self.indirect + u64::from(i) * DESC_SIZE * u64::from(INDIRECT_TABLE_DESCS)
    }

    /// Offset of slot `i` of this queue's area.
    pub fn slot(&self, i: u64) -> u64 {
        self.slots + i * SLOT_SIZE
    }
}

/// The driver's carve-up of a pool: ring blocks first (one page-aligned block per queue),
/// then indirect tables, then 2 KiB slots split evenly into one area per queue so two
/// queues never share an allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    /// Pool size in bytes.
    pub pool_size: u64,
    /// Per-queue structures.
    pub queues: Vec<QueueLayout>,
}

impl PoolLayout {
    /// Checks that `pool_size` is a power of two within [`MIN_POOL_SIZE`], [`MAX_POOL_SIZE`].
    pub fn check_pool_size(pool_size: u64) -> Result<(), LayoutError> {
        if !pool_size.is_power_of_two() {
            return Err(LayoutError::NotPowerOfTwo(pool_size));
        }
        if !(MIN_POOL_SIZE..=MAX_POOL_SIZE).contains(&pool_size) {
            return Err(LayoutError::PoolSizeOutOfRange {
                size: pool_size,
                min: MIN_POOL_SIZE,
                max: MAX_POOL_SIZE,
            });
        }
        Ok(())
    }

    /// Carves a pool of `pool_size` bytes for `num_queues` queues of `queue_size` each.
    pub fn new(pool_size: u64, num_queues: u16, queue_size: u16) -> Result<Self, LayoutError> {
        Self::check_pool_size(pool_size)?;
        if queue_size == 0 || !queue_size.is_power_of_two() || queue_size > MAX_QUEUE_SIZE {
            return Err(LayoutError::BadQueueSize(queue_size));
        }
        if num_queues == 0 {
            return Err(LayoutError::BadQueueCount(num_queues));
        }
        let qs = u64::from(queue_size);
        let q = u64::from(num_queues);
        // All sizes below are bounded by MAX_QUEUE_SIZE and u16 queue counts, far from
        // overflow, but stay checked so the function is total.
        let used_off = align_up(desc_table_size(queue_size) + avail_ring_size(queue_size), 4)
            .ok_or(LayoutError::BadQueueSize(queue_size))?;
        let ring_block = align_up(used_off + used_ring_size(queue_size), PAGE_SIZE)
            .ok_or(LayoutError::BadQueueSize(queue_size))?;
        let tables_block = align_up(qs * u64::from(INDIRECT_TABLE_DESCS) * DESC_SIZE, PAGE_SIZE)
            .ok_or(LayoutError::BadQueueSize(queue_size))?;
        let fixed = ring_block
            .checked_add(tables_block)
            .and_then(|b| b.checked_mul(q))
            .filter(|f| *f < pool_size)
            .ok_or(LayoutError::BadQueueCount(num_queues))?;
        let slots_start = fixed;
        let slots_per_queue = (pool_size - fixed) / SLOT_SIZE / q;
        if slots_per_queue < MAX_MAPPING_SLOTS {
            return Err(LayoutError::TooFewSlots {
                pool: pool_size,
                slots: slots_per_queue,
                need: MAX_MAPPING_SLOTS,
            });
        }
        let queues = (0..q)
            .map(|i| {
                let ring = i * ring_block;
                QueueLayout {
                    size: queue_size,
                    desc: ring,
                    avail: ring + desc_table_size(queue_size),
                    used: ring + used_off,
                    indirect: q * ring_block + i * tables_block,
                    slots: slots_start + i * slots_per_queue * SLOT_SIZE,
                    slot_count: slots_per_queue,
                }
            })
            .collect();
        Ok(Self { pool_size, queues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rejects_straddle_overflow_and_outside() {
        let w = PoolWindow::new(0x1_0000_0000, 0x100_0000).unwrap();
        assert!(w.contains(0x1_0000_0000, 0x100_0000));
        assert!(!w.contains(0x1_0000_0000, 0x100_0001), "straddles end");
        assert!(!w.contains(0xffff_ffff, 2), "starts before");
        assert!(!w.contains(u64::MAX - 1, 4), "overflows");
        assert!(w.contains(0x1_00ff_ffff, 1));
        assert_eq!(w.offset_of(0x1_0000_1000, 16), Some(0x1000));
        assert_eq!(w.bus_of(0xfff_ffff, 2), None);
        assert!(PoolWindow::new(u64::MAX, 2).is_err());
    }

    #[test]
    fn layout_places_rings_tables_and_slots_without_overlap() {
        let l = PoolLayout::new(16 << 20, 2, 256).unwrap();
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for q in &l.queues {
            assert_eq!(q.desc % 16, 0);
            assert_eq!(q.used % 4, 0);
            assert_eq!(q.slots % SLOT_SIZE, 0);
            spans.push((q.desc, desc_table_size(q.size)));
            spans.push((q.avail, avail_ring_size(q.size)));
            spans.push((q.used, used_ring_size(q.size)));
            spans.push((
                q.indirect,
                u64::from(q.size) * u64::from(INDIRECT_TABLE_DESCS) * DESC_SIZE,
            ));
            spans.push((q.slots, q.slot_count * SLOT_SIZE));
        }
        spans.sort();
        for pair in spans.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:?} overlap");
        }
        let (last, len) = spans.last().copied().unwrap();
        assert!(last + len <= l.pool_size);
    }

    #[test]
    fn layout_rejects_bad_sizes() {
        assert!(matches!(
            PoolLayout::new(3 << 20, 1, 128),
            Err(LayoutError::NotPowerOfTwo(_))
        ));
        assert!(matches!(
            PoolLayout::new(512 << 10, 1, 128),
            Err(LayoutError::PoolSizeOutOfRange { .. })
        ));
        assert!(matches!(
            PoolLayout::new(1 << 20, 1, 100),
            Err(LayoutError::BadQueueSize(100))
        ));
        assert!(matches!(
            PoolLayout::new(1 << 20, 0, 128),
            Err(LayoutError::BadQueueCount(0))
        ));
        assert!(PoolLayout::new(1 << 20, 16, 256).is_err());
    }

    #[test]
    fn slots_for_rounds_up() {
        assert_eq!(slots_for(0), 1);
        assert_eq!(slots_for(1), 1);
        assert_eq!(slots_for(2048), 1);
        assert_eq!(slots_for(2049), 2);
        assert_eq!(slots_for(MAX_MAPPING), MAX_MAPPING_SLOTS);
    }
}

//! Pool arithmetic: the bus window every DMA is checked against, and how the driver carves
//! the pool into rings, indirect tables and bounce slots.
//!
//! All `(addr, len)` arithmetic here is checked; nothing wraps.

use thiserror::Error;

/// Tables and rings are sized in descriptors; the descriptor is defined with its layout.
pub use crate::descriptor::DESC_SIZE;

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

/// Rounds `v` up to a multiple of the power of two `align`; `None` on overflow or when
/// `align` is not a power of two (zero included).
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    if !align.is_power_of_two() {
        return None;
    }
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

/// Properties of the layout arithmetic against a `u128` reference: nothing here panics on
/// any input, every checked function agrees with exact (non-wrapping) arithmetic, and
/// whatever is reported inside a window or a pool really is inside it.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any u64, biased towards the values where wrapping bugs live.
    fn edgy_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => any::<u64>(),
            1 => prop_oneof![
                Just(0u64),
                Just(1),
                Just(u64::MAX),
                Just(u64::MAX - 1),
                Just(1 << 63),
                Just((1 << 63) - 1),
                Just(u64::from(u32::MAX)),
                Just(u64::from(u32::MAX) + 1),
            ],
            1 => (0u32..64, -2i64..=2).prop_map(|(k, d)| (1u64 << k).wrapping_add_signed(d)),
            1 => 0u64..=2 * MAX_POOL_SIZE,
            1 => (0u64..4).prop_map(|k| u64::MAX - k),
        ]
    }

    /// A window and a range near its edges (or anywhere): `(base, size, addr, off, len)`,
    /// `addr` a bus address near the window's ends, `off` an offset near 0 or the size.
    fn window_and_range() -> impl Strategy<Value = (u64, u64, u64, u64, u64)> {
        (edgy_u64(), edgy_u64()).prop_flat_map(|(base, size)| {
            let addr = prop_oneof![
                edgy_u64(),
                (-3i64..=3).prop_map(move |d| base.wrapping_add_signed(d)),
                (-3i64..=3).prop_map(move |d| base.wrapping_add(size).wrapping_add_signed(d)),
            ];
            let off = prop_oneof![
                edgy_u64(),
                0u64..=3,
                (-3i64..=3).prop_map(move |d| size.wrapping_add_signed(d)),
            ];
            let len = prop_oneof![
                edgy_u64(),
                0u64..=4,
                (-3i64..=3).prop_map(move |d| size.wrapping_add_signed(d)),
            ];
            (Just(base), Just(size), addr, off, len)
        })
    }

    /// Exact reference: `[addr, addr + len)` inside `[base, base + size)`, in u128.
    fn inside_ref(base: u64, size: u64, addr: u64, len: u64) -> bool {
        let (b, s, a, l) = (
            u128::from(base),
            u128::from(size),
            u128::from(addr),
            u128::from(len),
        );
        a >= b && a + l <= b + s
    }

    fn ceil_to(v: u128, align: u128) -> u128 {
        v.div_ceil(align) * align
    }

    /// The layout [`PoolLayout::new`] must produce, computed in u128 from the description
    /// in its documentation; `None` where it must refuse.
    fn layout_ref(pool: u64, nq: u16, qs: u16) -> Option<Vec<[u128; 7]>> {
        let p = u128::from(pool);
        if !pool.is_power_of_two()
            || p < u128::from(MIN_POOL_SIZE)
            || p > u128::from(MAX_POOL_SIZE)
            || qs == 0
            || !qs.is_power_of_two()
            || qs > MAX_QUEUE_SIZE
            || nq == 0
        {
            return None;
        }
        let (q, n) = (u128::from(qs), u128::from(nq));
        let used_off = ceil_to(16 * q + 6 + 2 * q, 4);
        let ring_block = ceil_to(used_off + 6 + 8 * q, u128::from(PAGE_SIZE));
        let tables_block = ceil_to(q * 64 * 16, u128::from(PAGE_SIZE));
        let fixed = (ring_block + tables_block) * n;
        if fixed >= p {
            return None;
        }
        let per_queue = (p - fixed) / u128::from(SLOT_SIZE) / n;
        if per_queue < u128::from(MAX_MAPPING_SLOTS) {
            return None;
        }
        Some(
            (0..n)
                .map(|i| {
                    [
                        q,
                        i * ring_block,
                        i * ring_block + 16 * q,
                        i * ring_block + used_off,
                        n * ring_block + i * tables_block,
                        fixed + i * per_queue * u128::from(SLOT_SIZE),
                        per_queue,
                    ]
                })
                .collect(),
        )
    }

    fn pool_size() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => (20u32..=30).prop_map(|k| 1u64 << k),
            1 => (0u32..64).prop_map(|k| 1u64 << k),
            1 => edgy_u64(),
        ]
    }

    fn queue_size() -> impl Strategy<Value = u16> {
        prop_oneof![
            3 => (0u32..=8).prop_map(|k| 1u16 << k),
            1 => any::<u16>(),
        ]
    }

    fn queue_count() -> impl Strategy<Value = u16> {
        prop_oneof![3 => 0u16..=8, 1 => any::<u16>()]
    }

    #[test]
    fn ring_sizes_agree_with_exact_arithmetic_for_every_queue_size() {
        for q in 0..=u16::MAX {
            let q128 = u128::from(q);
            assert_eq!(u128::from(desc_table_size(q)), 16 * q128);
            assert_eq!(u128::from(avail_ring_size(q)), 6 + 2 * q128);
            assert_eq!(u128::from(used_ring_size(q)), 6 + 8 * q128);
        }
    }

    #[test]
    fn align_up_of_zero_or_a_non_power_of_two_is_none_not_a_panic() {
        // Regression: `align - 1` underflowed (a panic in debug builds) for `align == 0`, and
        // a non-power-of-two alignment returned a value that is not a multiple of it.
        assert_eq!(align_up(0, 0), None);
        assert_eq!(align_up(5, 0), None);
        assert_eq!(align_up(u64::MAX, 0), None);
        assert_eq!(align_up(5, 3), None);
        assert_eq!(align_up(4, 12), None);
        assert_eq!(align_up(5, 4), Some(8));
        assert_eq!(align_up(0, 1 << 63), Some(0));
        assert_eq!(align_up(1, 1 << 63), Some(1 << 63));
        assert_eq!(align_up((1 << 63) + 1, 1 << 63), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn window_new_agrees_with_u128_and_never_wraps(base in edgy_u64(), size in edgy_u64()) {
            let fits = u128::from(base) + u128::from(size) <= u128::from(u64::MAX);
            match PoolWindow::new(base, size) {
                Ok(w) => {
                    prop_assert!(fits);
                    prop_assert_eq!((w.base(), w.size()), (base, size));
                }
                Err(e) => {
                    prop_assert!(!fits);
                    prop_assert_eq!(e, LayoutError::WindowOverflow { base, size });
                }
            }
        }

        #[test]
        fn contains_offset_of_and_bus_of_agree_with_u128_and_only_report_inside(
            (base, size, addr, off, len) in window_and_range(),
        ) {
            let Ok(w) = PoolWindow::new(base, size) else {
                return Ok(());
            };
            let inside = inside_ref(base, size, addr, len);
            prop_assert_eq!(w.contains(addr, len), inside, "contains({:#x}, {:#x})", addr, len);
            match w.offset_of(addr, len) {
                Some(off) => {
                    prop_assert!(inside);
                    prop_assert_eq!(u128::from(off), u128::from(addr) - u128::from(base));
                    prop_assert!(u128::from(off) + u128::from(len) <= u128::from(size));
                }
                None => prop_assert!(!inside),
            }
            // An offset from the base: inside iff `[off, off + len)` is inside `[0, size)`.
            let bus_ref = inside_ref(0, size, off, len);
            match w.bus_of(off, len) {
                Some(bus) => {
                    prop_assert!(bus_ref, "bus_of({:#x}, {:#x}) = {:#x}", off, len, bus);
                    prop_assert_eq!(u128::from(bus), u128::from(base) + u128::from(off));
                    prop_assert!(bus >= base);
                    prop_assert!(u128::from(bus) + u128::from(len) <= u128::from(base) + u128::from(size));
                    prop_assert!(w.contains(bus, len));
                    prop_assert_eq!(w.offset_of(bus, len), Some(off));
                }
                None => prop_assert!(!bus_ref, "bus_of({:#x}, {:#x}) refused an inside range", off, len),
            }
        }

        #[test]
        fn align_up_agrees_with_u128_for_every_alignment(v in edgy_u64(), k in 0u32..64, junk in edgy_u64()) {
            let align = 1u64 << k;
            let exact = ceil_to(u128::from(v), u128::from(align));
            match align_up(v, align) {
                Some(r) => {
                    prop_assert_eq!(u128::from(r), exact);
                    prop_assert_eq!(r % align, 0);
                    prop_assert!(r >= v && r - v < align);
                }
                None => prop_assert!(exact > u128::from(u64::MAX)),
            }
            // Any other alignment is refused, never a panic.
            if !junk.is_power_of_two() {
                prop_assert_eq!(align_up(v, junk), None);
            }
        }

        #[test]
        fn slots_for_agrees_with_u128(len in edgy_u64()) {
            let exact = u128::from(len).div_ceil(u128::from(SLOT_SIZE)).max(1);
            let n = slots_for(len);
            prop_assert_eq!(u128::from(n), exact);
            // The slots really hold the bytes, and one fewer would not.
            prop_assert!(u128::from(n) * u128::from(SLOT_SIZE) >= u128::from(len));
            prop_assert!(n == 1 || u128::from(n - 1) * u128::from(SLOT_SIZE) < u128::from(len));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn pool_layout_agrees_with_u128_reference_and_every_area_is_inside_and_disjoint(
            pool in pool_size(),
            nq in queue_count(),
            qs in queue_size(),
            base_page in edgy_u64(),
        ) {
            let got = PoolLayout::new(pool, nq, qs);
            let want = layout_ref(pool, nq, qs);
            let (layout, want) = match (got, want) {
                (Ok(l), Some(w)) => (l, w),
                (Err(_), None) => return Ok(()),
                (got, want) => {
                    return Err(TestCaseError::fail(format!(
                        "PoolLayout::new({pool:#x}, {nq}, {qs}) = {got:?}, reference {want:?}"
                    )));
                }
            };
            prop_assert_eq!(layout.pool_size, pool);
            prop_assert_eq!(layout.queues.len(), usize::from(nq));
            let table_bytes = u128::from(qs) * u128::from(INDIRECT_TABLE_DESCS) * u128::from(DESC_SIZE);
            let mut spans: Vec<(u128, u128)> = Vec::new();
            for (q, w) in layout.queues.iter().zip(&want) {
                let got = [
                    u128::from(q.size),
                    q.desc.into(),
                    q.avail.into(),
                    q.used.into(),
                    q.indirect.into(),
                    q.slots.into(),
                    q.slot_count.into(),
                ];
                prop_assert_eq!(&got, w);
                prop_assert_eq!(q.desc % DESC_SIZE, 0);
                prop_assert_eq!(q.avail % 2, 0);
                prop_assert_eq!(q.used % 4, 0);
                prop_assert_eq!(q.indirect % DESC_SIZE, 0);
                prop_assert_eq!(q.slots % SLOT_SIZE, 0);
                prop_assert!(q.slot_count >= MAX_MAPPING_SLOTS);
                spans.push((q.desc.into(), desc_table_size(qs).into()));
                spans.push((q.avail.into(), avail_ring_size(qs).into()));
                spans.push((q.used.into(), used_ring_size(qs).into()));
                spans.push((q.indirect.into(), table_bytes));
                spans.push((q.slots.into(), u128::from(q.slot_count) * u128::from(SLOT_SIZE)));
                // Each head's table and each slot lies in its queue's area.
                for i in [0, qs - 1] {
                    let t = u128::from(q.indirect_table(i));
                    prop_assert!(t >= u128::from(q.indirect) && t + 1024 <= u128::from(q.indirect) + table_bytes);
                }
                for i in [0, q.slot_count - 1] {
                    let s = u128::from(q.slot(i));
                    prop_assert!(s >= u128::from(q.slots));
                    prop_assert!(s + u128::from(SLOT_SIZE) <= u128::from(q.slots) + u128::from(q.slot_count) * u128::from(SLOT_SIZE));
                }
            }
            spans.sort_unstable();
            for pair in spans.windows(2) {
                prop_assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{:?} overlap", pair);
            }
            if let Some(&(last, len)) = spans.last() {
                prop_assert!(last + len <= u128::from(pool), "past the pool end");
            }
            // Placed in a window at any page-aligned bus address that fits, every area's
            // bus range is reported inside the window, and really is.
            let base = base_page & !(PAGE_SIZE - 1);
            if let Ok(w) = PoolWindow::new(base, pool) {
                for (off, len) in spans {
                    let (off, len) = (off as u64, len as u64);
                    let bus = w.bus_of(off, len);
                    prop_assert_eq!(bus, Some(base + off));
                    prop_assert!(inside_ref(base, pool, base + off, len));
                }
            }
        }
    }
}

//! The bounce-slot allocator: hands out runs of contiguous 2 KiB slots of one queue's area.
//!
//! Each queue owns its own area and its own allocator, so there are no locks and no atomics:
//! every method takes `&mut self`. The state is two bitmaps of `u64` words, one bit a slot:
//! `used` (the slot belongs to a live run) and `starts` (a live run begins at this slot).
//! `starts` lets [`SlotAllocator::free`] refuse a run that is not exactly one that was handed
//! out (double free, wrong length, a run that starts mid-allocation).
//!
//! Reuse is LIFO: freed runs are pushed on a small hint stack and the next allocation that
//! fits the most recently freed run takes it, so recently touched slots are handed out again
//! while still cache-warm. Allocations that no hint serves fall back to a next-fit search of
//! the bitmap from a cursor. When the whole area is free again the hints and cursor are reset,
//! so a fully drained allocator packs maximal runs from slot 0.

use swiotlb_shared::layout::{QueueLayout, MAX_MAPPING_SLOTS, SLOT_SIZE};
use thiserror::Error;

/// Most slots one allocator manages (2^20 slots, 2 GiB of 2 KiB slots: twice the largest pool).
/// [`SlotAllocator::new`] clamps larger counts to this.
pub const MAX_SLOTS: u64 = 1 << 20;

/// Depth of the LIFO hint stack of recently freed runs.
const HINTS: usize = 32;

/// Errors of [`SlotAllocator::free`]. On any error the allocator is unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// The run's length is zero or longer than the largest mapping.
    #[error("slot run of {count} slots is not 1..={MAX_MAPPING_SLOTS} slots long")]
    BadCount {
        /// Length asked for.
        count: u32,
    },
    /// The run does not lie inside the area.
    #[error("slot run [{first}, +{count}) is outside the area of {capacity} slots")]
    OutOfRange {
        /// First slot.
        first: u32,
        /// Length.
        count: u32,
        /// Slots in the area.
        capacity: u32,
    },
    /// No allocated run starts at `first` (never allocated, or already freed).
    #[error("no allocated slot run starts at slot {first} (double free or never allocated)")]
    NotAllocated {
        /// First slot.
        first: u32,
    },
    /// A run starts at `first` but its length is not `count`.
    #[error("slot run at slot {first} was not allocated with length {count}")]
    LengthMismatch {
        /// First slot.
        first: u32,
        /// Length given to `free`.
        count: u32,
    },
}

/// A run of contiguous slots: `count` slots from slot `first` of the queue's area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotRun {
    /// Index of the first slot within the area.
    pub first: u32,
    /// Number of slots, `1..=MAX_MAPPING_SLOTS`.
    pub count: u32,
}

impl SlotRun {
    /// Index one past the last slot.
    pub fn end(&self) -> u64 {
        u64::from(self.first) + u64::from(self.count)
    }

    /// Bytes the run covers.
    pub fn bytes(&self) -> u64 {
        u64::from(self.count) * SLOT_SIZE
    }

    /// Pool offset of the run's first byte in the area of `queue`, or `None` if the run does
    /// not lie inside that area (or the arithmetic overflows).
    pub fn pool_offset(&self, queue: &QueueLayout) -> Option<u64> {
        if self.end() > queue.slot_count {
            return None;
        }
        u64::from(self.first)
            .checked_mul(SLOT_SIZE)
            .and_then(|o| queue.slots.checked_add(o))
    }
}

/// Allocator of slot runs for one queue's area. See the module documentation.
// Aligned (and so padded) to 128 bytes, two cache lines: allocators of different queues
// placed side by side (an array, a `Vec` of queues) then never share a line. Unaligned, two
// threads each working its own allocator ran slower together than one alone (false
// sharing; `guest/benches/pool.rs`, BENCHMARKS.md).
#[repr(align(128))]
#[derive(Debug, Clone)]
pub struct SlotAllocator {
    /// Bit set: slot belongs to a live run. Bits past `capacity` are set (never free).
    used: Vec<u64>,
    /// Bit set: a live run begins here.
    starts: Vec<u64>,
    capacity: u32,
    free: u32,
    /// Next-fit search start.
    cursor: u32,
    /// Ring buffer of recently freed runs; `hints[top]` is the newest when `hint_len > 0`.
    hints: [SlotRun; HINTS],
    top: usize,
    hint_len: usize,
}

impl SlotAllocator {
    /// An allocator for an area of `slot_count` slots, all free. Counts above [`MAX_SLOTS`]
    /// are clamped to it (no pool is that large).
    pub fn new(slot_count: u64) -> Self {
        let capacity = slot_count.min(MAX_SLOTS) as u32; // <= 2^20: fits
        let words = capacity.div_ceil(64) as usize;
        let mut used = vec![0u64; words];
        let tail = capacity % 64;
        if tail != 0 {
            if let Some(last) = used.last_mut() {
                *last = u64::MAX << tail;
            }
        }
        Self {
            used,
            starts: vec![0u64; words],
            capacity,
            free: capacity,
            cursor: 0,
            hints: [SlotRun { first: 0, count: 0 }; HINTS],
            top: 0,
            hint_len: 0,
        }
    }

    /// Slots in the area.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots currently free (not necessarily contiguous).
    pub fn free_slots(&self) -> u32 {
        self.free
    }

    /// Allocates `slots` contiguous slots. `None` if `slots` is not in
    /// `1..=MAX_MAPPING_SLOTS` or no contiguous run of that length is free.
    // Always inlined, as are `free` and the hint helpers: left to itself the compiler calls
    // them out of line, and the calls (six saved registers, results through memory) cost
    // as much as the work: an alloc + free pair ran in ~19 ns instead of ~10 ns
    // (`guest/benches/pool.rs`, BENCHMARKS.md). The slow paths (`search`) stay out of line.
    #[inline(always)]
    pub fn alloc(&mut self, slots: u32) -> Option<SlotRun> {
        if slots == 0 || u64::from(slots) > MAX_MAPPING_SLOTS || slots > self.free {
            return None;
        }
        let first = match self.take_hint(slots) {
            Some(f) => f,
            None => self.search(slots)?,
        };
        if slots == 1 {
            set_bit(&mut self.used, first);
        } else {
            // search/hints guarantee first + slots <= capacity
            set_range(&mut self.used, first, first + slots);
        }
        set_bit(&mut self.starts, first);
        self.free -= slots;
        Some(SlotRun {
            first,
            count: slots,
        })
    }

    /// Frees `run`, which must be exactly a run returned by [`alloc`](Self::alloc) and not
    /// freed since. Anything else is an error and changes nothing.
    #[inline(always)]
    pub fn free(&mut self, run: SlotRun) -> Result<(), AllocError> {
        let SlotRun { first, count } = run;
        if count == 0 || u64::from(count) > MAX_MAPPING_SLOTS {
            return Err(AllocError::BadCount { count });
        }
        let end = match first.checked_add(count) {
            Some(e) if e <= self.capacity => e,
            _ => {
                return Err(AllocError::OutOfRange {
                    first,
                    count,
                    capacity: self.capacity,
                })
            }
        };
        if !test_bit(&self.starts, first) {
            return Err(AllocError::NotAllocated { first });
        }
        // The live run at `first` has length `count` iff all of [first, end) is used, no other
        // run starts inside it, and slot `end` does not continue it (free, a new start, or
        // the end of the area).
        let inside = if count == 1 {
            test_bit(&self.used, first)
        } else {
            find_bit(&self.used, first, end, false).is_none()
                && find_bit(&self.starts, first + 1, end, true).is_none()
        };
        let ends_here =
            end == self.capacity || !test_bit(&self.used, end) || test_bit(&self.starts, end);
        if !(inside && ends_here) {
            return Err(AllocError::LengthMismatch { first, count });
        }
        if count == 1 {
            clear_bit(&mut self.used, first);
        } else {
            clear_range(&mut self.used, first, end);
        }
        clear_bit(&mut self.starts, first);
        self.free += count;
        if self.free == self.capacity {
            self.hint_len = 0;
            self.cursor = 0;
        } else {
            self.push_hint(run);
        }
        Ok(())
    }

    #[inline(always)]
    fn push_hint(&mut self, run: SlotRun) {
        self.top = (self.top + 1) % HINTS;
        if let Some(h) = self.hints.get_mut(self.top) {
            *h = run;
        }
        self.hint_len = (self.hint_len + 1).min(HINTS);
    }

    #[inline(always)]
    fn pop_hint(&mut self) {
        self.top = (self.top + HINTS - 1) % HINTS;
        self.hint_len -= 1;
    }

    /// Serves `n` slots from the newest hint if it is long enough and still free.
    #[inline(always)]
    fn take_hint(&mut self, n: u32) -> Option<u32> {
        while self.hint_len > 0 {
            let h = *self.hints.get(self.top)?;
            if h.count < n {
                return None;
            }
            let free = if n == 1 {
                !test_bit(&self.used, h.first)
            } else {
                find_bit(&self.used, h.first, h.first + n, true).is_none()
            };
            if !free {
                // Stale: the search path handed these slots out since.
                self.pop_hint();
                continue;
            }
            if h.count == n {
                self.pop_hint();
            } else if let Some(slot) = self.hints.get_mut(self.top) {
                *slot = SlotRun {
                    first: h.first + n,
                    count: h.count - n,
                };
            }
            return Some(h.first);
        }
        None
    }

    /// Next-fit search for `n` free contiguous slots, wrapping once.
    fn search(&mut self, n: u32) -> Option<u32> {
        let cursor = self.cursor.min(self.capacity);
        let first = self
            .find_run(n, cursor, self.capacity)
            .or_else(|| self.find_run(n, 0, cursor))?;
        let end = first + n;
        self.cursor = if end >= self.capacity { 0 } else { end };
        Some(first)
    }

    /// First run of `n` free slots starting in `[from, to)` and ending inside the area.
    fn find_run(&self, n: u32, from: u32, to: u32) -> Option<u32> {
        let mut pos = from;
        loop {
            let start = find_bit(&self.used, pos, to, false)?;
            let end = start.checked_add(n)?;
            if end > self.capacity {
                return None;
            }
            match find_bit(&self.used, start, end, true) {
                None => return Some(start),
                Some(u) => pos = u + 1,
            }
        }
    }
}

#[inline]
fn test_bit(words: &[u64], i: u32) -> bool {
    words
        .get((i / 64) as usize)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

#[inline]
fn set_bit(words: &mut [u64], i: u32) {
    if let Some(w) = words.get_mut((i / 64) as usize) {
        *w |= 1u64 << (i % 64);
    }
}

#[inline]
fn clear_bit(words: &mut [u64], i: u32) {
    if let Some(w) = words.get_mut((i / 64) as usize) {
        *w &= !(1u64 << (i % 64));
    }
}

/// Mask of bits `[lo, hi)` of one word, `0 <= lo < hi <= 64`.
#[inline]
fn word_mask(lo: u32, hi: u32) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & (u64::MAX << lo)
}

/// Applies `f(word, mask)` to every word touched by bits `[from, to)`.
#[inline]
fn for_range(words: &mut [u64], from: u32, to: u32, f: impl Fn(&mut u64, u64)) {
    let mut i = from;
    while i < to {
        let base = i & !63;
        let hi = (to - base).min(64);
        if let Some(w) = words.get_mut((i / 64) as usize) {
            f(w, word_mask(i - base, hi));
        }
        i = base + 64;
    }
}

#[inline]
fn set_range(words: &mut [u64], from: u32, to: u32) {
    for_range(words, from, to, |w, m| *w |= m);
}

#[inline]
fn clear_range(words: &mut [u64], from: u32, to: u32) {
    for_range(words, from, to, |w, m| *w &= !m);
}

/// First index in `[from, to)` whose bit equals `want_set`.
#[inline]
fn find_bit(words: &[u64], from: u32, to: u32, want_set: bool) -> Option<u32> {
    if from >= to {
        return None;
    }
    let mut wi = (from / 64) as usize;
    let last = ((to - 1) / 64) as usize;
    let mut mask = u64::MAX << (from % 64);
    loop {
        let w = *words.get(wi)?;
        let w = if want_set { w } else { !w } & mask;
        if w != 0 {
            let pos = wi as u32 * 64 + w.trailing_zeros();
            return (pos < to).then_some(pos);
        }
        if wi >= last {
            return None;
        }
        wi += 1;
        mask = u64::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = MAX_MAPPING_SLOTS as u32;

    #[test]
    fn single_slots_fill_the_area_then_run_out() {
        let mut a = SlotAllocator::new(200);
        let mut seen = [false; 200];
        for _ in 0..200 {
            let r = a.alloc(1).unwrap();
            assert!(!seen[r.first as usize]);
            seen[r.first as usize] = true;
        }
        assert_eq!(a.free_slots(), 0);
        assert_eq!(a.alloc(1), None);
    }

    #[test]
    fn invalid_lengths_are_not_allocated() {
        let mut a = SlotAllocator::new(1024);
        assert_eq!(a.alloc(0), None);
        assert_eq!(a.alloc(MAX + 1), None);
        assert!(a.alloc(MAX).is_some());
    }

    #[test]
    fn no_contiguous_run_means_none() {
        let mut a = SlotAllocator::new(8);
        let runs: Vec<_> = (0..8).map(|_| a.alloc(1).unwrap()).collect();
        // Free every other slot: 4 free, but never 2 contiguous.
        for r in runs.iter().step_by(2) {
            a.free(*r).unwrap();
        }
        assert_eq!(a.free_slots(), 4);
        assert_eq!(a.alloc(2), None);
        assert!(a.alloc(1).is_some());
    }

    #[test]
    fn freed_run_is_reused_first() {
        let mut a = SlotAllocator::new(1024);
        let _keep = a.alloc(3).unwrap();
        let x = a.alloc(4).unwrap();
        let _y = a.alloc(4).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.alloc(4), Some(x));
    }

    #[test]
    fn reuse_is_last_in_first_out() {
        let mut a = SlotAllocator::new(1024);
        let _keep = a.alloc(1).unwrap();
        let r: Vec<_> = (0..4).map(|_| a.alloc(1).unwrap()).collect();
        for x in &r {
            a.free(*x).unwrap();
        }
        for x in r.iter().rev() {
            assert_eq!(a.alloc(1), Some(*x));
        }
    }

    #[test]
    fn single_slot_from_a_larger_freed_run_reuses_its_slots() {
        let mut a = SlotAllocator::new(1024);
        let _keep = a.alloc(1).unwrap();
        let big = a.alloc(4).unwrap();
        let _tail = a.alloc(1).unwrap();
        a.free(big).unwrap();
        for i in 0..4 {
            assert_eq!(a.alloc(1).unwrap().first, big.first + i);
        }
    }

    #[test]
    fn double_free_is_rejected_and_changes_nothing() {
        let mut a = SlotAllocator::new(64);
        let r = a.alloc(2).unwrap();
        let _other = a.alloc(1).unwrap();
        a.free(r).unwrap();
        let before = a.free_slots();
        assert_eq!(a.free(r), Err(AllocError::NotAllocated { first: r.first }));
        assert_eq!(a.free_slots(), before);
    }

    #[test]
    fn free_with_wrong_length_is_rejected() {
        let mut a = SlotAllocator::new(64);
        let r = a.alloc(4).unwrap();
        let s = a.alloc(4).unwrap();
        let shorter = SlotRun { count: 3, ..r };
        let longer = SlotRun { count: 5, ..r };
        let spanning = SlotRun { count: 8, ..r };
        assert!(matches!(
            a.free(shorter),
            Err(AllocError::LengthMismatch { .. })
        ));
        assert!(matches!(
            a.free(longer),
            Err(AllocError::LengthMismatch { .. })
        ));
        assert!(matches!(
            a.free(spanning),
            Err(AllocError::LengthMismatch { .. })
        ));
        assert_eq!(a.free_slots(), 56);
        a.free(r).unwrap();
        // A run ending at a free slot, longer than allocated, is refused too.
        a.free(s).unwrap();
        let t = a.alloc(2).unwrap();
        assert!(matches!(
            a.free(SlotRun { count: 3, ..t }),
            Err(AllocError::LengthMismatch { .. })
        ));
        a.free(t).unwrap();
        assert_eq!(a.free_slots(), 64);
    }

    #[test]
    fn free_of_a_run_starting_mid_allocation_is_rejected() {
        let mut a = SlotAllocator::new(64);
        let r = a.alloc(4).unwrap();
        assert_eq!(
            a.free(SlotRun {
                first: r.first + 1,
                count: 3
            }),
            Err(AllocError::NotAllocated { first: r.first + 1 })
        );
    }

    #[test]
    fn free_out_of_range_or_bad_count_is_rejected() {
        let mut a = SlotAllocator::new(100);
        assert!(matches!(
            a.free(SlotRun {
                first: 99,
                count: 2
            }),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.free(SlotRun {
                first: u32::MAX,
                count: 1
            }),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            a.free(SlotRun { first: 0, count: 0 }),
            Err(AllocError::BadCount { .. })
        ));
        assert!(matches!(
            a.free(SlotRun {
                first: 0,
                count: MAX + 1
            }),
            Err(AllocError::BadCount { .. })
        ));
        assert_eq!(a.free_slots(), 100);
    }

    #[test]
    fn slot_count_is_clamped() {
        let a = SlotAllocator::new(u64::MAX);
        assert_eq!(u64::from(a.capacity()), MAX_SLOTS);
        let z = SlotAllocator::new(0);
        assert_eq!(z.capacity(), 0);
        assert_eq!(SlotAllocator::new(0).alloc(1), None);
    }

    #[test]
    fn run_maps_to_its_pool_offset_inside_the_area() {
        let q = QueueLayout {
            size: 16,
            desc: 0,
            avail: 256,
            used: 300,
            indirect: 4096,
            slots: 0x10000,
            slot_count: 10,
        };
        let r = SlotRun { first: 2, count: 3 };
        assert_eq!(r.pool_offset(&q), Some(0x10000 + 2 * SLOT_SIZE));
        assert_eq!(r.bytes(), 3 * SLOT_SIZE);
        assert_eq!(SlotRun { first: 8, count: 3 }.pool_offset(&q), None);
    }

    /// Throughput check: `cargo test --release -p swiotlb-guest alloc_free_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn alloc_free_throughput() {
        let mut a = SlotAllocator::new(8192);
        let held: Vec<_> = (0..64).map(|_| a.alloc(1).unwrap()).collect();
        let n = 50_000_000u32;
        let t = std::time::Instant::now();
        let mut sum = 0u64;
        for _ in 0..n {
            let r = a.alloc(1).unwrap();
            sum += u64::from(r.first);
            a.free(r).unwrap();
        }
        let el = t.elapsed();
        std::hint::black_box(sum);
        let mut q = Vec::new();
        let t2 = std::time::Instant::now();
        for i in 0..n / 16 {
            for _ in 0..16 {
                q.push(a.alloc(1 + i % 8).unwrap());
            }
            for r in q.drain(..) {
                a.free(r).unwrap();
            }
        }
        let el2 = t2.elapsed();
        println!(
            "1-slot alloc+free: {:.1} M pairs/s; 16 in flight of 1..8 slots: {:.1} M pairs/s",
            f64::from(n) / el.as_secs_f64() / 1e6,
            f64::from(n) / el2.as_secs_f64() / 1e6
        );
        drop(held);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u32),
        Free(usize),
        FreeBogus(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0u32..=MAX + 2).prop_map(Op::Alloc),
            4 => any::<usize>().prop_map(Op::Free),
            1 => (0u32..1100, 0u32..=MAX + 1).prop_map(|(f, c)| Op::FreeBogus(f, c)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_alloc_free_never_double_allocates_and_returns_everything(
            cap in 1u64..1100,
            ops in proptest::collection::vec(op(), 0..400),
        ) {
            let mut a = SlotAllocator::new(cap);
            let mut owner: Vec<Option<usize>> = vec![None; cap as usize];
            let mut live: Vec<SlotRun> = Vec::new();
            let mut serial = 0usize;
            for op in ops {
                match op {
                    Op::Alloc(n) => {
                        if let Some(r) = a.alloc(n) {
                            prop_assert_eq!(r.count, n);
                            prop_assert!(r.end() <= cap, "run {:?} outside {}", r, cap);
                            for s in r.first..r.first + r.count {
                                prop_assert!(owner[s as usize].is_none(), "slot {} handed out twice", s);
                                owner[s as usize] = Some(serial);
                            }
                            serial += 1;
                            live.push(r);
                        } else {
                            prop_assert!(n == 0 || n > MAX || n > a.free_slots()
                                || !(0..cap as u32).any(|s| (s..s + n).all(|t| (t as u64) < cap && owner[t as usize].is_none())),
                                "alloc({}) failed although a run was free", n);
                        }
                    }
                    Op::Free(i) => {
                        if !live.is_empty() {
                            let r = live.swap_remove(i % live.len());
                            prop_assert_eq!(a.free(r), Ok(()));
                            prop_assert_eq!(a.free(r).is_err(), true, "double free accepted");
                            for s in r.first..r.first + r.count {
                                owner[s as usize] = None;
                            }
                        }
                    }
                    Op::FreeBogus(first, count) => {
                        let genuine = live.iter().any(|r| r.first == first && r.count == count);
                        if !genuine {
                            let before = a.free_slots();
                            let bogus = SlotRun { first, count };
                            prop_assert!(a.free(bogus).is_err());
                            prop_assert_eq!(a.free_slots(), before);
                        }
                    }
                }
                let owned = owner.iter().filter(|o| o.is_some()).count() as u32;
                prop_assert_eq!(a.free_slots(), cap as u32 - owned);
            }
            for r in live.drain(..) {
                prop_assert_eq!(a.free(r), Ok(()));
            }
            prop_assert_eq!(a.free_slots(), cap as u32);
            // Full-area pattern: maximal runs, then single slots, cover the whole area.
            let mut got = 0u64;
            while let Some(r) = a.alloc(MAX) { got += u64::from(r.count); }
            prop_assert_eq!(got, cap / u64::from(MAX) * u64::from(MAX));
            while a.alloc(1).is_some() { got += 1; }
            prop_assert_eq!(got, cap);
            prop_assert_eq!(a.free_slots(), 0);
        }
    }

    // ---- properties against a model of held ranges ------------------------------------------

    use std::collections::BTreeMap;
    use swiotlb_shared::layout::{PoolLayout, PoolWindow};

    /// The runs a correct allocator has handed out and not had back: `first -> count`.
    #[derive(Debug, Default)]
    struct Held(BTreeMap<u32, u32>);

    impl Held {
        /// Whether `[first, first + count)` overlaps no held run.
        fn disjoint(&self, first: u32, count: u32) -> bool {
            let end = u64::from(first) + u64::from(count);
            let before_ok = self
                .0
                .range(..=first)
                .next_back()
                .is_none_or(|(f, c)| u64::from(*f) + u64::from(*c) <= u64::from(first));
            let after_ok = self
                .0
                .range(first..)
                .next()
                .is_none_or(|(f, _)| u64::from(*f) >= end);
            before_ok && after_ok
        }

        /// Longest free gap in an area of `capacity` slots.
        fn longest_gap(&self, capacity: u32) -> u32 {
            let mut at = 0u32;
            let mut best = 0u32;
            for (f, c) in &self.0 {
                best = best.max(f - at);
                at = f + c;
            }
            best.max(capacity - at)
        }

        fn held_slots(&self) -> u64 {
            self.0.values().map(|c| u64::from(*c)).sum()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Allocate this many slots (sometimes 0 or more than a mapping: refused).
        Alloc(u32),
        /// Free the held run picked by this index.
        Free(usize),
        /// Free something that is not exactly a held run.
        Bogus(u32, u32),
        /// Free every held run, in an order picked by this seed.
        FreeAll(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => prop_oneof![4 => 1u32..=MAX, 1 => 1u32..=4, 1 => Just(MAX), 1 => Just(0), 1 => Just(MAX + 1)]
                .prop_map(Step::Alloc),
            6 => any::<usize>().prop_map(Step::Free),
            2 => (any::<u32>(), 0u32..=MAX + 1).prop_map(|(f, c)| Step::Bogus(f, c)),
            1 => any::<u64>().prop_map(Step::FreeAll),
        ]
    }

    /// Area sizes: tiny, one or a few bitmap words, the driver's real areas, the clamp.
    fn area() -> impl Strategy<Value = u64> {
        prop_oneof![
            3 => 1u64..=300,
            3 => 1u64..=20_000,
            1 => Just(MAX_SLOTS),
            1 => MAX_SLOTS + 1..=u64::MAX,
        ]
    }

    /// Whether two allocators are in exactly the same state.
    fn same_state(a: &SlotAllocator, b: &SlotAllocator) -> bool {
        a.used == b.used
            && a.starts == b.starts
            && (a.capacity, a.free, a.cursor, a.top, a.hint_len)
                == (b.capacity, b.free, b.cursor, b.top, b.hint_len)
            && a.hints == b.hints
    }

    /// Frees every run of `held` in an order given by `seed`, checking each one.
    fn free_all(a: &mut SlotAllocator, held: &mut Held, seed: u64) -> Result<(), TestCaseError> {
        let mut runs: Vec<SlotRun> = held
            .0
            .iter()
            .map(|(f, c)| SlotRun {
                first: *f,
                count: *c,
            })
            .collect();
        held.0.clear();
        let mut x = seed | 1;
        while !runs.is_empty() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = runs.swap_remove((x % runs.len() as u64) as usize);
            prop_assert_eq!(a.free(r), Ok(()));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Across random alloc/free sequences of any size up to the largest mapping: no slot
        /// is ever in two held runs, every run lies inside the area, an allocation fails
        /// only when no free gap is long enough, a rejected free changes nothing at all, the
        /// free count always matches, and after everything is freed the allocator is as
        /// good as new: it reports the whole area free, hands it all out again, and behaves
        /// exactly like a fresh allocator.
        #[test]
        fn held_runs_never_overlap_stay_in_the_area_and_all_come_back(
            cap in area(),
            steps in proptest::collection::vec(step(), 1..300),
            after in proptest::collection::vec(step(), 0..100),
        ) {
            let mut a = SlotAllocator::new(cap);
            let capacity = cap.min(MAX_SLOTS) as u32;
            prop_assert_eq!(a.capacity(), capacity);
            let mut held = Held::default();
            for s in steps {
                match s {
                    Step::Alloc(n) => match a.alloc(n) {
                        Some(r) => {
                            prop_assert_eq!(r.count, n);
                            prop_assert!((1..=MAX).contains(&n));
                            prop_assert!(r.end() <= u64::from(capacity), "{:?} outside {} slots", r, capacity);
                            prop_assert!(held.disjoint(r.first, r.count), "{:?} overlaps a held run", r);
                            held.0.insert(r.first, r.count);
                        }
                        None => prop_assert!(
                            n == 0 || n > MAX || held.longest_gap(capacity) < n,
                            "alloc({}) refused with a gap of {}", n, held.longest_gap(capacity)
                        ),
                    },
                    Step::Free(i) => {
                        if !held.0.is_empty() {
                            let (f, c) = held.0.iter().nth(i % held.0.len()).map(|(f, c)| (*f, *c)).unwrap_or_default();
                            held.0.remove(&f);
                            let r = SlotRun { first: f, count: c };
                            prop_assert_eq!(a.free(r), Ok(()));
                            prop_assert!(a.free(r).is_err(), "double free accepted");
                        }
                    }
                    Step::Bogus(first, count) => {
                        // Aim near held runs half of the time.
                        let first = match held.0.keys().nth(first as usize % held.0.len().max(1)) {
                            Some(f) if first % 2 == 0 => f.wrapping_add(first % 3),
                            _ => first % (capacity + 2),
                        };
                        if held.0.get(&first) != Some(&count) {
                            let before = a.clone();
                            let bogus = SlotRun { first, count };
                            prop_assert!(a.free(bogus).is_err(), "bogus free {:?} accepted", bogus);
                            prop_assert!(same_state(&a, &before), "a refused free changed the allocator");
                        }
                    }
                    Step::FreeAll(seed) => {
                        free_all(&mut a, &mut held, seed)?;
                        prop_assert_eq!(a.free_slots(), capacity);
                    }
                }
                prop_assert_eq!(u64::from(a.free_slots()), u64::from(capacity) - held.held_slots());
            }
            free_all(&mut a, &mut held, 7)?;
            prop_assert_eq!(a.free_slots(), capacity);
            // As good as new: the same later sequence gives the same answers as a fresh one.
            let mut fresh = SlotAllocator::new(cap);
            let mut used = a.clone();
            let mut live: Vec<SlotRun> = Vec::new();
            for s in after {
                match s {
                    Step::Alloc(n) => {
                        let (x, y) = (used.alloc(n), fresh.alloc(n));
                        prop_assert_eq!(x, y);
                        live.extend(x);
                    }
                    _ if !live.is_empty() => {
                        let r = live.swap_remove(0);
                        prop_assert_eq!(used.free(r), fresh.free(r));
                    }
                    _ => {}
                }
                prop_assert_eq!(used.free_slots(), fresh.free_slots());
            }
            // The whole area comes back: maximal runs, then single slots, cover it exactly.
            let mut got = 0u64;
            while let Some(r) = a.alloc(MAX) {
                prop_assert!(held.disjoint(r.first, r.count));
                held.0.insert(r.first, r.count);
                got += u64::from(r.count);
            }
            prop_assert_eq!(got, u64::from(capacity) / u64::from(MAX) * u64::from(MAX));
            while let Some(r) = a.alloc(1) {
                prop_assert!(held.disjoint(r.first, 1));
                held.0.insert(r.first, 1);
                got += 1;
            }
            prop_assert_eq!(got, u64::from(capacity));
            prop_assert_eq!(a.free_slots(), 0);
        }

        /// For any layout the driver may use, every run the allocator of a queue's area
        /// hands out maps to a slot-aligned pool offset inside that area (and so inside the
        /// pool and the bus window), never into the rings, the indirect tables or another
        /// queue's area; a run of `n` slots covers `n` whole slots.
        #[test]
        fn runs_map_to_slot_aligned_offsets_inside_their_queue_area(
            pool_log in 20u32..=30,
            nq in 1u16..=4,
            qs_log in 0u32..=8,
            pick in any::<usize>(),
            sizes in proptest::collection::vec(prop_oneof![1u32..=MAX, Just(MAX), Just(1)], 1..200),
            frees in proptest::collection::vec(any::<bool>(), 200),
        ) {
            let pool = 1u64 << pool_log;
            let Ok(layout) = PoolLayout::new(pool, nq, 1 << qs_log) else {
                return Ok(());
            };
            let q = layout.queues[pick % layout.queues.len()];
            let area_end = q.slots + q.slot_count * SLOT_SIZE;
            let window = PoolWindow::new(0x80_0000_0000, pool).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut a = SlotAllocator::new(q.slot_count);
            let mut live: Vec<SlotRun> = Vec::new();
            for (n, free) in sizes.into_iter().zip(frees) {
                if free && !live.is_empty() {
                    let r = live.swap_remove(0);
                    prop_assert_eq!(a.free(r), Ok(()));
                }
                let Some(r) = a.alloc(n) else { continue };
                let off = r.pool_offset(&q);
                prop_assert!(off.is_some(), "{:?} has no offset in {:?}", r, q);
                let off = off.unwrap_or_default();
                prop_assert_eq!(off, q.slot(u64::from(r.first)));
                prop_assert_eq!((off - q.slots) % SLOT_SIZE, 0, "not on a slot boundary");
                prop_assert_eq!(off % SLOT_SIZE, 0);
                prop_assert_eq!(r.bytes(), u64::from(n) * SLOT_SIZE);
                prop_assert!(off >= q.slots && off + r.bytes() <= area_end, "{:#x}+{:#x} outside the area", off, r.bytes());
                prop_assert!(area_end <= pool);
                prop_assert!(window.bus_of(off, r.bytes()).is_some());
                for other in &layout.queues {
                    let o_end = other.slots + other.slot_count * SLOT_SIZE;
                    let overlaps = off < o_end && other.slots < off + r.bytes();
                    prop_assert!(other == &q || !overlaps, "run in another queue's area");
                    let rings_end = other.indirect + u64::from(other.size) * 1024;
                    prop_assert!(off >= rings_end || off + r.bytes() <= other.desc, "run over rings or tables");
                }
                live.push(r);
            }
        }
    }
}

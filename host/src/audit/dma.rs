//! The per-DMA hot path: counters per queue and direction, drained by the writer once per
//! interval into a DMA summary record. No allocation, no hashing, no lock: a chain's
//! descriptors are summed locally and counted with at most four relaxed atomic adds per chain
//! (two per direction it has), not two per descriptor: each locked add costs ~2.5 ns here,
//! which alone put the per-descriptor check above its 5 ns budget (BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};

use swiotlb_shared::audit::QueueDma;

/// Queues counted one by one. Virtio-blk here has one request queue; a multi-queue device
/// would have at most one per vCPU, and 16 covers the machines this runs on. DMAs of
/// queues at or above this are still counted, in one shared bucket (queue `null`).
pub const MAX_QUEUES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    readable_descriptors: AtomicU64,
    readable_bytes: AtomicU64,
    writable_descriptors: AtomicU64,
    writable_bytes: AtomicU64,
}

/// DMA counters of one device, per queue and direction, since the last drain.
#[derive(Debug, Default)]
pub struct DmaAccumulator {
    slots: [Slot; MAX_QUEUES + 1],
}

impl DmaAccumulator {
    /// Counts one descriptor of `len` bytes on `queue`.
    #[inline]
    pub fn record(&self, queue: u16, len: u32, writable: bool) {
        let slot = &self.slots[usize::from(queue).min(MAX_QUEUES)];
        let (d, b) = if writable {
            (&slot.writable_descriptors, &slot.writable_bytes)
        } else {
            (&slot.readable_descriptors, &slot.readable_bytes)
        };
        d.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(u64::from(len), Ordering::Relaxed);
    }

    /// Counts a whole chain on `queue` at once: `readable` and `writable` are (descriptors,
    /// bytes). A direction with no descriptors costs nothing.
    #[inline]
    pub fn record_counts(&self, queue: u16, readable: (u64, u64), writable: (u64, u64)) {
        let slot = &self.slots[usize::from(queue).min(MAX_QUEUES)];
        if readable.0 != 0 {
            slot.readable_descriptors
                .fetch_add(readable.0, Ordering::Relaxed);
            slot.readable_bytes.fetch_add(readable.1, Ordering::Relaxed);
        }
        if writable.0 != 0 {
            slot.writable_descriptors
                .fetch_add(writable.0, Ordering::Relaxed);
            slot.writable_bytes.fetch_add(writable.1, Ordering::Relaxed);
        }
    }

    /// Takes the counts (resetting them), queues with at least one DMA only. A DMA counted
    /// while this runs lands in this drain or the next, never in neither: totals are exact.
    pub fn drain(&self) -> Vec<QueueDma> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let q = QueueDma {
                queue: (i < MAX_QUEUES).then_some(i as u16),
                readable_descriptors: s.readable_descriptors.swap(0, Ordering::Relaxed),
                readable_bytes: s.readable_bytes.swap(0, Ordering::Relaxed),
                writable_descriptors: s.writable_descriptors.swap(0, Ordering::Relaxed),
                writable_bytes: s.writable_bytes.swap(0, Ordering::Relaxed),
            };
            if q.readable_descriptors | q.readable_bytes | q.writable_descriptors | q.writable_bytes
                != 0
            {
                out.push(q);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmas_are_counted_per_queue_and_direction_and_drained_once() {
        let a = DmaAccumulator::default();
        a.record(0, 512, false);
        a.record(0, 4096, true);
        a.record(0, 16, false);
        a.record(1, 1, true);
        a.record(200, 7, true);
        a.record(300, 8, true);
        a.record_counts(1, (0, 0), (0, 0));
        let d = a.drain();
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[0],
            QueueDma {
                queue: Some(0),
                readable_descriptors: 2,
                readable_bytes: 528,
                writable_descriptors: 1,
                writable_bytes: 4096
            }
        );
        assert_eq!(d[1].queue, Some(1));
        assert_eq!(d[2].queue, None);
        assert_eq!((d[2].writable_descriptors, d[2].writable_bytes), (2, 15));
        assert!(a.drain().is_empty());
    }

    #[test]
    fn a_chain_counted_at_once_equals_its_descriptors_counted_one_by_one() {
        let (one, all) = (DmaAccumulator::default(), DmaAccumulator::default());
        let chain = [(16u32, false), (4096, true), (512, false), (1, true)];
        for (len, w) in chain {
            one.record(2, len, w);
        }
        all.record_counts(2, (2, 528), (2, 4097));
        all.record_counts(2, (0, 0), (0, 0));
        assert_eq!(one.drain(), all.drain());
        all.record_counts(3, (0, 0), (1, 9));
        let d = all.drain();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].queue, d[0].readable_descriptors, d[0].writable_bytes),
            (Some(3), 0, 9)
        );
    }
}

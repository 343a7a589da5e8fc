//! DMA accounting of the transport: every descriptor the device checked, counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// DMA counters of one device, per direction. Every descriptor that passed the pool check is
/// counted here before the device uses it.
#[derive(Debug, Default)]
pub struct DmaCounters {
    /// Chains popped from available rings and checked.
    pub chains: AtomicU64,
    /// Chains rejected by the pool check.
    pub chains_rejected: AtomicU64,
    /// Device-readable descriptors checked (driver to device).
    pub readable_descriptors: AtomicU64,
    /// Device-readable bytes checked.
    pub readable_bytes: AtomicU64,
    /// Device-writable descriptors checked (device to driver).
    pub writable_descriptors: AtomicU64,
    /// Device-writable bytes checked.
    pub writable_bytes: AtomicU64,
    /// Indirect tables checked.
    pub indirect_tables: AtomicU64,
    /// Used-buffer interrupts sent.
    pub interrupts: AtomicU64,
}

impl DmaCounters {
    /// Adds `v` to counter `c`.
    #[inline]
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Ordering::Relaxed);
    }

    /// Reads counter `c`.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Total descriptors checked, both directions.
    pub fn descriptors(&self) -> u64 {
        Self::get(&self.readable_descriptors) + Self::get(&self.writable_descriptors)
    }

    /// The sum of `parts`, counter by counter (per-queue counters, reported together).
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a DmaCounters>) -> DmaCounters {
        let total = DmaCounters::default();
        for p in parts {
            for (t, c) in total.fields().into_iter().zip(p.fields()) {
                Self::add(t, Self::get(c));
            }
        }
        total
    }

    fn fields(&self) -> [&AtomicU64; 8] {
        [
            &self.chains,
            &self.chains_rejected,
            &self.readable_descriptors,
            &self.readable_bytes,
            &self.writable_descriptors,
            &self.writable_bytes,
            &self.indirect_tables,
            &self.interrupts,
        ]
    }
}

//! Findings: device-policy violations by the driver, each counted and emitted as a structured
//! event. The audit log turns these into tamper-evident records; here they are `tracing`
//! events on the `swiotlb::finding` target plus per-kind counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds are defined once, with the audit schema, so the device, the log and its
/// verifier share one set of names.
pub use swiotlb_shared::audit::FindingKind;

/// One violation, with what is known of where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What went wrong.
    pub kind: FindingKind,
    /// Queue index, when the finding concerns a queue.
    pub queue: Option<u16>,
    /// Chain head, when the finding concerns a chain.
    pub head: Option<u16>,
    /// Bus address involved (0 when none).
    pub addr: u64,
    /// Length involved (0 when none).
    pub len: u64,
    /// Human-readable detail.
    pub detail: String,
}

impl Finding {
    /// A finding of `kind` with a detail message and no location.
    pub fn new(kind: FindingKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            queue: None,
            head: None,
            addr: 0,
            len: 0,
            detail: detail.into(),
        }
    }

    /// Sets the queue and chain head.
    pub fn at(mut self, queue: u16, head: Option<u16>) -> Self {
        self.queue = Some(queue);
        self.head = head;
        self
    }

    /// Sets the address range.
    pub fn range(mut self, addr: u64, len: u64) -> Self {
        self.addr = addr;
        self.len = len;
        self
    }
}

/// Whether a finding of `kind` leaves the device needing a reset (DEVICE_NEEDS_RESET): every
/// DMA violation, and every chain or ring the device cannot trust.
pub fn needs_reset(kind: FindingKind) -> bool {
    kind.is_dma_violation()
        || matches!(
            kind,
            FindingKind::ChainTooLong
                | FindingKind::DescriptorIndexOutOfRange
                | FindingKind::ReadableAfterWritable
                | FindingKind::ZeroLengthDescriptor
                | FindingKind::ChainLengthOverflow
                | FindingKind::BadIndirectTable
                | FindingKind::AvailIndexJump
        )
}

/// Per-kind finding counters of one device.
#[derive(Debug, Default)]
pub struct FindingCounters {
    counts: [AtomicU64; FindingKind::ALL.len()],
}

impl FindingCounters {
    /// Counts `finding` and emits it as a structured `tracing` event.
    pub fn record(&self, finding: &Finding) {
        if let Some(i) = FindingKind::ALL.iter().position(|k| *k == finding.kind) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            target: "swiotlb::finding",
            kind = finding.kind.name(),
            queue = finding.queue,
            head = finding.head,
            addr = format_args!("{:#x}", finding.addr),
            len = finding.len,
            detail = %finding.detail,
            "device policy violation"
        );
    }

    /// Count of one kind.
    pub fn count(&self, kind: FindingKind) -> u64 {
        FindingKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Total findings of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Total DMA violations (accesses that would have left the pool).
    pub fn dma_violations(&self) -> u64 {
        FindingKind::ALL
            .iter()
            .filter(|k| k.is_dma_violation())
            .map(|k| self.count(*k))
            .sum()
    }

    /// Non-zero counts by name, for summaries.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        FindingKind::ALL
            .iter()
            .map(|k| (k.name(), self.count(*k)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

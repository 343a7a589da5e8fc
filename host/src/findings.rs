//! Findings: device-policy violations by the driver, each counted and emitted as a structured
//! event. The audit log turns these into tamper-evident records; here they are `tracing`
//! events on the `swiotlb::finding` target plus per-kind counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the driver did wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// A data descriptor's `[addr, addr + len)` lies outside the pool, or straddles its end.
    DescriptorOutsidePool,
    /// A descriptor's `addr + len` overflows 64 bits.
    DescriptorOverflow,
    /// An indirect table lies outside the pool, or straddles its end.
    IndirectTableOutsidePool,
    /// An indirect table has a bad size, is nested, or indirect was not negotiated.
    BadIndirectTable,
    /// A descriptor table, available ring or used ring lies outside the pool.
    RingOutsidePool,
    /// A chain loops or is longer than the queue allows.
    ChainTooLong,
    /// A chain's `next` or head index is beyond its table.
    DescriptorIndexOutOfRange,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// A descriptor of length zero.
    ZeroLengthDescriptor,
    /// The chain's total length overflows 32 bits.
    ChainLengthOverflow,
    /// The available index moved by more than the queue size.
    AvailIndexJump,
    /// The pool BAR was not decoded (memory space off or BAR unassigned) while queues ran.
    PoolNotDecoded,
    /// The driver did not accept VIRTIO_F_SWIOTLB (strict policy refuses FEATURES_OK).
    SwiotlbDeclined,
    /// The driver accepted a feature the device did not offer.
    UnofferedFeature,
    /// The driver did not accept VIRTIO_F_VERSION_1.
    Version1Declined,
    /// The driver changed features after FEATURES_OK, or cleared a status bit.
    StatusProtocolViolation,
    /// A notification for a queue that does not exist, or is not enabled.
    BadQueueNotify,
    /// A queue size that is zero, not a power of two, or above the maximum.
    BadQueueSize,
    /// A request the device could not parse (bad header, missing status byte, ...).
    MalformedRequest,
    /// Attestation evidence placed outside the pool.
    EvidenceOutsidePool,
    /// Attestation evidence that did not verify, or was submitted out of order.
    AttestationRejected,
}

impl FindingKind {
    /// Every kind, in counter order.
    pub const ALL: [FindingKind; 21] = [
        Self::DescriptorOutsidePool,
        Self::DescriptorOverflow,
        Self::IndirectTableOutsidePool,
        Self::BadIndirectTable,
        Self::RingOutsidePool,
        Self::ChainTooLong,
        Self::DescriptorIndexOutOfRange,
        Self::ReadableAfterWritable,
        Self::ZeroLengthDescriptor,
        Self::ChainLengthOverflow,
        Self::AvailIndexJump,
        Self::PoolNotDecoded,
        Self::SwiotlbDeclined,
        Self::UnofferedFeature,
        Self::Version1Declined,
        Self::StatusProtocolViolation,
        Self::BadQueueNotify,
        Self::BadQueueSize,
        Self::MalformedRequest,
        Self::EvidenceOutsidePool,
        Self::AttestationRejected,
    ];

    /// Stable snake_case name used in events, JSON and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Self::DescriptorOutsidePool => "descriptor_outside_pool",
            Self::DescriptorOverflow => "descriptor_overflow",
            Self::IndirectTableOutsidePool => "indirect_table_outside_pool",
            Self::BadIndirectTable => "bad_indirect_table",
            Self::RingOutsidePool => "ring_outside_pool",
            Self::ChainTooLong => "chain_too_long",
            Self::DescriptorIndexOutOfRange => "descriptor_index_out_of_range",
            Self::ReadableAfterWritable => "readable_after_writable",
            Self::ZeroLengthDescriptor => "zero_length_descriptor",
            Self::ChainLengthOverflow => "chain_length_overflow",
            Self::AvailIndexJump => "avail_index_jump",
            Self::PoolNotDecoded => "pool_not_decoded",
            Self::SwiotlbDeclined => "swiotlb_declined",
            Self::UnofferedFeature => "unoffered_feature",
            Self::Version1Declined => "version_1_declined",
            Self::StatusProtocolViolation => "status_protocol_violation",
            Self::BadQueueNotify => "bad_queue_notify",
            Self::BadQueueSize => "bad_queue_size",
            Self::MalformedRequest => "malformed_request",
            Self::EvidenceOutsidePool => "evidence_outside_pool",
            Self::AttestationRejected => "attestation_rejected",
        }
    }

    /// Whether this kind is a DMA that would have reached outside the pool.
    pub fn is_dma_violation(self) -> bool {
        matches!(
            self,
            Self::DescriptorOutsidePool
                | Self::DescriptorOverflow
                | Self::IndirectTableOutsidePool
                | Self::RingOutsidePool
                | Self::PoolNotDecoded
                | Self::EvidenceOutsidePool
        )
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

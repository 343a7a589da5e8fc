//! Metrics of the block device. Every field is counted by `device.rs` and reported in the
//! session summary.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Block request counters.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// VIRTIO_BLK_T_IN requests completed OK.
    pub reads: AtomicU64,
    /// Bytes read from the image into the pool.
    pub read_bytes: AtomicU64,
    /// VIRTIO_BLK_T_OUT requests completed OK.
    pub writes: AtomicU64,
    /// Bytes written from the pool to the image.
    pub write_bytes: AtomicU64,
    /// VIRTIO_BLK_T_FLUSH requests completed OK.
    pub flushes: AtomicU64,
    /// VIRTIO_BLK_T_GET_ID requests completed OK.
    pub get_ids: AtomicU64,
    /// VIRTIO_BLK_T_DISCARD requests completed OK.
    pub discards: AtomicU64,
    /// VIRTIO_BLK_T_WRITE_ZEROES requests completed OK.
    pub write_zeroes: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_IOERR (bad range, read-only, I/O failure).
    pub io_errors: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP.
    pub unsupported: AtomicU64,
    /// Requests whose framing was malformed (no header, no status byte).
    pub malformed: AtomicU64,
    /// Batches of reads and writes submitted to the io_uring (one per pass over a queue
    /// that started any, and one per drain before a FLUSH, DISCARD or WRITE_ZEROES).
    pub ring_batches: AtomicU64,
    /// Reads and writes that went through the io_uring; `ring_requests / ring_batches` is
    /// the mean batch.
    pub ring_requests: AtomicU64,
    /// Ring transfers that moved fewer bytes than asked, finished with a plain call.
    pub short_transfers: AtomicU64,
    /// Reads and writes alone in their pass (queue depth 1), made with one plain call:
    /// there is nothing to batch, and a ring round trip costs more than a `preadv`.
    pub single_calls: AtomicU64,
}

/// A plain snapshot of [`BlockMetrics`], for summaries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockMetricsSnapshot {
    /// See [`BlockMetrics::reads`].
    pub reads: u64,
    /// See [`BlockMetrics::read_bytes`].
    pub read_bytes: u64,
    /// See [`BlockMetrics::writes`].
    pub writes: u64,
    /// See [`BlockMetrics::write_bytes`].
    pub write_bytes: u64,
    /// See [`BlockMetrics::flushes`].
    pub flushes: u64,
    /// See [`BlockMetrics::get_ids`].
    pub get_ids: u64,
    /// See [`BlockMetrics::discards`].
    pub discards: u64,
    /// See [`BlockMetrics::write_zeroes`].
    pub write_zeroes: u64,
    /// See [`BlockMetrics::io_errors`].
    pub io_errors: u64,
    /// See [`BlockMetrics::unsupported`].
    pub unsupported: u64,
    /// See [`BlockMetrics::malformed`].
    pub malformed: u64,
    /// See [`BlockMetrics::ring_batches`].
    pub ring_batches: u64,
    /// See [`BlockMetrics::ring_requests`].
    pub ring_requests: u64,
    /// See [`BlockMetrics::short_transfers`].
    pub short_transfers: u64,
    /// See [`BlockMetrics::single_calls`].
    pub single_calls: u64,
}

impl BlockMetrics {
    /// Increments `c` by `v`.
    #[inline]
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Ordering::Relaxed);
    }

    /// A snapshot of every counter.
    pub fn snapshot(&self) -> BlockMetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockMetricsSnapshot {
            reads: g(&self.reads),
            read_bytes: g(&self.read_bytes),
            writes: g(&self.writes),
            write_bytes: g(&self.write_bytes),
            flushes: g(&self.flushes),
            get_ids: g(&self.get_ids),
            discards: g(&self.discards),
            write_zeroes: g(&self.write_zeroes),
            io_errors: g(&self.io_errors),
            unsupported: g(&self.unsupported),
            malformed: g(&self.malformed),
            ring_batches: g(&self.ring_batches),
            ring_requests: g(&self.ring_requests),
            short_transfers: g(&self.short_transfers),
            single_calls: g(&self.single_calls),
        }
    }
}

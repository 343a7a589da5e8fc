//! What a request is, as callers describe it ([`Request`]), as the driver builds it
//! (`Build`: type, sector, the data each way, the control slot's payload) and while it is in
//! flight (`Pending`: its slots and where its data goes when it completes).

use std::time::Instant;

use crate::pool::SlotRun;

/// Where a request's data goes when it completes.
#[derive(Debug)]
pub(super) enum Sink {
    /// Nothing to copy out.
    None,
    /// Copy `len` bytes of data to the caller's buffer at `at`.
    Read { at: usize, len: u32 },
    /// Copy the device ID out.
    Id,
}

/// A request in flight.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) head: u16,
    pub(super) ctl: SlotRun,
    pub(super) data: Vec<SlotRun>,
    pub(super) sink: Sink,
    /// When it was posted, if latencies are being recorded.
    pub(super) posted: Option<Instant>,
    /// The caller's name for it ([`BlockDriver::try_submit`]); 0 for the driver's own.
    pub(super) token: u64,
}

/// One virtio-blk request, as a caller that keeps several in flight describes it
/// ([`BlockDriver::try_submit`]). Sectors are 512 bytes.
#[derive(Debug, Clone, Copy)]
pub enum Request<'a> {
    /// Read `len` bytes at `sector`; they land at `at` in the buffer given to
    /// [`BlockDriver::poll_completion`].
    Read {
        /// First sector.
        sector: u64,
        /// Bytes (a multiple of 512, at most [`BlockDriver::max_part_bytes`]).
        len: u32,
        /// Where in the completion buffer.
        at: usize,
    },
    /// Write `data` at `sector` (copied into the pool when posted).
    Write {
        /// First sector.
        sector: u64,
        /// The data (a multiple of 512 bytes, at most [`BlockDriver::max_part_bytes`]).
        data: &'a [u8],
    },
    /// Flush the device's write cache.
    Flush,
    /// Discard `sectors` at `sector`.
    Discard {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u32,
    },
    /// Write zeroes to `sectors` at `sector`; `unmap` lets the device deallocate.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u32,
        /// May deallocate.
        unmap: bool,
    },
}

/// A request to build.
pub(super) struct Build<'a> {
    pub(super) ty: u32,
    pub(super) sector: u64,
    /// Data the device reads (OUT), or the length the device writes (IN).
    pub(super) out: Option<&'a [u8]>,
    pub(super) in_len: u32,
    /// Small payload in the control slot (range for DISCARD/WRITE_ZEROES).
    pub(super) ctl_payload: Option<[u8; 16]>,
    pub(super) sink: Sink,
}

/// One `struct virtio_blk_discard_write_zeroes`: `sectors` at `sector`, the unmap flag.
pub(super) fn range_payload(sector: u64, sectors: u32, unmap: bool) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[0..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..16].copy_from_slice(&u32::from(unmap).to_le_bytes());
    r
}

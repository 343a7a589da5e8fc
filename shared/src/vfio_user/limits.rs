//! Bounds on every length or count a peer can send. Each is checked before anything is
//! allocated or sliced, so a hostile peer can neither make us allocate without bound nor
//! walk us off the end of a buffer.

use super::header::HEADER_SIZE;
use super::region::{IoFdSubRegion, RegionIoFds};
use super::region_info::{SparseArea, REGION_INFO_FIXED_SIZE, SPARSE_CAP_FIXED_SIZE};

/// Largest `count` of data in one `REGION_READ`/`REGION_WRITE`, `DMA_READ`/`DMA_WRITE` or
/// `MIG_DATA_READ`/`MIG_DATA_WRITE` message that we accept, and the `max_data_xfer_size` we
/// advertise (1 MiB).
///
/// It is the spec's default and QEMU's `VFIO_USER_DEF_MAX_XFER`; register accesses are at
/// most 8 bytes, so only bulk transfers come near it.
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;

/// Most file descriptors we accept with one message, and the `max_msg_fds` we advertise.
///
/// QEMU's default (`VFIO_USER_DEF_MAX_FDS`); QEMU splits a `SET_IRQS` that carries more
/// eventfds into several messages, so a small number costs nothing but a few round trips.
pub const MAX_MSG_FDS: u32 = 8;

/// Longest VERSION capabilities string we accept, terminating NUL included (4 KiB).
///
/// QEMU's proposal is about 200 bytes; 4 KiB leaves room for future keys while bounding
/// what the JSON parser sees.
pub const MAX_CAPABILITIES_JSON: usize = 4096;

/// Most areas in a sparse-mmap capability.
///
/// A PCI BAR is split into a handful of mappable windows at most (an MSI-X table hole gives
/// two or three); 64 is far above that and keeps the capability under 1.1 KiB.
pub const MAX_SPARSE_AREAS: u32 = 64;

/// Most capabilities walked in one region-info capability chain. The chain must also move
/// strictly forward, so a loop is impossible; this only bounds the work.
pub const MAX_REGION_CAPS: usize = 16;

/// Largest region-info reply (`argsz`) a client will retry with (4 KiB): the sparse-mmap
/// capability at [`MAX_SPARSE_AREAS`] plus room for a few other capabilities.
pub const MAX_REGION_INFO_ARGSZ: u32 = 4096;

/// Most interrupts in one `DEVICE_SET_IRQS` (and the largest `count` in an IRQ-info reply):
/// 2048, the largest MSI-X table PCI allows.
pub const MAX_IRQ_SET_COUNT: u32 = 2048;

/// Most sub-regions in a `DEVICE_GET_REGION_IO_FDS` reply.
///
/// One ioeventfd per queue notification address is the only use; 128 is well above the
/// queue count of this device while keeping the reply near 5 KiB.
pub const MAX_IO_FD_SUBREGIONS: u32 = 128;

/// Largest `DEVICE_GET_REGION_IO_FDS` reply (`argsz`) a client will retry with: the fixed
/// 16 bytes and [`MAX_IO_FD_SUBREGIONS`] sub-regions of 40 bytes (5136 bytes).
pub const MAX_IO_FDS_ARGSZ: u32 =
    (RegionIoFds::FIXED_SIZE + MAX_IO_FD_SUBREGIONS as usize * IoFdSubRegion::SIZE) as u32;

/// Most writes in one `REGION_WRITE_MULTI`: QEMU's `VFIO_USER_MULTI_MAX` (200), the size of
/// the buffer it coalesces posted writes into.
pub const MAX_WRITE_MULTI: u64 = 200;

/// Most regions a device may report (100), as QEMU's client enforces
/// (`VFIO_USER_MAX_REGIONS`). A PCI device has 9 standard regions.
pub const MAX_REGIONS: u32 = 100;

/// Most IRQ types a device may report (50), as QEMU's client enforces
/// (`VFIO_USER_MAX_IRQS`). A PCI device has 5 standard IRQ indexes.
pub const MAX_IRQ_TYPES: u32 = 50;

/// Room in [`MAX_MESSAGE_SIZE`] for the fixed part of any message, on top of
/// [`MAX_DATA_XFER_SIZE`] bytes of data (8 KiB). The largest fixed parts are a full
/// `REGION_WRITE_MULTI` (4808 bytes), a full `GET_REGION_IO_FDS` reply (5136 bytes) and a
/// VERSION message (4100 bytes); the assertions below keep this true.
pub const MAX_FIXED_PAYLOAD: usize = 8192;

/// Largest message (header included) we accept or produce: a header, [`MAX_DATA_XFER_SIZE`]
/// bytes of data and [`MAX_FIXED_PAYLOAD`] for the fixed part.
pub const MAX_MESSAGE_SIZE: u32 =
    (HEADER_SIZE + MAX_DATA_XFER_SIZE as usize + MAX_FIXED_PAYLOAD) as u32;

// The fixed parts named above all fit in MAX_FIXED_PAYLOAD.
const _: () = assert!(8 + MAX_WRITE_MULTI as usize * 24 <= MAX_FIXED_PAYLOAD);
const _: () = assert!(MAX_IO_FDS_ARGSZ as usize <= MAX_FIXED_PAYLOAD);
const _: () = assert!(4 + MAX_CAPABILITIES_JSON <= MAX_FIXED_PAYLOAD);
const _: () = assert!(MAX_REGION_INFO_ARGSZ as usize <= MAX_FIXED_PAYLOAD);
const _: () = assert!(
    REGION_INFO_FIXED_SIZE + SPARSE_CAP_FIXED_SIZE + MAX_SPARSE_AREAS as usize * SparseArea::SIZE
        <= MAX_REGION_INFO_ARGSZ as usize
);
const _: () = assert!(20 + MAX_IRQ_SET_COUNT as usize <= MAX_FIXED_PAYLOAD);
// The message size fits the header's u32 field without truncation.
const _: () =
    assert!(HEADER_SIZE + MAX_DATA_XFER_SIZE as usize + MAX_FIXED_PAYLOAD <= u32::MAX as usize);

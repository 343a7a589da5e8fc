//! virtio-blk wire values both sides use (virtio 1.2, 5.2.6), defined once.

/// Read from the device.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write to the device.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Write zeroes to ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Request completed.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// virtio-blk sectors are always 512 bytes, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of `struct virtio_blk_req`'s header (type, reserved, sector).
pub const HEADER_SIZE: usize = 16;
/// Bytes of the device ID a GET_ID request returns.
pub const ID_BYTES: usize = 20;
/// Bytes of one `struct virtio_blk_discard_write_zeroes`.
pub const RANGE_SIZE: u64 = 16;

//! The vfio-user message codec: sans-I/O, never panics on peer bytes, bounds every length a
//! peer sends before allocating (see [`limits`]).
//!
//! The wire format is QEMU's `docs/interop/vfio-user.rst`: a 16-byte little-endian
//! [`Header`] (message size includes the header), then a per-command payload. The codec
//! does not touch sockets or file descriptors; it only says how many fds a message may carry
//! ([`Request::accepts_fd_count`], [`Command::max_reply_fds`]).
//!
//! # Use
//!
//! Receiver of commands (the server): read 16 bytes, [`Header::decode`] (an error means
//! close the connection), read `header.payload_len()` bytes, [`parse_request`]. On error,
//! answer [`encode_error_reply`]`(msg_id, header.command, err.errno())` unless
//! `header.no_reply()`, and keep going. On success answer [`encode_reply`] with the payload
//! of the typed reply (`DeviceInfo::to_bytes`, `RegionInfo::to_bytes_for(argsz)`, ...), or
//! nothing at all if the command carried [`FLAG_NO_REPLY`].
//!
//! Sender of commands (the client): [`Request::encode`] (or [`encode_request`]), then on
//! the reply [`check_reply`] (error replies become [`CodecError::Remote`]) and the typed
//! parser (`Version::parse`, `DeviceInfo::parse`, `RegionInfo::parse`, ...).
//!
//! # What QEMU's `vfio-user-pci` client sends and expects
//!
//! Read from qemu/qemu `hw/vfio-user/{proxy.c,device.c,container.c,pci.c,protocol.h}` and
//! `hw/vfio/{pci.c,device.c}` (the client merged for QEMU 10.1), checked against
//! `docs/interop/vfio-user.rst`:
//!
//! - VERSION: QEMU proposes **0.0** with `{"capabilities":{"max_msg_fds":16,
//!   "max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,
//!   "write_multiple":true,"migration":{"pgsize":4096,"max_bitmap_size":268435456}}}`
//!   (`caps_json()`). It refuses a reply whose major differs or whose minor is above 0
//!   ([`Version::server_reply`] takes the lower minor), requires the reply's last byte to
//!   be the NUL (so a reply must carry the JSON), receives the reply into the buffer of its
//!   own request (so the reply must not be longer than the proposal), and rejects
//!   `max_msg_fds > 16`, `max_data_xfer_size > 64 MiB`, `max_dma_maps > 65535` and
//!   `pgsizes` not a multiple of 4096. Unknown keys only warn.
//! - DEVICE_GET_INFO: argsz 16; the reply must fit 16 bytes, have `VFIO_DEVICE_FLAGS_PCI`,
//!   `num_regions` in 8..=100 and `num_irqs` in 3..=50. `DEVICE_RESET` is only sent if the
//!   RESET flag was given.
//! - DEVICE_GET_REGION_INFO: first asked with argsz 32 (48-byte message), retried with the
//!   reply's argsz if larger; QEMU accepts at most one fd with the reply; if CAPS is set it
//!   requires `32 <= cap_offset <= argsz` — hence the short-reply rule of
//!   [`RegionInfo::to_bytes_for`] (CAPS clear, `cap_offset` 0). It asks for the BARs 0-5
//!   and the config region (7). If any region has MMAP, QEMU stops posting writes.
//! - DEVICE_GET_IRQ_INFO: argsz 16, reply 16 bytes. DEVICE_SET_IRQS: eventfd sets are sent
//!   as 20-byte payloads (argsz 20) in chunks of at most the server's `max_msg_fds`, each
//!   chunk with `count` fds or none (de-assign); other sets as `16 + argsz` bytes.
//! - REGION_READ: 16-byte request, count at most the server's `max_data_xfer_size`; the
//!   reply (offset, region, count, data) must not exceed `32 + count` bytes and its count
//!   must not exceed the request's. REGION_WRITE: data inline; posted writes carry
//!   NO_REPLY; a reply is 16 bytes (header fields echoed, no data).
//! - REGION_WRITE_MULTI is only sent (with NO_REPLY) if the server's reply set
//!   `write_multiple`, for posted writes of at most 8 bytes while the send queue is deep:
//!   `wr_cnt` u64 then up to 200 writes of 24 bytes. [`Capabilities::local`] does not
//!   offer it.
//! - DMA_MAP: 32-byte payload, argsz 32, flags READ (| WRITE), at most one fd (offset is
//!   then the file offset); DMA_UNMAP: 24 bytes, argsz 24, flags 0 or
//!   `VFIO_DMA_UNMAP_FLAG_ALL` (2). Both may be sent without waiting inside a memory
//!   transaction; QEMU waits for the last one's reply at commit.
//! - Not sent by QEMU 10.1: DEVICE_GET_REGION_IO_FDS, DEVICE_FEATURE (its socket io_ops has
//!   no `device_feature`), MIG_DATA_*. They are decoded here per the spec.
//! - DMA_READ/DMA_WRITE from the server: QEMU's `VFIOUserDMARW` is `{u64 offset; u32 count;
//!   char data[]}` unpacked, so QEMU reads the count as u32 and puts/reads **data at
//!   payload offset 12**, not 16 as in the spec (and libvfio-user). It replies to
//!   DMA_WRITE with a bare header and limits server requests to `max_data_xfer_size + 32`
//!   bytes. This codec follows the spec (data at 16); a server that needs guest memory
//!   should get it through DMA_MAP fds rather than DMA_READ/DMA_WRITE with QEMU.
//! - Replies: QEMU matches replies to requests by message id only; an error reply is the
//!   header alone with the error flag and errno.
//!
//! # Files
//!
//! [`header`] (header, commands, flags, protocol version), [`limits`] (every bound),
//! [`capabilities`] (VERSION), [`dma`], [`device`], [`region`] (payload structs),
//! [`region_info`] (the one parse of a region's info and capability chain, shared with the
//! guest's kernel VFIO back end),
//! [`request`] / [`reply`] (message-level entry points), [`error`] ([`CodecError`], errno).
//! With the `socket` feature, `socket` frames whole messages on a Unix stream socket with
//! their SCM_RIGHTS descriptors; it is the only part of this crate that performs I/O.

pub mod capabilities;
pub mod device;
pub mod dma;
pub mod error;
pub mod header;
pub mod limits;
pub mod region;
pub mod region_info;
pub mod reply;
pub mod request;
#[cfg(feature = "socket")]
pub mod socket;
mod wire;

pub use capabilities::{Capabilities, MigrationCapabilities, TwinSocket, Version};
pub use device::{
    DeviceFeature, DeviceInfo, IrqAction, IrqInfo, IrqSet, IrqSetData, MigData, DEVICE_FLAGS_PCI,
    DEVICE_FLAGS_RESET,
};
pub use dma::{DmaAccess, DmaMap, DmaUnmap};
pub use error::{errno, CodecError};
pub use header::{
    Command, Header, FLAGS_TYPE_MASK, FLAG_ERROR, FLAG_NO_REPLY, HEADER_SIZE, PROTOCOL_MAJOR,
    PROTOCOL_MINOR, TYPE_COMMAND, TYPE_REPLY,
};
pub use limits::{
    MAX_CAPABILITIES_JSON, MAX_DATA_XFER_SIZE, MAX_IO_FD_SUBREGIONS, MAX_IRQ_SET_COUNT,
    MAX_MESSAGE_SIZE, MAX_MSG_FDS, MAX_SPARSE_AREAS,
};
pub use region::{
    ArgszReply, IoFdSubRegion, RegionAccess, RegionInfo, RegionIoFds, RegionWriteMulti, WriteOne,
};
pub use region_info::{Region, RegionInfoError, SparseArea};
pub use reply::{check_reply, encode_error_reply, encode_reply, expect_empty_reply};
pub use request::{encode_request, parse_request, Request};

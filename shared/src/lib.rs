//! Definitions shared by the SWIOTLB virtio device (host) and its driver (guest).
//!
//! This crate does no I/O (but for the framing of feature `socket`). It holds:
//! - [`features`]: the virtio feature bits, `VIRTIO_F_SWIOTLB` among them, defined once;
//! - [`pci`]: the virtio-pci capability and common-config wire structs, and the register
//!   layout of this project's device;
//! - [`descriptor`]: the split-ring descriptor's flags and 16-byte layout, for the driver
//!   that writes descriptors and the device that checks them;
//! - [`blk`]: virtio-blk wire values (request types, status codes, sizes);
//! - [`layout`]: pool arithmetic (the bus window every DMA is checked against, and how the
//!   driver carves rings, indirect tables and 2 KiB bounce slots out of the pool);
//! - [`transcript`]: the attestation transcript's canonical encoding and the REPORT_DATA
//!   that binds it into platform evidence;
//! - [`audit`]: the audit log's record schema and its verification (Merkle tree, signed
//!   checkpoints);
//! - [`vfio_user`]: the vfio-user message codec, which never panics on peer bytes and
//!   bounds every length before allocating, and the one parse of a VFIO region's info
//!   (feature `socket`: its framing on a Unix socket);
//! - [`little_endian`]: bounds-checked little-endian field readers, for every parser of
//!   peer bytes (here and in the attestation crate);
//! - `seccomp` (feature `seccomp`): allow-lists as data, compiled to a BPF program, for the
//!   host's and the guest's sandboxes;
//! - [`time`]: RFC 3339 text to and from Unix milliseconds, without a clock;
//! - [`units`]: byte sizes on command lines (`4K`, `16M`, `1G`).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod audit;
pub mod blk;
pub mod descriptor;
pub mod features;
pub mod layout;
pub mod little_endian;
pub mod pci;
#[cfg(feature = "seccomp")]
pub mod seccomp;
pub mod time;
pub mod transcript;
pub mod units;
pub mod vfio_user;

pub use features::{VIRTIO_F_SWIOTLB, VIRTIO_F_VERSION_1};
pub use layout::{PoolLayout, PoolWindow, QueueLayout};
pub use pci::VIRTIO_PCI_CAP_SWIOTLB;

/// `e` and its chain of sources, joined with `": "`, for one-line error messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

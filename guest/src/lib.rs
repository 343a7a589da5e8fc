//! The guest side of the SWIOTLB virtio pair: a virtio-blk driver whose rings, indirect
//! tables and every I/O buffer live in the device-provided SWIOTLB pool.
//!
//! - [`pci`]: how the driver reaches the function ([`pci::PciAccess`]; a vfio-user client,
//!   and sysfs or kernel VFIO for a PCI function of a Linux guest);
//! - [`virtio_pci`]: capability discovery (the SWIOTLB capability validated before use)
//!   and the initialization sequence;
//! - [`pool`]: the mapped pool and its 2 KiB bounce-slot allocator;
//! - [`ring`]: the split virtqueue, in the pool;
//! - [`block`]: the block API: read, write, flush, discard, write zeroes, get id;
//! - [`attest`]: the platforms that sign the session's REPORT_DATA, and the device's
//!   attestation mailbox;
//! - [`ublk`]: the guest disk, a ublk server that serves `/dev/ublkbN` through the block API;
//! - `testing` (feature `test-utils`): a raw driver and a fake device that misbehave on
//!   purpose, for adversarial tests.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod attest;
pub mod block;
pub mod pci;
pub mod pool;
pub mod ring;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
#[cfg(target_os = "linux")]
pub mod ublk;
pub mod virtio_pci;

pub use block::{BlockDriver, BlockError, BlockInfo, Options};

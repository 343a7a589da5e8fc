//! A test device that can do anything a host can: an in-process [`PciAccess`] back end with
//! no socket behind it.
//!
//! [`FakeDevice`] presents a 256-byte configuration space with the virtio-pci capabilities
//! (common, notify, ISR, device and SWIOTLB, cap type 10) and BAR registers, emulates the
//! common configuration registers of BAR 0 (features, status with FEATURES_OK and
//! DRIVER_OK, queue select/size/addresses/enable, notify offset, config generation) and the
//! virtio-blk device configuration (capacity), and backs the pool BAR (BAR 2) with a memfd.
//! [`PciAccess::map_bar`] maps that memfd again, so the driver and the fake device share the
//! same pool memory exactly as with a real host.
//!
//! It serves virtio-blk requests from an in-memory disk **synchronously, inside the
//! doorbell write**: when the driver notifies queue 0 the device walks the available ring
//! and every descriptor (following indirect tables) in the pool, serves each request, writes
//! used elements and publishes `used.idx` before [`PciAccess::bar_write`] returns. So there
//! are no threads (unless a [`Scribbler`] is started) and every test is deterministic.
//!
//! Misbehaviour comes from two places:
//! - [`FakeConfig`], fixed at construction: what the configuration space, capabilities and
//!   BARs say (a SWIOTLB capability outside its BAR, at a BAR of size zero, unaligned, too
//!   small, absent; SWIOTLB not offered; a pool mapping shorter than announced; a capability
//!   that changes after its first read; config generation churn; DEVICE_NEEDS_RESET at
//!   DRIVER_OK; ...);
//! - [`Behavior`], changeable at any time with [`FakeDevice::set_behavior`]: how requests are
//!   completed (never, twice, with an id never posted, a used length larger or smaller than
//!   posted, a used index jumping ahead, a bad status byte, no data written, bytes spilled
//!   past the posted buffers, DEVICE_NEEDS_RESET, a used id of its choosing, garbage
//!   `used.flags`/`avail_event`, resetting itself or disabling the queue mid-I/O, and device
//!   configuration that changes after open or between the halves of a 64-bit read).
//!
//! One misbehaviour needs a second thread: [`FakeDevice::start_scribbler`] starts a thread
//! that keeps rewriting the data buffers, status bytes and used elements of the chains the
//! device just completed while the driver reads them (see [`Scribble`]). It is the only
//! thread; without it every test is deterministic.
//!
//! Every descriptor the device reads is recorded ([`FakeDevice::descriptors`]) with where it
//! was read from, so a test can prove that none lies outside the pool window; anything the
//! device finds outside the announced window is listed in [`FakeDevice::violations`].
//!
//! [`FakeDevice`] is a cheap handle (`Clone`): give one clone to the driver and keep another
//! to inspect and steer the device. Nothing here panics on driver input; errors are returned
//! or recorded.
//!
//! The files: `config.rs` ([`FakeConfig`] and the configuration space it builds),
//! `behavior.rs` ([`Behavior`]), `scribbler.rs` ([`Scribbler`]), `device.rs` (the
//! [`FakeDevice`] handle, its state and its [`PciAccess`] face), `registers.rs` (the BAR 0
//! registers) and `queue.rs` (walking chains and serving requests).
//!
//! [`PciAccess`]: crate::pci::PciAccess
//! [`PciAccess::map_bar`]: crate::pci::PciAccess::map_bar
//! [`PciAccess::bar_write`]: crate::pci::PciAccess::bar_write

mod behavior;
mod config;
mod device;
mod queue;
mod registers;
mod scribbler;

pub use behavior::{Behavior, SelfReset, SPILL_BYTE};
pub use config::{CapSpec, FakeConfig, DEFAULT_POOL_SIZE, POOL_BAR_ADDRESS, REGS_BAR_ADDRESS};
pub use device::{FakeDevice, FakeError};
pub use queue::{QueueState, SeenDescriptor, DEVICE_ID};
pub use scribbler::{Scribble, Scribbler, SCRIBBLE_BYTES, SCRIBBLE_STATUS};

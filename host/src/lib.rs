//! The host side of the SWIOTLB virtio pair: a virtio-blk PCI function served over
//! vfio-user whose only device-visible memory is the SWIOTLB pool it provides.
//!
//! - [`pool`]: the memfd-backed pool BAR, followed as the driver moves it;
//! - [`pci`]: configuration space, BARs, interrupts, and the function tying them together
//!   (register dispatch, findings, resets);
//! - [`virtio`]: the transport, negotiation under the strict SWIOTLB policy, the checked
//!   descriptor chains that hold every DMA to the pool, and the queue engine that serves
//!   doorbells and polls;
//! - [`devices::block`]: virtio-blk on a raw image;
//! - [`gate`]: the attestation gate: the mailbox, the session the device observed, and the
//!   verdict that lets queues be served;
//! - [`findings`]: policy violations, counted and emitted;
//! - [`audit`]: the tamper-evident audit log writer (its schema is in `swiotlb_shared`);
//! - [`vfio_user`]: the vfio-user server;
//! - [`sandbox`]: privileges, Landlock, limits and seccomp for the device process;
//! - [`fds`]: the socket and image passed in by a supervisor;
//! - [`cpus`]: `--queue-cpus`, a CPU per queue thread and the rest for the others;
//! - [`stop`]: the orderly stop on SIGTERM and SIGINT.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod audit;
pub mod cpus;
pub mod devices;
pub mod fds;
pub mod findings;
pub mod gate;
pub mod pci;
pub mod pool;
pub mod sandbox;
pub mod stop;
pub mod vfio_user;
pub mod virtio;

pub use pci::VirtioPciFunction;

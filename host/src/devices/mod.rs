//! Device models behind the virtio-pci transport.

pub mod block;

//! The guest side of the SWIOTLB virtio pair: a virtio-blk driver whose rings, indirect
//! tables and every I/O buffer live in the device-provided SWIOTLB pool.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod pool;
pub mod ring;

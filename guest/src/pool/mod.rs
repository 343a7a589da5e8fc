//! The SWIOTLB pool as the driver sees it: the mapped memory and the slot allocator.

pub mod memory;

pub use memory::{Mapping, PoolAccessError, PoolMemory};

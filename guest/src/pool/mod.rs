//! The SWIOTLB pool as the driver sees it: the mapped memory and the slot allocator.

pub mod allocator;
pub mod memory;

pub use allocator::{AllocError, SlotAllocator, SlotRun};
pub use memory::{Mapping, PoolAccessError, PoolMemory};

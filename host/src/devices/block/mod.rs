//! virtio-blk (virtio 1.2, 5.2) on a raw image file.

pub mod device;
pub mod disk;
pub mod metrics;
pub mod request;

pub use device::{Block, BlockConfig};
pub use metrics::BlockMetrics;

//! virtio-blk (virtio 1.2, 5.2) on a raw image file.

pub mod device;
pub mod disk;
pub mod lane;
pub mod metrics;
pub mod request;
pub mod uring;

pub use device::{Block, BlockConfig, IoEngine, MAX_QUEUES};
pub use disk::CacheMode;
pub use metrics::BlockMetrics;

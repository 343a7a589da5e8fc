//! virtio under the function: the transport, the pool checks every DMA passes, and the
//! engine that serves the queues.
//!
//! - [`transport`]: common configuration, negotiation, device status and queue registers;
//! - [`chain`]: descriptor chains checked against the pool before the device sees them;
//! - [`queue_engine`]: doorbells and polls: chains taken, handed to the device, returned,
//!   and the driver re-armed;
//! - [`device`]: what a device model provides to the transport;
//! - [`metrics`]: the DMA counters;
//! - [`workers`]: a thread per queue once VIRTIO_BLK_F_MQ is negotiated.

pub mod chain;
pub mod device;
pub mod metrics;
pub mod queue_engine;
pub mod transport;
pub mod workers;

pub use chain::{ChainContext, CheckedChain, CheckedDesc};
pub use device::{Handled, QueueDevice, VirtioDevice};
pub use metrics::DmaCounters;
pub use queue_engine::Rearm;
pub use transport::{Policy, StatusEffect, VirtioPciTransport};
pub use workers::{QueueWorkers, WorkerError};

//! The virtio-pci transport: negotiation, queues, and the pool checks every DMA passes.

pub mod chain;
pub mod device;
pub mod metrics;
pub mod queue_engine;
pub mod transport;

pub use chain::{ChainContext, CheckedChain, CheckedDesc};
pub use device::VirtioDevice;
pub use metrics::DmaCounters;
pub use queue_engine::Rearm;
pub use transport::{Policy, StatusEffect, VirtioPciTransport};

//! What a virtio device model provides to the virtio-pci transport.

use crate::pool::PoolGuestMemory;
use crate::virtio::chain::CheckedChain;

/// A virtio device behind the transport. The transport owns negotiation, queues and the
/// pool checks; the device sees only chains that were already checked against the pool.
pub trait VirtioDevice {
    /// virtio device type (2 for block).
    fn device_type(&self) -> u16;
    /// Device-specific and ring feature bits offered (the transport adds VERSION_1 and
    /// SWIOTLB).
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// Largest size of each queue (a power of two).
    fn queue_max_size(&self) -> u16;
    /// Reads device-specific configuration at `offset`. Bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration at `offset`. Read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Handles one checked chain of queue `queue` and returns the number of bytes it wrote
    /// into device-writable buffers (the used length).
    fn handle_chain(&mut self, queue: u16, mem: &PoolGuestMemory, chain: &CheckedChain) -> u32;
    /// Returns to the initial state (virtio reset). Metrics survive it.
    fn reset(&mut self);
    /// The device's metrics, for the session summary.
    fn metrics(&self) -> serde_json::Value;
    /// Zeroes the metrics (a new client session).
    fn clear_metrics(&mut self);
}

//! What a virtio device model provides to the virtio-pci transport.

use crate::pool::{PoolGuestMemory, PoolMapping};
use crate::virtio::chain::CheckedChain;

/// What a device did with a chain handed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Finished: this many bytes were written into device-writable buffers (the used
    /// length).
    Done(u32),
    /// Started: the device finishes it in [`VirtioDevice::complete`], which the queue
    /// engine calls before the pass over the queue ends.
    Started,
}

/// The part of a device that serves one queue, on a thread of that queue's own
/// ([`crate::virtio::workers`]). It sees only chains of its queue, already checked against the
/// pool, exactly as [`VirtioDevice::handle_chain`] and [`VirtioDevice::complete`] would.
pub trait QueueDevice {
    /// As [`VirtioDevice::handle_chain`], for this queue.
    fn handle_chain(&mut self, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled;
    /// As [`VirtioDevice::complete`], for this queue.
    fn complete(&mut self, mem: &PoolGuestMemory, done: &mut dyn FnMut(u16, u32));
}

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
    /// Handles one checked chain of queue `queue`: finishes it, or starts it to be finished
    /// in [`complete`](Self::complete) with the other chains of the same pass (one batch of
    /// disk I/O).
    fn handle_chain(&mut self, queue: u16, mem: &PoolGuestMemory, chain: &CheckedChain) -> Handled;
    /// Finishes every chain of `queue` that [`handle_chain`](Self::handle_chain) started,
    /// calling `done` with each chain's head index and used length. Returns only when none
    /// is left. The default has nothing to finish.
    fn complete(&mut self, _queue: u16, _mem: &PoolGuestMemory, _done: &mut dyn FnMut(u16, u32)) {}
    /// The pool is mapped at `mapping` for the life of the process: a device may register
    /// its pages with the kernel (before the sandbox closes the way to do so). Returns
    /// whether it did, in which case the pool's pages must never be replaced. The default
    /// does nothing.
    fn attach_pool(&mut self, _mapping: PoolMapping) -> bool {
        false
    }
    /// The part of the device that serves `queue`, for that queue's worker thread; `None`
    /// (the default): the device serves its queues only through
    /// [`handle_chain`](Self::handle_chain), on the thread that owns it. While a worker holds
    /// it, the function calls neither `handle_chain` nor `complete` for that queue.
    fn queue_device(&mut self, _queue: u16) -> Option<Box<dyn QueueDevice + Send>> {
        None
    }
    /// Returns to the initial state (virtio reset). Metrics survive it.
    fn reset(&mut self);
    /// The device's metrics, for the session summary.
    fn metrics(&self) -> serde_json::Value;
    /// Zeroes the metrics (a new client session).
    fn clear_metrics(&mut self);
}

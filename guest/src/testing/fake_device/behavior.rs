//! How the fake device completes requests, changeable at any time: [`Behavior`] and
//! [`SelfReset`].

/// Byte the device writes when it spills past a posted buffer ([`Behavior::spill`]).
pub const SPILL_BYTE: u8 = 0xee;

/// How the device completes requests. The default completes every request correctly.
/// Knobs combine; see each field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Take requests off the available ring but never complete them.
    pub never_complete: bool,
    /// On the next doorbell set DEVICE_NEEDS_RESET and complete nothing.
    pub needs_reset: bool,
    /// Complete with id `(head + 1) % queue_size`: a descriptor that is not a posted head.
    pub used_id_never_posted: bool,
    /// Complete the first chain of each doorbell twice and the others not at all.
    pub complete_twice: bool,
    /// Add this to every used length (a length larger than posted).
    pub used_len_extra: u32,
    /// Report exactly this used length instead of the real one.
    pub used_len: Option<u32>,
    /// Publish `used.idx` this far beyond the elements written.
    pub used_idx_extra: u16,
    /// Write this status byte instead of the real one.
    pub status: Option<u8>,
    /// Write no data (reads, GET_ID), only the status; the used length is unchanged.
    pub skip_data: bool,
    /// Before serving a chain, write this many [`SPILL_BYTE`]s into the pool right after
    /// the end of every device-writable data buffer (not the status byte). Data is written
    /// after, so only bytes outside the posted buffers keep the spill. Use with one request
    /// in flight: a spill may land in another request's buffers.
    pub spill: u64,
    /// Complete every chain with exactly this used id (the queue size, `0xffff`, or
    /// `0x1_0000`, which truncated to 16 bits is head 0, ...).
    pub used_id: Option<u32>,
    /// After serving a doorbell, write this into `used.flags` (suppression flags of the
    /// device's choosing; bit 0 is VIRTQ_USED_F_NO_NOTIFY).
    pub used_flags: Option<u16>,
    /// After serving a doorbell, write this into `avail_event` instead of the next index
    /// (with VIRTIO_RING_F_EVENT_IDX).
    pub avail_event: Option<u16>,
    /// At a doorbell, reset this way instead of serving it (see [`SelfReset`]), after
    /// [`self_reset_after`](Self::self_reset_after) doorbells served normally.
    pub self_reset: Option<SelfReset>,
    /// Doorbells served normally, counted from [`FakeDevice::set_behavior`](super::FakeDevice::set_behavior), before
    /// [`self_reset`](Self::self_reset) strikes.
    pub self_reset_after: u64,
    /// Device configuration reports this capacity (sectors) from now on.
    pub config_capacity: Option<u64>,
    /// Device configuration reports this `seg_max` from now on.
    pub config_seg_max: Option<u32>,
    /// Device configuration reports this `blk_size` from now on.
    pub config_blk_size: Option<u32>,
    /// Each read of device configuration reports capacity `.0` and `.1` sectors in turn
    /// (`.0` first) without touching `config_generation`: the two 32-bit halves of one
    /// 64-bit read come from different values.
    pub config_capacity_flip: Option<(u64, u64)>,
}

/// How a device resets itself in the middle of I/O ([`Behavior::self_reset`]). In every
/// case the doorbell that triggers it is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfReset {
    /// As if the driver had written 0 to `device_status`: status reads back 0, the queue
    /// is disabled and the device forgets its ring indexes.
    StatusZero,
    /// DEVICE_NEEDS_RESET appears in the status.
    NeedsReset,
    /// `queue_enable` of queue 0 reads back 0; the status is untouched.
    QueueDisabled,
}

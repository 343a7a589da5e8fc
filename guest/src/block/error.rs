//! Errors of the block driver: what the transport, the pool, the ring, the device's
//! answers and attestation can refuse.

use std::time::Duration;

use swiotlb_shared::layout::LayoutError;
use swiotlb_shared::transcript::TranscriptError;
use thiserror::Error;

use crate::attest::mailbox::MailboxError;
use crate::attest::AttestError;
use crate::pool::PoolAccessError;
use crate::ring::RingError;
use crate::virtio_pci::TransportError;

/// Errors of the block driver.
#[derive(Debug, Error)]
pub enum BlockError {
    /// Transport-level failure.
    #[error("virtio-pci transport")]
    Transport(#[from] TransportError),
    /// The device does not offer VIRTIO_F_SWIOTLB: the driver will not hand it any memory.
    #[error("the device does not offer VIRTIO_F_SWIOTLB (bit 27); refusing to drive it")]
    NoSwiotlbOffered,
    /// The device offers SWIOTLB but describes no pool.
    #[error("the device offers VIRTIO_F_SWIOTLB but has no SWIOTLB capability")]
    NoPoolCapability,
    /// The device lacks VERSION_1.
    #[error("the device does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    /// The device refused FEATURES_OK.
    #[error("the device refused FEATURES_OK for features {accepted:#x} ({names})")]
    FeaturesRefused {
        /// What the driver accepted.
        accepted: u64,
        /// Their names.
        names: String,
    },
    /// Declining SWIOTLB was asked for and the device refused FEATURES_OK: it requires the
    /// feature (strict policy).
    #[error("the device refused FEATURES_OK without VIRTIO_F_SWIOTLB: it requires the pool (strict policy); the driver never reached DRIVER_OK")]
    SwiotlbRequired,
    /// Declining SWIOTLB was asked for; the device accepted, but this driver never runs
    /// without the pool.
    #[error("the device accepted a driver without VIRTIO_F_SWIOTLB (relaxed policy); stopping before DRIVER_OK: this driver never hands the device its own memory")]
    DeclinedButAccepted,
    /// The pool cannot be laid out.
    #[error("pool layout")]
    Layout(#[from] LayoutError),
    /// The pool cannot be accessed.
    #[error("pool access")]
    Pool(#[from] PoolAccessError),
    /// Ring error (bad device data breaks the ring).
    #[error("virtqueue")]
    Ring(#[from] RingError),
    /// Offset or length not a multiple of 512.
    #[error("offset {offset} and length {len} must be multiples of 512")]
    Unaligned {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Beyond the disk's end.
    #[error("[{offset}, +{len}) is beyond the disk's {capacity} bytes")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Capacity.
        capacity: u64,
    },
    /// The device answered IOERR.
    #[error("the device reported an I/O error")]
    DeviceIoError,
    /// The device answered UNSUPP.
    #[error("the device does not support this request")]
    Unsupported,
    /// The device wrote a status byte that means nothing.
    #[error("the device wrote invalid status {0:#x}")]
    BadStatus(u8),
    /// The device claimed success but wrote fewer bytes than asked.
    #[error("the device completed a read with {used} bytes, expected {expected}")]
    ShortCompletion {
        /// Bytes it said it wrote.
        used: u32,
        /// Bytes expected.
        expected: u32,
    },
    /// The device did not complete within the timeout.
    #[error("the device did not complete a request within {0:?}")]
    Timeout(Duration),
    /// The device set DEVICE_NEEDS_RESET.
    #[error("the device needs a reset (DEVICE_NEEDS_RESET)")]
    NeedsReset,
    /// Requests went unanswered and the device has reset itself: its status lost DRIVER_OK
    /// or queue 0 is no longer enabled.
    #[error("the device reset itself with requests in flight (status {status:#x}, queue 0 enabled: {queue_enabled}); reopen the device")]
    DeviceReset {
        /// Device status read back.
        status: u8,
        /// Whether `queue_enable` of queue 0 read back non-zero.
        queue_enabled: bool,
    },
    /// An earlier device error made the driver stop.
    #[error("the driver stopped after an earlier device error; reopen the device")]
    Stopped,
    /// Waiting for an interrupt failed.
    #[error("waiting for an interrupt failed")]
    Wait(#[source] std::io::Error),
    /// The pool is too small for the request, even with nothing else in flight.
    #[error("the pool cannot hold a request of {0} bytes")]
    PoolExhausted(u64),
    /// The queue cannot hold one request (header, data, status) without indirect
    /// descriptors.
    #[error("queue of {0} descriptors cannot hold a request without indirect descriptors")]
    QueueTooSmall(u16),
    /// The disk is read-only.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The device requires attestation and no attester is available.
    #[error(
        "the device requires attestation and no attester is available (choose one with --attester)"
    )]
    AttestationRequired,
    /// The attester failed.
    #[error("producing attestation evidence failed")]
    Attester(#[from] AttestError),
    /// The device rejected the evidence.
    #[error(
        "the device rejected the attestation evidence ({0} reasons; see the device's findings)"
    )]
    AttestationRejected(u32),
    /// The mailbox does not behave as the protocol says.
    #[error("attestation mailbox")]
    Mailbox(#[from] MailboxError),
    /// The transcript cannot be built.
    #[error("attestation transcript")]
    Transcript(#[source] TranscriptError),
    /// The virtio-blk configuration is unusable.
    #[error("the device's virtio-blk configuration")]
    Config(#[from] swiotlb_shared::blk::BlkConfigError),
    /// VIRTIO_BLK_F_MQ's `num_queues` names more queues than the transport has.
    #[error("the device says num_queues {num_queues} but its transport has {transport} queues")]
    QueueCount {
        /// `num_queues` in the virtio-blk configuration.
        num_queues: u16,
        /// `num_queues` in the common configuration.
        transport: u16,
    },
}

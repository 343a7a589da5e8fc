//! The attestation mailbox client: the driver's half of the protocol of
//! [`swiotlb_shared::pci::attest_mailbox`]. It reads the device's nonce and instance ID,
//! builds the transcript of this session, has the platform sign its hash, hands the
//! evidence over through the pool, rings the doorbell and reads the verdict.
//!
//! The pool's bounce slots stay the block driver's: it lends `prove` a place for the
//! evidence and takes it back, zeroed, once the device has answered.

use std::time::{Duration, Instant};

use swiotlb_shared::layout::{PoolWindow, MAX_MAPPING};
use swiotlb_shared::pci::{attest_mailbox as mb, cfg};
use swiotlb_shared::transcript::{DeviceIdentity, InstanceId, QueueRings, Transcript};
use thiserror::Error;

use super::Attester;
use crate::block::BlockError;
use crate::pci::PciAccess;
use crate::virtio_pci::{TransportError, VirtioPci};

/// The mailbox does not behave as the protocol says.
#[derive(Debug, Error)]
pub enum MailboxError {
    /// The magic or version registers hold something this driver does not speak.
    #[error("unknown magic/version {0:02x?}")]
    UnknownVersion([u8; 8]),
    /// The gate is neither awaiting evidence nor not requiring it, before any was sent.
    #[error("gate in state {0} before any evidence")]
    NotAwaiting(u32),
    /// The evidence is larger than the device takes or than one mapping.
    #[error("evidence of {len} bytes exceeds the device's {max} or one mapping")]
    EvidenceTooLarge {
        /// Length of the evidence.
        len: u64,
        /// The device's MAX_EVIDENCE_LEN.
        max: u32,
    },
    /// The slot lent for the evidence has no bus address inside the pool.
    #[error("evidence slot outside the pool")]
    EvidenceOutsidePool,
    /// The gate reports a state the protocol does not define.
    #[error("gate in unknown state {0}")]
    UnknownState(u32),
}

/// What the driver negotiated and laid out: the part of the transcript that the mailbox
/// does not supply.
#[derive(Debug)]
pub(crate) struct Session {
    /// Features the device offered.
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// Where the pool is on the bus.
    pub pool: PoolWindow,
    /// The rings of every queue, in index order.
    pub queues: Vec<QueueRings>,
}

/// The attestation step: reads the device's nonce, builds the transcript of `session`, has
/// `attester` sign its hash, places the evidence in the pool with `place` (which copies it
/// into lent bounce slots and returns their bus address), rings the mailbox and waits up to
/// `timeout` for the verdict. Returns what came of it, for [`crate::BlockInfo`].
pub(crate) fn prove<P: PciAccess>(
    vp: &mut VirtioPci<P>,
    session: Session,
    attester: Option<&dyn Attester>,
    timeout: Duration,
    place: impl FnOnce(&[u8]) -> Result<u64, BlockError>,
) -> Result<String, BlockError> {
    if vp.caps().attest.is_none() {
        return Ok("device has no attestation mailbox".into());
    }
    let mut w = [0u8; 8];
    vp.mailbox_read(mb::MAGIC, &mut w)?;
    if w[..4] != mb::MAGIC_VALUE.to_le_bytes() || w[4..] != mb::VERSION_VALUE.to_le_bytes() {
        return Err(MailboxError::UnknownVersion(w).into());
    }
    match read_u32(vp, mb::STATE)? {
        mb::STATE_NOT_REQUIRED => return Ok("not required by the device".into()),
        mb::STATE_AWAITING => {}
        other => return Err(MailboxError::NotAwaiting(other).into()),
    }
    let attester = attester.ok_or(BlockError::AttestationRequired)?;
    let mut nonce = [0u8; mb::NONCE_LEN];
    vp.mailbox_read(mb::NONCE, &mut nonce)?;
    let mut instance = [0u8; mb::INSTANCE_ID_LEN];
    vp.mailbox_read(mb::INSTANCE_ID, &mut instance)?;
    let max = read_u32(vp, mb::MAX_EVIDENCE_LEN)?;
    let transcript = Transcript {
        platform: attester.platform(),
        nonce,
        identity: identity(vp, instance)?,
        device_features: session.device_features,
        driver_features: session.driver_features,
        pool_base: session.pool.base(),
        pool_size: session.pool.size(),
        queues: session.queues,
    };
    let rd = transcript.report_data().map_err(BlockError::Transcript)?;
    let evidence = attester.evidence(&rd)?;
    let len = evidence.len() as u64;
    if len > u64::from(max) || len > MAX_MAPPING {
        return Err(MailboxError::EvidenceTooLarge { len, max }.into());
    }
    let bus = place(&evidence)?;
    vp.mailbox_write(mb::EVIDENCE_ADDR, &bus.to_le_bytes())?;
    vp.mailbox_write(mb::EVIDENCE_LEN, &(len as u32).to_le_bytes())?;
    vp.mailbox_write(mb::DOORBELL, &mb::SUBMIT.to_le_bytes())?;
    let deadline = Instant::now() + timeout;
    loop {
        match read_u32(vp, mb::STATE)? {
            mb::STATE_ACCEPTED => {
                return Ok(format!("accepted ({})", attester.platform().as_str()))
            }
            mb::STATE_REJECTED => {
                return Err(BlockError::AttestationRejected(read_u32(vp, mb::REASONS)?))
            }
            mb::STATE_AWAITING if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            mb::STATE_AWAITING => return Err(BlockError::Timeout(timeout)),
            other => return Err(MailboxError::UnknownState(other).into()),
        }
    }
}

/// The device's identity in the transcript: its PCI IDs from config space and the instance
/// ID from the mailbox.
fn identity<P: PciAccess>(
    vp: &mut VirtioPci<P>,
    instance: [u8; mb::INSTANCE_ID_LEN],
) -> Result<DeviceIdentity, BlockError> {
    let mut ids = [0u8; 4];
    let mut sub = [0u8; 4];
    vp.pci()
        .config_read(cfg::VENDOR_ID, &mut ids)
        .map_err(TransportError::from)?;
    vp.pci()
        .config_read(cfg::SUBSYSTEM_VENDOR_ID, &mut sub)
        .map_err(TransportError::from)?;
    Ok(DeviceIdentity {
        vendor_id: u16::from_le_bytes([ids[0], ids[1]]),
        device_id: u16::from_le_bytes([ids[2], ids[3]]),
        subsystem_vendor_id: u16::from_le_bytes([sub[0], sub[1]]),
        subsystem_id: u16::from_le_bytes([sub[2], sub[3]]),
        instance_id: InstanceId::Short(instance),
    })
}

/// Reads a 32-bit mailbox register.
fn read_u32<P: PciAccess>(vp: &mut VirtioPci<P>, off: u64) -> Result<u32, BlockError> {
    let mut b = [0u8; 4];
    vp.mailbox_read(off, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

//! virtio-blk wire values both sides use (virtio 1.2, 5.2.6), defined once.

use crate::little_endian::{self, OutOfBounds};

/// Read from the device.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write to the device.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Write zeroes to ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Request completed.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request failed.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// virtio-blk sectors are always 512 bytes, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of `struct virtio_blk_req`'s header (type, reserved, sector).
pub const HEADER_SIZE: usize = 16;
/// Bytes of the device ID a GET_ID request returns.
pub const ID_BYTES: usize = 20;
/// Bytes of one `struct virtio_blk_discard_write_zeroes`.
pub const RANGE_SIZE: u64 = 16;

/// Byte offsets of `struct virtio_blk_config` fields (virtio 1.2, 5.2.4).
pub mod config {
    /// `capacity` (u64, in 512-byte sectors).
    pub const CAPACITY: usize = 0;
    /// `seg_max` (u32).
    pub const SEG_MAX: usize = 12;
    /// `blk_size` (u32).
    pub const BLK_SIZE: usize = 20;
    /// `num_queues` (u16), valid only with VIRTIO_BLK_F_MQ.
    pub const NUM_QUEUES: usize = 34;
    /// `max_discard_sectors` (u32).
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `max_discard_seg` (u32).
    pub const MAX_DISCARD_SEG: usize = 40;
    /// `discard_sector_alignment` (u32).
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// `max_write_zeroes_sectors` (u32).
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// `max_write_zeroes_seg` (u32).
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// `write_zeroes_may_unmap` (u8).
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Bytes up to and including `write_zeroes_may_unmap`'s padding.
    pub const LEN: usize = 60;
}

/// Largest logical block size a driver accepts (Linux: a page).
pub const MAX_BLK_SIZE: u32 = 4096;

/// Errors of the virtio-blk configuration a device presents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlkConfigError {
    /// The configuration region ends before a field a negotiated feature needs.
    #[error("the device configuration is {len} bytes; {field} needs {need}")]
    TooShort {
        /// Bytes the device presents.
        len: usize,
        /// The field.
        field: &'static str,
        /// Bytes it needs.
        need: usize,
    },
    /// `blk_size` is not a power of two between 512 and 4096.
    #[error("blk_size {0} is not a power of two between 512 and 4096")]
    BadBlockSize(u32),
    /// VIRTIO_BLK_F_MQ with `num_queues` 0.
    #[error("the device offers VIRTIO_BLK_F_MQ with num_queues 0")]
    NoQueues,
    /// The capacity in bytes does not fit 64 bits.
    #[error("capacity of {0} sectors overflows")]
    CapacityOverflow(u64),
}

/// The virtio-blk configuration as a driver uses it: every field read once, each only when
/// its feature was negotiated, and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlkConfig {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Logical block size (512 unless VIRTIO_BLK_F_BLK_SIZE says otherwise).
    pub blk_size: u32,
    /// Most data segments in one request (VIRTIO_BLK_F_SEG_MAX), if said.
    pub seg_max: Option<u32>,
    /// Discard limits (VIRTIO_BLK_F_DISCARD), if negotiated.
    pub discard: Option<RangeLimits>,
    /// Write-zeroes limits (VIRTIO_BLK_F_WRITE_ZEROES), if negotiated.
    pub write_zeroes: Option<RangeLimits>,
    /// The device may deallocate on WRITE_ZEROES with the unmap flag.
    pub write_zeroes_may_unmap: bool,
    /// Request queues the device has (`num_queues`, VIRTIO_BLK_F_MQ); 1 without MQ. Not
    /// checked against the transport's queue count here: the driver does that.
    pub num_queues: u16,
}

/// Limits of DISCARD or WRITE_ZEROES requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeLimits {
    /// Most sectors in one range.
    pub max_sectors: u32,
    /// Most ranges in one request.
    pub max_seg: u32,
    /// Alignment of a discarded range, in sectors (discard only; 0 otherwise).
    pub sector_alignment: u32,
}

impl BlkConfig {
    /// Reads the configuration `bytes` (as many as the device's configuration region holds)
    /// for the negotiated `features`.
    pub fn parse(features: u64, bytes: &[u8]) -> Result<Self, BlkConfigError> {
        use crate::features::{
            bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_MQ,
            VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
        };
        let too_short = |field: &'static str| {
            move |e: OutOfBounds| BlkConfigError::TooShort {
                len: bytes.len(),
                field,
                need: e.needed(),
            }
        };
        let u32_at = |at: usize, field: &'static str| -> Result<u32, BlkConfigError> {
            little_endian::u32_at(bytes, at).map_err(too_short(field))
        };
        let has = |f: u32| features & bit(f) != 0;
        let sectors =
            little_endian::u64_at(bytes, config::CAPACITY).map_err(too_short("capacity"))?;
        let capacity = sectors
            .checked_mul(SECTOR_SIZE)
            .ok_or(BlkConfigError::CapacityOverflow(sectors))?;
        let blk_size = if has(VIRTIO_BLK_F_BLK_SIZE) {
            let b = u32_at(config::BLK_SIZE, "blk_size")?;
            if !b.is_power_of_two() || !(SECTOR_SIZE as u32..=MAX_BLK_SIZE).contains(&b) {
                return Err(BlkConfigError::BadBlockSize(b));
            }
            b
        } else {
            SECTOR_SIZE as u32
        };
        let seg_max = if has(VIRTIO_BLK_F_SEG_MAX) {
            Some(u32_at(config::SEG_MAX, "seg_max")?)
        } else {
            None
        };
        let discard = if has(VIRTIO_BLK_F_DISCARD) {
            Some(RangeLimits {
                max_sectors: u32_at(config::MAX_DISCARD_SECTORS, "max_discard_sectors")?,
                max_seg: u32_at(config::MAX_DISCARD_SEG, "max_discard_seg")?,
                sector_alignment: u32_at(
                    config::DISCARD_SECTOR_ALIGNMENT,
                    "discard_sector_alignment",
                )?,
            })
        } else {
            None
        };
        let (write_zeroes, may_unmap) = if has(VIRTIO_BLK_F_WRITE_ZEROES) {
            let limits = RangeLimits {
                max_sectors: u32_at(config::MAX_WRITE_ZEROES_SECTORS, "max_write_zeroes_sectors")?,
                max_seg: u32_at(config::MAX_WRITE_ZEROES_SEG, "max_write_zeroes_seg")?,
                sector_alignment: 0,
            };
            let unmap =
                *bytes
                    .get(config::WRITE_ZEROES_MAY_UNMAP)
                    .ok_or(BlkConfigError::TooShort {
                        len: bytes.len(),
                        field: "write_zeroes_may_unmap",
                        need: config::WRITE_ZEROES_MAY_UNMAP + 1,
                    })?;
            (Some(limits), unmap != 0)
        } else {
            (None, false)
        };
        let num_queues = if has(VIRTIO_BLK_F_MQ) {
            let n = little_endian::u16_at(bytes, config::NUM_QUEUES)
                .map_err(too_short("num_queues"))?;
            if n == 0 {
                return Err(BlkConfigError::NoQueues);
            }
            n
        } else {
            1
        };
        Ok(Self {
            capacity,
            blk_size,
            num_queues,
            seg_max,
            discard,
            write_zeroes,
            write_zeroes_may_unmap: may_unmap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{
        bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES,
    };

    fn sample() -> [u8; config::LEN] {
        let mut c = [0u8; config::LEN];
        c[0..8].copy_from_slice(&2048u64.to_le_bytes());
        c[config::BLK_SIZE..config::BLK_SIZE + 4].copy_from_slice(&4096u32.to_le_bytes());
        c[36..40].copy_from_slice(&1000u32.to_le_bytes());
        c[40..44].copy_from_slice(&4u32.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes());
        c[48..52].copy_from_slice(&2000u32.to_le_bytes());
        c[52..56].copy_from_slice(&2u32.to_le_bytes());
        c[56] = 1;
        c
    }

    #[test]
    fn fields_are_read_only_for_negotiated_features() {
        let c = sample();
        let plain = BlkConfig::parse(0, &c).unwrap();
        assert_eq!(plain.capacity, 2048 * 512);
        assert_eq!(plain.blk_size, 512);
        assert_eq!((plain.discard, plain.write_zeroes), (None, None));
        let all =
            bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        let full = BlkConfig::parse(all, &c).unwrap();
        assert_eq!(full.blk_size, 4096);
        assert_eq!(
            full.discard,
            Some(RangeLimits {
                max_sectors: 1000,
                max_seg: 4,
                sector_alignment: 8
            })
        );
        assert_eq!(
            full.write_zeroes.map(|w| (w.max_sectors, w.max_seg)),
            Some((2000, 2))
        );
        assert!(full.write_zeroes_may_unmap);
    }

    #[test]
    fn a_short_region_or_a_bad_block_size_is_refused() {
        let c = sample();
        assert_eq!(
            BlkConfig::parse(bit(VIRTIO_BLK_F_DISCARD), &c[..24]),
            Err(BlkConfigError::TooShort {
                len: 24,
                field: "max_discard_sectors",
                need: 40
            })
        );
        let mut bad = c;
        bad[config::BLK_SIZE..config::BLK_SIZE + 4].copy_from_slice(&3000u32.to_le_bytes());
        assert_eq!(
            BlkConfig::parse(bit(VIRTIO_BLK_F_BLK_SIZE), &bad),
            Err(BlkConfigError::BadBlockSize(3000))
        );
        let mut huge = c;
        huge[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            BlkConfig::parse(0, &huge),
            Err(BlkConfigError::CapacityOverflow(_))
        ));
        assert!(BlkConfig::parse(0, &c[..7]).is_err());
    }

    #[test]
    fn num_queues_is_read_only_with_mq_and_zero_is_refused() {
        use crate::features::VIRTIO_BLK_F_MQ;
        let mut c = sample();
        c[config::NUM_QUEUES..config::NUM_QUEUES + 2].copy_from_slice(&4u16.to_le_bytes());
        assert_eq!(BlkConfig::parse(0, &c).unwrap().num_queues, 1);
        let mq = bit(VIRTIO_BLK_F_MQ);
        assert_eq!(BlkConfig::parse(mq, &c).unwrap().num_queues, 4);
        c[config::NUM_QUEUES..config::NUM_QUEUES + 2].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(BlkConfig::parse(mq, &c), Err(BlkConfigError::NoQueues));
        assert_eq!(BlkConfig::parse(0, &c).unwrap().num_queues, 1);
        assert!(matches!(
            BlkConfig::parse(mq, &c[..35]),
            Err(BlkConfigError::TooShort {
                field: "num_queues",
                ..
            })
        ));
    }
}

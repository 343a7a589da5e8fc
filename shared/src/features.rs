//! Virtio feature bits used by this device and its driver, each defined once.
//!
//! Bit numbers follow the virtio 1.2 specification, except [`VIRTIO_F_SWIOTLB`], which comes
//! from the (unmerged) "VIRTIO_F_SWIOTLB" RFC series on the virtio-comment list (April 2025).

/// The transport provides a region of on-device memory for bounce buffering
/// (the SWIOTLB pool). Once accepted, the driver passes only addresses inside that pool.
///
/// Bit 27 doubles as the legacy `VIRTIO_F_ANY_LAYOUT`, so it is only ever offered on a
/// modern (VERSION_1) interface.
pub const VIRTIO_F_SWIOTLB: u32 = 27;

/// Legacy meaning of bit 27, kept to explain why bit 27 is never offered on a legacy interface.
pub const VIRTIO_F_ANY_LAYOUT_LEGACY: u32 = 27;

/// Indirect descriptors (virtio 1.2, 6).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `used_event` / `avail_event` notification suppression (virtio 1.2, 6).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// The modern interface (virtio 1.2, 6). Required by this device.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Device access is limited by a platform IOMMU (virtio 1.2, 6). Not offered: addresses inside
/// the pool are on-device and not subject to it.
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;

/// virtio-blk: maximum number of segments in a request is in `seg_max`.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// virtio-blk: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// virtio-blk: block size of the disk is in `blk_size`.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// virtio-blk: cache flush command support.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Block: more than one request queue; `num_queues` in the configuration is valid.
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// virtio-blk: DISCARD support.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// virtio-blk: WRITE_ZEROES support.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// The mask of one feature bit.
pub const fn bit(feature: u32) -> u64 {
    1u64 << feature
}

/// Human-readable names of the feature bits this project knows, for `info` output and logs.
pub fn feature_names(features: u64) -> Vec<String> {
    const KNOWN: &[(u32, &str)] = &[
        (VIRTIO_BLK_F_SEG_MAX, "BLK_SEG_MAX"),
        (VIRTIO_BLK_F_RO, "BLK_RO"),
        (VIRTIO_BLK_F_BLK_SIZE, "BLK_BLK_SIZE"),
        (VIRTIO_BLK_F_FLUSH, "BLK_FLUSH"),
        (VIRTIO_BLK_F_MQ, "BLK_MQ"),
        (VIRTIO_BLK_F_DISCARD, "BLK_DISCARD"),
        (VIRTIO_BLK_F_WRITE_ZEROES, "BLK_WRITE_ZEROES"),
        (VIRTIO_F_SWIOTLB, "SWIOTLB"),
        (VIRTIO_RING_F_INDIRECT_DESC, "RING_INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "RING_EVENT_IDX"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_F_ACCESS_PLATFORM, "ACCESS_PLATFORM"),
    ];
    (0..64)
        .filter(|b| features & bit(*b) != 0)
        .map(|b| match KNOWN.iter().find(|(k, _)| *k == b) {
            Some((_, name)) => (*name).to_string(),
            None => format!("bit{b}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swiotlb_is_bit_27_and_named() {
        assert_eq!(bit(VIRTIO_F_SWIOTLB), 0x0800_0000);
        assert_eq!(
            feature_names(bit(VIRTIO_F_SWIOTLB) | bit(VIRTIO_F_VERSION_1) | bit(40)),
            vec!["SWIOTLB", "VERSION_1", "bit40"]
        );
    }
}

//! The ublk device's shape, taken from the virtio-blk device's: capacity, logical and
//! physical block size, largest request, discard and write-zeroes limits, read-only flag and
//! volatile write cache. Pure arithmetic, so each rule is tested without a kernel.

use swiotlb_shared::blk::{BlkConfig, SECTOR_SIZE};

use super::uapi::{attr, param_type, ParamBasic, ParamDiscard, Params};

/// The device's geometry for ublk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The virtio-blk configuration.
    pub config: BlkConfig,
    /// The disk is read-only.
    pub read_only: bool,
    /// The device has a volatile write cache (VIRTIO_BLK_F_FLUSH negotiated).
    pub volatile_cache: bool,
    /// Largest request the server takes, in bytes (its tag buffers' size).
    pub max_io_bytes: u32,
}

/// Builds the ublk parameters of `shape`.
pub fn params(shape: &Shape) -> Params {
    let c = &shape.config;
    let bs_shift = c.blk_size.trailing_zeros() as u8;
    let mut attrs = 0;
    if shape.read_only {
        attrs |= attr::READ_ONLY;
    }
    if shape.volatile_cache {
        attrs |= attr::VOLATILE_CACHE;
    }
    let basic = ParamBasic {
        attrs,
        logical_bs_shift: bs_shift,
        physical_bs_shift: bs_shift,
        io_opt_shift: 0,
        io_min_shift: bs_shift,
        max_sectors: shape.max_io_bytes / SECTOR_SIZE as u32,
        chunk_sectors: 0,
        dev_sectors: c.capacity / SECTOR_SIZE,
        virt_boundary_mask: 0,
    };
    let mut types = param_type::BASIC;
    let mut discard = ParamDiscard::default();
    // One range per request: the driver sends DISCARD and WRITE_ZEROES with one range.
    if let Some(d) = c.discard.filter(|d| d.max_sectors > 0 && d.max_seg > 0) {
        types |= param_type::DISCARD;
        let align = d.sector_alignment.max(1).saturating_mul(SECTOR_SIZE as u32);
        discard.discard_granularity = align.max(c.blk_size);
        discard.discard_alignment = 0;
        discard.max_discard_sectors = d.max_sectors;
        discard.max_discard_segments = 1;
    }
    if let Some(w) = c
        .write_zeroes
        .filter(|w| w.max_sectors > 0 && w.max_seg > 0)
    {
        types |= param_type::DISCARD;
        discard.max_write_zeroes_sectors = w.max_sectors;
        if discard.discard_granularity == 0 {
            // The kernel checks the discard block even when only write-zeroes is set.
            discard.discard_granularity = c.blk_size;
        }
    }
    if shape.read_only {
        // A read-only disk takes neither.
        types &= !param_type::DISCARD;
        discard = ParamDiscard::default();
    }
    Params {
        len: std::mem::size_of::<Params>() as u32,
        types,
        basic,
        discard,
        ..Params::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swiotlb_shared::blk::RangeLimits;

    fn shape() -> Shape {
        Shape {
            config: BlkConfig {
                capacity: 64 << 20,
                blk_size: 512,
                seg_max: Some(126),
                num_queues: 1,
                discard: Some(RangeLimits {
                    max_sectors: 1 << 21,
                    max_seg: 32,
                    sector_alignment: 1,
                }),
                write_zeroes: Some(RangeLimits {
                    max_sectors: 1 << 21,
                    max_seg: 32,
                    sector_alignment: 0,
                }),
                write_zeroes_may_unmap: true,
            },
            read_only: false,
            volatile_cache: true,
            max_io_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_writable_disk_with_every_feature_gets_every_parameter() {
        let p = params(&shape());
        assert_eq!(p.types, param_type::BASIC | param_type::DISCARD);
        assert_eq!(p.basic.dev_sectors, (64 << 20) / 512);
        assert_eq!(p.basic.max_sectors, 2048);
        assert_eq!(p.basic.logical_bs_shift, 9);
        assert_eq!(p.basic.attrs, attr::VOLATILE_CACHE);
        assert_eq!(p.discard.max_discard_sectors, 1 << 21);
        assert_eq!(p.discard.max_discard_segments, 1);
        assert_eq!(p.discard.max_write_zeroes_sectors, 1 << 21);
        assert_eq!(p.discard.discard_granularity, 512);
    }

    #[test]
    fn block_size_read_only_and_cache_follow_the_device() {
        let mut s = shape();
        s.config.blk_size = 4096;
        s.read_only = true;
        s.volatile_cache = false;
        let p = params(&s);
        assert_eq!(p.basic.logical_bs_shift, 12);
        assert_eq!(p.basic.physical_bs_shift, 12);
        assert_eq!(p.basic.attrs, attr::READ_ONLY);
        assert_eq!(p.types, param_type::BASIC);
    }

    #[test]
    fn no_discard_or_write_zeroes_means_no_discard_block() {
        let mut s = shape();
        s.config.discard = None;
        s.config.write_zeroes = None;
        assert_eq!(params(&s).types, param_type::BASIC);
        s.config.write_zeroes = Some(RangeLimits {
            max_sectors: 8,
            max_seg: 1,
            sector_alignment: 0,
        });
        let p = params(&s);
        assert_eq!(p.types, param_type::BASIC | param_type::DISCARD);
        assert_eq!(p.discard.max_discard_sectors, 0);
        assert_eq!(p.discard.max_write_zeroes_sectors, 8);
    }
}

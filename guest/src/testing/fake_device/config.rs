//! The fixed part of a fake device, [`FakeConfig`], and the PCI configuration space built
//! from it: header, BAR registers (with sizing) and the virtio-pci capability list.

use swiotlb_shared::features::{
    bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_SWIOTLB, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use swiotlb_shared::pci::{
    cfg, device_layout as dl, VirtioPciCap, VirtioPciNotifyCap, VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_SWIOTLB, VIRTIO_PCI_DEVICE_ID_BLOCK, VIRTIO_PCI_VENDOR_ID,
};

use super::device::{get_u16, get_u32, put, refused, Inner};
#[cfg(doc)]
use crate::pci::PciAccess;
use crate::pci::PciError;

/// Bus address of BAR 0 (the virtio registers).
pub const REGS_BAR_ADDRESS: u64 = 0xc000_0000;
/// Default bus address of the pool BAR.
pub const POOL_BAR_ADDRESS: u64 = 0x80_0000_0000;
/// Default pool size (4 MiB: room for two 1 MiB requests in flight).
pub const DEFAULT_POOL_SIZE: u64 = 4 << 20;

/// What a virtio-pci capability says: `bar`, `offset`, `length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSpec {
    /// BAR index (anything, even > 5).
    pub bar: u8,
    /// Offset inside the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}

/// The fixed part of a fake device: configuration space, BARs, features, disk.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Disk contents; capacity is its length in whole sectors.
    pub disk: Vec<u8>,
    /// Refuse writes (and offer VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Features offered. [`FakeConfig::new`] offers VERSION_1, SWIOTLB, INDIRECT_DESC,
    /// EVENT_IDX and the virtio-blk features.
    pub features: u64,
    /// Strict policy: FEATURES_OK does not stick unless the driver accepted SWIOTLB.
    pub require_swiotlb: bool,
    /// FEATURES_OK never sticks.
    pub refuse_features_ok: bool,
    /// Maximum size of queue 0 (0: the queue does not exist).
    pub queue_max_size: u16,
    /// `queue_notify_off` of queue 0.
    pub queue_notify_off: u16,
    /// Size of the pool BAR's memory (a non-zero multiple of the page size).
    pub pool_bar_size: u64,
    /// Bus address the pool BAR decodes at (aligned to its size).
    pub pool_bar_address: u64,
    /// The pool BAR register reads as an I/O BAR.
    pub pool_bar_io: bool,
    /// What [`PciAccess::bar_size`] reports for the pool BAR (default: `pool_bar_size`).
    pub reported_pool_bar_size: Option<u64>,
    /// The SWIOTLB capability (`None`: absent). Default: the whole pool BAR.
    pub swiotlb_cap: Option<CapSpec>,
    /// Once the whole SWIOTLB capability has been read, it reads as this from then on.
    pub swiotlb_cap_after_first_read: Option<CapSpec>,
    /// [`PciAccess::map_bar`] maps at most this many bytes, whatever is asked.
    pub map_len_limit: Option<u64>,
    /// Set DEVICE_NEEDS_RESET when the driver sets DRIVER_OK.
    pub needs_reset_on_driver_ok: bool,
    /// Capacity in sectors the device configuration reports (default: the disk's).
    pub capacity_sectors: Option<u64>,
    /// Raw bytes written over the configuration space after it is built, `(offset,
    /// bytes)`: anything the other knobs do not cover (a looping capability list, a
    /// capability pointer into the header, a wrong vendor ID, ...).
    pub config_patches: Vec<(u16, Vec<u8>)>,
    /// `num_queues` in the common configuration (the transport's queue count; only queue 0
    /// exists whatever it says).
    pub transport_queues: u16,
    /// `num_queues` in the virtio-blk configuration (meaningful with VIRTIO_BLK_F_MQ).
    pub blk_num_queues: u16,
    /// The next `config_churn` reads of device configuration each bump
    /// `config_generation` and return garbage (all ones).
    pub config_churn: u32,
}

impl FakeConfig {
    /// A well-behaved device with a `disk` and a [`DEFAULT_POOL_SIZE`] pool.
    pub fn new(disk: Vec<u8>) -> Self {
        Self {
            disk,
            read_only: false,
            features: bit(VIRTIO_F_VERSION_1)
                | bit(VIRTIO_F_SWIOTLB)
                | bit(VIRTIO_RING_F_INDIRECT_DESC)
                | bit(VIRTIO_RING_F_EVENT_IDX)
                | bit(VIRTIO_BLK_F_SEG_MAX)
                | bit(VIRTIO_BLK_F_BLK_SIZE)
                | bit(VIRTIO_BLK_F_FLUSH)
                | bit(VIRTIO_BLK_F_DISCARD)
                | bit(VIRTIO_BLK_F_WRITE_ZEROES),
            require_swiotlb: true,
            refuse_features_ok: false,
            queue_max_size: 256,
            queue_notify_off: 0,
            pool_bar_size: DEFAULT_POOL_SIZE,
            pool_bar_address: POOL_BAR_ADDRESS,
            pool_bar_io: false,
            reported_pool_bar_size: None,
            swiotlb_cap: Some(CapSpec {
                bar: dl::POOL_BAR,
                offset: 0,
                length: DEFAULT_POOL_SIZE as u32,
            }),
            swiotlb_cap_after_first_read: None,
            map_len_limit: None,
            needs_reset_on_driver_ok: false,
            capacity_sectors: None,
            config_patches: Vec::new(),
            transport_queues: 1,
            blk_num_queues: 1,
            config_churn: 0,
        }
    }

    /// Sets the pool BAR size and a SWIOTLB capability covering all of it.
    pub fn with_pool_size(mut self, size: u64) -> Self {
        self.pool_bar_size = size;
        self.swiotlb_cap = Some(CapSpec {
            bar: dl::POOL_BAR,
            offset: 0,
            length: u32::try_from(size).unwrap_or(u32::MAX),
        });
        self
    }
}

pub(super) fn cap_bytes(next: u8, cfg_type: u8, spec: CapSpec) -> [u8; VirtioPciCap::SIZE] {
    VirtioPciCap {
        cap_vndr: cfg::CAP_ID_VENDOR,
        cap_next: next,
        cap_len: VirtioPciCap::SIZE as u8,
        cfg_type,
        bar: spec.bar,
        id: 0,
        padding: [0; 2],
        offset: spec.offset,
        length: spec.length,
    }
    .to_bytes()
}

fn regs(offset: u32, length: u32) -> CapSpec {
    CapSpec {
        bar: dl::REGS_BAR,
        offset,
        length,
    }
}

/// Whether `[a, a + alen)` and `[b, b + blen)` overlap.
pub(super) fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

pub(super) fn build_config(c: &FakeConfig) -> [u8; cfg::SIZE] {
    let mut b = [0u8; cfg::SIZE];
    put(&mut b, 0x00, &VIRTIO_PCI_VENDOR_ID.to_le_bytes());
    put(&mut b, 0x02, &VIRTIO_PCI_DEVICE_ID_BLOCK.to_le_bytes());
    let command = cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER;
    put(&mut b, usize::from(cfg::COMMAND), &command.to_le_bytes());
    put(
        &mut b,
        usize::from(cfg::STATUS),
        &cfg::STATUS_CAP_LIST.to_le_bytes(),
    );
    b[usize::from(cfg::REVISION_ID)] = 1;
    put(&mut b, usize::from(cfg::CLASS_PROG), &[0x00, 0x80, 0x01]);
    put(
        &mut b,
        usize::from(cfg::BAR0),
        &(REGS_BAR_ADDRESS as u32).to_le_bytes(),
    );
    let pool_reg = usize::from(cfg::BAR0) + 4 * usize::from(dl::POOL_BAR);
    if c.pool_bar_io {
        put(
            &mut b,
            pool_reg,
            &((c.pool_bar_address as u32 & !3) | cfg::BAR_IO).to_le_bytes(),
        );
    } else {
        let lo = (c.pool_bar_address as u32 & cfg::BAR_MEM_ADDR_MASK)
            | cfg::BAR_MEM_TYPE_64
            | cfg::BAR_PREFETCHABLE;
        put(&mut b, pool_reg, &lo.to_le_bytes());
        put(
            &mut b,
            pool_reg + 4,
            &((c.pool_bar_address >> 32) as u32).to_le_bytes(),
        );
    }
    b[usize::from(cfg::CAPABILITIES_POINTER)] = dl::CAP_COMMON;
    put(
        &mut b,
        usize::from(dl::CAP_COMMON),
        &cap_bytes(
            dl::CAP_NOTIFY,
            VIRTIO_PCI_CAP_COMMON_CFG,
            regs(dl::COMMON_OFFSET, dl::COMMON_LEN),
        ),
    );
    let mut notify = VirtioPciNotifyCap {
        cap: VirtioPciCap::from_bytes(&cap_bytes(
            dl::CAP_ISR,
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            regs(dl::NOTIFY_OFFSET, dl::NOTIFY_LEN),
        ))
        .unwrap_or_default(),
        notify_off_multiplier: dl::NOTIFY_OFF_MULTIPLIER,
    };
    notify.cap.cap_len = VirtioPciNotifyCap::SIZE as u8;
    put(&mut b, usize::from(dl::CAP_NOTIFY), &notify.to_bytes());
    put(
        &mut b,
        usize::from(dl::CAP_ISR),
        &cap_bytes(
            dl::CAP_DEVICE,
            VIRTIO_PCI_CAP_ISR_CFG,
            regs(dl::ISR_OFFSET, dl::ISR_LEN),
        ),
    );
    let after_device = if c.swiotlb_cap.is_some() {
        dl::CAP_SWIOTLB
    } else {
        0
    };
    put(
        &mut b,
        usize::from(dl::CAP_DEVICE),
        &cap_bytes(
            after_device,
            VIRTIO_PCI_CAP_DEVICE_CFG,
            regs(dl::DEVICE_OFFSET, dl::DEVICE_LEN),
        ),
    );
    if let Some(s) = c.swiotlb_cap {
        put(
            &mut b,
            usize::from(dl::CAP_SWIOTLB),
            &cap_bytes(0, VIRTIO_PCI_CAP_SWIOTLB, s),
        );
    }
    for (at, bytes) in &c.config_patches {
        put(&mut b, usize::from(*at), bytes);
    }
    b
}

impl Inner {
    pub(super) fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.config_space_reads += 1;
        let start = usize::from(offset);
        let src = self
            .config
            .get(start..start + buf.len())
            .ok_or_else(|| refused("config read beyond 256 bytes"))?;
        buf.copy_from_slice(src);
        // A read of the whole capability counts (reads of the capability before it may
        // spill into its first bytes).
        let cap = usize::from(dl::CAP_SWIOTLB);
        if start <= cap && start + buf.len() >= cap + VirtioPciCap::SIZE {
            self.swiotlb_cap_reads += 1;
            if let Some(t) = self.cfg.swiotlb_cap_after_first_read {
                put(
                    &mut self.config,
                    usize::from(dl::CAP_SWIOTLB),
                    &cap_bytes(0, VIRTIO_PCI_CAP_SWIOTLB, t),
                );
            }
        }
        Ok(())
    }

    pub(super) fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        let start = usize::from(offset);
        if start + data.len() > cfg::SIZE {
            return Err(refused("config write beyond 256 bytes"));
        }
        let mut img = self.config;
        put(&mut img, start, data);
        let (o, l) = (u64::from(offset), data.len() as u64);
        if overlaps(o, l, u64::from(cfg::COMMAND), 2) {
            let v = get_u16(&img, usize::from(cfg::COMMAND));
            put(
                &mut self.config,
                usize::from(cfg::COMMAND),
                &v.to_le_bytes(),
            );
        }
        // BAR registers: writable address bits only (sizing reads back the size mask).
        let bar0 = usize::from(cfg::BAR0);
        if overlaps(o, l, u64::from(cfg::BAR0), 4) {
            let mask = !(dl::REGS_BAR_SIZE as u32 - 1);
            let v = get_u32(&img, bar0) & mask;
            put(&mut self.config, bar0, &v.to_le_bytes());
        }
        let pool_reg = bar0 + 4 * usize::from(dl::POOL_BAR);
        let size_mask = !(self.pool.size() - 1);
        if !self.cfg.pool_bar_io && overlaps(o, l, pool_reg as u64, 8) {
            let old_lo = get_u32(&self.config, pool_reg);
            let lo = (get_u32(&img, pool_reg) & size_mask as u32 & cfg::BAR_MEM_ADDR_MASK)
                | (old_lo & !cfg::BAR_MEM_ADDR_MASK);
            let hi = get_u32(&img, pool_reg + 4) & (size_mask >> 32) as u32;
            put(&mut self.config, pool_reg, &lo.to_le_bytes());
            put(&mut self.config, pool_reg + 4, &hi.to_le_bytes());
        }
        Ok(())
    }
}

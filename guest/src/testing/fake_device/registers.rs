//! The fake device's BAR 0: the common configuration registers (features, status with
//! FEATURES_OK and DRIVER_OK, queue setup), the virtio-blk device configuration, and the
//! doorbell that serves queue 0.

use swiotlb_shared::blk::SECTOR_SIZE as SECTOR;
use swiotlb_shared::features::{bit, VIRTIO_F_SWIOTLB};
use swiotlb_shared::layout::INDIRECT_TABLE_DESCS;
use swiotlb_shared::pci::{common, device_layout as dl, status};

use super::config::overlaps;
use super::device::{get_u16, get_u32, get_u64, put, refused, Inner};
use crate::pci::PciError;

impl Inner {
    pub(super) fn common_image(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        put(&mut b, 0x00, &self.device_feature_select.to_le_bytes());
        let f = match self.device_feature_select {
            0 => self.cfg.features as u32,
            1 => (self.cfg.features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, 0x04, &f.to_le_bytes());
        put(&mut b, 0x08, &self.driver_feature_select.to_le_bytes());
        let d = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        put(&mut b, 0x0c, &d.to_le_bytes());
        put(&mut b, 0x10, &self.config_msix_vector.to_le_bytes());
        put(&mut b, 0x12, &self.cfg.transport_queues.to_le_bytes());
        b[0x14] = self.status;
        b[0x15] = self.generation;
        put(&mut b, 0x16, &self.queue_select.to_le_bytes());
        if self.queue_select == 0 {
            let q = &self.queue;
            put(&mut b, 0x18, &q.size.to_le_bytes());
            put(&mut b, 0x1a, &q.msix_vector.to_le_bytes());
            put(&mut b, 0x1c, &u16::from(q.enabled).to_le_bytes());
            put(&mut b, 0x1e, &self.cfg.queue_notify_off.to_le_bytes());
            put(&mut b, 0x20, &q.desc.to_le_bytes());
            put(&mut b, 0x28, &q.driver.to_le_bytes());
            put(&mut b, 0x30, &q.device.to_le_bytes());
        }
        b
    }

    pub(super) fn common_write(&mut self, off: u64, data: &[u8]) {
        let Some(end) = off.checked_add(data.len() as u64).filter(|e| *e <= 64) else {
            return;
        };
        let mut img = self.common_image();
        put(&mut img, off as usize, data);
        let len = end - off;
        let hit = |f: u64, w: u64| overlaps(off, len, f, w);
        if hit(common::DEVICE_FEATURE_SELECT, 4) {
            self.device_feature_select = get_u32(&img, 0x00);
        }
        if hit(common::DRIVER_FEATURE_SELECT, 4) {
            self.driver_feature_select = get_u32(&img, 0x08);
        }
        if hit(common::DRIVER_FEATURE, 4) && self.status & status::FEATURES_OK == 0 {
            let v = u64::from(get_u32(&img, 0x0c));
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            }
        }
        if hit(common::CONFIG_MSIX_VECTOR, 2) {
            self.config_msix_vector = get_u16(&img, 0x10);
        }
        if hit(common::DEVICE_STATUS, 1) {
            self.write_status(img[0x14]);
        }
        if hit(common::QUEUE_SELECT, 2) {
            self.queue_select = get_u16(&img, 0x16);
        }
        if self.queue_select != 0 || self.queue.enabled {
            return;
        }
        if hit(common::QUEUE_SIZE, 2) {
            self.queue.size = get_u16(&img, 0x18);
        }
        if hit(common::QUEUE_MSIX_VECTOR, 2) {
            self.queue.msix_vector = get_u16(&img, 0x1a);
        }
        if hit(common::QUEUE_DESC, 8) {
            self.queue.desc = get_u64(&img, 0x20);
        }
        if hit(common::QUEUE_DRIVER, 8) {
            self.queue.driver = get_u64(&img, 0x28);
        }
        if hit(common::QUEUE_DEVICE, 8) {
            self.queue.device = get_u64(&img, 0x30);
        }
        if hit(common::QUEUE_ENABLE, 2) && get_u16(&img, 0x1c) == 1 {
            self.enable_queue();
        }
    }

    pub(super) fn enable_queue(&mut self) {
        let q = self.queue;
        if q.size == 0 || !q.size.is_power_of_two() || q.size > self.cfg.queue_max_size {
            self.violation(format!("queue size {} enabled", q.size));
            return;
        }
        let n = u64::from(q.size);
        let ok = self
            .check_window("descriptor table", q.desc, 16 * n)
            .is_some()
            & self
                .check_window("available ring", q.driver, 6 + 2 * n)
                .is_some()
            & self
                .check_window("used ring", q.device, 6 + 8 * n)
                .is_some();
        if ok {
            self.queue.enabled = true;
        }
    }

    pub(super) fn write_status(&mut self, v: u8) {
        self.status_writes.push(v);
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v | (self.status & status::DEVICE_NEEDS_RESET);
        if v & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let accepted = self.driver_features;
            let ok = accepted & !self.cfg.features == 0
                && !(self.cfg.require_swiotlb && accepted & bit(VIRTIO_F_SWIOTLB) == 0)
                && !self.cfg.refuse_features_ok;
            if !ok {
                v &= !status::FEATURES_OK;
            }
        }
        if v & status::DRIVER_OK != 0 && self.cfg.needs_reset_on_driver_ok {
            v |= status::DEVICE_NEEDS_RESET;
        }
        self.status = v;
    }

    pub(super) fn device_config_image(&mut self) -> [u8; 64] {
        let mut b = [0u8; 64];
        if self.config_churn_left > 0 {
            self.config_churn_left -= 1;
            self.generation = self.generation.wrapping_add(1);
            return [0xff; 64];
        }
        let bh = &self.behavior;
        let (flip, capacity, seg_max, blk_size) = (
            bh.config_capacity_flip,
            bh.config_capacity,
            bh.config_seg_max,
            bh.config_blk_size,
        );
        let sectors = match flip {
            Some((first, second)) => {
                self.config_flip = !self.config_flip;
                if self.config_flip {
                    first
                } else {
                    second
                }
            }
            None => capacity
                .or(self.cfg.capacity_sectors)
                .unwrap_or(self.disk.len() as u64 / SECTOR),
        };
        let seg_max = seg_max.unwrap_or(u32::from(INDIRECT_TABLE_DESCS - 2));
        let blk_size = blk_size.unwrap_or(SECTOR as u32);
        put(&mut b, 0, &sectors.to_le_bytes());
        put(&mut b, 12, &seg_max.to_le_bytes());
        put(&mut b, 20, &blk_size.to_le_bytes());
        put(&mut b, 34, &self.cfg.blk_num_queues.to_le_bytes());
        b
    }

    pub(super) fn bar_read(
        &mut self,
        bar: u8,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), PciError> {
        if bar == dl::POOL_BAR {
            return self.pool.read(offset, buf).map_err(PciError::Map);
        }
        if bar != dl::REGS_BAR {
            return Err(refused("read of an absent BAR"));
        }
        buf.fill(0);
        let region = |start: u32, len: u32| {
            let (s, l) = (u64::from(start), u64::from(len));
            (offset >= s && offset < s + l).then(|| (offset - s) as usize)
        };
        let img = if let Some(o) = region(dl::COMMON_OFFSET, dl::COMMON_LEN) {
            Some((self.common_image(), o))
        } else {
            region(dl::DEVICE_OFFSET, dl::DEVICE_LEN).map(|o| {
                self.device_config_reads += 1;
                (self.device_config_image(), o)
            })
        };
        if let Some((img, o)) = img {
            for (i, d) in buf.iter_mut().enumerate() {
                *d = img.get(o + i).copied().unwrap_or(0);
            }
        }
        Ok(())
    }

    pub(super) fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        if bar == dl::POOL_BAR {
            return self.pool.write(offset, data).map_err(PciError::Map);
        }
        if bar != dl::REGS_BAR {
            return Err(refused("write of an absent BAR"));
        }
        let common_end = u64::from(dl::COMMON_OFFSET) + u64::from(dl::COMMON_LEN);
        let notify = u64::from(dl::NOTIFY_OFFSET);
        if offset < common_end {
            self.common_write(offset - u64::from(dl::COMMON_OFFSET), data);
        } else if offset >= notify && offset < notify + u64::from(dl::NOTIFY_LEN) {
            self.notifies += 1;
            let q = get_u16(data, 0);
            if q != 0 {
                self.violation(format!("notify of queue {q}"));
            } else {
                self.process_queue();
            }
        }
        Ok(())
    }
}

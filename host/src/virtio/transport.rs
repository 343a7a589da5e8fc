//! virtio-pci common configuration (virtio 1.2, 4.1.4.3): feature negotiation under the
//! strict SWIOTLB policy, the device-status transition table, and queue registers.
//!
//! Guest-writable registers go through `try_` setters that leave state unchanged and return
//! a finding when the write is not allowed.

use swiotlb_shared::features::{bit, VIRTIO_F_SWIOTLB, VIRTIO_F_VERSION_1};
use swiotlb_shared::layout::{avail_ring_size, desc_table_size, used_ring_size, PoolWindow};
use swiotlb_shared::pci::{common, status};
use virtio_queue::{Queue, QueueT};

use crate::findings::{Finding, FindingKind};
use crate::virtio::device::VirtioDevice;

/// Device policy on feature negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Refuse FEATURES_OK unless the driver accepted VIRTIO_F_SWIOTLB (the RFC's "MAY fail
    /// to operate"). On by default.
    pub require_swiotlb: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            require_swiotlb: true,
        }
    }
}

/// What a status write asks of the function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusEffect {
    /// Nothing beyond the register change.
    None,
    /// The driver wrote 0: reset the device.
    Reset,
    /// FEATURES_OK was accepted with these driver features.
    FeaturesOk(u64),
    /// DRIVER_OK was set: the device is live.
    DriverOk,
}

/// One virtqueue and its transport-level settings.
#[derive(Debug)]
pub struct QueueSlot {
    /// Ring state (virtio-queue).
    pub queue: Queue,
    /// MSI-X vector for used-buffer notifications.
    pub msix_vector: u16,
    /// The driver's last queue_size write was refused: `queue` still holds a size the
    /// driver did not choose, so the queue may not be enabled until a valid size is written.
    pub size_refused: bool,
}

/// The transport state of one device.
#[derive(Debug)]
pub struct VirtioPciTransport {
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    config_msix_vector: u16,
    msix_vectors: u16,
    policy: Policy,
    queues: Vec<QueueSlot>,
}

impl VirtioPciTransport {
    /// Transport for `device`, offering its features plus VERSION_1 and SWIOTLB. This is a
    /// modern-only transport (no legacy I/O BAR), so bit 27 is never offered on a legacy
    /// interface where it would mean ANY_LAYOUT.
    pub fn new(device: &dyn VirtioDevice, policy: Policy, msix_vectors: u16) -> Self {
        let device_features = device.features() | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_SWIOTLB);
        let queues = (0..device.num_queues())
            .map(|_| QueueSlot {
                // Device models declare a power-of-two maximum of at most 256
                // (`layout::MAX_QUEUE_SIZE`), which virtio-queue always accepts.
                queue: Queue::new(device.queue_max_size())
                    .expect("device queue_max_size is a power of two <= 32768"),
                msix_vector: common::NO_VECTOR,
                size_refused: false,
            })
            .collect();
        Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            config_msix_vector: common::NO_VECTOR,
            msix_vectors,
            policy,
            queues,
        }
    }

    /// Features offered.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether `feature` was negotiated.
    pub fn negotiated(&self, feature: u32) -> bool {
        self.status & status::FEATURES_OK != 0 && self.driver_features & bit(feature) != 0
    }

    /// Device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether the driver set DRIVER_OK and the device does not need a reset.
    pub fn live(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Marks DEVICE_NEEDS_RESET. Returns true if it was newly set.
    pub fn set_needs_reset(&mut self) -> bool {
        let newly = self.status & status::DEVICE_NEEDS_RESET == 0;
        self.status |= status::DEVICE_NEEDS_RESET;
        if newly {
            self.config_generation = self.config_generation.wrapping_add(1);
        }
        newly
    }

    /// MSI-X vector for configuration changes.
    pub fn config_msix_vector(&self) -> u16 {
        self.config_msix_vector
    }

    /// The queues.
    pub fn queues(&self) -> &[QueueSlot] {
        &self.queues
    }

    /// Queue `i`, mutably.
    pub fn queue_mut(&mut self, i: u16) -> Option<&mut QueueSlot> {
        self.queues.get_mut(usize::from(i))
    }

    /// Resets negotiation, status and queues (virtio reset).
    pub fn reset(&mut self) {
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.status = 0;
        self.queue_select = 0;
        self.config_msix_vector = common::NO_VECTOR;
        for q in &mut self.queues {
            q.queue.reset();
            q.msix_vector = common::NO_VECTOR;
            q.size_refused = false;
        }
    }

    fn selected(&self) -> Option<&QueueSlot> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Reads a common-config register. Accesses must be naturally aligned and 1, 2, 4 or 8
    /// bytes wide; anything else reads as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v: u64 = match offset {
            common::DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            common::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            common::DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            common::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            common::CONFIG_MSIX_VECTOR => u64::from(self.config_msix_vector),
            common::NUM_QUEUES => self.queues.len() as u64,
            common::DEVICE_STATUS => u64::from(self.status),
            common::CONFIG_GENERATION => u64::from(self.config_generation),
            common::QUEUE_SELECT => u64::from(self.queue_select),
            common::QUEUE_SIZE => self.selected().map_or(0, |q| u64::from(q.queue.size())),
            common::QUEUE_MSIX_VECTOR => self
                .selected()
                .map_or(u64::from(common::NO_VECTOR), |q| u64::from(q.msix_vector)),
            common::QUEUE_ENABLE => self.selected().map_or(0, |q| u64::from(q.queue.ready())),
            common::QUEUE_NOTIFY_OFF | common::QUEUE_NOTIFY_DATA => {
                self.selected().map_or(0, |_| u64::from(self.queue_select))
            }
            o if (common::QUEUE_DESC..common::QUEUE_NOTIFY_DATA).contains(&o) => {
                let base = o & !7;
                let full = self.selected().map_or(0, |q| match base {
                    common::QUEUE_DESC => q.queue.desc_table(),
                    common::QUEUE_DRIVER => q.queue.avail_ring(),
                    _ => q.queue.used_ring(),
                });
                if o % 8 == 4 {
                    full >> 32
                } else {
                    full
                }
            }
            _ => 0,
        };
        let b = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&b[..n]);
    }

    /// Writes a common-config register. Returns what the function must do, or the finding
    /// that made the write refused (state unchanged).
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        window: Option<PoolWindow>,
    ) -> Result<StatusEffect, Finding> {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        match offset {
            common::DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            common::DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            common::DRIVER_FEATURE => self.try_set_driver_features(v as u32)?,
            common::CONFIG_MSIX_VECTOR => self.config_msix_vector = self.vector_or_none(v as u16),
            common::DEVICE_STATUS => return self.try_set_status(v as u8),
            common::QUEUE_SELECT => self.queue_select = v as u16,
            common::QUEUE_SIZE => self.try_set_queue_size(v as u16)?,
            common::QUEUE_MSIX_VECTOR => {
                let vec = self.vector_or_none(v as u16);
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    q.msix_vector = vec;
                }
            }
            common::QUEUE_ENABLE if v & 1 == 1 => self.try_enable_queue(window)?,
            o if (common::QUEUE_DESC..common::QUEUE_NOTIFY_DATA).contains(&o) => {
                self.try_set_queue_address(o, data.len(), v)?;
            }
            _ => {}
        }
        Ok(StatusEffect::None)
    }

    fn vector_or_none(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            common::NO_VECTOR
        }
    }

    fn try_set_driver_features(&mut self, v: u32) -> Result<(), Finding> {
        if self.status & status::FEATURES_OK != 0 {
            return Err(Finding::new(
                FindingKind::StatusProtocolViolation,
                format!(
                    "driver_feature written after FEATURES_OK (select {})",
                    self.driver_feature_select
                ),
            ));
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
        Ok(())
    }

    /// The device-status transition table (virtio 1.2, 2.1 and 3.1.1).
    fn try_set_status(&mut self, v: u8) -> Result<StatusEffect, Finding> {
        // "Writing 0 into this field resets the device."
        if v == 0 {
            return Ok(StatusEffect::Reset);
        }
        let old = self.status & !status::DEVICE_NEEDS_RESET;
        // "The driver MUST NOT clear a device status bit."
        if v & old != old {
            return Err(Finding::new(
                FindingKind::StatusProtocolViolation,
                format!("status write {v:#x} clears bits of {old:#x}"),
            ));
        }
        let added = v & !old & !status::DEVICE_NEEDS_RESET;
        let mut effect = StatusEffect::None;
        if added & status::FEATURES_OK != 0 {
            // "The device MUST NOT offer a feature which requires another feature which was
            // not offered", and refuses FEATURES_OK for features it cannot accept.
            self.check_features()?;
            effect = StatusEffect::FeaturesOk(self.driver_features);
        }
        if added & status::DRIVER_OK != 0 {
            // DRIVER_OK without a successful FEATURES_OK is out of order.
            if (old | added) & status::FEATURES_OK == 0 {
                return Err(Finding::new(
                    FindingKind::StatusProtocolViolation,
                    "DRIVER_OK set before FEATURES_OK",
                ));
            }
            effect = StatusEffect::DriverOk;
        }
        self.status |= added;
        Ok(effect)
    }

    fn check_features(&self) -> Result<(), Finding> {
        let unoffered = self.driver_features & !self.device_features;
        if unoffered != 0 {
            return Err(Finding::new(
                FindingKind::UnofferedFeature,
                format!("driver accepted unoffered features {unoffered:#x}"),
            ));
        }
        if self.driver_features & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(Finding::new(
                FindingKind::Version1Declined,
                "driver did not accept VIRTIO_F_VERSION_1",
            ));
        }
        if self.policy.require_swiotlb && self.driver_features & bit(VIRTIO_F_SWIOTLB) == 0 {
            return Err(Finding::new(
                FindingKind::SwiotlbDeclined,
                "driver did not accept VIRTIO_F_SWIOTLB; strict policy refuses FEATURES_OK",
            ));
        }
        Ok(())
    }

    fn queue_config_locked(&self) -> Result<(), Finding> {
        let q = self.selected();
        if self.status & status::DRIVER_OK != 0 || q.is_some_and(|q| q.queue.ready()) {
            return Err(Finding::new(
                FindingKind::StatusProtocolViolation,
                format!(
                    "queue {} configured after enable or DRIVER_OK",
                    self.queue_select
                ),
            )
            .at(self.queue_select, None));
        }
        Ok(())
    }

    fn try_set_queue_size(&mut self, size: u16) -> Result<(), Finding> {
        self.queue_config_locked()?;
        let qs = self.queue_select;
        let Some(q) = self.queues.get_mut(usize::from(qs)) else {
            return Ok(());
        };
        let r = q.queue.try_set_size(size);
        q.size_refused = r.is_err();
        r.map_err(|e| {
            Finding::new(FindingKind::BadQueueSize, format!("queue size {size}: {e}")).at(qs, None)
        })
    }

    fn try_set_queue_address(&mut self, offset: u64, width: usize, v: u64) -> Result<(), Finding> {
        self.queue_config_locked()?;
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return Ok(());
        };
        let base = offset & !7;
        let (lo, hi) = match (offset % 8, width) {
            (0, 8) => (Some(v as u32), Some((v >> 32) as u32)),
            (0, _) => (Some(v as u32), None),
            (4, _) => (None, Some(v as u32)),
            _ => return Ok(()),
        };
        match base {
            common::QUEUE_DESC => q.queue.set_desc_table_address(lo, hi),
            common::QUEUE_DRIVER => q.queue.set_avail_ring_address(lo, hi),
            _ => q.queue.set_used_ring_address(lo, hi),
        }
        Ok(())
    }

    fn try_enable_queue(&mut self, window: Option<PoolWindow>) -> Result<(), Finding> {
        self.queue_config_locked()?;
        let qs = self.queue_select;
        let Some(q) = self.queues.get(usize::from(qs)) else {
            return Err(Finding::new(
                FindingKind::BadQueueNotify,
                format!("enable of nonexistent queue {qs}"),
            ));
        };
        // Enabling with the size the device kept would make the device use rings of a
        // geometry the driver never laid out (used entries written past its used ring).
        if q.size_refused {
            return Err(Finding::new(
                FindingKind::BadQueueSize,
                format!("queue {qs} enabled after its queue_size write was refused"),
            )
            .at(qs, None));
        }
        Self::check_rings(qs, &q.queue, window)?;
        if let Some(q) = self.queues.get_mut(usize::from(qs)) {
            q.queue.set_ready(true);
        }
        Ok(())
    }

    /// Checks that queue `index`'s three rings lie inside the pool window.
    pub fn check_rings(index: u16, q: &Queue, window: Option<PoolWindow>) -> Result<(), Finding> {
        let Some(w) = window else {
            return Err(Finding::new(
                FindingKind::PoolNotDecoded,
                "queue used while the pool BAR is not decoded",
            )
            .at(index, None));
        };
        let size = q.size();
        for (what, addr, len) in [
            ("descriptor table", q.desc_table(), desc_table_size(size)),
            ("available ring", q.avail_ring(), avail_ring_size(size)),
            ("used ring", q.used_ring(), used_ring_size(size)),
        ] {
            if !w.contains(addr, len) {
                return Err(Finding::new(
                    FindingKind::RingOutsidePool,
                    format!("{what} outside the pool"),
                )
                .at(index, None)
                .range(addr, len));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolGuestMemory;
    use crate::virtio::chain::CheckedChain;

    struct Dummy;
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u16 {
            2
        }
        fn features(&self) -> u64 {
            1 << 9
        }
        fn num_queues(&self) -> u16 {
            1
        }
        fn queue_max_size(&self) -> u16 {
            128
        }
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn handle_chain(
            &mut self,
            _: u16,
            _: &PoolGuestMemory,
            _: &CheckedChain,
        ) -> crate::virtio::device::Handled {
            crate::virtio::device::Handled::Done(0)
        }
        fn reset(&mut self) {}
        fn metrics(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn clear_metrics(&mut self) {}
    }

    fn t() -> VirtioPciTransport {
        VirtioPciTransport::new(&Dummy, Policy::default(), 2)
    }

    fn w32(t: &mut VirtioPciTransport, off: u64, v: u32) -> Result<StatusEffect, Finding> {
        t.write(off, &v.to_le_bytes(), None)
    }

    fn negotiate(t: &mut VirtioPciTransport, features: u64) -> Result<StatusEffect, Finding> {
        w32(t, common::DEVICE_STATUS, 3).unwrap();
        w32(t, common::DRIVER_FEATURE_SELECT, 0).unwrap();
        w32(t, common::DRIVER_FEATURE, features as u32).unwrap();
        w32(t, common::DRIVER_FEATURE_SELECT, 1).unwrap();
        w32(t, common::DRIVER_FEATURE, (features >> 32) as u32).unwrap();
        t.write(common::DEVICE_STATUS, &[3 | status::FEATURES_OK], None)
    }

    #[test]
    fn offers_swiotlb_and_version_1() {
        let t = t();
        assert_eq!(t.device_features(), (1 << 9) | (1 << 27) | (1 << 32));
    }

    #[test]
    fn strict_policy_refuses_features_ok_without_swiotlb() {
        let mut t = t();
        let e = negotiate(&mut t, 1 << 32).unwrap_err();
        assert_eq!(e.kind, FindingKind::SwiotlbDeclined);
        assert_eq!(t.status() & status::FEATURES_OK, 0);
        let e = t
            .write(common::DEVICE_STATUS, &[3 | status::DRIVER_OK], None)
            .unwrap_err();
        assert_eq!(e.kind, FindingKind::StatusProtocolViolation);
        assert_eq!(t.status(), 3);
    }

    #[test]
    fn unoffered_bit_and_missing_version_1_are_refused() {
        let mut t = t();
        assert_eq!(
            negotiate(&mut t, (1 << 32) | (1 << 27) | (1 << 5))
                .unwrap_err()
                .kind,
            FindingKind::UnofferedFeature
        );
        let mut t2 = self::t();
        assert_eq!(
            negotiate(&mut t2, 1 << 27).unwrap_err().kind,
            FindingKind::Version1Declined
        );
    }

    #[test]
    fn accepted_negotiation_locks_features() {
        let mut t = t();
        let f = (1 << 32) | (1 << 27);
        assert_eq!(negotiate(&mut t, f).unwrap(), StatusEffect::FeaturesOk(f));
        assert!(t.negotiated(VIRTIO_F_SWIOTLB));
        let e = w32(&mut t, common::DRIVER_FEATURE, 0).unwrap_err();
        assert_eq!(e.kind, FindingKind::StatusProtocolViolation);
        assert_eq!(t.driver_features(), f);
        assert_eq!(
            t.write(common::DEVICE_STATUS, &[0], None).unwrap(),
            StatusEffect::Reset
        );
    }

    #[test]
    fn relaxed_policy_accepts_a_driver_without_swiotlb() {
        let mut t = VirtioPciTransport::new(
            &Dummy,
            Policy {
                require_swiotlb: false,
            },
            2,
        );
        assert!(negotiate(&mut t, 1 << 32).is_ok());
    }

    #[test]
    fn queue_enable_checks_rings_against_the_pool() {
        let mut t = t();
        let w = PoolWindow::new(0x1000_0000, 1 << 20).unwrap();
        w32(&mut t, common::QUEUE_SIZE, 100).unwrap_err();
        w32(&mut t, common::QUEUE_SIZE, 64).unwrap();
        t.write(common::QUEUE_DESC, &0x1000_0000u64.to_le_bytes(), None)
            .unwrap();
        w32(&mut t, common::QUEUE_DRIVER, 0x1000_0400).unwrap();
        w32(&mut t, common::QUEUE_DEVICE, 0x2000_0000).unwrap();
        let e = t.write(common::QUEUE_ENABLE, &[1, 0], Some(w)).unwrap_err();
        assert_eq!(e.kind, FindingKind::RingOutsidePool);
        assert!(!t.queues()[0].queue.ready());
        w32(&mut t, common::QUEUE_DEVICE, 0x1000_1000).unwrap();
        assert_eq!(
            t.write(common::QUEUE_ENABLE, &[1, 0], None)
                .unwrap_err()
                .kind,
            FindingKind::PoolNotDecoded
        );
        t.write(common::QUEUE_ENABLE, &[1, 0], Some(w)).unwrap();
        assert!(t.queues()[0].queue.ready());
        let mut b = [0u8; 4];
        t.read(common::QUEUE_DEVICE, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1000_1000);
    }

    #[test]
    fn refused_queue_size_blocks_enable_until_a_valid_size_is_written() {
        let w = PoolWindow::new(0x1000_0000, 1 << 20).unwrap();
        for bad in [0u16, 100, 129, 256] {
            let mut t = t();
            let e = w32(&mut t, common::QUEUE_SIZE, u32::from(bad)).unwrap_err();
            assert_eq!(e.kind, FindingKind::BadQueueSize, "{bad}");
            let mut b = [0u8; 2];
            t.read(common::QUEUE_SIZE, &mut b);
            assert_eq!(u16::from_le_bytes(b), 128, "{bad}: the maximum is kept");
            t.write(common::QUEUE_DESC, &0x1000_0000u64.to_le_bytes(), None)
                .unwrap();
            w32(&mut t, common::QUEUE_DRIVER, 0x1000_1000).unwrap();
            w32(&mut t, common::QUEUE_DEVICE, 0x1000_2000).unwrap();
            let e = t.write(common::QUEUE_ENABLE, &[1, 0], Some(w)).unwrap_err();
            assert_eq!(e.kind, FindingKind::BadQueueSize, "{bad}");
            assert!(!t.queues()[0].queue.ready(), "{bad}");
            // A valid size clears the refusal; so does a reset.
            w32(&mut t, common::QUEUE_SIZE, 64).unwrap();
            t.write(common::QUEUE_ENABLE, &[1, 0], Some(w)).unwrap();
            assert!(t.queues()[0].queue.ready(), "{bad}");
            t.reset();
            w32(&mut t, common::QUEUE_SIZE, u32::from(bad)).unwrap_err();
            t.reset();
            assert!(!t.queues()[0].size_refused, "{bad}");
        }
    }
}

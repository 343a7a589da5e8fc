//! The fake device itself: the [`FakeDevice`] handle (clones share one device), its state,
//! what a test can inspect and steer, the pool memfd, and its [`PciAccess`] face.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use swiotlb_shared::features::{bit, VIRTIO_BLK_F_RO};
use swiotlb_shared::layout::{PoolWindow, PAGE_SIZE};
use swiotlb_shared::little_endian;
use swiotlb_shared::pci::{cfg, common, device_layout as dl};
use thiserror::Error;

use super::behavior::Behavior;
use super::config::{build_config, FakeConfig};
use super::queue::{QueueState, SeenDescriptor};
use super::scribbler::{lock_state, ScribbleState};
use crate::pci::{PciAccess, PciError};
use crate::pool::{Mapping, PoolAccessError, PoolMemory};

/// Errors building a [`FakeDevice`].
#[derive(Debug, Error)]
pub enum FakeError {
    /// The configuration cannot be built.
    #[error("bad fake device configuration: {0}")]
    BadConfig(String),
    /// Creating the pool memfd failed.
    #[error("creating the pool memfd failed")]
    Memfd(#[source] std::io::Error),
    /// Mapping the pool failed.
    #[error("mapping the pool failed")]
    Pool(#[from] PoolAccessError),
}

/// The device's state, behind the handle's lock.
pub(super) struct Inner {
    pub(super) cfg: FakeConfig,
    pub(super) behavior: Behavior,
    pub(super) config: [u8; cfg::SIZE],
    pub(super) swiotlb_cap_reads: u32,
    pub(super) pool_fd: OwnedFd,
    /// The device's mapping of the whole pool BAR.
    pub(super) pool: PoolMemory,
    pub(super) disk: Vec<u8>,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) status: u8,
    pub(super) generation: u8,
    pub(super) config_churn_left: u32,
    pub(super) config_msix_vector: u16,
    pub(super) queue_select: u16,
    pub(super) queue: QueueState,
    pub(super) last_avail: u16,
    pub(super) used_idx: u16,
    pub(super) descriptors: Vec<SeenDescriptor>,
    pub(super) violations: Vec<String>,
    pub(super) status_writes: Vec<u8>,
    pub(super) notifies: u64,
    pub(super) completions: u64,
    /// Doorbells served since the behaviour was last set.
    pub(super) doorbells_since_behavior: u64,
    /// Reads of PCI configuration space.
    pub(super) config_space_reads: u64,
    /// Reads of the virtio-blk device configuration.
    pub(super) device_config_reads: u64,
    /// Which value of [`Behavior::config_capacity_flip`] the next read reports.
    pub(super) config_flip: bool,
    /// The running scribbler's targets, if any.
    pub(super) scribble: Option<Arc<Mutex<ScribbleState>>>,
}

/// The fake device; see the module documentation. Clones share one device.
#[derive(Clone)]
pub struct FakeDevice {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.lock();
        f.debug_struct("FakeDevice")
            .field("status", &i.status)
            .field("queue", &i.queue)
            .field("behavior", &i.behavior)
            .finish_non_exhaustive()
    }
}

fn memfd(size: u64) -> Result<OwnedFd, FakeError> {
    // SAFETY: memfd_create with a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"swiotlb-fake-pool".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FakeError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let file = std::fs::File::from(fd);
    file.set_len(size).map_err(FakeError::Memfd)?;
    Ok(OwnedFd::from(file))
}

pub(super) fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(d) = at.checked_add(v.len()).and_then(|e| b.get_mut(at..e)) {
        d.copy_from_slice(v);
    }
}

// Register reads of the fake's own buffers: a field past the end reads as 0.
pub(super) fn get_u16(b: &[u8], at: usize) -> u16 {
    little_endian::u16_at(b, at).unwrap_or(0)
}

pub(super) fn get_u32(b: &[u8], at: usize) -> u32 {
    little_endian::u32_at(b, at).unwrap_or(0)
}

pub(super) fn get_u64(b: &[u8], at: usize) -> u64 {
    little_endian::u64_at(b, at).unwrap_or(0)
}

impl FakeDevice {
    /// Builds the device: configuration space, a zeroed pool memfd of
    /// `cfg.pool_bar_size` bytes, and the disk.
    pub fn new(mut cfg: FakeConfig) -> Result<Self, FakeError> {
        if cfg.read_only {
            cfg.features |= bit(VIRTIO_BLK_F_RO);
        }
        let size = cfg.pool_bar_size;
        if size == 0 || size % PAGE_SIZE != 0 || !size.is_power_of_two() {
            return Err(FakeError::BadConfig(format!(
                "pool BAR size {size:#x} must be a power of two, at least a page"
            )));
        }
        if cfg.pool_bar_address % size != 0 {
            return Err(FakeError::BadConfig(format!(
                "pool BAR address {:#x} not aligned to its size",
                cfg.pool_bar_address
            )));
        }
        let len = usize::try_from(size).map_err(|_| FakeError::BadConfig("pool size".into()))?;
        let pool_fd = memfd(size)?;
        let pool = PoolMemory::new(Mapping::shared(pool_fd.as_fd(), 0, len)?);
        let config = build_config(&cfg);
        let disk = cfg.disk.clone();
        let mut inner = Inner {
            behavior: Behavior::default(),
            config,
            swiotlb_cap_reads: 0,
            pool_fd,
            pool,
            disk,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            config_churn_left: cfg.config_churn,
            config_msix_vector: common::NO_VECTOR,
            queue_select: 0,
            queue: QueueState::default(),
            last_avail: 0,
            used_idx: 0,
            descriptors: Vec::new(),
            violations: Vec::new(),
            status_writes: Vec::new(),
            notifies: 0,
            completions: 0,
            doorbells_since_behavior: 0,
            config_space_reads: 0,
            device_config_reads: 0,
            config_flip: false,
            scribble: None,
            cfg,
        };
        inner.reset();
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// A well-behaved device with `disk` (see [`FakeConfig::new`]).
    pub fn with_disk(disk: Vec<u8>) -> Result<Self, FakeError> {
        Self::new(FakeConfig::new(disk))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves consistent enough state to
        // inspect; never propagate the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes how requests are completed from the next doorbell on.
    pub fn set_behavior(&self, b: Behavior) {
        let mut i = self.lock();
        i.behavior = b;
        i.doorbells_since_behavior = 0;
    }

    /// Reads of PCI configuration space so far.
    pub fn config_space_reads(&self) -> u64 {
        self.lock().config_space_reads
    }

    /// Reads of the virtio-blk device configuration (capacity, seg_max, ...) so far.
    pub fn device_config_reads(&self) -> u64 {
        self.lock().device_config_reads
    }

    /// The current behaviour.
    pub fn behavior(&self) -> Behavior {
        self.lock().behavior.clone()
    }

    /// Every descriptor read so far, in order.
    pub fn descriptors(&self) -> Vec<SeenDescriptor> {
        self.lock().descriptors.clone()
    }

    /// Forgets the recorded descriptors.
    pub fn clear_descriptors(&self) {
        self.lock().descriptors.clear();
    }

    /// What the device found outside the announced pool window (ring addresses,
    /// descriptors, indirect tables) or otherwise malformed. Empty for a correct driver.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Queue 0 as programmed.
    pub fn queue(&self) -> QueueState {
        self.lock().queue
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.lock().status
    }

    /// Every value the driver wrote to the status register, in order.
    pub fn status_writes(&self) -> Vec<u8> {
        self.lock().status_writes.clone()
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.lock().driver_features
    }

    /// How many configuration-space reads covered the whole SWIOTLB capability.
    pub fn swiotlb_cap_reads(&self) -> u32 {
        self.lock().swiotlb_cap_reads
    }

    /// Doorbells rung.
    pub fn notifies(&self) -> u64 {
        self.lock().notifies
    }

    /// Used elements written.
    pub fn completions(&self) -> u64 {
        self.lock().completions
    }

    /// A copy of the disk.
    pub fn disk(&self) -> Vec<u8> {
        self.lock().disk.clone()
    }

    /// Runs `f` on the disk (to change it behind the driver's back).
    pub fn with_disk_mut<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        f(&mut self.lock().disk)
    }

    /// The pool window the SWIOTLB capability announced at construction (bus addresses),
    /// or `None` without a capability or when it does not fit the BAR's address space.
    pub fn pool_window(&self) -> Option<PoolWindow> {
        let i = self.lock();
        i.announced_window()
    }

    /// Bus address the pool BAR decodes at.
    pub fn pool_bar_address(&self) -> u64 {
        self.lock().pool_bar_base()
    }

    /// Size of the pool BAR's memory.
    pub fn pool_bar_size(&self) -> u64 {
        self.lock().pool.size()
    }

    /// Reads the pool BAR's memory at `offset` (from the BAR start), as the device.
    pub fn read_pool(&self, offset: u64, buf: &mut [u8]) -> Result<(), PoolAccessError> {
        self.lock().pool.read(offset, buf)
    }

    /// Writes the pool BAR's memory at `offset` (from the BAR start), as the device.
    pub fn write_pool(&self, offset: u64, data: &[u8]) -> Result<(), PoolAccessError> {
        self.lock().pool.write(offset, data)
    }

    /// Serves queue 0 now, as if the driver had rung the doorbell.
    pub fn process_queue(&self) {
        self.lock().process_queue();
    }
}

impl Inner {
    pub(super) fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.queue = QueueState {
            size: self.cfg.queue_max_size,
            msix_vector: common::NO_VECTOR,
            ..QueueState::default()
        };
        self.last_avail = 0;
        self.used_idx = 0;
        if let Some(s) = &self.scribble {
            lock_state(s).clear();
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    pub(super) fn pool_bar_base(&self) -> u64 {
        let reg = usize::from(cfg::BAR0) + 4 * usize::from(dl::POOL_BAR);
        let lo = get_u32(&self.config, reg);
        if lo & cfg::BAR_IO != 0 {
            return u64::from(lo & !3);
        }
        let mut a = u64::from(lo & cfg::BAR_MEM_ADDR_MASK);
        if lo & (0b11 << 1) == cfg::BAR_MEM_TYPE_64 {
            a |= u64::from(get_u32(&self.config, reg + 4)) << 32;
        }
        a
    }

    pub(super) fn announced_window(&self) -> Option<PoolWindow> {
        let c = self.cfg.swiotlb_cap?;
        let base = self.pool_bar_base().checked_add(u64::from(c.offset))?;
        PoolWindow::new(base, u64::from(c.length)).ok()
    }

    /// BAR-relative offset of `[addr, addr + len)` when it lies in the pool BAR's memory.
    pub(super) fn bar_offset(&self, addr: u64, len: u64) -> Option<u64> {
        let off = addr.checked_sub(self.pool_bar_base())?;
        off.checked_add(len)
            .filter(|e| *e <= self.pool.size())
            .map(|_| off)
    }

    /// Checks `[addr, addr + len)` against the announced window, recording a violation.
    pub(super) fn check_window(&mut self, what: &str, addr: u64, len: u64) -> Option<u64> {
        let inside = self
            .announced_window()
            .is_some_and(|w| w.contains(addr, len));
        match self.bar_offset(addr, len) {
            Some(o) if inside => Some(o),
            _ => {
                self.violation(format!(
                    "{what} [{addr:#x}, +{len:#x}) outside the pool window"
                ));
                None
            }
        }
    }

    pub(super) fn load_u16(&mut self, what: &str, addr: u64) -> Option<u16> {
        let o = self.check_window(what, addr, 2)?;
        self.pool.load_u16(o).ok()
    }

    pub(super) fn store_u16(&mut self, what: &str, addr: u64, v: u16) {
        if let Some(o) = self.check_window(what, addr, 2) {
            let _ = self.pool.store_u16(o, v);
        }
    }

    pub(super) fn store_u32(&mut self, what: &str, addr: u64, v: u32) {
        if let Some(o) = self.check_window(what, addr, 4) {
            let _ = self.pool.store_u32(o, v);
        }
    }
}

pub(super) fn refused(what: &str) -> PciError {
    PciError::Refused {
        what: what.into(),
        errno: libc::EINVAL as u32,
    }
}

impl PciAccess for FakeDevice {
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.lock().config_read(offset, buf)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.lock().config_write(offset, data)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        self.lock().bar_read(bar, offset, buf)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        self.lock().bar_write(bar, offset, data)
    }

    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError> {
        let i = self.lock();
        Ok(match bar {
            dl::REGS_BAR => dl::REGS_BAR_SIZE,
            dl::POOL_BAR => i.cfg.reported_pool_bar_size.unwrap_or(i.pool.size()),
            _ => 0,
        })
    }

    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        let i = self.lock();
        let not = |why: &str| PciError::NotMappable {
            bar,
            why: why.into(),
        };
        if bar != dl::POOL_BAR {
            return Err(not("only the pool BAR is mappable"));
        }
        let len = i.cfg.map_len_limit.map_or(len, |l| l.min(len));
        if offset.checked_add(len).is_none_or(|e| e > i.pool.size()) {
            return Err(not("range outside the BAR"));
        }
        let len = usize::try_from(len).map_err(|_| not("too large"))?;
        Mapping::shared(i.pool_fd.as_fd(), offset, len).map_err(PciError::Map)
    }

    fn enable_msix(&mut self, _count: u16) -> Result<Option<Vec<OwnedFd>>, PciError> {
        // No interrupts: the driver polls the used ring.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_device::{DEFAULT_POOL_SIZE, DEVICE_ID, POOL_BAR_ADDRESS};
    use crate::{BlockDriver, Options};
    use swiotlb_shared::pci::status;

    fn disk(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 512 * 7 + i % 251) as u8).collect()
    }

    #[test]
    fn well_behaved_fake_device_serves_the_real_driver() {
        let fake = FakeDevice::with_disk(disk(1 << 20)).unwrap();
        let mut drv = BlockDriver::open(fake.clone(), &Options::default()).unwrap();
        assert_eq!(drv.info().capacity, 1 << 20);
        assert_eq!(drv.info().pool_bus_address, POOL_BAR_ADDRESS);
        let mut buf = vec![0u8; 8192];
        drv.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, fake.disk()[4096..4096 + 8192]);
        drv.write_at(512, &[9u8; 1024]).unwrap();
        assert_eq!(&fake.disk()[512..1536], &[9u8; 1024][..]);
        let id = drv.get_id().unwrap();
        assert_eq!(&id[..DEVICE_ID.len()], DEVICE_ID);
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        assert!(fake.status() & status::DRIVER_OK != 0);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut fake = FakeDevice::with_disk(disk(4096)).unwrap();
        let reg = cfg::BAR0 + 4 * u16::from(dl::POOL_BAR);
        fake.config_write(reg, &u32::MAX.to_le_bytes()).unwrap();
        fake.config_write(reg + 4, &u32::MAX.to_le_bytes()).unwrap();
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        fake.config_read(reg, &mut lo).unwrap();
        fake.config_read(reg + 4, &mut hi).unwrap();
        let mask = u64::from(u32::from_le_bytes(lo) & cfg::BAR_MEM_ADDR_MASK)
            | (u64::from(u32::from_le_bytes(hi)) << 32);
        assert_eq!((!mask).wrapping_add(1), DEFAULT_POOL_SIZE);
        assert!(FakeDevice::new(FakeConfig::new(Vec::new()).with_pool_size(3 << 20)).is_err());
    }
}

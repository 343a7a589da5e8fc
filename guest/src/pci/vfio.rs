//! A PCI function bound to the kernel's `vfio-pci` driver, reached through VFIO: the deployed
//! confidential guest's back end.
//!
//! - The function is named by its sysfs directory (`/sys/bus/pci/devices/<BDF>`). Its IOMMU
//!   group (the `iommu_group` link) must exist, so the guest needs a vIOMMU (QEMU's
//!   `intel-iommu`, guest kernel `intel_iommu=on`); without one the open fails saying so. A
//!   guest with no vIOMMU uses the [`super::sysfs`] back end.
//! - A VFIO container with the type1 (v2) IOMMU back end, the group, and the device fd are
//!   opened through `vfio-ioctls`. **No DMA mapping is ever made**: the device is only ever
//!   given addresses inside its own pool BAR, so the IOMMU domain stays empty and any DMA the
//!   device attempted to guest RAM would fault in the (v)IOMMU.
//! - Configuration space is read and written with `pread`/`pwrite` on the device fd at the
//!   config region's offset, so every failure surfaces as an error naming the region
//!   (`vfio-ioctls`' own region accessors only log failures). `vfio-pci` virtualizes parts of
//!   it; the BAR registers read back as the addresses the kernel assigned, and [`VfioPci::open`]
//!   checks that against the kernel's `resource` file before anything else uses them: the
//!   driver takes the pool's bus address from those registers.
//! - BAR registers and the pool are `mmap`s of the device fd at each BAR region's offset
//!   (`VFIO_REGION_INFO_FLAG_MMAP`, and within a sparse-mmap area when the kernel lists
//!   some). `vfio-pci` maps BARs uncached; each register access is one volatile access of
//!   exactly the width asked (1, 2, 4 or 8 bytes, naturally aligned). A BAR the kernel does
//!   not let user space map has its registers reached with `pread`/`pwrite` instead, and
//!   cannot hold the pool.
//! - Interrupts: [`PciAccess::enable_msix`] gives each MSI-X vector an eventfd with
//!   `VFIO_DEVICE_SET_IRQS`. This matters beyond latency: `vfio-pci` clears Interrupt Disable
//!   when it opens a function and keeps that bit virtual, so a polling driver would leave the
//!   function free to raise INTx, and a VMM that emulates INTx (QEMU under TCG) unmaps the
//!   BARs until it sees it acknowledged. With MSI-X enabled the function never uses INTx. A
//!   function without MSI-X gets `None` (the driver polls).
//!
//! The host is hostile, and what VFIO reports comes from it (region sizes and offsets,
//! capability chains, configuration bytes): every value is checked before use, and every
//! failure is a [`PciError`] naming the ioctl, region or file. Nothing here panics on them.
//!
//! Files: `open` finds the function's IOMMU group and opens the container, group and
//! device, and checks what the kernel assigned; `regions` reads each region's info and
//! reaches configuration space and BAR registers through the device fd (pread/pwrite, or a
//! mapping) and maps the pool; `interrupts` sets and clears the MSI-X eventfds.

mod interrupts;
mod open;
mod regions;

use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use swiotlb_shared::vfio_user::Region;
use vfio_ioctls::{VfioContainer, VfioDevice};

use super::discovery::{BarResource, NUM_BARS};
use super::pool_map::{PoolMapMode, PoolMemoryType};
use super::{check_config_range, mmio_read, mmio_write, PciAccess, PciError, RegisterAccess};
use crate::pool::Mapping;

pub use open::{check_function, iommu_group};

/// The kernel driver a function must be bound to for this back end.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// A PCI function driven through kernel VFIO.
pub struct VfioPci {
    dir: PathBuf,
    bdf: String,
    group: u32,
    config: Region,
    config_size: u64,
    /// Each BAR's region (size 0: absent).
    bars: [Region; NUM_BARS],
    /// The kernel's record of each BAR (sysfs `resource`), checked against `bars` and the
    /// BAR registers at open.
    resources: [BarResource; NUM_BARS],
    /// Each BAR's register mapping, made at its first register access (`None` also when
    /// the BAR cannot be mapped: its registers then go through pread/pwrite).
    maps: [Option<Mapping>; NUM_BARS],
    msix_enabled: bool,
    /// How the pool is to be mapped ([`with_pool_map`](Self::with_pool_map)).
    pool_map: PoolMapMode,
    /// How it was.
    pool_memory: Option<PoolMemoryType>,
    /// Dropped by hand (see `Drop`): the wrapper's own drop panics if the function's
    /// `iommu_group` link has gone (hot unplug), which is the host's to cause.
    device: ManuallyDrop<VfioDevice>,
    /// Kept for the device's life (the device holds its own reference too).
    _container: Arc<VfioContainer>,
}

impl std::fmt::Debug for VfioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPci")
            .field("dir", &self.dir)
            .field("group", &self.group)
            .field("config", &self.config)
            .field("bars", &self.bars)
            .field("resources", &self.resources)
            .field("msix_enabled", &self.msix_enabled)
            .finish_non_exhaustive()
    }
}

/// The error of a VFIO call (ioctl or device-fd access) that failed doing `what`.
fn vfio_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PciError {
    let what = what.into();
    move |source| PciError::Vfio { what, source }
}

impl VfioPci {
    /// Asks for the pool to be mapped as `mode` says (the default is the BAR's own
    /// mapping: `/dev/mem` only when asked). With `/dev/mem`, the pool BAR is never touched
    /// through VFIO, so vfio-pci never claims its range (which `IO_STRICT_DEVMEM` would make
    /// revoke the mapping).
    pub fn with_pool_map(mut self, mode: PoolMapMode) -> Self {
        self.pool_map = mode;
        self
    }

    /// The function's sysfs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The function's IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// BAR `bar`'s VFIO region (`None` past BAR 5).
    pub fn region(&self, bar: u8) -> Option<&Region> {
        self.bars.get(usize::from(bar))
    }

    /// BAR `bar` as the kernel's `resource` file described it at open (`None` past BAR 5).
    pub fn resource(&self, bar: u8) -> Option<BarResource> {
        self.resources.get(usize::from(bar)).copied()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the device fd is owned by `self.device`, which lives (and keeps it open)
        // as long as `self`, so for the borrow's lifetime.
        unsafe { BorrowedFd::borrow_raw(self.device.as_raw_fd()) }
    }

    fn config_range(&self, what: &str, offset: u16, len: usize) -> Result<(), PciError> {
        check_config_range(what, offset, len, self.config_size)
    }
}

impl Drop for VfioPci {
    fn drop(&mut self) {
        self.disable_msix();
        for m in &mut self.maps {
            *m = None;
        }
        // The wrapper's drop looks the group up again through the `iommu_group` link and
        // panics if it cannot; when the link no longer names our group the device is left
        // open for the process's exit to close.
        if iommu_group(&self.dir).ok() == Some(self.group) {
            // SAFETY: dropped exactly once, here, and never used after.
            unsafe { ManuallyDrop::drop(&mut self.device) };
        } else {
            tracing::warn!(
                dir = %self.dir.display(),
                group = self.group,
                "the function's IOMMU group is gone: the VFIO device stays open until exit"
            );
        }
    }
}

impl PciAccess for VfioPci {
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.config_range("config read", offset, buf.len())?;
        regions::pread_exact(self.fd(), buf, self.config.offset + u64::from(offset)).map_err(
            vfio_err(format!(
                "reading {} bytes at {offset:#x} of the VFIO config region of {}",
                buf.len(),
                self.bdf
            )),
        )
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.config_range("config write", offset, data.len())?;
        regions::pwrite_all(self.fd(), data, self.config.offset + u64::from(offset)).map_err(
            vfio_err(format!(
                "writing {} bytes at {offset:#x} of the VFIO config region of {}",
                data.len(),
                self.bdf
            )),
        )
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        let access = RegisterAccess::read(bar, offset, buf.len());
        if let Some(map) = self.register(access)? {
            return mmio_read(map, access, buf);
        }
        // `register` checked the range inside the region, which fits a file offset.
        let at = self.bars[usize::from(bar)].offset + offset;
        regions::pread_exact(self.fd(), buf, at).map_err(vfio_err(format!(
            "reading {} bytes at {offset:#x} of BAR {bar} of {}",
            buf.len(),
            self.bdf
        )))
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        let access = RegisterAccess::write(bar, offset, data.len());
        if let Some(map) = self.register(access)? {
            return mmio_write(map, access, data);
        }
        let at = self.bars[usize::from(bar)].offset + offset;
        regions::pwrite_all(self.fd(), data, at).map_err(vfio_err(format!(
            "writing {} bytes at {offset:#x} of BAR {bar} of {}",
            data.len(),
            self.bdf
        )))
    }

    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError> {
        Ok(self.bars.get(usize::from(bar)).map_or(0, |r| r.size))
    }

    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        self.map_pool(bar, offset, len)
    }

    fn pool_memory_type(&self) -> Option<PoolMemoryType> {
        self.pool_memory
    }

    fn enable_msix(&mut self, count: u16) -> Result<Option<Vec<OwnedFd>>, PciError> {
        self.set_msix_eventfds(count)
    }
}

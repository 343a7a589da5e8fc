//! How the driver reaches a PCI function: config space, BAR registers, the pool BAR's
//! mapping, and interrupts. One trait, several back ends; the driver above is the same for
//! all:
//! - [`vfio_user`]: a vfio-user client, the function in another process (it also plays the
//!   firmware's part and assigns BAR addresses);
//! - [`discovery`]: finding a real function in sysfs and reading the BARs the kernel
//!   assigned it (its `resource` file), for the two back ends below;
//! - [`sysfs`]: a real PCI function of a Linux guest, through `/sys/bus/pci/devices/<BDF>/`
//!   (the kernel assigned the BARs; no interrupts, the driver polls);
//! - [`vfio`]: a real PCI function bound to the kernel's `vfio-pci`, through a VFIO container
//!   (type1 IOMMU, so the guest needs a vIOMMU), its group and the device fd: configuration
//!   space through the device's config region, BARs mmapped from the device fd, MSI-X
//!   vectors as eventfds. No DMA mapping is ever made: every address the device is given
//!   lies in its own pool BAR.
//!
//! The two back ends of a real function never program a BAR: the kernel (or firmware)
//! assigned them, and the pool's bus address the driver puts on the ring is the address the
//! function's BAR registers hold, which each back end checks against the kernel's own record
//! (sysfs `resource`).

pub mod discovery;
#[cfg(test)]
mod fake_sysfs;
pub mod pool_map;
pub mod sysfs;
pub mod vfio;
pub mod vfio_user;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use swiotlb_shared::pci::{cfg, VIRTIO_PCI_DEVICE_ID_BLOCK, VIRTIO_PCI_VENDOR_ID};
use swiotlb_shared::vfio_user::RegionInfoError;
use thiserror::Error;

use crate::pool::{Mapping, PoolAccessError};

/// Errors of PCI access.
#[derive(Debug, Error)]
pub enum PciError {
    /// The transport to the function failed.
    #[error("PCI transport failed")]
    Io(#[source] std::io::Error),
    /// The function (or the server in front of it) answered with an error.
    #[error("the device refused {what}: errno {errno}")]
    Refused {
        /// What was asked.
        what: String,
        /// Error number it answered.
        errno: u32,
    },
    /// The function answered nonsense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The BAR cannot be mapped.
    #[error("BAR {bar} cannot be mapped: {why}")]
    NotMappable {
        /// BAR index.
        bar: u8,
        /// Why.
        why: String,
    },
    /// Mapping failed.
    #[error("mapping failed")]
    Map(#[source] PoolAccessError),
    /// A file of the function's sysfs directory could not be used.
    #[error("{what} {}", .path.display())]
    Sysfs {
        /// The file.
        path: PathBuf,
        /// What was being done with it.
        what: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A sysfs file holds something the back end refuses.
    #[error("{}: {why}", .path.display())]
    SysfsInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The function's `resource` file is not what the kernel writes.
    #[error("{}", .path.display())]
    Resource {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: discovery::DiscoveryError,
    },
    /// The function is not the one the back end drives.
    #[error("{} is {vendor:04x}:{device:04x}, not a modern virtio-blk function (1af4:1042)", .path.display())]
    WrongFunction {
        /// The function's directory.
        path: PathBuf,
        /// Vendor ID its config space holds.
        vendor: u16,
        /// Device ID its config space holds.
        device: u16,
    },
    /// A kernel driver owns the function: driving it from user space too would fight it.
    #[error("{} is bound to the kernel driver `{driver}`; unbind it first (echo {bdf} > /sys/bus/pci/drivers/{driver}/unbind)", .path.display())]
    Bound {
        /// The function's directory.
        path: PathBuf,
        /// Its name (the BDF).
        bdf: String,
        /// The driver's name.
        driver: String,
    },
    /// The function has no IOMMU group, so VFIO cannot have it.
    #[error("{}: no IOMMU group: boot with a vIOMMU (intel_iommu=on in the guest, and a QEMU -device intel-iommu) or use the sysfs back end", .path.display())]
    NoIommuGroup {
        /// The function's directory.
        path: PathBuf,
    },
    /// The function is not bound to `vfio-pci`, so there is no VFIO device to open.
    #[error("{} is {}; bind it to vfio-pci first: {}echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; echo {bdf} > /sys/bus/pci/drivers_probe", .path.display(), .driver.as_deref().map_or("bound to no driver".to_string(), |d| format!("bound to the kernel driver `{d}`")), .driver.as_deref().map_or(String::new(), |d| format!("echo {bdf} > /sys/bus/pci/drivers/{d}/unbind; ")))]
    NotVfioBound {
        /// The function's directory.
        path: PathBuf,
        /// Its name (the BDF).
        bdf: String,
        /// The driver bound instead, if any.
        driver: Option<String>,
    },
    /// A VFIO call (ioctl or device-fd access) failed.
    #[error("{what}")]
    Vfio {
        /// What was being done, naming the ioctl or the region and the function.
        what: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// Opening the VFIO container, group or device failed.
    #[error("{what}")]
    VfioOpen {
        /// What was being done.
        what: String,
        /// What the VFIO wrapper said.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A region's info as VFIO gave it is malformed (offsets, capability chain).
    #[error("{what}")]
    RegionInfo {
        /// The ioctl and region concerned.
        what: String,
        /// What is wrong with it.
        #[source]
        source: RegionInfoError,
    },
    /// A VFIO answer the back end refuses (region sizes and flags, registers).
    #[error("{what}: {why}")]
    VfioInvalid {
        /// The ioctl or region concerned.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// The BAR address the function's configuration space gives is not the one the kernel
    /// assigned: the pool's bus address would be wrong.
    #[error("BAR {bar}: configuration space says {config:#x}, the kernel assigned {kernel:#x} ({}); refusing a pool address the kernel does not know", .resource.display())]
    BarMismatch {
        /// BAR index.
        bar: u8,
        /// Address decoded from the BAR registers.
        config: u64,
        /// Address in the kernel's `resource` file.
        kernel: u64,
        /// That file.
        resource: PathBuf,
    },
    /// An access the back end refuses: width, alignment or range.
    #[error("{what} of {len} bytes at offset {offset:#x} refused: {why}")]
    BadAccess {
        /// What was asked ("config read", "BAR 0 write", ...).
        what: String,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Why it was refused.
        why: String,
    },
}

/// Configuration space beyond this (PCIe extended space ends here) is never addressed.
pub(crate) const MAX_CONFIG_SIZE: u64 = 4096;

/// Refuses a configuration-space access of `len` bytes at `offset` that passes the end of
/// a `size`-byte configuration space.
pub(crate) fn check_config_range(
    what: &str,
    offset: u16,
    len: usize,
    size: u64,
) -> Result<(), PciError> {
    if u64::from(offset) + len as u64 > size {
        return Err(PciError::BadAccess {
            what: what.into(),
            offset: u64::from(offset),
            len: len as u64,
            why: format!("past the end of the {size}-byte configuration space"),
        });
    }
    Ok(())
}

/// Refuses a function whose configuration space (read through `pci`) does not say modern
/// virtio-blk (1af4:1042); `dir` names it in the error.
pub(crate) fn check_virtio_blk(pci: &mut impl PciAccess, dir: &Path) -> Result<(), PciError> {
    let mut id = [0u8; 4];
    pci.config_read(cfg::VENDOR_ID, &mut id)?;
    let vendor = u16::from_le_bytes([id[0], id[1]]);
    let device = u16::from_le_bytes([id[2], id[3]]);
    if vendor != VIRTIO_PCI_VENDOR_ID || device != VIRTIO_PCI_DEVICE_ID_BLOCK {
        return Err(PciError::WrongFunction {
            path: dir.to_path_buf(),
            vendor,
            device,
        });
    }
    Ok(())
}

/// The system's page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// A register access to a BAR that back ends reach through a mapping, checked the same way
/// by each of them, and the error any failure of it is reported as.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RegisterAccess {
    /// Which BAR.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Width in bytes.
    pub len: usize,
    /// A write (else a read).
    pub write: bool,
}

impl RegisterAccess {
    /// A read of `len` bytes at `offset` of BAR `bar`.
    pub fn read(bar: u8, offset: u64, len: usize) -> Self {
        Self {
            bar,
            offset,
            len,
            write: false,
        }
    }

    /// A write of `len` bytes at `offset` of BAR `bar`.
    pub fn write(bar: u8, offset: u64, len: usize) -> Self {
        Self {
            bar,
            offset,
            len,
            write: true,
        }
    }

    /// The error refusing this access for `why`.
    pub fn refuse(&self, why: impl Into<String>) -> PciError {
        PciError::BadAccess {
            what: format!(
                "BAR {} {}",
                self.bar,
                if self.write { "write" } else { "read" }
            ),
            offset: self.offset,
            len: self.len as u64,
            why: why.into(),
        }
    }

    /// Registers are 1, 2, 4 or 8 bytes wide and naturally aligned.
    pub fn check_width(&self) -> Result<(), PciError> {
        if !matches!(self.len, 1 | 2 | 4 | 8) {
            return Err(self.refuse("registers are 1, 2, 4 or 8 bytes wide"));
        }
        if self.offset % self.len as u64 != 0 {
            return Err(self.refuse(format!("not aligned to its width of {}", self.len)));
        }
        Ok(())
    }

    /// The BAR the kernel describes in `r`, of `size` bytes as the back end knows it, is a
    /// used memory BAR with an address, and holds the access.
    pub fn check_bar(&self, r: &discovery::BarResource, size: u64) -> Result<(), PciError> {
        if size == 0 {
            return Err(self.refuse("the BAR is unused"));
        }
        if !r.is_memory() {
            return Err(self.refuse("not a memory BAR"));
        }
        if !r.is_assigned() {
            return Err(self.refuse("the kernel did not assign the BAR an address"));
        }
        if self
            .offset
            .checked_add(self.len as u64)
            .is_none_or(|end| end > size)
        {
            return Err(self.refuse(format!("outside the BAR's {size:#x} bytes")));
        }
        Ok(())
    }
}

/// One volatile load of exactly `buf.len()` bytes (1, 2, 4 or 8) at `access.offset` of a
/// register mapping, as device registers want. Refuses other widths, unaligned offsets and
/// ranges past the mapping's end, as `access` says.
pub(crate) fn mmio_read(
    map: &Mapping,
    access: RegisterAccess,
    buf: &mut [u8],
) -> Result<(), PciError> {
    let at = mmio_check(map, access, buf.len())?;
    // SAFETY: `mmio_check` proved `[offset, offset + len)` lies inside the mapping and
    // `offset` is a multiple of the width; the mapping is page aligned, so each access below
    // is naturally aligned and wholly inside it. The mapping is device memory that no Rust
    // object aliases.
    unsafe {
        let p = map.as_mut_ptr().add(at);
        match buf.len() {
            1 => buf[0] = p.read_volatile(),
            2 => buf.copy_from_slice(&p.cast::<u16>().read_volatile().to_ne_bytes()),
            4 => buf.copy_from_slice(&p.cast::<u32>().read_volatile().to_ne_bytes()),
            _ => buf.copy_from_slice(&p.cast::<u64>().read_volatile().to_ne_bytes()),
        }
    }
    Ok(())
}

/// One volatile store of exactly `data.len()` bytes (1, 2, 4 or 8); see [`mmio_read`].
pub(crate) fn mmio_write(
    map: &Mapping,
    access: RegisterAccess,
    data: &[u8],
) -> Result<(), PciError> {
    let at = mmio_check(map, access, data.len())?;
    let mut b = [0u8; 8];
    b[..data.len()].copy_from_slice(data);
    // SAFETY: as in `mmio_read`: in bounds, naturally aligned, device memory.
    unsafe {
        let p = map.as_mut_ptr().add(at);
        match data.len() {
            1 => p.write_volatile(b[0]),
            2 => p
                .cast::<u16>()
                .write_volatile(u16::from_ne_bytes([b[0], b[1]])),
            4 => p
                .cast::<u32>()
                .write_volatile(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            _ => p.cast::<u64>().write_volatile(u64::from_ne_bytes(b)),
        }
    }
    Ok(())
}

/// Checks a register access of `len` bytes at `access.offset` of `map`; returns the offset
/// as an index, or `access` refused.
fn mmio_check(map: &Mapping, access: RegisterAccess, len: usize) -> Result<usize, PciError> {
    let offset = access.offset;
    if !matches!(len, 1 | 2 | 4 | 8) {
        return Err(access.refuse("registers are 1, 2, 4 or 8 bytes wide"));
    }
    if offset % len as u64 != 0 {
        return Err(access.refuse(format!("not aligned to its width of {len}")));
    }
    let end = offset.checked_add(len as u64);
    match (end, usize::try_from(offset)) {
        (Some(end), Ok(at)) if end <= map.byte_len() as u64 => Ok(at),
        _ => Err(access.refuse(format!(
            "outside the {:#x}-byte register mapping",
            map.byte_len()
        ))),
    }
}

/// Access to one PCI function.
pub trait PciAccess: Send {
    /// Reads `buf.len()` bytes of configuration space at `offset`.
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError>;
    /// Writes configuration space at `offset`.
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError>;
    /// Reads a register of BAR `bar` (1 to 8 bytes).
    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError>;
    /// Writes a register of BAR `bar` (1 to 8 bytes).
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError>;
    /// Size of BAR `bar` as the back end knows it (0 if absent).
    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError>;
    /// Maps `len` bytes of BAR `bar` from `offset`, shared with the device.
    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError>;
    /// The memory type the pool mapping was made with, for a real PCI function (`None`:
    /// not mapped yet, or shared memory that is RAM on both sides, as over vfio-user).
    fn pool_memory_type(&self) -> Option<pool_map::PoolMemoryType> {
        None
    }
    /// Sets up `count` MSI-X vectors and returns an eventfd per vector, or `None` when the
    /// back end has no interrupts (the driver then polls).
    fn enable_msix(&mut self, count: u16) -> Result<Option<Vec<OwnedFd>>, PciError>;
}

//! How the driver reaches a PCI function: config space, BAR registers, the pool BAR's
//! mapping, and interrupts. One trait, several back ends; the driver above is the same for
//! all:
//! - [`vfio_user`]: a vfio-user client, the function in another process (it also plays the
//!   firmware's part and assigns BAR addresses);
//! - [`sysfs`]: a real PCI function of a Linux guest, through `/sys/bus/pci/devices/<BDF>/`
//!   (the kernel assigned the BARs; no interrupts, the driver polls).

pub mod sysfs;
pub mod vfio_user;

use std::os::fd::OwnedFd;
use std::path::PathBuf;

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
    /// Sets up `count` MSI-X vectors and returns an eventfd per vector, or `None` when the
    /// back end has no interrupts (the driver then polls).
    fn enable_msix(&mut self, count: u16) -> Result<Option<Vec<OwnedFd>>, PciError>;
}

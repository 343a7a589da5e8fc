//! How the driver reaches a PCI function: config space, BAR registers, the pool BAR's
//! mapping, and interrupts. One trait, several back ends (a vfio-user client here; kernel
//! VFIO and sysfs come with the VM back ends); the driver above is the same for all.

pub mod vfio_user;

use std::os::fd::OwnedFd;

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

//! PCI: the configuration space, interrupts, and the virtio-pci function built on them.
//!
//! - [`config_space`]: the configuration header, BARs and capability list;
//! - [`interrupts`]: INTx and MSI-X as vfio-user SET_IRQS programs them;
//! - [`function`]: the function: regions, register dispatch, findings and resets.

pub mod config_space;
pub mod function;
pub mod interrupts;

pub use config_space::{BarKind, BarSpec, ConfigChange, ConfigSpace};
pub use function::VirtioPciFunction;

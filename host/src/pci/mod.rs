//! PCI: the configuration space and the virtio-pci function built on it.

pub mod config_space;
pub mod function;
pub mod interrupts;

pub use config_space::{BarKind, BarSpec, ConfigChange, ConfigSpace};
pub use function::VirtioPciFunction;

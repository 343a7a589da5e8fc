//! Interrupt delivery through eventfds the client passed with SET_IRQS (INTx and MSI-X).

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;

use thiserror::Error;

/// VFIO IRQ index of INTx.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// VFIO IRQ index of MSI.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// VFIO IRQ index of MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// VFIO IRQ index of the error interrupt.
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
/// VFIO IRQ index of the request interrupt.
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
/// Number of VFIO IRQ indexes of a PCI device.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// Errors of SET_IRQS.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IrqError {
    /// The index has no vectors, or the range exceeds them.
    #[error("irq index {index} has {available} vectors, asked for {start}+{count}")]
    OutOfRange {
        /// IRQ index.
        index: u32,
        /// First vector asked for.
        start: u32,
        /// Vectors asked for.
        count: u32,
        /// Vectors present.
        available: u32,
    },
    /// The number of fds does not match `count`.
    #[error("{fds} eventfds passed for {count} vectors")]
    FdCount {
        /// Fds received.
        fds: usize,
        /// Vectors asked for.
        count: u32,
    },
}

/// What a SET_IRQS asks for.
#[derive(Debug)]
pub enum IrqAction {
    /// Use these eventfds for vectors `start..start + fds.len()`.
    Assign(Vec<OwnedFd>),
    /// Remove every eventfd of the index (`count` 0, DATA_NONE).
    Disable,
    /// Fire vectors `start..start + count` now (DATA_NONE / DATA_BOOL true).
    Trigger,
    /// Mask or unmask: accepted, and INTx masking is left to the client.
    Mask,
}

/// The eventfds of every vector.
#[derive(Debug, Default)]
pub struct Interrupts {
    intx: Option<File>,
    msix: Vec<Option<File>>,
}

impl Interrupts {
    /// Interrupts with `msix_vectors` MSI-X vectors and one INTx line.
    pub fn new(msix_vectors: u16) -> Self {
        Self {
            intx: None,
            msix: (0..msix_vectors).map(|_| None).collect(),
        }
    }

    /// Vectors of `index` (for DEVICE_GET_IRQ_INFO).
    pub fn count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => 1,
            VFIO_PCI_MSIX_IRQ_INDEX => self.msix.len() as u32,
            _ => 0,
        }
    }

    fn check(&self, index: u32, start: u32, count: u32) -> Result<(), IrqError> {
        let available = self.count(index);
        if start.checked_add(count).is_none_or(|e| e > available) {
            return Err(IrqError::OutOfRange {
                index,
                start,
                count,
                available,
            });
        }
        Ok(())
    }

    /// Applies a SET_IRQS.
    pub fn set(
        &mut self,
        index: u32,
        start: u32,
        count: u32,
        action: IrqAction,
    ) -> Result<(), IrqError> {
        match action {
            IrqAction::Disable => {
                match index {
                    VFIO_PCI_INTX_IRQ_INDEX => self.intx = None,
                    VFIO_PCI_MSIX_IRQ_INDEX => self.msix.iter_mut().for_each(|v| *v = None),
                    _ => {}
                }
                Ok(())
            }
            IrqAction::Assign(fds) => {
                self.check(index, start, count)?;
                if fds.len() != count as usize {
                    return Err(IrqError::FdCount {
                        fds: fds.len(),
                        count,
                    });
                }
                for (i, fd) in fds.into_iter().enumerate() {
                    let f = Some(File::from(fd));
                    match index {
                        VFIO_PCI_INTX_IRQ_INDEX => self.intx = f,
                        _ => {
                            if let Some(slot) = self.msix.get_mut(start as usize + i) {
                                *slot = f;
                            }
                        }
                    }
                }
                Ok(())
            }
            IrqAction::Trigger => {
                self.check(index, start, count)?;
                for v in start..start + count {
                    let _fired = match index {
                        VFIO_PCI_INTX_IRQ_INDEX => self.intx(),
                        _ => self.msix(v as u16),
                    };
                }
                Ok(())
            }
            IrqAction::Mask => self.check(index, start, count),
        }
    }

    fn kick(f: &mut File) {
        // An eventfd write only fails if the counter would overflow, which means the client
        // stopped reading it; the interrupt is then already pending.
        let _ = f.write_all(&1u64.to_ne_bytes());
    }

    /// Fires the INTx eventfd, if any. Returns whether one was fired.
    pub fn intx(&mut self) -> bool {
        self.intx.as_mut().map(Self::kick).is_some()
    }

    /// Fires MSI-X vector `v`, if it has an eventfd. Returns whether one was fired.
    pub fn msix(&mut self, v: u16) -> bool {
        self.msix
            .get_mut(usize::from(v))
            .and_then(Option::as_mut)
            .map(Self::kick)
            .is_some()
    }

    /// Drops every eventfd.
    pub fn clear(&mut self) {
        self.intx = None;
        self.msix.iter_mut().for_each(|v| *v = None);
    }
}

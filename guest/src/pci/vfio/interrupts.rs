//! Interrupts: each MSI-X vector gets an eventfd through `VFIO_DEVICE_SET_IRQS`, and MSI-X
//! is turned off again when the function is dropped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use swiotlb_shared::vfio_user::device::{
    pci_irq, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE,
};
use swiotlb_shared::vfio_user::limits::MAX_IRQ_SET_COUNT;
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_io_nr;

use super::{vfio_err, VfioPci};
use crate::pci::PciError;

ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);

impl VfioPci {
    /// Gives each of `count` MSI-X vectors an eventfd and returns them; `None` when the
    /// function has no MSI-X (the driver then polls).
    pub(super) fn set_msix_eventfds(
        &mut self,
        count: u16,
    ) -> Result<Option<Vec<OwnedFd>>, PciError> {
        let have = self
            .device
            .get_irq_info(pci_irq::MSIX)
            .map_or(0, |i| i.count);
        if have == 0 {
            return Ok(None);
        }
        if count == 0 || u32::from(count) > MAX_IRQ_SET_COUNT || u32::from(count) > have {
            return Err(PciError::BadAccess {
                what: "MSI-X set-up".into(),
                offset: 0,
                len: u64::from(count),
                why: format!("{} has {have} MSI-X vectors", self.bdf),
            });
        }
        let mut fds = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            // SAFETY: eventfd has no memory-safety preconditions; the result is checked.
            let fd: RawFd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                return Err(PciError::Io(std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        // struct vfio_irq_set (five u32s) followed by one s32 fd per vector.
        let mut set: Vec<u32> = vec![
            (20 + 4 * usize::from(count)) as u32,
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            pci_irq::MSIX,
            0,
            u32::from(count),
        ];
        set.extend(fds.iter().map(|f| f.as_raw_fd() as u32));
        // SAFETY: the kernel reads `argsz` bytes (the whole vector) from the buffer, which
        // lives across the call; the eventfds it names stay open (the kernel takes its own
        // references).
        let ret = unsafe {
            ioctl_with_mut_ptr(
                &self.fd(),
                VFIO_DEVICE_SET_IRQS(),
                set.as_mut_ptr().cast::<u8>(),
            )
        };
        if ret < 0 {
            return Err(vfio_err(format!(
                "VFIO_DEVICE_SET_IRQS (MSI-X, {count} eventfds) on {}",
                self.bdf
            ))(std::io::Error::last_os_error()));
        }
        self.msix_enabled = true;
        Ok(Some(fds))
    }

    /// Turns MSI-X off (best effort: the kernel does it too when the device fd closes).
    pub(super) fn disable_msix(&mut self) {
        if !self.msix_enabled {
            return;
        }
        let mut set = [0u32; 5];
        set[0] = 20;
        set[1] = IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER;
        set[2] = pci_irq::MSIX;
        // SAFETY: the kernel reads the 20-byte header (count 0: no data) from the array,
        // which lives across the call.
        let ret = unsafe {
            ioctl_with_mut_ptr(
                &self.fd(),
                VFIO_DEVICE_SET_IRQS(),
                set.as_mut_ptr().cast::<u8>(),
            )
        };
        if ret < 0 {
            tracing::warn!(
                bdf = %self.bdf,
                error = %std::io::Error::last_os_error(),
                "VFIO_DEVICE_SET_IRQS (MSI-X off) failed"
            );
        }
        self.msix_enabled = false;
    }
}

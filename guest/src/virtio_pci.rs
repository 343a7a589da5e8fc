//! The driver side of the virtio-pci transport (virtio 1.2, 4.1): capability discovery with
//! the SWIOTLB capability validated before it is trusted, the initialization sequence, and
//! queue registers.
//!
//! The device is untrusted: every capability is read once into a private copy and
//! validated (BAR present, range inside it, sane lengths); configuration reads that may race
//! a change use `config_generation`.

use std::time::{Duration, Instant};

use swiotlb_shared::features::bit;
use swiotlb_shared::layout::{PoolLayout, PAGE_SIZE};
use swiotlb_shared::pci::{
    attest_mailbox, cfg, common, status, VirtioPciCap, VirtioPciNotifyCap, VirtioPciVendorCap,
    VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_CAP_SWIOTLB, VIRTIO_PCI_CAP_VENDOR_CFG,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE, VIRTIO_PCI_VENDOR_ID,
};
use thiserror::Error;

use crate::pci::{PciAccess, PciError};

/// Most capabilities walked: the list lives in bytes 0x40..0x100, dword aligned, so a list
/// longer than 48 entries must loop.
const MAX_CAPS: usize = 48;
/// How long a reset may take before the device is declared dead.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of a device-config read whose generation keeps changing.
const CONFIG_RETRIES: usize = 16;

/// Errors of the transport driver.
#[derive(Debug, Error)]
pub enum TransportError {
    /// PCI access failed.
    #[error("PCI access failed")]
    Pci(#[from] PciError),
    /// Not a modern virtio function.
    #[error("function {vendor:04x}:{device:04x} is not a modern virtio device")]
    NotVirtio {
        /// Vendor ID.
        vendor: u16,
        /// Device ID.
        device: u16,
    },
    /// A required capability is absent.
    #[error("the device has no {0} capability")]
    MissingCapability(&'static str),
    /// A capability is malformed or points outside its BAR.
    #[error("invalid {what} capability: {why}")]
    BadCapability {
        /// Which capability.
        what: &'static str,
        /// Why it was refused.
        why: String,
    },
    /// The device did not come out of reset.
    #[error("device did not complete reset within {0:?}")]
    ResetTimeout(Duration),
    /// Device configuration kept changing while being read.
    #[error("device configuration changed during {CONFIG_RETRIES} consecutive reads")]
    ConfigUnstable,
    /// A register the driver must read holds nonsense.
    #[error("device register {what} holds invalid value {value:#x}")]
    BadRegister {
        /// Which register.
        what: &'static str,
        /// The value.
        value: u64,
    },
}

/// A structure inside a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// BAR index.
    pub bar: u8,
    /// Offset within the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The validated capabilities of a virtio-pci function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Common configuration.
    pub common: Region,
    /// Notification area.
    pub notify: Region,
    /// Notification offset multiplier.
    pub notify_multiplier: u32,
    /// ISR status.
    pub isr: Region,
    /// Device-specific configuration.
    pub device: Region,
    /// The SWIOTLB pool, if the device describes one.
    pub swiotlb: Option<Region>,
    /// The attestation mailbox, if the device has one.
    pub attest: Option<Region>,
}

/// A virtio-pci function being driven.
pub struct VirtioPci<P: PciAccess> {
    pci: P,
    caps: Capabilities,
    /// Each queue's doorbell offset in the notify region, read and validated at its first
    /// notification and reused (it cannot change until the queue is set up again).
    doorbells: Vec<Option<u64>>,
}

impl<P: PciAccess> VirtioPci<P> {
    /// Identifies the function and reads and validates its capabilities.
    pub fn probe(mut pci: P) -> Result<Self, TransportError> {
        let mut id = [0u8; 4];
        pci.config_read(cfg::VENDOR_ID, &mut id)?;
        let vendor = u16::from_le_bytes([id[0], id[1]]);
        let device = u16::from_le_bytes([id[2], id[3]]);
        if vendor != VIRTIO_PCI_VENDOR_ID || device < VIRTIO_PCI_MODERN_DEVICE_ID_BASE {
            return Err(TransportError::NotVirtio { vendor, device });
        }
        let caps = Self::read_caps(&mut pci)?;
        Ok(Self {
            pci,
            caps,
            doorbells: Vec::new(),
        })
    }

    /// The validated capabilities.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// The PCI back end.
    pub fn pci(&mut self) -> &mut P {
        &mut self.pci
    }

    fn read_caps(pci: &mut P) -> Result<Capabilities, TransportError> {
        let mut st = [0u8; 2];
        pci.config_read(cfg::STATUS, &mut st)?;
        if u16::from_le_bytes(st) & cfg::STATUS_CAP_LIST == 0 {
            return Err(TransportError::MissingCapability("any"));
        }
        let mut ptr = [0u8; 1];
        pci.config_read(cfg::CAPABILITIES_POINTER, &mut ptr)?;
        let mut at = ptr[0] & !3;
        let (mut common, mut notify, mut isr, mut device, mut swiotlb) =
            (None, None, None, None, None);
        let mut attest = None;
        let mut seen = 0;
        while at != 0 {
            if at < 0x40 {
                return Err(TransportError::BadCapability {
                    what: "list",
                    why: format!("capability pointer {at:#x} inside the header"),
                });
            }
            seen += 1;
            if seen > MAX_CAPS {
                return Err(TransportError::BadCapability {
                    what: "list",
                    why: "capability list loops".into(),
                });
            }
            // Read the whole capability once; the device may change config space under us.
            let mut raw = [0u8; VirtioPciNotifyCap::SIZE];
            let avail = (cfg::SIZE - usize::from(at)).min(raw.len());
            pci.config_read(u16::from(at), &mut raw[..avail])?;
            let next = raw[1] & !3;
            if raw[0] == cfg::CAP_ID_VENDOR && avail >= VirtioPciVendorCap::SIZE && attest.is_none()
            {
                if let Some(v) = VirtioPciVendorCap::from_bytes(&raw) {
                    if v.cfg_type == VIRTIO_PCI_CAP_VENDOR_CFG
                        && v.vendor_id == VIRTIO_PCI_VENDOR_ID
                        && v.subtype == attest_mailbox::CAP_SUBTYPE
                    {
                        let as_cap = VirtioPciCap {
                            bar: v.bar,
                            offset: v.offset,
                            length: v.length,
                            ..Default::default()
                        };
                        attest = Some(Self::check_region(
                            pci,
                            "attestation mailbox",
                            &as_cap,
                            0x58,
                        )?);
                    }
                }
            }
            if raw[0] == cfg::CAP_ID_VENDOR && avail >= VirtioPciCap::SIZE {
                if let Some(cap) = VirtioPciCap::from_bytes(&raw) {
                    let slot = match cap.cfg_type {
                        VIRTIO_PCI_CAP_COMMON_CFG => Some(&mut common),
                        VIRTIO_PCI_CAP_NOTIFY_CFG => Some(&mut notify),
                        VIRTIO_PCI_CAP_ISR_CFG => Some(&mut isr),
                        VIRTIO_PCI_CAP_DEVICE_CFG => Some(&mut device),
                        VIRTIO_PCI_CAP_SWIOTLB => Some(&mut swiotlb),
                        _ => None,
                    };
                    // The first capability of each type that the driver can use wins
                    // (virtio 1.2, 4.1.4.1); later ones are ignored.
                    if let Some(slot) = slot {
                        if slot.is_none() {
                            let mult = if cap.cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG {
                                VirtioPciNotifyCap::from_bytes(&raw[..avail])
                                    .map(|n| n.notify_off_multiplier)
                            } else {
                                None
                            };
                            *slot = Some((cap, mult));
                        }
                    }
                }
            }
            at = next;
        }
        let mut region = |what: &'static str, c: Option<(VirtioPciCap, Option<u32>)>, min: u64| {
            let (cap, mult) = c.ok_or(TransportError::MissingCapability(what))?;
            Self::check_region(pci, what, &cap, min).map(|r| (r, mult))
        };
        // The virtio 1.0 size suffices: this driver never touches the fields 1.2 added.
        let (common, _) = region("common", common, common::LEN_1_0)?;
        let (notify, mult) = region("notify", notify, 2)?;
        let (isr, _) = region("ISR", isr, 1)?;
        let (device, _) = region("device", device, 1)?;
        let notify_multiplier = mult.ok_or(TransportError::BadCapability {
            what: "notify",
            why: "shorter than struct virtio_pci_notify_cap".into(),
        })?;
        let swiotlb = match swiotlb {
            Some((cap, _)) => Some(Self::check_swiotlb(pci, &cap)?),
            None => None,
        };
        Ok(Capabilities {
            common,
            notify,
            notify_multiplier,
            isr,
            device,
            swiotlb,
            attest,
        })
    }

    fn check_region(
        pci: &mut P,
        what: &'static str,
        cap: &VirtioPciCap,
        min_len: u64,
    ) -> Result<Region, TransportError> {
        let bad = |why: String| TransportError::BadCapability { what, why };
        if cap.bar > 5 {
            return Err(bad(format!("BAR {} does not exist", cap.bar)));
        }
        let size = pci.bar_size(cap.bar)?;
        if size == 0 {
            return Err(bad(format!("BAR {} has size zero", cap.bar)));
        }
        let (offset, len) = (u64::from(cap.offset), u64::from(cap.length));
        if len < min_len {
            return Err(bad(format!("length {len} below the minimum {min_len}")));
        }
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(bad(format!(
                "[{offset:#x}, +{len:#x}) outside BAR {} of {size:#x} bytes",
                cap.bar
            )));
        }
        Ok(Region {
            bar: cap.bar,
            offset,
            len,
        })
    }

    /// The SWIOTLB capability must name an existing memory BAR, lie inside it, be page
    /// aligned, and describe a pool the layout accepts (a power of two, at least
    /// `MIN_POOL_SIZE`).
    fn check_swiotlb(pci: &mut P, cap: &VirtioPciCap) -> Result<Region, TransportError> {
        let what = "SWIOTLB";
        let r = Self::check_region(pci, what, cap, 1)?;
        let bad = |why: String| TransportError::BadCapability { what, why };
        let mut bar = [0u8; 4];
        pci.config_read(cfg::BAR0 + u16::from(r.bar) * 4, &mut bar)?;
        if u32::from_le_bytes(bar) & cfg::BAR_IO != 0 {
            return Err(bad(format!("BAR {} is an I/O BAR, not memory", r.bar)));
        }
        if r.offset % PAGE_SIZE != 0 || r.len % PAGE_SIZE != 0 {
            return Err(bad(format!(
                "offset {:#x} or length {:#x} not page aligned",
                r.offset, r.len
            )));
        }
        PoolLayout::check_pool_size(r.len).map_err(|e| bad(e.to_string()))?;
        Ok(r)
    }

    /// The bus address BAR `bar` decodes at, read from configuration space.
    pub fn bar_address(&mut self, bar: u8) -> Result<u64, TransportError> {
        if bar > 5 {
            return Err(TransportError::BadRegister {
                what: "BAR index",
                value: u64::from(bar),
            });
        }
        let mut lo = [0u8; 4];
        self.pci
            .config_read(cfg::BAR0 + u16::from(bar) * 4, &mut lo)?;
        let lo = u32::from_le_bytes(lo);
        let mut addr = u64::from(lo & cfg::BAR_MEM_ADDR_MASK);
        if lo & (0b11 << 1) == cfg::BAR_MEM_TYPE_64 {
            if bar == 5 {
                return Err(TransportError::BadRegister {
                    what: "64-bit BAR 5",
                    value: u64::from(lo),
                });
            }
            let mut hi = [0u8; 4];
            self.pci
                .config_read(cfg::BAR0 + u16::from(bar) * 4 + 4, &mut hi)?;
            addr |= u64::from(u32::from_le_bytes(hi)) << 32;
        }
        Ok(addr)
    }

    fn common_read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), TransportError> {
        let c = self.caps.common;
        self.pci.bar_read(c.bar, c.offset + off, buf)?;
        Ok(())
    }

    fn common_write(&mut self, off: u64, data: &[u8]) -> Result<(), TransportError> {
        let c = self.caps.common;
        self.pci.bar_write(c.bar, c.offset + off, data)?;
        Ok(())
    }

    fn read16(&mut self, off: u64) -> Result<u16, TransportError> {
        let mut b = [0u8; 2];
        self.common_read(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn read32(&mut self, off: u64) -> Result<u32, TransportError> {
        let mut b = [0u8; 4];
        self.common_read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write16(&mut self, off: u64, v: u16) -> Result<(), TransportError> {
        self.common_write(off, &v.to_le_bytes())
    }

    fn write32(&mut self, off: u64, v: u32) -> Result<(), TransportError> {
        self.common_write(off, &v.to_le_bytes())
    }

    /// The device status register.
    pub fn status(&mut self) -> Result<u8, TransportError> {
        let mut b = [0u8; 1];
        self.common_read(common::DEVICE_STATUS, &mut b)?;
        Ok(b[0])
    }

    /// Writes the device status register.
    pub fn set_status(&mut self, v: u8) -> Result<(), TransportError> {
        self.common_write(common::DEVICE_STATUS, &[v])
    }

    /// Resets the device and waits until it reads back 0 (virtio 1.2, 4.1.4.3.2).
    pub fn reset(&mut self) -> Result<(), TransportError> {
        self.doorbells.clear();
        self.set_status(0)?;
        let start = Instant::now();
        while self.status()? != 0 {
            if start.elapsed() > RESET_TIMEOUT {
                return Err(TransportError::ResetTimeout(RESET_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The 64 feature bits the device offers.
    pub fn device_features(&mut self) -> Result<u64, TransportError> {
        self.write32(common::DEVICE_FEATURE_SELECT, 0)?;
        let lo = self.read32(common::DEVICE_FEATURE)?;
        self.write32(common::DEVICE_FEATURE_SELECT, 1)?;
        let hi = self.read32(common::DEVICE_FEATURE)?;
        Ok(u64::from(lo) | (u64::from(hi) << 32))
    }

    /// Writes the features the driver accepts.
    pub fn set_driver_features(&mut self, f: u64) -> Result<(), TransportError> {
        self.write32(common::DRIVER_FEATURE_SELECT, 0)?;
        self.write32(common::DRIVER_FEATURE, f as u32)?;
        self.write32(common::DRIVER_FEATURE_SELECT, 1)?;
        self.write32(common::DRIVER_FEATURE, (f >> 32) as u32)
    }

    /// Number of queues the device has.
    pub fn num_queues(&mut self) -> Result<u16, TransportError> {
        self.read16(common::NUM_QUEUES)
    }

    /// The maximum size of queue `q` (0: the queue does not exist).
    pub fn queue_max_size(&mut self, q: u16) -> Result<u16, TransportError> {
        self.write16(common::QUEUE_SELECT, q)?;
        self.read16(common::QUEUE_SIZE)
    }

    /// Whether queue `q`'s `queue_enable` reads back non-zero.
    pub fn queue_enabled(&mut self, q: u16) -> Result<bool, TransportError> {
        self.write16(common::QUEUE_SELECT, q)?;
        Ok(self.read16(common::QUEUE_ENABLE)? != 0)
    }

    /// Programs and enables queue `q`.
    pub fn setup_queue(
        &mut self,
        q: u16,
        size: u16,
        rings: (u64, u64, u64),
        msix_vector: u16,
    ) -> Result<(), TransportError> {
        if let Some(d) = self.doorbells.get_mut(usize::from(q)) {
            *d = None;
        }
        self.write16(common::QUEUE_SELECT, q)?;
        self.write16(common::QUEUE_SIZE, size)?;
        for (off, v) in [
            (common::QUEUE_DESC, rings.0),
            (common::QUEUE_DRIVER, rings.1),
            (common::QUEUE_DEVICE, rings.2),
        ] {
            self.write32(off, v as u32)?;
            self.write32(off + 4, (v >> 32) as u32)?;
        }
        self.write16(common::QUEUE_MSIX_VECTOR, msix_vector)?;
        self.write16(common::QUEUE_ENABLE, 1)
    }

    /// Sets the configuration-change MSI-X vector.
    pub fn set_config_vector(&mut self, v: u16) -> Result<(), TransportError> {
        self.write16(common::CONFIG_MSIX_VECTOR, v)
    }

    /// Rings queue `q`'s doorbell.
    pub fn notify(&mut self, q: u16) -> Result<(), TransportError> {
        let n = self.caps.notify;
        let at = match self.doorbells.get(usize::from(q)).copied().flatten() {
            Some(at) => at,
            None => {
                let at = self.doorbell(q)?;
                let i = usize::from(q);
                if self.doorbells.len() <= i {
                    self.doorbells.resize(i + 1, None);
                }
                self.doorbells[i] = Some(at);
                at
            }
        };
        self.pci.bar_write(n.bar, n.offset + at, &q.to_le_bytes())?;
        Ok(())
    }

    /// Reads queue `q`'s `queue_notify_off` and checks the doorbell lies in the notify
    /// region.
    fn doorbell(&mut self, q: u16) -> Result<u64, TransportError> {
        self.write16(common::QUEUE_SELECT, q)?;
        let off = u64::from(self.read16(common::QUEUE_NOTIFY_OFF)?);
        off.checked_mul(u64::from(self.caps.notify_multiplier))
            .filter(|a| a.checked_add(2).is_some_and(|e| e <= self.caps.notify.len))
            .ok_or(TransportError::BadRegister {
                what: "queue_notify_off",
                value: off,
            })
    }

    /// Reads device-specific configuration consistently (retrying while
    /// `config_generation` changes).
    pub fn read_device_config(
        &mut self,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), TransportError> {
        let d = self.caps.device;
        let at = Self::within(d, offset, buf.len(), "device config offset")?;
        for _ in 0..CONFIG_RETRIES {
            let before = self.generation()?;
            // Read in chunks of at most 4 bytes, as registers.
            let mut done = 0;
            while done < buf.len() {
                let n = (buf.len() - done).min(4);
                self.pci
                    .bar_read(d.bar, at + done as u64, &mut buf[done..done + n])?;
                done += n;
            }
            if self.generation()? == before {
                return Ok(());
            }
        }
        Err(TransportError::ConfigUnstable)
    }

    /// The BAR offset of `[offset, offset + len)` inside `region`, checked.
    fn within(
        region: Region,
        offset: u64,
        len: usize,
        what: &'static str,
    ) -> Result<u64, TransportError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= region.len => Ok(region.offset + offset),
            _ => Err(TransportError::BadRegister {
                what,
                value: offset,
            }),
        }
    }

    fn mailbox(&self) -> Result<Region, TransportError> {
        self.caps
            .attest
            .ok_or(TransportError::MissingCapability("attestation mailbox"))
    }

    /// Reads mailbox registers at `offset` (the mailbox must exist).
    pub fn mailbox_read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), TransportError> {
        let m = self.mailbox()?;
        let at = Self::within(m, offset, buf.len(), "mailbox offset")?;
        // Registers are read at most 8 bytes at a time.
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            self.pci.bar_read(m.bar, at + i as u64 * 8, chunk)?;
        }
        Ok(())
    }

    /// Writes a mailbox register (the mailbox must exist).
    pub fn mailbox_write(&mut self, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        let m = self.mailbox()?;
        let at = Self::within(m, offset, data.len(), "mailbox offset")?;
        self.pci.bar_write(m.bar, at, data)?;
        Ok(())
    }

    fn generation(&mut self) -> Result<u8, TransportError> {
        let mut b = [0u8; 1];
        self.common_read(common::CONFIG_GENERATION, &mut b)?;
        Ok(b[0])
    }

    /// Negotiates: reset, ACKNOWLEDGE, DRIVER, features (`wanted` ∩ offered), FEATURES_OK.
    /// Returns `(offered, accepted, device_kept_features_ok)`.
    pub fn negotiate(&mut self, wanted: u64) -> Result<(u64, u64, bool), TransportError> {
        self.reset()?;
        self.set_status(status::ACKNOWLEDGE)?;
        self.set_status(status::ACKNOWLEDGE | status::DRIVER)?;
        let offered = self.device_features()?;
        let accepted = offered & wanted;
        self.set_driver_features(accepted)?;
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.set_status(s)?;
        let ok = self.status()? & status::FEATURES_OK != 0;
        Ok((offered, accepted, ok))
    }

    /// Whether feature bit `f` is in `features`.
    pub fn has(features: u64, f: u32) -> bool {
        features & bit(f) != 0
    }
}

#[cfg(test)]
mod tests {
    use swiotlb_shared::pci::device_layout as dl;

    use crate::testing::fake_device::{FakeConfig, FakeDevice};
    use crate::{BlockDriver, Options};

    /// A device whose common-configuration capability says `len` bytes.
    fn with_common_len(len: u32) -> FakeDevice {
        let mut c = FakeConfig::new(vec![0u8; 1 << 20]);
        // struct virtio_pci_cap: `length` is the le32 at byte 12.
        c.config_patches
            .push((u16::from(dl::CAP_COMMON) + 12, len.to_le_bytes().to_vec()));
        FakeDevice::new(c).unwrap()
    }

    #[test]
    fn a_virtio_1_0_common_configuration_of_56_bytes_is_accepted() {
        let fake = with_common_len(56);
        let mut drv = BlockDriver::open(fake.clone(), &Options::default()).unwrap();
        drv.write_at(0, &[7u8; 4096]).unwrap();
        assert!(fake.disk()[..4096].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_common_configuration_shorter_than_virtio_1_0_is_refused() {
        let err = BlockDriver::open(with_common_len(52), &Options::default())
            .err()
            .map(|e| swiotlb_shared::error_chain(&e))
            .unwrap_or_default();
        assert!(err.contains("below the minimum 56"), "{err}");
    }
}

//! virtio-pci wire structures (virtio 1.2, 4.1.4) and the PCI layout of this project's device.
//!
//! The wire structs are `#[repr(C)]`, little-endian on the wire, plain old data with no
//! padding; each has a size assertion. They are encoded and decoded explicitly with
//! [`VirtioPciCap::to_bytes`] / [`VirtioPciCap::from_bytes`] so no code reinterprets
//! peer bytes in place.

/// The virtio-pci capability type of the SWIOTLB pool (RFC "VIRTIO_F_SWIOTLB", patch 3).
/// Its `bar`, `offset` and `length` describe the whole pool.
pub const VIRTIO_PCI_CAP_SWIOTLB: u8 = 10;

/// Common configuration (virtio 1.2, 4.1.4.3).
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// Notifications (virtio 1.2, 4.1.4.4).
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// ISR status (virtio 1.2, 4.1.4.5).
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// Device-specific configuration (virtio 1.2, 4.1.4.6).
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// PCI configuration access window (virtio 1.2, 4.1.4.9).
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// Vendor-specific data (virtio 1.2, 4.1.4.10).
pub const VIRTIO_PCI_CAP_VENDOR_CFG: u8 = 9;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio-pci device ID base: device ID = 0x1040 + virtio device type.
pub const VIRTIO_PCI_MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// PCI device ID of a modern virtio-blk function (0x1042).
pub const VIRTIO_PCI_DEVICE_ID_BLOCK: u16 = VIRTIO_PCI_MODERN_DEVICE_ID_BASE + VIRTIO_ID_BLOCK;

/// Standard PCI configuration-space offsets and bits (PCI Local Bus 3.0, 6.1).
pub mod cfg {
    /// Vendor ID (u16).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (u16).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (u16).
    pub const COMMAND: u16 = 0x04;
    /// Status register (u16).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (u8).
    pub const REVISION_ID: u16 = 0x08;
    /// Class code: programming interface, subclass, base class (3 bytes).
    pub const CLASS_PROG: u16 = 0x09;
    /// Header type (u8).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First base address register (u32); there are six.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID (u16).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Capabilities pointer (u8).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt line (u8).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (u8).
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// Size of the conventional configuration space this device presents.
    pub const SIZE: usize = 256;

    /// Command register: memory space decode enable.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command register: bus master enable.
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command register: INTx emulation disable.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status register: capabilities list present.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Status register: INTx asserted.
    pub const STATUS_INTERRUPT: u16 = 1 << 3;

    /// BAR bit 0: I/O space (else memory).
    pub const BAR_IO: u32 = 1;
    /// BAR bits 1..2 = 0b10: 64-bit memory BAR.
    pub const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
    /// BAR bit 3: prefetchable.
    pub const BAR_PREFETCHABLE: u32 = 1 << 3;
    /// Mask of the address bits of a memory BAR's low dword.
    pub const BAR_MEM_ADDR_MASK: u32 = !0xf;

    /// Capability ID of a vendor-specific capability (all virtio-pci capabilities).
    pub const CAP_ID_VENDOR: u8 = 0x09;
    /// Capability ID of MSI-X.
    pub const CAP_ID_MSIX: u8 = 0x11;
    /// MSI-X message control: enable.
    pub const MSIX_ENABLE: u16 = 1 << 15;
    /// MSI-X message control: function mask.
    pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest OS has found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u8 = 4;
    /// The driver has acknowledged the features it understands; negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device has experienced an error from which it can't recover.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// Something went wrong in the guest; it has given up on the device.
    pub const FAILED: u8 = 128;
}

/// `struct virtio_pci_cap` (virtio 1.2, 4.1.4). POD, no padding, 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioPciCap {
    /// Generic PCI field: `PCI_CAP_ID_VNDR` (0x09).
    pub cap_vndr: u8,
    /// Generic PCI field: next capability pointer.
    pub cap_next: u8,
    /// Generic PCI field: capability length.
    pub cap_len: u8,
    /// Identifies the structure (`VIRTIO_PCI_CAP_*`).
    pub cfg_type: u8,
    /// Which BAR holds the structure.
    pub bar: u8,
    /// Multiple capabilities of the same type.
    pub id: u8,
    /// Pad to a full dword.
    pub padding: [u8; 2],
    /// Offset of the structure within the BAR.
    pub offset: u32,
    /// Length of the structure, in bytes.
    pub length: u32,
}
const _: () = assert!(core::mem::size_of::<VirtioPciCap>() == 16);

impl VirtioPciCap {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;

    /// Encodes in wire order (little-endian).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0] = self.cap_vndr;
        b[1] = self.cap_next;
        b[2] = self.cap_len;
        b[3] = self.cfg_type;
        b[4] = self.bar;
        b[5] = self.id;
        b[6..8].copy_from_slice(&self.padding);
        b[8..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    /// Decodes from wire order. `None` if `b` is shorter than [`Self::SIZE`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::SIZE] = b.get(..Self::SIZE)?.try_into().ok()?;
        Some(Self {
            cap_vndr: b[0],
            cap_next: b[1],
            cap_len: b[2],
            cfg_type: b[3],
            bar: b[4],
            id: b[5],
            padding: [b[6], b[7]],
            offset: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            length: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        })
    }
}

/// `struct virtio_pci_notify_cap` (virtio 1.2, 4.1.4.4). POD, no padding, 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioPciNotifyCap {
    /// The generic capability header.
    pub cap: VirtioPciCap,
    /// Multiplier for `queue_notify_off`.
    pub notify_off_multiplier: u32,
}
const _: () = assert!(core::mem::size_of::<VirtioPciNotifyCap>() == 20);

impl VirtioPciNotifyCap {
    /// Encoded size in bytes.
    pub const SIZE: usize = 20;

    /// Encodes in wire order (little-endian).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..16].copy_from_slice(&self.cap.to_bytes());
        b[16..].copy_from_slice(&self.notify_off_multiplier.to_le_bytes());
        b
    }

    /// Decodes from wire order. `None` if `b` is shorter than [`Self::SIZE`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let cap = VirtioPciCap::from_bytes(b)?;
        let m = b.get(16..20)?;
        Some(Self {
            cap,
            notify_off_multiplier: u32::from_le_bytes([m[0], m[1], m[2], m[3]]),
        })
    }
}

/// `struct virtio_pci_common_cfg` (virtio 1.2, 4.1.4.3), with `queue_notify_data` and
/// `queue_reset`. POD, no padding, 60 bytes. Only used for its field offsets and size:
/// registers are accessed one field at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioPciCommonCfg {
    /// Selects which 32 bits of `device_feature` are visible (read-write).
    pub device_feature_select: u32,
    /// The selected 32 bits of the device's features (read-only).
    pub device_feature: u32,
    /// Selects which 32 bits of `driver_feature` are written (read-write).
    pub driver_feature_select: u32,
    /// The selected 32 bits of the features the driver accepted (read-write).
    pub driver_feature: u32,
    /// MSI-X vector for configuration change notifications (read-write).
    pub config_msix_vector: u16,
    /// Number of virtqueues (read-only).
    pub num_queues: u16,
    /// Device status (read-write).
    pub device_status: u8,
    /// Configuration atomicity value (read-only).
    pub config_generation: u8,
    /// Queue selector (read-write).
    pub queue_select: u16,
    /// Size of the selected queue (read-write).
    pub queue_size: u16,
    /// MSI-X vector of the selected queue (read-write).
    pub queue_msix_vector: u16,
    /// Ready bit of the selected queue (read-write).
    pub queue_enable: u16,
    /// Notification offset of the selected queue (read-only).
    pub queue_notify_off: u16,
    /// Descriptor table bus address (read-write).
    pub queue_desc: u64,
    /// Driver (available) ring bus address (read-write).
    pub queue_driver: u64,
    /// Device (used) ring bus address (read-write).
    pub queue_device: u64,
    /// Notification data of the selected queue (read-only).
    pub queue_notify_data: u16,
    /// Queue reset (read-write).
    pub queue_reset: u16,
}
const _: () = assert!(core::mem::size_of::<VirtioPciCommonCfg>() == 64);

/// Byte offsets of the common configuration fields (virtio 1.2, 4.1.4.3).
pub mod common {
    /// `device_feature_select` (le32).
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// `device_feature` (le32).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// `driver_feature_select` (le32).
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// `driver_feature` (le32).
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// `config_msix_vector` (le16).
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// `num_queues` (le16).
    pub const NUM_QUEUES: u64 = 0x12;
    /// `device_status` (u8).
    pub const DEVICE_STATUS: u64 = 0x14;
    /// `config_generation` (u8).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// `queue_select` (le16).
    pub const QUEUE_SELECT: u64 = 0x16;
    /// `queue_size` (le16).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// `queue_msix_vector` (le16).
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// `queue_enable` (le16).
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// `queue_notify_off` (le16).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// `queue_desc` (le64).
    pub const QUEUE_DESC: u64 = 0x20;
    /// `queue_driver` (le64).
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// `queue_device` (le64).
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// `queue_notify_data` (le16).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// `queue_reset` (le16).
    pub const QUEUE_RESET: u64 = 0x3a;
    /// Bytes of the structure actually defined (the Rust struct pads to 64).
    pub const LEN: u64 = 0x3c;
    /// Bytes of the virtio 1.0/1.1 structure (up to `queue_device`), the least a driver
    /// that uses neither `queue_notify_data` nor `queue_reset` needs (Linux maps 56 too).
    pub const LEN_1_0: u64 = 0x38;
    /// "No vector" value for MSI-X vector registers.
    pub const NO_VECTOR: u16 = 0xffff;
}

/// Where this project's device places each structure. Both sides use these: the device to
/// build its config space and BAR0, the driver only as defaults in tests (the driver always
/// reads the real locations from the capability list).
pub mod device_layout {
    /// BAR holding the virtio registers (32-bit, non-prefetchable memory).
    pub const REGS_BAR: u8 = 0;
    /// Size of the register BAR.
    pub const REGS_BAR_SIZE: u64 = 0x8000;
    /// Common configuration, within BAR0.
    pub const COMMON_OFFSET: u32 = 0x0000;
    /// Length of the common configuration region (a whole page is reserved).
    pub const COMMON_LEN: u32 = 0x1000;
    /// ISR status byte, within BAR0.
    pub const ISR_OFFSET: u32 = 0x1000;
    /// Length of the ISR region.
    pub const ISR_LEN: u32 = 0x1000;
    /// Device-specific configuration, within BAR0.
    pub const DEVICE_OFFSET: u32 = 0x2000;
    /// Length of the device configuration region.
    pub const DEVICE_LEN: u32 = 0x1000;
    /// Notification doorbells, within BAR0.
    pub const NOTIFY_OFFSET: u32 = 0x3000;
    /// Length of the notification region.
    pub const NOTIFY_LEN: u32 = 0x1000;
    /// Distance between two queues' doorbells.
    pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
    /// MSI-X table, within BAR0.
    pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
    /// MSI-X pending-bit array, within BAR0.
    pub const MSIX_PBA_OFFSET: u32 = 0x5000;
    /// Bytes of one MSI-X table entry.
    pub const MSIX_ENTRY_SIZE: u32 = 16;

    /// BAR holding the SWIOTLB pool (64-bit prefetchable memory; uses BARs 2 and 3).
    pub const POOL_BAR: u8 = 2;

    /// Config-space offset of the first capability.
    pub const CAP_COMMON: u8 = 0x40;
    /// Config-space offset of the notify capability.
    pub const CAP_NOTIFY: u8 = 0x50;
    /// Config-space offset of the ISR capability.
    pub const CAP_ISR: u8 = 0x64;
    /// Config-space offset of the device-config capability.
    pub const CAP_DEVICE: u8 = 0x74;
    /// Config-space offset of the SWIOTLB capability.
    pub const CAP_SWIOTLB: u8 = 0x84;
    /// Config-space offset of the MSI-X capability.
    pub const CAP_MSIX: u8 = 0x94;
    /// Config-space offset of the vendor capability locating the attestation mailbox.
    pub const CAP_ATTEST: u8 = 0xa0;

    /// Attestation mailbox, within BAR0 (see [`super::attest_mailbox`]).
    pub const ATTEST_OFFSET: u32 = 0x6000;
    /// Length of the attestation mailbox region.
    pub const ATTEST_LEN: u32 = 0x100;
}

/// The attestation mailbox: device registers through which the driver proves, with
/// platform evidence, what it negotiated. Located by a `VIRTIO_PCI_CAP_VENDOR_CFG`
/// capability ([`VirtioPciVendorCap`], subtype [`attest_mailbox::CAP_SUBTYPE`]).
/// The evidence itself lives in the pool; the registers only say where.
/// Documented byte by byte in `docs/attestation-gate.md`.
pub mod attest_mailbox {
    /// Vendor capability subtype of the mailbox.
    pub const CAP_SUBTYPE: u8 = 1;
    /// `MAGIC` register value: "SWAT" in little-endian.
    pub const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"SWAT");
    /// Layout version of the mailbox.
    pub const VERSION_VALUE: u32 = 1;

    /// Magic (le32, read-only).
    pub const MAGIC: u64 = 0x00;
    /// Layout version (le32, read-only).
    pub const VERSION: u64 = 0x04;
    /// Gate state (le32, read-only): one of the `STATE_*` values.
    pub const STATE: u64 = 0x08;
    /// Number of reasons of the last rejection (le32, read-only); the reasons themselves
    /// are in the device's findings.
    pub const REASONS: u64 = 0x0c;
    /// Bus address of the evidence in the pool (le64, read-write).
    pub const EVIDENCE_ADDR: u64 = 0x10;
    /// Length of the evidence (le32, read-write).
    pub const EVIDENCE_LEN: u64 = 0x18;
    /// Doorbell (le32, write-only): write [`SUBMIT`] to have the evidence verified.
    pub const DOORBELL: u64 = 0x1c;
    /// The device's nonce, fresh on every reset (32 bytes, read-only).
    pub const NONCE: u64 = 0x20;
    /// The device's instance ID (16 bytes, read-only).
    pub const INSTANCE_ID: u64 = 0x40;
    /// Largest evidence the device accepts (le32, read-only).
    pub const MAX_EVIDENCE_LEN: u64 = 0x50;
    /// Attestation policy in force (le32, read-only): 0 off, 1 required.
    pub const REQUIRED: u64 = 0x54;

    /// Doorbell value that submits the evidence.
    pub const SUBMIT: u32 = 1;
    /// Bytes of the nonce.
    pub const NONCE_LEN: usize = 32;
    /// Bytes of the instance ID.
    pub const INSTANCE_ID_LEN: usize = 16;

    /// No evidence accepted yet: queues are not served.
    pub const STATE_AWAITING: u32 = 0;
    /// Evidence verified: queues are served.
    pub const STATE_ACCEPTED: u32 = 1;
    /// Evidence rejected: the device needs a reset.
    pub const STATE_REJECTED: u32 = 2;
    /// Attestation is off on this device: queues are served without evidence.
    pub const STATE_NOT_REQUIRED: u32 = 3;
}

/// A vendor-specific capability (virtio 1.2, 4.1.4.10) with this project's payload: which
/// structure it locates (`subtype`) and where (`bar`, `offset`, `length`). POD, no padding,
/// 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioPciVendorCap {
    /// Generic PCI field: `PCI_CAP_ID_VNDR`.
    pub cap_vndr: u8,
    /// Generic PCI field: next capability pointer.
    pub cap_next: u8,
    /// Generic PCI field: capability length (16).
    pub cap_len: u8,
    /// `VIRTIO_PCI_CAP_VENDOR_CFG`.
    pub cfg_type: u8,
    /// PCI-SIG vendor ID of whoever defines the payload (0x1af4).
    pub vendor_id: u16,
    /// Which structure: [`attest_mailbox::CAP_SUBTYPE`].
    pub subtype: u8,
    /// BAR holding the structure.
    pub bar: u8,
    /// Offset within the BAR.
    pub offset: u32,
    /// Length in bytes.
    pub length: u32,
}
const _: () = assert!(core::mem::size_of::<VirtioPciVendorCap>() == 16);

impl VirtioPciVendorCap {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;

    /// Encodes in wire order (little-endian).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0] = self.cap_vndr;
        b[1] = self.cap_next;
        b[2] = self.cap_len;
        b[3] = self.cfg_type;
        b[4..6].copy_from_slice(&self.vendor_id.to_le_bytes());
        b[6] = self.subtype;
        b[7] = self.bar;
        b[8..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.length.to_le_bytes());
        b
    }

    /// Decodes from wire order. `None` if `b` is shorter than [`Self::SIZE`].
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::SIZE] = b.get(..Self::SIZE)?.try_into().ok()?;
        Some(Self {
            cap_vndr: b[0],
            cap_next: b[1],
            cap_len: b[2],
            cfg_type: b[3],
            vendor_id: u16::from_le_bytes([b[4], b[5]]),
            subtype: b[6],
            bar: b[7],
            offset: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            length: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_round_trips_little_endian() {
        let cap = VirtioPciCap {
            cap_vndr: cfg::CAP_ID_VENDOR,
            cap_next: 0x50,
            cap_len: 16,
            cfg_type: VIRTIO_PCI_CAP_SWIOTLB,
            bar: 2,
            id: 0,
            padding: [0; 2],
            offset: 0,
            length: 0x0100_0000,
        };
        let b = cap.to_bytes();
        assert_eq!(b[3], 10);
        assert_eq!(&b[12..16], &[0, 0, 0, 1]);
        assert_eq!(VirtioPciCap::from_bytes(&b), Some(cap));
        assert_eq!(VirtioPciCap::from_bytes(&b[..15]), None);
    }

    #[test]
    fn notify_cap_round_trips() {
        let n = VirtioPciNotifyCap {
            cap: VirtioPciCap {
                cfg_type: VIRTIO_PCI_CAP_NOTIFY_CFG,
                ..Default::default()
            },
            notify_off_multiplier: 4,
        };
        assert_eq!(VirtioPciNotifyCap::from_bytes(&n.to_bytes()), Some(n));
        assert_eq!(VirtioPciNotifyCap::from_bytes(&n.to_bytes()[..19]), None);
    }

    #[test]
    fn vendor_cap_round_trips() {
        let v = VirtioPciVendorCap {
            cap_vndr: cfg::CAP_ID_VENDOR,
            cap_len: 16,
            cfg_type: VIRTIO_PCI_CAP_VENDOR_CFG,
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            subtype: attest_mailbox::CAP_SUBTYPE,
            offset: device_layout::ATTEST_OFFSET,
            length: device_layout::ATTEST_LEN,
            ..Default::default()
        };
        let b = v.to_bytes();
        assert_eq!(&b[4..6], &[0xf4, 0x1a]);
        assert_eq!(VirtioPciVendorCap::from_bytes(&b), Some(v));
        assert_eq!(attest_mailbox::MAGIC_VALUE.to_le_bytes(), *b"SWAT");
    }

    #[test]
    fn block_device_id_is_0x1042() {
        assert_eq!(VIRTIO_PCI_DEVICE_ID_BLOCK, 0x1042);
    }
}

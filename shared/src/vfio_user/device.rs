//! Device-level messages: `DEVICE_GET_INFO`, `DEVICE_GET_IRQ_INFO`, `DEVICE_SET_IRQS`,
//! `DEVICE_FEATURE` and the migration data messages.

use super::error::CodecError;
use super::header::to_usize;
use super::limits::{MAX_DATA_XFER_SIZE, MAX_IRQ_SET_COUNT, MAX_IRQ_TYPES, MAX_REGIONS};
use super::wire::{check_argsz, check_limit, expect_len, put_u32, Reader};

/// `vfio_device_info.flags`: the device supports `DEVICE_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `vfio_device_info.flags`: a PCI device (QEMU's vfio-user-pci refuses a device without it).
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// Region indexes of a PCI device (`VFIO_PCI_*_REGION_INDEX`).
pub mod pci_region {
    /// BAR 0; BARs 1-5 follow at 1-5.
    pub const BAR0: u32 = 0;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// Configuration space.
    pub const CONFIG: u32 = 7;
    /// Legacy VGA ranges.
    pub const VGA: u32 = 8;
    /// Number of standard PCI regions. QEMU requires `num_regions >= CONFIG + 1`.
    pub const COUNT: u32 = 9;
}

/// IRQ indexes of a PCI device (`VFIO_PCI_*_IRQ_INDEX`).
pub mod pci_irq {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// AER error notification.
    pub const ERR: u32 = 3;
    /// Device request notification.
    pub const REQ: u32 = 4;
    /// Number of standard PCI IRQ indexes. QEMU requires `num_irqs >= MSIX + 1`.
    pub const COUNT: u32 = 5;
}

/// `vfio_irq_info.flags`: eventfd signalling is supported.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `vfio_irq_info.flags`: MASK/UNMASK actions are supported.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `vfio_irq_info.flags`: the IRQ masks itself when it fires.
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `vfio_irq_info.flags`: vectors cannot be added without disabling the whole index.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `vfio_irq_set.flags`: no data.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `vfio_irq_set.flags`: one boolean byte per interrupt follows.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `vfio_irq_set.flags`: eventfds come as SCM_RIGHTS, one per interrupt (or none, to
/// de-assign).
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `vfio_irq_set.flags`: mask.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `vfio_irq_set.flags`: unmask.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `vfio_irq_set.flags`: trigger.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// `DEVICE_FEATURE` flags: mask of the feature index.
pub const DEVICE_FEATURE_MASK: u32 = 0xffff;
/// `DEVICE_FEATURE` flags: get the feature's data.
pub const DEVICE_FEATURE_GET: u32 = 1 << 16;
/// `DEVICE_FEATURE` flags: set the feature's data.
pub const DEVICE_FEATURE_SET: u32 = 1 << 17;
/// `DEVICE_FEATURE` flags: probe for support.
pub const DEVICE_FEATURE_PROBE: u32 = 1 << 18;

/// `DEVICE_GET_INFO` reply (`struct vfio_device_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// [`DEVICE_FLAGS_RESET`] | [`DEVICE_FLAGS_PCI`].
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ types.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// Encoded size: argsz, flags, num_regions, num_irqs.
    pub const SIZE: usize = 16;

    /// Encodes the reply (argsz = [`Self::SIZE`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        put_u32(&mut out, Self::SIZE as u32);
        put_u32(&mut out, self.flags);
        put_u32(&mut out, self.num_regions);
        put_u32(&mut out, self.num_irqs);
        out
    }

    /// Parses the reply: exactly [`Self::SIZE`] bytes, counts within [`MAX_REGIONS`] and
    /// [`MAX_IRQ_TYPES`].
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::SIZE, "DEVICE_GET_INFO reply")?;
        let mut r = Reader::new(payload, "DEVICE_GET_INFO reply");
        check_argsz(r.u32()?, Self::SIZE)?;
        let info = Self {
            flags: r.u32()?,
            num_regions: r.u32()?,
            num_irqs: r.u32()?,
        };
        check_limit(
            u64::from(info.num_regions),
            u64::from(MAX_REGIONS),
            "num_regions",
        )?;
        check_limit(
            u64::from(info.num_irqs),
            u64::from(MAX_IRQ_TYPES),
            "num_irqs",
        )?;
        Ok(info)
    }
}

/// `DEVICE_GET_IRQ_INFO` reply (`struct vfio_irq_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// `IRQ_INFO_*` flags.
    pub flags: u32,
    /// The IRQ index described.
    pub index: u32,
    /// Number of interrupts of this type.
    pub count: u32,
}

impl IrqInfo {
    /// Encoded size: argsz, flags, index, count.
    pub const SIZE: usize = 16;

    /// Encodes the reply (argsz = [`Self::SIZE`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        put_u32(&mut out, Self::SIZE as u32);
        put_u32(&mut out, self.flags);
        put_u32(&mut out, self.index);
        put_u32(&mut out, self.count);
        out
    }

    /// Parses the reply: exactly [`Self::SIZE`] bytes, count within [`MAX_IRQ_SET_COUNT`].
    pub fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::SIZE, "DEVICE_GET_IRQ_INFO reply")?;
        let mut r = Reader::new(payload, "DEVICE_GET_IRQ_INFO reply");
        check_argsz(r.u32()?, Self::SIZE)?;
        let info = Self {
            flags: r.u32()?,
            index: r.u32()?,
            count: r.u32()?,
        };
        check_limit(
            u64::from(info.count),
            u64::from(MAX_IRQ_SET_COUNT),
            "IRQ count",
        )?;
        Ok(info)
    }
}

/// The action of a `DEVICE_SET_IRQS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// [`IRQ_SET_ACTION_MASK`].
    Mask,
    /// [`IRQ_SET_ACTION_UNMASK`].
    Unmask,
    /// [`IRQ_SET_ACTION_TRIGGER`].
    Trigger,
}

impl IrqAction {
    fn flag(self) -> u32 {
        match self {
            Self::Mask => IRQ_SET_ACTION_MASK,
            Self::Unmask => IRQ_SET_ACTION_UNMASK,
            Self::Trigger => IRQ_SET_ACTION_TRIGGER,
        }
    }
}

/// The data of a `DEVICE_SET_IRQS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqSetData<'a> {
    /// [`IRQ_SET_DATA_NONE`]: act on every interrupt in the range. With count 0 (and start
    /// 0) this disables the whole index.
    None,
    /// [`IRQ_SET_DATA_BOOL`]: one byte per interrupt; act where it is non-zero.
    Bool(&'a [u8]),
    /// [`IRQ_SET_DATA_EVENTFD`]: one eventfd per interrupt arrives as SCM_RIGHTS; none at all
    /// de-assigns the range.
    Eventfd,
}

/// `DEVICE_SET_IRQS` request (`struct vfio_irq_set` plus data). The reply has no payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqSet<'a> {
    /// What to do.
    pub action: IrqAction,
    /// To which interrupts, or with which eventfds.
    pub data: IrqSetData<'a>,
    /// The IRQ index (`pci_irq::*`).
    pub index: u32,
    /// First interrupt of the range.
    pub start: u32,
    /// Number of interrupts in the range.
    pub count: u32,
}

impl<'a> IrqSet<'a> {
    /// Bytes before the data: argsz, flags, index, start, count.
    pub const FIXED_SIZE: usize = 20;

    /// Parses the request: exactly one DATA flag and one ACTION flag and nothing else, count
    /// within [`MAX_IRQ_SET_COUNT`], `start + count` not wrapping, and a payload that is the
    /// fixed part plus `count` bytes for BOOL data, the fixed part alone otherwise.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(payload, "DEVICE_SET_IRQS");
        check_argsz(r.u32()?, Self::FIXED_SIZE)?;
        let flags = r.u32()?;
        let index = r.u32()?;
        let start = r.u32()?;
        let count = r.u32()?;
        let invalid_flags = CodecError::InvalidField {
            what: "SET_IRQS flags",
            value: u64::from(flags),
        };
        let action =
            match flags & (IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER) {
                IRQ_SET_ACTION_MASK => IrqAction::Mask,
                IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
                IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
                _ => return Err(invalid_flags),
            };
        let data_flags = flags & !action.flag();
        check_limit(
            u64::from(count),
            u64::from(MAX_IRQ_SET_COUNT),
            "SET_IRQS count",
        )?;
        if start.checked_add(count).is_none() {
            return Err(CodecError::InvalidField {
                what: "SET_IRQS start + count",
                value: u64::from(start),
            });
        }
        let rest = r.rest();
        let data = match data_flags {
            IRQ_SET_DATA_NONE => IrqSetData::None,
            IRQ_SET_DATA_EVENTFD => IrqSetData::Eventfd,
            IRQ_SET_DATA_BOOL => {
                expect_len(rest, to_usize(count), "SET_IRQS bool data")?;
                IrqSetData::Bool(rest)
            }
            _ => return Err(invalid_flags),
        };
        if !matches!(data, IrqSetData::Bool(_)) {
            expect_len(rest, 0, "SET_IRQS data")?;
        }
        Ok(Self {
            action,
            data,
            index,
            start,
            count,
        })
    }

    /// The wire flags.
    pub fn flags(&self) -> u32 {
        let data = match self.data {
            IrqSetData::None => IRQ_SET_DATA_NONE,
            IrqSetData::Bool(_) => IRQ_SET_DATA_BOOL,
            IrqSetData::Eventfd => IRQ_SET_DATA_EVENTFD,
        };
        data | self.action.flag()
    }

    /// Encodes the request; argsz covers the fixed part and the BOOL data.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        let bools: &[u8] = match self.data {
            IrqSetData::Bool(b) => b,
            _ => &[],
        };
        let len = Self::FIXED_SIZE.saturating_add(bools.len());
        let argsz = u32::try_from(len).map_err(|_| CodecError::LimitExceeded {
            what: "SET_IRQS data length",
            value: u64::try_from(bools.len()).unwrap_or(u64::MAX),
            max: u64::from(MAX_IRQ_SET_COUNT),
        })?;
        let mut out = Vec::with_capacity(len);
        put_u32(&mut out, argsz);
        put_u32(&mut out, self.flags());
        put_u32(&mut out, self.index);
        put_u32(&mut out, self.start);
        put_u32(&mut out, self.count);
        out.extend_from_slice(bools);
        Ok(out)
    }

    /// Whether `n` received file descriptors fit this request: none, or exactly `count`
    /// with EVENTFD data (QEMU sends all-valid or all-invalid runs, so never a mix).
    pub fn accepts_fd_count(&self, n: usize) -> bool {
        n == 0 || (self.data == IrqSetData::Eventfd && n == to_usize(self.count))
    }
}

/// `DEVICE_FEATURE` request or reply (`struct vfio_device_feature` plus data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFeature<'a> {
    /// Request: largest reply payload wanted. Reply: size of the reply payload.
    pub argsz: u32,
    /// Feature index ([`DEVICE_FEATURE_MASK`]) | GET/SET/PROBE.
    pub flags: u32,
    /// Feature-specific data.
    pub data: &'a [u8],
}

impl<'a> DeviceFeature<'a> {
    /// Bytes before the data: argsz, flags.
    pub const FIXED_SIZE: usize = 8;

    /// Parses a request or reply: argsz covering the fixed part; data is what follows.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(payload, "DEVICE_FEATURE");
        let argsz = r.u32()?;
        check_argsz(argsz, Self::FIXED_SIZE)?;
        let flags = r.u32()?;
        Ok(Self {
            argsz,
            flags,
            data: r.rest(),
        })
    }

    /// Encodes argsz, flags and data as they are.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED_SIZE.saturating_add(self.data.len()));
        put_u32(&mut out, self.argsz);
        put_u32(&mut out, self.flags);
        out.extend_from_slice(self.data);
        out
    }

    /// The feature index.
    pub fn feature(&self) -> u32 {
        self.flags & DEVICE_FEATURE_MASK
    }
}

/// `MIG_DATA_READ`/`MIG_DATA_WRITE`: argsz, size and, where the message carries it, data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigData<'a> {
    /// Request: largest reply payload wanted. Reply: size of the reply payload.
    pub argsz: u32,
    /// Bytes of migration data.
    pub size: u32,
    /// The data (`MIG_DATA_WRITE` request, `MIG_DATA_READ` reply); empty otherwise.
    pub data: &'a [u8],
}

impl<'a> MigData<'a> {
    /// Bytes before the data: argsz, size.
    pub const FIXED_SIZE: usize = 8;

    /// Parses a message without data (`MIG_DATA_READ` request): exactly
    /// [`Self::FIXED_SIZE`] bytes, size within [`MAX_DATA_XFER_SIZE`].
    pub fn parse_header_only(payload: &'a [u8]) -> Result<Self, CodecError> {
        expect_len(payload, Self::FIXED_SIZE, "MIG_DATA")?;
        Self::parse_fixed(payload).map(|(m, _)| m)
    }

    /// Parses a message with data: size within [`MAX_DATA_XFER_SIZE`] and equal to the
    /// data length.
    pub fn parse(payload: &'a [u8]) -> Result<Self, CodecError> {
        let (mut m, data) = Self::parse_fixed(payload)?;
        expect_len(data, to_usize(m.size), "MIG_DATA data")?;
        m.data = data;
        Ok(m)
    }

    fn parse_fixed(payload: &'a [u8]) -> Result<(Self, &'a [u8]), CodecError> {
        let mut r = Reader::new(payload, "MIG_DATA");
        let argsz = r.u32()?;
        let size = r.u32()?;
        check_limit(
            u64::from(size),
            u64::from(MAX_DATA_XFER_SIZE),
            "MIG_DATA size",
        )?;
        Ok((
            Self {
                argsz,
                size,
                data: &[],
            },
            r.rest(),
        ))
    }

    /// Encodes argsz, size and the data (if any).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::FIXED_SIZE.saturating_add(self.data.len()));
        put_u32(&mut out, self.argsz);
        put_u32(&mut out, self.size);
        out.extend_from_slice(self.data);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_info_round_trips() {
        let d = DeviceInfo {
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
        };
        let b = d.to_bytes();
        assert_eq!(b.len(), DeviceInfo::SIZE);
        assert_eq!(&b[0..4], &16u32.to_le_bytes());
        assert_eq!(DeviceInfo::parse(&b).unwrap(), d);
        for len in 0..DeviceInfo::SIZE {
            assert!(DeviceInfo::parse(&b[..len]).is_err());
        }
    }

    #[test]
    fn device_info_with_too_many_regions_or_irqs_is_refused() {
        let d = DeviceInfo {
            flags: 0,
            num_regions: MAX_REGIONS + 1,
            num_irqs: 5,
        };
        assert!(matches!(
            DeviceInfo::parse(&d.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
        let d = DeviceInfo {
            flags: 0,
            num_regions: 9,
            num_irqs: u32::MAX,
        };
        assert!(matches!(
            DeviceInfo::parse(&d.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn irq_info_round_trips_and_huge_count_is_refused() {
        let i = IrqInfo {
            flags: IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE,
            index: pci_irq::MSIX,
            count: 3,
        };
        let b = i.to_bytes();
        assert_eq!(b.len(), IrqInfo::SIZE);
        assert_eq!(IrqInfo::parse(&b).unwrap(), i);
        for len in 0..IrqInfo::SIZE {
            assert!(IrqInfo::parse(&b[..len]).is_err());
        }
        let i = IrqInfo {
            count: MAX_IRQ_SET_COUNT + 1,
            ..i
        };
        assert!(matches!(
            IrqInfo::parse(&i.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
    }

    #[test]
    fn irq_set_round_trips_for_every_data_kind() {
        let bools = [1u8, 0, 1];
        for s in [
            IrqSet {
                action: IrqAction::Trigger,
                data: IrqSetData::Eventfd,
                index: pci_irq::MSIX,
                start: 0,
                count: 3,
            },
            IrqSet {
                action: IrqAction::Mask,
                data: IrqSetData::None,
                index: pci_irq::INTX,
                start: 0,
                count: 1,
            },
            IrqSet {
                action: IrqAction::Unmask,
                data: IrqSetData::Bool(&bools),
                index: pci_irq::MSI,
                start: 1,
                count: 3,
            },
            IrqSet {
                action: IrqAction::Trigger,
                data: IrqSetData::None,
                index: pci_irq::MSIX,
                start: 0,
                count: 0,
            },
        ] {
            let b = s.to_bytes().unwrap();
            assert_eq!(IrqSet::parse(&b).unwrap(), s);
            assert_eq!(
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                b.len()
            );
        }
    }

    #[test]
    fn irq_set_truncated_is_refused() {
        let bools = [1u8; 4];
        let s = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::Bool(&bools),
            index: 0,
            start: 0,
            count: 4,
        };
        let b = s.to_bytes().unwrap();
        for len in 0..b.len() {
            assert!(IrqSet::parse(&b[..len]).is_err());
        }
    }

    #[test]
    fn irq_set_huge_count_is_refused_before_looking_at_data() {
        let s = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 0,
            count: u32::MAX,
        };
        let e = IrqSet::parse(&s.to_bytes().unwrap()).unwrap_err();
        assert!(matches!(e, CodecError::LimitExceeded { .. }));
        let s = IrqSet {
            count: MAX_IRQ_SET_COUNT + 1,
            ..s
        };
        assert!(matches!(
            IrqSet::parse(&s.to_bytes().unwrap()),
            Err(CodecError::LimitExceeded { .. })
        ));
        let s = IrqSet {
            start: u32::MAX,
            count: 2,
            ..s
        };
        assert!(matches!(
            IrqSet::parse(&s.to_bytes().unwrap()),
            Err(CodecError::InvalidField { .. })
        ));
    }

    #[test]
    fn irq_set_flags_must_name_one_data_kind_and_one_action() {
        let base = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::None,
            index: 0,
            start: 0,
            count: 1,
        };
        let mut b = base.to_bytes().unwrap();
        for flags in [
            0,
            IRQ_SET_DATA_NONE,
            IRQ_SET_ACTION_TRIGGER,
            IRQ_SET_DATA_NONE | IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK,
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER | 1 << 6,
        ] {
            b[4..8].copy_from_slice(&flags.to_le_bytes());
            assert!(
                matches!(IrqSet::parse(&b), Err(CodecError::InvalidField { .. })),
                "{flags:#x}"
            );
        }
    }

    #[test]
    fn irq_set_without_bool_data_must_not_carry_data() {
        let s = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 0,
            count: 2,
        };
        let mut b = s.to_bytes().unwrap();
        b.extend_from_slice(&[0; 8]);
        assert!(matches!(
            IrqSet::parse(&b),
            Err(CodecError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn irq_set_fd_count_rules() {
        let s = IrqSet {
            action: IrqAction::Trigger,
            data: IrqSetData::Eventfd,
            index: 2,
            start: 0,
            count: 2,
        };
        assert!(s.accepts_fd_count(0) && s.accepts_fd_count(2));
        assert!(!s.accepts_fd_count(1) && !s.accepts_fd_count(3));
        let s = IrqSet {
            data: IrqSetData::None,
            ..s
        };
        assert!(s.accepts_fd_count(0) && !s.accepts_fd_count(2));
    }

    #[test]
    fn device_feature_round_trips() {
        let data = [1u8, 0, 0, 0, 0, 0, 0, 0];
        let f = DeviceFeature {
            argsz: 16,
            flags: DEVICE_FEATURE_GET | 1,
            data: &data,
        };
        let b = f.to_bytes();
        assert_eq!(DeviceFeature::parse(&b).unwrap(), f);
        assert_eq!(f.feature(), 1);
        for len in 0..DeviceFeature::FIXED_SIZE {
            assert!(DeviceFeature::parse(&b[..len]).is_err());
        }
        let f = DeviceFeature {
            argsz: 4,
            flags: 0,
            data: &[],
        };
        assert!(matches!(
            DeviceFeature::parse(&f.to_bytes()),
            Err(CodecError::ArgszTooSmall { .. })
        ));
    }

    #[test]
    fn mig_data_round_trips_and_bounds_size() {
        let r = MigData {
            argsz: 4104,
            size: 4096,
            data: &[],
        };
        assert_eq!(MigData::parse_header_only(&r.to_bytes()).unwrap(), r);
        let w = MigData {
            argsz: 8,
            size: 3,
            data: &[7, 8, 9],
        };
        assert_eq!(MigData::parse(&w.to_bytes()).unwrap(), w);
        let big = MigData {
            argsz: 8,
            size: MAX_DATA_XFER_SIZE + 1,
            data: &[],
        };
        assert!(matches!(
            MigData::parse_header_only(&big.to_bytes()),
            Err(CodecError::LimitExceeded { .. })
        ));
        let short = MigData {
            argsz: 8,
            size: 4,
            data: &[1],
        };
        assert!(MigData::parse(&short.to_bytes()).is_err());
    }
}

//! A PCI function bound to the kernel's `vfio-pci` driver, reached through VFIO: the deployed
//! confidential guest's back end.
//!
//! - The function is named by its sysfs directory (`/sys/bus/pci/devices/<BDF>`). Its IOMMU
//!   group (the `iommu_group` link) must exist, so the guest needs a vIOMMU (QEMU's
//!   `intel-iommu`, guest kernel `intel_iommu=on`); without one the open fails saying so. A
//!   guest with no vIOMMU uses the [`super::sysfs`] back end.
//! - A VFIO container with the type1 (v2) IOMMU back end, the group, and the device fd are
//!   opened through `vfio-ioctls`. **No DMA mapping is ever made**: the device is only ever
//!   given addresses inside its own pool BAR, so the IOMMU domain stays empty and any DMA the
//!   device attempted to guest RAM would fault in the (v)IOMMU.
//! - Configuration space is read and written with `pread`/`pwrite` on the device fd at the
//!   config region's offset, so every failure surfaces as an error naming the region
//!   (`vfio-ioctls`' own region accessors only log failures). `vfio-pci` virtualizes parts of
//!   it; the BAR registers read back as the addresses the kernel assigned, and [`VfioPci::open`]
//!   checks that against the kernel's `resource` file before anything else uses them: the
//!   driver takes the pool's bus address from those registers.
//! - BAR registers and the pool are `mmap`s of the device fd at each BAR region's offset
//!   (`VFIO_REGION_INFO_FLAG_MMAP`, and within a sparse-mmap area when the kernel lists
//!   some). `vfio-pci` maps BARs uncached; each register access is one volatile access of
//!   exactly the width asked (1, 2, 4 or 8 bytes, naturally aligned). A BAR the kernel does
//!   not let user space map has its registers reached with `pread`/`pwrite` instead, and
//!   cannot hold the pool.
//! - Interrupts: [`PciAccess::enable_msix`] gives each MSI-X vector an eventfd with
//!   `VFIO_DEVICE_SET_IRQS`. This matters beyond latency: `vfio-pci` clears Interrupt Disable
//!   when it opens a function and keeps that bit virtual, so a polling driver would leave the
//!   function free to raise INTx, and a VMM that emulates INTx (QEMU under TCG) unmaps the
//!   BARs until it sees it acknowledged. With MSI-X enabled the function never uses INTx. A
//!   function without MSI-X gets `None` (the driver polls).
//!
//! The host is hostile, and what VFIO reports comes from it (region sizes and offsets,
//! capability chains, configuration bytes): every value is checked before use, and every
//! failure is a [`PciError`] naming the ioctl, region or file. Nothing here panics on them.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use swiotlb_shared::pci::cfg;
use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_io_nr;

use super::discovery::{self, bdf_of, check_function_dir, BarResource, NUM_BARS};
use super::pool_map::{self, PoolMapMode, PoolMemoryType};
use super::{
    check_config_range, check_virtio_blk, mmio_read, mmio_write, page_size, PciAccess, PciError,
    RegisterAccess, MAX_CONFIG_SIZE,
};
use crate::pool::{Mapping, PoolAccessError};

/// The kernel driver a function must be bound to for this back end.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";
/// Where the VFIO container device lives.
const CONTAINER_PATH: &str = "/dev/vfio/vfio";
/// Bytes offered to `VFIO_DEVICE_GET_REGION_INFO`: a BAR's info with its capabilities is a
/// few dozen bytes (header 32, a sparse-mmap capability 16 + 16 per area).
const REGION_INFO_BYTES: usize = 4096;
/// Size of `struct vfio_region_info` (the fixed part).
const REGION_INFO_HEADER: usize = 32;
/// Capabilities followed in one region's chain at most (the kernel chains two or three).
const MAX_REGION_CAPS: usize = 16;
/// Sparse-mmap areas accepted in one region (`vfio-pci` lists one or two: the BAR around its
/// MSI-X table).
const MAX_SPARSE_AREAS: u32 = 64;
/// MSI-X vectors asked for at most (the driver asks for two; PCI allows 2048).
const MAX_MSIX_VECTORS: u16 = 2048;

ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);

/// One VFIO region as `VFIO_DEVICE_GET_REGION_INFO` describes it, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region is absent).
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite and mmap).
    pub offset: u64,
    /// The areas user space may map, `(offset, size)` within the region, when the kernel
    /// gave a sparse-mmap capability; `None` when the whole region may be mapped.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// The kernel said the MSI-X table in this region may be mapped too.
    pub msix_mappable: bool,
}

impl RegionInfo {
    /// Whether `[offset, offset + len)` of the region may be mmapped.
    pub fn can_map(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if self.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || len == 0 || end > self.size {
            return false;
        }
        match &self.sparse {
            None => true,
            Some(areas) => areas
                .iter()
                .any(|&(o, s)| o <= offset && o.checked_add(s).is_some_and(|e| end <= e)),
        }
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses what `VFIO_DEVICE_GET_REGION_INFO` wrote for region `index` into `bytes` (the
/// `struct vfio_region_info`, then its capability chain when `VFIO_REGION_INFO_FLAG_CAPS`
/// is set). Strict: the index must be the one asked, the region must fit the 64-bit file
/// offsets, the chain must stay inside the bytes, move forward, and be short; sparse areas
/// must lie inside the region.
pub fn parse_region_info(index: u32, bytes: &[u8]) -> Result<RegionInfo, String> {
    let short = || {
        format!(
            "{} bytes, less than the 32 of vfio_region_info",
            bytes.len()
        )
    };
    let argsz = le_u32(bytes, 0).ok_or_else(short)?;
    let flags = le_u32(bytes, 4).ok_or_else(short)?;
    let got = le_u32(bytes, 8).ok_or_else(short)?;
    let cap_offset = le_u32(bytes, 12).ok_or_else(short)?;
    let size = le_u64(bytes, 16).ok_or_else(short)?;
    let offset = le_u64(bytes, 24).ok_or_else(short)?;
    if got != index {
        return Err(format!("answered for region {got}, not {index}"));
    }
    if offset
        .checked_add(size)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(format!(
            "region of {size:#x} bytes at fd offset {offset:#x} overflows a file offset"
        ));
    }
    let mut info = RegionInfo {
        flags,
        size,
        offset,
        sparse: None,
        msix_mappable: false,
    };
    if flags & VFIO_REGION_INFO_FLAG_CAPS == 0 || cap_offset == 0 {
        return Ok(info);
    }
    if argsz as usize > bytes.len() {
        return Err(format!(
            "the capabilities need {argsz} bytes, {} were offered",
            bytes.len()
        ));
    }
    let caps = &bytes[..argsz as usize];
    let mut at = cap_offset as usize;
    let mut hops = 0;
    while at != 0 {
        hops += 1;
        if hops > MAX_REGION_CAPS {
            return Err(format!("more than {MAX_REGION_CAPS} capabilities"));
        }
        if at < REGION_INFO_HEADER || at % 4 != 0 {
            return Err(format!(
                "capability at byte {at}, inside the header or unaligned"
            ));
        }
        let (Some(id), Some(next)) = (le_u16(caps, at), le_u32(caps, at + 4)) else {
            return Err(format!(
                "capability header at byte {at} runs past the {argsz} bytes"
            ));
        };
        match u32::from(id) {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let nr = le_u32(caps, at + 8)
                    .ok_or_else(|| format!("sparse-mmap capability at byte {at} is cut short"))?;
                if nr > MAX_SPARSE_AREAS {
                    return Err(format!(
                        "{nr} sparse-mmap areas, more than the {MAX_SPARSE_AREAS} accepted"
                    ));
                }
                let mut areas = Vec::with_capacity(nr as usize);
                for i in 0..nr as usize {
                    let a = at + 16 + i * 16;
                    let (Some(o), Some(s)) = (le_u64(caps, a), le_u64(caps, a + 8)) else {
                        return Err(format!("sparse-mmap area {i} runs past the {argsz} bytes"));
                    };
                    if o.checked_add(s).is_none_or(|e| e > size) {
                        return Err(format!(
                            "sparse-mmap area {i} [{o:#x}, +{s:#x}) lies outside the {size:#x}-byte region"
                        ));
                    }
                    if s != 0 {
                        areas.push((o, s));
                    }
                }
                info.sparse = Some(areas);
            }
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => info.msix_mappable = true,
            // Region types (vendor regions) and others: not used by this back end.
            _ => {}
        }
        let next = next as usize;
        if next != 0 && next <= at {
            return Err(format!(
                "capability chain goes back from byte {at} to {next}"
            ));
        }
        at = next;
    }
    Ok(info)
}

/// The IOMMU group number of the function in `dir`, from its `iommu_group` link
/// (`../../../kernel/iommu_groups/<N>`).
pub fn iommu_group(dir: &Path) -> Result<u32, PciError> {
    let link = dir.join("iommu_group");
    let target = match fs::read_link(&link) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(PciError::NoIommuGroup {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(PciError::Sysfs {
                path: link,
                what: "reading the link".into(),
                source,
            })
        }
    };
    target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| PciError::SysfsInvalid {
            path: link,
            why: format!(
                "points at {:?}, not an IOMMU group number",
                discovery::excerpt(&target.to_string_lossy())
            ),
        })
}

/// Checks what must hold before VFIO is asked for the function in `dir`, so each failure
/// says what to do: a directory, an IOMMU group, bound to `vfio-pci`. Returns the group.
pub fn check_function(dir: &Path) -> Result<u32, PciError> {
    check_function_dir(dir)?;
    let group = iommu_group(dir)?;
    match discovery::bound_driver(dir) {
        Some(d) if d == VFIO_PCI_DRIVER => Ok(group),
        driver => Err(PciError::NotVfioBound {
            path: dir.to_path_buf(),
            bdf: bdf_of(dir),
            driver,
        }),
    }
}

/// A PCI function driven through kernel VFIO.
pub struct VfioPci {
    dir: PathBuf,
    bdf: String,
    group: u32,
    config: RegionInfo,
    config_size: u64,
    /// Each BAR's region (size 0: absent).
    bars: [RegionInfo; NUM_BARS],
    /// The kernel's record of each BAR (sysfs `resource`), checked against `bars` and the
    /// BAR registers at open.
    resources: [BarResource; NUM_BARS],
    /// Each BAR's register mapping, made at its first register access (`None` also when
    /// the BAR cannot be mapped: its registers then go through pread/pwrite).
    maps: [Option<Mapping>; NUM_BARS],
    msix_enabled: bool,
    /// How the pool is to be mapped ([`with_pool_map`](Self::with_pool_map)).
    pool_map: PoolMapMode,
    /// How it was.
    pool_memory: Option<PoolMemoryType>,
    /// Dropped by hand (see `Drop`): the wrapper's own drop panics if the function's
    /// `iommu_group` link has gone (hot unplug), which is the host's to cause.
    device: ManuallyDrop<VfioDevice>,
    /// Kept for the device's life (the device holds its own reference too).
    _container: Arc<VfioContainer>,
}

impl std::fmt::Debug for VfioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPci")
            .field("dir", &self.dir)
            .field("group", &self.group)
            .field("config", &self.config)
            .field("bars", &self.bars)
            .field("resources", &self.resources)
            .field("msix_enabled", &self.msix_enabled)
            .finish_non_exhaustive()
    }
}

fn vfio_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PciError {
    let what = what.into();
    move |source| PciError::Vfio { what, source }
}

fn open_err(what: impl Into<String>) -> impl FnOnce(VfioError) -> PciError {
    let what = what.into();
    move |source| PciError::VfioOpen { what, source }
}

/// Runs `f` on `fd` seen as a `File`, without ever closing it.
fn as_file<R>(fd: BorrowedFd<'_>, f: impl FnOnce(&File) -> R) -> R {
    // SAFETY: `fd` is open for the whole call (it is borrowed), and the `File` is never
    // dropped, so it never closes a descriptor it does not own.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    f(&file)
}

/// `pread` of exactly `buf.len()` bytes at `offset` of `fd` (std's `read_exact_at`: retried
/// on EINTR, a short file is `UnexpectedEof`).
fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    as_file(fd, |f| f.read_exact_at(buf, offset))
}

/// `pwrite` of all of `data` at `offset` of `fd` (std's `write_all_at`).
fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    as_file(fd, |f| f.write_all_at(data, offset))
}

/// Asks the kernel about region `index` of the device `fd`.
fn region_info(fd: BorrowedFd<'_>, index: u32, bdf: &str) -> Result<RegionInfo, PciError> {
    // u64s, so the buffer is aligned for the struct's u64 fields.
    let mut buf = vec![0u64; REGION_INFO_BYTES / 8];
    buf[0] = u64::from(REGION_INFO_BYTES as u32);
    buf[1] = u64::from(index);
    let what = || format!("VFIO_DEVICE_GET_REGION_INFO (region {index}) of {bdf}");
    // SAFETY: the kernel writes at most `argsz` (the buffer's length) bytes into the buffer,
    // which lives across the call; the result is checked.
    let ret = unsafe {
        ioctl_with_mut_ptr(
            &fd,
            VFIO_DEVICE_GET_REGION_INFO(),
            buf.as_mut_ptr().cast::<u8>(),
        )
    };
    if ret < 0 {
        return Err(vfio_err(what())(std::io::Error::last_os_error()));
    }
    let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    parse_region_info(index, &bytes).map_err(|why| PciError::VfioInvalid { what: what(), why })
}

impl VfioPci {
    /// Opens the function whose sysfs directory is `dir` (`/sys/bus/pci/devices/<BDF>`):
    /// checks its IOMMU group and that `vfio-pci` owns it, opens the container (type1),
    /// group and device, checks it is a modern virtio-blk function (1af4:1042), reads its
    /// regions, checks each BAR region's size and each BAR register's address against the
    /// kernel's `resource` file, and turns on memory decode and bus mastering.
    /// Asks for the pool to be mapped as `mode` says (the default is the BAR's own
    /// mapping: `/dev/mem` only when asked). With `/dev/mem`, the pool BAR is never touched
    /// through VFIO, so vfio-pci never claims its range (which `IO_STRICT_DEVMEM` would make
    /// revoke the mapping).
    pub fn with_pool_map(mut self, mode: PoolMapMode) -> Self {
        self.pool_map = mode;
        self
    }

    pub fn open(dir: &Path) -> Result<Self, PciError> {
        let group = check_function(dir)?;
        let bdf = bdf_of(dir);
        if !Path::new(CONTAINER_PATH).exists() {
            return Err(PciError::Vfio {
                what: format!(
                    "no {CONTAINER_PATH}: load the vfio and vfio_iommu_type1 modules (and vfio-pci)"
                ),
                source: std::io::Error::from(ErrorKind::NotFound),
            });
        }
        let container = Arc::new(VfioContainer::new(None).map_err(open_err(format!(
            "opening the VFIO container {CONTAINER_PATH} with the type1v2 IOMMU"
        )))?);
        let device = VfioDevice::new(dir, container.clone(), false).map_err(open_err(format!(
            "opening {bdf} through VFIO group {group} (/dev/vfio/{group}; every function of the group must be bound to vfio-pci or to no driver)"
        )))?;
        let mut me = Self {
            dir: dir.to_path_buf(),
            bdf,
            group,
            config: RegionInfo::default(),
            config_size: 0,
            bars: Default::default(),
            resources: [BarResource::default(); NUM_BARS],
            maps: std::array::from_fn(|_| None),
            pool_map: PoolMapMode::Bar,
            pool_memory: None,
            msix_enabled: false,
            device: ManuallyDrop::new(device),
            _container: container,
        };
        me.config = region_info(me.fd(), VFIO_PCI_CONFIG_REGION_INDEX, &me.bdf)?;
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if me.config.flags & rw != rw || me.config.size < cfg::SIZE as u64 {
            return Err(PciError::VfioInvalid {
                what: format!("config region of {}", me.bdf),
                why: format!(
                    "{} bytes, flags {:#x}: not a readable and writable space of at least 256 bytes",
                    me.config.size, me.config.flags
                ),
            });
        }
        me.config_size = me.config.size.min(MAX_CONFIG_SIZE);
        let dir = me.dir.clone();
        check_virtio_blk(&mut me, &dir)?;
        me.resources = discovery::read_resources(&me.dir)?;
        for i in 0..NUM_BARS as u32 {
            me.bars[i as usize] = region_info(me.fd(), i, &me.bdf)?;
        }
        me.check_bars()?;
        let mut c = [0u8; 2];
        me.config_read(cfg::COMMAND, &mut c)?;
        let command = u16::from_le_bytes(c);
        let wanted = command | cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER;
        if wanted != command {
            me.config_write(cfg::COMMAND, &wanted.to_le_bytes())?;
            me.config_read(cfg::COMMAND, &mut c)?;
            let now = u16::from_le_bytes(c);
            if now & cfg::COMMAND_MEMORY == 0 {
                return Err(PciError::VfioInvalid {
                    what: format!("command register of {}", me.bdf),
                    why: format!(
                        "memory decode did not turn on (wrote {wanted:#06x}, reads {now:#06x})"
                    ),
                });
            }
        }
        Ok(me)
    }

    /// The function's sysfs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The function's IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// BAR `bar`'s VFIO region (`None` past BAR 5).
    pub fn region(&self, bar: u8) -> Option<&RegionInfo> {
        self.bars.get(usize::from(bar))
    }

    /// BAR `bar` as the kernel's `resource` file described it at open (`None` past BAR 5).
    pub fn resource(&self, bar: u8) -> Option<BarResource> {
        self.resources.get(usize::from(bar)).copied()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the device fd is owned by `self.device`, which lives (and keeps it open)
        // as long as `self`, so for the borrow's lifetime.
        unsafe { BorrowedFd::borrow_raw(self.device.as_raw_fd()) }
    }

    /// Each BAR region's size must be the kernel's, and each assigned memory BAR's registers
    /// must hold the address the kernel assigned: the driver reads the pool's bus address from
    /// those registers, and a wrong one would put every ring address outside the pool.
    fn check_bars(&mut self) -> Result<(), PciError> {
        let resource = self.dir.join("resource");
        for bar in 0..NUM_BARS as u8 {
            let (r, region) = (
                self.resources[usize::from(bar)],
                &self.bars[usize::from(bar)],
            );
            if region.size != r.size {
                return Err(PciError::VfioInvalid {
                    what: format!("BAR {bar} region of {}", self.bdf),
                    why: format!(
                        "{:#x} bytes, the kernel's {} says {:#x}",
                        region.size,
                        resource.display(),
                        r.size
                    ),
                });
            }
            if !r.is_memory() || !r.is_assigned() {
                continue;
            }
            let at = cfg::BAR0 + u16::from(bar) * 4;
            let mut lo = [0u8; 4];
            self.config_read(at, &mut lo)?;
            let lo = u32::from_le_bytes(lo);
            let mut addr = u64::from(lo & cfg::BAR_MEM_ADDR_MASK);
            if lo & (0b11 << 1) == cfg::BAR_MEM_TYPE_64 && bar < 5 {
                let mut hi = [0u8; 4];
                self.config_read(at + 4, &mut hi)?;
                addr |= u64::from(u32::from_le_bytes(hi)) << 32;
            }
            if lo & cfg::BAR_IO != 0 || addr != r.start {
                return Err(PciError::BarMismatch {
                    bar,
                    config: addr,
                    kernel: r.start,
                    resource: resource.clone(),
                });
            }
        }
        Ok(())
    }

    fn config_range(&self, what: &str, offset: u16, len: usize) -> Result<(), PciError> {
        check_config_range(what, offset, len, self.config_size)
    }

    /// Checks a register access of `len` bytes at `offset` of BAR `bar`; returns the BAR's
    /// mapping (made now if this is its first access), or `None` when the BAR cannot be
    /// mapped and the access goes through the device fd.
    fn register(&mut self, access: RegisterAccess) -> Result<Option<&Mapping>, PciError> {
        let RegisterAccess { bar, write, .. } = access;
        access.check_width()?;
        let i = usize::from(bar);
        // Plain values, no clone: this runs for every register access (doorbells included).
        let (size, flags, region_offset, whole, r) = match (self.bars.get(i), self.resources.get(i))
        {
            (Some(g), Some(r)) => (g.size, g.flags, g.offset, g.can_map(0, g.size), *r),
            _ => return Err(access.refuse("there are only BARs 0 to 5")),
        };
        access.check_bar(&r, size)?;
        let rw = if write {
            VFIO_REGION_INFO_FLAG_WRITE
        } else {
            VFIO_REGION_INFO_FLAG_READ
        };
        if flags & rw == 0 {
            return Err(access.refuse("VFIO does not allow it on this region"));
        }
        if !whole {
            return Ok(None);
        }
        if self.maps[i].is_none() {
            let map = self.map_region(bar, region_offset, 0, size)?;
            self.maps[i] = Some(map);
        }
        Ok(self.maps[i].as_ref())
    }

    /// Maps `[offset, offset + len)` of BAR `bar`'s region, which starts at `region_offset`
    /// of the device fd.
    fn map_region(
        &self,
        bar: u8,
        region_offset: u64,
        offset: u64,
        len: u64,
    ) -> Result<Mapping, PciError> {
        let n = usize::try_from(len).map_err(|_| PciError::NotMappable {
            bar,
            why: format!("{len:#x} bytes do not fit the address space"),
        })?;
        let at = region_offset
            .checked_add(offset)
            .ok_or_else(|| PciError::NotMappable {
                bar,
                why: format!("offset {offset:#x} overflows the region's"),
            })?;
        Mapping::shared(self.fd(), at, n).map_err(|e| {
            let source = match e {
                PoolAccessError::Map(io) => io,
                other => std::io::Error::other(other.to_string()),
            };
            PciError::Vfio {
                what: format!(
                    "mmap of {len:#x} bytes at offset {offset:#x} of BAR {bar} of {} (device fd offset {at:#x})",
                    self.bdf
                ),
                source,
            }
        })
    }

    /// Turns MSI-X off (best effort: the kernel does it too when the device fd closes).
    fn disable_msix(&mut self) {
        if !self.msix_enabled {
            return;
        }
        let mut set = [0u32; 5];
        set[0] = 20;
        set[1] = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
        set[2] = VFIO_PCI_MSIX_IRQ_INDEX;
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

impl Drop for VfioPci {
    fn drop(&mut self) {
        self.disable_msix();
        for m in &mut self.maps {
            *m = None;
        }
        // The wrapper's drop looks the group up again through the `iommu_group` link and
        // panics if it cannot; when the link no longer names our group the device is left
        // open for the process's exit to close.
        if iommu_group(&self.dir).ok() == Some(self.group) {
            // SAFETY: dropped exactly once, here, and never used after.
            unsafe { ManuallyDrop::drop(&mut self.device) };
        } else {
            tracing::warn!(
                dir = %self.dir.display(),
                group = self.group,
                "the function's IOMMU group is gone: the VFIO device stays open until exit"
            );
        }
    }
}

impl PciAccess for VfioPci {
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.config_range("config read", offset, buf.len())?;
        pread_exact(self.fd(), buf, self.config.offset + u64::from(offset)).map_err(vfio_err(
            format!(
                "reading {} bytes at {offset:#x} of the VFIO config region of {}",
                buf.len(),
                self.bdf
            ),
        ))
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.config_range("config write", offset, data.len())?;
        pwrite_all(self.fd(), data, self.config.offset + u64::from(offset)).map_err(vfio_err(
            format!(
                "writing {} bytes at {offset:#x} of the VFIO config region of {}",
                data.len(),
                self.bdf
            ),
        ))
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        let access = RegisterAccess::read(bar, offset, buf.len());
        if let Some(map) = self.register(access)? {
            return mmio_read(map, offset, buf).map_err(|why| access.refuse(why));
        }
        // `register` checked the range inside the region, which fits a file offset.
        let at = self.bars[usize::from(bar)].offset + offset;
        pread_exact(self.fd(), buf, at).map_err(vfio_err(format!(
            "reading {} bytes at {offset:#x} of BAR {bar} of {}",
            buf.len(),
            self.bdf
        )))
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        let access = RegisterAccess::write(bar, offset, data.len());
        if let Some(map) = self.register(access)? {
            return mmio_write(map, offset, data).map_err(|why| access.refuse(why));
        }
        let at = self.bars[usize::from(bar)].offset + offset;
        pwrite_all(self.fd(), data, at).map_err(vfio_err(format!(
            "writing {} bytes at {offset:#x} of BAR {bar} of {}",
            data.len(),
            self.bdf
        )))
    }

    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError> {
        Ok(self.bars.get(usize::from(bar)).map_or(0, |r| r.size))
    }

    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        let not = |why: String| PciError::NotMappable { bar, why };
        let i = usize::from(bar);
        let (region, r) = match (self.bars.get(i), self.resources.get(i)) {
            (Some(region), Some(r)) => (region.clone(), *r),
            _ => return Err(not("there are only BARs 0 to 5".into())),
        };
        if region.size == 0 {
            return Err(not("the BAR is unused".into()));
        }
        if !r.is_memory() {
            return Err(not("not a memory BAR".into()));
        }
        if !r.is_assigned() {
            return Err(not("the kernel did not assign the BAR an address".into()));
        }
        if len == 0 {
            return Err(not("empty range".into()));
        }
        let page = page_size();
        if offset % page != 0 || region.offset % page != 0 {
            return Err(not(format!(
                "offset {offset:#x} (region at fd offset {:#x}) is not a multiple of the {page}-byte page",
                region.offset
            )));
        }
        if offset.checked_add(len).is_none_or(|end| end > region.size) {
            return Err(not(format!(
                "[{offset:#x}, +{len:#x}) lies outside the BAR's {:#x} bytes",
                region.size
            )));
        }
        if !region.can_map(offset, len) {
            return Err(not(format!(
                "VFIO does not let user space map [{offset:#x}, +{len:#x}) (region flags {:#x}, mmap areas {:?})",
                region.flags, region.sparse
            )));
        }
        let phys = r
            .start
            .checked_add(offset)
            .ok_or_else(|| not("address overflows".into()))?;
        let (m, kind) = pool_map::map_pool(
            self.pool_map,
            phys,
            len,
            &mut [(PoolMemoryType::Uncached, &mut || {
                self.map_region(bar, region.offset, offset, len)
            })],
        )?;
        self.pool_memory = Some(kind);
        Ok(m)
    }

    fn pool_memory_type(&self) -> Option<PoolMemoryType> {
        self.pool_memory
    }

    fn enable_msix(&mut self, count: u16) -> Result<Option<Vec<OwnedFd>>, PciError> {
        let have = self
            .device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count);
        if have == 0 {
            return Ok(None);
        }
        if count == 0 || count > MAX_MSIX_VECTORS || u32::from(count) > have {
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
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            VFIO_PCI_MSIX_IRQ_INDEX,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake_sysfs::function;

    /// A region info as the kernel writes it: header, then `caps` (each `(id, body)`,
    /// chained in order, 8-byte aligned).
    fn info(index: u32, flags: u32, size: u64, offset: u64, caps: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; REGION_INFO_HEADER];
        let mut chain = Vec::new();
        let mut at = REGION_INFO_HEADER;
        for (i, (id, body)) in caps.iter().enumerate() {
            let len = (8 + body.len()).next_multiple_of(8);
            let next = if i + 1 == caps.len() { 0 } else { at + len };
            let mut c = Vec::new();
            c.extend_from_slice(&id.to_le_bytes());
            c.extend_from_slice(&1u16.to_le_bytes());
            c.extend_from_slice(&(next as u32).to_le_bytes());
            c.extend_from_slice(body);
            c.resize(len, 0);
            chain.extend(c);
            at += len;
        }
        let flags = if caps.is_empty() {
            flags
        } else {
            flags | VFIO_REGION_INFO_FLAG_CAPS
        };
        let cap_offset = if caps.is_empty() {
            0
        } else {
            REGION_INFO_HEADER as u32
        };
        b[0..4].copy_from_slice(&((REGION_INFO_HEADER + chain.len()) as u32).to_le_bytes());
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..12].copy_from_slice(&index.to_le_bytes());
        b[12..16].copy_from_slice(&cap_offset.to_le_bytes());
        b[16..24].copy_from_slice(&size.to_le_bytes());
        b[24..32].copy_from_slice(&offset.to_le_bytes());
        b.extend(chain);
        b
    }

    fn sparse(areas: &[(u64, u64)]) -> (u16, Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&(areas.len() as u32).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for (o, s) in areas {
            body.extend_from_slice(&o.to_le_bytes());
            body.extend_from_slice(&s.to_le_bytes());
        }
        (VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16, body)
    }

    const RWM: u32 =
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;

    #[test]
    fn region_info_without_capabilities() {
        let r = parse_region_info(2, &info(2, RWM, 16 << 20, 2 << 40, &[])).unwrap();
        assert_eq!(
            r,
            RegionInfo {
                flags: RWM,
                size: 16 << 20,
                offset: 2 << 40,
                sparse: None,
                msix_mappable: false
            }
        );
        assert!(r.can_map(0, 16 << 20));
        assert!(r.can_map(4096, 4096));
        assert!(!r.can_map(0, (16 << 20) + 1), "past the end");
        assert!(!r.can_map(0, 0), "empty");
        assert!(!r.can_map(u64::MAX, 2), "overflow");
        let ro = parse_region_info(0, &info(0, VFIO_REGION_INFO_FLAG_READ, 4096, 0, &[])).unwrap();
        assert!(!ro.can_map(0, 4096), "no MMAP flag");
    }

    #[test]
    fn region_info_with_sparse_areas_and_msix_mappable() {
        let bytes = info(
            0,
            RWM,
            0x8000,
            0,
            &[
                sparse(&[(0, 0x4000), (0x6000, 0x2000), (0x7000, 0)]),
                (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16, vec![]),
                (2, vec![0; 8]), // a region type: ignored
            ],
        );
        let r = parse_region_info(0, &bytes).unwrap();
        assert_eq!(r.sparse, Some(vec![(0, 0x4000), (0x6000, 0x2000)]));
        assert!(r.msix_mappable);
        assert!(r.can_map(0, 0x4000));
        assert!(r.can_map(0x6000, 0x1000));
        assert!(!r.can_map(0x4000, 0x1000), "the MSI-X table page");
        assert!(!r.can_map(0, 0x8000), "not the whole BAR");
        assert!(!r.can_map(0x3000, 0x4000), "straddles two areas");
    }

    #[test]
    fn region_info_refuses_nonsense() {
        let good = info(0, RWM, 0x8000, 0, &[sparse(&[(0, 0x4000)])]);
        assert!(parse_region_info(0, &good).is_ok());
        assert!(parse_region_info(1, &good)
            .unwrap_err()
            .contains("region 0"));
        assert!(parse_region_info(0, &good[..31])
            .unwrap_err()
            .contains("less than"));
        // Past 64-bit file offsets.
        let e = parse_region_info(0, &info(0, RWM, 2, i64::MAX as u64, &[])).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let e = parse_region_info(0, &info(0, RWM, u64::MAX, 1, &[])).unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        // An area outside the region.
        let e = parse_region_info(0, &info(0, RWM, 0x8000, 0, &[sparse(&[(0x7000, 0x2000)])]))
            .unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = parse_region_info(0, &info(0, RWM, 0x8000, 0, &[sparse(&[(u64::MAX, 2)])]))
            .unwrap_err();
        assert!(e.contains("outside"), "{e}");
        // More areas than accepted.
        let many: Vec<(u64, u64)> = (0..65).map(|i| (i * 16, 16)).collect();
        let e = parse_region_info(0, &info(0, RWM, 0x8000, 0, &[sparse(&many)])).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        // An area count that runs past the bytes.
        let mut b = good.clone();
        b[REGION_INFO_HEADER + 8..REGION_INFO_HEADER + 12].copy_from_slice(&3u32.to_le_bytes());
        assert!(parse_region_info(0, &b).unwrap_err().contains("runs past"));
        // argsz larger than what was offered.
        let mut b = good.clone();
        b[0..4].copy_from_slice(&10_000u32.to_le_bytes());
        assert!(parse_region_info(0, &b).unwrap_err().contains("need"));
        // A chain that loops, points into the header, or is unaligned.
        for (cap_offset, next) in [(32u32, 32u32), (8, 0), (34, 0)] {
            let mut b = good.clone();
            b[12..16].copy_from_slice(&cap_offset.to_le_bytes());
            b[REGION_INFO_HEADER + 4..REGION_INFO_HEADER + 8].copy_from_slice(&next.to_le_bytes());
            assert!(
                parse_region_info(0, &b).is_err(),
                "cap at {cap_offset}, next {next}"
            );
        }
        // A capability header past the end.
        let mut b = good.clone();
        b[12..16].copy_from_slice(&((good.len() - 4) as u32).to_le_bytes());
        assert!(parse_region_info(0, &b).unwrap_err().contains("runs past"));
    }

    #[test]
    fn region_info_parsing_never_panics_on_garbage() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..200usize {
            let mut b = vec![0u8; len];
            for v in b.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x as u8;
            }
            if len >= 16 {
                // Make the caps walk happen now and then.
                b[4] |= VFIO_REGION_INFO_FLAG_CAPS as u8;
                b[12] = 32;
                b[13..16].fill(0);
                b[8..12].copy_from_slice(&0u32.to_le_bytes());
            }
            let _ = parse_region_info(0, &b);
        }
    }

    #[test]
    fn a_function_without_an_iommu_group_says_to_boot_with_a_viommu() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), None, Some("vfio-pci"));
        let e = check_function(&dir).unwrap_err();
        assert!(matches!(e, PciError::NoIommuGroup { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("no IOMMU group: boot with a vIOMMU (intel_iommu=on")
                && msg.contains("0000:00:04.0"),
            "{msg}"
        );
        // Opening says the same, before touching /dev/vfio.
        let e = VfioPci::open(&dir).unwrap_err();
        assert!(matches!(e, PciError::NoIommuGroup { .. }), "{e:?}");
    }

    #[test]
    fn the_iommu_group_number_comes_from_the_link() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("7"), Some("vfio-pci"));
        assert_eq!(iommu_group(&dir).unwrap(), 7);
        assert_eq!(check_function(&dir).unwrap(), 7);
        for bad in ["x", "-1", "99999999999", "1 2"] {
            let t = tempfile::tempdir().unwrap();
            let dir = function(t.path(), Some(bad), None);
            let e = iommu_group(&dir).unwrap_err();
            assert!(
                matches!(&e, PciError::SysfsInvalid { why, .. } if why.contains("not an IOMMU group")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn a_function_not_bound_to_vfio_pci_says_how_to_bind_it() {
        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("3"), None);
        let e = check_function(&dir).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(&e, PciError::NotVfioBound { driver: None, bdf, .. } if bdf == "0000:00:04.0"),
            "{e:?}"
        );
        assert!(
            msg.contains("bound to no driver")
                && msg
                    .contains("echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override")
                && msg.contains("echo 0000:00:04.0 > /sys/bus/pci/drivers_probe")
                && !msg.contains("unbind"),
            "{msg}"
        );

        let t = tempfile::tempdir().unwrap();
        let dir = function(t.path(), Some("3"), Some("virtio-pci"));
        let msg = VfioPci::open(&dir).unwrap_err().to_string();
        assert!(
            msg.contains("bound to the kernel driver `virtio-pci`")
                && msg.contains("echo 0000:00:04.0 > /sys/bus/pci/drivers/virtio-pci/unbind"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_or_odd_function_directory_is_named() {
        let t = tempfile::tempdir().unwrap();
        let e = check_function(&t.path().join("nowhere")).unwrap_err();
        assert!(matches!(e, PciError::Sysfs { .. }), "{e:?}");
        let f = t.path().join("file");
        fs::write(&f, "").unwrap();
        let e = check_function(&f).unwrap_err();
        assert!(matches!(e, PciError::SysfsInvalid { .. }), "{e:?}");
    }

    #[test]
    fn pread_and_pwrite_surface_errors() {
        use std::os::fd::AsFd;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, [1u8, 2, 3, 4]).unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let fd = f.as_fd();
        let mut b = [0u8; 2];
        pread_exact(fd, &mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        let e = pread_exact(fd, &mut b, 3).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
        pwrite_all(fd, &[9, 9], 1).unwrap();
        assert_eq!(fs::read(&p).unwrap(), [1, 9, 9, 4]);
        let e = pread_exact(fd, &mut b, u64::MAX).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let ro = File::open(&p).unwrap();
        assert!(pwrite_all(ro.as_fd(), &[0], 0).is_err());
    }
}

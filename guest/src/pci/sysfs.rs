//! A PCI function of a stock Linux kernel, reached through sysfs
//! (`/sys/bus/pci/devices/<BDF>/`), for a guest without VFIO (no IOMMU, no no-IOMMU mode):
//!
//! - configuration space through the `config` file (pread/pwrite at the offset; root may
//!   read all of it and write it);
//! - BAR sizes and addresses from the `resource` file: the kernel (or firmware) assigned
//!   them and this back end never re-programs a BAR. The driver reads the BAR registers from
//!   configuration space for the pool's bus address, which is what the kernel programmed;
//! - BAR registers through an uncached `MAP_SHARED` mapping of `resourceN`, one volatile
//!   access of exactly the width asked (1, 2, 4 or 8 bytes, naturally aligned);
//! - the pool through another mapping of `resourceN` ([`PciAccess::map_bar`]);
//! - no interrupts: [`PciAccess::enable_msix`] answers `None` and the driver polls.
//!
//! Write-combining (`resourceN_wc`) is deliberately not used: stores to WC memory are not
//! ordered by the release stores the ring relies on.
//!
//! The host is hostile, and what these files say comes from it (the BAR sizes the kernel
//! found, configuration bytes): every value is checked before use and every failure is a
//! [`PciError`] naming the file and what failed. Nothing here panics on file contents.
//! Finding the function and reading its `resource` file is [`super::discovery`]'s.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use swiotlb_shared::pci::cfg;

use super::discovery::{
    bdf_of, bound_driver, check_function_dir, excerpt, read_attr, read_resources, sysfs_err,
    BarResource, NUM_BARS,
};
use super::pool_map::{self, PoolMapMode, PoolMemoryType};
use super::{
    check_config_range, check_virtio_blk, mmio_read, mmio_write, page_size, PciAccess, PciError,
    RegisterAccess, MAX_CONFIG_SIZE,
};
use crate::pool::{Mapping, PoolAccessError};

/// A PCI function driven through sysfs.
pub struct SysfsPci {
    dir: PathBuf,
    config: File,
    config_path: PathBuf,
    config_size: u64,
    bars: [BarResource; NUM_BARS],
    /// Each BAR's register mapping, made at its first register access.
    maps: [Option<Mapping>; NUM_BARS],
    /// How the pool is to be mapped ([`with_pool_map`](Self::with_pool_map)).
    pool_map: PoolMapMode,
    /// How it was.
    pool_memory: Option<PoolMemoryType>,
}

impl std::fmt::Debug for SysfsPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysfsPci")
            .field("dir", &self.dir)
            .field("config_size", &self.config_size)
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl SysfsPci {
    /// Opens the function whose sysfs directory is `dir` (`/sys/bus/pci/devices/<BDF>`):
    /// checks it is a modern virtio-blk function (1af4:1042) that no kernel driver owns,
    /// reads its BARs from `resource`, enables it (`enable`) when the kernel left it
    /// disabled, turns on memory decode and bus mastering, and turns legacy INTx off (the
    /// driver polls).
    pub fn open(dir: &Path) -> Result<Self, PciError> {
        check_function_dir(dir)?;
        let config_path = dir.join("config");
        let config = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&config_path)
            .map_err(sysfs_err(
                &config_path,
                "opening read-write (root is needed)",
            ))?;
        let len = config
            .metadata()
            .map_err(sysfs_err(&config_path, "reading the size of"))?
            .len();
        if len < cfg::SIZE as u64 {
            return Err(PciError::SysfsInvalid {
                path: config_path,
                why: format!("configuration space of {len} bytes, less than 256"),
            });
        }
        let mut me = Self {
            dir: dir.to_path_buf(),
            config,
            config_path,
            config_size: len.min(MAX_CONFIG_SIZE),
            bars: [BarResource::default(); NUM_BARS],
            maps: std::array::from_fn(|_| None),
            pool_map: PoolMapMode::Bar,
            pool_memory: None,
        };
        let dir = me.dir.clone();
        check_virtio_blk(&mut me, &dir)?;
        me.check_unbound()?;
        me.bars = read_resources(&me.dir)?;
        me.enable()?;
        let mut c = [0u8; 2];
        me.config_read(cfg::COMMAND, &mut c)?;
        let command = u16::from_le_bytes(c);
        // INTx off too: the driver polls, and nothing in the guest acknowledges a legacy
        // interrupt. Left on (the kernel clears the bit when it enables the function), the
        // device raises INTx on completions and a VMM without an in-kernel irqchip (QEMU
        // under TCG) unmaps the BARs until it sees the interrupt acknowledged, so every pool
        // access would trap.
        let wanted =
            command | cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER | cfg::COMMAND_INTX_DISABLE;
        if wanted != command {
            me.config_write(cfg::COMMAND, &wanted.to_le_bytes())?;
        }
        Ok(me)
    }

    /// The function's sysfs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// BAR `bar` as the `resource` file described it at open (`None` past BAR 5).
    pub fn resource(&self, bar: u8) -> Option<BarResource> {
        self.bars.get(usize::from(bar)).copied()
    }

    /// Refuses a function a kernel driver is bound to (`driver` link present).
    fn check_unbound(&self) -> Result<(), PciError> {
        let link = self.dir.join("driver");
        match fs::symlink_metadata(&link) {
            Ok(_) => Err(PciError::Bound {
                path: self.dir.clone(),
                bdf: bdf_of(&self.dir),
                driver: bound_driver(&self.dir).unwrap_or_else(|| "?".into()),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(sysfs_err(&link, "looking up")(e)),
        }
    }

    /// Writes `1` to `enable` when it reads `0` (the kernel's count of enables).
    fn enable(&self) -> Result<(), PciError> {
        let path = self.dir.join("enable");
        let s = read_attr(&path).map_err(sysfs_err(&path, "reading"))?;
        let count: u32 = s.trim().parse().map_err(|_| PciError::SysfsInvalid {
            path: path.clone(),
            why: format!("{:?} is not an enable count", excerpt(s.trim())),
        })?;
        if count == 0 {
            fs::write(&path, "1").map_err(sysfs_err(&path, "writing 1 to"))?;
        }
        Ok(())
    }

    fn config_range(&self, what: &str, offset: u16, len: usize) -> Result<(), PciError> {
        check_config_range(what, offset, len, self.config_size)
    }

    /// Checks a register access of `len` bytes at `offset` of BAR `bar` and returns the
    /// BAR's mapping (made now if this is its first access).
    fn register(&mut self, access: RegisterAccess) -> Result<&Mapping, PciError> {
        let bar = access.bar;
        access.check_width()?;
        let r = self
            .resource(bar)
            .ok_or_else(|| access.refuse("there are only BARs 0 to 5"))?;
        access.check_bar(&r, r.size)?;
        let i = usize::from(bar);
        if self.maps[i].is_none() {
            let map = self.map_resource(bar, 0, r.size)?;
            self.maps[i] = Some(map);
        }
        self.maps[i]
            .as_ref()
            .ok_or_else(|| access.refuse("not mapped"))
    }

    /// Maps `[offset, offset + len)` of `resourceN`, after checking the file holds it (a
    /// mapping past a file's end faults on access instead of failing here).
    /// Asks for the pool to be mapped as `mode` says (the default is the BAR's own
    /// mapping: `/dev/mem` only when asked, since a wrong physical address there is real
    /// memory).
    pub fn with_pool_map(mut self, mode: PoolMapMode) -> Self {
        self.pool_map = mode;
        self
    }

    fn map_resource(&self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        self.map_resource_file(bar, &format!("resource{bar}"), offset, len)
    }

    fn map_resource_file(
        &self,
        bar: u8,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Mapping, PciError> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(sysfs_err(&path, "opening read-write"))?;
        let have = file
            .metadata()
            .map_err(sysfs_err(&path, "reading the size of"))?
            .len();
        let end = offset.saturating_add(len);
        if have < end {
            return Err(PciError::NotMappable {
                bar,
                why: format!(
                    "{} holds {have:#x} bytes, the range ends at {end:#x}",
                    path.display()
                ),
            });
        }
        let n = usize::try_from(len).map_err(|_| PciError::NotMappable {
            bar,
            why: format!("{len:#x} bytes do not fit the address space"),
        })?;
        let fd: OwnedFd = file.into();
        Mapping::shared(fd.as_fd(), offset, n).map_err(|e| {
            let source = match e {
                PoolAccessError::Map(io) => io,
                other => std::io::Error::other(other.to_string()),
            };
            PciError::Sysfs {
                path,
                what: format!("mapping {len:#x} bytes at offset {offset:#x} of"),
                source,
            }
        })
    }
}

impl PciAccess for SysfsPci {
    fn config_read(&mut self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        self.config_range("config read", offset, buf.len())?;
        self.config
            .read_exact_at(buf, u64::from(offset))
            .map_err(|e| {
                let what = if e.kind() == ErrorKind::UnexpectedEof {
                    // The kernel cuts reads past byte 64 short for callers without
                    // CAP_SYS_ADMIN.
                    format!(
                        "short read of {} bytes at {offset:#x} (past byte 64 needs root) from",
                        buf.len()
                    )
                } else {
                    format!("reading {} bytes at {offset:#x} of", buf.len())
                };
                sysfs_err(&self.config_path, what)(e)
            })
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        self.config_range("config write", offset, data.len())?;
        self.config
            .write_all_at(data, u64::from(offset))
            .map_err(sysfs_err(
                &self.config_path,
                format!("writing {} bytes at {offset:#x} of", data.len()),
            ))
    }

    fn bar_read(&mut self, bar: u8, offset: u64, buf: &mut [u8]) -> Result<(), PciError> {
        let access = RegisterAccess::read(bar, offset, buf.len());
        let map = self.register(access)?;
        mmio_read(map, access, buf)
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), PciError> {
        let access = RegisterAccess::write(bar, offset, data.len());
        let map = self.register(access)?;
        mmio_write(map, access, data)
    }

    fn bar_size(&mut self, bar: u8) -> Result<u64, PciError> {
        Ok(self.resource(bar).map_or(0, |r| r.size))
    }

    fn map_bar(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
        let not = |why: String| PciError::NotMappable { bar, why };
        let r = self
            .resource(bar)
            .ok_or_else(|| not("there are only BARs 0 to 5".into()))?;
        if r.size == 0 {
            return Err(not("the BAR is unused".into()));
        }
        if !r.is_memory() {
            return Err(not("an I/O port BAR cannot be mapped".into()));
        }
        if !r.is_assigned() {
            return Err(not("the kernel did not assign the BAR an address".into()));
        }
        if len == 0 {
            return Err(not("empty range".into()));
        }
        let page = page_size();
        if offset % page != 0 {
            return Err(not(format!(
                "offset {offset:#x} is not a multiple of the {page}-byte page"
            )));
        }
        if offset.checked_add(len).is_none_or(|end| end > r.size) {
            return Err(not(format!(
                "[{offset:#x}, +{len:#x}) lies outside the BAR's {:#x} bytes",
                r.size
            )));
        }
        let phys = r
            .start
            .checked_add(offset)
            .ok_or_else(|| not("address overflows".into()))?;
        let wc_name = format!("resource{bar}_wc");
        let (m, kind) = pool_map::map_pool(
            self.pool_map,
            phys,
            len,
            &mut [
                (PoolMemoryType::WriteCombining, &mut || {
                    if r.is_prefetchable() {
                        self.map_resource_file(bar, &wc_name, offset, len)
                    } else {
                        Err(not("not prefetchable: no write-combining mapping".into()))
                    }
                }),
                (PoolMemoryType::Uncached, &mut || {
                    self.map_resource(bar, offset, len)
                }),
            ],
        )?;
        self.pool_memory = Some(kind);
        Ok(m)
    }

    fn pool_memory_type(&self) -> Option<PoolMemoryType> {
        self.pool_memory
    }

    fn enable_msix(&mut self, _count: u16) -> Result<Option<Vec<OwnedFd>>, PciError> {
        // Interrupts need VFIO or UIO; through sysfs the driver polls.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::discovery::{IORESOURCE_IO, IORESOURCE_MEM, IORESOURCE_UNSET};
    use crate::pci::fake_sysfs::{
        config_bytes, good_resource, line, Tree, POOL_ADDR, POOL_SIZE, REGS_ADDR,
    };
    use crate::virtio_pci::{TransportError, VirtioPci};
    use swiotlb_shared::pci::{common, device_layout as dl};

    #[test]
    fn open_enables_the_function_turns_on_decode_and_mastering_and_turns_intx_off() {
        let t = Tree::new();
        let mut p = t.open().unwrap();
        assert_eq!(t.read("enable"), b"1", "enable written when it read 0");
        let c = t.read("config");
        let command = u16::from_le_bytes([c[4], c[5]]);
        assert_eq!(
            command,
            cfg::COMMAND_MEMORY | cfg::COMMAND_BUS_MASTER | cfg::COMMAND_INTX_DISABLE,
            "command register"
        );
        assert_eq!(p.bar_size(0).unwrap(), dl::REGS_BAR_SIZE);
        assert_eq!(p.bar_size(1).unwrap(), 0);
        assert_eq!(p.bar_size(2).unwrap(), POOL_SIZE);
        assert_eq!(p.bar_size(3).unwrap(), 0);
        assert_eq!(p.bar_size(6).unwrap(), 0);
        assert_eq!(p.resource(2).unwrap().start, POOL_ADDR);
        assert!(p.enable_msix(2).unwrap().is_none(), "no interrupts: poll");
    }

    #[test]
    fn open_leaves_an_enabled_function_and_other_command_bits_alone() {
        let t = Tree::new();
        t.write("enable", b"2\n");
        let mut c = config_bytes(0x1af4, 0x1042);
        let before = cfg::COMMAND_MEMORY | cfg::COMMAND_INTX_DISABLE;
        c[4..6].copy_from_slice(&before.to_le_bytes());
        t.write("config", &c);
        t.open().unwrap();
        assert_eq!(t.read("enable"), b"2\n", "not rewritten");
        let c = t.read("config");
        assert_eq!(
            u16::from_le_bytes([c[4], c[5]]),
            before | cfg::COMMAND_BUS_MASTER
        );
    }

    #[test]
    fn open_refuses_other_functions() {
        for (v, d) in [
            (0x8086, 0x100e),
            (0x1af4, 0x1001),
            (0x1af4, 0x1041),
            (0xffff, 0xffff),
        ] {
            let t = Tree::new();
            t.write("config", &config_bytes(v, d));
            match t.open() {
                Err(PciError::WrongFunction { vendor, device, .. }) => {
                    assert_eq!((vendor, device), (v, d));
                }
                other => panic!("{v:04x}:{d:04x} accepted: {other:?}"),
            }
            assert_eq!(t.read("enable"), b"0\n", "nothing touched");
        }
    }

    #[test]
    fn open_refuses_a_function_a_driver_owns() {
        let t = Tree::new();
        let drv = t.root.path().join("bus/pci/drivers/virtio-pci");
        fs::create_dir_all(&drv).unwrap();
        std::os::unix::fs::symlink(&drv, t.path("driver")).unwrap();
        let e = t.open().unwrap_err();
        assert!(
            matches!(&e, PciError::Bound { driver, bdf, .. } if driver == "virtio-pci" && bdf == "0000:00:04.0"),
            "{e:?}"
        );
        assert!(e.to_string().contains("unbind"), "{e}");
    }

    #[test]
    fn open_refuses_missing_or_short_files() {
        let t = Tree::new();
        t.write("config", &config_bytes(0x1af4, 0x1042)[..128]);
        assert!(matches!(t.open(), Err(PciError::SysfsInvalid { .. })));

        let t = Tree::new();
        fs::remove_file(t.path("resource")).unwrap();
        let e = t.open().unwrap_err();
        assert!(
            matches!(&e, PciError::Sysfs { path, .. } if path.ends_with("resource")),
            "{e:?}"
        );

        let t = Tree::new();
        t.write("enable", b"yes\n");
        assert!(matches!(t.open(), Err(PciError::SysfsInvalid { .. })));

        let t = Tree::new();
        let e = SysfsPci::open(&t.path("nonexistent")).unwrap_err();
        assert!(matches!(e, PciError::Sysfs { .. }), "{e:?}");
        let e = SysfsPci::open(&t.path("vendor")).unwrap_err();
        assert!(matches!(e, PciError::SysfsInvalid { .. }), "{e:?}");
    }

    #[test]
    fn open_reports_a_bad_resource_file_with_its_path() {
        let t = Tree::new();
        t.write(
            "resource",
            good_resource()
                .replace("0x00000000fe007fff", "0x00000000fe006fff")
                .as_bytes(),
        );
        let e = t.open().unwrap_err();
        match &e {
            PciError::Resource { path, source } => {
                assert!(path.ends_with("0000:00:04.0/resource"));
                let why = source.to_string();
                assert!(why.contains("power of two"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Binary garbage is an error, not a panic.
        let t = Tree::new();
        t.write("resource", &[0xff, 0xfe, 0, 0x80, b'\n'].repeat(10));
        assert!(matches!(t.open(), Err(PciError::Resource { .. })));
    }

    #[test]
    fn config_round_trips_through_the_file() {
        let t = Tree::new();
        let mut p = t.open().unwrap();
        p.config_write(0x100, &[1, 2, 3, 4, 5]).unwrap();
        let mut b = [0u8; 5];
        p.config_read(0x100, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5]);
        assert_eq!(
            &t.read("config")[0x100..0x105],
            &[1, 2, 3, 4, 5],
            "at the offset"
        );
        // The last bytes of the 4 KiB space, and nothing past it.
        p.config_write(0xffe, &[0xaa, 0xbb]).unwrap();
        let mut b = [0u8; 2];
        p.config_read(0xffe, &mut b).unwrap();
        assert_eq!(b, [0xaa, 0xbb]);
        assert!(matches!(
            p.config_read(0xfff, &mut b),
            Err(PciError::BadAccess { .. })
        ));
        assert!(matches!(
            p.config_write(u16::MAX, &[0]),
            Err(PciError::BadAccess { .. })
        ));
        assert_eq!(t.read("config").len(), 4096, "nothing written past the end");
        // Through the driver's own reads: the pool BAR's address from its registers.
        let mut vp = VirtioPci::probe(p).unwrap();
        assert_eq!(vp.bar_address(2).unwrap(), POOL_ADDR);
        assert_eq!(vp.bar_address(0).unwrap(), REGS_ADDR);
    }

    #[test]
    fn a_256_byte_config_space_ends_at_256() {
        let t = Tree::new();
        t.write("config", &config_bytes(0x1af4, 0x1042)[..256]);
        let mut p = t.open().unwrap();
        let mut b = [0u8; 4];
        p.config_read(252, &mut b).unwrap();
        assert!(matches!(
            p.config_read(253, &mut b),
            Err(PciError::BadAccess { .. })
        ));
    }

    #[test]
    fn bar_registers_of_each_width_go_through_the_mapping() {
        let t = Tree::new();
        let mut p = t.open().unwrap();
        p.bar_write(0, 0x100, &[0x11]).unwrap();
        p.bar_write(0, 0x102, &0x2233u16.to_le_bytes()).unwrap();
        p.bar_write(0, 0x104, &0x4455_6677u32.to_le_bytes())
            .unwrap();
        p.bar_write(0, 0x108, &0x8899_aabb_ccdd_eeffu64.to_le_bytes())
            .unwrap();
        p.bar_write(0, dl::REGS_BAR_SIZE - 8, &[9; 8]).unwrap();
        // MAP_SHARED: the file sees the writes at their offsets.
        let f = t.read("resource0");
        assert_eq!(f[0x100], 0x11);
        assert_eq!(&f[0x102..0x104], &[0x33, 0x22]);
        assert_eq!(&f[0x104..0x108], &[0x77, 0x66, 0x55, 0x44]);
        assert_eq!(
            &f[0x108..0x110],
            &[0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88]
        );
        assert_eq!(&f[f.len() - 8..], &[9; 8]);
        assert_eq!(f[0x101], 0, "no byte beside the registers touched");
        // And reads see what was written to the file.
        let file = OpenOptions::new()
            .write(true)
            .open(t.path("resource0"))
            .unwrap();
        file.write_all_at(&[1, 2, 3, 4, 5, 6, 7, 8], 0x200).unwrap();
        let mut b1 = [0u8; 1];
        let mut b2 = [0u8; 2];
        let mut b4 = [0u8; 4];
        let mut b8 = [0u8; 8];
        p.bar_read(0, 0x203, &mut b1).unwrap();
        p.bar_read(0, 0x202, &mut b2).unwrap();
        p.bar_read(0, 0x204, &mut b4).unwrap();
        p.bar_read(0, 0x200, &mut b8).unwrap();
        assert_eq!(b1, [4]);
        assert_eq!(b2, [3, 4]);
        assert_eq!(b4, [5, 6, 7, 8]);
        assert_eq!(b8, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn bad_register_accesses_are_refused() {
        let t = Tree::new();
        let mut p = t.open().unwrap();
        let size = dl::REGS_BAR_SIZE;
        let refused = |r: Result<(), PciError>| matches!(r, Err(PciError::BadAccess { .. }));
        let mut b = [0u8; 16];
        for w in [0, 3, 5, 6, 7, 16] {
            assert!(refused(p.bar_read(0, 0, &mut b[..w])), "width {w}");
            assert!(refused(p.bar_write(0, 0, &b[..w])), "width {w}");
        }
        for (off, w) in [(1, 2), (2, 4), (4, 8), (0x103, 4)] {
            assert!(refused(p.bar_read(0, off, &mut b[..w])), "{w} at {off}");
            assert!(refused(p.bar_write(0, off, &b[..w])), "{w} at {off}");
        }
        for (off, w) in [(size, 1), (size - 4, 8), (u64::MAX, 1), (u64::MAX - 7, 8)] {
            assert!(refused(p.bar_read(0, off, &mut b[..w])), "{w} at {off:#x}");
            assert!(refused(p.bar_write(0, off, &b[..w])), "{w} at {off:#x}");
        }
        assert!(refused(p.bar_read(1, 0, &mut b[..4])), "unused BAR");
        assert!(refused(p.bar_read(3, 0, &mut b[..4])), "upper half");
        assert!(refused(p.bar_read(6, 0, &mut b[..4])), "no BAR 6");
        assert!(refused(p.bar_write(255, 0, &b[..4])), "no BAR 255");
        assert_eq!(
            t.read("resource0"),
            vec![0; size as usize],
            "nothing written"
        );
    }

    #[test]
    fn io_and_unassigned_bars_are_refused() {
        let t = Tree::new();
        let mut lines: Vec<String> = good_resource().lines().map(str::to_string).collect();
        lines[1] = line(0xc000, 0x40, IORESOURCE_IO).trim().into();
        lines[4] = line(0, 0x1000, IORESOURCE_MEM | IORESOURCE_UNSET)
            .trim()
            .into();
        t.write("resource", lines.join("\n").as_bytes());
        t.sized("resource1", 0x40);
        t.sized("resource4", 0x1000);
        let mut p = t.open().unwrap();
        let mut b = [0u8; 4];
        assert_eq!(p.bar_size(1).unwrap(), 0x40);
        assert!(matches!(
            p.bar_read(1, 0, &mut b),
            Err(PciError::BadAccess { .. })
        ));
        assert!(matches!(
            p.map_bar(1, 0, 0x40),
            Err(PciError::NotMappable { .. })
        ));
        let e = p.bar_read(4, 0, &mut b).unwrap_err();
        assert!(e.to_string().contains("did not assign"), "{e}");
        assert!(matches!(
            p.map_bar(4, 0, 0x1000),
            Err(PciError::NotMappable { .. })
        ));
    }

    #[test]
    fn map_bar_maps_exactly_what_is_asked_inside_the_bar() {
        let t = Tree::new();
        let mut p = t.open().unwrap();
        let m = p.map_bar(2, 0, POOL_SIZE).unwrap();
        assert_eq!(m.byte_len() as u64, POOL_SIZE);
        let pool = crate::pool::PoolMemory::new(m);
        pool.store_u32(POOL_SIZE - 4, 0x0102_0304).unwrap();
        let f = t.read("resource2");
        assert_eq!(&f[f.len() - 4..], &0x0102_0304u32.to_le_bytes());
        // At an offset: the mapping starts there.
        let pg = page_size();
        let m = p.map_bar(2, pg, 2 * pg).unwrap();
        let pool = crate::pool::PoolMemory::new(m);
        pool.write(0, &[0x5a; 4]).unwrap();
        let at = pg as usize;
        assert_eq!(&t.read("resource2")[at..at + 4], &[0x5a; 4]);
        assert_eq!(t.read("resource2")[at - 1], 0);

        let not = |r: Result<Mapping, PciError>| matches!(r, Err(PciError::NotMappable { .. }));
        assert!(not(p.map_bar(2, pg, POOL_SIZE)), "past the end");
        assert!(not(p.map_bar(2, POOL_SIZE, pg)), "at the end");
        assert!(not(p.map_bar(2, pg / 2, pg)), "offset not page aligned");
        assert!(not(p.map_bar(2, 0, 0)), "empty");
        assert!(not(p.map_bar(2, pg, u64::MAX)), "overflow");
        assert!(not(p.map_bar(3, 0, 0x1000)), "upper half of the 64-bit BAR");
        assert!(not(p.map_bar(1, 0, 0x1000)), "unused");
        assert!(not(p.map_bar(6, 0, 0x1000)), "no BAR 6");
    }

    #[test]
    fn a_resource_file_shorter_than_its_bar_is_not_mapped() {
        // Mapping past a file's end would fault on access; refused before mapping.
        let t = Tree::new();
        t.sized("resource2", POOL_SIZE / 2);
        t.sized("resource0", 0x1000);
        let mut p = t.open().unwrap();
        let e = p.map_bar(2, 0, POOL_SIZE).err().unwrap();
        assert!(matches!(e, PciError::NotMappable { bar: 2, .. }), "{e:?}");
        assert!(p.map_bar(2, 0, POOL_SIZE / 2).is_ok());
        let mut b = [0u8; 4];
        assert!(matches!(
            p.bar_read(0, 0, &mut b),
            Err(PciError::NotMappable { bar: 0, .. })
        ));
        fs::remove_file(t.path("resource0")).unwrap();
        assert!(matches!(
            p.bar_read(0, 0, &mut b),
            Err(PciError::Sysfs { .. })
        ));
    }

    #[test]
    fn the_driver_probes_through_the_back_end() {
        let t = Tree::new();
        let mut vp = VirtioPci::probe(t.open().unwrap()).unwrap();
        let caps = *vp.caps();
        let pool = caps.swiotlb.unwrap();
        assert_eq!((pool.bar, pool.offset, pool.len), (2, 0, POOL_SIZE));
        assert_eq!(caps.common.bar, 0);
        // Common configuration registers are the BAR 0 file's bytes.
        let file = OpenOptions::new()
            .write(true)
            .open(t.path("resource0"))
            .unwrap();
        file.write_all_at(&3u16.to_le_bytes(), common::NUM_QUEUES)
            .unwrap();
        assert_eq!(vp.num_queues().unwrap(), 3);
        vp.set_status(0x0b).unwrap();
        assert_eq!(t.read("resource0")[common::DEVICE_STATUS as usize], 0x0b);

        // The capabilities are checked against the sizes in `resource`: a BAR 0 smaller
        // than the device configuration's place in it is refused.
        let t = Tree::new();
        t.write(
            "resource",
            good_resource()
                .replace("0x00000000fe007fff", "0x00000000fe001fff")
                .as_bytes(),
        );
        match VirtioPci::probe(t.open().unwrap()) {
            Err(TransportError::BadCapability { .. }) => {}
            other => panic!("{:?}", other.map(|v| *v.caps())),
        }
    }
}

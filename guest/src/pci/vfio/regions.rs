//! Regions: each region's info (the `VFIO_DEVICE_GET_REGION_INFO` ioctl, parsed by the
//! one region-info parse in `swiotlb-shared`), pread/pwrite on the device fd, and the
//! mappings of BAR registers and of the pool.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};

use swiotlb_shared::vfio_user::limits::MAX_REGION_INFO_ARGSZ;
use swiotlb_shared::vfio_user::region_info::{REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE};
use swiotlb_shared::vfio_user::Region;
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;
use vmm_sys_util::ioctl_io_nr;

use super::{vfio_err, VfioPci};
use crate::pci::page_size;
use crate::pci::pool_map::{self, PoolMemoryType};
use crate::pci::{PciError, RegisterAccess};
use crate::pool::{Mapping, PoolAccessError};

ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);

/// Runs `f` on `fd` seen as a `File`, without ever closing it.
fn as_file<R>(fd: BorrowedFd<'_>, f: impl FnOnce(&File) -> R) -> R {
    // SAFETY: `fd` is open for the whole call (it is borrowed), and the `File` is never
    // dropped, so it never closes a descriptor it does not own.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd.as_raw_fd()) });
    f(&file)
}

/// `pread` of exactly `buf.len()` bytes at `offset` of `fd` (std's `read_exact_at`: retried
/// on EINTR, a short file is `UnexpectedEof`).
pub(super) fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    as_file(fd, |f| f.read_exact_at(buf, offset))
}

/// `pwrite` of all of `data` at `offset` of `fd` (std's `write_all_at`).
pub(super) fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    as_file(fd, |f| f.write_all_at(data, offset))
}

/// Asks the kernel about region `index` of the device `fd`.
pub(super) fn region_info(fd: BorrowedFd<'_>, index: u32, bdf: &str) -> Result<Region, PciError> {
    // A BAR's info with its capabilities is a few dozen bytes (the fixed 32, a sparse-mmap
    // capability of 16 and 16 per area): the bound a vfio-user client retries with is
    // plenty. u64s, so the buffer is aligned for the struct's u64 fields.
    let mut buf = vec![0u64; MAX_REGION_INFO_ARGSZ as usize / 8];
    buf[0] = u64::from(MAX_REGION_INFO_ARGSZ);
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
    Region::parse_ioctl(index, &bytes).map_err(|source| PciError::RegionInfo {
        what: what(),
        source,
    })
}

impl VfioPci {
    /// Checks a register access of `len` bytes at `offset` of BAR `bar`; returns the BAR's
    /// mapping (made now if this is its first access), or `None` when the BAR cannot be
    /// mapped and the access goes through the device fd.
    pub(super) fn register(
        &mut self,
        access: RegisterAccess,
    ) -> Result<Option<&Mapping>, PciError> {
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
            REGION_INFO_FLAG_WRITE
        } else {
            REGION_INFO_FLAG_READ
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

    /// Maps `[offset, offset + len)` of BAR `bar` as the pool: a memory BAR the kernel
    /// assigned, page aligned, inside the BAR, and in an area VFIO lets user space map.
    pub(super) fn map_pool(&mut self, bar: u8, offset: u64, len: u64) -> Result<Mapping, PciError> {
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
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::ErrorKind;

    use super::*;

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

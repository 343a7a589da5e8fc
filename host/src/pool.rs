//! The SWIOTLB pool on the device side: a sealed memfd exposed as a 64-bit prefetchable BAR.
//!
//! The pool is the single region of the device's guest memory. Its bus address is whatever
//! the driver programmed into the BAR; the device follows BAR moves and memory-decode
//! changes, and while the BAR is not decoded the device has no memory at all.
//!
//! The memfd is mapped once, when the pool is made, and every view (one per placement on
//! the bus) is that one mapping at another bus address. So the pool's pages sit at one host
//! address for the life of the process, which is what lets the disk engine register them
//! with the kernel once (io_uring fixed buffers) and read straight into them.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use swiotlb_shared::layout::{LayoutError, PoolLayout, PoolWindow};
use thiserror::Error;
use vm_memory::mmap::MmapRegionError;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionCollectionError};
use vm_memory::{GuestRegionMmap, MmapRegion};

/// The device's guest memory: one region, the pool.
pub type PoolGuestMemory = GuestMemoryMmap<()>;

/// Errors creating or mapping the pool.
#[derive(Debug, Error)]
pub enum PoolError {
    /// The size is not acceptable.
    #[error("invalid pool size")]
    Size(#[source] LayoutError),
    /// memfd_create, ftruncate or sealing failed.
    #[error("creating the pool memfd failed")]
    Memfd(#[source] std::io::Error),
    /// Mapping the memfd into the process failed.
    #[error("mapping the pool failed")]
    Mmap(#[source] MmapRegionError),
    /// Placing the pool at its bus address failed.
    #[error("placing the pool at bus address {0:#x} failed")]
    Map(u64, #[source] GuestRegionCollectionError),
    /// The pool's window overflows the bus.
    #[error("the pool does not fit at bus address {0:#x}")]
    Overflow(u64),
}

/// Where the pool lives in this process: one shared mapping of the memfd, at the same host
/// address for the life of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolMapping {
    /// First byte of the mapping.
    pub ptr: NonNull<u8>,
    /// Bytes mapped (the pool size).
    pub len: usize,
}

// SAFETY: a `PoolMapping` is an address and a length, handed to whoever registers the pages
// with the kernel; the mapping it names is owned by the `Pool` and shared memory already.
unsafe impl Send for PoolMapping {}

/// A decoded pool: where it is on the bus, and the memory mapped there.
#[derive(Clone, Debug)]
pub struct PoolView {
    /// The bus window `[base, base + size)`.
    pub window: PoolWindow,
    /// The pool mapped at `window.base()`.
    pub mem: Arc<PoolGuestMemory>,
}

/// The pool: a memfd and its current placement.
#[derive(Debug)]
pub struct Pool {
    file: File,
    size: u64,
    /// The memfd mapped once; every view shares it.
    mapping: Arc<MmapRegion<()>>,
    /// The pages are registered with the kernel (io_uring fixed buffers): they must never
    /// be replaced, so [`Pool::clear`] writes zeros instead of punching a hole.
    pinned: bool,
    /// BAR address when decoded, else `None`.
    placed_at: Option<u64>,
    view: Option<PoolView>,
}

impl Pool {
    /// Creates a zero-filled pool of `size` bytes (a power of two within the layout limits),
    /// sealed against shrinking and growing so no one can make a mapping fault.
    pub fn new(size: u64) -> Result<Self, PoolError> {
        PoolLayout::check_pool_size(size).map_err(PoolError::Size)?;
        let name = c"swiotlb-pool";
        // SAFETY: `name` is a valid NUL-terminated string; the returned fd is checked.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(PoolError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(PoolError::Memfd)?;
        // SAFETY: fcntl on a valid fd we own, with integer arguments.
        let rc = unsafe {
            libc::fcntl(
                fd,
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if rc < 0 {
            return Err(PoolError::Memfd(std::io::Error::last_os_error()));
        }
        let len = Self::len_of(size)?;
        let fd_for_map = file.try_clone().map_err(PoolError::Memfd)?;
        let mapping =
            MmapRegion::from_file(FileOffset::new(fd_for_map, 0), len).map_err(PoolError::Mmap)?;
        Ok(Self {
            file,
            size,
            mapping: Arc::new(mapping),
            pinned: false,
            placed_at: None,
            view: None,
        })
    }

    fn len_of(size: u64) -> Result<usize, PoolError> {
        usize::try_from(size).map_err(|_| {
            PoolError::Size(LayoutError::PoolSizeOutOfRange {
                size,
                min: 0,
                max: usize::MAX as u64,
            })
        })
    }

    /// The pool's one mapping in this process.
    pub fn mapping(&self) -> PoolMapping {
        PoolMapping {
            // `MmapRegion` never holds a null mapping; a dangling pointer would only be
            // refused by the kernel when registered.
            ptr: NonNull::new(self.mapping.as_ptr()).unwrap_or(NonNull::dangling()),
            len: self.mapping.size(),
        }
    }

    /// Records that the pages were registered with the kernel and must stay the same pages.
    pub fn set_pinned(&mut self, pinned: bool) {
        self.pinned = pinned;
    }

    /// Pool size in bytes (the BAR size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The memfd, to pass to a client that maps the BAR.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The memfd as a file, for trapped (socket) accesses to the pool BAR.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where the pool is decoded, if anywhere.
    pub fn bus_address(&self) -> Option<u64> {
        self.placed_at
    }

    /// Follows BAR programming: `Some(addr)` when the BAR holds `addr` and memory decode is
    /// on, `None` otherwise. Returns whether the placement changed. Mapping happens lazily,
    /// in [`Pool::view`], because a 64-bit BAR is written one dword at a time.
    pub fn place(&mut self, at: Option<u64>) -> bool {
        // A window whose end overflows the bus cannot be decoded.
        let at = at.filter(|a| PoolWindow::new(*a, self.size).is_ok());
        if at == self.placed_at {
            return false;
        }
        self.placed_at = at;
        self.view = None;
        true
    }

    /// The decoded pool, mapping it at its bus address on first use after a move.
    pub fn view(&mut self) -> Result<Option<PoolView>, PoolError> {
        let Some(base) = self.placed_at else {
            return Ok(None);
        };
        if let Some(v) = &self.view {
            return Ok(Some(v.clone()));
        }
        let window = PoolWindow::new(base, self.size).map_err(PoolError::Size)?;
        let region = GuestRegionMmap::with_arc(self.mapping.clone(), GuestAddress(base))
            .ok_or(PoolError::Overflow(base))?;
        let mem =
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| PoolError::Map(base, e))?;
        let view = PoolView {
            window,
            mem: Arc::new(mem),
        };
        self.view = Some(view.clone());
        Ok(Some(view))
    }

    /// Zeroes the whole pool (device reset gives the next driver a clean pool).
    pub fn clear(&mut self) -> Result<(), PoolError> {
        if self.pinned {
            // Registered pages must stay the file's pages: a punched hole would leave the
            // kernel reading into pages the pool no longer holds. Write zeros instead.
            // SAFETY: the mapping is `size()` bytes of shared memory owned by `self`; the
            // device is being reset, so no request of its own is in flight, and bytes the
            // client writes meanwhile are its own business (the pool is shared memory).
            unsafe { std::ptr::write_bytes(self.mapping.as_ptr(), 0, self.mapping.size()) };
            return Ok(());
        }
        // Punching the whole range frees the pages and reads back as zeros.
        let len = libc::off_t::try_from(self.size)
            .map_err(|_| PoolError::Memfd(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: fallocate on a valid fd we own, with integer arguments.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len,
            )
        };
        if rc < 0 {
            return Err(PoolError::Memfd(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn pool_follows_bar_moves_and_decode() {
        let mut p = Pool::new(1 << 20).unwrap();
        assert!(p.view().unwrap().is_none(), "not decoded yet");
        assert!(p.place(Some(0x1_0000_0000)));
        let v = p.view().unwrap().unwrap();
        v.mem
            .write_obj(0xabcd_u32, GuestAddress(0x1_0000_0010))
            .unwrap();
        assert!(p.place(Some(0x2_0000_0000)));
        let v2 = p.view().unwrap().unwrap();
        assert_eq!(v2.window.base(), 0x2_0000_0000);
        let x: u32 = v2.mem.read_obj(GuestAddress(0x2_0000_0010)).unwrap();
        assert_eq!(x, 0xabcd, "same memfd behind the moved BAR");
        assert!(v2.mem.read_obj::<u32>(GuestAddress(0x1_0000_0010)).is_err());
        assert!(p.place(None));
        assert!(p.view().unwrap().is_none());
        assert!(
            !p.place(Some(u64::MAX - 4)),
            "overflowing window is not decoded"
        );
        p.clear().unwrap();
    }

    #[test]
    fn pool_refuses_bad_sizes_and_is_sealed() {
        assert!(Pool::new(3 << 20).is_err());
        let p = Pool::new(1 << 20).unwrap();
        assert!(p.file.set_len(1 << 19).is_err(), "shrink is sealed");
    }
}

#[cfg(test)]
mod pinned_tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn every_view_is_the_one_mapping_and_a_pinned_pool_is_zeroed_in_place() {
        let mut p = Pool::new(1 << 20).unwrap();
        let m = p.mapping();
        p.place(Some(0x1_0000_0000));
        let v = p.view().unwrap().unwrap();
        v.mem
            .write_obj(0x1234_u32, GuestAddress(0x1_0000_0040))
            .unwrap();
        // SAFETY: reading 4 bytes inside the pool's own mapping.
        let seen = unsafe { std::ptr::read_unaligned(m.ptr.as_ptr().add(0x40).cast::<u32>()) };
        assert_eq!(seen, 0x1234, "the view is the stable mapping");
        p.set_pinned(true);
        p.clear().unwrap();
        let x: u32 = v.mem.read_obj(GuestAddress(0x1_0000_0040)).unwrap();
        assert_eq!(x, 0, "zeroed");
        assert_eq!(p.mapping(), m, "same mapping after a clear");
    }
}

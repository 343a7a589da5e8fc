//! The driver's view of the mapped SWIOTLB pool: offset-addressed, bounds-checked accesses.
//!
//! The pool is shared with the device, which in a confidential VM is hostile. Every access
//! is checked against the mapping's length before it happens. Ring indexes and used elements
//! are read with single atomic loads so each shared value is read once into a private copy;
//! bulk data moves with `memcpy` (a byte-wise volatile copy runs ~10x slower on these machines)
//! and is treated as untrusted bytes once copied.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use thiserror::Error;

/// Errors of pool memory access.
#[derive(Debug, Error)]
pub enum PoolAccessError {
    /// The access does not lie wholly inside the pool.
    #[error("pool access at offset {offset:#x} of {len} bytes is outside the {size:#x}-byte pool")]
    OutOfBounds {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
        /// Pool size.
        size: u64,
    },
    /// An atomic access is not naturally aligned.
    #[error("pool access at offset {offset:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Offset asked for.
        offset: u64,
        /// Alignment needed.
        align: u64,
    },
    /// mmap failed.
    #[error("mapping the pool failed")]
    Map(#[source] std::io::Error),
}

/// A memory mapping that backs a [`PoolMemory`].
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through `PoolMemory`, whose
// methods are safe to call from several threads (atomics for shared indexes, and bulk copies
// into disjoint slots owned by the caller).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset`, shared and read-write (a pool BAR's fd).
    pub fn shared(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Self, PoolAccessError> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| PoolAccessError::Map(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a fresh mapping at an address the kernel picks; it aliases no Rust object.
        // The result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        Self::from_mmap(p, len)
    }

    /// Maps `len` bytes of `fd` from `offset`, shared and read-only (memory the kernel
    /// writes and this process only reads).
    pub fn shared_read_only(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<Self, PoolAccessError> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| PoolAccessError::Map(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: as in `shared`, read-only.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        Self::from_mmap(p, len)
    }

    /// Private anonymous memory of `len` bytes (buffers of this process alone).
    pub fn private_anonymous(len: usize) -> Result<Self, PoolAccessError> {
        // SAFETY: as in `shared`, with no file behind it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::from_mmap(p, len)
    }

    /// Anonymous shared memory of `len` bytes: a pool for tests and fake devices.
    pub fn anonymous(len: usize) -> Result<Self, PoolAccessError> {
        // SAFETY: as in `shared`, with no file behind it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::from_mmap(p, len)
    }

    fn from_mmap(p: *mut libc::c_void, len: usize) -> Result<Self, PoolAccessError> {
        if p == libc::MAP_FAILED || len == 0 {
            return Err(PoolAccessError::Map(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| PoolAccessError::Map(std::io::Error::last_os_error()))?;
        Ok(Self { ptr, len })
    }
}

impl Mapping {
    /// Start of the mapping (page aligned), for back ends that access device registers
    /// through it with volatile accesses of their own.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub(crate) fn byte_len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped exactly once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The mapped pool, addressed by byte offset from its start.
pub struct PoolMemory {
    map: Mapping,
}

impl PoolMemory {
    /// Wraps a mapping of the whole pool.
    pub fn new(map: Mapping) -> Self {
        Self { map }
    }

    /// Pool size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len as u64
    }

    /// Checks `[offset, offset + len)` and returns the start pointer.
    #[inline]
    fn span(&self, offset: u64, len: usize) -> Result<*mut u8, PoolAccessError> {
        let size = self.map.len as u64;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => {
                // SAFETY: `offset + len <= size`, so the pointer stays inside the mapping
                // (`offset` fits usize because it is below the mapping's usize length).
                Ok(unsafe { self.map.ptr.as_ptr().add(offset as usize) })
            }
            _ => Err(PoolAccessError::OutOfBounds {
                offset,
                len: len as u64,
                size,
            }),
        }
    }

    fn aligned(offset: u64, align: u64) -> Result<(), PoolAccessError> {
        if offset % align == 0 {
            Ok(())
        } else {
            Err(PoolAccessError::Misaligned { offset, align })
        }
    }

    /// Copies `src` into the pool at `offset`.
    pub fn write(&self, offset: u64, src: &[u8]) -> Result<(), PoolAccessError> {
        let dst = self.span(offset, src.len())?;
        // SAFETY: `dst` has `src.len()` bytes inside the mapping (checked by `span`); the pool
        // never overlaps a Rust-owned buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Copies `dst.len()` bytes out of the pool at `offset`.
    pub fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), PoolAccessError> {
        let src = self.span(offset, dst.len())?;
        // SAFETY: `src` has `dst.len()` bytes inside the mapping (checked by `span`); the pool
        // never overlaps a Rust-owned buffer. The bytes may change under us (the device owns
        // them too): they are treated as untrusted data, never as Rust values with invariants.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Zeroes `len` bytes at `offset`.
    pub fn zero(&self, offset: u64, len: usize) -> Result<(), PoolAccessError> {
        let dst = self.span(offset, len)?;
        // SAFETY: `dst` has `len` bytes inside the mapping (checked by `span`).
        unsafe { std::ptr::write_bytes(dst, 0, len) };
        Ok(())
    }

    fn atomic_u16(&self, offset: u64) -> Result<&AtomicU16, PoolAccessError> {
        Self::aligned(offset, 2)?;
        let p = self.span(offset, 2)?;
        // SAFETY: 2 bytes inside the mapping, 2-byte aligned (the mapping is page aligned);
        // shared memory is only ever accessed atomically at this granularity for indexes.
        Ok(unsafe { &*p.cast::<AtomicU16>() })
    }

    fn atomic_u32(&self, offset: u64) -> Result<&AtomicU32, PoolAccessError> {
        Self::aligned(offset, 4)?;
        let p = self.span(offset, 4)?;
        // SAFETY: 4 bytes inside the mapping, 4-byte aligned (the mapping is page aligned).
        Ok(unsafe { &*p.cast::<AtomicU32>() })
    }

    /// Reads a little-endian u16 once, with acquire ordering.
    pub fn load_u16(&self, offset: u64) -> Result<u16, PoolAccessError> {
        Ok(u16::from_le(
            self.atomic_u16(offset)?.load(Ordering::Acquire),
        ))
    }

    /// Writes a little-endian u16 with release ordering.
    pub fn store_u16(&self, offset: u64, v: u16) -> Result<(), PoolAccessError> {
        self.atomic_u16(offset)?.store(v.to_le(), Ordering::Release);
        Ok(())
    }

    /// Reads a little-endian u32 once, with acquire ordering.
    pub fn load_u32(&self, offset: u64) -> Result<u32, PoolAccessError> {
        Ok(u32::from_le(
            self.atomic_u32(offset)?.load(Ordering::Acquire),
        ))
    }

    /// Writes a little-endian u32 with release ordering.
    pub fn store_u32(&self, offset: u64, v: u32) -> Result<(), PoolAccessError> {
        self.atomic_u32(offset)?.store(v.to_le(), Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_outside_the_pool_are_refused() {
        let m = PoolMemory::new(Mapping::anonymous(8192).unwrap());
        assert!(m.write(8190, &[1, 2]).is_ok());
        assert!(matches!(
            m.write(8191, &[1, 2]),
            Err(PoolAccessError::OutOfBounds { .. })
        ));
        let mut b = [0u8; 4];
        assert!(m.read(u64::MAX - 1, &mut b).is_err());
        assert!(m.zero(4096, 4097).is_err());
        assert!(matches!(
            m.load_u16(3),
            Err(PoolAccessError::Misaligned { .. })
        ));
        m.store_u32(4, 0xdead_beef).unwrap();
        assert_eq!(m.load_u32(4).unwrap(), 0xdead_beef);
        assert_eq!(m.load_u16(4).unwrap(), 0xbeef);
        m.read(4, &mut b).unwrap();
        assert_eq!(b, [0xef, 0xbe, 0xad, 0xde]);
    }
}

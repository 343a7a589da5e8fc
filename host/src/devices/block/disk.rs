//! The raw image behind the block device. Data moves between the image and the pool with
//! `preadv`/`pwritev` straight into the pool mapping: no intermediate copy.

use std::fs::{File, OpenOptions};
use std::io;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::request::{Segment, ID_BYTES, SECTOR_SIZE};
use crate::pool::PoolGuestMemory;

/// Most iovecs one `preadv`/`pwritev` call takes (Linux `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// A raw disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl DiskImage {
    /// Opens `path`; the capacity is the file size rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    /// Wraps an open image (an fd passed in by a supervisor).
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        // A block device's size is where its end is; a file's is its length.
        let len = if meta.file_type().is_block_device() {
            (&file).seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        let capacity = len / SECTOR_SIZE * SECTOR_SIZE;
        // The ID names this image on this host (device and inode), NUL-padded.
        let mut id = [0u8; ID_BYTES];
        let s = format!("swiotlb-{:x}-{:x}", meta.dev(), meta.ino());
        let n = s.len().min(ID_BYTES);
        id[..n].copy_from_slice(&s.as_bytes()[..n]);
        Ok(Self {
            file,
            capacity,
            read_only,
            id,
        })
    }

    /// Capacity in bytes (a multiple of 512).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The 20-byte device ID.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Whether `[offset, offset + len)` lies inside the image.
    pub fn in_range(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= self.capacity)
    }

    fn iovecs(mem: &PoolGuestMemory, segs: &[Segment]) -> io::Result<Vec<libc::iovec>> {
        segs.iter()
            .map(|s| {
                let slice = mem
                    .get_slice(GuestAddress(s.addr), s.len as usize)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Ok(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                })
            })
            .collect()
    }

    /// Runs `op` (preadv or pwritev) until every byte of `iov` moved.
    fn vectored(
        &self,
        mut iov: Vec<libc::iovec>,
        mut offset: u64,
        op: unsafe extern "C" fn(
            libc::c_int,
            *const libc::iovec,
            libc::c_int,
            libc::off_t,
        ) -> libc::ssize_t,
    ) -> io::Result<()> {
        let mut first = 0usize;
        while first < iov.len() {
            let cnt = (iov.len() - first).min(MAX_IOVECS);
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: every iovec points into the pool mapping, which `mem` keeps alive for
            // the call, and covers a range the chain check proved lies inside the pool.
            // `cnt` iovecs from `first` are in bounds of `iov`.
            let n = unsafe {
                op(
                    self.file.as_raw_fd(),
                    iov[first..].as_ptr(),
                    cnt as libc::c_int,
                    off,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut n = n as usize;
            offset += n as u64;
            while n > 0 && first < iov.len() {
                let v = &mut iov[first];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing within the same iovec by fewer than its length.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Reads image bytes at `offset` into the pool buffers `segs`.
    pub fn read_into(
        &self,
        mem: &PoolGuestMemory,
        offset: u64,
        segs: &[Segment],
    ) -> io::Result<()> {
        let iov = Self::iovecs(mem, segs)?;
        self.vectored(iov, offset, libc::preadv)
    }

    /// Writes the pool buffers `segs` to the image at `offset`.
    pub fn write_from(
        &self,
        mem: &PoolGuestMemory,
        offset: u64,
        segs: &[Segment],
    ) -> io::Result<()> {
        let iov = Self::iovecs(mem, segs)?;
        // pwritev takes `*const iovec` like preadv; the signatures match.
        self.vectored(iov, offset, libc::pwritev)
    }

    /// Flushes written data to stable storage.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (o, l) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(o), Ok(l)) => (o, l),
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // SAFETY: fallocate on a valid fd we own, with integer arguments.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, o, l) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Discards `[offset, offset + len)`: the range reads back as zeros afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Writes zeroes to `[offset, offset + len)`, deallocating when `unmap` allows it.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && self.discard(offset, len).is_ok() {
            return Ok(());
        }
        if self
            .fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .is_ok()
        {
            return Ok(());
        }
        // Filesystems without ZERO_RANGE: write zeros in 64 KiB pieces.
        let zeros = vec![0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

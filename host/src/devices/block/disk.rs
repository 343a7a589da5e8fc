//! The raw image behind the block device. Data moves between the image and the pool with
//! `preadv`/`pwritev` straight into the pool mapping: no intermediate copy (the io_uring
//! engine, `uring.rs`, does the same in batches).
//!
//! Two cache modes, named as QEMU names them: `writeback` goes through the host's page
//! cache; `none` opens the image `O_DIRECT`. Direct I/O needs the file offset, the length
//! and the memory address aligned (the filesystem says how, `statx` `STATX_DIOALIGN`); a
//! request that is not goes through an aligned buffer of the device's own: reads read the
//! aligned span around it, writes read the partial blocks at either end, lay the request
//! over them and write the span (read-modify-write, one at a time).

use std::fs::{File, OpenOptions};
use std::io;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::request::{gather, scatter, Segment, ID_BYTES, SECTOR_SIZE};
use crate::pool::PoolGuestMemory;

/// Most iovecs one `preadv`/`pwritev` call takes (Linux `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;
/// Alignment assumed for direct I/O when the filesystem does not say (a 4 KiB-sector disk's,
/// which also satisfies a 512-byte one).
const DEFAULT_DIRECT_ALIGN: u64 = 4096;
/// Largest alignment taken from the filesystem: anything above is not a sector size, and
/// bounds the aligned buffers.
const MAX_DIRECT_ALIGN: u64 = 1 << 16;
/// Bytes written at once when zeroes are written by hand (filesystems without
/// `FALLOC_FL_ZERO_RANGE`).
const ZERO_CHUNK: u64 = 1 << 20;

/// How the image is cached, as QEMU names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Through the host's page cache; FLUSH makes the writes durable.
    #[default]
    Writeback,
    /// `O_DIRECT`: around the host's page cache, straight to the disk.
    None,
}

/// What direct I/O needs aligned, in bytes (powers of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectAlign {
    /// Memory addresses.
    pub mem: u64,
    /// File offsets and lengths.
    pub offset: u64,
}

/// A raw disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    capacity: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    /// `Some` when the image is open `O_DIRECT` (cache mode `none`).
    direct: Option<DirectAlign>,
    /// Held by a read-modify-write, so two never interleave on the same blocks.
    rmw: Mutex<()>,
}

/// A zeroed heap buffer aligned for direct I/O.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize, align: u64) -> io::Result<Self> {
        let align = usize::try_from(align.max(4096)).unwrap_or(4096);
        let layout = std::alloc::Layout::from_size_align(len.max(1), align)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(p).ok_or(io::ErrorKind::OutOfMemory)?;
        Ok(Self { ptr, layout })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `layout.size()` initialized (zeroed) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// What the filesystem asks of direct I/O on `file` (`statx`, Linux 6.1 and later), or
/// [`DEFAULT_DIRECT_ALIGN`] for what it does not say.
fn direct_align(file: &File) -> DirectAlign {
    // SAFETY: an all-zero `statx` is a valid value of the plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on an open fd with an empty path (AT_EMPTY_PATH) writes into `st`.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    let pick = |v: u32| {
        let v = u64::from(v);
        if rc == 0 && st.stx_mask & libc::STATX_DIOALIGN != 0 && v.is_power_of_two() {
            v.min(MAX_DIRECT_ALIGN)
        } else {
            DEFAULT_DIRECT_ALIGN
        }
    };
    DirectAlign {
        mem: pick(st.stx_dio_mem_align),
        offset: pick(st.stx_dio_offset_align).max(SECTOR_SIZE),
    }
}

/// Turns `O_DIRECT` on for an open file (an fd passed in may have been opened without it).
fn set_direct(file: &File) -> io::Result<()> {
    // SAFETY: fcntl with integer arguments on an open fd.
    let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl DiskImage {
    /// Opens `path`; the capacity is the file size rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    /// Wraps an open image (an fd passed in by a supervisor), cached through the page cache.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        Self::with_cache(file, read_only, CacheMode::Writeback)
    }

    /// Wraps an open image with cache mode `cache`. With [`CacheMode::None`] the file is
    /// switched to `O_DIRECT` (an error if its filesystem cannot do it) and the capacity is
    /// rounded down to the direct-I/O alignment: a tail a guest could only write by growing
    /// the file is not offered.
    pub fn with_cache(file: File, read_only: bool, cache: CacheMode) -> io::Result<Self> {
        let direct = match cache {
            CacheMode::Writeback => None,
            CacheMode::None => {
                set_direct(&file)?;
                Some(direct_align(&file))
            }
        };
        let meta = file.metadata()?;
        // A block device's size is where its end is; a file's is its length.
        let len = if meta.file_type().is_block_device() {
            (&file).seek(SeekFrom::End(0))?
        } else {
            meta.len()
        };
        let unit = direct.map_or(SECTOR_SIZE, |a| a.offset.max(SECTOR_SIZE));
        let capacity = len / unit * unit;
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
            direct,
            rmw: Mutex::new(()),
        })
    }

    /// The open image.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The direct-I/O alignment, when the image is open `O_DIRECT`.
    pub fn direct(&self) -> Option<DirectAlign> {
        self.direct
    }

    /// Whether a transfer of `segs` at `offset` can go to the image as it is: always
    /// through the page cache; with `O_DIRECT`, when the offset, every length and every
    /// address meet the alignment.
    pub fn transfer_aligned(&self, mem: &PoolGuestMemory, offset: u64, segs: &[Segment]) -> bool {
        let Some(a) = self.direct else {
            return true;
        };
        offset % a.offset == 0
            && segs.iter().all(|s| {
                u64::from(s.len) % a.offset == 0
                    && mem
                        .get_slice(GuestAddress(s.addr), s.len as usize)
                        .is_ok_and(|sl| (sl.ptr_guard().as_ptr() as u64) % a.mem == 0)
            })
    }

    /// The aligned span `[start, end)` around `[offset, offset + len)`; inside the image
    /// when the range is (the capacity is a multiple of the alignment).
    fn span(a: DirectAlign, offset: u64, len: u64) -> io::Result<(u64, u64)> {
        let start = offset / a.offset * a.offset;
        let end = offset
            .checked_add(len)
            .and_then(|e| e.checked_next_multiple_of(a.offset))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok((start, end))
    }

    /// An unaligned read under `O_DIRECT`: the aligned span into a buffer of our own, then
    /// the request's part of it into the pool.
    fn bounce_read(
        &self,
        a: DirectAlign,
        mem: &PoolGuestMemory,
        offset: u64,
        segs: &[Segment],
    ) -> io::Result<()> {
        let len: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
        let (start, end) = Self::span(a, offset, len)?;
        let span = usize::try_from(end - start).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut buf = AlignedBuf::new(span, a.mem)?;
        let buf = buf.as_mut();
        self.file.read_exact_at(buf, start)?;
        let from = (offset - start) as usize;
        scatter(mem, segs, &buf[from..from + len as usize]).map_err(io::Error::other)
    }

    /// Writes `len` bytes at `offset` under `O_DIRECT` whatever their alignment: the
    /// partial blocks at either end are read first, `fill` lays the new bytes over the
    /// middle, the span is written. One read-modify-write at a time.
    fn rmw_write(
        &self,
        a: DirectAlign,
        offset: u64,
        len: u64,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let (start, end) = Self::span(a, offset, len)?;
        let span = usize::try_from(end - start).map_err(|_| io::ErrorKind::InvalidInput)?;
        let mut buf = AlignedBuf::new(span, a.mem)?;
        let buf = buf.as_mut();
        let block = a.offset as usize;
        // A poisoned lock only means another write failed mid-way; the blocks are re-read.
        let _one_at_a_time = self.rmw.lock().unwrap_or_else(|p| p.into_inner());
        if offset != start {
            self.file.read_exact_at(&mut buf[..block], start)?;
        }
        if offset + len != end {
            // When the span is one block this reads it again: harmless.
            self.file
                .read_exact_at(&mut buf[span - block..], end - a.offset)?;
        }
        let from = (offset - start) as usize;
        fill(&mut buf[from..from + len as usize])?;
        self.file.write_all_at(buf, start)
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
        if let Some(a) = self.direct {
            if !self.transfer_aligned(mem, offset, segs) {
                return self.bounce_read(a, mem, offset, segs);
            }
        }
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
        if let Some(a) = self.direct {
            if !self.transfer_aligned(mem, offset, segs) {
                let len: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
                return self.rmw_write(a, offset, len, |dst| {
                    gather(mem, segs, dst).map_err(io::Error::other)
                });
            }
        }
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
        // Filesystems without ZERO_RANGE: write zeros in pieces.
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK);
            match self.direct {
                Some(a) => self.rmw_write(a, offset + done, n, |dst| {
                    dst.fill(0);
                    Ok(())
                })?,
                None => self
                    .file
                    .write_all_at(&vec![0u8; n as usize], offset + done)?,
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use std::io::Write;
    use vm_memory::Bytes;

    const BASE: u64 = 0x1_0000_0000;

    fn image(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 29 + i / 4096) as u8).collect();
        f.write_all(&data).unwrap();
        f.as_file().sync_all().unwrap();
        (f, data)
    }

    fn direct(f: &tempfile::NamedTempFile) -> DiskImage {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        DiskImage::with_cache(file, false, CacheMode::None).unwrap()
    }

    #[test]
    fn o_direct_with_unaligned_requests_returns_the_right_data() {
        let (f, mut data) = image(64 << 10);
        let disk = direct(&f);
        let a = disk.direct().expect("open O_DIRECT");
        assert!(a.offset >= 512 && a.mem >= 1, "{a:?}");
        let mut p = Pool::new(1 << 20).unwrap();
        p.place(Some(BASE));
        let mem = p.view().unwrap().unwrap().mem;
        // Aligned: straight through.
        let seg = [Segment {
            addr: BASE + 0x1_0000,
            len: 8192,
        }];
        assert!(disk.transfer_aligned(&mem, 8192, &seg));
        disk.read_into(&mem, 8192, &seg).unwrap();
        let mut got = vec![0u8; 8192];
        mem.read_slice(&mut got, GuestAddress(BASE + 0x1_0000))
            .unwrap();
        assert_eq!(got, data[8192..16384]);
        // Unaligned offset, length and address, two segments.
        let segs = [
            Segment {
                addr: BASE + 0x2_0000 + 3,
                len: 700,
            },
            Segment {
                addr: BASE + 0x3_0000 + 1,
                len: 1348,
            },
        ];
        assert!(!disk.transfer_aligned(&mem, 3 * 512 + 5, &segs));
        disk.read_into(&mem, 3 * 512 + 5, &segs).unwrap();
        let mut a1 = vec![0u8; 700];
        let mut a2 = vec![0u8; 1348];
        mem.read_slice(&mut a1, GuestAddress(BASE + 0x2_0000 + 3))
            .unwrap();
        mem.read_slice(&mut a2, GuestAddress(BASE + 0x3_0000 + 1))
            .unwrap();
        let off = 3 * 512 + 5;
        assert_eq!(a1, data[off..off + 700]);
        assert_eq!(a2, data[off + 700..off + 2048]);
        // Unaligned writes: a sector inside a block, and a range across a block boundary.
        for (off, len, addr) in [
            (512u64, 512u32, BASE + 9),
            (4096 - 1024, 3072, BASE + 0x100),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i as u8) ^ 0x5a).collect();
            mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            let seg = [Segment { addr, len }];
            disk.write_from(&mem, off, &seg).unwrap();
            data[off as usize..][..len as usize].copy_from_slice(&bytes);
        }
        // Through the page cache, the image holds exactly the writes.
        let now = std::fs::read(f.path()).unwrap();
        assert!(
            now == data,
            "the unaligned writes changed only their own bytes"
        );
    }

    #[test]
    fn o_direct_zeroes_without_zero_range_stay_inside_the_range() {
        let (f, mut data) = image(32 << 10);
        let disk = direct(&f);
        let a = disk.direct().unwrap();
        // The by-hand path (filesystems without ZERO_RANGE), at sector granularity.
        disk.rmw_write(a, 1536, 5120, |d| {
            d.fill(0);
            Ok(())
        })
        .unwrap();
        data[1536..1536 + 5120].fill(0);
        assert!(std::fs::read(f.path()).unwrap() == data);
    }

    #[test]
    fn cache_none_offers_only_whole_direct_blocks() {
        let (f, _) = image(64 << 10);
        f.as_file().set_len((64 << 10) + 512).unwrap();
        let disk = direct(&f);
        let a = disk.direct().unwrap();
        assert_eq!(disk.capacity() % a.offset, 0);
        assert!(disk.capacity() <= (64 << 10) + 512);
        let wb = DiskImage::open(f.path(), false).unwrap();
        assert_eq!(wb.capacity(), (64 << 10) + 512);
        assert!(wb.direct().is_none());
    }
}

//! Batched disk I/O through io_uring: the reads and writes of one pass over a queue go to
//! the kernel in one `io_uring_enter`, the pool is registered as a fixed buffer so reads
//! land in it directly, and the image is the ring's one registered file.
//!
//! io_uring operations do not pass through seccomp, so the ring is locked down before it
//! carries anything: it is created disabled (`IORING_SETUP_R_DISABLED`), the image and the
//! pool are registered, `IORING_REGISTER_RESTRICTIONS` allows only reads and writes
//! (plain, vectored and fixed-buffer) and only on registered file 0 (`IOSQE_FIXED_FILE`
//! required), and no registration after that; then it is enabled. Whatever a compromised
//! device thread puts on the ring, the kernel refuses any other opcode or file with
//! `EACCES`, and the thread's seccomp filter lets it call `io_uring_enter` and nothing that
//! makes or changes a ring. FLUSH, DISCARD and WRITE_ZEROES are plain calls made after the
//! ring is drained (a flush must follow the writes before it anyway), so `fsync` and
//! `fallocate` are not on the ring's list.

use std::fs::File;
use std::os::fd::AsRawFd;

use io_uring::{opcode, register::Restriction, squeue, types, IoUring};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::request::Segment;
use crate::pool::{PoolGuestMemory, PoolMapping};

/// The image: registered file 0.
const IMAGE: types::Fixed = types::Fixed(0);
/// Most segments one request may carry on the ring (Linux `UIO_MAXIOV`); more go the
/// synchronous way.
pub const MAX_RING_SEGMENTS: usize = 1024;

/// Why a ring could not be set up (the device then falls back to plain calls).
#[derive(Debug, Error)]
pub enum UringError {
    /// `io_uring_setup` failed: no io_uring in this kernel, `kernel.io_uring_disabled`, or
    /// a container profile that refuses it.
    #[error("io_uring_setup")]
    Setup(#[source] std::io::Error),
    /// Registering the image failed.
    #[error("registering the image with the ring")]
    RegisterFile(#[source] std::io::Error),
    /// Restricting the ring failed (kernels before 5.10).
    #[error("restricting the ring")]
    Restrict(#[source] std::io::Error),
    /// Enabling the restricted ring failed.
    #[error("enabling the ring")]
    Enable(#[source] std::io::Error),
}

/// A request on the ring, and what its completion needs.
#[derive(Debug)]
pub struct InFlight<T> {
    /// Whether it writes the image.
    pub write: bool,
    /// Image offset.
    pub offset: u64,
    /// The pool buffers.
    pub segs: Vec<Segment>,
    /// Total bytes of `segs`.
    pub len: u64,
    /// The caller's own (the chain it belongs to).
    pub tag: T,
    /// The iovecs of a vectored request, alive until it completes (only the kernel reads
    /// them).
    _iov: IoVecs,
}

/// iovecs naming pool memory, kept while the kernel may read them.
#[derive(Debug)]
struct IoVecs {
    _held: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into the pool mapping, shared memory that lives as long as the
// process; they move with the engine that owns them and are only read by the kernel.
unsafe impl Send for IoVecs {}

/// A request the ring finished.
#[derive(Debug)]
pub struct Finished<T> {
    /// The request.
    pub req: InFlight<T>,
    /// Bytes moved, or the error (`-errno` from the kernel).
    pub result: std::io::Result<u64>,
}

/// A request the ring did not take, handed back whole.
#[derive(Debug)]
pub struct Refused<T> {
    /// Why.
    pub error: PushError,
    /// The caller's own.
    pub tag: T,
    /// The segments it was given.
    pub segs: Vec<Segment>,
}

/// Why a request was not put on the ring.
#[derive(Debug, Error)]
pub enum PushError {
    /// Every slot is taken: finish what is on the ring first.
    #[error("the ring is full")]
    Full,
    /// A buffer is not in the pool mapping.
    #[error("a buffer at {0:#x} is outside the pool")]
    Buffer(u64),
    /// More segments than one vectored request takes.
    #[error("{0} segments, more than a vectored request takes")]
    TooManySegments(usize),
}

/// One ring, serving one queue's disk I/O. The thread that makes it must be the one that
/// uses it (the ring is single-issuer where the kernel supports it).
pub struct UringEngine<T> {
    ring: IoUring,
    /// The pool, registered as fixed buffer 0: `[start, start + len)` in this process.
    fixed: Option<(usize, usize)>,
    /// Requests on the ring, by `user_data`.
    slots: Vec<Option<InFlight<T>>>,
    free: Vec<u32>,
    /// Requests pushed and not yet reaped.
    in_flight: usize,
}

impl<T> std::fmt::Debug for UringEngine<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("fixed", &self.fixed.is_some())
            .field("entries", &self.slots.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// The ring's rules: reads and writes on registered file 0, nothing else.
fn restrictions() -> [Restriction; 8] {
    [
        Restriction::sqe_op(opcode::Read::CODE),
        Restriction::sqe_op(opcode::Write::CODE),
        Restriction::sqe_op(opcode::ReadFixed::CODE),
        Restriction::sqe_op(opcode::WriteFixed::CODE),
        Restriction::sqe_op(opcode::Readv::CODE),
        Restriction::sqe_op(opcode::Writev::CODE),
        Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
        Restriction::sqe_flags_allowed(squeue::Flags::FIXED_FILE.bits()),
    ]
}

impl<T> UringEngine<T> {
    /// A locked-down ring of `entries` slots on `image`, with `pool` registered as its fixed
    /// buffer when the kernel lets us (pinning counts against `RLIMIT_MEMLOCK` unless the
    /// process may lock memory; without it, reads and writes name pool addresses plainly).
    ///
    /// With `single_issuer`, only the thread that makes the ring may use it, which lets the
    /// kernel defer its completion work (below); without, any one thread at a time may (the
    /// rings of a multi-queue device are made here and used by each queue's worker).
    pub fn new(
        image: &File,
        entries: u32,
        pool: Option<PoolMapping>,
        single_issuer: bool,
    ) -> Result<Self, UringError> {
        let entries = entries.clamp(1, 4096).next_power_of_two();
        // One thread submits and reaps (the one that enables the ring), so the kernel's
        // completion work waits until it asks for completions (DEFER_TASKRUN, 6.1) instead
        // of interrupting whatever call the thread is in, `poll(2)` included. Older kernels:
        // without an interrupt where the kernel can (COOP_TASKRUN, 5.19), else plainly.
        let build = |flags: u8| {
            let mut b = IoUring::builder();
            b.setup_r_disabled().setup_cqsize(entries * 2);
            if flags == 2 {
                b.setup_single_issuer().setup_defer_taskrun();
            } else if flags == 1 {
                b.setup_coop_taskrun();
            }
            b.build(entries)
        };
        let ring = (if single_issuer { build(2) } else { build(1) })
            .or_else(|_| build(1))
            .or_else(|_| build(0))
            .map_err(UringError::Setup)?;
        let sub = ring.submitter();
        sub.register_files(&[image.as_raw_fd()])
            .map_err(UringError::RegisterFile)?;
        let fixed = pool.and_then(|p| {
            let iov = libc::iovec {
                iov_base: p.ptr.as_ptr().cast(),
                iov_len: p.len,
            };
            // SAFETY: the pool mapping lives as long as the process (the `Pool` owns it and
            // is never dropped while a device serves), so the registered range stays valid.
            match unsafe { sub.register_buffers(&[iov]) } {
                Ok(()) => Some((p.ptr.as_ptr() as usize, p.len)),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "the pool could not be registered with io_uring (RLIMIT_MEMLOCK?): \
                         disk I/O names pool addresses per request instead"
                    );
                    None
                }
            }
        });
        sub.register_restrictions(&mut restrictions())
            .map_err(UringError::Restrict)?;
        sub.register_enable_rings().map_err(UringError::Enable)?;
        let n = entries as usize;
        Ok(Self {
            ring,
            fixed,
            slots: (0..n).map(|_| None).collect(),
            free: (0..entries).rev().collect(),
            in_flight: 0,
        })
    }

    /// Whether the pool is registered as a fixed buffer (its pages pinned).
    pub fn pinned(&self) -> bool {
        self.fixed.is_some()
    }

    /// Requests pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether another request fits.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Puts a read (or write) of `segs` at image `offset` on the ring; it goes to the kernel
    /// with the next [`reap`](Self::reap) (or sooner, when the submission queue fills).
    /// The request keeps `segs` (handed back with it). Refused, it hands `tag` and `segs`
    /// back. A request of one segment (every 4 KiB one) allocates nothing here.
    pub fn push(
        &mut self,
        mem: &PoolGuestMemory,
        write: bool,
        offset: u64,
        segs: Vec<Segment>,
        tag: T,
    ) -> Result<(), Refused<T>> {
        let refuse = |error, tag, segs| Err(Refused { error, tag, segs });
        if segs.len() > MAX_RING_SEGMENTS {
            return refuse(PushError::TooManySegments(segs.len()), tag, segs);
        }
        let Some(&slot) = self.free.last() else {
            return refuse(PushError::Full, tag, segs);
        };
        let iovec = |s: &Segment| {
            mem.get_slice(GuestAddress(s.addr), s.len as usize)
                .map(|p| libc::iovec {
                    iov_base: p.ptr_guard_mut().as_ptr().cast(),
                    iov_len: p.len(),
                })
                .map_err(|_| PushError::Buffer(s.addr))
        };
        // One segment needs no iovec array: the entry names the buffer itself.
        let (one, iov) = match segs.as_slice() {
            [s] => match iovec(s) {
                Ok(v) => (Some(v), Vec::new()),
                Err(e) => return refuse(e, tag, segs),
            },
            many => match many.iter().map(iovec).collect::<Result<Vec<_>, _>>() {
                Ok(v) => (None, v),
                Err(e) => return refuse(e, tag, segs),
            },
        };
        let len: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
        let named = one.as_ref().map_or(&iov[..], std::slice::from_ref);
        let sqe = match (named, self.fixed) {
            ([one], Some((start, size)))
                if (one.iov_base as usize) >= start
                    && (one.iov_base as usize) + one.iov_len <= start + size =>
            {
                let (p, n) = (one.iov_base.cast::<u8>(), one.iov_len as u32);
                if write {
                    opcode::WriteFixed::new(IMAGE, p, n, 0)
                        .offset(offset)
                        .build()
                } else {
                    opcode::ReadFixed::new(IMAGE, p, n, 0)
                        .offset(offset)
                        .build()
                }
            }
            ([one], _) => {
                let (p, n) = (one.iov_base.cast::<u8>(), one.iov_len as u32);
                if write {
                    opcode::Write::new(IMAGE, p, n).offset(offset).build()
                } else {
                    opcode::Read::new(IMAGE, p, n).offset(offset).build()
                }
            }
            (many, _) => {
                let (p, n) = (many.as_ptr(), many.len() as u32);
                if write {
                    opcode::Writev::new(IMAGE, p, n).offset(offset).build()
                } else {
                    opcode::Readv::new(IMAGE, p, n).offset(offset).build()
                }
            }
        }
        .user_data(u64::from(slot));
        // Room in the submission queue: it has as many entries as there are slots, and
        // what was pushed before is submitted here when it is full.
        // SAFETY: every buffer named lies in the pool mapping, which outlives the ring; the
        // iovec array is kept in the slot until the request is reaped.
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                return refuse(PushError::Full, tag, segs);
            }
        }
        self.free.pop();
        self.slots[slot as usize] = Some(InFlight {
            write,
            offset,
            segs,
            len,
            tag,
            _iov: IoVecs { _held: iov },
        });
        self.in_flight += 1;
        Ok(())
    }

    /// Submits everything pushed, in one call, and waits until every request is back;
    /// hands each to `done`.
    pub fn reap(&mut self, mut done: impl FnMut(Finished<T>)) {
        while self.in_flight > 0 {
            match self.ring.submit_and_wait(self.in_flight) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // Nothing the ring can still do: fail what is left.
                    tracing::error!(error = %e, "io_uring_enter failed");
                    for slot in 0..self.slots.len() {
                        if let Some(req) = self.slots[slot].take() {
                            self.free.push(slot as u32);
                            done(Finished {
                                req,
                                result: Err(std::io::Error::from_raw_os_error(
                                    e.raw_os_error().unwrap_or(libc::EIO),
                                )),
                            });
                        }
                    }
                    self.in_flight = 0;
                    return;
                }
            }
            let cq: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (ud, res) in cq {
                let slot = ud as usize;
                let Some(req) = self.slots.get_mut(slot).and_then(Option::take) else {
                    continue;
                };
                self.free.push(slot as u32);
                self.in_flight -= 1;
                let result = if res < 0 {
                    Err(std::io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as u64)
                };
                done(Finished { req, result });
            }
        }
    }

    /// Submits one raw entry and waits for its result: for tests of the ring's rules.
    #[cfg(test)]
    fn raw(&mut self, sqe: squeue::Entry) -> i32 {
        // SAFETY: the tests' entries name no memory, or memory alive across the wait.
        unsafe { self.ring.submission().push(&sqe.user_data(u64::MAX)) }.unwrap();
        self.ring.submit_and_wait(1).unwrap();
        let c = self.ring.completion().next().unwrap();
        c.result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;
    use std::io::{Read, Seek, Write};
    use vm_memory::Bytes;

    const BASE: u64 = 0x1_0000_0000;

    fn image(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        f.write_all(&data).unwrap();
        (f, data)
    }

    fn pool() -> (Pool, std::sync::Arc<PoolGuestMemory>) {
        let mut p = Pool::new(1 << 20).unwrap();
        p.place(Some(BASE));
        let v = p.view().unwrap().unwrap();
        (p, v.mem)
    }

    #[test]
    fn ring_refuses_an_opcode_off_its_list_and_a_file_not_registered() {
        let (f, _) = image(8192);
        let mut e = UringEngine::<()>::new(f.as_file(), 8, None, true).unwrap();
        // fsync is not on the list, even on the registered file.
        assert_eq!(e.raw(opcode::Fsync::new(IMAGE).build()), -libc::EACCES);
        // Nor is opening a file.
        let path = c"/etc/passwd";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build();
        assert_eq!(e.raw(open), -libc::EACCES);
        // A read on a plain fd (not the registered file) is refused too.
        let mut buf = [0u8; 16];
        let plain =
            opcode::Read::new(types::Fd(f.as_file().as_raw_fd()), buf.as_mut_ptr(), 16).build();
        assert_eq!(e.raw(plain), -libc::EACCES);
        // The same read on registered file 0 is allowed.
        let fixed = opcode::Read::new(IMAGE, buf.as_mut_ptr(), 16).build();
        assert_eq!(e.raw(fixed), 16);
        assert_eq!(buf[1], 38);
    }

    #[test]
    fn a_restricted_ring_refuses_new_registrations() {
        let (f, _) = image(4096);
        let e = UringEngine::<()>::new(f.as_file(), 8, None, true).unwrap();
        let err = e
            .ring
            .submitter()
            .register_files_update(0, &[f.as_file().as_raw_fd()])
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn batched_reads_and_writes_land_in_the_pool_and_the_image() {
        let (mut f, data) = image(64 << 10);
        let (p, mem) = pool();
        for fixed in [true, false] {
            let mapping = fixed.then(|| p.mapping());
            let mut e = UringEngine::<u16>::new(f.as_file(), 16, mapping, true).unwrap();
            assert_eq!(e.pinned(), fixed, "root may pin the 1 MiB pool");
            // Eight reads of 4 KiB in one batch, the last split over two segments.
            for i in 0..8u16 {
                let addr = BASE + u64::from(i) * 8192;
                let segs = if i == 7 {
                    vec![
                        Segment { addr, len: 1024 },
                        Segment {
                            addr: addr + 4096,
                            len: 3072,
                        },
                    ]
                } else {
                    vec![Segment { addr, len: 4096 }]
                };
                e.push(&mem, false, u64::from(i) * 4096, segs, i).unwrap();
            }
            let mut seen = Vec::new();
            e.reap(|d| {
                assert_eq!(d.result.unwrap(), 4096);
                seen.push(d.req.tag);
            });
            seen.sort();
            assert_eq!(seen, (0..8).collect::<Vec<_>>());
            for i in 0..7u64 {
                let mut got = vec![0u8; 4096];
                mem.read_slice(&mut got, GuestAddress(BASE + i * 8192))
                    .unwrap();
                assert_eq!(got, data[i as usize * 4096..][..4096]);
            }
            let mut got = vec![0u8; 1024];
            mem.read_slice(&mut got, GuestAddress(BASE + 7 * 8192))
                .unwrap();
            assert_eq!(got, data[7 * 4096..][..1024]);
            // A write from the pool.
            mem.write_slice(&[0xa5; 4096], GuestAddress(BASE + 0x8_0000))
                .unwrap();
            let seg = vec![Segment {
                addr: BASE + 0x8_0000,
                len: 4096,
            }];
            e.push(&mem, true, 12 * 4096, seg, 99).unwrap();
            e.reap(|d| assert_eq!(d.result.unwrap(), 4096));
            let mut back = vec![0u8; 4096];
            f.as_file_mut()
                .seek(std::io::SeekFrom::Start(12 * 4096))
                .unwrap();
            f.as_file_mut().read_exact(&mut back).unwrap();
            assert_eq!(back, vec![0xa5; 4096]);
            f.as_file_mut()
                .seek(std::io::SeekFrom::Start(12 * 4096))
                .unwrap();
            f.as_file_mut()
                .write_all(&data[12 * 4096..][..4096])
                .unwrap();
        }
    }

    #[test]
    fn a_buffer_outside_the_pool_and_a_full_ring_are_refused() {
        let (f, _) = image(8192);
        let (_p, mem) = pool();
        let mut e = UringEngine::<()>::new(f.as_file(), 2, None, true).unwrap();
        let out = vec![Segment {
            addr: BASE - 4096,
            len: 4096,
        }];
        assert!(matches!(
            e.push(&mem, false, 0, out.clone(), ()),
            Err(Refused { error: PushError::Buffer(_), segs, .. }) if segs == out
        ));
        let seg = || {
            vec![Segment {
                addr: BASE,
                len: 512,
            }]
        };
        e.push(&mem, false, 0, seg(), ()).unwrap();
        e.push(&mem, false, 512, seg(), ()).unwrap();
        assert!(!e.has_room());
        assert!(matches!(
            e.push(&mem, false, 0, seg(), ()),
            Err(Refused { error: PushError::Full, segs, .. }) if segs == seg()
        ));
        let mut n = 0;
        e.reap(|_| n += 1);
        assert_eq!((n, e.in_flight()), (2, 0));
    }
}

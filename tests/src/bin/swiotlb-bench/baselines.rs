//! Baselines in the same run, between this process and a child of it (two processes, as
//! host and guest are): a shared-memory ping-pong, an eventfd round trip, memcpy bandwidth
//! at the request sizes; and the device's own 4 KiB disk access.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::cli::Config;
use crate::disk_limit::disk_4k_us;
use crate::error::BenchError;
use crate::pair::Fixture;
use crate::stats::{median, quantile};
use crate::workloads::{LARGE, SMALL};

/// The baselines the goals are judged against, and how long each baseline ran.
pub(crate) struct Baselines {
    /// How long each baseline runs.
    pub(crate) time: Duration,
    /// Shared-memory ping-pong, µs.
    pub(crate) shm: f64,
    /// Eventfd round trip, median, µs.
    pub(crate) efd_med: f64,
    /// A 4 KiB `pread` at a random offset of the image, µs.
    pub(crate) pread: f64,
}

/// Measures the baselines in this order: the ping-pong, the eventfd round trip, memcpy;
/// then makes the disk image every host of the run shares, and measures the device's own
/// 4 KiB `pread` and `pwrite` on it.
pub(crate) fn measure_baselines(
    cfg: &Config,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) -> Result<(Baselines, Fixture), BenchError> {
    let base_t = if cfg.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let shm = shm_pingpong(base_t)?;
    let (efd_med, efd_p99) = eventfd_rtt(base_t)?;
    let mc_small = memcpy_gbs(SMALL);
    let mc_large = memcpy_gbs(LARGE);
    let fx = Fixture::new(cfg.disk_bytes)?;
    let pread = disk_4k_us(&fx.disk, cfg.disk_bytes, base_t, false)?;
    let pwrite = disk_4k_us(&fx.disk, cfg.disk_bytes, base_t, true)?;
    say(format!("baselines (two processes): shared-memory ping-pong {shm:.3} us, eventfd round trip median {efd_med:.2} us (p99 {efd_p99:.2}); memcpy 4 KiB {mc_small:.1} GB/s, 128 KiB {mc_large:.1} GB/s"));
    out.insert("shm_pingpong_us".into(), json!(shm));
    out.insert("eventfd_rtt_us".into(), json!(efd_med));
    out.insert("eventfd_rtt_p99_us".into(), json!(efd_p99));
    out.insert("memcpy_4k_gbs".into(), json!(mc_small));
    out.insert("memcpy_128k_gbs".into(), json!(mc_large));
    say(format!(
        "  the device's own disk access, 4 KiB at random offsets of the image (page cache): pread {pread:.3} us (at most {:.0} k/s on one thread), pwrite {pwrite:.3} us (at most {:.0} k/s)",
        1e3 / pread,
        1e3 / pwrite
    ));
    out.insert("pread_4k_us".into(), json!(pread));
    out.insert("pwrite_4k_us".into(), json!(pwrite));
    Ok((
        Baselines {
            time: base_t,
            shm,
            efd_med,
            pread,
        },
        fx,
    ))
}

/// The baselines' child: `--child shm FD` answers each ping in the shared page with a
/// pong; `--child eventfd A B` answers each signal on A with one on B. Ends when the parent
/// writes the stop value or goes away.
pub(crate) fn child(args: &[String]) -> ExitCode {
    let fd = |i: usize| -> Option<RawFd> { args.get(i)?.parse().ok() };
    match (args.first().map(String::as_str), fd(1), fd(2)) {
        (Some("shm"), Some(f), _) => {
            // SAFETY: the parent passed this memfd to us; we own it from here.
            let file = unsafe { File::from_raw_fd(f) };
            let Ok(page) = SharedPage::map(&file) else {
                return ExitCode::FAILURE;
            };
            let (ping, pong) = (page.cell(0), page.cell(64));
            let mut last = 0;
            loop {
                let v = ping.load(Ordering::Acquire);
                if v == u64::MAX {
                    return ExitCode::SUCCESS;
                }
                if v != last {
                    last = v;
                    pong.store(v, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        (Some("eventfd"), Some(a), Some(b)) => {
            // SAFETY: the parent passed these eventfds to us; we own them from here.
            let (a, b) = unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) };
            loop {
                match efd_read(&a) {
                    Some(v) if v < u64::MAX - 1 => efd_write(&b, 1),
                    _ => return ExitCode::SUCCESS,
                }
            }
        }
        _ => ExitCode::FAILURE,
    }
}

/// One shared page (a memfd) mapped in this process.
struct SharedPage {
    ptr: *mut u8,
}

impl SharedPage {
    const LEN: usize = 4096;

    fn map(file: &File) -> std::io::Result<Self> {
        // SAFETY: maps one page of a file we hold, shared; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr: p.cast() })
    }

    /// The 8-byte atomic at `offset` (a multiple of 8 inside the page).
    fn cell(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= Self::LEN);
        // SAFETY: in bounds and aligned (the page is page-aligned); AtomicU64 has the layout
        // of u64, and the other process only touches it atomically too.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU64>() }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), Self::LEN) };
    }
}

fn efd(flags: libc::c_int) -> Result<OwnedFd, BenchError> {
    // SAFETY: eventfd with constant flags, checked.
    let fd = unsafe { libc::eventfd(0, flags) };
    if fd < 0 {
        return Err(BenchError::Eventfd(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn efd_read(fd: &OwnedFd) -> Option<u64> {
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a local buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    (n == 8).then(|| u64::from_ne_bytes(v))
}

fn efd_write(fd: &OwnedFd, v: u64) {
    let b = v.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local buffer.
    unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 8) };
}

/// Starts this binary as the baselines' child with `fds` inherited (and no others).
fn spawn_child(mode: &str, fds: &[RawFd]) -> Result<Child, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::LocateSelf)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--child").arg(mode);
    for f in fds {
        cmd.arg(f.to_string());
    }
    let keep: Vec<RawFd> = fds.to_vec();
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl) are made.
    unsafe {
        cmd.pre_exec(move || {
            for &f in &keep {
                if libc::fcntl(f, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(BenchError::StartChild)
}

/// Round trips through a shared page, both processes spinning: median of batches, in µs.
fn shm_pingpong(total: Duration) -> Result<f64, BenchError> {
    // SAFETY: memfd_create with a constant name; checked.
    let fd = unsafe { libc::memfd_create(c"swiotlb-bench-pingpong".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(BenchError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(SharedPage::LEN as u64)
        .map_err(BenchError::SizePage)?;
    let page = SharedPage::map(&file).map_err(BenchError::MapPage)?;
    let mut kid = spawn_child("shm", &[file.as_raw_fd()])?;
    let (ping, pong) = (page.cell(0), page.cell(64));
    let mut v = 0u64;
    let round_trip = |v: &mut u64| -> Result<(), BenchError> {
        *v += 1;
        ping.store(*v, Ordering::Release);
        let t = Instant::now();
        while pong.load(Ordering::Acquire) != *v {
            std::hint::spin_loop();
            if t.elapsed() > Duration::from_secs(5) {
                return Err(BenchError::PingPongChildSilent);
            }
        }
        Ok(())
    };
    round_trip(&mut v)?; // the child is up
    let mut per = Vec::new();
    let end = Instant::now() + total;
    while Instant::now() < end {
        let t = Instant::now();
        for _ in 0..1000 {
            round_trip(&mut v)?;
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    ping.store(u64::MAX, Ordering::Release);
    let _ = kid.wait();
    Ok(median(&mut per))
}

/// Round trips through two eventfds, both processes sleeping in read: (median, p99) in µs.
fn eventfd_rtt(total: Duration) -> Result<(f64, f64), BenchError> {
    let (a, b) = (efd(libc::EFD_CLOEXEC)?, efd(libc::EFD_CLOEXEC)?);
    let mut kid = spawn_child("eventfd", &[a.as_raw_fd(), b.as_raw_fd()])?;
    efd_write(&a, 1);
    efd_read(&b).ok_or(BenchError::EventfdChildSilent)?;
    let mut samples = Vec::new();
    let end = Instant::now() + total;
    while Instant::now() < end {
        let t = Instant::now();
        efd_write(&a, 1);
        efd_read(&b).ok_or(BenchError::EventfdChildSilent)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    efd_write(&a, u64::MAX - 1);
    let _ = kid.wait();
    samples.sort_by(f64::total_cmp);
    Ok((quantile(&samples, 0.5), quantile(&samples, 0.99)))
}

/// memcpy bandwidth at `size` between two page-aligned buffers, warm: GB/s (median of 5).
fn memcpy_gbs(size: usize) -> f64 {
    let mut src = AlignedBuf::new(size);
    let mut dst = AlignedBuf::new(size);
    src.as_mut().fill(0x5a);
    let iters = (256 << 20) / size;
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            dst.as_mut()
                .copy_from_slice(std::hint::black_box(src.as_mut()));
            std::hint::black_box(dst.as_mut());
        }
        v.push((iters * size) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    median(&mut v)
}

/// A page-aligned heap buffer.
pub(crate) struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), 4096).expect("page-aligned layout")
    }

    pub(crate) fn new(len: usize) -> Self {
        // SAFETY: a non-zero-sized layout; null is handled.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        Self { ptr, len }
    }

    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialised bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

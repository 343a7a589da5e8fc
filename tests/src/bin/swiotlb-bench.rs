//! `swiotlb-bench`: the end-to-end benchmark. The real `swiotlb-host` binary (sandboxed,
//! attestation required, the emulated platform admitted) serves a disk image in the page
//! cache; this process is the guest: the real driver over the vfio-user client, every byte
//! bounced through the pool. Measured:
//!
//! - 4 KiB random reads and writes at queue depth 1 and 32: IOPS, median and p99 latency
//!   (post to completion, as the driver sees it);
//! - 128 KiB sequential reads and writes: MiB/s;
//!
//! in two notification modes:
//!
//! - **polling**: the host polls the rings for `--poll-us` after each request before it
//!   sleeps, the driver polls the used ring as long before it sleeps, and each side asks for
//!   a doorbell or an interrupt (EVENT_IDX) only when it goes to sleep;
//! - **interrupt**: neither polls; every doorbell is an ioeventfd the host sleeps on
//!   (DEVICE_GET_REGION_IO_FDS) and every completion an MSI-X eventfd the driver sleeps on:
//!   no socket message per request.
//!
//! and, on one pair in polling mode, what the guest disk's ublk server pays for keeping its
//! own buffers (a second copy of every byte, between the request's pages and that buffer)
//! at queue depth 32 and 8, as a ratio to one copy;
//! - multi-queue: 4 KiB random reads at a total QD32 on a host of one queue and of two
//!   (`--queues 2`, QD16 on each, a driver thread per queue), polled and in interrupt mode,
//!   round after round beside the disk path's own limit on one thread and on two
//!   (`queue_scaling_2_over_1`, `queue_scaling_2_over_1_interrupt`,
//!   `disk_limit_scaling_2_over_1`): what the device scales to beside what the machine does;
//!
//! Baselines in the same run, between this process and a child of it (two processes, as
//! host and guest are): a shared-memory ping-pong (both spin), an eventfd round trip (both
//! sleep), and memcpy bandwidth at the request sizes. The disk path's own limit: the same
//! image read 4 KiB at random at QD32 with the hosts' engine (`--io-engine`, the host's own
//! ring code) and thread count, no guest and no pool (`disk_limit_iops`), measured again
//! after every round of the polled QD32 workload so each ratio shares that moment's load;
//! and its QD1 latency (`disk_qd1_us`, a mean under load; the QD1 goal is judged against the
//! `pread` median, which is what the host does for a lone read). The CPU time each request
//! costs the host process and the driver's thread, against what a read costs the disk path
//! alone (`disk_limit_cpu_us`): a ratio that other processes' load changes far less. Then audit off, summary and full in
//! polling mode at queue depth 32, a fresh host per measurement, interleaved round after
//! round; the ratios to "off" are medians of per-round ratios.
//!
//! `swiotlb-bench [--quick] [--json] [--host-bin PATH] [--poll-us N] [--only W1,W2]
//! [--audit-only] [--audit-dir DIR]` (`--help` says more). Figures are printed,
//! goals are marked MET or MISSED; nothing here passes or fails on a time. The exit status is
//! non-zero only when something does not work (the host does not start, I/O fails, data
//! read back differs).

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::builder::PossibleValuesParser;
use clap::Parser;
use serde_json::{json, Map, Value};
use swiotlb_attest::emulated::{EmulatedError, Signer};
use swiotlb_guest::attest::Emulated;
use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::pci::PciError;
use swiotlb_guest::{BlockDriver, BlockError, Options};
use swiotlb_host::devices::block::request::Segment;
use swiotlb_host::devices::block::uring::UringEngine;
use swiotlb_host::pool::{Pool, PoolError};
use swiotlb_shared::error_chain;
use thiserror::Error;

/// Request size of the random workloads.
const SMALL: usize = 4096;
/// Request size of the sequential workloads.
const LARGE: usize = 128 << 10;
/// Queue depth of the sequential workloads (4 MiB in flight at 32 would crowd a 16 MiB
/// pool's queue area for no gain: 8 keeps the device busy).
const LARGE_QD: u16 = 8;
/// Requests per driver call at queue depth 32: long enough that draining the tail of a call
/// (the depth falls from 32 to 0) is a small part of it.
const BATCH: usize = 1024;
/// Host polling budget in polling mode, microseconds.
const DEFAULT_POLL_US: u64 = 50;

/// Goals of the issue, as ratios or figures measured in the same run: QD32 polled reads
/// at this share of the disk path's own limit, QD1 polled within this much of the disk's
/// own 4 KiB read latency, QD1 with interrupts within this multiple of an eventfd round trip.
const GOAL_QD32_VS_DISK_LIMIT: f64 = 0.9;
const GOAL_QD1_OVER_DISK_US: f64 = 0.5;
const GOAL_INTERRUPT_VS_EVENTFD: f64 = 1.5;
/// Queue depth of the disk limit, as of the QD32 workload.
const LIMIT_QD: usize = 32;
/// Where the disk limit's buffer sits on its (pretend) bus: anywhere will do.
const LIMIT_BASE: u64 = 1 << 32;
const GOAL_AUDIT_FULL_VS_OFF: f64 = 0.90;

/// End-to-end benchmark of swiotlb-host and the guest driver; see BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-bench")]
struct Cli {
    /// Short mode: one round of 250 ms per workload, a 64 MiB disk, 3 audit rounds.
    #[arg(long)]
    quick: bool,
    /// The report on stderr; stdout holds only the JSON object.
    #[arg(long)]
    json: bool,
    /// The swiotlb-host binary (default: the one beside swiotlb-bench).
    #[arg(long, value_name = "PATH")]
    host_bin: Option<PathBuf>,
    /// Host polling budget in polling mode, microseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POLL_US,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    poll_us: u64,
    /// Run only these workloads, and skip the audit comparison.
    #[arg(long, value_name = "W1,W2", value_delimiter = ',',
          value_parser = PossibleValuesParser::new(WORKLOADS.map(|w| w.name)))]
    only: Vec<String>,
    /// Run only the audit comparison.
    #[arg(long)]
    audit_only: bool,
    /// Rounds of the audit comparison (default: 11, 3 with --quick). Per-round ratios
    /// of two audit modes that cost the same move by several per cent here: more rounds
    /// steady the medians.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    audit_rounds: Option<u64>,
    /// Where the hosts write their audit logs (default: the run's temporary directory).
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// The hosts' disk engine (`swiotlb-host --io-engine`), used for the disk limit too.
    #[arg(long, value_name = "ENGINE", default_value = "uring",
          value_parser = PossibleValuesParser::new(["uring", "sync"]))]
    io_engine: String,
    /// Leave polling hosts and drivers wherever the scheduler puts them. By default, on a
    /// machine with two CPUs or more, a polling host runs on CPU 1 and the driver's thread
    /// on CPU 0 while the pair runs: a polling side that shares its CPU with the side it
    /// waits for spins its whole budget before the other can run. Interrupt-mode pairs are
    /// never pinned (pinned, a woken side waits for its own CPU even when the other is
    /// idle: 30-43 us instead of 11-14 us at QD1 here).
    #[arg(long)]
    no_pin: bool,
    /// The baselines' child (this binary runs itself with it): `shm FD` or `eventfd A B`.
    #[arg(long, hide = true, num_args = 2..=3, value_names = ["MODE", "FD"])]
    child: Option<Vec<String>>,
}

/// Why the benchmark could not measure: something does not work.
#[derive(Debug, Error)]
enum BenchError {
    /// This executable's path is unknown.
    #[error("locating swiotlb-bench")]
    LocateSelf(#[source] io::Error),
    /// No host binary beside this one.
    #[error("{} not found beside swiotlb-bench: build both with `cargo build --release -p swiotlb-host -p swiotlb-tests --bins`, or name it with --host-bin", .0.display())]
    HostMissing(PathBuf),
    /// An eventfd cannot be made.
    #[error("eventfd")]
    Eventfd(#[source] io::Error),
    /// The baselines' child cannot be started.
    #[error("starting the baseline child")]
    StartChild(#[source] io::Error),
    /// The ping-pong page cannot be made.
    #[error("memfd_create")]
    Memfd(#[source] io::Error),
    /// The ping-pong page cannot be sized.
    #[error("sizing the ping-pong page")]
    SizePage(#[source] io::Error),
    /// The ping-pong page cannot be mapped.
    #[error("mapping the ping-pong page")]
    MapPage(#[source] io::Error),
    /// The shared-memory child stopped answering.
    #[error("the ping-pong child stopped answering")]
    PingPongChildSilent,
    /// The eventfd child stopped answering.
    #[error("the eventfd child did not answer")]
    EventfdChildSilent,
    /// The image cannot be opened for the pread baseline.
    #[error("opening the image")]
    OpenImage(#[source] io::Error),
    /// The pread or pwrite baseline failed.
    #[error("reading or writing the image")]
    ImageIo(#[source] io::Error),
    /// The temporary directory cannot be made.
    #[error("temporary directory")]
    TempDir(#[source] io::Error),
    /// The disk image cannot be created.
    #[error("creating the disk image")]
    CreateDisk(#[source] io::Error),
    /// The disk image cannot be filled.
    #[error("writing the disk image")]
    WriteDisk(#[source] io::Error),
    /// The emulated ARK cannot be made or used.
    #[error("emulated ARK")]
    EmulatedArk(#[source] EmulatedError),
    /// The emulated ARK cannot be written.
    #[error("writing the emulated ARK")]
    WriteArk(#[source] io::Error),
    /// The host cannot be started.
    #[error("starting {}", .0.display())]
    StartHost(PathBuf, #[source] io::Error),
    /// The host ended before its socket appeared.
    #[error("swiotlb-host exited before listening: {0}")]
    HostExitedEarly(ExitStatus),
    /// The host's socket did not appear.
    #[error("swiotlb-host did not start listening in 10 s")]
    HostNotListening,
    /// The driver cannot connect to the host.
    #[error("connecting")]
    Connect(#[source] PciError),
    /// The driver cannot open the device.
    #[error("opening the device")]
    OpenDevice(#[source] BlockError),
    /// The device served without accepting the evidence.
    #[error("attestation not accepted: {0}")]
    NotAttested(String),
    /// The host ended with a failure.
    #[error("swiotlb-host ended with {0}")]
    HostExit(ExitStatus),
    /// The host did not end after its session.
    #[error("swiotlb-host did not exit after its session")]
    HostDidNotExit,
    /// The host cannot be waited for.
    #[error("waiting for swiotlb-host")]
    WaitHost(#[source] io::Error),
    /// A workload's I/O failed.
    #[error("{0}")]
    Workload(&'static str, #[source] BlockError),
    /// The data check's write failed.
    #[error("check write")]
    CheckWrite(#[source] BlockError),
    /// The data check's read failed.
    #[error("check read")]
    CheckRead(#[source] BlockError),
    /// The data check read back something else.
    #[error("data read back differs from what was written")]
    DataDiffers,
    /// The host offered no ioeventfd doorbell.
    #[error("the host offered no doorbell eventfd")]
    NoDoorbellEventfd,
    /// The disk limit's buffer cannot be made.
    #[error("the disk limit's buffer")]
    LimitBuffer(#[source] PoolError),
    /// A read of the disk limit failed.
    #[error("a read of the disk limit")]
    LimitRead(#[source] io::Error),
    /// A disk-limit thread panicked.
    #[error("a disk-limit thread failed")]
    LimitThread,
}

/// What this run measures, and how long.
struct Config {
    quick: bool,
    json: bool,
    host_bin: PathBuf,
    poll: Duration,
    /// How long each workload runs per round.
    slice: Duration,
    /// Rounds of every workload (the figure is the median).
    rounds: usize,
    /// Rounds of the audit comparison.
    audit_rounds: usize,
    disk_bytes: u64,
    /// Run only these workloads (names), and skip the audit comparison; empty: everything.
    only: Vec<String>,
    /// Where the hosts write their audit logs (default: the run's temporary directory).
    audit_dir: Option<PathBuf>,
    /// Run only the audit comparison.
    audit_only: bool,
    /// The hosts' disk engine.
    io_engine: String,
    /// Pin each polling host to CPU 1 and the driver's thread to CPU 0 while the pair runs.
    pin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(args) = &cli.child {
        return child(args);
    }
    match Config::new(cli).and_then(|c| run(&c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swiotlb-bench: FAILED: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

impl Config {
    fn new(cli: Cli) -> Result<Self, BenchError> {
        let quick = cli.quick;
        let host_bin = match cli.host_bin {
            Some(p) => p,
            None => sibling("swiotlb-host")?,
        };
        Ok(Self {
            quick,
            json: cli.json,
            host_bin,
            poll: Duration::from_micros(cli.poll_us),
            slice: Duration::from_millis(if quick { 250 } else { 1000 }),
            rounds: if quick { 1 } else { 3 },
            audit_rounds: cli
                .audit_rounds
                .map_or(if quick { 3 } else { 11 }, |n| n as usize),
            disk_bytes: if quick { 64 << 20 } else { 256 << 20 },
            only: cli.only,
            audit_dir: cli.audit_dir,
            audit_only: cli.audit_only,
            io_engine: cli.io_engine,
            pin: !cli.no_pin && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        })
    }
}

/// A workspace binary beside this one.
fn sibling(name: &str) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::LocateSelf)?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(BenchError::HostMissing(p))
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p`-quantile (0..1) of sorted samples, nearest rank.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------------------------
// Baselines

/// The baselines' child: `--child shm FD` answers each ping in the shared page with a
/// pong; `--child eventfd A B` answers each signal on A with one on B. Ends when the parent
/// writes the stop value or goes away.
fn child(args: &[String]) -> ExitCode {
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

/// A 4 KiB `pread` (or `pwrite`) at random 4 KiB-aligned offsets of the image (in the
/// page cache, as the device reads and writes it): median of batches of 1000, in µs.
fn disk_4k_us(
    disk: &std::path::Path,
    size: u64,
    total: Duration,
    write: bool,
) -> Result<f64, BenchError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(disk)
        .map_err(BenchError::OpenImage)?;
    let mut buf = AlignedBuf::new(SMALL);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let blocks = size / SMALL as u64;
    let mut per = Vec::new();
    let end = Instant::now() + total;
    while Instant::now() < end {
        let t = Instant::now();
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = x % blocks * SMALL as u64;
            if write {
                f.write_all_at(buf.as_mut(), at)
            } else {
                f.read_exact_at(buf.as_mut(), at)
            }
            .map_err(BenchError::ImageIo)?;
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / 1000.0);
    }
    Ok(median(&mut per))
}

/// The disk path's own limit: 4 KiB reads at random 4 KiB-aligned offsets of the image,
/// `qd` in flight split over `threads` threads, each made as a device thread of the host
/// makes them: with the host's own ring code (`UringEngine`: a batch of `qd / threads`
/// reads submitted together and reaped, into a registered memfd mapping like the pool), or
/// with `pread` for the sync engine and for a lone request (depth 1), as the host does. No
/// guest, no rings, no pool checks: IOPS.
fn disk_limit_iops(
    disk: &std::path::Path,
    size: u64,
    total: Duration,
    uring: bool,
    threads: usize,
    qd: usize,
) -> Result<f64, BenchError> {
    Ok(disk_limit(disk, size, total, uring, threads, qd)?.0)
}

/// [`disk_limit_iops`], with the CPU time its threads spent per read (µs).
fn disk_limit(
    disk: &std::path::Path,
    size: u64,
    total: Duration,
    uring: bool,
    threads: usize,
    qd: usize,
) -> Result<(f64, f64), BenchError> {
    let per = (qd / threads).max(1);
    let start = std::sync::Barrier::new(threads);
    let results: Vec<Result<(u64, f64, f64), BenchError>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || limit_thread(disk, size, total, uring, per, t as u64, start))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::LimitThread)))
            .collect()
    });
    let mut n = 0u64;
    let mut secs = 0f64;
    let mut cpu = 0f64;
    for r in results {
        let (k, t, c) = r?;
        n += k;
        secs = secs.max(t);
        cpu += c;
    }
    Ok((n as f64 / secs, cpu * 1e6 / n as f64))
}

/// One thread of [`disk_limit_iops`]: reads done and seconds taken.
fn limit_thread(
    disk: &std::path::Path,
    size: u64,
    total: Duration,
    uring: bool,
    per: usize,
    seed: u64,
    start: &std::sync::Barrier,
) -> Result<(u64, f64, f64), BenchError> {
    use std::os::unix::fs::FileExt;
    let f = File::open(disk).map_err(BenchError::OpenImage)?;
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let blocks = size / SMALL as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % blocks * SMALL as u64
    };
    let mut pool = Pool::new(1 << 20).map_err(BenchError::LimitBuffer)?;
    pool.place(Some(LIMIT_BASE));
    let mem = pool
        .view()
        .map_err(BenchError::LimitBuffer)?
        .map(|v| v.mem)
        .ok_or(BenchError::LimitThread)?;
    let mut ring = if uring {
        Some(
            UringEngine::<()>::new(&f, 256, Some(pool.mapping()), true)
                .map_err(|e| BenchError::LimitRead(io::Error::other(e)))?,
        )
    } else {
        None
    };
    let mut buf = AlignedBuf::new(SMALL);
    start.wait();
    let cpu = thread_cpu_s();
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < total {
        // A lone request goes the plain way in the host too (`Block::flush`).
        match ring.as_mut().filter(|_| per > 1) {
            Some(r) => {
                for i in 0..per {
                    let seg = Segment {
                        addr: LIMIT_BASE + (i * SMALL) as u64,
                        len: SMALL as u32,
                    };
                    r.push(&mem, false, next(), &[seg], ())
                        .map_err(|(e, ())| BenchError::LimitRead(io::Error::other(e)))?;
                }
                let mut failed = None;
                r.reap(|d| {
                    if let Err(e) = d.result {
                        failed = Some(e);
                    }
                });
                if let Some(e) = failed {
                    return Err(BenchError::LimitRead(e));
                }
                n += per as u64;
            }
            None => {
                for _ in 0..per {
                    f.read_exact_at(buf.as_mut(), next())
                        .map_err(BenchError::LimitRead)?;
                }
                n += per as u64;
            }
        }
    }
    Ok((n, t.elapsed().as_secs_f64(), thread_cpu_s() - cpu))
}

/// Whether this kernel lets this process set up a ring (else the host falls back to sync).
fn uring_available(disk: &std::path::Path) -> bool {
    File::open(disk)
        .ok()
        .is_some_and(|f| UringEngine::<()>::new(&f, 8, None, true).is_ok())
}

/// The CPU a pinned host runs on.
const HOST_CPU: usize = 1;
/// The CPU a pinned driver runs on.
const DRIVER_CPU: usize = 0;

/// Pins the calling thread to `cpu`, or lets it run on every CPU the machine has (`None`).
/// A failure leaves the thread where it was: pinning only steadies the figures.
fn pin_to(cpu: Option<usize>) {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // The CPUs online, not `available_parallelism` (this thread's own CPUs, one while it
    // is pinned).
    // SAFETY: sysconf only reads a system setting.
    let n = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1);
    for c in cpu.map_or(0..n, |c| c..c + 1) {
        // SAFETY: `c` is below CPU_SETSIZE for any machine this runs on.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of `set`; pid 0 is the
    // calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// The 1-minute load average (`/proc/loadavg`), or NaN where it cannot be read.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
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
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), 4096).expect("page-aligned layout")
    }

    fn new(len: usize) -> Self {
        // SAFETY: a non-zero-sized layout; null is handled.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        Self { ptr, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
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

// ---------------------------------------------------------------------------------------------
// The pair

/// How the two sides learn of each other's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Polling,
    Interrupt,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::Interrupt => "interrupt",
        }
    }
}

/// Files every host of the run shares: the disk image and the emulated ARK.
struct Fixture {
    dir: tempfile::TempDir,
    disk: PathBuf,
    ark: PathBuf,
    signer_pk8: Vec<u8>,
}

impl Fixture {
    fn new(disk_bytes: u64) -> Result<Self, BenchError> {
        let dir = tempfile::tempdir().map_err(BenchError::TempDir)?;
        let disk = dir.path().join("disk.img");
        // Written (not sparse), so reads come from the page cache rather than a hole.
        let mut f = File::create(&disk).map_err(BenchError::CreateDisk)?;
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..disk_bytes >> 20 {
            f.write_all(&chunk).map_err(BenchError::WriteDisk)?;
        }
        let signer_pk8 = Signer::generate_ark_pkcs8().map_err(BenchError::EmulatedArk)?;
        let public = Signer::public_key_of(&signer_pk8).map_err(BenchError::EmulatedArk)?;
        let ark = dir.path().join("emulated-ark.pub");
        std::fs::write(&ark, public).map_err(BenchError::WriteArk)?;
        Ok(Self {
            dir,
            disk,
            ark,
            signer_pk8,
        })
    }
}

/// Audit settings of a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Audit {
    Off,
    Summary,
    Full,
}

impl Audit {
    /// The name in the report, the JSON keys and `swiotlb-host --audit-mode`.
    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Summary => "summary",
            Self::Full => "full",
        }
    }
}

/// One `swiotlb-host` process and the driver connected to it.
struct Pair {
    host: Child,
    /// The host's audit directory, removed when the host has stopped.
    audit_dir: Option<PathBuf>,
    drv: BlockDriver<VfioUserClient>,
    doorbell_eventfds: usize,
}

impl Pair {
    fn start(
        cfg: &Config,
        fx: &Fixture,
        mode: Mode,
        audit: Audit,
        tag: &str,
    ) -> Result<Self, BenchError> {
        Self::start_queues(cfg, fx, mode, audit, tag, 1)
    }

    /// [`Pair::start`] with a host of `queues` request queues, every one set up by the
    /// driver (the driver of queue 0 in `drv`, the others from `drv.take_queues()`). One
    /// queue is the device without VIRTIO_BLK_F_MQ, served by the host's device thread.
    fn start_queues(
        cfg: &Config,
        fx: &Fixture,
        mode: Mode,
        audit: Audit,
        tag: &str,
        queues: u16,
    ) -> Result<Self, BenchError> {
        let socket = fx.dir.path().join(format!("{tag}.sock"));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&cfg.host_bin);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(&fx.disk)
            .args(["--io-engine", &cfg.io_engine])
            .args(["--queues", &queues.to_string()])
            .args(["--sessions", "1", "--log", "error"])
            .args([
                "--attestation",
                "required",
                "--allow-emulated",
                "--emulated-ark",
            ])
            .arg(&fx.ark);
        if mode == Mode::Polling {
            cmd.arg("--poll-us").arg(cfg.poll.as_micros().to_string());
        }
        let mut audit_dir = None;
        if audit != Audit::Off {
            let dir = cfg
                .audit_dir
                .as_deref()
                .unwrap_or(fx.dir.path())
                .join(format!("swiotlb-bench-audit-{}-{tag}", std::process::id()));
            cmd.arg("--audit-log")
                .arg(dir.join("device.jsonl"))
                .arg("--audit-mode")
                .arg(audit.name());
            audit_dir = Some(dir);
        }
        // Only polling needs each side on a CPU of its own; a sleeping side is woken
        // sooner wherever the scheduler finds a free CPU.
        let pin = cfg.pin && mode == Mode::Polling && queues == 1;
        if pin {
            // The whole host, its audit writer included, on HOST_CPU: the driver's CPU is the
            // guest's, which no host thread takes on a real machine.
            // SAFETY: between fork and exec the closure only calls sched_setaffinity,
            // which is async-signal-safe, on a set built on its own stack.
            unsafe {
                cmd.pre_exec(|| {
                    pin_to(Some(HOST_CPU));
                    Ok(())
                });
            }
        }
        let mut host = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::StartHost(cfg.host_bin.clone(), e))?;
        if pin {
            pin_to(Some(DRIVER_CPU));
        }
        let t = Instant::now();
        while !socket.exists() {
            if let Ok(Some(s)) = host.try_wait() {
                return Err(BenchError::HostExitedEarly(s));
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = host.kill();
                return Err(BenchError::HostNotListening);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let fail = |host: &mut Child, e: BenchError| {
            let _ = host.kill();
            let _ = host.wait();
            e
        };
        let client = match VfioUserClient::connect(&socket) {
            Ok(c) => c,
            Err(e) => return Err(fail(&mut host, BenchError::Connect(e))),
        };
        let doorbell_eventfds = client.eventfd_doorbells();
        let signer = Signer::from_pkcs8(&fx.signer_pk8).map_err(BenchError::EmulatedArk)?;
        let attester = Emulated::with_signer(signer);
        let opts = Options {
            poll: match mode {
                Mode::Polling => cfg.poll,
                Mode::Interrupt => Duration::ZERO,
            },
            queues,
            ..Options::default()
        };
        let drv = match BlockDriver::open_attested(client, &opts, Some(&attester)) {
            Ok(d) => d,
            Err(e) => return Err(fail(&mut host, BenchError::OpenDevice(e))),
        };
        if !drv.info().attestation.starts_with("accepted") {
            return Err(fail(
                &mut host,
                BenchError::NotAttested(drv.info().attestation.clone()),
            ));
        }
        Ok(Self {
            host,
            audit_dir,
            drv,
            doorbell_eventfds,
        })
    }

    fn stop(self) -> Result<(), BenchError> {
        let Self {
            mut host,
            audit_dir,
            drv,
            ..
        } = self;
        drop(drv);
        // The driver's thread may run anywhere again (a no-op when it was not pinned).
        pin_to(None);
        let r = wait_exit(&mut host);
        if let Some(d) = &audit_dir {
            let _ = std::fs::remove_dir_all(d);
        }
        r
    }
}

/// 4 KiB random reads at a total queue depth of 32 on a host of `queues` queues, in `mode`,
/// the depth split evenly between them and each queue driven from a thread of its own:
/// total IOPS.
fn queues_iops(
    cfg: &Config,
    fx: &Fixture,
    mode: Mode,
    queues: u16,
    d: Duration,
    seed: u64,
) -> Result<f64, BenchError> {
    let tag = format!("queues-{}-{queues}", mode.name());
    let mut pair = Pair::start_queues(cfg, fx, mode, Audit::Off, &tag, queues)?;
    let host = pair.host.id();
    let mut others = pair.drv.take_queues();
    let w = Workload {
        qd: 32 / queues.max(1),
        ..WORKLOADS[2]
    };
    let disk = cfg.disk_bytes;
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = others
            .iter_mut()
            .enumerate()
            .map(|(i, drv)| s.spawn(move || measure(drv, host, &w, disk, d, seed + 1 + i as u64)))
            .collect();
        let mut total = measure(&mut pair.drv, host, &w, disk, d, seed).map(|f| f.iops);
        for h in handles {
            let r = h
                .join()
                .map_err(|_| BenchError::Workload(w.name, BlockError::Stopped))
                .and_then(|r| r);
            total = total.and_then(|t| r.map(|f| t + f.iops));
        }
        total
    });
    // Every queue's driver shares the connection: all go before the host may exit.
    drop(others);
    pair.stop()?;
    total
}

/// Multi-queue: QD32 with one queue and with two, polled (the figure asked for) and in
/// interrupt mode (no thread spins), round after round, beside what the machine itself
/// scales from one thread to two on the disk path in the same rounds.
fn queue_scaling(
    cfg: &Config,
    fx: &Fixture,
    uring: bool,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) -> Result<(), BenchError> {
    let modes = [Mode::Polling, Mode::Interrupt];
    // Per mode: IOPS with one queue, with two, and their ratio, round by round.
    let mut figs: Vec<[Vec<f64>; 3]> = modes.iter().map(|_| Default::default()).collect();
    let mut limit_ratios = Vec::new();
    for r in 0..cfg.rounds {
        let seed = 0x51ed ^ r as u64;
        for (m, mode) in modes.iter().enumerate() {
            let a = queues_iops(cfg, fx, *mode, 1, cfg.slice, seed)?;
            let b = queues_iops(cfg, fx, *mode, 2, cfg.slice, seed)?;
            figs[m][0].push(a);
            figs[m][1].push(b);
            figs[m][2].push(b / a);
        }
        let l2 = disk_limit_iops(&fx.disk, cfg.disk_bytes, cfg.slice, uring, 2, LIMIT_QD)?;
        let l1 = disk_limit_iops(&fx.disk, cfg.disk_bytes, cfg.slice, uring, 1, LIMIT_QD)?;
        limit_ratios.push(l2 / l1);
    }
    let machine = median(&mut limit_ratios);
    say(format!(
        "multi-queue, 4 KiB random reads at a total QD32 (2 queues: QD16 each, a host thread and a driver thread per queue); the disk path alone on 2 threads in the same rounds: {machine:.2} x (medians of {} rounds)",
        cfg.rounds
    ));
    for (m, mode) in modes.iter().enumerate() {
        let [one, two, ratios] = &mut figs[m];
        let (one, two, scaling) = (median(one), median(two), median(ratios));
        say(format!(
            "  {:<9} 1 queue {one:>8.0} IOPS, 2 queues {two:>8.0} IOPS: {scaling:.2} x",
            mode.name()
        ));
        let (key_one, key_two, key_scaling) = match mode {
            Mode::Polling => (
                "qd32_polling_1_queue_iops",
                "qd32_polling_2_queues_iops",
                "queue_scaling_2_over_1",
            ),
            Mode::Interrupt => (
                "qd32_interrupt_1_queue_iops",
                "qd32_interrupt_2_queues_iops",
                "queue_scaling_2_over_1_interrupt",
            ),
        };
        out.insert(key_one.into(), json!(one));
        out.insert(key_two.into(), json!(two));
        out.insert(key_scaling.into(), json!(scaling));
    }
    out.insert("disk_limit_scaling_2_over_1".into(), json!(machine));
    Ok(())
}

/// Waits for a host to exit after its one session.
fn wait_exit(host: &mut Child) -> Result<(), BenchError> {
    let t = Instant::now();
    loop {
        match host.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(BenchError::HostExit(s)),
            Ok(None) if t.elapsed() > Duration::from_secs(10) => {
                let _ = host.kill();
                return Err(BenchError::HostDidNotExit);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(BenchError::WaitHost(e)),
        }
    }
}

/// A workload: request size, queue depth, direction, pattern.
#[derive(Clone, Copy, Debug)]
struct Workload {
    name: &'static str,
    size: usize,
    qd: u16,
    write: bool,
    random: bool,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "randread_4k_qd1",
        size: SMALL,
        qd: 1,
        write: false,
        random: true,
    },
    Workload {
        name: "randwrite_4k_qd1",
        size: SMALL,
        qd: 1,
        write: true,
        random: true,
    },
    Workload {
        name: "randread_4k_qd32",
        size: SMALL,
        qd: 32,
        write: false,
        random: true,
    },
    Workload {
        name: "randwrite_4k_qd32",
        size: SMALL,
        qd: 32,
        write: true,
        random: true,
    },
    Workload {
        name: "seqread_128k_qd8",
        size: LARGE,
        qd: LARGE_QD,
        write: false,
        random: false,
    },
    Workload {
        name: "seqwrite_128k_qd8",
        size: LARGE,
        qd: LARGE_QD,
        write: true,
        random: false,
    },
];

/// What one run of a workload measured.
#[derive(Debug, Default, Clone)]
struct Figures {
    iops: f64,
    mib_s: f64,
    median_us: f64,
    p99_us: f64,
    /// Requests completed, the warm-up's included.
    requests: u64,
    /// CPU time of the host process (all its threads) per request, µs.
    host_cpu_us: f64,
    /// CPU time of the driver's thread per request, µs.
    guest_cpu_us: f64,
}

/// Offsets of a workload: random request-aligned ones (xorshift) or sequential, wrapping.
struct Offsets {
    x: u64,
    next: u64,
    size: u64,
    span: u64,
    random: bool,
}

impl Offsets {
    fn new(w: &Workload, disk: u64, seed: u64) -> Self {
        Self {
            x: seed | 1,
            next: 0,
            size: w.size as u64,
            span: disk / w.size as u64,
            random: w.random,
        }
    }

    fn take(&mut self) -> u64 {
        let i = if self.random {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            self.x % self.span
        } else {
            let i = self.next;
            self.next = (self.next + 1) % self.span;
            i
        };
        i * self.size
    }
}

/// Where the data of a request comes from and goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Copies {
    /// The caller's buffer is bounced straight to and from the pool: one copy per request,
    /// as a driver whose caller's pages the pool path can reach.
    Direct,
    /// As the ublk server on a 6.12 kernel does: the kernel copies between the request's
    /// pages and the server's own buffer, and the server bounces that buffer through the
    /// pool, so every byte is copied twice. The first copy is made here, by the same thread,
    /// as ublk makes it in the server's task.
    ServerBuffer,
}

/// Runs `w` on `drv` for `d`: IOPS, MiB/s and the latency distribution.
fn measure(
    drv: &mut BlockDriver<VfioUserClient>,
    host: u32,
    w: &Workload,
    disk: u64,
    d: Duration,
    seed: u64,
) -> Result<Figures, BenchError> {
    measure_copies(drv, host, w, disk, d, seed, Copies::Direct)
}

/// [`measure`], with the copies of `copies`.
fn measure_copies(
    drv: &mut BlockDriver<VfioUserClient>,
    host: u32,
    w: &Workload,
    disk: u64,
    d: Duration,
    seed: u64,
    copies: Copies,
) -> Result<Figures, BenchError> {
    drv.set_max_in_flight(w.qd);
    let per_call = if w.qd == 1 {
        1
    } else {
        (BATCH * SMALL / w.size).max(usize::from(w.qd) * 4)
    };
    let mut buf = vec![0x3cu8; per_call * w.size];
    // The request's own pages, for the copy the kernel makes to and from the server buffer.
    let mut pages = match copies {
        Copies::Direct => Vec::new(),
        Copies::ServerBuffer => vec![0x5au8; buf.len()],
    };
    let mut offs = Offsets::new(w, disk, seed);
    let mut ranges = vec![(0u64, w.size); per_call];
    let mut run =
        |drv: &mut BlockDriver<VfioUserClient>, ranges: &mut [(u64, usize)], buf: &mut [u8]| {
            for r in ranges.iter_mut() {
                r.0 = offs.take();
            }
            let second = copies == Copies::ServerBuffer;
            if w.write {
                if second {
                    buf.copy_from_slice(black_box(&pages));
                }
                drv.write_scattered(ranges, buf)
            } else {
                let r = drv.read_scattered(ranges, buf);
                if second {
                    pages.copy_from_slice(black_box(buf));
                }
                r
            }
            .map_err(|e| BenchError::Workload(w.name, e))
        };
    // Warm-up: the slots, the page cache, both sides' code.
    let warm = Instant::now();
    let mut warm_n = 0u64;
    while warm.elapsed() < d / 5 {
        run(drv, &mut ranges, &mut buf)?;
        warm_n += per_call as u64;
    }
    drv.record_latencies(true);
    let (host_cpu, guest_cpu) = (process_cpu_s(host), thread_cpu_s());
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        run(drv, &mut ranges, &mut buf)?;
        n += per_call as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    let host_cpu = process_cpu_s(host) - host_cpu;
    let guest_cpu = thread_cpu_s() - guest_cpu;
    let mut lat: Vec<f64> = drv
        .take_latencies()
        .iter()
        .map(|t| t.as_secs_f64() * 1e6)
        .collect();
    drv.record_latencies(false);
    lat.sort_by(f64::total_cmp);
    Ok(Figures {
        iops: n as f64 / secs,
        mib_s: n as f64 * w.size as f64 / secs / f64::from(1u32 << 20),
        median_us: quantile(&lat, 0.5),
        p99_us: quantile(&lat, 0.99),
        requests: n + warm_n,
        host_cpu_us: host_cpu * 1e6 / n as f64,
        guest_cpu_us: guest_cpu * 1e6 / n as f64,
    })
}

/// On-CPU nanoseconds of process `pid`'s threads so far (the first field of each thread's
/// `schedstat`: time run, not time waiting for a CPU, so it holds on a busy machine): all of
/// them, and those named `name`. `None` where `/proc` does not say.
fn threads_cpu_ns(pid: u32, name: &str) -> Option<(u64, u64)> {
    let (mut all, mut named) = (0u64, 0u64);
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let task = t.path();
        let Ok(stat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue; // the thread has just ended
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        all += ns;
        if std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim_end() == name) {
            named += ns;
        }
    }
    Some((all, named))
}

/// CPU time (user and system) of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// CPU time (user and system, all threads) of process `pid` from `/proc/PID/stat`, seconds
/// (clock-tick resolution, 10 ms here); NaN where it cannot be read.
fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) if hz > 0.0 => (u + s) / hz,
        _ => f64::NAN,
    }
}

/// Reads back what a write put there: the bench must not measure a broken path.
fn check_data(drv: &mut BlockDriver<VfioUserClient>) -> Result<(), BenchError> {
    let data: Vec<u8> = (0..LARGE).map(|i| (i * 7 + 3) as u8).collect();
    drv.set_max_in_flight(0);
    drv.write_at(0, &data).map_err(BenchError::CheckWrite)?;
    let mut back = vec![0u8; LARGE];
    drv.read_at(0, &mut back).map_err(BenchError::CheckRead)?;
    if back != data {
        return Err(BenchError::DataDiffers);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn run(cfg: &Config) -> Result<(), BenchError> {
    let say = |s: String| {
        if !cfg.json {
            println!("{s}");
        } else {
            eprintln!("{s}");
        }
    };
    let mut out = Map::new();
    say(format!(
        "swiotlb-bench: {} mode, {} round(s) of {:?} per workload, host polling budget {:?}",
        if cfg.quick { "quick" } else { "full" },
        cfg.rounds,
        cfg.slice,
        cfg.poll
    ));

    // How busy the machine is (other processes' runnable threads), at the start and end.
    out.insert("loadavg_start".into(), json!(loadavg()));
    // Baselines.
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
    // The disk path's own limit, with the hosts' engine and thread count.
    let uring = cfg.io_engine == "uring" && uring_available(&fx.disk);
    if cfg.io_engine == "uring" && !uring {
        say("  io_uring is refused here: the hosts fall back to preadv/pwritev, and so does the disk limit".into());
    }
    let engine = if uring { "uring" } else { "sync" };
    let host_threads = 1;
    let disk_qd1_us = 1e6 / disk_limit_iops(&fx.disk, cfg.disk_bytes, base_t, uring, 1, 1)?;
    let limit_first = disk_limit_iops(
        &fx.disk,
        cfg.disk_bytes,
        base_t,
        uring,
        host_threads,
        LIMIT_QD,
    )?;
    say(format!(
        "  the disk path's own limit ({engine} engine, {host_threads} thread(s), no guest, no pool): 4 KiB random reads at QD{LIMIT_QD} {limit_first:.0} IOPS; at QD1 {disk_qd1_us:.3} us a read"
    ));
    // What the machine itself scales from one thread to two on the same path, now.
    let limit_two = disk_limit_iops(&fx.disk, cfg.disk_bytes, base_t, uring, 2, LIMIT_QD)?;
    let limit_one = disk_limit_iops(&fx.disk, cfg.disk_bytes, base_t, uring, 1, LIMIT_QD)?;
    say(format!(
        "  the same limit on two threads (QD{} each): {limit_two:.0} IOPS, {:.2} x one thread's {limit_one:.0}: what this machine scales to right now",
        LIMIT_QD / 2,
        limit_two / limit_one
    ));
    out.insert("disk_limit_2_threads_iops".into(), json!(limit_two));
    out.insert(
        "disk_limit_scaling_2_1".into(),
        json!(limit_two / limit_one),
    );
    out.insert("io_engine".into(), json!(engine));
    out.insert("host_threads".into(), json!(host_threads));
    out.insert("disk_qd1_us".into(), json!(disk_qd1_us));
    let mut limits = vec![limit_first];
    let mut limit_cpu = Vec::new();
    let mut qd32_ratios = Vec::new();
    for mode in [Mode::Polling, Mode::Interrupt] {
        if cfg.audit_only {
            break;
        }
        let mut pair = Pair::start(cfg, &fx, mode, Audit::Off, mode.name())?;
        check_data(&mut pair.drv)?;
        say(format!(
            "{} mode: {} doorbell eventfd(s) from the host; audit off",
            mode.name(),
            pair.doorbell_eventfds
        ));
        if pair.doorbell_eventfds == 0 {
            return Err(BenchError::NoDoorbellEventfd);
        }
        for (wi, w) in WORKLOADS.iter().enumerate() {
            if !cfg.only.is_empty() && !cfg.only.iter().any(|n| n == w.name) {
                continue;
            }
            let mut rounds = Vec::new();
            for r in 0..cfg.rounds {
                let f = measure(
                    &mut pair.drv,
                    pair.host.id(),
                    w,
                    cfg.disk_bytes,
                    cfg.slice,
                    (wi * 100 + r + 1) as u64,
                )?;
                if (mode, w.name) == (Mode::Polling, "randread_4k_qd32") {
                    // The limit again, right after, so the ratio shares the moment's load.
                    let (l, cpu) = disk_limit(
                        &fx.disk,
                        cfg.disk_bytes,
                        cfg.slice,
                        uring,
                        host_threads,
                        LIMIT_QD,
                    )?;
                    limits.push(l);
                    limit_cpu.push(cpu);
                    qd32_ratios.push(f.iops / l);
                }
                rounds.push(f);
            }
            let pick =
                |f: fn(&Figures) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
            let fig = Figures {
                iops: pick(|f| f.iops),
                mib_s: pick(|f| f.mib_s),
                median_us: pick(|f| f.median_us),
                p99_us: pick(|f| f.p99_us),
                requests: rounds.iter().map(|f| f.requests).sum(),
                host_cpu_us: pick(|f| f.host_cpu_us),
                guest_cpu_us: pick(|f| f.guest_cpu_us),
            };
            say(format!(
                "  {:<20} {:>10.0} IOPS {:>9.1} MiB/s   latency median {:>8.2} us  p99 {:>8.2} us   CPU a request: host {:.2} us, driver {:.2} us",
                w.name, fig.iops, fig.mib_s, fig.median_us, fig.p99_us, fig.host_cpu_us, fig.guest_cpu_us
            ));
            let key = format!("{}_{}", mode.name(), w.name);
            out.insert(
                key,
                json!({"iops": fig.iops, "mib_s": fig.mib_s, "median_us": fig.median_us, "p99_us": fig.p99_us,
                       "host_cpu_us": fig.host_cpu_us, "driver_cpu_us": fig.guest_cpu_us}),
            );
            match (mode, w.name) {
                (Mode::Polling, "randread_4k_qd1") => {
                    out.insert("qd1_polling_median_us".into(), json!(fig.median_us));
                    out.insert("qd1_polling_iops".into(), json!(fig.iops));
                }
                (Mode::Polling, "randread_4k_qd32") => {
                    out.insert("qd32_polling_iops".into(), json!(fig.iops));
                }
                (Mode::Interrupt, "randread_4k_qd1") => {
                    out.insert("qd1_interrupt_median_us".into(), json!(fig.median_us));
                }
                (Mode::Interrupt, "randread_4k_qd32") => {
                    out.insert("qd32_interrupt_iops".into(), json!(fig.iops));
                }
                _ => {}
            }
        }
        pair.stop()?;
    }

    let disk_limit = median(&mut limits);
    out.insert("disk_limit_iops".into(), json!(disk_limit));
    // CPU a read costs the disk path alone, against what a request costs the host and the
    // driver: ratios of CPU time, which other processes' load changes far less than IOPS.
    let limit_cpu_us = if limit_cpu.is_empty() {
        f64::NAN
    } else {
        median(&mut limit_cpu)
    };
    out.insert("disk_limit_cpu_us".into(), json!(limit_cpu_us));
    for m in [Mode::Polling, Mode::Interrupt] {
        let key = format!("{}_randread_4k_qd32", m.name());
        if let Some(f) = out.get(&key).cloned() {
            let host = f["host_cpu_us"].as_f64().unwrap_or(f64::NAN);
            let drv = f["driver_cpu_us"].as_f64().unwrap_or(f64::NAN);
            say(format!(
                "CPU a 4 KiB read at QD32, {} mode: host {host:.2} us ({:.2} x the disk path's own {limit_cpu_us:.2} us), driver {drv:.2} us",
                m.name(),
                host / limit_cpu_us
            ));
            out.insert(
                format!("qd32_{}_host_cpu_vs_disk", m.name()),
                json!(host / limit_cpu_us),
            );
        }
    }
    let qd32_vs_limit = if qd32_ratios.is_empty() {
        f64::NAN
    } else {
        median(&mut qd32_ratios)
    };
    out.insert("qd32_polling_vs_disk_limit".into(), json!(qd32_vs_limit));
    say(format!(
        "the disk path's own limit, median of {} measurements: {disk_limit:.0} IOPS; polling QD32 at {qd32_vs_limit:.3} of it (median of per-round ratios)",
        limits.len()
    ));
    if !cfg.audit_only {
        queue_scaling(cfg, &fx, uring, &say, &mut out)?;
    }
    if !cfg.only.is_empty() {
        println!("{}", Value::Object(out));
        return Ok(());
    }
    if !cfg.audit_only {
        second_copy(cfg, &fx, &say, &mut out)?;
    }
    // Audit modes, in both notification modes: 4 KiB random reads at QD32, a fresh host
    // for each measurement, interleaved round after round, each round starting one mode
    // further along (a mode that always ran first, or right after another, would carry
    // whatever drift there is within a round).
    let w = WORKLOADS[2];
    for mode in [Mode::Polling, Mode::Interrupt] {
        let audits = [Audit::Off, Audit::Summary, Audit::Full];
        let n = audits.len();
        let mut iops: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); n];
        // The host's on-CPU time per request: all its threads, and the audit writer's.
        let mut host_ns: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut writer_ns: Vec<Vec<f64>> = vec![Vec::new(); n];
        for r in 0..cfg.audit_rounds {
            let mut this = vec![f64::NAN; n];
            for i in (0..n).map(|k| (k + r) % n) {
                let a = audits[i];
                let tag = format!("audit-{}-{}-{r}", mode.name(), a.name());
                let mut pair = Pair::start(cfg, &fx, mode, a, &tag)?;
                let seed = (r * 10 + i + 1) as u64;
                let pid = pair.host.id();
                let before = threads_cpu_ns(pid, "swiotlb-audit");
                let f = measure(&mut pair.drv, pid, &w, cfg.disk_bytes, cfg.slice, seed)?;
                let after = threads_cpu_ns(pid, "swiotlb-audit");
                pair.stop()?;
                if let (Some(b), Some(a)) = (before, after) {
                    let per =
                        |x: u64, y: u64| y.saturating_sub(x) as f64 / f.requests.max(1) as f64;
                    host_ns[i].push(per(b.0, a.0));
                    writer_ns[i].push(per(b.1, a.1));
                }
                this[i] = f.iops;
                iops[i].push(f.iops);
            }
            for (i, v) in this.iter().enumerate() {
                ratios[i].push(v / this[0]);
            }
        }
        say(format!(
            "audit, {} mode ({} at QD32, {} interleaved rounds, a fresh host each):",
            mode.name(),
            w.name,
            cfg.audit_rounds
        ));
        // The key names the interrupt-mode ratio; polling's carries its mode.
        let suffix = match mode {
            Mode::Interrupt => String::new(),
            Mode::Polling => "_polling".into(),
        };
        let have_cpu = host_ns.iter().all(|v| !v.is_empty());
        for (i, a) in audits.iter().enumerate() {
            let m = median(&mut iops[i]);
            let ratio = median(&mut ratios[i]);
            let cpu = if have_cpu {
                let (h, wr) = (median(&mut host_ns[i]), median(&mut writer_ns[i]));
                out.insert(format!("audit_{}_host_cpu_ns{suffix}", a.name()), json!(h));
                if *a != Audit::Off {
                    out.insert(
                        format!("audit_{}_writer_cpu_ns{suffix}", a.name()),
                        json!(wr),
                    );
                }
                format!("; host CPU {h:.0} ns a request, of which the audit writer {wr:.0} ns")
            } else {
                String::new()
            };
            // The per-round ratios, sorted (by `median`): how far the rounds spread.
            let rounds = if *a == Audit::Off {
                String::new()
            } else {
                let r: Vec<String> = ratios[i].iter().map(|r| format!("{r:.2}")).collect();
                format!(" (rounds {})", r.join(" "))
            };
            say(format!(
                "  audit {:<8} {:>10.0} IOPS  ratio to off {:.3}{rounds}{cpu}",
                a.name(),
                m,
                ratio
            ));
            out.insert(format!("audit_{}_iops{suffix}", a.name()), json!(m));
            if *a != Audit::Off {
                out.insert(format!("audit_{}_vs_off{suffix}", a.name()), json!(ratio));
            }
        }
    }

    // Goals, judged on this run's figures.
    let get = |k: &str| out.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let qd1p = get("qd1_polling_median_us");
    let qd1i = get("qd1_interrupt_median_us");
    // A lone read is one plain pread in the host: its median is the disk's own latency.
    let qd1_goal = pread + GOAL_QD1_OVER_DISK_US;
    let full = get("audit_full_vs_off");
    let full_polling = get("audit_full_vs_off_polling");
    let vs_efd = qd1i / efd_med;
    out.insert("qd1_interrupt_vs_eventfd".into(), json!(vs_efd));
    out.insert("qd1_polling_vs_shm_pingpong".into(), json!(qd1p / shm));
    let mark = |ok: bool| if ok { "MET" } else { "MISSED" };
    let goals = [
        ("qd1_polling_le_disk_plus_0_5us", qd1p <= qd1_goal, format!("polling QD1 median {qd1p:.2} us (goal <= the disk's own pread {pread:.2} us + {GOAL_QD1_OVER_DISK_US} us = {qd1_goal:.2} us)")),
        ("qd32_polling_ge_0_9_of_disk_limit", qd32_vs_limit >= GOAL_QD32_VS_DISK_LIMIT, format!("polling QD32 at {qd32_vs_limit:.3} of the disk path's own limit (goal >= {GOAL_QD32_VS_DISK_LIMIT})")),
        ("qd1_interrupt_le_1_5x_eventfd", vs_efd <= GOAL_INTERRUPT_VS_EVENTFD, format!("interrupt QD1 median {qd1i:.2} us = {vs_efd:.2} x the eventfd round trip (goal <= {GOAL_INTERRUPT_VS_EVENTFD} x)")),
        ("audit_full_ge_0_9_of_off", full >= GOAL_AUDIT_FULL_VS_OFF, format!("audit full at {full:.3} of off, interrupt mode (goal >= {GOAL_AUDIT_FULL_VS_OFF})")),
        ("audit_full_ge_0_9_of_off_polling", full_polling >= GOAL_AUDIT_FULL_VS_OFF, format!("audit full at {full_polling:.3} of off, polling mode (goal >= {GOAL_AUDIT_FULL_VS_OFF})")),
    ];
    say("goals:".into());
    let mut g = Map::new();
    for (k, ok, text) in goals {
        say(format!("  {:<6} {text}", mark(ok)));
        g.insert(k.into(), json!(ok));
    }
    out.insert("goals_met".into(), Value::Object(g));
    out.insert("loadavg_end".into(), json!(loadavg()));
    out.insert("quick".into(), json!(cfg.quick));
    out.insert("poll_us".into(), json!(cfg.poll.as_micros() as u64));
    out.insert("pinned".into(), json!(cfg.pin));
    // One JSON object on stdout, last, in both output modes.
    println!("{}", Value::Object(out));
    Ok(())
}

/// What the ublk server's own buffers cost: each workload at queue depth 32 (8 for 128 KiB)
/// with one copy per request (the driver's bounce) and with two (the kernel's copy into the
/// server's buffer, then the bounce), on one pair in polling mode, interleaved round after
/// round; the ratio is the median of the per-round ratios.
fn second_copy(
    cfg: &Config,
    fx: &Fixture,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) -> Result<(), BenchError> {
    let mut pair = Pair::start(cfg, fx, Mode::Polling, Audit::Off, "second-copy")?;
    say("ublk's second copy (the server's own buffer between the request's pages and the pool), polling mode, audit off:".into());
    let mut fig = Map::new();
    for (wi, w) in WORKLOADS.iter().enumerate().filter(|(_, w)| w.qd > 1) {
        let mut ratios = Vec::new();
        let mut direct = Vec::new();
        let mut twice = Vec::new();
        for r in 0..cfg.rounds.max(3) {
            let seed = (wi * 100 + r + 1) as u64;
            let a = measure_copies(
                &mut pair.drv,
                pair.host.id(),
                w,
                cfg.disk_bytes,
                cfg.slice,
                seed,
                Copies::Direct,
            )?;
            let b = measure_copies(
                &mut pair.drv,
                pair.host.id(),
                w,
                cfg.disk_bytes,
                cfg.slice,
                seed,
                Copies::ServerBuffer,
            )?;
            ratios.push(b.iops / a.iops);
            direct.push(a.iops);
            twice.push(b.iops);
        }
        let (a, b, ratio) = (median(&mut direct), median(&mut twice), median(&mut ratios));
        say(format!(
            "  {:<20} one copy {a:>10.0} IOPS, two copies {b:>10.0} IOPS: {ratio:.3} of one copy",
            w.name
        ));
        fig.insert(
            w.name.into(),
            json!({"one_copy_iops": a, "two_copies_iops": b, "ratio": ratio}),
        );
    }
    pair.stop()?;
    out.insert("ublk_second_copy".into(), Value::Object(fig));
    Ok(())
}

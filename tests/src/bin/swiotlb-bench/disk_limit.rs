//! The disk path's own limits: the image read and written 4 KiB at random with no guest
//! and no pool, as a device thread of the host reads it.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use swiotlb_host::devices::block::request::Segment;
use swiotlb_host::devices::block::uring::UringEngine;
use swiotlb_host::pool::Pool;

use crate::baselines::AlignedBuf;
use crate::cli::Config;
use crate::cpu::thread_cpu_s;
use crate::error::BenchError;
use crate::pair::Fixture;
use crate::stats::median;
use crate::workloads::SMALL;

/// Queue depth of the disk limit, as of the QD32 workload.
pub(crate) const LIMIT_QD: usize = 32;
/// Where the disk limit's buffer sits on its (pretend) bus: anywhere will do.
const LIMIT_BASE: u64 = 1 << 32;

/// How the disk path's own limit is measured in this run, and what it was first.
pub(crate) struct DiskPath {
    /// The hosts' engine is io_uring (else `preadv`/`pwritev`).
    pub(crate) uring: bool,
    /// Device threads of a host.
    pub(crate) host_threads: usize,
    /// The limit measured before any pair ran, IOPS.
    pub(crate) limit_first: f64,
}

/// The disk path's own limit with the hosts' engine and thread count, its QD1 latency, and
/// what it scales to on two threads.
pub(crate) fn measure_disk_path(
    cfg: &Config,
    fx: &Fixture,
    base_t: Duration,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) -> Result<DiskPath, BenchError> {
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
    Ok(DiskPath {
        uring,
        host_threads,
        limit_first,
    })
}

/// A 4 KiB `pread` (or `pwrite`) at random 4 KiB-aligned offsets of the image (in the
/// page cache, as the device reads and writes it): median of batches of 1000, in µs.
pub(crate) fn disk_4k_us(
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
pub(crate) fn disk_limit_iops(
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
pub(crate) fn disk_limit(
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
                    r.push(&mem, false, next(), vec![seg], ())
                        .map_err(|r| BenchError::LimitRead(io::Error::other(r.error)))?;
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

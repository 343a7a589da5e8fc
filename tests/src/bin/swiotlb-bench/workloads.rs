//! The workloads, and one run of a workload on a driver.

use std::hint::black_box;
use std::time::{Duration, Instant};

use swiotlb_guest::pci::vfio_user::VfioUserClient;
use swiotlb_guest::BlockDriver;

use crate::cpu::{process_cpu_s, thread_cpu_s};
use crate::error::BenchError;
use crate::stats::quantile;

/// Request size of the random workloads.
pub(crate) const SMALL: usize = 4096;
/// Request size of the sequential workloads.
pub(crate) const LARGE: usize = 128 << 10;
/// Queue depth of the sequential workloads (4 MiB in flight at 32 would crowd a 16 MiB
/// pool's queue area for no gain: 8 keeps the device busy).
const LARGE_QD: u16 = 8;
/// Requests per driver call at queue depth 32: long enough that draining the tail of a call
/// (the depth falls from 32 to 0) is a small part of it.
const BATCH: usize = 1024;

/// A workload: request size, queue depth, direction, pattern.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) size: usize,
    pub(crate) qd: u16,
    pub(crate) write: bool,
    pub(crate) random: bool,
}

pub(crate) const WORKLOADS: [Workload; 6] = [
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
pub(crate) struct Figures {
    pub(crate) iops: f64,
    pub(crate) mib_s: f64,
    pub(crate) median_us: f64,
    pub(crate) p99_us: f64,
    /// Requests completed, the warm-up's included.
    pub(crate) requests: u64,
    /// CPU time of the host process (all its threads) per request, µs.
    pub(crate) host_cpu_us: f64,
    /// CPU time of the driver's thread per request, µs.
    pub(crate) guest_cpu_us: f64,
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
pub(crate) enum Copies {
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
pub(crate) fn measure(
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
pub(crate) fn measure_copies(
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

/// Reads back what a write put there: the bench must not measure a broken path.
pub(crate) fn check_data(drv: &mut BlockDriver<VfioUserClient>) -> Result<(), BenchError> {
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

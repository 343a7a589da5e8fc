//! Micro-benchmarks of the driver's pool: the bounce-slot allocator and the bounce copies,
//! each against a limit measured in the same run.
//!
//! - allocator: `alloc` + `free` pairs per second on one thread and on two threads (one
//!   allocator each, as the driver gives every queue its own area and allocator: no lock, no
//!   atomic), against an uncontended atomic baseline (`fetch_add` + `fetch_sub` pairs on a
//!   counter of the thread's own, one cache line each);
//! - bounce copy: `PoolMemory::write` (copy in on submit) and `PoolMemory::read` (copy out on
//!   completion), in chunks of at most one mapping as the driver copies, at 4 KiB, 64 KiB and
//!   1 MiB, against `copy_from_slice` of the same sizes between heap buffers; the same
//!   buffers are reused every time so both sides run warm. The zeroing of a slot run before
//!   reuse is shown too (against `fill(0)`), without a goal.
//!
//! Every case runs in interleaved rounds (baseline, then the code, round after round); the
//! figures are medians over rounds and each ratio is the median of the per-round ratios: these
//! machines are shared and noisy, so absolute numbers move, ratios much less. Goals are
//! printed as met or missed, never asserted.
//!
//! `cargo bench -p swiotlb-guest --bench pool [-- --quick]`

#[path = "../../shared/benches/support/measure.rs"]
mod measure;

use measure::{measure, median, speed_ratio, timed, Run};

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use swiotlb_guest::pool::{Mapping, PoolMemory, SlotAllocator, SlotRun};
use swiotlb_shared::layout::MAX_MAPPING;

/// Slots of one queue area: what a 16 MiB pool with one queue gives (about 8000).
const AREA_SLOTS: u64 = 8192;
/// Requests in flight in the driver-like pattern (queue depth 32).
const DEPTH: usize = 32;

// ---- measurement ------------------------------------------------------------------------

struct Plan {
    rounds: usize,
    slice: Duration,
}

fn goal(met: bool) -> &'static str {
    if met {
        "goal MET"
    } else {
        "goal MISSED"
    }
}

// ---- allocator ----------------------------------------------------------------------------

/// An allocator of one area with `DEPTH` requests (a control slot and two data slots each)
/// already held, so the area is never wholly free (a wholly free area resets its hints).
fn busy_allocator() -> (SlotAllocator, Vec<SlotRun>) {
    let mut a = SlotAllocator::new(AREA_SLOTS);
    let held = (0..DEPTH * 2)
        .map(|i| {
            a.alloc(if i % 2 == 0 { 1 } else { 2 })
                .expect("area has room")
        })
        .collect();
    (a, held)
}

/// `n` alloc + free pairs of one slot: the LIFO reuse path. Returns the pairs done.
fn lifo_pairs(a: &mut SlotAllocator, n: u64) -> u64 {
    for _ in 0..n {
        // As if the allocator lived in the driver between requests: its state is in memory,
        // not kept in registers across iterations.
        let a = black_box(&mut *a);
        // Cannot fail: the area has thousands of free slots and each one is given back.
        let r = a.alloc(black_box(1)).expect("free slot");
        a.free(black_box(r)).expect("run just allocated");
    }
    n
}

/// The driver's pattern at queue depth 32: each step frees the oldest request (a control
/// slot and a 2-slot data run, 4 KiB) and allocates a new one. Returns the pairs done (2 a
/// step).
fn driver_pairs(a: &mut SlotAllocator, window: &mut [(SlotRun, SlotRun)], n: u64) -> u64 {
    let len = window.len();
    for i in 0..n as usize {
        let a = black_box(&mut *a);
        let (ctl, data) = window[i % len];
        a.free(black_box(ctl)).expect("held run");
        a.free(black_box(data)).expect("held run");
        // Cannot fail: only DEPTH requests are ever held in an area of thousands of slots.
        let ctl = a.alloc(black_box(1)).expect("free slot");
        let data = a.alloc(black_box(2)).expect("free run");
        window[i % len] = (ctl, data);
    }
    2 * n
}

fn driver_window(a: &mut SlotAllocator) -> Vec<(SlotRun, SlotRun)> {
    (0..DEPTH)
        .map(|_| {
            let c = a.alloc(1).expect("room");
            let d = a.alloc(2).expect("room");
            (c, d)
        })
        .collect()
}

/// One counter a cache line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// `n` uncontended atomic pairs (fetch_add then fetch_sub) on `c`.
fn atomic_pairs(c: &AtomicU64, n: u64) -> u64 {
    for _ in 0..n {
        c.fetch_add(black_box(1), Ordering::Relaxed);
        c.fetch_sub(black_box(1), Ordering::Relaxed);
    }
    n
}

/// Runs `work(i, n)` on two threads at once (i = 0, 1); returns the total operations and the
/// longer of the two threads' times.
fn on_two_threads<S: Send>(
    state: &mut [S; 2],
    n: u64,
    work: impl Fn(&mut S, u64) -> u64 + Sync,
) -> (u64, Duration) {
    let barrier = Barrier::new(2);
    let [s0, s1] = state;
    let run = |s: &mut S| {
        barrier.wait();
        timed(|| work(s, n))
    };
    std::thread::scope(|sc| {
        let h = sc.spawn(|| run(s1));
        let (o0, e0) = run(s0);
        // Cannot fail: the worker does not panic (panic = abort in any case).
        let (o1, e1) = h.join().expect("worker thread");
        (o0 + o1, e0.max(e1))
    })
}

struct Figures {
    json: serde_json::Map<String, serde_json::Value>,
}

impl Figures {
    fn put(&mut self, k: &str, v: f64) {
        self.json.insert(k.into(), serde_json::json!(v));
    }
}

fn allocator(plan: &Plan, fig: &mut Figures) {
    let (mut a1, _held1) = busy_allocator();
    let mut two = [busy_allocator().0, busy_allocator().0];
    let (mut d1, _) = busy_allocator();
    let mut w1 = driver_window(&mut d1);
    let mut dtwo = [busy_allocator().0, busy_allocator().0];
    let mut dw: [Vec<(SlotRun, SlotRun)>; 2] =
        [driver_window(&mut dtwo[0]), driver_window(&mut dtwo[1])];
    let c1 = Padded::default();
    let mut c2 = [Padded::default(), Padded::default()];
    let mut cases: Vec<Run<'_>> = vec![
        Box::new(|n| timed(|| atomic_pairs(&c1.0, n))),
        Box::new(|n| on_two_threads(&mut c2, n, |c, n| atomic_pairs(&c.0, n))),
        Box::new(|n| timed(|| lifo_pairs(&mut a1, n))),
        Box::new(|n| on_two_threads(&mut two, n, lifo_pairs)),
        Box::new(|n| timed(|| driver_pairs(&mut d1, &mut w1, n))),
        Box::new(|n| {
            let [x, y] = &mut dtwo;
            let [wx, wy] = &mut dw;
            let mut st = [(x, wx), (y, wy)];
            on_two_threads(&mut st, n, |(a, w), n| driver_pairs(a, w, n))
        }),
    ];
    let r = measure(&mut cases, plan.rounds, plan.slice);
    drop(cases);
    let rate = |v: &[f64]| 1e3 / median(v); // M pairs/s
    let names = [
        "atomic fetch_add+fetch_sub, 1 thread ",
        "atomic fetch_add+fetch_sub, 2 threads",
        "alloc(1)+free LIFO,        1 thread ",
        "alloc(1)+free LIFO,        2 threads",
        "driver QD32 (1+2 slots),   1 thread ",
        "driver QD32 (1+2 slots),   2 threads",
    ];
    println!(
        "slot allocator: alloc+free pairs, area of {AREA_SLOTS} slots with {} runs held; {} interleaved rounds of ~{:?} (median)",
        DEPTH * 2,
        plan.rounds,
        plan.slice
    );
    for (i, name) in names.iter().enumerate() {
        let base = &r[i % 2];
        println!(
            "  {name} {:>8.1} M pairs/s  {:>6.2} ns/pair  speed vs atomic pairs ({} thread{}) {:.2}",
            rate(&r[i]),
            median(&r[i]),
            if i % 2 == 0 { 1 } else { 2 },
            if i % 2 == 0 { "" } else { "s" },
            speed_ratio(&r[i], base),
        );
    }
    let scale = |one: usize, two: usize| speed_ratio(&r[two], &r[one]);
    let (s_atomic, s_lifo, s_drv) = (scale(0, 1), scale(2, 3), scale(4, 5));
    println!(
        "  scaling 2 threads / 1 thread: atomic {s_atomic:.2}, LIFO {s_lifo:.2}, driver {s_drv:.2}  (limit: what the atomic baseline gets on this machine now)"
    );
    let one = rate(&r[2]);
    println!(
        "  goal >= 50 M pairs/s on one thread: {:.1} M/s (LIFO), {:.1} M/s (driver pattern): {}",
        one,
        rate(&r[4]),
        goal(one >= 50.0)
    );
    println!(
        "  goal: scales with the second thread (2-thread/1-thread > 1.5, or >= 90% of the atomic baseline's {s_atomic:.2}): LIFO {s_lifo:.2}: {}; driver {s_drv:.2}: {}",
        goal(s_lifo > 1.5 || s_lifo >= 0.9 * s_atomic),
        goal(s_drv > 1.5 || s_drv >= 0.9 * s_atomic)
    );
    for (i, k) in [
        "atomic_1t",
        "atomic_2t",
        "alloc_lifo_1t",
        "alloc_lifo_2t",
        "alloc_driver_1t",
        "alloc_driver_2t",
    ]
    .iter()
    .enumerate()
    {
        fig.put(&format!("{k}_mpairs_per_s"), rate(&r[i]));
    }
    fig.put("alloc_lifo_scaling_2t", s_lifo);
    fig.put("alloc_driver_scaling_2t", s_drv);
    fig.put("atomic_scaling_2t", s_atomic);
}

// ---- bounce copies ------------------------------------------------------------------------

/// The driver's copy in: one `write` per mapping-sized chunk (at most 256 KiB each).
fn copy_in(mem: &PoolMemory, off: u64, src: &[u8]) {
    for (i, c) in src.chunks(MAX_MAPPING as usize).enumerate() {
        // Cannot fail: the pool is larger than the largest size measured.
        mem.write(off + i as u64 * MAX_MAPPING, c)
            .expect("inside the pool");
    }
}

/// The driver's copy out: one `read` per mapping-sized chunk.
fn copy_out(mem: &PoolMemory, off: u64, dst: &mut [u8]) {
    for (i, c) in dst.chunks_mut(MAX_MAPPING as usize).enumerate() {
        // Cannot fail: as in `copy_in`.
        mem.read(off + i as u64 * MAX_MAPPING, c)
            .expect("inside the pool");
    }
}

/// A buffer whose first byte is on a page boundary, as a slot run of the pool is: the copies
/// compared then differ only in where the memory is, not in how it is aligned.
struct Aligned {
    v: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let v = vec![0u8; len + 4096];
        let at = v.as_ptr().align_offset(4096);
        Self { v, at, len }
    }

    fn slice(&self) -> &[u8] {
        &self.v[self.at..self.at + self.len]
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.at..self.at + self.len]
    }
}

fn bounce(plan: &Plan, fig: &mut Figures) {
    const SIZES: [(usize, &str); 3] =
        [(4 << 10, "4 KiB"), (64 << 10, "64 KiB"), (1 << 20, "1 MiB")];
    // Cannot fail short of memory exhaustion.
    let mem = PoolMemory::new(Mapping::anonymous(4 << 20).expect("anonymous mapping"));
    let off = 1 << 20; // a slot-aligned spot in the middle of the pool
    println!(
        "bounce copies: PoolMemory::write/read in <= 256 KiB chunks vs copy_from_slice, warm buffers reused; {} interleaved rounds of ~{:?} (median)",
        plan.rounds, plan.slice
    );
    for (size, label) in SIZES {
        let mut src_buf = Aligned::new(size);
        for (i, b) in src_buf.slice_mut().iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        let src = src_buf.slice();
        let (mut heap_buf, mut dst_buf, mut out_buf, mut z_buf) = (
            Aligned::new(size),
            Aligned::new(size),
            Aligned::new(size),
            Aligned::new(size),
        );
        let (heap, dst, out, z) = (
            heap_buf.slice_mut(),
            dst_buf.slice_mut(),
            out_buf.slice_mut(),
            z_buf.slice_mut(),
        );
        copy_in(&mem, off, src);
        let mut cases: Vec<Run<'_>> = vec![
            // memcpy in: src -> heap
            Box::new(|n| {
                timed(|| {
                    for _ in 0..n {
                        black_box(&mut heap[..]).copy_from_slice(black_box(src));
                    }
                    n
                })
            }),
            // bounce in: src -> pool
            Box::new(|n| {
                timed(|| {
                    for _ in 0..n {
                        copy_in(black_box(&mem), black_box(off), black_box(src));
                    }
                    n
                })
            }),
            // memcpy out: src -> dst (heap to heap, the same direction and sizes)
            Box::new(|n| {
                timed(|| {
                    for _ in 0..n {
                        black_box(&mut dst[..]).copy_from_slice(black_box(src));
                    }
                    n
                })
            }),
            // bounce out: pool -> dst
            Box::new(|n| {
                timed(|| {
                    for _ in 0..n {
                        copy_out(black_box(&mem), black_box(off), black_box(&mut out[..]));
                    }
                    n
                })
            }),
            // fill(0) of a heap buffer
            Box::new(|n| {
                timed(|| {
                    for _ in 0..n {
                        black_box(&mut z[..]).fill(0);
                    }
                    n
                })
            }),
            // zeroing of the slots before reuse
            Box::new(|n| {
                timed(|| {
                    for _ in 0..n {
                        // Cannot fail: inside the pool.
                        black_box(&mem)
                            .zero(black_box(off), size)
                            .expect("inside the pool");
                    }
                    n
                })
            }),
        ];
        let r = measure(&mut cases, plan.rounds, plan.slice);
        drop(cases);
        let gbs = |v: &[f64]| size as f64 / median(v); // bytes per ns = GB/s
        let need = if size >= 64 << 10 { 0.9 } else { 0.8 };
        let (rin, rout, rzero) = (
            speed_ratio(&r[1], &r[0]),
            speed_ratio(&r[3], &r[2]),
            speed_ratio(&r[5], &r[4]),
        );
        println!(
            "  {label:>6} in : memcpy {:>6.1} GB/s  write {:>6.1} GB/s  ratio {rin:.3}  (goal >= {need:.2}: {})",
            gbs(&r[0]),
            gbs(&r[1]),
            goal(rin >= need)
        );
        println!(
            "  {label:>6} out: memcpy {:>6.1} GB/s  read  {:>6.1} GB/s  ratio {rout:.3}  (goal >= {need:.2}: {})",
            gbs(&r[2]),
            gbs(&r[3]),
            goal(rout >= need)
        );
        println!(
            "  {label:>6} zero: fill  {:>6.1} GB/s  zero  {:>6.1} GB/s  ratio {rzero:.3}  (no goal)",
            gbs(&r[4]),
            gbs(&r[5]),
        );
        let k = label.replace(' ', "").to_lowercase();
        fig.put(&format!("memcpy_in_{k}_gbs"), gbs(&r[0]));
        fig.put(&format!("bounce_in_{k}_gbs"), gbs(&r[1]));
        fig.put(&format!("bounce_in_{k}_vs_memcpy"), rin);
        fig.put(&format!("memcpy_out_{k}_gbs"), gbs(&r[2]));
        fig.put(&format!("bounce_out_{k}_gbs"), gbs(&r[3]));
        fig.put(&format!("bounce_out_{k}_vs_memcpy"), rout);
        fig.put(&format!("zero_{k}_vs_fill"), rzero);
    }
}

fn main() {
    let (rounds, slice) = measure::plan(Duration::from_millis(40), Duration::from_millis(200));
    let plan = Plan { rounds, slice };
    let mut fig = Figures {
        json: serde_json::Map::new(),
    };
    allocator(&plan, &mut fig);
    bounce(&plan, &mut fig);
    println!("{}", serde_json::Value::Object(fig.json));
}

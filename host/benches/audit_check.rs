//! Micro-benchmark of the device's per-descriptor work, in nanoseconds per descriptor, against
//! an empty loop over the same descriptors measured in the same run:
//!
//! - `PoolWindow::contains`: the range check every descriptor passes;
//! - the audit check: that range check plus the summary-mode counting of
//!   `AuditHandle::record_chain` (one call per chain of three: request header, 4 KiB of data,
//!   status byte), the per-descriptor work the goal (<= 5 ns) is about;
//! - the same plus the transport's own `DmaCounters`, as `process_queue` does;
//! - the chain walker `ChainContext::check` on chains written in a real pool (direct, and
//!   through an indirect table as the driver posts them), alone and followed by the counting
//!   above: everything `process_queue` does per descriptor except popping the ring and
//!   serving the request.
//!
//! Cases run in interleaved rounds; figures are medians over rounds, and "net" is a case's
//! median minus the empty loop's. These machines are shared and noisy: compare within a run.
//! Never a pass/fail test: the goal is printed as met or missed.
//!
//! `cargo bench -p swiotlb-host --bench audit_check [-- --quick]`

#[path = "../../shared/benches/support/measure.rs"]
mod measure;

use measure::{measure, median, ops, Run};

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use swiotlb_host::audit::{AuditConfig, AuditHandle, AuditLog, AuditMode};
use swiotlb_host::pool::{Pool, PoolGuestMemory};
use swiotlb_host::virtio::{ChainContext, DmaCounters};
use swiotlb_shared::audit::DeviceIdentity;
use swiotlb_shared::descriptor::{
    Descriptor, DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use swiotlb_shared::layout::PoolWindow;
use vm_memory::{Bytes, GuestAddress};

/// Bus address of the pool (a 64-bit BAR above 4 GiB).
const BASE: u64 = 0x80_0000_0000;
/// Pool size: the default 16 MiB.
const POOL: u64 = 16 << 20;
/// Queue size: the descriptor table holds this many entries.
const QUEUE: u16 = 256;
/// Chains of three in the descriptor table (85 of them in 256 entries).
const CHAINS: u16 = QUEUE / 3;
/// Where the indirect tables are (one of three entries per chain).
const INDIRECT: u64 = BASE + 0x1_0000;
/// Where the data slots start.
const SLOTS: u64 = BASE + 0x10_0000;
/// Descriptors per pass of the flat loops (a multiple of three).
const FLAT: usize = 3 * 1024;

// ---- measurement ------------------------------------------------------------------------

// ---- the descriptors ----------------------------------------------------------------------

/// A block request's three buffers at slot `i`: header (readable), data (writable), status
/// (writable). Addresses are inside the pool.
fn request(i: u64) -> [(u64, u32, bool); 3] {
    let at = SLOTS + (i % 2048) * 0x1800;
    [
        (at, 16, false),
        (at + 0x800, 4096, true),
        (at + 16, 1, true),
    ]
}

fn put(mem: &PoolGuestMemory, table: u64, i: u16, d: (u64, u32, bool), flags: u16, next: u16) {
    let b = Descriptor {
        addr: d.0,
        len: d.1,
        flags: flags | if d.2 { VIRTQ_DESC_F_WRITE } else { 0 },
        next,
    }
    .to_bytes();
    // Cannot fail: every table written lies inside the pool.
    mem.write_slice(&b, GuestAddress(table + u64::from(i) * DESC_SIZE))
        .expect("descriptor inside the pool");
}

/// Writes `CHAINS` direct chains of three at heads 0, 3, 6, ... and, for the indirect
/// queue, `CHAINS` ring descriptors at heads 0..CHAINS each pointing at a table of three.
fn write_chains(mem: &PoolGuestMemory, direct_table: u64, indirect_ring: u64) {
    for c in 0..CHAINS {
        let r = request(u64::from(c));
        let h = c * 3;
        put(mem, direct_table, h, r[0], VIRTQ_DESC_F_NEXT, h + 1);
        put(mem, direct_table, h + 1, r[1], VIRTQ_DESC_F_NEXT, h + 2);
        put(mem, direct_table, h + 2, r[2], 0, 0);
        let table = INDIRECT + u64::from(c) * 48;
        put(mem, table, 0, r[0], VIRTQ_DESC_F_NEXT, 1);
        put(mem, table, 1, r[1], VIRTQ_DESC_F_NEXT, 2);
        put(mem, table, 2, r[2], 0, 0);
        put(
            mem,
            indirect_ring,
            c,
            (table, 48, false),
            VIRTQ_DESC_F_INDIRECT,
            0,
        );
    }
}

/// The counting `process_queue` does for a checked chain besides the audit (from the
/// chain's totals: descriptors and bytes per direction, indirect tables).
#[inline]
fn count(dma: &DmaCounters, readable: (u64, u64), writable: (u64, u64), indirect: u32) {
    if readable.0 != 0 {
        DmaCounters::add(&dma.readable_descriptors, readable.0);
        DmaCounters::add(&dma.readable_bytes, readable.1);
    }
    if writable.0 != 0 {
        DmaCounters::add(&dma.writable_descriptors, writable.0);
        DmaCounters::add(&dma.writable_bytes, writable.1);
    }
    if indirect != 0 {
        DmaCounters::add(&dma.indirect_tables, u64::from(indirect));
    }
}

/// Walks every chain of `ctx` once (heads `0, step, 2 step, ...`), optionally counting as
/// `process_queue` does; returns the buffer descriptors walked.
fn walk(ctx: &ChainContext<'_>, step: u16, audit: Option<(&AuditHandle, &DmaCounters)>) -> u64 {
    let mut n = 0u64;
    for c in 0..CHAINS {
        let head = c * step;
        // Cannot fail: every chain was written inside the pool.
        let chain = black_box(ctx).check(black_box(head)).expect("valid chain");
        if let Some((h, dma)) = audit {
            let descs = chain.descs.iter().map(|d| (d.addr, d.len, d.writable));
            h.record_chain(0, head, descs)
                .expect("audit writer running");
            count(
                dma,
                (chain.readable().len() as u64, chain.readable_len),
                (chain.writable().len() as u64, chain.writable_len),
                chain.indirect_tables,
            );
        }
        n += chain.descs.len() as u64;
        black_box(chain);
    }
    n
}

fn main() {
    let (rounds, slice) = measure::plan(Duration::from_millis(40), Duration::from_millis(200));

    let (dir, log, handle) = open_log("audit-check", AuditMode::Summary);
    let dma = DmaCounters::default();

    let window = PoolWindow::new(BASE, POOL).expect("window fits");
    let flat: Vec<(u64, u32, bool)> = (0..FLAT as u64 / 3).flat_map(request).collect();

    let mut pool = Pool::new(POOL).expect("pool memfd");
    pool.place(Some(BASE));
    let view = pool.view().expect("pool mapped").expect("pool decoded");
    let (direct_table, indirect_ring) = (BASE, BASE + 0x4000);
    write_chains(&view.mem, direct_table, indirect_ring);
    let ctx = |desc_table: u64| ChainContext {
        mem: &view.mem,
        window: view.window,
        desc_table,
        queue_size: QUEUE,
        indirect: true,
        queue: 0,
    };
    let (direct, indirect) = (ctx(direct_table), ctx(indirect_ring));

    let h = &handle;
    let d = &dma;
    let f = &flat;
    let mut cases: Vec<Run<'_>> = vec![
        // 0: the empty loop over the same descriptors.
        ops(move |n| {
            for _ in 0..n {
                for x in black_box(f) {
                    black_box(x);
                }
            }
            n * f.len() as u64
        }),
        // 1: the range check alone.
        ops(move |n| {
            for _ in 0..n {
                let w = black_box(window);
                for x in black_box(f) {
                    black_box(w.contains(x.0, u64::from(x.1)));
                }
            }
            n * f.len() as u64
        }),
        // 2: the audit check: range check + summary-mode record_chain, a chain of three.
        ops(move |n| {
            for _ in 0..n {
                let w = black_box(window);
                for (i, c) in black_box(f).chunks_exact(3).enumerate() {
                    let ok = c.iter().all(|x| w.contains(x.0, u64::from(x.1)));
                    if ok {
                        h.record_chain(0, i as u16, c.iter().copied())
                            .expect("audit writer running");
                    }
                }
            }
            n * f.len() as u64
        }),
        // 3: the audit check + the transport's DmaCounters, as process_queue counts.
        ops(move |n| {
            for _ in 0..n {
                let w = black_box(window);
                for (i, c) in black_box(f).chunks_exact(3).enumerate() {
                    let ok = c.iter().all(|x| w.contains(x.0, u64::from(x.1)));
                    if ok {
                        h.record_chain(0, i as u16, c.iter().copied())
                            .expect("audit writer running");
                        // The chain's totals, as a CheckedChain carries them.
                        let (mut r, mut w) = ((0, 0), (0, 0));
                        for x in c {
                            let t = if x.2 { &mut w } else { &mut r };
                            t.0 += 1;
                            t.1 += u64::from(x.1);
                        }
                        count(d, r, w, 0);
                    }
                }
            }
            n * f.len() as u64
        }),
        // 4: the chain walker, direct chains.
        ops(|n| (0..n).map(|_| walk(&direct, 3, None)).sum()),
        // 5: the chain walker, through indirect tables.
        ops(|n| (0..n).map(|_| walk(&indirect, 1, None)).sum()),
        // 6: walker (indirect) + record_chain + DmaCounters: process_queue's per-descriptor work.
        ops(|n| (0..n).map(|_| walk(&indirect, 1, Some((h, d)))).sum()),
    ];
    let r = measure(&mut cases, rounds, slice);
    drop(cases);
    let m: Vec<f64> = r.iter().map(|v| median(v)).collect();
    let net = |i: usize| {
        let per_round: Vec<f64> = r[i].iter().zip(&r[0]).map(|(x, e)| x - e).collect();
        median(&per_round)
    };
    println!(
        "per-descriptor device work: {rounds} interleaved rounds of ~{slice:?} (median); net = minus the empty loop, per round"
    );
    let names = [
        "empty loop (baseline)",
        "PoolWindow::contains",
        "audit check: contains + record_chain (summary)",
        "  + transport DmaCounters (as process_queue)",
        "chain walker, direct chains of 3",
        "chain walker, indirect tables of 3",
        "walker (indirect) + record_chain + DmaCounters",
    ];
    for (i, name) in names.iter().enumerate() {
        if i == 0 {
            println!("  {name:<48} {:>7.2} ns/desc", m[0]);
        } else {
            println!(
                "  {name:<48} {:>7.2} ns/desc  net {:>6.2} ns  ({:.1}x the empty loop)",
                m[i],
                net(i),
                m[i] / m[0]
            );
        }
    }
    let check = net(2);
    println!(
        "  goal <= 5 ns per descriptor for the audit check: {:.2} ns net ({:.2} ns with the loop): {}",
        check,
        m[2],
        if check <= 5.0 { "goal MET" } else { "goal MISSED" }
    );
    println!(
        "  (the walker reads each descriptor from the pool through vm-memory and builds a CheckedChain: a per-chain Vec)"
    );
    let keys = [
        "empty_loop_ns",
        "contains_ns",
        "audit_check_ns",
        "audit_check_with_transport_counters_ns",
        "walker_direct_ns",
        "walker_indirect_ns",
        "walker_indirect_with_counting_ns",
    ];
    let mut json = serde_json::Map::new();
    for (i, k) in keys.iter().enumerate() {
        json.insert((*k).into(), serde_json::json!(m[i]));
        if i > 0 {
            json.insert(k.replace("_ns", "_net_ns"), serde_json::json!(net(i)));
        }
    }
    drop(handle);
    let _ = log.close();
    let _ = std::fs::remove_dir_all(&dir);
    let chains = if measure::quick() { 200_000 } else { 2_000_000 };
    let rate = full_writer_rate(chains);
    println!(
        "full-mode writer: {chains} chains of 3 descriptors, queued 32 a pass, drained at {:.0} chains/s ({:.0} ns of writer time per chain: JSON, hashing, writes)",
        rate,
        1e9 / rate
    );
    json.insert("full_writer_chains_per_s".into(), serde_json::json!(rate));
    println!("{}", serde_json::Value::Object(json));
}

/// A fresh audit log in `mode` in a temporary directory of its own (`name` in the path and
/// the device identity); the caller removes the directory.
fn open_log(name: &str, mode: AuditMode) -> (PathBuf, AuditLog, AuditHandle) {
    let dir = std::env::temp_dir().join(format!("swiotlb-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = AuditConfig::new(dir.join("audit.jsonl"));
    cfg.mode = mode;
    let id = DeviceIdentity {
        uid: "bench".into(),
        name: name.into(),
    };
    // Cannot fail short of a full or read-only temporary directory.
    let (log, handle) = AuditLog::open(cfg, id).expect("audit log in the temporary directory");
    (dir, log, handle)
}

/// How fast the writer thread drains full-mode chains: `chains` of 3 descriptors sent in
/// passes of 32 (as the device sends a queue's pass), timed from the first send until the
/// log is closed (everything written and checkpointed), in chains per second.
fn full_writer_rate(chains: u32) -> f64 {
    let (dir, log, handle) = open_log("audit-full", AuditMode::Full);
    let start = Instant::now();
    let mut i = 0;
    while i < chains {
        let mut batch = handle.dma_batch();
        for _ in 0..32 {
            let r = request(u64::from(i));
            batch
                .record_chain(0, (i % 256) as u16, r)
                .expect("the writer is running");
            i += 1;
        }
    }
    drop(handle);
    log.close().expect("the log closes");
    let rate = f64::from(chains) / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

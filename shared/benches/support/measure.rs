//! The measurement loop every micro-benchmark of the workspace shares (included by path from
//! each crate's `benches/`): calibrate each case to a time slice, run the cases in interleaved
//! rounds, and report medians and per-round ratios, because these machines are shared and
//! noisy: absolute numbers move, ratios much less.
#![allow(dead_code)] // each bench uses the part it needs

use std::time::{Duration, Instant};

/// Rounds in the short mode (`--quick`) and in the full mode.
const QUICK_ROUNDS: usize = 5;
const FULL_ROUNDS: usize = 11;

/// Whether the command line asks for the short mode (`--quick`).
///
/// A scan, not a clap parser, kept on purpose: cargo hands these `harness = false` benches
/// its own arguments besides ours (measured: `cargo bench --bench B -- --quick` runs
/// `B --quick --bench`, `cargo bench --bench B -- foo --quick` runs `B foo --quick --bench`,
/// `cargo test --benches` runs `B`), and the benches ignore them. A parser would have to
/// declare and discard `--bench`, filters and libtest's flags to accept the same command
/// lines, for one switch.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// Rounds and time slice for this run: the short mode's 5 rounds of `quick_slice`, or 11
/// rounds of `full_slice`.
pub fn plan(quick_slice: Duration, full_slice: Duration) -> (usize, Duration) {
    if quick() {
        (QUICK_ROUNDS, quick_slice)
    } else {
        (FULL_ROUNDS, full_slice)
    }
}

/// A case: given an iteration count, runs it and returns (operations done, time taken).
pub type Run<'a> = Box<dyn FnMut(u64) -> (u64, Duration) + 'a>;

/// Times `f`, which returns the operations it did.
pub fn timed(f: impl FnOnce() -> u64) -> (u64, Duration) {
    let t = Instant::now();
    let ops = f();
    (ops, t.elapsed())
}

/// A case that does the operations it returns, timed around the whole call.
pub fn ops<'a>(mut f: impl FnMut(u64) -> u64 + 'a) -> Run<'a> {
    Box::new(move |n| timed(|| f(n)))
}

/// A case that does exactly `n` operations, timed around the whole call.
pub fn each<'a>(mut f: impl FnMut(u64) + 'a) -> Run<'a> {
    Box::new(move |n| {
        timed(|| {
            f(n);
            n
        })
    })
}

/// Iterations that make one measurement of `run` last about `slice`.
fn calibrate(run: &mut Run<'_>, slice: Duration) -> u64 {
    let mut n = 1u64;
    loop {
        let (_, e) = run(n);
        if e >= slice / 8 || n >= 1 << 40 {
            let per = e.as_secs_f64() / n as f64;
            return ((slice.as_secs_f64() / per.max(1e-12)) as u64).max(1);
        }
        n *= 2;
    }
}

/// Runs `cases` in interleaved rounds; returns nanoseconds per operation, per case per round.
pub fn measure(cases: &mut [Run<'_>], rounds: usize, slice: Duration) -> Vec<Vec<f64>> {
    let iters: Vec<u64> = cases.iter_mut().map(|c| calibrate(c, slice)).collect();
    let mut out = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (i, c) in cases.iter_mut().enumerate() {
            let (ops, e) = c(iters[i]);
            out[i].push(e.as_nanos() as f64 / ops.max(1) as f64);
        }
    }
    out
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median over rounds of `base[r] / x[r]`: the speed of `x` relative to `base` (1.0 = as fast).
pub fn speed_ratio(x: &[f64], base: &[f64]) -> f64 {
    let r: Vec<f64> = x.iter().zip(base).map(|(x, b)| b / x).collect();
    median(&r)
}

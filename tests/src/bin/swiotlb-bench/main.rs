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

mod audit_rounds;
mod baselines;
mod cli;
mod cpu;
mod disk_limit;
mod error;
mod goals;
mod pair;
mod queue_scaling;
mod second_copy;
mod stats;
mod workload_rounds;
mod workloads;

use std::process::ExitCode;

use clap::Parser;
use serde_json::{json, Map, Value};
use swiotlb_shared::error_chain;

use crate::audit_rounds::audit_rounds;
use crate::baselines::{child, measure_baselines};
use crate::cli::{Cli, Config};
use crate::cpu::loadavg;
use crate::disk_limit::measure_disk_path;
use crate::error::BenchError;
use crate::goals::judge_goals;
use crate::queue_scaling::queue_scaling;
use crate::second_copy::second_copy;
use crate::workload_rounds::workload_rounds;

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

/// The whole benchmark, phase after phase, in the order the report prints them.
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
    let (base, fx) = measure_baselines(cfg, &say, &mut out)?;
    // The disk path's own limit, with the hosts' engine and thread count.
    let path = measure_disk_path(cfg, &fx, base.time, &say, &mut out)?;
    let qd32_vs_limit = workload_rounds(cfg, &fx, &path, &say, &mut out)?;
    if !cfg.audit_only {
        queue_scaling(cfg, &fx, path.uring, &say, &mut out)?;
    }
    if !cfg.only.is_empty() {
        println!("{}", Value::Object(out));
        return Ok(());
    }
    if !cfg.audit_only {
        second_copy(cfg, &fx, &say, &mut out)?;
    }
    audit_rounds(cfg, &fx, &say, &mut out)?;
    judge_goals(&base, qd32_vs_limit, &say, &mut out);
    out.insert("loadavg_end".into(), json!(loadavg()));
    out.insert("quick".into(), json!(cfg.quick));
    out.insert("poll_us".into(), json!(cfg.poll.as_micros() as u64));
    out.insert("pinned".into(), json!(cfg.pin));
    // One JSON object on stdout, last, in both output modes.
    println!("{}", Value::Object(out));
    Ok(())
}

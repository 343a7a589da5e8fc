//! Every workload in polling and in interrupt mode, round after round, the polled QD32
//! reads beside the disk path's own limit measured right after each round.

use serde_json::{json, Map, Value};

use crate::cli::Config;
use crate::disk_limit::{disk_limit, DiskPath, LIMIT_QD};
use crate::error::BenchError;
use crate::pair::{Audit, Fixture, Mode, Pair};
use crate::stats::median;
use crate::workloads::{check_data, measure, Figures, WORKLOADS};

/// Each workload on a pair of each notification mode (none with `--audit-only`), then the
/// disk path's own limit over the run and the CPU time a request costs beside it: polled
/// QD32 reads as a share of that limit (the median of per-round ratios).
pub(crate) fn workload_rounds(
    cfg: &Config,
    fx: &Fixture,
    path: &DiskPath,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) -> Result<f64, BenchError> {
    let DiskPath {
        uring,
        host_threads,
        limit_first,
    } = *path;
    let mut limits = vec![limit_first];
    let mut limit_cpu = Vec::new();
    let mut qd32_ratios = Vec::new();
    for mode in [Mode::Polling, Mode::Interrupt] {
        if cfg.audit_only {
            break;
        }
        let mut pair = Pair::start(cfg, fx, mode, Audit::Off, mode.name())?;
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
    Ok(qd32_vs_limit)
}

//! Multi-queue: what the device scales to from one queue to two, beside what the machine
//! does on the disk path alone.

use std::time::Duration;

use serde_json::{json, Map, Value};
use swiotlb_guest::BlockError;

use crate::cli::Config;
use crate::disk_limit::{disk_limit_iops, LIMIT_QD};
use crate::error::BenchError;
use crate::pair::{Audit, Fixture, Mode, Pair};
use crate::stats::median;
use crate::workloads::{measure, Workload, WORKLOADS};

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
pub(crate) fn queue_scaling(
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

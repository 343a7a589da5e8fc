//! What the ublk server's own buffers cost: a second copy of every byte.

use serde_json::{json, Map, Value};

use crate::cli::Config;
use crate::error::BenchError;
use crate::pair::{Audit, Fixture, Mode, Pair};
use crate::stats::median;
use crate::workloads::{measure_copies, Copies, WORKLOADS};

/// What the ublk server's own buffers cost: each workload at queue depth 32 (8 for 128 KiB)
/// with one copy per request (the driver's bounce) and with two (the kernel's copy into the
/// server's buffer, then the bounce), on one pair in polling mode, interleaved round after
/// round; the ratio is the median of the per-round ratios.
pub(crate) fn second_copy(
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

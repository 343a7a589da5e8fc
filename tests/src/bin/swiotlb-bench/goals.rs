//! The goals, judged on this run's figures.

use serde_json::{json, Map, Value};

use crate::baselines::Baselines;

/// Goals of the issue, as ratios or figures measured in the same run: QD32 polled reads
/// at this share of the disk path's own limit, QD1 polled within this much of the disk's
/// own 4 KiB read latency, QD1 with interrupts within this multiple of an eventfd round trip.
const GOAL_QD32_VS_DISK_LIMIT: f64 = 0.9;
const GOAL_QD1_OVER_DISK_US: f64 = 0.5;
const GOAL_INTERRUPT_VS_EVENTFD: f64 = 1.5;
const GOAL_AUDIT_FULL_VS_OFF: f64 = 0.90;

/// Judges each goal on the figures in `out` and the baselines: MET or MISSED, on the report
/// and in `goals_met` (`true`/`false`), or NOT MEASURED (`null`) when this run did not
/// measure its figure.
pub(crate) fn judge_goals(
    base: &Baselines,
    qd32_vs_limit: f64,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) {
    let &Baselines {
        shm,
        efd_med,
        pread,
        ..
    } = base;
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
    // A goal whose figure this run did not measure (`--only`, `--audit-only`) is neither.
    let mark = |ok: Option<bool>| match ok {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "NOT MEASURED",
    };
    let judge = |figure: f64, ok: bool| (!figure.is_nan()).then_some(ok);
    let goals = [
        ("qd1_polling_le_disk_plus_0_5us", judge(qd1p, qd1p <= qd1_goal), format!("polling QD1 median {qd1p:.2} us (goal <= the disk's own pread {pread:.2} us + {GOAL_QD1_OVER_DISK_US} us = {qd1_goal:.2} us)")),
        ("qd32_polling_ge_0_9_of_disk_limit", judge(qd32_vs_limit, qd32_vs_limit >= GOAL_QD32_VS_DISK_LIMIT), format!("polling QD32 at {qd32_vs_limit:.3} of the disk path's own limit (goal >= {GOAL_QD32_VS_DISK_LIMIT})")),
        ("qd1_interrupt_le_1_5x_eventfd", judge(vs_efd, vs_efd <= GOAL_INTERRUPT_VS_EVENTFD), format!("interrupt QD1 median {qd1i:.2} us = {vs_efd:.2} x the eventfd round trip (goal <= {GOAL_INTERRUPT_VS_EVENTFD} x)")),
        ("audit_full_ge_0_9_of_off", judge(full, full >= GOAL_AUDIT_FULL_VS_OFF), format!("audit full at {full:.3} of off, interrupt mode (goal >= {GOAL_AUDIT_FULL_VS_OFF})")),
        ("audit_full_ge_0_9_of_off_polling", judge(full_polling, full_polling >= GOAL_AUDIT_FULL_VS_OFF), format!("audit full at {full_polling:.3} of off, polling mode (goal >= {GOAL_AUDIT_FULL_VS_OFF})")),
    ];
    say("goals:".into());
    let mut g = Map::new();
    for (k, ok, text) in goals {
        if ok.is_some() {
            say(format!("  {:<6} {text}", mark(ok)));
        } else {
            say(format!("  {} {k}", mark(ok)));
        }
        // `null` in the JSON when not measured.
        g.insert(k.into(), json!(ok));
    }
    out.insert("goals_met".into(), Value::Object(g));
}

//! The audit comparison: off, summary and full, in both notification modes.

use serde_json::{json, Map, Value};

use crate::cli::Config;
use crate::cpu::threads_cpu_ns;
use crate::error::BenchError;
use crate::pair::{Audit, Fixture, Mode, Pair};
use crate::stats::median;
use crate::workloads::{measure, WORKLOADS};

/// Audit off, summary and full at QD32, in polling and in interrupt mode; the ratios to
/// "off" are medians of per-round ratios.
pub(crate) fn audit_rounds(
    cfg: &Config,
    fx: &Fixture,
    say: &dyn Fn(String),
    out: &mut Map<String, Value>,
) -> Result<(), BenchError> {
    // Audit modes, in both notification modes: 4 KiB random reads at QD32, a fresh host
    // for each measurement, interleaved round after round, each round starting one mode
    // further along (a mode that always ran first, or right after another, would carry
    // whatever drift there is within a round).
    let w = WORKLOADS[2];
    for mode in [Mode::Polling, Mode::Interrupt] {
        let audits = [Audit::Off, Audit::Summary, Audit::Full];
        let n = audits.len();
        let mut iops: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); n];
        // The host's on-CPU time per request: all its threads, and the audit writer's.
        let mut host_ns: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut writer_ns: Vec<Vec<f64>> = vec![Vec::new(); n];
        for r in 0..cfg.audit_rounds {
            let mut this = vec![f64::NAN; n];
            for i in (0..n).map(|k| (k + r) % n) {
                let a = audits[i];
                let tag = format!("audit-{}-{}-{r}", mode.name(), a.name());
                let mut pair = Pair::start(cfg, fx, mode, a, &tag)?;
                let seed = (r * 10 + i + 1) as u64;
                let pid = pair.host.id();
                let before = threads_cpu_ns(pid, "swiotlb-audit");
                let f = measure(&mut pair.drv, pid, &w, cfg.disk_bytes, cfg.slice, seed)?;
                let after = threads_cpu_ns(pid, "swiotlb-audit");
                pair.stop()?;
                if let (Some(b), Some(a)) = (before, after) {
                    let per =
                        |x: u64, y: u64| y.saturating_sub(x) as f64 / f.requests.max(1) as f64;
                    host_ns[i].push(per(b.0, a.0));
                    writer_ns[i].push(per(b.1, a.1));
                }
                this[i] = f.iops;
                iops[i].push(f.iops);
            }
            for (i, v) in this.iter().enumerate() {
                ratios[i].push(v / this[0]);
            }
        }
        say(format!(
            "audit, {} mode ({} at QD32, {} interleaved rounds, a fresh host each):",
            mode.name(),
            w.name,
            cfg.audit_rounds
        ));
        // The key names the interrupt-mode ratio; polling's carries its mode.
        let suffix = match mode {
            Mode::Interrupt => String::new(),
            Mode::Polling => "_polling".into(),
        };
        let have_cpu = host_ns.iter().all(|v| !v.is_empty());
        for (i, a) in audits.iter().enumerate() {
            let m = median(&mut iops[i]);
            let ratio = median(&mut ratios[i]);
            let cpu = if have_cpu {
                let (h, wr) = (median(&mut host_ns[i]), median(&mut writer_ns[i]));
                out.insert(format!("audit_{}_host_cpu_ns{suffix}", a.name()), json!(h));
                if *a != Audit::Off {
                    out.insert(
                        format!("audit_{}_writer_cpu_ns{suffix}", a.name()),
                        json!(wr),
                    );
                }
                format!("; host CPU {h:.0} ns a request, of which the audit writer {wr:.0} ns")
            } else {
                String::new()
            };
            // The per-round ratios, sorted (by `median`): how far the rounds spread.
            let rounds = if *a == Audit::Off {
                String::new()
            } else {
                let r: Vec<String> = ratios[i].iter().map(|r| format!("{r:.2}")).collect();
                format!(" (rounds {})", r.join(" "))
            };
            say(format!(
                "  audit {:<8} {:>10.0} IOPS  ratio to off {:.3}{rounds}{cpu}",
                a.name(),
                m,
                ratio
            ));
            out.insert(format!("audit_{}_iops{suffix}", a.name()), json!(m));
            if *a != Audit::Off {
                out.insert(format!("audit_{}_vs_off{suffix}", a.name()), json!(ratio));
            }
        }
    }
    Ok(())
}

//! The command line and what it sets: how long each measurement runs, and where.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::Parser;

use crate::error::BenchError;
use crate::workloads::WORKLOADS;

/// Host polling budget in polling mode, microseconds.
const DEFAULT_POLL_US: u64 = 50;

/// End-to-end benchmark of swiotlb-host and the guest driver; see BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-bench")]
pub(crate) struct Cli {
    /// Short mode: one round of 250 ms per workload, a 64 MiB disk, 3 audit rounds.
    #[arg(long)]
    quick: bool,
    /// The report on stderr; stdout holds only the JSON object.
    #[arg(long)]
    json: bool,
    /// The swiotlb-host binary (default: the one beside swiotlb-bench).
    #[arg(long, value_name = "PATH")]
    host_bin: Option<PathBuf>,
    /// Host polling budget in polling mode, microseconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POLL_US,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    poll_us: u64,
    /// Run only these workloads, and skip the audit comparison.
    #[arg(long, value_name = "W1,W2", value_delimiter = ',',
          value_parser = PossibleValuesParser::new(WORKLOADS.map(|w| w.name)))]
    only: Vec<String>,
    /// Run only the audit comparison.
    #[arg(long)]
    audit_only: bool,
    /// Rounds of the audit comparison (default: 11, 3 with --quick). Per-round ratios
    /// of two audit modes that cost the same move by several per cent here: more rounds
    /// steady the medians.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    audit_rounds: Option<u64>,
    /// Where the hosts write their audit logs (default: the run's temporary directory).
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// The hosts' disk engine (`swiotlb-host --io-engine`), used for the disk limit too.
    #[arg(long, value_name = "ENGINE", default_value = "uring",
          value_parser = PossibleValuesParser::new(["uring", "sync"]))]
    io_engine: String,
    /// Leave polling hosts and drivers wherever the scheduler puts them. By default, on a
    /// machine with two CPUs or more, a polling host runs on CPU 1 and the driver's thread
    /// on CPU 0 while the pair runs: a polling side that shares its CPU with the side it
    /// waits for spins its whole budget before the other can run. Interrupt-mode pairs are
    /// never pinned (pinned, a woken side waits for its own CPU even when the other is
    /// idle: 30-43 us instead of 11-14 us at QD1 here).
    #[arg(long)]
    no_pin: bool,
    /// The baselines' child (this binary runs itself with it): `shm FD` or `eventfd A B`.
    #[arg(long, hide = true, num_args = 2..=3, value_names = ["MODE", "FD"])]
    pub(crate) child: Option<Vec<String>>,
}

/// What this run measures, and how long.
pub(crate) struct Config {
    pub(crate) quick: bool,
    pub(crate) json: bool,
    pub(crate) host_bin: PathBuf,
    pub(crate) poll: Duration,
    /// How long each workload runs per round.
    pub(crate) slice: Duration,
    /// Rounds of every workload (the figure is the median).
    pub(crate) rounds: usize,
    /// Rounds of the audit comparison.
    pub(crate) audit_rounds: usize,
    pub(crate) disk_bytes: u64,
    /// Run only these workloads (names), and skip the audit comparison; empty: everything.
    pub(crate) only: Vec<String>,
    /// Where the hosts write their audit logs (default: the run's temporary directory).
    pub(crate) audit_dir: Option<PathBuf>,
    /// Run only the audit comparison.
    pub(crate) audit_only: bool,
    /// The hosts' disk engine.
    pub(crate) io_engine: String,
    /// Pin each polling host to CPU 1 and the driver's thread to CPU 0 while the pair runs.
    pub(crate) pin: bool,
}

impl Config {
    pub(crate) fn new(cli: Cli) -> Result<Self, BenchError> {
        let quick = cli.quick;
        let host_bin = match cli.host_bin {
            Some(p) => p,
            None => sibling("swiotlb-host")?,
        };
        Ok(Self {
            quick,
            json: cli.json,
            host_bin,
            poll: Duration::from_micros(cli.poll_us),
            slice: Duration::from_millis(if quick { 250 } else { 1000 }),
            rounds: if quick { 1 } else { 3 },
            audit_rounds: cli
                .audit_rounds
                .map_or(if quick { 3 } else { 11 }, |n| n as usize),
            disk_bytes: if quick { 64 << 20 } else { 256 << 20 },
            only: cli.only,
            audit_dir: cli.audit_dir,
            audit_only: cli.audit_only,
            io_engine: cli.io_engine,
            pin: !cli.no_pin && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        })
    }
}

/// A workspace binary beside this one.
fn sibling(name: &str) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::LocateSelf)?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(BenchError::HostMissing(p))
    }
}

//! `swiotlb-audit show`: the records of a log, one line each (or their JSON lines), by
//! class and from a time on.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::ValueEnum;
use swiotlb_shared::audit::ocsf::class;
use swiotlb_shared::audit::{Event, Record};
use swiotlb_shared::time::format_rfc3339_ms as format_time;
use thiserror::Error;

use crate::input::each_record;
use crate::ToolError;

/// Record classes for `show --class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShowClass {
    /// Detection and Compliance Findings (policy violations, attestation verdicts).
    Finding,
    /// Device Config State Change and Peripheral Activity.
    Config,
    /// Memory Activity: DMA chains (full mode) and summaries.
    Dma,
    /// Event Log Activity: lifecycle and checkpoints.
    Log,
}

impl ShowClass {
    fn matches(self, class_uid: u32) -> bool {
        match self {
            Self::Finding => {
                class_uid == class::DETECTION_FINDING || class_uid == class::COMPLIANCE_FINDING
            }
            Self::Config => {
                class_uid == class::DEVICE_CONFIG_STATE_CHANGE
                    || class_uid == class::PERIPHERAL_ACTIVITY
            }
            Self::Dma => class_uid == class::MEMORY_ACTIVITY,
            Self::Log => class_uid == class::EVENT_LOG_ACTIVITY,
        }
    }
}

/// Why a `--since` time was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    /// Neither a number nor an RFC 3339 time.
    #[error("expected ms since the epoch or RFC 3339 (YYYY-MM-DDTHH:MM:SSZ), not {0:?}")]
    NotATime(String),
}

/// `T` as ms since the epoch or RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fff](Z|+hh:mm)`).
pub fn parse_time(s: &str) -> Result<u64, TimeError> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    swiotlb_shared::time::parse_rfc3339_ms(s).ok_or_else(|| TimeError::NotATime(s.to_string()))
}

/// Under a DMA chains record, one line per chain: its descriptors in order, each as
/// `addr+len` and `r` (device-readable) or `w` (device-writable).
fn show_dma_chains(out: &mut impl Write, r: &Record) -> io::Result<()> {
    let Some(Event::Dma(d)) = r.event() else {
        return Ok(());
    };
    for c in &d.chains {
        let descs: Vec<String> = c
            .descriptors
            .iter()
            .map(|x| {
                let dir = if x.writable { 'w' } else { 'r' };
                format!("{:#x}+{} {dir}", x.addr, x.len)
            })
            .collect();
        writeln!(
            out,
            "{:>8}   queue {} head {}: {}",
            "",
            c.queue,
            c.head,
            descs.join(", ")
        )?;
    }
    Ok(())
}

/// Prints the records of `logs` of `class` at or after `since` (ms since the epoch).
pub fn run(
    logs: &[PathBuf],
    class: Option<ShowClass>,
    since: Option<u64>,
    as_json: bool,
) -> Result<(), ToolError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    each_record(
        logs,
        |r, bytes| {
            if class.is_some_and(|c| !c.matches(r.class_uid)) || since.is_some_and(|t| r.time < t) {
                return;
            }
            // A closed pipe (e.g. `| head`) is not worth reporting: write errors are dropped.
            let _ = if as_json {
                out.write_all(bytes).and_then(|()| out.write_all(b"\n"))
            } else {
                writeln!(
                    out,
                    "{:>8} {} {:<26} {:<13} {:<13} {}",
                    r.sequence(),
                    format_time(r.time),
                    r.class_name,
                    r.activity_name,
                    r.severity,
                    r.message
                )
                .and_then(|()| show_dma_chains(&mut out, r))
            };
        },
        |p, t| {
            eprintln!(
                "warning: {}: torn last line of {} bytes",
                p.display(),
                t.len()
            )
        },
    )?;
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_print_as_rfc3339_utc() {
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert!(parse_time("2023-13-01T00:00:00Z").is_err());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2023-11-14T22:13:20.\u{e9}\u{e9}Z").is_err());
    }
}

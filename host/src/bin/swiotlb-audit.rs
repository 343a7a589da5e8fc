//! `swiotlb-audit`: verify, show, count and prove the device's audit log.
//!
//! ```text
//! swiotlb-audit verify LOG... --key PUBKEY [--live] [--json]   exit 0 intact, 1 tampered, 2 unreadable
//! swiotlb-audit show LOG... [--class C] [--since T] [--json]
//! swiotlb-audit stats LOG... [--json]
//! swiotlb-audit prove LOG... --index N [--key PUBKEY] [--json]
//! swiotlb-audit prove LOG... --consistency A B [--key PUBKEY] [--json]
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use swiotlb_host::audit::key::read_verifier;
use swiotlb_shared::audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use swiotlb_shared::audit::schema::class;
use swiotlb_shared::audit::verify::{Options, Verifier};
use swiotlb_shared::audit::{
    Checkpoint, CompactRange, Event, LogAction, PartialTree, Record, VerifierKey,
};
use swiotlb_shared::error_chain;

/// Verify and read the swiotlb device's tamper-evident audit log.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-audit", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check the files of a log, in order: exit 0 intact, 1 tampered, 2 unreadable.
    Verify {
        /// Log files, oldest first.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Verifier key file (`<origin>+<id>+<key>`, the `.pub` beside the signing key).
        #[arg(long)]
        key: PathBuf,
        /// The log may still be being written: unsigned last records and a torn last line
        /// are warnings, and no stop record is required.
        #[arg(long)]
        live: bool,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print records.
    Show {
        /// Log files, oldest first.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Only records of this class.
        #[arg(long)]
        class: Option<ShowClass>,
        /// Only records at or after this time: ms since the epoch, or RFC 3339 UTC
        /// (`2025-01-31T12:00:00Z`).
        #[arg(long, value_parser = parse_time)]
        since: Option<u64>,
        /// Print the records' JSON lines as they are.
        #[arg(long)]
        json: bool,
    },
    /// DMAs, bytes and findings per device and queue.
    Stats {
        /// Log files, oldest first.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Inclusion proof of a record against the latest checkpoint, or a consistency proof.
    Prove {
        /// Log files, oldest first.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Record (sequence number) to prove.
        #[arg(long, required_unless_present = "consistency")]
        index: Option<u64>,
        /// Consistency proof from tree size A to tree size B.
        #[arg(long, num_args = 2, value_names = ["A", "B"], conflicts_with = "index")]
        consistency: Option<Vec<u64>>,
        /// Check the latest checkpoint's signature with this verifier key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Record classes for `show --class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ShowClass {
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

/// Exit statuses of `verify` (and of other commands: 0 done, 2 unreadable input).
const EXIT_TAMPERED: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

/// A command's failure: message and exit status.
struct Failed(u8, String);

fn unreadable(path: &Path, e: io::Error) -> Failed {
    Failed(
        EXIT_UNREADABLE,
        format!("cannot read {}: {e}", path.display()),
    )
}

/// Calls `f` with each complete line of each file, then (for a last line without newline)
/// `torn`. `begin` is called before each file.
fn each_line(
    logs: &[PathBuf],
    mut begin: impl FnMut(&Path),
    mut f: impl FnMut(&Path, u64, &[u8]),
    mut torn: impl FnMut(&Path, &[u8]),
) -> Result<(), Failed> {
    for path in logs {
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        begin(path);
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            buf.clear();
            let got = r
                .read_until(b'\n', &mut buf)
                .map_err(|e| unreadable(path, e))?;
            if got == 0 {
                break;
            }
            if buf.last() == Some(&b'\n') {
                n += 1;
                f(path, n, &buf[..buf.len() - 1]);
            } else {
                torn(path, &buf);
            }
        }
    }
    Ok(())
}

fn file_label(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn load_key(path: &Path) -> Result<VerifierKey, Failed> {
    read_verifier(path).map_err(|e| Failed(EXIT_UNREADABLE, error_chain(&e)))
}

fn cmd_verify(logs: &[PathBuf], key: &Path, live: bool, as_json: bool) -> Result<(), Failed> {
    let key = load_key(key)?;
    let cell = std::cell::RefCell::new(Verifier::new(key.clone(), Options { live }));
    each_line(
        logs,
        |p| cell.borrow_mut().begin_file(&file_label(p)),
        |_, _, l| cell.borrow_mut().line(l),
        |_, t| cell.borrow_mut().torn(t),
    )?;
    let report = cell.into_inner().finish();
    let latest = report
        .latest
        .as_ref()
        .map(|c| json!({"origin": c.origin, "size": c.size, "root": B64.encode(c.root)}));
    if as_json {
        let failure = report.failure.as_ref().map(|f| {
            json!({"reason": f.reason.name(), "index": f.index, "file": f.file, "line": f.line,
                   "detail": f.detail})
        });
        let files: Vec<_> = report
            .files
            .iter()
            .map(|f| {
                json!({"file": f.name, "first": f.first, "lines": f.lines,
                       "checkpoints": f.checkpoints, "torn": f.torn})
            })
            .collect();
        let out = json!({"ok": report.ok, "key": key.to_string(), "records": report.lines,
                         "files": files, "latest_checkpoint": latest, "failure": failure,
                         "warnings": report.warnings});
        println!("{out}");
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        match &report.failure {
            None => {
                let (size, root) = report
                    .latest
                    .as_ref()
                    .map_or((0, String::new()), |c| (c.size, B64.encode(c.root)));
                println!(
                    "OK: {} records in {} file(s); latest checkpoint: size {size}, root {root}",
                    report.lines,
                    report.files.len()
                );
            }
            Some(f) => println!("TAMPERED: {f}"),
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failed(EXIT_TAMPERED, String::new()))
    }
}

fn parse_record(path: &Path, line_no: u64, bytes: &[u8]) -> Option<Record> {
    match Record::parse(bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!(
                "warning: {}:{line_no}: skipped: {}",
                path.display(),
                error_chain(&e)
            );
            None
        }
    }
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

fn cmd_show(
    logs: &[PathBuf],
    class: Option<ShowClass>,
    since: Option<u64>,
    as_json: bool,
) -> Result<(), Failed> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    each_line(
        logs,
        |_| {},
        |p, n, bytes| {
            let Some(r) = parse_record(p, n, bytes) else {
                return;
            };
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
                .and_then(|()| show_dma_chains(&mut out, &r))
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

#[derive(Default)]
struct QueueStats {
    readable_descriptors: u64,
    readable_bytes: u64,
    writable_descriptors: u64,
    writable_bytes: u64,
    dma_records: u64,
}

#[derive(Default)]
struct DeviceStats {
    name: String,
    queues: BTreeMap<Option<u16>, QueueStats>,
    findings: BTreeMap<String, u64>,
    findings_by_queue: BTreeMap<Option<u16>, u64>,
    dma_violations: u64,
    attestations_passed: u64,
    attestations_failed: u64,
    connects: u64,
    records: u64,
}

fn cmd_stats(logs: &[PathBuf], as_json: bool) -> Result<(), Failed> {
    let mut devices: BTreeMap<String, DeviceStats> = BTreeMap::new();
    each_line(
        logs,
        |_| {},
        |p, n, bytes| {
            let Some(r) = parse_record(p, n, bytes) else {
                return;
            };
            let d = devices.entry(r.device.uid.clone()).or_default();
            d.name.clone_from(&r.device.name);
            d.records += 1;
            match r.event() {
                Some(Event::DmaSummary(s)) => {
                    for q in s.queues {
                        let e = d.queues.entry(q.queue).or_default();
                        e.readable_descriptors += q.readable_descriptors;
                        e.readable_bytes += q.readable_bytes;
                        e.writable_descriptors += q.writable_descriptors;
                        e.writable_bytes += q.writable_bytes;
                    }
                }
                Some(Event::Dma(x)) => {
                    // Descriptors recorded one by one (full mode), per queue.
                    for c in &x.chains {
                        d.queues.entry(Some(c.queue)).or_default().dma_records +=
                            c.descriptors.len() as u64;
                    }
                }
                Some(Event::Finding(f)) => {
                    *d.findings.entry(f.kind).or_default() += 1;
                    *d.findings_by_queue.entry(f.queue).or_default() += 1;
                    d.dma_violations += u64::from(f.dma_violation);
                }
                Some(Event::Attestation(a)) => {
                    if a.passed {
                        d.attestations_passed += 1;
                    } else {
                        d.attestations_failed += 1;
                    }
                }
                Some(Event::Peripheral(pe)) => {
                    d.connects +=
                        u64::from(pe.action == swiotlb_shared::audit::PeripheralAction::Connect)
                }
                _ => {}
            }
        },
        |_, _| {},
    )?;
    if as_json {
        let devs: Vec<_> = devices
            .iter()
            .map(|(uid, d)| {
                let queues: Vec<_> = d
                    .queues
                    .iter()
                    .map(|(q, s)| {
                        json!({"queue": q, "dmas": s.readable_descriptors + s.writable_descriptors,
                           "readable_descriptors": s.readable_descriptors,
                           "readable_bytes": s.readable_bytes,
                           "writable_descriptors": s.writable_descriptors,
                           "writable_bytes": s.writable_bytes,
                           "dma_records": s.dma_records,
                           "findings": d.findings_by_queue.get(q).copied().unwrap_or(0)})
                    })
                    .collect();
                json!({"uid": uid, "name": d.name, "records": d.records, "queues": queues,
                       "findings": d.findings, "dma_violations": d.dma_violations,
                       "attestations_passed": d.attestations_passed,
                       "attestations_failed": d.attestations_failed, "connects": d.connects})
            })
            .collect();
        println!("{}", json!({ "devices": devs }));
        return Ok(());
    }
    for (uid, d) in &devices {
        println!(
            "device {uid} ({}): {} records, {} connects",
            d.name, d.records, d.connects
        );
        for (q, s) in &d.queues {
            let qn = q.map_or_else(|| "other".to_string(), |q| q.to_string());
            println!(
                "  queue {qn}: {} DMAs ({} read: {} bytes; {} write: {} bytes), {} DMA records, {} findings",
                s.readable_descriptors + s.writable_descriptors,
                s.readable_descriptors,
                s.readable_bytes,
                s.writable_descriptors,
                s.writable_bytes,
                s.dma_records,
                d.findings_by_queue.get(q).copied().unwrap_or(0)
            );
        }
        let total: u64 = d.findings.values().sum();
        println!("  findings: {total} ({} DMA violations)", d.dma_violations);
        for (k, n) in &d.findings {
            println!("    {k}: {n}");
        }
        println!(
            "  attestation: {} passed, {} failed",
            d.attestations_passed, d.attestations_failed
        );
    }
    Ok(())
}

/// The tree of the given files and their latest checkpoint.
struct Loaded {
    tree: PartialTree,
    lines: BTreeMap<u64, Vec<u8>>,
    latest: Option<(u64, String)>,
}

fn load_tree(logs: &[PathBuf], keep: Option<u64>) -> Result<Loaded, Failed> {
    let mut tree: Option<PartialTree> = None;
    let mut lines = BTreeMap::new();
    let mut latest = None;
    let mut err = None;
    each_line(
        logs,
        |_| {},
        |p, n, bytes| {
            if err.is_some() {
                return;
            }
            if tree.is_none() {
                let Some(r) = parse_record(p, n, bytes) else {
                    err = Some(format!("{}:{n}: not a record", p.display()));
                    return;
                };
                let prev = r
                    .log_event()
                    .filter(|l| l.action == LogAction::Rotate)
                    .and_then(|l| l.previous.as_ref());
                tree = Some(match prev {
                    None => PartialTree::default(),
                    Some(prev) => {
                        let size = swiotlb_shared::audit::SignedNote::parse(&prev.checkpoint)
                            .ok()
                            .and_then(|n| Checkpoint::parse(&n.text).ok())
                            .map_or(0, |c| c.size);
                        match CompactRange::from_peaks(size, prev.peaks.clone()) {
                            Ok(c) => {
                                let mut t = PartialTree::new(c);
                                t.push(r.unmapped.prev_leaf);
                                t
                            }
                            Err(e) => {
                                err = Some(format!("{}:{n}: {e}", p.display()));
                                return;
                            }
                        }
                    }
                });
            }
            let Some(t) = tree.as_mut() else { return };
            let index = t.size();
            if Some(index) == keep {
                lines.insert(index, bytes.to_vec());
            }
            if bytes.windows(12).any(|w| w == b"\"checkpoint\"") {
                if let Some(Event::Checkpoint(c)) =
                    Record::parse(bytes).ok().and_then(|r| r.event())
                {
                    latest = Some((index, c.note));
                }
            }
            t.push(leaf_hash(bytes));
        },
        |_, _| {},
    )?;
    if let Some(e) = err {
        return Err(Failed(EXIT_UNREADABLE, e));
    }
    Ok(Loaded {
        tree: tree.unwrap_or_default(),
        lines,
        latest,
    })
}

fn checked_checkpoint(note: &str, key: Option<&Path>) -> Result<(Checkpoint, bool), Failed> {
    if let Some(k) = key {
        let key = load_key(k)?;
        let cp = Checkpoint::verify_note(note, &key)
            .map_err(|e| Failed(EXIT_TAMPERED, format!("latest checkpoint: {e}")))?;
        return Ok((cp, true));
    }
    let n = swiotlb_shared::audit::SignedNote::parse(note)
        .map_err(|e| Failed(EXIT_TAMPERED, format!("latest checkpoint: {e}")))?;
    let cp = Checkpoint::parse(&n.text)
        .map_err(|e| Failed(EXIT_TAMPERED, format!("latest checkpoint: {e}")))?;
    Ok((cp, false))
}

fn cmd_prove(
    logs: &[PathBuf],
    index: Option<u64>,
    consistency: Option<Vec<u64>>,
    key: Option<&Path>,
    as_json: bool,
) -> Result<(), Failed> {
    let loaded = load_tree(logs, index)?;
    let Some((_, note)) = &loaded.latest else {
        return Err(Failed(
            EXIT_UNREADABLE,
            "no checkpoint in the given files".into(),
        ));
    };
    let (cp, signed) = checked_checkpoint(note, key)?;
    let t = &loaded.tree;
    let root = t
        .root_at(cp.size)
        .map_err(|e| Failed(EXIT_TAMPERED, e.to_string()))?;
    if root != cp.root {
        return Err(Failed(
            EXIT_TAMPERED,
            "the records do not match the latest checkpoint (run verify)".into(),
        ));
    }
    let b64s = |v: &[[u8; 32]]| v.iter().map(|h| B64.encode(h)).collect::<Vec<_>>();
    if let Some(ab) = consistency {
        let (a, b) = (ab[0], ab[1]);
        let fail = |e: swiotlb_shared::audit::ProofError| Failed(EXIT_UNREADABLE, e.to_string());
        if b > cp.size {
            return Err(Failed(
                EXIT_UNREADABLE,
                format!("size {b} is past the latest checkpoint ({})", cp.size),
            ));
        }
        let proof = t.consistency_proof(a, b).map_err(fail)?;
        let (ra, rb) = (t.root_at(a).map_err(fail)?, t.root_at(b).map_err(fail)?);
        verify_consistency(a, b, &ra, &rb, &proof).map_err(fail)?;
        if as_json {
            println!(
                "{}",
                json!({"old_size": a, "old_root": B64.encode(ra), "new_size": b,
                       "new_root": B64.encode(rb), "proof": b64s(&proof),
                       "checkpoint": note, "checkpoint_signature_checked": signed})
            );
        } else {
            println!(
                "consistency: size {a} (root {}) -> size {b} (root {})",
                B64.encode(ra),
                B64.encode(rb)
            );
            for h in &proof {
                println!("  {}", B64.encode(h));
            }
        }
        return Ok(());
    }
    let Some(i) = index else {
        return Err(Failed(
            EXIT_UNREADABLE,
            "give --index or --consistency".into(),
        ));
    };
    if i >= cp.size {
        return Err(Failed(
            EXIT_UNREADABLE,
            format!(
                "record {i} is not covered by the latest checkpoint (size {})",
                cp.size
            ),
        ));
    }
    let leaf = t.leaf(i).ok_or_else(|| {
        Failed(
            EXIT_UNREADABLE,
            format!("record {i} is before the first given file; give the earlier files too"),
        )
    })?;
    let proof = t
        .inclusion_proof(i, cp.size)
        .map_err(|e| Failed(EXIT_UNREADABLE, e.to_string()))?;
    verify_inclusion(&leaf, i, cp.size, &proof, &cp.root)
        .map_err(|e| Failed(EXIT_TAMPERED, e.to_string()))?;
    let record = loaded
        .lines
        .get(&i)
        .map(|b| String::from_utf8_lossy(b).into_owned());
    if as_json {
        println!(
            "{}",
            json!({"index": i, "leaf_hash": B64.encode(leaf), "tree_size": cp.size,
                   "root": B64.encode(cp.root), "proof": b64s(&proof), "checkpoint": note,
                   "checkpoint_signature_checked": signed, "record": record})
        );
    } else {
        println!(
            "record {i} (leaf hash {}) is in the tree of size {}",
            B64.encode(leaf),
            cp.size
        );
        println!("root: {}", B64.encode(cp.root));
        println!("proof ({} hashes):", proof.len());
        for h in &proof {
            println!("  {}", B64.encode(h));
        }
        if !signed {
            println!("(checkpoint signature not checked: give --key)");
        }
    }
    Ok(())
}

/// `T` as ms since the epoch or RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fff](Z|+hh:mm)`).
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    swiotlb_shared::time::parse_rfc3339_ms(s).ok_or_else(|| {
        format!("expected ms since the epoch or RFC 3339 (YYYY-MM-DDTHH:MM:SSZ), not {s:?}")
    })
}

use swiotlb_shared::time::format_rfc3339_ms as format_time;

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Verify {
            logs,
            key,
            live,
            json,
        } => cmd_verify(&logs, &key, live, json),
        Cmd::Show {
            logs,
            class,
            since,
            json,
        } => cmd_show(&logs, class, since, json),
        Cmd::Stats { logs, json } => cmd_stats(&logs, json),
        Cmd::Prove {
            logs,
            index,
            consistency,
            key,
            json,
        } => cmd_prove(&logs, index, consistency, key.as_deref(), json),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("swiotlb-audit: {msg}");
            }
            ExitCode::from(code)
        }
    }
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

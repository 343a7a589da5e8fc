//! `swiotlb-audit export`: a SIEM feed. Writes the records of a log on stdout as OCSF JSON
//! Lines, each once a verified checkpoint covers it, with where it was proven
//! (`unmapped.proof`: file, line, index, the checkpoint's size, root and origin); with
//! `--follow`, waits for more across rotation as `tail -F` does.
//!
//! The log is verified as it is read, exactly as `verify --live` verifies it: a record is
//! written only after the checkpoint that covers it verified under the key, and export
//! stops (exit 1) at the first record that does not verify, writing nothing from there on.
//! Records of the first layout (OCSF 1.5.0) are written in the current one.
//!
//! - [`source`]: the files, read as they grow;
//! - [`records`]: a proven record as the OCSF records a SIEM receives, the one place where
//!   a record of many DMAs is expanded into one record per DMA.
//!
//! Stops in order on SIGINT or SIGTERM (after the batch being written) and when stdout is
//! closed (EPIPE): exit 0, having written whole lines only. `--state FILE` keeps the last
//! record written, so that a restarted export goes on after it.

pub mod records;
pub mod source;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::ValueEnum;
use serde_json::json;
use swiotlb_shared::audit::verify::{Options, Verifier};
use swiotlb_shared::audit::{Checkpoint, Failure, Record, VerifierKey};
use thiserror::Error;

use crate::input::{file_label, load_key};
use crate::ToolError;
use records::{ocsf_records, DmaRecords, Proof, RecordsError};
use source::{next_file, Numbered, ReadOr, Tail};

/// Output formats of `export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// OCSF JSON Lines, in the OCSF version the writer writes.
    Ocsf,
}

/// What `export` was asked.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Log files, oldest first, or a log's base path (`<dir>/<stem>.<ext>`: its files).
    pub logs: Vec<PathBuf>,
    /// Verifier key file.
    pub key: PathBuf,
    /// Wait for more records, across rotation.
    pub follow: bool,
    /// Output format.
    pub format: Format,
    /// Where the last record written is kept.
    pub state: Option<PathBuf>,
    /// How often to look for more when following.
    pub poll: Duration,
    /// One record per DMA for records of many DMAs.
    pub per_dma: bool,
}

/// Errors of `export`.
#[derive(Debug, Error)]
pub enum ExportError {
    /// A log file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A base path names a log with no file, and export does not follow.
    #[error("no file of the log {} (give --follow to wait for it)", .0.display())]
    NoFiles(PathBuf),
    /// A record does not verify: nothing from it on is written.
    #[error("the log does not verify: {0}")]
    Tampered(Failure),
    /// Writing stdout failed (other than its reader going away).
    #[error("writing the records")]
    Write(#[source] io::Error),
    /// The state file cannot be read or written.
    #[error("state file {}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The state file does not hold a state.
    #[error("state file {}: not a state written by export ({detail})", path.display())]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The state names a checkpoint this log signed with another root: another log's state.
    #[error(
        "state file {}: the log's checkpoint of size {size} has another root than the state's: \
         the state belongs to another log", path.display()
    )]
    StateOtherLog {
        /// The file.
        path: PathBuf,
        /// The checkpoint size.
        size: u64,
    },
    /// A record cannot be mapped to OCSF.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The signal handlers cannot be installed.
    #[error("installing the SIGINT and SIGTERM handlers")]
    Signals(#[source] io::Error),
}

impl ExportError {
    /// Whether the log was shown not to verify (exit 1), rather than unusable (exit 2).
    pub fn is_tampered(&self) -> bool {
        matches!(self, Self::Tampered(_) | Self::StateOtherLog { .. })
    }
}

/// Why export stopped without an error.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Every given file was read (without `--follow`).
    End,
    /// SIGINT or SIGTERM.
    Signal,
    /// Stdout's reader went away (EPIPE).
    Downstream,
}

/// The handler's outcome for one line: go on, or stop.
enum LineError {
    Stop(Stop),
    Failed(ExportError),
}

impl From<ExportError> for LineError {
    fn from(e: ExportError) -> Self {
        Self::Failed(e)
    }
}

/// The last record written, kept in the state file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    index: u64,
    checkpoint_size: u64,
    checkpoint_root: String,
}

impl State {
    fn load(path: &Path) -> Result<Option<State>, ExportError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ExportError::State {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let bad = |detail: &str| ExportError::StateFormat {
            path: path.to_path_buf(),
            detail: detail.into(),
        };
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
        let num = |k: &str| v[k].as_u64().ok_or_else(|| bad(&format!("no {k}")));
        Ok(Some(State {
            index: num("index")?,
            checkpoint_size: num("checkpoint_size")?,
            checkpoint_root: v["checkpoint_root"]
                .as_str()
                .ok_or_else(|| bad("no checkpoint_root"))?
                .to_string(),
        }))
    }

    /// Replaces the file whole (a new file renamed over it), so a crash leaves the old
    /// state or the new one.
    fn save(&self, path: &Path) -> Result<(), ExportError> {
        let err = |source| ExportError::State {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let text = json!({"index": self.index, "checkpoint_size": self.checkpoint_size,
                          "checkpoint_root": self.checkpoint_root})
        .to_string();
        std::fs::write(&tmp, text + "\n").map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// The records read and not yet covered by a checkpoint.
struct Pending {
    file: String,
    line: u64,
    record: Record,
}

struct Exporter<W: Write> {
    verifier: Verifier,
    pending: Vec<Pending>,
    out: W,
    dma: DmaRecords,
    state_path: Option<PathBuf>,
    /// From the state file: records up to this index were written by an earlier run.
    resume: Option<State>,
    written: u64,
    last: Option<State>,
    stop: Arc<AtomicBool>,
}

impl<W: Write> Exporter<W> {
    fn begin_file(&mut self, label: &str) -> Result<(), ExportError> {
        self.verifier.begin_file(label);
        self.check()
    }

    fn check(&self) -> Result<(), ExportError> {
        match self.verifier.failure() {
            Some(f) => Err(ExportError::Tampered(f.clone())),
            None => Ok(()),
        }
    }

    /// One complete line of the file labelled `file`.
    fn line(&mut self, file: &str, line: u64, bytes: &[u8]) -> Result<(), LineError> {
        self.verifier.line(bytes);
        self.check()?;
        // The verifier has parsed it: this cannot fail, but is not unwrapped.
        let record = Record::parse(bytes).map_err(|_| {
            ExportError::Tampered(self.verifier.failure().cloned().unwrap_or(Failure {
                reason: swiotlb_shared::audit::Reason::Altered,
                file: file.to_string(),
                line,
                index: 0,
                detail: "does not parse".into(),
            }))
        })?;
        let is_checkpoint = record.checkpoint_note().is_some();
        if is_checkpoint {
            if let Some(cp) = self.verifier.latest().cloned() {
                if cp.size == record.sequence() {
                    self.covered(&cp)?;
                }
            }
        }
        self.pending.push(Pending {
            file: file.to_string(),
            line,
            record,
        });
        if self.stop.load(Ordering::Relaxed) {
            return Err(LineError::Stop(Stop::Signal));
        }
        Ok(())
    }

    /// Writes every pending record: the checkpoint `cp` covers them.
    fn covered(&mut self, cp: &Checkpoint) -> Result<(), LineError> {
        let root = B64.encode(cp.root);
        if let (Some(r), Some(path)) = (&self.resume, &self.state_path) {
            if r.checkpoint_size == cp.size && r.checkpoint_root != root {
                return Err(ExportError::StateOtherLog {
                    path: path.clone(),
                    size: cp.size,
                }
                .into());
            }
        }
        let pending = std::mem::take(&mut self.pending);
        let mut last = None;
        for p in &pending {
            let index = p.record.sequence();
            if self.resume.as_ref().is_some_and(|r| index <= r.index) {
                continue;
            }
            let proof = Proof {
                file: p.file.clone(),
                line: p.line,
                index,
                checkpoint: cp.clone(),
            };
            for v in ocsf_records(&p.record, &proof, self.dma).map_err(ExportError::from)? {
                let mut line = v.to_string();
                line.push('\n');
                self.out.write_all(line.as_bytes()).map_err(write_error)?;
                self.written += 1;
            }
            last = Some(index);
        }
        self.out.flush().map_err(write_error)?;
        if let Some(index) = last {
            let s = State {
                index,
                checkpoint_size: cp.size,
                checkpoint_root: root,
            };
            if let Some(path) = &self.state_path {
                s.save(path)?;
            }
            self.last = Some(s);
        }
        Ok(())
    }
}

fn write_error(e: io::Error) -> LineError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        LineError::Stop(Stop::Downstream)
    } else {
        LineError::Failed(ExportError::Write(e))
    }
}

/// The files named by `logs`, oldest first: each numbered file as given, each base path
/// as the files of its log present now. Also the naming to wait on when a base path has
/// no file yet.
fn initial_files(logs: &[PathBuf]) -> Result<(VecDeque<PathBuf>, Option<Numbered>), ExportError> {
    let mut files = VecDeque::new();
    let mut waiting = None;
    for p in logs {
        if p.is_file() || Numbered::of_file(p).is_some() {
            files.push_back(p.clone());
            continue;
        }
        let Some(n) = Numbered::of_base(p) else {
            files.push_back(p.clone());
            continue;
        };
        let present = n.present().map_err(|source| ExportError::Read {
            path: n.dir.clone(),
            source,
        })?;
        if present.is_empty() {
            waiting = Some(n);
        }
        files.extend(present);
    }
    if !files.is_empty() {
        waiting = None;
    }
    Ok((files, waiting))
}

/// Runs `export`.
pub fn run(opts: &ExportOptions) -> Result<(), ToolError> {
    let key = load_key(&opts.key)?;
    let Format::Ocsf = opts.format;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(ExportError::Signals)?;
    }
    let stdout = io::stdout();
    let out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    Ok(export(opts, key, out, stop)?)
}

fn export<W: Write>(
    opts: &ExportOptions,
    key: VerifierKey,
    out: W,
    stop: Arc<AtomicBool>,
) -> Result<(), ExportError> {
    let resume = match &opts.state {
        Some(p) => State::load(p)?,
        None => None,
    };
    let mut ex = Exporter {
        verifier: Verifier::new(key, Options { live: true }),
        pending: Vec::new(),
        out,
        dma: if opts.per_dma {
            DmaRecords::PerDma
        } else {
            DmaRecords::AsWritten
        },
        state_path: opts.state.clone(),
        resume,
        written: 0,
        last: None,
        stop: Arc::clone(&stop),
    };
    let (mut queue, mut waiting) = initial_files(&opts.logs)?;
    if queue.is_empty() && !opts.follow {
        return Err(ExportError::NoFiles(
            opts.logs.first().cloned().unwrap_or_default(),
        ));
    }
    let mut current: Option<(Tail, String)> = None;
    let why = loop {
        if stop.load(Ordering::Relaxed) {
            break Stop::Signal;
        }
        let Some((tail, label)) = current.as_mut() else {
            if let Some(path) = queue.pop_front() {
                let tail = Tail::open(&path).map_err(|source| ExportError::Read {
                    path: path.clone(),
                    source,
                })?;
                let label = file_label(&path);
                ex.begin_file(&label)?;
                current = Some((tail, label));
                continue;
            }
            if !opts.follow {
                break Stop::End;
            }
            if let Some(n) = &waiting {
                let present = n.present().map_err(|source| ExportError::Read {
                    path: n.dir.clone(),
                    source,
                })?;
                if !present.is_empty() {
                    queue.extend(present);
                    waiting = None;
                    continue;
                }
            }
            std::thread::sleep(opts.poll);
            continue;
        };
        let read = |tail: &mut Tail, label: &str, ex: &mut Exporter<W>| {
            tail.read_lines(|n, l| ex.line(label, n, l))
                .map_err(|e| match e {
                    ReadOr::Read(source) => LineError::Failed(ExportError::Read {
                        path: tail.path.clone(),
                        source,
                    }),
                    ReadOr::Other(e) => e,
                })
        };
        match read(tail, label, &mut ex) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(LineError::Stop(s)) => break s,
            Err(LineError::Failed(e)) => return Err(e),
        }
        // At the end of the file for now: go on to the next file once there is one. The
        // writer ends a file (its final checkpoint, flushed) before it creates the next,
        // so one more read takes whatever came in between.
        let next = match queue.front() {
            Some(_) => None,
            None if opts.follow => next_file(&tail.path).filter(|p| p.exists()),
            None => None,
        };
        if queue.is_empty() && next.is_none() && opts.follow {
            std::thread::sleep(opts.poll);
            continue;
        }
        match read(tail, label, &mut ex) {
            Ok(_) => {}
            Err(LineError::Stop(s)) => break s,
            Err(LineError::Failed(e)) => return Err(e),
        }
        if !tail.partial().is_empty() {
            ex.verifier.torn(tail.partial());
        }
        queue.extend(next);
        current = None;
    };
    match why {
        Stop::End => {
            // A log that stopped ends with its final checkpoint, which no later checkpoint
            // covers: it is not written, and that is no news.
            let unproven = ex.pending.len();
            let closing = ex.pending.len() == 1
                && ex
                    .pending
                    .iter()
                    .all(|p| p.record.checkpoint_note().is_some());
            let report = ex.verifier.finish();
            if let Some(f) = report.failure {
                return Err(ExportError::Tampered(f));
            }
            if unproven > 0 && !closing {
                eprintln!(
                    "swiotlb-audit export: {unproven} record(s) at the end not yet covered by a \
                     checkpoint were not written"
                );
            }
        }
        Stop::Signal | Stop::Downstream => {
            let what = if why == Stop::Signal {
                "stopped by a signal"
            } else {
                "stdout closed"
            };
            let last = ex
                .last
                .as_ref()
                .map_or("none".to_string(), |s| s.index.to_string());
            eprintln!(
                "swiotlb-audit export: {what}; {} record(s) written, the last of index {last}",
                ex.written
            );
        }
    }
    Ok(())
}

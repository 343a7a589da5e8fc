//! Opening a log: a new one started, or an existing one examined (verified up to its torn
//! tail, if a crash left one), reopened and resumed, or its tail recovered into a restart
//! record.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use swiotlb_shared::audit::encoding::base64;
use swiotlb_shared::audit::event::{PreviousCheckpoint, TornTail, MAX_TORN_KEPT, NO_TRANSCRIPT};
use swiotlb_shared::audit::merkle::sha256;
use swiotlb_shared::audit::verify::{self, Options, Tail, Verifier};
use swiotlb_shared::audit::{CompactRange, DeviceIdentity, Event, LogAction, LogEvent};

use super::super::dma::DmaAccumulator;
use super::super::key::SigningKey;
use super::super::{now_ms, AuditConfig, AuditError, Carry, SpareBuffers};
use super::{
    discover, display_name, file_name, io_err, split_base, sync_dir, Writer, WRITE_BUFFER,
};

/// What the last file of an existing log holds.
struct Existing {
    index: u32,
    path: PathBuf,
    complete: u64,
    torn: Option<TornTail>,
}

impl Writer {
    pub(super) fn create_file(path: &Path) -> Result<File, AuditError> {
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(f)
    }

    /// Opens (recovering) or starts the log.
    pub(crate) fn open(
        cfg: AuditConfig,
        device: DeviceIdentity,
        key: SigningKey,
        dma: Arc<DmaAccumulator>,
        spare: Arc<SpareBuffers>,
        carry: Arc<Carry>,
    ) -> Result<Self, AuditError> {
        let (dir, _, _) = split_base(&cfg.path);
        let files = discover(&cfg.path).map_err(io_err(&dir))?;
        let placeholder = file_name(&cfg.path, 1);
        let mut w = Writer {
            device,
            key: key.pair,
            verifier: key.verifier,
            pid: std::process::id(),
            // SAFETY: getuid has no preconditions and cannot fail.
            uid: unsafe { libc::getuid() },
            dma,
            spare,
            carry,
            file: None,
            path: placeholder,
            index: 0,
            bytes: 0,
            opened: Instant::now(),
            tree: CompactRange::new(),
            prev_leaf: [0; 32],
            last_cp: None,
            last_was_checkpoint: false,
            since_cp: 0,
            transcript: NO_TRANSCRIPT,
            interval_start: now_ms(),
            previous_file_name: None,
            cfg,
        };
        let Some((index, path)) = files.last().cloned() else {
            w.start_new(1, None, String::new())?;
            return Ok(w);
        };
        let (existing, report) = w.examine(index, &path)?;
        if existing.complete == 0 {
            w.recover_empty(&files, existing)?;
        } else {
            w.recover(existing, report)?;
        }
        Ok(w)
    }

    /// Reads a file once: verifies its complete lines with this writer's key (as a log
    /// that may still be live) and finds the torn remainder, if any.
    fn examine(&self, index: u32, path: &Path) -> Result<(Existing, verify::Report), AuditError> {
        let f = File::open(path).map_err(io_err(path))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut v = Verifier::new(self.verifier.clone(), Options { live: true });
        v.begin_file(&display_name(path));
        let (mut complete, mut torn) = (0u64, None);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            if buf.last() == Some(&b'\n') {
                v.line(&buf[..n - 1]);
                complete += n as u64;
            } else {
                v.torn(&buf);
                torn = Some(TornTail {
                    offset: complete,
                    len: n as u64,
                    sha256: sha256(&buf),
                    data_b64: (n <= MAX_TORN_KEPT).then(|| base64(&buf)),
                });
            }
        }
        let existing = Existing {
            index,
            path: path.to_path_buf(),
            complete,
            torn,
        };
        Ok((existing, v.finish()))
    }

    /// Reopens `path` for appending after cutting it to `len` bytes.
    fn reopen(&mut self, index: u32, path: &Path, len: u64) -> Result<(), AuditError> {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(len).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
        drop(f);
        let f = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        self.file = Some(BufWriter::with_capacity(WRITE_BUFFER, f));
        self.path = path.to_path_buf();
        self.index = index;
        self.bytes = len;
        self.opened = Instant::now();
        Ok(())
    }

    fn resume(&mut self, tail: Tail) {
        self.tree = tail.tree;
        self.prev_leaf = tail.prev_leaf;
        self.last_was_checkpoint = tail.unsigned == 0 && tail.last_checkpoint.is_some();
        self.last_cp = tail.last_checkpoint;
        self.since_cp = tail.unsigned;
    }

    pub(super) fn log_event(&self, action: LogAction) -> LogEvent {
        LogEvent {
            action,
            file: display_name(&self.path),
            mode: self.cfg.mode.name().to_string(),
            key: self.verifier.to_string(),
            previous: None,
            torn: None,
            unclean: false,
            detail: String::new(),
        }
    }

    /// The last file has complete lines: continue it, or start afresh if it fails to verify.
    fn recover(&mut self, ex: Existing, report: verify::Report) -> Result<(), AuditError> {
        match (report.failure, report.tail) {
            (None, Some(tail)) => {
                let unclean = !tail.stopped;
                self.resume(tail);
                self.reopen(ex.index, &ex.path, ex.complete)?;
                let mut ev = self.log_event(LogAction::Restart);
                ev.torn = ex.torn;
                ev.unclean = unclean;
                self.record(now_ms(), Event::Log(ev))?;
                self.checkpoint().map(drop)
            }
            (failure, _) => {
                let why = failure.map_or_else(|| "no state".to_string(), |f| f.to_string());
                let detail = format!(
                    "{} failed verification ({why}); it is left as found and a new log starts",
                    display_name(&ex.path)
                );
                self.start_new(ex.index + 1, None, detail)
            }
        }
    }

    /// The last file has no complete line (a crash right after it was created).
    fn recover_empty(&mut self, files: &[(u32, PathBuf)], ex: Existing) -> Result<(), AuditError> {
        let prev = files.len().checked_sub(2).map(|i| files[i].clone());
        let Some((pindex, ppath)) = prev else {
            self.reopen(ex.index, &ex.path, 0)?;
            return self.first_record(LogAction::Start, ex.torn, String::new());
        };
        let (prev_ex, report) = self.examine(pindex, &ppath)?;
        let prev_torn = prev_ex.torn.is_some();
        match (report.failure, report.tail) {
            (None, Some(tail)) if tail.unsigned == 0 && !prev_torn => {
                // The usual case: a crash between creating the file and writing its first
                // line. The previous file ends with its final checkpoint: rotate again.
                self.resume(tail);
                self.reopen(pindex, &ppath, prev_ex.complete)?;
                self.rotate_into(ex.index, ex.torn)
            }
            (failure, _) => {
                let why = failure.map_or_else(
                    || "it does not end with a checkpoint".to_string(),
                    |f| f.to_string(),
                );
                let detail = format!(
                    "{} cannot be continued ({why}); it and {} are left as found and a new \
                     log starts",
                    display_name(&ppath),
                    display_name(&ex.path)
                );
                self.start_new(ex.index + 1, None, detail)
            }
        }
    }

    /// Starts a new log (empty tree) in file `index`.
    fn start_new(
        &mut self,
        index: u32,
        torn: Option<TornTail>,
        detail: String,
    ) -> Result<(), AuditError> {
        let path = file_name(&self.cfg.path, index);
        let f = Self::create_file(&path)?;
        self.file = Some(BufWriter::with_capacity(WRITE_BUFFER, f));
        self.path = path;
        self.index = index;
        self.bytes = 0;
        self.opened = Instant::now();
        self.tree = CompactRange::new();
        self.prev_leaf = [0; 32];
        self.last_cp = None;
        self.since_cp = 0;
        self.first_record(LogAction::Start, torn, detail)
    }

    /// Writes a file's first record (start or rotate) and anchors it with a checkpoint.
    pub(super) fn first_record(
        &mut self,
        action: LogAction,
        torn: Option<TornTail>,
        detail: String,
    ) -> Result<(), AuditError> {
        let mut ev = self.log_event(action);
        ev.torn = torn;
        ev.detail = detail;
        if action == LogAction::Rotate {
            if let Some((note, _, peaks)) = &self.last_cp {
                ev.previous = Some(PreviousCheckpoint {
                    file: String::new(),
                    checkpoint: note.clone(),
                    peaks: peaks.clone(),
                });
            }
        }
        if let Some(p) = &mut ev.previous {
            p.file = self.previous_file_name.take().unwrap_or_default();
        }
        self.record(now_ms(), Event::Log(ev))?;
        self.checkpoint().map(drop)
    }
}

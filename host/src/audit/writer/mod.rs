//! The writer thread: appends records, keeps the Merkle tree, signs checkpoints, rotates
//! files, and on open recovers from a crash.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::signature::Ed25519KeyPair;
use swiotlb_shared::audit::batch::batch_line;
use swiotlb_shared::audit::event::{CheckpointRecord, TornTail};
use swiotlb_shared::audit::merkle::leaf_hash;
use swiotlb_shared::audit::note::NoteSignature;
use swiotlb_shared::audit::{
    Checkpoint, CompactRange, DeviceIdentity, DmaSummary, Envelope, Event, Hash, LogAction,
    PackedChains, Record, SignedNote, VerifierKey,
};

mod open;

use super::dma::DmaAccumulator;
use super::{now_ms, AuditConfig, AuditError, Carry, Msg, SpareBuffers, MAX_DMA_BATCH_BYTES};

/// Digits of the file counter.
const INDEX_DIGITS: usize = 6;

/// Bytes the writer gathers before a `write`: several DMA batch records (up to ~44 KiB a
/// line), so that a busy writer makes one system call for several of them. Whatever is
/// gathered is written whenever the queue is empty, and before every checkpoint's fsync.
const WRITE_BUFFER: usize = 256 << 10;

/// While full-mode chains are arriving, the writer looks for more this often (the queue,
/// then the chains the device carries for it) rather than sleeping on the queue: a sender
/// whose message finds the writer asleep on the queue must wake it (a futex call, and on a
/// machine with few CPUs the woken writer then takes one from the guest or the device), and
/// every wake-up costs the writer a flush and a record's fixed cost for the few chains it
/// finds. Looking every 5 ms finds hundreds to thousands of chains at a time. Senders wake the writer for anything
/// other than chains, and when the queue is full (then the device waits, as always); the
/// queue's default 4096 passes hold more than 5 ms of them at any rate the device reaches.
const DMA_POLL: Duration = Duration::from_millis(5);
const DMA_LINGER: Duration = Duration::from_millis(20);

/// `(dir, stem, ext)` of the configured base path (`ext` may be empty).
pub(crate) fn split_base(path: &Path) -> (PathBuf, String, String) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let stem = path
        .file_stem()
        .map_or_else(|| "audit".to_string(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    (dir, stem, ext)
}

/// The name of file `index` of the log at `base`.
pub fn file_name(base: &Path, index: u32) -> PathBuf {
    let (dir, stem, ext) = split_base(base);
    if ext.is_empty() {
        dir.join(format!("{stem}.{index:0INDEX_DIGITS$}"))
    } else {
        dir.join(format!("{stem}.{index:0INDEX_DIGITS$}.{ext}"))
    }
}

/// The files of the log at `base`, by index.
pub fn discover(base: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let (dir, stem, ext) = split_base(base);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{stem}.")) else {
            continue;
        };
        let digits = if ext.is_empty() {
            Some(rest)
        } else {
            rest.strip_suffix(&format!(".{ext}"))
        };
        let Some(d) = digits else { continue };
        if d.len() == INDEX_DIGITS && d.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = d.parse::<u32>() {
                out.push((i, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The writer's state.
pub(crate) struct Writer {
    cfg: AuditConfig,
    device: DeviceIdentity,
    key: Ed25519KeyPair,
    verifier: VerifierKey,
    pid: u32,
    /// The real user id, with the pid the records' actor.
    uid: u32,
    dma: Arc<DmaAccumulator>,
    /// Where emptied pass buffers go back to the device.
    spare: Arc<SpareBuffers>,
    /// The chains the device has checked and not sent (see [`Carry`]).
    carry: Arc<Carry>,
    /// The current file; `None` only while `open` has not chosen it yet.
    file: Option<BufWriter<File>>,
    path: PathBuf,
    index: u32,
    bytes: u64,
    opened: Instant,
    tree: CompactRange,
    prev_leaf: Hash,
    /// Last checkpoint: note, its index, the peaks at its size.
    last_cp: Option<(String, u64, Vec<Hash>)>,
    last_was_checkpoint: bool,
    since_cp: u64,
    transcript: Hash,
    interval_start: u64,
    /// Name of the file a rotation leaves, for the rotation record.
    previous_file_name: Option<String>,
}

impl Writer {
    /// Moves on to file `index`, the current file ending with a checkpoint.
    fn rotate_into(&mut self, index: u32, torn: Option<TornTail>) -> Result<(), AuditError> {
        if !self.last_was_checkpoint {
            self.checkpoint()?;
        }
        self.flush_sync()?;
        let prev_name = display_name(&self.path);
        let path = file_name(&self.cfg.path, index);
        let f = Self::create_file(&path)?;
        if torn.is_some() {
            // A file left with partial bytes by a crash during the last rotation restarts
            // empty; its bytes are kept in the rotation record.
            f.set_len(0).map_err(io_err(&path))?;
        }
        self.file = Some(BufWriter::with_capacity(WRITE_BUFFER, f));
        self.path = path;
        self.index = index;
        self.bytes = 0;
        self.opened = Instant::now();
        self.previous_file_name = Some(prev_name);
        self.first_record(LogAction::Rotate, torn, String::new())
    }

    fn out(&mut self) -> Result<&mut BufWriter<File>, AuditError> {
        // Every path of `open` opens a file before the first write.
        self.file.as_mut().ok_or_else(|| AuditError::Io {
            path: self.path.clone(),
            source: io::Error::other("no audit file is open"),
        })
    }

    fn envelope(&self, time: u64) -> Envelope {
        Envelope {
            sequence: self.tree.size(),
            time,
            device: self.device.clone(),
            pid: self.pid,
            uid: Some(self.uid),
            product_version: env!("CARGO_PKG_VERSION").to_string(),
            transcript: self.transcript,
            prev_leaf: self.prev_leaf,
        }
    }

    /// Appends one line. DMA batches take their own way, `dma_record`: every event that
    /// arrives here is small.
    fn append(&mut self, time: u64, event: Event) -> Result<(), AuditError> {
        let line = Record::build(&self.envelope(time), event).to_line();
        self.append_line(&line)
    }

    /// Appends a record's line: the file, the tree.
    fn append_line(&mut self, line: &str) -> Result<(), AuditError> {
        let leaf = leaf_hash(line.as_bytes());
        let out = self.out()?;
        out.write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(io_err(&self.path))?;
        self.tree.append(leaf);
        self.prev_leaf = leaf;
        self.bytes += line.len() as u64 + 1;
        Ok(())
    }

    /// Appends an event record (not a checkpoint).
    fn record(&mut self, time: u64, event: Event) -> Result<(), AuditError> {
        self.append(time, event)?;
        self.counted_record();
        Ok(())
    }

    /// Counts an event record just appended (one a checkpoint will cover).
    fn counted_record(&mut self) {
        self.since_cp += 1;
        self.last_was_checkpoint = false;
    }

    fn flush_sync(&mut self) -> Result<(), AuditError> {
        let out = self.out()?;
        out.flush()
            .and_then(|()| out.get_ref().sync_data())
            .map_err(io_err(&self.path))
    }

    /// Signs the tree of every line so far, appends the checkpoint line, and fsyncs.
    fn checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        let cp = Checkpoint {
            origin: self.verifier.name.clone(),
            size: self.tree.size(),
            root: self.tree.root(),
        };
        let text = cp.body();
        let sig = self.key.sign(text.as_bytes());
        let note = SignedNote {
            text,
            signatures: vec![NoteSignature {
                name: self.verifier.name.clone(),
                id: self.verifier.id,
                signature: sig.as_ref().to_vec(),
            }],
        }
        .encode();
        let peaks = self.tree.peaks().to_vec();
        self.append(
            now_ms(),
            Event::Checkpoint(CheckpointRecord { note: note.clone() }),
        )?;
        self.last_cp = Some((note, cp.size, peaks));
        self.last_was_checkpoint = true;
        self.since_cp = 0;
        self.flush_sync()?;
        Ok(cp)
    }

    /// Writes the interval's DMA counts, if any.
    fn dma_summary(&mut self) -> Result<(), AuditError> {
        let end = now_ms();
        let queues = self.dma.drain();
        let start = std::mem::replace(&mut self.interval_start, end);
        if queues.is_empty() {
            return Ok(());
        }
        self.record(
            end,
            Event::DmaSummary(DmaSummary {
                interval_start: start,
                interval_end: end,
                queues,
            }),
        )
    }

    fn after_record(&mut self) -> Result<(), AuditError> {
        if self.since_cp >= self.cfg.checkpoint_every_records {
            self.checkpoint()?;
        }
        if self.cfg.rotate_bytes.is_some_and(|b| self.bytes >= b) {
            self.rotate_into(self.index + 1, None)?;
        }
        Ok(())
    }

    /// The interval's end: DMA counts, a checkpoint (also when nothing happened), rotation
    /// by age.
    fn tick(&mut self) -> Result<(), AuditError> {
        self.dma_summary()?;
        self.checkpoint()?;
        if self
            .cfg
            .rotate_every
            .is_some_and(|t| self.opened.elapsed() >= t)
        {
            self.rotate_into(self.index + 1, None)?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), AuditError> {
        let carried = self.carry.take();
        if !carried.is_empty() {
            let rest = self.start_batch(carried)?;
            self.dma_record(rest)?;
        }
        self.dma_summary()?;
        let ev = self.log_event(LogAction::Stop);
        self.record(now_ms(), Event::Log(ev))?;
        self.checkpoint().map(drop)
    }

    /// Writes the chains of `first` and those queued right behind it as DMA batch records
    /// of up to [`MAX_DMA_BATCH_BYTES`] of packed data each (whole chains: a longer chain is
    /// a record of its own, never split), until the queue is empty or holds something else.
    /// Returns the message that ended the run, to be handled next.
    ///
    /// A record ends before the pass that would take it past the limit, so the chains are
    /// walked only when a single pass is larger than a record (chains far longer than a
    /// request's three descriptors): finding where to cut means decoding every chain.
    fn dma_batches(
        &mut self,
        first: PackedChains,
        rx: &Receiver<Msg>,
    ) -> Result<Option<Msg>, AuditError> {
        let mut held = self.start_batch(first)?;
        loop {
            let next = match rx.try_recv() {
                Ok(Msg::Dma(more)) => {
                    if held.packed_len() + more.packed_len() > MAX_DMA_BATCH_BYTES {
                        // Written before any of the pass's own chains: the order holds.
                        self.dma_record(std::mem::take(&mut held))?;
                        held = self.start_batch(more)?;
                    } else {
                        held.append(&more);
                        self.spare.give(more);
                    }
                    continue;
                }
                Ok(other) => Some(other),
                Err(_) => None,
            };
            self.dma_record(held)?;
            return Ok(next);
        }
    }

    /// The chains of `pass`, to be held for a record; a pass larger than a record is written
    /// as records of whole chains first, and what remains of it is held.
    fn start_batch(&mut self, mut pass: PackedChains) -> Result<PackedChains, AuditError> {
        while pass.packed_len() > MAX_DMA_BATCH_BYTES {
            let front = pass.split_front(MAX_DMA_BATCH_BYTES);
            self.dma_record(front)?;
        }
        Ok(pass)
    }

    /// What the device carries (see [`Carry`]) once the queue is empty: looked at under the
    /// carry's lock, so no message the device sent before these chains is still queued (a
    /// message found instead is returned, to be handled first).
    fn take_carried(&self, rx: &Receiver<Msg>) -> Option<Msg> {
        let mut c = self.carry.lock();
        if let Ok(m) = rx.try_recv() {
            return Some(m);
        }
        (!c.is_empty()).then(|| Msg::Dma(std::mem::take(&mut *c)))
    }

    /// Writes `batch` as one DMA batch record, if it holds a chain.
    fn dma_record(&mut self, batch: PackedChains) -> Result<(), AuditError> {
        if batch.is_empty() {
            return Ok(());
        }
        let line = batch_line(&self.envelope(now_ms()), &batch);
        // Written out: the buffer goes back for the carry to fill again.
        self.spare.give(batch);
        self.append_line(&line)?;
        self.counted_record();
        self.after_record()
    }

    /// Handles one message; returns whether to go on and the message to handle next.
    fn handle(&mut self, msg: Msg, rx: &Receiver<Msg>) -> Result<(bool, Option<Msg>), AuditError> {
        match msg {
            Msg::Event(time, e) => {
                self.record(time, *e)?;
                self.after_record()?;
            }
            Msg::Dma(d) => return Ok((true, self.dma_batches(d, rx)?)),
            Msg::Transcript(h) => self.transcript = h,
            Msg::Checkpoint(reply) => {
                let cp = self.checkpoint()?;
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(cp);
            }
            Msg::Pause(ack, resume) => {
                self.out()?.flush().map_err(io_err(&self.path))?;
                let _ = ack.send(());
                // Returns when the guard is dropped.
                let _ = resume.recv();
            }
            Msg::Stop => return Ok((false, None)),
        }
        Ok((true, None))
    }

    /// The thread body: until stopped (or every sender is gone), write what arrives and
    /// checkpoint at every interval. While chains arrive it looks for more every
    /// [`DMA_POLL`] instead of sleeping on the queue (see there).
    pub(crate) fn run(mut self, rx: Receiver<Msg>) -> Result<(), AuditError> {
        let every = self.cfg.checkpoint_every;
        let mut next_tick = Instant::now() + every;
        let mut pending: Option<Msg> = None;
        let mut last_dma: Option<Instant> = None;
        // When the carried chains were last taken: at most once a DMA_POLL while chains
        // arrive, so each look finds many (taken again as soon as the last were written,
        // the writer would write a record of a few chains at a time, without end).
        let mut last_take: Option<Instant> = None;
        loop {
            let due = || last_take.is_none_or(|t| t.elapsed() >= DMA_POLL);
            let msg = match pending.take().map_or_else(|| rx.try_recv(), Ok) {
                Ok(m) => Some(m),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match due()
                    .then(|| {
                        last_take = Some(Instant::now());
                        self.take_carried(&rx)
                    })
                    .flatten()
                {
                    Some(m) => Some(m),
                    None => {
                        // Idle: hand what is buffered to the kernel, then wait.
                        self.out()?.flush().map_err(io_err(&self.path))?;
                        let now = Instant::now();
                        let wait = next_tick.saturating_duration_since(now);
                        if last_dma.is_some_and(|t| now.duration_since(t) < DMA_LINGER) {
                            // Not on the queue: senders find no sleeper to wake. Parking with
                            // a timeout is a futex wait, as the queue's own is (the sandbox
                            // allows it); a sender unparks it for a message that must not
                            // wait, or a full queue, and an early return only looks sooner.
                            // Until the next look at the carried chains, at most.
                            let next_take = last_take
                                .map_or(DMA_POLL, |t| DMA_POLL.saturating_sub(t.elapsed()));
                            std::thread::park_timeout(next_take.min(wait));
                            None
                        } else {
                            // Asleep on the queue: from now on the device sends the chains it
                            // would have left in the carry (which wakes this thread); what it
                            // left before is taken first.
                            self.carry.set_writer_asleep(true);
                            let m = match self.take_carried(&rx) {
                                Some(m) => Ok(m),
                                None => rx.recv_timeout(wait),
                            };
                            self.carry.set_writer_asleep(false);
                            match m {
                                Ok(m) => Some(m),
                                Err(RecvTimeoutError::Timeout) => None,
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    }
                },
            };
            if let Some(m) = msg {
                if matches!(m, Msg::Dma(_)) {
                    last_dma = Some(Instant::now());
                }
                let (go_on, next) = self.handle(m, &rx)?;
                if !go_on {
                    break;
                }
                pending = next;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick()?;
                next_tick = Instant::now() + every;
            }
        }
        self.stop()
    }
}

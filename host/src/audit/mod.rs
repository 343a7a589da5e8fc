//! The tamper-evident audit log writer: records of what the device did and refused, as
//! `swiotlb-audit/1` JSON lines (schema and verification in `swiotlb_shared::audit`), in
//! one RFC 6962 Merkle tree with signed C2SP checkpoints.
//!
//! - [`AuditLog::open`] recovers or starts the log and spawns the writer thread;
//! - [`AuditHandle`] (clone it per thread) sends records through a bounded queue: when the
//!   queue is full the caller waits (back-pressure), nothing is dropped;
//! - [`DmaBatch::record_chain`] (a batch per pass over a queue, [`AuditHandle::dma_batch`])
//!   is the per-chain hot path: in summary mode at most four relaxed atomic adds per chain,
//!   summarised per interval; in full mode the chain is also packed (about 4 bytes a
//!   descriptor, `swiotlb_shared::audit::batch`), and the pass's chains are appended to the
//!   chains carried for the writer (`Carry`), which takes them every few milliseconds or
//!   receives them through the queue, and writes them as DMA batch records of up to
//!   [`MAX_DMA_BATCH_BYTES`] of packed data;
//! - checkpoints every `checkpoint_every_records` records and every `checkpoint_every`
//!   (also when nothing happened), each fsynced; rotation by size or age, each new file
//!   naming the previous file's final checkpoint;
//! - on open, a torn last line left by a crash is removed and recorded in a restart record.
//!
//! Modules: `dma` (the per-interval DMA counts of summary mode), `handoff` (full mode's
//! packed passes on their way to the writer), `key` (the signing key and its verifier key),
//! `writer` (the writer thread: records, the tree, checkpoints, rotation, recovery).
//!
//! Files: `<dir>/<stem>.<NNNNNN>.<ext>` for a configured path `<dir>/<stem>.<ext>`; the key
//! defaults to `<dir>/<stem>.key`, its verifier key to `<dir>/<stem>.key.pub`.

pub mod dma;
mod handoff;
pub mod key;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use swiotlb_shared::audit::{
    AttestationVerdict, AuditFinding, BatchError, Checkpoint, ConfigChange, DeviceIdentity, Event,
    PackedChains, PeripheralEvent, VerifierKey,
};
use thiserror::Error;

use crate::findings::Finding;
pub use dma::DmaAccumulator;
pub(crate) use handoff::{Carry, SpareBuffers};
pub use handoff::{DmaBatch, DMA_BATCH_CHAINS, DMA_FORMAT};
pub use key::KeyError;
pub use writer::{discover, file_name};

/// What is recorded per DMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuditMode {
    /// Counts per queue and direction, one summary record per interval (and every finding).
    #[default]
    Summary,
    /// Also every descriptor (address, length, direction, queue, chain head), packed in
    /// Memory Activity records (DMA batch) of up to [`MAX_DMA_BATCH_BYTES`] each.
    Full,
}

impl AuditMode {
    /// `summary` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Summary => "summary",
            Self::Full => "full",
        }
    }
}

/// Where and how the log is written.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Base path `<dir>/<stem>.<ext>`; files are `<stem>.<NNNNNN>.<ext>` beside it.
    pub path: PathBuf,
    /// Per-DMA recording mode.
    pub mode: AuditMode,
    /// Signing key (PKCS#8); created 0600 when absent. `None`: `<dir>/<stem>.key`.
    pub key_path: Option<PathBuf>,
    /// Checkpoint origin and key name. `None`: the one the key's `.pub` file already names
    /// (a log keeps its origin across restarts), else `swiotlb-audit/<device uid>`.
    pub origin: Option<String>,
    /// Checkpoint after this many records (at least 1).
    pub checkpoint_every_records: u64,
    /// Checkpoint at least this often, even when nothing was recorded.
    pub checkpoint_every: Duration,
    /// Rotate when the file reaches this size.
    pub rotate_bytes: Option<u64>,
    /// Rotate when the file is this old.
    pub rotate_every: Option<Duration>,
    /// Records the queue holds before senders wait (at least 1).
    pub queue_capacity: usize,
    /// Run first thing on the writer thread, before it handles any record: the process's
    /// sandbox for this thread (its seccomp filter). An error stops the open, and is its
    /// [`AuditError::WriterSetup`] source.
    pub writer_setup: Option<fn() -> Result<(), WriterSetupError>>,
}

impl AuditConfig {
    /// Defaults: summary mode, checkpoints every 1000 records or 10 s, 64 MiB files, a
    /// queue of [`DEFAULT_QUEUE_CAPACITY`] records.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode: AuditMode::Summary,
            key_path: None,
            origin: None,
            checkpoint_every_records: 1000,
            checkpoint_every: Duration::from_secs(10),
            rotate_bytes: Some(64 << 20),
            rotate_every: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            writer_setup: None,
        }
    }

    /// The key file in use.
    pub fn key_file(&self) -> PathBuf {
        if let Some(k) = &self.key_path {
            return k.clone();
        }
        let (dir, stem, _) = writer::split_base(&self.path);
        dir.join(format!("{stem}.key"))
    }
}

/// Why the writer thread's setup failed: the caller's own error, kept whole (its type and
/// its sources), as this module cannot know it (a sandbox error, a probe's, a test's).
pub type WriterSetupError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the audit log.
#[derive(Debug, Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The signing key cannot be loaded or created, or its verifier key written.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The configuration is unusable (message says which setting).
    #[error("audit configuration: {0}")]
    Config(&'static str),
    /// The writer thread's setup (its sandbox) failed.
    #[error("setting up the audit writer thread")]
    WriterSetup(#[source] WriterSetupError),
    /// The writer thread ended before it reported on its setup.
    #[error("setting up the audit writer thread: the thread ended during setup")]
    WriterEndedInSetup,
    /// The writer thread has stopped (closed, or failed: see [`AuditLog::close`]).
    #[error("the audit writer has stopped; records can no longer be written")]
    Closed,
    /// A chain could not be packed (more descriptors than a batch's count field holds).
    #[error("a DMA chain cannot be recorded")]
    DmaChain(#[source] BatchError),
}

/// The most packed data one DMA batch record holds: the writer coalesces the chains queued
/// behind each other up to this much (a chain is never split, so one longer chain makes a
/// longer record). 32 KiB is ~700 chains of three descriptors, and a line of ~44 KiB: under
/// the 64 KiB a torn line is kept whole in (`MAX_TORN_KEPT`), and enough that the record's
/// fixed cost (its JSON envelope, one line) is a few nanoseconds a chain.
pub const MAX_DMA_BATCH_BYTES: usize = 32 << 10;

/// Records the queue holds by default before senders wait. A full-mode message carries up
/// to [`MAX_DMA_BATCH_BYTES`] of packed chains in a buffer that may have doubled once past
/// it (a pass that overshoots), so a full queue holds at most 512 x 64 KiB = 32 MiB, inside
/// the memory bound's budget for a connection (`crate::sandbox::limits::CONNECTION_BUDGET`,
/// which checks it); in summary mode its records are small. A writer behind by that much
/// holds the device back: it waits, nothing is dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 512;

pub(crate) enum Msg {
    Event(u64, Box<Event>),
    Dma(PackedChains),
    Transcript([u8; 32]),
    Checkpoint(SyncSender<Checkpoint>),
    Pause(SyncSender<()>, Receiver<()>),
    Stop,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sending side, cheap to clone, one per thread that reports.
#[derive(Clone)]
pub struct AuditHandle {
    tx: SyncSender<Msg>,
    dma: Arc<DmaAccumulator>,
    full: bool,
    /// The writer thread, to wake when it may be looking only every few milliseconds.
    writer: Thread,
    /// Record buffers the writer has emptied, for the carry to fill again.
    spare: Arc<SpareBuffers>,
    /// Chains checked and not yet taken by the writer.
    carry: Arc<Carry>,
}

/// One chain's (descriptors, bytes) per direction, summed before the accumulator's atomic
/// adds ([`DmaAccumulator::record_counts`]).
#[derive(Default)]
struct ChainTally {
    readable: (u64, u64),
    writable: (u64, u64),
}

impl ChainTally {
    #[inline]
    fn add(&mut self, len: u32, writable: bool) {
        let c = if writable {
            &mut self.writable
        } else {
            &mut self.readable
        };
        c.0 = c.0.wrapping_add(1);
        c.1 = c.1.wrapping_add(u64::from(len));
    }
}

/// Holds the writer paused; dropping it resumes the writer.
pub struct PauseGuard {
    _resume: SyncSender<()>,
}

impl AuditHandle {
    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        if !matches!(msg, Msg::Dma(_)) {
            // The chains checked before this record go first.
            let carried = self.carry.take();
            if !carried.is_empty() {
                self.send_now(Msg::Dma(carried))?;
            }
        }
        self.send_now(msg)
    }

    fn send_now(&self, msg: Msg) -> Result<(), AuditError> {
        // While chains arrive, the writer looks at the queue every few milliseconds instead
        // of sleeping on it (`writer::DMA_POLL`), so a pass wakes nobody. Anything else is
        // rare and may be waited for (a checkpoint, a pause): the writer is woken for it. So
        // it is when the queue is full, and then this blocks until there is room: the device
        // waits rather than drop a record.
        let dma = matches!(msg, Msg::Dma(_));
        match self.tx.try_send(msg) {
            Ok(()) => {
                if !dma {
                    self.writer.unpark();
                }
                Ok(())
            }
            Err(TrySendError::Full(m)) => {
                self.writer.unpark();
                self.tx.send(m).map_err(|_| AuditError::Closed)
            }
            Err(TrySendError::Disconnected(_)) => Err(AuditError::Closed),
        }
    }

    fn event(&self, e: Event) -> Result<(), AuditError> {
        self.send(Msg::Event(now_ms(), Box::new(e)))
    }

    /// Records a device-policy violation (Detection Finding).
    pub fn finding(&self, f: &Finding) -> Result<(), AuditError> {
        self.audit_finding(audit_finding(f))
    }

    /// Records a device-policy violation given in the schema's form.
    pub fn audit_finding(&self, f: AuditFinding) -> Result<(), AuditError> {
        self.event(Event::Finding(f))
    }

    /// Records a configuration change (Device Config State Change).
    pub fn config_change(&self, c: ConfigChange) -> Result<(), AuditError> {
        self.event(Event::Config(c))
    }

    /// Records a driver connecting or disconnecting (Peripheral Activity).
    pub fn peripheral(&self, p: PeripheralEvent) -> Result<(), AuditError> {
        self.event(Event::Peripheral(p))
    }

    /// Records an attestation verdict with its evidence and transcript (Compliance Finding).
    pub fn attestation_verdict(&self, v: AttestationVerdict) -> Result<(), AuditError> {
        self.event(Event::Attestation(v))
    }

    /// Sets the transcript hash carried by every record sent after this call.
    pub fn set_transcript_hash(&self, h: [u8; 32]) -> Result<(), AuditError> {
        self.send(Msg::Transcript(h))
    }

    /// One chain, on its own: see [`DmaBatch::record_chain`]. The device batches a whole
    /// pass over a queue with [`dma_batch`](Self::dma_batch).
    #[inline]
    pub fn record_chain<I>(&self, queue: u16, head: u16, descriptors: I) -> Result<(), AuditError>
    where
        I: IntoIterator<Item = (u64, u32, bool)>,
    {
        let mut one = self.dma_batch();
        one.record_chain(queue, head, descriptors)?;
        one.flush()
    }

    /// Counts every descriptor `(addr, len, writable)` of a chain on `queue`: summed here,
    /// then at most four relaxed atomic adds for the chain. Allocates nothing.
    #[inline]
    fn count_chain<I>(&self, queue: u16, descriptors: I)
    where
        I: IntoIterator<Item = (u64, u32, bool)>,
    {
        let mut tally = ChainTally::default();
        for (_, len, w) in descriptors {
            tally.add(len, w);
        }
        self.dma
            .record_counts(queue, tally.readable, tally.writable);
    }

    /// Counts a chain as [`count_chain`](Self::count_chain) does and packs it into `into`,
    /// in one walk over its descriptors.
    #[inline]
    fn pack_chain<I>(
        &self,
        into: &mut PackedChains,
        queue: u16,
        head: u16,
        descriptors: I,
    ) -> Result<(), AuditError>
    where
        I: IntoIterator<Item = (u64, u32, bool)>,
    {
        let mut tally = ChainTally::default();
        let counted = descriptors
            .into_iter()
            .inspect(|&(_, len, w)| tally.add(len, w));
        let packed = into.push_chain(queue, head, counted);
        // Counted even when the chain could not be packed: the summary stays exact.
        self.dma
            .record_counts(queue, tally.readable, tally.writable);
        packed.map_err(AuditError::DmaChain)
    }

    /// Writes a checkpoint of everything sent before this call, fsyncs it, and returns it.
    pub fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Checkpoint(tx))?;
        rx.recv().map_err(|_| AuditError::Closed)
    }

    /// Pauses the writer once it has written everything sent before this call, until the
    /// guard is dropped (e.g. to copy the files consistently). Senders wait meanwhile once
    /// the queue is full.
    pub fn pause(&self) -> Result<PauseGuard, AuditError> {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let (resume_tx, resume_rx) = mpsc::sync_channel(1);
        self.send(Msg::Pause(ack_tx, resume_rx))?;
        ack_rx.recv().map_err(|_| AuditError::Closed)?;
        Ok(PauseGuard { _resume: resume_tx })
    }
}

/// The host's finding in the schema's form.
pub fn audit_finding(f: &Finding) -> AuditFinding {
    AuditFinding {
        kind: f.kind,
        dma_violation: f.kind.is_dma_violation(),
        queue: f.queue,
        head: f.head,
        addr: f.addr,
        len: f.len,
        detail: f.detail.clone(),
    }
}

/// The open log: owns the writer thread.
pub struct AuditLog {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<Result<(), AuditError>>>,
    verifier: VerifierKey,
    key_path: PathBuf,
}

impl AuditLog {
    /// Opens the log at `config.path` for `device`: loads or creates the key, recovers the
    /// current file (a torn last line is removed and recorded) or starts a new log, and
    /// starts the writer thread.
    pub fn open(
        config: AuditConfig,
        device: DeviceIdentity,
    ) -> Result<(AuditLog, AuditHandle), AuditError> {
        if config.queue_capacity == 0 || config.checkpoint_every_records == 0 {
            return Err(AuditError::Config(
                "queue capacity and checkpoint record count must be at least 1",
            ));
        }
        if config.checkpoint_every.is_zero() {
            return Err(AuditError::Config("checkpoint interval must be positive"));
        }
        let default_origin = || {
            let uid: String = device
                .uid
                .chars()
                .map(|c| {
                    if c.is_whitespace() || c == '+' || c.is_control() {
                        '-'
                    } else {
                        c
                    }
                })
                .collect();
            format!("swiotlb-audit/{uid}")
        };
        let default_origin = default_origin();
        let origin = match &config.origin {
            Some(o) => key::Origin::Given(o),
            None => key::Origin::Default(&default_origin),
        };
        let key_path = config.key_file();
        let (dir, _, _) = writer::split_base(&config.path);
        for d in [Some(dir.as_path()), key_path.parent()]
            .into_iter()
            .flatten()
        {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d).map_err(|source| AuditError::Io {
                    path: d.to_path_buf(),
                    source,
                })?;
            }
        }
        let key = key::load_or_create(&key_path, origin)?;
        let verifier = key.verifier.clone();
        let dma = Arc::new(DmaAccumulator::default());
        let full = config.mode == AuditMode::Full;
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let setup = config.writer_setup;
        let spare = Arc::new(SpareBuffers::default());
        let carry = Arc::new(Carry::default());
        let w = writer::Writer::open(
            config,
            device,
            key,
            Arc::clone(&dma),
            Arc::clone(&spare),
            Arc::clone(&carry),
        )?;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("swiotlb-audit".into())
            .spawn(move || {
                let ready = setup.map_or(Ok(()), |f| f());
                let failed = ready.is_err();
                let _ = ready_tx.send(ready);
                if failed {
                    return Ok(());
                }
                w.run(rx)
            })
            .map_err(|e| AuditError::Io {
                path: PathBuf::from("swiotlb-audit thread"),
                source: e,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(AuditError::WriterSetup(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(AuditError::WriterEndedInSetup);
            }
        }
        let handle = AuditHandle {
            tx: tx.clone(),
            dma,
            full,
            writer: thread.thread().clone(),
            spare,
            carry,
        };
        Ok((
            AuditLog {
                tx,
                thread: Some(thread),
                verifier,
                key_path,
            },
            handle,
        ))
    }

    /// The verifier key of this log's checkpoints.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.verifier
    }

    /// The signing key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Writes the interval's DMA counts, a stop record and a final checkpoint, and waits for
    /// the writer. Returns the writer's error if it failed earlier.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), AuditError> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        // If the writer already stopped (failed), the send fails and join reports why.
        let _ = self.tx.send(Msg::Stop);
        t.thread().unpark();
        match t.join() {
            Ok(r) => r,
            Err(_) => Err(AuditError::Closed),
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %swiotlb_shared::error_chain(&e), "audit log close failed");
        }
    }
}

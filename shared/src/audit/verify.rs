//! Verification of a log: one or more files, fed line by line, checked against one
//! verifier key. Pure: the caller reads the files.
//!
//! What is checked, in order, for each line (the first failure is reported and verification
//! stops; only the lines that follow are still read to tell deletion from reordering):
//! 1. the line parses as a `swiotlb-audit/1` record ([`Record::parse`]);
//! 2. a file's first record starts the log, or continues the previous file (rotation):
//!    the signed checkpoint it names must be the previous file's last line, and the peaks it
//!    carries must fold to that checkpoint's root;
//! 3. its sequence is its leaf index (a gap is a deletion, a step back a reordering);
//! 4. its `prev_leaf` is the leaf hash of the line before (an altered line breaks it);
//! 5. a checkpoint is signed by the key, names the key's origin, its size is its own index
//!    and its root is the tree of every line before it.
//!
//! At the end: every file but the last must end with a checkpoint, with no torn line. The
//! last file of a log its writer closed ends with a stop record and its checkpoint: the
//! verdict is [`Verdict::Intact`]. A last file that does not (records after the last
//! checkpoint, a torn last line, no stop record: a log still being written, or a writer that
//! died) gives [`Verdict::Open`], with the records that no checkpoint proves named: every
//! record up to the last checkpoint is proven; what follows it may be genuine or not, and
//! nothing in the log can tell (records removed from after the last checkpoint leave no
//! trace either). A failure anywhere is [`Verdict::Tampered`].

use super::event::{Event, LogAction};
use super::merkle::{leaf_hash, CompactRange, Hash};
use super::note::{Checkpoint, NoteError, VerifierKey};
use super::ocsf::Record;
pub use super::verdict::{Failure, OpenEnd, Reason, Verdict};

/// Per-file result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileReport {
    /// File name.
    pub name: String,
    /// Sequence of its first line.
    pub first: u64,
    /// Complete lines.
    pub lines: u64,
    /// Checkpoints among them.
    pub checkpoints: u64,
    /// A torn last line was found.
    pub torn: bool,
}

/// Where the log stands after its last complete line: what a writer resumes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    /// The tree of every line so far (its size is the next sequence).
    pub tree: CompactRange,
    /// Leaf hash of the last line.
    pub prev_leaf: Hash,
    /// The last checkpoint (note text), its sequence and the tree peaks at its size.
    pub last_checkpoint: Option<(String, u64, Vec<Hash>)>,
    /// Lines after the last checkpoint.
    pub unsigned: u64,
    /// The last lines are a stop record and its checkpoint.
    pub stopped: bool,
}

/// The outcome.
#[derive(Clone, Debug)]
pub struct Report {
    /// Intact: no failure, and no open end unless [`Options::live`] expects one.
    pub ok: bool,
    /// The first failure.
    pub failure: Option<Failure>,
    /// Files seen.
    pub files: Vec<FileReport>,
    /// Lines seen (complete).
    pub lines: u64,
    /// Latest valid checkpoint.
    pub latest: Option<Checkpoint>,
    /// Non-fatal observations (live tail, log starting mid-way).
    pub warnings: Vec<String>,
    /// State after the last line (absent after a failure).
    pub tail: Option<Tail>,
    /// The open end of a log its writer did not close (absent after a failure).
    pub open: Option<OpenEnd>,
}

impl Report {
    /// The verdict: tampered if anything failed, else open or intact.
    pub fn verdict(&self) -> Verdict {
        match (&self.failure, &self.open) {
            (Some(f), _) => Verdict::Tampered(f.clone()),
            (None, Some(o)) => Verdict::Open(o.clone()),
            (None, None) => Verdict::Intact,
        }
    }
}

/// Options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The log may still be being written: an open end is expected (the verdict is still
    /// [`Verdict::Open`]; the tool then exits 0 for it).
    pub live: bool,
}

struct Pending {
    failure: Failure,
    /// A gap: the missing sequence, to look for further on.
    missing: Option<u64>,
}

/// Streaming verifier: [`Verifier::begin_file`], [`Verifier::line`] for each complete line,
/// [`Verifier::torn`] for a last line without its newline, then [`Verifier::finish`].
pub struct Verifier {
    key: VerifierKey,
    opts: Options,
    files: Vec<FileReport>,
    tree: Option<CompactRange>,
    prev_leaf: Hash,
    prev_pos: (String, u64),
    last_cp: Option<(String, u64, Vec<Hash>)>,
    last_cp_line_was_last: bool,
    unsigned: u64,
    stop_seen: bool,
    stopped: bool,
    latest: Option<Checkpoint>,
    warnings: Vec<String>,
    pending: Option<Pending>,
    lines: u64,
    open: Option<OpenEnd>,
}

impl Verifier {
    /// A verifier trusting `key`.
    pub fn new(key: VerifierKey, opts: Options) -> Self {
        Self {
            key,
            opts,
            files: Vec::new(),
            tree: None,
            prev_leaf: [0; 32],
            prev_pos: (String::new(), 0),
            last_cp: None,
            last_cp_line_was_last: false,
            unsigned: 0,
            stop_seen: false,
            stopped: false,
            latest: None,
            warnings: Vec::new(),
            pending: None,
            lines: 0,
            open: None,
        }
    }

    fn next_index(&self) -> u64 {
        self.tree.as_ref().map_or(0, |t| t.size())
    }

    fn fail(&mut self, reason: Reason, line: u64, index: u64, detail: String) {
        if self.pending.is_none() {
            let file = self
                .files
                .last()
                .map(|f| f.name.clone())
                .unwrap_or_default();
            self.pending = Some(Pending {
                failure: Failure {
                    reason,
                    file,
                    line,
                    index,
                    detail,
                },
                missing: None,
            });
        }
    }

    /// Checks that the file just finished ended as a file must.
    fn close_file(&mut self, last: bool) {
        if self.pending.is_some() {
            return;
        }
        let Some(f) = self.files.last().cloned() else {
            return;
        };
        let next = self.next_index();
        if f.lines == 0 && !f.torn && (!last || self.files.len() == 1) {
            // An empty last file after others is a rotation cut short: an open end.
            self.fail(Reason::Truncated, 1, next, "file is empty".into());
            return;
        }
        if !last {
            // A rotated file always ends with its checkpoint, whole.
            if f.torn {
                let msg = format!("{} ends with a torn line (no newline)", f.name);
                self.fail(Reason::Truncated, f.lines + 1, next, msg);
                return;
            }
            if self.unsigned > 0 {
                let msg = format!(
                    "{} records at the end of {} are not covered by a checkpoint",
                    self.unsigned, f.name
                );
                self.fail(
                    Reason::Truncated,
                    f.lines.saturating_sub(self.unsigned) + 1,
                    next.saturating_sub(self.unsigned),
                    msg,
                );
            }
            return;
        }
        if f.torn || self.unsigned > 0 || !self.stopped {
            self.open = Some(OpenEnd {
                file: f.name.clone(),
                proven: self.last_cp.as_ref().map(|(_, size, _)| *size),
                first_unproven: next.saturating_sub(self.unsigned),
                unproven: self.unsigned,
                torn: f.torn,
                stop_record: self.stop_seen && self.unsigned > 0,
            });
        }
    }

    /// The first failure found so far (what [`Verifier::finish`] will report), for a
    /// reader that acts on each line as it comes.
    pub fn failure(&self) -> Option<&Failure> {
        self.pending.as_ref().map(|p| &p.failure)
    }

    /// The latest checkpoint that verified so far.
    pub fn latest(&self) -> Option<&Checkpoint> {
        self.latest.as_ref()
    }

    /// Starts the next file, named `name`.
    pub fn begin_file(&mut self, name: &str) {
        if !self.files.is_empty() {
            self.close_file(false);
        }
        self.files.push(FileReport {
            name: name.to_string(),
            first: self.next_index(),
            ..FileReport::default()
        });
    }

    /// A last line without its newline.
    pub fn torn(&mut self, _bytes: &[u8]) {
        if let Some(f) = self.files.last_mut() {
            f.torn = true;
        }
    }

    /// One complete line, without its newline.
    pub fn line(&mut self, bytes: &[u8]) {
        self.lines += 1;
        let line_no = match self.files.last_mut() {
            Some(f) => {
                f.lines += 1;
                f.lines
            }
            None => return,
        };
        if let Some(p) = &mut self.pending {
            // After a failure: only look for a missing sequence further on.
            if let (Some(missing), Ok(r)) = (p.missing, Record::parse(bytes)) {
                if r.sequence() == missing {
                    p.failure.reason = Reason::Reordered;
                    p.failure.detail = format!(
                        "record {missing} appears later, at {}:{line_no}",
                        p.failure.file
                    );
                    p.missing = None;
                }
            }
            return;
        }
        let record = match Record::parse(bytes) {
            Ok(r) => r,
            Err(e) => {
                let next = self.next_index();
                let detail = crate::error_chain(&e);
                self.fail(Reason::Altered, line_no, next, detail);
                return;
            }
        };
        if line_no == 1 && !self.start_file(&record) {
            return;
        }
        let index = self.next_index();
        if record.sequence() != index {
            let (reason, detail) = if record.sequence() > index {
                let d = format!(
                    "expected record {index}, found record {}: {} record(s) missing",
                    record.sequence(),
                    record.sequence() - index
                );
                (Reason::Deleted, d)
            } else {
                let d = format!(
                    "expected record {index}, found record {} again or out of order",
                    record.sequence()
                );
                (Reason::Reordered, d)
            };
            self.fail(reason, line_no, index, detail);
            if reason == Reason::Deleted {
                if let Some(p) = &mut self.pending {
                    p.missing = Some(index);
                }
            }
            return;
        }
        if record.unmapped.prev_leaf != self.prev_leaf {
            let (file, line) = self.prev_pos.clone();
            self.pending = Some(Pending {
                failure: Failure {
                    reason: Reason::Altered,
                    file: file.clone(),
                    line,
                    index: index.saturating_sub(1),
                    detail: format!(
                        "record {} ({file}:{line}) does not hash to what record {index} names as \
                         its predecessor",
                        index.saturating_sub(1)
                    ),
                },
                missing: None,
            });
            return;
        }
        let leaf = leaf_hash(bytes);
        let is_checkpoint = match record.event() {
            Some(Event::Checkpoint(c)) => {
                if !self.check_checkpoint(&c.note, index, line_no) {
                    return;
                }
                true
            }
            Some(Event::Log(l)) => {
                self.stop_seen = l.action == LogAction::Stop;
                false
            }
            _ => {
                self.stop_seen = false;
                false
            }
        };
        if is_checkpoint {
            self.unsigned = 0;
            self.stopped = self.stop_seen;
        } else {
            self.unsigned += 1;
            self.stopped = false;
        }
        self.last_cp_line_was_last = is_checkpoint;
        if let Some(t) = &mut self.tree {
            t.append(leaf);
        }
        self.prev_leaf = leaf;
        self.prev_pos = (
            self.files
                .last()
                .map(|f| f.name.clone())
                .unwrap_or_default(),
            line_no,
        );
    }

    /// Verifies a checkpoint note at `index`; on success records it as the latest.
    fn check_checkpoint(&mut self, note: &str, index: u64, line_no: u64) -> bool {
        let cp = match Checkpoint::verify_note(note, &self.key) {
            Ok(cp) => cp,
            Err(e) => {
                let reason = match e {
                    NoteError::UnknownKey { .. } => Reason::WrongKey,
                    _ => Reason::Altered,
                };
                self.fail(reason, line_no, index, format!("checkpoint: {e}"));
                return false;
            }
        };
        let Some(tree) = &self.tree else {
            return false;
        };
        if cp.size != index {
            self.fail(
                Reason::Altered,
                line_no,
                index,
                format!("checkpoint at record {index} claims tree size {}", cp.size),
            );
            return false;
        }
        if cp.root != tree.root() {
            let from = self.last_cp.as_ref().map_or(0, |c| c.1 + 1);
            self.fail(
                Reason::Altered,
                line_no,
                from,
                format!(
                    "records {from}..{} do not match the root signed at record {index}",
                    index.saturating_sub(1)
                ),
            );
            return false;
        }
        self.last_cp = Some((note.to_string(), index, tree.peaks().to_vec()));
        if let Some(f) = self.files.last_mut() {
            f.checkpoints += 1;
        }
        self.latest = Some(cp);
        true
    }

    /// A file's first record: start of the log, or rotation from the previous file.
    fn start_file(&mut self, record: &Record) -> bool {
        let have_prev = self.files.len() > 1 && self.tree.is_some();
        let log = record.log_event();
        match log.map(|l| (l.action, l)) {
            Some((LogAction::Start, _)) => {
                if have_prev {
                    self.fail(
                        Reason::ChainBroken,
                        1,
                        record.sequence(),
                        "file starts a new log instead of continuing the previous file".into(),
                    );
                    return false;
                }
                self.tree = Some(CompactRange::new());
                self.prev_leaf = [0; 32];
                true
            }
            Some((LogAction::Rotate, l)) => {
                let Some(prev) = &l.previous else {
                    self.fail(
                        Reason::Altered,
                        1,
                        record.sequence(),
                        "rotation without previous".into(),
                    );
                    return false;
                };
                let cp = match Checkpoint::verify_note(&prev.checkpoint, &self.key) {
                    Ok(cp) => cp,
                    Err(e) => {
                        let reason = match e {
                            NoteError::UnknownKey { .. } => Reason::WrongKey,
                            _ => Reason::Altered,
                        };
                        let d = format!("previous file's checkpoint: {e}");
                        self.fail(reason, 1, record.sequence(), d);
                        return false;
                    }
                };
                if have_prev {
                    let ends_at_cp = self.last_cp_line_was_last;
                    let same = ends_at_cp
                        && self.last_cp.as_ref().map(|c| c.0.as_str()) == Some(&prev.checkpoint);
                    if !same {
                        let ours = self.last_cp.as_ref().map_or(0, |c| c.1);
                        let (reason, d) = if cp.size > ours {
                            (
                                Reason::MissingFile,
                                format!(
                                    "this file continues from {} (checkpoint of size {}), but the \
                                     file before it ends at size {ours}: file(s) missing",
                                    prev.file, cp.size
                                ),
                            )
                        } else {
                            (
                                Reason::ChainBroken,
                                format!(
                                    "this file continues from {} at size {}, not from the file \
                                     before it",
                                    prev.file, cp.size
                                ),
                            )
                        };
                        self.fail(reason, 1, record.sequence(), d);
                        return false;
                    }
                    let peaks_match = self.last_cp.as_ref().map(|c| &c.2) == Some(&prev.peaks);
                    if !peaks_match {
                        let d = "rotation record's peaks differ from the previous file's tree";
                        self.fail(Reason::Altered, 1, record.sequence(), d.into());
                        return false;
                    }
                    return true;
                }
                // The first file given: start from the state the record carries.
                let tree = match CompactRange::from_peaks(cp.size, prev.peaks.clone()) {
                    Ok(t) if t.root() == cp.root => t,
                    _ => {
                        let d = "rotation record's peaks do not fold to the checkpoint root";
                        self.fail(Reason::Altered, 1, record.sequence(), d.into());
                        return false;
                    }
                };
                self.latest = Some(cp.clone());
                self.last_cp = Some((prev.checkpoint.clone(), cp.size, prev.peaks.clone()));
                let mut tree = tree;
                // The previous file's checkpoint line is leaf `cp.size`; it is known here only
                // by the hash this record names.
                tree.append(record.unmapped.prev_leaf);
                self.tree = Some(tree);
                self.prev_leaf = record.unmapped.prev_leaf;
                self.warnings.push(format!(
                    "log starts in {} at record {}: earlier files not checked",
                    prev.file,
                    cp.size + 1
                ));
                true
            }
            _ => {
                let (reason, d) = if have_prev {
                    (
                        Reason::ChainBroken,
                        "file does not begin with a rotation record".to_string(),
                    )
                } else {
                    (
                        Reason::Deleted,
                        "file does not begin with a start or rotation record".to_string(),
                    )
                };
                let idx = if have_prev { self.next_index() } else { 0 };
                self.fail(reason, 1, idx, d);
                false
            }
        }
    }

    /// Ends verification.
    pub fn finish(mut self) -> Report {
        if self.files.is_empty() {
            self.fail(Reason::Truncated, 0, 0, "no file given".into());
        } else {
            self.close_file(true);
        }
        let failure = self.pending.map(|p| p.failure);
        let tail = match (&failure, self.tree) {
            (None, Some(tree)) => Some(Tail {
                tree,
                prev_leaf: self.prev_leaf,
                last_checkpoint: self.last_cp,
                unsigned: self.unsigned,
                stopped: self.stopped,
            }),
            _ => None,
        };
        let open = if failure.is_none() { self.open } else { None };
        Report {
            ok: failure.is_none() && (open.is_none() || self.opts.live),
            failure,
            files: self.files,
            lines: self.lines,
            latest: self.latest,
            warnings: self.warnings,
            tail,
            open,
        }
    }
}

/// Verifies in-memory files (name, bytes) in order.
pub fn verify_files(files: &[(&str, &[u8])], key: &VerifierKey, opts: Options) -> Report {
    let mut v = Verifier::new(key.clone(), opts);
    for (name, data) in files {
        v.begin_file(name);
        feed(&mut v, data);
    }
    v.finish()
}

/// Feeds one file's bytes: complete lines, then a torn remainder if any.
pub fn feed(v: &mut Verifier, data: &[u8]) {
    let mut rest = data;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        v.line(&rest[..i]);
        rest = &rest[i + 1..];
    }
    if !rest.is_empty() {
        v.torn(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::{
        AuditFinding, CheckpointRecord, DeviceIdentity, Envelope, FindingKind, LogEvent,
        NO_TRANSCRIPT,
    };
    use crate::audit::merkle::CompactRange;
    use crate::audit::note::{NoteSignature, SignedNote};
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// A closed log of `n` findings, a checkpoint every 3 records, as the writer makes it.
    fn log(n: u64) -> (Vec<u8>, VerifierKey) {
        log_edited(n, |line| line)
    }

    /// [`log`], with each record line passed through `edit` before it is chained and signed
    /// (a log a writer of another schema would make, signed by the trusted key).
    fn log_edited(n: u64, edit: impl Fn(String) -> String) -> (Vec<u8>, VerifierKey) {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let key =
            VerifierKey::new("test/log", kp.public_key().as_ref().try_into().unwrap()).unwrap();
        let mut tree = CompactRange::new();
        let mut prev = [0u8; 32];
        let mut out = Vec::new();
        let log_ev = |action| {
            Event::Log(LogEvent {
                action,
                file: "f".into(),
                mode: "summary".into(),
                key: key.to_string(),
                previous: None,
                torn: None,
                unclean: false,
                detail: String::new(),
            })
        };
        let mut events = vec![log_ev(LogAction::Start)];
        for i in 0..n {
            events.push(Event::Finding(AuditFinding {
                kind: FindingKind::ZeroLengthDescriptor,
                dma_violation: false,
                queue: Some(0),
                head: Some(i as u16),
                addr: i,
                len: 0,
                detail: format!("finding {i}"),
            }));
        }
        events.push(log_ev(LogAction::Stop));
        let mut since = 0;
        let count = events.len();
        for (i, ev) in events.into_iter().enumerate() {
            let mut push = |ev: Event, tree: &mut CompactRange, prev: &mut [u8; 32]| {
                let env = Envelope {
                    sequence: tree.size(),
                    time: 1000 + tree.size(),
                    device: DeviceIdentity {
                        uid: "d".into(),
                        name: "d".into(),
                    },
                    pid: 1,
                    uid: Some(0),
                    product_version: "0".into(),
                    transcript: NO_TRANSCRIPT,
                    prev_leaf: *prev,
                };
                let line = edit(Record::build(&env, ev).to_line());
                *prev = leaf_hash(line.as_bytes());
                tree.append(*prev);
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            };
            push(ev, &mut tree, &mut prev);
            since += 1;
            if since == 3 || i + 1 == count {
                let text = Checkpoint {
                    origin: key.name.clone(),
                    size: tree.size(),
                    root: tree.root(),
                }
                .body();
                let note = SignedNote {
                    text: text.clone(),
                    signatures: vec![NoteSignature {
                        name: key.name.clone(),
                        id: key.id,
                        signature: kp.sign(text.as_bytes()).as_ref().to_vec(),
                    }],
                }
                .encode();
                push(
                    Event::Checkpoint(CheckpointRecord { note }),
                    &mut tree,
                    &mut prev,
                );
                since = 0;
            }
        }
        (out, key)
    }

    #[test]
    fn a_log_built_as_the_writer_builds_it_verifies() {
        let (data, key) = log(10);
        let r = verify_files(&[("f", &data)], &key, Options::default());
        assert!(r.ok, "{:?}", r.failure);
        let tail = r.tail.unwrap();
        assert!(tail.stopped);
        assert_eq!(tail.unsigned, 0);
    }

    #[test]
    fn garbage_is_a_failure_not_a_panic() {
        let (_, key) = log(0);
        for data in [
            &b""[..],
            b"\n",
            b"{}\n",
            b"\xff\xfe\n",
            b"[1,2]\n{\"class_uid\":1}",
        ] {
            let r = verify_files(&[("f", data)], &key, Options { live: true });
            assert!(!r.ok);
        }
    }

    #[test]
    fn a_signed_finding_of_an_unknown_kind_is_refused_naming_the_kind() {
        let (data, key) = log_edited(2, |l| {
            l.replace("zero_length_descriptor", "zero_length_descriptor_v2")
        });
        let r = verify_files(&[("f", &data)], &key, Options::default());
        let f = r
            .failure
            .expect("an unknown kind is not a swiotlb-audit/1 record");
        assert_eq!((f.reason, f.line, f.index), (Reason::Altered, 2, 1));
        assert!(
            f.detail
                .contains("unknown finding kind \"zero_length_descriptor_v2\""),
            "{}",
            f.detail
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any change of one byte before the last line is caught (the last line, the final
        /// checkpoint, is covered by no later signature: see docs/audit-schema.md).
        #[test]
        fn any_byte_changed_before_the_last_line_is_detected(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (mut data, key) = log(6);
            let last_start = data[..data.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
            let i = pos.index(last_start);
            prop_assume!(data[i] != byte);
            data[i] = byte;
            let r = verify_files(&[("f", &data)], &key, Options::default());
            prop_assert!(!r.ok);
        }
    }
}

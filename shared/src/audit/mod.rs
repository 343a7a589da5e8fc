//! The audit log: its record schema and its pure verification. The writer (files, threads,
//! keys) is the host's `audit` module; the `swiotlb-audit` tool verifies, shows and proves.
//!
//! - [`event`]: what a `swiotlb-audit/1` record is about, and its envelope;
//! - [`ocsf`]: the record of an event, an OCSF-shaped JSON line, built and parsed strictly,
//!   and the reader of the older OCSF 1.5.0 records, which it upgrades;
//! - [`encoding`]: the hex and base64 forms of record fields;
//! - [`batch`]: full mode's DMA batch, chains packed in a compact binary form, and its
//!   expansion into one event per DMA ([`batch::expand_dma_record`]);
//! - [`schema`]: the three above under one path;
//! - [`merkle`]: RFC 6962 tree hashing, inclusion and consistency proofs;
//! - [`note`]: C2SP signed notes with Ed25519, verifier keys, tlog checkpoints;
//! - [`verify`]: checking files of a log against a verifier key;
//! - [`verdict`]: what that check concludes (intact, open or tampered) and why.
//!
//! The log is one Merkle tree over every line of every file, in order: the leaf data of a
//! line is its exact bytes without the newline, and its leaf index is its
//! `metadata.sequence`. Checkpoint lines are leaves too: the checkpoint at index `i` signs
//! the tree of the `i` lines before it. See `docs/audit-schema.md`.

pub mod batch;
pub mod encoding;
pub mod event;
pub mod merkle;
pub mod note;
pub mod ocsf;
pub mod schema;
pub mod verdict;
pub mod verify;

pub use batch::{expand_dma_record, BatchError, DmaEvent, PackedChains};
pub use event::{
    AttestationVerdict, AuditFinding, ConfigChange, DeviceIdentity, DmaChain, DmaChains,
    DmaDescriptor, DmaSummary, Envelope, Event, EventError, FindingKind, LogAction, LogEvent,
    PeripheralAction, PeripheralEvent, QueueDma,
};
pub use merkle::{CompactRange, Hash, PartialTree, ProofError};
pub use note::{Checkpoint, NoteError, SignedNote, VerifierKey};
pub use ocsf::{Record, SchemaError, SCHEMA};
pub use verdict::{Failure, OpenEnd, Reason, Verdict};
pub use verify::{verify_files, Options, Report, Verifier};

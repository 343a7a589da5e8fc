//! `swiotlb-audit`: verify, show, count and prove the device's audit log.
//!
//! ```text
//! swiotlb-audit verify LOG... --key PUBKEY [--live] [--json]   exit 0 intact, 1 tampered, 2 unreadable, 3 open
//! swiotlb-audit show LOG... [--class C] [--since T] [--json]
//! swiotlb-audit stats LOG... [--json]
//! swiotlb-audit prove LOG... --index N [--key PUBKEY] [--json]
//! swiotlb-audit prove LOG... --consistency A B [--key PUBKEY] [--json]
//! ```
//!
//! One module per command ([`verify`], [`show`], [`stats`], [`prove`]); [`input`] reads the
//! files and the verifier key for all of them.

mod input;
mod prove;
mod show;
mod stats;
mod verify;

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swiotlb_shared::audit::{NoteError, ProofError};
use swiotlb_shared::error_chain;
use thiserror::Error;

use show::{parse_time, ShowClass};

/// Verify and read the swiotlb device's tamper-evident audit log.
#[derive(Parser, Debug)]
#[command(name = "swiotlb-audit", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check the files of a log, in order: exit 0 intact (closed by its writer, every record
    /// covered by a signed checkpoint), 1 tampered, 2 unreadable, 3 open (intact up to the
    /// last checkpoint; the records after it are named and unproven: a live log, or a writer
    /// that died).
    Verify {
        /// Log files, oldest first.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Verifier key file (`<origin>+<id>+<key>`, the `.pub` beside the signing key).
        #[arg(long)]
        key: PathBuf,
        /// The log may still be being written: an open end exits 0 (the verdict still says
        /// what is unproven).
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

/// Exit statuses of `verify` (and of other commands: 0 done, 2 unreadable input).
const EXIT_TAMPERED: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;
const EXIT_OPEN: u8 = 3;

/// Why a command failed; [`ToolError::exit_status`] says how it exits.
#[derive(Debug, Error)]
enum ToolError {
    /// A log file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The verifier key file cannot be read.
    #[error("audit log I/O on {}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The verifier key file does not hold a verifier key.
    #[error("audit key {}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: NoteError,
    },
    /// The log does not verify (`verify` has printed why).
    #[error("the log does not verify")]
    Tampered,
    /// The log is intact up to its last checkpoint but not closed (`verify` has printed
    /// what is unproven).
    #[error("the log is open: not closed by its writer")]
    Open,
    /// The first line of the given files is not a record.
    #[error("{}:{line}: not a record", path.display())]
    NotARecord {
        /// The file.
        path: PathBuf,
        /// Its line number.
        line: u64,
    },
    /// The previous file's peaks in a rotation record do not make a tree.
    #[error("{}:{line}", path.display())]
    Peaks {
        /// The file.
        path: PathBuf,
        /// The rotation record's line number.
        line: u64,
        /// What is wrong with them.
        #[source]
        source: ProofError,
    },
    /// The latest checkpoint does not parse or does not verify under the key.
    #[error("latest checkpoint")]
    Checkpoint(#[source] NoteError),
    /// None of the given files holds a checkpoint.
    #[error("no checkpoint in the given files")]
    NoCheckpoint,
    /// The records cannot give the latest checkpoint's tree.
    #[error(transparent)]
    CheckpointTree(ProofError),
    /// The records give another root than the latest checkpoint's.
    #[error("the records do not match the latest checkpoint (run verify)")]
    RootMismatch,
    /// A consistency proof up to a size the latest checkpoint does not cover.
    #[error("size {size} is past the latest checkpoint ({latest})")]
    PastCheckpoint {
        /// The size asked for.
        size: u64,
        /// The latest checkpoint's size.
        latest: u64,
    },
    /// A proof cannot be made from the given files.
    #[error(transparent)]
    Proof(ProofError),
    /// `prove` without `--index` or `--consistency`.
    #[error("give --index or --consistency")]
    NoQuery,
    /// A record the latest checkpoint does not cover.
    #[error("record {index} is not covered by the latest checkpoint (size {size})")]
    NotCovered {
        /// The record.
        index: u64,
        /// The latest checkpoint's size.
        size: u64,
    },
    /// A record in a file before the given ones.
    #[error("record {0} is before the first given file; give the earlier files too")]
    BeforeFirstFile(u64),
    /// The record's inclusion proof does not verify against the checkpoint.
    #[error(transparent)]
    NotIncluded(ProofError),
}

impl ToolError {
    /// 1 when the log is shown tampered with, 2 when an input cannot be read or used, 3 when
    /// the log is open.
    fn exit_status(&self) -> u8 {
        match self {
            Self::Tampered
            | Self::Checkpoint(_)
            | Self::CheckpointTree(_)
            | Self::RootMismatch
            | Self::NotIncluded(_) => EXIT_TAMPERED,
            Self::Open => EXIT_OPEN,
            Self::Read { .. }
            | Self::KeyFile { .. }
            | Self::Key { .. }
            | Self::NotARecord { .. }
            | Self::Peaks { .. }
            | Self::NoCheckpoint
            | Self::PastCheckpoint { .. }
            | Self::Proof(_)
            | Self::NoQuery
            | Self::NotCovered { .. }
            | Self::BeforeFirstFile(_) => EXIT_UNREADABLE,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = match args.cmd {
        Cmd::Verify {
            logs,
            key,
            live,
            json,
        } => verify::run(&logs, &key, live, json),
        Cmd::Show {
            logs,
            class,
            since,
            json,
        } => show::run(&logs, class, since, json),
        Cmd::Stats { logs, json } => stats::run(&logs, json),
        Cmd::Prove {
            logs,
            index,
            consistency,
            key,
            json,
        } => prove::run(&logs, index, consistency, key.as_deref(), json),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `verify` has printed its verdict.
            if !matches!(e, ToolError::Tampered | ToolError::Open) {
                eprintln!("swiotlb-audit: {}", error_chain(&e));
            }
            ExitCode::from(e.exit_status())
        }
    }
}

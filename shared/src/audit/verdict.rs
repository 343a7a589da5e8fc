//! What verification of a log concludes: the [`Verdict`] (intact, open or tampered), the
//! [`OpenEnd`] of a log its writer did not close, and the first [`Failure`] with its
//! [`Reason`]; each with the words the tool prints. The walk that reaches them is
//! [`super::verify`].

use std::fmt;

/// Why verification failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A record's bytes changed (it no longer parses, the next line names another
    /// predecessor, or a checkpoint does not match the records before it).
    Altered,
    /// A record is missing.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// The log ends early: unsigned records at the end, a torn line, or no stop record.
    Truncated,
    /// A checkpoint is not signed by the trusted key.
    WrongKey,
    /// A file of the log is missing between two given files.
    MissingFile,
    /// A file does not continue the file before it.
    ChainBroken,
}

impl Reason {
    /// Stable name (JSON output).
    pub fn name(self) -> &'static str {
        match self {
            Self::Altered => "altered",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::WrongKey => "wrong_key",
            Self::MissingFile => "missing_file",
            Self::ChainBroken => "chain_broken",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The first bad record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: Reason,
    /// File name.
    pub file: String,
    /// Line number in that file, from 1.
    pub line: u64,
    /// Sequence number (leaf index) of the bad record.
    pub index: u64,
    /// Explanation.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: record {} ({}:{}): {}",
            self.reason, self.index, self.file, self.line, self.detail
        )
    }
}

/// The end of a log that its writer did not close: what no checkpoint proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenEnd {
    /// The last file.
    pub file: String,
    /// Sequence of the last checkpoint, which signs every record before it; `None`: no
    /// checkpoint at all in the log.
    pub proven: Option<u64>,
    /// Sequence of the first record after that checkpoint.
    pub first_unproven: u64,
    /// Complete records after that checkpoint (their sequences are
    /// `first_unproven .. first_unproven + unproven`).
    pub unproven: u64,
    /// The last line is torn (no newline): a write cut short.
    pub torn: bool,
    /// A stop record was written (the writer closed the log but did not get its final
    /// checkpoint down).
    pub stop_record: bool,
}

impl fmt::Display for OpenEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proven {
            Some(cp) => write!(
                f,
                "records 0..{} are proven (the last checkpoint, record {cp}, signs every \
                 record before it)",
                self.first_unproven
            )?,
            None => write!(f, "no checkpoint proves any record")?,
        }
        if self.unproven > 0 {
            write!(
                f,
                "; {} record(s) after it ({}..{} in {}) are covered by no checkpoint: their \
                 authenticity is unknown",
                self.unproven,
                self.first_unproven,
                self.first_unproven + self.unproven,
                self.file
            )?;
        }
        if self.torn {
            write!(f, "; {} ends with a torn line", self.file)?;
        }
        if !self.stop_record {
            write!(
                f,
                "; no stop record: the log is still being written, or its writer ended \
                 without closing it (a crash, SIGKILL, power loss)"
            )?;
        }
        Ok(())
    }
}

/// What verification concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record is covered by a signed checkpoint and the log ends with its stop record
    /// and that record's checkpoint: closed by its writer, nothing missing, nothing altered.
    Intact,
    /// Intact up to the last checkpoint; the end is open (see [`OpenEnd`]).
    Open(OpenEnd),
    /// Altered, deleted, reordered, cut, or signed by another key: the first failure.
    Tampered(Failure),
}

impl Verdict {
    /// Stable name (JSON output).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Intact => "intact",
            Self::Open(_) => "open",
            Self::Tampered(_) => "tampered",
        }
    }
}

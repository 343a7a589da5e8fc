//! Reading a log's files line by line, its records, and the verifier key file: what every
//! command of the tool reads.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use swiotlb_shared::audit::{Record, VerifierKey};
use swiotlb_shared::error_chain;

use crate::ToolError;

/// Calls `f` with each complete line of each file, then (for a last line without newline)
/// `torn`. `begin` is called before each file.
pub fn each_line(
    logs: &[PathBuf],
    mut begin: impl FnMut(&Path),
    mut f: impl FnMut(&Path, u64, &[u8]),
    mut torn: impl FnMut(&Path, &[u8]),
) -> Result<(), ToolError> {
    let unreadable = |path: &Path, source| ToolError::Read {
        path: path.to_path_buf(),
        source,
    };
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

/// Calls `f` with each record of each file and its line's bytes (a line that is not a
/// record is skipped with a warning), and `torn` with a last line without newline.
pub fn each_record(
    logs: &[PathBuf],
    mut f: impl FnMut(&Record, &[u8]),
    torn: impl FnMut(&Path, &[u8]),
) -> Result<(), ToolError> {
    each_line(
        logs,
        |_| {},
        |p, n, bytes| {
            if let Some(r) = parse_record(p, n, bytes) {
                f(&r, bytes);
            }
        },
        torn,
    )
}

/// The file name of `p` (its whole path when it has none).
pub fn file_label(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads the verifier key file at `path` (`<name>+<id>+<key>`, one line).
pub fn load_key(path: &Path) -> Result<VerifierKey, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|source| ToolError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    VerifierKey::from_file_text(&text).map_err(|source| ToolError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// The record on line `line_no` of `path`, or `None` after a warning on stderr.
pub fn parse_record(path: &Path, line_no: u64, bytes: &[u8]) -> Option<Record> {
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

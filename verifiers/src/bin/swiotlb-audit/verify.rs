//! `swiotlb-audit verify`: every file of a log checked in order against the verifier key;
//! exit 0 intact, 1 tampered, 2 unreadable.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use swiotlb_shared::audit::verify::{Options, Verifier};

use crate::input::{each_line, file_label, load_key};
use crate::ToolError;

/// Verifies `logs` with the key in the file `key`, printing the verdict (as JSON with
/// `as_json`); a tampered log is [`ToolError::Tampered`].
pub fn run(logs: &[PathBuf], key: &Path, live: bool, as_json: bool) -> Result<(), ToolError> {
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
        Err(ToolError::Tampered)
    }
}

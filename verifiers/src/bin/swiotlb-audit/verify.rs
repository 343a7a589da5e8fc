//! `swiotlb-audit verify`: every file of a log checked in order against the verifier key;
//! exit 0 intact, 1 tampered, 2 unreadable, 3 open (intact up to its last checkpoint, not
//! closed by its writer; 0 with `--live`).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use swiotlb_shared::audit::verify::{Options, Verdict, Verifier};

use crate::input::{each_line, file_label, load_key};
use crate::ToolError;

/// Verifies `logs` with the key in the file `key`, printing the verdict (as JSON with
/// `as_json`); a tampered log is [`ToolError::Tampered`], an open one (unless `live`)
/// [`ToolError::Open`].
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
        let open = report.open.as_ref().map(|o| {
            json!({"file": o.file, "last_checkpoint": o.proven,
                   "first_unproven": o.first_unproven, "unproven": o.unproven,
                   "torn": o.torn, "stop_record": o.stop_record, "detail": o.to_string()})
        });
        let out = json!({"ok": report.ok, "verdict": report.verdict().name(),
                         "key": key.to_string(), "records": report.lines,
                         "files": files, "latest_checkpoint": latest, "failure": failure,
                         "open": open, "warnings": report.warnings});
        println!("{out}");
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        let (size, root) = report
            .latest
            .as_ref()
            .map_or((0, String::new()), |c| (c.size, B64.encode(c.root)));
        match report.verdict() {
            Verdict::Intact => println!(
                "OK: {} records in {} file(s), every one covered by a signed checkpoint, \
                 closed by its writer; latest checkpoint: size {size}, root {root}",
                report.lines,
                report.files.len()
            ),
            Verdict::Open(o) => println!(
                "OPEN: {} records in {} file(s), intact up to the last checkpoint (size \
                 {size}, root {root}); {o}",
                report.lines,
                report.files.len()
            ),
            Verdict::Tampered(f) => println!("TAMPERED: {f}"),
        }
    }
    match report.verdict() {
        Verdict::Intact => Ok(()),
        Verdict::Open(_) if live => Ok(()),
        Verdict::Open(_) => Err(ToolError::Open),
        Verdict::Tampered(_) => Err(ToolError::Tampered),
    }
}

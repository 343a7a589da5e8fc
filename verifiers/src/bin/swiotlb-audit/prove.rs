//! `swiotlb-audit prove`: an inclusion proof of one record, or a consistency proof between
//! two tree sizes, against the latest checkpoint of the given files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use swiotlb_shared::audit::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use swiotlb_shared::audit::{
    Checkpoint, CompactRange, Event, LogAction, PartialTree, Record, SignedNote,
};

use crate::input::{each_line, load_key, parse_record};
use crate::ToolError;

/// The tree of the given files and their latest checkpoint.
struct Loaded {
    tree: PartialTree,
    lines: BTreeMap<u64, Vec<u8>>,
    latest: Option<(u64, String)>,
}

fn load_tree(logs: &[PathBuf], keep: Option<u64>) -> Result<Loaded, ToolError> {
    let mut tree: Option<PartialTree> = None;
    let mut lines = BTreeMap::new();
    let mut latest = None;
    let mut err = None;
    each_line(
        logs,
        |_| {},
        |p, n, bytes| {
            if err.is_some() {
                return;
            }
            if tree.is_none() {
                let Some(r) = parse_record(p, n, bytes) else {
                    err = Some(ToolError::NotARecord {
                        path: p.to_path_buf(),
                        line: n,
                    });
                    return;
                };
                let prev = r
                    .log_event()
                    .filter(|l| l.action == LogAction::Rotate)
                    .and_then(|l| l.previous.as_ref());
                tree = Some(match prev {
                    None => PartialTree::default(),
                    Some(prev) => {
                        let size = SignedNote::parse(&prev.checkpoint)
                            .ok()
                            .and_then(|n| Checkpoint::parse(&n.text).ok())
                            .map_or(0, |c| c.size);
                        match CompactRange::from_peaks(size, prev.peaks.clone()) {
                            Ok(c) => {
                                let mut t = PartialTree::new(c);
                                t.push(r.unmapped.prev_leaf);
                                t
                            }
                            Err(source) => {
                                err = Some(ToolError::Peaks {
                                    path: p.to_path_buf(),
                                    line: n,
                                    source,
                                });
                                return;
                            }
                        }
                    }
                });
            }
            let Some(t) = tree.as_mut() else { return };
            let index = t.size();
            if Some(index) == keep {
                lines.insert(index, bytes.to_vec());
            }
            if bytes.windows(12).any(|w| w == b"\"checkpoint\"") {
                if let Some(Event::Checkpoint(c)) =
                    Record::parse(bytes).ok().and_then(|r| r.event())
                {
                    latest = Some((index, c.note));
                }
            }
            t.push(leaf_hash(bytes));
        },
        |_, _| {},
    )?;
    if let Some(e) = err {
        return Err(e);
    }
    Ok(Loaded {
        tree: tree.unwrap_or_default(),
        lines,
        latest,
    })
}

/// The checkpoint in `note`, and whether its signature was checked (with the key in `key`).
fn checked_checkpoint(note: &str, key: Option<&Path>) -> Result<(Checkpoint, bool), ToolError> {
    if let Some(k) = key {
        let key = load_key(k)?;
        let cp = Checkpoint::verify_note(note, &key).map_err(ToolError::Checkpoint)?;
        return Ok((cp, true));
    }
    let n = SignedNote::parse(note).map_err(ToolError::Checkpoint)?;
    let cp = Checkpoint::parse(&n.text).map_err(ToolError::Checkpoint)?;
    Ok((cp, false))
}

/// Proves record `index`, or the consistency of the tree sizes in `consistency`, against
/// the latest checkpoint of `logs`, and prints the proof.
pub fn run(
    logs: &[PathBuf],
    index: Option<u64>,
    consistency: Option<Vec<u64>>,
    key: Option<&Path>,
    as_json: bool,
) -> Result<(), ToolError> {
    let loaded = load_tree(logs, index)?;
    let Some((_, note)) = &loaded.latest else {
        return Err(ToolError::NoCheckpoint);
    };
    let (cp, signed) = checked_checkpoint(note, key)?;
    let t = &loaded.tree;
    let root = t.root_at(cp.size).map_err(ToolError::CheckpointTree)?;
    if root != cp.root {
        return Err(ToolError::RootMismatch);
    }
    let b64s = |v: &[[u8; 32]]| v.iter().map(|h| B64.encode(h)).collect::<Vec<_>>();
    if let Some(ab) = consistency {
        let (a, b) = (ab[0], ab[1]);
        if b > cp.size {
            return Err(ToolError::PastCheckpoint {
                size: b,
                latest: cp.size,
            });
        }
        let proof = t.consistency_proof(a, b).map_err(ToolError::Proof)?;
        let (ra, rb) = (
            t.root_at(a).map_err(ToolError::Proof)?,
            t.root_at(b).map_err(ToolError::Proof)?,
        );
        verify_consistency(a, b, &ra, &rb, &proof).map_err(ToolError::Proof)?;
        if as_json {
            println!(
                "{}",
                json!({"old_size": a, "old_root": B64.encode(ra), "new_size": b,
                       "new_root": B64.encode(rb), "proof": b64s(&proof),
                       "checkpoint": note, "checkpoint_signature_checked": signed})
            );
        } else {
            println!(
                "consistency: size {a} (root {}) -> size {b} (root {})",
                B64.encode(ra),
                B64.encode(rb)
            );
            for h in &proof {
                println!("  {}", B64.encode(h));
            }
        }
        return Ok(());
    }
    let Some(i) = index else {
        return Err(ToolError::NoQuery);
    };
    if i >= cp.size {
        return Err(ToolError::NotCovered {
            index: i,
            size: cp.size,
        });
    }
    let leaf = t.leaf(i).ok_or(ToolError::BeforeFirstFile(i))?;
    let proof = t.inclusion_proof(i, cp.size).map_err(ToolError::Proof)?;
    verify_inclusion(&leaf, i, cp.size, &proof, &cp.root).map_err(ToolError::NotIncluded)?;
    let record = loaded
        .lines
        .get(&i)
        .map(|b| String::from_utf8_lossy(b).into_owned());
    if as_json {
        println!(
            "{}",
            json!({"index": i, "leaf_hash": B64.encode(leaf), "tree_size": cp.size,
                   "root": B64.encode(cp.root), "proof": b64s(&proof), "checkpoint": note,
                   "checkpoint_signature_checked": signed, "record": record})
        );
    } else {
        println!(
            "record {i} (leaf hash {}) is in the tree of size {}",
            B64.encode(leaf),
            cp.size
        );
        println!("root: {}", B64.encode(cp.root));
        println!("proof ({} hashes):", proof.len());
        for h in &proof {
            println!("  {}", B64.encode(h));
        }
        if !signed {
            println!("(checkpoint signature not checked: give --key)");
        }
    }
    Ok(())
}

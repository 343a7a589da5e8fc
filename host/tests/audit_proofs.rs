//! Checkpoint roots, inclusion proofs and consistency proofs of a real log, checked against
//! an independent computation written here from RFC 6962 section 2.1 (naive recursion
//! over the raw lines, its own SHA-256 calls), and through `swiotlb-audit prove`.

mod audit_support;

use std::process::Command;

use audit_support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::digest::{digest, SHA256};
use swiotlb_shared::audit::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion,
    CompactRange, PartialTree,
};
use swiotlb_shared::audit::{Checkpoint, SignedNote};

type H = [u8; 32];

fn sha(parts: &[&[u8]]) -> H {
    let mut buf = Vec::new();
    for p in parts {
        buf.extend_from_slice(p);
    }
    digest(&SHA256, &buf).as_ref().try_into().unwrap()
}

/// `k`: the largest power of two smaller than `n`.
fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over the raw lines.
fn mth(d: &[Vec<u8>]) -> H {
    match d.len() {
        0 => sha(&[]),
        1 => sha(&[&[0], &d[0]]),
        n => {
            let k = k_of(n);
            sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

/// PATH(m, D[n]).
fn path(m: usize, d: &[Vec<u8>]) -> Vec<H> {
    let n = d.len();
    if n <= 1 {
        return vec![];
    }
    let k = k_of(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b).
fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<H> {
    let n = d.len();
    if m == n {
        return if b { vec![] } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

struct Log {
    _s: Scratch,
    files: Vec<std::path::PathBuf>,
    lines: Vec<Vec<u8>>,
    /// (index of the checkpoint line, its checkpoint).
    checkpoints: Vec<(usize, Checkpoint)>,
}

fn log(tag: &str) -> Log {
    let s = Scratch::new(tag);
    let mut cfg = config(&s.base());
    cfg.checkpoint_every_records = 5;
    cfg.rotate_bytes = Some(12 << 10);
    write_findings(cfg, 45);
    let files = files(&s.base());
    assert!(files.len() >= 3);
    let lines: Vec<Vec<u8>> = files.iter().flat_map(|f| lines(f)).collect();
    let checkpoints = files
        .iter()
        .flat_map(|f| records(f))
        .enumerate()
        .filter_map(|(i, r)| {
            let note = r.checkpoint_note()?;
            let n = SignedNote::parse(note).unwrap();
            Some((i, Checkpoint::parse(&n.text).unwrap()))
        })
        .collect();
    Log {
        _s: s,
        files,
        lines,
        checkpoints,
    }
}

#[test]
fn every_checkpoint_signs_the_rfc6962_root_of_the_lines_before_it() {
    let l = log("proof-roots");
    assert!(l.checkpoints.len() > 10);
    for (i, cp) in &l.checkpoints {
        assert_eq!(cp.size, *i as u64);
        assert_eq!(cp.root, mth(&l.lines[..*i]), "checkpoint at line {i}");
    }
}

#[test]
fn inclusion_proofs_match_the_naive_audit_path_and_verify() {
    let l = log("proof-incl");
    let leaves: Vec<H> = l.lines.iter().map(|x| leaf_hash(x)).collect();
    for (size, _) in l.checkpoints.iter().step_by(3) {
        let root = mth(&l.lines[..*size]);
        for m in 0..*size {
            let p = inclusion_proof(&leaves[..*size], m as u64).unwrap();
            assert_eq!(p, path(m, &l.lines[..*size]), "leaf {m} of {size}");
            verify_inclusion(&leaves[m], m as u64, *size as u64, &p, &root).unwrap();
            // The leaf hash itself is the RFC's: SHA-256(0x00 || line).
            assert_eq!(leaves[m], sha(&[&[0], &l.lines[m]]));
        }
    }
}

#[test]
fn consistency_proofs_between_checkpoints_match_the_naive_subproof_and_verify() {
    let l = log("proof-cons");
    let leaves: Vec<H> = l.lines.iter().map(|x| leaf_hash(x)).collect();
    let sizes: Vec<usize> = l
        .checkpoints
        .iter()
        .map(|(i, _)| *i)
        .filter(|i| *i > 0)
        .collect();
    for (a, &m) in sizes.iter().enumerate() {
        for &n in &sizes[a..] {
            let p = consistency_proof(&leaves[..n], m as u64).unwrap();
            assert_eq!(p, subproof(m, &l.lines[..n], true), "{m} -> {n}");
            let (rm, rn) = (mth(&l.lines[..m]), mth(&l.lines[..n]));
            verify_consistency(m as u64, n as u64, &rm, &rn, &p).unwrap();
            if m < n {
                assert!(verify_consistency(m as u64, n as u64, &rn, &rn, &p).is_err());
            }
        }
    }
}

#[test]
fn a_single_later_file_proves_its_records_from_the_peaks_it_carries() {
    let l = log("proof-partial");
    let last = l.files.last().unwrap();
    let recs = records(last);
    let first = recs[0].sequence() as usize;
    let prev = recs[0].log_event().unwrap().previous.clone().unwrap();
    let cp = Checkpoint::parse(&SignedNote::parse(&prev.checkpoint).unwrap().text).unwrap();
    let mut t = PartialTree::new(CompactRange::from_peaks(cp.size, prev.peaks).unwrap());
    t.push(recs[0].unmapped.prev_leaf);
    for line in lines(last) {
        t.push(leaf_hash(&line));
    }
    let n = l.lines.len();
    assert_eq!(t.root_at(n as u64).unwrap(), mth(&l.lines));
    for m in first..n {
        assert_eq!(
            t.inclusion_proof(m as u64, n as u64).unwrap(),
            path(m, &l.lines)
        );
    }
}

fn prove(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_swiotlb-audit"))
        .arg("prove")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_prove_tool_gives_the_naive_proofs_against_the_latest_checkpoint() {
    let l = log("proof-tool");
    let (size, _) = *l.checkpoints.last().unwrap();
    let all: Vec<&str> = l.files.iter().map(|f| f.to_str().unwrap()).collect();
    let key = l.files[0].with_file_name("audit.key.pub");
    let b64 = |v: Vec<H>| v.iter().map(|h| B64.encode(h)).collect::<Vec<_>>();
    for m in [0, 7, size / 2, size - 1] {
        let mut args = all.clone();
        let idx = m.to_string();
        args.extend(["--index", &idx, "--key", key.to_str().unwrap()]);
        let v = prove(&args);
        assert_eq!(v["tree_size"], size as u64);
        assert_eq!(v["root"], B64.encode(mth(&l.lines[..size])));
        assert_eq!(v["checkpoint_signature_checked"], true);
        let proof: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
        assert_eq!(proof, b64(path(m, &l.lines[..size])));
        assert_eq!(v["record"].as_str().unwrap().as_bytes(), &l.lines[m][..]);
    }
    // From the last file alone, for a record in it.
    let last = l.files.last().unwrap().to_str().unwrap();
    let m = size - 2;
    let v = prove(&[last, "--index", &m.to_string()]);
    let proof: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
    assert_eq!(proof, b64(path(m, &l.lines[..size])));
    // Consistency between two checkpoints.
    let (a, _) = l.checkpoints[3];
    let mut args = all.clone();
    let (sa, sb) = (a.to_string(), size.to_string());
    args.extend(["--consistency", &sa, &sb]);
    let v = prove(&args);
    let proof: Vec<String> = serde_json::from_value(v["proof"].clone()).unwrap();
    assert_eq!(proof, b64(subproof(a, &l.lines[..size], true)));
    assert_eq!(v["old_root"], B64.encode(mth(&l.lines[..a])));
}

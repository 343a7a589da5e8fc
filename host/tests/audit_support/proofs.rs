//! An independent computation of RFC 6962 section 2.1 (naive recursion over the raw lines,
//! its own SHA-256 calls) to check the log's roots and proofs against, and a rotated log
//! with many checkpoints to check them on.

use ring::digest::{digest, SHA256};
use swiotlb_shared::audit::{Checkpoint, SignedNote};

use super::*;

/// A tree hash.
pub type H = [u8; 32];

/// SHA-256 of the concatenated `parts`.
pub fn sha(parts: &[&[u8]]) -> H {
    let mut buf = Vec::new();
    for p in parts {
        buf.extend_from_slice(p);
    }
    digest(&SHA256, &buf).as_ref().try_into().unwrap()
}

/// `k`: the largest power of two smaller than `n`.
pub fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) over the raw lines.
pub fn mth(d: &[Vec<u8>]) -> H {
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
pub fn path(m: usize, d: &[Vec<u8>]) -> Vec<H> {
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
pub fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<H> {
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

/// A log of 45 findings, a checkpoint every 5 records, rotated into at least 3 files.
pub struct Log {
    _s: Scratch,
    /// Its files, oldest first.
    pub files: Vec<std::path::PathBuf>,
    /// Every line of every file, in order.
    pub lines: Vec<Vec<u8>>,
    /// (index of the checkpoint line, its checkpoint).
    pub checkpoints: Vec<(usize, Checkpoint)>,
}

/// Writes a [`Log`] in a fresh scratch directory named after `tag`.
pub fn log(tag: &str) -> Log {
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

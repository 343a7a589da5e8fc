//! Checkpoint roots, inclusion proofs and consistency proofs of a real log, checked against
//! an independent computation from RFC 6962 section 2.1 (naive recursion over the raw
//! lines, its own SHA-256 calls: `audit_support::proofs`). The `swiotlb-audit prove` tool
//! is checked against the same computation in the verifiers' tests.

mod audit_support;

use audit_support::proofs::*;
use audit_support::*;
use swiotlb_shared::audit::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion,
    CompactRange, PartialTree,
};
use swiotlb_shared::audit::{Checkpoint, SignedNote};

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

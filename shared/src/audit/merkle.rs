//! RFC 6962 Merkle hash trees (section 2.1): the tree hash, inclusion and consistency
//! proofs, and their verification (the algorithms of RFC 9162, section 2.1.3.2 and 2.1.4.2).
//!
//! - leaf hash `SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`;
//! - `MTH(D[n])` for `n > 1` splits at `k`, the largest power of two below `n`:
//!   `MTH(D[0:k])` on the left, `MTH(D[k:n])` on the right; the empty tree is `SHA-256()`.
//!
//! [`CompactRange`] is the writer's state: the roots of the perfect subtrees ("peaks") that
//! make up a tree of any size, enough to append a leaf and compute the root in `O(log n)`.
//! [`PartialTree`] holds a [`CompactRange`] prefix plus the leaves after it: what one log
//! file gives a verifier, enough to prove inclusion of any of those leaves and consistency
//! between any two sizes past the prefix.

use ring::digest::{digest, Context, SHA256};
use thiserror::Error;

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// Trees this large are refused when read from peer data, so appending never overflows: a
/// log of 2^62 lines is out of reach (a line is over 500 bytes).
pub const MAX_TREE_SIZE: u64 = 1 << 62;

/// Errors of proof construction and verification.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// Leaf index asked for.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// The sizes of a consistency proof are not `0 < m <= n`.
    #[error("no consistency proof from size {m} to size {n}")]
    BadSizes {
        /// Older size.
        m: u64,
        /// Newer size.
        n: u64,
    },
    /// A subtree the proof needs lies inside the prefix only known by its peaks.
    #[error("leaves {start}..{end} lie before this file; prove against the earlier file")]
    Pruned {
        /// First leaf of the subtree.
        start: u64,
        /// One past its last leaf.
        end: u64,
    },
    /// The proof has the wrong number of hashes, or does not lead to the root.
    #[error("proof does not verify: {0}")]
    Mismatch(&'static str),
    /// A tree size at or above [`MAX_TREE_SIZE`].
    #[error("tree size {0} is too large")]
    TooLarge(u64),
    /// Peaks that do not describe a tree of the claimed size.
    #[error("a tree of {size} leaves has {expected} peaks, not {got}")]
    BadPeaks {
        /// Tree size.
        size: u64,
        /// Peaks a tree of that size has.
        expected: usize,
        /// Peaks given.
        got: usize,
    },
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x00]);
    c.update(data);
    to_hash(c.finish().as_ref())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x01]);
    c.update(left);
    c.update(right);
    to_hash(c.finish().as_ref())
}

/// `SHA-256()`: the root of the empty tree.
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, b"").as_ref())
}

/// Plain SHA-256.
pub fn sha256(data: &[u8]) -> Hash {
    to_hash(digest(&SHA256, data).as_ref())
}

fn to_hash(b: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(b);
    h
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH` over leaf hashes (each already `leaf_hash(d)`).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// `PATH(index, D[0:size])`, the RFC 6962 audit path, with subtree hashes from `mth`.
fn path<F>(index: u64, start: u64, end: u64, mth: &F, out: &mut Vec<Hash>) -> Result<(), ProofError>
where
    F: Fn(u64, u64) -> Result<Hash, ProofError>,
{
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if index < k {
        path(index, start, start + k, mth, out)?;
        out.push(mth(start + k, end)?);
    } else {
        path(index - k, start + k, end, mth, out)?;
        out.push(mth(start, start + k)?);
    }
    Ok(())
}

/// `SUBPROOF(m, D[start:end], b)` of RFC 6962 section 2.1.2.
fn subproof<F>(
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    mth: &F,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError>
where
    F: Fn(u64, u64) -> Result<Hash, ProofError>,
{
    let n = end - start;
    if m == n {
        if !whole {
            out.push(mth(start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, whole, mth, out)?;
        out.push(mth(start + k, end)?);
    } else {
        subproof(m - k, start + k, end, false, mth, out)?;
        out.push(mth(start, start + k)?);
    }
    Ok(())
}

/// The inclusion proof of leaf `index` in the tree of all `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(
        index,
        0,
        size,
        &|a, b| Ok(root(&leaves[a as usize..b as usize])),
        &mut out,
    )?;
    Ok(out)
}

/// The consistency proof from the first `m` of `leaves` to all of them.
pub fn consistency_proof(leaves: &[Hash], m: u64) -> Result<Vec<Hash>, ProofError> {
    let n = leaves.len() as u64;
    if m == 0 || m > n {
        return Err(ProofError::BadSizes { m, n });
    }
    let mut out = Vec::new();
    subproof(
        m,
        0,
        n,
        true,
        &|a, b| Ok(root(&leaves[a as usize..b as usize])),
        &mut out,
    )?;
    Ok(out)
}

/// Checks that `leaf` (a leaf hash) is leaf `index` of the tree of `size` leaves with root
/// `root` (RFC 9162, 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::Mismatch("inclusion proof is too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Mismatch("inclusion proof is too short"));
    }
    if &r != root {
        return Err(ProofError::Mismatch(
            "inclusion proof leads to another root",
        ));
    }
    Ok(())
}

/// Checks that the tree of `m` leaves with root `root_m` is a prefix of the tree of `n`
/// leaves with root `root_n` (RFC 9162, 2.1.4.2). `m == n` needs an empty proof and equal
/// roots.
pub fn verify_consistency(
    m: u64,
    n: u64,
    root_m: &Hash,
    root_n: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if m == 0 || m > n {
        return Err(ProofError::BadSizes { m, n });
    }
    if m == n {
        if !proof.is_empty() {
            return Err(ProofError::Mismatch(
                "proof between equal sizes must be empty",
            ));
        }
        if root_m != root_n {
            return Err(ProofError::Mismatch("equal sizes with different roots"));
        }
        return Ok(());
    }
    if proof.is_empty() {
        return Err(ProofError::Mismatch("consistency proof is empty"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*root_m);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (m - 1, n - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::Mismatch("consistency proof is too long"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Mismatch("consistency proof is too short"));
    }
    if &fr != root_m {
        return Err(ProofError::Mismatch(
            "proof does not lead to the older root",
        ));
    }
    if &sr != root_n {
        return Err(ProofError::Mismatch(
            "proof does not lead to the newer root",
        ));
    }
    Ok(())
}

/// The peaks of a tree: the roots of the perfect subtrees its leaves decompose into, one
/// per set bit of the size, largest (leftmost) first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of `size` leaves from its peaks, largest first. Sizes of [`MAX_TREE_SIZE`] or
    /// more are refused.
    pub fn from_peaks(size: u64, peaks: Vec<Hash>) -> Result<Self, ProofError> {
        let expected = size.count_ones() as usize;
        if size >= MAX_TREE_SIZE {
            return Err(ProofError::TooLarge(size));
        }
        if peaks.len() != expected {
            return Err(ProofError::BadPeaks {
                size,
                expected,
                got: peaks.len(),
            });
        }
        Ok(Self { size, peaks })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peaks, largest first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends a leaf hash.
    pub fn append(&mut self, leaf: Hash) {
        let mut h = leaf;
        // Each trailing one bit of the old size is a peak of the same height as `h`.
        let mut s = self.size;
        while s & 1 == 1 {
            // A set bit means a peak is present; popping cannot fail.
            let left = self.peaks.pop().unwrap_or_default();
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// The tree hash.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, p| node_hash(p, &acc))
    }

    /// The `(start, end)` leaf range of each peak, largest first.
    pub fn peak_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.peaks.len());
        let mut start = 0;
        for bit in (0..64).rev() {
            let w = 1u64 << bit;
            if self.size & w != 0 {
                out.push((start, start + w));
                start += w;
            }
        }
        out
    }
}

/// A tree whose first leaves are known only through their peaks: the state a later log
/// file starts from, followed by that file's leaves.
#[derive(Clone, Debug, Default)]
pub struct PartialTree {
    prefix: CompactRange,
    leaves: Vec<Hash>,
}

impl PartialTree {
    /// A tree starting from `prefix`, with no leaves after it yet.
    pub fn new(prefix: CompactRange) -> Self {
        Self {
            prefix,
            leaves: Vec::new(),
        }
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
    }

    /// Number of leaves, prefix included.
    pub fn size(&self) -> u64 {
        self.prefix.size() + self.leaves.len() as u64
    }

    /// Index of the first leaf known by its hash.
    pub fn first_known(&self) -> u64 {
        self.prefix.size()
    }

    /// Leaf hash `index`, if it is past the prefix.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let i = index.checked_sub(self.prefix.size())?;
        self.leaves.get(usize::try_from(i).ok()?).copied()
    }

    /// `MTH(D[start:end])`.
    pub fn subtree(&self, start: u64, end: u64) -> Result<Hash, ProofError> {
        let b = self.prefix.size();
        if end > self.size() || start >= end {
            return Err(ProofError::BadSizes { m: start, n: end });
        }
        if start >= b {
            let (s, e) = ((start - b) as usize, (end - b) as usize);
            return Ok(root(&self.leaves[s..e]));
        }
        for (i, (ps, pe)) in self.prefix.peak_ranges().into_iter().enumerate() {
            if (ps, pe) == (start, end) {
                return Ok(self.prefix.peaks()[i]);
            }
            if ps <= start && end <= pe {
                // Strictly inside a peak: those leaves are not known one by one.
                return Err(ProofError::Pruned { start, end });
            }
        }
        let n = end - start;
        if n < 2 {
            return Err(ProofError::Pruned { start, end });
        }
        let k = split(n);
        Ok(node_hash(
            &self.subtree(start, start + k)?,
            &self.subtree(start + k, end)?,
        ))
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        if size == 0 {
            return Ok(empty_root());
        }
        self.subtree(0, size)
    }

    /// Inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size() {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::new();
        path(index, 0, size, &|a, b| self.subtree(a, b), &mut out)?;
        Ok(out)
    }

    /// Consistency proof from the first `m` leaves to the first `n`.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Result<Vec<Hash>, ProofError> {
        if m == 0 || m > n || n > self.size() {
            return Err(ProofError::BadSizes { m, n });
        }
        let mut out = Vec::new();
        subproof(m, 0, n, true, &|a, b| self.subtree(a, b), &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        // Known answer: SHA-256 of the empty string.
        let hex: String = empty_root().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn compact_range_matches_full_root_at_every_size() {
        let l = leaves(70);
        let mut c = CompactRange::new();
        assert_eq!(c.root(), root(&[]));
        for (i, h) in l.iter().enumerate() {
            c.append(*h);
            assert_eq!(c.root(), root(&l[..=i]), "size {}", i + 1);
            assert_eq!(c.peaks().len(), c.size().count_ones() as usize);
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_tampering_fails() {
        let l = leaves(33);
        for n in 1..=l.len() as u64 {
            let r = root(&l[..n as usize]);
            for i in 0..n {
                let p = inclusion_proof(&l[..n as usize], i).unwrap();
                verify_inclusion(&l[i as usize], i, n, &p, &r).unwrap();
                let wrong = leaf_hash(b"other");
                assert!(verify_inclusion(&wrong, i, n, &p, &r).is_err());
                if n > 1 {
                    assert!(verify_inclusion(&l[i as usize], (i + 1) % n, n, &p, &r).is_err());
                }
            }
            for m in 1..=n {
                let p = consistency_proof(&l[..n as usize], m).unwrap();
                let rm = root(&l[..m as usize]);
                verify_consistency(m, n, &rm, &r, &p).unwrap();
                if m < n {
                    let bad = leaf_hash(b"x");
                    assert!(verify_consistency(m, n, &bad, &r, &p).is_err());
                }
            }
        }
    }

    #[test]
    fn peaks_that_do_not_fit_the_size_are_refused() {
        assert!(CompactRange::from_peaks(3, vec![[0; 32]]).is_err());
        assert!(CompactRange::from_peaks(u64::MAX, vec![[0; 32]; 64]).is_err());
        assert!(CompactRange::from_peaks(5, vec![[0; 32]; 2]).is_ok());
    }

    #[test]
    fn partial_tree_proves_leaves_past_its_prefix() {
        let l = leaves(45);
        for b in [0usize, 1, 3, 8, 13, 32] {
            let mut prefix = CompactRange::new();
            for h in &l[..b] {
                prefix.append(*h);
            }
            let mut t = PartialTree::new(prefix);
            for h in &l[b..] {
                t.push(*h);
            }
            let n = l.len() as u64;
            assert_eq!(t.root_at(n).unwrap(), root(&l));
            for i in b as u64..n {
                assert_eq!(
                    t.inclusion_proof(i, n).unwrap(),
                    inclusion_proof(&l, i).unwrap()
                );
            }
            for m in (b as u64).max(1)..=n {
                assert_eq!(
                    t.consistency_proof(m, n).unwrap(),
                    consistency_proof(&l, m).unwrap()
                );
            }
        }
    }
}

//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs from stored hashes, and
//! the proof verification algorithms.
//!
//! The tree is never held in memory. What is stored (see [`NodeSource`]) is
//! the hash of every *complete* subtree: level 0 holds the leaf hashes, and
//! node `(level, index)` covers leaves `index·2^level .. (index+1)·2^level`.
//! Appending a leaf writes its hash and the complete subtrees it closes
//! ([`append_nodes`]); any tree head or proof for any size is then made of
//! O(log n) of those reads, because the subtrees RFC 9162 §2.1 recurses into
//! are always aligned on their own size.

use aws_lc_rs::digest::{Context, SHA256};
use thiserror::Error;

/// A SHA-256 hash: a leaf hash, an interior node or a tree head.
pub type Hash = [u8; 32];

/// Tree heads larger than this are refused (2^63: sizes stay well inside u64
/// arithmetic everywhere, and no real log comes near).
pub const MAX_TREE_SIZE: u64 = 1 << 63;

/// Longest proof accepted by the verifiers: a tree of at most
/// [`MAX_TREE_SIZE`] leaves has at most 63 levels, and a consistency proof
/// at most two hashes per level.
pub const MAX_PROOF_LEN: usize = 2 * 64;

/// The hash of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    digest(&[&[]])
}

/// Leaf hash: SHA-256(0x00 || entry) (RFC 9162 §2.1.1).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    digest(&[&[0x00], entry])
}

/// Interior node hash: SHA-256(0x01 || left || right) (RFC 9162 §2.1.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    digest(&[&[0x01], left, right])
}

fn digest(parts: &[&[u8]]) -> Hash {
    let mut c = Context::new(&SHA256);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// Where the hashes of complete subtrees are read from (the state database,
/// or memory in tests). `node(level, index)` is only ever asked for a subtree
/// that lies entirely within the tree size the caller works on.
pub trait NodeSource {
    /// The error of the underlying storage.
    type Error;
    /// The hash of complete subtree `(level, index)`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be made from stored hashes.
#[derive(Debug, Error)]
pub enum ProveError<E> {
    /// The request makes no sense for the tree (index past the size, sizes
    /// out of order, empty tree).
    #[error("{0}")]
    Invalid(&'static str),
    /// The storage failed.
    #[error(transparent)]
    Source(E),
}

/// The largest power of two strictly smaller than `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) for a non-empty range the tree structure produces.
fn range_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.node(n.trailing_zeros() as u8, start >> n.trailing_zeros());
    }
    let k = split_point(n);
    let left = range_hash(src, start, start + k)?;
    let right = range_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The tree head (root hash) of the first `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(src, 0, size)
}

/// The complete subtrees that appending leaf number `index` (0-based, the
/// tree's size before the append) closes, as `(level, index, hash)`, the leaf
/// itself first. `src` must hold every complete subtree of the tree of
/// `index` leaves.
pub fn append_nodes<S: NodeSource>(
    src: &S,
    index: u64,
    leaf: Hash,
) -> Result<Vec<(u8, u64, Hash)>, S::Error> {
    let mut out = vec![(0u8, index, leaf)];
    let mut level = 0u8;
    let mut i = index;
    let mut h = leaf;
    // A right child closes its parent; climb while that keeps happening.
    while i & 1 == 1 {
        let left = src.node(level, i - 1)?;
        h = node_hash(&left, &h);
        level += 1;
        i >>= 1;
        out.push((level, i, h));
    }
    Ok(out)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (`PATH(m, D[n])`, RFC 9162 §2.1.3.1).
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if index >= size {
        return Err(ProveError::Invalid("leaf index is not below the tree size"));
    }
    let mut proof = Vec::new();
    path(src, index, 0, size, &mut proof).map_err(ProveError::Source)?;
    Ok(proof)
}

fn path<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m - start < k {
        path(src, m, start, start + k, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        path(src, m, start + k, end, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// The consistency proof from the tree of `old` leaves to the tree of `new`
/// leaves (`PROOF(m, D[n])`, RFC 9162 §2.1.4.1). Empty when the sizes are
/// equal; refused for `old == 0` (nothing to prove) or `old > new`.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProveError<S::Error>> {
    if old == 0 || old > new {
        return Err(ProveError::Invalid(
            "consistency needs 0 < old size <= new size",
        ));
    }
    let mut proof = Vec::new();
    if old < new {
        subproof(src, old, 0, new, true, &mut proof).map_err(ProveError::Source)?;
    }
    Ok(proof)
}

fn subproof<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(range_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, whole, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The sizes or index cannot have a proof (index ≥ size, old > new, …).
    #[error("invalid proof request: {0}")]
    BadRequest(&'static str),
    /// The proof has the wrong number of hashes for the sizes.
    #[error("proof has the wrong length")]
    BadLength,
    /// The proof is well-formed but leads to another root.
    #[error("proof does not lead to the expected root")]
    Mismatch,
}

/// Verifies that `leaf` is leaf `index` of the tree of `size` leaves whose
/// head is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::BadRequest(
            "leaf index is not below the tree size",
        ));
    }
    if size > MAX_TREE_SIZE {
        return Err(ProofError::BadRequest("tree size too large"));
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::BadLength);
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::BadLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::BadLength);
    }
    if &r != root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// Verifies that the tree of `old_size` leaves with head `old_root` is a
/// prefix of the tree of `new_size` leaves with head `new_root`
/// (RFC 9162 §2.1.4.2). Equal sizes need an empty proof and equal roots; an
/// empty old tree proves nothing and is refused, as is `old_size > new_size`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::BadRequest("old size is larger than new size"));
    }
    if new_size > MAX_TREE_SIZE {
        return Err(ProofError::BadRequest("tree size too large"));
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::BadLength);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::BadLength);
        }
        // The empty tree has one head only.
        return if old_root == new_root && (old_size > 0 || *old_root == empty_root()) {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if old_size == 0 {
        return Err(ProofError::BadRequest(
            "consistency with an empty tree proves nothing",
        ));
    }
    if proof.is_empty() {
        return Err(ProofError::BadLength);
    }
    // Step 2: a power-of-two old tree is itself the first node of the path.
    let full: Vec<Hash>;
    let path: &[Hash] = if old_size.is_power_of_two() {
        full = std::iter::once(*old_root)
            .chain(proof.iter().copied())
            .collect();
        &full
    } else {
        proof
    };
    let (fr, sr) = prefix_path_roots(old_size, new_size, path)?;
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::Mismatch);
    }
    Ok(())
}

/// The two roots a consistency path from `old_size` to `new_size` leaves
/// implies (RFC 9162 §2.1.4.2 steps 3 to 7, `path[0]` as the seed, so a
/// power-of-two old tree's own root comes first): the root of the first
/// `old_size` leaves, and the root of the `new_size` leaves. The caller
/// checks `0 < old_size < new_size` and that `path` is not empty.
pub fn prefix_path_roots(
    old_size: u64,
    new_size: u64,
    path: &[Hash],
) -> Result<(Hash, Hash), ProofError> {
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::BadLength);
    };
    if old_size == 0 || old_size >= new_size {
        return Err(ProofError::BadRequest(
            "a consistency path needs 0 < old < new",
        ));
    }
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if snode == 0 {
            return Err(ProofError::BadLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::BadLength);
    }
    Ok((fr, sr))
}

/// Complete-subtree hashes in memory: a whole log held by a test, a
/// verifier recomputing a log from its entries, or the overlay of hashes
/// written in a transaction not yet committed.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends an entry (its leaf hash is computed here).
    pub fn push_entry(&mut self, entry: &[u8]) {
        self.push_leaf(leaf_hash(entry));
    }

    /// Appends a leaf hash.
    pub fn push_leaf(&mut self, leaf: Hash) {
        let index = self.size();
        // Every left sibling `append_nodes` reads is a complete subtree
        // already present, so reading from `self` cannot fail.
        let nodes = match append_nodes(self, index, leaf) {
            Ok(n) => n,
            Err(never) => match never {},
        };
        for (level, i, h) in nodes {
            let level = usize::from(level);
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, i);
            self.levels[level].push(h);
        }
    }

    /// The tree head of the first `size` leaves (`size` ≤ [`Self::size`]).
    pub fn root_at(&self, size: u64) -> Hash {
        match root(self, size.min(self.size())) {
            Ok(h) => h,
            Err(never) => match never {},
        }
    }

    /// Every complete subtree, level by level (for comparison with storage).
    pub fn levels(&self) -> &[Vec<Hash>] {
        &self.levels
    }
}

impl NodeSource for MemoryTree {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        // Callers only ask for subtrees inside the tree; anything else is a
        // bug in this module, caught by the tests, and answered with zeros
        // rather than a panic.
        Ok(self
            .levels
            .get(usize::from(level))
            .and_then(|l| usize::try_from(index).ok().and_then(|i| l.get(i)))
            .copied()
            .unwrap_or([0u8; 32]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MTH computed straight from RFC 9162 §2.1.1, from the entries.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> (MemoryTree, Vec<Hash>) {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let e = format!("entry {i}");
            t.push_entry(e.as_bytes());
            leaves.push(leaf_hash(e.as_bytes()));
        }
        (t, leaves)
    }

    fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p[i][i % 32] ^= 0x01;
        p
    }

    /// Counts the reads a proof makes, to hold the O(log n) promise.
    struct Counting<'a>(&'a MemoryTree, std::cell::Cell<usize>);
    impl NodeSource for Counting<'_> {
        type Error = std::convert::Infallible;
        fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
            self.1.set(self.1.get() + 1);
            assert!(
                (index + 1) << level <= self.0.size(),
                "read outside the tree: ({level}, {index})"
            );
            self.0.node(level, index)
        }
    }

    #[test]
    fn roots_match_the_naive_definition() {
        let (t, leaves) = tree(260);
        for n in 0..=260u64 {
            assert_eq!(t.root_at(n), naive_root(&leaves[..n as usize]), "size {n}");
        }
    }

    #[test]
    fn inclusion_every_leaf_every_size() {
        let (t, leaves) = tree(200);
        for n in 1..=200u64 {
            let r = naive_root(&leaves[..n as usize]);
            for m in 0..n {
                let c = Counting(&t, std::cell::Cell::new(0));
                let p = inclusion_proof(&c, m, n).unwrap();
                assert!(c.1.get() <= 2 * 64, "too many reads");
                verify_inclusion(&leaves[m as usize], m, n, &p, &r).unwrap();
                // Tampering with anything is refused.
                for i in 0..p.len() {
                    assert!(verify_inclusion(&leaves[m as usize], m, n, &flip(&p, i), &r).is_err());
                }
                if !p.is_empty() {
                    assert!(verify_inclusion(&leaves[m as usize], m, n, &p[1..], &r).is_err());
                }
                let mut longer = p.clone();
                longer.push([7; 32]);
                assert!(verify_inclusion(&leaves[m as usize], m, n, &longer, &r).is_err());
                let other = (m + 1) % n;
                if other != m {
                    assert!(verify_inclusion(&leaves[m as usize], other, n, &p, &r).is_err());
                }
                // The proof is for size n: against the head of size n + 1 it
                // fails. (With the head of size n it may pass for n + 1:
                // PATH(0, D[3]) is also a valid PATH(0, D[4]) in shape, where
                // the third leaf stands for the subtree of two; only the
                // head binds the size.)
                if n < 200 {
                    let r1 = naive_root(&leaves[..n as usize + 1]);
                    assert!(verify_inclusion(&leaves[m as usize], m, n + 1, &p, &r1).is_err());
                }
                assert!(verify_inclusion(&[9; 32], m, n, &p, &r).is_err());
            }
            assert!(inclusion_proof(&t, n, n).is_err());
        }
    }

    #[test]
    fn consistency_every_pair_of_sizes() {
        let (t, leaves) = tree(200);
        let roots: Vec<Hash> = (0..=200).map(|n| naive_root(&leaves[..n])).collect();
        for n in 1..=200u64 {
            for m in 1..=n {
                let c = Counting(&t, std::cell::Cell::new(0));
                let p = consistency_proof(&c, m, n).unwrap();
                assert!(c.1.get() <= 2 * 64, "too many reads");
                let (rm, rn) = (&roots[m as usize], &roots[n as usize]);
                verify_consistency(m, n, rm, rn, &p).unwrap();
                for i in 0..p.len() {
                    assert!(verify_consistency(m, n, rm, rn, &flip(&p, i)).is_err());
                }
                if !p.is_empty() {
                    assert!(verify_consistency(m, n, rm, rn, &p[..p.len() - 1]).is_err());
                }
                let mut longer = p.clone();
                longer.push([7; 32]);
                assert!(verify_consistency(m, n, rm, rn, &longer).is_err());
                if m < n {
                    // A different history of the same size is not consistent.
                    assert!(verify_consistency(m, n, &[3; 32], rn, &p).is_err());
                    assert!(verify_consistency(m, n, rm, &[3; 32], &p).is_err());
                    assert!(verify_consistency(m + 1, n, rm, rn, &p).is_err());
                    assert!(verify_consistency(n, m, rn, rm, &p).is_err());
                }
            }
        }
        assert!(consistency_proof(&t, 0, 5).is_err());
        assert!(consistency_proof(&t, 6, 5).is_err());
    }

    #[test]
    fn appends_write_exactly_the_complete_subtrees() {
        let (t, leaves) = tree(37);
        for (level, nodes) in t.levels().iter().enumerate() {
            let width = 1usize << level;
            assert_eq!(nodes.len(), leaves.len() / width, "level {level}");
            for (i, h) in nodes.iter().enumerate() {
                assert_eq!(*h, naive_root(&leaves[i * width..(i + 1) * width]));
            }
        }
    }
}

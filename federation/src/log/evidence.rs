//! The proof of a split view: two checkpoints signed by the log key that
//! cannot both be heads of one append-only log, in a form anyone holding
//! the log's verifier key can check without trusting whoever found it.
//!
//! - Equal sizes: the roots differ. Nothing more is needed.
//! - Sizes `m < n`: a *prefix path* — an RFC 9162 §2.1.4 consistency proof
//!   from `m` to `n` whose first hash is always present (RFC 9162 prepends
//!   the old root when `m` is a power of two; here that hash is the true
//!   subtree `[0, m)` of the larger tree instead). Evaluated as RFC 9162
//!   §2.1.4.2 evaluates a proof, it yields two roots: the larger tree's and
//!   its prefix of `m` leaves. When the first is the larger checkpoint's
//!   root, the hashes are the larger tree's own (collision resistance), so
//!   the second is the only head of `m` leaves consistent with it; when
//!   that differs from the smaller checkpoint's root, the log signed two
//!   inconsistent heads.

use caliopen_tlog::merkle::MAX_PROOF_LEN;
use caliopen_tlog::{empty_root, Checkpoint, Hash, Verifier};
use thiserror::Error;

/// Why a split-view proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvidenceError {
    /// A note is not a checkpoint validly signed by the log key.
    #[error("note {0} is not a checkpoint signed by the log key: {1}")]
    BadNote(u8, String),
    /// The two checkpoints are consistent (or the same): no split.
    #[error("the two checkpoints are consistent")]
    Consistent,
    /// The path is malformed or does not lead to the larger root.
    #[error("the proof does not hold: {0}")]
    BadProof(&'static str),
}

/// Evaluates a prefix path from `m` to `n` leaves (`0 < m < n`): returns
/// (root of the first `m` leaves, root of the `n` leaves) that the path
/// implies. RFC 9162 §2.1.4.2 steps 3 to 7, with `path[0]` as seed.
pub(crate) fn evaluate_prefix_path(
    m: u64,
    n: u64,
    path: &[Hash],
) -> Result<(Hash, Hash), &'static str> {
    if m == 0 || m >= n {
        return Err("a prefix path needs 0 < m < n");
    }
    if n > caliopen_tlog::merkle::MAX_TREE_SIZE {
        return Err("tree size too large");
    }
    if path.is_empty() {
        return Err("empty path");
    }
    if path.len() > MAX_PROOF_LEN + 1 {
        return Err("path too long");
    }
    caliopen_tlog::merkle::prefix_path_roots(m, n, path)
        .map_err(|_| "path length does not fit the sizes")
}

/// What a prefix path says about two tree heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathVerdict {
    /// The smaller head is a prefix of the larger: consistent.
    Consistent,
    /// The path is the larger tree's and shows another prefix head: a
    /// split view.
    Inconsistent,
    /// The path is not the larger tree's (malformed, or leads elsewhere):
    /// it proves nothing either way.
    Bogus(&'static str),
}

/// Judges heads `(m, root_m)` and `(n, root_n)`, `m < n`, by `path`. An
/// empty smaller tree needs no path (its head is the empty root or a lie).
pub(crate) fn judge(m: u64, root_m: &Hash, n: u64, root_n: &Hash, path: &[Hash]) -> PathVerdict {
    if m == 0 {
        return if *root_m == empty_root() {
            PathVerdict::Consistent
        } else {
            PathVerdict::Inconsistent
        };
    }
    match evaluate_prefix_path(m, n, path) {
        Err(e) => PathVerdict::Bogus(e),
        Ok((_, sr)) if sr != *root_n => PathVerdict::Bogus("does not lead to the larger root"),
        Ok((fr, _)) if fr == *root_m => PathVerdict::Consistent,
        Ok(_) => PathVerdict::Inconsistent,
    }
}

/// A split view: both signed notes as received, and the path that shows
/// them inconsistent (empty for equal sizes). `first` is the checkpoint
/// this member held, `second` the one that contradicted it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitView {
    /// The note held (signed checkpoint).
    pub first: String,
    /// The contradicting note.
    pub second: String,
    /// The prefix path from the smaller to the larger size (hex in JSON).
    #[serde(with = "hex_hashes")]
    pub proof: Vec<Hash>,
    /// Where the second note came from: a member id, or `None` for the
    /// association.
    pub source: Option<String>,
    /// Unix seconds when this member found (or was shown) it.
    pub detected_at: i64,
}

impl SplitView {
    /// Checks the proof with the log's key: both notes are checkpoints the
    /// key signed, and they are inconsistent. Returns them, smaller first.
    pub fn verify(&self, log_key: &Verifier) -> Result<(Checkpoint, Checkpoint), EvidenceError> {
        let (a, _) = Checkpoint::open(self.first.as_bytes(), log_key)
            .map_err(|e| EvidenceError::BadNote(1, e.to_string()))?;
        let (b, _) = Checkpoint::open(self.second.as_bytes(), log_key)
            .map_err(|e| EvidenceError::BadNote(2, e.to_string()))?;
        let (small, large) = if a.size <= b.size { (a, b) } else { (b, a) };
        if small.size == large.size {
            if !self.proof.is_empty() {
                return Err(EvidenceError::BadProof("equal sizes need no path"));
            }
            return if small.root == large.root {
                Err(EvidenceError::Consistent)
            } else {
                Ok((small, large))
            };
        }
        match judge(
            small.size,
            &small.root,
            large.size,
            &large.root,
            &self.proof,
        ) {
            PathVerdict::Inconsistent => Ok((small, large)),
            PathVerdict::Consistent => Err(EvidenceError::Consistent),
            PathVerdict::Bogus(e) => Err(EvidenceError::BadProof(e)),
        }
    }
}

mod hex_hashes {
    use caliopen_tlog::Hash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let v: Vec<String> = Vec::deserialize(d)?;
        v.iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| Hash::try_from(b.as_slice()).ok())
                    .ok_or_else(|| serde::de::Error::custom("not a 32-byte hex hash"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caliopen_tlog::{consistency_proof, root, verify_consistency, MemoryTree};

    /// The prefix path of the tree: the RFC 9162 proof, with the subtree
    /// `[0, m)` first when `m` is a power of two.
    fn path(t: &MemoryTree, m: u64, n: u64) -> Vec<Hash> {
        let mut p = consistency_proof(t, m, n).unwrap();
        if m.is_power_of_two() {
            p.insert(0, root(t, m).unwrap());
        }
        p
    }

    #[test]
    fn prefix_paths_agree_with_rfc_9162_for_every_size_pair() {
        let mut t = MemoryTree::new();
        for i in 0..70u64 {
            t.push_entry(&i.to_be_bytes());
        }
        for n in 2..=70 {
            for m in 1..n {
                let p = path(&t, m, n);
                let (fr, sr) = evaluate_prefix_path(m, n, &p).unwrap();
                assert_eq!(fr, t.root_at(m), "{m} {n}");
                assert_eq!(sr, t.root_at(n), "{m} {n}");
                let rfc = consistency_proof(&t, m, n).unwrap();
                verify_consistency(m, n, &t.root_at(m), &t.root_at(n), &rfc).unwrap();
                assert_eq!(
                    judge(m, &t.root_at(m), n, &t.root_at(n), &p),
                    PathVerdict::Consistent
                );
            }
        }
    }

    #[test]
    fn a_fork_is_judged_inconsistent_and_a_lie_bogus() {
        let mut a = MemoryTree::new();
        let mut b = MemoryTree::new();
        for i in 0..40u64 {
            a.push_entry(&i.to_be_bytes());
            // b forks at 17.
            b.push_entry(&(if i == 17 { 999 } else { i }).to_be_bytes());
        }
        for (m, n) in [(20, 40), (32, 40), (18, 33), (18, 20)] {
            // b's smaller head against a's larger tree.
            let p = path(&a, m, n);
            assert_eq!(
                judge(m, &b.root_at(m), n, &a.root_at(n), &p),
                PathVerdict::Inconsistent,
                "{m} {n}"
            );
            // A path that is not a's tree proves nothing.
            let mut bad = p.clone();
            bad[0][0] ^= 1;
            assert!(matches!(
                judge(m, &b.root_at(m), n, &a.root_at(n), &bad),
                PathVerdict::Bogus(_)
            ));
            assert!(matches!(
                judge(m, &b.root_at(m), n, &a.root_at(n), &p[1..]),
                PathVerdict::Bogus(_)
            ));
        }
        // Up to the fork (17 leaves in common), they agree.
        for m in [10, 16, 17] {
            let p = path(&a, m, 40);
            assert_eq!(
                judge(m, &b.root_at(m), 40, &a.root_at(40), &p),
                PathVerdict::Consistent
            );
        }
        assert!(evaluate_prefix_path(0, 4, &[[0; 32]]).is_err());
        assert!(evaluate_prefix_path(4, 4, &[[0; 32]]).is_err());
        assert!(evaluate_prefix_path(3, 4, &[]).is_err());
        assert_eq!(
            judge(0, &empty_root(), 5, &a.root_at(5), &[]),
            PathVerdict::Consistent
        );
        assert_eq!(
            judge(0, &[1; 32], 5, &a.root_at(5), &[]),
            PathVerdict::Inconsistent
        );
    }
}

//! Is a peer's certificate in the membership log? (issue 18)
//!
//! A labelled certificate is trusted only once the member has seen it in the
//! association's log: the directory names, next to each certificate it lists,
//! the index of the log entry that issued it (`cert_log_index`); the member
//! fetches that entry and its inclusion proof from the association's tiles,
//! and checks that the entry is an issuance or renewal of exactly this
//! certificate and that the proof leads to the root of the checkpoint it
//! verified. A certificate the CA key signed but the log does not carry
//! (a label issued in secret) fails, and the peer is refused like a revoked
//! one.
//!
//! The decision is [`judge`], plain; [`super::LogMonitor::check_certificate`]
//! fetches what it needs and remembers the certificates that passed (once
//! included in a tree this member verified, a certificate stays included
//! in every later tree, since every later tree is checked to extend it).

use caliopen_tlog::{leaf_hash, verify_inclusion, Entry, EntryKind, Hash};
use thiserror::Error;

/// Why a certificate is not shown to be in the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InclusionError {
    /// The directory names no log entry for the certificate.
    #[error("the directory names no membership-log entry for this certificate")]
    NoIndex,
    /// No checkpoint of the log is held yet.
    #[error("no membership-log checkpoint is held yet")]
    NoCheckpoint,
    /// The entry lies beyond the newest checkpoint verified, even after
    /// asking the association for a fresher one.
    #[error("log entry {index} is beyond the checkpoint held ({size} entries)")]
    NotCovered {
        /// The entry the directory names.
        index: u64,
        /// The size of the tree held.
        size: u64,
    },
    /// The entry or its proof could not be had (the association is not
    /// reachable, say). Retried at the next connection.
    #[error("log entry {index} could not be checked: {why}")]
    Unverifiable {
        /// The entry the directory names.
        index: u64,
        /// What went wrong.
        why: String,
    },
    /// The proof does not lead from that entry to the root held.
    #[error("log entry {index}: the inclusion proof does not lead to the checkpoint held")]
    BadProof {
        /// The entry the directory names.
        index: u64,
    },
    /// The entry at that index is not an issuance of this certificate.
    #[error("log entry {index} is {what}, not this certificate")]
    OtherEntry {
        /// The entry the directory names.
        index: u64,
        /// What the entry is.
        what: String,
    },
}

impl InclusionError {
    /// True when the log shows the certificate is not where the directory
    /// says: the entry at that index is proven in the tree and is something
    /// else. (A bad proof proves nothing: tiles are not signed.)
    pub fn is_proven(&self) -> bool {
        matches!(self, Self::OtherEntry { .. })
    }
}

/// Judges entry `index` (its bytes `entry` and inclusion proof `proof`) of
/// the tree `(size, root)` against the certificate of DER SHA-256 `sha256`.
pub(crate) fn judge(
    sha256: &[u8],
    index: u64,
    size: u64,
    root: &Hash,
    entry: &[u8],
    proof: &[Hash],
) -> Result<(), InclusionError> {
    verify_inclusion(&leaf_hash(entry), index, size, proof, root)
        .map_err(|_| InclusionError::BadProof { index })?;
    let e = Entry::decode(entry).map_err(|e| InclusionError::OtherEntry {
        index,
        what: e.to_string(),
    })?;
    match &e.kind {
        EntryKind::Issuance { cert_der } | EntryKind::Renewal { cert_der, .. } => {
            let got = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
            if got.as_ref() == sha256 {
                Ok(())
            } else {
                Err(InclusionError::OtherEntry {
                    index,
                    what: format!("the {} of another certificate", e.kind.name()),
                })
            }
        }
        other => Err(InclusionError::OtherEntry {
            index,
            what: format!("a {} entry", other.name()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caliopen_tlog::{inclusion_proof, MemoryTree};

    fn issuance(der: &[u8]) -> Vec<u8> {
        Entry {
            time: 1,
            kind: EntryKind::Issuance {
                cert_der: der.to_vec(),
            },
        }
        .encode()
        .expect("entry")
    }

    fn sha(b: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn an_entry_is_judged_by_its_proof_and_its_certificate() {
        let mut tree = MemoryTree::new();
        let mut entries = Vec::new();
        for i in 0..300u32 {
            let e = if i % 7 == 3 {
                Entry {
                    time: 2,
                    kind: EntryKind::Revocation {
                        serial: vec![1, 2],
                        reason: "keyCompromise".into(),
                    },
                }
                .encode()
                .expect("entry")
            } else {
                issuance(format!("cert {i}").as_bytes())
            };
            tree.push_entry(&e);
            entries.push(e);
        }
        for size in [1u64, 2, 3, 255, 256, 257, 300] {
            let root = tree.root_at(size);
            for index in [0, size / 2, size - 1] {
                let i = index as usize;
                let proof = inclusion_proof(&tree, index, size).expect("proof");
                let cert = sha(format!("cert {index}").as_bytes());
                let r = judge(&cert, index, size, &root, &entries[i], &proof);
                if index % 7 == 3 {
                    assert!(
                        matches!(r, Err(InclusionError::OtherEntry { .. })),
                        "{size} {index} {r:?}"
                    );
                } else {
                    assert_eq!(r, Ok(()), "{size} {index}");
                    // Another certificate at the same place is refused …
                    let r = judge(&sha(b"other"), index, size, &root, &entries[i], &proof);
                    assert!(matches!(r, Err(InclusionError::OtherEntry { .. })));
                    assert!(r.unwrap_err().is_proven());
                }
                // … and so is an entry the tree does not hold there.
                let forged = issuance(format!("cert {index}").as_bytes().repeat(2).as_slice());
                let r = judge(&sha(&forged), index, size, &root, &forged, &proof);
                assert_eq!(r, Err(InclusionError::BadProof { index }));
                if size > 1 {
                    let wrong = tree.root_at(size - 1);
                    let r = judge(
                        &cert,
                        index.min(size - 2),
                        size,
                        &wrong,
                        &entries[i],
                        &proof,
                    );
                    assert!(r.is_err(), "{size} {index}: wrong root accepted");
                }
            }
        }
    }
}

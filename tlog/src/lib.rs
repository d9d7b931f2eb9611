//! The Caliopen membership transparency log (`caliopen-tlog`): RFC 6962
//! Merkle tree, C2SP signed notes and checkpoints, cosignatures, tiles, and
//! the log's entries (issue 18).
//!
//! Everything here is plain functions over bytes: no storage, no clock, no
//! network. It is its own crate so that both sides share one code without
//! the member side depending on the association's: the association
//! (`caliopen-ca`, which re-exports this crate as `caliopen_ca::tlog`) keeps
//! the entries and the hashes of complete subtrees in its state database
//! (`ca-tools/src/store.rs`) and signs a checkpoint after every change
//! (`ca-tools/src/authority/log.rs`); members and witnesses
//! (`caliopen-federation`'s `log` module, the instance) verify with the
//! same code.
//!
//! - [`merkle`]: leaf and node hashing, tree heads, inclusion and
//!   consistency proofs from stored hashes, and their verification
//!   (RFC 9162 §2.1).
//! - [`note`]: signed notes with Ed25519 keys (c2sp.org/signed-note).
//! - [`checkpoint`]: the tree head as a note (c2sp.org/tlog-checkpoint).
//! - [`cosignature`]: timestamped checkpoint signatures
//!   (c2sp.org/tlog-cosignature), the log's heartbeat.
//! - [`tiles`]: the log as C2SP tlog-tiles (paths, hash tiles, entry
//!   bundles) and a client-side tile set to compute heads and proofs from.
//! - [`entry`]: what one log entry records and its encoding.
//! - [`witness`]: the `add-checkpoint` request of c2sp.org/tlog-witness.

#![forbid(unsafe_code)]

pub mod base64;
pub mod checkpoint;
pub mod cosignature;
pub mod entry;
pub mod merkle;
pub mod note;
pub mod tiles;
pub mod witness;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use cosignature::{open_timestamped, sign_timestamped, CosignatureVerifier};
pub use entry::{Entry, EntryError, EntryKind};
pub use merkle::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, root, verify_consistency,
    verify_inclusion, Hash, MemoryTree, NodeSource, ProofError, ProveError,
};
pub use note::{Note, NoteError, NoteSignature, Signer, Verifier};
pub use tiles::{Tile, TileKind, TilePathError, TileSet};

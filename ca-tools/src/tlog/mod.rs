//! The membership transparency log: RFC 6962 Merkle tree, C2SP signed notes
//! and checkpoints, and the log's entries (issue 18).
//!
//! Everything here is plain functions over bytes: no storage, no clock. The
//! association keeps the entries and the hashes of complete subtrees in its
//! state database (`store.rs`) and signs a checkpoint after every change
//! (`authority/log.rs`); members and witnesses will verify with the same code.
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

//! Member side of the Caliopen mesh: trust store, verification policy, QUIC
//! endpoint, framing, peer RPCs, gossip and outbox (DESIGN.md §2–4).
//!
//! The modules are private; what other crates use is listed once below.
//! [`wire`] (the frame codec) and [`witness`] (a membership-log witness)
//! are namespaces of their own; [`internal`] holds entry points for
//! fuzzing and tests only.
#![forbid(unsafe_code)]

mod association;
mod journal;
mod log;
mod node;
mod outbox;
mod renewal;
mod tls;
mod trust;
pub mod wire;

pub use association::AssociationLink;
pub use journal::{Journal, JournalError};
pub use log::{
    EvidenceError, HttpsTiles, InclusionError, Leaf, LogChange, LogError, LogKey, LogMonitor,
    LogStats, Offer, ProofSource, SplitView, STALE_AFTER,
};
pub use node::{
    request_on, version_lt, BoxFuture, HandlerError, MeshConfig, MeshError, MeshHandler, MeshNode,
    MeshStats,
};
pub use outbox::{Durability, Outbox, OutboxError, OutboxEvent, RetryPolicy};
pub use renewal::{IdentityFiles, Renewer};
pub use tls::IdentitySlot;
pub use trust::{default_accepted_charters, PeerIdentity, Refusal, TrustError, TrustStore};

/// A membership-log witness (C2SP tlog-witness): the core an instance
/// serves with `[witness] enabled`.
pub mod witness {
    pub use crate::log::witness::{
        load_or_create_key, signed_by_known_log, verifier_key_of, Witness, WitnessPolicy,
        WitnessRefusal, MAX_BODY, SIZE_CONTENT_TYPE,
    };
}

/// Entry points for fuzzing and tests only: not part of the API.
#[doc(hidden)]
pub mod internal {
    pub use crate::journal::internal as journal;
}

//! Member side of the Caliopen mesh: trust store, verification policy, QUIC
//! endpoint, framing, peer RPCs, gossip and outbox (DESIGN.md §2–4).
#![forbid(unsafe_code)]

pub mod association;
pub mod journal;
pub mod log;
pub mod node;
pub mod outbox;
pub mod renewal;
pub mod tls;
pub mod trust;
pub mod wire;

pub use association::AssociationLink;
pub use journal::{Journal, JournalError};
pub use log::{HttpsTiles, LogError, LogKey, LogMonitor, LogStats, Offer, SplitView};
pub use node::{BoxFuture, HandlerError, MeshConfig, MeshError, MeshHandler, MeshNode, MeshStats};
pub use outbox::{Durability, Outbox, OutboxError, OutboxEvent, RetryPolicy};
pub use renewal::{IdentityFiles, Renewer};
pub use tls::IdentitySlot;
pub use trust::{PeerIdentity, Refusal, TrustError, TrustStore};

//! Member side of the Caliopen mesh: trust store, verification policy, QUIC
//! endpoint, framing, peer RPCs, gossip and outbox (DESIGN.md §2–4).
#![forbid(unsafe_code)]

pub mod trust;
pub mod wire;
pub mod node;
pub mod tls;

pub use node::{BoxFuture, HandlerError, MeshConfig, MeshError, MeshHandler, MeshNode, MeshStats};
pub use tls::IdentitySlot;
pub use trust::{PeerIdentity, Refusal, TrustError, TrustStore};

//! Member side of the Caliopen mesh: trust store, verification policy, QUIC
//! endpoint, framing, peer RPCs, gossip and outbox (DESIGN.md §2–4).
//!
//! Not built yet: this crate is the place the mesh issue (#3) fills. It holds
//! no code so that nothing here pretends to work.
#![forbid(unsafe_code)]

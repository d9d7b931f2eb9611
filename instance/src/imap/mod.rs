//! IMAP4rev1 (RFC 3501) with the extensions mail clients use, over the
//! mail core: every mailbox, UID and keyword is the model's, so that a
//! flag set here is the flag `caliopen mail list` and the client API show.
//!
//! - [`wire`]: bytes to client messages, with literal and line limits
//!   (imap-codec's fragmentizer and command grammar);
//! - [`session`]: one connection's state and commands;
//! - [`render`]: FETCH data (the privacy trace header, ENVELOPE,
//!   BODYSTRUCTURE, sections) from the stored bytes;
//! - [`server`]: the listener, TLS, IDLE wake-ups and timeouts.

pub(crate) mod cache;
pub(crate) mod listext;
pub(crate) mod render;
pub(crate) mod server;
pub mod session;
pub mod wire;

pub use server::{ImapConfig, ImapListener};

#[cfg(test)]
mod tests;

//! The Caliopen instance daemon (DESIGN.md §2, §5).
//!
//! The mail model (`mail`) and its store (`store`: sled indexes, body
//! segments, group commit), the router every front end hands mail to
//! (`delivery`), the front ends — SMTP (`smtp`), IMAP (`imap`), the web
//! client (`web`), the client API (`api`) — the mesh side when the instance
//! holds a label (`mesh`), outbound SMTP through a relay or MX with MTA-STS
//! (`outbound`, `mta_sts`), sender checks and the resolver (`sender_auth`), files written whole (`files`), DKIM
//! signing (`dkim`), what the operator publishes (`publish`), the TLS
//! certificate of every listener (`certs`), passwords (`login`), the
//! privacy index (`privacy`), bounces (`dsn`), the admin API (`admin`),
//! health and metrics (`metrics`), limits (`limits`) and the daemon
//! itself (`daemon`). See docs/ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
mod api;
mod certs;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod dkim;
mod dsn;
pub mod files;
pub mod handover;
pub mod imap;
pub mod limits;
pub mod login;
pub mod mail;
pub mod mesh;
mod metrics;
pub mod mta_sts;
pub mod outbound;
pub mod privacy;
pub mod publish;
pub mod report;
pub mod sender_auth;
pub mod setup;
pub mod smtp;
mod srs;
pub mod store;
mod tlsrpt;
pub mod transfer;
pub mod web;

/// What the unit tests of several modules share.
#[cfg(test)]
mod test_util {
    /// A two-worker runtime for a test's async part.
    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }
}

//! The Caliopen instance daemon (DESIGN.md §2, §5).
//!
//! Built: configuration (`config`), durable storage with group commit
//! (`store`), the SMTP session state machine and listeners (`smtp`), the
//! mesh side when the instance holds a label (`mesh`), bounces (`dsn`), the
//! local admin API (`admin`), outbound SMTP through a relay (`outbound`),
//! health and metrics (`metrics`) and the daemon itself (`daemon`). Not
//! built yet (issue #4 continues): direct MX delivery, DKIM/SPF/DMARC.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod certs;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod dkim;
pub mod dsn;
pub mod imap;
pub mod limits;
pub mod login;
pub mod mail;
pub mod mesh;
pub mod metrics;
pub mod mta_sts;
pub mod outbound;
pub mod privacy;
pub mod publish;
pub mod smtp;
pub mod store;
pub mod web;

/// What the unit tests of several modules share.
#[cfg(test)]
mod test_util {
    /// A two-worker runtime for a test's async part.
    pub fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }
}

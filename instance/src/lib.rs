//! The Caliopen instance daemon (DESIGN.md §2, §5).
//!
//! Built so far: the durable store (`store`) and the SMTP session state
//! machine (`smtp::session`). The listeners, router, SMTP client, admin API
//! and command-line tool come next (issue #4).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod daemon;
pub mod dsn;
pub mod mesh;
pub mod smtp;
pub mod store;

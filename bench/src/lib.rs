//! The Caliopen benchmark harness (issue #7): SMTP acceptance and delivery
//! against Postfix, IMAP against Dovecot, mesh relay, mesh scale, storage scale, and the physical
//! bounds (the disk's fsync rate, loopback TCP throughput), all measured in
//! one run and written as JSON plus a Markdown table.
//!
//! Every figure in a report is measured by the run that writes it.
#![forbid(unsafe_code)]

pub mod imap;
pub mod imap_bench;
pub mod login;
pub mod mailbox;
pub mod mesh;
pub mod outbound;
pub mod report;
pub mod smtp;
pub mod storage;
pub mod sys;
pub mod tlog_bench;
pub mod transfer;
pub mod web;

pub use report::{percentile, Report, Row};

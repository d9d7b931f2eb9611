//! The Caliopen association's certificate authority (`caliopen-ca`).
//!
//! The association labels member instances by issuing them X.509 certificates
//! that carry the Caliopen label extension, withdraws labels by revocation
//! (CRL), publishes a signed member directory, and runs a service from which
//! members fetch and watch the CRL and directory and renew their certificates
//! (DESIGN.md §3).
//!
//! State lives in one directory: `ca.pem` (root, public), `ca.key.pem` (root
//! key, 0600, refused when others can read it), `log.key.pem` (the
//! membership log's Ed25519 key, 0600) and `log.pub` (its verifier key),
//! `charter.toml`, `state/` (sled, with the membership log: [`tlog`]),
//! `audit.log` (JSON lines, every issuance and revocation), and while
//! `serve` runs, `admin.sock`, through which the command-line tool reaches
//! the running authority.
#![forbid(unsafe_code)]

mod admin;
mod authority;
mod csr;
mod error;
#[doc(hidden)]
pub mod internal;
mod keyfile;
mod limits;
mod log_http;
mod member_cert;
mod service;
mod store;
pub mod witnessing;

/// The membership log's formats and proofs: the `caliopen-tlog` crate,
/// shared with the member side, under its old path.
pub use caliopen_tlog as tlog;

pub use admin::{
    connect as connect_admin, status_to_error, witness_op, witness_response, AdminService,
};
pub use authority::{
    default_log_origin, files, parse_serial, Authority, Issued, ListEntry, LogEntryInfo,
    LogVerified, Published, RevokeOutcome, RevokeTarget, Settings, SignRequest,
    DEFAULT_CHECKPOINT_INTERVAL_SECS, MAX_LISTED_PER_MEMBER, MAX_WITNESSES, MAX_WITNESS_NAME_LEN,
};
pub use csr::{normalize_domain, parse_csr, CsrInfo, MAX_CSR_LEN};
pub use error::{CaError, Result};
pub use log_http::{CACHE_CHECKPOINT, CACHE_IMMUTABLE, CACHE_PARTIAL, LOG_PREFIX};
pub use member_cert::key_identifier;
pub use service::{
    service_identity, AssociationService, BoundService, ServiceConfig, MAX_WATCHERS,
    REFRESH_INTERVAL,
};
pub use store::{CertRecord, Handover, Revocation, Status, Supersession, WitnessRecord};

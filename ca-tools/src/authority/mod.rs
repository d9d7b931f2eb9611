//! The association's certificate authority: one directory on disk, one
//! process at a time (sled), every operation durable before it returns.
//!
//! This module holds the [`Authority`] type itself, its [`Settings`], the
//! file names of the association directory ([`files`]), what it publishes
//! ([`Published`]), its accessors and the helpers its jobs share. Each job
//! is a file of its own, all of them `impl Authority` blocks:
//!
//! - `open`: making a new association and opening an existing one;
//! - `issue`: issuing a member certificate from a CSR (`sign`), and
//!   superseding a member's older certificates;
//! - `renew`: recognising a member by its TLS certificate and renewing it;
//! - `revoke`: revocation by serial or domain;
//! - `crl`: making and signing the CRL;
//! - `directory`: making and signing the member directory;
//! - `membership`: the other membership changes (baseline, handover) and
//!   the listing;
//! - `publish`: what is published, and reissuing it when it is due;
//! - `log`: the membership log's key, its creation, appends and the
//!   checkpoint heartbeat;
//! - `log_read`: reading and verifying the membership log;
//! - `witnesses`: the log's witnesses and the cosignatures they give;
//! - `audit`: the append-only audit log.

mod audit;
mod crl;
mod directory;
mod issue;
mod log;
mod log_read;
mod membership;
mod open;
mod publish;
mod renew;
mod revoke;
mod witnesses;

pub use issue::{Issued, SignRequest};
pub use log::default_log_origin;
pub use log_read::{LogEntryInfo, LogVerified};
pub use membership::ListEntry;
pub use revoke::{parse_serial, RevokeOutcome, RevokeTarget};
pub use witnesses::{MAX_WITNESSES, MAX_WITNESS_NAME_LEN};

use crate::store::Store;
use crate::tlog::Signer;
use caliopen_charter::Charter;
use rcgen::KeyPair;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;
use witnesses::Cosigned;

/// File names inside the association directory.
pub mod files {
    /// Root certificate (public).
    pub const CA_CERT: &str = "ca.pem";
    /// Root private key (0600).
    pub const CA_KEY: &str = "ca.key.pem";
    /// The charter accepted by `sign`.
    pub const CHARTER: &str = "charter.toml";
    /// sled state database.
    pub const STATE: &str = "state";
    /// Append-only audit log (JSON lines, 0600).
    pub const AUDIT_LOG: &str = "audit.log";
    /// Admin socket of a running `serve` (0600).
    pub const ADMIN_SOCKET: &str = "admin.sock";
    /// The membership log's Ed25519 signing key, PKCS#8 PEM (0600).
    pub const LOG_KEY: &str = "log.key.pem";
    /// The log's verifier key, signed-note format (public).
    pub const LOG_PUB: &str = "log.pub";
}

/// Tunables; the defaults are what `caliopen-ca` uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of a CRL (its `nextUpdate` − `thisUpdate`).
    pub crl_validity: Duration,
    /// Lifetime of a signed directory.
    pub directory_validity: Duration,
    /// Default member certificate lifetime in days.
    pub default_days: u32,
    /// Longest member certificate lifetime in days.
    pub max_days: u32,
    /// How long a member's previous certificate stays listed in the directory
    /// once a newer one is issued, so that peers that cached the directory or
    /// the member still using it keep working meanwhile. Every certificate of
    /// the member older than that previous one leaves the directory at once.
    pub superseded_overlap: Duration,
    /// Longest time between two signatures of the log's checkpoint: when
    /// nothing changed for that long, [`Authority::heartbeat_if_due`]
    /// re-signs the same tree head with a fresh timestamp, so a member can
    /// tell how stale the checkpoint it holds may be (issue 18).
    pub checkpoint_interval: Duration,
}

/// Most certificates the directory lists for one member: its current one and
/// the previous one during [`Settings::superseded_overlap`].
pub const MAX_LISTED_PER_MEMBER: usize = 2;

/// Default of [`Settings::checkpoint_interval`] (seconds): a member that
/// heard nothing for a few of these knows it is cut off from the log.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECS: i64 = 60;

/// `next_prune` when no listed certificate is due to leave the directory.
const NO_PRUNE: i64 = i64::MAX;

impl Default for Settings {
    fn default() -> Self {
        Self {
            crl_validity: Duration::days(7),
            directory_validity: Duration::days(7),
            default_days: 30,
            max_days: 397,
            superseded_overlap: Duration::minutes(10),
            checkpoint_interval: Duration::seconds(DEFAULT_CHECKPOINT_INTERVAL_SECS),
        }
    }
}

/// What the association currently publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Number of the current CRL.
    pub crl_number: u64,
    /// The current CRL, DER.
    pub crl_der: Arc<Vec<u8>>,
    /// `nextUpdate` of the current CRL (Unix seconds).
    pub crl_next_update: i64,
    /// Serial of the current directory.
    pub directory_serial: u64,
    /// The current directory, encoded `SignedDirectory`.
    pub directory: Arc<Vec<u8>>,
    /// `valid_until` of the current directory (Unix seconds).
    pub directory_valid_until: i64,
    /// Number of entries in the membership log.
    pub log_size: u64,
    /// The checkpoint to publish (`/log/checkpoint`, `Watch`): the latest
    /// signed one with the witness cosignatures collected for it, or, when
    /// a quorum is set and it has not reached it yet, the latest one that
    /// did (see [`Authority::add_cosignatures`]).
    pub checkpoint: Arc<String>,
    /// The latest signed checkpoint as stored, without witness
    /// cosignatures: what the witnesses are asked to cosign.
    pub log_note: Arc<String>,
}

/// The association's CA, opened on its directory.
pub struct Authority {
    dir: PathBuf,
    store: Store,
    key: KeyPair,
    root_der: Vec<u8>,
    root_pem: String,
    issuer_name_der: Vec<u8>,
    root_key_id: Vec<u8>,
    name: String,
    charter: Charter,
    settings: Settings,
    log_key: Signer,
    write_lock: Mutex<()>,
    published: watch::Sender<Published>,
    /// When the next superseded certificate listed in the current directory
    /// reaches the end of its overlap (Unix seconds; [`NO_PRUNE`]: none).
    next_prune: AtomicI64,
    /// When the published checkpoint was signed (Unix seconds; 0: undated).
    checkpoint_time: AtomicI64,
    /// Witness cosignatures collected (in memory: collected again after a
    /// restart).
    cosigned: Mutex<Cosigned>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

/// Accessors, and the write lock every change takes.
impl Authority {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave sled half-written (each
        // operation flushes at its end), so a poisoned lock is still usable.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The association directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The association's name (root CN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The root's key pair (for the service's own TLS certificate).
    ///
    /// Tests outside this crate reach it through
    /// [`crate::internal::root_key`].
    pub(crate) fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The charter in force.
    pub fn charter(&self) -> &Charter {
        &self.charter
    }

    /// Subscribes to what is published (CRL and directory).
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// What is published now.
    pub fn published(&self) -> Published {
        self.published.borrow().clone()
    }
}

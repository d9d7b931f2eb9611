//! The association's durable state, in sled (`DIR/state/`). Every mutation is
//! flushed (fsync) before the operation reports success.
//!
//! Trees:
//! - `certs`: serial (raw bytes) → [`CertRecord`] as JSON. Every certificate
//!   ever issued; revocation and supersession are fields, records are never
//!   deleted.
//! - `meta`: `crl_number` and `directory_serial` (u64 big-endian, last issued),
//!   `min_software_version` (UTF-8), `current_crl` (DER), `current_directory`
//!   (encoded `SignedDirectory`); for the membership log `log_size` (u64
//!   big-endian), `log_checkpoint` (the latest signed checkpoint, UTF-8, dated
//!   by the log's `cosignature/v1` and replaced by each heartbeat) and
//!   `log_origin` (UTF-8); `handover/<member id>` → [`Handover`] (JSON) for
//!   each member that closed and handed over to its successor;
//!   `witness/<name>` → [`WitnessRecord`] (JSON) for each witness of the log
//!   and `witness_quorum` (u64 big-endian) the number of their cosignatures
//!   a member needs on a checkpoint that grows the tree.
//! - `log_entries`: index (u64 big-endian) → entry bytes ([`crate::tlog::Entry`]).
//! - `log_nodes`: level (u8) ‖ index (u64 big-endian) → the 32-byte hash of
//!   that complete subtree (level 0: leaf hashes), so that tree heads and
//!   proofs read O(log n) keys.
//! - `log_certs`: SHA-256 of a certificate's DER → index (u64 big-endian) of
//!   the issuance or renewal entry that carries it, written in the same
//!   transaction as the entry; the directory names it next to each listed
//!   certificate so that members can check the certificate is in the log.
//!
//! A membership change and its log entries, the new hashes, the log size and
//! the checkpoint signed over them are written in one sled transaction
//! ([`Store::commit_logged`]): no state holds a change its log lacks.

use crate::error::{CaError, Result};
use crate::tlog::{self, Hash, NodeSource};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use std::collections::HashMap;
use std::path::Path;

/// A revocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocation {
    /// Unix seconds.
    pub at: i64,
    /// RFC 5280 reason name (`keyCompromise`, …).
    pub reason: String,
}

/// A certificate replaced by a newer one of the same member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Supersession {
    /// When the newer certificate was issued (Unix seconds).
    pub at: i64,
    /// Serial of the newer certificate.
    pub by: String,
    /// Until when the directory still lists this certificate (Unix seconds,
    /// exclusive): the overlap during which peers that cached it keep
    /// accepting it. Only ever lowered, so a pruned certificate never
    /// comes back.
    pub listed_until: i64,
}

/// One issued member certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex of the serial.
    pub serial: String,
    /// The member's identifier.
    pub member_id: String,
    /// Mail domains (SAN dNSName).
    pub domains: Vec<String>,
    /// Mesh endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// Charter version signed.
    pub charter_version: String,
    /// Successor member's domain.
    pub successor: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub sha256: String,
    /// Serial of the certificate this one renewed, if any.
    pub renewed_from: Option<String>,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
    /// Set once a newer certificate of the member replaced this one (absent
    /// in records written before supersession existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Supersession>,
    /// The certificate, PEM.
    pub certificate_pem: String,
}

/// A certificate's standing at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Valid and not revoked.
    Active,
    /// Revoked (whatever its validity).
    Revoked,
    /// Past its validity.
    Expired,
    /// Not valid yet.
    Pending,
    /// Valid and not revoked, but replaced by a newer certificate of the
    /// member and past its overlap: no longer listed, cannot renew.
    Superseded,
}

impl CertRecord {
    /// Standing at `now` (Unix seconds).
    pub fn status(&self, now: i64) -> Status {
        if self.revoked.is_some() {
            Status::Revoked
        } else if now > self.not_after {
            Status::Expired
        } else if now < self.not_before {
            Status::Pending
        } else if self
            .superseded
            .as_ref()
            .is_some_and(|s| now >= s.listed_until)
        {
            Status::Superseded
        } else {
            Status::Active
        }
    }
}

/// Typed access to the sled trees.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: sled::Db,
    certs: sled::Tree,
    meta: sled::Tree,
    log_entries: sled::Tree,
    log_nodes: sled::Tree,
    log_certs: sled::Tree,
}

/// What one logged commit changes besides the log itself.
#[derive(Debug, Default)]
pub(crate) struct Change<'a> {
    /// Certificate records to insert or update (serial, record).
    pub certs: Vec<(Vec<u8>, &'a CertRecord)>,
    /// A new security baseline.
    pub min_software_version: Option<&'a str>,
    /// A member's handover to its successor (the member that closes, what
    /// is recorded).
    pub handover: Option<(&'a str, &'a Handover)>,
}

/// A member that closed and handed its users and domains to its successor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handover {
    /// The successor's member id.
    pub to: String,
    /// The domains the member served then (the successor serves them now).
    pub domains: Vec<String>,
    /// When it was recorded (Unix seconds).
    pub at: i64,
}

/// A witness of the membership log (C2SP tlog-witness) registered by the
/// operator, published in the directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WitnessRecord {
    /// The association's name for it (unique).
    pub name: String,
    /// Its cosignature/v1 verifier key.
    pub vkey: String,
    /// Its submission prefix (`POST <url>/add-checkpoint`).
    pub url: String,
    /// PEM roots its HTTPS certificate must chain to (`None`: the public
    /// web roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// When it was registered (Unix seconds).
    pub added_at: i64,
}

/// `meta` key prefix of witness records (then the witness name).
const K_WITNESS: &[u8] = b"witness/";
/// `meta` key of the witness quorum.
const K_WITNESS_QUORUM: &[u8] = b"witness_quorum";

/// `meta` key prefix of handover records (then the member id).
const K_HANDOVER: &[u8] = b"handover/";

fn handover_key(from: &str) -> Vec<u8> {
    [K_HANDOVER, from.as_bytes()].concat()
}

fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn as_hash(v: &[u8]) -> Result<Hash> {
    v.try_into()
        .map_err(|_| CaError::State("corrupt log hash in the state database".into()))
}

fn as_u64(v: &[u8], what: &str) -> Result<u64> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| CaError::State(format!("corrupt meta counter {what}")))?;
    Ok(u64::from_be_bytes(arr))
}

type TxError = ConflictableTransactionError<CaError>;

/// SHA-256 of the certificate an issuance or renewal entry carries.
fn logged_cert_sha256(entry: &[u8]) -> Option<[u8; 32]> {
    match tlog::Entry::decode(entry).ok()?.kind {
        tlog::EntryKind::Issuance { cert_der } | tlog::EntryKind::Renewal { cert_der, .. } => {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert_der)
                .as_ref()
                .try_into()
                .ok()
        }
        _ => None,
    }
}

/// The log's hashes as seen inside a transaction: those written by it so
/// far, then the committed ones.
struct TxNodes<'a> {
    tree: &'a TransactionalTree,
    fresh: &'a HashMap<(u8, u64), Hash>,
}

impl NodeSource for TxNodes<'_> {
    type Error = TxError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, TxError> {
        if let Some(h) = self.fresh.get(&(level, index)) {
            return Ok(*h);
        }
        match self.tree.get(node_key(level, index))? {
            Some(v) => as_hash(&v).map_err(ConflictableTransactionError::Abort),
            None => Err(ConflictableTransactionError::Abort(CaError::State(
                format!("log hash ({level}, {index}) missing from the state database"),
            ))),
        }
    }
}

impl NodeSource for Store {
    type Error = CaError;
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        match self.log_nodes.get(node_key(level, index))? {
            Some(v) => as_hash(&v),
            None => Err(CaError::State(format!(
                "log hash ({level}, {index}) missing from the state database"
            ))),
        }
    }
}

const K_CRL_NUMBER: &[u8] = b"crl_number";
const K_DIRECTORY_SERIAL: &[u8] = b"directory_serial";
const K_MIN_VERSION: &[u8] = b"min_software_version";
const K_CURRENT_CRL: &[u8] = b"current_crl";
const K_CURRENT_DIRECTORY: &[u8] = b"current_directory";
const K_LOG_SIZE: &[u8] = b"log_size";
const K_LOG_CHECKPOINT: &[u8] = b"log_checkpoint";
const K_LOG_ORIGIN: &[u8] = b"log_origin";

impl Store {
    /// Opens (or creates) the state database. Fails clearly when another
    /// process holds it.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                CaError::State(format!(
                    "state database {} is in use by another process (a running `caliopen-ca serve` \
                     should have answered on its admin socket)",
                    path.display()
                ))
            }
            other => CaError::Db(other),
        })?;
        let certs = db.open_tree("certs")?;
        let meta = db.open_tree("meta")?;
        let log_entries = db.open_tree("log_entries")?;
        let log_nodes = db.open_tree("log_nodes")?;
        let log_certs = db.open_tree("log_certs")?;
        let store = Self {
            db,
            certs,
            meta,
            log_entries,
            log_nodes,
            log_certs,
        };
        store.index_logged_certs()?;
        Ok(store)
    }

    /// Fills `log_certs` from the entries of a log written before it existed
    /// (one atomic batch, so a crash leaves it empty and the next open
    /// starts again). Nothing to do once it is filled: every later entry
    /// writes its own key.
    fn index_logged_certs(&self) -> Result<()> {
        if !self.log_certs.is_empty() || self.log_entries.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for kv in self.log_entries.iter() {
            let (k, v) = kv?;
            if let Some(sha) = logged_cert_sha256(&v) {
                batch.insert(sha.as_slice(), k.to_vec());
            }
        }
        self.log_certs.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Index of the log entry that issued the certificate of DER SHA-256
    /// `sha256`, if the log has one.
    pub(crate) fn log_index_of_cert(&self, sha256: &[u8]) -> Result<Option<u64>> {
        self.log_certs
            .get(sha256)?
            .map(|v| as_u64(&v, "log index of a certificate"))
            .transpose()
    }

    /// Appends `entries` to the log and applies `change`, in one
    /// transaction that also stores the new hashes, the new size and the
    /// checkpoint `sign(size, root)` returns for the new tree head. Returns
    /// the new size and checkpoint. Nothing is written when anything fails.
    pub(crate) fn commit_logged(
        &self,
        change: &Change<'_>,
        entries: &[Vec<u8>],
        sign: &dyn Fn(u64, &Hash) -> Result<String>,
    ) -> Result<(u64, String)> {
        let certs: Vec<(&[u8], Vec<u8>)> = change
            .certs
            .iter()
            .map(|(k, r)| {
                serde_json::to_vec(r)
                    .map(|v| (k.as_slice(), v))
                    .map_err(|e| CaError::State(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let handover = change
            .handover
            .map(|(from, h)| {
                serde_json::to_vec(h)
                    .map(|v| (handover_key(from), v))
                    .map_err(|e| CaError::State(e.to_string()))
            })
            .transpose()?;
        let logged: Vec<Option<[u8; 32]>> = entries.iter().map(|e| logged_cert_sha256(e)).collect();
        let res = (
            &self.certs,
            &self.meta,
            &self.log_entries,
            &self.log_nodes,
            &self.log_certs,
        )
            .transaction(|(t_certs, t_meta, t_entries, t_nodes, t_log_certs)| {
                let mut size = match t_meta.get(K_LOG_SIZE)? {
                    None => 0,
                    Some(v) => {
                        as_u64(&v, "log_size").map_err(ConflictableTransactionError::Abort)?
                    }
                };
                let mut fresh: HashMap<(u8, u64), Hash> = HashMap::new();
                for (e, cert) in entries.iter().zip(&logged) {
                    let src = TxNodes {
                        tree: t_nodes,
                        fresh: &fresh,
                    };
                    let nodes = tlog::merkle::append_nodes(&src, size, tlog::leaf_hash(e))?;
                    for (level, index, h) in nodes {
                        t_nodes.insert(&node_key(level, index), &h)?;
                        fresh.insert((level, index), h);
                    }
                    t_entries.insert(&size.to_be_bytes(), e.as_slice())?;
                    if let Some(sha) = cert {
                        t_log_certs.insert(sha.as_slice(), &size.to_be_bytes())?;
                    }
                    size += 1;
                }
                let root = tlog::root(
                    &TxNodes {
                        tree: t_nodes,
                        fresh: &fresh,
                    },
                    size,
                )?;
                let checkpoint = sign(size, &root).map_err(ConflictableTransactionError::Abort)?;
                t_meta.insert(K_LOG_SIZE, &size.to_be_bytes())?;
                t_meta.insert(K_LOG_CHECKPOINT, checkpoint.as_bytes())?;
                for (k, v) in &certs {
                    t_certs.insert(*k, v.as_slice())?;
                }
                if let Some(v) = change.min_software_version {
                    t_meta.insert(K_MIN_VERSION, v.as_bytes())?;
                }
                if let Some((k, v)) = &handover {
                    t_meta.insert(k.as_slice(), v.as_slice())?;
                }
                Ok((size, checkpoint))
            });
        res.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => CaError::Db(e),
        })
    }

    /// Number of log entries.
    pub(crate) fn log_size(&self) -> Result<u64> {
        self.get_u64(K_LOG_SIZE)
    }

    /// The latest signed checkpoint, if one was ever signed.
    pub(crate) fn log_checkpoint(&self) -> Result<Option<String>> {
        self.meta
            .get(K_LOG_CHECKPOINT)?
            .map(|v| {
                String::from_utf8(v.to_vec())
                    .map_err(|_| CaError::State("corrupt log checkpoint".into()))
            })
            .transpose()
    }

    /// Replaces the latest checkpoint by `new` (a re-signed one for the same
    /// tree head: the heartbeat) if it is still `old`, and flushes. Returns
    /// false, writing nothing, when a commit changed it meanwhile.
    pub(crate) fn replace_checkpoint(&self, old: &str, new: &str) -> Result<bool> {
        let swapped = self
            .meta
            .compare_and_swap(K_LOG_CHECKPOINT, Some(old.as_bytes()), Some(new.as_bytes()))?
            .is_ok();
        if swapped {
            self.db.flush()?;
        }
        Ok(swapped)
    }

    /// The log's origin, once chosen.
    pub(crate) fn log_origin(&self) -> Result<Option<String>> {
        Ok(self
            .meta
            .get(K_LOG_ORIGIN)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the log's origin (once, when its key is made).
    pub(crate) fn set_log_origin(&self, origin: &str) -> Result<()> {
        self.meta.insert(K_LOG_ORIGIN, origin.as_bytes())?;
        Ok(())
    }

    /// Every stored log entry as (index, bytes), in order.
    pub(crate) fn log_entries(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.log_entries
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((as_u64(&k, "log entry index")?, v.to_vec()))
            })
            .collect()
    }

    /// The stored entries `range` (all must exist).
    pub(crate) fn log_entry_range(&self, range: std::ops::Range<u64>) -> Result<Vec<Vec<u8>>> {
        let (start, end) = (range.start, range.end);
        let out: Vec<Vec<u8>> = self
            .log_entries
            .range(start.to_be_bytes()..end.to_be_bytes())
            .values()
            .map(|v| v.map(|v| v.to_vec()).map_err(CaError::from))
            .collect::<Result<_>>()?;
        if out.len() as u64 != end - start {
            return Err(CaError::State(format!(
                "log entries {start}..{end} missing from the state database"
            )));
        }
        Ok(out)
    }

    /// Every stored log hash as ((level, index), hash).
    pub(crate) fn log_nodes(&self) -> Result<Vec<((u8, u64), Hash)>> {
        self.log_nodes
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                if k.len() != 9 {
                    return Err(CaError::State("corrupt log hash key".into()));
                }
                Ok(((k[0], as_u64(&k[1..], "log hash index")?), as_hash(&v)?))
            })
            .collect()
    }

    /// Removes the whole log (tests: a state as written before the log
    /// existed).
    #[doc(hidden)]
    pub(crate) fn wipe_log(&self) -> Result<()> {
        self.log_entries.clear()?;
        self.log_nodes.clear()?;
        self.log_certs.clear()?;
        for k in [K_LOG_SIZE, K_LOG_CHECKPOINT, K_LOG_ORIGIN] {
            self.meta.remove(k)?;
        }
        Ok(())
    }

    /// Makes every change so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Stores a certificate record (insert or update).
    pub(crate) fn put_cert(&self, serial: &[u8], rec: &CertRecord) -> Result<()> {
        let v = serde_json::to_vec(rec).map_err(|e| CaError::State(e.to_string()))?;
        self.certs.insert(serial, v)?;
        Ok(())
    }

    /// Looks a certificate up by serial.
    pub(crate) fn get_cert(&self, serial: &[u8]) -> Result<Option<CertRecord>> {
        self.certs
            .get(serial)?
            .map(|v| decode_record(&v))
            .transpose()
    }

    /// Every certificate record, in serial order.
    pub(crate) fn all_certs(&self) -> Result<Vec<CertRecord>> {
        self.certs
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode_record(&v)
            })
            .collect()
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64> {
        match self.meta.get(key)? {
            None => Ok(0),
            Some(v) => {
                let arr: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| CaError::State(format!("corrupt meta counter {key:?}")))?;
                Ok(u64::from_be_bytes(arr))
            }
        }
    }

    /// Last CRL number issued (0: none).
    pub(crate) fn crl_number(&self) -> Result<u64> {
        self.get_u64(K_CRL_NUMBER)
    }

    /// Last directory serial issued (0: none).
    pub(crate) fn directory_serial(&self) -> Result<u64> {
        self.get_u64(K_DIRECTORY_SERIAL)
    }

    /// Records a newly issued CRL as current.
    pub(crate) fn set_crl(&self, number: u64, der: &[u8]) -> Result<()> {
        self.meta.insert(K_CRL_NUMBER, &number.to_be_bytes())?;
        self.meta.insert(K_CURRENT_CRL, der)?;
        Ok(())
    }

    /// The current CRL (DER), if any.
    pub(crate) fn current_crl(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(K_CURRENT_CRL)?.map(|v| v.to_vec()))
    }

    /// Records a newly issued directory as current.
    pub(crate) fn set_directory(&self, serial: u64, signed: &[u8]) -> Result<()> {
        self.meta
            .insert(K_DIRECTORY_SERIAL, &serial.to_be_bytes())?;
        self.meta.insert(K_CURRENT_DIRECTORY, signed)?;
        Ok(())
    }

    /// The current signed directory (encoded), if any.
    pub(crate) fn current_directory(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(K_CURRENT_DIRECTORY)?.map(|v| v.to_vec()))
    }

    /// The security baseline ("" when unset).
    /// Every recorded handover: the member that closed, and to whom.
    pub(crate) fn handovers(&self) -> Result<Vec<(String, Handover)>> {
        self.meta
            .scan_prefix(K_HANDOVER)
            .map(|kv| {
                let (k, v) = kv?;
                let from = String::from_utf8_lossy(&k[K_HANDOVER.len()..]).into_owned();
                let h = serde_json::from_slice(&v)
                    .map_err(|e| CaError::State(format!("corrupt handover record: {e}")))?;
                Ok((from, h))
            })
            .collect()
    }

    /// Every registered witness, by name.
    pub(crate) fn witnesses(&self) -> Result<Vec<WitnessRecord>> {
        self.meta
            .scan_prefix(K_WITNESS)
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v)
                    .map_err(|e| CaError::State(format!("corrupt witness record: {e}")))
            })
            .collect()
    }

    /// Registers (or replaces) a witness. Not flushed: the caller issues a
    /// directory and flushes.
    pub(crate) fn put_witness(&self, w: &WitnessRecord) -> Result<()> {
        let v = serde_json::to_vec(w).map_err(|e| CaError::State(e.to_string()))?;
        self.meta
            .insert([K_WITNESS, w.name.as_bytes()].concat(), v)?;
        Ok(())
    }

    /// Removes a witness; whether it was registered. Not flushed.
    pub(crate) fn remove_witness(&self, name: &str) -> Result<bool> {
        Ok(self
            .meta
            .remove([K_WITNESS, name.as_bytes()].concat())?
            .is_some())
    }

    /// How many witness cosignatures a checkpoint that grows the tree needs
    /// (0: none).
    pub(crate) fn witness_quorum(&self) -> Result<u32> {
        Ok(u32::try_from(self.get_u64(K_WITNESS_QUORUM)?).unwrap_or(u32::MAX))
    }

    /// Sets the witness quorum. Not flushed.
    pub(crate) fn set_witness_quorum(&self, n: u32) -> Result<()> {
        self.meta
            .insert(K_WITNESS_QUORUM, &u64::from(n).to_be_bytes())?;
        Ok(())
    }

    /// The security baseline ("" when unset).
    pub(crate) fn min_software_version(&self) -> Result<String> {
        Ok(self
            .meta
            .get(K_MIN_VERSION)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }
}

fn decode_record(v: &[u8]) -> Result<CertRecord> {
    serde_json::from_slice(v)
        .map_err(|e| CaError::State(format!("corrupt certificate record: {e}")))
}

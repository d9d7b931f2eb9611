//! The membership log's reading side: its verifier key and checkpoints,
//! tiles, entries, consistency proofs, and the full verification of the
//! stored log against its checkpoint and the certificate records.

use super::{sha256_hex, Authority};
use crate::error::{CaError, Result};
use crate::tlog::{self, Checkpoint, Entry, EntryKind};
use serde::Serialize;
use std::collections::HashSet;
use x509_parser::prelude::{FromDer, X509Certificate};

/// One log entry as listed by `caliopen-ca log entries`.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntryInfo {
    /// Position in the log (0-based).
    pub index: u64,
    /// `issuance`, `renewal`, `revocation`, `baseline` or `handover`.
    pub kind: &'static str,
    /// When the operation happened (Unix seconds).
    pub time: u64,
    /// Serial (hex) of the certificate issued or revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SHA-256 (hex) of the certificate issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Member identifier of the certificate issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// Serial (hex) of the certificate renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed_from: Option<String>,
    /// Revocation reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// New baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_software_version: Option<String>,
    /// The successor a handover names (`member_id` is the member that closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

impl LogEntryInfo {
    fn new(index: u64, e: &Entry) -> Self {
        let mut info = Self {
            index,
            kind: e.kind.name(),
            time: e.time,
            serial: None,
            sha256: None,
            member_id: None,
            renewed_from: None,
            reason: None,
            min_software_version: None,
            successor: None,
        };
        let cert = |info: &mut Self, der: &[u8]| {
            info.sha256 = Some(sha256_hex(der));
            if let Ok((_, c)) = X509Certificate::from_der(der) {
                info.serial = Some(hex::encode(c.raw_serial()));
                info.member_id = crate::member_cert::label_of(&c).map(|l| l.member_id);
            }
        };
        match &e.kind {
            EntryKind::Issuance { cert_der } => cert(&mut info, cert_der),
            EntryKind::Renewal {
                renewed_from,
                cert_der,
            } => {
                cert(&mut info, cert_der);
                info.renewed_from = Some(hex::encode(renewed_from));
            }
            EntryKind::Revocation { serial, reason } => {
                info.serial = Some(hex::encode(serial));
                info.reason = Some(reason.clone());
            }
            EntryKind::Baseline {
                min_software_version,
            } => info.min_software_version = Some(min_software_version.clone()),
            EntryKind::Handover { from, to } => {
                info.member_id = Some(from.clone());
                info.successor = Some(to.clone());
            }
        }
        info
    }

    /// One line for humans: what the entry did.
    pub fn summary(&self) -> String {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        match self.kind {
            "issuance" => format!(
                "serial {} member {} sha256 {}",
                o(&self.serial),
                o(&self.member_id),
                o(&self.sha256)
            ),
            "renewal" => format!(
                "serial {} member {} renews {} sha256 {}",
                o(&self.serial),
                o(&self.member_id),
                o(&self.renewed_from),
                o(&self.sha256)
            ),
            "revocation" => format!("serial {} reason {}", o(&self.serial), o(&self.reason)),
            "handover" => format!(
                "member {} hands over to {}",
                o(&self.member_id),
                o(&self.successor)
            ),
            _ => format!("min_software_version {:?}", o(&self.min_software_version)),
        }
    }
}

/// What `Authority::verify_log` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogVerified {
    /// Number of entries.
    pub size: u64,
    /// The tree head, recomputed from the entries.
    pub root: tlog::Hash,
    /// When the latest checkpoint was signed (its `cosignature/v1`
    /// timestamp, Unix seconds); `None` for a checkpoint written before
    /// checkpoints were dated (the next heartbeat dates it).
    pub signed_at: Option<u64>,
}

impl Authority {
    /// The log's verifier key (`<origin>+<key id>+<key>`).
    pub fn log_verifier(&self) -> &tlog::Verifier {
        self.log_key.verifier()
    }

    /// The checkpoint published (`/log/checkpoint`, `Watch`): the latest
    /// signed one with the witness cosignatures collected for it (see
    /// [`Authority::add_cosignatures`]).
    pub fn published_checkpoint(&self) -> Result<String> {
        let p = self.published.borrow().checkpoint.clone();
        if p.is_empty() {
            return self.log_checkpoint();
        }
        Ok(p.as_ref().clone())
    }

    /// The latest signed checkpoint, as stored (without witness
    /// cosignatures).
    pub fn log_checkpoint(&self) -> Result<String> {
        self.store
            .log_checkpoint()?
            .ok_or_else(|| CaError::State("the membership log has no checkpoint".into()))
    }

    /// A tlog-tiles hash tile or entry bundle of the current tree, or
    /// `None` when the tree does not hold all it covers (yet, or ever).
    /// Read without the write lock: stored hashes and entries are only
    /// ever appended, and the size is read first.
    pub fn log_tile(&self, tile: &tlog::Tile) -> Result<Option<Vec<u8>>> {
        let size = self.store.log_size()?;
        if !tile.within(size) {
            return Ok(None);
        }
        let bytes = match tile.kind {
            tlog::TileKind::Hash(_) => tile.hashes(&self.store)?,
            tlog::TileKind::Entries => {
                let entries = self.store.log_entry_range(tile.entry_range())?;
                tlog::tiles::encode_bundle(&entries)
                    .map_err(|e| CaError::State(format!("log entry bundle: {e}")))?
            }
        };
        Ok(Some(bytes))
    }

    /// Every log entry's bytes, in order (what the leaves hash).
    pub fn log_entry_bytes(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .store
            .log_entries()?
            .into_iter()
            .map(|(_, b)| b)
            .collect())
    }

    /// Every log entry, decoded.
    pub fn log_entries(&self) -> Result<Vec<LogEntryInfo>> {
        self.store
            .log_entries()?
            .iter()
            .map(|(i, b)| {
                let e = Entry::decode(b)
                    .map_err(|err| CaError::State(format!("log entry {i}: {err}")))?;
                Ok(LogEntryInfo::new(*i, &e))
            })
            .collect()
    }

    /// Recomputes the whole tree from the entries and checks it against the
    /// stored hashes, the stored size and the latest checkpoint (signature
    /// and head), and that every certificate record and revocation is in
    /// the log. The first discrepancy is the error.
    pub fn verify_log(&self) -> Result<LogVerified> {
        let _g = self.lock();
        let bad = |m: String| CaError::State(format!("log verification failed: {m}"));
        let size = self.store.log_size()?;
        let mut tree = tlog::MemoryTree::new();
        let mut issued = HashSet::new();
        let mut revoked = HashSet::new();
        for (i, b) in self.store.log_entries()? {
            if i != tree.size() {
                return Err(bad(format!("entry {} is missing", tree.size())));
            }
            let e = Entry::decode(&b).map_err(|err| bad(format!("entry {i}: {err}")))?;
            match &e.kind {
                EntryKind::Issuance { cert_der } | EntryKind::Renewal { cert_der, .. } => {
                    issued.insert(sha256_hex(cert_der));
                }
                EntryKind::Revocation { serial, .. } => {
                    revoked.insert(hex::encode(serial));
                }
                EntryKind::Baseline { .. } | EntryKind::Handover { .. } => {}
            }
            tree.push_entry(&b);
        }
        if tree.size() != size {
            return Err(bad(format!(
                "{} entries stored, the log size says {size}",
                tree.size()
            )));
        }
        let stored = self.store.log_nodes()?;
        let want: usize = tree.levels().iter().map(Vec::len).sum();
        if stored.len() != want {
            return Err(bad(format!(
                "{} hashes stored, {want} expected for {size} entries",
                stored.len()
            )));
        }
        for ((level, index), h) in stored {
            let ok = tree
                .levels()
                .get(usize::from(level))
                .and_then(|l| l.get(usize::try_from(index).ok()?))
                == Some(&h);
            if !ok {
                return Err(bad(format!("stored hash ({level}, {index}) differs")));
            }
        }
        let root = tree.root_at(size);
        let cp = self.log_checkpoint()?;
        let (c, n) = Checkpoint::open(cp.as_bytes(), self.log_key.verifier())
            .map_err(|e| bad(format!("latest checkpoint: {e}")))?;
        let signed_at = tlog::CosignatureVerifier::for_log(self.log_key.verifier())
            .timestamp(&n)
            .map_err(|e| bad(format!("latest checkpoint's timestamp: {e}")))?;
        if c.size != size || c.root != root {
            return Err(bad(format!(
                "the latest checkpoint is for size {} with another head",
                c.size
            )));
        }
        for r in self.store.all_certs()? {
            if !issued.contains(&r.sha256) {
                return Err(bad(format!("certificate {} is not in the log", r.serial)));
            }
            if r.revoked.is_some() && !revoked.contains(&r.serial) {
                return Err(bad(format!(
                    "the revocation of {} is not in the log",
                    r.serial
                )));
            }
        }
        Ok(LogVerified {
            size,
            root,
            signed_at,
        })
    }

    /// The RFC 9162 §2.1.4.1 consistency proof from the tree of `old`
    /// leaves to the tree of `new` leaves (`0 < old <= new <= size`).
    pub fn log_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<tlog::Hash>> {
        if new > self.store.log_size()? {
            return Err(CaError::BadInput(format!(
                "no consistency proof to {new}: the log is smaller"
            )));
        }
        tlog::consistency_proof(&self.store, old, new).map_err(|e| match e {
            tlog::ProveError::Source(e) => e,
            tlog::ProveError::Invalid(why) => CaError::BadInput(why.to_owned()),
        })
    }
}

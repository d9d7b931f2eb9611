//! What the association publishes (CRL, directory, checkpoint), loading it
//! at open, and reissuing the CRL and directory when they are due.

use super::{now, Authority, Published, NO_PRUNE};
use crate::error::Result;
use crate::store::CertRecord;
use caliopen_proto::pb::directory::{Directory, SignedDirectory};
use prost::Message;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

impl Authority {
    /// Loads the stored CRL and directory into the published state, issuing
    /// any that is missing.
    pub(super) fn load_published(&self) -> Result<()> {
        let _g = self.lock();
        self.open_log_locked()?;
        if self.store.current_crl()?.is_none() {
            self.issue_crl_locked()?;
        }
        // A directory written before it named each certificate's log index
        // is reissued, so that members can check inclusion.
        let stale = self
            .store
            .current_directory()?
            .map(|b| {
                SignedDirectory::decode(b.as_slice())
                    .ok()
                    .and_then(|s| Directory::decode(s.directory.as_slice()).ok())
                    .is_none_or(|d| {
                        d.members
                            .iter()
                            .any(|m| m.cert_sha256.len() != m.cert_log_index.len())
                    })
            })
            .unwrap_or(true);
        if stale {
            self.issue_directory_locked(now())?;
        }
        // Which superseded certificates the stored directory still lists, and
        // so when it must be reissued without them (also when their overlap
        // ended while no service ran: the first refresh prunes them).
        let listed: HashSet<String> = self
            .store
            .current_directory()?
            .and_then(|b| SignedDirectory::decode(b.as_slice()).ok())
            .and_then(|s| Directory::decode(s.directory.as_slice()).ok())
            .map(|d| {
                d.members
                    .iter()
                    .flat_map(|m| m.cert_sha256.iter().map(hex::encode))
                    .collect()
            })
            .unwrap_or_default();
        let certs = self.store.all_certs()?;
        self.set_next_prune(certs.iter().filter(|r| listed.contains(&r.sha256)));
        self.store.flush()?;
        self.republish()
    }

    pub(super) fn set_next_prune<'a>(&self, listed: impl Iterator<Item = &'a CertRecord>) {
        let at = listed
            .filter(|r| r.revoked.is_none())
            .filter_map(|r| r.superseded.as_ref().map(|s| s.listed_until))
            .min()
            .unwrap_or(NO_PRUNE);
        self.next_prune.store(at, Ordering::Relaxed);
    }

    /// When a superseded certificate listed in the current directory reaches
    /// the end of its overlap (Unix seconds): [`Authority::refresh_if_due`]
    /// then issues a directory without it.
    pub fn next_prune_at(&self) -> Option<i64> {
        Some(self.next_prune.load(Ordering::Relaxed)).filter(|t| *t != NO_PRUNE)
    }

    pub(super) fn republish(&self) -> Result<()> {
        let crl_der = self.store.current_crl()?.unwrap_or_default();
        let crl_next_update =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_der)
                .ok()
                .and_then(|(_, c)| c.next_update())
                .map(|t| t.timestamp())
                .unwrap_or(0);
        let directory = self.store.current_directory()?.unwrap_or_default();
        let directory_valid_until = SignedDirectory::decode(directory.as_slice())
            .ok()
            .and_then(|s| Directory::decode(s.directory.as_slice()).ok())
            .map(|d| d.valid_until)
            .unwrap_or(0);
        let log_note = self.store.log_checkpoint()?.unwrap_or_default();
        self.published.send_replace(Published {
            crl_number: self.store.crl_number()?,
            crl_der: Arc::new(crl_der),
            crl_next_update,
            directory_serial: self.store.directory_serial()?,
            directory: Arc::new(directory),
            directory_valid_until,
            log_size: self.store.log_size()?,
            checkpoint: Arc::new(self.checkpoint_to_publish(&log_note)?),
            log_note: Arc::new(log_note),
        });
        Ok(())
    }

    /// Reissues the CRL or the directory once half of its lifetime has
    /// passed, so that members never hold an expired one, and the directory
    /// when a superseded certificate it lists reached the end of its overlap
    /// (see [`Authority::next_prune_at`]). Returns true when something was
    /// reissued.
    pub fn refresh_if_due(&self) -> Result<bool> {
        self.refresh_if_due_at(now())
    }

    /// [`Authority::refresh_if_due`] with an explicit clock. (Tests reach it
    /// through [`crate::internal`].)
    pub(crate) fn refresh_if_due_at(&self, at: OffsetDateTime) -> Result<bool> {
        let p = self.published();
        let t = at.unix_timestamp();
        let crl_half = self.settings.crl_validity.whole_seconds() / 2;
        let dir_half = self.settings.directory_validity.whole_seconds() / 2;
        let mut did = false;
        if p.crl_next_update - t < crl_half {
            self.issue_crl()?;
            did = true;
        }
        if p.directory_valid_until - t < dir_half || self.next_prune.load(Ordering::Relaxed) <= t {
            self.issue_directory_at(at)?;
            did = true;
        }
        Ok(did)
    }
}

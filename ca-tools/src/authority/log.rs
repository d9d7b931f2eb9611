//! The membership log's writing side: its key and origin, its creation
//! (from the records of an association older than the log), the appends
//! that commit with each change, and the signed, dated checkpoint with its
//! heartbeat.

use super::{files, now, unix, Authority};
use crate::error::{CaError, Result};
use crate::keyfile::{read_private, write_file_atomic, write_private_new};
use crate::store::{CertRecord, Change, Store};
use crate::tlog::{self, Checkpoint, Entry, EntryKind, Signer};
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use time::OffsetDateTime;

/// The log's origin (and key name) for an association that has none yet:
/// a schema-less URL-like name (tlog-checkpoint §Note text) made of the
/// association's name and the start of its root key identifier, under
/// `.invalid` since nothing is served there. Chosen once and kept in the
/// state (`log_origin`), so that a later root rotation does not change it.
pub fn default_log_origin(name: &str, root_key_id: &[u8]) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "association" } else { slug };
    let id = hex::encode(&root_key_id[..root_key_id.len().min(4)]);
    format!("caliopen.invalid/{slug}/{id}")
}

/// Reads the log key, or makes it when the log has never been signed
/// (`caliopen-ca init`, or the first open of an association older than
/// the log). A missing key for a log that exists is an error: members
/// pinned that key, a new one would look like a forged log.
pub(super) fn open_log_key(
    dir: &Path,
    store: &Store,
    name: &str,
    root_key_id: &[u8],
) -> Result<Signer> {
    let origin = match store.log_origin()? {
        Some(o) => o,
        None => default_log_origin(name, root_key_id),
    };
    let key_path = dir.join(files::LOG_KEY);
    let pub_path = dir.join(files::LOG_PUB);
    let signer = if key_path.exists() {
        let text = read_private(&key_path)?;
        let der = pem::parse(&text)
            .ok()
            .filter(|p| p.tag() == "PRIVATE KEY")
            .ok_or_else(|| {
                CaError::State(format!("{} is not a PEM private key", key_path.display()))
            })?
            .into_contents();
        Signer::from_pkcs8(&origin, &der)
            .map_err(|e| CaError::State(format!("{}: {e}", key_path.display())))?
    } else {
        if store.log_checkpoint()?.is_some() || store.log_size()? > 0 {
            return Err(CaError::State(format!(
                "{} is missing but the membership log was signed with it: restore it from the backup \
                 (a new key would make every member see a different log)",
                key_path.display()
            )));
        }
        let (signer, der) =
            Signer::generate(&origin).map_err(|e| CaError::Crypto(e.to_string()))?;
        write_private_new(
            &key_path,
            pem::encode(&pem::Pem::new("PRIVATE KEY", der)).as_bytes(),
        )?;
        if store.all_certs()?.is_empty() {
            tracing::info!(path = %key_path.display(), key = %signer.verifier(),
                "made the membership log key");
        } else {
            tracing::warn!(path = %key_path.display(), key = %signer.verifier(),
                "this association had no membership log key: made one (back it up)");
        }
        signer
    };
    if store.log_origin()?.is_none() {
        store.set_log_origin(&origin)?;
    }
    let vkey = format!("{}\n", signer.verifier());
    if fs::read_to_string(&pub_path).ok().as_deref() != Some(vkey.as_str()) {
        write_file_atomic(&pub_path, vkey.as_bytes(), 0o644)?;
    }
    Ok(signer)
}

impl Authority {
    /// Makes sure the membership log exists and is signed by our key: an
    /// association older than the log gets its certificate records as the
    /// first entries, in issuance order, then their revocations and the
    /// baseline, in one commit; a new one signs the empty tree.
    pub(super) fn open_log_locked(&self) -> Result<()> {
        if let Some(cp) = self.store.log_checkpoint()? {
            let (c, n) = Checkpoint::open(cp.as_bytes(), self.log_key.verifier()).map_err(|e| {
                CaError::State(format!(
                    "the stored log checkpoint does not verify with {}: {e}",
                    files::LOG_KEY
                ))
            })?;
            // Undated (written before checkpoints were dated): 0, so the
            // first heartbeat dates it at once.
            let at = tlog::CosignatureVerifier::for_log(self.log_key.verifier())
                .timestamp(&n)
                .map_err(|e| CaError::State(format!("the stored log checkpoint: {e}")))?
                .unwrap_or(0);
            self.checkpoint_time
                .store(i64::try_from(at).unwrap_or(i64::MAX), Ordering::Relaxed);
            if c.size != self.store.log_size()? {
                return Err(CaError::State(
                    "the stored log checkpoint is not for the stored log size".into(),
                ));
            }
            return Ok(());
        }
        if self.store.log_size()? != 0 {
            return Err(CaError::State(
                "the membership log has no checkpoint".into(),
            ));
        }
        let mut certs = self.store.all_certs()?;
        // Issuance order as the records tell it: by issuance second, a
        // renewal after what it renewed within the same second (its depth
        // in the renewal chain), then by serial.
        let by_serial: std::collections::HashMap<String, Option<String>> = certs
            .iter()
            .map(|r| (r.serial.clone(), r.renewed_from.clone()))
            .collect();
        let depth = |r: &CertRecord| {
            let mut d = 0usize;
            let mut at = r.renewed_from.clone();
            while let Some(s) = at {
                d += 1;
                if d > by_serial.len() {
                    break;
                }
                at = by_serial.get(&s).cloned().flatten();
            }
            d
        };
        certs.sort_by_cached_key(|r| (r.not_before, depth(r), r.serial.clone()));
        let mut entries = Vec::new();
        for r in &certs {
            let der = pem::parse(&r.certificate_pem)
                .map_err(|e| CaError::State(format!("certificate {}: {e}", r.serial)))?
                .into_contents();
            // Issued at not_before + 5 minutes (see `issue_locked`).
            let time = u64::try_from(r.not_before + 300).unwrap_or(0);
            let kind = match &r.renewed_from {
                Some(from) => EntryKind::Renewal {
                    renewed_from: hex::decode(from)
                        .map_err(|_| CaError::State(format!("corrupt serial {from}")))?,
                    cert_der: der,
                },
                None => EntryKind::Issuance { cert_der: der },
            };
            entries.push(Entry { time, kind });
        }
        let mut revoked: Vec<&CertRecord> = certs.iter().filter(|r| r.revoked.is_some()).collect();
        revoked.sort_by_key(|r| (r.revoked.as_ref().map(|v| v.at), r.serial.clone()));
        for r in revoked {
            let rv = r.revoked.as_ref().map(|v| (v.at, v.reason.clone()));
            let (at, reason) = rv.unwrap_or_default();
            entries.push(Entry {
                time: u64::try_from(at).unwrap_or(0),
                kind: EntryKind::Revocation {
                    serial: hex::decode(&r.serial)
                        .map_err(|_| CaError::State(format!("corrupt serial {}", r.serial)))?,
                    reason,
                },
            });
        }
        let baseline = self.store.min_software_version()?;
        if !baseline.is_empty() {
            entries.push(Entry {
                time: unix(now()),
                kind: EntryKind::Baseline {
                    min_software_version: baseline,
                },
            });
        }
        let (size, _) = self.commit_logged(&Change::default(), &entries)?;
        if size > 0 {
            tracing::info!(
                entries = size,
                "membership log created from the existing certificate records"
            );
            self.audit(&serde_json::json!({"event": "log_migrated", "entries": size}))?;
        }
        Ok(())
    }

    /// Appends `entries` with `change` and a new checkpoint, atomically.
    pub(super) fn commit_logged(
        &self,
        change: &Change<'_>,
        entries: &[Entry],
    ) -> Result<(u64, String)> {
        let bytes = entries
            .iter()
            .map(|e| {
                e.encode()
                    .map_err(|err| CaError::State(format!("log entry: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let at = unix(now()).max(self.checkpoint_time.load(Ordering::Relaxed).max(0) as u64);
        let out = self.store.commit_logged(change, &bytes, &|size, root| {
            self.sign_checkpoint(
                &Checkpoint {
                    origin: self.log_key.verifier().name().to_owned(),
                    size,
                    root: *root,
                    extensions: Vec::new(),
                },
                at,
            )
        })?;
        self.checkpoint_time
            .store(i64::try_from(at).unwrap_or(i64::MAX), Ordering::Relaxed);
        Ok(out)
    }

    /// The checkpoint signed by the log key and dated `at` by the log's own
    /// `cosignature/v1` ([`tlog::cosignature`]).
    fn sign_checkpoint(&self, c: &Checkpoint, at: u64) -> Result<String> {
        tlog::sign_timestamped(c, &self.log_key, at)
            .map_err(|e| CaError::Crypto(format!("log checkpoint: {e}")))
    }

    /// Re-signs the unchanged checkpoint with a fresh timestamp once
    /// [`Settings::checkpoint_interval`] passed since it was last signed (the
    /// heartbeat), durably, and publishes it. Returns true when it did.
    ///
    /// [`Settings::checkpoint_interval`]: super::Settings::checkpoint_interval
    pub fn heartbeat_if_due(&self) -> Result<bool> {
        self.heartbeat_if_due_at(now())
    }

    /// [`Authority::heartbeat_if_due`] with an explicit clock. A clock that
    /// went back signs nothing: timestamps never decrease. (Tests reach it
    /// through [`crate::internal`].)
    pub(crate) fn heartbeat_if_due_at(&self, at: OffsetDateTime) -> Result<bool> {
        let _g = self.lock();
        let old = self.log_checkpoint()?;
        let (c, n) = Checkpoint::open(old.as_bytes(), self.log_key.verifier())
            .map_err(|e| CaError::State(format!("stored log checkpoint: {e}")))?;
        let last = tlog::CosignatureVerifier::for_log(self.log_key.verifier())
            .timestamp(&n)
            .map_err(|e| CaError::State(format!("stored log checkpoint: {e}")))?
            .unwrap_or(0);
        let t = unix(at);
        let every = u64::try_from(self.settings.checkpoint_interval.whole_seconds()).unwrap_or(0);
        if t < last.saturating_add(every.max(1)) {
            return Ok(false);
        }
        let new = self.sign_checkpoint(&c, t)?;
        if !self.store.replace_checkpoint(&old, &new)? {
            // Only commits change it, and they hold the same lock.
            return Err(CaError::State(
                "the log checkpoint changed during a heartbeat".into(),
            ));
        }
        self.checkpoint_time
            .store(i64::try_from(t).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.republish()?;
        Ok(true)
    }

    /// When the next heartbeat is due (Unix seconds): the published
    /// checkpoint's timestamp plus [`Settings::checkpoint_interval`]; now
    /// for an undated checkpoint.
    ///
    /// [`Settings::checkpoint_interval`]: super::Settings::checkpoint_interval
    pub fn next_heartbeat_at(&self) -> i64 {
        let last = self.checkpoint_time.load(Ordering::Relaxed);
        if last == 0 {
            return 0;
        }
        last.saturating_add(self.settings.checkpoint_interval.whole_seconds().max(1))
    }

    /// Removes the membership log from the state (tests: make a state as
    /// an association older than the log left it; [`crate::internal`]).
    pub(crate) fn wipe_log_for_tests(&self) -> Result<()> {
        self.store.wipe_log()?;
        self.store.flush()
    }

    /// Stores `note` as the latest checkpoint as it is (tests: a checkpoint
    /// written by an older version; [`crate::internal`]).
    pub(crate) fn replace_checkpoint_for_tests(&self, note: &str) -> Result<()> {
        let old = self.log_checkpoint()?;
        self.store.replace_checkpoint(&old, note)?;
        Ok(())
    }
}

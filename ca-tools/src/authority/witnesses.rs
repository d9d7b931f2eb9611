//! The membership log's witnesses (C2SP tlog-witness): registering and
//! removing them, the quorum, and the cosignatures they give, published
//! with the checkpoint.

use super::{now, Authority};
use crate::error::{CaError, Result};
use crate::store::WitnessRecord;
use crate::tlog;

/// Longest witness name accepted (bytes).
pub const MAX_WITNESS_NAME_LEN: usize = 64;

/// Most witnesses an association registers: each is asked on every
/// checkpoint and heartbeat, and each is listed in every directory.
pub const MAX_WITNESSES: usize = 32;

/// The witness cosignatures collected for checkpoints.
#[derive(Debug, Default)]
pub(super) struct Cosigned {
    /// The latest stored note asked for, the note with the cosignatures
    /// that verified, and how many distinct witnesses gave one.
    latest: Option<(String, String, usize)>,
    /// The latest note that reached the quorum in force then.
    witnessed: Option<String>,
}

/// The witnesses of the membership log (C2SP tlog-witness) and the
/// cosignatures they give.
impl Authority {
    /// The registered witnesses (by name) and the quorum.
    pub fn witnesses(&self) -> Result<(Vec<WitnessRecord>, u32)> {
        Ok((self.store.witnesses()?, self.store.witness_quorum()?))
    }

    /// Registers witness `name` with its `cosignature/v1` verifier key
    /// `vkey` and submission prefix `url` (`https://`), whose certificate
    /// must chain to `ca_pem` when given; issues a directory listing it.
    /// Returns the directory serial.
    pub fn add_witness(
        &self,
        name: &str,
        vkey: &str,
        url: &str,
        ca_pem: Option<&str>,
    ) -> Result<u64> {
        let name = name.trim();
        let ok_name = !name.is_empty()
            && name.len() <= MAX_WITNESS_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok_name {
            return Err(CaError::BadInput(format!(
                "invalid witness name {name:?}: letters, digits, '-', '_' and '.', at most {MAX_WITNESS_NAME_LEN}"
            )));
        }
        let vkey = vkey.trim();
        let key = tlog::CosignatureVerifier::parse(vkey)
            .map_err(|e| CaError::BadInput(format!("witness key {vkey:?}: {e}")))?;
        let url = url.trim().trim_end_matches('/');
        // The operator's input: a `WitnessError::Config`, with its message.
        crate::witnessing::parse_url(url).map_err(|e| CaError::BadInput(e.to_string()))?;
        if let Some(pem) = ca_pem {
            crate::witnessing::roots_from_pem(pem).map_err(|e| CaError::BadInput(e.to_string()))?;
        }
        let _g = self.lock();
        let existing = self.store.witnesses()?;
        // One public key, one cosigner (tlog-cosignature: "the same public
        // key can't be used across multiple cosigners"); members count
        // distinct keys, and never the log's own.
        let same_key = |w: &WitnessRecord| {
            tlog::CosignatureVerifier::parse(&w.vkey)
                .is_ok_and(|k| k.public_key() == key.public_key())
        };
        if existing.iter().any(|w| w.name != name && same_key(w)) {
            return Err(CaError::BadInput(format!(
                "witness key {vkey} is already registered under another name"
            )));
        }
        if key.public_key() == self.log_verifier().public_key() {
            return Err(CaError::BadInput(
                "the log's own key cannot witness the log".into(),
            ));
        }
        if existing.len() >= MAX_WITNESSES && !existing.iter().any(|w| w.name == name) {
            return Err(CaError::BadInput(format!(
                "at most {MAX_WITNESSES} witnesses"
            )));
        }
        self.store.put_witness(&WitnessRecord {
            name: name.to_owned(),
            vkey: key.to_string(),
            url: url.to_owned(),
            ca_pem: ca_pem.map(str::to_owned),
            added_at: now().unix_timestamp(),
        })?;
        self.audit(&serde_json::json!({"event": "witness_added", "name": name, "vkey": key.to_string(), "url": url}))?;
        self.witnesses_changed_locked()
    }

    /// Removes witness `name`; refused while the quorum needs it. Issues a
    /// directory without it and returns its serial.
    pub fn remove_witness(&self, name: &str) -> Result<u64> {
        let _g = self.lock();
        let n = self.store.witnesses()?.len();
        let q = self.store.witness_quorum()?;
        if !self.store.witnesses()?.iter().any(|w| w.name == name) {
            return Err(CaError::NotFound(format!("no witness named {name:?}")));
        }
        if (n - 1) < q as usize {
            return Err(CaError::BadInput(format!(
                "the quorum is {q}: lower it before removing a witness (`log witness quorum`)"
            )));
        }
        self.store.remove_witness(name)?;
        self.audit(&serde_json::json!({"event": "witness_removed", "name": name}))?;
        self.witnesses_changed_locked()
    }

    /// Sets how many distinct registered witnesses must cosign a checkpoint
    /// that grows the tree before members take it (at most the number
    /// registered). Issues a directory carrying it and returns its serial.
    pub fn set_witness_quorum(&self, n: u32) -> Result<u64> {
        let _g = self.lock();
        let have = self.store.witnesses()?.len();
        if n as usize > have {
            return Err(CaError::BadInput(format!(
                "quorum {n} is more than the {have} witnesses registered"
            )));
        }
        self.store.set_witness_quorum(n)?;
        self.audit(&serde_json::json!({"event": "witness_quorum", "quorum": n}))?;
        self.witnesses_changed_locked()
    }

    fn witnesses_changed_locked(&self) -> Result<u64> {
        let (serial, _) = self.issue_directory_locked(now())?;
        self.store.flush()?;
        self.republish()?;
        Ok(serial)
    }

    /// Records the witness cosignature lines collected for `note` (the
    /// stored checkpoint they were asked about; each line verified, one per
    /// distinct witness) and publishes the checkpoint with them, unless a
    /// newer checkpoint was signed meanwhile. Returns whether they were
    /// taken.
    pub fn add_cosignatures(&self, note: &str, lines: &[String]) -> Result<bool> {
        let _g = self.lock();
        if self.store.log_checkpoint()?.as_deref() != Some(note) {
            return Ok(false);
        }
        let quorum = self.store.witness_quorum()? as usize;
        {
            let mut c = self
                .cosigned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let full: String = std::iter::once(note)
                .chain(lines.iter().map(String::as_str))
                .collect();
            if lines.len() >= quorum {
                c.witnessed = Some(full.clone());
            }
            c.latest = Some((note.to_owned(), full, lines.len()));
        }
        self.republish()?;
        Ok(true)
    }

    /// What to publish for the stored note `stored`: it with its
    /// cosignatures; with a quorum, the latest note that reached it when
    /// `stored` has not (members would refuse a grown tree without it).
    pub(super) fn checkpoint_to_publish(&self, stored: &str) -> Result<String> {
        let quorum = self.store.witness_quorum()? as usize;
        let c = self
            .cosigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((base, full, n)) = &c.latest {
            if base == stored && *n >= quorum {
                return Ok(full.clone());
            }
        }
        if quorum > 0 {
            if let Some(w) = &c.witnessed {
                return Ok(w.clone());
            }
        }
        Ok(stored.to_owned())
    }
}

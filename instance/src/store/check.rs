//! `caliopen store check`: every body against its hash, every index entry
//! against a body, every message against its body and reference count.
//!
//! With `repair`, a body that fails its check is quarantined (its index
//! entry moved to a `Q` entry with the reason: reads then fail with a
//! clear error, its segment is kept for inspection), a content address or
//! reference count that is wrong is corrected, and a body no message
//! names is released. A message whose body is gone is reported, not
//! deleted: that is the operator's decision.

use super::bodies::Loc;
use super::{model, tx_error, MessageMeta, Store, StoreError};
use serde::Serialize;
use std::collections::HashMap;

/// Most problems listed (the counts cover them all).
const MAX_LISTED: usize = 1000;

/// What a check found.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// Bodies in the index.
    pub bodies: u64,
    /// Their bytes, and what they take in the segments.
    pub raw_bytes: u64,
    /// Bytes of payload (after compression).
    pub stored_bytes: u64,
    /// Messages.
    pub messages: u64,
    /// Segment files and their total size.
    pub segments: u64,
    /// Bytes of the segment files.
    pub segment_bytes: u64,
    /// Bodies still in sled (a migration not finished).
    pub legacy: u64,
    /// Bodies quarantined (before this check and by it).
    pub quarantined: u64,
    /// Problems found (each a line), at most [`MAX_LISTED`] of them.
    pub problems: Vec<String>,
    /// Problems found in all.
    pub problem_count: u64,
    /// Problems corrected (with `repair`).
    pub repaired: u64,
}

impl CheckReport {
    fn problem(&mut self, line: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(line);
        }
    }
}

fn blob_of(k: &[u8]) -> Option<u64> {
    k.get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

impl Store {
    /// Checks the store (blocking; it reads every body). See the module.
    pub fn check(&self, repair: bool) -> Result<CheckReport, StoreError> {
        let mut r = CheckReport::default();
        for (_, size) in self.bodies.segments() {
            r.segments += 1;
            r.segment_bytes += size;
        }
        r.legacy = self.legacy_raw.len() as u64;
        // Every body against its record and hash.
        // Every decodable entry's address, and which bodies check.
        let mut hashes: HashMap<u64, [u8; 32]> = HashMap::new();
        let mut sound: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for kv in self.body_index.scan_prefix(b"B") {
            let (k, v) = kv?;
            let Some(blob) = blob_of(&k) else {
                r.problem(format!("bad body index key {}", hex::encode(&k)));
                continue;
            };
            let Some(loc) = Loc::decode(&v) else {
                r.problem(format!("body {blob:016x}: bad index entry"));
                if repair {
                    self.quarantine(blob, "bad index entry", &v)?;
                    r.repaired += 1;
                }
                continue;
            };
            r.bodies += 1;
            r.raw_bytes += u64::from(loc.raw_len);
            r.stored_bytes += u64::from(loc.len);
            hashes.insert(blob, loc.hash);
            match self.bodies.verify(blob, &loc) {
                Ok(_) => {
                    sound.insert(blob);
                }
                Err(d) => {
                    r.problem(format!(
                        "body {blob:016x} (segment {:016x} at {}): {d}",
                        loc.seg, loc.off
                    ));
                    if repair {
                        self.quarantine(blob, &d.to_string(), &v)?;
                        r.repaired += 1;
                    }
                }
            }
        }
        // Every content address against the body it names.
        for kv in self.body_index.scan_prefix(b"#") {
            let (k, v) = kv?;
            let named = <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes);
            let ok =
                named.is_some_and(|b| hashes.get(&b).is_some_and(|h| k.get(1..) == Some(&h[..])));
            if !ok {
                r.problem(format!(
                    "content address {} names no body that has it",
                    hex::encode(k.get(1..).unwrap_or_default())
                ));
                if repair {
                    self.body_index.remove(&k)?;
                    r.repaired += 1;
                }
            }
        }
        r.quarantined = self.body_index.scan_prefix(b"Q").count() as u64;
        // Every message against its body; references counted.
        let mut refs: HashMap<u64, u32> = HashMap::new();
        for kv in self.messages.iter() {
            let (_, v) = kv?;
            let m: MessageMeta = match super::record::decode(&v) {
                Ok(m) => m,
                Err(e) => {
                    r.problem(format!("a message record does not decode: {e}"));
                    continue;
                }
            };
            r.messages += 1;
            let blob = m.blob_id();
            *refs.entry(blob).or_default() += 1;
            if sound.contains(&blob) || self.legacy_raw.contains_key(blob.to_be_bytes())? {
                continue;
            }
            let why = if self.body_index.contains_key(model::quarantine_key(blob))? {
                "its body is quarantined"
            } else if self.body_index.contains_key(model::body_key(blob))? {
                "its body fails its check"
            } else {
                "it has no body"
            };
            r.problem(format!("message {:016x} of {}: {why}", m.id, m.owner));
        }
        // Reference counts, and bodies nobody names.
        for &blob in &sound {
            let counted = refs.get(&blob).copied().unwrap_or(0);
            let k = model::refs_key(blob);
            let stored = self
                .mail
                .get(&k)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
                .map_or(1, u32::from_be_bytes);
            if counted == 0 {
                r.problem(format!("body {blob:016x} is named by no message"));
                if repair {
                    self.mail.remove(&k)?;
                    self.body_index
                        .transaction(|t| model::release_body(t, blob))
                        .map_err(tx_error)?;
                    r.repaired += 1;
                }
            } else if counted != stored {
                r.problem(format!(
                    "body {blob:016x}: {counted} messages name it, its count says {stored}"
                ));
                if repair {
                    if counted == 1 {
                        self.mail.remove(&k)?;
                    } else {
                        self.mail.insert(&k, &counted.to_be_bytes())?;
                    }
                    r.repaired += 1;
                }
            }
        }
        if repair && r.repaired > 0 {
            self.db.flush()?;
        }
        Ok(r)
    }

    /// Sets a damaged body aside: reads of it fail with a clear error, and
    /// its segment is kept.
    fn quarantine(&self, blob: u64, why: &str, entry: &[u8]) -> Result<(), StoreError> {
        let mut v = why.as_bytes().to_vec();
        v.push(0);
        v.extend_from_slice(entry);
        self.body_index
            .transaction(|t| {
                t.insert(model::quarantine_key(blob), v.as_slice())?;
                model::release_body(t, blob)
            })
            .map_err(tx_error)?;
        tracing::warn!(blob = %format!("{blob:016x}"), why, "body quarantined");
        Ok(())
    }
}

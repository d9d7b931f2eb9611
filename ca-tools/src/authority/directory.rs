//! Making and signing the member directory: the active members, their
//! listed certificates and log indexes, the baseline, the handovers, the
//! witnesses and their quorum.

use super::{now, Authority, MAX_LISTED_PER_MEMBER};
use crate::error::{CaError, Result};
use crate::store::{CertRecord, Status};
use caliopen_proto::directory::{DIRECTORY_ALGORITHM, DIRECTORY_PURPOSE};
use caliopen_proto::pb::directory::{
    Directory, DirectoryMember, DirectoryWitness, SignedDirectory,
};
use prost::Message;
use rcgen::SigningKey;
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;

impl Authority {
    /// Issues a new signed directory (serial + 1) and makes it current.
    pub fn issue_directory(&self) -> Result<(u64, Vec<u8>)> {
        self.issue_directory_at(now())
    }

    pub(super) fn issue_directory_at(&self, t: OffsetDateTime) -> Result<(u64, Vec<u8>)> {
        let _g = self.lock();
        let r = self.issue_directory_locked(t)?;
        self.store.flush()?;
        self.republish()?;
        Ok(r)
    }

    /// Lists, per member, at most [`MAX_LISTED_PER_MEMBER`] of its active
    /// certificates (newest first), and notes when the next listed superseded
    /// one is due to leave.
    pub(super) fn issue_directory_locked(&self, t: OffsetDateTime) -> Result<(u64, Vec<u8>)> {
        let serial = self.store.directory_serial()? + 1;
        let now_s = t.unix_timestamp();
        let mut active: Vec<CertRecord> = self
            .store
            .all_certs()?
            .into_iter()
            .filter(|r| r.status(now_s) == Status::Active)
            .collect();
        active.sort_by(|a, b| {
            b.not_before
                .cmp(&a.not_before)
                .then(b.serial.cmp(&a.serial))
        });
        let handovers: HashMap<String, String> = self
            .store
            .handovers()?
            .into_iter()
            .map(|(from, h)| (from, h.to))
            .collect();
        let mut members: BTreeMap<String, DirectoryMember> = BTreeMap::new();
        let mut listed: Vec<CertRecord> = Vec::new();
        for r in active {
            let m = members
                .entry(r.member_id.clone())
                .or_insert_with(|| DirectoryMember {
                    member_id: r.member_id.clone(),
                    domains: r.domains.clone(),
                    endpoints: r.endpoints.clone(),
                    cert_sha256: Vec::new(),
                    cert_log_index: Vec::new(),
                    charter_version: r.charter_version.clone(),
                    successor: r.successor.clone().unwrap_or_default(),
                    not_after: r.not_after,
                    handed_over_to: handovers.get(&r.member_id).cloned().unwrap_or_default(),
                });
            // Supersession keeps this true by itself; the cap also covers
            // state written before it existed.
            if m.cert_sha256.len() >= MAX_LISTED_PER_MEMBER {
                continue;
            }
            let sha256 = hex::decode(&r.sha256).map_err(|e| CaError::State(e.to_string()))?;
            // The directory is derived from the log: a certificate the log
            // does not carry is not listed (members would refuse it anyway).
            let Some(index) = self.store.log_index_of_cert(&sha256)? else {
                tracing::error!(serial = %r.serial, member = %r.member_id,
                    "certificate missing from the membership log; not listed in the directory                      (run `caliopen-ca log verify`)");
                continue;
            };
            m.cert_sha256.push(sha256);
            m.cert_log_index.push(index);
            m.not_after = m.not_after.max(r.not_after);
            listed.push(r);
        }
        let dir = Directory {
            purpose: DIRECTORY_PURPOSE.into(),
            serial,
            issued_at: now_s,
            valid_until: (t + self.settings.directory_validity).unix_timestamp(),
            min_software_version: self.store.min_software_version()?,
            association: self.name.clone(),
            members: members.into_values().collect(),
            log_size: self.store.log_size()?,
            witnesses: self
                .store
                .witnesses()?
                .into_iter()
                .map(|w| DirectoryWitness {
                    name: w.name,
                    vkey: w.vkey,
                    url: w.url,
                })
                .collect(),
            witness_quorum: self.store.witness_quorum()?,
        };
        let bytes = dir.encode_to_vec();
        let signature = self.key.sign(&bytes)?;
        let signed = SignedDirectory {
            directory: bytes,
            signature,
            algorithm: DIRECTORY_ALGORITHM.into(),
            signer_key_id: self.root_key_id.clone(),
        }
        .encode_to_vec();
        self.store.set_directory(serial, &signed)?;
        self.audit(&serde_json::json!({"event": "directory", "serial": serial}))?;
        self.set_next_prune(listed.iter());
        Ok((serial, signed))
    }
}

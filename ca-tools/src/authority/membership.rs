//! The membership changes other than issuance and revocation (the security
//! baseline, a member's handover to its successor) and the listing of every
//! certificate issued.

use super::{now, unix, Authority};
use crate::error::{CaError, Result};
use crate::store::{CertRecord, Change, Handover, Status};
use crate::tlog::{Entry, EntryKind};
use serde::Serialize;

/// A listed certificate.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// Standing now.
    pub status: Status,
    /// The record, without the PEM.
    #[serde(flatten)]
    pub record: CertRecord,
}

impl Authority {
    /// Sets the security baseline and issues a directory carrying it.
    pub fn set_baseline(&self, min_version: &str) -> Result<u64> {
        let v = min_version.trim();
        let ok = !v.is_empty()
            && v.split('.').count() <= 4
            && v.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(CaError::BadInput(format!(
                "invalid version {min_version:?}: expected digits and dots, like 0.2.0"
            )));
        }
        let _g = self.lock();
        self.commit_logged(
            &Change {
                min_software_version: Some(v),
                ..Change::default()
            },
            &[Entry {
                time: unix(now()),
                kind: EntryKind::Baseline {
                    min_software_version: v.to_owned(),
                },
            }],
        )?;
        self.audit(&serde_json::json!({"event": "baseline", "min_software_version": v}))?;
        let (serial, _) = self.issue_directory_locked(now())?;
        self.store.flush()?;
        self.republish()?;
        Ok(serial)
    }

    /// Records that `from` closes and hands its users and domains over to
    /// `to`, the successor its label names: one log entry, then a directory
    /// in which `from` names `to` as the member that now serves its
    /// domains (and `to` may renew with them as SANs). Run again with the
    /// same members, it changes nothing.
    pub fn handover(&self, from: &str, to: &str) -> Result<Handover> {
        let (from, to) = (from.trim(), to.trim());
        if from.is_empty() || to.is_empty() || from == to {
            return Err(CaError::BadInput(
                "a handover names two different members (--from and --to)".into(),
            ));
        }
        let _g = self.lock();
        let t = now();
        let now_s = t.unix_timestamp();
        let newest = |member: &str| -> Result<Option<CertRecord>> {
            Ok(self
                .store
                .all_certs()?
                .into_iter()
                .filter(|r| r.member_id == member && r.status(now_s) == Status::Active)
                .max_by_key(|r| r.not_before))
        };
        let old =
            newest(from)?.ok_or_else(|| CaError::NotFound(format!("no active member {from:?}")))?;
        // The successor, by member id or by one of its domains.
        let succ = match newest(to)? {
            Some(r) => r,
            None => {
                let d = to.to_ascii_lowercase();
                let id = self
                    .store
                    .all_certs()?
                    .into_iter()
                    .find(|r| r.status(now_s) == Status::Active && r.domains.contains(&d))
                    .map(|r| r.member_id)
                    .ok_or_else(|| {
                        CaError::NotFound(format!(
                            "no active member {to:?} (the successor must hold a valid label)"
                        ))
                    })?;
                newest(&id)?.ok_or_else(|| CaError::NotFound(format!("no active member {id:?}")))?
            }
        };
        if succ.member_id == old.member_id {
            return Err(CaError::BadInput(
                "a member cannot be its own successor".into(),
            ));
        }
        // The label names the successor by its member id or a domain of it.
        match old.successor.as_deref() {
            Some(s) if s == succ.member_id || succ.domains.iter().any(|d| d == s) => {}
            Some(s) => {
                return Err(CaError::Refused(format!(
                    "{from} names {s} as its successor (in its label), not {}",
                    succ.member_id
                )))
            }
            None => {
                return Err(CaError::Refused(format!(
                    "{from} names no successor in its label: sign it again with --successor"
                )))
            }
        }
        let to = succ.member_id.as_str();
        let handovers = self.store.handovers()?;
        if let Some((_, h)) = handovers.iter().find(|(f, _)| f == from) {
            if h.to == to {
                // Published again, in case a failure came between the
                // record and its directory.
                self.issue_directory_locked(t)?;
                self.store.flush()?;
                self.republish()?;
                return Ok(h.clone());
            }
            return Err(CaError::Refused(format!(
                "{from} was handed over to {} already",
                h.to
            )));
        }
        if let Some((_, h)) = handovers.iter().find(|(f, _)| f == to) {
            return Err(CaError::Refused(format!(
                "{to} closed itself (handed over to {}): name a member that stays",
                h.to
            )));
        }
        let h = Handover {
            to: to.to_owned(),
            domains: old.domains.clone(),
            at: now_s,
        };
        self.commit_logged(
            &Change {
                handover: Some((from, &h)),
                ..Change::default()
            },
            &[Entry {
                time: unix(t),
                kind: EntryKind::Handover {
                    from: from.to_owned(),
                    to: to.to_owned(),
                },
            }],
        )?;
        self.audit(&serde_json::json!({
            "event": "handover", "from": from, "to": to, "domains": h.domains,
        }))?;
        self.issue_directory_locked(t)?;
        self.store.flush()?;
        self.republish()?;
        Ok(h)
    }

    /// Every recorded handover (the member that closed, and to whom).
    pub fn handovers(&self) -> Result<Vec<(String, Handover)>> {
        self.store.handovers()
    }

    /// Every certificate ever issued with its standing now.
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        let t = now().unix_timestamp();
        let mut v: Vec<ListEntry> = self
            .store
            .all_certs()?
            .into_iter()
            .map(|record| ListEntry {
                status: record.status(t),
                record,
            })
            .collect();
        v.sort_by_key(|e| e.record.not_before);
        Ok(v)
    }
}

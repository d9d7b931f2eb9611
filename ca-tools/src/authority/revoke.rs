//! Revocation by serial or domain, and reading the serials and reasons an
//! operator gives.

use super::{now, Authority};
use crate::csr::normalize_domain;
use crate::error::{CaError, Result};
use crate::store::{CertRecord, Change, Revocation};
use crate::tlog::{Entry, EntryKind};
use rcgen::RevocationReason;

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One certificate, by serial (hex; colons and `0x` allowed).
    Serial(String),
    /// Every unrevoked certificate holding this domain.
    Domain(String),
}

/// Result of a revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Serials revoked now.
    pub newly_revoked: Vec<String>,
    /// Serials that were revoked before.
    pub already_revoked: Vec<String>,
    /// Number of the current CRL afterwards.
    pub crl_number: u64,
}

/// Parses a serial given by an operator: hex, optionally with `0x` and colons.
pub fn parse_serial(s: &str) -> Result<Vec<u8>> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let t = if t.len() % 2 == 1 { format!("0{t}") } else { t };
    let bytes = hex::decode(&t)
        .map_err(|_| CaError::BadInput(format!("invalid serial {s:?}: expected hex")))?;
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    if bytes.len() == skip {
        return Err(CaError::BadInput(format!("invalid serial {s:?}")));
    }
    Ok(bytes[skip..].to_vec())
}

/// The CRLReason an operator names (RFC 5280 §5.3.1), case and punctuation
/// aside, with its RFC spelling. certificateHold and removeFromCRL are left
/// out (the association never suspends a certificate), and so is
/// aACompromise (no attribute certificates).
pub(super) fn parse_reason(r: &str) -> Result<(RevocationReason, &'static str)> {
    let norm: String = r
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    Ok(match norm.as_str() {
        "" | "unspecified" => (RevocationReason::Unspecified, "unspecified"),
        "keycompromise" => (RevocationReason::KeyCompromise, "keyCompromise"),
        "cacompromise" => (RevocationReason::CaCompromise, "cACompromise"),
        "affiliationchanged" => (RevocationReason::AffiliationChanged, "affiliationChanged"),
        "superseded" => (RevocationReason::Superseded, "superseded"),
        "cessationofoperation" => (
            RevocationReason::CessationOfOperation,
            "cessationOfOperation",
        ),
        "privilegewithdrawn" => (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn"),
        _ => {
            return Err(CaError::BadInput(format!(
                "unknown revocation reason {r:?} (use unspecified, keyCompromise, cACompromise, \
                 affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn)"
            )))
        }
    })
}

impl Authority {
    /// Revokes by serial or domain. Idempotent: revoking what is revoked
    /// changes nothing and succeeds. A new CRL and directory are issued when
    /// anything changed.
    pub fn revoke(&self, target: &RevokeTarget, reason: &str) -> Result<RevokeOutcome> {
        let (_, reason_name) = parse_reason(reason)?;
        let _g = self.lock();
        let t = now().unix_timestamp();
        let targets: Vec<(Vec<u8>, CertRecord)> = match target {
            RevokeTarget::Serial(s) => {
                let serial = parse_serial(s)?;
                let rec = self.store.get_cert(&serial)?.ok_or_else(|| {
                    CaError::NotFound(format!(
                        "no certificate with serial {}",
                        hex::encode(&serial)
                    ))
                })?;
                vec![(serial, rec)]
            }
            RevokeTarget::Domain(d) => {
                let d = normalize_domain(d)?;
                let found: Vec<_> = self
                    .store
                    .all_certs()?
                    .into_iter()
                    .filter(|r| r.domains.contains(&d))
                    .map(|r| (hex::decode(&r.serial).unwrap_or_default(), r))
                    .collect();
                if found.is_empty() {
                    return Err(CaError::NotFound(format!(
                        "no certificate holds domain {d}"
                    )));
                }
                found
            }
        };
        let mut out = RevokeOutcome::default();
        let mut changed = Vec::new();
        let mut entries = Vec::new();
        for (serial, mut rec) in targets {
            if rec.revoked.is_some() {
                out.already_revoked.push(rec.serial);
                continue;
            }
            rec.revoked = Some(Revocation {
                at: t,
                reason: reason_name.to_owned(),
            });
            entries.push(Entry {
                time: u64::try_from(t).unwrap_or(0),
                kind: EntryKind::Revocation {
                    serial: serial.clone(),
                    reason: reason_name.to_owned(),
                },
            });
            changed.push((serial, rec));
        }
        if !changed.is_empty() {
            self.commit_logged(
                &Change {
                    certs: changed.iter().map(|(s, r)| (s.clone(), r)).collect(),
                    ..Change::default()
                },
                &entries,
            )?;
        }
        for (_, rec) in changed {
            self.audit(&serde_json::json!({
                "event": "revoke", "serial": rec.serial, "member_id": rec.member_id,
                "domains": rec.domains, "reason": reason_name,
            }))?;
            out.newly_revoked.push(rec.serial);
        }
        if !out.newly_revoked.is_empty() {
            self.issue_crl_locked()?;
            self.issue_directory_locked(now())?;
            self.store.flush()?;
            self.republish()?;
        }
        out.crl_number = self.store.crl_number()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_in_operator_forms() {
        assert_eq!(parse_serial("0x0A:bc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial("00abc").unwrap(), vec![0x0a, 0xbc]);
        assert!(parse_serial("zz").is_err());
        assert!(parse_serial("00").is_err());
    }

    #[test]
    fn reasons_are_normalized() {
        assert_eq!(parse_reason("key-compromise").unwrap().1, "keyCompromise");
        assert_eq!(parse_reason("").unwrap().1, "unspecified");
        assert!(parse_reason("because").is_err());
    }
}

//! Issuing a member certificate from a CSR (`sign`), after every policy
//! check, and superseding the member's older certificates.

use super::{now, sha256_hex, unix, Authority};
use crate::csr::{normalize_domain, parse_csr};
use crate::error::{CaError, Result};
use crate::member_cert::{assemble_certificate, tbs_certificate, MemberCertSpec};
use crate::store::{CertRecord, Change, Status, Supersession};
use crate::tlog::{Entry, EntryKind};
use caliopen_proto::label::{Label, LABEL_VERSION};
use rcgen::SigningKey;
use time::{Duration, OffsetDateTime};

/// A request to issue a member certificate.
#[derive(Debug, Clone, Default)]
pub struct SignRequest {
    /// The CSR, PEM or DER.
    pub csr: Vec<u8>,
    /// The member's identifier.
    pub member_id: String,
    /// Charter version the operator signed.
    pub charter_version: String,
    /// Successor member's domain.
    pub successor: Option<String>,
    /// Mesh endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// Lifetime in days (`None`: the default).
    pub days: Option<u32>,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its record (serial, PEM, …).
    pub record: CertRecord,
}

pub(super) fn random_serial() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CaError::Crypto("random generator failed".into()))?;
    // RFC 5280 §4.1.2.2: a positive INTEGER of at most 20 octets, unique
    // per issuer (126 random bits). Top bit clear: positive without a 0x00
    // in front (X.690 §8.3.3); next bit set: always 16 octets.
    b[0] &= 0x7f; // positive
    b[0] |= 0x40; // and always 16 bytes long
    Ok(b)
}

fn check_member_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(CaError::BadInput(format!(
            "invalid member id {id:?}: 1-64 of a-z 0-9 . - starting with a letter or digit"
        )))
    }
}

fn check_endpoint(ep: &str) -> Result<String> {
    let bad = || CaError::BadInput(format!("invalid endpoint {ep:?}: expected HOST:PORT"));
    if let Ok(sa) = ep.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad());
        }
        return Ok(sa.to_string());
    }
    let (host, port) = ep.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = if host.parse::<std::net::Ipv4Addr>().is_ok() {
        host.to_owned()
    } else {
        normalize_domain(host).map_err(|_| bad())?
    };
    Ok(format!("{host}:{port}"))
}

impl Authority {
    /// Issues a member certificate from a CSR, after every policy check.
    pub fn sign(&self, req: &SignRequest) -> Result<Issued> {
        self.sign_at(req, now())
    }

    /// [`Authority::sign`] with an explicit clock: the certificate's validity
    /// starts at `at` and the domain check considers members active at `at`.
    ///
    /// Tests outside this crate reach it through
    /// [`crate::internal::sign_at`].
    pub(crate) fn sign_at(&self, req: &SignRequest, at: OffsetDateTime) -> Result<Issued> {
        check_member_id(&req.member_id)?;
        if !self.charter.accepts(&req.charter_version) {
            return Err(CaError::BadInput(format!(
                "unknown charter version {:?} (this association accepts {})",
                req.charter_version,
                std::iter::once(&self.charter.version)
                    .chain(&self.charter.accepted_versions)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let successor = req
            .successor
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(normalize_domain)
            .transpose()?;
        let endpoints = req
            .endpoints
            .iter()
            .map(|e| check_endpoint(e))
            .collect::<Result<Vec<_>>>()?;
        let days = req.days.unwrap_or(self.settings.default_days);
        if days == 0 || days > self.settings.max_days {
            return Err(CaError::BadInput(format!(
                "--days must be 1-{}",
                self.settings.max_days
            )));
        }
        let csr = parse_csr(&req.csr)?;
        let _g = self.lock();
        let t = at;
        let mut keep: Option<CertRecord> = None;
        for rec in self.store.all_certs()? {
            if rec.status(t.unix_timestamp()) != Status::Active {
                continue;
            }
            if rec.member_id == req.member_id {
                // The member's newest listed certificate gets the overlap.
                if keep
                    .as_ref()
                    .is_none_or(|k| (rec.not_before, &rec.serial) > (k.not_before, &k.serial))
                {
                    keep = Some(rec);
                }
                continue;
            }
            if let Some(d) = csr.dns_names.iter().find(|d| rec.domains.contains(d)) {
                return Err(CaError::Refused(format!(
                    "domain {d} is already held by active member {} (serial {})",
                    rec.member_id, rec.serial
                )));
            }
        }
        let (record, der) = self.issue_locked(
            &csr,
            Label {
                version: LABEL_VERSION,
                member_id: req.member_id.clone(),
                charter_version: req.charter_version.clone(),
                successor,
            },
            endpoints,
            days,
            None,
            at,
        )?;
        self.commit_logged(
            &Change {
                certs: vec![(hex::decode(&record.serial).unwrap_or_default(), &record)],
                ..Change::default()
            },
            &[Entry {
                time: unix(at),
                kind: EntryKind::Issuance { cert_der: der },
            }],
        )?;
        self.audit(&serde_json::json!({
            "event": "issue", "serial": record.serial, "member_id": record.member_id,
            "domains": record.domains, "charter_version": record.charter_version,
            "not_after": record.not_after, "sha256": record.sha256,
        }))?;
        self.supersede_locked(&record, keep.map(|k| k.serial).as_deref(), at)?;
        self.issue_directory_locked(now())?;
        self.store.flush()?;
        self.republish()?;
        Ok(Issued { record })
    }

    pub(super) fn issue_locked(
        &self,
        csr: &crate::csr::CsrInfo,
        label: Label,
        endpoints: Vec<String>,
        days: u32,
        renewed_from: Option<String>,
        t: OffsetDateTime,
    ) -> Result<(CertRecord, Vec<u8>)> {
        let serial = random_serial()?;
        let not_before = t - Duration::minutes(5);
        let not_after = t + Duration::days(days.into());
        let tbs = tbs_certificate(&MemberCertSpec {
            serial: &serial,
            issuer_name_der: &self.issuer_name_der,
            issuer_key_id: &self.root_key_id,
            not_before,
            not_after,
            spki_der: &csr.spki_der,
            public_key_bits: &csr.public_key_bits,
            domains: &csr.dns_names,
            label: &label,
        })?;
        let sig = self.key.sign(&tbs)?;
        let der = assemble_certificate(&tbs, &sig);
        let certificate_pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
        let record = CertRecord {
            serial: hex::encode(serial),
            member_id: label.member_id,
            domains: csr.dns_names.clone(),
            endpoints,
            charter_version: label.charter_version,
            successor: label.successor,
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
            sha256: sha256_hex(&der),
            renewed_from,
            revoked: None,
            superseded: None,
            certificate_pem,
        };
        Ok((record, der))
    }

    /// Marks every earlier unrevoked certificate of `new`'s member as
    /// superseded by it. `keep` (the certificate the member renewed with, or
    /// its newest listed one) stays listed for the overlap; the others leave
    /// the directory now. Deadlines only ever move earlier, so the directory
    /// never lists more than [`MAX_LISTED_PER_MEMBER`] certificates of a
    /// member and a pruned one never returns.
    pub(super) fn supersede_locked(
        &self,
        new: &CertRecord,
        keep: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let t = at.unix_timestamp();
        let overlap_end = (at + self.settings.superseded_overlap).unix_timestamp();
        for mut rec in self.store.all_certs()? {
            if rec.member_id != new.member_id || rec.serial == new.serial || rec.revoked.is_some() {
                continue;
            }
            let until = if keep == Some(rec.serial.as_str()) {
                overlap_end
            } else {
                t
            };
            let changed = match &mut rec.superseded {
                Some(s) if s.listed_until <= until => false,
                Some(s) => {
                    s.listed_until = until;
                    true
                }
                None => {
                    rec.superseded = Some(Supersession {
                        at: t,
                        by: new.serial.clone(),
                        listed_until: until,
                    });
                    true
                }
            };
            if !changed {
                continue;
            }
            let serial = hex::decode(&rec.serial)
                .map_err(|_| CaError::State(format!("corrupt serial {}", rec.serial)))?;
            self.store.put_cert(&serial, &rec)?;
            self.audit(&serde_json::json!({
                "event": "supersede", "serial": rec.serial, "by": new.serial,
                "member_id": rec.member_id, "listed_until": until,
            }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(check_endpoint("127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(check_endpoint("[::1]:7000").unwrap(), "[::1]:7000");
        assert_eq!(
            check_endpoint("Mesh.Alpha.Test:443").unwrap(),
            "mesh.alpha.test:443"
        );
        for bad in ["nope", "a.test:0", "a.test:x", ":80"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}

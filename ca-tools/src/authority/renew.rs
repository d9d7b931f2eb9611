//! Recognising a member by the certificate it presents on TLS, and renewing
//! it from a fresh CSR for the same domains (plus any handed over to it).

use super::{now, sha256_hex, unix, Authority, Issued};
use crate::csr::parse_csr;
use crate::error::{CaError, Result};
use crate::store::{CertRecord, Change, Handover, Status};
use crate::tlog::{Entry, EntryKind};
use caliopen_proto::label::{Label, LABEL_VERSION};
use std::collections::HashSet;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

impl Authority {
    /// The record of `client_cert_der` when this association issued it (serial
    /// and SHA-256 match) and it is listed now: not revoked, within its
    /// validity, not superseded past its overlap. This is how the service
    /// recognises a member on a TLS connection (rustls only checked the chain).
    pub fn identify(&self, client_cert_der: &[u8]) -> Result<CertRecord> {
        self.identify_at(client_cert_der, now().unix_timestamp())
    }

    fn identify_at(&self, client_cert_der: &[u8], t: i64) -> Result<CertRecord> {
        let (_, cert) = X509Certificate::from_der(client_cert_der)
            .map_err(|e| CaError::BadInput(format!("client certificate unreadable: {e}")))?;
        let old = self.store.get_cert(cert.raw_serial())?.ok_or_else(|| {
            CaError::Refused("client certificate was not issued by this association".into())
        })?;
        if old.sha256 != sha256_hex(client_cert_der) {
            return Err(CaError::Refused(
                "client certificate does not match the issued one".into(),
            ));
        }
        match old.status(t) {
            Status::Active => Ok(old),
            Status::Revoked => Err(CaError::Refused(format!(
                "certificate {} is revoked: renewal refused",
                old.serial
            ))),
            Status::Expired | Status::Pending => Err(CaError::Refused(format!(
                "certificate {} is not valid now: renewal refused",
                old.serial
            ))),
            Status::Superseded => {
                Err(CaError::Refused(format!(
                "certificate {} was superseded by {}: renewal refused (renew with the current one)",
                old.serial,
                old.superseded.as_ref().map(|s| s.by.as_str()).unwrap_or("?")
            )))
            }
        }
    }

    /// Renews the member whose current certificate is `client_cert_der`
    /// (already authenticated by TLS), from a fresh CSR for the same domains.
    /// The new certificate supersedes the member's earlier ones: the one
    /// presented stays listed for [`Settings::superseded_overlap`], any other
    /// leaves the directory at once.
    ///
    /// [`Settings::superseded_overlap`]: super::Settings::superseded_overlap
    pub fn renew(&self, client_cert_der: &[u8], csr_pem: &[u8]) -> Result<Issued> {
        self.renew_at(client_cert_der, csr_pem, now())
    }

    /// [`Authority::renew`] with an explicit clock: validity, standing and the
    /// overlap are reckoned from `at`, and the directory is issued at `at`.
    /// (Tests reach it through [`crate::internal`].)
    pub(crate) fn renew_at(
        &self,
        client_cert_der: &[u8],
        csr_pem: &[u8],
        at: OffsetDateTime,
    ) -> Result<Issued> {
        // Cheap checks first, so that a refused caller costs no CSR verification.
        self.identify_at(client_cert_der, at.unix_timestamp())?;
        let csr = parse_csr(csr_pem)?;
        let _g = self.lock();
        let old = self.identify_at(client_cert_der, at.unix_timestamp())?;
        // The current domains, and any of the domains handed over to this
        // member by a predecessor that closed (those it may add).
        // Not one another member holds now (a domain the predecessor let
        // go and someone else was given since).
        let mine: Vec<(String, Handover)> = self
            .store
            .handovers()?
            .into_iter()
            .filter(|(_, h)| h.to == old.member_id)
            .collect();
        let now_s = at.unix_timestamp();
        let held_elsewhere: HashSet<String> = self
            .store
            .all_certs()?
            .into_iter()
            .filter(|r| {
                r.status(now_s) == Status::Active
                    && r.member_id != old.member_id
                    && !mine.iter().any(|(from, _)| *from == r.member_id)
            })
            .flat_map(|r| r.domains)
            .collect();
        let inherited: Vec<String> = mine
            .into_iter()
            .flat_map(|(_, h)| h.domains)
            .filter(|d| !old.domains.contains(d) && !held_elsewhere.contains(d))
            .collect();
        let want: HashSet<&String> = csr.dns_names.iter().collect();
        let keeps_all = old.domains.iter().all(|d| want.contains(d));
        let only_known = want
            .iter()
            .all(|d| old.domains.contains(d) || inherited.contains(d));
        if !keeps_all || !only_known {
            let mut may = old.domains.join(", ");
            if !inherited.is_empty() {
                may = format!("{may}, and may add {}", inherited.join(", "));
            }
            return Err(CaError::Refused(format!(
                "renewal must ask for the current domains ({may})"
            )));
        }
        let mut domains = old.domains.clone();
        domains.extend(inherited.into_iter().filter(|d| want.contains(d)));
        // Same lifetime as the old certificate (rounded to whole days; its
        // validity starts 5 minutes early).
        let days = u32::try_from((old.not_after - old.not_before + 43_200) / 86_400)
            .unwrap_or(self.settings.default_days)
            .clamp(1, self.settings.max_days);
        let label = Label {
            version: LABEL_VERSION,
            member_id: old.member_id.clone(),
            charter_version: old.charter_version.clone(),
            successor: old.successor.clone(),
        };
        // Keep the member's domain order (the first is the subject CN).
        let csr = crate::csr::CsrInfo {
            dns_names: domains,
            ..csr
        };
        let (record, der) = self.issue_locked(
            &csr,
            label,
            old.endpoints.clone(),
            days,
            Some(old.serial.clone()),
            at,
        )?;
        self.commit_logged(
            &Change {
                certs: vec![(hex::decode(&record.serial).unwrap_or_default(), &record)],
                ..Change::default()
            },
            &[Entry {
                time: unix(at),
                kind: EntryKind::Renewal {
                    renewed_from: hex::decode(&old.serial).unwrap_or_default(),
                    cert_der: der,
                },
            }],
        )?;
        self.audit(&serde_json::json!({
            "event": "renew", "serial": record.serial, "renewed_from": old.serial,
            "member_id": record.member_id, "not_after": record.not_after, "sha256": record.sha256,
        }))?;
        self.supersede_locked(&record, Some(&old.serial), at)?;
        self.issue_directory_locked(at)?;
        self.store.flush()?;
        self.republish()?;
        Ok(Issued { record })
    }
}

//! Making and signing the CRL (RFC 5280 §5) from the revoked records.

use super::revoke::parse_reason;
use super::{now, Authority};
use crate::error::{CaError, Result};
use rcgen::{
    CertificateRevocationListParams, Issuer, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

/// The CRLReason (RFC 5280 §5.3.1) of a reason name stored in a record.
fn reason_from_name(name: &str) -> RevocationReason {
    parse_reason(name)
        .map(|(r, _)| r)
        .unwrap_or(RevocationReason::Unspecified)
}

impl Authority {
    /// Issues a new CRL (number + 1) and makes it current.
    pub fn issue_crl(&self) -> Result<(u64, Vec<u8>)> {
        let _g = self.lock();
        let r = self.issue_crl_locked()?;
        self.store.flush()?;
        self.republish()?;
        Ok(r)
    }

    /// A complete v2 CRL (RFC 5280 §5.1.2.1; rcgen writes the version),
    /// signed by the root and stored as current.
    pub(super) fn issue_crl_locked(&self) -> Result<(u64, Vec<u8>)> {
        // RFC 5280 §5.2.3: the CRL number grows with each CRL the issuer
        // makes, so members can tell the latest.
        let number = self.store.crl_number()? + 1;
        let mut revoked_certs = Vec::new();
        for rec in self.store.all_certs()? {
            if let Some(rv) = &rec.revoked {
                let serial = hex::decode(&rec.serial)
                    .map_err(|_| CaError::State(format!("corrupt serial {}", rec.serial)))?;
                // §5.1.2.6: each revoked certificate by serial, with its
                // revocation date and a reasonCode entry extension (§5.3.1).
                revoked_certs.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(rv.at)
                        .map_err(|e| CaError::State(e.to_string()))?,
                    reason_code: Some(reason_from_name(&rv.reason)),
                    invalidity_date: None,
                });
            }
        }
        let t = now();
        // §5.1.2.4 thisUpdate now, §5.1.2.5 nextUpdate (which conforming
        // issuers MUST include) one `crl_validity` later; no issuing
        // distribution point: a full CRL (§5.2.5); the authorityKeyIdentifier
        // is the root's SKI (§5.2.1).
        let params = CertificateRevocationListParams {
            this_update: t,
            next_update: t + self.settings.crl_validity,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::PreSpecified(self.root_key_id.clone()),
        };
        // §5.1.2.3: the CRL's issuer is the root's subject, taken from the
        // root certificate so the two encode the same.
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(self.root_der.as_slice()), &self.key)?;
        let crl = params.signed_by(&issuer)?;
        let der = crl.der().to_vec();
        self.store.set_crl(number, &der)?;
        self.audit(&serde_json::json!({"event": "crl", "crl_number": number}))?;
        Ok((number, der))
    }
}

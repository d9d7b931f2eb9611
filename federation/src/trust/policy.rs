//! The one verification policy for peer certificates, on both sides of every
//! connection: webpki (RFC 5280 path validation: chain to an association
//! root, validity, basicConstraints, EKU, critical extensions, CRL; see
//! `TrustStore::rebuild`) then the Caliopen checks (label, charter, directory
//! membership, SANs).

use super::{TrustState, TrustStore};
use caliopen_proto::label::{Label, LABEL_OID_DER, LABEL_VERSION};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a peer certificate was refused. The `as_str` names are the metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// Not issued by an association root (foreign CA, self-signed).
    UnknownIssuer,
    /// Outside its validity period.
    Expired,
    /// On the current CRL.
    Revoked,
    /// Wrong extended key usage.
    WrongEku,
    /// No Caliopen label.
    NoLabel,
    /// A label that does not decode or has an unknown version.
    BadLabel,
    /// A charter version this member does not accept.
    CharterNotAccepted,
    /// Not the member the directory lists (unknown member, fingerprint or domain).
    NotInDirectory,
    /// No CRL or directory held yet, or the directory is stale.
    TrustIncomplete,
    /// Anything else webpki refused (bad signature, unsupported algorithm…).
    Invalid,
}

impl Refusal {
    /// Stable name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownIssuer => "unknown_issuer",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::WrongEku => "wrong_eku",
            Refusal::NoLabel => "no_label",
            Refusal::BadLabel => "bad_label",
            Refusal::CharterNotAccepted => "charter_not_accepted",
            Refusal::NotInDirectory => "not_in_directory",
            Refusal::TrustIncomplete => "trust_incomplete",
            Refusal::Invalid => "invalid",
        }
    }
}

/// Refusals counted by reason.
#[derive(Debug, Default)]
pub struct RefusalCounters(Mutex<BTreeMap<Refusal, u64>>);

impl RefusalCounters {
    /// Counts one refusal.
    pub fn add(&self, r: Refusal) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(r)
            .or_default() += 1;
    }

    /// How many refusals for `r`.
    pub fn get(&self, r: Refusal) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&r)
            .copied()
            .unwrap_or(0)
    }

    /// Every counter.
    pub fn snapshot(&self) -> BTreeMap<Refusal, u64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Who a verified peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Member id from the label (and the directory).
    pub member_id: String,
    /// The certificate's SAN dNSNames: the only envelope sender domains this peer may relay.
    pub domains: Vec<String>,
    /// Certificate serial (raw bytes).
    pub serial: Vec<u8>,
    /// SHA-256 of the certificate DER.
    pub sha256: Vec<u8>,
    /// The label.
    pub label: Label,
}

/// Sorts webpki's refusal by the RFC 5280 rule it broke: the chain
/// (§6.1.3 (a)(1), (a)(4)), validity (§4.1.2.5), revocation (§6.3), EKU
/// (§4.2.1.12).
fn refusal_of(e: &rustls::Error) -> Refusal {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                Refusal::UnknownIssuer
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Refusal::Expired,
            CertificateError::Revoked => Refusal::Revoked,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Refusal::WrongEku
            }
            _ => Refusal::Invalid,
        },
        _ => Refusal::Invalid,
    }
}

/// The Caliopen part of the policy, after webpki accepted the chain.
pub(crate) fn check_member(
    end_entity: &[u8],
    st: &TrustState,
) -> Result<PeerIdentity, (Refusal, String)> {
    let (_, cert) = X509Certificate::from_der(end_entity)
        .map_err(|e| (Refusal::Invalid, format!("unparsable certificate: {e}")))?;
    // The label is a non-critical extension (RFC 5280 §4.2: others may
    // ignore it); here it is required.
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == LABEL_OID_DER)
        .ok_or((
            Refusal::NoLabel,
            "certificate carries no Caliopen label".to_owned(),
        ))?;
    let label = Label::from_der(ext.value).map_err(|e| (Refusal::BadLabel, e.to_string()))?;
    if label.version != LABEL_VERSION {
        return Err((
            Refusal::BadLabel,
            format!("label version {}", label.version),
        ));
    }
    if !st.accepted_charters.contains(&label.charter_version) {
        return Err((
            Refusal::CharterNotAccepted,
            format!("charter version {:?} not accepted", label.charter_version),
        ));
    }
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity)
        .as_ref()
        .to_vec();
    let member = st.member(&label.member_id).ok_or_else(|| {
        (
            Refusal::NotInDirectory,
            format!("member {:?} is not in the directory", label.member_id),
        )
    })?;
    if !member.cert_sha256.contains(&sha256) {
        return Err((
            Refusal::NotInDirectory,
            format!(
                "certificate is not one the directory lists for {:?}",
                label.member_id
            ),
        ));
    }
    // RFC 5280 §4.2.1.6: the dNSNames of subjectAltName, compared without
    // regard to case (RFC 4343).
    let mut domains = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                if let GeneralName::DNSName(d) = n {
                    domains.push(d.to_ascii_lowercase());
                }
            }
        }
    }
    if domains.is_empty() || domains.iter().any(|d| !member.domains.contains(d)) {
        return Err((
            Refusal::NotInDirectory,
            "certificate domains differ from the directory's".to_owned(),
        ));
    }
    Ok(PeerIdentity {
        member_id: label.member_id.clone(),
        domains,
        serial: cert.raw_serial().to_vec(),
        sha256,
        label,
    })
}

/// The mesh is QUIC, hence TLS 1.3 only (RFC 9001 §4.2): a TLS 1.2 signature
/// is never acceptable.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl TrustStore {
    /// TLS 1.3 handshake signature check with this store's provider (both verifiers).
    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider().signature_verification_algorithms,
        )
    }

    fn refuse(&self, side: &'static str, r: Refusal, detail: &str) -> rustls::Error {
        self.refusals().add(r);
        tracing::warn!(
            side,
            reason = r.as_str(),
            detail,
            "peer certificate refused"
        );
        match r {
            Refusal::Revoked => rustls::Error::InvalidCertificate(CertificateError::Revoked),
            Refusal::Expired => rustls::Error::InvalidCertificate(CertificateError::Expired),
            Refusal::UnknownIssuer => {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            }
            Refusal::WrongEku => {
                rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose)
            }
            _ => {
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
            }
        }
    }

    fn check_after_webpki(
        &self,
        side: &'static str,
        st: &TrustState,
        webpki: Result<(), rustls::Error>,
        end_entity: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        if let Err(e) = webpki {
            let r = refusal_of(&e);
            return Err(self.refuse(side, r, &e.to_string()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if st
            .directory
            .as_ref()
            .is_none_or(|d| d.directory.valid_until < now)
        {
            return Err(self.refuse(side, Refusal::TrustIncomplete, "directory missing or stale"));
        }
        check_member(end_entity, st)
            .map(|_| ())
            .map_err(|(r, d)| self.refuse(side, r, &d))
    }
}

/// Verifies client certificates of incoming mesh connections.
#[derive(Debug)]
pub(crate) struct MeshClientVerifier(pub Arc<TrustStore>);

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let st = self.0.current();
        let Some(v) = st.client_verifier.clone() else {
            return Err(self.0.refuse(
                "server",
                Refusal::TrustIncomplete,
                "no CRL or directory yet",
            ));
        };
        let webpki = v
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ());
        self.0
            .check_after_webpki("server", &st, webpki, end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies the server certificate of outgoing mesh connections.
#[derive(Debug)]
pub(crate) struct MeshServerVerifier(pub Arc<TrustStore>);

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let st = self.0.current();
        let Some(v) = st.server_verifier.clone() else {
            return Err(self.0.refuse(
                "client",
                Refusal::TrustIncomplete,
                "no CRL or directory yet",
            ));
        };
        let webpki = v
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ());
        self.0
            .check_after_webpki("client", &st, webpki, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! TLS for the mesh: TLS 1.3 only, ALPN `caliopen/1`, client certificates
//! required both ways, verified by the trust store's policy; the member's own
//! certificate sits in a slot that renewal swaps without a restart.

use crate::trust::policy_verifiers::{MeshClientVerifier, MeshServerVerifier};
use crate::trust::TrustStore;
use caliopen_proto::MESH_ALPN;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// A TLS setup failure.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate or key PEM is unusable.
    #[error("member identity: {0}")]
    Identity(String),
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The member's current certificate and key, swappable at run time.
#[derive(Debug, Default)]
pub struct IdentitySlot(RwLock<Option<Arc<CertifiedKey>>>);

impl IdentitySlot {
    /// An empty slot (the endpoint refuses to authenticate until it is set).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs a certificate (PEM, leaf first) and its key (PKCS#8 or SEC1 PEM).
    pub fn set_pem(
        &self,
        cert_pem: &str,
        key_pem: &str,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<(), TlsError> {
        let certs: Vec<CertificateDer<'static>> = pem::parse_many(cert_pem)
            .map_err(|e| TlsError::Identity(e.to_string()))?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect();
        if certs.is_empty() {
            return Err(TlsError::Identity("no certificate in PEM".into()));
        }
        let key_block = pem::parse(key_pem).map_err(|e| TlsError::Identity(e.to_string()))?;
        let key: PrivateKeyDer<'static> = match key_block.tag() {
            "PRIVATE KEY" => PrivatePkcs8KeyDer::from(key_block.into_contents()).into(),
            "EC PRIVATE KEY" => PrivateSec1KeyDer::from(key_block.into_contents()).into(),
            other => return Err(TlsError::Identity(format!("unsupported key PEM {other:?}"))),
        };
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Identity(e.to_string()))?;
        let ck = CertifiedKey::new(certs, signing);
        ck.keys_match()
            .map_err(|e| TlsError::Identity(format!("key does not match certificate: {e}")))?;
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(ck));
        Ok(())
    }

    /// Installs an already loaded identity.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    /// The current identity.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for IdentitySlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for IdentitySlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// The rustls server configuration of a mesh endpoint.
pub(crate) fn server_config(
    trust: &Arc<TrustStore>,
    identity: &Arc<IdentitySlot>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut sc = rustls::ServerConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier(trust.clone())))
        .with_cert_resolver(identity.clone());
    sc.alpn_protocols = vec![MESH_ALPN.to_vec()];
    Ok(sc)
}

/// The rustls client configuration of a mesh endpoint.
pub(crate) fn client_config(
    trust: &Arc<TrustStore>,
    identity: &Arc<IdentitySlot>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut cc = rustls::ClientConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MeshServerVerifier(trust.clone())))
        .with_client_cert_resolver(identity.clone());
    cc.alpn_protocols = vec![MESH_ALPN.to_vec()];
    Ok(cc)
}

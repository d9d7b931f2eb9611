//! The instance's TLS certificate — STARTTLS on SMTP and IMAP, implicit
//! TLS on IMAP, the web client, the client API — read from `[smtp]
//! tls_cert` and `tls_key`, and read again when either file changes, so
//! that a renewed certificate (certbot, an operator's own PKI) is served
//! to every new connection of every listener without a restart.
//!
//! Every listener's `rustls::ServerConfig` resolves its certificate
//! through one shared [`CertStore`]; the watcher task compares the files'
//! modification time and size every [`CHECK_EVERY`] and swaps the
//! certificate in when both files parse and the key matches the
//! certificate. A pair that does not (a certificate written before its
//! key, a typo) is logged and counted, and the previous certificate stays.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

type Stamp = Option<crate::limits::FileVersion>;

fn stamp(p: &Path) -> Stamp {
    crate::limits::file_version(p)
}

/// The current certificate, and where it comes from.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
    /// Successful reloads (metrics).
    pub reloads: std::sync::atomic::AtomicU64,
    /// Refused reloads (metrics).
    pub reload_failures: std::sync::atomic::AtomicU64,
    /// TLS-ALPN-01 answers of an ACME renewal in progress.
    challenges: Arc<crate::acme::Challenges>,
}

/// Why a certificate and key pair is not served.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read (a local failure).
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The files do not hold a usable pair (bad input: the operator's or
    /// the ACME server's).
    #[error("{} and {}: {problem}", cert.display(), key.display())]
    Files {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// What is wrong with them.
        problem: PairProblem,
    },
    /// A pair handed over (by ACME) is not usable.
    #[error(transparent)]
    Pair(#[from] PairProblem),
    /// The new pair could not be written.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What is wrong with a PEM certificate chain and key.
#[derive(Debug, thiserror::Error)]
pub enum PairProblem {
    /// The certificate PEM does not parse.
    #[error("certificate: {0}")]
    CertificatePem(pem::PemError),
    /// No `CERTIFICATE` block.
    #[error("no certificate in it")]
    NoCertificate,
    /// The key PEM does not parse.
    #[error("key: {0}")]
    KeyPem(pem::PemError),
    /// A key type rustls does not take.
    #[error("unsupported key type {0}")]
    KeyType(String),
    /// The key does not match the certificate, or is unusable.
    #[error("{0}")]
    Mismatch(rustls::Error),
}

/// Reads a PEM certificate chain and its key.
fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    pair_from_pem(&cert_pem, &key_pem, provider).map_err(|problem| CertError::Files {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        problem,
    })
}

/// A PEM certificate chain and its key, checked to match.
fn pair_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, PairProblem> {
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> = pem::parse_many(cert_pem)
        .map_err(PairProblem::CertificatePem)?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents().into())
        .collect();
    if certs.is_empty() {
        return Err(PairProblem::NoCertificate);
    }
    let key = pem::parse(key_pem).map_err(PairProblem::KeyPem)?;
    let key: rustls_pki_types::PrivateKeyDer<'static> = match key.tag() {
        "PRIVATE KEY" => rustls_pki_types::PrivatePkcs8KeyDer::from(key.into_contents()).into(),
        "EC PRIVATE KEY" => rustls_pki_types::PrivateSec1KeyDer::from(key.into_contents()).into(),
        "RSA PRIVATE KEY" => rustls_pki_types::PrivatePkcs1KeyDer::from(key.into_contents()).into(),
        t => return Err(PairProblem::KeyType(t.to_owned())),
    };
    CertifiedKey::from_der(certs, key, provider).map_err(PairProblem::Mismatch)
}

impl CertStore {
    /// Reads the pair (an error names the file).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, CertError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamps = (stamp(cert_path), stamp(key_path));
        let ck = read_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(ck)),
            stamps: Mutex::new(stamps),
            reloads: Default::default(),
            reload_failures: Default::default(),
            challenges: Default::default(),
        }))
    }

    /// A server configuration (aws-lc-rs, safe defaults, no client
    /// certificates) that always serves the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(cfg))
    }

    /// The ACME challenge answers served with this certificate.
    pub fn acme_challenges(&self) -> Arc<crate::acme::Challenges> {
        self.challenges.clone()
    }

    /// The certificate served now (its end-entity DER).
    pub fn current_der(&self) -> Vec<u8> {
        let c = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        c.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// Reads the files again when either changed; `Ok(true)` when a new
    /// certificate is now served. The files are read under the lock that
    /// [`CertStore::install_pair`] writes them under: never half a pair.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last = self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if *last == now {
            return Ok(false);
        }
        // Looked at once per change, whatever the outcome: a broken pair
        // is reported once, not every few seconds.
        *last = now;
        match read_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(ck) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ck);
                self.reloads.fetch_add(1, Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// Replaces the pair on disk (the key first, each file whole: 0600 and
    /// 0644) and serves it at once — for the ACME task. The new pair must
    /// parse and match before anything is written.
    pub fn install_pair(&self, key_pem: &[u8], chain_pem: &[u8]) -> Result<(), CertError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last = self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ck = pair_from_pem(chain_pem, key_pem, &self.provider)?;
        crate::files::write_private(&self.key_path, key_pem)?;
        crate::files::write_atomic(&self.cert_path, chain_pem, 0o644)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ck);
        *last = (stamp(&self.cert_path), stamp(&self.key_path));
        self.reloads.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Looks at the files every [`CHECK_EVERY`] until `token` is cancelled.
    pub async fn watch(
        self: Arc<Self>,
        token: CancellationToken,
        metrics: Arc<crate::metrics::Metrics>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = token.cancelled() => return,
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    metrics.tls_reloads.fetch_add(1, Relaxed);
                    tracing::info!(
                        cert = %self.cert_path.display(),
                        "TLS certificate changed on disk: new connections get the new one"
                    )
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    metrics.tls_reload_failures.fetch_add(1, Relaxed);
                    tracing::error!(
                        error = %e,
                        "TLS certificate changed on disk but cannot be used: still serving the previous one"
                    )
                }
                Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME server validating TLS-ALPN-01 offers `acme-tls/1` and
        // nothing else (RFC 8737 §3): it gets the challenge certificate for
        // the name it asks, or no handshake at all.
        if hello.alpn().is_some_and(|a| {
            let offered: Vec<&[u8]> = a.collect();
            offered == [crate::acme::ACME_TLS_ALPN]
        }) {
            return hello
                .server_name()
                .and_then(|n| self.challenges.alpn_cert(n));
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (String, String) {
        let (c, k) = crate::daemon::self_signed_tls(&[name.to_owned()]).expect("cert");
        std::fs::write(dir.join("tls.pem"), &c).expect("write");
        std::fs::write(dir.join("tls.key"), &k).expect("write");
        (c, k)
    }

    fn bump(p: &Path) {
        // Same-second rewrites keep mtime on coarse filesystems: move it on.
        let f = std::fs::File::options().write(true).open(p).expect("open");
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(2))
            .expect("mtime");
    }

    /// A verifier that takes any certificate and keeps the one it saw.
    #[derive(Debug)]
    struct Keep(Mutex<Vec<u8>>);

    impl rustls::client::danger::ServerCertVerifier for Keep {
        fn verify_server_cert(
            &self,
            end_entity: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.0.lock().expect("lock") = end_entity.to_vec();
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A handshake in memory offering `alpn`: the certificate the server
    /// showed and the protocol chosen, or `None` when it failed.
    fn handshake(
        server: &Arc<rustls::ServerConfig>,
        alpn: &[&[u8]],
    ) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let keep = Arc::new(Keep(Mutex::new(Vec::new())));
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(keep.clone())
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from("mx.a.test").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).ok()?;
            s.read_tls(&mut buf.as_slice()).ok()?;
            s.process_new_packets().ok()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).ok()?;
            c.read_tls(&mut buf.as_slice()).ok()?;
            c.process_new_packets().ok()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                let seen = keep.0.lock().expect("lock").clone();
                return Some((seen, s.alpn_protocol().map(<[u8]>::to_vec)));
            }
        }
        None
    }

    #[test]
    fn only_a_client_offering_acme_tls_alone_gets_the_challenge_certificate() {
        let tmp = tempfile::tempdir().expect("tmp");
        pair(tmp.path(), "mx.a.test");
        let s = CertStore::load(&tmp.path().join("tls.pem"), &tmp.path().join("tls.key"))
            .expect("load");
        let real = s.current_der();
        let mut cfg = (*s.server_config().expect("config")).clone();
        cfg.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            crate::acme::ACME_TLS_ALPN.to_vec(),
        ];
        let cfg = Arc::new(cfg);
        let acme: &[u8] = crate::acme::ACME_TLS_ALPN;
        // No challenge asked for: a validator gets no handshake at all.
        assert!(handshake(&cfg, &[acme]).is_none());
        let ch = crate::acme::alpn_challenge_cert("mx.a.test", &[9u8; 32]).expect("cert");
        let challenge = ch.cert[0].to_vec();
        s.acme_challenges().insert_alpn_for_test("mx.a.test", ch);
        let (seen, proto) = handshake(&cfg, &[acme]).expect("validator");
        assert_eq!(seen, challenge);
        assert_eq!(proto.as_deref(), Some(acme));
        // Anyone else, even offering acme-tls/1 among others, gets the real one.
        for offer in [
            &[b"h2" as &[u8], acme][..],
            &[acme, b"http/1.1"],
            &[b"h2"],
            &[],
        ] {
            let (seen, proto) = handshake(&cfg, offer).expect("client");
            assert_eq!(seen, real, "{offer:?}");
            assert_ne!(proto.as_deref(), Some(acme), "{offer:?}");
        }
    }

    #[test]
    fn an_installed_pair_is_served_at_once_and_a_mismatched_one_never_written() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        pair(tmp.path(), "one.test");
        let s = CertStore::load(&tmp.path().join("tls.pem"), &tmp.path().join("tls.key"))
            .expect("load");
        let (c2, k2) = crate::daemon::self_signed_tls(&["two.test".into()]).expect("cert");
        s.install_pair(k2.as_bytes(), c2.as_bytes())
            .expect("install");
        assert_eq!(
            s.current_der(),
            pem::parse(&c2).expect("pem").into_contents()
        );
        let key = tmp.path().join("tls.key");
        assert_eq!(std::fs::read_to_string(&key).expect("key"), k2);
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The watcher does not count the installed files as a change.
        assert!(!s.reload_if_changed().expect("unchanged"));
        // A chain whose key is another one: refused, nothing written.
        let (c3, _) = crate::daemon::self_signed_tls(&["three.test".into()]).expect("cert");
        assert!(s.install_pair(k2.as_bytes(), c3.as_bytes()).is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("tls.pem")).expect("pem"),
            c2
        );
        assert_eq!(
            s.current_der(),
            pem::parse(&c2).expect("pem").into_contents()
        );
    }

    #[test]
    fn a_new_pair_is_served_and_a_broken_one_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (c1, _) = pair(tmp.path(), "one.test");
        let s = CertStore::load(&tmp.path().join("tls.pem"), &tmp.path().join("tls.key"))
            .expect("load");
        let first = s.current_der();
        assert_eq!(first, pem::parse(&c1).expect("pem").into_contents());
        assert!(!s.reload_if_changed().expect("unchanged"));
        // A new pair.
        pair(tmp.path(), "two.test");
        bump(&tmp.path().join("tls.pem"));
        assert!(s.reload_if_changed().expect("reload"));
        let second = s.current_der();
        assert_ne!(first, second);
        // A certificate whose key is another one: refused, the second stays.
        let (c3, _) = crate::daemon::self_signed_tls(&["three.test".into()]).expect("cert");
        std::fs::write(tmp.path().join("tls.pem"), c3).expect("write");
        bump(&tmp.path().join("tls.pem"));
        let e = s.reload_if_changed().expect_err("mismatch");
        assert!(e.to_string().contains("tls.pem"), "{e}");
        assert_eq!(s.current_der(), second);
        // Reported once per change.
        assert!(!s.reload_if_changed().expect("same change"));
        std::fs::write(tmp.path().join("tls.pem"), "garbage").expect("write");
        bump(&tmp.path().join("tls.pem"));
        assert!(s.reload_if_changed().is_err());
        assert_eq!(s.current_der(), second);
        assert_eq!(
            s.reload_failures.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}

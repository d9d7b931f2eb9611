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
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

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

/// Reads a PEM certificate chain and its key.
fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let cert_pem =
        std::fs::read_to_string(cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key_pem =
        std::fs::read_to_string(key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> = pem::parse_many(&cert_pem)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents().into())
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert_path.display()));
    }
    let key = pem::parse(&key_pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let key: rustls_pki_types::PrivateKeyDer<'static> = match key.tag() {
        "PRIVATE KEY" => rustls_pki_types::PrivatePkcs8KeyDer::from(key.into_contents()).into(),
        "EC PRIVATE KEY" => rustls_pki_types::PrivateSec1KeyDer::from(key.into_contents()).into(),
        "RSA PRIVATE KEY" => rustls_pki_types::PrivatePkcs1KeyDer::from(key.into_contents()).into(),
        t => return Err(format!("{}: unsupported key type {t}", key_path.display())),
    };
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("{} and {}: {e}", cert_path.display(), key_path.display()))
}

impl CertStore {
    /// Reads the pair (an error names the file).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, String> {
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
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
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
    /// certificate is now served.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        {
            let mut last = self
                .stamps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *last == now {
                return Ok(false);
            }
            // Looked at once per change, whatever the outcome: a broken
            // pair is reported once, not every few seconds.
            *last = now;
        }
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
        // An ACME server validating TLS-ALPN-01 offers only `acme-tls/1`
        // (RFC 8737 §3): it gets the challenge certificate for the name it
        // asks, or no handshake at all.
        if hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == crate::acme::ACME_TLS_ALPN))
        {
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
        assert!(e.contains("tls.pem"), "{e}");
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

//! Automatic renewal of the member certificate (DESIGN.md §3): once two
//! thirds of its lifetime have passed, a fresh key and CSR for the same
//! domains go to the association over mutual TLS; the new certificate is
//! written to disk and swapped into the endpoint without a restart. Failures
//! are retried with backoff and raise an alarm (error log and counter).

use crate::association::AssociationLink;
use crate::tls::IdentitySlot;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where the member's certificate and key live on disk (rewritten on renewal).
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// Certificate, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (written 0600).
    pub key: PathBuf,
}

/// Renewal state and counters.
#[derive(Debug)]
pub struct Renewer {
    link: AssociationLink,
    identity: Arc<IdentitySlot>,
    files: Option<IdentityFiles>,
    current: Mutex<(String, String)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Renewals that succeeded.
    pub renewed: AtomicU64,
    /// Consecutive failures (the alarm is raised while this is non-zero).
    pub failures: AtomicU64,
}

/// Validity of a PEM certificate and its DNS SANs.
fn inspect(cert_pem: &str) -> Result<(i64, i64, Vec<String>), String> {
    let der = pem::parse(cert_pem)
        .map_err(|e| e.to_string())?
        .into_contents();
    let (_, c) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let mut sans = Vec::new();
    for ext in c.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                if let GeneralName::DNSName(d) = n {
                    sans.push((*d).to_owned());
                }
            }
        }
    }
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
        sans,
    ))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The moment renewal is due: two thirds into the validity period.
pub(crate) fn renewal_due(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

impl Renewer {
    /// A renewer for the identity currently made of `cert_pem` and `key_pem`.
    pub fn new(
        link: AssociationLink,
        identity: Arc<IdentitySlot>,
        cert_pem: String,
        key_pem: String,
        files: Option<IdentityFiles>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Arc<Self> {
        Arc::new(Self {
            link,
            identity,
            files,
            current: Mutex::new((cert_pem, key_pem)),
            provider,
            renewed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The current certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Renews now, whatever the lifetime left.
    pub async fn renew_now(&self) -> Result<(), String> {
        self.renew_with(&[]).await
    }

    /// The certificate's domains (SAN dNSNames).
    pub fn domains(&self) -> Result<Vec<String>, String> {
        inspect(&self.certificate_pem()).map(|(_, _, sans)| sans)
    }

    /// Renews now asking for `extra` domains besides the certificate's
    /// (domains a predecessor handed over to this member: the association
    /// grants only those).
    pub async fn renew_with(&self, extra: &[String]) -> Result<(), String> {
        let (cert_pem, key_pem) = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (_, _, mut sans) = inspect(&cert_pem)?;
        for d in extra {
            let d = d.to_ascii_lowercase();
            if !sans.contains(&d) {
                sans.push(d);
            }
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let csr = rcgen::CertificateParams::new(sans)
            .and_then(|p| p.serialize_request(&key))
            .and_then(|c| c.pem())
            .map_err(|e| e.to_string())?;
        let r = self
            .link
            .renew(&cert_pem, &key_pem, &csr)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        let new_key = key.serialize_pem();
        self.identity
            .set_pem(&r.certificate_pem, &new_key, &self.provider)
            .map_err(|e| e.to_string())?;
        if let Some(f) = &self.files {
            write_atomic(&f.key, new_key.as_bytes(), 0o600)?;
            write_atomic(&f.cert, r.certificate_pem.as_bytes(), 0o644)?;
        }
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (r.certificate_pem, new_key);
        self.renewed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(serial = %r.serial, not_after = r.not_after, "member certificate renewed");
        Ok(())
    }

    /// Renews whenever due until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut retry = Duration::from_secs(30);
        loop {
            let wait = match inspect(&self.certificate_pem()) {
                Ok((nb, na, _)) => {
                    let due = renewal_due(nb, na);
                    Duration::from_secs((due - now_unix()).clamp(0, 3600) as u64)
                }
                Err(e) => {
                    tracing::error!(error = %e, "member certificate unreadable: cannot plan renewal");
                    Duration::from_secs(3600)
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = token.cancelled() => return,
                }
            }
            match self.renew_now().await {
                Ok(()) => {
                    self.failures.store(0, Ordering::Relaxed);
                    retry = Duration::from_secs(30);
                }
                Err(e) => {
                    let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::error!(failures = n, error = %e, retry_in = ?retry,
                        "ALARM: member certificate renewal failing");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = token.cancelled() => return,
                    }
                    retry = (retry * 2).min(Duration::from_secs(3600));
                }
            }
        }
    }
}

fn write_atomic(path: &std::path::Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp~");
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    r.map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn due_at_two_thirds() {
        assert_eq!(super::renewal_due(0, 30), 20);
        assert_eq!(
            super::renewal_due(100, 100 + 30 * 86_400),
            100 + 20 * 86_400
        );
    }
}

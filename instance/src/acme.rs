//! Certificates from an ACME certificate authority (RFC 8555), obtained and
//! renewed by the daemon itself.
//!
//! With `[acme]` in the configuration, one task ([`Acme::run`]) keeps the
//! instance certificate (`[smtp] tls_cert` / `tls_key`, the one every
//! listener serves through [`crate::certs::CertStore`]) issued by the ACME
//! server for the names it should carry — the instance's host name and,
//! per mail domain, `mta-sts.`, `autoconfig.` and `autodiscover.` names,
//! or the list `[acme] names` gives:
//!
//! - **When**: at once when the certificate served is not from the ACME
//!   server (the self-signed one of `caliopen init`) or lacks a name; else
//!   at two thirds of its lifetime, or earlier inside the window the server
//!   suggests by ACME Renewal Information (RFC 9773) when its directory
//!   offers it (asked again when the server's `Retry-After` says).
//! - **Challenges**: HTTP-01 answered by the plain-HTTP listener
//!   `[acme] http_listen` (port 80 in production; it redirects everything
//!   else to HTTPS), or TLS-ALPN-01 (RFC 8737) answered by the web listener
//!   (when it is the one on port 443): the resolver of every TLS listener
//!   hands out the challenge certificate to a client that offers only the
//!   `acme-tls/1` protocol, and the web listener closes such connections
//!   after the handshake.
//! - **Swap**: the new key and chain are written whole (temporary file,
//!   fsync, rename, key first) and loaded at once: new connections of every
//!   listener get the new certificate without a restart.
//! - **Failure**: retried after 1 minute, doubling up to 6 hours; every
//!   failure is logged; after 3 in a row, or when the certificate served
//!   has less than a third of its lifetime (or 7 days) left, the failure is
//!   logged as an error and `caliopen_acme_renewal_failing` is 1 (an
//!   alarm to page on); `caliopen_acme_certificate_expiry_seconds` says how
//!   long the certificate served has left.
//!
//! The ACME account key is made on first use and kept in
//! `DATA/acme/account.json` (0600), with the directory it belongs to.

use crate::certs::CertStore;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// First delay after a failed attempt (then doubling).
const RETRY_FIRST: Duration = Duration::from_secs(60);
/// Longest delay between failed attempts.
const RETRY_MOST: Duration = Duration::from_secs(6 * 3600);
/// Failures in a row that raise the alarm whatever the time left.
const ALARM_AFTER: u32 = 3;
/// Longest sleep before the plan is looked at again (a new ARI window, a
/// certificate replaced by hand).
const RECHECK_MOST: Duration = Duration::from_secs(12 * 3600);
/// How long a renewal-information question (or restoring the account
/// for it) may take.
const ARI_DEADLINE: Duration = Duration::from_secs(30);
/// How long one whole attempt may take (order, challenges, finalisation).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(300);

/// The challenge type answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
pub enum ChallengeKind {
    /// HTTP-01 on `[acme] http_listen`.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01 on the web listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// What the renewal task needs (from `[acme]`).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The ACME server's directory URL.
    pub directory: String,
    /// Contact URLs of the account (`mailto:…`).
    pub contact: Vec<String>,
    /// Names the certificate carries.
    pub names: Vec<String>,
    /// A PEM root to trust for the ACME server's own HTTPS (a test or
    /// private CA); absent: the system's roots.
    pub server_ca: Option<PathBuf>,
    /// The challenge answered.
    pub challenge: ChallengeKind,
}

/// Challenge answers being served, shared by the task and the listeners.
#[derive(Debug, Default)]
pub struct Challenges {
    http: Mutex<HashMap<String, String>>,
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for an HTTP-01 token, while it is asked for.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, while it is asked for.
    pub fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn).get(&name.to_ascii_lowercase()).cloned()
    }

    /// Sets a TLS-ALPN-01 answer (for tests of the resolver).
    #[cfg(test)]
    pub fn insert_alpn_for_test(&self, name: &str, cert: CertifiedKey) {
        lock(&self.alpn).insert(name.to_ascii_lowercase(), Arc::new(cert));
    }

    fn clear(&self) {
        lock(&self.http).clear();
        lock(&self.alpn).clear();
    }
}

/// An error with its sources (the HTTP client's "client error (Connect)"
/// says why only there).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The self-signed certificate of TLS-ALPN-01 for `name`: the name as its
/// only SAN and the SHA-256 of the key authorization in a critical
/// acmeIdentifier extension (RFC 8737 §3).
pub fn alpn_challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: it parses the certificate as an end
    // entity, which refuses the critical extension RFC 8737 requires.
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
}

/// What is known of the certificate served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Its DNS names (subjectAltName).
    pub names: Vec<String>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Issuer equals subject (a self-signed certificate).
    pub self_signed: bool,
}

/// Reads the facts of a DER certificate.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(CertFacts {
        names,
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        self_signed: c.issuer() == c.subject(),
    })
}

/// Why and when to renew: `Some(reason)` to renew now, or the time of the
/// renewal at two thirds of the lifetime.
pub fn due(facts: &CertFacts, wanted: &[String], now: i64) -> Result<i64, &'static str> {
    if facts.self_signed {
        return Err("the certificate served is self-signed");
    }
    if wanted
        .iter()
        .any(|w| !facts.names.iter().any(|n| n.eq_ignore_ascii_case(w)))
    {
        return Err("the certificate served lacks a name");
    }
    let life = (facts.not_after - facts.not_before).max(0);
    let at = facts.not_before + life * 2 / 3;
    if at <= now {
        return Err("two thirds of its lifetime have passed");
    }
    Ok(at)
}

/// The renewal task.
pub struct Acme {
    settings: AcmeSettings,
    dir: PathBuf,
    certs: Arc<CertStore>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The account as kept on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

use crate::store::now_unix;

impl Acme {
    /// A task for `settings`, keeping the certificate files of `certs`
    /// issued; its state lives in `data/acme/`.
    pub fn new(
        settings: AcmeSettings,
        data: &std::path::Path,
        certs: Arc<CertStore>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            settings,
            dir: data.join("acme"),
            certs,
            metrics,
        }
    }

    /// Keeps the certificate issued until `token` is cancelled.
    pub async fn run(self, token: CancellationToken) {
        let mut failures = 0u32;
        let mut account: Option<Account> = None;
        loop {
            let facts = cert_facts(&self.certs.current_der()).ok();
            let now = now_unix();
            if let Some(f) = &facts {
                self.metrics
                    .acme_expiry_seconds
                    .store(f.not_after - now, Relaxed);
            }
            // The plan: renew now (with the reason), or sleep until due.
            let plan = match &facts {
                None => Err("the certificate served cannot be read"),
                Some(f) => due(f, &self.settings.names, now),
            };
            let wait = match plan {
                Err(why) => {
                    tracing::info!(reason = why, names = ?self.settings.names, "ACME: asking for a certificate");
                    None
                }
                Ok(at) => {
                    let mut wait = Duration::from_secs((at - now).max(0) as u64);
                    // The server may suggest an earlier window (RFC 9773):
                    // ask with the account (restored from its file after a
                    // restart), within a deadline.
                    if account.is_none() {
                        account = tokio::select! {
                            r = tokio::time::timeout(ARI_DEADLINE, self.account()) => match r {
                                Ok(Ok(a)) => Some(a),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "ACME: no account to ask for renewal information");
                                    None
                                }
                                Err(_) => None,
                            },
                            _ = token.cancelled() => return,
                        };
                    }
                    let ari = match &account {
                        Some(acct) => tokio::select! {
                            r = tokio::time::timeout(ARI_DEADLINE, self.ari_window(acct)) => r.ok().flatten(),
                            _ = token.cancelled() => return,
                        },
                        None => None,
                    };
                    {
                        if let Some((start, end, retry)) = ari {
                            let pick = start + (end - start).max(0) / 2;
                            if pick <= now {
                                tracing::info!("ACME: the server's renewal window is open");
                                wait = Duration::ZERO;
                            } else {
                                wait = wait.min(Duration::from_secs((pick - now) as u64));
                            }
                            wait = wait.min(retry.max(Duration::from_secs(60)));
                        }
                    }
                    (!wait.is_zero()).then_some(wait.min(RECHECK_MOST))
                }
            };
            if let Some(wait) = wait {
                tracing::debug!(
                    seconds = wait.as_secs(),
                    "ACME: next look at the certificate"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = token.cancelled() => return,
                }
            }
            let attempt = async {
                if account.is_none() {
                    account = Some(self.account().await?);
                }
                let acct = account.as_ref().ok_or("no account")?;
                self.obtain(acct, facts.as_ref()).await
            };
            let r = tokio::select! {
                r = tokio::time::timeout(ATTEMPT_DEADLINE, attempt) => {
                    r.unwrap_or_else(|_| Err("the attempt took too long".to_owned()))
                }
                _ = token.cancelled() => return,
            };
            self.certs.acme_challenges().clear();
            match r {
                Ok(f) => {
                    failures = 0;
                    self.metrics.acme_renewed.fetch_add(1, Relaxed);
                    self.metrics.acme_failing.store(0, Relaxed);
                    tracing::info!(
                        names = ?f.names,
                        not_after = f.not_after,
                        "ACME: new certificate served by every listener"
                    );
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.acme_failed.fetch_add(1, Relaxed);
                    let delay = RETRY_FIRST
                        .saturating_mul(1u32 << (failures - 1).min(16))
                        .min(RETRY_MOST);
                    let urgent = facts.as_ref().is_none_or(|f| {
                        let left = f.not_after - now_unix();
                        let life = f.not_after - f.not_before;
                        f.self_signed || left < life / 3 || left < 7 * 86_400
                    });
                    if failures >= ALARM_AFTER || urgent {
                        self.metrics.acme_failing.store(1, Relaxed);
                        tracing::error!(error = %e, failures, retry_in_s = delay.as_secs(), "ACME: renewal keeps failing");
                    } else {
                        tracing::warn!(error = %e, failures, retry_in_s = delay.as_secs(), "ACME: renewal failed");
                    }
                    // An account the server no longer knows (deactivated,
                    // or another server behind the same URL) is set aside
                    // and a new one made at the next attempt.
                    if e.contains("accountDoesNotExist") || e.contains("unauthorized") {
                        account = None;
                        let path = self.dir.join("account.json");
                        let aside = self
                            .dir
                            .join(format!("account.json.refused-{}", now_unix()));
                        if std::fs::rename(&path, &aside).is_ok() {
                            tracing::warn!(file = %aside.display(), "ACME: the server refused the account: set aside, a new one comes next");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = token.cancelled() => return,
                    }
                }
            }
        }
    }

    /// The suggested window (Unix start, end) and when to ask again, when
    /// the server offers ARI and the certificate served came from it.
    async fn ari_window(&self, acct: &Account) -> Option<(i64, i64, Duration)> {
        let der = rustls_pki_types::CertificateDer::from(self.certs.current_der());
        let id = instant_acme::CertificateIdentifier::try_from(&der).ok()?;
        match acct.renewal_info(&id).await {
            Ok((info, retry)) => Some((
                info.suggested_window.start.unix_timestamp(),
                info.suggested_window.end.unix_timestamp(),
                retry,
            )),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "ACME: renewal information not available");
                None
            }
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        match &self.settings.server_ca {
            Some(p) => Account::builder_with_root(p)
                .map_err(|e| format!("ACME server CA {}: {e}", p.display())),
            None => Account::builder().map_err(|e| format!("ACME HTTP client: {e}")),
        }
    }

    /// The account: restored from `DATA/acme/account.json` when it belongs
    /// to this directory, else created (and kept there, 0600).
    async fn account(&self) -> Result<Account, String> {
        let path = self.dir.join("account.json");
        if let Ok(text) = std::fs::read(&path) {
            match serde_json::from_slice::<StoredAccount>(&text) {
                Ok(s) if s.directory == self.settings.directory => {
                    return self
                        .builder()?
                        .from_credentials(s.credentials)
                        .await
                        .map_err(|e| {
                            format!("ACME account from {}: {}", path.display(), chain(&e))
                        });
                }
                Ok(_) => {
                    tracing::info!("ACME: another directory than the account's: a new account")
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %path.display(), "ACME: unreadable account file: a new account")
                }
            }
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (acct, creds) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await
            .map_err(|e| {
                format!(
                    "ACME account creation at {}: {}",
                    self.settings.directory,
                    chain(&e)
                )
            })?;
        let stored = serde_json::to_vec_pretty(&StoredAccount {
            directory: self.settings.directory.clone(),
            credentials: creds,
        })
        .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        crate::files::write_private(&path, &stored).map_err(|e| e.to_string())?;
        tracing::info!(id = acct.id(), "ACME: account created");
        Ok(acct)
    }

    /// One order: challenges answered, a new key and CSR, the chain
    /// fetched, written and served. Returns the new certificate's facts.
    async fn obtain(
        &self,
        acct: &Account,
        current: Option<&CertFacts>,
    ) -> Result<CertFacts, String> {
        let ids: Vec<Identifier> = self
            .settings
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut new = NewOrder::new(&ids);
        // Name the certificate this one replaces (RFC 9773 §5) when the
        // server knows it: an ARI-aware CA then exempts the renewal from
        // rate limits.
        let der = rustls_pki_types::CertificateDer::from(self.certs.current_der());
        let replaces = current
            .filter(|f| !f.self_signed)
            .and_then(|_| instant_acme::CertificateIdentifier::try_from(&der).ok());
        let ari = replaces.is_some() && self.ari_window(acct).await.is_some();
        if let (true, Some(r)) = (ari, replaces) {
            new = new.replaces(r);
        }
        let mut order = match acct.new_order(&new).await {
            Ok(o) => o,
            // A replacement the server already saw (an earlier attempt got
            // its certificate but could not install it): order afresh.
            Err(e) if ari && chain(&e).contains("alreadyReplaced") => acct
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(|e| format!("new order: {}", chain(&e)))?,
            Err(e) => return Err(format!("new order: {}", chain(&e))),
        };
        let challenges = self.certs.acme_challenges();
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| format!("authorization: {}", chain(&e)))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => return Err(format!("authorization for {:?} is {s:?}", a.identifier())),
            }
            let kind = match self.settings.challenge {
                ChallengeKind::Http01 => ChallengeType::Http01,
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut ch = a
                .challenge(kind.clone())
                .ok_or_else(|| format!("the server offers no {kind:?} challenge"))?;
            let ka = ch.key_authorization();
            match self.settings.challenge {
                ChallengeKind::Http01 => {
                    lock(&challenges.http).insert(ch.token.clone(), ka.as_str().to_owned());
                }
                ChallengeKind::TlsAlpn01 => {
                    let name = ch.identifier().to_string().to_ascii_lowercase();
                    let cert = alpn_challenge_cert(&name, ka.digest().as_ref())?;
                    lock(&challenges.alpn).insert(name, Arc::new(cert));
                }
            }
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge ready: {}", chain(&e)))?;
        }
        let polling = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(2.0)
            .timeout(Duration::from_secs(120));
        let status = order
            .poll_ready(&polling)
            .await
            .map_err(|e| format!("order: {}", chain(&e)))?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default();
            return Err(format!("order is {status:?} {why}"));
        }
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(self.settings.names.clone())
            .map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("CSR: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {}", chain(&e)))?;
        let chain = order
            .poll_certificate(&polling)
            .await
            .map_err(|e| format!("certificate: {}", chain(&e)))?;
        self.install(&key.serialize_pem(), &chain)
    }

    /// Writes the pair (key first, each whole) and serves it at once.
    fn install(&self, key_pem: &str, chain_pem: &str) -> Result<CertFacts, String> {
        let first = pem::parse_many(chain_pem)
            .map_err(|e| format!("the chain from the server: {e}"))?
            .into_iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .ok_or("the server's answer holds no certificate")?;
        let facts = cert_facts(first.contents())?;
        self.certs
            .install_pair(key_pem.as_bytes(), chain_pem.as_bytes())
            .map_err(|e| format!("the new certificate: {e}"))?;
        self.metrics
            .acme_expiry_seconds
            .store(facts.not_after - now_unix(), Relaxed);
        Ok(facts)
    }
}

/// Most connections at once on the HTTP-01 listener.
const HTTP_MAX_CONNECTIONS: usize = 256;
/// Most connections at once from one address on the HTTP-01 listener.
const HTTP_MAX_PER_IP: usize = 16;
/// Longest life of one HTTP-01 connection.
const HTTP_CONN_DEADLINE: Duration = Duration::from_secs(15);

/// The answer of the plain-HTTP listener to one request: the key
/// authorization of an HTTP-01 token being validated, 404 for any other
/// token, and a permanent redirect to HTTPS (`https_port`, the web
/// listener's) for everything else when there is a web listener.
pub fn http_answer(
    challenges: &Challenges,
    method: &hyper::Method,
    host: Option<&str>,
    path_and_query: &str,
    https_port: Option<u16>,
) -> (hyper::StatusCode, Vec<(&'static str, String)>, String) {
    use hyper::StatusCode;
    let text = |code: StatusCode, body: &str| {
        (
            code,
            vec![("content-type", "text/plain; charset=utf-8".to_owned())],
            body.to_owned(),
        )
    };
    if *method != hyper::Method::GET && *method != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    if let Some(token) = path_and_query.strip_prefix("/.well-known/acme-challenge/") {
        return match challenges.http_answer(token) {
            Some(ka) => (
                StatusCode::OK,
                vec![("content-type", "application/octet-stream".to_owned())],
                ka,
            ),
            None => text(StatusCode::NOT_FOUND, "no such challenge\n"),
        };
    }
    let Some(port) = https_port else {
        return text(StatusCode::NOT_FOUND, "nothing here over plain HTTP\n");
    };
    // The host goes into a header: only a DNS name or an IP address.
    let name = host.map(|h| {
        if h.starts_with('[') {
            // [v6]:port or [v6]
            h.split_once("]:").map_or(h, |(n, _)| &h[..n.len() + 1])
        } else {
            h.split_once(':').map_or(h, |(n, _)| n)
        }
    });
    let Some(name) = name.filter(|n| {
        crate::config::is_dns_name(n.trim_end_matches('.'))
            || n.parse::<std::net::Ipv4Addr>().is_ok()
            || (n.starts_with('[') && n.ends_with(']'))
                && n[1..n.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()
    }) else {
        return text(StatusCode::BAD_REQUEST, "a Host header is needed\n");
    };
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    let location = if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    };
    (
        StatusCode::MOVED_PERMANENTLY,
        vec![("location", location)],
        String::new(),
    )
}

/// Serves HTTP-01 answers (and redirects to HTTPS) on `listener` until
/// `token` is cancelled: HTTP/1.1 only, at most [`HTTP_MAX_CONNECTIONS`]
/// at once, each for at most [`HTTP_CONN_DEADLINE`].
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    challenges: Arc<Challenges>,
    https_port: Option<u16>,
    token: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    let gate = crate::limits::Gate::new(HTTP_MAX_CONNECTIONS, HTTP_MAX_PER_IP);
    loop {
        let Some((stream, peer)) = crate::limits::accept(&listener, &token, "acme-http").await
        else {
            return;
        };
        let Ok(slot) = gate.admit(peer.ip()) else {
            tracing::debug!(%peer, "ACME HTTP listener: connection limit, closed");
            continue;
        };
        let challenges = challenges.clone();
        let token = token.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let host = req
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let pq = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "/".to_owned());
                let (code, headers, body) =
                    http_answer(&challenges, req.method(), host.as_deref(), &pq, https_port);
                if pq.starts_with("/.well-known/acme-challenge/") {
                    tracing::info!(%peer, status = code.as_u16(), "ACME: HTTP-01 challenge asked");
                }
                let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                *r.status_mut() = code;
                for (k, v) in headers {
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&v) {
                        r.headers_mut().insert(k, v);
                    }
                }
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(8192)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                r = tokio::time::timeout(HTTP_CONN_DEADLINE, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(error = %e, "ACME HTTP connection ended with an error");
                    }
                }
                _ = token.cancelled() => {}
            }
        });
    }
}

/// The names an instance's certificate should carry by default: its host
/// name, and per mail domain the names the web listener answers for
/// (MTA-STS policy, client autoconfiguration) when it runs.
pub fn default_names(hostname: &str, domains: &[String], web: bool) -> Vec<String> {
    let mut v = vec![hostname.to_ascii_lowercase()];
    if web {
        for d in domains {
            for p in ["mta-sts", "autoconfig", "autodiscover"] {
                v.push(format!("{p}.{}", d.to_ascii_lowercase()));
            }
        }
    }
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(nb: i64, na: i64, names: &[&str], self_signed: bool) -> CertFacts {
        CertFacts {
            names: names.iter().map(|s| s.to_string()).collect(),
            not_before: nb,
            not_after: na,
            self_signed,
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_or_at_once() {
        let wanted = vec!["mx.a.test".to_owned()];
        let f = facts(0, 90, &["mx.a.test"], false);
        assert_eq!(due(&f, &wanted, 10), Ok(60));
        assert!(due(&f, &wanted, 60).is_err());
        assert!(due(&facts(0, 90, &["mx.a.test"], true), &wanted, 10).is_err());
        assert!(due(&facts(0, 90, &["other.test"], false), &wanted, 10).is_err());
        // Names compare without case.
        assert_eq!(
            due(&facts(0, 90, &["MX.A.test"], false), &wanted, 10),
            Ok(60)
        );
    }

    #[test]
    fn facts_of_a_self_signed_certificate() {
        let (c, _) =
            crate::daemon::self_signed_tls(&["mx.a.test".into(), "a.test".into()]).expect("cert");
        let der = pem::parse(c).expect("pem").into_contents();
        let f = cert_facts(&der).expect("facts");
        assert!(f.self_signed);
        assert_eq!(f.names, vec!["mx.a.test", "a.test"]);
        assert!(f.not_after > f.not_before);
        assert!(cert_facts(b"junk").is_err());
    }

    #[test]
    fn tls_alpn_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let ck = alpn_challenge_cert("mx.a.test", &digest).expect("cert");
        let der = ck.cert[0].to_vec();
        let (_, c) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).expect("oid");
        let ext = c
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier");
        assert!(ext.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
        assert_eq!(cert_facts(&der).expect("facts").names, vec!["mx.a.test"]);
    }

    #[test]
    fn plain_http_answers_challenges_and_redirects_the_rest() {
        use hyper::{Method, StatusCode};
        let ch = Challenges::default();
        lock(&ch.http).insert("tok".into(), "tok.thumb".into());
        let get = Method::GET;
        let (code, _, body) = http_answer(
            &ch,
            &get,
            Some("mx.a.test"),
            "/.well-known/acme-challenge/tok",
            None,
        );
        assert_eq!((code, body.as_str()), (StatusCode::OK, "tok.thumb"));
        let (code, ..) = http_answer(
            &ch,
            &get,
            Some("mx.a.test"),
            "/.well-known/acme-challenge/other",
            Some(443),
        );
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, h, _) = http_answer(&ch, &get, Some("mx.a.test:80"), "/login?x=1", Some(443));
        assert_eq!(code, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(h[0].1, "https://mx.a.test/login?x=1");
        let (_, h, _) = http_answer(&ch, &get, Some("[::1]:80"), "/", Some(8443));
        assert_eq!(h[0].1, "https://[::1]:8443/");
        // A Host that is not a name is not reflected into a header.
        let (code, ..) = http_answer(&ch, &get, Some("evil.test\r\nX: y"), "/", Some(443));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, ..) = http_answer(&ch, &get, None, "/", Some(443));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, ..) = http_answer(&ch, &get, Some("mx.a.test"), "/", None);
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, ..) = http_answer(&ch, &Method::POST, Some("mx.a.test"), "/", Some(443));
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        ch.clear();
        let (code, ..) = http_answer(&ch, &get, None, "/.well-known/acme-challenge/tok", None);
        assert_eq!(code, StatusCode::NOT_FOUND);
    }

    #[test]
    fn default_names_follow_the_web_listener() {
        assert_eq!(
            default_names("MX.a.test", &["a.test".into()], false),
            vec!["mx.a.test"]
        );
        assert_eq!(
            default_names("mx.a.test", &["a.test".into()], true),
            vec![
                "mx.a.test",
                "mta-sts.a.test",
                "autoconfig.a.test",
                "autodiscover.a.test"
            ]
        );
    }
}

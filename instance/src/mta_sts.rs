//! MTA-STS (RFC 8461) for outgoing mail: before delivering directly to a
//! domain's MX hosts, the queue asks whether the domain publishes a policy
//! (`_mta-sts.<domain>` TXT), fetches it over HTTPS with a verified
//! certificate (`https://mta-sts.<domain>/.well-known/mta-sts.txt`), and
//! caches it (tree `mta_sts`, for `max_age`; a cached policy survives a
//! restart and outlives a missing TXT record, so that an attacker who
//! strips DNS answers cannot downgrade it). Under `mode: enforce` only MX
//! hosts the policy names are used, and only over STARTTLS with a
//! certificate valid for the host name; anything else is deferred (and
//! bounced at the end of the queue lifetime). Under `mode: testing`
//! delivery goes on as before and what enforcement would have refused is
//! logged and counted.

use crate::sender_auth::{LookupType, SenderAuth};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The largest policy accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The longest `max_age` a policy may ask (RFC 8461 §3.2: about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only matching MX hosts, only over verified TLS.
    Enforce,
    /// Report, deliver anyway.
    Testing,
    /// No policy.
    None,
}

/// A domain's policy, as fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The `id` of the TXT record it was fetched for.
    pub id: String,
    /// Its mode.
    pub mode: Mode,
    /// MX host patterns (`mx.example.org`, `*.example.org`).
    pub mx: Vec<String>,
    /// Seconds it may be cached.
    pub max_age: u64,
    /// Unix seconds it was fetched.
    pub fetched_at: i64,
}

/// A policy document that does not follow RFC 8461 §3.2 (the recipient
/// domain's fault: the previous policy, if any, holds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line without `key: value`.
    #[error("not a `key: value` line: {0:?}")]
    NotKeyValue(String),
    /// A mode other than enforce, testing, none.
    #[error("unknown mode {0:?}")]
    UnknownMode(String),
    /// `max_age` is not a number.
    #[error("max_age is not a number: {0:?}")]
    MaxAge(String),
    /// An `mx` line that is not a host name pattern.
    #[error("invalid mx pattern {0:?}")]
    MxPattern(String),
    /// Not `version: STSv1`.
    #[error("version is not STSv1")]
    Version,
    /// A required field is missing (`mode`, `max_age`, or `mx` unless the
    /// mode is none).
    #[error("no {0}")]
    Missing(&'static str),
}

/// An HTTPS exchange with a policy or report host failed. `BadUri` is bad
/// input (a report address we will not post to); `Timeout`, `Connect`,
/// `Tls`, `Http`, `Status`, `NotText`, `Body` are the peer's (unreachable,
/// an unverified certificate, a wrong answer); `Resolve` is our resolver's.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The URI is not one we post to.
    #[error("{uri}: {why}")]
    BadUri {
        /// The URI.
        uri: String,
        /// Why.
        why: &'static str,
    },
    /// The whole exchange took too long.
    #[error("{0} timed out")]
    Timeout(String),
    /// The host's addresses could not be had.
    #[error("{0}")]
    Resolve(String),
    /// No connection to any of the host's addresses.
    #[error("{0}")]
    Connect(String),
    /// TLS failed (the certificate did not verify for the name, …).
    #[error("TLS with {host}: {source}")]
    Tls {
        /// The host.
        host: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("{what} {host}: {source}")]
    Http {
        /// Which step.
        what: &'static str,
        /// The host.
        host: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The host answered with another status than asked.
    #[error("{host} answered {status}")]
    Status {
        /// The host.
        host: String,
        /// Its answer.
        status: hyper::StatusCode,
    },
    /// A policy not served as text/plain (RFC 8461 §3.3).
    #[error("{host} sent {content_type:?}, not text/plain")]
    NotText {
        /// The host.
        host: String,
        /// What it said it sent.
        content_type: String,
    },
    /// The policy's body was too long, cut, or not UTF-8.
    #[error("policy from {host}: {problem}")]
    Body {
        /// The host.
        host: String,
        /// What was wrong.
        problem: String,
    },
}

impl Policy {
    /// Parses a policy document (RFC 8461 §3.2): `key: value` lines, CRLF
    /// or LF; `version: STSv1`, `mode`, `max_age` and (but for `none`) at
    /// least one `mx` are required; unknown keys are ignored.
    pub fn parse(text: &str, id: &str, fetched_at: i64) -> Result<Self, PolicyError> {
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| PolicyError::NotKeyValue(line.to_owned()))?;
            let v = v.trim();
            match k.trim() {
                "version" => version = Some(v.to_owned()),
                "mode" => {
                    mode = Some(match v {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(PolicyError::UnknownMode(other.to_owned())),
                    })
                }
                "max_age" => {
                    let n: u64 = v.parse().map_err(|_| PolicyError::MaxAge(v.to_owned()))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => {
                    let p = v.trim_end_matches('.').to_ascii_lowercase();
                    let host = p.strip_prefix("*.").unwrap_or(&p);
                    if !crate::config::is_dns_name(host) {
                        return Err(PolicyError::MxPattern(v.to_owned()));
                    }
                    mx.push(p);
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err(PolicyError::Version);
        }
        let mode = mode.ok_or(PolicyError::Missing("mode"))?;
        let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::Missing("mx"));
        }
        Ok(Self {
            id: id.to_owned(),
            mode,
            mx,
            max_age,
            fetched_at,
        })
    }

    /// True when `host` is one of the MX hosts the policy allows: an exact
    /// name, or `*.domain` for one more label on the left (RFC 8461 §4.1).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }

    fn fresh(&self, now: i64) -> bool {
        self.fetched_at
            .saturating_add(i64::try_from(self.max_age).unwrap_or(i64::MAX))
            > now
    }
}

/// The `id` of a `v=STSv1; id=…` record, among the TXT records of a name.
fn record_id(records: &[String]) -> Option<String> {
    use mail_auth::common::parse::TxtRecordParser;
    let mut ids = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .filter_map(|r| mail_auth::mta_sts::MtaSts::parse(r.as_bytes()).ok());
    let first = ids.next()?;
    // More than one record: treated as none (RFC 8461 §3.1).
    ids.next().is_none().then_some(first.id)
}

/// Policies of recipient domains: lookup, fetch, cache.
pub struct MtaSts {
    resolver: SenderAuth,
    tls: Arc<rustls::ClientConfig>,
    port: u16,
    /// Fetched policies (none: `caliopen dns check`, which only fetches).
    cache: Option<sled::Tree>,
    /// (domain, id) → when a fetch last failed: not tried again for
    /// [`RETRY_FAILED_FETCH`] (each try may take the whole fetch timeout,
    /// and the queue delivers one message at a time).
    failed: std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>,
}

/// How long a failed policy fetch is not tried again.
pub const RETRY_FAILED_FETCH: Duration = Duration::from_secs(600);

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaSts").field("port", &self.port).finish()
    }
}

impl MtaSts {
    /// Policies looked up through `resolver`, fetched on `port` (443) with
    /// the web PKI and `extra_roots` (PEM) as trust anchors, cached in `db`
    /// (when given).
    pub fn new(
        resolver: SenderAuth,
        extra_roots: Option<&[u8]>,
        port: u16,
        db: Option<&sled::Db>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_roots {
            for b in pem::parse_many(pem).map_err(|e| format!("extra roots: {e}"))? {
                if b.tag() == "CERTIFICATE" {
                    roots
                        .add(b.into_contents().into())
                        .map_err(|e| format!("extra root: {e}"))?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            resolver,
            tls: Arc::new(tls),
            port,
            cache: match db {
                Some(db) => Some(db.open_tree("mta_sts").map_err(|e| e.to_string())?),
                None => None,
            },
            failed: Default::default(),
        })
    }

    fn cached(&self, domain: &str) -> Option<Policy> {
        let v = self.cache.as_ref()?.get(domain.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// The policy that applies to mail for `domain` at `now` (none: no
    /// policy, or `mode: none`).
    pub async fn policy(&self, domain: &str, now: i64) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain).filter(|p| p.fresh(now));
        let txt = self
            .resolver
            .lookup(&format!("_mta-sts.{domain}"), LookupType::Txt)
            .await;
        let id = match txt {
            Ok(records) => record_id(&records),
            Err(e) => {
                tracing::debug!(%domain, error = %e, "MTA-STS record lookup failed");
                None
            }
        };
        let policy = match (id, cached) {
            // No record (or no answer): a cached policy still holds.
            (None, c) => c,
            (Some(id), Some(c)) if c.id == id => Some(c),
            (Some(id), c) if self.failed_lately(&domain, &id) => c,
            (Some(id), c) => match self.fetch(&domain).await {
                Ok(text) => match Policy::parse(&text, &id, now) {
                    Ok(p) => {
                        tracing::info!(%domain, mode = ?p.mode, mx = ?p.mx, max_age = p.max_age, "MTA-STS policy fetched");
                        if let (Ok(json), Some(cache)) = (serde_json::to_vec(&p), &self.cache) {
                            if let Err(e) = cache.insert(domain.as_bytes(), json) {
                                tracing::warn!(%domain, error = %e, "could not cache an MTA-STS policy");
                            }
                        }
                        Some(p)
                    }
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, "MTA-STS policy unreadable: the previous one (if any) holds");
                        c
                    }
                },
                Err(e) => {
                    tracing::info!(%domain, error = %e, "MTA-STS policy not fetched: the previous one (if any) holds");
                    self.fetch_failed(&domain, &id);
                    c
                }
            },
        };
        policy.filter(|p| p.mode != Mode::None)
    }

    fn failed_lately(&self, domain: &str, id: &str) -> bool {
        let mut m = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, t| t.elapsed() < RETRY_FAILED_FETCH);
        m.contains_key(&(domain.to_owned(), id.to_owned()))
    }

    fn fetch_failed(&self, domain: &str, id: &str) {
        let mut m = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() < 10_000 {
            m.insert(
                (domain.to_owned(), id.to_owned()),
                std::time::Instant::now(),
            );
        }
    }

    /// GET `https://mta-sts.<domain>/.well-known/mta-sts.txt`: a verified
    /// certificate for that name, status 200, `text/plain`, no redirect,
    /// at most [`MAX_POLICY_BYTES`].
    pub async fn fetch(&self, domain: &str) -> Result<String, HttpsError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner(domain))
            .await
            .map_err(|_| HttpsError::Timeout(format!("fetching the policy of {domain}")))?
    }

    /// A verified TLS connection to `host:port` (addresses from our
    /// resolver), speaking HTTP/1.1.
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<
        hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        HttpsError,
    > {
        let ips = self
            .resolver
            .addresses(host)
            .await
            .map_err(HttpsError::Resolve)?;
        let mut tcp = None;
        let mut last = format!("{host}: no address");
        for ip in &ips {
            match tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::TcpStream::connect((*ip, port)),
            )
            .await
            {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("connect to {host} ({ip}:{port}): {e}"),
                Err(_) => last = format!("connect to {host} ({ip}:{port}) timed out"),
            }
        }
        let tcp = tcp.ok_or(HttpsError::Connect(last))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
            HttpsError::BadUri {
                uri: host.to_owned(),
                why: "not a DNS name",
            }
        })?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|source| HttpsError::Tls {
                host: host.to_owned(),
                source,
            })?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|source| HttpsError::Http {
                    what: "HTTP with",
                    host: host.to_owned(),
                    source,
                })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// POSTs a gzipped TLS report (RFC 8460 §5.3.1) to an `https://` URI
    /// over verified TLS; any 2xx answer is success.
    pub async fn post_report(&self, uri: &str, gz: &[u8]) -> Result<(), HttpsError> {
        let bad = |why| HttpsError::BadUri {
            uri: uri.to_owned(),
            why,
        };
        let rest = uri
            .get(8..)
            .filter(|_| uri[..8].eq_ignore_ascii_case("https://"))
            .ok_or_else(|| bad("not an https URI"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority, 443),
        };
        // A name (resolved by our resolver, certificate verified for it),
        // never an address literal.
        let top_is_numeric = host
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if !crate::config::is_dns_name(host) || top_is_numeric {
            return Err(bad("the host is not a DNS name"));
        }
        let mut sender = self.connect(host, port).await?;
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "caliopen")
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(gz)))
            .map_err(|_| bad("not a valid request target"))?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|source| HttpsError::Http {
                what: "POST to",
                host: host.to_owned(),
                source,
            })?;
        if !res.status().is_success() {
            return Err(HttpsError::Status {
                host: host.to_owned(),
                status: res.status(),
            });
        }
        Ok(())
    }

    async fn fetch_inner(&self, domain: &str) -> Result<String, HttpsError> {
        use http_body_util::BodyExt;
        let host = format!("mta-sts.{domain}");
        let mut sender = self.connect(&host, self.port).await?;
        let req = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, &host)
            .header(hyper::header::USER_AGENT, "caliopen")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .map_err(|_| HttpsError::BadUri {
                uri: host.clone(),
                why: "not a valid host",
            })?;
        let res = sender
            .send_request(req)
            .await
            .map_err(|source| HttpsError::Http {
                what: "GET from",
                host: host.clone(),
                source,
            })?;
        if res.status() != hyper::StatusCode::OK {
            return Err(HttpsError::Status {
                host,
                status: res.status(),
            });
        }
        let ct = res
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/plain")
        {
            return Err(HttpsError::NotText {
                host,
                content_type: ct.to_owned(),
            });
        }
        let body = http_body_util::Limited::new(res.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| HttpsError::Body {
                host: host.clone(),
                problem: e.to_string(),
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| HttpsError::Body {
            host,
            problem: "not UTF-8".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_parses_and_matches_its_hosts() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.org\r\nmx: *.backup.example.org\r\nmax_age: 86400\r\nextension: ignored\r\n",
            "20261201",
            1000,
        )
        .expect("policy");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 86400);
        assert!(p.matches("MX1.example.org."));
        assert!(p.matches("a.backup.example.org"));
        assert!(!p.matches("a.b.backup.example.org"), "one label only");
        assert!(!p.matches("backup.example.org"));
        assert!(!p.matches("mx2.example.org"));
        assert!(p.fresh(1000 + 86399) && !p.fresh(1000 + 86400));
        // LF lines, huge max_age capped.
        let p = Policy::parse(
            "version: STSv1\nmode: testing\nmx: mx\nmax_age: 999999999999\n",
            "1",
            0,
        )
        .expect("policy");
        assert_eq!(p.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (text, why) in [
            ("mode: enforce\nmx: a\nmax_age: 1\n", "version"),
            ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "mode"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a\n", "max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
                "mx pattern",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
                "max_age",
            ),
            ("<html>", "key: value"),
        ] {
            let e = Policy::parse(text, "x", 0).expect_err(text).to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(Policy::parse("version: STSv1\nmode: none\nmax_age: 1\n", "x", 0).is_ok());
    }

    #[test]
    fn exactly_one_sts_record_counts() {
        assert_eq!(
            record_id(&["v=STSv1; id=abc".into()]).as_deref(),
            Some("abc")
        );
        assert_eq!(
            record_id(&["v=spf1 -all".into(), "v=STSv1; id=abc".into()]).as_deref(),
            Some("abc")
        );
        assert_eq!(
            record_id(&["v=STSv1; id=a".into(), "v=STSv1; id=b".into()]),
            None
        );
        assert_eq!(record_id(&[]), None);
    }
}

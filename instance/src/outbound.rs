//! Outbound SMTP: a durable queue of messages for the world outside the
//! labelled network, delivered with lettre through a per-domain route, the
//! configured relay, or — when DNS is on and no relay is set — directly to
//! the domain's MX hosts (looked up at each attempt, best preference first,
//! the domain itself when it has no MX record — the implicit MX — RFC 5321
//! §5.1; a null MX refused, RFC 7505).
//! STARTTLS (RFC 3207) is tried first and its outcome recorded; a relay
//! that does not offer it (or fails it) gets the message in clear, logged
//! as such; under an MTA-STS policy in force it is required (RFC 8461 §5).
//! Transient failures are retried with capped exponential backoff; a
//! permanent failure or the end of the lifetime bounces with a DSN
//! (RFC 3464, `dsn.rs`). RFC 5321 §4.5.4.1 asks for retry intervals of "in
//! general" at least 30 minutes, allowing "more sophisticated and
//! variable strategies", and a give-up time of at least 4–5 days: the
//! defaults (`[smtp]`, config.rs) retry after 60 s, doubling up to 1 h, so
//! the first retries come sooner than 30 minutes, and give up after 120 h
//! (5 days).
//!
//! Trees: `smtp_queue` (sequence u64 BE → entry JSON), `smtp_queue_raw`
//! (sequence → message bytes).

use crate::delivery::{MailService, OutletFuture, QueueError, SmtpOutlet};

/// The name the SMTP queue's failures carry.
const QUEUE: &str = "SMTP queue";

use lettre::address::Envelope;
use lettre::transport::smtp::client::TlsParameters;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A failed relay attempt.
#[derive(Debug)]
enum SendError {
    /// The relay refused for good (5xx): bounce.
    Permanent(String),
    /// Try again later (4xx, connection, TLS).
    Transient(String),
}

/// The longest one delivery attempt of `len` bytes may take (connection,
/// TLS, the transaction): ten minutes — RFC 5321 §4.5.3.2 lets a server
/// take that long after the final dot alone — plus one second per 64 KiB
/// of data. Past it the attempt is a temporary failure, retried later
/// (never re-sent at once another way: the server may have taken it).
fn attempt_timeout(len: usize) -> Duration {
    Duration::from_secs(600 + (len as u64 >> 16))
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// The server answered (or the SMTP or TLS layer failed): lettre says
    /// whether it is permanent or transient.
    Smtp(lettre::transport::smtp::Error),
    /// STARTTLS failed (refused, or the handshake failed).
    Tls(lettre::transport::smtp::Error),
    /// The connection could not be made.
    Connect(std::io::Error),
    /// STARTTLS was required and is not offered.
    NoStartTls,
    /// The attempt took longer than [`attempt_timeout`] (seconds).
    Timeout(u64),
}

impl AttemptError {
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Smtp(e) if e.is_permanent())
    }

    /// A temporary failure that another way of sending would not cure
    /// (or might duplicate): retried later. Only a TLS problem, or a
    /// missing STARTTLS, leads to the next way (unauthenticated TLS, clear).
    fn is_transient(&self) -> bool {
        match self {
            Self::Smtp(e) => !e.is_permanent(),
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Tls(_) | Self::NoStartTls => false,
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Smtp(e) => write!(f, "{e}"),
            Self::Tls(e) => write!(f, "STARTTLS failed: {e}"),
            Self::Connect(e) => write!(f, "connection failed: {e}"),
            Self::NoStartTls => f.write_str("STARTTLS is not offered"),
            Self::Timeout(s) => write!(f, "the attempt took more than {s} s"),
        }
    }
}

/// One delivery attempt: a fresh connection with TCP_NODELAY (SMTP is a
/// dialogue of small writes: with Nagle's algorithm each one that follows
/// another waits for the delayed acknowledgement, 40 ms a message on
/// Linux), the greeting, STARTTLS when asked, the transaction, QUIT.
struct Attempt {
    connect: String,
    port: u16,
    hello: String,
    tls: Option<TlsParameters>,
}

impl Attempt {
    async fn send_raw(&self, env: &Envelope, data: &[u8]) -> Result<(), AttemptError> {
        use lettre::transport::smtp::client::AsyncSmtpConnection;
        use lettre::transport::smtp::extension::ClientId;
        let run = async {
            let tcp = tokio::net::TcpStream::connect((self.connect.as_str(), self.port))
                .await
                .map_err(AttemptError::Connect)?;
            // Without it only latency suffers: not worth failing for.
            let _ = tcp.set_nodelay(true);
            let hello = ClientId::Domain(self.hello.clone());
            let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello)
                .await
                .map_err(AttemptError::Smtp)?;
            // RFC 3207 §4: STARTTLS only when the EHLO reply offers it; an
            // attempt that asks for TLS stops here without it (the caller
            // decides whether a clear-text attempt follows). lettre sends
            // EHLO again after the handshake (RFC 3207 §4.2).
            if let Some(p) = &self.tls {
                if !conn.can_starttls() {
                    conn.abort().await;
                    return Err(AttemptError::NoStartTls);
                }
                conn.starttls(p.clone(), &hello)
                    .await
                    .map_err(AttemptError::Tls)?;
            }
            match conn.send(env, data).await {
                Ok(_) => {
                    // The message is the server's now; a failed QUIT changes nothing.
                    let _ = conn.quit().await;
                    Ok(())
                }
                Err(e) => {
                    conn.abort().await;
                    Err(AttemptError::Smtp(e))
                }
            }
        };
        let limit = attempt_timeout(data.len());
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| AttemptError::Timeout(limit.as_secs()))?
    }
}

/// Where and how to send mail for the outside world.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Default relay (host, port), for domains without a route.
    pub relay: Option<(String, u16)>,
    /// Per-domain routes (domain, host, port), tried before the relay.
    pub routes: Vec<(String, String, u16)>,
    /// Extra trusted roots for the relay's and routes' certificates (PEM, one or more), besides the web PKI.
    pub ca_pem: Option<Vec<u8>>,
    /// Name announced in EHLO.
    pub hello: String,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// How long a message may wait before it bounces.
    pub lifetime: Duration,
    /// Direct delivery to MX hosts (the resolver), used when no route or relay applies.
    pub direct: Option<crate::sender_auth::SenderAuth>,
    /// Port of direct delivery (25).
    pub mx_port: u16,
    /// MTA-STS policies of recipient domains, for direct delivery.
    pub mta_sts: Option<Arc<crate::mta_sts::MtaSts>>,
    /// Extra trusted roots for MX certificates (PEM), besides the web PKI.
    pub mx_ca_pem: Option<Vec<u8>>,
    /// Where direct deliveries' TLS outcomes are counted (RFC 8460).
    pub tls_reports: Option<crate::tlsrpt::TlsReports>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    dest_host: String,
    dest_port: u16,
    mail_from: String,
    rcpt_to: Vec<String>,
    attempts: u32,
    next_attempt_ms: i64,
    expires_at: i64,
    last_error: String,
    /// Direct delivery: the domain whose MX hosts are looked up at each attempt.
    #[serde(default)]
    direct_domain: Option<String>,
}

/// Where a queued message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A fixed host (route or relay).
    Host(String, u16),
    /// The MX hosts of a domain.
    Mx(String),
}

/// The outbound queue.
#[derive(Debug, Clone)]
pub struct SmtpQueue {
    db: sled::Db,
    meta: sled::Tree,
    raw: sled::Tree,
    wake: Arc<Notify>,
    cfg: Arc<RelayConfig>,
    durability: Option<Arc<dyn caliopen_federation::Durability>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SmtpQueue {
    /// Opens the queue trees in `db`.
    pub fn open(db: &sled::Db, cfg: RelayConfig) -> Result<Self, sled::Error> {
        Ok(Self {
            db: db.clone(),
            meta: db.open_tree("smtp_queue")?,
            raw: db.open_tree("smtp_queue_raw")?,
            wake: Arc::new(Notify::new()),
            cfg: Arc::new(cfg),
            durability: None,
            metrics: None,
        })
    }

    /// Makes enqueues durable through `d` (the store's group commit, which
    /// fsyncs) instead of sled's flush alone (which does not reach the disk).
    pub fn with_durability(mut self, d: Arc<dyn caliopen_federation::Durability>) -> Self {
        self.durability = Some(d);
        self
    }

    /// Returns once every write so far is durable.
    async fn persist(&self) -> Result<(), QueueError> {
        let failed = |e| QueueError::failed(QUEUE, e);
        if let Some(d) = &self.durability {
            return d.sync().await.map_err(failed);
        }
        // Not `flush_async`: concurrent callers can hang in sled 0.34 (spacejam/sled#1308).
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| QueueError::failed(QUEUE, e))?
            .map(|_| ())
            .map_err(|e| QueueError::failed(QUEUE, e))
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Where mail for `domain` goes: its route, else the relay, else its MX
    /// hosts when direct delivery is on.
    pub fn destination(&self, domain: &str) -> Option<Destination> {
        let d = domain.to_ascii_lowercase();
        self.cfg
            .routes
            .iter()
            .find(|(rd, _, _)| *rd == d)
            .map(|(_, h, p)| Destination::Host(h.clone(), *p))
            .or_else(|| self.cfg.relay.clone().map(|(h, p)| Destination::Host(h, p)))
            .or_else(|| (self.cfg.direct.is_some() && !d.is_empty()).then_some(Destination::Mx(d)))
    }

    /// Queues a message, one entry per destination; durable when it returns.
    pub async fn enqueue(
        &self,
        mail_from: &str,
        rcpt_to: Vec<String>,
        data: &[u8],
    ) -> Result<(), QueueError> {
        let mut by_dest: Vec<(Destination, Vec<String>)> = Vec::new();
        for r in rcpt_to {
            let domain = r
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default();
            let dest = self
                .destination(&domain)
                .ok_or_else(|| QueueError::NoRoute(r.clone()))?;
            match by_dest.iter_mut().find(|(d, _)| *d == dest) {
                Some((_, v)) => v.push(r),
                None => by_dest.push((dest, vec![r])),
            }
        }
        for (dest, rcpts) in by_dest {
            self.enqueue_to(dest, mail_from, rcpts, data).await?;
        }
        Ok(())
    }

    async fn enqueue_to(
        &self,
        dest: Destination,
        mail_from: &str,
        rcpt_to: Vec<String>,
        data: &[u8],
    ) -> Result<(), QueueError> {
        let failed = |e: sled::Error| QueueError::failed(QUEUE, e);
        let seq = self.db.generate_id().map_err(failed)?.to_be_bytes();
        let (dest_host, dest_port, direct_domain) = match dest {
            Destination::Host(h, p) => (h, p, None),
            Destination::Mx(d) => (String::new(), self.cfg.mx_port, Some(d)),
        };
        let e = Entry {
            dest_host,
            dest_port,
            direct_domain,
            mail_from: mail_from.to_owned(),
            rcpt_to,
            attempts: 0,
            next_attempt_ms: now_ms(),
            expires_at: now_ms() / 1000 + self.cfg.lifetime.as_secs() as i64,
            last_error: String::new(),
        };
        let v = serde_json::to_vec(&e).map_err(|e| QueueError::failed(QUEUE, e))?;
        (&self.meta, &self.raw)
            .transaction(|(m, r)| {
                r.insert(&seq, data)?;
                m.insert(&seq, v.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => failed(e),
                sled::transaction::TransactionError::Abort(()) => {
                    QueueError::failed(QUEUE, "transaction aborted")
                }
            })?;
        self.persist().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// One delivery attempt to `connect` (a name or an address) on
    /// `port`, with STARTTLS required and verified against `host` when
    /// `tls` (any certificate when `accept_any_cert`).
    fn transport_with(
        &self,
        tls: bool,
        accept_any_cert: bool,
        connect: &str,
        host: &str,
        port: u16,
        mx: bool,
    ) -> Result<Attempt, String> {
        let tls = if tls {
            let mut p = TlsParameters::builder(host.to_owned())
                .dangerous_accept_invalid_certs(accept_any_cert);
            let roots = if mx {
                &self.cfg.mx_ca_pem
            } else {
                &self.cfg.ca_pem
            };
            if let Some(ca) = roots {
                let blocks = pem::parse_many(ca).map_err(|e| e.to_string())?;
                for b in blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE") {
                    let cert =
                        lettre::transport::smtp::client::Certificate::from_der(b.into_contents())
                            .map_err(|e| e.to_string())?;
                    p = p.add_root_certificate(cert);
                }
            }
            Some(p.build_rustls().map_err(|e| e.to_string())?)
        } else {
            None
        };
        Ok(Attempt {
            connect: connect.to_owned(),
            port,
            hello: self.cfg.hello.clone(),
            tls,
        })
    }

    /// Direct delivery: each MX host in turn until one answers for good
    /// (RFC 5321 §5.1: in preference order, each of a host's addresses;
    /// the list, with the implicit MX, comes from `SenderAuth::mx`).
    async fn send_direct(
        &self,
        e: &Entry,
        domain: &str,
        data: &[u8],
    ) -> Result<&'static str, SendError> {
        let Some(resolver) = &self.cfg.direct else {
            return Err(SendError::Transient("direct delivery is off".into()));
        };
        let mut hosts = match resolver.mx(domain).await {
            Ok(h) => h,
            // RFC 7505: a null MX means the domain accepts no mail: bounce now.
            Err(err) if err.contains("null MX") => return Err(SendError::Permanent(err)),
            Err(err) => return Err(SendError::Transient(err)),
        };
        let policy = match &self.cfg.mta_sts {
            Some(m) => m.policy(domain, now_ms() / 1000).await,
            None => None,
        };
        // TLS reports are delivered whatever TLS allows and are not
        // themselves counted (RFC 8460 §5.3).
        let is_report = e.mail_from.starts_with(crate::tlsrpt::SENDER_LOCAL);
        let enforce = !is_report
            && policy
                .as_ref()
                .is_some_and(|p| p.mode == crate::mta_sts::Mode::Enforce);
        let sts = policy.as_ref().map(crate::tlsrpt::StsFacts::of);
        let report = |outcome: crate::tlsrpt::Outcome| {
            if let (Some(r), false) = (&self.cfg.tls_reports, is_report) {
                r.record(now_ms() / 1000, domain, sts.as_ref(), &outcome);
            }
        };
        if let Some(p) = &policy {
            let hosts_before = hosts.clone();
            let (allowed, refused): (Vec<String>, Vec<String>) =
                hosts.into_iter().partition(|h| p.matches(h));
            if !refused.is_empty() {
                if enforce {
                    tracing::warn!(%domain, refused = ?refused, "MTA-STS: MX hosts the policy does not name are skipped");
                    for h in &refused {
                        report(crate::tlsrpt::Outcome::Failure {
                            result: crate::tlsrpt::Failure::Validation,
                            mx: h.clone(),
                            ip: None,
                            info: Some("MX host not listed in the MTA-STS policy".into()),
                        });
                    }
                } else {
                    self.count_sts(|m| &m.mta_sts_testing_violations);
                    tracing::info!(%domain, hosts = ?refused, "MTA-STS (testing): these MX hosts are not in the policy");
                }
            }
            if enforce {
                hosts = allowed;
            } else {
                // Testing: delivery goes on as before, in the MX order.
                hosts = hosts_before;
            }
            if hosts.is_empty() {
                self.count_sts(|m| &m.mta_sts_refused);
                return Err(SendError::Transient(format!(
                    "MTA-STS: no MX host of {domain} is named by its policy (mx: {})",
                    p.mx.join(", ")
                )));
            }
        }
        let mut last = String::from("no MX host");
        for host in hosts.iter().take(5) {
            // Addresses come from our resolver: the system's is never asked.
            let ips = match resolver.addresses(host).await {
                Ok(ips) if !ips.is_empty() => ips,
                Ok(_) => {
                    last = format!("{host}: no address");
                    continue;
                }
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            for ip in ips {
                let attempt = Entry {
                    dest_host: host.clone(),
                    ..e.clone()
                };
                let mut tls_error = None;
                let r = self
                    .send_host(
                        &attempt,
                        &ip.to_string(),
                        data,
                        true,
                        enforce,
                        &mut tls_error,
                    )
                    .await;
                // The session's TLS outcome for the domain's reports: under
                // a policy only verified TLS succeeds; without one, any.
                let failed = |why: &Option<String>| crate::tlsrpt::Outcome::Failure {
                    result: why.as_deref().map_or(
                        crate::tlsrpt::Failure::StarttlsNotSupported,
                        crate::tlsrpt::Failure::of_tls_error,
                    ),
                    mx: host.clone(),
                    ip: Some(ip),
                    info: why.as_deref().map(|w| w.chars().take(200).collect()),
                };
                // A host the policy does not list (testing mode sends to it).
                let listed = policy.as_ref().is_none_or(|p| p.matches(host));
                match (&r, &tls_error) {
                    (Ok("starttls"), _) if !listed => report(crate::tlsrpt::Outcome::Failure {
                        result: crate::tlsrpt::Failure::Validation,
                        mx: host.clone(),
                        ip: Some(ip),
                        info: Some("MX host not listed in the MTA-STS policy".into()),
                    }),
                    (Ok("starttls"), _) => report(crate::tlsrpt::Outcome::Success),
                    (Ok("starttls-unverified"), _) if policy.is_none() => {
                        report(crate::tlsrpt::Outcome::Success)
                    }
                    (Ok(_), why) => report(failed(why)),
                    (Err(_), Some(_)) => report(failed(&tls_error)),
                    // No TLS session took place (no connection, or a refusal
                    // after TLS that the error does not tell apart).
                    (Err(_), None) => {}
                }
                match r {
                    Ok(tls) => {
                        if enforce {
                            self.count_sts(|m| &m.mta_sts_enforced);
                        } else if policy.is_some() && tls != "starttls" {
                            self.count_sts(|m| &m.mta_sts_testing_violations);
                            tracing::info!(%domain, mx = %host, tls, "MTA-STS (testing): delivered without verified TLS, which the policy asks for");
                        }
                        return Ok(tls);
                    }
                    Err(SendError::Permanent(p)) => return Err(SendError::Permanent(p)),
                    Err(SendError::Transient(t)) => {
                        tracing::info!(mx = %host, %ip, error = %t, "MX host failed; trying the next");
                        last = format!("{host} ({ip}): {t}");
                    }
                }
            }
        }
        Err(SendError::Transient(last))
    }

    async fn send_one(&self, e: &Entry, data: &[u8]) -> Result<&'static str, SendError> {
        match &e.direct_domain {
            Some(d) => self.send_direct(e, d, data).await,
            None => {
                self.send_host(e, &e.dest_host, data, false, false, &mut None)
                    .await
            }
        }
    }

    /// One attempt to `connect` for `e`. `verified_only`: an MTA-STS
    /// policy in force — STARTTLS with a certificate valid for the host
    /// name, or nothing (deferred).
    async fn send_host(
        &self,
        e: &Entry,
        connect: &str,
        data: &[u8],
        mx: bool,
        verified_only: bool,
        tls_error: &mut Option<String>,
    ) -> Result<&'static str, SendError> {
        let from = if e.mail_from.is_empty() {
            None
        } else {
            e.mail_from.parse().ok()
        };
        let to = e.rcpt_to.iter().filter_map(|r| r.parse().ok()).collect();
        let env = Envelope::new(from, to)
            .map_err(|err| SendError::Permanent(format!("invalid envelope: {err}")))?;
        // Opportunistic STARTTLS: try it, and fall back to clear text only
        // when the TLS attempt itself failed (not when the relay refused the mail).
        match self.transport_with(true, false, connect, &e.dest_host, e.dest_port, mx) {
            Ok(t) => match t.send_raw(&env, data).await {
                Ok(_) => return Ok("starttls"),
                Err(err) if err.is_permanent() => {
                    return Err(SendError::Permanent(err.to_string()))
                }
                Err(err) if err.is_transient() => {
                    return Err(SendError::Transient(err.to_string()))
                }
                Err(err) if verified_only => {
                    *tls_error = Some(err.to_string());
                    self.count_sts(|m| &m.mta_sts_refused);
                    tracing::warn!(error = %err, host = %e.dest_host, "MTA-STS: the policy asks for verified TLS, which failed: deferred");
                    return Err(SendError::Transient(format!(
                        "MTA-STS: verified STARTTLS with {} failed: {err}",
                        e.dest_host
                    )));
                }
                Err(err) if mx => {
                    *tls_error = Some(err.to_string());
                    // MX hosts rarely hold certificates for their names: encrypt
                    // without authentication rather than not at all (RFC 7435).
                    tracing::info!(error = %err, host = %e.dest_host, "verified STARTTLS failed; trying unauthenticated TLS");
                    if let Ok(t) =
                        self.transport_with(true, true, connect, &e.dest_host, e.dest_port, mx)
                    {
                        match t.send_raw(&env, data).await {
                            Ok(_) => return Ok("starttls-unverified"),
                            Err(err) if err.is_permanent() => {
                                return Err(SendError::Permanent(err.to_string()))
                            }
                            Err(err) if err.is_transient() => {
                                return Err(SendError::Transient(err.to_string()))
                            }
                            Err(err) => {
                                tracing::info!(error = %err, "STARTTLS failed; sending in clear")
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::info!(error = %err, "STARTTLS to the relay failed; sending in clear")
                }
            },
            Err(err) if verified_only => {
                return Err(SendError::Transient(format!(
                    "MTA-STS: TLS parameters unusable: {err}"
                )))
            }
            Err(err) => {
                tracing::warn!(error = %err, "relay TLS parameters unusable; sending in clear")
            }
        }
        let t = self
            .transport_with(false, false, connect, &e.dest_host, e.dest_port, mx)
            .map_err(SendError::Transient)?;
        t.send_raw(&env, data)
            .await
            .map(|_| "plain")
            .map_err(|err| {
                if err.is_permanent() {
                    SendError::Permanent(err.to_string())
                } else {
                    SendError::Transient(err.to_string())
                }
            })
    }

    /// Counts one MTA-STS outcome, when metrics are set.
    fn count_sts(
        &self,
        counter: impl Fn(&crate::metrics::Metrics) -> &std::sync::atomic::AtomicU64,
    ) {
        if let Some(m) = &self.metrics {
            counter(m).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Counts MTA-STS outcomes in `m`.
    pub fn with_metrics(mut self, m: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(m);
        self
    }

    /// Delivers until `token` is cancelled.
    pub async fn run(self, svc: MailService, domain: String, token: CancellationToken) {
        loop {
            let next = self.pass(&svc, &domain).await;
            let wait = next
                .map(|t| Duration::from_millis((t - now_ms()).clamp(0, 60_000) as u64))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = token.cancelled() => return,
            }
        }
    }

    async fn pass(&self, svc: &MailService, domain: &str) -> Option<i64> {
        let mut next: Option<i64> = None;
        let entries: Vec<(sled::IVec, Entry)> = self
            .meta
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| serde_json::from_slice(&v).ok().map(|e| (k, e)))
            .collect();
        for (k, mut e) in entries {
            let now = now_ms();
            if e.next_attempt_ms > now {
                next = Some(next.map_or(e.next_attempt_ms, |n| n.min(e.next_attempt_ms)));
                continue;
            }
            let Ok(Some(data)) = self.raw.get(&k) else {
                // An entry whose bytes are gone cannot be sent: drop it.
                if let Err(err) = self.meta.remove(&k) {
                    write_failed(svc, "remove an entry without its message", &err);
                }
                continue;
            };
            // Give-up time (RFC 5321 §4.5.4.1: at least 4–5 days; the
            // default lifetime is 120 h): bounce with 4.4.7, "delivery time
            // expired" (RFC 3463 §3.5).
            let outcome = if e.expires_at * 1000 <= now {
                Err((
                    "4.4.7",
                    format!("not delivered before expiry: {}", e.last_error),
                ))
            } else {
                match self.send_one(&e, &data).await {
                    Ok(tls) => {
                        tracing::info!(to = %e.direct_domain.as_deref().map_or(e.dest_host.as_str(), |d| d), direct = e.direct_domain.is_some(), port = e.dest_port, tls, rcpts = e.rcpt_to.len(), "sent by SMTP");
                        let m = svc.metrics();
                        let counter = if tls.starts_with("starttls") {
                            &m.sent_smtp_tls
                        } else {
                            &m.sent_smtp_plain
                        };
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                    Err(SendError::Permanent(why)) => Err(("5.0.0", why)),
                    Err(SendError::Transient(err)) => {
                        // Retry interval (RFC 5321 §4.5.4.1): `retry_base`
                        // doubled per attempt, capped at `retry_max` (see
                        // the module comment for how the defaults compare).
                        let delay = self
                            .cfg
                            .retry_base
                            .saturating_mul(1u32 << e.attempts.min(16))
                            .min(self.cfg.retry_max);
                        e.attempts += 1;
                        e.last_error = err.to_string();
                        e.next_attempt_ms = now_ms() + delay.as_millis() as i64;
                        tracing::info!(error = %err, retry_in = ?delay, "SMTP relay attempt failed");
                        if let Ok(v) = serde_json::to_vec(&e) {
                            // Lost, the entry is only retried sooner than planned.
                            if let Err(err) = self.meta.insert(&k, v) {
                                write_failed(svc, "record the retry schedule", &err);
                            }
                        }
                        next = Some(next.map_or(e.next_attempt_ms, |n| n.min(e.next_attempt_ms)));
                        continue;
                    }
                }
            };
            if let Err((status, why)) = outcome {
                svc.bounce(domain, &e.mail_from, &e.rcpt_to, &data, status, &why)
                    .await;
            }
            let removed = (&self.meta, &self.raw).transaction(|(m, r)| {
                m.remove(&k)?;
                r.remove(&k)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            });
            if let Err(err) = removed {
                // Still queued: it will be sent again (receivers see a duplicate).
                write_failed(svc, "remove a sent or bounced entry", &format!("{err:?}"));
            }
            if let Err(e) = self.persist().await {
                tracing::warn!(error = %e, "SMTP queue removal not yet durable (a resend may follow)");
            }
        }
        next
    }
}

/// A queue write that failed: logged and counted
/// (`caliopen_smtp_queue_write_failures_total`), never silently dropped.
fn write_failed(svc: &MailService, what: &str, err: &dyn std::fmt::Display) {
    tracing::error!(error = %err, "SMTP queue: could not {what}");
    svc.metrics()
        .smtp_queue_write_failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The router's way to the outside.
impl SmtpOutlet for SmtpQueue {
    fn has_destination(&self, domain: &str) -> bool {
        self.destination(domain).is_some()
    }

    fn enqueue<'a>(
        &'a self,
        mail_from: &'a str,
        rcpt_to: Vec<String>,
        data: &'a [u8],
    ) -> OutletFuture<'a> {
        Box::pin(SmtpQueue::enqueue(self, mail_from, rcpt_to, data))
    }

    fn waiting(&self) -> usize {
        self.len()
    }
}

use sled::Transactional;

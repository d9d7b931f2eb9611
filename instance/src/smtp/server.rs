//! The SMTP listeners: accept TCP connections, drive a [`Session`] over
//! them, upgrade to TLS on STARTTLS (or from the start on implicit TLS),
//! enforce timeouts and a connection limit, and hand messages to the
//! [`MailService`].

use super::session::{
    AuthOutcome, Envelope, Kind, Output, Policy, RcptVerdict, Session, SessionConfig,
};
use crate::store::{MailStore, MessageMeta, Transport, Via};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a listener needs besides its socket.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// MX or submission.
    pub kind: Kind,
    /// Name in the greeting.
    pub hostname: String,
    /// Largest message (bytes).
    pub max_message_size: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (so that a few
    /// slow clients cannot hold every slot).
    pub max_connections_per_ip: usize,
    /// Longest wait for a whole command after the previous reply (partial
    /// input does not extend it), and for the client to take our replies.
    pub command_timeout: Duration,
    /// Timeout between two reads while the client sends a message.
    pub data_timeout: Duration,
    /// TLS for STARTTLS (or implicit TLS).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (port 465 style).
    pub implicit_tls: bool,
}

impl ListenerConfig {
    /// Defaults for a listener of `kind` named `hostname`.
    pub fn new(kind: Kind, hostname: impl Into<String>) -> Self {
        Self {
            kind,
            hostname: hostname.into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 100,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            tls: None,
            implicit_tls: false,
        }
    }
}

/// Local mail service: who exists, password checks, durable storage, and
/// the route to other members when the instance holds a label.
#[derive(Debug, Clone)]
pub struct MailService {
    store: Arc<dyn MailStore>,
    domains: Arc<Vec<String>>,
    mesh: Arc<std::sync::OnceLock<crate::mesh::MeshRoute>>,
    queue: Arc<std::sync::OnceLock<crate::outbound::SmtpQueue>>,
    auth: Arc<std::sync::OnceLock<crate::auth::SenderAuth>>,
    metrics: Arc<crate::metrics::Metrics>,
    credentials: crate::login::Credentials,
    from_check: FromCheck,
}

pub use crate::config::FromCheck;

/// The decoded Subject header of a message ("" when absent).
pub fn subject_of(data: &[u8]) -> String {
    crate::privacy::parse_headers_guarded(data)
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_default()
}

/// Splits an address into (local part, lowercased domain).
pub fn split_address(addr: &str) -> Option<(String, String)> {
    let (l, d) = addr.rsplit_once('@')?;
    if l.is_empty() || d.is_empty() {
        return None;
    }
    Some((l.to_ascii_lowercase(), d.to_ascii_lowercase()))
}

impl MailService {
    /// A service over `store` for the mail `domains` of this instance.
    pub fn new(store: impl MailStore + 'static, domains: Vec<String>) -> Self {
        store.set_domains(&domains);
        Self {
            store: Arc::new(store),
            domains: Arc::new(
                domains
                    .into_iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
            ),
            mesh: Arc::new(std::sync::OnceLock::new()),
            queue: Arc::new(std::sync::OnceLock::new()),
            auth: Arc::new(std::sync::OnceLock::new()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            credentials: crate::login::Credentials::new(crate::login::CredentialsConfig::default()),
            from_check: FromCheck::Enforce,
        }
    }

    /// Uses `c` for password checks (sizes, throttling; tests inject one).
    pub fn with_credentials(mut self, c: crate::login::Credentials) -> Self {
        self.credentials = c;
        self
    }

    /// Sets what submission does with a `From:` header that is not the user's.
    pub fn with_from_check(mut self, f: FromCheck) -> Self {
        self.from_check = f;
        self
    }

    /// The credential service.
    pub fn credentials(&self) -> &crate::login::Credentials {
        &self.credentials
    }

    /// Sets the resolver and sender checks.
    pub fn set_auth(&self, a: crate::auth::SenderAuth) {
        let _ = self.auth.set(a);
    }

    /// The resolver and sender checks, when set.
    pub fn auth(&self) -> Option<&crate::auth::SenderAuth> {
        self.auth.get()
    }

    /// Records DKIM/SPF/DMARC verdicts of a message from the internet.
    pub async fn check_sender(&self, env: &Envelope, t: &mut Transport) {
        let Some(a) = self.auth.get() else { return };
        let ip = t
            .client
            .parse::<std::net::SocketAddr>()
            .map(|s| s.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let v = a
            .check(
                &env.data,
                ip,
                &env.helo,
                &env.mail_from,
                self.primary_domain(),
            )
            .await;
        t.dkim = v.dkim;
        t.spf = v.spf;
        t.dmarc = v.dmarc;
    }

    /// The primary mail domain.
    pub fn primary_domain(&self) -> &str {
        self.domains.first().map_or("localhost", String::as_str)
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The mesh route, when labelled.
    pub fn mesh_route(&self) -> Option<&crate::mesh::MeshRoute> {
        self.mesh.get()
    }

    /// Enables outbound SMTP through the relay queue.
    pub fn set_queue(&self, q: crate::outbound::SmtpQueue) {
        let _ = self.queue.set(q);
    }

    /// True when `addr` is outside and the SMTP queue has a destination for it.
    fn can_send_out(&self, addr: &str) -> bool {
        !self.is_local_domain(addr)
            && split_address(addr).is_some_and(|(_, d)| {
                self.queue
                    .get()
                    .is_some_and(|q| q.destination(&d).is_some())
            })
    }

    /// The outbound SMTP queue, when a relay is configured.
    pub fn queue(&self) -> Option<&crate::outbound::SmtpQueue> {
        self.queue.get()
    }

    /// Enables routing to other members (once the mesh is up).
    pub fn set_mesh(&self, route: crate::mesh::MeshRoute) {
        let _ = self.mesh.set(route);
    }

    fn member_for(&self, addr: &str) -> Option<String> {
        let route = self.mesh.get()?;
        split_address(addr).and_then(|(_, d)| route.member_for(&d))
    }

    /// The store.
    pub fn store(&self) -> &dyn MailStore {
        self.store.as_ref()
    }

    /// The local part of `addr` when it is a local user's address.
    pub fn local_user(&self, addr: &str) -> Option<String> {
        let (l, d) = split_address(addr)?;
        (self.domains.contains(&d) && self.store.user_exists(&l)).then_some(l)
    }

    fn is_local_domain(&self, addr: &str) -> bool {
        split_address(addr).is_some_and(|(_, d)| self.domains.contains(&d))
    }

    /// Checks a login through the credential service (bounded, throttled;
    /// see [`crate::login`]). Returns the user's address, lowercased.
    pub async fn login(
        &self,
        source: Option<IpAddr>,
        address: &str,
        password: &str,
    ) -> Result<String, crate::login::LoginError> {
        let found = |a: &str| {
            let local = self.local_user(a)?;
            let rec = self.store.user(&local).ok()??;
            Some((a.to_owned(), rec.password_hash))
        };
        self.credentials
            .check(source, address, password, found)
            .await
    }

    /// Routes an accepted message: local recipients are stored, recipients
    /// of other members go to the mesh outbox; both durably, before this returns.
    pub async fn accept(
        &self,
        env: Envelope,
        transport: Transport,
        via: Via,
    ) -> Result<String, String> {
        let mut per_user: Vec<(String, Vec<String>)> = Vec::new();
        let mut remote: Vec<String> = Vec::new();
        let mut outside: Vec<String> = Vec::new();
        for r in &env.rcpt_to {
            match self.local_user(r) {
                Some(u) => match per_user.iter_mut().find(|(m, _)| *m == u) {
                    Some((_, v)) => v.push(r.clone()),
                    None => per_user.push((u, vec![r.clone()])),
                },
                None if self.member_for(r).is_some() => remote.push(r.clone()),
                None if self.can_send_out(r) => outside.push(r.clone()),
                None => return Err(format!("recipient {r} cannot be delivered")),
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if let Some(owner) = transport
            .auth_user
            .as_deref()
            .and_then(|u| self.local_user(u))
        {
            // The sender's contact book: each recipient, with the path it takes.
            // Outbound STARTTLS is opportunistic: the path to the outside is
            // counted as not protected, since nothing guarantees it is.
            let tls = crate::store::PathClass::Plain;
            let paths: Vec<(String, crate::store::PathClass)> = per_user
                .iter()
                .flat_map(|(_, v)| {
                    v.iter()
                        .map(|a| (a.clone(), crate::store::PathClass::Local))
                })
                .chain(
                    remote
                        .iter()
                        .map(|a| (a.clone(), crate::store::PathClass::Mesh)),
                )
                .chain(outside.iter().map(|a| (a.clone(), tls)))
                .collect();
            if let Err(e) = self.store.record_sent(&owner, &paths, &env.data, now).await {
                // The contact book is derived data: never refuse mail for it.
                tracing::warn!(error = %e, "could not update the contact book");
            }
        }
        let mut queued = Vec::new();
        if let (Some(route), false) = (self.mesh.get(), remote.is_empty()) {
            for (member, rcpts) in crate::mesh::by_member(route, &remote) {
                let deliver = caliopen_proto::pb::mesh::Deliver {
                    txn_id: crate::mesh::txn_id(&member, &env.mail_from, &rcpts, &env.data),
                    mail_from: env.mail_from.clone(),
                    rcpt_to: rcpts,
                    message: env.data.clone(),
                    accepted_at: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64),
                };
                route
                    .outbox
                    .enqueue(&member, deliver)
                    .await
                    .map_err(|e| e.to_string())?;
                queued.push(format!("mesh:{member}"));
                self.metrics
                    .queued_mesh
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let (Some(q), false) = (self.queue.get(), outside.is_empty()) {
            q.enqueue(&env.mail_from, outside, &env.data).await?;
            queued.push("smtp".into());
            self.metrics
                .queued_smtp
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if per_user.is_empty() {
            return Ok(queued.join(","));
        }
        let subject = subject_of(&env.data);
        let template = MessageMeta {
            id: 0,
            mailbox: String::new(),
            from: env.mail_from.clone(),
            to: Vec::new(),
            subject,
            received_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            via,
            transport,
            size: env.data.len(),
        };
        let ids = self
            .store
            .deliver_local(&template, &per_user, &env.data)
            .await
            .map_err(|e| e.to_string())?;
        let counter = match via {
            Via::Smtp => &self.metrics.stored_smtp,
            Via::Local => &self.metrics.stored_local,
            Via::Mesh => &self.metrics.stored_mesh,
        };
        counter.fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        queued.extend(ids.iter().map(|i| format!("{i:x}")));
        Ok(queued.join(","))
    }
}

impl Policy for MailService {
    fn rcpt(&self, kind: Kind, authenticated: bool, address: &str) -> RcptVerdict {
        if self.is_local_domain(address) {
            return if self.local_user(address).is_some() {
                RcptVerdict::Accept
            } else {
                self.metrics
                    .rcpt_unknown_user
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                RcptVerdict::UnknownUser
            };
        }
        // Authenticated users may send to other labelled members (mesh) and,
        // when a relay is configured, to the rest of the world (SMTP queue).
        // Without a relay, mail for the outside is refused rather than lost.
        if kind == Kind::Submission
            && authenticated
            && (self.member_for(address).is_some() || self.can_send_out(address))
        {
            return RcptVerdict::Accept;
        }
        self.metrics
            .rcpt_relay_denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RcptVerdict::RelayDenied
    }

    fn may_send_as(&self, user: &str, address: &str) -> bool {
        // The user's local part at any of the instance's domains.
        match (split_address(user), split_address(address)) {
            (Some((ul, _)), Some((al, ad))) => ul == al && self.domains.contains(&ad),
            _ => false,
        }
    }

    fn header_from_allowed(&self, user: &str, data: &[u8]) -> Result<(), String> {
        let Some(msg) = crate::privacy::parse_headers_guarded(data) else {
            return Ok(());
        };
        let mut bad = Vec::new();
        let mut any_header = false;
        for h in msg.headers() {
            if !h.name.as_str().eq_ignore_ascii_case("from") {
                continue;
            }
            any_header = true;
            let addrs: Vec<String> = match h.value.as_address() {
                Some(a) => a
                    .iter()
                    .filter_map(|a| a.address.as_deref().map(str::to_owned))
                    .collect(),
                None => Vec::new(),
            };
            if addrs.is_empty() {
                bad.push("(no address)".to_owned());
            }
            bad.extend(addrs.into_iter().filter(|a| !self.may_send_as(user, a)));
        }
        if !any_header || bad.is_empty() {
            return Ok(());
        }
        let shown = bad.join(", ");
        match self.from_check {
            FromCheck::Enforce => {
                tracing::warn!(user, from = %shown, "submission refused: From: header is not the user's address");
                self.metrics
                    .from_header_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(format!("{user} may not send as {shown}"))
            }
            FromCheck::Warn => {
                tracing::warn!(user, from = %shown, "From: header is not the user's address (accepted: [submission] from_check = \"warn\")");
                Ok(())
            }
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub struct SmtpListener {
    cfg: ListenerConfig,
    listener: TcpListener,
}

enum Outcome {
    Closed,
    StartTls,
}

impl SmtpListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, cfg: ListenerConfig) -> std::io::Result<Self> {
        Ok(Self {
            cfg,
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `token` is cancelled; sessions in progress are tracked by `tracker`.
    pub async fn run(self, svc: MailService, token: CancellationToken, tracker: TaskTracker) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections));
        let per_ip = crate::limits::PerIp::default();
        let cfg = Arc::new(self.cfg);
        loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = token.cancelled() => break,
            };
            let Some(ip_slot) = per_ip.take(peer.ip(), cfg.max_connections_per_ip) else {
                svc.metrics()
                    .smtp_refused_per_ip
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut tcp = tcp;
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    tcp.write_all(
                        b"421 4.7.0 Too many connections from your address, try later\r\n",
                    ),
                )
                .await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                let mut tcp = tcp;
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    tcp.write_all(b"421 4.7.0 Too many connections, try later\r\n"),
                )
                .await;
                continue;
            };
            let (svc, cfg, token) = (svc.clone(), cfg.clone(), token.clone());
            tracker.spawn(async move {
                let _permit = permit;
                let _ip_slot = ip_slot;
                if let Err(e) = serve(tcp, peer, &svc, &cfg, &token).await {
                    tracing::debug!(%peer, error = %e, "SMTP session ended with an error");
                }
            });
        }
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    svc: &MailService,
    cfg: &ListenerConfig,
    token: &CancellationToken,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut transport = Transport {
        client: peer.to_string(),
        ..Default::default()
    };
    let mut session = Session::new(SessionConfig {
        hostname: cfg.hostname.clone(),
        kind: cfg.kind,
        max_message_size: cfg.max_message_size,
        max_recipients: cfg.max_recipients,
        max_errors: 20,
        starttls: cfg.tls.is_some(),
        tls_active: cfg.implicit_tls,
    });
    let tls_upgrade = |tcp: TcpStream| async {
        let tls = cfg
            .tls
            .clone()
            .ok_or_else(|| std::io::Error::other("TLS not configured"))?;
        tokio::time::timeout(Duration::from_secs(30), TlsAcceptor::from(tls).accept(tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
    };
    let mut tcp = tcp;
    if !cfg.implicit_tls {
        match drive(&mut tcp, &mut session, svc, cfg, &mut transport, token).await? {
            Outcome::Closed => return Ok(()),
            Outcome::StartTls => {}
        }
    }
    let mut tls = tls_upgrade(tcp).await?;
    {
        let (_, conn) = tls.get_ref();
        transport.tls_version = conn.protocol_version().map(|v| format!("{v:?}"));
        transport.tls_cipher = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()));
    }
    session.tls_started();
    match drive(&mut tls, &mut session, svc, cfg, &mut transport, token).await? {
        Outcome::Closed | Outcome::StartTls => {}
    }
    let _ = tls.shutdown().await;
    Ok(())
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    svc: &MailService,
    cfg: &ListenerConfig,
    transport: &mut Transport,
    token: &CancellationToken,
) -> std::io::Result<Outcome> {
    let peer_ip = transport
        .client
        .parse::<SocketAddr>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // A command must arrive whole within `command_timeout` of the previous
    // reply: the deadline is not pushed back by each byte, so a client
    // trickling one byte at a time (slowloris) is timed out like an idle one.
    let mut command_deadline = tokio::time::Instant::now() + cfg.command_timeout;
    loop {
        while let Some(o) = session.poll(svc) {
            match o {
                Output::Reply(r) => out.extend_from_slice(&r),
                Output::Close => {
                    send_replies(stream, &out, cfg.command_timeout).await?;
                    return Ok(Outcome::Closed);
                }
                Output::StartTls => {
                    send_replies(stream, &out, cfg.command_timeout).await?;
                    return Ok(Outcome::StartTls);
                }
                Output::Store(env) => {
                    transport.helo = env.helo.clone();
                    transport.auth_user = env.auth_user.clone();
                    let via = if env.auth_user.is_some() {
                        Via::Local
                    } else {
                        Via::Smtp
                    };
                    let mut t = transport.clone();
                    if via == Via::Smtp {
                        svc.check_sender(&env, &mut t).await;
                    }
                    let r = svc.accept(env, t, via).await;
                    let r = match r {
                        Ok(ids) => {
                            // One opaque id for the client; the internal ids go to the log.
                            let qid = queue_id();
                            tracing::info!(queue_id = %qid, ids = %ids, client = %transport.client, "message accepted");
                            Ok(qid)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, client = %transport.client, "message not stored");
                            Err(())
                        }
                    };
                    session.stored(r);
                }
                Output::CheckAuth { user, password } => {
                    use crate::login::LoginError;
                    // The check may wait for a slot: a client that leaves
                    // meanwhile takes its queued check with it. Bytes it
                    // pipelines are kept for after the reply.
                    let login = svc.login(Some(peer_ip), &user, &password);
                    tokio::pin!(login);
                    let mut early: Vec<u8> = Vec::new();
                    let result = loop {
                        tokio::select! {
                            r = &mut login => break Some(r),
                            r = stream.read(&mut buf), if early.len() < 64 * 1024 => match r {
                                Ok(0) | Err(_) => break None,
                                Ok(n) => early.extend_from_slice(&buf[..n]),
                            },
                            _ = token.cancelled() => break None,
                        }
                    };
                    let Some(result) = result else {
                        tracing::debug!(client = %transport.client, "client left during its AUTH check");
                        return Ok(Outcome::Closed);
                    };
                    let outcome = match result {
                        Ok(u) => AuthOutcome::Granted(u),
                        Err(LoginError::Invalid) => {
                            tracing::warn!(client = %transport.client, "SMTP authentication failed");
                            AuthOutcome::Invalid
                        }
                        Err(e @ (LoginError::Throttled { .. } | LoginError::Busy)) => {
                            AuthOutcome::TryLater(e.to_string())
                        }
                    };
                    session.auth_checked(outcome);
                    if !early.is_empty() {
                        session.feed(&early);
                    }
                }
            }
        }
        if !out.is_empty() {
            send_replies(stream, &out, cfg.command_timeout).await?;
            out.clear();
            command_deadline = tokio::time::Instant::now() + cfg.command_timeout;
        }
        let limit = if session.in_data() {
            cfg.data_timeout
        } else {
            command_deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        let n = tokio::select! {
            r = tokio::time::timeout(limit, stream.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    let _ = send_replies(stream, b"421 4.4.2 Idle timeout, closing connection\r\n", Duration::from_secs(5)).await;
                    return Ok(Outcome::Closed);
                }
            },
            _ = token.cancelled() => {
                let _ = send_replies(stream, b"421 4.3.2 Service shutting down\r\n", Duration::from_secs(5)).await;
                return Ok(Outcome::Closed);
            }
        };
        if n == 0 {
            return Ok(Outcome::Closed);
        }
        session.feed(&buf[..n]);
    }
}

/// Writes replies; a client that stops reading them (its receive window full,
/// e.g. after pipelining a flood of commands) is dropped after `limit`
/// instead of holding the session forever.
async fn send_replies<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client stopped reading replies",
        )
    })?
}

/// Hashes a password for storage (argon2id, random salt, PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    crate::login::hash_password(password)
}

/// A fresh opaque queue id (12 random bytes, hex) for a `250` reply.
fn queue_id() -> String {
    let mut b = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

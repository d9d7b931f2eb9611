//! The SMTP listeners: accept TCP connections, drive a [`Session`] over
//! them, upgrade to TLS on STARTTLS (or from the start on implicit TLS),
//! enforce timeouts and a connection limit, and hand messages to the
//! router ([`MailService`]).

use super::session::Kind;
use super::session::{AuthOutcome, Output, Session, SessionConfig, StoreFailure};
use crate::delivery::DeliveryError;
use crate::delivery::MailService;
use crate::mail::{Transport, Via};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
        let gate =
            crate::limits::Gate::new(self.cfg.max_connections, self.cfg.max_connections_per_ip);
        let cfg = Arc::new(self.cfg);
        while let Some((tcp, peer)) = crate::limits::accept(&self.listener, &token, "SMTP").await {
            let admitted = match gate.admit(peer.ip()) {
                Ok(a) => a,
                Err(why) => {
                    let reply: &[u8] = match why {
                        crate::limits::Refused::PerIp => {
                            svc.metrics()
                                .smtp_refused_per_ip
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            b"421 4.7.0 Too many connections from your address, try later\r\n"
                        }
                        crate::limits::Refused::Full => {
                            b"421 4.7.0 Too many connections, try later\r\n"
                        }
                    };
                    let mut tcp = tcp;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), tcp.write_all(reply)).await;
                    continue;
                }
            };
            let (svc, cfg, token) = (svc.clone(), cfg.clone(), token.clone());
            tracker.spawn(async move {
                let _admitted = admitted;
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
                    if via == Via::Smtp
                        && svc
                            .check_sender(&env.data, &env.helo, &env.mail_from, &mut t)
                            .await
                            == crate::delivery::SenderVerdict::Reject
                    {
                        tracing::info!(
                            client = %transport.client,
                            mail_from = %env.mail_from,
                            "message refused: it fails DMARC and its From: domain says p=reject"
                        );
                        session.stored(Err(StoreFailure::Rejected));
                        continue;
                    }
                    let r = svc
                        .accept(&env.mail_from, &env.rcpt_to, &env.data, t, via)
                        .await;
                    let r = match r {
                        Ok(routed) => {
                            // One opaque id for the client; the internal ids go to the log.
                            let qid = queue_id();
                            tracing::info!(queue_id = %qid, ids = %routed, client = %transport.client, "message accepted");
                            Ok(qid)
                        }
                        Err(DeliveryError::MailboxFull(who)) => {
                            tracing::warn!(recipients = %who, client = %transport.client, "message refused for now: mailbox full");
                            Err(StoreFailure::MailboxFull)
                        }
                        Err(DeliveryError::Store(e)) if e.is_full() => {
                            tracing::error!(error = %e, client = %transport.client, "message refused for now: the disk is full");
                            Err(StoreFailure::DiskFull)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, client = %transport.client, "message not stored");
                            Err(StoreFailure::Temporary)
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

/// A fresh opaque queue id (12 random bytes, hex) for a `250` reply.
fn queue_id() -> String {
    let mut b = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

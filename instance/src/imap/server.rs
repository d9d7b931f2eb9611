//! The IMAP listener: accepts connections (with per-address and global
//! caps), runs TLS (STARTTLS or implicit), moves bytes between the socket
//! and the [`Session`], and wakes idling clients when their account
//! changes.

use super::session::{Action, Session, SessionConfig};
use super::wire::Expect;
use crate::delivery::MailService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An IMAP listener's settings.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// Name in the greeting.
    pub hostname: String,
    /// The certificate (STARTTLS, or the whole connection with `implicit_tls`).
    pub tls: Arc<rustls::ServerConfig>,
    /// TLS from the first byte (port 993).
    pub implicit_tls: bool,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one address.
    pub max_connections_per_ip: usize,
    /// Largest APPEND, octets.
    pub append_limit: u32,
    /// Autologout of a logged-in client that sends nothing (RFC 9051: at least 30 minutes).
    pub idle_timeout: Duration,
    /// Autologout before login.
    pub login_timeout: Duration,
}

/// A bound IMAP listener.
#[derive(Debug)]
pub struct ImapListener {
    cfg: Arc<ImapConfig>,
    listener: TcpListener,
}

/// Longest a write to a client may take (a client that stops reading is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idling client is told the server is still there.
const IDLE_KEEPALIVE: Duration = Duration::from_secs(10 * 60);
/// Output a FETCH writes before it is sent and the next messages are read.
const SPILL: usize = 256 * 1024;
/// How often a client idles on a store that gives no change signal is refreshed.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// One unit of a gauge, given back on drop.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Relaxed);
        Self(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

enum Outcome {
    Closed,
    StartTls,
}

impl ImapListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, cfg: ImapConfig) -> std::io::Result<Self> {
        Ok(Self {
            cfg: Arc::new(cfg),
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `token` is cancelled.
    pub async fn run(self, svc: MailService, token: CancellationToken, tracker: TaskTracker) {
        let gate =
            crate::limits::Gate::new(self.cfg.max_connections, self.cfg.max_connections_per_ip);
        while let Some((tcp, peer)) = crate::limits::accept(&self.listener, &token, "IMAP").await {
            let counters = svc.metrics().clone();
            let admitted = match gate.admit(peer.ip()) {
                Ok(a) => a,
                Err(why) => {
                    let reply: &[u8] = match why {
                        crate::limits::Refused::PerIp => {
                            counters.imap_listener.refused_per_ip.fetch_add(1, Relaxed);
                            tracing::warn!(%peer, "IMAP connection refused: too many from this address");
                            b"* BYE too many connections from your address\r\n"
                        }
                        crate::limits::Refused::Full => {
                            counters.imap_listener.refused_total.fetch_add(1, Relaxed);
                            tracing::warn!(%peer, "IMAP connection refused: server full");
                            b"* BYE too many connections, try later\r\n"
                        }
                    };
                    // Before TLS on a plain port; on port 993 the client sees a closed connection.
                    if !self.cfg.implicit_tls {
                        let mut tcp = tcp;
                        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(reply))
                            .await;
                    }
                    continue;
                }
            };
            let (svc, cfg, token) = (svc.clone(), self.cfg.clone(), token.clone());
            tracker.spawn(async move {
                let _admitted = admitted;
                let _open = Gauge::up(&counters.imap_sessions);
                if let Err(e) = serve(tcp, peer, &svc, &cfg, &token).await {
                    if e.to_string().contains("handshake") {
                        counters
                            .imap_listener
                            .handshake_failed
                            .fetch_add(1, Relaxed);
                    }
                    tracing::debug!(%peer, error = %e, "IMAP session ended with an error");
                }
            });
        }
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    svc: &MailService,
    cfg: &ImapConfig,
    token: &CancellationToken,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let scfg = SessionConfig {
        hostname: cfg.hostname.clone(),
        starttls: true,
        append_limit: cfg.append_limit,
    };
    let mut session = Session::new(
        svc.clone(),
        scfg,
        Some(peer.ip()),
        cfg.implicit_tls,
        Instant::now(),
    );
    session.set_spill(Some(SPILL));
    let accept = |tcp: TcpStream| async {
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsAcceptor::from(cfg.tls.clone()).accept(tcp),
        )
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
        .map_err(|e| std::io::Error::other(format!("TLS handshake failed: {e}")))
    };
    let mut tcp = tcp;
    if !cfg.implicit_tls {
        match drive(&mut tcp, &mut session, cfg, token, true).await? {
            Outcome::Closed => return Ok(()),
            Outcome::StartTls => {}
        }
    }
    let mut tls = accept(tcp).await?;
    session.tls_started();
    let greet = cfg.implicit_tls;
    let _ = drive(&mut tls, &mut session, cfg, token, greet).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.shutdown()).await;
    Ok(())
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        s.write_all(out).await?;
        s.flush().await
    })
    .await
    .map_err(|_| std::io::Error::other("client stopped reading"))??;
    out.clear();
    Ok(())
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    cfg: &ImapConfig,
    token: &CancellationToken,
    greet: bool,
) -> std::io::Result<Outcome> {
    let mut out = Vec::new();
    if greet {
        session.greeting(&mut out);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(i) = session.reader.next() {
            match session.input(i, Instant::now(), &mut out).await {
                Action::Continue => {
                    // A big FETCH goes out in parts: memory stays bounded.
                    while session.busy() {
                        send(stream, &mut out).await?;
                        session.resume(&mut out).await;
                    }
                }
                Action::Close => {
                    send(stream, &mut out).await?;
                    return Ok(Outcome::Closed);
                }
                Action::StartTls => {
                    send(stream, &mut out).await?;
                    return Ok(Outcome::StartTls);
                }
                Action::Idle => {
                    send(stream, &mut out).await?;
                    if !idle(stream, session, cfg, token, &mut buf, &mut out).await? {
                        return Ok(Outcome::Closed);
                    }
                }
            }
        }
        send(stream, &mut out).await?;
        let limit = if session.authenticated() {
            cfg.idle_timeout
        } else {
            cfg.login_timeout
        };
        let n = tokio::select! {
            r = tokio::time::timeout(limit, stream.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => {
                    out.extend_from_slice(b"* BYE autologout: idle for too long\r\n");
                    send(stream, &mut out).await?;
                    return Ok(Outcome::Closed);
                }
            },
            _ = token.cancelled() => {
                out.extend_from_slice(b"* BYE server shutting down\r\n");
                send(stream, &mut out).await?;
                return Ok(Outcome::Closed);
            }
        };
        if n == 0 {
            return Ok(Outcome::Closed);
        }
        session.reader.feed(&buf[..n]);
    }
}

/// Waits in IDLE: reports changes of the account until the client sends
/// `DONE`. False when the connection is over.
async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    cfg: &ImapConfig,
    token: &CancellationToken,
    buf: &mut [u8],
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let counters = session.metrics().clone();
    let _idling = Gauge::up(&counters.imap_idling);
    let mut rx = session.watch();
    // A change between the command's refresh and the subscription above
    // would otherwise wait for the next one.
    session.idle_update(out).await;
    send(stream, out).await?;
    let deadline = tokio::time::Instant::now() + cfg.idle_timeout;
    let mut keepalive = tokio::time::interval(IDLE_KEEPALIVE);
    keepalive.tick().await;
    let mut poll = tokio::time::interval(IDLE_POLL);
    poll.tick().await;
    loop {
        let changed = async {
            match rx.as_mut() {
                Some(r) => r.changed().await.is_ok(),
                None => {
                    poll.tick().await;
                    true
                }
            }
        };
        tokio::select! {
            ok = changed => {
                if !ok {
                    rx = None;
                }
                session.idle_update(out).await;
                send(stream, out).await?;
            }
            r = stream.read(buf) => {
                let n = r?;
                if n == 0 {
                    return Ok(false);
                }
                session.reader.feed(&buf[..n]);
                while session.reader.expecting() == Expect::IdleDone {
                    let Some(i) = session.reader.next() else { break };
                    if session.input(i, Instant::now(), out).await == Action::Close {
                        send(stream, out).await?;
                        return Ok(false);
                    }
                }
                send(stream, out).await?;
                if session.reader.expecting() != Expect::IdleDone {
                    return Ok(true);
                }
            }
            _ = keepalive.tick() => {
                out.extend_from_slice(b"* OK still here\r\n");
                send(stream, out).await?;
            }
            _ = tokio::time::sleep_until(deadline) => {
                out.extend_from_slice(b"* BYE autologout: idle for too long\r\n");
                send(stream, out).await?;
                return Ok(false);
            }
            _ = token.cancelled() => {
                out.extend_from_slice(b"* BYE server shutting down\r\n");
                send(stream, out).await?;
                return Ok(false);
            }
        }
    }
}

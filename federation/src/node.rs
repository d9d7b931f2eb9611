//! The mesh endpoint of a member: a QUIC endpoint (quinn) that accepts and
//! dials labelled peers, keeps one pooled connection per peer, serves one
//! request per bidirectional stream, rate-limits each peer, gossips newer
//! CRLs and directories, and closes the connections of peers that lose
//! their label.

use crate::log::{InclusionError, LogError, LogMonitor, Offer, SplitView};
use crate::tls::{client_config, server_config, IdentitySlot, TlsError};
use crate::trust::{check_member, PeerIdentity, TrustState, TrustStore};
use crate::wire::{decode_single, encode_frame, FrameError, DEFAULT_MAX_FRAME};
use caliopen_proto::pb::mesh::{
    error_reply, request, response, CheckpointPush, CrlPush, Deliver, DeliverReply, DirectoryPush,
    ErrorReply, HandoverChunk, HandoverReply, Hello, MoveNotice, PrivacyQuery, PrivacyReply,
    PushReply, Request, Response, SplitViewPush,
};
use caliopen_proto::{MESH_PROTOCOL_VERSION, SOFTWARE_VERSION};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// QUIC application close code: the peer lost its label (revoked or delisted).
pub const CLOSE_REVOKED: u32 = 0x10;
/// QUIC application close code: the peer runs software below the baseline.
pub const CLOSE_BELOW_BASELINE: u32 = 0x11;
/// QUIC application close code: this member is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0x12;
/// Stream error code: the request frame was malformed or oversize.
pub const STREAM_MALFORMED: u32 = 0x20;

/// Longest wait, after dialing a peer that announced fresher trust data,
/// for that data to arrive.
const CATCH_UP: Duration = Duration::from_secs(5);

const BELOW_BASELINE_MSG: &str = "software below the security baseline";

/// A boxed future, as returned by [`MeshHandler`] methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a handler could not serve a request.
#[derive(Debug, Clone, Error)]
pub enum HandlerError {
    /// Try again later (storage unavailable…).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Refused by policy.
    #[error("refused: {0}")]
    Refused(String),
    /// The request is not well formed.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The peer asks too often.
    #[error("rate limited: {0}")]
    RateLimited(String),
}

fn handler_error_response(e: HandlerError) -> Response {
    let (code, m) = match e {
        HandlerError::Unavailable(m) => (error_reply::Code::Unavailable, m),
        HandlerError::Refused(m) => (error_reply::Code::Refused, m),
        HandlerError::Malformed(m) => (error_reply::Code::Malformed, m),
        HandlerError::RateLimited(m) => (error_reply::Code::RateLimited, m),
    };
    error_response(code, m)
}

/// What the instance provides to the mesh: durable delivery and privacy answers.
pub trait MeshHandler: Send + Sync + 'static {
    /// Stores a message for local recipients. Must be idempotent by
    /// `txn_id` and must return only once the message is durably stored.
    /// The sender domain binding has already been checked.
    fn deliver(
        &self,
        peer: &PeerIdentity,
        req: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>>;
    /// Answers a k-anonymous public privacy level query.
    fn privacy_query(
        &self,
        peer: &PeerIdentity,
        q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>>;
    /// Follows a user's move in the contact books (already checked: the
    /// old address is the peer's, the new one a member's).
    fn move_notice(
        &self,
        _peer: &PeerIdentity,
        _n: MoveNotice,
    ) -> BoxFuture<Result<PushReply, HandlerError>> {
        Box::pin(async {
            Ok(PushReply {
                accepted: false,
                detail: "move notices are not taken here".into(),
            })
        })
    }
    /// Takes a piece of an account archive from a member that handed over
    /// to this one (already checked against the directory).
    fn handover_chunk(
        &self,
        _peer: &PeerIdentity,
        _c: HandoverChunk,
    ) -> BoxFuture<Result<HandoverReply, HandlerError>> {
        Box::pin(async {
            Err(HandlerError::Refused(
                "this member does not take handovers".into(),
            ))
        })
    }
}

/// Tunables of a mesh endpoint.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This member's id (as in its label).
    pub member_id: String,
    /// Largest frame body accepted.
    pub max_frame: usize,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Keep-alive interval (below the idle timeout).
    pub keep_alive: Duration,
    /// Concurrent bidirectional streams a peer may open on one connection.
    pub max_streams: u32,
    /// Sustained requests per second allowed per peer.
    pub rate_per_second: f64,
    /// Burst allowed per peer.
    pub rate_burst: f64,
    /// Deadline of one request (read, handle, answer).
    pub request_timeout: Duration,
    /// Deadline of a connection attempt.
    pub connect_timeout: Duration,
    /// How long a peer below the software baseline is tolerated (flagged) before refusal.
    pub baseline_grace: Duration,
}

impl MeshConfig {
    /// Defaults for `member_id`.
    pub fn new(member_id: impl Into<String>) -> Self {
        Self {
            member_id: member_id.into(),
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(15),
            max_streams: 256,
            rate_per_second: 2_000.0,
            rate_burst: 4_000.0,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            baseline_grace: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A mesh request failure, as seen by the caller.
#[derive(Debug, Error)]
pub enum MeshError {
    /// The peer is not in the directory or has no endpoint.
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// Could not connect or the handshake was refused.
    #[error("connect to {peer}: {detail}")]
    Connect {
        /// Member id.
        peer: String,
        /// What failed.
        detail: String,
    },
    /// The connection or stream failed mid-request.
    #[error("transport: {0}")]
    Transport(String),
    /// The answer did not decode.
    #[error("bad answer: {0}")]
    BadAnswer(#[from] FrameError),
    /// The peer answered with an error.
    #[error("peer refused ({code:?}): {message}")]
    Remote {
        /// Error code.
        code: error_reply::Code,
        /// Message.
        message: String,
    },
    /// The peer answered with another kind of response.
    #[error("unexpected answer")]
    Unexpected,
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Socket failure.
    #[error("io: {0}")]
    Io(String),
}

/// Counters of a mesh endpoint.
#[derive(Debug, Default)]
pub struct MeshStats {
    /// Malformed or oversize request frames.
    pub frames_refused: AtomicU64,
    /// Requests refused by the per-peer rate limit.
    pub rate_limited: AtomicU64,
    /// Deliveries refused for a sender domain outside the peer's certificate.
    pub sender_refused: AtomicU64,
    /// Deliveries answered.
    pub deliveries: AtomicU64,
    /// Connections closed because the peer lost its label.
    pub closed_revoked: AtomicU64,
    /// Hellos from peers below the software baseline.
    pub below_baseline: AtomicU64,
    /// CRL and directory pushes sent.
    pub gossip_sent: AtomicU64,
    /// CRL and directory pushes refused (bad signature, older than held,
    /// expired, malformed).
    pub pushes_refused: AtomicU64,
    /// Connections refused because the peer's certificate is not shown to
    /// be in the membership log (issue 18).
    pub refused_not_logged: AtomicU64,
}

/// What a connection's stream tasks share.
#[derive(Debug)]
struct ConnState {
    /// The peer's Hello was accepted.
    greeted: AtomicBool,
    /// (CRL number, directory serial) its Hello announced.
    announced: Mutex<(u64, u64)>,
}

#[derive(Debug)]
struct Peer {
    conn: quinn::Connection,
    identity: PeerIdentity,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Inner {
    cfg: MeshConfig,
    endpoint: quinn::Endpoint,
    trust: Arc<TrustStore>,
    handler: Arc<dyn MeshHandler>,
    peers: Mutex<HashMap<String, Peer>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    baseline: Mutex<HashMap<String, Instant>>,
    dial: tokio::sync::Mutex<()>,
    connected: broadcast::Sender<String>,
    log: std::sync::OnceLock<Arc<LogMonitor>>,
    stats: MeshStats,
    token: CancellationToken,
    tracker: TaskTracker,
}

/// A running mesh endpoint. Cheap to clone.
#[derive(Clone)]
pub struct MeshNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("member_id", &self.inner.cfg.member_id)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Compares dotted numeric versions ("0.10.2" > "0.9"); non-numeric parts count as 0.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(4)
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let (mut x, mut y) = (parse(a), parse(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x < y
}

fn error_response(code: error_reply::Code, message: impl Into<String>) -> Response {
    Response {
        body: Some(response::Body::Error(ErrorReply {
            code: code as i32,
            message: message.into(),
        })),
    }
}

fn peer_identity_of(conn: &quinn::Connection, st: &TrustState) -> Option<PeerIdentity> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    check_member(certs.first()?, st).ok()
}

impl MeshNode {
    /// Binds `listen` and starts serving. `identity` may still be empty;
    /// peers are refused until it is set.
    pub async fn start(
        cfg: MeshConfig,
        listen: SocketAddr,
        trust: Arc<TrustStore>,
        identity: Arc<IdentitySlot>,
        handler: Arc<dyn MeshHandler>,
    ) -> Result<Self, MeshError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(cfg.max_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .keep_alive_interval(Some(cfg.keep_alive))
            .max_idle_timeout(Some(
                cfg.idle_timeout
                    .try_into()
                    .map_err(|_| MeshError::Io("idle timeout out of range".into()))?,
            ));
        let transport = Arc::new(transport);
        let qsc =
            quinn::crypto::rustls::QuicServerConfig::try_from(server_config(&trust, &identity)?)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(qsc));
        server.transport_config(transport.clone());
        let qcc =
            quinn::crypto::rustls::QuicClientConfig::try_from(client_config(&trust, &identity)?)
                .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(qcc));
        client.transport_config(transport);
        let mut endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|e| MeshError::Io(format!("bind {listen}: {e}")))?;
        endpoint.set_default_client_config(client);

        let (connected, _) = broadcast::channel(256);
        let inner = Arc::new(Inner {
            cfg,
            endpoint,
            trust,
            handler,
            peers: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            baseline: Mutex::new(HashMap::new()),
            dial: tokio::sync::Mutex::new(()),
            connected,
            log: std::sync::OnceLock::new(),
            stats: MeshStats::default(),
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let node = Self { inner };
        node.inner.tracker.spawn(node.clone().accept_loop());
        node.inner.tracker.spawn(node.clone().trust_loop());
        Ok(node)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, MeshError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| MeshError::Io(e.to_string()))
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.inner.cfg.member_id
    }

    /// Counters.
    pub fn stats(&self) -> &MeshStats {
        &self.inner.stats
    }

    /// The trust store.
    pub fn trust(&self) -> &Arc<TrustStore> {
        &self.inner.trust
    }

    /// Attaches the membership log's monitor: the Hello announces the
    /// checkpoint held, peers' checkpoints and split-view proofs pushed
    /// over the mesh are offered to it, and every new head or split view
    /// it takes is pushed to the connected peers (except its source).
    /// Returns false when one was already attached (it stays).
    pub fn attach_log(&self, log: Arc<LogMonitor>) -> bool {
        if self.inner.log.set(log).is_err() {
            return false;
        }
        self.inner.tracker.spawn(self.clone().log_loop());
        true
    }

    /// The membership log's monitor, when attached.
    pub fn log(&self) -> Option<&Arc<LogMonitor>> {
        self.inner.log.get()
    }

    /// With a membership log attached, a peer's certificate must be shown
    /// in it, at the entry the directory names for it
    /// ([`LogMonitor::check_certificate`]); else the peer is refused like
    /// a revoked one.
    async fn check_logged(&self, identity: &PeerIdentity) -> Result<(), InclusionError> {
        let Some(log) = self.log() else {
            return Ok(());
        };
        if log.is_included(&identity.sha256) {
            return Ok(());
        }
        let index = self
            .inner
            .trust
            .current()
            .member(&identity.member_id)
            .and_then(|m| {
                let i = m.cert_sha256.iter().position(|s| *s == identity.sha256)?;
                m.cert_log_index.get(i).copied()
            });
        let r = log
            .check_certificate(&identity.member_id, &identity.sha256, index)
            .await;
        if r.is_err() {
            self.inner
                .stats
                .refused_not_logged
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Member ids with a live connection.
    pub fn connected_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock_peers().keys().cloned().collect();
        v.sort();
        v
    }

    /// True when `member` has a live connection (cheaper than
    /// [`MeshNode::connected_peers`] on a hot path).
    pub fn is_connected(&self, member: &str) -> bool {
        self.lock_peers().contains_key(member)
    }

    /// Announces each peer whose connection comes up (for outbox flushes).
    pub fn subscribe_connected(&self) -> broadcast::Receiver<String> {
        self.inner.connected.subscribe()
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting, closes every connection and waits for every task.
    pub async fn shutdown(&self) {
        self.inner.token.cancel();
        self.inner
            .endpoint
            .close(CLOSE_SHUTDOWN.into(), b"shutting down");
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.lock_peers().clear();
        // Give the close frames time to leave, but do not wait for every
        // connection to drain: a handshake that was abandoned half-way (a
        // peer's stale attempt arriving as we came up) otherwise keeps the
        // endpoint busy until its idle timeout, and shutdown took a minute.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }

    async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                i = self.inner.endpoint.accept() => i,
                _ = self.inner.token.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let node = self.clone();
            self.inner.tracker.spawn(async move {
                let remote = incoming.remote_address();
                let conn =
                    match tokio::time::timeout(node.inner.cfg.connect_timeout, incoming).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "incoming mesh handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "incoming mesh handshake timed out");
                            return;
                        }
                    };
                let st = node.inner.trust.current();
                let Some(identity) = peer_identity_of(&conn, &st) else {
                    conn.close(CLOSE_REVOKED.into(), b"not a member");
                    return;
                };
                drop(st);
                if let Err(e) = node.check_logged(&identity).await {
                    tracing::warn!(%remote, peer = %identity.member_id, error = %e,
                        "mesh connection refused: certificate not shown in the membership log");
                    conn.close(CLOSE_REVOKED.into(), b"not in the membership log");
                    return;
                }
                // The log check may have taken a while (a poll, tiles): a
                // CRL or directory taken meanwhile closed only the pooled
                // connections, so this one is checked again before it joins.
                if !still_member(&node.inner.trust.current(), &identity) {
                    node.inner
                        .stats
                        .closed_revoked
                        .fetch_add(1, Ordering::Relaxed);
                    conn.close(CLOSE_REVOKED.into(), b"revoked");
                    return;
                }
                tracing::debug!(%remote, peer = %identity.member_id, "mesh connection accepted");
                node.register(conn, identity, false);
            });
        }
    }

    /// `greeted`: the peer's Hello was already checked (connections we dialed).
    fn register(&self, conn: quinn::Connection, identity: PeerIdentity, greeted: bool) {
        self.pool(conn.clone(), identity.clone());
        self.serve(conn, identity, greeted);
    }

    /// Makes `conn` the live connection to its member and announces it.
    fn pool(&self, conn: quinn::Connection, identity: PeerIdentity) {
        let member = identity.member_id.clone();
        self.lock_peers()
            .insert(member.clone(), Peer { conn, identity });
        let _ = self.inner.connected.send(member);
    }

    /// Serves the streams the peer opens on `conn`.
    fn serve(&self, conn: quinn::Connection, identity: PeerIdentity, greeted: bool) {
        let node = self.clone();
        let greeted = Arc::new(ConnState {
            greeted: AtomicBool::new(greeted),
            announced: Mutex::new((0, 0)),
        });
        self.inner.tracker.spawn(async move {
            node.serve_connection(conn, identity, greeted).await;
        });
    }

    /// After the Hello of a peer we dialed: when it announced a newer CRL or
    /// directory than ours (we were cut off, say), waits a bounded time for
    /// the push it sends on seeing our older numbers, then checks again that
    /// the peer is still a member. Without this, mail could reach a member
    /// revoked while we were not listening.
    async fn catch_up_with(&self, (crl, directory): (u64, u64), identity: &PeerIdentity) -> bool {
        let fresh = |st: &TrustState| st.crl_number() >= crl && st.directory_serial() >= directory;
        // Subscribe first: the push may already be on its way (or taken).
        let mut rx = self.inner.trust.subscribe();
        let waited = tokio::time::timeout(self.inner.cfg.request_timeout.min(CATCH_UP), async {
            while !fresh(&self.inner.trust.current()) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        // Checked in every case: the push may have been taken before we looked.
        if waited.is_err() {
            tracing::warn!(peer = %identity.member_id, crl, directory,
                "peer announced trust data it did not send us; going on with ours");
        }
        still_member(&self.inner.trust.current(), identity)
    }

    async fn serve_connection(
        self,
        conn: quinn::Connection,
        identity: PeerIdentity,
        greeted: Arc<ConnState>,
    ) {
        loop {
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                _ = self.inner.token.cancelled() => break,
            };
            match stream {
                Ok((send, recv)) => {
                    let node = self.clone();
                    let id = identity.clone();
                    let greeted = greeted.clone();
                    self.inner.tracker.spawn(async move {
                        node.serve_stream(id, greeted, send, recv).await;
                    });
                }
                Err(e) => {
                    tracing::debug!(peer = %identity.member_id, error = %e, "mesh connection ended");
                    break;
                }
            }
        }
        let mut peers = self.lock_peers();
        if peers
            .get(&identity.member_id)
            .is_some_and(|p| p.conn.stable_id() == conn.stable_id())
        {
            peers.remove(&identity.member_id);
        }
    }

    fn rate_ok(&self, member: &str) -> bool {
        let cfg = &self.inner.cfg;
        let mut b = self
            .inner
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let bucket = b.entry(member.to_owned()).or_insert(Bucket {
            tokens: cfg.rate_burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * cfg.rate_per_second).min(cfg.rate_burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    async fn serve_stream(
        self,
        peer: PeerIdentity,
        greeted: Arc<ConnState>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let max = self.inner.cfg.max_frame;
        let read =
            tokio::time::timeout(self.inner.cfg.request_timeout, recv.read_to_end(max + 4)).await;
        let response = match read {
            Err(_) => {
                self.inner
                    .stats
                    .frames_refused
                    .fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(STREAM_MALFORMED.into());
                error_response(error_reply::Code::Malformed, "request not received in time")
            }
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                self.inner
                    .stats
                    .frames_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %peer.member_id, "oversize mesh frame refused");
                let _ = recv.stop(STREAM_MALFORMED.into());
                error_response(
                    error_reply::Code::Malformed,
                    format!("frame exceeds {max} bytes"),
                )
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.member_id, error = %e, "mesh stream failed");
                return;
            }
            Ok(Ok(data)) => match decode_single::<Request>(&data, max) {
                Err(e) => {
                    self.inner
                        .stats
                        .frames_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer.member_id, error = %e, "malformed mesh frame refused");
                    error_response(error_reply::Code::Malformed, e.to_string())
                }
                Ok(req) => {
                    if self.rate_ok(&peer.member_id) {
                        self.dispatch(&peer, &greeted, req).await
                    } else {
                        self.inner
                            .stats
                            .rate_limited
                            .fetch_add(1, Ordering::Relaxed);
                        error_response(error_reply::Code::RateLimited, "rate limit exceeded")
                    }
                }
            },
        };
        let frame = encode_frame(&response);
        if let Err(e) = send.write_all(&frame).await {
            tracing::debug!(peer = %peer.member_id, error = %e, "mesh answer not sent");
            return;
        }
        let _ = send.finish();
        // Let the peer read the answer before the stream is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        if matches!(&response.body, Some(response::Body::Error(e)) if e.message == BELOW_BASELINE_MSG)
        {
            self.close_peer(&peer.member_id, CLOSE_BELOW_BASELINE, b"below baseline");
        }
    }

    fn own_hello(&self) -> Hello {
        let st = self.inner.trust.current();
        let head = self.inner.log.get().and_then(|l| l.head());
        Hello {
            protocol_version: MESH_PROTOCOL_VERSION,
            software_version: SOFTWARE_VERSION.to_owned(),
            directory_serial: st.directory_serial(),
            crl_number: st.crl_number(),
            member_id: self.inner.cfg.member_id.clone(),
            log_size: head.map_or(0, |h| h.0),
            log_root: head.map(|h| h.1.to_vec()).unwrap_or_default(),
        }
    }

    /// Flags (and after the grace period refuses) a peer below the baseline.
    /// Returns false when the peer must be refused.
    fn check_baseline(&self, peer: &str, version: &str) -> bool {
        let st = self.inner.trust.current();
        let min = st
            .directory
            .as_ref()
            .map(|d| d.directory.min_software_version.clone())
            .unwrap_or_default();
        let mut flagged = self
            .inner
            .baseline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if min.is_empty() || !version_lt(version, &min) {
            flagged.remove(peer);
            return true;
        }
        self.inner
            .stats
            .below_baseline
            .fetch_add(1, Ordering::Relaxed);
        let since = *flagged.entry(peer.to_owned()).or_insert_with(Instant::now);
        let within_grace = since.elapsed() < self.inner.cfg.baseline_grace;
        tracing::warn!(peer, version, baseline = %min, within_grace,
            "peer runs software below the security baseline");
        within_grace
    }

    /// After a Hello exchange: the fresher side pushes.
    fn push_if_fresher(&self, peer: &str, theirs: &Hello) {
        let st = self.inner.trust.current();
        if st.crl_number() > theirs.crl_number {
            if let Some(c) = &st.crl {
                self.spawn_push(peer.to_owned(), crl_push(c.number, &c.der));
            }
        }
        if st.directory_serial() > theirs.directory_serial {
            if let Some(d) = &st.directory {
                self.spawn_push(peer.to_owned(), directory_push(&d.signed));
            }
        }
        // The membership log: unlike a CRL, the staler side's checkpoint
        // is news too (a fork where one side is ahead is seen only by the
        // side whose tiles prove the other's head is not a prefix), so each
        // side sends its own when the heads differ. A held split-view proof
        // goes to every peer.
        if let Some(log) = self.inner.log.get() {
            if let Some(held) = log.held() {
                let same = theirs.log_size == held.checkpoint.size
                    && theirs.log_root == held.checkpoint.root;
                if !same {
                    self.spawn_push(peer.to_owned(), checkpoint_push(&held.note));
                }
            }
            if let Some(sv) = log.split_view() {
                self.spawn_push(peer.to_owned(), split_view_push(&sv));
            }
        }
    }

    fn spawn_push(&self, peer: String, req: Request) {
        let node = self.clone();
        self.inner.stats.gossip_sent.fetch_add(1, Ordering::Relaxed);
        self.inner.tracker.spawn(async move {
            if let Err(e) = node.request_connected(&peer, req).await {
                tracing::debug!(peer, error = %e, "gossip push failed");
            }
        });
    }

    async fn dispatch(&self, peer: &PeerIdentity, greeted: &ConnState, req: Request) -> Response {
        let Some(body) = req.body else {
            return error_response(error_reply::Code::Malformed, "empty request");
        };
        if !matches!(body, request::Body::Hello(_)) && !greeted.greeted.load(Ordering::Acquire) {
            return error_response(error_reply::Code::Refused, "send Hello first");
        }
        if matches!(
            body,
            request::Body::Deliver(_) | request::Body::PrivacyQuery(_)
        ) {
            // A member that learnt of its own revocation (or delisting) has
            // left the mesh: it takes nothing more over it. A sender with
            // staler trust data backs off and, once it learns, falls back to
            // SMTP, rather than storing mail here over a link it will cut
            // (the answer could then be lost, and the mail sent twice).
            let st = self.inner.trust.current();
            if st.directory.is_some() && st.member(&self.inner.cfg.member_id).is_none() {
                tracing::warn!(peer = %peer.member_id, "request refused: this member's label was withdrawn");
                return error_response(
                    error_reply::Code::Unavailable,
                    "this member's label was withdrawn: use SMTP",
                );
            }
            // A peer that dialed us knowing fresher trust data than ours (we
            // were cut off) pushes it: take it before serving the peer, and
            // serve it only if it is still a member.
            let announced = *greeted
                .announced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !self.catch_up_with(announced, peer).await {
                tracing::warn!(peer = %peer.member_id, "request refused: the peer is no longer a member");
                return error_response(
                    error_reply::Code::Refused,
                    "your certificate is revoked or no longer listed",
                );
            }
        }
        match body {
            request::Body::Hello(h) => {
                if h.protocol_version != MESH_PROTOCOL_VERSION {
                    return error_response(
                        error_reply::Code::Unsupported,
                        format!(
                            "mesh protocol {} not supported (this member speaks {MESH_PROTOCOL_VERSION})",
                            h.protocol_version
                        ),
                    );
                }
                if !self.check_baseline(&peer.member_id, &h.software_version) {
                    // serve_stream closes the connection once this answer is out.
                    return error_response(error_reply::Code::Refused, BELOW_BASELINE_MSG);
                }
                greeted.greeted.store(true, Ordering::Release);
                *greeted
                    .announced
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    (h.crl_number, h.directory_serial);
                self.push_if_fresher(&peer.member_id, &h);
                Response {
                    body: Some(response::Body::Hello(self.own_hello())),
                }
            }
            request::Body::Deliver(d) => {
                if d.txn_id.len() != 32 || d.rcpt_to.is_empty() {
                    return error_response(
                        error_reply::Code::Malformed,
                        "txn_id must be 32 bytes and rcpt_to non-empty",
                    );
                }
                if !d.mail_from.is_empty() {
                    let domain = d
                        .mail_from
                        .rsplit_once('@')
                        .map(|(_, dom)| dom.to_ascii_lowercase())
                        .unwrap_or_default();
                    // A member that handed over to this one forwards what
                    // still reaches it, from any sender, to the domains it
                    // handed over (and only those).
                    let st = self.inner.trust.current();
                    let predecessor = st.handed_over(&peer.member_id, &self.inner.cfg.member_id)
                        && st.member(&peer.member_id).is_some_and(|m| {
                            d.rcpt_to.iter().all(|r| {
                                r.rsplit_once('@').is_some_and(|(_, dom)| {
                                    m.domains.contains(&dom.to_ascii_lowercase())
                                })
                            })
                        });
                    if !peer.domains.contains(&domain) && !predecessor {
                        self.inner
                            .stats
                            .sender_refused
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %peer.member_id, sender = %d.mail_from,
                            "delivery refused: sender domain not in the peer's certificate");
                        return error_response(
                            error_reply::Code::Refused,
                            format!(
                                "sender domain {domain:?} is not served by {}",
                                peer.member_id
                            ),
                        );
                    }
                }
                match self.inner.handler.deliver(peer, d).await {
                    Ok(r) => {
                        self.inner.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                        Response {
                            body: Some(response::Body::Deliver(r)),
                        }
                    }
                    Err(e) => handler_error_response(e),
                }
            }
            request::Body::HandoverChunk(c) => {
                // Only from a member the directory says handed over to this
                // one, or for an account move with a code (the handler
                // checks it against what its operator accepted).
                if c.code.is_empty()
                    && !self
                        .inner
                        .trust
                        .current()
                        .handed_over(&peer.member_id, &self.inner.cfg.member_id)
                {
                    tracing::warn!(peer = %peer.member_id, "handover refused: not our predecessor");
                    return error_response(
                        error_reply::Code::Refused,
                        format!(
                            "the directory does not say that {} handed over to {}",
                            peer.member_id, self.inner.cfg.member_id
                        ),
                    );
                }
                match self.inner.handler.handover_chunk(peer, c).await {
                    Ok(r) => Response {
                        body: Some(response::Body::Handover(r)),
                    },
                    Err(e) => handler_error_response(e),
                }
            }
            request::Body::MoveNotice(n) => {
                let st = self.inner.trust.current();
                let dom = |a: &str| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
                let old_ok = dom(&n.old_address).is_some_and(|d| {
                    peer.domains.contains(&d)
                        || st
                            .member(&peer.member_id)
                            .is_some_and(|m| m.domains.contains(&d))
                });
                let new_ok =
                    dom(&n.new_address).is_some_and(|d| st.member_for_domain(&d).is_some());
                if !old_ok || !new_ok {
                    tracing::warn!(peer = %peer.member_id, old = %n.old_address,
                        new = %n.new_address, "move notice refused");
                    return error_response(
                        error_reply::Code::Refused,
                        "a move notice names an address of the sender and one at a labelled member",
                    );
                }
                match self.inner.handler.move_notice(peer, n).await {
                    Ok(r) => Response {
                        body: Some(response::Body::Push(r)),
                    },
                    Err(e) => handler_error_response(e),
                }
            }
            request::Body::PrivacyQuery(q) => match self.inner.handler.privacy_query(peer, q).await
            {
                Ok(r) => Response {
                    body: Some(response::Body::Privacy(r)),
                },
                Err(e) => handler_error_response(e),
            },
            request::Body::CrlPush(c) => {
                let r = self
                    .inner
                    .trust
                    .offer_crl(&c.crl_der, Some(&peer.member_id));
                self.push_outcome(peer, "CRL", r)
            }
            request::Body::CheckpointPush(c) => {
                let Some(log) = self.inner.log.get() else {
                    return push_reply(Err("this member keeps no membership log".into()));
                };
                let r = log.offer(&c.note, Some(&peer.member_id)).await;
                match r {
                    Ok(Offer::Taken { grew }) => push_reply(Ok(grew)),
                    Ok(Offer::Unchanged) | Ok(Offer::NeedProof { .. }) => push_reply(Ok(false)),
                    Ok(Offer::SplitView(_)) => push_reply(Err(
                        "split view: this checkpoint contradicts the one held".into(),
                    )),
                    // Not the pusher's fault: the proof could not be had here.
                    Err(e @ LogError::Unverifiable { .. }) => push_reply(Err(e.to_string())),
                    Err(e) => {
                        self.inner
                            .stats
                            .pushes_refused
                            .fetch_add(1, Ordering::Relaxed);
                        push_reply(Err(e.to_string()))
                    }
                }
            }
            request::Body::SplitViewPush(p) => {
                let Some(log) = self.inner.log.get() else {
                    return push_reply(Err("this member keeps no membership log".into()));
                };
                let mut proof = Vec::with_capacity(p.proof.len());
                for h in &p.proof {
                    let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) else {
                        return error_response(
                            error_reply::Code::Malformed,
                            "split-view proof hashes must be 32 bytes",
                        );
                    };
                    proof.push(h);
                }
                let sv = SplitView {
                    first: p.first_note,
                    second: p.second_note,
                    proof,
                    source: Some(peer.member_id.clone()),
                    detected_at: now_unix(),
                };
                match log.offer_split_view(sv).await {
                    Ok(new) => push_reply(Ok(new)),
                    Err(e) => {
                        self.inner
                            .stats
                            .pushes_refused
                            .fetch_add(1, Ordering::Relaxed);
                        push_reply(Err(e.to_string()))
                    }
                }
            }
            request::Body::DirectoryPush(d) => {
                let Some(signed) = d.directory else {
                    return error_response(error_reply::Code::Malformed, "empty directory push");
                };
                let r =
                    self.inner
                        .trust
                        .offer_directory(&signed, Some(&peer.member_id), now_unix());
                self.push_outcome(peer, "directory", r)
            }
        }
    }

    /// Counts and logs a refused push, then answers it.
    fn push_outcome(
        &self,
        peer: &PeerIdentity,
        what: &str,
        r: Result<bool, crate::trust::TrustError>,
    ) -> Response {
        if let Err(e) = &r {
            self.inner
                .stats
                .pushes_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer.member_id, what, error = %e, "pushed trust data refused");
        }
        push_reply(r.map_err(|e| e.to_string()))
    }

    fn close_peer(&self, member: &str, code: u32, reason: &[u8]) {
        if let Some(p) = self.lock_peers().remove(member) {
            p.conn.close(code.into(), reason);
        }
    }

    /// Reacts to trust changes: closes connections of peers that lost their
    /// label, and forwards the newer CRL or directory to the other peers once.
    async fn trust_loop(self) {
        let mut rx = self.inner.trust.subscribe();
        let mut last_crl = rx.borrow().crl_number;
        let mut last_dir = rx.borrow().directory_serial;
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = self.inner.token.cancelled() => break,
            }
            let change = rx.borrow_and_update().clone();
            let st = self.inner.trust.current();
            // Enforce first.
            let doomed: Vec<String> = self
                .lock_peers()
                .iter()
                .filter(|(_, p)| !still_member(&st, &p.identity))
                .map(|(m, _)| m.clone())
                .collect();
            for m in doomed {
                tracing::warn!(peer = %m, "closing the connection of a peer that lost its label");
                self.inner
                    .stats
                    .closed_revoked
                    .fetch_add(1, Ordering::Relaxed);
                self.close_peer(&m, CLOSE_REVOKED, b"revoked");
            }
            // Then gossip what is new to everyone but its source.
            let mut pushes = Vec::new();
            if change.crl_number > last_crl {
                last_crl = change.crl_number;
                if let Some(c) = &st.crl {
                    pushes.push(crl_push(c.number, &c.der));
                }
            }
            if change.directory_serial > last_dir {
                last_dir = change.directory_serial;
                if let Some(d) = &st.directory {
                    pushes.push(directory_push(&d.signed));
                }
            }
            for peer in self.connected_peers() {
                if change.source.as_deref() == Some(peer.as_str()) {
                    continue;
                }
                for p in &pushes {
                    self.spawn_push(peer.clone(), p.clone());
                }
            }
        }
    }

    /// Pushes every new head and a split view the log monitor takes to the
    /// connected peers, except the one it came from.
    async fn log_loop(self) {
        let Some(log) = self.inner.log.get().cloned() else {
            return;
        };
        let mut rx = log.subscribe();
        let (mut last_head, mut last_split) = {
            let c = rx.borrow();
            ((c.size, c.root), c.split_view)
        };
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = self.inner.token.cancelled() => break,
            }
            let change = rx.borrow_and_update().clone();
            let mut head = None;
            if (change.size, change.root) != last_head {
                last_head = (change.size, change.root);
                head = log.held().map(|h| checkpoint_push(&h.note));
            }
            // A split-view proof goes to every peer, its source included:
            // the member that showed us the other checkpoint may not be
            // able to prove the split itself.
            let mut split = None;
            if change.split_view && !last_split {
                split = log.split_view().map(|sv| split_view_push(&sv));
            }
            last_split = change.split_view;
            for peer in self.connected_peers() {
                if let Some(p) = &split {
                    self.spawn_push(peer.clone(), p.clone());
                }
                if change.source.as_deref() == Some(peer.as_str()) {
                    continue;
                }
                if let Some(p) = &head {
                    self.spawn_push(peer.clone(), p.clone());
                }
            }
        }
    }

    /// The live connection to `member`, dialing it when there is none.
    pub async fn connect(&self, member: &str) -> Result<quinn::Connection, MeshError> {
        if let Some(p) = self.lock_peers().get(member) {
            if p.conn.close_reason().is_none() {
                return Ok(p.conn.clone());
            }
        }
        let _g = self.inner.dial.lock().await;
        if let Some(p) = self.lock_peers().get(member) {
            if p.conn.close_reason().is_none() {
                return Ok(p.conn.clone());
            }
        }
        let st = self.inner.trust.current();
        let m = st
            .member(member)
            .ok_or_else(|| MeshError::UnknownPeer(member.to_owned()))?;
        let server_name = m
            .domains
            .first()
            .cloned()
            .ok_or_else(|| MeshError::UnknownPeer(member.to_owned()))?;
        let mut last = MeshError::UnknownPeer(format!("{member} has no mesh endpoint"));
        for ep in m.endpoints.clone() {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(ep.as_str()).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    last = MeshError::Connect {
                        peer: member.to_owned(),
                        detail: format!("resolve {ep}: {e}"),
                    };
                    continue;
                }
            };
            for addr in addrs {
                match self.dial(member, addr, &server_name).await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn dial(
        &self,
        member: &str,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connection, MeshError> {
        let err = |detail: String| MeshError::Connect {
            peer: member.to_owned(),
            detail,
        };
        let connecting = self
            .inner
            .endpoint
            .connect(addr, server_name)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(self.inner.cfg.connect_timeout, connecting)
            .await
            .map_err(|_| err("handshake timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let st = self.inner.trust.current();
        let identity =
            peer_identity_of(&conn, &st).ok_or_else(|| err("peer is not a member".into()))?;
        if identity.member_id != member {
            conn.close(CLOSE_REVOKED.into(), b"unexpected member");
            return Err(err(format!("answered as {}", identity.member_id)));
        }
        drop(st);
        if let Err(e) = self.check_logged(&identity).await {
            conn.close(CLOSE_REVOKED.into(), b"not in the membership log");
            return Err(err(format!(
                "certificate not shown in the membership log: {e}"
            )));
        }
        // A finished handshake is not acceptance: the peer may still refuse
        // our certificate. The Hello exchange proves it took us.
        let hello = Request {
            body: Some(request::Body::Hello(self.own_hello())),
        };
        let answer = tokio::time::timeout(
            self.inner.cfg.request_timeout,
            request_on(&conn, &hello, self.inner.cfg.max_frame),
        )
        .await
        .map_err(|_| err("hello timed out".into()))?
        .map_err(|e| err(format!("hello: {e}")))?;
        let theirs = match answer.body {
            Some(response::Body::Hello(h)) => h,
            Some(response::Body::Error(e)) => {
                conn.close(0u32.into(), b"refused");
                return Err(err(format!("hello refused: {}", e.message)));
            }
            _ => return Err(err("unexpected hello answer".into())),
        };
        if theirs.protocol_version != MESH_PROTOCOL_VERSION {
            conn.close(0u32.into(), b"protocol version");
            return Err(err(format!(
                "peer speaks mesh protocol {}",
                theirs.protocol_version
            )));
        }
        if !self.check_baseline(member, &theirs.software_version) {
            conn.close(CLOSE_BELOW_BASELINE.into(), b"below baseline");
            return Err(err("peer software below the security baseline".into()));
        }
        // Serve the connection (the peer's pushes arrive on it) before it is
        // pooled: nothing is sent to the peer until we are as fresh as it is.
        self.serve(conn.clone(), identity.clone(), true);
        if !self
            .catch_up_with((theirs.crl_number, theirs.directory_serial), &identity)
            .await
        {
            self.inner
                .stats
                .closed_revoked
                .fetch_add(1, Ordering::Relaxed);
            conn.close(CLOSE_REVOKED.into(), b"revoked");
            return Err(err(
                "peer is no longer a member (revoked or delisted, as its own trust data says)"
                    .into(),
            ));
        }
        tracing::info!(peer = member, %addr, version = %theirs.software_version, "mesh connection up");
        self.pool(conn.clone(), identity);
        self.push_if_fresher(member, &theirs);
        Ok(conn)
    }

    /// Sends one request to `member` (dialing if needed) and returns its answer.
    pub async fn request(&self, member: &str, req: Request) -> Result<Response, MeshError> {
        let conn = self.connect(member).await?;
        let r = tokio::time::timeout(
            self.inner.cfg.request_timeout,
            request_on(&conn, &req, self.inner.cfg.max_frame),
        )
        .await
        .map_err(|_| MeshError::Timeout)??;
        if let Some(response::Body::Error(e)) = &r.body {
            return Err(MeshError::Remote {
                code: error_reply::Code::try_from(e.code).unwrap_or(error_reply::Code::Unspecified),
                message: e.message.clone(),
            });
        }
        Ok(r)
    }

    /// Like [`MeshNode::request`], but only over an existing connection.
    async fn request_connected(&self, member: &str, req: Request) -> Result<Response, MeshError> {
        let conn = self
            .lock_peers()
            .get(member)
            .map(|p| p.conn.clone())
            .ok_or_else(|| MeshError::UnknownPeer(member.to_owned()))?;
        tokio::time::timeout(
            self.inner.cfg.request_timeout,
            request_on(&conn, &req, self.inner.cfg.max_frame),
        )
        .await
        .map_err(|_| MeshError::Timeout)?
    }

    /// Delivers a message to `member`; returns once it stored it durably.
    pub async fn deliver(&self, member: &str, d: Deliver) -> Result<DeliverReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::Deliver(d)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Deliver(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }

    /// Tells `member` that a user of this member moved.
    pub async fn move_notice(&self, member: &str, n: MoveNotice) -> Result<PushReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::MoveNotice(n)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Push(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }

    /// Sends a piece of an account archive to `member`, the successor.
    pub async fn handover_chunk(
        &self,
        member: &str,
        c: HandoverChunk,
    ) -> Result<HandoverReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::HandoverChunk(c)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Handover(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }

    /// Asks `member` for the public privacy levels in a hash-prefix bucket.
    pub async fn privacy_query(
        &self,
        member: &str,
        q: PrivacyQuery,
    ) -> Result<PrivacyReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::PrivacyQuery(q)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Privacy(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }
}

fn still_member(st: &TrustState, id: &PeerIdentity) -> bool {
    let revoked = st
        .crl
        .as_ref()
        .is_some_and(|c| c.revoked.contains(&id.serial));
    let listed = st
        .member(&id.member_id)
        .is_some_and(|m| m.cert_sha256.contains(&id.sha256));
    !revoked && listed
}

fn crl_push(number: u64, der: &[u8]) -> Request {
    Request {
        body: Some(request::Body::CrlPush(CrlPush {
            crl_number: number,
            crl_der: der.to_vec(),
        })),
    }
}

fn directory_push(signed: &caliopen_proto::pb::directory::SignedDirectory) -> Request {
    Request {
        body: Some(request::Body::DirectoryPush(DirectoryPush {
            directory: Some(signed.clone()),
        })),
    }
}

fn checkpoint_push(note: &str) -> Request {
    Request {
        body: Some(request::Body::CheckpointPush(CheckpointPush {
            note: note.to_owned(),
        })),
    }
}

fn split_view_push(sv: &SplitView) -> Request {
    Request {
        body: Some(request::Body::SplitViewPush(SplitViewPush {
            first_note: sv.first.clone(),
            second_note: sv.second.clone(),
            proof: sv.proof.iter().map(|h| h.to_vec()).collect(),
        })),
    }
}

fn push_reply(r: Result<bool, String>) -> Response {
    let reply = match r {
        Ok(accepted) => PushReply {
            accepted,
            detail: String::new(),
        },
        Err(detail) => PushReply {
            accepted: false,
            detail,
        },
    };
    Response {
        body: Some(response::Body::Push(reply)),
    }
}

/// One request on its own bidirectional stream of `conn`.
pub async fn request_on(
    conn: &quinn::Connection,
    req: &Request,
    max_frame: usize,
) -> Result<Response, MeshError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    send.write_all(&encode_frame(req))
        .await
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    send.finish()
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    let data = recv
        .read_to_end(max_frame + 4)
        .await
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    Ok(decode_single::<Response>(&data, max_frame)?)
}

#[cfg(test)]
mod tests {
    use super::version_lt;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_lt("0.9.0", "0.10.0"));
        assert!(version_lt("0.1", "0.1.1"));
        assert!(!version_lt("1.0.0", "1.0"));
        assert!(!version_lt("2.0.0", "1.9.9"));
        assert!(version_lt("garbage", "0.0.1"));
    }
}

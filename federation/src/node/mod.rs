//! The mesh endpoint of a member: a QUIC endpoint (quinn; QUIC is RFC 9000,
//! secured with TLS 1.3 as RFC 9001 says) that accepts and dials labelled
//! peers, keeps one pooled connection per peer, serves one request per
//! bidirectional stream, rate-limits each peer, gossips newer CRLs and
//! directories, and closes the connections of peers that lose their label.
//!
//! This file holds the endpoint's types (configuration, errors, counters,
//! the node itself), its start and shutdown. The rest, by job:
//! - `decide.rs`: the protocol's rules for a request, as a pure function
//!   of the request, the trust state, the connection, the peer and the
//!   time (no socket, no clock of its own); its tests run on a simulated
//!   clock;
//! - `serve.rs`: the accept loop, the per-connection and per-stream tasks
//!   that read a request, ask `decide.rs` and carry the decision out;
//! - `dial.rs`: the connection pool, dialing and the Hello exchange, and
//!   the requests this member sends ([`request_on`]);
//! - `gossip.rs`: pushes of fresher CRLs, directories and log checkpoints,
//!   and closing the connections of peers that lost their label;
//! - `handler.rs`: what the instance provides ([`MeshHandler`]).

mod decide;
mod dial;
mod gossip;
mod handler;
mod serve;

pub use decide::version_lt;
pub use dial::request_on;
pub use handler::{BoxFuture, HandlerError, MeshHandler};

use crate::log::{InclusionError, LogMonitor};
use crate::tls::{client_config, server_config, IdentitySlot, TlsError};
use crate::trust::{check_member, PeerIdentity, TrustState, TrustStore};
use crate::wire::{FrameError, DEFAULT_MAX_FRAME};
use caliopen_proto::pb::mesh::{error_reply, response, ErrorReply, Hello, Response};
use caliopen_proto::{MESH_PROTOCOL_VERSION, SOFTWARE_VERSION};
use decide::PeerState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// The close codes are QUIC application protocol error codes (RFC 9000
// §20.2), sent in a CONNECTION_CLOSE frame (type 0x1d, §19.19); the stream
// code goes in a STOP_SENDING frame (§19.5). Their values are this
// protocol's own.

/// QUIC application close code: the peer lost its label (revoked or delisted).
pub(crate) const CLOSE_REVOKED: u32 = 0x10;
/// QUIC application close code: the peer runs software below the baseline.
pub(crate) const CLOSE_BELOW_BASELINE: u32 = 0x11;
/// QUIC application close code: this member is shutting down.
pub(crate) const CLOSE_SHUTDOWN: u32 = 0x12;
/// Stream error code: the request frame was malformed or oversize.
pub(crate) const STREAM_MALFORMED: u32 = 0x20;

/// Longest wait, after dialing a peer that announced fresher trust data,
/// for that data to arrive.
const CATCH_UP: Duration = Duration::from_secs(5);

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

#[derive(Debug)]
struct Peer {
    conn: quinn::Connection,
    identity: PeerIdentity,
}

struct Inner {
    cfg: MeshConfig,
    endpoint: quinn::Endpoint,
    trust: Arc<TrustStore>,
    handler: Arc<dyn MeshHandler>,
    peers: Mutex<HashMap<String, Peer>>,
    /// Each peer's rate bucket and baseline flag (what `decide` reads and
    /// updates), kept across its connections.
    peer_states: Mutex<HashMap<String, PeerState>>,
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
            peer_states: Mutex::new(HashMap::new()),
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

    fn lock_peer_states(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerState>> {
        self.inner
            .peer_states
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

    /// This member's Hello: versions, the trust data and log head held.
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

    fn close_peer(&self, member: &str, code: u32, reason: &[u8]) {
        if let Some(p) = self.lock_peers().remove(member) {
            p.conn.close(code.into(), reason);
        }
    }
}

//! `caliopen-ca serve`: the association service over TLS (tonic), plus the
//! local admin socket through which the command-line tool reaches the
//! running authority.

use crate::admin::AdminService;
use crate::authority::{files, Authority};
use crate::error::{CaError, Result};
use crate::limits::{RenewLimiter, RetryAfter, SourceKey, WatchLimits, WatchSlots, Watcher};
use caliopen_proto::pb::association::association_server::{Association, AssociationServer};
use caliopen_proto::pb::association::{
    watch_event, CrlResponse, GetCrlRequest, GetDirectoryRequest, LogCheckpoint, RenewRequest,
    RenewResponse, WatchEvent, WatchRequest,
};
use caliopen_proto::pb::ca_admin::ca_admin_server::CaAdminServer;
use caliopen_proto::pb::directory::SignedDirectory;
use prost::Message;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Most `Watch` subscribers served at once (default of
/// [`ServiceConfig::max_watchers`]).
pub const MAX_WATCHERS: usize = 10_000;
/// How often the service checks whether the CRL or directory needs reissuing
/// (default of [`ServiceConfig::refresh_interval`]).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// How long a stopping service waits for open requests to finish.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; a connection past it is closed at
/// once (bounds the memory and tasks unauthenticated peers can hold).
pub(crate) const MAX_HANDSHAKES: usize = 1024;
/// Lifetime of the service's own TLS certificate (reissued at each start).
pub(crate) const SERVICE_CERT_DAYS: i64 = 90;

/// Limits of the association service. The defaults are what
/// `caliopen-ca serve` uses; how long a superseded certificate stays listed
/// is the authority's ([`crate::Settings::superseded_overlap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `Watch` streams in all (10,000).
    pub max_watchers: usize,
    /// Of those, at most this many for clients without a member certificate
    /// (2,000): the rest is reserved for members, so that anyone on the
    /// Internet cannot keep members from following the association.
    pub max_anonymous_watchers: usize,
    /// Anonymous `Watch` streams per source (IPv4 address or IPv6 /64; 4):
    /// enough for a few instances behind one NAT, not for one host to take
    /// the anonymous share.
    pub max_anonymous_watchers_per_source: usize,
    /// `Watch` streams per member (4): a member needs one; a few allow for
    /// reconnections that overlap the stream they replace.
    pub max_watchers_per_member: usize,
    /// One renewal per member per this interval once the burst is spent
    /// (1 hour). A member renews at two thirds of its certificate's lifetime,
    /// so at most every 16 hours with the shortest (1-day) certificates.
    pub renew_interval: Duration,
    /// Renewals a member may make in a row (3): room for a renewal lost in a
    /// crash, and its retry, without waiting.
    pub renew_burst: u32,
    /// How often the CRL and directory are checked for reissuing (60 s); the
    /// service also wakes when a superseded certificate's overlap ends.
    pub refresh_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_watchers: MAX_WATCHERS,
            max_anonymous_watchers: MAX_WATCHERS / 5,
            max_anonymous_watchers_per_source: 4,
            max_watchers_per_member: 4,
            renew_interval: Duration::from_secs(3600),
            renew_burst: 3,
            refresh_interval: REFRESH_INTERVAL,
        }
    }
}

/// The association service's gRPC handlers.
#[derive(Debug, Clone)]
pub struct AssociationService {
    ca: Arc<Authority>,
    watchers: Arc<WatchSlots>,
    renewals: Arc<RenewLimiter>,
    shutdown: CancellationToken,
}

impl AssociationService {
    /// Serves `ca` with the default limits; `Watch` streams end when
    /// `shutdown` is cancelled.
    pub fn new(ca: Arc<Authority>, shutdown: CancellationToken) -> Self {
        Self::with_config(ca, shutdown, &ServiceConfig::default())
    }

    /// Serves `ca` under `config`'s limits.
    pub fn with_config(
        ca: Arc<Authority>,
        shutdown: CancellationToken,
        config: &ServiceConfig,
    ) -> Self {
        Self {
            ca,
            watchers: WatchSlots::new(WatchLimits {
                total: config.max_watchers,
                anonymous: config.max_anonymous_watchers.min(config.max_watchers),
                anonymous_per_source: config.max_anonymous_watchers_per_source,
                per_member: config.max_watchers_per_member,
            }),
            renewals: Arc::new(RenewLimiter::new(config.renew_interval, config.renew_burst)),
            shutdown,
        }
    }

    /// The member a TLS client certificate belongs to, when this association
    /// issued it and it is listed now (not revoked, valid, not superseded
    /// past its overlap). rustls only verified the chain to the root.
    async fn member_of(&self, leaf: Vec<u8>) -> Result<crate::CertRecord, Status> {
        let ca = self.ca.clone();
        tokio::task::spawn_blocking(move || ca.identify(&leaf))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::from)
    }
}

fn leaf_of<T>(request: &Request<T>) -> Option<Vec<u8>> {
    request
        .peer_certs()
        .and_then(|c| c.first().map(|c| c.to_vec()))
}

fn crl_event(p: &crate::authority::Published) -> CrlResponse {
    CrlResponse {
        crl_number: p.crl_number,
        crl_der: p.crl_der.as_ref().clone(),
    }
}

fn directory_of(p: &crate::authority::Published) -> Result<SignedDirectory, Status> {
    SignedDirectory::decode(p.directory.as_slice())
        .map_err(|e| Status::internal(format!("stored directory unreadable: {e}")))
}

#[tonic::async_trait]
impl Association for AssociationService {
    async fn get_crl(
        &self,
        _request: Request<GetCrlRequest>,
    ) -> Result<Response<CrlResponse>, Status> {
        Ok(Response::new(crl_event(&self.ca.published())))
    }

    async fn get_directory(
        &self,
        _request: Request<GetDirectoryRequest>,
    ) -> Result<Response<SignedDirectory>, Status> {
        Ok(Response::new(directory_of(&self.ca.published())?))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let peer = request.remote_addr();
        let leaf = leaf_of(&request).ok_or_else(|| {
            Status::unauthenticated(
                "renewal requires the member's current certificate as TLS client certificate",
            )
        })?;
        let member = match self.member_of(leaf.clone()).await {
            Ok(rec) => rec.member_id,
            Err(e) => {
                tracing::warn!(?peer, error = %e.message(), "renewal refused");
                return Err(e);
            }
        };
        // Before any CSR work: a member's renewals are budgeted, so that one
        // certificate cannot mint certificates (and directories pushed to
        // every watcher) as fast as it can ask.
        if let Err(RetryAfter(wait)) = self.renewals.try_take(&member, Instant::now()) {
            tracing::warn!(?peer, %member, retry_in = ?wait, "renewal refused: rate limit");
            return Err(Status::resource_exhausted(format!(
                "renewal refused: member {member} renewed too often; retry in {} s",
                wait.as_secs().max(1)
            )));
        }
        let csr = request.into_inner().csr_pem;
        let ca = self.ca.clone();
        let res = tokio::task::spawn_blocking(move || ca.renew(&leaf, csr.as_bytes()))
            .await
            .map_err(|e| Status::internal(e.to_string()));
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                self.renewals.give_back(&member, Instant::now());
                return Err(e);
            }
        };
        if let Err(CaError::Io { .. } | CaError::Db(_) | CaError::Crypto(_) | CaError::State(_)) =
            &res
        {
            // Our failure, not the member's: the attempt does not count.
            self.renewals.give_back(&member, Instant::now());
        }
        match res {
            Ok(issued) => {
                tracing::info!(?peer, serial = %issued.record.serial,
                    renewed_from = ?issued.record.renewed_from, member = %issued.record.member_id,
                    "certificate renewed");
                Ok(Response::new(RenewResponse {
                    certificate_pem: issued.record.certificate_pem,
                    serial: issued.record.serial,
                    not_after: issued.record.not_after,
                }))
            }
            Err(e) => {
                tracing::warn!(?peer, error = %e, "renewal refused");
                Err(e.into())
            }
        }
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        // A member is a client presenting a certificate this association
        // issued and lists now; any other client (no certificate, revoked,
        // superseded, unknown) watches as anonymous.
        let who = match leaf_of(&request) {
            Some(leaf) => self.member_of(leaf).await.ok().map(|r| r.member_id),
            None => None,
        }
        .map(Watcher::Member)
        .unwrap_or_else(|| Watcher::Anonymous(peer.map(|a| SourceKey::of(a.ip()))));
        let permit = self.watchers.admit(who).map_err(|refusal| {
            tracing::warn!(?peer, %refusal, "watch refused");
            Status::resource_exhausted(refusal.to_string())
        })?;
        let req = request.into_inner();
        let mut rx = self.ca.subscribe();
        let (tx, out) = mpsc::channel(4);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut last_crl = req.known_crl_number;
            let mut last_dir = req.known_directory_serial;
            // Every checkpoint the stream has not carried yet: the current
            // one at once, then each new one (a change or a heartbeat).
            let mut last_checkpoint: Option<Arc<String>> = None;
            tracing::debug!(?peer, watcher = ?_permit.watcher(), "watcher subscribed");
            loop {
                let p = rx.borrow_and_update().clone();
                if p.crl_number > last_crl {
                    last_crl = p.crl_number;
                    let ev = WatchEvent {
                        event: Some(watch_event::Event::Crl(crl_event(&p))),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        break;
                    }
                }
                if p.directory_serial > last_dir {
                    last_dir = p.directory_serial;
                    let ev = directory_of(&p).map(|d| WatchEvent {
                        event: Some(watch_event::Event::Directory(d)),
                    });
                    if tx.send(ev).await.is_err() {
                        break;
                    }
                }
                if !p.checkpoint.is_empty() && last_checkpoint.as_ref() != Some(&p.checkpoint) {
                    last_checkpoint = Some(p.checkpoint.clone());
                    let ev = WatchEvent {
                        event: Some(watch_event::Event::Checkpoint(LogCheckpoint {
                            note: p.checkpoint.as_ref().clone(),
                        })),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                    _ = shutdown.cancelled() => break,
                }
            }
            tracing::debug!(?peer, "watcher left");
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// Issues the service's own TLS certificate: signed by the root, for the
/// listening IP (an unspecified address means loopback) and the given names.
pub fn service_identity(
    ca: &Authority,
    listen: SocketAddr,
    hostnames: &[String],
) -> Result<(String, String)> {
    let mut sans: Vec<SanType> = Vec::new();
    let ip = listen.ip();
    if ip.is_unspecified() {
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sans.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        sans.push(SanType::DnsName(
            "localhost"
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Crypto(e.to_string()))?,
        ));
    } else {
        sans.push(SanType::IpAddress(ip));
    }
    for h in hostnames {
        let san = match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.as_str()
                    .try_into()
                    .map_err(|_| CaError::BadInput(format!("invalid --hostname {h:?}")))?,
            ),
        };
        sans.push(san);
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{} association service", ca.name()),
    );
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| CaError::Crypto("rng".into()))?;
    // RFC 5280 §4.1.2.2: positive, 16 octets (as the authority's serials).
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let t = time::OffsetDateTime::now_utc();
    params.not_before = t - time::Duration::minutes(5);
    params.not_after = t + time::Duration::days(SERVICE_CERT_DAYS);
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca.root_der()), ca.key())?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A bound, not yet running association service.
#[derive(Debug)]
pub struct BoundService {
    ca: Arc<Authority>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    admin: UnixListener,
    config: ServiceConfig,
}

impl BoundService {
    /// Binds the TLS listener and the admin socket.
    pub async fn bind(
        ca: Arc<Authority>,
        listen: SocketAddr,
        hostnames: &[String],
    ) -> Result<Self> {
        let (cert_pem, key_pem) = service_identity(&ca, listen, hostnames)?;
        let tls = tls_config(&ca, &cert_pem, &key_pem)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| CaError::io(format!("listen on {listen}"), e))?;
        let sock = ca.dir().join(files::ADMIN_SOCKET);
        if sock.exists() {
            // A live service answers; a stale socket from a crash is replaced.
            if tokio::net::UnixStream::connect(&sock).await.is_ok() {
                return Err(CaError::State(format!(
                    "another `caliopen-ca serve` is running on {}",
                    ca.dir().display()
                )));
            }
            std::fs::remove_file(&sock)
                .map_err(|e| CaError::io(format!("remove stale {}", sock.display()), e))?;
        }
        let admin = UnixListener::bind(&sock)
            .map_err(|e| CaError::io(format!("bind {}", sock.display()), e))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| CaError::io(format!("chmod {}", sock.display()), e))?;
        Ok(Self {
            ca,
            listener,
            tls,
            admin,
            config: ServiceConfig::default(),
        })
    }

    /// Runs under `config`'s limits instead of the defaults.
    pub fn with_config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The TLS listener's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| CaError::io("local address", e))
    }

    /// Runs until `shutdown` completes, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            t.cancel();
        });
        let sock = self.ca.dir().join(files::ADMIN_SOCKET);

        let refresh = {
            let ca = self.ca.clone();
            let token = token.clone();
            let every = self.config.refresh_interval;
            let mut published = ca.subscribe();
            tokio::spawn(async move {
                use tokio::time::Instant;
                // The first check runs at once: an overlap may have ended
                // while no service ran.
                let mut next_check = Instant::now();
                let mut last_run: Option<Instant> = None;
                let mut publishing = true;
                loop {
                    // Wake at the periodic check, or when a superseded
                    // certificate's overlap ends if that comes first; a new
                    // publication (a renewal) may bring that end closer, so
                    // it recomputes the deadline without moving the periodic
                    // check.
                    let mut due = next_check;
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    // The checkpoint's heartbeat is a deadline like a prune.
                    for at in ca
                        .next_prune_at()
                        .into_iter()
                        .chain([ca.next_heartbeat_at()])
                    {
                        let left = Duration::from_secs(u64::try_from(at - now).unwrap_or(0));
                        due = due.min(Instant::now() + left);
                    }
                    // Never a busy loop, even when a refresh keeps failing.
                    if let Some(last) = last_run {
                        due = due.max(last + Duration::from_secs(1).min(every));
                    }
                    published.borrow_and_update();
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        changed = published.changed(), if publishing => {
                            // Should the sender go (it lives as long as the
                            // authority), keep the plain schedule.
                            publishing = changed.is_ok();
                            continue;
                        }
                        _ = token.cancelled() => break,
                    }
                    last_run = Some(Instant::now());
                    next_check = Instant::now() + every;
                    let ca = ca.clone();
                    let res = tokio::task::spawn_blocking(move || {
                        // The heartbeat first: a failing CRL or directory
                        // must not stop the checkpoint from being dated.
                        let hb = ca.heartbeat_if_due();
                        (hb, ca.refresh_if_due())
                    })
                    .await;
                    let res = match res {
                        Ok((hb, r)) => {
                            match hb {
                                Ok(true) => tracing::debug!("log checkpoint re-signed (heartbeat)"),
                                Ok(false) => {}
                                Err(e) => tracing::error!(error = %e, "log heartbeat failed"),
                            }
                            Ok(r)
                        }
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(Ok(true)) => tracing::info!(
                            "CRL or directory reissued (half its lifetime passed, or a superseded certificate left the directory)"
                        ),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "refresh failed"),
                        Err(e) => tracing::error!(error = %e, "refresh task failed"),
                    }
                }
            })
        };

        // The witnesses' cosignatures, collected beside everything else:
        // a witness that is down never holds up a membership operation.
        let witnessing =
            tokio::spawn(crate::witnessing::Witnessing::new(self.ca.clone()).run(token.clone()));

        let (incoming, acceptor) = tls_incoming(self.listener, self.tls, token.clone());
        // One listener: gRPC (h2) and the log's tiles under /log/ (h2 or
        // HTTP/1.1, for CDNs and plain clients).
        let routes = Routes::new(AssociationServer::new(AssociationService::with_config(
            self.ca.clone(),
            token.clone(),
            &self.config,
        )))
        .into_axum_router()
        .merge(crate::log_http::router(self.ca.clone()))
        .fallback(crate::log_http::fallback);
        let public = Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_routes(Routes::from(routes))
            .serve_with_incoming_shutdown(incoming, {
                let t = token.clone();
                async move { t.cancelled().await }
            });
        let admin = Server::builder()
            .add_service(CaAdminServer::new(AdminService::new(self.ca.clone())))
            .serve_with_incoming_shutdown(UnixListenerStream::new(self.admin), {
                let t = token.clone();
                async move { t.cancelled().await }
            });
        let servers = async { tokio::join!(public, admin) };
        tokio::pin!(servers);
        let drain_deadline = async {
            token.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let (a, b) = tokio::select! {
            r = &mut servers => r,
            _ = drain_deadline => {
                tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
                (Ok(()), Ok(()))
            }
        };
        token.cancel();
        let _ = refresh.await;
        let _ = witnessing.await;
        let _ = acceptor.await;
        let _ = std::fs::remove_file(&sock);
        a.map_err(|e| CaError::State(format!("association service: {e}")))?;
        b.map_err(|e| CaError::State(format!("admin socket: {e}")))?;
        Ok(())
    }
}

/// The listener's TLS configuration: the service certificate, client
/// certificates optional (members present theirs, anyone may read) and
/// verified to the root, ALPN `h2` (gRPC) and `http/1.1` (the log's tiles).
fn tls_config(ca: &Authority, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let tls_err = |e: String| CaError::State(format!("TLS configuration: {e}"));
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.root_der().to_vec()))
        .map_err(|e| tls_err(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls_err(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(e.to_string()))?;
    // RFC 7301 §3.2: the server picks one of the protocols the client
    // offers (rustls: the first of these the client offers) and answers a
    // client offering none of them with a no_application_protocol alert.
    // "h2" (HTTP/2 over TLS, RFC 9113) is gRPC's; "http/1.1" serves the
    // log's tiles to plain HTTP clients.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

type TlsConn = std::result::Result<TlsStream<tokio::net::TcpStream>, std::io::Error>;

/// Accepts TCP connections and completes their TLS handshakes (each within
/// [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at once) until
/// `token` is cancelled; the established streams come out of the returned
/// stream, for tonic to serve.
fn tls_incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    token: CancellationToken,
) -> (ReceiverStream<TlsConn>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<TlsConn>(64);
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = token.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    ?peer,
                    "too many TLS handshakes in progress: connection closed"
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let hs = tokio::select! {
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => r,
                    _ = token.cancelled() => return,
                };
                match hs {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

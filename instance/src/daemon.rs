//! `caliopen run`: opens the store, binds the SMTP listeners and the admin
//! socket, and serves until the shutdown future completes; then stops
//! accepting, drains sessions in progress and returns.

use crate::admin::{AdminService, ADMIN_SOCKET, ADMIN_TOKEN};
use crate::config::Config;
use crate::delivery::MailService;
use crate::smtp::server::{ListenerConfig, SmtpListener};
use crate::smtp::session::Kind;
use crate::store::Store;
use caliopen_proto::pb::client::client_server::ClientServer;
use caliopen_proto::pb::instance_admin::instance_admin_server::InstanceAdminServer;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the daemon could not start (or stopped): the operator's
/// configuration, a listener that could not be bound, or a local failure —
/// each with its cause kept.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration asks for something that cannot be (the operator's
    /// to fix).
    #[error("{0}")]
    Config(String),
    /// Another daemon holds this data directory's admin socket.
    #[error("another daemon answers on {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// A listener could not be bound or read (address taken, not ours).
    #[error("{what} {addr}: {source}")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory of the data directory.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written whole.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The DKIM keys could not be read or made.
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    /// The TLS certificate could not be served.
    #[error("STARTTLS certificate: {0}")]
    Tls(#[from] crate::certs::CertError),
    /// A certificate could not be made.
    #[error("TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The resolver could not be set up.
    #[error(transparent)]
    Resolver(#[from] crate::sender_auth::ResolverError),
    /// Another part of the daemon failed to start (TLS material, the mesh,
    /// the witness, …), as it said.
    #[error("{0}")]
    Start(String),
}

impl From<String> for DaemonError {
    fn from(message: String) -> Self {
        DaemonError::Start(message)
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn listen_err(
    what: &'static str,
    addr: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> DaemonError {
    let addr = addr.to_string();
    move |source| DaemonError::Listen { what, addr, source }
}

/// How long open sessions get to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Addresses the daemon is listening on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// MX listener.
    pub smtp: SocketAddr,
    /// Submission listener.
    pub submission: SocketAddr,
    /// Health and metrics endpoint, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Client API (TLS), when enabled.
    pub api: Option<SocketAddr>,
    /// IMAP, when enabled.
    pub imap: Option<SocketAddr>,
    /// The web client (HTTPS), when enabled.
    pub web: Option<SocketAddr>,
    /// The plain-HTTP listener of ACME HTTP-01, when enabled.
    pub acme_http: Option<SocketAddr>,
}

/// Writes a TLS key (0600) and then its certificate, each whole.
fn write_tls_pair(
    key_path: &Path,
    key: &str,
    cert_path: &Path,
    cert: &str,
) -> Result<(), DaemonError> {
    crate::files::write_private(key_path, key.as_bytes())?;
    Ok(crate::files::write_atomic(
        cert_path,
        cert.as_bytes(),
        0o644,
    )?)
}

/// A self-signed certificate and key (PEM) for STARTTLS, for `names`.
pub fn self_signed_tls(names: &[String]) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(names.to_vec())?;
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(825);
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load_tls(config: &Config) -> Result<Arc<crate::certs::CertStore>, DaemonError> {
    let cert_path = config.in_data(&config.smtp.tls_cert);
    let key_path = config.in_data(&config.smtp.tls_key);
    if !cert_path.exists() && !key_path.exists() {
        let mut names = vec![config.hostname.clone()];
        names.extend(config.domains.iter().cloned());
        let (c, k) = self_signed_tls(&names)?;
        write_tls_pair(&key_path, &k, &cert_path, &c)?;
        tracing::warn!(cert = %cert_path.display(), "no STARTTLS certificate: generated a self-signed one");
    }
    match crate::certs::CertStore::load(&cert_path, &key_path) {
        Ok(c) => Ok(c),
        // With ACME the pair is the daemon's own: one left unusable (a crash
        // between its two renames, a full disk) is replaced by a self-signed
        // pair, which ACME replaces in turn at once.
        Err(e) if config.acme.is_some() => {
            tracing::error!(error = %e, "TLS certificate unusable: serving a self-signed one until ACME replaces it");
            let mut names = vec![config.hostname.clone()];
            names.extend(config.domains.iter().cloned());
            let (c, k) = self_signed_tls(&names)?;
            write_tls_pair(&key_path, &k, &cert_path, &c)?;
            Ok(crate::certs::CertStore::load(&cert_path, &key_path)?)
        }
        Err(e) => Err(DaemonError::Tls(e)),
    }
}

/// The membership log's witness when `[witness] enabled`: it needs the
/// association's log key pinned (the log it witnesses) and the web listener
/// (where it is served).
fn open_witness(
    config: &Config,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<Option<Arc<crate::web::witness::WitnessEndpoint>>, DaemonError> {
    if !config.witness.enabled {
        return Ok(None);
    }
    let Some(key) = config.association.as_ref().and_then(|a| a.log_key.as_ref()) else {
        return Err(DaemonError::Config(
            "[witness] enabled needs the association's log key pinned (caliopen join --log-key)"
                .into(),
        ));
    };
    if config.web.listen.is_none() {
        return Err(DaemonError::Config(
            "[witness] enabled needs [web] listen: the witness is served there".into(),
        ));
    }
    crate::web::witness::open(
        &config.data_dir(),
        &config.witness_name(),
        &config.in_data(key),
        metrics.clone(),
    )
    .map(Some)
    .map_err(|e| DaemonError::Start(format!("witness: {e}")))
}

fn admin_token(dir: &Path) -> Result<String, DaemonError> {
    let path = dir.join(ADMIN_TOKEN);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let mode = std::fs::metadata(&path)
            .map_err(io_err("read", &path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(DaemonError::Config(format!(
                "{} is readable beyond its owner (chmod 600 it)",
                path.display()
            )));
        }
        return Ok(t.trim().to_owned());
    }
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| DaemonError::Start("random generator failed".into()))?;
    let t = hex::encode(b);
    crate::files::write_private(&path, t.as_bytes())?;
    Ok(t)
}

/// Runs the daemon until `shutdown` completes. `on_bound` is told the
/// listening addresses once they are bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound) + Send,
) -> Result<(), DaemonError> {
    let dir = config.data_dir();
    // Whatever the daemon writes (database, keys, queue) is its own alone.
    crate::limits::restrict_umask();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("create", &dir))?;
    // A token others could read may have been read: refused before anything
    // else is made private (the operator replaces it).
    let admin_tok = admin_token(&dir)?;
    match crate::limits::tighten_permissions(&dir) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            data = %dir.display(),
            changed = n,
            "files in the data directory were readable by others: made them the owner's only"
        ),
        Err(e) => return Err(io_err("check permissions under", &dir)(e)),
    }
    let mut config = config;
    let nofile = crate::limits::raise_nofile();
    {
        // MX and submission each take `smtp.max_connections`; the API its own.
        let (mut mx, mut sub) = (config.smtp.max_connections, config.smtp.max_connections);
        let mut api = if config.api.listen.is_some() {
            config.api.max_connections
        } else {
            0
        };
        let mut imap = if config.imap.listen.is_some() {
            config.imap.max_connections
        } else {
            0
        };
        let mut web = if config.web.listen.is_some() {
            config.web.max_connections
        } else {
            0
        };
        if crate::limits::budget(
            &mut [&mut mx, &mut sub, &mut api, &mut imap, &mut web],
            nofile,
        ) {
            tracing::warn!(
                open_files = nofile,
                smtp = mx,
                api,
                "connection caps lowered to fit the open-file limit (raise it with ulimit -n or LimitNOFILE=)"
            );
            config.smtp.max_connections = mx.min(sub);
            config.api.max_connections = api.max(1);
            config.imap.max_connections = imap.max(1);
            config.web.max_connections = web.max(1);
        }
    }
    let store = Store::open_with(&dir.join("db"), &config.store.options())?;
    store.set_quota_default(config.accounts.limits());
    let certs = load_tls(&config)?;
    let tls = certs.server_config()?;
    let workers = match config.login.max_concurrent_checks {
        0 => crate::login::CredentialsConfig::default().workers,
        n => n,
    };
    let credentials = crate::login::Credentials::new(crate::login::CredentialsConfig {
        workers,
        queue: config.login.queue,
        throttle: crate::login::ThrottleConfig::default(),
    });
    let svc = MailService::new(store.clone(), config.domains.clone())
        .with_credentials(credentials)
        .with_from_check(config.smtp.from_check)
        .with_blocklists(config.dns.blocklists.clone());
    svc.set_spool_dir(dir.join("handover"));
    crate::handover::load_forwarding(&svc);
    crate::handover::load_moved(&svc);
    if config.dkim.sign {
        let keys = crate::dkim::DkimKeys::open(&dir)?;
        for d in keys.ensure(&config.domains, crate::store::now_unix())? {
            tracing::warn!(
                domain = %d,
                "DKIM keys made for this domain: publish the records `caliopen dns` prints"
            );
        }
        svc.set_dkim(Arc::new(keys));
    } else {
        tracing::info!("DKIM signing is off ([dkim] sign = false)");
    }
    let timeout = Duration::from_secs(config.dns.timeout_seconds);
    let resolver = if config.dns.enabled {
        tracing::info!(servers = ?config.dns.servers, "DNS on: DKIM, SPF and DMARC are checked on inbound mail");
        Some(crate::sender_auth::SenderAuth::new(
            &config.dns.servers,
            timeout,
        )?)
    } else {
        None
    };
    svc.set_auth(match &resolver {
        Some(r) => r.clone(),
        None => crate::sender_auth::SenderAuth::offline()?,
    });
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    // A certificate renewed on disk is served without a restart.
    tracker.spawn(certs.clone().watch(token.clone(), svc.metrics().clone()));
    // Direct delivery to MX hosts needs DNS and is used when no relay is set.
    let direct = resolver.filter(|_| config.smtp.relay.is_none());
    if config.smtp.relay.is_some() || !config.smtp.routes.is_empty() || direct.is_some() {
        let relay = match &config.smtp.relay {
            Some(r) => Some(crate::config::parse_host_port(r).ok_or_else(|| {
                DaemonError::Config(format!("smtp.relay: expected HOST:PORT, got {r:?}"))
            })?),
            None => None,
        };
        let mut routes = Vec::new();
        for (d, r) in &config.smtp.routes {
            let (h, p) = crate::config::parse_host_port(r).ok_or_else(|| {
                DaemonError::Config(format!("smtp.routes.{d}: expected HOST:PORT, got {r:?}"))
            })?;
            routes.push((d.to_ascii_lowercase(), h, p));
        }
        let ca_pem = match &config.smtp.relay_ca {
            Some(p) => {
                let p = config.in_data(p);
                Some(std::fs::read(&p).map_err(io_err("read", &p))?)
            }
            None => None,
        };
        let mx_ca_pem = match &config.smtp.mta_sts_ca {
            Some(p) => {
                let p = config.in_data(p);
                Some(std::fs::read(&p).map_err(io_err("read", &p))?)
            }
            None => None,
        };
        let mta_sts = match &direct {
            Some(r) => Some(Arc::new(crate::mta_sts::MtaSts::new(
                r.clone(),
                mx_ca_pem.as_deref(),
                config.smtp.mta_sts_port,
                Some(store.db()),
            )?)),
            None => None,
        };
        // TLS outcomes of direct deliveries, reported daily (RFC 8460).
        let tls_reports = match &direct {
            Some(_) if config.smtp.tls_reports => {
                Some(crate::tlsrpt::TlsReports::open(store.db())?)
            }
            _ => None,
        };
        if let (Some(reports), Some(resolver), Some(https)) = (&tls_reports, &direct, &mta_sts) {
            let reporter = Arc::new(crate::tlsrpt::Reporter {
                reports: reports.clone(),
                resolver: resolver.clone(),
                https: https.clone(),
                organization: config.hostname.clone(),
                running: Default::default(),
            });
            svc.set_tls_reporter(reporter.clone());
            tracker.spawn(crate::tlsrpt::run_daily(
                reporter,
                svc.clone(),
                token.clone(),
            ));
        }
        let q = crate::outbound::SmtpQueue::open(
            store.db(),
            crate::outbound::RelayConfig {
                relay,
                routes,
                ca_pem,
                hello: config.hostname.clone(),
                retry_base: Duration::from_secs(config.smtp.retry_initial_seconds),
                retry_max: Duration::from_secs(config.smtp.retry_max_seconds),
                lifetime: Duration::from_secs(config.smtp.queue_lifetime_hours * 3600),
                direct: direct.clone(),
                mx_port: config.smtp.delivery_port,
                mta_sts,
                mx_ca_pem,
                tls_reports,
            },
        )
        .map_err(|e| e.to_string())?
        .with_durability(Arc::new(store.clone()))
        .with_metrics(svc.metrics().clone());
        tracker.spawn(
            q.clone()
                .run(svc.clone(), config.domains[0].clone(), token.clone()),
        );
        svc.set_queue(Arc::new(q));
        // Aliases may forward to other domains: senders rewritten by SRS.
        svc.set_srs(crate::srs::Srs::open(&dir)?);
        tracing::info!(relay = ?config.smtp.relay, routes = config.smtp.routes.len(), direct = direct.is_some(), "outbound SMTP enabled");
    }
    let (mesh_node, mesh_outbox, membership_log) =
        match crate::mesh::start(&config, &svc, &store, &token, &tracker).await? {
            Some((node, route)) => {
                let outbox = route.outbox.clone();
                let log = route.log.clone();
                svc.set_mesh(Arc::new(route));
                (Some(node), Some(outbox), log)
            }
            None => {
                tracing::info!(
                    "no [association] in the configuration: unlabelled, plain email only"
                );
                (None, None, None)
            }
        };

    let mut bound = Vec::new();
    for (kind, addr) in [
        (Kind::Mx, config.smtp.listen),
        (Kind::Submission, config.smtp.submission),
    ] {
        let mut lc = ListenerConfig::new(kind, config.hostname.clone());
        lc.max_message_size = config.smtp.max_message_size;
        lc.max_recipients = config.smtp.max_recipients;
        lc.max_connections = config.smtp.max_connections;
        lc.max_connections_per_ip = config.smtp.max_connections_per_ip;
        lc.tls = Some(tls.clone());
        let l = SmtpListener::bind(addr, lc)
            .await
            .map_err(listen_err("listen on", addr))?;
        let a = l.local_addr().map_err(listen_err("address of", addr))?;
        tracing::info!(kind = ?kind, addr = %a, "SMTP listener up");
        bound.push(a);
        tracker.spawn(l.run(svc.clone(), token.clone(), tracker.clone()));
    }

    let imap_addr = match config.imap.listen {
        Some(addr) => {
            let l = crate::imap::ImapListener::bind(
                addr,
                crate::imap::ImapConfig {
                    hostname: config.hostname.clone(),
                    tls: tls.clone(),
                    implicit_tls: config.imap.implicit_tls,
                    max_connections: config.imap.max_connections,
                    max_connections_per_ip: config.imap.max_connections_per_ip,
                    append_limit: config.imap_append_limit(),
                    idle_timeout: Duration::from_secs(config.imap.idle_timeout_minutes * 60),
                    login_timeout: Duration::from_secs(config.imap.login_timeout_seconds),
                },
            )
            .await
            .map_err(listen_err("IMAP listener", addr))?;
            let a = l.local_addr().map_err(listen_err("IMAP listener", addr))?;
            tracing::info!(addr = %a, implicit_tls = config.imap.implicit_tls, "IMAP listener up");
            tracker.spawn(l.run(svc.clone(), token.clone(), tracker.clone()));
            Some(a)
        }
        None => None,
    };

    let witness = open_witness(&config, svc.metrics())?;
    let web_addr = match config.web.listen {
        Some(addr) => {
            let l = crate::web::WebListener::bind(
                addr,
                crate::web::WebConfig {
                    tls: tls.clone(),
                    session_lifetime: Duration::from_secs(config.web.session_minutes * 60),
                    max_message_size: config.smtp.max_message_size,
                    limits: crate::limits::ConnLimits {
                        max_connections: config.web.max_connections,
                        max_connections_per_ip: config.web.max_connections_per_ip,
                        handshake_timeout: Duration::from_secs(
                            config.web.handshake_timeout_seconds.max(1),
                        ),
                        idle_timeout: Duration::from_secs(config.web.idle_timeout_seconds.max(1)),
                    },
                    well_known: Some(Arc::new(crate::publish::WellKnown::new(&config))),
                    witness: witness.clone(),
                },
            )
            .await
            .map_err(listen_err("web listener", addr))?;
            let a = l.local_addr().map_err(listen_err("web listener", addr))?;
            tracing::info!(addr = %a, "web client up (HTTPS)");
            tracker.spawn(l.run(svc.clone(), token.clone(), tracker.clone()));
            Some(a)
        }
        None => None,
    };

    // ACME: the plain-HTTP listener of HTTP-01 and the renewal task.
    let acme_http = match config.acme_settings() {
        Some(settings) => {
            svc.metrics()
                .acme_on
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let http_addr = match config.acme.as_ref().and_then(|a| a.http_listen) {
                Some(addr) => {
                    let l = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(listen_err("ACME HTTP listener", addr))?;
                    let a = l
                        .local_addr()
                        .map_err(listen_err("ACME HTTP listener", addr))?;
                    tracing::info!(addr = %a, "ACME HTTP-01 listener up (plain HTTP; redirects the rest to HTTPS)");
                    tracker.spawn(crate::acme::serve_http(
                        l,
                        certs.acme_challenges(),
                        web_addr.map(|w| w.port()),
                        token.clone(),
                        tracker.clone(),
                    ));
                    Some(a)
                }
                None => None,
            };
            tracing::info!(directory = %settings.directory, names = ?settings.names, challenge = ?settings.challenge, "ACME on: the certificate is obtained and renewed by the daemon");
            let acme = crate::acme::Acme::new(settings, &dir, certs.clone(), svc.metrics().clone());
            tracker.spawn(acme.run(token.clone()));
            http_addr
        }
        None => None,
    };

    let sock = dir.join(ADMIN_SOCKET);
    if sock.exists() {
        if tokio::net::UnixStream::connect(&sock).await.is_ok() {
            return Err(DaemonError::AlreadyRunning(sock.clone()));
        }
        std::fs::remove_file(&sock).map_err(io_err("remove stale", &sock))?;
    }
    let admin_listener = tokio::net::UnixListener::bind(&sock).map_err(io_err("bind", &sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", &sock))?;
    let sessions = Arc::new(crate::api::Sessions::default());
    let client = crate::api::ClientService::new(
        svc.clone(),
        sessions.clone(),
        Duration::from_secs(config.api.token_minutes * 60),
    );
    let admin = AdminService::new(svc.clone(), config.domains.clone(), admin_tok, sessions);
    let admin_task = {
        let token = token.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    InstanceAdminServer::new(admin)
                        .max_decoding_message_size(crate::admin::MAX_ADMIN_REQUEST),
                )
                .add_service(ClientServer::new(client.clone()))
                .add_service(crate::api::reflection()?)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(admin_listener),
                    async move { token.cancelled().await },
                ),
        )
    };
    let metrics_addr = match config.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_err("metrics listener", addr))?;
            let a = l
                .local_addr()
                .map_err(listen_err("metrics listener", addr))?;
            let sources = crate::metrics::MetricsSources {
                metrics: svc.metrics().clone(),
                credentials: svc.credentials().clone(),
                smtp_waiting: {
                    let svc = svc.clone();
                    Arc::new(move || svc.smtp_waiting())
                },
                node: mesh_node.clone(),
                outbox: mesh_outbox,
                log: membership_log,
                bodies: Some(store.body_store().clone()),
            };
            tracker.spawn(crate::metrics::serve(l, sources, token.clone()));
            tracing::info!(addr = %a, "health and metrics endpoint up");
            Some(a)
        }
        None => None,
    };
    let api_addr = match config.api.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_err("api listener", addr))?;
            let a = l.local_addr().map_err(listen_err("api listener", addr))?;
            let mut api_tls = (*tls).clone();
            api_tls.alpn_protocols = vec![b"h2".to_vec()];
            let limits = crate::limits::ConnLimits {
                max_connections: config.api.max_connections,
                max_connections_per_ip: config.api.max_connections_per_ip,
                handshake_timeout: Duration::from_secs(config.api.handshake_timeout_seconds.max(1)),
                idle_timeout: Duration::from_secs(config.api.idle_timeout_seconds.max(1)),
            };
            let server = tonic::transport::Server::builder()
                .timeout(Duration::from_secs(60))
                .concurrency_limit_per_connection(64)
                .add_service(ClientServer::new(client))
                .add_service(crate::api::reflection()?);
            let token = token.clone();
            let incoming = crate::limits::guarded_tls_incoming(
                "client API",
                l,
                Arc::new(api_tls),
                limits,
                svc.metrics().api_listener.clone(),
                token.clone(),
            );
            tracker.spawn(async move {
                if let Err(e) = server
                    .serve_with_incoming_shutdown(incoming, async move { token.cancelled().await })
                    .await
                {
                    tracing::error!(error = %e, "client API stopped");
                }
            });
            tracing::info!(addr = %a, "client API up (TLS)");
            Some(a)
        }
        None => None,
    };
    on_bound(Bound {
        smtp: bound[0],
        submission: bound[1],
        metrics: metrics_addr,
        api: api_addr,
        imap: imap_addr,
        web: web_addr,
        acme_http,
    });
    tracing::info!(data = %dir.display(), domains = ?config.domains, "caliopen instance running");

    shutdown.await;
    tracing::info!("shutting down: draining sessions");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after {DRAIN_TIMEOUT:?}: closing them");
    }
    let _ = admin_task.await;
    if let Some(node) = mesh_node {
        node.shutdown().await;
    }
    let _ = std::fs::remove_file(&sock);
    // Everything acknowledged was flushed by group commit; flush once more for the rest.
    let _ = store.flush().await;
    tracing::info!("stopped");
    Ok(())
}

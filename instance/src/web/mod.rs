//! The web client, served by the daemon on `[web] listen` over HTTPS with
//! the instance certificate: server-rendered pages (askama templates,
//! checked at compile time) over the mail core, with a small script that
//! only enhances them (live updates, route preview, keyboard). No CDN, no
//! remote font: every asset is compiled into the binary.
//!
//! - `session.rs`: cookie sessions and CSRF tokens;
//! - `sanitize.rs`: HTML mail made safe (ammonia) and remote content counted;
//! - `view.rs`: privacy grades and pictures, messages for display,
//!   discussions, route previews, search — over the store, no HTML;
//! - `pages.rs`: the handlers and their templates (`instance/templates/`);
//! - `i18n.rs`: English and French.
//!
//! Every response carries a Content-Security-Policy without inline
//! scripts, `frame-ancestors 'none'`, `nosniff` and `no-referrer`; a
//! message's HTML is served on its own URL under a policy that forbids
//! scripts and remote loads and a CSP sandbox, inside a sandboxed frame.

pub(crate) mod i18n;
mod pages;
pub mod prepared;
pub mod sanitize;
pub(crate) mod session;
#[cfg(test)]
mod tests;
pub(crate) mod view;
pub mod witness;

use crate::delivery::MailService;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The policy of every page: scripts and styles from the daemon only,
/// frames only from it (the message frame), no plugin, no base, forms
/// posting only here.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; frame-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// The web listener's settings.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// TLS (the instance certificate).
    pub tls: Arc<rustls::ServerConfig>,
    /// Session lifetime.
    pub session_lifetime: Duration,
    /// Largest message a user may send (attachments included).
    pub max_message_size: usize,
    /// Connection limits.
    pub limits: crate::limits::ConnLimits,
    /// The MTA-STS policy and client autoconfiguration it serves.
    pub well_known: Option<Arc<crate::publish::WellKnown>>,
    /// The membership log's witness (`[witness] enabled`), served under
    /// [`witness::PREFIX`].
    pub witness: Option<Arc<witness::WitnessEndpoint>>,
}

/// What every handler shares.
#[derive(Debug)]
pub struct Web {
    svc: MailService,
    sessions: session::Sessions,
    max_message_size: usize,
    cleaned: CleanCache,
    /// Large sanitised bodies on disk, prepared at delivery (`prepared.rs`).
    disk: Option<Arc<prepared::DiskCache>>,
    /// The thread preparing them, when this web client set the store's hook.
    preparer: Option<Arc<prepared::Preparer>>,
    well_known: std::sync::OnceLock<Arc<crate::publish::WellKnown>>,
}

/// Sanitised bodies recently shown, by (message, remote allowed): a message's
/// bytes never change, and one view sanitises its body twice (the page
/// counts what was blocked, its frame shows the result). Bounded in
/// entries and bytes (a quarter of `[store] cache_mb`).
#[derive(Debug, Default)]
struct CleanCache {
    max_bytes: usize,
    entries: std::sync::Mutex<std::collections::VecDeque<(CleanKey, Arc<sanitize::Clean>)>>,
}

/// (message id, remote content allowed).
type CleanKey = (u64, bool);

const CLEAN_CACHE_ENTRIES: usize = 64;

impl CleanCache {
    fn get(&self, key: CleanKey) -> Option<Arc<sanitize::Clean>> {
        let e = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        e.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    fn put(&self, key: CleanKey, v: Arc<sanitize::Clean>) {
        let mut e = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        e.retain(|(k, _)| *k != key);
        e.push_front((key, v));
        let mut total = 0;
        let mut keep = 0;
        for (_, c) in e.iter() {
            total += c.html.len();
            if keep == CLEAN_CACHE_ENTRIES || total > self.max_bytes {
                break;
            }
            keep += 1;
        }
        e.truncate(keep.max(1));
    }
}

impl Web {
    /// The sanitised HTML body of a message (`None`: it has none), from the
    /// cache or made off the async workers (a 1 MB body takes ~100 ms).
    async fn clean_body(&self, id: u64, raw: &[u8], remote: bool) -> Option<Arc<sanitize::Clean>> {
        if let Some(c) = self.cleaned.get((id, remote)) {
            return Some(c);
        }
        let raw = raw.to_vec();
        let disk = self
            .disk
            .clone()
            .filter(|_| raw.len() >= prepared::PREPARE_MIN);
        let c = tokio::task::spawn_blocking(move || {
            let key = disk.as_ref().map(|_| prepared::key_of(&raw));
            if let (Some(d), Some(k)) = (&disk, &key) {
                if let Some(c) = d.get(k, remote) {
                    return Some(Arc::new(c));
                }
            }
            let c = prepared::sanitise(&raw, remote)?;
            if let (Some(d), Some(k)) = (&disk, &key) {
                d.put(k, remote, &c);
            }
            Some(Arc::new(c))
        })
        .await
        .ok()
        .flatten()?;
        self.cleaned.put((id, remote), c.clone());
        Some(c)
    }

    /// Bodies handed to the preparer and not prepared yet, and bodies
    /// prepared (`None` without a preparer).
    pub fn preparing(&self) -> Option<(usize, u64)> {
        self.preparer.as_ref().map(|p| {
            (
                p.pending(),
                p.done.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }
}

impl Web {
    /// The web client over `svc`.
    pub fn new(svc: MailService, session_lifetime: Duration, max_message_size: usize) -> Arc<Self> {
        let max_bytes = usize::try_from(svc.store().cache_budget() / 4).unwrap_or(usize::MAX);
        let disk = svc.store().derived_dir("web-cache").and_then(|dir| {
            match prepared::DiskCache::open(&dir, prepared::DISK_BUDGET) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %dir.display(), "web: no cache of sanitised bodies on disk");
                    None
                }
            }
        });
        let preparer = disk
            .as_ref()
            .and_then(|d| {
                // Weak: the store holds the hook that feeds this thread.
                let store = Arc::downgrade(&svc.store_handle());
                let live: prepared::Live =
                    Box::new(move |h| store.upgrade().is_none_or(|s| s.holds_body(h)));
                prepared::Preparer::start(d.clone(), live).ok()
            })
            .map(Arc::new)
            .filter(|p| {
                let p = p.clone();
                svc.store()
                    .set_delivered_hook(crate::store::DeliveredHook(Box::new(move |raw| {
                        p.offer(raw);
                    })))
            });
        Arc::new(Self {
            disk,
            preparer,
            sessions: session::Sessions::new(session_lifetime),
            svc,
            max_message_size,
            cleaned: CleanCache {
                max_bytes,
                ..Default::default()
            },
            well_known: std::sync::OnceLock::new(),
        })
    }

    /// Serves these documents under `/.well-known/`, `/mail/` and
    /// `/autodiscover/` (set once, before serving).
    pub fn set_well_known(&self, w: Arc<crate::publish::WellKnown>) {
        let _ = self.well_known.set(w);
    }

    fn count_sessions(&self) {
        // The gauge follows the session map's own count.
        let n = self.sessions.count();
        self.svc
            .metrics()
            .web_sessions
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The client's address, put on each request by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

/// The router (without the listener: the tests drive it directly).
pub fn router(web: Arc<Web>) -> axum::Router {
    pages::routes(web.clone()).layer(axum::middleware::from_fn_with_state(web, guard))
}

/// Security headers on every response, and the Origin check on every
/// state-changing request (a cross-site POST is refused before any
/// handler runs; the CSRF token in the form is checked by the handler).
async fn guard(
    axum::extract::State(web): axum::extract::State<Arc<Web>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD);
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if unsafe_method && !same_origin(req.headers(), authority.as_deref()) {
        web.svc
            .metrics()
            .web_csrf_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(origin = ?req.headers().get(header::ORIGIN), "web: cross-origin request refused");
        let t = i18n::pick(
            Default::default(),
            req.headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        );
        let mut r = pages::error_page(t, StatusCode::FORBIDDEN, t.forbidden, None);
        secure_headers(r.headers_mut());
        return r;
    }
    let mut r = next.run(req).await;
    secure_headers(r.headers_mut());
    r
}

/// True when a state-changing request comes from our own pages. A browser
/// says so in `Sec-Fetch-Site` (which page script cannot set); otherwise
/// the `Origin` must name this host (the `Host` header, or the request's
/// authority under HTTP/2, which has no `Host`). A request with neither
/// (an old browser, curl) is let through: the `SameSite=Strict` cookie
/// and the form's CSRF token still stand.
fn same_origin(h: &HeaderMap, authority: Option<&str>) -> bool {
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "same-origin";
    }
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(authority)
    else {
        return false;
    };
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

fn secure_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        if !h.contains_key(&k) {
            h.insert(k, HeaderValue::from_static(v));
        }
    };
    set(h, header::CONTENT_SECURITY_POLICY, PAGE_CSP);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // Not `no-referrer`: with it browsers send `Origin: null` on our own
    // forms. Links in mail carry `rel=noreferrer` and the message frame
    // sets `no-referrer` itself.
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    );
}

/// A bound web listener.
pub struct WebListener {
    listener: tokio::net::TcpListener,
    config: WebConfig,
}

impl WebListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, config: WebConfig) -> std::io::Result<Self> {
        Ok(Self {
            listener: tokio::net::TcpListener::bind(addr).await?,
            config,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `token` is cancelled: TLS (HTTP/2 or HTTP/1.1 by
    /// ALPN) within the connection limits, each connection a task.
    pub async fn run(self, svc: MailService, token: CancellationToken, tracker: TaskTracker) {
        use futures_util::StreamExt;
        let web = Web::new(
            svc.clone(),
            self.config.session_lifetime,
            self.config.max_message_size,
        );
        if let Some(w) = &self.config.well_known {
            web.set_well_known(w.clone());
        }
        let app = match &self.config.witness {
            Some(w) => router(web).merge(witness::routes(w.clone())),
            None => router(web),
        };
        let mut tls = (*self.config.tls).clone();
        // `acme-tls/1` last: only an ACME server validating TLS-ALPN-01
        // offers it (and nothing else); its connection ends after the
        // handshake.
        tls.alpn_protocols = vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            crate::acme::ACME_TLS_ALPN.to_vec(),
        ];
        let incoming = crate::limits::guarded_tls_incoming(
            "web",
            self.listener,
            Arc::new(tls),
            self.config.limits,
            svc.metrics().web_listener.clone(),
            token.clone(),
        );
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let conn = tokio::select! {
                c = incoming.next() => c,
                _ = token.cancelled() => None,
            };
            let Some(Ok(conn)) = conn else {
                break;
            };
            if conn.get_ref().get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                tracing::debug!(peer = %conn.remote_addr(), "web: TLS-ALPN-01 validation handshake done");
                continue;
            }
            let peer = Peer(Some(conn.remote_addr().ip()));
            let app = app.clone();
            let token = token.clone();
            tracker.spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer);
                        let mut app = app.clone();
                        async move {
                            use tower::Service;
                            app.call(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "web connection ended with an error");
                        }
                    }
                    _ = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
    }
}

/// A page's answer when something is wrong: a status and a sentence, never
/// a trace (the detail of a local failure goes to the log).
#[derive(Debug)]
pub struct WebError {
    t: &'static i18n::Txt,
    status: StatusCode,
    message: String,
}

impl WebError {
    fn new(t: &'static i18n::Txt, status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            t,
            status,
            message: message.into(),
        }
    }

    fn bad(t: &'static i18n::Txt, detail: impl std::fmt::Display) -> Self {
        Self::new(
            t,
            StatusCode::BAD_REQUEST,
            format!("{} {detail}", t.bad_request),
        )
    }

    fn not_found(t: &'static i18n::Txt) -> Self {
        Self::new(t, StatusCode::NOT_FOUND, t.not_found)
    }

    fn forbidden(t: &'static i18n::Txt) -> Self {
        Self::new(t, StatusCode::FORBIDDEN, t.forbidden)
    }

    /// A local failure: logged with its detail, shown as a fixed sentence.
    fn internal(t: &'static i18n::Txt, what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "web: {what}");
        Self::new(t, StatusCode::INTERNAL_SERVER_ERROR, t.internal)
    }

    fn store(t: &'static i18n::Txt, e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Model(m) => Self::bad(t, m),
            other => Self::internal(t, "store", other),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        pages::error_page(self.t, self.status, &self.message, None)
    }
}

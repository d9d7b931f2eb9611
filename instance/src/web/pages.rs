//! The pages: one handler per URL, each rendering a template of
//! `instance/templates/`. Handlers read and change the mail core through
//! the router (`MailService`) and its store; nothing here talks to another
//! front end.

use super::i18n::{self, Txt};
use super::session::{self, Session};
use super::view::{self, RouteView};
use super::{Peer, Web, WebError};
use crate::mail::prefs::{Lang, Prefs, RemotePolicy};
use crate::mail::{MailboxId, MessageMeta, Role, Transport, Via};
use crate::store::KeywordChange;
use askama::Template;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Form;
use serde::Deserialize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

type WebResult = Result<Response, WebError>;

const THREADS_PER_PAGE: usize = 50;
const SEARCH_HITS: usize = 100;
const MAX_RECIPIENTS: usize = 100;
const MIN_PASSWORD: usize = 10;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn routes(web: Arc<Web>) -> axum::Router {
    let max = web.max_message_size;
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/mail") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/mail", get(mail))
        .route("/messages/{id}", get(message))
        .route("/messages/{id}/body", get(message_body))
        .route("/messages/{id}/parts/{n}", get(message_part))
        .route("/messages/{id}/action", post(message_action))
        .route("/folders", post(folder_create))
        .route("/folders/{id}/rename", post(folder_rename))
        .route("/folders/{id}/delete", post(folder_delete))
        .route(
            "/compose",
            get(compose_page)
                .post(compose)
                .layer(axum::extract::DefaultBodyLimit::max(max + 256 * 1024)),
        )
        .route("/routes", get(routes_fragment))
        .route("/contacts", get(contacts))
        .route("/contacts/lookup", post(contact_lookup))
        .route("/privacy", get(privacy_page))
        .route("/settings", get(settings_page))
        .route("/settings/password", post(change_password))
        .route("/settings/publish", post(publish))
        .route("/settings/prefs", post(save_prefs))
        .route("/settings/disallow", post(disallow))
        .route("/events", get(events))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/.well-known/mta-sts.txt", get(mta_sts))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(autoconfig),
        )
        .route("/mail/config-v1.1.xml", get(autoconfig))
        .route(
            "/autodiscover/autodiscover.xml",
            get(autodiscover)
                .post(autodiscover)
                .layer(axum::extract::DefaultBodyLimit::max(16 * 1024)),
        )
        .route(
            "/Autodiscover/Autodiscover.xml",
            get(autodiscover)
                .post(autodiscover)
                .layer(axum::extract::DefaultBodyLimit::max(16 * 1024)),
        )
        .fallback(not_found)
        .with_state(web)
}

// ---------------------------------------------------------------------------
// Frame, sessions, errors

/// What the layout needs.
pub(super) struct Frame {
    t: &'static Txt,
    me: Option<String>,
    csrf: String,
    section: &'static str,
    flash: Option<String>,
}

fn accept_language(h: &HeaderMap) -> Option<&str> {
    h.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok())
}

/// A logged-in request: the session and the words of the user's language.
pub(super) struct Authed {
    s: Session,
    token: String,
    t: &'static Txt,
    prefs: Prefs,
}

impl Authed {
    fn frame(&self, section: &'static str) -> Frame {
        Frame {
            t: self.t,
            me: Some(self.s.address.clone()),
            csrf: self.s.csrf.clone(),
            section,
            flash: None,
        }
    }

    fn csrf(&self, web: &Web, given: &str) -> Result<(), WebError> {
        if session::same_token(&self.s.csrf, given) {
            Ok(())
        } else {
            web.svc.metrics().web_csrf_refused.fetch_add(1, Relaxed);
            tracing::warn!(user = %self.s.user, "web: form without its CSRF token refused");
            Err(WebError::forbidden(self.t))
        }
    }
}

impl axum::extract::FromRequestParts<Arc<Web>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        web: &Arc<Web>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session::token_of)
            .map(str::to_owned);
        let s = token
            .as_deref()
            .and_then(|t| web.sessions.get(t, now_unix()))
            .filter(|s| web.svc.store().user_exists(&s.user));
        match (s, token) {
            (Some(s), Some(token)) => {
                let prefs = web.svc.store().prefs(&s.user).unwrap_or_default();
                let t = i18n::pick(prefs.lang, accept_language(&parts.headers));
                Ok(Authed { s, token, t, prefs })
            }
            _ => {
                web.count_sessions();
                if parts.uri.path() == "/events" || parts.uri.path() == "/routes" {
                    return Err(StatusCode::UNAUTHORIZED.into_response());
                }
                let mut r = Redirect::to("/login").into_response();
                r.headers_mut()
                    .insert(header::SET_COOKIE, cookie_value(&session::clear_cookie()));
                Err(r)
            }
        }
    }
}

fn cookie_value(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn html(page: &impl Template, t: &'static Txt) -> WebResult {
    match page.render() {
        Ok(body) => {
            Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
        }
        Err(e) => Err(WebError::internal(t, "template", e)),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    f: Frame,
    status: String,
    message: &'a str,
    back: &'a str,
}

/// A 4xx/5xx page.
pub(super) fn error_page(
    t: &'static Txt,
    status: StatusCode,
    message: &str,
    back: Option<&str>,
) -> Response {
    let page = ErrorPage {
        f: Frame {
            t,
            me: None,
            csrf: String::new(),
            section: "error",
            flash: None,
        },
        status: status.to_string(),
        message,
        back: back.unwrap_or("/mail"),
    };
    let body = page
        .render()
        .unwrap_or_else(|_| format!("{status}: {message}"));
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn not_found(headers: HeaderMap) -> Response {
    let t = i18n::pick(Lang::Auto, accept_language(&headers));
    error_page(t, StatusCode::NOT_FOUND, t.not_found, None)
}

// ---------------------------------------------------------------------------
// Documents for mail servers and clients (no login)

fn document(ct: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// RFC 8461 §3.3: the policy as `text/plain` (404 when none is published).
async fn mta_sts(State(web): State<Arc<Web>>) -> Response {
    match web.well_known.get().and_then(|w| w.mta_sts.clone()) {
        Some(p) => document("text/plain", p),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn autoconfig(State(web): State<Arc<Web>>) -> Response {
    match web.well_known.get() {
        Some(w) => document("application/xml; charset=utf-8", w.autoconfig.clone()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn autodiscover(State(web): State<Arc<Web>>, body: axum::body::Bytes) -> Response {
    match web.well_known.get() {
        Some(w) => document(
            "text/xml; charset=utf-8",
            w.autodiscover(&String::from_utf8_lossy(&body)),
        ),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn css() -> Response {
    static_asset("text/css; charset=utf-8", include_str!("static/app.css"))
}

async fn js() -> Response {
    static_asset(
        "text/javascript; charset=utf-8",
        include_str!("static/app.js"),
    )
}

fn static_asset(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Login

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    f: Frame,
    error: Option<String>,
    address: String,
}

fn login_frame(t: &'static Txt) -> Frame {
    Frame {
        t,
        me: None,
        csrf: String::new(),
        section: "login",
        flash: None,
    }
}

async fn login_page(headers: HeaderMap) -> WebResult {
    let t = i18n::pick(Lang::Auto, accept_language(&headers));
    html(
        &LoginPage {
            f: login_frame(t),
            error: None,
            address: String::new(),
        },
        t,
    )
}

#[derive(Deserialize)]
struct LoginForm {
    address: String,
    password: String,
}

async fn login(
    State(web): State<Arc<Web>>,
    axum::Extension(peer): axum::Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> WebResult {
    let t = i18n::pick(Lang::Auto, accept_language(&headers));
    let refuse = |status: StatusCode, msg: &str| -> WebResult {
        web.svc.metrics().web_logins_refused.fetch_add(1, Relaxed);
        let mut r = html(
            &LoginPage {
                f: login_frame(t),
                error: Some(msg.to_owned()),
                address: form.address.chars().take(320).collect(),
            },
            t,
        )?;
        *r.status_mut() = status;
        Ok(r)
    };
    let address = match web
        .svc
        .login(peer.0, form.address.trim(), &form.password)
        .await
    {
        Ok(a) => a,
        Err(crate::login::LoginError::Invalid) => {
            tracing::warn!(source = ?peer.0, "web login refused");
            return refuse(StatusCode::UNAUTHORIZED, t.wrong_login);
        }
        Err(crate::login::LoginError::Throttled { .. }) => {
            return refuse(StatusCode::TOO_MANY_REQUESTS, t.too_many)
        }
        Err(crate::login::LoginError::Busy) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, t.unavailable)
        }
    };
    let Some(local) = web.svc.local_user(&address) else {
        return refuse(StatusCode::UNAUTHORIZED, t.wrong_login);
    };
    let previous = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::token_of);
    let own = format!("{local}@{}", web.svc.primary_domain());
    let Some((token, _)) = web.sessions.open(&local, &own, previous, now_unix()) else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, t.unavailable);
    };
    web.count_sessions();
    web.svc.metrics().web_logins_ok.fetch_add(1, Relaxed);
    tracing::info!(user = %local, "web login");
    let mut r = Redirect::to("/mail").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie_value(&session::set_cookie(&token, web.sessions.lifetime())),
    );
    Ok(r)
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(web): State<Arc<Web>>, a: Authed, Form(form): Form<CsrfForm>) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    web.sessions.close(&a.token);
    web.count_sessions();
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_value(&session::clear_cookie()));
    Ok(r)
}

// ---------------------------------------------------------------------------
// Discussions

struct FolderView {
    id: MailboxId,
    name: String,
    unread: u64,
    role: bool,
}

fn folders(web: &Web, a: &Authed) -> Result<Vec<FolderView>, WebError> {
    let mut list = web
        .svc
        .store()
        .mailboxes(&a.s.user)
        .map_err(|e| WebError::store(a.t, e))?;
    list.sort_by_key(|b| (b.role.is_none(), b.id));
    Ok(list
        .iter()
        .map(|b| FolderView {
            id: b.id,
            name: view::mailbox_name(b, a.t),
            unread: b.unseen,
            role: b.role.is_some(),
        })
        .collect())
}

struct Row {
    id: String,
    subject: String,
    author: String,
    count: usize,
    unread: bool,
    flagged: bool,
    badge: view::Badge,
    when: String,
    when_iso: String,
}

fn when(ts: i64) -> (String, String) {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp(ts) else {
        return (String::new(), String::new());
    };
    let short = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let iso = time::format_description::well_known::Rfc3339;
    (
        t.format(&short).unwrap_or_default(),
        t.format(&iso).unwrap_or_default(),
    )
}

#[derive(Template)]
#[template(path = "mail.html")]
struct MailPage {
    f: Frame,
    title: String,
    folders: Vec<FolderView>,
    current: MailboxId,
    rows: Vec<Row>,
    next: Option<u32>,
    paged: bool,
    q: String,
    limited: bool,
    scan_max: usize,
    user_folder: bool,
}

#[derive(Deserialize)]
struct MailQuery {
    mailbox: Option<MailboxId>,
    before: Option<u32>,
    #[serde(default)]
    q: String,
}

fn subject_or(t: &'static Txt, s: &str) -> String {
    if s.trim().is_empty() {
        t.no_subject.into()
    } else {
        s.to_owned()
    }
}

async fn mail(State(web): State<Arc<Web>>, a: Authed, Query(q): Query<MailQuery>) -> WebResult {
    let mbx = q.mailbox.unwrap_or(Role::Inbox.id());
    let folders = folders(&web, &a)?;
    let Some((title, user_folder)) = folders
        .iter()
        .find(|b| b.id == mbx)
        .map(|b| (b.name.clone(), !b.role))
    else {
        return Err(WebError::not_found(a.t));
    };
    let query = view::Query::parse(&q.q);
    let (rows, next, limited) = if query.is_empty() {
        let page = view::threads(&web.svc, &a.s.user, mbx, q.before, THREADS_PER_PAGE, a.t)
            .map_err(|e| WebError::store(a.t, e))?;
        let rows = page
            .rows
            .into_iter()
            .map(|r| {
                let (w, iso) = when(r.latest.received_at);
                Row {
                    id: format!("{:x}", r.latest.id),
                    subject: subject_or(a.t, &r.latest.subject),
                    author: r.author,
                    count: r.count,
                    unread: r.unread,
                    flagged: r.flagged,
                    badge: r.badge,
                    when: w,
                    when_iso: iso,
                }
            })
            .collect();
        (rows, page.next, false)
    } else {
        let (hits, limited) = view::search(&web.svc, &a.s.user, mbx, &query, SEARCH_HITS)
            .map_err(|e| WebError::store(a.t, e))?;
        let store = web.svc.store();
        let rows = hits
            .into_iter()
            .map(|m| {
                let raw = store.raw(m.id).ok().flatten().unwrap_or_default();
                let raw = &raw[..raw.len().min(view::LIST_PREFIX)];
                let index = view::index_of(&web.svc, &m, raw);
                let (w, iso) = when(m.received_at);
                Row {
                    id: format!("{:x}", m.id),
                    subject: subject_or(a.t, &m.subject),
                    author: view::author_of(raw, &m),
                    count: 1,
                    unread: !m.has_keyword(crate::mail::mailbox::SEEN),
                    flagged: m.has_keyword("$flagged"),
                    badge: view::badge(&m, &index, a.t),
                    when: w,
                    when_iso: iso,
                }
            })
            .collect();
        (rows, None, limited)
    };
    html(
        &MailPage {
            f: a.frame("mail"),
            title,
            folders,
            current: mbx,
            rows,
            next,
            paged: q.before.is_some(),
            q: q.q.chars().take(500).collect(),
            limited,
            scan_max: view::SEARCH_SCAN_MAX,
            user_folder,
        },
        a.t,
    )
}

#[derive(Deserialize)]
struct FolderForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

async fn folder_create(
    State(web): State<Arc<Web>>,
    a: Authed,
    Form(form): Form<FolderForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    let b = web
        .svc
        .store()
        .create_mailbox(&a.s.user, form.name.trim())
        .await
        .map_err(|e| WebError::store(a.t, e))?;
    Ok(Redirect::to(&format!("/mail?mailbox={}", b.id)).into_response())
}

async fn folder_rename(
    State(web): State<Arc<Web>>,
    a: Authed,
    Path(id): Path<MailboxId>,
    Form(form): Form<FolderForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    web.svc
        .store()
        .rename_mailbox(&a.s.user, id, form.name.trim())
        .await
        .map_err(|e| WebError::store(a.t, e))?;
    Ok(Redirect::to(&format!("/mail?mailbox={id}")).into_response())
}

async fn folder_delete(
    State(web): State<Arc<Web>>,
    a: Authed,
    Path(id): Path<MailboxId>,
    Form(form): Form<CsrfForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    web.svc
        .store()
        .delete_mailbox(&a.s.user, id)
        .await
        .map_err(|e| WebError::store(a.t, e))?;
    Ok(Redirect::to("/mail").into_response())
}

// ---------------------------------------------------------------------------
// A message

fn parse_id(t: &'static Txt, id: &str) -> Result<u64, WebError> {
    u64::from_str_radix(id.trim(), 16).map_err(|_| WebError::not_found(t))
}

/// The user's own live message `id`, with its bytes.
fn own_message(web: &Web, a: &Authed, id: &str) -> Result<(MessageMeta, Vec<u8>), WebError> {
    let id = parse_id(a.t, id)?;
    let store = web.svc.store();
    let meta = store
        .meta(id)
        .map_err(|e| WebError::store(a.t, e))?
        .filter(|m| m.owner == a.s.user && !m.placements.is_empty())
        .ok_or_else(|| WebError::not_found(a.t))?;
    let raw = store
        .raw(id)
        .map_err(|e| WebError::store(a.t, e))?
        .unwrap_or_default();
    Ok((meta, raw))
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    f: Frame,
    folders: Vec<FolderView>,
    current: MailboxId,
    id: String,
    m: view::Shown,
    badge: view::Badge,
    explanation: Vec<(String, String, &'static str, &'static str)>,
    dims: (u8, u8, u8),
    hints: Vec<String>,
    blocked: usize,
    remote: bool,
    flagged: bool,
    in_trash: bool,
    in_drafts: bool,
}

#[derive(Deserialize)]
struct RemoteQuery {
    #[serde(default)]
    remote: Option<String>,
}

fn remote_wanted(a: &Authed, q: &RemoteQuery, shown_from: &str) -> bool {
    q.remote.as_deref() == Some("1") || a.prefs.remote_allowed(shown_from)
}

async fn message(
    State(web): State<Arc<Web>>,
    a: Authed,
    Path(id): Path<String>,
    Query(rq): Query<RemoteQuery>,
) -> WebResult {
    let (meta, raw) = own_message(&web, &a, &id)?;
    // Opening a message reads it (as every mail client does).
    if !meta.has_keyword(crate::mail::mailbox::SEEN) {
        web.svc
            .store()
            .set_keywords(
                &a.s.user,
                &[meta.id],
                &KeywordChange::Add(vec![crate::mail::mailbox::SEEN.into()]),
            )
            .await
            .map_err(|e| WebError::store(a.t, e))?;
    }
    let shown = view::show(&raw);
    let index = view::index_of(&web.svc, &meta, &raw);
    let remote = remote_wanted(&a, &rq, &shown.from_address);
    let blocked = if shown.has_html {
        web.clean_body(meta.id, &raw, false)
            .await
            .map_or(0, |c| c.blocked)
    } else {
        0
    };
    // (sentence, points, class): the index's own features, then what the
    // client saw itself (remote resources it blocked).
    let mut explanation: Vec<(String, String, &'static str, &'static str)> = index
        .explanation
        .iter()
        .map(|e| {
            let class = if e.effect > 0 {
                "plus"
            } else if e.effect < 0 {
                "minus"
            } else {
                "zero"
            };
            let dim = match e.dimension {
                crate::privacy::Dimension::Technic => a.t.technic,
                crate::privacy::Dimension::Context => a.t.context,
                crate::privacy::Dimension::Comportment => a.t.comportment,
            };
            (e.text.clone(), format!("{:+}", e.effect), class, dim)
        })
        .collect();
    if blocked > 0 {
        let what = if blocked == 1 {
            a.t.blocked_remote_one
        } else {
            a.t.blocked_remote
        };
        explanation.push((
            format!("{blocked} {what}"),
            "!".into(),
            "minus",
            a.t.technic,
        ));
    }
    let current = meta
        .placements
        .first()
        .map_or(Role::Inbox.id(), |p| p.mailbox);
    html(
        &MessagePage {
            f: a.frame("mail"),
            folders: folders(&web, &a)?,
            current,
            id: format!("{:x}", meta.id),
            badge: view::badge(&meta, &index, a.t),
            hints: index.hints.clone(),
            dims: (index.technic, index.context, index.comportment),
            explanation,
            blocked,
            remote,
            flagged: meta.has_keyword("$flagged"),
            in_trash: current == Role::Trash.id(),
            in_drafts: meta.uid_in(Role::Drafts.id()).is_some(),
            m: view::Shown {
                subject: subject_or(a.t, &shown.subject),
                ..shown
            },
        },
        a.t,
    )
}

/// The policy of a message frame: no script, no plugin, no form, no
/// navigation; inline styles only; images only from here unless the user
/// allowed remote content for it.
fn body_csp(remote: bool) -> &'static str {
    if remote {
        "default-src 'none'; style-src 'unsafe-inline'; img-src data: https: http:; \
         form-action 'none'; base-uri 'none'; frame-ancestors 'self'; \
         sandbox allow-popups allow-popups-to-escape-sandbox"
    } else {
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; \
         base-uri 'none'; frame-ancestors 'self'; \
         sandbox allow-popups allow-popups-to-escape-sandbox"
    }
}

async fn message_body(
    State(web): State<Arc<Web>>,
    a: Authed,
    Path(id): Path<String>,
    Query(rq): Query<RemoteQuery>,
) -> WebResult {
    let (meta, raw) = own_message(&web, &a, &id)?;
    let remote = remote_wanted(&a, &rq, &view::from_address(&raw));
    let Some(clean) = web.clean_body(meta.id, &raw, remote).await else {
        return Err(WebError::not_found(a.t));
    };
    web.svc
        .metrics()
        .web_remote_blocked
        .fetch_add(clean.blocked as u64, Relaxed);
    let doc = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <style>body{{font-family:system-ui,sans-serif;margin:.8rem;overflow-wrap:anywhere;overflow-x:auto}}img{{max-width:100%;height:auto}}</style>\
         </head><body>{}</body></html>",
        clean.html
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, body_csp(remote)),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        doc,
    )
        .into_response())
}

async fn message_part(
    State(web): State<Arc<Web>>,
    a: Authed,
    Path((id, n)): Path<(String, usize)>,
) -> WebResult {
    let (_, raw) = own_message(&web, &a, &id)?;
    let (name, bytes) = view::attachment(&raw, n).ok_or_else(|| WebError::not_found(a.t))?;
    // Offered as a download, never shown: a file of any type is opaque here.
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._- ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let disposition = format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}");
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_DISPOSITION, cookie_value(&disposition));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(r)
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    op: String,
    #[serde(default)]
    mailbox: Option<MailboxId>,
    #[serde(default)]
    to: Option<MailboxId>,
}

async fn message_action(
    State(web): State<Arc<Web>>,
    a: Authed,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    let (meta, raw) = own_message(&web, &a, &id)?;
    let store = web.svc.store();
    let user = a.s.user.as_str();
    let ids = [meta.id];
    let here = form
        .mailbox
        .filter(|m| meta.uid_in(*m).is_some())
        .or_else(|| meta.placements.first().map(|p| p.mailbox))
        .unwrap_or(Role::Inbox.id());
    let back = format!("/messages/{:x}", meta.id);
    let list = format!("/mail?mailbox={here}");
    let seen = crate::mail::mailbox::SEEN;
    // (keyword change, where to go next) of the four keyword actions.
    let keyword = match form.op.as_str() {
        "seen" => Some((KeywordChange::Add(vec![seen.into()]), back.clone())),
        "unseen" => Some((KeywordChange::Remove(vec![seen.into()]), list.clone())),
        "flag" => Some((KeywordChange::Add(vec!["$flagged".into()]), back.clone())),
        "unflag" => Some((KeywordChange::Remove(vec!["$flagged".into()]), back.clone())),
        _ => None,
    };
    if let Some((change, to)) = keyword {
        store
            .set_keywords(user, &ids, &change)
            .await
            .map_err(|e| WebError::store(a.t, e))?;
        return Ok(Redirect::to(&to).into_response());
    }
    let to = match form.op.as_str() {
        "move" => {
            let target = form.to.ok_or_else(|| WebError::bad(a.t, "to"))?;
            if target != here {
                store
                    .move_messages(user, &ids, here, target)
                    .await
                    .map_err(|e| WebError::store(a.t, e))?;
            }
            list
        }
        "delete" => {
            let trash = Role::Trash.id();
            if here == trash {
                store
                    .remove_messages(user, &ids, Some(trash))
                    .await
                    .map_err(|e| WebError::store(a.t, e))?;
            } else {
                store
                    .move_messages(user, &ids, here, trash)
                    .await
                    .map_err(|e| WebError::store(a.t, e))?;
            }
            list
        }
        "allow_sender" => {
            let from = view::show(&raw).from_address;
            if from.is_empty() {
                return Err(WebError::bad(a.t, "from"));
            }
            let mut prefs = a.prefs.clone();
            if prefs.allow(&from) {
                store
                    .set_prefs(user, &prefs)
                    .await
                    .map_err(|e| WebError::store(a.t, e))?;
            }
            back
        }
        other => return Err(WebError::bad(a.t, format!("op {other:?}"))),
    };
    Ok(Redirect::to(&to).into_response())
}

// ---------------------------------------------------------------------------
// Compose

#[derive(Template)]
#[template(path = "routes.html")]
struct RoutesFragment<'a> {
    t: &'static Txt,
    routes: &'a [RouteView],
}

fn routes_html(t: &'static Txt, routes: &[RouteView]) -> Result<String, WebError> {
    RoutesFragment { t, routes }
        .render()
        .map_err(|e| WebError::internal(t, "template", e))
}

#[derive(Template)]
#[template(path = "compose.html")]
struct ComposePage {
    f: Frame,
    error: Option<String>,
    to: String,
    cc: String,
    subject: String,
    body: String,
    in_reply_to: String,
    references: String,
    routes_html: String,
    previewed: bool,
    forward_of: String,
    forwarded: Vec<String>,
    draft_of: String,
}

#[derive(Deserialize)]
struct ComposeQuery {
    reply: Option<String>,
    forward: Option<String>,
    draft: Option<String>,
    to: Option<String>,
}

fn prefixed(prefix: &str, subject: &str) -> String {
    let s = subject.trim();
    if s.to_ascii_lowercase()
        .starts_with(&prefix.to_ascii_lowercase())
    {
        s.to_owned()
    } else {
        format!("{prefix} {s}")
    }
}

async fn compose_page(
    State(web): State<Arc<Web>>,
    a: Authed,
    Query(q): Query<ComposeQuery>,
) -> WebResult {
    let mut page = ComposePage {
        f: a.frame("compose"),
        error: None,
        to: q.to.unwrap_or_default(),
        cc: String::new(),
        subject: String::new(),
        body: String::new(),
        in_reply_to: String::new(),
        references: String::new(),
        routes_html: String::new(),
        previewed: false,
        forward_of: String::new(),
        forwarded: Vec::new(),
        draft_of: String::new(),
    };
    if let Some(id) = q.reply.as_deref().or(q.forward.as_deref()) {
        let (meta, raw) = own_message(&web, &a, id)?;
        let s = view::show(&raw);
        let quoted: String = s.text.lines().map(|l| format!("> {l}\n")).collect();
        if q.reply.is_some() {
            page.to = if s.from_address.is_empty() {
                meta.from.clone()
            } else {
                s.from_address.clone()
            };
            page.subject = prefixed("Re:", &s.subject);
            page.body = format!("\n\n{} — {}:\n{quoted}", s.date, s.from);
            page.in_reply_to = s.message_id.clone().unwrap_or_default();
            let mut refs = s.references.clone();
            refs.extend(s.message_id.clone());
            page.references = refs.join(" ");
        } else {
            page.subject = prefixed("Fwd:", &s.subject);
            page.forward_of = format!("{:x}", meta.id);
            page.forwarded = s.attachments.iter().map(|x| x.name.clone()).collect();
            page.body = format!(
                "\n\n---------- Forwarded message ----------\n{}: {}\n{}: {}\n{}: {}\n{}: {}\n\n{}",
                a.t.from, s.from, a.t.date, s.date, a.t.subject, s.subject, a.t.to, s.to, s.text
            );
        }
    }
    if let Some(id) = q.draft.as_deref() {
        // Resuming a draft: its fields, and its attachments carried along.
        let (meta, raw) = own_message(&web, &a, id)?;
        if meta.uid_in(Role::Drafts.id()).is_none() {
            return Err(WebError::not_found(a.t));
        }
        let s = view::show(&raw);
        page.to = s.to.clone();
        page.cc = s.cc.clone();
        page.subject = s.subject.clone();
        page.body = s.text.clone();
        page.draft_of = format!("{:x}", meta.id);
        page.forward_of = page.draft_of.clone();
        page.forwarded = s.attachments.iter().map(|x| x.name.clone()).collect();
    }
    let rcpts = view::split_recipients(&format!("{},{}", page.to, page.cc), MAX_RECIPIENTS);
    page.routes_html = routes_html(a.t, &view::routes(&web.svc, &a.s.user, &rcpts, a.t))?;
    html(&page, a.t)
}

#[derive(Deserialize)]
struct RoutesQuery {
    #[serde(default)]
    to: String,
}

async fn routes_fragment(
    State(web): State<Arc<Web>>,
    a: Authed,
    Query(q): Query<RoutesQuery>,
) -> WebResult {
    let rcpts = view::split_recipients(&q.to, MAX_RECIPIENTS);
    let body = routes_html(a.t, &view::routes(&web.svc, &a.s.user, &rcpts, a.t))?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

#[derive(Default)]
struct Draft {
    csrf: String,
    op: String,
    to: String,
    cc: String,
    subject: String,
    body: String,
    in_reply_to: String,
    references: String,
    forward_of: String,
    draft_of: String,
    files: Vec<(String, String, Vec<u8>)>,
}

async fn read_draft(t: &'static Txt, mut mp: Multipart, max: usize) -> Result<Draft, WebError> {
    let mut d = Draft::default();
    let mut total = 0usize;
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| WebError::bad(t, e.body_text()))?
    {
        let name = field.name().unwrap_or("").to_owned();
        if name == "attachment" {
            let file = field.file_name().unwrap_or("").to_owned();
            let ct = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_owned();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| WebError::bad(t, e.body_text()))?;
            if file.is_empty() && bytes.is_empty() {
                continue; // the empty file input of a form sent without a file
            }
            total += bytes.len();
            if total > max {
                return Err(WebError::new(
                    t,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{} {max} B", t.bad_request),
                ));
            }
            d.files
                .push((view::safe_file_name(&file), ct, bytes.to_vec()));
            continue;
        }
        let text = field
            .text()
            .await
            .map_err(|e| WebError::bad(t, e.body_text()))?;
        total += text.len();
        if total > max {
            return Err(WebError::new(
                t,
                StatusCode::PAYLOAD_TOO_LARGE,
                t.bad_request,
            ));
        }
        match name.as_str() {
            "csrf" => d.csrf = text,
            "op" => d.op = text,
            "to" => d.to = text,
            "cc" => d.cc = text,
            "subject" => d.subject = text,
            "body" => d.body = text,
            "in_reply_to" => d.in_reply_to = text,
            "references" => d.references = text,
            "forward_of" => d.forward_of = text,
            "draft_of" => d.draft_of = text,
            _ => {}
        }
    }
    Ok(d)
}

/// A message-id list as typed by our own form: `<...>` tokens only.
fn msg_ids(s: &str) -> Vec<String> {
    s.split_whitespace()
        .filter(|x| {
            x.len() <= 250
                && x.starts_with('<')
                && x.ends_with('>')
                && x.bytes().all(|b| b.is_ascii_graphic())
        })
        .take(50)
        .map(str::to_owned)
        .collect()
}

fn build_message(
    web: &Web,
    a: &Authed,
    d: &Draft,
    to: &[String],
    cc: &[String],
) -> Result<(Vec<u8>, String), String> {
    use lettre::message::{header::ContentType, Attachment, MultiPart, SinglePart};
    let bad = |c: char| c.is_control() && !matches!(c, '\t' | '\r' | '\n');
    if d.body.contains(bad) {
        return Err("body: control characters".into());
    }
    if d.subject.contains(char::is_control) {
        return Err("subject: control characters".into());
    }
    let mut rnd = [0u8; 16];
    aws_lc_rs::rand::fill(&mut rnd).map_err(|_| "no randomness".to_owned())?;
    let message_id = format!("<{}@{}>", hex::encode(rnd), web.svc.primary_domain());
    let mut b = lettre::Message::builder()
        .from(
            a.s.address
                .parse()
                .map_err(|e| format!("own address: {e}"))?,
        )
        .subject(d.subject.clone())
        .message_id(Some(message_id.clone()))
        .user_agent("Caliopen web".into());
    if to.is_empty() && cc.is_empty() {
        // A draft may have no recipient yet: its envelope is the sender's own.
        let me: lettre::Address =
            a.s.address
                .parse()
                .map_err(|e| format!("own address: {e}"))?;
        b = b.envelope(
            lettre::address::Envelope::new(Some(me.clone()), vec![me])
                .map_err(|e| e.to_string())?,
        );
    }
    for t in to {
        b = b.to(t.parse().map_err(|e| format!("{t:?}: {e}"))?);
    }
    for c in cc {
        b = b.cc(c.parse().map_err(|e| format!("{c:?}: {e}"))?);
    }
    let irt = msg_ids(&d.in_reply_to);
    if let Some(first) = irt.first() {
        b = b.in_reply_to(first.clone());
    }
    let refs = msg_ids(&d.references);
    if !refs.is_empty() {
        b = b.references(refs.join(" "));
    }
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(d.body.replace("\r\n", "\n"));
    let msg = if d.files.is_empty() {
        b.singlepart(text)
    } else {
        let mut mp = MultiPart::mixed().singlepart(text);
        for (name, ct, bytes) in &d.files {
            let ct = ContentType::parse(ct).unwrap_or_else(|_| {
                ContentType::parse("application/octet-stream").unwrap_or(ContentType::TEXT_PLAIN)
            });
            mp = mp.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        b.multipart(mp)
    }
    .map_err(|e| e.to_string())?;
    Ok((msg.formatted(), message_id))
}

#[derive(Template)]
#[template(path = "sent.html")]
struct SentPage {
    f: Frame,
    routes_html: String,
}

async fn compose(State(web): State<Arc<Web>>, a: Authed, mp: Multipart) -> WebResult {
    let mut d = read_draft(a.t, mp, web.max_message_size).await?;
    a.csrf(&web, &d.csrf)?;
    // A forward carries the original's attachments (the user's own message only).
    let forwarded = if d.forward_of.trim().is_empty() {
        Vec::new()
    } else {
        let (_, raw) = own_message(&web, &a, &d.forward_of)?;
        view::attachments_of(&raw)
    };
    let forwarded_names: Vec<String> = forwarded.iter().map(|f| f.0.clone()).collect();
    let to = view::split_recipients(&d.to, MAX_RECIPIENTS);
    let cc = view::split_recipients(&d.cc, MAX_RECIPIENTS);
    let all: Vec<String> = to.iter().chain(cc.iter()).cloned().collect();
    let routes = view::routes(&web.svc, &a.s.user, &all, a.t);
    let again = |error: Option<String>, previewed: bool| -> WebResult {
        let page = ComposePage {
            f: a.frame("compose"),
            error,
            to: d.to.clone(),
            cc: d.cc.clone(),
            subject: d.subject.clone(),
            body: d.body.clone(),
            in_reply_to: d.in_reply_to.clone(),
            references: d.references.clone(),
            routes_html: routes_html(a.t, &routes)?,
            previewed,
            forward_of: d.forward_of.clone(),
            forwarded: forwarded_names.clone(),
            draft_of: d.draft_of.clone(),
        };
        let mut r = html(&page, a.t)?;
        if page.error.is_some() {
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        }
        Ok(r)
    };
    if d.op == "preview" {
        return again(None, !d.files.is_empty());
    }
    // The draft this form edits (the user's own, in Drafts): replaced when
    // saved again, removed once sent.
    let draft_of = match d.draft_of.trim() {
        "" => None,
        id => {
            let (m, _) = own_message(&web, &a, id)?;
            m.uid_in(Role::Drafts.id()).map(|_| m.id)
        }
    };
    if d.op == "draft" {
        d.files.extend(forwarded);
        let (data, _) = match build_message(&web, &a, &d, &to, &cc) {
            Ok(x) => x,
            Err(e) => return again(Some(format!("{} {e}", a.t.bad_request)), false),
        };
        let meta = MessageMeta {
            from: a.s.address.clone(),
            to: all.clone(),
            subject: d.subject.clone(),
            via: Via::Local,
            ..Default::default()
        };
        let into = [crate::store::Delivery {
            owner: a.s.user.clone(),
            to: Vec::new(),
            mailbox: Role::Drafts.id(),
            keywords: vec![crate::mail::mailbox::SEEN.into(), "$draft".into()],
            received: false,
        }];
        let store = web.svc.store();
        let ids = store
            .deliver_local(&meta, &into, &data)
            .await
            .map_err(|e| WebError::store(a.t, e))?;
        if let Some(old) = draft_of {
            store
                .remove_messages(&a.s.user, &[old], Some(Role::Drafts.id()))
                .await
                .map_err(|e| WebError::store(a.t, e))?;
        }
        let to = ids
            .first()
            .map_or("/mail".to_owned(), |id| format!("/compose?draft={id:x}"));
        return Ok(Redirect::to(&to).into_response());
    }
    if all.is_empty() {
        return again(Some(a.t.routes_empty.into()), false);
    }
    let mut rcpts = Vec::new();
    for r in &routes {
        if r.icon == "none" {
            return again(Some(format!("{}: {}", r.address, r.detail)), false);
        }
        rcpts.push(r.address.clone());
    }
    d.files.extend(forwarded);
    let (data, message_id) = match build_message(&web, &a, &d, &to, &cc) {
        Ok(x) => x,
        Err(e) => return again(Some(format!("{} {e}", a.t.bad_request)), false),
    };
    if data.len() > web.max_message_size {
        return again(
            Some(format!("{} > {} B", a.t.bad_request, web.max_message_size)),
            false,
        );
    }
    let transport = Transport {
        helo: "web".into(),
        client: "web".into(),
        auth_user: Some(a.s.address.clone()),
        ..Default::default()
    };
    match web
        .svc
        .accept(&a.s.address, &rcpts, &data, transport, Via::Local)
        .await
    {
        Ok(routed) => {
            tracing::info!(user = %a.s.user, %message_id, routes = %routed, "web: message sent");
            if let Some(old) = draft_of {
                if let Err(e) = web
                    .svc
                    .store()
                    .remove_messages(&a.s.user, &[old], Some(Role::Drafts.id()))
                    .await
                {
                    tracing::warn!(error = %e, "web: sent draft not removed from Drafts");
                }
            }
            html(
                &SentPage {
                    f: a.frame("compose"),
                    routes_html: routes_html(a.t, &routes)?,
                },
                a.t,
            )
        }
        Err(e) => {
            use crate::delivery::DeliveryError;
            match &e {
                DeliveryError::NoRoute(_) | DeliveryError::MailboxFull(_) => {
                    again(Some(e.to_string()), false)
                }
                DeliveryError::Queue(_) | DeliveryError::Store(_) => {
                    tracing::error!(error = %e, "web: message not stored");
                    again(Some(a.t.unavailable.into()), false)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Contacts

struct ContactRow {
    address: String,
    name: String,
    member: String,
    has_key: bool,
    public_level: Option<u32>,
    received: u64,
    sent: u64,
    total: u8,
    grade: &'static str,
    class: &'static str,
}

#[derive(Template)]
#[template(path = "contacts.html")]
struct ContactsPage {
    f: Frame,
    rows: Vec<ContactRow>,
}

fn contact_row(c: &caliopen_proto::pb::client::Contact) -> ContactRow {
    let total = c.privacy.as_ref().map_or(0, |p| p.total.min(100) as u8);
    let (grade, class) = view::grade(total);
    ContactRow {
        address: c.address.clone(),
        name: c.name.clone(),
        member: c.labelled_member.clone(),
        has_key: c.has_key,
        public_level: c.public_level.as_ref().map(|l| l.level),
        received: c.received,
        sent: c.sent,
        total,
        grade,
        class,
    }
}

async fn contacts_render(web: &Web, a: &Authed, flash: Option<String>) -> WebResult {
    let list = web
        .svc
        .store()
        .contacts(&a.s.user)
        .map_err(|e| WebError::store(a.t, e))?;
    let mut rows: Vec<ContactRow> = list
        .iter()
        .take(2000)
        .map(|c| contact_row(&crate::api::contact_view(&web.svc, c, true)))
        .collect();
    rows.sort_by_key(|c| std::cmp::Reverse(c.received + c.sent));
    let mut f = a.frame("contacts");
    f.flash = flash;
    html(&ContactsPage { f, rows }, a.t)
}

async fn contacts(State(web): State<Arc<Web>>, a: Authed) -> WebResult {
    contacts_render(&web, &a, None).await
}

#[derive(Deserialize)]
struct AddressForm {
    #[serde(default)]
    csrf: String,
    address: String,
}

async fn contact_lookup(
    State(web): State<Arc<Web>>,
    a: Authed,
    Form(form): Form<AddressForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    let c = crate::api::get_contact(&web.svc, &a.s.user, &form.address, true)
        .await
        .map_err(|s| WebError::bad(a.t, s.message()))?;
    let msg = match (&c.lookup, &c.public_level) {
        (Some(l), _) if !l.error.is_empty() => format!("{}: {}", c.address, l.error),
        (_, Some(p)) => format!("{}: {} {}/100", c.address, a.t.public_level, p.level),
        _ => format!("{}: {}", c.address, a.t.not_published),
    };
    contacts_render(&web, &a, Some(msg)).await
}

// ---------------------------------------------------------------------------
// My privacy

#[derive(Template)]
#[template(path = "privacy.html")]
struct PrivacyPage {
    f: Frame,
    total: u32,
    technic: u32,
    context: u32,
    comportment: u32,
    grade: &'static str,
    class: &'static str,
    published: bool,
    hints: Vec<String>,
    achievements: Vec<(String, bool)>,
    history: Vec<(String, u8)>,
    chart: String,
}

async fn privacy_page(State(web): State<Arc<Web>>, a: Authed) -> WebResult {
    let me = crate::api::me_view(&web.svc, &a.s.user, &a.s.address)
        .map_err(|s| WebError::internal(a.t, "privacy", s.message()))?;
    let p = me.privacy.clone().unwrap_or_default();
    let total = p.total.min(100);
    // The day's level joins the history (one point a day).
    let mut prefs = a.prefs.clone();
    if prefs.record_level(now_unix(), total as u8) {
        if let Err(e) = web.svc.store().set_prefs(&a.s.user, &prefs).await {
            tracing::warn!(error = %e, "web: level history not saved");
        }
    }
    // One point a day, across the chart (a single day is a flat line).
    let mut points: Vec<u8> = prefs.history.iter().map(|(_, l)| *l).collect();
    if points.len() == 1 {
        points.push(points[0]);
    }
    let n = points.len().max(2);
    let chart = points
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let x = 300.0 * i as f64 / (n - 1) as f64;
            format!("{x:.1},{}", 100 - u32::from(*l).min(100))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let history = prefs
        .history
        .iter()
        .map(|(d, l)| (when(d * 86_400).0.chars().take(10).collect(), *l))
        .collect();
    let (grade, class) = view::grade(total as u8);
    html(
        &PrivacyPage {
            f: a.frame("privacy"),
            total,
            technic: p.technic,
            context: p.context,
            comportment: p.comportment,
            grade,
            class,
            published: me.published,
            hints: me.hints,
            achievements: me
                .achievements
                .into_iter()
                .map(|x| (x.title, x.earned))
                .collect(),
            history,
            chart,
        },
        a.t,
    )
}

// ---------------------------------------------------------------------------
// Settings

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    f: Frame,
    error: Option<String>,
    published: bool,
    never: bool,
    lang: &'static str,
    allowed: Vec<String>,
    quota: String,
}

fn settings_render(
    web: &Web,
    a: &Authed,
    prefs: &Prefs,
    flash: Option<String>,
    error: Option<String>,
) -> WebResult {
    let stats = web
        .svc
        .store()
        .user_stats(&a.s.user)
        .map_err(|e| WebError::store(a.t, e))?;
    let q = web.svc.store().quota(&a.s.user).unwrap_or_default();
    let limit = |n: u64, f: &dyn Fn(u64) -> String| {
        if n == 0 {
            "∞".to_owned()
        } else {
            f(n)
        }
    };
    let quota = format!(
        "{} / {}, {} / {} {}",
        human_bytes(q.used.bytes),
        limit(q.limits.bytes, &human_bytes),
        q.used.messages,
        limit(q.limits.messages, &|n| n.to_string()),
        a.t.messages
    );
    let mut f = a.frame("settings");
    f.flash = flash;
    let mut r = html(
        &SettingsPage {
            f,
            error: error.clone(),
            published: !stats.public_opt_out,
            never: prefs.remote == RemotePolicy::Never,
            lang: match prefs.lang {
                Lang::Auto => "auto",
                Lang::En => "en",
                Lang::Fr => "fr",
            },
            allowed: prefs.remote_allow.clone(),
            quota,
        },
        a.t,
    )?;
    if error.is_some() {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(r)
}

async fn settings_page(State(web): State<Arc<Web>>, a: Authed) -> WebResult {
    settings_render(&web, &a, &a.prefs, None, None)
}

/// 4841 → "4.7 KiB", 10737418240 → "10.0 GiB".
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    current: String,
    new: String,
    repeat: String,
}

async fn change_password(
    State(web): State<Arc<Web>>,
    axum::Extension(peer): axum::Extension<Peer>,
    a: Authed,
    Form(form): Form<PasswordForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    if form.new != form.repeat {
        return settings_render(&web, &a, &a.prefs, None, Some(a.t.passwords_differ.into()));
    }
    if form.new.chars().count() < MIN_PASSWORD || form.new.len() > 1024 {
        return settings_render(&web, &a, &a.prefs, None, Some(a.t.password_short.into()));
    }
    // The current password goes through the same throttled check as a login.
    match web.svc.login(peer.0, &a.s.address, &form.current).await {
        Ok(_) => {}
        Err(crate::login::LoginError::Invalid) => {
            return settings_render(&web, &a, &a.prefs, None, Some(a.t.wrong_login.into()))
        }
        Err(_) => return settings_render(&web, &a, &a.prefs, None, Some(a.t.too_many.into())),
    }
    let new = form.new.clone();
    let hash = tokio::task::spawn_blocking(move || crate::login::hash_password(&new))
        .await
        .map_err(|e| WebError::internal(a.t, "password hash", e))?
        .map_err(|e| WebError::internal(a.t, "password hash", e))?;
    web.svc
        .store()
        .put_user(&a.s.user, &hash)
        .await
        .map_err(|e| WebError::store(a.t, e))?;
    let closed = web.sessions.close_others(&a.s.user, &a.token);
    web.count_sessions();
    tracing::info!(user = %a.s.user, closed, "web: password changed");
    settings_render(&web, &a, &a.prefs, Some(a.t.password_changed.into()), None)
}

#[derive(Deserialize)]
struct PublishForm {
    #[serde(default)]
    csrf: String,
    publish: String,
}

async fn publish(
    State(web): State<Arc<Web>>,
    a: Authed,
    Form(form): Form<PublishForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    let opt_out = match form.publish.as_str() {
        "1" => false,
        "0" => true,
        _ => return Err(WebError::bad(a.t, "publish")),
    };
    web.svc
        .store()
        .set_public_opt_out(&a.s.user, opt_out)
        .await
        .map_err(|e| WebError::store(a.t, e))?;
    settings_render(&web, &a, &a.prefs, Some(a.t.saved.into()), None)
}

#[derive(Deserialize)]
struct PrefsForm {
    #[serde(default)]
    csrf: String,
    remote: String,
    lang: String,
}

async fn save_prefs(
    State(web): State<Arc<Web>>,
    a: Authed,
    Form(form): Form<PrefsForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    let mut prefs = a.prefs.clone();
    prefs.remote = match form.remote.as_str() {
        "block" => RemotePolicy::Block,
        "never" => RemotePolicy::Never,
        _ => return Err(WebError::bad(a.t, "remote")),
    };
    prefs.lang = match form.lang.as_str() {
        "auto" => Lang::Auto,
        "en" => Lang::En,
        "fr" => Lang::Fr,
        _ => return Err(WebError::bad(a.t, "lang")),
    };
    web.svc
        .store()
        .set_prefs(&a.s.user, &prefs)
        .await
        .map_err(|e| WebError::store(a.t, e))?;
    // The page answers in the language just chosen.
    let a = Authed {
        t: i18n::pick(prefs.lang, Some(a.t.code)),
        ..a
    };
    settings_render(&web, &a, &prefs, Some(a.t.saved.into()), None)
}

async fn disallow(
    State(web): State<Arc<Web>>,
    a: Authed,
    Form(form): Form<AddressForm>,
) -> WebResult {
    a.csrf(&web, &form.csrf)?;
    let mut prefs = a.prefs.clone();
    if prefs.disallow(&form.address) {
        web.svc
            .store()
            .set_prefs(&a.s.user, &prefs)
            .await
            .map_err(|e| WebError::store(a.t, e))?;
    }
    settings_render(&web, &a, &prefs, Some(a.t.saved.into()), None)
}

// ---------------------------------------------------------------------------
// Live updates

/// Server-sent events: the account's state (modseq) now and after each
/// durable change; the page reloads its list when it moves. Ends when the
/// session does.
async fn events(State(web): State<Arc<Web>>, a: Authed) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio_stream::StreamExt;
    let Some(rx) = web.svc.store().watch(&a.s.user) else {
        return StatusCode::NOT_IMPLEMENTED.into_response();
    };
    let user = a.s.user.clone();
    let token = a.token.clone();
    let web2 = web.clone();
    let stream = tokio_stream::wrappers::WatchStream::new(rx)
        .take_while(move |_| web2.sessions.get(&token, now_unix()).is_some())
        .map(move |_| {
            let state = web.svc.store().state(&user).unwrap_or(0);
            Ok::<_, std::convert::Infallible>(
                Event::default().event("state").data(state.to_string()),
            )
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

//! Every page and form of the web client, over HTTP without sockets: the
//! router is driven request by request over a real store (login, CSRF and
//! Origin refusals, logout, the discussion list and its pages, a message and
//! its frame, actions, compose and its route preview, settings, search).

use super::{router, Peer, Web};
use crate::delivery::MailService;
use crate::mail::{Role, Transport, Via};
use crate::store::Store;
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

use crate::test_util::runtime;

struct T {
    app: axum::Router,
    web: Arc<Web>,
    svc: MailService,
    _dir: tempfile::TempDir,
}

async fn setup() -> T {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(&dir.path().join("db")).expect("store");
    let creds = crate::login::Credentials::with_verifier(
        crate::login::CredentialsConfig::default(),
        Arc::new(|hash: &str, pw: &[u8]| hash.as_bytes() == pw),
    );
    let svc = MailService::new(store.clone(), vec!["alpha.test".into()]).with_credentials(creds);
    store.put_user("alice", "pw-alice").await.expect("user");
    store.put_user("bob", "pw-bob").await.expect("user");
    let web = Web::new(svc.clone(), Duration::from_secs(3600), 1 << 20);
    T {
        app: router(web.clone()),
        web,
        svc,
        _dir: dir,
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl T {
    async fn req(&self, r: Request<Body>) -> Resp {
        let mut r = r;
        r.extensions_mut()
            .insert(Peer(Some("127.0.0.1".parse().expect("ip"))));
        r.headers_mut()
            .insert(header::HOST, "mail.alpha.test".parse().expect("host"));
        let res = self.app.clone().oneshot(r).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
            .await
            .expect("body");
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        let mut b = Request::get(path);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        self.req(b.body(Body::empty()).expect("req")).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &str) -> Resp {
        let mut b = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, "https://mail.alpha.test");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        self.req(b.body(Body::from(form.to_owned())).expect("req"))
            .await
    }

    /// Logs `user` in; returns the cookie header value and the CSRF token.
    async fn login(&self, user: &str) -> (String, String) {
        let r = self
            .post(
                "/login",
                None,
                &format!("address={user}%40alpha.test&password=pw-{user}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let set = r
            .headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .expect("cookie")
            .to_owned();
        let cookie = set.split(';').next().expect("pair").to_owned();
        let page = self.get("/settings", Some(&cookie)).await;
        (cookie, csrf_of(&page.body))
    }

    async fn deliver(&self, to: &str, raw: &str, via: Via) -> u64 {
        let r = self
            .svc
            .accept(
                "sender@ext.test",
                &[to.to_owned()],
                raw.as_bytes(),
                Transport::default(),
                via,
            )
            .await
            .expect("deliver");
        r.stored[0]
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_owned()
}

fn mail(subject: &str, extra: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@ext.test>\r\nTo: alice@alpha.test\r\nSubject: {subject}\r\n{extra}\r\n{body}\r\n"
    )
}

#[test]
fn login_sets_a_strict_cookie_and_refuses_wrong_passwords() {
    runtime().block_on(async {
        let t = setup().await;
        let page = t.get("/login", None).await;
        assert_eq!(page.status, StatusCode::OK);
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page.headers[header::REFERRER_POLICY], "same-origin");
        assert!(page.body.contains("name=\"address\"") && page.body.contains("name=\"password\""));

        let bad = t
            .post("/login", None, "address=alice%40alpha.test&password=nope")
            .await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
        assert!(bad.headers.get(header::SET_COOKIE).is_none());
        assert!(bad.body.contains("Wrong address or password."));

        let ok = t
            .post(
                "/login",
                None,
                "address=alice%40alpha.test&password=pw-alice",
            )
            .await;
        assert_eq!(ok.status, StatusCode::SEE_OTHER);
        assert_eq!(ok.headers[header::LOCATION], "/mail");
        let c = ok.headers[header::SET_COOKIE].to_str().expect("cookie");
        for flag in [
            "__Host-caliopen=",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(c.contains(flag), "{flag} in {c}");
        }
        // A login replaces the token the browser came with.
        let old = c.split(';').next().expect("pair").to_owned();
        let again = t
            .req(
                Request::post("/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::COOKIE, &old)
                    .body(Body::from("address=alice%40alpha.test&password=pw-alice"))
                    .expect("req"),
            )
            .await;
        assert_eq!(again.status, StatusCode::SEE_OTHER);
        assert_eq!(
            t.get("/mail", Some(&old)).await.status,
            StatusCode::SEE_OTHER
        );
    });
}

#[test]
fn pages_need_a_session_and_forms_their_csrf_token_and_origin() {
    runtime().block_on(async {
        let t = setup().await;
        let r = t.get("/mail", None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert_eq!(r.headers[header::LOCATION], "/login");
        assert_eq!(
            t.get("/events", None).await.status,
            StatusCode::UNAUTHORIZED
        );
        let forged = format!("__Host-caliopen={}", "a".repeat(64));
        assert_eq!(
            t.get("/mail", Some(&forged)).await.status,
            StatusCode::SEE_OTHER
        );

        let id = t
            .deliver("alice@alpha.test", &mail("Hi", "", "hello"), Via::Smtp)
            .await;
        let (cookie, csrf) = t.login("alice").await;
        let path = format!("/messages/{id:x}/action");
        let no_token = t.post(&path, Some(&cookie), "op=flag").await;
        assert_eq!(no_token.status, StatusCode::FORBIDDEN);
        let wrong = t
            .post(
                &path,
                Some(&cookie),
                &format!("op=flag&csrf={}", "0".repeat(64)),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN);
        let cross = t
            .req(
                Request::post(&path)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::ORIGIN, "https://evil.test")
                    .header(header::COOKIE, &cookie)
                    .body(Body::from(format!("op=flag&csrf={csrf}")))
                    .expect("req"),
            )
            .await;
        assert_eq!(cross.status, StatusCode::FORBIDDEN);
        let meta = t.svc.store().meta(id).expect("meta").expect("there");
        assert!(
            !meta.has_keyword("$flagged"),
            "nothing refused changed anything"
        );
        assert!(
            !cross.body.contains("panicked") && !cross.body.contains("src/"),
            "no trace in an error page"
        );
        let ok = t
            .post(&path, Some(&cookie), &format!("op=flag&csrf={csrf}"))
            .await;
        assert_eq!(ok.status, StatusCode::SEE_OTHER);
        let meta = t.svc.store().meta(id).expect("meta").expect("there");
        assert!(meta.has_keyword("$flagged"));
        assert!(
            t.svc
                .metrics()
                .web_csrf_refused
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 3
        );

        // Logout ends the session server-side.
        let out = t
            .post("/logout", Some(&cookie), &format!("csrf={csrf}"))
            .await;
        assert_eq!(out.status, StatusCode::SEE_OTHER);
        assert_eq!(
            t.get("/mail", Some(&cookie)).await.status,
            StatusCode::SEE_OTHER
        );
        // Unknown pages and bad ids are 4xx pages.
        let (cookie, _) = t.login("alice").await;
        assert_eq!(
            t.get("/nowhere", Some(&cookie)).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            t.get("/messages/zz", Some(&cookie)).await.status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            t.get("/mail?mailbox=999", Some(&cookie)).await.status,
            StatusCode::NOT_FOUND
        );
        let bad = t.post(&path, Some(&cookie), "op=fly&csrf=x").await;
        assert!(bad.status.is_client_error());
    });
}

#[test]
fn a_browser_form_is_told_apart_from_a_cross_site_one() {
    runtime().block_on(async {
        let t = setup().await;
        // As Chromium sends it over HTTP/2: no Host header (the authority is
        // in the URI), Sec-Fetch-Site, and an Origin.
        let raw = |site: Option<&str>, origin: &str| {
            let mut b = Request::post("https://mail.alpha.test/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ORIGIN, origin);
            if let Some(s) = site {
                b = b.header("sec-fetch-site", s);
            }
            let mut r = b
                .body(Body::from("address=alice%40alpha.test&password=pw-alice"))
                .expect("req");
            r.extensions_mut().insert(Peer(None));
            t.app.clone().oneshot(r)
        };
        let ok = raw(Some("same-origin"), "null").await.expect("infallible");
        assert_eq!(ok.status(), StatusCode::SEE_OTHER);
        let ok = raw(None, "https://mail.alpha.test")
            .await
            .expect("infallible");
        assert_eq!(
            ok.status(),
            StatusCode::SEE_OTHER,
            "the URI's authority stands for Host"
        );
        let no = raw(Some("cross-site"), "https://mail.alpha.test")
            .await
            .expect("infallible");
        assert_eq!(no.status(), StatusCode::FORBIDDEN);
        let no = raw(None, "https://evil.test").await.expect("infallible");
        assert_eq!(no.status(), StatusCode::FORBIDDEN);
    });
}

#[test]
fn the_inbox_lists_threads_newest_first_in_pages_with_their_privacy() {
    runtime().block_on(async {
        let t = setup().await;
        let first = t
            .deliver(
                "alice@alpha.test",
                &mail("Lunch", "Message-ID: <lunch@ext.test>\r\n", "noon?"),
                Via::Smtp,
            )
            .await;
        for i in 0..60 {
            t.deliver(
                "alice@alpha.test",
                &mail(&format!("Note {i}"), "", "x"),
                Via::Smtp,
            )
            .await;
        }
        let reply = t
            .deliver(
                "alice@alpha.test",
                &mail(
                    "Re: Lunch",
                    "Message-ID: <r@ext.test>\r\nIn-Reply-To: <lunch@ext.test>\r\nReferences: <lunch@ext.test>\r\n",
                    "yes",
                ),
                Via::Mesh,
            )
            .await;
        let (cookie, _) = t.login("alice").await;
        let page = t.get("/mail", Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK);
        let rows = page.body.matches("<li class=\"row").count();
        assert_eq!(rows, 50, "one page of threads");
        // The thread with the newest message comes first, with its count,
        // the mesh picture and its grade.
        let top = page.body.find("<li class=\"row").expect("row");
        let top = &page.body[top..top + 900];
        assert!(top.contains(&format!("/messages/{reply:x}")), "{top}");
        assert!(top.contains("<span class=\"count\">2</span>"), "{top}");
        assert!(top.contains("Sealed letter carried by a labelled member"), "{top}");
        assert!(top.contains("class=\"grade grade-"));
        assert!(!page.body.contains(&format!("/messages/{first:x}\"")), "the root is folded into its thread");
        let next = page.body.find("rel=\"next\" href=\"").expect("a next page") + 17;
        let href = page.body[next..].split('"').next().expect("href").replace("&amp;", "&");
        let older = t.get(&href, Some(&cookie)).await;
        assert_eq!(older.status, StatusCode::OK);
        assert_eq!(older.body.matches("<li class=\"row").count(), 11, "{href}");
        assert!(!older.body.contains("Lunch"), "a thread shows on one page only");
        assert!(older.body.contains("Note 0"));
        // Search: subject, sender and body words.
        let hits = t.get("/mail?q=subject%3Alunch", Some(&cookie)).await;
        assert_eq!(hits.body.matches("<li class=\"row").count(), 2);
        let hits = t.get("/mail?q=noon", Some(&cookie)).await;
        assert_eq!(hits.body.matches("<li class=\"row").count(), 1);
        let none = t.get("/mail?q=from%3Anobody", Some(&cookie)).await;
        assert!(none.body.contains("No messages here."));
    });
}

#[test]
fn a_large_html_message_is_sanitised_at_delivery_and_shown_from_that() {
    runtime().block_on(async {
        let t = setup().await;
        let row = "<tr><td style=\"color:red\"><a href=\"https://x.test/\">link</a>\
                   <img src=\"https://tracker.test/p.gif\"><script>alert(1)</script></td></tr>";
        let html = format!("<table>{}</table>", row.repeat(800));
        let raw = mail(
            "Big",
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n",
            &html,
        );
        assert!(raw.len() >= super::prepared::PREPARE_MIN);
        let id = t.deliver("alice@alpha.test", &raw, Via::Smtp).await;
        let t0 = std::time::Instant::now();
        while t.web.preparing() != Some((0, 1)) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?}",
                t.web.preparing()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // What the thread kept is what a view would have made.
        let stored = t.svc.store().raw(id).expect("raw").expect("raw");
        let key = super::prepared::key_of(&stored);
        let disk = t.web.disk.clone().expect("a disk cache");
        let kept = disk.get(&key, false).expect("prepared at delivery");
        let direct = super::prepared::sanitise(&stored, false).expect("html");
        assert_eq!(kept.html, direct.html);
        assert_eq!(kept.blocked, 800);
        assert!(!kept.html.contains("<script"));
        // The view serves the prepared result (marked here to tell it
        // apart from a fresh sanitisation).
        disk.put(
            &key,
            false,
            &super::sanitize::Clean {
                html: "<p>prepared</p>".into(),
                blocked: 5,
            },
        );
        let (cookie, _) = t.login("alice").await;
        let body = t
            .get(&format!("/messages/{id:x}/body"), Some(&cookie))
            .await;
        assert_eq!(body.status, StatusCode::OK);
        assert!(body.body.contains("<p>prepared</p>"), "{}", body.body);
        let page = t.get(&format!("/messages/{id:x}"), Some(&cookie)).await;
        assert!(
            page.body.contains("5 remote resources blocked"),
            "{}",
            page.body
        );
        // Small messages are not prepared.
        t.deliver("alice@alpha.test", &mail("Small", "", "hi"), Via::Smtp)
            .await;
        assert_eq!(t.web.preparing(), Some((0, 1)));
        // Deleted for ever: the store no longer holds the bytes, and the
        // sweep removes their sanitised copy.
        let csrf = csrf_of(&t.get("/settings", Some(&cookie)).await.body);
        let act = format!("/messages/{id:x}/action");
        for mbx in [Role::Inbox.id(), Role::Trash.id()] {
            let r = t
                .post(
                    &act,
                    Some(&cookie),
                    &format!("op=delete&mailbox={mbx}&csrf={csrf}"),
                )
                .await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        }
        assert!(!t.svc.store().holds_body(&key));
        let live = t.svc.store_handle();
        assert_eq!(disk.sweep(&|k: &[u8; 32]| live.holds_body(k)), 1);
        assert!(!disk.has(&key, false));
    })
}

#[test]
fn a_message_is_shown_read_and_filed_and_its_html_is_sanitised_and_fenced() {
    runtime().block_on(async {
        let t = setup().await;
        let html = "<p>Hi <b>Alice</b></p><img src=\"http://127.0.0.1:9/pixel.gif\">\
                    <script>alert(1)</script><a href=\"javascript:alert(2)\">x</a>";
        let raw = mail(
            "News",
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n",
            &format!(
                "--b\r\nContent-Type: text/html\r\n\r\n{html}\r\n--b\r\nContent-Type: text/html; name=\"evil.html\"\r\n\
                 Content-Disposition: attachment; filename=\"../evil.html\"\r\n\r\n<script>alert(3)</script>\r\n--b--"
            ),
        );
        let id = t.deliver("alice@alpha.test", &raw, Via::Smtp).await;
        let other = t
            .deliver("bob@alpha.test", &mail("For bob", "", "private"), Via::Smtp)
            .await;
        let (cookie, csrf) = t.login("alice").await;
        assert_eq!(
            t.get(&format!("/messages/{other:x}"), Some(&cookie)).await.status,
            StatusCode::NOT_FOUND,
            "another account's message does not exist here"
        );
        let page = t.get(&format!("/messages/{id:x}"), Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("<h1>News</h1>"));
        assert!(page.body.contains("remote resource blocked"));
        assert!(page.body.contains("sandbox=\"allow-popups allow-popups-to-escape-sandbox\""));
        assert!(!page.body.contains("alert("), "the page itself never carries the HTML");
        assert!(t.svc.store().meta(id).expect("m").expect("m").has_keyword("$seen"));

        let body = t.get(&format!("/messages/{id:x}/body"), Some(&cookie)).await;
        assert_eq!(body.status, StatusCode::OK);
        let csp = body.headers[header::CONTENT_SECURITY_POLICY].to_str().expect("csp");
        assert!(csp.contains("default-src 'none'") && csp.contains("sandbox"));
        assert!(
            csp.contains("img-src data:;") && !csp.contains("http"),
            "no remote image by default: {csp}"
        );
        assert!(body.body.contains("<b>Alice</b>"));
        for bad in ["<script", "javascript:", "127.0.0.1:9"] {
            assert!(!body.body.contains(bad), "{bad} in {}", body.body);
        }
        let remote = t.get(&format!("/messages/{id:x}/body?remote=1"), Some(&cookie)).await;
        assert!(remote.body.contains("http://127.0.0.1:9/pixel.gif"));
        assert!(remote.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp")
            .contains("img-src data: https: http:"));

        let part = t.get(&format!("/messages/{id:x}/parts/0"), Some(&cookie)).await;
        assert_eq!(part.status, StatusCode::OK);
        assert_eq!(part.headers[header::CONTENT_TYPE], "application/octet-stream");
        let cd = part.headers[header::CONTENT_DISPOSITION].to_str().expect("cd");
        assert!(cd.starts_with("attachment;") && !cd.contains('/'), "{cd}");
        assert_eq!(t.get(&format!("/messages/{id:x}/parts/7"), Some(&cookie)).await.status, StatusCode::NOT_FOUND);

        // An inline image (multipart/related, cid:) is shown from the message itself.
        let related = mail(
            "Logo",
            "MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=r\r\n",
            "--r\r\nContent-Type: text/html\r\n\r\n<p><img src=\"cid:logo@x\"> <img src=\"cid:evil@x\"></p>\r\n\
             --r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n\
             --r\r\nContent-Type: image/svg+xml\r\nContent-ID: <evil@x>\r\n\r\n<svg onload=\"alert(1)\"/>\r\n--r--",
        );
        let rid = t.deliver("alice@alpha.test", &related, Via::Smtp).await;
        let body = t.get(&format!("/messages/{rid:x}/body"), Some(&cookie)).await;
        assert!(body.body.contains("src=\"data:image/png;base64,iVBORw0KGgo=\""), "{}", body.body);
        assert!(!body.body.contains("svg") && !body.body.contains("alert"), "{}", body.body);

        // Allow the sender: its remote content loads from then on.
        let act = format!("/messages/{id:x}/action");
        t.post(&act, Some(&cookie), &format!("op=allow_sender&csrf={csrf}")).await;
        let body = t.get(&format!("/messages/{id:x}/body"), Some(&cookie)).await;
        assert!(body.body.contains("pixel.gif"));
        let settings = t.get("/settings", Some(&cookie)).await;
        assert!(settings.body.contains("sender@ext.test"));

        // Unread, move to the archive, delete (to the trash), delete for ever.
        t.post(&act, Some(&cookie), &format!("op=unseen&csrf={csrf}&mailbox=1")).await;
        assert!(!t.svc.store().meta(id).expect("m").expect("m").has_keyword("$seen"));
        let archive = Role::Archive.id();
        let r = t
            .post(&act, Some(&cookie), &format!("op=move&to={archive}&mailbox=1&csrf={csrf}"))
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let m = t.svc.store().meta(id).expect("m").expect("m");
        assert_eq!(m.placements.iter().map(|p| p.mailbox).collect::<Vec<_>>(), vec![archive]);
        t.post(&act, Some(&cookie), &format!("op=delete&mailbox={archive}&csrf={csrf}")).await;
        let m = t.svc.store().meta(id).expect("m").expect("m");
        assert_eq!(m.placements[0].mailbox, Role::Trash.id());
        let trash = Role::Trash.id();
        t.post(&act, Some(&cookie), &format!("op=delete&mailbox={trash}&csrf={csrf}")).await;
        assert_eq!(t.get(&format!("/messages/{id:x}"), Some(&cookie)).await.status, StatusCode::NOT_FOUND);
    });
}

fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let b = "XyZzyBoundary42";
    let mut out = Vec::new();
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, data)) = file {
        out.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"{name}\"\r\nContent-Type: application/pdf\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), out)
}

#[test]
fn compose_previews_routes_and_sends_through_the_router() {
    runtime().block_on(async {
        let t = setup().await;
        let (cookie, csrf) = t.login("alice").await;
        let frag = t
            .get("/routes?to=bob%40alpha.test%2C%20nobody%40alpha.test%2C%20x%40elsewhere.test%2Cjunk", Some(&cookie))
            .await;
        assert_eq!(frag.status, StatusCode::OK);
        assert!(frag.body.contains("route-hand") && frag.body.contains("bob@alpha.test"));
        assert_eq!(frag.body.matches("route-none").count(), 3, "{}", frag.body);
        assert!(frag.body.contains("not an address"));

        let send = |fields: Vec<(&'static str, String)>, file: Option<(&'static str, &'static [u8])>| {
            let f: Vec<(&str, String)> = fields;
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (ct, body) = multipart(&refs, file);
            Request::post("/compose")
                .header(header::CONTENT_TYPE, ct)
                .header(header::COOKIE, cookie.clone())
                .body(Body::from(body))
                .expect("req")
        };
        // Without the token: refused, nothing sent.
        let r = t
            .req(send(vec![("op", "send".into()), ("to", "bob@alpha.test".into())], None))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // A preview keeps the draft and names the route.
        let r = t
            .req(send(
                vec![
                    ("csrf", csrf.clone()),
                    ("op", "preview".into()),
                    ("to", "Bob <bob@alpha.test>".into()),
                    ("subject", "Report".into()),
                    ("body", "Here it is.".into()),
                ],
                None,
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.contains("route-hand") && r.body.contains("value=\"Report\""));
        assert!(t.svc.store().list("bob").expect("list").is_empty());
        // An unreachable recipient is refused with the reason, nothing sent.
        let r = t
            .req(send(
                vec![("csrf", csrf.clone()), ("op", "send".into()), ("to", "nobody@alpha.test".into())],
                None,
            ))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.body.contains("nobody@alpha.test"));
        // Sent, with an attachment: in bob's inbox and alice's Sent.
        let r = t
            .req(send(
                vec![
                    ("csrf", csrf.clone()),
                    ("op", "send".into()),
                    ("to", "Bob <bob@alpha.test>".into()),
                    ("subject", "Report".into()),
                    ("body", "Here it is.".into()),
                ],
                Some(("report.pdf", b"%PDF-1.4 test")),
            ))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.contains("Message sent."));
        let inbox = t.svc.store().list("bob").expect("list");
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].via, Via::Local);
        let raw = t.svc.store().raw(inbox[0].id).expect("raw").expect("raw");
        let shown = super::view::show(&raw);
        assert_eq!(shown.subject, "Report");
        assert_eq!(shown.from_address, "alice@alpha.test");
        assert_eq!(shown.attachments.len(), 1);
        assert_eq!(shown.attachments[0].name, "report.pdf");
        let (sent, _) = t
            .svc
            .store()
            .newest("alice", Role::Sent.id(), None, 10)
            .expect("sent");
        assert_eq!(sent.len(), 1);

        // Reply and forward are prefilled from the original.
        let id = inbox[0].id;
        let (bob, _) = t.login("bob").await;
        let reply = t.get(&format!("/compose?reply={id:x}"), Some(&bob)).await;
        assert!(reply.body.contains("value=\"alice@alpha.test\""));
        assert!(reply.body.contains("value=\"Re: Report\""));
        assert!(reply.body.contains("Here it is."));
        let fwd = t.get(&format!("/compose?forward={id:x}"), Some(&bob)).await;
        assert!(fwd.body.contains("value=\"Fwd: Report\""));
        assert!(fwd.body.contains("report.pdf"), "the attachment goes along");
        let bob_csrf = csrf_of(&fwd.body);
        let (ct, body) = multipart(
            &[
                ("csrf", bob_csrf.as_str()),
                ("op", "send"),
                ("to", "alice@alpha.test"),
                ("subject", "Fwd: Report"),
                ("body", "see below"),
                ("forward_of", &format!("{id:x}")),
            ],
            None,
        );
        let r = t
            .req(
                Request::post("/compose")
                    .header(header::CONTENT_TYPE, ct)
                    .header(header::COOKIE, &bob)
                    .body(Body::from(body))
                    .expect("req"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let got = t.svc.store().list("alice").expect("list");
        let raw = t.svc.store().raw(got[0].id).expect("raw").expect("raw");
        let shown = super::view::show(&raw);
        assert_eq!(shown.attachments.len(), 1);
        assert_eq!(shown.attachments[0].name, "report.pdf");
        assert_eq!(super::view::attachment(&raw, 0).map(|a| a.1), Some(b"%PDF-1.4 test".to_vec()));
    });
}

#[test]
fn drafts_are_saved_resumed_replaced_and_gone_once_sent() {
    runtime().block_on(async {
        let t = setup().await;
        let (cookie, csrf) = t.login("alice").await;
        let post = |fields: Vec<(&'static str, String)>| {
            let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (ct, body) = multipart(&refs, Some(("plan.pdf", b"%PDF-plan")));
            Request::post("/compose")
                .header(header::CONTENT_TYPE, ct)
                .header(header::COOKIE, cookie.clone())
                .body(Body::from(body))
                .expect("req")
        };
        let drafts = || {
            t.svc
                .store()
                .newest("alice", Role::Drafts.id(), None, 10)
                .expect("drafts")
                .0
        };
        // No recipient yet: saved all the same.
        let r = t
            .req(post(vec![
                ("csrf", csrf.clone()),
                ("op", "draft".into()),
                ("subject", "Plan".into()),
                ("body", "first words".into()),
            ]))
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let at = r.headers[header::LOCATION].to_str().expect("to").to_owned();
        let d = drafts();
        assert_eq!(d.len(), 1);
        assert!(d[0].has_keyword("$draft"));
        assert_eq!(at, format!("/compose?draft={:x}", d[0].id));
        let page = t.get(&at, Some(&cookie)).await;
        assert!(page.body.contains("value=\"Plan\"") && page.body.contains("first words"));
        assert!(page.body.contains("plan.pdf"), "its attachment goes along");
        // Saved again: replaced, not added.
        let first = d[0].id;
        let r = t
            .req(post(vec![
                ("csrf", csrf.clone()),
                ("op", "draft".into()),
                ("to", "bob@alpha.test".into()),
                ("subject", "Plan".into()),
                ("body", "more words".into()),
                ("draft_of", format!("{first:x}")),
            ]))
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let d = drafts();
        assert_eq!(d.len(), 1);
        assert_ne!(d[0].id, first);
        // Sent: delivered, and gone from Drafts.
        let r = t
            .req(post(vec![
                ("csrf", csrf.clone()),
                ("op", "send".into()),
                ("to", "bob@alpha.test".into()),
                ("subject", "Plan".into()),
                ("body", "final words".into()),
                ("draft_of", format!("{:x}", d[0].id)),
            ]))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(drafts().is_empty());
        let inbox = t.svc.store().list("bob").expect("bob");
        assert_eq!(inbox.len(), 1);
        let raw = t.svc.store().raw(inbox[0].id).expect("raw").expect("raw");
        assert!(super::view::show(&raw).text.contains("final words"));
    });
}

#[test]
fn settings_change_language_publication_and_password() {
    runtime().block_on(async {
        let t = setup().await;
        let (cookie, csrf) = t.login("alice").await;
        // The browser's language, then the user's own choice.
        let fr = t
            .req(
                Request::get("/mail")
                    .header(header::COOKIE, &cookie)
                    .header(header::ACCEPT_LANGUAGE, "fr-FR,fr;q=0.9")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await;
        assert!(fr.body.contains("Boîte de réception"));
        let r = t
            .post("/settings/prefs", Some(&cookie), &format!("csrf={csrf}&remote=never&lang=fr"))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.contains("Enregistré."));
        let page = t.get("/privacy", Some(&cookie)).await;
        assert!(page.body.contains("Votre niveau de confidentialité"));
        assert!(page.body.contains("<meter"));
        assert!(
            page.body.contains("points=\"0.0,") && page.body.contains(" 300.0,"),
            "one day's level is a line across the chart"
        );
        let prefs = t.svc.store().prefs("alice").expect("prefs");
        assert_eq!(prefs.history.len(), 1, "the day's level is recorded");
        let bad = t
            .post("/settings/prefs", Some(&cookie), &format!("csrf={csrf}&remote=maybe&lang=fr"))
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);

        // Withdraw and publish the public level.
        t.post("/settings/publish", Some(&cookie), &format!("csrf={csrf}&publish=0")).await;
        assert!(t.svc.store().user_stats("alice").expect("s").public_opt_out);
        t.post("/settings/publish", Some(&cookie), &format!("csrf={csrf}&publish=1")).await;
        assert!(!t.svc.store().user_stats("alice").expect("s").public_opt_out);

        // Password: refused when the two differ, or the current one is wrong;
        // changed otherwise, and the other sessions end.
        let (other, _) = t.login("alice").await;
        let r = t
            .post(
                "/settings/password",
                Some(&cookie),
                &format!("csrf={csrf}&current=pw-alice&new=a-new-long-password&repeat=another-one-here"),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        let r = t
            .post(
                "/settings/password",
                Some(&cookie),
                &format!("csrf={csrf}&current=wrong&new=a-new-long-password&repeat=a-new-long-password"),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        let r = t
            .post(
                "/settings/password",
                Some(&cookie),
                &format!("csrf={csrf}&current=pw-alice&new=a-new-long-password&repeat=a-new-long-password"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let rec = t.svc.store().user("alice").expect("u").expect("u");
        assert!(rec.password_hash.starts_with("$argon2id$"));
        assert_eq!(t.get("/mail", Some(&other)).await.status, StatusCode::SEE_OTHER);
        assert_eq!(t.get("/mail", Some(&cookie)).await.status, StatusCode::OK);
    });
}

#[test]
fn folders_are_created_renamed_and_deleted_but_role_folders_stay() {
    runtime().block_on(async {
        let t = setup().await;
        let (cookie, csrf) = t.login("alice").await;
        let r = t
            .post(
                "/folders",
                Some(&cookie),
                &format!("csrf={csrf}&name=Projects%2FGarden"),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let to = r.headers[header::LOCATION].to_str().expect("to").to_owned();
        let id: u32 = to.rsplit('=').next().expect("id").parse().expect("number");
        let page = t.get(&to, Some(&cookie)).await;
        assert!(page.body.contains("<h1>Projects/Garden</h1>"));
        assert!(page.body.contains(&format!("/folders/{id}/rename")));
        let dup = t
            .post(
                "/folders",
                Some(&cookie),
                &format!("csrf={csrf}&name=Projects%2FGarden"),
            )
            .await;
        assert_eq!(dup.status, StatusCode::BAD_REQUEST, "{}", dup.body);
        let r = t
            .post(
                &format!("/folders/{id}/rename"),
                Some(&cookie),
                &format!("csrf={csrf}&name=Garden"),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert!(t
            .svc
            .store()
            .mailboxes("alice")
            .expect("m")
            .iter()
            .any(|b| b.name == "Garden"));
        let inbox = t.get("/mail", Some(&cookie)).await;
        assert!(
            !inbox.body.contains("/folders/1/rename"),
            "no rename form for a role folder"
        );
        let refused = t
            .post("/folders/1/delete", Some(&cookie), &format!("csrf={csrf}"))
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let no_token = t
            .post(&format!("/folders/{id}/delete"), Some(&cookie), "")
            .await;
        assert_eq!(no_token.status, StatusCode::FORBIDDEN);
        let r = t
            .post(
                &format!("/folders/{id}/delete"),
                Some(&cookie),
                &format!("csrf={csrf}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert!(!t
            .svc
            .store()
            .mailboxes("alice")
            .expect("m")
            .iter()
            .any(|b| b.name == "Garden"));
    });
}

#[test]
fn events_stream_the_account_state() {
    runtime().block_on(async {
        let t = setup().await;
        let (cookie, _) = t.login("alice").await;
        let mut r = Request::get("/events")
            .header(header::COOKIE, &cookie)
            .body(Body::empty())
            .expect("req");
        r.extensions_mut().insert(Peer(None));
        let res = t.app.clone().oneshot(r).await.expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = res.into_body().into_data_stream();
        use futures_util::StreamExt;
        let first = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("first event")
            .expect("chunk")
            .expect("bytes");
        assert!(String::from_utf8_lossy(&first).contains("event: state"));
        t.deliver("alice@alpha.test", &mail("New", "", "x"), Via::Smtp)
            .await;
        let state = t.svc.store().state("alice").expect("state");
        let next = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event after the delivery")
            .expect("chunk")
            .expect("bytes");
        let text = String::from_utf8_lossy(&next).into_owned();
        assert!(text.contains(&format!("data: {state}")), "{text}");
    });
}

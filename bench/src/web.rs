//! The web client (issue #16), server side, without sockets: the router is
//! driven request by request, as the listener would, over a store holding
//! one inbox of 100,000 messages in threads. Measured: the discussion list
//! page (its first page, and a random older page) with its size, and a
//! message frame whose HTML body is 1 MB: prepared at delivery, sanitised on
//! view, and seen again.

use crate::report::Report;
use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use caliopen_instance::delivery::MailService;
use caliopen_instance::mail::Role;
use caliopen_instance::mail::{Delivery, MessageMeta, Via};
use caliopen_instance::store::Store;
use caliopen_instance::web::{router, Peer, Web};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Parameters of the web benchmark.
#[derive(Debug, Clone)]
pub struct WebParams {
    /// Messages in the inbox.
    pub messages: usize,
    /// Requests of each kind.
    pub probes: usize,
    /// Concurrent writers while filling it.
    pub writers: usize,
}

/// Message `i`: every fourth one answers the one before it (threads of
/// two), the rest start threads of their own.
fn message(i: usize) -> (String, Vec<u8>) {
    let subject = if i % 4 == 3 {
        format!("Re: Topic {}", i - 1)
    } else {
        format!("Topic {i}")
    };
    let reply = if i % 4 == 3 {
        format!(
            "In-Reply-To: <m{}@outside.test>\r\nReferences: <m{}@outside.test>\r\n",
            i - 1,
            i - 1
        )
    } else {
        String::new()
    };
    let mut raw = format!(
        "From: Sender {i} <sender{}@outside.test>\r\nTo: big@bench.test\r\nSubject: {subject}\r\n\
         Message-ID: <m{i}@outside.test>\r\n{reply}Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n",
        i % 500
    );
    while raw.len() < 2048 {
        raw.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    (subject, raw.into_bytes())
}

/// A 1 MB newsletter: tables, styles, links and remote images.
fn big_html() -> String {
    let mut h = String::from("<html><head><style>p{color:red}</style></head><body><table>");
    let mut i = 0;
    while h.len() < 1 << 20 {
        h.push_str(&format!(
            "<tr><td style=\"color:#333;padding:4px\"><a href=\"https://news.example/{i}\">Item {i}</a> \
             <img src=\"https://track.example/p/{i}.gif\" width=1 height=1>\
             <p>Lorem ipsum <b>dolor</b> sit amet, <i>consectetur</i> adipiscing elit.</p></td></tr>"
        ));
        i += 1;
    }
    h.push_str("</table></body></html>");
    h
}

async fn get(app: &axum::Router, path: &str, cookie: &str) -> Result<(StatusCode, usize)> {
    let mut r = Request::get(path)
        .header(header::COOKIE, cookie)
        .header(header::HOST, "bench.test")
        .body(Body::empty())?;
    r.extensions_mut().insert(Peer(None));
    let res = app.clone().oneshot(r).await?;
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 64 << 20).await?;
    Ok((status, body.len()))
}

/// Fills the inbox, then measures the pages.
pub async fn run(work: &std::path::Path, p: &WebParams, report: &mut Report) -> Result<()> {
    let tmp = tempfile::tempdir_in(work)?;
    let store = Store::open(&tmp.path().join("db"))?;
    store.set_domains(&["bench.test".to_owned()]);
    let hash =
        caliopen_instance::login::hash_password("bench-password-1").map_err(anyhow::Error::msg)?;
    store.put_user("big", &hash).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    // Threads need their first message stored before the reply: a writer
    // takes a whole group of four.
    for _ in 0..p.writers {
        let (store, next, n) = (store.clone(), next.clone(), p.messages);
        set.spawn(async move {
            let d = [Delivery::inbox("big", vec!["big@bench.test".into()])];
            loop {
                let g = next.fetch_add(4, Ordering::Relaxed);
                if g >= n {
                    break;
                }
                for i in g..(g + 4).min(n) {
                    let (subject, raw) = message(i);
                    let meta = MessageMeta {
                        from: format!("sender{}@outside.test", i % 500),
                        subject,
                        via: if i % 3 == 0 { Via::Mesh } else { Via::Smtp },
                        ..Default::default()
                    };
                    store.deliver_local(&meta, &d, &raw).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    eprintln!("  filled {} messages in {:.1?}", p.messages, t0.elapsed());
    let svc = MailService::new(store.clone(), vec!["bench.test".into()]);
    // The web client runs before the newsletters arrive, as in the daemon:
    // large HTML bodies are sanitised once their delivery is durable.
    let web = Web::new(svc, Duration::from_secs(3600), 25 << 20);
    let app = router(web.clone());
    // Forty 1 MB newsletters: twenty viewed once they are prepared, twenty
    // viewed after their prepared results are deleted (a sanitisation on
    // view), then one shown again (from the cache of sanitised bodies).
    let mut big_ids = Vec::new();
    let t_deliver = Instant::now();
    for n in 0..40 {
        let raw = format!(
            "From: news@outside.test\r\nTo: big@bench.test\r\nSubject: Big newsletter {n}\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Issue {n}</p>{}",
            big_html()
        );
        let meta = MessageMeta {
            from: "news@outside.test".into(),
            subject: format!("Big newsletter {n}"),
            ..Default::default()
        };
        // In the archive, so that the inbox pages measure 2 KB messages.
        let d = [Delivery {
            mailbox: Role::Archive.id(),
            ..Delivery::inbox("big", vec!["big@bench.test".into()])
        }];
        big_ids.push(store.deliver_local(&meta, &d, raw.as_bytes()).await?[0]);
    }
    let delivered = t_deliver.elapsed();
    loop {
        match web.preparing() {
            Some((0, done)) if done >= 40 => break,
            Some(_) => {}
            None => anyhow::bail!("the web client prepares nothing"),
        }
        anyhow::ensure!(
            t_deliver.elapsed() < Duration::from_secs(300),
            "large bodies not prepared after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let prepared = t_deliver.elapsed();
    report.add(
        "web",
        "1 MB HTML newsletter",
        "prepared at delivery, ms per message",
        prepared.as_secs_f64() * 1000.0 / 40.0,
        None,
        &format!(
            "40 delivered in {:.0} ms (the delivery does not wait), all prepared {:.0} ms after the first delivery, on the web-prepare thread",
            delivered.as_secs_f64() * 1000.0,
            prepared.as_secs_f64() * 1000.0
        ),
    );
    // The second twenty lose their prepared results.
    let cache = tmp
        .path()
        .join("db")
        .join("web-cache")
        .join(format!("v{}", caliopen_instance::web::sanitize::VERSION));
    for id in &big_ids[20..] {
        let raw = store.raw(*id)?.context("raw")?;
        let key = caliopen_instance::web::prepared::key_of(&raw);
        std::fs::remove_file(cache.join(caliopen_instance::web::prepared::file_name(&key, false)))?;
    }
    let mut login = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "bench.test")
        .body(Body::from(
            "address=big%40bench.test&password=bench-password-1",
        ))?;
    login.extensions_mut().insert(Peer(None));
    let res = app.clone().oneshot(login).await?;
    let cookie = res
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_owned();
    let case = format!("inbox of {} msgs (threads of 1-2)", p.messages);
    let inbox = Role::Inbox.id();
    let uid_next = store
        .mailboxes("big")?
        .iter()
        .find(|b| b.id == inbox)
        .map_or(1, |b| b.uid_next);
    let mut rand = crate::storage::xorshift();
    for (what, random) in [("first page", false), ("random older page", true)] {
        let mut lat = Vec::with_capacity(p.probes);
        let mut bytes = 0;
        for _ in 0..p.probes {
            let path = if random {
                format!(
                    "/mail?before={}",
                    100 + rand() % u64::from(uid_next.max(200) - 100)
                )
            } else {
                "/mail".to_owned()
            };
            let t = Instant::now();
            let (status, n) = get(&app, &path, &cookie).await?;
            lat.push(t.elapsed());
            anyhow::ensure!(status == StatusCode::OK, "{path}: {status}");
            bytes = bytes.max(n);
        }
        crate::storage::add_latency(
            report,
            "web",
            &case,
            &format!("discussion list, {what}"),
            &mut lat,
            "50 threads rendered (privacy index of each), server side",
            Some("< 10000"),
        );
        report.add(
            "web",
            &case,
            &format!("discussion list, {what}: largest page KB"),
            bytes as f64 / 1024.0,
            Some("< 100"),
            "HTML of one page (CSS and script are separate, cached files)",
        );
    }
    let html = big_html();
    let mut lat = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let c = caliopen_instance::web::sanitize::clean(&html, false);
        lat.push(t.elapsed());
        anyhow::ensure!(c.blocked > 1000, "the pixels are counted");
    }
    crate::storage::add_latency(
        report,
        "web",
        "1 MB HTML newsletter",
        "sanitise only (ammonia)",
        &mut lat,
        "html5ever parse, allow list, serialise",
        None,
    );
    for (what, ids, note, target) in [
        (
            "message frame, first view (prepared at delivery)",
            big_ids[..20].to_vec(),
            "GET /messages/<id>/body: read, SHA-256 of the bytes, the sanitised body from the web cache (zstd)",
            Some("< 50000"),
        ),
        (
            "message frame, first view (not prepared: sanitised on view)",
            big_ids[20..].to_vec(),
            "GET /messages/<id>/body: read, MIME parse, ammonia, remote images counted (what a view costs when the preparer was behind or its file was lost)",
            None,
        ),
        (
            "message frame, seen again (cached)",
            vec![big_ids[0]; 20],
            "GET /messages/<id>/body: from the in-memory cache of sanitised bodies",
            Some("< 50000"),
        ),
    ] {
        let mut lat = Vec::new();
        for id in ids {
            let t = Instant::now();
            let (status, _) = get(&app, &format!("/messages/{id:x}/body"), &cookie).await?;
            lat.push(t.elapsed());
            anyhow::ensure!(status == StatusCode::OK, "big body: {status}");
        }
        crate::storage::add_latency(report, "web", "1 MB HTML newsletter", what, &mut lat, note, target);
    }
    drop(app);
    drop(store);
    Ok(())
}

//! Outages of the outbound relay, in process with a shortened retry
//! schedule and lifetime: a relay down for several retry periods gets the
//! message exactly once when it comes back; a relay that never comes back
//! makes the message bounce with an RFC 3464 DSN at expiry, once.

use caliopen_instance::delivery::MailService;
use caliopen_instance::login::hash_password;
use caliopen_instance::mail::{Transport, Via};
use caliopen_instance::outbound::{RelayConfig, SmtpQueue};
use caliopen_instance::smtp::server::{ListenerConfig, SmtpListener};
use caliopen_instance::smtp::session::Kind;
use caliopen_instance::store::Store;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Sender {
    _tmp: tempfile::TempDir,
    store: Store,
    svc: MailService,
    queue: SmtpQueue,
    token: CancellationToken,
    runner: tokio::task::JoinHandle<()>,
}

/// Instance alpha.test (user alice) whose mail for the outside goes to `relay`.
async fn sender(relay: SocketAddr, lifetime: Duration) -> Sender {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = Store::open(&tmp.path().join("db")).expect("store");
    store
        .put_user("alice", &hash_password("pw").expect("hash"))
        .await
        .expect("user");
    let svc = MailService::new(store.clone(), vec!["alpha.test".into()]);
    let queue = SmtpQueue::open(
        store.db(),
        RelayConfig {
            relay: Some((relay.ip().to_string(), relay.port())),
            routes: Vec::new(),
            ca_pem: None,
            hello: "mx.alpha.test".into(),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_millis(400),
            lifetime,
            direct: None,
            mx_port: 25,
            mta_sts: None,
            mx_ca_pem: None,
            tls_reports: None,
        },
    )
    .expect("queue");
    svc.set_queue(std::sync::Arc::new(queue.clone()));
    let token = CancellationToken::new();
    let runner = tokio::spawn(
        queue
            .clone()
            .run(svc.clone(), "alpha.test".into(), token.clone()),
    );
    Sender {
        _tmp: tmp,
        store,
        svc,
        queue,
        token,
        runner,
    }
}

async fn submit(s: &Sender, to: &str, subject: &str) {
    s.svc
        .accept(
            "alice@alpha.test",
            &[to.to_owned()],
            format!("From: alice@alpha.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhello\r\n")
                .as_bytes(),
            Transport::default(),
            Via::Local,
        )
        .await
        .expect("accepted");
}

/// A port nothing listens on (for now).
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

async fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_down_for_several_retry_periods_gets_each_message_once_when_back() {
    let relay = dead_port();
    let s = sender(relay, Duration::from_secs(120)).await;
    for i in 0..5 {
        submit(&s, "carol@beta.test", &format!("queued {i}")).await;
    }
    assert_eq!(s.queue.len(), 5);
    // Several retry periods (200 ms, then 400 ms each) pass with the relay down.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        s.queue.len(),
        5,
        "messages left the queue with the relay down"
    );
    assert!(
        s.store.list("alice").expect("list").is_empty(),
        "bounced early"
    );

    // The relay (beta's MX) comes up on its address.
    let tmp = tempfile::tempdir().expect("tmp");
    let bstore = Store::open(&tmp.path().join("db")).expect("store");
    bstore
        .put_user("carol", &hash_password("pw").expect("hash"))
        .await
        .expect("user");
    let bsvc = MailService::new(bstore.clone(), vec!["beta.test".into()]);
    let l = SmtpListener::bind(relay, ListenerConfig::new(Kind::Mx, "mx.beta.test"))
        .await
        .expect("rebind the relay's port");
    let (btoken, btracker) = (CancellationToken::new(), TaskTracker::new());
    btracker.spawn(l.run(bsvc, btoken.clone(), btracker.clone()));
    let t = wait(
        "delivery after the relay came back",
        Duration::from_secs(20),
        || s.queue.is_empty(),
    )
    .await;
    println!("relay back: queue of 5 drained in {t:?}");
    let got: Vec<String> = bstore
        .list("carol")
        .expect("list")
        .into_iter()
        .map(|m| m.subject)
        .collect();
    let mut uniq = got.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(uniq.len(), 5, "a message was delivered twice: {got:?}");
    // Nothing more arrives later, and nothing bounced.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(bstore.list("carol").expect("list").len(), 5);
    assert!(s.store.list("alice").expect("list").is_empty());
    s.token.cancel();
    s.runner.await.expect("runner");
    btoken.cancel();
    btracker.close();
    btracker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_never_comes_back_bounces_with_a_dsn_at_expiry() {
    let s = sender(dead_port(), Duration::from_secs(3)).await;
    let t0 = Instant::now();
    submit(&s, "carol@beta.test", "doomed").await;
    let t = wait("the bounce", Duration::from_secs(20), || {
        !s.store.list("alice").expect("list").is_empty()
    })
    .await;
    println!("bounced {t:?} after submission (lifetime 3 s)");
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "bounced before the lifetime ran out"
    );
    // Still exactly one bounce a while later, and the queue is empty.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let list = s.store.list("alice").expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(s.queue.is_empty());
    let m = &list[0];
    assert_eq!(m.subject, "Undelivered Mail Returned to Sender");
    let raw = String::from_utf8(s.store.raw(m.id).expect("raw").expect("present")).expect("utf-8");
    for needle in [
        "multipart/report",
        "report-type=delivery-status",
        "message/delivery-status",
        "Reporting-MTA: dns;",
        "Final-Recipient: rfc822;",
        "carol@beta.test",
        "Action: failed",
        "Status: 4.4.7",
        "Diagnostic-Code:",
        "Subject: doomed",
    ] {
        assert!(raw.contains(needle), "DSN lacks {needle:?}:\n{raw}");
    }
    // The report names the last error (connection refused), not just "expired".
    assert!(
        raw.to_ascii_lowercase().contains("refused") || raw.contains("connect"),
        "{raw}"
    );
    s.token.cancel();
    s.runner.await.expect("runner");
}

//! The mesh in process: a real association CA, real certificates, real QUIC
//! with mutual TLS; relay throughput and latency into an instance store, and
//! scale (handshakes, memory per connection, revocation by gossip).

use crate::report::{ms, percentile, Report};
use crate::smtp;
use anyhow::{bail, Context, Result};
use caliopen_ca::{Authority, RevokeTarget, Settings, SignRequest};
use caliopen_federation::BoxFuture;
use caliopen_federation::{
    HandlerError, IdentitySlot, MeshConfig, MeshHandler, MeshNode, Outbox, OutboxEvent,
    PeerIdentity, RetryPolicy, TrustStore,
};
use caliopen_instance::delivery::MailService;
use caliopen_instance::smtp::server::{ListenerConfig, SmtpListener};
use caliopen_instance::smtp::session::Kind;
use caliopen_instance::store::Store;
use caliopen_proto::pb::directory::SignedDirectory;
use caliopen_proto::pb::mesh::{Deliver, DeliverReply, PrivacyQuery, PrivacyReply};
use prost::Message;
use rcgen::{CertificateParams, KeyPair};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A throwaway association.
pub struct Fed {
    _tmp: tempfile::TempDir,
    /// The CA.
    pub ca: Arc<Authority>,
}

/// A started member.
pub struct Member {
    /// Member id.
    pub id: String,
    /// Its node.
    pub node: MeshNode,
    /// Its trust store.
    pub trust: Arc<TrustStore>,
    /// Certificate serial (hex).
    pub serial: String,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Fed {
    /// A new association in a temporary directory under `work`.
    pub fn new(work: &std::path::Path) -> Result<Self> {
        let tmp = tempfile::tempdir_in(work)?;
        let ca = Arc::new(Authority::init(
            &tmp.path().join("assoc"),
            "Bench Association",
            3650,
            Settings::default(),
        )?);
        Ok(Self { _tmp: tmp, ca })
    }

    /// Starts a node for `id` (domain `ID.test`) on loopback and has the
    /// association sign it with its bound address.
    pub async fn member(
        &self,
        id: &str,
        cfg: MeshConfig,
        handler: Arc<dyn MeshHandler>,
    ) -> Result<Member> {
        self.member_with_successor(id, cfg, handler, None).await
    }

    /// [`Fed::member`] with a successor named in the label.
    pub async fn member_with_successor(
        &self,
        id: &str,
        cfg: MeshConfig,
        handler: Arc<dyn MeshHandler>,
        successor: Option<&str>,
    ) -> Result<Member> {
        let domain = format!("{id}.test");
        let trust = Arc::new(TrustStore::new(self.ca.root_pem(), vec!["1.0".into()])?);
        let identity = IdentitySlot::new();
        let node = MeshNode::start(
            cfg,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            trust.clone(),
            identity.clone(),
            handler,
        )
        .await?;
        let addr = node.local_addr()?;
        let key = KeyPair::generate()?;
        let csr = CertificateParams::new(vec![domain])?
            .serialize_request(&key)?
            .pem()?
            .into_bytes();
        let issued = self.ca.sign(&SignRequest {
            csr,
            member_id: id.into(),
            charter_version: "1.0".into(),
            endpoints: vec![addr.to_string()],
            successor: successor.map(str::to_owned),
            ..Default::default()
        })?;
        identity.set_pem(
            &issued.record.certificate_pem,
            &key.serialize_pem(),
            trust.provider(),
        )?;
        Ok(Member {
            id: id.into(),
            node,
            trust,
            serial: issued.record.serial,
        })
    }

    /// The current CRL (DER) and directory.
    pub fn published(&self) -> Result<(Vec<u8>, SignedDirectory)> {
        let p = self.ca.published();
        Ok((
            p.crl_der.as_ref().clone(),
            SignedDirectory::decode(p.directory.as_slice())?,
        ))
    }

    /// Gives every member what the association publishes now (as its
    /// association link would).
    pub fn sync(&self, members: &[&Member]) -> Result<()> {
        let (crl, dir) = self.published()?;
        for m in members {
            m.trust.offer_crl(&crl, None)?;
            m.trust.offer_directory(&dir, None, now())?;
        }
        Ok(())
    }
}

/// A member's mesh configuration without the per-peer request budget: the
/// default (2,000 requests/s, burst 4,000) would cap one peer's relay or
/// queries below the targets, and the benchmark measures the path.
fn unthrottled(id: &str) -> MeshConfig {
    let mut cfg = MeshConfig::new(id);
    cfg.rate_per_second = 1e7;
    cfg.rate_burst = 1e7;
    cfg
}

/// A handler that stores nothing (scale runs only connect and gossip).
struct NullHandler;

impl MeshHandler for NullHandler {
    fn deliver(
        &self,
        _peer: &PeerIdentity,
        _d: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>> {
        Box::pin(async { Err(HandlerError::Refused("scale run".into())) })
    }
    fn privacy_query(
        &self,
        _peer: &PeerIdentity,
        _q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        Box::pin(async { Err(HandlerError::Refused("scale run".into())) })
    }
}

static TXN: AtomicU64 = AtomicU64::new(0);

fn txn_id(tag: u64) -> Vec<u8> {
    let mut t = vec![0u8; 32];
    t[..8].copy_from_slice(&tag.to_be_bytes());
    t[8..16].copy_from_slice(&TXN.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    t
}

/// Parameters of the relay benchmark.
#[derive(Debug, Clone)]
pub struct RelayParams {
    /// Messages per case.
    pub messages: usize,
    /// Concurrent streams (or SMTP sessions) per case.
    pub streams: Vec<usize>,
    /// Body sizes.
    pub sizes: Vec<usize>,
    /// The target rate, at which the 2 KB, 64-stream cases are also run
    /// paced (open loop) to measure latency under that load.
    pub rate: Option<f64>,
    /// Cases to run: node, outbox, smtp (empty: all).
    pub cases: Vec<String>,
    /// Runs of each targeted case (2 KB, 64 or more streams), interleaved;
    /// the median run is reported, every run in its note.
    pub repeat: usize,
}

/// One measured run of a relay case.
struct Run {
    n: usize,
    el: Duration,
    lat: Vec<Duration>,
    note: String,
}

impl Run {
    fn rate(&self) -> f64 {
        self.n as f64 / self.el.as_secs_f64()
    }

    fn p99(&mut self) -> f64 {
        percentile(&mut self.lat, 99.0).map_or(f64::NAN, ms)
    }
}

impl RelayParams {
    fn runs(&self, case: &str) -> bool {
        self.cases.is_empty() || self.cases.iter().any(|c| c == case)
    }
}

/// Mesh relay between two in-process instances (stores with group commit,
/// the instance's own mesh handler), beside SMTP into the same instance B.
pub async fn relay(work: &std::path::Path, p: &RelayParams, report: &mut Report) -> Result<()> {
    let fed = Fed::new(work)?;
    let dir_a = tempfile::tempdir_in(work)?;
    let dir_b = tempfile::tempdir_in(work)?;
    let store_a = Store::open(&dir_a.path().join("db"))?;
    let store_b = Store::open(&dir_b.path().join("db"))?;
    store_b.put_user("bob", "not-a-real-hash").await?;
    let svc_a = MailService::new(store_a.clone(), vec!["alpha.test".into()]);
    let svc_b = MailService::new(store_b.clone(), vec!["beta.test".into()]);
    let a = fed
        .member(
            "alpha",
            MeshConfig::new("alpha"),
            caliopen_instance::mesh::store_handler(svc_a),
        )
        .await?;
    let b = fed
        .member(
            "beta",
            unthrottled("beta"),
            caliopen_instance::mesh::store_handler(svc_b.clone()),
        )
        .await?;
    fed.sync(&[&a, &b])?;
    // Connect once (long-lived connection, as in production).
    a.node.connect("beta").await?;

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mx = SmtpListener::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        ListenerConfig::new(Kind::Mx, "beta.test"),
    )
    .await?;
    let mx_addr = mx.local_addr()?;
    tracker.spawn(mx.run(svc_b.clone(), token.clone(), tracker.clone()));

    // As in an instance: the outbox's journal beside A's database.
    let outbox = Outbox::open(&dir_a.path().join("mesh-outbox"), RetryPolicy::default())?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<OutboxEvent>(4096);
    // Taken by each case's event router and handed back when it ends.
    tracker.spawn(outbox.clone().run(a.node.clone(), tx, token.clone()));

    let from = "alice@alpha.test";
    let to = "bob@beta.test";
    for &size in &p.sizes {
        let body = smtp::message(from, to, "mesh relay benchmark", size);
        let kb = format!("{}KB", size / 1024);
        for &s in &p.streams {
            let n = p.messages;
            // 1. Mesh node: S concurrent Deliver requests on one connection,
            // closed loop (each stream sends its next once the last is
            // acknowledged), then paced at the target rate.
            let send_node = {
                let node = a.node.clone();
                let body = body.clone();
                move || {
                    let node = node.clone();
                    let d = Deliver {
                        txn_id: txn_id(1),
                        mail_from: from.into(),
                        rcpt_to: vec![to.into()],
                        message: body.clone(),
                        accepted_at: now(),
                    };
                    async move {
                        if node.deliver("beta", d).await?.duplicate {
                            bail!("unexpected duplicate");
                        }
                        Ok(())
                    }
                }
            };
            // 2. From A's durable outbox to B's durable ack: the same, each
            // message enqueued (A's durable write), then awaited until the
            // outbox reports B's durable acknowledgement.
            let waiting: Waiting = Arc::default();
            let router = tokio::spawn(route_events(rx, waiting.clone()));
            let send_outbox = {
                let outbox = outbox.clone();
                let body = body.clone();
                let waiting = Arc::downgrade(&waiting);
                move || {
                    let outbox = outbox.clone();
                    let waiting = waiting.clone();
                    let id = txn_id(2);
                    let d = Deliver {
                        txn_id: id.clone(),
                        mail_from: from.into(),
                        rcpt_to: vec![to.into()],
                        message: body.clone(),
                        accepted_at: now(),
                    };
                    async move {
                        let (tx, done) = tokio::sync::oneshot::channel();
                        waiting
                            .upgrade()
                            .context("event router gone")?
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(id, tx);
                        outbox.enqueue("beta", d).await?;
                        tokio::time::timeout(Duration::from_secs(30), done)
                            .await
                            .context("outbox: not delivered in 30 s")?
                            .context("outbox: event router stopped")?
                    }
                }
            };
            let targeted = size <= 4096 && s >= 64;
            let mut runs: Vec<(&str, Option<f64>)> = vec![("", None)];
            if targeted {
                if let Some(rate) = p.rate {
                    runs.push(("paced", Some(rate)));
                }
            }
            // Each targeted case runs `repeat` times, the rounds interleaved
            // so that a slow spell of the machine does not fall on one case.
            let rounds = if targeted { p.repeat.max(1) } else { 1 };
            let mut measured: Vec<Measured> = Vec::new();
            for _ in 0..rounds {
                for &(mode, rate) in &runs {
                    let label = |what: &str| match rate {
                        None => format!("{what}, {kb}, {s} streams"),
                        Some(r) => format!("{what}, {kb}, paced {r:.0} msg/s over ≤{s} streams"),
                    };
                    // Throughput is the target at saturation; latency at the
                    // target rate (at saturation a closed loop's mean latency
                    // is streams / throughput, by Little's law).
                    let targets = match (targeted, mode) {
                        (true, "") => (Some(">= 10000"), None),
                        (true, _) => (None, Some("< 5")),
                        _ => (None, None),
                    };
                    if p.runs("node") {
                        let before = store_b.message_count();
                        let commits0 = commits(&store_b);
                        let cpu0 = crate::sys::cpu_time();
                        let (el, lat) = drive(n, s, rate, send_node.clone()).await?;
                        let stored = store_b.message_count() - before;
                        let note = format!(
                            "{stored} stored at B; {}; {}",
                            commit_note(&store_b, commits0, stored, el),
                            cpu_note(cpu0, el)
                        );
                        keep(
                            &mut measured,
                            label("node→B durable ack"),
                            targets,
                            rate.is_some(),
                            Run { n, el, lat, note },
                        );
                    }
                    if p.runs("outbox") {
                        let before = store_b.message_count();
                        let commits_a = journal_commits(&outbox);
                        let commits0 = commits(&store_b);
                        let cpu0 = crate::sys::cpu_time();
                        let (el, lat) = drive(n, s, rate, send_outbox.clone()).await?;
                        let stored = store_b.message_count() - before;
                        let note = format!(
                            "{stored} stored at B; from enqueue (A's durable write) to the Delivered event after B's durable ack; {}; {}; {}",
                            journal_note(&outbox, commits_a, n, el),
                            commit_note(&store_b, commits0, stored, el),
                            cpu_note(cpu0, el)
                        );
                        keep(
                            &mut measured,
                            label("A outbox→B durable ack"),
                            targets,
                            rate.is_some(),
                            Run { n, el, lat, note },
                        );
                    }
                }
            }
            for (case, targets, paced, runs) in measured {
                add_median_rows(report, &case, targets, paced, runs);
            }
            // The router stops once the last handle on `waiting` is gone.
            drop(send_outbox);
            drop(waiting);
            rx = router.await?;

            // 3. SMTP into the same instance B: S sessions.
            if !p.runs("smtp") {
                continue;
            }
            let before = store_b.message_count();
            let commits0 = commits(&store_b);
            let cpu0 = crate::sys::cpu_time();
            let per = n.div_ceil(s);
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for i in 0..s {
                let body = body.clone();
                let count = per.min(n.saturating_sub(i * per));
                set.spawn(async move { smtp::session(mx_addr, from, to, &body, count).await });
            }
            let mut lat = Vec::new();
            while let Some(r) = set.join_next().await {
                lat.extend(r??);
            }
            let el = t0.elapsed();
            let stored = store_b.message_count() - before;
            add_latency_rows(
                report,
                "mesh-relay",
                &format!("SMTP→B 250, {kb}, {s} sessions"),
                lat.len(),
                el,
                &mut lat,
                (None, None),
                &format!(
                    "{stored} stored at B; MAIL..250 after DATA; {}; {}",
                    commit_note(&store_b, commits0, stored, el),
                    cpu_note(cpu0, el)
                ),
            );
        }
    }
    token.cancel();
    tracker.close();
    a.node.shutdown().await;
    b.node.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    Ok(())
}

/// Producers waiting for their message's outcome, by txn_id.
type Waiting = Arc<Mutex<HashMap<Vec<u8>, tokio::sync::oneshot::Sender<Result<()>>>>>;

/// Resolves each waiting producer when the outbox reports its message, and
/// gives the event receiver back once no producer waits any more.
async fn route_events(
    mut rx: tokio::sync::mpsc::Receiver<OutboxEvent>,
    waiting: Waiting,
) -> tokio::sync::mpsc::Receiver<OutboxEvent> {
    let take = |id: &[u8]| {
        waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
    };
    loop {
        // Done once every producer has been answered and none is waiting;
        // producers register before they enqueue, so an empty map after a
        // quiet moment means the case is over.
        let ev = match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return rx,
            Err(_) => {
                if Arc::strong_count(&waiting) == 1 {
                    return rx;
                }
                continue;
            }
        };
        let (id, outcome) = match ev {
            OutboxEvent::Delivered { reply, .. } => (reply.txn_id, Ok(())),
            OutboxEvent::Failed {
                deliver, reason, ..
            } => (deliver.txn_id, Err(anyhow::anyhow!("refused: {reason}"))),
            OutboxEvent::Expired { deliver, .. } => {
                (deliver.txn_id, Err(anyhow::anyhow!("expired")))
            }
            OutboxEvent::Reroute { deliver, .. } => {
                (deliver.txn_id, Err(anyhow::anyhow!("rerouted")))
            }
            OutboxEvent::RecipientsRefused { .. } => continue,
        };
        if let Some(tx) = take(&id) {
            let _ = tx.send(outcome);
        }
    }
}

/// CPU used by both instances (this process) over a case, in cores.
fn cpu_note(cpu0: Duration, el: Duration) -> String {
    let used = crate::sys::cpu_time().saturating_sub(cpu0);
    format!(
        "both instances used {:.2} of {} cores",
        used.as_secs_f64() / el.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// B's committer counters: commits, µs in sled's flush, µs in fdatasync.
fn commits(store: &Store) -> (u64, u64, u64, u64) {
    let c = store.committer();
    (
        c.flushes.load(Ordering::Relaxed),
        c.flush_us.load(Ordering::Relaxed),
        c.sync_us.load(Ordering::Relaxed),
        store.batches_written(),
    )
}

/// How many group commits B made for `stored` messages over `el`, and
/// where a commit's time went.
fn commit_note(store: &Store, before: (u64, u64, u64, u64), stored: usize, el: Duration) -> String {
    let now = commits(store);
    let c = now.0.saturating_sub(before.0).max(1);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / c as f64 / 1000.0;
    format!(
        "{c} group commits at B ({:.1} msg/commit, {} transactions, one commit every {:.2} ms; each {:.2} ms in sled's flush + {:.2} ms in fdatasync)",
        stored as f64 / c as f64,
        now.3.saturating_sub(before.3),
        el.as_secs_f64() * 1000.0 / c as f64,
        per(now.1, before.1),
        per(now.2, before.2),
    )
}

/// A's outbox journal counters: commits, µs in fdatasync, segments
/// prepared, recycled, made on the spot.
fn journal_commits(outbox: &Outbox) -> [u64; 5] {
    let s = outbox.journal().stats();
    [
        &s.commits,
        &s.sync_us,
        &s.prepared,
        &s.recycled,
        &s.unprepared_rolls,
    ]
    .map(|a| a.load(Ordering::Relaxed))
}

/// How many syncs A's outbox journal made for `n` messages over `el`.
fn journal_note(outbox: &Outbox, before: [u64; 5], n: usize, el: Duration) -> String {
    let now = journal_commits(outbox);
    let d = |i: usize| now[i].saturating_sub(before[i]);
    let c = d(0).max(1);
    format!(
        "{c} syncs of A's outbox journal ({:.1} msg/sync, one every {:.2} ms, each {:.2} ms in fdatasync; new segments: {} zero-filled ahead, {} recycled, {} made on the spot)",
        n as f64 / c as f64,
        el.as_secs_f64() * 1000.0 / c as f64,
        d(1) as f64 / c as f64 / 1000.0,
        d(2),
        d(3),
        d(4),
    )
}

/// A case's runs: its label, targets (throughput, p99), whether paced.
type Measured = (
    String,
    (Option<&'static str>, Option<&'static str>),
    bool,
    Vec<Run>,
);

/// Files a run under its case (cases in the order first seen).
fn keep(
    measured: &mut Vec<Measured>,
    case: String,
    targets: (Option<&'static str>, Option<&'static str>),
    paced: bool,
    run: Run,
) {
    match measured.iter_mut().find(|m| m.0 == case) {
        Some(m) => m.3.push(run),
        None => measured.push((case, targets, paced, vec![run])),
    }
}

/// Reports the median of a case's runs (by p99 when paced, by throughput
/// otherwise), and every run's figures in its note.
fn add_median_rows(
    report: &mut Report,
    case: &str,
    targets: (Option<&str>, Option<&str>),
    paced: bool,
    mut runs: Vec<Run>,
) {
    let figures: Vec<(f64, f64)> = runs.iter_mut().map(|r| (r.rate(), r.p99())).collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| if paced { figures[i].1 } else { -figures[i].0 };
        key(a).total_cmp(&key(b))
    });
    let Some(&mid) = order.get(order.len() / 2) else {
        return;
    };
    let mut run = runs.swap_remove(mid);
    let mut note = run.note.clone();
    if figures.len() > 1 {
        let list = |f: &dyn Fn(&(f64, f64)) -> String| {
            figures.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        note = format!(
            "median of {} interleaved runs by {} (msg/s {}; p99 ms {}); {note}",
            figures.len(),
            if paced { "p99" } else { "throughput" },
            list(&|x| format!("{:.0}", x.0)),
            list(&|x| format!("{:.1}", x.1)),
        );
    }
    add_latency_rows(
        report,
        "mesh-relay",
        case,
        run.n,
        run.el,
        &mut run.lat,
        targets,
        &note,
    );
}

#[allow(clippy::too_many_arguments)]
fn add_latency_rows(
    report: &mut Report,
    section: &str,
    case: &str,
    n: usize,
    elapsed: Duration,
    lat: &mut [Duration],
    targets: (Option<&str>, Option<&str>),
    note: &str,
) {
    let rate = n as f64 / elapsed.as_secs_f64();
    let p50 = percentile(lat, 50.0).map_or(f64::NAN, ms);
    let p99 = percentile(lat, 99.0).map_or(f64::NAN, ms);
    report.add(section, case, "msg/s", rate, targets.0, note);
    report.add(section, case, "p50 ms", p50, None, "");
    report.add(section, case, "p99 ms", p99, targets.1, "");
}

/// Runs `n` sends over `streams` concurrent workers. Without `rate`, a
/// closed loop: each worker sends its next once the last is done. With it,
/// an open loop: send i is due at start + i/rate; a worker free before then
/// waits and times from when it sends, but a send that no worker was free
/// for is timed from when it was due, so a backlog shows in the latency
/// instead of slowing the load (no coordinated omission).
async fn drive<F, Fut>(
    n: usize,
    streams: usize,
    rate: Option<f64>,
    send: F,
) -> Result<(Duration, Vec<Duration>)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..streams.max(1) {
        let next = next.clone();
        let send = send.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let start = match rate {
                    None => tokio::time::Instant::now(),
                    Some(r) => {
                        let due = t0 + Duration::from_secs_f64(i as f64 / r);
                        if tokio::time::Instant::now() < due {
                            tokio::time::sleep_until(due).await;
                            tokio::time::Instant::now()
                        } else {
                            due
                        }
                    }
                };
                send().await?;
                lat.push(start.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        lat.extend(r??);
    }
    Ok((t0.elapsed(), lat))
}

/// Public level queries (issue #7 item 3): an answering member B with
/// `users` opted-in users; queries per second and latency from one peer
/// (`concurrency` requests in flight) and from `peers` peers at once. B's
/// per-peer policy limit (20/s, burst 100) is lifted to measure the path;
/// the limit itself is what production peers get.
pub async fn privacy(
    work: &std::path::Path,
    users: usize,
    queries: usize,
    peers: usize,
    report: &mut Report,
) -> Result<()> {
    let fed = Fed::new(work)?;
    let dir_b = tempfile::tempdir_in(work)?;
    let store_b = Store::open(&dir_b.path().join("db"))?;
    let svc_b = MailService::new(store_b.clone(), vec!["beta.test".into()]);
    let t0 = Instant::now();
    for i in 0..users {
        store_b
            .put_user(&format!("user{i}"), "not-a-real-hash")
            .await?;
    }
    eprintln!(
        "  {users} opted-in users at beta in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let b = fed
        .member(
            "beta",
            unthrottled("beta"),
            caliopen_instance::mesh::store_handler_with_limit(svc_b, 1e9, 1e9),
        )
        .await?;
    let mut askers = Vec::with_capacity(peers);
    for i in 0..peers.max(1) {
        askers.push(
            fed.member(
                &format!("p{i}"),
                MeshConfig::new(format!("p{i}")),
                Arc::new(NullHandler),
            )
            .await?,
        );
    }
    let mut all: Vec<&Member> = askers.iter().collect();
    all.push(&b);
    fed.sync(&all)?;
    for a in &askers {
        a.node.connect("beta").await?;
    }
    let bits = caliopen_instance::privacy::public::DEFAULT_PREFIX_BITS;
    let query = move |i: usize| {
        let h = caliopen_instance::privacy::public::address_hash(&format!("user{i}@beta.test"));
        PrivacyQuery {
            hash_prefix: caliopen_instance::privacy::public::prefix_of(&h, bits),
            prefix_bits: bits,
        }
    };
    // (case, askers used, in flight per asker)
    let cases = [
        ("1 peer".to_owned(), 1usize, 16usize),
        (format!("{peers} peers"), peers.max(1), 2usize),
    ];
    for (case, n_askers, inflight) in cases {
        let next = Arc::new(AtomicUsize::new(0));
        let entries = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for a in askers.iter().take(n_askers) {
            for _ in 0..inflight {
                let node = a.node.clone();
                let (next, entries) = (next.clone(), entries.clone());
                set.spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= queries {
                            break;
                        }
                        let t = Instant::now();
                        let r = node.privacy_query("beta", query(i % users.max(1))).await?;
                        lat.push(t.elapsed());
                        entries.fetch_add(r.entries.len(), Ordering::Relaxed);
                    }
                    anyhow::Ok(lat)
                });
            }
        }
        let mut lat = Vec::new();
        while let Some(r) = set.join_next().await {
            lat.extend(r??);
        }
        let el = t0.elapsed();
        let rate = queries as f64 / el.as_secs_f64();
        report.add(
            "privacy",
            &case,
            "queries/s",
            rate,
            None,
            &format!(
                "{bits}-bit prefixes over {users} opted-in users ({:.1} entries per answer); {} in flight",
                entries.load(Ordering::Relaxed) as f64 / queries.max(1) as f64,
                n_askers * inflight
            ),
        );
        report.add(
            "privacy",
            &case,
            "p50 ms",
            percentile(&mut lat, 50.0).map_or(f64::NAN, ms),
            None,
            "",
        );
        report.add(
            "privacy",
            &case,
            "p99 ms",
            percentile(&mut lat, 99.0).map_or(f64::NAN, ms),
            None,
            "",
        );
    }
    for a in &askers {
        a.node.shutdown().await;
    }
    b.node.shutdown().await;
    Ok(())
}

/// Handshakes in flight at once in the scale run.
pub const HANDSHAKE_WINDOW: usize = 16;

/// Mesh scale: `n` members in this process, all dialing one hub.
pub async fn scale(work: &std::path::Path, n: usize, report: &mut Report) -> Result<()> {
    let fed = Fed::new(work)?;
    let rss0 = crate::sys::rss_bytes();
    let t0 = Instant::now();
    let mut members = Vec::with_capacity(n);
    for i in 0..n {
        members.push(
            fed.member(
                &format!("m{i}"),
                MeshConfig::new(format!("m{i}")),
                Arc::new(NullHandler),
            )
            .await?,
        );
    }
    let refs: Vec<&Member> = members.iter().collect();
    fed.sync(&refs)?;
    let setup = t0.elapsed();
    let rss1 = crate::sys::rss_bytes();
    let case = format!("{n} members");

    // Handshakes: every member dials the hub at once (mutual TLS, policy on
    // both sides, Hello exchange).
    let hub = members.first().context("no members")?;
    let hub_id = hub.id.clone();
    // At most HANDSHAKE_WINDOW in flight: an unbounded burst of Initial
    // packets overflows the hub's UDP receive buffer and measures QUIC loss
    // recovery timers instead of handshake cost.
    let window = Arc::new(tokio::sync::Semaphore::new(HANDSHAKE_WINDOW));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for m in members.iter().skip(1) {
        let node = m.node.clone();
        let hub_id = hub_id.clone();
        let window = window.clone();
        set.spawn(async move {
            let _permit = window.acquire_owned().await;
            node.connect(&hub_id).await.map(|_| ())
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if r.is_err() || r.is_ok_and(|x| x.is_err()) {
            failed += 1;
        }
    }
    let hs = t0.elapsed();
    // Let the hub register every peer.
    let t1 = Instant::now();
    while hub.node.connected_peers().len() < n - 1 - failed
        && t1.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let conns = (n - 1 - failed) as f64;
    report.add(
        "mesh-scale",
        &case,
        "handshakes/s",
        conns / hs.as_secs_f64(),
        None,
        &format!(
            "{} of {} members dialed one hub, {HANDSHAKE_WINDOW} at a time (mTLS + policy both sides + Hello), both ends in this process on the same cores; {failed} failed",
            n - 1 - failed,
            n - 1
        ),
    );
    report.add(
        "mesh-scale",
        &case,
        "KiB/member",
        (rss1.saturating_sub(rss0)) as f64 / n as f64 / 1024.0,
        None,
        &format!("RSS per started node (endpoint, trust store holding the {n}-member directory); setup {:.1} s", setup.as_secs_f64()),
    );
    // Memory per connection: a second round of connections, to a second
    // hub, once the allocator's free lists from setup and the first round
    // are used up, so that the RSS delta is the connections' own.
    if let Some(hub2) = members.get(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = crate::sys::rss_bytes();
        let hub2_id = hub2.id.clone();
        let mut set = tokio::task::JoinSet::new();
        for m in members.iter().skip(2) {
            let node = m.node.clone();
            let hub2_id = hub2_id.clone();
            let window = window.clone();
            set.spawn(async move {
                let _permit = window.acquire_owned().await;
                node.connect(&hub2_id).await.map(|_| ())
            });
        }
        let mut ok = 0usize;
        while let Some(r) = set.join_next().await {
            if matches!(r, Ok(Ok(()))) {
                ok += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = crate::sys::rss_bytes();
        report.add(
            "mesh-scale",
            &case,
            "KiB/connection",
            after.saturating_sub(before) as f64 / ok.max(1) as f64 / 1024.0,
            None,
            &format!(
                "RSS delta over {ok} more connections (to a second hub), both ends of each counted; a lower bound: glibc reuses memory freed during setup"
            ),
        );
    }

    // Revocation: the association revokes the last member; the new CRL
    // reaches one member (as through its Watch stream); gossip carries it.
    let victim = members.last().context("no members")?;
    let before = hub.trust.current().crl_number();
    fed.ca.revoke(
        &RevokeTarget::Serial(victim.serial.clone()),
        "keyCompromise",
    )?;
    let (crl, _) = fed.published()?;
    let first = members.get(2).context("need three members")?;
    let t0 = Instant::now();
    first.trust.offer_crl(&crl, None)?;
    let others: Vec<&Member> = members.iter().take(n - 1).collect();
    loop {
        let reached = others
            .iter()
            .filter(|m| m.trust.current().crl_number() > before)
            .count();
        if reached == others.len() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("revocation reached {reached} of {} in 60 s", others.len());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let gossip = t0.elapsed();
    while hub.node.connected_peers().contains(&victim.id) && t0.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let closed = t0.elapsed();
    report.add(
        "mesh-scale",
        &case,
        "revocation ms",
        ms(gossip),
        None,
        &format!(
            "CRL offered to one member, gossip (member→hub→all) until all {} others hold it; hub closed the revoked member's connection after {:.1} ms",
            n - 2,
            ms(closed)
        ),
    );
    // The membership log on the same mesh (the revoked member left).
    let rest: Vec<&Member> = members.iter().take(n - 1).collect();
    if let Err(e) = crate::tlog_bench::at_scale(work, &fed, &rest, report).await {
        report
            .skipped
            .push(format!("membership log at {n} members: {e:#}"));
    }
    for m in &members {
        m.node.shutdown().await;
    }
    Ok(())
}

/// Successor handover throughput: one account of `n` messages of `size`
/// bytes streamed from a member that closed to its successor by the
/// instance's own path (`caliopen handover`: export into the spool, pieces
/// over the mesh, each `fdatasync`ed at the successor, import, digest
/// compared), next to the relay rows of the same run.
pub async fn handover(
    work: &std::path::Path,
    n: usize,
    size: usize,
    report: &mut Report,
) -> Result<()> {
    use caliopen_instance::mail::{Transport, Via};
    let fed = Fed::new(work)?;
    let dir_a = tempfile::tempdir_in(work)?;
    let dir_b = tempfile::tempdir_in(work)?;
    let store_a = Store::open(&dir_a.path().join("db"))?;
    let store_b = Store::open(&dir_b.path().join("db"))?;
    let hash = caliopen_instance::login::hash_password("bench password")
        .map_err(|e| anyhow::anyhow!(e))?;
    store_a.put_user("alice", &hash).await?;
    // No quota in the way of the measured account.
    store_a.set_quota_default(caliopen_instance::mail::QuotaLimits::default());
    store_b.set_quota_default(caliopen_instance::mail::QuotaLimits::default());
    let svc_a = MailService::new(store_a.clone(), vec!["alpha.test".into()]);
    let svc_b = MailService::new(
        store_b.clone(),
        vec!["beta.test".into(), "alpha.test".into()],
    );
    svc_a.set_spool_dir(dir_a.path().join("handover"));
    svc_b.set_spool_dir(dir_b.path().join("handover"));
    let a = fed
        .member_with_successor(
            "alpha",
            unthrottled("alpha"),
            caliopen_instance::mesh::store_handler(svc_a.clone()),
            Some("beta.test"),
        )
        .await?;
    let b = fed
        .member(
            "beta",
            unthrottled("beta"),
            caliopen_instance::mesh::store_handler(svc_b.clone()),
        )
        .await?;
    fed.ca.handover("alpha", "beta")?;
    fed.sync(&[&a, &b])?;
    let outbox = Outbox::open(&dir_a.path().join("mesh-outbox"), RetryPolicy::default())?;
    svc_a.set_mesh(Arc::new(caliopen_instance::mesh::MeshRoute {
        member_id: "alpha".into(),
        trust: a.trust.clone(),
        outbox,
        node: a.node.clone(),
        answers: Arc::default(),
        log: None,
    }));
    // The account: n messages, delivered as the MX would (group commit).
    let body = smtp::message(
        "someone@example.org",
        "alice@alpha.test",
        "handover benchmark",
        size,
    );
    let rcpt = vec!["alice@alpha.test".to_owned()];
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let mut jobs = tokio::task::JoinSet::new();
        for i in chunk {
            let mut m = format!("X-Seq: {i}\r\n").into_bytes();
            m.extend_from_slice(&body);
            let (svc, rcpt) = (svc_a.clone(), rcpt.clone());
            jobs.spawn(async move {
                svc.accept(
                    "someone@example.org",
                    &rcpt,
                    &m,
                    Transport::default(),
                    Via::Smtp,
                )
                .await
                .map(|_| ())
            });
        }
        while let Some(r) = jobs.join_next().await {
            r??;
        }
    }
    a.node.connect("beta").await?;
    let t0 = Instant::now();
    let out = caliopen_instance::handover::send_account(&svc_a, "alice", 1).await?;
    let el = t0.elapsed().as_secs_f64();
    if out["same"] != true {
        bail!("the successor's account differs: {out}");
    }
    let bytes = out["archive"]["bytes"].as_f64().unwrap_or(0.0);
    let case = format!(
        "handover alpha->beta, one account, {n} x {} KB",
        size / 1024
    );
    let note =
        "export into the spool + 1 MiB pieces over QUIC (fdatasync each) + import + digest check";
    report.add("mesh-relay", &case, "msg/s", n as f64 / el, None, note);
    report.add("mesh-relay", &case, "MB/s", bytes / el / 1e6, None, "");
    a.node.shutdown().await;
    b.node.shutdown().await;
    Ok(())
}

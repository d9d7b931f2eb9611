//! Crash safety: `kill -9` at random moments while four kinds of traffic run
//! at once through instance alpha — inbound MX mail, submission to a local
//! user, submission for a member (mesh relay to beta) and submission for the
//! outside world (SMTP queue to gamma's MX as relay). After each kill the
//! daemon restarts on the same addresses while the clients keep going; at
//! the end every acknowledged message is in its mailbox exactly once, no
//! message is anywhere twice, and alpha's queues are empty; after each kill
//! `caliopen store check` finds every body the index names on disk and
//! sound (compaction runs every second, so kills land in it too).
//!
//! `crash_*` runs a few kill points in the normal suite; `stress_*` (ignored;
//! `cargo test -p caliopen-instance --test crash stress_ -- --ignored`) runs at least
//! 20, also killing the mesh receiver beta now and then. The seed of the
//! random kill moments is printed; `CALIOPEN_CRASH_SEED=N` replays one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
mod reliab;

use reliab::{free_udp_port, Assoc, Instance};

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// A client process that sends messages in a loop, reconnecting after
/// failures, and prints `ACK <subject>` once the server accepted one.
const CLIENT: &str = r#"
import os, smtplib, ssl, sys, time
mode, port, tls, user, pw, rcpt, prefix, stop = sys.argv[1:9]
ctx = ssl.create_default_context(cafile=tls)
ctx.check_hostname = False
n = 0
while not os.path.exists(stop):
    try:
        s = smtplib.SMTP("127.0.0.1", int(port), timeout=10)
        if mode == "sub":
            s.starttls(context=ctx)
            s.login(user, pw)
        while not os.path.exists(stop):
            n += 1
            subj = "%s-%d" % (prefix, n)
            s.sendmail(user, [rcpt], ("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nbody %s\r\n" % (user, rcpt, subj, subj)).encode())
            print("ACK " + subj, flush=True)
            time.sleep(0.01)
        s.quit()
    except Exception as e:
        time.sleep(0.05)
"#;

struct Client {
    child: Child,
    acked: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    #[allow(clippy::too_many_arguments)]
    fn start(
        mode: &str,
        port: u16,
        tls: &Path,
        user: &str,
        pw: &str,
        rcpt: &str,
        prefix: &str,
        stop: &Path,
    ) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(CLIENT)
            .args([
                mode,
                &port.to_string(),
                tls.to_str().expect("utf-8"),
                user,
                pw,
                rcpt,
                prefix,
                stop.to_str().expect("utf-8"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let out = child.stdout.take().expect("stdout");
        let acked = Arc::new(Mutex::new(Vec::new()));
        let a = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(s) = line.strip_prefix("ACK ") {
                    a.lock().expect("lock").push(s.to_owned());
                }
            }
        });
        Self {
            child,
            acked,
            reader: Some(reader),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    fn finish(mut self) -> Vec<String> {
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.acked.lock().expect("lock").clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// xorshift64*: enough randomness for kill moments, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

fn subjects(inst: &Instance, user: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for msg in inst.list(user) {
        let s = msg["subject"].as_str().unwrap_or("").to_owned();
        *m.entry(s).or_insert(0) += 1;
    }
    m
}

fn crash_run(rounds: usize, kill_beta_every: usize) {
    let seed = std::env::var("CALIOPEN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("kill moments from seed {seed} (CALIOPEN_CRASH_SEED={seed} replays them)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let assoc = Assoc::start(root, "127.0.0.1:0".parse().expect("addr"));

    // gamma: the outside world (alpha's relay), never killed.
    let mut gamma = Instance::init(root, "gamma", "gamma.test", None, None, None);
    gamma.add_user("carol", "carol password");
    gamma.start();
    let relay = format!("localhost:{}", gamma.smtp().port());

    let a_addrs = (free_tcp(), free_tcp());
    let mut alpha = Instance::init(
        root,
        "alpha",
        "alpha.test",
        Some(format!("127.0.0.1:{}", free_udp_port())),
        Some(&relay),
        Some(a_addrs),
    );
    std::fs::copy(gamma.data.join("tls.pem"), alpha.data.join("relay-ca.pem")).expect("copy");
    alpha.set("smtp", "relay_ca = \"relay-ca.pem\"");
    // Compaction every second: kills land in it too (each restart leaves a
    // partly filled segment, which the next passes copy forward and delete).
    alpha.set("store", "compact_seconds = 1");
    let mut beta = Instance::init(
        root,
        "beta",
        "beta.test",
        Some(format!("127.0.0.1:{}", free_udp_port())),
        None,
        None,
    );
    alpha.join(&assoc, "alpha");
    beta.join(&assoc, "beta");
    alpha.add_user("alice", "alice password");
    alpha.add_user("dave", "dave password");
    beta.add_user("bob", "bob password");
    beta.start();
    alpha.start();

    let stop: PathBuf = root.join("stop");
    let tls = alpha.data.join("tls.pem");
    let (mx, sub) = (a_addrs.0.port(), a_addrs.1.port());
    let clients = [
        Client::start(
            "mx",
            mx,
            &tls,
            "x@ext.test",
            "",
            "alice@alpha.test",
            "mx",
            &stop,
        ),
        Client::start(
            "sub",
            sub,
            &tls,
            "dave@alpha.test",
            "dave password",
            "alice@alpha.test",
            "local",
            &stop,
        ),
        Client::start(
            "sub",
            sub,
            &tls,
            "alice@alpha.test",
            "alice password",
            "bob@beta.test",
            "mesh",
            &stop,
        ),
        Client::start(
            "sub",
            sub,
            &tls,
            "alice@alpha.test",
            "alice password",
            "carol@gamma.test",
            "out",
            &stop,
        ),
    ];
    for round in 0..rounds {
        // Let traffic flow (every client gets some acknowledgements in), then
        // kill at a random moment.
        let t0 = Instant::now();
        let base: Vec<usize> = clients.iter().map(Client::count).collect();
        while clients.iter().zip(&base).any(|(c, b)| c.count() <= *b) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "round {round}: a client got no acknowledgement; alpha's log:\n{}",
                alpha.last_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 1500)));
        let kill_beta = kill_beta_every > 0 && round % kill_beta_every == kill_beta_every - 1;
        alpha.kill9();
        if kill_beta {
            beta.kill9();
        }
        println!(
            "round {round}: kill -9 alpha{} after {:?}; acknowledged so far: {:?}",
            if kill_beta { " and beta" } else { "" },
            t0.elapsed(),
            clients.iter().map(Client::count).collect::<Vec<_>>()
        );
        // Every body the index names is on disk and checks, every message
        // names a body, every count is right.
        let (ok, out, err) = common::run_caliopen(
            &[
                "store",
                "check",
                "--config",
                alpha.config.to_str().expect("utf-8"),
            ],
            None,
        );
        assert!(
            ok && out.contains(": 0 problems"),
            "round {round}: store check after kill -9:\n{out}{err}"
        );
        std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
        if kill_beta {
            beta.start();
        }
        alpha.start();
    }
    // Stop the clients, then let the queues drain.
    std::fs::write(&stop, b"").expect("stop");
    let acked: Vec<Vec<String>> = clients.into_iter().map(Client::finish).collect();
    let metrics = alpha.bound.and_then(|b| b.metrics).expect("metrics");
    let t0 = Instant::now();
    loop {
        let q = metric(metrics, "caliopen_smtp_queue_size");
        let o = metric(metrics, "caliopen_mesh_outbox_size");
        if q == Some(0.0) && o == Some(0.0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "queues did not drain: smtp {q:?}, mesh {o:?}; alpha's log:\n{}",
            alpha.last_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The outbox's journal is exported, and holds a few segments at most.
    let segments = metric(metrics, "caliopen_mesh_outbox_segments").expect("segments gauge");
    assert!(
        (1.0..=8.0).contains(&segments),
        "{segments} journal segments"
    );
    println!(
        "queues drained {:?} after the clients stopped",
        t0.elapsed()
    );

    // Mailboxes are read with the daemons stopped: through the admin API a
    // mailbox of a few thousand messages exceeds its 4 MB message limit
    // (reported; `mail list` opens the store itself when no daemon runs).
    alpha.stop();
    beta.stop();
    gamma.stop();
    let alice = subjects(&alpha, "alice");
    let bob = subjects(&beta, "bob");
    let carol = subjects(&gamma, "carol");
    let mut total = 0;
    let mut smtp_dups = 0;
    for (i, (prefix, box_, name)) in [
        ("mx", &alice, "alice"),
        ("local", &alice, "alice"),
        ("mesh", &bob, "bob"),
        ("out", &carol, "carol"),
    ]
    .into_iter()
    .enumerate()
    {
        let acks = &acked[i];
        total += acks.len();
        for s in acks {
            assert!(
                box_.get(s).copied().unwrap_or(0) >= 1,
                "acknowledged {s} never reached {name}'s mailbox"
            );
        }
        let mine: Vec<(&String, &usize)> = box_
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{prefix}-")))
            .collect();
        let dups: Vec<&String> = mine
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| *k)
            .collect();
        println!(
            "{prefix}: {} acknowledged, {} stored in {name}'s mailbox ({} without an ack), duplicated: {dups:?}",
            acks.len(),
            mine.len(),
            mine.len() - acks.len()
        );
        if prefix == "out" {
            // Plain SMTP to a relay cannot be exactly-once: a kill between the
            // relay's 250 and our removal of the entry sends it again (as with
            // any MTA). The queue sends one message at a time, so each kill
            // can cause at most one such duplicate.
            smtp_dups = dups.len();
            assert!(
                mine.iter().all(|(_, n)| **n <= 2) && smtp_dups <= rounds,
                "{smtp_dups} duplicates for {rounds} kills: {dups:?}"
            );
        } else {
            assert!(
                dups.is_empty(),
                "stored twice in {name}'s mailbox: {dups:?}"
            );
        }
    }
    println!(
        "{rounds} kill points, {total} acknowledged messages: none lost; none duplicated \
         (mesh, local, MX); {smtp_dups} re-sent to the SMTP relay after a kill"
    );
}

#[test]
fn crash_kill_9_under_mixed_traffic_loses_and_duplicates_nothing() {
    crash_run(3, 0);
}

#[test]
#[ignore = "stress: 24 kill points, a few minutes"]
fn stress_kill_9_at_24_random_moments_under_mixed_traffic() {
    crash_run(24, 4);
}

/// A SIGTERM that arrives as soon as the daemon has printed its addresses
/// (systemd stopping a unit that just started) must be a clean shutdown.
/// (Failed before `bin/caliopen.rs` installed its handlers before starting
/// the daemon: an early SIGTERM then killed the process by signal 15.)
#[test]
fn sigterm_right_after_start_is_a_clean_shutdown() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut failures = Vec::new();
    let mut a = Instance::init(tmp.path(), "alpha", "alpha.test", None, None, None);
    for round in 0..20 {
        a.start();
        let mut c = a.child.take().expect("child");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill");
        let st = c.wait().expect("wait");
        if !st.success() {
            failures.push(format!("round {round}: {st}"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Found by the stress run: `caliopen mail list` through the admin API
/// fails once the listing exceeds tonic's default 4 MiB message size
/// ("decoded message length too large"), i.e. for a mailbox of a few
/// thousand messages, while the daemon runs (the command-line client now
/// accepts answers up to 1 GiB).
#[test]
fn mail_list_of_a_large_mailbox_through_the_admin_api() {
    use caliopen_instance::mail::{Delivery, MessageMeta, Transport, Via};
    use caliopen_instance::store::Store;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut a = Instance::init(tmp.path(), "alpha", "alpha.test", None, None, None);
    a.add_user("alice", "alice password");
    let n = 3000;
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = Store::open(&a.data.join("db")).expect("store");
            for i in 0..n {
                let subject = format!("{i} {}", "x".repeat(1000));
                let raw = format!("Subject: {subject}\r\n\r\nbody\r\n");
                let meta = MessageMeta {
                    id: 0,
                    from: "x@ext.test".into(),
                    to: vec!["alice@alpha.test".into()],
                    subject,
                    received_at: 0,
                    via: Via::Smtp,
                    transport: Transport::default(),
                    size: raw.len(),
                    ..Default::default()
                };
                store
                    .deliver_local(
                        &meta,
                        &[Delivery::inbox("alice", vec!["alice@alpha.test".into()])],
                        raw.as_bytes(),
                    )
                    .await
                    .expect("deliver");
            }
        });
    }
    assert_eq!(a.list("alice").len(), n, "offline listing");
    a.start();
    let (ok, out, err) = common::run_caliopen(
        &[
            "mail",
            "list",
            "--config",
            a.c(),
            "--user",
            "alice",
            "--json",
        ],
        None,
    );
    assert!(ok, "listing through the running daemon: {err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(n)
    );
    a.stop();
}

fn bearer<T>(msg: T, t: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {t}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// What the model client saw acknowledged.
#[derive(Debug, Default)]
struct ModelAcks {
    flagged: std::collections::BTreeSet<String>,
    moved: std::collections::BTreeSet<String>,
    expunged: std::collections::BTreeSet<String>,
    expunged_subjects: std::collections::BTreeSet<String>,
    /// Messages an expunge was sent for (acknowledged or not: a kill can
    /// take the reply of an expunge that was done).
    expunge_sent: std::collections::BTreeSet<String>,
}

/// One client session on the client API until it fails (the daemon was
/// killed): flags each inbox message, moves it to Archive, and expunges
/// every third from there; records each acknowledged change.
async fn model_client(inst_api: SocketAddr, tls_pem: Vec<u8>, acks: Arc<Mutex<ModelAcks>>) {
    use caliopen_proto::pb::client as pb;
    use caliopen_proto::pb::client::client_client::ClientClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let Ok(ep) = Endpoint::from_shared(format!("https://{inst_api}")) else {
        return;
    };
    let Ok(ep) = ep.tls_config(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(tls_pem))
            .domain_name("alpha.test"),
    ) else {
        return;
    };
    let Ok(ch) = ep.timeout(Duration::from_secs(5)).connect().await else {
        return;
    };
    let mut c = ClientClient::new(ch);
    let Ok(t) = c
        .login(pb::LoginRequest {
            address: "alice@alpha.test".into(),
            password: "alice password".into(),
        })
        .await
    else {
        return;
    };
    let t = t.into_inner().token;
    let archive = 6;
    loop {
        let Ok(page) = c
            .list_messages(bearer(
                pb::ListMessagesRequest {
                    limit: 20,
                    ..Default::default()
                },
                &t,
            ))
            .await
        else {
            return;
        };
        for m in page.into_inner().messages {
            let kw = pb::SetKeywordsRequest {
                ids: vec![m.id.clone()],
                add: vec!["$flagged".into(), "$seen".into()],
                ..Default::default()
            };
            if c.set_keywords(bearer(kw, &t)).await.is_err() {
                return;
            }
            acks.lock().expect("lock").flagged.insert(m.id.clone());
            let mv = pb::MoveMessagesRequest {
                ids: vec![m.id.clone()],
                from: 1,
                to: archive,
            };
            if c.move_messages(bearer(mv, &t)).await.is_err() {
                return;
            }
            acks.lock().expect("lock").moved.insert(m.id.clone());
            if u64::from_str_radix(&m.id, 16).unwrap_or(0) % 3 == 0 {
                acks.lock()
                    .expect("lock")
                    .expunge_sent
                    .insert(m.subject.clone());
                let rm = pb::RemoveMessagesRequest {
                    ids: vec![m.id.clone()],
                    from: archive,
                };
                if c.remove_messages(bearer(rm, &t)).await.is_err() {
                    return;
                }
                let mut a = acks.lock().expect("lock");
                a.expunged.insert(m.id.clone());
                a.expunged_subjects.insert(m.subject.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// kill -9 while mail arrives and a client flags, moves and expunges it:
/// every acknowledged delivery is in the account once unless acknowledged
/// expunged; every acknowledged flag and move holds; quota use and mailbox
/// counts equal what the mailboxes hold.
#[test]
fn crash_kill_9_during_flag_changes_moves_and_expunges() {
    let seed = std::env::var("CALIOPEN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64)
        | 1;
    println!("kill moments from seed {seed} (CALIOPEN_CRASH_SEED={seed} replays them)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let a_addrs = (free_tcp(), free_tcp());
    let mut alpha = Instance::init(tmp.path(), "alpha", "alpha.test", None, None, Some(a_addrs));
    alpha.set("api", "listen = \"127.0.0.1:0\"");
    alpha.add_user("alice", "alice password");
    alpha.start();
    let stop = tmp.path().join("stop");
    let tls = alpha.data.join("tls.pem");
    let pem = std::fs::read(&tls).expect("tls.pem");
    let mx = Client::start(
        "mx",
        a_addrs.0.port(),
        &tls,
        "x@ext.test",
        "",
        "alice@alpha.test",
        "mx",
        &stop,
    );
    let acks = Arc::new(Mutex::new(ModelAcks::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for round in 0..4 {
        let api = alpha.bound.and_then(|b| b.api).expect("api");
        let task = rt.spawn(model_client(api, pem.clone(), acks.clone()));
        let t0 = Instant::now();
        let before = acks.lock().expect("lock").moved.len();
        while acks.lock().expect("lock").moved.len() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "round {round}: no move acknowledged; log:\n{}",
                alpha.last_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 800)));
        alpha.kill9();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        });
        let a = acks.lock().expect("lock");
        println!(
            "round {round}: kill -9 after {:?}; acknowledged: {} delivered, {} flagged, {} moved, {} expunged",
            t0.elapsed(),
            mx.count(),
            a.flagged.len(),
            a.moved.len(),
            a.expunged.len()
        );
        drop(a);
        alpha.start();
    }
    std::fs::write(&stop, b"").expect("stop");
    let delivered = mx.finish();
    alpha.stop();

    let list = |mailbox: &str| -> Vec<serde_json::Value> {
        let out = common::caliopen_ok(
            &[
                "mail",
                "list",
                "--config",
                alpha.c(),
                "--user",
                "alice",
                "--mailbox",
                mailbox,
                "--json",
            ],
            None,
        );
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let inbox = list("inbox");
    let archive = list("archive");
    let acks = acks.lock().expect("lock");
    let mut by_subject: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids_seen = std::collections::BTreeSet::new();
    for m in inbox.iter().chain(&archive) {
        *by_subject
            .entry(m["subject"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
        ids_seen.insert(m["id"].as_str().unwrap_or("").to_owned());
    }
    for (id, m) in inbox.iter().map(|m| (m["id"].as_str().unwrap_or(""), m)) {
        assert!(
            !acks.moved.contains(id),
            "acknowledged move of {id} lost: {m}"
        );
    }
    for m in &archive {
        let id = m["id"].as_str().unwrap_or("");
        assert!(
            !acks.expunged.contains(id),
            "acknowledged expunge of {id} lost"
        );
        if acks.flagged.contains(id) {
            let kw = m["keywords"].as_array().cloned().unwrap_or_default();
            assert!(
                kw.iter().any(|k| k == "$flagged"),
                "acknowledged flag of {id} lost: {m}"
            );
        }
    }
    let dups: Vec<&String> = by_subject
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| s)
        .collect();
    assert!(dups.is_empty(), "stored twice: {dups:?}");
    let present = inbox.len() + archive.len();
    // A message gone was taken by an expunge, acknowledged or (at most one
    // per kill) done but not acknowledged before the kill.
    let missing: Vec<&String> = delivered
        .iter()
        .filter(|s| !by_subject.contains_key(*s) && !acks.expunged_subjects.contains(*s))
        .collect();
    // Every acknowledged delivery is there, unless an expunge was sent for
    // it: acknowledged, or (at most one per kill) done with its reply lost.
    let lost: Vec<&&String> = missing
        .iter()
        .filter(|s| !acks.expunge_sent.contains(**s))
        .collect();
    assert!(lost.is_empty(), "acknowledged deliveries lost: {lost:?}");
    assert!(
        missing.len() <= 4,
        "more expunges done without their reply than kills: {missing:?}"
    );
    // Quota use and mailbox counts are exact after the kills.
    let users: serde_json::Value = serde_json::from_str(&common::caliopen_ok(
        &["user", "list", "--config", alpha.c(), "--json"],
        None,
    ))
    .expect("json");
    let alice = &users.as_array().expect("array")[0];
    let bytes: u64 = inbox
        .iter()
        .chain(&archive)
        .map(|m| m["size"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        alice["messages"], present as u64,
        "quota messages after kills"
    );
    assert_eq!(
        alice["quota"]["used_bytes"], bytes,
        "quota bytes after kills"
    );
    println!(
        "4 kill points: {} delivered, {present} present, {} expunged (acknowledged), {} moves and {} flags held",
        delivered.len(),
        acks.expunged.len(),
        acks.moved.len(),
        acks.flagged.len()
    );
}

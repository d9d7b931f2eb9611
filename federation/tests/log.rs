//! The member side of the membership log (issue 18): checkpoints verified
//! and kept, rollbacks, bad signatures and bad proofs refused, consistency
//! proofs from a real association's tiles over HTTPS, and a hostile
//! association that shows two members different logs caught through the
//! mesh by both, with a proof that verifies; a certificate the CA key
//! signed outside the log members see is refused on the mesh.

mod common;
use caliopen_ca::{Authority, BoundService, Settings, SignRequest};
use caliopen_federation::BoxFuture;
use caliopen_federation::{
    AssociationLink, HttpsTiles, IdentitySlot, LogError, LogKey, LogMonitor, MeshConfig, MeshNode,
    Offer, TrustError, TrustStore,
};
use caliopen_federation::{Leaf, LogChange, ProofSource};
use caliopen_tlog::{
    consistency_proof, root, sign_timestamped, Checkpoint, Hash, MemoryTree, Signer,
};
use common::{csr, Refusing};
use rcgen::{CertificateParams, KeyPair};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ORIGIN: &str = "caliopen.invalid/test-log";
const WAIT: Duration = Duration::from_secs(20);

/// A log in memory, signed by a test key: what an association publishes.
struct TestLog {
    signer: Signer,
    tree: Arc<Mutex<MemoryTree>>,
}

impl TestLog {
    fn new(seed: u8) -> Self {
        Self {
            signer: Signer::from_seed(ORIGIN, &[seed; 32]).expect("signer"),
            tree: Arc::default(),
        }
    }
    fn key(&self) -> LogKey {
        LogKey::parse(&self.signer.verifier().to_string()).expect("key")
    }
    fn grow_to(&self, size: u64, salt: u8) {
        let mut t = self.tree.lock().expect("lock");
        while t.size() < size {
            let mut e = t.size().to_be_bytes().to_vec();
            e.push(salt);
            t.push_entry(&e);
        }
    }
    /// The published checkpoint of the first `size` leaves, dated `ts`.
    fn note(&self, size: u64, ts: u64) -> String {
        let root = self.tree.lock().expect("lock").root_at(size);
        self.note_with_root(size, root, ts)
    }
    fn note_with_root(&self, size: u64, root: Hash, ts: u64) -> String {
        let c = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root,
            extensions: vec![],
        };
        sign_timestamped(&c, &self.signer, ts).expect("sign")
    }
    fn proofs(&self) -> Arc<TreeProofs> {
        Arc::new(TreeProofs {
            tree: self.tree.clone(),
            lie: false,
            calls: Default::default(),
        })
    }
}

/// Proofs from a tree in memory; `lie`: a path that is not the tree's.
#[derive(Debug)]
struct TreeProofs {
    tree: Arc<Mutex<MemoryTree>>,
    lie: bool,
    calls: std::sync::atomic::AtomicU64,
}

impl ProofSource for TreeProofs {
    fn prefix_path(&self, old: u64, new: u64) -> BoxFuture<Result<Vec<Hash>, String>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let t = self.tree.lock().expect("lock");
        let mut p = consistency_proof(&*t, old, new).map_err(|e| e.to_string());
        if let Ok(p) = &mut p {
            if old.is_power_of_two() {
                p.insert(0, root(&*t, old).expect("root"));
            }
            if self.lie {
                p[0][0] ^= 0x80;
            }
        }
        Box::pin(async move { p })
    }
    fn leaf(&self, _: u64, _: u64) -> BoxFuture<Result<Leaf, String>> {
        Box::pin(async { Err("this test log keeps no entries".to_owned()) })
    }
    fn checkpoint(&self) -> BoxFuture<Result<String, String>> {
        Box::pin(async { Err("no checkpoint here".to_owned()) })
    }
}

/// A proof source that never answers.
#[derive(Debug)]
struct Down;

impl ProofSource for Down {
    fn prefix_path(&self, _: u64, _: u64) -> BoxFuture<Result<Vec<Hash>, String>> {
        Box::pin(async { Err("association unreachable".to_owned()) })
    }
    fn leaf(&self, _: u64, _: u64) -> BoxFuture<Result<Leaf, String>> {
        Box::pin(async { Err("association unreachable".to_owned()) })
    }
    fn checkpoint(&self) -> BoxFuture<Result<String, String>> {
        Box::pin(async { Err("association unreachable".to_owned()) })
    }
}

fn root_pem() -> String {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).expect("self-signed").pem()
}

#[tokio::test]
async fn a_pinned_witness_quorum_holds_whatever_the_directory_says() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = TestLog::new(4);
    log.grow_to(20, 0);
    // No directory (so no witnesses listed, quorum 0), but the member pins
    // one cosignature: no grown tree is taken, heartbeats of none either.
    let m = LogMonitor::open(&tmp.path().join("log"), log.key(), log.proofs(), None).expect("open");
    m.set_min_witness_quorum(1);
    let r = m.offer(&log.note(3, 100), None).await;
    assert!(
        matches!(r, Err(LogError::Quorum { have: 0, need: 1 })),
        "{r:?}"
    );
    assert!(m.held().is_none());
    assert_eq!(m.stats().refused_quorum.load(Ordering::Relaxed), 1);
    // Unpinned again: the same checkpoint is taken.
    m.set_min_witness_quorum(0);
    assert_eq!(
        m.offer(&log.note(3, 100), None).await,
        Ok(Offer::Taken { grew: true })
    );
}

#[tokio::test]
async fn checkpoints_are_verified_kept_and_refused_when_they_roll_back_or_are_badly_signed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("log");
    let log = TestLog::new(1);
    log.grow_to(20, 0);
    let proofs = log.proofs();
    let m = LogMonitor::open(&dir, log.key(), proofs.clone(), None).expect("open");
    assert!(m.held().is_none());

    // The first is taken on the key's signature.
    assert_eq!(
        m.offer(&log.note(3, 100), None).await,
        Ok(Offer::Taken { grew: true })
    );
    // A heartbeat (same head, later) refreshes; an older one changes nothing.
    assert_eq!(
        m.offer(&log.note(3, 160), None).await,
        Ok(Offer::Taken { grew: false })
    );
    assert_eq!(m.offer(&log.note(3, 100), None).await, Ok(Offer::Unchanged));
    assert_eq!(m.held().expect("held").timestamp, 160);
    // A larger tree is taken with a consistency proof from the held one.
    assert_eq!(
        m.offer(&log.note(9, 170), None).await,
        Ok(Offer::Taken { grew: true })
    );
    assert_eq!(m.head().expect("head").0, 9);

    // Rollback: the association offers a smaller tree, validly signed.
    assert_eq!(
        m.offer(&log.note(5, 200), None).await,
        Err(LogError::Rollback {
            offered: 5,
            held: 9
        })
    );
    assert_eq!(m.stats().refused_rollback.load(Ordering::Relaxed), 1);
    // From a peer, an older head consistent with ours is no news; replayed,
    // it costs no second proof, nor does a head held before.
    assert_eq!(
        m.offer(&log.note(5, 200), Some("bravo")).await,
        Ok(Offer::Unchanged)
    );
    let calls = proofs.calls.load(Ordering::Relaxed);
    assert_eq!(
        m.offer(&log.note(5, 201), Some("charlie")).await,
        Ok(Offer::Unchanged)
    );
    assert_eq!(
        m.offer(&log.note(3, 100), Some("charlie")).await,
        Ok(Offer::Unchanged)
    );
    assert_eq!(proofs.calls.load(Ordering::Relaxed), calls);

    // Bad signatures: another key under the same name; a changed text; no
    // timestamp by the log key; garbage.
    let impostor = TestLog::new(2);
    impostor.grow_to(20, 0);
    let forged_size = log.note(12, 300).replacen("\n12\n", "\n13\n", 1);
    let undated = Checkpoint {
        origin: ORIGIN.into(),
        size: 12,
        root: log.tree.lock().expect("lock").root_at(12),
        extensions: vec![],
    }
    .sign(&log.signer)
    .expect("sign");
    for bad in [
        impostor.note(12, 300),
        forged_size,
        undated,
        "not a note\n".to_owned(),
    ] {
        let r = m.offer(&bad, None).await;
        assert!(matches!(r, Err(LogError::BadCheckpoint(_))), "{r:?}");
    }
    assert_eq!(m.stats().refused_signature.load(Ordering::Relaxed), 4);
    assert_eq!(m.head().expect("head").0, 9);

    // Durable: a reopened view holds the same checkpoint.
    let held = m.held().expect("held");
    drop(m);
    let m = LogMonitor::open(&dir, log.key(), log.proofs(), None).expect("reopen");
    assert_eq!(m.held().expect("held").note, held.note);
    // With another pinned key, the state is refused rather than dropped.
    assert!(matches!(
        LogMonitor::open(&dir, impostor.key(), log.proofs(), None),
        Err(LogError::State(_))
    ));
}

#[tokio::test]
async fn a_bad_or_missing_consistency_proof_is_refused_and_not_taken_for_a_split() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = TestLog::new(3);
    log.grow_to(40, 0);
    let lying = Arc::new(TreeProofs {
        tree: log.tree.clone(),
        lie: true,
        calls: Default::default(),
    });
    let m = LogMonitor::open(&tmp.path().join("a"), log.key(), lying, None).expect("open");
    m.offer(&log.note(7, 10), None).await.expect("first");
    // A path that is not the tree's proves nothing: refused, no split view.
    let r = m.offer(&log.note(21, 20), None).await;
    assert!(
        matches!(
            r,
            Err(LogError::BadProof {
                old: 7,
                new: 21,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(m.stats().refused_proof.load(Ordering::Relaxed), 1);
    assert_eq!(m.head().expect("head").0, 7);
    assert!(m.split_view().is_none());

    // No proof at all: undecided, counted, not taken.
    let m = LogMonitor::open(&tmp.path().join("b"), log.key(), Arc::new(Down), None).expect("open");
    m.offer(&log.note(7, 10), None).await.expect("first");
    let r = m.offer(&log.note(21, 20), None).await;
    assert!(matches!(r, Err(LogError::Unverifiable { .. })), "{r:?}");
    assert_eq!(m.stats().unverifiable.load(Ordering::Relaxed), 1);
    assert_eq!(m.head().expect("head").0, 7);
    assert!(m.split_view().is_none());
}

#[tokio::test]
async fn a_split_view_is_kept_as_proof_holds_directories_and_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("log");
    let trust = Arc::new(TrustStore::new(&root_pem(), vec!["1.0".into()]).expect("trust"));
    let log = TestLog::new(4);
    log.grow_to(30, 0);
    // The same key signs a fork: same first 10 leaves, then others.
    let fork = TestLog::new(4);
    fork.grow_to(10, 0);
    fork.grow_to(30, 1);
    let m = LogMonitor::open(&dir, log.key(), log.proofs(), Some(trust.clone())).expect("open");
    let mut changes = m.subscribe();
    m.offer(&log.note(20, 10), None).await.expect("first");

    // Same size, another root.
    let r = m.offer(&fork.note(20, 11), Some("bravo")).await;
    let Ok(Offer::SplitView(sv)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(sv.first, log.note(20, 10));
    assert_eq!(sv.second, fork.note(20, 11));
    assert_eq!(sv.source.as_deref(), Some("bravo"));
    sv.verify(log.key().verifier()).expect("the proof verifies");
    assert_eq!(m.stats().split_views.load(Ordering::Relaxed), 1);
    assert!(trust.directories_held().is_some());
    let c: LogChange = changes.borrow_and_update().clone();
    assert!(c.split_view);

    // A second contradiction changes nothing: the first proof stands.
    let _ = m.offer(&fork.note(25, 12), Some("charlie")).await;
    assert_eq!(m.split_view().expect("held"), *sv);
    assert_eq!(m.stats().split_views.load(Ordering::Relaxed), 1);

    // Kept on disk; on restart directories are held again at once.
    drop(m);
    trust.release_directories();
    let m = LogMonitor::open(&dir, log.key(), log.proofs(), Some(trust.clone())).expect("reopen");
    assert_eq!(m.split_view().expect("kept"), *sv);
    assert!(trust.directories_held().is_some());
    // A proof that does not hold is refused (the notes swapped for one
    // consistent pair).
    let mut bogus = (*sv).clone();
    bogus.second = log.note(20, 12);
    assert!(m.offer_split_view(bogus).await.is_err());

    // The operator clears it: directories resume, the proof is set aside.
    assert!(m.clear_split_view(false).await.expect("clear"));
    assert!(m.split_view().is_none());
    assert!(trust.directories_held().is_none());
    assert!(std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("split-view.")));
}

#[tokio::test]
async fn a_peer_behind_on_a_fork_is_caught_with_a_path_from_our_tree() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = TestLog::new(5);
    log.grow_to(300, 0);
    let fork = TestLog::new(5);
    fork.grow_to(100, 0);
    fork.grow_to(300, 1);
    let m = LogMonitor::open(&tmp.path().join("a"), log.key(), log.proofs(), None).expect("open");
    m.offer(&log.note(290, 1), None).await.expect("first");
    // A peer holds the fork's head of 257 leaves (smaller than ours).
    let r = m.offer(&fork.note(257, 2), Some("bravo")).await;
    let Ok(Offer::SplitView(sv)) = r else {
        panic!("{r:?}")
    };
    assert!(!sv.proof.is_empty());
    let (small, large) = sv.verify(log.key().verifier()).expect("verifies");
    assert_eq!((small.size, large.size), (257, 290));
    // Someone else, holding nothing, checks it with the key alone.
    let other =
        LogMonitor::open(&tmp.path().join("b"), log.key(), Arc::new(Down), None).expect("open");
    assert_eq!(other.offer_split_view((*sv).clone()).await, Ok(true));
    assert_eq!(other.stats().split_views.load(Ordering::Relaxed), 1);
    // A tampered path does not.
    let mut bad = (*sv).clone();
    bad.proof.pop();
    assert!(bad.verify(log.key().verifier()).is_err());
}

// ---- against real association services over HTTPS and a real mesh ----

async fn serve(ca: Arc<Authority>) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let bound = BoundService::bind(ca, "127.0.0.1:0".parse().expect("addr"), &[])
        .await
        .expect("bind");
    let url = format!("https://{}", bound.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        bound
            .run(async move { s.cancelled().await })
            .await
            .expect("service");
    });
    (url, stop, task)
}

fn log_key_of(dir: &Path) -> LogKey {
    LogKey::parse(&std::fs::read_to_string(dir.join("log.pub")).expect("log.pub")).expect("key")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_follows_a_real_association_log_with_proofs_from_its_tiles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let adir = tmp.path().join("assoc");
    let ca = Arc::new(Authority::init(&adir, "Log Test", 3650, Settings::default()).expect("init"));
    for i in 0..5 {
        ca.set_baseline(&format!("0.0.{i}")).expect("baseline");
    }
    let (url, stop, service) = serve(ca.clone()).await;
    let trust = Arc::new(TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let mut link = AssociationLink::new(url, ca.root_pem());
    link.poll_interval = Duration::from_secs(3600);
    let monitor = LogMonitor::open(
        &tmp.path().join("member-log"),
        log_key_of(&adir),
        Arc::new(HttpsTiles::new(&link)),
        Some(trust.clone()),
    )
    .expect("monitor");
    let link = link.with_log(monitor.clone());
    let token = CancellationToken::new();
    let follower = tokio::spawn(link.follow(trust.clone(), token.clone()));
    until("the first checkpoint", || monitor.held().is_some()).await;
    let first = monitor.head().expect("head").0;
    assert!(first >= 5, "{first}");

    // Enough changes to cross a full tile: each new head is checked with a
    // proof from tiles fetched over HTTPS.
    let ca2 = ca.clone();
    tokio::task::spawn_blocking(move || {
        for i in 5..300 {
            ca2.set_baseline(&format!("0.1.{i}")).expect("baseline");
        }
    })
    .await
    .expect("join");
    let end = caliopen_tlog::Checkpoint::parse_text(
        caliopen_tlog::Note::parse(ca.log_checkpoint().expect("cp").as_bytes())
            .expect("note")
            .text(),
    )
    .expect("cp")
    .size;
    until("the last checkpoint", || {
        monitor.head().map(|h| h.0) == Some(end)
    })
    .await;
    let s = monitor.stats();
    assert!(s.grew.load(Ordering::Relaxed) >= 2);
    assert_eq!(s.refused_proof.load(Ordering::Relaxed), 0);
    assert_eq!(s.split_views.load(Ordering::Relaxed), 0);
    assert_eq!(s.refused_rollback.load(Ordering::Relaxed), 0);
    // The poll fallback reads /log/checkpoint over HTTPS.
    let polled = monitor.poll().await.expect("poll");
    assert!(
        matches!(polled, Offer::Unchanged | Offer::Taken { grew: false }),
        "{polled:?}"
    );

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), follower).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), service).await;
}

/// Copies a directory tree (an association's state, to fork it).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

struct Member {
    node: MeshNode,
    trust: Arc<TrustStore>,
}

/// Has `ca` label member `id` (domain `ID.test`, its node's address) and
/// gives the node its certificate.
fn label(ca: &Authority, id: &str, m: &Member, slot: &IdentitySlot) {
    let key = KeyPair::generate().expect("key");
    let issued = ca
        .sign(&SignRequest {
            csr: csr(&key, &format!("{id}.test")),
            member_id: id.into(),
            charter_version: "1.0".into(),
            endpoints: vec![m.node.local_addr().expect("addr").to_string()],
            ..Default::default()
        })
        .expect("sign");
    slot.set_pem(
        &issued.record.certificate_pem,
        &key.serialize_pem(),
        m.trust.provider(),
    )
    .expect("identity");
}

async fn start_member(id: &str, root_pem: &str) -> (Member, Arc<IdentitySlot>) {
    let trust = Arc::new(TrustStore::new(root_pem, vec!["1.0".into()]).expect("trust"));
    let identity = IdentitySlot::new();
    let node = MeshNode::start(
        MeshConfig::new(id),
        "127.0.0.1:0".parse().expect("addr"),
        trust.clone(),
        identity.clone(),
        Arc::new(Refusing),
    )
    .await
    .expect("start");
    (Member { node, trust }, identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_association_showing_two_members_different_logs_is_caught_by_both() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir_a = tmp.path().join("assoc-a");
    let dir_b = tmp.path().join("assoc-b");
    let ca = Authority::init(&dir_a, "Fork", 3650, Settings::default()).expect("init");
    let root_pem = ca.root_pem().to_owned();
    let (alpha, alpha_id) = start_member("alpha", &root_pem).await;
    let (bravo, bravo_id) = start_member("bravo", &root_pem).await;
    for (id, m, slot) in [("alpha", &alpha, &alpha_id), ("bravo", &bravo, &bravo_id)] {
        label(&ca, id, m, slot);
    }
    // The hostile association forks its state: the same CA key and log key
    // behind two services, one shown to alpha, the other to bravo.
    drop(ca);
    copy_dir(&dir_a, &dir_b);
    let ca_a = Arc::new(Authority::open(&dir_a, Settings::default()).expect("open a"));
    let ca_b = Arc::new(Authority::open(&dir_b, Settings::default()).expect("open b"));
    let key_a = log_key_of(&dir_a);
    assert_eq!(key_a, log_key_of(&dir_b));
    // Alpha's view gets one change (a relay labelled in secret), bravo's two.
    let relay = KeyPair::generate().expect("key");
    ca_a.sign(&SignRequest {
        csr: csr(&relay, "relay.test"),
        member_id: "relay".into(),
        charter_version: "1.0".into(),
        ..Default::default()
    })
    .expect("sign relay");
    ca_b.set_baseline("0.0.1").expect("baseline");
    ca_b.set_baseline("0.0.2").expect("baseline");

    let (url_a, stop_a, svc_a) = serve(ca_a.clone()).await;
    let (url_b, stop_b, svc_b) = serve(ca_b.clone()).await;
    let token = CancellationToken::new();
    let mut monitors = Vec::new();
    let mut followers = Vec::new();
    for (m, url, name) in [(&alpha, &url_a, "alpha"), (&bravo, &url_b, "bravo")] {
        let mut link = AssociationLink::new(url.clone(), root_pem.clone());
        link.poll_interval = Duration::from_secs(3600);
        let mon = LogMonitor::open(
            &tmp.path().join(format!("{name}-log")),
            key_a.clone(),
            Arc::new(HttpsTiles::new(&link)),
            Some(m.trust.clone()),
        )
        .expect("monitor");
        assert!(m.node.attach_log(mon.clone()));
        followers.push(tokio::spawn(
            link.with_log(mon.clone())
                .follow(m.trust.clone(), token.clone()),
        ));
        monitors.push(mon);
    }
    let (mon_a, mon_b) = (monitors[0].clone(), monitors[1].clone());
    until("both checkpoints and directories", || {
        mon_a.held().is_some()
            && mon_b.held().is_some()
            && alpha.trust.current().member("bravo").is_some()
            && bravo.trust.current().member("alpha").is_some()
    })
    .await;
    let (size_a, size_b) = (mon_a.head().expect("a").0, mon_b.head().expect("b").0);
    assert_eq!(size_a + 1, size_b);

    // They meet on the mesh: the Hello shows different heads, both push.
    alpha.node.connect("bravo").await.expect("connect");
    until("both to hold a split-view proof", || {
        mon_a.split_view().is_some() && mon_b.split_view().is_some()
    })
    .await;
    for (mon, m) in [(&mon_a, &alpha), (&mon_b, &bravo)] {
        let sv = mon.split_view().expect("proof");
        let (small, large) = sv.verify(key_a.verifier()).expect("the proof verifies");
        assert_eq!((small.size, large.size), (size_a, size_b));
        assert_eq!(mon.stats().split_views.load(Ordering::Relaxed), 1);
        assert!(m.trust.directories_held().is_some());
    }
    // Bravo proved it from its own association's tiles; alpha could not
    // (its association's tree has no such size) and took bravo's proof.
    assert_eq!(
        mon_b.split_view().expect("b").source.as_deref(),
        Some("alpha")
    );
    assert_eq!(
        mon_a.split_view().expect("a").source.as_deref(),
        Some("bravo")
    );

    // Directory updates from the association stop: a new one is refused.
    let serial = alpha.trust.current().directory_serial();
    let ca_a2 = ca_a.clone();
    // (Alpha may hold bravo's fork's directory, gossiped before the split
    // was seen: issue until alpha's association is past it.)
    let (_, bytes) = tokio::task::spawn_blocking(move || loop {
        let (n, bytes) = ca_a2.issue_directory().expect("directory");
        if n > serial {
            break (n, bytes);
        }
    })
    .await
    .expect("join");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(alpha.trust.current().directory_serial(), serial);
    let dir_now = {
        use prost::Message;
        caliopen_proto::pb::directory::SignedDirectory::decode(bytes.as_slice()).expect("directory")
    };
    assert!(matches!(
        alpha.trust.offer_directory(&dir_now, None, 0),
        Err(TrustError::Held(_))
    ));
    // Until the operator clears it.
    assert!(mon_a.clear_split_view(false).await.expect("clear"));
    assert!(alpha
        .trust
        .offer_directory(&dir_now, None, 0)
        .expect("taken"));

    token.cancel();
    for f in followers {
        let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
    }
    alpha.node.shutdown().await;
    bravo.node.shutdown().await;
    stop_a.cancel();
    stop_b.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), svc_a).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), svc_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_issued_outside_the_log_members_see_is_refused_on_the_mesh() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir_a = tmp.path().join("assoc");
    let dir_b = tmp.path().join("assoc-secret");
    let ca = Authority::init(&dir_a, "Secret", 3650, Settings::default()).expect("init");
    let root_pem = ca.root_pem().to_owned();
    let (alpha, alpha_id) = start_member("alpha", &root_pem).await;
    let (bravo, bravo_id) = start_member("bravo", &root_pem).await;
    let (mallory, mallory_id) = start_member("mallory", &root_pem).await;
    label(&ca, "alpha", &alpha, &alpha_id);
    label(&ca, "bravo", &bravo, &bravo_id);
    // Whoever holds the CA key keeps a second copy of the state and labels
    // a relay there: the certificate is real and the directory that lists
    // it is signed by the CA key, but the log members see never has it.
    drop(ca);
    copy_dir(&dir_a, &dir_b);
    let ca_a = Arc::new(Authority::open(&dir_a, Settings::default()).expect("open"));
    let ca_b = Authority::open(&dir_b, Settings::default()).expect("open secret");
    ca_a.set_baseline("0.0.1").expect("baseline"); // the public log moves on
    label(&ca_b, "mallory", &mallory, &mallory_id);

    let (url, stop, svc) = serve(ca_a.clone()).await;
    let mut link = AssociationLink::new(url, root_pem.clone());
    link.poll_interval = Duration::from_secs(3600);
    let mon = LogMonitor::open(
        &tmp.path().join("alpha-log"),
        log_key_of(&dir_a),
        Arc::new(HttpsTiles::new(&link)),
        Some(alpha.trust.clone()),
    )
    .expect("monitor");
    assert!(alpha.node.attach_log(mon.clone()));
    let token = CancellationToken::new();
    // Every member follows the association (CRL, directory); alpha checks
    // the log.
    let mut followers = vec![tokio::spawn(
        link.clone()
            .with_log(mon.clone())
            .follow(alpha.trust.clone(), token.clone()),
    )];
    for m in [&bravo, &mallory] {
        followers.push(tokio::spawn(
            link.clone().follow(m.trust.clone(), token.clone()),
        ));
    }
    until("the checkpoint, CRLs and directories", || {
        mon.held().is_some()
            && [&alpha, &bravo, &mallory]
                .iter()
                .all(|m| m.trust.current().member("alpha").is_some())
    })
    .await;
    // The secret directory reaches every member (gossip, a poisoned
    // mirror…): it is signed by the CA key, so it is taken.
    let serial = alpha.trust.current().directory_serial();
    let secret = loop {
        let (n, bytes) = ca_b.issue_directory().expect("directory");
        if n > serial {
            use prost::Message;
            break caliopen_proto::pb::directory::SignedDirectory::decode(bytes.as_slice())
                .expect("directory");
        }
    };
    for m in [&alpha, &bravo, &mallory] {
        assert!(m.trust.offer_directory(&secret, None, 0).expect("taken"));
    }
    let listed = alpha.trust.current();
    let entry = listed.member("mallory").expect("mallory is listed");
    assert_eq!(entry.cert_log_index.len(), 1);

    // A member in the log is let in: its entry and proof from the tiles.
    bravo
        .node
        .connect("alpha")
        .await
        .expect("bravo is in the log");
    alpha
        .node
        .connect("bravo")
        .await
        .expect("and so alpha dials it");
    assert!(mon.stats().certs_included.load(Ordering::Relaxed) >= 1);
    // The relay is not: the entry the directory names for it is the
    // public log's baseline change.
    // Its own connections are closed …
    assert!(
        mallory.node.connect("alpha").await.is_err(),
        "the relay's connection is closed"
    );
    // … and it is never dialed.
    let err = alpha
        .node
        .connect("mallory")
        .await
        .expect_err("a label outside the log");
    assert!(err.to_string().contains("membership log"), "{err}");
    assert!(
        err.to_string().contains("baseline"),
        "the entry found at its index is named: {err}"
    );
    assert!(mon.stats().certs_not_included.load(Ordering::Relaxed) >= 2);
    assert!(
        alpha
            .node
            .stats()
            .refused_not_logged
            .load(Ordering::Relaxed)
            >= 2
    );
    assert!(!alpha.node.is_connected("mallory"));

    token.cancel();
    for f in followers {
        let _ = tokio::time::timeout(Duration::from_secs(10), f).await;
    }
    for m in [&alpha, &bravo, &mallory] {
        m.node.shutdown().await;
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), svc).await;
}

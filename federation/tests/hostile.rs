//! A hostile but correctly labelled peer: it holds a real certificate from
//! the association, so the TLS policy lets it in, and then it misbehaves.
//! Each attack is refused or rate-limited and counted, and a well-behaved
//! peer keeps being served during the attack (its latency is measured and
//! printed before and during; only success is asserted, never timing).

mod common;

use caliopen_ca::{Authority, Settings, SignRequest};
use caliopen_federation::{request_on, BoxFuture};
use caliopen_federation::{
    HandlerError, IdentitySlot, MeshConfig, MeshError, MeshHandler, MeshNode, PeerIdentity,
    TrustStore,
};
use caliopen_proto::pb::directory::{Directory, SignedDirectory};
use caliopen_proto::pb::mesh::{
    error_reply, recipient_result, request, response, CrlPush, Deliver, DeliverReply,
    DirectoryPush, PrivacyEntry, PrivacyQuery, PrivacyReply, RecipientResult, Request, Response,
};
use prost::Message;
use rcgen::{CertificateParams, KeyPair, SigningKey};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIG: usize = 1 << 20;

/// A durable inbox keyed by txn_id (idempotent), flushed before the ack.
struct Inbox {
    db: sled::Db,
    tree: sled::Tree,
    domain: String,
}

impl Inbox {
    fn new(domain: &str) -> Arc<Self> {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("inbox").expect("tree");
        Arc::new(Self {
            db,
            tree,
            domain: domain.to_owned(),
        })
    }
}

impl MeshHandler for Inbox {
    fn deliver(
        &self,
        _peer: &PeerIdentity,
        d: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>> {
        let results = d
            .rcpt_to
            .iter()
            .map(|r| RecipientResult {
                rcpt: r.clone(),
                status: if r.ends_with(&format!("@{}", self.domain)) {
                    recipient_result::Status::Accepted
                } else {
                    recipient_result::Status::RejectedPermanent
                } as i32,
                detail: String::new(),
            })
            .collect();
        let (tree, db) = (self.tree.clone(), self.db.clone());
        Box::pin(async move {
            let fresh = common::store_once(&tree, &db, &d).await?;
            Ok(DeliverReply {
                txn_id: d.txn_id,
                results,
                duplicate: !fresh,
            })
        })
    }

    fn privacy_query(
        &self,
        _peer: &PeerIdentity,
        _q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        Box::pin(async move {
            Ok(PrivacyReply {
                entries: vec![PrivacyEntry {
                    address_hash: vec![7; 32],
                    level: 60,
                }],
                ttl_seconds: 60,
            })
        })
    }
}

struct Member {
    node: MeshNode,
    trust: Arc<TrustStore>,
    inbox: Arc<Inbox>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn member(ca: &Authority, id: &str, cfg: impl FnOnce(&mut MeshConfig)) -> Member {
    let domain = format!("{id}.test");
    let trust = Arc::new(TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let identity = IdentitySlot::new();
    let inbox = Inbox::new(&domain);
    let mut c = MeshConfig::new(id);
    cfg(&mut c);
    let node = MeshNode::start(
        c,
        "127.0.0.1:0".parse().expect("addr"),
        trust.clone(),
        identity.clone(),
        inbox.clone(),
    )
    .await
    .expect("start");
    let key = KeyPair::generate().expect("key");
    let csr = CertificateParams::new(vec![domain.clone()])
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let issued = ca
        .sign(&SignRequest {
            csr: csr.into_bytes(),
            member_id: id.into(),
            charter_version: "1.0".into(),
            endpoints: vec![node.local_addr().expect("addr").to_string()],
            ..Default::default()
        })
        .expect("sign");
    identity
        .set_pem(
            &issued.record.certificate_pem,
            &key.serialize_pem(),
            trust.provider(),
        )
        .expect("identity");
    Member { node, trust, inbox }
}

fn sync(ca: &Authority, members: &[&Member]) {
    let p = ca.published();
    let dir = SignedDirectory::decode(p.directory.as_slice()).expect("dir");
    for m in members {
        m.trust.offer_crl(&p.crl_der, None).expect("crl");
        m.trust.offer_directory(&dir, None, now()).expect("dir");
    }
}

fn deliver(from: &str, to: &str, n: u32) -> Deliver {
    let mut txn = vec![0u8; 32];
    txn[..4].copy_from_slice(&n.to_be_bytes());
    Deliver {
        txn_id: txn,
        mail_from: from.into(),
        rcpt_to: vec![to.into()],
        message: format!("Subject: {n}\r\n\r\nhello\r\n").into_bytes(),
        accepted_at: now(),
    }
}

fn req(body: request::Body) -> Request {
    Request { body: Some(body) }
}

fn push_refused(resp: &Response) -> String {
    match &resp.body {
        Some(response::Body::Push(p)) => {
            assert!(!p.accepted, "push accepted: {p:?}");
            p.detail.clone()
        }
        other => panic!("expected a push reply, got {other:?}"),
    }
}

/// The good peer's requests: alternately a privacy query and a delivery.
/// Every one must succeed; returns the latencies.
async fn good_traffic(good: &MeshNode, n: u32, base: u32, pause: Duration) -> Vec<Duration> {
    let mut lat = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        if i % 2 == 0 {
            good.privacy_query(
                "beta",
                PrivacyQuery {
                    hash_prefix: vec![0xab],
                    prefix_bits: 8,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("good peer's query {i} failed: {e}"));
        } else {
            let r = good
                .deliver(
                    "beta",
                    deliver("carol@gamma.test", "bob@beta.test", base + i),
                )
                .await
                .unwrap_or_else(|e| panic!("good peer's delivery {i} failed: {e}"));
            assert!(!r.duplicate);
        }
        lat.push(t0.elapsed());
        tokio::time::sleep(pause).await;
    }
    lat
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    format!(
        "n={} p50={:?} p90={:?} max={:?}",
        v.len(),
        p(0.5),
        p(0.9),
        v[v.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_labelled_peer_is_refused_and_counted_while_others_are_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("assoc"),
        "Hostile Test",
        3650,
        Settings::default(),
    )
    .expect("init");
    let beta = member(&ca, "beta", |c| {
        c.max_frame = 64 * 1024;
        c.request_timeout = Duration::from_secs(2);
        c.rate_per_second = 200.0;
        c.rate_burst = 400.0;
    })
    .await;
    let mallory = member(&ca, "mallory", |_| {}).await;
    let gamma = member(&ca, "gamma", |_| {}).await;
    // The trust data as it was before the association moved on: a stale
    // CRL and directory for the replay below.
    sync(&ca, &[&beta, &mallory, &gamma]);
    let old = ca.published();
    let old_dir = SignedDirectory::decode(old.directory.as_slice()).expect("dir");
    ca.issue_crl().expect("crl");
    ca.issue_directory().expect("directory");
    sync(&ca, &[&beta, &mallory, &gamma]);
    let stats = beta.node.stats();

    let before = good_traffic(&gamma.node, 40, 0, Duration::from_millis(5)).await;
    let conn = mallory
        .node
        .connect("beta")
        .await
        .expect("mallory is a member");

    // 1. Deliveries with a sender domain that is not mallory's.
    for (i, from) in [
        "ceo@beta.test",
        "boss@gamma.test",
        "x@elsewhere.test",
        "no-at-sign",
    ]
    .iter()
    .enumerate()
    {
        let r = request_on(
            &conn,
            &req(request::Body::Deliver(deliver(
                from,
                "bob@beta.test",
                1000 + i as u32,
            ))),
            BIG,
        )
        .await
        .expect("answer");
        assert!(
            matches!(&r.body, Some(response::Body::Error(e)) if e.code == error_reply::Code::Refused as i32),
            "{from}: {r:?}"
        );
    }
    assert_eq!(stats.sender_refused.load(Ordering::Relaxed), 4);

    // 2. The same Deliver replayed: stored once, later copies flagged duplicate.
    let stored_before = beta.inbox.tree.len();
    let mut dups = 0;
    for _ in 0..20 {
        let r = request_on(
            &conn,
            &req(request::Body::Deliver(deliver(
                "m@mallory.test",
                "bob@beta.test",
                2000,
            ))),
            BIG,
        )
        .await
        .expect("answer");
        match r.body {
            Some(response::Body::Deliver(d)) => dups += usize::from(d.duplicate),
            other => panic!("replay: {other:?}"),
        }
    }
    assert_eq!(dups, 19, "a replayed Deliver was not recognised");
    assert_eq!(beta.inbox.tree.len(), stored_before + 1);

    // 3. Stale trust data: the older CRL and directory.
    let held = (
        beta.trust.current().crl_number(),
        beta.trust.current().directory_serial(),
    );
    let d = push_refused(
        &request_on(
            &conn,
            &req(request::Body::CrlPush(CrlPush {
                crl_der: old.crl_der.as_ref().clone(),
                ..Default::default()
            })),
            BIG,
        )
        .await
        .expect("answer"),
    );
    println!("stale CRL: {d}");
    let d = push_refused(
        &request_on(
            &conn,
            &req(request::Body::DirectoryPush(DirectoryPush {
                directory: Some(old_dir.clone()),
            })),
            BIG,
        )
        .await
        .expect("answer"),
    );
    println!("stale directory: {d}");
    // A directory correctly signed by the association but past valid_until,
    // with a serial above the one held.
    let mut expired = Directory::decode(old_dir.directory.as_slice()).expect("directory");
    expired.serial = held.1 + 100;
    expired.valid_until = now() - 3600;
    let bytes = expired.encode_to_vec();
    let expired_signed = SignedDirectory {
        signature: caliopen_ca::internal::root_key(&ca)
            .sign(&bytes)
            .expect("sign"),
        directory: bytes,
        ..old_dir.clone()
    };
    let d = push_refused(
        &request_on(
            &conn,
            &req(request::Body::DirectoryPush(DirectoryPush {
                directory: Some(expired_signed),
            })),
            BIG,
        )
        .await
        .expect("answer"),
    );
    println!("expired directory: {d}");

    // 4. Forged signatures: a directory that drops beta and lists mallory
    //    for every domain, with a flipped signature byte, and one signed by
    //    mallory's own key; a CRL revoking gamma signed by another CA; a
    //    genuine CRL with a flipped signature byte.
    let mut forged = Directory::decode(old_dir.directory.as_slice()).expect("directory");
    forged.serial = held.1 + 200;
    forged.members.retain(|m| m.member_id == "mallory");
    let bytes = forged.encode_to_vec();
    let mut sig = caliopen_ca::internal::root_key(&ca)
        .sign(&bytes)
        .expect("sign");
    let last = sig.len() - 3;
    sig[last] ^= 0x55;
    let other_key = KeyPair::generate().expect("key");
    for signature in [sig, other_key.sign(&bytes).expect("sign")] {
        let d = push_refused(
            &request_on(
                &conn,
                &req(request::Body::DirectoryPush(DirectoryPush {
                    directory: Some(SignedDirectory {
                        directory: bytes.clone(),
                        signature,
                        ..old_dir.clone()
                    }),
                })),
                BIG,
            )
            .await
            .expect("answer"),
        );
        println!("forged directory: {d}");
    }
    let other_tmp = tempfile::tempdir().expect("tmp");
    let other = Authority::init(
        &other_tmp.path().join("o"),
        "Hostile Test",
        3650,
        Settings::default(),
    )
    .expect("other CA");
    for _ in 0..5 {
        other.issue_crl().expect("crl");
    }
    let mut flipped = ca.published().crl_der.as_ref().clone();
    let n = flipped.len() - 5;
    flipped[n] ^= 0x55;
    for crl in [
        other.published().crl_der.as_ref().clone(),
        flipped,
        vec![0x30, 0x03, 1, 2, 3],
    ] {
        let d = push_refused(
            &request_on(
                &conn,
                &req(request::Body::CrlPush(CrlPush {
                    crl_der: crl,
                    ..Default::default()
                })),
                BIG,
            )
            .await
            .expect("answer"),
        );
        println!("forged CRL: {d}");
    }
    assert_eq!(
        (
            beta.trust.current().crl_number(),
            beta.trust.current().directory_serial()
        ),
        held,
        "a stale or forged push was taken"
    );
    assert_eq!(stats.pushes_refused.load(Ordering::Relaxed), 8);

    // 5. Volume attacks, all at once, while the good peer keeps working:
    //    oversize frames, endless streams (a frame that never ends), and a
    //    flood of tiny requests.
    let refused0 = stats.frames_refused.load(Ordering::Relaxed);
    let mut attacks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let c = conn.clone();
        attacks.spawn(async move {
            let Ok((mut s, mut r)) = c.open_bi().await else {
                return "oversize: no stream";
            };
            let mut frame = ((300 * 1024) as u32).to_be_bytes().to_vec();
            frame.extend(std::iter::repeat_n(0x0a, 300 * 1024));
            let _ = s.write_all(&frame).await;
            let _ = s.finish();
            let _ = r.read_to_end(BIG).await;
            "oversize"
        });
    }
    for _ in 0..50 {
        let c = conn.clone();
        attacks.spawn(async move {
            let Ok((mut s, mut r)) = c.open_bi().await else {
                return "endless: no stream";
            };
            // Announce 60 KB, then trickle bytes and never finish; read the
            // answer meanwhile (one read, never cancelled).
            let _ = s.write_all(&(60_000u32).to_be_bytes()).await;
            let writer = async {
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(8) {
                    if s.write_all(&[0x0a]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let reader = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(BIG));
            let ((), read) = tokio::join!(writer, reader);
            let answer = match read {
                Ok(Ok(a)) => a,
                _ => Vec::new(),
            };
            if answer.is_empty() {
                "endless: no answer"
            } else {
                "endless"
            }
        });
    }
    let flood_conn = conn.clone();
    let flood = tokio::spawn(async move {
        let mut limited = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let c = flood_conn.clone();
            tasks.spawn(async move {
                let mut limited = 0u64;
                for _ in 0..250 {
                    if let Ok(Response {
                        body: Some(response::Body::Error(e)),
                    }) = request_on(
                        &c,
                        &req(request::Body::PrivacyQuery(PrivacyQuery {
                            hash_prefix: vec![1],
                            prefix_bits: 8,
                        })),
                        BIG,
                    )
                    .await
                    {
                        if e.code == error_reply::Code::RateLimited as i32 {
                            limited += 1;
                        }
                    }
                }
                limited
            });
        }
        while let Some(l) = tasks.join_next().await {
            limited += l.expect("flood task");
        }
        limited
    });
    let during = good_traffic(&gamma.node, 60, 10_000, Duration::from_millis(50)).await;
    let limited = flood.await.expect("flood");
    let mut outcomes = std::collections::BTreeMap::new();
    while let Some(r) = attacks.join_next().await {
        *outcomes.entry(r.expect("attack")).or_insert(0) += 1;
    }
    println!("attack outcomes: {outcomes:?}; flood: {limited} of 2000 rate-limited");
    println!("good peer before the attack: {}", summary(before));
    println!("good peer during the attack: {}", summary(during));
    let refused = stats.frames_refused.load(Ordering::Relaxed) - refused0;
    println!(
        "beta counted: frames refused {refused}, rate limited {}, senders refused {}, pushes refused {}",
        stats.rate_limited.load(Ordering::Relaxed),
        stats.sender_refused.load(Ordering::Relaxed),
        stats.pushes_refused.load(Ordering::Relaxed)
    );
    assert_eq!(outcomes.get("endless"), Some(&50), "{outcomes:?}");
    assert!(
        refused >= 70,
        "only {refused} oversize/endless frames counted"
    );
    assert!(limited > 0, "the flood was not rate-limited");
    assert_eq!(stats.rate_limited.load(Ordering::Relaxed), limited);
    // Only the good peer's 20 + 30 deliveries and the first replay.
    assert_eq!(beta.inbox.tree.len(), 20 + 30 + 1);
    // Mallory is still a member in good standing for what it does right.
    let ok = mallory
        .node
        .deliver("beta", deliver("m@mallory.test", "bob@beta.test", 3000))
        .await;
    match ok {
        Ok(r) => assert!(!r.duplicate),
        Err(MeshError::Remote {
            code: error_reply::Code::RateLimited,
            ..
        }) => {}
        Err(e) => panic!("mallory's legitimate delivery: {e}"),
    }
}

/// After a partition a member may hold stale trust data while the peer it
/// dials already knows it was revoked. The peer's Hello announces the newer
/// CRL: the dialer must take it (the peer pushes it) and re-check the peer
/// before sending it anything, not deliver mail to a revoked member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_stale_trust_learns_the_revocation_before_delivering() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("assoc"),
        "Stale Trust Test",
        3650,
        Settings::default(),
    )
    .expect("init");
    let mut delivered = 0;
    let rounds = 20;
    for round in 0..rounds {
        let alpha = member(&ca, &format!("alpha{round}"), |_| {}).await;
        let gamma = member(&ca, &format!("gamma{round}"), |_| {}).await;
        sync(&ca, &[&alpha, &gamma]);
        ca.revoke(
            &caliopen_ca::RevokeTarget::Domain(format!("gamma{round}.test")),
            "privilegeWithdrawn",
        )
        .expect("revoke");
        // Only gamma (and the association) know; alpha was cut off.
        sync(&ca, &[&gamma]);
        let before = (
            alpha.trust.current().crl_number(),
            alpha.trust.current().directory_serial(),
        );
        let r = alpha
            .node
            .deliver(
                &format!("gamma{round}"),
                deliver(
                    &format!("a@alpha{round}.test"),
                    &format!("c@gamma{round}.test"),
                    round,
                ),
            )
            .await;
        if r.is_ok() || !gamma.inbox.tree.is_empty() {
            delivered += 1;
        }
        let after = (
            alpha.trust.current().crl_number(),
            alpha.trust.current().directory_serial(),
        );
        println!(
            "round {round}: deliver to the revoked peer -> {}; stored there: {}; alpha's (CRL, directory) {before:?} -> {after:?}",
            match &r {
                Ok(_) => "acknowledged".to_owned(),
                Err(e) => format!("failed ({e})"),
            },
            gamma.inbox.tree.len()
        );
        assert!(
            after.0 > before.0 || after.1 > before.1,
            "alpha did not take the newer trust data its peer announced"
        );
        alpha.node.shutdown().await;
        gamma.node.shutdown().await;
    }
    assert_eq!(
        delivered, 0,
        "{delivered} of {rounds} messages went to a revoked member"
    );
}

/// The other direction: the revoked member (which knows it was revoked)
/// dials a member that was cut off and still trusts it. The member takes
/// the fresher trust data the dialer announces before taking its mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_stale_trust_refuses_mail_from_a_peer_revoked_meanwhile() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("assoc"),
        "Stale Trust Test",
        3650,
        Settings::default(),
    )
    .expect("init");
    let rounds = 20;
    let mut stored = 0;
    for round in 0..rounds {
        let alpha = member(&ca, &format!("alpha{round}"), |_| {}).await;
        let gamma = member(&ca, &format!("gamma{round}"), |_| {}).await;
        sync(&ca, &[&alpha, &gamma]);
        ca.revoke(
            &caliopen_ca::RevokeTarget::Domain(format!("gamma{round}.test")),
            "privilegeWithdrawn",
        )
        .expect("revoke");
        sync(&ca, &[&gamma]);
        let t0 = Instant::now();
        let r = gamma
            .node
            .deliver(
                &format!("alpha{round}"),
                deliver(
                    &format!("c@gamma{round}.test"),
                    &format!("a@alpha{round}.test"),
                    round,
                ),
            )
            .await;
        stored += alpha.inbox.tree.len();
        if round == 0 {
            println!(
                "revoked member's delivery to a stale member: {r:?} in {:?}",
                t0.elapsed()
            );
        }
        assert!(r.is_err(), "round {round}: acknowledged: {r:?}");
        // Dropped without a shutdown: each waits up to 2 s for its closed
        // connection to drain, which would only slow the test down.
        drop((alpha, gamma));
    }
    assert_eq!(
        stored, 0,
        "{stored} of {rounds} messages from a revoked member were stored"
    );
}

/// Handover pieces and move notices from a member that has no business
/// sending them are refused by the node, before any handler sees them.
#[tokio::test]
async fn handover_pieces_and_move_notices_need_the_directory_on_their_side() {
    use caliopen_proto::pb::mesh::{HandoverChunk, MoveNotice};
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("assoc"),
        "Handover Hostile",
        3650,
        Settings::default(),
    )
    .expect("init");
    let beta = member(&ca, "beta", |_| {}).await;
    let mallory = member(&ca, "mallory", |_| {}).await;
    let gamma = member(&ca, "gamma", |_| {}).await;
    sync(&ca, &[&beta, &mallory, &gamma]);
    let refused = |r: Result<Response, MeshError>| match r {
        Err(MeshError::Remote { code, message }) => {
            assert_eq!(code, error_reply::Code::Refused, "{message}");
            message
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    // mallory never handed over to beta: no piece without a code.
    let piece = HandoverChunk {
        account: "alice".into(),
        archive: "alice.1".into(),
        offset: 0,
        data: b"CALIOPEN-ACCOUNT".to_vec(),
        last: false,
        total: 16,
        code: String::new(),
    };
    let m = refused(
        mallory
            .node
            .request("beta", req(request::Body::HandoverChunk(piece.clone())))
            .await,
    );
    assert!(m.contains("handed over"), "{m}");
    // A notice for an address of another member's domain, or to an
    // address at no member: refused.
    for (old, new) in [
        ("alice@gamma.test", "alice@mallory.test"),
        ("alice@mallory.test", "alice@nowhere.example"),
    ] {
        let m = refused(
            mallory
                .node
                .request(
                    "beta",
                    req(request::Body::MoveNotice(MoveNotice {
                        old_address: old.into(),
                        new_address: new.into(),
                        moved_at: now(),
                    })),
                )
                .await,
        );
        assert!(m.contains("move notice"), "{m}");
    }
    // Its own user, to a member: passed on to the handler (this test
    // handler takes none).
    let r = mallory
        .node
        .move_notice(
            "beta",
            MoveNotice {
                old_address: "alice@mallory.test".into(),
                new_address: "alice@gamma.test".into(),
                moved_at: now(),
            },
        )
        .await
        .expect("passed to the handler");
    assert!(!r.accepted);
    // With a code, the handler decides (this one takes no handovers).
    let with_code = HandoverChunk {
        code: "0011".into(),
        ..piece
    };
    assert!(mallory
        .node
        .request("beta", req(request::Body::HandoverChunk(with_code)))
        .await
        .is_err());
}

//! A labelled mesh on loopback: real association CA, real certificates, real
//! QUIC with mutual TLS between several members.

mod common;

use caliopen_ca::{Authority, RevokeTarget, Settings, SignRequest};
use caliopen_federation::{request_on, BoxFuture};
use caliopen_federation::{
    HandlerError, IdentitySlot, MeshConfig, MeshError, MeshHandler, MeshNode, Outbox, OutboxEvent,
    PeerIdentity, Refusal, RetryPolicy, TrustStore,
};
use caliopen_proto::pb::directory::SignedDirectory;
use caliopen_proto::pb::mesh::{
    error_reply, recipient_result, request, response, Deliver, DeliverReply, PrivacyEntry,
    PrivacyQuery, PrivacyReply, RecipientResult, Request,
};
use prost::Message;
use rcgen::{CertificateParams, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A durable inbox: txn_id → message, in sled, flushed before the ack.
struct Inbox {
    db: sled::Db,
    tree: sled::Tree,
    domain: String,
    /// Recipients already deferred once (`later…@` is deferred on first sight).
    deferred: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Inbox {
    fn new(domain: &str) -> Arc<Self> {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("inbox").expect("tree");
        Arc::new(Self {
            db,
            tree,
            domain: domain.to_owned(),
            deferred: Default::default(),
        })
    }
    fn len(&self) -> usize {
        self.tree.len()
    }
}

impl MeshHandler for Inbox {
    fn deliver(
        &self,
        _peer: &PeerIdentity,
        d: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>> {
        let results: Vec<RecipientResult> = d
            .rcpt_to
            .iter()
            .map(|r| {
                let ours = r
                    .rsplit_once('@')
                    .is_some_and(|(_, dom)| dom.eq_ignore_ascii_case(&self.domain));
                let later = ours
                    && r.starts_with("later")
                    && self.deferred.lock().expect("lock").insert(r.clone());
                RecipientResult {
                    rcpt: r.clone(),
                    status: if later {
                        recipient_result::Status::RejectedTemporary
                    } else if ours {
                        recipient_result::Status::Accepted
                    } else {
                        recipient_result::Status::RejectedPermanent
                    } as i32,
                    detail: if ours {
                        String::new()
                    } else {
                        "no such user here".into()
                    },
                }
            })
            .collect();
        let tree = self.tree.clone();
        let db = self.db.clone();
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
        q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        Box::pin(async move {
            let _ = q;
            Ok(PrivacyReply {
                entries: vec![PrivacyEntry {
                    address_hash: vec![0; 32],
                    level: 50,
                }],
                ttl_seconds: 60,
            })
        })
    }
}

struct Fed {
    _tmp: tempfile::TempDir,
    ca: Arc<Authority>,
}

struct Member {
    id: String,
    domain: String,
    node: MeshNode,
    trust: Arc<TrustStore>,
    identity: Arc<IdentitySlot>,
    inbox: Arc<Inbox>,
}

fn csr(key: &KeyPair, domain: &str) -> Vec<u8> {
    CertificateParams::new(vec![domain.to_owned()])
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

impl Fed {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(
            Authority::init(
                &tmp.path().join("assoc"),
                "Mesh Test",
                3650,
                Settings::default(),
            )
            .expect("init"),
        );
        Self { _tmp: tmp, ca }
    }

    /// Starts a node, has the association sign it with its bound address.
    async fn member(&self, id: &str, cfg: impl FnOnce(&mut MeshConfig)) -> Member {
        self.member_at(id, "127.0.0.1:0".parse().expect("addr"), cfg)
            .await
    }

    async fn member_at(
        &self,
        id: &str,
        listen: SocketAddr,
        cfg: impl FnOnce(&mut MeshConfig),
    ) -> Member {
        let domain = format!("{id}.test");
        let trust =
            Arc::new(TrustStore::new(self.ca.root_pem(), vec!["1.0".into()]).expect("trust"));
        let identity = IdentitySlot::new();
        let inbox = Inbox::new(&domain);
        let mut c = MeshConfig::new(id);
        cfg(&mut c);
        let node = MeshNode::start(c, listen, trust.clone(), identity.clone(), inbox.clone())
            .await
            .expect("start");
        let addr = node.local_addr().expect("addr");
        let key = KeyPair::generate().expect("key");
        let issued = self
            .ca
            .sign(&SignRequest {
                csr: csr(&key, &domain),
                member_id: id.into(),
                charter_version: "1.0".into(),
                endpoints: vec![addr.to_string()],
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
        Member {
            id: id.into(),
            domain,
            node,
            trust,
            identity,
            inbox,
        }
    }

    /// What the association publishes now.
    fn published(&self) -> (Vec<u8>, SignedDirectory) {
        let p = self.ca.published();
        (
            p.crl_der.as_ref().clone(),
            SignedDirectory::decode(p.directory.as_slice()).expect("dir"),
        )
    }

    /// The association's Watch reaching these members.
    fn sync(&self, members: &[&Member]) {
        let (crl, dir) = self.published();
        for m in members {
            let _ = m.trust.offer_crl(&crl, None).expect("crl");
            let _ = m.trust.offer_directory(&dir, None, now()).expect("dir");
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn txn(n: u8) -> Vec<u8> {
    vec![n; 32]
}

fn deliver(from: &str, to: &str, n: u8) -> Deliver {
    Deliver {
        txn_id: txn(n),
        mail_from: from.into(),
        rcpt_to: vec![to.into()],
        message: format!("From: {from}\r\nTo: {to}\r\nSubject: {n}\r\n\r\nhello\r\n").into_bytes(),
        accepted_at: now(),
    }
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_acknowledged_once_and_repeats_are_stored_once() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |_| {}).await;
    let c = fed.member("gamma", |_| {}).await;
    fed.sync(&[&a, &b, &c]);

    let r = a
        .node
        .deliver("beta", deliver("alice@alpha.test", "bob@beta.test", 1))
        .await
        .expect("deliver");
    assert_eq!(r.txn_id, txn(1));
    assert!(!r.duplicate);
    assert_eq!(
        r.results[0].status,
        recipient_result::Status::Accepted as i32
    );
    assert_eq!(b.inbox.len(), 1, "stored before the ack");

    let again = a
        .node
        .deliver("beta", deliver("alice@alpha.test", "bob@beta.test", 1))
        .await
        .expect("repeat");
    assert!(again.duplicate);
    assert_eq!(b.inbox.len(), 1, "a repeated Deliver is stored once");

    let r = c
        .node
        .deliver(
            "beta",
            deliver("carol@gamma.test", "nobody@elsewhere.test", 2),
        )
        .await
        .expect("deliver");
    assert_eq!(
        r.results[0].status,
        recipient_result::Status::RejectedPermanent as i32
    );
    // Bounces (null sender) are allowed from any member.
    c.node
        .deliver("alpha", deliver("", "alice@alpha.test", 3))
        .await
        .expect("null sender");
    assert_eq!(a.inbox.len(), 1);
    // One pooled connection per peer, used both ways.
    assert!(a.node.connected_peers().contains(&"beta".to_owned()));
    b.node
        .deliver("alpha", deliver("bob@beta.test", "alice@alpha.test", 4))
        .await
        .expect("reverse");
    assert!(
        b.node
            .stats()
            .deliveries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // A privacy query round-trips.
    let p = a
        .node
        .privacy_query(
            "gamma",
            PrivacyQuery {
                hash_prefix: vec![0xab, 0xc0],
                prefix_bits: 12,
            },
        )
        .await
        .expect("privacy");
    assert_eq!(p.entries.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_sender_domain_is_refused() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    let err = a
        .node
        .deliver("beta", deliver("mallory@beta.test", "bob@beta.test", 9))
        .await
        .expect_err("spoofed sender");
    match err {
        MeshError::Remote { code, message } => {
            assert_eq!(code, error_reply::Code::Refused);
            assert!(message.contains("beta.test"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(b.inbox.len(), 0);
    assert_eq!(
        b.node
            .stats()
            .sender_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// A node for a would-be peer holding `cert_pem`/`key_pem`, trusting the
/// association (so it can name and verify its target).
async fn rogue(fed: &Fed, id: &str, cert_pem: &str, key_pem: &str) -> MeshNode {
    let trust = Arc::new(TrustStore::new(fed.ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let (crl, dir) = fed.published();
    trust.offer_crl(&crl, None).expect("crl");
    trust.offer_directory(&dir, None, now()).expect("dir");
    let identity = IdentitySlot::new();
    identity
        .set_pem(cert_pem, key_pem, trust.provider())
        .expect("identity");
    MeshNode::start(
        MeshConfig::new(id),
        "127.0.0.1:0".parse().expect("addr"),
        trust,
        identity,
        Inbox::new("rogue.test"),
    )
    .await
    .expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_foreign_and_label_less_peers_are_refused() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;

    // Revoked: a real member, revoked before it connects.
    let key = KeyPair::generate().expect("key");
    let revoked = fed
        .ca
        .sign(&SignRequest {
            csr: csr(&key, "revoked.test"),
            member_id: "revoked".into(),
            charter_version: "1.0".into(),
            ..Default::default()
        })
        .expect("sign");
    let revoked_key = key.serialize_pem();
    fed.ca
        .revoke(
            &RevokeTarget::Serial(revoked.record.serial.clone()),
            "keyCompromise",
        )
        .expect("revoke");

    // Expired: issued 40 days ago for one day.
    let key = KeyPair::generate().expect("key");
    let expired = caliopen_ca::internal::sign_at(
        &fed.ca,
        &SignRequest {
            csr: csr(&key, "expired.test"),
            member_id: "expired".into(),
            charter_version: "1.0".into(),
            days: Some(1),
            ..Default::default()
        },
        time::OffsetDateTime::now_utc() - time::Duration::days(40),
    )
    .expect("sign");
    let expired_key = key.serialize_pem();

    // Foreign CA: a member of another association.
    let other_tmp = tempfile::tempdir().expect("tmp");
    let other = Authority::init(
        &other_tmp.path().join("o"),
        "Other",
        3650,
        Settings::default(),
    )
    .expect("init");
    let key = KeyPair::generate().expect("key");
    let foreign = other
        .sign(&SignRequest {
            csr: csr(&key, "foreign.test"),
            member_id: "foreign".into(),
            charter_version: "1.0".into(),
            ..Default::default()
        })
        .expect("sign");
    let foreign_key = key.serialize_pem();

    // Label-less: signed by the association root, but without the label.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["nolabel.test".to_owned()]).expect("params");
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42; 16]));
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let issuer = rcgen::Issuer::from_ca_cert_der(
        &fed.ca.root_der().to_vec().into(),
        caliopen_ca::internal::root_key(&fed.ca),
    )
    .expect("issuer");
    let nolabel = params.signed_by(&key, &issuer).expect("sign").pem();
    let nolabel_key = key.serialize_pem();

    // Wrong EKU: signed by the root, server authentication only.
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["wrongeku.test".to_owned()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x43; 16]));
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let wrongeku = params.signed_by(&key, &issuer).expect("sign").pem();
    let wrongeku_key = key.serialize_pem();

    // Self-signed.
    let key = KeyPair::generate().expect("key");
    let selfsigned = CertificateParams::new(vec!["self.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("sign")
        .pem();
    let selfsigned_key = key.serialize_pem();

    fed.sync(&[&a]);
    let cases = [
        (
            "wrongeku",
            wrongeku.as_str(),
            wrongeku_key.as_str(),
            Refusal::WrongEku,
        ),
        (
            "selfsigned",
            selfsigned.as_str(),
            selfsigned_key.as_str(),
            Refusal::UnknownIssuer,
        ),
        (
            "revoked",
            revoked.record.certificate_pem.as_str(),
            revoked_key.as_str(),
            Refusal::Revoked,
        ),
        (
            "expired",
            expired.record.certificate_pem.as_str(),
            expired_key.as_str(),
            Refusal::Expired,
        ),
        (
            "foreign",
            foreign.record.certificate_pem.as_str(),
            foreign_key.as_str(),
            Refusal::UnknownIssuer,
        ),
        (
            "nolabel",
            nolabel.as_str(),
            nolabel_key.as_str(),
            Refusal::NoLabel,
        ),
    ];
    for (id, cert, key, reason) in cases {
        let before = a.trust.refusals().get(reason);
        let r = rogue(&fed, id, cert, key).await;
        let res = r.connect("alpha").await;
        assert!(res.is_err(), "{id} peer was admitted");
        assert_eq!(
            a.trust.refusals().get(reason),
            before + 1,
            "{id}: refusal not counted as {reason:?}: {:?}",
            a.trust.refusals().snapshot()
        );
        assert!(a.node.connected_peers().is_empty(), "{id} registered");
        r.shutdown().await;
    }
    // And the member still serves legitimate peers.
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    b.node
        .deliver("alpha", deliver("bob@beta.test", "alice@alpha.test", 1))
        .await
        .expect("legit peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_gossip_closes_live_connections_within_seconds() {
    let fed = Fed::new();
    let mut members = Vec::new();
    for id in ["m1", "m2", "m3", "m4", "m5"] {
        members.push(fed.member(id, |_| {}).await);
    }
    fed.sync(&members.iter().collect::<Vec<_>>());
    // A full mesh of live connections.
    for (i, m) in members.iter().enumerate() {
        for other in &members[i + 1..] {
            m.node.connect(&other.id).await.expect("connect");
        }
    }
    let victim = &members[4];
    for m in &members[..4] {
        eventually("full mesh", || {
            m.node.connected_peers().contains(&victim.id)
        })
        .await;
    }
    let before = members[1].trust.current().crl_number();

    // The association revokes m5; only m1 hears it (as if only m1 watched).
    fed.ca
        .revoke(
            &RevokeTarget::Domain(victim.domain.clone()),
            "privilegeWithdrawn",
        )
        .expect("revoke");
    let (crl, _) = fed.published();
    let t0 = Instant::now();
    assert!(members[0].trust.offer_crl(&crl, None).expect("offer"));
    for m in &members[..4] {
        eventually("revoked peer dropped", || {
            !m.node.connected_peers().contains(&victim.id)
                && m.trust.current().crl_number() > before
        })
        .await;
    }
    let elapsed = t0.elapsed();
    println!("revocation reached 4 members by gossip and their connections to the revoked one closed in {elapsed:?}");
    // Bounded by `eventually` (10 s); the figure itself is printed, not asserted.
    for m in &members[1..4] {
        assert!(
            m.node
                .stats()
                .closed_revoked
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1,
            "{} closed nothing itself",
            m.id
        );
    }
    // The revoked member's new handshakes are refused (once it has noticed
    // that its old connections were closed).
    eventually("the revoked member sees its connections closed", || {
        !victim.node.connected_peers().contains(&"m2".to_owned())
    })
    .await;
    let err = victim
        .node
        .connect("m2")
        .await
        .expect_err("revoked member reconnects");
    println!("revoked member's reconnect: {err}");
    assert!(members[1].trust.refusals().get(Refusal::Revoked) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_garbage_frames_fail_only_their_stream() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |c| c.max_frame = 64 * 1024).await;
    let c = fed.member("gamma", |_| {}).await;
    fed.sync(&[&a, &b, &c]);
    let conn = a.node.connect("beta").await.expect("connect");

    async fn raw(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let _ = s.write_all(bytes).await;
        let _ = s.finish();
        r.read_to_end(1 << 20).await.map_err(|e| e.to_string())
    }
    let decode = |bytes: Vec<u8>| {
        caliopen_federation::wire::decode_single::<caliopen_proto::pb::mesh::Response>(
            &bytes,
            1 << 20,
        )
        .expect("response frame")
    };

    // Garbage inside a well-formed length prefix.
    let resp = decode(
        raw(&conn, &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
            .await
            .expect("answer"),
    );
    assert!(
        matches!(resp.body, Some(response::Body::Error(ref e)) if e.code == error_reply::Code::Malformed as i32),
        "{resp:?}"
    );
    // A truncated frame.
    let resp = decode(raw(&conn, &[0, 0, 1, 0, 1, 2]).await.expect("answer"));
    assert!(matches!(resp.body, Some(response::Body::Error(_))));
    // Oversize: 100 KB against a 64 KB limit.
    let mut big = vec![0u8; 100 * 1024 + 4];
    big[..4].copy_from_slice(&((100 * 1024) as u32).to_be_bytes());
    let _ = raw(&conn, &big).await; // answered with an error or the stream stopped: either way only this stream
                                    // Pure noise with no frame at all.
    let _ = raw(&conn, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(
        b.node
            .stats()
            .frames_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );

    // A Hello for another protocol version is refused as unsupported.
    let resp = request_on(
        &conn,
        &Request {
            body: Some(request::Body::Hello(caliopen_proto::pb::mesh::Hello {
                protocol_version: 99,
                ..Default::default()
            })),
        },
        1 << 20,
    )
    .await
    .expect("answer");
    assert!(
        matches!(resp.body, Some(response::Body::Error(ref e)) if e.code == error_reply::Code::Unsupported as i32),
        "{resp:?}"
    );
    // The same connection and the other peers carry on.
    let ok = request_on(
        &conn,
        &Request {
            body: Some(request::Body::Deliver(deliver(
                "alice@alpha.test",
                "bob@beta.test",
                1,
            ))),
        },
        1 << 20,
    )
    .await
    .expect("request after garbage");
    assert!(matches!(ok.body, Some(response::Body::Deliver(_))));
    c.node
        .deliver("beta", deliver("carol@gamma.test", "bob@beta.test", 2))
        .await
        .expect("other peer");
    assert_eq!(b.inbox.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_retries_and_flushes_when_the_peer_restarts() {
    let fed = Fed::new();
    let a = fed
        .member("alpha", |c| c.connect_timeout = Duration::from_secs(1))
        .await;
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    let b_addr = b.node.local_addr().expect("addr");
    // beta goes down.
    b.node.shutdown().await;
    let b_cert = b.identity.get().expect("identity");
    drop(b);

    let outbox_dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(
        outbox_dir.path(),
        RetryPolicy {
            base: Duration::from_secs(30),
            max: Duration::from_secs(60),
            lifetime: Duration::from_secs(3600),
        },
    )
    .expect("outbox");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let token = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(outbox.clone().run(a.node.clone(), tx, token.clone()));
    for n in 1..=3 {
        outbox
            .enqueue("beta", deliver("alice@alpha.test", "bob@beta.test", n))
            .await
            .expect("enqueue");
    }
    // The first attempts fail and back off for 30 s.
    eventually("first attempts failed and were deferred", || {
        let e = outbox.entries_for("beta").expect("entries");
        e.len() == 3
            && e.iter()
                .all(|r| r.attempts >= 1 && !r.last_error.is_empty())
    })
    .await;

    // beta comes back on the same address with the same certificate and dials alpha:
    // alpha's outbox flushes at once instead of waiting out the backoff.
    let trust = Arc::new(TrustStore::new(fed.ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let (crl, dir) = fed.published();
    trust.offer_crl(&crl, None).expect("crl");
    trust.offer_directory(&dir, None, now()).expect("dir");
    let identity = IdentitySlot::new();
    identity.set(b_cert);
    let inbox = Inbox::new("beta.test");
    let b2 = MeshNode::start(
        MeshConfig::new("beta"),
        b_addr,
        trust,
        identity,
        inbox.clone(),
    )
    .await
    .expect("restart");
    let t0 = Instant::now();
    b2.connect("alpha").await.expect("beta dials alpha");
    let mut delivered = 0;
    while delivered < 3 {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("event in time")
            .expect("event")
        {
            OutboxEvent::Delivered { peer, reply } => {
                assert_eq!(peer, "beta");
                assert!(!reply.duplicate);
                delivered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    println!(
        "outbox flushed 3 messages {:?} after the peer came back",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(inbox.len(), 3);
    assert!(outbox.is_empty());
    token.cancel();
    runner.await.expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_recipient_refusals_bounce_and_deferrals_retry() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    let outbox_dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(
        outbox_dir.path(),
        RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            lifetime: Duration::from_secs(3600),
        },
    )
    .expect("outbox");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let token = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(outbox.clone().run(a.node.clone(), tx, token.clone()));
    let mut d = deliver("alice@alpha.test", "bob@beta.test", 9);
    d.rcpt_to = vec![
        "bob@beta.test".into(),
        "later@beta.test".into(),
        "ghost@nowhere.test".into(),
    ];
    outbox.enqueue("beta", d).await.expect("enqueue");
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<OutboxEvent>) -> OutboxEvent {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("event in time")
            .expect("event")
    }
    let first = match next(&mut rx).await {
        OutboxEvent::Delivered { reply, .. } => reply,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(first.results.len(), 3);
    match next(&mut rx).await {
        OutboxEvent::RecipientsRefused {
            peer,
            deliver,
            refused,
        } => {
            assert_eq!(peer, "beta");
            assert_eq!(refused.len(), 1);
            assert_eq!(refused[0].rcpt, "ghost@nowhere.test");
            assert_eq!(deliver.txn_id, txn(9), "the message as sent");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The deferred recipient comes back alone, under a new txn_id, and is taken.
    let second = match next(&mut rx).await {
        OutboxEvent::Delivered { reply, .. } => reply,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(second.results.len(), 1);
    assert_eq!(second.results[0].rcpt, "later@beta.test");
    assert_eq!(
        second.results[0].status,
        recipient_result::Status::Accepted as i32
    );
    assert_ne!(second.txn_id, txn(9));
    assert_eq!(b.inbox.len(), 2, "two transactions stored at beta");
    eventually("outbox empty", || outbox.is_empty()).await;
    token.cancel();
    runner.await.expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_below_the_baseline_are_flagged_then_refused() {
    let fed = Fed::new();
    let strict = fed
        .member("strict", |c| c.baseline_grace = Duration::ZERO)
        .await;
    let lenient = fed.member("lenient", |_| {}).await;
    let old = fed.member("old", |_| {}).await;
    fed.ca.set_baseline("99.0.0").expect("baseline");
    fed.sync(&[&strict, &lenient, &old]);
    // Within the grace period: served, but flagged.
    old.node
        .deliver("lenient", deliver("x@old.test", "y@lenient.test", 1))
        .await
        .expect("within grace");
    assert!(
        lenient
            .node
            .stats()
            .below_baseline
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Past it (grace zero): refused.
    let err = old
        .node
        .connect("strict")
        .await
        .expect_err("below baseline");
    assert!(err.to_string().contains("baseline"), "{err}");
    assert_eq!(strict.inbox.len(), 0);
    eventually("refused peer dropped", || {
        strict.node.connected_peers().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tiny_requests_is_rate_limited_per_peer() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed
        .member("beta", |c| {
            c.rate_per_second = 1.0;
            c.rate_burst = 5.0;
        })
        .await;
    let c = fed.member("gamma", |_| {}).await;
    fed.sync(&[&a, &b, &c]);
    let q = || PrivacyQuery {
        hash_prefix: vec![0x12],
        prefix_bits: 8,
    };
    let mut limited = 0;
    let t0 = Instant::now();
    for _ in 0..30 {
        match a.node.privacy_query("beta", q()).await {
            Ok(_) => {}
            Err(MeshError::Remote {
                code: error_reply::Code::RateLimited,
                ..
            }) => limited += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Burst 5 plus one token per second elapsed may pass; everything else is limited.
    let allowed = 5 + t0.elapsed().as_secs() + 1;
    assert!(
        limited + allowed >= 30,
        "only {limited} of 30 limited in {:?}",
        t0.elapsed()
    );
    assert!(limited > 0);
    assert_eq!(
        b.node
            .stats()
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        limited
    );
    // Another peer has its own budget.
    let t0 = Instant::now();
    c.node
        .privacy_query("beta", q())
        .await
        .expect("other peer served");
    println!(
        "other peer served in {:?} while alpha was limited",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_reports_expiry_and_hands_back_entries_of_a_revoked_peer() {
    let fed = Fed::new();
    let a = fed
        .member("alpha", |c| c.connect_timeout = Duration::from_millis(500))
        .await;
    let b = fed.member("beta", |_| {}).await;
    let c = fed.member("gamma", |_| {}).await;
    fed.sync(&[&a, &b, &c]);
    // beta is down for good; gamma is up but about to be revoked.
    b.node.shutdown().await;
    let outbox_dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(
        outbox_dir.path(),
        RetryPolicy {
            base: Duration::from_millis(200),
            max: Duration::from_millis(400),
            lifetime: Duration::from_secs(2),
        },
    )
    .expect("outbox");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let token = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(outbox.clone().run(a.node.clone(), tx, token.clone()));
    outbox
        .enqueue("beta", deliver("alice@alpha.test", "bob@beta.test", 1))
        .await
        .expect("enqueue");
    match tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("event")
    {
        OutboxEvent::Expired {
            peer,
            deliver,
            last_error,
        } => {
            assert_eq!(peer, "beta");
            assert_eq!(deliver.txn_id, txn(1));
            assert!(!last_error.is_empty());
        }
        other => panic!("expected expiry, got {other:?}"),
    }

    // gamma is revoked while a message waits for it (held back by a long first delay).
    c.node.shutdown().await;
    outbox
        .enqueue("gamma", deliver("alice@alpha.test", "carol@gamma.test", 2))
        .await
        .expect("enqueue");
    fed.ca
        .revoke(
            &RevokeTarget::Domain("gamma.test".into()),
            "cessationOfOperation",
        )
        .expect("revoke");
    fed.sync(&[&a]);
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("in time")
            .expect("event")
        {
            OutboxEvent::Reroute { peer, deliver } => {
                assert_eq!(peer, "gamma");
                assert_eq!(deliver.txn_id, txn(2));
                break;
            }
            OutboxEvent::Expired { .. } => panic!("expired instead of rerouted"),
            _ => {}
        }
    }
    println!(
        "entry for a revoked peer handed back for SMTP in {:?}",
        t0.elapsed()
    );
    assert!(outbox.is_empty());
    token.cancel();
    runner.await.expect("runner");
}

/// Message `i`; every tenth also goes to a recipient beta defers once, so
/// that the outbox's pass runs (to schedule the retry) while lanes hold
/// other entries.
fn numbered(i: u16) -> Deliver {
    let mut d = deliver("alice@alpha.test", "bob@beta.test", 0);
    d.txn_id = vec![7; 32];
    d.txn_id[..2].copy_from_slice(&i.to_be_bytes());
    if i.is_multiple_of(10) {
        d.rcpt_to.push(format!("later{i}@beta.test"));
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_sends_each_entry_once_while_its_pass_and_lanes_overlap() {
    // (Without the claims, passes triggered by the deferrals re-send entries
    // lanes hold: beta then answers `duplicate`.)
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    a.node.connect("beta").await.expect("connect");
    let outbox_dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(
        outbox_dir.path(),
        RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
            lifetime: Duration::from_secs(3600),
        },
    )
    .expect("outbox");
    // 200 entries wait in the tree before the loop starts: its first pass
    // hands them to the lanes...
    for i in 0..200 {
        outbox.enqueue("beta", numbered(i)).await.expect("enqueue");
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let token = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(outbox.clone().run(a.node.clone(), tx, token.clone()));
    // ...while 200 more come from 8 producers at once, straight to the lanes.
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..8u16 {
        let outbox = outbox.clone();
        producers.spawn(async move {
            for j in 0..25u16 {
                outbox
                    .enqueue("beta", numbered(200 + p * 25 + j))
                    .await
                    .expect("enqueue");
            }
        });
    }
    // 400 deliveries, and 40 retries for the deferred recipients.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 440 {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("event in time")
            .expect("event")
        {
            OutboxEvent::Delivered { reply, .. } => {
                assert!(!reply.duplicate, "an entry was sent twice");
                assert!(seen.insert(reply.txn_id), "reported twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    while let Some(r) = producers.join_next().await {
        r.expect("producer");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "nothing more is sent"
    );
    assert_eq!(b.inbox.len(), 440);
    eventually("outbox empty", || outbox.is_empty()).await;
    token.cancel();
    runner.await.expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_knows_it_is_revoked_takes_nothing_more_over_the_mesh() {
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    a.node.connect("beta").await.expect("connect");
    a.node
        .deliver("beta", deliver("alice@alpha.test", "bob@beta.test", 1))
        .await
        .expect("delivered while beta is a member");
    fed.ca
        .revoke(
            &RevokeTarget::Domain(b.domain.clone()),
            "privilegeWithdrawn",
        )
        .expect("revoke");
    // Only beta hears of it (given as if it came from alpha, so that beta's
    // gossip does not carry it to alpha): alpha's trust data is stale.
    let (crl, dir) = fed.published();
    b.trust.offer_crl(&crl, Some("alpha")).expect("crl");
    b.trust
        .offer_directory(&dir, Some("alpha"), now())
        .expect("dir");
    let refused = a
        .node
        .deliver("beta", deliver("alice@alpha.test", "bob@beta.test", 2))
        .await;
    match refused {
        Err(MeshError::Remote { code, message }) => {
            assert_eq!(code, error_reply::Code::Unavailable, "{message}");
            assert!(message.contains("use SMTP"), "{message}");
        }
        other => panic!("a revoked member must not take mail: {other:?}"),
    }
    assert_eq!(b.inbox.len(), 1, "nothing stored after the revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_keeps_its_entries_across_a_restart_and_takes_over_an_older_sled_queue() {
    use caliopen_proto::pb::mesh::OutboxRecord;
    use prost::Message;
    let fed = Fed::new();
    let a = fed.member("alpha", |_| {}).await;
    let b = fed.member("beta", |_| {}).await;
    fed.sync(&[&a, &b]);
    let policy = RetryPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        lifetime: Duration::from_secs(3600),
    };
    // An older version queued two entries in its sled tree (key: peer, 0, sequence).
    let db = sled::Config::new().temporary(true).open().expect("sled");
    let tree = db.open_tree("mesh_outbox").expect("tree");
    for n in 1..=2u8 {
        let rec = OutboxRecord {
            peer: "beta".into(),
            deliver: Some(deliver("alice@alpha.test", "bob@beta.test", n)),
            attempts: 1,
            next_attempt_ms: 0,
            expires_at: now() + 3600,
            enqueued_at: now(),
            last_error: "beta was down".into(),
        };
        let mut key = b"beta\0".to_vec();
        key.extend_from_slice(&u64::from(n).to_be_bytes());
        tree.insert(key, rec.encode_to_vec()).expect("insert");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let outbox = Outbox::open(dir.path(), policy.clone()).expect("outbox");
        assert_eq!(outbox.import_sled(&db).await.expect("import"), 2);
        assert!(tree.is_empty(), "moved out of sled");
        assert_eq!(outbox.import_sled(&db).await.expect("import"), 0);
        // Queued while the delivery loop is not running: kept, not sent.
        for n in 3..=4 {
            outbox
                .enqueue("beta", deliver("alice@alpha.test", "bob@beta.test", n))
                .await
                .expect("enqueue");
        }
        assert_eq!(outbox.len(), 4);
    }
    // Reopened (a restart): the four entries are read back in order and sent.
    let outbox = Outbox::open(dir.path(), policy.clone()).expect("reopen");
    let waiting = outbox.entries_for("beta").expect("entries");
    assert_eq!(
        waiting
            .iter()
            .map(|r| r.deliver.as_ref().map(|d| d.txn_id.clone()))
            .collect::<Vec<_>>(),
        (1..=4).map(|n| Some(txn(n))).collect::<Vec<_>>()
    );
    assert_eq!(waiting[0].last_error, "beta was down");
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let token = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(outbox.clone().run(a.node.clone(), tx, token.clone()));
    for _ in 0..4 {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("event in time")
            .expect("event")
        {
            OutboxEvent::Delivered { reply, .. } => assert!(!reply.duplicate),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(b.inbox.len(), 4);
    eventually("outbox empty", || outbox.is_empty()).await;
    token.cancel();
    runner.await.expect("runner");
    drop(outbox);
    // The removals need no sync of their own, but a clean stop keeps them.
    let outbox = Outbox::open(dir.path(), policy).expect("reopen");
    assert!(outbox.is_empty(), "{} entries came back", outbox.len());
}

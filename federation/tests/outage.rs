//! A peer down for several retry periods, then back: the outbox retries on
//! its own schedule (the peer does not dial us), every message arrives, and
//! none is stored twice, even when an answer is lost and the Deliver is sent
//! again.

mod common;

use caliopen_ca::{Authority, Settings, SignRequest};
use caliopen_federation::BoxFuture;
use caliopen_federation::{
    HandlerError, IdentitySlot, MeshConfig, MeshHandler, MeshNode, Outbox, OutboxEvent,
    PeerIdentity, RetryPolicy, TrustStore,
};
use caliopen_proto::pb::directory::SignedDirectory;
use caliopen_proto::pb::mesh::{
    recipient_result, Deliver, DeliverReply, PrivacyQuery, PrivacyReply, RecipientResult,
};
use prost::Message;
use rcgen::{CertificateParams, KeyPair};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stores by txn_id (idempotent); the first delivery of `slow_txn` answers
/// only after `delay` (stored already: the answer is what gets lost).
struct Inbox {
    db: sled::Db,
    tree: sled::Tree,
    slow_txn: Vec<u8>,
    delay: Duration,
    slowed: AtomicBool,
}

impl MeshHandler for Inbox {
    fn deliver(
        &self,
        _peer: &PeerIdentity,
        d: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>> {
        let (tree, db) = (self.tree.clone(), self.db.clone());
        let slow = d.txn_id == self.slow_txn && !self.slowed.swap(true, Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            let fresh = common::store_once(&tree, &db, &d).await?;
            if slow {
                tokio::time::sleep(delay).await;
            }
            Ok(DeliverReply {
                results: d
                    .rcpt_to
                    .iter()
                    .map(|r| RecipientResult {
                        rcpt: r.clone(),
                        status: recipient_result::Status::Accepted as i32,
                        detail: String::new(),
                    })
                    .collect(),
                txn_id: d.txn_id,
                duplicate: !fresh,
            })
        })
    }

    fn privacy_query(
        &self,
        _peer: &PeerIdentity,
        _q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        Box::pin(async { Err(HandlerError::Refused("not here".into())) })
    }
}

fn inbox(slow_txn: Vec<u8>, delay: Duration) -> Arc<Inbox> {
    let db = sled::Config::new().temporary(true).open().expect("sled");
    Arc::new(Inbox {
        tree: db.open_tree("inbox").expect("tree"),
        db,
        slow_txn,
        delay,
        slowed: AtomicBool::new(false),
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn trust(ca: &Authority) -> Arc<TrustStore> {
    let t = Arc::new(TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let p = ca.published();
    t.offer_crl(&p.crl_der, None).expect("crl");
    t.offer_directory(
        &SignedDirectory::decode(p.directory.as_slice()).expect("dir"),
        None,
        now(),
    )
    .expect("dir");
    t
}

fn identity(ca: &Authority, id: &str, endpoint: SocketAddr) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let csr = CertificateParams::new(vec![format!("{id}.test")])
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
            endpoints: vec![endpoint.to_string()],
            ..Default::default()
        })
        .expect("sign");
    (issued.record.certificate_pem, key.serialize_pem())
}

fn deliver(n: u8) -> Deliver {
    Deliver {
        txn_id: vec![n; 32],
        mail_from: "alice@alpha.test".into(),
        rcpt_to: vec!["bob@beta.test".into()],
        message: format!("Subject: {n}\r\n\r\nhi\r\n").into_bytes(),
        accepted_at: now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_for_several_retry_periods_gets_everything_once_when_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("assoc"),
        "Outage Test",
        3650,
        Settings::default(),
    )
    .expect("init");
    // beta's address is reserved now and stays dark for a while.
    let b_addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (b_cert, b_key) = identity(&ca, "beta", b_addr);
    let a_trust = trust(&ca);
    let a_id = IdentitySlot::new();
    let a_inbox = inbox(Vec::new(), Duration::ZERO);
    let a = MeshNode::start(
        {
            let mut c = MeshConfig::new("alpha");
            c.connect_timeout = Duration::from_millis(300);
            c.request_timeout = Duration::from_secs(1);
            c
        },
        "127.0.0.1:0".parse().expect("addr"),
        a_trust.clone(),
        a_id.clone(),
        a_inbox,
    )
    .await
    .expect("alpha");
    let (a_cert, a_key) = identity(&ca, "alpha", a.local_addr().expect("addr"));
    a_id.set_pem(&a_cert, &a_key, a_trust.provider())
        .expect("identity");
    // Both identities are in the directory now.
    let p = ca.published();
    a_trust
        .offer_directory(
            &SignedDirectory::decode(p.directory.as_slice()).expect("dir"),
            None,
            now(),
        )
        .expect("dir");

    let outbox_dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(
        outbox_dir.path(),
        RetryPolicy {
            base: Duration::from_millis(250),
            max: Duration::from_millis(500),
            lifetime: Duration::from_secs(120),
        },
    )
    .expect("outbox");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let token = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(outbox.clone().run(a.clone(), tx, token.clone()));
    for n in 1..=10 {
        outbox.enqueue("beta", deliver(n)).await.expect("enqueue");
    }
    // Several retry periods with beta down.
    let t0 = Instant::now();
    loop {
        let e = outbox.entries_for("beta").expect("entries");
        if e.len() == 10 && e.iter().all(|r| r.attempts >= 3) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "retries did not happen: {:?}",
            e.iter().map(|r| r.attempts).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "every entry failed at least 3 times in {:?} while beta was down",
        t0.elapsed()
    );
    assert!(rx.try_recv().is_err(), "an event while the peer was down");

    // beta comes back on its address; it does not dial alpha, so delivery
    // comes from alpha's own retries. Its first answer (for message 3) is
    // delayed past alpha's request timeout: alpha sends that Deliver again.
    let b_trust = trust(&ca);
    let b_id = IdentitySlot::new();
    b_id.set_pem(&b_cert, &b_key, b_trust.provider())
        .expect("identity");
    let b_inbox = inbox(vec![3; 32], Duration::from_millis(1500));
    let b = MeshNode::start(
        MeshConfig::new("beta"),
        b_addr,
        b_trust,
        b_id,
        b_inbox.clone(),
    )
    .await
    .expect("beta back");
    let t1 = Instant::now();
    let mut delivered = std::collections::BTreeMap::new();
    while delivered.len() < 10 {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("event in time")
            .expect("event")
        {
            OutboxEvent::Delivered { peer, reply } => {
                assert_eq!(peer, "beta");
                delivered.insert(reply.txn_id[0], reply.duplicate);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    println!(
        "all 10 delivered {:?} after beta came back; duplicates answered: {:?}",
        t1.elapsed(),
        delivered
            .iter()
            .filter(|(_, d)| **d)
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    );
    assert!(outbox.is_empty());
    assert_eq!(b_inbox.tree.len(), 10, "each message stored once");
    assert!(
        delivered[&3],
        "the Deliver whose answer was lost was not sent again"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "a late extra event");
    token.cancel();
    runner.await.expect("runner");
    // Shutdown after an outage is prompt (it used to wait out the 60 s idle
    // timeout of a half-open handshake left by alpha's retries).
    for (name, node) in [("beta", &b), ("alpha", &a)] {
        let t = Instant::now();
        node.shutdown().await;
        println!("{name} shut down in {:?}", t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{name} took {:?} to shut down",
            t.elapsed()
        );
    }
}

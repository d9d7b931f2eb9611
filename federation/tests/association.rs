//! A member following a real association service over TLS: the Watch stream
//! brings a revocation within about a second, and renewal works over mTLS.

use caliopen_ca::{Authority, BoundService, RevokeTarget, Settings, SignRequest};
use caliopen_federation::{AssociationLink, TrustStore};
use rcgen::{CertificateParams, KeyPair};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_brings_revocations_and_renewal_works() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Arc::new(
        Authority::init(
            &tmp.path().join("a"),
            "Watch Test",
            3650,
            Settings::default(),
        )
        .expect("init"),
    );
    let key = KeyPair::generate().expect("key");
    let csr = |k: &KeyPair| {
        CertificateParams::new(vec!["alpha.test".to_owned()])
            .expect("params")
            .serialize_request(k)
            .expect("csr")
            .pem()
            .expect("pem")
    };
    let issued = ca
        .sign(&SignRequest {
            csr: csr(&key).into_bytes(),
            member_id: "alpha".into(),
            charter_version: "1.0".into(),
            ..Default::default()
        })
        .expect("sign");
    let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
        .await
        .expect("bind");
    let addr = bound.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    let service = tokio::spawn(bound.run(async move { s.cancelled().await }));

    let trust = Arc::new(TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let mut link = AssociationLink::new(format!("https://{addr}"), ca.root_pem());
    // The fallback poll must not be what delivers the change below.
    link.poll_interval = Duration::from_secs(3600);
    let token = CancellationToken::new();
    let follower = tokio::spawn(link.clone().follow(trust.clone(), token.clone()));
    let t0 = Instant::now();
    while trust.current().directory_serial() == 0 || trust.current().crl_number() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "initial fetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(trust.current().member("alpha").is_some());

    // Renewal over mTLS with the current certificate.
    let fresh = KeyPair::generate().expect("key");
    let renewed = link
        .renew(
            &issued.record.certificate_pem,
            &key.serialize_pem(),
            &csr(&fresh),
        )
        .await
        .expect("renew");
    assert_ne!(renewed.serial, issued.record.serial);

    let before = trust.current().crl_number();
    let ca2 = ca.clone();
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        ca2.revoke(
            &RevokeTarget::Domain("alpha.test".into()),
            "privilegeWithdrawn",
        )
    })
    .await
    .expect("join")
    .expect("revoke");
    while trust.current().crl_number() == before || trust.current().member("alpha").is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "revocation not pushed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "revocation reached the member through Watch in {:?}",
        t0.elapsed()
    );
    // The bound is the loop's 10 s timeout; the figure is printed, not asserted.

    // Once revoked, renewal is refused.
    let err = link
        .renew(
            &renewed.certificate_pem,
            &fresh.serialize_pem(),
            &csr(&KeyPair::generate().expect("key")),
        )
        .await
        .expect_err("revoked member renews");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");

    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("follower stops")
        .expect("join");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), service)
        .await
        .expect("service stops")
        .expect("join")
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_association_is_retried_without_panicking() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca =
        Authority::init(&tmp.path().join("a"), "Down", 3650, Settings::default()).expect("init");
    // Bind then drop: a loopback port with nobody behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let trust = Arc::new(TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let link = AssociationLink::new(format!("https://127.0.0.1:{port}"), ca.root_pem());
    assert!(link.poll_once(&trust).await.is_err());
    let token = CancellationToken::new();
    let follower = tokio::spawn(link.follow(trust.clone(), token.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(trust.current().crl_number(), 0);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("stops")
        .expect("join");
    // A malformed URL is an error, not a panic.
    assert!(AssociationLink::new("not a url", ca.root_pem())
        .poll_once(&trust)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_renews_by_itself_at_two_thirds_of_its_lifetime() {
    use caliopen_federation::{IdentityFiles, IdentitySlot, Renewer};
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Arc::new(
        Authority::init(
            &tmp.path().join("a"),
            "Renew Test",
            3650,
            Settings::default(),
        )
        .expect("init"),
    );
    let key = KeyPair::generate().expect("key");
    let csr = CertificateParams::new(vec!["alpha.test".to_owned()])
        .expect("p")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    // One day of validity, 20 hours gone: past two thirds.
    let issued = caliopen_ca::internal::sign_at(
        &ca,
        &SignRequest {
            csr: csr.into_bytes(),
            member_id: "alpha".into(),
            charter_version: "1.0".into(),
            days: Some(1),
            ..Default::default()
        },
        time::OffsetDateTime::now_utc() - time::Duration::hours(20),
    )
    .expect("sign");
    let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
        .await
        .expect("bind");
    let addr = bound.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    let service = tokio::spawn(bound.run(async move { s.cancelled().await }));

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let identity = IdentitySlot::new();
    identity
        .set_pem(
            &issued.record.certificate_pem,
            &key.serialize_pem(),
            &provider,
        )
        .expect("identity");
    let files = IdentityFiles {
        cert: tmp.path().join("member.pem"),
        key: tmp.path().join("member.key"),
    };
    let renewer = Renewer::new(
        AssociationLink::new(format!("https://{addr}"), ca.root_pem()),
        identity.clone(),
        issued.record.certificate_pem.clone(),
        key.serialize_pem(),
        Some(files.clone()),
        provider,
    );
    let token = CancellationToken::new();
    let task = tokio::spawn(renewer.clone().run(token.clone()));
    let t0 = Instant::now();
    while renewer.renewed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no renewal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_pem = std::fs::read_to_string(&files.cert).expect("written");
    assert_ne!(new_pem, issued.record.certificate_pem);
    assert_eq!(renewer.certificate_pem(), new_pem);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&files.key)
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let served = identity.get().expect("identity");
    assert_eq!(
        served.cert[0].as_ref(),
        pem::parse(&new_pem).expect("pem").contents()
    );
    // The fresh certificate is a full 24 h long, so nothing more is due.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        renewer.renewed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        renewer.failures.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    token.cancel();
    task.await.expect("join");

    // Once revoked, renewal is refused.
    let serial = ca
        .list()
        .expect("list")
        .last()
        .expect("entry")
        .record
        .serial
        .clone();
    ca.revoke(&RevokeTarget::Serial(serial), "superseded")
        .expect("revoke");
    assert!(renewer.renew_now().await.is_err());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), service)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean");
}

//! The association service over real TLS on loopback: CRL and directory for
//! anyone, renewal only over mutual TLS for an active member, and `Watch`
//! pushing every change at once — also when the change comes from the
//! command-line tool through the admin socket.

use caliopen_ca::{Authority, BoundService, RevokeTarget, Settings, SignRequest};
use caliopen_proto::label::{Label, LABEL_OID_DER};
use caliopen_proto::pb::association::association_client::AssociationClient;
use caliopen_proto::pb::association::{
    watch_event, GetCrlRequest, GetDirectoryRequest, RenewRequest, WatchRequest,
};
use caliopen_proto::pb::directory::Directory;
use caliopen_proto::{verify_signed_directory, RootKey};
use rcgen::{CertificateParams, KeyPair};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use x509_parser::prelude::{FromDer, X509Certificate};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    _tmp: tempfile::TempDir,
    ca: Arc<Authority>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<caliopen_ca::Result<()>>>,
}

impl Running {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("assoc");
        let ca = Arc::new(
            Authority::init(&dir, "Service Test", 3650, Settings::default()).expect("init"),
        );
        let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
            .await
            .expect("bind");
        let addr = bound.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = rx.await;
        }));
        Self {
            _tmp: tmp,
            ca,
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("service stops in time")
                .expect("join")
                .expect("service ran cleanly");
        }
    }

    async fn client(
        &self,
        identity: Option<(&str, &str)>,
    ) -> Result<AssociationClient<Channel>, tonic::transport::Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.root_pem()));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let ch = Channel::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)?
            .connect_timeout(WAIT)
            .timeout(WAIT)
            .connect()
            .await?;
        Ok(AssociationClient::new(ch))
    }
}

fn csr_for(key: &KeyPair, domains: &[&str]) -> String {
    let params = CertificateParams::new(domains.iter().map(|d| d.to_string()).collect::<Vec<_>>())
        .expect("params");
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

struct Member {
    key: KeyPair,
    cert_pem: String,
    serial: String,
}

fn issue(ca: &Authority, id: &str, domains: &[&str]) -> Member {
    let key = KeyPair::generate().expect("key");
    let issued = ca
        .sign(&SignRequest {
            csr: csr_for(&key, domains).into_bytes(),
            member_id: id.into(),
            charter_version: "1.0".into(),
            successor: Some("successor.test".into()),
            endpoints: vec!["127.0.0.1:7443".into()],
            days: None,
        })
        .expect("sign");
    Member {
        key,
        cert_pem: issued.record.certificate_pem,
        serial: issued.record.serial,
    }
}

fn label_of(cert_pem: &str) -> Label {
    let der = pem::parse(cert_pem).expect("pem").into_contents();
    let (_, cert) = X509Certificate::from_der(&der).expect("cert");
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == LABEL_OID_DER)
        .expect("label extension present");
    assert!(!ext.critical, "label must be non-critical");
    Label::from_der(ext.value).expect("label decodes")
}

fn crl_serials(der: &[u8]) -> Vec<String> {
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).expect("crl");
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_and_directory_for_anyone_and_verifiable() {
    let s = Running::start().await;
    let m = issue(&s.ca, "alpha", &["alpha.test"]);
    let mut c = s
        .client(None)
        .await
        .expect("connect without client certificate");
    let crl = c
        .get_crl(GetCrlRequest {})
        .await
        .expect("GetCrl")
        .into_inner();
    assert!(crl.crl_number >= 1);
    let root_der = s.ca.root_der().to_vec();
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.crl_der)
            .expect("crl");
    parsed
        .verify_signature(root.public_key())
        .expect("CRL signed by the root");
    let signed = c
        .get_directory(GetDirectoryRequest {})
        .await
        .expect("GetDirectory")
        .into_inner();
    let roots = [RootKey::from_cert_der(&root_der).expect("root key")];
    let dir: Directory = verify_signed_directory(&signed, &roots).expect("directory verifies");
    assert_eq!(dir.members.len(), 1);
    assert_eq!(dir.members[0].member_id, "alpha");
    assert_eq!(dir.members[0].successor, "successor.test");
    let l = label_of(&m.cert_pem);
    assert_eq!(
        (l.member_id.as_str(), l.charter_version.as_str()),
        ("alpha", "1.0")
    );
    assert_eq!(l.successor.as_deref(), Some("successor.test"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_needs_mutual_tls_and_an_active_certificate() {
    let s = Running::start().await;
    let m = issue(&s.ca, "alpha", &["alpha.test", "mail.alpha.test"]);
    let key_pem = m.key.serialize_pem();

    // No client certificate: refused.
    let mut anon = s.client(None).await.expect("connect");
    let fresh = KeyPair::generate().expect("key");
    let err = anon
        .renew(RenewRequest {
            csr_pem: csr_for(&fresh, &["alpha.test", "mail.alpha.test"]),
        })
        .await
        .expect_err("renewal without client certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // With its certificate: a CSR for other domains is refused …
    let mut c = s
        .client(Some((&m.cert_pem, &key_pem)))
        .await
        .expect("mTLS connect");
    let err = c
        .renew(RenewRequest {
            csr_pem: csr_for(&fresh, &["alpha.test", "stolen.test"]),
        })
        .await
        .expect_err("other domains");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // … garbage is invalid …
    let err = c
        .renew(RenewRequest {
            csr_pem: "not a csr".into(),
        })
        .await
        .expect_err("garbage CSR");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // … and the same domains (any order) renew.
    let r = c
        .renew(RenewRequest {
            csr_pem: csr_for(&fresh, &["mail.alpha.test", "alpha.test"]),
        })
        .await
        .expect("renewal")
        .into_inner();
    assert_ne!(r.serial, m.serial);
    let l = label_of(&r.certificate_pem);
    assert_eq!(l.member_id, "alpha");
    let list = s.ca.list().expect("list");
    let new = list
        .iter()
        .find(|e| e.record.serial == r.serial)
        .expect("renewed record");
    assert_eq!(new.record.renewed_from.as_deref(), Some(m.serial.as_str()));
    assert_eq!(new.record.domains, ["alpha.test", "mail.alpha.test"]);
    // During the overlap the directory lists both certificates of the member.
    let dir = verify_signed_directory(
        &c.get_directory(GetDirectoryRequest {})
            .await
            .expect("dir")
            .into_inner(),
        &[RootKey::from_cert_der(s.ca.root_der()).expect("root")],
    )
    .expect("verify");
    assert_eq!(dir.members.len(), 1);
    assert_eq!(dir.members[0].cert_sha256.len(), 2);

    // Once revoked, the old certificate renews nothing.
    let ca = s.ca.clone();
    let serial = m.serial.clone();
    tokio::task::spawn_blocking(move || ca.revoke(&RevokeTarget::Serial(serial), "superseded"))
        .await
        .expect("join")
        .expect("revoke");
    let mut c = s
        .client(Some((&m.cert_pem, &key_pem)))
        .await
        .expect("mTLS connect");
    let err = c
        .renew(RenewRequest {
            csr_pem: csr_for(&fresh, &["alpha.test", "mail.alpha.test"]),
        })
        .await
        .expect_err("revoked member");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("revoked"), "{err}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_foreign_certificates_cannot_renew() {
    let s = Running::start().await;
    // Issued 40 days ago for one day.
    let key = KeyPair::generate().expect("key");
    let old =
        s.ca.sign_at(
            &SignRequest {
                csr: csr_for(&key, &["old.test"]).into_bytes(),
                member_id: "old".into(),
                charter_version: "1.0".into(),
                days: Some(1),
                ..Default::default()
            },
            time::OffsetDateTime::now_utc() - time::Duration::days(40),
        )
        .expect("sign in the past");
    let key_pem = key.serialize_pem();
    let listed = s.ca.list().expect("list");
    assert_eq!(listed[0].status, caliopen_ca::Status::Expired);
    let csr = csr_for(&KeyPair::generate().expect("key"), &["old.test"]);
    // The library refuses it …
    let err =
        s.ca.renew(
            &pem::parse(&old.record.certificate_pem)
                .expect("pem")
                .into_contents(),
            csr.as_bytes(),
        )
        .expect_err("expired");
    assert!(err.to_string().contains("not valid now"), "{err}");
    // … and so does the service, at the handshake or in the handler.
    let refused = match s
        .client(Some((&old.record.certificate_pem, &key_pem)))
        .await
    {
        Err(_) => true,
        Ok(mut c) => c
            .renew(RenewRequest {
                csr_pem: csr.clone(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "expired certificate renewed");

    // A certificate from another association.
    let other_tmp = tempfile::tempdir().expect("tempdir");
    let other = Authority::init(
        &other_tmp.path().join("o"),
        "Other",
        3650,
        Settings::default(),
    )
    .expect("init");
    let f = issue(&other, "foreign", &["foreign.test"]);
    let fkey = f.key.serialize_pem();
    let refused = match s.client(Some((&f.cert_pem, &fkey))).await {
        Err(_) => true,
        Ok(mut c) => c
            .renew(RenewRequest {
                csr_pem: csr_for(&f.key, &["foreign.test"]),
            })
            .await
            .is_err(),
    };
    assert!(refused, "foreign certificate renewed");
    assert!(s
        .ca
        .list()
        .expect("list")
        .iter()
        .all(|e| e.record.member_id != "foreign"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_pushes_current_state_then_each_revocation() {
    let s = Running::start().await;
    let m = issue(&s.ca, "alpha", &["alpha.test"]);
    let mut c = s.client(None).await.expect("connect");
    let mut stream = c
        .watch(WatchRequest {
            known_crl_number: 0,
            known_directory_serial: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut crl_number = 0;
    let mut dir_serial = 0;
    for _ in 0..2 {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("initial events")
            .expect("stream")
            .expect("event");
        match ev.event.expect("event body") {
            watch_event::Event::Crl(c) => crl_number = c.crl_number,
            watch_event::Event::Directory(d) => {
                dir_serial = verify_signed_directory(
                    &d,
                    &[RootKey::from_cert_der(s.ca.root_der()).expect("root")],
                )
                .expect("verify")
                .serial
            }
        }
    }
    assert!(
        crl_number > 0 && dir_serial > 0,
        "initial CRL and directory pushed"
    );

    let ca = s.ca.clone();
    let serial = m.serial.clone();
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || {
        ca.revoke(
            &RevokeTarget::Domain("alpha.test".into()),
            "privilegeWithdrawn",
        )
    })
    .await
    .expect("join")
    .expect("revoke");
    let mut got_crl = false;
    let mut got_dir = false;
    while !(got_crl && got_dir) {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("pushed within the wait")
            .expect("stream")
            .expect("event");
        match ev.event.expect("event body") {
            watch_event::Event::Crl(c) => {
                assert!(c.crl_number > crl_number);
                assert!(crl_serials(&c.crl_der).contains(&serial));
                got_crl = true;
            }
            watch_event::Event::Directory(d) => {
                let dir = verify_signed_directory(
                    &d,
                    &[RootKey::from_cert_der(s.ca.root_der()).expect("root")],
                )
                .expect("verify");
                assert!(dir.serial > dir_serial);
                assert!(dir.members.is_empty(), "revoked member still listed");
                got_dir = true;
            }
        }
    }
    println!("revocation pushed to watcher in {:?}", t0.elapsed());
    s.stop().await;
}

/// The real binary: `serve` holds the state, the other commands go through
/// its admin socket, and a watcher sees a command-line revocation at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_running_service_and_changes_are_pushed() {
    let bin = env!("CARGO_BIN_EXE_caliopen-ca");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("assoc");
    let d = dir.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin)
            .args(args)
            .output()
            .expect("run");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8")
    };
    run(&["init", "--dir", d, "--name", "Live Association"]);
    let mut serve = std::process::Command::new(bin)
        .args(["serve", "--dir", d, "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let mut line = String::new();
    BufReader::new(serve.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read listen line");
    let addr = line
        .trim()
        .trim_start_matches("listening on https://")
        .to_owned();
    assert!(dir.join("admin.sock").exists());

    let key = KeyPair::generate().expect("key");
    let csr_file = tmp.path().join("m.csr");
    std::fs::write(&csr_file, csr_for(&key, &["beta.test"])).expect("write");
    let out_file = tmp.path().join("m.pem");
    let out = run(&[
        "sign",
        "--dir",
        d,
        "--csr",
        csr_file.to_str().expect("utf-8"),
        "--member-id",
        "beta",
        "--charter-version",
        "1.0",
        "--out",
        out_file.to_str().expect("utf-8"),
    ]);
    let serial = out.split_whitespace().nth(2).expect("serial").to_owned();
    assert!(run(&["list", "--dir", d]).contains(&serial));
    // A DER request goes through the socket as well.
    let key2 = KeyPair::generate().expect("key");
    let der_file = tmp.path().join("m2.der");
    let params = CertificateParams::new(vec!["gamma.test".to_string()]).expect("params");
    std::fs::write(
        &der_file,
        params.serialize_request(&key2).expect("csr").der(),
    )
    .expect("write");
    run(&[
        "sign",
        "--dir",
        d,
        "--csr",
        der_file.to_str().expect("utf-8"),
        "--member-id",
        "gamma",
        "--charter-version",
        "1.0",
        "--out",
        tmp.path().join("m2.pem").to_str().expect("utf-8"),
    ]);

    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("ca.pem");
    let ch = Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut c = AssociationClient::new(ch);
    // `crl`, `directory` and `baseline` run inside the service: it publishes what they issue.
    let crl_file = tmp.path().join("c.crl");
    let out = run(&[
        "crl",
        "--dir",
        d,
        "--out",
        crl_file.to_str().expect("utf-8"),
    ]);
    let n: u64 = out
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("number");
    let known = c
        .get_crl(GetCrlRequest {})
        .await
        .expect("crl")
        .into_inner()
        .crl_number;
    assert_eq!(known, n, "the service publishes the CRL the command issued");
    run(&["baseline", "--dir", d, "--min-version", "0.1.0"]);
    let dir_file = tmp.path().join("d.bin");
    let out = run(&[
        "directory",
        "--dir",
        d,
        "--out",
        dir_file.to_str().expect("utf-8"),
    ]);
    let serial_d: u64 = out
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("serial");
    let root_der = pem::parse(&ca_pem).expect("pem").into_contents();
    let published = verify_signed_directory(
        &c.get_directory(GetDirectoryRequest {})
            .await
            .expect("dir")
            .into_inner(),
        &[RootKey::from_cert_der(&root_der).expect("root")],
    )
    .expect("verify");
    assert_eq!(published.serial, serial_d);
    assert_eq!(published.min_software_version, "0.1.0");
    assert_eq!(published.members.len(), 2);
    let mut stream = c
        .watch(WatchRequest {
            known_crl_number: known,
            known_directory_serial: u64::MAX,
        })
        .await
        .expect("watch")
        .into_inner();

    let t0 = Instant::now();
    run(&["revoke", "--dir", d, "--domain", "beta.test"]);
    let ev = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("pushed within the wait")
        .expect("stream")
        .expect("event");
    let elapsed = t0.elapsed();
    match ev.event.expect("body") {
        watch_event::Event::Crl(c) => {
            assert!(c.crl_number > known);
            assert!(crl_serials(&c.crl_der).contains(&serial));
        }
        other => panic!("expected a CRL, got {other:?}"),
    }
    println!(
        "command-line revocation reached the watcher in {elapsed:?} (including process start)"
    );

    // Stopped by SIGTERM: exits cleanly and removes its socket.
    let pid = serve.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let status = tokio::task::spawn_blocking(move || serve.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "serve exit: {status:?}");
    assert!(!dir.join("admin.sock").exists());
    // And the commands work on the directory again.
    assert!(run(&["list", "--dir", d]).contains("revoked"));
}

/// A service killed with SIGKILL leaves its socket behind: the commands fall
/// back to the state directory, and the next `serve` replaces the socket.
#[test]
fn a_killed_service_leaves_nothing_that_blocks() {
    let bin = env!("CARGO_BIN_EXE_caliopen-ca");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("assoc");
    let d = dir.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin)
            .args(args)
            .output()
            .expect("run");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8")
    };
    let serve = || {
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--dir", d, "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert!(
            line.starts_with("listening on https://127.0.0.1:"),
            "{line:?}"
        );
        child
    };
    run(&["init", "--dir", d, "--name", "Crash Association"]);
    let mut first = serve();
    first.kill().expect("SIGKILL");
    first.wait().expect("wait");
    assert!(
        dir.join("admin.sock").exists(),
        "socket left behind by SIGKILL"
    );
    run(&["list", "--dir", d]);
    let mut second = serve();
    run(&["list", "--dir", d]);
    // Two services on one directory: the second is refused with one line.
    let o = std::process::Command::new(bin)
        .args(["serve", "--dir", d, "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("caliopen-ca: error:"), "{err}");
    let pid = second.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(second.wait().expect("wait").success());
}

/// `Renew` reads exactly one CSR: junk or a second request after it is
/// refused, not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_refuses_a_csr_followed_by_anything() {
    let s = Running::start().await;
    let m = issue(&s.ca, "alpha", &["alpha.test"]);
    let key_pem = m.key.serialize_pem();
    let mut c = s
        .client(Some((&m.cert_pem, &key_pem)))
        .await
        .expect("mTLS connect");
    let good = csr_for(&KeyPair::generate().expect("key"), &["alpha.test"]);
    let second = csr_for(&KeyPair::generate().expect("key"), &["alpha.test"]);
    for (what, csr_pem) in [
        ("junk", format!("{good}junk")),
        ("a second CSR", format!("{good}{second}")),
    ] {
        let err = c.renew(RenewRequest { csr_pem }).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().starts_with("invalid CSR: "), "{err}");
        assert!(!err.message().contains('\n'), "one line: {err}");
    }
    assert_eq!(s.ca.list().expect("list").len(), 1, "nothing was issued");
    s.stop().await;
}

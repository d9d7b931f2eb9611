//! The association service over real TLS on loopback: CRL and directory for
//! anyone, renewal only over mutual TLS for an active member, and `Watch`
//! pushing every change at once — also when the change comes from the
//! command-line tool through the admin socket.

use caliopen_ca::{
    internal, Authority, BoundService, RevokeTarget, ServiceConfig, Settings, SignRequest,
};
use caliopen_proto::label::{Label, LABEL_OID_DER};
use caliopen_proto::pb::association::association_client::AssociationClient;
use caliopen_proto::pb::association::{
    watch_event, GetCrlRequest, GetDirectoryRequest, RenewRequest, WatchRequest,
};
use caliopen_proto::pb::directory::Directory;
use caliopen_proto::{verify_signed_directory, RootKey};
use rcgen::{CertificateParams, KeyPair};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
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
        Self::start_with(Settings::default(), ServiceConfig::default()).await
    }

    async fn start_with(settings: Settings, config: ServiceConfig) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("assoc");
        let ca = Arc::new(Authority::init(&dir, "Service Test", 3650, settings).expect("init"));
        let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
            .await
            .expect("bind")
            .with_config(config);
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
        self.client_from(identity, None).await
    }

    /// A client whose connection leaves from `local` (any 127/8 address is
    /// loopback on Linux), to stand for different source addresses.
    async fn client_from(
        &self,
        identity: Option<(&str, &str)>,
        local: Option<IpAddr>,
    ) -> Result<AssociationClient<Channel>, tonic::transport::Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.root_pem()));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let ch = Channel::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)?
            .local_address(local)
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
    // Each listed certificate names the log entry that carries it.
    let entries = s.ca.log_entry_bytes().expect("log entries");
    assert_eq!(dir.members[0].cert_log_index.len(), 2);
    for (sha, &i) in dir.members[0]
        .cert_sha256
        .iter()
        .zip(&dir.members[0].cert_log_index)
    {
        assert!(
            i < dir.log_size,
            "index {i} within the log the directory covers"
        );
        let e = caliopen_ca::tlog::Entry::decode(&entries[i as usize]).expect("entry");
        let der = match e.kind {
            caliopen_ca::tlog::EntryKind::Issuance { cert_der }
            | caliopen_ca::tlog::EntryKind::Renewal { cert_der, .. } => cert_der,
            other => panic!("entry {i} is a {}", other.name()),
        };
        assert_eq!(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref(),
            &sha[..]
        );
    }

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
    let old = internal::sign_at(
        &s.ca,
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
    let log_key = s.ca.log_verifier().clone();
    let mut log_size = None;
    for _ in 0..3 {
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
            watch_event::Event::Checkpoint(cp) => {
                let (c, _) = caliopen_ca::tlog::open_timestamped(cp.note.as_bytes(), &log_key)
                    .expect("the log's dated checkpoint");
                log_size = Some(c.size);
            }
        }
    }
    assert!(
        crl_number > 0 && dir_serial > 0,
        "initial CRL and directory pushed"
    );
    let log_size = log_size.expect("initial checkpoint pushed");

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
    let mut got_cp = false;
    while !(got_crl && got_dir && got_cp) {
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
            watch_event::Event::Checkpoint(cp) => {
                let (c, _) = caliopen_ca::tlog::open_timestamped(cp.note.as_bytes(), &log_key)
                    .expect("the log's dated checkpoint");
                assert_eq!(c.size, log_size + 1, "the revocation's checkpoint");
                got_cp = true;
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
    // Witnesses are registered through the socket as well, and published.
    let wname = "w.test/witness";
    let wsigner = caliopen_ca::tlog::Signer::from_seed(wname, &[5; 32]).expect("key");
    let wkey = caliopen_ca::tlog::CosignatureVerifier::new(wname, *wsigner.verifier().public_key())
        .to_string();
    let out = run(&[
        "log",
        "witness",
        "add",
        "--dir",
        d,
        "--name",
        "w",
        "--vkey",
        &wkey,
        "--url",
        "https://127.0.0.1:9/witness",
    ]);
    assert!(out.contains("1 witness(es), quorum 0"), "{out}");
    assert!(run(&["log", "witness", "list", "--dir", d]).contains(&wkey));
    let published = verify_signed_directory(
        &c.get_directory(GetDirectoryRequest {})
            .await
            .expect("dir")
            .into_inner(),
        &[RootKey::from_cert_der(&root_der).expect("root")],
    )
    .expect("verify");
    assert_eq!(published.witnesses.len(), 1);
    assert_eq!(published.witnesses[0].vkey, wkey);
    assert_eq!(published.witness_quorum, 0);
    let mut stream = c
        .watch(WatchRequest {
            known_crl_number: known,
            known_directory_serial: u64::MAX,
        })
        .await
        .expect("watch")
        .into_inner();

    // The stream opens with the current checkpoint.
    let ev = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("checkpoint pushed at once")
        .expect("stream")
        .expect("event");
    assert!(matches!(ev.event, Some(watch_event::Event::Checkpoint(_))));
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

fn sha256_of(cert_pem: &str) -> Vec<u8> {
    let der = pem::parse(cert_pem).expect("pem").into_contents();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
        .as_ref()
        .to_vec()
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// The directory as published now: its encoded size and its one member's
/// certificate fingerprints.
fn published_member_certs(ca: &Authority) -> (usize, Vec<Vec<u8>>) {
    let p = ca.published();
    let d = caliopen_proto::decode_and_verify(
        &p.directory,
        &[RootKey::from_cert_der(ca.root_der()).expect("root")],
    )
    .expect("directory verifies");
    assert!(d.members.len() <= 1, "one member in these tests");
    let certs = d
        .members
        .first()
        .map(|m| m.cert_sha256.clone())
        .unwrap_or_default();
    (p.directory.len(), sorted(certs))
}

/// The probe's case: 300 renewals in a row with one certificate. Only the
/// burst is issued, the rest is RESOURCE_EXHAUSTED with when to retry, and
/// the directory lists the member's newest certificate and the one it
/// renewed with, whatever the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_renewals_is_limited_and_the_directory_stays_bounded() {
    let config = ServiceConfig::default();
    let burst = config.renew_burst as usize;
    let s = Running::start_with(Settings::default(), config).await;
    let m = issue(&s.ca, "alpha", &["alpha.test"]);
    let (size_before, _) = published_member_certs(&s.ca);
    let key_pem = m.key.serialize_pem();
    let mut c = s
        .client(Some((&m.cert_pem, &key_pem)))
        .await
        .expect("mTLS connect");
    let dir_serial_before = s.ca.published().directory_serial;
    let mut issued = Vec::new();
    let mut exhausted = 0;
    let mut size_after_first = 0;
    for i in 0..300 {
        let fresh = KeyPair::generate().expect("key");
        match c
            .renew(RenewRequest {
                csr_pem: csr_for(&fresh, &["alpha.test"]),
            })
            .await
        {
            Ok(r) => {
                issued.push((r.into_inner(), fresh));
                if i == 0 {
                    size_after_first = published_member_certs(&s.ca).0;
                }
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
                assert!(e.message().contains("retry in"), "{e}");
                assert!(!e.message().contains('\n'), "{e}");
                exhausted += 1;
            }
        }
    }
    assert_eq!(issued.len(), burst, "only the burst is issued");
    assert_eq!(exhausted, 300 - burst);
    assert_eq!(s.ca.list().expect("list").len(), 1 + burst);
    assert_eq!(
        s.ca.published().directory_serial,
        dir_serial_before + burst as u64,
        "one directory per issued certificate, none per refusal"
    );
    // Listed: the newest and the certificate the member renewed with.
    let (size_after, listed) = published_member_certs(&s.ca);
    let newest = &issued.last().expect("issued").0;
    assert_eq!(
        listed,
        sorted(vec![
            sha256_of(&m.cert_pem),
            sha256_of(&newest.certificate_pem)
        ])
    );
    // Signatures and serials vary by a few bytes.
    assert!(
        size_after <= size_after_first + 8,
        "{size_after} vs {size_after_first}"
    );
    println!(
        "300 renewals: {} issued, {exhausted} refused; directory {size_before} -> {size_after} bytes",
        issued.len()
    );

    // The budget is the member's, not the certificate's.
    let (r, key) = issued.pop().expect("issued");
    let mut c2 = s
        .client(Some((&r.certificate_pem, &key.serialize_pem())))
        .await
        .expect("mTLS connect");
    let err = c2
        .renew(RenewRequest {
            csr_pem: csr_for(&KeyPair::generate().expect("key"), &["alpha.test"]),
        })
        .await
        .expect_err("same member");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    // A certificate that has left the directory cannot renew at all.
    let (gone, gone_key) = issued.first().expect("issued");
    let mut c3 = s
        .client(Some((&gone.certificate_pem, &gone_key.serialize_pem())))
        .await
        .expect("mTLS connect");
    let err = c3
        .renew(RenewRequest {
            csr_pem: csr_for(&KeyPair::generate().expect("key"), &["alpha.test"]),
        })
        .await
        .expect_err("superseded");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("superseded"), "{err}");
    s.stop().await;
}

/// With a short overlap, the superseded certificate leaves the directory by
/// itself and the pruned directory is pushed to a watcher. (The wait is the
/// usual generous timeout; nothing asserts how fast.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_certificate_leaves_after_the_overlap_and_watchers_see_it() {
    let settings = Settings {
        superseded_overlap: time::Duration::seconds(1),
        ..Settings::default()
    };
    let s = Running::start_with(settings, ServiceConfig::default()).await;
    let m = issue(&s.ca, "alpha", &["alpha.test"]);
    let key_pem = m.key.serialize_pem();
    let mut c = s
        .client(Some((&m.cert_pem, &key_pem)))
        .await
        .expect("mTLS connect");
    let r = c
        .renew(RenewRequest {
            csr_pem: csr_for(&KeyPair::generate().expect("key"), &["alpha.test"]),
        })
        .await
        .expect("renew")
        .into_inner();
    let serial_after_renewal = s.ca.published().directory_serial;
    let mut stream = c
        .watch(WatchRequest {
            known_crl_number: u64::MAX,
            known_directory_serial: serial_after_renewal,
        })
        .await
        .expect("watch")
        .into_inner();
    let roots = [RootKey::from_cert_der(s.ca.root_der()).expect("root")];
    let want = vec![sha256_of(&r.certificate_pem)];
    loop {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("pruned directory pushed within the wait")
            .expect("stream")
            .expect("event");
        if let Some(watch_event::Event::Directory(d)) = ev.event {
            let dir = verify_signed_directory(&d, &roots).expect("verify");
            assert!(dir.serial > serial_after_renewal);
            if dir.members[0].cert_sha256 == want {
                break;
            }
        }
    }
    assert_eq!(published_member_certs(&s.ca).1, want);
    let old =
        s.ca.list()
            .expect("list")
            .into_iter()
            .find(|e| e.record.serial == m.serial)
            .expect("old record");
    assert_eq!(old.status, caliopen_ca::Status::Superseded);
    s.stop().await;
}

/// Opens the authority again right after the test dropped it: sled's
/// flusher thread holds the database a moment after its last handle goes
/// (a restarted process never sees this), so a lock error is retried.
fn reopen(dir: &std::path::Path, settings: Settings) -> Authority {
    let t0 = std::time::Instant::now();
    loop {
        match Authority::open(dir, settings.clone()) {
            Ok(ca) => return ca,
            Err(e)
                if e.to_string().contains("in use") && t0.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

/// Supersession on the authority with an explicit clock: bounded listing,
/// an overlap that is never extended, pruning at its end, and all of it
/// durable across a reopen.
#[test]
fn supersession_is_bounded_and_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("assoc");
    let settings = Settings::default();
    let overlap = settings.superseded_overlap;
    let ca = Authority::init(&dir, "Clock Test", 3650, settings.clone()).expect("init");
    let a = issue(&ca, "alpha", &["alpha.test"]);
    let a_der = pem::parse(&a.cert_pem).expect("pem").into_contents();
    let csr = || csr_for(&KeyPair::generate().expect("key"), &["alpha.test"]);
    let t0 = time::OffsetDateTime::now_utc();

    let b = internal::renew_at(&ca, &a_der, csr().as_bytes(), t0).expect("renew");
    let listed = |ca: &Authority| published_member_certs(ca).1;
    assert_eq!(
        listed(&ca),
        sorted(vec![
            sha256_of(&a.cert_pem),
            sha256_of(&b.record.certificate_pem)
        ])
    );
    let end = (t0 + overlap).unix_timestamp();
    assert_eq!(ca.next_prune_at(), Some(end));
    // Reopened in the overlap: still due at the same time.
    drop(ca);
    let ca = reopen(&dir, settings.clone());
    assert_eq!(ca.next_prune_at(), Some(end));

    // Renewing again with A: B (never used) leaves at once; A keeps its
    // original deadline, not a fresh one.
    let c = internal::renew_at(
        &ca,
        &a_der,
        csr().as_bytes(),
        t0 + time::Duration::seconds(10),
    )
    .expect("renew again");
    assert_eq!(
        listed(&ca),
        sorted(vec![
            sha256_of(&a.cert_pem),
            sha256_of(&c.record.certificate_pem)
        ])
    );
    assert_eq!(ca.next_prune_at(), Some(end));

    let before_end = t0 + overlap - time::Duration::seconds(1);
    assert!(!internal::refresh_if_due_at(&ca, before_end).expect("refresh"));
    assert_eq!(listed(&ca).len(), 2);
    let serial = ca.published().directory_serial;
    assert!(internal::refresh_if_due_at(&ca, t0 + overlap).expect("refresh"));
    assert_eq!(ca.published().directory_serial, serial + 1);
    assert_eq!(listed(&ca), vec![sha256_of(&c.record.certificate_pem)]);
    assert_eq!(ca.next_prune_at(), None);
    let err =
        internal::renew_at(&ca, &a_der, csr().as_bytes(), t0 + overlap).expect_err("A is out");
    assert!(err.to_string().contains("superseded"), "{err}");

    // Durable: reopened, nothing comes back and nothing more is due.
    drop(ca);
    let ca = reopen(&dir, settings);
    assert_eq!(listed(&ca), vec![sha256_of(&c.record.certificate_pem)]);
    assert_eq!(ca.next_prune_at(), None);
    let serial = ca.published().directory_serial;
    assert!(
        !internal::refresh_if_due_at(&ca, t0 + overlap + time::Duration::seconds(60))
            .expect("refresh")
    );
    assert_eq!(ca.published().directory_serial, serial);
    let at = (t0 + overlap).unix_timestamp();
    let st: Vec<_> = ca
        .list()
        .expect("list")
        .into_iter()
        .map(|e| (e.record.serial.clone(), e.record.status(at)))
        .collect();
    assert!(st.contains(&(a.serial.clone(), caliopen_ca::Status::Superseded)));
    assert!(st.contains(&(b.record.serial.clone(), caliopen_ca::Status::Superseded)));
    assert!(st.contains(&(c.record.serial.clone(), caliopen_ca::Status::Active)));
}

async fn watch_from(
    s: &Running,
    identity: Option<(&str, &str)>,
    local: [u8; 4],
) -> Result<tonic::Streaming<caliopen_proto::pb::association::WatchEvent>, tonic::Status> {
    let mut c = s
        .client_from(identity, Some(IpAddr::from(local)))
        .await
        .expect("connect");
    c.watch(WatchRequest {
        known_crl_number: 0,
        known_directory_serial: 0,
    })
    .await
    .map(|r| r.into_inner())
}

/// Anonymous watchers get a share of the slots and a per-address cap; a
/// member (a certificate this association lists) still gets in when the
/// anonymous share is taken; a revoked certificate counts as anonymous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_slots_are_reserved_for_members() {
    let config = ServiceConfig {
        max_watchers: 4,
        max_anonymous_watchers: 2,
        max_anonymous_watchers_per_source: 1,
        max_watchers_per_member: 1,
        ..ServiceConfig::default()
    };
    let s = Running::start_with(Settings::default(), config).await;
    let alpha = issue(&s.ca, "alpha", &["alpha.test"]);
    let gone = issue(&s.ca, "gone", &["gone.test"]);
    let ca = s.ca.clone();
    let serial = gone.serial.clone();
    tokio::task::spawn_blocking(move || ca.revoke(&RevokeTarget::Serial(serial), "unspecified"))
        .await
        .expect("join")
        .expect("revoke");
    let exhausted = |r: Result<_, tonic::Status>, needle: &str| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert!(
            e.message().contains(needle),
            "{e:?} should mention {needle:?}"
        );
        assert!(!e.message().contains('\n'), "{e}");
    };

    let _a1 = watch_from(&s, None, [127, 0, 0, 1])
        .await
        .expect("first anonymous");
    exhausted(watch_from(&s, None, [127, 0, 0, 1]).await, "127.0.0.1");
    let _a2 = watch_from(&s, None, [127, 0, 0, 2])
        .await
        .expect("anonymous from another address");
    exhausted(
        watch_from(&s, None, [127, 0, 0, 3]).await,
        "reserved for members",
    );
    // The revoked member's certificate passes TLS but is no member's now.
    let gone_key = gone.key.serialize_pem();
    exhausted(
        watch_from(&s, Some((&gone.cert_pem, &gone_key)), [127, 0, 0, 4]).await,
        "reserved for members",
    );
    // A member gets in, from an address that holds an anonymous slot too.
    let key = alpha.key.serialize_pem();
    let mut m = watch_from(&s, Some((&alpha.cert_pem, &key)), [127, 0, 0, 1])
        .await
        .expect("member watches while the anonymous share is full");
    let ev = tokio::time::timeout(WAIT, m.message())
        .await
        .expect("initial event")
        .expect("stream")
        .expect("event");
    assert!(ev.event.is_some());
    // One member cannot take the other members' slots.
    exhausted(
        watch_from(&s, Some((&alpha.cert_pem, &key)), [127, 0, 0, 5]).await,
        "member alpha",
    );
    s.stop().await;
}

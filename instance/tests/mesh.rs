//! Two labelled instances and the association on loopback, driven through
//! the `caliopen` binary: a message submitted at A for a user of B arrives at
//! B over the mesh (`via = mesh`).

use caliopen_ca::{Authority, BoundService, Settings, SignRequest};
use caliopen_proto::pb::client as pb;
use caliopen_proto::pb::client::client_client::ClientClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod common;

use common::caliopen_ok as caliopen;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Instance {
    data: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    smtp: Option<SocketAddr>,
    submission: Option<SocketAddr>,
    api: Option<SocketAddr>,
}

impl Instance {
    fn c(&self) -> &str {
        self.config.to_str().expect("utf-8")
    }
    fn start(&mut self) {
        let stderr = Stdio::from(std::fs::File::create(self.data.join("daemon.log")).expect("log"));
        let (child, b) = common::spawn_daemon(&self.config, stderr, &[("RUST_LOG", "info")]);
        self.smtp = Some(b.smtp);
        self.submission = Some(b.submission);
        self.api = b.api;
        self.child = Some(child);
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill");
            assert!(
                c.wait().expect("wait").success(),
                "daemon exit: {}",
                std::fs::read_to_string(self.data.join("daemon.log")).unwrap_or_default()
            );
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn make_instance(
    root: &Path,
    ca: &Authority,
    url: &str,
    id: &str,
    domain: &str,
    relay: Option<(String, PathBuf)>,
) -> Instance {
    let data = root.join(id);
    let d = data.to_str().expect("utf-8");
    let mesh = format!("127.0.0.1:{}", free_udp_port());
    let mut args: Vec<String> = [
        "init",
        "--data",
        d,
        "--domain",
        domain,
        "--smtp",
        "127.0.0.1:0",
        "--submission",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--mesh",
        &mesh,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some((r, _)) = &relay {
        args.push("--relay".into());
        args.push(r.clone());
    }
    caliopen(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    if let Some((r, ca)) = &relay {
        std::fs::copy(ca, data.join("relay-ca.pem")).expect("copy");
        let cfg = data.join("caliopen.toml");
        let text = std::fs::read_to_string(&cfg).expect("read");
        let line = format!("relay = \"{r}\"\n");
        std::fs::write(
            &cfg,
            text.replace(&line, &format!("{line}relay_ca = \"relay-ca.pem\"\n")),
        )
        .expect("write");
    }
    let csr = std::fs::read(data.join("member.csr.pem")).expect("csr");
    let issued = ca
        .sign(&SignRequest {
            csr,
            member_id: id.into(),
            charter_version: "1.0".into(),
            endpoints: vec![mesh],
            ..Default::default()
        })
        .expect("sign");
    let cert = root.join(format!("{id}.signed.pem"));
    std::fs::write(&cert, issued.record.certificate_pem).expect("write");
    let ca_file = root.join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write");
    let config = data.join("caliopen.toml");
    let out = caliopen(
        &[
            "join",
            "--config",
            config.to_str().expect("utf-8"),
            "--ca",
            ca_file.to_str().expect("utf-8"),
            "--cert",
            cert.to_str().expect("utf-8"),
            "--association",
            url,
        ],
        None,
    );
    assert!(out.contains(&format!("joined as member {id}")), "{out}");
    Instance {
        data,
        config,
        child: None,
        smtp: None,
        submission: None,
        api: None,
    }
}

/// alice submits one message at A (smtplib, STARTTLS, AUTH).
async fn alice_sends(a: &Instance, to: &str, subject: &str) {
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["{to}"], b"From: alice@alpha.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n")
s.quit()
"#,
        tls = a.data.join("tls.pem").display(),
        port = a.submission.expect("submission").port()
    );
    let o = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Logs in to an instance's client API over TLS (its own certificate as the root).
async fn client(
    inst: &Instance,
    address: &str,
    password: &str,
) -> (ClientClient<tonic::transport::Channel>, String) {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let pem = std::fs::read(inst.data.join("tls.pem")).expect("tls.pem");
    let ch = Endpoint::from_shared(format!("https://{}", inst.api.expect("api listener")))
        .expect("uri")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect()
        .await
        .expect("connect to the client API");
    let mut c = ClientClient::new(ch);
    let token = c
        .login(pb::LoginRequest {
            address: address.into(),
            password: password.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .token;
    (c, token)
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

/// A user at A asks for contacts at B: the answer comes from B over the
/// mesh, B sees only an 8-bit prefix, and an opted-out user is not answered.
async fn public_levels_across_the_mesh(a: &Instance, b: &Instance) {
    // carol at B opts out through her own client API session.
    caliopen(
        &[
            "user",
            "add",
            "--config",
            b.c(),
            "carol",
            "--password-stdin",
        ],
        Some("carol password\n"),
    );
    let (mut cc, ct) = client(b, "carol@beta.test", "carol password").await;
    let me = cc
        .set_public_level(bearer(pb::SetPublicLevelRequest { publish: false }, &ct))
        .await
        .expect("opt out")
        .into_inner();
    assert!(!me.published);
    // A wrong password is refused with a status, not a token.
    let mut bad = cc.clone();
    let e = bad
        .login(pb::LoginRequest {
            address: "carol@beta.test".into(),
            password: "nope".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = bad
        .me(bearer(pb::MeRequest {}, "not-a-token"))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Bob's level as B computes it.
    let (mut bc, bt) = client(b, "bob@beta.test", "bob password").await;
    let bob = bc
        .me(bearer(pb::MeRequest {}, &bt))
        .await
        .expect("me")
        .into_inner();
    assert!(bob.published);
    // The schema is discoverable by reflection.
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let pem = std::fs::read(b.data.join("tls.pem")).expect("tls.pem");
        let ch =
            tonic::transport::Endpoint::from_shared(format!("https://{}", b.api.expect("api")))
                .expect("uri")
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                        .domain_name("localhost"),
                )
                .expect("tls")
                .connect()
                .await
                .expect("connect");
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .expect("reflection")
            .into_inner();
        let first = stream.message().await.expect("answer").expect("one");
        let Some(MessageResponse::ListServicesResponse(l)) = first.message_response else {
            panic!("unexpected reflection answer {first:?}");
        };
        let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"caliopen.client.v1.Client"), "{names:?}");
    }

    let t0 = Instant::now();
    let out = caliopen(
        &[
            "privacy",
            "--config",
            a.c(),
            "--user",
            "alice",
            "--contact",
            "bob@beta.test",
            "--json",
        ],
        None,
    );
    println!(
        "public level of bob asked across the mesh in {:?}",
        t0.elapsed()
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let c = &v["contact"];
    assert_eq!(c["lookup"]["member"], "beta", "{v}");
    assert_eq!(c["lookup"]["found"], true, "{v}");
    assert_eq!(c["lookup"]["prefix_bits"], 8, "{v}");
    assert_eq!(c["public_level"]["level"], bob.public_level, "{v}");
    assert_eq!(c["public_level"]["member"], "beta", "{v}");
    assert_eq!(c["labelled_member"], "beta", "{v}");
    assert!(
        c["privacy"]["explanation"]
            .as_array()
            .expect("explanation")
            .iter()
            .any(|e| e["feature"] == "contact.public_level"),
        "{v}"
    );
    // Alice wrote to bob over the mesh: he is in her contact book.
    assert_eq!(c["known"], true, "{v}");
    assert_eq!(c["sent"], 1, "{v}");

    let out = caliopen(
        &[
            "privacy",
            "--config",
            a.c(),
            "--user",
            "alice",
            "--contact",
            "carol@beta.test",
            "--json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["contact"]["lookup"]["member"], "beta", "{v}");
    assert_eq!(v["contact"]["lookup"]["found"], false, "{v}");
    assert!(v["contact"]["public_level"].is_null(), "{v}");
    // The human form names the member and the prefix.
    let text = caliopen(
        &[
            "privacy",
            "--config",
            a.c(),
            "--user",
            "alice",
            "--contact",
            "bob@beta.test",
        ],
        None,
    );
    assert!(text.contains("8-bit hash prefix"), "{text}");

    // What B saw: prefixes only, never an address or a full hash.
    let log = std::fs::read_to_string(b.data.join("daemon.log")).expect("log");
    let answered: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("privacy query answered"))
        .collect();
    assert!(!answered.is_empty(), "{log}");
    for l in &answered {
        assert!(l.contains("prefix_bits=8"), "{l}");
        assert!(!l.contains("bob@") && !l.contains("carol@"), "{l}");
    }
    for addr in ["bob@beta.test", "carol@beta.test"] {
        let full = hex::encode(caliopen_instance::privacy::public::address_hash(addr));
        assert!(
            !log.contains(&full),
            "B's log holds the full hash of {addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_to_b_goes_over_the_mesh() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Arc::new(
        Authority::init(
            &tmp.path().join("assoc"),
            "Instance Mesh Test",
            3650,
            Settings::default(),
        )
        .expect("init"),
    );
    let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
        .await
        .expect("bind");
    let url = format!("https://{}", bound.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let s = stop.clone();
    let service = tokio::spawn(bound.run(async move { s.cancelled().await }));

    let root = tmp.path().to_owned();
    let (ca2, url2) = (ca.clone(), url.clone());
    // B first: A relays outside mail to B's MX, so that once B is revoked
    // A's mail for B visibly takes the SMTP road.
    let (root2, ca3, url3) = (root.clone(), ca2.clone(), url2.clone());
    let mut b = tokio::task::spawn_blocking(move || {
        make_instance(&root2, &ca3, &url3, "beta", "beta.test", None)
    })
    .await
    .expect("join");
    caliopen(
        &["user", "add", "--config", b.c(), "bob", "--password-stdin"],
        Some("bob password\n"),
    );
    b.start();
    let relay = (
        format!("localhost:{}", b.smtp.expect("smtp").port()),
        b.data.join("tls.pem"),
    );
    let mut a = tokio::task::spawn_blocking(move || {
        make_instance(&root, &ca2, &url2, "alpha", "alpha.test", Some(relay))
    })
    .await
    .expect("join");
    caliopen(
        &[
            "user",
            "add",
            "--config",
            a.c(),
            "alice",
            "--password-stdin",
        ],
        Some("alice password\n"),
    );
    a.start();

    alice_sends(&a, "bob@beta.test", "over the mesh").await;

    let t0 = Instant::now();
    let msg = loop {
        let list = caliopen(
            &["mail", "list", "--config", b.c(), "--user", "bob", "--json"],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&list).expect("json");
        if let Some(m) = v.as_array().and_then(|a| a.first()).cloned() {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not delivered; A's log:\n{}",
            std::fs::read_to_string(a.data.join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("submitted at A, stored at B in {:?}", t0.elapsed());
    assert_eq!(msg["via"], "mesh", "{msg}");
    assert_eq!(msg["subject"], "over the mesh");
    assert_eq!(msg["from"], "alice@alpha.test");
    assert_eq!(msg["transport"]["peer_member"], "alpha");

    public_levels_across_the_mesh(&a, &b).await;

    // A recipient B does not have: B refuses it over the mesh, A bounces it to alice.
    alice_sends(&a, "ghost@beta.test", "to nobody").await;
    let t0 = Instant::now();
    let dsn = loop {
        let list = caliopen(
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
        let v: serde_json::Value = serde_json::from_str(&list).expect("json");
        if let Some(m) = v.as_array().and_then(|l| {
            l.iter()
                .find(|m| m["subject"] == "Undelivered Mail Returned to Sender")
                .cloned()
        }) {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no bounce; A's log:\n{}",
            std::fs::read_to_string(a.data.join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("peer's refusal bounced to the sender in {:?}", t0.elapsed());
    assert_eq!(dsn["from"], "", "a bounce has the null sender: {dsn}");

    // The association revokes B: A hears it through Watch, and its next
    // message for B leaves by SMTP (through the relay, here B's own MX).
    let ca4 = ca.clone();
    tokio::task::spawn_blocking(move || {
        ca4.revoke(
            &caliopen_ca::RevokeTarget::Domain("beta.test".into()),
            "privilegeWithdrawn",
        )
    })
    .await
    .expect("join")
    .expect("revoke");
    let t_revoked = Instant::now();
    // Wait until A has dropped B from its directory (it then routes by SMTP).
    let a_trust = a.data.join("trust/directory.bin");
    let roots = [caliopen_proto::RootKey::from_cert_der(ca.root_der()).expect("root")];
    loop {
        let listed = std::fs::read(&a_trust)
            .ok()
            .and_then(|b| caliopen_proto::decode_and_verify(&b, &roots).ok())
            .is_some_and(|d| d.members.iter().any(|m| m.member_id == "beta"));
        if !listed {
            break;
        }
        assert!(
            t_revoked.elapsed() < Duration::from_secs(20),
            "A never learnt of the revocation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("revocation reached A in {:?}", t_revoked.elapsed());
    alice_sends(&a, "bob@beta.test", "after revocation").await;
    let t0 = Instant::now();
    let second = loop {
        let list = caliopen(
            &["mail", "list", "--config", b.c(), "--user", "bob", "--json"],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&list).expect("json");
        if let Some(m) = v.as_array().and_then(|a| a.get(1)).cloned() {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not delivered by SMTP; A's log:\n{}",
            std::fs::read_to_string(a.data.join("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "after revocation: submitted at A, stored at B by SMTP in {:?}",
        t0.elapsed()
    );
    assert_eq!(second["via"], "smtp", "{second}");
    assert_eq!(second["subject"], "after revocation");
    // bob's mailbox through his client API, a message per page.
    let (mut bc, bt) = client(&b, "bob@beta.test", "bob password").await;
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let p = bc
            .list_messages(bearer(
                pb::ListMessagesRequest {
                    limit: 1,
                    after: after.clone(),
                    ..Default::default()
                },
                &bt,
            ))
            .await
            .expect("page")
            .into_inner();
        pages.push(
            p.messages
                .iter()
                .map(|m| m.subject.clone())
                .collect::<Vec<_>>(),
        );
        if p.next.is_empty() {
            break;
        }
        after = p.next;
    }
    assert_eq!(
        pages,
        vec![
            vec!["over the mesh".to_owned()],
            vec!["after revocation".to_owned()]
        ]
    );
    for bad in [
        pb::ListMessagesRequest {
            limit: 2001,
            ..Default::default()
        },
        pb::ListMessagesRequest {
            limit: 1,
            after: "not-an-id".into(),
            ..Default::default()
        },
    ] {
        let e = bc
            .list_messages(bearer(bad, &bt))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    }

    a.stop();
    b.stop();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), service)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean");
}

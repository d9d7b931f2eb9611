//! `caliopen demo`: a whole labelled federation on loopback, in one process.
//! An association, three labelled instances (alpha, beta, gamma) and one
//! unlabelled instance standing for the rest of the world (outside.test).
//! Every claim printed is checked; a failed check fails the demo.

use caliopen_ca::{Authority, BoundService, RevokeTarget, Settings, SignRequest};
use caliopen_instance::admin::{connect, with_token};
use caliopen_instance::config::{
    AssociationConfig, Config, MeshSection, MetricsSection, SmtpConfig,
};
use caliopen_instance::daemon::{self, self_signed_tls};
use caliopen_instance::login::hash_password;
use caliopen_proto::pb::client::client_client::ClientClient;
use caliopen_proto::pb::client::{GetContactRequest, MeRequest};
use caliopen_proto::pb::instance_admin::{ListMailRequest, PutUserRequest};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(20);

struct Node {
    name: &'static str,
    domain: String,
    user: &'static str,
    password: String,
    dir: PathBuf,
    mx: u16,
    submission: u16,
    web: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), daemon::DaemonError>>>,
}

fn free_port(udp: bool) -> Result<u16, String> {
    let a = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    };
    a.map(|a| a.port()).map_err(|e| e.to_string())
}

fn say(s: &str) {
    println!("{s}");
}

fn ok(claim: &str, cond: bool) -> Result<(), String> {
    if cond {
        println!("    ✔ {claim}");
        Ok(())
    } else {
        Err(format!("check failed: {claim}"))
    }
}

fn show_index(m: &serde_json::Value) -> u64 {
    let p = &m["privacy"];
    println!(
        "    privacy index {} (technic {}, context {}, comportment {})",
        p["total"], p["technic"], p["context"], p["comportment"]
    );
    for e in p["explanation"].as_array().into_iter().flatten() {
        let effect = e["effect"].as_i64().unwrap_or(0);
        if effect != 0 {
            println!("      {:+} {}", effect, e["text"].as_str().unwrap_or(""));
        }
    }
    p["total"].as_u64().unwrap_or(0)
}

async fn mailbox(node: &Node) -> Result<Vec<serde_json::Value>, String> {
    let (mut c, token) = connect(&node.dir)
        .await
        .ok_or_else(|| format!("{}: admin socket not answering", node.name))?;
    let r = c
        .list_mail(with_token(
            ListMailRequest {
                localpart: node.user.into(),
            },
            &token,
        ))
        .await
        .map_err(|s| s.message().to_owned())?;
    let v: serde_json::Value =
        serde_json::from_str(&r.into_inner().messages_json).map_err(|e| e.to_string())?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Waits until `node`'s mailbox holds `n` messages; returns the last one.
async fn await_mail(node: &Node, n: usize) -> Result<serde_json::Value, String> {
    let t0 = Instant::now();
    loop {
        let m = mailbox(node).await?;
        if m.len() >= n {
            return Ok(m[n - 1].clone());
        }
        if t0.elapsed() > WAIT {
            return Err(format!(
                "{}: message {n} did not arrive within {WAIT:?}",
                node.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{}.{subject_id}@demo>\r\n\r\n{subject}.\r\n",
        std::process::id(), subject_id = subject.len())
        .into_bytes()
}

/// Submits as `node`'s user over STARTTLS + AUTH.
async fn submit(node: &Node, to: &str, subject: &str) -> Result<(), String> {
    let pem = std::fs::read(node.dir.join("tls.pem")).map_err(|e| e.to_string())?;
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(&pem).map_err(|e| e.to_string())?)
        .build_rustls()
        .map_err(|e| e.to_string())?;
    let from = format!("{}@{}", node.user, node.domain);
    let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(node.submission)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(from.clone(), node.password.clone()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let env = lettre::address::Envelope::new(
        Some(from.parse().map_err(|e| format!("{e}"))?),
        vec![to.parse().map_err(|e| format!("{e}"))?],
    )
    .map_err(|e| e.to_string())?;
    t.send_raw(&env, &message(&from, to, subject))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the demo. With `keep`, the federation stays up until Ctrl-C.
pub(crate) async fn run(keep: bool) -> Result<(), String> {
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("caliopen-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let result = scenario(&root, keep, started).await;
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// A client API session for `node`'s user, opened the way `caliopen
/// privacy` does: a token from the admin socket, calls on the same socket.
async fn client_session(
    node: &Node,
) -> Result<(ClientClient<tonic::transport::Channel>, String), String> {
    use caliopen_proto::pb::instance_admin::instance_admin_client::InstanceAdminClient;
    use caliopen_proto::pb::instance_admin::IssueUserTokenRequest;
    let (ch, admin) = caliopen_instance::admin::channel(&node.dir)
        .await
        .ok_or("admin socket")?;
    let token = InstanceAdminClient::new(ch.clone())
        .issue_user_token(with_token(
            IssueUserTokenRequest {
                localpart: node.user.into(),
            },
            &admin,
        ))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner()
        .token;
    Ok((ClientClient::new(ch), token))
}

async fn scenario(root: &Path, keep: bool, started: Instant) -> Result<(), String> {
    let mut summary: Vec<(String, String, String)> = Vec::new();
    say("Caliopen demo: a labelled federation on loopback");
    say(&format!("  working directory {}", root.display()));

    say("\n1. The association creates its certificate authority and starts its service.");
    let ca = std::sync::Arc::new(
        Authority::init(
            &root.join("association"),
            "Caliopen Demo Association",
            3650,
            Settings::default(),
        )
        .map_err(|e| e.to_string())?,
    );
    let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().map_err(|_| "addr")?, &[])
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("https://{}", bound.local_addr().map_err(|e| e.to_string())?);
    let (assoc_stop, assoc_rx) = oneshot::channel::<()>();
    let assoc = tokio::spawn(bound.run(async move {
        let _ = assoc_rx.await;
    }));
    ok(&format!("association service listening at {url}"), true)?;

    let specs: [(&str, &str, bool); 4] = [
        ("alpha", "alice", true),
        ("beta", "bob", true),
        ("gamma", "carol", true),
        ("outside", "dave", false),
    ];
    let mut nodes: Vec<Node> = Vec::new();
    for (name, user, _) in specs {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let domain = format!("{name}.test");
        let (cert, key) = self_signed_tls(&["localhost".to_owned(), domain.clone()])
            .map_err(|e| e.to_string())?;
        write_file(&dir.join("tls.key"), key.as_bytes(), 0o600)?;
        write_file(&dir.join("tls.pem"), cert.as_bytes(), 0o644)?;
        nodes.push(Node {
            name,
            domain,
            user,
            password: format!("demo password of {user}"),
            dir,
            mx: free_port(false)?,
            submission: free_port(false)?,
            web: None,
            stop: None,
            task: None,
        });
    }
    // Every instance trusts the others' STARTTLS certificates (they stand for real ones).
    let all_tls: Vec<u8> = nodes
        .iter()
        .map(|n| std::fs::read(n.dir.join("tls.pem")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?
        .concat();

    say("\n2. Three operators sign the charter: the association labels alpha, beta and gamma.");
    let outside_mx = nodes[3].mx;
    let mut configs = Vec::new();
    for (i, (name, _, labelled)) in specs.iter().enumerate() {
        let n = &nodes[i];
        write_file(&n.dir.join("relay-ca.pem"), &all_tls, 0o644)?;
        let mut smtp = SmtpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], n.mx)),
            submission: SocketAddr::from(([127, 0, 0, 1], n.submission)),
            ..SmtpConfig::default()
        };
        let mut association = None;
        let mut mesh = MeshSection::default();
        if *labelled {
            // The rest of the world, and any member that loses its label, is reached by SMTP:
            // through a relay (the outside instance here) or a route to the domain's MX.
            smtp.relay = Some(format!("localhost:{outside_mx}"));
            smtp.relay_ca = Some("relay-ca.pem".into());
            for other in nodes.iter().filter(|o| o.name != *name) {
                smtp.routes
                    .insert(other.domain.clone(), format!("localhost:{}", other.mx));
            }
            let mesh_port = free_port(true)?;
            mesh.listen = SocketAddr::from(([127, 0, 0, 1], mesh_port));
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let csr = rcgen::CertificateParams::new(vec![n.domain.clone()])
                .and_then(|p| p.serialize_request(&key))
                .and_then(|c| c.pem())
                .map_err(|e| e.to_string())?;
            let issued = ca
                .sign(&SignRequest {
                    csr: csr.into_bytes(),
                    member_id: (*name).into(),
                    charter_version: "1.0".into(),
                    successor: None,
                    endpoints: vec![format!("127.0.0.1:{mesh_port}")],
                    days: None,
                })
                .map_err(|e| e.to_string())?;
            write_file(
                &n.dir.join("member.key.pem"),
                key.serialize_pem().as_bytes(),
                0o600,
            )?;
            write_file(
                &n.dir.join("member.pem"),
                issued.record.certificate_pem.as_bytes(),
                0o644,
            )?;
            write_file(
                &n.dir.join("association-ca.pem"),
                ca.root_pem().as_bytes(),
                0o644,
            )?;
            // The association's membership-log key, pinned as `join --log-key` does.
            std::fs::copy(
                root.join("association").join("log.pub"),
                n.dir.join("association-log.pub"),
            )
            .map_err(|e| format!("log.pub: {e}"))?;
            association = Some(AssociationConfig {
                url: url.clone(),
                ca: "association-ca.pem".into(),
                cert: "member.pem".into(),
                key: "member.key.pem".into(),
                log_key: Some("association-log.pub".into()),
                min_witness_quorum: 0,
            });
            ok(
                &format!(
                    "{name}.test labelled: certificate {} with the Caliopen label",
                    issued.record.serial
                ),
                true,
            )?;
        }
        configs.push(Config {
            data_dir: Some(n.dir.clone()),
            domains: vec![n.domain.clone()],
            hostname: "localhost".into(),
            smtp,
            mesh,
            log: Default::default(),
            metrics: MetricsSection::default(),
            api: Default::default(),
            imap: Default::default(),
            web: caliopen_instance::config::WebSection {
                listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                ..Default::default()
            },
            login: Default::default(),
            accounts: Default::default(),
            store: Default::default(),
            dns: Default::default(),
            dkim: Default::default(),
            association,
            acme: None,
            witness: Default::default(),
            source: None,
        });
    }

    say("\n3. The four instances start; each creates its user.");
    for (n, cfg) in nodes.iter_mut().zip(configs) {
        let (stop, rx) = oneshot::channel::<()>();
        let (up_tx, up_rx) = oneshot::channel();
        n.task = Some(tokio::spawn(daemon::run(
            cfg,
            async move {
                let _ = rx.await;
            },
            move |b| {
                let _ = up_tx.send(b);
            },
        )));
        n.stop = Some(stop);
        let bound = tokio::time::timeout(WAIT, up_rx)
            .await
            .map_err(|_| format!("{} did not start", n.name))?
            .map_err(|_| format!("{} failed to start", n.name))?;
        n.web = bound.web;
        let hash = hash_password(&n.password).map_err(|e| e.to_string())?;
        let (mut c, token) = connect(&n.dir).await.ok_or("admin socket")?;
        c.put_user(with_token(
            PutUserRequest {
                localpart: n.user.into(),
                password_hash: hash,
            },
            &token,
        ))
        .await
        .map_err(|s| s.message().to_owned())?;
        ok(
            &format!(
                "{} up (MX 127.0.0.1:{}, submission 127.0.0.1:{}), user {}@{}",
                n.domain, n.mx, n.submission, n.user, n.domain
            ),
            true,
        )?;
    }

    say("\n4. Someone on the internet writes to alice@alpha.test with an ordinary SMTP client.");
    let t = Instant::now();
    let plain = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(nodes[0].mx)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let env = lettre::address::Envelope::new(
        Some("eve@world.example".parse().map_err(|e| format!("{e}"))?),
        vec!["alice@alpha.test".parse().map_err(|e| format!("{e}"))?],
    )
    .map_err(|e| e.to_string())?;
    plain
        .send_raw(
            &env,
            &message(
                "eve@world.example",
                "alice@alpha.test",
                "hello from the internet",
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let m = await_mail(&nodes[0], 1).await?;
    ok("stored in alice's mailbox, via smtp", m["via"] == "smtp")?;
    let plain_index = show_index(&m);
    summary.push((
        "internet → alpha".into(),
        "smtp".into(),
        format!("{:?}", t.elapsed()),
    ));

    say("\n5. alice writes to bob@beta.test: beta is labelled, so the message takes the mesh.");
    let t = Instant::now();
    submit(&nodes[0], "bob@beta.test", "alice to bob").await?;
    let m = await_mail(&nodes[1], 1).await?;
    ok(
        "arrived in bob's mailbox via mesh (QUIC, mutual TLS between labelled members)",
        m["via"] == "mesh",
    )?;
    ok(
        "beta knows it came from member alpha",
        m["transport"]["peer_member"] == "alpha",
    )?;
    let mesh_index = show_index(&m);
    summary.push((
        "alpha → beta".into(),
        "mesh".into(),
        format!("{:?}", t.elapsed()),
    ));

    say("\n6. alice writes to dave@outside.test: outside the network, the message leaves by SMTP.");
    let t = Instant::now();
    submit(&nodes[0], "dave@outside.test", "alice to dave").await?;
    let m = await_mail(&nodes[3], 1).await?;
    ok("arrived in dave's mailbox via smtp", m["via"] == "smtp")?;
    ok(
        "with STARTTLS (TLS 1.3) on the way",
        m["transport"]["tls_version"] == "TLSv1_3",
    )?;
    let tls_index = show_index(&m);
    ok(
        &format!("privacy index: mesh {mesh_index} > SMTP with TLS {tls_index} > plain SMTP {plain_index}"),
        mesh_index > tls_index && tls_index > plain_index,
    )?;
    summary.push((
        "alpha → outside".into(),
        "smtp + STARTTLS".into(),
        format!("{:?}", t.elapsed()),
    ));

    say("\n6b. alice asks for bob's public privacy level: beta answers over the mesh.");
    let t = Instant::now();
    let (mut bob_api, bob_token) = client_session(&nodes[1]).await?;
    let bob_me = bob_api
        .me(with_token(MeRequest {}, &bob_token))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let (mut alice_api, alice_token) = client_session(&nodes[0]).await?;
    let c = alice_api
        .get_contact(with_token(
            GetContactRequest {
                address: "bob@beta.test".into(),
                refresh_public_level: true,
            },
            &alice_token,
        ))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let lookup = c.lookup.clone().unwrap_or_default();
    let level = c.public_level.as_ref().map(|l| l.level);
    ok(
        &format!(
            "beta answered a {}-bit hash prefix with a bucket of {} entr{}: bob's level is {} (beta says {})",
            lookup.prefix_bits,
            lookup.bucket_size,
            if lookup.bucket_size == 1 { "y" } else { "ies" },
            level.map_or("unknown".into(), |l| l.to_string()),
            bob_me.public_level
        ),
        lookup.member == "beta"
            && lookup.found
            && lookup.prefix_bits == 8
            && level == Some(bob_me.public_level),
    )?;
    if let Some(i) = &c.privacy {
        say(&format!(
            "    contact bob@beta.test: privacy {}/100 (technic {}, context {}, comportment {})",
            i.total, i.technic, i.context, i.comportment
        ));
        for e in i.explanation.iter().filter(|e| e.effect != 0) {
            say(&format!("      {:+} {}", e.effect, e.text));
        }
    }
    ok(
        "bob is in alice's contact book, known, on labelled member beta",
        c.known && c.labelled_member == "beta",
    )?;
    summary.push((
        "public level of bob".into(),
        "k-anonymous query".into(),
        format!("{:?}", t.elapsed()),
    ));

    say("\n7. alice writes to carol@gamma.test while gamma is labelled.");
    submit(&nodes[0], "carol@gamma.test", "before revocation").await?;
    let m = await_mail(&nodes[2], 1).await?;
    ok("arrived via mesh", m["via"] == "mesh")?;
    let before = show_index(&m);

    say("\n8. The association revokes gamma's label.");
    let t = Instant::now();
    let out = ca
        .revoke(
            &RevokeTarget::Domain("gamma.test".into()),
            "privilegeWithdrawn",
        )
        .map_err(|e| e.to_string())?;
    ok(
        &format!(
            "certificate {} revoked, CRL number {}",
            out.newly_revoked.join(","),
            out.crl_number
        ),
        !out.newly_revoked.is_empty(),
    )?;
    let roots = [caliopen_proto::RootKey::from_cert_der(ca.root_der()).map_err(|e| e.to_string())?];
    loop {
        let listed = std::fs::read(nodes[0].dir.join("trust/directory.bin"))
            .ok()
            .and_then(|b| caliopen_proto::decode_and_verify(&b, &roots).ok())
            .is_some_and(|d| d.members.iter().any(|m| m.member_id == "gamma"));
        if !listed {
            break;
        }
        if t.elapsed() > WAIT {
            return Err("alpha never learnt of the revocation".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ok(
        &format!("alpha dropped gamma from its mesh in {:?}", t.elapsed()),
        true,
    )?;
    summary.push((
        "revocation reaches alpha".into(),
        "Watch".into(),
        format!("{:?}", t.elapsed()),
    ));

    say("\n9. alice writes to carol@gamma.test again: gamma lost its label, so plain email it is.");
    let t = Instant::now();
    submit(&nodes[0], "carol@gamma.test", "after revocation").await?;
    let m = await_mail(&nodes[2], 2).await?;
    ok(
        "arrived in carol's mailbox via smtp, no longer via mesh",
        m["via"] == "smtp",
    )?;
    let after = show_index(&m);
    ok(
        &format!("with a lower privacy index: {after} < {before}"),
        after < before,
    )?;
    summary.push((
        "alpha → gamma (revoked)".into(),
        "smtp".into(),
        format!("{:?}", t.elapsed()),
    ));

    say("\nSummary");
    say(&format!("  {:<26} {:<16} {}", "message", "path", "time"));
    for (a, b, c) in &summary {
        say(&format!("  {a:<26} {b:<16} {c}"));
    }
    say(&format!("\nAll checks passed in {:?}.", started.elapsed()));

    if keep {
        say("\nThe federation keeps running (Ctrl-C stops it):");
        for n in &nodes {
            say(&format!(
                "  {:<12} MX 127.0.0.1:{}  submission 127.0.0.1:{}  user {}@{} / {:?}  data {}",
                n.domain,
                n.mx,
                n.submission,
                n.user,
                n.domain,
                n.password,
                n.dir.display()
            ));
            if let Some(w) = n.web {
                say(&format!(
                    "  {:<12} web client https://{w}/login (self-signed certificate)",
                    ""
                ));
            }
        }
        say(&format!(
            "  association {url} (state in {})",
            root.join("association").display()
        ));
        let _ = tokio::signal::ctrl_c().await;
    }
    for n in &mut nodes {
        if let Some(s) = n.stop.take() {
            let _ = s.send(());
        }
    }
    for n in &mut nodes {
        if let Some(t) = n.task.take() {
            match tokio::time::timeout(Duration::from_secs(60), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(format!("{}: {e}", n.name)),
                _ => return Err(format!("{} did not stop cleanly", n.name)),
            }
        }
    }
    let _ = assoc_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), assoc).await;
    Ok(())
}

/// Writes one of a demo member's files whole.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    caliopen_instance::files::write_atomic(path, data, mode).map_err(|e| e.to_string())
}

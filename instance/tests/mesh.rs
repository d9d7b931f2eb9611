//! Two labelled instances and the association on loopback, driven through
//! the `caliopen` binary: a message submitted at A for a user of B arrives at
//! B over the mesh (`via = mesh`).

use caliopen_ca::{Authority, BoundService, Settings, SignRequest};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_caliopen");

fn caliopen(args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(s) = stdin {
        c.stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write");
    }
    drop(c.stdin.take());
    let o = c.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "caliopen {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

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
    submission: Option<SocketAddr>,
}

impl Instance {
    fn c(&self) -> &str {
        self.config.to_str().expect("utf-8")
    }
    fn start(&mut self) {
        let mut child = Command::new(BIN)
            .args(["run", "--config", self.c()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.data.join("daemon.log")).expect("log"))
            .spawn()
            .expect("spawn run");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        self.submission = Some(
            line.split_whitespace()
                .nth(3)
                .expect("submission")
                .parse()
                .expect("addr"),
        );
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

fn make_instance(root: &Path, ca: &Authority, url: &str, id: &str, domain: &str) -> Instance {
    let data = root.join(id);
    let d = data.to_str().expect("utf-8");
    let mesh = format!("127.0.0.1:{}", free_udp_port());
    caliopen(
        &[
            "init",
            "--data",
            d,
            "--domain",
            domain,
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--mesh",
            &mesh,
        ],
        None,
    );
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
        submission: None,
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
    let (mut a, mut b) = tokio::task::spawn_blocking(move || {
        let a = make_instance(&root, &ca2, &url2, "alpha", "alpha.test");
        let b = make_instance(&root, &ca2, &url2, "beta", "beta.test");
        (a, b)
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
    caliopen(
        &["user", "add", "--config", b.c(), "bob", "--password-stdin"],
        Some("bob password\n"),
    );
    a.start();
    b.start();

    let port = a.submission.expect("submission").port();
    let tls = a.data.join("tls.pem");
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["bob@beta.test"], b"From: alice@alpha.test\r\nTo: bob@beta.test\r\nSubject: over the mesh\r\n\r\nHi Bob.\r\n")
try:
    s.sendmail("alice@alpha.test", ["someone@outside.test"], b"Subject: x\r\n\r\ny\r\n")
    raise SystemExit("outside address accepted without outbound SMTP")
except smtplib.SMTPRecipientsRefused:
    pass
s.quit()
print("sent")
"#,
        tls = tls.display()
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

    a.stop();
    b.stop();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), service)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean");
}

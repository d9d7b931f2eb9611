//! The MX and submission listeners, driven by real clients: Python's smtplib,
//! swaks, and a raw socket for the corpus and for hostile input.

use caliopen_instance::delivery::MailService;
use caliopen_instance::login::hash_password;
use caliopen_instance::mail::Via;
use caliopen_instance::smtp::server::{ListenerConfig, SmtpListener};
use caliopen_instance::smtp::session::Kind;
use caliopen_instance::store::Store;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Mx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: Store,
    mx: SocketAddr,
    submission: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
}

fn tls_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test SMTP CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.join("smtp-ca.pem"), ca_cert.pem()).expect("write");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("cert");
    Arc::new(cfg)
}

impl Mx {
    async fn start(max_message_size: usize) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().to_owned();
        let store = Store::open(&dir.join("db")).expect("store");
        for (u, p) in [("alice", "secret"), ("bob", "hunter2")] {
            store
                .put_user(u, &hash_password(p).expect("hash"))
                .await
                .expect("user");
        }
        let svc = MailService::new(store.clone(), vec!["alpha.test".into()]);
        let tls = tls_config(&dir);
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut addrs = Vec::new();
        for kind in [Kind::Mx, Kind::Submission] {
            let mut cfg = ListenerConfig::new(kind, "mx.alpha.test");
            cfg.max_message_size = max_message_size;
            cfg.tls = Some(tls.clone());
            let l = SmtpListener::bind("127.0.0.1:0".parse().expect("addr"), cfg)
                .await
                .expect("bind");
            addrs.push(l.local_addr().expect("addr"));
            tracker.spawn(l.run(svc.clone(), token.clone(), tracker.clone()));
        }
        Self {
            _tmp: tmp,
            dir,
            store,
            mx: addrs[0],
            submission: addrs[1],
            token,
            tracker,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("drained");
    }
}

/// Runs a Python snippet (smtplib) in a blocking task; returns (status, stdout+stderr).
async fn python(code: String) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let o = Command::new("python3")
            .arg("-c")
            .arg(&code)
            .output()
            .expect("python3 must be installed");
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
    .await
    .expect("join")
}

const MSG: &str = "From: x@ext.test\\r\\nTo: alice@alpha.test\\r\\nSubject: smtplib test\\r\\n\\r\\nHello Alice.\\r\\n.leading dot\\r\\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_delivers_plain_and_over_starttls_and_relay_is_refused() {
    let mx = Mx::start(10 * 1024).await;
    let port = mx.mx.port();
    let ca = mx.dir.join("smtp-ca.pem");
    let (ok, out) = python(format!(
        r#"
import smtplib, ssl
msg = b"{MSG}"
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.ehlo("client.test")
assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("starttls") and s.has_extn("8bitmime"), s.esmtp_features
s.sendmail("x@ext.test", ["alice@alpha.test"], msg)
try:
    s.sendmail("x@ext.test", ["someone@elsewhere.test"], msg)
    raise SystemExit("relay accepted")
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients["someone@elsewhere.test"][0] == 550, e.recipients
try:
    s.sendmail("x@ext.test", ["nobody@alpha.test"], msg)
    raise SystemExit("unknown user accepted")
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients["nobody@alpha.test"][0] == 550
try:
    s.sendmail("x@ext.test", ["alice@alpha.test"], b"Subject: big\r\n\r\n" + b"x" * 20000 + b"\r\n")
    raise SystemExit("oversize accepted")
except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
    assert e.smtp_code == 552, e
s.quit()
ctx = ssl.create_default_context(cafile="{ca}")
s = smtplib.SMTP("localhost", {port}, timeout=10)
s.starttls(context=ctx)
s.ehlo("client.test")
s.sendmail("x@ext.test", ["alice@alpha.test"], msg)
s.quit()
print("ok")
"#,
        ca = ca.display()
    ))
    .await;
    assert!(ok && out.contains("ok"), "{out}");
    let list = mx.store.list("alice").expect("list");
    assert_eq!(list.len(), 2, "{list:?}");
    let expected = MSG.replace("\\r\\n", "\r\n");
    for m in &list {
        assert_eq!(m.via, Via::Smtp);
        assert_eq!(m.subject, "smtplib test");
        assert_eq!(
            mx.store.raw(m.id).expect("raw").expect("present"),
            expected.as_bytes(),
            "byte-exact"
        );
    }
    assert!(list[0].transport.tls_version.is_none());
    assert_eq!(
        list[1].transport.tls_version.as_deref(),
        Some("TLSv1_3"),
        "{:?}",
        list[1].transport
    );
    assert_eq!(list[1].transport.helo, "client.test");
    mx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_requires_tls_and_auth_and_own_sender() {
    let mx = Mx::start(1024 * 1024).await;
    let port = mx.submission.port();
    let ca = mx.dir.join("smtp-ca.pem");
    let (ok, out) = python(format!(
        r#"
import smtplib, ssl
s = smtplib.SMTP("localhost", {port}, timeout=10)
s.ehlo("c")
assert not s.has_extn("auth"), "AUTH offered in clear"
code, _ = s.mail("alice@alpha.test")
assert code == 530, code
s.rset()
s.starttls(context=ssl.create_default_context(cafile="{ca}"))
s.ehlo("c")
assert s.has_extn("auth")
try:
    s.login("alice@alpha.test", "wrong")
    raise SystemExit("bad password accepted")
except smtplib.SMTPAuthenticationError:
    pass
s.login("alice@alpha.test", "secret")
code, _ = s.mail("bob@alpha.test")
assert code == 553, code
s.rset()
s.sendmail("alice@alpha.test", ["bob@alpha.test"], b"Subject: from alice\r\n\r\nhi bob\r\n")
s.quit()
print("ok")
"#,
        ca = ca.display()
    ))
    .await;
    assert!(ok && out.contains("ok"), "{out}");
    let list = mx.store.list("bob").expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].via, Via::Local);
    assert_eq!(
        list[0].transport.auth_user.as_deref(),
        Some("alice@alpha.test")
    );
    mx.stop().await;
}

async fn swaks(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let o = Command::new("swaks")
            .args(&args)
            .output()
            .expect("swaks must be installed (.ci/run installs it)");
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_pipelined_and_starttls_sessions_deliver() {
    let mx = Mx::start(1024 * 1024).await;
    let server = format!("127.0.0.1:{}", mx.mx.port());
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "--server",
            &server,
            "--from",
            "x@ext.test",
            "--to",
            "alice@alpha.test",
            "--helo",
            "swaks.test",
            "--timeout",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (ok, out) = swaks(base(&["--pipeline"])).await;
    assert!(ok, "{out}");
    assert!(out.contains("PIPELINING"), "{out}");
    let (ok, out) = swaks(base(&["--tls"])).await;
    assert!(ok, "{out}");
    assert!(out.contains("TLS started"), "{out}");
    let (ok, out) = swaks(vec![
        "--server".into(),
        server.clone(),
        "--from".into(),
        "x@ext.test".into(),
        "--to".into(),
        "victim@elsewhere.test".into(),
        "--timeout".into(),
        "10".into(),
    ])
    .await;
    assert!(!ok, "relay accepted: {out}");
    assert!(out.contains("550 5.7.1"), "{out}");
    assert_eq!(mx.store.list("alice").expect("list").len(), 2);
    mx.stop().await;
}

/// A minimal blocking SMTP client for byte-level control: each step is sent
/// whole, then one reply is read.
fn raw_session(addr: SocketAddr, steps: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut transcript = String::new();
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    transcript.push_str(&line);
    for step in steps {
        s.write_all(step).expect("write");
        let mut finals = 0;
        while finals < 1 {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return transcript;
            }
            transcript.push_str(&line);
            if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                finals += 1;
            }
        }
    }
    transcript
}

fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 20);
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(*b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_line_start = true;
    for b in data {
        if at_line_start && *b == b'.' {
            out.push(b'.');
        }
        out.push(*b);
        at_line_start = *b == b'\n';
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_message_comes_back_byte_exact() {
    let mx = Mx::start(10 * 1024 * 1024).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/eml");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 50, "corpus missing");
    let addr = mx.mx;
    let sent: Vec<Vec<u8>> = files
        .iter()
        .map(|f| crlf(&std::fs::read(f).expect("read")))
        .collect();
    let payloads = sent.clone();
    tokio::task::spawn_blocking(move || {
        for (i, m) in payloads.iter().enumerate() {
            let mut data = dot_stuff(m);
            data.extend_from_slice(b".\r\n");
            let t = raw_session(
                addr,
                &[
                    b"EHLO corpus.test\r\n",
                    b"MAIL FROM:<c@ext.test>\r\n",
                    b"RCPT TO:<bob@alpha.test>\r\n",
                    b"DATA\r\n",
                    &data,
                    b"QUIT\r\n",
                ],
            );
            assert!(t.contains("250 2.0.0 Ok: queued"), "message {i}: {t}");
        }
    })
    .await
    .expect("join");
    let list = mx.store.list("bob").expect("list");
    assert_eq!(list.len(), sent.len());
    for (m, want) in list.iter().zip(&sent) {
        assert_eq!(
            &mx.store.raw(m.id).expect("raw").expect("present"),
            want,
            "message {} differs",
            m.id
        );
    }
    mx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_clear_replies() {
    let mx = Mx::start(64 * 1024).await;
    let addr = mx.mx;
    let t = tokio::task::spawn_blocking(move || {
        let mut all = String::new();
        // 10,000 RCPT in one pipelined burst: bounded, answered.
        let mut burst = b"EHLO c\r\nMAIL FROM:<x@ext.test>\r\n".to_vec();
        for i in 0..10_000 {
            burst.extend_from_slice(format!("RCPT TO:<u{i}@alpha.test>\r\n").as_bytes());
        }
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(&burst).expect("write");
        s.write_all(b"QUIT\r\n").expect("write");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(
            text.contains("421 4.7.0") || text.contains("550 5.1.1"),
            "{}",
            &text[..text.len().min(500)]
        );
        all.push_str(&text[..text.len().min(2000)]);
        // NUL bytes and invalid UTF-8 in commands.
        all.push_str(&raw_session(
            addr,
            &[
                b"EHLO \x00\xff\xfe\r\n",
                b"MAIL FROM:<\xff@ext.test>\r\n",
                b"NOOP\r\n",
            ],
        ));
        all
    })
    .await
    .expect("join");
    assert!(
        t.contains("250 2.0.0 OK"),
        "session survives bad bytes: {t}"
    );
    assert_eq!(mx.store.message_count(), 0);
    mx.stop().await;
}

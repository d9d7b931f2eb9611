//! What the login-flood probe found besides the floods, checked from
//! outside against the real binary: the data directory's modes, submission's
//! `From:` check, SMTPUTF8, the opaque queue id, and the client API's `Send`
//! (a Message-ID; no control characters).

use caliopen_proto::pb::client as pb;
use caliopen_proto::pb::client::client_client::ClientClient;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;
mod reliab;

use reliab::{api_channel, python, Instance};

const PW: &str = "Alice-correct-horse-42";

/// Every file and directory under `dir` whose mode lets group or others in.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_symlink() || m.file_type().is_socket_like() {
            continue;
        }
        if m.permissions().mode() & 0o077 != 0 {
            bad.push(format!(
                "{} {:o}",
                p.display(),
                m.permissions().mode() & 0o777
            ));
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    bad
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}

impl SocketLike for std::fs::FileType {
    fn is_socket_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_socket()
    }
}

/// Python smtplib over submission as alice: sends `msg` with `opts` as MAIL
/// options; prints the reply code and text of the refusal, or "250 <id>".
fn submit_raw(inst: &Instance, msg: &str, opts: &str) -> String {
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.starttls(context=ctx)
s.ehlo("client.test")
s.login("alice@alpha.test", "{PW}")
try:
    opts = {opts}
    if opts:
        # smtplib itself will not send an option the server did not offer.
        code, resp = s.docmd("MAIL FROM:<alice@alpha.test> " + " ".join(opts))
        if code != 250:
            raise smtplib.SMTPResponseException(code, resp)
    else:
        s.mail("alice@alpha.test")
    s.rcpt("alice@alpha.test")
    code, resp = s.data({msg:?}.encode())
    print(code, resp.decode())
except smtplib.SMTPResponseException as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
"#,
        tls = inst.data.join("tls.pem").display(),
        port = inst.submission().port(),
    );
    python(&script).1.trim().to_owned()
}

#[test]
fn init_refuses_a_data_directory_others_can_enter() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ok, _, err) = common::run_caliopen(
        &[
            "init",
            "--data",
            dir.to_str().expect("utf-8"),
            "--domain",
            "alpha.test",
        ],
        None,
    );
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("accessible to other users (mode 755)") && err.contains("chmod 700"),
        "{err}"
    );
    assert!(!dir.join("caliopen.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_from_checks_and_send() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(tmp.path(), "a", "alpha.test", None, None, None);
    inst.set("api", "listen = \"127.0.0.1:0\"");
    inst.add_user("alice", PW);
    inst.add_user("bob", "Bob-correct-horse-42");
    // A file an older version (or a careless copy) left readable by all.
    let stray = inst.data.join("notes.txt");
    std::fs::write(&stray, "x").expect("write");
    std::fs::set_permissions(&stray, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    inst.start();
    let bad = open_to_others(&inst.data);
    assert!(bad.is_empty(), "readable by others: {bad:?}");

    // Submission: the From: header must be alice's own address.
    let forged = submit_raw(
        &inst,
        "From: Bob <bob@alpha.test>\r\nSubject: forged\r\n\r\nhi\r\n",
        "[]",
    );
    assert!(
        forged.starts_with("550 5.7.1 alice@alpha.test may not send as bob@alpha.test"),
        "{forged}"
    );
    let own = submit_raw(
        &inst,
        "From: Alice <alice@alpha.test>\r\nSubject: own\r\n\r\nhi\r\n",
        "[]",
    );
    // One opaque queue id: 24 hex digits, nothing else.
    let id = own
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("{own}"));
    assert!(
        id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{own}"
    );
    let utf8 = submit_raw(
        &inst,
        "From: alice@alpha.test\r\n\r\nhi\r\n",
        "[\"SMTPUTF8\"]",
    );
    assert!(utf8.starts_with("555 5.5.4"), "{utf8}");
    let listed = inst.wait_for("alice", 1, std::time::Duration::from_secs(10));
    assert_eq!(listed.len(), 1, "{listed:?}");
    // Bob's contact book did not learn anything from the forged message.
    assert!(inst.list("bob").is_empty());

    // The client API's Send: a Message-ID, returned and in the message.
    let ch = api_channel(&inst, "alpha.test").await;
    let mut c = ClientClient::new(ch);
    let token = c
        .login(pb::LoginRequest {
            address: "alice@alpha.test".into(),
            password: PW.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .token;
    let auth = |m: pb::SendRequest| {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        r
    };
    let sent = c
        .send(auth(pb::SendRequest {
            to: vec!["bob@alpha.test".into()],
            subject: "hello".into(),
            body: "hi bob\n".into(),
        }))
        .await
        .expect("send")
        .into_inner();
    assert!(
        sent.message_id.starts_with('<') && sent.message_id.ends_with("@alpha.test>"),
        "{sent:?}"
    );
    let nul = c
        .send(auth(pb::SendRequest {
            to: vec!["bob@alpha.test".into()],
            subject: "nul".into(),
            body: "a\0b".into(),
        }))
        .await;
    assert_eq!(
        nul.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    let bobs = inst.wait_for("bob", 1, std::time::Duration::from_secs(10));
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    let id = bobs[0]["id"].as_str().expect("id").to_owned();
    let bob_token = c
        .login(pb::LoginRequest {
            address: "bob@alpha.test".into(),
            password: "Bob-correct-horse-42".into(),
        })
        .await
        .expect("bob login")
        .into_inner()
        .token;
    let mut r = tonic::Request::new(pb::GetMessageRequest { id });
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {bob_token}").parse().expect("header"),
    );
    let raw = c.get_message(r).await.expect("get").into_inner().raw;
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.contains(&format!("Message-ID: {}", sent.message_id)),
        "{raw}"
    );
    inst.stop();
}

/// Under a low open-file limit the daemon fits its listeners' caps into it
/// (and says so), so that idle connections flooding the MX cannot take the
/// descriptors the client API and the metrics endpoint need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_port_cannot_starve_another() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(tmp.path(), "a", "alpha.test", None, None, None);
    inst.set("api", "listen = \"127.0.0.1:0\"");
    inst.set("smtp", "max_connections = 2000");
    inst.add_user("alice", PW);
    inst.wrapper = vec!["prlimit".into(), "--nofile=1024:1024".into()];
    inst.start();
    let bound = inst.bound.expect("bound");
    // 1,500 idle connections to the MX from fifteen addresses (100 each, the
    // per-address cap): more descriptors than the daemon has, were the MX
    // allowed its configured 2,000.
    let mut held = Vec::new();
    for a in 0..15u8 {
        for _ in 0..100 {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(std::net::SocketAddr::from(([127, 0, 0, 20 + a], 0)))
                .expect("bind");
            if let Ok(Ok(s)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), sock.connect(bound.smtp))
                    .await
            {
                held.push(s);
            }
        }
    }
    eprintln!("{} MX connections open", held.len());
    let t0 = std::time::Instant::now();
    // The client API still takes a TLS connection and answers a login.
    // (api_channel panics when the connection is not made within 5 s.)
    let ch = api_channel(&inst, "alpha.test").await;
    let r = ClientClient::new(ch)
        .login(pb::LoginRequest {
            address: "alice@alpha.test".into(),
            password: PW.into(),
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    eprintln!("API login answered in {:?}", t0.elapsed());
    drop(held);
    inst.stop();
    let log = inst.last_log();
    assert!(
        log.contains("connection caps lowered to fit the open-file limit"),
        "{log}"
    );
}

//! Secrets are never logged, and the files holding them are 0600.
//!
//! A full labelled scenario (association, two members, users with
//! passwords, SMTP AUTH PLAIN and LOGIN, a failed login, mesh delivery,
//! inbound MX mail, the CLI going through the admin API with its token, the
//! client API's login and token, `caliopen privacy`) runs
//! at `debug` level in both log formats; then every byte the daemons and the
//! command-line tool wrote is searched for the member keys, the STARTTLS
//! keys, the association's root key, the admin tokens and the passwords, in
//! the forms they could leak in (PEM lines, base64 of the DER, hex, SMTP AUTH
//! encodings).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

mod common;
mod reliab;

use reliab::{free_udp_port, submit, Assoc, Instance};

const ALICE_PW: &str = "Alice-s3cret-Pw-7f3e9c1d";
const BOB_PW: &str = "Bob-s3cret-Pw-41aa0b2e";
const CAROL_PW: &str = "Carol-s3cret-Pw-c0ffee99";
const WRONG_PW: &str = "Wrong-guess-Pw-deadbeef";

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Forms under which a PEM private key could leak: each body line, the
/// body joined, and hex of a slice of the DER (with the 32-byte scalar).
fn key_needles(path: &Path, what: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{what}: {e}"));
    let p = pem::parse(&text).expect("pem");
    assert!(p.tag().contains("PRIVATE KEY"), "{what} is {}", p.tag());
    let mut v = Vec::new();
    let body: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!body.is_empty());
    for l in &body {
        v.push((what.to_owned() + " PEM line", (*l).to_owned()));
    }
    v.push((what.to_owned() + " PEM body", body.concat()));
    let der = p.contents();
    // Hex of every 24-byte window would be many needles; the middle of the
    // DER holds the private scalar of a PKCS#8 EC key.
    let mid = der.len() / 3;
    v.push((
        what.to_owned() + " DER hex",
        hex::encode(&der[mid..mid + 24]),
    ));
    v.push((
        what.to_owned() + " DER base64 (unwrapped)",
        b64(der)[8..56].to_owned(),
    ));
    v
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Logs in to the client API (a wrong password first), lists messages with
/// the token; returns the token.
fn client_api(inst: &Instance, address: &str, password: &str) -> String {
    use caliopen_proto::pb::client::client_client::ClientClient;
    use caliopen_proto::pb::client::{ListMessagesRequest, LoginRequest};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let api = inst.bound.and_then(|b| b.api).expect("client API address");
    let pem = std::fs::read(inst.data.join("tls.pem")).expect("tls.pem");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ch = Endpoint::from_shared(format!("https://{api}"))
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
        let bad = c
            .login(LoginRequest {
                address: address.into(),
                password: WRONG_PW.into(),
            })
            .await;
        assert!(bad.is_err(), "a wrong password logged in");
        let token = c
            .login(LoginRequest {
                address: address.into(),
                password: password.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .token;
        assert!(token.len() >= 32, "short token");
        let mut r = tonic::Request::new(ListMessagesRequest::default());
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        c.list_messages(r).await.expect("list with the token");
        token
    })
}

#[test]
fn a_full_scenario_logs_no_key_token_or_password_and_secret_files_are_0600() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let assoc = Assoc::start(root, "127.0.0.1:0".parse().expect("addr"));

    let mut a = Instance::init(
        root,
        "alpha",
        "alpha.test",
        Some(format!("127.0.0.1:{}", free_udp_port())),
        None,
        None,
    );
    let mut b = Instance::init(
        root,
        "beta",
        "beta.test",
        Some(format!("127.0.0.1:{}", free_udp_port())),
        None,
        None,
    );
    let mut cli_out = a.init_out.clone() + &b.init_out;
    cli_out += &a.join(&assoc, "alpha");
    cli_out += &b.join(&assoc, "beta");
    // Everything at debug level (our crates and the libraries).
    for i in [&mut a, &mut b] {
        i.env.push(("RUST_LOG".into(), "debug".into()));
    }
    b.set("log", "format = \"json\"");
    // The client API too: passwords and user tokens go through it.
    a.set("api", "listen = \"127.0.0.1:0\"");

    // CLI output is captured too: users added offline and (below) online.
    let (o, e) = a.add_user("alice", ALICE_PW);
    cli_out += &(o + &e);
    let (o, e) = b.add_user("bob", BOB_PW);
    cli_out += &(o + &e);
    a.start();
    b.start();
    // The admin socket, while the daemon runs, is the owner's alone.
    for inst in [&a, &b] {
        let sock = inst.data.join("admin.sock");
        assert_eq!(
            mode(&sock),
            0o600,
            "{} is {:o}",
            sock.display(),
            mode(&sock)
        );
    }
    // Online: through the admin socket with the bearer token.
    let (o, e) = a.add_user("carol", CAROL_PW);
    cli_out += &(o + &e);

    // AUTH PLAIN: mail for a member over the mesh, and for a local user.
    let (ok, out) = submit(
        &a,
        "alice@alpha.test",
        ALICE_PW,
        "PLAIN",
        &[
            (vec!["bob@beta.test".into()], "over the mesh".into()),
            (vec!["carol@alpha.test".into()], "local".into()),
        ],
    );
    assert!(ok, "{out}");
    // AUTH LOGIN.
    let (ok, out) = submit(
        &a,
        "carol@alpha.test",
        CAROL_PW,
        "LOGIN",
        &[(vec!["alice@alpha.test".into()], "by login".into())],
    );
    assert!(ok, "{out}");
    // A failed login (the attempted password must not be logged either).
    let (ok, out) = submit(&a, "alice@alpha.test", WRONG_PW, "PLAIN", &[]);
    assert!(!ok && out.contains("535"), "{out}");
    // Inbound mail from the world at B.
    assert!(reliab::send_mx(
        b.smtp(),
        "someone@ext.test",
        "bob@beta.test",
        "from outside"
    ));
    let bob = b.wait_for("bob", 2, Duration::from_secs(20));
    assert!(bob.iter().any(|m| m["via"] == "mesh"), "{bob:?}");
    assert_eq!(a.wait_for("carol", 1, Duration::from_secs(5)).len(), 1);
    cli_out += &serde_json::to_string(&a.list("alice")).expect("json");
    // Client API: a failed and a good login, a listing with the token.
    let client_token = client_api(&a, "carol@alpha.test", CAROL_PW);
    // The operator's view of a contact (a user token issued through the admin API).
    let (ok, out, err) = common::run_caliopen(
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
    assert!(ok, "privacy: {err}");
    cli_out += &(out + &err);

    // Restart A with JSON logs, and B with human logs: both formats see a
    // second round of the same operations.
    a.stop();
    b.stop();
    a.set("log", "format = \"json\"");
    b.set("log", "format = \"human\"");
    a.start();
    b.start();
    let (ok, out) = submit(
        &a,
        "alice@alpha.test",
        ALICE_PW,
        "PLAIN",
        &[(vec!["bob@beta.test".into()], "second round".into())],
    );
    assert!(ok, "{out}");
    let (ok, _) = submit(&a, "carol@alpha.test", WRONG_PW, "LOGIN", &[]);
    assert!(!ok);
    b.wait_for("bob", 3, Duration::from_secs(20));
    a.stop();
    b.stop();

    // The secrets.
    let mut needles: Vec<(String, String)> = Vec::new();
    for (inst, name) in [(&a, "alpha"), (&b, "beta")] {
        needles.extend(key_needles(
            &inst.data.join("member.key.pem"),
            &format!("{name} member key"),
        ));
        needles.extend(key_needles(
            &inst.data.join("tls.key"),
            &format!("{name} STARTTLS key"),
        ));
        let token = std::fs::read_to_string(inst.data.join("admin.token")).expect("token");
        let token = token.trim();
        assert!(token.len() >= 32, "admin token too short: {}", token.len());
        needles.push((format!("{name} admin token"), token.to_owned()));
        needles.push((format!("{name} admin token (half)"), token[..16].to_owned()));
    }
    needles.push(("client API token".into(), client_token.clone()));
    needles.push((
        "client API token (half)".into(),
        client_token[..client_token.len() / 2].to_owned(),
    ));
    needles.extend(key_needles(
        &assoc.dir.join("ca.key.pem"),
        "association root key",
    ));
    for (user, pw) in [
        ("alice@alpha.test", ALICE_PW),
        ("carol@alpha.test", CAROL_PW),
        ("bob@beta.test", BOB_PW),
        ("alice@alpha.test", WRONG_PW),
        ("carol@alpha.test", WRONG_PW),
    ] {
        needles.push((format!("password of {user}"), pw.to_owned()));
        needles.push((
            format!("base64 password of {user} (AUTH LOGIN)"),
            b64(pw.as_bytes()),
        ));
        needles.push((
            format!("AUTH PLAIN response of {user}"),
            b64(format!("\0{user}\0{pw}").as_bytes()),
        ));
    }

    let mut logs = vec![("command-line output".to_owned(), cli_out)];
    for inst in [&a, &b] {
        for l in &inst.logs {
            logs.push((
                l.display().to_string(),
                std::fs::read_to_string(l).expect("log"),
            ));
        }
    }
    // The association's audit log is read by people too.
    logs.push((
        "association audit.log".to_owned(),
        std::fs::read_to_string(assoc.dir.join("audit.log")).expect("audit log"),
    ));
    let mut json_lines = 0;
    let mut lines = 0;
    for (name, text) in &logs {
        for line in text.lines() {
            lines += 1;
            if line.starts_with('{') && name.ends_with(".log") && !name.contains("audit") {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
                assert!(v.get("level").is_some(), "{line}");
                json_lines += 1;
            }
            for (what, needle) in &needles {
                assert!(
                    !line.contains(needle.as_str()),
                    "{what} appears in {name}: {line}"
                );
            }
        }
    }
    // The scenario really logged, in both formats.
    assert!(lines > 50, "only {lines} log lines");
    assert!(json_lines > 20, "only {json_lines} JSON log lines");
    assert!(
        logs.iter().any(|(_, t)| t
            .lines()
            .any(|l| !l.starts_with('{') && l.contains("DEBUG"))),
        "no human debug lines"
    );
    // The paths that handle secrets did run and log (the search looked at them).
    assert!(
        logs.iter()
            .any(|(_, t)| t.contains("SMTP authentication failed")),
        "failed logins not logged"
    );
    println!(
        "{lines} log lines ({json_lines} JSON) searched for {} secret forms: none found",
        needles.len()
    );

    // Secret files are the owner's alone.
    for inst in [&a, &b] {
        for f in ["member.key.pem", "tls.key", "admin.token"] {
            let p = inst.data.join(f);
            assert_eq!(mode(&p), 0o600, "{} is {:o}", p.display(), mode(&p));
        }
        assert_eq!(
            mode(&inst.data) & 0o077,
            0,
            "data directory {} is open to others",
            inst.data.display()
        );
    }
    assert_eq!(mode(&assoc.dir.join("ca.key.pem")), 0o600);
}

#[test]
fn a_token_readable_by_others_is_refused_at_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut a = Instance::init(tmp.path(), "alpha", "alpha.test", None, None, None);
    a.start();
    a.stop();
    let token = a.data.join("admin.token");
    assert_eq!(mode(&token), 0o600);
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut child = std::process::Command::new(common::BIN)
        .args(["run", "--config", a.c()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon ran with a world-readable admin token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("read");
    assert!(!status.success());
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("caliopen: error:") && last.contains("admin.token"),
        "{err}"
    );
}

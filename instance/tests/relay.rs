//! Outbound SMTP through a relay: instance A relays mail for the outside
//! world to B's MX (standing in for any relay), with STARTTLS verified
//! against B's certificate; a permanent refusal comes back as a DSN.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::caliopen_ok as caliopen;
use common::Daemon;

fn run(config: &Path, log: &Path) -> (Daemon, SocketAddr, SocketAddr) {
    let stderr = Stdio::from(std::fs::File::create(log).expect("log"));
    let (child, b) = common::spawn_daemon(config, stderr, &[]);
    (Daemon(child), b.smtp, b.submission)
}

fn list(config: &Path, user: &str) -> serde_json::Value {
    let c = config.to_str().expect("utf-8");
    serde_json::from_str(&caliopen(
        &["mail", "list", "--config", c, "--user", user, "--json"],
        None,
    ))
    .expect("json")
}

#[test]
fn mail_for_the_outside_leaves_by_smtp_and_refusals_bounce() {
    let tmp = tempfile::tempdir().expect("tmp");
    let b = tmp.path().join("b");
    let bs = b.to_str().expect("utf-8");
    caliopen(
        &[
            "init",
            "--data",
            bs,
            "--domain",
            "beta.test",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ],
        None,
    );
    let b_cfg = b.join("caliopen.toml");
    caliopen(
        &[
            "user",
            "add",
            "--config",
            b_cfg.to_str().expect("utf-8"),
            "carol",
            "--password-stdin",
        ],
        Some("carol password\n"),
    );
    let (_bd, b_smtp, _) = run(&b_cfg, &tmp.path().join("b.log"));

    let a = tmp.path().join("a");
    let relay = format!("localhost:{}", b_smtp.port());
    let as_ = a.to_str().expect("utf-8");
    caliopen(
        &[
            "init",
            "--data",
            as_,
            "--domain",
            "alpha.test",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--relay",
            &relay,
        ],
        None,
    );
    std::fs::copy(b.join("tls.pem"), a.join("relay-ca.pem")).expect("copy");
    let a_cfg = a.join("caliopen.toml");
    let text = std::fs::read_to_string(&a_cfg).expect("read");
    let line = format!("relay = \"{relay}\"\n");
    assert!(text.contains(&line), "{text}");
    std::fs::write(
        &a_cfg,
        text.replace(&line, &format!("{line}relay_ca = \"relay-ca.pem\"\n")),
    )
    .expect("write");
    caliopen(
        &[
            "user",
            "add",
            "--config",
            a_cfg.to_str().expect("utf-8"),
            "alice",
            "--password-stdin",
        ],
        Some("alice password\n"),
    );
    let (_ad, _, a_sub) = run(&a_cfg, &tmp.path().join("a.log"));

    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
s = smtplib.SMTP("localhost", {port}, timeout=10)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["carol@beta.test"], b"From: alice@alpha.test\r\nTo: carol@beta.test\r\nSubject: by smtp\r\n\r\nHello Carol.\r\n")
s.sendmail("alice@alpha.test", ["nobody@beta.test"], b"From: alice@alpha.test\r\nSubject: doomed\r\n\r\nx\r\n")
s.quit()
"#,
        tls = a.join("tls.pem").display(),
        port = a_sub.port()
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let t0 = Instant::now();
    let (carol, bounce) = loop {
        let c = list(&b_cfg, "carol");
        let al = list(&a_cfg, "alice");
        if c.as_array().is_some_and(|v| !v.is_empty())
            && al.as_array().is_some_and(|v| !v.is_empty())
        {
            break (c[0].clone(), al[0].clone());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not relayed; A's log:\n{}",
            std::fs::read_to_string(tmp.path().join("a.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(carol["via"], "smtp");
    assert_eq!(carol["subject"], "by smtp");
    assert_eq!(
        carol["transport"]["tls_version"], "TLSv1_3",
        "STARTTLS to the relay: {carol}"
    );
    assert_eq!(bounce["subject"], "Undelivered Mail Returned to Sender");
    let log = std::fs::read_to_string(tmp.path().join("a.log")).unwrap_or_default();
    assert!(log.contains("starttls"), "TLS outcome not recorded:\n{log}");
}

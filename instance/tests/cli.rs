//! The `caliopen` command-line contract from outside: init, run, user add,
//! mail list; a bad configuration; SIGTERM; and kill -9 during a stream of
//! inbound mail losing no acknowledged message.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::run_caliopen as caliopen;

fn start(config: &Path) -> (Child, SocketAddr) {
    let (c, smtp, _) = start_with_metrics(config);
    (c, smtp)
}

fn start_with_metrics(config: &Path) -> (Child, SocketAddr, SocketAddr) {
    let (child, b) = common::spawn_daemon(config, Stdio::null(), &[]);
    (child, b.smtp, b.metrics.expect("metrics address"))
}

/// Sends one message; true when the server answered 250 to the final dot.
fn send(addr: SocketAddr, rcpt: &str, n: usize) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return false,
    });
    let mut line = String::new();
    let mut expect = |r: &mut BufReader<TcpStream>, code: &str| -> bool {
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                return line.starts_with(code);
            }
        }
    };
    if !expect(&mut r, "220") {
        return false;
    }
    let steps: [(&[u8], &str); 4] = [
        (b"EHLO t\r\n", "250"),
        (b"MAIL FROM:<s@ext.test>\r\n", "250"),
        (format!("RCPT TO:<{rcpt}>\r\n").leak().as_bytes(), "250"),
        (b"DATA\r\n", "354"),
    ];
    for (cmd, code) in steps {
        if s.write_all(cmd).is_err() || !expect(&mut r, code) {
            return false;
        }
    }
    let body = format!("Subject: message {n}\r\n\r\nbody {n}\r\n.\r\n");
    s.write_all(body.as_bytes()).is_ok() && expect(&mut r, "250")
}

fn sigterm(child: &mut Child) -> bool {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    child.wait().expect("wait").success()
}

#[test]
fn init_user_run_deliver_list_and_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("alpha");
    let d = data.to_str().expect("utf-8");
    let (ok, _, err) = caliopen(
        &[
            "init",
            "--data",
            d,
            "--domain",
            "alpha.test",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--mesh",
            "127.0.0.1:0",
        ],
        None,
    );
    assert!(ok, "{err}");
    for f in [
        "caliopen.toml",
        "member.csr.pem",
        "member.key.pem",
        "tls.pem",
        "tls.key",
    ] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(data.join("member.key.pem"))
            .expect("key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let csr = std::fs::read_to_string(data.join("member.csr.pem")).expect("csr");
    assert!(
        caliopen_ca::parse_csr(csr.as_bytes())
            .expect("a CSR the association accepts")
            .dns_names
            == ["alpha.test"]
    );
    let (ok, _, err) = caliopen(&["init", "--data", d, "--domain", "alpha.test"], None);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");

    let config = data.join("caliopen.toml");
    let c = config.to_str().expect("utf-8");
    // Without a daemon the command opens the database itself.
    let (ok, out, err) = caliopen(
        &["user", "add", "--config", c, "alice", "--password-stdin"],
        Some("correct horse battery\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("alice@alpha.test"), "{out}");
    let (ok, _, err) = caliopen(
        &[
            "user",
            "add",
            "--config",
            c,
            "Bad Name!",
            "--password-stdin",
        ],
        Some("whatever-long\n"),
    );
    assert!(
        !ok && err.starts_with("caliopen: error:") && err.trim().lines().count() == 1,
        "{err}"
    );

    let (mut child, smtp, metrics) = start_with_metrics(&config);
    // With the daemon running the command goes through its admin socket.
    let (ok, out, err) = caliopen(&["user", "add", "--config", c, "bob"], None);
    assert!(ok, "{err}");
    assert!(out.contains("password: "), "{out}");
    assert!(send(smtp, "alice@alpha.test", 1));
    assert!(send(smtp, "bob@alpha.test", 2));
    assert!(!send(smtp, "carol@alpha.test", 3), "unknown user accepted");
    let (ok, out, err) = caliopen(
        &["mail", "list", "--config", c, "--user", "alice", "--json"],
        None,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v.as_array().expect("array").len(), 1);
    for key in [
        "id",
        "from",
        "to",
        "subject",
        "received_at",
        "via",
        "privacy",
    ] {
        assert!(v[0].get(key).is_some(), "{key} missing in {v}");
    }
    assert_eq!(v[0]["via"], "smtp");
    for key in ["total", "technic", "context", "comportment", "explanation"] {
        assert!(
            v[0]["privacy"].get(key).is_some(),
            "privacy.{key} missing in {v}"
        );
    }
    assert!(v[0]["privacy"]["explanation"]
        .as_array()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(v[0]["subject"], "message 1");
    let (ok, out, _) = caliopen(&["mail", "list", "--config", c, "--user", "bob"], None);
    assert!(ok && out.contains("message 2"), "{out}");
    let get = |path: &str| {
        let mut t = TcpStream::connect(metrics).expect("metrics");
        t.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut body = String::new();
        std::io::Read::read_to_string(&mut t, &mut body).expect("read");
        body
    };
    assert!(get("/health").starts_with("HTTP/1.1 200"), "health");
    let m = get("/metrics");
    assert!(
        m.contains("caliopen_messages_stored_total{via=\"smtp\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("caliopen_smtp_rcpt_refused_total{reason=\"unknown_user\"} 1"),
        "{m}"
    );
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    let (ok, _, err) = caliopen(&["mail", "list", "--config", c, "--user", "nobody"], None);
    assert!(!ok && err.contains("nobody"), "{err}");

    assert!(sigterm(&mut child), "daemon exit status");
    assert!(!data.join("admin.sock").exists());
    // Data survives: read directly now.
    let (ok, out, _) = caliopen(&["mail", "list", "--config", c, "--user", "alice"], None);
    assert!(ok && out.contains("message 1"), "{out}");
}

#[test]
fn a_bad_configuration_is_one_line_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = tmp.path().join("bad.toml");
    std::fs::write(
        &f,
        "domains = ['alpha.test']\n[smtp]\nmax_recipients = 'many'\n",
    )
    .expect("write");
    let (ok, _, err) = caliopen(&["run", "--config", f.to_str().expect("utf-8")], None);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("max_recipients"), "{err}");
    let (ok, _, err) = caliopen(
        &[
            "run",
            "--config",
            tmp.path().join("missing.toml").to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
}

#[test]
fn kill_9_during_inbound_mail_loses_no_acknowledged_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("d");
    let d = data.to_str().expect("utf-8");
    assert!(
        caliopen(
            &[
                "init",
                "--data",
                d,
                "--domain",
                "alpha.test",
                "--smtp",
                "127.0.0.1:0",
                "--submission",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0"
            ],
            None
        )
        .0
    );
    let config = data.join("caliopen.toml");
    let c = config.to_str().expect("utf-8");
    assert!(
        caliopen(
            &["user", "add", "--config", c, "alice", "--password-stdin"],
            Some("a long password\n")
        )
        .0
    );
    let mut total_acked = 0;
    for round in 0..3 {
        let (mut child, smtp) = start(&config);
        // Four concurrent senders; the daemon is killed while they run.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut acked = 0;
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        n += 1;
                        if send(smtp, "alice@alpha.test", round * 100_000 + t * 10_000 + n) {
                            acked += 1;
                        } else {
                            break;
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400 + 150 * round as u64));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let acked: usize = senders.into_iter().map(|h| h.join().expect("sender")).sum();
        total_acked += acked;
        let (ok, out, err) = caliopen(
            &["mail", "list", "--config", c, "--user", "alice", "--json"],
            None,
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let subjects: Vec<&str> = v
            .as_array()
            .expect("array")
            .iter()
            .map(|m| m["subject"].as_str().unwrap_or(""))
            .collect();
        let mut uniq = subjects.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), subjects.len(), "a message was stored twice");
        assert!(
            subjects.len() >= total_acked,
            "round {round}: {} stored < {total_acked} acknowledged",
            subjects.len()
        );
        // At most one message in flight per sender may be stored without its ack.
        assert!(
            subjects.len() <= total_acked + 4 * (round + 1),
            "round {round}: {} stored, {total_acked} acknowledged",
            subjects.len()
        );
        println!(
            "round {round}: {acked} acknowledged before kill -9, {} stored in all",
            subjects.len()
        );
        assert!(acked > 0, "nothing was sent before the kill");
    }
    let t0 = Instant::now();
    let (mut child, smtp) = start(&config);
    assert!(
        send(smtp, "alice@alpha.test", 999_999),
        "daemon serves after the kills"
    );
    println!("restart to first delivery: {:?}", t0.elapsed());
    assert!(sigterm(&mut child));
}

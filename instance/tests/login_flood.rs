//! Login floods against the real daemon (`caliopen run`), as an attacker on
//! the internet would send them: wrong passwords over submission from many
//! parallel connections (Python's smtplib, STARTTLS then AUTH PLAIN), client
//! API `Login` calls cancelled after 10 ms, and idle TCP connections to the
//! API. While it lasts the MX keeps greeting; afterwards the daemon's peak
//! memory is under a stated bound, few passwords were actually hashed (the
//! throttle counted each guess before checking it), and the owner logs in
//! from another address.
//!
//! `login_flood_short` runs in the suite; `stress_login_flood` (ignored)
//! runs the sizes of the original probe.

use caliopen_proto::pb::client as pb;
use caliopen_proto::pb::client::client_client::ClientClient;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
mod reliab;

use reliab::{api_channel, python, Instance};

const PW: &str = "Alice-correct-horse-42";

/// The daemon's peak resident memory (VmHWM), KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One counter of the metrics page (sum over its labels matching `label`).
fn metric(addr: SocketAddr, name: &str, label: &str) -> u64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).ok();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// True when the MX sends its 220 banner within 5 s.
fn mx_greets(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut b = [0u8; 64];
    let ok = matches!(s.read(&mut b), Ok(n) if n >= 3 && &b[..3] == b"220");
    let _ = s.write_all(b"QUIT\r\n");
    ok
}

/// Python: `threads` connections to submission, each trying up to `tries`
/// wrong passwords for `user` (STARTTLS, AUTH; 50 ms apart, reconnecting when
/// closed), for `secs`.
/// Prints the reply codes seen, as JSON.
fn python_flood(inst: &Instance, user: &str, threads: usize, tries: usize, secs: u64) -> String {
    format!(
        r#"
import json, smtplib, ssl, threading, time
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
codes = {{}}
lock = threading.Lock()
end = time.time() + {secs}
def note(c):
    with lock:
        codes[str(c)] = codes.get(str(c), 0) + 1
def one(i):
    k = 0
    while time.time() < end:
        try:
            s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
            s.starttls(context=ctx)
            s.ehlo("flood.test")
            while time.time() < end and k < {tries}:
                k += 1
                try:
                    s.login("{user}", "wrong-%d-%d" % (i, k))
                    note(235)
                except smtplib.SMTPAuthenticationError as e:
                    note(e.smtp_code)
                except smtplib.SMTPServerDisconnected:
                    note("closed")
                    break
                time.sleep(0.05)
            s.close()
        except Exception as e:
            note(type(e).__name__)
            time.sleep(0.05)
        if k >= {tries}:
            return
ts = [threading.Thread(target=one, args=(i,)) for i in range({threads})]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(codes))
"#,
        tls = inst.data.join("tls.pem").display(),
        port = inst.submission().port(),
    )
}

/// The owner's login over submission from `source`: the reply code.
fn owner_login_from(inst: &Instance, user: &str, source: &str) -> String {
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30, source_address=("{source}", 0))
s.starttls(context=ctx)
s.ehlo("owner.test")
try:
    code, _ = s.login("{user}", "{PW}")
except smtplib.SMTPAuthenticationError as e:
    code = e.smtp_code
print(code)
"#,
        tls = inst.data.join("tls.pem").display(),
        port = inst.submission().port(),
    );
    python(&script).1.trim().to_owned()
}

struct Sizes {
    smtp_threads: usize,
    smtp_tries: usize,
    api_calls: usize,
    idle_api: usize,
    secs: u64,
    /// Peak resident memory allowed, MiB.
    rss_mib: u64,
}

async fn flood(sizes: Sizes) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(tmp.path(), "a", "alpha.test", None, None, None);
    inst.set("api", "listen = \"127.0.0.1:0\"");
    inst.set("api", "handshake_timeout_seconds = 2");
    inst.add_user("alice", PW);
    inst.start();
    let pid = inst.child.as_ref().map(|c| c.id()).expect("pid");
    let bound = inst.bound.expect("bound");
    let metrics = bound.metrics.expect("metrics");
    let rss_before = peak_rss_kib(pid);

    // 1. Idle TCP connections to the API (no TLS ClientHello ever).
    let api = bound.api.expect("api");
    let mut idle = Vec::new();
    // From another address than the flood's: the per-address cap keeps
    // them from taking the slots of everyone else.
    for _ in 0..sizes.idle_api {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from(([127, 0, 0, 3], 0)))
            .expect("bind");
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), sock.connect(api)).await {
            idle.push(s.into_std().expect("std"));
        }
    }
    for s in &idle {
        s.set_nonblocking(false).ok();
    }
    // And the reverse: idle connections holding MX slots (from yet another
    // address) while the API is used below.
    let mut idle_mx = Vec::new();
    for _ in 0..sizes.idle_api.min(100) {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::from(([127, 0, 0, 4], 0)))
            .expect("bind");
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(5), sock.connect(bound.smtp)).await
        {
            idle_mx.push(s);
        }
    }

    // 2. Wrong passwords over submission, from Python threads.
    let script = python_flood(
        &inst,
        "alice@alpha.test",
        sizes.smtp_threads,
        sizes.smtp_tries,
        sizes.secs,
    );
    let py = std::thread::spawn(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3")
    });

    // 3. API logins with wrong passwords, each given up after 10 ms.
    let started = Instant::now();
    let mut calls = Vec::new();
    let mut chans = Vec::new();
    for _ in 0..4 {
        chans.push(api_channel(&inst, "alpha.test").await);
    }
    for i in 0..sizes.api_calls {
        let mut c = ClientClient::new(chans[i % chans.len()].clone());
        calls.push(tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_millis(10),
                c.login(pb::LoginRequest {
                    address: "alice@alpha.test".into(),
                    password: format!("guess-{i}"),
                }),
            )
            .await;
            match r {
                Err(_) => "cancelled".to_owned(),
                Ok(Ok(_)) => "granted".to_owned(),
                Ok(Err(s)) => format!("{:?}", s.code()),
            }
        }));
    }
    // The MX keeps greeting while all of this goes on.
    let mut greeted = 0;
    for _ in 0..5 {
        if mx_greets(bound.smtp) {
            greeted += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for c in calls {
        *outcomes.entry(c.await.expect("task")).or_default() += 1;
    }
    let py = py.join().expect("python thread");
    let smtp_codes = String::from_utf8_lossy(&py.stdout).into_owned();
    assert!(
        py.status.success(),
        "python: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    eprintln!(
        "flood took {:?}; submission replies {smtp_codes}; API outcomes {outcomes:?}",
        started.elapsed()
    );
    assert_eq!(greeted, 5, "the MX stopped greeting under the login flood");
    assert!(
        !smtp_codes.contains("\"235\""),
        "a wrong password was accepted: {smtp_codes}"
    );
    assert!(
        smtp_codes.contains("\"454\""),
        "no temporary refusal under the flood: {smtp_codes}"
    );
    assert!(!outcomes.contains_key("granted"), "{outcomes:?}");
    // The API answers while the MX slots are held; the limit earned on
    // submission holds on it too (same account, same address), even with
    // the right password.
    let mut c = ClientClient::new(api_channel(&inst, "alpha.test").await);
    let r = c
        .login(pb::LoginRequest {
            address: "alice@alpha.test".into(),
            password: PW.into(),
        })
        .await;
    assert_eq!(
        r.err().map(|s| s.code()),
        Some(tonic::Code::ResourceExhausted)
    );
    drop(idle_mx);

    // Every guess was counted before its check: few were hashed at all.
    let checked = metric(metrics, "caliopen_password_checks_total", "argon2");
    let throttled = metric(metrics, "caliopen_logins_total", "throttled");
    eprintln!("passwords hashed: {checked}; logins throttled: {throttled}");
    assert!(
        checked <= 40,
        "{checked} passwords hashed for one account from one address"
    );
    assert!(throttled > 0);

    // The idle API connections were closed by the handshake timeout (or
    // refused at once past the per-address cap).
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle API connection stayed open: {r:?}"
        );
    }

    // The owner logs in from another address.
    assert_eq!(
        owner_login_from(&inst, "alice@alpha.test", "127.0.0.2"),
        "235"
    );
    assert!(mx_greets(bound.smtp));

    let peak = peak_rss_kib(pid);
    eprintln!(
        "daemon peak RSS: {} MiB before, {} MiB after (bound {} MiB)",
        rss_before / 1024,
        peak / 1024,
        sizes.rss_mib
    );
    assert!(
        peak > 0 && peak / 1024 < sizes.rss_mib,
        "peak RSS {} MiB",
        peak / 1024
    );
    let log = inst.last_log();
    assert!(
        log.contains("login throttled: limit engaged"),
        "no log line when the limit engaged"
    );
    assert!(!log.contains("wrong-"), "a password reached the log");
    inst.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_short() {
    flood(Sizes {
        smtp_threads: 60,
        smtp_tries: 400,
        api_calls: 600,
        idle_api: 200,
        secs: 8,
        rss_mib: 250,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress: the original probe's sizes (run with --ignored)"]
async fn stress_login_flood() {
    flood(Sizes {
        smtp_threads: 120,
        smtp_tries: 1000,
        api_calls: 2304,
        idle_api: 5000,
        secs: 20,
        rss_mib: 400,
    })
    .await;
}

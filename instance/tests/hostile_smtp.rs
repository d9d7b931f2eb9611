//! Hostile SMTP clients against a real MX listener on loopback: each gets a
//! clear reply or is cut off, memory stays bounded, nothing is smuggled, and
//! a well-behaved client is served all along. (Complements the lighter
//! checks in `smtp.rs`.)

use caliopen_instance::delivery::MailService;
use caliopen_instance::login::hash_password;
use caliopen_instance::smtp::server::{ListenerConfig, SmtpListener};
use caliopen_instance::smtp::session::Kind;
use caliopen_instance::store::Store;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Mx {
    _tmp: tempfile::TempDir,
    store: Store,
    addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Mx {
    async fn start(tune: impl FnOnce(&mut ListenerConfig)) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = Store::open(&tmp.path().join("db")).expect("store");
        store
            .put_user("alice", &hash_password("secret").expect("hash"))
            .await
            .expect("user");
        let svc = MailService::new(store.clone(), vec!["alpha.test".into()]);
        let mut cfg = ListenerConfig::new(Kind::Mx, "mx.alpha.test");
        cfg.max_message_size = 1024 * 1024;
        tune(&mut cfg);
        let l = SmtpListener::bind("127.0.0.1:0".parse().expect("addr"), cfg)
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(l.run(svc, token.clone(), tracker.clone()));
        Self {
            _tmp: tmp,
            store,
            addr,
            token,
            tracker,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(40), self.tracker.wait())
            .await
            .expect("drained");
    }

    fn subjects(&self) -> Vec<String> {
        self.store
            .list("alice")
            .expect("list")
            .into_iter()
            .map(|m| m.subject)
            .collect()
    }
}

/// A good client: one whole session; returns its latency.
fn good_delivery(addr: SocketAddr, subject: &str) -> Duration {
    let t0 = Instant::now();
    let t = session(
        addr,
        &[
            b"EHLO good.test\r\n".as_slice(),
            b"MAIL FROM:<g@ext.test>\r\n",
            b"RCPT TO:<alice@alpha.test>\r\n",
            b"DATA\r\n",
            format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes(),
            b"QUIT\r\n",
        ],
    );
    assert!(
        t.contains("250 2.0.0 Ok: queued"),
        "good client refused: {t}"
    );
    t0.elapsed()
}

/// Sends each step whole and reads one complete reply after it.
fn session(addr: SocketAddr, steps: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut t = String::new();
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    t.push_str(&line);
    for step in steps {
        if s.write_all(step).is_err() {
            return t;
        }
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return t;
            }
            t.push_str(&line);
            if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                break;
            }
        }
    }
    t
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_readers_are_cut_off_while_others_are_served() {
    let mx = Mx::start(|c| {
        c.command_timeout = Duration::from_secs(2);
        c.data_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = mx.addr;
    let r = tokio::task::spawn_blocking(move || {
        let before = good_delivery(addr, "before");
        // Slowloris: a command one byte every 300 ms, never finished in time
        // (each byte arrives well within any per-read timeout).
        let slow = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let t0 = Instant::now();
            let mut got = Vec::new();
            let cmd = b"EHLO a-very-slow-client.example.test and more and more bytes\r\n";
            for b in cmd.iter().cycle().take(200) {
                // Read first, so that a reply sent while we slept is seen
                // before our next byte meets a closed socket.
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(3).any(|w| w == b"421") {
                            break;
                        }
                    }
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(300));
                if s.write_all(&[*b]).is_err() {
                    break;
                }
            }
            (t0.elapsed(), String::from_utf8_lossy(&got).into_owned())
        });
        // A pipelining client that never reads its replies: megabytes of
        // NOOPs fill its receive window; the server must not wait forever.
        let silent = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            let chunk = b"NOOP\r\n".repeat(10_000);
            let t0 = Instant::now();
            let mut sent = 0usize;
            while t0.elapsed() < Duration::from_secs(30) {
                match s.write(&chunk) {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
            (t0.elapsed(), sent)
        });
        // Meanwhile, good clients are served.
        let mut during = Vec::new();
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(300));
            during.push(good_delivery(addr, &format!("during {i}")));
        }
        let (slow_t, slow_text) = slow.join().expect("slow");
        let (silent_t, sent) = silent.join().expect("silent");
        (before, during, slow_t, slow_text, silent_t, sent)
    })
    .await
    .expect("join");
    let (before, during, slow_t, slow_text, silent_t, sent) = r;
    println!(
        "slowloris cut after {slow_t:?}; silent reader cut after {silent_t:?} ({sent} bytes pushed); \
         good client latency before {before:?}, during {during:?}"
    );
    assert!(
        slow_text.contains("421 4.4.2"),
        "slowloris not timed out: {slow_text:?}"
    );
    assert!(
        slow_t < Duration::from_secs(30),
        "slowloris held the session {slow_t:?}"
    );
    assert!(
        silent_t < Duration::from_secs(30),
        "a client that never reads held the session {silent_t:?}"
    );
    assert_eq!(mx.subjects().len(), 6);
    mx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_never_make_a_second_message() {
    let mx = Mx::start(|_| {}).await;
    let addr = mx.addr;
    // Each payload tries to end DATA early and start a second transaction
    // inside the first message (the 2023 SMTP smuggling family).
    let tricks: [&[u8]; 6] = [
        b"\n.\n",
        b"\r.\r",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n\x00.\r\n",
    ];
    let results = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (i, trick) in tricks.iter().enumerate() {
            let mut data = format!("Subject: outer {i}\r\n\r\nfirst part").into_bytes();
            data.extend_from_slice(trick);
            data.extend_from_slice(
                format!(
                    "MAIL FROM:<ceo@alpha.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\n\
                     Subject: smuggled {i}\r\n\r\nsend money\r\n"
                )
                .as_bytes(),
            );
            data.extend_from_slice(b"\r\n.\r\n");
            let t = session(
                addr,
                &[
                    b"EHLO c\r\n",
                    b"MAIL FROM:<x@ext.test>\r\n",
                    b"RCPT TO:<alice@alpha.test>\r\n",
                    b"DATA\r\n",
                    &data,
                    b"NOOP\r\n",
                    b"QUIT\r\n",
                ],
            );
            out.push(t);
        }
        out
    })
    .await
    .expect("join");
    for (i, t) in results.iter().enumerate() {
        assert_eq!(
            t.matches("250 2.0.0 Ok: queued").count(),
            1,
            "trick {i}: {t}"
        );
        assert!(t.contains("250 2.0.0 OK"), "trick {i}: NOOP after: {t}");
        assert!(t.contains("221"), "trick {i}: {t}");
    }
    let subjects = mx.subjects();
    assert_eq!(subjects.len(), results.len(), "{subjects:?}");
    assert!(
        subjects.iter().all(|s| s.starts_with("outer")),
        "a smuggled message was stored: {subjects:?}"
    );
    // The smuggled text is content of the outer message, kept byte-exact.
    for m in mx.store.list("alice").expect("list") {
        let raw = mx.store.raw(m.id).expect("raw").expect("present");
        assert!(
            raw.windows(10).any(|w| w == b"send money"),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
    mx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_lines_bad_bytes_and_rcpt_floods_get_clear_replies_in_bounded_memory() {
    let mx = Mx::start(|c| c.max_recipients = 100).await;
    let addr = mx.addr;
    let rss0 = rss_kib();
    let (flood, long, bytes, bare, rss_peak) = tokio::task::spawn_blocking(move || {
        let mut peak = 0;
        // 10,000 distinct RCPT for an existing user (distinct spellings of
        // alice@alpha.test: domains and local parts are case-insensitive),
        // pipelined: 452 after the limit.
        let mut burst = b"EHLO c\r\nMAIL FROM:<x@ext.test>\r\n".to_vec();
        for i in 0..10_000u32 {
            let mut k = 0;
            let addr: String = "alice@alpha.test"
                .chars()
                .map(|ch| {
                    if !ch.is_ascii_alphabetic() {
                        return ch;
                    }
                    k += 1;
                    if i >> (k - 1) & 1 == 1 {
                        ch.to_ascii_uppercase()
                    } else {
                        ch
                    }
                })
                .collect();
            burst.extend_from_slice(format!("RCPT TO:<{addr}>\r\n").as_bytes());
        }
        burst.extend_from_slice(b"RSET\r\nQUIT\r\n");
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let mut w = w;
            w.write_all(&burst).expect("write")
        });
        let mut flood = String::new();
        let _ = s.read_to_string(&mut flood);
        writer.join().expect("writer");
        peak = peak.max(rss_kib());

        // 8 MB on one line, no newline for a long while, then more commands.
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            let mut w = w;
            let junk = vec![b'A'; 64 * 1024];
            for _ in 0..128 {
                if w.write_all(&junk).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"\r\nNOOP\r\nQUIT\r\n");
        });
        let mut long = String::new();
        let _ = s.read_to_string(&mut long);
        writer.join().expect("writer");
        peak = peak.max(rss_kib());

        // NUL bytes, invalid UTF-8, control characters in commands and addresses.
        let bytes = session(
            addr,
            &[
                b"EHLO \x00\xff\xfe\r\n",
                b"MAIL FROM:<\xc3\x28@ext.test>\r\n",
                b"RSET\r\n",
                b"MAIL FROM:<a\x00b@ext.test>\r\n",
                b"RSET\r\n",
                b"\x00\x00\x00\r\n",
                b"\xef\xbb\xbfHELO x\r\n",
                b"RSET\r\n",
                b"MAIL FROM:<x@ext.test>\r\n",
                b"RCPT TO:<ali\x00ce@alpha.test>\r\n",
                b"RCPT TO:<alice@alpha.test>\r\n",
                b"DATA\r\n",
                b"Subject: bytes \xff\xfe\r\n\r\n\x00\x01\x02 binary \xc3\x28\r\n.\r\n",
                b"NOOP\r\n",
            ],
        );
        // Bare LF as command terminator, and a bare CR in the middle of a command.
        let bare = session(
            addr,
            &[
                b"EHLO c\n",
                b"MAIL FROM:<x@ext.test>\rRCPT TO:<alice@alpha.test>\r\n",
                b"RSET\n",
                b"NOOP\r\n",
            ],
        );
        (flood, long, bytes, bare, peak)
    })
    .await
    .expect("join");

    let accepted = flood.matches("250 2.1.5").count();
    let limited = flood.matches("452 4.5.3").count();
    println!(
        "10,000 RCPT: {accepted} accepted, {limited} answered 452; RSS {rss0} KiB before, \
         peak {rss_peak} KiB during the flood and an 8 MB line"
    );
    assert_eq!(accepted, 100, "{accepted} accepted");
    assert_eq!(accepted + limited, 10_000, "every RCPT answered");
    assert!(
        flood.contains("250 2.0.0 Reset"),
        "session alive after the flood"
    );
    assert!(
        long.contains("500 5.5.2 Line too long"),
        "{}",
        &long[..long.len().min(400)]
    );
    assert!(
        long.contains("250 2.0.0 OK"),
        "NOOP after long line: {long}"
    );
    assert!(
        rss_peak.saturating_sub(rss0) < 64 * 1024,
        "memory grew by {} KiB",
        rss_peak.saturating_sub(rss0)
    );
    // Bad bytes: clear replies, the session lives on and delivers.
    assert!(bytes.contains("250 2.0.0 Ok: queued"), "{bytes}");
    assert!(bytes.ends_with("250 2.0.0 OK\r\n"), "{bytes}");
    for l in bytes.lines() {
        let code: u16 = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!((200..600).contains(&code), "unclear reply {l:?} in {bytes}");
    }
    assert!(bare.ends_with("250 2.0.0 OK\r\n"), "{bare}");
    let subjects = mx.subjects();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    mx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_get_421_beyond_the_limit_and_the_server_recovers() {
    let mx = Mx::start(|c| {
        c.max_connections = 20;
        c.command_timeout = Duration::from_secs(3);
    })
    .await;
    let addr = mx.addr;
    let (refused, after) = tokio::task::spawn_blocking(move || {
        // 40 idle connections: the first 20 hold slots.
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..40 {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            if line.starts_with("421") {
                refused += 1;
            }
            held.push(s);
        }
        // Idle ones are timed out; then a good client gets in.
        std::thread::sleep(Duration::from_secs(4));
        drop(held);
        (refused, good_delivery(addr, "after"))
    })
    .await
    .expect("join");
    println!("40 idle connections: {refused} refused with 421; good client after: {after:?}");
    assert_eq!(refused, 20);
    assert_eq!(mx.subjects(), vec!["after".to_owned()]);
    mx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_slot() {
    use tokio::io::{AsyncBufReadExt, BufReader as TokioBufReader};
    let mx = Mx::start(|c| {
        c.max_connections = 20;
        c.max_connections_per_ip = 3;
    })
    .await;
    async fn greet(from: &str, to: SocketAddr) -> (tokio::net::TcpStream, String) {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(format!("{from}:0").parse().expect("addr"))
            .expect("bind");
        let s = sock.connect(to).await.expect("connect");
        let (r, w) = s.into_split();
        let mut line = String::new();
        let mut r = TokioBufReader::new(r);
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .expect("greeting in time")
            .expect("read");
        (r.into_inner().reunite(w).expect("reunite"), line)
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, line) = greet("127.0.0.1", mx.addr).await;
        assert!(line.starts_with("220"), "{line}");
        held.push(s);
    }
    let (_s, line) = greet("127.0.0.1", mx.addr).await;
    assert!(
        line.starts_with("421") && line.contains("your address"),
        "{line}"
    );
    // Another address is still served.
    let (_other, line) = greet("127.0.0.2", mx.addr).await;
    assert!(line.starts_with("220"), "{line}");
    // A slot freed by one address is given back.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_again, line) = greet("127.0.0.1", mx.addr).await;
    assert!(line.starts_with("220"), "{line}");
    drop(held);
    mx.stop().await;
}

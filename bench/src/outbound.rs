//! Outbound SMTP with and without DKIM signing (issue 17): users submit
//! (STARTTLS, AUTH PLAIN, MAIL/RCPT/DATA) to a `caliopen run` daemon whose
//! relay is Postfix's `smtp-sink`; a run ends when the daemon has handed
//! every message to the sink (`caliopen_messages_sent_total`). The same
//! workload runs against a daemon with `[dkim] sign = false` and one that
//! signs every message with Ed25519 and RSA-2048, back to back, so that
//! the ratio is measured on the same machine in the same invocation.

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt, BufReader};

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Messages per second answered 250 by submission.
    pub accepted_per_s: f64,
    /// Messages per second handed to the relay.
    pub delivered_per_s: f64,
    /// Messages the daemon signed.
    pub signed: u64,
}

impl Outcome {
    /// The faster of this run and `other`.
    pub fn better(self, other: Option<Outcome>) -> Outcome {
        match other {
            Some(o) if o.delivered_per_s >= self.delivered_per_s => o,
            _ => self,
        }
    }
}

struct Sink(Child);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_sink(port: u16) -> Result<Sink> {
    let mut c = Command::new("smtp-sink");
    if is_root() {
        c.args(["-u", "nobody"]);
    }
    let child = c
        .arg(format!("127.0.0.1:{port}"))
        .arg("256")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn smtp-sink (is postfix installed?)")?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("smtp-sink does not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Sink(child))
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

async fn command<S: AsyncBufRead + AsyncWrite + Unpin>(
    s: &mut S,
    cmd: &[u8],
    code: &str,
) -> Result<()> {
    s.write_all(cmd).await?;
    s.flush().await?;
    crate::smtp::expect(s, code).await
}

type Session = BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A submission session: STARTTLS, AUTH PLAIN.
async fn login(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    user: &str,
    password: &str,
) -> Result<Session> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut plain = BufReader::new(tcp);
    crate::smtp::expect(&mut plain, "220").await?;
    command(&mut plain, b"EHLO bench.client\r\n", "250").await?;
    command(&mut plain, b"STARTTLS\r\n", "220").await?;
    let name = rustls::pki_types::ServerName::try_from("mx.bench.test")?.to_owned();
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, plain.into_inner())
        .await
        .context("TLS handshake")?;
    let mut s = BufReader::new(tls);
    command(&mut s, b"EHLO bench.client\r\n", "250").await?;
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
    };
    command(&mut s, format!("AUTH PLAIN {auth}\r\n").as_bytes(), "235").await?;
    Ok(s)
}

/// Sends `count` copies of `body` on a logged-in session, then QUIT.
async fn send(
    mut s: Session,
    user: String,
    to: String,
    body: Arc<Vec<u8>>,
    count: usize,
) -> Result<()> {
    for _ in 0..count {
        command(&mut s, format!("MAIL FROM:<{user}>\r\n").as_bytes(), "250").await?;
        command(&mut s, format!("RCPT TO:<{to}>\r\n").as_bytes(), "250").await?;
        command(&mut s, b"DATA\r\n", "354").await?;
        s.write_all(&body).await?;
        command(&mut s, b".\r\n", "250").await?;
    }
    command(&mut s, b"QUIT\r\n", "221").await?;
    Ok(())
}

/// Submits `n` messages of about `size` bytes over `sessions` sessions to
/// a fresh daemon in `dir` relaying to a fresh smtp-sink; `sign` sets
/// `[dkim] sign`.
pub async fn run(
    bin: &Path,
    dir: &Path,
    sign: bool,
    n: usize,
    sessions: usize,
    size: usize,
) -> Result<Outcome> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let sink_port = free_port()?;
    let _sink = start_sink(sink_port)?;
    let relay = format!("127.0.0.1:{sink_port}");
    let extra = format!("\n[dkim]\nsign = {sign}\n");
    let daemon = crate::smtp::Daemon::start_configured(
        bin,
        dir,
        "bench.test",
        "sender",
        &["--relay", &relay],
        &extra,
    )?;
    let tls = crate::imap::tls_config()?;
    let user = "sender@bench.test";
    let password = crate::smtp::DAEMON_PASSWORD;
    // No line of the generated body starts with a dot: sent as it is.
    let body = Arc::new(crate::smtp::message(
        user,
        "rcpt@outside.test",
        "outbound",
        size,
    ));
    let sent = || {
        crate::smtp::metric(
            daemon.metrics,
            "caliopen_messages_sent_total{path=\"smtp_plain\"}",
        )
        .unwrap_or(0)
            + crate::smtp::metric(
                daemon.metrics,
                "caliopen_messages_sent_total{path=\"smtp_starttls\"}",
            )
            .unwrap_or(0)
    };
    let to = "rcpt@outside.test".to_owned();
    // Warm up outside the timing.
    let warm = login(daemon.submission, tls.clone(), user, password).await?;
    send(warm, user.to_owned(), to.clone(), body.clone(), 20).await?;
    let t_warm = Instant::now();
    while sent() < 20 {
        if t_warm.elapsed() > Duration::from_secs(60) {
            bail!("warm-up: the relay got {} of 20", sent());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let base = sent();
    let per = n.div_ceil(sessions);
    // Logged in one after the other, outside the timing: concurrent
    // logins to one account from one address are throttled like guesses.
    let mut ready = Vec::new();
    for _ in 0..sessions {
        ready.push(login(daemon.submission, tls.clone(), user, password).await?);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in ready {
        tasks.push(tokio::spawn(send(
            s,
            user.to_owned(),
            to.clone(),
            body.clone(),
            per,
        )));
    }
    for t in tasks {
        t.await??;
    }
    let accepted = t0.elapsed();
    let total = (per * sessions) as u64;
    let mut last = (0, Instant::now());
    loop {
        let got = sent() - base;
        if got >= total {
            break;
        }
        if got > last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("no delivery for 60 s: {got} of {total} handed to the relay");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = t0.elapsed();
    let signed = crate::smtp::metric(
        daemon.metrics,
        "caliopen_dkim_messages_total{outcome=\"signed\"}",
    )
    .unwrap_or(0);
    daemon.stop()?;
    Ok(Outcome {
        accepted_per_s: total as f64 / accepted.as_secs_f64(),
        delivered_per_s: total as f64 / delivered.as_secs_f64(),
        signed,
    })
}

/// Microseconds to sign one message of `size` bytes (both signatures),
/// on one thread, over `rounds` messages.
pub fn sign_cost(dir: &Path, size: usize, rounds: usize) -> Result<f64> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let keys = caliopen_instance::dkim::DkimKeys::open(dir)?;
    let now = 1_800_000_000;
    keys.ensure(&["bench.test".into()], now)?;
    let msg = crate::smtp::message("sender@bench.test", "rcpt@outside.test", "outbound", size);
    keys.sign(&msg, now)?.context("no signature")?;
    let t0 = Instant::now();
    for _ in 0..rounds {
        keys.sign(&msg, now)?.context("no signature")?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / rounds as f64)
}

//! SMTP acceptance and delivery: Postfix's `smtp-source` against Postfix
//! (Maildir) and against a `caliopen run` daemon; and a small SMTP client
//! that records per-message latency (for the mesh/SMTP comparison).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Runs `smtp-source` once; returns when it exits.
pub fn smtp_source(
    addr: SocketAddr,
    sessions: usize,
    count: usize,
    size: usize,
    from: &str,
    to: &str,
) -> Result<Child> {
    Command::new("smtp-source")
        .args([
            "-d",
            "-s",
            &sessions.to_string(),
            "-m",
            &count.to_string(),
            "-l",
            &size.to_string(),
            "-f",
            from,
            "-t",
            to,
            &format!("{}:{}", addr.ip(), addr.port()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn smtp-source (is postfix installed?)")
}

/// Sends `count` messages with smtp-source and waits until `delivered()`
/// has grown by `count` (durably in mailboxes). Returns the time from the
/// start of smtp-source until it exited (every message answered 250) and
/// until every message was delivered.
pub fn timed_run(
    addr: SocketAddr,
    sessions: usize,
    count: usize,
    size: usize,
    to: &str,
    delivered: &dyn Fn() -> Result<u64>,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let base = delivered()?;
    let t0 = Instant::now();
    let mut child = smtp_source(addr, sessions, count, size, "bench@sender.test", to)?;
    let mut exited = None;
    // A server that stops delivering (Postfix's local agent refusing to
    // start, say) is an error after this long without progress, not a
    // wait of the whole timeout.
    let stall = Duration::from_secs(60).min(timeout);
    let (mut last_n, mut last_progress) = (0u64, Instant::now());
    loop {
        if exited.is_none() {
            if let Some(st) = child.try_wait()? {
                if !st.success() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    bail!("smtp-source failed ({st}): {}", err.trim());
                }
                exited = Some(t0.elapsed());
            }
        }
        let n = delivered()?.saturating_sub(base);
        if let (true, Some(accepted)) = (n >= count as u64, exited) {
            return Ok((accepted, t0.elapsed()));
        }
        if n > last_n {
            (last_n, last_progress) = (n, Instant::now());
        } else if last_progress.elapsed() > stall {
            let _ = child.kill();
            bail!(
                "no delivery for {stall:?}: {n} of {count} delivered to {to} via {addr} \
                 (for Postfix: is its local delivery agent running? see /var/log/mail.log, \
                 `postconf mailbox_size_limit message_size_limit`)"
            );
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            bail!("timed out: {n} of {count} delivered after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Number of files in a Maildir's `new/` and `cur/`.
pub fn maildir_count(maildir: &Path) -> Result<u64> {
    let mut n = 0;
    for sub in ["new", "cur"] {
        let d = maildir.join(sub);
        n += std::fs::read_dir(&d)
            .with_context(|| format!("read {}", d.display()))?
            .count() as u64;
    }
    Ok(n)
}

/// Removes the delivered files of a Maildir (between runs).
pub fn maildir_clear(maildir: &Path) -> Result<()> {
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(maildir.join(sub))?.flatten() {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// The password of the user `Daemon::start` adds.
pub const DAEMON_PASSWORD: &str = "a benchmark password";

/// A `caliopen run` daemon started for the benchmark.
pub struct Daemon {
    child: Child,
    /// Data directory.
    pub data: PathBuf,
    /// MX listener.
    pub smtp: SocketAddr,
    /// Submission listener (STARTTLS, AUTH).
    pub submission: SocketAddr,
    /// Metrics endpoint.
    pub metrics: SocketAddr,
    /// Client API (TLS), when started with `--api`.
    pub api: Option<SocketAddr>,
    /// IMAP listener (STARTTLS), when started with `--imap`.
    pub imap: Option<SocketAddr>,
}

fn caliopen(bin: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    if let (Some(s), Some(mut i)) = (stdin, c.stdin.take()) {
        i.write_all(s.as_bytes())?;
    }
    let o = c.wait_with_output()?;
    if !o.status.success() {
        bail!(
            "caliopen {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Daemon {
    /// `caliopen init` in `data` for `domain`, adds `user`, starts `caliopen run`.
    pub fn start(bin: &Path, data: &Path, domain: &str, user: &str) -> Result<Self> {
        Self::start_with(bin, data, domain, user, &[])
    }

    /// The same, with more `caliopen init` arguments (e.g. `--api ADDR`).
    pub fn start_with(
        bin: &Path,
        data: &Path,
        domain: &str,
        user: &str,
        init_args: &[&str],
    ) -> Result<Self> {
        Self::start_configured(bin, data, domain, user, init_args, "")
    }

    /// The same, with `extra` appended to the configuration `init` wrote
    /// (whole sections, e.g. `[dkim]`).
    pub fn start_configured(
        bin: &Path,
        data: &Path,
        domain: &str,
        user: &str,
        init_args: &[&str],
        extra: &str,
    ) -> Result<Self> {
        let d = data.to_str().context("utf-8 path")?;
        let mut args = vec![
            "init",
            "--data",
            d,
            "--domain",
            domain,
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(init_args);
        caliopen(bin, &args, None)?;
        let config = data.join("caliopen.toml");
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&config)?;
            text.push_str(extra);
            std::fs::write(&config, text)?;
        }
        let c = config.to_str().context("utf-8 path")?;
        caliopen(
            bin,
            &["user", "add", "--config", c, user, "--password-stdin"],
            Some(&format!("{DAEMON_PASSWORD}\n")),
        )?;
        let log = std::fs::File::create(data.join("daemon.log"))?;
        let mut child = Command::new(bin)
            .args(["run", "--config", c])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let w: Vec<&str> = line.split_whitespace().collect();
        let addr = |i: usize| -> Result<SocketAddr> {
            w.get(i)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("daemon did not print its addresses: {line:?}"))
        };
        Ok(Self {
            smtp: addr(1)?,
            submission: addr(3)?,
            metrics: addr(5)?,
            api: w.get(7).and_then(|s| s.parse().ok()),
            imap: w.get(9).and_then(|s| s.parse().ok()),
            data: data.to_owned(),
            child,
        })
    }

    /// Messages stored for local users by SMTP (the metrics counter, which
    /// counts after the group commit that makes them durable).
    pub fn stored_smtp(&self) -> Result<u64> {
        metric(self.metrics, "caliopen_messages_stored_total{via=\"smtp\"}")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the daemon in bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// Peak resident memory of the daemon in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0)
    }

    /// SIGTERM, and wait.
    pub fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one sample (`name` with its labels, exactly) from a Prometheus endpoint.
pub fn metric(addr: SocketAddr, name: &str) -> Result<u64> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse::<u64>().ok())
        })
        .with_context(|| format!("metric {name} not found"))
}

/// A message of about `size` bytes of body, with headers.
pub fn message(from: &str, to: &str, subject: &str, size: usize) -> Vec<u8> {
    let mut m = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n").into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog, durably, 0123456789 abcdefghij\r\n";
    let mut left = size;
    while left > 0 {
        let n = left.min(line.len());
        m.extend_from_slice(&line[..n]);
        left -= n;
    }
    if !m.ends_with(b"\r\n") {
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Reads one SMTP reply (all its lines), which must have `code`.
pub async fn expect<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, code: &str) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("connection closed, expected {code}");
        }
        if !line.starts_with(code) {
            bail!("expected {code}, got {}", line.trim());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// One SMTP session sending `count` messages (MAIL, RCPT, DATA; no
/// pipelining); returns each message's latency from MAIL to the 250 after
/// the final dot.
pub async fn session(
    addr: SocketAddr,
    from: &str,
    to: &str,
    body: &[u8],
    count: usize,
) -> Result<Vec<Duration>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (r, mut w) = tcp.into_split();
    let mut r = tokio::io::BufReader::new(r);
    expect(&mut r, "220").await?;
    w.write_all(b"EHLO bench.client\r\n").await?;
    expect(&mut r, "250").await?;
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        w.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
            .await?;
        expect(&mut r, "250").await?;
        w.write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())
            .await?;
        expect(&mut r, "250").await?;
        w.write_all(b"DATA\r\n").await?;
        expect(&mut r, "354").await?;
        w.write_all(body).await?;
        w.write_all(b".\r\n").await?;
        expect(&mut r, "250").await?;
        lat.push(t0.elapsed());
    }
    w.write_all(b"QUIT\r\n").await?;
    Ok(lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_headers_the_size_asked_and_ends_with_crlf() {
        let m = message("a@b.test", "c@d.test", "s", 2048);
        let text = String::from_utf8_lossy(&m);
        assert!(text.starts_with("From: <a@b.test>\r\n"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.len())
            .unwrap_or(0);
        assert!((2048..2051).contains(&body), "{body}");
        assert!(m.ends_with(b"\r\n"));
        assert!(!text.contains("\r\n.\r\n"));
    }
}

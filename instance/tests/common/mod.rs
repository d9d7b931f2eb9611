//! Helpers shared by the tests that drive the `caliopen` binary.
#![allow(dead_code)] // each test binary uses its own subset

pub(crate) mod federation;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A loopback port free a moment ago (for configurations written before
/// the listener starts).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_caliopen");

/// Runs `caliopen ARGS` with `stdin`; returns (success, stdout, stderr).
pub(crate) fn run_caliopen(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
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
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `caliopen ARGS`, which must succeed; returns stdout.
pub(crate) fn caliopen_ok(args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = run_caliopen(args, stdin);
    assert!(ok, "caliopen {args:?}: {err}");
    out
}

/// The addresses a daemon printed once bound.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// MX listener.
    pub smtp: SocketAddr,
    /// Submission listener.
    pub submission: SocketAddr,
    /// Metrics endpoint, when enabled.
    pub metrics: Option<SocketAddr>,
    /// Client API, when enabled.
    pub api: Option<SocketAddr>,
    /// IMAP, when enabled.
    pub imap: Option<SocketAddr>,
    /// The web client, when enabled.
    pub web: Option<SocketAddr>,
    pub acme_http: Option<SocketAddr>,
}

/// Starts `caliopen run --config CONFIG` (stderr to `stderr`) and waits for
/// its "smtp A submission B metrics C api D" line.
pub(crate) fn spawn_daemon(config: &Path, stderr: Stdio, envs: &[(&str, &str)]) -> (Child, Bound) {
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn run");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    if line.is_empty() {
        // Closed stdout: it stopped before listening (its log, the
        // caller's `stderr`, says why: a port taken meanwhile, a bad file).
        let status = child.wait().expect("wait");
        panic!("`caliopen run` exited before printing its addresses ({status}); see its log");
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr = |i: usize| -> SocketAddr {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no address at word {i} of {line:?}"))
    };
    let bound = Bound {
        smtp: addr(1),
        submission: addr(3),
        metrics: words.get(5).and_then(|w| w.parse().ok()),
        api: words.get(7).and_then(|w| w.parse().ok()),
        imap: words.get(9).and_then(|w| w.parse().ok()),
        web: words.get(11).and_then(|w| w.parse().ok()),
        acme_http: words.get(13).and_then(|w| w.parse().ok()),
    };
    (child, bound)
}

/// A helper process of a test (a server we did not write), killed and
/// reaped when dropped.
pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running daemon, stopped with SIGTERM (and reaped) when dropped.
pub(crate) struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Runs a Python script, which must succeed; returns its standard output.
pub(crate) fn python(script: &str) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One sample (its name with labels, exactly) of a daemon's Prometheus
/// endpoint; 0 when absent.
pub(crate) fn metric(addr: SocketAddr, name: &str) -> u64 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

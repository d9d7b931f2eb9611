//! Helpers for the reliability and security tests (secrets, outages, crash
//! safety, partitions): an in-process association service on its own
//! runtime, and instances driven through the `caliopen` binary.
#![allow(dead_code)] // each test binary uses its own subset

use caliopen_ca::{Authority, BoundService, Settings, SignRequest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;

/// A free UDP port on loopback (for a mesh endpoint named before it binds).
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The association: a CA and its TLS service on a runtime of its own, so
/// that tests driving binaries can stay synchronous.
pub(crate) struct Assoc {
    /// The authority (sign, revoke, publish).
    pub ca: Arc<Authority>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Where the root certificate is written.
    pub ca_file: PathBuf,
    /// The association directory.
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Assoc {
    /// Creates the association under `root/assoc` and starts its service on `listen`.
    pub(crate) fn start(root: &Path, listen: SocketAddr) -> Self {
        let dir = root.join("assoc");
        let ca = Arc::new(
            Authority::init(&dir, "Reliability Test", 3650, Settings::default()).expect("init"),
        );
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, ca.root_pem()).expect("write ca");
        let (tx_url, rx_url) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ca2 = ca.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let bound = BoundService::bind(ca2, listen, &[]).await.expect("bind");
                tx_url
                    .send(format!("https://{}", bound.local_addr().expect("addr")))
                    .expect("send");
                let _ = bound
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let url = rx_url
            .recv_timeout(Duration::from_secs(20))
            .expect("association up");
        Self {
            ca,
            url,
            ca_file,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Assoc {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One instance, driven through the binary.
pub(crate) struct Instance {
    /// Data directory.
    pub data: PathBuf,
    /// `DATA/caliopen.toml`.
    pub config: PathBuf,
    /// The running daemon.
    pub child: Option<Child>,
    /// Its bound addresses.
    pub bound: Option<common::Bound>,
    /// Mesh endpoint (when labelled).
    pub mesh: Option<String>,
    /// Every daemon log written so far (one file per start).
    pub logs: Vec<PathBuf>,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    /// Program used to run the daemon (e.g. `ip netns exec NS BIN`); empty: the binary.
    pub wrapper: Vec<String>,
    /// What `caliopen init` printed.
    pub init_out: String,
    /// When the daemon last started.
    pub started: Option<Instant>,
}

impl Instance {
    /// `caliopen init` under `root/id` for `domain`, with an optional mesh
    /// endpoint and relay. Listeners on port 0 unless `fixed` gives MX and
    /// submission addresses.
    pub(crate) fn init(
        root: &Path,
        id: &str,
        domain: &str,
        mesh: Option<String>,
        relay: Option<&str>,
        fixed: Option<(SocketAddr, SocketAddr)>,
    ) -> Self {
        let data = root.join(id);
        let (smtp, sub) = fixed.map_or(("127.0.0.1:0".into(), "127.0.0.1:0".into()), |(a, b)| {
            (a.to_string(), b.to_string())
        });
        let mut args: Vec<String> = vec![
            "init".into(),
            "--data".into(),
            data.to_str().expect("utf-8").into(),
            "--domain".into(),
            domain.into(),
            "--smtp".into(),
            smtp,
            "--submission".into(),
            sub,
            "--metrics".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(m) = &mesh {
            args.push("--mesh".into());
            args.push(m.clone());
        }
        if let Some(r) = relay {
            args.push("--relay".into());
            args.push(r.into());
        }
        let (ok, out, err) =
            common::run_caliopen(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
        assert!(ok, "init: {err}");
        Self {
            init_out: out + &err,
            started: None,
            config: data.join("caliopen.toml"),
            data,
            child: None,
            bound: None,
            mesh,
            logs: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// The configuration path as a string.
    pub(crate) fn c(&self) -> &str {
        self.config.to_str().expect("utf-8")
    }

    /// Has the association sign this instance's CSR, then `caliopen join`.
    pub(crate) fn join(&self, assoc: &Assoc, id: &str) -> String {
        self.join_with(assoc, id, &[])
    }

    /// [`Instance::join`] with more arguments to `caliopen join`.
    pub(crate) fn join_with(&self, assoc: &Assoc, id: &str, extra: &[&str]) -> String {
        let csr = std::fs::read(self.data.join("member.csr.pem")).expect("csr");
        let issued = assoc
            .ca
            .sign(&SignRequest {
                csr,
                member_id: id.into(),
                charter_version: "1.0".into(),
                endpoints: self.mesh.iter().cloned().collect(),
                ..Default::default()
            })
            .expect("sign");
        let cert = self.data.join("signed.pem");
        std::fs::write(&cert, issued.record.certificate_pem).expect("write");
        let out = common::caliopen_ok(
            &[
                "join",
                "--config",
                self.c(),
                "--ca",
                assoc.ca_file.to_str().expect("utf-8"),
                "--cert",
                cert.to_str().expect("utf-8"),
                "--association",
                &assoc.url,
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
            None,
        );
        assert!(out.contains(&format!("joined as member {id}")), "{out}");
        out
    }

    /// Sets `line` (`key = value`) in `[section]` of the configuration:
    /// replaces the key when present, else adds it (and the section).
    pub(crate) fn set(&self, section: &str, line: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read");
        let key = line.split('=').next().unwrap_or("").trim();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut cur = String::new();
        let mut header = None;
        let mut existing = None;
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            if t.starts_with('[') {
                cur = t.trim_matches(|c| c == '[' || c == ']').to_owned();
                if cur == section {
                    header = Some(i);
                }
            } else if cur == section && t.split('=').next().map(str::trim) == Some(key) {
                existing = Some(i);
            }
        }
        match (existing, header) {
            (Some(i), _) => lines[i] = line.to_owned(),
            (None, Some(h)) => lines.insert(h + 1, line.to_owned()),
            (None, None) => {
                lines.push(format!("[{section}]"));
                lines.push(line.to_owned());
            }
        }
        std::fs::write(&self.config, lines.join("\n") + "\n").expect("write");
    }

    /// `caliopen user add` with `password`.
    pub(crate) fn add_user(&self, local: &str, password: &str) -> (String, String) {
        let (ok, out, err) = common::run_caliopen(
            &[
                "user",
                "add",
                "--config",
                self.c(),
                local,
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
        );
        assert!(ok, "user add: {err}");
        (out, err)
    }

    /// Starts the daemon; its stderr goes to a fresh log file.
    pub(crate) fn start(&mut self) {
        let log = self.data.join(format!("daemon.{}.log", self.logs.len()));
        let stderr = Stdio::from(std::fs::File::create(&log).expect("log"));
        let envs: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (child, b) = spawn_wrapped(&self.wrapper, &self.config, stderr, &envs, &log);
        self.logs.push(log);
        self.started = Some(Instant::now());
        self.bound = Some(b);
        self.child = Some(child);
    }

    /// SIGTERM and wait; asserts a clean exit.
    pub(crate) fn stop(&mut self) {
        // The daemon installs its SIGTERM handler only once it has started
        // everything (after printing its addresses): give it that moment.
        if let Some(t) = self.started {
            let settle = Duration::from_millis(1500);
            if t.elapsed() < settle {
                std::thread::sleep(settle - t.elapsed());
            }
        }
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill");
            let st = c.wait().expect("wait");
            assert!(st.success(), "daemon exit {st}: {}", self.last_log());
        }
    }

    /// SIGKILL and wait.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The text of the current (last) log.
    pub(crate) fn last_log(&self) -> String {
        self.logs
            .last()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default()
    }

    /// MX address.
    pub(crate) fn smtp(&self) -> SocketAddr {
        self.bound.expect("running").smtp
    }

    /// Submission address.
    pub(crate) fn submission(&self) -> SocketAddr {
        self.bound.expect("running").submission
    }

    /// `caliopen mail list --json` for `user`.
    pub(crate) fn list(&self, user: &str) -> Vec<serde_json::Value> {
        let out = common::caliopen_ok(
            &[
                "mail",
                "list",
                "--config",
                self.c(),
                "--user",
                user,
                "--json",
            ],
            None,
        );
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `user` holds at least `n` messages; returns them.
    pub(crate) fn wait_for(&self, user: &str, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let t0 = Instant::now();
        loop {
            let l = self.list(user);
            if l.len() >= n {
                return l;
            }
            assert!(
                t0.elapsed() < limit,
                "{user} holds {} of {n} messages after {limit:?}; log:\n{}",
                l.len(),
                self.last_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn_wrapped(
    wrapper: &[String],
    config: &Path,
    stderr: Stdio,
    envs: &[(&str, &str)],
    log: &Path,
) -> (Child, common::Bound) {
    use std::io::BufRead;
    let mut argv: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    argv.extend([
        common::BIN,
        "run",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn run");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr = |i: usize| -> SocketAddr {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no address at word {i} of {line:?}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
    };
    (
        child,
        common::Bound {
            smtp: addr(1),
            submission: addr(3),
            metrics: words.get(5).and_then(|w| w.parse().ok()),
            api: words.get(7).and_then(|w| w.parse().ok()),
            imap: words.get(9).and_then(|w| w.parse().ok()),
            web: words.get(11).and_then(|w| w.parse().ok()),
            acme_http: words.get(13).and_then(|w| w.parse().ok()),
        },
    )
}

/// Submits messages with Python's smtplib over STARTTLS and AUTH
/// (`method`: "PLAIN" or "LOGIN"). Each message is (recipients, subject).
/// Returns (success, output).
pub(crate) fn submit(
    inst: &Instance,
    user: &str,
    password: &str,
    method: &str,
    messages: &[(Vec<String>, String)],
) -> (bool, String) {
    let from = user;
    let mut sends = String::new();
    for (rcpts, subject) in messages {
        let rc: Vec<String> = rcpts.iter().map(|r| format!("{r:?}")).collect();
        sends.push_str(&format!(
            "s.sendmail({from:?}, [{}], b\"From: {from}\\r\\nTo: {}\\r\\nSubject: {subject}\\r\\n\\r\\nhello\\r\\n\")\n",
            rc.join(", "),
            rcpts.join(", "),
        ));
    }
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.starttls(context=ctx)
s.ehlo("client.test")
s.user, s.password = {user:?}, {password:?}
code, resp = s.auth({method:?}, getattr(s, "auth_" + {method:?}.lower()), initial_response_ok=True)
assert code == 235, (code, resp)
{sends}s.quit()
print("sent")
"#,
        tls = inst.data.join("tls.pem").display(),
        port = inst.submission().port(),
    );
    python(&script)
}

/// Runs a Python script (`python3 -c`); returns (success, stdout then stderr).
pub(crate) fn python(script: &str) -> (bool, String) {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A raw MX delivery; true when the final dot got 250.
pub(crate) fn send_mx(addr: SocketAddr, from: &str, rcpt: &str, subject: &str) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(c) = s.try_clone() else { return false };
    let mut r = BufReader::new(c);
    let mut line = String::new();
    let mut expect = |r: &mut BufReader<std::net::TcpStream>, code: &str| -> bool {
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
    let cmds = [
        ("EHLO t\r\n".to_owned(), "250"),
        (format!("MAIL FROM:<{from}>\r\n"), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n"), "250"),
        ("DATA\r\n".to_owned(), "354"),
        (
            format!("From: {from}\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n"),
            "250",
        ),
    ];
    for (cmd, code) in cmds {
        if s.write_all(cmd.as_bytes()).is_err() || !expect(&mut r, code) {
            return false;
        }
    }
    let _ = s.write_all(b"QUIT\r\n");
    true
}

/// A channel to `inst`'s client API over TLS (its own certificate as the
/// root, `domain` as the name to check), with connect and request timeouts.
pub(crate) async fn api_channel(inst: &Instance, domain: &str) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let pem = std::fs::read(inst.data.join("tls.pem")).expect("tls.pem");
    Endpoint::from_shared(format!(
        "https://{}",
        inst.bound
            .and_then(|b| b.api)
            .expect("the client API is not enabled")
    ))
    .expect("uri")
    .tls_config(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(domain),
    )
    .expect("tls")
    .connect_timeout(Duration::from_secs(5))
    .timeout(Duration::from_secs(20))
    .connect()
    .await
    .expect("connect to the client API")
}

/// The text of `inst`'s `GET /metrics`.
pub(crate) fn metrics_text(inst: &Instance) -> String {
    use std::io::{Read, Write};
    let addr = inst.bound.and_then(|b| b.metrics).expect("metrics");
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

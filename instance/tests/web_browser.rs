//! The web client in a real browser: Debian's headless Chromium driven by
//! Selenium (`instance/tests/web/browser.py`), against two labelled
//! instances (alpha.test with alice, beta.test with bob) with `[web]` on.
//!
//! - an ordinary message delivered by swaks is listed, unread, and opens;
//! - every message of the hostile corpus (`instance/tests/web/hostile/`,
//!   its `CANARY` placeholders pointed at a loopback listener that logs
//!   every connection) is opened — page, sandboxed body frame, body URL on
//!   its own, attachments — and nothing may run, open a dialog, navigate,
//!   keep a dangerous element or attribute, or reach the canary; the
//!   session cookie stays out of `document.cookie`;
//! - alice writes to bob in the browser: the route preview shows the mesh
//!   (`route-seal`) as she types, she sends, and bob's open list shows it
//!   live as "Sealed letter carried by a labelled member";
//! - a positive control: with remote content allowed, the newsletter's
//!   logo does reach the canary (so a silent canary means something).
//!
//! Needs `chromium`, `chromium-driver` (Debian) and Python's `selenium`
//! (`.ci/run` installs them); fails, with what to install, without them.
//!
//! Every page is also rendered and captured at a desktop (1280 px) and a
//! phone (390 px) width (`every_page_renders_at_desktop_and_phone_width`),
//! into a temporary directory; with `CALIOPEN_SCREENSHOTS` set (relative to
//! the workspace), into that directory — how `docs/screenshots/` is made:
//!
//! ```text
//! CALIOPEN_SCREENSHOTS=docs/screenshots cargo test -p caliopen-instance --test web_browser every_page
//! ```

mod common;
mod reliab;

use reliab::{free_udp_port, Assoc, Instance};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALICE_PW: &str = "alice-Correct-horse-7";
const BOB_PW: &str = "bob-Correct-horse-7";
const SWAKS_SUBJECT: &str = "Hello from swaks";
const SWAKS_BODY: &str = "An ordinary message, sent by swaks over the MX port.";
const MESH_SUBJECT: &str = "Across the mesh, from the browser";
const MESH_BODY: &str = "Hi Bob, this went from alpha to beta over the mesh.";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Fails (never skips) when the browser stack is missing.
fn require_browser() {
    let mut missing = Vec::new();
    for (bin, pkg) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        if !Path::new(bin).exists() {
            missing.push(format!("{bin} (apt-get install -y {pkg})"));
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !selenium {
        missing.push("Python's selenium (python3 -m pip install selenium==4.51.0)".into());
    }
    if Command::new("swaks").arg("--version").output().is_err() {
        missing.push("swaks (apt-get install -y swaks)".into());
    }
    assert!(
        missing.is_empty(),
        "the browser test needs: {}; .ci/run installs them",
        missing.join(", ")
    );
}

/// A loopback HTTP listener that logs every connection it accepts (one
/// line each, to a file the browser script reads as well) and answers
/// with a 1x1 GIF. Any line in its log during the hostile pass is a leak.
struct Canary {
    addr: SocketAddr,
    log: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

impl Canary {
    fn start(log: PathBuf) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("canary bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        std::fs::write(&log, "").expect("canary log");
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        n += 1;
                        Self::answer(s, peer, n, &log2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(mut s: TcpStream, peer: SocketAddr, n: u64, log: &Path) {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 2048];
        let got = s.read(&mut buf).unwrap_or(0);
        let head = &buf[..got];
        let what = if head.is_empty() {
            "(connected, sent nothing)".to_owned()
        } else if head[0].is_ascii_uppercase() {
            let text = String::from_utf8_lossy(head);
            let first = text.lines().next().unwrap_or("").to_owned();
            let referer = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("referer:"))
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            first + &referer
        } else {
            format!(
                "(non-HTTP bytes, TLS?) {}",
                hex::encode(&head[..head.len().min(8)])
            )
        };
        let line = format!("#{n} from {peer}: {what}\n");
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
            let _ = f.write_all(line.as_bytes());
        }
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                GIF.len()
            )
            .as_bytes(),
        );
        let _ = s.write_all(GIF);
    }

    fn hits(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// A corpus file with `CANARY` replaced by `canary` (`127.0.0.1:PORT`),
/// inside base64 parts too (decoded, replaced, encoded again); CRLF line
/// ends. Quoted-printable and 7bit parts are replaced as text (the
/// placeholder is never cut by a soft line break in the corpus).
fn inject(text: &str, canary: &str) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut boundaries: Vec<String> = Vec::new();
    let (mut in_headers, mut base64_next) = (true, false);
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        i += 1;
        if in_headers {
            let low = l.to_ascii_lowercase();
            if let Some(p) = low.find("boundary=") {
                let b = l[p + 9..].trim_start_matches('"');
                let b = b.split(['"', ';']).next().unwrap_or("").trim();
                boundaries.push(b.to_owned());
            }
            if low.starts_with("content-transfer-encoding:") && low.contains("base64") {
                base64_next = true;
            }
            out.push(l.replace("CANARY", canary).into_bytes());
            if l.is_empty() {
                in_headers = false;
                if base64_next {
                    base64_next = false;
                    let mut data = String::new();
                    while i < lines.len() && !lines[i].is_empty() && !lines[i].starts_with("--") {
                        data.push_str(lines[i].trim());
                        i += 1;
                    }
                    let raw = b64.decode(data.as_bytes()).expect("corpus base64");
                    let enc = b64.encode(replace_bytes(&raw, b"CANARY", canary.as_bytes()));
                    for chunk in enc.as_bytes().chunks(76) {
                        out.push(chunk.to_vec());
                    }
                }
            }
            continue;
        }
        if let Some(b) = l.strip_prefix("--") {
            if boundaries.iter().any(|x| x == b) {
                in_headers = true;
            }
        }
        out.push(l.replace("CANARY", canary).into_bytes());
    }
    let mut joined = out.join(&b"\r\n"[..]);
    if !joined.ends_with(b"\r\n") {
        joined.extend_from_slice(b"\r\n");
    }
    joined
}

/// One message over SMTP to `addr` (the MX port): EHLO, MAIL, RCPT, DATA
/// (dot-stuffed). Returns the server's last reply on failure.
fn deliver(addr: SocketAddr, from: &str, rcpt: &str, data: &[u8]) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let reply = |r: &mut BufReader<TcpStream>, code: &str| -> Result<(), String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return Err(format!("connection closed after {all:?}"));
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                break;
            }
        }
        if all.starts_with(code) {
            Ok(())
        } else {
            Err(all)
        }
    };
    reply(&mut r, "220")?;
    let mut stuffed = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    stuffed.extend_from_slice(b".\r\n");
    for (cmd, code) in [
        (b"EHLO corpus.evil.test\r\n".to_vec(), "250"),
        (format!("MAIL FROM:<{from}>\r\n").into_bytes(), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n").into_bytes(), "250"),
        (b"DATA\r\n".to_vec(), "354"),
        (stuffed, "250"),
    ] {
        w.write_all(&cmd).map_err(|e| e.to_string())?;
        reply(&mut r, code)?;
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}

/// The association, alpha.test (alice) and beta.test (bob), labelled, with
/// the web client on.
struct World {
    _assoc: Assoc,
    alpha: Instance,
    beta: Instance,
}

impl World {
    fn start(root: &Path) -> Self {
        let assoc = Assoc::start(root, "127.0.0.1:0".parse().expect("addr"));
        let mut insts = Vec::new();
        for (id, domain, user, pw) in [
            ("alpha", "alpha.test", "alice", ALICE_PW),
            ("beta", "beta.test", "bob", BOB_PW),
        ] {
            let i = Instance::init(
                root,
                id,
                domain,
                Some(format!("127.0.0.1:{}", free_udp_port())),
                None,
                None,
            );
            i.join(&assoc, id);
            i.set("web", "listen = \"127.0.0.1:0\"");
            i.add_user(user, pw);
            insts.push(i);
        }
        for i in &mut insts {
            i.start();
            assert!(
                i.bound.and_then(|b| b.web).is_some(),
                "{}: no web address printed; log:\n{}",
                i.c(),
                i.last_log()
            );
        }
        let beta = insts.pop().expect("beta");
        let alpha = insts.pop().expect("alpha");
        Self {
            _assoc: assoc,
            alpha,
            beta,
        }
    }

    fn url(i: &Instance) -> String {
        format!("https://{}", i.bound.and_then(|b| b.web).expect("web"))
    }

    fn base_config(&self, tmp: &Path) -> serde_json::Value {
        serde_json::json!({
            "tmp": tmp,
            "alpha": Self::url(&self.alpha),
            "beta": Self::url(&self.beta),
            "alice": "alice@alpha.test",
            "alice_password": ALICE_PW,
            "bob": "bob@beta.test",
            "bob_password": BOB_PW,
            "swaks_subject": SWAKS_SUBJECT,
            "swaks_body": SWAKS_BODY,
            "mesh_subject": MESH_SUBJECT,
            "mesh_body": MESH_BODY,
        })
    }

    fn logs(&self) -> String {
        format!(
            "alpha log (tail):\n{}\nbeta log (tail):\n{}",
            tail(&self.alpha.last_log(), 40),
            tail(&self.beta.last_log(), 40)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

fn swaks_to_alice(alpha: &Instance) {
    let o = Command::new("swaks")
        .args([
            "--server",
            &alpha.smtp().to_string(),
            "--from",
            "carol@example.net",
            "--to",
            "alice@alpha.test",
            "--helo",
            "swaks.test",
            "--timeout",
            "10",
            "--header",
            &format!("Subject: {SWAKS_SUBJECT}"),
            "--body",
            SWAKS_BODY,
        ])
        .output()
        .expect("swaks must be installed (.ci/run installs it)");
    assert!(
        o.status.success(),
        "swaks: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The corpus files, sorted: (stem, text).
fn corpus() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(web_dir().join("hostile"))
        .expect("instance/tests/web/hostile")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            (
                p.file_stem()
                    .and_then(|s| s.to_str())
                    .expect("utf-8 name")
                    .to_owned(),
                std::fs::read_to_string(&p).expect("corpus file"),
            )
        })
        .collect();
    v.sort();
    v
}

/// Delivers the corpus files whose stem passes `keep` to alice, the
/// placeholder pointed at `canary` (and the `[stem]` tag of the subject
/// kept, or removed for the screenshots); returns their stems.
fn deliver_corpus(
    alpha: &Instance,
    canary: &str,
    keep: impl Fn(&str) -> bool,
    tagged: bool,
) -> Vec<String> {
    let mut stems = Vec::new();
    for (stem, text) in corpus().into_iter().filter(|(s, _)| keep(s)) {
        let tag = format!("[{stem}] ");
        assert!(
            text.contains(&tag),
            "{stem}.eml: its Subject must carry the tag [{stem}]"
        );
        let text = if tagged {
            text
        } else {
            text.replacen(&tag, "", 1)
        };
        let data = inject(&text, canary);
        assert!(
            !String::from_utf8_lossy(&data).contains("CANARY"),
            "{stem}.eml: a CANARY placeholder was not replaced"
        );
        deliver(alpha.smtp(), "mallory@evil.test", "alice@alpha.test", &data)
            .unwrap_or_else(|e| panic!("{stem}.eml was not accepted: {e}"));
        stems.push(stem);
    }
    stems
}

/// Runs one phase of the browser script; panics with its output (and the
/// instances' logs) on failure or timeout. Returns its output.
fn browse(
    world: &World,
    tmp: &Path,
    phase: &str,
    mut cfg: serde_json::Value,
    limit: Duration,
) -> String {
    cfg["phase"] = phase.into();
    let file = tmp.join(format!("{phase}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write cfg");
    let out_file = tmp.join(format!("{phase}.out"));
    let out = std::fs::File::create(&out_file).expect("out");
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(web_dir().join("browser.py"))
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("out"))
        .stderr(out)
        .spawn()
        .expect("python3");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_file).unwrap_or_default();
    println!(
        "== browser phase {phase} ({:.1} s)\n{out}",
        t0.elapsed().as_secs_f64()
    );
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!(
            "browser phase {phase} failed ({s}):\n{}\n{}",
            out.lines()
                .filter(|l| l.starts_with("FINDING"))
                .collect::<Vec<_>>()
                .join("\n"),
            world.logs()
        ),
        None => panic!(
            "browser phase {phase} timed out after {limit:?}:\n{out}\n{}",
            world.logs()
        ),
    }
}

/// What ordinary rendering must show for some corpus files.
fn expectations() -> serde_json::Value {
    serde_json::json!({
        "benign-plain-text": {"frame": false, "text": ["Shall we have lunch on Thursday", "café"]},
        "benign-newsletter": {"frame": true, "blocked": true,
                              "text": ["The Weekly Garden", "Save your seeds", "Read it on the web"]},
        "benign-formatted-html": {"frame": true, "text": ["Budget approved", "Slides", "code sample"]},
        "h17-tracking-pixels": {"frame": true, "blocked": true, "text": ["we know when you read this"]},
        "h18-background-attributes": {"frame": true, "blocked": true},
        "h22-html-attachment": {"attachments": 3},
        "h27-hostile-headers": {"frame": false, "text": ["<script>", "</pre><script>alert(1)</script>"]},
    })
}

#[test]
fn web_client_in_a_real_browser() {
    require_browser();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let canary = Canary::start(root.join("canary.log"));
    let world = World::start(root);
    let canary_addr = canary.addr.to_string();

    swaks_to_alice(&world.alpha);
    let stems = deliver_corpus(&world.alpha, &canary_addr, |_| true, true);
    assert!(
        stems.len() >= 28,
        "the corpus has only {} files",
        stems.len()
    );
    world
        .alpha
        .wait_for("alice", stems.len() + 1, Duration::from_secs(30));
    println!(
        "{} corpus messages delivered in {:.1} s",
        stems.len(),
        t0.elapsed().as_secs_f64()
    );

    let mut cfg = world.base_config(root);
    cfg["corpus"] = stems.clone().into();
    cfg["canary_log"] = canary.log.to_str().expect("utf-8").into();
    cfg["canary_addr"] = canary_addr.clone().into();
    cfg["expect"] = expectations();
    browse(
        &world,
        root,
        "hostile",
        cfg.clone(),
        Duration::from_secs(150),
    );
    let hits = canary.hits();
    assert!(
        hits.is_empty(),
        "the canary ({canary_addr}) was reached while the hostile corpus was open:\n{}",
        hits.join("\n")
    );

    browse(
        &world,
        root,
        "compose",
        cfg.clone(),
        Duration::from_secs(90),
    );

    // The positive control: allowed remote content does reach the canary.
    browse(&world, root, "control", cfg, Duration::from_secs(60));
    assert!(
        canary
            .hits()
            .iter()
            .any(|h| h.contains("GET /benign-newsletter/logo.png")),
        "the canary saw nothing for the allowed newsletter logo: {:?}",
        canary.hits()
    );
    let log = world.alpha.last_log();
    println!(
        "web browser test: {:.1} s in all; alpha's log: {} lines, {} of them html5ever warnings",
        t0.elapsed().as_secs_f64(),
        log.lines().count(),
        log.lines().filter(|l| l.contains("html5ever")).count()
    );
}

/// Every page (login, discussions, a message, compose with its route
/// preview, contacts, my privacy, settings, bob's sealed message) loads and
/// is captured at desktop and phone width; the captures go to
/// `$CALIOPEN_SCREENSHOTS` (`docs/screenshots` regenerates the committed
/// ones), else to a temporary directory.
#[test]
fn every_page_renders_at_desktop_and_phone_width() {
    require_browser();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let canary = Canary::start(root.join("canary.log"));
    let world = World::start(root);
    swaks_to_alice(&world.alpha);
    deliver_corpus(
        &world.alpha,
        &canary.addr.to_string(),
        |s| s.starts_with("benign-"),
        false,
    );
    for (from, subject, body) in [
        (
            "Carol Martin <carol@example.net>",
            "Photos from the weekend",
            "Here are the photos from Saturday. The one by the lake is my favourite.",
        ),
        (
            "Dave <dave@example.net>",
            "Re: Invoice 2026-114",
            "Thanks, the invoice is paid. See you next month.",
        ),
    ] {
        let data = format!(
            "From: {from}\r\nTo: alice@alpha.test\r\nSubject: {subject}\r\nDate: Mon, 02 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{}@example.net>\r\n\r\n{body}\r\n",
            subject.len()
        );
        deliver(
            world.alpha.smtp(),
            "carol@example.net",
            "alice@alpha.test",
            data.as_bytes(),
        )
        .expect("deliver");
    }
    world.alpha.wait_for("alice", 6, Duration::from_secs(30));
    let cfg = world.base_config(root);
    // Alice writes to bob, then bob answers (both over the mesh), so both
    // lists hold a sealed letter and each knows the other.
    browse(
        &world,
        root,
        "compose",
        cfg.clone(),
        Duration::from_secs(90),
    );
    let mut back = cfg.clone();
    for (a, b) in [
        ("alpha", "beta"),
        ("alice", "bob"),
        ("alice_password", "bob_password"),
    ] {
        back[a] = cfg[b].clone();
        back[b] = cfg[a].clone();
    }
    back["mesh_subject"] = "Re: Across the mesh".into();
    back["mesh_body"] = "Hi Alice, it arrived sealed. Bob".into();
    browse(&world, root, "compose", back, Duration::from_secs(90));
    let out = match std::env::var_os("CALIOPEN_SCREENSHOTS") {
        Some(d) => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d),
        None => root.join("screenshots"),
    };
    let mut shots = cfg;
    shots["out"] = out.to_str().expect("utf-8").into();
    shots["message_subject"] = "The Weekly Garden".into();
    browse(&world, root, "screenshots", shots, Duration::from_secs(180));
    for page in [
        "login",
        "discussions",
        "message",
        "compose",
        "contacts",
        "privacy",
        "settings",
        "message-sealed",
    ] {
        for width in ["desktop", "phone"] {
            let f = out.join(format!("{page}-{width}.png"));
            let len = std::fs::metadata(&f).map_or(0, |m| m.len());
            assert!(len > 1000, "{} was not captured ({len} bytes)", f.display());
        }
    }
}

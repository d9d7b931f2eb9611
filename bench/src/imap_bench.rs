//! IMAP against Dovecot: the same generated mailbox imported into a
//! `caliopen run` daemon and into Dovecot (from `bench/dovecot.sh`) by
//! APPEND, then the commands a mail client sends, at 1 and 20 concurrent
//! clients, each on its own logged-in connection with INBOX selected;
//! IDLE wake-up latency; optionally SELECT of a 100,000-message mailbox.
//! Both servers are reached through STARTTLS by the same client
//! ([`crate::imap`]), one after the other in the same run.

use crate::imap::{Client, Done};
use crate::report::{ms, percentile, Report};
use crate::smtp::Daemon;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The corpus's seed: the same messages on every run and in both servers.
pub const SEED: u64 = 0x00ca_110e_4b3c_2024;

/// Parameters of the IMAP section.
#[derive(Debug, Clone)]
pub struct ImapParams {
    /// Messages imported into INBOX.
    pub messages: usize,
    /// Concurrent clients of each case.
    pub clients: Vec<usize>,
    /// How long each case runs.
    pub duration: Duration,
    /// Deliveries timed for the IDLE wake-up latency.
    pub idle_deliveries: usize,
    /// Messages of the large mailbox whose SELECT is timed (`None`: skipped).
    pub big: Option<usize>,
}

/// Dovecot's listener and account (from `bench/dovecot.sh setup`).
#[derive(Debug, Clone)]
pub struct Dovecot {
    /// The STARTTLS listener.
    pub addr: SocketAddr,
    /// The login.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The account's Maildir, when the bench may write into it: the large
    /// folder is then seeded as files (Dovecot's APPENDs into one Maildir
    /// folder slow to tens per second past ~50,000 messages).
    pub maildir: Option<std::path::PathBuf>,
}

/// SplitMix64: a small, fixed-seed generator (no dependency, same sequence everywhere).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Words of subjects (none is a part of another, so that a search for one
/// finds exactly the subjects that contain it).
pub const SUBJECT_WORDS: &[&str] = &[
    "invoice",
    "meeting",
    "quarterly",
    "budget",
    "review",
    "project",
    "launch",
    "travel",
    "schedule",
    "contract",
    "holiday",
    "release",
    "planning",
    "feedback",
    "security",
    "newsletter",
    "weekly",
    "offsite",
    "hiring",
    "migration",
];

const BODY_WORDS: &[&str] = &[
    "the",
    "and",
    "we",
    "will",
    "have",
    "this",
    "that",
    "for",
    "with",
    "our",
    "team",
    "next",
    "week",
    "please",
    "find",
    "attached",
    "thanks",
    "regards",
    "about",
    "could",
    "you",
    "send",
    "me",
    "numbers",
    "before",
    "friday",
    "meeting",
    "notes",
    "agenda",
    "customer",
    "shipping",
    "delay",
    "server",
    "backup",
    "office",
    "question",
    "answer",
    "draft",
    "version",
    "final",
    "comments",
    "welcome",
    "tomorrow",
    "morning",
    "afternoon",
    "call",
    "phone",
    "room",
    "booked",
    "lunch",
    "plan",
    "should",
    "would",
    "think",
    "also",
    "more",
    "than",
    "some",
    "time",
    "today",
];

const NAMES: &[&str] = &[
    "Alice Martin",
    "Bruno Diaz",
    "Chloe Nguyen",
    "David Okafor",
    "Emma Rossi",
    "Farid Haddad",
    "Grace Kim",
    "Hugo Bernard",
    "Ines Duarte",
    "Jonas Weber",
];

const DOMAINS: &[&str] = &["example.org", "example.net", "example.com", "partner.test"];

/// The subject of the corpus's message `i`.
pub fn subject(i: usize) -> String {
    let mut r = Rng::new(SEED ^ (i as u64).wrapping_mul(0x51_7cc1_b727_220a));
    let words = 3 + r.below(4);
    let mut s = String::new();
    if r.below(4) == 0 {
        s.push_str("Re: ");
    }
    for k in 0..words {
        if k > 0 {
            s.push(' ');
        }
        let w: &&str = r.pick(SUBJECT_WORDS);
        s.push_str(w);
    }
    s.push_str(&format!(" #{i}"));
    s
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn text_body(r: &mut Rng, size: usize) -> String {
    let mut s = String::with_capacity(size + 80);
    let mut line = String::new();
    while s.len() + line.len() < size {
        let w = r.pick(BODY_WORDS);
        if line.len() + w.len() + 1 > 72 {
            s.push_str(&line);
            s.push_str("\r\n");
            line.clear();
            if r.below(6) == 0 {
                s.push_str("\r\n");
            }
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    s.push_str(&line);
    s.push_str("\r\n");
    s
}

fn date(i: usize) -> String {
    // 2024-01-01T00:00:00Z plus 37 minutes a message.
    let t = 1_704_067_200 + i as i64 * 37 * 60;
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_else(|| "Mon, 1 Jan 2024 00:00:00 +0000".into())
}

/// The corpus's message `i`: a few headers, a 2–4 KB text body; one in
/// five is multipart with a small base64 attachment.
pub fn message(i: usize) -> Vec<u8> {
    let mut r = Rng::new(
        SEED.wrapping_add(i as u64)
            .wrapping_mul(0x2545_f491_4f6c_dd1d),
    );
    let name = r.pick(NAMES);
    let login = name.split(' ').next().unwrap_or("x").to_ascii_lowercase();
    let domain = r.pick(DOMAINS);
    let body_len = 2048 + r.below(2048);
    let mut m = format!(
        "From: \"{name}\" <{login}@{domain}>\r\nTo: \"Bench User\" <bench@bench.test>\r\n\
         Subject: {}\r\nDate: {}\r\nMessage-ID: <{i}.{SEED:x}@gen.bench.test>\r\nMIME-Version: 1.0\r\n",
        subject(i),
        date(i)
    );
    if i % 5 == 4 {
        let boundary = format!("=_bench_{i}_{:08x}", r.next_u64() as u32);
        let att: Vec<u8> = (0..512 + r.below(1536))
            .map(|_| r.next_u64() as u8)
            .collect();
        let b64 = base64(&att);
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
             This is a multi-part message in MIME format.\r\n\r\n--{boundary}\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        ));
        m.push_str(&text_body(&mut r, body_len));
        m.push_str(&format!(
            "\r\n--{boundary}\r\nContent-Type: application/pdf; name=\"doc-{i}.pdf\"\r\n\
             Content-Disposition: attachment; filename=\"doc-{i}.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n"
        ));
        for chunk in b64.as_bytes().chunks(76) {
            m.push_str(&String::from_utf8_lossy(chunk));
            m.push_str("\r\n");
        }
        m.push_str(&format!("--{boundary}--\r\n"));
    } else {
        m.push_str(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n",
        );
        m.push_str(&text_body(&mut r, body_len));
    }
    m.into_bytes()
}

/// A message of exactly `size` octets (the APPEND case's 3 KB), unique by `k`.
pub fn sized_message(k: u64, size: usize) -> Vec<u8> {
    let mut r = Rng::new(k ^ 0x3c3c_3c3c);
    let mut m = format!(
        "From: \"Bench Client\" <client@bench.test>\r\nTo: <bench@bench.test>\r\n\
         Subject: appended {k}\r\nDate: {}\r\nMessage-ID: <append.{k}@gen.bench.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        date(k as usize % 100_000)
    )
    .into_bytes();
    let body = text_body(&mut r, size.saturating_sub(m.len()) + 80);
    m.extend_from_slice(body.as_bytes());
    m.truncate(size.saturating_sub(2));
    if let Some(last) = m.last_mut().filter(|b| **b == b'\r') {
        *last = b'.';
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// How many of the first `n` subjects contain `word` (case-insensitive).
pub fn expected_hits(n: usize, word: &str) -> usize {
    let w = word.to_ascii_lowercase();
    (0..n)
        .filter(|&i| subject(i).to_ascii_lowercase().contains(&w))
        .count()
}

/// Where a server's CPU time is read.
#[derive(Debug, Clone, Copy)]
enum Cpu {
    /// One process (the `caliopen run` daemon).
    Pid(u32),
    /// Every process of the benchmark's Dovecot instance (their titles start
    /// with `dovecot-caliopen-bench-dovecot/`, from its `instance_name`).
    Dovecot,
}

/// User + system CPU time of a process from `/proc/PID/stat` (10 ms ticks).
fn proc_cpu(pid: &str) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let t: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(t * 10))
        })
        .unwrap_or_default()
}

impl Cpu {
    /// CPU time used so far (by live processes).
    fn used(self) -> Duration {
        match self {
            Cpu::Pid(p) => proc_cpu(&p.to_string()),
            Cpu::Dovecot => {
                let mut t = Duration::ZERO;
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    if cmd.starts_with(b"dovecot-caliopen-bench-dovecot/") {
                        t += proc_cpu(&name);
                    }
                }
                t
            }
        }
    }
}

/// One server under test.
#[derive(Debug, Clone)]
struct Server {
    name: &'static str,
    addr: SocketAddr,
    user: String,
    password: String,
    cpu: Cpu,
    /// Its Maildir, to seed the large folder as files (Dovecot only).
    maildir: Option<std::path::PathBuf>,
}

impl Server {
    async fn connect(&self, tls: &Arc<rustls::ClientConfig>) -> Result<Client> {
        Client::login(self.addr, tls, &self.user, &self.password)
            .await
            .with_context(|| format!("{}: connect and log in", self.name))
    }

    async fn selected(&self, tls: &Arc<rustls::ClientConfig>) -> Result<Client> {
        let mut c = self.connect(tls).await?;
        c.cmd("SELECT INBOX").await?.ok("SELECT INBOX")?;
        Ok(c)
    }
}

/// The commands measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Select,
    FetchEnvelope,
    UidFetchBodies,
    SearchSubject,
    Store,
    Append,
}

impl Op {
    const ALL: [Op; 6] = [
        Op::Select,
        Op::FetchEnvelope,
        Op::UidFetchBodies,
        Op::SearchSubject,
        Op::Store,
        Op::Append,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Select => "SELECT INBOX",
            Op::FetchEnvelope => "FETCH 1000 (FLAGS ENVELOPE)",
            Op::UidFetchBodies => "UID FETCH 100 BODY.PEEK[]",
            Op::SearchSubject => "SEARCH HEADER Subject",
            Op::Store => "STORE ±FLAGS (\\Flagged)",
            Op::Append => "APPEND 3 KB",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Op::Select => "re-SELECT of INBOX on a connection that has it selected",
            Op::FetchEnvelope => "FETCH s:s+999 (FLAGS ENVELOPE) on a random window",
            Op::UidFetchBodies => "one UID FETCH of BODY.PEEK[] for 100 random UIDs",
            Op::SearchSubject => "SEARCH HEADER Subject <random subject word>",
            Op::Store => "STORE n +FLAGS / -FLAGS (\\Flagged), alternating, random n",
            Op::Append => "APPEND INBOX of a 3072-octet message",
        }
    }
}

/// What every client of a case shares.
struct Ctx {
    messages: usize,
    uids: Vec<u64>,
    hits: HashMap<&'static str, usize>,
    appended: AtomicU64,
}

/// What one operation checked.
#[derive(Default)]
struct Seen {
    octets: usize,
    search_mismatch: bool,
}

async fn one_op(c: &mut Client, op: Op, r: &mut Rng, ctx: &Ctx, parity: u64) -> Result<Seen> {
    let n = ctx.messages;
    let mut seen = Seen::default();
    match op {
        Op::Select => {
            let d = c.cmd("SELECT INBOX").await?.ok("SELECT")?;
            let e = d.exists().context("SELECT without EXISTS")?;
            ensure!(e as usize >= n, "SELECT: {e} EXISTS, {n} imported");
        }
        Op::FetchEnvelope => {
            let w = n.min(1000);
            let start = 1 + r.below(n - w + 1);
            let d = c
                .cmd(&format!("FETCH {start}:{} (FLAGS ENVELOPE)", start + w - 1))
                .await?
                .ok("FETCH")?;
            let got = d.count(b"FETCH");
            ensure!(got >= w, "FETCH {start}:{}: {got} answers", start + w - 1);
            seen.octets = d.untagged.iter().map(|l| l.bytes.len()).sum();
        }
        Op::UidFetchBodies => {
            let k = ctx.uids.len().min(100);
            let mut pick: Vec<u64> = Vec::with_capacity(k);
            while pick.len() < k {
                let u = *r.pick(&ctx.uids);
                if !pick.contains(&u) {
                    pick.push(u);
                }
            }
            pick.sort_unstable();
            let set: Vec<String> = pick.iter().map(u64::to_string).collect();
            let d = c
                .cmd(&format!("UID FETCH {} (BODY.PEEK[])", set.join(",")))
                .await?
                .ok("UID FETCH")?;
            let got = d.count(b"FETCH");
            ensure!(got >= k, "UID FETCH of {k} bodies: {got} answers");
            seen.octets = d.literal_octets();
        }
        Op::SearchSubject => {
            let word = *r.pick(SUBJECT_WORDS);
            let d = c
                .cmd(&format!("SEARCH HEADER Subject {word}"))
                .await?
                .ok("SEARCH")?;
            let got = d.search().len();
            seen.search_mismatch = Some(&got) != ctx.hits.get(word);
        }
        Op::Store => {
            let m = 1 + r.below(n);
            let sign = if parity.is_multiple_of(2) { '+' } else { '-' };
            c.cmd(&format!("STORE {m} {sign}FLAGS (\\Flagged)"))
                .await?
                .ok("STORE")?;
        }
        Op::Append => {
            let k = ctx.appended.fetch_add(1, Ordering::Relaxed);
            let msg = sized_message(k, 3072);
            c.append("INBOX", "", &msg).await?.ok("APPEND")?;
            seen.octets = msg.len();
        }
    }
    Ok(seen)
}

/// The outcome of one case on one server.
struct CaseResult {
    ops: u64,
    elapsed: Duration,
    lat: Vec<Duration>,
    octets: usize,
    search_mismatches: u64,
}

/// Runs `op` on each client of `pool` for `duration`, all at once; the
/// clients come back in `pool` (those whose connection failed do not).
async fn run_case(
    pool: &mut Vec<Client>,
    clients: usize,
    op: Op,
    duration: Duration,
    ctx: &Arc<Ctx>,
    seed: u64,
) -> Result<CaseResult> {
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    let take = clients.min(pool.len());
    for (i, mut c) in pool.drain(..take).enumerate() {
        let ctx = ctx.clone();
        let mut r = Rng::new(seed ^ ((i as u64 + 1) << 32));
        set.spawn(async move {
            let mut lat = Vec::new();
            let (mut octets, mut mism) = (0usize, 0u64);
            let mut k = 0u64;
            let res = async {
                while t0.elapsed() < duration || k == 0 {
                    let s = Instant::now();
                    let seen = one_op(&mut c, op, &mut r, &ctx, k).await?;
                    lat.push(s.elapsed());
                    octets += seen.octets;
                    mism += u64::from(seen.search_mismatch);
                    k += 1;
                }
                anyhow::Ok(())
            }
            .await;
            (c, res, lat, octets, mism, t0.elapsed())
        });
    }
    let mut out = CaseResult {
        ops: 0,
        elapsed: Duration::ZERO,
        lat: Vec::new(),
        octets: 0,
        search_mismatches: 0,
    };
    let mut first_err = None;
    while let Some(j) = set.join_next().await {
        let (c, res, lat, octets, mism, el) = j.context("client task panicked")?;
        match res {
            Ok(()) => pool.push(c),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        out.ops += lat.len() as u64;
        out.lat.extend(lat);
        out.octets += octets;
        out.search_mismatches += mism;
        out.elapsed = out.elapsed.max(el);
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(out)
}

/// Imports messages `range` into `mailbox` over `conns` connections (message
/// `i` on connection `i % conns`); returns the time taken.
async fn import(
    s: &Server,
    tls: &Arc<rustls::ClientConfig>,
    mailbox: &str,
    range: std::ops::Range<usize>,
    conns: usize,
) -> Result<Duration> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(s.connect(tls).await?);
    }
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        let (mailbox, range) = (mailbox.to_owned(), range.clone());
        set.spawn(async move {
            for i in range.filter(|i| i % conns == k) {
                c.append(&mailbox, "", &message(i))
                    .await?
                    .ok(&format!("APPEND of message {i}"))?;
            }
            c.logout().await;
            anyhow::Ok(())
        });
    }
    while let Some(j) = set.join_next().await {
        j.context("import task panicked")??;
    }
    Ok(t0.elapsed())
}

/// Empties INBOX (a Dovecot left from an earlier run).
async fn empty_inbox(c: &mut Client) -> Result<()> {
    let d = c.cmd("SELECT INBOX").await?.ok("SELECT INBOX")?;
    if d.exists().unwrap_or(0) > 0 {
        c.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)")
            .await?
            .ok("STORE \\Deleted")?;
        c.cmd("EXPUNGE").await?.ok("EXPUNGE")?;
    }
    c.cmd("UNSELECT").await?.ok("UNSELECT")?;
    Ok(())
}

/// An SMTP session kept open for the IDLE deliveries.
struct Smtp {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Smtp {
    async fn expect(&mut self, code: &str) -> Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(30), self.r.read_line(&mut line))
                .await
                .context("SMTP: no answer in 30 s")??;
            ensure!(n > 0, "SMTP: connection closed, expected {code}");
            ensure!(
                line.starts_with(code),
                "SMTP: expected {code}, got {}",
                line.trim()
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    async fn connect(addr: SocketAddr) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (r, w) = tcp.into_split();
        let mut s = Self {
            r: tokio::io::BufReader::new(r),
            w,
        };
        s.expect("220").await?;
        s.w.write_all(b"EHLO bench.client\r\n").await?;
        s.expect("250").await?;
        Ok(s)
    }

    /// Sends one message; returns when its 250 came.
    async fn send(&mut self, to: &str, body: &[u8]) -> Result<()> {
        self.w
            .write_all(
                format!("MAIL FROM:<sender@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes(),
            )
            .await?;
        self.expect("250").await?;
        self.expect("250").await?;
        self.expect("354").await?;
        self.w.write_all(body).await?;
        self.w.write_all(b".\r\n").await?;
        self.expect("250").await
    }
}

/// How a message reaches the idling client.
enum Deliver {
    /// APPEND to INBOX from a second IMAP connection.
    Append(Box<Client>),
    /// SMTP to the MX address.
    Smtp(Smtp, String),
}

/// IDLE wake-up latencies of one series of deliveries.
struct IdleLatency {
    /// From the delivery's answer (clamped at 0).
    after_answer: Vec<Duration>,
    /// From the start of the delivering command (MAIL FROM or APPEND).
    from_command: Vec<Duration>,
    /// How many EXISTS came before the delivery's answer.
    early: usize,
}

/// IDLE wake-up latency: from the end of each delivery (the APPEND's OK or
/// the SMTP 250) to the idling client's `* N EXISTS`, and from the
/// delivering command's start.
async fn idle_latency(
    s: &Server,
    tls: &Arc<rustls::ClientConfig>,
    mut deliver: Deliver,
    count: usize,
    first_id: u64,
) -> Result<IdleLatency> {
    let mut a = s.selected(tls).await?;
    let (tag, _) = a.idle().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < count {
            let l = a.read().await?;
            if l.numbered()
                .is_some_and(|(_, w)| w.eq_ignore_ascii_case(b"EXISTS"))
            {
                seen += 1;
                let _ = tx.send(Instant::now());
            }
        }
        a.idle_done(&tag).await?.ok("IDLE")?;
        a.logout().await;
        anyhow::Ok(())
    });
    let mut out = IdleLatency {
        after_answer: Vec::with_capacity(count),
        from_command: Vec::with_capacity(count),
        early: 0,
    };
    let res = async {
        for k in 0..count {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let msg = sized_message(first_id + k as u64, 1024);
            let sent = Instant::now();
            match &mut deliver {
                Deliver::Append(b) => {
                    b.append("INBOX", "", &msg).await?.ok("APPEND")?;
                }
                Deliver::Smtp(smtp, to) => smtp.send(to, &msg).await?,
            }
            let done = Instant::now();
            let woke = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .with_context(|| format!("{}: no EXISTS in IDLE 30 s after delivery {k}", s.name))?
                .context("IDLE reader ended")?;
            if woke < done {
                out.early += 1;
            }
            out.after_answer.push(woke.saturating_duration_since(done));
            out.from_command.push(woke.saturating_duration_since(sent));
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = res {
        reader.abort();
        return Err(e);
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .context("IDLE DONE not answered")???;
    Ok(out)
}

fn lat_note(lat: &mut [Duration]) -> String {
    match (percentile(lat, 50.0), percentile(lat, 99.0)) {
        (Some(a), Some(b)) => format!("latency p50 {:.2} ms, p99 {:.2} ms", ms(a), ms(b)),
        _ => String::new(),
    }
}

fn plural(n: usize, w: &str) -> String {
    format!("{n} {w}{}", if n == 1 { "" } else { "s" })
}

/// Runs the IMAP section.
pub async fn run(
    bin: &Path,
    work: &Path,
    dovecot: Option<&Dovecot>,
    p: &ImapParams,
    report: &mut Report,
) -> Result<()> {
    let tls = crate::imap::tls_config()?;
    let dir = work.join("caliopen-imap");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let daemon = Daemon::start_with(bin, &dir, "bench.test", "bench", &["--imap", "127.0.0.1:0"])
        .with_context(|| format!("start {}", bin.display()))?;
    let cal_addr = daemon.imap.context("the daemon printed no IMAP address")?;
    let mut servers = vec![Server {
        name: "caliopen",
        addr: cal_addr,
        user: "bench@bench.test".into(),
        password: "a benchmark password".into(),
        cpu: Cpu::Pid(daemon.pid()),
        maildir: None,
    }];
    match dovecot {
        Some(d) => servers.push(Server {
            name: "Dovecot",
            addr: d.addr,
            user: d.user.clone(),
            password: d.password.clone(),
            cpu: Cpu::Dovecot,
            maildir: d.maildir.clone(),
        }),
        None => report
            .skipped
            .push("Dovecot side of IMAP: no --dovecot given (bench/dovecot.sh setup)".into()),
    }
    let n = p.messages;
    ensure!(n >= 100, "--imap-messages must be at least 100");
    let corpus_bytes: usize = (0..n).map(|i| message(i).len()).sum();
    eprintln!(
        "  corpus: {n} messages, {:.1} MB, one in five multipart",
        corpus_bytes as f64 / 1e6
    );

    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    // Import (and the APPEND throughput of one client importing).
    let mut rates = Vec::new();
    let mut ctxs = Vec::new();
    for s in &servers {
        let mut c = s.connect(&tls).await?;
        let tls_desc = format!(
            "{}; {}",
            c.tls,
            if c.login_disabled_in_clear {
                "LOGINDISABLED before STARTTLS"
            } else {
                "LOGIN offered before STARTTLS (the client uses STARTTLS all the same)"
            }
        );
        empty_inbox(&mut c).await?;
        let took = import(s, &tls, "INBOX", 0..n, 1).await?;
        let rate = n as f64 / took.as_secs_f64();
        report.add(
            "imap",
            &format!("{} import {n} msgs, 1 connection", s.name),
            "msg/s",
            rate,
            None,
            &format!(
                "APPEND to INBOX one after the other, each answered before the next ({:.1} MB/s; {tls_desc}; machine load average {load} at the section's start)",
                corpus_bytes as f64 / 1e6 / took.as_secs_f64()
            ),
        );
        rates.push(rate);
        let d = c.cmd("SELECT INBOX").await?.ok("SELECT INBOX")?;
        let exists = d.exists().unwrap_or(0) as usize;
        ensure!(
            exists == n,
            "{}: {exists} messages in INBOX after importing {n}",
            s.name
        );
        let uids = c
            .cmd("UID SEARCH ALL")
            .await?
            .ok("UID SEARCH ALL")?
            .search();
        ensure!(
            uids.len() == n,
            "{}: UID SEARCH ALL gave {} UIDs",
            s.name,
            uids.len()
        );
        c.logout().await;
        let hits = SUBJECT_WORDS
            .iter()
            .map(|w| (*w, expected_hits(n, w)))
            .collect();
        ctxs.push(Arc::new(Ctx {
            messages: n,
            uids,
            hits,
            appended: AtomicU64::new(1_000_000),
        }));
    }
    if rates.len() == 2 {
        report.add(
            "imap",
            &format!("caliopen/Dovecot import {n} msgs, 1 connection"),
            "ratio",
            rates[0] / rates[1],
            None,
            "same run, same disk, same client",
        );
    }

    // The pools: one logged-in connection with INBOX selected per client.
    let most = p.clients.iter().copied().max().unwrap_or(1);
    let mut pools: Vec<Vec<Client>> = Vec::new();
    for s in &servers {
        let mut pool = Vec::new();
        for _ in 0..most {
            pool.push(s.selected(&tls).await?);
        }
        pools.push(pool);
    }
    // One untimed operation of each kind first, on each server.
    for (si, s) in servers.iter().enumerate() {
        for op in Op::ALL.into_iter().filter(|o| *o != Op::Append) {
            run_case(&mut pools[si], 1, op, Duration::ZERO, &ctxs[si], 7)
                .await
                .with_context(|| format!("{}: warm-up {}", s.name, op.label()))?;
        }
    }

    for op in Op::ALL {
        for &clients in &p.clients {
            let case = format!("{}, {}", op.label(), plural(clients, "client"));
            let mut rates = Vec::new();
            for (si, s) in servers.iter().enumerate() {
                while pools[si].len() < most {
                    pools[si].push(s.selected(&tls).await?);
                }
                let seed = SEED ^ ((op as u64) << 8) ^ clients as u64;
                let (cpu0, own0) = (s.cpu.used(), crate::sys::cpu_time());
                match run_case(&mut pools[si], clients, op, p.duration, &ctxs[si], seed).await {
                    Ok(mut r) => {
                        let rate = r.ops as f64 / r.elapsed.as_secs_f64();
                        let secs = r.elapsed.as_secs_f64();
                        let cpu = s.cpu.used().saturating_sub(cpu0).as_secs_f64();
                        let own = crate::sys::cpu_time().saturating_sub(own0).as_secs_f64();
                        let mut note = format!(
                            "{}; {} ops in {secs:.1} s; {}; server CPU {:.2} cores ({:.2} ms/op), load generator {:.2} cores",
                            op.what(),
                            r.ops,
                            lat_note(&mut r.lat),
                            cpu / secs,
                            cpu * 1000.0 / r.ops.max(1) as f64,
                            own / secs,
                        );
                        if matches!(op, Op::UidFetchBodies | Op::FetchEnvelope) {
                            note.push_str(&format!(
                                "; {:.1} MB/s received",
                                r.octets as f64 / 1e6 / r.elapsed.as_secs_f64()
                            ));
                        }
                        if op == Op::SearchSubject {
                            note.push_str(&format!(
                                "; {} of {} answers differ from the corpus's count",
                                r.search_mismatches, r.ops
                            ));
                        }
                        report.add(
                            "imap",
                            &format!("{} {case}", s.name),
                            "ops/s",
                            rate,
                            None,
                            &note,
                        );
                        rates.push(rate);
                    }
                    Err(e) => {
                        eprintln!("  {} {case} failed: {e:#}", s.name);
                        report
                            .skipped
                            .push(format!("imap {} {case}: {e:#}", s.name));
                    }
                }
            }
            if rates.len() == 2 && servers.len() == 2 {
                report.add(
                    "imap",
                    &format!("caliopen/Dovecot {case}"),
                    "ratio",
                    rates[0] / rates[1],
                    None,
                    "same run, same client, INBOX of the same messages",
                );
            }
        }
    }
    for pool in pools {
        for c in pool {
            c.logout().await;
        }
    }

    // IDLE wake-up.
    let count = p.idle_deliveries;
    let mut by_append = Vec::new();
    for (si, s) in servers.iter().enumerate() {
        let mut runs = Vec::new();
        if si == 0 {
            let smtp = Smtp::connect(daemon.smtp).await?;
            runs.push((
                "SMTP to its MX, from the 250 after DATA",
                Deliver::Smtp(smtp, "bench@bench.test".into()),
            ));
        }
        runs.push((
            "APPEND on a second connection, from its tagged OK",
            Deliver::Append(Box::new(s.connect(&tls).await?)),
        ));
        for (k, (how, deliver)) in runs.into_iter().enumerate() {
            let case = format!(
                "{} IDLE wake-up by {}",
                s.name,
                if how.starts_with("SMTP") {
                    "SMTP"
                } else {
                    "APPEND"
                }
            );
            match idle_latency(s, &tls, deliver, count, 2_000_000 + 1000 * k as u64).await {
                Ok(mut l) => {
                    let pct = |v: &mut Vec<Duration>, p| percentile(v, p).map_or(f64::NAN, ms);
                    let (p50, p99) = (
                        pct(&mut l.after_answer, 50.0),
                        pct(&mut l.after_answer, 99.0),
                    );
                    let (c50, c99) = (
                        pct(&mut l.from_command, 50.0),
                        pct(&mut l.from_command, 99.0),
                    );
                    let note = format!(
                        "{count} deliveries by {how} to the `* N EXISTS` of a client in IDLE on INBOX{}",
                        if l.early > 0 {
                            format!("; {} EXISTS came before the delivery's answer (counted 0)", l.early)
                        } else {
                            String::new()
                        }
                    );
                    report.add("imap", &case, "p50 ms", p50, None, &note);
                    report.add("imap", &case, "p99 ms", p99, None, "");
                    let (first, _) = how.split_once(',').unwrap_or((how, ""));
                    let case = format!("{case}, from the command");
                    let note = format!(
                        "the same deliveries, from the start of the delivering command ({}) to the EXISTS",
                        if first.starts_with("SMTP") { "MAIL FROM" } else { "APPEND" }
                    );
                    report.add("imap", &case, "p50 ms", c50, None, &note);
                    report.add("imap", &case, "p99 ms", c99, None, "");
                    if how.starts_with("APPEND") {
                        by_append.push((c50, c99));
                    }
                }
                Err(e) => {
                    eprintln!("  {case} failed: {e:#}");
                    report.skipped.push(format!("imap {case}: {e:#}"));
                }
            }
        }
    }
    if by_append.len() == 2 {
        report.add(
            "imap",
            "Dovecot/caliopen IDLE wake-up by APPEND",
            "ratio p50",
            by_append[1].0 / by_append[0].0,
            None,
            "from the APPEND command to the EXISTS, Dovecot's latency over Caliopen's: above 1, Caliopen wakes sooner",
        );
        report.add(
            "imap",
            "Dovecot/caliopen IDLE wake-up by APPEND",
            "ratio p99",
            by_append[1].1 / by_append[0].1,
            None,
            "",
        );
    }

    // SELECT of a large mailbox.
    if let Some(big) = p.big {
        let mut p50s = Vec::new();
        for s in &servers {
            let mut c = s.connect(&tls).await?;
            let name = "Big";
            let d = c.cmd(&format!("CREATE {name}")).await?;
            if d.status == crate::imap::Status::Ok {
                // Fresh.
            } else {
                let st = c.cmd(&format!("SELECT {name}")).await?.ok("SELECT Big")?;
                if st.exists().unwrap_or(0) > 0 {
                    c.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)")
                        .await?
                        .ok("STORE")?;
                    c.cmd("EXPUNGE").await?.ok("EXPUNGE")?;
                }
                c.cmd("UNSELECT").await?.ok("UNSELECT")?;
            }
            let conns = 4;
            if let Some(maildir) = &s.maildir {
                eprintln!(
                    "  {}: writing {big} messages into {name} as Maildir files...",
                    s.name
                );
                seed_maildir(&maildir.join(format!(".{name}")), big)?;
                // The first SELECT indexes the new files: timed below.
            } else {
                eprintln!(
                    "  {}: importing {big} messages into {name} ({conns} connections)...",
                    s.name
                );
                let took = import(s, &tls, name, 0..big, conns).await?;
                report.add(
                    "imap",
                    &format!("{} import {big} msgs, {conns} connections", s.name),
                    "msg/s",
                    big as f64 / took.as_secs_f64(),
                    None,
                    "APPEND into a second folder, each connection's answered before its next",
                );
            }
            let mut lat = Vec::new();
            let mut exists = 0;
            for _ in 0..20 {
                let t = Instant::now();
                let d: Done = c.cmd(&format!("SELECT {name}")).await?.ok("SELECT Big")?;
                lat.push(t.elapsed());
                exists = d.exists().unwrap_or(0);
            }
            if exists as usize != big {
                bail!(
                    "{}: SELECT {name} gave {exists} EXISTS, {big} imported",
                    s.name
                );
            }
            let p50 = percentile(&mut lat, 50.0).map_or(f64::NAN, ms);
            let case = format!("{} SELECT of a {big}-message folder", s.name);
            report.add(
                "imap",
                &case,
                "p50 ms",
                p50,
                None,
                "20 SELECTs on one connection",
            );
            report.add(
                "imap",
                &case,
                "p99 ms",
                percentile(&mut lat, 99.0).map_or(f64::NAN, ms),
                None,
                "",
            );
            p50s.push(p50);
            c.logout().await;
        }
        if p50s.len() == 2 {
            report.add(
                "imap",
                &format!("Dovecot/caliopen SELECT of a {big}-message folder"),
                "ratio p50",
                p50s[1] / p50s[0],
                None,
                "latency, Dovecot's over Caliopen's: above 1, Caliopen is faster",
            );
        }
    }

    report.add(
        "imap",
        "caliopen daemon",
        "RSS MiB",
        daemon.rss() as f64 / 1048576.0,
        None,
        "after the IMAP cases",
    );
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    if !errors.is_empty() {
        eprintln!(
            "  caliopen daemon log: {} warning/error lines in {}, the first:",
            errors.len(),
            dir.join("daemon.log").display()
        );
        for l in errors.iter().take(3) {
            eprintln!("    {l}");
        }
    }
    daemon.stop()?;
    Ok(())
}

/// Writes `n` corpus messages into the Maildir folder `dir` (its `cur/`),
/// owned by the folder's owner, as a delivery agent would have left them.
fn seed_maildir(dir: &std::path::Path, n: usize) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let cur = dir.join("cur");
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("{}: the folder is not there", dir.display()))?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for i in 0..n {
        let path = cur.join(format!("{stamp}.M{i}P{}.bench:2,", std::process::id()));
        std::fs::write(&path, message(i)).with_context(|| format!("write {}", path.display()))?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_is_fixed_and_sized_as_asked() {
        assert_eq!(message(17), message(17));
        assert_ne!(message(17), message(18));
        for i in 0..200 {
            let m = message(i);
            let text = String::from_utf8(m.clone()).expect("ascii");
            assert!(text.contains("\r\nSubject: "), "{i}");
            assert!(text.lines().all(|l| l.len() < 998));
            assert!(!text.replace("\r\n", "").contains('\n'), "bare LF in {i}");
            assert!((2000..8000).contains(&m.len()), "{i}: {}", m.len());
            if i % 5 == 4 {
                assert!(text.contains("multipart/mixed") && text.contains("base64"));
            }
        }
        assert_eq!(sized_message(3, 3072).len(), 3072);
        assert!(sized_message(3, 3072).ends_with(b"\r\n"));
    }

    #[test]
    fn subject_words_do_not_contain_each_other() {
        for a in SUBJECT_WORDS {
            for b in SUBJECT_WORDS {
                assert!(a == b || !a.contains(b), "{a} contains {b}");
            }
            assert!(expected_hits(1000, a) > 0, "{a}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}

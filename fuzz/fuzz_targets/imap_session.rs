//! The IMAP server session on arbitrary client bytes: `imap::wire::Reader`
//! (bytes in, inputs out) and `imap::session::Session`, driven the way
//! `imap/server.rs`'s `drive` loop drives them, over a real store holding a
//! user `alice` with a few messages. Never a panic, never a hang, never
//! unbounded memory; every input is answered with whole CRLF lines.
//!
//! Input layout:
//! - byte 0: when odd, the session first runs
//!   `a LOGIN alice <password>` and `b SELECT INBOX` (so that most inputs
//!   reach the authenticated and selected states);
//! - byte 1: the bytes after the header are fed in chunks of
//!   `1 << (byte & 15)` (1 B to 32 KiB: `0` gives one byte at a time, `?`
//!   32 KiB); bits 4–5 set the FETCH spill size (`Session::set_spill`):
//!   0 none, 1 the listener's 256 KiB, 2 one message per part, 3 4 KiB
//!   (the digits and `:;<=>?` are 3);
//! - the rest: the client's bytes (at most 64 KiB).
//!
//! The store is shared by the runs (opening one costs a few milliseconds):
//! what the inputs write (STORE, APPEND, COPY, EXPUNGE, CREATE…) stays in
//! it. It stays small because alice has a quota (256 KiB, 64 messages),
//! mailboxes are capped by the model (`MAX_MAILBOXES`), and the store is
//! thrown away and made again, with the same seed content, every
//! [`GENERATION`] runs (in a fresh directory, on `/dev/shm` when there is
//! one). A crash found after state built up by earlier runs may therefore
//! need those runs to reproduce; a single input replayed
//! (`cargo fuzz run imap_session <file>`) always starts from the seed store.
#![no_main]
use caliopen_instance::delivery::MailService;
use caliopen_instance::imap::session::{Action, Session, SessionConfig};
use caliopen_instance::imap::wire::Input;
use caliopen_instance::login::{Credentials, CredentialsConfig, ScopeLimits, ThrottleConfig};
use caliopen_instance::mail::{Delivery, QuotaLimits, Role};
use caliopen_instance::mail::{MessageMeta, Transport, Via};
use caliopen_instance::store::{Store};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Largest client input per run.
const MAX_INPUT: usize = 64 * 1024;
/// Most reader inputs (commands, literal continuations, errors) per run.
const MAX_INPUTS: usize = 512;
/// Runs per store: the store is made again after this many.
const GENERATION: u64 = 256;
/// Largest APPEND (the listener's `append_limit`).
const APPEND_LIMIT: u32 = 64 * 1024;
/// Most parts of one FETCH answer (each holds one message at least).
const MAX_PARTS: usize = 100_000;
/// Clock step between two inputs of a session: 40 ms, so that the limit
/// of 20 commands per second before login is reached (deterministically)
/// by the 21st one.
const STEP: Duration = Duration::from_millis(40);
const DOMAIN: &str = "alpha.test";
const PASSWORD: &str = "fuzz-secret";
const LOGIN: &[u8] = b"a LOGIN alice fuzz-secret\r\nb SELECT INBOX\r\n";
const DIR_PREFIX: &str = "caliopen-fuzz-imap-";

/// The seed messages: (mailbox, keywords, bytes).
const SEED: &[(&str, &[&str], &[u8])] = &[
    (
        "INBOX",
        &[],
        b"From: Bob <bob@ext.test>\r\nTo: alice@alpha.test\r\nSubject: hello\r\n\
Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <1@ext.test>\r\n\r\nhello alice\r\n",
    ),
    (
        "INBOX",
        &["$seen", "$flagged"],
        b"From: =?utf-8?q?Ren=C3=A9?= <rene@ext.test>\r\nTo: alice@alpha.test, carol@ext.test\r\n\
Cc: dave@ext.test\r\nSubject: =?utf-8?b?w6ljaGFudGlsbG9u?=\r\nDate: Tue, 2 Dec 2025 11:00:00 +0100\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
preamble\r\n--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n\
--b2\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=C3=A9 au lait\r\n--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>caf\xc3\xa9</p>\r\n--b2--\r\n\
--b1\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECAwQFBgcICQ==\r\n--b1--\r\nepilogue\r\n",
    ),
    (
        "INBOX",
        &["$answered"],
        b"From: carol@ext.test\r\nTo: alice@alpha.test\r\nSubject: Fwd: report\r\n\
Date: Wed, 3 Dec 2025 12:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsee below\r\n\
--x\r\nContent-Type: message/rfc822\r\n\r\nFrom: eve@ext.test\r\nSubject: report\r\n\r\nthe report\r\n\
--x--\r\n",
    ),
    (
        "Work",
        &[],
        b"From: boss@ext.test\r\nTo: alice@alpha.test\r\nSubject: plans\r\n\r\nno headers of note\r\n",
    ),
    ("Work/2026", &["$draft"], b"Subject: draft\r\n\r\nunfinished\r\n"),
];

struct Generation {
    svc: MailService,
    dir: PathBuf,
}

struct World {
    rt: tokio::runtime::Runtime,
    creds: Credentials,
    base: PathBuf,
    state: Mutex<(u64, Option<Generation>)>,
}

/// A throttle that never engages (every run logs in from the same address).
fn no_throttle() -> ThrottleConfig {
    let open = ScopeLimits {
        free: u32::MAX,
        base: Duration::from_millis(1),
        max: Duration::from_millis(1),
        forget: Duration::from_secs(1),
    };
    ThrottleConfig {
        source: open,
        pair: open,
        account: open,
        trusted_for: Duration::from_secs(60),
        max_entries: 1024,
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        // A cheap check instead of argon2: alice's stored "hash" is
        // `fuzz:<password>`.
        let verify = Arc::new(|hash: &str, pw: &[u8]| {
            hash.strip_prefix("fuzz:")
                .is_some_and(|h| h.as_bytes() == pw)
        });
        let creds = Credentials::with_verifier(
            CredentialsConfig {
                workers: 1,
                queue: 8,
                throttle: no_throttle(),
            },
            verify,
        );
        World {
            rt,
            creds,
            base,
            state: Mutex::new((0, None)),
        }
    })
}

/// Removes the store directories of fuzzing processes that are gone
/// (libFuzzer ends with `exit`, so a process never removes its last one).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

async fn seed(store: &Store) -> MailService {
    let svc = MailService::new(store.clone(), vec![DOMAIN.into()])
        .with_credentials(world().creds.clone());
    store
        .put_user("alice", &format!("fuzz:{PASSWORD}"))
        .await
        .expect("user");
    store
        .set_quota(
            "alice",
            Some(QuotaLimits {
                bytes: 256 * 1024,
                messages: 64,
            }),
        )
        .await
        .expect("quota");
    let work = store.create_mailbox("alice", "Work").await.expect("Work");
    let sub = store
        .create_mailbox("alice", "Work/2026")
        .await
        .expect("Work/2026");
    for (i, (mbx, keywords, raw)) in SEED.iter().enumerate() {
        let mailbox = match *mbx {
            "INBOX" => Role::Inbox.id(),
            "Work" => work.id,
            _ => sub.id,
        };
        let template = MessageMeta {
            from: "bob@ext.test".into(),
            subject: format!("seed {i}"),
            received_at: 1_764_583_200 + i as i64 * 86_400,
            via: if i % 2 == 0 { Via::Smtp } else { Via::Mesh },
            transport: Transport {
                tls_version: (i % 3 == 0).then(|| "TLSv1_3".to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let d = Delivery {
            mailbox,
            keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
            ..Delivery::inbox("alice", vec![format!("alice@{DOMAIN}")])
        };
        store
            .deliver_local(&template, &[d], raw)
            .await
            .expect("deliver");
    }
    svc
}

/// The service of this run: the current store, or a new one every
/// [`GENERATION`] runs.
fn service(w: &World) -> MailService {
    let mut st = w
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (runs, generation) = &mut *st;
    if *runs % GENERATION == 0 {
        if let Some(old) = generation.take() {
            let dir = old.dir.clone();
            drop(old);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    *runs += 1;
    if generation.is_none() {
        let dir = w
            .base
            .join(format!("{DIR_PREFIX}{}-{}", std::process::id(), *runs));
        let _ = std::fs::remove_dir_all(&dir);
        let svc = w.rt.block_on(async {
            let store = Store::open(&dir).expect("store");
            seed(&store).await
        });
        *generation = Some(Generation { svc, dir });
    }
    generation.as_ref().map(|g| g.svc.clone()).expect("store")
}

/// The name of the command an input carries (`LIST`, `FETCH`…), for
/// every variant that carries one: read from the Debug form for variants
/// other than `Input::Command`, so that this target builds whatever inputs
/// the reader grows (a LIST with RFC 5258 options is one).
fn command_name(i: &Input) -> Option<String> {
    if let Input::Command(c) = i {
        return Some(c.body.name().to_owned());
    }
    let d = format!("{i:?}");
    let rest = &d[d.find("body: ")? + "body: ".len()..];
    Some(
        rest.chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect(),
    )
}

/// What an input is, for messages.
fn kind(i: &Input) -> String {
    match i {
        Input::Command(c) => format!("command {} {}", c.tag.as_ref(), c.body.name()),
        Input::IdleDone => "DONE".into(),
        Input::Continue => "continue".into(),
        Input::Bad(_, why) => format!("bad ({why})"),
        Input::Bye(why) => format!("bye ({why})"),
        other => {
            let d = format!("{other:?}");
            let variant: String = d.chars().take_while(char::is_ascii_alphanumeric).collect();
            match command_name(other) {
                Some(n) => format!("{variant} {n}"),
                None => variant,
            }
        }
    }
}

/// `IMAP_FUZZ_TRACE=1`: every input and its answer go to stderr (to
/// read what a corpus file or a crash does).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("IMAP_FUZZ_TRACE").is_some())
}

/// `IMAP_FUZZ_SKIP=LIST,LSUB`: commands of these names are dropped
/// unanswered, to fuzz on past a known and not yet fixed hang or crash.
fn skipped() -> &'static [String] {
    static S: OnceLock<Vec<String>> = OnceLock::new();
    S.get_or_init(|| {
        std::env::var("IMAP_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    })
}

struct Run {
    session: Session,
    out: Vec<u8>,
    inputs: usize,
    start: Instant,
}

impl Run {
    /// Checks (and traces) what the session wrote for one input.
    fn answered(&self, what: &str, action: Action) {
        // Every input is answered, with whole lines (a FETCH in parts too).
        assert!(
            self.out.ends_with(b"\r\n"),
            "{what} ({action:?}): answer not ending in CRLF: {:?}",
            String::from_utf8_lossy(&self.out[self.out.len().saturating_sub(200)..])
        );
        if trace() {
            eprint!("<< {what}\n{}", String::from_utf8_lossy(&self.out));
        }
    }

    /// Handles every input the reader has, as `server.rs`'s `drive` does.
    /// False when the connection is over (or the run's budget is spent).
    async fn pump(&mut self) -> bool {
        while let Some(i) = self.session.reader.next() {
            if self.inputs >= MAX_INPUTS {
                return false;
            }
            self.inputs += 1;
            if !skipped().is_empty() {
                let name = command_name(&i).unwrap_or_default();
                if skipped().iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                    continue;
                }
            }
            let what = kind(&i);
            self.out.clear();
            let now = self.start + STEP * self.inputs as u32;
            let action = self.session.input(i, now, &mut self.out).await;
            self.answered(&what, action);
            match action {
                // A big FETCH goes out in parts, each sent before the next
                // is written (server.rs), so memory stays bounded.
                Action::Continue => {
                    let mut parts = 0;
                    while self.session.busy() {
                        parts += 1;
                        assert!(parts <= MAX_PARTS, "{what}: the FETCH never ends");
                        self.out.clear();
                        self.session.resume(&mut self.out).await;
                        self.answered(&what, action);
                    }
                }
                // TLS is already on: STARTTLS is refused, never granted;
                // were it granted, the connection would go to the handshake.
                Action::Close | Action::StartTls => return false,
                // server.rs's idle loop reports what changed, then reads on
                // until DONE (which the reader now expects).
                Action::Idle => self.session.idle_update(&mut self.out).await,
            }
        }
        true
    }
}

async fn drive(svc: MailService, data: &[u8]) {
    let (login, chunk, spill, bytes) = match data {
        [a, b, rest @ ..] => {
            let spill = match (b >> 4) & 3 {
                0 => None,
                1 => Some(256 * 1024),
                2 => Some(1),
                _ => Some(4096),
            };
            (a & 1 == 1, 1usize << (b & 15), spill, rest)
        }
        _ => return,
    };
    let cfg = SessionConfig {
        hostname: "imap.alpha.test".into(),
        starttls: true,
        append_limit: APPEND_LIMIT,
    };
    let start = Instant::now();
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut run = Run {
        session: Session::new(svc, cfg, peer, true, start),
        out: Vec::new(),
        inputs: 0,
        start,
    };
    run.session.set_spill(spill);
    run.session.greeting(&mut run.out);
    if login {
        run.session.reader.feed(LOGIN);
        if !run.pump().await {
            return;
        }
    }
    for c in bytes.chunks(chunk) {
        run.session.reader.feed(c);
        if !run.pump().await {
            return;
        }
    }
}

/// The last panic let through to a guard of the instance (see `init`).
static GUARDED: Mutex<Option<String>> = Mutex::new(None);

fuzz_target!(
    init: {
        // mail-parser 0.11.9 panics on some malformed multiparts; the
        // instance catches those where it parses stored mail
        // (`privacy::parse_guarded`, `mail::parse_headers_guarded`), so
        // the fuzzer lets them unwind to those guards. One that escapes
        // every guard is reported below with its message.
        let fuzz_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guarded = info.location().is_some_and(|l| {
                l.file().contains("/mail-parser-") || l.file().contains("/mail-auth-")
            });
            if guarded {
                *GUARDED.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(info.to_string());
            } else {
                fuzz_hook(info);
            }
        }));
        world();
    },
    |data: &[u8]| {
        if data.len() > MAX_INPUT + 2 {
            return;
        }
        let w = world();
        let svc = service(w);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            w.rt.block_on(drive(svc, data));
        }));
        if r.is_err() {
            let why = GUARDED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            panic!("a mail-parser panic escaped the instance's guards: {why:?}");
        }
    }
);

//! `caliopen mail export` and `mail import` with tools we did not write:
//! a Maildir++ made by the test (plain files, folders, flags, a Dovecot
//! keyword list, dates) goes in and comes out byte for byte with its flags
//! and dates as Python's `mailbox` reads them; mbsync copies the export;
//! an mbox export reads back in Python's `mailbox.mbox` and imports again;
//! Dovecot (dovecot-imapd on loopback) serves the exported Maildir as it
//! is, and an IMAP import from it — killed with SIGKILL after its first
//! chunk — resumes, copies every message, folder and flag once, copies
//! nothing on a second run and only the new message on a third.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::free_port;

use common::caliopen_ok as caliopen;
use common::{python, run_caliopen, Daemon, BIN};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/eml");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// An instance with users alice, bob and carol; its configuration file.
fn instance(dir: &Path, imap: bool) -> String {
    let data = dir.join("alpha");
    let mut args = vec![
        "init",
        "--data",
        s(&data),
        "--domain",
        "alpha.test",
        "--smtp",
        "127.0.0.1:0",
        "--submission",
        "127.0.0.1:0",
    ];
    let imap_addr = format!("127.0.0.1:{}", free_port());
    if imap {
        args.extend(["--imap", &imap_addr]);
    }
    caliopen(&args, None);
    let config = data
        .join("caliopen.toml")
        .to_str()
        .expect("utf-8")
        .to_owned();
    for u in ["alice", "bob", "carol"] {
        caliopen(
            &["user", "add", "--config", &config, u, "--password-stdin"],
            Some("a long password\n"),
        );
    }
    config
}

/// Writes a Maildir++ of the corpus with plain file operations: five
/// folders, every Maildir flag, two Dovecot keywords in `Work`, dates.
const MAKE_MAILDIR: &str = r#"
import os, sys, glob
corpus, root = sys.argv[1], sys.argv[2]
src = sorted(glob.glob(os.path.join(corpus, '**', '*.eml'), recursive=True))
assert len(src) >= 40, len(src)
def mk(d):
    for s in ('cur', 'new', 'tmp'):
        os.makedirs(os.path.join(d, s), exist_ok=True)
folders = ['', '.Sent', '.Work', '.Work.2026', '.Entw&APw-rfe']
for f in folders:
    mk(os.path.join(root, f))
open(os.path.join(root, '.Work', 'dovecot-keywords'), 'w').write('0 $Junk\n1 todo\n')
flags = ['', 'S', 'RS', 'FS', 'DS', 'PS', 'ST', 'Sab']
for i, p in enumerate(src):
    f = folders[i % len(folders)]
    fl = flags[i % len(flags)]
    if 'a' in fl and f != '.Work':
        fl = 'FRS'
    sub = 'new' if (fl == '' and i % 2) else 'cur'
    name = '%d.M%dP1.maker' % (1700000000 + i, i) + ('' if sub == 'new' else ':2,' + fl)
    fn = os.path.join(root, f, sub, name)
    open(fn, 'wb').write(open(p, 'rb').read())
    os.utime(fn, (1700000000 + i * 3600,) * 2)
print(len(src))
"#;

/// Python's view of a Maildir++: folder -> sorted (bytes, flags, date).
const READ_MAILDIR: &str = r#"
import mailbox
def load(path, upper_only=False):
    md = mailbox.Maildir(path, factory=None, create=False)
    res = {}
    def add(name, box):
        items = []
        for k in box.keys():
            m = box.get_message(k)
            fl = m.get_flags()
            if upper_only:
                fl = ''.join(c for c in fl if c.isupper())
            items.append((box.get_bytes(k), fl, int(m.get_date())))
        res[name] = sorted(items)
    add('INBOX', md)
    for f in md.list_folders():
        add(f, md.get_folder(f))
    return res
"#;

#[test]
fn maildir_and_mbox_go_out_and_in_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = instance(dir.path(), false);
    let src = dir.path().join("src");
    let n: usize = python(&format!(
        "import sys; sys.argv = ['', {CORPUS:?}, {:?}]\n{MAKE_MAILDIR}",
        s(&src)
    ))
    .trim()
    .parse()
    .expect("count");

    // In, twice: the second run copies nothing.
    let imp = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["mail", "import", "--config", &config, "--json", "--quiet"];
        a.extend_from_slice(args);
        serde_json::from_str(&caliopen(&a, None)).expect("json")
    };
    let first = imp(&["--user", "alice", "--maildir", s(&src)]);
    assert_eq!(first["messages"], n, "{first}");
    assert_eq!(first["skipped"], serde_json::json!([]), "{first}");
    let again = imp(&["--user", "alice", "--maildir", s(&src)]);
    assert_eq!(
        (again["messages"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(n as u64))
    );

    // The role folder took the role mailbox; keywords and the class are there.
    let list: serde_json::Value = serde_json::from_str(&caliopen(
        &[
            "mail",
            "list",
            "--config",
            &config,
            "--user",
            "alice",
            "--mailbox",
            "sent",
            "--json",
        ],
        None,
    ))
    .expect("json");
    assert!(!list.as_array().expect("array").is_empty());
    let work: serde_json::Value = serde_json::from_str(&caliopen(
        &[
            "mail",
            "list",
            "--config",
            &config,
            "--user",
            "alice",
            "--mailbox",
            "Work",
            "--json",
        ],
        None,
    ))
    .expect("json");
    assert!(
        work.as_array()
            .expect("array")
            .iter()
            .any(|m| m["keywords"] == serde_json::json!(["$junk", "$seen", "todo"])),
        "{work}"
    );

    // Out: Python reads the same bytes, flags and dates in every folder.
    let out = dir.path().join("out");
    let summary = caliopen(
        &[
            "mail",
            "export",
            "--config",
            &config,
            "--user",
            "alice",
            "--maildir",
            s(&out),
            "--quiet",
        ],
        None,
    );
    assert!(
        summary.contains(&format!("exported {n} messages")),
        "{summary}"
    );
    let cmp = python(&format!(
        "{READ_MAILDIR}\na = load({:?}); b = load({:?})\n\
         for k in a:\n    assert a[k] == b[k], (k, len(a[k]), len(b[k]))\n\
         extra = set(b) - set(a)\n\
         assert extra == {{'Drafts', 'Trash', 'Junk', 'Archive'}}, extra\n\
         assert all(not b[k] for k in extra)\n\
         print(sum(len(v) for v in b.values()))",
        s(&src),
        s(&out)
    ));
    assert_eq!(cmp.trim(), n.to_string());
    // Into a directory that is not empty: refused, nothing written.
    let (ok, _, err) = run_caliopen(
        &[
            "mail",
            "export",
            "--config",
            &config,
            "--user",
            "alice",
            "--maildir",
            s(&out),
        ],
        None,
    );
    assert!(!ok && err.contains("not empty"), "{err}");

    // mbsync (isync) reads the export and copies every message and flag
    // (adding its X-TUID header to each copy).
    let near = dir.path().join("mbsync");
    std::fs::create_dir_all(&near).expect("mkdir");
    let rc = dir.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "MaildirStore far\nInbox {}/\nSubFolders Maildir++\n\n\
             MaildirStore near\nInbox {}/\nSubFolders Maildir++\n\n\
             Channel c\nFar :far:\nNear :near:\nPatterns *\nCreate Near\nSync Pull\nSyncState *\n",
            s(&out),
            s(&near)
        ),
    )
    .expect("rc");
    let o = Command::new("mbsync")
        .args(["-c", s(&rc), "-a"])
        .output()
        .expect("mbsync (scripts/test-deps installs isync)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    python(&format!(
        "{READ_MAILDIR}\na = load({:?}, True); b = load({:?}, True)\n\
         import re\n\
         for k in a:\n    want = [x[:2] for x in a[k]]\n\
         \x20   got = sorted((re.sub(rb'(?m)^X-TUID: .*\\r?\\n', b'', x[0], count=1), x[1]) for x in b[k])\n\
         \x20   assert want == got, (k, [x[1] for x in want], [x[1] for x in got])",
        s(&out),
        s(&near)
    ));

    // mbox: one mailbox out; Python's mailbox.mbox reads each message and
    // its flags (bytes equal once its Status headers and mboxrd quoting go,
    // and for the one message of the corpus without a final line break,
    // which mbox cannot hold without one).
    let mbox = dir.path().join("work.mbox");
    caliopen(
        &[
            "mail",
            "export",
            "--config",
            &config,
            "--user",
            "alice",
            "--mbox",
            s(&mbox),
            "--mailbox",
            "Work",
            "--quiet",
        ],
        None,
    );
    python(&format!(
        "{READ_MAILDIR}\nimport re\nsrc = load({:?})['Work']\n\
         box = mailbox.mbox({:?}, create=False)\n\
         got = []\n\
         for k in box.keys():\n\
         \x20   m = box.get_message(k)\n\
         \x20   raw = box.get_bytes(k)\n\
         \x20   raw = re.sub(rb'(?m)^(Status|X-Status|X-Keywords): .*\\r?\\n', b'', raw, count=3)\n\
         \x20   raw = re.sub(rb'(?m)^>(>*From )', rb'\\1', raw)\n\
         \x20   got.append((raw, ''.join(sorted(c for c in m.get_flags() if c in 'RFDAT'))))\n\
         want = sorted((b if b.endswith(b'\\n') else b + b'\\n', ''.join(sorted({{'S': 'R', 'R': 'A', 'F': 'F', 'D': 'T', 'T': 'D'}}.get(c, '') for c in fl))) for b, fl, _ in src)\n\
         assert sorted(got) == want, [(a[1], b[1], len(a[0]), len(b[0])) for a, b in zip(sorted(got), want) if a != b]",
        s(&src),
        s(&mbox)
    ));
    // ... and imports again into carol's inbox: the same bytes and keywords.
    let back = imp(&["--user", "carol", "--mbox", s(&mbox)]);
    assert_eq!(
        back["messages"],
        work.as_array().expect("array").len(),
        "{back}"
    );
    let carol: serde_json::Value = serde_json::from_str(&caliopen(
        &[
            "mail", "list", "--config", &config, "--user", "carol", "--json",
        ],
        None,
    ))
    .expect("json");
    let kw = |v: &serde_json::Value| {
        let mut k: Vec<String> = v
            .as_array()
            .expect("array")
            .iter()
            .map(|m| m["keywords"].to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(kw(&carol), kw(&work));
    let again = imp(&["--user", "carol", "--mbox", s(&mbox)]);
    assert_eq!(again["messages"], 0, "{again}");

    // Bad input: one line each, nothing stored.
    for (args, want) in [
        (
            vec!["--user", "alice", "--maildir", "/nonexistent/md"],
            "is not a Maildir",
        ),
        (
            vec!["--user", "alice", "--mbox", s(&src.join("cur"))],
            "Is a directory",
        ),
        (vec!["--user", "nobody", "--maildir", s(&src)], "no user"),
    ] {
        let mut a = vec!["mail", "import", "--config", &config];
        a.extend_from_slice(&args);
        let (ok, _, err) = run_caliopen(&a, None);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().filter(|l| l.contains("error")).count(),
            1,
            "{err}"
        );
    }
    let junk = dir.path().join("junk.mbox");
    std::fs::write(&junk, b"Subject: not an mbox\n\nhello\n").expect("write");
    let (ok, _, err) = run_caliopen(
        &[
            "mail",
            "import",
            "--config",
            &config,
            "--user",
            "bob",
            "--mbox",
            s(&junk),
        ],
        None,
    );
    assert!(!ok && err.contains("is not an mbox"), "{err}");

    // A CRLF mbox (as Windows tools write it): the blank separator line is
    // not part of the messages; a message with an X-IMAP header is mail
    // (only UW IMAP's folder-data message is not); the first line wins.
    let crlf = dir.path().join("crlf.mbox");
    std::fs::write(
        &crlf,
        b"From a@b Mon Dec  1 10:20:30 2026\r\nX-IMAP: 1 2\r\nSubject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\r\n\r\ndata\r\n\r\n\
          From a@b Mon Dec  1 10:20:31 2026\r\nX-IMAP: 7\r\nSubject: one\r\n\r\nfirst\r\n\r\n\
          From a@b Mon Dec  1 10:20:32 2026\r\nSubject: two\r\n\r\nsecond\r\n>From here\r\n\r\n",
    )
    .expect("write");
    let got = imp(&["--user", "bob", "--mbox", s(&crlf), "--mailbox", "Crlf"]);
    assert_eq!(got["messages"], 2, "{got}");
    let listed: serde_json::Value = serde_json::from_str(&caliopen(
        &[
            "mail",
            "list",
            "--config",
            &config,
            "--user",
            "bob",
            "--mailbox",
            "Crlf",
            "--json",
        ],
        None,
    ))
    .expect("json");
    let mut bodies: Vec<String> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|m| {
            caliopen(
                &[
                    "mail",
                    "show",
                    "--config",
                    &config,
                    "--user",
                    "bob",
                    m["id"].as_str().expect("id"),
                ],
                None,
            )
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec![
            "Subject: one\r\n\r\nfirst\r\n".to_owned(),
            "Subject: two\r\n\r\nsecond\r\nFrom here\r\n".to_owned()
        ]
    );

    // A symbolic link in a Maildir is not followed (it could name any file
    // of this machine), and is said.
    let linked = dir.path().join("linked");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(linked.join(sub)).expect("mkdir");
    }
    std::os::unix::fs::symlink(&config, linked.join("cur/1.host:2,S")).expect("symlink");
    std::fs::write(
        linked.join("cur/2.host:2,S"),
        b"Subject: real\r\n\r\nyes\r\n",
    )
    .expect("w");
    let got = imp(&["--user", "bob", "--maildir", s(&linked)]);
    assert_eq!(got["messages"], 1, "{got}");
    assert!(
        got["skipped"][0]
            .as_str()
            .is_some_and(|m| m.contains("symbolic link")),
        "{got}"
    );

    // A message-count quota holds for a whole batch: 3 more fit, not 5.
    let carol_has = carol.as_array().expect("array").len() as u64;
    caliopen(
        &[
            "user",
            "quota",
            "--config",
            &config,
            "carol",
            "--messages",
            &(carol_has + 3).to_string(),
        ],
        None,
    );
    let five = dir.path().join("five.mbox");
    let mut m = Vec::new();
    for i in 0..5 {
        m.extend_from_slice(
            format!("From a@b Mon Dec  1 10:20:3{i} 2026\nSubject: n{i}\n\nbody {i}\n\n")
                .as_bytes(),
        );
    }
    std::fs::write(&five, &m).expect("write");
    let (ok, _, err) = run_caliopen(
        &[
            "mail",
            "import",
            "--config",
            &config,
            "--user",
            "carol",
            "--mbox",
            s(&five),
            "--mailbox",
            "Five",
            "--quiet",
        ],
        None,
    );
    assert!(!ok && err.contains("over quota"), "{err}");
    let users: serde_json::Value = serde_json::from_str(&caliopen(
        &["user", "list", "--config", &config, "--json"],
        None,
    ))
    .expect("json");
    let carol_q = users
        .as_array()
        .expect("array")
        .iter()
        .find(|u| u["localpart"] == "carol")
        .map(|u| u["quota"]["used_messages"].clone());
    assert_eq!(carol_q, Some(serde_json::json!(carol_has + 3)), "{users}");
}

/// Dovecot 2.3 on loopback (bench/dovecot.sh: its own configuration and
/// directory), with a certificate from a CA the test makes; stopped on drop.
struct Dovecot {
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/dovecot.sh"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("CALIOPEN_BENCH_DOVECOT_DIR", &self.dir)
            .env("CALIOPEN_BENCH_DOVECOT_PORT", self.port.to_string())
            .status();
    }
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn dovecot(dir: &Path) -> Dovecot {
    std::fs::create_dir_all(dir).expect("mkdir");
    let p = |f: &str| dir.join(f).to_str().expect("utf-8").to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Transfer test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("leaf.csr"),
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
    let port = free_port();
    // Dovecot's master process keeps the descriptors it was started with:
    // the script's output goes to a file, not to a pipe read to its end.
    let log = dir.join("setup.log");
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/dovecot.sh"))
        .arg("setup")
        .env("CALIOPEN_BENCH_DOVECOT_DIR", dir)
        .env("CALIOPEN_BENCH_DOVECOT_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("setup.err")).expect("log"))
        .status()
        .expect("bench/dovecot.sh");
    assert!(
        status.success(),
        "Dovecot did not start (scripts/test-deps installs dovecot-imapd): {}",
        std::fs::read_to_string(dir.join("setup.err")).unwrap_or_default()
    );
    Dovecot {
        dir: dir.to_owned(),
        port,
    }
}

/// Python's imaplib at Dovecot; `body` runs with `M` logged in.
fn at_dovecot(d: &Dovecot, body: &str) -> String {
    python(&format!(
        "import imaplib, ssl, time, json\n\
         ctx = ssl.create_default_context(cafile={:?})\n\
         M = imaplib.IMAP4('127.0.0.1', {})\nM.starttls(ctx)\nM.login('bench', 'bench-password')\n{body}",
        s(&d.dir.join("ca.pem")),
        d.port
    ))
}

/// Every folder at Dovecot: name -> sorted (bytes, flags, internal date).
const DOVECOT_VIEW: &str = r#"
import re, email.utils
def view():
    out = {}
    typ, lines = M.list()
    for l in lines:
        name = l.decode().rsplit(' "/" ', 1)[1].strip('"')
        if '\\Noselect' in l.decode():
            continue
        typ, _ = M.select('"%s"' % name, readonly=True)
        assert typ == 'OK', name
        typ, data = M.uid('FETCH', '1:*', '(FLAGS INTERNALDATE BODY.PEEK[])')
        items = []
        for part in data:
            if not isinstance(part, tuple):
                continue
            head = part[0].decode()
            flags = sorted(f.lower() for f in re.search(r'FLAGS \(([^)]*)\)', head).group(1).split() if f != '\\Recent')
            date = imaplib.Internaldate2tuple(part[0])
            items.append((part[1].hex(), flags, int(time.mktime(date))))
        out[name] = sorted(items)
    return out
"#;

#[test]
fn an_imap_import_from_dovecot_resumes_after_a_kill_and_copies_each_message_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = instance(dir.path(), true);
    let (child, _) = common::spawn_daemon(Path::new(&config), Stdio::null(), &[]);
    let _daemon = Daemon(child);

    // alice's mail, exported, is what Dovecot serves.
    let src = dir.path().join("src");
    python(&format!(
        "import sys; sys.argv = ['', {CORPUS:?}, {:?}]\n{MAKE_MAILDIR}",
        s(&src)
    ));
    caliopen(
        &[
            "mail",
            "import",
            "--config",
            &config,
            "--user",
            "alice",
            "--maildir",
            s(&src),
            "--quiet",
        ],
        None,
    );
    let d = dovecot(&dir.path().join("dovecot"));
    let maildir = d.dir.join("home/bench/Maildir");
    caliopen(
        &[
            "mail",
            "export",
            "--config",
            &config,
            "--user",
            "alice",
            "--maildir",
            s(&maildir),
            "--quiet",
        ],
        None,
    );
    // Dovecot reads mail as its virtual user's uid (bench/dovecot.sh).
    let o = Command::new("chown")
        .args(["-R", "60123:60123", s(&d.dir.join("home/bench"))])
        .output()
        .expect("chown");
    assert!(o.status.success());
    // More mail at Dovecot, APPENDed by imaplib: 300 in a folder of its own
    // (several chunks), with flags, a keyword and dates.
    at_dovecot(
        &d,
        "M.create('\"Projets/&AMk-t&AOk-\"')\n\
         for i in range(300):\n\
         \x20   msg = ('From: s%d@example.net\\r\\nTo: bench@example.org\\r\\nSubject: n%d\\r\\n'\n\
         \x20          'Message-ID: <n%d@example.net>\\r\\n\\r\\nbody %d\\r\\n' % (i, i, i, i)).encode()\n\
         \x20   flags = ['', '\\\\Seen', '\\\\Seen \\\\Flagged', '$Forwarded todo'][i % 4]\n\
         \x20   typ, _ = M.append('\"Projets/&AMk-t&AOk-\"', '(' + flags + ')', imaplib.Time2Internaldate(1600000000 + i * 60), msg)\n\
         \x20   assert typ == 'OK'\n",
    );
    let view_file = dir.path().join("dovecot-view.json");
    at_dovecot(
        &d,
        &format!(
            "{DOVECOT_VIEW}\nopen({:?}, 'w').write(json.dumps(view()))",
            s(&view_file)
        ),
    );
    let source: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&view_file).expect("view")).expect("json");
    let total: usize = source
        .as_object()
        .expect("object")
        .values()
        .map(|v| v.as_array().expect("array").len())
        .sum();
    assert!(total > 300, "{total}");

    let ca = d.dir.join("ca.pem");
    let port = format!("127.0.0.1:{}", d.port);
    let import_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "mail",
            "import",
            "--config",
            &config,
            "--user",
            "bob",
            "--imap",
            &port,
            "--login",
            "bench",
            "--password-stdin",
            "--ca",
            s(&ca),
            "--chunk",
            "20",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };

    // A run killed (SIGKILL) once its first chunk is stored.
    let mut c = Command::new(BIN)
        .args(import_args(&[]))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn import");
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().expect("stdin");
        stdin.write_all(b"bench-password\n").expect("password");
    }
    let mut line = String::new();
    BufReader::new(c.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("progress");
    c.kill().expect("kill");
    let _ = c.wait();
    assert!(line.starts_with("import: "), "{line}");
    let count = |user: &str| -> usize {
        let v: serde_json::Value = serde_json::from_str(&caliopen(
            &["user", "list", "--config", &config, "--json"],
            None,
        ))
        .expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .find(|u| u["localpart"] == user)
            .and_then(|u| u["messages"].as_u64())
            .expect("user") as usize
    };
    let cut = count("bob");
    assert!(cut > 0 && cut < total, "{cut} of {total} after the kill");

    // The next run copies the rest, each message once.
    let run = |extra: &[&str], password: &str| {
        let args = import_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_caliopen(&args, Some(password))
    };
    let (ok, out, err) = run(&["--json", "--quiet"], "bench-password\n");
    assert!(ok, "{err}");
    let second: serde_json::Value = serde_json::from_str(&out).expect("json");
    let copied = second["messages"].as_u64().expect("messages") as usize
        + second["duplicates"].as_u64().expect("duplicates") as usize;
    assert!(copied <= total - cut + 20, "{second}");
    assert_eq!(count("bob"), total);

    // bob now holds exactly what Dovecot holds: bytes, flags, dates, folders.
    let out = dir.path().join("bob");
    caliopen(
        &[
            "mail",
            "export",
            "--config",
            &config,
            "--user",
            "bob",
            "--maildir",
            s(&out),
            "--quiet",
        ],
        None,
    );
    python(&format!(
        "import json, mailbox\nsource = json.loads(open({:?}).read())\n\
         md = mailbox.Maildir({:?}, factory=None, create=False)\n\
         kw = {{}}\n\
         def flags_of(box, path, k):\n\
         \x20   info = box.get_message(k).get_flags()\n\
         \x20   try:\n\
         \x20       names = [l.split(' ', 1)[1].strip() for l in open(path + '/dovecot-keywords')]\n\
         \x20   except FileNotFoundError:\n\
         \x20       names = []\n\
         \x20   m = {{'S': '\\\\seen', 'R': '\\\\answered', 'F': '\\\\flagged', 'D': '\\\\draft', 'T': '\\\\deleted', 'P': '$forwarded'}}\n\
         \x20   return sorted([m[c] for c in info if c in m] + [names[ord(c) - 97].lower() for c in info if c.islower()])\n\
         for name, want in source.items():\n\
         \x20   folder = name.replace('/', '.')\n\
         \x20   box = md if name == 'INBOX' else md.get_folder(folder)\n\
         \x20   path = {:?} + ('' if name == 'INBOX' else '/.' + folder)\n\
         \x20   got = sorted((box.get_bytes(k).hex(), flags_of(box, path, k), int(box.get_message(k).get_date())) for k in box.keys())\n\
         \x20   assert [tuple(g[:2]) for g in got] == [tuple(w[:2]) for w in want], name\n\
         \x20   assert [g[2] for g in got] == [w[2] for w in want], name\n",
        s(&view_file),
        s(&out),
        s(&out)
    ));

    // Nothing new: nothing copied, nothing even fetched again.
    let (ok, out, err) = run(&["--json", "--quiet"], "bench-password\n");
    assert!(ok, "{err}");
    let third: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (third["messages"].as_u64(), third["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{third}"
    );
    // One new message at Dovecot: one copied.
    at_dovecot(
        &d,
        "typ, _ = M.append('INBOX', '(\\\\Seen)', None, b'From: late@example.net\\r\\nSubject: late\\r\\n\\r\\nlate\\r\\n')\nassert typ == 'OK'\n",
    );
    let (ok, out, err) = run(&["--json", "--quiet"], "bench-password\n");
    assert!(ok, "{err}");
    let fourth: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(fourth["messages"], 1, "{fourth}");
    assert_eq!(count("bob"), total + 1);

    // A wrong password, and a server whose CA is not named: one clear line.
    let (ok, _, err) = run(&[], "wrong\n");
    assert!(!ok && err.contains("login refused"), "{err}");
    let args: Vec<String> = import_args(&[])
        .into_iter()
        .filter(|a| a != "--ca" && a != s(&ca))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run_caliopen(&args, Some("bench-password\n"));
    assert!(!ok && err.contains("--ca FILE"), "{err}");
    assert_eq!(count("bob"), total + 1);
}

/// The `mail list --json` rows of every mailbox of `user`, without the
/// ids (which differ between instances), sorted.
fn all_mail(config: &str, user: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for mailbox in [
        "inbox",
        "sent",
        "drafts",
        "trash",
        "junk",
        "archive",
        "Work",
        "Work/2026",
        "Entwürfe",
    ] {
        let (ok, out, _) = run_caliopen(
            &[
                "mail",
                "list",
                "--config",
                config,
                "--user",
                user,
                "--mailbox",
                mailbox,
                "--json",
            ],
            None,
        );
        if !ok {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        for m in v.as_array().expect("array") {
            rows.push(
                serde_json::json!({
                    "mailbox": m["mailbox"],
                    "subject": m["subject"],
                    "from": m["from"],
                    "received_at": m["received_at"],
                    "keywords": m["keywords"],
                    "via": m["via"],
                    "transport": m["transport"],
                    "size": m["size"],
                    "privacy": m["privacy"]["total"],
                })
                .to_string(),
            );
        }
    }
    rows.sort();
    rows
}

#[test]
fn an_account_moves_to_another_instance_with_its_password_facts_and_a_verified_digest() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = instance(dir.path(), false);
    let src = dir.path().join("src");
    python(&format!(
        "import sys; sys.argv = ['', {CORPUS:?}, {:?}]\n{MAKE_MAILDIR}",
        s(&src)
    ));
    caliopen(
        &[
            "mail",
            "import",
            "--config",
            &a,
            "--user",
            "alice",
            "--maildir",
            s(&src),
            "--quiet",
        ],
        None,
    );
    caliopen(
        &["alias", "add", "--config", &a, "team@alpha.test", "alice"],
        None,
    );
    caliopen(
        &[
            "user",
            "quota",
            "--config",
            &a,
            "alice",
            "--bytes",
            "20000000000",
            "--messages",
            "5000",
        ],
        None,
    );
    let archive = dir.path().join("alice.caliopen");
    let out = caliopen(
        &[
            "account",
            "export",
            "--config",
            &a,
            "--user",
            "alice",
            "--out",
            s(&archive),
            "--quiet",
            "--json",
        ],
        None,
    );
    let exported: serde_json::Value = serde_json::from_str(&out).expect("json");
    let n = exported["end"]["messages"].as_u64().expect("count");
    assert!(n >= 60, "{exported}");

    // Another instance, another domain, with an IMAP listener.
    let bdir = dir.path().join("b");
    std::fs::create_dir_all(&bdir).expect("mkdir");
    let bdata = bdir.join("beta");
    let imap = format!("127.0.0.1:{}", free_port());
    caliopen(
        &[
            "init",
            "--data",
            s(&bdata),
            "--domain",
            "beta.test",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--imap",
            &imap,
        ],
        None,
    );
    let b = s(&bdata.join("caliopen.toml")).to_owned();
    let out = caliopen(
        &[
            "account",
            "import",
            "--config",
            &b,
            "--in",
            s(&archive),
            "--quiet",
            "--json",
        ],
        None,
    );
    let imported: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(imported["stored"], exported["end"], "{imported}");
    assert_eq!(imported["summary"]["messages"], n);
    // team@alpha.test names a domain beta does not serve: left out, said.
    assert!(
        imported["aliases_left"][0]
            .as_str()
            .expect("alias")
            .contains("team@alpha.test"),
        "{imported}"
    );
    // Every message with its mailbox, keywords, date, facts and privacy index.
    assert_eq!(all_mail(&b, "alice"), all_mail(&a, "alice"));
    let users: serde_json::Value =
        serde_json::from_str(&caliopen(&["user", "list", "--config", &b, "--json"], None))
            .expect("json");
    // Her own quota, but not above beta's default (10 GiB): beta's
    // operator decides what an account here may take.
    assert_eq!(users[0]["quota"]["limit_bytes"], 10737418240u64, "{users}");
    assert_eq!(users[0]["quota"]["limit_messages"], 5000, "{users}");
    assert_eq!(users[0]["quota"]["own_limits"], true, "{users}");
    assert!(
        imported["quota"]
            .as_str()
            .is_some_and(|q| q.contains("asked for 20000000000")),
        "{imported}"
    );

    // alice logs in at beta over IMAP with the password she had at alpha.
    let (child, _) = common::spawn_daemon(Path::new(&b), Stdio::null(), &[]);
    let daemon = Daemon(child);
    let inbox = python(&format!(
        "import imaplib, ssl\nctx = ssl._create_unverified_context()\n\
         M = imaplib.IMAP4('127.0.0.1', {})\nM.starttls(ctx)\nM.login('alice@beta.test', 'a long password')\n\
         typ, data = M.select('INBOX', readonly=True)\nassert typ == 'OK', data\nprint(int(data[0]))",
        imap.rsplit(':').next().expect("port")
    ));
    let want = all_mail(&a, "alice")
        .iter()
        .filter(|r| r.contains("\"mailbox\":\"INBOX\""))
        .count();
    assert_eq!(inbox.trim(), want.to_string());

    // Into an account that exists: refused without --resume.
    let (ok, _, err) = run_caliopen(
        &["account", "import", "--config", &b, "--in", s(&archive)],
        None,
    );
    assert!(!ok && err.contains("--resume"), "{err}");

    // A truncated archive: what it held is imported, the error says so;
    // the whole file with --resume copies the rest once, and verifies.
    let bytes = std::fs::read(&archive).expect("read");
    let half = dir.path().join("half.caliopen");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).expect("write");
    let (ok, _, err) = run_caliopen(
        &[
            "account",
            "import",
            "--config",
            &b,
            "--in",
            s(&half),
            "--user",
            "dave",
            "--quiet",
        ],
        None,
    );
    assert!(!ok && err.contains("truncated"), "{err}");
    let out = caliopen(
        &[
            "account",
            "import",
            "--config",
            &b,
            "--in",
            s(&archive),
            "--user",
            "dave",
            "--resume",
            "--json",
            "--quiet",
        ],
        None,
    );
    let resumed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(resumed["stored"], exported["end"], "{resumed}");
    let first_part = resumed["summary"]["duplicates"]
        .as_u64()
        .expect("duplicates");
    assert!(first_part > 0 && first_part < n, "{resumed}");
    assert_eq!(
        resumed["summary"]["messages"].as_u64(),
        Some(n - first_part)
    );
    // A damaged one: refused with the record named, nothing after it taken.
    let mut bad = bytes.clone();
    let at = bad.len() / 3;
    bad[at] ^= 0x40;
    let damaged = dir.path().join("bad.caliopen");
    std::fs::write(&damaged, &bad).expect("write");
    let (ok, _, err) = run_caliopen(
        &[
            "account",
            "import",
            "--config",
            &b,
            "--in",
            s(&damaged),
            "--user",
            "erin",
            "--quiet",
        ],
        None,
    );
    assert!(!ok && err.contains("damaged"), "{err}");

    // dave removed and made again from the same archive: everything is
    // copied again (what the first account imported is not remembered
    // for the second).
    caliopen(&["user", "remove", "--config", &b, "dave"], None);
    let out = caliopen(
        &[
            "account",
            "import",
            "--config",
            &b,
            "--in",
            s(&archive),
            "--user",
            "dave",
            "--json",
            "--quiet",
        ],
        None,
    );
    let again: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(again["summary"]["messages"].as_u64(), Some(n), "{again}");
    assert_eq!(again["stored"], exported["end"], "{again}");
    let (ok, _, err) = run_caliopen(
        &[
            "account",
            "import",
            "--config",
            &b,
            "--in",
            s(&src.join("cur")),
            "--user",
            "frank",
        ],
        None,
    );
    assert!(!ok && err.contains("error"), "{err}");
    drop(daemon);

    // The same archive imported at alpha under another name: the alias
    // team@alpha.test reaches alice there and is not taken from her.
    let out = caliopen(
        &[
            "account",
            "import",
            "--config",
            &a,
            "--in",
            s(&archive),
            "--user",
            "alice2",
            "--json",
            "--quiet",
        ],
        None,
    );
    let twin: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        twin["aliases_left"][0]
            .as_str()
            .is_some_and(|a| a.contains("exists here (it reaches alice)")),
        "{twin}"
    );
    let aliases: serde_json::Value = serde_json::from_str(&caliopen(
        &["alias", "list", "--config", &a, "--json"],
        None,
    ))
    .expect("json");
    assert_eq!(
        aliases[0]["targets"],
        serde_json::json!(["alice"]),
        "{aliases}"
    );
}

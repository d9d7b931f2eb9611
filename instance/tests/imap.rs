//! IMAP from outside, against the real binary, with clients we did not
//! write: Python's imaplib (STARTTLS, LOGIN, LIST, SELECT, byte-exact
//! FETCH, STORE seen by `caliopen mail list`, APPEND, MOVE, EXPUNGE, IDLE
//! woken by an SMTP delivery, CONDSTORE) and curl's IMAP client.

use std::process::Command;
use std::time::Duration;

mod common;
mod reliab;

use reliab::{python, send_mx, Instance};

const PW: &str = "Alice-correct-horse-42";

fn imap_instance(tmp: &std::path::Path) -> Instance {
    let mut inst = Instance::init(tmp, "a", "alpha.test", None, None, None);
    inst.set("imap", "listen = \"127.0.0.1:0\"");
    inst.add_user("alice", PW);
    inst.add_user("bob", "Bob-correct-horse-42");
    inst.start();
    inst
}

fn imap_port(inst: &Instance) -> u16 {
    inst.bound.and_then(|b| b.imap).expect("imap bound").port()
}

#[test]
fn imaplib_reads_files_and_idles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let inst = imap_instance(tmp.path());
    let port = imap_port(&inst);
    assert!(send_mx(
        inst.smtp(),
        "carol@example.net",
        "alice@alpha.test",
        "first"
    ));
    let msgs = inst.wait_for("alice", 1, Duration::from_secs(10));
    let id = msgs[0]["id"].as_str().expect("id").to_owned();
    let stored = Command::new(common::BIN)
        .args(["mail", "show", "--config", inst.c(), "--user", "alice", &id])
        .output()
        .expect("mail show")
        .stdout;
    std::fs::write(tmp.path().join("stored.eml"), &stored).expect("write");

    let script = format!(
        r#"
import imaplib, ssl, smtplib, threading, time, re, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
stored = open({stored:?}, 'rb').read()
M = imaplib.IMAP4('127.0.0.1', {port})
assert 'LOGINDISABLED' in M.capabilities, M.capabilities
assert 'STARTTLS' in M.capabilities
try:
    M.login('alice@alpha.test', {pw:?})
    raise SystemExit('LOGIN accepted before TLS')
except imaplib.IMAP4.error as e:
    assert 'PRIVACYREQUIRED' in str(e), e
M.starttls(ssl_context=ctx)
try:
    M.login('alice@alpha.test', 'wrong-password-1')
    raise SystemExit('a wrong password was accepted')
except imaplib.IMAP4.error as e:
    assert 'AUTHENTICATIONFAILED' in str(e), e
typ, _ = M.login('alice@alpha.test', {pw:?})
assert typ == 'OK'
caps = M.capability()[1][0].decode().split()
assert 'IDLE' in caps and 'MOVE' in caps and 'UIDPLUS' in caps and 'CONDSTORE' in caps, caps
typ, boxes = M.list()
names = [b.decode() for b in boxes]
assert any(n.endswith('INBOX') for n in names), names
assert any('\\Sent' in n and n.endswith('Sent') for n in names), names
typ, n = M.select('INBOX')
assert n == [b'1'], n

# Byte-exact body: the trace header, then the bytes as stored.
typ, data = M.uid('FETCH', '1', '(UID RFC822.SIZE BODY.PEEK[] FLAGS)')
meta, body = data[0]
size = int(re.search(rb'RFC822.SIZE (\d+)', meta).group(1))
assert body.startswith(b'X-Caliopen-Privacy: '), body[:80]
header, rest = body.split(b'\r\n', 1)
assert rest == stored, (rest[:200], stored[:200])
assert size == len(body), (size, len(body))
assert re.match(rb'X-Caliopen-Privacy: \d+; technic=\d+; context=\d+; comportment=\d+ *$', header), header
assert b'$CaliopenPlain' in meta and b'\\Seen' not in meta, meta
# A partial fetch agrees with the whole.
typ, data = M.uid('FETCH', '1', '(BODY.PEEK[]<10.20>)')
assert data[0][1] == body[10:30], data
typ, data = M.uid('FETCH', '1', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
assert data[0][1] == b'Subject: first\r\n\r\n', data

# Flags reach the mail core.
typ, data = M.uid('STORE', '1', '+FLAGS', '(\\Flagged \\Seen)')
assert typ == 'OK' and b'\\Flagged' in data[0], data
open({flagged:?}, 'w').write('done')
while open({flagged:?}).read() != 'checked':
    time.sleep(0.05)

# CONDSTORE: only what changed after a modseq comes back.
typ, data = M.uid('FETCH', '1', '(MODSEQ)')
modseq = int(re.search(rb'MODSEQ \((\d+)\)', data[0]).group(1))
typ, data = M.uid('FETCH', '1:*', '(FLAGS) (CHANGEDSINCE %d)' % modseq)
assert data == [None], data
typ, data = M.uid('FETCH', '1:*', '(FLAGS) (CHANGEDSINCE %d)' % (modseq - 1))
assert data[0] is not None and b'MODSEQ' in data[0], data

# APPEND to Sent answers with its UID.
typ, data = M.append('Sent', '(\\Seen)', None, b'From: alice@alpha.test\r\nTo: x@example.net\r\nSubject: sent one\r\n\r\nhi\r\n')
assert typ == 'OK' and b'APPENDUID' in data[0], data

# MOVE to a new folder.
typ, _ = M.create('Work/2026')
assert typ == 'OK'
typ, data = M.uid('MOVE', '1', 'Work/2026')
assert typ == 'OK', data
typ, data = M.status('Work/2026', '(MESSAGES UIDNEXT)')
assert b'MESSAGES 1' in data[0] and b'UIDNEXT 2' in data[0], data
typ, n = M.select('INBOX')
assert n == [b'0'], n

# IDLE hears a message that arrives by SMTP.
def deliver():
    time.sleep(0.5)
    s = smtplib.SMTP('127.0.0.1', {smtp_port})
    s.sendmail('dave@example.net', ['alice@alpha.test'], b'From: dave@example.net\r\nTo: alice@alpha.test\r\nSubject: while idle\r\n\r\nwake up\r\n')
    s.quit()
threading.Thread(target=deliver).start()
tag = M._new_tag().decode()
M.send(('%s IDLE\r\n' % tag).encode())
assert M.readline().startswith(b'+'), 'no continuation for IDLE'
M.sock.settimeout(20)
t0 = time.time()
line = M.readline()
while b'EXISTS' not in line:
    line = M.readline()
print('idle latency %.3f s' % (time.time() - t0 - 0.5))
assert line.strip() == b'* 1 EXISTS', line
M.send(b'DONE\r\n')
line = M.readline()
while not line.startswith(tag.encode()):
    line = M.readline()
assert b'OK' in line, line

# EXPUNGE of a message marked deleted.
typ, _ = M.store('1', '+FLAGS', '(\\Deleted)')
typ, data = M.expunge()
assert typ == 'OK' and data == [b'1'], data
typ, data = M.search(None, 'ALL')
assert data == [b''], data
M.logout()
print('imaplib ok')
"#,
        stored = tmp.path().join("stored.eml"),
        port = port,
        pw = PW,
        flagged = tmp.path().join("flagged"),
        smtp_port = inst.smtp().port(),
    );
    std::fs::write(tmp.path().join("flagged"), "").expect("write");
    let child = std::thread::spawn(move || python(&script));
    // While the script waits, the flags it set must show in the mail core.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(tmp.path().join("flagged")).unwrap_or_default() != "done" {
        if child.is_finished() {
            let (_, out) = child.join().expect("script");
            panic!(
                "the script ended before setting flags:\n{out}\nlog:\n{}",
                inst.last_log()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the script never set flags"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let l = inst.list("alice");
    let kw: Vec<&str> = l[0]["keywords"]
        .as_array()
        .expect("keywords")
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(kw, ["$flagged", "$seen"], "{l:?}");
    std::fs::write(tmp.path().join("flagged"), "checked").expect("write");
    let (ok, out) = child.join().expect("script");
    assert!(ok, "{out}\nlog:\n{}", inst.last_log());
    assert!(out.contains("imaplib ok"), "{out}");
}

#[test]
fn curl_lists_and_fetches_over_implicit_tls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(tmp.path(), "a", "alpha.test", None, None, None);
    inst.set("imap", "listen = \"127.0.0.1:0\"\nimplicit_tls = true");
    inst.add_user("alice", PW);
    inst.start();
    assert!(send_mx(
        inst.smtp(),
        "carol@example.net",
        "alice@alpha.test",
        "for curl"
    ));
    inst.wait_for("alice", 1, Duration::from_secs(10));
    let port = imap_port(&inst);
    let curl = |password: &str, url: &str| {
        Command::new("curl")
            .args(["-sS", "--insecure", "--max-time", "20", "--user"])
            .arg(format!("alice@alpha.test:{password}"))
            .arg(url)
            .output()
            .expect("curl")
    };
    let fetch = |url: &str| {
        let o = curl(PW, url);
        assert!(
            o.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let list = fetch(&format!("imaps://127.0.0.1:{port}/"));
    assert!(list.contains("INBOX") && list.contains("Sent"), "{list}");
    let body = fetch(&format!("imaps://127.0.0.1:{port}/INBOX;UID=1"));
    assert!(body.starts_with("X-Caliopen-Privacy: "), "{body}");
    assert!(body.contains("Subject: for curl"), "{body}");
    // A wrong password is refused.
    let o = curl("nope-nope-nope", &format!("imaps://127.0.0.1:{port}/"));
    assert!(!o.status.success());
}

/// Files of a Maildir folder (`cur` and `new`).
fn maildir_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            v.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    v.sort();
    v
}

#[test]
fn mbsync_syncs_both_ways() {
    let tmp = tempfile::tempdir().expect("tmp");
    let inst = imap_instance(tmp.path());
    let port = imap_port(&inst);
    for s in ["one", "two"] {
        assert!(send_mx(
            inst.smtp(),
            "carol@example.net",
            "alice@alpha.test",
            s
        ));
    }
    inst.wait_for("alice", 2, Duration::from_secs(10));
    let local = tmp.path().join("mail");
    std::fs::create_dir_all(&local).expect("mkdir");
    let cfg = tmp.path().join("mbsyncrc");
    std::fs::write(
        &cfg,
        format!(
            "IMAPAccount alice\nHost 127.0.0.1\nPort {port}\nUser alice@alpha.test\nPass {PW}\n\
SSLType STARTTLS\nCertificateFile {cert}\n\n\
IMAPStore remote\nAccount alice\n\n\
MaildirStore near\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n\
Channel alice\nFar :remote:\nNear :near:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\nSync All\n",
            cert = inst.data.join("tls.pem").display(),
            local = local.display(),
        ),
    )
    .expect("write");
    let mbsync = || {
        let o = Command::new("mbsync")
            .args(["-c", cfg.to_str().expect("utf-8"), "-a"])
            .output()
            .expect("mbsync (Debian's isync)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "mbsync: {text}\nlog:\n{}",
            inst.last_log()
        );
        text
    };
    mbsync();
    let inbox = maildir_files(&local.join("INBOX"));
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    for f in &inbox {
        let b = std::fs::read(f).expect("read");
        assert!(b.starts_with(b"X-Caliopen-Privacy: "), "{f:?}");
    }
    for role in ["Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            local.join(role).join("cur").is_dir(),
            "{role} not made locally"
        );
    }

    // Read one locally (the Maildir flag S), and file a new local message
    // in a new local folder: both reach the server.
    let first = &inbox[0];
    let name = first
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let base = name.split(":2,").next().expect("base").to_owned();
    std::fs::rename(first, local.join("INBOX/cur").join(format!("{base}:2,S"))).expect("rename");
    let notes = local.join("Notes");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(notes.join(d)).expect("mkdir");
    }
    std::fs::write(
        notes.join("new/1700000000.1.host"),
        b"From: alice@alpha.test\r\nSubject: a note\r\n\r\nkept on the server too\r\n",
    )
    .expect("write");
    mbsync();
    let l = inst.list("alice");
    let seen = l
        .iter()
        .filter(|m| {
            m["keywords"]
                .as_array()
                .is_some_and(|k| k.iter().any(|x| x == "$seen"))
        })
        .count();
    assert_eq!(seen, 1, "{l:?}");
    let boxes = common::caliopen_ok(
        &[
            "mail",
            "list",
            "--config",
            inst.c(),
            "--user",
            "alice",
            "--mailbox",
            "Notes",
            "--json",
        ],
        None,
    );
    assert!(boxes.contains("a note"), "{boxes}");
    // A third run has nothing to do and changes nothing.
    mbsync();
    assert_eq!(maildir_files(&local.join("INBOX")).len(), 2);
    assert_eq!(maildir_files(&notes).len(), 1);
}

#[test]
fn connection_caps_and_autologout() {
    use std::io::{BufRead, BufReader, Write};
    let tmp = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(tmp.path(), "a", "alpha.test", None, None, None);
    inst.set(
        "imap",
        "listen = \"127.0.0.1:0\"\nmax_connections_per_ip = 3\nlogin_timeout_seconds = 1",
    );
    inst.add_user("alice", PW);
    inst.start();
    let addr = inst.bound.and_then(|b| b.imap).expect("imap");
    let open = || {
        let s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut l = String::new();
        r.read_line(&mut l).expect("greeting");
        (s, r, l)
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let (s, r, l) = open();
        assert!(l.starts_with("* OK [CAPABILITY IMAP4rev1"), "{l}");
        assert!(l.contains("STARTTLS") && l.contains("LOGINDISABLED"), "{l}");
        held.push((s, r));
    }
    let (_, _, l) = open();
    assert_eq!(l, "* BYE too many connections from your address\r\n");
    // A client that does not log in is dropped after login_timeout_seconds.
    let t0 = std::time::Instant::now();
    let mut l = String::new();
    held[0].1.read_line(&mut l).expect("bye");
    assert_eq!(l, "* BYE autologout: idle for too long\r\n");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Input pipelined after STARTTLS in clear is never run as a command
    // (RFC 9051 §6.2.1): here it is taken as a bad TLS hello.
    drop(held.remove(0));
    std::thread::sleep(Duration::from_millis(200));
    let (mut s, mut r, _) = open();
    s.write_all(b"a STARTTLS\r\nb NOOP\r\n").expect("write");
    let mut l = String::new();
    r.read_line(&mut l).expect("ok");
    assert_eq!(l, "a OK begin TLS now\r\n");
    let mut rest = String::new();
    let _ = r.read_line(&mut rest);
    assert!(!rest.contains("b OK"), "{rest}");
    drop((s, r));
    // The refusals are counted.
    std::thread::sleep(Duration::from_millis(300));
    let m = reliab::metrics_text(&inst);
    assert!(
        m.contains("caliopen_imap_connections_refused_total{reason=\"per_ip_limit\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("caliopen_imap_connections_refused_total{reason=\"handshake\"} 1"),
        "{m}"
    );
}

//! The store's disk: a full disk refuses mail for now (`452 4.3.1`) and
//! takes it again once space returns, losing nothing; every message of the
//! mail corpus goes through SMTP and reads back byte for byte; `caliopen
//! store check` finds the store sound, through the daemon and without it.

use std::process::Command;

mod common;
mod reliab;

use reliab::Instance;

/// Sends `files` to alice over SMTP with smtplib; prints one line per
/// message, the reply code (or the refusal).
fn send(port: u16, files: &[std::path::PathBuf]) -> String {
    let list = files
        .iter()
        .map(|f| format!("{:?}", f.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let script = format!(
        r#"
import smtplib
for f in [{list}]:
    data = open(f, "rb").read()
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
    try:
        s.sendmail("x@ext.test", ["alice@alpha.test"], data)
        print("250", f)
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode(), f)
    s.quit()
"#
    );
    let o = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_full_disk_refuses_mail_for_now_and_every_corpus_message_reads_back_exact() {
    let root = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(root.path(), "alpha", "alpha.test", None, None, None);
    inst.add_user("alice", "alice password");
    // A reserve no disk has: every delivery is refused, for now.
    inst.set("store", "min_free_mb = 1000000000");
    inst.start();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/eml");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    // As SMTP carries them: CRLF line ends, a final CRLF.
    let sent_dir = root.path().join("sent");
    std::fs::create_dir(&sent_dir).expect("mkdir");
    let files: Vec<std::path::PathBuf> = files
        .iter()
        .map(|f| {
            let p = sent_dir.join(f.file_name().expect("name"));
            std::fs::write(&p, normalise(&std::fs::read(f).expect("read"))).expect("write");
            p
        })
        .collect();
    let out = send(inst.smtp().port(), &files[..1]);
    assert!(
        out.starts_with("452 4.3.1 Insufficient system storage"),
        "{out}"
    );
    assert_eq!(inst.list("alice").len(), 0, "nothing half-stored");
    inst.stop();
    // Space is back.
    inst.set("store", "min_free_mb = 1");
    inst.start();
    let out = send(inst.smtp().port(), &files);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("250 ")).count(),
        files.len(),
        "{out}"
    );
    let list = inst.list("alice");
    assert_eq!(list.len(), files.len());
    let cfg = inst.c().to_owned();
    for m in &list {
        let id = m["id"].as_str().expect("id");
        let o = Command::new(common::BIN)
            .args(["mail", "show", "--config", &cfg, "--user", "alice", id])
            .output()
            .expect("mail show");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // The stored bytes are the received ones (after a trace header).
        let subject = m["subject"].as_str().unwrap_or_default();
        let body_found = files
            .iter()
            .any(|f| o.stdout.ends_with(&std::fs::read(f).expect("read")));
        assert!(body_found, "message {id} ({subject:?}) is not byte-exact");
    }
    let online = common::caliopen_ok(&["store", "check", "--config", &cfg], None);
    assert!(online.contains(": 0 problems"), "{online}");
    inst.stop();
    let offline = common::caliopen_ok(&["store", "check", "--config", &cfg], None);
    assert!(
        offline.contains(&format!("{} messages", files.len())) && offline.contains(": 0 problems"),
        "{offline}"
    );
}

/// A file as SMTP carries it: CRLF line ends, a final CRLF.
fn normalise(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 64);
    let mut prev = 0u8;
    for &c in b {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(c);
        prev = c;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `kill -9` while an upgrade moves bodies out of sled: after any number
/// of kills, every message reads back byte for byte, none twice.
#[test]
fn crash_kill_9_during_the_body_migration_loses_nothing() {
    use caliopen_instance::mail::{Delivery, MessageMeta, Via};
    use caliopen_instance::store::Store;
    let root = tempfile::tempdir().expect("tmp");
    let inst = Instance::init(root.path(), "alpha", "alpha.test", None, None, None);
    inst.add_user("alice", "alice password");
    let db = inst.data.join("db");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A store of 12,000 messages, each its own bytes.
    let sent: Vec<(u64, u64, Vec<u8>)> = rt.block_on(async {
        let store = Store::open(&db).expect("open");
        let mut set = tokio::task::JoinSet::new();
        for w in 0..16u64 {
            let store = store.clone();
            set.spawn(async move {
                let mut out = Vec::new();
                for i in (w..12_000).step_by(16) {
                    let raw = format!(
                        "Message-ID: <{i}@ext.test>\r\nSubject: migrate {i}\r\n\r\n{}\r\n",
                        format!("line {i} of a body that is its own. ").repeat(40)
                    )
                    .into_bytes();
                    let meta = MessageMeta {
                        from: "x@ext.test".into(),
                        via: Via::Smtp,
                        ..Default::default()
                    };
                    let d = Delivery::inbox("alice", vec!["alice@alpha.test".into()]);
                    let id = store
                        .deliver_local(&meta, &[d], &raw)
                        .await
                        .expect("deliver")[0];
                    let blob = store.meta(id).expect("meta").expect("there").blob_id();
                    out.push((id, blob, raw));
                }
                out
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.extend(r.expect("join"));
        }
        out
    });
    // Make it what a release before the body store left: the bytes in
    // sled's `raw` tree, no body index, no segment files.
    {
        let sdb = sled::open(&db).expect("sled");
        let raw = sdb.open_tree("raw").expect("raw");
        for (_, blob, bytes) in &sent {
            raw.insert(blob.to_be_bytes(), bytes.as_slice())
                .expect("put");
        }
        sdb.open_tree("bodies")
            .expect("bodies")
            .clear()
            .expect("clear");
        sdb.flush().expect("flush");
    }
    std::fs::remove_dir_all(db.join("bodies")).expect("rm bodies");
    // Each `caliopen` command opens the store, and the open migrates: kill
    // it at random moments until one run finishes by itself.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..40 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(common::BIN)
            .args(["store", "check", "--config", inst.c()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(30 + seed % 400));
        if child.try_wait().expect("wait").is_some() {
            finished = true;
            break;
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        kills += 1;
    }
    println!("kill -9 {kills} times during the migration; a run finished by itself: {finished}");
    assert!(kills >= 2, "the migration was killed {kills} times only");
    if !finished {
        // Resumable: the killed runs moved part of it for good.
        let left = sled::open(&db)
            .expect("sled")
            .open_tree("raw")
            .expect("raw")
            .len();
        println!("{left} of {} bodies still in sled", sent.len());
        assert!(left < sent.len(), "no batch survived {kills} kills");
    }
    let out = common::caliopen_ok(&["store", "check", "--config", inst.c()], None);
    assert!(
        out.contains(" 0 still in sled") && out.contains(": 0 problems"),
        "after {kills} kills (finished: {finished}): {out}"
    );
    assert!(out.contains(&format!("{} bodies", sent.len())), "{out}");
    rt.block_on(async {
        let store = Store::open(&db).expect("open");
        for (id, _, raw) in &sent {
            assert_eq!(
                store.raw(*id).expect("raw").as_deref(),
                Some(&raw[..]),
                "message {id:x} after {kills} kills"
            );
        }
    });
}

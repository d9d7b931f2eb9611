//! A data directory written by the release before the mail core (flat
//! per-user mailboxes; `fixtures/v1-datadir.tar.gz`, made by
//! `fixtures/make-v1-datadir.sh`) opens with every message in its owner's
//! inbox, unread, with UIDs in arrival order, threads and exact quota use;
//! the daemon then serves it, and the new commands work on it.

mod common;

use common::{caliopen_ok, run_caliopen, spawn_daemon, Daemon};
use std::path::Path;
use std::process::{Command, Stdio};

fn unpack(dir: &Path) -> std::path::PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-datadir.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-xzf")
        .arg(&fixture)
        .status()
        .expect("tar")
        .success();
    assert!(ok, "unpack {}", fixture.display());
    dir.join("data/caliopen.toml")
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&caliopen_ok(args, None)).expect("json")
}

#[test]
fn a_flat_mailbox_upgrades_to_the_mail_core_losing_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = unpack(dir.path());
    let cfg = config.to_str().expect("utf-8");
    // Offline: the tool opens the database, which upgrades it.
    let alice = json(&["mail", "list", "--config", cfg, "--user", "alice", "--json"]);
    let list = alice.as_array().expect("array");
    assert_eq!(list.len(), 12);
    let subjects: Vec<&str> = list
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(subjects[0], "v1 message 0");
    assert_eq!(subjects[1], "Re: v1 message 0");
    assert_eq!(subjects[11], "v1 message 11");
    for (i, m) in list.iter().enumerate() {
        assert_eq!(m["uid"], i as u64 + 1, "UIDs in arrival order");
        assert_eq!(m["mailbox"], "INBOX");
        assert_eq!(m["keywords"], serde_json::json!([]), "unread");
    }
    assert_eq!(
        list[1]["thread"], list[0]["thread"],
        "the reply joins its thread"
    );
    assert_ne!(list[2]["thread"], list[0]["thread"]);
    // The bytes are the same as written by the old release.
    let id = list[1]["id"].as_str().expect("id");
    let raw = caliopen_ok(
        &["mail", "show", "--config", cfg, "--user", "alice", id],
        None,
    );
    assert!(
        raw.starts_with("From: Carol <carol@ext.test>\r\n"),
        "{raw:?}"
    );
    assert!(raw.contains("In-Reply-To: <m0@ext.test>\r\n"));
    // The bodies the old release kept in sled moved out, and check.
    let check = caliopen_ok(&["store", "check", "--config", cfg], None);
    assert!(
        check.contains("15 bodies") && check.contains("15 messages"),
        "{check}"
    );
    assert!(
        check.contains(" 0 still in sled") && check.contains(": 0 problems"),
        "{check}"
    );
    let users = json(&["user", "list", "--config", cfg, "--json"]);
    let users = users.as_array().expect("array");
    assert_eq!(users.len(), 2);
    let count = |u: &serde_json::Value| u["messages"].as_u64();
    assert_eq!(count(&users[0]), Some(12));
    assert_eq!(count(&users[1]), Some(3));
    let bytes: u64 = list.iter().map(|m| m["size"].as_u64().unwrap_or(0)).sum();
    assert_eq!(
        users[0]["quota"]["used_bytes"], bytes,
        "quota use is the sum of sizes"
    );
    // A second open changes nothing.
    let again = json(&["mail", "list", "--config", cfg, "--user", "alice", "--json"]);
    assert_eq!(again, alice);

    // The daemon serves the upgraded directory; the tool goes through it.
    let (child, _bound) = spawn_daemon(&config, Stdio::null(), &[]);
    let _daemon = Daemon(child);
    let bob = json(&["mail", "list", "--config", cfg, "--user", "bob", "--json"]);
    assert_eq!(bob.as_array().map(Vec::len), Some(3));
    let (ok, _, err) = run_caliopen(
        &[
            "mail",
            "list",
            "--config",
            cfg,
            "--user",
            "bob",
            "--mailbox",
            "Nope",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("no mailbox \"Nope\""), "{err}");
    let sent = json(&[
        "mail",
        "list",
        "--config",
        cfg,
        "--user",
        "bob",
        "--mailbox",
        "sent",
        "--json",
    ]);
    assert_eq!(sent, serde_json::json!([]));
}

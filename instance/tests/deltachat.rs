//! Delta Chat (its core, PyPI `deltachat-rpc-server` + `deltachat-rpc-client`,
//! installed by `.ci/run`) on two labelled instances: each account is
//! configured with its instance's IMAP and submission ports, and a chat
//! message goes each way over the mesh, Autocrypt-encrypted, which the
//! privacy index shows.

mod common;
mod reliab;

use reliab::{free_udp_port, metrics_text, python, Assoc, Instance};

#[test]
fn delta_chat_talks_across_two_labelled_instances() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let assoc = Assoc::start(root, "127.0.0.1:0".parse().expect("addr"));
    let mut insts = Vec::new();
    for (id, domain, user) in [
        ("alpha", "alpha.test", "alice"),
        ("beta", "beta.test", "bob"),
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
        i.set("imap", "listen = \"127.0.0.1:0\"");
        i.add_user(user, &format!("{user}-Correct-horse-7"));
        insts.push(i);
    }
    for i in &mut insts {
        i.start();
    }
    let port = |i: &Instance| i.bound.and_then(|b| b.imap).expect("imap").port();
    let script = format!(
        r#"
import time
from deltachat_rpc_client import DeltaChat, Rpc
with Rpc(accounts_dir={accounts:?}) as rpc:
    dc = DeltaChat(rpc)
    accs = []
    for user, domain, imap, sub in [("alice", "alpha.test", {ia}, {sa}), ("bob", "beta.test", {ib}, {sb})]:
        a = dc.add_account()
        a.add_or_update_transport({{
            "addr": "%s@%s" % (user, domain), "password": "%s-Correct-horse-7" % user,
            "imapServer": "127.0.0.1", "imapPort": imap, "imapSecurity": "starttls",
            "smtpServer": "127.0.0.1", "smtpPort": sub, "smtpSecurity": "starttls",
            "certificateChecks": "acceptInvalidCertificates",
        }})
        a.bring_online()
        accs.append(a)
    alice, bob = accs
    t0 = time.time()
    alice.create_chat(bob).send_text("hello bob, from alpha")
    got = bob.wait_for_incoming_msg().get_snapshot()
    assert got.text == "hello bob, from alpha", got.text
    print("alice -> bob in %.2f s, padlock %s" % (time.time() - t0, got.show_padlock))
    got.chat.accept()
    t0 = time.time()
    got.chat.send_text("hi alice, from beta")
    back = alice.wait_for_incoming_msg().get_snapshot()
    assert back.text == "hi alice, from beta", back.text
    assert back.show_padlock, "the reply is not end-to-end encrypted"
    print("bob -> alice in %.2f s, padlock %s" % (time.time() - t0, back.show_padlock))
    print("delta chat ok")
"#,
        accounts = root.join("dc-accounts"),
        ia = port(&insts[0]),
        sa = insts[0].submission().port(),
        ib = port(&insts[1]),
        sb = insts[1].submission().port(),
    );
    let (ok, out) = python(&script);
    assert!(
        ok && out.contains("delta chat ok"),
        "{out}\nalpha log:\n{}\nbeta log:\n{}",
        insts[0].last_log(),
        insts[1].last_log()
    );
    // Both went over the mesh (Delta Chat deletes what it has read from
    // the server, so the counters and the contact books tell), and each
    // side's index of the other counts the encryption.
    for (i, user, other) in [
        (&insts[1], "bob", "alice@alpha.test"),
        (&insts[0], "alice", "bob@beta.test"),
    ] {
        let m = metrics_text(i);
        let mesh: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("caliopen_messages_stored_total{via=\"mesh\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(mesh >= 1, "{user}: nothing stored from the mesh:\n{m}");
        let out = common::caliopen_ok(
            &[
                "privacy",
                "--config",
                i.c(),
                "--user",
                user,
                "--contact",
                other,
                "--json",
            ],
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let features: Vec<&str> = v["contact"]["privacy"]["explanation"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["feature"].as_str())
            .collect();
        assert!(
            features.contains(&"contact.encrypted_share"),
            "{user} about {other}: {features:?}"
        );
    }
}

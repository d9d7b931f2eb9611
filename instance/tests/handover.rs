//! Successor handover (issue 19) between labelled instances on loopback:
//! the association records it (`Authority::handover`), the closing member
//! runs `caliopen handover`, every account arrives at the successor over
//! the mesh and is verified there, users log in at the successor with
//! their old passwords (IMAP, submission), the successor's certificate is
//! renewed with the old domain, a third member's mail for the old domain
//! goes to the successor, and the old instance forwards what still reaches it.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::caliopen_ok as caliopen;
use common::federation::{make_member, Association, Member};
use common::{python, run_caliopen};

/// An mbox of `n` messages to `to`, numbered from `first`.
fn mbox(path: &Path, to: &str, first: usize, n: usize) {
    let mut m = Vec::new();
    for i in first..first + n {
        m.extend_from_slice(
            format!(
                "From someone@example.org Mon Dec  1 10:{:02}:{:02} 2026\n\
                 From: someone@example.org\nTo: {to}\nSubject: message {i}\n\
                 Message-ID: <{i}.{to}>\n\n{}\n\n",
                (i / 60) % 60,
                i % 60,
                format!("line {i} of the body\n").repeat(1 + i % 20)
            )
            .as_bytes(),
        );
    }
    std::fs::write(path, m).expect("write mbox");
}

fn import(m: &Member, user: &str, file: &Path, mailbox: &str) {
    caliopen(
        &[
            "mail",
            "import",
            "--config",
            m.c(),
            "--user",
            user,
            "--mbox",
            file.to_str().expect("utf-8"),
            "--mailbox",
            mailbox,
            "--quiet",
        ],
        None,
    );
}

/// Every message of an account: mailbox, keywords, date, subject, how it
/// came and its privacy index (sorted).
fn inventory(config: &str, user: &str) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["inbox", "sent", "Projets/Été"] {
        let (ok, text, _) = run_caliopen(
            &[
                "mail",
                "list",
                "--config",
                config,
                "--user",
                user,
                "--mailbox",
                name,
                "--json",
            ],
            None,
        );
        if !ok {
            continue;
        }
        let list: serde_json::Value = serde_json::from_str(&text).expect("json");
        for m in list.as_array().expect("array") {
            out.push(format!(
                "{name}|{}|{}|{}|{}|{}",
                m["keywords"], m["received_at"], m["subject"], m["via"], m["privacy"]["total"]
            ));
        }
    }
    out.sort();
    out
}

fn inbox_count(config: &str, user: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(&caliopen(
        &["mail", "list", "--config", config, "--user", user, "--json"],
        None,
    ))
    .expect("json");
    v.as_array().map_or(0, Vec::len)
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool, log: impl Fn() -> String) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not after {secs} s\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends one message with smtplib: over submission with a login, or to an MX.
fn smtp_send(port: u16, login: Option<(&str, &str)>, from: &str, to: &str, subject: &str) {
    let auth = match login {
        Some((u, p)) => format!("s.starttls(context=ctx)\ns.login({u:?}, {p:?})\n"),
        None => String::new(),
    };
    python(&format!(
        "import smtplib, ssl\nctx = ssl._create_unverified_context()\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=20)\n{auth}\
         s.sendmail({from:?}, [{to:?}], b'From: {from}\\r\\nTo: {to}\\r\\nSubject: {subject}\\r\\n\\r\\nHello.\\r\\n')\n\
         s.quit()\nprint('ok')"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_closes_and_its_successor_serves_its_users_and_domain() {
    let tmp = tempfile::tempdir().expect("tmp");
    let assoc = Association::start(&tmp.path().join("assoc"), "Handover Test").await;
    let (ca, url) = (assoc.ca.clone(), assoc.url.clone());
    let root = tmp.path().to_owned();

    let (mut old, mut succ, mut third) = {
        let (ca, url, root) = (ca.clone(), url.clone(), root.clone());
        tokio::task::spawn_blocking(move || {
            (
                make_member(&root, &ca, &url, "old", "old.test", Some("succ.test")),
                make_member(&root, &ca, &url, "succ", "succ.test", None),
                make_member(&root, &ca, &url, "third", "third.test", None),
            )
        })
        .await
        .expect("join")
    };

    // old: alice (1,500 messages in three mailboxes, with keywords),
    // bob (500), and dave; succ has a dave of its own.
    let (oc, sc) = (old.c().to_owned(), succ.c().to_owned());
    tokio::task::spawn_blocking({
        let (old_cfg, root) = (oc.clone(), root.clone());
        let succ_cfg = sc.clone();
        move || {
            let m = Member::config_only(&old_cfg);
            m.add_user("alice", "alice password");
            m.add_user("bob", "bob password");
            m.add_user("dave", "dave at old");
            Member::config_only(&succ_cfg).add_user("dave", "dave at succ");
            for (user, first, n, mailbox) in [
                ("alice", 0, 900, "inbox"),
                ("alice", 900, 400, "Projets/Été"),
                ("alice", 1300, 200, "sent"),
                ("bob", 0, 500, "inbox"),
            ] {
                let f = root.join(format!("{user}-{first}.mbox"));
                mbox(&f, &format!("{user}@old.test"), first, n);
                import(&m, user, &f, mailbox);
            }
            caliopen(
                &[
                    "alias",
                    "add",
                    "--config",
                    &old_cfg,
                    "help@old.test",
                    "alice",
                ],
                None,
            );
        }
    })
    .await
    .expect("setup");
    // The successor's operator serves the old domain too.
    let text = std::fs::read_to_string(&succ.config).expect("read");
    std::fs::write(
        &succ.config,
        text.replace(
            "domains = [\"succ.test\"]",
            "domains = [\"succ.test\", \"old.test\"]",
        ),
    )
    .expect("write");
    old.start();
    succ.start();
    third.start();
    third.add_user("tom", "tom password");
    let before = (inventory(&oc, "alice"), inventory(&oc, "bob"));
    assert_eq!(before.0.len(), 1500);

    tokio::task::spawn_blocking(move || {
        // No handover recorded yet: refused, with what to do.
        let (ok, _, err) = run_caliopen(&["handover", "--config", &oc], None);
        assert!(!ok && err.contains("caliopen-ca handover"), "{err}");
        (oc, sc)
    })
    .await
    .expect("refused");
    let err = ca.handover("old", "third").expect_err("not the successor");
    assert!(err.to_string().contains("succ.test"), "{err}");
    ca.handover("old", "succ.test").expect("handover");

    let (oc, sc) = (old.c().to_owned(), succ.c().to_owned());
    let (old, succ, third) = tokio::task::spawn_blocking(move || {
        // The directory reaches old (Watch stream): then the handover runs.
        let t0 = Instant::now();
        // dave exists at succ: refused there, nothing merged.
        let out = loop {
            let (ok, out, err) =
                run_caliopen(&["handover", "--config", &oc, "--user", "dave"], None);
            if !err.contains("records no handover") {
                assert!(!ok, "{out}{err}");
                break out;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{err}\n{}",
                old.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(out.contains("exists here already"), "{out}\n{}", succ.log());
        assert_eq!(inbox_count(&sc, "dave"), 0);
        caliopen(&["user", "remove", "--config", &oc, "dave"], None);

        let t0 = Instant::now();
        let out = caliopen(&["handover", "--config", &oc, "--json"], None);
        let took = t0.elapsed();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 4, "two accounts, two passes: {out}");
        for l in &lines {
            assert_eq!(
                (&l["same"], &l["complete"]),
                (&serde_json::json!(true), &serde_json::json!(true)),
                "{l}"
            );
        }
        let pass1: u64 = lines
            .iter()
            .filter(|l| l["pass"] == 1)
            .map(|l| l["stored"]["messages"].as_u64().expect("n"))
            .sum();
        assert_eq!(pass1, 2000);
        println!("handover of 2,000 messages in {took:?}");
        // Everything at succ as it was at old: mailboxes, keywords, dates.
        assert_eq!(inventory(&sc, "alice"), before.0);
        assert_eq!(inventory(&sc, "bob"), before.1);
        // A run again sends nothing new and verifies again.
        let again = caliopen(
            &["handover", "--config", &oc, "--json", "--user", "bob"],
            None,
        );
        assert!(again.contains("\"same\":true"), "{again}");
        (old, succ, third)
    })
    .await
    .expect("handover");

    // alice logs in at succ with her old password: IMAP and submission.
    let imap = succ.imap.expect("imap");
    let n = python(&format!(
        "import imaplib, ssl\nctx = ssl._create_unverified_context()\n\
         M = imaplib.IMAP4('127.0.0.1', {imap})\nM.starttls(ctx)\n\
         M.login('alice@old.test', 'alice password')\n\
         typ, data = M.select('INBOX', readonly=True)\nassert typ == 'OK', data\nprint(int(data[0]))"
    ));
    assert_eq!(n.trim(), "900");
    let sub = succ.submission.expect("submission").port();
    smtp_send(
        sub,
        Some(("alice@old.test", "alice password")),
        "alice@old.test",
        "bob@old.test",
        "from the successor",
    );

    // The successor's certificate is renewed with old.test (the
    // association grants it: handed over).
    let cert = succ.data.join("member.pem");
    wait_for(
        "certificate with old.test",
        30,
        || {
            let o = std::process::Command::new("openssl")
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(&cert)
                .output()
                .expect("openssl");
            String::from_utf8_lossy(&o.stdout).contains("old.test")
        },
        || succ.log(),
    );

    // A third member's mail for old.test goes to succ over the mesh;
    // mail reaching old's MX is forwarded to succ.
    let alice_before = inbox_count(succ.c(), "alice");
    smtp_send(
        third.submission.expect("submission").port(),
        Some(("tom@third.test", "tom password")),
        "tom@third.test",
        "alice@old.test",
        "from third",
    );
    smtp_send(
        old.smtp.expect("smtp").port(),
        None,
        "someone@example.org",
        "help@old.test",
        "to the old MX",
    );
    wait_for(
        "both messages at succ",
        30,
        || inbox_count(succ.c(), "alice") == alice_before + 2,
        || {
            format!(
                "old:\n{}\nthird:\n{}\nsucc:\n{}",
                old.log(),
                third.log(),
                succ.log()
            )
        },
    );
    wait_for(
        "bob's message from alice at succ",
        30,
        || inbox_count(succ.c(), "bob") == 501,
        || succ.log(),
    );
    let via: serde_json::Value = serde_json::from_str(&caliopen(
        &[
            "mail",
            "list",
            "--config",
            succ.c(),
            "--user",
            "alice",
            "--json",
        ],
        None,
    ))
    .expect("json");
    let from_third = via
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["subject"] == "from third")
        .expect("from third");
    assert_eq!(from_third["via"], "mesh", "{from_third}");
    drop((old, succ, third));
    assoc.stop().await;
}

/// One user leaves alpha for beta: beta's operator accepts the move (a
/// one-time code), alpha sends the account over the mesh, beta verifies
/// it; the user logs in at beta with their password, and alpha's MX
/// answers `551 5.1.6` with the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moves_to_another_member_with_a_one_time_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let assoc = Association::start(&tmp.path().join("assoc"), "Move Test").await;
    let (ca, url) = (assoc.ca.clone(), assoc.url.clone());
    let root = tmp.path().to_owned();
    let (alpha, beta) = tokio::task::spawn_blocking(move || {
        let mut alpha = make_member(&root, &ca, &url, "alpha", "alpha.test", None);
        let mut beta = make_member(&root, &ca, &url, "beta", "beta.test", None);
        alpha.add_user("bob", "bob password");
        let f = root.join("bob.mbox");
        mbox(&f, "bob@alpha.test", 0, 50);
        import(&alpha, "bob", &f, "inbox");
        beta.add_user("carol", "carol password");
        alpha.start();
        beta.start();
        let (a, b) = (alpha.c().to_owned(), beta.c().to_owned());
        // carol (at beta) writes to bob before he moves: he is in her book.
        smtp_send(
            beta.submission.expect("submission").port(),
            Some(("carol@beta.test", "carol password")),
            "carol@beta.test",
            "bob@alpha.test",
            "before the move",
        );
        wait_for(
            "carol's mail at bob's",
            20,
            || inbox_count(&a, "bob") == 51,
            || alpha.log(),
        );
        let mv = |code: &str| {
            run_caliopen(
                &[
                    "account",
                    "move",
                    "--config",
                    &a,
                    "--user",
                    "bob",
                    "--to",
                    "robert@beta.test",
                    "--code",
                    code,
                ],
                None,
            )
        };
        // Not accepted yet, then a wrong code: refused, nothing made.
        let (ok, _, err) = mv("00112233445566778899aabbccddeeff");
        assert!(
            !ok && err.contains("no move of bob from alpha"),
            "{err}\n{}",
            alpha.log()
        );
        let out = caliopen(
            &[
                "account",
                "accept",
                "--config",
                &b,
                "--from",
                "alpha",
                "--account",
                "bob",
                "--as",
                "robert",
            ],
            None,
        );
        let code = out
            .split("code ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("code")
            .to_owned();
        let (ok, _, err) = mv("00112233445566778899aabbccddeeff");
        assert!(!ok && err.contains("not the one given"), "{err}");
        // Nothing made at beta by the refused attempts.
        let (made, _, _) =
            run_caliopen(&["mail", "list", "--config", &b, "--user", "robert"], None);
        assert!(!made);
        let (ok, out, err) = mv(&code);
        assert!(ok, "{out}{err}\n{}\n{}", alpha.log(), beta.log());
        assert!(
            out.contains("51 messages") && out.contains("551 5.1.6"),
            "{out}"
        );
        assert_eq!(inbox_count(&b, "robert"), 51);
        // carol's contact book followed the move (notice from alpha, checked
        // against the directory at beta).
        let contact = |addr: &str| -> serde_json::Value {
            let out = caliopen(
                &[
                    "privacy",
                    "--config",
                    &b,
                    "--user",
                    "carol",
                    "--contact",
                    addr,
                    "--json",
                ],
                None,
            );
            serde_json::from_str::<serde_json::Value>(&out).expect("json")["contact"].clone()
        };
        let moved = contact("robert@beta.test");
        assert_eq!(
            (&moved["known"], &moved["sent"]),
            (&serde_json::json!(true), &serde_json::json!(1)),
            "{moved}"
        );
        // (A look-up makes a record of its own: nothing was sent to it.)
        assert_eq!(contact("bob@alpha.test")["sent"], 0);
        (alpha, beta)
    })
    .await
    .expect("move");
    // robert logs in at beta with bob's password.
    let n = python(&format!(
        "import imaplib, ssl\nctx = ssl._create_unverified_context()\n\
         M = imaplib.IMAP4('127.0.0.1', {})\nM.starttls(ctx)\n\
         M.login('robert@beta.test', 'bob password')\n\
         typ, data = M.select('INBOX', readonly=True)\nprint(int(data[0]))",
        beta.imap.expect("imap")
    ));
    assert_eq!(n.trim(), "51");
    // alpha's MX gives the new address.
    let reply = python(&format!(
        "import smtplib\ns = smtplib.SMTP('127.0.0.1', {}, timeout=10)\ns.ehlo('x.example')\n\
         s.mail('someone@example.org')\ncode, msg = s.rcpt('bob@alpha.test')\nprint(code, msg.decode())",
        alpha.smtp.expect("smtp").port()
    ));
    assert!(
        reply.starts_with("551") && reply.contains("5.1.6") && reply.contains("robert@beta.test"),
        "{reply}"
    );
    drop((alpha, beta));
    assoc.stop().await;
}

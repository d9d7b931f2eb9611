//! Witnesses of the membership log (issue 18, C2SP tlog-witness): two
//! members run a witness (`[witness] enabled`) on their web listener; the
//! association registers both with quorum 2, asks them at each checkpoint
//! and publishes the checkpoint with both cosignatures; the members, whose
//! directory now requires the quorum, take the grown tree only so. With a
//! witness down, membership operations go on and the published checkpoint
//! waits for the quorum.

mod common;
mod reliab;

use caliopen_tlog::{CosignatureVerifier, Note};
use reliab::{free_udp_port, metrics_text, Assoc, Instance};
use std::time::{Duration, Instant};

fn held_size(inst: &Instance) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&common::caliopen_ok(
        &["log", "--config", inst.c(), "--json"],
        None,
    ))
    .expect("json");
    v["checkpoint"]["size"].as_u64().unwrap_or(0)
}

/// The tree size of the published checkpoint and which of `keys` have a
/// valid cosignature on it.
fn published(assoc: &Assoc, keys: &[CosignatureVerifier]) -> (u64, Vec<bool>) {
    let note = assoc.ca.published_checkpoint().expect("checkpoint");
    let n = Note::parse(note.as_bytes()).expect("note");
    let size = n
        .text()
        .lines()
        .nth(1)
        .expect("size")
        .parse()
        .expect("size");
    let valid = keys
        .iter()
        .map(|k| matches!(k.timestamp(&n), Ok(Some(_))))
        .collect();
    (size, valid)
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool, log: impl Fn() -> String) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}; log:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `POST url` with `body` by curl (an independent client), trusting `ca`:
/// status, content type, body.
fn post(url: &str, ca: &std::path::Path, body: &[u8]) -> (u16, String, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let (req, resp) = (dir.path().join("req"), dir.path().join("resp"));
    std::fs::write(&req, body).expect("write");
    let o = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
        ])
        .arg(format!("@{}", req.display()))
        .arg("-o")
        .arg(&resp)
        .args(["-w", "%{http_code} %{content_type}", url])
        .output()
        .expect("curl must be installed");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (code, ctype) = out.split_once(' ').unwrap_or((&out, ""));
    (
        code.parse().unwrap_or(0),
        ctype.to_owned(),
        std::fs::read_to_string(&resp).unwrap_or_default(),
    )
}

fn counter(m: &str, name: &str) -> u64 {
    m.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_member_witnesses_cosign_and_members_require_the_quorum() {
    let tmp = tempfile::tempdir().expect("tmp");
    let assoc = Assoc::start(tmp.path(), "127.0.0.1:0".parse().expect("addr"));
    let log_pub = assoc.dir.join("log.pub");
    let log_pub = log_pub.to_str().expect("utf-8");

    // A witness needs the log key pinned: refused at start, in one line.
    let mut lone = Instance::init(tmp.path(), "lone", "lone.test", None, None, None);
    lone.set("web", "listen = \"127.0.0.1:0\"");
    lone.set("witness", "enabled = true");
    let (ok, _, err) = common::run_caliopen(&["run", "--config", lone.c()], None);
    assert!(!ok && err.contains("log key"), "{err}");
    lone.child = None;

    let mut members = Vec::new();
    let mut keys = Vec::new();
    for (id, domain) in [("alpha", "alpha.test"), ("beta", "beta.test")] {
        let m = Instance::init(
            tmp.path(),
            id,
            domain,
            Some(format!("127.0.0.1:{}", free_udp_port())),
            None,
            None,
        );
        m.join_with(&assoc, id, &["--log-key", log_pub]);
        m.set("web", "listen = \"127.0.0.1:0\"");
        m.set("witness", "enabled = true");
        let vkey = common::caliopen_ok(&["witness", "key", "--config", m.c()], None);
        let vkey = vkey.trim().to_owned();
        let k = CosignatureVerifier::parse(&vkey).expect("a cosignature/v1 key");
        assert_eq!(k.name(), format!("{domain}/witness"));
        // Printed again: the same key (kept in DATA/witness.key).
        assert_eq!(
            common::caliopen_ok(&["witness", "key", "--config", m.c()], None).trim(),
            vkey
        );
        keys.push(k);
        members.push(m);
    }
    for m in &mut members {
        m.start();
    }
    for m in &members {
        wait(
            "a member took no checkpoint",
            Duration::from_secs(30),
            || held_size(m) > 0,
            || m.last_log(),
        );
    }

    // The association registers both witnesses (their HTTPS certificate is
    // the instance's self-signed one, for `localhost`) and a quorum of 2.
    for (m, k) in members.iter().zip(&keys) {
        let web = m.bound.and_then(|b| b.web).expect("web listener");
        let url = format!("https://localhost:{}/witness", web.port());
        let ca = std::fs::read_to_string(m.data.join("tls.pem")).expect("tls.pem");
        let name = m.data.file_name().and_then(|n| n.to_str()).expect("name");
        assoc
            .ca
            .add_witness(name, &k.to_string(), &url, Some(&ca))
            .expect("add witness");
    }
    assoc.ca.set_witness_quorum(2).expect("quorum");
    wait(
        "the published checkpoint did not get both cosignatures",
        Duration::from_secs(30),
        || published(&assoc, &keys).1 == [true, true],
        || members.iter().map(Instance::last_log).collect(),
    );

    // The witness's refusals over HTTP, as C2SP tlog-witness words them.
    let alpha_url = format!(
        "https://localhost:{}/witness/add-checkpoint",
        members[0].bound.and_then(|b| b.web).expect("web").port()
    );
    let alpha_ca = members[0].data.join("tls.pem");
    let plain = assoc.ca.log_checkpoint().expect("stored");
    let held = published(&assoc, &keys).0;
    let (code, ctype, body) = post(
        &alpha_url,
        &alpha_ca,
        format!("old 0\n\n{plain}").as_bytes(),
    );
    assert_eq!((code, ctype.as_str()), (409, "text/x.tlog.size"), "{body}");
    assert_eq!(body, format!("{held}\n"));
    assert_eq!(post(&alpha_url, &alpha_ca, b"old 0\n").0, 400);
    let other = caliopen_tlog::Signer::from_seed("other.test/log", &[9; 32]).expect("key");
    let cp = caliopen_tlog::Checkpoint {
        origin: "other.test/log".into(),
        size: 1,
        root: [1; 32],
        extensions: vec![],
    };
    let note = cp.sign(&other).expect("sign");
    assert_eq!(
        post(&alpha_url, &alpha_ca, format!("old 0\n\n{note}").as_bytes()).0,
        404
    );
    let origin = assoc.ca.log_verifier().name().to_owned();
    let forger = caliopen_tlog::Signer::from_seed(&origin, &[9; 32]).expect("key");
    let forged = caliopen_tlog::Checkpoint { origin, ..cp }
        .sign(&forger)
        .expect("sign");
    let forged_body = format!("old {held}\n\n{forged}");
    assert_eq!(post(&alpha_url, &alpha_ca, forged_body.as_bytes()).0, 403);

    // A membership change: the new checkpoint is cosigned by both and the
    // members, whose directory requires 2 cosignatures, take it.
    let (size0, _) = published(&assoc, &keys);
    let gamma = Instance::init(tmp.path(), "gamma", "gamma.test", None, None, None);
    gamma.join(&assoc, "gamma");
    wait(
        "the grown checkpoint was not published with both cosignatures",
        Duration::from_secs(30),
        || {
            let (s, v) = published(&assoc, &keys);
            s > size0 && v == [true, true]
        },
        || members.iter().map(Instance::last_log).collect(),
    );
    let (size1, _) = published(&assoc, &keys);
    for m in &members {
        wait(
            "a member did not take the cosigned checkpoint",
            Duration::from_secs(30),
            || held_size(m) >= size1,
            || m.last_log(),
        );
        // `caliopen log` names the witnesses that cosigned the checkpoint held.
        let v: serde_json::Value = serde_json::from_str(&common::caliopen_ok(
            &["log", "--config", m.c(), "--json"],
            None,
        ))
        .expect("json");
        assert_eq!(v["witnesses"]["quorum"], 2, "{v}");
        let names: Vec<&str> = v["witnesses"]["cosigned_held"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["alpha", "beta"], "{v}");
        let text = common::caliopen_ok(&["log", "--config", m.c()], None);
        assert!(
            text.contains(
                "witnesses: 2 of 2 listed cosigned the checkpoint held (quorum 2): alpha, beta"
            ),
            "{text}"
        );
        let metrics = metrics_text(m);
        assert!(
            counter(
                &metrics,
                "caliopen_witness_checkpoints_total{outcome=\"cosigned\"}"
            ) >= 2,
            "{metrics}"
        );
        assert_eq!(
            counter(
                &metrics,
                "caliopen_membership_log_checkpoints_total{outcome=\"refused_quorum\"}"
            ),
            0,
            "{metrics}"
        );
    }

    // One witness down: a revocation is not held up, and the published
    // checkpoint stays the last one with the quorum.
    members[1].stop();
    let t0 = Instant::now();
    assoc
        .ca
        .revoke(
            &caliopen_ca::RevokeTarget::Domain("gamma.test".into()),
            "cessationOfOperation",
        )
        .expect("revoke");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Give the association time to ask both (the 5 s deadline, and more).
    std::thread::sleep(Duration::from_secs(3));
    let stored = assoc.ca.log_checkpoint().expect("stored");
    assert!(stored.contains(&format!("\n{}\n", size1 + 1)), "{stored}");
    assert_eq!(published(&assoc, &keys).0, size1);
    assert_eq!(held_size(&members[0]), size1);
    // With a quorum of 1, alpha's cosignature is enough.
    assoc.ca.set_witness_quorum(1).expect("quorum");
    wait(
        "the checkpoint cosigned by alpha alone was not published",
        Duration::from_secs(30),
        || published(&assoc, &keys) == (size1 + 1, vec![true, false]),
        || members[0].last_log(),
    );
    wait(
        "alpha did not take it",
        Duration::from_secs(30),
        || held_size(&members[0]) == size1 + 1,
        || members[0].last_log(),
    );
    // Each source address has a bounded rate: a burst from here is cut off.
    let codes: Vec<u16> = (0..25)
        .map(|_| post(&alpha_url, &alpha_ca, b"old 0\n").0)
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 400 || *c == 429), "{codes:?}");
    let m = metrics_text(&members[0]);
    assert!(
        counter(
            &m,
            "caliopen_witness_checkpoints_total{outcome=\"rate_limited\"}"
        ) >= 1,
        "{m}"
    );
    assert!(
        counter(
            &m,
            "caliopen_witness_checkpoints_total{outcome=\"refused\"}"
        ) >= 4,
        "{m}"
    );
    members[0].stop();
}

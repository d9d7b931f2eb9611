//! The membership log checked by a running instance (issue 18, member
//! side wired into the daemon): `caliopen join --log-key` pins the
//! association's log key; the daemon verifies the association's
//! checkpoints (signature, consistency proofs from its tiles over HTTPS),
//! holds the newest on disk, shows it in `caliopen log` and the metrics,
//! follows a revocation into a larger verified tree, and lets a peer in
//! over the mesh once its certificate is shown in the log.

mod common;
mod reliab;

use reliab::{free_udp_port, metrics_text, Assoc, Instance};
use std::time::{Duration, Instant};

fn log_json(inst: &Instance) -> serde_json::Value {
    serde_json::from_str(&common::caliopen_ok(
        &["log", "--config", inst.c(), "--json"],
        None,
    ))
    .expect("json")
}

fn held_size(inst: &Instance) -> u64 {
    log_json(inst)["checkpoint"]["size"].as_u64().unwrap_or(0)
}

#[test]
fn a_member_verifies_the_log_and_follows_it_through_a_revocation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let assoc = Assoc::start(tmp.path(), "127.0.0.1:0".parse().expect("addr"));
    let log_pub = assoc.dir.join("log.pub");
    let log_pub = log_pub.to_str().expect("utf-8");

    // A key that is not a log key is refused at join, in one line.
    let mut alpha = Instance::init(
        tmp.path(),
        "alpha",
        "alpha.test",
        Some(format!("127.0.0.1:{}", free_udp_port())),
        None,
        None,
    );
    let bad = tmp.path().join("bad.pub");
    std::fs::write(&bad, "not a key\n").expect("write");
    let (ok, _, err) = common::run_caliopen(
        &[
            "join",
            "--config",
            alpha.c(),
            "--ca",
            assoc.ca_file.to_str().expect("utf-8"),
            "--cert",
            assoc.ca_file.to_str().expect("utf-8"),
            "--association",
            &assoc.url,
            "--log-key",
            bad.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(!ok);
    assert!(
        err.starts_with("caliopen: error: ") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains("bad.pub"), "{err}");
    let (ok, _, err) = common::run_caliopen(&["log", "--config", alpha.c()], None);
    assert!(!ok && err.contains("not labelled"), "{err}");

    alpha.join_with(&assoc, "alpha", &["--log-key", log_pub]);
    alpha.add_user("alice", "alice password");
    alpha.start();
    let t0 = Instant::now();
    while held_size(&alpha) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no verified checkpoint; log:\n{}",
            alpha.last_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = log_json(&alpha);
    assert_eq!(first["split_view"], serde_json::Value::Null);
    assert_eq!(first["checkpoint"]["source"], "association");
    let size0 = first["checkpoint"]["size"].as_u64().expect("size");
    let text = common::caliopen_ok(&["log", "--config", alpha.c()], None);
    assert!(
        text.contains(&format!("checkpoint: {size0} entries")),
        "{text}"
    );
    assert!(text.contains("split view: none"), "{text}");

    // Another member joins and is revoked: two entries more, verified by
    // consistency with the checkpoint held.
    let beta = Instance::init(tmp.path(), "beta", "beta.test", None, None, None);
    beta.join(&assoc, "beta");
    assoc
        .ca
        .revoke(
            &caliopen_ca::RevokeTarget::Domain("beta.test".into()),
            "cessationOfOperation",
        )
        .expect("revoke");
    let t0 = Instant::now();
    while held_size(&alpha) < size0 + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the held checkpoint did not grow past {size0} + 2: {}; log:\n{}",
            log_json(&alpha),
            alpha.last_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = metrics_text(&alpha);
    let grew = m
        .lines()
        .find(|l| l.starts_with("caliopen_membership_log_checkpoints_total{outcome=\"grew\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(grew >= 1, "{m}");
    assert!(m.contains("caliopen_membership_log_split_view 0"), "{m}");
    assert!(
        m.contains("caliopen_membership_log_checkpoints_total{outcome=\"refused_signature\"} 0"),
        "{m}"
    );

    // A member that also checks the log: mail between the two goes over
    // the mesh once each has found the other's certificate in the log.
    let mut gamma = Instance::init(
        tmp.path(),
        "gamma",
        "gamma.test",
        Some(format!("127.0.0.1:{}", free_udp_port())),
        None,
        None,
    );
    gamma.join_with(&assoc, "gamma", &["--log-key", log_pub]);
    gamma.add_user("carol", "carol password");
    gamma.start();
    let (ok, out) = reliab::submit(
        &alpha,
        "alice@alpha.test",
        "alice password",
        "PLAIN",
        &[(vec!["carol@gamma.test".into()], "over the mesh".into())],
    );
    assert!(ok, "{out}");
    let got = gamma.wait_for("carol", 1, Duration::from_secs(60));
    assert_eq!(got[0]["via"], "mesh", "{}", got[0]);
    for (inst, peer) in [(&alpha, "gamma"), (&gamma, "alpha")] {
        let t0 = Instant::now();
        loop {
            let v = log_json(inst);
            let found = v["certificates"].as_array().into_iter().flatten().any(|c| {
                c["member_id"] == peer && c["included"] == true && c["index"].as_u64().is_some()
            });
            if found {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(45),
                "{peer}'s certificate not shown in the log: {v}; log:\n{}",
                inst.last_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let text = common::caliopen_ok(&["log", "--config", inst.c()], None);
        assert!(
            text.contains("peers' certificates shown in the log: ") && text.contains(peer),
            "{text}"
        );
        assert!(!text.contains("ALARM"), "{text}");
        let m = metrics_text(inst);
        assert!(
            m.contains(
                "caliopen_membership_log_peer_certificates_total{outcome=\"not_included\"} 0"
            ),
            "{m}"
        );
        assert!(
            !m.contains("caliopen_membership_log_peer_certificates_total{outcome=\"included\"} 0"),
            "{m}"
        );
        assert!(
            m.contains("caliopen_membership_log_checkpoint_age_seconds "),
            "{m}"
        );
    }
}

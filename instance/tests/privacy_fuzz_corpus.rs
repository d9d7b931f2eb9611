//! Replays the privacy index fuzz corpus on stable: the committed inputs of
//! `fuzz/corpus/privacy_mail` and every message of `tests/corpus/eml` (its
//! seed), through the same checks as `fuzz/fuzz_targets/privacy_mail.rs`.
//! `crash-mail-parser-nested-multipart` in that corpus is the 133-byte input
//! that made mail-parser 0.11.9 panic inside `facts_of` (found by the target,
//! fixed on main by guarding the parse).

use caliopen_instance::mail::{MessageMeta, Transport, Via};
use caliopen_instance::privacy::{facts_of, score_message};
use std::path::Path;

fn meta(via: Via, tls: Option<&str>) -> MessageMeta {
    MessageMeta {
        id: 1,
        owner: "alice".into(),
        from: "x@ext.test".into(),
        to: vec!["alice@alpha.test".into()],
        subject: String::new(),
        received_at: 0,
        via,
        transport: Transport {
            tls_version: tls.map(str::to_owned),
            ..Default::default()
        },
        size: 0,
        ..Default::default()
    }
}

/// The fuzz target's checks on one input.
fn check(raw: &[u8], what: &str) {
    let mut totals = Vec::new();
    for (via, tls) in [
        (Via::Mesh, None),
        (Via::Smtp, Some("TLSv1_3")),
        (Via::Smtp, Some("TLSv1_2")),
        (Via::Smtp, None),
        (Via::Local, None),
    ] {
        let m = meta(via, tls);
        let f = facts_of(&m, raw);
        assert_eq!(f, facts_of(&m, raw), "{what}: facts not deterministic");
        let s = score_message(&f);
        for v in [s.total, s.technic, s.context, s.comportment] {
            assert!(v <= 100, "{what}: {s:?}");
        }
        assert!(!s.explanation.is_empty(), "{what}");
        assert_eq!(s, score_message(&f), "{what}: scores not deterministic");
        totals.push(s.total);
    }
    assert!(
        totals[0] > totals[1] && totals[1] > totals[3] && totals[2] > totals[3],
        "{what}: mesh > SMTP with TLS > plain SMTP broken: {totals:?}"
    );
}

#[test]
fn privacy_corpus_and_eml_corpus_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("../fuzz/corpus/privacy_mail"),
        root.join("tests/corpus/eml"),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let raw = std::fs::read(&f).expect("read");
            let what = f.display().to_string();
            check(&raw, &what);
            // Truncations exercise half-parsed headers and MIME parts.
            for cut in [1, raw.len() / 3, raw.len() / 2, raw.len().saturating_sub(1)] {
                check(&raw[..cut.min(raw.len())], &format!("{what} cut at {cut}"));
            }
            n += 1;
        }
    }
    assert!(n >= 70, "corpus too small: {n}");
}

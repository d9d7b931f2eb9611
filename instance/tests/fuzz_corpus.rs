//! Replays the committed SMTP fuzz corpus (`fuzz/corpus/smtp_session`) on
//! stable: every input split at every point gives the same replies.

use caliopen_instance::smtp::session::{drive_for_fuzzing, Kind};

#[test]
fn smtp_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/smtp_session");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus") {
        let data = std::fs::read(e.expect("entry").path()).expect("read");
        for kind in [Kind::Mx, Kind::Submission] {
            let whole = drive_for_fuzzing(kind, &[&data]);
            assert!(whole.starts_with(b"220 "));
            for cut in 0..=data.len() {
                assert_eq!(
                    drive_for_fuzzing(kind, &[&data[..cut], &data[cut..]]),
                    whole,
                    "cut {cut}"
                );
            }
        }
        n += 1;
    }
    assert!(n >= 3, "corpus too small");
}

/// Replays the committed IMAP fuzz corpus (`fuzz/corpus/imap_session`) on
/// stable, read as the fuzz target reads it (byte 0 odd: log in and select
/// first; byte 1: chunk size and FETCH spill size): no input panics or
/// hangs, and every answer ends with a whole line.
#[test]
fn imap_corpus_replays() {
    use caliopen_instance::delivery::MailService;
    use caliopen_instance::imap::session::{Action, Session, SessionConfig};
    use caliopen_instance::mail::{Transport, Via};
    use caliopen_instance::store::Store;
    use std::sync::Arc;
    use std::time::Instant;

    let tmp = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open(&tmp.path().join("db")).expect("store");
        let creds = caliopen_instance::login::Credentials::with_verifier(
            caliopen_instance::login::CredentialsConfig::default(),
            Arc::new(|hash: &str, pw: &[u8]| hash.as_bytes() == pw),
        );
        let svc = MailService::new(store.clone(), vec!["fuzz.test".into()]).with_credentials(creds);
        store.put_user("alice", "fuzz-secret").await.expect("user");
        for s in ["one", "two", "three"] {
            let raw = format!("From: x@ext.test\r\nSubject: {s}\r\n\r\nbody {s}\r\n");
            svc.accept(
                "x@ext.test",
                &["alice@fuzz.test".to_owned()],
                raw.as_bytes(),
                Transport::default(),
                Via::Smtp,
            )
            .await
            .expect("deliver");
        }
        let run = |data: Vec<u8>, chunk: usize, spill: Option<usize>| {
            let svc = svc.clone();
            async move {
                let cfg = SessionConfig {
                    hostname: "mx.fuzz.test".into(),
                    starttls: true,
                    append_limit: 1 << 20,
                };
                let mut s = Session::new(svc, cfg, None, true, Instant::now());
                s.set_spill(spill);
                let (mut out, mut sent) = (Vec::new(), Vec::new());
                let mut input = Vec::new();
                if data.first().is_some_and(|b| b % 2 == 1) {
                    input.extend_from_slice(b"a LOGIN alice fuzz-secret\r\nb SELECT INBOX\r\n");
                }
                input.extend_from_slice(data.get(2..).unwrap_or_default());
                'feed: for c in input.chunks(chunk.max(1)) {
                    s.reader.feed(c);
                    while let Some(i) = s.reader.next() {
                        let a = s.input(i, Instant::now(), &mut out).await;
                        while s.busy() {
                            sent.append(&mut out);
                            s.resume(&mut out).await;
                        }
                        sent.append(&mut out);
                        if matches!(a, Action::Close | Action::StartTls) {
                            break 'feed;
                        }
                    }
                }
                sent
            }
        };
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/imap_session");
        let mut n = 0;
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("corpus")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for path in files {
            let data = std::fs::read(&path).expect("read");
            let b1 = data.get(1).copied().unwrap_or(0);
            let spill = match (b1 >> 4) & 3 {
                0 => None,
                1 => Some(256 * 1024),
                2 => Some(1),
                _ => Some(4096),
            };
            let own = run(data.clone(), 1 << (b1 & 15), spill).await;
            assert!(
                own.is_empty() || own.ends_with(b"\r\n"),
                "{path:?}: answer cut short"
            );
            n += 1;
        }
        assert!(n >= 5, "corpus too small");
        // The store the replays changed still answers.
        assert!(store.list("alice").is_ok());
    });
}

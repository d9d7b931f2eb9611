//! The body store under the mail model: content addressing, compaction,
//! the migration out of sled, `store check`, full disks.

use super::*;
use crate::test_util::runtime;
use bodies::Loc;

fn template() -> MessageMeta {
    MessageMeta {
        from: "x@ext.test".into(),
        subject: "bodies".into(),
        via: Via::Smtp,
        ..Default::default()
    }
}

async fn open(dir: &Path, users: &[&str]) -> Store {
    let store = Store::open(&dir.join("db")).expect("store");
    store.set_domains(&["alpha.test".to_owned()]);
    for u in users {
        store.put_user(u, "x").await.expect("user");
    }
    store
}

async fn deliver(store: &Store, owner: &str, raw: &[u8]) -> Result<u64, StoreError> {
    let d = Delivery::inbox(owner, vec![format!("{owner}@alpha.test")]);
    Ok(store.deliver_local(&template(), &[d], raw).await?[0])
}

/// A message of about `n` bytes of text, different for each `i`.
fn message(i: usize, n: usize) -> Vec<u8> {
    let mut m = format!("Message-ID: <{i}@alpha.test>\r\nSubject: number {i}\r\n\r\n").into_bytes();
    let mut x = i as u64 * 2654435761 + 1;
    let words = [
        "privacy ",
        "label ",
        "mesh ",
        "letter ",
        "envelope ",
        "postcard\r\n",
    ];
    while m.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        m.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    m
}

#[test]
fn the_same_bytes_delivered_twice_are_kept_once_and_freed_with_the_last_copy() {
    let dir = tempfile::tempdir().expect("tmp");
    runtime().block_on(async {
        let store = open(dir.path(), &["alice", "bob"]).await;
        let raw = message(1, 5000);
        let a = deliver(&store, "alice", &raw).await.expect("a");
        let b = deliver(&store, "bob", &raw).await.expect("b");
        let c = deliver(&store, "bob", &raw).await.expect("c");
        assert_eq!(store.body_count(), 1, "one body for three deliveries");
        for id in [a, b, c] {
            assert_eq!(store.raw(id).expect("raw").as_deref(), Some(&raw[..]));
        }
        store
            .remove_messages("alice", &[a], None)
            .await
            .expect("rm");
        assert_eq!(store.raw(b).expect("raw").as_deref(), Some(&raw[..]));
        store
            .remove_messages("bob", &[b, c], None)
            .await
            .expect("rm");
        assert_eq!(store.body_count(), 0);
        // Delivered again after it was freed: stored anew.
        let d = deliver(&store, "alice", &raw).await.expect("d");
        assert_eq!(store.raw(d).expect("raw").as_deref(), Some(&raw[..]));
        let report = tokio::task::spawn_blocking({
            let s = store.clone();
            move || s.check(false)
        })
        .await
        .expect("join")
        .expect("check");
        assert_eq!(report.problems, Vec::<String>::new());
        assert_eq!(report.bodies, 1);
    });
}

#[test]
fn compaction_frees_deleted_bodies_and_keeps_the_others_byte_exact() {
    let dir = tempfile::tempdir().expect("tmp");
    runtime().block_on(async {
        let store = open(dir.path(), &["alice"]).await;
        let mut ids = Vec::new();
        for i in 0..300 {
            // Noise-like bytes: they do not compress, so they fill segments.
            let mut raw = message(i, 200);
            let mut x = i as u64 + 7;
            raw.extend((0..20_000).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            }));
            ids.push((deliver(&store, "alice", &raw).await.expect("deliver"), raw));
        }
        let before = store.bodies.segments().len();
        assert!(before >= 3, "{before} segments");
        let (gone, kept): (Vec<_>, Vec<_>) =
            ids.into_iter().enumerate().partition(|(i, _)| i % 4 != 0);
        let gone: Vec<u64> = gone.into_iter().map(|(_, (id, _))| id).collect();
        for chunk in gone.chunks(100) {
            store
                .remove_messages("alice", chunk, None)
                .await
                .expect("rm");
        }
        let s = store.clone();
        let report = tokio::task::spawn_blocking(move || s.compact())
            .await
            .expect("join")
            .expect("compact");
        assert!(report.segments_deleted >= 1, "{report:?}");
        assert!(report.relocated >= 1, "{report:?}");
        assert!(store.bodies.segments().len() < before + 1);
        for (_, (id, raw)) in &kept {
            assert_eq!(store.raw(*id).expect("raw").as_deref(), Some(&raw[..]));
        }
        // And after a restart.
        drop(store);
        let store = open(dir.path(), &[]).await;
        for (_, (id, raw)) in &kept {
            assert_eq!(store.raw(*id).expect("raw").as_deref(), Some(&raw[..]));
        }
        let s = store.clone();
        let check = tokio::task::spawn_blocking(move || s.check(false))
            .await
            .expect("join")
            .expect("check");
        assert_eq!(check.problems, Vec::<String>::new());
        assert_eq!(check.bodies as usize, kept.len());
    });
}

#[test]
fn bodies_kept_in_sled_by_an_older_release_move_out_at_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut ids = Vec::new();
    runtime().block_on(async {
        let store = open(dir.path(), &["alice"]).await;
        for i in 0..1200 {
            let raw = message(i, 900);
            ids.push((deliver(&store, "alice", &raw).await.expect("deliver"), raw));
        }
        // Make it what an older release left: bytes in `raw`, no index.
        for (id, raw) in &ids {
            let loc = Loc::decode(
                &store
                    .body_index
                    .get(model::body_key(*id))
                    .expect("get")
                    .expect("there"),
            )
            .expect("loc");
            store.body_index.remove(model::body_key(*id)).expect("rm");
            store
                .body_index
                .remove(model::hash_key(&loc.hash))
                .expect("rm");
            store
                .legacy_raw
                .insert(id.to_be_bytes(), raw.as_slice())
                .expect("put");
        }
        store.flush().await.expect("flush");
        assert_eq!(store.body_count(), 0);
        // Still readable from sled meanwhile.
        assert_eq!(
            store.raw(ids[0].0).expect("raw").as_deref(),
            Some(&ids[0].1[..])
        );
    });
    runtime().block_on(async {
        let store = open(dir.path(), &[]).await;
        assert_eq!(store.legacy_raw.len(), 0, "all moved");
        assert_eq!(store.body_count(), ids.len());
        for (id, raw) in &ids {
            assert_eq!(store.raw(*id).expect("raw").as_deref(), Some(&raw[..]));
        }
        // The content addresses work for what was moved.
        let again = deliver(&store, "alice", &ids[5].1).await.expect("again");
        assert_eq!(store.body_count(), ids.len());
        assert_eq!(
            store.meta(again).expect("m").expect("m").blob_id(),
            ids[5].0
        );
    });
}

#[test]
fn a_damaged_body_is_reported_never_served_and_quarantined_by_repair() {
    let dir = tempfile::tempdir().expect("tmp");
    runtime().block_on(async {
        let store = open(dir.path(), &["alice"]).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                deliver(&store, "alice", &message(i, 3000))
                    .await
                    .expect("d"),
            );
        }
        let loc = Loc::decode(
            &store
                .body_index
                .get(model::body_key(ids[1]))
                .expect("g")
                .expect("there"),
        )
        .expect("loc");
        let path = store.bodies.dir().join(format!("{:016x}.body", loc.seg));
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open");
            f.write_all_at(b"X", loc.off + bodies::HEADER as u64 + 10)
                .expect("flip");
        }
        let err = store.raw(ids[1]).expect_err("damaged bytes are not mail");
        assert!(err.to_string().contains("fails its CRC"), "{err}");
        assert_eq!(
            store.raw(ids[0]).expect("raw").as_deref(),
            Some(&message(0, 3000)[..])
        );
        let s = store.clone();
        let check = tokio::task::spawn_blocking(move || s.check(false))
            .await
            .expect("j")
            .expect("check");
        assert_eq!(check.problem_count, 2, "{:?}", check.problems);
        assert!(
            check.problems.iter().any(|p| p.contains("fails its CRC")),
            "{:?}",
            check.problems
        );
        let s = store.clone();
        let repaired = tokio::task::spawn_blocking(move || s.check(true))
            .await
            .expect("j")
            .expect("check");
        assert!(repaired.repaired >= 1);
        let err = store.raw(ids[1]).expect_err("quarantined");
        assert!(err.to_string().contains("quarantined"), "{err}");
        let s = store.clone();
        let after = tokio::task::spawn_blocking(move || s.check(false))
            .await
            .expect("j")
            .expect("check");
        assert_eq!(after.quarantined, 1);
        assert_eq!(after.problems.len(), 1, "{:?}", after.problems);
        assert!(
            after.problems[0].contains("quarantined"),
            "{:?}",
            after.problems
        );
    });
}

#[test]
fn a_full_disk_refuses_deliveries_and_they_succeed_again_when_space_returns() {
    let dir = tempfile::tempdir().expect("tmp");
    runtime().block_on(async {
        let store = open(dir.path(), &["alice"]).await;
        store.set_min_free(u64::MAX / 4);
        let err = deliver(&store, "alice", &message(1, 2000))
            .await
            .expect_err("full");
        assert!(err.is_full(), "{err}");
        assert_eq!(
            store.quota("alice").expect("q").used.messages,
            0,
            "nothing half-stored"
        );
        store.set_min_free(1 << 20);
        let id = deliver(&store, "alice", &message(1, 2000))
            .await
            .expect("room again");
        assert_eq!(
            store.raw(id).expect("raw").as_deref(),
            Some(&message(1, 2000)[..])
        );
    });
}

#[test]
fn every_corpus_message_reads_back_byte_exact_with_every_codec() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/eml");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert!(files.len() >= 60, "{} corpus messages", files.len());
    files.push(Vec::new());
    for codec in [Codec::Zstd, Codec::Lz4, Codec::None] {
        let dir = tempfile::tempdir().expect("tmp");
        runtime().block_on(async {
            let opts = StoreOptions {
                codec,
                ..Default::default()
            };
            let store = Store::open_with(&dir.path().join("db"), &opts).expect("store");
            store.put_user("alice", "x").await.expect("user");
            let mut ids = Vec::new();
            for raw in &files {
                ids.push(deliver(&store, "alice", raw).await.expect("deliver"));
            }
            for (id, raw) in ids.iter().zip(&files) {
                assert_eq!(
                    store.raw(*id).expect("raw").as_deref(),
                    Some(&raw[..]),
                    "{codec:?}"
                );
            }
            drop(store);
            let store = Store::open_with(&dir.path().join("db"), &opts).expect("reopen");
            for (id, raw) in ids.iter().zip(&files) {
                assert_eq!(
                    store.raw(*id).expect("raw").as_deref(),
                    Some(&raw[..]),
                    "{codec:?}"
                );
            }
        });
    }
}

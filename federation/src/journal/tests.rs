//! The journal's tests: reopening, torn tails, damage, reclaiming, locking
//! and concurrent writers.

use super::record::{encode, parse, HEADER, KIND_PUT};
use super::segment::{prepare_segment, segment_name};
use super::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

#[test]
fn entries_survive_a_reopen_and_removals_stick() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let j = Journal::open(dir.path()).expect("open");
        let mut last = 0;
        for k in 0..100u64 {
            last = j.put(k, format!("value {k}").as_bytes()).expect("put");
        }
        j.put(5, b"five again").expect("put");
        j.remove(7).expect("remove");
        j.sync(last).await.expect("sync");
        let l = j.remove(8).expect("remove");
        j.sync(l).await.expect("sync");
    });
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(j.len(), 98);
    assert_eq!(j.get(5).expect("get").as_deref(), Some(&b"five again"[..]));
    assert_eq!(j.get(7).expect("get"), None);
    assert_eq!(j.get(99).expect("get").as_deref(), Some(&b"value 99"[..]));
    assert_eq!(j.keys().first(), Some(&0));
}

#[test]
fn a_torn_tail_is_cut_and_never_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let j = Journal::open(dir.path()).expect("open");
        let l = j.put(1, b"kept").expect("put");
        j.sync(l).await.expect("sync");
    });
    let seg = dir.path().join(segment_name(1));
    let len = std::fs::metadata(&seg).expect("meta").len();
    // A record torn by a crash, after the one that was synced.
    let torn = encode(1, KIND_PUT, 2, &[7u8; 300]);
    let f = OpenOptions::new().write(true).open(&seg).expect("open");
    let kept_end = (HEADER + 4) as u64;
    f.write_all_at(&torn[..100], kept_end).expect("write");
    drop(f);
    assert!(len >= kept_end);
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(j.keys(), vec![1]);
    assert_eq!(
        std::fs::metadata(&seg).expect("meta").len(),
        kept_end,
        "the torn tail is cut"
    );
    rt().block_on(async {
        let l = j.put(3, b"after").expect("put");
        j.sync(l).await.expect("sync");
    });
    drop(j);
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(j.keys(), vec![1, 3]);
}

#[test]
fn a_torn_tail_before_a_prepared_segment_is_left_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let j = Journal::open(dir.path()).expect("open");
        let l = j.put(1, b"kept").expect("put");
        j.sync(l).await.expect("sync");
    });
    // The crash tore a record in segment 1 while segment 2 was prepared.
    let torn = encode(1, KIND_PUT, 2, &[7u8; 300]);
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join(segment_name(1)))
        .expect("open");
    f.write_all_at(&torn[..100], (HEADER + 4) as u64)
        .expect("write");
    drop(f);
    prepare_segment(dir.path(), 2, 4096, None).expect("prepare");
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(j.keys(), vec![1]);
    rt().block_on(async {
        let l = j.put(3, b"after").expect("put");
        j.sync(l).await.expect("sync");
    });
    drop(j);
    let seg2 = std::fs::read(dir.path().join(segment_name(2))).expect("read");
    assert!(parse(&seg2, 2).is_some(), "appends went on in segment 2");
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(j.keys(), vec![1, 3]);
    assert_eq!(j.get(3).expect("get").as_deref(), Some(&b"after"[..]));
}

#[test]
fn dead_segments_go_and_a_pinned_entry_is_copied_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = vec![9u8; 1000];
    rt().block_on(async {
        let j = Journal::open_with(dir.path(), 8 * 1024).expect("open");
        // Key 0 stays (mail for a peer that is down); the rest come and go.
        let l = j.put(0, b"pinned").expect("put");
        j.sync(l).await.expect("sync");
        for k in 1..400u64 {
            let l = j.put(k, &value).expect("put");
            j.sync(l).await.expect("sync");
            j.remove(k).expect("remove");
        }
        let l = j.put(400, b"last").expect("put");
        j.sync(l).await.expect("sync");
        // Compaction runs on its own thread: wait for it.
        for _ in 0..200 {
            if j.stats().relocated.load(Ordering::Relaxed) > 0 && j.segments() <= 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            j.stats().relocated.load(Ordering::Relaxed) >= 1,
            "key 0 was copied forward"
        );
        assert!(j.segments() <= 3, "{} segments left", j.segments());
        let deleted = j.stats().segments_deleted.load(Ordering::Relaxed);
        let recycled = j.stats().recycled.load(Ordering::Relaxed);
        assert!(
            deleted + recycled >= 40,
            "{deleted} deleted, {recycled} recycled"
        );
        assert!(recycled >= 1, "dead segments are reused");
    });
    let j = Journal::open_with(dir.path(), 8 * 1024).expect("reopen");
    assert_eq!(j.keys(), vec![0, 400]);
    assert_eq!(j.get(0).expect("get").as_deref(), Some(&b"pinned"[..]));
}

#[test]
fn damaged_segments_open_without_panic_and_keep_what_precedes_the_damage() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = Vec::new();
        let mut starts = Vec::new();
        for k in 0..20u64 {
            starts.push(file.len());
            let len = (rand() % 300) as usize;
            file.extend_from_slice(&encode(1, KIND_PUT, k, &vec![k as u8; len]));
        }
        // Damage from some point on: flipped bytes, a cut, or garbage.
        let at = (rand() as usize) % file.len();
        match round % 3 {
            0 => {
                for _ in 0..1 + rand() % 8 {
                    let i = at + (rand() as usize) % (file.len() - at);
                    file[i] ^= 1 << (rand() % 8);
                }
            }
            1 => file.truncate(at),
            _ => {
                file.truncate(at);
                for _ in 0..rand() % 500 {
                    file.push(rand() as u8);
                }
            }
        }
        std::fs::write(dir.path().join(segment_name(1)), &file).expect("write");
        let j = Journal::open(dir.path()).expect("a damaged segment still opens");
        let intact = starts
            .iter()
            .zip(starts.iter().skip(1).chain([&usize::MAX]))
            .take_while(|(_, &end)| end <= at)
            .count() as u64;
        let keys = j.keys();
        assert!(
            keys.len() as u64 >= intact && keys.iter().all(|&k| k < 20),
            "round {round}: {keys:?}, {intact} intact"
        );
        for k in keys {
            let v = j.get(k).expect("get").expect("present");
            assert!(
                v.iter().all(|&b| b == k as u8),
                "round {round}: key {k} altered"
            );
        }
        for k in 0..intact {
            assert!(
                j.get(k).expect("get").is_some(),
                "round {round}: key {k} lost"
            );
        }
        // And the journal goes on.
        rt().block_on(async {
            let l = j.put(100, b"after").expect("put");
            j.sync(l).await.expect("sync");
        });
    }
}

#[test]
fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _j = Journal::open(dir.path()).expect("open");
    assert!(matches!(
        Journal::open(dir.path()),
        Err(JournalError::Locked(_))
    ));
}

#[test]
fn concurrent_writers_all_become_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(dir.path()).expect("open");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50u64 {
                    let l = j.put(t * 1000 + i, &[1u8; 2048]).expect("put");
                    j.sync(l).await.expect("sync");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    assert_eq!(j.len(), 800);
    // Dropping the last handle closes at once, even while the next
    // segment is being filled: the directory opens again right away.
    drop(j);
    let j = Journal::open(dir.path()).expect("reopen");
    assert_eq!(j.len(), 800);
    assert_eq!(j.get(15_049).expect("get"), Some(vec![1u8; 2048]));
}

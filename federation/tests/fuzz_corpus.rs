//! Replays the committed mesh-frame fuzz corpus (`fuzz/corpus/mesh_frame`)
//! on stable: whole and split decoding agree, nothing panics, seeds decode.
//! Likewise the journal record corpus (`fuzz/corpus/journal_record`): read
//! as the `journal_record` target reads it, seeds as they were made.

use caliopen_federation::internal::journal::{
    decode_record, encode_record, Decoded, HEADER, KIND_END, KIND_PUT, KIND_REMOVE,
};
use caliopen_federation::wire::{decode_single, encode_frame, FrameDecoder};
use caliopen_proto::pb::mesh::{request, Deliver, Hello, Request};
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/mesh_frame")
}

/// Regenerates the seeds: `SEED_MESH_CORPUS=1 cargo test -p caliopen-federation --test fuzz_corpus`.
#[test]
fn seeds_are_current() {
    let seeds = [
        (
            "hello.bin",
            Request {
                body: Some(request::Body::Hello(Hello {
                    protocol_version: 1,
                    software_version: "0.1.0".into(),
                    directory_serial: 3,
                    crl_number: 2,
                    member_id: "alpha".into(),
                    ..Default::default()
                })),
            },
        ),
        (
            "deliver.bin",
            Request {
                body: Some(request::Body::Deliver(Deliver {
                    txn_id: vec![1; 32],
                    mail_from: "a@alpha.test".into(),
                    rcpt_to: vec!["b@beta.test".into()],
                    message: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
                    accepted_at: 1,
                })),
            },
        ),
    ];
    for (name, req) in seeds {
        let path = corpus_dir().join(name);
        if std::env::var_os("SEED_MESH_CORPUS").is_some() {
            std::fs::write(&path, encode_frame(&req)).expect("write seed");
        }
        let bytes = std::fs::read(&path).expect("seed present");
        assert_eq!(
            decode_single::<Request>(&bytes, 1 << 20).expect("seed decodes"),
            req
        );
    }
}

#[test]
fn corpus_replays_without_panics() {
    let mut n = 0;
    for e in std::fs::read_dir(corpus_dir()).expect("corpus dir") {
        let data = std::fs::read(e.expect("entry").path()).expect("read");
        let whole = decode_single::<Request>(&data, 1 << 20);
        for cut in 0..=data.len() {
            let mut d = FrameDecoder::new(1 << 20);
            let split = d
                .push(&data[..cut])
                .and_then(|_| d.push(&data[cut..]))
                .and_then(|_| d.finish::<Request>());
            assert_eq!(whole.is_ok(), split.is_ok(), "cut {cut}");
        }
        n += 1;
    }
    assert!(n >= 2, "corpus too small");
}

fn journal_corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/journal_record")
}

/// What the `journal_record` fuzz target checks: read as segment `seg`,
/// record after record, every record accepted lies within the bytes and
/// encodes back to them. Returns the keys of the records read.
fn walk_journal_records(data: &[u8], seg: u64) -> Vec<u64> {
    let mut keys = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let Decoded::Record { kind, key, payload } = decode_record(rest, seg) else {
            break;
        };
        assert_eq!(payload.start, HEADER);
        assert!(payload.end <= rest.len(), "a record past the end");
        let record = &rest[..payload.end];
        assert_eq!(encode_record(seg, kind, key, &record[payload]), record);
        keys.push(key);
        pos += record.len();
    }
    keys
}

/// The `journal_record` seeds, as the journal writes records: a segment
/// id of 1, then what each holds.
fn journal_seeds() -> Vec<(&'static str, Vec<u8>, Vec<u64>)> {
    let put = |key: u64, v: &[u8]| encode_record(1, KIND_PUT, key, v);
    let remove = |key: u64| encode_record(1, KIND_REMOVE, key, &[]);
    let end = encode_record(1, KIND_END, 0, &[]);
    vec![
        ("put.bin", put(42, b"hello"), vec![42]),
        (
            "put_remove.bin",
            [put(1, b"value"), put(2, &[0xAB; 300]), remove(1)].concat(),
            vec![1, 2, 1],
        ),
        // A closed segment: records, the end mark, zero fill.
        (
            "closed_segment.bin",
            [put(7, b"seven"), remove(7), end, vec![0; 64]].concat(),
            vec![7, 7],
        ),
        // A torn tail: the second record cut short by a crash.
        (
            "torn_tail.bin",
            [put(3, b"kept"), put(4, &[9; 100])[..60].to_vec()].concat(),
            vec![3],
        ),
        // A recycled file: after this segment's record, one of the segment
        // the file was before (a clean end).
        (
            "recycled.bin",
            [put(5, b"new"), encode_record(9, KIND_PUT, 6, b"old")].concat(),
            vec![5],
        ),
    ]
}

/// Regenerates the seeds: `SEED_JOURNAL_CORPUS=1 cargo test -p caliopen-federation --test fuzz_corpus`.
#[test]
fn journal_seeds_are_current() {
    for (name, bytes, keys) in journal_seeds() {
        let path = journal_corpus_dir().join(name);
        if std::env::var_os("SEED_JOURNAL_CORPUS").is_some() {
            std::fs::write(&path, &bytes).expect("write seed");
        }
        let held = std::fs::read(&path).expect("seed present");
        assert_eq!(held, bytes, "{name} is stale: regenerate it");
        assert_eq!(walk_journal_records(&held, 1), keys, "{name}");
        assert!(
            walk_journal_records(&held, 2).is_empty(),
            "{name}: another segment's records are not read"
        );
    }
}

#[test]
fn journal_corpus_replays_without_panics() {
    let mut n = 0;
    for e in std::fs::read_dir(journal_corpus_dir()).expect("corpus dir") {
        let data = std::fs::read(e.expect("entry").path()).expect("read");
        let named = data
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map_or(1, u64::from_le_bytes);
        walk_journal_records(&data, named);
        walk_journal_records(&data, named.wrapping_add(1));
        n += 1;
    }
    assert!(n >= 5, "corpus too small");
}

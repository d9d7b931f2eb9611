//! Replays the committed mesh-frame fuzz corpus (`fuzz/corpus/mesh_frame`)
//! on stable: whole and split decoding agree, nothing panics, seeds decode.

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

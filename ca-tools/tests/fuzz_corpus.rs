//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the functions
//! the fuzz targets call, on the stable toolchain: no input may panic, and
//! the seeds must still be accepted.

use caliopen_proto::pb::directory::{Directory, SignedDirectory};
use caliopen_proto::Label;
use prost::Message;
use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("entry").path();
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "empty corpus for {target}");
    v
}

#[test]
fn label_corpus() {
    let mut accepted = 0;
    for (name, data) in corpus("label_der") {
        if let Ok(l) = Label::from_der(&data) {
            assert_eq!(l.to_der().expect("re-encode"), data, "{name}");
            accepted += 1;
        }
        // Every truncation of every input is handled too.
        for cut in 0..data.len() {
            let _ = Label::from_der(&data[..cut]);
        }
    }
    assert!(accepted >= 2, "the seed labels must decode");
}

#[test]
fn csr_corpus() {
    let mut accepted = 0;
    for (name, data) in corpus("csr_parse") {
        if name.starts_with("crash-") {
            assert!(caliopen_ca::parse_csr(&data).is_err(), "{name}");
            continue;
        }
        if caliopen_ca::parse_csr(&data).is_ok() {
            accepted += 1;
        }
        for cut in (0..data.len()).step_by(7) {
            assert!(
                caliopen_ca::parse_csr(&data[..cut]).is_err(),
                "{name} cut at {cut}"
            );
        }
    }
    assert!(
        accepted >= 6,
        "seed CSRs (P-256, P-384, Ed25519; PEM and DER) must parse"
    );
}

#[test]
fn directory_corpus() {
    for (name, data) in corpus("directory_decode") {
        let signed = SignedDirectory::decode(data.as_slice());
        if let Ok(s) = &signed {
            let d = Directory::decode(s.directory.as_slice()).expect(&name);
            assert_eq!(d.purpose, caliopen_proto::directory::DIRECTORY_PURPOSE);
        }
        let _ = caliopen_proto::decode_and_verify(&data, &[]);
        for cut in 0..data.len() {
            let _ = caliopen_proto::decode_and_verify(&data[..cut], &[]);
        }
    }
}

#[test]
fn checkpoint_corpus() {
    use caliopen_ca::tlog::{Checkpoint, Entry, Note, Verifier};
    let mut key = None;
    let mut seen = (0, 0);
    let all = corpus("checkpoint");
    for (name, data) in &all {
        if name == "verifier-key.txt" {
            key = Some(Verifier::parse(std::str::from_utf8(data).expect("utf-8")).expect(name));
        }
    }
    let key = key.expect("the corpus holds the fuzz target's verifier key");
    for (name, data) in &all {
        if name == "checkpoint.txt" {
            Checkpoint::open(data, &key).expect(name);
            seen.0 += 1;
        }
        if name == "checkpoint-other-key.txt" {
            assert!(Checkpoint::open(data, &key).is_err(), "{name}");
        }
        if name.starts_with("entry-") {
            Entry::decode(data).expect(name);
            seen.1 += 1;
        }
        for cut in 0..data.len() {
            let _ = Note::parse(&data[..cut]);
            let _ = Checkpoint::open(&data[..cut], &key);
            if name.starts_with("entry-") {
                assert!(Entry::decode(&data[..cut]).is_err(), "{name} cut at {cut}");
            }
        }
    }
    assert_eq!(seen, (1, 4), "the seed checkpoint and entries must decode");
}

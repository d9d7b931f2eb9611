//! The membership log's decoders and verifiers on untrusted bytes: signed
//! notes, checkpoints, verifier keys, log entries, inclusion/consistency
//! proofs, tile paths (as the HTTPS front end receives them), entry
//! bundles and witness add-checkpoint requests. Errors only, never a panic.
#![no_main]
use caliopen_ca::tlog::{
    verify_consistency, verify_inclusion, Checkpoint, Entry, Hash, Note, Tile, Verifier,
};
use libfuzzer_sys::fuzz_target;

/// The verifier key of the seed corpus' log (seed `[0x42; 32]`; `cargo run
/// -p caliopen-ca --example fuzz_seeds` prints it), so that signature
/// checking runs on the seeds and their mutations.
const KEY: &str = "caliopen.invalid/fuzz+b9500b8e+ASFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = Note::parse(data) {
        let _ = Checkpoint::parse_text(n.text());
        assert_eq!(Note::parse(n.encode().as_bytes()).as_ref(), Ok(&n));
    }
    if let Ok(v) = Verifier::parse(KEY) {
        let _ = Checkpoint::open(data, &v);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Verifier::parse(s);
        let _ = Checkpoint::parse_text(s);
    }
    let _ = Entry::decode(data);
    // tlog-witness add-checkpoint bodies (what a witness reads): one that
    // parses writes back to the same bytes (sizes and base64 are strict).
    if let Ok(r) = caliopen_ca::tlog::witness::parse_request(data) {
        if let Ok(note) = std::str::from_utf8(r.note) {
            let again = caliopen_ca::tlog::witness::request_body(r.old, &r.proof, note);
            assert!(again.as_bytes() == data, "witness request does not round-trip");
        }
    }
    let _ = caliopen_ca::tlog::witness::parse_size_body(data);
    if let Ok(s) = std::str::from_utf8(data) {
        // A path accepted is spelled canonically: it reads back to itself.
        if let Ok(t) = Tile::parse(s) {
            assert_eq!(Tile::parse(&t.path()), Ok(t));
        }
    }
    if let Ok(entries) = caliopen_ca::tlog::tiles::decode_bundle(data) {
        let again = caliopen_ca::tlog::tiles::encode_bundle(&entries);
        assert!(again.ok().as_deref() == Some(data), "bundle does not round-trip");
    }
    // Proofs: two sizes, an index, then 32-byte hashes.
    if data.len() >= 24 + 64 {
        let u = |i: usize| u64::from_be_bytes(data[i..i + 8].try_into().unwrap_or([0; 8]));
        let (a, b, c) = (u(0), u(8), u(16));
        let hashes: Vec<Hash> = data[24..]
            .chunks_exact(32)
            .map(|h| h.try_into().unwrap_or([0; 32]))
            .collect();
        let (x, y, proof) = (&hashes[0], &hashes[1], &hashes[2..]);
        let _ = verify_inclusion(x, c, b, proof, y);
        let _ = verify_consistency(a, b, x, y, proof);
        let small = (a % 300, b % 300, c % 300);
        let _ = verify_inclusion(x, small.2, small.1, proof, y);
        let _ = verify_consistency(small.0, small.1, x, y, proof);
    }
});

//! The store's message record codec on arbitrary bytes (a damaged
//! `messages` tree, or a record of another version): never a panic and no
//! allocation beyond the record's size; a record accepted encodes to bytes
//! that decode to the same record.
#![no_main]
use caliopen_instance::store::record::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode(data) {
        let again = encode(&m);
        assert_eq!(decode(&again).expect("a re-encoded record decodes"), m);
    }
});

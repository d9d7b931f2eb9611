//! The outbox journal's record codec on arbitrary bytes, read as the
//! journal reads a segment when it opens: record after record, up to the
//! first that is not one of this segment's. Never a panic; a record
//! accepted lies within the bytes, and encodes back to exactly the bytes it
//! was read from (the format is canonical: nothing else decodes).
#![no_main]
use caliopen_federation::internal::journal::{decode_record, encode_record, Decoded, HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Read as the segment the first header names (so that the seeds and
    // their mutations parse on), and as the next one (every record is then
    // another segment's: a clean end, or damage).
    let named = data
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(1, u64::from_le_bytes);
    for seg in [named, named.wrapping_add(1)] {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let Decoded::Record { kind, key, payload } = decode_record(rest, seg) else {
                break;
            };
            assert_eq!(payload.start, HEADER);
            assert!(payload.end <= rest.len(), "a record past the end");
            let record = &rest[..payload.end];
            let again = encode_record(seg, kind, key, &record[payload]);
            assert!(again == record, "an accepted record does not re-encode");
            pos += record.len();
        }
    }
});

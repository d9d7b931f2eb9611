//! Narrow entry points into the record codec for the fuzz target
//! (`fuzz/fuzz_targets/journal_record.rs`) and its corpus replay test
//! (`federation/tests/fuzz_corpus.rs`). Not part of the crate's API: hidden
//! from its documentation, and free to change with the journal's format.

use std::ops::Range;

/// The header's length: a record's payload starts this far in.
pub const HEADER: usize = super::record::HEADER;
/// The kind of a record that sets its key.
pub const KIND_PUT: u8 = super::record::KIND_PUT;
/// The kind of a record that deletes its key.
pub const KIND_REMOVE: u8 = super::record::KIND_REMOVE;
/// The kind of a segment's end mark.
pub const KIND_END: u8 = super::record::KIND_END;

/// What the bytes at the start of a buffer hold, read as part of a
/// segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A record of that segment.
    Record {
        /// [`KIND_PUT`] or [`KIND_REMOVE`].
        kind: u8,
        /// Its key.
        key: u64,
        /// Where its payload lies in the buffer (the record ends there).
        payload: Range<usize>,
    },
    /// A clean end: zero fill, an end mark, or a record of another segment.
    End,
    /// Bytes that do not check (torn or damaged).
    Bad,
}

/// Decodes what is at the start of `buf`, as the journal does when it
/// opens segment `seg`.
pub fn decode_record(buf: &[u8], seg: u64) -> Decoded {
    match super::record::read_at(buf, seg) {
        super::record::Read::Record(p) => Decoded::Record {
            kind: p.kind,
            key: p.key,
            payload: p.payload,
        },
        super::record::Read::End => Decoded::End,
        super::record::Read::Bad => Decoded::Bad,
    }
}

/// Encodes one record of segment `seg`, as the journal writes it.
pub fn encode_record(seg: u64, kind: u8, key: u64, payload: &[u8]) -> Vec<u8> {
    super::record::encode(seg, kind, key, payload)
}

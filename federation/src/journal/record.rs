//! The record codec: one record is
//!
//! ```text
//! magic u32 | crc32 u32 | segment id u64 | kind u8 | key u64 | length u32 | payload
//! ```
//!
//! little-endian, the CRC (CRC-32 of ISO/IEC 13239 / ITU-T V.42, the
//! IEEE 802.3 polynomial, as `crc32fast` computes it) covering everything
//! after itself. [`read_at`] tells a record of the segment being read from
//! a clean end (zero fill, an end mark, a record of the segment the file was
//! before it was recycled) and from bytes that do not check (a torn write,
//! damage); it never panics on any input (`fuzz/fuzz_targets/journal_record.rs`).

use super::MAX_VALUE;

/// The first four bytes of every record.
pub(super) const MAGIC: u32 = 0xCA11_0B0C;
/// A record's header: everything before the payload.
pub(super) const HEADER: usize = 4 + 4 + 8 + 1 + 8 + 4;
/// The record sets its key to its payload.
pub(super) const KIND_PUT: u8 = 1;
/// The record deletes its key (empty payload).
pub(super) const KIND_REMOVE: u8 = 2;
/// Written when a segment is closed: nothing follows in it.
pub(super) const KIND_END: u8 = 3;

/// What the bytes at a position in segment `seg` hold.
pub(super) enum Read {
    /// A record of this segment.
    Record(Parsed),
    /// A clean end: zero fill, the segment's end mark, or a whole record
    /// of the segment this file was before it was recycled.
    End,
    /// Bytes that do not check: a torn write, or damage.
    Bad,
}

/// One record read back: its kind, key and payload range.
pub(super) struct Parsed {
    pub(super) kind: u8,
    pub(super) key: u64,
    pub(super) payload: std::ops::Range<usize>,
}

/// Reads what is at the start of `buf` in segment `seg`.
pub(super) fn read_at(buf: &[u8], seg: u64) -> Read {
    let Some(h) = buf.get(..HEADER) else {
        return if buf.iter().all(|&b| b == 0) {
            Read::End
        } else {
            Read::Bad
        };
    };
    if h.iter().all(|&b| b == 0) {
        return Read::End;
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let kind = h[16];
    let key = u64_at(17);
    let len = u32_at(25) as usize;
    if u32_at(0) != MAGIC || !(KIND_PUT..=KIND_END).contains(&kind) || len > MAX_VALUE {
        return Read::Bad;
    }
    let Some(body) = buf.get(8..HEADER + len) else {
        return Read::Bad;
    };
    if crc32fast::hash(body) != u32_at(4) {
        return Read::Bad;
    }
    if u64_at(8) != seg || kind == KIND_END {
        return Read::End;
    }
    Read::Record(Parsed {
        kind,
        key,
        payload: HEADER..HEADER + len,
    })
}

/// The record at the start of `buf` in segment `seg`, if there is one.
pub(super) fn parse(buf: &[u8], seg: u64) -> Option<Parsed> {
    match read_at(buf, seg) {
        Read::Record(p) => Some(p),
        Read::End | Read::Bad => None,
    }
}

/// One record of segment `seg`, header and payload.
pub(super) fn encode(seg: u64, kind: u8, key: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + payload.len());
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&seg.to_le_bytes());
    b.push(kind);
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_damage_is_caught() {
        let r = encode(7, KIND_PUT, 42, b"hello");
        let p = parse(&r, 7).expect("parses");
        assert_eq!(
            (p.kind, p.key, &r[p.payload]),
            (KIND_PUT, 42, &b"hello"[..])
        );
        assert!(parse(&r, 8).is_none(), "another segment's record");
        for i in 0..r.len() {
            let mut bad = r.clone();
            bad[i] ^= 0x40;
            assert!(parse(&bad, 7).is_none(), "flipped byte {i} not caught");
        }
        assert!(parse(&r[..r.len() - 1], 7).is_none(), "torn record");
        assert!(parse(&[0u8; 64], 7).is_none(), "zero fill");
    }
}

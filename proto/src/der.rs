//! A minimal, strict DER writer and reader for the few ASN.1 shapes Caliopen
//! encodes itself (the label extension, member certificates' TBS).
//!
//! The reader accepts DER only: definite lengths in their shortest form
//! (X.690 §10.1), low-tag-number identifiers (X.690 §8.1.2.2), and lengths
//! that fit the input. Anything else is [`DerError`], never a panic.
//!
//! Section numbers are those of ITU-T X.690 (02/2021): §8 the basic
//! encoding rules, §10 and §11 the restrictions DER adds.

use thiserror::Error;

/// Universal tag: INTEGER.
pub const TAG_INTEGER: u8 = 0x02;
/// Universal tag: BIT STRING.
pub const TAG_BIT_STRING: u8 = 0x03;
/// Universal tag: OCTET STRING.
pub const TAG_OCTET_STRING: u8 = 0x04;
/// Universal tag: NULL.
pub const TAG_NULL: u8 = 0x05;
/// Universal tag: OBJECT IDENTIFIER.
pub const TAG_OID: u8 = 0x06;
/// Universal tag: UTF8String.
pub const TAG_UTF8_STRING: u8 = 0x0c;
/// Universal tag: BOOLEAN. In DER, TRUE is the single octet 0xFF
/// (X.690 §11.1; BER allows any non-zero octet, §8.2.2), and a field whose
/// DEFAULT is FALSE is left out when false (§11.5).
pub const TAG_BOOLEAN: u8 = 0x01;
/// Universal tag: UTCTime.
pub const TAG_UTC_TIME: u8 = 0x17;
/// Universal tag: GeneralizedTime.
pub const TAG_GENERALIZED_TIME: u8 = 0x18;
/// Universal constructed tag: SEQUENCE.
pub const TAG_SEQUENCE: u8 = 0x30;
/// Universal constructed tag: SET. DER orders a SET OF's elements by their
/// encodings (X.690 §11.6); every SET Caliopen writes (a name's RDN) holds
/// one element, so no sorting is needed.
pub const TAG_SET: u8 = 0x31;

/// Why a DER input was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DerError {
    /// The input ended inside an element.
    #[error("truncated DER input")]
    Truncated,
    /// An element had another tag than the one expected.
    #[error("unexpected DER tag 0x{found:02x} (expected 0x{expected:02x})")]
    UnexpectedTag {
        /// Tag wanted.
        expected: u8,
        /// Tag found.
        found: u8,
    },
    /// A length was not in DER's shortest definite form, or too large.
    #[error("non-canonical or oversized DER length")]
    BadLength,
    /// A high-tag-number identifier (not used by any Caliopen structure).
    #[error("unsupported DER tag form")]
    BadTag,
    /// Bytes followed the last element.
    #[error("{0} trailing bytes after DER element")]
    TrailingBytes(usize),
    /// An INTEGER was empty, negative where not allowed, non-minimal or too large.
    #[error("invalid DER INTEGER")]
    BadInteger,
    /// A UTF8String held invalid UTF-8.
    #[error("invalid UTF-8 in UTF8String")]
    BadUtf8,
}

/// Appends a DER length to `out`: definite, in the fewest octets (X.690 §10.1).
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        // X.690 §8.1.3.4: the short form, one octet, for 0..=127.
        out.push(len as u8);
    } else {
        // X.690 §8.1.3.5: the long form, 0x80 | number of length octets, then
        // the length big-endian without leading zero octets (§10.1: minimum).
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends one TLV element.
pub fn write_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    write_len(out, content.len());
    out.extend_from_slice(content);
}

/// Returns one TLV element as a new vector.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    write_tlv(&mut out, tag, content);
    out
}

/// Encodes a non-negative integer given as big-endian magnitude bytes
/// (leading zeros are stripped, a zero byte is added when the top bit is set).
pub fn integer_from_magnitude(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let mag = &magnitude[skip..];
    let mut content = Vec::with_capacity(mag.len() + 1);
    // X.690 §8.3.3: two's complement, so a magnitude whose top bit is set
    // takes a 0x00 in front to stay positive; §8.3.1: zero is one 0x00
    // octet. With the leading zeros stripped above, this is also the
    // minimal encoding §8.3.2 requires.
    if mag.is_empty() || mag[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(mag);
    tlv(TAG_INTEGER, &content)
}

/// Encodes a non-negative INTEGER.
pub fn integer_u64(v: u64) -> Vec<u8> {
    integer_from_magnitude(&v.to_be_bytes())
}

/// A cursor over DER input that reads elements in order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { input }
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    /// Fails with [`DerError::TrailingBytes`] unless all input was consumed.
    pub fn finish(&self) -> Result<(), DerError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(DerError::TrailingBytes(self.input.len()))
        }
    }

    /// The tag of the next element, if any, without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.input.first().copied()
    }

    /// Reads the next element of any tag: `(tag, content)`.
    pub fn read_any(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, rest) = self.input.split_first().ok_or(DerError::Truncated)?;
        // X.690 §8.1.2.4: tag number bits 11111 announce the high-tag-number
        // form (tag numbers of 31 and more), which no Caliopen structure uses.
        if tag & 0x1f == 0x1f {
            return Err(DerError::BadTag);
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError::Truncated)?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            // 0x80 is BER's indefinite form (X.690 §8.1.3.6), which DER
            // forbids (§10.1: definite form only); more than 4 length bytes
            // is never needed here.
            if n == 0 || n > 4 {
                return Err(DerError::BadLength);
            }
            if rest.len() < n {
                return Err(DerError::Truncated);
            }
            let (len_bytes, after) = rest.split_at(n);
            // X.690 §10.1: the minimum number of octets, so no leading zero
            // octet...
            if len_bytes[0] == 0 {
                return Err(DerError::BadLength);
            }
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            // ...and no long form for a length the short form holds.
            if len < 0x80 {
                return Err(DerError::BadLength);
            }
            rest = after;
            len
        };
        if rest.len() < len {
            return Err(DerError::Truncated);
        }
        let (content, after) = rest.split_at(len);
        self.input = after;
        Ok((tag, content))
    }

    /// Reads the next element, which must carry `tag`; returns its content.
    pub fn read(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let found = self.peek_tag().ok_or(DerError::Truncated)?;
        if found != tag {
            return Err(DerError::UnexpectedTag {
                expected: tag,
                found,
            });
        }
        self.read_any().map(|(_, c)| c)
    }

    /// Reads the next element if it carries `tag`.
    pub fn read_optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads a non-negative INTEGER that fits in a `u64`.
    pub fn read_u64(&mut self) -> Result<u64, DerError> {
        let c = self.read(TAG_INTEGER)?;
        match c {
            // X.690 §8.3.1: one or more contents octets.
            [] => Err(DerError::BadInteger),
            // §8.3.3: two's complement; a set top bit is a negative value.
            [b, ..] if b & 0x80 != 0 => Err(DerError::BadInteger),
            // §8.3.2 b): a leading 0x00 is only there to clear the sign of
            // the next octet; otherwise the encoding is not minimal.
            [0, next, ..] if next & 0x80 == 0 => Err(DerError::BadInteger),
            _ => {
                let mag = if c[0] == 0 { &c[1..] } else { c };
                if mag.len() > 8 {
                    return Err(DerError::BadInteger);
                }
                Ok(mag.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
            }
        }
    }

    /// Reads a UTF8String (or an element with the given implicit `tag`
    /// holding UTF-8).
    pub fn read_utf8(&mut self, tag: u8) -> Result<&'a str, DerError> {
        let c = self.read(tag)?;
        std::str::from_utf8(c).map_err(|_| DerError::BadUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_shortest_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 20] {
            let content = vec![0xabu8; len];
            let enc = tlv(TAG_OCTET_STRING, &content);
            let mut r = Reader::new(&enc);
            assert_eq!(r.read(TAG_OCTET_STRING).unwrap().len(), len);
            r.finish().unwrap();
        }
    }

    #[test]
    fn non_canonical_lengths_are_refused() {
        // long form for a short length
        assert_eq!(
            Reader::new(&[0x04, 0x81, 0x01, 0x00]).read_any(),
            Err(DerError::BadLength)
        );
        // leading zero in a long length
        assert_eq!(
            Reader::new(&[0x04, 0x82, 0x00, 0x80]).read_any(),
            Err(DerError::BadLength)
        );
        // indefinite length
        assert_eq!(
            Reader::new(&[0x30, 0x80, 0x00, 0x00]).read_any(),
            Err(DerError::BadLength)
        );
        // length beyond input
        assert_eq!(
            Reader::new(&[0x04, 0x05, 0x00]).read_any(),
            Err(DerError::Truncated)
        );
    }

    #[test]
    fn integers_are_minimal_and_non_negative() {
        for v in [0u64, 1, 127, 128, 255, 256, u64::MAX] {
            let enc = integer_u64(v);
            assert_eq!(Reader::new(&enc).read_u64().unwrap(), v);
        }
        assert_eq!(
            Reader::new(&[0x02, 0x02, 0x00, 0x01]).read_u64(),
            Err(DerError::BadInteger)
        );
        assert_eq!(
            Reader::new(&[0x02, 0x01, 0xff]).read_u64(),
            Err(DerError::BadInteger)
        );
        assert_eq!(
            Reader::new(&[0x02, 0x00]).read_u64(),
            Err(DerError::BadInteger)
        );
    }
}

//! The Caliopen label: a non-critical X.509 extension that makes a certificate
//! a member certificate (DESIGN.md §3).
//!
//! ASN.1 module (also in `proto/asn1/CaliopenLabel.asn1`):
//!
//! ```text
//! CaliopenLabel-2025 { 2 25 116668997575035149051309086194491928148 0 }
//! DEFINITIONS IMPLICIT TAGS ::= BEGIN
//!   id-caliopen-label OBJECT IDENTIFIER ::= { 2 25 116668997575035149051309086194491928148 1 }
//!   CaliopenLabel ::= SEQUENCE {
//!     version        INTEGER,            -- 1 for this module
//!     memberId       UTF8String,
//!     charterVersion UTF8String,
//!     successor      [0] UTF8String OPTIONAL }
//! END
//! ```

use crate::der::{self, DerError, Reader};
use thiserror::Error;

/// Dotted form of the label extension's OID.
pub const LABEL_OID: &str = "2.25.116668997575035149051309086194491928148.1";

/// DER content octets of the label extension's OID (without tag and length).
/// The third arc (a UUID as an integer, under `2.25`, ITU-T X.667) does not
/// fit in 64 bits, which is why Caliopen encodes it itself instead of going
/// through libraries that model arcs as `u64`.
pub const LABEL_OID_DER: &[u8] = &[
    0x69, 0x81, 0xaf, 0xc5, 0xd0, 0xec, 0x93, 0xcc, 0x8a, 0x99, 0xc9, 0x95, 0x9b, 0xb8, 0xc4, 0xbe,
    0x95, 0xdc, 0xdc, 0x54, 0x01,
];

/// The label version this module encodes.
pub const LABEL_VERSION: u64 = 1;

/// Longest member id, charter version or successor accepted, in bytes.
pub const MAX_FIELD_LEN: usize = 253;

const TAG_SUCCESSOR: u8 = 0x80; // [0] IMPLICIT, primitive

/// A decoded label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Label structure version (1).
    pub version: u64,
    /// The association's identifier of the member.
    pub member_id: String,
    /// Charter version the member signed.
    pub charter_version: String,
    /// Domain of the member who takes over users' data if this one closes.
    pub successor: Option<String>,
}

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LabelError {
    /// The bytes were not the DER of a `CaliopenLabel`.
    #[error("malformed label: {0}")]
    Der(#[from] DerError),
    /// A field was empty or too long.
    #[error("label field {0} is empty or longer than {MAX_FIELD_LEN} bytes")]
    BadField(&'static str),
}

fn check_field(name: &'static str, v: &str) -> Result<(), LabelError> {
    if v.is_empty() || v.len() > MAX_FIELD_LEN || v.chars().any(char::is_control) {
        return Err(LabelError::BadField(name));
    }
    Ok(())
}

impl Label {
    /// Encodes the label as DER (the extension's `extnValue` content).
    ///
    /// Fails when a field is empty, too long or holds control characters.
    pub fn to_der(&self) -> Result<Vec<u8>, LabelError> {
        check_field("memberId", &self.member_id)?;
        check_field("charterVersion", &self.charter_version)?;
        let mut body = der::integer_u64(self.version);
        der::write_tlv(&mut body, der::TAG_UTF8_STRING, self.member_id.as_bytes());
        der::write_tlv(
            &mut body,
            der::TAG_UTF8_STRING,
            self.charter_version.as_bytes(),
        );
        if let Some(s) = &self.successor {
            check_field("successor", s)?;
            der::write_tlv(&mut body, TAG_SUCCESSOR, s.as_bytes());
        }
        Ok(der::tlv(der::TAG_SEQUENCE, &body))
    }

    /// Decodes a label from DER; trailing bytes and any deviation from DER are refused.
    pub fn from_der(input: &[u8]) -> Result<Self, LabelError> {
        let mut outer = Reader::new(input);
        let seq = outer.read(der::TAG_SEQUENCE)?;
        outer.finish()?;
        let mut r = Reader::new(seq);
        let version = r.read_u64()?;
        let member_id = r.read_utf8(der::TAG_UTF8_STRING)?.to_owned();
        let charter_version = r.read_utf8(der::TAG_UTF8_STRING)?.to_owned();
        let successor = match r.read_optional(TAG_SUCCESSOR)? {
            Some(c) => Some(
                std::str::from_utf8(c)
                    .map_err(|_| DerError::BadUtf8)?
                    .to_owned(),
            ),
            None => None,
        };
        r.finish()?;
        check_field("memberId", &member_id)?;
        check_field("charterVersion", &charter_version)?;
        if let Some(s) = &successor {
            check_field("successor", s)?;
        }
        Ok(Self {
            version,
            member_id,
            charter_version,
            successor,
        })
    }
}

/// Encodes a dotted OID whose arcs fit in 128 bits (content octets only).
/// Returns `None` for a malformed OID string.
pub fn encode_oid(dotted: &str) -> Option<Vec<u8>> {
    let arcs: Vec<u128> = dotted
        .split('.')
        .map(|a| a.parse::<u128>().ok())
        .collect::<Option<_>>()?;
    // X.690 §8.19.4: the first arc is 0, 1 or 2, and under 0 and 1 the
    // second is below 40 (so that X * 40 + Y can be split again).
    if arcs.len() < 2 || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] >= 40) {
        return None;
    }
    let mut out = Vec::new();
    // X.690 §8.19.4: the first two arcs make one subidentifier, X * 40 + Y.
    let first = arcs[0].checked_mul(40)?.checked_add(arcs[1])?;
    for arc in std::iter::once(first).chain(arcs[2..].iter().copied()) {
        // X.690 §8.19.2: base 128, big-endian, bit 8 set on every octet but
        // the last, in the fewest octets (never a leading 0x80).
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest != 0 {
            groups.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(successor: Option<&str>) -> Label {
        Label {
            version: LABEL_VERSION,
            member_id: "alpha-hosting".into(),
            charter_version: "1.0".into(),
            successor: successor.map(str::to_owned),
        }
    }

    #[test]
    fn oid_constant_matches_its_dotted_form() {
        assert_eq!(encode_oid(LABEL_OID).unwrap(), LABEL_OID_DER);
        assert_eq!(
            encode_oid("1.2.840.10045.2.1").unwrap(),
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]
        );
        assert!(encode_oid("3.1").is_none());
        assert!(encode_oid("1.40").is_none());
        assert!(encode_oid("1.x").is_none());
    }

    #[test]
    fn round_trip_with_and_without_successor() {
        for l in [sample(None), sample(Some("beta.test"))] {
            let der = l.to_der().unwrap();
            assert_eq!(Label::from_der(&der).unwrap(), l);
        }
    }

    #[test]
    fn known_encoding() {
        let der = sample(Some("b.t")).to_der().unwrap();
        let mut want = vec![0x30, 28, 0x02, 0x01, 0x01, 0x0c, 13];
        want.extend_from_slice(b"alpha-hosting");
        want.extend_from_slice(&[0x0c, 3]);
        want.extend_from_slice(b"1.0");
        want.extend_from_slice(&[0x80, 3]);
        want.extend_from_slice(b"b.t");
        assert_eq!(der, want);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut der = sample(None).to_der().unwrap();
        der.push(0);
        assert!(matches!(
            Label::from_der(&der),
            Err(LabelError::Der(DerError::TrailingBytes(1)))
        ));
    }

    #[test]
    fn every_truncation_is_refused() {
        let der = sample(Some("beta.test")).to_der().unwrap();
        for cut in 0..der.len() {
            assert!(Label::from_der(&der[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let good = sample(Some("beta.test")).to_der().unwrap();
        // extra element inside the sequence
        let mut inner = good[2..].to_vec();
        inner.extend_from_slice(&[0x0c, 1, b'x']);
        assert!(Label::from_der(&der::tlv(0x30, &inner)).is_err());
        // wrong outer tag
        let mut wrong = good.clone();
        wrong[0] = 0x31;
        assert!(Label::from_der(&wrong).is_err());
        // invalid UTF-8 in memberId
        let mut bad = good.clone();
        bad[7] = 0xff;
        assert!(matches!(
            Label::from_der(&bad),
            Err(LabelError::Der(DerError::BadUtf8))
        ));
        // empty member id
        let empty = Label {
            member_id: String::new(),
            ..sample(None)
        };
        assert!(empty.to_der().is_err());
        assert!(Label::from_der(&[]).is_err());
        assert!(Label::from_der(&[0x30, 0x00]).is_err());
    }

    #[test]
    fn every_single_byte_corruption_is_an_error_or_a_valid_label() {
        // No corruption may panic; any accepted result must re-encode to itself.
        let good = sample(Some("beta.test")).to_der().unwrap();
        for i in 0..good.len() {
            for v in [0x00u8, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(l) = Label::from_der(&b) {
                    assert_eq!(l.to_der().unwrap(), b);
                }
            }
        }
    }
}

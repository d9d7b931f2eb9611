//! The member certificate profile (DESIGN.md §3), encoded here rather than
//! through rcgen because the label's OID has an arc wider than 64 bits.
//!
//! Profile: v3, random positive 128-bit serial, ECDSA-with-SHA256 by the root,
//! subject CN = first domain and O = member id, explicit validity,
//! basicConstraints CA:FALSE (critical), keyUsage digitalSignature (critical),
//! EKU serverAuth + clientAuth, SAN dNSName for every domain, SKI, AKI, and
//! the non-critical Caliopen label.

use crate::error::{CaError, Result};
use caliopen_proto::der::{self, tlv};
use caliopen_proto::label::{Label, LABEL_OID_DER};
use time::OffsetDateTime;

const OID_ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23];
const OID_KP_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const OID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Everything that goes into one member certificate.
#[derive(Debug, Clone)]
pub(crate) struct MemberCertSpec<'a> {
    /// Serial number magnitude (big-endian, positive).
    pub serial: &'a [u8],
    /// DER of the issuer's subject Name (copied from the root certificate).
    pub issuer_name_der: &'a [u8],
    /// The root's subject key identifier.
    pub issuer_key_id: &'a [u8],
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The member's SubjectPublicKeyInfo (DER, from its CSR).
    pub spki_der: &'a [u8],
    /// The member's subjectPublicKey bits (for the SKI).
    pub public_key_bits: &'a [u8],
    /// Normalized mail domains (SAN dNSName); the first is the subject CN.
    pub domains: &'a [String],
    /// The label.
    pub label: &'a Label,
}

fn oid(content: &[u8]) -> Vec<u8> {
    tlv(der::TAG_OID, content)
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(der::TAG_SEQUENCE, &parts.concat())
}

/// RFC 5280 §4.1 Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT
/// FALSE, extnValue OCTET STRING }.
fn extension(id: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let mut body = oid(id);
    // DER leaves out a DEFAULT value (X.690 §11.5), so `critical` is only
    // written when true, and TRUE is 0xFF (§11.1).
    if critical {
        body.extend_from_slice(&[der::TAG_BOOLEAN, 0x01, 0xff]);
    }
    der::write_tlv(&mut body, der::TAG_OCTET_STRING, value);
    tlv(der::TAG_SEQUENCE, &body)
}

/// RFC 5280 Time: UTCTime through 2049, GeneralizedTime from 2050
/// (§4.1.2.5), both in UTC ("Z") with seconds and no fraction (§4.1.2.5.1,
/// §4.1.2.5.2).
fn x509_time(t: OffsetDateTime) -> Vec<u8> {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (y, mo, d, h, mi, s) = (
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    if (1950..2050).contains(&y) {
        let txt = format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100);
        tlv(der::TAG_UTC_TIME, txt.as_bytes())
    } else {
        let txt = format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z");
        tlv(der::TAG_GENERALIZED_TIME, txt.as_bytes())
    }
}

/// Subject key identifier: SHA-256 of the subjectPublicKey bits, truncated
/// to 160 bits (RFC 7093 §2 method 1).
pub fn key_identifier(public_key_bits: &[u8]) -> Vec<u8> {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key_bits);
    d.as_ref()[..20].to_vec()
}

/// Builds the DER TBSCertificate of a member certificate.
pub(crate) fn tbs_certificate(spec: &MemberCertSpec<'_>) -> Result<Vec<u8>> {
    let first = spec
        .domains
        .first()
        .ok_or_else(|| CaError::BadInput("a member certificate needs a domain".into()))?;
    let label_der = spec
        .label
        .to_der()
        .map_err(|e| CaError::BadInput(e.to_string()))?;

    // RFC 5280 §4.1.2.1: v3 (extensions follow) is 2, in [0] EXPLICIT.
    let version = tlv(0xa0, &der::integer_u64(2));
    // §4.1.2.2: positive, at most 20 octets.
    let serial = der::integer_from_magnitude(spec.serial);
    // §4.1.2.3: the same algorithm as the outer signatureAlgorithm
    // (§4.1.1.2); ecdsa-with-SHA256 has no parameters (RFC 5758 §3.2).
    let sig_alg = seq(&[&oid(OID_ECDSA_WITH_SHA256)]);
    // One attribute per RelativeDistinguishedName, a SET OF one element,
    // so DER's ordering of SET OF (X.690 §11.6) holds by itself.
    let rdn = |id: &[u8], value: &str| {
        tlv(
            der::TAG_SET,
            &seq(&[&oid(id), &tlv(der::TAG_UTF8_STRING, value.as_bytes())]),
        )
    };
    let subject = seq(&[&rdn(OID_CN, first), &rdn(OID_O, &spec.label.member_id)]);
    let validity = seq(&[&x509_time(spec.not_before), &x509_time(spec.not_after)]);

    // §4.2.1.6: each domain a dNSName, [2] IMPLICIT IA5String.
    let san: Vec<u8> = spec
        .domains
        .iter()
        .flat_map(|d| tlv(0x82, d.as_bytes()))
        .collect();
    let eku = seq(&[&oid(OID_KP_SERVER_AUTH), &oid(OID_KP_CLIENT_AUTH)]);
    let ski = key_identifier(spec.public_key_bits);
    let exts = [
        // §4.2.1.9: cA DEFAULT FALSE, so an empty SEQUENCE: not a CA.
        extension(OID_BASIC_CONSTRAINTS, true, &seq(&[])),
        // §4.2.1.3 (critical, as it SHOULD be): BIT STRING, 7 unused bits,
        // digitalSignature (bit 0); DER drops the trailing zero bits of a
        // named bit list (X.690 §11.2.2).
        extension(
            OID_KEY_USAGE,
            true,
            &[der::TAG_BIT_STRING, 0x02, 0x07, 0x80],
        ),
        // §4.2.1.12: the mesh's TLS is mutual, so both purposes.
        extension(OID_EXT_KEY_USAGE, false, &eku),
        extension(OID_SAN, false, &tlv(der::TAG_SEQUENCE, &san)),
        // §4.2.1.2: see `key_identifier`.
        extension(OID_SKI, false, &tlv(der::TAG_OCTET_STRING, &ski)),
        // §4.2.1.1: keyIdentifier [0] IMPLICIT, the root's SKI.
        extension(OID_AKI, false, &seq(&[&tlv(0x80, spec.issuer_key_id)])),
        extension(LABEL_OID_DER, false, &label_der),
    ]
    .concat();
    // §4.1.2.9: [3] EXPLICIT Extensions, each at most once (§4.2).
    let extensions = tlv(0xa3, &tlv(der::TAG_SEQUENCE, &exts));

    // §4.1.2.4: the issuer is the root's subject as the root encodes it,
    // so name chaining (§6.1.3 (a)(4)) compares equal bytes.
    Ok(seq(&[
        &version,
        &serial,
        &sig_alg,
        spec.issuer_name_der,
        &validity,
        &subject,
        spec.spki_der,
        &extensions,
    ]))
}

/// Wraps a TBSCertificate and its ECDSA-with-SHA256 signature (DER) into a Certificate.
pub(crate) fn assemble_certificate(tbs: &[u8], signature: &[u8]) -> Vec<u8> {
    // RFC 5280 §4.1.1.3: the signature value is a BIT STRING (X.690 §8.6.2:
    // its first octet counts the unused bits).
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(signature);
    seq(&[
        tbs,
        &seq(&[&oid(OID_ECDSA_WITH_SHA256)]),
        &tlv(der::TAG_BIT_STRING, &bits),
    ])
}

/// The Caliopen label a certificate carries, if it carries a readable one.
pub(crate) fn label_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<Label> {
    cert.extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == LABEL_OID_DER)
        .and_then(|e| Label::from_der(e.value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let t = time::macros::datetime!(2049-12-31 23:59:59 UTC);
        assert_eq!(x509_time(t), tlv(der::TAG_UTC_TIME, b"491231235959Z"));
        let t = time::macros::datetime!(2050-01-01 00:00:00 UTC);
        assert_eq!(
            x509_time(t),
            tlv(der::TAG_GENERALIZED_TIME, b"20500101000000Z")
        );
    }
}

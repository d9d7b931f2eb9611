//! Reading a member's certificate signing request: PEM or DER, any origin
//! (our instance, `openssl req`), checked strictly before anything is issued.

use crate::error::{CaError, Result};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Largest CSR file accepted, in bytes.
pub const MAX_CSR_LEN: usize = 64 * 1024;

/// What the association takes from a verified CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInfo {
    /// DER of the SubjectPublicKeyInfo, copied verbatim into the certificate.
    pub spki_der: Vec<u8>,
    /// The subjectPublicKey bits (for the subject key identifier).
    pub public_key_bits: Vec<u8>,
    /// Requested DNS names, lowercased, deduplicated, in request order.
    pub dns_names: Vec<String>,
}

/// Parses a PEM (or DER) CSR, verifies its self-signature and applies the
/// association's request policy: no CA or certificate-signing request, at
/// least one valid DNS SAN, no wildcard.
pub fn parse_csr(input: &[u8]) -> Result<CsrInfo> {
    let bad = |m: &str| CaError::BadInput(format!("invalid CSR: {m}"));
    if input.is_empty() {
        return Err(bad("empty input"));
    }
    if input.len() > MAX_CSR_LEN {
        return Err(bad(&format!("larger than {MAX_CSR_LEN} bytes")));
    }
    let der = if input.starts_with(&[0x30]) {
        input.to_vec()
    } else {
        let text = std::str::from_utf8(input).map_err(|_| bad("neither PEM text nor DER"))?;
        let block = single_pem_block(text)?;
        match block.tag() {
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => block.into_contents(),
            other => {
                return Err(bad(&format!(
                    "PEM block is {other:?}, not a CERTIFICATE REQUEST"
                )))
            }
        }
    };
    // RFC 2986 §4.2: CertificationRequest ::= SEQUENCE {
    // certificationRequestInfo, signatureAlgorithm, signature }.
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| bad(&format!("malformed DER ({e})")))?;
    if !rest.is_empty() {
        return Err(bad(&format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    // RFC 2986 §3: the subject signs its CertificationRequestInfo with the
    // private key of the public key it asks to have certified, so a valid
    // signature is its proof of possession.
    csr.verify_signature()
        .map_err(|e| bad(&format!("signature does not verify ({e})")))?;

    // The extensions asked for: the extensionRequest attribute (PKCS #9,
    // RFC 2985 §5.4.2) among RFC 2986 §4.1's attributes. Only the DNS names
    // are taken; the certificate's other extensions are the association's
    // profile (`member_cert.rs`), whatever the request says.
    let mut dns_names: Vec<String> = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                // A member is an end entity (RFC 5280 §4.2.1.9, §4.2.1.3).
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CaError::Refused(
                        "CSR refused: it asks for a CA certificate (basicConstraints CA:TRUE)"
                            .into(),
                    ))
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(CaError::Refused(
                        "CSR refused: it asks for keyCertSign/cRLSign key usage".into(),
                    ))
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => {
                                let d = normalize_domain(d)?;
                                if !dns_names.contains(&d) {
                                    dns_names.push(d);
                                }
                            }
                            other => {
                                return Err(bad(&format!(
                                    "only DNS names are allowed in subjectAltName, found {other}"
                                )))
                            }
                        }
                    }
                }
                ParsedExtension::ParseError { error } => {
                    return Err(bad(&format!("malformed requested extension ({error})")))
                }
                _ => {}
            }
        }
    }
    if dns_names.is_empty() {
        return Err(bad(
            "no DNS subjectAltName: the request must name the mail domains the instance serves",
        ));
    }
    // RFC 2986 §4.1 subjectPKInfo, copied as is into the certificate
    // (RFC 5280 §4.1.2.7).
    let spki = &csr.certification_request_info.subject_pki;
    Ok(CsrInfo {
        spki_der: spki.raw.to_vec(),
        public_key_bits: spki.subject_public_key.data.to_vec(),
        dns_names,
    })
}

/// The one PEM block `text` holds, with nothing but whitespace around it.
///
/// `pem::parse` alone takes the first block and ignores whatever follows, so
/// a CSR followed by junk, or by a second CSR, would be read as the first
/// one: the request is refused instead, so that what is signed is exactly
/// what was sent (RFC 7468 §2 allows only whitespace outside the
/// encapsulation boundaries, and §5.1 one structure per label).
fn single_pem_block(text: &str) -> Result<pem::Pem> {
    let bad = |m: &str| CaError::BadInput(format!("invalid CSR: {m}"));
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let begins = t.matches("-----BEGIN ").count();
    if begins > 1 {
        return Err(bad(&format!(
            "{begins} PEM blocks; exactly one certificate request is accepted"
        )));
    }
    if begins == 1 && !t.starts_with("-----BEGIN ") {
        return Err(bad("text before the PEM block"));
    }
    let block = pem::parse(t).map_err(|e| bad(&format!("unreadable PEM ({e})")))?;
    let end = format!("-----END {}-----", block.tag());
    match t.find(&end) {
        Some(at) if at + end.len() == t.len() => Ok(block),
        Some(at) => Err(bad(&format!(
            "{} trailing bytes after the PEM block",
            t.len() - at - end.len()
        ))),
        None => Err(bad("PEM block without its END line")),
    }
}

/// Lowercases and checks a mail domain: LDH labels of 1–63 bytes, at least two
/// labels, 253 bytes at most, no wildcard, no trailing dot (RFC 1035 §2.3.1
/// as relaxed by RFC 1123 §2.1 to allow a leading digit; §2.3.4 limits a
/// name to 255 octets on the wire, 253 characters written out).
pub fn normalize_domain(d: &str) -> Result<String> {
    let bad = || CaError::BadInput(format!("invalid domain name {d:?}"));
    let d = d.to_ascii_lowercase();
    if d.is_empty() || d.len() > 253 || !d.contains('.') {
        return Err(bad());
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized_and_checked() {
        assert_eq!(normalize_domain("Alpha.Test").unwrap(), "alpha.test");
        for bad in [
            "",
            "localhost",
            "*.a.test",
            "a..test",
            "-a.test",
            "a.test.",
            "a_b.test",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_refused_with_a_message() {
        for input in [
            &b""[..],
            b"\x00\x01\x02",
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            b"\x30\x03\x02\x01",
            b"hello",
        ] {
            let e = parse_csr(input).unwrap_err().to_string();
            assert!(e.starts_with("invalid CSR"), "{e}");
        }
    }

    fn csr_pem() -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let req = rcgen::CertificateParams::new(vec!["alpha.test".to_owned()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr");
        (req.pem().expect("pem"), req.der().to_vec())
    }

    #[test]
    fn exactly_one_request_with_only_whitespace_around_it() {
        let (pem, der) = csr_pem();
        assert!(parse_csr(pem.as_bytes()).is_ok());
        assert!(parse_csr(format!("\n \t{pem}\r\n\n").as_bytes()).is_ok());
        assert!(parse_csr(pem.trim_end().as_bytes()).is_ok());
        assert!(parse_csr(&der).is_ok());
        let (other, _) = csr_pem();
        let cases = [
            (format!("{pem}junk"), "trailing"),
            (format!("{pem}\n\x00"), "trailing"),
            (format!("{pem}{other}"), "2 PEM blocks"),
            (format!("{pem}\n{pem}"), "2 PEM blocks"),
            (format!("note: {pem}"), "before the PEM block"),
            (
                pem.replace(
                    "-----END CERTIFICATE REQUEST-----",
                    "-----END CERTIFICATE REQUEST-----x",
                ),
                "trailing",
            ),
        ];
        for (input, needle) in &cases {
            let e = parse_csr(input.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("invalid CSR: "), "{e}");
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
        let mut two = der.clone();
        two.extend_from_slice(&der);
        let mut junk = der;
        junk.push(0);
        for input in [two, junk] {
            let e = parse_csr(&input).unwrap_err().to_string();
            assert!(e.contains("trailing bytes"), "{e}");
        }
    }
}

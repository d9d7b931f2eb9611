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
        let block = pem::parse(text).map_err(|e| bad(&format!("unreadable PEM ({e})")))?;
        match block.tag() {
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => block.into_contents(),
            other => {
                return Err(bad(&format!(
                    "PEM block is {other:?}, not a CERTIFICATE REQUEST"
                )))
            }
        }
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| bad(&format!("malformed DER ({e})")))?;
    if !rest.is_empty() {
        return Err(bad(&format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|e| bad(&format!("signature does not verify ({e})")))?;

    let mut dns_names: Vec<String> = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
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
    let spki = &csr.certification_request_info.subject_pki;
    Ok(CsrInfo {
        spki_der: spki.raw.to_vec(),
        public_key_bits: spki.subject_public_key.data.to_vec(),
        dns_names,
    })
}

/// Lowercases and checks a mail domain: LDH labels of 1–63 bytes, at least two
/// labels, 253 bytes at most, no wildcard, no trailing dot.
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
}

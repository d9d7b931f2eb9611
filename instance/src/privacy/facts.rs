//! From a stored message to [`MessageFacts`]: the delivery record plus what
//! the message itself shows (MIME structure, Autocrypt, Received hops,
//! DKIM signature). What the contact book knows is added by
//! [`super::with_contact`].

use super::{AuthResult, Crypto, MessageFacts, Path};
use crate::mail::{AutocryptKey, MessageMeta, Via};
use mail_parser::{MessageParser, MimeHeaders};

/// Parses a message with mail-parser, turning a panic inside the parser
/// into "not parsable" (mail-parser 0.11.9 panics on some malformed nested
/// multiparts, found by fuzzing; such a message must still be stored and
/// listed). The parser keeps no state across calls.
pub fn parse_guarded(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| MessageParser::default().parse(raw)).unwrap_or_else(|_| {
        tracing::warn!(
            size = raw.len(),
            "mail-parser panicked on a message; read as unstructured"
        );
        None
    })
}

/// What one message tells about its author, for the contact book.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correspondence {
    /// Normalised author address (`From:`, else the envelope sender).
    pub author: Option<String>,
    /// Display name of the author.
    pub author_name: String,
    /// The author's Autocrypt key, when the header names the author.
    pub autocrypt: Option<AutocryptKey>,
    /// Encrypted end to end.
    pub encrypted: bool,
    /// Signed end to end.
    pub signed: bool,
}

/// Largest Autocrypt `keydata` remembered (base64 characters).
pub(super) const MAX_KEYDATA: usize = 64 * 1024;

/// Parses an Autocrypt header value (`addr=…; prefer-encrypt=mutual; keydata=…`).
/// Returns (normalised addr, mutual, keydata without whitespace).
pub fn parse_autocrypt(value: &str) -> Option<(String, bool, String)> {
    let mut addr = None;
    let mut mutual = false;
    let mut keydata = None;
    for part in value.split(';') {
        let (k, v) = part.split_once('=')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "addr" => addr = crate::privacy::public::normalise_address(v.trim()),
            "prefer-encrypt" => mutual = v.trim().eq_ignore_ascii_case("mutual"),
            "keydata" => {
                let kd: String = v.chars().filter(|c| !c.is_whitespace()).collect();
                let b64 = kd
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                if kd.is_empty() || kd.len() > MAX_KEYDATA || !b64 {
                    return None;
                }
                keydata = Some(kd);
            }
            // Unknown non-critical attributes start with '_' and are ignored;
            // an unknown critical one makes the header invalid (Autocrypt 1.1 §2.1).
            other if other.starts_with('_') => {}
            _ => return None,
        }
    }
    Some((addr?, mutual, keydata?))
}

fn header_text(raw: &[u8], h: &mail_parser::Header<'_>) -> String {
    String::from_utf8_lossy(
        raw.get(h.offset_start() as usize..h.offset_end() as usize)
            .unwrap_or_default(),
    )
    .into_owned()
}

/// What `raw` (envelope sender `mail_from`) tells about its author.
pub fn correspondence_of(raw: &[u8], mail_from: &str, received_at: i64) -> Correspondence {
    correspondence_and_thread(raw, mail_from, received_at).0
}

/// [`correspondence_of`] and the message's threading facts, from one parse
/// (what a delivery needs).
pub fn correspondence_and_thread(
    raw: &[u8],
    mail_from: &str,
    received_at: i64,
) -> (Correspondence, crate::mail::thread::ThreadFacts) {
    let Some(msg) = parse_guarded(raw) else {
        let c = Correspondence {
            author: crate::privacy::public::normalise_address(mail_from),
            ..Default::default()
        };
        return (c, Default::default());
    };
    let thread = crate::mail::thread::facts_of(&msg);
    (correspondence_in(&msg, raw, mail_from, received_at), thread)
}

fn correspondence_in(
    msg: &mail_parser::Message<'_>,
    raw: &[u8],
    mail_from: &str,
    received_at: i64,
) -> Correspondence {
    let mut c = Correspondence::default();
    if let Some(a) = msg.from().and_then(|f| f.first()) {
        c.author = a
            .address()
            .and_then(crate::privacy::public::normalise_address);
        c.author_name = a.name().unwrap_or_default().chars().take(200).collect();
    }
    if c.author.is_none() {
        c.author = crate::privacy::public::normalise_address(mail_from);
    }
    for h in msg.headers() {
        if h.name().eq_ignore_ascii_case("autocrypt") {
            if let Some((addr, mutual, keydata)) = parse_autocrypt(&header_text(raw, h)) {
                if Some(&addr) == c.author.as_ref() {
                    c.autocrypt = Some(AutocryptKey {
                        key_sha256: hex::encode(crate::privacy::public::address_hash(&keydata)),
                        keydata,
                        prefer_encrypt_mutual: mutual,
                        seen_at: received_at,
                    });
                }
            }
        }
    }
    let (enc, sig) = crypto_of(msg);
    c.encrypted = enc.is_some();
    c.signed = sig.is_some();
    c
}

fn crypto_of(msg: &mail_parser::Message<'_>) -> (Option<Crypto>, Option<Crypto>) {
    let (mut enc, mut sig) = (None, None);
    if let Some(ct) = msg.content_type() {
        let ctype = ct.ctype().to_ascii_lowercase();
        let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        let protocol = ct
            .attribute("protocol")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let smime_type = ct
            .attribute("smime-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        match (ctype.as_str(), sub.as_str()) {
            ("multipart", "encrypted") if protocol.contains("pgp-encrypted") => {
                enc = Some(Crypto::PgpMime)
            }
            ("multipart", "signed") if protocol.contains("pgp-signature") => {
                sig = Some(Crypto::PgpMime)
            }
            ("multipart", "signed") if protocol.contains("pkcs7-signature") => {
                sig = Some(Crypto::SMime)
            }
            ("application", "pkcs7-mime") | ("application", "x-pkcs7-mime") => {
                if smime_type.contains("signed-data") {
                    sig = Some(Crypto::SMime);
                } else {
                    enc = Some(Crypto::SMime);
                }
            }
            _ => {}
        }
    }
    if enc.is_none() {
        let inline = msg
            .body_text(0)
            .is_some_and(|t| t.trim_start().starts_with("-----BEGIN PGP MESSAGE-----"));
        if inline {
            enc = Some(Crypto::PgpInline);
        }
    }
    (enc, sig)
}

/// The facts of a stored message and its bytes.
pub fn facts_of(meta: &MessageMeta, raw: &[u8]) -> MessageFacts {
    let path = match meta.via {
        Via::Mesh => Path::Mesh,
        Via::Smtp => Path::Smtp,
        Via::Local => Path::Local,
    };
    let mut f = MessageFacts {
        path,
        inbound_tls: meta.transport.tls_version.clone(),
        dkim: AuthResult::None,
        spf: AuthResult::None,
        dmarc: AuthResult::None,
        encrypted: None,
        signed: None,
        autocrypt: false,
        autocrypt_mutual: false,
        external_hops: 0,
        known_contact: false,
        contact_has_key: false,
        sender_public_level: None,
        junk: meta.transport.junk.clone(),
    };
    let Some(msg) = parse_guarded(raw) else {
        return f;
    };
    let author = msg
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(crate::privacy::public::normalise_address);
    for h in msg.headers() {
        let name = h.name().to_ascii_lowercase();
        match name.as_str() {
            "received" => f.external_hops += 1,
            "dkim-signature" => f.dkim = AuthResult::Unchecked,
            "autocrypt" => {
                // Only a key for the author counts (Autocrypt 1.1 §2.3).
                if let Some((addr, mutual, _)) = parse_autocrypt(&header_text(raw, h)) {
                    if Some(&addr) == author.as_ref() {
                        f.autocrypt = true;
                        f.autocrypt_mutual = mutual;
                    }
                }
            }
            _ => {}
        }
    }
    let (enc, sig) = crypto_of(&msg);
    f.encrypted = enc;
    f.signed = sig;
    // Verdicts recorded at reception replace "present, not checked".
    let t = &meta.transport;
    if let Some(r) = crate::sender_auth::auth_result(t.dkim) {
        if r != AuthResult::None || f.dkim == AuthResult::None {
            f.dkim = r;
        }
    }
    if let Some(r) = crate::sender_auth::auth_result(t.spf) {
        f.spf = r;
    }
    if let Some(r) = crate::sender_auth::auth_result(t.dmarc) {
        f.dmarc = r;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::Transport;

    fn meta(via: Via, tls: Option<&str>) -> MessageMeta {
        MessageMeta {
            id: 1,
            owner: "a".into(),
            from: "x@y.test".into(),
            to: vec![],
            subject: String::new(),
            received_at: 0,
            via,
            transport: Transport {
                tls_version: tls.map(str::to_owned),
                ..Default::default()
            },
            size: 0,
            ..Default::default()
        }
    }

    #[test]
    fn structure_is_recognised() {
        let pgp = b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\nReceived: from a\r\nReceived: from b\r\nAutocrypt: addr=x@y.test; prefer-encrypt=mutual; keydata=AAAA\r\nFrom: x@y.test\r\n\r\n--b--\r\n";
        let f = facts_of(&meta(Via::Smtp, Some("TLSv1_3")), pgp);
        assert_eq!(f.encrypted, Some(Crypto::PgpMime));
        assert_eq!(f.external_hops, 2);
        assert!(f.autocrypt && f.autocrypt_mutual);
        let smime = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\nDKIM-Signature: v=1; d=y.test\r\n\r\nAAAA\r\n";
        let f = facts_of(&meta(Via::Mesh, None), smime);
        assert_eq!(f.encrypted, Some(Crypto::SMime));
        assert_eq!(f.dkim, AuthResult::Unchecked);
        assert_eq!(f.path, Path::Mesh);
    }

    #[test]
    fn a_message_that_makes_mail_parser_panic_is_read_as_unstructured() {
        // Found by the privacy_mail fuzz target: a 133-byte nested multipart.
        let raw = b" wit\nContent-Type: multipart; boundary=\"D7F-\n\nTh\0\0h--D7F--7F\nContent-Type:message/rfc822\n\nContent-Type: message/rfc822\nCon\n\n\n--D7F---";
        let f = facts_of(&meta(Via::Smtp, None), raw);
        assert_eq!(f.path, Path::Smtp);
        let c = correspondence_of(raw, "x@y.test", 0);
        assert_eq!(c.author.as_deref(), Some("x@y.test"));
    }

    #[test]
    fn the_corpus_never_breaks_the_index() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/eml");
        let mut n = 0;
        for e in std::fs::read_dir(dir).expect("corpus") {
            let raw = std::fs::read(e.expect("entry").path()).expect("read");
            for via in [Via::Smtp, Via::Mesh, Via::Local] {
                let i = super::super::score_message(&facts_of(&meta(via, Some("TLSv1_2")), &raw));
                assert!(i.total <= 100 && !i.explanation.is_empty());
            }
            n += 1;
        }
        assert!(n >= 50);
    }
}

//! From a stored message to [`MessageFacts`]: the delivery record plus what
//! the message itself shows (MIME structure, Autocrypt, Received hops,
//! DKIM signature). Contacts and public levels are not known yet here.

use super::{AuthResult, Crypto, MessageFacts, Path};
use crate::store::{MessageMeta, Via};
use mail_parser::{MessageParser, MimeHeaders};

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
    };
    let Some(msg) = MessageParser::default().parse(raw) else {
        return f;
    };
    for h in msg.headers() {
        let name = h.name().to_ascii_lowercase();
        match name.as_str() {
            "received" => f.external_hops += 1,
            "dkim-signature" => f.dkim = AuthResult::Unchecked,
            "autocrypt" => {
                f.autocrypt = true;
                let text = String::from_utf8_lossy(
                    raw.get(h.offset_start() as usize..h.offset_end() as usize)
                        .unwrap_or_default(),
                )
                .to_ascii_lowercase();
                f.autocrypt_mutual = text.contains("prefer-encrypt=mutual");
            }
            _ => {}
        }
    }
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
                f.encrypted = Some(Crypto::PgpMime)
            }
            ("multipart", "signed") if protocol.contains("pgp-signature") => {
                f.signed = Some(Crypto::PgpMime)
            }
            ("multipart", "signed") if protocol.contains("pkcs7-signature") => {
                f.signed = Some(Crypto::SMime)
            }
            ("application", "pkcs7-mime") | ("application", "x-pkcs7-mime") => {
                if smime_type.contains("signed-data") {
                    f.signed = Some(Crypto::SMime);
                } else {
                    f.encrypted = Some(Crypto::SMime);
                }
            }
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Transport;

    fn meta(via: Via, tls: Option<&str>) -> MessageMeta {
        MessageMeta {
            id: 1,
            mailbox: "a".into(),
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
        }
    }

    #[test]
    fn structure_is_recognised() {
        let pgp = b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\nReceived: from a\r\nReceived: from b\r\nAutocrypt: addr=x@y.test; prefer-encrypt=mutual; keydata=AAAA\r\n\r\n--b--\r\n";
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

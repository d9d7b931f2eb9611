//! Threads (RFC 8621 §3): a message joins the thread of any message it
//! names in `In-Reply-To` or `References` (or that names it), else the
//! thread of a reply with the same base subject (RFC 5256 §2.1: `Re:`,
//! `Fwd:` and list tags taken off) received within [`SUBJECT_WINDOW`];
//! otherwise it starts one, whose id is its own message id.

/// How far back a reply is matched to its thread by subject alone.
pub(crate) const SUBJECT_WINDOW: i64 = 30 * 24 * 3600;

/// Most message-ids of one message taken into account (a long References
/// chain keeps its last ones: the closest ancestors).
pub(crate) const MAX_REFERENCES: usize = 32;

/// What threading reads from a message's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadFacts {
    /// Its own Message-ID (without angle brackets), when it has one.
    pub message_id: Option<String>,
    /// The Message-IDs it refers to: In-Reply-To, then References.
    pub refers_to: Vec<String>,
    /// The base subject, lowercased ("" when none).
    pub base_subject: String,
    /// True when the subject had a reply or forward prefix, or the
    /// message refers to another: only such messages join by subject.
    pub is_reply: bool,
}

/// Reads the threading facts of a message's headers.
pub(crate) fn facts(raw: &[u8]) -> ThreadFacts {
    match super::parse_headers_guarded(raw) {
        Some(msg) => facts_of(&msg),
        None => ThreadFacts::default(),
    }
}

/// The threading facts of a parsed message.
pub(crate) fn facts_of(msg: &mail_parser::Message<'_>) -> ThreadFacts {
    let clean = |s: &str| {
        let s = s
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        (!s.is_empty() && s.len() <= 998).then(|| s.to_owned())
    };
    let mut refers_to: Vec<String> = Vec::new();
    for v in [msg.in_reply_to(), msg.references()] {
        for id in v.as_text_list().into_iter().flatten() {
            if let Some(id) = clean(id) {
                if !refers_to.contains(&id) {
                    refers_to.push(id);
                }
            }
        }
    }
    if refers_to.len() > MAX_REFERENCES {
        refers_to.drain(..refers_to.len() - MAX_REFERENCES);
    }
    let subject = msg.subject().unwrap_or("");
    let base = msg.thread_name().unwrap_or(subject).trim().to_lowercase();
    let prefixed = base.len() < subject.trim().len();
    ThreadFacts {
        message_id: msg.message_id().and_then(clean),
        is_reply: prefixed || !refers_to.is_empty(),
        refers_to,
        base_subject: base,
    }
}

/// A 64-bit key of a Message-ID or base subject inside an account's index
/// (SHA-256, truncated: collisions at 2^32 ids per account).
pub(crate) fn key_of(s: &str) -> [u8; 8] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    let mut k = [0u8; 8];
    k.copy_from_slice(&d.as_ref()[..8]);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_names_its_parent_and_loses_its_prefix() {
        let f = facts(
            b"Subject: Re: [list] Fwd: Lunch\r\nMessage-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\nReferences: <root@x> <a@x>\r\n\r\n",
        );
        assert_eq!(f.message_id.as_deref(), Some("b@x"));
        assert_eq!(f.refers_to, vec!["a@x".to_owned(), "root@x".to_owned()]);
        assert_eq!(f.base_subject, "lunch");
        assert!(f.is_reply);
    }

    #[test]
    fn a_new_message_is_not_a_reply() {
        let f = facts(b"Subject: Lunch\r\nMessage-ID: <a@x>\r\n\r\nhi\r\n");
        assert!(!f.is_reply);
        assert_eq!(f.base_subject, "lunch");
        assert!(f.refers_to.is_empty());
        assert_eq!(facts(b"no headers at all"), ThreadFacts::default());
    }
}

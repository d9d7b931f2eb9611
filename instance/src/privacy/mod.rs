//! The privacy index (DESIGN.md §6): pure, versioned, deterministic, no I/O.
//!
//! Three dimensions scored 0–100 — **technic** (transport and cryptography),
//! **context** (where the message came from), **comportment** (who the
//! correspondents are) — and a total. Every point comes with an explanation:
//! the feature, its effect, a sentence a person understands. For the same
//! message, mesh > SMTP with TLS > plain SMTP always holds (technic and total).
//!
//! `facts` turns a stored message into [`MessageFacts`]; `score_message`
//! scores them.

mod facts;
mod people;
pub mod public;

pub use facts::{
    correspondence_and_thread, correspondence_of, facts_of, parse_autocrypt, parse_guarded,
    Correspondence,
};
pub use people::{achievements, score_contact, score_user, user_level, Achievement, ContactFacts};

use serde::Serialize;

/// Version of the scoring rules; stored with every index.
pub const ENGINE_VERSION: u32 = 1;

/// How a message travelled to this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// From another labelled member over the mesh.
    Mesh,
    /// By SMTP.
    Smtp,
    /// Within this instance.
    Local,
}

/// Result of a sender authentication check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    /// Verified.
    Pass,
    /// Checked and failed.
    Fail,
    /// Present but not checked (no DNS lookup was made).
    Unchecked,
    /// Absent.
    None,
}

/// End-to-end cryptography found in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crypto {
    /// PGP/MIME (RFC 3156).
    PgpMime,
    /// S/MIME (RFC 8551).
    SMime,
    /// Inline OpenPGP armour in a text body (RFC 4880 §6.2), without PGP/MIME.
    PgpInline,
}

/// Everything the index looks at for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFacts {
    /// Delivery path.
    pub path: Path,
    /// TLS version of the last hop into this instance ("TLSv1_3", "TLSv1_2"…), if any.
    pub inbound_tls: Option<String>,
    /// DKIM.
    pub dkim: AuthResult,
    /// SPF.
    pub spf: AuthResult,
    /// DMARC.
    pub dmarc: AuthResult,
    /// Encrypted end to end.
    pub encrypted: Option<Crypto>,
    /// Signed end to end.
    pub signed: Option<Crypto>,
    /// Autocrypt header present (the sender publishes a key).
    pub autocrypt: bool,
    /// Autocrypt `prefer-encrypt=mutual`.
    pub autocrypt_mutual: bool,
    /// `Received:` hops outside this instance.
    pub external_hops: u32,
    /// The sender is a known contact.
    pub known_contact: bool,
    /// We hold a key for the sender.
    pub contact_has_key: bool,
    /// The sender's public privacy level from the mesh, if known.
    pub sender_public_level: Option<u8>,
    /// Why the sender checks filed it as junk, when they did.
    pub junk: Option<String>,
}

/// Which dimension a feature counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    /// Transport and cryptography.
    Technic,
    /// Origin.
    Context,
    /// Correspondents.
    Comportment,
}

/// One reason a score went up or down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Stable feature id.
    pub feature: &'static str,
    /// Dimension.
    pub dimension: Dimension,
    /// Points added (or removed).
    pub effect: i32,
    /// A sentence a person understands.
    pub text: String,
}

/// The index of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrivacyIndex {
    /// Engine version.
    pub version: u32,
    /// 0–100.
    pub total: u8,
    /// 0–100.
    pub technic: u8,
    /// 0–100.
    pub context: u8,
    /// 0–100.
    pub comportment: u8,
    /// Why.
    pub explanation: Vec<Explanation>,
    /// What would raise it.
    pub hints: Vec<String>,
}

pub(crate) struct Acc {
    pub(crate) items: Vec<Explanation>,
}

impl Acc {
    pub(crate) fn add(
        &mut self,
        feature: &'static str,
        dimension: Dimension,
        effect: i32,
        text: impl Into<String>,
    ) {
        self.items.push(Explanation {
            feature,
            dimension,
            effect,
            text: text.into(),
        });
    }
    pub(crate) fn sum(&self, d: Dimension) -> u8 {
        self.items
            .iter()
            .filter(|e| e.dimension == d)
            .map(|e| e.effect)
            .sum::<i32>()
            .clamp(0, 100) as u8
    }
}

/// Scores a message.
pub fn score_message(f: &MessageFacts) -> PrivacyIndex {
    use Dimension::*;
    let mut a = Acc { items: Vec::new() };
    let mut hints = Vec::new();
    match f.path {
        Path::Mesh => a.add("path.mesh", Technic, 50, "Relayed between two labelled Caliopen members over a mutually authenticated, encrypted QUIC channel."),
        Path::Local => a.add("path.local", Technic, 45, "Never left this instance."),
        Path::Smtp => match f.inbound_tls.as_deref() {
            Some("TLSv1_3") => a.add("path.smtp_tls13", Technic, 30, "Arrived by email encrypted in transit (TLS 1.3) on the last hop; earlier hops are unknown."),
            Some(_) => a.add("path.smtp_tls", Technic, 20, "Arrived by email encrypted in transit (older TLS) on the last hop; earlier hops are unknown."),
            None => {
                a.add("path.smtp_plain", Technic, 0, "Arrived by email in clear text: anyone on the way could read it.");
                hints.push("Ask your correspondent's provider to support STARTTLS, or invite them to a labelled Caliopen instance.".to_owned());
            }
        },
    }
    match f.encrypted {
        Some(Crypto::PgpMime) => a.add(
            "crypto.encrypted_pgp",
            Technic,
            35,
            "Encrypted end to end with OpenPGP: only the recipient can read it.",
        ),
        Some(Crypto::SMime) => a.add(
            "crypto.encrypted_smime",
            Technic,
            35,
            "Encrypted end to end with S/MIME: only the recipient can read it.",
        ),
        Some(Crypto::PgpInline) => a.add(
            "crypto.encrypted_pgp_inline",
            Technic,
            30,
            "Encrypted end to end with inline OpenPGP: the text is protected, attachments and the subject may not be.",
        ),
        None => hints.push(
            "Exchange keys with this correspondent to encrypt your messages end to end.".to_owned(),
        ),
    }
    if f.signed.is_some() {
        a.add(
            "crypto.signed",
            Technic,
            10,
            "Signed by the sender: the content was not altered.",
        );
    }
    match f.dkim {
        AuthResult::Pass => a.add(
            "auth.dkim_pass",
            Technic,
            5,
            "The sender's domain signed it (DKIM verified).",
        ),
        AuthResult::Fail => a.add(
            "auth.dkim_fail",
            Technic,
            -10,
            "A DKIM signature is present but does not verify.",
        ),
        AuthResult::Unchecked => a.add(
            "auth.dkim_unchecked",
            Technic,
            0,
            "A DKIM signature is present (not checked here).",
        ),
        AuthResult::None => {}
    }

    // Context: where it came from.
    match f.path {
        Path::Mesh => a.add(
            "origin.labelled",
            Context,
            50,
            "The sending instance holds the association's label: it signed the charter.",
        ),
        Path::Local => a.add("origin.local", Context, 50, "Written on this instance."),
        Path::Smtp => a.add(
            "origin.internet",
            Context,
            10,
            "Came from the open internet.",
        ),
    }
    if f.external_hops == 0 {
        a.add(
            "origin.direct",
            Context,
            20,
            "No intermediate server is recorded on its way.",
        );
    } else {
        let penalty = (f.external_hops.min(6) as i32) * 5;
        a.add(
            "origin.hops",
            Context,
            20 - penalty,
            format!(
                "It went through {} intermediate server(s); each one could keep a copy.",
                f.external_hops
            ),
        );
    }
    for (name, r) in [("spf", f.spf), ("dmarc", f.dmarc)] {
        match r {
            AuthResult::Pass => a.add(
                if name == "spf" {
                    "auth.spf_pass"
                } else {
                    "auth.dmarc_pass"
                },
                Context,
                10,
                format!(
                    "{} passed: the sending server is allowed by the sender's domain.",
                    name.to_uppercase()
                ),
            ),
            AuthResult::Fail => a.add(
                if name == "spf" {
                    "auth.spf_fail"
                } else {
                    "auth.dmarc_fail"
                },
                Context,
                -15,
                format!("{} failed: the sender may be forged.", name.to_uppercase()),
            ),
            _ => {}
        }
    }

    if let Some(why) = &f.junk {
        a.add(
            "filter.junk",
            Context,
            -10,
            format!("Filed as junk on arrival: {why}."),
        );
    }

    // Comportment: the correspondents.
    if f.known_contact {
        a.add(
            "contact.known",
            Comportment,
            30,
            "You already correspond with this sender.",
        );
    } else {
        a.add(
            "contact.unknown",
            Comportment,
            0,
            "This sender is not among your contacts yet.",
        );
    }
    if f.contact_has_key {
        a.add(
            "contact.key",
            Comportment,
            20,
            "You hold a key for this sender.",
        );
    }
    if f.autocrypt {
        a.add(
            "contact.autocrypt",
            Comportment,
            15,
            "The sender's software publishes an encryption key (Autocrypt).",
        );
        if f.autocrypt_mutual {
            a.add(
                "contact.autocrypt_mutual",
                Comportment,
                5,
                "The sender prefers encrypted replies.",
            );
        }
    }
    if let Some(level) = f.sender_public_level {
        let pts = i32::from(level.min(100)) / 4;
        a.add(
            "contact.public_level",
            Comportment,
            pts,
            format!("The sender's public privacy level is {level}."),
        );
    }
    if f.path == Path::Mesh {
        a.add(
            "contact.labelled",
            Comportment,
            10,
            "The sender uses a labelled Caliopen instance.",
        );
    } else if f.path == Path::Smtp {
        hints.push("Your correspondent is not on a labelled instance: invite them to one to raise this index.".to_owned());
    }

    a.finish(hints)
}

impl Acc {
    /// The index: each dimension is the sum of its effects, clamped to
    /// 0–100; the total weighs technic twice.
    pub(crate) fn finish(self, hints: Vec<String>) -> PrivacyIndex {
        let technic = self.sum(Dimension::Technic);
        let context = self.sum(Dimension::Context);
        let comportment = self.sum(Dimension::Comportment);
        let total =
            ((u32::from(technic) * 2 + u32::from(context) + u32::from(comportment)) / 4) as u8;
        PrivacyIndex {
            version: ENGINE_VERSION,
            total,
            technic,
            context,
            comportment,
            explanation: self.items,
            hints,
        }
    }
}

/// Completes a message's facts with what the contact book knows of its author.
pub fn with_contact(mut f: MessageFacts, c: Option<&crate::mail::ContactRecord>) -> MessageFacts {
    if let Some(c) = c {
        f.known_contact = c.known();
        f.contact_has_key = c.autocrypt.is_some();
        f.sender_public_level = c.public_level.as_ref().map(|l| l.level);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(path: Path, tls: Option<&str>) -> MessageFacts {
        MessageFacts {
            path,
            inbound_tls: tls.map(str::to_owned),
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
            junk: None,
        }
    }

    #[test]
    fn mesh_beats_tls_beats_plain_for_the_same_message() {
        for hops in [0u32, 1, 3, 10] {
            for encrypted in [None, Some(Crypto::PgpMime)] {
                let mk = |p, t| MessageFacts {
                    external_hops: hops,
                    encrypted,
                    ..base(p, t)
                };
                let mesh = score_message(&mk(Path::Mesh, None));
                let tls = score_message(&mk(Path::Smtp, Some("TLSv1_3")));
                let plain = score_message(&mk(Path::Smtp, None));
                assert!(
                    mesh.technic > tls.technic && tls.technic > plain.technic,
                    "{hops} {encrypted:?}"
                );
                assert!(
                    mesh.total > tls.total && tls.total > plain.total,
                    "{hops} {encrypted:?}"
                );
            }
        }
    }

    #[test]
    fn every_point_is_explained() {
        let f = MessageFacts {
            encrypted: Some(Crypto::SMime),
            signed: Some(Crypto::SMime),
            autocrypt: true,
            autocrypt_mutual: true,
            known_contact: true,
            contact_has_key: true,
            sender_public_level: Some(80),
            ..base(Path::Mesh, None)
        };
        let i = score_message(&f);
        let sum = |d: Dimension| {
            i.explanation
                .iter()
                .filter(|e| e.dimension == d)
                .map(|e| e.effect)
                .sum::<i32>()
                .clamp(0, 100)
        };
        assert_eq!(i32::from(i.technic), sum(Dimension::Technic));
        assert_eq!(i32::from(i.context), sum(Dimension::Context));
        assert_eq!(i32::from(i.comportment), sum(Dimension::Comportment));
        assert!(i.explanation.iter().all(|e| !e.text.is_empty()));
        assert!(i.total <= 100);
        // Deterministic.
        assert_eq!(score_message(&f), i);
    }

    #[test]
    fn plain_smtp_explains_itself_and_hints() {
        let i = score_message(&base(Path::Smtp, None));
        assert!(i
            .explanation
            .iter()
            .any(|e| e.feature == "path.smtp_plain" && e.text.contains("clear")));
        assert!(i.hints.iter().any(|h| h.contains("labelled")));
    }
}

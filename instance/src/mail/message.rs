//! A stored message (an `Email` in RFC 8621's words): the facts of its
//! delivery, and its place in the account (mailboxes, keywords, thread,
//! modification sequence).

use super::mailbox::MailboxId;
use serde::{Deserialize, Serialize};

/// How a message reached this instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// From another labelled member, over the mesh.
    Mesh,
    /// By SMTP from the outside world.
    #[default]
    Smtp,
    /// Submitted by a user of this instance (for another of its users, or
    /// the sender's own copy in `sent`).
    Local,
}

/// The result of one sender check (DKIM RFC 6376 §3.9, SPF RFC 7208 §2.6,
/// DMARC RFC 7489 §11.2), recorded with the message under these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Verified.
    Pass,
    /// Checked and wrong (a bad signature, an unauthorised host).
    Fail,
    /// SPF: probably not authorised.
    SoftFail,
    /// Nothing asserted (SPF `?all`, a DKIM signature that could not be judged).
    Neutral,
    /// Nothing to check (no signature, no record).
    None,
    /// A temporary failure (DNS timeout): not judged.
    TempError,
    /// A permanent error in the published record or signature.
    PermError,
}

impl Verdict {
    /// Every verdict, in the order of their codes in binary message
    /// records (`store::record`): append, never reorder.
    pub const ALL: [Verdict; 7] = [
        Verdict::Pass,
        Verdict::Fail,
        Verdict::SoftFail,
        Verdict::Neutral,
        Verdict::None,
        Verdict::TempError,
        Verdict::PermError,
    ];

    /// Its recorded name ("pass", "softfail", …).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::SoftFail => "softfail",
            Verdict::Neutral => "neutral",
            Verdict::None => "none",
            Verdict::TempError => "temperror",
            Verdict::PermError => "permerror",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts about the transport a message came over (inputs of the privacy index).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transport {
    /// HELO/EHLO name given by the client.
    pub helo: String,
    /// Client address.
    pub client: String,
    /// TLS protocol version, when TLS was used.
    pub tls_version: Option<String>,
    /// TLS cipher suite, when TLS was used.
    pub tls_cipher: Option<String>,
    /// Authenticated submitter, on the submission port.
    pub auth_user: Option<String>,
    /// The mesh member it came from.
    pub peer_member: Option<String>,
    /// DKIM verdict, when checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<Verdict>,
    /// SPF verdict of the MAIL FROM (or HELO) identity, when checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<Verdict>,
    /// DMARC verdict of the From: domain, when checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<Verdict>,
    /// Why it was filed as junk on arrival (DMARC quarantine, SPF failure,
    /// a blocklist), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junk: Option<String>,
}

/// One place of a message: a mailbox and the UID it has there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Placement {
    /// The mailbox.
    pub mailbox: MailboxId,
    /// Its UID in that mailbox (never reused there).
    pub uid: u32,
}

/// What is kept about a stored message besides its bytes.
///
/// Records written before the mail core have none of the fields from
/// `placements` on; the store upgrades them at start (see
/// `store::upgrade`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// Message id (unique in the instance; the `id` of `mail list --json`).
    pub id: u64,
    /// Owner: the account's local part.
    #[serde(rename = "mailbox")]
    pub owner: String,
    /// Envelope sender ("" for the null sender).
    pub from: String,
    /// Envelope recipients of this instance.
    pub to: Vec<String>,
    /// Subject header, decoded.
    pub subject: String,
    /// Unix seconds.
    pub received_at: i64,
    /// Path it came by.
    pub via: Via,
    /// Transport facts.
    pub transport: Transport,
    /// Size in bytes.
    pub size: usize,
    /// The mailboxes holding it, with its UID in each (sorted by mailbox).
    #[serde(default)]
    pub placements: Vec<Placement>,
    /// Keywords, normalised (`$seen`, `$flagged`, user keywords; sorted).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Thread id (the id of the thread's first message).
    #[serde(default)]
    pub thread: u64,
    /// The account modification sequence of its last change.
    #[serde(default)]
    pub modseq: u64,
    /// The account modification sequence that created it.
    #[serde(default)]
    pub created_modseq: u64,
    /// Where its bytes are (shared by every copy of one delivery);
    /// `None`: under its own id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<u64>,
}

impl MessageMeta {
    /// The key of its bytes in the blob table.
    pub fn blob_id(&self) -> u64 {
        self.blob.unwrap_or(self.id)
    }

    /// True when it carries `keyword` (normalised).
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|k| k == keyword)
    }

    /// Its UID in `mailbox`, when there.
    pub fn uid_in(&self, mailbox: MailboxId) -> Option<u32> {
        self.placements
            .iter()
            .find(|p| p.mailbox == mailbox)
            .map(|p| p.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_keep_the_names_records_were_written_with() {
        // As releases before the enum wrote them (strings).
        let old = r#"{"helo":"h","client":"c","tls_version":null,"tls_cipher":null,
            "auth_user":null,"peer_member":null,"dkim":"softfail","spf":"temperror",
            "dmarc":"permerror"}"#;
        let t: Transport = serde_json::from_str(old).expect("old record");
        assert_eq!(t.dkim, Some(Verdict::SoftFail));
        assert_eq!(t.spf, Some(Verdict::TempError));
        assert_eq!(t.dmarc, Some(Verdict::PermError));
        for v in Verdict::ALL {
            let json = serde_json::to_string(&v).expect("encode");
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            assert_eq!(serde_json::from_str::<Verdict>(&json).expect("decode"), v);
        }
        assert!(serde_json::from_str::<Verdict>("\"maybe\"").is_err());
    }
}

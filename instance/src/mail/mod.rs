//! The mail model: accounts' mailboxes, messages with keywords and
//! threads, quotas, aliases — the semantics of JMAP Mail (RFC 8621), so
//! that IMAP and JMAP both map onto it — and the contact book.
//!
//! This module holds the types and rules only; the store (`crate::store`)
//! keeps them durably, and the router (`crate::delivery`) places mail in
//! them. It depends on neither.
//!
//! Identity for IMAP: each mailbox has a `UIDVALIDITY` and gives UIDs from
//! `uid_next` up, never reused; each account has one modification sequence
//! (`MODSEQ`, JMAP's `state`), bumped by every change, and each message the
//! modseq of its last change, so that "what changed since S" is a range
//! read. A message removed from the account leaves a [`Tombstone`].

pub(crate) mod address;
pub(crate) mod book;
pub(crate) mod mailbox;
pub(crate) mod message;
pub(crate) mod prefs;
pub(crate) mod thread;

pub use book::{
    contact_key, AutocryptKey, ContactRecord, Counters, PathClass, SeenLevel, UserStats,
};
pub use mailbox::{Mailbox, MailboxId, Role};
pub use message::{MessageMeta, Placement, Transport, Verdict, Via};

use serde::{Deserialize, Serialize};

/// Parses a message's headers, or `None` when mail-parser panics on them
/// (a parser bug must not take a delivery down: the message is then read
/// as unstructured).
pub fn parse_headers_guarded(raw: &[u8]) -> Option<mail_parser::Message<'_>> {
    std::panic::catch_unwind(|| mail_parser::MessageParser::default().parse_headers(raw))
        .unwrap_or_else(|_| {
            tracing::warn!(
                size = raw.len(),
                "mail-parser panicked on headers; read as unstructured"
            );
            None
        })
}

/// An account's limits. `0` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    /// Bytes of stored messages.
    pub bytes: u64,
    /// Stored messages.
    pub messages: u64,
}

/// An account's use of its quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of the messages in the account (each message once, whatever
    /// the number of mailboxes holding it).
    pub bytes: u64,
    /// Messages in the account.
    pub messages: u64,
}

/// An account's quota: its use, and the limits that apply to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// What is used.
    pub used: Usage,
    /// The limits in force (the account's own, else the default).
    pub limits: QuotaLimits,
    /// True when the account has limits of its own.
    pub overridden: bool,
}

impl Quota {
    /// True when no new message may be stored: a limit is reached.
    pub fn full(&self) -> bool {
        (self.limits.bytes > 0 && self.used.bytes >= self.limits.bytes)
            || (self.limits.messages > 0 && self.used.messages >= self.limits.messages)
    }

    /// True when a message of `size` bytes would go over a limit.
    pub fn would_exceed(&self, size: u64) -> bool {
        self.would_exceed_with(1, size)
    }

    /// True when `count` messages of `bytes` bytes in all would go over a limit.
    pub fn would_exceed_with(&self, count: u64, bytes: u64) -> bool {
        (self.limits.bytes > 0 && self.used.bytes.saturating_add(bytes) > self.limits.bytes)
            || (self.limits.messages > 0
                && self.used.messages.saturating_add(count) > self.limits.messages)
    }
}

/// What remains of a message taken out of mailboxes, for "changes since":
/// the UIDs gone (QRESYNC's VANISHED) and, when it left the account,
/// the message itself (JMAP's `destroyed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The message id.
    pub id: u64,
    /// The mailboxes it left, with the UID it had in each.
    pub removed: Vec<Placement>,
    /// True when it left the account (no mailbox held it any more).
    pub destroyed: bool,
    /// The modseq of the change.
    pub modseq: u64,
    /// Unix seconds of the change.
    pub at: i64,
}

/// What changed in an account after a modseq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Messages created after it (their current state).
    pub created: Vec<MessageMeta>,
    /// Messages that existed at it and changed since (current state).
    pub updated: Vec<MessageMeta>,
    /// Messages taken out of mailboxes since (destroyed or moved).
    pub removed: Vec<Tombstone>,
    /// Mailboxes created, renamed, or whose counts changed, since.
    pub mailboxes_changed: Vec<MailboxId>,
    /// Mailboxes deleted since.
    pub mailboxes_destroyed: Vec<MailboxId>,
    /// The state these changes lead to (the highest modseq included).
    pub new_state: u64,
    /// True when more changes follow `new_state` (ask again from it).
    pub more: bool,
}

/// Where a delivery puts a message for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The account.
    pub owner: String,
    /// Its addresses in the envelope.
    pub to: Vec<String>,
    /// The mailbox.
    pub mailbox: MailboxId,
    /// Keywords it starts with (normalised).
    pub keywords: Vec<String>,
    /// True for mail the account received (counted as such in its
    /// counters and contact book); false for its own copy in `sent`.
    pub received: bool,
}

impl Delivery {
    /// Mail received by `owner` at `to`, into the inbox.
    pub fn inbox(owner: impl Into<String>, to: Vec<String>) -> Self {
        Self {
            owner: owner.into(),
            to,
            mailbox: Role::Inbox.id(),
            keywords: Vec::new(),
            received: true,
        }
    }

    /// The sender's own copy, in `sent`, read.
    pub fn sent_copy(owner: impl Into<String>, to: Vec<String>) -> Self {
        Self {
            owner: owner.into(),
            to,
            mailbox: Role::Sent.id(),
            keywords: vec![mailbox::SEEN.to_owned()],
            received: false,
        }
    }
}

/// Why a change to an account was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// No such account.
    #[error("no user {0:?}")]
    NoAccount(String),
    /// No such mailbox.
    #[error("no such mailbox")]
    NoMailbox,
    /// No such message in the account.
    #[error("no message {0:x} in this account")]
    NoMessage(u64),
    /// A mailbox by that name exists.
    #[error("a mailbox named {0:?} exists")]
    NameTaken(String),
    /// A bad mailbox name.
    #[error(transparent)]
    BadName(#[from] mailbox::NameError),
    /// A bad keyword.
    #[error(transparent)]
    BadKeyword(#[from] mailbox::KeywordError),
    /// The six special-use mailboxes cannot be deleted or renamed away.
    #[error("the {0} mailbox cannot be deleted")]
    RoleMailbox(&'static str),
    /// A mailbox with children cannot be deleted (delete them first).
    #[error("mailbox {0:?} has child mailboxes")]
    HasChildren(String),
    /// Too many mailboxes or keywords.
    #[error("{0}")]
    Limit(String),
    /// Over quota.
    #[error("over quota")]
    OverQuota,
    /// The changes asked for are older than the tombstones kept.
    #[error("changes since {0} are no longer known (state too old)")]
    CannotCalculate(u64),
}

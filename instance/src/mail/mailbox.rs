//! Mailboxes (folders) and keywords.
//!
//! Every account has the six special-use mailboxes of RFC 6154 / RFC 8621
//! under fixed ids (1–6), made with the account; user mailboxes get ids
//! from [`FIRST_USER_MAILBOX`] up, never reused, so that a mailbox deleted
//! and made again under the same name is a new mailbox with a new
//! `UIDVALIDITY`.

use serde::{Deserialize, Serialize};

/// A mailbox id, unique and never reused within an account.
pub type MailboxId = u32;

/// The first id of a user-created mailbox.
pub(crate) const FIRST_USER_MAILBOX: MailboxId = 16;

/// Longest mailbox name, in bytes (the whole `/`-separated path).
pub(crate) const MAX_MAILBOX_NAME: usize = 255;

/// Most mailboxes in one account.
pub(crate) const MAX_MAILBOXES: usize = 1_000;

/// Longest keyword, in bytes.
pub(crate) const MAX_KEYWORD: usize = 64;

/// Most keywords on one message.
pub(crate) const MAX_KEYWORDS: usize = 64;

/// A special-use role (RFC 8621 §2, RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Where new mail arrives.
    Inbox,
    /// Copies of what the user sent.
    Sent,
    /// Unfinished messages.
    Drafts,
    /// Deleted messages, until emptied.
    Trash,
    /// Unwanted mail.
    Junk,
    /// Kept mail.
    Archive,
}

impl Role {
    /// Every role, in the order of their ids.
    pub const ALL: [Role; 6] = [
        Role::Inbox,
        Role::Sent,
        Role::Drafts,
        Role::Trash,
        Role::Junk,
        Role::Archive,
    ];

    /// The fixed mailbox id of the role.
    pub fn id(self) -> MailboxId {
        match self {
            Role::Inbox => 1,
            Role::Sent => 2,
            Role::Drafts => 3,
            Role::Trash => 4,
            Role::Junk => 5,
            Role::Archive => 6,
        }
    }

    /// The name the mailbox is created with.
    pub fn default_name(self) -> &'static str {
        match self {
            Role::Inbox => "INBOX",
            Role::Sent => "Sent",
            Role::Drafts => "Drafts",
            Role::Trash => "Trash",
            Role::Junk => "Junk",
            Role::Archive => "Archive",
        }
    }

    /// The role's name in JMAP and in the command-line tool.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Inbox => "inbox",
            Role::Sent => "sent",
            Role::Drafts => "drafts",
            Role::Trash => "trash",
            Role::Junk => "junk",
            Role::Archive => "archive",
        }
    }

    /// The role of a fixed id.
    pub fn of_id(id: MailboxId) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.id() == id)
    }

    /// A role by its name (`inbox`, `sent`…), case-insensitive.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }
}

/// A mailbox of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Id in the account.
    pub id: MailboxId,
    /// Full name: a `/`-separated path (`INBOX` for the inbox).
    pub name: String,
    /// Special use, for the six made with the account.
    pub role: Option<Role>,
    /// IMAP `UIDVALIDITY`: changes only when the mailbox is a new one.
    pub uid_validity: u32,
    /// The UID the next message placed here gets (UIDs are never reused).
    pub uid_next: u32,
    /// Messages in it.
    pub total: u64,
    /// Messages in it without `$seen`.
    pub unseen: u64,
    /// Modification sequence of its last change (name, counts).
    pub modseq: u64,
}

/// Why a mailbox name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, or an empty path component (`a//b`, `/a`, `a/`).
    #[error("a mailbox name may not be empty nor have an empty part between '/'")]
    Empty,
    /// Longer than [`MAX_MAILBOX_NAME`].
    #[error("mailbox name longer than {MAX_MAILBOX_NAME} bytes")]
    TooLong,
    /// A control character, or one of IMAP's wildcards `*` and `%`.
    #[error("mailbox names may not contain control characters, '*' or '%'")]
    BadCharacter,
    /// `INBOX` in any case, which is the inbox's alone.
    #[error("INBOX is the inbox's name")]
    Inbox,
}

/// Checks and normalises a mailbox name: NFC is left to the client;
/// `INBOX` is refused in any case (it names the inbox, RFC 9051 §5.1).
pub(crate) fn check_name(name: &str) -> Result<String, NameError> {
    if name.len() > MAX_MAILBOX_NAME {
        return Err(NameError::TooLong);
    }
    if name.is_empty() || name.split('/').any(str::is_empty) {
        return Err(NameError::Empty);
    }
    if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
        return Err(NameError::BadCharacter);
    }
    if name.eq_ignore_ascii_case("inbox") {
        return Err(NameError::Inbox);
    }
    Ok(name.to_owned())
}

/// The key under which a mailbox name is unique in an account: the inbox's
/// name is case-insensitive (`INBOX`, `inbox`), every other one exact.
pub(crate) fn name_key(name: &str) -> String {
    if name.eq_ignore_ascii_case("inbox") {
        "INBOX".to_owned()
    } else {
        name.to_owned()
    }
}

/// Why a keyword is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid keyword {0:?}: 1-{MAX_KEYWORD} printable ASCII characters, none of ( ) {{ ] % * \" \\ and no space")]
pub struct KeywordError(pub String);

/// Normalises a keyword to its JMAP form, lowercase: IMAP system flags map
/// to their JMAP names (`\Seen` → `$seen`, `\Flagged` → `$flagged`,
/// `\Answered` → `$answered`, `\Draft` → `$draft`); `\Deleted` and
/// `\Recent` are session state in IMAP, not keywords, and are refused here.
pub(crate) fn normalise_keyword(k: &str) -> Result<String, KeywordError> {
    let lower = k.to_ascii_lowercase();
    let mapped = match lower.as_str() {
        "\\seen" => "$seen",
        "\\flagged" => "$flagged",
        "\\answered" => "$answered",
        "\\draft" => "$draft",
        other => other,
    };
    let ok = !mapped.is_empty()
        && mapped.len() <= MAX_KEYWORD
        && mapped
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b) && !b"(){]%*\"\\".contains(&b));
    if ok {
        Ok(mapped.to_owned())
    } else {
        Err(KeywordError(k.to_owned()))
    }
}

/// The keyword of a read message.
pub(crate) const SEEN: &str = "$seen";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("Work/2026"), Ok("Work/2026".into()));
        assert_eq!(check_name("Été"), Ok("Été".into()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("a//b"), Err(NameError::Empty));
        assert_eq!(check_name("/a"), Err(NameError::Empty));
        assert_eq!(check_name("a/"), Err(NameError::Empty));
        assert_eq!(check_name("a*"), Err(NameError::BadCharacter));
        assert_eq!(check_name("a\tb"), Err(NameError::BadCharacter));
        assert_eq!(check_name("inbox"), Err(NameError::Inbox));
        assert_eq!(check_name("INBOX/child"), Ok("INBOX/child".into()));
        assert_eq!(check_name(&"x".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn keywords_take_their_jmap_form() {
        assert_eq!(normalise_keyword("\\Seen"), Ok("$seen".into()));
        assert_eq!(normalise_keyword("$Forwarded"), Ok("$forwarded".into()));
        assert_eq!(normalise_keyword("Work"), Ok("work".into()));
        assert!(normalise_keyword("\\Deleted").is_err());
        assert!(normalise_keyword("a b").is_err());
        assert!(normalise_keyword("").is_err());
        assert!(normalise_keyword(&"k".repeat(65)).is_err());
    }

    #[test]
    fn roles_have_fixed_ids_below_user_mailboxes() {
        for r in Role::ALL {
            assert_eq!(Role::of_id(r.id()), Some(r));
            assert!(r.id() < FIRST_USER_MAILBOX);
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}

//! The mail model in sled: one tree, `mail`, whose keys start with a tag
//! byte, then (for what belongs to an account) the account's local part
//! and a 0x00 (local parts never hold one):
//!
//! | tag | key after the tag              | value                                   |
//! |-----|--------------------------------|-----------------------------------------|
//! | `A` | owner                          | [`Account`] (postcard): modseq, usage,  |
//! |     |                                | limits, every [`Mailbox`] and counters  |
//! | `U` | owner 0 mailbox(4) uid(4)      | message id(8): a mailbox in UID order   |
//! | `C` | owner 0 modseq(8) id(8)        | empty: each live message at its modseq  |
//! | `X` | owner 0 modseq(8) id(8)        | [`Tombstone`] (postcard)                |
//! | `Y` | owner 0 modseq(8) mailbox(4)   | empty: a mailbox deleted at modseq      |
//! | `T` | owner 0 hash(Message-ID)(8)    | thread(8)                               |
//! | `S` | owner 0 hash(base subject)(8)  | thread(8) received_at(8)                |
//! | `H` | owner 0 thread(8) id(8)        | empty: the messages of a thread         |
//! | `R` | blob(8)                        | reference count (u32); absent = 1       |
//! | `L` | alias address                  | the accounts it reaches (JSON)          |
//! | `I` | owner 0 source 0 folder        | [`ImportMark`]: how far an import from  |
//! |     |                                | that IMAP folder has come (JSON)        |
//! | `V` | —                              | schema version (u32)                    |
//!
//! "What changed since S" is a range read of `C`, `X` and `Y` from S+1;
//! each live message has one `C` entry, moved at each change. The
//! mailboxes are in the account record (an account has at most
//! [`MAX_MAILBOXES`]): a delivery reads and writes one record for the
//! account, its UIDs and its quota, and a thread root has no `H` entry (its
//! id is the thread's), so that a delivery writes as few keys as it can. Every change
//! of an account is one sled transaction over this tree and `messages`
//! (and `bodies`, the body index, when bytes go), committed by the group commit before it is
//! acknowledged.

use super::{tx_error, StoreError};
use crate::mail::mailbox::{self, FIRST_USER_MAILBOX, MAX_KEYWORDS, MAX_MAILBOXES, SEEN};
use crate::mail::thread::{self, ThreadFacts, SUBJECT_WINDOW};
use crate::mail::{
    Changes, Mailbox, MailboxId, MessageMeta, ModelError, Placement, QuotaLimits, Role, Tombstone,
    Usage,
};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::collections::BTreeMap;

/// A result inside a transaction.
pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The current schema version of the `mail` tree: 2 is the mail core, 3
/// adds the binary message records ([`super::record`]; JSON records of
/// version 2 still read, so going from 2 to 3 rewrites nothing).
pub(super) const SCHEMA_VERSION: u32 = 3;

/// The schema version of the mail core's first release.
pub(super) const MAIL_CORE_VERSION: u32 = 2;

/// How long tombstones are kept (QRESYNC and JMAP clients older than this
/// resynchronise from scratch).
pub(crate) const TOMBSTONE_DAYS: i64 = 30;

/// Most tombstones kept per account.
pub(crate) const MAX_TOMBSTONES: usize = 100_000;

pub(super) const TAG_ACCOUNT: u8 = b'A';
const TAG_UID: u8 = b'U';
const TAG_CHANGE: u8 = b'C';
const TAG_TOMBSTONE: u8 = b'X';
const TAG_GONE_MAILBOX: u8 = b'Y';
const TAG_THREAD_ID: u8 = b'T';
const TAG_SUBJECT: u8 = b'S';
const TAG_THREAD: u8 = b'H';
const TAG_REFS: u8 = b'R';
pub(super) const TAG_ALIAS: u8 = b'L';
pub(super) const TAG_IMPORT: u8 = b'I';
pub(super) const KEY_VERSION: &[u8] = b"V";

/// Every tag of an account's keys (for removing an account).
pub(super) const ACCOUNT_TAGS: [u8; 9] = [
    TAG_ACCOUNT,
    TAG_IMPORT,
    TAG_UID,
    TAG_CHANGE,
    TAG_TOMBSTONE,
    TAG_GONE_MAILBOX,
    TAG_THREAD_ID,
    TAG_SUBJECT,
    TAG_THREAD,
];

/// An account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    /// The account's modification sequence (JMAP `state`).
    pub modseq: u64,
    /// The id the next user mailbox gets.
    pub next_mailbox: MailboxId,
    /// What the account stores.
    pub used: Usage,
    /// Its own limits (else the instance default).
    pub limits: Option<QuotaLimits>,
    /// Changes since a modseq below this are no longer known.
    pub floor: u64,
    /// The account's mailboxes, by id.
    #[serde(default)]
    pub mailboxes: BTreeMap<MailboxId, Mailbox>,
    /// Random, made with the account: what an import keyed to this
    /// account remembers does not apply to another account of the same
    /// name made after this one is removed (0 for accounts made before).
    #[serde(default)]
    pub incarnation: u64,
}

impl Account {
    /// The mailbox named `name` (the inbox's name in any case).
    pub(crate) fn named(&self, name: &str) -> Option<&Mailbox> {
        let key = mailbox::name_key(name);
        self.mailboxes.values().find(|b| b.name == key)
    }
}

/// `tag owner 0 rest`.
pub(super) fn ukey(tag: u8, owner: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + owner.len() + rest.len());
    k.push(tag);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(super) fn uid_key(owner: &str, mbx: MailboxId, uid: u32) -> Vec<u8> {
    ukey(
        TAG_UID,
        owner,
        &cat(&[&mbx.to_be_bytes(), &uid.to_be_bytes()]),
    )
}

pub(super) fn uid_prefix(owner: &str, mbx: MailboxId) -> Vec<u8> {
    ukey(TAG_UID, owner, &mbx.to_be_bytes())
}

pub(super) fn change_key(tag: u8, owner: &str, modseq: u64, id: u64) -> Vec<u8> {
    ukey(
        tag,
        owner,
        &cat(&[&modseq.to_be_bytes(), &id.to_be_bytes()]),
    )
}

fn thread_member_key(owner: &str, thread: u64, id: u64) -> Vec<u8> {
    ukey(
        TAG_THREAD,
        owner,
        &cat(&[&thread.to_be_bytes(), &id.to_be_bytes()]),
    )
}

pub(super) fn thread_prefix(owner: &str, thread: u64) -> Vec<u8> {
    ukey(TAG_THREAD, owner, &thread.to_be_bytes())
}

pub(super) fn refs_key(blob: u64) -> Vec<u8> {
    cat(&[&[TAG_REFS], &blob.to_be_bytes()])
}

/// The body index key of a blob's location ([`super::bodies::Loc`]).
pub(super) fn body_key(blob: u64) -> Vec<u8> {
    cat(&[b"B", &blob.to_be_bytes()])
}

/// The body index key of a content address (value: the blob id).
pub(super) fn hash_key(hash: &[u8; 32]) -> Vec<u8> {
    cat(&[b"#", hash])
}

/// The body index key of a quarantined blob (value: why, then its old
/// location).
pub(super) fn quarantine_key(blob: u64) -> Vec<u8> {
    cat(&[b"Q", &blob.to_be_bytes()])
}

/// Forgets a blob's body: its location and, when it names this blob, its
/// content address (the record becomes dead space for compaction).
pub(super) fn release_body(bodies: &TransactionalTree, blob: u64) -> TxResult<()> {
    if let Some(v) = bodies.remove(body_key(blob))? {
        if let Some(loc) = super::bodies::Loc::decode(&v) {
            let hk = hash_key(&loc.hash);
            if bodies.get(&hk)?.as_deref() == Some(&blob.to_be_bytes()[..]) {
                bodies.remove(hk)?;
            }
        }
    }
    Ok(())
}

pub(super) fn alias_db_key(alias: &str) -> Vec<u8> {
    cat(&[&[TAG_ALIAS], alias.as_bytes()])
}

pub(super) fn change_prefix(tag: u8, owner: &str) -> Vec<u8> {
    ukey(tag, owner, &[])
}

/// The first key past every `tag` key of `owner` (the owner's keys end
/// their name with a 0 byte, so this is the same prefix ending in 1):
/// the end of a range that must not run into the next account's keys.
pub(super) fn owner_end(tag: u8, owner: &str) -> Vec<u8> {
    let mut k = change_prefix(tag, owner);
    if let Some(last) = k.last_mut() {
        *last = 1;
    }
    k
}

fn corrupt(what: impl std::fmt::Display) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Corrupt(what.to_string()))
}

fn abort(e: ModelError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Model(e))
}

fn get_record<T: serde::de::DeserializeOwned>(
    t: &TransactionalTree,
    k: &[u8],
) -> TxResult<Option<T>> {
    match t.get(k)? {
        None => Ok(None),
        Some(v) => super::record::from_slice(&v)
            .map(Some)
            .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e))),
    }
}

fn put_record<T: Serialize>(t: &TransactionalTree, k: &[u8], v: &T) -> TxResult<()> {
    let bytes = super::record::to_vec(v)
        .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e)))?;
    t.insert(k, bytes)?;
    Ok(())
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// A fresh `UIDVALIDITY` for mailbox `id` (never 0; differs for a mailbox
/// made again under the same name, since ids are never reused).
fn uid_validity(now: i64, id: MailboxId) -> u32 {
    ((now as u32) ^ id.rotate_left(20)).max(1)
}

/// The state of one account inside a transaction: read once, written back
/// by [`Tx::finish`], with the mailboxes it touched.
pub(super) struct Tx<'a> {
    pub mail: &'a TransactionalTree,
    pub messages: &'a TransactionalTree,
    /// The body index (`bodies`: see [`super::bodies`]).
    pub bodies: &'a TransactionalTree,
    pub owner: &'a str,
    pub acct: Account,
    pub now: i64,
    /// The modseq of this change (one per operation).
    pub modseq: u64,
    changed: bool,
}

impl<'a> Tx<'a> {
    /// Opens `owner`'s account (made, with its six mailboxes, when it has
    /// none yet) for one change.
    pub(super) fn open(
        mail: &'a TransactionalTree,
        messages: &'a TransactionalTree,
        bodies: &'a TransactionalTree,
        owner: &'a str,
        now: i64,
    ) -> TxResult<Self> {
        let acct = load_account(mail, owner, now)?;
        Ok(Self::with_account(mail, messages, bodies, owner, acct, now))
    }

    /// Like [`Tx::open`], with the account already read in this
    /// transaction (a batch of deliveries reads and writes each account
    /// once: [`Tx::keep`]).
    pub(super) fn with_account(
        mail: &'a TransactionalTree,
        messages: &'a TransactionalTree,
        bodies: &'a TransactionalTree,
        owner: &'a str,
        acct: Account,
        now: i64,
    ) -> Self {
        let modseq = acct.modseq + 1;
        Self {
            mail,
            messages,
            bodies,
            owner,
            acct,
            now,
            modseq,
            changed: false,
        }
    }

    /// Ends the change without writing the account record: the caller
    /// writes it ([`put_account`]) once for several changes.
    pub(super) fn keep(mut self) -> Account {
        if self.changed {
            self.acct.modseq = self.modseq;
        }
        self.acct
    }

    /// A mailbox of the account (`None`: no such mailbox).
    pub(super) fn mailbox(&mut self, id: MailboxId) -> TxResult<Option<&mut Mailbox>> {
        Ok(self.acct.mailboxes.get_mut(&id))
    }

    fn mailbox_or_inbox(&mut self, id: MailboxId) -> TxResult<MailboxId> {
        if self.mailbox(id)?.is_some() {
            return Ok(id);
        }
        if self.mailbox(Role::Inbox.id())?.is_none() {
            return Err(corrupt(format!("account {} has no inbox", self.owner)));
        }
        Ok(Role::Inbox.id())
    }

    fn take_uid(&mut self, mbx: MailboxId) -> TxResult<u32> {
        let modseq = self.modseq;
        let b = self
            .mailbox(mbx)?
            .ok_or_else(|| abort(ModelError::NoMailbox))?;
        let uid = b.uid_next;
        b.uid_next = uid
            .checked_add(1)
            .ok_or_else(|| abort(ModelError::Limit("the mailbox has used every UID".into())))?;
        b.modseq = modseq;
        Ok(uid)
    }

    /// Stores a new message (its bytes are written by the caller): places
    /// it in `mbx` (the inbox when that mailbox is gone), threads it, and
    /// counts it. Returns the record written.
    pub(super) fn add(
        &mut self,
        mut meta: MessageMeta,
        mbx: MailboxId,
        keywords: &[String],
        facts: &ThreadFacts,
    ) -> TxResult<MessageMeta> {
        let mbx = self.mailbox_or_inbox(mbx)?;
        let uid = self.take_uid(mbx)?;
        let mut kw = keywords.to_vec();
        kw.sort();
        kw.dedup();
        kw.truncate(MAX_KEYWORDS);
        let seen = kw.iter().any(|k| k == SEEN);
        if let Some(b) = self.mailbox(mbx)? {
            b.total += 1;
            b.unseen += u64::from(!seen);
        }
        meta.owner = self.owner.to_owned();
        meta.placements = vec![Placement { mailbox: mbx, uid }];
        meta.keywords = kw;
        meta.modseq = self.modseq;
        meta.created_modseq = self.modseq;
        meta.thread = self.thread_of(meta.id, facts, meta.received_at)?;
        self.mail
            .insert(uid_key(self.owner, mbx, uid), &meta.id.to_be_bytes())?;
        self.mail.insert(
            change_key(TAG_CHANGE, self.owner, self.modseq, meta.id),
            &[],
        )?;
        if meta.thread != meta.id {
            // A thread's root is found by its id: only later members get an entry.
            self.mail
                .insert(thread_member_key(self.owner, meta.thread, meta.id), &[])?;
        }
        self.messages
            .insert(&meta.id.to_be_bytes(), super::record::encode(&meta))?;
        self.acct.used.bytes += meta.size as u64;
        self.acct.used.messages += 1;
        self.changed = true;
        Ok(meta)
    }

    /// The thread a new message joins (see [`crate::mail::thread`]), and
    /// the links that let later messages find it.
    fn thread_of(&mut self, id: u64, facts: &ThreadFacts, at: i64) -> TxResult<u64> {
        let ids: Vec<&String> = facts.message_id.iter().chain(&facts.refers_to).collect();
        let mut found = None;
        for m in &ids {
            if let Some(v) = self
                .mail
                .get(ukey(TAG_THREAD_ID, self.owner, &thread::key_of(m)))?
            {
                found = be_u64(&v);
                if found.is_some() {
                    break;
                }
            }
        }
        let subject_key = ukey(
            TAG_SUBJECT,
            self.owner,
            &thread::key_of(&facts.base_subject),
        );
        if found.is_none() && facts.is_reply && !facts.base_subject.is_empty() {
            if let Some(v) = self.mail.get(&subject_key)? {
                if let (Some(t), Some(last)) = (be_u64(&v), v.get(8..).and_then(be_u64)) {
                    if at.saturating_sub(last as i64) <= SUBJECT_WINDOW {
                        found = Some(t);
                    }
                }
            }
        }
        let t = found.unwrap_or(id);
        for m in ids {
            let k = ukey(TAG_THREAD_ID, self.owner, &thread::key_of(m));
            if self.mail.get(&k)?.is_none() {
                self.mail.insert(k, &t.to_be_bytes())?;
            }
        }
        if !facts.base_subject.is_empty() {
            self.mail.insert(
                subject_key,
                cat(&[&t.to_be_bytes(), &(at as u64).to_be_bytes()]),
            )?;
        }
        Ok(t)
    }

    /// A message of this account.
    pub(super) fn message(&self, id: u64) -> TxResult<MessageMeta> {
        let m = match self.messages.get(id.to_be_bytes())? {
            Some(v) => Some(
                super::record::decode(&v)
                    .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e)))?,
            ),
            None => None,
        };
        match m {
            Some(m) if m.owner == self.owner && !m.placements.is_empty() => Ok(m),
            _ => Err(abort(ModelError::NoMessage(id))),
        }
    }

    /// Writes the new state of a message: its mailboxes (a placement with
    /// UID 0 gets the next UID of its mailbox) and keywords. UIDs taken
    /// away leave a tombstone; a message left in no mailbox leaves the
    /// account (its bytes go with the last reference to them). Nothing is
    /// written when nothing changed. Returns the record written, or `None`
    /// when the message left the account.
    pub(super) fn apply(
        &mut self,
        old: &MessageMeta,
        mut new: MessageMeta,
    ) -> TxResult<Option<MessageMeta>> {
        new.keywords.sort();
        new.keywords.dedup();
        if new.keywords.len() > MAX_KEYWORDS {
            return Err(abort(ModelError::Limit(format!(
                "a message may carry {MAX_KEYWORDS} keywords at most"
            ))));
        }
        new.placements.sort();
        new.placements.dedup_by_key(|p| p.mailbox);
        if new.placements == old.placements && new.keywords == old.keywords {
            return Ok(Some(old.clone()));
        }
        let (was_seen, seen) = (old.has_keyword(SEEN), new.has_keyword(SEEN));
        let modseq = self.modseq;
        let mut removed = Vec::new();
        for p in &old.placements {
            let kept = new.placements.iter().any(|n| n.mailbox == p.mailbox);
            if let Some(b) = self.mailbox(p.mailbox)? {
                b.modseq = modseq;
                if kept {
                    b.unseen = (b.unseen + u64::from(!seen)).saturating_sub(u64::from(!was_seen));
                } else {
                    b.total = b.total.saturating_sub(1);
                    b.unseen = b.unseen.saturating_sub(u64::from(!was_seen));
                }
            }
            if !kept {
                self.mail.remove(uid_key(self.owner, p.mailbox, p.uid))?;
                removed.push(*p);
            }
        }
        for p in &mut new.placements {
            if old.placements.iter().any(|o| o.mailbox == p.mailbox) {
                // Kept: same UID (a caller may not renumber a message).
                p.uid = old.uid_in(p.mailbox).unwrap_or(p.uid);
                continue;
            }
            p.uid = self.take_uid(p.mailbox)?;
            if let Some(b) = self.mailbox(p.mailbox)? {
                b.total += 1;
                b.unseen += u64::from(!seen);
            }
            self.mail
                .insert(uid_key(self.owner, p.mailbox, p.uid), &old.id.to_be_bytes())?;
        }
        self.mail
            .remove(change_key(TAG_CHANGE, self.owner, old.modseq, old.id))?;
        let destroyed = new.placements.is_empty();
        if !removed.is_empty() {
            let t = Tombstone {
                id: old.id,
                removed,
                destroyed,
                modseq,
                at: self.now,
            };
            put_record(
                self.mail,
                &change_key(TAG_TOMBSTONE, self.owner, modseq, old.id),
                &t,
            )?;
        }
        self.changed = true;
        if destroyed {
            self.messages.remove(&old.id.to_be_bytes())?;
            self.mail
                .remove(thread_member_key(self.owner, old.thread, old.id))?;
            self.release_blob(old.blob_id())?;
            self.acct.used.bytes = self.acct.used.bytes.saturating_sub(old.size as u64);
            self.acct.used.messages = self.acct.used.messages.saturating_sub(1);
            return Ok(None);
        }
        new.modseq = modseq;
        self.mail
            .insert(change_key(TAG_CHANGE, self.owner, modseq, old.id), &[])?;
        self.messages
            .insert(&old.id.to_be_bytes(), super::record::encode(&new))?;
        Ok(Some(new))
    }

    fn release_blob(&self, blob: u64) -> TxResult<()> {
        let k = refs_key(blob);
        let refs = match self.mail.get(&k)? {
            Some(v) => be_u32(&v).unwrap_or(1),
            None => 1,
        };
        if refs <= 1 {
            self.mail.remove(k)?;
            release_body(self.bodies, blob)?;
        } else {
            self.mail.insert(k, &(refs - 1).to_be_bytes())?;
        }
        Ok(())
    }

    /// Makes a mailbox (and its missing parents, as IMAP CREATE does).
    pub(super) fn create_mailbox(&mut self, name: &str) -> TxResult<Mailbox> {
        let name = mailbox::check_name(name).map_err(|e| abort(e.into()))?;
        if self.acct.named(&name).is_some() {
            return Err(abort(ModelError::NameTaken(name)));
        }
        let mut made = None;
        let parts: Vec<&str> = name.split('/').collect();
        for depth in 1..=parts.len() {
            let path = parts[..depth].join("/");
            if self.acct.named(&path).is_some() {
                continue;
            }
            if path.eq_ignore_ascii_case("inbox") {
                continue;
            }
            let id = self.acct.next_mailbox.max(FIRST_USER_MAILBOX);
            if self.acct.mailboxes.len() >= MAX_MAILBOXES {
                return Err(abort(ModelError::Limit(format!(
                    "an account may make {MAX_MAILBOXES} mailboxes at most"
                ))));
            }
            self.acct.next_mailbox = id + 1;
            let b = Mailbox {
                id,
                name: path.clone(),
                role: None,
                uid_validity: uid_validity(self.now, id),
                uid_next: 1,
                total: 0,
                unseen: 0,
                modseq: self.modseq,
            };
            self.acct.mailboxes.insert(id, b.clone());
            made = Some(b);
        }
        self.changed = true;
        made.ok_or_else(|| abort(ModelError::NameTaken(name)))
    }

    /// Renames a mailbox and its children (`a` → `b` takes `a/x` to `b/x`).
    /// The inbox keeps its name.
    pub(super) fn rename_mailbox(&mut self, id: MailboxId, to: &str) -> TxResult<()> {
        let to = mailbox::check_name(to).map_err(|e| abort(e.into()))?;
        if id == Role::Inbox.id() {
            return Err(abort(ModelError::RoleMailbox("inbox")));
        }
        let from = self
            .mailbox(id)?
            .map(|b| b.name.clone())
            .ok_or_else(|| abort(ModelError::NoMailbox))?;
        if from == to {
            return Ok(());
        }
        if self.acct.named(&to).is_some() {
            return Err(abort(ModelError::NameTaken(to)));
        }
        let child = format!("{from}/");
        let modseq = self.modseq;
        for m in self
            .acct
            .mailboxes
            .values_mut()
            .filter(|b| b.id == id || b.name.starts_with(&child))
        {
            let new_name = format!("{to}{}", &m.name[from.len()..]);
            mailbox::check_name(&new_name).map_err(|e| abort(e.into()))?;
            m.name = new_name;
            m.modseq = modseq;
        }
        self.changed = true;
        Ok(())
    }

    /// Takes every message out of a mailbox, then deletes it. Refused for
    /// the six role mailboxes and for a mailbox with children.
    pub(super) fn delete_mailbox(&mut self, id: MailboxId, uids: &[u64]) -> TxResult<()> {
        if let Some(r) = Role::of_id(id) {
            return Err(abort(ModelError::RoleMailbox(r.as_str())));
        }
        let b = self
            .mailbox(id)?
            .cloned()
            .ok_or_else(|| abort(ModelError::NoMailbox))?;
        let child = format!("{}/", b.name);
        if self
            .acct
            .mailboxes
            .values()
            .any(|m| m.name.starts_with(&child))
        {
            return Err(abort(ModelError::HasChildren(b.name)));
        }
        for &msg in uids {
            let old = self.message(msg)?;
            let mut new = old.clone();
            new.placements.retain(|p| p.mailbox != id);
            self.apply(&old, new)?;
        }
        self.acct.mailboxes.remove(&id);
        self.mail.insert(
            ukey(
                TAG_GONE_MAILBOX,
                self.owner,
                &cat(&[&self.modseq.to_be_bytes(), &id.to_be_bytes()]),
            ),
            &[],
        )?;
        self.changed = true;
        Ok(())
    }

    /// Marks the account changed (for a change of the account record alone).
    pub(super) fn touch(&mut self) {
        self.changed = true;
    }

    /// Writes the account and the mailboxes touched; returns the modseq
    /// of the change (the account's state), unchanged when nothing changed.
    pub(super) fn finish(mut self) -> TxResult<u64> {
        if !self.changed {
            return Ok(self.acct.modseq);
        }
        self.acct.modseq = self.modseq;
        put_record(self.mail, &ukey(TAG_ACCOUNT, self.owner, &[]), &self.acct)?;
        Ok(self.modseq)
    }
}

/// Reads `owner`'s account in a transaction (made, with its six
/// mailboxes, when it has none yet).
pub(super) fn load_account(mail: &TransactionalTree, owner: &str, now: i64) -> TxResult<Account> {
    match get_record::<Account>(mail, &ukey(TAG_ACCOUNT, owner, &[]))? {
        Some(a) => Ok(a),
        None => new_account(mail, owner, now),
    }
}

/// Writes an account record in a transaction.
pub(super) fn put_account(mail: &TransactionalTree, owner: &str, acct: &Account) -> TxResult<()> {
    put_record(mail, &ukey(TAG_ACCOUNT, owner, &[]), acct)
}

/// Makes an account and its six role mailboxes (inside a transaction).
/// 64 random bits (zero only if the system's generator fails, which
/// leaves an account keyed as one made before incarnations existed).
fn random_u64() -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    match aws_lc_rs::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

pub(super) fn new_account(mail: &TransactionalTree, owner: &str, now: i64) -> TxResult<Account> {
    let mut acct = Account {
        modseq: 1,
        next_mailbox: FIRST_USER_MAILBOX,
        incarnation: random_u64(),
        ..Default::default()
    };
    for r in Role::ALL {
        let b = Mailbox {
            id: r.id(),
            name: r.default_name().to_owned(),
            role: Some(r),
            uid_validity: uid_validity(now, r.id()),
            uid_next: 1,
            total: 0,
            unseen: 0,
            modseq: 1,
        };
        acct.mailboxes.insert(r.id(), b);
    }
    put_record(mail, &ukey(TAG_ACCOUNT, owner, &[]), &acct)?;
    Ok(acct)
}

/// Reads "what changed since `since`" from the `mail` and `messages` trees.
pub(super) fn changes_since(
    mail: &sled::Tree,
    messages: &sled::Tree,
    owner: &str,
    since: u64,
    limit: usize,
) -> Result<Changes, StoreError> {
    let acct: Account = match mail.get(ukey(TAG_ACCOUNT, owner, &[]))? {
        Some(v) => super::record::from_slice(&v)?,
        None => return Err(ModelError::NoAccount(owner.to_owned()).into()),
    };
    if since < acct.floor {
        return Err(ModelError::CannotCalculate(since).into());
    }
    let from = |tag: u8| {
        let start = change_key(tag, owner, since.saturating_add(1), 0);
        let end = owner_end(tag, owner);
        let prefix_len = change_prefix(tag, owner).len();
        mail.range(start..end).map(move |kv| {
            kv.map(|(k, v)| {
                let ms = k.get(prefix_len..).and_then(be_u64).unwrap_or(0);
                let id = k.get(prefix_len + 8..).and_then(be_u64).unwrap_or(0);
                (ms, id, v)
            })
        })
    };
    // Entries of both logs, in modseq order, cut after `limit` at a modseq
    // boundary (a client asking again from `new_state` misses nothing).
    let mut entries: Vec<(u64, bool, u64, sled::IVec)> = Vec::new();
    for e in from(TAG_CHANGE) {
        let (ms, id, v) = e?;
        entries.push((ms, false, id, v));
    }
    for e in from(TAG_TOMBSTONE) {
        let (ms, id, v) = e?;
        entries.push((ms, true, id, v));
    }
    entries.sort_by_key(|e| (e.0, e.1, e.2));
    let mut out = Changes {
        new_state: acct.modseq.max(since),
        ..Default::default()
    };
    if entries.len() > limit {
        let cut_at = entries[limit.max(1) - 1].0;
        let keep = entries.iter().take_while(|e| e.0 <= cut_at).count();
        entries.truncate(keep);
        out.more = true;
        out.new_state = cut_at;
    }
    for (_, tomb, id, v) in entries {
        if tomb {
            out.removed.push(super::record::from_slice(&v)?);
        } else if let Some(m) = messages.get(id.to_be_bytes())? {
            let m = super::record::decode(&m)?;
            if m.created_modseq > since {
                out.created.push(m);
            } else {
                out.updated.push(m);
            }
        }
    }
    for b in acct.mailboxes.values() {
        if b.modseq > since && b.modseq <= out.new_state {
            out.mailboxes_changed.push(b.id);
        }
    }
    let gone = change_prefix(TAG_GONE_MAILBOX, owner);
    let start = ukey(
        TAG_GONE_MAILBOX,
        owner,
        &since.saturating_add(1).to_be_bytes(),
    );
    for kv in mail.range(start..owner_end(TAG_GONE_MAILBOX, owner)) {
        let (k, _) = kv?;
        let ms = k.get(gone.len()..).and_then(be_u64).unwrap_or(0);
        if ms > out.new_state {
            break;
        }
        if let Some(id) = k.get(gone.len() + 8..).and_then(be_u32) {
            out.mailboxes_destroyed.push(id);
        }
    }
    Ok(out)
}

/// Drops an account's tombstones older than [`TOMBSTONE_DAYS`] or beyond
/// [`MAX_TOMBSTONES`], raising its floor past them. Returns how many went.
pub(super) fn prune_tombstones(
    mail: &sled::Tree,
    owner: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let prefix = change_prefix(TAG_TOMBSTONE, owner);
    let total = mail.scan_prefix(&prefix).count();
    let mut drop = Vec::new();
    let mut floor = 0;
    for kv in mail.scan_prefix(&prefix) {
        let (k, v) = kv?;
        let t: Tombstone = super::record::from_slice(&v)?;
        let old = now.saturating_sub(t.at) > TOMBSTONE_DAYS * 86_400;
        if !old && total - drop.len() <= MAX_TOMBSTONES {
            break;
        }
        floor = t.modseq;
        drop.push(k);
    }
    if drop.is_empty() {
        return Ok(0);
    }
    let n = drop.len();
    mail.transaction(|m| {
        let key = ukey(TAG_ACCOUNT, owner, &[]);
        let mut acct: Account = get_record(m, &key)?.unwrap_or_default();
        acct.floor = acct.floor.max(floor);
        put_record(m, &key, &acct)?;
        for k in &drop {
            m.remove(k)?;
        }
        Ok(())
    })
    .map_err(tx_error)?;
    Ok(n)
}

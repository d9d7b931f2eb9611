//! The storage interface the SMTP, mesh and client code see. `Store` (sled)
//! is the embedded engine; another engine implements [`MailStore`] and is
//! handed to `MailService::new`, nothing else changes. The durable queues
//! (mesh outbox, SMTP queue) keep their own sled trees, opened by the daemon.
//!
//! Contract for every engine: a write that returns `Ok` is durable (it
//! survives kill -9), `deliver_once` is atomic and idempotent by `txn_id`,
//! and the contact book, counters and quota use change in the same atomic
//! write as the message they come from. The mail model's operations
//! (mailboxes, keywords, moves, changes, quotas, aliases) have default
//! bodies that answer [`StoreError::Unsupported`], for an engine that keeps
//! only what SMTP needs (the in-memory one of `tests/store_engine.rs`).

use super::{
    ContactRecord, Delivery, MessageMeta, PathClass, SeenLevel, Store, StoreError, UserRecord,
    UserStats,
};
use crate::mail::mailbox::{normalise_keyword, MailboxId};
use crate::mail::{Changes, Mailbox, Quota, QuotaLimits};
use crate::privacy::public::LevelEntry;
use std::future::Future;
use std::pin::Pin;

/// A pending storage operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where one delivery goes: an account and a mailbox per copy.
pub type Recipients = [Delivery];

/// A change of keywords (IMAP STORE FLAGS / +FLAGS / -FLAGS, JMAP
/// `keywords` patches), in any spelling [`normalise_keyword`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeywordChange {
    /// Adds these.
    Add(Vec<String>),
    /// Removes these.
    Remove(Vec<String>),
    /// Replaces every keyword with these.
    Replace(Vec<String>),
}

impl KeywordChange {
    /// (add, remove, replace), normalised; a bad keyword is refused.
    pub fn normalised(&self) -> Result<NormalisedKeywords, StoreError> {
        let norm = |v: &[String]| -> Result<Vec<String>, StoreError> {
            v.iter()
                .map(|k| normalise_keyword(k).map_err(|e| StoreError::Model(e.into())))
                .collect()
        };
        Ok(match self {
            KeywordChange::Add(v) => (norm(v)?, Vec::new(), None),
            KeywordChange::Remove(v) => (Vec::new(), norm(v)?, None),
            KeywordChange::Replace(v) => (Vec::new(), Vec::new(), Some(norm(v)?)),
        })
    }
}

/// Keywords to add, to remove, and (for a replacement) the whole new set.
pub(super) type NormalisedKeywords = (Vec<String>, Vec<String>, Option<Vec<String>>);

fn unsupported<T>(op: &'static str) -> Result<T, StoreError> {
    Err(StoreError::Unsupported(op))
}

/// What the instance needs from a storage engine.
pub trait MailStore: Send + Sync + std::fmt::Debug {
    /// The mail domains served (for users' public addresses).
    fn set_domains(&self, domains: &[String]);
    /// True when the user exists (called on every RCPT: must be fast).
    fn user_exists(&self, localpart: &str) -> bool;
    /// A user's record.
    fn user(&self, localpart: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Creates or replaces a user; durable.
    fn put_user<'a>(&'a self, localpart: &'a str, password_hash: &'a str) -> StoreFuture<'a, ()>;
    /// Stores one copy per mailbox, idempotent by `txn_id`; durable. Returns
    /// the ids and whether the transaction had been seen before.
    fn deliver_once<'a>(
        &'a self,
        template: &'a MessageMeta,
        recipients: &'a Recipients,
        raw: &'a [u8],
        txn_id: Option<&'a [u8]>,
    ) -> StoreFuture<'a, (Vec<u64>, bool)>;
    /// Stores one copy per mailbox; durable. Returns the ids.
    fn deliver_local<'a>(
        &'a self,
        template: &'a MessageMeta,
        recipients: &'a Recipients,
        raw: &'a [u8],
    ) -> StoreFuture<'a, Vec<u64>> {
        Box::pin(async move {
            self.deliver_once(template, recipients, raw, None)
                .await
                .map(|(ids, _)| ids)
        })
    }
    /// Counts a message a user sent, one contact per recipient; durable.
    fn record_sent<'a>(
        &'a self,
        owner: &'a str,
        recipients: &'a [(String, PathClass)],
        raw: &'a [u8],
        now: i64,
    ) -> StoreFuture<'a, ()>;
    /// An account's inbox, oldest first.
    fn list(&self, owner: &str) -> Result<Vec<MessageMeta>, StoreError>;
    /// At most `limit` messages of mailbox `mbx` after the message `after`,
    /// oldest first, and whether more follow. The default reads the inbox
    /// through [`MailStore::list`].
    fn list_page(
        &self,
        owner: &str,
        mbx: MailboxId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        if mbx != crate::mail::Role::Inbox.id() {
            return unsupported("mailboxes");
        }
        let mut page: Vec<MessageMeta> = self
            .list(owner)?
            .into_iter()
            .filter(|m| after.is_none_or(|a| m.id > a))
            .take(limit.saturating_add(1))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }
    /// At most `limit` messages of `mbx` with UIDs below `before` (`None`:
    /// from the newest), newest first, and whether more follow.
    fn newest(
        &self,
        _owner: &str,
        _mbx: MailboxId,
        _before: Option<u32>,
        _limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        unsupported("mailboxes")
    }
    /// A user's web client settings.
    fn prefs(&self, _owner: &str) -> Result<crate::mail::prefs::Prefs, StoreError> {
        Ok(Default::default())
    }
    /// Saves a user's web client settings; durable.
    fn set_prefs<'a>(
        &'a self,
        _owner: &'a str,
        _prefs: &'a crate::mail::prefs::Prefs,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async { unsupported("settings") })
    }
    /// An account's mailboxes.
    fn mailboxes(&self, _owner: &str) -> Result<Vec<Mailbox>, StoreError> {
        unsupported("mailboxes")
    }
    /// Makes a mailbox (and its missing parents); durable.
    fn create_mailbox<'a>(&'a self, _owner: &'a str, _name: &'a str) -> StoreFuture<'a, Mailbox> {
        Box::pin(async { unsupported("mailboxes") })
    }
    /// Renames a mailbox and its children; durable.
    fn rename_mailbox<'a>(
        &'a self,
        _owner: &'a str,
        _id: MailboxId,
        _name: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async { unsupported("mailboxes") })
    }
    /// Deletes a mailbox (messages only it held leave the account); durable.
    fn delete_mailbox<'a>(&'a self, _owner: &'a str, _id: MailboxId) -> StoreFuture<'a, usize> {
        Box::pin(async { unsupported("mailboxes") })
    }
    /// Every (UID, message id) of a mailbox, in UID order.
    fn uids(&self, _owner: &str, _mbx: MailboxId) -> Result<Vec<(u32, u64)>, StoreError> {
        unsupported("mailboxes")
    }
    /// A signal that changes each time `owner`'s account changes (after
    /// the change is durable); `None` when the engine gives none.
    fn watch(&self, _owner: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Sets what is told about each new durable delivery (`false`: the
    /// engine does not tell, or a hook was set already).
    fn set_delivered_hook(&self, _hook: crate::store::DeliveredHook) -> bool {
        false
    }
    /// A directory for data derived from the store (`None`: the engine
    /// keeps nothing on disk).
    fn derived_dir(&self, _name: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// True while message bytes of this SHA-256 are held (an engine that
    /// cannot tell says yes).
    fn holds_body(&self, _hash: &[u8; 32]) -> bool {
        true
    }
    /// A thread's messages, oldest first.
    fn thread(&self, _owner: &str, _thread: u64) -> Result<Vec<MessageMeta>, StoreError> {
        unsupported("threads")
    }
    /// The account's state (modseq).
    fn state(&self, _owner: &str) -> Result<u64, StoreError> {
        unsupported("changes")
    }
    /// What changed after `since`.
    fn changes_since(
        &self,
        _owner: &str,
        _since: u64,
        _limit: usize,
    ) -> Result<Changes, StoreError> {
        unsupported("changes")
    }
    /// Changes keywords; durable. Returns the new records and state.
    fn set_keywords<'a>(
        &'a self,
        _owner: &'a str,
        _ids: &'a [u64],
        _change: &'a KeywordChange,
    ) -> StoreFuture<'a, (Vec<MessageMeta>, u64)> {
        Box::pin(async { unsupported("keywords") })
    }
    /// Places messages in `to` too; durable. Returns (id, UID in `to`).
    fn copy<'a>(
        &'a self,
        _owner: &'a str,
        _ids: &'a [u64],
        _to: MailboxId,
    ) -> StoreFuture<'a, (Vec<(u64, u32)>, u64)> {
        Box::pin(async { unsupported("mailboxes") })
    }
    /// Moves messages from `from` to `to`; durable. Returns (id, UID in `to`).
    fn move_messages<'a>(
        &'a self,
        _owner: &'a str,
        _ids: &'a [u64],
        _from: MailboxId,
        _to: MailboxId,
    ) -> StoreFuture<'a, (Vec<(u64, u32)>, u64)> {
        Box::pin(async { unsupported("mailboxes") })
    }
    /// Takes messages out of `from`, or of the account (`None`); durable.
    fn remove_messages<'a>(
        &'a self,
        _owner: &'a str,
        _ids: &'a [u64],
        _from: Option<MailboxId>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async { unsupported("mailboxes") })
    }
    /// An account's quota.
    fn quota(&self, _owner: &str) -> Result<Quota, StoreError> {
        unsupported("quotas")
    }
    /// Sets the default limits.
    fn set_quota_default(&self, _limits: QuotaLimits) {}
    /// Gives an account its own limits (or the default again); durable.
    fn set_quota<'a>(
        &'a self,
        _owner: &'a str,
        _limits: Option<QuotaLimits>,
    ) -> StoreFuture<'a, Quota> {
        Box::pin(async { unsupported("quotas") })
    }
    /// Every account.
    fn users(&self) -> Result<Vec<String>, StoreError> {
        unsupported("users")
    }
    /// Removes an account and all it holds; durable. False when none.
    fn remove_user<'a>(&'a self, _owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async { unsupported("users") })
    }
    /// The accounts an alias reaches (must be fast: read on every RCPT).
    fn alias(&self, _key: &str) -> Option<Vec<String>> {
        None
    }
    /// Every alias.
    fn aliases(&self) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
    /// Makes or replaces an alias; durable.
    fn put_alias<'a>(&'a self, _key: &'a str, _targets: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(async { unsupported("aliases") })
    }
    /// Removes an alias; durable.
    fn remove_alias<'a>(&'a self, _key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async { unsupported("aliases") })
    }
    /// True when a [`MailStore::deliver_once`] transaction was stored.
    fn has_txn(&self, _txn_id: &[u8]) -> Result<bool, StoreError> {
        unsupported("transaction lookups")
    }
    /// The account's incarnation: random, made with it, so that imports
    /// keyed to it do not carry over to a later account of the same name.
    fn incarnation(&self, _owner: &str) -> Result<u64, StoreError> {
        unsupported("account incarnations")
    }
    /// How far each folder of an import source is copied.
    fn import_marks(
        &self,
        _owner: &str,
        _source: &str,
    ) -> Result<Vec<(String, crate::store::ImportMark)>, StoreError> {
        unsupported("import marks")
    }
    /// Records how far a folder of an import source is copied; durable.
    fn set_import_mark<'a>(
        &'a self,
        _owner: &'a str,
        _source: &'a str,
        _folder: &'a str,
        _mark: crate::store::ImportMark,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async { unsupported("import marks") })
    }
    /// A message's record.
    fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError>;
    /// A message's decoded subject and modification sequence: what a
    /// subject search reads of each message, without decoding the rest of
    /// its record.
    fn subject_of(&self, id: u64) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self.meta(id)?.map(|m| (m.subject, m.modseq)))
    }
    /// A message's bytes, exactly as received.
    fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// The bytes of a blob ([`MessageMeta::blob_id`]): what [`MailStore::raw`]
    /// returns, without reading the record again.
    fn body(&self, blob: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Checks every body and index entry (blocking: it reads every body);
    /// with `repair`, quarantines and corrects (see `store::check`).
    fn check(&self, _repair: bool) -> Result<crate::store::CheckReport, StoreError> {
        Err(StoreError::Unsupported("a body check"))
    }
    /// The memory budget for caches, in bytes (`[store] cache_mb`).
    fn cache_budget(&self) -> u64 {
        crate::store::StoreOptions::default().cache_bytes
    }
    /// A user's contacts.
    fn contacts(&self, owner: &str) -> Result<Vec<ContactRecord>, StoreError>;
    /// One contact of a user.
    fn contact(&self, owner: &str, address: &str) -> Result<Option<ContactRecord>, StoreError>;
    /// Follows a contact's move to a new address; durable. True when the
    /// user had the old address (and not the new one already).
    fn move_contact<'a>(
        &'a self,
        _owner: &'a str,
        _old: &'a str,
        _new: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { unsupported("contacts") })
    }
    /// Remembers a contact's public level; durable.
    fn set_seen_level<'a>(
        &'a self,
        owner: &'a str,
        address: &'a str,
        seen: Option<SeenLevel>,
        now: i64,
    ) -> StoreFuture<'a, ()>;
    /// A user's counters and settings.
    fn user_stats(&self, localpart: &str) -> Result<UserStats, StoreError>;
    /// Publishes or withdraws a user's level; durable.
    fn set_public_opt_out<'a>(&'a self, localpart: &'a str, opt_out: bool) -> StoreFuture<'a, ()>;
    /// Opted-in levels in a hash-prefix bucket; `None` above `cap` entries.
    fn public_bucket(
        &self,
        prefix: &[u8],
        bits: u32,
        cap: usize,
    ) -> Result<Option<Vec<LevelEntry>>, StoreError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> StoreFuture<'_, ()>;
    /// Number of stored messages.
    fn message_count(&self) -> usize;
}

impl MailStore for Store {
    fn set_domains(&self, domains: &[String]) {
        Store::set_domains(self, domains)
    }
    fn user_exists(&self, localpart: &str) -> bool {
        Store::user_exists(self, localpart)
    }
    fn user(&self, localpart: &str) -> Result<Option<UserRecord>, StoreError> {
        Store::user(self, localpart)
    }
    fn put_user<'a>(&'a self, localpart: &'a str, password_hash: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(Store::put_user(self, localpart, password_hash))
    }
    fn deliver_once<'a>(
        &'a self,
        template: &'a MessageMeta,
        recipients: &'a Recipients,
        raw: &'a [u8],
        txn_id: Option<&'a [u8]>,
    ) -> StoreFuture<'a, (Vec<u64>, bool)> {
        Box::pin(Store::deliver_once(self, template, recipients, raw, txn_id))
    }
    fn record_sent<'a>(
        &'a self,
        owner: &'a str,
        recipients: &'a [(String, PathClass)],
        raw: &'a [u8],
        now: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::record_sent(self, owner, recipients, raw, now))
    }
    fn list(&self, owner: &str) -> Result<Vec<MessageMeta>, StoreError> {
        Store::list(self, owner)
    }
    fn list_page(
        &self,
        owner: &str,
        mbx: MailboxId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        Store::list_page(self, owner, mbx, after, limit)
    }
    fn newest(
        &self,
        owner: &str,
        mbx: MailboxId,
        before: Option<u32>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        Store::mailbox_newest(self, owner, mbx, before, limit)
    }
    fn prefs(&self, owner: &str) -> Result<crate::mail::prefs::Prefs, StoreError> {
        Store::prefs(self, owner)
    }
    fn set_prefs<'a>(
        &'a self,
        owner: &'a str,
        prefs: &'a crate::mail::prefs::Prefs,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::set_prefs(self, owner, prefs))
    }
    fn mailboxes(&self, owner: &str) -> Result<Vec<Mailbox>, StoreError> {
        Store::mailboxes(self, owner)
    }
    fn create_mailbox<'a>(&'a self, owner: &'a str, name: &'a str) -> StoreFuture<'a, Mailbox> {
        Box::pin(Store::create_mailbox(self, owner, name))
    }
    fn rename_mailbox<'a>(
        &'a self,
        owner: &'a str,
        id: MailboxId,
        name: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::rename_mailbox(self, owner, id, name))
    }
    fn delete_mailbox<'a>(&'a self, owner: &'a str, id: MailboxId) -> StoreFuture<'a, usize> {
        Box::pin(Store::delete_mailbox(self, owner, id))
    }
    fn uids(&self, owner: &str, mbx: MailboxId) -> Result<Vec<(u32, u64)>, StoreError> {
        Store::uids(self, owner, mbx)
    }
    fn watch(&self, owner: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.signals.subscribe(owner))
    }
    fn set_delivered_hook(&self, hook: crate::store::DeliveredHook) -> bool {
        Store::set_delivered_hook(self, hook)
    }
    fn derived_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        Some(Store::derived_dir(self, name))
    }
    fn holds_body(&self, hash: &[u8; 32]) -> bool {
        // A read error keeps the result (it is only a cache).
        self.body_index
            .contains_key(super::model::hash_key(hash))
            .unwrap_or(true)
    }
    fn thread(&self, owner: &str, thread: u64) -> Result<Vec<MessageMeta>, StoreError> {
        Store::thread(self, owner, thread)
    }
    fn state(&self, owner: &str) -> Result<u64, StoreError> {
        Store::state(self, owner)
    }
    fn changes_since(&self, owner: &str, since: u64, limit: usize) -> Result<Changes, StoreError> {
        Store::changes_since(self, owner, since, limit)
    }
    fn set_keywords<'a>(
        &'a self,
        owner: &'a str,
        ids: &'a [u64],
        change: &'a KeywordChange,
    ) -> StoreFuture<'a, (Vec<MessageMeta>, u64)> {
        Box::pin(Store::set_keywords(self, owner, ids, change))
    }
    fn copy<'a>(
        &'a self,
        owner: &'a str,
        ids: &'a [u64],
        to: MailboxId,
    ) -> StoreFuture<'a, (Vec<(u64, u32)>, u64)> {
        Box::pin(Store::copy(self, owner, ids, to))
    }
    fn move_messages<'a>(
        &'a self,
        owner: &'a str,
        ids: &'a [u64],
        from: MailboxId,
        to: MailboxId,
    ) -> StoreFuture<'a, (Vec<(u64, u32)>, u64)> {
        Box::pin(Store::move_messages(self, owner, ids, from, to))
    }
    fn remove_messages<'a>(
        &'a self,
        owner: &'a str,
        ids: &'a [u64],
        from: Option<MailboxId>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(Store::remove_messages(self, owner, ids, from))
    }
    fn quota(&self, owner: &str) -> Result<Quota, StoreError> {
        Store::quota(self, owner)
    }
    fn set_quota_default(&self, limits: QuotaLimits) {
        Store::set_quota_default(self, limits)
    }
    fn set_quota<'a>(
        &'a self,
        owner: &'a str,
        limits: Option<QuotaLimits>,
    ) -> StoreFuture<'a, Quota> {
        Box::pin(Store::set_quota(self, owner, limits))
    }
    fn users(&self) -> Result<Vec<String>, StoreError> {
        Store::users(self)
    }
    fn remove_user<'a>(&'a self, owner: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(Store::remove_user(self, owner))
    }
    fn alias(&self, key: &str) -> Option<Vec<String>> {
        Store::alias(self, key)
    }
    fn aliases(&self) -> Vec<(String, Vec<String>)> {
        Store::aliases(self)
    }
    fn put_alias<'a>(&'a self, key: &'a str, targets: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(Store::put_alias(self, key, targets))
    }
    fn remove_alias<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(Store::remove_alias(self, key))
    }
    fn has_txn(&self, txn_id: &[u8]) -> Result<bool, StoreError> {
        Store::has_txn(self, txn_id)
    }
    fn incarnation(&self, owner: &str) -> Result<u64, StoreError> {
        Store::incarnation(self, owner)
    }
    fn import_marks(
        &self,
        owner: &str,
        source: &str,
    ) -> Result<Vec<(String, crate::store::ImportMark)>, StoreError> {
        Store::import_marks(self, owner, source)
    }
    fn set_import_mark<'a>(
        &'a self,
        owner: &'a str,
        source: &'a str,
        folder: &'a str,
        mark: crate::store::ImportMark,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::set_import_mark(self, owner, source, folder, mark))
    }
    fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError> {
        Store::meta(self, id)
    }
    fn subject_of(&self, id: u64) -> Result<Option<(String, u64)>, StoreError> {
        Store::subject_of(self, id)
    }
    fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Store::raw(self, id)
    }
    fn body(&self, blob: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Store::body(self, blob)
    }
    fn cache_budget(&self) -> u64 {
        Store::cache_budget(self)
    }
    fn check(&self, repair: bool) -> Result<crate::store::CheckReport, StoreError> {
        Store::check(self, repair)
    }
    fn contacts(&self, owner: &str) -> Result<Vec<ContactRecord>, StoreError> {
        Store::contacts(self, owner)
    }
    fn contact(&self, owner: &str, address: &str) -> Result<Option<ContactRecord>, StoreError> {
        Store::contact(self, owner, address)
    }
    fn set_seen_level<'a>(
        &'a self,
        owner: &'a str,
        address: &'a str,
        seen: Option<SeenLevel>,
        now: i64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(Store::set_seen_level(self, owner, address, seen, now))
    }
    fn move_contact<'a>(
        &'a self,
        owner: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(Store::move_contact(self, owner, old, new))
    }
    fn user_stats(&self, localpart: &str) -> Result<UserStats, StoreError> {
        Store::user_stats(self, localpart)
    }
    fn set_public_opt_out<'a>(&'a self, localpart: &'a str, opt_out: bool) -> StoreFuture<'a, ()> {
        Box::pin(Store::set_public_opt_out(self, localpart, opt_out))
    }
    fn public_bucket(
        &self,
        prefix: &[u8],
        bits: u32,
        cap: usize,
    ) -> Result<Option<Vec<LevelEntry>>, StoreError> {
        Store::public_bucket(self, prefix, bits, cap)
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(Store::flush(self))
    }
    fn message_count(&self) -> usize {
        Store::message_count(self)
    }
}

//! The storage interface the SMTP, mesh and client code see. `Store` (sled)
//! is the embedded engine; another engine implements [`MailStore`] and is
//! handed to `MailService::new`, nothing else changes. The durable queues
//! (mesh outbox, SMTP queue) keep their own sled trees, opened by the daemon.
//!
//! Contract for every engine: a write that returns `Ok` is durable (it
//! survives kill -9), `deliver_once` is atomic and idempotent by `txn_id`,
//! and the contact book and counters change in the same atomic write as the
//! message they come from.

use super::{
    ContactRecord, MessageMeta, PathClass, SeenLevel, Store, StoreError, UserRecord, UserStats,
};
use crate::privacy::public::LevelEntry;
use std::future::Future;
use std::pin::Pin;

/// A pending storage operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Recipients of one delivery: (mailbox, the addresses of it in the envelope).
pub type Recipients = [(String, Vec<String>)];

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
    /// A mailbox's messages, oldest first.
    fn list(&self, mailbox: &str) -> Result<Vec<MessageMeta>, StoreError>;
    /// At most `limit` of a mailbox's messages with ids above `after`,
    /// oldest first, and whether more follow.
    fn list_page(
        &self,
        mailbox: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        let mut page: Vec<MessageMeta> = self
            .list(mailbox)?
            .into_iter()
            .filter(|m| after.is_none_or(|a| m.id > a))
            .take(limit.saturating_add(1))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }
    /// A message's record.
    fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError>;
    /// A message's bytes, exactly as received.
    fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// A user's contacts.
    fn contacts(&self, owner: &str) -> Result<Vec<ContactRecord>, StoreError>;
    /// One contact of a user.
    fn contact(&self, owner: &str, address: &str) -> Result<Option<ContactRecord>, StoreError>;
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
    fn list(&self, mailbox: &str) -> Result<Vec<MessageMeta>, StoreError> {
        Store::list(self, mailbox)
    }
    fn list_page(
        &self,
        mailbox: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        Store::list_page(self, mailbox, after, limit)
    }
    fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError> {
        Store::meta(self, id)
    }
    fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Store::raw(self, id)
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

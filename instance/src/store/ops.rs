//! The model's operations on the sled store: reading mailboxes and
//! messages, and each change to an account as one transaction made durable
//! by the group commit before it returns.

use super::model::{self, Account, Tx};
use super::{now_unix, tx_error, KeywordChange, Store, StoreError};
use crate::mail::mailbox::MailboxId;
use crate::mail::{Changes, Mailbox, MessageMeta, ModelError, Placement, Quota, QuotaLimits};
use sled::Transactional;
use std::collections::HashMap;

/// Most messages one change may name (a client changes more in several).
pub const MAX_IDS_PER_CHANGE: usize = 10_000;

/// Reads the alias table at open.
pub(super) fn load_aliases(mail: &sled::Tree) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut out = HashMap::new();
    for kv in mail.scan_prefix([model::TAG_ALIAS]) {
        let (k, v) = kv?;
        let alias = String::from_utf8_lossy(&k[1..]).into_owned();
        let targets: Vec<String> = serde_json::from_slice(&v).map_err(StoreError::Record)?;
        out.insert(alias, targets);
    }
    Ok(out)
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, StoreError> {
    Ok(super::record::from_slice(v)?)
}

impl Store {
    fn account(&self, owner: &str) -> Result<Account, StoreError> {
        match self.mail.get(model::ukey(model::TAG_ACCOUNT, owner, &[]))? {
            Some(v) => decode(&v),
            None => Err(ModelError::NoAccount(owner.to_owned()).into()),
        }
    }

    /// Runs one change of `owner`'s account in a transaction, then waits
    /// for the commit that makes it durable. Returns the closure's result
    /// and the account's new state.
    async fn change<T>(
        &self,
        owner: &str,
        f: impl Fn(&mut Tx<'_>) -> model::TxResult<T>,
    ) -> Result<(T, u64), StoreError> {
        if !self.user_exists(owner) {
            return Err(ModelError::NoAccount(owner.to_owned()).into());
        }
        let now = now_unix();
        let out = (&self.mail, &self.messages, &self.body_index)
            .transaction(|(mail, messages, bodies)| {
                let mut tx = Tx::open(mail, messages, bodies, owner, now)?;
                let r = f(&mut tx)?;
                let state = tx.finish()?;
                Ok((r, state))
            })
            .map_err(tx_error)?;
        self.commit.sync().await.map_err(StoreError::Flush)?;
        self.signals.notify(owner);
        Ok(out)
    }

    /// An account's mailboxes, by id.
    pub fn mailboxes(&self, owner: &str) -> Result<Vec<Mailbox>, StoreError> {
        Ok(self.account(owner)?.mailboxes.into_values().collect())
    }

    /// A mailbox by its name (`INBOX` in any case for the inbox).
    pub fn mailbox_named(&self, owner: &str, name: &str) -> Result<Option<Mailbox>, StoreError> {
        Ok(self.account(owner)?.named(name).cloned())
    }

    /// The account's modification sequence (JMAP `state`).
    pub fn state(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(self.account(owner)?.modseq)
    }

    /// Makes a mailbox (and its missing parents).
    pub async fn create_mailbox(&self, owner: &str, name: &str) -> Result<Mailbox, StoreError> {
        Ok(self.change(owner, |tx| tx.create_mailbox(name)).await?.0)
    }

    /// Renames a mailbox and its children.
    pub async fn rename_mailbox(
        &self,
        owner: &str,
        id: MailboxId,
        name: &str,
    ) -> Result<(), StoreError> {
        self.change(owner, |tx| tx.rename_mailbox(id, name))
            .await
            .map(|_| ())
    }

    /// Deletes a mailbox: the messages only it held leave the account.
    /// Returns how many messages it held.
    pub async fn delete_mailbox(&self, owner: &str, id: MailboxId) -> Result<usize, StoreError> {
        let ids: Vec<u64> = self.uids(owner, id)?.into_iter().map(|(_, i)| i).collect();
        let n = ids.len();
        self.change(owner, |tx| tx.delete_mailbox(id, &ids)).await?;
        self.prune(owner);
        Ok(n)
    }

    /// Every (UID, message id) of a mailbox, in UID order.
    pub fn uids(&self, owner: &str, mbx: MailboxId) -> Result<Vec<(u32, u64)>, StoreError> {
        let prefix = model::uid_prefix(owner, mbx);
        self.mail
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let uid = k
                    .get(prefix.len()..prefix.len() + 4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_be_bytes);
                let id = v
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                uid.zip(id)
                    .ok_or_else(|| StoreError::Corrupt("bad UID index entry".into()))
            })
            .collect()
    }

    /// At most `limit` messages of a mailbox with UIDs above `after`, in
    /// UID order, and whether more follow: a range read of the UID index.
    pub fn mailbox_page(
        &self,
        owner: &str,
        mbx: MailboxId,
        after: u32,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok((Vec::new(), false));
        };
        let end = model::uid_prefix(owner, mbx.saturating_add(1));
        self.page_of(
            self.mail.range(model::uid_key(owner, mbx, start)..end),
            limit,
        )
    }

    /// The messages the UID index entries of `entries` name, at most
    /// `limit`, and whether more follow.
    fn page_of(
        &self,
        entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        let mut out = Vec::new();
        for kv in entries {
            let (_, v) = kv?;
            if out.len() == limit {
                return Ok((out, true));
            }
            if let Some(m) = self.messages.get(&v)? {
                out.push(super::record::decode(&m)?);
            }
        }
        Ok((out, false))
    }

    /// At most `limit` messages of a mailbox with UIDs below `before`
    /// (`None`: from the newest), newest first, and whether more follow: a
    /// reverse range read of the UID index (the web client's pages).
    pub fn mailbox_newest(
        &self,
        owner: &str,
        mbx: MailboxId,
        before: Option<u32>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        let start = model::uid_prefix(owner, mbx);
        let end = match before {
            Some(uid) => model::uid_key(owner, mbx, uid),
            None => model::uid_prefix(owner, mbx.saturating_add(1)),
        };
        self.page_of(self.mail.range(start..end).rev(), limit)
    }

    /// The inbox's messages, in arrival (UID) order.
    pub fn list(&self, owner: &str) -> Result<Vec<MessageMeta>, StoreError> {
        Ok(self
            .mailbox_page(owner, crate::mail::Role::Inbox.id(), 0, usize::MAX)?
            .0)
    }

    /// At most `limit` messages of `mbx` after the message `after` (by
    /// UID), and whether more follow.
    pub fn list_page(
        &self,
        owner: &str,
        mbx: MailboxId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        let uid = match after {
            None => 0,
            Some(id) => match self.meta(id)?.and_then(|m| m.uid_in(mbx)) {
                Some(uid) => uid,
                None => return Err(ModelError::NoMessage(id).into()),
            },
        };
        self.mailbox_page(owner, mbx, uid, limit)
    }

    /// A thread's messages, oldest first.
    pub fn thread(&self, owner: &str, thread: u64) -> Result<Vec<MessageMeta>, StoreError> {
        let prefix = model::thread_prefix(owner, thread);
        let mut out = Vec::new();
        // The root (whose id is the thread's) has no entry of its own.
        if let Some(root) = self.meta(thread)? {
            if root.owner == owner && root.thread == thread && !root.placements.is_empty() {
                out.push(root);
            }
        }
        for kv in self.mail.scan_prefix(&prefix) {
            let (k, _) = kv?;
            if let Some(m) = self.messages.get(&k[prefix.len()..])? {
                out.push(super::record::decode(&m)?);
            }
        }
        Ok(out)
    }

    /// What changed in the account after `since`, at most about `limit`
    /// messages (more when one change touched more).
    pub fn changes_since(
        &self,
        owner: &str,
        since: u64,
        limit: usize,
    ) -> Result<Changes, StoreError> {
        model::changes_since(&self.mail, &self.messages, owner, since, limit)
    }

    fn check_ids(ids: &[u64]) -> Result<(), StoreError> {
        if ids.len() > MAX_IDS_PER_CHANGE {
            return Err(ModelError::Limit(format!(
                "at most {MAX_IDS_PER_CHANGE} messages per change"
            ))
            .into());
        }
        Ok(())
    }

    /// Changes the keywords of messages; returns their new records and the
    /// account's state.
    pub async fn set_keywords(
        &self,
        owner: &str,
        ids: &[u64],
        change: &KeywordChange,
    ) -> Result<(Vec<MessageMeta>, u64), StoreError> {
        Self::check_ids(ids)?;
        let (add, remove, replace) = change.normalised()?;
        self.change(owner, |tx| {
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let old = tx.message(id)?;
                let mut new = old.clone();
                if let Some(r) = &replace {
                    new.keywords = r.clone();
                }
                new.keywords.retain(|k| !remove.contains(k));
                new.keywords.extend(add.iter().cloned());
                if let Some(m) = tx.apply(&old, new)? {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Places messages in `to` as well (IMAP COPY, JMAP mailboxIds add);
    /// returns (message id, UID in `to`) for each. A message already there
    /// keeps its UID. Quota use does not change: the bytes are the same.
    pub async fn copy(
        &self,
        owner: &str,
        ids: &[u64],
        to: MailboxId,
    ) -> Result<(Vec<(u64, u32)>, u64), StoreError> {
        self.relocate(owner, ids, None, to).await
    }

    /// Moves messages from `from` to `to` (IMAP MOVE); returns (message
    /// id, UID in `to`) for each.
    pub async fn move_messages(
        &self,
        owner: &str,
        ids: &[u64],
        from: MailboxId,
        to: MailboxId,
    ) -> Result<(Vec<(u64, u32)>, u64), StoreError> {
        self.relocate(owner, ids, Some(from), to).await
    }

    async fn relocate(
        &self,
        owner: &str,
        ids: &[u64],
        from: Option<MailboxId>,
        to: MailboxId,
    ) -> Result<(Vec<(u64, u32)>, u64), StoreError> {
        Self::check_ids(ids)?;
        let r = self
            .change(owner, |tx| {
                if tx.mailbox(to)?.is_none() {
                    return Err(sled::transaction::ConflictableTransactionError::Abort(
                        ModelError::NoMailbox.into(),
                    ));
                }
                let mut out = Vec::with_capacity(ids.len());
                for &id in ids {
                    let old = tx.message(id)?;
                    let mut new = old.clone();
                    if let Some(f) = from {
                        if f != to {
                            new.placements.retain(|p| p.mailbox != f);
                        }
                    }
                    if !new.placements.iter().any(|p| p.mailbox == to) {
                        new.placements.push(Placement {
                            mailbox: to,
                            uid: 0,
                        });
                    }
                    let written = tx.apply(&old, new)?;
                    let uid = written.and_then(|m| m.uid_in(to)).unwrap_or(0);
                    out.push((id, uid));
                }
                Ok(out)
            })
            .await?;
        if from.is_some() {
            self.prune(owner);
        }
        Ok(r)
    }

    /// Takes messages out of `from` (IMAP EXPUNGE), or out of the account
    /// (`None`); a message left in no mailbox leaves the account and frees
    /// its quota. Returns the account's state.
    pub async fn remove_messages(
        &self,
        owner: &str,
        ids: &[u64],
        from: Option<MailboxId>,
    ) -> Result<u64, StoreError> {
        Self::check_ids(ids)?;
        let (_, state) = self
            .change(owner, |tx| {
                for &id in ids {
                    let old = tx.message(id)?;
                    let mut new = old.clone();
                    match from {
                        Some(f) => new.placements.retain(|p| p.mailbox != f),
                        None => new.placements.clear(),
                    }
                    tx.apply(&old, new)?;
                }
                Ok(())
            })
            .await?;
        self.prune(owner);
        Ok(state)
    }

    /// Drops tombstones past their time (a failure only keeps them longer).
    fn prune(&self, owner: &str) {
        if let Err(e) = model::prune_tombstones(&self.mail, owner, now_unix()) {
            tracing::warn!(owner, error = %e, "could not prune tombstones");
        }
    }

    /// Sets the limits that apply to accounts without their own.
    pub fn set_quota_default(&self, limits: QuotaLimits) {
        *self
            .quota_default
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    /// An account's quota (read on every RCPT).
    pub fn quota(&self, owner: &str) -> Result<Quota, StoreError> {
        let acct = self.account(owner)?;
        let default = *self
            .quota_default
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Quota {
            used: acct.used,
            limits: acct.limits.unwrap_or(default),
            overridden: acct.limits.is_some(),
        })
    }

    /// Gives an account its own limits, or (`None`) the default again.
    pub async fn set_quota(
        &self,
        owner: &str,
        limits: Option<QuotaLimits>,
    ) -> Result<Quota, StoreError> {
        self.change(owner, |tx| {
            tx.acct.limits = limits;
            // Written even when nothing else changes.
            tx.touch();
            Ok(())
        })
        .await?;
        self.quota(owner)
    }

    /// Every account (local parts), sorted.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        self.users
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Removes an account and everything it holds (mail, mailboxes,
    /// contacts, counters, published level). The user record goes first, in
    /// its own write: from then on the account takes no mail and no login;
    /// what it held is then deleted in batches, and a removal cut short by
    /// a crash is finished at the next open ([`super::upgrade`]).
    pub async fn remove_user(&self, owner: &str) -> Result<bool, StoreError> {
        if self.users.remove(owner.as_bytes())?.is_none() {
            return Ok(false);
        }
        self.user_cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(owner);
        self.commit.sync().await.map_err(StoreError::Flush)?;
        // Aliases stop naming it (an alias left with no account goes).
        for (alias, targets) in self.aliases() {
            if targets.iter().any(|t| t == owner) {
                let rest: Vec<String> = targets.into_iter().filter(|t| t != owner).collect();
                if rest.is_empty() {
                    self.remove_alias(&alias).await?;
                } else {
                    self.put_alias(&alias, &rest).await?;
                }
            }
        }
        self.purge_account(owner)?;
        self.commit.sync().await.map_err(StoreError::Flush)?;
        Ok(true)
    }

    /// Deletes what an account without a user record holds: its messages
    /// in batches (their bytes go with their last reference), then its
    /// mailboxes, indexes, contacts, counters and published level. Each
    /// batch is one transaction, so a crash leaves a consistent part done.
    pub(super) fn purge_account(&self, owner: &str) -> Result<(), StoreError> {
        for k in super::level_keys(owner, &self.served_domains()) {
            self.levels.remove(k)?;
        }
        let ids: Vec<u64> = self
            .mail
            .scan_prefix(model::change_prefix(b'C', owner))
            .keys()
            .map(|k| {
                let k = k?;
                k.get(k.len().saturating_sub(8)..)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("bad change key".into()))
            })
            .collect::<Result<_, StoreError>>()?;
        let now = now_unix();
        for batch in ids.chunks(256) {
            (&self.mail, &self.messages, &self.body_index)
                .transaction(|(mail, messages, bodies)| {
                    let mut tx = Tx::open(mail, messages, bodies, owner, now)?;
                    for &id in batch {
                        // A message already gone (a batch done before a crash) is skipped.
                        if let Ok(old) = tx.message(id) {
                            let mut new = old.clone();
                            new.placements.clear();
                            tx.apply(&old, new)?;
                        }
                    }
                    tx.finish()?;
                    Ok(())
                })
                .map_err(tx_error)?;
        }
        for tag in model::ACCOUNT_TAGS {
            for k in self.mail.scan_prefix(model::ukey(tag, owner, &[])).keys() {
                self.mail.remove(k?)?;
            }
        }
        for k in self
            .contacts
            .scan_prefix(super::contact_key(owner, ""))
            .keys()
        {
            self.contacts.remove(k?)?;
        }
        self.stats.remove(owner.as_bytes())?;
        self.prefs.remove(owner.as_bytes())?;
        Ok(())
    }

    /// The accounts an alias reaches (from memory: read on every RCPT).
    pub fn alias(&self, key: &str) -> Option<Vec<String>> {
        self.alias_cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Every alias, sorted.
    pub fn aliases(&self) -> Vec<(String, Vec<String>)> {
        let mut v: Vec<(String, Vec<String>)> = self
            .alias_cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }

    /// Makes or replaces an alias (`local@domain`, or `@domain` for a
    /// catch-all) for one or more accounts; durable.
    pub async fn put_alias(&self, key: &str, targets: &[String]) -> Result<(), StoreError> {
        let v = serde_json::to_vec(targets).map_err(StoreError::Record)?;
        self.mail.insert(model::alias_db_key(key), v)?;
        self.commit.sync().await.map_err(StoreError::Flush)?;
        self.alias_cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_owned(), targets.to_vec());
        Ok(())
    }

    /// Removes an alias; durable. False when there was none.
    pub async fn remove_alias(&self, key: &str) -> Result<bool, StoreError> {
        let had = self.mail.remove(model::alias_db_key(key))?.is_some();
        self.commit.sync().await.map_err(StoreError::Flush)?;
        self.alias_cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
        Ok(had)
    }
}

/// How far an import from one folder of another IMAP server has come
/// (`caliopen mail import --imap`): the folder's `UIDVALIDITY` and the
/// highest UID copied, so that the next run asks only for what is newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportMark {
    /// The folder's `UIDVALIDITY` when it was copied.
    pub uid_validity: u32,
    /// Every message up to this UID is copied.
    pub last_uid: u32,
}

fn import_key(owner: &str, source: &str, folder: &str) -> Result<Vec<u8>, StoreError> {
    if source.contains('\0') || folder.contains('\0') {
        return Err(StoreError::Model(ModelError::Limit(
            "an import source or folder name may not hold a NUL".into(),
        )));
    }
    let mut rest = Vec::with_capacity(source.len() + folder.len() + 1);
    rest.extend_from_slice(source.as_bytes());
    rest.push(0);
    rest.extend_from_slice(folder.as_bytes());
    Ok(model::ukey(model::TAG_IMPORT, owner, &rest))
}

impl Store {
    /// The account's incarnation (random, made with it; see
    /// `Account::incarnation`).
    pub fn incarnation(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(self.account(owner)?.incarnation)
    }

    /// Every folder mark of one import source of an account.
    pub fn import_marks(
        &self,
        owner: &str,
        source: &str,
    ) -> Result<Vec<(String, ImportMark)>, StoreError> {
        let prefix = import_key(owner, source, "")?;
        let mut out = Vec::new();
        for kv in self.mail.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let folder = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let mark: ImportMark = serde_json::from_slice(&v).map_err(StoreError::Record)?;
            out.push((folder, mark));
        }
        Ok(out)
    }

    /// Records how far an import from `folder` of `source` has come;
    /// durable. Written after the messages it covers are.
    pub async fn set_import_mark(
        &self,
        owner: &str,
        source: &str,
        folder: &str,
        mark: ImportMark,
    ) -> Result<(), StoreError> {
        let key = import_key(owner, source, folder)?;
        let v = serde_json::to_vec(&mark).map_err(StoreError::Record)?;
        self.mail.insert(key, v)?;
        self.commit.sync().await.map_err(StoreError::Flush)
    }
}

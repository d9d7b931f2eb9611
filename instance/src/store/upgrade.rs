//! Upgrades a data directory at open, resumably.
//!
//! From the releases before the mail core (schema 1: a flat index
//! `mailbox` of owner, 0x00, message id): every user gets an account and
//! its six mailboxes, and every message lands in the inbox, without
//! `$seen`, with UIDs in arrival (id) order and a thread. Each batch moves
//! its messages and removes their old index entries in one transaction, so
//! a crash in the middle leaves each message either in the old index or in
//! the new one, never both nor neither; the next open goes on from there.
//!
//! At every open, an account whose user was removed (a removal cut short by
//! a crash) is finished off.

use super::model::{self, Tx, KEY_VERSION, SCHEMA_VERSION};
use super::{now_unix, tx_error, MessageMeta, Store, StoreError};
use crate::mail::Role;
use sled::Transactional;

/// Messages moved per transaction.
const BATCH: usize = 256;

/// What an upgrade did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Accounts made for users that had none.
    pub accounts: usize,
    /// Messages moved from the flat index into inboxes.
    pub messages: usize,
    /// Old index entries whose message was missing (dropped).
    pub dangling: usize,
    /// Accounts of removed users purged.
    pub purged: usize,
}

/// Runs what the data directory needs; returns what it did.
pub fn run(store: &Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let version = store
        .mail
        .get(KEY_VERSION)?
        .and_then(|v| {
            v.get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
        })
        .unwrap_or(1);
    if version < SCHEMA_VERSION {
        report = from_flat(store)?;
        store
            .mail
            .insert(KEY_VERSION, &SCHEMA_VERSION.to_be_bytes())?;
        store.db.flush()?;
        tracing::info!(
            accounts = report.accounts,
            messages = report.messages,
            dangling = report.dangling,
            "data directory upgraded to the mail core (schema {SCHEMA_VERSION})"
        );
    }
    let mut orphans = Vec::new();
    for k in store.mail.scan_prefix([model::TAG_ACCOUNT]).keys() {
        let k = k?;
        let owner = String::from_utf8_lossy(&k[1..k.len().saturating_sub(1)]).into_owned();
        if store.users.get(owner.as_bytes())?.is_none() {
            orphans.push(owner);
        }
    }
    for owner in orphans {
        tracing::info!(user = %owner, "finishing the removal of an account");
        store.purge_account(&owner)?;
        report.purged += 1;
    }
    if report.purged > 0 {
        store.db.flush()?;
    }
    Ok(report)
}

fn from_flat(store: &Store) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let now = now_unix();
    for u in store.users.iter().keys() {
        let owner = String::from_utf8_lossy(&u?).into_owned();
        let made = store
            .mail
            .transaction(|m| {
                if m.get(model::ukey(model::TAG_ACCOUNT, &owner, &[]))?
                    .is_some()
                {
                    return Ok(false);
                }
                model::new_account(m, &owner, now)?;
                Ok(true)
            })
            .map_err(tx_error)?;
        report.accounts += usize::from(made);
    }
    loop {
        let batch: Vec<(sled::IVec, String, u64)> = store
            .legacy_mailbox
            .iter()
            .keys()
            .take(BATCH)
            .map(|k| {
                let k = k?;
                let split = k.iter().position(|&b| b == 0).unwrap_or(k.len());
                let owner = String::from_utf8_lossy(&k[..split]).into_owned();
                let id = k
                    .get(split + 1..split + 9)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Ok((k.clone(), owner, id))
            })
            .collect::<Result<_, StoreError>>()?;
        if batch.is_empty() {
            break;
        }
        // Read outside the transaction: the records and bytes of messages
        // in the old index are not written by anyone else.
        let mut work = Vec::with_capacity(batch.len());
        for (key, owner, id) in batch {
            let meta: Option<MessageMeta> = match store.messages.get(id.to_be_bytes())? {
                Some(v) => Some(
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                ),
                None => None,
            };
            let facts = match store.raw.get(id.to_be_bytes())? {
                Some(raw) => crate::mail::thread::facts(&raw),
                None => Default::default(),
            };
            work.push((key, owner, meta, facts));
        }
        let (moved, dangling) = (
            &store.mail,
            &store.messages,
            &store.raw,
            &store.legacy_mailbox,
        )
            .transaction(|(mail, messages, raw, legacy)| {
                let (mut moved, mut dangling) = (0, 0);
                for (key, owner, meta, facts) in &work {
                    legacy.remove(key)?;
                    let Some(meta) = meta.clone().filter(|m| m.placements.is_empty()) else {
                        dangling += 1;
                        continue;
                    };
                    let mut tx = Tx::open(mail, messages, raw, owner, now)?;
                    let meta = MessageMeta {
                        owner: owner.clone(),
                        ..meta
                    };
                    tx.add(meta, Role::Inbox.id(), &[], facts)?;
                    tx.finish()?;
                    moved += 1;
                }
                Ok((moved, dangling))
            })
            .map_err(tx_error)?;
        report.messages += moved;
        report.dangling += dangling;
    }
    Ok(report)
}

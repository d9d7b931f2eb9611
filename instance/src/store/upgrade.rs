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

use super::model::{self, Tx, KEY_VERSION, MAIL_CORE_VERSION, SCHEMA_VERSION};
use super::{now_unix, tx_error, MessageMeta, Store, StoreError};
use crate::mail::Role;
use sled::Transactional;

/// Messages moved per transaction.
const BATCH: usize = 256;

/// What an upgrade did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Report {
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
pub(crate) fn run(store: &Store) -> Result<Report, StoreError> {
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
    if version > SCHEMA_VERSION {
        // Records this release cannot read may be there: refuse rather
        // than misread or rewrite them.
        return Err(StoreError::Newer {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    if version < MAIL_CORE_VERSION {
        report = from_flat(store)?;
        tracing::info!(
            accounts = report.accounts,
            messages = report.messages,
            dangling = report.dangling,
            "data directory upgraded to the mail core"
        );
    }
    if version < SCHEMA_VERSION {
        store
            .mail
            .insert(KEY_VERSION, &SCHEMA_VERSION.to_be_bytes())?;
        store.db.flush()?;
        tracing::info!("data directory at schema {SCHEMA_VERSION} (was {version})");
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
                Some(v) => Some(super::record::decode(&v)?),
                None => None,
            };
            let facts = match store.legacy_raw.get(id.to_be_bytes())? {
                Some(raw) => crate::mail::thread::facts(&raw),
                None => Default::default(),
            };
            work.push((key, owner, meta, facts));
        }
        let (moved, dangling) = (
            &store.mail,
            &store.messages,
            &store.body_index,
            &store.legacy_mailbox,
        )
            .transaction(|(mail, messages, bodies, legacy)| {
                let (mut moved, mut dangling) = (0, 0);
                for (key, owner, meta, facts) in &work {
                    legacy.remove(key)?;
                    let Some(meta) = meta.clone().filter(|m| m.placements.is_empty()) else {
                        dangling += 1;
                        continue;
                    };
                    let mut tx = Tx::open(mail, messages, bodies, owner, now)?;
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

/// Bodies moved per batch (and at most this many bytes).
const BODY_BATCH: usize = 512;
const BODY_BATCH_BYTES: usize = 16 << 20;

/// Moves the message bytes that releases before the body store kept in
/// sled (`raw`) into the segment files, in batches: each batch's bodies
/// are written and synced, then one transaction names them in the index
/// and removes them from `raw`. A crash in the middle leaves each body in
/// `raw` (its copy in a segment, if written, is dead space that compaction
/// reclaims) or moved, never neither; the next open goes on from there.
/// Returns the bodies moved.
pub(crate) fn bodies_out_of_sled(store: &Store) -> Result<u64, StoreError> {
    let total = store.legacy_raw.len();
    if total == 0 {
        return Ok(0);
    }
    tracing::info!(bodies = total, "moving message bodies out of sled");
    let started = std::time::Instant::now();
    let mut moved = 0u64;
    loop {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for kv in store.legacy_raw.iter() {
            let (k, v) = kv?;
            let Some(blob) = <[u8; 8]>::try_from(k.as_ref()).ok().map(u64::from_be_bytes) else {
                continue;
            };
            bytes += v.len();
            batch.push((blob, v));
            if batch.len() >= BODY_BATCH || bytes >= BODY_BATCH_BYTES {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let mut placed = Vec::with_capacity(batch.len());
        for (blob, raw) in &batch {
            let e = super::bodies::encode(raw, store.codec.0, store.codec.1)?;
            store.bodies.check_space(e.payload.len() as u64)?;
            placed.push((*blob, store.bodies.append(*blob, &e)?));
        }
        store.bodies.sync()?;
        let applied = (&store.legacy_raw, &store.body_index)
            .transaction(|(raw, index)| {
                for (blob, loc) in &placed {
                    if raw.remove(&blob.to_be_bytes())?.is_none() {
                        continue;
                    }
                    index.insert(model::body_key(*blob), loc.encode())?;
                    let hk = model::hash_key(&loc.hash);
                    if index.get(&hk)?.is_none() {
                        index.insert(hk, &blob.to_be_bytes())?;
                    }
                }
                Ok(())
            })
            .map_err(tx_error);
        for (_, loc) in &placed {
            store.bodies.settle(Some(loc));
        }
        applied?;
        store.db.flush()?;
        moved += placed.len() as u64;
        if moved % 20_000 < placed.len() as u64 {
            tracing::info!(moved, total, "moving message bodies out of sled");
        }
    }
    tracing::info!(
        moved,
        seconds = started.elapsed().as_secs_f64(),
        "message bodies moved out of sled"
    );
    Ok(moved)
}

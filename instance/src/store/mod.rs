//! The instance's storage: one sled database, owned by one process.
//!
//! Trees (the list is kept here and nowhere else):
//! - `users`: local part → user record (JSON: password hash, created_at).
//! - `messages`: message id (u64 BE) → [`MessageMeta`] (JSON).
//! - `raw`: message id → the message bytes exactly as received.
//! - `mailbox`: local part, 0x00, message id → empty (a user's mailbox index).
//! - `mesh_txns`: mesh `txn_id` → the message ids it produced (idempotence).
//! - `mesh_outbox`: owned by `caliopen_federation::Outbox` (mail waiting for a member).
//!
//! Writes are made durable by group commit ([`GroupCommit`]): a message is
//! acknowledged only after the flush that covers it.

mod commit;

pub use commit::GroupCommit;

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Db(#[from] sled::Error),
    /// The flush failed: nothing may be acknowledged.
    #[error("storage flush failed: {0}")]
    Flush(String),
    /// A record did not decode.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The database is held by another process.
    #[error("{0}")]
    Locked(String),
}

/// How a message reached this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// From another labelled member, over the mesh.
    Mesh,
    /// By SMTP from the outside world.
    Smtp,
    /// Submitted by a user of this instance for another of its users.
    Local,
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
}

/// What is kept about a stored message besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// Message id.
    pub id: u64,
    /// Owner (local part).
    pub mailbox: String,
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
}

/// A user record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Password hash (PHC string).
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    messages: sled::Tree,
    raw: sled::Tree,
    mailbox: sled::Tree,
    txns: sled::Tree,
    commit: Arc<GroupCommit>,
    user_cache: Arc<RwLock<HashSet<String>>>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// Opens the database at `path` (must run inside a tokio runtime: it
    /// starts the group committer).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked(format!(
                "{} is in use by another process (is `caliopen run` already running?)",
                path.display()
            )),
            other => StoreError::Db(other),
        })?;
        let users = db.open_tree("users")?;
        let cache: HashSet<String> = users
            .iter()
            .keys()
            .filter_map(|k| k.ok().map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect();
        Ok(Self {
            messages: db.open_tree("messages")?,
            raw: db.open_tree("raw")?,
            mailbox: db.open_tree("mailbox")?,
            txns: db.open_tree("mesh_txns")?,
            users,
            commit: GroupCommit::start(db.clone(), Some(path.to_owned())),
            user_cache: Arc::new(RwLock::new(cache)),
            db,
        })
    }

    /// The database (for trees owned by other components, like the mesh outbox).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The group committer (for its counters).
    pub fn committer(&self) -> &GroupCommit {
        &self.commit
    }

    /// Creates or replaces a user.
    pub async fn put_user(&self, localpart: &str, password_hash: &str) -> Result<(), StoreError> {
        let rec = UserRecord {
            password_hash: password_hash.to_owned(),
            created_at: now_unix(),
        };
        let v = serde_json::to_vec(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.users.insert(localpart.as_bytes(), v)?;
        self.commit.sync().await.map_err(StoreError::Flush)?;
        self.user_cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(localpart.to_owned());
        Ok(())
    }

    /// True when the user exists (from memory: called on every RCPT).
    pub fn user_exists(&self, localpart: &str) -> bool {
        self.user_cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(localpart)
    }

    /// A user's record.
    pub fn user(&self, localpart: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users
            .get(localpart.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Stores one copy of `raw` per local recipient mailbox, durably: when
    /// this returns Ok, a crash loses nothing. Returns the message ids.
    pub async fn deliver_local(
        &self,
        template: &MessageMeta,
        recipients: &[(String, Vec<String>)],
        raw: &[u8],
    ) -> Result<Vec<u64>, StoreError> {
        self.deliver_once(template, recipients, raw, None)
            .await
            .map(|(ids, _)| ids)
    }

    /// Like [`Store::deliver_local`], idempotent by `txn_id`: a transaction
    /// seen before stores nothing and returns its ids with `true`. The check
    /// and the copies are one sled transaction, so a crash between them can
    /// neither lose nor duplicate.
    pub async fn deliver_once(
        &self,
        template: &MessageMeta,
        recipients: &[(String, Vec<String>)],
        raw: &[u8],
        txn_id: Option<&[u8]>,
    ) -> Result<(Vec<u64>, bool), StoreError> {
        let mut prepared = Vec::with_capacity(recipients.len());
        for (mailbox, to) in recipients {
            let id = self.db.generate_id()?;
            let meta = MessageMeta {
                id,
                mailbox: mailbox.clone(),
                to: to.clone(),
                size: raw.len(),
                ..template.clone()
            };
            let meta_bytes =
                serde_json::to_vec(&meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut mkey = mailbox.as_bytes().to_vec();
            mkey.push(0);
            mkey.extend_from_slice(&id.to_be_bytes());
            prepared.push((id, meta_bytes, mkey));
        }
        let ids: Vec<u64> = prepared.iter().map(|p| p.0).collect();
        let ids_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
        let outcome = (&self.raw, &self.messages, &self.mailbox, &self.txns)
            .transaction(|(r, m, b, t)| {
                if let Some(txn) = txn_id {
                    if let Some(prev) = t.get(txn)? {
                        return Ok(Some(prev.to_vec()));
                    }
                    t.insert(txn, ids_bytes.as_slice())?;
                }
                for (id, meta, mkey) in &prepared {
                    let key = id.to_be_bytes();
                    r.insert(&key, raw)?;
                    m.insert(&key, meta.as_slice())?;
                    b.insert(mkey.as_slice(), &[])?;
                }
                Ok(None)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(s) => StoreError::Db(s),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Corrupt("transaction aborted".into())
                }
            })?;
        self.commit.sync().await.map_err(StoreError::Flush)?;
        Ok(match outcome {
            Some(prev) => (
                prev.chunks_exact(8)
                    .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                true,
            ),
            None => (ids, false),
        })
    }

    /// A mailbox's messages, oldest first.
    pub fn list(&self, mailbox: &str) -> Result<Vec<MessageMeta>, StoreError> {
        let mut prefix = mailbox.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.mailbox.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let id = &k[prefix.len()..];
            if let Some(v) = self.messages.get(id)? {
                out.push(
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                );
            }
        }
        Ok(out)
    }

    /// A message's bytes, exactly as received.
    pub fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.raw.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Flushes everything to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.commit.sync().await.map_err(StoreError::Flush)
    }

    /// Number of stored messages.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }
}

use sled::Transactional;

/// The mesh outbox lives in this database: its enqueues are made durable by
/// the same group commit as the mailboxes.
impl caliopen_federation::Durability for Store {
    fn sync(&self) -> caliopen_federation::BoxFuture<Result<(), String>> {
        let store = self.clone();
        Box::pin(async move { store.flush().await.map_err(|e| e.to_string()) })
    }
}

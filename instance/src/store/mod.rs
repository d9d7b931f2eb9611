//! The instance's storage: one sled database, owned by one process.
//!
//! Trees (the list is kept here and nowhere else: every tree any module
//! opens in this database, `grep -rn 'open_tree(' instance/src`). Owned by
//! the store:
//! - `users`: local part → user record (JSON: password hash, created_at).
//! - `messages`: message id (u64 BE) → [`MessageMeta`] (binary, [`record`]).
//! - `bodies`: the index of message bytes, which are kept in segment files
//!   of their own ([`bodies`]): `B` blob id → location, `#` SHA-256 → blob
//!   id (the content address: the same bytes are kept once, whoever they
//!   were delivered to), `Q` blob id → a body `caliopen store check
//!   --repair` set aside. `R` entries of `mail` count a blob's references.
//! - `raw`: blob id → message bytes, in sled, as releases before the body
//!   store kept them; emptied into the segments at open ([`upgrade`]).
//! - `mail`: the mail model — accounts, mailboxes, UIDs, changes,
//!   tombstones, threads, aliases (see [`model`] for its keys).
//! - `mailbox`: the flat per-user index of releases before the mail core;
//!   emptied into `mail` by the upgrade at open ([`upgrade`]).
//! - `mesh_txns`: mesh `txn_id` → the message ids it produced (idempotence).
//! - `contacts`: local part, 0x00, normalised address → [`ContactRecord`] (postcard, [`record`]).
//! - `user_stats`: local part → [`UserStats`] (postcard, [`record`]: counters, firsts, opt-out).
//! - `public_levels`: SHA-256 of a user's normalised address → level (1 byte);
//!   only opted-in users; what mesh peers may ask for by hash prefix.
//! - `web_prefs`: local part → the web client's settings of that account
//!   ([`crate::mail::prefs::Prefs`], JSON).
//!
//! Owned by other modules, opened on [`Store::db`]:
//! - `smtp_queue`: sequence (u64 BE) → an outgoing message's envelope,
//!   destination and retry state (JSON); `smtp_queue_raw`: sequence → its
//!   bytes. Both `crate::outbound` (the SMTP queue).
//! - `tlsrpt`: UTC day (u32 BE) and recipient domain → the TLS outcomes of
//!   direct deliveries that day (JSON), until reported; `crate::tlsrpt`
//!   (RFC 8460).
//! - `mta_sts`: recipient domain → its cached MTA-STS policy (JSON, used
//!   while fresh: the policy's `max_age`); `crate::mta_sts` (RFC 8461).
//! - `mesh_outbox`: what releases before the federation journal kept of
//!   mail waiting for a member (protobuf `OutboxRecord`s). The mesh outbox
//!   (`caliopen_federation::Outbox`) is now its own append-only journal,
//!   files under `DATA/mesh-outbox/`, not a tree: at start the daemon
//!   opens this tree only to move what is left into the journal and clear
//!   it (`Outbox::import_sled`, called by `crate::mesh`).
//!
//! Writes are made durable by group commit ([`GroupCommit`]): a message is
//! acknowledged only after the flush that covers it.

pub(crate) mod bodies;
mod check;
mod commit;
mod compact;
mod engine;
pub(crate) mod model;
mod ops;
pub mod record;
pub(crate) mod upgrade;

#[cfg(test)]
mod body_tests;

pub(crate) use crate::mail::{
    contact_key, ContactRecord, Delivery, MessageMeta, PathClass, SeenLevel, Transport, UserStats,
    Via,
};
pub use bodies::{encode as encode_body, Codec, Encoded, StoreOptions};
pub use check::CheckReport;
pub use commit::{FlushError, GroupCommit};
pub use engine::{KeywordChange, MailStore, Recipients, StoreFuture};
pub use ops::{ImportMark, MAX_IDS_PER_CHANGE};

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// A storage failure, or a change the model refuses.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage: {0}")]
    Db(#[from] sled::Error),
    /// The flush failed: nothing may be acknowledged.
    #[error("storage flush failed: {0}")]
    Flush(#[from] FlushError),
    /// A record did not decode (or, never in practice, encode).
    #[error("corrupt record: {0}")]
    Record(#[from] serde_json::Error),
    /// A record does not decode.
    #[error("corrupt record: {0}")]
    Decode(#[from] record::RecordError),
    /// The data directory was written by a newer release.
    #[error("the data directory is at schema {found}, newer than this release's {known}: run the release that wrote it (or a newer one)")]
    Newer {
        /// The schema version found.
        found: u32,
        /// The newest this release knows.
        known: u32,
    },
    /// A record or index entry is not what this version writes.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The database is held by another process.
    #[error("{0}")]
    Locked(String),
    /// The change is refused (bad name, no such mailbox, over quota…).
    #[error(transparent)]
    Model(#[from] crate::mail::ModelError),
    /// This storage engine does not keep that part of the model.
    #[error("this storage engine does not keep {0}")]
    Unsupported(&'static str),
    /// The disk is full, or below the configured reserve (temporary: SMTP
    /// answers `452 4.3.1`).
    #[error("insufficient storage: {0}")]
    Full(String),
    /// A file of the body store failed.
    #[error("body store: {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A deduplicated body went away before the delivery naming it was
    /// written (the writer stores the bytes and tries again).
    #[error("shared body {0:016x} went away")]
    BodyGone(u64),
}

impl StoreError {
    /// True when the failure is a full disk (sled's own `ENOSPC` included).
    pub fn is_full(&self) -> bool {
        match self {
            StoreError::Full(_) => true,
            StoreError::Db(sled::Error::Io(e)) => e.raw_os_error() == Some(28),
            _ => false,
        }
    }
}

/// A user record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Password hash (PHC string).
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// The writer thread, joined when the last [`Store`] handle is dropped:
/// its own handle on the database (and the committer's, which it holds
/// last) must be gone for the database to be closed, so that another
/// process can open it right after.
#[derive(Debug)]
struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the store's writer thread panicked");
            }
        }
    }
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    messages: sled::Tree,
    /// Message bytes kept in sled by releases before the body store
    /// (emptied at open).
    legacy_raw: sled::Tree,
    /// The body index (`bodies`).
    body_index: sled::Tree,
    /// The segment files.
    bodies: bodies::Bodies,
    /// How new bodies are written.
    codec: (Codec, i32),
    /// The memory budget for caches (`[store] cache_mb`), in bytes.
    cache_bytes: u64,
    mail: sled::Tree,
    /// The flat index of releases before the mail core (emptied at open).
    legacy_mailbox: sled::Tree,
    txns: sled::Tree,
    contacts: sled::Tree,
    stats: sled::Tree,
    levels: sled::Tree,
    /// Web client settings per account ([`crate::mail::prefs::Prefs`], JSON).
    prefs: sled::Tree,
    domains: Arc<RwLock<Vec<String>>>,
    quota_default: Arc<RwLock<crate::mail::QuotaLimits>>,
    commit: Arc<GroupCommit>,
    batcher: tokio::sync::mpsc::Sender<(Job, JobReply)>,
    /// Joins the writer thread when the last handle goes (declared after
    /// `batcher`, whose drop is what ends the thread).
    _writer: Option<Arc<WriterThread>>,
    user_cache: Arc<RwLock<HashSet<String>>>,
    alias_cache: Arc<RwLock<HashMap<String, Vec<String>>>>,
    /// Delivery batches written (one sled transaction each).
    batches: Arc<std::sync::atomic::AtomicU64>,
    /// Wakes the sessions that watch an account (IMAP IDLE).
    signals: Arc<Signals>,
    /// Told about each new delivery (set once).
    delivered: Arc<std::sync::OnceLock<DeliveredHook>>,
    /// Where the database lives (`DATA/db`).
    root: std::path::PathBuf,
    /// Reclaims dead body space in the background (joined at the last drop).
    _compactor: Option<Arc<compact::CompactorThread>>,
}

/// What is told about each new delivery once it is durable: the message
/// bytes (the web client prepares large HTML bodies ahead of the first
/// view). Called on the delivering task: it must not block.
pub struct DeliveredHook(pub Box<DeliveredFn>);

/// The function of a [`DeliveredHook`]: the message bytes.
pub type DeliveredFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for DeliveredHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeliveredHook")
    }
}

/// One signal per watched account, bumped after each durable change.
#[derive(Debug, Default)]
pub struct Signals {
    map: std::sync::Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
}

impl Signals {
    /// A receiver that sees every later change of `owner`'s account.
    pub fn subscribe(&self, owner: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.entry(owner.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// Tells `owner`'s watchers that the account changed; forgets an
    /// account nobody watches any more.
    pub fn notify(&self, owner: &str) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = m.get(owner) {
            if tx.receiver_count() == 0 {
                m.remove(owner);
            } else {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// Opens the database at `path` (must run inside a tokio runtime: it
    /// starts the group committer).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// Opens the database at `path` with these options.
    pub fn open_with(path: &Path, opts: &StoreOptions) -> Result<Self, StoreError> {
        // sled's page cache is most of the memory the store uses; the rest
        // of the budget is for our own caches (the web client's).
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(opts.cache_bytes / 4 * 3)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Locked(format!(
                        "{} is in use by another process (is `caliopen run` already running?)",
                        path.display()
                    ))
                }
                other => StoreError::Db(other),
            })?;
        let users = db.open_tree("users")?;
        let cache: HashSet<String> = users
            .iter()
            .keys()
            .filter_map(|k| k.ok().map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect();
        // The writer thread holds a Store whose own sender goes nowhere, so that
        // it stops when the last real Store (and its sender) is dropped.
        let (unused, _) = tokio::sync::mpsc::channel(1);
        let mail = db.open_tree("mail")?;
        let aliases = ops::load_aliases(&mail)?;
        let writer = Self {
            batcher: unused,
            _writer: None,
            messages: db.open_tree("messages")?,
            legacy_raw: db.open_tree("raw")?,
            body_index: db.open_tree("bodies")?,
            bodies: bodies::Bodies::open(&path.join("bodies"), opts.min_free_bytes)?,
            codec: (opts.codec, opts.zstd_level),
            cache_bytes: opts.cache_bytes,
            mail,
            legacy_mailbox: db.open_tree("mailbox")?,
            txns: db.open_tree("mesh_txns")?,
            contacts: db.open_tree("contacts")?,
            stats: db.open_tree("user_stats")?,
            levels: db.open_tree("public_levels")?,
            prefs: db.open_tree("web_prefs")?,
            domains: Arc::new(RwLock::new(Vec::new())),
            quota_default: Arc::default(),
            alias_cache: Arc::new(RwLock::new(aliases)),
            users,
            commit: GroupCommit::start(db.clone(), Some(path.to_owned())),
            user_cache: Arc::new(RwLock::new(cache)),
            batches: Arc::default(),
            signals: Arc::default(),
            delivered: Arc::default(),
            root: path.to_owned(),
            _compactor: None,
            db,
        };
        let (batcher, thread) = writer.start_batcher();
        let store = Self {
            batcher,
            _writer: thread.map(|h| Arc::new(WriterThread(Some(h)))),
            ..writer
        };
        upgrade::run(&store)?;
        upgrade::bodies_out_of_sled(&store)?;
        let compactor = compact::CompactorThread::start(&store, opts.compact_every);
        Ok(Self {
            _compactor: Some(Arc::new(compactor)),
            ..store
        })
    }

    /// The database (for trees owned by other components, like the mesh outbox).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Delivery batches written so far (each one sled transaction).
    pub fn batches_written(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The group committer (for its counters).
    pub fn committer(&self) -> &GroupCommit {
        &self.commit
    }

    /// Creates or replaces a user; a new user gets its account and six
    /// role mailboxes in the same write.
    pub async fn put_user(&self, localpart: &str, password_hash: &str) -> Result<(), StoreError> {
        let rec = UserRecord {
            password_hash: password_hash.to_owned(),
            created_at: now_unix(),
        };
        let v = serde_json::to_vec(&rec).map_err(StoreError::Record)?;
        let now = now_unix();
        (&self.users, &self.mail)
            .transaction(|(u, m)| {
                u.insert(localpart.as_bytes(), v.as_slice())?;
                if m.get(model::ukey(model::TAG_ACCOUNT, localpart, &[]))?
                    .is_none()
                {
                    model::new_account(m, localpart, now)?;
                }
                Ok(())
            })
            .map_err(tx_error)?;
        let stats = self.user_stats(localpart)?;
        self.publish_level(localpart, &stats)?;
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
            .map(|v| serde_json::from_slice(&v).map_err(StoreError::Record))
            .transpose()
    }

    /// True when a transaction of [`Store::deliver_once`] was stored.
    pub fn has_txn(&self, txn_id: &[u8]) -> Result<bool, StoreError> {
        Ok(self.txns.contains_key(txn_id)?)
    }

    /// Stores `raw` for every delivery (an account and a mailbox each),
    /// durably: when this returns Ok, a crash loses nothing. Returns the
    /// message ids, one per delivery.
    pub async fn deliver_local(
        &self,
        template: &MessageMeta,
        deliveries: &[Delivery],
        raw: &[u8],
    ) -> Result<Vec<u64>, StoreError> {
        self.deliver_once(template, deliveries, raw, None)
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
        deliveries: &[Delivery],
        raw: &[u8],
        txn_id: Option<&[u8]>,
    ) -> Result<(Vec<u64>, bool), StoreError> {
        if deliveries.is_empty() {
            return Ok((Vec::new(), false));
        }
        let job = self.prepare(template, deliveries, raw, txn_id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batcher
            .send((job, tx))
            .await
            .map_err(|_| StoreError::Flush(FlushError::Closing))?;
        let r = rx
            .await
            .map_err(|_| StoreError::Flush(FlushError::Closing))?;
        if r.as_ref().is_ok_and(|(_, seen)| !seen) {
            for d in deliveries {
                self.signals.notify(&d.owner);
            }
            if let Some(h) = self.delivered.get() {
                (h.0)(raw);
            }
        }
        r
    }

    /// Sets what is told about each new delivery, once it is durable (the
    /// first caller wins; `false` when one was set already).
    pub fn set_delivered_hook(&self, hook: DeliveredHook) -> bool {
        self.delivered.set(hook).is_ok()
    }

    /// A directory for data derived from the store and rebuilt at will
    /// (`DATA/db/NAME`): not part of its durability promise.
    pub fn derived_dir(&self, name: &str) -> std::path::PathBuf {
        self.root.join(name)
    }

    /// Everything a delivery writes, computed before the transaction.
    fn prepare(
        &self,
        template: &MessageMeta,
        deliveries: &[Delivery],
        raw: &[u8],
        txn_id: Option<&[u8]>,
    ) -> Result<Job, StoreError> {
        let mut prepared = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let id = self.db.generate_id()?;
            let meta = MessageMeta {
                id,
                owner: d.owner.clone(),
                to: d.to.clone(),
                size: raw.len(),
                ..template.clone()
            };
            prepared.push((meta, d.clone()));
        }
        let ids: Vec<u64> = prepared.iter().map(|p| p.0.id).collect();
        let blob = ids[0];
        for (m, _) in &mut prepared {
            m.blob = (m.id != blob).then_some(blob);
        }
        let (corr, facts) =
            crate::privacy::correspondence_and_thread(raw, &template.from, template.received_at);
        let body = bodies::encode(raw, self.codec.0, self.codec.1)?;
        Ok(Job {
            ids_bytes: ids.iter().flat_map(|i| i.to_be_bytes()).collect(),
            ids,
            blob,
            prepared,
            corr,
            facts,
            class: path_class(template),
            received_at: template.received_at,
            body,
            loc: None,
            txn_id: txn_id.map(<[u8]>::to_vec),
        })
    }

    /// Writes a batch of deliveries in one sled transaction (each delivery
    /// still all-or-nothing and idempotent by its `txn_id`). Returns, per
    /// job, the ids of an earlier delivery of the same transaction.
    fn write_batch(&self, jobs: &[&Job]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let domains = self.served_domains();
        let now = now_unix();
        (
            &self.body_index,
            &self.messages,
            &self.mail,
            &self.txns,
            &self.contacts,
            &self.stats,
            &self.levels,
        )
            .transaction(|(r, m, b, t, c, st, lv)| {
                let mut outcomes = Vec::with_capacity(jobs.len());
                // Each account is read once and written once per batch.
                let mut accounts: HashMap<String, model::Account> = HashMap::new();
                for job in jobs {
                    if let Some(txn) = &job.txn_id {
                        if let Some(prev) = t.get(txn)? {
                            outcomes.push(Some(prev.to_vec()));
                            continue;
                        }
                        t.insert(txn.as_slice(), job.ids_bytes.as_slice())?;
                    }
                    write_job(job, (r, m, b, c, st, lv), &domains, now, &mut accounts)?;
                    outcomes.push(None);
                }
                for (owner, acct) in &accounts {
                    model::put_account(b, owner, acct)?;
                }
                Ok(outcomes)
            })
            .map_err(tx_error)
    }

    /// The writer: takes the deliveries waiting, writes them in one
    /// transaction, and answers each after the group commit that covers it.
    /// It is a thread of its own, not a task: a batch's sled transaction is
    /// CPU work of a millisecond or more, which on a runtime worker would
    /// hold up every connection scheduled there (the mesh relay benchmark of
    /// issue #7 saw one of two workers taken by it).
    fn start_batcher(
        &self,
    ) -> (
        tokio::sync::mpsc::Sender<(Job, JobReply)>,
        Option<std::thread::JoinHandle<()>>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Job, JobReply)>(1024);
        let store = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    let drain = |batch: &mut Vec<(Job, JobReply)>,
                                 rx: &mut tokio::sync::mpsc::Receiver<(Job, JobReply)>| {
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(j) => batch.push(j),
                                Err(_) => break,
                            }
                        }
                    };
                    drain(&mut batch, &mut rx);
                    // Small deliveries arriving while a commit is under way
                    // could not be acknowledged before the next one anyway:
                    // they join this batch, so that one transaction (sled
                    // writes its log buffer out twice per transaction)
                    // serves what one commit will. Large ones are not held:
                    // their transaction costs what their bytes cost.
                    if batch
                        .iter()
                        .map(|(j, _)| j.body.payload.len())
                        .sum::<usize>()
                        < GATHER_BYTES
                    {
                        store.commit.wait_idle(MAX_GATHER);
                        drain(&mut batch, &mut rx);
                    }
                    // The bytes first, on disk before any index entry names them.
                    let placed = store.place_bodies(&mut batch);
                    let (mut failed, mut todo) = (Vec::new(), Vec::new());
                    for (item, p) in batch.into_iter().zip(placed) {
                        match p {
                            Ok(()) => todo.push(item),
                            Err(e) => failed.push((item, e)),
                        }
                    }
                    for ((job, _), _) in &failed {
                        store.bodies.settle(job.loc.as_ref());
                    }
                    for ((_, reply), e) in failed {
                        let _ = reply.send(Err(e));
                    }
                    if todo.is_empty() {
                        continue;
                    }
                    let mut batch = todo;
                    store
                        .batches
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let jobs: Vec<&Job> = batch.iter().map(|(j, _)| j).collect();
                    let mut outcomes = match store.write_batch(&jobs) {
                        Ok(o) => o.into_iter().map(Ok).collect::<Vec<_>>(),
                        // One bad job must not fail the others: write them one by one.
                        Err(_) if batch.len() > 1 => batch
                            .iter()
                            .map(|(j, _)| store.write_batch(&[j]).map(|mut o| o.pop().flatten()))
                            .collect(),
                        Err(e) => vec![Err(e)],
                    };
                    // A shared body released meanwhile: its bytes are
                    // written after all, and the job tried once more.
                    for ((job, _), outcome) in batch.iter_mut().zip(outcomes.iter_mut()) {
                        if matches!(outcome, Err(StoreError::BodyGone(_))) {
                            *outcome = store
                                .place_own_body(job)
                                .and_then(|()| store.write_batch(&[job]))
                                .map(|mut o| o.pop().flatten());
                        }
                    }
                    for (job, _) in &batch {
                        store.bodies.settle(job.loc.as_ref());
                    }
                    let commit = store.commit.clone();
                    runtime.spawn(async move {
                        let synced = commit.sync().await;
                        for ((job, reply), outcome) in batch.into_iter().zip(outcomes) {
                            let r = match (&synced, outcome) {
                                (Err(e), _) => Err(StoreError::Flush(e.clone())),
                                (Ok(()), Err(e)) => Err(e),
                                (Ok(()), Ok(Some(prev))) => Ok((
                                    prev.chunks_exact(8)
                                        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
                                        .collect(),
                                    true,
                                )),
                                (Ok(()), Ok(None)) => Ok((job.ids, false)),
                            };
                            let _ = reply.send(r);
                        }
                    });
                }
            });
        match spawned {
            Ok(h) => (tx, Some(h)),
            Err(e) => {
                // Without its writer the store can take no delivery: each
                // fails (the channel's receiver is gone with the closure).
                tracing::error!(error = %e, "the store's writer thread could not start");
                (tx, None)
            }
        }
    }

    /// Sets the mail domains this store serves (for users' public addresses).
    pub fn set_domains(&self, domains: &[String]) {
        *self
            .domains
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    }

    fn served_domains(&self) -> Vec<String> {
        self.domains
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A user's counters and settings (defaults for a user never seen).
    pub fn user_stats(&self, localpart: &str) -> Result<UserStats, StoreError> {
        match self.stats.get(localpart.as_bytes())? {
            None => Ok(UserStats::default()),
            Some(v) => Ok(record::from_slice(&v)?),
        }
    }

    fn publish_level(&self, localpart: &str, stats: &UserStats) -> Result<(), StoreError> {
        let level = crate::privacy::user_level(stats);
        for k in level_keys(localpart, &self.served_domains()) {
            if stats.public_opt_out {
                self.levels.remove(k)?;
            } else {
                self.levels.insert(k, &[level])?;
            }
        }
        Ok(())
    }

    /// A user's web client settings (defaults when none were saved).
    pub fn prefs(&self, localpart: &str) -> Result<crate::mail::prefs::Prefs, StoreError> {
        match self.prefs.get(localpart.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("settings of {localpart}: {e}"))),
            None => Ok(Default::default()),
        }
    }

    /// Saves a user's web client settings; durable when this returns.
    pub async fn set_prefs(
        &self,
        localpart: &str,
        prefs: &crate::mail::prefs::Prefs,
    ) -> Result<(), StoreError> {
        if !self.user_exists(localpart) {
            return Err(crate::mail::ModelError::NoAccount(localpart.to_owned()).into());
        }
        let v = serde_json::to_vec(prefs).map_err(StoreError::Record)?;
        self.prefs.insert(localpart.as_bytes(), v)?;
        self.commit.sync().await.map_err(StoreError::Flush)
    }

    /// Opts a user out of (or back into) publishing their public level.
    pub async fn set_public_opt_out(
        &self,
        localpart: &str,
        opt_out: bool,
    ) -> Result<(), StoreError> {
        let domains = self.served_domains();
        (&self.stats, &self.levels)
            .transaction(|(st, lv)| {
                let mut stats: UserStats = tx_record(st.get(localpart.as_bytes())?)?;
                let before = UserStats {
                    public_opt_out: !opt_out,
                    ..stats.clone()
                };
                stats.public_opt_out = opt_out;
                st.insert(localpart.as_bytes(), tx_bytes(&stats)?)?;
                tx_publish(lv, localpart, &before, &stats, &domains)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.commit.sync().await.map_err(StoreError::Flush)
    }

    /// Counts a message `owner` sent: one contact per recipient, each with
    /// the path it takes. Durable when this returns.
    pub async fn record_sent(
        &self,
        owner: &str,
        recipients: &[(String, PathClass)],
        raw: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        let corr = crate::privacy::correspondence_of(raw, "", now);
        let domains = self.served_domains();
        let rcpts: Vec<(String, PathClass)> = recipients
            .iter()
            .filter_map(|(a, p)| crate::privacy::public::normalise_address(a).map(|a| (a, *p)))
            .filter(|(a, _)| !is_own(owner, a, &domains))
            .collect();
        (&self.contacts, &self.stats, &self.levels)
            .transaction(|(c, st, lv)| {
                let mut stats: UserStats = tx_record(st.get(owner.as_bytes())?)?;
                let before = stats.clone();
                let best = rcpts
                    .iter()
                    .map(|(_, p)| *p)
                    .min_by_key(|p| match p {
                        PathClass::Mesh => 0,
                        PathClass::Local => 1,
                        PathClass::Tls => 2,
                        PathClass::Plain => 3,
                    })
                    .unwrap_or(PathClass::Plain);
                stats.sent.count(best, corr.encrypted, corr.signed);
                stats.mark(best, corr.encrypted, now);
                for (addr, path) in &rcpts {
                    let key = contact_key(owner, addr);
                    let old: Option<ContactRecord> =
                        c.get(&key)?.map(|v| tx_record(Some(v))).transpose()?;
                    let mut rec = old.clone().unwrap_or_else(|| ContactRecord {
                        address: addr.clone(),
                        first_seen: now,
                        ..Default::default()
                    });
                    rec.sent.count(*path, corr.encrypted, corr.signed);
                    rec.last_seen = rec.last_seen.max(now);
                    stats.contacts += u64::from(old.is_none());
                    c.insert(key, tx_bytes(&rec)?)?;
                }
                st.insert(owner.as_bytes(), tx_bytes(&stats)?)?;
                tx_publish(lv, owner, &before, &stats, &domains)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.commit.sync().await.map_err(StoreError::Flush)
    }

    /// A user's contacts, by address.
    pub fn contacts(&self, owner: &str) -> Result<Vec<ContactRecord>, StoreError> {
        let mut prefix = owner.as_bytes().to_vec();
        prefix.push(0);
        self.contacts
            .scan_prefix(&prefix)
            .map(|kv| {
                let (_, v) = kv?;
                Ok(record::from_slice(&v)?)
            })
            .collect()
    }

    /// One contact of a user.
    pub fn contact(&self, owner: &str, address: &str) -> Result<Option<ContactRecord>, StoreError> {
        self.contacts
            .get(contact_key(owner, address))?
            .map(|v| record::from_slice(&v).map_err(StoreError::Decode))
            .transpose()
    }

    /// Follows a contact's move: the record goes to the new address, as it
    /// is (left alone when the user has the new address already). True
    /// when it moved.
    pub async fn move_contact(
        &self,
        owner: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let (ko, kn) = (contact_key(owner, old), contact_key(owner, new));
        let moved = self
            .contacts
            .transaction(|c| {
                let Some(v) = c.get(&ko)? else {
                    return Ok(false);
                };
                if c.get(&kn)?.is_some() {
                    return Ok(false);
                }
                let mut rec: ContactRecord = tx_record(Some(v))?;
                rec.address = new.to_owned();
                c.remove(ko.as_slice())?;
                c.insert(kn.as_slice(), tx_bytes(&rec)?)?;
                Ok(true)
            })
            .map_err(tx_error)?;
        if moved {
            self.commit.sync().await.map_err(StoreError::Flush)?;
        }
        Ok(moved)
    }

    /// Remembers a contact's public level heard from the mesh (creates the
    /// contact when the user looked them up first).
    pub async fn set_seen_level(
        &self,
        owner: &str,
        address: &str,
        seen: Option<SeenLevel>,
        now: i64,
    ) -> Result<(), StoreError> {
        let key = contact_key(owner, address);
        (&self.contacts, &self.stats)
            .transaction(|(c, st)| {
                let old: Option<ContactRecord> =
                    c.get(&key)?.map(|v| tx_record(Some(v))).transpose()?;
                if old.is_none() {
                    let mut stats: UserStats = tx_record(st.get(owner.as_bytes())?)?;
                    stats.contacts += 1;
                    st.insert(owner.as_bytes(), tx_bytes(&stats)?)?;
                }
                let mut rec = old.unwrap_or_else(|| ContactRecord {
                    address: address.to_owned(),
                    first_seen: now,
                    last_seen: now,
                    ..Default::default()
                });
                rec.public_level = seen.clone();
                c.insert(key.as_slice(), tx_bytes(&rec)?)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.commit.sync().await.map_err(StoreError::Flush)
    }

    /// The opted-in public levels whose address hash falls in the bucket
    /// (`prefix`, `bits`); `None` when there are more than `cap`.
    pub fn public_bucket(
        &self,
        prefix: &[u8],
        bits: u32,
        cap: usize,
    ) -> Result<Option<Vec<crate::privacy::public::LevelEntry>>, StoreError> {
        let whole = &prefix[..(bits / 8) as usize];
        let mut out = Vec::new();
        for kv in self.levels.scan_prefix(whole) {
            let (k, v) = kv?;
            if k.len() != 32 || !crate::privacy::public::in_bucket(&k, prefix, bits) {
                continue;
            }
            if out.len() == cap {
                return Ok(None);
            }
            let mut h = [0u8; 32];
            h.copy_from_slice(&k);
            out.push((h, v.first().copied().unwrap_or(0)));
        }
        Ok(Some(out))
    }

    /// A message's record.
    pub fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError> {
        self.messages
            .get(id.to_be_bytes())?
            .map(|v| record::decode(&v).map_err(StoreError::Decode))
            .transpose()
    }

    /// A message's decoded subject and modification sequence (a subject
    /// search over a large mailbox reads only these).
    pub fn subject_of(&self, id: u64) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self.meta(id)?.map(|m| (m.subject, m.modseq)))
    }

    /// A message's bytes, exactly as received.
    pub fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(meta) = self.meta(id)? else {
            return Ok(None);
        };
        self.body(meta.blob_id())
    }

    /// The bytes of a blob (a message's [`MessageMeta::blob_id`]), checked
    /// on the way: damaged bytes are an error, never mail.
    pub fn body(&self, blob: u64) -> Result<Option<Vec<u8>>, StoreError> {
        // Twice: compaction may move the record between the index read and
        // the file read (the second read finds the new place).
        for _ in 0..2 {
            let Some(v) = self.body_index.get(model::body_key(blob))? else {
                if self.body_index.get(model::quarantine_key(blob))?.is_some() {
                    return Err(StoreError::Corrupt(format!(
                        "the body of {blob:016x} is quarantined (see `caliopen store check`)"
                    )));
                }
                return Ok(self.legacy_raw.get(blob.to_be_bytes())?.map(|v| v.to_vec()));
            };
            let loc = bodies::Loc::decode(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("bad body index entry {blob:016x}")))?;
            match self.bodies.read(blob, &loc) {
                Ok(raw) => return Ok(Some(raw)),
                Err(bodies::Damage::Missing) => continue,
                Err(d) => {
                    tracing::error!(blob = %format!("{blob:016x}"), damage = %d, "a message body fails its check");
                    return Err(StoreError::Corrupt(format!("the body of {blob:016x}: {d}")));
                }
            }
        }
        Err(StoreError::Corrupt(format!(
            "the body of {blob:016x}: its segment file is missing"
        )))
    }

    /// The memory budget for caches, in bytes: three quarters to sled's
    /// page cache, the rest for the front ends' own (the web client's).
    pub fn cache_budget(&self) -> u64 {
        self.cache_bytes
    }

    /// Bodies in the index.
    pub fn body_count(&self) -> usize {
        self.body_index.scan_prefix(b"B").count()
    }

    /// The body segment files.
    pub fn body_store(&self) -> &bodies::Bodies {
        &self.bodies
    }

    /// The segment files' counters.
    pub fn body_stats(&self) -> &bodies::BodyStats {
        self.bodies.stats()
    }

    /// Changes the free-space reserve below which deliveries are refused.
    pub fn set_min_free(&self, bytes: u64) {
        self.bodies.set_min_free(bytes);
    }

    /// Finds each job's body a place: the blob of the same bytes stored
    /// before (or earlier in this batch), or a new record, all synced
    /// before this returns (one `fdatasync` per segment written).
    fn place_bodies(&self, batch: &mut [(Job, JobReply)]) -> Vec<Result<(), StoreError>> {
        let mut seen: HashMap<[u8; 32], u64> = HashMap::new();
        let mut out = Vec::with_capacity(batch.len());
        let need: u64 = batch.iter().map(|(j, _)| j.body.payload.len() as u64).sum();
        let room = self.bodies.check_space(need);
        for (job, _) in batch.iter_mut() {
            let known = match seen.get(&job.body.hash) {
                Some(b) => Some(*b),
                None => match self.body_index.get(model::hash_key(&job.body.hash)) {
                    Ok(v) => v
                        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                        .map(u64::from_be_bytes),
                    Err(e) => {
                        out.push(Err(e.into()));
                        continue;
                    }
                },
            };
            let r = match known {
                Some(blob) => {
                    job.share(blob);
                    Ok(())
                }
                None => match &room {
                    Err(e) => Err(StoreError::Full(e.to_string())),
                    Ok(()) => self.bodies.append(job.blob, &job.body).map(|loc| {
                        job.loc = Some(loc);
                        seen.insert(job.body.hash, job.blob);
                    }),
                },
            };
            out.push(r);
        }
        if let Err(e) = self.bodies.sync() {
            return out
                .into_iter()
                .map(|_| Err(StoreError::Flush(e.clone())))
                .collect();
        }
        out
    }

    /// Stores a job's own bytes (its shared body went away).
    fn place_own_body(&self, job: &mut Job) -> Result<(), StoreError> {
        job.unshare();
        self.bodies.check_space(job.body.payload.len() as u64)?;
        job.loc = Some(self.bodies.append(job.blob, &job.body)?);
        Ok(self.bodies.sync()?)
    }

    /// Flushes everything to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.commit.sync().await.map_err(StoreError::Flush)
    }

    /// Number of stored messages.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// What each sled tree holds: its name, entries, and the bytes of its
    /// keys and values (a full scan: for benchmarks and `store check`, not
    /// for a hot path).
    pub fn tree_stats(&self) -> Result<Vec<TreeStats>, StoreError> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            let mut st = TreeStats {
                name: String::from_utf8_lossy(&name).into_owned(),
                ..TreeStats::default()
            };
            for kv in tree.iter() {
                let (k, v) = kv?;
                st.entries += 1;
                st.key_bytes += k.len() as u64;
                st.value_bytes += v.len() as u64;
            }
            out.push(st);
        }
        Ok(out)
    }
}

/// The contents of one sled tree ([`Store::tree_stats`]).
#[derive(Debug, Clone, Default)]
pub struct TreeStats {
    /// The tree's name.
    pub name: String,
    /// Its entries.
    pub entries: u64,
    /// The bytes of their keys.
    pub key_bytes: u64,
    /// The bytes of their values.
    pub value_bytes: u64,
}

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

use model::TxResult;

/// Most deliveries written in one transaction.
const MAX_BATCH: usize = 128;

/// Below this many message bytes, the writer gathers for a commit under way.
const GATHER_BYTES: usize = 128 * 1024;

/// The longest the writer holds a delivery back for a commit under way.
const MAX_GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// One delivery, prepared for the writer thread.
#[derive(Debug)]
struct Job {
    /// Each copy's record (id, owner, envelope) and where it goes.
    prepared: Vec<(MessageMeta, Delivery)>,
    ids: Vec<u64>,
    ids_bytes: Vec<u8>,
    /// Where the bytes go (the first copy's id).
    blob: u64,
    corr: crate::privacy::Correspondence,
    facts: crate::mail::thread::ThreadFacts,
    class: PathClass,
    received_at: i64,
    /// The bytes, hashed and compressed.
    body: bodies::Encoded,
    /// Where they were written; `None` when the job shares the blob of
    /// the same bytes stored before.
    loc: Option<bodies::Loc>,
    txn_id: Option<Vec<u8>>,
}

impl Job {
    /// Makes every copy refer to `blob`, the bytes stored before.
    fn share(&mut self, blob: u64) {
        self.blob = blob;
        self.loc = None;
        for (m, _) in &mut self.prepared {
            m.blob = Some(blob);
        }
    }

    /// Back to a blob of its own (the first copy's id).
    fn unshare(&mut self) {
        let first = self.ids[0];
        self.blob = first;
        for (m, _) in &mut self.prepared {
            m.blob = (m.id != first).then_some(first);
        }
    }
}

/// Where the writer answers a delivery.
type JobReply = tokio::sync::oneshot::Sender<Result<(Vec<u64>, bool), StoreError>>;

/// Writes one delivery inside a transaction: its bytes once, each copy in
/// its account and mailbox, the author's contact record, the receiving
/// owners' counters and levels.
fn write_job(
    job: &Job,
    (r, m, b, c, st, lv): (
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
        &TransactionalTree,
    ),
    domains: &[String],
    now: i64,
    accounts: &mut HashMap<String, model::Account>,
) -> TxResult<()> {
    let corr = &job.corr;
    let copies = job.prepared.len() as u32;
    match &job.loc {
        Some(loc) => {
            r.insert(model::body_key(job.blob), loc.encode())?;
            r.insert(model::hash_key(&loc.hash), &job.blob.to_be_bytes())?;
            if copies > 1 {
                b.insert(model::refs_key(job.blob), &copies.to_be_bytes())?;
            }
        }
        None => {
            // The same bytes, stored before: one more reference per copy.
            if r.get(model::body_key(job.blob))?.is_none() {
                return Err(ConflictableTransactionError::Abort(StoreError::BodyGone(
                    job.blob,
                )));
            }
            let k = model::refs_key(job.blob);
            let refs = b
                .get(&k)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
                .map_or(1, u32::from_be_bytes);
            b.insert(k, &refs.saturating_add(copies).to_be_bytes())?;
        }
    }
    let mut owners: Vec<&str> = Vec::new();
    for (meta, d) in &job.prepared {
        let acct = match accounts.remove(&d.owner) {
            Some(a) => a,
            None => model::load_account(b, &d.owner, now)?,
        };
        let mut tx = model::Tx::with_account(b, m, r, &d.owner, acct, now);
        tx.add(meta.clone(), d.mailbox, &d.keywords, &job.facts)?;
        accounts.insert(d.owner.clone(), tx.keep());
        if d.received && !owners.contains(&d.owner.as_str()) {
            owners.push(&d.owner);
        }
    }
    for owner in owners {
        let mut stats: UserStats = tx_record(st.get(owner.as_bytes())?)?;
        let before = stats.clone();
        stats.received.count(job.class, corr.encrypted, corr.signed);
        stats.mark(job.class, corr.encrypted, job.received_at);
        if let Some(author) = corr.author.as_ref().filter(|a| !is_own(owner, a, domains)) {
            let key = contact_key(owner, author);
            let old: Option<ContactRecord> =
                c.get(&key)?.map(|v| tx_record(Some(v))).transpose()?;
            let mut rec = old.clone().unwrap_or_else(|| ContactRecord {
                address: author.clone(),
                first_seen: job.received_at,
                ..Default::default()
            });
            rec.received.count(job.class, corr.encrypted, corr.signed);
            rec.last_seen = rec.last_seen.max(job.received_at);
            if !corr.author_name.is_empty() {
                rec.name = corr.author_name.clone();
            }
            if let Some(k) = &corr.autocrypt {
                if rec
                    .autocrypt
                    .as_ref()
                    .is_none_or(|o| o.seen_at <= k.seen_at)
                {
                    rec.autocrypt = Some(k.clone());
                }
            }
            let had_key = old.as_ref().is_some_and(|o| o.autocrypt.is_some());
            stats.contacts += u64::from(old.is_none());
            stats.contacts_with_key += u64::from(!had_key && rec.autocrypt.is_some());
            c.insert(key, tx_bytes(&rec)?)?;
        }
        st.insert(owner.as_bytes(), tx_bytes(&stats)?)?;
        tx_publish(lv, owner, &before, &stats, domains)?;
    }
    Ok(())
}

/// Decodes a record read in a transaction (the default when absent).
fn tx_record<T: serde::de::DeserializeOwned + Default>(v: Option<sled::IVec>) -> TxResult<T> {
    match v {
        None => Ok(T::default()),
        Some(v) => record::from_slice(&v)
            .map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e))),
    }
}

/// Encodes a record written in a transaction.
fn tx_bytes<T: Serialize>(v: &T) -> TxResult<Vec<u8>> {
    record::to_vec(v).map_err(|e| ConflictableTransactionError::Abort(StoreError::Decode(e)))
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Storage(s) => StoreError::Db(s),
        TransactionError::Abort(e) => e,
    }
}

/// Keys of a user's addresses in `public_levels`.
fn level_keys(owner: &str, domains: &[String]) -> Vec<[u8; 32]> {
    domains
        .iter()
        .filter_map(|d| crate::privacy::public::normalise_address(&format!("{owner}@{d}")))
        .map(|a| crate::privacy::public::address_hash(&a))
        .collect()
}

/// Updates the published level of `owner` inside a transaction when it changed.
fn tx_publish(
    lv: &TransactionalTree,
    owner: &str,
    before: &UserStats,
    after: &UserStats,
    domains: &[String],
) -> Result<(), UnabortableTransactionError> {
    let old = crate::privacy::user_level(before);
    let new = crate::privacy::user_level(after);
    if old == new && before.public_opt_out == after.public_opt_out {
        return Ok(());
    }
    for k in level_keys(owner, domains) {
        if after.public_opt_out {
            lv.remove(&k)?;
        } else {
            lv.insert(&k, &[new])?;
        }
    }
    Ok(())
}

/// True when `addr` is one of `owner`'s own addresses.
fn is_own(owner: &str, addr: &str, domains: &[String]) -> bool {
    addr.rsplit_once('@')
        .is_some_and(|(l, d)| l == owner && domains.iter().any(|x| x == d))
}

/// How a stored message travelled.
pub fn path_class(m: &MessageMeta) -> PathClass {
    match m.via {
        Via::Mesh => PathClass::Mesh,
        Via::Local => PathClass::Local,
        Via::Smtp if m.transport.tls_version.is_some() => PathClass::Tls,
        Via::Smtp => PathClass::Plain,
    }
}

/// The mesh outbox lives in this database: its enqueues are made durable by
/// the same group commit as the mailboxes.
impl caliopen_federation::Durability for Store {
    fn sync(&self) -> caliopen_federation::BoxFuture<Result<(), String>> {
        let store = self.clone();
        Box::pin(async move { store.flush().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests;

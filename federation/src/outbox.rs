//! The durable per-peer outbox: messages waiting for a member's durable
//! acknowledgement. Entries live in an append-only [`Journal`] of their own
//! (synced before `enqueue` returns), are retried with capped exponential
//! backoff and jitter, flushed at once when the peer's connection comes up,
//! expired with a report so the caller can bounce, and handed back for SMTP
//! when the peer loses its label.
//!
//! Journal key = enqueue sequence; value = `OutboxRecord` (protobuf). What
//! the delivery loop needs to schedule (peer, next attempt, expiry) is kept
//! in memory; a message's body is read back from the journal when it is sent.

use crate::journal::{Journal, JournalError};
use crate::node::{MeshError, MeshNode};
use crate::trust::TrustState;
use caliopen_proto::pb::mesh::{
    error_reply, recipient_result, Deliver, DeliverReply, OutboxRecord, RecipientResult,
};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The retry schedule.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First retry delay.
    pub base: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// How long an entry may wait before it expires.
    pub lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max: Duration::from_secs(15 * 60),
            lifetime: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempts + 1`: base·2^attempts, capped, with
    /// ±25 % jitter from `jitter` in [0, 1).
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempts.min(30)).unwrap_or(u32::MAX));
        let d = exp.min(self.max).as_secs_f64();
        Duration::from_secs_f64((d * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))).max(0.001))
    }
}

/// What became of an entry.
#[derive(Debug, Clone)]
pub enum OutboxEvent {
    /// The peer stored it durably (per-recipient results inside).
    Delivered {
        /// Peer.
        peer: String,
        /// The peer's answer.
        reply: DeliverReply,
    },
    /// Sent after `Delivered` when the peer refused some recipients for
    /// good (unknown users…): the message, for a bounce to those recipients.
    RecipientsRefused {
        /// Peer.
        peer: String,
        /// The message as it was sent.
        deliver: Deliver,
        /// The recipients refused permanently, with the peer's reason.
        refused: Vec<RecipientResult>,
    },
    /// The peer refused it for good (bounce).
    Failed {
        /// Peer.
        peer: String,
        /// The message.
        deliver: Deliver,
        /// Why.
        reason: String,
    },
    /// It waited past its lifetime (bounce).
    Expired {
        /// Peer.
        peer: String,
        /// The message.
        deliver: Deliver,
        /// Last error seen.
        last_error: String,
    },
    /// The peer lost its label: route it by SMTP instead.
    Reroute {
        /// Former peer.
        peer: String,
        /// The message.
        deliver: Deliver,
    },
}

/// Why the outbox could not take an entry.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Storage failure.
    #[error("outbox storage: {0}")]
    Journal(#[from] JournalError),
    /// Reading entries left in an older instance's sled tree failed.
    #[error("outbox import from sled: {0}")]
    Db(#[from] sled::Error),
    /// A stored entry did not decode.
    #[error("corrupt outbox entry: {0}")]
    Corrupt(String),
}

/// Makes a sled-backed queue's writes durable (the SMTP queue uses it).
/// sled's own flush is no durability barrier on Linux (it ends with
/// `sync_file_range`); an instance passes its store's group committer, which
/// also `fdatasync`s, so that writes from concurrent sessions share one sync.
pub trait Durability: Send + Sync + std::fmt::Debug + 'static {
    /// Returns once every write made to the database before the call is durable.
    fn sync(&self) -> crate::node::BoxFuture<Result<(), String>>;
}

/// Concurrent streams the outbox uses towards one connected peer (the mesh
/// allows 256 per connection). Mail carries no ordering guarantee; a peer's
/// lanes take its entries from one queue, oldest first.
pub(crate) const LANES_PER_PEER: usize = 64;

/// The outbox.
///
/// An entry is sent as soon as it is durable: `enqueue` hands it to the
/// running delivery loop's lanes at once (no waiting for a scan). Each entry
/// being sent is *claimed* in memory, so the periodic pass over the entries
/// — for retries, expiry, peers that lost their label and entries left from
/// before a restart — never sends it twice. An entry changes (is removed,
/// rescheduled) only while claimed, and the pass claims under the same lock
/// that it reads the schedule under.
#[derive(Debug, Clone)]
pub struct Outbox {
    journal: Journal,
    next_seq: Arc<AtomicU64>,
    notify: Arc<Notify>,
    policy: RetryPolicy,
    dispatch: Arc<Mutex<Dispatch>>,
    lanes_idle: Arc<Notify>,
}

/// The running loop's means of sending (set while `run` runs).
#[derive(Debug, Clone)]
struct Runner {
    node: MeshNode,
    events: mpsc::Sender<OutboxEvent>,
    token: CancellationToken,
}

/// What an entry's schedule needs, in memory (its body stays on disk).
#[derive(Debug, Clone)]
struct Meta {
    peer: String,
    next_attempt_ms: i64,
    expires_at: i64,
}

impl Meta {
    fn of(rec: &OutboxRecord) -> Self {
        Self {
            peer: rec.peer.clone(),
            next_attempt_ms: rec.next_attempt_ms,
            expires_at: rec.expires_at,
        }
    }
}

/// The entries and what is being sent now, in memory.
#[derive(Debug, Default)]
struct Dispatch {
    runner: Option<Runner>,
    /// Every durable entry, by key.
    entries: BTreeMap<u64, Meta>,
    /// Keys handed to a lane and not yet settled.
    claimed: HashSet<u64>,
    peers: HashMap<String, PeerLanes>,
    /// Lanes running, all peers together.
    lanes: usize,
}

#[derive(Debug, Default)]
struct PeerLanes {
    queue: VecDeque<(u64, OutboxRecord)>,
    running: usize,
    /// After a failed attempt, new entries wait for the pass (and the
    /// backoff) instead of each paying a failed dial; cleared when the peer
    /// connects.
    backoff_until: i64,
}

/// Why an entry can no longer go.
#[derive(Debug, Clone, Copy)]
enum Unsendable {
    /// Its peer lost its label (left the directory): send it by SMTP.
    PeerLeft,
    /// It waited past its lifetime: bounce.
    Expired,
}

/// How one attempt ended, for its lane.
enum Attempt {
    /// Settled and let go of: delivered, refused or handed back.
    Settled,
    /// Delivered in part and let go of: the entry stays, rewritten for the
    /// deferred recipients (to be synced up to this journal position), and
    /// the pass schedules its retry.
    Deferred(u64),
    /// The loop stops: the entry is left as it is, to be let go of.
    Abandoned,
    /// The peer could not be reached (the entry is still held): back off
    /// this entry and the queue.
    Unreachable(String),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

impl Outbox {
    /// Opens (or creates) the outbox's journal in `dir` and reads back the
    /// entries waiting there.
    pub fn open(dir: &Path, policy: RetryPolicy) -> Result<Self, OutboxError> {
        let journal = Journal::open(dir)?;
        let mut entries = BTreeMap::new();
        let keys = journal.keys();
        for &key in &keys {
            let Some(v) = journal.get(key)? else {
                continue;
            };
            match OutboxRecord::decode(v.as_slice()) {
                Ok(rec) => {
                    entries.insert(key, Meta::of(&rec));
                }
                // The journal's CRC passed, so this is no torn write: keep
                // it on disk for an operator to look at, but never send it.
                Err(e) => {
                    tracing::error!(key, error = %e, "outbox: an entry does not decode; left in place")
                }
            }
        }
        let next = keys.last().map_or(1, |k| k + 1);
        Ok(Self {
            journal,
            next_seq: Arc::new(AtomicU64::new(next)),
            notify: Arc::new(Notify::new()),
            policy,
            dispatch: Arc::new(Mutex::new(Dispatch {
                entries,
                ..Dispatch::default()
            })),
            lanes_idle: Arc::new(Notify::new()),
        })
    }

    /// Moves the entries an older version left in `db`'s `mesh_outbox` tree
    /// into the journal (before [`Outbox::run`]). Returns how many moved. A
    /// crash between the journal's sync and the tree's flush leaves them in
    /// both, so they would be imported and sent twice: the peer's
    /// idempotence by txn_id makes that harmless.
    pub async fn import_sled(&self, db: &sled::Db) -> Result<usize, OutboxError> {
        let tree = db.open_tree("mesh_outbox")?;
        if tree.is_empty() {
            return Ok(0);
        }
        let mut moved = Vec::new();
        let mut lsn = 0;
        for kv in tree.iter() {
            let (_, v) = kv?;
            let rec = match OutboxRecord::decode(v.as_ref()) {
                Ok(rec) => rec,
                Err(e) => {
                    tracing::error!(error = %e, "outbox import: an entry does not decode; left in sled");
                    continue;
                }
            };
            let key = self.next_seq.fetch_add(1, Ordering::Relaxed);
            lsn = self.journal.put(key, &v)?;
            moved.push((key, Meta::of(&rec)));
        }
        self.journal.sync(lsn).await?;
        let n = moved.len();
        {
            let mut d = self.lock();
            d.entries.extend(moved);
        }
        tree.clear()?;
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| OutboxError::Db(sled::Error::Io(std::io::Error::other(e))))??;
        tracing::info!(
            entries = n,
            "outbox: entries moved from sled to the journal"
        );
        Ok(n)
    }

    /// The journal under the outbox (for its counters).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dispatch> {
        self.dispatch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `deliver` for `peer`; durable when it returns. While the
    /// delivery loop runs, the entry goes out at once (unless the peer is
    /// backing off after a failure).
    pub async fn enqueue(&self, peer: &str, deliver: Deliver) -> Result<(), OutboxError> {
        let key = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let rec = OutboxRecord {
            peer: peer.to_owned(),
            deliver: Some(deliver),
            attempts: 0,
            next_attempt_ms: now,
            expires_at: now / 1000 + self.policy.lifetime.as_secs() as i64,
            enqueued_at: now / 1000,
            last_error: String::new(),
        };
        let lsn = self.journal.put(key, &rec.encode_to_vec())?;
        self.journal.sync(lsn).await?;
        // Only now does the pass see it; it goes at once unless the peer
        // backs off (the pass sends it when due).
        let send = {
            let mut d = self.lock();
            d.entries.insert(key, Meta::of(&rec));
            let backing_off = d
                .peers
                .get(peer)
                .is_some_and(|p| p.backoff_until > now_ms());
            let send = d.runner.is_some() && !backing_off;
            if send {
                d.claimed.insert(key);
            }
            send
        };
        if send {
            self.queue_claimed(peer, vec![(key, rec)]);
        }
        Ok(())
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Entries waiting for `peer`.
    pub fn pending_for(&self, peer: &str) -> usize {
        self.lock()
            .entries
            .values()
            .filter(|m| m.peer == peer)
            .count()
    }

    /// The entries waiting for `peer`, in order.
    pub fn entries_for(&self, peer: &str) -> Result<Vec<OutboxRecord>, OutboxError> {
        let keys: Vec<u64> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, m)| m.peer == peer)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(rec) = self.read(k)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn read(&self, key: u64) -> Result<Option<OutboxRecord>, OutboxError> {
        self.journal
            .get(key)?
            .map(|v| {
                OutboxRecord::decode(v.as_slice()).map_err(|e| OutboxError::Corrupt(e.to_string()))
            })
            .transpose()
    }

    /// Runs the delivery loop until `token` is cancelled, reporting every
    /// outcome on `events`. Sends in flight when it is cancelled are
    /// abandoned: their entries stay, and the peer's idempotence by txn_id
    /// makes a later re-send harmless.
    pub async fn run(
        self,
        node: MeshNode,
        events: mpsc::Sender<OutboxEvent>,
        token: CancellationToken,
    ) {
        let lane_token = token.child_token();
        self.lock().runner = Some(Runner {
            node: node.clone(),
            events: events.clone(),
            token: lane_token.clone(),
        });
        let mut connected = node.subscribe_connected();
        loop {
            let next_due = match self.pass(&node, &events).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "outbox pass failed");
                    Some(now_ms() + 1000)
                }
            };
            let wait = next_due
                .map(|t| Duration::from_millis((t - now_ms()).clamp(0, 60_000) as u64))
                .unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.notify.notified() => {}
                peer = connected.recv() => {
                    // Flush a reconnecting peer's queue at once.
                    if let Ok(peer) = peer {
                        self.make_due(&peer);
                    }
                }
                _ = token.cancelled() => break,
            }
        }
        // Stop the lanes and wait for them to let go of their entries.
        lane_token.cancel();
        loop {
            let idle = self.lanes_idle.notified();
            if self.lock().lanes == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), idle).await;
        }
        {
            let mut d = self.lock();
            d.runner = None;
            d.claimed.clear();
            d.peers.clear();
        }
        // The removals still in memory, so that a restart does not send
        // again what was delivered.
        if let Err(e) = self.journal.sync_all().await {
            tracing::error!(error = %e, "outbox: final sync failed");
        }
    }

    /// Makes `peer`'s waiting entries due now (its connection came up).
    /// Entries being sent are left to their lanes. Only the in-memory
    /// schedule changes: after a restart every entry is looked at again.
    fn make_due(&self, peer: &str) {
        let now = now_ms();
        let mut d = self.lock();
        if let Some(p) = d.peers.get_mut(peer) {
            p.backoff_until = 0;
        }
        let Dispatch {
            entries, claimed, ..
        } = &mut *d;
        for (k, m) in entries.iter_mut() {
            if m.peer == peer && !claimed.contains(k) && m.next_attempt_ms > now {
                m.next_attempt_ms = now;
            }
        }
    }

    fn release(&self, k: u64) {
        self.lock().claimed.remove(&k);
    }

    /// Removes a claimed entry and lets go of it. The removal needs no sync
    /// of its own (it waits in memory for the journal's next write): a
    /// re-send after a crash is idempotent at the peer, and the next sync,
    /// or the stop, carries it.
    fn settle(&self, k: u64) -> Result<(), OutboxError> {
        let r = self.journal.remove(k);
        let mut d = self.lock();
        if r.is_ok() {
            d.entries.remove(&k);
        }
        d.claimed.remove(&k);
        r.map(|_| ()).map_err(OutboxError::from)
    }

    /// Rewrites a claimed entry (its next attempt, its recipients) and lets
    /// go of it; returns the journal position to sync on.
    fn reschedule(&self, k: u64, rec: &OutboxRecord) -> Result<u64, OutboxError> {
        let r = self.journal.put(k, &rec.encode_to_vec());
        let mut d = self.lock();
        if r.is_ok() {
            d.entries.insert(k, Meta::of(rec));
        }
        d.claimed.remove(&k);
        r.map_err(OutboxError::from)
    }

    /// Hands claimed entries of `peer` to its lanes, starting lanes as
    /// needed: up to [`LANES_PER_PEER`] for a connected peer, one for
    /// another (so a peer that is down costs one failed dial, not one per
    /// lane).
    fn queue_claimed(&self, peer: &str, entries: Vec<(u64, OutboxRecord)>) {
        let (runner, start) = {
            let mut d = self.lock();
            let Some(runner) = d.runner.clone() else {
                for (k, _) in entries {
                    d.claimed.remove(&k);
                }
                return;
            };
            let p = d.peers.entry(peer.to_owned()).or_default();
            p.queue.extend(entries);
            let allowed = if runner.node.is_connected(peer) {
                LANES_PER_PEER
            } else {
                1
            };
            let start = allowed.saturating_sub(p.running).min(p.queue.len());
            p.running += start;
            d.lanes += start;
            (runner, start)
        };
        for _ in 0..start {
            let this = self.clone();
            let runner = runner.clone();
            let peer = peer.to_owned();
            tokio::spawn(async move { this.lane(runner, peer).await });
        }
    }

    /// One lane: takes `peer`'s entries from its queue until it is empty.
    async fn lane(self, runner: Runner, peer: String) {
        let mut backed_off = false;
        let mut synced_to = None;
        loop {
            let next = {
                let mut d = self.lock();
                let entry = if runner.token.is_cancelled() {
                    None
                } else {
                    d.peers.get_mut(&peer).and_then(|p| p.queue.pop_front())
                };
                if entry.is_none() {
                    let Dispatch {
                        claimed,
                        peers,
                        lanes,
                        ..
                    } = &mut *d;
                    if let Some(p) = peers.get_mut(&peer) {
                        p.running = p.running.saturating_sub(1);
                        if runner.token.is_cancelled() {
                            for (k, _) in p.queue.drain(..) {
                                claimed.remove(&k);
                            }
                        }
                    }
                    *lanes = lanes.saturating_sub(1);
                }
                entry
            };
            let Some((k, rec)) = next else { break };
            let outcome = tokio::select! {
                r = self.attempt(&runner, &peer, k, rec.clone()) => r,
                _ = runner.token.cancelled() => Ok(Attempt::Abandoned),
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(peer, error = %e, "outbox: settling an entry failed");
                    Attempt::Unreachable(e.to_string())
                }
            };
            match outcome {
                Attempt::Abandoned => self.release(k),
                Attempt::Settled => {}
                Attempt::Deferred(lsn) => {
                    synced_to = Some(lsn);
                    self.notify.notify_one();
                }
                Attempt::Unreachable(error) => {
                    backed_off = true;
                    // This entry and every entry queued behind it for the
                    // peer back off together.
                    let queued: Vec<(u64, OutboxRecord)> = {
                        let mut d = self.lock();
                        d.peers
                            .get_mut(&peer)
                            .map(|p| p.queue.drain(..).collect())
                            .unwrap_or_default()
                    };
                    let mut due = i64::MAX;
                    for (k, mut rec) in std::iter::once((k, rec)).chain(queued) {
                        let delay = self.policy.delay(rec.attempts, jitter());
                        rec.attempts += 1;
                        rec.next_attempt_ms = now_ms() + delay.as_millis() as i64;
                        rec.last_error.clone_from(&error);
                        due = due.min(rec.next_attempt_ms);
                        match self.reschedule(k, &rec) {
                            Ok(lsn) => synced_to = Some(lsn),
                            Err(e) => {
                                tracing::error!(peer, error = %e, "outbox: recording a backoff failed");
                            }
                        }
                    }
                    if let Some(p) = self.lock().peers.get_mut(&peer) {
                        p.backoff_until = p.backoff_until.max(due);
                    }
                    tracing::info!(peer, error = %error, "mesh delivery deferred");
                }
            }
        }
        // Backoffs and deferrals are synced so that a restart keeps the
        // schedule. The pass then learns when to wake.
        if let Some(lsn) = synced_to {
            if let Err(e) = self.journal.sync(lsn).await {
                tracing::error!(peer, error = %e, "outbox sync failed");
            }
        }
        if backed_off {
            self.notify.notify_one();
        }
        self.lanes_idle.notify_waiters();
    }

    /// Why an entry can no longer go, if it cannot.
    fn unsendable(m: &Meta, st: &TrustState, now: i64) -> Option<Unsendable> {
        if st.member(&m.peer).is_none() && st.directory.is_some() {
            Some(Unsendable::PeerLeft)
        } else if m.expires_at * 1000 <= now {
            Some(Unsendable::Expired)
        } else {
            None
        }
    }

    /// Settles a claimed entry that can no longer go: a peer that lost its
    /// label gets it back for SMTP, an expired one is reported.
    async fn settle_unsendable(
        &self,
        k: u64,
        rec: &OutboxRecord,
        why: Unsendable,
        events: &mpsc::Sender<OutboxEvent>,
    ) -> Result<(), OutboxError> {
        self.settle(k)?;
        let peer = rec.peer.clone();
        let deliver = rec.deliver.clone().unwrap_or_default();
        let event = match why {
            Unsendable::PeerLeft => {
                tracing::info!(peer = %rec.peer, "peer left the mesh: message handed back for SMTP");
                OutboxEvent::Reroute { peer, deliver }
            }
            Unsendable::Expired => OutboxEvent::Expired {
                peer,
                deliver,
                last_error: rec.last_error.clone(),
            },
        };
        let _ = events.send(event).await;
        Ok(())
    }

    /// One pass over the entries not being sent: settles those of peers
    /// that lost their label and those expired, hands the due ones to their
    /// peers' lanes, and returns when the next one is due.
    async fn pass(
        &self,
        node: &MeshNode,
        events: &mpsc::Sender<OutboxEvent>,
    ) -> Result<Option<i64>, OutboxError> {
        let now = now_ms();
        let st = node.trust().current();
        let mut next_due: Option<i64> = None;
        // Claimed under the lock the schedule is read under: no lane can
        // settle one of these meanwhile.
        let mut taken: Vec<(u64, Option<Unsendable>)> = Vec::new();
        {
            let mut d = self.lock();
            let Dispatch {
                entries, claimed, ..
            } = &mut *d;
            for (&k, m) in entries.iter() {
                if claimed.contains(&k) {
                    continue;
                }
                let unsendable = Self::unsendable(m, &st, now);
                if unsendable.is_none() && m.next_attempt_ms > now {
                    next_due =
                        Some(next_due.map_or(m.next_attempt_ms, |d| d.min(m.next_attempt_ms)));
                    continue;
                }
                claimed.insert(k);
                taken.push((k, unsendable));
            }
        }
        let mut per_peer: BTreeMap<String, Vec<(u64, OutboxRecord)>> = BTreeMap::new();
        let mut settled = false;
        let mut failure = None;
        for (k, unsendable) in taken {
            if failure.is_some() {
                self.release(k);
                continue;
            }
            let rec = match self.read(k) {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    self.release(k);
                    continue;
                }
                Err(e) => {
                    self.release(k);
                    failure = Some(e);
                    continue;
                }
            };
            if let Some(why) = unsendable {
                if let Err(e) = self.settle_unsendable(k, &rec, why, events).await {
                    self.release(k);
                    failure = Some(e);
                }
                settled = true;
                continue;
            }
            per_peer.entry(rec.peer.clone()).or_default().push((k, rec));
        }
        if settled {
            self.journal.sync_all().await?;
        }
        for (peer, recs) in per_peer {
            self.queue_claimed(&peer, recs);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(next_due),
        }
    }

    /// Sends one claimed entry and settles it (which lets go of it),
    /// unless the peer cannot be reached.
    async fn attempt(
        &self,
        runner: &Runner,
        peer: &str,
        k: u64,
        rec: OutboxRecord,
    ) -> Result<Attempt, OutboxError> {
        let events = &runner.events;
        let st = runner.node.trust().current();
        if let Some(why) = Self::unsendable(&Meta::of(&rec), &st, now_ms()) {
            self.settle_unsendable(k, &rec, why, events).await?;
            return Ok(Attempt::Settled);
        }
        let deliver = rec.deliver.clone().unwrap_or_default();
        match runner.node.deliver(peer, deliver.clone()).await {
            Ok(reply) => {
                let temporary: Vec<&RecipientResult> = reply
                    .results
                    .iter()
                    .filter(|r| r.status == recipient_result::Status::RejectedTemporary as i32)
                    .collect();
                let deferred = if temporary.is_empty() {
                    self.settle(k)?;
                    None
                } else {
                    // The same entry, for the deferred recipients only (a
                    // new txn_id: the peer stored the others under the old
                    // one), replaces the delivered one in a single write.
                    let rcpts: Vec<String> = temporary.iter().map(|r| r.rcpt.clone()).collect();
                    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                    ctx.update(b"caliopen-retry");
                    ctx.update(&deliver.txn_id);
                    for r in &rcpts {
                        ctx.update(&(r.len() as u64).to_be_bytes());
                        ctx.update(r.as_bytes());
                    }
                    let mut again = rec;
                    let mut d = deliver.clone();
                    d.txn_id = ctx.finish().as_ref().to_vec();
                    d.rcpt_to = rcpts;
                    again.deliver = Some(d);
                    let delay = self.policy.delay(again.attempts, jitter());
                    again.attempts += 1;
                    again.next_attempt_ms = now_ms() + delay.as_millis() as i64;
                    again.last_error = temporary
                        .iter()
                        .map(|r| format!("{}: {}", r.rcpt, r.detail))
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::info!(
                        peer,
                        deferred = temporary.len(),
                        "recipients deferred by the peer"
                    );
                    Some(self.reschedule(k, &again)?)
                };
                let refused: Vec<RecipientResult> = reply
                    .results
                    .iter()
                    .filter(|r| r.status == recipient_result::Status::RejectedPermanent as i32)
                    .cloned()
                    .collect();
                let _ = events
                    .send(OutboxEvent::Delivered {
                        peer: peer.to_owned(),
                        reply,
                    })
                    .await;
                if !refused.is_empty() {
                    let _ = events
                        .send(OutboxEvent::RecipientsRefused {
                            peer: peer.to_owned(),
                            deliver,
                            refused,
                        })
                        .await;
                }
                Ok(deferred.map_or(Attempt::Settled, Attempt::Deferred))
            }
            Err(MeshError::Remote { code, message })
                if code == error_reply::Code::Refused || code == error_reply::Code::Malformed =>
            {
                self.settle(k)?;
                let _ = events
                    .send(OutboxEvent::Failed {
                        peer: peer.to_owned(),
                        deliver,
                        reason: message,
                    })
                    .await;
                Ok(Attempt::Settled)
            }
            Err(e) => Ok(Attempt::Unreachable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            lifetime: Duration::from_secs(3600),
        };
        assert_eq!(p.delay(0, 0.5), Duration::from_secs(1));
        assert_eq!(p.delay(3, 0.5), Duration::from_secs(8));
        assert_eq!(p.delay(20, 0.5), Duration::from_secs(60));
        assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(60));
        assert_eq!(p.delay(0, 0.0), Duration::from_millis(750));
        assert_eq!(p.delay(0, 1.0), Duration::from_millis(1250));
    }
}

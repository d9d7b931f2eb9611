//! The durable per-peer outbox: messages waiting for a member's durable
//! acknowledgement. Entries live in a sled tree (flushed before `enqueue`
//! returns), are retried with capped exponential backoff and jitter, flushed
//! at once when the peer's connection comes up, expired with a report so the
//! caller can bounce, and handed back for SMTP when the peer loses its label.
//!
//! Tree `mesh_outbox`: key = peer id, 0x00, enqueue sequence (u64 BE);
//! value = `OutboxRecord` (protobuf).

use crate::node::{MeshError, MeshNode};
use caliopen_proto::pb::mesh::{
    error_reply, recipient_result, Deliver, DeliverReply, OutboxRecord, RecipientResult,
};
use prost::Message;
use std::sync::Arc;
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
    Db(#[from] sled::Error),
    /// A stored entry did not decode.
    #[error("corrupt outbox entry: {0}")]
    Corrupt(String),
    /// The durability hook failed: nothing may be reported as queued.
    #[error("outbox flush failed: {0}")]
    Flush(String),
}

/// Makes the outbox's writes durable. sled's own flush is no durability
/// barrier on Linux (it ends with `sync_file_range`); an instance passes its
/// store's group committer, which also `fdatasync`s, so that enqueues from
/// concurrent sessions share one sync.
pub trait Durability: Send + Sync + std::fmt::Debug + 'static {
    /// Returns once every write made to the database before the call is durable.
    fn sync(&self) -> crate::node::BoxFuture<Result<(), String>>;
}

/// Concurrent streams the outbox uses towards one connected peer (the mesh
/// allows 256 per connection). Mail carries no ordering guarantee; within a
/// lane, entries go in queue order.
pub const LANES_PER_PEER: usize = 32;

/// The outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    notify: Arc<Notify>,
    policy: RetryPolicy,
    durability: Option<Arc<dyn Durability>>,
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
    /// Opens the outbox tree in `db`.
    pub fn open(db: &sled::Db, policy: RetryPolicy) -> Result<Self, OutboxError> {
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("mesh_outbox")?,
            notify: Arc::new(Notify::new()),
            policy,
            durability: None,
        })
    }

    /// Uses `d` to make writes durable instead of sled's flush alone.
    pub fn with_durability(mut self, d: Arc<dyn Durability>) -> Self {
        self.durability = Some(d);
        self
    }

    /// Queues `deliver` for `peer`; durable when it returns.
    pub async fn enqueue(&self, peer: &str, deliver: Deliver) -> Result<(), OutboxError> {
        let seq = self.db.generate_id()?;
        let mut key = peer.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&seq.to_be_bytes());
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
        self.tree.insert(key, rec.encode_to_vec())?;
        self.flush().await?;
        self.notify.notify_one();
        Ok(())
    }

    /// Makes every write so far durable. Not sled's `flush_async`: in sled
    /// 0.34 concurrent `flush_async` callers can wait forever
    /// (spacejam/sled#1308; the benchmark's 64 concurrent enqueues hung on
    /// it). A blocking flush on tokio's blocking pool completes.
    async fn flush(&self) -> Result<(), OutboxError> {
        if let Some(d) = &self.durability {
            return d.sync().await.map_err(OutboxError::Flush);
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| OutboxError::Db(sled::Error::Io(std::io::Error::other(e))))??;
        Ok(())
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Entries waiting for `peer`.
    pub fn pending_for(&self, peer: &str) -> usize {
        let mut prefix = peer.as_bytes().to_vec();
        prefix.push(0);
        self.tree.scan_prefix(prefix).count()
    }

    /// The entries waiting for `peer`, in order.
    pub fn entries_for(&self, peer: &str) -> Result<Vec<OutboxRecord>, OutboxError> {
        let mut prefix = peer.as_bytes().to_vec();
        prefix.push(0);
        self.tree
            .scan_prefix(prefix)
            .map(|kv| {
                let (_, v) = kv?;
                OutboxRecord::decode(v.as_ref()).map_err(|e| OutboxError::Corrupt(e.to_string()))
            })
            .collect()
    }

    fn entries(&self) -> Result<Vec<(sled::IVec, OutboxRecord)>, OutboxError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let rec = OutboxRecord::decode(v.as_ref())
                    .map_err(|e| OutboxError::Corrupt(e.to_string()))?;
                Ok((k, rec))
            })
            .collect()
    }

    /// Runs the delivery loop until `token` is cancelled, reporting every
    /// outcome on `events`.
    pub async fn run(
        self,
        node: MeshNode,
        events: mpsc::Sender<OutboxEvent>,
        token: CancellationToken,
    ) {
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
                        let _ = self.make_due(&peer);
                    }
                }
                _ = token.cancelled() => break,
            }
        }
    }

    fn make_due(&self, peer: &str) -> Result<(), OutboxError> {
        let mut prefix = peer.as_bytes().to_vec();
        prefix.push(0);
        let now = now_ms();
        for kv in self.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            let mut rec = OutboxRecord::decode(v.as_ref())
                .map_err(|e| OutboxError::Corrupt(e.to_string()))?;
            if rec.next_attempt_ms > now {
                rec.next_attempt_ms = now;
                self.tree.insert(k, rec.encode_to_vec())?;
            }
        }
        Ok(())
    }

    /// One pass over due entries, peers in parallel, each connected peer's
    /// entries over up to [`LANES_PER_PEER`] concurrent streams (each lane in
    /// order). Returns when the next entry is due.
    async fn pass(
        &self,
        node: &MeshNode,
        events: &mpsc::Sender<OutboxEvent>,
    ) -> Result<Option<i64>, OutboxError> {
        let now = now_ms();
        let st = node.trust().current();
        let mut per_peer: std::collections::BTreeMap<String, Vec<(sled::IVec, OutboxRecord)>> =
            Default::default();
        let mut next_due: Option<i64> = None;
        for (k, rec) in self.entries()? {
            let deliver = rec.deliver.clone().unwrap_or_default();
            let revoked = st.member(&rec.peer).is_none();
            if revoked && st.directory.is_some() {
                self.tree.remove(&k)?;
                tracing::info!(peer = %rec.peer, "peer left the mesh: message handed back for SMTP");
                let _ = events
                    .send(OutboxEvent::Reroute {
                        peer: rec.peer,
                        deliver,
                    })
                    .await;
                continue;
            }
            if rec.expires_at * 1000 <= now {
                self.tree.remove(&k)?;
                let _ = events
                    .send(OutboxEvent::Expired {
                        peer: rec.peer,
                        deliver,
                        last_error: rec.last_error,
                    })
                    .await;
                continue;
            }
            if rec.next_attempt_ms > now {
                next_due =
                    Some(next_due.map_or(rec.next_attempt_ms, |d| d.min(rec.next_attempt_ms)));
                continue;
            }
            per_peer.entry(rec.peer.clone()).or_default().push((k, rec));
        }
        self.flush().await?;
        let mut tasks = tokio::task::JoinSet::new();
        let connected = node.connected_peers();
        for (peer, recs) in per_peer {
            // A connected peer's entries go out on up to LANES_PER_PEER
            // concurrent streams (one at a time capped a peer at one round
            // trip plus its group commit per message: about 1,100 msg/s in the
            // benchmark of issue #7). An unconnected peer gets one lane, so a
            // peer that is down costs one failed dial per pass, not one per lane.
            let lanes = if connected.contains(&peer) {
                LANES_PER_PEER.min(recs.len()).max(1)
            } else {
                1
            };
            let mut split: Vec<Vec<(sled::IVec, OutboxRecord)>> = vec![Vec::new(); lanes];
            for (i, r) in recs.into_iter().enumerate() {
                if let Some(lane) = split.get_mut(i % lanes) {
                    lane.push(r);
                }
            }
            for recs in split {
                let node = node.clone();
                let this = self.clone();
                let events = events.clone();
                let peer = peer.clone();
                tasks.spawn(async move { this.send_peer(&node, &peer, recs, &events).await });
            }
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(Some(d))) => next_due = Some(next_due.map_or(d, |x| x.min(d))),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "outbox peer pass failed"),
                Err(e) => tracing::error!(error = %e, "outbox task failed"),
            }
        }
        Ok(next_due)
    }

    async fn send_peer(
        &self,
        node: &MeshNode,
        peer: &str,
        recs: Vec<(sled::IVec, OutboxRecord)>,
        events: &mpsc::Sender<OutboxEvent>,
    ) -> Result<Option<i64>, OutboxError> {
        let mut iter = recs.into_iter();
        let mut retry_due: Option<i64> = None;
        while let Some((k, mut rec)) = iter.next() {
            let deliver = rec.deliver.clone().unwrap_or_default();
            match node.deliver(peer, deliver.clone()).await {
                Ok(reply) => {
                    let temporary: Vec<&RecipientResult> = reply
                        .results
                        .iter()
                        .filter(|r| r.status == recipient_result::Status::RejectedTemporary as i32)
                        .collect();
                    if temporary.is_empty() {
                        self.tree.remove(&k)?;
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
                        let mut again = rec.clone();
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
                        retry_due = Some(
                            retry_due
                                .map_or(again.next_attempt_ms, |x| x.min(again.next_attempt_ms)),
                        );
                        tracing::info!(
                            peer,
                            deferred = temporary.len(),
                            "recipients deferred by the peer"
                        );
                        self.tree.insert(&k, again.encode_to_vec())?;
                    }
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
                }
                Err(MeshError::Remote { code, message })
                    if code == error_reply::Code::Refused
                        || code == error_reply::Code::Malformed =>
                {
                    self.tree.remove(&k)?;
                    let _ = events
                        .send(OutboxEvent::Failed {
                            peer: peer.to_owned(),
                            deliver,
                            reason: message,
                        })
                        .await;
                }
                Err(e) => {
                    // The peer is unreachable: back off this entry and the rest of its queue.
                    let mut due = None;
                    for (k, rec) in
                        std::iter::once((k, std::mem::take(&mut rec))).chain(iter.by_ref())
                    {
                        let mut rec = rec;
                        let delay = self.policy.delay(rec.attempts, jitter());
                        rec.attempts += 1;
                        rec.next_attempt_ms = now_ms() + delay.as_millis() as i64;
                        rec.last_error = e.to_string();
                        due = Some(
                            due.map_or(rec.next_attempt_ms, |d: i64| d.min(rec.next_attempt_ms)),
                        );
                        self.tree.insert(k, rec.encode_to_vec())?;
                    }
                    tracing::info!(peer, error = %e, "mesh delivery deferred");
                    self.flush().await?;
                    return Ok(due);
                }
            }
        }
        self.flush().await?;
        Ok(retry_due)
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

//! The member side of the membership log (issue 18): verify every
//! checkpoint of the association's log, keep the newest one durably, check
//! that each newer one extends it (RFC 6962 consistency), gossip it over the
//! mesh, and detect a split view — two checkpoints of the log that cannot
//! both be true — keeping the two signed notes as the proof and suspending
//! directory updates until the operator clears it.
//!
//! - [`view`]: the decisions and the state on disk ([`LogView`]).
//! - [`evidence`]: the split-view proof and the path evaluation.
//! - [`tiles`]: consistency proofs from the association's tiles over HTTPS
//!   ([`HttpsTiles`]).
//! - [`witness`]: a witness of the log (C2SP `tlog-witness`): cosigns a
//!   checkpoint only with a valid consistency proof from the last one it
//!   cosigned ([`Witness`]).
//! - [`LogMonitor`]: the shared, async front of all three: what the
//!   association link and the mesh node feed, what the instance reads.
//!
//! The log key is pinned by the member (the association's `log.pub`, given
//! with `ca.pem` at join): a key learnt from the directory would be the CA
//! key's word, and the log exists to check that word.

pub mod evidence;
pub mod tiles;
pub mod view;
pub mod witness;

pub use evidence::{EvidenceError, SplitView};
pub use tiles::HttpsTiles;
pub use view::{Held, LogError, LogKey, LogView, Offer};
pub use witness::{Witness, WitnessPolicy, WitnessRefusal};

use crate::node::BoxFuture;
use crate::trust::TrustStore;
use caliopen_ca::tlog::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where consistency proofs come from: the association's tiles
/// ([`HttpsTiles`]), or a test's tree.
pub trait ProofSource: Send + Sync + std::fmt::Debug + 'static {
    /// The prefix path from `old` to `new` leaves (`0 < old < new`) of the
    /// association's tree: the RFC 9162 consistency proof, with the subtree
    /// `[0, old)` first when `old` is a power of two.
    fn prefix_path(&self, old: u64, new: u64) -> BoxFuture<Result<Vec<Hash>, String>>;
    /// The association's current checkpoint note (the poll fallback).
    fn checkpoint(&self) -> BoxFuture<Result<String, String>>;
}

/// Counters of the membership log view (for metrics).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Checkpoints taken that grew the tree.
    pub grew: AtomicU64,
    /// Checkpoints taken that only refreshed the timestamp (heartbeats).
    pub refreshed: AtomicU64,
    /// Refused: not signed (or dated) by the log key, or malformed.
    pub refused_signature: AtomicU64,
    /// Refused: the association offered a smaller tree than held.
    pub refused_rollback: AtomicU64,
    /// Refused: a consistency proof that does not belong to the tree.
    pub refused_proof: AtomicU64,
    /// Not decided: no consistency proof could be had.
    pub unverifiable: AtomicU64,
    /// Split views found here or shown by a peer (the alarm).
    pub split_views: AtomicU64,
    /// Split-view proofs pushed by peers that did not hold.
    pub refused_evidence: AtomicU64,
    /// Refused: a grown tree without the witness quorum of the directory.
    pub refused_quorum: AtomicU64,
}

/// A change worth telling others about (heartbeats are not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChange {
    /// Increases with every change.
    pub generation: u64,
    /// Tree size held.
    pub size: u64,
    /// Root held (`None`: nothing held).
    pub root: Option<Hash>,
    /// A split-view proof is held.
    pub split_view: bool,
    /// Member the change came from (`None`: association, disk, local).
    pub source: Option<String>,
}

/// The member's membership-log monitor. Share it as an `Arc`: hand it to
/// [`crate::AssociationLink::with_log`] and [`crate::MeshNode::attach_log`].
#[derive(Debug)]
pub struct LogMonitor {
    view: Mutex<LogView>,
    offers: tokio::sync::Mutex<()>,
    proofs: Arc<dyn ProofSource>,
    trust: Option<Arc<TrustStore>>,
    stats: LogStats,
    changes: watch::Sender<LogChange>,
    /// Deadline of one consistency proof.
    pub proof_timeout: Duration,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hold_reason(sv: &SplitView) -> String {
    format!(
        "the association's membership log showed a split view (found {}, from {}); \
         the operator must clear it",
        sv.detected_at,
        sv.source.as_deref().unwrap_or("the association")
    )
}

impl LogMonitor {
    /// Opens the view kept in `dir` (see [`LogView::open`]) for the log of
    /// `key`, with consistency proofs from `proofs`. With `trust`, a split
    /// view suspends its directory updates
    /// ([`TrustStore::hold_directories`]), at once if one is held on disk.
    pub fn open(
        dir: &Path,
        key: LogKey,
        proofs: Arc<dyn ProofSource>,
        trust: Option<Arc<TrustStore>>,
    ) -> Result<Arc<Self>, LogError> {
        let view = LogView::open(dir, key)?;
        if let (Some(sv), Some(t)) = (view.split_view(), &trust) {
            tracing::error!(
                "ALARM membership log: a split-view proof is held; directory updates stay suspended"
            );
            t.hold_directories(hold_reason(sv));
        }
        let change = LogChange {
            generation: 0,
            size: view.held().map_or(0, |h| h.checkpoint.size),
            root: view.held().map(|h| h.checkpoint.root),
            split_view: view.split_view().is_some(),
            source: None,
        };
        let (changes, _) = watch::channel(change);
        Ok(Arc::new(Self {
            view: Mutex::new(view),
            offers: tokio::sync::Mutex::new(()),
            proofs,
            trust,
            stats: LogStats::default(),
            changes,
            proof_timeout: Duration::from_secs(15),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogView> {
        self.view
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pinned log key.
    pub fn key(&self) -> LogKey {
        self.lock().key().clone()
    }

    /// The checkpoint held.
    pub fn held(&self) -> Option<Held> {
        self.lock().held().cloned()
    }

    /// (size, root) held, for the mesh Hello.
    pub fn head(&self) -> Option<(u64, Hash)> {
        self.lock()
            .held()
            .map(|h| (h.checkpoint.size, h.checkpoint.root))
    }

    /// The split-view proof held, if any.
    pub fn split_view(&self) -> Option<SplitView> {
        self.lock().split_view().cloned()
    }

    /// Counters.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// Subscribes to changes (new heads, split views).
    pub fn subscribe(&self) -> watch::Receiver<LogChange> {
        self.changes.subscribe()
    }

    /// Offers a checkpoint note from `source` (`None`: the association).
    /// Fetches the consistency proof it needs from the proof source.
    pub async fn offer(&self, note: &str, source: Option<&str>) -> Result<Offer, LogError> {
        let _one = self.offers.lock().await;
        let now = now_unix();
        let policy = self.witness_policy();
        self.with_view(|v| v.set_witness_policy(policy));
        let first = self.with_view(|v| v.offer(note, source, None, now));
        let r = match first {
            Ok(Offer::NeedProof { old, new }) => {
                let fetched =
                    tokio::time::timeout(self.proof_timeout, self.proofs.prefix_path(old, new))
                        .await
                        .unwrap_or_else(|_| Err("timed out".into()));
                match fetched {
                    Ok(path) => self.with_view(|v| v.offer(note, source, Some(&path), now)),
                    Err(why) => Err(LogError::Unverifiable { old, new, why }),
                }
            }
            other => other,
        };
        self.account(&r, source);
        r
    }

    /// Fetches the association's current checkpoint and offers it (the
    /// poll fallback of the `Watch` push).
    pub async fn poll(&self) -> Result<Offer, LogError> {
        let note = self
            .proofs
            .checkpoint()
            .await
            .map_err(|why| LogError::Unverifiable {
                old: 0,
                new: 0,
                why,
            })?;
        self.offer(&note, None).await
    }

    /// Takes a split-view proof a peer pushed, once it verifies with the
    /// log key. Returns whether it is new here.
    pub async fn offer_split_view(&self, sv: SplitView) -> Result<bool, LogError> {
        let _one = self.offers.lock().await;
        let source = sv.source.clone();
        let r = self.with_view(|v| v.adopt_split_view(sv));
        match &r {
            Ok(true) => self.alarm(source.as_deref()),
            Ok(false) => {}
            Err(e) => {
                self.stats.refused_evidence.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = source.as_deref().unwrap_or("-"), error = %e,
                    "membership log: a split-view proof was refused");
            }
        }
        r
    }

    /// The operator's decision after a split view (see
    /// [`LogView::clear_split_view`]): directory updates resume. Returns
    /// whether a proof was held.
    pub async fn clear_split_view(&self, forget_head: bool) -> Result<bool, LogError> {
        let _one = self.offers.lock().await;
        let had = self.lock().clear_split_view(forget_head, now_unix())?;
        if let Some(t) = &self.trust {
            t.release_directories();
        }
        tracing::warn!(
            forget_head,
            "membership log: the operator cleared the split view; directory updates resume"
        );
        self.notify(None);
        Ok(had)
    }

    /// The witness policy of the directory held (none without a trust
    /// store or a directory).
    fn witness_policy(&self) -> WitnessPolicy {
        let key = self.key();
        self.trust
            .as_ref()
            .map(|t| t.current())
            .and_then(|st| {
                st.directory
                    .as_ref()
                    .map(|d| WitnessPolicy::from_directory(&d.directory, &key))
            })
            .unwrap_or_default()
    }

    fn notify(&self, source: Option<&str>) {
        let (size, root, split) = {
            let v = self.lock();
            (
                v.held().map_or(0, |h| h.checkpoint.size),
                v.held().map(|h| h.checkpoint.root),
                v.split_view().is_some(),
            )
        };
        self.changes.send_modify(|c| {
            c.generation += 1;
            c.size = size;
            c.root = root;
            c.split_view = split;
            c.source = source.map(str::to_owned);
        });
    }

    /// Runs `f` on the view. A split view that `f` records is counted and
    /// directory updates are held before the view's lock is released, so
    /// that nobody (the node, a test, `caliopen log status`) sees the proof
    /// without the hold that must go with it.
    fn with_view<T>(&self, f: impl FnOnce(&mut LogView) -> T) -> T {
        let mut v = self.lock();
        let before = v.split_view().is_some();
        let out = f(&mut v);
        if !before {
            if let Some(sv) = v.split_view() {
                self.stats.split_views.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = &self.trust {
                    t.hold_directories(hold_reason(sv));
                }
            }
        }
        out
    }

    /// Logs and announces a split view that [`Self::with_view`] recorded.
    fn alarm(&self, source: Option<&str>) {
        tracing::error!(
            from = source.unwrap_or("the association"),
            "ALARM membership log: split view — two checkpoints signed by the log key are \
             inconsistent; both notes are kept as the proof and directory updates are suspended"
        );
        self.notify(source);
    }

    fn account(&self, r: &Result<Offer, LogError>, source: Option<&str>) {
        let from = source.unwrap_or("association");
        match r {
            Ok(Offer::Taken { grew: true }) => {
                self.stats.grew.fetch_add(1, Ordering::Relaxed);
                let size = self.head().map_or(0, |h| h.0);
                tracing::info!(from, size, "membership log: new checkpoint verified");
                self.notify(source);
            }
            Ok(Offer::Taken { grew: false }) => {
                self.stats.refreshed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Offer::Unchanged) | Ok(Offer::NeedProof { .. }) => {}
            Ok(Offer::SplitView(sv)) => {
                // Counted once, when the first proof is taken.
                let held = self.lock().split_view() == Some(sv.as_ref());
                if held {
                    self.alarm(source);
                } else {
                    tracing::error!(
                        from,
                        "membership log: another inconsistent checkpoint (a split view is held)"
                    );
                }
            }
            Err(e) => {
                let c = match e {
                    LogError::BadCheckpoint(_) => &self.stats.refused_signature,
                    LogError::Rollback { .. } => &self.stats.refused_rollback,
                    LogError::BadProof { .. } => &self.stats.refused_proof,
                    LogError::Unverifiable { .. } => &self.stats.unverifiable,
                    LogError::BadEvidence(_) => &self.stats.refused_evidence,
                    LogError::Quorum { .. } => &self.stats.refused_quorum,
                    LogError::State(_) => {
                        tracing::error!(error = %e, "membership log: state not written");
                        return;
                    }
                };
                c.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from, error = %e, "membership log: checkpoint not taken");
            }
        }
    }
}

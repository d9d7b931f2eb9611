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

mod evidence;
mod inclusion;
mod tiles;
mod view;
pub(crate) mod witness;

pub use evidence::{EvidenceError, SplitView};
pub use inclusion::InclusionError;
pub use tiles::HttpsTiles;
pub(crate) use view::{Held, LogView};
pub use view::{LogError, LogKey, Offer};
pub(crate) use witness::WitnessPolicy;

use crate::node::BoxFuture;
use crate::trust::TrustStore;
use caliopen_tlog::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A log entry's bytes and its inclusion proof.
pub type Leaf = (Vec<u8>, Vec<Hash>);

/// Where consistency proofs come from: the association's tiles
/// ([`HttpsTiles`]), or a test's tree.
pub trait ProofSource: Send + Sync + std::fmt::Debug + 'static {
    /// The prefix path from `old` to `new` leaves (`0 < old < new`) of the
    /// association's tree: the RFC 9162 consistency proof, with the subtree
    /// `[0, old)` first when `old` is a power of two.
    fn prefix_path(&self, old: u64, new: u64) -> BoxFuture<Result<Vec<Hash>, String>>;
    /// Entry `index` of the tree of `size` leaves (`index < size`) and its
    /// RFC 9162 inclusion proof in that tree.
    fn leaf(&self, index: u64, size: u64) -> BoxFuture<Result<Leaf, String>>;
    /// The association's current checkpoint note (the poll fallback).
    fn checkpoint(&self) -> BoxFuture<Result<String, String>>;
    /// Forgets anything kept from earlier answers (cached tiles): called
    /// when what they gave did not lead to a signed root, before asking
    /// once more. Sources that keep nothing have nothing to do.
    fn invalidate(&self) {}
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
    /// Peers' certificates shown to be in the log (each counted once).
    pub certs_included: AtomicU64,
    /// Peers' certificates the log shows are not where the directory says
    /// (a label issued outside the log): refused.
    pub certs_not_included: AtomicU64,
    /// Peers' certificates that could not be checked (no index, entry not
    /// covered by a checkpoint yet, tiles unreachable): refused for now.
    pub certs_unchecked: AtomicU64,
    /// Refused: a grown tree without the witness quorum of the directory.
    pub refused_quorum: AtomicU64,
}

/// Certificates remembered, at most (the oldest verdicts go first; a
/// certificate forgotten is checked again, from cached tiles).
const MAX_CERT_CHECKS: usize = 20_000;

/// The file where the verdicts on peers' certificates are kept.
pub(crate) const CERTIFICATES_FILE: &str = "certificates.json";

/// What this member found about a peer's certificate: shown in the log at
/// `index`, or shown *not* to be there (a label issued outside the log —
/// the certificate, the index and the tree size are the evidence, which
/// anyone can check against the association's tiles).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertCheck {
    /// The member the certificate's label names.
    pub member_id: String,
    /// SHA-256 of the certificate DER, hex.
    pub sha256: String,
    /// The entry the directory named for it.
    pub index: u64,
    /// The size of the verified tree it was checked against.
    pub tree_size: u64,
    /// Shown in the log (else shown not to be).
    pub included: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// When (Unix seconds).
    pub at: i64,
}

#[derive(Debug, Default)]
struct CertChecks {
    by_sha: std::collections::HashMap<Vec<u8>, CertCheck>,
    dirty: bool,
    saved_at: Option<std::time::Instant>,
}

impl CertChecks {
    /// The verdicts kept in `dir`; a missing or unreadable file is an empty
    /// start (they are a cache and a report: every one can be found again).
    fn load(dir: &Path) -> Self {
        let path = dir.join(CERTIFICATES_FILE);
        let list: Vec<CertCheck> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e,
                    "membership log: unreadable certificate verdicts; checking again");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let by_sha = list
            .into_iter()
            .filter_map(|c| Some((hex::decode(&c.sha256).ok()?, c)))
            .collect();
        Self {
            by_sha,
            ..Self::default()
        }
    }

    fn record(&mut self, sha: &[u8], c: CertCheck) {
        if self.by_sha.get(sha) == Some(&c) {
            return;
        }
        if self.by_sha.len() >= MAX_CERT_CHECKS && !self.by_sha.contains_key(sha) {
            if let Some(old) = self
                .by_sha
                .iter()
                .min_by_key(|(_, c)| c.at)
                .map(|(k, _)| k.clone())
            {
                self.by_sha.remove(&old);
            }
        }
        self.by_sha.insert(sha.to_vec(), c);
        self.dirty = true;
    }

    fn list(&self) -> Vec<CertCheck> {
        let mut v: Vec<CertCheck> = self.by_sha.values().cloned().collect();
        v.sort_by(|a, b| a.member_id.cmp(&b.member_id).then(a.at.cmp(&b.at)));
        v
    }
}

/// Age of the checkpoint held past which the member raises the staleness
/// alarm: ten association heartbeats missed.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Least time between two writes of `certificates.json` from checks (the
/// rest is written by [`LogMonitor::save_certificates`]).
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// Least time between two polls of the association's checkpoint made
/// because a peer's certificate lies beyond the checkpoint held.
const INCLUSION_POLL_EVERY: Duration = Duration::from_secs(2);

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
    /// What was found about peers' certificates, by DER SHA-256 (kept in
    /// `certificates.json`).
    certs: Mutex<CertChecks>,
    dir: std::path::PathBuf,
    /// When a certificate beyond the checkpoint held last made us poll.
    last_poll: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Witness quorum pinned by the member ([`Self::set_min_witness_quorum`]).
    min_quorum: std::sync::atomic::AtomicUsize,
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
            certs: Mutex::new(CertChecks::load(dir)),
            dir: dir.to_owned(),
            last_poll: tokio::sync::Mutex::new(None),
            min_quorum: std::sync::atomic::AtomicUsize::new(0),
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

    /// Seconds since the log key dated the checkpoint held (`None`: none
    /// held). The association re-signs it every minute when nothing
    /// changes, so a large age means its heartbeats do not reach us.
    pub fn checkpoint_age(&self, now: i64) -> Option<u64> {
        self.lock()
            .held()
            .map(|h| u64::try_from(now).unwrap_or(0).saturating_sub(h.timestamp))
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
                let mut r = Err(LogError::Unverifiable {
                    old,
                    new,
                    why: String::new(),
                });
                for attempt in 0..2 {
                    if attempt > 0 {
                        // Tiles are not signed: a bad one (kept in a cache,
                        // say) is dropped and the proof asked for once more.
                        self.proofs.invalidate();
                    }
                    let fetched =
                        tokio::time::timeout(self.proof_timeout, self.proofs.prefix_path(old, new))
                            .await
                            .unwrap_or_else(|_| Err("timed out".into()));
                    r = match fetched {
                        Ok(path) => self.with_view(|v| v.offer(note, source, Some(&path), now)),
                        Err(why) => Err(LogError::Unverifiable { old, new, why }),
                    };
                    if !matches!(r, Err(LogError::BadProof { .. })) {
                        break;
                    }
                }
                r
            }
            other => other,
        };
        self.account(&r, source);
        r
    }

    /// Checks that the certificate of DER SHA-256 `sha256`, whose label
    /// names `member_id`, is in the log at `index` (the directory's
    /// `cert_log_index`; `None` when it names none) — see [`inclusion`]. A
    /// certificate beyond the checkpoint held makes the monitor ask the
    /// association for a fresher one first (at most every two seconds).
    /// Verdicts the log proves are kept ([`Self::certificates`]).
    pub async fn check_certificate(
        &self,
        member_id: &str,
        sha256: &[u8],
        index: Option<u64>,
    ) -> Result<(), InclusionError> {
        if self.is_included(sha256) {
            return Ok(());
        }
        let mut checked = 0;
        let r = self.check_uncached(sha256, index, &mut checked).await;
        let verdict = |included: bool, detail: String| CertCheck {
            member_id: member_id.to_owned(),
            sha256: hex::encode(sha256),
            index: index.unwrap_or_default(),
            tree_size: checked,
            included,
            detail,
            at: now_unix(),
        };
        match &r {
            Ok(()) => {
                self.lock_certs()
                    .record(sha256, verdict(true, String::new()));
                self.stats.certs_included.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    peer = member_id,
                    index = index.unwrap_or_default(),
                    "membership log: peer's certificate shown in the log"
                );
            }
            Err(e) if e.is_proven() => {
                self.lock_certs()
                    .record(sha256, verdict(false, e.to_string()));
                self.stats
                    .certs_not_included
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = member_id, cert = %hex::encode(sha256), error = %e,
                    "ALARM membership log: a labelled certificate is not in the log; peer refused");
            }
            Err(e) => {
                self.stats.certs_unchecked.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = member_id, cert = %hex::encode(sha256), error = %e,
                    "membership log: a peer's certificate could not be shown in the log; refused for now");
            }
        }
        let due = self
            .lock_certs()
            .saved_at
            .is_none_or(|t| t.elapsed() >= SAVE_EVERY);
        if due {
            self.save_certificates();
        }
        r
    }

    fn lock_certs(&self) -> std::sync::MutexGuard<'_, CertChecks> {
        self.certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the certificate of DER SHA-256 `sha256` was shown in the log.
    pub fn is_included(&self, sha256: &[u8]) -> bool {
        self.lock_certs()
            .by_sha
            .get(sha256)
            .is_some_and(|c| c.included)
    }

    /// The verdicts on peers' certificates, by member.
    pub fn certificates(&self) -> Vec<CertCheck> {
        self.lock_certs().list()
    }

    /// Writes the verdicts to `certificates.json` if any changed since the
    /// last write (call it now and then, and at shutdown). A write error is
    /// logged: the verdicts are a cache and a report, found again if lost.
    pub fn save_certificates(&self) {
        let list = {
            let mut c = self.lock_certs();
            if !c.dirty {
                return;
            }
            c.dirty = false;
            c.saved_at = Some(std::time::Instant::now());
            c.list()
        };
        let bytes = match serde_json::to_vec_pretty(&list) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "membership log: certificate verdicts not encoded");
                return;
            }
        };
        if let Err(e) = view::write_atomic(&self.dir, CERTIFICATES_FILE, &bytes) {
            self.lock_certs().dirty = true;
            tracing::error!(error = %e, "membership log: certificate verdicts not written");
        }
    }

    /// Sets `checked` to the size of the tree the check is made against.
    async fn check_uncached(
        &self,
        sha256: &[u8],
        index: Option<u64>,
        checked: &mut u64,
    ) -> Result<(), InclusionError> {
        let index = index.ok_or(InclusionError::NoIndex)?;
        let covered = |h: Option<(u64, Hash)>| h.filter(|(size, _)| index < *size);
        let mut head = covered(self.head());
        if head.is_none() {
            let mut last = self.last_poll.lock().await;
            // Another check may have polled while we waited for the lock.
            head = covered(self.head());
            if head.is_none() && last.is_none_or(|t| t.elapsed() >= INCLUSION_POLL_EVERY) {
                *last = Some(std::time::Instant::now());
                if let Err(e) = self.poll().await {
                    tracing::debug!(error = %e, "membership log: poll for a fresher checkpoint");
                }
                head = covered(self.head());
            }
        }
        let Some((size, root)) = head else {
            return Err(match self.head() {
                None => InclusionError::NoCheckpoint,
                Some((size, _)) => InclusionError::NotCovered { index, size },
            });
        };
        *checked = size;
        let mut verdict = Err(InclusionError::NoIndex);
        for attempt in 0..2 {
            if attempt > 0 {
                // Tiles are not signed: a bad one (kept in a cache, say)
                // is dropped and the entry asked for once more.
                self.proofs.invalidate();
            }
            let (entry, proof) =
                match tokio::time::timeout(self.proof_timeout, self.proofs.leaf(index, size)).await
                {
                    Ok(Ok(v)) => v,
                    Ok(Err(why)) => return Err(InclusionError::Unverifiable { index, why }),
                    Err(_) => {
                        return Err(InclusionError::Unverifiable {
                            index,
                            why: "timed out".into(),
                        })
                    }
                };
            verdict = inclusion::judge(sha256, index, size, &root, &entry, &proof);
            if !matches!(verdict, Err(InclusionError::BadProof { .. })) {
                break;
            }
        }
        verdict.map_err(|e| match e {
            // Twice a path that leads nowhere: the association's tiles do
            // not match its own checkpoint. No evidence about the
            // certificate either way.
            InclusionError::BadProof { index } => InclusionError::Unverifiable {
                index,
                why: "the association's tiles give no inclusion proof to the checkpoint held"
                    .into(),
            },
            other => other,
        })
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
        if forget_head {
            // Verdicts were made against the head dropped: the next head
            // is not checked against it, so they prove nothing any more.
            let mut c = self.lock_certs();
            c.by_sha.clear();
            c.dirty = true;
        }
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
        let mut p = self
            .trust
            .as_ref()
            .map(|t| t.current())
            .and_then(|st| {
                st.directory
                    .as_ref()
                    .map(|d| WitnessPolicy::from_directory(&d.directory, &key))
            })
            .unwrap_or_default();
        p.quorum = p.quorum.max(self.min_quorum.load(Ordering::Relaxed));
        p
    }

    /// Pins the fewest witness cosignatures a grown tree must carry,
    /// whatever the directory says (the directory is the CA key's word; a
    /// member that pins a minimum cannot have it lowered by that key).
    pub fn set_min_witness_quorum(&self, n: usize) {
        self.min_quorum.store(n, Ordering::Relaxed);
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

//! Reclaiming the space of deleted bodies, a segment at a time, in the
//! background.
//!
//! A pass reads the body index once to add up, per sealed segment (one no
//! record can be added to nor named in any more: [`Bodies::sealed`]), the
//! bytes of the records still named. A segment with nothing named is
//! deleted; one whose named records fill less than
//! [`bodies::COMPACT_BELOW`] of it has them copied into the active
//! segment, synced, renamed in the index (only where the index still names
//! the old place: a message deleted meanwhile is not brought back), made
//! durable by the group commit, and then deleted. Deliveries go on during
//! a pass: they write to the active segment, which a pass never touches,
//! and a reader that finds a segment gone reads the index again
//! ([`Store::body`]). The copying of one pass is bounded
//! ([`MAX_COPY_PER_PASS`]), so a pass never holds the disk for long.

use super::bodies::{self, Loc};
use super::{model, tx_error, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// How often the background pass runs.
pub(super) const INTERVAL: Duration = Duration::from_secs(300);
/// Most bytes copied forward by one pass.
pub(super) const MAX_COPY_PER_PASS: u64 = 256 << 20;
/// Records renamed per transaction.
const CHUNK: usize = 256;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Records copied forward.
    pub relocated: u64,
    /// Bytes of segment files deleted.
    pub bytes_freed: u64,
    /// Bytes copied forward.
    pub bytes_copied: u64,
}

/// The background compactor, stopped and joined when dropped.
#[derive(Debug)]
pub(super) struct CompactorThread {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl CompactorThread {
    /// Starts a pass every `every`.
    pub(super) fn start(store: &Store, every: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (s, flag) = (store.clone(), stop.clone());
        let runtime = tokio::runtime::Handle::current();
        let handle = std::thread::Builder::new()
            .name("store-compact".into())
            .spawn(move || loop {
                {
                    let guard = flag.0.lock().unwrap_or_else(PoisonError::into_inner);
                    let (guard, _) = flag
                        .1
                        .wait_timeout_while(guard, every, |stopped| !*stopped)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *guard {
                        return;
                    }
                }
                match s.compact_with(&runtime, &|| {
                    *flag.0.lock().unwrap_or_else(PoisonError::into_inner)
                }) {
                    Ok(r) if r.segments_deleted > 0 => tracing::info!(
                        segments = r.segments_deleted,
                        relocated = r.relocated,
                        freed_mib = r.bytes_freed >> 20,
                        "body segments compacted"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "body compaction failed"),
                }
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start the body compactor"))
            .ok();
        Self { stop, handle }
    }
}

impl Drop for CompactorThread {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the body compactor panicked");
            }
        }
    }
}

impl Store {
    /// Runs one compaction pass now (blocking: call it off the async
    /// workers, e.g. with `spawn_blocking`).
    pub fn compact(&self) -> Result<CompactReport, StoreError> {
        let runtime = tokio::runtime::Handle::current();
        self.compact_with(&runtime, &|| false)
    }

    fn compact_with(
        &self,
        runtime: &tokio::runtime::Handle,
        stopped: &dyn Fn() -> bool,
    ) -> Result<CompactReport, StoreError> {
        let mut report = CompactReport::default();
        let sealed: HashMap<u64, u64> = self.bodies.sealed().into_iter().collect();
        if sealed.is_empty() {
            return Ok(report);
        }
        // Pass 1: the bytes still named in each sealed segment, and the
        // segments holding a quarantined record (kept for inspection).
        let mut live: HashMap<u64, u64> = HashMap::new();
        let mut pinned: HashSet<u64> = HashSet::new();
        for (n, kv) in self.body_index.scan_prefix(b"B").enumerate() {
            if n % 4096 == 0 && stopped() {
                return Ok(report);
            }
            let (_, v) = kv?;
            if let Some(loc) = Loc::decode(&v) {
                if sealed.contains_key(&loc.seg) {
                    *live.entry(loc.seg).or_default() += loc.record_bytes();
                }
            }
        }
        for kv in self.body_index.scan_prefix(b"Q") {
            let (_, v) = kv?;
            if let Some(loc) = v
                .get(v.len().saturating_sub(bodies::LOC_LEN)..)
                .and_then(Loc::decode)
            {
                pinned.insert(loc.seg);
            }
        }
        let mut victims: Vec<(u64, u64, u64)> = sealed
            .iter()
            .filter(|(seg, _)| !pinned.contains(seg))
            .map(|(&seg, &size)| (seg, size, live.get(&seg).copied().unwrap_or(0)))
            .filter(|&(_, size, named)| {
                named == 0 || (named as f64) < size as f64 * bodies::COMPACT_BELOW
            })
            .collect();
        // The emptiest first: the most space for the least copying.
        victims.sort_by(|a, b| {
            (a.2 as f64 / a.1.max(1) as f64).total_cmp(&(b.2 as f64 / b.1.max(1) as f64))
        });
        // Within the pass's copying budget.
        let mut budget = MAX_COPY_PER_PASS;
        victims.retain(|&(_, _, named)| {
            let fits = named <= budget;
            if fits {
                budget -= named;
            }
            fits
        });
        // Pass 2, once for all of them: the records they still hold.
        let mut records: HashMap<u64, Vec<(u64, Loc)>> = HashMap::new();
        if victims.iter().any(|v| v.2 > 0) {
            for kv in self.body_index.scan_prefix(b"B") {
                let (k, v) = kv?;
                if let (Some(loc), Some(blob)) = (
                    Loc::decode(&v),
                    k.get(1..9)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes),
                ) {
                    if victims.iter().any(|v| v.0 == loc.seg) {
                        records.entry(loc.seg).or_default().push((blob, loc));
                    }
                }
            }
        }
        for (seg, size, _) in victims {
            if stopped() {
                break;
            }
            if let Some(held) = records.get(&seg) {
                if !self.move_records(runtime, held, &mut report)? {
                    continue;
                }
            }
            self.bodies.delete_segment(seg)?;
            report.segments_deleted += 1;
            report.bytes_freed += size;
        }
        Ok(report)
    }

    /// Copies `records` forward and renames them in the index. False when
    /// one could not be copied (its segment must stay).
    fn move_records(
        &self,
        runtime: &tokio::runtime::Handle,
        records: &[(u64, Loc)],
        report: &mut CompactReport,
    ) -> Result<bool, StoreError> {
        let mut all = true;
        for chunk in records.chunks(CHUNK) {
            let mut moved = Vec::with_capacity(chunk.len());
            for (blob, old) in chunk {
                match self.bodies.copy_forward(*blob, old) {
                    Ok(new) => moved.push((*blob, *old, new)),
                    Err(d) => {
                        all = false;
                        tracing::error!(blob = %format!("{blob:016x}"), damage = %d, "a body cannot be compacted; `caliopen store check` reports it");
                    }
                }
            }
            let synced = self.bodies.sync().map_err(StoreError::Flush);
            let renamed = synced.and_then(|()| {
                self.body_index
                    .transaction(|t| {
                        let mut n = 0u64;
                        for (blob, old, new) in &moved {
                            let k = model::body_key(*blob);
                            if t.get(&k)?.as_deref() == Some(&old.encode()[..]) {
                                t.insert(k, new.encode())?;
                                n += 1;
                            }
                        }
                        Ok(n)
                    })
                    .map_err(tx_error)
            });
            let renamed = match renamed {
                Ok(n) => runtime
                    .block_on(self.commit.sync())
                    .map(|()| n)
                    .map_err(StoreError::Flush),
                Err(e) => Err(e),
            };
            for (_, _, new) in &moved {
                self.bodies.settle(Some(new));
            }
            let n = renamed?;
            report.relocated += n;
            report.bytes_copied += moved.iter().map(|(_, o, _)| o.record_bytes()).sum::<u64>();
        }
        Ok(all)
    }
}

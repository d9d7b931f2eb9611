//! Group commit: writers register the log position they wait for
//! ([`Shared::wait_for`]); one committer thread (`outbox-commit`) runs one
//! `fdatasync(2)` round over the segments written since the last one for
//! every waiter that arrived before it began. After a failed sync, every
//! waiter and every later write gets the error (the page cache can no
//! longer be trusted).

use super::{lock, JournalStats};
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::oneshot;

/// What the writers and the committer thread share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) commit: Mutex<Commit>,
    pub(super) wake: Condvar,
    pub(super) stats: JournalStats,
}

#[derive(Debug, Default)]
pub(super) struct Commit {
    pub(super) written: u64,
    pub(super) durable: u64,
    /// Segments written since the last sync.
    pub(super) dirty: Vec<(u64, Arc<File>)>,
    pub(super) waiters: Vec<(u64, oneshot::Sender<Result<(), String>>)>,
    pub(super) failed: Option<String>,
    pub(super) stop: bool,
}

impl Shared {
    /// None if `lsn` is durable already; else a receiver for the commit
    /// that covers it.
    pub(super) fn wait_for(&self, lsn: u64) -> Option<oneshot::Receiver<Result<(), String>>> {
        let mut c = lock(&self.commit);
        // Nothing past what was written can be waited for.
        let lsn = lsn.min(c.written);
        if c.durable >= lsn {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        if let Some(f) = &c.failed {
            let _ = tx.send(Err(f.clone()));
        } else {
            c.waiters.push((lsn, tx));
            self.wake.notify_one();
        }
        Some(rx)
    }
}

/// The committer thread: one `fdatasync` round for every waiter that
/// arrived before it began.
pub(super) fn committer(shared: &Shared) {
    let mut c = lock(&shared.commit);
    loop {
        let pending = c.waiters.iter().any(|(lsn, _)| *lsn > c.durable);
        if !pending {
            if c.stop {
                // A clean stop leaves nothing unsynced (removals included).
                if c.failed.is_none() {
                    for (_, f) in c.dirty.drain(..) {
                        if let Err(e) = f.sync_data() {
                            tracing::error!(error = %e, "outbox journal: final sync failed");
                        }
                    }
                }
                break;
            }
            c = shared.wake.wait(c).unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let target = c.written;
        let files = std::mem::take(&mut c.dirty);
        drop(c);
        let t0 = Instant::now();
        let r = files
            .iter()
            .try_for_each(|(_, f)| f.sync_data())
            .map_err(|e| format!("fdatasync: {e}"));
        shared
            .stats
            .sync_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        c = lock(&shared.commit);
        match r {
            Ok(()) => {
                c.durable = c.durable.max(target);
                let durable = c.durable;
                let (done, wait): (Vec<_>, Vec<_>) =
                    c.waiters.drain(..).partition(|(lsn, _)| *lsn <= durable);
                c.waiters = wait;
                for (_, tx) in done {
                    let _ = tx.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox journal: sync failed; refusing further writes");
                c.failed = Some(e.clone());
                for (_, tx) in c.waiters.drain(..) {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

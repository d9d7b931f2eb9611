//! Group commit: many writers, one fsync. A writer makes its changes, then
//! awaits [`GroupCommit::sync`]; a single committer task flushes sled once
//! for every writer that arrived before the flush began.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// The group committer of one sled database.
#[derive(Debug)]
pub struct GroupCommit {
    db: sled::Db,
    requested: AtomicU64,
    done: watch::Sender<(u64, Option<String>)>,
    wake: Notify,
    /// Number of fsyncs performed.
    pub flushes: AtomicU64,
}

impl GroupCommit {
    /// Starts the committer task for `db`.
    pub fn start(db: sled::Db) -> Arc<Self> {
        let (done, _) = watch::channel((0, None));
        let gc = Arc::new(Self {
            db,
            requested: AtomicU64::new(0),
            done,
            wake: Notify::new(),
            flushes: AtomicU64::new(0),
        });
        let committer = gc.clone();
        // The committer lives as long as the runtime: one per database.
        tokio::spawn(async move {
            let gc = committer;
            loop {
                let notified = gc.wake.notified();
                let target = gc.requested.load(Ordering::Acquire);
                if gc.done.borrow().0 >= target {
                    notified.await;
                    continue;
                }
                let db = gc.db.clone();
                let r = tokio::task::spawn_blocking(move || db.flush()).await;
                let err = match r {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(e) = &err {
                    tracing::error!(error = %e, "storage flush failed");
                }
                gc.flushes.fetch_add(1, Ordering::Relaxed);
                gc.done.send_replace((target, err));
            }
        });
        gc
    }

    /// Returns once everything written before the call is on disk.
    pub async fn sync(&self) -> Result<(), String> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.done.subscribe();
        self.wake.notify_one();
        loop {
            {
                let (done, err) = &*rx.borrow_and_update();
                if *done >= ticket {
                    return match err {
                        Some(e) => Err(e.clone()),
                        None => Ok(()),
                    };
                }
            }
            if rx.changed().await.is_err() {
                return Err("storage committer stopped".into());
            }
        }
    }
}

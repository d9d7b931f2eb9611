//! Group commit: many writers, one fsync. A writer makes its changes, then
//! awaits [`GroupCommit::sync`]; a single committer thread flushes sled once
//! for every writer that arrived before the flush began.
//!
//! sled 0.34's `flush` is not a durability barrier on Linux: it ends with
//! `sync_file_range`, which neither commits the file's metadata (its size,
//! as the log grows) nor flushes the disk's write cache, and values too
//! large for a log segment go to files under `blobs/` that sled never
//! syncs. So after sled's flush the committer `fdatasync`s the log file and
//! `fsync`s every blob file it has not synced yet (and the directories),
//! the same barrier Postfix takes before its 250 (found by the benchmark of
//! issue #7: a "durable" acknowledgement took 0.2 ms on a disk that does
//! 400 fsyncs per second).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A flush that failed: nothing it covered may be acknowledged. Every
/// writer the flush covered gets the same error (hence `Clone`, the causes
/// shared).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// sled could not write its log.
    #[error("{0}")]
    Db(Arc<sled::Error>),
    /// The database files could not be synced.
    #[error("fsync: {0}")]
    Sync(Arc<std::io::Error>),
    /// A body segment could not be synced.
    #[error("body segment sync: {0}")]
    BodySync(Arc<std::io::Error>),
    /// A body segment sync failed before: what it covered may be lost from
    /// the page cache, so nothing more is written until a restart.
    #[error("an earlier body sync failed ({0}): restart the instance")]
    EarlierBodySync(Arc<std::io::Error>),
    /// The commit thread could not be started.
    #[error("no commit thread: {0}")]
    NoThread(Arc<std::io::Error>),
    /// The commit thread has stopped (the store is closing).
    #[error("storage committer stopped")]
    Stopped,
    /// The store is closing.
    #[error("the store is closing")]
    Closing,
}

/// The group committer of one sled database. Dropping it stops and joins
/// its thread (after the commits asked for), so that the database is closed
/// when the last handle on it is gone, not some time later.
#[derive(Debug)]
pub struct GroupCommit {
    state: Arc<CommitState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::ops::Deref for GroupCommit {
    type Target = CommitState;
    fn deref(&self) -> &CommitState {
        &self.state
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        {
            let _guard = self
                .state
                .wake
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.state.wake.1.notify_all();
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the store's commit thread panicked");
            }
        }
    }
}

/// What the committer thread and the writers share.
#[derive(Debug)]
pub struct CommitState {
    db: sled::Db,
    requested: AtomicU64,
    done: watch::Sender<(u64, Option<FlushError>)>,
    /// Wakes the committer thread (the mutex orders a request against the
    /// thread's check, so no wake-up is lost).
    wake: (Mutex<()>, Condvar),
    /// Signalled after each commit (for [`CommitState::wait_idle`]).
    idle: Condvar,
    stop: AtomicBool,
    /// Number of fsyncs performed.
    pub flushes: AtomicU64,
    /// Time spent in sled's flush (writing its buffers out), in µs.
    pub flush_us: AtomicU64,
    /// Time spent in fdatasync/fsync after it, in µs.
    pub sync_us: AtomicU64,
}

impl GroupCommit {
    /// Starts the committer thread for `db`, whose files are in `dir`
    /// (`None` for a temporary database: sled's flush only). The thread
    /// commits back to back while writers wait. A thread rather than a
    /// task: each commit is blocking IO, and handing every one to the
    /// blocking pool and back cost more than the fdatasync itself under
    /// load.
    pub fn start(db: sled::Db, dir: Option<PathBuf>) -> Arc<Self> {
        let (done, _) = watch::channel((0, None));
        let state = Arc::new(CommitState {
            db,
            requested: AtomicU64::new(0),
            done,
            wake: (Mutex::new(()), Condvar::new()),
            idle: Condvar::new(),
            stop: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            flush_us: AtomicU64::new(0),
            sync_us: AtomicU64::new(0),
        });
        let files = dir.map(DurableFiles::new);
        let st = state.clone();
        let thread = match std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || st.committer(files))
        {
            Ok(h) => Some(h),
            Err(e) => {
                // Writers would wait forever: fail them at once instead.
                tracing::error!(error = %e, "the store's commit thread could not start");
                state
                    .done
                    .send_replace((u64::MAX, Some(FlushError::NoThread(Arc::new(e)))));
                None
            }
        };
        Arc::new(Self {
            state,
            thread: Mutex::new(thread),
        })
    }
}

impl CommitState {
    fn committer(&self, mut files: Option<DurableFiles>) {
        loop {
            let target = self.requested.load(Ordering::Acquire);
            if self.done.borrow().0 >= target {
                let guard = self
                    .wake
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if self.requested.load(Ordering::Acquire) <= self.done.borrow().0 {
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let _ = self.wake.1.wait_timeout(guard, Duration::from_millis(500));
                }
                continue;
            }
            let t0 = Instant::now();
            let flushed = self.db.flush().map_err(|e| FlushError::Db(Arc::new(e)));
            let t1 = Instant::now();
            let r = flushed.and_then(|_| match &mut files {
                Some(f) => f.sync().map_err(|e| FlushError::Sync(Arc::new(e))),
                None => Ok(()),
            });
            let us = |d: Duration| d.as_micros() as u64;
            self.flush_us.fetch_add(us(t1 - t0), Ordering::Relaxed);
            self.sync_us.fetch_add(us(t1.elapsed()), Ordering::Relaxed);
            let err = r.err();
            if let Some(e) = &err {
                tracing::error!(error = %e, "storage flush failed");
            }
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.done.send_replace((target, err));
            let _guard = self
                .wake
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.idle.notify_all();
        }
    }

    /// Blocks (a thread, not a task) while a commit is asked for or under
    /// way, at most `max`. The store's writer uses it to gather the
    /// deliveries that arrive meanwhile into one transaction.
    pub fn wait_idle(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let mut guard = self
            .wake
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while self.requested.load(Ordering::Acquire) > self.done.borrow().0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = match self.idle.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Returns once everything written before the call is on disk.
    pub async fn sync(&self) -> Result<(), FlushError> {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = self.done.subscribe();
        {
            let _guard = self
                .wake
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.wake.1.notify_one();
        }
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
                return Err(FlushError::Stopped);
            }
        }
    }
}

/// The files of a sled database that must be synced for a flush to be durable.
#[derive(Debug)]
struct DurableFiles {
    dir: PathBuf,
    log: Option<std::fs::File>,
    blobs_synced: HashSet<std::ffi::OsString>,
    blobs_dir_mtime: Option<std::time::SystemTime>,
}

impl DurableFiles {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            log: None,
            blobs_synced: HashSet::new(),
            blobs_dir_mtime: None,
        }
    }

    fn sync_path(p: &Path) -> std::io::Result<()> {
        std::fs::File::open(p)?.sync_all()
    }

    /// fdatasync of the log; fsync of new blobs and of the blobs directory.
    fn sync(&mut self) -> std::io::Result<()> {
        if self.log.is_none() {
            self.log = Some(std::fs::File::open(self.dir.join("db"))?);
            Self::sync_path(&self.dir)?;
        }
        if let Some(log) = &self.log {
            log.sync_data()?;
        }
        let blobs = self.dir.join("blobs");
        let mtime = std::fs::metadata(&blobs).and_then(|m| m.modified()).ok();
        // A directory's mtime ticks coarsely: rescan while it is recent, so
        // that a blob created in the same tick as the last scan is not missed.
        let recent = mtime
            .and_then(|m| m.elapsed().ok())
            .is_none_or(|age| age < std::time::Duration::from_secs(2));
        if mtime.is_some() && (mtime != self.blobs_dir_mtime || recent) {
            let mut seen = HashSet::new();
            for e in std::fs::read_dir(&blobs)? {
                let name = e?.file_name();
                if !self.blobs_synced.contains(&name) {
                    match Self::sync_path(&blobs.join(&name)) {
                        Ok(()) => {}
                        // Collected by sled meanwhile: nothing left to make durable.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
                seen.insert(name);
            }
            Self::sync_path(&blobs)?;
            self.blobs_synced = seen;
            self.blobs_dir_mtime = mtime;
        }
        Ok(())
    }
}

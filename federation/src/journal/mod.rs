//! An append-only journal with group commit: the mesh outbox's storage.
//!
//! Why not sled: a durable enqueue into sled costs a tree insert, sled's
//! flush (its IO buffer written out and `sync_file_range`d, on its own
//! threads) and then an `fdatasync`; the entry's removal costs another tree
//! write. The benchmark of issue #7 found this the largest cost of the path
//! from A's outbox to B's durable acknowledgement. Here an entry costs one
//! `pwrite` and a share of one `fdatasync`, and its removal one small
//! `pwrite` that needs no sync of its own.
//!
//! # Layout
//! A directory of segment files `{id:016x}.seg`, written in order. Each
//! record is
//!
//! ```text
//! magic u32 | crc32 u32 | segment id u64 | kind u8 | key u64 | length u32 | payload
//! ```
//!
//! (little-endian; the CRC covers everything after itself). A `Put` makes
//! the payload the key's value, a `Remove` (empty payload) deletes the key;
//! replaying the segments in order gives the live entries, the last record
//! of a key winning.
//!
//! # Durability
//! [`Journal::put`] and [`Journal::remove`] write the record at once (into
//! the page cache) and return its log position; [`Journal::sync`] returns
//! once everything up to a position is on disk. One committer thread
//! `fdatasync`s for every waiter that arrived before it began. Segments are
//! zero-filled to their size and synced, with their directory, before the
//! first record goes in, so that a sync only ever overwrites allocated
//! blocks and commits no file metadata (which on ext4 would wait for a
//! journal commit). A background thread prepares the next segment while the
//! active one fills (1 MiB for the first, twice as large each time up to
//! [`SEGMENT_SIZE`]), so that a busy instance never waits for that.
//!
//! On open, each segment is read up to its first record that does not check
//! (magic, CRC, segment id, kind, length). In the last segment that is the
//! torn tail of a crash: the file is cut there, so that a later record can
//! never be followed by stale bytes that would parse. In an earlier segment
//! it is damage, and it is reported.
//!
//! # Reclaiming space
//! A segment whose entries have all been removed or rewritten is deleted
//! once the records that superseded them are durable, oldest first (a
//! `Remove` in a newer segment must outlive the `Put` it cancels). When the
//! oldest segment still holds live entries (mail for a peer that is down)
//! while the others hold at least as many dead bytes, its live entries are
//! copied forward and it goes too: the copying never exceeds what it frees.
//! A dead segment large enough is recycled as the next one instead of
//! deleted (its blocks stay allocated; its old records carry another
//! segment id, and a closed segment ends with an end mark). Preparing,
//! deleting and copying happen on the same background thread. After a sync
//! fails, the journal refuses every further write (the page cache can no
//! longer be trusted): the operator restarts the instance.
//!
//! # Files
//! - `record.rs`: the record codec;
//! - `open.rs`: opening (locking, replay, cutting a torn tail);
//! - `write.rs`: appending records, the index;
//! - `segment.rs`: segment files, preparing one ahead, rolling;
//! - `reclaim.rs`: deleting, recycling and compacting segments;
//! - `chores.rs`: the background thread;
//! - `commit.rs`: the committer thread (group commit).

mod chores;
mod commit;
mod open;
mod reclaim;
mod record;
mod segment;
mod write;

#[doc(hidden)]
pub mod internal;

use chores::Chores;
use commit::Shared;
use record::{HEADER, KIND_PUT, KIND_REMOVE};
use segment::{segment_name, Prepared};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Removals wait in memory for the next write up to this many bytes.
const PENDING_MAX: usize = 64 << 10;
/// The background thread's zero-filling writes (and syncs) this much at a
/// time.
const GENTLE_CHUNK: u64 = 128 << 10;
/// Zero-filling writes this much at a time; the first segment has this size.
const ZERO_CHUNK: u64 = 1 << 20;
/// The largest value a record may carry.
pub(crate) const MAX_VALUE: usize = 256 << 20;
/// Default segment size: a segment is closed once a record would take it
/// past this (one larger record may still go alone into a segment).
pub(crate) const SEGMENT_SIZE: u64 = 8 << 20;

/// Why the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error("journal {0} is in use by another process")]
    Locked(PathBuf),
    /// An earlier sync failed: nothing more is written until a restart.
    #[error("journal failed earlier ({0}): restart the instance")]
    Failed(String),
    /// The value is too large for a record.
    #[error("journal value of {0} bytes exceeds the limit of {MAX_VALUE}")]
    TooLarge(usize),
    /// The committer thread is gone.
    #[error("journal closed")]
    Closed,
}

fn io_err(path: &Path, source: std::io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// `fdatasync` rounds performed.
    pub commits: AtomicU64,
    /// Time spent in them, in µs.
    pub sync_us: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Entries copied forward out of an old segment.
    pub relocated: AtomicU64,
    /// Segments deleted.
    pub segments_deleted: AtomicU64,
    /// Dead segments reused as the next one.
    pub recycled: AtomicU64,
    /// Segments zero-filled ahead by the background thread.
    pub prepared: AtomicU64,
    /// Rolls that found no segment ready and made one on the spot.
    pub unprepared_rolls: AtomicU64,
}

/// A handle on the journal (cheap to clone). The last handle dropped
/// closes it at once: it writes the removals waiting, stops the background
/// thread, syncs and stops the committer thread, and lets go of the
/// directory's lock (so that it can be opened again right after).
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

/// Held only by [`Journal`] handles: the last one closes the journal.
#[derive(Debug)]
struct Closer(Arc<Inner>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segment_size: u64,
    state: Mutex<State>,
    shared: Arc<Shared>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    chores: Arc<Chores>,
    chore_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    _lock: File,
}

#[derive(Debug)]
struct State {
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Write offset in the active segment.
    off: u64,
    /// Bytes of the active segment already allocated (zero-filled).
    allocated: u64,
    /// Log position: bytes written since the journal was opened.
    lsn: u64,
    index: HashMap<u64, Loc>,
    /// Records appended to the active segment but not yet written to its
    /// file (removals, which need no sync of their own, wait here for the
    /// next write); they start at `off - pending.len()`.
    pending: Vec<u8>,
    /// The next segment, once the background thread has prepared it.
    next: Option<Prepared>,
    /// The id being prepared.
    preparing: Option<u64>,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes of records written.
    size: u64,
    /// Entries whose current record is here, and their bytes.
    live: u64,
    live_bytes: u64,
    /// Log position of the last record that took an entry away from here:
    /// the segment may go once that is durable.
    released_at: u64,
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    off: u64,
    len: u32,
}

impl Loc {
    fn bytes(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// Sets `key` to `value`; returns the log position to [`Journal::sync`] on.
    pub fn put(&self, key: u64, value: &[u8]) -> Result<u64, JournalError> {
        if value.len() > MAX_VALUE {
            return Err(JournalError::TooLarge(value.len()));
        }
        let mut st = lock(&self.inner.state);
        self.inner.append(&mut st, KIND_PUT, key, value)
    }

    /// Removes `key` (nothing is written if it is absent); returns the log
    /// position to [`Journal::sync`] on.
    pub fn remove(&self, key: u64) -> Result<u64, JournalError> {
        let mut st = lock(&self.inner.state);
        if !st.index.contains_key(&key) {
            return Ok(st.lsn);
        }
        self.inner.append(&mut st, KIND_REMOVE, key, &[])
    }

    /// Returns once everything written up to `lsn` is durable.
    pub async fn sync(&self, lsn: u64) -> Result<(), JournalError> {
        if lsn > lock(&self.inner.shared.commit).written {
            let mut st = lock(&self.inner.state);
            self.inner.write_pending(&mut st)?;
        }
        match self.inner.shared.wait_for(lsn) {
            None => Ok(()),
            Some(rx) => rx
                .await
                .map_err(|_| JournalError::Closed)?
                .map_err(JournalError::Failed),
        }
    }

    /// Returns once everything written so far (removals included) is
    /// durable.
    pub async fn sync_all(&self) -> Result<(), JournalError> {
        let lsn = lock(&self.inner.state).lsn;
        self.sync(lsn).await
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Result<Option<Vec<u8>>, JournalError> {
        let (loc, file) = {
            let st = lock(&self.inner.state);
            let Some(loc) = st.index.get(&key).copied() else {
                return Ok(None);
            };
            let Some(seg) = st.segments.get(&loc.seg) else {
                return Ok(None);
            };
            (loc, seg.file.clone())
        };
        // Outside the lock: a segment deleted meanwhile stays readable
        // through its open file.
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.off + HEADER as u64)
            .map_err(|e| io_err(&self.inner.dir.join(segment_name(loc.seg)), e))?;
        Ok(Some(buf))
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<u64> {
        let mut k: Vec<u64> = lock(&self.inner.state).index.keys().copied().collect();
        k.sort_unstable();
        k
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        lock(&self.inner.state).index.len()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segment files on disk.
    pub fn segments(&self) -> usize {
        lock(&self.inner.state).segments.len()
    }

    /// Counters.
    pub fn stats(&self) -> &JournalStats {
        &self.inner.shared.stats
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    /// Writes the removals waiting, stops the background thread (a segment
    /// being filled is abandoned), then syncs and stops the committer.
    fn close(&self) {
        {
            let mut st = lock(&self.state);
            if let Err(e) = self.write_pending(&mut st) {
                tracing::error!(error = %e, "outbox journal: writing the last removals failed");
            }
        }
        {
            let mut t = lock(&self.chores.todo);
            t.stop = true;
            self.chores.wake.notify_all();
        }
        if let Some(h) = lock(&self.chore_thread).take() {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the outbox journal's segment thread panicked");
            }
        }
        lock(&self.shared.commit).stop = true;
        self.shared.wake.notify_all();
        if let Some(h) = lock(&self.committer).take() {
            if h.join().is_err() {
                tracing::error!("the outbox journal's commit thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;

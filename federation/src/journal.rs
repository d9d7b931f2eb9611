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

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;
use tokio::sync::oneshot;

const MAGIC: u32 = 0xCA11_0B0C;
const HEADER: usize = 4 + 4 + 8 + 1 + 8 + 4;
const KIND_PUT: u8 = 1;
const KIND_REMOVE: u8 = 2;
/// Written when a segment is closed: nothing follows in it.
const KIND_END: u8 = 3;
/// Removals wait in memory for the next write up to this many bytes.
const PENDING_MAX: usize = 64 << 10;
/// The background thread's zero-filling writes (and syncs) this much at a
/// time.
const GENTLE_CHUNK: u64 = 128 << 10;
/// Zero-filling writes this much at a time; the first segment has this size.
const ZERO_CHUNK: u64 = 1 << 20;
/// The largest value a record may carry.
pub const MAX_VALUE: usize = 256 << 20;
/// Default segment size: a segment is closed once a record would take it
/// past this (one larger record may still go alone into a segment).
pub const SEGMENT_SIZE: u64 = 8 << 20;

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

/// Work for the background thread: preparing the next segment, deleting
/// dead ones and copying a pinned one forward.
#[derive(Debug, Default)]
struct Chores {
    todo: Mutex<ChoreFlags>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct ChoreFlags {
    prepare: bool,
    reclaim: bool,
    stop: bool,
}

impl Chores {
    fn ask(&self, prepare: bool, reclaim: bool) {
        let mut t = lock(&self.todo);
        t.prepare |= prepare;
        t.reclaim |= reclaim;
        self.wake.notify_one();
    }
}

/// A segment made ready ahead of need: zero-filled and synced.
#[derive(Debug)]
struct Prepared {
    id: u64,
    file: Arc<File>,
    capacity: u64,
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

/// What the writers and the committer thread share.
#[derive(Debug)]
struct Shared {
    commit: Mutex<Commit>,
    wake: Condvar,
    stats: JournalStats,
}

#[derive(Debug, Default)]
struct Commit {
    written: u64,
    durable: u64,
    /// Segments written since the last sync.
    dirty: Vec<(u64, Arc<File>)>,
    waiters: Vec<(u64, oneshot::Sender<Result<(), String>>)>,
    failed: Option<String>,
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// What the bytes at a position in segment `seg` hold.
enum Read {
    /// A record of this segment.
    Record(Parsed),
    /// A clean end: zero fill, the segment's end mark, or a whole record
    /// of the segment this file was before it was recycled.
    End,
    /// Bytes that do not check: a torn write, or damage.
    Bad,
}

/// One record read back: its kind, key and payload range.
struct Parsed {
    kind: u8,
    key: u64,
    payload: std::ops::Range<usize>,
}

/// Reads what is at the start of `buf` in segment `seg`.
fn read_at(buf: &[u8], seg: u64) -> Read {
    let Some(h) = buf.get(..HEADER) else {
        return if buf.iter().all(|&b| b == 0) {
            Read::End
        } else {
            Read::Bad
        };
    };
    if h.iter().all(|&b| b == 0) {
        return Read::End;
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let kind = h[16];
    let key = u64_at(17);
    let len = u32_at(25) as usize;
    if u32_at(0) != MAGIC || !(KIND_PUT..=KIND_END).contains(&kind) || len > MAX_VALUE {
        return Read::Bad;
    }
    let Some(body) = buf.get(8..HEADER + len) else {
        return Read::Bad;
    };
    if crc32fast::hash(body) != u32_at(4) {
        return Read::Bad;
    }
    if u64_at(8) != seg || kind == KIND_END {
        return Read::End;
    }
    Read::Record(Parsed {
        kind,
        key,
        payload: HEADER..HEADER + len,
    })
}

/// The record at the start of `buf` in segment `seg`, if there is one.
fn parse(buf: &[u8], seg: u64) -> Option<Parsed> {
    match read_at(buf, seg) {
        Read::Record(p) => Some(p),
        Read::End | Read::Bad => None,
    }
}

fn encode(seg: u64, kind: u8, key: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + payload.len());
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&seg.to_le_bytes());
    b.push(kind);
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, replaying its segments.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        Self::open_with(dir, SEGMENT_SIZE)
    }

    /// [`Journal::open`] with another segment size (tests use small ones).
    pub fn open_with(dir: &Path, segment_size: u64) -> Result<Self, JournalError> {
        let segment_size = segment_size.max(HEADER as u64 * 2);
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked(dir.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(id) = u64::from_str_radix(stem, 16) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut index: HashMap<u64, Loc> = HashMap::new();
        let mut last_capacity = 0;
        for (i, &id) in ids.iter().enumerate() {
            let path = dir.join(segment_name(id));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            let data = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
            let mut pos = 0usize;
            let clean = loop {
                let p = match read_at(&data[pos..], id) {
                    Read::Record(p) => p,
                    Read::End => break true,
                    Read::Bad => break false,
                };
                let loc = Loc {
                    seg: id,
                    off: pos as u64,
                    len: p.payload.len() as u32,
                };
                if p.kind == KIND_PUT {
                    index.insert(p.key, loc);
                } else {
                    index.remove(&p.key);
                }
                pos += p.payload.end;
            };
            let last = i + 1 == ids.len();
            // Only prepared, still empty segments may follow the one a crash
            // interrupted.
            let tail = || {
                ids[i + 1..].iter().all(|&later| {
                    std::fs::read(dir.join(segment_name(later)))
                        .map(|d| parse(&d, later).is_none())
                        .unwrap_or(false)
                })
            };
            let mut capacity = data.len() as u64;
            if last && data[pos..].iter().any(|&b| b != 0) {
                // Appends go on from here: cut what follows, so that no
                // record of a crashed run that was never acknowledged can
                // line up behind a new one and be read back.
                if !clean {
                    tracing::warn!(segment = %path.display(), offset = pos, "journal: cutting a torn tail after a crash");
                }
                file.set_len(pos as u64).map_err(|e| io_err(&path, e))?;
                file.sync_all().map_err(|e| io_err(&path, e))?;
                capacity = pos as u64;
            } else if !clean && tail() {
                // Never written again: left as it is.
                tracing::warn!(segment = %path.display(), offset = pos, "journal: a torn tail after a crash");
            } else if !clean {
                tracing::error!(segment = %path.display(), offset = pos, "journal: unreadable record (damage, or a crash before the segment was closed); what follows in this segment is lost");
            }
            if last {
                last_capacity = capacity;
            }
            segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    size: pos as u64,
                    live: 0,
                    live_bytes: 0,
                    released_at: 0,
                },
            );
        }
        for loc in index.values() {
            if let Some(s) = segments.get_mut(&loc.seg) {
                s.live += 1;
                s.live_bytes += loc.bytes();
            }
        }
        let (active, off, allocated) = match segments.iter().next_back() {
            Some((&id, s)) => (id, s.size, last_capacity.max(s.size)),
            None => {
                let p = prepare_segment(dir, 1, ZERO_CHUNK.min(segment_size), None)?;
                segments.insert(
                    1,
                    Segment {
                        file: p.file,
                        size: 0,
                        live: 0,
                        live_bytes: 0,
                        released_at: 0,
                    },
                );
                (1, 0, p.capacity)
            }
        };
        let shared = Arc::new(Shared {
            commit: Mutex::new(Commit::default()),
            wake: Condvar::new(),
            stats: JournalStats::default(),
        });
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("outbox-commit".into())
                .spawn(move || committer(&shared))
                .map_err(|e| io_err(dir, e))?
        };
        let chores = Arc::new(Chores::default());
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            segment_size,
            state: Mutex::new(State {
                segments,
                active,
                off,
                allocated,
                lsn: 0,
                index,
                pending: Vec::new(),
                next: None,
                preparing: None,
            }),
            shared,
            committer: Mutex::new(Some(committer)),
            chores: chores.clone(),
            chore_thread: Mutex::new(None),
            _lock: lock_file,
        });
        let weak = Arc::downgrade(&inner);
        let thread = std::thread::Builder::new()
            .name("outbox-segments".into())
            .spawn(move || chore_loop(&weak, &chores))
            .map_err(|e| io_err(dir, e))?;
        *lock(&inner.chore_thread) = Some(thread);
        // Segments left dead by the last run go now; copying, if any, on
        // the background thread.
        inner.delete_dead();
        inner.chores.ask(false, true);
        Ok(Self {
            _closer: Arc::new(Closer(inner.clone())),
            inner,
        })
    }

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

/// How the background thread fills a segment, asked before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// 128 KiB at a time, each synced, with a pause between: a commit
    /// meanwhile never queues behind more than one small write.
    Gentle,
    /// The active segment is half full already: the rest at once.
    Hurry,
    /// The journal is closing: give up.
    Stop,
}

/// Creates segment `id` zero-filled to `capacity` and syncs it and the
/// directory. Without `pace`, at once (an 8 MiB segment takes a few tens of
/// milliseconds); with it, as it says.
fn prepare_segment(
    dir: &Path,
    id: u64,
    capacity: u64,
    pace: Option<&dyn Fn() -> Pace>,
) -> Result<Prepared, JournalError> {
    let path = dir.join(segment_name(id));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let zeros = vec![0u8; ZERO_CHUNK as usize];
    let mut at = 0;
    while at < capacity {
        let now = pace.map_or(Pace::Hurry, |p| p());
        if now == Pace::Stop {
            // An unfinished segment is not left behind.
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(JournalError::Closed);
        }
        let step = if now == Pace::Gentle {
            GENTLE_CHUNK
        } else {
            ZERO_CHUNK
        };
        let n = (capacity - at).min(step) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| io_err(&path, e))?;
        at += n as u64;
        if now == Pace::Gentle && at < capacity {
            file.sync_data().map_err(|e| io_err(&path, e))?;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    file.sync_all().map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok(Prepared {
        id,
        file: Arc::new(file),
        capacity,
    })
}

/// The background thread: prepares segments, deletes dead ones, copies a
/// pinned one forward. It holds the journal only while it works.
fn chore_loop(weak: &Weak<Inner>, chores: &Chores) {
    loop {
        let (prepare, reclaim) = {
            let mut t = lock(&chores.todo);
            while !(t.prepare || t.reclaim || t.stop) {
                t = chores.wake.wait(t).unwrap_or_else(PoisonError::into_inner);
            }
            if t.stop {
                return;
            }
            (
                std::mem::take(&mut t.prepare),
                std::mem::take(&mut t.reclaim),
            )
        };
        let Some(inner) = weak.upgrade() else { return };
        if prepare {
            inner.prepare_next();
        }
        if reclaim {
            inner.reclaim();
        }
    }
}

impl Inner {
    /// Appends one record and updates the index. A `Put` is written to the
    /// file at once (with any removals waiting); a `Remove` waits in memory
    /// for the next write, a sync, a roll or the close.
    fn append(
        &self,
        st: &mut State,
        kind: u8,
        key: u64,
        payload: &[u8],
    ) -> Result<u64, JournalError> {
        if let Some(f) = &lock(&self.shared.commit).failed {
            return Err(JournalError::Failed(f.clone()));
        }
        let len = (HEADER + payload.len()) as u64;
        // Room is kept for the end mark.
        if st.off > 0 && st.off + len + HEADER as u64 > st.allocated.max(self.first_capacity()) {
            self.roll(st)?;
        }
        let active = st.active;
        if st.off + len > st.allocated {
            // Only a record larger than its segment gets here (or the first
            // after a torn tail was cut): allocate in place.
            self.write_pending(st)?;
            let seg = st.segments.get(&active).ok_or(JournalError::Closed)?;
            let end = (st.off + len).div_ceil(ZERO_CHUNK) * ZERO_CHUNK;
            let zeros = vec![0u8; (end - st.allocated) as usize];
            seg.file
                .write_all_at(&zeros, st.allocated)
                .map_err(|e| io_err(&self.dir.join(segment_name(active)), e))?;
            st.allocated = end;
        }
        let mark = st.pending.len();
        st.pending
            .extend_from_slice(&encode(active, kind, key, payload));
        let off = st.off;
        st.off += len;
        st.lsn += len;
        if kind == KIND_PUT || st.pending.len() >= PENDING_MAX {
            if let Err(e) = self.write_pending(st) {
                // Nothing of this record happened.
                st.pending.truncate(mark);
                st.off -= len;
                st.lsn -= len;
                return Err(e);
            }
        }
        let lsn = st.lsn;
        let old = if kind == KIND_PUT {
            st.index.insert(
                key,
                Loc {
                    seg: active,
                    off,
                    len: payload.len() as u32,
                },
            )
        } else {
            st.index.remove(&key)
        };
        if let Some(old) = old {
            if let Some(s) = st.segments.get_mut(&old.seg) {
                s.live = s.live.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(old.bytes());
                s.released_at = lsn;
            }
        }
        if let Some(s) = st.segments.get_mut(&active) {
            s.size = st.off;
            if kind == KIND_PUT {
                s.live += 1;
                s.live_bytes += len;
            }
        }
        // A quarter full: have the next one ready in time.
        if st.off * 4 > st.allocated && st.next.is_none() && st.preparing.is_none() {
            st.preparing = Some(st.active + 1);
            self.chores.ask(true, false);
        }
        self.shared.stats.records.fetch_add(1, Ordering::Relaxed);
        Ok(lsn)
    }

    /// Writes the records waiting in memory to the active segment's file.
    fn write_pending(&self, st: &mut State) -> Result<(), JournalError> {
        if st.pending.is_empty() {
            return Ok(());
        }
        let active = st.active;
        let file = st
            .segments
            .get(&active)
            .ok_or(JournalError::Closed)?
            .file
            .clone();
        let at = st.off - st.pending.len() as u64;
        file.write_all_at(&st.pending, at)
            .map_err(|e| io_err(&self.dir.join(segment_name(active)), e))?;
        st.pending.clear();
        let mut c = lock(&self.shared.commit);
        c.written = c.written.max(st.lsn);
        if !c.dirty.iter().any(|(id, _)| *id == active) {
            c.dirty.push((active, file));
        }
        Ok(())
    }

    /// Capacity of the first segment.
    fn first_capacity(&self) -> u64 {
        ZERO_CHUNK.min(self.segment_size)
    }

    /// Capacity of the segment after one of `capacity`: twice as large (so
    /// that a gentle fill keeps ahead of a quarter-full segment filling at
    /// up to about 35 MB/s), up to the segment size.
    fn grow(&self, capacity: u64) -> u64 {
        capacity
            .saturating_mul(2)
            .min(self.segment_size)
            .max(self.first_capacity())
    }

    /// Closes the active segment and starts the next: the prepared one, or
    /// (if traffic outran the background thread) one made here.
    fn roll(&self, st: &mut State) -> Result<(), JournalError> {
        // The end mark: what follows in the file (zeros, or what it held
        // before it was recycled) is not read. Synced with the segment's
        // last records; if a crash loses it, opening says so and loses
        // nothing acknowledged.
        // It goes out with the removals waiting, through the one write path.
        let mark = st.pending.len();
        st.pending
            .extend_from_slice(&encode(st.active, KIND_END, 0, &[]));
        st.off += HEADER as u64;
        if let Err(e) = self.write_pending(st) {
            st.pending.truncate(mark);
            st.off -= HEADER as u64;
            return Err(e);
        }
        let next = match st.next.take() {
            Some(p) if p.id == st.active + 1 => p,
            _ => {
                // Past the id being prepared, which is then thrown away.
                self.shared
                    .stats
                    .unprepared_rolls
                    .fetch_add(1, Ordering::Relaxed);
                let id = st.active.max(st.preparing.unwrap_or(0)) + 1;
                prepare_segment(&self.dir, id, self.grow(st.allocated), None)?
            }
        };
        st.segments.insert(
            next.id,
            Segment {
                file: next.file,
                size: 0,
                live: 0,
                live_bytes: 0,
                released_at: 0,
            },
        );
        st.active = next.id;
        st.off = 0;
        st.allocated = next.capacity;
        self.chores.ask(false, true);
        Ok(())
    }

    /// Prepares the next segment (on the background thread).
    fn prepare_next(&self) {
        let (id, capacity) = {
            let mut st = lock(&self.state);
            let id = st.active + 1;
            if st.next.is_some() {
                return;
            }
            st.preparing = Some(id);
            (id, self.grow(st.allocated))
        };
        let pace = || {
            if lock(&self.chores.todo).stop {
                return Pace::Stop;
            }
            let st = lock(&self.state);
            if st.active >= id {
                // The appenders could not wait and went past it.
                Pace::Stop
            } else if st.off * 2 > st.allocated {
                Pace::Hurry
            } else {
                Pace::Gentle
            }
        };
        let r = prepare_segment(&self.dir, id, capacity, Some(&pace));
        let mut st = lock(&self.state);
        st.preparing = None;
        match r {
            Ok(p) if st.active < id => {
                st.next = Some(p);
                self.shared.stats.prepared.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                // The appenders could not wait and went past it.
                let path = self.dir.join(segment_name(id));
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!(segment = %path.display(), error = %e, "journal: could not delete an unused segment");
                }
            }
            Err(JournalError::Closed) => {}
            Err(e) => tracing::error!(error = %e, "journal: could not prepare the next segment"),
        }
    }

    /// Deletes what is dead, then copies the oldest segment forward if that
    /// pays (on the background thread, and once at open).
    fn reclaim(&self) {
        self.delete_dead();
        if let Some(seg) = self.worth_copying() {
            self.relocate(seg);
        }
    }

    /// Deletes the oldest segments while they hold no live entry and what
    /// superseded their entries is durable. One of them, if it is large
    /// enough and no next segment is ready, is recycled instead: renamed to
    /// be the next segment, its blocks already allocated (what it held
    /// belongs to another segment id and is never read as this one's).
    fn delete_dead(&self) {
        let durable = lock(&self.shared.commit).durable;
        let mut gone = Vec::new();
        let mut recycle = None;
        {
            let mut st = lock(&self.state);
            while let Some((&id, s)) = st.segments.iter().next() {
                if id == st.active || s.live > 0 || s.released_at > durable {
                    break;
                }
                if let Some(s) = st.segments.remove(&id) {
                    gone.push((id, s.file));
                }
            }
            if st.next.is_none() && st.preparing.is_none() {
                let want = self.grow(st.allocated);
                let fits = |f: &File| f.metadata().is_ok_and(|m| m.len() >= want);
                if let Some(i) = gone.iter().position(|(_, f)| fits(f)) {
                    let (old, file) = gone.remove(i);
                    let new = st.active + 1;
                    st.preparing = Some(new);
                    recycle = Some((old, file, new));
                }
            }
        }
        if gone.is_empty() && recycle.is_none() {
            return;
        }
        for (id, _) in gone {
            let path = self.dir.join(segment_name(id));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(segment = %path.display(), error = %e, "journal: could not delete a dead segment");
            }
            self.shared
                .stats
                .segments_deleted
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some((old, file, new)) = recycle {
            let from = self.dir.join(segment_name(old));
            let to = self.dir.join(segment_name(new));
            let renamed = std::fs::rename(&from, &to)
                .map_err(|e| io_err(&from, e))
                .and_then(|()| sync_dir(&self.dir))
                .and_then(|()| file.metadata().map_err(|e| io_err(&to, e)));
            let mut st = lock(&self.state);
            st.preparing = None;
            match renamed {
                Ok(m) if st.active < new => {
                    st.next = Some(Prepared {
                        id: new,
                        file,
                        capacity: m.len(),
                    });
                    self.shared.stats.recycled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    // The appenders went past it meanwhile.
                    if let Err(e) = std::fs::remove_file(&to) {
                        tracing::error!(segment = %to.display(), error = %e, "journal: could not delete an unused segment");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal: could not recycle a dead segment");
                    let _ = std::fs::remove_file(&from);
                }
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::error!(error = %e, "journal: could not sync its directory");
        }
    }

    /// The oldest segment, if it still holds live entries (mail for a peer
    /// that is down) while the other closed segments hold at least as many
    /// dead bytes: copying it never writes more than it lets go.
    fn worth_copying(&self) -> Option<u64> {
        let st = lock(&self.state);
        let (&oldest, s) = st.segments.iter().next()?;
        // The segment closed last still holds the entries being sent: they
        // go by themselves. Only a segment a whole segment older is copied.
        if st.segments.len() < 3 || s.live == 0 {
            return None;
        }
        let dead: u64 = st
            .segments
            .iter()
            .filter(|(&id, _)| id != st.active)
            .map(|(_, s)| s.size.saturating_sub(s.live_bytes))
            .sum();
        (dead >= s.live_bytes).then_some(oldest)
    }

    /// Copies segment `seg`'s live entries to the active segment, waits for
    /// the copies to be durable and deletes what is dead.
    fn relocate(&self, seg: u64) {
        let keys: Vec<u64> = lock(&self.state)
            .index
            .iter()
            .filter(|(_, l)| l.seg == seg)
            .map(|(k, _)| *k)
            .collect();
        let mut last = 0;
        let mut moved = 0u64;
        for key in keys {
            let mut st = lock(&self.state);
            let Some(loc) = st.index.get(&key).copied() else {
                continue;
            };
            if loc.seg != seg {
                continue;
            }
            let Some(file) = st.segments.get(&seg).map(|s| s.file.clone()) else {
                break;
            };
            let mut buf = vec![0u8; loc.len as usize];
            let r = file
                .read_exact_at(&mut buf, loc.off + HEADER as u64)
                .map_err(|e| io_err(&self.dir.join(segment_name(seg)), e))
                .and_then(|()| self.append(&mut st, KIND_PUT, key, &buf));
            match r {
                Ok(lsn) => {
                    last = lsn;
                    moved += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal: compaction stopped");
                    break;
                }
            }
        }
        if last > 0 {
            if let Some(rx) = self.shared.wait_for(last) {
                if let Ok(Err(e)) | Err(e) = rx.blocking_recv().map_err(|e| e.to_string()) {
                    tracing::error!(error = %e, "journal: compaction's sync failed");
                }
            }
        }
        self.shared
            .stats
            .relocated
            .fetch_add(moved, Ordering::Relaxed);
        self.delete_dead();
        tracing::debug!(segment = seg, moved, "journal: compacted");
    }
}

impl Shared {
    /// None if `lsn` is durable already; else a receiver for the commit
    /// that covers it.
    fn wait_for(&self, lsn: u64) -> Option<oneshot::Receiver<Result<(), String>>> {
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

/// The committer thread: one `fdatasync` round for every waiter that
/// arrived before it began.
fn committer(shared: &Shared) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_record_round_trips_and_damage_is_caught() {
        let r = encode(7, KIND_PUT, 42, b"hello");
        let p = parse(&r, 7).expect("parses");
        assert_eq!(
            (p.kind, p.key, &r[p.payload]),
            (KIND_PUT, 42, &b"hello"[..])
        );
        assert!(parse(&r, 8).is_none(), "another segment's record");
        for i in 0..r.len() {
            let mut bad = r.clone();
            bad[i] ^= 0x40;
            assert!(parse(&bad, 7).is_none(), "flipped byte {i} not caught");
        }
        assert!(parse(&r[..r.len() - 1], 7).is_none(), "torn record");
        assert!(parse(&[0u8; 64], 7).is_none(), "zero fill");
    }

    #[test]
    fn entries_survive_a_reopen_and_removals_stick() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = Journal::open(dir.path()).expect("open");
            let mut last = 0;
            for k in 0..100u64 {
                last = j.put(k, format!("value {k}").as_bytes()).expect("put");
            }
            j.put(5, b"five again").expect("put");
            j.remove(7).expect("remove");
            j.sync(last).await.expect("sync");
            let l = j.remove(8).expect("remove");
            j.sync(l).await.expect("sync");
        });
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.len(), 98);
        assert_eq!(j.get(5).expect("get").as_deref(), Some(&b"five again"[..]));
        assert_eq!(j.get(7).expect("get"), None);
        assert_eq!(j.get(99).expect("get").as_deref(), Some(&b"value 99"[..]));
        assert_eq!(j.keys().first(), Some(&0));
    }

    #[test]
    fn a_torn_tail_is_cut_and_never_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = Journal::open(dir.path()).expect("open");
            let l = j.put(1, b"kept").expect("put");
            j.sync(l).await.expect("sync");
        });
        let seg = dir.path().join(segment_name(1));
        let len = std::fs::metadata(&seg).expect("meta").len();
        // A record torn by a crash, after the one that was synced.
        let torn = encode(1, KIND_PUT, 2, &[7u8; 300]);
        let f = OpenOptions::new().write(true).open(&seg).expect("open");
        let kept_end = (HEADER + 4) as u64;
        f.write_all_at(&torn[..100], kept_end).expect("write");
        drop(f);
        assert!(len >= kept_end);
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.keys(), vec![1]);
        assert_eq!(
            std::fs::metadata(&seg).expect("meta").len(),
            kept_end,
            "the torn tail is cut"
        );
        rt().block_on(async {
            let l = j.put(3, b"after").expect("put");
            j.sync(l).await.expect("sync");
        });
        drop(j);
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.keys(), vec![1, 3]);
    }

    #[test]
    fn a_torn_tail_before_a_prepared_segment_is_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        rt().block_on(async {
            let j = Journal::open(dir.path()).expect("open");
            let l = j.put(1, b"kept").expect("put");
            j.sync(l).await.expect("sync");
        });
        // The crash tore a record in segment 1 while segment 2 was prepared.
        let torn = encode(1, KIND_PUT, 2, &[7u8; 300]);
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(segment_name(1)))
            .expect("open");
        f.write_all_at(&torn[..100], (HEADER + 4) as u64)
            .expect("write");
        drop(f);
        prepare_segment(dir.path(), 2, 4096, None).expect("prepare");
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.keys(), vec![1]);
        rt().block_on(async {
            let l = j.put(3, b"after").expect("put");
            j.sync(l).await.expect("sync");
        });
        drop(j);
        let seg2 = std::fs::read(dir.path().join(segment_name(2))).expect("read");
        assert!(parse(&seg2, 2).is_some(), "appends went on in segment 2");
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.keys(), vec![1, 3]);
        assert_eq!(j.get(3).expect("get").as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn dead_segments_go_and_a_pinned_entry_is_copied_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let value = vec![9u8; 1000];
        rt().block_on(async {
            let j = Journal::open_with(dir.path(), 8 * 1024).expect("open");
            // Key 0 stays (mail for a peer that is down); the rest come and go.
            let l = j.put(0, b"pinned").expect("put");
            j.sync(l).await.expect("sync");
            for k in 1..400u64 {
                let l = j.put(k, &value).expect("put");
                j.sync(l).await.expect("sync");
                j.remove(k).expect("remove");
            }
            let l = j.put(400, b"last").expect("put");
            j.sync(l).await.expect("sync");
            // Compaction runs on its own thread: wait for it.
            for _ in 0..200 {
                if j.stats().relocated.load(Ordering::Relaxed) > 0 && j.segments() <= 3 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(
                j.stats().relocated.load(Ordering::Relaxed) >= 1,
                "key 0 was copied forward"
            );
            assert!(j.segments() <= 3, "{} segments left", j.segments());
            let deleted = j.stats().segments_deleted.load(Ordering::Relaxed);
            let recycled = j.stats().recycled.load(Ordering::Relaxed);
            assert!(
                deleted + recycled >= 40,
                "{deleted} deleted, {recycled} recycled"
            );
            assert!(recycled >= 1, "dead segments are reused");
        });
        let j = Journal::open_with(dir.path(), 8 * 1024).expect("reopen");
        assert_eq!(j.keys(), vec![0, 400]);
        assert_eq!(j.get(0).expect("get").as_deref(), Some(&b"pinned"[..]));
    }

    #[test]
    fn damaged_segments_open_without_panic_and_keep_what_precedes_the_damage() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut file = Vec::new();
            let mut starts = Vec::new();
            for k in 0..20u64 {
                starts.push(file.len());
                let len = (rand() % 300) as usize;
                file.extend_from_slice(&encode(1, KIND_PUT, k, &vec![k as u8; len]));
            }
            // Damage from some point on: flipped bytes, a cut, or garbage.
            let at = (rand() as usize) % file.len();
            match round % 3 {
                0 => {
                    for _ in 0..1 + rand() % 8 {
                        let i = at + (rand() as usize) % (file.len() - at);
                        file[i] ^= 1 << (rand() % 8);
                    }
                }
                1 => file.truncate(at),
                _ => {
                    file.truncate(at);
                    for _ in 0..rand() % 500 {
                        file.push(rand() as u8);
                    }
                }
            }
            std::fs::write(dir.path().join(segment_name(1)), &file).expect("write");
            let j = Journal::open(dir.path()).expect("a damaged segment still opens");
            let intact = starts
                .iter()
                .zip(starts.iter().skip(1).chain([&usize::MAX]))
                .take_while(|(_, &end)| end <= at)
                .count() as u64;
            let keys = j.keys();
            assert!(
                keys.len() as u64 >= intact && keys.iter().all(|&k| k < 20),
                "round {round}: {keys:?}, {intact} intact"
            );
            for k in keys {
                let v = j.get(k).expect("get").expect("present");
                assert!(
                    v.iter().all(|&b| b == k as u8),
                    "round {round}: key {k} altered"
                );
            }
            for k in 0..intact {
                assert!(
                    j.get(k).expect("get").is_some(),
                    "round {round}: key {k} lost"
                );
            }
            // And the journal goes on.
            rt().block_on(async {
                let l = j.put(100, b"after").expect("put");
                j.sync(l).await.expect("sync");
            });
        }
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _j = Journal::open(dir.path()).expect("open");
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::Locked(_))
        ));
    }

    #[test]
    fn concurrent_writers_all_become_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let j = j.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..50u64 {
                        let l = j.put(t * 1000 + i, &[1u8; 2048]).expect("put");
                        j.sync(l).await.expect("sync");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        assert_eq!(j.len(), 800);
        // Dropping the last handle closes at once, even while the next
        // segment is being filled: the directory opens again right away.
        drop(j);
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.len(), 800);
        assert_eq!(j.get(15_049).expect("get"), Some(vec![1u8; 2048]));
    }
}

//! Opening a journal: its directory is locked (an advisory `flock(2)`
//! lock on `LOCK`, through `File::try_lock`) against a second process, its
//! segments are replayed in order (the last record of a key wins), a torn
//! tail of the last segment (a crash) is cut so that no stale bytes can
//! ever follow a new record, damage in an earlier segment is reported, and
//! the committer and background threads start.

use super::chores::{chore_loop, Chores};
use super::commit::{committer, Commit, Shared};
use super::record::{parse, read_at, Read, HEADER, KIND_PUT};
use super::segment::{prepare_segment, segment_name};
use super::{
    io_err, lock, Closer, Inner, Journal, JournalError, JournalStats, Loc, Segment, State,
    SEGMENT_SIZE, ZERO_CHUNK,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

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
}

//! Segment files: their names (`{id:016x}.seg`), making one ready ahead
//! of need (zero-filled to its capacity and synced with its directory, so
//! that a later `fdatasync(2)` commits no file metadata), their sizes (1 MiB
//! first, twice as large each time up to the segment size), and rolling
//! from the active segment to the next (an end mark closes it).

use super::record::{encode, HEADER, KIND_END};
use super::{io_err, lock, Inner, JournalError, Segment, State, GENTLE_CHUNK, ZERO_CHUNK};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A segment made ready ahead of need: zero-filled and synced.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) id: u64,
    pub(super) file: Arc<File>,
    pub(super) capacity: u64,
}

pub(super) fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// How the background thread fills a segment, asked before each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
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
pub(super) fn prepare_segment(
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

impl Inner {
    /// Capacity of the first segment.
    pub(super) fn first_capacity(&self) -> u64 {
        ZERO_CHUNK.min(self.segment_size)
    }

    /// Capacity of the segment after one of `capacity`: twice as large (so
    /// that a gentle fill keeps ahead of a quarter-full segment filling at
    /// up to about 35 MB/s), up to the segment size.
    pub(super) fn grow(&self, capacity: u64) -> u64 {
        capacity
            .saturating_mul(2)
            .min(self.segment_size)
            .max(self.first_capacity())
    }

    /// Closes the active segment and starts the next: the prepared one, or
    /// (if traffic outran the background thread) one made here.
    pub(super) fn roll(&self, st: &mut State) -> Result<(), JournalError> {
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
    pub(super) fn prepare_next(&self) {
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
}

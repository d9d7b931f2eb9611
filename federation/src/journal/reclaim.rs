//! Reclaiming space: dead segments (every entry removed or rewritten, and
//! what superseded them durable) are deleted oldest first, or one is
//! recycled as the next segment; when the oldest segment pins live entries
//! while the others hold at least as many dead bytes, its entries are
//! copied forward and it goes too.

use super::record::{HEADER, KIND_PUT};
use super::segment::{segment_name, sync_dir, Prepared};
use super::{io_err, lock, Inner};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

impl Inner {
    /// Deletes what is dead, then copies the oldest segment forward if that
    /// pays (on the background thread, and once at open).
    pub(super) fn reclaim(&self) {
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
    pub(super) fn delete_dead(&self) {
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
    pub(super) fn worth_copying(&self) -> Option<u64> {
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
    pub(super) fn relocate(&self, seg: u64) {
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

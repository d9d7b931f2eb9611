//! Writing records: [`Inner::append`] encodes a record into the active
//! segment (rolling to the next one when it would not fit, keeping room
//! for the end mark) and updates the index and the segments' live counts;
//! a `Put` is written to the file at once, removals wait in memory for the
//! next write ([`Inner::write_pending`]).

use super::record::{encode, HEADER, KIND_PUT};
use super::segment::segment_name;
use super::{io_err, lock, Inner, JournalError, Loc, State, PENDING_MAX, ZERO_CHUNK};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

impl Inner {
    /// Appends one record and updates the index. A `Put` is written to the
    /// file at once (with any removals waiting); a `Remove` waits in memory
    /// for the next write, a sync, a roll or the close.
    pub(super) fn append(
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
    pub(super) fn write_pending(&self, st: &mut State) -> Result<(), JournalError> {
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
}

//! The background thread (`outbox-segments`): it prepares the next
//! segment, deletes dead ones and copies a pinned one forward, when the
//! writers ask. It holds the journal only while it works.

use super::{lock, Inner};
use std::sync::{Condvar, Mutex, PoisonError, Weak};

/// Work for the background thread: preparing the next segment, deleting
/// dead ones and copying a pinned one forward.
#[derive(Debug, Default)]
pub(super) struct Chores {
    pub(super) todo: Mutex<ChoreFlags>,
    pub(super) wake: Condvar,
}

#[derive(Debug, Default)]
pub(super) struct ChoreFlags {
    pub(super) prepare: bool,
    pub(super) reclaim: bool,
    pub(super) stop: bool,
}

impl Chores {
    pub(super) fn ask(&self, prepare: bool, reclaim: bool) {
        let mut t = lock(&self.todo);
        t.prepare |= prepare;
        t.reclaim |= reclaim;
        self.wake.notify_one();
    }
}

/// The background thread: prepares segments, deletes dead ones, copies a
/// pinned one forward. It holds the journal only while it works.
pub(super) fn chore_loop(weak: &Weak<Inner>, chores: &Chores) {
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

//! Rendered ENVELOPEs of recently fetched messages, shared by every IMAP
//! session of the instance — Dovecot keeps such fields in its
//! `dovecot.index.cache`; here they live in memory, bounded in bytes.
//! A message's bytes never change (a blob id is never reused), so an entry
//! never goes stale; it only leaves when newer ones need the room.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Bytes of rendered envelopes kept at most: a sixteenth of the store's
/// cache budget, at least 1 MiB.
pub(crate) fn budget(cache_bytes: u64) -> usize {
    usize::try_from(cache_bytes / 16)
        .unwrap_or(usize::MAX)
        .max(1 << 20)
}

/// The cache (see the module).
#[derive(Debug)]
pub struct Envelopes {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl Envelopes {
    /// An empty cache of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The envelope of blob `blob`, when kept.
    pub fn get(&self, blob: u64) -> Option<Arc<[u8]>> {
        self.lock().map.get(&blob).cloned()
    }

    /// Keeps the envelope of blob `blob` (the oldest go past the budget).
    pub fn put(&self, blob: u64, env: &[u8]) {
        // Per entry: the bytes, the key and the map's and queue's slots.
        let cost = |len: usize| len + 48;
        if cost(env.len()) > self.max_bytes {
            return;
        }
        let mut g = self.lock();
        if g.map.contains_key(&blob) {
            return;
        }
        g.map.insert(blob, Arc::from(env));
        g.order.push_back(blob);
        g.bytes += cost(env.len());
        while g.bytes > self.max_bytes {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(e) = g.map.remove(&old) {
                g.bytes -= cost(e.len());
            }
        }
    }
}

/// Mailboxes' UID lists kept at most (entries of all lists together).
const MAX_LISTED: usize = 1 << 21;

/// The UID → message id lists of recently selected mailboxes, shared by
/// every IMAP session: a client that selects a mailbox again (clients do,
/// at every folder switch or sync) gets the list read before when nothing
/// changed in the account since. An entry is keyed by the account's
/// modification sequence — bumped by every delivery, expunge and move —
/// and the mailbox's UIDVALIDITY and UIDNEXT, so a list read at another
/// state is never served; it only leaves when newer ones need the room.
#[derive(Debug, Default)]
pub struct UidLists {
    inner: Mutex<ListsInner>,
}

/// (account, mailbox) → the key the list was read at, and the list.
type ListMap = HashMap<(String, u32), (ListKey, Arc<Vec<(u32, u64)>>)>;

/// What a list is valid for: account modseq, UIDVALIDITY, UIDNEXT.
pub(crate) type ListKey = (u64, u32, u32);

#[derive(Debug, Default)]
struct ListsInner {
    map: ListMap,
    entries: usize,
}

impl UidLists {
    fn lock(&self) -> std::sync::MutexGuard<'_, ListsInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The list of `mailbox` of `owner` read at `key`, when kept.
    pub fn get(&self, owner: &str, mailbox: u32, key: ListKey) -> Option<Arc<Vec<(u32, u64)>>> {
        let g = self.lock();
        let (k, list) = g.map.get(&(owner.to_owned(), mailbox))?;
        (*k == key).then(|| list.clone())
    }

    /// Keeps `list`, read at `key` (the account's state read *before* the
    /// list, so that the list is at least as new as its key says).
    pub fn put(&self, owner: &str, mailbox: u32, key: ListKey, list: Arc<Vec<(u32, u64)>>) {
        if list.len() > MAX_LISTED {
            return;
        }
        let mut g = self.lock();
        if g.entries + list.len() > MAX_LISTED {
            g.map.clear();
            g.entries = 0;
        }
        let n = list.len();
        if let Some((_, old)) = g.map.insert((owner.to_owned(), mailbox), (key, list)) {
            g.entries -= old.len();
        }
        g.entries += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_and_the_oldest_go_past_the_budget() {
        let c = Envelopes::new(1000);
        c.put(1, &[b'a'; 100]);
        c.put(2, &[b'b'; 100]);
        assert_eq!(c.get(1).as_deref(), Some(&[b'a'; 100][..]));
        for i in 3..20 {
            c.put(i, &[b'c'; 100]);
        }
        assert!(c.get(1).is_none(), "the oldest went");
        assert!(c.get(19).is_some(), "the newest stays");
        let kept = (1..20).filter(|i| c.get(*i).is_some()).count();
        assert!(kept * 148 <= 1000, "{kept}");
        // Larger than the whole budget: not kept.
        c.put(99, &[b'x'; 2000]);
        assert!(c.get(99).is_none());
    }

    #[test]
    fn a_uid_list_is_served_only_at_the_state_it_was_read_at() {
        let c = UidLists::default();
        let l = Arc::new(vec![(1, 10), (2, 11)]);
        c.put("alice", 1, (5, 7, 3), l.clone());
        assert_eq!(c.get("alice", 1, (5, 7, 3)).as_deref(), Some(&*l));
        // Another account state, UIDVALIDITY or UIDNEXT, another mailbox or
        // account: not served.
        for (o, m, k) in [
            ("alice", 1, (6, 7, 3)),
            ("alice", 1, (5, 8, 3)),
            ("alice", 1, (5, 7, 4)),
            ("alice", 2, (5, 7, 3)),
            ("bob", 1, (5, 7, 3)),
        ] {
            assert!(c.get(o, m, k).is_none(), "{o} {m} {k:?}");
        }
        // A newer read replaces it.
        c.put(
            "alice",
            1,
            (6, 7, 4),
            Arc::new(vec![(1, 10), (2, 11), (3, 12)]),
        );
        assert!(c.get("alice", 1, (5, 7, 3)).is_none());
        assert_eq!(c.get("alice", 1, (6, 7, 4)).map(|l| l.len()), Some(3));
        // Bounded: past the total, older lists go.
        let big = Arc::new(vec![(1u32, 1u64); MAX_LISTED / 2 + 1]);
        c.put("carol", 1, (1, 1, 1), big.clone());
        c.put("dave", 1, (1, 1, 1), big);
        assert!(c.get("carol", 1, (1, 1, 1)).is_none());
        assert!(c.get("dave", 1, (1, 1, 1)).is_some());
    }
}

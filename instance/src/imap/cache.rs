//! Rendered ENVELOPEs of recently fetched messages, shared by every IMAP
//! session of the instance — Dovecot keeps such fields in its
//! `dovecot.index.cache`; here they live in memory, bounded in bytes.
//! A message's bytes never change (a blob id is never reused), so an entry
//! never goes stale; it only leaves when newer ones need the room.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Bytes of rendered envelopes kept at most: a sixteenth of the store's
/// cache budget, at least 1 MiB.
pub fn budget(cache_bytes: u64) -> usize {
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
}

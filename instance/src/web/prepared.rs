//! Large HTML bodies sanitised ahead of their first view.
//!
//! Sanitising a 1 MB newsletter (MIME parse, html5ever, the allow list)
//! takes about 100 ms; a person opening it should not wait for that. So
//! when a delivery is durable, the store tells the web client
//! ([`crate::store::DeliveredHook`]); a message of at least
//! [`PREPARE_MIN`] bytes (and at most [`PREPARE_MAX`]) is handed to one
//! `web-prepare` thread, which sanitises its HTML body as the message
//! page shows it by default (remote content blocked) and keeps the result
//! in [`DiskCache`]. A view then reads the result instead of sanitising.
//!
//! The cache is derived data: files under `DATA/db/web-cache/` named by
//! the SHA-256 of the message bytes (so one message to many recipients is
//! prepared once, and a name can only ever hold the result for those
//! bytes) and the remote flag, zstd-compressed, written whole (temporary
//! file + rename, no fsync: a lost file is made again on demand), at most
//! [`DISK_BUDGET`] bytes in all (the oldest files go first). A file that
//! does not decode is removed and the body sanitised again. The hand-off
//! never waits: when the thread is behind by [`QUEUE_BYTES`], a delivery is
//! not prepared and its first view sanitises as before.

use super::sanitize::Clean;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Smaller messages are sanitised on view (a few milliseconds at most).
pub const PREPARE_MIN: usize = 64 << 10;
/// Larger messages are not prepared (their HTML is cut at the sanitiser's
/// limit anyway, and the queue stays small).
pub const PREPARE_MAX: usize = 8 << 20;
/// Bytes waiting for the thread at most.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Disk the cache may take.
pub const DISK_BUDGET: u64 = 512 << 20;
/// How often results of deleted mail are looked for.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether the store still holds message bytes of this SHA-256.
pub type Live = Box<dyn Fn(&[u8; 32]) -> bool + Send>;

const MAGIC: &[u8; 4] = b"CLN1";

/// The cache key of a message's bytes: their SHA-256, the body store's
/// content address (so the sweep can ask the store whether it holds them).
pub use crate::store::bodies::hash_of as key_of;

/// The file of a result: the key in hex, `-1` with remote content, else `-0`.
pub fn file_name(key: &[u8; 32], remote: bool) -> String {
    format!("{}-{}", hex::encode(key), u8::from(remote))
}

/// Sanitised bodies on disk.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    budget: u64,
    used: AtomicU64,
    evicting: Mutex<()>,
}

impl DiskCache {
    /// Opens (makes, 0700) the directory of this sanitiser's version
    /// under `root` — results of other versions are removed: a fix to the
    /// sanitiser reaches mail prepared before it — and counts what it holds.
    pub fn open(root: &Path, budget: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let name = format!("v{}", super::sanitize::VERSION);
        let dir = root.join(&name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        for e in std::fs::read_dir(root)?.flatten() {
            if e.file_name() != name.as_str() {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(err) = r {
                    tracing::warn!(error = %err, file = %p.display(), "web cache: cannot remove an old version");
                }
            }
        }
        let dir = dir.as_path();
        let mut used = 0;
        for e in std::fs::read_dir(dir)?.flatten() {
            if let Ok(m) = e.metadata() {
                used += m.len();
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            budget,
            used: AtomicU64::new(used),
            evicting: Mutex::new(()),
        })
    }

    fn path(&self, key: &[u8; 32], remote: bool) -> PathBuf {
        self.dir.join(format!(
            "{}-{}",
            hex::encode(key),
            if remote { 1 } else { 0 }
        ))
    }

    /// The sanitised body kept for these bytes, if any.
    pub fn get(&self, key: &[u8; 32], remote: bool) -> Option<Clean> {
        let p = self.path(key, remote);
        let data = std::fs::read(&p).ok()?;
        match decode(&data) {
            Some(c) => Some(c),
            None => {
                tracing::warn!(file = %p.display(), "web cache: a damaged file removed");
                if std::fs::remove_file(&p).is_ok() {
                    self.used
                        .fetch_sub((data.len() as u64).min(self.used.load(Relaxed)), Relaxed);
                }
                None
            }
        }
    }

    /// True when a result is kept for these bytes.
    pub fn has(&self, key: &[u8; 32], remote: bool) -> bool {
        self.path(key, remote).exists()
    }

    /// Keeps `c` for these bytes (errors are logged: it is a cache).
    pub fn put(&self, key: &[u8; 32], remote: bool, c: &Clean) {
        let p = self.path(key, remote);
        let data = encode(c);
        // Unique per writer: a view and the thread may write one name at
        // once (the same bytes either way).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = p.with_extension(
            format!("{:?}-{nanos}.tmp", std::thread::current().id()).replace(['(', ')'], ""),
        );
        let r = std::fs::write(&tmp, &data).and_then(|_| std::fs::rename(&tmp, &p));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, dir = %self.dir.display(), "web cache: cannot write");
            return;
        }
        if self.used.fetch_add(data.len() as u64, Relaxed) + data.len() as u64 > self.budget {
            self.evict();
        }
    }

    /// Removes every result whose message bytes the store no longer holds
    /// (`live` says which it holds): mail deleted for ever leaves no
    /// sanitised copy behind. Returns the files removed.
    pub fn sweep(&self, live: &dyn Fn(&[u8; 32]) -> bool) -> usize {
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Results only (`<64 hex>-0|1`): never a file being written.
            let Some(hex_key) = name
                .strip_suffix("-0")
                .or_else(|| name.strip_suffix("-1"))
                .filter(|h| h.len() == 64)
            else {
                continue;
            };
            let mut key = [0u8; 32];
            if hex::decode_to_slice(hex_key, &mut key).is_err() || live(&key) {
                continue;
            }
            let len = e.metadata().map_or(0, |m| m.len());
            if std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
                let _ = self
                    .used
                    .fetch_update(Relaxed, Relaxed, |u| Some(u.saturating_sub(len)));
            }
        }
        removed
    }

    /// Removes the oldest files until a quarter of the budget is free.
    fn evict(&self) {
        let Ok(_guard) = self.evicting.try_lock() else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let modified = m.modified().ok()?;
                // A file being written is not evicted (a stale one is).
                let fresh = modified.elapsed().map_or(true, |a| a.as_secs() < 60);
                if fresh && e.file_name().to_string_lossy().ends_with(".tmp") {
                    return None;
                }
                Some((modified, m.len(), e.path()))
            })
            .collect();
        let mut used: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        let target = self.budget / 4 * 3;
        for (_, len, path) in files {
            if used <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used -= len;
            }
        }
        self.used.store(used, Relaxed);
    }
}

fn encode(c: &Clean) -> Vec<u8> {
    let mut plain = Vec::with_capacity(12 + c.html.len());
    plain.extend_from_slice(MAGIC);
    plain.extend_from_slice(&(c.blocked as u64).to_le_bytes());
    plain.extend_from_slice(c.html.as_bytes());
    zstd::bulk::compress(&plain, 3).unwrap_or_default()
}

fn decode(data: &[u8]) -> Option<Clean> {
    // The sanitiser's output is bounded by its input limit; allow for
    // entities it writes out.
    let plain = zstd::bulk::decompress(data, 64 << 20).ok()?;
    if plain.len() < 12 || &plain[..4] != MAGIC {
        return None;
    }
    let blocked = u64::from_le_bytes(plain[4..12].try_into().ok()?);
    let html = String::from_utf8(plain[12..].to_vec()).ok()?;
    Some(Clean {
        html,
        blocked: usize::try_from(blocked).ok()?,
    })
}

/// The sanitised body of `raw` with remote content blocked (what a view
/// shows first), `None` when it has no HTML body.
pub fn sanitise(raw: &[u8], remote: bool) -> Option<Clean> {
    super::view::html_and_inline(raw)
        .map(|(h, inline)| super::sanitize::clean_with(&h, remote, inline))
}

/// The hand-off from deliveries to the `web-prepare` thread.
#[derive(Debug)]
pub struct Preparer {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    /// Bodies prepared (for tests and the benchmark).
    pub done: Arc<AtomicU64>,
}

impl Preparer {
    /// Starts the thread, writing into `cache` and sweeping it every
    /// [`SWEEP_EVERY`] of what `live` says is gone.
    pub fn start(cache: Arc<DiskCache>, live: Live) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(256);
        let queued = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let (q, d) = (queued.clone(), done.clone());
        std::thread::Builder::new()
            .name("web-prepare".into())
            .spawn(move || {
                // Ends when the last sender (the store's hook) is dropped.
                let mut next_sweep = std::time::Instant::now() + SWEEP_EVERY;
                loop {
                    // Swept on time even when deliveries never stop.
                    if std::time::Instant::now() >= next_sweep {
                        let n = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            cache.sweep(&live)
                        }))
                        .unwrap_or(0);
                        if n > 0 {
                            tracing::debug!(
                                removed = n,
                                "web cache: results of deleted mail removed"
                            );
                        }
                        next_sweep = std::time::Instant::now() + SWEEP_EVERY;
                    }
                    let wait = next_sweep.saturating_duration_since(std::time::Instant::now());
                    let raw = match rx.recv_timeout(wait) {
                        Ok(raw) => raw,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    let key = key_of(&raw);
                    if !cache.has(&key, false) {
                        // A message that makes the parser or the sanitiser
                        // panic is left to the view (which answers 500 for
                        // it); the thread goes on.
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            sanitise(&raw, false)
                        })) {
                            Ok(Some(c)) => cache.put(&key, false, &c),
                            Ok(None) => {}
                            Err(_) => tracing::error!(
                                "web cache: sanitising a delivered message panicked"
                            ),
                        }
                    }
                    q.fetch_sub(raw.len(), Relaxed);
                    d.fetch_add(1, Relaxed);
                }
            })?;
        Ok(Self { tx, queued, done })
    }

    /// Hands `raw` over when it is worth preparing and the thread is not
    /// too far behind; never waits.
    pub fn offer(&self, raw: &[u8]) -> bool {
        if !(PREPARE_MIN..=PREPARE_MAX).contains(&raw.len()) {
            return false;
        }
        if self.queued.fetch_add(raw.len(), Relaxed) + raw.len() > QUEUE_BYTES {
            self.queued.fetch_sub(raw.len(), Relaxed);
            return false;
        }
        match self.tx.try_send(raw.to_vec()) {
            Ok(()) => true,
            Err(_) => {
                self.queued.fetch_sub(raw.len(), Relaxed);
                false
            }
        }
    }

    /// Bytes handed over and not prepared yet.
    pub fn pending(&self) -> usize {
        self.queued.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_results_read_back_and_damage_is_not_served() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = DiskCache::open(&dir.path().join("c"), 1 << 20).expect("open");
        let key = key_of(b"message");
        assert!(cache.get(&key, false).is_none());
        let c = Clean {
            html: "<p>été</p>".into(),
            blocked: 3,
        };
        cache.put(&key, false, &c);
        let back = cache.get(&key, false).expect("kept");
        assert_eq!((back.html.as_str(), back.blocked), ("<p>été</p>", 3));
        // The other variant is another file.
        assert!(cache.get(&key, true).is_none());
        // A damaged file is removed, not served.
        std::fs::write(cache.path(&key, false), b"garbage").expect("write");
        assert!(cache.get(&key, false).is_none());
        assert!(!cache.has(&key, false));
        // Results of bytes the store no longer holds are swept.
        let gone = key_of(b"deleted");
        cache.put(&key, true, &c);
        cache.put(&gone, false, &c);
        std::fs::write(cache.dir.join("not-a-result"), b"x").expect("write");
        assert_eq!(cache.sweep(&|k: &[u8; 32]| *k != gone), 1);
        assert!(cache.has(&key, true) && !cache.has(&gone, false));
        assert!(cache.dir.join("not-a-result").exists());
    }

    #[test]
    fn the_oldest_files_go_past_the_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = DiskCache::open(&dir.path().join("c"), 64 << 10).expect("open");
        // Incompressible bodies of ~20 KB each.
        let mut seed = 7u64;
        let mut keys = Vec::new();
        for i in 0..10u8 {
            let html: String = (0..20_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b'a' + (seed % 26) as u8)
                })
                .collect();
            let key = key_of(&[i]);
            cache.put(&key, false, &Clean { html, blocked: 0 });
            keys.push(key);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let total: u64 = std::fs::read_dir(&cache.dir)
            .expect("dir")
            .flatten()
            .map(|e| e.metadata().expect("meta").len())
            .sum();
        assert!(total <= 64 << 10, "{total}");
        assert!(cache.has(&keys[9], false), "the newest stays");
        assert!(!cache.has(&keys[0], false), "the oldest went");
    }

    #[test]
    fn a_large_html_delivery_is_prepared_and_small_ones_are_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = Arc::new(DiskCache::open(&dir.path().join("c"), 64 << 20).expect("open"));
        let p = Preparer::start(cache.clone(), Box::new(|_: &[u8; 32]| true)).expect("start");
        assert!(!p.offer(b"From: a@b\r\n\r\nsmall"));
        let body = "<p>hello <img src=\"https://tracker.test/p.gif\"></p>".repeat(2_000);
        let raw = format!(
            "From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{body}"
        );
        assert!(p.offer(raw.as_bytes()));
        let t0 = std::time::Instant::now();
        while p.done.load(Relaxed) < 1 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(20));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(p.pending(), 0);
        let c = cache.get(&key_of(raw.as_bytes()), false).expect("prepared");
        let direct = sanitise(raw.as_bytes(), false).expect("html");
        assert_eq!(c.html, direct.html);
        assert_eq!(c.blocked, 2_000);
    }
}

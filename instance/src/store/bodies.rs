//! Message bodies, out of sled: append-only segment files, compressed,
//! content-addressed, checked on every read.
//!
//! # Layout
//! A directory `bodies/` inside the store's directory, holding segment
//! files `{id:016x}.body`. Each record is
//!
//! ```text
//! magic u32 | crc32 u32 | segment u64 | blob u64 | codec u8 | raw_len u32 | len u32 | sha256 [32] | payload
//! ```
//!
//! (little-endian; the CRC covers everything after itself, so a flipped
//! byte anywhere in a record, or a record read at the wrong place, fails
//! its check). `codec` says how `payload` holds the message's `raw_len`
//! bytes: as they are, zstd or lz4. The SHA-256 is of the message's bytes:
//! the content address (one message to many recipients, or the same bytes
//! delivered twice, is kept once) and what `caliopen store check` verifies.
//!
//! # What names a body
//! sled keeps the index, in the `bodies` tree: `B` blob(8) → [`Loc`], and
//! `#` sha256(32) → blob(8). The segments are a heap: a record no index
//! entry points at is dead space, whatever its state. So nothing in a
//! segment needs replaying at open, a crash's torn tail needs no repair
//! (each open writes into a new segment), and a record is reclaimed by
//! copying the live ones of its segment elsewhere ([`Bodies::compact`]).
//!
//! # Durability and order
//! A body is written and `fdatasync`ed before the sled transaction that
//! names it is applied (the store's writer does that once for a whole batch
//! of deliveries): an index entry can never name bytes that are not on
//! disk. The segment a body goes to was zero-filled and synced beforehand
//! by the background thread, so that this sync commits no file metadata
//! (on ext4 it would wait for a journal commit); a record too large for a
//! prepared segment goes to a segment of its own, made on the spot.
//!
//! # Full disks
//! Before writing, the free space of the filesystem is compared with the
//! configured reserve ([`StoreOptions::min_free_bytes`]): below it, or on
//! `ENOSPC`, the write fails with [`StoreError::Full`] (SMTP answers
//! `452 4.3.1`) and nothing is half-stored; deliveries succeed again as
//! soon as space returns.

use super::{FlushError, StoreError};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};

const MAGIC: u32 = 0xCA11_B0D1;
/// Bytes of a record before its payload.
pub(crate) const HEADER: usize = 4 + 4 + 8 + 8 + 1 + 4 + 4 + 32;
/// The first segment of a run; each next one twice as large, up to
/// [`SEGMENT_MAX`].
const SEGMENT_FIRST: u64 = 1 << 20;
/// The largest prepared segment.
pub(crate) const SEGMENT_MAX: u64 = 64 << 20;
/// Zero-filling writes this much at a time (and yields between).
const ZERO_CHUNK: usize = 1 << 20;
/// A body is stored compressed only when that saves at least 1/8 of it.
const MIN_SAVING_DIV: usize = 8;
/// Segments whose live records fill less than this fraction are compacted.
pub(crate) const COMPACT_BELOW: f64 = 0.5;

/// How a payload holds the message's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// As they are.
    None,
    /// zstd (the default: mail, much of it base64 and text, compresses
    /// several times).
    #[default]
    Zstd,
    /// lz4 (faster, compresses less).
    Lz4,
}

impl Codec {
    fn byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Codec::None,
            1 => Codec::Zstd,
            2 => Codec::Lz4,
            _ => return None,
        })
    }

    /// The codec named in the configuration (`zstd`, `lz4`, `none`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Codec::None,
            "zstd" => Codec::Zstd,
            "lz4" => Codec::Lz4,
            _ => return None,
        })
    }

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }
}

/// How the store keeps bodies and how much memory it may use.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The codec new bodies are written with.
    pub codec: Codec,
    /// zstd's level (1 is fast; 3 is zstd's default).
    pub zstd_level: i32,
    /// Memory for caches, in bytes (sled's page cache is most of it).
    pub cache_bytes: u64,
    /// Deliveries are refused (`452 4.3.1`) while the filesystem has less
    /// free space than this.
    pub min_free_bytes: u64,
    /// How often the background compaction runs.
    pub compact_every: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            codec: Codec::Zstd,
            zstd_level: 1,
            cache_bytes: 64 << 20,
            min_free_bytes: 64 << 20,
            compact_every: super::compact::INTERVAL,
        }
    }
}

/// Where a body's record is, and what it holds (the value of a `B` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment id.
    pub seg: u64,
    /// Offset of the record in it.
    pub off: u64,
    /// Bytes of payload.
    pub len: u32,
    /// Bytes of the message.
    pub raw_len: u32,
    /// How the payload holds them.
    pub codec: Codec,
    /// SHA-256 of the message's bytes.
    pub hash: [u8; 32],
}

/// Bytes of an encoded [`Loc`].
pub(crate) const LOC_LEN: usize = 8 + 8 + 4 + 4 + 1 + 32;

impl Loc {
    /// Its sled value.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; LOC_LEN];
        b[..8].copy_from_slice(&self.seg.to_be_bytes());
        b[8..16].copy_from_slice(&self.off.to_be_bytes());
        b[16..20].copy_from_slice(&self.len.to_be_bytes());
        b[20..24].copy_from_slice(&self.raw_len.to_be_bytes());
        b[24] = self.codec.byte();
        b[25..].copy_from_slice(&self.hash);
        b
    }

    /// Reads a sled value back.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LOC_LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[25..]);
        Some(Self {
            seg: u64_at(0),
            off: u64_at(8),
            len: u32_at(16),
            raw_len: u32_at(20),
            codec: Codec::from_byte(b[24])?,
            hash,
        })
    }

    /// Bytes the record takes in its segment.
    pub fn record_bytes(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }
}

/// A body ready to be written: hashed and compressed (off the writer
/// thread, on the caller's).
#[derive(Debug, Clone)]
pub struct Encoded {
    /// SHA-256 of the message's bytes.
    pub hash: [u8; 32],
    /// How `payload` holds them.
    pub codec: Codec,
    /// Bytes of the message.
    pub raw_len: u32,
    /// What goes into the record.
    pub payload: Vec<u8>,
}

/// The SHA-256 of a message's bytes.
pub fn hash_of(raw: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw);
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// Hashes and compresses a message's bytes.
pub fn encode(raw: &[u8], codec: Codec, zstd_level: i32) -> Result<Encoded, StoreError> {
    let raw_len = u32::try_from(raw.len())
        .map_err(|_| StoreError::Corrupt(format!("a body of {} bytes is too large", raw.len())))?;
    let packed = match codec {
        Codec::None => None,
        // One compression context per thread, kept: making one per body
        // costs more than compressing a small one.
        Codec::Zstd => ZSTD_C.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_none_or(|(level, _)| *level != zstd_level) {
                *c = zstd::bulk::Compressor::new(zstd_level)
                    .ok()
                    .map(|z| (zstd_level, z));
            }
            c.as_mut().and_then(|(_, z)| z.compress(raw).ok())
        }),
        Codec::Lz4 => Some(lz4_flex::block::compress(raw)),
    };
    let (codec, payload) = match packed {
        Some(p) if p.len() + raw.len() / MIN_SAVING_DIV <= raw.len() => (codec, p),
        _ => (Codec::None, raw.to_vec()),
    };
    Ok(Encoded {
        hash: hash_of(raw),
        codec,
        raw_len,
        payload,
    })
}

thread_local! {
    static ZSTD_C: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_D: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Restores a message's bytes from a payload.
fn decode_payload(codec: Codec, payload: &[u8], raw_len: u32) -> Option<Vec<u8>> {
    let out = match codec {
        Codec::None => payload.to_vec(),
        Codec::Zstd => ZSTD_D.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = zstd::bulk::Decompressor::new().ok();
            }
            d.as_mut()
                .and_then(|z| z.decompress(payload, raw_len as usize).ok())
        })?,
        Codec::Lz4 => lz4_flex::block::decompress(payload, raw_len as usize).ok()?,
    };
    (out.len() == raw_len as usize).then_some(out)
}

fn record(seg: u64, blob: u64, e: &Encoded) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + e.payload.len());
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&seg.to_le_bytes());
    b.extend_from_slice(&blob.to_le_bytes());
    b.push(e.codec.byte());
    b.extend_from_slice(&e.raw_len.to_le_bytes());
    b.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&e.hash);
    b.extend_from_slice(&e.payload);
    let crc = crc32fast::hash(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a record does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// Its segment file is gone.
    Missing,
    /// The bytes are not the record the index names (torn, overwritten,
    /// flipped).
    Bad(&'static str),
    /// It checks, but its bytes do not hash to its address.
    Hash,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Missing => f.write_str("its segment file is missing"),
            Damage::Bad(why) => write!(f, "its record {why}"),
            Damage::Hash => f.write_str("its bytes do not match their SHA-256"),
        }
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Records written (deliveries and compaction).
    pub written: AtomicU64,
    /// Message bytes written, before compression.
    pub raw_bytes: AtomicU64,
    /// Payload bytes written, after it.
    pub stored_bytes: AtomicU64,
    /// `fdatasync`s of segment files.
    pub syncs: AtomicU64,
    /// Records copied by compaction.
    pub relocated: AtomicU64,
    /// Segments deleted by compaction.
    pub segments_deleted: AtomicU64,
    /// Rolls that found no prepared segment.
    pub unprepared_rolls: AtomicU64,
    /// Writes refused for want of disk space.
    pub refused_full: AtomicU64,
}

/// The body store (cheap to clone).
#[derive(Debug, Clone)]
pub struct Bodies {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segments: RwLock<BTreeMap<u64, Arc<File>>>,
    writer: Mutex<Writer>,
    chores: Arc<Chores>,
    chore_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    min_free: AtomicU64,
    /// Records written but not yet named by a committed index entry (or
    /// given up), per segment: compaction leaves those segments alone.
    pending: Mutex<BTreeMap<u64, usize>>,
    /// Stats, public through [`Bodies::stats`].
    stats: BodyStats,
}

#[derive(Debug)]
struct Writer {
    active: u64,
    file: Arc<File>,
    off: u64,
    capacity: u64,
    /// The next segment's size (doubles up to [`SEGMENT_MAX`]).
    next_size: u64,
    /// The next id to give a segment.
    next_id: u64,
    /// Segment files written since the last [`Bodies::sync`].
    dirty: Vec<Arc<File>>,
    /// After a failed sync nothing more is written: the page cache can no
    /// longer be trusted.
    failed: Option<Arc<std::io::Error>>,
}

#[derive(Debug, Default)]
struct Chores {
    todo: Mutex<ChoreState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct ChoreState {
    /// Asked for: a segment of this size and id.
    prepare: Option<(u64, u64)>,
    /// Made ready: (id, file, capacity).
    ready: Option<(u64, Arc<File>, u64)>,
    stop: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.body")
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull {
        return StoreError::Full(format!("{}: {e}", path.display()));
    }
    StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// Makes a segment file of `capacity` zero bytes, synced with its
/// directory, so that writing records into it changes no file metadata.
fn make_segment(dir: &Path, id: u64, capacity: u64, zero_fill: bool) -> Result<File, StoreError> {
    let path = dir.join(segment_name(id));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    if zero_fill {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = 0u64;
        while at < capacity {
            let n = (capacity - at).min(ZERO_CHUNK as u64) as usize;
            if let Err(e) = f.write_all_at(&zeros[..n], at) {
                drop(std::fs::remove_file(&path));
                return Err(io(&path, e));
            }
            at += n as u64;
        }
        f.sync_all().map_err(|e| io(&path, e))?;
    }
    sync_dir(dir)?;
    Ok(f)
}

/// Free bytes for unprivileged writers on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

impl Bodies {
    /// Opens (or makes) the body store in `dir`. Nothing is read from the
    /// existing segments: each run writes into a new one.
    pub fn open(dir: &Path, min_free_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".body"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            let path = entry.path();
            let f = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            segments.insert(id, Arc::new(f));
        }
        let next_id = segments.keys().next_back().map_or(1, |l| l + 1);
        let file = Arc::new(make_segment(dir, next_id, SEGMENT_FIRST, true)?);
        segments.insert(next_id, file.clone());
        let chores = Arc::new(Chores::default());
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active: next_id,
                file,
                off: 0,
                capacity: SEGMENT_FIRST,
                next_size: (SEGMENT_FIRST * 2).min(SEGMENT_MAX),
                next_id: next_id + 1,
                dirty: Vec::new(),
                failed: None,
            }),
            chores: chores.clone(),
            chore_thread: Mutex::new(None),
            min_free: AtomicU64::new(min_free_bytes),
            pending: Mutex::new(BTreeMap::new()),
            stats: BodyStats::default(),
        });
        let dir2 = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("store-bodies".into())
            .spawn(move || prepare_loop(&dir2, &chores))
            .map_err(|e| io(dir, e))?;
        *lock(&inner.chore_thread) = Some(thread);
        let b = Self { inner };
        b.ask_prepare();
        Ok(b)
    }

    /// The directory of the segments.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Counters.
    pub fn stats(&self) -> &BodyStats {
        &self.inner.stats
    }

    /// Changes the free-space reserve.
    pub fn set_min_free(&self, bytes: u64) {
        self.inner.min_free.store(bytes, Ordering::Relaxed);
    }

    /// Refuses a write of `need` bytes when the filesystem would be left
    /// with less than the reserve.
    pub fn check_space(&self, need: u64) -> Result<(), StoreError> {
        let reserve = self.inner.min_free.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        if let Some(free) = free_bytes(&self.inner.dir) {
            if free < reserve.saturating_add(need) {
                self.inner
                    .stats
                    .refused_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Full(format!(
                    "{} has {} MiB free, below the reserve of {} MiB",
                    self.inner.dir.display(),
                    free >> 20,
                    reserve >> 20
                )));
            }
        }
        Ok(())
    }

    fn ask_prepare(&self) {
        let (size, id) = {
            let mut w = lock(&self.inner.writer);
            let id = w.next_id;
            w.next_id += 1;
            (w.next_size, id)
        };
        let mut t = lock(&self.inner.chores.todo);
        t.prepare = Some((size, id));
        self.inner.chores.wake.notify_one();
    }

    /// Writes the record of `blob` (into the page cache; durable after
    /// [`Bodies::sync`]) and returns where it is.
    pub fn append(&self, blob: u64, e: &Encoded) -> Result<Loc, StoreError> {
        let rec_len = (HEADER + e.payload.len()) as u64;
        let mut asked = false;
        let loc = {
            let mut w = lock(&self.inner.writer);
            if let Some(f) = &w.failed {
                return Err(StoreError::Flush(FlushError::EarlierBodySync(f.clone())));
            }
            if w.off + rec_len > w.capacity {
                asked = self.roll(&mut w, rec_len)?;
            }
            let bytes = record(w.active, blob, e);
            if let Err(err) = w.file.write_all_at(&bytes, w.off) {
                return Err(io(&self.inner.dir.join(segment_name(w.active)), err));
            }
            let loc = Loc {
                seg: w.active,
                off: w.off,
                len: e.payload.len() as u32,
                raw_len: e.raw_len,
                codec: e.codec,
                hash: e.hash,
            };
            w.off += rec_len;
            *lock(&self.inner.pending).entry(w.active).or_default() += 1;
            if !w.dirty.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
                let f = w.file.clone();
                w.dirty.push(f);
            }
            loc
        };
        if asked {
            self.ask_prepare();
        }
        let s = &self.inner.stats;
        s.written.fetch_add(1, Ordering::Relaxed);
        s.raw_bytes
            .fetch_add(u64::from(e.raw_len), Ordering::Relaxed);
        s.stored_bytes
            .fetch_add(e.payload.len() as u64, Ordering::Relaxed);
        Ok(loc)
    }

    /// Moves the writer to a new segment with room for `rec_len` bytes.
    /// Returns true when the prepared segment was taken (another must be
    /// asked for).
    fn roll(&self, w: &mut Writer, rec_len: u64) -> Result<bool, StoreError> {
        let ready = {
            let mut t = lock(&self.inner.chores.todo);
            match t.ready.take() {
                Some(r) if r.2 >= rec_len => Some(r),
                other => {
                    t.ready = other;
                    None
                }
            }
        };
        let (id, file, capacity, taken) = match ready {
            Some((id, f, cap)) => (id, f, cap, true),
            None => {
                // Nothing prepared (or the record is larger than it): a
                // segment made now, not zero-filled (its syncs commit the
                // growing size too).
                self.inner
                    .stats
                    .unprepared_rolls
                    .fetch_add(1, Ordering::Relaxed);
                let id = w.next_id;
                w.next_id += 1;
                let f = Arc::new(make_segment(&self.inner.dir, id, 0, false)?);
                (id, f, rec_len.max(w.next_size), false)
            }
        };
        self.inner
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, file.clone());
        w.active = id;
        w.file = file;
        w.off = 0;
        w.capacity = capacity;
        if taken {
            w.next_size = (w.next_size * 2).min(SEGMENT_MAX);
        }
        Ok(taken)
    }

    /// Says that the transaction naming a record appended by
    /// [`Bodies::append`] is applied, or will never be.
    pub fn settle(&self, loc: Option<&Loc>) {
        let Some(loc) = loc else { return };
        let mut p = lock(&self.inner.pending);
        if let Some(n) = p.get_mut(&loc.seg) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.remove(&loc.seg);
            }
        }
    }

    /// The segments no record can be added to nor named in any more: not
    /// the active one, and none with a record not yet settled. Taken
    /// before the index is read, so that what the index then shows of
    /// them is all they will ever hold.
    pub fn sealed(&self) -> Vec<(u64, u64)> {
        let active = self.active();
        let pending: Vec<u64> = lock(&self.inner.pending).keys().copied().collect();
        self.segments()
            .into_iter()
            .filter(|(id, _)| *id != active && !pending.contains(id))
            .collect()
    }

    /// Makes every record written so far durable.
    pub fn sync(&self) -> Result<(), FlushError> {
        let dirty = std::mem::take(&mut lock(&self.inner.writer).dirty);
        for f in &dirty {
            self.inner.stats.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = f.sync_data() {
                let e = Arc::new(e);
                lock(&self.inner.writer).failed = Some(e.clone());
                return Err(FlushError::BodySync(e));
            }
        }
        Ok(())
    }

    /// Reads a record's raw bytes and header checks, without decoding.
    fn read_record(&self, blob: u64, loc: &Loc) -> Result<Vec<u8>, Damage> {
        let file = self
            .inner
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&loc.seg)
            .cloned()
            .ok_or(Damage::Missing)?;
        let mut buf = vec![0u8; loc.record_bytes() as usize];
        file.read_exact_at(&mut buf, loc.off)
            .map_err(|_| Damage::Bad("is cut short"))?;
        let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap_or([0; 8]));
        if u32_at(0) != MAGIC {
            return Err(Damage::Bad("has no record mark"));
        }
        if crc32fast::hash(&buf[8..]) != u32_at(4) {
            return Err(Damage::Bad("fails its CRC"));
        }
        if u64_at(8) != loc.seg
            || u64_at(16) != blob
            || buf[24] != loc.codec.byte()
            || u32_at(25) != loc.raw_len
            || u32_at(29) != loc.len
            || buf[33..65] != loc.hash
        {
            return Err(Damage::Bad("is not the one the index names"));
        }
        buf.drain(..HEADER);
        Ok(buf)
    }

    /// A message's bytes, checked (CRC, and the decoded length).
    pub fn read(&self, blob: u64, loc: &Loc) -> Result<Vec<u8>, Damage> {
        let payload = self.read_record(blob, loc)?;
        decode_payload(loc.codec, &payload, loc.raw_len).ok_or(Damage::Bad("does not decode"))
    }

    /// Like [`Bodies::read`], and the bytes hashed against their address.
    pub fn verify(&self, blob: u64, loc: &Loc) -> Result<Vec<u8>, Damage> {
        let raw = self.read(blob, loc)?;
        if hash_of(&raw) != loc.hash {
            return Err(Damage::Hash);
        }
        Ok(raw)
    }

    /// The segment being written (never compacted).
    pub fn active(&self) -> u64 {
        lock(&self.inner.writer).active
    }

    /// Every segment with its file size.
    pub fn segments(&self) -> Vec<(u64, u64)> {
        self.inner
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, f)| (*id, f.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect()
    }

    /// Copies a record into the active segment, unchanged but for its
    /// segment id, and returns its new place (durable after
    /// [`Bodies::sync`]).
    pub fn copy_forward(&self, blob: u64, loc: &Loc) -> Result<Loc, Damage> {
        let payload = self.read_record(blob, loc)?;
        let e = Encoded {
            hash: loc.hash,
            codec: loc.codec,
            raw_len: loc.raw_len,
            payload,
        };
        let new = self
            .append(blob, &e)
            .map_err(|_| Damage::Bad("cannot be copied"))?;
        self.inner.stats.relocated.fetch_add(1, Ordering::Relaxed);
        Ok(new)
    }

    /// Deletes a segment no index entry names any more.
    pub fn delete_segment(&self, seg: u64) -> Result<(), StoreError> {
        if seg == self.active() {
            return Ok(());
        }
        self.inner
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seg);
        let path = self.inner.dir.join(segment_name(seg));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        sync_dir(&self.inner.dir)?;
        self.inner
            .stats
            .segments_deleted
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        {
            let mut t = lock(&self.chores.todo);
            t.stop = true;
            self.chores.wake.notify_all();
        }
        if let Some(h) = lock(&self.chore_thread).take() {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the body preparer thread panicked");
            }
        }
        // Segments never written are removed (they hold nothing): the one
        // prepared, and the active one when nothing went in (a command that
        // only read the store).
        if let Some((id, _, _)) = lock(&self.chores.todo).ready.take() {
            drop(std::fs::remove_file(self.dir.join(segment_name(id))));
        }
        let w = lock(&self.writer);
        if w.off == 0 {
            drop(std::fs::remove_file(self.dir.join(segment_name(w.active))));
        }
    }
}

/// The background thread: zero-fills the next segment before it is needed.
fn prepare_loop(dir: &Path, chores: &Chores) {
    loop {
        let (size, id) = {
            let mut t = lock(&chores.todo);
            loop {
                if t.stop {
                    return;
                }
                if let Some(p) = t.prepare.take() {
                    break p;
                }
                t = chores.wake.wait(t).unwrap_or_else(PoisonError::into_inner);
            }
        };
        match make_segment(dir, id, size, true) {
            Ok(f) => {
                let mut t = lock(&chores.todo);
                if let Some((old, _, _)) = t.ready.replace((id, Arc::new(f), size)) {
                    drop(std::fs::remove_file(dir.join(segment_name(old))));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot prepare the next body segment"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        let words = [
            "privacy ",
            "letter ",
            "mesh ",
            "label ",
            "caliopen ",
            "envelope\r\n",
        ];
        let mut v = Vec::new();
        let mut i = 7usize;
        while v.len() < n {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.extend_from_slice(words[(i >> 33) % words.len()].as_bytes());
        }
        v.truncate(n);
        v
    }

    #[test]
    fn every_codec_reads_back_byte_exact() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Bodies::open(dir.path(), 0).expect("open");
        let raw = text(50_000);
        let mut locs = Vec::new();
        for (i, codec) in [Codec::None, Codec::Zstd, Codec::Lz4]
            .into_iter()
            .enumerate()
        {
            let e = encode(&raw, codec, 1).expect("encode");
            assert_eq!(e.codec, codec, "text compresses with {codec:?}");
            let loc = b.append(i as u64, &e).expect("append");
            locs.push(loc);
        }
        b.sync().expect("sync");
        for (i, loc) in locs.iter().enumerate() {
            assert_eq!(b.verify(i as u64, loc).expect("read"), raw);
        }
        assert!(locs[1].len < 50_000 / 3, "zstd: {}", locs[1].len);
        // A random body does not compress: kept as it is.
        let mut x = 1u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(
            encode(&noise, Codec::Zstd, 1).expect("e").codec,
            Codec::None
        );
    }

    #[test]
    fn a_flipped_byte_or_a_wrong_index_entry_is_never_returned_as_mail() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Bodies::open(dir.path(), 0).expect("open");
        let raw = text(10_000);
        let e = encode(&raw, Codec::Zstd, 1).expect("encode");
        let loc = b.append(9, &e).expect("append");
        let other = b.append(10, &e).expect("append");
        b.sync().expect("sync");
        assert_eq!(
            b.read(10, &loc),
            Err(Damage::Bad("is not the one the index names"))
        );
        assert_eq!(
            b.read(9, &other).map(|_| ()),
            Err(Damage::Bad("is not the one the index names"))
        );
        let path = dir.path().join(segment_name(loc.seg));
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&[0x55], loc.off + HEADER as u64 + 17)
            .expect("flip");
        assert_eq!(b.read(9, &loc), Err(Damage::Bad("fails its CRC")));
        assert_eq!(b.read(10, &other).expect("the other is intact"), raw);
    }

    #[test]
    fn segments_roll_and_a_large_body_gets_a_segment_of_its_own() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Bodies::open(dir.path(), 0).expect("open");
        let mut locs = Vec::new();
        for i in 0..40u64 {
            let raw = text(100_000 + i as usize);
            let e = encode(&raw, Codec::None, 1).expect("encode");
            locs.push((b.append(i, &e).expect("append"), raw));
        }
        let big = text(3 << 20);
        let e = encode(&big, Codec::None, 1).expect("encode");
        let loc = b.append(99, &e).expect("append big");
        b.sync().expect("sync");
        assert!(b.segments().len() >= 3, "{:?}", b.segments());
        for (i, (l, raw)) in locs.iter().enumerate() {
            assert_eq!(&b.read(i as u64, l).expect("read"), raw);
        }
        assert_eq!(b.read(99, &loc).expect("big"), big);
        // Reopened: the old segments read, a new one is written.
        drop(b);
        let b = Bodies::open(dir.path(), 0).expect("reopen");
        assert_eq!(b.read(99, &loc).expect("big after reopen"), big);
        assert!(b.active() > loc.seg);
    }

    #[test]
    fn a_reserve_larger_than_the_free_space_refuses_the_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = Bodies::open(dir.path(), u64::MAX / 2).expect("open");
        assert!(matches!(b.check_space(10), Err(StoreError::Full(_))));
        b.set_min_free(1 << 20);
        b.check_space(10).expect("room again");
    }
}

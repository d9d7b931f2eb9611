//! Storage scale: one instance store with many accounts and messages.

use crate::report::{ms, percentile, Report};
use crate::sys::{dir_size, rss_bytes};
use anyhow::Result;
use caliopen_instance::mail::{Delivery, MessageMeta, Transport, Via};
use caliopen_instance::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parameters of the storage benchmark.
#[derive(Debug, Clone)]
pub struct StorageParams {
    /// Accounts.
    pub accounts: usize,
    /// Messages (spread evenly over the accounts).
    pub messages: usize,
    /// Body size of each message.
    pub size: usize,
    /// Concurrent writers (each awaits the group commit).
    pub writers: usize,
    /// `[store] cache_mb` (`None`: the default).
    pub cache_mb: Option<u64>,
}

/// Fills a fresh store through its public API, then measures memory, disk
/// size, and list/get latency.
pub async fn run(work: &std::path::Path, p: &StorageParams, report: &mut Report) -> Result<()> {
    let tmp = tempfile::tempdir_in(work)?;
    let path = tmp.path().join("db");
    let rss0 = rss_bytes();
    let mut opts = caliopen_instance::store::StoreOptions::default();
    if let Some(mb) = p.cache_mb {
        opts.cache_bytes = mb << 20;
    }
    let store = Store::open_with(&path, &opts)?;
    let case = format!(
        "{} accounts, {} msgs of {} KB, cache {} MiB",
        p.accounts,
        p.messages,
        p.size / 1024,
        opts.cache_bytes >> 20
    );

    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..p.writers {
        let store = store.clone();
        let next = next.clone();
        let n = p.accounts;
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                store
                    .put_user(&format!("user{i}"), "$argon2id$bench")
                    .await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let users_time = t0.elapsed();

    // Each message different (its own headers and text): the store keeps
    // equal bytes once, so one body repeated would measure nothing.
    let raw_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let size = p.size;
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..p.writers {
        let store = store.clone();
        let next = next.clone();
        let raw_total = raw_total.clone();
        let (n, accounts) = (p.messages, p.accounts);
        set.spawn(async move {
            let mut sample = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(sample);
                }
                let user = format!("user{}", i % accounts);
                let meta = MessageMeta {
                    id: 0,
                    from: "sender@outside.test".into(),
                    to: Vec::new(),
                    subject: format!("message {i}"),
                    received_at: 1_700_000_000 + i as i64,
                    via: Via::Smtp,
                    transport: Transport {
                        helo: "bench".into(),
                        client: "127.0.0.1".into(),
                        ..Default::default()
                    },
                    size: 0,
                    ..Default::default()
                };
                let to = vec![format!("{user}@bench.test")];
                let body = text_message(i, &user, size);
                raw_total.fetch_add(body.len() as u64, Ordering::Relaxed);
                let ids = store
                    .deliver_local(&meta, &[Delivery::inbox(user, to)], &body)
                    .await?;
                if i.is_multiple_of(97) {
                    sample.extend(ids);
                }
            }
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r??);
    }
    let ingest = t0.elapsed();
    store.flush().await?;
    let rss_loaded = rss_bytes();
    let disk = dir_size(&path);
    let bodies_disk = dir_size(&path.join("bodies"));
    // Where the index bytes go: the logical contents of each sled tree
    // against what sled's files take (a full scan, so only when asked).
    if std::env::var_os("CALIOPEN_BENCH_TREES").is_some() {
        let mut logical = 0;
        for t in store.tree_stats()? {
            logical += t.key_bytes + t.value_bytes;
            eprintln!(
                "tree {:<16} {:>10} entries {:>8.1} MiB keys {:>8.1} MiB values",
                t.name,
                t.entries,
                t.key_bytes as f64 / 1048576.0,
                t.value_bytes as f64 / 1048576.0
            );
        }
        for e in std::fs::read_dir(&path)?.flatten() {
            let m = e.metadata()?;
            eprintln!(
                "file {:?} {:.1} MiB{}",
                e.file_name(),
                dir_size_or_len(&e.path(), &m) as f64 / 1048576.0,
                if m.is_dir() { " (dir)" } else { "" }
            );
        }
        eprintln!(
            "sled files {:.1} MiB for {:.1} MiB of keys and values; bodies {:.1} MiB",
            (disk - bodies_disk) as f64 / 1048576.0,
            logical as f64 / 1048576.0,
            bodies_disk as f64 / 1048576.0
        );
    }

    // Latency: list a mailbox, get one message's bytes, each on random keys.
    let mut rand = xorshift();
    let probes = 2000.min(p.accounts * 4).max(100);
    let mut list_lat = Vec::with_capacity(probes);
    let mut listed = 0usize;
    for _ in 0..probes {
        let u = format!("user{}", rand() as usize % p.accounts);
        let t = Instant::now();
        listed += store.list(&u)?.len();
        list_lat.push(t.elapsed());
    }
    let mut get_lat = Vec::with_capacity(probes);
    let mut got = 0usize;
    for _ in 0..probes {
        let Some(&id) = ids.get(rand() as usize % ids.len().max(1)) else {
            break;
        };
        let t = Instant::now();
        got += store.raw(id)?.map_or(0, |b| b.len());
        get_lat.push(t.elapsed());
    }
    let per_box = listed as f64 / probes as f64;
    report.add(
        "storage",
        &case,
        "ingest msg/s",
        p.messages as f64 / ingest.as_secs_f64(),
        None,
        &format!(
            "{} concurrent writers, each message durable (group commit) before the next; {} accounts created in {:.1} s",
            p.writers,
            p.accounts,
            users_time.as_secs_f64()
        ),
    );
    report.add(
        "storage",
        &case,
        "RSS MiB",
        rss_loaded.saturating_sub(rss0) as f64 / 1048576.0,
        None,
        "resident memory added by the open, filled store (sled page cache included)",
    );
    report.add(
        "storage",
        &case,
        "disk MiB",
        disk as f64 / 1048576.0,
        None,
        &format!(
            "raw message bytes: {:.0} MiB (each message its own text; bodies {} in segment files, the rest sled's indexes)",
            raw_total.load(Ordering::Relaxed) as f64 / 1048576.0,
            caliopen_instance::store::StoreOptions::default().codec.name()
        ),
    );
    add_pcts(
        report,
        &case,
        "list",
        &mut list_lat,
        &format!("mailbox of {per_box:.1} messages (metadata of each)"),
    );
    add_pcts(
        report,
        &case,
        "get",
        &mut get_lat,
        &format!("one message's bytes ({} B avg)", got / probes.max(1)),
    );
    drop(store);
    if std::env::var_os("CALIOPEN_BENCH_TREES").is_some() {
        // The same keys and values written once into a fresh sled, in key
        // order: what the index would take without the garbage of updates.
        let old = sled::open(&path)?;
        let fresh_path = tmp.path().join("fresh");
        let fresh = sled::open(&fresh_path)?;
        for name in old.tree_names() {
            let (a, b) = (old.open_tree(&name)?, fresh.open_tree(&name)?);
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in a.iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
                n += 1;
                if n % 10_000 == 0 {
                    b.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            b.apply_batch(batch)?;
        }
        fresh.flush()?;
        drop(fresh);
        eprintln!(
            "fresh copy of the index: {:.1} MiB",
            dir_size(&fresh_path) as f64 / 1048576.0
        );
    }
    Ok(())
}

/// Words of the generated text (mail-like: short words, punctuation,
/// line breaks), drawn at random so that each message is its own.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "I",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "meeting",
    "tomorrow",
    "privacy",
    "letter",
    "message",
    "thanks,",
    "regards,",
    "attached",
    "please",
    "report",
    "budget",
    "review",
    "Monday",
    "project",
    "team",
    "question",
    "answer.",
    "invoice",
    "association",
    "members",
    "label",
    "federation",
    "encrypted",
    "server",
    "contract",
    "2026",
    "Paris",
    "Lyon",
    "draft",
    "version",
    "update",
    "call",
    "week",
    "schedule",
    "minutes",
    "notes.",
];

/// A message of about `size` bytes: headers like a real one's (its own
/// Message-ID and date), then random words in lines of 72 or so.
pub fn text_message(i: usize, user: &str, size: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut m = format!(
        "Received: from mx.outside.test (mx.outside.test [192.0.2.{}]) by bench.test with ESMTPS id {:016x}\r\n\
         From: Sender {} <sender{}@outside.test>\r\nTo: <{user}@bench.test>\r\n\
         Subject: message {i} about the {}\r\nDate: Mon, 1 Dec 2026 {:02}:{:02}:{:02} +0000\r\n\
         Message-ID: <{:016x}.{i}@outside.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
        i % 250,
        next(),
        i % 1000,
        i % 1000,
        WORDS[next() as usize % WORDS.len()],
        i / 3600 % 24,
        i / 60 % 60,
        i % 60,
        next()
    )
    .into_bytes();
    let mut line = 0;
    while m.len() < size {
        let w = WORDS[next() as usize % WORDS.len()];
        m.extend_from_slice(w.as_bytes());
        line += w.len() + 1;
        if line > 72 {
            m.extend_from_slice(b"\r\n");
            line = 0;
        } else {
            m.push(b' ');
        }
    }
    m.extend_from_slice(b"\r\n");
    m
}

/// Compression of message bodies: zstd at levels 1 and 3 and lz4, on the
/// mail corpus (real-world and RFC messages) and on the generated text.
pub fn codecs(report: &mut Report) -> Result<()> {
    use caliopen_instance::store::{encode_body as encode, Codec};
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../instance/tests/corpus/eml");
    let mut real = Vec::new();
    for e in std::fs::read_dir(&corpus)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "eml") {
            real.push(std::fs::read(&p)?);
        }
    }
    let generated: Vec<Vec<u8>> = (0..200).map(|i| text_message(i, "user", 2048)).collect();
    for (name, set) in [("mail corpus", &real), ("generated 2 KB text", &generated)] {
        let raw: usize = set.iter().map(Vec::len).sum();
        for (codec, level, label) in [
            (Codec::Zstd, 1, "zstd-1"),
            (Codec::Zstd, 3, "zstd-3"),
            (Codec::Lz4, 0, "lz4"),
        ] {
            let rounds = (8 << 20) / raw.max(1) + 1;
            let t = Instant::now();
            let mut stored = 0usize;
            for _ in 0..rounds {
                stored = 0;
                for m in set.iter() {
                    // As the store writes it: kept as is when it saves under 1/8.
                    stored += encode(m, codec, level)?.payload.len();
                }
            }
            let secs = t.elapsed().as_secs_f64();
            report.add(
                "storage",
                &format!("codec {label}, {name}"),
                "ratio",
                raw as f64 / stored.max(1) as f64,
                None,
                &format!(
                    "{} messages, {} KiB; compress + SHA-256 {:.0} MB/s",
                    set.len(),
                    raw >> 10,
                    (raw * rounds) as f64 / secs / 1e6
                ),
            );
        }
    }
    Ok(())
}

fn add_pcts(report: &mut Report, case: &str, what: &str, lat: &mut [Duration], note: &str) {
    add_latency(report, "storage", case, what, lat, note, None);
}

/// A fixed-seed xorshift generator: the same probes in every run.
pub fn xorshift() -> impl FnMut() -> u64 {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// Adds the p50 and p99 of `lat` in µs as two rows of `section`, the p99
/// with `target` when there is one.
pub fn add_latency(
    report: &mut Report,
    section: &str,
    case: &str,
    what: &str,
    lat: &mut [Duration],
    note: &str,
    target: Option<&str>,
) {
    let us = |d: Duration| ms(d) * 1000.0;
    let p50 = percentile(lat, 50.0).map_or(f64::NAN, us);
    let p99 = percentile(lat, 99.0).map_or(f64::NAN, us);
    report.add(section, case, &format!("{what} p50 µs"), p50, None, note);
    report.add(section, case, &format!("{what} p99 µs"), p99, target, "");
}

fn dir_size_or_len(p: &std::path::Path, m: &std::fs::Metadata) -> u64 {
    if m.is_dir() {
        dir_size(p)
    } else {
        m.len()
    }
}

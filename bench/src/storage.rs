//! Storage scale: one instance store with many accounts and messages.

use crate::report::{ms, percentile, Report};
use crate::sys::{dir_size, rss_bytes};
use anyhow::Result;
use caliopen_instance::store::{Delivery, MessageMeta, Store, Transport, Via};
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
}

/// Fills a fresh store through its public API, then measures memory, disk
/// size, and list/get latency.
pub async fn run(work: &std::path::Path, p: &StorageParams, report: &mut Report) -> Result<()> {
    let tmp = tempfile::tempdir_in(work)?;
    let path = tmp.path().join("db");
    let rss0 = rss_bytes();
    let store = Store::open(&path)?;
    let case = format!(
        "{} accounts, {} msgs of {} KB",
        p.accounts,
        p.messages,
        p.size / 1024
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

    let body = crate::smtp::message("sender@outside.test", "user@bench.test", "storage", p.size);
    let body = Arc::new(body);
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..p.writers {
        let store = store.clone();
        let next = next.clone();
        let body = body.clone();
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
            "raw message bytes: {:.0} MiB",
            (p.messages * body.len()) as f64 / 1048576.0
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

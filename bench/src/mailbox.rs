//! One large mailbox (issue #14): listing a page of a 100,000-message
//! inbox at a random place, and "what changed since" for a client a few
//! changes behind — both answered from the store's indexes (the UID index
//! and the change log), never by a scan.

use crate::report::Report;
use anyhow::Result;
use caliopen_instance::mail::Role;
use caliopen_instance::mail::{Delivery, MessageMeta, Via};
use caliopen_instance::store::{KeywordChange, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parameters of the mailbox benchmark.
#[derive(Debug, Clone)]
pub struct MailboxParams {
    /// Messages in the one mailbox.
    pub messages: usize,
    /// Messages per page listed.
    pub page: usize,
    /// Probes of each kind.
    pub probes: usize,
    /// Concurrent writers while filling it.
    pub writers: usize,
}

/// Fills one account's inbox, then measures page listing and changes-since.
pub async fn run(work: &std::path::Path, p: &MailboxParams, report: &mut Report) -> Result<()> {
    let tmp = tempfile::tempdir_in(work)?;
    let store = Store::open(&tmp.path().join("db"))?;
    store.set_domains(&["bench.test".to_owned()]);
    store.put_user("big", "$argon2id$bench").await?;
    let case = format!("one inbox of {} msgs of 2 KB", p.messages);
    let body = Arc::new(crate::smtp::message(
        "sender@outside.test",
        "big@bench.test",
        "mailbox",
        2048,
    ));
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..p.writers {
        let (store, next, body, n) = (store.clone(), next.clone(), body.clone(), p.messages);
        set.spawn(async move {
            let meta = MessageMeta {
                from: "sender@outside.test".into(),
                subject: "mailbox".into(),
                via: Via::Smtp,
                ..Default::default()
            };
            let d = [Delivery::inbox("big", vec!["big@bench.test".into()])];
            while next.fetch_add(1, Ordering::Relaxed) < n {
                store.deliver_local(&meta, &d, &body).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let ingest = t0.elapsed();
    report.add(
        "mailbox",
        &case,
        "ingest msg/s",
        p.messages as f64 / ingest.as_secs_f64(),
        None,
        &format!(
            "{} concurrent writers into one account (its UID, modseq and quota in every write), each durable before the next",
            p.writers
        ),
    );
    let inbox = Role::Inbox.id();
    let uid_next = store
        .mailboxes("big")?
        .iter()
        .find(|b| b.id == inbox)
        .map_or(1, |b| b.uid_next);
    let mut rand = crate::storage::xorshift();
    let mut list_lat = Vec::with_capacity(p.probes);
    let mut listed = 0;
    for _ in 0..p.probes {
        let after = (rand() % u64::from(uid_next.saturating_sub(p.page as u32).max(1))) as u32;
        let t = Instant::now();
        listed += store.mailbox_page("big", inbox, after, p.page)?.0.len();
        list_lat.push(t.elapsed());
    }
    add_pcts(
        report,
        &case,
        "page",
        &mut list_lat,
        &format!(
            "{} messages from a random UID ({} on average), metadata of each",
            p.page,
            listed / p.probes.max(1)
        ),
    );
    // A client behind by 1 to 50 changes: keyword changes on random
    // messages, the state before each kept.
    let ids: Vec<u64> = store.uids("big", inbox)?.into_iter().map(|u| u.1).collect();
    let mut states = Vec::with_capacity(1000);
    for i in 0..1000 {
        states.push(store.state("big")?);
        let id = ids[rand() as usize % ids.len()];
        let k = if i % 2 == 0 { "$seen" } else { "$flagged" };
        store
            .set_keywords("big", &[id], &KeywordChange::Add(vec![k.into()]))
            .await?;
    }
    let now = store.state("big")?;
    let mut ch_lat = Vec::with_capacity(p.probes);
    let mut changed = 0;
    for _ in 0..p.probes {
        let behind = 1 + rand() as usize % 50;
        let since = states[states.len() - behind];
        let t = Instant::now();
        let c = store.changes_since("big", since, 500)?;
        ch_lat.push(t.elapsed());
        changed += c.updated.len() + c.created.len();
        debug_assert_eq!(c.new_state, now);
    }
    add_pcts(
        report,
        &case,
        "changes since",
        &mut ch_lat,
        &format!(
            "a client 1-50 changes behind ({:.1} messages changed on average), from the change log",
            changed as f64 / p.probes.max(1) as f64
        ),
    );
    drop(store);
    Ok(())
}

fn add_pcts(report: &mut Report, case: &str, what: &str, lat: &mut [Duration], note: &str) {
    crate::storage::add_latency(report, "mailbox", case, what, lat, note, Some("< 1000"));
}

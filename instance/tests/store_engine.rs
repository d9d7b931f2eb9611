//! The SMTP code runs over any engine behind `MailStore`: here a small
//! in-memory engine (no sled) takes mail from Python's smtplib through the
//! real MX listener, keeps `deliver_once` idempotent, and feeds the contact
//! book — the SMTP and routing code unchanged.

use caliopen_instance::delivery::MailService;
use caliopen_instance::login::hash_password;
use caliopen_instance::mail::{
    contact_key, ContactRecord, Delivery, MessageMeta, PathClass, SeenLevel, UserStats, Via,
};
use caliopen_instance::mail::{Placement, Role};
use caliopen_instance::privacy::correspondence_of;
use caliopen_instance::privacy::public::LevelEntry;
use caliopen_instance::smtp::server::{ListenerConfig, SmtpListener};
use caliopen_instance::smtp::session::Kind;
use caliopen_instance::store::{
    path_class, MailStore, Recipients, StoreError, StoreFuture, UserRecord,
};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Default)]
struct Mem {
    users: HashMap<String, UserRecord>,
    messages: BTreeMap<u64, (MessageMeta, Vec<u8>)>,
    txns: HashMap<Vec<u8>, Vec<u64>>,
    contacts: BTreeMap<Vec<u8>, ContactRecord>,
    stats: HashMap<String, UserStats>,
    next: u64,
}

/// Everything under one lock: each call is atomic; "durable" means in memory here.
#[derive(Debug, Default, Clone)]
struct MemStore(Arc<Mutex<Mem>>);

impl MemStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.0.lock().expect("lock")
    }
}

impl MailStore for MemStore {
    fn set_domains(&self, _domains: &[String]) {}
    fn user_exists(&self, localpart: &str) -> bool {
        self.lock().users.contains_key(localpart)
    }
    fn user(&self, localpart: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.lock().users.get(localpart).cloned())
    }
    fn put_user<'a>(&'a self, localpart: &'a str, password_hash: &'a str) -> StoreFuture<'a, ()> {
        self.lock().users.insert(
            localpart.to_owned(),
            UserRecord {
                password_hash: password_hash.to_owned(),
                created_at: 0,
            },
        );
        Box::pin(async { Ok(()) })
    }
    fn deliver_once<'a>(
        &'a self,
        template: &'a MessageMeta,
        recipients: &'a Recipients,
        raw: &'a [u8],
        txn_id: Option<&'a [u8]>,
    ) -> StoreFuture<'a, (Vec<u64>, bool)> {
        let corr = correspondence_of(raw, &template.from, template.received_at);
        let mut m = self.lock();
        if let Some(prev) = txn_id.and_then(|t| m.txns.get(t)) {
            let prev = prev.clone();
            return Box::pin(async move { Ok((prev, true)) });
        }
        let mut ids = Vec::new();
        for d in recipients {
            let mailbox = &d.owner;
            m.next += 1;
            let id = m.next;
            // This engine keeps one flat mailbox per account: the inbox.
            let meta = MessageMeta {
                id,
                owner: mailbox.clone(),
                to: d.to.clone(),
                size: raw.len(),
                placements: vec![Placement {
                    mailbox: Role::Inbox.id(),
                    uid: id as u32,
                }],
                keywords: d.keywords.clone(),
                ..template.clone()
            };
            m.messages.insert(id, (meta, raw.to_vec()));
            let class = path_class(template);
            let stats = m.stats.entry(mailbox.clone()).or_default();
            stats.received.count(class, corr.encrypted, corr.signed);
            if let Some(author) = &corr.author {
                let c = m
                    .contacts
                    .entry(contact_key(mailbox, author))
                    .or_insert_with(|| ContactRecord {
                        address: author.clone(),
                        ..Default::default()
                    });
                c.received.count(class, corr.encrypted, corr.signed);
            }
            ids.push(id);
        }
        if let Some(t) = txn_id {
            m.txns.insert(t.to_vec(), ids.clone());
        }
        Box::pin(async move { Ok((ids, false)) })
    }
    fn record_sent<'a>(
        &'a self,
        owner: &'a str,
        recipients: &'a [(String, PathClass)],
        _raw: &'a [u8],
        _now: i64,
    ) -> StoreFuture<'a, ()> {
        let mut m = self.lock();
        for (addr, path) in recipients {
            m.contacts
                .entry(contact_key(owner, addr))
                .or_insert_with(|| ContactRecord {
                    address: addr.clone(),
                    ..Default::default()
                })
                .sent
                .count(*path, false, false);
        }
        Box::pin(async { Ok(()) })
    }
    fn list(&self, mailbox: &str) -> Result<Vec<MessageMeta>, StoreError> {
        Ok(self
            .lock()
            .messages
            .values()
            .filter(|(m, _)| m.owner == mailbox)
            .map(|(m, _)| m.clone())
            .collect())
    }
    fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError> {
        Ok(self.lock().messages.get(&id).map(|(m, _)| m.clone()))
    }
    fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().messages.get(&id).map(|(_, r)| r.clone()))
    }
    fn body(&self, blob: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .messages
            .values()
            .find(|(m, _)| m.blob_id() == blob)
            .map(|(_, r)| r.clone()))
    }
    fn contacts(&self, owner: &str) -> Result<Vec<ContactRecord>, StoreError> {
        let prefix = contact_key(owner, "");
        Ok(self
            .lock()
            .contacts
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, c)| c.clone())
            .collect())
    }
    fn contact(&self, owner: &str, address: &str) -> Result<Option<ContactRecord>, StoreError> {
        Ok(self
            .lock()
            .contacts
            .get(&contact_key(owner, address))
            .cloned())
    }
    fn set_seen_level<'a>(
        &'a self,
        owner: &'a str,
        address: &'a str,
        seen: Option<SeenLevel>,
        _now: i64,
    ) -> StoreFuture<'a, ()> {
        self.lock()
            .contacts
            .entry(contact_key(owner, address))
            .or_default()
            .public_level = seen;
        Box::pin(async { Ok(()) })
    }
    fn user_stats(&self, localpart: &str) -> Result<UserStats, StoreError> {
        Ok(self
            .lock()
            .stats
            .get(localpart)
            .cloned()
            .unwrap_or_default())
    }
    fn set_public_opt_out<'a>(&'a self, localpart: &'a str, opt_out: bool) -> StoreFuture<'a, ()> {
        self.lock()
            .stats
            .entry(localpart.to_owned())
            .or_default()
            .public_opt_out = opt_out;
        Box::pin(async { Ok(()) })
    }
    fn public_bucket(
        &self,
        _prefix: &[u8],
        _bits: u32,
        _cap: usize,
    ) -> Result<Option<Vec<LevelEntry>>, StoreError> {
        Ok(Some(Vec::new()))
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn message_count(&self) -> usize {
        self.lock().messages.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_runs_over_another_engine() {
    let store = MemStore::default();
    store
        .put_user("alice", &hash_password("secret").expect("hash"))
        .await
        .expect("user");
    let svc = MailService::new(store.clone(), vec!["alpha.test".into()]);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let l = SmtpListener::bind(
        "127.0.0.1:0".parse().expect("addr"),
        ListenerConfig::new(Kind::Mx, "mx.alpha.test"),
    )
    .await
    .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tracker.spawn(l.run(svc.clone(), token.clone(), tracker.clone()));

    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.sendmail("bob@example.test", ["alice@alpha.test"], b"From: Bob <bob@example.test>\r\nTo: alice@alpha.test\r\nSubject: any engine\r\n\r\nHello.\r\n")
try:
    s.sendmail("bob@example.test", ["nobody@alpha.test"], b"Subject: x\r\n\r\nx\r\n")
    raise SystemExit("an unknown user was accepted")
except smtplib.SMTPRecipientsRefused:
    pass
s.quit()
"#
    );
    let o = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .expect("python3")
    })
    .await
    .expect("join");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let list = store.list("alice").expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].subject, "any engine");
    assert_eq!(list[0].via, Via::Smtp);
    let c = store
        .contact("alice", "bob@example.test")
        .expect("contact")
        .expect("bob is a contact");
    assert_eq!(c.received.messages, 1);
    // Idempotence through the interface.
    let (first, dup) = svc
        .store()
        .deliver_once(
            &list[0],
            &[Delivery::inbox("alice", vec![])],
            b"x",
            Some(b"txn"),
        )
        .await
        .expect("store");
    let (again, dup2) = svc
        .store()
        .deliver_once(
            &list[0],
            &[Delivery::inbox("alice", vec![])],
            b"x",
            Some(b"txn"),
        )
        .await
        .expect("store");
    assert!(!dup && dup2 && first == again);
    assert_eq!(store.message_count(), 2);

    token.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("drained");
}

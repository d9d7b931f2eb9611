//! The mail model over sled: paging, threads, shared bytes, and the
//! invariants of UIDs, modseqs, changes and quotas under random operation
//! sequences (seeded, so that a failure replays).

use super::*;
use crate::mail::{Mailbox, MailboxId, Role};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::test_util::runtime;

fn template() -> MessageMeta {
    MessageMeta {
        from: "x@ext.test".into(),
        subject: "page".into(),
        via: Via::Smtp,
        ..Default::default()
    }
}

async fn store_with(dir: &std::path::Path, users: &[&str]) -> Store {
    let store = Store::open(&dir.join("db")).expect("store");
    store.set_domains(&["alpha.test".to_owned()]);
    for u in users {
        store.put_user(u, "x").await.expect("user");
    }
    store
}

async fn deliver(store: &Store, owner: &str, raw: &str) -> u64 {
    let d = Delivery::inbox(owner, vec![format!("{owner}@alpha.test")]);
    store
        .deliver_local(&template(), &[d], raw.as_bytes())
        .await
        .expect("deliver")[0]
}

#[test]
fn a_mailbox_is_listed_in_pages_that_follow_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice", "bob"]).await;
        // bob's 25 messages, with alice's between them.
        let mut bobs = Vec::new();
        for i in 0..25 {
            let raw = format!("Subject: {i}\r\n\r\nhello\r\n");
            bobs.push(deliver(&store, "bob", &raw).await);
            if i % 8 == 0 {
                deliver(&store, "alice", &raw).await;
            }
        }
        let inbox = Role::Inbox.id();
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let (page, more) = store.list_page("bob", inbox, after, 10).expect("page");
            pages.push((page.len(), more));
            assert!(page.iter().all(|m| m.owner == "bob"));
            seen.extend(page.iter().map(|m| m.id));
            match page.last() {
                Some(last) if more => after = Some(last.id),
                _ => break,
            }
        }
        assert_eq!(pages, vec![(10, true), (10, true), (5, false)]);
        assert_eq!(seen, bobs, "every message once, oldest first");
        assert_eq!(store.list("bob").expect("list").len(), 25);
        let (page, more) = store.mailbox_page("bob", inbox, 25, 10).expect("page");
        assert!(page.is_empty() && !more);
        assert!(store
            .mailbox_page("bob", inbox, u32::MAX, 10)
            .expect("page")
            .0
            .is_empty());
        assert!(
            store.mailbox_page("bob", inbox, 0, 0).expect("page").1,
            "more after an empty page"
        );
        let uids: Vec<u32> = store
            .uids("bob", inbox)
            .expect("uids")
            .iter()
            .map(|u| u.0)
            .collect();
        assert_eq!(uids, (1..=25).collect::<Vec<u32>>());
    });
}

#[test]
fn replies_join_their_thread_by_reference_then_by_subject() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice"]).await;
        let root = deliver(
            &store,
            "alice",
            "Subject: Lunch\r\nMessage-ID: <a@x>\r\n\r\n.\r\n",
        )
        .await;
        let reply = deliver(
            &store,
            "alice",
            "Subject: Re: Lunch\r\nMessage-ID: <b@x>\r\nIn-Reply-To: <a@x>\r\n\r\n.\r\n",
        )
        .await;
        // A child that arrives before its parent: the parent joins it later.
        let orphan = deliver(
            &store,
            "alice",
            "Subject: Re: Dinner\r\nMessage-ID: <d2@x>\r\nReferences: <d1@x>\r\n\r\n.\r\n",
        )
        .await;
        let parent = deliver(
            &store,
            "alice",
            "Subject: Dinner\r\nMessage-ID: <d1@x>\r\n\r\n.\r\n",
        )
        .await;
        let by_subject = deliver(&store, "alice", "Subject: RE: lunch\r\n\r\n.\r\n").await;
        let unrelated = deliver(
            &store,
            "alice",
            "Subject: Lunch\r\nMessage-ID: <z@x>\r\n\r\n.\r\n",
        )
        .await;
        let thread = |id| store.meta(id).expect("meta").expect("there").thread;
        assert_eq!(thread(root), root);
        assert_eq!(thread(reply), root);
        assert_eq!(thread(parent), thread(orphan));
        assert_eq!(thread(by_subject), root);
        assert_eq!(
            thread(unrelated),
            unrelated,
            "not a reply: a thread of its own"
        );
        let ids: Vec<u64> = store
            .thread("alice", root)
            .expect("thread")
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![root, reply, by_subject]);
    });
}

#[test]
fn one_delivery_to_several_accounts_keeps_its_bytes_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice", "bob"]).await;
        let raw = b"Subject: both\r\n\r\nshared\r\n";
        let ds = [
            Delivery::inbox("alice", vec!["alice@alpha.test".into()]),
            Delivery::inbox("bob", vec!["bob@alpha.test".into()]),
            Delivery::sent_copy("alice", vec!["bob@alpha.test".into()]),
        ];
        let ids = store
            .deliver_local(&template(), &ds, raw)
            .await
            .expect("deliver");
        assert_eq!(store.body_count(), 1, "bytes stored once");
        for &id in &ids {
            assert_eq!(store.raw(id).expect("raw").as_deref(), Some(&raw[..]));
        }
        // Alice's two copies are two messages, each counted.
        assert_eq!(store.quota("alice").expect("quota").used.messages, 2);
        let sent = store.meta(ids[2]).expect("meta").expect("there");
        assert_eq!(sent.placements[0].mailbox, Role::Sent.id());
        assert!(sent.has_keyword("$seen"));
        assert_eq!(
            store.user_stats("alice").expect("stats").received.messages,
            1
        );
        store
            .remove_messages("alice", &ids[..1], None)
            .await
            .expect("destroy");
        store
            .remove_messages("alice", &ids[2..], None)
            .await
            .expect("destroy");
        assert_eq!(store.raw(ids[1]).expect("raw").as_deref(), Some(&raw[..]));
        store
            .remove_messages("bob", &ids[1..2], None)
            .await
            .expect("destroy");
        assert_eq!(
            store.body_count(),
            0,
            "the bytes go with the last reference"
        );
        assert_eq!(
            store.quota("alice").expect("quota").used,
            crate::mail::Usage::default()
        );
        // Another account's message is not this one's.
        let other = deliver(&store, "bob", "Subject: x\r\n\r\n.\r\n").await;
        let e = store.remove_messages("alice", &[other], None).await;
        assert!(matches!(
            e,
            Err(StoreError::Model(crate::mail::ModelError::NoMessage(_)))
        ));
        assert!(store.meta(other).expect("meta").is_some());
    });
}

#[test]
fn mailboxes_are_made_renamed_and_deleted_under_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice"]).await;
        let names = |s: &Store| -> Vec<String> {
            s.mailboxes("alice")
                .expect("list")
                .into_iter()
                .map(|b| b.name)
                .collect()
        };
        assert_eq!(
            names(&store),
            ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"]
        );
        let child = store
            .create_mailbox("alice", "Work/2026")
            .await
            .expect("create");
        assert_eq!(child.name, "Work/2026");
        assert!(
            names(&store).contains(&"Work".to_owned()),
            "the parent is made too"
        );
        let e = store.create_mailbox("alice", "Work").await;
        assert!(matches!(
            e,
            Err(StoreError::Model(crate::mail::ModelError::NameTaken(_)))
        ));
        assert!(store.create_mailbox("alice", "inbox").await.is_err());
        let work = store
            .mailbox_named("alice", "Work")
            .expect("find")
            .expect("there");
        let id = deliver(&store, "alice", "Subject: w\r\n\r\n.\r\n").await;
        store
            .move_messages("alice", &[id], Role::Inbox.id(), child.id)
            .await
            .expect("move");
        let e = store.delete_mailbox("alice", work.id).await;
        assert!(matches!(
            e,
            Err(StoreError::Model(crate::mail::ModelError::HasChildren(_)))
        ));
        store
            .rename_mailbox("alice", work.id, "Job")
            .await
            .expect("rename");
        assert!(
            names(&store).contains(&"Job/2026".to_owned()),
            "children follow"
        );
        let e = store.delete_mailbox("alice", Role::Trash.id()).await;
        assert!(matches!(
            e,
            Err(StoreError::Model(crate::mail::ModelError::RoleMailbox(_)))
        ));
        assert!(store
            .rename_mailbox("alice", Role::Inbox.id(), "Other")
            .await
            .is_err());
        assert_eq!(
            store
                .delete_mailbox("alice", child.id)
                .await
                .expect("delete"),
            1
        );
        assert!(
            store.meta(id).expect("meta").is_none(),
            "its only message left the account"
        );
        assert_eq!(store.quota("alice").expect("quota").used.messages, 0);
        let again = store
            .create_mailbox("alice", "Job/2026")
            .await
            .expect("again");
        assert_ne!(again.id, child.id, "mailbox ids are never reused");
    });
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// What the model must show after every operation.
fn check_invariants(store: &Store, owner: &str, ever: &mut BTreeMap<MailboxId, u32>) {
    let boxes: Vec<Mailbox> = store.mailboxes(owner).expect("mailboxes");
    let mut ids: BTreeSet<u64> = BTreeSet::new();
    for b in &boxes {
        let uids = store.uids(owner, b.id).expect("uids");
        let mut unseen = 0;
        let mut last = 0;
        for (uid, id) in &uids {
            assert!(*uid > last, "UIDs in order");
            assert!(*uid < b.uid_next, "UID below UIDNEXT");
            last = *uid;
            let m = store
                .meta(*id)
                .expect("meta")
                .expect("an indexed message exists");
            assert_eq!(m.uid_in(b.id), Some(*uid), "index and record agree");
            unseen += u64::from(!m.has_keyword("$seen"));
            ids.insert(*id);
        }
        assert_eq!(b.total, uids.len() as u64, "{}: total", b.name);
        assert_eq!(b.unseen, unseen, "{}: unseen", b.name);
        let high = ever.entry(b.id).or_insert(0);
        assert!(
            b.uid_next > *high || b.uid_next == 1,
            "UIDNEXT never goes back"
        );
        *high = (*high).max(b.uid_next - 1);
    }
    let q = store.quota(owner).expect("quota");
    let bytes: u64 = ids
        .iter()
        .map(|i| store.meta(*i).expect("meta").expect("there").size as u64)
        .sum();
    assert_eq!(
        q.used.messages,
        ids.len() as u64,
        "quota messages = messages held"
    );
    assert_eq!(q.used.bytes, bytes, "quota bytes = sum of sizes");
}

#[test]
fn uids_modseqs_changes_and_quota_hold_under_random_operations() {
    for seed in [1u64, 7, 42, 1234, 99_991] {
        let dir = tempfile::tempdir().expect("tempdir");
        runtime().block_on(random_run(dir.path(), seed, 400));
    }
}

async fn random_run(dir: &std::path::Path, seed: u64, steps: usize) {
    let store = store_with(dir, &["alice"]).await;
    let owner = "alice";
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut ever: BTreeMap<MailboxId, u32> = BTreeMap::new();
    // Every (mailbox, UID) ever given: none is given twice.
    let mut given: HashMap<(MailboxId, u32), u64> = HashMap::new();
    let mut folders: Vec<MailboxId> = Role::ALL.iter().map(|r| r.id()).collect();
    let kws = ["$seen", "$flagged", "$answered", "work", "$junk"];
    for step in 0..steps {
        let before = store.state(owner).expect("state");
        let live: Vec<u64> = {
            let mut v = BTreeSet::new();
            for b in store.mailboxes(owner).expect("boxes") {
                for (_, id) in store.uids(owner, b.id).expect("uids") {
                    v.insert(id);
                }
            }
            v.into_iter().collect()
        };
        let pick = |rng: &mut Rng, n: usize| -> Vec<u64> {
            let mut out: Vec<u64> = (0..n)
                .filter_map(|_| live.get(rng.below(live.len())).copied())
                .collect();
            out.sort();
            out.dedup();
            out
        };
        let mbx = folders[rng.below(folders.len())];
        // The messages this step changes (None: only mailboxes change).
        let expect: Option<BTreeSet<u64>> = match rng.below(10) {
            0..=2 => {
                let raw = format!("Subject: s{step}\r\n\r\n{}\r\n", "x".repeat(rng.below(300)));
                let d = crate::mail::Delivery {
                    mailbox: mbx,
                    keywords: if rng.below(2) == 0 {
                        vec!["$seen".into()]
                    } else {
                        vec![]
                    },
                    ..Delivery::inbox(owner, vec!["alice@alpha.test".into()])
                };
                let ids = store
                    .deliver_local(&template(), &[d], raw.as_bytes())
                    .await
                    .expect("deliver");
                Some(ids.into_iter().collect())
            }
            3 | 4 if !live.is_empty() => {
                let ids = pick(&mut rng, 3);
                let k = vec![kws[rng.below(kws.len())].to_owned()];
                let change = match rng.below(3) {
                    0 => KeywordChange::Add(k),
                    1 => KeywordChange::Remove(k),
                    _ => KeywordChange::Replace(k),
                };
                let olds: Vec<MessageMeta> = ids
                    .iter()
                    .map(|i| store.meta(*i).unwrap().unwrap())
                    .collect();
                let (news, _) = store
                    .set_keywords(owner, &ids, &change)
                    .await
                    .expect("keywords");
                Some(
                    olds.iter()
                        .zip(&news)
                        .filter(|(o, n)| o.keywords != n.keywords)
                        .map(|(o, _)| o.id)
                        .collect(),
                )
            }
            5 if !live.is_empty() => {
                let ids = pick(&mut rng, 2);
                let olds: Vec<MessageMeta> = ids
                    .iter()
                    .map(|i| store.meta(*i).unwrap().unwrap())
                    .collect();
                store.copy(owner, &ids, mbx).await.expect("copy");
                Some(
                    olds.iter()
                        .filter(|o| o.uid_in(mbx).is_none())
                        .map(|o| o.id)
                        .collect(),
                )
            }
            6 if !live.is_empty() => {
                let id = pick(&mut rng, 1)[0];
                let old = store.meta(id).unwrap().unwrap();
                let from = old.placements[0].mailbox;
                store
                    .move_messages(owner, &[id], from, mbx)
                    .await
                    .expect("move");
                Some(if from == mbx {
                    BTreeSet::new()
                } else {
                    [id].into()
                })
            }
            7 if !live.is_empty() => {
                let id = pick(&mut rng, 1)[0];
                let old = store.meta(id).unwrap().unwrap();
                let from = old.placements[rng.below(old.placements.len())].mailbox;
                store
                    .remove_messages(owner, &[id], Some(from))
                    .await
                    .expect("expunge");
                Some([id].into())
            }
            8 => {
                let name = format!("F{}", rng.below(6));
                match store.create_mailbox(owner, &name).await {
                    Ok(b) => folders.push(b.id),
                    Err(StoreError::Model(crate::mail::ModelError::NameTaken(_))) => {}
                    Err(e) => panic!("create: {e}"),
                }
                None
            }
            9 if folders.len() > Role::ALL.len() => {
                let i = Role::ALL.len() + rng.below(folders.len() - Role::ALL.len());
                let id = folders.remove(i);
                let held: Vec<u64> = store
                    .uids(owner, id)
                    .expect("uids")
                    .into_iter()
                    .map(|u| u.1)
                    .collect();
                store.delete_mailbox(owner, id).await.expect("delete");
                Some(held.into_iter().collect())
            }
            _ => None,
        };
        let after = store.state(owner).expect("state");
        check_invariants(&store, owner, &mut ever);
        for b in store.mailboxes(owner).expect("boxes") {
            for (uid, id) in store.uids(owner, b.id).expect("uids") {
                let prev = given.insert((b.id, uid), id);
                assert!(
                    prev.is_none() || prev == Some(id),
                    "seed {seed} step {step}: UID {uid} reused in {}",
                    b.name
                );
            }
        }
        let Some(expect) = expect else { continue };
        if expect.is_empty() {
            continue;
        }
        assert!(
            after > before,
            "seed {seed} step {step}: a change bumps the modseq"
        );
        let ch = store
            .changes_since(owner, before, usize::MAX)
            .expect("changes");
        let got: BTreeSet<u64> = ch
            .created
            .iter()
            .chain(&ch.updated)
            .map(|m| m.id)
            .chain(ch.removed.iter().map(|t| t.id))
            .collect();
        assert_eq!(
            got, expect,
            "seed {seed} step {step}: changes since the state before"
        );
        assert_eq!(ch.new_state, after);
        assert!(!ch.more);
        assert!(ch
            .created
            .iter()
            .chain(&ch.updated)
            .all(|m| m.modseq == after));
    }
    // The changes since the start, read page by page, add up to the whole.
    let mut since = 0;
    let mut pages = 0;
    loop {
        let ch = store.changes_since(owner, since, 7).expect("changes");
        pages += 1;
        assert!(ch.new_state >= since);
        since = ch.new_state;
        if !ch.more {
            break;
        }
    }
    assert_eq!(since, store.state(owner).expect("state"));
    assert!(pages > 1 || steps < 20);
}

#[test]
fn quota_use_is_exact_and_limits_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice"]).await;
        store.set_quota_default(crate::mail::QuotaLimits {
            bytes: 100,
            messages: 0,
        });
        let q = store.quota("alice").expect("quota");
        assert!(!q.full() && !q.overridden);
        deliver(&store, "alice", &"x".repeat(120)).await;
        assert!(store.quota("alice").expect("quota").full());
        let own = store
            .set_quota(
                "alice",
                Some(crate::mail::QuotaLimits {
                    bytes: 0,
                    messages: 5,
                }),
            )
            .await
            .expect("set");
        assert!(own.overridden && !own.full());
        assert_eq!(own.used.bytes, 120);
        assert_eq!(
            store
                .set_quota("alice", None)
                .await
                .expect("back")
                .limits
                .bytes,
            100
        );
    });
}

#[test]
fn changes_of_one_account_never_show_in_another() {
    // Regression: the change-log ranges ran to the next tag, through the
    // keys of every account whose name sorts after (alice saw bob's expunges).
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice", "bob"]).await;
        let a = deliver(&store, "alice", "Subject: a\r\n\r\nx\r\n").await;
        let since = store.state("alice").expect("state");
        let b1 = deliver(&store, "bob", "Subject: b1\r\n\r\nx\r\n").await;
        let b2 = deliver(&store, "bob", "Subject: b2\r\n\r\nx\r\n").await;
        store
            .remove_messages("bob", &[b1], None)
            .await
            .expect("remove");
        store
            .delete_mailbox(
                "bob",
                store.create_mailbox("bob", "Tmp").await.expect("mk").id,
            )
            .await
            .expect("rm");
        store
            .set_keywords("bob", &[b2], &KeywordChange::Add(vec!["$seen".into()]))
            .await
            .expect("kw");
        for from in [0, since] {
            let c = store.changes_since("alice", from, 1000).expect("changes");
            assert!(c.removed.is_empty(), "{c:?}");
            assert!(c.mailboxes_destroyed.is_empty(), "{c:?}");
            assert!(
                c.created
                    .iter()
                    .chain(&c.updated)
                    .all(|m| m.owner == "alice" && m.id == a),
                "{c:?}"
            );
        }
    });
}

#[test]
fn json_records_read_and_are_rewritten_binary_at_their_next_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice"]).await;
        let id = deliver(&store, "alice", "Subject: old\r\n\r\nbody\r\n").await;
        let key = id.to_be_bytes();
        let stored = store.messages.get(key).expect("get").expect("record");
        assert_eq!(stored[0], 1, "new records are binary");
        // As a schema 2 release wrote it.
        let meta = store.meta(id).expect("meta").expect("some");
        let json = serde_json::to_vec(&meta).expect("json");
        store.messages.insert(key, json).expect("insert");
        assert_eq!(store.meta(id).expect("meta").expect("some"), meta);
        assert_eq!(store.list("alice").expect("list"), vec![meta.clone()]);
        let change = KeywordChange::Add(vec!["$seen".into()]);
        store
            .set_keywords("alice", &[id], &change)
            .await
            .expect("keywords");
        let stored = store.messages.get(key).expect("get").expect("record");
        assert_eq!(stored[0], 1, "rewritten binary");
        let now = store.meta(id).expect("meta").expect("some");
        assert_eq!(now.keywords, vec!["$seen".to_owned()]);
        assert_eq!((now.subject.as_str(), now.size), ("page", meta.size));
    });
}

#[test]
fn a_data_directory_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let store = store_with(dir.path(), &["alice"]).await;
        store
            .mail
            .insert(
                model::KEY_VERSION,
                &(model::SCHEMA_VERSION + 1).to_be_bytes(),
            )
            .expect("version");
        store.flush().await.expect("flush");
        drop(store);
        let err = Store::open(&dir.path().join("db")).expect_err("newer");
        assert!(
            matches!(err, StoreError::Newer { found, known } if found == known + 1),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this release"), "{err}");
    });
}

//! The router over the real store: aliases, plus-addressing, catch-all,
//! quotas and sent copies.

use super::*;
use crate::mail::{QuotaLimits, Role};
use crate::smtp::session::{Kind, Policy, RcptVerdict};
use crate::store::Store;

use crate::test_util::runtime;

async fn service(dir: &std::path::Path) -> (MailService, Store) {
    let store = Store::open(&dir.join("db")).expect("store");
    let svc = MailService::new(store.clone(), vec!["alpha.test".into(), "beta.test".into()]);
    for u in ["alice", "bob", "carol"] {
        store.put_user(u, "x").await.expect("user");
    }
    (svc, store)
}

fn msg(subject: &str) -> Vec<u8> {
    format!("From: x@ext.test\r\nSubject: {subject}\r\n\r\nhello\r\n").into_bytes()
}

async fn accept(svc: &MailService, to: &[&str], subject: &str) -> Result<Routed, DeliveryError> {
    let to: Vec<String> = to.iter().map(|s| (*s).to_owned()).collect();
    svc.accept(
        "x@ext.test",
        &to,
        &msg(subject),
        Transport::default(),
        Via::Smtp,
    )
    .await
}

#[test]
fn aliases_plus_addresses_and_catch_all_reach_their_accounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (svc, store) = service(dir.path()).await;
        store
            .put_alias("team@alpha.test", &["alice".into(), "bob".into()])
            .await
            .expect("alias");
        store.create_mailbox("alice", "News").await.expect("folder");
        // An alias reaches each account once, even named twice.
        let r = accept(&svc, &["team@alpha.test", "alice@alpha.test"], "team")
            .await
            .expect("ok");
        assert_eq!(r.stored.len(), 2, "alice once, bob once");
        let alice = store.meta(r.stored[0]).expect("meta").expect("there");
        assert_eq!(alice.to, ["team@alpha.test", "alice@alpha.test"]);
        // A detail files into the folder of that name (case aside), or becomes a keyword.
        let r = accept(&svc, &["alice+news@alpha.test"], "news")
            .await
            .expect("ok");
        let m = store.meta(r.stored[0]).expect("meta").expect("there");
        let news = store
            .mailbox_named("alice", "News")
            .expect("find")
            .expect("there");
        assert_eq!(m.placements[0].mailbox, news.id);
        let r = accept(&svc, &["bob+shop@alpha.test"], "shop")
            .await
            .expect("ok");
        let m = store.meta(r.stored[0]).expect("meta").expect("there");
        assert_eq!(m.placements[0].mailbox, Role::Inbox.id());
        assert_eq!(m.keywords, ["shop"]);
        // No catch-all: unknown. With one: it lands.
        assert!(matches!(
            accept(&svc, &["nobody@beta.test"], "x").await,
            Err(DeliveryError::NoRoute(_))
        ));
        assert_eq!(
            svc.rcpt(Kind::Mx, false, "nobody@beta.test"),
            RcptVerdict::UnknownUser
        );
        store
            .put_alias("@beta.test", &["carol".into()])
            .await
            .expect("catch-all");
        assert_eq!(
            svc.rcpt(Kind::Mx, false, "nobody@beta.test"),
            RcptVerdict::Accept
        );
        let r = accept(&svc, &["nobody@beta.test"], "caught")
            .await
            .expect("ok");
        assert_eq!(
            store.meta(r.stored[0]).expect("meta").expect("there").owner,
            "carol"
        );
        // The catch-all does not take mail for a real account.
        let r = accept(&svc, &["bob@beta.test"], "real").await.expect("ok");
        assert_eq!(
            store.meta(r.stored[0]).expect("meta").expect("there").owner,
            "bob"
        );
        // Submitters may send as an alias that reaches them, not as another's.
        assert!(svc.may_send_as("alice@alpha.test", "team@alpha.test"));
        assert!(svc.may_send_as("alice@alpha.test", "alice+x@beta.test"));
        assert!(!svc.may_send_as("carol@alpha.test", "team@alpha.test"));
        assert!(!svc.may_send_as("alice@alpha.test", "bob@alpha.test"));
        // A removed account leaves its aliases; an alias left empty goes.
        store
            .put_alias("solo@alpha.test", &["bob".into()])
            .await
            .expect("alias");
        assert!(store.remove_user("bob").await.expect("remove"));
        assert_eq!(
            store.alias("team@alpha.test"),
            Some(vec!["alice".to_owned()])
        );
        assert_eq!(store.alias("solo@alpha.test"), None);
        assert!(store.mailboxes("bob").is_err(), "its account is gone");
        assert!(matches!(
            accept(&svc, &["bob@alpha.test"], "late").await,
            Err(DeliveryError::NoRoute(_))
        ));
    });
}

#[test]
fn a_full_mailbox_refuses_for_now_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (svc, store) = service(dir.path()).await;
        store
            .set_quota(
                "bob",
                Some(QuotaLimits {
                    bytes: 0,
                    messages: 2,
                }),
            )
            .await
            .expect("quota");
        for i in 0..2 {
            accept(&svc, &["bob@alpha.test"], &format!("{i}"))
                .await
                .expect("room");
        }
        assert_eq!(
            svc.rcpt(Kind::Mx, false, "bob@alpha.test"),
            RcptVerdict::MailboxFull
        );
        assert!(matches!(
            accept(&svc, &["bob@alpha.test"], "full").await,
            Err(DeliveryError::MailboxFull(_))
        ));
        // With another recipient that has room, bob is skipped and the rest lands.
        let r = accept(&svc, &["bob@alpha.test", "alice@alpha.test"], "some")
            .await
            .expect("ok");
        assert_eq!(r.stored.len(), 1);
        assert_eq!(store.quota("bob").expect("quota").used.messages, 2);
        // Freeing space opens the mailbox again.
        let first = store.list("bob").expect("list")[0].id;
        store
            .remove_messages("bob", &[first], None)
            .await
            .expect("remove");
        assert_eq!(
            svc.rcpt(Kind::Mx, false, "bob@alpha.test"),
            RcptVerdict::Accept
        );
    });
}

#[test]
fn a_submission_is_kept_in_the_senders_sent_mailbox_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (svc, store) = service(dir.path()).await;
        let t = Transport {
            auth_user: Some("alice@alpha.test".into()),
            ..Default::default()
        };
        let r = svc
            .accept(
                "alice@alpha.test",
                &["bob@alpha.test".into(), "carol@alpha.test".into()],
                &msg("hello both"),
                t,
                Via::Local,
            )
            .await
            .expect("ok");
        assert_eq!(r.stored.len(), 3, "bob, carol, alice's sent copy");
        let sent = store
            .mailbox_page("alice", Role::Sent.id(), 0, 10)
            .expect("sent")
            .0;
        assert_eq!(sent.len(), 1);
        assert!(sent[0].has_keyword("$seen"));
        assert_eq!(sent[0].to, ["bob@alpha.test", "carol@alpha.test"]);
        assert!(store.list("alice").expect("inbox").is_empty());
        let stats = store.user_stats("alice").expect("stats");
        assert_eq!((stats.sent.messages, stats.received.messages), (1, 0));
        let boxes = store.mailboxes("alice").expect("boxes");
        let sent_box = boxes
            .iter()
            .find(|b| b.id == Role::Sent.id())
            .expect("sent");
        assert_eq!((sent_box.total, sent_box.unseen), (1, 0));
    });
}

/// A mesh outlet that records what it is given.
#[derive(Debug, Default)]
struct RecordingMesh {
    got: std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl MeshOutlet for RecordingMesh {
    fn member_for(&self, domain: &str) -> Option<String> {
        (domain == "gamma.test").then(|| "gamma".to_owned())
    }

    fn public_level<'a>(
        &'a self,
        _address: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<LevelAnswer>, String>> + Send + 'a>> {
        Box::pin(async { Ok(None) })
    }

    fn enqueue<'a>(
        &'a self,
        _member: &'a str,
        _mail_from: &'a str,
        _rcpt_to: Vec<String>,
        data: &'a [u8],
        identity: &'a [u8],
    ) -> OutletFuture<'a> {
        self.got
            .lock()
            .expect("lock")
            .push((data.to_vec(), identity.to_vec()));
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn mail_for_members_is_signed_but_keyed_by_the_submitted_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (svc, _store) = service(dir.path()).await;
        let keys = crate::dkim::DkimKeys::open(dir.path()).expect("keys");
        keys.ensure(&["alpha.test".into()], now_unix())
            .expect("ensure");
        svc.set_dkim(Arc::new(keys));
        let mesh = Arc::new(RecordingMesh::default());
        svc.set_mesh(mesh.clone());
        let data = b"From: alice@alpha.test\r\nTo: dan@gamma.test\r\nSubject: hi\r\n\r\nhello\r\n";
        let t = Transport {
            auth_user: Some("alice@alpha.test".into()),
            ..Default::default()
        };
        for _ in 0..2 {
            svc.accept(
                "alice@alpha.test",
                &["dan@gamma.test".into()],
                data,
                t.clone(),
                Via::Local,
            )
            .await
            .expect("accepted");
        }
        let got = mesh.got.lock().expect("lock").clone();
        assert_eq!(got.len(), 2);
        for (sent, identity) in &got {
            assert!(
                sent.starts_with(b"DKIM-Signature:"),
                "signed for the member"
            );
            assert!(sent.ends_with(data));
            // The member's idempotence key comes from what was submitted,
            // the same both times whatever the signatures' times.
            assert_eq!(identity.as_slice(), data.as_slice());
        }
        assert_eq!(
            svc.metrics()
                .dkim_signed
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    });
}

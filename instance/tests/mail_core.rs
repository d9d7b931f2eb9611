//! The mail core from outside, against the real binary: sent copies of a
//! submission, aliases and plus-addressing, the client API's mailboxes,
//! keywords, moves, changes, threads and quota, and a full mailbox
//! refused for now (452 4.2.2) by the MX, over Python's smtplib.

use caliopen_proto::pb::client as pb;
use caliopen_proto::pb::client::client_client::ClientClient;
use tonic::transport::Channel;

mod common;
mod reliab;

use reliab::{api_channel, python, submit, Instance};

const PW_A: &str = "Alice-correct-horse-42";
const PW_B: &str = "Bob-correct-horse-42";

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

async fn login(c: &mut ClientClient<Channel>, address: &str, password: &str) -> String {
    c.login(pb::LoginRequest {
        address: address.into(),
        password: password.into(),
    })
    .await
    .expect("login")
    .into_inner()
    .token
}

async fn list(c: &mut ClientClient<Channel>, t: &str, mailbox: u32) -> Vec<pb::MessageSummary> {
    c.list_messages(bearer(
        pb::ListMessagesRequest {
            mailbox,
            ..Default::default()
        },
        t,
    ))
    .await
    .expect("list")
    .into_inner()
    .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_keywords_moves_changes_and_quota_through_the_binary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut inst = Instance::init(tmp.path(), "a", "alpha.test", None, None, None);
    inst.set("api", "listen = \"127.0.0.1:0\"");
    inst.add_user("alice", PW_A);
    inst.add_user("bob", PW_B);
    inst.start();
    let c = inst.c().to_owned();
    common::caliopen_ok(
        &[
            "alias",
            "add",
            "--config",
            &c,
            "team@alpha.test",
            "alice",
            "bob",
        ],
        None,
    );

    // Alice writes to the team and to bob's plus address.
    let (ok, out) = submit(
        &inst,
        "alice@alpha.test",
        PW_A,
        "PLAIN",
        &[(
            vec!["team@alpha.test".into(), "bob+lists@alpha.test".into()],
            "Team news".into(),
        )],
    );
    assert!(ok, "{out}");
    inst.wait_for("bob", 1, std::time::Duration::from_secs(10));

    let ch = api_channel(&inst, "alpha.test").await;
    let mut c_api = ClientClient::new(ch);
    let ta = login(&mut c_api, "alice@alpha.test", PW_A).await;
    let tb = login(&mut c_api, "bob@alpha.test", PW_B).await;

    // Alice: six role mailboxes; her copy in Sent, read; one in her inbox (via the alias).
    let boxes = c_api
        .list_mailboxes(bearer(pb::ListMailboxesRequest {}, &ta))
        .await
        .expect("mailboxes")
        .into_inner();
    let roles: Vec<&str> = boxes.mailboxes.iter().map(|b| b.role.as_str()).collect();
    assert_eq!(
        roles,
        ["inbox", "sent", "drafts", "trash", "junk", "archive"]
    );
    let sent_id = boxes.mailboxes[1].id;
    let sent = list(&mut c_api, &ta, sent_id).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].keywords, ["$seen"]);
    assert_eq!(sent[0].to, ["team@alpha.test", "bob+lists@alpha.test"]);
    assert_eq!(list(&mut c_api, &ta, 0).await.len(), 1);

    // Bob: one copy for both of his addresses.
    let inbox = list(&mut c_api, &tb, 0).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    let msg = inbox[0].clone();
    let state0 = c_api
        .list_mailboxes(bearer(pb::ListMailboxesRequest {}, &tb))
        .await
        .expect("mailboxes")
        .into_inner()
        .state;

    // Flag it, then read what changed.
    let r = c_api
        .set_keywords(bearer(
            pb::SetKeywordsRequest {
                ids: vec![msg.id.clone()],
                add: vec!["$flagged".into(), "\\Seen".into()],
                ..Default::default()
            },
            &tb,
        ))
        .await
        .expect("keywords")
        .into_inner();
    assert!(r.state > state0);
    let ch1 = c_api
        .changes(bearer(
            pb::ChangesRequest {
                since: state0,
                limit: 0,
            },
            &tb,
        ))
        .await
        .expect("changes")
        .into_inner();
    assert!(ch1.created.is_empty());
    assert_eq!(ch1.updated.len(), 1);
    assert_eq!(ch1.updated[0].keywords, ["$flagged", "$seen"]);
    assert_eq!(ch1.new_state, r.state);
    let bad = c_api
        .set_keywords(bearer(
            pb::SetKeywordsRequest {
                ids: vec![msg.id.clone()],
                add: vec!["\\Deleted".into()],
                ..Default::default()
            },
            &tb,
        ))
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), tonic::Code::FailedPrecondition, "{bad}");

    // A folder; move the message there: its inbox UID is gone, a new UID there.
    let folder = c_api
        .create_mailbox(bearer(
            pb::CreateMailboxRequest {
                name: "Projects/2026".into(),
            },
            &tb,
        ))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(folder.name, "Projects/2026");
    let inbox_uid = msg.placements[0].uid;
    let mv = c_api
        .move_messages(bearer(
            pb::MoveMessagesRequest {
                ids: vec![msg.id.clone()],
                from: 1,
                to: folder.id,
            },
            &tb,
        ))
        .await
        .expect("move")
        .into_inner();
    assert_eq!(
        mv.placed[0].placement.as_ref().map(|p| (p.mailbox, p.uid)),
        Some((folder.id, 1))
    );
    let ch2 = c_api
        .changes(bearer(
            pb::ChangesRequest {
                since: r.state,
                limit: 0,
            },
            &tb,
        ))
        .await
        .expect("changes")
        .into_inner();
    assert_eq!(ch2.removed.len(), 1);
    assert!(!ch2.removed[0].destroyed);
    assert_eq!(ch2.removed[0].removed[0].mailbox, 1);
    assert_eq!(ch2.removed[0].removed[0].uid, inbox_uid);
    assert_eq!(ch2.updated.len(), 1);
    assert!(ch2.mailboxes_changed.contains(&folder.id));
    assert!(list(&mut c_api, &tb, 0).await.is_empty());
    let thread = c_api
        .get_thread(bearer(
            pb::GetThreadRequest {
                thread: msg.thread.clone(),
            },
            &tb,
        ))
        .await
        .expect("thread")
        .into_inner();
    assert_eq!(thread.messages.len(), 1);

    // Alice cannot touch bob's message.
    let e = c_api
        .remove_messages(bearer(
            pb::RemoveMessagesRequest {
                ids: vec![msg.id.clone()],
                from: 0,
            },
            &ta,
        ))
        .await
        .expect_err("not hers");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // The quota counts it; removing it frees the space.
    let q = c_api
        .get_quota(bearer(pb::GetQuotaRequest {}, &tb))
        .await
        .expect("quota")
        .into_inner();
    assert_eq!(q.used_messages, 1);
    assert_eq!(q.used_bytes, msg.size);
    let del = c_api
        .delete_mailbox(bearer(pb::DeleteMailboxRequest { id: 1 }, &tb))
        .await
        .expect_err("the inbox stays");
    assert_eq!(del.code(), tonic::Code::FailedPrecondition, "{del}");
    c_api
        .remove_messages(bearer(
            pb::RemoveMessagesRequest {
                ids: vec![msg.id.clone()],
                from: 0,
            },
            &tb,
        ))
        .await
        .expect("remove");
    let q = c_api
        .get_quota(bearer(pb::GetQuotaRequest {}, &tb))
        .await
        .expect("quota")
        .into_inner();
    assert_eq!((q.used_messages, q.used_bytes), (0, 0));

    // A full mailbox: 452 4.2.2 at RCPT, from the MX, while alice still gets hers.
    common::caliopen_ok(
        &[
            "user",
            "quota",
            "--config",
            &c,
            "bob",
            "--messages",
            "0",
            "--bytes",
            "1",
        ],
        None,
    );
    assert!(reliab::send_mx(
        inst.smtp(),
        "x@ext.test",
        "alice@alpha.test",
        "fill"
    ));
    let port = inst.smtp().port();
    let (ok, out) = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.sendmail("x@ext.test", ["bob@alpha.test"], b"Subject: one\r\n\r\nx\r\n")
refused = s.sendmail("x@ext.test", ["bob@alpha.test", "alice@alpha.test"], b"Subject: two\r\n\r\nx\r\n")
print(refused)
s.quit()
"#
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("'bob@alpha.test': (452, b'4.2.2 Mailbox full, try again later')"),
        "{out}"
    );
    let users: serde_json::Value = serde_json::from_str(&common::caliopen_ok(
        &["user", "list", "--config", &c, "--json"],
        None,
    ))
    .expect("json");
    let bob = &users.as_array().expect("array")[1];
    assert_eq!(
        bob["messages"], 1,
        "one message took it over its limit, no more"
    );
    assert_eq!(bob["quota"]["limit_bytes"], 1);
    assert_eq!(bob["quota"]["own_limits"], true);
}

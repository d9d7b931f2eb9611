//! The session over the real store, without sockets: every response we
//! write is decoded by imap-codec's response parser (an independent check
//! of our serializer), over the committed mail corpus; a read-only script
//! gives the same answers whatever the byte splits of its input.

use super::session::{Action, Session, SessionConfig};
use crate::delivery::MailService;
use crate::mail::{Transport, Via};
use crate::store::Store;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::response::{Data, Response, Status};
use imap_codec::ResponseCodec;
use std::sync::Arc;
use std::time::Instant;

use crate::test_util::runtime;

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/eml");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    v.sort();
    v.into_iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

async fn service(dir: &std::path::Path) -> MailService {
    let store = Store::open(&dir.join("db")).expect("store");
    let creds = crate::login::Credentials::with_verifier(
        crate::login::CredentialsConfig::default(),
        Arc::new(|hash: &str, pw: &[u8]| hash.as_bytes() == pw),
    );
    let svc = MailService::new(store.clone(), vec!["alpha.test".into()]).with_credentials(creds);
    store.put_user("alice", "pw-alice").await.expect("user");
    store.put_user("bob", "pw-bob").await.expect("user");
    for raw in corpus() {
        svc.accept(
            "x@ext.test",
            &["alice@alpha.test".to_owned()],
            &raw,
            Transport::default(),
            Via::Smtp,
        )
        .await
        .expect("deliver");
    }
    svc
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mx.alpha.test".into(),
        starttls: true,
        append_limit: 1 << 20,
    }
}

/// Feeds `chunks` to a logged-out TLS session; returns all it wrote.
async fn run(svc: &MailService, chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = Session::new(svc.clone(), cfg(), None, true, Instant::now());
    let mut out = Vec::new();
    for c in chunks {
        s.reader.feed(c);
        while let Some(i) = s.reader.next() {
            let a = s.input(i, Instant::now(), &mut out).await;
            if a == Action::Close {
                return out;
            }
        }
    }
    out
}

/// Decodes every response in `out`; returns them (fails on the first bad one).
fn decode_all(out: &[u8]) -> Vec<Response<'static>> {
    use imap_codec::imap_types::IntoStatic;
    let codec = ResponseCodec::default();
    let mut rest = out;
    let mut v = Vec::new();
    while !rest.is_empty() {
        match codec.decode(rest) {
            Ok((r, resp)) => {
                v.push(resp.into_static());
                rest = r;
            }
            Err(e) => {
                let _ = std::fs::write(std::env::temp_dir().join("imap-undecodable.bin"), rest);
                let end = rest.len().min(300);
                panic!(
                    "undecodable response ({e:?}) at:\n{}",
                    String::from_utf8_lossy(&rest[..end])
                );
            }
        }
    }
    v
}

const SCRIPT: &[u8] = b"a0 CAPABILITY\r\na1 LOGIN alice@alpha.test pw-alice\r\n\
a2 ENABLE CONDSTORE\r\na3 LIST \"\" *\r\na4 NAMESPACE\r\na5 ID NIL\r\n\
a6 STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)\r\n\
a7 GETQUOTAROOT INBOX\r\na8 SELECT INBOX\r\n\
a9 FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE MODSEQ)\r\n\
b1 FETCH 1:* BODY\r\nb2 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)] BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[TEXT]<0.100>)\r\n\
b3 FETCH 1:3 (BODY.PEEK[] RFC822.HEADER)\r\nb4 SEARCH ALL\r\nb5 UID SEARCH UNSEEN FROM \"a\"\r\n\
b6 SEARCH OR SUBJECT test BODY hello\r\nb7 SEARCH SINCE 1-Jan-2000 NOT DELETED\r\n";

#[test]
fn every_response_decodes_with_imap_codec() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut script = SCRIPT.to_vec();
        script.extend_from_slice(
            b"c1 UID STORE 1:3 +FLAGS (\\Seen $Work)\r\nc2 STORE 4 FLAGS.SILENT (\\Deleted)\r\n\
c3 CREATE Archive/2026\r\nc4 UID COPY 1:2 Archive/2026\r\nc5 UID MOVE 3 Archive/2026\r\n\
c6 APPEND Drafts (\\Draft) {18}\r\nSubject: d\r\n\r\nbody\r\n\
c7 EXPUNGE\r\nc8 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)\r\nc9 STORE 1 +FLAGS (\\Bogus)\r\n\
d1 SELECT Nope\r\nd2 FETCH 1 FLAGS\r\nd3 SELECT Archive/2026\r\nd4 UID FETCH 1:* (UID FLAGS)\r\n\
d5 RENAME Archive/2026 Old\r\nd6 DELETE Old\r\nd7 garbage here\r\nd8 LOGOUT\r\n",
        );
        let out = run(&svc, &[&script]).await;
        let responses = decode_all(&out);
        let tagged: Vec<(String, String)> = responses
            .iter()
            .filter_map(|r| match r {
                Response::Status(Status::Tagged(t)) => {
                    Some((t.tag.as_ref().to_owned(), format!("{:?}", t.body.kind)))
                }
                _ => None,
            })
            .collect();
        let kind = |tag: &str| {
            tagged
                .iter()
                .find(|(t, _)| t == tag)
                .map(|(_, k)| k.clone())
                .unwrap_or_else(|| panic!("no answer to {tag}:\n{}", String::from_utf8_lossy(&out)))
        };
        for t in [
            "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9", "b1", "b2", "b3", "b4",
            "b5", "b6", "b7", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "d3", "d4", "d5",
            "d6", "d8",
        ] {
            assert_eq!(kind(t), "Ok", "{t}:\n{}", String::from_utf8_lossy(&out));
        }
        for t in ["c9", "d1", "d2"] {
            assert_eq!(kind(t), "No", "{t}");
        }
        // The FETCH of every corpus message gave one response each.
        let n = corpus().len();
        let fetches = responses
            .iter()
            .filter(|r| matches!(r, Response::Data(Data::Fetch { .. })))
            .count();
        assert!(
            fetches >= 4 * n,
            "{fetches} FETCH responses for {n} messages"
        );
        // The flags set here are the mail core's keywords.
        let metas = svc.store().list("alice").expect("list");
        assert!(metas
            .iter()
            .take(2)
            .all(|m| m.has_keyword("$seen") && m.has_keyword("$work")));
        assert!(!metas.iter().any(|m| m.has_keyword(super::session::DELETED)));
        assert_eq!(metas.len(), n - 2, "one moved away, one expunged");
    });
}

#[test]
fn a_read_only_script_answers_the_same_at_every_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let script = SCRIPT.replace_select_by_examine();
        let whole = run(&svc, &[&script]).await;
        decode_all(&whole);
        // Every split point would take minutes over the whole corpus; a
        // stride covers lines, literals and CRLF pairs.
        for i in (0..script.len()).step_by(7) {
            let got = run(&svc, &[&script[..i], &script[i..]]).await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&whole),
                "split at {i}"
            );
        }
    });
}

trait Examine {
    fn replace_select_by_examine(&self) -> Vec<u8>;
}

impl Examine for &[u8] {
    fn replace_select_by_examine(&self) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replace("a8 SELECT", "a8 EXAMINE")
            .into_bytes()
    }
}

#[test]
fn one_account_never_sees_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let out = run(
            &svc,
            &[b"a LOGIN bob@alpha.test pw-bob\r\nb SELECT INBOX\r\nc FETCH 1:* FLAGS\r\nd STATUS INBOX (MESSAGES)\r\n"],
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("* 0 EXISTS"), "{text}");
        assert!(text.contains("(MESSAGES 0)"), "{text}");
        assert!(!text.contains("FETCH ("), "{text}");
        let out = run(&svc, &[b"a LOGIN alice@alpha.test pw-bob\r\nb SELECT INBOX\r\n"]).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("a NO [AUTHENTICATIONFAILED]"), "{text}");
        assert!(text.contains("b NO log in first"), "{text}");
    });
}

#[test]
fn limits_end_in_protocol_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        // Before login: a big literal is refused, a flood of commands ends the connection.
        let out = run(&svc, &[b"a LOGIN {100000}\r\n"]).await;
        assert!(String::from_utf8_lossy(&out).starts_with("a BAD [TOOBIG]"));
        let flood = b"x NOOP\r\n".repeat(100);
        let out = run(&svc, &[&flood]).await;
        assert!(String::from_utf8_lossy(&out).contains("* BYE too many commands before login"));
        // An APPEND over the limit.
        let out = run(
            &svc,
            &[b"a LOGIN alice@alpha.test pw-alice\r\nb APPEND INBOX {2000000}\r\n"],
        )
        .await;
        assert!(
            String::from_utf8_lossy(&out).contains("b BAD [TOOBIG]"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    });
}

/// A session kept across calls.
struct Client {
    s: Session,
}

impl Client {
    async fn login(svc: &MailService, user: &str) -> Self {
        let mut c = Self {
            s: Session::new(svc.clone(), cfg(), None, true, Instant::now()),
        };
        let out = c
            .send(&format!("l LOGIN {user}@alpha.test pw-{user}\r\n"))
            .await;
        assert!(out.contains("l OK"), "{out}");
        c
    }

    async fn send(&mut self, text: &str) -> String {
        let out = self.send_bytes(text).await;
        decode_all(&out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// For answers imap-codec's parser does not know (ESEARCH).
    async fn send_undecoded(&mut self, text: &str) -> String {
        String::from_utf8_lossy(&self.send_bytes(text).await).into_owned()
    }

    async fn send_bytes(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.s.reader.feed(text.as_bytes());
        while let Some(i) = self.s.reader.next() {
            self.s.input(i, Instant::now(), &mut out).await;
        }
        out
    }
}

fn number_after(text: &str, key: &str) -> u64 {
    let i = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + key.len();
    text[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key} in {text}"))
}

#[test]
fn other_sessions_changes_reach_a_selected_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut a = Client::login(&svc, "alice").await;
        let mut b = Client::login(&svc, "alice").await;
        let sel = a.send("s SELECT INBOX\r\n").await;
        let n: u64 = sel
            .lines()
            .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
            .expect("EXISTS");
        b.send("s SELECT INBOX\r\n").await;
        // B flags message 2: A hears it at its next NOOP, once.
        b.send("f STORE 2 +FLAGS (\\Flagged)\r\n").await;
        let out = a.send("n NOOP\r\n").await;
        assert!(out.contains("* 2 FETCH (UID 2 FLAGS (\\Flagged"), "{out}");
        assert!(!a.send("n NOOP\r\n").await.contains("FETCH"));
        // B's own STORE is not echoed back to B.
        assert!(!b.send("n NOOP\r\n").await.contains("FETCH"));
        // B expunges message 1 and a new one arrives: A hears both.
        b.send("d STORE 1 +FLAGS (\\Deleted)\r\ne EXPUNGE\r\n")
            .await;
        svc.accept(
            "x@ext.test",
            &["alice@alpha.test".to_owned()],
            b"Subject: late\r\n\r\nhi\r\n",
            Transport::default(),
            Via::Smtp,
        )
        .await
        .expect("deliver");
        let out = a.send("n NOOP\r\n").await;
        assert!(out.contains("* 1 EXPUNGE"), "{out}");
        assert!(out.contains(&format!("* {n} EXISTS")), "{out}");
        // During FETCH nothing is expunged under the client's feet.
        b.send("d STORE 1 +FLAGS (\\Deleted)\r\ne EXPUNGE\r\n")
            .await;
        let out = a.send("f FETCH 1 (FLAGS)\r\n").await;
        assert!(!out.contains("EXPUNGE"), "{out}");
        let out = a.send("n NOOP\r\n").await;
        assert!(out.contains("* 1 EXPUNGE"), "{out}");
    });
}

#[test]
fn qresync_reports_what_vanished_and_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut a = Client::login(&svc, "alice").await;
        let out = a.send("e ENABLE QRESYNC\r\ns SELECT INBOX\r\n").await;
        assert!(out.contains("* ENABLED QRESYNC"), "{out}");
        let validity = number_after(&out, "UIDVALIDITY");
        let modseq = number_after(&out, "HIGHESTMODSEQ");
        a.send("l LOGOUT\r\n").await;

        let mut b = Client::login(&svc, "alice").await;
        let out = b
            .send("e ENABLE QRESYNC\r\ns SELECT INBOX\r\nd UID STORE 3,5 +FLAGS (\\Deleted)\r\nx UID EXPUNGE 3,5\r\nf UID STORE 7 +FLAGS (\\Seen)\r\n")
            .await;
        assert!(out.contains("* VANISHED 3,5"), "{out}");

        let mut c = Client::login(&svc, "alice").await;
        let out = c
            .send(&format!(
                "e ENABLE QRESYNC\r\ns SELECT INBOX (QRESYNC ({validity} {modseq}))\r\n"
            ))
            .await;
        assert!(out.contains("* VANISHED (EARLIER) 3,5"), "{out}");
        assert!(out.contains("FETCH (UID 7 FLAGS (\\Seen"), "{out}");
        let out = c
            .send(&format!("f UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)\r\n"))
            .await;
        assert!(out.contains("* VANISHED (EARLIER) 3,5"), "{out}");
        assert!(out.contains("UID 7"), "{out}");
        assert!(out.contains("f OK"), "{out}");
        // VANISHED without QRESYNC is refused.
        let mut d = Client::login(&svc, "alice").await;
        d.send("s SELECT INBOX\r\n").await;
        let out = d
            .send("f UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
            .await;
        assert!(out.contains("f BAD"), "{out}");
    });
}

#[test]
fn list_extended_special_use_and_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut a = Client::login(&svc, "alice").await;
        let out = a.send("c CAPABILITY\r\n").await;
        assert!(
            out.contains("SPECIAL-USE LIST-EXTENDED LIST-STATUS"),
            "{out}"
        );
        let out = a.send("l LIST (SPECIAL-USE) \"\" \"*\"\r\n").await;
        assert!(!out.contains("INBOX"), "{out}");
        assert!(out.contains("\\Sent) \"/\" Sent"), "{out}");
        assert_eq!(out.matches("* LIST").count(), 5, "{out}");
        let out = a
            .send("s LIST \"\" (INBOX Drafts) RETURN (SUBSCRIBED STATUS (MESSAGES UNSEEN))\r\n")
            .await;
        assert!(
            out.contains("* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX"),
            "{out}"
        );
        assert!(
            out.contains("* STATUS INBOX (MESSAGES 64 UNSEEN 64)"),
            "{out}"
        );
        assert!(
            out.contains("* STATUS Drafts (MESSAGES 0 UNSEEN 0)"),
            "{out}"
        );
        assert!(out.contains("s OK"), "{out}");
        let out = a.send("b LIST (SPECIAL-USE \"\" *\r\n").await;
        assert!(out.contains("b BAD"), "{out}");
    });
}

#[test]
fn copy_then_expunge_keeps_the_copy_unmarked() {
    // The "move" of clients without MOVE: COPY, STORE \Deleted, EXPUNGE.
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut a = Client::login(&svc, "alice").await;
        let out = a
            .send("s SELECT INBOX\r\nc UID COPY 1 Trash\r\nd UID STORE 1 +FLAGS (\\Deleted \\Recent)\r\nx UID EXPUNGE 1\r\n")
            .await;
        assert!(out.contains("x OK"), "{out}");
        let out = a.send("t SELECT Trash\r\nf FETCH 1 (FLAGS)\r\n").await;
        assert!(out.contains("* 1 EXISTS"), "{out}");
        assert!(out.contains("* 1 FETCH (FLAGS ($CaliopenPlain))"), "{out}");
        let out = a.send("e EXPUNGE\r\n").await;
        assert!(!out.contains("EXPUNGE\r\ne"), "{out}");
        assert!(a.send("f FETCH 1 (UID)\r\n").await.contains("* 1 FETCH"));
    });
}

#[test]
fn subject_searches_read_only_subjects_and_agree_with_the_full_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut a = Client::login(&svc, "alice").await;
        a.send("s SELECT INBOX\r\n").await;
        // `… ALL` is not a subject-only key: the general path answers it.
        let hits = |out: &str| {
            out.lines()
                .find(|l| l.starts_with("* SEARCH"))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let mut nonempty = 0;
        for q in [
            "SUBJECT re",
            "SUBJECT E",
            "HEADER Subject test",
            "HEADER SUBJECT \"the \"",
            "OR SUBJECT re NOT HEADER Subject e",
            "NOT SUBJECT a",
            "SUBJECT nothing-has-this-subject",
        ] {
            let fast = hits(&a.send(&format!("f SEARCH {q}\r\n")).await);
            let full = hits(&a.send(&format!("g SEARCH {q} ALL\r\n")).await);
            assert!(fast.starts_with("* SEARCH"), "{q}: {fast}");
            assert_eq!(fast, full, "{q}");
            if fast.len() > "* SEARCH".len() {
                nonempty += 1;
            }
        }
        assert!(nonempty >= 3, "the corpus has subjects that match");
    });
}

#[test]
fn esearch_answers_min_max_count_and_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let mut a = Client::login(&svc, "alice").await;
        a.send("s SELECT INBOX\r\nf STORE 2:4,9 +FLAGS (\\Flagged)\r\n")
            .await;
        let out = a
            .send_undecoded("e SEARCH RETURN (MIN MAX COUNT) FLAGGED\r\n")
            .await;
        assert!(
            out.contains("* ESEARCH (TAG \"e\") MIN 2 MAX 9 COUNT 4\r\n"),
            "{out}"
        );
        let out = a.send_undecoded("u UID SEARCH RETURN () FLAGGED\r\n").await;
        assert!(
            out.contains("* ESEARCH (TAG \"u\") UID ALL 2:4,9\r\n"),
            "{out}"
        );
        let out = a
            .send_undecoded("n SEARCH RETURN (COUNT) KEYWORD nothing\r\n")
            .await;
        assert!(out.contains("* ESEARCH (TAG \"n\") COUNT 0\r\n"), "{out}");
        assert!(a
            .send_undecoded("b SEARCH RETURN (SAVE) ALL\r\n")
            .await
            .contains("b BAD"));
    });
}

#[test]
fn a_big_fetch_is_answered_in_parts_with_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let svc = service(dir.path()).await;
        let script = "s EXAMINE INBOX\r\nf FETCH 1:* (UID BODY.PEEK[])\r\nn NOOP\r\n";
        let mut whole = Client::login(&svc, "alice").await;
        let want = whole.send_bytes(script).await;
        decode_all(&want);
        let mut parts = Client::login(&svc, "alice").await;
        parts.s.set_spill(Some(4096));
        let (mut out, mut sent) = (Vec::new(), Vec::new());
        let mut steps = 0;
        parts.s.reader.feed(script.as_bytes());
        while let Some(i) = parts.s.reader.next() {
            parts.s.input(i, Instant::now(), &mut out).await;
            while parts.s.busy() {
                // What a step wrote is bounded by the spill size and one message.
                assert!(out.len() < 4096 + 64 * 1024, "{}", out.len());
                sent.append(&mut out);
                steps += 1;
                parts.s.resume(&mut out).await;
            }
            sent.append(&mut out);
        }
        assert!(steps > 10, "{steps} steps");
        assert!(sent == want, "the answers in parts differ from the whole");
    });
}

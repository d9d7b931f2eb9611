use super::*;

struct TestPolicy;

impl Policy for TestPolicy {
    fn rcpt(&self, kind: Kind, authenticated: bool, address: &str) -> RcptVerdict {
        match address.rsplit_once('@') {
            Some((user, "alpha.test")) if user == "alice" || user == "bob" => RcptVerdict::Accept,
            Some((_, "alpha.test")) => RcptVerdict::UnknownUser,
            _ if kind == Kind::Submission && authenticated => RcptVerdict::Accept,
            _ => RcptVerdict::RelayDenied,
        }
    }
    fn may_send_as(&self, user: &str, address: &str) -> bool {
        user.eq_ignore_ascii_case(address)
    }
    fn header_from_allowed(&self, user: &str, data: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(data).to_ascii_lowercase();
        match text.lines().find(|l| l.starts_with("from:")) {
            Some(l) if !l.contains(&user.to_ascii_lowercase()) => {
                Err(format!("{user} may not send as {}", l[5..].trim()))
            }
            _ => Ok(()),
        }
    }
}

fn cfg(kind: Kind, tls: bool) -> SessionConfig {
    SessionConfig {
        hostname: "mx.alpha.test".into(),
        kind,
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 10,
        starttls: true,
        tls_active: tls,
    }
}

/// Drives a session over `input` split into `chunks`, storing every message
/// with success and accepting alice's password. Returns the reply text and the stored envelopes.
fn drive(mut s: Session, chunks: &[&[u8]]) -> (String, Vec<Envelope>) {
    let mut text = String::new();
    let mut stored = Vec::new();
    let pump = |s: &mut Session, text: &mut String, stored: &mut Vec<Envelope>| {
        while let Some(o) = s.poll(&TestPolicy) {
            match o {
                Output::Reply(r) => text.push_str(&String::from_utf8_lossy(&r)),
                Output::Store(e) => {
                    stored.push(e);
                    s.stored(Ok(format!("{}", stored.len())));
                }
                Output::CheckAuth { user, password } => {
                    s.auth_checked(if user == "alice@alpha.test" && password == "secret" {
                        AuthOutcome::Granted(user)
                    } else if password == "later" {
                        AuthOutcome::TryLater("too many failed logins; retry in 4 s".into())
                    } else {
                        AuthOutcome::Invalid
                    })
                }
                Output::StartTls => s.tls_started(),
                Output::Close => {}
            }
        }
    };
    pump(&mut s, &mut text, &mut stored);
    for c in chunks {
        s.feed(c);
        pump(&mut s, &mut text, &mut stored);
    }
    (text, stored)
}

fn codes(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect()
}

const SESSION: &[u8] = b"EHLO client.test\r\nMAIL FROM:<x@ext.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n";

#[test]
fn a_pipelined_session_split_at_every_byte_gives_the_same_result() {
    let (whole, stored) = drive(Session::new(cfg(Kind::Mx, false)), &[SESSION]);
    assert_eq!(
        codes(&whole),
        ["220", "250", "250", "250", "354", "250", "221"],
        "{whole}"
    );
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, b"Subject: hi\r\n\r\nhello\r\n.dot\r\n");
    assert_eq!(stored[0].rcpt_to, ["alice@alpha.test"]);
    for cut in 0..SESSION.len() {
        let (t, s) = drive(
            Session::new(cfg(Kind::Mx, false)),
            &[&SESSION[..cut], &SESSION[cut..]],
        );
        assert_eq!(t, whole, "cut {cut}");
        assert_eq!(s, stored, "cut {cut}");
    }
    let bytes: Vec<&[u8]> = SESSION.chunks(1).collect();
    assert_eq!(drive(Session::new(cfg(Kind::Mx, false)), &bytes).1, stored);
}

#[test]
fn mx_is_not_an_open_relay() {
    let (t, s) = drive(
        Session::new(cfg(Kind::Mx, false)),
        &[b"EHLO c\r\nMAIL FROM:<x@ext.test>\r\nRCPT TO:<y@elsewhere.test>\r\nRCPT TO:<nobody@alpha.test>\r\nDATA\r\n"],
    );
    assert_eq!(codes(&t), ["220", "250", "250", "550", "550", "554"], "{t}");
    assert!(t.contains("5.7.1 Relaying denied") && t.contains("5.1.1"));
    assert!(s.is_empty());
}

#[test]
fn oversize_messages_get_552_and_nothing_is_kept() {
    let big = vec![b'a'; 3000];
    let mut msg =
        b"EHLO c\r\nMAIL FROM:<x@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n".to_vec();
    msg.extend_from_slice(&big);
    msg.extend_from_slice(b"\r\n.\r\nMAIL FROM:<x@ext.test> SIZE=5000\r\nNOOP\r\n");
    let (t, s) = drive(Session::new(cfg(Kind::Mx, false)), &[&msg]);
    assert_eq!(
        codes(&t),
        ["220", "250", "250", "250", "354", "552", "552", "250"],
        "{t}"
    );
    assert!(s.is_empty());
}

#[test]
fn smuggling_sequences_do_not_end_the_message() {
    // <LF>.<LF> and <CR>.<CR> inside DATA are content, never an end of message.
    let msg = b"EHLO c\r\nMAIL FROM:<x@ext.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\nSubject: a\r\n\r\nfirst\n.\nMAIL FROM:<evil@ext.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\nsmuggled\r.\rstill\r\n.\r\n";
    let (t, s) = drive(Session::new(cfg(Kind::Mx, false)), &[msg]);
    assert_eq!(s.len(), 1, "{t}");
    assert_eq!(s[0].rcpt_to, ["bob@alpha.test"]);
    assert!(s[0].data.windows(8).any(|w| w == b"smuggled"));
    assert_eq!(codes(&t), ["220", "250", "250", "250", "354", "250"], "{t}");
}

#[test]
fn recipients_are_limited() {
    let msg = b"EHLO c\r\nMAIL FROM:<x@ext.test>\r\nRCPT TO:<alice@alpha.test>\r\nRCPT TO:<bob@alpha.test>\r\nRCPT TO:<alice@alpha.test>\r\nRCPT TO:<bob@alpha.test>\r\nRCPT TO:<alice@alpha.test>\r\n";
    let (t, _) = drive(
        Session::new(SessionConfig {
            max_recipients: 2,
            ..cfg(Kind::Mx, false)
        }),
        &[msg],
    );
    assert_eq!(
        codes(&t),
        ["220", "250", "250", "250", "250", "452", "452", "452"],
        "{t}"
    );
}

#[test]
fn submission_needs_tls_then_auth_then_own_address() {
    let (t, _) = drive(Session::new(cfg(Kind::Submission, false)), &[b"EHLO c\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAc2VjcmV0\r\nMAIL FROM:<alice@alpha.test>\r\n"]);
    assert!(!t.contains("AUTH PLAIN"), "AUTH offered without TLS: {t}");
    assert_eq!(codes(&t), ["220", "250", "538", "530"], "{t}");

    // After STARTTLS: EHLO again, AUTH PLAIN (alice@alpha.test / secret).
    let (t, s) = drive(
        Session::new(cfg(Kind::Submission, false)),
        &[
            b"EHLO c\r\nSTARTTLS\r\n",
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAd3Jvbmc=\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAc2VjcmV0\r\nMAIL FROM:<bob@alpha.test>\r\nMAIL FROM:<alice@alpha.test>\r\nRCPT TO:<z@elsewhere.test>\r\nDATA\r\nhi\r\n.\r\n",
        ],
    );
    assert!(t.contains("AUTH PLAIN LOGIN"), "{t}");
    assert_eq!(
        codes(&t),
        ["220", "250", "220", "250", "535", "235", "553", "250", "250", "354", "250"],
        "{t}"
    );
    assert_eq!(s[0].auth_user.as_deref(), Some("alice@alpha.test"));
    assert_eq!(s[0].rcpt_to, ["z@elsewhere.test"]);

    // AUTH LOGIN over implicit TLS.
    let (t, _) = drive(
        Session::new(cfg(Kind::Submission, true)),
        &[
            b"EHLO c\r\nAUTH LOGIN\r\n",
            b"YWxpY2VAYWxwaGEudGVzdA==\r\n",
            b"c2VjcmV0\r\n",
        ],
    );
    assert_eq!(codes(&t), ["220", "250", "334", "334", "235"], "{t}");
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let (t, s) = drive(
        Session::new(cfg(Kind::Mx, false)),
        &[b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x@ext.test>\r\nRCPT TO:<alice@alpha.test>\r\nDATA\r\n"],
    );
    assert!(s.is_empty());
    assert_eq!(codes(&t), ["220", "250", "220"], "{t}");
}

#[test]
fn garbage_is_answered_and_too_much_closes() {
    let mut junk = Vec::new();
    for _ in 0..12 {
        junk.extend_from_slice(b"\x00\xff\xfe GARBAGE\r\n");
    }
    let (t, _) = drive(Session::new(cfg(Kind::Mx, false)), &[&junk]);
    assert!(t.contains("421 4.7.0"), "{t}");
    let long = vec![b'A'; 10_000];
    let (t, _) = drive(
        Session::new(cfg(Kind::Mx, false)),
        &[&long, b"\r\nNOOP\r\n"],
    );
    assert!(t.contains("500 5.5.2 Line too long"), "{t}");
    assert!(
        t.contains("250 2.0.0 OK"),
        "the session goes on after a long line: {t}"
    );
}

#[test]
fn base64_decodes() {
    assert_eq!(b64_decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(b64_decode("AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
    assert!(b64_decode("!!").is_none());
}

#[test]
fn a_forged_from_header_is_refused_on_submission() {
    let login = b"EHLO c\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAc2VjcmV0\r\nMAIL FROM:<alice@alpha.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\n";
    let forged = [
        &login[..],
        b"From: Bob <bob@alpha.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
    ]
    .concat();
    let (t, stored) = drive(Session::new(cfg(Kind::Submission, true)), &[&forged]);
    assert!(stored.is_empty(), "{t}");
    assert!(
        t.contains("550 5.7.1 alice@alpha.test may not send as bob <bob@alpha.test>"),
        "{t}"
    );
    let own = [
        &login[..],
        b"From: Alice <alice@alpha.test>\r\n\r\nhi\r\n.\r\n",
    ]
    .concat();
    let (t, stored) = drive(Session::new(cfg(Kind::Submission, true)), &[&own]);
    assert_eq!(stored.len(), 1, "{t}");
    // The MX does not judge From: headers (that is DMARC's job).
    let mx = b"EHLO c\r\nMAIL FROM:<x@else.test>\r\nRCPT TO:<bob@alpha.test>\r\nDATA\r\nFrom: alice@alpha.test\r\n\r\nhi\r\n.\r\n";
    let (_, stored) = drive(Session::new(cfg(Kind::Mx, false)), &[mx]);
    assert_eq!(stored.len(), 1);
}

#[test]
fn smtputf8_is_refused_since_it_is_not_offered() {
    let (t, _) = drive(
        Session::new(cfg(Kind::Mx, false)),
        &[b"EHLO c\r\nMAIL FROM:<x@else.test> SMTPUTF8\r\nMAIL FROM:<x@else.test>\r\n"],
    );
    assert!(!t.contains("SMTPUTF8\r\n250"), "{t}");
    assert_eq!(codes(&t)[2..], ["555", "250"], "{t}");
}

#[test]
fn a_check_not_made_now_is_a_temporary_failure() {
    // AUTH PLAIN alice@alpha.test / later
    let (t, _) = drive(
        Session::new(cfg(Kind::Submission, true)),
        &[b"EHLO c\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAbGF0ZXI=\r\nAUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAc2VjcmV0\r\n"],
    );
    assert!(
        t.contains(
            "454 4.7.0 Temporary authentication failure: too many failed logins; retry in 4 s\r\n"
        ),
        "{t}"
    );
    assert!(t.contains("235 2.7.0"), "{t}");
}

//! The IMAP input side without I/O: bytes in, whole client messages out.
//!
//! imap-codec's `Fragmentizer` cuts the byte stream into lines and
//! literals (so that a malformed command can be skipped without ever
//! reading literal bytes as commands); this reader adds our limits on top
//! and says what to answer a literal announcement with. The driver feeds
//! what it reads and calls [`Reader::next`] until it returns `None`.

use imap_codec::fragmentizer::{
    DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement,
};
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::Command;
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::imap_types::IntoStatic;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};

/// Longest command text outside literals (RFC 9051 §4 asks for at least
/// 8,000 octets; mbsync's UID sets reach a few kilobytes).
pub const MAX_LINE_TEXT: usize = 64 * 1024;

/// Largest literal before login (a password, a LOGIN user name).
pub const MAX_LITERAL_UNAUTHENTICATED: u32 = 8 * 1024;

/// Largest non-synchronising literal a client may send without asking
/// (RFC 7888 LITERAL-), before login.
pub const MAX_NONSYNC_LITERAL_MINUS: u32 = 4096;

/// What the reader expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A command.
    Command,
    /// A line of AUTHENTICATE data.
    AuthenticateData,
    /// `DONE`, ending IDLE.
    IdleDone,
}

/// One thing the client sent, or what to answer it.
#[derive(Debug)]
pub enum Input {
    /// A whole command.
    Command(Command<'static>),
    /// A LIST with RFC 5258 options (the command is the plain LIST left).
    ListExtended(Command<'static>, super::listext::ListOptions),
    /// A SEARCH with RFC 4731 return options (the command is the plain SEARCH left).
    SearchExtended(Command<'static>, Vec<String>),
    /// An AUTHENTICATE continuation line.
    AuthenticateData(AuthenticateData<'static>),
    /// `DONE` after IDLE.
    IdleDone,
    /// Send this continuation request (`+ …`): a synchronising literal was accepted.
    Continue,
    /// Answer `<tag> BAD <text>` (or `* BAD` without a tag): the message was skipped.
    Bad(Option<Tag<'static>>, String),
    /// Answer `* BYE <text>` and close: the stream cannot be followed safely.
    Bye(String),
}

/// Splits client bytes into messages, with limits.
#[derive(Debug)]
pub struct Reader {
    frag: Fragmentizer,
    expect: Expect,
    /// Largest literal accepted now (APPENDLIMIT once logged in).
    literal_cap: u32,
    /// Non-synchronising literals above this need LITERAL+ (None: any size up to the cap).
    nonsync_cap: Option<u32>,
    /// Literal bytes announced and accepted in the current message.
    literal_bytes: usize,
    /// True once a fatal error was reported: nothing more is read.
    dead: bool,
}

impl Reader {
    /// A reader for a connection that has not logged in; `append_limit`
    /// is the largest literal it will accept after login.
    pub fn new(append_limit: u32) -> Self {
        Self {
            // The fragmentizer keeps at most this much of one message.
            frag: Fragmentizer::new(append_limit.saturating_add(MAX_LINE_TEXT as u32)),
            expect: Expect::Command,
            literal_cap: MAX_LITERAL_UNAUTHENTICATED,
            nonsync_cap: Some(MAX_NONSYNC_LITERAL_MINUS),
            literal_bytes: 0,
            dead: false,
        }
    }

    /// Raises the literal limit after login.
    pub fn logged_in(&mut self, append_limit: u32) {
        self.literal_cap = append_limit;
        self.nonsync_cap = None;
    }

    /// Sets what the next message is.
    pub fn expect(&mut self, e: Expect) {
        self.expect = e;
    }

    /// What the reader expects now.
    pub fn expecting(&self) -> Expect {
        self.expect
    }

    /// Adds bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.dead {
            self.frag.enqueue_bytes(bytes);
        }
    }

    /// The next input, or `None` when more bytes are needed.
    #[allow(clippy::should_implement_trait)] // not an iterator: `None` means "feed more"
    pub fn next(&mut self) -> Option<Input> {
        if self.dead {
            return None;
        }
        loop {
            let Some(info) = self.frag.progress() else {
                // A long line still arriving: the fragmentizer would keep
                // reading it, we stop here.
                if self.frag.message_bytes().len() > self.literal_bytes + MAX_LINE_TEXT {
                    return Some(self.fatal("command line too long"));
                }
                return None;
            };
            if let FragmentInfo::Line {
                announcement: Some(LiteralAnnouncement { mode, length }),
                ..
            } = info
            {
                if let Some(i) = self.announced(mode, length) {
                    return Some(i);
                }
                continue;
            }
            if self.frag.message_bytes().len() > self.literal_bytes + MAX_LINE_TEXT {
                return Some(self.fatal("command line too long"));
            }
            if !self.frag.is_message_complete() {
                continue;
            }
            self.literal_bytes = 0;
            return Some(self.decode());
        }
    }

    /// Bytes of an incomplete message held (for tests of the bounds).
    pub fn buffered(&self) -> usize {
        self.frag.message_bytes().len()
    }

    fn fatal(&mut self, why: &str) -> Input {
        self.dead = true;
        Input::Bye(why.to_owned())
    }

    fn announced(&mut self, mode: LiteralMode, length: u32) -> Option<Input> {
        let tag = self.frag.decode_tag().map(IntoStatic::into_static);
        match mode {
            LiteralMode::Sync => {
                if length > self.literal_cap {
                    // Nothing of the literal was sent yet: skip the command.
                    self.frag.skip_message();
                    self.literal_bytes = 0;
                    return Some(Input::Bad(
                        tag,
                        format!(
                            "[TOOBIG] literal of {length} octets is over the limit of {}",
                            self.literal_cap
                        ),
                    ));
                }
                self.literal_bytes += length as usize;
                Some(Input::Continue)
            }
            LiteralMode::NonSync => {
                let cap = self
                    .nonsync_cap
                    .unwrap_or(self.literal_cap)
                    .min(self.literal_cap);
                if length > cap {
                    // The bytes follow at once: they cannot be told from
                    // commands without reading them, so the connection ends.
                    return Some(self.fatal(&format!(
                        "[TOOBIG] non-synchronising literal of {length} octets is over the limit of {cap}"
                    )));
                }
                self.literal_bytes += length as usize;
                None
            }
        }
    }

    fn decode(&mut self) -> Input {
        let bad = |frag: &Fragmentizer, text: &str| {
            Input::Bad(
                frag.decode_tag().map(IntoStatic::into_static),
                text.to_owned(),
            )
        };
        if self.expect == Expect::Command
            && !self.frag.is_max_message_size_exceeded()
            && !self.frag.is_message_poisoned()
        {
            if let Some((plain, opts)) = super::listext::rewrite_search(self.frag.message_bytes()) {
                use imap_codec::decode::Decoder as _;
                return match CommandCodec::default().decode(&plain) {
                    Ok((&[], c)) => Input::SearchExtended(c.into_static(), opts),
                    _ => bad(&self.frag, "syntax error in SEARCH"),
                };
            }
            if let Some((plain, opts)) = super::listext::rewrite(self.frag.message_bytes()) {
                use imap_codec::decode::Decoder as _;
                return match CommandCodec::default().decode(&plain) {
                    Ok((&[], c)) => Input::ListExtended(c.into_static(), opts),
                    _ => bad(&self.frag, "syntax error in LIST"),
                };
            }
        }
        match self.expect {
            Expect::Command => match self.frag.decode_message(&CommandCodec::default()) {
                Ok(c) => Input::Command(c.into_static()),
                Err(DecodeMessageError::MessageTooLong { .. }) => {
                    bad(&self.frag, "command too long")
                }
                Err(_) => bad(&self.frag, "syntax error in command"),
            },
            Expect::AuthenticateData => {
                match self.frag.decode_message(&AuthenticateDataCodec::default()) {
                    Ok(d) => Input::AuthenticateData(d.into_static()),
                    Err(_) => Input::AuthenticateData(AuthenticateData::Cancel),
                }
            }
            Expect::IdleDone => match self.frag.decode_message(&IdleDoneCodec::default()) {
                Ok(_) => Input::IdleDone,
                Err(_) => Input::Bye("expected DONE to end IDLE".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::command::CommandBody;

    fn run(chunks: &[&[u8]], r: &mut Reader) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c);
            while let Some(i) = r.next() {
                out.push(match i {
                    Input::Command(c) => format!("cmd {} {}", c.tag.as_ref(), c.body.name()),
                    Input::AuthenticateData(_) => "auth".into(),
                    Input::IdleDone => "done".into(),
                    Input::Continue => "+".into(),
                    Input::Bad(t, why) => {
                        format!("bad {} {why}", t.as_ref().map_or("*", |t| t.as_ref()))
                    }
                    Input::Bye(why) => format!("bye {why}"),
                    Input::ListExtended(c, o) => format!("list {} {:?}", c.tag.as_ref(), o.select),
                    Input::SearchExtended(c, o) => format!("search {} {o:?}", c.tag.as_ref()),
                });
            }
        }
        out
    }

    const SCRIPT: &[u8] = b"a1 CAPABILITY\r\na2 LOGIN {5}\r\nalice {6}\r\nsecret\r\n\
a3 SELECT INBOX\r\nbad command here\r\na4 APPEND INBOX (\\Seen) {11+}\r\nhello\r\nbye!\r\na5 NOOP\r\n";

    fn whole() -> Vec<String> {
        let mut r = Reader::new(1 << 20);
        r.logged_in(1 << 20);
        run(&[SCRIPT], &mut r)
    }

    #[test]
    fn a_script_reads_the_same_at_every_split() {
        let want = whole();
        assert_eq!(
            want,
            [
                "cmd a1 CAPABILITY",
                "+",
                "+",
                "cmd a2 LOGIN",
                "cmd a3 SELECT",
                "bad bad syntax error in command",
                "cmd a4 APPEND",
                "cmd a5 NOOP"
            ]
        );
        for i in 0..=SCRIPT.len() {
            let mut r = Reader::new(1 << 20);
            r.logged_in(1 << 20);
            assert_eq!(
                run(&[&SCRIPT[..i], &SCRIPT[i..]], &mut r),
                want,
                "split at {i}"
            );
        }
        // And one byte at a time.
        let mut r = Reader::new(1 << 20);
        r.logged_in(1 << 20);
        let bytes: Vec<&[u8]> = SCRIPT.chunks(1).collect();
        assert_eq!(run(&bytes, &mut r), want);
    }

    #[test]
    fn literals_over_the_limit_are_refused_before_their_bytes() {
        let mut r = Reader::new(1 << 20);
        let out = run(&[b"a1 LOGIN {99999}\r\na2 NOOP\r\n"], &mut r);
        assert_eq!(
            out[0],
            "bad a1 [TOOBIG] literal of 99999 octets is over the limit of 8192"
        );
        assert_eq!(out[1], "cmd a2 NOOP");
        // A non-synchronising one cannot be skipped: the connection ends.
        let mut r = Reader::new(1 << 20);
        let out = run(&[b"a1 LOGIN {5000+}\r\n"], &mut r);
        assert!(out[0].starts_with("bye [TOOBIG]"), "{out:?}");
        r.feed(b"a2 NOOP\r\n");
        assert!(r.next().is_none());
    }

    #[test]
    fn an_endless_line_is_cut_off_with_bounded_memory() {
        let mut r = Reader::new(50 << 20);
        let chunk = vec![b'x'; 16 * 1024];
        let mut got = None;
        for _ in 0..100 {
            r.feed(&chunk);
            if let Some(i) = r.next() {
                got = Some(i);
                break;
            }
        }
        assert!(matches!(got, Some(Input::Bye(_))), "{got:?}");
        assert!(r.buffered() <= MAX_LINE_TEXT + chunk.len());
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_crash() {
        for body in [
            "NOT ".repeat(5000) + "ALL",
            "(".repeat(5000) + "ALL" + &")".repeat(5000),
            "OR ".repeat(3000) + &"ALL ".repeat(3001),
        ] {
            let mut r = Reader::new(1 << 20);
            r.logged_in(1 << 20);
            let out = run(
                &[format!("a SEARCH {body}\r\nb NOOP\r\n").as_bytes()],
                &mut r,
            );
            assert_eq!(out, ["bad a syntax error in command", "cmd b NOOP"]);
        }
    }

    #[test]
    fn idle_and_authenticate_continuations() {
        let mut r = Reader::new(1 << 20);
        r.feed(b"a1 AUTHENTICATE PLAIN\r\n");
        let Some(Input::Command(c)) = r.next() else {
            panic!()
        };
        assert!(matches!(c.body, CommandBody::Authenticate { .. }));
        r.expect(Expect::AuthenticateData);
        r.feed(b"AGFsaWNlAHNlY3JldA==\r\n");
        assert!(matches!(
            r.next(),
            Some(Input::AuthenticateData(AuthenticateData::Continue(_)))
        ));
        r.expect(Expect::IdleDone);
        r.feed(b"DONE\r\n");
        assert!(matches!(r.next(), Some(Input::IdleDone)));
        r.expect(Expect::IdleDone);
        r.feed(b"a9 NOOP\r\n");
        assert!(matches!(r.next(), Some(Input::Bye(_))));
    }
}

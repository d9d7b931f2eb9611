//! The SMTP server session as a state machine without I/O: bytes in,
//! replies and requests to the driver out. The driver (see `server.rs`)
//! only moves bytes, upgrades to TLS, verifies passwords and stores
//! messages, then reports back.
//!
//! Pipelining: input is processed command by command; while the driver
//! stores a message or checks a password the session waits, and the
//! commands that followed in the same packet are answered afterwards.

use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::{Error as ParseError, Request, AUTH_LOGIN, AUTH_PLAIN};

/// Which listener a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 25: mail for local users only, no AUTH.
    Mx,
    /// Submission: AUTH (over TLS) required, then any recipient.
    Submission,
}

/// Session limits and capabilities.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name in the greeting and EHLO.
    pub hostname: String,
    /// Listener kind.
    pub kind: Kind,
    /// Largest message accepted (bytes).
    pub max_message_size: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Most bad commands before the session is closed.
    pub max_errors: usize,
    /// STARTTLS can be offered.
    pub starttls: bool,
    /// TLS is already active (implicit TLS, or after STARTTLS).
    pub tls_active: bool,
}

/// The envelope and content of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// HELO/EHLO name.
    pub helo: String,
    /// MAIL FROM address ("" for the null sender).
    pub mail_from: String,
    /// Accepted recipients.
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, exactly as sent otherwise.
    pub data: Vec<u8>,
    /// Authenticated user, on submission.
    pub auth_user: Option<String>,
}

/// What the session needs from the world for a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accept it.
    Accept,
    /// No such local user (550 5.1.1).
    UnknownUser,
    /// Not a local domain and the client may not relay (550 5.7.1).
    RelayDenied,
    /// The mailbox is over quota: try later (452 4.2.2).
    MailboxFull,
    /// The user moved to this address (551 5.1.6, RFC 5321 §3.4 and RFC 3463).
    Moved(String),
}

/// Why a message was not stored ([`Session::stored`]); the detail goes to
/// the log, the client gets fixed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// A local problem (451 4.3.0).
    Temporary,
    /// Every recipient's mailbox is full (452 4.2.2).
    MailboxFull,
    /// The server's disk is full (452 4.3.1).
    DiskFull,
    /// Refused by the sender's domain's own policy (550 5.7.1, DMARC).
    Rejected,
}

/// Decisions the session delegates.
pub trait Policy {
    /// May this recipient be accepted in this session?
    fn rcpt(&self, kind: Kind, authenticated: bool, address: &str) -> RcptVerdict;
    /// May the authenticated user send as `address`?
    fn may_send_as(&self, user: &str, address: &str) -> bool;
    /// May the authenticated user send a message with these headers (its
    /// `From:` addresses)? `Err` says why not, for a `550 5.7.1` reply.
    fn header_from_allowed(&self, user: &str, data: &[u8]) -> Result<(), String>;
}

/// The outcome of a credential check ([`Output::CheckAuth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Right: the user's address.
    Granted(String),
    /// Wrong address or password.
    Invalid,
    /// Not checked now (throttled, or every check slot busy): `454`.
    TryLater(String),
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes.
    Reply(Vec<u8>),
    /// After sending the pending replies, start TLS, then call [`Session::tls_started`].
    StartTls,
    /// Store this message durably, then call [`Session::stored`].
    Store(Envelope),
    /// Verify these credentials, then call [`Session::auth_checked`].
    CheckAuth {
        /// User name (a full address).
        user: String,
        /// Password.
        password: String,
    },
    /// Send pending replies, then close the connection.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Command,
    Data,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass(String),
    Waiting,
    Closed,
}

/// Longest command line accepted, CRLF included (RFC 5321 asks for 512 at least).
pub const MAX_COMMAND_LINE: usize = 4096;

/// One SMTP server session.
pub struct Session {
    cfg: SessionConfig,
    state: State,
    input: Vec<u8>,
    pos: usize,
    req: RequestReceiver,
    data: DataReceiver,
    data_buf: Vec<u8>,
    oversize: bool,
    helo: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    auth_user: Option<String>,
    errors: usize,
    skip_line: bool,
    out: std::collections::VecDeque<Output>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("helo", &self.helo)
            .finish_non_exhaustive()
    }
}

fn reply(s: &str) -> Output {
    Output::Reply(format!("{s}\r\n").into_bytes())
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl Session {
    /// A new session; the first output is the greeting.
    pub fn new(cfg: SessionConfig) -> Self {
        let greeting = reply(&format!("220 {} ESMTP Caliopen", cfg.hostname));
        let mut out = std::collections::VecDeque::new();
        out.push_back(greeting);
        Self {
            cfg,
            state: State::Command,
            input: Vec::new(),
            pos: 0,
            req: RequestReceiver::default(),
            data: DataReceiver::new(),
            data_buf: Vec::new(),
            oversize: false,
            helo: None,
            mail_from: None,
            rcpt_to: Vec::new(),
            auth_user: None,
            errors: 0,
            skip_line: false,
            out,
        }
    }

    /// True once the session asked to close.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while the client is sending message content.
    pub fn in_data(&self) -> bool {
        self.state == State::Data
    }

    /// The authenticated user, if any.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// Bytes received and not yet processed.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.pos
    }

    /// Feeds bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The next thing to do, or `None` when more input (or a verdict) is needed.
    pub fn poll(&mut self, policy: &dyn Policy) -> Option<Output> {
        loop {
            if let Some(o) = self.out.pop_front() {
                return Some(o);
            }
            if matches!(self.state, State::Waiting | State::Closed) || self.pos >= self.input.len()
            {
                if self.pos > 0 {
                    self.input.drain(..self.pos);
                    self.pos = 0;
                }
                return None;
            }
            let before = self.pos;
            self.step(policy);
            if self.pos == before && self.out.is_empty() {
                // An incomplete line: wait for more input.
                return None;
            }
        }
    }

    fn step(&mut self, policy: &dyn Policy) {
        match self.state.clone() {
            State::Data => self.step_data(policy),
            State::AuthPlain | State::AuthLoginUser | State::AuthLoginPass(_) => {
                self.step_auth_line()
            }
            State::Command => self.step_command(policy),
            State::Waiting | State::Closed => {}
        }
    }

    fn error(&mut self, text: &str) {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.out
                .push_back(reply("421 4.7.0 Too many errors, closing connection"));
            self.out.push_back(Output::Close);
            self.state = State::Closed;
        } else {
            self.out.push_back(reply(text));
        }
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
        self.data_buf.clear();
        self.oversize = false;
    }

    fn step_command(&mut self, policy: &dyn Policy) {
        if self.skip_line {
            // The rest of a refused line is never read as commands.
            match self.input[self.pos..].iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.pos += i + 1;
                    self.skip_line = false;
                }
                None => self.pos = self.input.len(),
            }
            return;
        }
        // The parser only ever sees one complete line, so that packet
        // boundaries cannot change how commands are read (it may otherwise
        // read past a line end while looking for a missing token).
        let rest = &self.input[self.pos..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            if rest.len() > MAX_COMMAND_LINE {
                self.pos = self.input.len();
                self.skip_line = true;
                self.error("500 5.5.2 Line too long");
            }
            return;
        };
        let line_end = self.pos + nl + 1;
        if nl + 1 > MAX_COMMAND_LINE {
            self.pos = line_end;
            self.error("500 5.5.2 Line too long");
            return;
        }
        self.req = RequestReceiver::default();
        let mut iter = self.input[self.pos..line_end].iter();
        let parsed = self.req.ingest(&mut iter);
        let parsed = parsed.map(|r| match r {
            Request::Ehlo { host } => Request::Ehlo {
                host: host.into_owned(),
            },
            Request::Helo { host } => Request::Helo {
                host: host.into_owned(),
            },
            Request::Lhlo { host } => Request::Lhlo {
                host: host.into_owned(),
            },
            Request::Mail { from } => Request::Mail {
                from: smtp_proto::MailFrom {
                    address: from.address.into_owned(),
                    size: from.size,
                    flags: from.flags,
                    ..Default::default()
                },
            },
            Request::Rcpt { to } => Request::Rcpt {
                to: smtp_proto::RcptTo {
                    address: to.address.into_owned(),
                    ..Default::default()
                },
            },
            Request::Auth {
                mechanism,
                initial_response,
            } => Request::Auth {
                mechanism,
                initial_response: initial_response.into_owned(),
            },
            Request::Noop { .. } => Request::Noop {
                value: String::new(),
            },
            Request::Vrfy { .. } => Request::Vrfy {
                value: String::new(),
            },
            Request::Expn { .. } => Request::Expn {
                value: String::new(),
            },
            Request::Help { .. } => Request::Help {
                value: String::new(),
            },
            Request::StartTls => Request::StartTls,
            Request::Data => Request::Data,
            Request::Rset => Request::Rset,
            Request::Quit => Request::Quit,
            Request::Bdat {
                chunk_size,
                is_last,
            } => Request::Bdat {
                chunk_size,
                is_last,
            },
            Request::Etrn { .. } => Request::Etrn {
                name: String::new(),
            },
            Request::Atrn { .. } => Request::Atrn {
                domains: Vec::new(),
            },
            Request::Burl { is_last, .. } => Request::Burl {
                uri: String::new(),
                is_last,
            },
        });
        self.pos = line_end;
        match parsed {
            Err(ParseError::NeedsMoreData { .. }) => self.error("500 5.5.2 Syntax error"),
            Err(ParseError::ResponseTooLong) => self.error("500 5.5.2 Line too long"),
            Err(ParseError::UnknownCommand) => self.error("500 5.5.1 Command unrecognized"),
            Err(ParseError::InvalidSenderAddress) => {
                self.error("501 5.1.7 Bad sender address syntax")
            }
            Err(ParseError::InvalidRecipientAddress) => {
                self.error("501 5.1.3 Bad recipient address syntax")
            }
            Err(ParseError::SyntaxError { syntax }) => {
                self.error(&format!("501 5.5.4 Syntax: {syntax}"))
            }
            Err(ParseError::InvalidParameter { param }) => {
                self.error(&format!("501 5.5.4 Invalid parameter {param}"))
            }
            Err(ParseError::UnsupportedParameter { .. }) => {
                self.error("555 5.5.4 Unsupported parameter")
            }
            Err(_) => self.error("500 5.5.2 Syntax error"),
            Ok(req) => self.command(req, policy),
        }
    }

    fn ehlo_reply(&self, host: &str) -> Vec<u8> {
        let mut caps = vec![
            format!("{} greets {host}", self.cfg.hostname),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.cfg.starttls && !self.cfg.tls_active {
            caps.push("STARTTLS".into());
        }
        if self.cfg.kind == Kind::Submission && self.cfg.tls_active {
            caps.push("AUTH PLAIN LOGIN".into());
        }
        let n = caps.len();
        caps.iter()
            .enumerate()
            .map(|(i, c)| format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }))
            .collect::<String>()
            .into_bytes()
    }

    fn command(&mut self, req: Request<String>, policy: &dyn Policy) {
        match req {
            Request::Ehlo { host } | Request::Lhlo { host } => {
                self.reset_transaction();
                self.out.push_back(Output::Reply(self.ehlo_reply(&host)));
                self.helo = Some(host);
            }
            Request::Helo { host } => {
                self.reset_transaction();
                self.out
                    .push_back(reply(&format!("250 {} greets {host}", self.cfg.hostname)));
                self.helo = Some(host);
            }
            Request::StartTls => {
                if !self.cfg.starttls || self.cfg.tls_active {
                    self.error("503 5.5.1 TLS not available");
                } else {
                    self.out.push_back(reply("220 2.0.0 Ready to start TLS"));
                    self.out.push_back(Output::StartTls);
                    // Anything pipelined after STARTTLS is discarded (RFC 3207 §4.2, CVE-2011-0411).
                    self.input.truncate(self.pos);
                    self.state = State::Waiting;
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                if self.cfg.kind != Kind::Submission {
                    self.error("503 5.5.1 AUTH not available on this port");
                } else if !self.cfg.tls_active {
                    self.error(
                        "538 5.7.11 Encryption required for requested authentication mechanism",
                    );
                } else if self.auth_user.is_some() {
                    self.error("503 5.5.1 Already authenticated");
                } else if self.mail_from.is_some() {
                    self.error("503 5.5.1 AUTH not allowed during a mail transaction");
                } else if mechanism == AUTH_PLAIN {
                    if initial_response.is_empty() {
                        self.out.push_back(reply("334 "));
                        self.state = State::AuthPlain;
                    } else {
                        self.auth_plain(&initial_response);
                    }
                } else if mechanism == AUTH_LOGIN {
                    if initial_response.is_empty() {
                        self.out.push_back(reply("334 VXNlcm5hbWU6"));
                        self.state = State::AuthLoginUser;
                    } else {
                        self.auth_login_user(&initial_response);
                    }
                } else {
                    self.error("504 5.5.4 Mechanism not supported");
                }
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    self.error("503 5.5.1 Say EHLO first");
                } else if self.mail_from.is_some() {
                    self.error("503 5.5.1 Nested MAIL command");
                } else if self.cfg.kind == Kind::Submission && self.auth_user.is_none() {
                    self.error("530 5.7.0 Authentication required");
                } else if from.flags & smtp_proto::MAIL_SMTPUTF8 != 0 {
                    // Not advertised (RFC 6531 §3.4: only after the EHLO keyword).
                    self.error("555 5.5.4 SMTPUTF8 is not supported here");
                } else if from.size > self.cfg.max_message_size {
                    self.error(&format!(
                        "552 5.3.4 Message size exceeds fixed limit of {} bytes",
                        self.cfg.max_message_size
                    ));
                } else if let Some(user) = self
                    .auth_user
                    .clone()
                    .filter(|u| !policy.may_send_as(u, &from.address))
                {
                    self.error(&format!(
                        "553 5.7.1 {user} may not send as <{}>",
                        from.address
                    ));
                } else {
                    self.out.push_back(reply("250 2.1.0 Sender OK"));
                    self.mail_from = Some(from.address);
                }
            }
            Request::Rcpt { to } => {
                if self.mail_from.is_none() {
                    self.error("503 5.5.1 Need MAIL before RCPT");
                } else if self.rcpt_to.len() >= self.cfg.max_recipients {
                    self.out.push_back(reply("452 4.5.3 Too many recipients"));
                } else {
                    match policy.rcpt(self.cfg.kind, self.auth_user.is_some(), &to.address) {
                        RcptVerdict::Accept => {
                            if !self.rcpt_to.contains(&to.address) {
                                self.rcpt_to.push(to.address);
                            }
                            self.out.push_back(reply("250 2.1.5 Recipient OK"));
                        }
                        RcptVerdict::UnknownUser => {
                            self.out.push_back(reply("550 5.1.1 No such user here"))
                        }
                        RcptVerdict::RelayDenied => {
                            self.out.push_back(reply("550 5.7.1 Relaying denied"))
                        }
                        RcptVerdict::MailboxFull => self
                            .out
                            .push_back(reply("452 4.2.2 Mailbox full, try again later")),
                        RcptVerdict::Moved(to) => self.out.push_back(reply(&format!(
                            "551 5.1.6 User has moved; please try <{to}>"
                        ))),
                    }
                }
            }
            Request::Data => {
                if self.mail_from.is_none() {
                    self.error("503 5.5.1 Need MAIL before DATA");
                } else if self.rcpt_to.is_empty() {
                    self.error("554 5.5.1 No valid recipients");
                } else {
                    self.out
                        .push_back(reply("354 Start mail input; end with <CRLF>.<CRLF>"));
                    self.data = DataReceiver::new();
                    self.data_buf.clear();
                    self.oversize = false;
                    self.state = State::Data;
                }
            }
            Request::Bdat { .. } => {
                // CHUNKING is not offered: the chunk that follows would be
                // read as commands, so the session cannot go on.
                self.out
                    .push_back(reply("502 5.5.1 BDAT not supported; closing"));
                self.out.push_back(Output::Close);
                self.state = State::Closed;
            }
            Request::Rset => {
                self.reset_transaction();
                self.out.push_back(reply("250 2.0.0 Reset"));
            }
            Request::Noop { .. } => self.out.push_back(reply("250 2.0.0 OK")),
            Request::Vrfy { .. } => self
                .out
                .push_back(reply("252 2.5.2 Cannot verify; send mail and we will try")),
            Request::Expn { .. } => self.error("502 5.5.1 EXPN not available"),
            Request::Help { .. } => self.out.push_back(reply("214 2.0.0 See RFC 5321")),
            Request::Quit => {
                self.out
                    .push_back(reply(&format!("221 2.0.0 {} closing", self.cfg.hostname)));
                self.out.push_back(Output::Close);
                self.state = State::Closed;
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error("502 5.5.1 Command not implemented")
            }
        }
    }

    fn step_data(&mut self, policy: &dyn Policy) {
        let mut iter = self.input[self.pos..].iter();
        let before = iter.len();
        let done = self.data.ingest(&mut iter, &mut self.data_buf);
        self.pos += before - iter.len();
        if self.data_buf.len() > self.cfg.max_message_size {
            // Keep reading to the end marker, but keep nothing.
            self.oversize = true;
            self.data_buf.clear();
        }
        if !done {
            return;
        }
        if self.oversize {
            self.reset_transaction();
            self.state = State::Command;
            self.out.push_back(reply(&format!(
                "552 5.3.4 Message size exceeds fixed limit of {} bytes",
                self.cfg.max_message_size
            )));
            return;
        }
        if let Some(user) = self
            .auth_user
            .clone()
            .filter(|_| self.cfg.kind == Kind::Submission)
        {
            if let Err(why) = policy.header_from_allowed(&user, &self.data_buf) {
                let why: String = why.chars().filter(|c| !c.is_control()).take(300).collect();
                self.reset_transaction();
                self.state = State::Command;
                self.out.push_back(reply(&format!("550 5.7.1 {why}")));
                return;
            }
        }
        let env = Envelope {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data: std::mem::take(&mut self.data_buf),
            auth_user: self.auth_user.clone(),
        };
        self.state = State::Waiting;
        self.out.push_back(Output::Store(env));
    }

    /// Reports the outcome of [`Output::Store`]: the queue id, or a failure
    /// (whose detail went to the log: the client gets fixed text).
    pub fn stored(&mut self, result: Result<String, StoreFailure>) {
        self.out.push_back(match result {
            Ok(id) => reply(&format!("250 2.0.0 Ok: queued as {id}")),
            Err(StoreFailure::Temporary) => {
                reply("451 4.3.0 Temporary local problem, try again later")
            }
            Err(StoreFailure::MailboxFull) => reply("452 4.2.2 Mailbox full, try again later"),
            Err(StoreFailure::DiskFull) => {
                reply("452 4.3.1 Insufficient system storage, try again later")
            }
            Err(StoreFailure::Rejected) => reply(
                "550 5.7.1 Rejected: the message fails DMARC and its From: domain asks for rejection",
            ),
        });
        self.reset_transaction();
        self.state = State::Command;
    }

    fn take_line(&mut self) -> Option<String> {
        let rest = &self.input[self.pos..];
        let nl = rest.iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..nl])
            .trim_end_matches('\r')
            .to_owned();
        self.pos += nl + 1;
        Some(line)
    }

    fn step_auth_line(&mut self) {
        if self.buffered() > 4096 && !self.input[self.pos..].contains(&b'\n') {
            self.pos = self.input.len();
            self.state = State::Command;
            self.error("500 5.5.2 Line too long");
            return;
        }
        let Some(line) = self.take_line() else {
            return;
        };
        if line == "*" {
            self.state = State::Command;
            self.out
                .push_back(reply("501 5.0.0 Authentication cancelled"));
            return;
        }
        match self.state.clone() {
            State::AuthPlain => self.auth_plain(&line),
            State::AuthLoginUser => self.auth_login_user(&line),
            State::AuthLoginPass(user) => {
                let Some(pass) = b64_decode(&line).and_then(|p| String::from_utf8(p).ok()) else {
                    self.state = State::Command;
                    self.error("501 5.5.2 Invalid base64");
                    return;
                };
                self.state = State::Waiting;
                self.out.push_back(Output::CheckAuth {
                    user,
                    password: pass,
                });
            }
            _ => {}
        }
    }

    fn auth_plain(&mut self, b64: &str) {
        let decoded = b64_decode(b64).unwrap_or_default();
        let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
        if parts.len() != 3 {
            self.state = State::Command;
            self.error("501 5.5.2 Invalid AUTH PLAIN response");
            return;
        }
        let (user, pass) = (
            String::from_utf8_lossy(parts[1]).into_owned(),
            String::from_utf8_lossy(parts[2]).into_owned(),
        );
        self.state = State::Waiting;
        self.out.push_back(Output::CheckAuth {
            user,
            password: pass,
        });
    }

    fn auth_login_user(&mut self, b64: &str) {
        match b64_decode(b64).and_then(|u| String::from_utf8(u).ok()) {
            Some(user) => {
                self.out.push_back(reply("334 UGFzc3dvcmQ6"));
                self.state = State::AuthLoginPass(user);
            }
            None => {
                self.state = State::Command;
                self.error("501 5.5.2 Invalid base64");
            }
        }
    }

    /// Reports the outcome of [`Output::CheckAuth`].
    pub fn auth_checked(&mut self, outcome: AuthOutcome) {
        self.state = State::Command;
        match outcome {
            AuthOutcome::Granted(u) => {
                self.auth_user = Some(u);
                self.out
                    .push_back(reply("235 2.7.0 Authentication succeeded"));
            }
            AuthOutcome::Invalid => self.error("535 5.7.8 Authentication credentials invalid"),
            AuthOutcome::TryLater(why) => {
                let why: String = why.chars().filter(|c| !c.is_control()).take(200).collect();
                self.error(&format!(
                    "454 4.7.0 Temporary authentication failure: {why}"
                ));
            }
        }
    }

    /// TLS is up: the session starts over (RFC 3207), awaiting a new EHLO.
    pub fn tls_started(&mut self) {
        self.cfg.tls_active = true;
        self.helo = None;
        self.auth_user = None;
        self.reset_transaction();
        self.req = RequestReceiver::default();
        self.input.clear();
        self.pos = 0;
        self.skip_line = false;
        self.state = State::Command;
    }
}

/// Drives a session over `chunks` with a fixed policy (users alice and bob
/// at alpha.test; password "secret"), answering every request the session
/// makes, and returns everything it replied. STARTTLS ends the drive (what
/// follows would be TLS records). Used by the fuzz target and the corpus
/// replay test; asserts the session's buffering stays bounded.
pub fn drive_for_fuzzing(kind: Kind, chunks: &[&[u8]]) -> Vec<u8> {
    struct FixedPolicy;
    impl Policy for FixedPolicy {
        fn rcpt(&self, kind: Kind, authenticated: bool, address: &str) -> RcptVerdict {
            match address.rsplit_once('@') {
                Some((u, "alpha.test")) if u == "alice" || u == "bob" => RcptVerdict::Accept,
                Some((_, "alpha.test")) => RcptVerdict::UnknownUser,
                _ if kind == Kind::Submission && authenticated => RcptVerdict::Accept,
                _ => RcptVerdict::RelayDenied,
            }
        }
        fn may_send_as(&self, user: &str, address: &str) -> bool {
            user.eq_ignore_ascii_case(address)
        }
        fn header_from_allowed(&self, user: &str, data: &[u8]) -> Result<(), String> {
            // A plain scan (the real policy parses the header): a From line
            // naming someone else is refused.
            let text = String::from_utf8_lossy(data).to_ascii_lowercase();
            match text.lines().find(|l| l.starts_with("from:")) {
                Some(l) if !l.contains(&user.to_ascii_lowercase()) => Err("not yours".into()),
                _ => Ok(()),
            }
        }
    }
    let mut s = Session::new(SessionConfig {
        hostname: "mx.alpha.test".into(),
        kind,
        max_message_size: 64 * 1024,
        max_recipients: 50,
        max_errors: 20,
        starttls: true,
        tls_active: false,
    });
    let mut out = Vec::new();
    let mut stored = 0u32;
    let mut tls = false;
    let mut pump = |s: &mut Session, out: &mut Vec<u8>, tls: &mut bool| {
        while let Some(o) = s.poll(&FixedPolicy) {
            match o {
                Output::Reply(r) => out.extend_from_slice(&r),
                Output::Store(e) => {
                    assert!(e.data.len() <= 64 * 1024 + 2, "oversize message accepted");
                    stored += 1;
                    s.stored(Ok(stored.to_string()));
                }
                Output::CheckAuth { user, password } => {
                    s.auth_checked(if user == "alice@alpha.test" && password == "secret" {
                        AuthOutcome::Granted(user)
                    } else if password == "later" {
                        AuthOutcome::TryLater("busy".into())
                    } else {
                        AuthOutcome::Invalid
                    })
                }
                Output::StartTls => {
                    *tls = true;
                    return;
                }
                Output::Close => return,
            }
        }
    };
    pump(&mut s, &mut out, &mut tls);
    for c in chunks {
        if s.is_closed() || tls {
            break;
        }
        s.feed(c);
        pump(&mut s, &mut out, &mut tls);
        assert!(s.buffered() <= c.len() + 8192, "unbounded buffering");
    }
    out
}

#[cfg(test)]
mod tests;

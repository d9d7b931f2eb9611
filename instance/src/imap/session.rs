//! One IMAP connection's state and commands, over the mail core.
//!
//! The session owns no socket: the driver (`server.rs`) feeds it the
//! inputs the [`Reader`] cuts out of the stream and writes what it
//! returns. The mailbox a client has selected is a snapshot of its UIDs,
//! brought up to date from the store's change log (`changes_since`) at
//! the points where IMAP allows untagged updates.

use super::render::{self, Section};
use super::wire::{Expect, Input, Reader};
use crate::delivery::MailService;
use crate::mail::mailbox::{MailboxId, SEEN};
use crate::mail::{Delivery, Mailbox, MessageMeta, ModelError, Role, Transport, Via};
use crate::store::{KeywordChange, StoreError};
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{
    Command, CommandBody, FetchModifier, SelectParameter, StoreModifier,
};
use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Section as ImapSection,
};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The IMAP keyword of a message marked for deletion (IMAP's `\Deleted`
/// is kept as a keyword of the model, as JMAP servers that speak IMAP do).
pub const DELETED: &str = "$deleted";

/// Most commands per second before login.
const MAX_COMMANDS_PER_SECOND_UNAUTH: u32 = 20;
/// Most bad commands in one connection.
const MAX_BAD: u32 = 50;
/// Most changes read from the log per step of a refresh.
const CHANGES_STEP: usize = 5_000;

/// What a session needs to know about its listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Host name for the greeting.
    pub hostname: String,
    /// STARTTLS can be offered.
    pub starttls: bool,
    /// Largest APPEND.
    pub append_limit: u32,
}

/// What the driver does after writing the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read on.
    Continue,
    /// Start TLS now (the tagged OK was written).
    StartTls,
    /// Wait for `DONE` or a change of the account, then call
    /// [`Session::idle_update`] on a change.
    Idle,
    /// Close the connection.
    Close,
}

struct Selected {
    id: MailboxId,
    read_only: bool,
    uid_validity: u32,
    /// UIDs in order: sequence number `n` is `uids[n-1]`.
    uids: Vec<u32>,
    /// The message id of each UID.
    ids: Vec<u64>,
    /// The account state this snapshot is at.
    state: u64,
}

impl Selected {
    fn seq_of(&self, uid: u32) -> Option<usize> {
        self.uids.binary_search(&uid).ok()
    }
}

/// What the change log says about one mailbox after a state: the UIDs
/// taken out of it, the records of messages created or changed in it,
/// and the state reached; `None` when the log no longer reaches back that
/// far (tombstones pruned).
struct MailboxLog {
    removed: Vec<u32>,
    changed: Vec<MessageMeta>,
    state: u64,
}

fn mailbox_log(
    store: &dyn crate::store::MailStore,
    owner: &str,
    mbx: MailboxId,
    since: u64,
) -> Option<MailboxLog> {
    let mut log = MailboxLog {
        removed: Vec::new(),
        changed: Vec::new(),
        state: since,
    };
    loop {
        let c = store.changes_since(owner, log.state, CHANGES_STEP).ok()?;
        for t in &c.removed {
            log.removed
                .extend(t.removed.iter().filter(|p| p.mailbox == mbx).map(|p| p.uid));
        }
        log.changed.extend(
            c.created
                .into_iter()
                .chain(c.updated)
                .filter(|m| m.uid_in(mbx).is_some()),
        );
        let done = !c.more || c.new_state <= log.state;
        log.state = c.new_state.max(log.state);
        if done {
            return Some(log);
        }
    }
}

/// A FETCH answered in parts.
struct PendingFetch {
    tag: String,
    targets: std::vec::IntoIter<(usize, u32, u64)>,
    want: Want,
    changed_since: Option<u64>,
    read_only: bool,
    to_mark: Vec<u64>,
}

/// One connection.
pub struct Session {
    svc: MailService,
    cfg: SessionConfig,
    peer: Option<IpAddr>,
    tls: bool,
    /// The bytes-to-messages reader; the driver feeds it.
    pub reader: Reader,
    /// Local part of the logged-in account.
    user: Option<String>,
    selected: Option<Selected>,
    pending: Option<Tag<'static>>,
    condstore: bool,
    qresync: bool,
    window: (Instant, u32),
    bad: u32,
    pending_fetch: Option<PendingFetch>,
    spill: Option<usize>,
}

fn tag_of(t: &Tag<'_>) -> String {
    t.as_ref().to_owned()
}

fn line(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The IMAP flag of a model keyword.
pub fn flag_of(k: &str) -> String {
    match k {
        "$seen" => "\\Seen".into(),
        "$flagged" => "\\Flagged".into(),
        "$answered" => "\\Answered".into(),
        "$draft" => "\\Draft".into(),
        DELETED => "\\Deleted".into(),
        other => other.to_owned(),
    }
}

/// The keyword for each privacy class (read-only, computed).
fn class_keyword(m: &MessageMeta) -> &'static str {
    match crate::store::path_class(m) {
        crate::mail::PathClass::Mesh => "$CaliopenMesh",
        crate::mail::PathClass::Tls => "$CaliopenTls",
        crate::mail::PathClass::Plain => "$CaliopenPlain",
        crate::mail::PathClass::Local => "$CaliopenLocal",
    }
}

fn is_class_keyword(k: &str) -> bool {
    k.to_ascii_lowercase().starts_with("$caliopen")
}

fn flags_list(m: &MessageMeta) -> String {
    let mut v: Vec<String> = m.keywords.iter().map(|k| flag_of(k)).collect();
    v.push(class_keyword(m).to_owned());
    format!("({})", v.join(" "))
}

/// The model keyword of an IMAP flag in a STORE or APPEND.
fn keyword_of(f: &Flag<'_>) -> Result<Option<String>, String> {
    let s = match f {
        Flag::Deleted => return Ok(Some(DELETED.to_owned())),
        Flag::Seen => "\\Seen".to_owned(),
        Flag::Flagged => "\\Flagged".to_owned(),
        Flag::Answered => "\\Answered".to_owned(),
        Flag::Draft => "\\Draft".to_owned(),
        Flag::Keyword(a) => a.as_ref().to_owned(),
        // `\Recent` is the server's to set (and gone from IMAP4rev2): ignored.
        Flag::Extension(_) if f.to_string().eq_ignore_ascii_case("\\recent") => return Ok(None),
        Flag::Extension(_) => return Err(format!("unknown system flag {f}")),
    };
    if is_class_keyword(&s) {
        // The privacy class is computed: it cannot be set or cleared.
        return Ok(None);
    }
    crate::mail::mailbox::normalise_keyword(&s)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn mailbox_name(m: &ImapMailbox<'_>) -> Result<String, String> {
    match m {
        ImapMailbox::Inbox => Ok("INBOX".into()),
        ImapMailbox::Other(o) => {
            let s = std::str::from_utf8(o.as_ref())
                .map_err(|_| "mailbox name is not UTF-7".to_owned())?;
            let s = render::utf7_decode(s).ok_or("mailbox name is not valid modified UTF-7")?;
            if s.eq_ignore_ascii_case("inbox") {
                Ok("INBOX".into())
            } else {
                Ok(s)
            }
        }
    }
}

fn imap_name(b: &Mailbox) -> String {
    if b.role == Some(Role::Inbox) {
        "INBOX".into()
    } else {
        render::utf7_encode(&b.name)
    }
}

/// Matches an IMAP LIST pattern (`*` anything, `%` anything but the
/// delimiter), in time proportional to pattern × name (a backtracking
/// match was exponential in the wildcards: found by fuzzing).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    // Runs of wildcards are one wildcard (`*` if any of them is).
    let mut p: Vec<u8> = Vec::with_capacity(pattern.len());
    for &c in pattern {
        let wild = c == b'*' || c == b'%';
        match p.last_mut() {
            Some(last) if wild && (*last == b'*' || *last == b'%') => {
                if c == b'*' {
                    *last = b'*';
                }
            }
            _ => p.push(c),
        }
    }
    // More fixed bytes than the name has: no match (and the table below
    // stays small: names are at most 255 bytes).
    if p.iter().filter(|&&c| c != b'*' && c != b'%').count() > name.len() {
        return false;
    }
    let n = name.len();
    // cur[j]: p[i..] matches name[j..], for the i being processed.
    let mut cur = vec![false; n + 1];
    cur[n] = true;
    let mut next = vec![false; n + 1];
    for &c in p.iter().rev() {
        match c {
            b'*' => {
                next[n] = cur[n];
                for j in (0..n).rev() {
                    next[j] = cur[j] || next[j + 1];
                }
            }
            b'%' => {
                next[n] = cur[n];
                for j in (0..n).rev() {
                    next[j] = cur[j] || (name[j] != b'/' && next[j + 1]);
                }
            }
            lit => {
                next[n] = false;
                for j in 0..n {
                    next[j] = name[j] == lit && cur[j + 1];
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    cur[0]
}

/// The error text and response code of a store error.
fn store_no(e: &StoreError) -> String {
    match e {
        StoreError::Model(m) => match m {
            ModelError::NoMailbox => "[NONEXISTENT] no such mailbox".into(),
            ModelError::NameTaken(_) => format!("[ALREADYEXISTS] {m}"),
            ModelError::OverQuota => "[OVERQUOTA] over quota".into(),
            ModelError::Limit(_) => format!("[LIMIT] {m}"),
            ModelError::RoleMailbox(_) | ModelError::HasChildren(_) => format!("[CANNOT] {m}"),
            ModelError::BadName(_) | ModelError::BadKeyword(_) => format!("[CANNOT] {m}"),
            _ => m.to_string(),
        },
        other if other.is_full() => {
            tracing::error!(error = %other, "IMAP: the disk is full");
            "[LIMIT] the server's storage is full, try again later".into()
        }
        other => {
            tracing::warn!(error = %other, "IMAP: storage failure");
            "[SERVERBUG] storage failure, try again".into()
        }
    }
}

/// Resolves a sequence set against `largest` (the `*` value).
fn resolve(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(x) => (v(x), v(x)),
            Sequence::Range(a, b) => {
                let (a, b) = (v(a), v(b));
                (a.min(b), a.max(b))
            }
        })
        .collect()
}

/// Writes a UID set in IMAP's compact form (`1:3,7`).
fn uid_set(uids: &[u32]) -> String {
    let mut v = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// One `BODY[…]` item: its name in the answer, the section, the partial
/// range, and whether it marks the message read (not `.PEEK`).
struct BodyWant(String, Section, Option<(u32, u32)>, bool);

/// What one FETCH asks for, from the item names.
#[derive(Default)]
struct Want {
    uid: bool,
    flags: bool,
    internal_date: bool,
    size: bool,
    envelope: bool,
    body: bool,
    structure: bool,
    modseq: bool,
    sections: Vec<BodyWant>,
    /// RFC822, RFC822.HEADER, RFC822.TEXT.
    rfc822: Vec<(&'static str, Section, bool)>,
}

impl Want {
    /// The whole view (bytes and MIME parse) is needed; ENVELOPE alone
    /// needs the headers only, RFC822.SIZE nothing but the record.
    fn needs_view(&self) -> bool {
        self.body || self.structure || !self.sections.is_empty() || !self.rfc822.is_empty()
    }
    fn sets_seen(&self) -> bool {
        self.sections.iter().any(|s| s.3) || self.rfc822.iter().any(|r| r.2)
    }
}

fn part_path(p: Option<&imap_codec::imap_types::fetch::Part>) -> Vec<u32> {
    p.map(|p| p.0.as_ref().iter().map(|n| n.get()).collect())
        .unwrap_or_default()
}

fn section_of(s: Option<&ImapSection<'_>>) -> (Section, String) {
    let path_str = |p: &[u32]| p.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
    let dot = |p: &[u32], s: &str| {
        if p.is_empty() {
            s.to_owned()
        } else {
            format!("{}.{s}", path_str(p))
        }
    };
    let names = |v: &imap_codec::imap_types::core::Vec1<
        imap_codec::imap_types::core::AString<'_>,
    >|
     -> Vec<String> {
        v.as_ref()
            .iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .collect()
    };
    match s {
        None => (Section::Part(Vec::new()), String::new()),
        Some(ImapSection::Part(p)) => {
            let p = part_path(Some(p));
            let t = path_str(&p);
            (Section::Part(p), t)
        }
        Some(ImapSection::Header(p)) => {
            let p = part_path(p.as_ref());
            let t = dot(&p, "HEADER");
            (Section::Header(p), t)
        }
        Some(ImapSection::Text(p)) => {
            let p = part_path(p.as_ref());
            let t = dot(&p, "TEXT");
            (Section::Text(p), t)
        }
        Some(ImapSection::Mime(p)) => {
            let p = part_path(Some(p));
            let t = dot(&p, "MIME");
            (Section::Mime(p), t)
        }
        Some(ImapSection::HeaderFields(p, f)) | Some(ImapSection::HeaderFieldsNot(p, f)) => {
            let not = matches!(s, Some(ImapSection::HeaderFieldsNot(..)));
            let p = part_path(p.as_ref());
            let n = names(f);
            let t = format!(
                "{} ({})",
                dot(
                    &p,
                    if not {
                        "HEADER.FIELDS.NOT"
                    } else {
                        "HEADER.FIELDS"
                    }
                ),
                n.iter()
                    .map(|x| x.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            (Section::Fields(p, n, not), t)
        }
    }
}

fn want_of(items: &MacroOrMessageDataItemNames<'_>) -> Want {
    let mut w = Want::default();
    let names: Vec<MessageDataItemName<'_>> = match items {
        MacroOrMessageDataItemNames::Macro(m) => {
            w.flags = true;
            w.internal_date = true;
            w.size = true;
            match m {
                Macro::Fast => {}
                Macro::All => w.envelope = true,
                Macro::Full => {
                    w.envelope = true;
                    w.body = true;
                }
                _ => w.envelope = true,
            }
            Vec::new()
        }
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v.clone(),
    };
    for n in names {
        match n {
            MessageDataItemName::Uid => w.uid = true,
            MessageDataItemName::Flags => w.flags = true,
            MessageDataItemName::InternalDate => w.internal_date = true,
            MessageDataItemName::Rfc822Size => w.size = true,
            MessageDataItemName::Envelope => w.envelope = true,
            MessageDataItemName::Body => w.body = true,
            MessageDataItemName::BodyStructure => w.structure = true,
            MessageDataItemName::ModSeq => w.modseq = true,
            MessageDataItemName::BodyExt {
                section,
                partial,
                peek,
            } => {
                let (s, text) = section_of(section.as_ref());
                w.sections
                    .push(BodyWant(text, s, partial.map(|(a, b)| (a, b.get())), !peek));
            }
            MessageDataItemName::Rfc822 => w.rfc822.push(("RFC822", Section::Part(vec![]), true)),
            MessageDataItemName::Rfc822Header => {
                w.rfc822
                    .push(("RFC822.HEADER", Section::Header(vec![]), false))
            }
            MessageDataItemName::Rfc822Text => {
                w.rfc822.push(("RFC822.TEXT", Section::Text(vec![]), true))
            }
            // BINARY is not offered (no BINARY capability); the grammar knows it.
            MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {}
        }
    }
    w
}

impl Session {
    /// A new connection from `peer`; `tls` when it is already encrypted.
    pub fn new(
        svc: MailService,
        cfg: SessionConfig,
        peer: Option<IpAddr>,
        tls: bool,
        now: Instant,
    ) -> Self {
        let reader = Reader::new(cfg.append_limit);
        Self {
            svc,
            cfg,
            peer,
            tls,
            reader,
            user: None,
            selected: None,
            pending: None,
            condstore: false,
            qresync: false,
            window: (now, 0),
            bad: 0,
            pending_fetch: None,
            spill: None,
        }
    }

    /// The greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        line(
            out,
            &format!(
                "* OK [CAPABILITY {}] {} Caliopen IMAP ready",
                self.capabilities(),
                self.cfg.hostname
            ),
        );
    }

    /// TLS is now active (after STARTTLS). Whatever the client sent after
    /// STARTTLS in clear is dropped (RFC 9051 §6.2.1: it could have been
    /// injected on the way).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.reader = Reader::new(self.cfg.append_limit);
    }

    /// The instance's counters.
    pub fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        self.svc.metrics()
    }

    /// The change signal of the logged-in account, when the store gives one.
    pub fn watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.user.as_deref().and_then(|u| self.svc.store().watch(u))
    }

    /// True once a user logged in.
    pub fn authenticated(&self) -> bool {
        self.user.is_some()
    }

    /// The logged-in account (local part).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn capabilities(&self) -> String {
        let mut c = vec!["IMAP4rev1", "SASL-IR", "ID", "ENABLE", "IDLE"];
        if self.user.is_none() {
            c.push("LITERAL-");
            if self.tls {
                c.push("AUTH=PLAIN");
            } else {
                if self.cfg.starttls {
                    c.push("STARTTLS");
                }
                c.push("LOGINDISABLED");
            }
            return c.join(" ");
        }
        let mut s = c.join(" ");
        s.push_str(
            " LITERAL+ NAMESPACE UIDPLUS MOVE UNSELECT CHILDREN CONDSTORE QUOTA \
QUOTA=RES-STORAGE QUOTA=RES-MESSAGE QRESYNC \
SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH",
        );
        s.push_str(&format!(" APPENDLIMIT={}", self.cfg.append_limit));
        s
    }

    /// Handles one input; writes the answer to `out`.
    pub async fn input(&mut self, i: Input, now: Instant, out: &mut Vec<u8>) -> Action {
        match i {
            Input::Continue => {
                line(out, "+ go ahead");
                Action::Continue
            }
            Input::Bad(tag, why) => {
                self.bad += 1;
                let t = tag.as_ref().map_or("*".to_owned(), tag_of);
                line(out, &format!("{t} BAD {why}"));
                if self.bad > MAX_BAD {
                    line(out, "* BYE too many bad commands");
                    return Action::Close;
                }
                Action::Continue
            }
            Input::Bye(why) => {
                line(out, &format!("* BYE {why}"));
                Action::Close
            }
            Input::IdleDone => {
                self.reader.expect(Expect::Command);
                match self.pending.take() {
                    Some(t) => line(out, &format!("{} OK IDLE done", tag_of(&t))),
                    None => line(out, "* BAD DONE without IDLE"),
                }
                Action::Continue
            }
            Input::AuthenticateData(d) => {
                self.reader.expect(Expect::Command);
                let Some(tag) = self.pending.take() else {
                    line(out, "* BAD unexpected authentication data");
                    return Action::Continue;
                };
                match d {
                    AuthenticateData::Cancel => {
                        line(
                            out,
                            &format!("{} BAD authentication cancelled", tag_of(&tag)),
                        );
                        Action::Continue
                    }
                    AuthenticateData::Continue(data) => {
                        let data = data.declassify().to_vec();
                        self.plain(&tag, &data, out).await;
                        Action::Continue
                    }
                }
            }
            Input::SearchExtended(c, opts) => {
                let tag = tag_of(&c.tag);
                match c.body {
                    CommandBody::Search { criteria, uid, .. } if self.selected.is_some() => {
                        let key = match criteria.as_ref().len() {
                            1 => criteria.as_ref()[0].clone(),
                            _ => SearchKey::And(criteria.clone()),
                        };
                        match self.search_hits(&key, uid) {
                            Ok((hits, highest)) => {
                                let mut l = format!("* ESEARCH (TAG \"{tag}\")");
                                if uid {
                                    l.push_str(" UID");
                                }
                                let all = opts.is_empty() || opts.iter().any(|o| o == "ALL");
                                if let (true, Some(min)) =
                                    (opts.iter().any(|o| o == "MIN"), hits.iter().min())
                                {
                                    l.push_str(&format!(" MIN {min}"));
                                }
                                if let (true, Some(max)) =
                                    (opts.iter().any(|o| o == "MAX"), hits.iter().max())
                                {
                                    l.push_str(&format!(" MAX {max}"));
                                }
                                if opts.iter().any(|o| o == "COUNT") {
                                    l.push_str(&format!(" COUNT {}", hits.len()));
                                }
                                if all && !hits.is_empty() {
                                    l.push_str(&format!(" ALL {}", uid_set(&hits)));
                                }
                                if uses_modseq(&key) && !hits.is_empty() {
                                    l.push_str(&format!(" MODSEQ {}", highest.max(1)));
                                }
                                line(out, &l);
                                line(out, &format!("{tag} OK SEARCH done"));
                            }
                            Err(e) => line(out, &format!("{tag} NO {e}")),
                        }
                    }
                    _ if self.user.is_none() => line(out, &format!("{tag} NO log in first")),
                    _ => line(out, &format!("{tag} NO select a mailbox first")),
                }
                Action::Continue
            }
            Input::ListExtended(c, opts) => {
                let tag = tag_of(&c.tag);
                match (&c.body, self.user.is_some()) {
                    (
                        CommandBody::List {
                            reference,
                            mailbox_wildcard,
                        },
                        true,
                    ) => {
                        self.list_extended(reference, mailbox_wildcard, &opts, out);
                        line(out, &format!("{tag} OK LIST done"));
                    }
                    (_, false) => line(out, &format!("{tag} NO log in first")),
                    _ => line(out, &format!("{tag} BAD unexpected command")),
                }
                Action::Continue
            }
            Input::Command(c) => {
                if self.user.is_none() {
                    if now.duration_since(self.window.0) >= Duration::from_secs(1) {
                        self.window = (now, 0);
                    }
                    self.window.1 += 1;
                    if self.window.1 > MAX_COMMANDS_PER_SECOND_UNAUTH {
                        line(out, "* BYE too many commands before login");
                        return Action::Close;
                    }
                }
                self.command(c, out).await
            }
        }
    }

    /// Untagged updates for an idling client, after a change of its account.
    pub async fn idle_update(&mut self, out: &mut Vec<u8>) {
        self.refresh(out, true).await;
    }

    /// Runs a command. In the selected state, what changed meanwhile is
    /// reported before the tagged answer — except during FETCH, STORE and
    /// SEARCH, whose sequence numbers must not shift (RFC 9051 §7.5.1).
    async fn command(&mut self, c: Command<'static>, out: &mut Vec<u8>) -> Action {
        tracing::debug!(user = ?self.user, tag = c.tag.as_ref(), command = c.body.name(), "IMAP command");
        let quiet = matches!(
            c.body,
            CommandBody::Fetch { .. }
                | CommandBody::Store { .. }
                | CommandBody::Search { .. }
                | CommandBody::Noop
                | CommandBody::Check
                | CommandBody::Idle
                | CommandBody::Logout
                | CommandBody::Select { .. }
                | CommandBody::Examine { .. }
                | CommandBody::Close
                | CommandBody::Unselect
        );
        let mut own = Vec::new();
        let action = self.run_command(c, &mut own).await;
        if quiet || self.selected.is_none() || action != Action::Continue {
            out.extend_from_slice(&own);
            return action;
        }
        // The tagged answer is the last line (it never holds a literal).
        let body = own.strip_suffix(b"\r\n").unwrap_or(&own);
        let last = body
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map_or(0, |i| i + 2);
        out.extend_from_slice(&own[..last]);
        self.refresh(out, true).await;
        out.extend_from_slice(&own[last..]);
        action
    }

    /// Takes `uids` out of the selected snapshot and tells the client:
    /// `VANISHED` once QRESYNC is on, else one `EXPUNGE` per message,
    /// highest sequence number first so that each number is right when sent.
    fn report_expunged(&mut self, uids: &[u32], out: &mut Vec<u8>) {
        let qresync = self.qresync;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let mut seqs: Vec<usize> = uids.iter().filter_map(|u| sel.seq_of(*u)).collect();
        if seqs.is_empty() {
            return;
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs.dedup();
        if qresync {
            let gone: Vec<u32> = seqs.iter().map(|&i| sel.uids[i]).collect();
            line(out, &format!("* VANISHED {}", uid_set(&gone)));
        } else {
            for &i in &seqs {
                line(out, &format!("* {} EXPUNGE", i + 1));
            }
        }
        let drop: HashSet<usize> = seqs.into_iter().collect();
        let mut i = 0;
        sel.ids.retain(|_| {
            i += 1;
            !drop.contains(&(i - 1))
        });
        let mut i = 0;
        sel.uids.retain(|_| {
            i += 1;
            !drop.contains(&(i - 1))
        });
    }

    /// After a change of ours: when nothing else changed the account since
    /// the snapshot, the snapshot is at the new state (so the change is not
    /// reported back to the client that made it).
    fn own_change(&mut self, before: Option<u64>, after: u64) {
        if let (Some(sel), Some(b)) = (self.selected.as_mut(), before) {
            if sel.state == b && after == b + 1 {
                sel.state = after;
            }
        }
    }

    async fn run_command(&mut self, c: Command<'static>, out: &mut Vec<u8>) -> Action {
        let tag = tag_of(&c.tag);
        let ok = |out: &mut Vec<u8>, text: &str| line(out, &format!("{tag} OK {text}"));
        let no = |out: &mut Vec<u8>, text: &str| line(out, &format!("{tag} NO {text}"));
        let bad = |out: &mut Vec<u8>, text: &str| line(out, &format!("{tag} BAD {text}"));
        let authed = self.user.is_some();
        let selected = self.selected.is_some();
        let moving = matches!(c.body, CommandBody::Move { .. });
        match c.body {
            CommandBody::Capability => {
                line(out, &format!("* CAPABILITY {}", self.capabilities()));
                ok(out, "CAPABILITY done");
            }
            CommandBody::Noop | CommandBody::Check => {
                self.refresh(out, true).await;
                ok(out, "NOOP done");
            }
            CommandBody::Logout => {
                line(out, "* BYE logging out");
                ok(out, "LOGOUT done");
                return Action::Close;
            }
            CommandBody::Id { .. } => {
                line(
                    out,
                    &format!(
                        "* ID (\"name\" \"Caliopen\" \"version\" \"{}\")",
                        env!("CARGO_PKG_VERSION")
                    ),
                );
                ok(out, "ID done");
            }
            CommandBody::StartTLS => {
                if self.tls || !self.cfg.starttls {
                    bad(out, "TLS is already active or not available");
                } else {
                    ok(out, "begin TLS now");
                    return Action::StartTls;
                }
            }
            CommandBody::Login { username, password } if !authed => {
                if !self.tls {
                    no(out, "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS");
                } else {
                    let u = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let p = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    self.login(&tag, &u, &p, out).await;
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authed => {
                if !self.tls {
                    no(
                        out,
                        "[PRIVACYREQUIRED] authentication is disabled before STARTTLS",
                    );
                } else if mechanism != AuthMechanism::Plain {
                    no(out, "[CANNOT] only AUTHENTICATE PLAIN is offered");
                } else {
                    match initial_response {
                        Some(r) => {
                            let data = r.declassify().to_vec();
                            self.plain(&c.tag, &data, out).await;
                        }
                        None => {
                            self.pending = Some(c.tag.clone());
                            self.reader.expect(Expect::AuthenticateData);
                            line(out, "+ ");
                        }
                    }
                }
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                bad(out, "already logged in");
            }
            _ if !authed => no(out, "log in first"),
            CommandBody::Enable { capabilities } => {
                let mut on = Vec::new();
                for c in capabilities.as_ref() {
                    match c {
                        CapabilityEnable::CondStore => {
                            self.condstore = true;
                            on.push("CONDSTORE");
                        }
                        other if other.to_string().eq_ignore_ascii_case("QRESYNC") => {
                            self.condstore = true;
                            self.qresync = true;
                            on.push("QRESYNC");
                        }
                        _ => {}
                    }
                }
                line(out, format!("* ENABLED {}", on.join(" ")).trim_end());
                ok(out, "ENABLE done");
            }
            CommandBody::Namespace => {
                line(out, "* NAMESPACE ((\"\" \"/\")) NIL NIL");
                ok(out, "NAMESPACE done");
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                return self.select(&tag, &mailbox, false, &parameters, out).await;
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                return self.select(&tag, &mailbox, true, &parameters, out).await;
            }
            CommandBody::Create { mailbox } => match mailbox_name(&mailbox) {
                Err(e) => no(out, &format!("[CANNOT] {e}")),
                Ok(n) => {
                    let n = n.trim_end_matches('/').to_owned();
                    match self.svc.store().create_mailbox(self.owner(), &n).await {
                        Ok(_) => ok(out, "CREATE done"),
                        Err(e) => no(out, &store_no(&e)),
                    }
                }
            },
            CommandBody::Delete { mailbox } => match self.find(&mailbox) {
                Err(e) => no(out, &e),
                Ok(b) => match self.svc.store().delete_mailbox(self.owner(), b.id).await {
                    Ok(_) => ok(out, "DELETE done"),
                    Err(e) => no(out, &store_no(&e)),
                },
            },
            CommandBody::Rename { from, to } => match (self.find(&from), mailbox_name(&to)) {
                (Err(e), _) => no(out, &e),
                (_, Err(e)) => no(out, &format!("[CANNOT] {e}")),
                (Ok(b), Ok(n)) => match self
                    .svc
                    .store()
                    .rename_mailbox(self.owner(), b.id, &n)
                    .await
                {
                    Ok(()) => ok(out, "RENAME done"),
                    Err(e) => no(out, &store_no(&e)),
                },
            },
            // Every mailbox is subscribed: the model keeps no subscription list.
            CommandBody::Subscribe { mailbox } | CommandBody::Unsubscribe { mailbox } => {
                match self.find(&mailbox) {
                    Ok(_) => ok(out, "done (every mailbox is subscribed)"),
                    Err(e) => no(out, &e),
                }
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                self.list(&reference, &mailbox_wildcard, "LIST", out);
                ok(out, "LIST done");
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                self.list(&reference, &mailbox_wildcard, "LSUB", out);
                ok(out, "LSUB done");
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => match self.find(&mailbox) {
                Err(e) => no(out, &e),
                Ok(b) => {
                    self.status(&b, &item_names, out);
                    ok(out, "STATUS done");
                }
            },
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let data = match &message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => {
                        l.data().to_vec()
                    }
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                        l.data.to_vec()
                    }
                };
                let when = date.map(|d| d.as_ref().timestamp());
                match self.append(&mailbox, &flags, when, data).await {
                    Ok(text) => ok(out, &text),
                    Err(e) => no(out, &e),
                }
            }
            CommandBody::Idle => {
                self.refresh(out, true).await;
                self.pending = Some(c.tag.clone());
                self.reader.expect(Expect::IdleDone);
                line(out, "+ idling");
                return Action::Idle;
            }
            CommandBody::GetQuotaRoot { mailbox } => match self.find(&mailbox) {
                Err(e) => no(out, &e),
                Ok(b) => {
                    let mut name = Vec::new();
                    render::astring(&mut name, imap_name(&b).as_bytes());
                    let name = String::from_utf8_lossy(&name).into_owned();
                    if self.has_quota() {
                        line(out, &format!("* QUOTAROOT {name} \"\""));
                        self.quota(out);
                    } else {
                        line(out, &format!("* QUOTAROOT {name}"));
                    }
                    ok(out, "GETQUOTAROOT done");
                }
            },
            CommandBody::GetQuota { root } => {
                if !root.as_ref().is_empty() || !self.has_quota() {
                    no(out, "[NONEXISTENT] no such quota root (the account's is \"\", when it has limits)");
                } else {
                    self.quota(out);
                    ok(out, "GETQUOTA done");
                }
            }
            CommandBody::SetQuota { .. } => no(out, "[NOPERM] quotas are set by the operator"),
            _ if !selected => no(out, "select a mailbox first"),
            CommandBody::Unselect => {
                self.selected = None;
                ok(out, "UNSELECT done");
            }
            CommandBody::Close => {
                if self.selected.as_ref().is_some_and(|s| !s.read_only) {
                    let mut sink = Vec::new();
                    if let Err(e) = self.expunge(None, &mut sink).await {
                        no(out, &e);
                        return Action::Continue;
                    }
                }
                self.selected = None;
                ok(out, "CLOSE done");
            }
            CommandBody::Expunge => match self.expunge(None, out).await {
                Ok(()) => ok(out, "EXPUNGE done"),
                Err(e) => no(out, &e),
            },
            CommandBody::ExpungeUid { sequence_set } => {
                match self.expunge(Some(&sequence_set), out).await {
                    Ok(()) => ok(out, "EXPUNGE done"),
                    Err(e) => no(out, &e),
                }
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                let mut changed_since = None;
                let mut vanished = false;
                for m in &modifiers {
                    match m {
                        FetchModifier::ChangedSince(v) => changed_since = Some(v.get()),
                        FetchModifier::Vanished => vanished = true,
                    }
                }
                if changed_since.is_some() {
                    self.condstore = true;
                }
                if vanished {
                    // RFC 7162 §3.2.6: UID FETCH, with CHANGEDSINCE, QRESYNC enabled.
                    let Some(since) = changed_since.filter(|_| uid && self.qresync) else {
                        bad(
                            out,
                            "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC",
                        );
                        return Action::Continue;
                    };
                    let gone = self.vanished_in(since, &sequence_set);
                    if !gone.is_empty() {
                        line(out, &format!("* VANISHED (EARLIER) {}", uid_set(&gone)));
                    }
                }
                self.fetch(
                    &tag,
                    &sequence_set,
                    &macro_or_item_names,
                    uid,
                    changed_since,
                    out,
                )
                .await;
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(v)| *v)
                    .next();
                if unchanged_since.is_some() {
                    self.condstore = true;
                }
                match self
                    .store_flags(
                        &sequence_set,
                        kind,
                        response == StoreResponse::Silent,
                        &flags,
                        uid,
                        unchanged_since,
                        out,
                    )
                    .await
                {
                    Ok(modified) if modified.is_empty() => ok(out, "STORE done"),
                    Ok(modified) => ok(
                        out,
                        &format!(
                            "[MODIFIED {}] some messages changed meanwhile",
                            uid_set(&modified)
                        ),
                    ),
                    Err(e) => no(out, &e),
                }
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            }
            | CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => match self.copy(&sequence_set, &mailbox, uid, moving, out).await {
                Ok(text) => ok(out, &text),
                Err(e) => no(out, &e),
            },
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                if let Some(cs) = &charset {
                    let cs = cs.as_ref().to_ascii_uppercase();
                    if cs != "UTF-8" && cs != "US-ASCII" {
                        no(out, "[BADCHARSET (UTF-8 US-ASCII)] unsupported charset");
                        return Action::Continue;
                    }
                }
                let key = match criteria.as_ref().len() {
                    1 => criteria.as_ref()[0].clone(),
                    _ => SearchKey::And(criteria.clone()),
                };
                match self.search(&key, uid, out) {
                    Ok(()) => ok(out, "SEARCH done"),
                    Err(e) => no(out, &e),
                }
            }
            other => {
                bad(out, &format!("{} is not supported", other.name()));
            }
        }
        Action::Continue
    }

    fn owner(&self) -> &str {
        self.user.as_deref().unwrap_or_default()
    }

    async fn login(&mut self, tag: &str, user: &str, password: &str, out: &mut Vec<u8>) {
        let address = if user.contains('@') {
            user.to_owned()
        } else {
            format!("{user}@{}", self.svc.primary_domain())
        };
        match self.svc.login(self.peer, &address, password).await {
            Ok(a) => {
                let Some(local) = self.svc.local_user(&a) else {
                    line(
                        out,
                        &format!("{tag} NO [AUTHENTICATIONFAILED] wrong address or password"),
                    );
                    return;
                };
                tracing::info!(user = %a, peer = ?self.peer, "IMAP login");
                self.user = Some(local);
                self.reader.logged_in(self.cfg.append_limit);
                line(
                    out,
                    &format!("{tag} OK [CAPABILITY {}] logged in", self.capabilities()),
                );
            }
            Err(crate::login::LoginError::Invalid) => {
                line(
                    out,
                    &format!("{tag} NO [AUTHENTICATIONFAILED] wrong address or password"),
                );
            }
            Err(e) => line(out, &format!("{tag} NO [UNAVAILABLE] {e}")),
        }
    }

    async fn plain(&mut self, tag: &Tag<'_>, data: &[u8], out: &mut Vec<u8>) {
        let tag = tag_of(tag);
        let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        let [authz, authc, pass] = parts.as_slice() else {
            line(out, &format!("{tag} BAD malformed PLAIN response"));
            return;
        };
        let (authz, authc, pass) = (
            String::from_utf8_lossy(authz),
            String::from_utf8_lossy(authc),
            String::from_utf8_lossy(pass),
        );
        if !authz.is_empty() && authz != authc {
            line(
                out,
                &format!("{tag} NO [AUTHORIZATIONFAILED] acting for another user is not allowed"),
            );
            return;
        }
        self.login(&tag, &authc, &pass, out).await;
    }

    fn find(&self, m: &ImapMailbox<'_>) -> Result<Mailbox, String> {
        let name = mailbox_name(m).map_err(|e| format!("[CANNOT] {e}"))?;
        match self.svc.store().mailboxes(self.owner()) {
            Ok(boxes) => boxes
                .into_iter()
                .find(|b| {
                    if name == "INBOX" {
                        b.role == Some(Role::Inbox)
                    } else {
                        b.role != Some(Role::Inbox) && b.name == name
                    }
                })
                .ok_or_else(|| "[NONEXISTENT] no such mailbox".to_owned()),
            Err(e) => Err(store_no(&e)),
        }
    }

    fn list(
        &self,
        reference: &ImapMailbox<'_>,
        pattern: &ListMailbox<'_>,
        verb: &str,
        out: &mut Vec<u8>,
    ) {
        self.list_with(
            reference,
            pattern,
            verb,
            &super::listext::ListOptions::default(),
            out,
        );
    }

    fn list_extended(
        &self,
        reference: &ImapMailbox<'_>,
        pattern: &ListMailbox<'_>,
        opts: &super::listext::ListOptions,
        out: &mut Vec<u8>,
    ) {
        self.list_with(reference, pattern, "LIST", opts, out);
    }

    fn list_with(
        &self,
        reference: &ImapMailbox<'_>,
        pattern: &ListMailbox<'_>,
        verb: &str,
        opts: &super::listext::ListOptions,
        out: &mut Vec<u8>,
    ) {
        let reference = match reference {
            ImapMailbox::Inbox => b"INBOX".to_vec(),
            ImapMailbox::Other(o) => o.as_ref().to_vec(),
        };
        let pattern: Vec<u8> = match pattern {
            ListMailbox::Token(t) => t.as_ref().to_vec(),
            ListMailbox::String(s) => s.as_ref().to_vec(),
        };
        if pattern.is_empty() {
            line(out, &format!("* {verb} (\\Noselect) \"/\" \"\""));
            return;
        }
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        if opts.patterns.is_empty() {
            patterns.push(pattern);
        } else {
            patterns.extend(opts.patterns.iter().cloned());
        }
        let full: Vec<Vec<u8>> = patterns
            .into_iter()
            .map(|p| {
                let mut f = reference.clone();
                f.extend_from_slice(&p);
                f
            })
            .collect();
        let special_only = opts.select.iter().any(|o| o == "SPECIAL-USE");
        let subscribed = opts
            .select
            .iter()
            .chain(&opts.ret)
            .any(|o| o == "SUBSCRIBED");
        let status: Vec<StatusDataItemName> = opts
            .status
            .iter()
            .flatten()
            .filter_map(|s| match s.as_str() {
                "MESSAGES" => Some(StatusDataItemName::Messages),
                "UIDNEXT" => Some(StatusDataItemName::UidNext),
                "UIDVALIDITY" => Some(StatusDataItemName::UidValidity),
                "UNSEEN" => Some(StatusDataItemName::Unseen),
                "RECENT" => Some(StatusDataItemName::Recent),
                "HIGHESTMODSEQ" => Some(StatusDataItemName::HighestModSeq),
                _ => None,
            })
            .collect();
        let Ok(mut boxes) = self.svc.store().mailboxes(self.owner()) else {
            return;
        };
        boxes.sort_by(|a, b| {
            (a.role != Some(Role::Inbox), &a.name).cmp(&(b.role != Some(Role::Inbox), &b.name))
        });
        let names: Vec<String> = boxes.iter().map(imap_name).collect();
        for (b, n) in boxes.iter().zip(&names) {
            let matches = full.iter().any(|f| {
                if b.role == Some(Role::Inbox) {
                    wildcard(&f.to_ascii_uppercase(), b"INBOX")
                } else {
                    wildcard(f, n.as_bytes())
                }
            });
            if !matches || (special_only && matches!(b.role, None | Some(Role::Inbox))) {
                continue;
            }
            let mut attrs = Vec::new();
            let prefix = format!("{n}/");
            attrs.push(if names.iter().any(|x| x.starts_with(&prefix)) {
                "\\HasChildren"
            } else {
                "\\HasNoChildren"
            });
            if let Some(a) = match b.role {
                Some(Role::Sent) => Some("\\Sent"),
                Some(Role::Drafts) => Some("\\Drafts"),
                Some(Role::Trash) => Some("\\Trash"),
                Some(Role::Junk) => Some("\\Junk"),
                Some(Role::Archive) => Some("\\Archive"),
                _ => None,
            } {
                attrs.push(a);
            }
            if subscribed {
                attrs.push("\\Subscribed");
            }
            let mut l = format!("* {verb} ({}) \"/\" ", attrs.join(" ")).into_bytes();
            render::astring(&mut l, n.as_bytes());
            l.extend_from_slice(b"\r\n");
            out.extend_from_slice(&l);
            if !status.is_empty() {
                self.status(b, &status, out);
            }
        }
    }

    fn status(&self, b: &Mailbox, items: &[StatusDataItemName], out: &mut Vec<u8>) {
        let mut v = Vec::new();
        for i in items {
            match i {
                StatusDataItemName::Messages => v.push(format!("MESSAGES {}", b.total)),
                StatusDataItemName::Recent => v.push("RECENT 0".into()),
                StatusDataItemName::UidNext => v.push(format!("UIDNEXT {}", b.uid_next)),
                StatusDataItemName::UidValidity => {
                    v.push(format!("UIDVALIDITY {}", b.uid_validity))
                }
                StatusDataItemName::Unseen => v.push(format!("UNSEEN {}", b.unseen)),
                StatusDataItemName::HighestModSeq => {
                    let s = self.svc.store().state(self.owner()).unwrap_or(1).max(1);
                    v.push(format!("HIGHESTMODSEQ {s}"));
                }
                _ => {}
            }
        }
        let mut l = b"* STATUS ".to_vec();
        render::astring(&mut l, imap_name(b).as_bytes());
        l.extend_from_slice(format!(" ({})\r\n", v.join(" ")).as_bytes());
        out.extend_from_slice(&l);
    }

    fn has_quota(&self) -> bool {
        self.svc
            .store()
            .quota(self.owner())
            .is_ok_and(|q| q.limits.bytes > 0 || q.limits.messages > 0)
    }

    fn quota(&self, out: &mut Vec<u8>) {
        match self.svc.store().quota(self.owner()) {
            Ok(q) => {
                let mut r = Vec::new();
                if q.limits.bytes > 0 {
                    r.push(format!(
                        "STORAGE {} {}",
                        q.used.bytes.div_ceil(1024),
                        q.limits.bytes / 1024
                    ));
                }
                if q.limits.messages > 0 {
                    r.push(format!("MESSAGE {} {}", q.used.messages, q.limits.messages));
                }
                line(out, &format!("* QUOTA \"\" ({})", r.join(" ")));
            }
            Err(e) => tracing::warn!(error = %e, "IMAP: quota unreadable"),
        }
    }

    async fn select(
        &mut self,
        tag: &str,
        mailbox: &ImapMailbox<'_>,
        read_only: bool,
        params: &[SelectParameter],
        out: &mut Vec<u8>,
    ) -> Action {
        // A failed SELECT leaves no mailbox selected (RFC 9051 §6.3.2).
        if self.selected.take().is_some() && self.qresync {
            line(out, "* OK [CLOSED] previous mailbox closed");
        }
        let b = match self.find(mailbox) {
            Ok(b) => b,
            Err(e) => {
                line(out, &format!("{tag} NO {e}"));
                return Action::Continue;
            }
        };
        if params
            .iter()
            .any(|p| matches!(p, SelectParameter::CondStore))
        {
            self.condstore = true;
        }
        let state = match self.svc.store().state(self.owner()) {
            Ok(s) => s,
            Err(e) => {
                line(out, &format!("{tag} NO {}", store_no(&e)));
                return Action::Continue;
            }
        };
        // The state was read first: a list read after it is at least as
        // new as its key says (see `UidLists`).
        let key = (state, b.uid_validity, b.uid_next);
        let lists = self.svc.uid_lists();
        let list = match lists.get(self.owner(), b.id, key) {
            Some(l) => l,
            None => match self.svc.store().uids(self.owner(), b.id) {
                Ok(l) => {
                    let l = std::sync::Arc::new(l);
                    lists.put(self.owner(), b.id, key, l.clone());
                    l
                }
                Err(e) => {
                    line(out, &format!("{tag} NO {}", store_no(&e)));
                    return Action::Continue;
                }
            },
        };
        let (uids, ids): (Vec<u32>, Vec<u64>) = list.iter().copied().unzip();
        line(out, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded $Junk $NotJunk $CaliopenMesh $CaliopenTls $CaliopenPlain $CaliopenLocal)");
        line(
            out,
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags kept",
        );
        line(out, &format!("* {} EXISTS", uids.len()));
        line(out, "* 0 RECENT");
        line(
            out,
            &format!("* OK [UIDVALIDITY {}] UIDs valid", b.uid_validity),
        );
        line(out, &format!("* OK [UIDNEXT {}] next UID", b.uid_next));
        if self.condstore {
            line(
                out,
                &format!("* OK [HIGHESTMODSEQ {}] highest", state.max(1)),
            );
        }
        let sel = Selected {
            id: b.id,
            read_only,
            uid_validity: b.uid_validity,
            uids,
            ids,
            state,
        };
        // QRESYNC: what changed since the client's state, in this mailbox.
        for p in params {
            if let SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                ..
            } = p
            {
                self.qresync = true;
                if uid_validity.get() == sel.uid_validity {
                    self.selected = Some(sel);
                    self.resync(mod_sequence_value.get(), out);
                    line(
                        out,
                        &format!(
                            "{tag} OK [{}] SELECT done",
                            if read_only { "READ-ONLY" } else { "READ-WRITE" }
                        ),
                    );
                    return Action::Continue;
                }
            }
        }
        self.selected = Some(sel);
        line(
            out,
            &format!(
                "{tag} OK [{}] SELECT done",
                if read_only { "READ-ONLY" } else { "READ-WRITE" }
            ),
        );
        Action::Continue
    }

    /// The UIDs of `set` taken out of the selected mailbox after `since`
    /// (QRESYNC's `VANISHED (EARLIER)` of a `UID FETCH`). When the change
    /// log no longer reaches back that far, every UID of the set that is
    /// not in the mailbox (RFC 7162 allows reporting more than vanished).
    fn vanished_in(&self, since: u64, set: &SequenceSet) -> Vec<u32> {
        let Some(sel) = &self.selected else {
            return Vec::new();
        };
        let largest = sel.uids.last().copied().unwrap_or(0);
        let ranges = resolve(set, largest);
        let inside = |u: u32| ranges.iter().any(|&(a, b)| a <= u && u <= b);
        let mut out = Vec::new();
        match mailbox_log(self.svc.store(), self.owner(), sel.id, since) {
            Some(log) => out.extend(log.removed.into_iter().filter(|&u| inside(u))),
            None => {
                for &(a, b) in &ranges {
                    // Bounded: a set reaching past the mailbox's last UID stops there.
                    for u in a.max(1)..=b.min(largest) {
                        if sel.seq_of(u).is_none() {
                            out.push(u);
                        }
                    }
                }
            }
        }
        out.retain(|u| sel.seq_of(*u).is_none());
        out.sort_unstable();
        out.dedup();
        out
    }

    /// QRESYNC at SELECT: VANISHED (EARLIER) for UIDs removed since `since`
    /// and FETCH for messages changed since.
    fn resync(&mut self, since: u64, out: &mut Vec<u8>) {
        let Some(sel) = &self.selected else { return };
        let (mut vanished, mut changed): (Vec<u32>, Vec<(u32, MessageMeta)>) =
            match mailbox_log(self.svc.store(), self.owner(), sel.id, since) {
                Some(log) => (
                    log.removed,
                    log.changed
                        .into_iter()
                        .filter_map(|m| Some((m.uid_in(sel.id)?, m)))
                        .collect(),
                ),
                None => {
                    // Too old to say what vanished: every UID up to the
                    // first one the client may not know is given.
                    let gone = match sel.uids.last() {
                        Some(&last) => (1..=last).filter(|u| sel.seq_of(*u).is_none()).collect(),
                        None => Vec::new(),
                    };
                    let all = sel
                        .ids
                        .iter()
                        .zip(&sel.uids)
                        .filter_map(|(&id, &u)| {
                            self.svc.store().meta(id).ok().flatten().map(|m| (u, m))
                        })
                        .collect();
                    (gone, all)
                }
            };
        vanished.retain(|u| sel.seq_of(*u).is_none());
        if !vanished.is_empty() {
            line(out, &format!("* VANISHED (EARLIER) {}", uid_set(&vanished)));
        }
        changed.sort_by_key(|c| c.0);
        changed.dedup_by_key(|c| c.0);
        for (u, m) in changed {
            if let Some(i) = sel.seq_of(u) {
                line(
                    out,
                    &format!(
                        "* {} FETCH (UID {u} FLAGS {} MODSEQ ({}))",
                        i + 1,
                        flags_list(&m),
                        m.modseq.max(1)
                    ),
                );
            }
        }
    }

    /// Brings the selected snapshot up to date and reports what changed.
    /// `expunges`: EXPUNGE responses may be sent now.
    async fn refresh(&mut self, out: &mut Vec<u8>, expunges: bool) {
        let owner = self.owner().to_owned();
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let svc = self.svc.clone();
        let store = svc.store();
        let Ok(state) = store.state(&owner) else {
            return;
        };
        if state == sel.state {
            return;
        }
        let mut removed: HashSet<u32> = HashSet::new();
        let mut added: Vec<(u32, u64)> = Vec::new();
        let mut updated: Vec<MessageMeta> = Vec::new();
        let mut from = sel.state;
        let log = mailbox_log(store, &owner, sel.id, sel.state);
        let full = log.is_none();
        if let Some(log) = log {
            removed.extend(log.removed);
            for m in log.changed {
                match m.uid_in(sel.id) {
                    Some(u) if sel.seq_of(u).is_none() => added.push((u, m.id)),
                    Some(_) => updated.push(m),
                    None => {}
                }
            }
            from = log.state;
        }
        if full {
            let Ok(list) = store.uids(&owner, sel.id) else {
                return;
            };
            let now: HashSet<u32> = list.iter().map(|x| x.0).collect();
            removed = sel
                .uids
                .iter()
                .copied()
                .filter(|u| !now.contains(u))
                .collect();
            added = list
                .into_iter()
                .filter(|(u, _)| sel.seq_of(*u).is_none())
                .collect();
            from = state;
        }
        if !removed.is_empty() && !expunges {
            // Not allowed to say it now: ask again later from the old state.
            from = sel.state;
        }
        if expunges && !removed.is_empty() {
            let uids: Vec<u32> = removed.iter().copied().collect();
            self.report_expunged(&uids, out);
        }
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        added.sort_unstable();
        added.dedup();
        let before = sel.uids.len();
        for (u, id) in added {
            if sel.uids.last().is_none_or(|&l| u > l) && !removed.contains(&u) {
                sel.uids.push(u);
                sel.ids.push(id);
            }
        }
        if sel.uids.len() != before {
            line(out, &format!("* {} EXISTS", sel.uids.len()));
        }
        updated.sort_by_key(|m| m.id);
        updated.dedup_by_key(|m| m.id);
        for m in updated {
            if let Some(i) = m.uid_in(sel.id).and_then(|u| sel.seq_of(u)) {
                let modseq = if self.condstore {
                    format!(" MODSEQ ({})", m.modseq.max(1))
                } else {
                    String::new()
                };
                line(
                    out,
                    &format!(
                        "* {} FETCH (UID {} FLAGS {}{modseq})",
                        i + 1,
                        sel.uids[i],
                        flags_list(&m)
                    ),
                );
            }
        }
        sel.state = from;
    }

    /// The (seq, uid, id) triples a set names.
    fn targets(&self, set: &SequenceSet, uid: bool) -> Vec<(usize, u32, u64)> {
        let Some(sel) = &self.selected else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if sel.uids.is_empty() {
            return out;
        }
        let largest = if uid {
            *sel.uids.last().unwrap_or(&0)
        } else {
            sel.uids.len() as u32
        };
        for (a, b) in resolve(set, largest) {
            if uid {
                let start = sel.uids.partition_point(|&u| u < a);
                let end = sel.uids.partition_point(|&u| u <= b);
                for i in start..end {
                    out.push((i, sel.uids[i], sel.ids[i]));
                }
            } else {
                let a = a.max(1) as usize;
                let b = (b as usize).min(sel.uids.len());
                for i in a..=b {
                    out.push((i - 1, sel.uids[i - 1], sel.ids[i - 1]));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        items: &MacroOrMessageDataItemNames<'_>,
        uid: bool,
        changed_since: Option<u64>,
        out: &mut Vec<u8>,
    ) {
        let mut want = want_of(items);
        want.uid |= uid;
        want.modseq |= changed_since.is_some();
        want.flags |= changed_since.is_some();
        let mut p = PendingFetch {
            tag: tag.to_owned(),
            targets: self.targets(set, uid).into_iter(),
            want,
            changed_since,
            read_only: self.selected.as_ref().is_none_or(|s| s.read_only),
            to_mark: Vec::new(),
        };
        if !self.fetch_step(&mut p, out).await {
            self.pending_fetch = Some(p);
        }
    }

    /// True while a FETCH answer is being written in parts (see
    /// [`Session::set_spill`]): call [`Session::resume`] after sending.
    pub fn busy(&self) -> bool {
        self.pending_fetch.is_some()
    }

    /// Writes the next part of a FETCH answer in progress.
    pub async fn resume(&mut self, out: &mut Vec<u8>) {
        if let Some(mut p) = self.pending_fetch.take() {
            if !self.fetch_step(&mut p, out).await {
                self.pending_fetch = Some(p);
            }
        }
    }

    /// Bounds the output of one step: a FETCH pauses once `out` holds this
    /// much, so that the driver can send it before reading more messages
    /// (`None`, the default: a FETCH is answered in one go).
    pub fn set_spill(&mut self, at: Option<usize>) {
        self.spill = at;
    }

    /// Answers messages of `p` until done (true, the tagged answer
    /// written) or until `out` is over the spill size (false).
    async fn fetch_step(&mut self, p: &mut PendingFetch, out: &mut Vec<u8>) -> bool {
        match self.fetch_messages(p, out).await {
            Ok(false) => false,
            Ok(true) => {
                if let Err(e) = self.fetch_finish(p).await {
                    line(out, &format!("{} NO {e}", p.tag));
                } else {
                    line(out, &format!("{} OK FETCH done", p.tag));
                }
                true
            }
            Err(e) => {
                line(out, &format!("{} NO {e}", p.tag));
                true
            }
        }
    }

    async fn fetch_messages(
        &mut self,
        p: &mut PendingFetch,
        out: &mut Vec<u8>,
    ) -> Result<bool, String> {
        let (want, changed_since, read_only) = (&p.want, p.changed_since, p.read_only);
        let store = self.svc.store();
        for (i, u, id) in p.targets.by_ref() {
            let Some(m) = store.meta(id).map_err(|e| store_no(&e))? else {
                continue;
            };
            if changed_since.is_some_and(|c| m.modseq <= c) {
                continue;
            }
            let mut r = format!("* {} FETCH (", i + 1).into_bytes();
            let mut first = true;
            let mut sep = |r: &mut Vec<u8>| {
                if !first {
                    r.push(b' ');
                }
                first = false;
            };
            if want.uid {
                sep(&mut r);
                r.extend_from_slice(format!("UID {u}").as_bytes());
            }
            let mark = want.sets_seen() && !read_only && !m.has_keyword(SEEN);
            if want.flags || mark {
                sep(&mut r);
                let mut shown = m.clone();
                if mark {
                    shown.keywords.push(SEEN.into());
                    shown.keywords.sort();
                }
                r.extend_from_slice(format!("FLAGS {}", flags_list(&shown)).as_bytes());
            }
            if want.internal_date {
                sep(&mut r);
                r.extend_from_slice(
                    format!("INTERNALDATE \"{}\"", render::internal_date(m.received_at)).as_bytes(),
                );
            }
            if want.modseq || self.condstore {
                sep(&mut r);
                r.extend_from_slice(format!("MODSEQ ({})", m.modseq.max(1)).as_bytes());
            }
            if want.size {
                sep(&mut r);
                r.extend_from_slice(
                    format!("RFC822.SIZE {}", m.size + render::PRIVACY_HEADER_LEN).as_bytes(),
                );
            }
            if want.envelope && !want.needs_view() {
                sep(&mut r);
                r.extend_from_slice(b"ENVELOPE ");
                let envelopes = self.svc.envelopes();
                match envelopes.get(m.blob_id()) {
                    Some(env) => r.extend_from_slice(&env),
                    None => {
                        let raw = store
                            .body(m.blob_id())
                            .map_err(|e| store_no(&e))?
                            .unwrap_or_default();
                        let mut env = Vec::with_capacity(256);
                        match crate::mail::parse_headers_guarded(&raw) {
                            Some(msg) => render::envelope(&mut env, &msg),
                            None => {
                                env.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")
                            }
                        }
                        envelopes.put(m.blob_id(), &env);
                        r.extend_from_slice(&env);
                    }
                }
            }
            if want.needs_view() {
                let raw = store
                    .body(m.blob_id())
                    .map_err(|e| store_no(&e))?
                    .unwrap_or_default();
                // The privacy header of a message never changes (its
                // view is immutable: the index from its own facts, fixed at
                // delivery): made once, from a parse of the message, then
                // kept by message id (never reused).
                let header = match self.svc.privacy_headers().get(m.id) {
                    Some(h) => String::from_utf8_lossy(&h).into_owned(),
                    None => {
                        let h = imap_header(&m, &raw);
                        self.svc.privacy_headers().put(m.id, h.as_bytes());
                        h
                    }
                };
                let view = render::view(&header, &raw);
                // Whole messages (BODY[], RFC822, partial or not) are the
                // view's bytes: no parse for them.
                let whole = |s: &Section| matches!(s, Section::Part(p) if p.is_empty());
                let needs_parse = want.envelope
                    || want.body
                    || want.structure
                    || want.rfc822.iter().any(|(_, s, _)| !whole(s))
                    || want.sections.iter().any(|w| !whole(&w.1));
                let parsed = if needs_parse {
                    render::parse(&view)
                } else {
                    None
                };
                if let Some(msg) = &parsed {
                    if want.envelope {
                        sep(&mut r);
                        r.extend_from_slice(b"ENVELOPE ");
                        render::envelope(&mut r, msg);
                    }
                    if want.body {
                        sep(&mut r);
                        r.extend_from_slice(b"BODY ");
                        render::body_structure(&mut r, &view, msg, false);
                    }
                    if want.structure {
                        sep(&mut r);
                        r.extend_from_slice(b"BODYSTRUCTURE ");
                        render::body_structure(&mut r, &view, msg, true);
                    }
                }
                // A section is made (a copy) only when it is a part of the
                // view; the whole view is written from where it is.
                let mut made: Vec<u8>;
                for (name, s, _) in &want.rfc822 {
                    sep(&mut r);
                    r.extend_from_slice(name.as_bytes());
                    r.push(b' ');
                    let bytes: &[u8] = match &parsed {
                        Some(msg) => {
                            made = render::section(&view, msg, s);
                            &made
                        }
                        None if matches!(s, Section::Part(_)) => &view,
                        None => &[],
                    };
                    render::literal(&mut r, bytes);
                }
                for BodyWant(text, s, partial, _) in &want.sections {
                    sep(&mut r);
                    let bytes: &[u8] = match &parsed {
                        Some(msg) => {
                            made = render::section(&view, msg, s);
                            &made
                        }
                        None if matches!(s, Section::Part(p) if p.is_empty()) => &view,
                        None => &[],
                    };
                    match partial {
                        Some((start, len)) => {
                            let a = (*start as usize).min(bytes.len());
                            let b = a.saturating_add(*len as usize).min(bytes.len());
                            r.extend_from_slice(format!("BODY[{text}]<{start}> ").as_bytes());
                            render::literal(&mut r, &bytes[a..b]);
                        }
                        None => {
                            r.extend_from_slice(format!("BODY[{text}] ").as_bytes());
                            render::literal(&mut r, bytes);
                        }
                    }
                }
            }
            r.extend_from_slice(b")\r\n");
            out.extend_from_slice(&r);
            if mark {
                p.to_mark.push(id);
            }
            if self.spill.is_some_and(|at| out.len() >= at) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Marks read what a FETCH of bodies showed (not `.PEEK`).
    async fn fetch_finish(&mut self, p: &mut PendingFetch) -> Result<(), String> {
        let to_mark = std::mem::take(&mut p.to_mark);
        let store = self.svc.store();
        if !to_mark.is_empty() {
            let before = store.state(self.owner()).ok();
            let (_, after) = store
                .set_keywords(
                    self.owner(),
                    &to_mark,
                    &KeywordChange::Add(vec![SEEN.into()]),
                )
                .await
                .map_err(|e| store_no(&e))?;
            self.own_change(before, after);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn store_flags(
        &mut self,
        set: &SequenceSet,
        kind: StoreType,
        silent: bool,
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Result<Vec<u32>, String> {
        if self.selected.as_ref().is_some_and(|s| s.read_only) {
            return Err("[READ-ONLY] the mailbox is open read-only".into());
        }
        let mut keywords = Vec::new();
        for f in flags {
            if let Some(k) = keyword_of(f)? {
                keywords.push(k);
            }
        }
        let targets = self.targets(set, uid);
        let svc = self.svc.clone();
        let store = svc.store();
        let mut modified = Vec::new();
        let mut ids = Vec::new();
        let mut seq_of_id = std::collections::HashMap::new();
        for (i, u, id) in &targets {
            if let Some(limit) = unchanged_since {
                match store.meta(*id).map_err(|e| store_no(&e))? {
                    Some(m) if m.modseq > limit => {
                        modified.push(if uid { *u } else { *i as u32 + 1 });
                        continue;
                    }
                    _ => {}
                }
            }
            ids.push(*id);
            seq_of_id.insert(*id, (*i, *u));
        }
        if ids.is_empty() {
            return Ok(modified);
        }
        let change = match kind {
            StoreType::Add => KeywordChange::Add(keywords),
            StoreType::Remove => KeywordChange::Remove(keywords),
            StoreType::Replace => KeywordChange::Replace(keywords),
        };
        let before = store.state(self.owner()).ok();
        let (metas, after) = store
            .set_keywords(self.owner(), &ids, &change)
            .await
            .map_err(|e| store_no(&e))?;
        self.own_change(before, after);
        let mut by_id: std::collections::HashMap<u64, MessageMeta> =
            metas.into_iter().map(|m| (m.id, m)).collect();
        for id in &ids {
            let Some(&(i, u)) = seq_of_id.get(id) else {
                continue;
            };
            let m = match by_id.remove(id) {
                Some(m) => m,
                None => match store.meta(*id).ok().flatten() {
                    Some(m) => m,
                    None => continue,
                },
            };
            if silent && !self.condstore {
                continue;
            }
            let mut items = Vec::new();
            if uid {
                items.push(format!("UID {u}"));
            }
            if !silent {
                items.push(format!("FLAGS {}", flags_list(&m)));
            }
            if self.condstore {
                items.push(format!("MODSEQ ({})", m.modseq.max(1)));
            }
            line(out, &format!("* {} FETCH ({})", i + 1, items.join(" ")));
        }
        Ok(modified)
    }

    async fn expunge(
        &mut self,
        set: Option<&SequenceSet>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let Some(sel) = &self.selected else {
            return Ok(());
        };
        if sel.read_only {
            return Err("[READ-ONLY] the mailbox is open read-only".into());
        }
        let mbx = sel.id;
        let targets: Vec<(usize, u32, u64)> = match set {
            Some(s) => self.targets(s, true),
            None => sel
                .ids
                .iter()
                .zip(&sel.uids)
                .enumerate()
                .map(|(i, (&id, &u))| (i, u, id))
                .collect(),
        };
        let svc = self.svc.clone();
        let store = svc.store();
        let mut gone = Vec::new();
        for (_, u, id) in targets {
            if store
                .meta(id)
                .ok()
                .flatten()
                .is_some_and(|m| m.has_keyword(DELETED))
            {
                gone.push((u, id));
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = gone.iter().map(|g| g.1).collect();
        for chunk in ids.chunks(crate::store::MAX_IDS_PER_CHANGE) {
            let before = store.state(self.owner()).ok();
            let after = store
                .remove_messages(self.owner(), chunk, Some(mbx))
                .await
                .map_err(|e| store_no(&e))?;
            self.own_change(before, after);
        }
        // `\Deleted` is a keyword of the message, not of one placement: a
        // message still in other mailboxes (a COPY made before the EXPUNGE,
        // as clients without MOVE do) must not stay marked there.
        let survivors: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                store
                    .meta(*id)
                    .ok()
                    .flatten()
                    .is_some_and(|m| !m.placements.is_empty())
            })
            .collect();
        for chunk in survivors.chunks(crate::store::MAX_IDS_PER_CHANGE) {
            store
                .set_keywords(
                    self.owner(),
                    chunk,
                    &KeywordChange::Remove(vec![DELETED.into()]),
                )
                .await
                .map_err(|e| store_no(&e))?;
        }
        let uids: Vec<u32> = gone.iter().map(|g| g.0).collect();
        self.report_expunged(&uids, out);
        Ok(())
    }

    async fn copy(
        &mut self,
        set: &SequenceSet,
        mailbox: &ImapMailbox<'_>,
        uid: bool,
        moving: bool,
        out: &mut Vec<u8>,
    ) -> Result<String, String> {
        let dest = self
            .find(mailbox)
            .map_err(|e| e.replace("[NONEXISTENT]", "[TRYCREATE]"))?;
        let Some(sel) = &self.selected else {
            return Err("select a mailbox first".into());
        };
        if moving && sel.read_only {
            return Err("[READ-ONLY] the mailbox is open read-only".into());
        }
        let from = sel.id;
        let targets = self.targets(set, uid);
        if targets.is_empty() {
            return Ok(if moving {
                "MOVE done (nothing to move)"
            } else {
                "COPY done (nothing to copy)"
            }
            .into());
        }
        let ids: Vec<u64> = targets.iter().map(|t| t.2).collect();
        let store = self.svc.store();
        let before = store.state(self.owner()).ok();
        let (placed, after) = if moving {
            store.move_messages(self.owner(), &ids, from, dest.id).await
        } else {
            store.copy(self.owner(), &ids, dest.id).await
        }
        .map_err(|e| store_no(&e))?;
        if dest.id != from {
            self.own_change(before, after);
        }
        let new_uid: std::collections::HashMap<u64, u32> = placed.into_iter().collect();
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for (_, u, id) in &targets {
            if let Some(&d) = new_uid.get(id) {
                src.push(u.to_string());
                dst.push(d.to_string());
            }
        }
        let code = format!(
            "[COPYUID {} {} {}]",
            dest.uid_validity,
            src.join(","),
            dst.join(",")
        );
        if !moving {
            return Ok(format!("{code} COPY done"));
        }
        if from == dest.id {
            return Ok(format!("{code} MOVE done"));
        }
        line(out, &format!("* OK {code} moved"));
        let uids: Vec<u32> = targets.iter().map(|t| t.1).collect();
        self.report_expunged(&uids, out);
        Ok("MOVE done".into())
    }

    async fn append(
        &mut self,
        mailbox: &ImapMailbox<'_>,
        flags: &[Flag<'_>],
        when: Option<i64>,
        data: Vec<u8>,
    ) -> Result<String, String> {
        let dest = self
            .find(mailbox)
            .map_err(|e| e.replace("[NONEXISTENT]", "[TRYCREATE]"))?;
        if data.len() > self.cfg.append_limit as usize {
            return Err(format!(
                "[TOOBIG] over the limit of {} octets",
                self.cfg.append_limit
            ));
        }
        if data.is_empty() {
            return Err("[CANNOT] an empty message".into());
        }
        let store = self.svc.store();
        match store.quota(self.owner()) {
            Ok(q) if q.would_exceed(data.len() as u64) => {
                return Err("[OVERQUOTA] the message does not fit in the quota".into())
            }
            Ok(_) => {}
            Err(e) => return Err(store_no(&e)),
        }
        let mut keywords = Vec::new();
        for f in flags {
            if let Some(k) = keyword_of(f)? {
                keywords.push(k);
            }
        }
        keywords.sort();
        keywords.dedup();
        let owner = self.owner().to_owned();
        let address = format!("{owner}@{}", self.svc.primary_domain());
        let template = MessageMeta {
            from: address.clone(),
            to: Vec::new(),
            subject: crate::delivery::subject_of(&data),
            received_at: when.unwrap_or_else(crate::store::now_unix),
            via: Via::Local,
            transport: Transport {
                client: self.peer.map(|p| p.to_string()).unwrap_or_default(),
                auth_user: Some(address),
                ..Default::default()
            },
            ..Default::default()
        };
        let d = Delivery {
            owner: owner.clone(),
            to: Vec::new(),
            mailbox: dest.id,
            keywords,
            received: false,
        };
        let ids = store
            .deliver_local(&template, std::slice::from_ref(&d), &data)
            .await
            .map_err(|e| store_no(&e))?;
        let uid = ids
            .first()
            .and_then(|id| store.meta(*id).ok().flatten())
            .and_then(|m| m.uid_in(dest.id));
        Ok(match uid {
            Some(u) => format!("[APPENDUID {} {u}] APPEND done", dest.uid_validity),
            None => "APPEND done".into(),
        })
    }

    fn search(&self, key: &SearchKey<'_>, uid: bool, out: &mut Vec<u8>) -> Result<(), String> {
        let (hits, highest) = self.search_hits(key, uid)?;
        let mut l = String::from("* SEARCH");
        for h in &hits {
            l.push_str(&format!(" {h}"));
        }
        if uses_modseq(key) && !hits.is_empty() {
            l.push_str(&format!(" (MODSEQ {})", highest.max(1)));
        }
        line(out, &l);
        Ok(())
    }

    /// The sequence numbers (or UIDs) matching `key`, and the highest
    /// modseq among them.
    fn search_hits(&self, key: &SearchKey<'_>, uid: bool) -> Result<(Vec<u32>, u64), String> {
        let Some(sel) = &self.selected else {
            return Ok((Vec::new(), 0));
        };
        let store = self.svc.store();
        let mut hits = Vec::new();
        let mut highest = 0;
        let largest_uid = sel.uids.last().copied().unwrap_or(0);
        // A search on subjects alone (the common client search) reads the
        // subject of each record, not the whole record nor the message.
        if let Some(q) = SubjectQuery::of(key) {
            for (i, (&u, &id)) in sel.uids.iter().zip(&sel.ids).enumerate() {
                let Some((subject, modseq)) = store.subject_of(id).map_err(|e| store_no(&e))?
                else {
                    continue;
                };
                if q.matches(&subject.to_lowercase()) {
                    hits.push(if uid { u } else { i as u32 + 1 });
                    highest = highest.max(modseq);
                }
            }
            return Ok((hits, highest));
        }
        for (i, (&u, &id)) in sel.uids.iter().zip(&sel.ids).enumerate() {
            let Some(m) = store.meta(id).map_err(|e| store_no(&e))? else {
                continue;
            };
            let mut ctx = Ctx {
                seq: i as u32 + 1,
                uid: u,
                count: sel.uids.len() as u32,
                largest_uid,
                m: &m,
                raw: None,
                headers: None,
                store,
            };
            if matches_key(key, &mut ctx) {
                hits.push(if uid { u } else { i as u32 + 1 });
                highest = highest.max(m.modseq);
            }
        }
        Ok((hits, highest))
    }
}

/// The privacy header of a message's IMAP view: the index from the
/// message's own facts, so that the view never changes (IMAP messages
/// are immutable; the live index, with what the contact book knows, is in
/// `caliopen mail show` and the client API).
pub fn imap_header(m: &MessageMeta, raw: &[u8]) -> String {
    let facts = crate::privacy::facts_of(m, raw);
    render::privacy_header(&crate::privacy::score_message(&facts))
}

struct Ctx<'a> {
    seq: u32,
    uid: u32,
    count: u32,
    largest_uid: u32,
    m: &'a MessageMeta,
    raw: Option<Vec<u8>>,
    /// (lowercase name, searchable text) of every header, parsed once.
    headers: Option<Vec<(String, String)>>,
    store: &'a dyn crate::store::MailStore,
}

impl Ctx<'_> {
    /// The searchable text of every `name` header (raw and decoded).
    fn header(&mut self, name: &str) -> String {
        if self.headers.is_none() {
            let h = header_fields(self.raw());
            self.headers = Some(h);
        }
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .flatten()
            .filter(|(n, _)| *n == name)
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn has_header(&mut self, name: &str) -> bool {
        if self.headers.is_none() {
            let h = header_fields(self.raw());
            self.headers = Some(h);
        }
        let name = name.to_ascii_lowercase();
        self.headers.iter().flatten().any(|(n, _)| *n == name)
    }

    fn raw(&mut self) -> &[u8] {
        if self.raw.is_none() {
            self.raw = Some(
                self.store
                    .body(self.m.blob_id())
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            );
        }
        self.raw.as_deref().unwrap_or_default()
    }
}

/// A search key made only of subject tests (`SUBJECT`, `HEADER Subject`
/// with a value) joined by AND, OR and NOT, with its needles lowercased
/// once.
#[derive(Debug, PartialEq, Eq)]
enum SubjectQuery {
    Contains(String),
    And(Vec<SubjectQuery>),
    Or(Box<SubjectQuery>, Box<SubjectQuery>),
    Not(Box<SubjectQuery>),
}

impl SubjectQuery {
    fn of(k: &SearchKey<'_>) -> Option<Self> {
        let needle = |v: &[u8]| Self::Contains(String::from_utf8_lossy(v).to_lowercase());
        Some(match k {
            SearchKey::Subject(s) => needle(s.as_ref()),
            SearchKey::Header(h, v)
                if h.as_ref().eq_ignore_ascii_case(b"subject") && !v.as_ref().is_empty() =>
            {
                needle(v.as_ref())
            }
            SearchKey::And(v) => Self::And(
                v.as_ref()
                    .iter()
                    .map(Self::of)
                    .collect::<Option<Vec<_>>>()?,
            ),
            SearchKey::Or(a, b) => Self::Or(Box::new(Self::of(a)?), Box::new(Self::of(b)?)),
            SearchKey::Not(a) => Self::Not(Box::new(Self::of(a)?)),
            _ => return None,
        })
    }

    /// Whether `subject` (lowercased) matches.
    fn matches(&self, subject: &str) -> bool {
        match self {
            Self::Contains(n) => subject.contains(n.as_str()),
            Self::And(v) => v.iter().all(|q| q.matches(subject)),
            Self::Or(a, b) => a.matches(subject) || b.matches(subject),
            Self::Not(a) => !a.matches(subject),
        }
    }
}

fn uses_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(v) => v.as_ref().iter().any(uses_modseq),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::Not(a) => uses_modseq(a),
        _ => false,
    }
}

fn contains_ci(hay: &str, needle: &[u8]) -> bool {
    let needle = String::from_utf8_lossy(needle).to_lowercase();
    hay.to_lowercase().contains(&needle)
}

/// Every header of a message as (lowercase name, its raw value and its
/// decoded text), for SEARCH: one parse per message however many keys.
fn header_fields(raw: &[u8]) -> Vec<(String, String)> {
    let Some(msg) = crate::mail::parse_headers_guarded(raw) else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    for h in msg.headers() {
        let mut out = String::new();
        {
            let start = h.offset_start() as usize;
            let end = h.offset_end() as usize;
            if let Some(v) = raw.get(start..end) {
                out.push_str(&String::from_utf8_lossy(v));
            }
            if let Some(t) = h.value().as_text() {
                out.push(' ');
                out.push_str(t);
            }
            if let Some(a) = h.value().as_address() {
                for x in a.iter() {
                    if let Some(n) = &x.name {
                        out.push(' ');
                        out.push_str(n);
                    }
                }
            }
        }
        fields.push((h.name().to_ascii_lowercase(), out));
    }
    fields
}

fn day_of(unix: i64) -> i64 {
    unix.div_euclid(86_400)
}

fn date_day(d: &imap_codec::imap_types::datetime::NaiveDate) -> i64 {
    d.as_ref()
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| day_of(t.and_utc().timestamp()))
}

fn sent_day(raw: &[u8]) -> Option<i64> {
    let msg = crate::mail::parse_headers_guarded(raw)?;
    msg.date().map(|d| day_of(d.to_timestamp()))
}

fn in_set(set: &SequenceSet, n: u32, largest: u32) -> bool {
    resolve(set, largest).iter().any(|&(a, b)| a <= n && n <= b)
}

fn matches_key(k: &SearchKey<'_>, c: &mut Ctx<'_>) -> bool {
    let kw = |c: &Ctx<'_>, k: &str| c.m.has_keyword(k);
    match k {
        SearchKey::And(v) => v.as_ref().iter().all(|x| matches_key(x, c)),
        SearchKey::Or(a, b) => matches_key(a, c) || matches_key(b, c),
        SearchKey::Not(a) => !matches_key(a, c),
        SearchKey::All => true,
        SearchKey::SequenceSet(s) => in_set(s, c.seq, c.count),
        SearchKey::Uid(s) => in_set(s, c.uid, c.largest_uid),
        SearchKey::Answered => kw(c, "$answered"),
        SearchKey::Unanswered => !kw(c, "$answered"),
        SearchKey::Deleted => kw(c, DELETED),
        SearchKey::Undeleted => !kw(c, DELETED),
        SearchKey::Draft => kw(c, "$draft"),
        SearchKey::Undraft => !kw(c, "$draft"),
        SearchKey::Flagged => kw(c, "$flagged"),
        SearchKey::Unflagged => !kw(c, "$flagged"),
        SearchKey::Seen => kw(c, SEEN),
        SearchKey::Unseen => !kw(c, SEEN),
        // No \Recent in this server (removed by IMAP4rev2).
        SearchKey::Recent => false,
        SearchKey::New => false,
        SearchKey::Old => true,
        SearchKey::Keyword(a) => {
            let s = a.as_ref();
            if is_class_keyword(s) {
                class_keyword(c.m).eq_ignore_ascii_case(s)
            } else {
                crate::mail::mailbox::normalise_keyword(s).is_ok_and(|k| kw(c, &k))
            }
        }
        SearchKey::Unkeyword(a) => !matches_key(&SearchKey::Keyword(a.clone()), c),
        SearchKey::Larger(n) => c.m.size as u64 > u64::from(*n),
        SearchKey::Smaller(n) => (c.m.size as u64) < u64::from(*n),
        SearchKey::Before(d) => day_of(c.m.received_at) < date_day(d),
        SearchKey::On(d) => day_of(c.m.received_at) == date_day(d),
        SearchKey::Since(d) => day_of(c.m.received_at) >= date_day(d),
        SearchKey::SentBefore(d) => sent_day(c.raw()).is_some_and(|x| x < date_day(d)),
        SearchKey::SentOn(d) => sent_day(c.raw()).is_some_and(|x| x == date_day(d)),
        SearchKey::SentSince(d) => sent_day(c.raw()).is_some_and(|x| x >= date_day(d)),
        SearchKey::From(s) => contains_ci(&c.header("From"), s.as_ref()),
        SearchKey::To(s) => contains_ci(&c.header("To"), s.as_ref()),
        SearchKey::Cc(s) => contains_ci(&c.header("Cc"), s.as_ref()),
        SearchKey::Bcc(s) => contains_ci(&c.header("Bcc"), s.as_ref()),
        // The record keeps the decoded subject: no need to read the message.
        SearchKey::Subject(s) => contains_ci(&c.m.subject, s.as_ref()),
        SearchKey::Header(h, v) => {
            let name = String::from_utf8_lossy(h.as_ref()).into_owned();
            if v.as_ref().is_empty() {
                c.has_header(&name)
            } else if name.eq_ignore_ascii_case("subject") {
                contains_ci(&c.m.subject, v.as_ref())
            } else {
                contains_ci(&c.header(&name), v.as_ref())
            }
        }
        SearchKey::Body(s) => body_contains(c.raw(), s.as_ref()),
        SearchKey::Text(s) => {
            let raw = c.raw().to_vec();
            body_contains(&raw, s.as_ref())
                || contains_ci(&String::from_utf8_lossy(&raw), s.as_ref())
        }
        SearchKey::ModSequence { modseq, .. } => c.m.modseq >= *modseq,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// True when a text part of the message (decoded) contains `needle`.
fn body_contains(raw: &[u8], needle: &[u8]) -> bool {
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return false;
    };
    let n = String::from_utf8_lossy(needle).to_lowercase();
    (0..msg.text_body_count().max(1)).any(|i| {
        msg.body_text(i)
            .is_some_and(|t| t.to_lowercase().contains(&n))
    }) || (0..msg.html_body_count()).any(|i| {
        msg.body_html(i)
            .is_some_and(|t| t.to_lowercase().contains(&n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*", b"a/b"));
        assert!(!wildcard(b"%", b"a/b"));
        assert!(wildcard(b"a/%", b"a/b"));
        assert!(wildcard(b"Wo*", b"Work/2026"));
        assert!(!wildcard(b"Wo%", b"Work/2026"));
        assert!(wildcard(b"Work", b"Work"));
        assert!(!wildcard(b"Work", b"Wor"));
        assert!(!wildcard(b"Wor", b"Work"));
        assert!(wildcard(b"%/%", b"a/b"));
        assert!(!wildcard(b"%/%", b"a/b/c"));
        assert!(wildcard(b"*/c", b"a/b/c"));
        assert!(wildcard(b"%*%", b"a/b/c"));
        assert!(wildcard(b"", b""));
        assert!(!wildcard(b"", b"a"));
        // Found by fuzzing: exponential before (8 `%` took minutes).
        let name = [b'a'; 255];
        assert!(!wildcard(&[b"%".repeat(30), b"x".to_vec()].concat(), &name));
        assert!(!wildcard(&b"a%".repeat(200), &name[..100]));
        assert!(wildcard(&b"*a".repeat(100), &name));
    }

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 10]), "1:3,5,9:10");
        assert_eq!(uid_set(&[7]), "7");
    }
}

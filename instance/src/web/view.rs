//! What the pages show, computed from the mail core: the privacy grade and
//! picture of a message, a message's parts for display, the discussion list
//! and the route preview of a draft. Pure over the store; no HTML here.

use super::i18n::Txt;
use crate::delivery::{MailService, Route};
use crate::mail::{MailboxId, MessageMeta, Role, Via};
use crate::privacy::{self, PrivacyIndex};

/// A grade A–E from a 0–100 total, with its CSS class.
pub(crate) fn grade(total: u8) -> (&'static str, &'static str) {
    match total {
        80.. => ("A", "grade-a"),
        60..=79 => ("B", "grade-b"),
        40..=59 => ("C", "grade-c"),
        20..=39 => ("D", "grade-d"),
        _ => ("E", "grade-e"),
    }
}

/// The picture of how a message travelled: (icon id, words).
pub(crate) fn picture(m: &MessageMeta, t: &'static Txt) -> (&'static str, &'static str) {
    match m.via {
        Via::Mesh => ("seal", t.img_mesh),
        Via::Local => ("hand", t.img_local),
        Via::Smtp if m.transport.tls_version.is_some() => ("envelope", t.img_tls),
        Via::Smtp => ("postcard", t.img_plain),
    }
}

/// The privacy summary a row or a message shows.
#[derive(Debug, Clone)]
pub(crate) struct Badge {
    /// 0–100.
    pub total: u8,
    /// A–E.
    pub grade: &'static str,
    /// CSS class of the grade.
    pub class: &'static str,
    /// Icon id.
    pub icon: &'static str,
    /// The picture in words.
    pub words: &'static str,
}

/// The badge of a message with its index.
pub(crate) fn badge(m: &MessageMeta, index: &PrivacyIndex, t: &'static Txt) -> Badge {
    let (grade, class) = grade(index.total);
    let (icon, words) = picture(m, t);
    Badge {
        total: index.total,
        grade,
        class,
        icon,
        words,
    }
}

/// A mailbox's shown name.
pub(crate) fn mailbox_name(b: &crate::mail::Mailbox, t: &'static Txt) -> String {
    match b.role {
        Some(Role::Inbox) => t.inbox.into(),
        Some(Role::Sent) => t.sent_box.into(),
        Some(Role::Drafts) => t.drafts.into(),
        Some(Role::Trash) => t.trash.into(),
        Some(Role::Junk) => t.junk.into(),
        Some(Role::Archive) => t.archive.into(),
        None => b.name.clone(),
    }
}

/// One row of the discussion list: a thread, by its newest message in the
/// mailbox.
#[derive(Debug, Clone)]
pub(crate) struct ThreadRow {
    /// The newest message of the thread in this mailbox.
    pub latest: MessageMeta,
    /// Messages in the thread (every mailbox).
    pub count: usize,
    /// True when a message of the thread in this mailbox is unread.
    pub unread: bool,
    /// True when one is flagged.
    pub flagged: bool,
    /// Its privacy.
    pub badge: Badge,
    /// The author shown (From: header, else the envelope sender).
    pub author: String,
}

/// A page of the discussion list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadPage {
    /// Rows, newest first.
    pub rows: Vec<ThreadRow>,
    /// The UID to continue below, when older messages remain.
    pub next: Option<u32>,
}

/// Messages read per store call while a page fills.
const SCAN_BATCH: usize = 200;
/// Most messages read for one page (a page of 50 threads of 40 messages).
const SCAN_MAX: usize = 2000;

/// The author of a message for display.
pub(crate) fn author_of(raw: &[u8], m: &MessageMeta) -> String {
    crate::mail::parse_headers_guarded(raw)
        .and_then(|p| {
            p.from()
                .and_then(|a| a.first())
                .map(|a| match (&a.name, &a.address) {
                    (Some(n), _) if !n.trim().is_empty() => n.to_string(),
                    (_, Some(ad)) => ad.to_string(),
                    _ => String::new(),
                })
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| m.from.clone())
}

/// The author's address alone (lowercase), from the headers only.
pub(crate) fn from_address(raw: &[u8]) -> String {
    crate::mail::parse_headers_guarded(raw)
        .and_then(|p| {
            p.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address.as_ref())
                .map(|a| a.to_ascii_lowercase())
        })
        .unwrap_or_default()
}

/// How much of a message the discussion list reads for its privacy index
/// (headers and the start of the body, where every fact the index uses
/// is; the message page reads it whole).
pub(crate) const LIST_PREFIX: usize = 64 * 1024;

/// `limit` threads of `mbx` whose newest message is below `before`, newest
/// first. A thread shows once, on the page of its newest message here.
pub(crate) fn threads(
    svc: &MailService,
    user: &str,
    mbx: MailboxId,
    before: Option<u32>,
    limit: usize,
    t: &'static Txt,
) -> Result<ThreadPage, crate::store::StoreError> {
    let store = svc.store();
    let mut page = ThreadPage::default();
    let mut seen = std::collections::HashSet::new();
    let mut cursor = before;
    let mut scanned = 0;
    'outer: loop {
        let (batch, more) = store.newest(user, mbx, cursor, SCAN_BATCH)?;
        for m in batch {
            let uid = m.uid_in(mbx).unwrap_or(0);
            scanned += 1;
            if page.rows.len() == limit || scanned > SCAN_MAX {
                page.next = Some(uid.saturating_add(1));
                break 'outer;
            }
            cursor = Some(uid);
            let thread_id = m.thread;
            if let Some(row) = page.rows.iter_mut().find(|r| r.latest.thread == thread_id) {
                row.unread |= !m.has_keyword(crate::mail::mailbox::SEEN);
                row.flagged |= m.has_keyword("$flagged");
                continue;
            }
            if !seen.insert(thread_id) {
                continue;
            }
            let members = store
                .thread(user, m.thread)
                .unwrap_or_else(|_| vec![m.clone()]);
            // Shown on an earlier page already (its newest message here is above `before`).
            if let Some(b) = before {
                if members
                    .iter()
                    .any(|x| x.uid_in(mbx).is_some_and(|u| u >= b))
                {
                    continue;
                }
            }
            let raw = store.raw(m.id)?.unwrap_or_default();
            let raw = &raw[..raw.len().min(LIST_PREFIX)];
            let index = index_of(svc, &m, raw);
            let latest = m.clone();
            page.rows.push(ThreadRow {
                author: author_of(raw, &m),
                badge: badge(&m, &index, t),
                count: members.len().max(1),
                unread: !m.has_keyword(crate::mail::mailbox::SEEN),
                flagged: m.has_keyword("$flagged"),
                latest,
            });
        }
        if !more {
            break;
        }
    }
    Ok(page)
}

/// A message's privacy index (what the client API and IMAP give it too).
pub(crate) fn index_of(svc: &MailService, m: &MessageMeta, raw: &[u8]) -> PrivacyIndex {
    let facts = privacy::facts_of(m, raw);
    let author = privacy::correspondence_of(raw, &m.from, m.received_at).author;
    let contact = author.and_then(|a| svc.store().contact(&m.owner, &a).ok().flatten());
    privacy::score_message(&privacy::with_contact(facts, contact.as_ref()))
}

/// One attachment of a message.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    /// Its index among the message's attachments (the download URL's).
    pub n: usize,
    /// File name (sanitised for display and for the download).
    pub name: String,
    /// Declared type.
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: usize,
}

/// A message ready to show.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shown {
    /// Decoded Subject.
    pub subject: String,
    /// From, To, Cc as shown.
    pub from: String,
    /// To.
    pub to: String,
    /// Cc.
    pub cc: String,
    /// The Date header as written.
    pub date: String,
    /// The author's address alone (for the remote-content allow list).
    pub from_address: String,
    /// The text body (the HTML's text when there is only HTML).
    pub text: String,
    /// True when the message has an HTML body (shown in the frame).
    pub has_html: bool,
    /// Attachments.
    pub attachments: Vec<Attachment>,
    /// Message-ID (for replies).
    pub message_id: Option<String>,
    /// References (for replies).
    pub references: Vec<String>,
}

fn addr_list(a: Option<&mail_parser::Address<'_>>) -> String {
    let Some(a) = a else {
        return String::new();
    };
    a.iter()
        .map(|x| match (&x.name, &x.address) {
            (Some(n), Some(ad)) => format!("{n} <{ad}>"),
            (None, Some(ad)) => ad.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A file name that is safe in a page and in a Content-Disposition header.
pub(crate) fn safe_file_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '/' | '\\' | '"' | ':' | '*' | '?' | '<' | '>' | '|')
        })
        .take(120)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "attachment".into()
    } else {
        cleaned
    }
}

/// The parts of a stored message for display.
pub(crate) fn show(raw: &[u8]) -> Shown {
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return Shown {
            text: String::from_utf8_lossy(raw).into_owned(),
            ..Default::default()
        };
    };
    let has_html = msg.html_body.iter().any(|&i| {
        msg.parts
            .get(i as usize)
            .is_some_and(|p| matches!(p.body, mail_parser::PartType::Html(_)))
    });
    let text = msg.body_text(0).map(|c| c.into_owned()).unwrap_or_default();
    let attachments = msg
        .attachments()
        .enumerate()
        .map(|(n, p)| {
            use mail_parser::MimeHeaders;
            let ct = mime_type_of(p);
            Attachment {
                n,
                name: safe_file_name(p.attachment_name().unwrap_or("")),
                content_type: ct,
                size: p.contents().len(),
            }
        })
        .collect();
    Shown {
        subject: msg.subject().unwrap_or("").to_owned(),
        from: addr_list(msg.from()),
        to: addr_list(msg.to()),
        cc: addr_list(msg.cc()),
        date: msg
            .header_raw("Date")
            .map(|d| d.trim().to_owned())
            .unwrap_or_default(),
        from_address: msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address.as_ref())
            .map(|a| a.to_ascii_lowercase())
            .unwrap_or_default(),
        text,
        has_html,
        attachments,
        message_id: msg.message_id().map(|m| format!("<{m}>")),
        references: match msg.references() {
            mail_parser::HeaderValue::Text(t) => vec![format!("<{t}>")],
            mail_parser::HeaderValue::TextList(l) => l.iter().map(|t| format!("<{t}>")).collect(),
            _ => Vec::new(),
        },
    }
}

/// The HTML body of a stored message, when it has one.
#[cfg(test)]
pub(crate) fn html_body(raw: &[u8]) -> Option<String> {
    html_of(&mail_parser::MessageParser::default().parse(raw)?)
}

fn html_of(msg: &mail_parser::Message<'_>) -> Option<String> {
    let i = *msg.html_body.iter().find(|&&i| {
        msg.parts
            .get(i as usize)
            .is_some_and(|p| matches!(p.body, mail_parser::PartType::Html(_)))
    })?;
    match &msg.parts.get(i as usize)?.body {
        mail_parser::PartType::Html(h) => Some(h.to_string()),
        _ => None,
    }
}

/// Attachment `n` of a stored message: (file name, bytes).
pub(crate) fn attachment(raw: &[u8], n: usize) -> Option<(String, Vec<u8>)> {
    let msg = mail_parser::MessageParser::default().parse(raw)?;
    let p = msg.attachments().nth(n)?;
    use mail_parser::MimeHeaders;
    Some((
        safe_file_name(p.attachment_name().unwrap_or("")),
        p.contents().to_vec(),
    ))
}

/// The HTML body of a stored message, when it has one, and its inline
/// images (Content-ID → `data:` URL) for PNG, JPEG, GIF and WebP parts
/// (never SVG, which can carry script), at most 8 MiB of them.
pub(crate) fn html_and_inline(
    raw: &[u8],
) -> Option<(String, std::collections::HashMap<String, String>)> {
    use base64::Engine;
    use mail_parser::MimeHeaders;
    let msg = mail_parser::MessageParser::default().parse(raw)?;
    let html = html_of(&msg)?;
    let mut inline = std::collections::HashMap::new();
    if !html.contains("cid:") {
        return Some((html, inline));
    }
    let mut total = 0usize;
    for p in &msg.parts {
        let (Some(cid), Some(c)) = (p.content_id(), p.content_type()) else {
            continue;
        };
        if !c.c_type.eq_ignore_ascii_case("image") {
            continue;
        }
        let ct = match c
            .c_subtype
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("png") => "image/png",
            Some("jpeg") | Some("jpg") | Some("pjpeg") => "image/jpeg",
            Some("gif") => "image/gif",
            Some("webp") => "image/webp",
            _ => continue,
        };
        total += p.contents().len();
        if total > 8 << 20 {
            break;
        }
        let cid = cid
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        let data = base64::engine::general_purpose::STANDARD.encode(p.contents());
        inline.insert(cid, format!("data:{ct};base64,{data}"));
    }
    Some((html, inline))
}

/// Every attachment of a stored message: (file name, declared type, bytes)
/// — what a forward carries along.
pub(crate) fn attachments_of(raw: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    use mail_parser::MimeHeaders;
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    msg.attachments()
        .map(|p| {
            let ct = mime_type_of(p);
            (
                safe_file_name(p.attachment_name().unwrap_or("")),
                ct,
                p.contents().to_vec(),
            )
        })
        .collect()
}

/// One recipient's route, in words.
#[derive(Debug, Clone)]
pub(crate) struct RouteView {
    /// The address as typed.
    pub address: String,
    /// Icon id (`seal`, `hand`, `envelope`, `none`).
    pub icon: &'static str,
    /// Short title.
    pub title: &'static str,
    /// Sentence.
    pub detail: String,
    /// A better path ("bob is also reachable at a labelled instance: …").
    pub hint: Option<String>,
}

/// The routes a draft's recipients take, and better paths the contact
/// book knows of.
pub(crate) fn routes(
    svc: &MailService,
    user: &str,
    recipients: &[String],
    t: &'static Txt,
) -> Vec<RouteView> {
    let contacts = svc.store().contacts(user).unwrap_or_default();
    recipients
        .iter()
        .map(|r| {
            let Some(addr) = privacy::public::normalise_address(r) else {
                return RouteView {
                    address: r.clone(),
                    icon: "none",
                    title: t.route_none_title,
                    detail: t.route_bad.into(),
                    hint: None,
                };
            };
            let (icon, title, detail) = match svc.route(&addr) {
                Route::Local(_) | Route::Forward(..) => {
                    ("hand", t.route_local_title, t.route_local.to_owned())
                }
                Route::Reverse(_) => ("envelope", t.route_smtp_title, t.route_smtp.to_owned()),
                Route::Mesh(m) => ("seal", t.route_mesh_title, format!("{} {m}.", t.route_mesh)),
                Route::Smtp => ("envelope", t.route_smtp_title, t.route_smtp.to_owned()),
                Route::None => ("none", t.route_none_title, t.route_none.to_owned()),
            };
            // A contact of the same person (same name, or same local part)
            // whose address takes the mesh.
            let hint = (icon == "envelope")
                .then(|| {
                    let me = contacts.iter().find(|c| c.address == addr);
                    let local = addr.split('@').next().unwrap_or("");
                    contacts
                        .iter()
                        .filter(|c| c.address != addr)
                        .filter(|c| {
                            me.map(|m| m.name.as_str())
                                .is_some_and(|n| !n.is_empty() && c.name == n)
                                || c.address.split('@').next() == Some(local)
                        })
                        .find(|c| matches!(svc.route(&c.address), Route::Mesh(_)))
                        .map(|c| format!("{addr} {} {}", t.better_path, c.address))
                })
                .flatten();
            RouteView {
                address: addr,
                icon,
                title,
                detail,
                hint,
            }
        })
        .collect()
}

/// The addresses of a comma- or semicolon-separated field (at most `max`).
pub(crate) fn split_recipients(field: &str, max: usize) -> Vec<String> {
    field
        .split([',', ';', '\n'])
        .map(|s| {
            let s = s.trim();
            // "Name <addr>" → addr
            match (s.rfind('<'), s.rfind('>')) {
                (Some(a), Some(b)) if a < b => s[a + 1..b].trim().to_owned(),
                _ => s.to_owned(),
            }
        })
        .filter(|s| !s.is_empty())
        .take(max)
        .collect()
}

/// Search terms: `from:`, `to:`, `subject:` and words (matched in the
/// headers and the text body), case-insensitive, every one must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    /// `from:` terms.
    pub from: Vec<String>,
    /// `to:` terms.
    pub to: Vec<String>,
    /// `subject:` terms.
    pub subject: Vec<String>,
    /// Plain words.
    pub words: Vec<String>,
}

impl Query {
    /// Parses a query (at most 16 terms of 200 characters).
    pub(crate) fn parse(q: &str) -> Query {
        let mut out = Query::default();
        for term in q.split_whitespace().take(16) {
            let term: String = term.chars().take(200).collect::<String>().to_lowercase();
            if let Some(v) = term.strip_prefix("from:").filter(|v| !v.is_empty()) {
                out.from.push(v.to_owned());
            } else if let Some(v) = term.strip_prefix("to:").filter(|v| !v.is_empty()) {
                out.to.push(v.to_owned());
            } else if let Some(v) = term.strip_prefix("subject:").filter(|v| !v.is_empty()) {
                out.subject.push(v.to_owned());
            } else {
                out.words.push(term);
            }
        }
        out
    }

    /// True when there is nothing to search for.
    pub(crate) fn is_empty(&self) -> bool {
        self.from.is_empty()
            && self.to.is_empty()
            && self.subject.is_empty()
            && self.words.is_empty()
    }

    /// True when the message matches every term.
    pub(crate) fn matches(&self, m: &MessageMeta, raw: &[u8]) -> bool {
        let shown = show(raw);
        let from = format!("{} {}", m.from, shown.from).to_lowercase();
        let to = format!("{} {} {}", m.to.join(" "), shown.to, shown.cc).to_lowercase();
        let subject = shown.subject.to_lowercase();
        let contains_all = |hay: &str, v: &[String]| v.iter().all(|x| hay.contains(x.as_str()));
        if !contains_all(&from, &self.from)
            || !contains_all(&to, &self.to)
            || !contains_all(&subject, &self.subject)
        {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let all = format!("{from} {to} {subject} {}", shown.text.to_lowercase());
        contains_all(&all, &self.words)
    }
}

/// Messages a search reads at most, newest first (said on the page when reached).
pub(crate) const SEARCH_SCAN_MAX: usize = 20_000;

/// Searches `mbx` newest first: at most `limit` hits, and whether the scan
/// stopped at [`SEARCH_SCAN_MAX`] before the oldest message.
pub(crate) fn search(
    svc: &MailService,
    user: &str,
    mbx: MailboxId,
    q: &Query,
    limit: usize,
) -> Result<(Vec<MessageMeta>, bool), crate::store::StoreError> {
    let store = svc.store();
    let mut hits = Vec::new();
    let mut cursor = None;
    let mut scanned = 0;
    loop {
        let (batch, more) = store.newest(user, mbx, cursor, SCAN_BATCH)?;
        for m in batch {
            scanned += 1;
            cursor = m.uid_in(mbx);
            let raw = store.raw(m.id)?.unwrap_or_default();
            if q.matches(&m, &raw) {
                hits.push(m);
                if hits.len() == limit {
                    return Ok((hits, false));
                }
            }
            if scanned >= SEARCH_SCAN_MAX {
                return Ok((hits, more));
            }
        }
        if !more {
            return Ok((hits, false));
        }
    }
}

/// A part's MIME type (`type/subtype`), `application/octet-stream` when it
/// names none.
fn mime_type_of(p: &mail_parser::MessagePart<'_>) -> String {
    use mail_parser::MimeHeaders;
    p.content_type()
        .map(|c| match &c.c_subtype {
            Some(s) => format!("{}/{}", c.c_type, s),
            None => c.c_type.to_string(),
        })
        .unwrap_or_else(|| "application/octet-stream".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_follow_the_total() {
        assert_eq!(grade(100).0, "A");
        assert_eq!(grade(80).0, "A");
        assert_eq!(grade(79).0, "B");
        assert_eq!(grade(45).0, "C");
        assert_eq!(grade(20).0, "D");
        assert_eq!(grade(0).0, "E");
    }

    #[test]
    fn queries_split_into_fields() {
        let q = Query::parse("from:Alice subject:lunch Tomorrow to:");
        assert_eq!(q.from, vec!["alice"]);
        assert_eq!(q.subject, vec!["lunch"]);
        assert_eq!(q.words, vec!["tomorrow", "to:"]);
        assert!(Query::parse("  ").is_empty());
    }

    #[test]
    fn a_search_matches_headers_and_body() {
        let raw = b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: Lunch plans\r\n\r\nSee you at noon.\r\n";
        let m = MessageMeta {
            from: "alice@a.test".into(),
            to: vec!["bob@b.test".into()],
            ..Default::default()
        };
        assert!(Query::parse("from:alice noon").matches(&m, raw));
        assert!(Query::parse("subject:lunch").matches(&m, raw));
        assert!(!Query::parse("subject:noon").matches(&m, raw));
        assert!(!Query::parse("from:carol").matches(&m, raw));
    }

    #[test]
    fn recipients_and_file_names_are_cleaned() {
        assert_eq!(
            split_recipients("Bob <bob@b.test>, carol@c.test; ,", 10),
            vec!["bob@b.test", "carol@c.test"]
        );
        assert_eq!(safe_file_name("../../etc/passwd"), "etcpasswd");
        assert_eq!(safe_file_name("a\"b\r\n.pdf"), "ab.pdf");
        assert_eq!(safe_file_name(""), "attachment");
    }

    #[test]
    fn a_message_is_taken_apart_for_display() {
        let raw = b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: Hi\r\nMessage-ID: <x@a.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>Bob</b></p>\r\n--b\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";
        let s = show(raw);
        assert_eq!(s.subject, "Hi");
        assert_eq!(s.from, "Alice <alice@a.test>");
        assert_eq!(s.from_address, "alice@a.test");
        assert!(s.has_html);
        assert!(s.text.contains("Hello"));
        assert_eq!(s.attachments.len(), 1);
        assert_eq!(s.attachments[0].name, "r.pdf");
        assert_eq!(s.message_id.as_deref(), Some("<x@a.test>"));
        assert_eq!(attachment(raw, 0).map(|a| a.1), Some(b"%PDF-".to_vec()));
        assert!(html_body(raw).is_some_and(|h| h.contains("<b>Bob</b>")));
    }
}

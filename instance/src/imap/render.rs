//! What FETCH returns, built from the stored bytes: the IMAP view of a
//! message (the privacy trace header, then the bytes as received),
//! ENVELOPE, BODYSTRUCTURE and body sections, and the IMAP string forms.
//!
//! Responses are written here rather than through imap-codec's encoder:
//! they are the hot path of every client (a FETCH of thousands of
//! envelopes), and the tests decode everything we write with imap-codec's
//! own response parser, so its grammar still checks ours.

use crate::privacy::PrivacyIndex;
use mail_parser::{Address, Message, MessageParser, MimeHeaders, PartType};

/// Strings longer than this go out as literals.
const MAX_QUOTED: usize = 1024;

/// Writes `s` as an IMAP string: quoted when it can be, else a literal.
pub(crate) fn string(out: &mut Vec<u8>, s: &[u8]) {
    let quotable = s.len() <= MAX_QUOTED
        && s.iter()
            .all(|&b| (0x01..0x80).contains(&b) && b != b'\r' && b != b'\n');
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// Writes `s` as a literal.
pub(crate) fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// Writes `s` as an nstring (`NIL` when absent).
pub(crate) fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Writes an astring: an atom when it is one, else a string.
pub(crate) fn astring(out: &mut Vec<u8>, s: &[u8]) {
    let atom = !s.is_empty()
        && s.iter()
            .all(|&b| (0x21..0x7f).contains(&b) && !b"(){ %*\"\\]".contains(&b));
    if atom {
        out.extend_from_slice(s);
    } else {
        string(out, s);
    }
}

/// The length of the trace header, CRLF included: always the same (the
/// figures are padded with trailing spaces, which a header value ignores),
/// so that `RFC822.SIZE` is the stored size plus this, without reading
/// or scoring the message.
pub(crate) const PRIVACY_HEADER_LEN: usize =
    "X-Caliopen-Privacy: 100; technic=100; context=100; comportment=100\r\n".len();

/// The trace header that starts the IMAP view of a message, CRLF included.
pub(crate) fn privacy_header(i: &PrivacyIndex) -> String {
    let mut h = format!(
        "X-Caliopen-Privacy: {}; technic={}; context={}; comportment={}",
        i.total.min(100),
        i.technic.min(100),
        i.context.min(100),
        i.comportment.min(100)
    );
    while h.len() < PRIVACY_HEADER_LEN - 2 {
        h.push(' ');
    }
    h.push_str("\r\n");
    h
}

/// The IMAP view: the trace header then the bytes exactly as received.
pub(crate) fn view(header: &str, raw: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(header.len() + raw.len());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(raw);
    v
}

/// Parses a view (bounded like every parse of stored mail).
pub(crate) fn parse(view: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(view)
}

/// `dd-Mon-yyyy hh:mm:ss +0000` (INTERNALDATE) of Unix seconds.
pub(crate) fn internal_date(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}-{}-{:04} {:02}:{:02}:{:02} +0000",
        t.day(),
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A header field's raw value (unfolded, trimmed), as the envelope wants it.
fn raw_header<'a>(msg: &'a Message<'_>, name: &'static str) -> Option<&'a str> {
    msg.header_raw(name).map(str::trim)
}

/// RFC 2047-encodes a display name that is not ASCII (IMAP4rev1 strings
/// are 7-bit).
fn encoded_word(s: &str) -> String {
    use base64::Engine as _;
    if s.is_ascii() {
        s.to_owned()
    } else {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

fn text_or_nil(out: &mut Vec<u8>, s: Option<&str>) {
    nstring(out, s.map(str::as_bytes));
}

fn address_list(out: &mut Vec<u8>, a: Option<&Address<'_>>) {
    let mut items: Vec<(Option<String>, Option<&str>)> = Vec::new();
    let mut groups = Vec::new();
    match a {
        None => {}
        Some(Address::List(l)) => {
            for x in l {
                items.push((x.name.as_deref().map(encoded_word), x.address.as_deref()));
            }
        }
        Some(Address::Group(g)) => groups = g.iter().collect(),
    }
    if items.is_empty() && groups.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    let one = |out: &mut Vec<u8>, name: Option<&str>, addr: Option<&str>| {
        out.push(b'(');
        text_or_nil(out, name);
        out.extend_from_slice(b" NIL ");
        let (local, domain) = match addr {
            Some(a) => match a.rsplit_once('@') {
                Some((l, d)) => (Some(l), Some(d)),
                None => (Some(a), None),
            },
            None => (None, None),
        };
        text_or_nil(out, local);
        out.push(b' ');
        text_or_nil(out, domain);
        out.push(b')');
    };
    for (n, a) in &items {
        one(out, n.as_deref(), *a);
    }
    for g in groups {
        // RFC 3501 §7.4.2: a group starts with (NIL NIL "name" NIL), ends with (NIL NIL NIL NIL).
        match &g.name {
            Some(n) => {
                out.extend_from_slice(b"(NIL NIL ");
                string(out, encoded_word(n).as_bytes());
                out.extend_from_slice(b" NIL)");
                for x in &g.addresses {
                    one(
                        out,
                        x.name.as_deref().map(encoded_word).as_deref(),
                        x.address.as_deref(),
                    );
                }
                out.extend_from_slice(b"(NIL NIL NIL NIL)");
            }
            None => {
                for x in &g.addresses {
                    one(
                        out,
                        x.name.as_deref().map(encoded_word).as_deref(),
                        x.address.as_deref(),
                    );
                }
            }
        }
    }
    out.push(b')');
}

/// ENVELOPE (RFC 3501 §7.4.2) of a parsed message.
pub(crate) fn envelope(out: &mut Vec<u8>, msg: &Message<'_>) {
    out.push(b'(');
    text_or_nil(out, raw_header(msg, "Date"));
    out.push(b' ');
    text_or_nil(out, raw_header(msg, "Subject"));
    out.push(b' ');
    let from = msg.from();
    address_list(out, from);
    out.push(b' ');
    // Sender and Reply-To default to From.
    address_list(out, msg.sender().or(from));
    out.push(b' ');
    address_list(out, msg.reply_to().or(from));
    for a in [msg.to(), msg.cc(), msg.bcc()] {
        out.push(b' ');
        address_list(out, a);
    }
    out.push(b' ');
    text_or_nil(out, raw_header(msg, "In-Reply-To"));
    out.push(b' ');
    text_or_nil(out, raw_header(msg, "Message-ID"));
    out.push(b')');
}

/// One node of the MIME tree: a part of `msg`, whose bytes start at
/// `base` in the view.
#[derive(Clone, Copy)]
struct Node<'m, 'x> {
    msg: &'m Message<'x>,
    idx: usize,
    base: usize,
}

impl<'m, 'x> Node<'m, 'x> {
    fn part(&self) -> &'m mail_parser::MessagePart<'x> {
        &self.msg.parts[self.idx]
    }
    fn children(&self) -> Vec<Node<'m, 'x>> {
        match &self.part().body {
            PartType::Multipart(ids) => ids
                .iter()
                .filter(|&&i| (i as usize) < self.msg.parts.len())
                .map(|&i| Node {
                    msg: self.msg,
                    idx: i as usize,
                    base: self.base,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
    /// The encapsulated message of a message/rfc822 part (mail-parser
    /// gives its offsets in the same bytes as the outer message's).
    fn inner(&self) -> Option<Node<'m, 'x>> {
        match &self.part().body {
            PartType::Message(m) if !m.parts.is_empty() => Some(Node {
                msg: m,
                idx: 0,
                base: self.base,
            }),
            _ => None,
        }
    }
    fn header_range(&self) -> (usize, usize) {
        let p = self.part();
        (
            self.base + p.offset_header as usize,
            self.base + p.offset_body as usize,
        )
    }
    fn body_range(&self) -> (usize, usize) {
        let p = self.part();
        (
            self.base + p.offset_body as usize,
            self.base + (p.offset_end.max(p.offset_body)) as usize,
        )
    }
    fn is_multipart(&self) -> bool {
        matches!(self.part().body, PartType::Multipart(_))
    }
    /// Sub-part `k` (1-based) in IMAP numbering.
    fn step(&self, k: u32) -> Option<Node<'m, 'x>> {
        let k = k.checked_sub(1)? as usize;
        if let Some(inner) = self.inner() {
            if inner.is_multipart() {
                return inner.children().get(k).copied();
            }
            return (k == 0).then_some(inner);
        }
        self.children().get(k).copied()
    }
}

fn root<'m, 'x>(msg: &'m Message<'x>) -> Node<'m, 'x> {
    Node {
        msg,
        idx: 0,
        base: 0,
    }
}

fn locate<'m, 'x>(msg: &'m Message<'x>, path: &[u32]) -> Option<Node<'m, 'x>> {
    let r = root(msg);
    let (&first, rest) = path.split_first()?;
    let mut cur = if r.is_multipart() {
        r.children().get(first.checked_sub(1)? as usize).copied()?
    } else if first == 1 {
        r
    } else {
        return None;
    };
    for &k in rest {
        cur = cur.step(k)?;
    }
    Some(cur)
}

fn slice(view: &[u8], (a, b): (usize, usize)) -> &[u8] {
    let b = b.min(view.len());
    view.get(a.min(b)..b).unwrap_or_default()
}

/// What a body section names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Section {
    /// `BODY[]` or `BODY[<part>]`.
    Part(Vec<u32>),
    /// `[<part>.]HEADER`.
    Header(Vec<u32>),
    /// `[<part>.]HEADER.FIELDS (…)`, or `.NOT` when the flag is set.
    Fields(Vec<u32>, Vec<String>, bool),
    /// `[<part>.]TEXT`.
    Text(Vec<u32>),
    /// `<part>.MIME`.
    Mime(Vec<u32>),
}

/// The bytes of a section of a view. An absent part gives empty bytes
/// (RFC 9051 §6.4.5 lets a server return an empty string).
pub(crate) fn section(view: &[u8], msg: &Message<'_>, s: &Section) -> Vec<u8> {
    // The header and text of a part that is a message are those of the
    // message it carries; of the top, those of the message itself.
    let message_node = |path: &[u32]| -> Option<(usize, usize, usize)> {
        let n = if path.is_empty() {
            root(msg)
        } else {
            locate(msg, path)?.inner()?
        };
        let (h, b) = n.header_range();
        let (_, e) = n.body_range();
        Some((h, b, e))
    };
    match s {
        Section::Part(p) if p.is_empty() => view.to_vec(),
        Section::Part(p) => locate(msg, p)
            .map(|n| slice(view, n.body_range()).to_vec())
            .unwrap_or_default(),
        Section::Header(p) => message_node(p)
            .map(|(h, b, _)| slice(view, (h, b)).to_vec())
            .unwrap_or_default(),
        Section::Text(p) => message_node(p)
            .map(|(_, b, e)| slice(view, (b, e)).to_vec())
            .unwrap_or_default(),
        Section::Mime(p) => locate(msg, p)
            .map(|n| slice(view, n.header_range()).to_vec())
            .unwrap_or_default(),
        Section::Fields(p, names, not) => {
            let Some((h, b, _)) = message_node(p) else {
                return Vec::new();
            };
            let mut out = filter_fields(slice(view, (h, b)), names, *not);
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

/// The header lines (with their folded continuations) whose names are in
/// `names` (or not, when `not`), without the blank line.
fn filter_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name);
            let name = name.trim();
            keep = names.iter().any(|n| n.eq_ignore_ascii_case(name)) != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out
}

fn params(
    out: &mut Vec<u8>,
    attrs: Option<&[mail_parser::Attribute<'_>]>,
    default: &[(&str, &str)],
) {
    let mut list: Vec<(String, String)> = attrs
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_string(), a.value.to_string()))
        .collect();
    if list.is_empty() {
        list = default
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
    }
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (n, v)) in list.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, n.as_bytes());
        out.push(b' ');
        string(out, encoded_word(v).as_bytes());
    }
    out.push(b')');
}

/// BODYSTRUCTURE (with extension data) or BODY (without) of a message.
pub(crate) fn body_structure(out: &mut Vec<u8>, view: &[u8], msg: &Message<'_>, extended: bool) {
    if msg.parts.is_empty() {
        out.extend_from_slice(b"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 0 0)");
        return;
    }
    node_structure(out, view, root(msg), extended, 0);
}

fn node_structure(out: &mut Vec<u8>, view: &[u8], n: Node<'_, '_>, extended: bool, depth: usize) {
    let p = n.part();
    let ct = p.content_type();
    if n.is_multipart() && depth < 32 {
        out.push(b'(');
        let kids = n.children();
        if kids.is_empty() {
            out.extend_from_slice(b"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 0 0)");
        }
        for k in kids {
            node_structure(out, view, k, extended, depth + 1);
        }
        out.push(b' ');
        let sub = ct.and_then(|c| c.subtype()).unwrap_or("mixed");
        string(out, sub.to_ascii_lowercase().as_bytes());
        if extended {
            out.push(b' ');
            params(out, ct.and_then(|c| c.attributes()), &[]);
            out.push(b' ');
            disposition(out, p);
            out.extend_from_slice(b" NIL NIL");
        }
        out.push(b')');
        return;
    }
    let (ty, sub) = match ct {
        Some(c) => (
            c.ctype().to_ascii_lowercase(),
            c.subtype().unwrap_or("").to_ascii_lowercase(),
        ),
        None => ("text".to_owned(), "plain".to_owned()),
    };
    let sub = if sub.is_empty() && ty == "text" {
        "plain".to_owned()
    } else {
        sub
    };
    let body = slice(view, n.body_range());
    out.push(b'(');
    string(out, ty.as_bytes());
    out.push(b' ');
    string(out, sub.as_bytes());
    out.push(b' ');
    let default_params: &[(&str, &str)] = if ty == "text" {
        &[("charset", "us-ascii")]
    } else {
        &[]
    };
    params(out, ct.and_then(|c| c.attributes()), default_params);
    out.push(b' ');
    text_or_nil(out, p.content_id());
    out.push(b' ');
    text_or_nil(out, p.content_description());
    out.push(b' ');
    let enc = p
        .content_transfer_encoding()
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    string(out, enc.as_bytes());
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    match (ty.as_str(), n.inner()) {
        ("message", Some(inner)) if (sub == "rfc822" || sub == "global") && depth < 32 => {
            out.push(b' ');
            envelope(out, inner.msg);
            out.push(b' ');
            node_structure(out, view, inner, extended, depth + 1);
            out.extend_from_slice(format!(" {lines}").as_bytes());
        }
        ("text", _) => out.extend_from_slice(format!(" {lines}").as_bytes()),
        _ => {}
    }
    if extended {
        out.extend_from_slice(b" NIL ");
        disposition(out, p);
        out.extend_from_slice(b" NIL ");
        text_or_nil(out, p.content_location());
    }
    out.push(b')');
}

fn disposition(out: &mut Vec<u8>, p: &mail_parser::MessagePart<'_>) {
    match p.content_disposition() {
        Some(d) => {
            out.push(b'(');
            string(out, d.ctype().to_ascii_lowercase().as_bytes());
            out.push(b' ');
            params(out, d.attributes(), &[]);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Modified UTF-7 (RFC 3501 §5.1.3) of a mailbox name.
pub(crate) fn utf7_encode(s: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<u16>| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&b64.encode(bytes).replace('/', ","));
        out.push('-');
        pending.clear();
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// The UTF-8 name of a modified UTF-7 mailbox name (`None`: not valid).
pub(crate) fn utf7_decode(s: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after.find('-')?;
        let enc = &after[..end];
        if enc.is_empty() {
            out.push('&');
        } else {
            let bytes = b64.decode(enc.replace(',', "/")).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf7_names_round_trip() {
        assert_eq!(utf7_encode("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(utf7_encode("A&B"), "A&-B");
        assert_eq!(utf7_encode("日本語"), "&ZeVnLIqe-");
        for s in ["Été/Août", "A&B", "plain", "😀 smile", "~peter/mail/台北"] {
            assert_eq!(utf7_decode(&utf7_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(utf7_decode("&Jjo-!"), Some("☺!".into()));
        assert_eq!(utf7_decode("&Jjo"), None);
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut o = Vec::new();
        string(&mut o, b"a \"b\" \\c");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\c\"");
        o.clear();
        string(&mut o, b"two\r\nlines");
        assert_eq!(o, b"{10}\r\ntwo\r\nlines");
        o.clear();
        astring(&mut o, b"INBOX");
        astring(&mut o, b" x");
        assert_eq!(o, b"INBOX\" x\"");
    }

    const NESTED: &[u8] = b"From: A <a@example.org>\r\nTo: b@example.net\r\nSubject: outer\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n\
--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n\
--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@example.com\r\nSubject: inner\r\n\
Content-Type: text/plain\r\n\r\ninner body\r\n\
--XX--\r\n";

    #[test]
    fn sections_of_a_nested_message_are_exact() {
        let msg = parse(NESTED).unwrap();
        let s = |x: Section| String::from_utf8(section(NESTED, &msg, &x)).unwrap();
        assert_eq!(s(Section::Part(vec![])).as_bytes(), NESTED);
        assert!(s(Section::Header(vec![])).ends_with("boundary=\"XX\"\r\n\r\n"));
        assert_eq!(s(Section::Part(vec![1])), "hello\r\nworld");
        assert_eq!(
            s(Section::Mime(vec![1])),
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(
            s(Section::Header(vec![2])),
            "From: c@example.com\r\nSubject: inner\r\nContent-Type: text/plain\r\n\r\n"
        );
        assert_eq!(s(Section::Text(vec![2])), "inner body");
        assert_eq!(s(Section::Part(vec![2, 1])), "inner body");
        assert_eq!(
            s(Section::Fields(
                vec![],
                vec!["subject".into(), "TO".into()],
                false
            )),
            "To: b@example.net\r\nSubject: outer\r\n\r\n"
        );
        assert_eq!(s(Section::Part(vec![3])), "");
        let mut b = Vec::new();
        body_structure(&mut b, NESTED, &msg, true);
        let b = String::from_utf8(b).unwrap();
        assert!(
            b.starts_with("((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 1"),
            "{b}"
        );
        assert!(
            b.contains("(\"message\" \"rfc822\" NIL NIL NIL \"7bit\""),
            "{b}"
        );
        assert!(b.contains("\"inner\""), "{b}");
        assert!(
            b.ends_with(" \"mixed\" (\"boundary\" \"XX\") NIL NIL NIL)"),
            "{b}"
        );
    }

    #[test]
    fn envelope_of_a_message() {
        let raw = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nFrom: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n\
To: a@example.net, \"B, b\" <b@example.net>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
        let msg = parse(raw).unwrap();
        let mut e = Vec::new();
        envelope(&mut e, &msg);
        let e = String::from_utf8(e).unwrap();
        assert_eq!(
            e,
            "(\"Mon, 7 Feb 1994 21:52:25 -0800\" \"=?utf-8?q?caf=C3=A9?=\" \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"example.org\")) \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"example.org\")) \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"example.org\")) \
((NIL NIL \"a\" \"example.net\")(\"B, b\" NIL \"b\" \"example.net\")) NIL NIL NIL \"<x@y>\")"
        );
    }

    #[test]
    fn the_trace_header_has_one_length() {
        let mut i = crate::privacy::PrivacyIndex {
            version: 1,
            total: 0,
            technic: 0,
            context: 0,
            comportment: 0,
            explanation: Vec::new(),
            hints: Vec::new(),
        };
        for (t, a, b, c) in [
            (0, 0, 0, 0),
            (7, 0, 30, 0),
            (100, 100, 100, 100),
            (45, 50, 70, 10),
        ] {
            (i.total, i.technic, i.context, i.comportment) = (t, a, b, c);
            let h = privacy_header(&i);
            assert_eq!(h.len(), PRIVACY_HEADER_LEN, "{h:?}");
            assert!(h.starts_with(&format!(
                "X-Caliopen-Privacy: {t}; technic={a}; context={b}; comportment={c}"
            )));
            let parsed = parse(h.as_bytes()).expect("parse");
            assert_eq!(
                parsed.header_raw("X-Caliopen-Privacy").map(str::trim),
                Some(format!("{t}; technic={a}; context={b}; comportment={c}").as_str())
            );
        }
    }

    #[test]
    fn internal_dates() {
        assert_eq!(internal_date(0), "01-Jan-1970 00:00:00 +0000");
        assert_eq!(internal_date(1_764_600_000), "01-Dec-2025 14:40:00 +0000");
    }
}

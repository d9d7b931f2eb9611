//! mbox, in its reversible dialect mboxrd: each message starts with a
//! `From sender date` line and ends with an empty line; a line of the
//! message that starts with `From `, or with `>`s and then `From `, is
//! written with one more `>` (and read back with one less), so that what
//! is read back is what was written. Keywords travel in `Status`
//! (`R`: read), `X-Status` (`A` answered, `F` flagged, `T` draft, `D`
//! deleted) and `X-Keywords`, at the end of the header, as mutt,
//! Python's `mailbox` and Dovecot write them; an import takes them (and
//! Dovecot's `X-UID`, `X-IMAP`, `X-IMAPbase`) out of the stored bytes.

use super::flags;
use super::{digest, export_messages, key_of, Importer, Item, Summary, TransferError};
use crate::admin::Runner;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

/// Headers that are mbox bookkeeping, not part of a message.
const BOOKKEEPING: [&str; 6] = [
    "status",
    "x-status",
    "x-keywords",
    "x-uid",
    "x-imap",
    "x-imapbase",
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The `From ` line date (asctime, UTC) of a Unix time.
fn asctime(t: i64) -> String {
    let d =
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[d.weekday().number_days_from_monday() as usize],
        MONTHS[d.month() as usize - 1],
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.year()
    )
}

/// The Unix time of a `From ` line's date (`Thu Jan  1 00:00:00 1970`,
/// possibly with a zone before the year), if it has one.
fn from_line_time(line: &str) -> Option<i64> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    let m = toks.iter().position(|t| MONTHS.contains(t))?;
    let month = MONTHS.iter().position(|x| *x == toks[m])? as u8 + 1;
    let day: u8 = toks.get(m + 1)?.parse().ok()?;
    let hms: Vec<u8> = toks
        .get(m + 2)?
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    // The year: four digits (a zone such as `+0000` may come before it).
    let year: i32 = toks[m + 3..]
        .iter()
        .find(|t| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let t = time::Time::from_hms(
        *hms.first()?,
        *hms.get(1)?,
        hms.get(2).copied().unwrap_or(0),
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// True for a line mboxrd escapes: `>`s, then `From `.
fn needs_quote(line: &[u8]) -> bool {
    let rest = line
        .iter()
        .position(|&b| b != b'>')
        .map_or(&[][..], |i| &line[i..]);
    rest.starts_with(b"From ")
}

/// The end of the header block (the offset of the empty line), if any.
fn header_end(raw: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < raw.len() {
        let end = raw[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |i| at + i + 1);
        let line = &raw[at..end];
        if line == b"\n" || line == b"\r\n" {
            return Some(at);
        }
        at = end;
    }
    None
}

/// The message with the mbox keyword headers added at the end of its header.
fn with_status(raw: &[u8], keywords: &[String]) -> Vec<u8> {
    let (status, x, user) = flags::to_mbox(keywords);
    let crlf = raw
        .windows(2)
        .position(|w| w == b"\r\n")
        .is_some_and(|i| raw.iter().position(|&b| b == b'\n') == Some(i + 1));
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut add = Vec::new();
    add.extend_from_slice(format!("Status: {status}").as_bytes());
    add.extend_from_slice(eol);
    if !x.is_empty() {
        add.extend_from_slice(format!("X-Status: {x}").as_bytes());
        add.extend_from_slice(eol);
    }
    if !user.is_empty() {
        add.extend_from_slice(format!("X-Keywords: {}", user.join(" ")).as_bytes());
        add.extend_from_slice(eol);
    }
    let at = header_end(raw).unwrap_or(raw.len());
    let mut out = Vec::with_capacity(raw.len() + add.len() + 2);
    out.extend_from_slice(&raw[..at]);
    if at == raw.len() && !raw.is_empty() && !raw.ends_with(b"\n") {
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(&add);
    out.extend_from_slice(&raw[at..]);
    out
}

/// Takes the mbox keyword headers out of a message's header: the
/// message and its keywords (`None` for a folder's internal-data message:
/// an `X-IMAP` header and the subject UW IMAP gives it).
fn take_status(raw: &[u8]) -> Option<(Vec<u8>, Vec<String>)> {
    let end = header_end(raw).unwrap_or(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    let (mut status, mut x, mut kw) = (String::new(), String::new(), String::new());
    let mut at = 0;
    let mut dropping = false;
    let (mut x_imap, mut internal_subject) = (false, false);
    while at < end {
        let e = raw[at..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |i| at + i + 1);
        let line = &raw[at..e];
        at = e;
        let continued = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if continued {
            if !dropping {
                out.extend_from_slice(line);
            }
            continue;
        }
        dropping = false;
        let text = String::from_utf8_lossy(line);
        if let Some((name, value)) = text.split_once(':') {
            let lname = name.trim().to_ascii_lowercase();
            if BOOKKEEPING.contains(&lname.as_str()) {
                dropping = true;
                let v = value.trim().to_owned();
                match lname.as_str() {
                    "status" => status = v,
                    "x-status" => x = v,
                    "x-keywords" => kw = v,
                    "x-imap" => x_imap = true,
                    _ => {}
                }
                continue;
            }
            if lname == "subject" && value.contains("FOLDER INTERNAL DATA") {
                internal_subject = true;
            }
        }
        out.extend_from_slice(line);
    }
    if x_imap && internal_subject {
        return None;
    }
    out.extend_from_slice(&raw[end..]);
    Some((out, flags::from_mbox(&status, &x, &kw)))
}

/// Exports one mailbox of `user` into a new mbox file.
pub async fn export(
    runner: &Runner,
    user: &str,
    mailbox: &str,
    file: &Path,
    mut progress: super::Progress,
) -> Result<Summary, TransferError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                TransferError::Refused(format!("{} exists: export into a new file", file.display()))
            } else {
                TransferError::io(file, e)
            }
        })?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut summary = Summary {
        folders: 1,
        ..Summary::default()
    };
    export_messages(runner, user, mailbox, |m| {
        let sender = crate::web::view::from_address(&m.raw);
        let sender = if sender.is_empty() || sender.contains(char::is_whitespace) {
            "MAILER-DAEMON".to_owned()
        } else {
            sender
        };
        let body = with_status(&m.raw, &m.keywords);
        let io = |e| TransferError::io(file, e);
        w.write_all(format!("From {sender} {}\n", asctime(m.received_at)).as_bytes())
            .map_err(io)?;
        for line in body.split_inclusive(|&b| b == b'\n') {
            if needs_quote(line) {
                w.write_all(b">").map_err(io)?;
            }
            w.write_all(line).map_err(io)?;
        }
        if !body.ends_with(b"\n") {
            w.write_all(b"\n").map_err(io)?;
        }
        w.write_all(b"\n").map_err(io)?;
        summary.messages += 1;
        summary.bytes += m.raw.len() as u64;
        progress.tick(&summary, mailbox, false);
        Ok(())
    })
    .await?;
    let f = w
        .into_inner()
        .map_err(|e| TransferError::io(file, e.into_error()))?;
    f.sync_all().map_err(|e| TransferError::io(file, e))?;
    progress.tick(&summary, mailbox, true);
    Ok(summary)
}

/// The longest piece of a line read at once (a longer line is read in
/// pieces, so that memory stays bounded whatever the file holds).
const MAX_LINE: u64 = 1 << 20;

/// The message being read.
struct Current {
    when: i64,
    raw: Vec<u8>,
    /// Over the import limit: its bytes are dropped as they come.
    over: u64,
    /// The file's line where it starts.
    line: u64,
}

/// Imports the mbox `file` into `target` (a mailbox path or role).
pub async fn import(
    imp: &mut Importer<'_>,
    file: &Path,
    target: &str,
) -> Result<(), TransferError> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).map_err(|e| TransferError::io(file, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mailbox = imp.ensure(target).await?;
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
    let mut cur: Option<Current> = None;
    // The length of the last line when it was empty (`\n` or `\r\n`): the
    // separator before the next `From ` line, not part of the message.
    let mut last_empty = 0;
    let mut line = Vec::new();
    let mut at_start = true;
    let mut lineno = 0u64;
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| TransferError::io(file, e))?;
        let eof = n == 0;
        let starts = at_start;
        at_start = line.ends_with(b"\n");
        if starts {
            lineno += 1;
        }
        if eof || (starts && line.starts_with(b"From ")) {
            if let Some(mut c) = cur.take() {
                c.raw.truncate(c.raw.len() - last_empty.min(c.raw.len()));
                finish(imp, &mailbox, &mut seen, c).await?;
            }
            if eof {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let when = from_line_time(&text).unwrap_or_else(crate::store::now_unix);
            cur = Some(Current {
                when,
                raw: Vec::new(),
                over: 0,
                line: lineno,
            });
            last_empty = 0;
            // The rest of an overlong From line is not the message.
            while !at_start {
                line.clear();
                let n = (&mut r)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| TransferError::io(file, e))?;
                at_start = n == 0 || line.ends_with(b"\n");
            }
            continue;
        }
        let Some(c) = cur.as_mut() else {
            return Err(TransferError::Format(format!(
                "{} is not an mbox: it does not start with a \"From \" line",
                file.display()
            )));
        };
        last_empty = if starts && (line == b"\n" || line == b"\r\n") {
            line.len()
        } else {
            0
        };
        let piece = if starts && line.first() == Some(&b'>') && needs_quote(&line) {
            &line[1..]
        } else {
            &line[..]
        };
        if c.over > 0 || c.raw.len() as u64 + piece.len() as u64 > crate::admin::MAX_IMPORT_MESSAGE
        {
            c.over += (c.raw.len() + piece.len()) as u64;
            c.raw = Vec::new();
        } else {
            c.raw.extend_from_slice(piece);
        }
    }
    Ok(())
}

async fn finish(
    imp: &mut Importer<'_>,
    mailbox: &str,
    seen: &mut HashMap<[u8; 32], u32>,
    c: Current,
) -> Result<(), TransferError> {
    if c.over > 0 {
        imp.summary.skipped.push(format!(
            "the message at line {}: over {} bytes, the import limit",
            c.line,
            crate::admin::MAX_IMPORT_MESSAGE
        ));
        return Ok(());
    }
    let Some((raw, keywords)) = take_status(&c.raw) else {
        // A folder's internal-data message (UW IMAP, pine): not mail.
        return Ok(());
    };
    let d = digest(&raw);
    let rank = seen.entry(d).or_insert(0);
    *rank += 1;
    // The mailbox as made here (not as typed: `sent` and `Sent` are one).
    let key = key_of(&[b"mbox", mailbox.as_bytes(), &d, &rank.to_be_bytes()]);
    imp.push(
        mailbox,
        Item {
            raw,
            keywords,
            received_at: c.when,
            key,
            facts: None,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_line_dates() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(from_line_time("From a@b Thu Jan  1 00:00:00 1970"), Some(0));
        assert_eq!(
            from_line_time("From MAILER-DAEMON Mon Dec  1 10:20:30 2026"),
            Some(1_796_120_430)
        );
        assert_eq!(
            from_line_time("From x Mon Dec  1 10:20:30 +0000 2026"),
            Some(1_796_120_430)
        );
        assert_eq!(from_line_time("From x garbage"), None);
        assert_eq!(
            from_line_time(&format!("From x {}", asctime(1_796_120_430))),
            Some(1_796_120_430)
        );
    }

    #[test]
    fn status_headers_go_in_and_out() {
        let raw = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n";
        let kw = vec!["$seen".to_owned(), "$flagged".to_owned(), "todo".to_owned()];
        let with = with_status(raw, &kw);
        assert_eq!(
            with,
            b"From: a@b\r\nSubject: hi\r\nStatus: RO\r\nX-Status: F\r\nX-Keywords: todo\r\n\r\nbody\r\n"
        );
        let (back, k) = take_status(&with).unwrap();
        assert_eq!(back, raw);
        assert_eq!(k, vec!["$flagged", "$seen", "todo"]);
        assert!(take_status(
            b"X-IMAP: 1 2\nSubject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n\n"
        )
        .is_none());
        // Any other message that carries the header is mail.
        let (back, _) = take_status(b"X-IMAP: 1 2\nSubject: x\n\nbody\n").unwrap();
        assert_eq!(back, b"Subject: x\n\nbody\n");
    }

    #[test]
    fn quoting() {
        assert!(needs_quote(b"From here\n"));
        assert!(needs_quote(b">>From here\n"));
        assert!(!needs_quote(b"> From here\n"));
        assert!(!needs_quote(b"From: a\n"));
    }
}

//! A whole account in one file (`caliopen account export|import`): what a
//! user who moves, or a member that closes, takes along — every message
//! with its bytes exactly, its mailbox, keywords, received date and how it
//! travelled (so its privacy index comes along too), the password hash
//! (the user keeps their password), the account's own quota, settings
//! (remote content, language, the privacy level's history) and mailboxes,
//! and the aliases that reach it alone. The contact book and counters are
//! rebuilt from the messages where they arrive, as deliveries build them.
//!
//! Format, version 1: `CALIOPEN-ACCOUNT\0` and a big-endian `u16` version,
//! then records: a kind byte, a big-endian `u32` length, the payload, and
//! a big-endian CRC-32 of the three. `M` (first): the manifest (JSON).
//! `B`: one message — a `u32` length, a JSON head (mailbox, keywords,
//! received date, facts, source id), the bytes. `E` (last): the count, the
//! bytes and a digest of the account (SHA-256 of one line per message —
//! mailbox, received date, keywords, SHA-256 of the bytes — sorted), which
//! the import recomputes from what it stored. A file without its `E`
//! record is truncated: what was imported from it stays, and a run with
//! the whole file and `--resume` copies the rest once.

use super::{export_boxes, export_messages, key_of, Importer, Item, Summary, TransferError};
use crate::admin::{AccountManifest, MessageFacts, Op, Runner};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"CALIOPEN-ACCOUNT\0";
const VERSION: u16 = 1;
/// The largest record read (a message at the import limit, with its head).
const MAX_RECORD: u32 = (crate::admin::MAX_IMPORT_MESSAGE as u32) + (1 << 20);

/// One message's head in an archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    /// The mailbox (a role name for role mailboxes).
    mailbox: String,
    keywords: Vec<String>,
    received_at: i64,
    facts: Option<MessageFacts>,
    /// Its id where it comes from (with the mailbox: the import key).
    id: String,
}

/// The last record: what the archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Messages.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The account digest (hexadecimal SHA-256; see the module text).
    pub digest: String,
}

/// The digest of a set of digest lines.
fn digest_of(mut lines: Vec<String>) -> String {
    lines.sort_unstable();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for l in &lines {
        ctx.update(l.as_bytes());
        ctx.update(b"\n");
    }
    hex::encode(ctx.finish().as_ref())
}

fn digest_line(mailbox: &str, received_at: i64, keywords: &[String], raw: &[u8]) -> String {
    let mut k = keywords.to_vec();
    k.sort();
    format!(
        "{mailbox}\t{received_at}\t{}\t{}",
        k.join(","),
        hex::encode(super::digest(raw))
    )
}

fn box_name(b: &super::ExportBox) -> String {
    match b.role {
        Some(r) => r.as_str().to_owned(),
        None => b.name.clone(),
    }
}

fn record(w: &mut impl Write, kind: u8, payload: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(std::io::Error::other)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(&len.to_be_bytes());
    w.write_all(&[kind])?;
    w.write_all(&len.to_be_bytes())?;
    for p in payload {
        crc.update(p);
        w.write_all(p)?;
    }
    w.write_all(&crc.finalize().to_be_bytes())
}

/// The digest of `user`'s account as it is in the store now.
pub async fn account_digest(runner: &Runner, user: &str) -> Result<End, TransferError> {
    let mut lines = Vec::new();
    let mut bytes = 0u64;
    for b in export_boxes(runner, user).await? {
        let name = box_name(&b);
        export_messages(runner, user, &b.name, |m| {
            bytes += m.raw.len() as u64;
            lines.push(digest_line(&name, m.received_at, &m.keywords, &m.raw));
            Ok(())
        })
        .await?;
    }
    Ok(End {
        messages: lines.len() as u64,
        bytes,
        digest: digest_of(lines),
    })
}

/// Writes `user`'s account into a new archive file.
pub async fn export(
    runner: &Runner,
    user: &str,
    file: &Path,
    mut progress: super::Progress,
) -> Result<(Summary, End), TransferError> {
    let manifest: AccountManifest = serde_json::from_value(
        runner
            .run(
                &Op::AccountManifest {
                    user: user.to_owned(),
                },
                Vec::new(),
            )
            .await?
            .json,
    )
    .map_err(|e| TransferError::Format(format!("the store's manifest: {e}")))?;
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
    let io = |e| TransferError::io(file, e);
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&VERSION.to_be_bytes()).map_err(io)?;
    let m = serde_json::to_vec(&manifest).map_err(|e| TransferError::Format(e.to_string()))?;
    record(&mut w, b'M', &[&m]).map_err(io)?;
    let mut summary = Summary::default();
    let mut lines = Vec::new();
    for b in export_boxes(runner, user).await? {
        let name = box_name(&b);
        summary.folders += 1;
        export_messages(runner, user, &b.name, |msg| {
            let head = Head {
                mailbox: name.clone(),
                keywords: msg.keywords.clone(),
                received_at: msg.received_at,
                facts: msg.facts.clone(),
                id: msg.id.clone(),
            };
            let h = serde_json::to_vec(&head).map_err(|e| TransferError::Format(e.to_string()))?;
            let hl = (h.len() as u32).to_be_bytes();
            record(&mut w, b'B', &[&hl, &h, &msg.raw]).map_err(io)?;
            lines.push(digest_line(&name, msg.received_at, &msg.keywords, &msg.raw));
            summary.messages += 1;
            summary.bytes += msg.raw.len() as u64;
            progress.tick(&summary, &b.name, false);
            Ok(())
        })
        .await?;
    }
    let end = End {
        messages: summary.messages,
        bytes: summary.bytes,
        digest: digest_of(lines),
    };
    let e = serde_json::to_vec(&end).map_err(|e| TransferError::Format(e.to_string()))?;
    record(&mut w, b'E', &[&e]).map_err(io)?;
    let f = w
        .into_inner()
        .map_err(|e| TransferError::io(file, e.into_error()))?;
    f.sync_all().map_err(io)?;
    progress.tick(&summary, "", true);
    Ok((summary, end))
}

/// Reads an archive's records.
struct Reader<R: Read> {
    r: R,
    n: u64,
}

impl<R: Read> Reader<R> {
    /// The next record; `None` at the end of the file (between records).
    fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, TransferError> {
        let mut kind = [0u8; 1];
        match self.r.read(&mut kind) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(TransferError::Format(format!("reading the archive: {e}"))),
        }
        self.n += 1;
        let cut =
            |_| TransferError::Format(format!("the archive is truncated inside record {}", self.n));
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(cut)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_RECORD {
            return Err(TransferError::Format(format!(
                "record {} is damaged: it says it holds {len} bytes",
                self.n
            )));
        }
        let mut payload = vec![0u8; len as usize];
        self.r.read_exact(&mut payload).map_err(cut)?;
        let mut crc = [0u8; 4];
        self.r.read_exact(&mut crc).map_err(cut)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&kind);
        h.update(&len.to_be_bytes());
        h.update(&payload);
        if h.finalize() != u32::from_be_bytes(crc) {
            return Err(TransferError::Format(format!(
                "record {} is damaged (its CRC does not match)",
                self.n
            )));
        }
        Ok(Some((kind[0], payload)))
    }
}

/// What an account import did.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    /// The messages part.
    pub summary: Summary,
    /// The archive's own end record.
    pub archive: End,
    /// The account as stored after the import.
    pub stored: End,
    /// Aliases made here.
    pub aliases: Vec<String>,
    /// Aliases of the archive left out (not a domain of this instance, or taken).
    pub aliases_left: Vec<String>,
    /// What became of the archive's own quota, when it had one.
    pub quota: Option<String>,
}

/// Imports an archive as `user` (default: its own name); `resume` goes on
/// with an account an interrupted import made. `alias_domains`: make only
/// the archive's aliases at these domains (`None`: every domain served).
pub async fn import(
    runner: &Runner,
    file: &Path,
    user: Option<&str>,
    resume: bool,
    alias_domains: Option<&[String]>,
    progress: super::Progress,
) -> Result<Imported, TransferError> {
    let f = std::fs::File::open(file).map_err(|e| TransferError::io(file, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut magic = vec![0u8; MAGIC.len() + 2];
    if r.read_exact(&mut magic).is_err() || !magic.starts_with(MAGIC) {
        return Err(TransferError::Format(format!(
            "{} is not a Caliopen account archive",
            file.display()
        )));
    }
    let version = u16::from_be_bytes([magic[MAGIC.len()], magic[MAGIC.len() + 1]]);
    if version != VERSION {
        return Err(TransferError::Format(format!(
            "{}: archive version {version}; this release reads version {VERSION}",
            file.display()
        )));
    }
    let mut rd = Reader { r, n: 0 };
    let manifest: AccountManifest = match rd.next()? {
        Some((b'M', m)) => serde_json::from_slice(&m)
            .map_err(|e| TransferError::Format(format!("the archive's manifest: {e}")))?,
        _ => {
            return Err(TransferError::Format(
                "the archive does not start with its manifest".into(),
            ))
        }
    };
    let user = user.unwrap_or(&manifest.user).to_ascii_lowercase();
    let made = runner
        .run(
            &Op::AccountCreate {
                user: user.clone(),
                manifest: manifest.clone(),
                resume,
            },
            Vec::new(),
        )
        .await?
        .json;
    let quota = quota_note(&made["quota_asked"], &made["quota"]);
    let source = manifest.domains.first().cloned().unwrap_or_default();
    let mut imp = Importer::new(runner, &user, progress);
    let end = loop {
        match rd.next() {
            Ok(Some((b'B', p))) => {
                let hl = p
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .filter(|hl| 4 + hl <= p.len())
                    .ok_or_else(|| {
                        TransferError::Format(format!("record {} is damaged (its head)", rd.n))
                    })?;
                let head: Head = serde_json::from_slice(&p[4..4 + hl]).map_err(|e| {
                    TransferError::Format(format!("record {}: its head: {e}", rd.n))
                })?;
                let raw = p[4 + hl..].to_vec();
                let mailbox = imp.ensure(&head.mailbox).await?;
                let key = key_of(&[
                    b"account",
                    manifest.user.as_bytes(),
                    source.as_bytes(),
                    head.id.as_bytes(),
                    head.mailbox.as_bytes(),
                ]);
                imp.push(
                    &mailbox,
                    Item {
                        raw,
                        keywords: head.keywords,
                        received_at: head.received_at,
                        key,
                        facts: head.facts,
                    },
                )
                .await?;
            }
            Ok(Some((b'E', p))) => {
                break serde_json::from_slice::<End>(&p)
                    .map_err(|e| TransferError::Format(format!("the end record: {e}")))?
            }
            Ok(Some((k, _))) => {
                return Err(TransferError::Format(format!(
                    "record {} has an unknown kind {:?}",
                    rd.n, k as char
                )))
            }
            Ok(None) => {
                imp.flush().await?;
                return Err(TransferError::Format(format!(
                    "the archive is truncated: it ends after {} records without its end record; \
                     what it held so far is imported ({} messages); run again with the whole \
                     file and --resume",
                    rd.n,
                    imp.summary.messages + imp.summary.duplicates
                )));
            }
            Err(e) => {
                // What came before the damage is kept (and said).
                imp.flush().await?;
                return Err(e);
            }
        }
    };
    let summary = imp.finish().await?;
    let mut aliases = Vec::new();
    let mut aliases_left = Vec::new();
    for a in &manifest.aliases {
        let domain = a
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        if alias_domains.is_some_and(|ok| !ok.contains(&domain)) {
            aliases_left.push(format!("{a}: not a domain handed over by the sender"));
            continue;
        }
        match runner
            .run(
                &Op::AliasAdd {
                    alias: a.clone(),
                    targets: vec![user.clone()],
                    only_new: true,
                },
                Vec::new(),
            )
            .await
        {
            Ok(_) => aliases.push(a.clone()),
            Err(e) => aliases_left.push(format!("{a}: {e}")),
        }
    }
    let stored = account_digest(runner, &user).await?;
    Ok(Imported {
        summary,
        archive: end,
        stored,
        aliases,
        aliases_left,
        quota,
    })
}

/// Says what became of an archive's own quota (`None`: it had none, or the
/// account existed before).
fn quota_note(asked: &serde_json::Value, given: &serde_json::Value) -> Option<String> {
    let text = |q: &serde_json::Value| {
        let n = |k: &str| match q[k].as_u64() {
            Some(0) | None => "no limit".to_owned(),
            Some(v) => v.to_string(),
        };
        format!("{} bytes, {} messages", n("bytes"), n("messages"))
    };
    if given.is_null() {
        return None;
    }
    Some(if asked == given {
        format!("kept ({})", text(given))
    } else {
        format!(
            "{} (the archive asked for {}; this instance's default is the most an import gives)",
            text(given),
            text(asked)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked() {
        let mut buf = Vec::new();
        record(&mut buf, b'M', &[b"{}"]).unwrap();
        record(&mut buf, b'B', &[b"ab", b"cd"]).unwrap();
        let mut r = Reader { r: &buf[..], n: 0 };
        assert_eq!(r.next().unwrap(), Some((b'M', b"{}".to_vec())));
        assert_eq!(r.next().unwrap(), Some((b'B', b"abcd".to_vec())));
        assert_eq!(r.next().unwrap(), None);
        // Cut anywhere inside a record: truncated; a flipped bit: damaged.
        for cut in 1..buf.len() {
            if cut == 11 {
                continue; // the boundary between the two records
            }
            let mut r = Reader {
                r: &buf[..cut],
                n: 0,
            };
            let mut failed = false;
            for _ in 0..3 {
                match r.next() {
                    Err(e) => {
                        assert!(e.to_string().contains("truncated"), "{cut}: {e}");
                        failed = true;
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(_)) => {}
                }
            }
            assert!(failed, "cut at {cut} not seen");
        }
        let mut bad = buf.clone();
        bad[7] ^= 1;
        let mut r = Reader { r: &bad[..], n: 0 };
        let e = r.next().unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }

    #[test]
    fn the_digest_does_not_depend_on_order() {
        let a = digest_line("inbox", 1, &["$seen".into()], b"x");
        let b = digest_line("sent", 2, &[], b"y");
        assert_eq!(digest_of(vec![a.clone(), b.clone()]), digest_of(vec![b, a]));
        assert_ne!(
            digest_line("inbox", 1, &["$seen".into(), "a".into()], b"x"),
            digest_line("inbox", 1, &["a".into()], b"x")
        );
    }
}

//! Taking an account's mail out and bringing mail in:
//! `caliopen mail export` (Maildir++ or mbox) and `caliopen mail import`
//! (Maildir++, mbox, or another IMAP server).
//!
//! The tool does the file and network work here and reaches the store
//! only through the admin operations ([`crate::admin::Runner`]: in the
//! daemon when one runs, else on the database), in batches:
//! `mail_index` and `mail_fetch` to read, `mailbox_ensure` and
//! `mail_append` to write. Every imported message carries a key from its
//! source (a Maildir file's unique name, an mbox message's digest and
//! rank, an IMAP message's folder and digest), and the store keeps each
//! key once per account, in the same transaction as the message: an
//! import cut short anywhere can be run again and copies each message
//! once. An IMAP import also keeps, per folder, the `UIDVALIDITY` and the
//! highest UID copied, so that the next run asks only for what is new.

pub mod account;
pub(crate) mod flags;
pub mod imap;
pub mod maildir;
pub mod mbox;

use crate::admin::{AppendItem, Op, RunError, Runner, MAX_BATCH_BYTES, MAX_BATCH_MESSAGES};
use crate::mail::Role;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The store refused or failed an operation.
    #[error(transparent)]
    Store(#[from] RunError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The input is not what its format says (a Maildir without `cur`, a
    /// file that is not an mbox).
    #[error("{0}")]
    Format(String),
    /// The IMAP server refused, failed or broke the protocol.
    #[error("IMAP: {0}")]
    Imap(String),
    /// The destination is not usable (an export into a directory that is
    /// not empty).
    #[error("{0}")]
    Refused(String),
}

impl TransferError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        TransferError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// One message to import.
#[derive(Debug, Clone)]
pub struct Item {
    /// Its bytes, as they will be stored.
    pub raw: Vec<u8>,
    /// Its keywords (as the store names them: `$seen`, `$flagged`…).
    pub keywords: Vec<String>,
    /// When it was received (Unix seconds).
    pub received_at: i64,
    /// What identifies it at its source (see the module text).
    pub key: [u8; 32],
    /// How it travelled, when the source knows (an account archive).
    pub facts: Option<crate::admin::MessageFacts>,
}

/// SHA-256 of the parts, each followed by a NUL: an item key.
pub fn key_of(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
        ctx.update(b"\0");
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256 of some bytes.
pub fn digest(raw: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw).as_ref());
    out
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Messages written (exported) or stored (imported).
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Messages an earlier run had already imported.
    pub duplicates: u64,
    /// Folders seen.
    pub folders: u64,
    /// Messages left out, each with why.
    pub skipped: Vec<String>,
    /// Keywords the store did not take (not valid IMAP keywords).
    pub keywords_dropped: u64,
}

/// Prints a progress line on standard error at most once a second.
#[derive(Debug)]
pub struct Progress {
    verb: &'static str,
    started: Instant,
    last: Option<Instant>,
    quiet: bool,
}

impl Progress {
    /// A progress printer; `quiet` prints nothing.
    pub fn new(verb: &'static str, quiet: bool) -> Self {
        Self {
            verb,
            started: Instant::now(),
            last: None,
            quiet,
        }
    }

    /// Prints where a run is, unless a line was printed less than a second ago
    /// (`force`: print anyway, at the end of a folder).
    pub fn tick(&mut self, s: &Summary, folder: &str, force: bool) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        if !force && self.last.is_some_and(|l| now - l < Duration::from_secs(1)) {
            return;
        }
        self.last = Some(now);
        let secs = (now - self.started).as_secs_f64().max(0.001);
        let place = if folder.is_empty() {
            String::new()
        } else {
            format!("; folder {folder}")
        };
        eprintln!(
            "{}: {} messages ({:.1} MB, {:.0} msg/s), {} already there, {} skipped{place}",
            self.verb,
            s.messages,
            s.bytes as f64 / 1e6,
            s.messages as f64 / secs,
            s.duplicates,
            s.skipped.len(),
        );
    }
}

/// The mailbox of this instance a folder from elsewhere goes to: the role
/// mailbox for a folder marked or named as one (Sent, Sent Messages, Sent
/// Items, Deleted Messages, Spam…), else the folder's own path (without a
/// leading `INBOX/`, where servers that nest every folder under the inbox
/// put it).
pub fn target_mailbox(path: &str, marked: Option<Role>) -> String {
    if let Some(r) = marked {
        return r.as_str().to_owned();
    }
    // Courier and Dovecot's `INBOX.` namespace puts every folder under
    // the inbox: `INBOX.Sent` is the Sent folder.
    let path = match path.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("inbox/") && path.len() > 6 => &path[6..],
        _ => path,
    };
    let lower = path.to_lowercase();
    let role = match lower
        .trim_start_matches("[gmail]/")
        .trim_start_matches("[google mail]/")
    {
        "inbox" => Some(Role::Inbox),
        "sent" | "sent messages" | "sent items" | "sent mail" | "envoyés" | "éléments envoyés" => {
            Some(Role::Sent)
        }
        "drafts" | "draft" | "brouillons" => Some(Role::Drafts),
        "trash" | "deleted messages" | "deleted items" | "bin" | "corbeille" => Some(Role::Trash),
        "junk" | "spam" | "junk e-mail" | "junk email" | "indésirables" => Some(Role::Junk),
        "archive" | "archives" => Some(Role::Archive),
        _ => None,
    };
    match role {
        Some(r) => r.as_str().to_owned(),
        None => path.to_owned(),
    }
}

/// Writes imported messages into an account in batches, each mailbox made
/// on first use.
pub struct Importer<'a> {
    runner: &'a Runner,
    user: String,
    /// Mailbox names of this instance, by the target asked for.
    made: HashMap<String, String>,
    batch: Vec<Item>,
    batch_bytes: u64,
    batch_mailbox: String,
    /// What the run did so far.
    pub summary: Summary,
    /// The progress line.
    pub progress: Progress,
}

impl std::fmt::Debug for Importer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("user", &self.user)
            .field("summary", &self.summary)
            .finish()
    }
}

impl<'a> Importer<'a> {
    /// Imports into `user`'s account through `runner`.
    pub fn new(runner: &'a Runner, user: &str, progress: Progress) -> Self {
        Self {
            runner,
            user: user.to_owned(),
            made: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            batch_mailbox: String::new(),
            summary: Summary::default(),
            progress,
        }
    }

    /// The account.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The runner.
    pub fn runner(&self) -> &'a Runner {
        self.runner
    }

    /// Makes `target` (a path or a role) unless it exists; its name here.
    pub async fn ensure(&mut self, target: &str) -> Result<String, TransferError> {
        if let Some(n) = self.made.get(target) {
            return Ok(n.clone());
        }
        let out = self
            .runner
            .run(
                &Op::MailboxEnsure {
                    user: self.user.clone(),
                    name: target.to_owned(),
                },
                Vec::new(),
            )
            .await?;
        let name = out.json["name"].as_str().unwrap_or(target).to_owned();
        self.made.insert(target.to_owned(), name.clone());
        self.summary.folders += 1;
        Ok(name)
    }

    /// Queues a message for `mailbox` (a name [`Importer::ensure`] gave);
    /// writes the batch when it is full.
    pub async fn push(&mut self, mailbox: &str, item: Item) -> Result<(), TransferError> {
        if item.raw.is_empty() {
            self.summary
                .skipped
                .push(format!("{mailbox}: an empty message"));
            return Ok(());
        }
        if item.raw.len() as u64 > crate::admin::MAX_IMPORT_MESSAGE {
            self.summary.skipped.push(format!(
                "{mailbox}: a message of {} bytes, over the import limit of {} bytes",
                item.raw.len(),
                crate::admin::MAX_IMPORT_MESSAGE
            ));
            return Ok(());
        }
        if mailbox != self.batch_mailbox
            || self.batch.len() >= MAX_BATCH_MESSAGES.min(256)
            || (!self.batch.is_empty()
                && self.batch_bytes + item.raw.len() as u64 > MAX_BATCH_BYTES / 2)
        {
            self.flush().await?;
            self.batch_mailbox = mailbox.to_owned();
        }
        self.batch_bytes += item.raw.len() as u64;
        self.batch.push(item);
        Ok(())
    }

    /// Writes the queued messages; when it returns, they are durable.
    pub async fn flush(&mut self) -> Result<(), TransferError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let mut input = Vec::with_capacity(batch.iter().map(|i| i.raw.len()).sum());
        let items: Vec<AppendItem> = batch
            .iter()
            .map(|i| {
                input.extend_from_slice(&i.raw);
                AppendItem {
                    size: i.raw.len() as u64,
                    keywords: i.keywords.clone(),
                    received_at: i.received_at,
                    key: hex::encode(i.key),
                    facts: i.facts.clone(),
                }
            })
            .collect();
        let out = self
            .runner
            .run(
                &Op::MailAppend {
                    user: self.user.clone(),
                    mailbox: self.batch_mailbox.clone(),
                    items,
                },
                input,
            )
            .await?;
        let stored = out.json["stored"].as_u64().unwrap_or(0);
        self.summary.messages += stored;
        self.summary.duplicates += out.json["duplicates"].as_u64().unwrap_or(0);
        self.summary.keywords_dropped += out.json["keywords_dropped"].as_u64().unwrap_or(0);
        // Bytes of what was new (a batch is all new or all seen before in
        // practice; a mixed one counts its new share of the bytes).
        let all = batch.len() as u64;
        let bytes: u64 = batch.iter().map(|i| i.raw.len() as u64).sum();
        self.summary.bytes += bytes * stored / all.max(1);
        let folder = self.batch_mailbox.clone();
        self.progress.tick(&self.summary, &folder, false);
        Ok(())
    }

    /// Writes what is queued and returns the summary.
    pub async fn finish(mut self) -> Result<Summary, TransferError> {
        self.flush().await?;
        let folder = self.batch_mailbox.clone();
        self.progress.tick(&self.summary, &folder, true);
        Ok(self.summary)
    }
}

/// One message read out of the store for an export.
#[derive(Debug, Clone)]
pub struct Exported {
    /// Its id (hexadecimal).
    pub id: String,
    /// Its keywords.
    pub keywords: Vec<String>,
    /// When it was received (Unix seconds).
    pub received_at: i64,
    /// Its bytes, exactly as stored.
    pub raw: Vec<u8>,
    /// How it came.
    pub facts: Option<crate::admin::MessageFacts>,
}

/// A mailbox of the account being exported.
#[derive(Debug, Clone)]
pub struct ExportBox {
    /// Its name (a `/`-separated path; `INBOX` for the inbox).
    pub name: String,
    /// Its role.
    pub role: Option<Role>,
}

/// The mailboxes of `user`, the inbox first, parents before children.
pub async fn export_boxes(runner: &Runner, user: &str) -> Result<Vec<ExportBox>, TransferError> {
    let out = runner
        .run(
            &Op::MailboxList {
                user: user.to_owned(),
            },
            Vec::new(),
        )
        .await?;
    let mut boxes: Vec<ExportBox> = out
        .json
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            Some(ExportBox {
                name: b["name"].as_str()?.to_owned(),
                role: b["role"].as_str().and_then(Role::parse),
            })
        })
        .collect();
    boxes.sort_by(|a, b| {
        (a.role != Some(Role::Inbox), &a.name).cmp(&(b.role != Some(Role::Inbox), &b.name))
    });
    Ok(boxes)
}

/// Calls `each` on every message of one mailbox, in UID order, read from
/// the store in batches.
pub async fn export_messages<F>(
    runner: &Runner,
    user: &str,
    mailbox: &str,
    mut each: F,
) -> Result<(), TransferError>
where
    F: FnMut(Exported) -> Result<(), TransferError>,
{
    let mut after_uid = 0;
    loop {
        let index = runner
            .run(
                &Op::MailIndex {
                    user: user.to_owned(),
                    mailbox: mailbox.to_owned(),
                    after_uid,
                },
                Vec::new(),
            )
            .await?;
        let page = index.json["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let list: Vec<Entry> = page
            .iter()
            .filter_map(|m| {
                Some((
                    m["id"].as_str()?.to_owned(),
                    m["keywords"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect(),
                    m["received_at"].as_i64().unwrap_or(0),
                    m["size"].as_u64().unwrap_or(0),
                    serde_json::from_value(m["facts"].clone()).ok(),
                ))
            })
            .collect();
        export_page(runner, user, &list, &mut each).await?;
        let last = page.last().and_then(|m| m["uid"].as_u64());
        match last.and_then(|u| u32::try_from(u).ok()) {
            Some(u) if index.json["more"].as_bool() == Some(true) && u > after_uid => after_uid = u,
            _ => return Ok(()),
        }
    }
}

/// One message of a `mail_index` page: id, keywords, date, size, facts.
type Entry = (
    String,
    Vec<String>,
    i64,
    u64,
    Option<crate::admin::MessageFacts>,
);

/// Fetches the messages of one index page in batches, in its order.
async fn export_page<F>(
    runner: &Runner,
    user: &str,
    list: &[Entry],
    each: &mut F,
) -> Result<(), TransferError>
where
    F: FnMut(Exported) -> Result<(), TransferError>,
{
    let mut start = 0;
    while start < list.len() {
        let mut end = start;
        let mut bytes = 0u64;
        while end < list.len()
            && end - start < MAX_BATCH_MESSAGES
            && (end == start || bytes + list[end].3 <= MAX_BATCH_BYTES)
        {
            bytes += list[end].3;
            end += 1;
        }
        let ids: Vec<String> = list[start..end].iter().map(|m| m.0.clone()).collect();
        let out = match runner
            .run(
                &Op::MailFetch {
                    user: user.to_owned(),
                    ids,
                },
                Vec::new(),
            )
            .await
        {
            Ok(o) => o,
            // A message deleted since the index was read: fetch the
            // batch one by one and leave the gone ones out.
            Err(RunError::Op(crate::admin::OpError::NotFound(_))) if end - start > 1 => {
                for m in &list[start..end] {
                    let one = runner
                        .run(
                            &Op::MailFetch {
                                user: user.to_owned(),
                                ids: vec![m.0.clone()],
                            },
                            Vec::new(),
                        )
                        .await;
                    let o = match one {
                        Ok(o) => o,
                        Err(RunError::Op(crate::admin::OpError::NotFound(_))) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    each(Exported {
                        id: m.0.clone(),
                        keywords: m.1.clone(),
                        received_at: m.2,
                        raw: o.raw,
                        facts: m.4.clone(),
                    })?;
                }
                start = end;
                continue;
            }
            Err(RunError::Op(crate::admin::OpError::NotFound(_))) => {
                start = end;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let sizes: Vec<usize> = out.json["sizes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_u64().map(|s| s as usize))
            .collect();
        if sizes.len() != end - start || sizes.iter().sum::<usize>() != out.raw.len() {
            return Err(TransferError::Format(
                "the store's answer does not match the messages asked for".into(),
            ));
        }
        let mut at = 0;
        for (m, size) in list[start..end].iter().zip(sizes) {
            each(Exported {
                id: m.0.clone(),
                keywords: m.1.clone(),
                received_at: m.2,
                raw: out.raw[at..at + size].to_vec(),
                facts: m.4.clone(),
            })?;
            at += size;
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_find_their_roles() {
        assert_eq!(target_mailbox("INBOX", None), "inbox");
        assert_eq!(target_mailbox("Sent Messages", None), "sent");
        assert_eq!(target_mailbox("[Gmail]/Spam", None), "junk");
        assert_eq!(target_mailbox("Deleted Items", None), "trash");
        assert_eq!(target_mailbox("Work/2026", None), "Work/2026");
        assert_eq!(target_mailbox("INBOX/Work", None), "Work");
        assert_eq!(target_mailbox("INBOX/Spam", None), "junk");
        assert_eq!(target_mailbox("INBOX/Sent", None), "sent");
        assert_eq!(target_mailbox("[Google Mail]/Drafts", None), "drafts");
        assert_eq!(target_mailbox("Outbox", Some(Role::Sent)), "sent");
    }

    #[test]
    fn keys_separate_their_parts() {
        assert_ne!(key_of(&[b"ab", b"c"]), key_of(&[b"a", b"bc"]));
    }
}

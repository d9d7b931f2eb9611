//! Maildir++ (the layout of Dovecot, Courier and mbsync's `SubFolders
//! Maildir++`): the inbox is the directory itself (`cur`, `new`, `tmp`),
//! every other folder a `.`-named subdirectory whose name joins the path's
//! parts with `.`, each part in modified UTF-7 (a `.` inside a part is
//! written `&AC4-`). A message is one file, `<unique>:2,<letters>`, its
//! modification time the date it was received; user keywords are the
//! letters a–z listed in the folder's `dovecot-keywords`.

use super::flags;
use super::{export_boxes, export_messages, key_of, Importer, Item, Summary, TransferError};
use crate::admin::Runner;
use crate::imap::render::{utf7_decode, utf7_encode};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The subdirectory name of a folder path (`Work/2026` → `.Work.2026`);
/// `None` for the inbox, which is the root.
pub fn folder_dir(path: &str) -> Option<String> {
    if path.eq_ignore_ascii_case("inbox") {
        return None;
    }
    let parts: Vec<String> = path
        .split('/')
        .map(|p| utf7_encode(p).replace('.', "&AC4-"))
        .collect();
    Some(format!(".{}", parts.join(".")))
}

/// The folder path of a subdirectory name (`.Work.2026` → `Work/2026`);
/// `None` when it is not a folder name.
pub fn folder_path(dir: &str) -> Option<String> {
    let name = dir.strip_prefix('.')?;
    if name.is_empty() || name == "." {
        return None;
    }
    let parts: Option<Vec<String>> = name.split('.').map(utf7_decode).collect();
    let parts = parts?;
    if parts.iter().any(String::is_empty) {
        return None;
    }
    Some(parts.join("/"))
}

/// Exports every mailbox of `user` into the Maildir++ at `dir` (which must
/// not exist, or be empty).
pub async fn export(
    runner: &Runner,
    user: &str,
    dir: &Path,
    mut progress: super::Progress,
) -> Result<Summary, TransferError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| TransferError::io(dir, e))?;
        if entries.next().is_some() {
            return Err(TransferError::Refused(format!(
                "{} exists and is not empty: export into a new directory",
                dir.display()
            )));
        }
    }
    let host = hostname();
    let mut summary = Summary::default();
    let boxes = export_boxes(runner, user).await?;
    for b in &boxes {
        let root = match folder_dir(&b.name) {
            Some(sub) => dir.join(sub),
            None => dir.to_owned(),
        };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| TransferError::io(&root, e))?;
        }
        if root != dir {
            // Maildir++: marks a folder (Courier and Dovecot read it).
            std::fs::write(root.join("maildirfolder"), b"")
                .map_err(|e| TransferError::io(&root, e))?;
        }
        summary.folders += 1;
        let mut user_keywords: Vec<String> = Vec::new();
        let mut lost = 0usize;
        let mut n = 0u64;
        export_messages(runner, user, &b.name, |m| {
            let (letters, l) = flags::to_maildir(&m.keywords, &mut user_keywords);
            lost += l;
            n += 1;
            let unique = format!(
                "{}.M{}P{}Q{n}.{host},S={}",
                m.received_at.max(0),
                m.id,
                std::process::id(),
                m.raw.len()
            );
            let tmp = root.join("tmp").join(&unique);
            let dest = root.join("cur").join(format!("{unique}:2,{letters}"));
            let mut f = std::fs::File::create(&tmp).map_err(|e| TransferError::io(&tmp, e))?;
            f.write_all(&m.raw)
                .map_err(|e| TransferError::io(&tmp, e))?;
            let when = UNIX_EPOCH + Duration::from_secs(m.received_at.max(0) as u64);
            f.set_modified(when)
                .map_err(|e| TransferError::io(&tmp, e))?;
            drop(f);
            std::fs::rename(&tmp, &dest).map_err(|e| TransferError::io(&dest, e))?;
            summary.messages += 1;
            summary.bytes += m.raw.len() as u64;
            progress.tick(&summary, &b.name, false);
            Ok(())
        })
        .await?;
        if lost > 0 {
            summary.skipped.push(format!(
                "{}: {lost} keywords past the 26 a Maildir folder can name were left out",
                b.name
            ));
        }
        if !user_keywords.is_empty() {
            let mut text = String::new();
            for (i, k) in user_keywords.iter().enumerate() {
                text.push_str(&format!("{i} {}\n", imap_keyword(k)));
            }
            let p = root.join("dovecot-keywords");
            std::fs::write(&p, text).map_err(|e| TransferError::io(&p, e))?;
        }
        progress.tick(&summary, &b.name, true);
    }
    // One sync of the file system makes every file written durable.
    let d = std::fs::File::open(dir).map_err(|e| TransferError::io(dir, e))?;
    rustix::fs::syncfs(&d).map_err(|e| TransferError::io(dir, e.into()))?;
    Ok(summary)
}

/// A keyword as IMAP clients spell it (`$forwarded` → `$Forwarded`,
/// others as they are).
fn imap_keyword(k: &str) -> String {
    match k {
        "$forwarded" => "$Forwarded".into(),
        "$junk" => "$Junk".into(),
        "$notjunk" => "$NotJunk".into(),
        "$mdnsent" => "$MDNSent".into(),
        "$phishing" => "$Phishing".into(),
        other => other.to_owned(),
    }
}

fn hostname() -> String {
    let h = rustix::system::uname();
    let h = h.nodename().to_string_lossy().into_owned();
    // The Maildir specification: '/' and ':' are written octal-escaped.
    h.replace('/', "\\057").replace(':', "\\072")
}

/// One folder of a Maildir++ to import.
#[derive(Debug, Clone)]
struct SourceFolder {
    /// The folder's path (`INBOX` for the root).
    path: String,
    dir: PathBuf,
}

fn source_folders(dir: &Path) -> Result<Vec<SourceFolder>, TransferError> {
    if !dir.join("cur").is_dir() && !dir.join("new").is_dir() {
        return Err(TransferError::Format(format!(
            "{} is not a Maildir (no cur/ nor new/ in it)",
            dir.display()
        )));
    }
    let mut out = vec![SourceFolder {
        path: "INBOX".into(),
        dir: dir.to_owned(),
    }];
    let mut subs = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| TransferError::io(dir, e))? {
        let e = e.map_err(|e| TransferError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // A folder is a directory of the Maildir itself: a symbolic link
        // is not followed (it could lead anywhere on this machine).
        if !e.file_type().is_ok_and(|t| t.is_dir()) || !e.path().join("cur").is_dir() {
            continue;
        }
        if let Some(path) = folder_path(&name) {
            subs.push(SourceFolder {
                path,
                dir: e.path(),
            });
        }
    }
    // Parents first, so that they are made with their own names.
    subs.sort_by(|a, b| a.path.cmp(&b.path));
    out.extend(subs);
    Ok(out)
}

/// The user keywords of a folder (`dovecot-keywords`: `N keyword` lines).
fn folder_keywords(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    use std::io::Read as _;
    let mut text = String::new();
    // 26 keywords fit in far less; a bigger file is not Dovecot's.
    let read = std::fs::File::open(dir.join("dovecot-keywords"))
        .and_then(|f| f.take(64 << 10).read_to_string(&mut text));
    if read.is_err() {
        return out;
    }
    for line in text.lines() {
        let mut it = line.splitn(2, ' ');
        let (Some(n), Some(k)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<usize>() else { continue };
        if n < flags::MAILDIR_USER_KEYWORDS {
            if out.len() <= n {
                out.resize(n + 1, String::new());
            }
            out[n] = k.trim().to_owned();
        }
    }
    out
}

/// A message file's bytes: not through a symbolic link put in its place
/// since the listing, and not more than the import limit.
fn read_message(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut raw = Vec::new();
    f.take(crate::admin::MAX_IMPORT_MESSAGE)
        .read_to_end(&mut raw)?;
    Ok(raw)
}

/// Imports every folder of the Maildir++ at `dir` into the importer's account.
pub async fn import(imp: &mut Importer<'_>, dir: &Path) -> Result<(), TransferError> {
    for folder in source_folders(dir)? {
        let target = super::target_mailbox(&folder.path, None);
        let mailbox = imp.ensure(&target).await?;
        let keywords = folder_keywords(&folder.dir);
        let mut files: Vec<(i64, String, PathBuf, String)> = Vec::new();
        for sub in ["new", "cur"] {
            let d = folder.dir.join(sub);
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd {
                let e = e.map_err(|e| TransferError::io(&d, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                // Not followed if a symbolic link (DirEntry::metadata does
                // not follow it): only the Maildir's own files are read.
                let meta = e
                    .metadata()
                    .map_err(|err| TransferError::io(e.path(), err))?;
                if !meta.is_file() {
                    if meta.is_symlink() {
                        imp.summary.skipped.push(format!(
                            "{}: a symbolic link, not followed",
                            e.path().display()
                        ));
                    }
                    continue;
                }
                if meta.len() > crate::admin::MAX_IMPORT_MESSAGE {
                    imp.summary.skipped.push(format!(
                        "{}: {} bytes, over the import limit of {}",
                        e.path().display(),
                        meta.len(),
                        crate::admin::MAX_IMPORT_MESSAGE
                    ));
                    continue;
                }
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                let (unique, info) = match name.split_once(":2,").or(name.split_once("!2,")) {
                    Some((u, i)) => (u.to_owned(), i.to_owned()),
                    None => (name.clone(), String::new()),
                };
                let info = if sub == "new" { String::new() } else { info };
                files.push((mtime, unique, e.path(), info));
            }
        }
        // Oldest first, so that UIDs follow the dates.
        files.sort();
        for (mtime, unique, path, info) in files {
            let raw = match read_message(&path) {
                Ok(r) => r,
                // Moved by a client since the listing (Maildir allows it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    imp.summary
                        .skipped
                        .push(format!("{}: gone while importing", path.display()));
                    continue;
                }
                Err(e) => return Err(TransferError::io(&path, e)),
            };
            let item = Item {
                raw,
                keywords: flags::from_maildir(&info, &keywords),
                received_at: if mtime > 0 {
                    mtime
                } else {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64)
                },
                key: key_of(&[b"maildir", target.as_bytes(), unique.as_bytes()]),
                facts: None,
            };
            imp.push(&mailbox, item).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_go_both_ways() {
        assert_eq!(folder_dir("INBOX"), None);
        assert_eq!(folder_dir("Work/2026").as_deref(), Some(".Work.2026"));
        assert_eq!(folder_dir("Entwürfe").as_deref(), Some(".Entw&APw-rfe"));
        assert_eq!(folder_dir("v1.2").as_deref(), Some(".v1&AC4-2"));
        for p in ["Work/2026", "Entwürfe", "v1.2/a&b"] {
            assert_eq!(folder_path(&folder_dir(p).unwrap()).as_deref(), Some(p));
        }
        assert_eq!(folder_path("."), None);
        assert_eq!(folder_path(".."), None);
        assert_eq!(folder_path("cur"), None);
        assert_eq!(folder_path(".a..b"), None);
    }
}

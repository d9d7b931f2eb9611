//! Successor handover (issue 19): a member that closes streams every
//! account to the successor its label names, over the mesh, once the
//! association has recorded the handover (`caliopen-ca handover`; the
//! directory then says `handed_over_to`).
//!
//! The unit is the account archive of `caliopen account export` (CRC per
//! record, a digest of the whole account at the end). The closing side
//! writes it into its spool (`DATA/handover/out/`), then sends it in
//! pieces ([`HandoverChunk`]); the successor appends each piece to its copy
//! (`DATA/handover/in/<member>/`) with an `fdatasync`, and always answers
//! how much it holds, so that a run cut short goes on from there. With
//! the last piece the successor imports the archive in the background —
//! the account keeps its password hash, mailboxes, keywords, dates and
//! transport facts — and compares what it stored with the archive's
//! digest; the closing side asks until the import is done and compares
//! that digest with its own. An account whose name exists at the
//! successor (not made by this handover) is refused, never merged.
//!
//! `caliopen handover` makes two passes: the first while the instance
//! still delivers, then it forwards everything for its domains to the
//! successor (mesh inbox and MX alike), then a second pass carries what
//! arrived in between (the import keys make it copy only that).

use crate::admin::{OpError, Runner};
use crate::delivery::MailService;
use crate::transfer::account::End;
use caliopen_federation::HandlerError;
use caliopen_proto::pb::mesh::{HandoverChunk, HandoverReply};
use serde_json::json;
use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes per piece sent.
pub const CHUNK: usize = 1 << 20;
/// Largest piece taken.
pub const MAX_CHUNK: usize = 8 << 20;
/// Largest archive taken (an account far above any quota is not one).
pub const MAX_ARCHIVE: u64 = 1 << 40;
/// How long the closing side waits for the successor's import of one
/// account before it gives up (the archive stays; a run again resumes).
pub const IMPORT_WAIT: Duration = Duration::from_secs(6 * 3600);
/// The file that says this instance forwards to its successor.
const FORWARDING: &str = "forwarding";

/// True for a spool file name part: letters, digits, `.`, `-`, `_`.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn spool(svc: &MailService) -> Result<PathBuf, OpError> {
    svc.spool_dir()
        .map(Path::to_path_buf)
        .ok_or_else(|| OpError::Invalid("a handover runs in the daemon (start it)".into()))
}

fn io(what: &Path, e: std::io::Error) -> OpError {
    OpError::Internal(format!("{}: {e}", what.display()))
}

/// Writes `data` to `path` durably, for the owner only.
fn write_durable(path: &Path, data: &[u8]) -> Result<(), OpError> {
    crate::files::write_private(path, data).map_err(|e| OpError::Internal(e.to_string()))
}

/// Loads the forwarding state the last `caliopen handover` left.
pub fn load_forwarding(svc: &MailService) {
    if let Some(dir) = svc.spool_dir() {
        if let Ok(s) = std::fs::read_to_string(dir.join(FORWARDING)) {
            let s = s.trim().to_owned();
            if !s.is_empty() {
                tracing::warn!(successor = %s, "handed over: mail for the served domains is forwarded");
                svc.set_forwarding(Some(s));
            }
        }
    }
}

/// What the handover stands at here: the successor the directory names,
/// and whether mail is forwarded to it.
pub fn status(svc: &MailService) -> serde_json::Value {
    json!({
        "labelled": svc.mesh().is_some(),
        "successor": svc.mesh().and_then(|m| m.successor()),
        "forwarding": svc.forwarding(),
    })
}

fn successor_of(svc: &MailService) -> Result<String, OpError> {
    let mesh = svc.mesh().ok_or_else(|| {
        OpError::Invalid("this instance holds no label: a handover goes over the mesh".into())
    })?;
    mesh.successor().ok_or_else(|| {
        OpError::Invalid(
            "the directory records no handover for this member: the association runs \
             `caliopen-ca handover --from MEMBER --to SUCCESSOR` first"
                .into(),
        )
    })
}

/// Forwards everything for the served domains to the successor (durably
/// recorded), or stops forwarding.
pub fn set_forwarding(svc: &MailService, on: bool) -> Result<serde_json::Value, OpError> {
    let dir = spool(svc)?;
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let path = dir.join(FORWARDING);
    if on {
        let succ = successor_of(svc)?;
        write_durable(&path, succ.as_bytes())?;
        svc.set_forwarding(Some(succ.clone()));
        tracing::warn!(successor = %succ, "forwarding every served domain to the successor");
    } else {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path, e)),
        }
        svc.set_forwarding(None);
    }
    Ok(status(svc))
}

/// Sends one account to the successor (pass `pass`: one archive each) and
/// compares what the successor stored with the archive.
pub async fn send_account(
    svc: &MailService,
    user: &str,
    pass: u32,
) -> Result<serde_json::Value, OpError> {
    let succ = successor_of(svc)?;
    let user = crate::admin::user_of(svc, user)?;
    let mut out = send_archive(svc, &user, &succ, &format!("{user}.{pass}"), "").await?;
    out["pass"] = json!(pass);
    Ok(out)
}

/// Exports `user` into the spool as `archive` (once), sends it to
/// `member` piece by piece (with `code` for an account move), waits for
/// its import there and compares what it stored with the archive.
async fn send_archive(
    svc: &MailService,
    user: &str,
    member: &str,
    archive: &str,
    code: &str,
) -> Result<serde_json::Value, OpError> {
    let succ = member.to_owned();
    let user = user.to_owned();
    let archive = archive.to_owned();
    let mesh = svc
        .mesh()
        .cloned()
        .ok_or_else(|| OpError::Invalid("no label".into()))?;
    let out = spool(svc)?.join("out");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let path = out.join(format!("{archive}.caliopen"));
    let end_path = out.join(format!("{archive}.end"));
    // The archive of this pass is made once (a run cut short sends the
    // same bytes again, so the successor's copy can resume).
    let end: End = match std::fs::read(&end_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|_| path.exists())
    {
        Some(e) => e,
        None => {
            let tmp = out.join(format!("{archive}.partial"));
            let _ = std::fs::remove_file(&tmp);
            let runner = Runner::Local(svc.clone());
            let (_, end) = crate::transfer::account::export(
                &runner,
                &user,
                &tmp,
                crate::transfer::Progress::new("handover", true),
            )
            .await
            .map_err(|e| OpError::Internal(format!("exporting {user}: {e}")))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
            let b = serde_json::to_vec(&end).map_err(|e| OpError::Internal(e.to_string()))?;
            write_durable(&end_path, &b)?;
            end
        }
    };
    // The archive's name at the receiver: this content's own (a new
    // export, with other content, is a new archive there).
    let archive = format!("{archive}.{}", end.digest.get(..16).unwrap_or(&end.digest));
    let total = std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();
    let mut f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
    let started = std::time::Instant::now();
    let mut offset = 0u64;
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let send = |c: HandoverChunk| {
        let mesh = mesh.clone();
        let succ = succ.clone();
        async move {
            // A lost answer or a dropped connection: the same piece again.
            let mut last = String::new();
            for attempt in 0..5u32 {
                match mesh.handover_chunk(&succ, c.clone()).await {
                    Ok(r) => return Ok(r),
                    Err((false, e)) => {
                        return Err(OpError::Invalid(format!("{succ} refused: {e}")))
                    }
                    Err((true, e)) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(OpError::Internal(format!("sending to {succ}: {last}")))
        }
    };
    let reply = loop {
        while offset < total {
            f.seek(std::io::SeekFrom::Start(offset))
                .map_err(|e| io(&path, e))?;
            let n = f.read(&mut buf).map_err(|e| io(&path, e))?;
            if n == 0 {
                return Err(OpError::Internal(format!(
                    "{}: shorter than its length",
                    path.display()
                )));
            }
            let r = send(HandoverChunk {
                account: user.clone(),
                archive: archive.clone(),
                offset,
                data: buf[..n].to_vec(),
                last: false,
                total,
                code: code.to_owned(),
            })
            .await?;
            if r.received > total {
                return Err(OpError::Internal(format!(
                    "{succ} holds {} bytes of a {total}-byte archive",
                    r.received
                )));
            }
            if r.received > offset {
                sent += r.received - offset;
            }
            offset = r.received;
        }
        // The last piece: the successor imports, and is asked until done.
        let r = send(HandoverChunk {
            account: user.clone(),
            archive: archive.clone(),
            offset: total,
            data: Vec::new(),
            last: true,
            total,
            code: code.to_owned(),
        })
        .await?;
        if !r.error.is_empty() {
            return Err(OpError::Invalid(format!(
                "{succ} could not import {user}: {}",
                r.error
            )));
        }
        if r.imported {
            break r;
        }
        if r.received < total {
            // Its copy is shorter than it said before (lost): send the rest.
            offset = r.received;
            continue;
        }
        if started.elapsed() > IMPORT_WAIT {
            return Err(OpError::Internal(format!(
                "{succ} is still importing {user}: run the handover again later"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stored = End {
        messages: reply.messages,
        bytes: reply.bytes,
        digest: reply.digest,
    };
    let same = stored == end;
    // Every message of the archive is there, but the account differs: it
    // changed since an earlier pass (keywords, folders, deletions are not
    // carried again; the messages are).
    let complete = same || reply.complete;
    tracing::info!(account = %user, to = %succ, archive, messages = end.messages,
        same, complete, "account sent");
    if complete {
        // Done: the next run makes a fresh archive.
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&end_path);
    }
    Ok(json!({
        "account": user,
        "successor": succ,
        "archive": end,
        "stored": stored,
        "same": same,
        "complete": complete,
        "sent_bytes": sent,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// What `caliopen account accept` records: a move of `account` from
/// `member`, under the name `as_name`, with a code (its SHA-256) valid
/// until `expires`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Acceptance {
    as_name: String,
    code_sha256: String,
    expires: i64,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

fn acceptance_path(spool: &Path, member: &str, account: &str) -> PathBuf {
    spool
        .join("accept")
        .join(member)
        .join(format!("{account}.json"))
}

/// The account name a move of `account` from `member` is accepted as,
/// when `code` is the one given and has not expired.
fn accepted(spool: &Path, member: &str, account: &str, code: &str) -> Result<String, String> {
    let path = acceptance_path(spool, member, account);
    let a: Acceptance = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("no move of {account} from {member} was accepted here"))?;
    if sha256_hex(code.trim().as_bytes()) != a.code_sha256 {
        return Err("the move code is not the one given".into());
    }
    if crate::store::now_unix() > a.expires {
        return Err("the move code has expired: accept the move again".into());
    }
    Ok(a.as_name)
}

/// Accepts the move of `account` from `member` here as `as_name`: a new
/// one-time code, valid for `hours`, to give to the user's old operator.
pub fn accept_move(
    svc: &MailService,
    member: &str,
    account: &str,
    as_name: &str,
    hours: u32,
) -> Result<serde_json::Value, OpError> {
    use aws_lc_rs::rand::SecureRandom;
    let account = account.to_ascii_lowercase();
    let as_name = as_name.to_ascii_lowercase();
    if !crate::admin::valid_localpart(&account) || !crate::admin::valid_localpart(&as_name) {
        return Err(OpError::Invalid("invalid account name".into()));
    }
    if !safe_name(member) {
        return Err(OpError::Invalid(format!("{member:?} is not a member id")));
    }
    if svc.store().user_exists(&as_name) {
        return Err(OpError::Invalid(format!(
            "user {as_name:?} exists here: choose another name with --as"
        )));
    }
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| OpError::Internal("no randomness".into()))?;
    let code = hex::encode(raw);
    let expires = crate::store::now_unix() + i64::from(hours.clamp(1, 24 * 30)) * 3600;
    let path = acceptance_path(&spool(svc)?, member, &account);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let a = Acceptance {
        as_name: as_name.clone(),
        code_sha256: sha256_hex(code.as_bytes()),
        expires,
    };
    let b = serde_json::to_vec(&a).map_err(|e| OpError::Internal(e.to_string()))?;
    write_durable(&path, &b)?;
    Ok(
        json!({"member": member, "account": account, "as": as_name, "code": code, "expires": expires}),
    )
}

/// A user's move recorded at the member they left.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Moved {
    to: String,
    until: i64,
}

/// Loads the moves recorded here (the new addresses given by `551`).
pub fn load_moved(svc: &MailService) {
    let Some(dir) = svc.spool_dir().map(|d| d.join("moved")) else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(user) = name.strip_suffix(".json") else {
            continue;
        };
        if let Some(m) = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Moved>(&b).ok())
        {
            svc.set_moved(user, &m.to, m.until);
        }
    }
}

/// Moves `user` to `to` (an address at another labelled member) with the
/// code its operator gave: the account is sent and verified there, then
/// this instance refuses mail for it with `551 5.1.6` and the new address
/// for `redirect_days`, and as an unknown user after.
pub async fn move_account(
    svc: &MailService,
    user: &str,
    to: &str,
    code: &str,
    redirect_days: u32,
) -> Result<serde_json::Value, OpError> {
    let user = crate::admin::user_of(svc, user)?;
    let (local, domain) = crate::delivery::split_address(to)
        .ok_or_else(|| OpError::Invalid(format!("{to:?} is not an address")))?;
    let mesh = svc.mesh().cloned().ok_or_else(|| {
        OpError::Invalid("this instance holds no label: a move goes over the mesh".into())
    })?;
    let member = mesh.member_for(&domain).ok_or_else(|| {
        OpError::Invalid(format!(
            "{domain} is not served by another labelled member (export the account instead)"
        ))
    })?;
    if code.trim().is_empty() {
        return Err(OpError::Invalid(
            "the receiving operator gives a code with `caliopen account accept`".into(),
        ));
    }
    let mut out = send_archive(svc, &user, &member, &format!("move-{user}"), code.trim()).await?;
    if out["complete"] != true {
        return Err(OpError::Internal(format!(
            "{member} stored something else than the archive: {out}"
        )));
    }
    let to = format!("{local}@{domain}");
    let until = crate::store::now_unix() + i64::from(redirect_days) * 86_400;
    let dir = spool(svc)?.join("moved");
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let path = dir.join(format!("{user}.json"));
    let b = serde_json::to_vec(&Moved {
        to: to.clone(),
        until,
    })
    .map_err(|e| OpError::Internal(e.to_string()))?;
    write_durable(&path, &b)?;
    svc.set_moved(&user, &to, until);
    tracing::warn!(account = %user, to = %to, member, "account moved");
    // Contact books across the mesh follow (the notice goes over each
    // member's authenticated connection; they check it against the directory).
    let mut notified = 0;
    for d in svc.domains() {
        notified = notified.max(mesh.notify_move(&format!("{user}@{d}"), &to).await);
    }
    out["notified_members"] = json!(notified);
    out["to"] = json!(to);
    out["redirect_until"] = json!(until);
    Ok(out)
}

/// The successor's side: the archives of its predecessors, appended piece
/// by piece and imported once whole.
#[derive(Debug)]
pub struct Receiver {
    svc: MailService,
    running: Mutex<HashSet<PathBuf>>,
    writing: Mutex<()>,
}

fn refused(m: impl Into<String>) -> HandlerError {
    HandlerError::Malformed(m.into())
}

fn unavailable(p: &Path, e: std::io::Error) -> HandlerError {
    tracing::error!(file = %p.display(), error = %e, "handover spool");
    HandlerError::Unavailable("the successor's spool failed".into())
}

impl Receiver {
    /// A receiver storing into `svc`.
    pub fn new(svc: MailService) -> Arc<Self> {
        Arc::new(Self {
            svc,
            running: Mutex::new(HashSet::new()),
            writing: Mutex::new(()),
        })
    }

    /// Takes one piece from `member` (the directory says it handed over
    /// to this member; checked by the mesh node before).
    pub async fn chunk(
        self: &Arc<Self>,
        member: &str,
        c: HandoverChunk,
    ) -> Result<HandoverReply, HandlerError> {
        if !crate::admin::valid_localpart(&c.account) {
            return Err(refused(format!("{:?} is not an account name", c.account)));
        }
        if !safe_name(&c.archive) || !safe_name(member) {
            return Err(refused("bad archive or member name"));
        }
        if c.data.len() > MAX_CHUNK {
            return Err(refused(format!("a piece is at most {MAX_CHUNK} bytes")));
        }
        if c.total > MAX_ARCHIVE {
            return Err(refused(format!(
                "an archive is at most {MAX_ARCHIVE} bytes"
            )));
        }
        let Some(spool) = self.svc.spool_dir() else {
            return Err(HandlerError::Unavailable("no spool".into()));
        };
        let dir = spool.join("in").join(member);
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&dir, e))?;
        let path = dir.join(format!("{}.caliopen", c.archive));
        let done = dir.join(format!("{}.done", c.archive));
        let failed = dir.join(format!("{}.failed", c.archive));
        // An archive imported before (the sender asks again after a lost
        // answer, or after a restart here): what was recorded.
        if let Ok(b) = std::fs::read(&done) {
            if let Ok(d) = serde_json::from_slice::<DoneRecord>(&b) {
                return Ok(HandoverReply {
                    received: c.total,
                    imported: true,
                    messages: d.end.messages,
                    bytes: d.end.bytes,
                    digest: d.end.digest,
                    error: String::new(),
                    complete: d.complete,
                });
            }
        }
        // A move: the account under the name its operator accepted it as.
        let target = if c.code.is_empty() {
            c.account.clone()
        } else {
            accepted(spool, member, &c.account, &c.code).map_err(|why| {
                tracing::warn!(member, account = %c.account, why, "account move refused");
                HandlerError::Refused(why)
            })?
        };
        let reply = |received, error: String| HandoverReply {
            received,
            error,
            ..Default::default()
        };
        let len = {
            // One writer at a time: a piece sent again while the first
            // send is still being written must not be appended twice.
            let _w = self
                .writing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut len = std::fs::metadata(&path).map_or(0, |m| m.len());
            if !c.last && c.offset == len && len + c.data.len() as u64 <= c.total {
                // Only where the copy ends; anything else is answered with
                // where it ends, for the sender to go on from there.
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| unavailable(&path, e))?;
                f.write_all(&c.data).map_err(|e| unavailable(&path, e))?;
                f.sync_data().map_err(|e| unavailable(&path, e))?;
                len += c.data.len() as u64;
            }
            len
        };
        if !c.last || len != c.total {
            return Ok(reply(len, String::new()));
        }
        if let Ok(why) = std::fs::read_to_string(&failed) {
            // Said once; the next request tries the import again (the
            // operator may have fixed the cause).
            let _ = std::fs::remove_file(&failed);
            return Ok(reply(len, why));
        }
        let started = {
            let mut running = self
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            running.insert(path.clone())
        };
        if started {
            let me = self.clone();
            let account = target;
            let member = member.to_owned();
            let code = c.code.clone();
            let from = c.account.clone();
            let spool = spool.to_path_buf();
            tokio::spawn(async move {
                // A handover brings the aliases of the domains handed over;
                // a move brings none (they stay the old member's).
                let alias_domains = if code.is_empty() {
                    me.svc
                        .mesh()
                        .map(|m| m.domains_of(&member))
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let r = me.import(&member, &account, &path, &alias_domains).await;
                let (file, data) = match r {
                    Ok(d) => {
                        if !code.is_empty() {
                            // The code is spent.
                            let _ = std::fs::remove_file(acceptance_path(&spool, &member, &from));
                        }
                        (done, serde_json::to_vec(&d).unwrap_or_default())
                    }
                    Err(why) => {
                        tracing::warn!(member, account, error = %why, "handover import failed");
                        (failed, why.into_bytes())
                    }
                };
                if let Err(e) = write_durable(&file, &data) {
                    tracing::error!(file = %file.display(), error = %e, "handover spool");
                }
                me.running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&path);
            });
        }
        Ok(reply(len, String::new()))
    }

    /// Imports one whole archive: the account as stored, and whether every
    /// message of the archive is there when the account differs from it.
    async fn import(
        &self,
        member: &str,
        account: &str,
        path: &Path,
        alias_domains: &[String],
    ) -> Result<DoneRecord, String> {
        let dir = path.parent().unwrap_or(Path::new("."));
        // Made by this handover (an earlier pass, or a run cut short):
        // resumed; else an account of that name here is someone else's.
        let mine = dir.join(format!("{account}.account"));
        let resume = mine.exists();
        if !resume {
            if self.svc.store().user_exists(account) {
                return Err(format!(
                    "an account named {account} exists here already (not from {member}); \
                     it is left as it is"
                ));
            }
            write_durable(&mine, member.as_bytes()).map_err(|e| e.to_string())?;
        }
        let runner = Runner::Local(self.svc.clone());
        let r = crate::transfer::account::import(
            &runner,
            path,
            Some(account),
            resume,
            Some(alias_domains),
            crate::transfer::Progress::new("handover", true),
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(
            member,
            account,
            messages = r.summary.messages,
            duplicates = r.summary.duplicates,
            "handover archive imported"
        );
        let all_there = r.summary.skipped.is_empty()
            && r.summary.messages + r.summary.duplicates == r.archive.messages;
        if r.stored != r.archive && !all_there {
            return Err(format!(
                "stored {} messages (digest {}), the archive holds {} (digest {})",
                r.stored.messages, r.stored.digest, r.archive.messages, r.archive.digest
            ));
        }
        Ok(DoneRecord {
            complete: all_there,
            end: r.stored,
        })
    }
}

/// What an import of an archive left (`<archive>.done`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DoneRecord {
    #[serde(flatten)]
    end: End,
    /// Every message of the archive is stored.
    #[serde(default)]
    complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::{Transport, Via};
    use crate::store::Store;
    use crate::test_util::runtime;

    /// An archive of alice's account (40 messages) at an instance of its own.
    async fn archive(dir: &Path) -> (Vec<u8>, End) {
        let store = Store::open(&dir.join("src-db")).expect("store");
        let svc = MailService::new(store.clone(), vec!["old.test".into()]);
        let hash = crate::login::hash_password("a long password").expect("hash");
        store.put_user("alice", &hash).await.expect("user");
        for i in 0..40 {
            let m = format!(
                "From: x@ext.test\r\nSubject: m{i}\r\n\r\n{}\r\n",
                "y".repeat(i * 500)
            );
            svc.accept(
                "x@ext.test",
                &["alice@old.test".to_owned()],
                m.as_bytes(),
                Transport::default(),
                Via::Smtp,
            )
            .await
            .expect("accept");
        }
        let path = dir.join("alice.caliopen");
        let (_, end) = crate::transfer::account::export(
            &Runner::Local(svc),
            "alice",
            &path,
            crate::transfer::Progress::new("t", true),
        )
        .await
        .expect("export");
        (std::fs::read(&path).expect("read"), end)
    }

    fn piece(archive: &str, offset: u64, data: &[u8], last: bool, total: u64) -> HandoverChunk {
        HandoverChunk {
            account: "alice".into(),
            archive: archive.into(),
            offset,
            data: data.to_vec(),
            last,
            total,
            code: String::new(),
        }
    }

    async fn until_imported(r: &Arc<Receiver>, archive: &str, total: u64) -> HandoverReply {
        for _ in 0..500 {
            let rep = r
                .chunk("old", piece(archive, total, &[], true, total))
                .await
                .expect("last");
            if rep.imported || !rep.error.is_empty() {
                return rep;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not imported");
    }

    #[test]
    fn pieces_out_of_place_are_not_written_and_the_import_is_verified() {
        let dir = tempfile::tempdir().expect("tmp");
        runtime().block_on(async {
            let (bytes, end) = archive(dir.path()).await;
            let total = bytes.len() as u64;
            let store = Store::open(&dir.path().join("dst-db")).expect("store");
            let svc = MailService::new(store.clone(), vec!["succ.test".into(), "old.test".into()]);
            svc.set_spool_dir(dir.path().join("spool"));
            let r = Receiver::new(svc.clone());
            let step = (bytes.len() / 5).max(1);
            let mut at = 0u64;
            // The first piece, then one ahead of the copy, one behind it
            // (a resend after a lost answer), one beyond the total: each
            // answered with where the copy ends, none written.
            let rep = r
                .chunk("old", piece("alice.1", 0, &bytes[..step], false, total))
                .await
                .expect("p");
            assert_eq!(rep.received, step as u64);
            at += step as u64;
            for (off, data) in [
                (at + 10, &bytes[at as usize..]),
                (0, &bytes[..step]),
                (at, &[0u8; 4][..]),
            ] {
                let t = if data.len() == 4 { at + 2 } else { total };
                let rep = r
                    .chunk("old", piece("alice.1", off, data, false, t))
                    .await
                    .expect("p");
                assert_eq!(rep.received, at, "offset {off}");
            }
            // Not whole yet: the last piece only says where the copy ends.
            let rep = r
                .chunk("old", piece("alice.1", total, &[], true, total))
                .await
                .expect("p");
            assert_eq!((rep.received, rep.imported), (at, false));
            while at < total {
                let end_at = (at as usize + step).min(bytes.len());
                let rep = r
                    .chunk(
                        "old",
                        piece("alice.1", at, &bytes[at as usize..end_at], false, total),
                    )
                    .await
                    .expect("p");
                at = rep.received;
            }
            let rep = until_imported(&r, "alice.1", total).await;
            assert!(rep.imported, "{rep:?}");
            assert_eq!(
                (rep.messages, rep.bytes, rep.digest.clone()),
                (end.messages, end.bytes, end.digest.clone())
            );
            assert_eq!(store.quota("alice").expect("quota").used.messages, 40);
            // After a restart the answer comes from what was recorded.
            let again = Receiver::new(svc.clone());
            let rep = again
                .chunk("old", piece("alice.1", total, &[], true, total))
                .await
                .expect("p");
            assert!(rep.imported && rep.digest == end.digest);

            // A damaged archive: refused by the import, said, kept apart.
            let mut bad = bytes.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 1;
            let rep = r
                .chunk("old", piece("alice.2", 0, &bad, false, total))
                .await
                .expect("p");
            assert_eq!(rep.received, total);
            let rep = until_imported(&r, "alice.2", total).await;
            assert!(!rep.imported && rep.error.contains("damaged"), "{rep:?}");
            // Bad names never reach the file system.
            let mut p = piece("../x", 0, b"x", false, 1);
            assert!(r.chunk("old", p.clone()).await.is_err());
            p.archive = "ok".into();
            p.account = "../root".into();
            assert!(r.chunk("old", p).await.is_err());
        });
    }

    #[test]
    fn spool_names_stay_in_their_directory() {
        assert!(safe_name("alice.1"));
        assert!(safe_name("member-a_2"));
        for bad in ["", "..", ".hidden", "a/b", "a\0", &"x".repeat(97)] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }
}

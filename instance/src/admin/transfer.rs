//! The operations under `caliopen mail export` and `mail import`: read an
//! account's mailboxes and bytes in batches, store a batch of messages
//! idempotently, and keep an IMAP import's marks. The command-line tool
//! does the file and network work ([`crate::transfer`]) and reaches the
//! store only through these, run by the daemon or on the database.

use super::ops::{find_mailbox, user_of, OpError, OpOutput};
use crate::delivery::MailService;
use crate::mail::{Delivery, MessageMeta, Role, Transport, Via};
use crate::store::ImportMark;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Most messages in one `mail_fetch` or `mail_append`.
pub const MAX_BATCH_MESSAGES: usize = 1024;
/// Most bytes in one `mail_fetch` answer or `mail_append` input (a single
/// message larger than this still goes alone, up to [`MAX_IMPORT_MESSAGE`]).
pub const MAX_BATCH_BYTES: u64 = 16 << 20;
/// The largest message an import takes.
pub const MAX_IMPORT_MESSAGE: u64 = 64 << 20;

/// One message of a `mail_append`; its bytes are the next `size` bytes of
/// the operation's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendItem {
    /// Its length in the input.
    pub size: u64,
    /// Keywords (IMAP flags or JMAP keywords; the ones not allowed are dropped).
    pub keywords: Vec<String>,
    /// When it was received (Unix seconds).
    pub received_at: i64,
    /// What identifies it at its source (hexadecimal, at most 64 bytes):
    /// an item whose key was stored before for this account is not stored
    /// again, so that a run cut short can be run again.
    pub key: String,
    /// How it travelled, when the source knows (an account archive of a
    /// Caliopen instance): kept as it was, so its privacy index is too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<MessageFacts>,
}

/// The delivery facts of a message, as an account archive carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFacts {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients at the instance it came from.
    pub to: Vec<String>,
    /// How it came.
    pub via: Via,
    /// Transport facts (TLS, authentication verdicts, the mesh member).
    pub transport: Transport,
}

/// The mailboxes of an account.
pub(super) fn mailbox_list(svc: &MailService, user: &str) -> Result<serde_json::Value, OpError> {
    let u = user_of(svc, user)?;
    let boxes = svc.store().mailboxes(&u)?;
    Ok(serde_json::Value::Array(
        boxes
            .iter()
            .map(|b| {
                json!({
                    "id": b.id,
                    "name": b.name,
                    "role": b.role.map(Role::as_str),
                    "total": b.total,
                    "uid_validity": b.uid_validity,
                })
            })
            .collect(),
    ))
}

/// Makes a mailbox and its parents unless it exists (a role name such as
/// `sent` names the role's mailbox).
pub(super) async fn mailbox_ensure(
    svc: &MailService,
    user: &str,
    name: &str,
) -> Result<serde_json::Value, OpError> {
    let u = user_of(svc, user)?;
    if let Ok(b) = find_mailbox(svc, &u, name) {
        return Ok(json!({"id": b.id, "name": b.name, "created": false}));
    }
    let b = svc.store().create_mailbox(&u, name).await?;
    Ok(json!({"id": b.id, "name": name, "created": true}))
}

/// Most messages in one `mail_index` answer (a page).
pub(super) const MAX_INDEX_PAGE: usize = 4096;

/// The messages of one mailbox with a UID above `after_uid`, in UID
/// order, without their bytes: a page of at most [`MAX_INDEX_PAGE`]
/// (`more` says whether others follow).
pub(super) fn mail_index(
    svc: &MailService,
    user: &str,
    mailbox: &str,
    after_uid: u32,
) -> Result<serde_json::Value, OpError> {
    let u = user_of(svc, user)?;
    let mbx = find_mailbox(svc, &u, mailbox)?;
    let store = svc.store();
    let mut out = Vec::new();
    let mut uids = store.uids(&u, mbx.id)?;
    uids.retain(|(uid, _)| *uid > after_uid);
    uids.sort_unstable();
    let more = uids.len() > MAX_INDEX_PAGE;
    uids.truncate(MAX_INDEX_PAGE);
    for (uid, id) in uids {
        // A message removed between the two reads is left out.
        if let Some(m) = store.meta(id)? {
            out.push(json!({
                "id": format!("{id:x}"),
                "uid": uid,
                "keywords": m.keywords,
                "received_at": m.received_at,
                "size": m.size,
                "facts": MessageFacts {
                    from: m.from.clone(),
                    to: m.to.clone(),
                    via: m.via,
                    transport: m.transport.clone(),
                },
            }));
        }
    }
    Ok(json!({
        "mailbox": mbx.name,
        "uid_validity": mbx.uid_validity,
        "messages": out,
        "more": more,
    }))
}

/// The bytes of several messages of an account, one after the other.
pub(super) fn mail_fetch(
    svc: &MailService,
    user: &str,
    ids: &[String],
) -> Result<OpOutput, OpError> {
    let u = user_of(svc, user)?;
    if ids.len() > MAX_BATCH_MESSAGES {
        return Err(OpError::Invalid(format!(
            "at most {MAX_BATCH_MESSAGES} messages per fetch"
        )));
    }
    let store = svc.store();
    let mut raw = Vec::new();
    let mut sizes = Vec::with_capacity(ids.len());
    for id in ids {
        let n = u64::from_str_radix(id.trim(), 16)
            .map_err(|_| OpError::Invalid(format!("{id:?} is not a message id (hexadecimal)")))?;
        let meta = store
            .meta(n)?
            .filter(|m| m.owner == u && !m.placements.is_empty())
            .ok_or_else(|| OpError::NotFound(format!("no message {n:x} for {u}")))?;
        if !raw.is_empty() && (raw.len() as u64).saturating_add(meta.size as u64) > MAX_BATCH_BYTES
        {
            return Err(OpError::Invalid(format!(
                "a fetch answers at most {MAX_BATCH_BYTES} bytes (or one larger message)"
            )));
        }
        let bytes = store
            .raw(n)?
            .ok_or_else(|| OpError::Internal(format!("message {n:x} has no bytes")))?;
        sizes.push(bytes.len());
        raw.extend_from_slice(&bytes);
    }
    Ok(OpOutput {
        json: json!({ "sizes": sizes }),
        raw,
    })
}

/// The idempotence key of an imported message in the store's transaction
/// index: the account (its name and incarnation, so that an account made
/// again after a removal imports everything again) and the source's key,
/// hashed under a label of its own (mesh transaction ids never collide
/// with it).
fn txn_id(user: &str, incarnation: u64, key: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"caliopen import\0");
    ctx.update(user.as_bytes());
    ctx.update(b"\0");
    // Accounts made before incarnations existed (0) keep their keys.
    if incarnation != 0 {
        ctx.update(&incarnation.to_be_bytes());
    }
    ctx.update(key);
    ctx.finish().as_ref().to_vec()
}

/// The keywords of an imported message: normalised, the computed privacy
/// class left out, duplicates removed; with how many were dropped.
fn import_keywords(given: &[String]) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut dropped = 0;
    for k in given {
        if k.to_ascii_lowercase().starts_with("$caliopen") || k.eq_ignore_ascii_case("\\recent") {
            continue;
        }
        match crate::mail::mailbox::normalise_keyword(k) {
            Ok(k) => out.push(k),
            Err(_) => dropped += 1,
        }
    }
    out.sort();
    out.dedup();
    (out, dropped)
}

/// Stores a batch of messages in one mailbox (its bytes are `input`),
/// each at most once per key; over quota, stores what fits and says so.
pub(super) async fn mail_append(
    svc: &MailService,
    user: &str,
    mailbox: &str,
    items: &[AppendItem],
    input: &[u8],
) -> Result<serde_json::Value, OpError> {
    let u = user_of(svc, user)?;
    let mbx = find_mailbox(svc, &u, mailbox)?;
    if items.len() > MAX_BATCH_MESSAGES {
        return Err(OpError::Invalid(format!(
            "at most {MAX_BATCH_MESSAGES} messages per append"
        )));
    }
    let total = items
        .iter()
        .try_fold(0u64, |a, i| a.checked_add(i.size))
        .ok_or_else(|| OpError::Invalid("the item sizes overflow".into()))?;
    if total != input.len() as u64 {
        return Err(OpError::Invalid(format!(
            "the items add up to {total} bytes but {} came",
            input.len()
        )));
    }
    let incarnation = svc.store().incarnation(&u)?;
    let mut rest = input;
    let mut jobs = Vec::with_capacity(items.len());
    let mut dropped = 0;
    for item in items {
        let (raw, tail) = rest.split_at(item.size as usize);
        rest = tail;
        if raw.is_empty() {
            return Err(OpError::Invalid("an empty message".into()));
        }
        if item.size > MAX_IMPORT_MESSAGE {
            return Err(OpError::Invalid(format!(
                "a message of {} bytes is over the import limit of {MAX_IMPORT_MESSAGE}",
                item.size
            )));
        }
        let key = hex::decode(&item.key)
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 64)
            .ok_or_else(|| OpError::Invalid(format!("bad item key {:?}", item.key)))?;
        let (keywords, d) = import_keywords(&item.keywords);
        dropped += d;
        jobs.push((
            raw,
            keywords,
            item.received_at,
            txn_id(&u, incarnation, &key),
            item.facts.clone(),
        ));
    }
    let store = svc.store();
    // Mail the account sent is not counted as received (its counters and
    // contact book take it as its own).
    let received = !matches!(mbx.role, Some(Role::Sent) | Some(Role::Drafts));
    let store_one = |raw: &[u8],
                     keywords: Vec<String>,
                     when: i64,
                     txn: Vec<u8>,
                     facts: Option<MessageFacts>| {
        // How a message from another server travelled is not known: it is
        // taken as plain SMTP without TLS (the lowest technical score),
        // never as better than it may have been. An account archive of a
        // Caliopen instance says how, and is believed: the operator chose
        // to bring it here.
        let facts = facts.unwrap_or_else(|| MessageFacts {
            from: crate::web::view::from_address(raw),
            to: Vec::new(),
            via: Via::Smtp,
            transport: Transport::default(),
        });
        let template = MessageMeta {
            from: facts.from,
            to: facts.to,
            subject: crate::delivery::subject_of(raw),
            received_at: when,
            via: facts.via,
            transport: facts.transport,
            ..Default::default()
        };
        let d = Delivery {
            owner: u.clone(),
            to: template.to.clone(),
            mailbox: mbx.id,
            keywords,
            received,
        };
        let raw = raw.to_vec();
        async move {
            store
                .deliver_once(&template, std::slice::from_ref(&d), &raw, Some(&txn))
                .await
        }
    };
    let mut stored = 0u64;
    let mut duplicates = 0u64;
    let quota = store.quota(&u)?;
    if items.is_empty() || !quota.would_exceed_with(items.len() as u64, total) {
        // Every delivery of the batch goes to the group commit at once.
        let results = futures_util::future::join_all(
            jobs.into_iter()
                .map(|(raw, k, when, txn, facts)| store_one(raw, k, when, txn, facts)),
        )
        .await;
        for r in results {
            let (_, seen) = r?;
            if seen {
                duplicates += 1;
            } else {
                stored += 1;
            }
        }
    } else {
        // Near the quota: one at a time, each checked (messages copied
        // before are not counted twice), up to the first that does not fit.
        for (raw, k, when, txn, facts) in jobs {
            let q = store.quota(&u)?;
            if q.would_exceed(raw.len() as u64) {
                if !store.has_txn(&txn)? {
                    return Err(OpError::Invalid(format!(
                        "over quota: {u} uses {} of {} bytes and {} of {} messages; \
                         {stored} messages of this batch were stored; raise the quota \
                         with `caliopen user quota` and run the import again",
                        q.used.bytes,
                        limit_text(q.limits.bytes),
                        q.used.messages,
                        limit_text(q.limits.messages),
                    )));
                }
                duplicates += 1;
                continue;
            }
            let (_, seen) = store_one(raw, k, when, txn, facts).await?;
            if seen {
                duplicates += 1;
            } else {
                stored += 1;
            }
        }
    }
    Ok(json!({
        "mailbox": mbx.name,
        "stored": stored,
        "duplicates": duplicates,
        "keywords_dropped": dropped,
    }))
}

fn limit_text(n: u64) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

/// The marks of an import source.
pub(super) fn import_marks(
    svc: &MailService,
    user: &str,
    source: &str,
) -> Result<serde_json::Value, OpError> {
    let u = user_of(svc, user)?;
    let marks = svc.store().import_marks(&u, source)?;
    Ok(serde_json::Value::Object(
        marks
            .into_iter()
            .map(|(f, m)| {
                (
                    f,
                    json!({"uid_validity": m.uid_validity, "last_uid": m.last_uid}),
                )
            })
            .collect(),
    ))
}

/// Records an import mark.
pub(super) async fn import_mark(
    svc: &MailService,
    user: &str,
    source: &str,
    folder: &str,
    mark: ImportMark,
) -> Result<serde_json::Value, OpError> {
    let u = user_of(svc, user)?;
    svc.store()
        .set_import_mark(&u, source, folder, mark)
        .await?;
    Ok(json!({"folder": folder, "uid_validity": mark.uid_validity, "last_uid": mark.last_uid}))
}

/// What an account archive carries besides the messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountManifest {
    /// The account's local part where it comes from.
    pub user: String,
    /// The domains of the instance it comes from.
    pub domains: Vec<String>,
    /// Its password hash (PHC string): the user logs in with the same
    /// password where it goes.
    pub password_hash: String,
    /// Its own quota, when it had one (none: the default where it goes).
    pub quota: Option<crate::mail::QuotaLimits>,
    /// Its settings (remote content, language, the privacy level's history).
    pub prefs: crate::mail::prefs::Prefs,
    /// Its mailboxes (names; role mailboxes by their role).
    pub mailboxes: Vec<String>,
    /// The aliases that reach it alone (`local@domain`, `@domain`).
    pub aliases: Vec<String>,
}

/// The account's manifest.
pub(super) fn account_manifest(svc: &MailService, user: &str) -> Result<AccountManifest, OpError> {
    let u = user_of(svc, user)?;
    let store = svc.store();
    let rec = store
        .user(&u)?
        .ok_or_else(|| OpError::NotFound(format!("no user {u:?}")))?;
    let q = store.quota(&u)?;
    let mailboxes = store
        .mailboxes(&u)?
        .into_iter()
        .map(|b| match b.role {
            Some(r) => r.as_str().to_owned(),
            None => b.name,
        })
        .collect();
    let aliases = store
        .aliases()
        .into_iter()
        .filter(|(_, t)| t.len() == 1 && t[0] == u)
        .map(|(a, _)| a)
        .collect();
    Ok(AccountManifest {
        user: u.clone(),
        domains: svc.domains().to_vec(),
        password_hash: rec.password_hash,
        quota: q.overridden.then_some(q.limits),
        prefs: store.prefs(&u)?,
        mailboxes,
        aliases,
    })
}

/// Makes the account of a manifest here (as `user`): the user with its
/// password hash, its own quota, settings and mailboxes. An account that
/// exists is taken only to resume an import into it.
pub(super) async fn account_create(
    svc: &MailService,
    user: &str,
    manifest: &AccountManifest,
    resume: bool,
) -> Result<serde_json::Value, OpError> {
    let u = user.to_ascii_lowercase();
    if !super::valid_localpart(&u) {
        return Err(OpError::Invalid(format!("invalid user name {u:?}")));
    }
    crate::login::hash_within_bounds(&manifest.password_hash)
        .map_err(|e| OpError::Invalid(format!("the archive's password hash: {e}")))?;
    let store = svc.store();
    let exists = store.user_exists(&u);
    if exists && !resume {
        return Err(OpError::Invalid(format!(
            "user {u:?} exists here: give --resume to go on with an import into it that was cut short"
        )));
    }
    // An account made by an import cut short keeps what the first run
    // gave it (the operator may have changed its quota since).
    let mut quota = None;
    if !exists {
        store.put_user(&u, &manifest.password_hash).await?;
        let default = store.quota(&u)?.limits;
        quota = manifest.quota.map(|q| capped_quota(q, default));
        store.set_quota(&u, quota.filter(|q| *q != default)).await?;
        store.set_prefs(&u, &manifest.prefs).await?;
    }
    let mut made = Vec::new();
    for name in &manifest.mailboxes {
        if find_mailbox(svc, &u, name).is_err() {
            store.create_mailbox(&u, name).await?;
            made.push(name.clone());
        }
    }
    Ok(json!({
        "user": u,
        "created": !exists,
        "mailboxes_made": made,
        "quota": quota,
        "quota_asked": manifest.quota,
    }))
}

/// An archive's own quota, never above this instance's default: the
/// operator of the source chose it, not the operator here (0: no limit).
fn capped_quota(
    asked: crate::mail::QuotaLimits,
    default: crate::mail::QuotaLimits,
) -> crate::mail::QuotaLimits {
    let cap = |a: u64, d: u64| match (a, d) {
        (_, 0) => a,
        (0, d) => d,
        (a, d) => a.min(d),
    };
    crate::mail::QuotaLimits {
        bytes: cap(asked.bytes, default.bytes),
        messages: cap(asked.messages, default.messages),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_normalised_and_the_class_left_out() {
        let (k, dropped) = import_keywords(&[
            "\\Seen".into(),
            "$CaliopenMesh".into(),
            "\\Recent".into(),
            "Work".into(),
            "bad(".into(),
            "\\seen".into(),
        ]);
        assert_eq!(k, vec!["$seen".to_owned(), "work".to_owned()]);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn an_archive_quota_stays_under_the_default() {
        use crate::mail::QuotaLimits as Q;
        let d = Q {
            bytes: 1000,
            messages: 0,
        };
        let q = |bytes, messages| Q { bytes, messages };
        assert_eq!(capped_quota(q(0, 0), d), q(1000, 0));
        assert_eq!(capped_quota(q(500, 7), d), q(500, 7));
        assert_eq!(capped_quota(q(5000, 7), d), q(1000, 7));
    }

    #[test]
    fn the_key_is_per_account() {
        assert_ne!(txn_id("alice", 1, b"k"), txn_id("bob", 1, b"k"));
        assert_ne!(txn_id("alice", 1, b"k"), txn_id("alice", 2, b"k"));
        assert_eq!(txn_id("alice", 1, b"k"), txn_id("alice", 1, b"k"));
    }
}

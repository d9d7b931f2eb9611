//! The operations of the command-line tool on users, quotas, aliases and
//! mailboxes: one implementation, run by the daemon when the tool reaches
//! it over the admin socket (`Run`), or by the tool itself on the database
//! when no daemon runs.

use super::{messages_json, valid_localpart};
use crate::delivery::{split_address, MailService};
use crate::mail::address::{alias_key, MAX_ALIAS_TARGETS};
use crate::mail::{Mailbox, QuotaLimits, Role};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Every account, with its quota and message count.
    UserList,
    /// Removes an account and everything it holds.
    UserRemove {
        /// The account.
        localpart: String,
    },
    /// Sets an account's own limits, or gives it the default again.
    UserQuota {
        /// The account.
        localpart: String,
        /// Bytes (0: no limit); unchanged when absent.
        bytes: Option<u64>,
        /// Messages (0: no limit); unchanged when absent.
        messages: Option<u64>,
        /// Back to the instance default.
        default: bool,
    },
    /// Makes or replaces an alias (`local@domain`, or `@domain`: catch-all).
    AliasAdd {
        /// The alias.
        alias: String,
        /// The accounts it reaches (local parts, or their addresses here),
        /// and addresses of other domains it forwards to.
        targets: Vec<String>,
        /// Refuse instead of replacing an alias that exists (an account
        /// import must not take an alias that reaches someone else).
        #[serde(default)]
        only_new: bool,
    },
    /// Every alias.
    AliasList,
    /// Removes an alias.
    AliasRemove {
        /// The alias.
        alias: String,
    },
    /// The messages of one mailbox (the inbox when none is named).
    MailList {
        /// The account.
        user: String,
        /// A mailbox name, or a role (`sent`, `trash`…).
        mailbox: Option<String>,
    },
    /// One message's bytes.
    MailShow {
        /// The account.
        user: String,
        /// The message id (hexadecimal, as `mail list` shows it).
        id: String,
    },
    /// The mailboxes of an account, with their roles and counts.
    MailboxList {
        /// The account.
        user: String,
    },
    /// Makes a mailbox and its parents unless it exists.
    MailboxEnsure {
        /// The account.
        user: String,
        /// The mailbox (a `/`-separated path, or a role).
        name: String,
    },
    /// The messages of a mailbox in UID order, without their bytes.
    MailIndex {
        /// The account.
        user: String,
        /// A mailbox name, or a role.
        mailbox: String,
        /// Only the messages with a higher UID (a page after the last one).
        #[serde(default)]
        after_uid: u32,
    },
    /// The bytes of several messages, one after the other (the answer's
    /// JSON gives their sizes).
    MailFetch {
        /// The account.
        user: String,
        /// Message ids (hexadecimal).
        ids: Vec<String>,
    },
    /// Stores messages into a mailbox, each at most once per key; their
    /// bytes, one after the other, are the operation's input.
    MailAppend {
        /// The account.
        user: String,
        /// A mailbox name, or a role.
        mailbox: String,
        /// The messages, in the order of the input.
        items: Vec<super::transfer::AppendItem>,
    },
    /// What an account archive carries besides the messages.
    AccountManifest {
        /// The account.
        user: String,
    },
    /// Where a successor handover stands (the daemon's view).
    HandoverStatus,
    /// Streams one account to the successor over the mesh (one pass) and
    /// compares what it stored.
    HandoverAccount {
        /// The account.
        user: String,
        /// The pass (1: while still delivering; 2: after forwarding began).
        pass: u32,
    },
    /// Accepts a user's move from another member here (a one-time code).
    MoveAccept {
        /// The member the user leaves.
        from: String,
        /// The account's name there.
        account: String,
        /// Its name here.
        as_name: String,
        /// How long the code is valid.
        hours: u32,
    },
    /// Moves an account to another member (with the code its operator gave).
    MoveAccount {
        /// The account.
        user: String,
        /// The new address.
        to: String,
        /// The code.
        code: String,
        /// How long `551 5.1.6` gives the new address.
        redirect_days: u32,
    },
    /// Forwards everything for the served domains to the successor, or
    /// stops forwarding.
    HandoverForward {
        /// On or off.
        on: bool,
    },
    /// Makes an archived account here (or, with `resume`, takes the one
    /// an interrupted import made).
    AccountCreate {
        /// Its local part here.
        user: String,
        /// The archive's manifest.
        manifest: super::transfer::AccountManifest,
        /// Go on with an account that exists.
        resume: bool,
    },
    /// How far each folder of an IMAP import source has been copied.
    ImportMarks {
        /// The account.
        user: String,
        /// The source (`imap://login@host:port`).
        source: String,
    },
    /// Records how far one folder of an IMAP import source is copied.
    ImportMark {
        /// The account.
        user: String,
        /// The source.
        source: String,
        /// The folder at the source.
        folder: String,
        /// Its `UIDVALIDITY`.
        uid_validity: u32,
        /// The highest UID copied.
        last_uid: u32,
    },
    /// Checks every body against its hash and every index entry against
    /// a body; with `repair`, quarantines and corrects.
    StoreCheck {
        /// Quarantine and correct what does not match (refused by a
        /// running daemon).
        repair: bool,
        /// Set by the daemon: mail comes and goes during the check, so a
        /// problem counts only when a second pass finds it too.
        #[serde(default)]
        live: bool,
    },
    /// Sends the SMTP TLS reports (RFC 8460) of the finished days now
    /// (and of today so far with `include_today`); the daemon only.
    TlsReportSend {
        /// Today's sessions too.
        #[serde(default)]
        include_today: bool,
    },
}

/// What an operation answers.
#[derive(Debug, Clone, Default)]
pub struct OpOutput {
    /// The `--json` output.
    pub json: serde_json::Value,
    /// Bytes, for `mail_show`.
    pub raw: Vec<u8>,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("storage: {0}")]
    Internal(String),
}

impl OpError {
    /// The gRPC status for the admin API.
    pub fn status(&self) -> tonic::Status {
        match self {
            OpError::NotFound(m) => tonic::Status::not_found(m.clone()),
            OpError::Invalid(m) => tonic::Status::invalid_argument(m.clone()),
            OpError::Internal(m) => tonic::Status::internal(m.clone()),
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Model(m) => match m {
                crate::mail::ModelError::NoAccount(_)
                | crate::mail::ModelError::NoMailbox
                | crate::mail::ModelError::NoMessage(_) => OpError::NotFound(m.to_string()),
                other => OpError::Invalid(other.to_string()),
            },
            other => OpError::Internal(other.to_string()),
        }
    }
}

pub(crate) fn user_of(svc: &MailService, l: &str) -> Result<String, OpError> {
    let l = l.to_ascii_lowercase();
    if !svc.store().user_exists(&l) {
        return Err(OpError::NotFound(format!("no user {l:?}")));
    }
    Ok(l)
}

/// The mailbox a name or role names.
pub(super) fn find_mailbox(svc: &MailService, user: &str, name: &str) -> Result<Mailbox, OpError> {
    let boxes = svc.store().mailboxes(user)?;
    let by_role = Role::parse(name).map(Role::id);
    boxes
        .iter()
        .find(|b| b.name == name)
        .or_else(|| boxes.iter().find(|b| Some(b.id) == by_role))
        .or_else(|| {
            name.eq_ignore_ascii_case("inbox")
                .then(|| boxes.iter().find(|b| b.id == Role::Inbox.id()))
                .flatten()
        })
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
            OpError::NotFound(format!(
                "no mailbox {name:?} (there are: {})",
                names.join(", ")
            ))
        })
}

fn quota_json(q: &crate::mail::Quota) -> serde_json::Value {
    json!({
        "used_bytes": q.used.bytes,
        "used_messages": q.used.messages,
        "limit_bytes": q.limits.bytes,
        "limit_messages": q.limits.messages,
        "own_limits": q.overridden,
    })
}

/// Checks an alias: at a served domain, not an account's own address.
fn check_alias(svc: &MailService, alias: &str) -> Result<String, OpError> {
    let key = alias_key(alias).ok_or_else(|| {
        OpError::Invalid(format!(
            "alias {alias:?}: expected local@domain, or @domain for a catch-all"
        ))
    })?;
    let (local, domain) = key.rsplit_once('@').unwrap_or_default();
    if !svc.domains().iter().any(|d| d == domain) {
        return Err(OpError::Invalid(format!(
            "alias {alias:?}: {domain} is not a domain of this instance ({})",
            svc.domains().join(", ")
        )));
    }
    if !local.is_empty() {
        if svc.store().user_exists(local) {
            return Err(OpError::Invalid(format!(
                "alias {alias:?}: {local} is an account; an alias may not hide it"
            )));
        }
        if local.len() > 64 || local.contains(char::is_whitespace) || local.contains('"') {
            return Err(OpError::Invalid(format!("alias {alias:?}: bad local part")));
        }
    }
    Ok(key)
}

/// Runs an operation.
pub async fn execute(svc: &MailService, op: Op) -> Result<OpOutput, OpError> {
    execute_with(svc, op, Vec::new()).await
}

/// Runs an operation that takes bytes (`mail_append`; the others ignore them).
pub async fn execute_with(svc: &MailService, op: Op, input: Vec<u8>) -> Result<OpOutput, OpError> {
    use super::transfer;
    let store = svc.store();
    let json = match op {
        Op::MailboxList { user } => transfer::mailbox_list(svc, &user)?,
        Op::HandoverStatus => crate::handover::status(svc),
        Op::TlsReportSend { include_today } => {
            let r = svc.tls_reporter().ok_or_else(|| {
                OpError::Invalid(
                    "TLS reports are sent by the running daemon, with direct delivery ([dns] enabled, no relay): start `caliopen run`".into(),
                )
            })?;
            let today = crate::tlsrpt::day_of(crate::delivery::now_unix());
            serde_json::to_value(r.run(svc, today, include_today).await)
                .map_err(|e| OpError::Internal(e.to_string()))?
        }
        // Boxed: it runs other operations (export) itself.
        Op::HandoverAccount { user, pass } => {
            Box::pin(crate::handover::send_account(svc, &user, pass)).await?
        }
        Op::HandoverForward { on } => crate::handover::set_forwarding(svc, on)?,
        Op::MoveAccept {
            from,
            account,
            as_name,
            hours,
        } => crate::handover::accept_move(svc, &from, &account, &as_name, hours)?,
        Op::MoveAccount {
            user,
            to,
            code,
            redirect_days,
        } => {
            Box::pin(crate::handover::move_account(
                svc,
                &user,
                &to,
                &code,
                redirect_days,
            ))
            .await?
        }
        Op::MailboxEnsure { user, name } => transfer::mailbox_ensure(svc, &user, &name).await?,
        Op::MailIndex {
            user,
            mailbox,
            after_uid,
        } => transfer::mail_index(svc, &user, &mailbox, after_uid)?,
        Op::MailFetch { user, ids } => return transfer::mail_fetch(svc, &user, &ids),
        Op::MailAppend {
            user,
            mailbox,
            items,
        } => transfer::mail_append(svc, &user, &mailbox, &items, &input).await?,
        Op::ImportMarks { user, source } => transfer::import_marks(svc, &user, &source)?,
        Op::AccountManifest { user } => {
            serde_json::to_value(transfer::account_manifest(svc, &user)?)
                .map_err(|e| OpError::Internal(e.to_string()))?
        }
        Op::AccountCreate {
            user,
            manifest,
            resume,
        } => transfer::account_create(svc, &user, &manifest, resume).await?,
        Op::ImportMark {
            user,
            source,
            folder,
            uid_validity,
            last_uid,
        } => {
            let mark = crate::store::ImportMark {
                uid_validity,
                last_uid,
            };
            transfer::import_mark(svc, &user, &source, &folder, mark).await?
        }
        Op::UserList => {
            let mut out = Vec::new();
            for u in store.users()? {
                let q = store.quota(&u)?;
                out.push(json!({
                    "localpart": u,
                    "address": format!("{u}@{}", svc.primary_domain()),
                    "messages": q.used.messages,
                    "quota": quota_json(&q),
                }));
            }
            serde_json::Value::Array(out)
        }
        Op::UserRemove { localpart } => {
            let l = user_of(svc, &localpart)?;
            let before = store.quota(&l)?;
            store.remove_user(&l).await?;
            tracing::info!(user = %l, messages = before.used.messages, "user removed");
            json!({"removed": l, "messages": before.used.messages, "bytes": before.used.bytes})
        }
        Op::UserQuota {
            localpart,
            bytes,
            messages,
            default,
        } => {
            let l = user_of(svc, &localpart)?;
            let limits = if default {
                if bytes.is_some() || messages.is_some() {
                    return Err(OpError::Invalid(
                        "--default takes no --bytes or --messages".into(),
                    ));
                }
                None
            } else {
                if bytes.is_none() && messages.is_none() {
                    return Err(OpError::Invalid(
                        "give --bytes N, --messages N or --default".into(),
                    ));
                }
                let now = store.quota(&l)?.limits;
                Some(QuotaLimits {
                    bytes: bytes.unwrap_or(now.bytes),
                    messages: messages.unwrap_or(now.messages),
                })
            };
            let q = store.set_quota(&l, limits).await?;
            tracing::info!(user = %l, limits = ?q.limits, own = q.overridden, "quota set");
            json!({"localpart": l, "quota": quota_json(&q)})
        }
        Op::AliasAdd {
            alias,
            targets,
            only_new,
        } => {
            let key = check_alias(svc, &alias)?;

            if targets.is_empty() || targets.len() > MAX_ALIAS_TARGETS {
                return Err(OpError::Invalid(format!(
                    "an alias reaches 1 to {MAX_ALIAS_TARGETS} accounts or addresses"
                )));
            }
            let mut owners: Vec<String> = Vec::new();
            for t in &targets {
                let l = match split_address(t) {
                    Some((l, d)) if svc.domains().contains(&d) => l,
                    // An address elsewhere: mail is forwarded to it, its
                    // envelope sender rewritten (SRS).
                    Some((l, d)) if !l.is_empty() && crate::config::is_dns_name(&d) => {
                        let a = format!("{l}@{d}");
                        if a.len() > 254 || l.len() > 64 || l.contains(['<', '>', ' ', ',']) {
                            return Err(OpError::Invalid(format!("{t:?} is not an address")));
                        }
                        if !owners.contains(&a) {
                            owners.push(a);
                        }
                        continue;
                    }
                    Some(_) => return Err(OpError::Invalid(format!("{t:?} is not an address"))),
                    None if valid_localpart(&t.to_ascii_lowercase()) => t.to_ascii_lowercase(),
                    None => return Err(OpError::Invalid(format!("{t:?} is not an account"))),
                };
                let l = user_of(svc, &l)?;
                if !owners.contains(&l) {
                    owners.push(l);
                }
            }
            // With `only_new`, an alias that is already so (an import run
            // again) is left as it is, and one that reaches others refused.
            let already = match store.alias(&key) {
                Some(t) if only_new && t == owners => true,
                Some(t) if only_new => {
                    return Err(OpError::Invalid(format!(
                        "alias {key} exists here (it reaches {})",
                        t.join(", ")
                    )))
                }
                _ => false,
            };
            if !already {
                store.put_alias(&key, &owners).await?;
            }
            tracing::info!(alias = %key, targets = ?owners, "alias set");
            json!({"alias": key, "targets": owners})
        }
        Op::StoreCheck { repair, live } => {
            let svc = svc.clone();
            let report = tokio::task::spawn_blocking(move || {
                let store = svc.store();
                if !live {
                    return store.check(repair);
                }
                // Mail delivered or deleted between the reads of one pass
                // can look like a problem: only what two passes both
                // find is one.
                let first = store.check(false)?;
                if first.problem_count == 0 {
                    return Ok(first);
                }
                let mut second = store.check(false)?;
                second.problems.retain(|p| first.problems.contains(p));
                second.problem_count = second.problems.len() as u64;
                Ok(second)
            })
            .await
            .map_err(|e| OpError::Internal(format!("the check stopped: {e}")))??;
            serde_json::to_value(&report).map_err(|e| OpError::Internal(e.to_string()))?
        }
        Op::AliasList => serde_json::Value::Array(
            store
                .aliases()
                .into_iter()
                .map(|(a, t)| json!({"alias": a, "targets": t, "catch_all": a.starts_with('@')}))
                .collect(),
        ),
        Op::AliasRemove { alias } => {
            let key = alias_key(&alias).ok_or_else(|| {
                OpError::Invalid(format!("alias {alias:?}: expected local@domain"))
            })?;
            if !store.remove_alias(&key).await? {
                return Err(OpError::NotFound(format!("no alias {key}")));
            }
            tracing::info!(alias = %key, "alias removed");
            json!({"removed": key})
        }
        Op::MailList { user, mailbox } => {
            let u = user_of(svc, &user)?;
            let mbx = find_mailbox(svc, &u, mailbox.as_deref().unwrap_or("inbox"))?;
            let (list, _) = store.list_page(&u, mbx.id, None, usize::MAX)?;
            messages_json(svc, &mbx, &list)
        }
        Op::MailShow { user, id } => {
            let u = user_of(svc, &user)?;
            let n = u64::from_str_radix(id.trim(), 16).map_err(|_| {
                OpError::Invalid(format!("{id:?} is not a message id (hexadecimal)"))
            })?;
            let meta = store
                .meta(n)?
                .filter(|m| m.owner == u && !m.placements.is_empty())
                .ok_or_else(|| OpError::NotFound(format!("no message {n:x} for {u}")))?;
            let raw = store
                .raw(n)?
                .ok_or_else(|| OpError::Internal(format!("message {n:x} has no bytes")))?;
            return Ok(OpOutput {
                json: json!({"id": format!("{n:x}"), "size": meta.size}),
                raw,
            });
        }
    };
    Ok(OpOutput {
        json,
        raw: Vec::new(),
    })
}

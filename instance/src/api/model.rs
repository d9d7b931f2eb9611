//! The client API's calls on the mail model: mailboxes, keywords, moves,
//! changes, threads, quota — thin over the store's operations.

use super::summary;
use crate::delivery::MailService;
use crate::mail::{Mailbox, MailboxId, ModelError};
use crate::store::{KeywordChange, StoreError};
use caliopen_proto::pb::client as pb;
use tonic::Status;

/// Most messages one call may name.
const MAX_IDS: usize = 1_000;

/// Largest `Changes` page.
const CHANGES_MAX: usize = 5_000;

/// Default `Changes` page.
const CHANGES_DEFAULT: usize = 500;

/// The gRPC status of a store error: refusals say why, failures are logged.
pub(super) fn status(e: &StoreError) -> Status {
    match e {
        StoreError::Model(m) => match m {
            ModelError::NoAccount(_) | ModelError::NoMailbox | ModelError::NoMessage(_) => {
                Status::not_found(m.to_string())
            }
            ModelError::NameTaken(_) => Status::already_exists(m.to_string()),
            ModelError::OverQuota => Status::resource_exhausted(m.to_string()),
            ModelError::CannotCalculate(_) => Status::out_of_range(m.to_string()),
            _ => Status::failed_precondition(m.to_string()),
        },
        StoreError::Unsupported(_) => Status::unimplemented(e.to_string()),
        _ => {
            tracing::error!(error = %e, "client API: storage failure");
            Status::internal("storage failure")
        }
    }
}

/// A mailbox for the wire.
pub(super) fn mailbox(b: &Mailbox) -> pb::Mailbox {
    pb::Mailbox {
        id: b.id,
        name: b.name.clone(),
        role: b.role.map(|r| r.as_str().to_owned()).unwrap_or_default(),
        uid_validity: b.uid_validity,
        uid_next: b.uid_next,
        total: b.total,
        unseen: b.unseen,
        modseq: b.modseq,
    }
}

fn ids(v: &[String]) -> Result<Vec<u64>, Status> {
    if v.is_empty() || v.len() > MAX_IDS {
        return Err(Status::invalid_argument(format!(
            "ids: between 1 and {MAX_IDS} message ids"
        )));
    }
    v.iter()
        .map(|s| {
            u64::from_str_radix(s.trim(), 16).map_err(|_| {
                Status::invalid_argument(format!("ids: {s:?} is not a hexadecimal message id"))
            })
        })
        .collect()
}

pub(super) fn list_mailboxes(
    svc: &MailService,
    user: &str,
) -> Result<pb::ListMailboxesResponse, Status> {
    let store = svc.store();
    let boxes = store.mailboxes(user).map_err(|e| status(&e))?;
    Ok(pb::ListMailboxesResponse {
        mailboxes: boxes.iter().map(mailbox).collect(),
        state: store.state(user).map_err(|e| status(&e))?,
    })
}

fn find(svc: &MailService, user: &str, id: MailboxId) -> Result<Mailbox, Status> {
    svc.store()
        .mailboxes(user)
        .map_err(|e| status(&e))?
        .into_iter()
        .find(|b| b.id == id)
        .ok_or_else(|| Status::not_found(format!("no mailbox {id}")))
}

pub(super) async fn rename_mailbox(
    svc: &MailService,
    user: &str,
    id: MailboxId,
    name: &str,
) -> Result<pb::Mailbox, Status> {
    svc.store()
        .rename_mailbox(user, id, name)
        .await
        .map_err(|e| status(&e))?;
    find(svc, user, id).map(|b| mailbox(&b))
}

pub(super) async fn delete_mailbox(
    svc: &MailService,
    user: &str,
    id: MailboxId,
) -> Result<pb::ChangeResponse, Status> {
    let store = svc.store();
    store
        .delete_mailbox(user, id)
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::ChangeResponse {
        state: store.state(user).map_err(|e| status(&e))?,
        placed: Vec::new(),
    })
}

pub(super) async fn set_keywords(
    svc: &MailService,
    user: &str,
    q: pb::SetKeywordsRequest,
) -> Result<pb::ChangeResponse, Status> {
    let ids = ids(&q.ids)?;
    let store = svc.store();
    let mut changes = Vec::new();
    if q.replace {
        if !q.add.is_empty() || !q.remove.is_empty() {
            return Err(Status::invalid_argument(
                "replace: give the keywords in `set`, not in `add` or `remove`",
            ));
        }
        changes.push(KeywordChange::Replace(q.set));
    } else {
        if !q.set.is_empty() {
            return Err(Status::invalid_argument("set: only with replace"));
        }
        if !q.remove.is_empty() {
            changes.push(KeywordChange::Remove(q.remove));
        }
        if !q.add.is_empty() {
            changes.push(KeywordChange::Add(q.add));
        }
    }
    let mut state = store.state(user).map_err(|e| status(&e))?;
    for c in &changes {
        state = store
            .set_keywords(user, &ids, c)
            .await
            .map_err(|e| status(&e))?
            .1;
    }
    Ok(pb::ChangeResponse {
        state,
        placed: Vec::new(),
    })
}

pub(super) async fn relocate(
    svc: &MailService,
    user: &str,
    ids_in: &[String],
    from: Option<MailboxId>,
    to: MailboxId,
) -> Result<pb::ChangeResponse, Status> {
    let ids = ids(ids_in)?;
    let store = svc.store();
    let (placed, state) = match from {
        Some(f) => store.move_messages(user, &ids, f, to).await,
        None => store.copy(user, &ids, to).await,
    }
    .map_err(|e| status(&e))?;
    Ok(pb::ChangeResponse {
        state,
        placed: placed
            .into_iter()
            .map(|(id, uid)| pb::Placed {
                id: format!("{id:x}"),
                placement: Some(pb::Placement { mailbox: to, uid }),
            })
            .collect(),
    })
}

pub(super) async fn remove(
    svc: &MailService,
    user: &str,
    ids_in: &[String],
    from: MailboxId,
) -> Result<pb::ChangeResponse, Status> {
    let ids = ids(ids_in)?;
    let state = svc
        .store()
        .remove_messages(user, &ids, (from != 0).then_some(from))
        .await
        .map_err(|e| status(&e))?;
    Ok(pb::ChangeResponse {
        state,
        placed: Vec::new(),
    })
}

pub(super) fn changes(
    svc: &MailService,
    user: &str,
    since: u64,
    limit: u32,
) -> Result<pb::ChangesResponse, Status> {
    let limit = match limit as usize {
        0 => CHANGES_DEFAULT,
        n if n > CHANGES_MAX => {
            return Err(Status::invalid_argument(format!(
                "limit: at most {CHANGES_MAX}"
            )))
        }
        n => n,
    };
    let c = svc
        .store()
        .changes_since(user, since, limit)
        .map_err(|e| status(&e))?;
    Ok(pb::ChangesResponse {
        created: c.created.iter().map(|m| summary(svc, m)).collect(),
        updated: c.updated.iter().map(|m| summary(svc, m)).collect(),
        removed: c
            .removed
            .iter()
            .map(|t| pb::Removed {
                id: format!("{:x}", t.id),
                removed: t
                    .removed
                    .iter()
                    .map(|p| pb::Placement {
                        mailbox: p.mailbox,
                        uid: p.uid,
                    })
                    .collect(),
                destroyed: t.destroyed,
                modseq: t.modseq,
            })
            .collect(),
        mailboxes_changed: c.mailboxes_changed,
        mailboxes_destroyed: c.mailboxes_destroyed,
        new_state: c.new_state,
        more: c.more,
    })
}

pub(super) fn thread(
    svc: &MailService,
    user: &str,
    thread: &str,
) -> Result<pb::GetThreadResponse, Status> {
    let t = u64::from_str_radix(thread.trim(), 16)
        .map_err(|_| Status::invalid_argument("thread: expected a hexadecimal thread id"))?;
    let list = svc.store().thread(user, t).map_err(|e| status(&e))?;
    if list.is_empty() {
        return Err(Status::not_found(format!("no thread {t:x}")));
    }
    Ok(pb::GetThreadResponse {
        messages: list.iter().map(|m| summary(svc, m)).collect(),
    })
}

pub(super) fn quota(svc: &MailService, user: &str) -> Result<pb::Quota, Status> {
    let q = svc.store().quota(user).map_err(|e| status(&e))?;
    Ok(pb::Quota {
        used_bytes: q.used.bytes,
        used_messages: q.used.messages,
        limit_bytes: q.limits.bytes,
        limit_messages: q.limits.messages,
        own_limits: q.overridden,
    })
}

//! `caliopen privacy USER CONTACT`: a contact's privacy index and public
//! level, and the user's own, with their explanations and hints — asked of
//! the running daemon (which refreshes the public level over the mesh), or
//! read from the database when none runs.

use super::{Report, ReportError};
use crate::admin::with_token;
use crate::config::Config;
use crate::delivery::MailService;
use crate::store::Store;
use caliopen_proto::pb::client as pbc;
use std::fmt::Write as _;

/// A privacy index as JSON (`null` when absent).
pub fn index_json(i: Option<&pbc::PrivacyIndex>) -> serde_json::Value {
    let Some(i) = i else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "version": i.version,
        "total": i.total,
        "technic": i.technic,
        "context": i.context,
        "comportment": i.comportment,
        "explanation": i.explanation.iter().map(|e| serde_json::json!({
            "feature": e.feature,
            "dimension": e.dimension,
            "effect": e.effect,
            "text": e.text,
        })).collect::<Vec<_>>(),
        "hints": i.hints,
    })
}

/// The privacy report of `user` about `contact`: through the running
/// daemon (the contact's public level refreshed), else from the database.
pub async fn privacy(cfg: &Config, user: &str, contact: &str) -> Result<Report, ReportError> {
    use caliopen_proto::pb::client::client_client::ClientClient;
    use caliopen_proto::pb::instance_admin::instance_admin_client::InstanceAdminClient;
    use caliopen_proto::pb::instance_admin::IssueUserTokenRequest;
    let dir = cfg.data_dir();
    let address = format!("{user}@{}", cfg.domains[0]);
    let (c, me, live) = if let Some((ch, admin_token)) = crate::admin::channel(&dir).await {
        let t = InstanceAdminClient::new(ch.clone())
            .issue_user_token(with_token(
                IssueUserTokenRequest {
                    localpart: user.to_owned(),
                },
                &admin_token,
            ))
            .await
            .map_err(ReportError::Daemon)?
            .into_inner()
            .token;
        let mut client = ClientClient::new(ch);
        let c = client
            .get_contact(with_token(
                pbc::GetContactRequest {
                    address: contact.to_owned(),
                    refresh_public_level: true,
                },
                &t,
            ))
            .await
            .map_err(ReportError::Daemon)?
            .into_inner();
        let me = client
            .me(with_token(pbc::MeRequest {}, &t))
            .await
            .map_err(ReportError::Daemon)?
            .into_inner();
        (c, me, true)
    } else {
        let store = Store::open_with(&dir.join("db"), &cfg.store.options())?;
        if !store.user_exists(user) {
            return Err(ReportError::NoUser(user.to_owned()));
        }
        let svc = MailService::new(store, cfg.domains.clone());
        let c = crate::api::get_contact(&svc, user, contact, false)
            .await
            .map_err(ReportError::Daemon)?;
        let me = crate::api::me_view(&svc, user, &address).map_err(ReportError::Daemon)?;
        (c, me, false)
    };
    let json = serde_json::json!({
        "contact": {
            "address": c.address,
            "name": c.name,
            "known": c.known,
            "received": c.received,
            "sent": c.sent,
            "has_key": c.has_key,
            "labelled_member": (!c.labelled_member.is_empty()).then_some(&c.labelled_member),
            "public_level": c.public_level.as_ref().map(|l| serde_json::json!({
                "level": l.level, "member": l.member, "fetched_at": l.fetched_at,
            })),
            "lookup": c.lookup.as_ref().map(|l| serde_json::json!({
                "member": l.member, "found": l.found, "prefix_bits": l.prefix_bits,
                "bucket_size": l.bucket_size, "cached": l.cached,
                "error": (!l.error.is_empty()).then_some(&l.error),
            })),
            "privacy": index_json(c.privacy.as_ref()),
        },
        "me": {
            "address": me.address,
            "public_level": me.public_level,
            "published": me.published,
            "privacy": index_json(me.privacy.as_ref()),
            "hints": me.hints,
            "achievements": me.achievements.iter().map(|a| serde_json::json!({
                "id": a.id, "title": a.title, "earned": a.earned,
            })).collect::<Vec<_>>(),
        },
        "daemon_running": live,
    });
    let mut text = String::new();
    let out = &mut text;
    let show = |out: &mut String, i: Option<&pbc::PrivacyIndex>| {
        let Some(i) = i else { return };
        w!(
            out,
            "  privacy {}/100 (technic {}, context {}, comportment {})",
            i.total,
            i.technic,
            i.context,
            i.comportment
        );
        for e in &i.explanation {
            w!(out, "    {:+4} {:<11} {}", e.effect, e.dimension, e.text);
        }
    };
    w!(
        out,
        "contact {}{}",
        c.address,
        if c.known {
            ""
        } else {
            " (not in the contact book)"
        }
    );
    match (&c.public_level, &c.lookup) {
        (_, Some(l)) if !l.error.is_empty() => {
            w!(out, "  public level: lookup failed: {}", l.error)
        }
        (Some(p), Some(l)) => w!(
            out,
            "  public level {} (asked {} with a {}-bit hash prefix; bucket of {}{})",
            p.level,
            l.member,
            l.prefix_bits,
            l.bucket_size,
            if l.cached { ", cached" } else { "" }
        ),
        (None, Some(l)) => w!(
            out,
            "  no public level: {} publishes none for this address (bucket of {})",
            l.member,
            l.bucket_size
        ),
        (Some(p), None) => w!(
            out,
            "  public level {} (from {}, not refreshed)",
            p.level,
            p.member
        ),
        (None, None) if !live => w!(out, "  public level not asked: the daemon is not running"),
        (None, None) => w!(out, "  public level: not on a labelled member"),
    }
    show(out, c.privacy.as_ref());
    for h in c.privacy.iter().flat_map(|i| i.hints.iter()) {
        w!(out, "  hint: {h}");
    }
    w!(
        out,
        "you ({}): level {}{}",
        me.address,
        me.public_level,
        if me.published {
            ", published"
        } else {
            ", not published"
        }
    );
    show(out, me.privacy.as_ref());
    for h in &me.hints {
        w!(out, "  hint: {h}");
    }
    for a in &me.achievements {
        w!(out, "  [{}] {}", if a.earned { "x" } else { " " }, a.title);
    }
    Ok(Report { json, text })
}

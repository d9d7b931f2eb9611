//! `caliopen log`: the membership log as this member sees it — the
//! checkpoint held and who cosigned it, any split view (with where its
//! proof is kept), and which peers' certificates were shown in the log.

use super::{Report, ReportError};
use crate::config::Config;
use std::fmt::Write as _;

/// The membership-log report of a labelled instance.
pub fn membership_log(cfg: &Config) -> Result<Report, ReportError> {
    let config = cfg.source.clone().unwrap_or_default();
    let Some(assoc) = &cfg.association else {
        return Err(ReportError::Input(format!(
            "{}: no [association]: this instance is not labelled",
            config.display()
        )));
    };
    if assoc.log_key.is_none() {
        return Err(ReportError::Input(
            "no membership-log key is pinned: join with --log-key, or set [association] log_key"
                .into(),
        ));
    }
    let ca_path = cfg.in_data(&assoc.ca);
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| ReportError::Read {
        path: ca_path.clone(),
        source,
    })?;
    let link = caliopen_federation::AssociationLink::new(assoc.url.clone(), ca_pem.clone());
    let mon = crate::mesh::open_log(cfg, &link, None)
        .map_err(ReportError::Other)?
        .ok_or_else(|| ReportError::Input("no membership-log key".into()))?;
    let held = mon.held();
    let split = mon.split_view();
    let certs = mon.certificates();
    // The witnesses the directory held lists, and which cosigned the
    // checkpoint held (verified here).
    let trust = caliopen_federation::TrustStore::new(
        &ca_pem,
        caliopen_federation::default_accepted_charters(),
    )
    .map_err(|e| ReportError::Other(format!("{}: {e}", ca_path.display())))?;
    // Without a saved state no witness is listed: the report says so.
    let _ = trust.load(&cfg.data_dir().join("trust"), crate::store::now_unix());
    let directory = trust.current().directory.clone();
    let (quorum, listed) = directory
        .as_ref()
        .map(|d| (d.directory.witness_quorum, d.directory.witnesses.clone()))
        .unwrap_or_default();
    let held_note = held
        .as_ref()
        .and_then(|h| caliopen_tlog::Note::parse(h.note.as_bytes()).ok());
    let cosigners: Vec<serde_json::Value> = listed
        .iter()
        .filter_map(|w| {
            let k = caliopen_tlog::CosignatureVerifier::parse(&w.vkey).ok()?;
            let ts = k.timestamp(held_note.as_ref()?).ok()??;
            Some(serde_json::json!({"name": w.name, "vkey": w.vkey, "timestamp": ts}))
        })
        .collect();
    let json = serde_json::json!({
        "origin": mon.key().origin(),
        "witnesses": {
            "quorum": quorum,
            "listed": listed.iter().map(|w| serde_json::json!({"name": w.name, "vkey": w.vkey, "url": w.url})).collect::<Vec<_>>(),
            "cosigned_held": cosigners,
        },
        "checkpoint": held.as_ref().map(|h| serde_json::json!({
            "size": h.checkpoint.size,
            "root": hex::encode(h.checkpoint.root),
            "timestamp": h.timestamp,
            "source": h.source.clone().unwrap_or_else(|| "association".into()),
            "verified_at": h.verified_at,
        })),
        "split_view": split.as_ref().map(|s| serde_json::json!({
            "detected_at": s.detected_at,
            "source": s.source.clone().unwrap_or_else(|| "association".into()),
            "first": s.first,
            "second": s.second,
        })),
        "certificates": certs,
    });
    let mut text = String::new();
    let out = &mut text;
    w!(out, "log {}", mon.key().origin());
    match &held {
        Some(h) => w!(
            out,
            "checkpoint: {} entries, root {}, signed at {}, from {}, verified at {}",
            h.checkpoint.size,
            hex::encode(h.checkpoint.root),
            h.timestamp,
            h.source.as_deref().unwrap_or("the association"),
            h.verified_at
        ),
        None => w!(out, "checkpoint: none verified yet"),
    }
    if listed.is_empty() {
        w!(out, "witnesses: none listed in the directory");
    } else {
        w!(
            out,
            "witnesses: {} of {} listed cosigned the checkpoint held (quorum {}){}{}",
            cosigners.len(),
            listed.len(),
            quorum,
            if cosigners.is_empty() { "" } else { ": " },
            cosigners
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match &split {
        Some(s) => w!(
            out,
            "ALARM: split view found at {} (shown by {}): directory updates are suspended; \
             the proof is in {}",
            s.detected_at,
            s.source.as_deref().unwrap_or("the association"),
            cfg.data_dir()
                .join(crate::mesh::LOG_DIR)
                .join("split-view.json")
                .display()
        ),
        None => w!(out, "split view: none"),
    }
    let (ok, bad): (Vec<_>, Vec<_>) = certs.iter().partition(|c| c.included);
    let mut members: Vec<&str> = ok.iter().map(|c| c.member_id.as_str()).collect();
    members.dedup();
    w!(
        out,
        "peers' certificates shown in the log: {}{}",
        ok.len(),
        if members.is_empty() {
            String::new()
        } else {
            format!(" ({})", members.join(", "))
        }
    );
    for c in &bad {
        w!(
            out,
            "ALARM: {}'s certificate {} is not in the log (checked against {} entries at {}): {}",
            c.member_id,
            c.sha256,
            c.tree_size,
            c.at,
            c.detail
        );
    }
    Ok(Report { json, text })
}

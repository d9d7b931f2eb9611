//! The membership log as this member watches it: the monitor opened from
//! the pinned key, and the task that keeps its verdicts on disk and raises
//! the staleness alarm.

use super::LOG_DIR;
use crate::config::Config;
use caliopen_federation::{AssociationLink, HttpsTiles, LogKey, LogMonitor, TrustStore};
use std::sync::Arc;

/// The membership-log monitor, when the configuration pins the log's key
/// (`[association] log_key`); `trust` has its directory updates held while
/// a split view is. Read-only until something is offered to it.
pub fn open_log(
    config: &Config,
    link: &AssociationLink,
    trust: Option<Arc<TrustStore>>,
) -> Result<Option<Arc<LogMonitor>>, String> {
    let Some(p) = config.association.as_ref().and_then(|a| a.log_key.as_ref()) else {
        return Ok(None);
    };
    let p = config.in_data(p);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let key = LogKey::parse(text.trim()).map_err(|e| format!("{}: {e}", p.display()))?;
    let mon = LogMonitor::open(
        &config.data_dir().join(LOG_DIR),
        key,
        Arc::new(HttpsTiles::new(link)),
        trust,
    )
    .map_err(|e| format!("membership log: {e}"))?;
    let min = config
        .association
        .as_ref()
        .map_or(0, |a| a.min_witness_quorum);
    mon.set_min_witness_quorum(min);
    Ok(Some(mon))
}

/// Keeps the verdicts on peers' certificates on disk, and raises the
/// staleness alarm when the checkpoint held stops being re-signed (the
/// association's heartbeats no longer reach this member: it may be cut off,
/// or shown a frozen log).
pub(super) async fn watch_log(mon: Arc<LogMonitor>, token: tokio_util::sync::CancellationToken) {
    let mut stale = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            _ = token.cancelled() => break,
        }
        mon.save_certificates();
        let age = mon.checkpoint_age(crate::delivery::now_unix());
        let now_stale = age.is_none_or(|a| a > caliopen_federation::STALE_AFTER.as_secs());
        if now_stale && !stale {
            match age {
                Some(a) => tracing::error!(age_seconds = a,
                    "ALARM membership log: the checkpoint held has not been re-signed for {a} s \
                     (the association re-signs it every minute); is the association reachable?"),
                None => tracing::error!(
                    "ALARM membership log: no checkpoint verified yet; is the association reachable?"),
            }
        } else if stale && !now_stale {
            tracing::info!("membership log: a fresh checkpoint is held again");
        }
        stale = now_stale;
    }
    mon.save_certificates();
}

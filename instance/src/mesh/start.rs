//! Starting the mesh side of a labelled instance: the trust store and its
//! association follower, certificate renewal, the membership log, the
//! outbox (and the bounces of what it gives up on) and the QUIC node.

use super::log::{open_log, watch_log};
use super::{member_id_of, now_unix, store_handler, MeshRoute};
use crate::config::Config;
use crate::delivery::MailService;
use caliopen_federation::default_accepted_charters;
use caliopen_federation::{
    AssociationLink, IdentityFiles, IdentitySlot, MeshConfig, MeshNode, Outbox, OutboxEvent,
    Renewer, RetryPolicy, TrustStore,
};
use caliopen_proto::pb::mesh::Deliver;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts the mesh side when the configuration names an association.
/// Returns `None` for an unlabelled instance.
pub async fn start(
    config: &Config,
    svc: &MailService,
    queues: &crate::store::Store,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Option<(MeshNode, MeshRoute)>, String> {
    let Some(assoc) = &config.association else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let ca_path = config.in_data(&assoc.ca);
    let cert_path = config.in_data(&assoc.cert);
    let key_path = config.in_data(&assoc.key);
    let ca_pem = read(&ca_path)?;
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let member_id = member_id_of(&cert_pem)?;
    let trust =
        Arc::new(TrustStore::new(&ca_pem, default_accepted_charters()).map_err(|e| e.to_string())?);
    let trust_dir = config.data_dir().join("trust");
    if let Err(e) = trust.load(&trust_dir, now_unix()) {
        tracing::warn!(error = %e, "saved CRL or directory not usable; waiting for the association");
    }
    let identity = IdentitySlot::new();
    identity
        .set_pem(&cert_pem, &key_pem, trust.provider())
        .map_err(|e| e.to_string())?;
    let node = MeshNode::start(
        MeshConfig::new(member_id.clone()),
        config.mesh.listen,
        trust.clone(),
        identity.clone(),
        store_handler(svc.clone()),
    )
    .await
    .map_err(|e| format!("mesh: {e}"))?;
    tracing::info!(member = %member_id, addr = %node.local_addr().map_err(|e| e.to_string())?, "mesh endpoint up");

    let mut link = AssociationLink::new(assoc.url.clone(), ca_pem)
        .with_watch_identity(config.in_data(&assoc.cert), config.in_data(&assoc.key));
    let log = match open_log(config, &link, Some(trust.clone()))? {
        Some(mon) => {
            link = link.with_log(mon.clone());
            node.attach_log(mon.clone());
            tracing::info!(
                size = mon.head().map_or(0, |h| h.0),
                "membership log checked against the pinned key"
            );
            tracker.spawn(watch_log(mon.clone(), token.clone()));
            Some(mon)
        }
        None => None,
    };
    tracker.spawn(link.clone().follow(trust.clone(), token.clone()));
    // Keep the latest CRL and directory on disk for restarts.
    {
        let trust = trust.clone();
        let token = token.clone();
        tracker.spawn(async move {
            let mut rx = trust.subscribe();
            loop {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = token.cancelled() => break,
                }
                if let Err(e) = trust.save(&trust_dir) {
                    tracing::error!(error = %e, "could not save the trust store");
                }
            }
        });
    }
    let renewer = Renewer::new(
        link,
        identity,
        cert_pem,
        key_pem,
        Some(IdentityFiles {
            cert: cert_path,
            key: key_path,
        }),
        trust.provider().clone(),
    );
    tracker.spawn(renewer.clone().run(token.clone()));
    // A predecessor handed over to this member (issue 19): once the
    // operator serves its domains (they are in `domains`), the certificate
    // is renewed with them at once, so that peers take mail from them.
    {
        let trust = trust.clone();
        let token = token.clone();
        let renewer = renewer.clone();
        let me = member_id.clone();
        let served = config.domains.clone();
        tracker.spawn(async move {
            let mut rx = trust.subscribe();
            let mut retry = std::time::Duration::from_secs(30);
            // The directory serial a renewal succeeded for (not asked again
            // for it, even if the association left a domain out).
            let mut done_for = 0u64;
            loop {
                let st = trust.current();
                let have = renewer.domains().unwrap_or_default();
                let inherited: Vec<String> = st
                    .inherited_domains(&me)
                    .into_iter()
                    .filter(|d| served.contains(d) && !have.contains(d))
                    .collect();
                let mut wait = None;
                if !inherited.is_empty() && st.directory_serial() != done_for {
                    match renewer.renew_with(&inherited).await {
                        Ok(()) => {
                            retry = std::time::Duration::from_secs(30);
                            done_for = st.directory_serial();
                            tracing::info!(domains = ?inherited,
                                "certificate renewed with the domains handed over to this member");
                        }
                        Err(e) => {
                            tracing::error!(domains = ?inherited, error = %e, retry_in = ?retry,
                                "ALARM: renewal with the handed-over domains failed");
                            wait = Some(retry);
                            retry = (retry * 2).min(std::time::Duration::from_secs(3600));
                        }
                    }
                }
                // Again on the next directory, or after the backoff.
                let sleep = tokio::time::sleep(
                    wait.unwrap_or(std::time::Duration::from_secs(365 * 86_400)),
                );
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = sleep => {}
                    _ = token.cancelled() => break,
                }
            }
        });
    }

    let policy = RetryPolicy {
        base: std::time::Duration::from_secs(config.mesh.retry_initial_seconds),
        max: std::time::Duration::from_secs(config.mesh.retry_max_seconds),
        lifetime: std::time::Duration::from_secs(config.mesh.lifetime_hours * 3600),
    };
    // The outbox has a journal of its own (one write and a shared fdatasync
    // per entry); entries an older version left in the store's database move there.
    let outbox = Outbox::open(&config.data_dir().join("mesh-outbox"), policy)
        .map_err(|e| format!("mesh outbox: {e}"))?;
    outbox
        .import_sled(queues.db())
        .await
        .map_err(|e| format!("mesh outbox: {e}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tracker.spawn(outbox.clone().run(node.clone(), tx, token.clone()));
    {
        let svc = svc.clone();
        let domain = config.domains[0].clone();
        tracker.spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    OutboxEvent::Delivered { peer, reply } => {
                        svc.metrics()
                            .sent_mesh
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(
                            peer,
                            duplicate = reply.duplicate,
                            "delivered over the mesh"
                        );
                    }
                    OutboxEvent::RecipientsRefused {
                        peer,
                        deliver,
                        refused,
                    } => {
                        // Bounce to the sender, naming only the refused recipients.
                        let why = refused
                            .iter()
                            .map(|r| format!("{}: {}", r.rcpt, r.detail))
                            .collect::<Vec<_>>()
                            .join("; ");
                        tracing::warn!(
                            peer,
                            refused = refused.len(),
                            "recipients refused by the peer"
                        );
                        let only = Deliver {
                            rcpt_to: refused.into_iter().map(|r| r.rcpt).collect(),
                            ..deliver
                        };
                        bounce(
                            &svc,
                            &domain,
                            &only,
                            "5.1.1",
                            &format!("refused by {peer}: {why}"),
                        )
                        .await;
                    }
                    OutboxEvent::Failed {
                        peer,
                        deliver,
                        reason,
                    } => {
                        bounce(
                            &svc,
                            &domain,
                            &deliver,
                            "5.0.0",
                            &format!("refused by {peer}: {reason}"),
                        )
                        .await;
                    }
                    OutboxEvent::Expired {
                        peer,
                        deliver,
                        last_error,
                    } => {
                        bounce(
                            &svc,
                            &domain,
                            &deliver,
                            "4.4.7",
                            &format!("{peer} unreachable until expiry: {last_error}"),
                        )
                        .await;
                    }
                    OutboxEvent::Reroute { peer, deliver } if svc.sends_out() => {
                        tracing::info!(peer, "peer left the labelled network: sending by SMTP");
                        if let Err(e) = svc
                            .send_out(
                                &deliver.mail_from,
                                deliver.rcpt_to.clone(),
                                &deliver.message,
                            )
                            .await
                        {
                            tracing::error!(error = %e, "could not queue for SMTP");
                            bounce(
                                &svc,
                                &domain,
                                &deliver,
                                "4.3.0",
                                &format!("could not queue for SMTP: {e}"),
                            )
                            .await;
                        }
                    }
                    OutboxEvent::Reroute { peer, deliver } => {
                        bounce(
                            &svc,
                            &domain,
                            &deliver,
                            "5.4.4",
                            &format!(
                                "{peer} left the labelled network and no SMTP relay is configured"
                            ),
                        )
                        .await;
                    }
                }
            }
        });
    }
    Ok(Some((
        node.clone(),
        MeshRoute {
            member_id,
            trust,
            outbox,
            node,
            answers: Arc::new(crate::privacy::public::AnswerCache::default()),
            log,
        },
    )))
}

/// Delivers a DSN to the sender when the sender is a local user.
async fn bounce(svc: &MailService, domain: &str, d: &Deliver, status: &str, why: &str) {
    svc.bounce(domain, &d.mail_from, &d.rcpt_to, &d.message, status, why)
        .await;
}

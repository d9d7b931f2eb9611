//! The instance on the mesh: when it holds a label, it runs a mesh node,
//! follows the association, renews its certificate, delivers mail for other
//! members' domains through the durable outbox, stores mail from members
//! (`via = mesh`, idempotent by `txn_id`), and bounces what cannot be
//! delivered with a DSN.

use crate::config::Config;
use crate::smtp::server::{split_address, MailService};
use crate::store::{MessageMeta, Transport, Via};
use caliopen_federation::node::BoxFuture;
use caliopen_federation::trust::default_accepted_charters;
use caliopen_federation::{
    AssociationLink, HandlerError, IdentityFiles, IdentitySlot, MeshConfig, MeshHandler, MeshNode,
    Outbox, OutboxEvent, PeerIdentity, Renewer, RetryPolicy, TrustStore,
};
use caliopen_proto::pb::mesh::{
    recipient_result, Deliver, DeliverReply, PrivacyQuery, PrivacyReply, RecipientResult,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the router needs to send mail to another member.
#[derive(Debug, Clone)]
pub struct MeshRoute {
    /// This member's id.
    pub member_id: String,
    /// The trust store (directory: which domain is whose).
    pub trust: Arc<TrustStore>,
    /// The durable outbox.
    pub outbox: Outbox,
}

impl MeshRoute {
    /// The member serving `domain`, when it is another labelled member.
    pub fn member_for(&self, domain: &str) -> Option<String> {
        let st = self.trust.current();
        st.member_for_domain(domain)
            .map(|m| m.member_id.clone())
            .filter(|m| *m != self.member_id)
    }
}

/// Idempotency key of a mesh delivery: SHA-256 over the member, envelope and content.
pub fn txn_id(member: &str, mail_from: &str, rcpt_to: &[String], data: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [member.as_bytes(), mail_from.as_bytes()] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    for r in rcpt_to {
        ctx.update(&(r.len() as u64).to_be_bytes());
        ctx.update(r.as_bytes());
    }
    ctx.update(data);
    ctx.finish().as_ref().to_vec()
}

struct Handler {
    svc: MailService,
}

impl MeshHandler for Handler {
    fn deliver(
        &self,
        peer: &PeerIdentity,
        d: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>> {
        let svc = self.svc.clone();
        let peer = peer.member_id.clone();
        Box::pin(async move {
            let mut results = Vec::new();
            let mut per_user: Vec<(String, Vec<String>)> = Vec::new();
            for r in &d.rcpt_to {
                match svc.local_user(r) {
                    Some(u) => {
                        match per_user.iter_mut().find(|(m, _)| *m == u) {
                            Some((_, v)) => v.push(r.clone()),
                            None => per_user.push((u, vec![r.clone()])),
                        }
                        results.push(RecipientResult {
                            rcpt: r.clone(),
                            status: recipient_result::Status::Accepted as i32,
                            detail: String::new(),
                        });
                    }
                    None => results.push(RecipientResult {
                        rcpt: r.clone(),
                        status: recipient_result::Status::RejectedPermanent as i32,
                        detail: "no such user here".into(),
                    }),
                }
            }
            let mut duplicate = false;
            if !per_user.is_empty() {
                let template = MessageMeta {
                    id: 0,
                    mailbox: String::new(),
                    from: d.mail_from.clone(),
                    to: Vec::new(),
                    subject: crate::smtp::server::subject_of(&d.message),
                    received_at: now_unix(),
                    via: Via::Mesh,
                    transport: Transport {
                        peer_member: Some(peer.clone()),
                        tls_version: Some("TLSv1_3".into()),
                        ..Default::default()
                    },
                    size: d.message.len(),
                };
                let (_, dup) = svc
                    .store()
                    .deliver_once(&template, &per_user, &d.message, Some(&d.txn_id))
                    .await
                    .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
                duplicate = dup;
                if !dup {
                    svc.metrics()
                        .stored_mesh
                        .fetch_add(per_user.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(
                    peer,
                    duplicate,
                    recipients = per_user.len(),
                    "mesh message stored"
                );
            }
            Ok(DeliverReply {
                txn_id: d.txn_id,
                results,
                duplicate,
            })
        })
    }

    fn privacy_query(
        &self,
        _peer: &PeerIdentity,
        _q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        Box::pin(async {
            Err(HandlerError::Refused(
                "this instance does not publish public privacy levels yet".into(),
            ))
        })
    }
}

/// The handler a labelled instance installs on its mesh node: mail from
/// members is stored durably in `svc`'s store (group commit) before the
/// `DeliverReply`. Public so that the benchmark harness can run the real
/// delivery path in process.
pub fn store_handler(svc: MailService) -> Arc<dyn MeshHandler> {
    Arc::new(Handler { svc })
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The member id in a certificate's label.
pub fn member_id_of(cert_pem: &str) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = pem::parse(cert_pem)
        .map_err(|e| e.to_string())?
        .into_contents();
    let (_, c) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let ext = c
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == caliopen_proto::LABEL_OID_DER)
        .ok_or("the certificate carries no Caliopen label")?;
    Ok(caliopen_proto::Label::from_der(ext.value)
        .map_err(|e| e.to_string())?
        .member_id)
}

/// Starts the mesh side when the configuration names an association.
/// Returns `None` for an unlabelled instance.
pub async fn start(
    config: &Config,
    svc: &MailService,
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
        Arc::new(Handler { svc: svc.clone() }),
    )
    .await
    .map_err(|e| format!("mesh: {e}"))?;
    tracing::info!(member = %member_id, addr = %node.local_addr().map_err(|e| e.to_string())?, "mesh endpoint up");

    let link = AssociationLink::new(assoc.url.clone(), ca_pem);
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
    tracker.spawn(renewer.run(token.clone()));

    let outbox = Outbox::open(svc.store().db(), RetryPolicy::default())
        .map_err(|e| e.to_string())?
        .with_durability(Arc::new(svc.store().clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tracker.spawn(outbox.clone().run(node.clone(), tx, token.clone()));
    {
        let svc = svc.clone();
        let domain = config.domains[0].clone();
        tracker.spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    OutboxEvent::Delivered { peer, reply } => {
                        svc.metrics().sent_mesh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let refused: Vec<_> = reply
                            .results
                            .iter()
                            .filter(|r| r.status == recipient_result::Status::RejectedPermanent as i32)
                            .collect();
                        tracing::info!(peer, duplicate = reply.duplicate, refused = refused.len(), "delivered over the mesh");
                        // The Delivered event does not carry the message, so a
                        // per-recipient refusal is logged, not bounced (known gap).
                        for r in refused {
                            tracing::warn!(peer, rcpt = %r.rcpt, detail = %r.detail, "recipient refused by the peer");
                        }
                    }
                    OutboxEvent::Failed { peer, deliver, reason } => {
                        bounce(&svc, &domain, &deliver, "5.0.0", &format!("refused by {peer}: {reason}")).await;
                    }
                    OutboxEvent::Expired { peer, deliver, last_error } => {
                        bounce(&svc, &domain, &deliver, "4.4.7", &format!("{peer} unreachable until expiry: {last_error}")).await;
                    }
                    OutboxEvent::Reroute { peer, deliver } => match svc.queue() {
                        Some(q) => {
                            tracing::info!(peer, "peer left the labelled network: sending by SMTP");
                            if let Err(e) = q.enqueue(&deliver.mail_from, deliver.rcpt_to.clone(), &deliver.message).await {
                                tracing::error!(error = %e, "could not queue for SMTP");
                                bounce(&svc, &domain, &deliver, "4.3.0", &format!("could not queue for SMTP: {e}")).await;
                            }
                        }
                        None => {
                            bounce(&svc, &domain, &deliver, "5.4.4", &format!("{peer} left the labelled network and no SMTP relay is configured")).await;
                        }
                    },
                }
            }
        });
    }
    Ok(Some((
        node,
        MeshRoute {
            member_id,
            trust,
            outbox,
        },
    )))
}

/// Delivers a DSN to the sender when the sender is a local user.
async fn bounce(svc: &MailService, domain: &str, d: &Deliver, status: &str, why: &str) {
    crate::outbound::bounce(
        svc,
        domain,
        &d.mail_from,
        &d.rcpt_to,
        &d.message,
        status,
        why,
    )
    .await;
}

/// Splits recipients by the member serving their domain.
pub fn by_member(route: &MeshRoute, rcpts: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in rcpts {
        if let Some(m) = split_address(r).and_then(|(_, d)| route.member_for(&d)) {
            match out.iter_mut().find(|(x, _)| *x == m) {
                Some((_, v)) => v.push(r.clone()),
                None => out.push((m, vec![r.clone()])),
            }
        }
    }
    out
}

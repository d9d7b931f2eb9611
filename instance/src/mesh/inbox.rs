//! The mesh inbox: mail from other members, handed to the router's store
//! idempotently by `txn_id`, and the answers to their public level queries.

use super::route::BUCKET_TOO_LARGE;
use crate::delivery::{MailService, Route};
use crate::mail::{Transport, Via};
use crate::privacy::public::{check_query, PeerLimiter, ANSWER_TTL_SECONDS, MAX_BUCKET_ENTRIES};
use crate::store::MessageMeta;
use caliopen_federation::BoxFuture;
use caliopen_federation::{HandlerError, MeshHandler, PeerIdentity};
use caliopen_proto::pb::mesh::{
    recipient_result, Deliver, DeliverReply, PrivacyEntry, PrivacyQuery, PrivacyReply,
    RecipientResult,
};
use std::sync::Arc;

struct Handler {
    svc: MailService,
    limiter: PeerLimiter,
    handover: Arc<crate::handover::Receiver>,
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
            let mut local = Vec::new();
            let mut forward = Vec::new();
            for r in &d.rcpt_to {
                if let Some(to) = svc.moved(r) {
                    let detail = match to {
                        Some(to) => format!("551 5.1.6 user has moved; please try <{to}>"),
                        None => "550 5.1.1 no such user here".to_owned(),
                    };
                    results.push(RecipientResult {
                        rcpt: r.clone(),
                        status: recipient_result::Status::RejectedPermanent as i32,
                        detail,
                    });
                    continue;
                }
                let (status, detail) = match svc.route(r) {
                    // Handed over: what still reaches this member goes on
                    // to the successor.
                    Route::Mesh(_) if svc.is_local_domain(r) => {
                        forward.push(r.clone());
                        (recipient_result::Status::Accepted, String::new())
                    }
                    // An alias forwarding to other domains, or a bounce of
                    // forwarded mail: the router sends them on.
                    Route::Forward(..) | Route::Reverse(_) => {
                        forward.push(r.clone());
                        (recipient_result::Status::Accepted, String::new())
                    }
                    Route::Local(targets) if svc.add_local(r, targets.clone(), &mut local) => {
                        (recipient_result::Status::Accepted, String::new())
                    }
                    Route::Local(_) => {
                        svc.metrics()
                            .rcpt_mailbox_full
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        (
                            recipient_result::Status::RejectedTemporary,
                            "4.2.2 mailbox full".to_owned(),
                        )
                    }
                    // A domain handed over to this member whose accounts
                    // may still be on their way: try again later.
                    _ if crate::delivery::split_address(r).is_some_and(|(_, d)| {
                        svc.mesh()
                            .is_some_and(|m| m.inherited_domains().contains(&d))
                    }) =>
                    {
                        (
                            recipient_result::Status::RejectedTemporary,
                            "4.2.1 not here yet: a handover to this member is in progress"
                                .to_owned(),
                        )
                    }
                    _ => (
                        recipient_result::Status::RejectedPermanent,
                        "no such user here".to_owned(),
                    ),
                };
                results.push(RecipientResult {
                    rcpt: r.clone(),
                    status: status as i32,
                    detail,
                });
            }
            let mut duplicate = false;
            if !local.is_empty() {
                let template = MessageMeta {
                    from: d.mail_from.clone(),
                    subject: crate::delivery::subject_of(&d.message),
                    received_at: crate::store::now_unix(),
                    via: Via::Mesh,
                    transport: Transport {
                        peer_member: Some(peer.clone()),
                        tls_version: Some("TLSv1_3".into()),
                        ..Default::default()
                    },
                    size: d.message.len(),
                    ..Default::default()
                };
                let (_, dup) = svc
                    .store()
                    .deliver_once(&template, &local, &d.message, Some(&d.txn_id))
                    .await
                    .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
                duplicate = dup;
                if !dup {
                    svc.metrics()
                        .stored_mesh
                        .fetch_add(local.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(
                    peer,
                    duplicate,
                    recipients = local.len(),
                    "mesh message stored"
                );
            }
            if !forward.is_empty() {
                let transport = Transport {
                    peer_member: Some(peer.clone()),
                    tls_version: Some("TLSv1_3".into()),
                    ..Default::default()
                };
                if let Err(e) = svc
                    .accept(&d.mail_from, &forward, &d.message, transport, Via::Mesh)
                    .await
                {
                    tracing::warn!(peer, error = %e, "could not forward");
                    for r in results.iter_mut().filter(|r| forward.contains(&r.rcpt)) {
                        r.status = recipient_result::Status::RejectedTemporary as i32;
                        r.detail = "4.3.0 could not forward".into();
                    }
                } else {
                    tracing::info!(peer, recipients = forward.len(), "forwarded");
                }
            }
            Ok(DeliverReply {
                txn_id: d.txn_id,
                results,
                duplicate,
            })
        })
    }

    fn move_notice(
        &self,
        peer: &PeerIdentity,
        n: caliopen_proto::pb::mesh::MoveNotice,
    ) -> BoxFuture<Result<caliopen_proto::pb::mesh::PushReply, HandlerError>> {
        let svc = self.svc.clone();
        let peer = peer.member_id.clone();
        Box::pin(async move {
            let (Some(old), Some(new)) = (
                crate::privacy::public::normalise_address(&n.old_address),
                crate::privacy::public::normalise_address(&n.new_address),
            ) else {
                return Err(HandlerError::Malformed("not addresses".into()));
            };
            let store = svc.store();
            let users = store
                .users()
                .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
            let mut moved = 0usize;
            for u in users {
                if store
                    .move_contact(&u, &old, &new)
                    .await
                    .map_err(|e| HandlerError::Unavailable(e.to_string()))?
                {
                    moved += 1;
                }
            }
            tracing::info!(peer, old = %old, new = %new, contact_books = moved,
                "move notice followed");
            Ok(caliopen_proto::pb::mesh::PushReply {
                accepted: true,
                detail: format!("{moved} contact books follow"),
            })
        })
    }

    fn handover_chunk(
        &self,
        peer: &PeerIdentity,
        c: caliopen_proto::pb::mesh::HandoverChunk,
    ) -> BoxFuture<Result<caliopen_proto::pb::mesh::HandoverReply, HandlerError>> {
        let receiver = self.handover.clone();
        let peer = peer.member_id.clone();
        Box::pin(async move { receiver.chunk(&peer, c).await })
    }

    fn privacy_query(
        &self,
        peer: &PeerIdentity,
        q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        use std::sync::atomic::Ordering::Relaxed;
        let metrics = self.svc.metrics().clone();
        let r = if !self.limiter.allow(&peer.member_id) {
            metrics.privacy_rate_limited.fetch_add(1, Relaxed);
            Err(HandlerError::RateLimited(
                "too many privacy queries; slow down".into(),
            ))
        } else if let Err(e) = check_query(&q.hash_prefix, q.prefix_bits) {
            metrics.privacy_refused.fetch_add(1, Relaxed);
            Err(HandlerError::Malformed(e.to_string()))
        } else {
            match self
                .svc
                .store()
                .public_bucket(&q.hash_prefix, q.prefix_bits, MAX_BUCKET_ENTRIES)
            {
                Err(e) => Err(HandlerError::Unavailable(e.to_string())),
                Ok(None) => {
                    metrics.privacy_refused.fetch_add(1, Relaxed);
                    Err(HandlerError::Refused(format!(
                        "{BUCKET_TOO_LARGE}: ask with more than {} bits",
                        q.prefix_bits
                    )))
                }
                Ok(Some(entries)) => {
                    metrics.privacy_answered.fetch_add(1, Relaxed);
                    // What this member learns: the asker, and a prefix.
                    tracing::info!(
                        peer = %peer.member_id,
                        prefix_bits = q.prefix_bits,
                        prefix = %hex::encode(&q.hash_prefix),
                        entries = entries.len(),
                        "privacy query answered"
                    );
                    Ok(PrivacyReply {
                        entries: entries
                            .into_iter()
                            .map(|(h, l)| PrivacyEntry {
                                address_hash: h.to_vec(),
                                level: u32::from(l),
                            })
                            .collect(),
                        ttl_seconds: ANSWER_TTL_SECONDS,
                    })
                }
            }
        };
        Box::pin(async move { r })
    }
}

/// The handler a labelled instance installs on its mesh node: mail from
/// members is stored durably in `svc`'s store (group commit) before the
/// `DeliverReply`. Public so that the benchmark harness can run the real
/// delivery path in process.
pub fn store_handler(svc: MailService) -> Arc<dyn MeshHandler> {
    store_handler_with_limit(svc, PRIVACY_QUERIES_PER_SECOND, PRIVACY_QUERY_BURST)
}

/// [`store_handler`] with another per-peer budget for privacy queries (the
/// benchmark measures the answering path without the policy limit).
pub fn store_handler_with_limit(
    svc: MailService,
    queries_per_second: f64,
    burst: f64,
) -> Arc<dyn MeshHandler> {
    Arc::new(Handler {
        handover: crate::handover::Receiver::new(svc.clone()),
        svc,
        limiter: PeerLimiter::new(queries_per_second, burst),
    })
}

/// Public level queries a peer may make per second, sustained.
pub const PRIVACY_QUERIES_PER_SECOND: f64 = 20.0;
/// And at once.
pub const PRIVACY_QUERY_BURST: f64 = 100.0;

//! The instance on the mesh: when it holds a label, it runs a mesh node,
//! follows the association, renews its certificate, delivers mail for other
//! members' domains through the durable outbox, stores mail from members
//! (`via = mesh`, idempotent by `txn_id`), and bounces what cannot be
//! delivered with a DSN.

use crate::config::Config;
use crate::privacy::public::{
    address_hash, check_query, in_bucket, normalise_address, prefix_of, AnswerCache, PeerLimiter,
    ANSWER_TTL_SECONDS, DEFAULT_PREFIX_BITS, MAX_BUCKET_ENTRIES, MAX_PREFIX_BITS,
};
use crate::smtp::server::{split_address, MailService};
use crate::store::{MessageMeta, Transport, Via};
use caliopen_federation::node::BoxFuture;
use caliopen_federation::trust::default_accepted_charters;
use caliopen_federation::{
    AssociationLink, HandlerError, IdentityFiles, IdentitySlot, MeshConfig, MeshHandler, MeshNode,
    Outbox, OutboxEvent, PeerIdentity, Renewer, RetryPolicy, TrustStore,
};
use caliopen_proto::pb::mesh::{
    recipient_result, Deliver, DeliverReply, PrivacyEntry, PrivacyQuery, PrivacyReply,
    RecipientResult,
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
    /// The mesh endpoint.
    pub node: MeshNode,
    /// Answers to public level queries, by member and bucket.
    pub answers: Arc<AnswerCache>,
}

/// A public level looked up across the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelAnswer {
    /// The member asked.
    pub member: String,
    /// The level, when the member publishes one for the address.
    pub level: Option<u8>,
    /// Prefix bits sent.
    pub prefix_bits: u32,
    /// Entries in the bucket answered (the anonymity set within that member).
    pub bucket_size: usize,
    /// Served from the cache.
    pub cached: bool,
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

impl MeshRoute {
    /// Asks the member serving `address`'s domain for its public level with a
    /// k-anonymous query: only a hash prefix leaves this instance. `None`
    /// when the domain is not another member's.
    pub async fn public_level(&self, address: &str) -> Result<Option<LevelAnswer>, String> {
        let norm =
            normalise_address(address).ok_or_else(|| format!("{address:?} is not an address"))?;
        let Some(member) = split_address(&norm).and_then(|(_, d)| self.member_for(&d)) else {
            return Ok(None);
        };
        let hash = address_hash(&norm);
        let mut bits = DEFAULT_PREFIX_BITS;
        loop {
            let prefix = prefix_of(&hash, bits);
            let find = |entries: &[([u8; 32], u8)]| {
                entries.iter().find(|(h, _)| *h == hash).map(|(_, l)| *l)
            };
            if let Some(b) = self.answers.get(&member, bits, &prefix) {
                return Ok(Some(LevelAnswer {
                    level: find(&b.entries),
                    member,
                    prefix_bits: bits,
                    bucket_size: b.entries.len(),
                    cached: true,
                }));
            }
            let q = PrivacyQuery {
                hash_prefix: prefix.clone(),
                prefix_bits: bits,
            };
            match self.node.privacy_query(&member, q).await {
                Ok(reply) => {
                    let entries: Vec<([u8; 32], u8)> = reply
                        .entries
                        .iter()
                        .filter_map(|e| {
                            let h: [u8; 32] = e.address_hash.as_slice().try_into().ok()?;
                            // An entry outside the bucket asked for is the peer's error.
                            in_bucket(&h, &prefix, bits).then_some((h, e.level.min(100) as u8))
                        })
                        .collect();
                    let level = find(&entries);
                    let size = entries.len();
                    self.answers
                        .put(&member, bits, &prefix, entries, reply.ttl_seconds);
                    return Ok(Some(LevelAnswer {
                        member,
                        level,
                        prefix_bits: bits,
                        bucket_size: size,
                        cached: false,
                    }));
                }
                Err(caliopen_federation::MeshError::Remote { message, .. })
                    if message.contains(BUCKET_TOO_LARGE) && bits + 4 <= MAX_PREFIX_BITS =>
                {
                    bits += 4;
                }
                Err(e) => return Err(format!("{member}: {e}")),
            }
        }
    }
}

/// Words of the refusal that asks for a longer prefix.
const BUCKET_TOO_LARGE: &str = "bucket too large";

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
    limiter: PeerLimiter,
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
        svc,
        limiter: PeerLimiter::new(queries_per_second, burst),
    })
}

/// Public level queries a peer may make per second, sustained.
pub const PRIVACY_QUERIES_PER_SECOND: f64 = 20.0;
/// And at once.
pub const PRIVACY_QUERY_BURST: f64 = 100.0;

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

    let link = AssociationLink::new(assoc.url.clone(), ca_pem)
        .with_watch_identity(config.in_data(&assoc.cert), config.in_data(&assoc.key));
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
                        svc.metrics().sent_mesh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(peer, duplicate = reply.duplicate, "delivered over the mesh");
                    }
                    OutboxEvent::RecipientsRefused { peer, deliver, refused } => {
                        // Bounce to the sender, naming only the refused recipients.
                        let why = refused
                            .iter()
                            .map(|r| format!("{}: {}", r.rcpt, r.detail))
                            .collect::<Vec<_>>()
                            .join("; ");
                        tracing::warn!(peer, refused = refused.len(), "recipients refused by the peer");
                        let only = Deliver {
                            rcpt_to: refused.into_iter().map(|r| r.rcpt).collect(),
                            ..deliver
                        };
                        bounce(&svc, &domain, &only, "5.1.1", &format!("refused by {peer}: {why}")).await;
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
        node.clone(),
        MeshRoute {
            member_id,
            trust,
            outbox,
            node,
            answers: Arc::new(AnswerCache::default()),
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

//! The route to other members: which member serves a domain (from the
//! directory), the durable outbox that carries mail to them, and public
//! level queries across the mesh. It is the router's [`MeshOutlet`].

use crate::delivery::{split_address, LevelAnswer, MeshOutlet, OutletFuture, QueueError};
use crate::privacy::public::{
    address_hash, in_bucket, normalise_address, prefix_of, AnswerCache, DEFAULT_PREFIX_BITS,
    MAX_PREFIX_BITS,
};
use caliopen_federation::{MeshNode, Outbox, TrustStore};
use caliopen_proto::pb::mesh::{Deliver, PrivacyQuery};
use std::sync::Arc;

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
    /// The membership-log monitor, when the log key is pinned.
    pub log: Option<Arc<caliopen_federation::LogMonitor>>,
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
pub(super) const BUCKET_TOO_LARGE: &str = "bucket too large";

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

impl MeshOutlet for MeshRoute {
    fn member_for(&self, domain: &str) -> Option<String> {
        MeshRoute::member_for(self, domain)
    }

    fn notify_move<'a>(
        &'a self,
        old: &'a str,
        new: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>> {
        Box::pin(async move {
            let members: Vec<String> = self
                .trust
                .current()
                .directory
                .iter()
                .flat_map(|d| d.directory.members.iter())
                .map(|m| m.member_id.clone())
                .filter(|m| *m != self.member_id)
                .collect();
            let mut set = tokio::task::JoinSet::new();
            for m in members {
                let node = self.node.clone();
                let n = caliopen_proto::pb::mesh::MoveNotice {
                    old_address: old.to_owned(),
                    new_address: new.to_owned(),
                    moved_at: crate::store::now_unix(),
                };
                set.spawn(async move {
                    match node.move_notice(&m, n).await {
                        Ok(r) => r.accepted,
                        Err(e) => {
                            tracing::warn!(member = %m, error = %e, "move notice not taken");
                            false
                        }
                    }
                });
            }
            let mut n = 0;
            while let Some(r) = set.join_next().await {
                n += usize::from(r.unwrap_or(false));
            }
            n
        })
    }

    fn domains_of(&self, member: &str) -> Vec<String> {
        self.trust
            .current()
            .member(member)
            .map(|m| m.domains.clone())
            .unwrap_or_default()
    }

    fn inherited_domains(&self) -> Vec<String> {
        self.trust.current().inherited_domains(&self.member_id)
    }

    fn successor(&self) -> Option<String> {
        let st = self.trust.current();
        st.member(&self.member_id)
            .map(|m| m.handed_over_to.clone())
            .filter(|s| !s.is_empty())
    }

    fn handover_chunk<'a>(
        &'a self,
        member: &'a str,
        chunk: caliopen_proto::pb::mesh::HandoverChunk,
    ) -> crate::delivery::HandoverFuture<'a> {
        Box::pin(async move {
            self.node.handover_chunk(member, chunk).await.map_err(|e| {
                // What the member answered will not change by asking again.
                use caliopen_proto::pb::mesh::error_reply::Code;
                let retry = !matches!(
                    e,
                    caliopen_federation::MeshError::Remote {
                        code: Code::Refused | Code::Malformed | Code::Unsupported,
                        ..
                    }
                );
                (retry, e.to_string())
            })
        })
    }

    fn public_level<'a>(
        &'a self,
        address: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<LevelAnswer>, String>> + Send + 'a>,
    > {
        Box::pin(MeshRoute::public_level(self, address))
    }

    fn enqueue<'a>(
        &'a self,
        member: &'a str,
        mail_from: &'a str,
        rcpt_to: Vec<String>,
        data: &'a [u8],
        identity: &'a [u8],
    ) -> OutletFuture<'a> {
        Box::pin(async move {
            let deliver = Deliver {
                txn_id: txn_id(member, mail_from, &rcpt_to, identity),
                mail_from: mail_from.to_owned(),
                rcpt_to,
                message: data.to_vec(),
                accepted_at: crate::store::now_unix(),
            };
            self.outbox
                .enqueue(member, deliver)
                .await
                .map_err(|e| QueueError::failed("mesh outbox", e))
        })
    }
}

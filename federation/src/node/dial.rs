//! The dialing side of a mesh endpoint: one pooled connection per peer
//! (dialed at the endpoints the directory lists, checked as a member, in
//! the membership log, then greeted with a Hello and caught up with the
//! trust data it announced), and the requests this member sends over it,
//! one per bidirectional stream ([`request_on`]).
//!
//! The Hello exchange is the mesh's own acceptance step on top of the TLS
//! 1.3 handshake (RFC 8446; ALPN `caliopen/1`, RFC 7301, set in
//! `crate::tls`): a finished handshake does not show that the peer took our
//! certificate. A peer refused at this stage is closed with a QUIC
//! application error code (RFC 9000 §20.2, §19.19): [`CLOSE_REVOKED`],
//! [`CLOSE_BELOW_BASELINE`], or 0 (no error code of our own).

use super::decide::{baseline, still_member, Baseline};
use super::{
    peer_identity_of, MeshError, MeshNode, Peer, CATCH_UP, CLOSE_BELOW_BASELINE, CLOSE_REVOKED,
};
use crate::trust::{PeerIdentity, TrustState};
use crate::wire::{decode_single, encode_frame};
use caliopen_proto::pb::mesh::{
    error_reply, request, response, Deliver, DeliverReply, HandoverChunk, HandoverReply,
    MoveNotice, PrivacyQuery, PrivacyReply, PushReply, Request, Response,
};
use caliopen_proto::MESH_PROTOCOL_VERSION;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl MeshNode {
    /// Makes `conn` the live connection to its member and announces it.
    pub(super) fn pool(&self, conn: quinn::Connection, identity: PeerIdentity) {
        let member = identity.member_id.clone();
        self.lock_peers()
            .insert(member.clone(), Peer { conn, identity });
        let _ = self.inner.connected.send(member);
    }

    /// Waits a bounded time for trust data as fresh as `(crl, directory)`
    /// (what a peer announced: it pushes it on seeing our older numbers).
    /// Without this, mail could reach a member revoked while we were not
    /// listening. Returns false when it did not come in time (we go on with
    /// ours).
    pub(super) async fn wait_for_trust(
        &self,
        (crl, directory): (u64, u64),
        identity: &PeerIdentity,
    ) -> bool {
        let fresh = |st: &TrustState| st.crl_number() >= crl && st.directory_serial() >= directory;
        // Subscribe first: the push may already be on its way (or taken).
        let mut rx = self.inner.trust.subscribe();
        let waited = tokio::time::timeout(self.inner.cfg.request_timeout.min(CATCH_UP), async {
            while !fresh(&self.inner.trust.current()) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(peer = %identity.member_id, crl, directory,
                "peer announced trust data it did not send us; going on with ours");
        }
        waited.is_ok()
    }

    /// After the Hello of a peer we dialed: when it announced a newer CRL or
    /// directory than ours (we were cut off, say), waits for it
    /// ([`MeshNode::wait_for_trust`]), then checks again that the peer is
    /// still a member.
    async fn catch_up_with(&self, announced: (u64, u64), identity: &PeerIdentity) -> bool {
        self.wait_for_trust(announced, identity).await;
        // Checked in every case: the push may have been taken before we looked.
        still_member(&self.inner.trust.current(), identity)
    }

    /// Flags (and after the grace period refuses) a peer we dialed whose
    /// Hello shows software below the baseline ([`baseline`]). Returns
    /// false when the peer must be refused.
    fn check_baseline(&self, peer: &str, version: &str) -> bool {
        let st = self.inner.trust.current();
        let verdict = {
            let mut states = self.lock_peer_states();
            let state = states.entry(peer.to_owned()).or_default();
            baseline(
                &mut state.below_baseline_since,
                peer,
                version,
                &st,
                self.inner.cfg.baseline_grace,
                Instant::now(),
            )
        };
        if verdict != Baseline::Met {
            self.inner
                .stats
                .below_baseline
                .fetch_add(1, Ordering::Relaxed);
        }
        verdict != Baseline::Refuse
    }

    /// The live connection to `member`, dialing it when there is none.
    pub async fn connect(&self, member: &str) -> Result<quinn::Connection, MeshError> {
        if let Some(p) = self.lock_peers().get(member) {
            if p.conn.close_reason().is_none() {
                return Ok(p.conn.clone());
            }
        }
        let _g = self.inner.dial.lock().await;
        if let Some(p) = self.lock_peers().get(member) {
            if p.conn.close_reason().is_none() {
                return Ok(p.conn.clone());
            }
        }
        let st = self.inner.trust.current();
        let m = st
            .member(member)
            .ok_or_else(|| MeshError::UnknownPeer(member.to_owned()))?;
        let server_name = m
            .domains
            .first()
            .cloned()
            .ok_or_else(|| MeshError::UnknownPeer(member.to_owned()))?;
        let mut last = MeshError::UnknownPeer(format!("{member} has no mesh endpoint"));
        for ep in m.endpoints.clone() {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(ep.as_str()).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    last = MeshError::Connect {
                        peer: member.to_owned(),
                        detail: format!("resolve {ep}: {e}"),
                    };
                    continue;
                }
            };
            for addr in addrs {
                match self.dial(member, addr, &server_name).await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn dial(
        &self,
        member: &str,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connection, MeshError> {
        let err = |detail: String| MeshError::Connect {
            peer: member.to_owned(),
            detail,
        };
        let connecting = self
            .inner
            .endpoint
            .connect(addr, server_name)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(self.inner.cfg.connect_timeout, connecting)
            .await
            .map_err(|_| err("handshake timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let st = self.inner.trust.current();
        let identity =
            peer_identity_of(&conn, &st).ok_or_else(|| err("peer is not a member".into()))?;
        if identity.member_id != member {
            conn.close(CLOSE_REVOKED.into(), b"unexpected member");
            return Err(err(format!("answered as {}", identity.member_id)));
        }
        drop(st);
        if let Err(e) = self.check_logged(&identity).await {
            conn.close(CLOSE_REVOKED.into(), b"not in the membership log");
            return Err(err(format!(
                "certificate not shown in the membership log: {e}"
            )));
        }
        // A finished handshake is not acceptance: the peer may still refuse
        // our certificate. The Hello exchange proves it took us.
        let hello = Request {
            body: Some(request::Body::Hello(self.own_hello())),
        };
        let answer = tokio::time::timeout(
            self.inner.cfg.request_timeout,
            request_on(&conn, &hello, self.inner.cfg.max_frame),
        )
        .await
        .map_err(|_| err("hello timed out".into()))?
        .map_err(|e| err(format!("hello: {e}")))?;
        let theirs = match answer.body {
            Some(response::Body::Hello(h)) => h,
            Some(response::Body::Error(e)) => {
                conn.close(0u32.into(), b"refused");
                return Err(err(format!("hello refused: {}", e.message)));
            }
            _ => return Err(err("unexpected hello answer".into())),
        };
        if theirs.protocol_version != MESH_PROTOCOL_VERSION {
            conn.close(0u32.into(), b"protocol version");
            return Err(err(format!(
                "peer speaks mesh protocol {}",
                theirs.protocol_version
            )));
        }
        if !self.check_baseline(member, &theirs.software_version) {
            conn.close(CLOSE_BELOW_BASELINE.into(), b"below baseline");
            return Err(err("peer software below the security baseline".into()));
        }
        // Serve the connection (the peer's pushes arrive on it) before it is
        // pooled: nothing is sent to the peer until we are as fresh as it is.
        self.serve(conn.clone(), identity.clone(), true);
        if !self
            .catch_up_with((theirs.crl_number, theirs.directory_serial), &identity)
            .await
        {
            self.inner
                .stats
                .closed_revoked
                .fetch_add(1, Ordering::Relaxed);
            conn.close(CLOSE_REVOKED.into(), b"revoked");
            return Err(err(
                "peer is no longer a member (revoked or delisted, as its own trust data says)"
                    .into(),
            ));
        }
        tracing::info!(peer = member, %addr, version = %theirs.software_version, "mesh connection up");
        self.pool(conn.clone(), identity);
        self.push_if_fresher(member, &theirs);
        Ok(conn)
    }

    /// Sends one request to `member` (dialing if needed) and returns its answer.
    pub async fn request(&self, member: &str, req: Request) -> Result<Response, MeshError> {
        let conn = self.connect(member).await?;
        let r = tokio::time::timeout(
            self.inner.cfg.request_timeout,
            request_on(&conn, &req, self.inner.cfg.max_frame),
        )
        .await
        .map_err(|_| MeshError::Timeout)??;
        if let Some(response::Body::Error(e)) = &r.body {
            return Err(MeshError::Remote {
                code: error_reply::Code::try_from(e.code).unwrap_or(error_reply::Code::Unspecified),
                message: e.message.clone(),
            });
        }
        Ok(r)
    }

    /// Like [`MeshNode::request`], but only over an existing connection.
    pub(super) async fn request_connected(
        &self,
        member: &str,
        req: Request,
    ) -> Result<Response, MeshError> {
        let conn = self
            .lock_peers()
            .get(member)
            .map(|p| p.conn.clone())
            .ok_or_else(|| MeshError::UnknownPeer(member.to_owned()))?;
        tokio::time::timeout(
            self.inner.cfg.request_timeout,
            request_on(&conn, &req, self.inner.cfg.max_frame),
        )
        .await
        .map_err(|_| MeshError::Timeout)?
    }

    /// Delivers a message to `member`; returns once it stored it durably.
    pub async fn deliver(&self, member: &str, d: Deliver) -> Result<DeliverReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::Deliver(d)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Deliver(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }

    /// Tells `member` that a user of this member moved.
    pub async fn move_notice(&self, member: &str, n: MoveNotice) -> Result<PushReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::MoveNotice(n)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Push(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }

    /// Sends a piece of an account archive to `member`, the successor.
    pub async fn handover_chunk(
        &self,
        member: &str,
        c: HandoverChunk,
    ) -> Result<HandoverReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::HandoverChunk(c)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Handover(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }

    /// Asks `member` for the public privacy levels in a hash-prefix bucket.
    pub async fn privacy_query(
        &self,
        member: &str,
        q: PrivacyQuery,
    ) -> Result<PrivacyReply, MeshError> {
        match self
            .request(
                member,
                Request {
                    body: Some(request::Body::PrivacyQuery(q)),
                },
            )
            .await?
            .body
        {
            Some(response::Body::Privacy(r)) => Ok(r),
            _ => Err(MeshError::Unexpected),
        }
    }
}

/// One request on its own bidirectional stream of `conn`.
pub async fn request_on(
    conn: &quinn::Connection,
    req: &Request,
    max_frame: usize,
) -> Result<Response, MeshError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    send.write_all(&encode_frame(req))
        .await
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    send.finish()
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    let data = recv
        .read_to_end(max_frame + 4)
        .await
        .map_err(|e| MeshError::Transport(e.to_string()))?;
    Ok(decode_single::<Response>(&data, max_frame)?)
}

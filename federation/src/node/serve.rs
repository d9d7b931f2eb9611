//! The serving side of a mesh endpoint: the accept loop (handshake, member
//! check, membership log check), one task per connection accepting the
//! peer's bidirectional streams, and one per stream reading one request
//! frame, asking [`super::decide`] what to do with it, doing it (handler,
//! trust store, log monitor) and writing the answer frame.
//!
//! Streams are QUIC bidirectional streams (RFC 9000 §2): a request is the
//! whole of what the peer sent before finishing its side (the FIN), the
//! answer is sent back on the same stream and finished. A malformed or
//! oversize request is refused with `STOP_SENDING` (RFC 9000 §19.5) carrying
//! [`STREAM_MALFORMED`] as well as an error answer.

use super::decide::{decide, still_member, Context, Count, Decision, Greeting, Push, Serve, Stage};
use super::gossip::push_reply;
use super::handler::handler_error_response;
use super::{
    error_response, now_unix, peer_identity_of, MeshNode, CLOSE_REVOKED, STREAM_MALFORMED,
};
use crate::log::{LogError, Offer, SplitView};
use crate::trust::PeerIdentity;
use crate::wire::{decode_single, encode_frame};
use caliopen_proto::pb::mesh::{error_reply, response, Request, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a connection's stream tasks share.
#[derive(Debug)]
pub(super) struct ConnState {
    /// The peer's Hello was accepted.
    greeted: AtomicBool,
    /// (CRL number, directory serial) its Hello announced.
    announced: Mutex<(u64, u64)>,
}

impl ConnState {
    fn new(greeted: bool) -> Self {
        Self {
            greeted: AtomicBool::new(greeted),
            announced: Mutex::new((0, 0)),
        }
    }

    /// The greeting as the decisions read it.
    fn greeting(&self) -> Greeting {
        Greeting {
            greeted: self.greeted.load(Ordering::Acquire),
            announced: *self
                .announced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Records an accepted Hello: what it announced first, then that it
    /// was accepted (Release), so that a request on another stream that
    /// sees the connection greeted (Acquire) also sees what to catch up
    /// with — never a greeted connection with nothing announced.
    fn greet(&self, announced: (u64, u64)) {
        *self
            .announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = announced;
        self.greeted.store(true, Ordering::Release);
    }
}

impl MeshNode {
    pub(super) async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                i = self.inner.endpoint.accept() => i,
                _ = self.inner.token.cancelled() => break,
            };
            let Some(incoming) = incoming else { break };
            let node = self.clone();
            self.inner.tracker.spawn(async move {
                let remote = incoming.remote_address();
                let conn =
                    match tokio::time::timeout(node.inner.cfg.connect_timeout, incoming).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "incoming mesh handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%remote, "incoming mesh handshake timed out");
                            return;
                        }
                    };
                let st = node.inner.trust.current();
                let Some(identity) = peer_identity_of(&conn, &st) else {
                    conn.close(CLOSE_REVOKED.into(), b"not a member");
                    return;
                };
                drop(st);
                if let Err(e) = node.check_logged(&identity).await {
                    tracing::warn!(%remote, peer = %identity.member_id, error = %e,
                        "mesh connection refused: certificate not shown in the membership log");
                    conn.close(CLOSE_REVOKED.into(), b"not in the membership log");
                    return;
                }
                // The log check may have taken a while (a poll, tiles): a
                // CRL or directory taken meanwhile closed only the pooled
                // connections, so this one is checked again before it joins.
                if !still_member(&node.inner.trust.current(), &identity) {
                    node.inner
                        .stats
                        .closed_revoked
                        .fetch_add(1, Ordering::Relaxed);
                    conn.close(CLOSE_REVOKED.into(), b"revoked");
                    return;
                }
                tracing::debug!(%remote, peer = %identity.member_id, "mesh connection accepted");
                node.register(conn, identity, false);
            });
        }
    }

    /// `greeted`: the peer's Hello was already checked (connections we dialed).
    fn register(&self, conn: quinn::Connection, identity: PeerIdentity, greeted: bool) {
        self.pool(conn.clone(), identity.clone());
        self.serve(conn, identity, greeted);
    }

    /// Serves the streams the peer opens on `conn`.
    pub(super) fn serve(&self, conn: quinn::Connection, identity: PeerIdentity, greeted: bool) {
        let node = self.clone();
        let state = Arc::new(ConnState::new(greeted));
        self.inner.tracker.spawn(async move {
            node.serve_connection(conn, identity, state).await;
        });
    }

    async fn serve_connection(
        self,
        conn: quinn::Connection,
        identity: PeerIdentity,
        state: Arc<ConnState>,
    ) {
        loop {
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                _ = self.inner.token.cancelled() => break,
            };
            match stream {
                Ok((send, recv)) => {
                    let node = self.clone();
                    let id = identity.clone();
                    let state = state.clone();
                    self.inner.tracker.spawn(async move {
                        node.serve_stream(id, state, send, recv).await;
                    });
                }
                Err(e) => {
                    tracing::debug!(peer = %identity.member_id, error = %e, "mesh connection ended");
                    break;
                }
            }
        }
        let mut peers = self.lock_peers();
        if peers
            .get(&identity.member_id)
            .is_some_and(|p| p.conn.stable_id() == conn.stable_id())
        {
            peers.remove(&identity.member_id);
        }
    }

    async fn serve_stream(
        self,
        peer: PeerIdentity,
        state: Arc<ConnState>,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let max = self.inner.cfg.max_frame;
        let read =
            tokio::time::timeout(self.inner.cfg.request_timeout, recv.read_to_end(max + 4)).await;
        let (response, close) = match read {
            Err(_) => {
                self.inner
                    .stats
                    .frames_refused
                    .fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(STREAM_MALFORMED.into());
                let r =
                    error_response(error_reply::Code::Malformed, "request not received in time");
                (r, None)
            }
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                self.inner
                    .stats
                    .frames_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %peer.member_id, "oversize mesh frame refused");
                let _ = recv.stop(STREAM_MALFORMED.into());
                let r = error_response(
                    error_reply::Code::Malformed,
                    format!("frame exceeds {max} bytes"),
                );
                (r, None)
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.member_id, error = %e, "mesh stream failed");
                return;
            }
            Ok(Ok(data)) => match decode_single::<Request>(&data, max) {
                Err(e) => {
                    self.inner
                        .stats
                        .frames_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %peer.member_id, error = %e, "malformed mesh frame refused");
                    (
                        error_response(error_reply::Code::Malformed, e.to_string()),
                        None,
                    )
                }
                Ok(req) => self.dispatch(&peer, &state, req).await,
            },
        };
        let frame = encode_frame(&response);
        if let Err(e) = send.write_all(&frame).await {
            tracing::debug!(peer = %peer.member_id, error = %e, "mesh answer not sent");
            return;
        }
        let _ = send.finish();
        // Let the peer read the answer before the stream is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        if let Some((code, reason)) = close {
            self.close_peer(&peer.member_id, code, reason.as_bytes());
        }
    }

    /// Adds one to the counter a decision names.
    fn count(&self, count: Option<Count>) {
        let stats = &self.inner.stats;
        let counter = match count {
            None => return,
            Some(Count::RateLimited) => &stats.rate_limited,
            Some(Count::SenderRefused) => &stats.sender_refused,
            Some(Count::BelowBaseline) => &stats.below_baseline,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Decides on `req` ([`decide`]) and carries the decision out. Returns
    /// the answer, and the close code and reason of the connection once the
    /// answer is out, if it is to be closed.
    async fn dispatch(
        &self,
        peer: &PeerIdentity,
        conn: &ConnState,
        req: Request,
    ) -> (Response, Option<(u32, &'static str)>) {
        let mut body = req.body;
        let mut stage = Stage::Arrived;
        loop {
            let outcome = {
                let trust = self.inner.trust.current();
                let cx = Context {
                    cfg: &self.inner.cfg,
                    trust: &trust,
                    peer,
                    greeting: conn.greeting(),
                    keeps_log: self.inner.log.get().is_some(),
                    now: Instant::now(),
                };
                let mut states = self.lock_peer_states();
                let state = states.entry(peer.member_id.clone()).or_default();
                decide(&cx, stage, state, body.take())
            };
            self.count(outcome.count);
            let response = match outcome.decision {
                Decision::Refuse(r) => return (error_response(r.code, r.message), r.close),
                Decision::Decline(detail) => push_reply(Err(detail.into())),
                Decision::Greet(h) => {
                    conn.greet((h.crl_number, h.directory_serial));
                    self.push_if_fresher(&peer.member_id, &h);
                    Response {
                        body: Some(response::Body::Hello(self.own_hello())),
                    }
                }
                Decision::CatchUp { announced, body: b } => {
                    self.wait_for_trust(announced, peer).await;
                    body = Some(b);
                    stage = Stage::CaughtUp;
                    continue;
                }
                Decision::Serve(s) => self.serve_request(peer, s).await,
                Decision::Take(p) => self.take_push(peer, p).await,
            };
            return (response, None);
        }
    }

    /// Passes a request to the handler.
    async fn serve_request(&self, peer: &PeerIdentity, s: Serve) -> Response {
        let handler = &self.inner.handler;
        let body = match s {
            Serve::Deliver(d) => handler.deliver(peer, d).await.map(|r| {
                self.inner.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                response::Body::Deliver(r)
            }),
            Serve::Privacy(q) => handler
                .privacy_query(peer, q)
                .await
                .map(response::Body::Privacy),
            Serve::Handover(c) => handler
                .handover_chunk(peer, c)
                .await
                .map(response::Body::Handover),
            Serve::Move(n) => handler.move_notice(peer, n).await.map(response::Body::Push),
        };
        match body {
            Ok(b) => Response { body: Some(b) },
            Err(e) => handler_error_response(e),
        }
    }

    /// Offers pushed data to the trust store or the log monitor.
    async fn take_push(&self, peer: &PeerIdentity, p: Push) -> Response {
        match p {
            Push::Crl(der) => {
                let r = self.inner.trust.offer_crl(&der, Some(&peer.member_id));
                self.push_outcome(peer, "CRL", r)
            }
            Push::Directory(signed) => {
                let r =
                    self.inner
                        .trust
                        .offer_directory(&signed, Some(&peer.member_id), now_unix());
                self.push_outcome(peer, "directory", r)
            }
            Push::Checkpoint(note) => {
                let Some(log) = self.inner.log.get() else {
                    return push_reply(Err(super::decide::NO_LOG.into()));
                };
                match log.offer(&note, Some(&peer.member_id)).await {
                    Ok(Offer::Taken { grew }) => push_reply(Ok(grew)),
                    Ok(Offer::Unchanged) | Ok(Offer::NeedProof { .. }) => push_reply(Ok(false)),
                    Ok(Offer::SplitView(_)) => push_reply(Err(
                        "split view: this checkpoint contradicts the one held".into(),
                    )),
                    // Not the pusher's fault: the proof could not be had here.
                    Err(e @ LogError::Unverifiable { .. }) => push_reply(Err(e.to_string())),
                    Err(e) => self.refused_push(e),
                }
            }
            Push::SplitView {
                first,
                second,
                proof,
            } => {
                let Some(log) = self.inner.log.get() else {
                    return push_reply(Err(super::decide::NO_LOG.into()));
                };
                let sv = SplitView {
                    first,
                    second,
                    proof,
                    source: Some(peer.member_id.clone()),
                    detected_at: now_unix(),
                };
                match log.offer_split_view(sv).await {
                    Ok(new) => push_reply(Ok(new)),
                    Err(e) => self.refused_push(e),
                }
            }
        }
    }

    /// Counts a refused push and answers it with the reason.
    fn refused_push(&self, reason: impl std::fmt::Display) -> Response {
        self.inner
            .stats
            .pushes_refused
            .fetch_add(1, Ordering::Relaxed);
        push_reply(Err(reason.to_string()))
    }

    /// Counts and logs a refused push, then answers it.
    fn push_outcome(
        &self,
        peer: &PeerIdentity,
        what: &str,
        r: Result<bool, crate::trust::TrustError>,
    ) -> Response {
        match r {
            Ok(taken) => push_reply(Ok(taken)),
            Err(e) => {
                tracing::warn!(peer = %peer.member_id, what, error = %e, "pushed trust data refused");
                self.refused_push(e)
            }
        }
    }
}

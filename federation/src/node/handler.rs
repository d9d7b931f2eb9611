//! What the instance plugs into the mesh: the [`MeshHandler`] trait (durable
//! delivery, privacy answers, move notices, handover pieces), the errors a
//! handler answers with, and how those become `ErrorReply` codes on the wire.

use super::error_response;
use crate::trust::PeerIdentity;
use caliopen_proto::pb::mesh::{
    error_reply, Deliver, DeliverReply, HandoverChunk, HandoverReply, MoveNotice, PrivacyQuery,
    PrivacyReply, PushReply, Response,
};
use std::future::Future;
use std::pin::Pin;
use thiserror::Error;

/// A boxed future, as returned by [`MeshHandler`] methods.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a handler could not serve a request.
#[derive(Debug, Clone, Error)]
pub enum HandlerError {
    /// Try again later (storage unavailable…).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Refused by policy.
    #[error("refused: {0}")]
    Refused(String),
    /// The request is not well formed.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The peer asks too often.
    #[error("rate limited: {0}")]
    RateLimited(String),
}

pub(super) fn handler_error_response(e: HandlerError) -> Response {
    let (code, m) = match e {
        HandlerError::Unavailable(m) => (error_reply::Code::Unavailable, m),
        HandlerError::Refused(m) => (error_reply::Code::Refused, m),
        HandlerError::Malformed(m) => (error_reply::Code::Malformed, m),
        HandlerError::RateLimited(m) => (error_reply::Code::RateLimited, m),
    };
    error_response(code, m)
}

/// What the instance provides to the mesh: durable delivery and privacy answers.
pub trait MeshHandler: Send + Sync + 'static {
    /// Stores a message for local recipients. Must be idempotent by
    /// `txn_id` and must return only once the message is durably stored.
    /// The sender domain binding has already been checked.
    fn deliver(
        &self,
        peer: &PeerIdentity,
        req: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>>;
    /// Answers a k-anonymous public privacy level query.
    fn privacy_query(
        &self,
        peer: &PeerIdentity,
        q: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>>;
    /// Follows a user's move in the contact books (already checked: the
    /// old address is the peer's, the new one a member's).
    fn move_notice(
        &self,
        _peer: &PeerIdentity,
        _n: MoveNotice,
    ) -> BoxFuture<Result<PushReply, HandlerError>> {
        Box::pin(async {
            Ok(PushReply {
                accepted: false,
                detail: "move notices are not taken here".into(),
            })
        })
    }
    /// Takes a piece of an account archive from a member that handed over
    /// to this one (already checked against the directory).
    fn handover_chunk(
        &self,
        _peer: &PeerIdentity,
        _c: HandoverChunk,
    ) -> BoxFuture<Result<HandoverReply, HandlerError>> {
        Box::pin(async {
            Err(HandlerError::Refused(
                "this member does not take handovers".into(),
            ))
        })
    }
}

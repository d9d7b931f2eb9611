//! The mesh protocol's rules for a request a peer sent, as a pure function:
//! no socket, no task, no clock of its own. [`decide`] reads the request,
//! the trust state (a snapshot of [`crate::trust::TrustStore::current`]),
//! the connection's greeting, the peer's identity, this member's id and
//! configuration, the peer's rate bucket and baseline flag, and the time it
//! is given; it answers with a [`Decision`] (refuse, greet, wait for fresher
//! trust data, serve through the handler, take a push) and updates only
//! the [`PeerState`] it was lent. `serve.rs` does the I/O around it.
//!
//! The rules, in the order they apply:
//! 1. the per-peer token bucket ([`take_token`]): `RateLimited`;
//! 2. a request with no body: `Malformed`;
//! 3. Hello first: any other request before the connection's Hello was
//!    accepted is `Refused`;
//! 4. Deliver and PrivacyQuery only: a member whose own label was withdrawn
//!    takes nothing more over the mesh (`Unavailable`, use SMTP); a peer
//!    whose Hello announced fresher trust data than held is answered once
//!    that data arrived ([`Decision::CatchUp`]); a peer that is revoked or
//!    no longer listed is `Refused`;
//! 5. per kind: Hello (protocol version, the security baseline and its
//!    grace period, [`baseline`]), Deliver (well formed; the envelope
//!    sender's domain is one of the peer's certificate, or the peer handed
//!    over to this member and every recipient is at a domain it handed
//!    over), HandoverChunk (from this member's predecessor, or carrying an
//!    account move code), MoveNotice (the old address is the peer's, the
//!    new one a labelled member's), and the pushes' own shape checks.

use super::{MeshConfig, CLOSE_BELOW_BASELINE};
use crate::trust::{PeerIdentity, TrustState};
use caliopen_proto::pb::directory::SignedDirectory;
use caliopen_proto::pb::mesh::{
    error_reply::Code, request, Deliver, HandoverChunk, Hello, MoveNotice, PrivacyQuery,
};
use caliopen_proto::MESH_PROTOCOL_VERSION;
use std::time::{Duration, Instant};

/// The refusal message of a Hello below the security baseline past its
/// grace period (the connection is closed once it is sent).
pub(crate) const BELOW_BASELINE_MSG: &str = "software below the security baseline";

/// A peer's token bucket: `rate_burst` tokens at most, refilled at
/// `rate_per_second`; a request takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the node keeps about a peer across its connections and requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PeerState {
    /// The rate limit's bucket (full when absent).
    pub(crate) bucket: Option<Bucket>,
    /// Since when the peer has been seen below the security baseline.
    pub(crate) below_baseline_since: Option<Instant>,
}

/// A connection's greeting, as its accepted Hello left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Greeting {
    /// The peer's Hello was accepted (or we dialed and checked it).
    pub(crate) greeted: bool,
    /// (CRL number, directory serial) that Hello announced.
    pub(crate) announced: (u64, u64),
}

/// Where a request is in its handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Just read off its stream: every rule applies, the rate limit first.
    Arrived,
    /// A Deliver or PrivacyQuery decided again after the node waited for
    /// the trust data the peer announced ([`Decision::CatchUp`]): the rate
    /// limit, the own-label check and the wait are behind it.
    CaughtUp,
}

/// What a decision reads besides the request and the peer's state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// This member's configuration (its id, rate limit, baseline grace).
    pub(crate) cfg: &'a MeshConfig,
    /// The trust state now.
    pub(crate) trust: &'a TrustState,
    /// Who sent the request (from its certificate).
    pub(crate) peer: &'a PeerIdentity,
    /// The connection's greeting.
    pub(crate) greeting: Greeting,
    /// A membership log monitor is attached.
    pub(crate) keeps_log: bool,
    /// The time: a real `Instant::now()`, or a test's simulated clock.
    pub(crate) now: Instant,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The error code.
    pub(crate) code: Code,
    /// The message.
    pub(crate) message: String,
    /// Close the connection with this QUIC application error code and
    /// reason once the answer is out.
    pub(crate) close: Option<(u32, &'static str)>,
}

/// A request for the instance's handler (its rules passed).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Serve {
    /// Store a message.
    Deliver(Deliver),
    /// Answer a privacy query.
    Privacy(PrivacyQuery),
    /// Take a piece of an account archive.
    Handover(HandoverChunk),
    /// Follow a user's move.
    Move(MoveNotice),
}

/// Pushed data to offer to the trust store or the log monitor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Push {
    /// A CRL (DER).
    Crl(Vec<u8>),
    /// A signed directory.
    Directory(SignedDirectory),
    /// A membership log checkpoint (signed note).
    Checkpoint(String),
    /// Two checkpoints that contradict each other and the proof of it.
    SplitView {
        /// The first note.
        first: String,
        /// The second note.
        second: String,
        /// The consistency proof.
        proof: Vec<[u8; 32]>,
    },
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Answer with an error.
    Refuse(Refusal),
    /// Answer a push with "not taken" and this detail.
    Decline(&'static str),
    /// The Hello is accepted: mark the connection greeted with what it
    /// announced, push what is fresher here, answer with our Hello.
    Greet(Hello),
    /// Wait (bounded) for the trust data the peer announced, then decide
    /// again at [`Stage::CaughtUp`] on the trust state then.
    CatchUp {
        /// (CRL number, directory serial) to wait for.
        announced: (u64, u64),
        /// The request, to decide again.
        body: request::Body,
    },
    /// Pass to the handler.
    Serve(Serve),
    /// Offer pushed data.
    Take(Push),
}

/// A counter of [`super::MeshStats`] a decision adds one to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    /// `rate_limited`.
    RateLimited,
    /// `sender_refused`.
    SenderRefused,
    /// `below_baseline`.
    BelowBaseline,
}

/// A decision and the counter it adds to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// What to do.
    pub(crate) decision: Decision,
    /// What to count.
    pub(crate) count: Option<Count>,
}

impl From<Decision> for Outcome {
    fn from(decision: Decision) -> Self {
        Self {
            decision,
            count: None,
        }
    }
}

fn refuse(code: Code, message: impl Into<String>) -> Decision {
    Decision::Refuse(Refusal {
        code,
        message: message.into(),
        close: None,
    })
}

fn counted(decision: Decision, count: Count) -> Outcome {
    Outcome {
        decision,
        count: Some(count),
    }
}

/// Compares dotted numeric versions ("0.10.2" > "0.9"); non-numeric parts count as 0.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .take(4)
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let (mut x, mut y) = (parse(a), parse(b));
    let n = x.len().max(y.len());
    x.resize(n, 0);
    y.resize(n, 0);
    x < y
}

/// True while the peer's certificate is not revoked and is listed for it
/// in the directory.
pub(crate) fn still_member(st: &TrustState, id: &PeerIdentity) -> bool {
    let revoked = st
        .crl
        .as_ref()
        .is_some_and(|c| c.revoked.contains(&id.serial));
    let listed = st
        .member(&id.member_id)
        .is_some_and(|m| m.cert_sha256.contains(&id.sha256));
    !revoked && listed
}

/// Takes a token from a peer's bucket (made full at the first request),
/// after refilling it for the time since it was last looked at. False when
/// there is none: the request is refused.
pub(crate) fn take_token(bucket: &mut Option<Bucket>, cfg: &MeshConfig, now: Instant) -> bool {
    let b = bucket.get_or_insert(Bucket {
        tokens: cfg.rate_burst,
        at: now,
    });
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * cfg.rate_per_second).min(cfg.rate_burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// What the security baseline says of a peer's software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Baseline {
    /// At or above the directory's `min_software_version` (or none is
    /// set): the peer's flag is cleared.
    Met,
    /// Below it, flagged, within the grace period: still served.
    Grace,
    /// Below it past the grace period: refused.
    Refuse,
}

/// Flags a peer below the directory's baseline (`flag` keeps since when)
/// and, `grace` after the flag was set, refuses it; a peer at or above the
/// baseline is unflagged.
pub(crate) fn baseline(
    flag: &mut Option<Instant>,
    peer: &str,
    version: &str,
    st: &TrustState,
    grace: Duration,
    now: Instant,
) -> Baseline {
    let min = st
        .directory
        .as_ref()
        .map_or("", |d| d.directory.min_software_version.as_str());
    if min.is_empty() || !version_lt(version, min) {
        *flag = None;
        return Baseline::Met;
    }
    let since = *flag.get_or_insert(now);
    let within_grace = now.saturating_duration_since(since) < grace;
    tracing::warn!(peer, version, baseline = %min, within_grace,
        "peer runs software below the security baseline");
    if within_grace {
        Baseline::Grace
    } else {
        Baseline::Refuse
    }
}

/// The lower-cased domain of an address (`None` without an `@`).
fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
}

/// Decides what to do with a request (`body`, `None` for an empty one) at
/// `stage`. Updates `state` (the rate bucket at [`Stage::Arrived`], the
/// baseline flag on a Hello) and nothing else.
pub(crate) fn decide(
    cx: &Context<'_>,
    stage: Stage,
    state: &mut PeerState,
    body: Option<request::Body>,
) -> Outcome {
    let peer = cx.peer;
    let own = cx.cfg.member_id.as_str();
    if stage == Stage::Arrived && !take_token(&mut state.bucket, cx.cfg, cx.now) {
        return counted(
            refuse(Code::RateLimited, "rate limit exceeded"),
            Count::RateLimited,
        );
    }
    let Some(body) = body else {
        return refuse(Code::Malformed, "empty request").into();
    };
    if !matches!(body, request::Body::Hello(_)) && !cx.greeting.greeted {
        return refuse(Code::Refused, "send Hello first").into();
    }
    if matches!(
        body,
        request::Body::Deliver(_) | request::Body::PrivacyQuery(_)
    ) {
        if stage == Stage::Arrived {
            // A member that learnt of its own revocation (or delisting) has
            // left the mesh: it takes nothing more over it. A sender with
            // staler trust data backs off and, once it learns, falls back
            // to SMTP, rather than storing mail here over a link it will
            // cut (the answer could then be lost, and the mail sent twice).
            if cx.trust.directory.is_some() && cx.trust.member(own).is_none() {
                tracing::warn!(peer = %peer.member_id, "request refused: this member's label was withdrawn");
                return refuse(
                    Code::Unavailable,
                    "this member's label was withdrawn: use SMTP",
                )
                .into();
            }
            // A peer that dialed us knowing fresher trust data than ours
            // (we were cut off) pushes it: take it before serving the
            // peer, and serve it only if it is still a member.
            let (crl, directory) = cx.greeting.announced;
            if cx.trust.crl_number() < crl || cx.trust.directory_serial() < directory {
                return Decision::CatchUp {
                    announced: (crl, directory),
                    body,
                }
                .into();
            }
        }
        if !still_member(cx.trust, peer) {
            tracing::warn!(peer = %peer.member_id, "request refused: the peer is no longer a member");
            return refuse(
                Code::Refused,
                "your certificate is revoked or no longer listed",
            )
            .into();
        }
    }
    match body {
        request::Body::Hello(h) => {
            if h.protocol_version != MESH_PROTOCOL_VERSION {
                return refuse(
                    Code::Unsupported,
                    format!(
                        "mesh protocol {} not supported (this member speaks {MESH_PROTOCOL_VERSION})",
                        h.protocol_version
                    ),
                )
                .into();
            }
            let verdict = baseline(
                &mut state.below_baseline_since,
                &peer.member_id,
                &h.software_version,
                cx.trust,
                cx.cfg.baseline_grace,
                cx.now,
            );
            match verdict {
                Baseline::Met => Decision::Greet(h).into(),
                Baseline::Grace => counted(Decision::Greet(h), Count::BelowBaseline),
                Baseline::Refuse => counted(
                    Decision::Refuse(Refusal {
                        code: Code::Refused,
                        message: BELOW_BASELINE_MSG.into(),
                        close: Some((CLOSE_BELOW_BASELINE, "below baseline")),
                    }),
                    Count::BelowBaseline,
                ),
            }
        }
        request::Body::Deliver(d) => deliver(cx, d),
        request::Body::HandoverChunk(c) => {
            // Only from a member the directory says handed over to this
            // one, or for an account move with a code (the handler checks
            // it against what its operator accepted).
            if c.code.is_empty() && !cx.trust.handed_over(&peer.member_id, own) {
                tracing::warn!(peer = %peer.member_id, "handover refused: not our predecessor");
                return refuse(
                    Code::Refused,
                    format!(
                        "the directory does not say that {} handed over to {own}",
                        peer.member_id
                    ),
                )
                .into();
            }
            Decision::Serve(Serve::Handover(c)).into()
        }
        request::Body::MoveNotice(n) => {
            let old_ok = domain_of(&n.old_address).is_some_and(|d| {
                peer.domains.contains(&d)
                    || cx
                        .trust
                        .member(&peer.member_id)
                        .is_some_and(|m| m.domains.contains(&d))
            });
            let new_ok =
                domain_of(&n.new_address).is_some_and(|d| cx.trust.member_for_domain(&d).is_some());
            if !old_ok || !new_ok {
                tracing::warn!(peer = %peer.member_id, old = %n.old_address,
                    new = %n.new_address, "move notice refused");
                return refuse(
                    Code::Refused,
                    "a move notice names an address of the sender and one at a labelled member",
                )
                .into();
            }
            Decision::Serve(Serve::Move(n)).into()
        }
        request::Body::PrivacyQuery(q) => Decision::Serve(Serve::Privacy(q)).into(),
        request::Body::CrlPush(c) => Decision::Take(Push::Crl(c.crl_der)).into(),
        request::Body::CheckpointPush(c) => {
            if !cx.keeps_log {
                return Decision::Decline(NO_LOG).into();
            }
            Decision::Take(Push::Checkpoint(c.note)).into()
        }
        request::Body::SplitViewPush(p) => {
            if !cx.keeps_log {
                return Decision::Decline(NO_LOG).into();
            }
            let mut proof = Vec::with_capacity(p.proof.len());
            for h in &p.proof {
                let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) else {
                    return refuse(Code::Malformed, "split-view proof hashes must be 32 bytes")
                        .into();
                };
                proof.push(h);
            }
            Decision::Take(Push::SplitView {
                first: p.first_note,
                second: p.second_note,
                proof,
            })
            .into()
        }
        request::Body::DirectoryPush(d) => match d.directory {
            Some(signed) => Decision::Take(Push::Directory(signed)).into(),
            None => refuse(Code::Malformed, "empty directory push").into(),
        },
    }
}

/// The detail of a log push to a member that keeps no membership log.
pub(crate) const NO_LOG: &str = "this member keeps no membership log";

/// A Deliver's own rules: well formed, and the sender domain binding.
fn deliver(cx: &Context<'_>, d: Deliver) -> Outcome {
    let peer = cx.peer;
    if d.txn_id.len() != 32 || d.rcpt_to.is_empty() {
        return refuse(
            Code::Malformed,
            "txn_id must be 32 bytes and rcpt_to non-empty",
        )
        .into();
    }
    if !d.mail_from.is_empty() {
        let domain = domain_of(&d.mail_from).unwrap_or_default();
        // A member that handed over to this one forwards what still
        // reaches it, from any sender, to the domains it handed over (and
        // only those).
        let predecessor = cx.trust.handed_over(&peer.member_id, &cx.cfg.member_id)
            && cx.trust.member(&peer.member_id).is_some_and(|m| {
                d.rcpt_to
                    .iter()
                    .all(|r| domain_of(r).is_some_and(|dom| m.domains.contains(&dom)))
            });
        if !peer.domains.contains(&domain) && !predecessor {
            tracing::warn!(peer = %peer.member_id, sender = %d.mail_from,
                "delivery refused: sender domain not in the peer's certificate");
            return counted(
                refuse(
                    Code::Refused,
                    format!(
                        "sender domain {domain:?} is not served by {}",
                        peer.member_id
                    ),
                ),
                Count::SenderRefused,
            );
        }
    }
    Decision::Serve(Serve::Deliver(d)).into()
}

#[cfg(test)]
mod tests;

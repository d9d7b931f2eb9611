//! The protocol's rules as a table of cases on simulated time: a [`World`]
//! holds one member (`self`), one peer (`peer`) and a third member
//! (`other`), the trust state, the connection's greeting, the peer's state
//! and a clock that only moves when a test advances it (as quinn-proto's
//! `tests/util.rs` drives its connections). A request goes through
//! [`decide`] as the node would send it; an accepted Hello updates the
//! greeting as `serve.rs` does.

use super::*;
use crate::trust::{CrlInfo, DirectoryInfo};
use caliopen_proto::pb::directory::{Directory, DirectoryMember};
use caliopen_proto::pb::mesh::{CheckpointPush, DirectoryPush, SplitViewPush};
use caliopen_proto::Label;
use std::collections::HashSet;

const PEER_SERIAL: &[u8] = &[0x0a, 0x0b];
const PEER_CERT: &[u8] = &[2; 32];

fn member(id: &str, domains: &[&str], cert: &[u8]) -> DirectoryMember {
    DirectoryMember {
        member_id: id.into(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        cert_sha256: vec![cert.to_vec()],
        ..Default::default()
    }
}

fn trust(members: Vec<DirectoryMember>, min_version: &str, revoked: &[&[u8]]) -> TrustState {
    TrustState {
        roots: Vec::new(),
        root_keys: Vec::new(),
        crl: Some(CrlInfo {
            number: 1,
            der: Vec::new(),
            revoked: revoked.iter().map(|s| s.to_vec()).collect::<HashSet<_>>(),
            next_update: 0,
        }),
        directory: Some(DirectoryInfo {
            directory: Directory {
                serial: 1,
                min_software_version: min_version.into(),
                members,
                ..Default::default()
            },
            signed: Default::default(),
        }),
        accepted_charters: Vec::new(),
        client_verifier: None,
        server_verifier: None,
    }
}

fn crl_number(t: &mut TrustState, n: u64) {
    if let Some(c) = t.crl.as_mut() {
        c.number = n;
    }
}

fn members() -> Vec<DirectoryMember> {
    vec![
        member("self", &["self.test"], &[1; 32]),
        member("peer", &["peer.test"], PEER_CERT),
        member("other", &["other.test"], &[3; 32]),
    ]
}

/// One member's view of one peer, on a clock of its own.
struct World {
    cfg: MeshConfig,
    trust: TrustState,
    peer: PeerIdentity,
    greeting: Greeting,
    state: PeerState,
    keeps_log: bool,
    now: Instant,
}

impl World {
    fn new() -> Self {
        let mut cfg = MeshConfig::new("self");
        cfg.rate_per_second = 4.0;
        cfg.rate_burst = 1_000.0;
        Self {
            cfg,
            trust: trust(members(), "", &[]),
            peer: PeerIdentity {
                member_id: "peer".into(),
                domains: vec!["peer.test".into()],
                serial: PEER_SERIAL.to_vec(),
                sha256: PEER_CERT.to_vec(),
                label: Label {
                    version: 1,
                    member_id: "peer".into(),
                    charter_version: "1".into(),
                    successor: None,
                },
            },
            greeting: Greeting::default(),
            state: PeerState::default(),
            keeps_log: false,
            now: Instant::now(),
        }
    }

    /// Moves the simulated clock on.
    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn decide_at(&mut self, stage: Stage, body: Option<request::Body>) -> Outcome {
        let cx = Context {
            cfg: &self.cfg,
            trust: &self.trust,
            peer: &self.peer,
            greeting: self.greeting,
            keeps_log: self.keeps_log,
            now: self.now,
        };
        let out = decide(&cx, stage, &mut self.state, body);
        if let Decision::Greet(h) = &out.decision {
            self.greeting = Greeting {
                greeted: true,
                announced: (h.crl_number, h.directory_serial),
            };
        }
        out
    }

    /// A request as it arrives off a stream.
    fn send(&mut self, body: request::Body) -> Outcome {
        self.decide_at(Stage::Arrived, Some(body))
    }

    fn hello(&mut self, version: &str) -> Outcome {
        self.send(request::Body::Hello(hello(version)))
    }
}

fn hello(version: &str) -> Hello {
    Hello {
        protocol_version: MESH_PROTOCOL_VERSION,
        software_version: version.into(),
        member_id: "peer".into(),
        crl_number: 1,
        directory_serial: 1,
        ..Default::default()
    }
}

fn deliver_body(from: &str, to: &[&str]) -> request::Body {
    request::Body::Deliver(Deliver {
        txn_id: vec![7; 32],
        mail_from: from.into(),
        rcpt_to: to.iter().map(|r| (*r).to_owned()).collect(),
        message: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        accepted_at: 1,
    })
}

fn privacy_body() -> request::Body {
    request::Body::PrivacyQuery(PrivacyQuery::default())
}

/// The code and message of a refusal (panics on anything else).
fn refused(o: &Outcome) -> (Code, &str) {
    match &o.decision {
        Decision::Refuse(r) => (r.code, r.message.as_str()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn is_greet(o: &Outcome) -> bool {
    matches!(o.decision, Decision::Greet(_))
}

fn is_serve(o: &Outcome) -> bool {
    matches!(o.decision, Decision::Serve(_))
}

#[test]
fn versions_compare_numerically() {
    assert!(version_lt("0.9.0", "0.10.0"));
    assert!(version_lt("0.1", "0.1.1"));
    assert!(!version_lt("1.0.0", "1.0"));
    assert!(!version_lt("2.0.0", "1.9.9"));
    assert!(version_lt("garbage", "0.0.1"));
}

/// Nothing but a Hello is taken before the connection's Hello was
/// accepted; afterwards the same request is served.
#[test]
fn hello_comes_first() {
    let mut w = World::new();
    for body in [
        deliver_body("a@peer.test", &["u@self.test"]),
        privacy_body(),
        request::Body::CrlPush(Default::default()),
        request::Body::MoveNotice(Default::default()),
        request::Body::HandoverChunk(Default::default()),
    ] {
        let o = w.send(body);
        assert_eq!(refused(&o), (Code::Refused, "send Hello first"));
    }
    let o = w.decide_at(Stage::Arrived, None);
    assert_eq!(refused(&o), (Code::Malformed, "empty request"));
    assert!(is_greet(&w.hello("0.1.0")));
    assert!(is_serve(
        &w.send(deliver_body("a@peer.test", &["u@self.test"]))
    ));
    // A connection we dialed starts greeted (its Hello was checked there).
    let mut dialed = World::new();
    dialed.greeting.greeted = true;
    assert!(is_serve(&dialed.send(privacy_body())));
}

#[test]
fn another_protocol_version_is_unsupported() {
    let mut w = World::new();
    let mut h = hello("0.1.0");
    h.protocol_version = MESH_PROTOCOL_VERSION + 1;
    let o = w.send(request::Body::Hello(h));
    let (code, msg) = refused(&o);
    assert_eq!(code, Code::Unsupported);
    assert!(msg.starts_with("mesh protocol"), "{msg}");
    assert!(!w.greeting.greeted);
}

/// A peer below the directory's baseline is served (and counted) within
/// `baseline_grace` of being first seen below it, refused with the
/// connection closed once the grace has run out, and unflagged when it
/// upgrades (a later downgrade starts a new grace period).
#[test]
fn baseline_grace_expires_and_an_upgrade_clears_the_flag() {
    let mut w = World::new();
    w.trust = trust(members(), "0.5.0", &[]);
    let grace = w.cfg.baseline_grace;
    assert_eq!(grace, Duration::from_secs(7 * 24 * 3600), "the default");

    let o = w.hello("0.4.9");
    assert!(is_greet(&o));
    assert_eq!(o.count, Some(Count::BelowBaseline));
    let flagged_at = w.now;
    assert_eq!(w.state.below_baseline_since, Some(flagged_at));

    w.advance(grace - Duration::from_secs(1));
    let o = w.hello("0.4.9");
    assert!(is_greet(&o), "still within the grace: {o:?}");
    assert_eq!(o.count, Some(Count::BelowBaseline));
    assert_eq!(
        w.state.below_baseline_since,
        Some(flagged_at),
        "the flag keeps its first time"
    );

    w.advance(Duration::from_secs(1));
    let o = w.hello("0.4.9");
    assert_eq!(refused(&o), (Code::Refused, BELOW_BASELINE_MSG));
    assert_eq!(o.count, Some(Count::BelowBaseline));
    match &o.decision {
        Decision::Refuse(r) => assert_eq!(r.close, Some((CLOSE_BELOW_BASELINE, "below baseline"))),
        _ => unreachable!(),
    }

    // The peer upgrades: served, not counted, unflagged.
    let o = w.hello("0.5.0");
    assert!(is_greet(&o));
    assert_eq!(o.count, None);
    assert_eq!(w.state.below_baseline_since, None);

    // Below again later: a new grace period from now.
    w.advance(grace * 3);
    let o = w.hello("0.4.0");
    assert!(is_greet(&o));
    assert_eq!(w.state.below_baseline_since, Some(w.now));

    // No baseline in the directory: never flagged.
    let mut w = World::new();
    let o = w.hello("0.0.1");
    assert!(is_greet(&o));
    assert_eq!((o.count, w.state.below_baseline_since), (None, None));
}

#[test]
fn a_zero_grace_refuses_at_once() {
    let mut w = World::new();
    w.trust = trust(members(), "0.5.0", &[]);
    w.cfg.baseline_grace = Duration::ZERO;
    assert_eq!(refused(&w.hello("0.4.0")).1, BELOW_BASELINE_MSG);
}

/// The trust state changes between the Hello and the Deliver: a peer
/// revoked (CRL) or delisted (its certificate gone from the directory)
/// meanwhile is refused, for a Deliver and a privacy query alike.
#[test]
fn a_peer_revoked_or_delisted_after_its_hello_is_refused() {
    let msg = "your certificate is revoked or no longer listed";
    let mut w = World::new();
    assert!(is_greet(&w.hello("0.1.0")));
    assert!(is_serve(
        &w.send(deliver_body("a@peer.test", &["u@self.test"]))
    ));

    w.trust = trust(members(), "", &[PEER_SERIAL]);
    let o = w.send(deliver_body("a@peer.test", &["u@self.test"]));
    assert_eq!(refused(&o), (Code::Refused, msg));
    assert_eq!(refused(&w.send(privacy_body())), (Code::Refused, msg));

    // Another serial revoked: still served.
    w.trust = trust(members(), "", &[&[0x99]]);
    assert!(is_serve(&w.send(privacy_body())));

    // Delisted: the directory no longer lists its certificate.
    let mut m = members();
    m[1].cert_sha256 = vec![vec![9; 32]];
    w.trust = trust(m, "", &[]);
    assert_eq!(refused(&w.send(privacy_body())), (Code::Refused, msg));
    let mut m = members();
    m.remove(1);
    w.trust = trust(m, "", &[]);
    assert_eq!(refused(&w.send(privacy_body())), (Code::Refused, msg));
}

/// A peer whose Hello announced fresher trust data than held gets its
/// Deliver decided only after a wait for that data, on the state then.
#[test]
fn a_staler_receiver_catches_up_before_serving() {
    let mut w = World::new();
    let mut h = hello("0.1.0");
    h.crl_number = 2;
    assert!(is_greet(&w.send(request::Body::Hello(h))));
    assert_eq!(w.greeting.announced, (2, 1));

    let o = w.send(deliver_body("a@peer.test", &["u@self.test"]));
    let Decision::CatchUp { announced, body } = o.decision else {
        panic!("expected a catch-up, got {o:?}");
    };
    assert_eq!(announced, (2, 1));
    // The CRL the peer announced revokes it.
    w.trust = trust(members(), "", &[PEER_SERIAL]);
    crl_number(&mut w.trust, 2);
    let o = w.decide_at(Stage::CaughtUp, Some(body.clone()));
    assert_eq!(
        refused(&o),
        (
            Code::Refused,
            "your certificate is revoked or no longer listed"
        )
    );
    // Or it does not: served, and deciding again took no rate token.
    w.trust = trust(members(), "", &[]);
    crl_number(&mut w.trust, 2);
    let before = w.state.bucket;
    assert!(is_serve(&w.decide_at(Stage::CaughtUp, Some(body))));
    assert_eq!(w.state.bucket, before);
    // Once fresh, no wait.
    assert!(is_serve(&w.send(privacy_body())));
}

/// Burst used up: RateLimited (counted); the bucket refills at
/// `rate_per_second`, one token per 1/rate seconds.
#[test]
fn the_rate_limit_refills_one_token_per_period() {
    let mut w = World::new();
    w.cfg.rate_per_second = 4.0; // one token per 250 ms
    w.cfg.rate_burst = 3.0;
    assert!(is_greet(&w.hello("0.1.0")));
    assert!(is_serve(&w.send(privacy_body())));
    assert!(is_serve(&w.send(privacy_body())));
    let o = w.send(privacy_body());
    assert_eq!(refused(&o), (Code::RateLimited, "rate limit exceeded"));
    assert_eq!(o.count, Some(Count::RateLimited));
    // A Hello is no exception.
    assert_eq!(refused(&w.hello("0.1.0")).0, Code::RateLimited);

    w.advance(Duration::from_millis(125));
    assert_eq!(refused(&w.send(privacy_body())).0, Code::RateLimited);
    w.advance(Duration::from_millis(125));
    let o = w.send(privacy_body());
    assert!(is_serve(&o), "a token after 1/rate seconds: {o:?}");
    assert_eq!(o.count, None);
    assert_eq!(refused(&w.send(privacy_body())).0, Code::RateLimited);

    // A long pause refills up to the burst, no more.
    w.advance(Duration::from_secs(3600));
    for _ in 0..3 {
        assert!(is_serve(&w.send(privacy_body())));
    }
    assert_eq!(refused(&w.send(privacy_body())).0, Code::RateLimited);
}

/// The envelope sender's domain must be one of the peer's certificate
/// (not merely of its directory entry); the null sender passes.
#[test]
fn the_sender_domain_must_be_in_the_certificate() {
    let mut w = World::new();
    assert!(is_greet(&w.hello("0.1.0")));
    let ok = w.send(deliver_body("a@peer.test", &["u@self.test"]));
    assert!(is_serve(&ok));
    assert_eq!(ok.count, None);
    assert!(is_serve(
        &w.send(deliver_body("A@PEER.Test", &["u@self.test"]))
    ));
    assert!(is_serve(&w.send(deliver_body("", &["u@self.test"]))));

    let o = w.send(deliver_body("a@other.test", &["u@self.test"]));
    assert_eq!(
        refused(&o),
        (
            Code::Refused,
            "sender domain \"other.test\" is not served by peer"
        )
    );
    assert_eq!(o.count, Some(Count::SenderRefused));
    assert_eq!(
        refused(&w.send(deliver_body("no-domain", &["u@self.test"]))).0,
        Code::Refused
    );

    // Listed in the directory but not in the certificate: refused.
    let mut m = members();
    m[1].domains.push("extra.test".into());
    w.trust = trust(m, "", &[]);
    assert_eq!(
        refused(&w.send(deliver_body("a@extra.test", &["u@self.test"]))).0,
        Code::Refused
    );

    let mut d = deliver_body("a@peer.test", &["u@self.test"]);
    if let request::Body::Deliver(d) = &mut d {
        d.txn_id.pop();
    }
    assert_eq!(
        refused(&w.send(d)),
        (
            Code::Malformed,
            "txn_id must be 32 bytes and rcpt_to non-empty"
        )
    );
    assert_eq!(
        refused(&w.send(deliver_body("a@peer.test", &[]))).0,
        Code::Malformed
    );
}

/// A member that handed over to this one forwards mail from any sender,
/// but only to the domains it handed over; a handover chunk is taken only
/// from it (or with an account move's code).
#[test]
fn a_predecessor_forwards_only_to_the_domains_it_handed_over() {
    let handed = || {
        let mut m = members();
        m[1].handed_over_to = "self".into();
        trust(m, "", &[])
    };
    let mut w = World::new();
    w.trust = handed();
    assert!(is_greet(&w.hello("0.1.0")));
    assert!(is_serve(
        &w.send(deliver_body("x@elsewhere.test", &["u@peer.test"]))
    ));
    assert!(is_serve(&w.send(deliver_body(
        "x@elsewhere.test",
        &["u@PEER.test", "v@peer.test"]
    ))));
    let o = w.send(deliver_body(
        "x@elsewhere.test",
        &["u@peer.test", "v@other.test"],
    ));
    assert_eq!(o.count, Some(Count::SenderRefused));
    assert_eq!(refused(&o).0, Code::Refused);
    assert!(is_serve(
        &w.send(request::Body::HandoverChunk(HandoverChunk::default()))
    ));

    // Handed over to someone else, or not at all: no forwarding, no chunks.
    for successor in ["other", ""] {
        let mut m = members();
        m[1].handed_over_to = successor.into();
        w.trust = trust(m, "", &[]);
        assert_eq!(
            refused(&w.send(deliver_body("x@elsewhere.test", &["u@peer.test"]))).0,
            Code::Refused
        );
        let o = w.send(request::Body::HandoverChunk(HandoverChunk::default()));
        assert_eq!(
            refused(&o),
            (
                Code::Refused,
                "the directory does not say that peer handed over to self"
            )
        );
        // An account move carries a code: the handler checks it.
        let o = w.send(request::Body::HandoverChunk(HandoverChunk {
            code: "ABCD".into(),
            ..Default::default()
        }));
        assert!(is_serve(&o));
    }
}

/// A member whose own label was withdrawn takes no Deliver or privacy
/// query (the sender falls back to SMTP); a Hello and pushes still go.
#[test]
fn own_label_withdrawn_answers_unavailable() {
    let mut w = World::new();
    assert!(is_greet(&w.hello("0.1.0")));
    let mut m = members();
    m.remove(0);
    w.trust = trust(m, "", &[]);
    let msg = "this member's label was withdrawn: use SMTP";
    let o = w.send(deliver_body("a@peer.test", &["u@self.test"]));
    assert_eq!(refused(&o), (Code::Unavailable, msg));
    assert_eq!(refused(&w.send(privacy_body())), (Code::Unavailable, msg));
    assert!(is_greet(&w.hello("0.1.0")));
    assert!(matches!(
        w.send(request::Body::CrlPush(Default::default())).decision,
        Decision::Take(Push::Crl(_))
    ));
    // No directory at all is not a withdrawal (nor a catch-up, for a
    // Hello that announced none).
    w.trust.directory = None;
    w.greeting.announced = (0, 0);
    let o = w.send(privacy_body());
    assert_eq!(
        refused(&o).1,
        "your certificate is revoked or no longer listed"
    );
}

/// A move notice names an address of the sender (certificate or
/// directory) and one at a labelled member.
#[test]
fn move_notices_name_the_senders_address_and_a_members() {
    let mut w = World::new();
    let mut m = members();
    m[1].domains.push("old.test".into());
    w.trust = trust(m, "", &[]);
    assert!(is_greet(&w.hello("0.1.0")));
    let notice = |old: &str, new: &str| {
        request::Body::MoveNotice(MoveNotice {
            old_address: old.into(),
            new_address: new.into(),
            moved_at: 1,
        })
    };
    assert!(is_serve(&w.send(notice("a@peer.test", "a@other.test"))));
    assert!(is_serve(&w.send(notice("a@OLD.test", "a@Other.test"))));
    for (old, new) in [
        ("a@other.test", "a@self.test"),
        ("a@peer.test", "a@nowhere.test"),
        ("a", "a@other.test"),
        ("a@peer.test", "a"),
    ] {
        let o = w.send(notice(old, new));
        assert_eq!(
            refused(&o),
            (
                Code::Refused,
                "a move notice names an address of the sender and one at a labelled member"
            ),
            "{old} -> {new}"
        );
    }
}

#[test]
fn pushes_are_shaped_before_they_are_offered() {
    let mut w = World::new();
    assert!(is_greet(&w.hello("0.1.0")));
    let o = w.send(request::Body::DirectoryPush(DirectoryPush {
        directory: None,
    }));
    assert_eq!(refused(&o), (Code::Malformed, "empty directory push"));
    let checkpoint = || {
        request::Body::CheckpointPush(CheckpointPush {
            note: "note".into(),
        })
    };
    let split = |len: usize| {
        request::Body::SplitViewPush(SplitViewPush {
            first_note: "a".into(),
            second_note: "b".into(),
            proof: vec![vec![0; 32], vec![0; len]],
        })
    };
    assert_eq!(w.send(checkpoint()).decision, Decision::Decline(NO_LOG));
    assert_eq!(w.send(split(32)).decision, Decision::Decline(NO_LOG));
    w.keeps_log = true;
    assert_eq!(
        w.send(checkpoint()).decision,
        Decision::Take(Push::Checkpoint("note".into()))
    );
    assert_eq!(
        refused(&w.send(split(31))),
        (Code::Malformed, "split-view proof hashes must be 32 bytes")
    );
    assert!(matches!(
        w.send(split(32)).decision,
        Decision::Take(Push::SplitView { proof, .. }) if proof.len() == 2
    ));
}

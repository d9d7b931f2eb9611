//! Health endpoint and Prometheus metrics, over a minimal HTTP/1.1 server on
//! a local address (`[metrics] listen`): `GET /health` and `GET /metrics`.

use caliopen_federation::{MeshNode, Outbox};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Counters of a running instance.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages stored for local users, by path: smtp, local, mesh.
    pub stored_smtp: AtomicU64,
    /// Submitted by a local user for a local user.
    pub stored_local: AtomicU64,
    /// Received from another member.
    pub stored_mesh: AtomicU64,
    /// Queued for another member (mesh outbox).
    pub queued_mesh: AtomicU64,
    /// Queued for the SMTP relay.
    pub queued_smtp: AtomicU64,
    /// Delivered to another member.
    pub sent_mesh: AtomicU64,
    /// Handed to the SMTP relay, with STARTTLS.
    pub sent_smtp_tls: AtomicU64,
    /// Handed to the SMTP relay in clear.
    pub sent_smtp_plain: AtomicU64,
    /// Bounces generated.
    pub bounces: AtomicU64,
    /// Inbound messages refused for their domain's DMARC `p=reject`.
    pub inbound_rejected_dmarc: AtomicU64,
    /// Inbound messages filed as junk by the sender checks.
    pub inbound_junk: AtomicU64,
    /// Direct deliveries made under an MTA-STS `enforce` policy.
    pub mta_sts_enforced: AtomicU64,
    /// Delivery attempts deferred because an `enforce` policy forbade them.
    pub mta_sts_refused: AtomicU64,
    /// Deliveries a `testing` policy would have refused.
    pub mta_sts_testing_violations: AtomicU64,
    /// TLS certificates read again after a change on disk.
    pub tls_reloads: AtomicU64,
    /// Changed TLS certificate files that could not be used.
    pub tls_reload_failures: AtomicU64,
    /// Recipients an alias forwarded to other domains (SRS).
    pub forwarded: AtomicU64,
    /// Certificates obtained from the ACME server and served.
    pub acme_renewed: AtomicU64,
    /// ACME attempts that failed.
    pub acme_failed: AtomicU64,
    /// 1 while ACME renewal keeps failing (the alarm), else 0.
    pub acme_failing: AtomicU64,
    /// Seconds the certificate served has left (ACME on only).
    pub acme_expiry_seconds: std::sync::atomic::AtomicI64,
    /// Whether ACME is configured (its metrics are shown only then).
    pub acme_on: std::sync::atomic::AtomicBool,
    /// Messages DKIM-signed on their way out.
    pub dkim_signed: AtomicU64,
    /// Messages leaving unsigned (no key for their From: domain).
    pub dkim_unsigned: AtomicU64,
    /// Messages leaving unsigned because signing failed.
    pub dkim_failed: AtomicU64,
    /// RCPT refused: unknown local user.
    pub rcpt_unknown_user: AtomicU64,
    /// RCPT refused: relaying denied.
    pub rcpt_relay_denied: AtomicU64,
    /// RCPT (or a whole message) refused for now: the mailbox is full.
    pub rcpt_mailbox_full: AtomicU64,
    /// SMTP connections refused: too many from one address.
    pub smtp_refused_per_ip: AtomicU64,
    /// Public level queries from peers answered.
    pub privacy_answered: AtomicU64,
    /// Public level queries refused (malformed, bucket too large).
    pub privacy_refused: AtomicU64,
    /// Public level queries refused by the per-peer rate limit.
    pub privacy_rate_limited: AtomicU64,
    /// Public level queries this instance sent.
    pub privacy_asked: AtomicU64,
    /// Public level lookups served from the cache.
    pub privacy_cache_hits: AtomicU64,
    /// SMTP queue writes that failed (retry schedule, removal).
    pub smtp_queue_write_failed: AtomicU64,
    /// Submissions refused: the From: header was not the user's.
    pub from_header_refused: AtomicU64,
    /// The client API listener's refusals.
    pub api_listener: Arc<crate::limits::ListenerMetrics>,
    /// The IMAP listener's refusals.
    pub imap_listener: Arc<crate::limits::ListenerMetrics>,
    /// IMAP connections open now.
    pub imap_sessions: AtomicU64,
    /// IMAP connections in IDLE now.
    pub imap_idling: AtomicU64,
    /// The web client listener's refusals.
    pub web_listener: Arc<crate::limits::ListenerMetrics>,
    /// Web client sessions open now.
    pub web_sessions: AtomicU64,
    /// Web client logins, by outcome.
    pub web_logins_ok: AtomicU64,
    /// Web client logins refused (wrong password, throttled, busy).
    pub web_logins_refused: AtomicU64,
    /// Requests refused for a missing or wrong CSRF token.
    pub web_csrf_refused: AtomicU64,
    /// Remote resources (images, style sheets) blocked in displayed mail.
    pub web_remote_blocked: AtomicU64,
    /// Membership-log checkpoints this instance's witness cosigned.
    pub witness_cosigned: AtomicU64,
    /// Checkpoints the witness refused (any tlog-witness refusal).
    pub witness_refused: AtomicU64,
    /// Witness requests refused for their source's rate.
    pub witness_rate_limited: AtomicU64,
}

/// What the metrics page reads besides the counters.
#[derive(Clone)]
pub(crate) struct MetricsSources {
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The credential service (its counters).
    pub credentials: crate::login::Credentials,
    /// Messages waiting in the SMTP queue.
    pub smtp_waiting: Arc<dyn Fn() -> usize + Send + Sync>,
    /// The mesh node, when labelled.
    pub node: Option<MeshNode>,
    /// The mesh outbox, when labelled.
    pub outbox: Option<Outbox>,
    /// The membership-log monitor, when the log key is pinned.
    pub log: Option<std::sync::Arc<caliopen_federation::LogMonitor>>,
    /// The message body segments.
    pub bodies: Option<crate::store::bodies::Bodies>,
}

fn c(out: &mut String, name: &str, help: &str, labels: &[(&str, &str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (k, v, n) in labels {
        let _ = writeln!(out, "{name}{{{k}=\"{v}\"}} {n}");
    }
}

fn g(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// The Prometheus text exposition.
pub(crate) fn render(s: &MetricsSources) -> String {
    let m = &s.metrics;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    if let Some(b) = &s.bodies {
        let st = b.stats();
        c(
            &mut out,
            "caliopen_store_body_bytes_total",
            "Message body bytes written to the segment files, before and after compression.",
            &[
                ("form", "raw", l(&st.raw_bytes)),
                ("form", "stored", l(&st.stored_bytes)),
            ],
        );
        c(
            &mut out,
            "caliopen_store_body_records_total",
            "Body records written (new bodies and those copied forward by compaction).",
            &[
                ("how", "written", l(&st.written)),
                ("how", "relocated", l(&st.relocated)),
            ],
        );
        c(
            &mut out,
            "caliopen_store_segments_deleted_total",
            "Body segment files deleted by compaction.",
            &[("reason", "compacted", l(&st.segments_deleted))],
        );
        c(
            &mut out,
            "caliopen_store_refused_full_total",
            "Body writes refused because the disk is below its free-space reserve.",
            &[("reason", "min_free", l(&st.refused_full))],
        );
        let segs = b.segments();
        g(
            &mut out,
            "caliopen_store_segment_bytes",
            "Bytes of the body segment files.",
            segs.iter().map(|(_, n)| n).sum(),
        );
        g(
            &mut out,
            "caliopen_store_free_bytes",
            "Free bytes on the data directory's filesystem.",
            crate::store::bodies::free_bytes(b.dir()).unwrap_or(0),
        );
    }
    c(
        &mut out,
        "caliopen_messages_stored_total",
        "Messages stored for local users, by path.",
        &[
            ("via", "smtp", l(&m.stored_smtp)),
            ("via", "local", l(&m.stored_local)),
            ("via", "mesh", l(&m.stored_mesh)),
        ],
    );
    c(
        &mut out,
        "caliopen_messages_queued_total",
        "Messages queued for delivery elsewhere, by path.",
        &[
            ("path", "mesh", l(&m.queued_mesh)),
            ("path", "smtp", l(&m.queued_smtp)),
        ],
    );
    c(
        &mut out,
        "caliopen_messages_sent_total",
        "Messages delivered elsewhere, by path.",
        &[
            ("path", "mesh", l(&m.sent_mesh)),
            ("path", "smtp_starttls", l(&m.sent_smtp_tls)),
            ("path", "smtp_plain", l(&m.sent_smtp_plain)),
        ],
    );
    c(
        &mut out,
        "caliopen_inbound_filtered_total",
        "Inbound messages the sender checks refused or filed as junk.",
        &[
            ("action", "rejected_dmarc", l(&m.inbound_rejected_dmarc)),
            ("action", "junk", l(&m.inbound_junk)),
        ],
    );
    c(
        &mut out,
        "caliopen_tls_certificate_reloads_total",
        "Changes of the TLS certificate files: served, or refused (the previous one stays).",
        &[
            ("outcome", "served", l(&m.tls_reloads)),
            ("outcome", "refused", l(&m.tls_reload_failures)),
        ],
    );
    c(
        &mut out,
        "caliopen_forwarded_total",
        "Recipients an alias forwarded to other domains (envelope sender rewritten by SRS).",
        &[("kind", "alias", l(&m.forwarded))],
    );
    if m.acme_on.load(std::sync::atomic::Ordering::Relaxed) {
        c(
            &mut out,
            "caliopen_acme_certificates_total",
            "ACME attempts to obtain or renew the instance certificate, by outcome.",
            &[
                ("outcome", "issued", l(&m.acme_renewed)),
                ("outcome", "failed", l(&m.acme_failed)),
            ],
        );
        g(
            &mut out,
            "caliopen_acme_renewal_failing",
            "1 while ACME renewal keeps failing (3 in a row, or little lifetime left): page someone.",
            l(&m.acme_failing),
        );
        let _ = writeln!(
            out,
            "# HELP caliopen_acme_certificate_expiry_seconds Seconds until the certificate served expires.\n# TYPE caliopen_acme_certificate_expiry_seconds gauge\ncaliopen_acme_certificate_expiry_seconds {}",
            m.acme_expiry_seconds.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    c(
        &mut out,
        "caliopen_mta_sts_total",
        "Direct deliveries and MTA-STS policies of recipient domains.",
        &[
            ("outcome", "enforced", l(&m.mta_sts_enforced)),
            ("outcome", "refused", l(&m.mta_sts_refused)),
            (
                "outcome",
                "testing_violation",
                l(&m.mta_sts_testing_violations),
            ),
        ],
    );
    c(
        &mut out,
        "caliopen_dkim_messages_total",
        "Messages leaving the instance, by DKIM signing outcome.",
        &[
            ("outcome", "signed", l(&m.dkim_signed)),
            ("outcome", "no_key", l(&m.dkim_unsigned)),
            ("outcome", "failed", l(&m.dkim_failed)),
        ],
    );
    c(
        &mut out,
        "caliopen_bounces_total",
        "Delivery status notifications generated.",
        &[("kind", "dsn", l(&m.bounces))],
    );
    c(
        &mut out,
        "caliopen_smtp_rcpt_refused_total",
        "Recipients refused at RCPT, by reason.",
        &[
            ("reason", "unknown_user", l(&m.rcpt_unknown_user)),
            ("reason", "relay_denied", l(&m.rcpt_relay_denied)),
            ("reason", "mailbox_full", l(&m.rcpt_mailbox_full)),
        ],
    );
    c(
        &mut out,
        "caliopen_smtp_connections_refused_total",
        "SMTP connections refused, by reason.",
        &[("reason", "per_ip_limit", l(&m.smtp_refused_per_ip))],
    );
    c(
        &mut out,
        "caliopen_smtp_queue_write_failures_total",
        "SMTP queue writes that failed (retry schedule, removal); each is also logged.",
        &[("kind", "sled", l(&m.smtp_queue_write_failed))],
    );
    c(
        &mut out,
        "caliopen_submission_refused_total",
        "Submitted messages refused, by reason.",
        &[("reason", "from_header", l(&m.from_header_refused))],
    );
    let al = &m.api_listener;
    c(
        &mut out,
        "caliopen_api_connections_refused_total",
        "Client API connections refused or dropped, by reason.",
        &[
            ("reason", "limit", l(&al.refused_total)),
            ("reason", "per_ip_limit", l(&al.refused_per_ip)),
            ("reason", "handshake", l(&al.handshake_failed)),
        ],
    );
    let il = &m.imap_listener;
    c(
        &mut out,
        "caliopen_imap_connections_refused_total",
        "IMAP connections refused or dropped, by reason.",
        &[
            ("reason", "limit", l(&il.refused_total)),
            ("reason", "per_ip_limit", l(&il.refused_per_ip)),
            ("reason", "handshake", l(&il.handshake_failed)),
        ],
    );
    let wl = &m.web_listener;
    c(
        &mut out,
        "caliopen_web_connections_refused_total",
        "Web client connections refused or dropped, by reason.",
        &[
            ("reason", "limit", l(&wl.refused_total)),
            ("reason", "per_ip_limit", l(&wl.refused_per_ip)),
            ("reason", "handshake", l(&wl.handshake_failed)),
        ],
    );
    c(
        &mut out,
        "caliopen_web_logins_total",
        "Web client logins, by outcome.",
        &[
            ("outcome", "ok", l(&m.web_logins_ok)),
            ("outcome", "refused", l(&m.web_logins_refused)),
        ],
    );
    c(
        &mut out,
        "caliopen_web_csrf_refused_total",
        "Web client requests refused for a missing or wrong CSRF token or a foreign Origin.",
        &[("kind", "csrf", l(&m.web_csrf_refused))],
    );
    c(
        &mut out,
        "caliopen_witness_checkpoints_total",
        "Membership-log checkpoints submitted to this instance's witness, by outcome.",
        &[
            ("outcome", "cosigned", l(&m.witness_cosigned)),
            ("outcome", "refused", l(&m.witness_refused)),
            ("outcome", "rate_limited", l(&m.witness_rate_limited)),
        ],
    );
    c(
        &mut out,
        "caliopen_web_remote_blocked_total",
        "Remote resources (trackers, images, style sheets) blocked in mail shown by the web client.",
        &[("kind", "remote", l(&m.web_remote_blocked))],
    );
    g(
        &mut out,
        "caliopen_web_sessions",
        "Web client sessions open.",
        l(&m.web_sessions),
    );
    g(
        &mut out,
        "caliopen_imap_sessions",
        "IMAP connections open.",
        l(&m.imap_sessions),
    );
    g(
        &mut out,
        "caliopen_imap_idling",
        "IMAP connections waiting in IDLE.",
        l(&m.imap_idling),
    );
    let lm = s.credentials.metrics();
    c(
        &mut out,
        "caliopen_logins_total",
        "Login attempts through the credential service, by outcome (every front end).",
        &[
            ("outcome", "granted", l(&lm.granted)),
            ("outcome", "invalid", l(&lm.invalid)),
            ("outcome", "throttled", l(&lm.throttled)),
            ("outcome", "busy", l(&lm.busy)),
        ],
    );
    c(
        &mut out,
        "caliopen_password_checks_total",
        "Password hashes computed (real accounts and the dummy of unknown ones).",
        &[("kind", "argon2", l(&lm.checked))],
    );
    g(
        &mut out,
        "caliopen_password_checks_waiting",
        "Logins waiting for a password-check slot.",
        lm.waiting.load(Ordering::Relaxed) as u64,
    );
    c(
        &mut out,
        "caliopen_privacy_queries_total",
        "Public level queries: answered to peers, refused, rate-limited; asked of peers, from cache.",
        &[
            ("outcome", "answered", l(&m.privacy_answered)),
            ("outcome", "refused", l(&m.privacy_refused)),
            ("outcome", "rate_limited", l(&m.privacy_rate_limited)),
            ("outcome", "asked", l(&m.privacy_asked)),
            ("outcome", "cache_hit", l(&m.privacy_cache_hits)),
        ],
    );
    g(
        &mut out,
        "caliopen_smtp_queue_size",
        "Messages waiting for the SMTP relay.",
        (s.smtp_waiting)() as u64,
    );
    g(
        &mut out,
        "caliopen_mesh_outbox_size",
        "Messages waiting for another member.",
        s.outbox.as_ref().map_or(0, |o| o.len() as u64),
    );
    if let Some(log) = &s.log {
        let st = log.stats();
        c(
            &mut out,
            "caliopen_membership_log_checkpoints_total",
            "Membership-log checkpoints offered to this member, by outcome.",
            &[
                ("outcome", "grew", l(&st.grew)),
                ("outcome", "refreshed", l(&st.refreshed)),
                ("outcome", "refused_signature", l(&st.refused_signature)),
                ("outcome", "refused_rollback", l(&st.refused_rollback)),
                ("outcome", "refused_proof", l(&st.refused_proof)),
                ("outcome", "unverifiable", l(&st.unverifiable)),
                ("outcome", "refused_evidence", l(&st.refused_evidence)),
                ("outcome", "refused_quorum", l(&st.refused_quorum)),
            ],
        );
        g(
            &mut out,
            "caliopen_membership_log_size",
            "Tree size of the membership-log checkpoint held (verified).",
            log.head().map_or(0, |h| h.0),
        );
        g(
            &mut out,
            "caliopen_membership_log_split_view",
            "1 while a split-view proof of the association's log is held (the alarm).",
            u64::from(log.split_view().is_some()),
        );
        c(
            &mut out,
            "caliopen_membership_log_split_views_total",
            "Split views found here or shown by a peer.",
            &[("kind", "split_view", l(&st.split_views))],
        );
        c(
            &mut out,
            "caliopen_membership_log_peer_certificates_total",
            "Peers' certificates checked against the membership log, by outcome \
             (not_included: a label outside the log, the alarm).",
            &[
                ("outcome", "included", l(&st.certs_included)),
                ("outcome", "not_included", l(&st.certs_not_included)),
                ("outcome", "unchecked", l(&st.certs_unchecked)),
            ],
        );
        g(
            &mut out,
            "caliopen_membership_log_checkpoint_age_seconds",
            "Seconds since the log key dated the checkpoint held (re-signed every minute; \
             the alarm is raised past 600).",
            log.checkpoint_age(crate::delivery::now_unix()).unwrap_or(0),
        );
    }
    if let Some(j) = s.outbox.as_ref().map(Outbox::journal) {
        g(
            &mut out,
            "caliopen_mesh_outbox_segments",
            "Segment files of the mesh outbox's journal on disk.",
            j.segments() as u64,
        );
        let js = j.stats();
        c(
            &mut out,
            "caliopen_mesh_outbox_journal_total",
            "Mesh outbox journal activity.",
            &[
                ("event", "sync", js.commits.load(Ordering::Relaxed)),
                ("event", "record", js.records.load(Ordering::Relaxed)),
                ("event", "relocated", js.relocated.load(Ordering::Relaxed)),
                (
                    "event",
                    "segment_deleted",
                    js.segments_deleted.load(Ordering::Relaxed),
                ),
                (
                    "event",
                    "segment_recycled",
                    js.recycled.load(Ordering::Relaxed),
                ),
            ],
        );
    }
    if let Some(node) = &s.node {
        g(
            &mut out,
            "caliopen_mesh_peers_connected",
            "Members with a live mesh connection.",
            node.connected_peers().len() as u64,
        );
        let st = node.stats();
        let ll = |a: &AtomicU64| a.load(Ordering::Relaxed);
        c(
            &mut out,
            "caliopen_mesh_events_total",
            "Mesh endpoint events.",
            &[
                ("event", "frame_refused", ll(&st.frames_refused)),
                ("event", "rate_limited", ll(&st.rate_limited)),
                ("event", "sender_refused", ll(&st.sender_refused)),
                ("event", "closed_revoked", ll(&st.closed_revoked)),
                ("event", "below_baseline", ll(&st.below_baseline)),
                ("event", "gossip_sent", ll(&st.gossip_sent)),
                ("event", "push_refused", ll(&st.pushes_refused)),
            ],
        );
        let refusals: Vec<(&str, &str, u64)> = node
            .trust()
            .refusals()
            .snapshot()
            .into_iter()
            .map(|(r, n)| ("reason", r.as_str(), n))
            .collect();
        c(
            &mut out,
            "caliopen_mesh_peer_refusals_total",
            "Peer certificates refused, by reason.",
            &refusals,
        );
        let t = node.trust().current();
        g(
            &mut out,
            "caliopen_trust_crl_number",
            "CRL number held.",
            t.crl_number(),
        );
        g(
            &mut out,
            "caliopen_trust_directory_serial",
            "Directory serial held.",
            t.directory_serial(),
        );
    }
    out
}

/// Serves `/health` and `/metrics` until `token` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    sources: MetricsSources,
    token: CancellationToken,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = token.cancelled() => return,
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let k = sock.read(&mut buf[n..]).await?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match (line.starts_with("GET "), path) {
                (true, "/health") => ("200 OK", "text/plain", "ok\n".to_owned()),
                (true, "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(&sources)),
                (true, _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                (false, _) => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_owned(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

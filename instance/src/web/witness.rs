//! The membership log's witness on the web listener (`[witness] enabled`):
//! `POST /witness/add-checkpoint` (C2SP tlog-witness, submission prefix
//! `https://HOST:PORT/witness`). The decisions are
//! [`caliopen_federation::witness::Witness`]'s; this file moves the request and
//! the answer, limits each source address, and counts.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use caliopen_federation::witness::{
    load_or_create_key, signed_by_known_log, MAX_BODY, SIZE_CONTENT_TYPE,
};
use caliopen_federation::{witness::Witness, LogKey};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The URL prefix of the witness (its submission prefix).
pub const PREFIX: &str = "/witness";

/// Where the witness key is kept, in the data directory (PKCS#8, 0600).
pub const KEY_FILE: &str = "witness.key";

/// Where the witness state is kept, in the data directory.
pub const STATE_DIR: &str = "witness";

/// Requests one source address may make in a burst: a log asks once per
/// checkpoint and heartbeat, and once more after a 409.
pub const BURST: u32 = 20;

/// One request back per this interval, per source address.
pub const REFILL: Duration = Duration::from_secs(2);

/// Source addresses tracked at once; full buckets are dropped first, and
/// past this an unknown source is refused (fail closed).
pub const MAX_SOURCES: usize = 4096;

/// A token bucket per source address (IPv4, or IPv6 /64). Plain state:
/// every call takes `now`.
#[derive(Debug, Default)]
pub struct PerSource {
    buckets: HashMap<IpAddr, (u32, Instant)>,
}

fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

impl PerSource {
    /// Takes one token for `ip` at `now`; false when none is left.
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_of(ip);
        let refill = |(tokens, at): (u32, Instant)| {
            let n = now.saturating_duration_since(at).as_millis() / REFILL.as_millis();
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let t = tokens.saturating_add(n);
            if n == 0 {
                (tokens, at)
            } else if t >= BURST {
                (BURST, now)
            } else {
                (t, at + REFILL * n)
            }
        };
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_SOURCES {
            self.buckets.retain(|_, b| refill(*b).0 < BURST);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let b = self.buckets.entry(key).or_insert((BURST, now));
        *b = refill(*b);
        if b.0 == 0 {
            return false;
        }
        b.0 -= 1;
        true
    }
}

/// The witness as served.
#[derive(Debug)]
pub struct WitnessEndpoint {
    witness: Arc<Mutex<Witness>>,
    /// The logs witnessed (to tell their requests from others' cheaply).
    logs: Vec<LogKey>,
    limits: Mutex<PerSource>,
    /// Requests being handled (bounded by [`MAX_IN_FLIGHT`]).
    in_flight: std::sync::atomic::AtomicUsize,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Requests handled at once, at most; more are answered 503 at once rather
/// than queued on the blocking threads the whole instance shares.
const MAX_IN_FLIGHT: usize = 4;

/// Opens the witness of the configuration: its key `DATA/witness.key`
/// (made on first use) named `name`, its state `DATA/witness/`, and the log
/// it knows, the association's pinned log key at `log_key`.
pub fn open(
    data: &Path,
    name: &str,
    log_key: &Path,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<WitnessEndpoint>, String> {
    let text =
        std::fs::read_to_string(log_key).map_err(|e| format!("{}: {e}", log_key.display()))?;
    let key = LogKey::parse(text.trim()).map_err(|e| format!("{}: {e}", log_key.display()))?;
    let signer = load_or_create_key(&data.join(KEY_FILE), name).map_err(|e| e.to_string())?;
    let w = Witness::open(&data.join(STATE_DIR), signer, vec![key.clone()])
        .map_err(|e| e.to_string())?;
    tracing::info!(vkey = %w.verifier_key(), "membership log witness enabled");
    Ok(Arc::new(WitnessEndpoint {
        witness: Arc::new(Mutex::new(w)),
        logs: vec![key],
        limits: Mutex::new(PerSource::default()),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        metrics,
    }))
}

/// The witness's routes.
pub fn routes(w: Arc<WitnessEndpoint>) -> axum::Router {
    axum::Router::new()
        .route(
            &format!("{PREFIX}/add-checkpoint"),
            axum::routing::post(add_checkpoint),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(w)
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn add_checkpoint(
    axum::extract::State(w): axum::extract::State<Arc<WitnessEndpoint>>,
    peer: Option<axum::Extension<super::Peer>>,
    body: Bytes,
) -> Response {
    let m = &w.metrics;
    // Requests signed by the log (the association's, or a replay of one)
    // are not counted against their source: a flood from many addresses
    // must not lock the log out. They are bounded with the rest below.
    let from_log = signed_by_known_log(&body, &w.logs);
    if let Some(ip) = peer.and_then(|p| p.0 .0).filter(|_| !from_log) {
        let allowed = w
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(ip, Instant::now());
        if !allowed {
            m.witness_rate_limited.fetch_add(1, Ordering::Relaxed);
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                "text/plain; charset=utf-8",
                "too many requests from this address\n".into(),
            );
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Released when the request ends, however it ends (a client that
    // goes away drops this future).
    struct Slot<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let taken = w.in_flight.fetch_add(1, Ordering::AcqRel);
    let _slot = Slot(&w.in_flight);
    if taken >= MAX_IN_FLIGHT {
        m.witness_rate_limited.fetch_add(1, Ordering::Relaxed);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "busy: try again\n".into(),
        );
    }
    let witness = w.witness.clone();
    // The check and the durable write (fsync) under one lock, off the
    // async threads.
    let r = tokio::task::spawn_blocking(move || {
        witness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add_checkpoint(&body, now)
    })
    .await;
    match r {
        Ok(Ok(lines)) => {
            m.witness_cosigned.fetch_add(1, Ordering::Relaxed);
            text(StatusCode::OK, "text/plain; charset=utf-8", lines)
        }
        Ok(Err(refusal)) => {
            m.witness_refused.fetch_add(1, Ordering::Relaxed);
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(error = %refusal, "witness: nothing cosigned");
            } else {
                tracing::warn!(status = status.as_u16(), error = %refusal, "witness: checkpoint not cosigned");
            }
            let ctype = if status == StatusCode::CONFLICT {
                SIZE_CONTENT_TYPE
            } else {
                "text/plain; charset=utf-8"
            };
            text(status, ctype, refusal.body())
        }
        Err(e) => {
            tracing::error!(error = %e, "witness task failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "internal error\n".into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_a_bucket() {
        let mut p = PerSource::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..BURST {
            assert!(p.take(a, t0));
        }
        assert!(!p.take(a, t0));
        assert!(p.take(b, t0));
        assert!(p.take(a, t0 + REFILL));
        assert!(!p.take(a, t0 + REFILL));
        // One IPv6 /64 is one source.
        let c: IpAddr = "2001:db8::1".parse().unwrap();
        let d: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..BURST {
            assert!(p.take(c, t0));
        }
        assert!(!p.take(d, t0));
        // Refilled for long: full again, not more.
        let later = t0 + REFILL * 1000;
        for _ in 0..BURST {
            assert!(p.take(a, later));
        }
        assert!(!p.take(a, later));
    }
}

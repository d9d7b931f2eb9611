//! The membership log over HTTPS (C2SP `tlog-tiles`), on the association
//! service's listener under `/log/`: `/log/checkpoint`,
//! `/log/tile/<L>/<N>[.p/<W>]` and `/log/tile/entries/<N>[.p/<W>]`.
//!
//! What to answer is decided by [`respond`], a plain function of the path
//! and the authority; the axum handler around it only moves bytes.

use crate::authority::Authority;
use crate::tlog::Tile;
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;

pub use crate::tlog::tiles::LOG_PREFIX;

/// `Cache-Control` of full tiles and full entry bundles: their content can
/// never change (tlog-tiles: "immutable, caching headers SHOULD be
/// long-lived").
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` of partial tiles: their bytes never change either, but
/// the log may stop serving them once the full tile exists, so caches keep
/// them briefly.
pub const CACHE_PARTIAL: &str = "public, max-age=60";

/// `Cache-Control` of the checkpoint: it changes with every membership
/// change and every heartbeat (tlog-tiles: "SHOULD prevent caching beyond
/// a few seconds").
pub const CACHE_CHECKPOINT: &str = "public, max-age=2";

/// One answer: status, content type, cache policy, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Cache-Control`, if any.
    pub cache: Option<&'static str>,
    /// The body.
    pub body: Vec<u8>,
}

fn text(status: StatusCode, msg: &str) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        cache: Some("no-store"),
        body: format!("{msg}\n").into_bytes(),
    }
}

/// What `GET <path>` answers. Blocking (reads the state database).
pub(crate) fn respond(ca: &Authority, path: &str) -> Answer {
    let Some(rest) = path.strip_prefix(LOG_PREFIX) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if rest == "checkpoint" {
        // With the witnesses' cosignatures collected for it.
        return match ca.published_checkpoint() {
            Ok(cp) => Answer {
                status: StatusCode::OK,
                content_type: "text/plain; charset=utf-8",
                cache: Some(CACHE_CHECKPOINT),
                body: cp.into_bytes(),
            },
            Err(e) => {
                tracing::error!(error = %e, "serving the log checkpoint");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        };
    }
    let Some(tile_path) = rest.strip_prefix("tile/") else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let tile = match Tile::parse(tile_path) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match ca.log_tile(&tile) {
        Ok(Some(body)) => Answer {
            status: StatusCode::OK,
            content_type: "application/octet-stream",
            cache: Some(if tile.is_full() {
                CACHE_IMMUTABLE
            } else {
                CACHE_PARTIAL
            }),
            body,
        },
        // Not (yet) in the tree: tlog-tiles clients only ask for what a
        // checkpoint they verified requires.
        Ok(None) => text(StatusCode::NOT_FOUND, "no such tile in the log"),
        Err(e) => {
            tracing::error!(error = %e, tile = %tile.path(), "serving a log tile");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

fn into_response(a: Answer) -> Response<Body> {
    let mut r = Response::new(Body::from(a.body));
    *r.status_mut() = a.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    if let Some(c) = a.cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(c));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The `/log/` routes, to merge with the gRPC service's router. Every
/// other path that is not gRPC answers 404 (see [`fallback`]).
pub(crate) fn router(ca: Arc<Authority>) -> axum::Router {
    axum::Router::new().route(
        "/log/{*rest}",
        axum::routing::get(move |req: Request<Body>| {
            let ca = ca.clone();
            async move {
                let path = req.uri().path().to_owned();
                let a = tokio::task::spawn_blocking(move || respond(&ca, &path))
                    .await
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
                into_response(a)
            }
        }),
    )
}

/// Unknown paths: a gRPC call of an unknown method gets gRPC's
/// UNIMPLEMENTED (as tonic answers), anything else a plain 404.
pub(crate) async fn fallback(req: Request<Body>) -> Response<Body> {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let mut r = Response::new(Body::empty());
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("12"));
        return r;
    }
    into_response(text(StatusCode::NOT_FOUND, "not found"))
}

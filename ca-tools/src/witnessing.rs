//! Asking the membership log's witnesses to cosign (C2SP `tlog-witness`,
//! the client side): after each new checkpoint and each heartbeat, every
//! registered witness is sent `POST <url>/add-checkpoint` at once, with the
//! size it last cosigned as `old` and the consistency proof from it. A 409
//! gives the witness's size: the request is made once more from it. The
//! cosignature lines that verify with the registered key are handed to
//! [`Authority::add_cosignatures`], which publishes the checkpoint with
//! them. A witness that is slow or down costs one bounded request
//! ([`WITNESS_TIMEOUT`]) on this task only: membership operations never
//! wait for witnesses.

use crate::authority::Authority;
use crate::store::WitnessRecord;
use crate::tlog::witness::{parse_size_body, request_body, ADD_CHECKPOINT, SIZE_CONTENT_TYPE};
use crate::tlog::{Checkpoint, CosignatureVerifier, Note};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Deadline of one request to a witness (connection, TLS, answer).
pub const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from a witness: a few signature lines (~130 bytes
/// each for Ed25519).
pub const MAX_ANSWER: usize = 16 * 1024;

/// Why a witness could not be registered or gave no cosignature, split by
/// whose fault it is. The message is the same whatever the kind.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WitnessError {
    /// The witness as registered is unusable (URL, CA certificates, key,
    /// host name): the operator's input.
    #[error("{0}")]
    Config(String),
    /// The witness could not be reached: connection, TLS, the HTTP
    /// exchange, or no answer within [`WITNESS_TIMEOUT`].
    #[error("{0}")]
    Unreachable(String),
    /// The witness answered, but not as tlog-witness says: an HTTP error,
    /// an answer too large or that is no valid cosignature by its key, a
    /// 409 without a size or with one the log does not have.
    #[error("{0}")]
    Misbehaved(String),
    /// This association failed (its checkpoint, a consistency proof, a
    /// task, the TLS or HTTP request set-up).
    #[error("{0}")]
    Local(String),
}

/// Counters of the witness requests (logged with each failure).
#[derive(Debug, Default)]
pub struct WitnessStats {
    /// Cosignatures received that verified.
    pub cosigned: AtomicU64,
    /// Requests that gave no valid cosignature (refused, unreachable,
    /// timed out, a line that does not verify).
    pub failed: AtomicU64,
}

/// The task that collects witness cosignatures for the association.
#[derive(Debug)]
pub struct Witnessing {
    ca: Arc<Authority>,
    /// By witness key: the size it last cosigned (as far as we know).
    known: Mutex<HashMap<String, u64>>,
    /// Counters.
    pub stats: WitnessStats,
}

/// Checks a witness URL: `https://HOST[:PORT][/PREFIX]`, no query.
/// Returns host, port and path prefix (without a trailing `/`).
pub fn parse_url(url: &str) -> Result<(String, u16, String), WitnessError> {
    let bad = || {
        WitnessError::Config(format!(
            "witness URL {url:?}: expected https://HOST[:PORT][/PREFIX]"
        ))
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    if rest.contains(['?', '#', ' ', '@']) {
        return Err(bad());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let uri: hyper::Uri = format!("https://{authority}/").parse().map_err(|_| bad())?;
    let host = uri.host().ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, uri.port_u16().unwrap_or(443), path.to_owned()))
}

/// The roots in `pem` (certificates), for a witness's HTTPS.
pub fn roots_from_pem(pem: &str) -> Result<rustls::RootCertStore, WitnessError> {
    let bad = |e: &dyn std::fmt::Display| WitnessError::Config(format!("witness CA: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    let certs = pem::parse_many(pem).map_err(|e| bad(&e))?;
    for p in certs.iter().filter(|p| p.tag() == "CERTIFICATE") {
        roots
            .add(rustls_pki_types::CertificateDer::from(
                p.contents().to_vec(),
            ))
            .map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the PEM"));
    }
    Ok(roots)
}

/// `POST url/add-checkpoint` with `body`: status, content type, body.
async fn post(w: &WitnessRecord, body: String) -> Result<(u16, String, Vec<u8>), WitnessError> {
    use WitnessError::{Config, Local, Misbehaved, Unreachable};
    let (host, port, prefix) = parse_url(&w.url)?;
    let roots = match &w.ca_pem {
        Some(pem) => roots_from_pem(pem)?,
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Local(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // RFC 7301 §3.1: offer the one protocol this client speaks (hyper's
    // HTTP/1.1 below).
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Config(format!("witness host {host:?}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| Unreachable(format!("connect {host}:{port}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| Unreachable(format!("TLS with {host}:{port}: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Unreachable(format!("HTTP with {host}:{port}: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = if port == 443 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = hyper::Request::post(format!("{prefix}{ADD_CHECKPOINT}"))
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Local(e.to_string()))?;
    let r = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Unreachable(format!("POST {}{ADD_CHECKPOINT}: {e}", w.url)))?;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                let why = format!("reading the answer of {}: {e}", w.url);
                if e.is::<http_body_util::LengthLimitError>() {
                    Misbehaved(why)
                } else {
                    Unreachable(why)
                }
            })?
            .to_bytes()
            .to_vec();
        Ok((status, ctype, body))
    }
    .await;
    driver.abort();
    r
}

/// The cosignature line of `key` on `note` in `answer` (a 200 body: note
/// signature lines), verified. Lines of other keys are ignored
/// (tlog-witness: "The client MUST ignore any cosignatures from unknown
/// keys").
pub fn cosignature_from(
    note: &str,
    answer: &[u8],
    key: &CosignatureVerifier,
) -> Result<String, WitnessError> {
    let bad = |why: String| WitnessError::Misbehaved(why);
    let answer = std::str::from_utf8(answer).map_err(|_| bad("answer is not UTF-8".into()))?;
    if answer.is_empty() || !answer.ends_with('\n') {
        return Err(bad("answer is not signature lines".into()));
    }
    // Appended to the note, the lines must parse as its signatures.
    let full = format!("{note}{answer}");
    let n = Note::parse(full.as_bytes()).map_err(|e| bad(format!("answer: {e}")))?;
    let mine: Vec<_> = n
        .signatures()
        .iter()
        .filter(|s| s.name == key.name() && s.key_id == key.key_id())
        .collect();
    let Some(first) = mine.first() else {
        return Err(bad("no cosignature by the registered key".into()));
    };
    key.timestamp(&n)
        .map_err(|e| bad(format!("cosignature: {e}")))?
        .ok_or_else(|| bad("no cosignature by the registered key".into()))?;
    Ok(first.line())
}

impl Witnessing {
    /// Collects cosignatures for `ca`'s checkpoints.
    pub fn new(ca: Arc<Authority>) -> Arc<Self> {
        Arc::new(Self {
            ca,
            known: Mutex::new(HashMap::new()),
            stats: WitnessStats::default(),
        })
    }

    /// Runs until `token` is cancelled: each new stored checkpoint (a
    /// change or a heartbeat), and each change of the witness list, is sent
    /// to every witness; the newest checkpoint only, when several came
    /// meanwhile.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let mut rx = self.ca.subscribe();
        let mut last: Option<(Arc<String>, Vec<WitnessRecord>)> = None;
        loop {
            let note = rx.borrow_and_update().log_note.clone();
            let ca = self.ca.clone();
            let ws = match tokio::task::spawn_blocking(move || ca.witnesses()).await {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "witnesses: reading the list");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "witnesses: reading the list");
                    Vec::new()
                }
            };
            let key = (note.clone(), ws.clone());
            if !note.is_empty() && !ws.is_empty() && last.as_ref() != Some(&key) {
                last = Some(key);
                let lines = tokio::select! {
                    l = self.collect(&note, &ws) => l,
                    _ = token.cancelled() => break,
                };
                let ca = self.ca.clone();
                let n = lines.len();
                let note2 = note.clone();
                match tokio::task::spawn_blocking(move || ca.add_cosignatures(&note2, &lines)).await
                {
                    Ok(Ok(true)) => {
                        tracing::info!(
                            cosignatures = n,
                            witnesses = ws.len(),
                            "log checkpoint published with witness cosignatures"
                        )
                    }
                    Ok(Ok(false)) => {
                        tracing::debug!("witness cosignatures for a checkpoint already replaced")
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "witness cosignatures not recorded"),
                    Err(e) => tracing::error!(error = %e, "witness cosignatures not recorded"),
                }
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = token.cancelled() => break,
            }
        }
    }

    /// Asks every witness in `ws` to cosign the stored checkpoint `note`, at
    /// once, each within [`WITNESS_TIMEOUT`] (twice that with the retry
    /// after a 409); returns the lines that verified, one per witness.
    pub async fn collect(&self, note: &str, ws: &[WitnessRecord]) -> Vec<String> {
        let asks = ws.iter().map(|w| async move {
            let r = self.ask(w, note).await;
            match r {
                Ok(line) => {
                    self.stats.cosigned.fetch_add(1, Ordering::Relaxed);
                    Some(line)
                }
                Err(why) => {
                    let failed = self.stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(witness = %w.name, url = %w.url, error = %why, failed_total = failed,
                        "witness gave no cosignature");
                    None
                }
            }
        });
        futures_join_all(asks).await.into_iter().flatten().collect()
    }

    async fn ask(&self, w: &WitnessRecord, note: &str) -> Result<String, WitnessError> {
        use WitnessError::{Config, Local, Misbehaved, Unreachable};
        let key =
            CosignatureVerifier::parse(&w.vkey).map_err(|e| Config(format!("witness key: {e}")))?;
        let n = Note::parse(note.as_bytes()).map_err(|e| Local(format!("checkpoint: {e}")))?;
        let size = Checkpoint::parse_text(n.text())
            .map_err(|e| Local(format!("checkpoint: {e}")))?
            .size;
        let known = || {
            self.known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&w.vkey)
                .copied()
        };
        let mut old = known().filter(|s| *s <= size).unwrap_or(0);
        for attempt in 0..2 {
            let proof = if old == 0 || old == size {
                Vec::new()
            } else {
                let ca = self.ca.clone();
                tokio::task::spawn_blocking(move || ca.log_consistency_proof(old, size))
                    .await
                    .map_err(|e| Local(e.to_string()))?
                    .map_err(|e| Local(format!("consistency proof from {old} to {size}: {e}")))?
            };
            let body = request_body(old, &proof, note);
            let (status, ctype, answer) = tokio::time::timeout(WITNESS_TIMEOUT, post(w, body))
                .await
                .map_err(|_| Unreachable(format!("no answer within {WITNESS_TIMEOUT:?}")))??;
            match status {
                200 => {
                    let line = cosignature_from(note, &answer, &key)?;
                    self.known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(w.vkey.clone(), size);
                    return Ok(line);
                }
                409 if ctype.starts_with(SIZE_CONTENT_TYPE) => {
                    let theirs = parse_size_body(&answer)
                        .ok_or_else(|| Misbehaved("409 without a size".into()))?;
                    self.known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(w.vkey.clone(), theirs);
                    if theirs > size {
                        return Err(Misbehaved(format!(
                            "the witness holds a larger tree ({theirs}) than the log ({size})"
                        )));
                    }
                    if attempt == 0 && theirs != old {
                        old = theirs;
                        continue;
                    }
                    return Err(Misbehaved(format!(
                        "409: the witness holds size {theirs} (another root for this size?)"
                    )));
                }
                s => {
                    let why = String::from_utf8_lossy(&answer);
                    let why = why.lines().next().unwrap_or("").chars().take(200);
                    return Err(Misbehaved(format!("HTTP {s}: {}", why.collect::<String>())));
                }
            }
        }
        Err(Misbehaved("no cosignature after the retry".into()))
    }
}

/// Runs all `futs` concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlog::cosignature::cosign;
    use crate::tlog::Signer;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            parse_url("https://w.example:8443/witness").unwrap(),
            ("w.example".into(), 8443, "/witness".into())
        );
        assert_eq!(
            parse_url("https://w.example/").unwrap(),
            ("w.example".into(), 443, "".into())
        );
        assert_eq!(parse_url("https://[::1]:9/w").unwrap().0, "::1");
        for bad in [
            "http://w.example",
            "https://",
            "https://a@b/",
            "https://w/x?y",
            "w.example",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_registered_keys_valid_line_is_taken() {
        let log = Signer::from_seed("caliopen.invalid/t", &[1; 32]).unwrap();
        let note = log
            .sign_note("caliopen.invalid/t\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
            .unwrap();
        let text = Note::parse(note.as_bytes()).unwrap().text().to_owned();
        let w = Signer::from_seed("w.test/witness", &[2; 32]).unwrap();
        let other = Signer::from_seed("o.test/witness", &[3; 32]).unwrap();
        let key = CosignatureVerifier::new("w.test/witness", *w.verifier().public_key());
        let mine = cosign(&w, &text, 10).unwrap().line();
        let theirs = cosign(&other, &text, 10).unwrap().line();
        assert_eq!(
            cosignature_from(&note, format!("{theirs}{mine}").as_bytes(), &key).unwrap(),
            mine
        );
        assert!(cosignature_from(&note, theirs.as_bytes(), &key).is_err());
        // Signed over another text: refused.
        let wrong = cosign(
            &w,
            "caliopen.invalid/t\n4\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            10,
        )
        .unwrap()
        .line();
        assert!(cosignature_from(&note, wrong.as_bytes(), &key).is_err());
        assert!(cosignature_from(&note, b"", &key).is_err());
        assert!(cosignature_from(&note, b"garbage\n", &key).is_err());
    }

    #[test]
    fn errors_say_whose_fault_with_the_same_message() {
        let e = parse_url("http://w.example").unwrap_err();
        assert!(matches!(e, WitnessError::Config(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "witness URL \"http://w.example\": expected https://HOST[:PORT][/PREFIX]"
        );
        let e = roots_from_pem("").unwrap_err();
        assert!(matches!(e, WitnessError::Config(_)), "{e:?}");
        assert_eq!(e.to_string(), "witness CA: no certificate in the PEM");
        let w = Signer::from_seed("w.test/witness", &[2; 32]).unwrap();
        let key = CosignatureVerifier::new("w.test/witness", *w.verifier().public_key());
        let e = cosignature_from("n\n\n", b"", &key).unwrap_err();
        assert!(matches!(e, WitnessError::Misbehaved(_)), "{e:?}");
        assert_eq!(e.to_string(), "answer is not signature lines");
    }
}

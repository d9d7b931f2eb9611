//! The member's link to the association service: follows its `Watch` stream
//! (every new CRL and directory the moment it is issued), polls as a fallback,
//! reconnects with backoff, and renews the member certificate over mutual TLS.

use crate::log::LogMonitor;
use crate::trust::{TrustError, TrustStore};
use caliopen_proto::pb::association::association_client::AssociationClient;
use caliopen_proto::pb::association::{
    watch_event, GetCrlRequest, GetDirectoryRequest, RenewRequest, RenewResponse, WatchRequest,
};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How to reach the association.
#[derive(Debug, Clone)]
pub struct AssociationLink {
    /// `https://HOST:PORT`.
    pub url: String,
    /// The association root(s), PEM: the service's certificate chains to it.
    pub ca_pem: String,
    /// Poll interval of the fallback (the stream pushes in between).
    pub poll_interval: Duration,
    /// Connect and request deadline.
    pub timeout: Duration,
    /// The member's certificate and key files (PEM), presented on `Watch`
    /// so that the association counts this link against the slots it
    /// keeps for members rather than the anonymous ones. Read at each
    /// connection, so a renewed certificate is used on the next one.
    pub watch_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The membership log's monitor: every checkpoint pushed on `Watch`
    /// (and the one at `/log/checkpoint` at each poll) is offered to it.
    pub log: Option<Arc<LogMonitor>>,
}

impl AssociationLink {
    /// A link with default timings (poll every 5 minutes, 10 s deadlines).
    pub fn new(url: impl Into<String>, ca_pem: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_pem: ca_pem.into(),
            poll_interval: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            watch_identity: None,
            log: None,
        }
    }

    /// Offers the association's checkpoints to `log`.
    pub fn with_log(mut self, log: Arc<LogMonitor>) -> Self {
        self.log = Some(log);
        self
    }

    /// Presents the member certificate in `cert` (key in `key`) on `Watch`.
    pub fn with_watch_identity(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.watch_identity = Some((cert.into(), key.into()));
        self
    }

    fn read_watch_identity(&self) -> Option<Identity> {
        let (c, k) = self.watch_identity.as_ref()?;
        match (std::fs::read(c), std::fs::read(k)) {
            (Ok(c), Ok(k)) => Some(Identity::from_pem(c, k)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "member certificate unreadable: watching the association anonymously");
                None
            }
        }
    }

    pub(crate) async fn channel(&self, identity: Option<Identity>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some(id) = identity {
            tls = tls.identity(id);
        }
        Channel::from_shared(self.url.clone())
            .map_err(|e| format!("invalid association URL {:?}: {e}", self.url))?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(self.timeout)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e}", self.url))
    }

    /// Fetches the current CRL and directory once and offers them to `trust`.
    pub async fn poll_once(&self, trust: &TrustStore) -> Result<(), String> {
        let ch = self.channel(None).await?;
        let mut c = AssociationClient::new(ch);
        let crl = tokio::time::timeout(self.timeout, c.get_crl(GetCrlRequest {}))
            .await
            .map_err(|_| "GetCrl timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .into_inner();
        offer_crl(trust, &crl.crl_der);
        let dir = tokio::time::timeout(self.timeout, c.get_directory(GetDirectoryRequest {}))
            .await
            .map_err(|_| "GetDirectory timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .into_inner();
        offer_directory(trust, &dir);
        if let Some(log) = &self.log {
            // The log is not the link's health: a failure is the monitor's
            // to count and log.
            let _ = log.poll().await;
        }
        Ok(())
    }

    /// Follows the association until `token` is cancelled.
    pub async fn follow(self, trust: Arc<TrustStore>, token: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if token.is_cancelled() {
                return;
            }
            match self.watch_session(&trust, &token).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, retry_in = ?backoff,
                        "association link down");
                    if trust.directory_stale(now_unix()) {
                        tracing::error!("the held directory is stale: mesh peers are refused until a fresh one arrives");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = token.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One connected session: initial fetch, then the stream plus polling.
    /// Returns Ok when cancelled, Err when the link failed.
    async fn watch_session(
        &self,
        trust: &TrustStore,
        token: &CancellationToken,
    ) -> Result<(), String> {
        self.poll_once(trust).await?;
        let ch = self.channel(self.read_watch_identity()).await?;
        let mut c = AssociationClient::new(ch);
        let st = trust.current();
        let mut stream = c
            .watch(WatchRequest {
                known_crl_number: st.crl_number(),
                known_directory_serial: st.directory_serial(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        tracing::info!(url = %self.url, "following the association");
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.tick().await;
        // Checkpoints go to the monitor through a latest-value slot and a
        // task of their own: a slow consistency proof must not hold up the
        // CRLs behind it on the stream, and only the newest one matters.
        let (checkpoints, latest) = tokio::sync::watch::channel(None::<String>);
        let feeder = self.log.clone().map(|log| {
            let mut latest = latest;
            tokio::spawn(async move {
                while latest.changed().await.is_ok() {
                    let note = latest.borrow_and_update().clone();
                    if let Some(note) = note {
                        let _ = log.offer(&note, None).await;
                    }
                }
            })
        });
        let _stop_feeder = AbortOnDrop(feeder);
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(ev)) => match ev.event {
                        Some(watch_event::Event::Crl(c)) => offer_crl(trust, &c.crl_der),
                        Some(watch_event::Event::Directory(d)) => offer_directory(trust, &d),
                        Some(watch_event::Event::Checkpoint(c)) => {
                            checkpoints.send_replace(Some(c.note));
                        }
                        None => {}
                    },
                    Ok(None) => return Err("watch stream ended".into()),
                    Err(e) => return Err(e.to_string()),
                },
                _ = poll.tick() => self.poll_once(trust).await?,
                _ = token.cancelled() => return Ok(()),
            }
        }
    }

    /// Renews the member certificate: authenticates with the current one
    /// (`cert_pem`, `key_pem`) and sends a CSR for a fresh key.
    pub async fn renew(
        &self,
        cert_pem: &str,
        key_pem: &str,
        csr_pem: &str,
    ) -> Result<RenewResponse, tonic::Status> {
        let ch = self
            .channel(Some(Identity::from_pem(cert_pem, key_pem)))
            .await
            .map_err(tonic::Status::unavailable)?;
        AssociationClient::new(ch)
            .renew(RenewRequest {
                csr_pem: csr_pem.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Aborts a task when dropped (the session's checkpoint feeder).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn offer_crl(trust: &TrustStore, der: &[u8]) {
    match trust.offer_crl(der, None) {
        Ok(true) => tracing::info!(
            crl_number = trust.current().crl_number(),
            "new CRL from the association"
        ),
        Ok(false) | Err(TrustError::NotNewer { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "CRL from the association refused"),
    }
}

fn offer_directory(trust: &TrustStore, d: &caliopen_proto::pb::directory::SignedDirectory) {
    match trust.offer_directory(d, None, now_unix()) {
        Ok(true) => tracing::info!(
            serial = trust.current().directory_serial(),
            "new directory from the association"
        ),
        Ok(false) | Err(TrustError::NotNewer { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "directory from the association refused"),
    }
}

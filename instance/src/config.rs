//! The instance configuration (`caliopen.toml`). Every option is documented
//! in `deploy/caliopen.example.toml`. An invalid file is refused with one
//! line naming the key.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// Not valid TOML, or a bad key or value.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One line naming the key.
        message: String,
    },
}

fn default_hostname() -> String {
    "localhost".into()
}

/// SMTP listeners and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// MX listener (port 25 in production).
    #[serde(default = "default_smtp")]
    pub listen: SocketAddr,
    /// Submission listener (STARTTLS + AUTH).
    #[serde(default = "default_submission")]
    pub submission: SocketAddr,
    /// Largest message accepted, bytes.
    #[serde(default = "default_max_size")]
    pub max_message_size: usize,
    /// Most recipients per message.
    #[serde(default = "default_max_rcpt")]
    pub max_recipients: usize,
    /// Most simultaneous SMTP connections per listener.
    #[serde(default = "default_max_conn")]
    pub max_connections: usize,
    /// Most simultaneous SMTP connections from one IP address, per listener.
    #[serde(default = "default_max_conn_ip")]
    pub max_connections_per_ip: usize,
    /// Submission: what to do with a `From:` header that is not the
    /// authenticated user's address ("enforce": refuse with 550 5.7.1;
    /// "warn": accept and log).
    #[serde(default)]
    pub from_check: FromCheck,
    /// TLS certificate (PEM) for STARTTLS, relative to the data directory.
    #[serde(default = "default_tls_cert")]
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    #[serde(default = "default_tls_key")]
    pub tls_key: PathBuf,
    /// Outbound relay `HOST:PORT` for mail to the world outside the labelled network.
    #[serde(default)]
    pub relay: Option<String>,
    /// Extra trusted root(s) (PEM) for the relay's and routes' STARTTLS certificates,
    /// relative to the data directory.
    #[serde(default)]
    pub relay_ca: Option<PathBuf>,
    /// Per-domain SMTP routes, `domain = "HOST:PORT"`, used before the relay
    /// (like a transport map).
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
    /// Hours an outbound message may wait before it bounces.
    #[serde(default = "default_queue_hours")]
    pub queue_lifetime_hours: u64,
    /// First delay before retrying a failed outbound delivery (doubles each time).
    #[serde(default = "default_smtp_retry")]
    pub retry_initial_seconds: u64,
    /// Longest delay between outbound attempts.
    #[serde(default = "default_smtp_retry_max")]
    pub retry_max_seconds: u64,
    /// Port of direct delivery to MX hosts (when `[dns] enabled` and no relay).
    #[serde(default = "default_delivery_port")]
    pub delivery_port: u16,
    /// The MTA-STS policy (RFC 8461) the web listener serves for the
    /// domains: `testing` (default: senders report but deliver anyway),
    /// `enforce` (once the MX certificate is from a public CA), `none` (to
    /// withdraw a published policy), `off` (nothing published).
    #[serde(default)]
    pub mta_sts: MtaStsMode,
    /// Extra trusted roots (PEM) for recipient domains' MTA-STS policy
    /// hosts and MX certificates, besides the web PKI (a private PKI, tests).
    #[serde(default)]
    pub mta_sts_ca: Option<PathBuf>,
    /// Port MTA-STS policies are fetched from (443; another only in tests).
    #[serde(default = "default_https_port")]
    pub mta_sts_port: u16,
    /// Count the TLS outcomes of direct deliveries and send each recipient
    /// domain that asks (`_smtp._tls` TXT) a daily report (RFC 8460).
    #[serde(default = "default_true")]
    pub tls_reports: bool,
}

fn default_https_port() -> u16 {
    443
}

/// The published MTA-STS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    /// Nothing published (for domains that never published a policy).
    Off,
    /// A `mode: none` policy under a new id: how a published policy is
    /// withdrawn (RFC 8461 §8.3) — keep it until the old `max_age` is over,
    /// then set `off`.
    None,
    /// Senders report failures but deliver anyway.
    #[default]
    Testing,
    /// Senders deliver only over TLS with a valid certificate.
    Enforce,
}

fn default_smtp_retry() -> u64 {
    60
}
fn default_smtp_retry_max() -> u64 {
    3600
}
fn default_mesh_retry() -> u64 {
    5
}
fn default_mesh_retry_max() -> u64 {
    900
}
fn default_mesh_lifetime() -> u64 {
    120
}

fn default_delivery_port() -> u16 {
    25
}

fn default_queue_hours() -> u64 {
    120
}

fn default_smtp() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2525))
}
fn default_submission() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5587))
}
fn default_max_size() -> usize {
    25 * 1024 * 1024
}
fn default_max_rcpt() -> usize {
    100
}
fn default_max_conn_ip() -> usize {
    100
}
fn default_max_conn() -> usize {
    1000
}
fn default_tls_cert() -> PathBuf {
    "tls.pem".into()
}
fn default_tls_key() -> PathBuf {
    "tls.key".into()
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: default_smtp(),
            submission: default_submission(),
            max_message_size: default_max_size(),
            max_recipients: default_max_rcpt(),
            max_connections: default_max_conn(),
            max_connections_per_ip: default_max_conn_ip(),
            from_check: FromCheck::default(),
            tls_cert: default_tls_cert(),
            tls_key: default_tls_key(),
            relay: None,
            relay_ca: None,
            routes: Default::default(),
            queue_lifetime_hours: default_queue_hours(),
            delivery_port: default_delivery_port(),
            retry_initial_seconds: default_smtp_retry(),
            retry_max_seconds: default_smtp_retry_max(),
            mta_sts: MtaStsMode::default(),
            mta_sts_ca: None,
            mta_sts_port: default_https_port(),
            tls_reports: true,
        }
    }
}

/// What submission does when a message's `From:` header names an address
/// that is not the authenticated user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromCheck {
    /// Refuse it (`550 5.7.1`).
    #[default]
    Enforce,
    /// Accept it and log a warning.
    Warn,
}

/// Password checks, shared by every login (submission, client API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSection {
    /// Password hashes computed at once (0: the number of cores).
    #[serde(default)]
    pub max_concurrent_checks: usize,
    /// Checks waiting for a slot; past it a login is refused for now
    /// (SMTP 454, gRPC UNAVAILABLE).
    #[serde(default = "default_login_queue")]
    pub queue: usize,
}

fn default_login_queue() -> usize {
    32
}

impl Default for LoginSection {
    fn default() -> Self {
        Self {
            max_concurrent_checks: 0,
            queue: default_login_queue(),
        }
    }
}

/// Accounts: the quota every account has unless given its own
/// (`caliopen user quota`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSection {
    /// Bytes of stored mail per account (0: no limit).
    #[serde(default = "default_quota_bytes")]
    pub quota_bytes: u64,
    /// Messages per account (0: no limit).
    #[serde(default)]
    pub quota_messages: u64,
}

fn default_quota_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}

impl Default for AccountsSection {
    fn default() -> Self {
        Self {
            quota_bytes: default_quota_bytes(),
            quota_messages: 0,
        }
    }
}

/// `[store]`: how the message store uses memory and disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Memory for the store's caches, in MiB (sled's page cache takes
    /// three quarters, the web client's sanitised bodies the rest).
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// How message bodies are compressed: `zstd`, `lz4` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// zstd's level, 1 (fast) to 19.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Deliveries are refused (SMTP `452 4.3.1`) while the data
    /// directory's filesystem has less free space than this, in MiB.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// Seconds between two passes of the background compaction (which
    /// gives deleted mail's space back).
    #[serde(default = "default_compact_seconds")]
    pub compact_seconds: u64,
}

fn default_compact_seconds() -> u64 {
    300
}

fn default_cache_mb() -> u64 {
    64
}
fn default_compression() -> String {
    "zstd".into()
}
fn default_zstd_level() -> i32 {
    1
}
fn default_min_free_mb() -> u64 {
    256
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            cache_mb: default_cache_mb(),
            compression: default_compression(),
            zstd_level: default_zstd_level(),
            min_free_mb: default_min_free_mb(),
            compact_seconds: default_compact_seconds(),
        }
    }
}

impl StoreSection {
    /// The store's options.
    pub fn options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            codec: crate::store::Codec::parse(&self.compression).unwrap_or_default(),
            zstd_level: self.zstd_level,
            cache_bytes: self.cache_mb << 20,
            min_free_bytes: self.min_free_mb << 20,
            compact_every: std::time::Duration::from_secs(self.compact_seconds),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if crate::store::Codec::parse(&self.compression).is_none() {
            return Err(format!(
                "key `store.compression`: {:?} is not one of zstd, lz4, none",
                self.compression
            ));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err("key `store.zstd_level`: must be 1 to 19".into());
        }
        if !(1..=86_400).contains(&self.compact_seconds) {
            return Err("key `store.compact_seconds`: must be 1 to 86400".into());
        }
        if !(8..=1 << 20).contains(&self.cache_mb) {
            return Err("key `store.cache_mb`: must be 8 to 1048576 (MiB)".into());
        }
        Ok(())
    }
}

impl AccountsSection {
    /// The default limits.
    pub fn limits(&self) -> crate::mail::QuotaLimits {
        crate::mail::QuotaLimits {
            bytes: self.quota_bytes,
            messages: self.quota_messages,
        }
    }
}

/// Mesh settings (used once the instance holds a label).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// UDP address of the QUIC endpoint.
    #[serde(default = "default_mesh")]
    pub listen: SocketAddr,
    /// First delay before retrying a member that could not be reached (doubles, with jitter).
    #[serde(default = "default_mesh_retry")]
    pub retry_initial_seconds: u64,
    /// Longest delay between attempts.
    #[serde(default = "default_mesh_retry_max")]
    pub retry_max_seconds: u64,
    /// Hours a message may wait for a member before it bounces.
    #[serde(default = "default_mesh_lifetime")]
    pub lifetime_hours: u64,
}

fn default_mesh() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            listen: default_mesh(),
            retry_initial_seconds: default_mesh_retry(),
            retry_max_seconds: default_mesh_retry_max(),
            lifetime_hours: default_mesh_lifetime(),
        }
    }
}

/// The association this instance is a member of (written by `caliopen join`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssociationConfig {
    /// `https://HOST:PORT` of the association service.
    pub url: String,
    /// The association's root certificate(s), PEM, relative to the data directory.
    #[serde(default = "default_assoc_ca")]
    pub ca: PathBuf,
    /// Member certificate, PEM, relative to the data directory.
    #[serde(default = "default_member_cert")]
    pub cert: PathBuf,
    /// Member private key, PEM (0600), relative to the data directory.
    #[serde(default = "default_member_key")]
    pub key: PathBuf,
    /// The association's membership-log verifier key (its `log.pub`, a
    /// signed-note key line), relative to the data directory, pinned at
    /// `caliopen join --log-key`: with it the instance checks every
    /// checkpoint (signature, consistency with the one held) and raises a
    /// split view. Absent: the log is not checked.
    #[serde(default)]
    pub log_key: Option<PathBuf>,
    /// Fewest witness cosignatures a checkpoint that grows the membership
    /// log must carry, whatever the directory says (default 0: the
    /// directory's quorum). The directory is signed by the CA key: pinning
    /// a minimum here keeps whoever holds that key from lowering the
    /// quorum for this member. Above the number of witnesses the directory
    /// lists, no grown tree is taken (and each refusal is logged).
    #[serde(default)]
    pub min_witness_quorum: usize,
}

fn default_assoc_ca() -> PathBuf {
    "association-ca.pem".into()
}
fn default_member_cert() -> PathBuf {
    "member.pem".into()
}
fn default_member_key() -> PathBuf {
    "member.key.pem".into()
}

/// Splits `HOST:PORT` (port 1-65535).
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let p: u16 = p.parse().ok().filter(|p| *p > 0)?;
    (!h.is_empty()).then(|| {
        (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p,
        )
    })
}

/// Health and metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of `GET /health` and `GET /metrics` (absent: disabled).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// The client API (gRPC with reflection; TLS with the SMTP certificate).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// TCP address of the client API (absent: only on the local admin socket).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Minutes a login token stays valid.
    #[serde(default = "default_token_minutes")]
    pub token_minutes: u64,
    /// Most simultaneous connections.
    #[serde(default = "default_max_conn")]
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address.
    #[serde(default = "default_api_conn_ip")]
    pub max_connections_per_ip: usize,
    /// Longest TLS handshake, seconds.
    #[serde(default = "default_handshake_s")]
    pub handshake_timeout_seconds: u64,
    /// A connection with no traffic either way for this long is closed, seconds.
    #[serde(default = "default_api_idle_s")]
    pub idle_timeout_seconds: u64,
}

fn default_api_conn_ip() -> usize {
    50
}
fn default_handshake_s() -> u64 {
    10
}
fn default_api_idle_s() -> u64 {
    120
}

fn default_token_minutes() -> u64 {
    60
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: None,
            token_minutes: default_token_minutes(),
            max_connections: default_max_conn(),
            max_connections_per_ip: default_api_conn_ip(),
            handshake_timeout_seconds: default_handshake_s(),
            idle_timeout_seconds: default_api_idle_s(),
        }
    }
}

/// IMAP (for mail clients), on the mail core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapSection {
    /// TCP address of the IMAP listener (absent: no IMAP).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// TLS from the first byte (port 993) instead of STARTTLS (port 143).
    #[serde(default)]
    pub implicit_tls: bool,
    /// Most simultaneous connections.
    #[serde(default = "default_max_conn")]
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (a mail client
    /// opens up to five per account).
    #[serde(default = "default_api_conn_ip")]
    pub max_connections_per_ip: usize,
    /// Largest APPEND in bytes (absent: `smtp.max_message_size`).
    #[serde(default)]
    pub append_limit: Option<u32>,
    /// A logged-in client silent for this long is logged out, minutes
    /// (RFC 9051 asks for at least 30).
    #[serde(default = "default_imap_idle_min")]
    pub idle_timeout_minutes: u64,
    /// A client that has not logged in within this long is dropped, seconds.
    #[serde(default = "default_imap_login_s")]
    pub login_timeout_seconds: u64,
}

fn default_imap_idle_min() -> u64 {
    30
}
fn default_imap_login_s() -> u64 {
    60
}

impl Default for ImapSection {
    fn default() -> Self {
        Self {
            listen: None,
            implicit_tls: false,
            max_connections: default_max_conn(),
            max_connections_per_ip: default_api_conn_ip(),
            append_limit: None,
            idle_timeout_minutes: default_imap_idle_min(),
            login_timeout_seconds: default_imap_login_s(),
        }
    }
}

/// The web client (HTTPS with the instance certificate), on the mail core.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// TCP address of the web client (absent: no web client).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Minutes a login lasts (the session then ends server-side).
    #[serde(default = "default_web_session_min")]
    pub session_minutes: u64,
    /// Most simultaneous connections.
    #[serde(default = "default_max_conn")]
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (a browser opens
    /// about six, and one for live updates).
    #[serde(default = "default_api_conn_ip")]
    pub max_connections_per_ip: usize,
    /// Longest TLS handshake, seconds.
    #[serde(default = "default_handshake_s")]
    pub handshake_timeout_seconds: u64,
    /// A connection with no traffic either way for this long is closed,
    /// seconds (live updates send a keep-alive every 15 s).
    #[serde(default = "default_api_idle_s")]
    pub idle_timeout_seconds: u64,
}

fn default_web_session_min() -> u64 {
    8 * 60
}

impl Default for WebSection {
    fn default() -> Self {
        Self {
            listen: None,
            session_minutes: default_web_session_min(),
            max_connections: default_max_conn(),
            max_connections_per_ip: default_api_conn_ip(),
            handshake_timeout_seconds: default_handshake_s(),
            idle_timeout_seconds: default_api_idle_s(),
        }
    }
}

/// A witness of the association's membership log (C2SP tlog-witness),
/// served on the web listener at `POST /witness/add-checkpoint`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// Cosign the association's checkpoints (needs `[web] listen` and the
    /// log key pinned by `caliopen join --log-key`).
    #[serde(default)]
    pub enabled: bool,
    /// The witness key's name (default: `<first domain>/witness`): part of
    /// the verifier key given to the association, so keep it once given.
    #[serde(default)]
    pub name: Option<String>,
}

impl Config {
    /// The witness key's name.
    pub fn witness_name(&self) -> String {
        self.witness.name.clone().unwrap_or_else(|| {
            format!(
                "{}/witness",
                self.domains.first().map_or("localhost", String::as_str)
            )
        })
    }
}

/// DNS: sender checks (DKIM, SPF, DMARC) of inbound mail and MX lookups
/// for direct delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Make DNS lookups at all (off: no sender checks, no direct delivery).
    #[serde(default)]
    pub enabled: bool,
    /// Name servers `IP:PORT` (empty: the system configuration).
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    /// Seconds one lookup may take.
    #[serde(default = "default_dns_timeout")]
    pub timeout_seconds: u64,
    /// DNS blocklist zones (RFC 5782) asked about each client that sends
    /// mail over the MX; a listed client's mail goes to the junk mailbox.
    #[serde(default)]
    pub blocklists: Vec<String>,
}

fn default_dns_timeout() -> u64 {
    5
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            enabled: false,
            servers: Vec::new(),
            timeout_seconds: default_dns_timeout(),
            blocklists: Vec::new(),
        }
    }
}

/// DKIM signing of outgoing mail (keys in `DATA/dkim/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSection {
    /// Sign what local users send to other members and to the outside
    /// (off: for a relay that signs on the instance's behalf).
    #[serde(default = "default_true")]
    pub sign: bool,
}

fn default_true() -> bool {
    true
}

impl Default for DkimSection {
    fn default() -> Self {
        Self { sign: true }
    }
}

/// Certificates from an ACME server (RFC 8555), obtained and renewed by
/// the daemon (`acme.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The ACME server's directory URL (HTTPS), e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact URLs of the ACME account (`mailto:postmaster@example.org`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Names on the certificate (empty: the host name, and with a web
    /// listener `mta-sts.`, `autoconfig.` and `autodiscover.` of each
    /// domain).
    #[serde(default)]
    pub names: Vec<String>,
    /// A PEM root to trust for the ACME server's own HTTPS (a private or
    /// test CA; relative to the data directory).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// `http-01` (answered on `http_listen`, port 80) or `tls-alpn-01`
    /// (answered by the web listener, which must then be on port 443).
    #[serde(default)]
    pub challenge: crate::acme::ChallengeKind,
    /// Plain-HTTP listener for HTTP-01 answers; it redirects everything
    /// else to the web listener.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
}

/// Logging.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// Filter, as `RUST_LOG` (default `info`).
    #[serde(default)]
    pub filter: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// JSON lines.
    Json,
}

/// True for a host or domain name in LDH form (RFC 1123 §2.1): labels of
/// 1–63 letters, digits and hyphens, at most 253 octets, no final dot.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory (database, keys, admin socket). Relative paths are
    /// taken from the configuration file's directory.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Mail domains served (the first is the primary).
    pub domains: Vec<String>,
    /// Name used in SMTP greetings.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// SMTP.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Mesh.
    #[serde(default)]
    pub mesh: MeshSection,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
    /// Health and metrics endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Client API.
    #[serde(default)]
    pub api: ApiSection,
    /// IMAP.
    #[serde(default)]
    pub imap: ImapSection,
    /// The web client.
    #[serde(default)]
    pub web: WebSection,
    /// Password checks.
    #[serde(default)]
    pub login: LoginSection,
    /// Accounts (quotas).
    #[serde(default)]
    pub accounts: AccountsSection,
    /// Storage: memory, compression, disk reserve.
    #[serde(default)]
    pub store: StoreSection,
    /// DNS.
    #[serde(default)]
    pub dns: DnsSection,
    /// DKIM signing.
    #[serde(default)]
    pub dkim: DkimSection,
    /// Association membership (absent: unlabelled, no mesh).
    #[serde(default)]
    pub association: Option<AssociationConfig>,
    /// ACME certificates (absent: the certificate files are kept by hand).
    #[serde(default)]
    pub acme: Option<AcmeSection>,
    /// Witness of the association's membership log.
    #[serde(default)]
    pub witness: WitnessSection,
    /// Where the configuration was read from (not in the file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// The largest APPEND over IMAP.
    pub fn imap_append_limit(&self) -> u32 {
        self.imap
            .append_limit
            .unwrap_or(u32::try_from(self.smtp.max_message_size).unwrap_or(u32::MAX))
    }

    /// The embedded defaults of `caliopen run` without a file: data in
    /// `./caliopen-data`, domain `localhost`, unlabelled, loopback only.
    pub fn embedded_defaults() -> Self {
        Self {
            data_dir: Some(PathBuf::from("caliopen-data")),
            domains: vec!["localhost".into()],
            hostname: default_hostname(),
            smtp: SmtpConfig::default(),
            mesh: MeshSection::default(),
            log: LogConfig::default(),
            metrics: MetricsSection {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 9925))),
            },
            api: ApiSection::default(),
            imap: ImapSection::default(),
            web: WebSection::default(),
            login: LoginSection::default(),
            accounts: AccountsSection::default(),
            store: StoreSection::default(),
            dns: DnsSection::default(),
            dkim: DkimSection::default(),
            association: None,
            acme: None,
            witness: WitnessSection::default(),
            source: None,
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        let mut c = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        c.source = Some(path.to_owned());
        Ok(c)
    }

    /// Parses and validates TOML text; the error is one line naming the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line_no = text[..start].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("");
                    match line.split_once('=') {
                        Some((key, _)) if !msg.starts_with("unknown field") => {
                            format!("key `{}` (line {line_no}): {msg}", key.trim())
                        }
                        _ => format!("line {line_no}: {msg}"),
                    }
                }
                None => msg,
            }
        })?;
        c.validate()?;
        Ok(c)
    }

    /// What the ACME task needs, when `[acme]` is set.
    pub fn acme_settings(&self) -> Option<crate::acme::AcmeSettings> {
        let a = self.acme.as_ref()?;
        let names = if a.names.is_empty() {
            crate::acme::default_names(&self.hostname, &self.domains, self.web.listen.is_some())
        } else {
            a.names.iter().map(|n| n.to_ascii_lowercase()).collect()
        };
        Some(crate::acme::AcmeSettings {
            directory: a.directory.clone(),
            contact: a.contact.clone(),
            names,
            server_ca: a.ca.as_ref().map(|p| self.in_data(p)),
            challenge: a.challenge,
        })
    }

    fn validate_acme(&self) -> Result<(), String> {
        let Some(a) = &self.acme else {
            return Ok(());
        };
        if !a.directory.starts_with("https://") {
            return Err(format!(
                "key `acme.directory`: an https:// URL is needed, not {:?}",
                a.directory
            ));
        }
        for c in &a.contact {
            if !c.starts_with("mailto:") || c.len() < 10 {
                return Err(format!("key `acme.contact`: {c:?} is not a mailto: URL"));
            }
        }
        for n in &a.names {
            if !is_dns_name(n) {
                return Err(format!("key `acme.names`: invalid host name {n:?}"));
            }
        }
        if a.names.is_empty() && !is_dns_name(&self.hostname) {
            return Err(format!(
                "key `hostname`: {:?} is not a DNS name a certificate can carry (set acme.names)",
                self.hostname
            ));
        }
        match a.challenge {
            crate::acme::ChallengeKind::Http01 if a.http_listen.is_none() => Err(
                "key `acme.http_listen`: HTTP-01 needs a plain-HTTP listener (port 80), or set challenge = \"tls-alpn-01\" with a web listener on 443".into(),
            ),
            crate::acme::ChallengeKind::TlsAlpn01 if self.web.listen.is_none() => Err(
                "key `acme.challenge`: TLS-ALPN-01 is answered by the web listener: set web.listen (port 443)".into(),
            ),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.store.validate()?;
        self.validate_acme()?;
        if self.domains.is_empty() {
            return Err("key `domains`: at least one mail domain is required".into());
        }
        for d in &self.domains {
            if !is_dns_name(d) {
                return Err(format!("key `domains`: invalid domain {d:?}"));
            }
        }
        if !caliopen_tlog::note::valid_key_name(&self.witness_name()) {
            return Err(format!(
                "key `witness.name`: {:?} is not a key name (no spaces, no '+')",
                self.witness_name()
            ));
        }
        for z in &self.dns.blocklists {
            let z = z.trim_end_matches('.');
            // Room for the reversed address in front of the zone.
            if !is_dns_name(z) || z.len() > 200 {
                return Err(format!("key `dns.blocklists`: invalid zone {z:?}"));
            }
        }
        if self.smtp.max_message_size < 1024 {
            return Err("key `smtp.max_message_size`: at least 1024 bytes".into());
        }
        // Whatever is stored can be exported and imported again (account
        // moves and handovers carry messages up to this size).
        let most = crate::admin::MAX_IMPORT_MESSAGE;
        if self.smtp.max_message_size as u64 > most {
            return Err(format!(
                "key `smtp.max_message_size`: at most {most} bytes (what an account move carries)"
            ));
        }
        if self.imap.append_limit.is_some_and(|l| u64::from(l) > most) {
            return Err(format!(
                "key `imap.append_limit`: at most {most} bytes (what an account move carries)"
            ));
        }
        if self.smtp.max_recipients == 0 {
            return Err("key `smtp.max_recipients`: must be at least 1".into());
        }
        if self.smtp.max_connections == 0 {
            return Err("key `smtp.max_connections`: must be at least 1".into());
        }
        for (key, first, max) in [
            (
                "smtp",
                self.smtp.retry_initial_seconds,
                self.smtp.retry_max_seconds,
            ),
            (
                "mesh",
                self.mesh.retry_initial_seconds,
                self.mesh.retry_max_seconds,
            ),
        ] {
            if first == 0 || max < first {
                return Err(format!(
                    "key `{key}.retry_max_seconds`: must be at least `{key}.retry_initial_seconds` (at least 1)"
                ));
            }
        }
        if self.mesh.lifetime_hours == 0 || self.smtp.queue_lifetime_hours == 0 {
            return Err(
                "key `mesh.lifetime_hours` / `smtp.queue_lifetime_hours`: at least 1".into(),
            );
        }
        if self.smtp.max_connections_per_ip == 0 {
            return Err("key `smtp.max_connections_per_ip`: must be at least 1".into());
        }
        if self.imap.max_connections == 0 || self.imap.max_connections_per_ip == 0 {
            return Err(
                "key `imap.max_connections` / `imap.max_connections_per_ip`: at least 1".into(),
            );
        }
        if self.web.max_connections == 0 || self.web.max_connections_per_ip == 0 {
            return Err(
                "key `web.max_connections` / `web.max_connections_per_ip`: at least 1".into(),
            );
        }
        if !(5..=60 * 24 * 30).contains(&self.web.session_minutes) {
            return Err("key `web.session_minutes`: between 5 and 43200 (30 days)".into());
        }
        if self.web.idle_timeout_seconds < 30 {
            return Err(
                "key `web.idle_timeout_seconds`: at least 30 (live updates keep alive every 15 s)"
                    .into(),
            );
        }
        if self.imap.idle_timeout_minutes < 30 {
            return Err("key `imap.idle_timeout_minutes`: at least 30 (RFC 9051 §5.4)".into());
        }
        if self.imap.login_timeout_seconds == 0 {
            return Err("key `imap.login_timeout_seconds`: at least 1".into());
        }
        if self.imap.append_limit.is_some_and(|a| a < 1024) {
            return Err("key `imap.append_limit`: at least 1024 bytes".into());
        }
        if !(1..=60).contains(&self.dns.timeout_seconds) {
            return Err("key `dns.timeout_seconds`: between 1 and 60".into());
        }
        if !(1..=24 * 60).contains(&self.api.token_minutes) {
            return Err("key `api.token_minutes`: between 1 and 1440".into());
        }
        if let Some(a) = &self.association {
            if !a.url.starts_with("https://") {
                return Err(format!(
                    "key `association.url`: expected https://HOST:PORT, got {:?}",
                    a.url
                ));
            }
        }
        for (d, r) in &self.smtp.routes {
            if parse_host_port(r).is_none() {
                return Err(format!(
                    "key `smtp.routes.{d}`: expected HOST:PORT, got {r:?}"
                ));
            }
        }
        if let Some(r) = &self.smtp.relay {
            let ok = r
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!("key `smtp.relay`: expected HOST:PORT, got {r:?}"));
            }
        }
        Ok(())
    }

    /// The data directory, resolved against the configuration file's directory.
    pub fn data_dir(&self) -> PathBuf {
        let d = self.data_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        if d.is_absolute() {
            return d;
        }
        match self.source.as_ref().and_then(|s| s.parent()) {
            Some(base) if !base.as_os_str().is_empty() => base.join(d),
            _ => d,
        }
    }

    /// A path from the configuration, resolved against the data directory.
    pub fn in_data(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.data_dir().join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../deploy/caliopen.example.toml");
        let c = Config::parse(text).expect("example parses");
        assert_eq!(c.domains[0], "alpha.example");
        assert!(!c.witness.enabled);
        assert_eq!(c.witness_name(), "alpha.example/witness");
    }

    #[test]
    fn errors_name_the_key_on_one_line() {
        for (text, key) in [
            ("domains = []", "domains"),
            ("domains = ['a..b']", "domains"),
            ("domains = ['a.test']\nfrobnicate = 1", "frobnicate"),
            (
                "domains = ['a.test']\n[witness]\nname = 'a b'",
                "witness.name",
            ),
            (
                "domains = ['a.test']\n[witness]\nenabled = 'yes'",
                "enabled",
            ),
            ("domains = ['a.test']\n[smtp]\nlisten = 'nope'", "listen"),
            (
                "domains = ['a.test']\n[smtp]\nmax_recipients = 0",
                "smtp.max_recipients",
            ),
            ("domains = ['a.test']\n[smtp]\nrelay = 'x'", "smtp.relay"),
            ("domains = ['a.test']\n[log]\nformat = 'xml'", "format"),
            ("hostname = 'x'", "domains"),
        ] {
            let e = Config::parse(text).expect_err(text);
            assert!(e.contains(key), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn data_dir_is_relative_to_the_file() {
        let mut c = Config::parse("domains = ['a.test']\ndata_dir = 'data'").expect("parse");
        c.source = Some(PathBuf::from("/etc/caliopen/caliopen.toml"));
        assert_eq!(c.data_dir(), PathBuf::from("/etc/caliopen/data"));
        assert_eq!(
            c.in_data(Path::new("tls.pem")),
            PathBuf::from("/etc/caliopen/data/tls.pem")
        );
    }
}

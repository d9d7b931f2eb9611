//! The association's certificate authority: one directory on disk, one
//! process at a time (sled), every operation durable before it returns.

use crate::csr::{normalize_domain, parse_csr};
use crate::error::{CaError, Result};
use crate::keyfile::{read_private, write_file_atomic, write_private_new};
use crate::member_cert::{assemble_certificate, tbs_certificate, MemberCertSpec};
use crate::store::{
    CertRecord, Change, Handover, Revocation, Status, Store, Supersession, WitnessRecord,
};
use crate::tlog::{self, Checkpoint, Entry, EntryKind, Signer};
use caliopen_charter::Charter;
use caliopen_proto::directory::{DIRECTORY_ALGORITHM, DIRECTORY_PURPOSE};
use caliopen_proto::label::{Label, LABEL_VERSION};
use caliopen_proto::pb::directory::{
    Directory, DirectoryMember, DirectoryWitness, SignedDirectory,
};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber, SigningKey,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

/// File names inside the association directory.
pub mod files {
    /// Root certificate (public).
    pub const CA_CERT: &str = "ca.pem";
    /// Root private key (0600).
    pub const CA_KEY: &str = "ca.key.pem";
    /// The charter accepted by `sign`.
    pub const CHARTER: &str = "charter.toml";
    /// sled state database.
    pub const STATE: &str = "state";
    /// Append-only audit log (JSON lines, 0600).
    pub const AUDIT_LOG: &str = "audit.log";
    /// Admin socket of a running `serve` (0600).
    pub const ADMIN_SOCKET: &str = "admin.sock";
    /// The membership log's Ed25519 signing key, PKCS#8 PEM (0600).
    pub const LOG_KEY: &str = "log.key.pem";
    /// The log's verifier key, signed-note format (public).
    pub const LOG_PUB: &str = "log.pub";
}

/// Tunables; the defaults are what `caliopen-ca` uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of a CRL (its `nextUpdate` − `thisUpdate`).
    pub crl_validity: Duration,
    /// Lifetime of a signed directory.
    pub directory_validity: Duration,
    /// Default member certificate lifetime in days.
    pub default_days: u32,
    /// Longest member certificate lifetime in days.
    pub max_days: u32,
    /// How long a member's previous certificate stays listed in the directory
    /// once a newer one is issued, so that peers that cached the directory or
    /// the member still using it keep working meanwhile. Every certificate of
    /// the member older than that previous one leaves the directory at once.
    pub superseded_overlap: Duration,
    /// Longest time between two signatures of the log's checkpoint: when
    /// nothing changed for that long, [`Authority::heartbeat_if_due`]
    /// re-signs the same tree head with a fresh timestamp, so a member can
    /// tell how stale the checkpoint it holds may be (issue 18).
    pub checkpoint_interval: Duration,
}

/// Most certificates the directory lists for one member: its current one and
/// the previous one during [`Settings::superseded_overlap`].
pub const MAX_LISTED_PER_MEMBER: usize = 2;

/// Default of [`Settings::checkpoint_interval`] (seconds): a member that
/// heard nothing for a few of these knows it is cut off from the log.
pub const DEFAULT_CHECKPOINT_INTERVAL_SECS: i64 = 60;

/// `next_prune` when no listed certificate is due to leave the directory.
const NO_PRUNE: i64 = i64::MAX;

impl Default for Settings {
    fn default() -> Self {
        Self {
            crl_validity: Duration::days(7),
            directory_validity: Duration::days(7),
            default_days: 30,
            max_days: 397,
            superseded_overlap: Duration::minutes(10),
            checkpoint_interval: Duration::seconds(DEFAULT_CHECKPOINT_INTERVAL_SECS),
        }
    }
}

/// What the association currently publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Number of the current CRL.
    pub crl_number: u64,
    /// The current CRL, DER.
    pub crl_der: Arc<Vec<u8>>,
    /// `nextUpdate` of the current CRL (Unix seconds).
    pub crl_next_update: i64,
    /// Serial of the current directory.
    pub directory_serial: u64,
    /// The current directory, encoded `SignedDirectory`.
    pub directory: Arc<Vec<u8>>,
    /// `valid_until` of the current directory (Unix seconds).
    pub directory_valid_until: i64,
    /// Number of entries in the membership log.
    pub log_size: u64,
    /// The checkpoint to publish (`/log/checkpoint`, `Watch`): the latest
    /// signed one with the witness cosignatures collected for it, or, when
    /// a quorum is set and it has not reached it yet, the latest one that
    /// did (see [`Authority::add_cosignatures`]).
    pub checkpoint: Arc<String>,
    /// The latest signed checkpoint as stored, without witness
    /// cosignatures: what the witnesses are asked to cosign.
    pub log_note: Arc<String>,
}

/// A request to issue a member certificate.
#[derive(Debug, Clone, Default)]
pub struct SignRequest {
    /// The CSR, PEM or DER.
    pub csr: Vec<u8>,
    /// The member's identifier.
    pub member_id: String,
    /// Charter version the operator signed.
    pub charter_version: String,
    /// Successor member's domain.
    pub successor: Option<String>,
    /// Mesh endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// Lifetime in days (`None`: the default).
    pub days: Option<u32>,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its record (serial, PEM, …).
    pub record: CertRecord,
}

/// What to revoke.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One certificate, by serial (hex; colons and `0x` allowed).
    Serial(String),
    /// Every unrevoked certificate holding this domain.
    Domain(String),
}

/// Result of a revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Serials revoked now.
    pub newly_revoked: Vec<String>,
    /// Serials that were revoked before.
    pub already_revoked: Vec<String>,
    /// Number of the current CRL afterwards.
    pub crl_number: u64,
}

/// A listed certificate.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// Standing now.
    pub status: Status,
    /// The record, without the PEM.
    #[serde(flatten)]
    pub record: CertRecord,
}

/// The association's CA, opened on its directory.
pub struct Authority {
    dir: PathBuf,
    store: Store,
    key: KeyPair,
    root_der: Vec<u8>,
    root_pem: String,
    issuer_name_der: Vec<u8>,
    root_key_id: Vec<u8>,
    name: String,
    charter: Charter,
    settings: Settings,
    log_key: Signer,
    write_lock: Mutex<()>,
    published: watch::Sender<Published>,
    /// When the next superseded certificate listed in the current directory
    /// reaches the end of its overlap (Unix seconds; [`NO_PRUNE`]: none).
    next_prune: AtomicI64,
    /// When the published checkpoint was signed (Unix seconds; 0: undated).
    checkpoint_time: AtomicI64,
    /// Witness cosignatures collected (in memory: collected again after a
    /// restart).
    cosigned: Mutex<Cosigned>,
}

/// The witness cosignatures collected for checkpoints.
#[derive(Debug, Default)]
struct Cosigned {
    /// The latest stored note asked for, the note with the cosignatures
    /// that verified, and how many distinct witnesses gave one.
    latest: Option<(String, String, usize)>,
    /// The latest note that reached the quorum in force then.
    witnessed: Option<String>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn random_serial() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| CaError::Crypto("random generator failed".into()))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x40; // and always 16 bytes long
    Ok(b)
}

/// Parses a serial given by an operator: hex, optionally with `0x` and colons.
pub fn parse_serial(s: &str) -> Result<Vec<u8>> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let t = if t.len() % 2 == 1 { format!("0{t}") } else { t };
    let bytes = hex::decode(&t)
        .map_err(|_| CaError::BadInput(format!("invalid serial {s:?}: expected hex")))?;
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    if bytes.len() == skip {
        return Err(CaError::BadInput(format!("invalid serial {s:?}")));
    }
    Ok(bytes[skip..].to_vec())
}

fn parse_reason(r: &str) -> Result<(RevocationReason, &'static str)> {
    let norm: String = r
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    Ok(match norm.as_str() {
        "" | "unspecified" => (RevocationReason::Unspecified, "unspecified"),
        "keycompromise" => (RevocationReason::KeyCompromise, "keyCompromise"),
        "cacompromise" => (RevocationReason::CaCompromise, "cACompromise"),
        "affiliationchanged" => (RevocationReason::AffiliationChanged, "affiliationChanged"),
        "superseded" => (RevocationReason::Superseded, "superseded"),
        "cessationofoperation" => (
            RevocationReason::CessationOfOperation,
            "cessationOfOperation",
        ),
        "privilegewithdrawn" => (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn"),
        _ => {
            return Err(CaError::BadInput(format!(
                "unknown revocation reason {r:?} (use unspecified, keyCompromise, cACompromise, \
                 affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn)"
            )))
        }
    })
}

fn reason_from_name(name: &str) -> RevocationReason {
    parse_reason(name)
        .map(|(r, _)| r)
        .unwrap_or(RevocationReason::Unspecified)
}

fn check_member_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(CaError::BadInput(format!(
            "invalid member id {id:?}: 1-64 of a-z 0-9 . - starting with a letter or digit"
        )))
    }
}

fn check_endpoint(ep: &str) -> Result<String> {
    let bad = || CaError::BadInput(format!("invalid endpoint {ep:?}: expected HOST:PORT"));
    if let Ok(sa) = ep.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad());
        }
        return Ok(sa.to_string());
    }
    let (host, port) = ep.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = if host.parse::<std::net::Ipv4Addr>().is_ok() {
        host.to_owned()
    } else {
        normalize_domain(host).map_err(|_| bad())?
    };
    Ok(format!("{host}:{port}"))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

/// The log's origin (and key name) for an association that has none yet:
/// a schema-less URL-like name (tlog-checkpoint §Note text) made of the
/// association's name and the start of its root key identifier, under
/// `.invalid` since nothing is served there. Chosen once and kept in the
/// state (`log_origin`), so that a later root rotation does not change it.
pub fn default_log_origin(name: &str, root_key_id: &[u8]) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "association" } else { slug };
    let id = hex::encode(&root_key_id[..root_key_id.len().min(4)]);
    format!("caliopen.invalid/{slug}/{id}")
}

/// Reads the log key, or makes it when the log has never been signed
/// (`caliopen-ca init`, or the first open of an association older than
/// the log). A missing key for a log that exists is an error: members
/// pinned that key, a new one would look like a forged log.
fn open_log_key(dir: &Path, store: &Store, name: &str, root_key_id: &[u8]) -> Result<Signer> {
    let origin = match store.log_origin()? {
        Some(o) => o,
        None => default_log_origin(name, root_key_id),
    };
    let key_path = dir.join(files::LOG_KEY);
    let pub_path = dir.join(files::LOG_PUB);
    let signer = if key_path.exists() {
        let text = read_private(&key_path)?;
        let der = pem::parse(&text)
            .ok()
            .filter(|p| p.tag() == "PRIVATE KEY")
            .ok_or_else(|| {
                CaError::State(format!("{} is not a PEM private key", key_path.display()))
            })?
            .into_contents();
        Signer::from_pkcs8(&origin, &der)
            .map_err(|e| CaError::State(format!("{}: {e}", key_path.display())))?
    } else {
        if store.log_checkpoint()?.is_some() || store.log_size()? > 0 {
            return Err(CaError::State(format!(
                "{} is missing but the membership log was signed with it: restore it from the backup \
                 (a new key would make every member see a different log)",
                key_path.display()
            )));
        }
        let (signer, der) =
            Signer::generate(&origin).map_err(|e| CaError::Crypto(e.to_string()))?;
        write_private_new(
            &key_path,
            pem::encode(&pem::Pem::new("PRIVATE KEY", der)).as_bytes(),
        )?;
        if store.all_certs()?.is_empty() {
            tracing::info!(path = %key_path.display(), key = %signer.verifier(),
                "made the membership log key");
        } else {
            tracing::warn!(path = %key_path.display(), key = %signer.verifier(),
                "this association had no membership log key: made one (back it up)");
        }
        signer
    };
    if store.log_origin()?.is_none() {
        store.set_log_origin(&origin)?;
    }
    let vkey = format!("{}\n", signer.verifier());
    if fs::read_to_string(&pub_path).ok().as_deref() != Some(vkey.as_str()) {
        write_file_atomic(&pub_path, vkey.as_bytes(), 0o644)?;
    }
    Ok(signer)
}

/// One log entry as listed by `caliopen-ca log entries`.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntryInfo {
    /// Position in the log (0-based).
    pub index: u64,
    /// `issuance`, `renewal`, `revocation`, `baseline` or `handover`.
    pub kind: &'static str,
    /// When the operation happened (Unix seconds).
    pub time: u64,
    /// Serial (hex) of the certificate issued or revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SHA-256 (hex) of the certificate issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Member identifier of the certificate issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// Serial (hex) of the certificate renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed_from: Option<String>,
    /// Revocation reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// New baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_software_version: Option<String>,
    /// The successor a handover names (`member_id` is the member that closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

impl LogEntryInfo {
    fn new(index: u64, e: &Entry) -> Self {
        let mut info = Self {
            index,
            kind: e.kind.name(),
            time: e.time,
            serial: None,
            sha256: None,
            member_id: None,
            renewed_from: None,
            reason: None,
            min_software_version: None,
            successor: None,
        };
        let cert = |info: &mut Self, der: &[u8]| {
            info.sha256 = Some(sha256_hex(der));
            if let Ok((_, c)) = X509Certificate::from_der(der) {
                info.serial = Some(hex::encode(c.raw_serial()));
                info.member_id = crate::member_cert::label_of(&c).map(|l| l.member_id);
            }
        };
        match &e.kind {
            EntryKind::Issuance { cert_der } => cert(&mut info, cert_der),
            EntryKind::Renewal {
                renewed_from,
                cert_der,
            } => {
                cert(&mut info, cert_der);
                info.renewed_from = Some(hex::encode(renewed_from));
            }
            EntryKind::Revocation { serial, reason } => {
                info.serial = Some(hex::encode(serial));
                info.reason = Some(reason.clone());
            }
            EntryKind::Baseline {
                min_software_version,
            } => info.min_software_version = Some(min_software_version.clone()),
            EntryKind::Handover { from, to } => {
                info.member_id = Some(from.clone());
                info.successor = Some(to.clone());
            }
        }
        info
    }

    /// One line for humans: what the entry did.
    pub fn summary(&self) -> String {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        match self.kind {
            "issuance" => format!(
                "serial {} member {} sha256 {}",
                o(&self.serial),
                o(&self.member_id),
                o(&self.sha256)
            ),
            "renewal" => format!(
                "serial {} member {} renews {} sha256 {}",
                o(&self.serial),
                o(&self.member_id),
                o(&self.renewed_from),
                o(&self.sha256)
            ),
            "revocation" => format!("serial {} reason {}", o(&self.serial), o(&self.reason)),
            "handover" => format!(
                "member {} hands over to {}",
                o(&self.member_id),
                o(&self.successor)
            ),
            _ => format!("min_software_version {:?}", o(&self.min_software_version)),
        }
    }
}

/// What `Authority::verify_log` checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogVerified {
    /// Number of entries.
    pub size: u64,
    /// The tree head, recomputed from the entries.
    pub root: tlog::Hash,
    /// When the latest checkpoint was signed (its `cosignature/v1`
    /// timestamp, Unix seconds); `None` for a checkpoint written before
    /// checkpoints were dated (the next heartbeat dates it).
    pub signed_at: Option<u64>,
}

impl Authority {
    /// Creates a new association in `dir`: root key (0600) and self-signed
    /// root certificate, charter, state, first CRL and directory.
    pub fn init(dir: &Path, name: &str, root_days: u32, settings: Settings) -> Result<Self> {
        let name = name.trim();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(CaError::BadInput(
                "invalid association name: 1-64 printable characters".into(),
            ));
        }
        if !(1..=36500).contains(&root_days) {
            return Err(CaError::BadInput(
                "root lifetime must be 1-36500 days".into(),
            ));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CaError::io(format!("create {}", dir.display()), e))?;
        for f in [files::CA_CERT, files::CA_KEY, files::STATE] {
            if dir.join(f).exists() {
                return Err(CaError::State(format!(
                    "{} already holds an association ({f} exists)",
                    dir.display()
                )));
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let t = now();
        params.not_before = t - Duration::minutes(5);
        params.not_after = t + Duration::days(root_days.into());
        let cert = params.self_signed(&key)?;

        write_private_new(&dir.join(files::CA_KEY), key.serialize_pem().as_bytes())?;
        write_file_atomic(&dir.join(files::CA_CERT), cert.pem().as_bytes(), 0o644)?;
        if !dir.join(files::CHARTER).exists() {
            write_file_atomic(
                &dir.join(files::CHARTER),
                caliopen_charter::EMBEDDED_CHARTER_TOML.as_bytes(),
                0o644,
            )?;
        }
        let ca = Self::open(dir, settings)?;
        ca.audit(&serde_json::json!({"event": "init", "name": name}))?;
        Ok(ca)
    }

    /// Opens an existing association directory. Refuses a root key that
    /// others can read.
    pub fn open(dir: &Path, settings: Settings) -> Result<Self> {
        let key_path = dir.join(files::CA_KEY);
        if !key_path.exists() {
            return Err(CaError::State(format!(
                "{} holds no association (run `caliopen-ca init` first)",
                dir.display()
            )));
        }
        let key_pem = String::from_utf8(read_private(&key_path)?)
            .map_err(|_| CaError::State(format!("{} is not PEM", key_path.display())))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CaError::State(format!("{}: {e}", key_path.display())))?;
        let cert_path = dir.join(files::CA_CERT);
        let root_pem = fs::read_to_string(&cert_path)
            .map_err(|e| CaError::io(format!("read {}", cert_path.display()), e))?;
        let root_der = pem::parse(&root_pem)
            .map_err(|e| CaError::State(format!("{}: {e}", cert_path.display())))?
            .into_contents();
        let (issuer_name_der, root_key_id, name, root_pub) = {
            let (_, c) = X509Certificate::from_der(&root_der)
                .map_err(|e| CaError::State(format!("{}: {e}", cert_path.display())))?;
            let ski = caliopen_proto::RootKey::from_cert_der(&root_der)
                .map(|k| k.key_id)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| CaError::State("root certificate has no SKI".into()))?;
            let name = c
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or("")
                .to_owned();
            (
                c.subject().as_raw().to_vec(),
                ski,
                name,
                c.public_key().subject_public_key.data.to_vec(),
            )
        };
        if root_pub != key.public_key_raw() {
            return Err(CaError::State(format!(
                "{} does not match {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        let charter_path = dir.join(files::CHARTER);
        let charter = if charter_path.exists() {
            let text = fs::read_to_string(&charter_path)
                .map_err(|e| CaError::io(format!("read {}", charter_path.display()), e))?;
            Charter::parse(&text)
                .map_err(|e| CaError::State(format!("{}: {e}", charter_path.display())))?
        } else {
            Charter::embedded()
        };
        let store = Store::open(&dir.join(files::STATE))?;
        let placeholder = Published {
            crl_number: 0,
            crl_der: Arc::new(Vec::new()),
            crl_next_update: 0,
            directory_serial: 0,
            directory: Arc::new(Vec::new()),
            directory_valid_until: 0,
            log_size: 0,
            checkpoint: Arc::new(String::new()),
            log_note: Arc::new(String::new()),
        };
        let log_key = open_log_key(dir, &store, &name, &root_key_id)?;
        let (published, _) = watch::channel(placeholder);
        let ca = Self {
            dir: dir.to_owned(),
            store,
            key,
            root_der,
            root_pem,
            issuer_name_der,
            root_key_id,
            name,
            charter,
            settings,
            log_key,
            write_lock: Mutex::new(()),
            published,
            next_prune: AtomicI64::new(NO_PRUNE),
            checkpoint_time: AtomicI64::new(0),
            cosigned: Mutex::new(Cosigned::default()),
        };
        ca.load_published()?;
        Ok(ca)
    }

    /// Makes sure the membership log exists and is signed by our key: an
    /// association older than the log gets its certificate records as the
    /// first entries, in issuance order, then their revocations and the
    /// baseline, in one commit; a new one signs the empty tree.
    fn open_log_locked(&self) -> Result<()> {
        if let Some(cp) = self.store.log_checkpoint()? {
            let (c, n) = Checkpoint::open(cp.as_bytes(), self.log_key.verifier()).map_err(|e| {
                CaError::State(format!(
                    "the stored log checkpoint does not verify with {}: {e}",
                    files::LOG_KEY
                ))
            })?;
            // Undated (written before checkpoints were dated): 0, so the
            // first heartbeat dates it at once.
            let at = tlog::CosignatureVerifier::for_log(self.log_key.verifier())
                .timestamp(&n)
                .map_err(|e| CaError::State(format!("the stored log checkpoint: {e}")))?
                .unwrap_or(0);
            self.checkpoint_time
                .store(i64::try_from(at).unwrap_or(i64::MAX), Ordering::Relaxed);
            if c.size != self.store.log_size()? {
                return Err(CaError::State(
                    "the stored log checkpoint is not for the stored log size".into(),
                ));
            }
            return Ok(());
        }
        if self.store.log_size()? != 0 {
            return Err(CaError::State(
                "the membership log has no checkpoint".into(),
            ));
        }
        let mut certs = self.store.all_certs()?;
        // Issuance order as the records tell it: by issuance second, a
        // renewal after what it renewed within the same second (its depth
        // in the renewal chain), then by serial.
        let by_serial: std::collections::HashMap<String, Option<String>> = certs
            .iter()
            .map(|r| (r.serial.clone(), r.renewed_from.clone()))
            .collect();
        let depth = |r: &CertRecord| {
            let mut d = 0usize;
            let mut at = r.renewed_from.clone();
            while let Some(s) = at {
                d += 1;
                if d > by_serial.len() {
                    break;
                }
                at = by_serial.get(&s).cloned().flatten();
            }
            d
        };
        certs.sort_by_cached_key(|r| (r.not_before, depth(r), r.serial.clone()));
        let mut entries = Vec::new();
        for r in &certs {
            let der = pem::parse(&r.certificate_pem)
                .map_err(|e| CaError::State(format!("certificate {}: {e}", r.serial)))?
                .into_contents();
            // Issued at not_before + 5 minutes (see `issue_locked`).
            let time = u64::try_from(r.not_before + 300).unwrap_or(0);
            let kind = match &r.renewed_from {
                Some(from) => EntryKind::Renewal {
                    renewed_from: hex::decode(from)
                        .map_err(|_| CaError::State(format!("corrupt serial {from}")))?,
                    cert_der: der,
                },
                None => EntryKind::Issuance { cert_der: der },
            };
            entries.push(Entry { time, kind });
        }
        let mut revoked: Vec<&CertRecord> = certs.iter().filter(|r| r.revoked.is_some()).collect();
        revoked.sort_by_key(|r| (r.revoked.as_ref().map(|v| v.at), r.serial.clone()));
        for r in revoked {
            let rv = r.revoked.as_ref().map(|v| (v.at, v.reason.clone()));
            let (at, reason) = rv.unwrap_or_default();
            entries.push(Entry {
                time: u64::try_from(at).unwrap_or(0),
                kind: EntryKind::Revocation {
                    serial: hex::decode(&r.serial)
                        .map_err(|_| CaError::State(format!("corrupt serial {}", r.serial)))?,
                    reason,
                },
            });
        }
        let baseline = self.store.min_software_version()?;
        if !baseline.is_empty() {
            entries.push(Entry {
                time: unix(now()),
                kind: EntryKind::Baseline {
                    min_software_version: baseline,
                },
            });
        }
        let (size, _) = self.commit_logged(&Change::default(), &entries)?;
        if size > 0 {
            tracing::info!(
                entries = size,
                "membership log created from the existing certificate records"
            );
            self.audit(&serde_json::json!({"event": "log_migrated", "entries": size}))?;
        }
        Ok(())
    }

    /// Appends `entries` with `change` and a new checkpoint, atomically.
    fn commit_logged(&self, change: &Change<'_>, entries: &[Entry]) -> Result<(u64, String)> {
        let bytes = entries
            .iter()
            .map(|e| {
                e.encode()
                    .map_err(|err| CaError::State(format!("log entry: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let at = unix(now()).max(self.checkpoint_time.load(Ordering::Relaxed).max(0) as u64);
        let out = self.store.commit_logged(change, &bytes, &|size, root| {
            self.sign_checkpoint(
                &Checkpoint {
                    origin: self.log_key.verifier().name().to_owned(),
                    size,
                    root: *root,
                    extensions: Vec::new(),
                },
                at,
            )
        })?;
        self.checkpoint_time
            .store(i64::try_from(at).unwrap_or(i64::MAX), Ordering::Relaxed);
        Ok(out)
    }

    /// The checkpoint signed by the log key and dated `at` by the log's own
    /// `cosignature/v1` ([`tlog::cosignature`]).
    fn sign_checkpoint(&self, c: &Checkpoint, at: u64) -> Result<String> {
        tlog::sign_timestamped(c, &self.log_key, at)
            .map_err(|e| CaError::Crypto(format!("log checkpoint: {e}")))
    }

    /// Re-signs the unchanged checkpoint with a fresh timestamp once
    /// [`Settings::checkpoint_interval`] passed since it was last signed (the
    /// heartbeat), durably, and publishes it. Returns true when it did.
    pub fn heartbeat_if_due(&self) -> Result<bool> {
        self.heartbeat_if_due_at(now())
    }

    /// [`Authority::heartbeat_if_due`] with an explicit clock. A clock that
    /// went back signs nothing: timestamps never decrease.
    pub fn heartbeat_if_due_at(&self, at: OffsetDateTime) -> Result<bool> {
        let _g = self.lock();
        let old = self.log_checkpoint()?;
        let (c, n) = Checkpoint::open(old.as_bytes(), self.log_key.verifier())
            .map_err(|e| CaError::State(format!("stored log checkpoint: {e}")))?;
        let last = tlog::CosignatureVerifier::for_log(self.log_key.verifier())
            .timestamp(&n)
            .map_err(|e| CaError::State(format!("stored log checkpoint: {e}")))?
            .unwrap_or(0);
        let t = unix(at);
        let every = u64::try_from(self.settings.checkpoint_interval.whole_seconds()).unwrap_or(0);
        if t < last.saturating_add(every.max(1)) {
            return Ok(false);
        }
        let new = self.sign_checkpoint(&c, t)?;
        if !self.store.replace_checkpoint(&old, &new)? {
            // Only commits change it, and they hold the same lock.
            return Err(CaError::State(
                "the log checkpoint changed during a heartbeat".into(),
            ));
        }
        self.checkpoint_time
            .store(i64::try_from(t).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.republish()?;
        Ok(true)
    }

    /// When the next heartbeat is due (Unix seconds): the published
    /// checkpoint's timestamp plus [`Settings::checkpoint_interval`]; now
    /// for an undated checkpoint.
    pub fn next_heartbeat_at(&self) -> i64 {
        let last = self.checkpoint_time.load(Ordering::Relaxed);
        if last == 0 {
            return 0;
        }
        last.saturating_add(self.settings.checkpoint_interval.whole_seconds().max(1))
    }

    /// The log's verifier key (`<origin>+<key id>+<key>`).
    pub fn log_verifier(&self) -> &tlog::Verifier {
        self.log_key.verifier()
    }

    /// The checkpoint published (`/log/checkpoint`, `Watch`): the latest
    /// signed one with the witness cosignatures collected for it (see
    /// [`Authority::add_cosignatures`]).
    pub fn published_checkpoint(&self) -> Result<String> {
        let p = self.published.borrow().checkpoint.clone();
        if p.is_empty() {
            return self.log_checkpoint();
        }
        Ok(p.as_ref().clone())
    }

    /// The latest signed checkpoint, as stored (without witness
    /// cosignatures).
    pub fn log_checkpoint(&self) -> Result<String> {
        self.store
            .log_checkpoint()?
            .ok_or_else(|| CaError::State("the membership log has no checkpoint".into()))
    }

    /// A tlog-tiles hash tile or entry bundle of the current tree, or
    /// `None` when the tree does not hold all it covers (yet, or ever).
    /// Read without the write lock: stored hashes and entries are only
    /// ever appended, and the size is read first.
    pub fn log_tile(&self, tile: &tlog::Tile) -> Result<Option<Vec<u8>>> {
        let size = self.store.log_size()?;
        if !tile.within(size) {
            return Ok(None);
        }
        let bytes = match tile.kind {
            tlog::TileKind::Hash(_) => tile.hashes(&self.store)?,
            tlog::TileKind::Entries => {
                let entries = self.store.log_entry_range(tile.entry_range())?;
                tlog::tiles::encode_bundle(&entries)
                    .map_err(|e| CaError::State(format!("log entry bundle: {e}")))?
            }
        };
        Ok(Some(bytes))
    }

    /// Every log entry's bytes, in order (what the leaves hash).
    pub fn log_entry_bytes(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .store
            .log_entries()?
            .into_iter()
            .map(|(_, b)| b)
            .collect())
    }

    /// Every log entry, decoded.
    pub fn log_entries(&self) -> Result<Vec<LogEntryInfo>> {
        self.store
            .log_entries()?
            .iter()
            .map(|(i, b)| {
                let e = Entry::decode(b)
                    .map_err(|err| CaError::State(format!("log entry {i}: {err}")))?;
                Ok(LogEntryInfo::new(*i, &e))
            })
            .collect()
    }

    /// Recomputes the whole tree from the entries and checks it against the
    /// stored hashes, the stored size and the latest checkpoint (signature
    /// and head), and that every certificate record and revocation is in
    /// the log. The first discrepancy is the error.
    pub fn verify_log(&self) -> Result<LogVerified> {
        let _g = self.lock();
        let bad = |m: String| CaError::State(format!("log verification failed: {m}"));
        let size = self.store.log_size()?;
        let mut tree = tlog::MemoryTree::new();
        let mut issued = HashSet::new();
        let mut revoked = HashSet::new();
        for (i, b) in self.store.log_entries()? {
            if i != tree.size() {
                return Err(bad(format!("entry {} is missing", tree.size())));
            }
            let e = Entry::decode(&b).map_err(|err| bad(format!("entry {i}: {err}")))?;
            match &e.kind {
                EntryKind::Issuance { cert_der } | EntryKind::Renewal { cert_der, .. } => {
                    issued.insert(sha256_hex(cert_der));
                }
                EntryKind::Revocation { serial, .. } => {
                    revoked.insert(hex::encode(serial));
                }
                EntryKind::Baseline { .. } | EntryKind::Handover { .. } => {}
            }
            tree.push_entry(&b);
        }
        if tree.size() != size {
            return Err(bad(format!(
                "{} entries stored, the log size says {size}",
                tree.size()
            )));
        }
        let stored = self.store.log_nodes()?;
        let want: usize = tree.levels().iter().map(Vec::len).sum();
        if stored.len() != want {
            return Err(bad(format!(
                "{} hashes stored, {want} expected for {size} entries",
                stored.len()
            )));
        }
        for ((level, index), h) in stored {
            let ok = tree
                .levels()
                .get(usize::from(level))
                .and_then(|l| l.get(usize::try_from(index).ok()?))
                == Some(&h);
            if !ok {
                return Err(bad(format!("stored hash ({level}, {index}) differs")));
            }
        }
        let root = tree.root_at(size);
        let cp = self.log_checkpoint()?;
        let (c, n) = Checkpoint::open(cp.as_bytes(), self.log_key.verifier())
            .map_err(|e| bad(format!("latest checkpoint: {e}")))?;
        let signed_at = tlog::CosignatureVerifier::for_log(self.log_key.verifier())
            .timestamp(&n)
            .map_err(|e| bad(format!("latest checkpoint's timestamp: {e}")))?;
        if c.size != size || c.root != root {
            return Err(bad(format!(
                "the latest checkpoint is for size {} with another head",
                c.size
            )));
        }
        for r in self.store.all_certs()? {
            if !issued.contains(&r.sha256) {
                return Err(bad(format!("certificate {} is not in the log", r.serial)));
            }
            if r.revoked.is_some() && !revoked.contains(&r.serial) {
                return Err(bad(format!(
                    "the revocation of {} is not in the log",
                    r.serial
                )));
            }
        }
        Ok(LogVerified {
            size,
            root,
            signed_at,
        })
    }

    /// Loads the stored CRL and directory into the published state, issuing
    /// any that is missing.
    fn load_published(&self) -> Result<()> {
        let _g = self.lock();
        self.open_log_locked()?;
        if self.store.current_crl()?.is_none() {
            self.issue_crl_locked()?;
        }
        // A directory written before it named each certificate's log index
        // is reissued, so that members can check inclusion.
        let stale = self
            .store
            .current_directory()?
            .map(|b| {
                SignedDirectory::decode(b.as_slice())
                    .ok()
                    .and_then(|s| Directory::decode(s.directory.as_slice()).ok())
                    .is_none_or(|d| {
                        d.members
                            .iter()
                            .any(|m| m.cert_sha256.len() != m.cert_log_index.len())
                    })
            })
            .unwrap_or(true);
        if stale {
            self.issue_directory_locked(now())?;
        }
        // Which superseded certificates the stored directory still lists, and
        // so when it must be reissued without them (also when their overlap
        // ended while no service ran: the first refresh prunes them).
        let listed: HashSet<String> = self
            .store
            .current_directory()?
            .and_then(|b| SignedDirectory::decode(b.as_slice()).ok())
            .and_then(|s| Directory::decode(s.directory.as_slice()).ok())
            .map(|d| {
                d.members
                    .iter()
                    .flat_map(|m| m.cert_sha256.iter().map(hex::encode))
                    .collect()
            })
            .unwrap_or_default();
        let certs = self.store.all_certs()?;
        self.set_next_prune(certs.iter().filter(|r| listed.contains(&r.sha256)));
        self.store.flush()?;
        self.republish()
    }

    fn set_next_prune<'a>(&self, listed: impl Iterator<Item = &'a CertRecord>) {
        let at = listed
            .filter(|r| r.revoked.is_none())
            .filter_map(|r| r.superseded.as_ref().map(|s| s.listed_until))
            .min()
            .unwrap_or(NO_PRUNE);
        self.next_prune.store(at, Ordering::Relaxed);
    }

    /// When a superseded certificate listed in the current directory reaches
    /// the end of its overlap (Unix seconds): [`Authority::refresh_if_due`]
    /// then issues a directory without it.
    pub fn next_prune_at(&self) -> Option<i64> {
        Some(self.next_prune.load(Ordering::Relaxed)).filter(|t| *t != NO_PRUNE)
    }

    fn republish(&self) -> Result<()> {
        let crl_der = self.store.current_crl()?.unwrap_or_default();
        let crl_next_update =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl_der)
                .ok()
                .and_then(|(_, c)| c.next_update())
                .map(|t| t.timestamp())
                .unwrap_or(0);
        let directory = self.store.current_directory()?.unwrap_or_default();
        let directory_valid_until = SignedDirectory::decode(directory.as_slice())
            .ok()
            .and_then(|s| Directory::decode(s.directory.as_slice()).ok())
            .map(|d| d.valid_until)
            .unwrap_or(0);
        let log_note = self.store.log_checkpoint()?.unwrap_or_default();
        self.published.send_replace(Published {
            crl_number: self.store.crl_number()?,
            crl_der: Arc::new(crl_der),
            crl_next_update,
            directory_serial: self.store.directory_serial()?,
            directory: Arc::new(directory),
            directory_valid_until,
            log_size: self.store.log_size()?,
            checkpoint: Arc::new(self.checkpoint_to_publish(&log_note)?),
            log_note: Arc::new(log_note),
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave sled half-written (each
        // operation flushes at its end), so a poisoned lock is still usable.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes the membership log from the state (tests: make a state as
    /// an association older than the log left it).
    #[doc(hidden)]
    pub fn wipe_log_for_tests(&self) -> Result<()> {
        self.store.wipe_log()?;
        self.store.flush()
    }

    /// Stores `note` as the latest checkpoint as it is (tests: a checkpoint
    /// written by an older version).
    #[doc(hidden)]
    pub fn replace_checkpoint_for_tests(&self, note: &str) -> Result<()> {
        let old = self.log_checkpoint()?;
        self.store.replace_checkpoint(&old, note)?;
        Ok(())
    }

    /// The association directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The association's name (root CN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// The root's key pair (for the service's own TLS certificate).
    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    /// The charter in force.
    pub fn charter(&self) -> &Charter {
        &self.charter
    }

    /// Subscribes to what is published (CRL and directory).
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// What is published now.
    pub fn published(&self) -> Published {
        self.published.borrow().clone()
    }

    fn audit(&self, event: &serde_json::Value) -> Result<()> {
        let path = self.dir.join(files::AUDIT_LOG);
        let mut line = serde_json::json!({"ts": now().unix_timestamp()});
        if let (Some(obj), Some(ev)) = (line.as_object_mut(), event.as_object()) {
            obj.extend(ev.clone());
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CaError::io(format!("open {}", path.display()), e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| CaError::io(format!("append to {}", path.display()), e))
    }

    /// Issues a member certificate from a CSR, after every policy check.
    pub fn sign(&self, req: &SignRequest) -> Result<Issued> {
        self.sign_at(req, now())
    }

    /// [`Authority::sign`] with an explicit clock: the certificate's validity
    /// starts at `at` and the domain check considers members active at `at`.
    pub fn sign_at(&self, req: &SignRequest, at: OffsetDateTime) -> Result<Issued> {
        check_member_id(&req.member_id)?;
        if !self.charter.accepts(&req.charter_version) {
            return Err(CaError::BadInput(format!(
                "unknown charter version {:?} (this association accepts {})",
                req.charter_version,
                std::iter::once(&self.charter.version)
                    .chain(&self.charter.accepted_versions)
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let successor = req
            .successor
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(normalize_domain)
            .transpose()?;
        let endpoints = req
            .endpoints
            .iter()
            .map(|e| check_endpoint(e))
            .collect::<Result<Vec<_>>>()?;
        let days = req.days.unwrap_or(self.settings.default_days);
        if days == 0 || days > self.settings.max_days {
            return Err(CaError::BadInput(format!(
                "--days must be 1-{}",
                self.settings.max_days
            )));
        }
        let csr = parse_csr(&req.csr)?;
        let _g = self.lock();
        let t = at;
        let mut keep: Option<CertRecord> = None;
        for rec in self.store.all_certs()? {
            if rec.status(t.unix_timestamp()) != Status::Active {
                continue;
            }
            if rec.member_id == req.member_id {
                // The member's newest listed certificate gets the overlap.
                if keep
                    .as_ref()
                    .is_none_or(|k| (rec.not_before, &rec.serial) > (k.not_before, &k.serial))
                {
                    keep = Some(rec);
                }
                continue;
            }
            if let Some(d) = csr.dns_names.iter().find(|d| rec.domains.contains(d)) {
                return Err(CaError::Refused(format!(
                    "domain {d} is already held by active member {} (serial {})",
                    rec.member_id, rec.serial
                )));
            }
        }
        let (record, der) = self.issue_locked(
            &csr,
            Label {
                version: LABEL_VERSION,
                member_id: req.member_id.clone(),
                charter_version: req.charter_version.clone(),
                successor,
            },
            endpoints,
            days,
            None,
            at,
        )?;
        self.commit_logged(
            &Change {
                certs: vec![(hex::decode(&record.serial).unwrap_or_default(), &record)],
                ..Change::default()
            },
            &[Entry {
                time: unix(at),
                kind: EntryKind::Issuance { cert_der: der },
            }],
        )?;
        self.audit(&serde_json::json!({
            "event": "issue", "serial": record.serial, "member_id": record.member_id,
            "domains": record.domains, "charter_version": record.charter_version,
            "not_after": record.not_after, "sha256": record.sha256,
        }))?;
        self.supersede_locked(&record, keep.map(|k| k.serial).as_deref(), at)?;
        self.issue_directory_locked(now())?;
        self.store.flush()?;
        self.republish()?;
        Ok(Issued { record })
    }

    fn issue_locked(
        &self,
        csr: &crate::csr::CsrInfo,
        label: Label,
        endpoints: Vec<String>,
        days: u32,
        renewed_from: Option<String>,
        t: OffsetDateTime,
    ) -> Result<(CertRecord, Vec<u8>)> {
        let serial = random_serial()?;
        let not_before = t - Duration::minutes(5);
        let not_after = t + Duration::days(days.into());
        let tbs = tbs_certificate(&MemberCertSpec {
            serial: &serial,
            issuer_name_der: &self.issuer_name_der,
            issuer_key_id: &self.root_key_id,
            not_before,
            not_after,
            spki_der: &csr.spki_der,
            public_key_bits: &csr.public_key_bits,
            domains: &csr.dns_names,
            label: &label,
        })?;
        let sig = self.key.sign(&tbs)?;
        let der = assemble_certificate(&tbs, &sig);
        let certificate_pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
        let record = CertRecord {
            serial: hex::encode(serial),
            member_id: label.member_id,
            domains: csr.dns_names.clone(),
            endpoints,
            charter_version: label.charter_version,
            successor: label.successor,
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
            sha256: sha256_hex(&der),
            renewed_from,
            revoked: None,
            superseded: None,
            certificate_pem,
        };
        Ok((record, der))
    }

    /// Marks every earlier unrevoked certificate of `new`'s member as
    /// superseded by it. `keep` (the certificate the member renewed with, or
    /// its newest listed one) stays listed for the overlap; the others leave
    /// the directory now. Deadlines only ever move earlier, so the directory
    /// never lists more than [`MAX_LISTED_PER_MEMBER`] certificates of a
    /// member and a pruned one never returns.
    fn supersede_locked(
        &self,
        new: &CertRecord,
        keep: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let t = at.unix_timestamp();
        let overlap_end = (at + self.settings.superseded_overlap).unix_timestamp();
        for mut rec in self.store.all_certs()? {
            if rec.member_id != new.member_id || rec.serial == new.serial || rec.revoked.is_some() {
                continue;
            }
            let until = if keep == Some(rec.serial.as_str()) {
                overlap_end
            } else {
                t
            };
            let changed = match &mut rec.superseded {
                Some(s) if s.listed_until <= until => false,
                Some(s) => {
                    s.listed_until = until;
                    true
                }
                None => {
                    rec.superseded = Some(Supersession {
                        at: t,
                        by: new.serial.clone(),
                        listed_until: until,
                    });
                    true
                }
            };
            if !changed {
                continue;
            }
            let serial = hex::decode(&rec.serial)
                .map_err(|_| CaError::State(format!("corrupt serial {}", rec.serial)))?;
            self.store.put_cert(&serial, &rec)?;
            self.audit(&serde_json::json!({
                "event": "supersede", "serial": rec.serial, "by": new.serial,
                "member_id": rec.member_id, "listed_until": until,
            }))?;
        }
        Ok(())
    }

    /// The record of `client_cert_der` when this association issued it (serial
    /// and SHA-256 match) and it is listed now: not revoked, within its
    /// validity, not superseded past its overlap. This is how the service
    /// recognises a member on a TLS connection (rustls only checked the chain).
    pub fn identify(&self, client_cert_der: &[u8]) -> Result<CertRecord> {
        self.identify_at(client_cert_der, now().unix_timestamp())
    }

    fn identify_at(&self, client_cert_der: &[u8], t: i64) -> Result<CertRecord> {
        let (_, cert) = X509Certificate::from_der(client_cert_der)
            .map_err(|e| CaError::BadInput(format!("client certificate unreadable: {e}")))?;
        let old = self.store.get_cert(cert.raw_serial())?.ok_or_else(|| {
            CaError::Refused("client certificate was not issued by this association".into())
        })?;
        if old.sha256 != sha256_hex(client_cert_der) {
            return Err(CaError::Refused(
                "client certificate does not match the issued one".into(),
            ));
        }
        match old.status(t) {
            Status::Active => Ok(old),
            Status::Revoked => Err(CaError::Refused(format!(
                "certificate {} is revoked: renewal refused",
                old.serial
            ))),
            Status::Expired | Status::Pending => Err(CaError::Refused(format!(
                "certificate {} is not valid now: renewal refused",
                old.serial
            ))),
            Status::Superseded => {
                Err(CaError::Refused(format!(
                "certificate {} was superseded by {}: renewal refused (renew with the current one)",
                old.serial,
                old.superseded.as_ref().map(|s| s.by.as_str()).unwrap_or("?")
            )))
            }
        }
    }

    /// Renews the member whose current certificate is `client_cert_der`
    /// (already authenticated by TLS), from a fresh CSR for the same domains.
    /// The new certificate supersedes the member's earlier ones: the one
    /// presented stays listed for [`Settings::superseded_overlap`], any other
    /// leaves the directory at once.
    pub fn renew(&self, client_cert_der: &[u8], csr_pem: &[u8]) -> Result<Issued> {
        self.renew_at(client_cert_der, csr_pem, now())
    }

    /// [`Authority::renew`] with an explicit clock: validity, standing and the
    /// overlap are reckoned from `at`, and the directory is issued at `at`.
    pub fn renew_at(
        &self,
        client_cert_der: &[u8],
        csr_pem: &[u8],
        at: OffsetDateTime,
    ) -> Result<Issued> {
        // Cheap checks first, so that a refused caller costs no CSR verification.
        self.identify_at(client_cert_der, at.unix_timestamp())?;
        let csr = parse_csr(csr_pem)?;
        let _g = self.lock();
        let old = self.identify_at(client_cert_der, at.unix_timestamp())?;
        // The current domains, and any of the domains handed over to this
        // member by a predecessor that closed (those it may add).
        // Not one another member holds now (a domain the predecessor let
        // go and someone else was given since).
        let mine: Vec<(String, Handover)> = self
            .store
            .handovers()?
            .into_iter()
            .filter(|(_, h)| h.to == old.member_id)
            .collect();
        let now_s = at.unix_timestamp();
        let held_elsewhere: HashSet<String> = self
            .store
            .all_certs()?
            .into_iter()
            .filter(|r| {
                r.status(now_s) == Status::Active
                    && r.member_id != old.member_id
                    && !mine.iter().any(|(from, _)| *from == r.member_id)
            })
            .flat_map(|r| r.domains)
            .collect();
        let inherited: Vec<String> = mine
            .into_iter()
            .flat_map(|(_, h)| h.domains)
            .filter(|d| !old.domains.contains(d) && !held_elsewhere.contains(d))
            .collect();
        let want: HashSet<&String> = csr.dns_names.iter().collect();
        let keeps_all = old.domains.iter().all(|d| want.contains(d));
        let only_known = want
            .iter()
            .all(|d| old.domains.contains(d) || inherited.contains(d));
        if !keeps_all || !only_known {
            let mut may = old.domains.join(", ");
            if !inherited.is_empty() {
                may = format!("{may}, and may add {}", inherited.join(", "));
            }
            return Err(CaError::Refused(format!(
                "renewal must ask for the current domains ({may})"
            )));
        }
        let mut domains = old.domains.clone();
        domains.extend(inherited.into_iter().filter(|d| want.contains(d)));
        // Same lifetime as the old certificate (rounded to whole days; its
        // validity starts 5 minutes early).
        let days = u32::try_from((old.not_after - old.not_before + 43_200) / 86_400)
            .unwrap_or(self.settings.default_days)
            .clamp(1, self.settings.max_days);
        let label = Label {
            version: LABEL_VERSION,
            member_id: old.member_id.clone(),
            charter_version: old.charter_version.clone(),
            successor: old.successor.clone(),
        };
        // Keep the member's domain order (the first is the subject CN).
        let csr = crate::csr::CsrInfo {
            dns_names: domains,
            ..csr
        };
        let (record, der) = self.issue_locked(
            &csr,
            label,
            old.endpoints.clone(),
            days,
            Some(old.serial.clone()),
            at,
        )?;
        self.commit_logged(
            &Change {
                certs: vec![(hex::decode(&record.serial).unwrap_or_default(), &record)],
                ..Change::default()
            },
            &[Entry {
                time: unix(at),
                kind: EntryKind::Renewal {
                    renewed_from: hex::decode(&old.serial).unwrap_or_default(),
                    cert_der: der,
                },
            }],
        )?;
        self.audit(&serde_json::json!({
            "event": "renew", "serial": record.serial, "renewed_from": old.serial,
            "member_id": record.member_id, "not_after": record.not_after, "sha256": record.sha256,
        }))?;
        self.supersede_locked(&record, Some(&old.serial), at)?;
        self.issue_directory_locked(at)?;
        self.store.flush()?;
        self.republish()?;
        Ok(Issued { record })
    }

    /// Revokes by serial or domain. Idempotent: revoking what is revoked
    /// changes nothing and succeeds. A new CRL and directory are issued when
    /// anything changed.
    pub fn revoke(&self, target: &RevokeTarget, reason: &str) -> Result<RevokeOutcome> {
        let (_, reason_name) = parse_reason(reason)?;
        let _g = self.lock();
        let t = now().unix_timestamp();
        let targets: Vec<(Vec<u8>, CertRecord)> = match target {
            RevokeTarget::Serial(s) => {
                let serial = parse_serial(s)?;
                let rec = self.store.get_cert(&serial)?.ok_or_else(|| {
                    CaError::NotFound(format!(
                        "no certificate with serial {}",
                        hex::encode(&serial)
                    ))
                })?;
                vec![(serial, rec)]
            }
            RevokeTarget::Domain(d) => {
                let d = normalize_domain(d)?;
                let found: Vec<_> = self
                    .store
                    .all_certs()?
                    .into_iter()
                    .filter(|r| r.domains.contains(&d))
                    .map(|r| (hex::decode(&r.serial).unwrap_or_default(), r))
                    .collect();
                if found.is_empty() {
                    return Err(CaError::NotFound(format!(
                        "no certificate holds domain {d}"
                    )));
                }
                found
            }
        };
        let mut out = RevokeOutcome::default();
        let mut changed = Vec::new();
        let mut entries = Vec::new();
        for (serial, mut rec) in targets {
            if rec.revoked.is_some() {
                out.already_revoked.push(rec.serial);
                continue;
            }
            rec.revoked = Some(Revocation {
                at: t,
                reason: reason_name.to_owned(),
            });
            entries.push(Entry {
                time: u64::try_from(t).unwrap_or(0),
                kind: EntryKind::Revocation {
                    serial: serial.clone(),
                    reason: reason_name.to_owned(),
                },
            });
            changed.push((serial, rec));
        }
        if !changed.is_empty() {
            self.commit_logged(
                &Change {
                    certs: changed.iter().map(|(s, r)| (s.clone(), r)).collect(),
                    ..Change::default()
                },
                &entries,
            )?;
        }
        for (_, rec) in changed {
            self.audit(&serde_json::json!({
                "event": "revoke", "serial": rec.serial, "member_id": rec.member_id,
                "domains": rec.domains, "reason": reason_name,
            }))?;
            out.newly_revoked.push(rec.serial);
        }
        if !out.newly_revoked.is_empty() {
            self.issue_crl_locked()?;
            self.issue_directory_locked(now())?;
            self.store.flush()?;
            self.republish()?;
        }
        out.crl_number = self.store.crl_number()?;
        Ok(out)
    }

    /// Issues a new CRL (number + 1) and makes it current.
    pub fn issue_crl(&self) -> Result<(u64, Vec<u8>)> {
        let _g = self.lock();
        let r = self.issue_crl_locked()?;
        self.store.flush()?;
        self.republish()?;
        Ok(r)
    }

    fn issue_crl_locked(&self) -> Result<(u64, Vec<u8>)> {
        let number = self.store.crl_number()? + 1;
        let mut revoked_certs = Vec::new();
        for rec in self.store.all_certs()? {
            if let Some(rv) = &rec.revoked {
                let serial = hex::decode(&rec.serial)
                    .map_err(|_| CaError::State(format!("corrupt serial {}", rec.serial)))?;
                revoked_certs.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(rv.at)
                        .map_err(|e| CaError::State(e.to_string()))?,
                    reason_code: Some(reason_from_name(&rv.reason)),
                    invalidity_date: None,
                });
            }
        }
        let t = now();
        let params = CertificateRevocationListParams {
            this_update: t,
            next_update: t + self.settings.crl_validity,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::PreSpecified(self.root_key_id.clone()),
        };
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(self.root_der.as_slice()), &self.key)?;
        let crl = params.signed_by(&issuer)?;
        let der = crl.der().to_vec();
        self.store.set_crl(number, &der)?;
        self.audit(&serde_json::json!({"event": "crl", "crl_number": number}))?;
        Ok((number, der))
    }

    /// Issues a new signed directory (serial + 1) and makes it current.
    pub fn issue_directory(&self) -> Result<(u64, Vec<u8>)> {
        self.issue_directory_at(now())
    }

    fn issue_directory_at(&self, t: OffsetDateTime) -> Result<(u64, Vec<u8>)> {
        let _g = self.lock();
        let r = self.issue_directory_locked(t)?;
        self.store.flush()?;
        self.republish()?;
        Ok(r)
    }

    /// Lists, per member, at most [`MAX_LISTED_PER_MEMBER`] of its active
    /// certificates (newest first), and notes when the next listed superseded
    /// one is due to leave.
    fn issue_directory_locked(&self, t: OffsetDateTime) -> Result<(u64, Vec<u8>)> {
        let serial = self.store.directory_serial()? + 1;
        let now_s = t.unix_timestamp();
        let mut active: Vec<CertRecord> = self
            .store
            .all_certs()?
            .into_iter()
            .filter(|r| r.status(now_s) == Status::Active)
            .collect();
        active.sort_by(|a, b| {
            b.not_before
                .cmp(&a.not_before)
                .then(b.serial.cmp(&a.serial))
        });
        let handovers: HashMap<String, String> = self
            .store
            .handovers()?
            .into_iter()
            .map(|(from, h)| (from, h.to))
            .collect();
        let mut members: BTreeMap<String, DirectoryMember> = BTreeMap::new();
        let mut listed: Vec<CertRecord> = Vec::new();
        for r in active {
            let m = members
                .entry(r.member_id.clone())
                .or_insert_with(|| DirectoryMember {
                    member_id: r.member_id.clone(),
                    domains: r.domains.clone(),
                    endpoints: r.endpoints.clone(),
                    cert_sha256: Vec::new(),
                    cert_log_index: Vec::new(),
                    charter_version: r.charter_version.clone(),
                    successor: r.successor.clone().unwrap_or_default(),
                    not_after: r.not_after,
                    handed_over_to: handovers.get(&r.member_id).cloned().unwrap_or_default(),
                });
            // Supersession keeps this true by itself; the cap also covers
            // state written before it existed.
            if m.cert_sha256.len() >= MAX_LISTED_PER_MEMBER {
                continue;
            }
            let sha256 = hex::decode(&r.sha256).map_err(|e| CaError::State(e.to_string()))?;
            // The directory is derived from the log: a certificate the log
            // does not carry is not listed (members would refuse it anyway).
            let Some(index) = self.store.log_index_of_cert(&sha256)? else {
                tracing::error!(serial = %r.serial, member = %r.member_id,
                    "certificate missing from the membership log; not listed in the directory                      (run `caliopen-ca log verify`)");
                continue;
            };
            m.cert_sha256.push(sha256);
            m.cert_log_index.push(index);
            m.not_after = m.not_after.max(r.not_after);
            listed.push(r);
        }
        let dir = Directory {
            purpose: DIRECTORY_PURPOSE.into(),
            serial,
            issued_at: now_s,
            valid_until: (t + self.settings.directory_validity).unix_timestamp(),
            min_software_version: self.store.min_software_version()?,
            association: self.name.clone(),
            members: members.into_values().collect(),
            log_size: self.store.log_size()?,
            witnesses: self
                .store
                .witnesses()?
                .into_iter()
                .map(|w| DirectoryWitness {
                    name: w.name,
                    vkey: w.vkey,
                    url: w.url,
                })
                .collect(),
            witness_quorum: self.store.witness_quorum()?,
        };
        let bytes = dir.encode_to_vec();
        let signature = self.key.sign(&bytes)?;
        let signed = SignedDirectory {
            directory: bytes,
            signature,
            algorithm: DIRECTORY_ALGORITHM.into(),
            signer_key_id: self.root_key_id.clone(),
        }
        .encode_to_vec();
        self.store.set_directory(serial, &signed)?;
        self.audit(&serde_json::json!({"event": "directory", "serial": serial}))?;
        self.set_next_prune(listed.iter());
        Ok((serial, signed))
    }

    /// Sets the security baseline and issues a directory carrying it.
    pub fn set_baseline(&self, min_version: &str) -> Result<u64> {
        let v = min_version.trim();
        let ok = !v.is_empty()
            && v.split('.').count() <= 4
            && v.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(CaError::BadInput(format!(
                "invalid version {min_version:?}: expected digits and dots, like 0.2.0"
            )));
        }
        let _g = self.lock();
        self.commit_logged(
            &Change {
                min_software_version: Some(v),
                ..Change::default()
            },
            &[Entry {
                time: unix(now()),
                kind: EntryKind::Baseline {
                    min_software_version: v.to_owned(),
                },
            }],
        )?;
        self.audit(&serde_json::json!({"event": "baseline", "min_software_version": v}))?;
        let (serial, _) = self.issue_directory_locked(now())?;
        self.store.flush()?;
        self.republish()?;
        Ok(serial)
    }

    /// Records that `from` closes and hands its users and domains over to
    /// `to`, the successor its label names: one log entry, then a directory
    /// in which `from` names `to` as the member that now serves its
    /// domains (and `to` may renew with them as SANs). Run again with the
    /// same members, it changes nothing.
    pub fn handover(&self, from: &str, to: &str) -> Result<Handover> {
        let (from, to) = (from.trim(), to.trim());
        if from.is_empty() || to.is_empty() || from == to {
            return Err(CaError::BadInput(
                "a handover names two different members (--from and --to)".into(),
            ));
        }
        let _g = self.lock();
        let t = now();
        let now_s = t.unix_timestamp();
        let newest = |member: &str| -> Result<Option<CertRecord>> {
            Ok(self
                .store
                .all_certs()?
                .into_iter()
                .filter(|r| r.member_id == member && r.status(now_s) == Status::Active)
                .max_by_key(|r| r.not_before))
        };
        let old =
            newest(from)?.ok_or_else(|| CaError::NotFound(format!("no active member {from:?}")))?;
        // The successor, by member id or by one of its domains.
        let succ = match newest(to)? {
            Some(r) => r,
            None => {
                let d = to.to_ascii_lowercase();
                let id = self
                    .store
                    .all_certs()?
                    .into_iter()
                    .find(|r| r.status(now_s) == Status::Active && r.domains.contains(&d))
                    .map(|r| r.member_id)
                    .ok_or_else(|| {
                        CaError::NotFound(format!(
                            "no active member {to:?} (the successor must hold a valid label)"
                        ))
                    })?;
                newest(&id)?.ok_or_else(|| CaError::NotFound(format!("no active member {id:?}")))?
            }
        };
        if succ.member_id == old.member_id {
            return Err(CaError::BadInput(
                "a member cannot be its own successor".into(),
            ));
        }
        // The label names the successor by its member id or a domain of it.
        match old.successor.as_deref() {
            Some(s) if s == succ.member_id || succ.domains.iter().any(|d| d == s) => {}
            Some(s) => {
                return Err(CaError::Refused(format!(
                    "{from} names {s} as its successor (in its label), not {}",
                    succ.member_id
                )))
            }
            None => {
                return Err(CaError::Refused(format!(
                    "{from} names no successor in its label: sign it again with --successor"
                )))
            }
        }
        let to = succ.member_id.as_str();
        let handovers = self.store.handovers()?;
        if let Some((_, h)) = handovers.iter().find(|(f, _)| f == from) {
            if h.to == to {
                // Published again, in case a failure came between the
                // record and its directory.
                self.issue_directory_locked(t)?;
                self.store.flush()?;
                self.republish()?;
                return Ok(h.clone());
            }
            return Err(CaError::Refused(format!(
                "{from} was handed over to {} already",
                h.to
            )));
        }
        if let Some((_, h)) = handovers.iter().find(|(f, _)| f == to) {
            return Err(CaError::Refused(format!(
                "{to} closed itself (handed over to {}): name a member that stays",
                h.to
            )));
        }
        let h = Handover {
            to: to.to_owned(),
            domains: old.domains.clone(),
            at: now_s,
        };
        self.commit_logged(
            &Change {
                handover: Some((from, &h)),
                ..Change::default()
            },
            &[Entry {
                time: unix(t),
                kind: EntryKind::Handover {
                    from: from.to_owned(),
                    to: to.to_owned(),
                },
            }],
        )?;
        self.audit(&serde_json::json!({
            "event": "handover", "from": from, "to": to, "domains": h.domains,
        }))?;
        self.issue_directory_locked(t)?;
        self.store.flush()?;
        self.republish()?;
        Ok(h)
    }

    /// Every recorded handover (the member that closed, and to whom).
    pub fn handovers(&self) -> Result<Vec<(String, Handover)>> {
        self.store.handovers()
    }

    /// Every certificate ever issued with its standing now.
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        let t = now().unix_timestamp();
        let mut v: Vec<ListEntry> = self
            .store
            .all_certs()?
            .into_iter()
            .map(|record| ListEntry {
                status: record.status(t),
                record,
            })
            .collect();
        v.sort_by_key(|e| e.record.not_before);
        Ok(v)
    }

    /// Reissues the CRL or the directory once half of its lifetime has
    /// passed, so that members never hold an expired one, and the directory
    /// when a superseded certificate it lists reached the end of its overlap
    /// (see [`Authority::next_prune_at`]). Returns true when something was
    /// reissued.
    pub fn refresh_if_due(&self) -> Result<bool> {
        self.refresh_if_due_at(now())
    }

    /// [`Authority::refresh_if_due`] with an explicit clock.
    pub fn refresh_if_due_at(&self, at: OffsetDateTime) -> Result<bool> {
        let p = self.published();
        let t = at.unix_timestamp();
        let crl_half = self.settings.crl_validity.whole_seconds() / 2;
        let dir_half = self.settings.directory_validity.whole_seconds() / 2;
        let mut did = false;
        if p.crl_next_update - t < crl_half {
            self.issue_crl()?;
            did = true;
        }
        if p.directory_valid_until - t < dir_half || self.next_prune.load(Ordering::Relaxed) <= t {
            self.issue_directory_at(at)?;
            did = true;
        }
        Ok(did)
    }
}

/// Longest witness name accepted (bytes).
pub const MAX_WITNESS_NAME_LEN: usize = 64;

/// Most witnesses an association registers: each is asked on every
/// checkpoint and heartbeat, and each is listed in every directory.
pub const MAX_WITNESSES: usize = 32;

/// The witnesses of the membership log (C2SP tlog-witness) and the
/// cosignatures they give.
impl Authority {
    /// The registered witnesses (by name) and the quorum.
    pub fn witnesses(&self) -> Result<(Vec<WitnessRecord>, u32)> {
        Ok((self.store.witnesses()?, self.store.witness_quorum()?))
    }

    /// Registers witness `name` with its `cosignature/v1` verifier key
    /// `vkey` and submission prefix `url` (`https://`), whose certificate
    /// must chain to `ca_pem` when given; issues a directory listing it.
    /// Returns the directory serial.
    pub fn add_witness(
        &self,
        name: &str,
        vkey: &str,
        url: &str,
        ca_pem: Option<&str>,
    ) -> Result<u64> {
        let name = name.trim();
        let ok_name = !name.is_empty()
            && name.len() <= MAX_WITNESS_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok_name {
            return Err(CaError::BadInput(format!(
                "invalid witness name {name:?}: letters, digits, '-', '_' and '.', at most {MAX_WITNESS_NAME_LEN}"
            )));
        }
        let vkey = vkey.trim();
        let key = tlog::CosignatureVerifier::parse(vkey)
            .map_err(|e| CaError::BadInput(format!("witness key {vkey:?}: {e}")))?;
        let url = url.trim().trim_end_matches('/');
        crate::witnessing::parse_url(url).map_err(CaError::BadInput)?;
        if let Some(pem) = ca_pem {
            crate::witnessing::roots_from_pem(pem).map_err(CaError::BadInput)?;
        }
        let _g = self.lock();
        let existing = self.store.witnesses()?;
        // One public key, one cosigner (tlog-cosignature: "the same public
        // key can't be used across multiple cosigners"); members count
        // distinct keys, and never the log's own.
        let same_key = |w: &WitnessRecord| {
            tlog::CosignatureVerifier::parse(&w.vkey)
                .is_ok_and(|k| k.public_key() == key.public_key())
        };
        if existing.iter().any(|w| w.name != name && same_key(w)) {
            return Err(CaError::BadInput(format!(
                "witness key {vkey} is already registered under another name"
            )));
        }
        if key.public_key() == self.log_verifier().public_key() {
            return Err(CaError::BadInput(
                "the log's own key cannot witness the log".into(),
            ));
        }
        if existing.len() >= MAX_WITNESSES && !existing.iter().any(|w| w.name == name) {
            return Err(CaError::BadInput(format!(
                "at most {MAX_WITNESSES} witnesses"
            )));
        }
        self.store.put_witness(&WitnessRecord {
            name: name.to_owned(),
            vkey: key.to_string(),
            url: url.to_owned(),
            ca_pem: ca_pem.map(str::to_owned),
            added_at: now().unix_timestamp(),
        })?;
        self.audit(&serde_json::json!({"event": "witness_added", "name": name, "vkey": key.to_string(), "url": url}))?;
        self.witnesses_changed_locked()
    }

    /// Removes witness `name`; refused while the quorum needs it. Issues a
    /// directory without it and returns its serial.
    pub fn remove_witness(&self, name: &str) -> Result<u64> {
        let _g = self.lock();
        let n = self.store.witnesses()?.len();
        let q = self.store.witness_quorum()?;
        if !self.store.witnesses()?.iter().any(|w| w.name == name) {
            return Err(CaError::NotFound(format!("no witness named {name:?}")));
        }
        if (n - 1) < q as usize {
            return Err(CaError::BadInput(format!(
                "the quorum is {q}: lower it before removing a witness (`log witness quorum`)"
            )));
        }
        self.store.remove_witness(name)?;
        self.audit(&serde_json::json!({"event": "witness_removed", "name": name}))?;
        self.witnesses_changed_locked()
    }

    /// Sets how many distinct registered witnesses must cosign a checkpoint
    /// that grows the tree before members take it (at most the number
    /// registered). Issues a directory carrying it and returns its serial.
    pub fn set_witness_quorum(&self, n: u32) -> Result<u64> {
        let _g = self.lock();
        let have = self.store.witnesses()?.len();
        if n as usize > have {
            return Err(CaError::BadInput(format!(
                "quorum {n} is more than the {have} witnesses registered"
            )));
        }
        self.store.set_witness_quorum(n)?;
        self.audit(&serde_json::json!({"event": "witness_quorum", "quorum": n}))?;
        self.witnesses_changed_locked()
    }

    fn witnesses_changed_locked(&self) -> Result<u64> {
        let (serial, _) = self.issue_directory_locked(now())?;
        self.store.flush()?;
        self.republish()?;
        Ok(serial)
    }

    /// The RFC 9162 §2.1.4.1 consistency proof from the tree of `old`
    /// leaves to the tree of `new` leaves (`0 < old <= new <= size`).
    pub fn log_consistency_proof(&self, old: u64, new: u64) -> Result<Vec<tlog::Hash>> {
        if new > self.store.log_size()? {
            return Err(CaError::BadInput(format!(
                "no consistency proof to {new}: the log is smaller"
            )));
        }
        tlog::consistency_proof(&self.store, old, new).map_err(|e| match e {
            tlog::ProveError::Source(e) => e,
            tlog::ProveError::Invalid(why) => CaError::BadInput(why.to_owned()),
        })
    }

    /// Records the witness cosignature lines collected for `note` (the
    /// stored checkpoint they were asked about; each line verified, one per
    /// distinct witness) and publishes the checkpoint with them, unless a
    /// newer checkpoint was signed meanwhile. Returns whether they were
    /// taken.
    pub fn add_cosignatures(&self, note: &str, lines: &[String]) -> Result<bool> {
        let _g = self.lock();
        if self.store.log_checkpoint()?.as_deref() != Some(note) {
            return Ok(false);
        }
        let quorum = self.store.witness_quorum()? as usize;
        {
            let mut c = self
                .cosigned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let full: String = std::iter::once(note)
                .chain(lines.iter().map(String::as_str))
                .collect();
            if lines.len() >= quorum {
                c.witnessed = Some(full.clone());
            }
            c.latest = Some((note.to_owned(), full, lines.len()));
        }
        self.republish()?;
        Ok(true)
    }

    /// What to publish for the stored note `stored`: it with its
    /// cosignatures; with a quorum, the latest note that reached it when
    /// `stored` has not (members would refuse a grown tree without it).
    fn checkpoint_to_publish(&self, stored: &str) -> Result<String> {
        let quorum = self.store.witness_quorum()? as usize;
        let c = self
            .cosigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((base, full, n)) = &c.latest {
            if base == stored && *n >= quorum {
                return Ok(full.clone());
            }
        }
        if quorum > 0 {
            if let Some(w) = &c.witnessed {
                return Ok(w.clone());
            }
        }
        Ok(stored.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_in_operator_forms() {
        assert_eq!(parse_serial("0x0A:bc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial("00abc").unwrap(), vec![0x0a, 0xbc]);
        assert!(parse_serial("zz").is_err());
        assert!(parse_serial("00").is_err());
    }

    #[test]
    fn reasons_are_normalized() {
        assert_eq!(parse_reason("key-compromise").unwrap().1, "keyCompromise");
        assert_eq!(parse_reason("").unwrap().1, "unspecified");
        assert!(parse_reason("because").is_err());
    }

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(check_endpoint("127.0.0.1:7000").unwrap(), "127.0.0.1:7000");
        assert_eq!(check_endpoint("[::1]:7000").unwrap(), "[::1]:7000");
        assert_eq!(
            check_endpoint("Mesh.Alpha.Test:443").unwrap(),
            "mesh.alpha.test:443"
        );
        for bad in ["nope", "a.test:0", "a.test:x", ":80"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}

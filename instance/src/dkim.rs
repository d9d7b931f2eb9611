//! DKIM signing of the mail this instance sends (RFC 6376), with two
//! signatures per message — Ed25519 (RFC 8463) and RSA-2048 — so that
//! verifiers that know only RSA still find one they can check.
//!
//! Keys live in the data directory: `dkim/keys.json` (the schedule) and
//! `dkim/<domain>/<selector>.pem` (PKCS#8, 0600). A *pair* is one Ed25519
//! and one RSA key made together; its selectors are `<name>-ed25519` and
//! `<name>-rsa`, published as `<selector>._domainkey.<domain>`.
//!
//! Rotation (`caliopen dkim rotate`) never breaks verification: the new
//! pair is published at once but signs only from `sign_from` (after a
//! publication delay, for DNS to carry it); the pair it replaces keeps
//! being published until `retire_at` (an overlap, for mail signed with it
//! and still in transit or in a queue), then it is retired — left out of
//! `caliopen dns` and its key files deleted by the next rotation. At every
//! moment the pair that signs is the newest whose `sign_from` has passed.
//!
//! The running daemon re-reads the schedule when the file changes (looked
//! at no more than every [`RELOAD_EVERY`]); changes are written whole
//! (temporary file, fsync, rename) under `dkim/.lock`.

use aws_lc_rs::encoding::AsDer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The headers signed, in this order; `From` is listed twice so that a
/// second `From` added on the way breaks the signature (oversigning), and
/// headers absent from the message are signed as absent.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// How often the daemon looks whether the schedule file changed.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Default delay between a rotation and the new pair's first signature:
/// the time for the operator to publish it and for caches to carry it.
pub const DEFAULT_PUBLISH_HOURS: u64 = 48;

/// Default time the replaced pair stays published after the new one
/// starts signing (mail in queues and in transit still verifies).
pub const DEFAULT_OVERLAP_DAYS: u64 = 7;

const STATE_FILE: &str = "keys.json";
const STATE_VERSION: u32 = 1;

/// What can go wrong with the keys.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// Reading or writing the key directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key or the schedule could not be written.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The schedule or a key file is not what this version writes.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A key could not be made or used.
    #[error("DKIM key: {0}")]
    Crypto(String),
    /// Signing failed (a message without headers, say).
    #[error("DKIM signing: {0}")]
    Sign(String),
    /// A domain the configuration does not serve.
    #[error("{0} is not one of this instance's domains")]
    UnknownDomain(String),
}

/// One pair in the schedule (`keys.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairRecord {
    /// The selectors' common stem (`c20261201`, `c20261201b`, …).
    pub name: String,
    /// Unix seconds it was made.
    pub created: i64,
    /// Unix seconds from which it may sign.
    pub sign_from: i64,
    /// Unix seconds from which it is no longer published (none: until a
    /// rotation replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

impl PairRecord {
    /// Its Ed25519 selector.
    pub fn ed25519_selector(&self) -> String {
        format!("{}-ed25519", self.name)
    }

    /// Its RSA selector.
    pub fn rsa_selector(&self) -> String {
        format!("{}-rsa", self.name)
    }

    fn retired(&self, now: i64) -> bool {
        self.retire_at.is_some_and(|r| r <= now)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Schedule {
    version: u32,
    /// Pairs ever made (names are never reused).
    #[serde(default)]
    serial: u64,
    domains: BTreeMap<String, Vec<PairRecord>>,
}

impl Schedule {
    /// The pair that signs for `domain` at `now`.
    fn signing(&self, domain: &str, now: i64) -> Option<&PairRecord> {
        self.domains
            .get(domain)?
            .iter()
            .filter(|p| p.sign_from <= now && !p.retired(now))
            .max_by_key(|p| (p.sign_from, p.created))
    }
}

/// Where a pair stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PairState {
    /// Published; signs from `sign_from`.
    Pending,
    /// Published and signing.
    Signing,
    /// Published for mail it signed earlier; no longer signs.
    Overlap,
    /// No longer published; its keys go at the next rotation.
    Retired,
}

/// One pair as `caliopen dkim list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PairStatus {
    /// The domain.
    pub domain: String,
    /// The pair.
    #[serde(flatten)]
    pub pair: PairRecord,
    /// Its state now.
    pub state: PairState,
    /// Its Ed25519 selector.
    pub ed25519_selector: String,
    /// Its RSA selector.
    pub rsa_selector: String,
}

/// A DKIM key record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// The domain it signs for.
    pub domain: String,
    /// `<selector>._domainkey.<domain>`.
    pub name: String,
    /// `v=DKIM1; k=…; p=…`.
    pub value: String,
}

struct Signers {
    ed25519: DkimSigner<Ed25519Key, Done>,
    rsa: DkimSigner<RsaKey<Sha256>, Done>,
    ed25519_record: String,
    rsa_record: String,
}

struct Loaded {
    schedule: Schedule,
    /// The version of the schedule file read.
    stamp: Option<crate::limits::FileVersion>,
    checked: Instant,
    /// (domain, pair name) → its signers.
    signers: HashMap<(String, String), Arc<Signers>>,
}

/// The instance's DKIM keys and signer.
pub struct DkimKeys {
    dir: PathBuf,
    loaded: RwLock<Loaded>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKeys").field("dir", &self.dir).finish()
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DkimError + 'a {
    move |source| DkimError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 40
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The stem of a pair made at `now` as the schedule's `serial`-th: `c`,
/// the UTC date, `n` and the serial — never the name of an earlier pair,
/// even a retired and forgotten one (resolvers may still cache it).
fn pair_name(now: i64, serial: u64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(now)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "c{:04}{:02}{:02}n{serial}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), DkimError> {
    Ok(crate::files::write_private(path, data)?)
}

/// Makes a pair's keys: (Ed25519 PKCS#8, RSA-2048 PKCS#8).
fn generate() -> Result<(Vec<u8>, Vec<u8>), DkimError> {
    let ed = Ed25519Key::generate_pkcs8().map_err(|e| DkimError::Crypto(e.to_string()))?;
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|e| DkimError::Crypto(format!("RSA key generation: {e}")))?;
    let rsa_der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = rsa
        .as_der()
        .map_err(|e| DkimError::Crypto(format!("RSA key encoding: {e}")))?;
    Ok((ed, rsa_der.as_ref().to_vec()))
}

fn read_key(path: &Path) -> Result<Vec<u8>, DkimError> {
    let text = std::fs::read_to_string(path).map_err(io("read", path))?;
    let p = pem::parse(text.trim()).map_err(|e| DkimError::Corrupt {
        path: path.to_owned(),
        message: format!("not a PEM key: {e}"),
    })?;
    if p.tag() != "PRIVATE KEY" {
        return Err(DkimError::Corrupt {
            path: path.to_owned(),
            message: format!("expected a PKCS#8 PRIVATE KEY, found {}", p.tag()),
        });
    }
    Ok(p.into_contents())
}

fn pem_key(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// mail-auth may fold a signature's field right before its final `;`,
/// after the `b=` value. RFC 6376 §3.7 has verifiers drop the whitespace
/// around `b=` — but dkimpy keeps a fold that follows it and then fails.
/// The signed form has no whitespace there: remove the fold.
fn unfold_end(mut header: String) -> String {
    if header.ends_with("\r\n\t;\r\n") {
        header.truncate(header.len() - "\r\n\t;\r\n".len());
        header.push_str(";\r\n");
    }
    header
}

/// The From: domain of a message, lowercase (none without exactly one
/// From address).
pub fn from_domain(data: &[u8]) -> Option<String> {
    let m = mail_parser::MessageParser::new().parse_headers(data)?;
    let from = m.from()?;
    let mut addrs = from.iter();
    let a = addrs.next()?;
    if addrs.next().is_some() {
        return None;
    }
    let (_, d) = a.address()?.rsplit_once('@')?;
    Some(d.trim_end_matches('>').to_ascii_lowercase())
}

impl DkimKeys {
    /// Opens the keys under `data_dir/dkim` (none yet: an empty schedule).
    pub fn open(data_dir: &Path) -> Result<Self, DkimError> {
        let dir = data_dir.join("dkim");
        let loaded = Self::load(&dir)?;
        Ok(Self {
            dir,
            loaded: RwLock::new(loaded),
        })
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn load(dir: &Path) -> Result<Loaded, DkimError> {
        let path = dir.join(STATE_FILE);
        let before = crate::limits::file_version(&path);
        let schedule = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: Schedule =
                    serde_json::from_slice(&bytes).map_err(|e| DkimError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if s.version != STATE_VERSION {
                    return Err(DkimError::Corrupt {
                        path,
                        message: format!("schedule version {} (this release reads 1)", s.version),
                    });
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Schedule {
                version: STATE_VERSION,
                serial: 0,
                domains: BTreeMap::new(),
            },
            Err(e) => return Err(io("read", &path)(e)),
        };
        let mut signers = HashMap::new();
        for (domain, pairs) in &schedule.domains {
            if !crate::config::is_dns_name(domain) {
                return Err(DkimError::Corrupt {
                    path,
                    message: format!("invalid domain {domain:?}"),
                });
            }
            for p in pairs {
                if !valid_name(&p.name) {
                    return Err(DkimError::Corrupt {
                        path,
                        message: format!("invalid pair name {:?}", p.name),
                    });
                }
                // A retired pair neither signs nor is published: its
                // keys are not needed (and may be half deleted).
                if p.retired(crate::store::now_unix()) {
                    continue;
                }
                let s = Self::signers(dir, domain, p)?;
                signers.insert((domain.clone(), p.name.clone()), Arc::new(s));
            }
        }
        Ok(Loaded {
            schedule,
            stamp: before,
            checked: Instant::now(),
            signers,
        })
    }

    fn signers(dir: &Path, domain: &str, p: &PairRecord) -> Result<Signers, DkimError> {
        let ddir = dir.join(domain);
        let ed_path = ddir.join(format!("{}.pem", p.ed25519_selector()));
        let rsa_path = ddir.join(format!("{}.pem", p.rsa_selector()));
        for path in [&ed_path, &rsa_path] {
            let mode = std::fs::metadata(path)
                .map_err(io("read", path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(DkimError::Corrupt {
                    path: path.clone(),
                    message: format!(
                        "a private key readable by others (mode {:o}): chmod 600 it after checking it was not copied",
                        mode & 0o777
                    ),
                });
            }
        }
        let ed_der = read_key(&ed_path)?;
        let rsa_der = read_key(&rsa_path)?;
        let ed = Ed25519Key::from_pkcs8_der(&ed_der).map_err(|e| DkimError::Corrupt {
            path: ed_path.clone(),
            message: format!("not an Ed25519 key: {e}"),
        })?;
        let rsa = RsaKey::<Sha256>::from_key_der(rustls_pki_types::PrivateKeyDer::Pkcs8(
            rsa_der.clone().into(),
        ))
        .map_err(|e| DkimError::Corrupt {
            path: rsa_path.clone(),
            message: format!("not an RSA key: {e}"),
        })?;
        let rsa_spki = aws_lc_rs::rsa::KeyPair::from_pkcs8(&rsa_der)
            .map_err(|e| DkimError::Corrupt {
                path: rsa_path.clone(),
                message: format!("not an RSA key: {e}"),
            })
            .and_then(|k| {
                use aws_lc_rs::signature::KeyPair;
                k.public_key()
                    .as_der()
                    .map(|d| d.as_ref().to_vec())
                    .map_err(|e| DkimError::Crypto(format!("RSA public key: {e}")))
            })?;
        let ed25519_record = format!("v=DKIM1; k=ed25519; p={}", b64(&ed.public_key()));
        let rsa_record = format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki));
        let build = |sel: String| (domain.to_owned(), sel);
        let (d, s) = build(p.ed25519_selector());
        let ed = DkimSigner::from_key(ed)
            .domain(d)
            .selector(s)
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let (d, s) = build(p.rsa_selector());
        let rsa = DkimSigner::from_key(rsa)
            .domain(d)
            .selector(s)
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Signers {
            ed25519: ed,
            rsa,
            ed25519_record,
            rsa_record,
        })
    }

    /// Re-reads the schedule when the file changed since it was read.
    fn refresh(&self) {
        {
            let l = self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if l.checked.elapsed() < RELOAD_EVERY {
                return;
            }
        }
        let mut l = self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.checked.elapsed() < RELOAD_EVERY {
            return;
        }
        l.checked = Instant::now();
        if crate::limits::file_version(&self.dir.join(STATE_FILE)) == l.stamp {
            return;
        }
        match Self::load(&self.dir) {
            Ok(new) => {
                tracing::info!(dir = %self.dir.display(), "DKIM key schedule re-read");
                *l = new;
            }
            // Keep signing with what was loaded; say so until it is fixed.
            Err(e) => {
                tracing::error!(error = %e, "DKIM key schedule changed but cannot be read: signing with the previous one")
            }
        }
    }

    /// Re-reads the schedule now (after a change made by this process).
    pub fn reload(&self) -> Result<(), DkimError> {
        let new = Self::load(&self.dir)?;
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        Ok(())
    }

    /// Signs `data` for its From: domain with the pair signing at `now`:
    /// the message with its two `DKIM-Signature` fields first, or `None`
    /// when no key signs for that domain (or there is no single From).
    pub fn sign(&self, data: &[u8], now: i64) -> Result<Option<Vec<u8>>, DkimError> {
        self.refresh();
        let Some(domain) = from_domain(data) else {
            return Ok(None);
        };
        let signers = {
            let l = self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(pair) = l.schedule.signing(&domain, now) else {
                return Ok(None);
            };
            match l.signers.get(&(domain.clone(), pair.name.clone())) {
                Some(s) => s.clone(),
                None => return Ok(None),
            }
        };
        let ed = signers
            .ed25519
            .sign(data)
            .map_err(|e| DkimError::Sign(e.to_string()))?;
        let rsa = signers
            .rsa
            .sign(data)
            .map_err(|e| DkimError::Sign(e.to_string()))?;
        let ed = unfold_end(ed.to_header());
        let rsa = unfold_end(rsa.to_header());
        let mut out = Vec::with_capacity(ed.len() + rsa.len() + data.len());
        out.extend_from_slice(ed.as_bytes());
        out.extend_from_slice(rsa.as_bytes());
        out.extend_from_slice(data);
        Ok(Some(out))
    }

    /// True when some pair signs for `domain` at `now`.
    pub fn signs_for(&self, domain: &str, now: i64) -> bool {
        self.refresh();
        let l = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.schedule.signing(domain, now).is_some()
    }

    /// Every pair and its state at `now`, by domain.
    pub fn list(&self, now: i64) -> Vec<PairStatus> {
        let l = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for (domain, pairs) in &l.schedule.domains {
            let signing = l.schedule.signing(domain, now).map(|p| p.name.clone());
            for p in pairs {
                let state = if p.retired(now) {
                    PairState::Retired
                } else if Some(&p.name) == signing.as_ref() {
                    PairState::Signing
                } else if p.sign_from > now {
                    PairState::Pending
                } else {
                    PairState::Overlap
                };
                out.push(PairStatus {
                    domain: domain.clone(),
                    pair: p.clone(),
                    state,
                    ed25519_selector: p.ed25519_selector(),
                    rsa_selector: p.rsa_selector(),
                });
            }
        }
        out
    }

    /// The key records to publish at `now` for `domain` (every pair not
    /// retired), Ed25519 before RSA, oldest pair first.
    pub fn records(&self, domain: &str, now: i64) -> Vec<KeyRecord> {
        let l = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        let Some(pairs) = l.schedule.domains.get(domain) else {
            return out;
        };
        for p in pairs.iter().filter(|p| !p.retired(now)) {
            let Some(s) = l.signers.get(&(domain.to_owned(), p.name.clone())) else {
                continue;
            };
            out.push(KeyRecord {
                domain: domain.to_owned(),
                name: format!("{}._domainkey.{domain}", p.ed25519_selector()),
                value: s.ed25519_record.clone(),
            });
            out.push(KeyRecord {
                domain: domain.to_owned(),
                name: format!("{}._domainkey.{domain}", p.rsa_selector()),
                value: s.rsa_record.clone(),
            });
        }
        out
    }

    /// Runs `f` on the schedule under the lock file, then writes it and
    /// re-reads it.
    fn change<T>(
        &self,
        f: impl FnOnce(&Path, &mut Schedule) -> Result<T, DkimError>,
    ) -> Result<T, DkimError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("create", &self.dir))?;
        let lock_path = self.dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("lock", &lock_path)(e.into()))?;
        // Read under the lock: another process may have changed it.
        let mut schedule = Self::load(&self.dir)?.schedule;
        let out = f(&self.dir, &mut schedule)?;
        let text = serde_json::to_vec_pretty(&schedule).map_err(|e| DkimError::Corrupt {
            path: self.dir.join(STATE_FILE),
            message: e.to_string(),
        })?;
        write_private(&self.dir.join(STATE_FILE), &text)?;
        drop(lock);
        self.reload()?;
        Ok(out)
    }

    fn add_pair(
        dir: &Path,
        s: &mut Schedule,
        domain: &str,
        now: i64,
        sign_from: i64,
    ) -> Result<PairRecord, DkimError> {
        s.serial += 1;
        let name = pair_name(now, s.serial);
        let pairs = s.domains.entry(domain.to_owned()).or_default();
        let p = PairRecord {
            name,
            created: now,
            sign_from,
            retire_at: None,
        };
        let ddir = dir.join(domain);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ddir)
            .map_err(io("create", &ddir))?;
        let (ed, rsa) = generate()?;
        write_private(
            &ddir.join(format!("{}.pem", p.ed25519_selector())),
            pem_key(&ed).as_bytes(),
        )?;
        write_private(
            &ddir.join(format!("{}.pem", p.rsa_selector())),
            pem_key(&rsa).as_bytes(),
        )?;
        pairs.push(p.clone());
        Ok(p)
    }

    /// Gives every domain of `domains` that has no live pair one that
    /// signs at once (at `caliopen init`, and at start for a data
    /// directory older than DKIM signing). Returns the domains given one.
    pub fn ensure(&self, domains: &[String], now: i64) -> Result<Vec<String>, DkimError> {
        let missing: Vec<String> = {
            let l = self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .filter(|d| {
                    !l.schedule
                        .domains
                        .get(d)
                        .is_some_and(|ps| ps.iter().any(|p| !p.retired(now)))
                })
                .collect()
        };
        if missing.is_empty() {
            return Ok(missing);
        }
        self.change(|dir, s| {
            let mut made = Vec::new();
            for d in &missing {
                if !crate::config::is_dns_name(d) {
                    return Err(DkimError::UnknownDomain(d.clone()));
                }
                if s.domains
                    .get(d)
                    .is_some_and(|ps| ps.iter().any(|p| !p.retired(now)))
                {
                    continue;
                }
                Self::add_pair(dir, s, d, now, now)?;
                made.push(d.clone());
            }
            Ok(made)
        })
    }

    /// Rotates the keys of `domains`: a new pair each, signing from
    /// `now + publish`; the pairs it replaces are retired `overlap` after
    /// that. Pairs already retired have their key files deleted. Returns
    /// the new pairs.
    pub fn rotate(
        &self,
        domains: &[String],
        now: i64,
        publish: Duration,
        overlap: Duration,
    ) -> Result<Vec<(String, PairRecord)>, DkimError> {
        let publish = i64::try_from(publish.as_secs()).unwrap_or(i64::MAX / 4);
        let overlap = i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX / 4);
        self.change(|dir, s| {
            let mut made = Vec::new();
            for d in domains {
                let d = d.to_ascii_lowercase();
                if !crate::config::is_dns_name(&d) {
                    return Err(DkimError::UnknownDomain(d));
                }
                // Forget retired pairs and delete their keys.
                if let Some(pairs) = s.domains.get_mut(&d) {
                    let mut kept = Vec::new();
                    for p in pairs.drain(..) {
                        if p.retired(now) {
                            for sel in [p.ed25519_selector(), p.rsa_selector()] {
                                let path = dir.join(&d).join(format!("{sel}.pem"));
                                match std::fs::remove_file(&path) {
                                    Ok(()) => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                    Err(e) => return Err(io("remove", &path)(e)),
                                }
                            }
                        } else {
                            kept.push(p);
                        }
                    }
                    *pairs = kept;
                }
                let sign_from = now.saturating_add(publish);
                let retire = sign_from.saturating_add(overlap);
                for p in s.domains.entry(d.clone()).or_default().iter_mut() {
                    p.retire_at = Some(p.retire_at.map_or(retire, |r| r.min(retire)));
                }
                let p = Self::add_pair(dir, s, &d, now, sign_from)?;
                made.push((d, p));
            }
            Ok(made)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hello\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\nHi Bob,\r\n\r\nsee you.\r\n";

    fn verify(signed: &[u8], records: &[KeyRecord]) -> Vec<String> {
        let auth = crate::sender_auth::SenderAuth::offline().expect("resolver");
        for r in records {
            auth.txt_cache()
                .add_dkim_key(&r.name, &r.value)
                .expect("record");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(auth.dkim_each(signed))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn both_signatures_verify_and_a_tampered_copy_fails() {
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = DkimKeys::open(tmp.path()).expect("open");
        let now = 1_800_000_000;
        assert_eq!(keys.sign(MSG, now).expect("sign"), None, "no key yet");
        let made = keys.ensure(&["example.org".into()], now).expect("ensure");
        assert_eq!(made, vec!["example.org".to_owned()]);
        assert!(keys
            .ensure(&["example.org".into()], now)
            .expect("again")
            .is_empty());
        let signed = keys.sign(MSG, now).expect("sign").expect("signed");
        let text = String::from_utf8_lossy(&signed);
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
        assert!(text.contains("a=ed25519-sha256"), "{text}");
        assert!(text.contains("a=rsa-sha256"), "{text}");
        assert!(text.contains("c=relaxed/relaxed"), "{text}");
        assert!(signed.ends_with(MSG));
        let recs = keys.records("example.org", now);
        assert_eq!(recs.len(), 2);
        assert!(recs[0].value.starts_with("v=DKIM1; k=ed25519; p="));
        assert!(recs[1].value.starts_with("v=DKIM1; k=rsa; p=MII"));
        assert_eq!(verify(&signed, &recs), vec!["pass", "pass"]);
        let tampered = String::from_utf8_lossy(&signed).replace("see you.", "send money.");
        assert_eq!(verify(tampered.as_bytes(), &recs), vec!["fail", "fail"]);
        // A second From: added on the way breaks both (oversigned).
        let mut added = b"From: mallory@evil.example\r\n".to_vec();
        added.extend_from_slice(&signed);
        let got = verify(&added, &recs);
        assert!(got.iter().all(|r| r != "pass"), "{got:?}");
        // Another domain is not signed.
        let other =
            String::from_utf8_lossy(MSG).replace("alice@example.org", "alice@elsewhere.test");
        assert_eq!(keys.sign(other.as_bytes(), now).expect("sign"), None);
        // Keys are the owner's only.
        for e in std::fs::read_dir(tmp.path().join("dkim/example.org")).expect("dir") {
            let m = e.expect("entry").metadata().expect("meta");
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn rotation_publishes_first_signs_later_and_retires_after_the_overlap() {
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = DkimKeys::open(tmp.path()).expect("open");
        let t0 = 1_800_000_000;
        keys.ensure(&["example.org".into()], t0).expect("ensure");
        let old = keys.list(t0)[0].pair.clone();
        let made = keys
            .rotate(
                &["example.org".into()],
                t0 + 10,
                Duration::from_secs(100),
                Duration::from_secs(1000),
            )
            .expect("rotate");
        let new = made[0].1.clone();
        assert_ne!(new.name, old.name);
        assert!(
            new.name.starts_with("c20270115n"),
            "{} {}",
            new.name,
            old.name
        );
        // Before sign_from: both published, the old one signs.
        let states: Vec<_> = keys.list(t0 + 50).iter().map(|p| p.state).collect();
        assert_eq!(states, vec![PairState::Signing, PairState::Pending]);
        assert_eq!(keys.records("example.org", t0 + 50).len(), 4);
        let s = keys.sign(MSG, t0 + 50).expect("sign").expect("signed");
        assert!(String::from_utf8_lossy(&s).contains(&format!("s={}", old.rsa_selector())));
        // After: the new one signs, the old one is still published.
        let s = keys.sign(MSG, t0 + 200).expect("sign").expect("signed");
        assert!(String::from_utf8_lossy(&s).contains(&format!("s={}", new.rsa_selector())));
        let states: Vec<_> = keys.list(t0 + 200).iter().map(|p| p.state).collect();
        assert_eq!(states, vec![PairState::Overlap, PairState::Signing]);
        let recs = keys.records("example.org", t0 + 200);
        assert_eq!(recs.len(), 4);
        assert_eq!(verify(&s, &recs), vec!["pass", "pass"]);
        // After the overlap: the old one is retired, unpublished; the next
        // rotation deletes its keys.
        let late = t0 + 10 + 100 + 1000;
        assert_eq!(keys.records("example.org", late).len(), 2);
        assert_eq!(keys.list(late)[0].state, PairState::Retired);
        let old_file = tmp
            .path()
            .join(format!("dkim/example.org/{}.pem", old.rsa_selector()));
        assert!(old_file.exists());
        keys.rotate(
            &["example.org".into()],
            late,
            Duration::ZERO,
            Duration::from_secs(10),
        )
        .expect("rotate");
        assert!(!old_file.exists());
        assert_eq!(keys.list(late).len(), 2);
        // A new handle reads the same schedule (what the daemon does).
        let again = DkimKeys::open(tmp.path()).expect("reopen");
        assert_eq!(again.list(late).len(), 2);
        assert!(again.signs_for("example.org", late));
    }

    #[test]
    fn damaged_or_exposed_keys_are_refused_with_the_file_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = DkimKeys::open(tmp.path()).expect("open");
        keys.ensure(&["example.org".into()], 1_800_000_000)
            .expect("ensure");
        let p = keys.list(1_800_000_000)[0].pair.clone();
        let f = tmp
            .path()
            .join(format!("dkim/example.org/{}.pem", p.ed25519_selector()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = DkimKeys::open(tmp.path()).expect_err("exposed");
        assert!(e.to_string().contains("readable by others"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&f, "garbage").expect("write");
        let e = DkimKeys::open(tmp.path()).expect_err("garbage");
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
        std::fs::write(tmp.path().join("dkim/keys.json"), "{").expect("write");
        let e = DkimKeys::open(tmp.path()).expect_err("schedule");
        assert!(e.to_string().contains("keys.json"), "{e}");
    }

    #[test]
    fn no_fold_before_the_final_semicolon() {
        assert_eq!(unfold_end("a; b=xyz\r\n\t;\r\n".into()), "a; b=xyz;\r\n");
        assert_eq!(unfold_end("a; b=xyz;\r\n".into()), "a; b=xyz;\r\n");
        // Signed many times, no header ends folded and every one verifies.
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = DkimKeys::open(tmp.path()).expect("open");
        keys.ensure(&["example.org".into()], 1_800_000_000)
            .expect("ensure");
        let recs = keys.records("example.org", 1_800_000_000);
        for i in 0..20 {
            let msg = String::from_utf8_lossy(MSG).replace("hello", &"x".repeat(i));
            let s = keys
                .sign(msg.as_bytes(), 1_800_000_000)
                .expect("sign")
                .expect("signed");
            assert!(!String::from_utf8_lossy(&s).contains("\t;\r\n"));
            assert_eq!(verify(&s, &recs), vec!["pass", "pass"]);
        }
    }

    #[test]
    fn from_domain_needs_exactly_one_address() {
        assert_eq!(from_domain(MSG).as_deref(), Some("example.org"));
        assert_eq!(
            from_domain(b"From: a@X.Org\r\n\r\n").as_deref(),
            Some("x.org")
        );
        assert_eq!(from_domain(b"From: a@x.org, b@y.org\r\n\r\n"), None);
        assert_eq!(from_domain(b"Subject: none\r\n\r\n"), None);
    }
}

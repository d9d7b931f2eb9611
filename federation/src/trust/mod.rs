//! The member's trust store: association roots, the current CRL and the
//! current signed directory, replaced atomically and only by newer, validly
//! signed ones; and the one verification policy applied to every peer
//! certificate on both sides of every mesh connection.

mod policy;

pub(crate) use policy::{check_member, RefusalCounters};
pub use policy::{PeerIdentity, Refusal};

/// The rustls verifiers wrapping the policy (used by [`crate::tls`]).
pub(crate) mod policy_verifiers {
    pub(crate) use super::policy::{MeshClientVerifier, MeshServerVerifier};
}

use caliopen_proto::pb::directory::{Directory, SignedDirectory};
use caliopen_proto::RootKey;
use prost::Message;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use thiserror::Error;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Why a CRL, directory or root was not taken.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// Not decodable.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// CRL, directory, root.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// No association root signed it.
    #[error("{0} not signed by an association root")]
    BadSignature(&'static str),
    /// Past its validity.
    #[error("{0} has expired")]
    Expired(&'static str),
    /// Not newer than the one held.
    #[error("{what} {offered} is not newer than {held}")]
    NotNewer {
        /// CRL or directory.
        what: &'static str,
        /// Number or serial offered.
        offered: u64,
        /// Number or serial held.
        held: u64,
    },
    /// Building the TLS verifiers failed.
    #[error("verifier: {0}")]
    Verifier(String),
    /// Reading or writing the trust files failed.
    #[error("{0}")]
    Io(String),
    /// Directory updates are suspended (the membership log showed a split
    /// view) until the operator clears it.
    #[error("directory updates are suspended: {0}")]
    Held(String),
}

/// A verified CRL.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    /// CRL number.
    pub number: u64,
    /// DER.
    pub der: Vec<u8>,
    /// Revoked serials (raw big-endian bytes as in the certificate).
    pub revoked: HashSet<Vec<u8>>,
    /// `nextUpdate` (Unix seconds; 0 when absent). Recorded, not enforced:
    /// see [`TrustStore::offer_crl`].
    pub next_update: i64,
}

/// A verified directory.
#[derive(Debug, Clone)]
pub struct DirectoryInfo {
    /// The directory.
    pub directory: Directory,
    /// Its signed form, as received (for gossip).
    pub signed: SignedDirectory,
}

/// Everything the verification policy needs, swapped as one.
#[derive(Debug)]
pub struct TrustState {
    /// Root certificates (DER).
    pub roots: Vec<CertificateDer<'static>>,
    /// Root keys for directory signatures.
    pub root_keys: Vec<RootKey>,
    /// Current CRL.
    pub crl: Option<CrlInfo>,
    /// Current directory.
    pub directory: Option<DirectoryInfo>,
    /// Charter versions this member accepts from peers.
    pub accepted_charters: Vec<String>,
    pub(crate) client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    pub(crate) server_verifier: Option<Arc<dyn ServerCertVerifier>>,
}

impl TrustState {
    /// CRL number held (0: none).
    pub fn crl_number(&self) -> u64 {
        self.crl.as_ref().map_or(0, |c| c.number)
    }

    /// Directory serial held (0: none).
    pub fn directory_serial(&self) -> u64 {
        self.directory.as_ref().map_or(0, |d| d.directory.serial)
    }

    /// The directory entry of a member.
    pub fn member(
        &self,
        member_id: &str,
    ) -> Option<&caliopen_proto::pb::directory::DirectoryMember> {
        self.directory
            .as_ref()?
            .directory
            .members
            .iter()
            .find(|m| m.member_id == member_id)
    }

    /// The member serving a mail domain: the one listing it, or, when that
    /// member closed and handed over (`handed_over_to`), its successor (and
    /// so on, a few steps at most).
    pub fn member_for_domain(
        &self,
        domain: &str,
    ) -> Option<&caliopen_proto::pb::directory::DirectoryMember> {
        let d = domain.to_ascii_lowercase();
        let members = &self.directory.as_ref()?.directory.members;
        // A successor that lists the domain itself (renewed with it) comes
        // before the member that closed.
        let mut m = members
            .iter()
            .find(|m| m.domains.contains(&d) && m.handed_over_to.is_empty())
            .or_else(|| members.iter().find(|m| m.domains.contains(&d)))?;
        for _ in 0..4 {
            if m.handed_over_to.is_empty() {
                break;
            }
            match members.iter().find(|n| n.member_id == m.handed_over_to) {
                Some(n) => m = n,
                None => break,
            }
        }
        Some(m)
    }

    /// The domains members that closed handed over to `member`.
    pub fn inherited_domains(&self, member: &str) -> Vec<String> {
        self.directory
            .iter()
            .flat_map(|d| d.directory.members.iter())
            .filter(|m| !member.is_empty() && m.handed_over_to == member)
            .flat_map(|m| m.domains.iter().cloned())
            .collect()
    }

    /// True when `member` closed and handed its users over to `successor`
    /// (so `successor` takes what it forwards, whoever the sender).
    pub fn handed_over(&self, member: &str, successor: &str) -> bool {
        self.member(member)
            .is_some_and(|m| !successor.is_empty() && m.handed_over_to == successor)
    }
}

/// A change of the trust store, as seen by subscribers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustChange {
    /// Increases with every change.
    pub generation: u64,
    /// CRL number now held.
    pub crl_number: u64,
    /// Directory serial now held.
    pub directory_serial: u64,
    /// Member the change came from (None: association, disk, local).
    pub source: Option<String>,
}

/// The charter versions this build accepts from peers by default: those of
/// the charter it ships (`charter/charter.toml`).
pub fn default_accepted_charters() -> Vec<String> {
    let c = caliopen_charter::Charter::embedded();
    std::iter::once(c.version)
        .chain(c.accepted_versions)
        .collect()
}

/// The trust store.
#[derive(Debug)]
pub struct TrustStore {
    state: RwLock<Arc<TrustState>>,
    changes: watch::Sender<TrustChange>,
    refusals: RefusalCounters,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Why directory updates are suspended, if they are.
    directory_hold: std::sync::Mutex<Option<String>>,
}

/// RFC 5280 §5.2.3: the cRLNumber extension, a non-negative INTEGER of up to
/// 20 octets that grows with each CRL. One past 64 bits reads as `u64::MAX`;
/// a CRL without one (§5.2.3: conforming issuers MUST include it) reads as 0.
fn crl_number_of(crl: &CertificateRevocationList<'_>) -> u64 {
    crl.crl_number()
        .map(|n| {
            let b = n.to_bytes_be();
            if b.len() > 8 {
                u64::MAX
            } else {
                b.iter().fold(0u64, |a, x| (a << 8) | *x as u64)
            }
        })
        .unwrap_or(0)
}

impl TrustStore {
    /// A store trusting `roots_pem` (one or more PEM certificates), accepting
    /// peers whose label names one of `accepted_charters`.
    pub fn new(roots_pem: &str, accepted_charters: Vec<String>) -> Result<Self, TrustError> {
        let blocks = pem::parse_many(roots_pem).map_err(|e| TrustError::Malformed {
            what: "root bundle",
            detail: e.to_string(),
        })?;
        let mut roots = Vec::new();
        let mut root_keys = Vec::new();
        for b in blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE") {
            root_keys.push(RootKey::from_cert_der(b.contents()).map_err(|e| {
                TrustError::Malformed {
                    what: "root",
                    detail: e.to_string(),
                }
            })?);
            roots.push(CertificateDer::from(b.into_contents()));
        }
        if roots.is_empty() {
            return Err(TrustError::Malformed {
                what: "root bundle",
                detail: "no certificate".into(),
            });
        }
        let state = TrustState {
            roots,
            root_keys,
            crl: None,
            directory: None,
            accepted_charters,
            client_verifier: None,
            server_verifier: None,
        };
        let (changes, _) = watch::channel(TrustChange::default());
        Ok(Self {
            state: RwLock::new(Arc::new(state)),
            changes,
            refusals: RefusalCounters::default(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            directory_hold: std::sync::Mutex::new(None),
        })
    }

    /// The current state (cheap: an `Arc`).
    pub fn current(&self) -> Arc<TrustState> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Subscribes to changes.
    pub fn subscribe(&self) -> watch::Receiver<TrustChange> {
        self.changes.subscribe()
    }

    /// Refusal counters (by reason).
    pub fn refusals(&self) -> &RefusalCounters {
        &self.refusals
    }

    /// The crypto provider used by every verifier.
    pub fn provider(&self) -> &Arc<rustls::crypto::CryptoProvider> {
        &self.provider
    }

    fn verify_crl(&self, st: &TrustState, der: &[u8]) -> Result<CrlInfo, TrustError> {
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| TrustError::Malformed {
                what: "CRL",
                detail: e.to_string(),
            })?;
        // One DER CertificateList (RFC 5280 §5.1), nothing after it.
        if !rest.is_empty() {
            return Err(TrustError::Malformed {
                what: "CRL",
                detail: "trailing bytes".into(),
            });
        }
        // RFC 5280 §6.3.3 (f)-(g): the CRL is signed by a root whose subject
        // is the CRL's issuer name (§5.1.2.3, compared as encoded). The
        // root's cRLSign key usage (§4.2.1.3) is not looked at, here or by
        // webpki (which tracks no key usage for trust anchors); the
        // association's root carries it.
        let signed = st.roots.iter().any(|r| {
            X509Certificate::from_der(r).is_ok_and(|(_, root)| {
                root.subject().as_raw() == crl.issuer().as_raw()
                    && crl.verify_signature(root.public_key()).is_ok()
            })
        });
        if !signed {
            return Err(TrustError::BadSignature("CRL"));
        }
        // thisUpdate (§5.1.2.4) is not compared with anything: the CRL
        // number alone orders CRLs (`offer_crl`).
        Ok(CrlInfo {
            number: crl_number_of(&crl),
            der: der.to_vec(),
            // §5.1.2.6: revoked certificates are named by serial number,
            // kept as the raw bytes the certificates carry.
            revoked: crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect(),
            next_update: crl.next_update().map_or(0, |t| t.timestamp()),
        })
    }

    fn rebuild(&self, st: &mut TrustState) -> Result<(), TrustError> {
        let (Some(crl), true) = (&st.crl, st.directory.is_some()) else {
            st.client_verifier = None;
            st.server_verifier = None;
            return Ok(());
        };
        let mut store = RootCertStore::empty();
        for r in &st.roots {
            store
                .add(r.clone())
                .map_err(|e| TrustError::Verifier(e.to_string()))?;
        }
        let store = Arc::new(store);
        // webpki does RFC 5280's path validation (§6.1): signatures up to a
        // root, validity of each certificate in the path but the root
        // itself (§4.1.2.5), basicConstraints (§4.2.1.9: no CA as an end
        // entity), EKU (§4.2.1.12), refusal of unknown critical extensions
        // (§4.2), and revocation against this CRL (§6.3). It ignores
        // keyUsage (§4.2.1.3) but for cRLSign of an intermediate CRL issuer
        // (none here), and with rustls's defaults takes a CRL past its
        // nextUpdate (§5.1.2.5) rather than refusing it.
        let crls = vec![CertificateRevocationListDer::from(crl.der.clone())];
        st.client_verifier = Some(
            WebPkiClientVerifier::builder_with_provider(store.clone(), self.provider.clone())
                .with_crls(crls.clone())
                .build()
                .map_err(|e| TrustError::Verifier(e.to_string()))?,
        );
        st.server_verifier = Some(
            WebPkiServerVerifier::builder_with_provider(store, self.provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| TrustError::Verifier(e.to_string()))?,
        );
        Ok(())
    }

    fn swap(
        &self,
        f: impl FnOnce(&TrustState) -> Result<Option<TrustState>, TrustError>,
        source: Option<&str>,
    ) -> Result<bool, TrustError> {
        let mut guard = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mut next) = f(&guard)? else {
            return Ok(false);
        };
        self.rebuild(&mut next)?;
        let next = Arc::new(next);
        *guard = next.clone();
        drop(guard);
        self.changes.send_modify(|c| {
            c.generation += 1;
            c.crl_number = next.crl_number();
            c.directory_serial = next.directory_serial();
            c.source = source.map(str::to_owned);
        });
        Ok(true)
    }

    /// Offers a CRL (DER). Takes it when it is signed by a root and newer
    /// than the one held: returns `Ok(true)`. An equal number is `Ok(false)`;
    /// an older one is [`TrustError::NotNewer`]. Its `nextUpdate` is not
    /// checked: a CRL past it is still taken (and kept) until a newer one
    /// comes.
    pub fn offer_crl(&self, der: &[u8], source: Option<&str>) -> Result<bool, TrustError> {
        self.swap(
            |st| {
                let info = self.verify_crl(st, der)?;
                // RFC 5280 §5.2.3: a larger CRL number is a later CRL.
                let held = st.crl_number();
                if info.number == held {
                    return Ok(None);
                }
                if info.number < held {
                    return Err(TrustError::NotNewer {
                        what: "CRL",
                        offered: info.number,
                        held,
                    });
                }
                Ok(Some(TrustState {
                    roots: st.roots.clone(),
                    root_keys: st.root_keys.clone(),
                    crl: Some(info),
                    directory: st.directory.clone(),
                    accepted_charters: st.accepted_charters.clone(),
                    client_verifier: None,
                    server_verifier: None,
                }))
            },
            source,
        )
    }

    /// Suspends directory updates (every new directory, from the
    /// association or a peer, is refused with [`TrustError::Held`]) until
    /// [`TrustStore::release_directories`]. The membership log does this on
    /// a split view: the association showed members different logs, so its
    /// directories are no longer taken on its word. CRLs are still taken
    /// (a revocation only withdraws trust).
    pub fn hold_directories(&self, reason: impl Into<String>) {
        *self
            .directory_hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.into());
    }

    /// Resumes directory updates.
    pub fn release_directories(&self) {
        *self
            .directory_hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Why directory updates are suspended, if they are.
    pub fn directories_held(&self) -> Option<String> {
        self.directory_hold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Offers a signed directory. Same rules as [`TrustStore::offer_crl`];
    /// a directory past `valid_until` is refused, and every new one while
    /// updates are held ([`TrustStore::hold_directories`]).
    pub fn offer_directory(
        &self,
        signed: &SignedDirectory,
        source: Option<&str>,
        now: i64,
    ) -> Result<bool, TrustError> {
        self.offer_directory_inner(signed, source, now, true)
    }

    fn offer_directory_inner(
        &self,
        signed: &SignedDirectory,
        source: Option<&str>,
        now: i64,
        honour_hold: bool,
    ) -> Result<bool, TrustError> {
        self.swap(
            |st| {
                let directory = caliopen_proto::verify_signed_directory(signed, &st.root_keys)
                    .map_err(|e| match e {
                        caliopen_proto::DirectoryError::BadSignature => {
                            TrustError::BadSignature("directory")
                        }
                        other => TrustError::Malformed {
                            what: "directory",
                            detail: other.to_string(),
                        },
                    })?;
                if directory.valid_until < now {
                    return Err(TrustError::Expired("directory"));
                }
                let held = st.directory_serial();
                if directory.serial == held {
                    return Ok(None);
                }
                if directory.serial < held {
                    return Err(TrustError::NotNewer {
                        what: "directory",
                        offered: directory.serial,
                        held,
                    });
                }
                if honour_hold {
                    if let Some(why) = self.directories_held() {
                        return Err(TrustError::Held(why));
                    }
                }
                Ok(Some(TrustState {
                    roots: st.roots.clone(),
                    root_keys: st.root_keys.clone(),
                    crl: st.crl.clone(),
                    directory: Some(DirectoryInfo {
                        directory,
                        signed: signed.clone(),
                    }),
                    accepted_charters: st.accepted_charters.clone(),
                    client_verifier: None,
                    server_verifier: None,
                }))
            },
            source,
        )
    }

    /// True when the held directory is past `valid_until` (reported, and
    /// peers are refused until a fresh one arrives).
    pub fn directory_stale(&self, now: i64) -> bool {
        self.current()
            .directory
            .as_ref()
            .is_none_or(|d| d.directory.valid_until < now)
    }

    /// Writes the current CRL and directory under `dir` (atomically), so a
    /// restarted member starts from them.
    pub fn save(&self, dir: &Path) -> Result<(), TrustError> {
        let st = self.current();
        let io = |e: std::io::Error| TrustError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let write = |name: &str, data: &[u8]| -> Result<(), TrustError> {
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, data)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
                .map_err(io)
        };
        if let Some(c) = &st.crl {
            write("crl.der", &c.der)?;
        }
        if let Some(d) = &st.directory {
            write("directory.bin", &d.signed.encode_to_vec())?;
        }
        Ok(())
    }

    /// Loads what [`TrustStore::save`] wrote, if present and still acceptable.
    pub fn load(&self, dir: &Path, now: i64) -> Result<(), TrustError> {
        if let Ok(der) = std::fs::read(dir.join("crl.der")) {
            self.offer_crl(&der, None)?;
        }
        if let Ok(bytes) = std::fs::read(dir.join("directory.bin")) {
            let signed =
                SignedDirectory::decode(bytes.as_slice()).map_err(|e| TrustError::Malformed {
                    what: "directory",
                    detail: e.to_string(),
                })?;
            // The directory this member saved itself is no update: it is
            // taken back even while updates are held.
            match self.offer_directory_inner(&signed, None, now, false) {
                Ok(_) | Err(TrustError::Expired(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

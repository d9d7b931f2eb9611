//! Making a new association (root key and self-signed root certificate,
//! charter, state) and opening an existing one.

use super::issue::random_serial;
use super::log::open_log_key;
use super::witnesses::Cosigned;
use super::{files, now, Authority, Published, Settings, NO_PRUNE};
use crate::error::{CaError, Result};
use crate::keyfile::{read_private, write_file_atomic, write_private_new};
use crate::store::Store;
use caliopen_charter::Charter;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use time::Duration;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

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
        // RFC 5280 §4.2.1.9: a CA whose pathLenConstraint 0 lets it sign end
        // entities only. §4.2.1.3: keyCertSign (which needs cA, as set
        // above) and cRLSign, since the root signs the CRL itself (§5).
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
}

//! The association's durable state, in sled (`DIR/state/`). Every mutation is
//! flushed (fsync) before the operation reports success.
//!
//! Trees:
//! - `certs`: serial (raw bytes) → [`CertRecord`] as JSON. Every certificate
//!   ever issued; revocation and supersession are fields, records are never
//!   deleted.
//! - `meta`: `crl_number` and `directory_serial` (u64 big-endian, last issued),
//!   `min_software_version` (UTF-8), `current_crl` (DER), `current_directory`
//!   (encoded `SignedDirectory`).

use crate::error::{CaError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A revocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocation {
    /// Unix seconds.
    pub at: i64,
    /// RFC 5280 reason name (`keyCompromise`, …).
    pub reason: String,
}

/// A certificate replaced by a newer one of the same member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Supersession {
    /// When the newer certificate was issued (Unix seconds).
    pub at: i64,
    /// Serial of the newer certificate.
    pub by: String,
    /// Until when the directory still lists this certificate (Unix seconds,
    /// exclusive): the overlap during which peers that cached it keep
    /// accepting it. Only ever lowered, so a pruned certificate never
    /// comes back.
    pub listed_until: i64,
}

/// One issued member certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex of the serial.
    pub serial: String,
    /// The member's identifier.
    pub member_id: String,
    /// Mail domains (SAN dNSName).
    pub domains: Vec<String>,
    /// Mesh endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// Charter version signed.
    pub charter_version: String,
    /// Successor member's domain.
    pub successor: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub sha256: String,
    /// Serial of the certificate this one renewed, if any.
    pub renewed_from: Option<String>,
    /// Set once revoked.
    pub revoked: Option<Revocation>,
    /// Set once a newer certificate of the member replaced this one (absent
    /// in records written before supersession existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Supersession>,
    /// The certificate, PEM.
    pub certificate_pem: String,
}

/// A certificate's standing at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Valid and not revoked.
    Active,
    /// Revoked (whatever its validity).
    Revoked,
    /// Past its validity.
    Expired,
    /// Not valid yet.
    Pending,
    /// Valid and not revoked, but replaced by a newer certificate of the
    /// member and past its overlap: no longer listed, cannot renew.
    Superseded,
}

impl CertRecord {
    /// Standing at `now` (Unix seconds).
    pub fn status(&self, now: i64) -> Status {
        if self.revoked.is_some() {
            Status::Revoked
        } else if now > self.not_after {
            Status::Expired
        } else if now < self.not_before {
            Status::Pending
        } else if self
            .superseded
            .as_ref()
            .is_some_and(|s| now >= s.listed_until)
        {
            Status::Superseded
        } else {
            Status::Active
        }
    }
}

/// Typed access to the sled trees.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    certs: sled::Tree,
    meta: sled::Tree,
}

const K_CRL_NUMBER: &[u8] = b"crl_number";
const K_DIRECTORY_SERIAL: &[u8] = b"directory_serial";
const K_MIN_VERSION: &[u8] = b"min_software_version";
const K_CURRENT_CRL: &[u8] = b"current_crl";
const K_CURRENT_DIRECTORY: &[u8] = b"current_directory";

impl Store {
    /// Opens (or creates) the state database. Fails clearly when another
    /// process holds it.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                CaError::State(format!(
                    "state database {} is in use by another process (a running `caliopen-ca serve` \
                     should have answered on its admin socket)",
                    path.display()
                ))
            }
            other => CaError::Db(other),
        })?;
        let certs = db.open_tree("certs")?;
        let meta = db.open_tree("meta")?;
        Ok(Self { db, certs, meta })
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Stores a certificate record (insert or update).
    pub fn put_cert(&self, serial: &[u8], rec: &CertRecord) -> Result<()> {
        let v = serde_json::to_vec(rec).map_err(|e| CaError::State(e.to_string()))?;
        self.certs.insert(serial, v)?;
        Ok(())
    }

    /// Looks a certificate up by serial.
    pub fn get_cert(&self, serial: &[u8]) -> Result<Option<CertRecord>> {
        self.certs
            .get(serial)?
            .map(|v| decode_record(&v))
            .transpose()
    }

    /// Every certificate record, in serial order.
    pub fn all_certs(&self) -> Result<Vec<CertRecord>> {
        self.certs
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                decode_record(&v)
            })
            .collect()
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64> {
        match self.meta.get(key)? {
            None => Ok(0),
            Some(v) => {
                let arr: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| CaError::State(format!("corrupt meta counter {key:?}")))?;
                Ok(u64::from_be_bytes(arr))
            }
        }
    }

    /// Last CRL number issued (0: none).
    pub fn crl_number(&self) -> Result<u64> {
        self.get_u64(K_CRL_NUMBER)
    }

    /// Last directory serial issued (0: none).
    pub fn directory_serial(&self) -> Result<u64> {
        self.get_u64(K_DIRECTORY_SERIAL)
    }

    /// Records a newly issued CRL as current.
    pub fn set_crl(&self, number: u64, der: &[u8]) -> Result<()> {
        self.meta.insert(K_CRL_NUMBER, &number.to_be_bytes())?;
        self.meta.insert(K_CURRENT_CRL, der)?;
        Ok(())
    }

    /// The current CRL (DER), if any.
    pub fn current_crl(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(K_CURRENT_CRL)?.map(|v| v.to_vec()))
    }

    /// Records a newly issued directory as current.
    pub fn set_directory(&self, serial: u64, signed: &[u8]) -> Result<()> {
        self.meta
            .insert(K_DIRECTORY_SERIAL, &serial.to_be_bytes())?;
        self.meta.insert(K_CURRENT_DIRECTORY, signed)?;
        Ok(())
    }

    /// The current signed directory (encoded), if any.
    pub fn current_directory(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(K_CURRENT_DIRECTORY)?.map(|v| v.to_vec()))
    }

    /// The security baseline ("" when unset).
    pub fn min_software_version(&self) -> Result<String> {
        Ok(self
            .meta
            .get(K_MIN_VERSION)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    /// Sets the security baseline.
    pub fn set_min_software_version(&self, v: &str) -> Result<()> {
        self.meta.insert(K_MIN_VERSION, v.as_bytes())?;
        Ok(())
    }
}

fn decode_record(v: &[u8]) -> Result<CertRecord> {
    serde_json::from_slice(v)
        .map_err(|e| CaError::State(format!("corrupt certificate record: {e}")))
}

//! Verification of the association's signed directory with the root
//! certificate(s) alone.

use crate::pb::directory::{Directory, SignedDirectory};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use prost::Message;
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Value of `Directory.purpose`.
pub const DIRECTORY_PURPOSE: &str = "caliopen/directory/v1";
/// Value of `SignedDirectory.algorithm`.
pub const DIRECTORY_ALGORITHM: &str = "ecdsa-p256-sha256";
/// Largest encoded directory accepted (bytes).
pub const MAX_DIRECTORY_LEN: usize = 16 * 1024 * 1024;

/// Why a signed directory was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// The outer or inner protobuf could not be decoded.
    #[error("malformed directory: {0}")]
    Malformed(String),
    /// Larger than [`MAX_DIRECTORY_LEN`].
    #[error("directory of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// An algorithm other than [`DIRECTORY_ALGORITHM`].
    #[error("unsupported directory signature algorithm {0:?}")]
    Algorithm(String),
    /// No given root verifies the signature.
    #[error("directory signature does not verify with any association root")]
    BadSignature,
    /// The purpose field is not [`DIRECTORY_PURPOSE`].
    #[error("signed object is not a directory (purpose {0:?})")]
    Purpose(String),
    /// A root certificate could not be parsed.
    #[error("association root certificate unreadable: {0}")]
    BadRoot(String),
}

/// An association root's public key, as used to check directory signatures.
#[derive(Debug, Clone)]
pub struct RootKey {
    /// Subject key identifier (empty when the certificate has none).
    pub key_id: Vec<u8>,
    /// Uncompressed EC point of the root's P-256 key.
    pub public_key: Vec<u8>,
}

impl RootKey {
    /// Extracts the key from a root certificate (DER).
    pub fn from_cert_der(der: &[u8]) -> Result<Self, DirectoryError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| DirectoryError::BadRoot(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DirectoryError::BadRoot("trailing bytes".into()));
        }
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .unwrap_or_default();
        Ok(Self {
            key_id,
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// Checks `signed` against `roots` and returns the directory it carries.
///
/// Freshness (serial order, `valid_until`) is the caller's policy: this only
/// proves that an association root signed these exact bytes as a directory.
pub fn verify_signed_directory(
    signed: &SignedDirectory,
    roots: &[RootKey],
) -> Result<Directory, DirectoryError> {
    if signed.directory.len() > MAX_DIRECTORY_LEN {
        return Err(DirectoryError::TooLarge(signed.directory.len()));
    }
    if signed.algorithm != DIRECTORY_ALGORITHM {
        return Err(DirectoryError::Algorithm(signed.algorithm.clone()));
    }
    // Try the root named by key id first, then the others (a bundle may hold
    // several roots during a rotation).
    let mut ordered: Vec<&RootKey> = roots.iter().collect();
    ordered.sort_by_key(|r| r.key_id != signed.signer_key_id);
    let ok = ordered.iter().any(|r| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &r.public_key)
            .verify(&signed.directory, &signed.signature)
            .is_ok()
    });
    if !ok {
        return Err(DirectoryError::BadSignature);
    }
    let dir = Directory::decode(signed.directory.as_slice())
        .map_err(|e| DirectoryError::Malformed(e.to_string()))?;
    if dir.purpose != DIRECTORY_PURPOSE {
        return Err(DirectoryError::Purpose(dir.purpose));
    }
    Ok(dir)
}

/// Decodes a `SignedDirectory` file or frame and verifies it (see
/// [`verify_signed_directory`]).
pub fn decode_and_verify(bytes: &[u8], roots: &[RootKey]) -> Result<Directory, DirectoryError> {
    if bytes.len() > MAX_DIRECTORY_LEN + 4096 {
        return Err(DirectoryError::TooLarge(bytes.len()));
    }
    let signed =
        SignedDirectory::decode(bytes).map_err(|e| DirectoryError::Malformed(e.to_string()))?;
    verify_signed_directory(&signed, roots)
}

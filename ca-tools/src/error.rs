//! Errors of the association's operations, split by whose fault they are.

use thiserror::Error;

/// Why an association operation failed.
#[derive(Debug, Error)]
pub enum CaError {
    /// The caller's input is unusable (malformed CSR, unknown charter version, bad flag value).
    #[error("{0}")]
    BadInput(String),
    /// The input is well-formed but policy refuses it (CA CSR, domain held by another member,
    /// revoked or expired member asking for renewal…).
    #[error("{0}")]
    Refused(String),
    /// Nothing matches (unknown serial or domain).
    #[error("{0}")]
    NotFound(String),
    /// The association's own state is unusable (missing files, bad permissions, corrupt state).
    #[error("{0}")]
    State(String),
    /// An I/O or storage failure on this machine.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The state database failed.
    #[error("state database: {0}")]
    Db(#[from] sled::Error),
    /// Certificate or signature generation failed.
    #[error("crypto: {0}")]
    Crypto(String),
}

impl CaError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        Self::Crypto(e.to_string())
    }
}

impl From<CaError> for tonic::Status {
    fn from(e: CaError) -> Self {
        let msg = e.to_string();
        match e {
            CaError::BadInput(_) => tonic::Status::invalid_argument(msg),
            CaError::Refused(_) => tonic::Status::permission_denied(msg),
            CaError::NotFound(_) => tonic::Status::not_found(msg),
            CaError::State(_) => tonic::Status::failed_precondition(msg),
            CaError::Io { .. } | CaError::Db(_) | CaError::Crypto(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}

/// Result of association operations.
pub type Result<T, E = CaError> = std::result::Result<T, E>;

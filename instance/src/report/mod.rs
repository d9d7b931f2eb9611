//! What the command-line tool shows about a running or stopped instance,
//! made here so that tests reach it: each report is a JSON value (for
//! `--json`) and the text a person reads. The binary only prints one of
//! the two.

/// Writes a line of a text report (writing to a `String` cannot fail).
macro_rules! w {
    ($o:expr, $($t:tt)*) => {{
        let _ = writeln!($o, $($t)*);
    }};
}

mod certificate;
mod dkim;
mod dns;
mod log;
mod privacy;

pub use certificate::{certificate, rfc3339};
pub use dkim::dkim_list;
pub use dns::{dkim_keys, dns, dns_check};
pub use log::membership_log;
pub use privacy::{index_json, privacy};

use thiserror::Error;

/// A report, in both forms.
#[derive(Debug, Clone)]
pub struct Report {
    /// For `--json`.
    pub json: serde_json::Value,
    /// For a person: lines ending with `\n`.
    pub text: String,
}

/// Why a report could not be made.
#[derive(Debug, Error)]
pub enum ReportError {
    /// What was asked for does not apply to this instance (the operator's
    /// to fix).
    #[error("{0}")]
    Input(String),
    /// No such user.
    #[error("no user {0:?}")]
    NoUser(String),
    /// The running daemon refused or failed the request.
    #[error("{}", .0.message())]
    Daemon(#[from] tonic::Status),
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A file could not be read.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another part failed as it said (the membership log's monitor, the
    /// trust store).
    #[error("{0}")]
    Other(String),
}

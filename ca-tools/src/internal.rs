//! Entry points for this workspace's tests and benches: not part of the
//! API, hidden from the documentation (as rustls's `internal`), and free to
//! change. They let a test set the clock or reshape the state in ways no
//! operator should.

use crate::authority::{Authority, Issued, SignRequest};
use crate::error::Result;
use rcgen::KeyPair;
use time::OffsetDateTime;

/// The association's root key pair, to sign what the association would not
/// (forged directories, certificates of a rogue issuer).
pub fn root_key(ca: &Authority) -> &KeyPair {
    ca.key()
}

/// [`Authority::sign`] at `at`: the certificate's validity starts at `at`
/// and the domain check considers members active at `at`.
pub fn sign_at(ca: &Authority, req: &SignRequest, at: OffsetDateTime) -> Result<Issued> {
    ca.sign_at(req, at)
}

/// [`Authority::renew`] at `at`: validity, standing and the overlap are
/// reckoned from `at`, and the directory is issued at `at`.
pub fn renew_at(
    ca: &Authority,
    client_cert_der: &[u8],
    csr_pem: &[u8],
    at: OffsetDateTime,
) -> Result<Issued> {
    ca.renew_at(client_cert_der, csr_pem, at)
}

/// [`Authority::refresh_if_due`] at `at`.
pub fn refresh_if_due_at(ca: &Authority, at: OffsetDateTime) -> Result<bool> {
    ca.refresh_if_due_at(at)
}

/// [`Authority::heartbeat_if_due`] at `at`. A clock that went back signs
/// nothing: timestamps never decrease.
pub fn heartbeat_if_due_at(ca: &Authority, at: OffsetDateTime) -> Result<bool> {
    ca.heartbeat_if_due_at(at)
}

/// Removes the membership log from the state: a state as an association
/// older than the log left it.
pub fn wipe_log(ca: &Authority) -> Result<()> {
    ca.wipe_log_for_tests()
}

/// Stores `note` as the latest checkpoint as it is, unverified: a
/// checkpoint written by an older version.
pub fn replace_checkpoint(ca: &Authority, note: &str) -> Result<()> {
    ca.replace_checkpoint_for_tests(note)
}

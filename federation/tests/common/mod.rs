//! Helpers shared by the federation's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use caliopen_federation::BoxFuture;
use caliopen_federation::{HandlerError, MeshHandler, PeerIdentity};
use caliopen_proto::pb::mesh::{Deliver, DeliverReply, PrivacyQuery, PrivacyReply};
use prost::Message;

/// A mesh handler for tests that carry no mail: it refuses every delivery
/// and every privacy query.
pub(crate) struct Refusing;

impl MeshHandler for Refusing {
    fn deliver(
        &self,
        _: &PeerIdentity,
        _: Deliver,
    ) -> BoxFuture<Result<DeliverReply, HandlerError>> {
        Box::pin(async { Err(HandlerError::Refused("no mail in this test".into())) })
    }
    fn privacy_query(
        &self,
        _: &PeerIdentity,
        _: PrivacyQuery,
    ) -> BoxFuture<Result<PrivacyReply, HandlerError>> {
        Box::pin(async { Err(HandlerError::Refused("no queries in this test".into())) })
    }
}

/// A PEM CSR for `domain` made with `key`.
pub(crate) fn csr(key: &rcgen::KeyPair, domain: &str) -> Vec<u8> {
    rcgen::CertificateParams::new(vec![domain.to_owned()])
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

/// What a test inbox does with a delivery: keeps it once by `txn_id`, then
/// flushes. Returns true when the transaction is new. Not sled's
/// `flush_async`: concurrent callers can wait forever in sled 0.34
/// (spacejam/sled#1308), and the hostile tests replay deliveries at once.
pub(crate) async fn store_once(
    tree: &sled::Tree,
    db: &sled::Db,
    d: &Deliver,
) -> Result<bool, HandlerError> {
    let fresh = tree
        .compare_and_swap(&d.txn_id, None as Option<&[u8]>, Some(d.encode_to_vec()))
        .map_err(|e| HandlerError::Unavailable(e.to_string()))?
        .is_ok();
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush())
        .await
        .map_err(|e| HandlerError::Unavailable(e.to_string()))?
        .map_err(|e| HandlerError::Unavailable(e.to_string()))?;
    Ok(fresh)
}

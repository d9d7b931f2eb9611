//! Helpers shared by the federation's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use caliopen_federation::HandlerError;
use caliopen_proto::pb::mesh::Deliver;
use prost::Message;

/// What a test inbox does with a delivery: keeps it once by `txn_id`, then
/// flushes. Returns true when the transaction is new. Not sled's
/// `flush_async`: concurrent callers can wait forever in sled 0.34
/// (spacejam/sled#1308), and the hostile tests replay deliveries at once.
pub async fn store_once(
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

//! The instance on the mesh: when it holds a label, it runs a mesh node,
//! follows the association, renews its certificate, delivers mail for other
//! members' domains through the durable outbox, stores mail from members
//! (`via = mesh`, idempotent by `txn_id`), and bounces what cannot be
//! delivered with a DSN.

mod inbox;
mod log;
mod route;
mod start;

pub use inbox::{
    store_handler, store_handler_with_limit, PRIVACY_QUERIES_PER_SECOND, PRIVACY_QUERY_BURST,
};
pub use log::open_log;
pub use route::{by_member, txn_id, MeshRoute};
pub use start::start;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The member id in a certificate's label.
pub fn member_id_of(cert_pem: &str) -> Result<String, String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = pem::parse(cert_pem)
        .map_err(|e| e.to_string())?
        .into_contents();
    let (_, c) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let ext = c
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == caliopen_proto::LABEL_OID_DER)
        .ok_or("the certificate carries no Caliopen label")?;
    Ok(caliopen_proto::Label::from_der(ext.value)
        .map_err(|e| e.to_string())?
        .member_id)
}

/// Where the membership-log view is kept, in the data directory.
pub const LOG_DIR: &str = "membership-log";

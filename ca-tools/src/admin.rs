//! The admin socket (`DIR/admin.sock`, 0600): the command-line tool's way to
//! the authority while `serve` holds its state database. Filesystem
//! permissions are the authentication: only the association's operator can
//! connect.

use crate::authority::{files, Authority, RevokeTarget, SignRequest};
use crate::error::{CaError, Result};
use caliopen_proto::pb::ca_admin::ca_admin_client::CaAdminClient;
use caliopen_proto::pb::ca_admin::ca_admin_server::CaAdmin;
use caliopen_proto::pb::ca_admin::{self as pb, revoke_request, witness_request};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// Admin handlers over an [`Authority`].
#[derive(Debug, Clone)]
pub struct AdminService {
    ca: Arc<Authority>,
}

impl AdminService {
    /// Serves `ca`.
    pub fn new(ca: Arc<Authority>) -> Self {
        Self { ca }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Authority) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let ca = self.ca.clone();
        let r = tokio::task::spawn_blocking(move || f(&ca))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Err(e) = &r {
            tracing::warn!(op, error = %e, "admin request refused");
        }
        r.map_err(Status::from)
    }
}

#[tonic::async_trait]
impl CaAdmin for AdminService {
    async fn sign(
        &self,
        r: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let r = r.into_inner();
        let req = SignRequest {
            csr: r.csr_pem.into_bytes(),
            member_id: r.member_id,
            charter_version: r.charter_version,
            successor: Some(r.successor).filter(|s| !s.is_empty()),
            endpoints: r.endpoints,
            days: Some(r.days).filter(|d| *d != 0),
        };
        let issued = self.blocking("sign", move |ca| ca.sign(&req)).await?;
        tracing::info!(serial = %issued.record.serial, member = %issued.record.member_id, "certificate issued");
        Ok(Response::new(pb::SignResponse {
            certificate_pem: issued.record.certificate_pem,
            serial: issued.record.serial,
        }))
    }

    async fn revoke(
        &self,
        r: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let r = r.into_inner();
        let target = match r.target {
            Some(revoke_request::Target::Serial(s)) => RevokeTarget::Serial(s),
            Some(revoke_request::Target::Domain(d)) => RevokeTarget::Domain(d),
            None => return Err(Status::invalid_argument("serial or domain required")),
        };
        let reason = r.reason;
        let out = self
            .blocking("revoke", move |ca| ca.revoke(&target, &reason))
            .await?;
        tracing::info!(revoked = ?out.newly_revoked, crl_number = out.crl_number, "revocation");
        Ok(Response::new(pb::RevokeResponse {
            newly_revoked: out.newly_revoked,
            already_revoked: out.already_revoked,
            crl_number: out.crl_number,
        }))
    }

    async fn issue_crl(
        &self,
        _r: Request<pb::IssueCrlRequest>,
    ) -> Result<Response<pb::IssueCrlResponse>, Status> {
        let (crl_number, crl_der) = self.blocking("crl", |ca| ca.issue_crl()).await?;
        Ok(Response::new(pb::IssueCrlResponse {
            crl_number,
            crl_der,
        }))
    }

    async fn issue_directory(
        &self,
        _r: Request<pb::IssueDirectoryRequest>,
    ) -> Result<Response<pb::IssueDirectoryResponse>, Status> {
        let (serial, signed_directory) = self
            .blocking("directory", |ca| ca.issue_directory())
            .await?;
        Ok(Response::new(pb::IssueDirectoryResponse {
            serial,
            signed_directory,
        }))
    }

    async fn list(
        &self,
        _r: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let entries = self.blocking("list", |ca| ca.list()).await?;
        let records_json =
            serde_json::to_string(&entries).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListResponse { records_json }))
    }

    async fn set_baseline(
        &self,
        r: Request<pb::SetBaselineRequest>,
    ) -> Result<Response<pb::SetBaselineResponse>, Status> {
        let v = r.into_inner().min_software_version;
        let directory_serial = self
            .blocking("baseline", move |ca| ca.set_baseline(&v))
            .await?;
        Ok(Response::new(pb::SetBaselineResponse { directory_serial }))
    }

    async fn handover(
        &self,
        r: Request<pb::HandoverRequest>,
    ) -> Result<Response<pb::HandoverResponse>, Status> {
        let r = r.into_inner();
        let h = self
            .blocking("handover", move |ca| ca.handover(&r.from, &r.to))
            .await?;
        Ok(Response::new(pb::HandoverResponse {
            to: h.to,
            domains: h.domains,
            at: h.at,
        }))
    }

    async fn witness(
        &self,
        r: Request<pb::WitnessRequest>,
    ) -> Result<Response<pb::WitnessResponse>, Status> {
        let op = r
            .into_inner()
            .op
            .ok_or_else(|| Status::invalid_argument("no witness operation"))?;
        let out = self
            .blocking("witness", move |ca| witness_op(ca, op))
            .await?;
        Ok(Response::new(out))
    }
}

/// What `log witness` answers: the witnesses (JSON, the CA PEM left out),
/// the quorum, the directory issued (0: none).
pub fn witness_response(ca: &Authority, directory_serial: u64) -> Result<pb::WitnessResponse> {
    let (ws, quorum) = ca.witnesses()?;
    let list: Vec<serde_json::Value> = ws
        .iter()
        .map(|w| {
            serde_json::json!({
                "name": w.name, "vkey": w.vkey, "url": w.url,
                "ca": w.ca_pem.is_some(), "added_at": w.added_at,
            })
        })
        .collect();
    Ok(pb::WitnessResponse {
        witnesses_json: serde_json::to_string(&list).map_err(|e| CaError::State(e.to_string()))?,
        quorum,
        directory_serial,
    })
}

/// Runs one `log witness` operation on `ca`.
pub fn witness_op(ca: &Authority, op: witness_request::Op) -> Result<pb::WitnessResponse> {
    let serial = match op {
        witness_request::Op::Add(a) => ca.add_witness(
            &a.name,
            &a.vkey,
            &a.url,
            Some(a.ca_pem.as_str()).filter(|p| !p.is_empty()),
        )?,
        witness_request::Op::Remove(name) => ca.remove_witness(&name)?,
        witness_request::Op::Quorum(n) => ca.set_witness_quorum(n)?,
        witness_request::Op::List(_) => 0,
    };
    witness_response(ca, serial)
}

/// Connects to the admin socket of a service running on `dir`, if one answers.
pub async fn connect(dir: &Path) -> Option<CaAdminClient<Channel>> {
    let path = dir.join(files::ADMIN_SOCKET);
    if !path.exists() {
        return None;
    }
    let endpoint =
        Endpoint::from_static("http://admin.sock").connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .ok()?;
    Some(CaAdminClient::new(channel))
}

/// Turns a status from the admin socket back into an error.
pub fn status_to_error(s: Status) -> CaError {
    let msg = s.message().to_owned();
    match s.code() {
        tonic::Code::InvalidArgument => CaError::BadInput(msg),
        tonic::Code::PermissionDenied => CaError::Refused(msg),
        tonic::Code::NotFound => CaError::NotFound(msg),
        _ => CaError::State(format!("service: {msg}")),
    }
}

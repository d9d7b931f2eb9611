//! The local admin API (tonic over `DATA/admin.sock`, 0600, plus a bearer
//! token from `DATA/admin.token`, 0600): the command-line tool's way into a
//! running daemon, since only one process may open the database.

mod ops;
mod transfer;

pub(crate) use ops::user_of;
pub use ops::{execute, execute_with, Op, OpError, OpOutput};
pub use transfer::{
    AccountManifest, AppendItem, MessageFacts, MAX_BATCH_BYTES, MAX_BATCH_MESSAGES,
    MAX_IMPORT_MESSAGE,
};

use crate::delivery::MailService;
use crate::mail::Mailbox;
use crate::store::MessageMeta;
use caliopen_proto::pb::instance_admin::instance_admin_client::InstanceAdminClient;
use caliopen_proto::pb::instance_admin::instance_admin_server::InstanceAdmin;
use caliopen_proto::pb::instance_admin::{
    IssueUserTokenRequest, IssueUserTokenResponse, ListMailRequest, ListMailResponse,
    PutUserRequest, PutUserResponse, RunRequest, RunResponse,
};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// Socket file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Largest admin answer the command-line tool accepts (a listing of about a
/// million messages).
pub const MAX_ADMIN_MESSAGE: usize = 1 << 30;

/// Largest request the admin API takes (a batch of imported messages).
pub const MAX_ADMIN_REQUEST: usize = (MAX_IMPORT_MESSAGE + (1 << 20)) as usize;

/// Token file name in the data directory.
pub const ADMIN_TOKEN: &str = "admin.token";

/// Checks a local part: 1-64 of a-z 0-9 . _ - (lowercase), not starting with a dot.
pub fn valid_localpart(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 64
        && !l.starts_with('.')
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The JSON shape of `caliopen mail list --json` (the messages of one
/// mailbox), with each message's privacy index computed from its delivery
/// record, bytes and the contact book.
pub fn messages_json(
    svc: &MailService,
    mailbox: &Mailbox,
    list: &[MessageMeta],
) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|m| {
                let privacy = crate::api::message_index(svc, m);
                serde_json::json!({
                    "privacy": privacy,
                    "id": format!("{:x}", m.id),
                    "mailbox": mailbox.name,
                    "uid": m.uid_in(mailbox.id),
                    "keywords": m.keywords,
                    "thread": format!("{:x}", m.thread),
                    "from": m.from,
                    "to": m.to,
                    "subject": m.subject,
                    "received_at": m.received_at,
                    "via": m.via,
                    "size": m.size,
                    "transport": m.transport,
                })
            })
            .collect(),
    )
}

/// Admin handlers.
#[derive(Debug, Clone)]
pub struct AdminService {
    svc: MailService,
    domains: Vec<String>,
    token: String,
    sessions: std::sync::Arc<crate::api::Sessions>,
}

/// Lifetime of the client API tokens the admin API issues.
const OPERATOR_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

impl AdminService {
    /// Serves `svc`; callers must present `token`. User tokens are issued into `sessions`.
    pub fn new(
        svc: MailService,
        domains: Vec<String>,
        token: String,
        sessions: std::sync::Arc<crate::api::Sessions>,
    ) -> Self {
        Self {
            svc,
            domains,
            token,
            sessions,
        }
    }

    fn check<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let want = format!("Bearer {}", self.token);
        let got = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Length and content compared without early exit.
        let eq = got.len() == want.len()
            && got
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if eq {
            Ok(())
        } else {
            Err(Status::unauthenticated("bad or missing admin token"))
        }
    }
}

#[tonic::async_trait]
impl InstanceAdmin for AdminService {
    async fn put_user(
        &self,
        r: Request<PutUserRequest>,
    ) -> Result<Response<PutUserResponse>, Status> {
        self.check(&r)?;
        let r = r.into_inner();
        if !valid_localpart(&r.localpart) {
            return Err(Status::invalid_argument(format!(
                "invalid user name {:?}",
                r.localpart
            )));
        }
        if let Err(e) = crate::login::hash_within_bounds(&r.password_hash) {
            return Err(Status::invalid_argument(format!("password_hash: {e}")));
        }
        self.svc
            .store()
            .put_user(&r.localpart, &r.password_hash)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(user = %r.localpart, "user created or updated");
        Ok(Response::new(PutUserResponse {
            addresses: self
                .domains
                .iter()
                .map(|d| format!("{}@{d}", r.localpart))
                .collect(),
        }))
    }

    async fn list_mail(
        &self,
        r: Request<ListMailRequest>,
    ) -> Result<Response<ListMailResponse>, Status> {
        self.check(&r)?;
        let l = r.into_inner().localpart;
        if !self.svc.store().user_exists(&l) {
            return Err(Status::not_found(format!("no user {l:?}")));
        }
        let out = execute(
            &self.svc,
            Op::MailList {
                user: l,
                mailbox: None,
            },
        )
        .await
        .map_err(|e| e.status())?;
        Ok(Response::new(ListMailResponse {
            messages_json: out.json.to_string(),
        }))
    }

    async fn run(&self, r: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        self.check(&r)?;
        let r = r.into_inner();
        let mut op: Op = serde_json::from_str(&r.op_json)
            .map_err(|e| Status::invalid_argument(format!("op_json: {e}")))?;
        if let Op::StoreCheck { repair, live } = &mut op {
            if *repair {
                return Err(Status::failed_precondition(
                    "store check --repair needs the store to itself: stop the daemon first",
                ));
            }
            *live = true;
        }
        let out = execute_with(&self.svc, op, r.input)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(RunResponse {
            result_json: out.json.to_string(),
            raw: out.raw,
        }))
    }

    async fn issue_user_token(
        &self,
        r: Request<IssueUserTokenRequest>,
    ) -> Result<Response<IssueUserTokenResponse>, Status> {
        self.check(&r)?;
        let l = r.into_inner().localpart;
        if !self.svc.store().user_exists(&l) {
            return Err(Status::not_found(format!("no user {l:?}")));
        }
        let (token, expires_at) = self.sessions.issue(&l, OPERATOR_TOKEN_LIFETIME)?;
        tracing::info!(user = %l, "client token issued to the operator");
        Ok(Response::new(IssueUserTokenResponse { token, expires_at }))
    }
}

/// Connects to the admin socket of a daemon running on `data_dir`, if one
/// answers: the channel (which also serves the client API) and the admin token.
pub async fn channel(data_dir: &Path) -> Option<(Channel, String)> {
    let sock = data_dir.join(ADMIN_SOCKET);
    if !sock.exists() {
        return None;
    }
    let token = std::fs::read_to_string(data_dir.join(ADMIN_TOKEN)).ok()?;
    let channel = Endpoint::from_static("http://admin.sock")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .ok()?;
    Some((channel, token.trim().to_owned()))
}

/// Connects to the admin API of a daemon running on `data_dir`, if one answers.
pub async fn connect(data_dir: &Path) -> Option<(InstanceAdminClient<Channel>, String)> {
    let (ch, token) = channel(data_dir).await?;
    // A listing of a large mailbox is far over tonic's default 4 MiB.
    Some((
        InstanceAdminClient::new(ch).max_decoding_message_size(MAX_ADMIN_MESSAGE),
        token,
    ))
}

/// Adds the bearer token to a request.
pub fn with_token<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// Why an operation run through a [`Runner`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The operation failed (bad input, nothing found, the store).
    #[error(transparent)]
    Op(#[from] OpError),
    /// The running daemon refused or failed it.
    #[error("{0}")]
    Daemon(String),
    /// The database could not be opened or flushed.
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The operation's own error back from the daemon's status, so that a
/// caller can tell "not found" and "bad input" from a failure whichever
/// way the operation ran.
fn run_error_of(s: tonic::Status) -> RunError {
    let m = s.message().to_owned();
    match s.code() {
        tonic::Code::NotFound => RunError::Op(OpError::NotFound(m)),
        tonic::Code::InvalidArgument => RunError::Op(OpError::Invalid(m)),
        tonic::Code::Internal => RunError::Op(OpError::Internal(m)),
        _ => RunError::Daemon(m),
    }
}

/// Runs [`Op`]s: in the daemon over its admin socket when one runs on the
/// data directory, else on the database itself (only one process may
/// open it).
#[derive(Debug)]
pub enum Runner {
    /// A daemon answers on `DATA/admin.sock`.
    Daemon {
        /// Its admin client.
        client: InstanceAdminClient<Channel>,
        /// The admin token.
        token: String,
    },
    /// No daemon: the tool opened the database.
    Local(MailService),
}

impl Runner {
    /// The daemon of `cfg`'s data directory, or its database.
    pub async fn open(cfg: &crate::config::Config) -> Result<Self, RunError> {
        let dir = cfg.data_dir();
        if let Some((client, token)) = connect(&dir).await {
            return Ok(Runner::Daemon { client, token });
        }
        let store = crate::store::Store::open_with(&dir.join("db"), &cfg.store.options())?;
        store.set_quota_default(cfg.accounts.limits());
        let svc = MailService::new(store, cfg.domains.clone());
        svc.set_spool_dir(dir.join("handover"));
        Ok(Runner::Local(svc))
    }

    /// True when a daemon runs the operations.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Runner::Daemon { .. })
    }

    /// Runs one operation with `input` bytes (see [`execute_with`]).
    pub async fn run(&self, op: &Op, input: Vec<u8>) -> Result<OpOutput, RunError> {
        match self {
            Runner::Daemon { client, token } => {
                let op_json =
                    serde_json::to_string(op).map_err(|e| RunError::Daemon(e.to_string()))?;
                let r = client
                    .clone()
                    .max_encoding_message_size(MAX_ADMIN_REQUEST)
                    .run(with_token(RunRequest { op_json, input }, token))
                    .await
                    .map_err(run_error_of)?
                    .into_inner();
                Ok(OpOutput {
                    json: serde_json::from_str(&r.result_json)
                        .map_err(|e| RunError::Daemon(format!("bad answer: {e}")))?,
                    raw: r.raw,
                })
            }
            Runner::Local(svc) => Ok(execute_with(svc, op.clone(), input).await?),
        }
    }

    /// Makes what the operations wrote durable (the database, when the
    /// tool opened it; a daemon's writes are durable when it answers).
    pub async fn close(self) -> Result<(), RunError> {
        if let Runner::Local(svc) = self {
            svc.store().flush().await?;
        }
        Ok(())
    }
}

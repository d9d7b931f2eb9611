//! The client API (`caliopen.client.v1.Client`, gRPC with server
//! reflection): log in with a password for an expiring token, read messages
//! and contacts with their privacy index, send, see one's own level, hints
//! and achievements, and publish or withdraw one's public level. Served over
//! TLS on `[api] listen` when configured, and always on the local admin
//! socket (where `caliopen privacy` reaches it with a token the admin API
//! issues). Errors are gRPC status codes with a one-line message.

mod model;

use crate::delivery::{DeliveryError, MailService};
use crate::login::LoginError;
use crate::privacy::{self, PrivacyIndex};
use crate::store::{ContactRecord, MessageMeta, SeenLevel, Transport, Via};
use caliopen_proto::pb::client as pb;
use caliopen_proto::pb::client::client_server::Client;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Most recipients of one `Send`.
const MAX_SEND_RECIPIENTS: usize = 100;
/// Messages per `ListMessages` page when the client names no limit.
const LIST_PAGE_DEFAULT: usize = 500;
/// The most a client may ask for in one page (summaries with their privacy
/// index stay well under the 4 MiB a gRPC message may take).
const LIST_PAGE_MAX: usize = 2000;
/// Largest body of one `Send`.
const MAX_SEND_BODY: usize = 1024 * 1024;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Login tokens in memory (a restart logs everyone out), stored by their
/// SHA-256 so the map never holds a usable token.
#[derive(Debug, Default)]
pub struct Sessions {
    tokens: Mutex<HashMap<[u8; 32], (String, i64)>>,
}

fn token_key(token: &str) -> [u8; 32] {
    crate::privacy::public::address_hash(token)
}

impl Sessions {
    /// Issues a token for `localpart`, valid `lifetime`.
    pub fn issue(&self, localpart: &str, lifetime: Duration) -> Result<(String, i64), Status> {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| Status::internal("no randomness"))?;
        let token = hex::encode(raw);
        let expires = now_unix() + lifetime.as_secs() as i64;
        let mut m = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_unix();
        m.retain(|_, (_, e)| *e > now);
        m.insert(token_key(&token), (localpart.to_owned(), expires));
        Ok((token, expires))
    }

    /// The user a bearer token stands for.
    pub fn check<T>(&self, r: &Request<T>) -> Result<String, Status> {
        let token = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token: call Login first"))?;
        let m = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get(&token_key(token.trim())) {
            Some((u, e)) if *e > now_unix() => Ok(u.clone()),
            Some(_) => Err(Status::unauthenticated("token expired: log in again")),
            None => Err(Status::unauthenticated("unknown token: log in again")),
        }
    }
}

/// The index of a stored message, with what the contact book knows of its author.
pub(crate) fn message_index(svc: &MailService, m: &MessageMeta) -> PrivacyIndex {
    let raw = svc.store().raw(m.id).ok().flatten().unwrap_or_default();
    let facts = privacy::facts_of(m, &raw);
    let author = privacy::correspondence_of(&raw, &m.from, m.received_at).author;
    let contact = author.and_then(|a| svc.store().contact(&m.owner, &a).ok().flatten());
    privacy::score_message(&privacy::with_contact(facts, contact.as_ref()))
}

fn pb_index(i: &PrivacyIndex) -> pb::PrivacyIndex {
    pb::PrivacyIndex {
        version: i.version,
        total: u32::from(i.total),
        technic: u32::from(i.technic),
        context: u32::from(i.context),
        comportment: u32::from(i.comportment),
        explanation: i
            .explanation
            .iter()
            .map(|e| pb::Explanation {
                feature: e.feature.to_owned(),
                dimension: format!("{:?}", e.dimension).to_ascii_lowercase(),
                effect: e.effect,
                text: e.text.clone(),
            })
            .collect(),
        hints: i.hints.clone(),
    }
}

fn via_str(v: Via) -> &'static str {
    match v {
        Via::Mesh => "mesh",
        Via::Smtp => "smtp",
        Via::Local => "local",
    }
}

pub(crate) fn summary(svc: &MailService, m: &MessageMeta) -> pb::MessageSummary {
    pb::MessageSummary {
        id: format!("{:x}", m.id),
        from: m.from.clone(),
        to: m.to.clone(),
        subject: m.subject.clone(),
        received_at: m.received_at,
        via: via_str(m.via).into(),
        size: m.size as u64,
        privacy: Some(pb_index(&message_index(svc, m))),
        placements: m
            .placements
            .iter()
            .map(|p| pb::Placement {
                mailbox: p.mailbox,
                uid: p.uid,
            })
            .collect(),
        keywords: m.keywords.clone(),
        thread: format!("{:x}", m.thread),
        modseq: m.modseq,
    }
}

/// The gRPC status of a message the router did not take.
fn delivery_status(e: &DeliveryError) -> Status {
    match e {
        DeliveryError::NoRoute(_) => Status::failed_precondition(e.to_string()),
        DeliveryError::MailboxFull(_) => Status::resource_exhausted(e.to_string()),
        DeliveryError::Queue(_) | DeliveryError::Store(_) => {
            tracing::error!(error = %e, "client API: message not stored");
            Status::unavailable("temporary local problem, try again later")
        }
    }
}

/// The labelled member serving `address`'s domain, and whether it is this instance's.
fn whereabouts(svc: &MailService, address: &str) -> (Option<String>, bool) {
    let same = svc.local_user(address).is_some();
    let member = svc.member_for(address);
    (member, same)
}

/// A contact with its index.
pub(crate) fn contact_view(svc: &MailService, rec: &ContactRecord, known: bool) -> pb::Contact {
    let (member, same) = whereabouts(svc, &rec.address);
    let index = privacy::score_contact(&privacy::ContactFacts {
        record: rec,
        labelled_member: member.clone(),
        same_instance: same,
    });
    pb::Contact {
        address: rec.address.clone(),
        name: rec.name.clone(),
        first_seen: rec.first_seen,
        last_seen: rec.last_seen,
        received: rec.received.messages,
        sent: rec.sent.messages,
        has_key: rec.autocrypt.is_some(),
        key_sha256: rec
            .autocrypt
            .as_ref()
            .map(|k| k.key_sha256.clone())
            .unwrap_or_default(),
        labelled_member: member.unwrap_or_default(),
        public_level: rec.public_level.as_ref().map(|l| pb::PublicLevel {
            level: u32::from(l.level),
            member: l.member.clone(),
            fetched_at: l.fetched_at,
        }),
        privacy: Some(pb_index(&index)),
        lookup: None,
        known,
    }
}

/// The user's own view: index, level, hints (theirs and their contacts'), achievements.
pub(crate) fn me_view(
    svc: &MailService,
    localpart: &str,
    address: &str,
) -> Result<pb::MeResponse, Status> {
    let stats = svc
        .store()
        .user_stats(localpart)
        .map_err(|e| Status::internal(e.to_string()))?;
    let index = privacy::score_user(&stats);
    let mut hints = index.hints.clone();
    let contacts = svc
        .store()
        .contacts(localpart)
        .map_err(|e| Status::internal(e.to_string()))?;
    for c in contacts.iter().take(1000) {
        let (member, _) = whereabouts(svc, &c.address);
        if let Some(m) = member {
            if c.sent.mesh == 0 {
                hints.push(format!(
                    "{} is on a labelled instance ({m}): write to them, your mail will take the mesh.",
                    c.address
                ));
            }
        }
        if c.autocrypt.is_some() && c.sent.encrypted == 0 && c.sent.messages > 0 {
            hints.push(format!(
                "{} has a key: encrypt your messages to them.",
                c.address
            ));
        }
    }
    Ok(pb::MeResponse {
        address: address.to_owned(),
        public_level: u32::from(index.total),
        privacy: Some(pb_index(&index)),
        published: !stats.public_opt_out,
        hints,
        achievements: privacy::achievements(&stats)
            .into_iter()
            .map(|a| pb::Achievement {
                id: a.id.into(),
                title: a.title.into(),
                earned: a.earned,
                at: a.at.unwrap_or(0),
            })
            .collect(),
    })
}

/// Looks a contact up (asking the mesh first when `refresh`).
pub(crate) async fn get_contact(
    svc: &MailService,
    localpart: &str,
    address: &str,
    refresh: bool,
) -> Result<pb::Contact, Status> {
    let addr = privacy::public::normalise_address(address)
        .ok_or_else(|| Status::invalid_argument(format!("{address:?} is not an address")))?;
    let mut lookup = None;
    if refresh && svc.labelled() {
        {
            use std::sync::atomic::Ordering::Relaxed;
            match svc.public_level(&addr).await {
                Ok(None) => {}
                Ok(Some(a)) => {
                    if a.cached {
                        svc.metrics().privacy_cache_hits.fetch_add(1, Relaxed);
                    } else {
                        svc.metrics().privacy_asked.fetch_add(1, Relaxed);
                    }
                    let seen = a.level.map(|level| SeenLevel {
                        level,
                        member: a.member.clone(),
                        fetched_at: now_unix(),
                    });
                    svc.store()
                        .set_seen_level(localpart, &addr, seen, now_unix())
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                    lookup = Some(pb::LevelLookup {
                        member: a.member,
                        found: a.level.is_some(),
                        prefix_bits: a.prefix_bits,
                        bucket_size: a.bucket_size as u32,
                        cached: a.cached,
                        error: String::new(),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "public level lookup failed");
                    lookup = Some(pb::LevelLookup {
                        error: e,
                        ..Default::default()
                    });
                }
            }
        }
    }
    let stored = svc
        .store()
        .contact(localpart, &addr)
        .map_err(|e| Status::internal(e.to_string()))?;
    let known = stored.is_some();
    let rec = stored.unwrap_or_else(|| ContactRecord {
        address: addr.clone(),
        ..Default::default()
    });
    let mut c = contact_view(svc, &rec, known);
    c.lookup = lookup;
    Ok(c)
}

/// The client API handlers.
#[derive(Debug, Clone)]
pub(crate) struct ClientService {
    svc: MailService,
    sessions: std::sync::Arc<Sessions>,
    lifetime: Duration,
}

impl ClientService {
    /// Serves `svc`, with tokens valid `lifetime`.
    pub(crate) fn new(
        svc: MailService,
        sessions: std::sync::Arc<Sessions>,
        lifetime: Duration,
    ) -> Self {
        Self {
            svc,
            sessions,
            lifetime,
        }
    }

    fn address_of(&self, localpart: &str) -> String {
        format!("{localpart}@{}", self.svc.primary_domain())
    }
}

#[tonic::async_trait]
impl Client for ClientService {
    async fn login(
        &self,
        r: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let source = r.remote_addr().map(|a| a.ip());
        let r = r.into_inner();
        let address = match self.svc.login(source, &r.address, &r.password).await {
            Ok(a) => a,
            Err(e) => {
                return Err(match e {
                    LoginError::Invalid => {
                        tracing::warn!(source = ?source, "client API login refused");
                        Status::unauthenticated("wrong address or password")
                    }
                    LoginError::Throttled { .. } => Status::resource_exhausted(e.to_string()),
                    LoginError::Busy => Status::unavailable(e.to_string()),
                })
            }
        };
        let Some(local) = self.svc.local_user(&address) else {
            return Err(Status::unauthenticated("wrong address or password"));
        };
        let (token, expires_at) = self.sessions.issue(&local, self.lifetime)?;
        tracing::info!(user = %local, "client API login");
        Ok(Response::new(pb::LoginResponse { token, expires_at }))
    }

    async fn list_messages(
        &self,
        r: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let q = r.get_ref();
        let limit = match q.limit {
            0 => LIST_PAGE_DEFAULT,
            n if n as usize > LIST_PAGE_MAX => {
                return Err(Status::invalid_argument(format!(
                    "limit: at most {LIST_PAGE_MAX} messages per page"
                )))
            }
            n => n as usize,
        };
        let after = match q.after.trim() {
            "" => None,
            a => Some(u64::from_str_radix(a, 16).map_err(|_| {
                Status::invalid_argument("after: expected a hexadecimal message id")
            })?),
        };
        let (page, more) = self
            .svc
            .store()
            .list_page(
                &user,
                match q.mailbox {
                    0 => crate::mail::Role::Inbox.id(),
                    n => n,
                },
                after,
                limit,
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        let next = match page.last() {
            Some(last) if more => format!("{:x}", last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListMessagesResponse {
            messages: page.iter().map(|m| summary(&self.svc, m)).collect(),
            next,
        }))
    }

    async fn get_message(
        &self,
        r: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let user = self.sessions.check(&r)?;
        let id = u64::from_str_radix(r.get_ref().id.trim(), 16)
            .map_err(|_| Status::invalid_argument("id: expected a hexadecimal message id"))?;
        let meta = self
            .svc
            .store()
            .meta(id)
            .map_err(|e| Status::internal(e.to_string()))?
            .filter(|m| m.owner == user && !m.placements.is_empty())
            .ok_or_else(|| Status::not_found(format!("no message {id:x} in your mailbox")))?;
        let raw = self
            .svc
            .store()
            .raw(id)
            .map_err(|e| Status::internal(e.to_string()))?
            .unwrap_or_default();
        Ok(Response::new(pb::Message {
            summary: Some(summary(&self.svc, &meta)),
            raw,
        }))
    }

    async fn send(
        &self,
        r: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let r = r.into_inner();
        if r.to.is_empty() || r.to.len() > MAX_SEND_RECIPIENTS {
            return Err(Status::invalid_argument(format!(
                "to: between 1 and {MAX_SEND_RECIPIENTS} recipients"
            )));
        }
        if r.body.len() > MAX_SEND_BODY {
            return Err(Status::invalid_argument("body: at most 1 MiB"));
        }
        // RFC 5322 §2.3: no NUL (nor other controls but tab and line breaks) in a body.
        let bad = |c: char| c.is_control() && !matches!(c, '\t' | '\r' | '\n');
        if r.body.contains(bad) {
            return Err(Status::invalid_argument(
                "body: control characters other than tab and line breaks are not allowed",
            ));
        }
        if r.subject.contains(char::is_control) {
            return Err(Status::invalid_argument(
                "subject: control characters are not allowed",
            ));
        }
        let from = self.address_of(&user);
        let mut rnd = [0u8; 16];
        aws_lc_rs::rand::fill(&mut rnd).map_err(|_| Status::internal("no randomness"))?;
        let message_id = format!("<{}@{}>", hex::encode(rnd), self.svc.primary_domain());
        let mut builder = lettre::Message::builder()
            .from(
                from.parse()
                    .map_err(|e| Status::internal(format!("own address: {e}")))?,
            )
            .subject(r.subject.clone())
            .message_id(Some(message_id.clone()));
        let mut rcpts = Vec::new();
        for t in &r.to {
            let addr = privacy::public::normalise_address(t)
                .ok_or_else(|| Status::invalid_argument(format!("to: {t:?} is not an address")))?;
            builder = builder.to(addr
                .parse()
                .map_err(|e| Status::invalid_argument(format!("to: {t:?}: {e}")))?);
            rcpts.push(addr);
        }
        let msg = builder
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(r.body)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let data = msg.formatted();
        let transport = Transport {
            helo: "client-api".into(),
            client: "client-api".into(),
            auth_user: Some(from.clone()),
            ..Default::default()
        };
        let routed = self
            .svc
            .accept(&from, &rcpts, &data, transport, Via::Local)
            .await
            .map_err(|e| delivery_status(&e))?;
        Ok(Response::new(pb::SendResponse {
            routes: routed.to_string().split(',').map(str::to_owned).collect(),
            message_id,
        }))
    }

    async fn list_contacts(
        &self,
        r: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let list = self
            .svc
            .store()
            .contacts(&user)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts: list
                .iter()
                .map(|c| contact_view(&self.svc, c, true))
                .collect(),
        }))
    }

    async fn get_contact(
        &self,
        r: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let user = self.sessions.check(&r)?;
        let r = r.into_inner();
        get_contact(&self.svc, &user, &r.address, r.refresh_public_level)
            .await
            .map(Response::new)
    }

    async fn me(&self, r: Request<pb::MeRequest>) -> Result<Response<pb::MeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        me_view(&self.svc, &user, &self.address_of(&user)).map(Response::new)
    }

    async fn list_mailboxes(
        &self,
        r: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        let user = self.sessions.check(&r)?;
        model::list_mailboxes(&self.svc, &user).map(Response::new)
    }

    async fn create_mailbox(
        &self,
        r: Request<pb::CreateMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.sessions.check(&r)?;
        let b = self
            .svc
            .store()
            .create_mailbox(&user, &r.get_ref().name)
            .await
            .map_err(|e| model::status(&e))?;
        Ok(Response::new(model::mailbox(&b)))
    }

    async fn rename_mailbox(
        &self,
        r: Request<pb::RenameMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let user = self.sessions.check(&r)?;
        let q = r.into_inner();
        model::rename_mailbox(&self.svc, &user, q.id, &q.name)
            .await
            .map(Response::new)
    }

    async fn delete_mailbox(
        &self,
        r: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        model::delete_mailbox(&self.svc, &user, r.get_ref().id)
            .await
            .map(Response::new)
    }

    async fn set_keywords(
        &self,
        r: Request<pb::SetKeywordsRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        model::set_keywords(&self.svc, &user, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn copy_messages(
        &self,
        r: Request<pb::CopyMessagesRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let q = r.into_inner();
        model::relocate(&self.svc, &user, &q.ids, None, q.to)
            .await
            .map(Response::new)
    }

    async fn move_messages(
        &self,
        r: Request<pb::MoveMessagesRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let q = r.into_inner();
        model::relocate(&self.svc, &user, &q.ids, Some(q.from), q.to)
            .await
            .map(Response::new)
    }

    async fn remove_messages(
        &self,
        r: Request<pb::RemoveMessagesRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let q = r.into_inner();
        model::remove(&self.svc, &user, &q.ids, q.from)
            .await
            .map(Response::new)
    }

    async fn changes(
        &self,
        r: Request<pb::ChangesRequest>,
    ) -> Result<Response<pb::ChangesResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let q = r.into_inner();
        model::changes(&self.svc, &user, q.since, q.limit).map(Response::new)
    }

    async fn get_thread(
        &self,
        r: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let user = self.sessions.check(&r)?;
        model::thread(&self.svc, &user, &r.get_ref().thread).map(Response::new)
    }

    async fn get_quota(
        &self,
        r: Request<pb::GetQuotaRequest>,
    ) -> Result<Response<pb::Quota>, Status> {
        let user = self.sessions.check(&r)?;
        model::quota(&self.svc, &user).map(Response::new)
    }

    async fn set_public_level(
        &self,
        r: Request<pb::SetPublicLevelRequest>,
    ) -> Result<Response<pb::MeResponse>, Status> {
        let user = self.sessions.check(&r)?;
        let publish = r.into_inner().publish;
        self.svc
            .store()
            .set_public_opt_out(&user, !publish)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(user = %user, publish, "public level setting changed");
        me_view(&self.svc, &user, &self.address_of(&user)).map(Response::new)
    }
}

/// The reflection service for every Caliopen schema.
pub(crate) fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    String,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(caliopen_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))
}

//! The router: the one place where accepted mail is sent on its way.
//!
//! Every front end — the SMTP listeners, the mesh inbox, the client API,
//! the bounce path — hands an accepted envelope to [`MailService::accept`];
//! none of them calls another. Each recipient is resolved (accounts,
//! aliases, plus-addressing, catch-all: [`crate::mail::address`]) and
//! routed: a local mailbox (through the store) | a member's domain (the
//! mesh outbox, a [`MeshOutlet`]) | the outside (the SMTP queue, an
//! [`SmtpOutlet`]). A message a user submits is also kept in their `sent`
//! mailbox, read. The outlets are traits so that this module depends on
//! neither the mesh nor the SMTP queue: they depend on it.

use crate::mail::address::{self, Resolution};
use crate::mail::{Delivery, MessageMeta, PathClass, Role, Transport, Via};
use crate::store::MailStore;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

pub(crate) use crate::config::FromCheck;

/// A pending outlet operation.
pub type OutletFuture<'a> = Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send + 'a>>;

/// A queue (the mesh outbox or the SMTP queue) could not take a message:
/// a local failure, or a recipient nothing here can route.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No route, relay or direct delivery reaches this recipient (the
    /// configuration's; permanent for that recipient).
    #[error("no route or relay for {0}")]
    NoRoute(String),
    /// No SMTP relay or direct delivery is configured.
    #[error("no SMTP relay is configured")]
    NoRelay,
    /// The queue failed to write the message or make it durable (local;
    /// the sender tries again).
    #[error("{queue}: {source}")]
    Failed {
        /// Which queue.
        queue: &'static str,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl QueueError {
    /// A failure of `queue`.
    pub fn failed(
        queue: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        QueueError::Failed {
            queue,
            source: source.into(),
        }
    }
}

/// What sending a handover piece gives: the member's answer, or why not
/// and whether sending it again may help.
pub type HandoverFuture<'a> = Pin<
    Box<
        dyn Future<Output = Result<caliopen_proto::pb::mesh::HandoverReply, (bool, String)>>
            + Send
            + 'a,
    >,
>;

/// A public level looked up across the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelAnswer {
    /// The member asked.
    pub member: String,
    /// The level, when the member publishes one for the address.
    pub level: Option<u8>,
    /// Prefix bits sent.
    pub prefix_bits: u32,
    /// Entries in the bucket answered (the anonymity set within that member).
    pub bucket_size: usize,
    /// Served from the cache.
    pub cached: bool,
}

/// The route to other labelled members (the mesh outbox), and their
/// answers about public levels.
pub trait MeshOutlet: Send + Sync + std::fmt::Debug {
    /// The member serving `domain`, when one does.
    fn member_for(&self, domain: &str) -> Option<String>;
    /// Asks the member serving `address`'s domain for its public level
    /// (k-anonymous: only a hash prefix leaves); `None` when no member
    /// serves it.
    fn public_level<'a>(
        &'a self,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<LevelAnswer>, String>> + Send + 'a>>;
    /// The successor the directory says this member handed over to.
    fn successor(&self) -> Option<String> {
        None
    }
    /// Tells every other member that `old` moved to `new` (best effort);
    /// how many took the notice.
    fn notify_move<'a>(
        &'a self,
        _old: &'a str,
        _new: &'a str,
    ) -> Pin<Box<dyn Future<Output = usize> + Send + 'a>> {
        Box::pin(async { 0 })
    }
    /// The domains the directory lists for `member`.
    fn domains_of(&self, _member: &str) -> Vec<String> {
        Vec::new()
    }
    /// The domains members that closed handed over to this one.
    fn inherited_domains(&self) -> Vec<String> {
        Vec::new()
    }
    /// Sends a piece of an account archive to `member` (the successor).
    /// The error says whether sending it again may help (a lost
    /// connection) or not (the member refused it).
    fn handover_chunk<'a>(
        &'a self,
        _member: &'a str,
        _chunk: caliopen_proto::pb::mesh::HandoverChunk,
    ) -> HandoverFuture<'a> {
        Box::pin(async { Err((false, "this instance holds no label".to_owned())) })
    }
    /// Queues `data` for `member`, durably. The member's idempotence key
    /// is derived from `identity`, the message as submitted: sent again
    /// after a lost reply (and signed again, with another DKIM time) it is
    /// the same transaction, stored once there.
    fn enqueue<'a>(
        &'a self,
        member: &'a str,
        mail_from: &'a str,
        rcpt_to: Vec<String>,
        data: &'a [u8],
        identity: &'a [u8],
    ) -> OutletFuture<'a>;
}

/// The route to the rest of the internet (the SMTP queue).
pub trait SmtpOutlet: Send + Sync + std::fmt::Debug {
    /// True when mail for `domain` has somewhere to go (relay, route, MX).
    fn has_destination(&self, domain: &str) -> bool;
    /// Queues a message, durably.
    fn enqueue<'a>(
        &'a self,
        mail_from: &'a str,
        rcpt_to: Vec<String>,
        data: &'a [u8],
    ) -> OutletFuture<'a>;
    /// Messages waiting.
    fn waiting(&self) -> usize;
}

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A recipient has no route (the sender's fault; permanent).
    #[error("recipient {0} cannot be delivered")]
    NoRoute(String),
    /// Every local recipient is over quota (temporary: `452 4.2.2`).
    #[error("mailbox full: {0}")]
    MailboxFull(String),
    /// A queue could not take it (local failure; temporary).
    #[error("queueing failed: {0}")]
    Queue(#[from] QueueError),
    /// The store could not keep it (local failure; temporary).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Where one accepted message went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routed {
    /// Ids of the copies stored here (recipients' mailboxes, then the
    /// sender's `sent` copy, when there is one).
    pub stored: Vec<u64>,
    /// Members it was queued for over the mesh.
    pub mesh: Vec<String>,
    /// True when it was queued for SMTP.
    pub smtp: bool,
}

impl std::fmt::Display for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .mesh
            .iter()
            .map(|m| format!("mesh:{m}"))
            .chain(self.smtp.then(|| "smtp".to_owned()))
            .chain(self.stored.iter().map(|i| format!("{i:x}")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Where one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Accounts of this instance (after aliases, plus-addressing, catch-all).
    Local(Vec<address::Target>),
    /// An alias forwarding to other domains (and maybe to accounts here
    /// too): sent on with a rewritten envelope sender (SRS).
    Forward(Vec<address::Target>, Vec<String>),
    /// An address of ours in the SRS form: a bounce of forwarded mail, for
    /// the original sender it names.
    Reverse(String),
    /// A labelled member, over the mesh.
    Mesh(String),
    /// The outside, by SMTP.
    Smtp,
    /// Nowhere: a served domain without such an account, or an outside
    /// domain without an outlet.
    None,
}

/// What the sender checks decide for a message from the internet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderVerdict {
    /// Deliver it.
    Accept,
    /// Deliver it to the recipients' junk mailbox, for this reason.
    Junk(String),
    /// Refuse it: it fails DMARC and its From: domain says `p=reject`.
    Reject,
}

/// A DKIM signature being made ([`MailService::start_signing`]).
type Signing = tokio::task::JoinHandle<Result<Option<Vec<u8>>, crate::dkim::DkimError>>;

/// Local mail service: who exists, password checks, durable storage, and
/// the routes to other members and to the outside.
#[derive(Debug, Clone)]
pub struct MailService {
    store: Arc<dyn MailStore>,
    domains: Arc<Vec<String>>,
    mesh: Arc<OnceLock<Arc<dyn MeshOutlet>>>,
    queue: Arc<OnceLock<Arc<dyn SmtpOutlet>>>,
    auth: Arc<OnceLock<crate::sender_auth::SenderAuth>>,
    dkim: Arc<OnceLock<Arc<crate::dkim::DkimKeys>>>,
    /// Sends SMTP TLS reports (direct delivery only).
    tls_reporter: Arc<OnceLock<Arc<crate::tlsrpt::Reporter>>>,
    /// Rewrites the envelope sender of forwarded mail.
    srs: Arc<OnceLock<crate::srs::Srs>>,
    /// Rendered IMAP envelopes, shared by the IMAP sessions.
    envelopes: Arc<crate::imap::cache::Envelopes>,
    /// Mailboxes' UID lists, shared by the IMAP sessions.
    uid_lists: Arc<crate::imap::cache::UidLists>,
    /// The privacy headers of IMAP views, by message id, shared by the
    /// sessions.
    privacy_headers: Arc<crate::imap::cache::Envelopes>,
    metrics: Arc<crate::metrics::Metrics>,
    credentials: crate::login::Credentials,
    from_check: FromCheck,
    blocklists: Arc<Vec<String>>,
    /// Where handover archives are spooled (the data directory's `handover/`).
    spool: Arc<OnceLock<std::path::PathBuf>>,
    /// The successor everything for the served domains goes to, once this
    /// member has handed over (see [`crate::handover`]).
    forward_to: Arc<std::sync::RwLock<Option<String>>>,
    /// Accounts moved to another member: local part → (new address, until
    /// when it is given; Unix seconds).
    moved: Arc<std::sync::RwLock<std::collections::HashMap<String, (String, i64)>>>,
}

/// The decoded Subject header of a message ("" when absent).
pub fn subject_of(data: &[u8]) -> String {
    crate::mail::parse_headers_guarded(data)
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_default()
}

/// Splits an address into (local part, lowercased domain).
pub fn split_address(addr: &str) -> Option<(String, String)> {
    let (l, d) = addr.rsplit_once('@')?;
    if l.is_empty() || d.is_empty() {
        return None;
    }
    Some((l.to_ascii_lowercase(), d.to_ascii_lowercase()))
}

/// Most `Received:` headers on a message an alias forwards (RFC 5321
/// §6.3 asks for a limit of this order to break loops).
pub const MAX_HOPS: usize = 30;

/// The number of `Received:` header fields of a message.
fn hops(data: &[u8]) -> usize {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| data.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(data.len());
    data[..end]
        .split(|&b| b == b'\n')
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    crate::store::now_unix()
}

/// The idempotence key of a submission: SHA-256 over a tag, the submitter,
/// the envelope and the bytes (each length-prefixed).
fn submission_key(owner: &str, mail_from: &str, rcpt_to: &[String], data: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        b"caliopen submission".as_slice(),
        owner.as_bytes(),
        mail_from.as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    for r in rcpt_to {
        ctx.update(&(r.len() as u64).to_be_bytes());
        ctx.update(r.as_bytes());
    }
    ctx.update(data);
    ctx.finish().as_ref().to_vec()
}

impl MailService {
    /// A service over `store` for the mail `domains` of this instance.
    pub fn new(store: impl MailStore + 'static, domains: Vec<String>) -> Self {
        store.set_domains(&domains);
        let envelope_budget = crate::imap::cache::budget(store.cache_budget());
        Self {
            store: Arc::new(store),
            domains: Arc::new(
                domains
                    .into_iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
            ),
            mesh: Arc::new(OnceLock::new()),
            queue: Arc::new(OnceLock::new()),
            auth: Arc::new(OnceLock::new()),
            dkim: Arc::new(OnceLock::new()),
            tls_reporter: Arc::new(OnceLock::new()),
            srs: Arc::new(OnceLock::new()),
            envelopes: Arc::new(crate::imap::cache::Envelopes::new(envelope_budget)),
            uid_lists: Arc::default(),
            privacy_headers: Arc::new(crate::imap::cache::Envelopes::new(envelope_budget / 4)),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            credentials: crate::login::Credentials::new(crate::login::CredentialsConfig::default()),
            from_check: FromCheck::Enforce,
            blocklists: Arc::new(Vec::new()),
            spool: Arc::new(OnceLock::new()),
            forward_to: Arc::new(std::sync::RwLock::new(None)),
            moved: Arc::default(),
        }
    }

    /// Records that `user` moved to `to`, given to senders until `until`.
    pub fn set_moved(&self, user: &str, to: &str, until: i64) {
        self.moved
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_ascii_lowercase(), (to.to_owned(), until));
    }

    /// For an address of an account that moved away: `Some(Some(new))`
    /// while the new address is given, `Some(None)` after; `None` for any
    /// other address.
    pub fn moved(&self, addr: &str) -> Option<Option<String>> {
        let (l, d) = split_address(addr)?;
        if !self.domains.contains(&d) {
            return None;
        }
        let l = l.split('+').next().unwrap_or(&l).to_owned();
        let m = self
            .moved
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (to, until) = m.get(&l)?;
        Some((now_unix() <= *until).then(|| to.clone()))
    }

    /// Sets where handover archives are spooled.
    pub fn set_spool_dir(&self, dir: std::path::PathBuf) {
        let _ = self.spool.set(dir);
    }

    /// Where handover archives are spooled, when set (by the daemon).
    pub fn spool_dir(&self) -> Option<&std::path::Path> {
        self.spool.get().map(|p| p.as_path())
    }

    /// Sends everything for the served domains to `successor` over the
    /// mesh (`None`: deliver here again).
    pub fn set_forwarding(&self, successor: Option<String>) {
        *self
            .forward_to
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = successor;
    }

    /// The successor mail for the served domains is forwarded to, if any.
    pub fn forwarding(&self) -> Option<String> {
        self.forward_to
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The mesh route, when the instance holds a label.
    pub fn mesh(&self) -> Option<&Arc<dyn MeshOutlet>> {
        self.mesh.get()
    }

    /// Asks these DNS blocklists about every client sending over the MX.
    pub fn with_blocklists(mut self, zones: Vec<String>) -> Self {
        self.blocklists = Arc::new(zones);
        self
    }

    /// Signs what local users send to other members and to the outside
    /// with these keys (set once, at start).
    pub fn set_dkim(&self, keys: Arc<crate::dkim::DkimKeys>) {
        let _ = self.dkim.set(keys);
    }

    /// The DKIM keys, when signing is on.
    pub fn dkim(&self) -> Option<&Arc<crate::dkim::DkimKeys>> {
        self.dkim.get()
    }

    /// Rendered IMAP envelopes of recently fetched messages.
    pub fn envelopes(&self) -> &crate::imap::cache::Envelopes {
        &self.envelopes
    }

    /// UID lists of recently selected mailboxes.
    pub fn uid_lists(&self) -> &crate::imap::cache::UidLists {
        &self.uid_lists
    }

    /// Privacy headers (`X-Caliopen-Privacy`) of IMAP views, by message id.
    pub fn privacy_headers(&self) -> &crate::imap::cache::Envelopes {
        &self.privacy_headers
    }

    /// Sets the key of rewritten senders (once): aliases may then forward
    /// to other domains.
    pub fn set_srs(&self, srs: crate::srs::Srs) {
        let _ = self.srs.set(srs);
    }

    /// Sets the TLS report sender (once).
    pub fn set_tls_reporter(&self, r: Arc<crate::tlsrpt::Reporter>) {
        let _ = self.tls_reporter.set(r);
    }

    /// The TLS report sender, when direct delivery is on.
    pub fn tls_reporter(&self) -> Option<&Arc<crate::tlsrpt::Reporter>> {
        self.tls_reporter.get()
    }

    /// `data` with its DKIM signatures, when a key signs for its From:
    /// domain; otherwise (or when signing fails, logged and counted) the
    /// bytes as they are — mail is never refused for its signature.
    async fn signed(&self, data: &[u8]) -> Option<Vec<u8>> {
        self.signed_by(self.start_signing(data)?).await
    }

    /// Starts signing `data` on a blocking thread (RSA signing takes about
    /// half a millisecond: off the async workers, and in parallel with the
    /// durable writes the caller does meanwhile). `None` when no DKIM keys
    /// are set.
    fn start_signing(&self, data: &[u8]) -> Option<Signing> {
        let keys = self.dkim.get()?.clone();
        let bytes = data.to_vec();
        Some(tokio::task::spawn_blocking(move || {
            keys.sign(&bytes, now_unix())
        }))
    }

    /// The outcome of [`Self::start_signing`], counted and logged.
    async fn signed_by(&self, task: Signing) -> Option<Vec<u8>> {
        use std::sync::atomic::Ordering::Relaxed;
        match task.await {
            Ok(Ok(Some(signed))) => {
                self.metrics.dkim_signed.fetch_add(1, Relaxed);
                Some(signed)
            }
            Ok(Ok(None)) => {
                self.metrics.dkim_unsigned.fetch_add(1, Relaxed);
                tracing::debug!("not DKIM-signed: no key for its From: domain");
                None
            }
            Ok(Err(e)) => {
                self.metrics.dkim_failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "DKIM signing failed: sent unsigned");
                None
            }
            Err(e) => {
                self.metrics.dkim_failed.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "DKIM signing task failed: sent unsigned");
                None
            }
        }
    }

    /// Uses `c` for password checks (sizes, throttling; tests inject one).
    pub fn with_credentials(mut self, c: crate::login::Credentials) -> Self {
        self.credentials = c;
        self
    }

    /// Sets what submission does with a `From:` header that is not the user's.
    pub fn with_from_check(mut self, f: FromCheck) -> Self {
        self.from_check = f;
        self
    }

    /// What submission does with a `From:` header that is not the user's.
    pub fn from_check(&self) -> FromCheck {
        self.from_check
    }

    /// The credential service.
    pub fn credentials(&self) -> &crate::login::Credentials {
        &self.credentials
    }

    /// Sets the resolver and sender checks.
    pub fn set_auth(&self, a: crate::sender_auth::SenderAuth) {
        let _ = self.auth.set(a);
    }

    /// The resolver and sender checks, when set.
    pub fn auth(&self) -> Option<&crate::sender_auth::SenderAuth> {
        self.auth.get()
    }

    /// The served mail domains, lowercase (the first is the primary one).
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// The primary mail domain.
    pub fn primary_domain(&self) -> &str {
        self.domains.first().map_or("localhost", String::as_str)
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Routes to other members through `m` (once the mesh is up).
    pub fn set_mesh(&self, m: Arc<dyn MeshOutlet>) {
        let _ = self.mesh.set(m);
    }

    /// Sends mail for the outside through `q`.
    pub fn set_queue(&self, q: Arc<dyn SmtpOutlet>) {
        let _ = self.queue.set(q);
    }

    /// Messages waiting in the SMTP queue (0 without one).
    pub fn smtp_waiting(&self) -> usize {
        self.queue.get().map_or(0, |q| q.waiting())
    }

    /// True when an SMTP queue is set.
    pub fn sends_out(&self) -> bool {
        self.queue.get().is_some()
    }

    /// The store.
    pub fn store(&self) -> &dyn MailStore {
        self.store.as_ref()
    }

    /// A handle on the store that outlives this service (for threads).
    pub fn store_handle(&self) -> Arc<dyn MailStore> {
        self.store.clone()
    }

    /// True when `addr` is at one of the served domains.
    pub fn is_local_domain(&self, addr: &str) -> bool {
        split_address(addr).is_some_and(|(_, d)| self.domains.contains(&d))
    }

    /// The account `addr` names directly (`local@served-domain` of an
    /// existing user; no alias, no plus detail): the login identity.
    pub fn local_user(&self, addr: &str) -> Option<String> {
        let (l, d) = split_address(addr)?;
        (self.domains.contains(&d) && self.store.user_exists(&l)).then_some(l)
    }

    /// Where mail for `addr` goes.
    pub fn route(&self, addr: &str) -> Route {
        // Handed over: the successor serves these domains now.
        if let Some(succ) = self.forwarding() {
            if self.is_local_domain(addr) {
                return Route::Mesh(succ);
            }
        }
        let store = &self.store;
        // A rewritten sender of forwarded mail (a bounce coming back).
        // (The local part as written: its hash is case-sensitive.)
        if let (Some(srs), Some((local, domain))) = (self.srs.get(), addr.rsplit_once('@')) {
            if self.domains.contains(&domain.to_ascii_lowercase()) && self.queue.get().is_some() {
                if let Ok(orig) = srs.reverse(local) {
                    return Route::Reverse(orig);
                }
            }
        }
        match address::resolve(
            addr,
            &self.domains,
            |l| store.user_exists(l),
            |k| store.alias(k),
        ) {
            Resolution::Local(t) => Route::Local(t),
            // Forwarding needs the outbound queue and the SRS key; without
            // them only the accounts here are reached (or nobody: refused,
            // never accepted and lost).
            Resolution::Forward(t, out)
                if self.srs.get().is_some() && self.queue.get().is_some() =>
            {
                Route::Forward(t, out)
            }
            Resolution::Forward(t, _) if !t.is_empty() => Route::Local(t),
            Resolution::Forward(..) => Route::None,
            Resolution::Unknown => Route::None,
            Resolution::NotLocal => {
                let Some((_, domain)) = split_address(addr) else {
                    return Route::None;
                };
                if let Some(m) = self.mesh.get().and_then(|m| m.member_for(&domain)) {
                    return Route::Mesh(m);
                }
                if self.queue.get().is_some_and(|q| q.has_destination(&domain)) {
                    return Route::Smtp;
                }
                Route::None
            }
        }
    }

    /// The mesh member serving `addr`'s domain, when labelled and one does.
    pub fn member_for(&self, addr: &str) -> Option<String> {
        let (_, d) = split_address(addr)?;
        self.mesh.get()?.member_for(&d)
    }

    /// Asks the mesh for `address`'s public level (`Ok(None)` when
    /// unlabelled or no member serves it).
    pub async fn public_level(&self, address: &str) -> Result<Option<LevelAnswer>, String> {
        match self.mesh.get() {
            Some(m) => m.public_level(address).await,
            None => Ok(None),
        }
    }

    /// True when the instance routes to other members (holds a label).
    pub fn labelled(&self) -> bool {
        self.mesh.get().is_some()
    }

    /// True when none of the accounts `addr` reaches can take new mail
    /// (a quota limit reached). An address reaching no account is not full.
    pub fn mailbox_full(&self, targets: &[address::Target]) -> bool {
        !targets.is_empty()
            && targets
                .iter()
                .all(|t| self.store.quota(&t.owner).is_ok_and(|q| q.full()))
    }

    /// Checks a login through the credential service (bounded, throttled;
    /// see [`crate::login`]). Returns the user's address, lowercased.
    pub async fn login(
        &self,
        source: Option<IpAddr>,
        address: &str,
        password: &str,
    ) -> Result<String, crate::login::LoginError> {
        let found = |a: &str| {
            let local = self.local_user(a)?;
            let rec = self.store.user(&local).ok()??;
            Some((a.to_owned(), rec.password_hash))
        };
        self.credentials
            .check(source, address, password, found)
            .await
    }

    /// Records DKIM/SPF/DMARC verdicts of a message from the internet and
    /// says what to do with it: refuse it when it fails DMARC and its
    /// From: domain asks for rejection; file it as junk (the reason in
    /// `t.junk`) when it fails DMARC under `p=quarantine`, fails SPF with
    /// no valid DKIM signature, or comes from a client a configured
    /// blocklist lists.
    pub async fn check_sender(
        &self,
        data: &[u8],
        helo: &str,
        mail_from: &str,
        t: &mut Transport,
    ) -> SenderVerdict {
        use crate::sender_auth::DmarcPolicy;
        use std::sync::atomic::Ordering::Relaxed;
        let Some(a) = self.auth.get() else {
            return SenderVerdict::Accept;
        };
        let ip = t
            .client
            .parse::<std::net::SocketAddr>()
            .map(|s| s.ip().to_canonical())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let v = a
            .check(data, ip, helo, mail_from, self.primary_domain())
            .await;
        let spf_failed = v.spf == Some(crate::sender_auth::Verdict::Fail);
        let dkim_passed = v.dkim == Some(crate::sender_auth::Verdict::Pass);
        t.dkim = v.dkim;
        t.spf = v.spf;
        t.dmarc = v.dmarc;
        let verdict = match v.dmarc_policy {
            Some(DmarcPolicy::Reject) => SenderVerdict::Reject,
            Some(DmarcPolicy::Quarantine) => SenderVerdict::Junk(
                "DMARC failed and the From: domain asks for quarantine".into(),
            ),
            _ if spf_failed && !dkim_passed => SenderVerdict::Junk(
                "SPF failed (the sending server is not allowed by the sender's domain) and no DKIM signature is valid".into(),
            ),
            _ => match a.blocklisted(ip, &self.blocklists).await {
                Some(zone) => {
                    SenderVerdict::Junk(format!("the sending server {ip} is listed by {zone}"))
                }
                None => SenderVerdict::Accept,
            },
        };
        match &verdict {
            SenderVerdict::Reject => {
                self.metrics.inbound_rejected_dmarc.fetch_add(1, Relaxed);
            }
            SenderVerdict::Junk(why) => {
                self.metrics.inbound_junk.fetch_add(1, Relaxed);
                t.junk = Some(why.clone());
            }
            SenderVerdict::Accept => {}
        }
        verdict
    }

    /// The mailbox a plus detail files into: a mailbox of that name (case
    /// aside) when the account has one, else none (the detail becomes a
    /// keyword).
    fn detail_mailbox(&self, owner: &str, detail: &str) -> Option<crate::mail::MailboxId> {
        let boxes = self.store.mailboxes(owner).ok()?;
        boxes
            .iter()
            .find(|b| b.name == detail)
            .or_else(|| boxes.iter().find(|b| b.name.eq_ignore_ascii_case(detail)))
            .map(|b| b.id)
    }

    /// Adds the deliveries of recipient `r` to `local` (one per account;
    /// an account reached twice gets one copy). An account whose quota is
    /// reached takes nothing: a message that goes over a limit is still
    /// taken, so that use overshoots by one message at most. False when
    /// every account `r` reaches is full.
    pub fn add_local(
        &self,
        r: &str,
        targets: Vec<address::Target>,
        local: &mut Vec<Delivery>,
    ) -> bool {
        let mut any = false;
        for t in targets {
            if self.store.quota(&t.owner).is_ok_and(|q| q.full()) {
                continue;
            }
            any = true;
            if let Some(d) = local.iter_mut().find(|d| d.owner == t.owner) {
                d.to.push(r.to_owned());
                continue;
            }
            let mut d = Delivery::inbox(t.owner.clone(), vec![r.to_owned()]);
            if let Some(detail) = &t.detail {
                match self.detail_mailbox(&t.owner, detail) {
                    Some(m) => d.mailbox = m,
                    None => {
                        if let Ok(k) = crate::mail::mailbox::normalise_keyword(detail) {
                            d.keywords.push(k);
                        }
                    }
                }
            }
            local.push(d);
        }
        any
    }

    /// Routes an accepted message: local recipients are stored, recipients
    /// of other members go to the mesh outbox, the outside to the SMTP
    /// queue — all durably before this returns. A submitting user
    /// (`transport.auth_user`) also gets the message in their `sent`
    /// mailbox, in the same write as the local copies and once even when
    /// the message is submitted again after a lost reply; their contact
    /// book counts each recipient.
    pub async fn accept(
        &self,
        mail_from: &str,
        rcpt_to: &[String],
        data: &[u8],
        transport: Transport,
        via: Via,
    ) -> Result<Routed, DeliveryError> {
        let mut local: Vec<Delivery> = Vec::new();
        let mut full: Vec<String> = Vec::new();
        let mut by_member: Vec<(String, Vec<String>)> = Vec::new();
        let mut outside: Vec<String> = Vec::new();
        // Forwarded by an alias (rewritten sender), and bounces of
        // forwarded mail going back to their original sender.
        let mut forwards: Vec<String> = Vec::new();
        let mut returned: Vec<String> = Vec::new();
        let mut paths: Vec<(String, PathClass)> = Vec::new();
        for r in rcpt_to {
            match self.route(r) {
                Route::Local(targets) => {
                    paths.push((r.clone(), PathClass::Local));
                    if !self.add_local(r, targets, &mut local) {
                        full.push(r.clone());
                    }
                }
                Route::Forward(targets, out) => {
                    paths.push((r.clone(), PathClass::Local));
                    if !targets.is_empty() && !self.add_local(r, targets, &mut local) {
                        full.push(r.clone());
                    }
                    for o in out {
                        if !forwards.contains(&o) {
                            forwards.push(o);
                        }
                    }
                }
                Route::Reverse(orig) => {
                    paths.push((r.clone(), PathClass::Plain));
                    returned.push(orig);
                }
                Route::Mesh(m) => {
                    paths.push((r.clone(), PathClass::Mesh));
                    match by_member.iter_mut().find(|(x, _)| *x == m) {
                        Some((_, v)) => v.push(r.clone()),
                        None => by_member.push((m, vec![r.clone()])),
                    }
                }
                // Outbound STARTTLS is opportunistic: the path to the outside is
                // counted as not protected, since nothing guarantees it is.
                Route::Smtp => {
                    paths.push((r.clone(), PathClass::Plain));
                    outside.push(r.clone());
                }
                Route::None => return Err(DeliveryError::NoRoute(r.clone())),
            }
        }
        if !forwards.is_empty() && hops(data) > MAX_HOPS {
            // A forwarding loop (two aliases naming each other's domains).
            return Err(DeliveryError::NoRoute(format!(
                "{} (more than {MAX_HOPS} Received headers: a forwarding loop)",
                forwards.join(", ")
            )));
        }
        if local.is_empty()
            && by_member.is_empty()
            && outside.is_empty()
            && forwards.is_empty()
            && returned.is_empty()
            && !full.is_empty()
        {
            self.metrics
                .rcpt_mailbox_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(DeliveryError::MailboxFull(full.join(", ")));
        }
        let now = now_unix();
        let sender = transport
            .auth_user
            .as_deref()
            .and_then(|u| self.local_user(u));
        // What leaves the instance is signed once for all its routes (the
        // local copies, the sent one included, keep the submitted bytes).
        // The signature is made while the contact book and the local copies
        // are written, and awaited before the queues take the message.
        let leaving = sender.is_some()
            && ((!by_member.is_empty() && self.mesh.get().is_some())
                || (!outside.is_empty() && self.queue.get().is_some()));
        let signing = if leaving {
            self.start_signing(data)
        } else {
            None
        };
        if let Some(owner) = &sender {
            if let Err(e) = self.store.record_sent(owner, &paths, data, now).await {
                // The contact book is derived data: never refuse mail for it.
                tracing::warn!(error = %e, "could not update the contact book");
            }
        }
        let mut routed = Routed::default();
        // Local copies (and the submitter's sent copy) first, then the
        // queues, then the caller's 250. A submission is stored idempotently
        // by a digest of its submitter, envelope and bytes: when a crash
        // (or a failed queue) costs the client its 250 and it sends again,
        // the recipients here and the sent mailbox get it once.
        // Mail from the internet the sender checks marked as junk goes to
        // each recipient's junk mailbox (plus-address folders included).
        if via == Via::Smtp && transport.junk.is_some() {
            for d in &mut local {
                d.mailbox = Role::Junk.id();
                if !d.keywords.iter().any(|k| k == "$junk") {
                    d.keywords.push("$junk".into());
                }
            }
        }
        let received = local.len();
        let mut txn = None;
        if let Some(owner) = &sender {
            local.push(Delivery::sent_copy(owner.clone(), rcpt_to.to_vec()));
            txn = Some(submission_key(owner, mail_from, rcpt_to, data));
        }
        if !local.is_empty() {
            let template = MessageMeta {
                from: mail_from.to_owned(),
                subject: subject_of(data),
                received_at: now,
                via,
                transport,
                size: data.len(),
                ..Default::default()
            };
            let (ids, again) = self
                .store
                .deliver_once(&template, &local, data, txn.as_deref())
                .await?;
            routed.stored = ids;
            if again {
                tracing::info!("a submission sent again after a lost reply: stored once");
            } else {
                let counter = match via {
                    Via::Smtp => &self.metrics.stored_smtp,
                    Via::Local => &self.metrics.stored_local,
                    Via::Mesh => &self.metrics.stored_mesh,
                };
                counter.fetch_add(received as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let signed = match signing {
            Some(task) => self.signed_by(task).await,
            None => None,
        };
        let out_data = signed.as_deref().unwrap_or(data);
        if let Some(mesh) = self.mesh.get() {
            for (member, rcpts) in by_member {
                mesh.enqueue(&member, mail_from, rcpts, out_data, data)
                    .await
                    .map_err(DeliveryError::Queue)?;
                self.metrics
                    .queued_mesh
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                routed.mesh.push(member);
            }
        }
        if let (Some(q), false) = (self.queue.get(), outside.is_empty()) {
            q.enqueue(mail_from, outside, out_data)
                .await
                .map_err(DeliveryError::Queue)?;
            routed.smtp = true;
            self.metrics
                .queued_smtp
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Forwarded as it came (its DKIM signatures stay valid), from a
        // sender of ours that the receiver's SPF check accepts and that
        // brings a bounce back here (SRS).
        if let (Some(q), Some(srs), false) = (self.queue.get(), self.srs.get(), forwards.is_empty())
        {
            let sender = srs.forward(mail_from, self.primary_domain());
            q.enqueue(&sender, forwards.clone(), data)
                .await
                .map_err(DeliveryError::Queue)?;
            routed.smtp = true;
            self.metrics
                .forwarded
                .fetch_add(forwards.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(recipients = ?forwards, "forwarded by an alias (sender rewritten by SRS)");
        }
        // A bounce of forwarded mail goes on to its original sender, from
        // the null sender as bounces do.
        if let (Some(q), false) = (self.queue.get(), returned.is_empty()) {
            q.enqueue("", returned.clone(), data)
                .await
                .map_err(DeliveryError::Queue)?;
            routed.smtp = true;
            tracing::info!(recipients = ?returned, "a bounce of forwarded mail sent back (SRS)");
        }
        Ok(routed)
    }

    /// Queues a message for the outside (mail a member can no longer take
    /// over the mesh); fails when no SMTP queue is set.
    pub async fn send_out(
        &self,
        mail_from: &str,
        rcpt_to: Vec<String>,
        data: &[u8],
    ) -> Result<(), DeliveryError> {
        let q = self
            .queue
            .get()
            .ok_or(DeliveryError::Queue(QueueError::NoRelay))?;
        q.enqueue(mail_from, rcpt_to, data)
            .await
            .map_err(DeliveryError::Queue)
    }

    /// Queues a message the instance itself writes (a TLS report) for the
    /// outside, DKIM-signed like a user's mail.
    pub async fn send_signed_out(
        &self,
        mail_from: &str,
        rcpt_to: Vec<String>,
        data: &[u8],
    ) -> Result<(), DeliveryError> {
        let signed = self.signed(data).await;
        self.send_out(mail_from, rcpt_to, signed.as_deref().unwrap_or(data))
            .await
    }

    /// Returns a message to its local sender with an RFC 3464 report
    /// naming `rcpts` (a sender that is not a local account gets nothing:
    /// logged). Counted in `caliopen_bounces_total`.
    pub async fn bounce(
        &self,
        domain: &str,
        sender: &str,
        rcpts: &[String],
        original: &[u8],
        status: &str,
        why: &str,
    ) {
        tracing::warn!(sender, status, why, "bouncing a message");
        self.metrics
            .bounces
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owners: Vec<String> = match self.route(sender) {
            Route::Local(t) | Route::Forward(t, _) if !t.is_empty() => {
                t.into_iter().map(|t| t.owner).collect()
            }
            _ => {
                tracing::warn!(sender, "bounce dropped: the sender is not a local user");
                return;
            }
        };
        let failures: Vec<crate::dsn::Failure> = rcpts
            .iter()
            .map(|r| crate::dsn::Failure {
                recipient: r.clone(),
                status: status.into(),
                diagnostic: why.into(),
            })
            .collect();
        let report = crate::dsn::build(domain, sender, original, &failures, now_unix());
        for owner in owners {
            if let Err(e) = self.deliver_report(&owner, sender, &report).await {
                tracing::error!(error = %e, "could not store a bounce");
            }
        }
    }

    /// Stores a report (a DSN) for a local sender: one inbox delivery.
    pub async fn deliver_report(
        &self,
        owner: &str,
        to: &str,
        data: &[u8],
    ) -> Result<Vec<u64>, DeliveryError> {
        let template = MessageMeta {
            from: String::new(),
            subject: subject_of(data),
            received_at: now_unix(),
            via: Via::Local,
            size: data.len(),
            ..Default::default()
        };
        let d = Delivery {
            mailbox: Role::Inbox.id(),
            ..Delivery::inbox(owner, vec![to.to_owned()])
        };
        Ok(self.store.deliver_local(&template, &[d], data).await?)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hop_tests {
    #[test]
    fn received_headers_are_counted_in_the_header_only() {
        let m = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: in the body\r\n";
        assert_eq!(super::hops(m), 2);
        assert_eq!(super::hops(b"Subject: none\n\nReceived: body\n"), 0);
        let many = "Received: x\r\n".repeat(super::MAX_HOPS + 1) + "\r\nbody";
        assert!(super::hops(many.as_bytes()) > super::MAX_HOPS);
    }
}

//! The one credential service every front end that checks a password goes
//! through (submission `AUTH`, the client API's `Login`, and the IMAP and
//! web logins to come).
//!
//! A password check is an argon2 hash (19 MiB, ~10 ms of one core), the most
//! expensive thing an unauthenticated client can make the daemon do. So:
//! - **bounded work**: at most `workers` hashes run at once (about the
//!   number of cores), behind a queue of at most `queue` waiting checks;
//!   past that a check is refused at once ([`LoginError::Busy`]: SMTP `454`,
//!   gRPC `UNAVAILABLE`), never an unbounded wait or allocation. A caller
//!   that goes away while queued leaves the queue (the wait is an async
//!   semaphore acquire, dropped with the caller); a hash already running
//!   finishes on its blocking thread and only then frees its slot, so the
//!   bound holds even for cancelled calls.
//! - **no oracle**: an unknown account is checked against a dummy hash made
//!   with the same parameters, so it costs the same time; inputs are capped
//!   before anything is stored or hashed.
//! - **throttling that cannot be raced**: an attempt is counted *before*
//!   its check ([`Throttle::begin`]), per source address, per (account,
//!   source) and per account, each with free attempts then delays that
//!   double; success from a source gives back its count. The per-account
//!   ceiling is high and sources the owner logged in from recently are
//!   exempt from it, so an attacker elsewhere cannot keep the owner out.
//!   State is bounded: keys are 64-bit keyed hashes, tables have a ceiling
//!   with eviction of the stalest entry. Shared by every front end, so a
//!   limit earned on one cannot be dodged on another.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Longest address a login may name (RFC 5321 §4.5.3.1.3: a path is at
/// most 256 octets with its brackets).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest password accepted (longer ones are refused before hashing).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Largest argon2 memory cost (KiB) a stored hash may ask for.
pub const MAX_ARGON2_M_KIB: u32 = 64 * 1024;
/// Largest argon2 time cost (passes).
pub const MAX_ARGON2_T: u32 = 8;
/// Largest argon2 parallelism.
pub const MAX_ARGON2_P: u32 = 8;

/// Why a login was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Wrong address or password (also: unknown account, input too long).
    #[error("wrong address or password")]
    Invalid,
    /// Too many failures from this source or for this account: retry later.
    #[error("too many failed logins; retry in {} s", retry_after.as_millis().div_ceil(1000).max(1))]
    Throttled {
        /// When the next attempt will be admitted.
        retry_after: Duration,
    },
    /// Every hashing slot and queue place is taken: retry shortly.
    #[error("too many logins in progress; retry shortly")]
    Busy,
}

/// Checks a PHC string's argon2 parameters against the bounds above.
pub fn hash_within_bounds(phc: &str) -> Result<(), String> {
    let h = argon2::PasswordHash::new(phc).map_err(|e| format!("not a PHC hash: {e}"))?;
    if !matches!(h.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") {
        return Err(format!("algorithm {} (expected argon2id)", h.algorithm));
    }
    let p = argon2::Params::try_from(&h).map_err(|e| format!("argon2 parameters: {e}"))?;
    if p.m_cost() > MAX_ARGON2_M_KIB || p.t_cost() > MAX_ARGON2_T || p.p_cost() > MAX_ARGON2_P {
        return Err(format!(
            "argon2 cost m={},t={},p={} is above the bound m={MAX_ARGON2_M_KIB},t={MAX_ARGON2_T},p={MAX_ARGON2_P}",
            p.m_cost(),
            p.t_cost(),
            p.p_cost()
        ));
    }
    Ok(())
}

/// Verifies `password` against a PHC `hash` (argon2), refusing hashes whose
/// cost is above the bounds. The argon2 memory is this thread's own buffer,
/// kept between calls (at most the bound's 64 MiB): a hash allocates nothing
/// big, so memory stays (threads hashing) × (largest cost seen).
pub fn argon2_verify(hash: &str, password: &[u8]) -> bool {
    thread_local! {
        static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    MEMORY.with(|m| verify_with_memory(&mut m.borrow_mut(), hash, password))
}

fn verify_with_memory(mem: &mut Vec<argon2::Block>, hash: &str, password: &[u8]) -> bool {
    if hash_within_bounds(hash).is_err() {
        return false;
    }
    let Ok(h) = argon2::PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(alg), Ok(params), Some(expected), Some(salt)) = (
        argon2::Algorithm::try_from(h.algorithm),
        argon2::Params::try_from(&h),
        h.hash,
        h.salt,
    ) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if mem.len() < blocks {
        mem.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let a = argon2::Argon2::new(alg, version, params);
    if a.hash_password_into_with_memory(password, salt, &mut out, &mut mem[..blocks])
        .is_err()
    {
        return false;
    }
    // Constant time: every byte is compared.
    out.iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
        && out.len() == expected.len()
}

/// How a check verifies a password against a stored hash (argon2 in the
/// daemon; tests put in one they can observe).
pub type Verifier = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// Limits of one throttling scope.
#[derive(Debug, Clone, Copy)]
pub struct ScopeLimits {
    /// Failures admitted before delays start.
    pub free: u32,
    /// The first delay; each further failure doubles it.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Failures are forgotten after this long without one.
    pub forget: Duration,
}

impl ScopeLimits {
    fn delay(&self, failures: u32) -> Option<Duration> {
        if failures < self.free {
            return None;
        }
        let n = (failures - self.free).min(30);
        Some(self.base.saturating_mul(1u32 << n).min(self.max))
    }
}

/// The throttle's configuration.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Per source address (IPv6 by /64).
    pub source: ScopeLimits,
    /// Per (account, source address).
    pub pair: ScopeLimits,
    /// Per account, from every source that has not logged in to it lately.
    pub account: ScopeLimits,
    /// How long a source the owner logged in from stays exempt from the
    /// per-account ceiling.
    pub trusted_for: Duration,
    /// Most entries per table (each is a few dozen bytes).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            source: ScopeLimits {
                free: 20,
                base: Duration::from_secs(1),
                max: Duration::from_secs(15 * 60),
                forget: Duration::from_secs(3600),
            },
            pair: ScopeLimits {
                free: 5,
                base: Duration::from_secs(2),
                max: Duration::from_secs(15 * 60),
                forget: Duration::from_secs(3600),
            },
            account: ScopeLimits {
                free: 100,
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                forget: Duration::from_secs(15 * 60),
            },
            trusted_for: Duration::from_secs(30 * 86400),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    /// The "limit engaged" log line was written for this run of failures.
    logged: bool,
}

#[derive(Debug)]
struct Table {
    limits: ScopeLimits,
    map: HashMap<u64, Entry>,
    max: usize,
}

impl Table {
    fn new(limits: ScopeLimits, max: usize) -> Self {
        Self {
            limits,
            map: HashMap::new(),
            max,
        }
    }

    fn live(&mut self, key: u64, now: Instant) -> Option<&mut Entry> {
        let forget = self.limits.forget;
        if self
            .map
            .get(&key)
            .is_some_and(|e| now.saturating_duration_since(e.last) > forget)
        {
            self.map.remove(&key);
        }
        self.map.get_mut(&key)
    }

    /// How long until `key` may try again (None: now).
    fn wait(&mut self, key: u64, now: Instant) -> Option<Duration> {
        let limits = self.limits;
        let e = self.live(key, now)?;
        let d = limits.delay(e.failures)?;
        let until = e.last + d;
        (until > now).then(|| until - now)
    }

    fn count(&mut self, key: u64, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            self.evict(now);
        }
        let e = self.map.entry(key).or_insert(Entry {
            failures: 0,
            last: now,
            logged: false,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
    }

    fn give_back(&mut self, key: u64, now: Instant) {
        if let Some(e) = self.live(key, now) {
            e.failures = e.failures.saturating_sub(1);
            if e.failures == 0 {
                self.map.remove(&key);
            }
        }
    }

    fn clear(&mut self, key: u64) {
        self.map.remove(&key);
    }

    /// Makes room: forgets stale entries, then the least recent one.
    fn evict(&mut self, now: Instant) {
        let forget = self.limits.forget;
        self.map
            .retain(|_, e| now.saturating_duration_since(e.last) <= forget);
        if self.map.len() >= self.max {
            if let Some(k) = self.map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
                self.map.remove(&k);
            }
        }
    }

    /// True the first time a key's run of failures engages its limit.
    fn first_engagement(&mut self, key: u64) -> bool {
        match self.map.get_mut(&key) {
            Some(e) if !e.logged => {
                e.logged = true;
                true
            }
            _ => false,
        }
    }
}

/// Which limit refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The source address.
    Source,
    /// The account from this source.
    Pair,
    /// The account from everywhere.
    Account,
}

#[derive(Debug)]
struct ThrottleState {
    source: Table,
    pair: Table,
    account: Table,
    /// (account, source) pairs that logged in lately: exempt from the
    /// per-account ceiling.
    trusted: HashMap<u64, Instant>,
}

/// Failed-login throttling, shared by every front end.
#[derive(Debug)]
pub struct Throttle {
    cfg: ThrottleConfig,
    keys: std::collections::hash_map::RandomState,
    state: Mutex<ThrottleState>,
}

/// The key of a source address: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64). `None` (the local admin socket) is one key.
fn source_bits(ip: Option<IpAddr>) -> u128 {
    match ip {
        None => u128::MAX,
        Some(IpAddr::V4(v4)) => u128::from(u32::from(v4)),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64) << 64 | 1 << 63,
        },
    }
}

/// An admitted attempt: counted as a failure until [`Attempt::succeeded`].
#[derive(Debug)]
pub struct Attempt {
    source: u64,
    pair: u64,
    account: u64,
}

impl Throttle {
    /// A throttle with `cfg`.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            state: Mutex::new(ThrottleState {
                source: Table::new(cfg.source, cfg.max_entries),
                pair: Table::new(cfg.pair, cfg.max_entries),
                account: Table::new(cfg.account, cfg.max_entries),
                trusted: HashMap::new(),
            }),
            cfg,
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, tag: u8, source: Option<u128>, account: Option<&str>) -> u64 {
        let mut h = self.keys.build_hasher();
        tag.hash(&mut h);
        source.hash(&mut h);
        account.hash(&mut h);
        h.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits an attempt by `source` at `account` (normalised) at `now`,
    /// counting it as a failure at once; or says how long to wait and which
    /// limit is engaged.
    pub fn begin(
        &self,
        source: Option<IpAddr>,
        account: &str,
        now: Instant,
    ) -> Result<Attempt, (Scope, Duration)> {
        let src = source_bits(source);
        let a = Attempt {
            source: self.key(0, Some(src), None),
            pair: self.key(1, Some(src), Some(account)),
            account: self.key(2, None, Some(account)),
        };
        let mut st = self.lock();
        let trusted = st
            .trusted
            .get(&a.pair)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.cfg.trusted_for);
        let refusal = if let Some(d) = st.pair.wait(a.pair, now) {
            Some((Scope::Pair, d, st.pair.first_engagement(a.pair)))
        } else if let Some(d) = st.source.wait(a.source, now) {
            Some((Scope::Source, d, st.source.first_engagement(a.source)))
        } else if let (false, Some(d)) = (trusted, st.account.wait(a.account, now)) {
            Some((Scope::Account, d, st.account.first_engagement(a.account)))
        } else {
            None
        };
        if let Some((scope, d, first)) = refusal {
            drop(st);
            if first {
                tracing::warn!(
                    source = %source.map_or_else(|| "local".to_owned(), |s| s.to_string()),
                    account = %account,
                    limit = ?scope,
                    retry_after_s = d.as_secs(),
                    "login throttled: limit engaged"
                );
            }
            return Err((scope, d));
        }
        st.source.count(a.source, now);
        st.pair.count(a.pair, now);
        st.account.count(a.account, now);
        Ok(a)
    }

    /// The attempt's password was right: its count is given back, the pair
    /// forgets its failures and becomes trusted for the account ceiling.
    pub fn succeeded(&self, a: Attempt, now: Instant) {
        let mut st = self.lock();
        st.source.give_back(a.source, now);
        st.account.give_back(a.account, now);
        st.pair.clear(a.pair);
        if st.trusted.len() >= self.cfg.max_entries {
            let keep = self.cfg.trusted_for;
            st.trusted
                .retain(|_, t| now.saturating_duration_since(*t) < keep);
            if st.trusted.len() >= self.cfg.max_entries {
                if let Some(k) = st.trusted.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                    st.trusted.remove(&k);
                }
            }
        }
        st.trusted.insert(a.pair, now);
    }

    /// The attempt was not checked for a reason of ours (busy): its count
    /// is given back.
    pub fn not_checked(&self, a: Attempt, now: Instant) {
        let mut st = self.lock();
        st.source.give_back(a.source, now);
        st.pair.give_back(a.pair, now);
        st.account.give_back(a.account, now);
    }

    /// Entries held (source, pair, account, trusted), for metrics and tests.
    pub fn sizes(&self) -> [usize; 4] {
        let st = self.lock();
        [
            st.source.map.len(),
            st.pair.map.len(),
            st.account.map.len(),
            st.trusted.len(),
        ]
    }
}

/// Counters of the credential service (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct LoginMetrics {
    /// Passwords hashed (real or dummy).
    pub checked: AtomicU64,
    /// Logins granted.
    pub granted: AtomicU64,
    /// Wrong address or password.
    pub invalid: AtomicU64,
    /// Refused by a throttling limit before any check.
    pub throttled: AtomicU64,
    /// Refused because every slot and queue place was taken.
    pub busy: AtomicU64,
    /// Hashes running now.
    pub running: AtomicUsize,
    /// Checks waiting for a slot now.
    pub waiting: AtomicUsize,
}

/// Sizes of the credential service.
#[derive(Debug, Clone, Copy)]
pub struct CredentialsConfig {
    /// Hashes at once (default: the number of cores).
    pub workers: usize,
    /// Checks waiting for a slot, past which they are refused.
    pub queue: usize,
    /// Throttling.
    pub throttle: ThrottleConfig,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            workers: cores.clamp(1, 16),
            queue: 32,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// The credential service.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

/// One hash to compute on the pool, with where to send the answer.
struct HashJob {
    hash: String,
    password: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<bool>,
    /// Released when the hash is done (not when the caller goes away).
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The threads that compute hashes: a fixed set, so that the memory each
/// hash allocates is reused by the same few threads (the runtime's blocking
/// pool would spread it over many threads, each keeping its own malloc
/// arena's 19 MiB: 500 MiB were seen under a flood).
struct HashPool {
    /// The channel to the threads, made with them at the first hash (a
    /// process that never checks a password starts none).
    jobs: Mutex<Option<std::sync::mpsc::Sender<HashJob>>>,
    workers: usize,
    verify: Verifier,
    metrics: Arc<LoginMetrics>,
}

impl HashPool {
    fn new(workers: usize, verify: Verifier, metrics: Arc<LoginMetrics>) -> Self {
        Self {
            jobs: Mutex::new(None),
            workers,
            verify,
            metrics,
        }
    }

    fn spawn_threads(&self) -> std::sync::mpsc::Sender<HashJob> {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.workers {
            let (rx, verify, metrics) = (rx.clone(), self.verify.clone(), self.metrics.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("login-hash-{i}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        rx.recv()
                    };
                    let Ok(job) = job else { return };
                    metrics.running.fetch_add(1, Ordering::AcqRel);
                    let ok = verify(&job.hash, &job.password);
                    metrics.checked.fetch_add(1, Ordering::Relaxed);
                    metrics.running.fetch_sub(1, Ordering::AcqRel);
                    let _ = job.reply.send(ok);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-check thread");
            }
        }
        tx
    }

    fn submit(&self, job: HashJob) -> bool {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = jobs.get_or_insert_with(|| self.spawn_threads());
        tx.send(job).is_ok()
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        // Closing the channel ends the threads once they finish their job.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

struct Inner {
    pool: HashPool,
    slots: Arc<Semaphore>,
    queue: usize,
    dummy: String,
    throttle: Throttle,
    metrics: Arc<LoginMetrics>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("queue", &self.inner.queue)
            .field("metrics", &self.inner.metrics)
            .finish()
    }
}

/// Leaves the queue's count when dropped (also when the caller goes away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Credentials {
    /// The daemon's service: argon2, sizes from `cfg`.
    pub fn new(cfg: CredentialsConfig) -> Self {
        Self::with_verifier(cfg, Arc::new(argon2_verify))
    }

    /// A service verifying with `verify` (tests).
    pub fn with_verifier(cfg: CredentialsConfig, verify: Verifier) -> Self {
        // A hash of a random password with the parameters real accounts get:
        // checking an unknown account against it costs what a real check costs.
        let mut pw = [0u8; 24];
        let _ = aws_lc_rs::rand::fill(&mut pw);
        let dummy = hash_password(&hex::encode(pw)).unwrap_or_else(|_| {
            // Not reachable with argon2's defaults; a fixed valid hash keeps the path.
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$JkGEtvbUeHTkV8XM7l1n0U5m7m3O3Ij9mQd4dBkzv2c".into()
        });
        let workers = cfg.workers.max(1);
        let metrics = Arc::new(LoginMetrics::default());
        Self {
            inner: Arc::new(Inner {
                pool: HashPool::new(workers, verify, metrics.clone()),
                slots: Arc::new(Semaphore::new(workers)),
                queue: cfg.queue,
                dummy,
                throttle: Throttle::new(cfg.throttle),
                metrics,
            }),
        }
    }

    /// The counters.
    pub fn metrics(&self) -> &LoginMetrics {
        &self.inner.metrics
    }

    /// The throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    /// The hash unknown accounts are checked against.
    pub fn dummy_hash(&self) -> &str {
        &self.inner.dummy
    }

    /// Checks `password` for `address` from `source`. `lookup` maps the
    /// normalised address to (the account's name, its stored hash) when the
    /// account exists. Returns the account's name.
    pub async fn check(
        &self,
        source: Option<IpAddr>,
        address: &str,
        password: &str,
        lookup: impl FnOnce(&str) -> Option<(String, String)>,
    ) -> Result<String, LoginError> {
        let m = &self.inner.metrics;
        if address.len() > MAX_ADDRESS_LEN * 2 || password.len() > MAX_PASSWORD_LEN {
            m.invalid.fetch_add(1, Ordering::Relaxed);
            return Err(LoginError::Invalid);
        }
        let address = address.trim().to_ascii_lowercase();
        if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
            m.invalid.fetch_add(1, Ordering::Relaxed);
            return Err(LoginError::Invalid);
        }
        let attempt = match self.inner.throttle.begin(source, &address, Instant::now()) {
            Ok(a) => a,
            Err((_, retry_after)) => {
                m.throttled.fetch_add(1, Ordering::Relaxed);
                return Err(LoginError::Throttled { retry_after });
            }
        };
        // A place in the queue, or a refusal at once.
        let waiting = m.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        let guard = Waiting(&m.waiting);
        if waiting > self.inner.queue + self.inner.slots.available_permits() {
            drop(guard);
            self.inner.throttle.not_checked(attempt, Instant::now());
            m.busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(account = %address, "login refused: every password-check slot is taken");
            return Err(LoginError::Busy);
        }
        let Ok(permit) = self.inner.slots.clone().acquire_owned().await else {
            self.inner.throttle.not_checked(attempt, Instant::now());
            return Err(LoginError::Busy);
        };
        drop(guard);
        let found = lookup(&address);
        let (name, hash) = match found {
            Some((n, h)) => (Some(n), h),
            None => (None, self.inner.dummy.clone()),
        };
        // The permit goes with the job: a caller that goes away now does
        // not free the slot before the hash is done.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let submitted = self.inner.pool.submit(HashJob {
            hash,
            password: password.as_bytes().to_vec(),
            reply,
            _permit: permit,
        });
        let ok = submitted && answer.await.unwrap_or(false);
        match (ok, name) {
            (true, Some(name)) => {
                self.inner.throttle.succeeded(attempt, Instant::now());
                m.granted.fetch_add(1, Ordering::Relaxed);
                Ok(name)
            }
            _ => {
                m.invalid.fetch_add(1, Ordering::Relaxed);
                Err(LoginError::Invalid)
            }
        }
    }
}

/// Hashes a password for storage (argon2id, default cost, random salt, PHC
/// string). Fails only on a local fault (no random source).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, SaltString};
    use argon2::PasswordHasher;
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
}

#[cfg(test)]
mod tests;

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Condvar;

fn ip(n: u32) -> Option<IpAddr> {
    Some(IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0000 + n)))
}

/// A verifier that waits at a gate, counts its calls and the most running
/// at once, and records the hashes it was given.
#[derive(Default)]
struct Probe {
    open: Mutex<bool>,
    cv: Condvar,
    calls: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
    hashes: Mutex<Vec<String>>,
    sleep_ms: AtomicU64,
    gated: AtomicBool,
}

impl Probe {
    fn verifier(self: &Arc<Self>) -> Verifier {
        let p = self.clone();
        Arc::new(move |hash: &str, pw: &[u8]| {
            p.calls.fetch_add(1, Ordering::SeqCst);
            let now = p.running.fetch_add(1, Ordering::SeqCst) + 1;
            p.peak.fetch_max(now, Ordering::SeqCst);
            p.hashes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(hash.to_owned());
            if p.gated.load(Ordering::SeqCst) {
                let mut open = p
                    .open
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                while !*open {
                    open =
                        p.cv.wait(open)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            std::thread::sleep(Duration::from_millis(p.sleep_ms.load(Ordering::SeqCst)));
            p.running.fetch_sub(1, Ordering::SeqCst);
            pw == b"right" && hash == "stored"
        })
    }

    fn gated() -> Arc<Self> {
        let p = Arc::new(Self::default());
        p.gated.store(true, Ordering::SeqCst);
        p
    }

    fn open(&self) {
        *self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.cv.notify_all();
    }
}

fn alice(a: &str) -> Option<(String, String)> {
    (a == "alice@a.test").then(|| ("alice".to_owned(), "stored".to_owned()))
}

fn cfg(workers: usize, queue: usize) -> CredentialsConfig {
    CredentialsConfig {
        workers,
        queue,
        throttle: ThrottleConfig::default(),
    }
}

async fn settle(cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not reached within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_workers_hashes_run_at_once() {
    let probe = Arc::new(Probe::default());
    probe.sleep_ms.store(30, Ordering::SeqCst);
    let c = Credentials::with_verifier(cfg(2, 100), probe.verifier());
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.check(ip(i), &format!("u{i}@a.test"), "x", |_| None).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.ok(), Some(Err(LoginError::Invalid)));
    }
    assert_eq!(probe.calls.load(Ordering::SeqCst), 24);
    assert!(
        probe.peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        probe.peak.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn past_the_queue_checks_are_refused_at_once() {
    let probe = Probe::gated();
    let c = Credentials::with_verifier(cfg(1, 3), probe.verifier());
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.check(ip(i), &format!("u{i}@a.test"), "x", |_| None).await
        }));
        tokio::task::yield_now().await;
    }
    let m = c.metrics();
    settle(|| m.busy.load(Ordering::SeqCst) == 6).await;
    assert_eq!(m.waiting.load(Ordering::SeqCst), 3);
    probe.open();
    let mut busy = 0;
    for t in tasks {
        match t.await.ok() {
            Some(Err(LoginError::Busy)) => busy += 1,
            Some(Err(LoginError::Invalid)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(busy, 6);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 4);
    // A refusal for a reason of ours is not held against the client.
    assert_eq!(c.throttle().sizes()[0], 4);
}

#[tokio::test]
async fn a_caller_that_goes_away_leaves_the_queue_unhashed() {
    let probe = Probe::gated();
    let c = Credentials::with_verifier(cfg(1, 1), probe.verifier());
    let spawn = |i: u32| {
        let c = c.clone();
        tokio::spawn(async move { c.check(ip(i), &format!("u{i}@a.test"), "x", |_| None).await })
    };
    let a = spawn(1);
    settle(|| probe.running.load(Ordering::SeqCst) == 1).await;
    let b = spawn(2);
    settle(|| c.metrics().waiting.load(Ordering::SeqCst) == 1).await;
    let full = spawn(3).await.ok();
    assert_eq!(full, Some(Err(LoginError::Busy)));
    b.abort();
    assert!(b.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(c.metrics().waiting.load(Ordering::SeqCst), 0);
    let d = spawn(4);
    settle(|| c.metrics().waiting.load(Ordering::SeqCst) == 1).await;
    probe.open();
    assert_eq!(a.await.ok(), Some(Err(LoginError::Invalid)));
    assert_eq!(d.await.ok(), Some(Err(LoginError::Invalid)));
    // The cancelled check was never hashed.
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_are_counted_before_they_are_checked() {
    let probe = Arc::new(Probe::default());
    probe.sleep_ms.store(5, Ordering::SeqCst);
    let c = Credentials::with_verifier(cfg(2, 1000), probe.verifier());
    let mut tasks = Vec::new();
    for i in 0..300 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.check(ip(1), "alice@a.test", &format!("guess{i}"), alice)
                .await
        }));
    }
    let mut throttled = 0;
    for t in tasks {
        if let Ok(Err(LoginError::Throttled { .. })) = t.await {
            throttled += 1;
        }
    }
    let free = ThrottleConfig::default().pair.free as usize;
    assert_eq!(probe.calls.load(Ordering::SeqCst), free);
    assert_eq!(throttled, 300 - free);
    // The owner, elsewhere, still gets in.
    assert_eq!(
        c.check(ip(2), "alice@a.test", "right", alice).await,
        Ok("alice".into())
    );
}

#[tokio::test]
async fn unknown_accounts_are_checked_against_the_dummy_hash() {
    let probe = Arc::new(Probe::default());
    let c = Credentials::with_verifier(cfg(1, 4), probe.verifier());
    assert_eq!(
        c.check(ip(1), "nobody@a.test", "right", alice).await,
        Err(LoginError::Invalid)
    );
    assert_eq!(
        c.check(ip(1), "Alice@A.test ", "right", alice).await,
        Ok("alice".into())
    );
    let seen = probe.hashes.lock().map(|h| h.clone()).unwrap_or_default();
    assert_eq!(seen, vec![c.dummy_hash().to_owned(), "stored".to_owned()]);
    // The dummy costs what a real account's hash costs.
    let real = hash_password("x").unwrap_or_default();
    let params = |h: &str| {
        argon2::PasswordHash::new(h)
            .ok()
            .and_then(|h| argon2::Params::try_from(&h).ok())
            .map(|p| (p.m_cost(), p.t_cost(), p.p_cost()))
    };
    assert!(params(&real).is_some());
    assert_eq!(params(c.dummy_hash()), params(&real));
}

#[tokio::test]
async fn oversized_inputs_are_refused_before_anything_is_kept() {
    let probe = Arc::new(Probe::default());
    let c = Credentials::with_verifier(cfg(1, 4), probe.verifier());
    let long = "a".repeat(MAX_ADDRESS_LEN + 1);
    assert_eq!(
        c.check(ip(1), &long, "x", alice).await,
        Err(LoginError::Invalid)
    );
    let pw = "p".repeat(MAX_PASSWORD_LEN + 1);
    assert_eq!(
        c.check(ip(1), "alice@a.test", &pw, alice).await,
        Err(LoginError::Invalid)
    );
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0);
    assert_eq!(c.throttle().sizes(), [0, 0, 0, 0]);
}

#[test]
fn delays_grow_and_reset_on_success() {
    let t = Throttle::new(ThrottleConfig::default());
    let t0 = Instant::now();
    for _ in 0..5 {
        assert!(t.begin(ip(1), "alice@a.test", t0).is_ok());
    }
    let (scope, d) = t
        .begin(ip(1), "alice@a.test", t0)
        .err()
        .unwrap_or((Scope::Source, Duration::ZERO));
    assert_eq!((scope, d), (Scope::Pair, Duration::from_secs(2)));
    // After the delay one more attempt, then twice as long.
    let t1 = t0 + Duration::from_secs(2);
    assert!(t.begin(ip(1), "alice@a.test", t1).is_ok());
    assert_eq!(
        t.begin(ip(1), "alice@a.test", t1).err(),
        Some((Scope::Pair, Duration::from_secs(4)))
    );
    // Another source is not held to this pair's limit.
    let a = t.begin(ip(2), "alice@a.test", t1);
    assert!(a.is_ok());
    if let Ok(a) = a {
        t.succeeded(a, t1);
    }
    // Forgotten after the forget window.
    let later = t1 + Duration::from_secs(3601);
    assert!(t.begin(ip(1), "alice@a.test", later).is_ok());
}

#[test]
fn the_account_ceiling_spares_sources_the_owner_used() {
    let mut cfg = ThrottleConfig::default();
    cfg.account.free = 10;
    let t = Throttle::new(cfg);
    let now = Instant::now();
    // The owner logged in from source 1 once.
    if let Ok(a) = t.begin(ip(1), "alice@a.test", now) {
        t.succeeded(a, now);
    }
    // Ten sources guess once each: the account ceiling engages.
    for i in 10..20 {
        assert!(t.begin(ip(i), "alice@a.test", now).is_ok());
    }
    assert_eq!(
        t.begin(ip(99), "alice@a.test", now).err().map(|e| e.0),
        Some(Scope::Account)
    );
    // The owner's source is exempt; and the ceiling's delay is short.
    assert!(t.begin(ip(1), "alice@a.test", now).is_ok());
    assert!(t
        .begin(ip(99), "alice@a.test", now + cfg.account.max)
        .is_ok());
}

#[test]
fn state_stays_bounded_under_distinct_keys() {
    let cfg = ThrottleConfig {
        max_entries: 100,
        ..ThrottleConfig::default()
    };
    let t = Throttle::new(cfg);
    let now = Instant::now();
    for i in 0..5000u32 {
        let _ = t.begin(ip(i), &format!("user{i}@a.test"), now);
    }
    for s in t.sizes() {
        assert!(s <= 100, "{:?}", t.sizes());
    }
}

#[test]
fn ipv6_sources_are_keyed_by_their_64() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
    let b: IpAddr = "2001:db8:1:2:ffff::9"
        .parse()
        .unwrap_or(IpAddr::from([0u8; 16]));
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
    assert_eq!(source_bits(Some(a)), source_bits(Some(b)));
    assert_ne!(source_bits(Some(a)), source_bits(Some(c)));
    let v4: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0u8; 4]));
    let mapped: IpAddr = "::ffff:192.0.2.1"
        .parse()
        .unwrap_or(IpAddr::from([0u8; 16]));
    assert_eq!(source_bits(Some(v4)), source_bits(Some(mapped)));
}

#[test]
fn argon2_cost_is_bounded() {
    let h = hash_password("correct horse").unwrap_or_default();
    assert!(hash_within_bounds(&h).is_ok());
    assert!(argon2_verify(&h, b"correct horse"));
    assert!(!argon2_verify(&h, b"wrong"));
    let costly = "$argon2id$v=19$m=4000000,t=100,p=1$c29tZXNhbHRzb21lc2FsdA$JkGEtvbUeHTkV8XM7l1n0U5m7m3O3Ij9mQd4dBkzv2c";
    assert!(hash_within_bounds(costly).is_err());
    assert!(!argon2_verify(costly, b"x"));
    assert!(hash_within_bounds("$pbkdf2$x").is_err());
}

#[test]
fn the_reused_memory_verifier_agrees_with_argon2s_own() {
    use argon2::PasswordVerifier;
    let hashes = [
        hash_password("correct horse").unwrap_or_default(),
        // Another cost and variant, as an imported hash could have.
        {
            use argon2::password_hash::{rand_core::OsRng, SaltString};
            use argon2::PasswordHasher;
            let p = argon2::Params::new(8 * 1024, 3, 2, None).unwrap_or_default();
            argon2::Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, p)
                .hash_password(b"correct horse", &SaltString::generate(&mut OsRng))
                .map(|h| h.to_string())
                .unwrap_or_default()
        },
    ];
    for h in &hashes {
        let parsed = argon2::PasswordHash::new(h).unwrap_or_else(|e| panic!("{e}"));
        for pw in [&b"correct horse"[..], b"wrong", b""] {
            let theirs = argon2::Argon2::default()
                .verify_password(pw, &parsed)
                .is_ok();
            assert_eq!(argon2_verify(h, pw), theirs, "{h} {pw:?}");
        }
        assert!(argon2_verify(h, b"correct horse"));
    }
    // A changed hash output fails.
    let mut bad = hashes[0].clone();
    let last = bad.pop().unwrap_or('A');
    bad.push(if last == 'A' { 'B' } else { 'A' });
    assert!(!argon2_verify(&bad, b"correct horse"));
}

//! The association service's admission limits, as plain state machines: a
//! per-member renewal budget and the `Watch` slots. They take `now` and hold
//! no sockets; `service.rs` asks them before doing any work.
//!
//! Every map here is bounded: the renewal budget tracks only members that
//! renewed recently (authenticated members, and buckets that refilled are
//! dropped), and the watch counters only hold keys with a slot in use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A member's renewal budget: a token bucket of `burst` renewals, one token
/// back every `interval`.
#[derive(Debug)]
pub(crate) struct RenewLimiter {
    interval: Duration,
    burst: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left as of `at`.
    tokens: f64,
    at: Instant,
}

/// Past this many tracked members, buckets that refilled are dropped.
const SWEEP_AT: usize = 1024;

/// A renewal refused by [`RenewLimiter::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryAfter(pub Duration);

impl RenewLimiter {
    /// `burst` renewals at once (at least 1), then one per `interval`.
    pub(crate) fn new(interval: Duration, burst: u32) -> Self {
        Self {
            interval,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Bucket>> {
        // Each update is one assignment: a panic elsewhere cannot leave a
        // bucket half-written.
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        if self.interval.is_zero() {
            return f64::from(self.burst);
        }
        let gained =
            now.saturating_duration_since(b.at).as_secs_f64() / self.interval.as_secs_f64();
        (b.tokens + gained).min(f64::from(self.burst))
    }

    /// Takes one renewal from `member`'s budget, or says how long until one
    /// is available.
    pub(crate) fn try_take(&self, member: &str, now: Instant) -> Result<(), RetryAfter> {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            let burst = f64::from(self.burst);
            map.retain(|_, b| self.refilled(*b, now) < burst);
        }
        let tokens = map
            .get(member)
            .map(|b| self.refilled(*b, now))
            .unwrap_or(f64::from(self.burst));
        if tokens >= 1.0 {
            map.insert(
                member.to_owned(),
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
            return Ok(());
        }
        let wait = self.interval.mul_f64(1.0 - tokens);
        Err(RetryAfter(wait.max(Duration::from_secs(1))))
    }

    /// Returns a renewal taken by [`RenewLimiter::try_take`] that failed
    /// through no fault of the member (storage, signing).
    pub(crate) fn give_back(&self, member: &str, now: Instant) {
        let mut map = self.lock();
        if let Some(b) = map.get(member).copied() {
            let tokens = (self.refilled(b, now) + 1.0).min(f64::from(self.burst));
            map.insert(member.to_owned(), Bucket { tokens, at: now });
        }
    }

    /// Members currently tracked (for tests and the bound).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// The `Watch` limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchLimits {
    /// Watch streams in all.
    pub total: usize,
    /// Of which at most this many without a member certificate: the rest is
    /// reserved for members.
    pub anonymous: usize,
    /// Anonymous streams per source address (IPv4 address or IPv6 /64).
    pub anonymous_per_source: usize,
    /// Streams per member.
    pub per_member: usize,
}

/// Who asks for a `Watch` slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Watcher {
    /// A client that presented a certificate of an active member.
    Member(String),
    /// Anyone else, by source (`None`: address unknown; those share a cap).
    Anonymous(Option<SourceKey>),
}

/// The source an anonymous watcher is counted against: an IPv4 address, or
/// the /64 prefix of an IPv6 one (a single host usually holds a whole /64,
/// RFC 4291 §2.5.1, so counting single IPv6 addresses would cap nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    /// IPv4 (also an IPv4-mapped IPv6 address).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
}

impl SourceKey {
    /// The key for a peer address.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(p)
                }
            },
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            SourceKey::V6Prefix(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

/// Why a `Watch` slot was refused; the `Display` form is the one-line message
/// the client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchRefusal {
    /// Every slot is taken.
    Full(usize),
    /// The anonymous share is taken.
    AnonymousFull(usize),
    /// This source holds its share of anonymous slots.
    SourceFull(usize, Option<SourceKey>),
    /// This member holds its share.
    MemberFull(usize, String),
}

impl std::fmt::Display for WatchRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchRefusal::Full(n) => write!(
                f,
                "watch refused: all {n} watch slots are in use; retry later, or poll GetCrl and GetDirectory"
            ),
            WatchRefusal::AnonymousFull(n) => write!(
                f,
                "watch refused: the {n} slots for watchers without a member certificate are in use \
                 (the rest is reserved for members); retry later, or poll GetCrl and GetDirectory"
            ),
            WatchRefusal::SourceFull(n, Some(src)) => write!(
                f,
                "watch refused: {src} already holds {n} watch streams without a member certificate; \
                 close one first"
            ),
            WatchRefusal::SourceFull(n, None) => write!(
                f,
                "watch refused: {n} watch streams from unknown addresses already; close one first"
            ),
            WatchRefusal::MemberFull(n, id) => write!(
                f,
                "watch refused: member {id} already holds {n} watch streams; close one first"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    anonymous: usize,
    per_source: HashMap<Option<SourceKey>, usize>,
    per_member: HashMap<String, usize>,
}

/// The `Watch` slots in use.
#[derive(Debug)]
pub(crate) struct WatchSlots {
    limits: WatchLimits,
    counts: Mutex<SlotCounts>,
}

/// A held `Watch` slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct WatchSlot {
    slots: Arc<WatchSlots>,
    who: Watcher,
}

impl WatchSlots {
    /// Empty slots under `limits`.
    pub(crate) fn new(limits: WatchLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(SlotCounts::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotCounts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `who`, or says why not. Members are counted against
    /// the total and their own cap only: anonymous watchers can never take
    /// the `total - anonymous` slots reserved for them.
    pub(crate) fn admit(self: &Arc<Self>, who: Watcher) -> Result<WatchSlot, WatchRefusal> {
        let l = self.limits;
        let mut c = self.lock();
        if c.total >= l.total {
            return Err(WatchRefusal::Full(l.total));
        }
        match &who {
            Watcher::Member(id) => {
                let n = c.per_member.get(id).copied().unwrap_or(0);
                if n >= l.per_member {
                    return Err(WatchRefusal::MemberFull(l.per_member, id.clone()));
                }
                c.per_member.insert(id.clone(), n + 1);
            }
            Watcher::Anonymous(src) => {
                if c.anonymous >= l.anonymous {
                    return Err(WatchRefusal::AnonymousFull(l.anonymous));
                }
                let n = c.per_source.get(src).copied().unwrap_or(0);
                if n >= l.anonymous_per_source {
                    return Err(WatchRefusal::SourceFull(l.anonymous_per_source, *src));
                }
                c.per_source.insert(*src, n + 1);
                c.anonymous += 1;
            }
        }
        c.total += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            who,
        })
    }

    /// (all, anonymous) slots in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> (usize, usize) {
        let c = self.lock();
        (c.total, c.anonymous)
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.total -= 1;
        match &self.who {
            Watcher::Member(id) => decrement(&mut c.per_member, id),
            Watcher::Anonymous(src) => {
                c.anonymous -= 1;
                decrement(&mut c.per_source, src);
            }
        }
    }
}

impl WatchSlot {
    /// Who holds this slot.
    pub(crate) fn watcher(&self) -> &Watcher {
        &self.who
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_renewal_per_interval() {
        let l = RenewLimiter::new(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.try_take("alpha", t0).expect("within the burst");
        }
        let RetryAfter(wait) = l.try_take("alpha", t0).expect_err("burst spent");
        assert_eq!(wait, Duration::from_secs(3600));
        // Another member has its own budget.
        l.try_take("beta", t0).expect("beta");
        // Half an interval later: still nothing, and the wait says so.
        let t1 = t0 + Duration::from_secs(1800);
        let RetryAfter(wait) = l.try_take("alpha", t1).expect_err("half a token");
        assert_eq!(wait, Duration::from_secs(1800));
        // One interval: exactly one more.
        let t2 = t0 + Duration::from_secs(3600);
        l.try_take("alpha", t2).expect("refilled one");
        assert!(l.try_take("alpha", t2).is_err());
        // A renewal that failed on our side is given back.
        l.give_back("alpha", t2);
        l.try_take("alpha", t2).expect("given back");
        // Long idle: back to a full burst, never more.
        let t3 = t2 + Duration::from_secs(100 * 3600);
        for _ in 0..3 {
            l.try_take("alpha", t3).expect("full burst again");
        }
        assert!(l.try_take("alpha", t3).is_err());
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let l = RenewLimiter::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            l.try_take(&format!("m{i}"), t0).expect("take");
        }
        assert_eq!(l.tracked(), SWEEP_AT);
        l.try_take("late", t0 + Duration::from_secs(120))
            .expect("take");
        assert_eq!(l.tracked(), 1, "full buckets dropped");
    }

    fn v4(last: u8) -> Watcher {
        Watcher::Anonymous(Some(SourceKey::of(IpAddr::from([192, 0, 2, last]))))
    }

    #[test]
    fn members_keep_their_reserved_slots() {
        let slots = WatchSlots::new(WatchLimits {
            total: 4,
            anonymous: 2,
            anonymous_per_source: 1,
            per_member: 1,
        });
        let a1 = slots.admit(v4(1)).expect("first anonymous");
        assert!(matches!(
            slots.admit(v4(1)),
            Err(WatchRefusal::SourceFull(1, Some(_)))
        ));
        let a2 = slots.admit(v4(2)).expect("second source");
        assert!(matches!(
            slots.admit(v4(3)),
            Err(WatchRefusal::AnonymousFull(2))
        ));
        let m1 = slots
            .admit(Watcher::Member("alpha".into()))
            .expect("member despite anonymous share full");
        assert!(matches!(
            slots.admit(Watcher::Member("alpha".into())),
            Err(WatchRefusal::MemberFull(1, _))
        ));
        let m2 = slots.admit(Watcher::Member("beta".into())).expect("beta");
        assert_eq!(slots.in_use(), (4, 2));
        assert!(matches!(
            slots.admit(Watcher::Member("gamma".into())),
            Err(WatchRefusal::Full(4))
        ));
        drop(a1);
        assert_eq!(slots.in_use(), (3, 1));
        let a3 = slots.admit(v4(1)).expect("freed by the drop");
        drop((a2, a3, m1, m2));
        assert_eq!(slots.in_use(), (0, 0));
        let c = slots.lock();
        assert!(
            c.per_source.is_empty() && c.per_member.is_empty(),
            "no residue"
        );
    }

    #[test]
    fn ipv6_sources_count_by_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            SourceKey::of(mapped),
            SourceKey::of(IpAddr::from([192, 0, 2, 7]))
        );
        assert_eq!(SourceKey::of(a).to_string(), "2001:db8:1:2::/64");
    }
}

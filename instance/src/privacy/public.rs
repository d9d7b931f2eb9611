//! Public privacy levels and the k-anonymous query (DESIGN.md §6).
//!
//! An address is normalised (trimmed, lowercased, trailing dot of the domain
//! removed) and hashed with SHA-256. An asker sends only the first
//! `prefix_bits` bits of that hash ([`DEFAULT_PREFIX_BITS`] = 8, so one
//! bucket in 256); the answering member returns every opted-in entry of the
//! bucket (full hashes and levels) and never learns which address was wanted
//! nor receives a full address or hash. It refuses prefixes shorter than
//! [`MIN_PREFIX_BITS`] (the answer would be most of its users) or longer than
//! [`MAX_PREFIX_BITS`] (the bucket would name one person), and buckets over
//! [`MAX_BUCKET_ENTRIES`] entries (the asker then retries with more bits).
//! Answers carry a TTL ([`ANSWER_TTL_SECONDS`]); askers cache them.
//!
//! With 8 bits, a member with 50,000 opted-in users answers ~195 entries per
//! bucket (about 7 KB); a tiny member gives a small bucket, which is the
//! limit of k-anonymity against a member that has few users.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prefix length an asker uses first.
pub const DEFAULT_PREFIX_BITS: u32 = 8;
/// Shortest prefix answered.
pub const MIN_PREFIX_BITS: u32 = 4;
/// Longest prefix answered.
pub const MAX_PREFIX_BITS: u32 = 16;
/// Largest bucket answered.
pub const MAX_BUCKET_ENTRIES: usize = 4096;
/// How long an asker may cache an answer.
pub const ANSWER_TTL_SECONDS: u32 = 600;

/// Normalises an address for hashing: trimmed, lowercased, without angle
/// brackets or a trailing dot on the domain. `None` when it is not an address.
pub fn normalise_address(addr: &str) -> Option<String> {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    let (l, d) = a.rsplit_once('@')?;
    let d = d.trim_end_matches('.');
    if l.is_empty() || d.is_empty() || a.chars().any(char::is_whitespace) {
        return None;
    }
    Some(format!("{}@{}", l.to_lowercase(), d.to_ascii_lowercase()))
}

/// SHA-256 of a normalised address.
pub fn address_hash(normalised: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, normalised.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The prefix sent for `hash`: `ceil(bits/8)` bytes, unused low bits zeroed.
pub fn prefix_of(hash: &[u8; 32], bits: u32) -> Vec<u8> {
    let bits = bits.min(256);
    let n = bits.div_ceil(8) as usize;
    let mut p = hash[..n].to_vec();
    let rem = bits % 8;
    if rem != 0 {
        if let Some(last) = p.last_mut() {
            *last &= 0xffu8 << (8 - rem);
        }
    }
    p
}

/// Why a query is not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Prefix length outside the answered range.
    #[error("prefix of {0} bits refused (answered: {MIN_PREFIX_BITS} to {MAX_PREFIX_BITS})")]
    Bits(u32),
    /// The bytes do not match the announced length, or unused bits are set.
    #[error("hash prefix does not match {0} bits")]
    Shape(u32),
}

/// Checks a query's shape: the answerer's side.
pub fn check_query(prefix: &[u8], bits: u32) -> Result<(), QueryError> {
    if !(MIN_PREFIX_BITS..=MAX_PREFIX_BITS).contains(&bits) {
        return Err(QueryError::Bits(bits));
    }
    if prefix.len() != bits.div_ceil(8) as usize {
        return Err(QueryError::Shape(bits));
    }
    let rem = bits % 8;
    if rem != 0 && prefix.last().is_some_and(|b| b & (0xffu8 >> rem) != 0) {
        return Err(QueryError::Shape(bits));
    }
    Ok(())
}

/// True when `hash` falls in the bucket of (`prefix`, `bits`).
pub fn in_bucket(hash: &[u8], prefix: &[u8], bits: u32) -> bool {
    let full = (bits / 8) as usize;
    if hash.len() < prefix.len() || hash[..full] != prefix[..full] {
        return false;
    }
    let rem = bits % 8;
    rem == 0 || {
        let mask = 0xffu8 << (8 - rem);
        hash[full] & mask == prefix[full] & mask
    }
}

/// Per-peer token bucket for privacy queries (answerer side).
#[derive(Debug)]
pub struct PeerLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl PeerLimiter {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `peer`; false when it has none left.
    pub fn allow(&self, peer: &str) -> bool {
        let now = Instant::now();
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.len() > 100_000 {
            // Members are at most a few thousand; bound memory anyway.
            b.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        }
        let (tokens, at) = b.entry(peer.to_owned()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One entry of a bucket: a full address hash and its level.
pub type LevelEntry = ([u8; 32], u8);

/// Cache key: member, prefix bits, prefix.
type BucketKey = (String, u32, Vec<u8>);

/// One cached answer: the bucket's entries.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// (full hash, level) pairs.
    pub entries: Vec<LevelEntry>,
    expires: Instant,
}

/// The asker's cache of answers, keyed by member and bucket, with the
/// TTL the answerer gave (capped at one hour) and a bounded size.
#[derive(Debug, Default)]
pub struct AnswerCache {
    map: Mutex<HashMap<BucketKey, Bucket>>,
}

/// Most buckets kept.
const CACHE_CAP: usize = 10_000;

impl AnswerCache {
    /// A cached, unexpired bucket.
    pub fn get(&self, member: &str, bits: u32, prefix: &[u8]) -> Option<Bucket> {
        let m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(&(member.to_owned(), bits, prefix.to_vec()))
            .filter(|b| b.expires > Instant::now())
            .cloned()
    }

    /// Keeps an answer.
    pub fn put(&self, member: &str, bits: u32, prefix: &[u8], entries: Vec<LevelEntry>, ttl: u32) {
        let now = Instant::now();
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= CACHE_CAP {
            m.retain(|_, b| b.expires > now);
            if m.len() >= CACHE_CAP {
                m.clear();
            }
        }
        m.insert(
            (member.to_owned(), bits, prefix.to_vec()),
            Bucket {
                entries,
                expires: now + Duration::from_secs(u64::from(ttl.min(3600))),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalise_address(" <Bob@Beta.TEST.> ").as_deref(),
            Some("bob@beta.test")
        );
        assert_eq!(normalise_address("no-at-sign"), None);
        assert_eq!(normalise_address("a b@c.test"), None);
        assert_eq!(normalise_address("@c.test"), None);
    }

    #[test]
    fn prefixes_carry_only_the_announced_bits() {
        let h = address_hash("bob@beta.test");
        for bits in [4u32, 8, 12, 16] {
            let p = prefix_of(&h, bits);
            assert_eq!(p.len(), bits.div_ceil(8) as usize);
            check_query(&p, bits).expect("well formed");
            assert!(in_bucket(&h, &p, bits));
        }
        // A set bit below the announced length is refused.
        let mut p = prefix_of(&h, 12);
        p[1] |= 0x01;
        assert_eq!(check_query(&p, 12), Err(QueryError::Shape(12)));
        assert_eq!(check_query(&h, 256), Err(QueryError::Bits(256)));
        assert_eq!(check_query(&[0], 2), Err(QueryError::Bits(2)));
        assert_eq!(check_query(&[0, 0], 8), Err(QueryError::Shape(8)));
    }

    #[test]
    fn buckets_partition_hashes() {
        let hashes: Vec<[u8; 32]> = (0..2000)
            .map(|i| address_hash(&format!("user{i}@beta.test")))
            .collect();
        let target = hashes[7];
        let p = prefix_of(&target, 8);
        let bucket: Vec<_> = hashes.iter().filter(|h| in_bucket(*h, &p, 8)).collect();
        // About 2000/256 entries, the target among them.
        assert!(bucket.contains(&&target));
        assert!(bucket.len() > 1 && bucket.len() < 40, "{}", bucket.len());
        let p4 = prefix_of(&target, 4);
        let wider = hashes.iter().filter(|h| in_bucket(*h, &p4, 4)).count();
        assert!(wider > bucket.len());
    }

    #[test]
    fn limiter_and_cache() {
        let l = PeerLimiter::new(0.0, 3.0);
        assert!(l.allow("a") && l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        let c = AnswerCache::default();
        c.put("beta", 8, &[1], vec![([1; 32], 70)], 600);
        assert_eq!(c.get("beta", 8, &[1]).map(|b| b.entries.len()), Some(1));
        assert!(c.get("beta", 8, &[2]).is_none());
        c.put("beta", 8, &[3], vec![], 0);
        assert!(c.get("beta", 8, &[3]).is_none(), "a zero TTL is not cached");
    }
}

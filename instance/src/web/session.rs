//! Web client sessions: a random token in a `__Host-` cookie (`Secure;
//! HttpOnly; SameSite=Strict`), kept server-side by its SHA-256 only, with
//! an absolute expiry, a per-user cap, and a CSRF token of its own that
//! every state-changing form carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The session cookie's name (the `__Host-` prefix makes browsers refuse
/// it unless it is `Secure`, for `/`, without a `Domain`).
pub(crate) const COOKIE: &str = "__Host-caliopen";
/// Most sessions of one user (the oldest goes first).
pub(crate) const MAX_PER_USER: usize = 16;
/// Most sessions in all (expired ones are pruned first; then a new login
/// is refused until some expire).
pub(crate) const MAX_SESSIONS: usize = 100_000;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The account's local part.
    pub user: String,
    /// The user's address (`local@primary-domain`).
    pub address: String,
    /// The token forms carry (hex).
    pub csrf: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub expires: i64,
}

/// Sessions in memory (a restart logs everyone out).
#[derive(Debug)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    lifetime: Duration,
}

fn key(token: &str) -> [u8; 32] {
    crate::privacy::public::address_hash(token)
}

/// 32 random bytes, hex (`None`: the system gave no randomness).
pub(crate) fn random_token() -> Option<String> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).ok()?;
    Some(hex::encode(raw))
}

/// Compares two tokens in time that does not depend on where they differ.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Sessions valid `lifetime` from login.
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    /// Sessions held (expired ones included until they are next pruned).
    pub(crate) fn count(&self) -> u64 {
        self.lock().len() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long a session lasts.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Opens a session for `user` at `now`, replacing `previous` (the
    /// cookie the browser came with, if any: a login never keeps a token
    /// from before it). Returns the cookie token, or `None` when the
    /// instance holds [`MAX_SESSIONS`] live ones or has no randomness.
    pub(crate) fn open(
        &self,
        user: &str,
        address: &str,
        previous: Option<&str>,
        now: i64,
    ) -> Option<(String, Session)> {
        let token = random_token()?;
        let csrf = random_token()?;
        let mut m = self.lock();
        if let Some(p) = previous {
            m.remove(&key(p));
        }
        m.retain(|_, s| s.expires > now);
        let mine: Vec<([u8; 32], i64)> = m
            .iter()
            .filter(|(_, s)| s.user == user)
            .map(|(k, s)| (*k, s.created))
            .collect();
        if mine.len() >= MAX_PER_USER {
            if let Some((k, _)) = mine.iter().min_by_key(|(_, c)| *c) {
                m.remove(k);
            }
        }
        if m.len() >= MAX_SESSIONS {
            return None;
        }
        let s = Session {
            user: user.to_owned(),
            address: address.to_owned(),
            csrf,
            created: now,
            expires: now + self.lifetime.as_secs() as i64,
        };
        m.insert(key(&token), s.clone());
        Some((token, s))
    }

    /// The live session a cookie token stands for.
    pub(crate) fn get(&self, token: &str, now: i64) -> Option<Session> {
        let mut m = self.lock();
        let k = key(token);
        match m.get(&k) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                m.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub(crate) fn close(&self, token: &str) -> bool {
        let mut m = self.lock();
        m.remove(&key(token)).is_some()
    }

    /// Ends every session of `user` but the one `keep` (after a password change).
    pub(crate) fn close_others(&self, user: &str, keep: &str) -> usize {
        let keep = key(keep);
        let mut m = self.lock();
        let before = m.len();
        m.retain(|k, s| s.user != user || *k == keep);
        before - m.len()
    }
}

/// The session token of a `Cookie` header.
pub(crate) fn token_of(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for a new session.
pub(crate) fn set_cookie(token: &str, lifetime: Duration) -> String {
    format!(
        "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        lifetime.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(Duration::from_secs(100))
    }

    #[test]
    fn a_session_expires_and_login_replaces_the_old_token() {
        let s = sessions();
        let (t1, a) = s.open("alice", "alice@a.test", None, 1000).expect("open");
        assert_eq!(s.get(&t1, 1050).map(|x| x.user), Some("alice".into()));
        assert!(s.get(&t1, 1100).is_none(), "expired server-side");
        let (t2, _) = s.open("alice", "alice@a.test", None, 2000).expect("open");
        let (t3, b) = s
            .open("alice", "alice@a.test", Some(&t2), 2001)
            .expect("open");
        assert!(s.get(&t2, 2002).is_none(), "the pre-login token is gone");
        assert!(s.get(&t3, 2002).is_some());
        assert_ne!(a.csrf, b.csrf);
        assert!(s.close(&t3));
        assert!(s.get(&t3, 2003).is_none());
    }

    #[test]
    fn a_user_holds_at_most_max_per_user_sessions() {
        let s = sessions();
        let first = s.open("bob", "bob@a.test", None, 0).expect("open").0;
        for i in 1..=MAX_PER_USER as i64 {
            s.open("bob", "bob@a.test", None, i).expect("open");
        }
        assert!(s.get(&first, 50).is_none(), "the oldest went");
        let (keep, _) = s.open("bob", "bob@a.test", None, 60).expect("open");
        assert_eq!(s.close_others("bob", &keep), MAX_PER_USER - 1);
        assert!(s.get(&keep, 61).is_some());
    }

    #[test]
    fn cookie_parsing_takes_only_a_well_formed_token() {
        let t = "a".repeat(64);
        assert_eq!(
            token_of(&format!("x=1; {COOKIE}={t}; y=2")),
            Some(t.as_str())
        );
        assert_eq!(token_of(&format!("{COOKIE}=short")), None);
        assert_eq!(token_of(&format!("{COOKIE}={}", "z".repeat(64))), None);
        assert_eq!(token_of("other=1"), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}

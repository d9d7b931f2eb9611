//! The Sender Rewriting Scheme, for mail an alias forwards to another
//! domain: the envelope sender becomes an address of ours
//! (`SRS0=HHHH=TT=domain=local@our-domain`), so the receiver's SPF check
//! of the forwarder passes, while the message itself — and its DKIM
//! signatures — stay as they came. A bounce to that address is sent on to
//! the original sender; the hash (HMAC-SHA256 under a key of this
//! instance, `DATA/srs.key`, 0600) and the timestamp (days, valid for
//! [`VALID_DAYS`]) make the address useless to anyone forging it.
//!
//! Format as in the SRS paper (Shevek) and Postfix's postsrsd:
//! `SRS0=<hash>=<tt>=<domain>=<local>`, the hash 4 base64 characters and
//! `tt` the day number modulo 1024 in 2 base32 characters. The local part
//! of a sender that is itself an SRS address is kept as it is (a second
//! forwarder's address is then longer, not wrong).

use std::path::Path;

/// How long a rewritten address is honoured, days.
pub(crate) const VALID_DAYS: u32 = 21;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The file of the key, in the data directory.
pub(crate) const KEY_FILE: &str = "srs.key";

/// The key of this instance's rewritten addresses.
#[derive(Clone)]
pub struct Srs {
    key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Srs")
    }
}

/// Why a rewritten address is not honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    /// Not in the SRS0 form.
    #[error("not an SRS address")]
    NotSrs,
    /// The hash does not match: forged or altered.
    #[error("the SRS hash does not match")]
    BadHash,
    /// Older than [`VALID_DAYS`].
    #[error("the SRS address has expired")]
    Expired,
}

fn day_now() -> u32 {
    u32::try_from(crate::store::now_unix().max(0) / 86_400).unwrap_or(0)
}

impl Srs {
    /// The key in `dir/srs.key`, made (32 random bytes, 0600) when absent.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let path = dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() == 32 => b,
            Ok(_) => return Err(format!("{}: not a 32-byte key", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                aws_lc_rs::rand::fill(&mut b).map_err(|_| "random generator failed".to_owned())?;
                crate::files::write_private(&path, &b).map_err(|e| e.to_string())?;
                b
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Self::with_key(&bytes))
    }

    /// A scheme with this key (tests).
    pub fn with_key(key: &[u8]) -> Self {
        Self {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
        }
    }

    fn hash(&self, tt: &str, domain: &str, local: &str) -> String {
        use base64::Engine;
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.key);
        ctx.update(tt.to_ascii_uppercase().as_bytes());
        ctx.update(b"\0");
        ctx.update(domain.to_ascii_lowercase().as_bytes());
        ctx.update(b"\0");
        ctx.update(local.as_bytes());
        let tag = ctx.sign();
        // 4 characters of base64 without `=`, `+` or `/` surprises in a
        // local part: the URL-safe alphabet.
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..3])
    }

    /// The rewritten envelope sender of mail from `sender` forwarded by
    /// `our_domain` (an empty sender — a bounce — stays empty).
    pub fn forward(&self, sender: &str, our_domain: &str) -> String {
        self.forward_on(sender, our_domain, day_now())
    }

    fn forward_on(&self, sender: &str, our_domain: &str, day: u32) -> String {
        let Some((local, domain)) = sender.rsplit_once('@') else {
            return sender.to_owned();
        };
        let t = day % 1024;
        let tt: String = [BASE32[(t >> 5) as usize], BASE32[(t & 31) as usize]]
            .iter()
            .map(|&b| b as char)
            .collect();
        let h = self.hash(&tt, domain, local);
        format!("SRS0={h}={tt}={domain}={local}@{our_domain}")
    }

    /// The original sender of a rewritten local part (`SRS0=…`, before the
    /// `@`), when its hash matches and it has not expired.
    pub fn reverse(&self, local: &str) -> Result<String, SrsError> {
        self.reverse_on(local, day_now())
    }

    fn reverse_on(&self, local: &str, today: u32) -> Result<String, SrsError> {
        let rest = local
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("SRS0="))
            .map(|_| &local[5..])
            .ok_or(SrsError::NotSrs)?;
        let mut parts = rest.splitn(4, '=');
        let (Some(h), Some(tt), Some(domain), Some(orig)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SrsError::NotSrs);
        };
        if tt.len() != 2 || domain.is_empty() || orig.is_empty() {
            return Err(SrsError::NotSrs);
        }
        let expected = self.hash(tt, domain, orig);
        if !subtle_eq(h.as_bytes(), expected.as_bytes()) {
            return Err(SrsError::BadHash);
        }
        let val = |c: u8| {
            BASE32
                .iter()
                .position(|&b| b == c.to_ascii_uppercase())
                .map(|p| p as u32)
        };
        let tb = tt.as_bytes();
        let (Some(a), Some(b)) = (val(tb[0]), val(tb[1])) else {
            return Err(SrsError::NotSrs);
        };
        let then = (a << 5) | b;
        let age = (today % 1024 + 1024 - then) % 1024;
        if age > VALID_DAYS {
            return Err(SrsError::Expired);
        }
        Ok(format!("{orig}@{domain}"))
    }
}

/// Constant-time equality of two byte strings.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_sender_comes_back_and_a_forged_one_does_not() {
        let s = Srs::with_key(b"0123456789abcdef0123456789abcdef");
        let f = s.forward_on("Bob.Smith@Example.test", "alpha.test", 20_000);
        assert!(f.starts_with("SRS0="), "{f}");
        assert!(f.ends_with("=Example.test=Bob.Smith@alpha.test"), "{f}");
        let local = f.rsplit_once('@').expect("at").0;
        assert_eq!(
            s.reverse_on(local, 20_000).as_deref(),
            Ok("Bob.Smith@Example.test")
        );
        // Case changes by a relay (the domain, the prefix) do not matter.
        let lower = local.replacen("SRS0=", "srs0=", 1);
        assert_eq!(
            s.reverse_on(&lower, 20_003).as_deref(),
            Ok("Bob.Smith@Example.test")
        );
        // Expired, forged, another key, not SRS.
        assert_eq!(
            s.reverse_on(local, 20_000 + VALID_DAYS + 1),
            Err(SrsError::Expired)
        );
        let forged = local.replacen("=Bob.Smith", "=Eve", 1);
        assert_eq!(s.reverse_on(&forged, 20_000), Err(SrsError::BadHash));
        let other = Srs::with_key(b"another key of thirty-two bytes!");
        assert_eq!(other.reverse_on(local, 20_000), Err(SrsError::BadHash));
        assert_eq!(s.reverse_on("bob", 20_000), Err(SrsError::NotSrs));
        assert_eq!(s.reverse_on("SRS0=abcd=AA=", 20_000), Err(SrsError::NotSrs));
        // Wrapping of the 10-bit day counter.
        let f = s.forward_on("a@b.test", "alpha.test", 1023);
        let local = f.rsplit_once('@').expect("at").0;
        assert_eq!(s.reverse_on(local, 1024 + 5).as_deref(), Ok("a@b.test"));
        // A bounce's empty sender stays empty.
        assert_eq!(s.forward_on("", "alpha.test", 1), "");
    }

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let a = Srs::open(dir.path()).expect("open");
        let f = a.forward("x@y.test", "alpha.test");
        let b = Srs::open(dir.path()).expect("again");
        let local = f.rsplit_once('@').expect("at").0;
        assert_eq!(b.reverse(local).as_deref(), Ok("x@y.test"));
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        assert!(Srs::open(dir.path()).is_err());
    }
}

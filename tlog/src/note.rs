//! Signed notes (C2SP `signed-note`): a text, a blank line, and signature
//! lines `— <key name> <base64(key ID || signature)>`, with Ed25519 keys
//! (signature type 0x01) and verifier keys `<name>+<hex key ID>+<base64(0x01 || key)>`.

use super::base64;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use thiserror::Error;

/// Largest note accepted (bytes). A checkpoint is ~100 bytes of text; this
/// leaves room for [`MAX_SIGNATURES`] signatures of up to a few kilobytes
/// (signed-note allows post-quantum ones of ~5 kB) while bounding the work
/// an untrusted note can cause.
pub const MAX_NOTE_LEN: usize = 256 * 1024;

/// Most signature lines accepted in one note (signed-note requires
/// accepting at least 16; witnesses cosign checkpoints, so leave room).
pub const MAX_SIGNATURES: usize = 100;

/// Longest key name accepted (bytes).
pub const MAX_KEY_NAME_LEN: usize = 256;

/// Signature type identifier of Ed25519 (signed-note §Signature types).
const ED25519_TYPE: u8 = 0x01;

/// The signature line prefix: em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note, key or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// The bytes are not a well-formed signed note (the sender's fault).
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A verifier or signer key is unusable.
    #[error("bad key: {0}")]
    BadKey(&'static str),
    /// A signature from a known key does not verify: the note is rejected.
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    /// No signature from a known key is present.
    #[error("no signature from a known key")]
    NoKnownSignature,
    /// The text cannot be signed (not a valid note text).
    #[error("cannot sign: {0}")]
    BadText(&'static str),
    /// The local crypto library failed.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID (first four bytes of the decoded signature, big-endian).
    pub key_id: u32,
    /// The signature proper (after the key ID).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line as written in a note, newline included.
    pub fn line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, base64::encode(&raw))
    }
}

/// A parsed (not necessarily verified) signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// Whether `name` is a valid key name: non-empty, no Unicode space, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_NAME_LEN
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Checks the character rules of the whole note: UTF-8 without ASCII
/// control characters other than newline.
fn check_chars(bytes: &[u8]) -> Result<&str, NoteError> {
    let s = std::str::from_utf8(bytes).map_err(|_| NoteError::Malformed("not UTF-8"))?;
    if s.bytes().any(|b| (b < 0x20 && b != b'\n') || b == 0x7f) {
        return Err(NoteError::Malformed("control character"));
    }
    Ok(s)
}

impl Note {
    /// Parses a signed note without verifying anything but its form.
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(NoteError::Malformed("note too large"));
        }
        let s = check_chars(bytes)?;
        if !s.ends_with('\n') {
            return Err(NoteError::Malformed("does not end with a newline"));
        }
        // The text is separated from the signatures by the last blank line.
        let split = s
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let text = &s[..split + 1];
        let sigs = &s[split + 2..];
        if sigs.is_empty() {
            return Err(NoteError::Malformed("no signature"));
        }
        let mut signatures = Vec::new();
        for line in sigs.split_terminator('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(NoteError::Malformed("signature line without em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("signature line without a space"))?;
            if !valid_key_name(name) {
                return Err(NoteError::Malformed("bad key name"));
            }
            let raw = base64::decode(b64).ok_or(NoteError::Malformed("bad signature base64"))?;
            if raw.len() < 5 {
                return Err(NoteError::Malformed("signature too short"));
            }
            let key_id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id,
                signature: raw[4..].to_vec(),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note text, final newline included.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature lines, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Verifies the note with the known keys: every signature whose name
    /// and key ID match a known key must verify (signed-note §Signatures),
    /// others are ignored, and at least one must be from a known key.
    /// Returns the keys that signed.
    pub fn verify<'k>(&self, known: &'k [Verifier]) -> Result<Vec<&'k Verifier>, NoteError> {
        let mut signed = Vec::new();
        for sig in &self.signatures {
            let Some(v) = known
                .iter()
                .find(|v| v.name == sig.name && v.key_id == sig.key_id)
            else {
                continue;
            };
            if !v.verifies(self.text.as_bytes(), &sig.signature) {
                return Err(NoteError::BadSignature(sig.name.clone()));
            }
            if !signed.iter().any(|s: &&Verifier| std::ptr::eq(*s, v)) {
                signed.push(v);
            }
        }
        if signed.is_empty() {
            return Err(NoteError::NoKnownSignature);
        }
        Ok(signed)
    }

    /// The note as bytes: text, blank line, signature lines.
    pub fn encode(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }
}

/// The Ed25519 key ID: `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
pub fn ed25519_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    c.update(name.as_bytes());
    c.update(&[0x0a, ED25519_TYPE]);
    c.update(public_key);
    let d = c.finish();
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The parts of a verifier key `<name>+<hex key ID>+<base64(type || key)>`
/// whose type byte must be `key_type` (`wrong_type` says so otherwise):
/// the name, the key ID as written, the Ed25519 public key. The caller
/// checks the key ID against the one its key type derives.
pub(crate) fn parse_vkey<'a>(
    vkey: &'a str,
    key_type: u8,
    wrong_type: &'static str,
) -> Result<(&'a str, u32, [u8; 32]), NoteError> {
    // The name holds no `+`, the key ID neither; the base64 key may.
    let mut parts = vkey.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey("expected <name>+<key id>+<key>"));
    };
    if !valid_key_name(name) {
        return Err(NoteError::BadKey("bad key name"));
    }
    if id.len() != 8
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(NoteError::BadKey("key id must be 8 lowercase hex digits"));
    }
    let key_id = u32::from_str_radix(id, 16).map_err(|_| NoteError::BadKey("bad key id"))?;
    let raw = base64::decode(key).ok_or(NoteError::BadKey("bad key base64"))?;
    let Some((&t, pk)) = raw.split_first() else {
        return Err(NoteError::BadKey(wrong_type));
    };
    if t != key_type {
        return Err(NoteError::BadKey(wrong_type));
    }
    let public_key: [u8; 32] = pk
        .try_into()
        .map_err(|_| NoteError::BadKey("Ed25519 key must be 32 bytes"))?;
    Ok((name, key_id, public_key))
}

/// A known Ed25519 note key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl Verifier {
    /// Parses a verifier key `<name>+<hex key ID>+<base64(0x01 || key)>`;
    /// the key ID must be the one the name and key give.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, key_id, public_key) = parse_vkey(vkey, ED25519_TYPE, "not an Ed25519 key")?;
        if ed25519_key_id(name, &public_key) != key_id {
            return Err(NoteError::BadKey("key id does not match the key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id,
            public_key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(msg, sig)
            .is_ok()
    }
}

impl std::fmt::Display for Verifier {
    /// The verifier key string.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![ED25519_TYPE];
        raw.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            base64::encode(&raw)
        )
    }
}

/// An Ed25519 note signing key with its name.
pub struct Signer {
    verifier: Verifier,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("verifier", &self.verifier.to_string())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh key named `name`; also returns its PKCS#8 (v1) encoding, to
    /// be stored.
    pub fn generate(name: &str) -> Result<(Self, Vec<u8>), NoteError> {
        let key = Ed25519KeyPair::generate().map_err(|_| NoteError::Crypto("key generation"))?;
        let pkcs8 = key
            .to_pkcs8v1()
            .map_err(|_| NoteError::Crypto("key encoding"))?
            .as_ref()
            .to_vec();
        Ok((Self::new(name, key)?, pkcs8))
    }

    /// The key named `name` from its PKCS#8 (v1 or v2) encoding.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| NoteError::BadKey("not an Ed25519 PKCS#8 key"))?;
        Self::new(name, key)
    }

    /// The key named `name` from its 32-byte RFC 8032 seed (fixed keys of
    /// tests and fuzz seeds).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::BadKey("bad Ed25519 seed"))?;
        Self::new(name, key)
    }

    fn new(name: &str, key: Ed25519KeyPair) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKey("bad key name"));
        }
        let public_key: [u8; 32] = key
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NoteError::BadKey("Ed25519 key must be 32 bytes"))?;
        Ok(Self {
            verifier: Verifier {
                name: name.to_owned(),
                key_id: ed25519_key_id(name, &public_key),
                public_key,
            },
            key,
        })
    }

    /// The matching verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Signs `text` (a note text: valid characters, ending in a newline).
    pub fn sign(&self, text: &str) -> Result<NoteSignature, NoteError> {
        if text.is_empty() || !text.ends_with('\n') {
            return Err(NoteError::BadText("note text must end with a newline"));
        }
        if check_chars(text.as_bytes()).is_err() {
            return Err(NoteError::BadText("control character in note text"));
        }
        if text.len() > MAX_NOTE_LEN / 2 {
            return Err(NoteError::BadText("note text too large"));
        }
        let sig = self
            .key
            .try_sign(text.as_bytes())
            .map_err(|_| NoteError::Crypto("signing"))?;
        Ok(NoteSignature {
            name: self.verifier.name.clone(),
            key_id: self.verifier.key_id,
            signature: sig.as_ref().to_vec(),
        })
    }

    /// `text` signed: a complete note.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        let sig = self.sign(text)?;
        Ok(Note {
            text: text.to_owned(),
            signatures: vec![sig],
        }
        .encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let (s, pkcs8) = Signer::generate("example.test/log").unwrap();
        let again = Signer::from_pkcs8("example.test/log", &pkcs8).unwrap();
        assert_eq!(s.verifier(), again.verifier());
        let v = Verifier::parse(&s.verifier().to_string()).unwrap();
        assert_eq!(&v, s.verifier());
        let note = s.sign_note("hello\n\nworld\n").unwrap();
        let n = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(n.text(), "hello\n\nworld\n");
        assert_eq!(n.encode(), note);
        assert_eq!(n.verify(std::slice::from_ref(&v)).unwrap().len(), 1);

        // Another key of the same name, or the same ID under another name, is
        // ignored; then no known signature is left.
        let (other, _) = Signer::generate("example.test/log").unwrap();
        assert_eq!(
            n.verify(std::slice::from_ref(other.verifier())),
            Err(NoteError::NoKnownSignature)
        );
        // A changed text with the same signature is refused.
        let forged = note.replacen("world", "World", 1);
        let f = Note::parse(forged.as_bytes()).unwrap();
        assert_eq!(
            f.verify(std::slice::from_ref(&v)),
            Err(NoteError::BadSignature("example.test/log".into()))
        );
    }

    #[test]
    fn go_note_example_key() {
        // The verifier key of golang.org/x/mod/sumdb/note's documentation
        // (name PeterNeumann): its key ID must be recomputed the same way.
        let v =
            Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .unwrap();
        assert_eq!(v.key_id(), 0xc74f20a3);
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let n = Note::parse(note.as_bytes()).unwrap();
        n.verify(std::slice::from_ref(&v)).unwrap();
        // Its signer key (`PRIVATE+KEY+PeterNeumann+c74f20a3+<base64(0x01 ||
        // seed)>`): Ed25519 is deterministic, so our signer must write the
        // same note byte for byte.
        let raw = base64::decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
        let key = Ed25519KeyPair::from_seed_unchecked(&raw[1..]).unwrap();
        let s = Signer::new("PeterNeumann", key).unwrap();
        assert_eq!(s.verifier(), &v);
        assert_eq!(s.sign_note(n.text()).unwrap(), note);
    }

    #[test]
    fn malformed_notes_are_refused() {
        let (s, _) = Signer::generate("k").unwrap();
        let good = s.sign_note("a\n").unwrap();
        Note::parse(good.as_bytes()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (good.trim_end().to_owned(), "no final newline"),
            (good.replace("\u{2014} ", "- "), "no em dash"),
            (good.replace("\n\n", "\n"), "no blank line"),
            ("a\n\n".into(), "no signature"),
            (good.replacen("a\n", "a\r\n", 1), "control char"),
            (
                good.replacen("\u{2014} k ", "\u{2014} k+x ", 1),
                "plus in name",
            ),
            (good.replacen("\u{2014} k ", "\u{2014}  ", 1), "empty name"),
            (
                good.replacen("\u{2014} k ", "\u{2014} k\u{a0}", 1),
                "no space",
            ),
            (
                "a\n\n\u{2014} k AAAA\n".into(),
                "signature shorter than a key id",
            ),
            ("a\n\n\u{2014} k AAAAAA=\n".into(), "bad base64"),
        ];
        for (bad, why) in cases {
            assert!(Note::parse(bad.as_bytes()).is_err(), "{why}: {bad:?}");
        }
        let mut many = "a\n\n".to_owned();
        for _ in 0..=MAX_SIGNATURES {
            many.push_str(&s.sign("a\n").unwrap().line());
        }
        assert!(Note::parse(many.as_bytes()).is_err());
        assert!(Note::parse(&[0xff, b'\n', b'\n']).is_err());
    }

    #[test]
    fn verifier_keys_may_hold_a_plus_in_their_base64() {
        // transparency-dev/formats' test key "TEST", whose base64 has a '+'.
        let v =
            Verifier::parse("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6").unwrap();
        assert_eq!(v.name(), "TEST");
        assert_eq!(v.key_id(), 0x7997405c);
    }

    #[test]
    fn verifier_keys_are_checked() {
        let (s, _) = Signer::generate("k").unwrap();
        let good = s.verifier().to_string();
        for bad in [
            good.replacen("k+", "j+", 1),
            good.to_uppercase(),
            format!("{good}+x"),
            good.replacen("+A", "+B", 1),
            "k+00000000".to_owned(),
            "".to_owned(),
        ] {
            assert!(Verifier::parse(&bad).is_err(), "{bad}");
        }
    }
}

//! The contact book and per-user counters (kept up to date by the store in
//! the same atomic write as the message they come from, so that a crash can
//! neither lose nor double-count), and the facts of public levels.

use serde::{Deserialize, Serialize};

/// An Autocrypt key seen in a message from the contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutocryptKey {
    /// SHA-256 (hex) of the key data, to tell keys apart.
    pub key_sha256: String,
    /// The key data (base64 OpenPGP key, as in the header).
    pub keydata: String,
    /// `prefer-encrypt=mutual`.
    pub prefer_encrypt_mutual: bool,
    /// Unix seconds of the message that carried it (newest wins).
    pub seen_at: i64,
}

/// A contact's public level, as last heard from their member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenLevel {
    /// 0–100.
    pub level: u8,
    /// Member that answered.
    pub member: String,
    /// Unix seconds.
    pub fetched_at: i64,
}

/// How a message travelled, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// Over the mesh.
    Mesh,
    /// By SMTP with TLS.
    Tls,
    /// By SMTP in clear text (or unknown TLS for outbound).
    Plain,
    /// Within the instance.
    Local,
}

/// Message counters by path and protection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Messages.
    pub messages: u64,
    /// Over the mesh.
    pub mesh: u64,
    /// By SMTP with TLS.
    pub tls: u64,
    /// By SMTP in clear text.
    pub plain: u64,
    /// Within the instance.
    pub local: u64,
    /// Encrypted end to end.
    pub encrypted: u64,
    /// Signed end to end.
    pub signed: u64,
}

impl Counters {
    /// Counts one message.
    pub fn count(&mut self, path: PathClass, encrypted: bool, signed: bool) {
        self.messages += 1;
        match path {
            PathClass::Mesh => self.mesh += 1,
            PathClass::Tls => self.tls += 1,
            PathClass::Plain => self.plain += 1,
            PathClass::Local => self.local += 1,
        }
        self.encrypted += u64::from(encrypted);
        self.signed += u64::from(signed);
    }
}

/// One correspondent of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    /// Normalised address.
    pub address: String,
    /// Display name last seen.
    pub name: String,
    /// Unix seconds.
    pub first_seen: i64,
    /// Unix seconds.
    pub last_seen: i64,
    /// Messages from them.
    pub received: Counters,
    /// Messages to them.
    pub sent: Counters,
    /// Their Autocrypt key.
    pub autocrypt: Option<AutocryptKey>,
    /// Their public level from the mesh.
    pub public_level: Option<SeenLevel>,
}

impl ContactRecord {
    /// True when the user already corresponds with them: they wrote to the
    /// contact, or received more than one message from them.
    pub fn known(&self) -> bool {
        self.sent.messages > 0 || self.received.messages > 1
    }
}

/// A user's counters and settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStats {
    /// Messages received.
    pub received: Counters,
    /// Messages sent.
    pub sent: Counters,
    /// Contacts.
    pub contacts: u64,
    /// Contacts with a key.
    pub contacts_with_key: u64,
    /// Unix seconds of the first encrypted message, either way.
    pub first_encrypted_at: Option<i64>,
    /// Unix seconds of the first message over the mesh, either way.
    pub first_mesh_at: Option<i64>,
    /// The user does not publish a public level.
    pub public_opt_out: bool,
}

impl UserStats {
    /// Remembers the firsts of a message.
    pub fn mark(&mut self, path: PathClass, encrypted: bool, now: i64) {
        if encrypted && self.first_encrypted_at.is_none() {
            self.first_encrypted_at = Some(now);
        }
        if path == PathClass::Mesh && self.first_mesh_at.is_none() {
            self.first_mesh_at = Some(now);
        }
    }
}

/// Key of a contact: owner, 0x00, normalised address.
pub fn contact_key(owner: &str, address: &str) -> Vec<u8> {
    let mut k = owner.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(address.as_bytes());
    k
}

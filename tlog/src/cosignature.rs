//! Timestamped checkpoint signatures (C2SP `tlog-cosignature`, Ed25519
//! `cosignature/v1`), used by the log itself for its heartbeat.
//!
//! A checkpoint has no timestamp line (c2sp.org/tlog-checkpoint), and the
//! log's own Ed25519 note signature is deterministic, so a re-signed
//! unchanged checkpoint would be byte for byte the old one. What dates a
//! checkpoint is a `cosignature/v1` signature: a note signature line whose
//! signature is `timestamp (u64 big-endian) || Ed25519 signature` over
//!
//! ```text
//! cosignature/v1
//! time <timestamp>
//! <the whole checkpoint text>
//! ```
//!
//! and whose key ID is `SHA-256(name || 0x0A || 0x04 || public key)[:4]`
//! (tlog-cosignature §Format). Its meaning is exactly the heartbeat's: "as
//! of this time, the largest tree head the signer has for this origin is
//! this one" (§Ed25519 signed message).
//!
//! The association makes this signature with the log key itself, under the
//! origin as key name: members that pinned `log.pub` derive the cosigner key
//! from it ([`CosignatureVerifier::for_log`]), and verifiers that only know
//! the log's signed-note key ignore the line (its key ID differs, signed-note
//! §Signatures). Reusing the key is safe because the two signed messages
//! cannot collide: a checkpoint text starts with its origin, and an origin is
//! never `cosignature/v1` ([`Checkpoint::sign`] refuses it).

use super::base64;
use super::checkpoint::Checkpoint;
use super::note::{Note, NoteError, NoteSignature, Signer, Verifier};
use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};

/// Signature type identifier of Ed25519 `cosignature/v1` (tlog-cosignature
/// §Format).
pub const COSIGNATURE_V1_TYPE: u8 = 0x04;

/// The header line of the `cosignature/v1` signed message (domain
/// separation).
pub const COSIGNATURE_V1_HEADER: &str = "cosignature/v1";

/// Largest timestamp allowed (tlog-cosignature: must not exceed 2^63 - 1).
pub const MAX_TIMESTAMP: u64 = (1 << 63) - 1;

/// The message a `cosignature/v1` signs for `checkpoint_text` at `timestamp`.
pub fn signed_message(checkpoint_text: &str, timestamp: u64) -> String {
    format!("{COSIGNATURE_V1_HEADER}\ntime {timestamp}\n{checkpoint_text}")
}

/// The Ed25519 cosigner key ID: `SHA-256(name || 0x0A || 0x04 || key)[:4]`.
pub fn cosigner_key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    c.update(name.as_bytes());
    c.update(&[0x0a, COSIGNATURE_V1_TYPE]);
    c.update(public_key);
    let d = c.finish();
    let b = d.as_ref();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Signs `checkpoint_text` as of `timestamp` with `signer`'s key under its
/// name: the signature line to append to the checkpoint note.
pub fn cosign(
    signer: &Signer,
    checkpoint_text: &str,
    timestamp: u64,
) -> Result<NoteSignature, NoteError> {
    if timestamp > MAX_TIMESTAMP {
        return Err(NoteError::BadText("timestamp above 2^63 - 1"));
    }
    let msg = signed_message(checkpoint_text, timestamp);
    let sig = signer.sign(&msg)?;
    let v = signer.verifier();
    let mut raw = timestamp.to_be_bytes().to_vec();
    raw.extend_from_slice(&sig.signature);
    Ok(NoteSignature {
        name: v.name().to_owned(),
        key_id: cosigner_key_id(v.name(), v.public_key()),
        signature: raw,
    })
}

/// A known Ed25519 `cosignature/v1` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureVerifier {
    name: String,
    key_id: u32,
    public_key: [u8; 32],
}

impl CosignatureVerifier {
    /// The cosigner key `name` with Ed25519 public key `public_key`.
    pub fn new(name: &str, public_key: [u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key_id: cosigner_key_id(name, &public_key),
            public_key,
        }
    }

    /// The timestamping key of a log whose signed-note key is `log_key`
    /// (same name, same public key, type 0x04).
    pub fn for_log(log_key: &Verifier) -> Self {
        Self::new(log_key.name(), *log_key.public_key())
    }

    /// Parses a verifier key `<name>+<hex key ID>+<base64(0x04 || key)>`
    /// (tlog-cosignature: vkeys with signature type 0x04).
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, key_id, public_key) = super::note::parse_vkey(
            vkey,
            COSIGNATURE_V1_TYPE,
            "not an Ed25519 cosignature/v1 key",
        )?;
        let v = Self::new(name, public_key);
        if v.key_id != key_id {
            return Err(NoteError::BadKey("key id does not match the key"));
        }
        Ok(v)
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

    /// The timestamp of this key's `cosignature/v1` on `note`, which must
    /// be a checkpoint: `Ok(None)` when the note carries no line of this
    /// key, an error when one does not verify (signed-note: a known key's
    /// signature that fails rejects the note). With several valid lines the
    /// latest timestamp is returned.
    pub fn timestamp(&self, note: &Note) -> Result<Option<u64>, NoteError> {
        let mut latest = None;
        for sig in note.signatures() {
            if sig.name != self.name || sig.key_id != self.key_id {
                continue;
            }
            let bad = || NoteError::BadSignature(sig.name.clone());
            if sig.signature.len() != 8 + 64 {
                return Err(bad());
            }
            let (ts, s) = sig.signature.split_at(8);
            let mut t = [0u8; 8];
            t.copy_from_slice(ts);
            let ts = u64::from_be_bytes(t);
            if ts > MAX_TIMESTAMP {
                return Err(bad());
            }
            let msg = signed_message(note.text(), ts);
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(msg.as_bytes(), s)
                .map_err(|_| bad())?;
            latest = latest.max(Some(ts));
        }
        Ok(latest)
    }
}

impl std::fmt::Display for CosignatureVerifier {
    /// The verifier key string (type 0x04).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut raw = vec![COSIGNATURE_V1_TYPE];
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

/// A checkpoint signed by the log key and dated by the log's own
/// `cosignature/v1` at `timestamp`: the note the association publishes.
pub fn sign_timestamped(
    checkpoint: &Checkpoint,
    signer: &Signer,
    timestamp: u64,
) -> Result<String, super::CheckpointError> {
    let signed = checkpoint.sign(signer)?;
    let note = Note::parse(signed.as_bytes())?;
    let line = cosign(signer, note.text(), timestamp)?;
    Ok(format!("{signed}{}", line.line()))
}

/// Opens a checkpoint published by the log: its signed-note signature by
/// `log_key` and the log's own `cosignature/v1` must both verify. Returns
/// the checkpoint and the time it was last signed.
pub fn open_timestamped(
    note: &[u8],
    log_key: &Verifier,
) -> Result<(Checkpoint, u64), super::CheckpointError> {
    let (c, n) = Checkpoint::open(note, log_key)?;
    let ts = CosignatureVerifier::for_log(log_key).timestamp(&n)?.ok_or(
        super::CheckpointError::Malformed("no timestamp (cosignature/v1) by the log key"),
    )?;
    Ok((c, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(origin: &str) -> Checkpoint {
        Checkpoint {
            origin: origin.into(),
            size: 5,
            root: [3; 32],
            extensions: vec![],
        }
    }

    #[test]
    fn timestamped_checkpoints_open_and_refresh() {
        let (s, _) = Signer::generate("caliopen.invalid/log").unwrap();
        let c = cp("caliopen.invalid/log");
        let a = sign_timestamped(&c, &s, 1_700_000_000).unwrap();
        let b = sign_timestamped(&c, &s, 1_700_000_120).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            open_timestamped(a.as_bytes(), s.verifier()).unwrap(),
            (c.clone(), 1_700_000_000)
        );
        assert_eq!(
            open_timestamped(b.as_bytes(), s.verifier()).unwrap().1,
            1_700_000_120
        );
        // A plain signed-note verifier sees the log's signature and ignores
        // the cosignature line.
        let n = Note::parse(a.as_bytes()).unwrap();
        assert_eq!(n.signatures().len(), 2);
        assert_eq!(
            n.verify(std::slice::from_ref(s.verifier())).unwrap().len(),
            1
        );
        // The undated checkpoint opens but has no timestamp.
        let plain = c.sign(&s).unwrap();
        assert!(open_timestamped(plain.as_bytes(), s.verifier()).is_err());
        // The vkey round-trips.
        let cv = CosignatureVerifier::for_log(s.verifier());
        assert_eq!(CosignatureVerifier::parse(&cv.to_string()).unwrap(), cv);
        assert_ne!(cv.key_id(), s.verifier().key_id());
    }

    #[test]
    fn a_moved_timestamp_is_refused() {
        let (s, _) = Signer::generate("caliopen.invalid/log").unwrap();
        let note = sign_timestamped(&cp("caliopen.invalid/log"), &s, 1000).unwrap();
        let n = Note::parse(note.as_bytes()).unwrap();
        let mut sig = n.signatures()[1].clone();
        sig.signature[7] ^= 1;
        let forged = format!("{}\n{}{}", n.text(), n.signatures()[0].line(), sig.line());
        let fnote = Note::parse(forged.as_bytes()).unwrap();
        let cv = CosignatureVerifier::for_log(s.verifier());
        assert!(cv.timestamp(&fnote).is_err());
        assert!(open_timestamped(forged.as_bytes(), s.verifier()).is_err());
    }

    #[test]
    fn signed_message_is_the_spec_layout() {
        // tlog-cosignature §Ed25519 signed message, its example.
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        assert_eq!(
            signed_message(text, 1679315147),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        // Its witness line: key ID then a 72-byte timestamped signature.
        let note = format!(
            "{text}\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
        );
        let n = Note::parse(note.as_bytes()).unwrap();
        let sig = &n.signatures()[0];
        assert_eq!(sig.signature.len(), 72);
        assert_eq!(
            u64::from_be_bytes(sig.signature[..8].try_into().unwrap()),
            1679315147
        );
    }
}

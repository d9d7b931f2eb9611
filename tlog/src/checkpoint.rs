//! Checkpoints (C2SP `tlog-checkpoint`): a signed note whose text is the
//! origin, the decimal tree size, the base64 root hash and optional
//! extension lines.

use super::base64;
use super::merkle::{Hash, MAX_TREE_SIZE};
use super::note::{Note, NoteError, Signer, Verifier};
use thiserror::Error;

/// Longest origin line accepted (bytes).
pub const MAX_ORIGIN_LEN: usize = 256;

/// Most extension lines accepted.
pub const MAX_EXTENSIONS: usize = 16;

/// Why a checkpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// The note around it is refused (malformed or badly signed).
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The note text is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The checkpoint is for another log than the key's.
    #[error("checkpoint origin {0:?} is not the log's")]
    WrongOrigin(String),
}

/// The tree head a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (first line).
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 tree head at `size`.
    pub root: Hash,
    /// Extension lines (opaque; none written by this log).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// Parses a checkpoint note text (final newline included).
    pub fn parse_text(text: &str) -> Result<Self, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Malformed(
            "text does not end with a newline",
        ))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or("");
        if origin.is_empty() {
            return Err(CheckpointError::Malformed("empty origin"));
        }
        if origin.len() > MAX_ORIGIN_LEN {
            return Err(CheckpointError::Malformed("origin too long"));
        }
        let size = lines
            .next()
            .ok_or(CheckpointError::Malformed("no tree size"))?;
        let size = parse_size(size)?;
        let root = lines
            .next()
            .ok_or(CheckpointError::Malformed("no root hash"))?;
        let root: Hash = base64::decode(root).and_then(|r| r.try_into().ok()).ok_or(
            CheckpointError::Malformed("root hash is not base64 of 32 bytes"),
        )?;
        let mut extensions = Vec::new();
        for l in lines {
            if l.is_empty() {
                return Err(CheckpointError::Malformed("empty extension line"));
            }
            if extensions.len() == MAX_EXTENSIONS {
                return Err(CheckpointError::Malformed("too many extension lines"));
            }
            extensions.push(l.to_owned());
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The note text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            base64::encode(&self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// The checkpoint signed by `signer`, whose name must be the origin
    /// (tlog-checkpoint: the log's key name matches the origin line).
    pub fn sign(&self, signer: &Signer) -> Result<String, CheckpointError> {
        if signer.verifier().name() != self.origin {
            return Err(CheckpointError::WrongOrigin(self.origin.clone()));
        }
        // The log key also dates its checkpoints with cosignature/v1, whose
        // message starts with this line: no checkpoint text may (see
        // `cosignature`).
        if self.origin == super::cosignature::COSIGNATURE_V1_HEADER {
            return Err(CheckpointError::Malformed("reserved origin"));
        }
        // What is signed must parse back to the same checkpoint.
        let text = self.to_text();
        if Self::parse_text(&text)? != *self {
            return Err(CheckpointError::Malformed("not a valid checkpoint"));
        }
        Ok(signer.sign_note(&text)?)
    }

    /// Parses a signed checkpoint and verifies it with the log's key: the
    /// key must have signed it and its origin must be the key's name. Other
    /// signatures (witness cosignatures) are left unchecked here.
    pub fn open(note: &[u8], log_key: &Verifier) -> Result<(Self, Note), CheckpointError> {
        let n = Note::parse(note)?;
        n.verify(std::slice::from_ref(log_key))?;
        let c = Self::parse_text(n.text())?;
        if c.origin != log_key.name() {
            return Err(CheckpointError::WrongOrigin(c.origin));
        }
        Ok((c, n))
    }
}

fn parse_size(s: &str) -> Result<u64, CheckpointError> {
    let bad = CheckpointError::Malformed("tree size is not a canonical decimal number");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad);
    }
    let n: u64 = s.parse().map_err(|_| bad)?;
    if n > MAX_TREE_SIZE {
        return Err(CheckpointError::Malformed("tree size too large"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        // The example of c2sp.org/tlog-checkpoint (its signature is by a key
        // we do not have; the text is what is checked here).
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::parse_text(text).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20852163);
        assert!(c.extensions.is_empty());
        assert_eq!(c.to_text(), text);
        let note = format!(
            "{text}\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        );
        let n = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(n.signatures()[0].name, "example.com/behind-the-sofa");
    }

    #[test]
    fn signs_and_opens() {
        let (s, _) = Signer::generate("caliopen.invalid/test").unwrap();
        let c = Checkpoint {
            origin: "caliopen.invalid/test".into(),
            size: 3,
            root: [7; 32],
            extensions: vec![],
        };
        let note = c.sign(&s).unwrap();
        let (back, _) = Checkpoint::open(note.as_bytes(), s.verifier()).unwrap();
        assert_eq!(back, c);
        let other = Checkpoint {
            origin: "elsewhere".into(),
            ..c.clone()
        };
        assert!(other.sign(&s).is_err());
        let (s2, _) = Signer::generate("caliopen.invalid/test").unwrap();
        assert!(Checkpoint::open(note.as_bytes(), s2.verifier()).is_err());
    }

    #[test]
    fn malformed_texts_are_refused() {
        let root = base64::encode(&[1; 32]);
        for bad in [
            String::new(),
            "o\n1\n".to_owned(),
            format!("\n1\n{root}\n"),
            format!("o\n01\n{root}\n"),
            format!("o\n-1\n{root}\n"),
            format!("o\n+1\n{root}\n"),
            format!("o\n1 \n{root}\n"),
            format!("o\n99999999999999999999\n{root}\n"),
            format!("o\n9223372036854775809\n{root}\n"),
            format!("o\n1\n{root}"),
            format!("o\n1\n{root}\n\n"),
            format!("o\n1\n{}\n", base64::encode(&[1; 31])),
            format!("o\n1\n{}\n", root.trim_end_matches('=')),
        ] {
            assert!(Checkpoint::parse_text(&bad).is_err(), "{bad:?}");
        }
        assert!(Checkpoint::parse_text(&format!("o\n0\n{root}\next\n")).is_ok());
    }
}

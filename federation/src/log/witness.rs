//! A witness of the membership log (C2SP `tlog-witness`, cosignatures per
//! C2SP `tlog-cosignature`): any member may run one (`[witness] enabled`).
//! It keeps, per log origin it knows, the latest checkpoint it cosigned,
//! and cosigns a new one only when a consistency proof from that one holds
//! — so it never cosigns a rollback or two roots for one size.
//!
//! Plain decisions over bytes and a `now` ([`Witness::add_checkpoint`]);
//! the instance's web listener only moves the request and the answer
//! (`instance/src/web/witness.rs`). The state is one small JSON file per
//! witness, written by temporary file, fsync, rename and directory fsync
//! (like [`super::view`]), before the cosignature is returned: checking the
//! old size and recording the new checkpoint happen under one `&mut self`,
//! which the caller serialises (tlog-witness §add-checkpoint, the race it
//! describes).

use super::view::{write_atomic, LogKey};
use caliopen_tlog::cosignature::{cosign, CosignatureVerifier};
#[cfg(test)]
use caliopen_tlog::witness::request_body;
pub(crate) use caliopen_tlog::witness::Request;
pub use caliopen_tlog::witness::SIZE_CONTENT_TYPE;
use caliopen_tlog::{self as tlog, base64};
use caliopen_tlog::{verify_consistency, Checkpoint, Hash, Note, NoteError, Signer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest `add-checkpoint` body accepted (bytes): an old-size line, at
/// most 63 hashes (45 bytes each) and a checkpoint note,
/// which is ~100 bytes of text and a few signature lines. Far above what a
/// log sends, far below what could cost the witness anything.
pub const MAX_BODY: usize = 64 * 1024;

/// The witness state file, in the witness's directory.
pub(crate) const STATE_FILE: &str = "state.json";

/// Why a checkpoint is not cosigned, with the HTTP status tlog-witness
/// gives each case ([`WitnessRefusal::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WitnessRefusal {
    /// The body is not an add-checkpoint request (400): bad old-size line,
    /// bad proof line, a note that does not parse, an old size larger than
    /// the checkpoint's, a proof where none may be, a body over
    /// [`MAX_BODY`].
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The checkpoint's origin is not a log this witness knows (404).
    #[error("unknown log origin {0:?}")]
    UnknownOrigin(String),
    /// No signature by the log's key verifies (403).
    #[error("checkpoint not signed by the log's key: {0}")]
    BadSignature(String),
    /// The old size is not the size of the latest checkpoint cosigned, or
    /// that size comes with another root (409; the body is `held`).
    #[error("conflict: the witness holds a checkpoint of size {held}")]
    Conflict {
        /// Size of the latest checkpoint cosigned for the origin (0: none).
        held: u64,
    },
    /// The consistency proof does not verify (422).
    #[error("consistency proof from {old} to {new} does not verify")]
    BadProof {
        /// Old size.
        old: u64,
        /// Checkpoint size.
        new: u64,
    },
    /// The witness's own state cannot be written or its key used (500):
    /// nothing was cosigned.
    #[error("witness state: {0}")]
    State(String),
}

impl WitnessRefusal {
    /// The HTTP status code of this refusal (tlog-witness §add-checkpoint).
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::BadSignature(_) => 403,
            Self::UnknownOrigin(_) => 404,
            Self::Conflict { .. } => 409,
            Self::BadProof { .. } => 422,
            Self::State(_) => 500,
        }
    }

    /// The body of the answer: the held size and a newline for a conflict
    /// (content type [`SIZE_CONTENT_TYPE`]), a one-line reason otherwise.
    pub fn body(&self) -> String {
        match self {
            Self::Conflict { held } => format!("{held}\n"),
            other => format!("{other}\n"),
        }
    }
}

/// The latest checkpoint cosigned for one origin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Witnessed {
    /// Tree size.
    pub size: u64,
    /// Root hash, base64.
    pub root: String,
    /// The checkpoint note as submitted (the log's signatures included).
    pub note: String,
    /// When it was cosigned (Unix seconds, the cosignature's timestamp).
    pub cosigned_at: u64,
}

/// What [`STATE_FILE`] holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    /// By origin.
    logs: BTreeMap<String, Witnessed>,
}

/// Parses an add-checkpoint body ([`tlog::witness::parse_request`]), at
/// most [`MAX_BODY`] bytes.
pub(crate) fn parse_request(body: &[u8]) -> Result<Request<'_>, WitnessRefusal> {
    if body.len() > MAX_BODY {
        return Err(WitnessRefusal::Malformed("body too large".into()));
    }
    tlog::witness::parse_request(body).map_err(|e| WitnessRefusal::Malformed(e.to_owned()))
}

/// A witness: its key, the logs it knows, what it cosigned last for each.
#[derive(Debug)]
pub struct Witness {
    dir: PathBuf,
    signer: Signer,
    logs: Vec<LogKey>,
    state: State,
}

impl Witness {
    /// Opens (creating) the witness state in `dir`, cosigning with `signer`
    /// for the logs of `logs` (for a member: the association's pinned log
    /// key). A state file that does not parse is an error: the operator
    /// decides, nothing is dropped.
    pub fn open(dir: &Path, signer: Signer, logs: Vec<LogKey>) -> Result<Self, WitnessRefusal> {
        std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| WitnessRefusal::State(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(state_err(&path, e)),
        };
        Ok(Self {
            dir: dir.to_owned(),
            signer,
            logs,
            state,
        })
    }

    /// The witness's cosignature/v1 verifier key
    /// (`<name>+<key id>+<base64(0x04 || key)>`), what the association
    /// registers.
    pub fn verifier_key(&self) -> CosignatureVerifier {
        verifier_key_of(&self.signer)
    }

    /// The latest checkpoint cosigned for `origin`.
    pub fn witnessed(&self, origin: &str) -> Option<&Witnessed> {
        self.state.logs.get(origin)
    }

    /// Handles one `add-checkpoint` body at `now` (Unix seconds): the
    /// cosignature line(s) to answer with 200, or why not. The new
    /// checkpoint is written durably before the cosignature is made.
    pub fn add_checkpoint(&mut self, body: &[u8], now: u64) -> Result<String, WitnessRefusal> {
        let req = parse_request(body)?;
        let note = Note::parse(req.note)
            .map_err(|e| WitnessRefusal::Malformed(format!("checkpoint note: {e}")))?;
        let cp = Checkpoint::parse_text(note.text())
            .map_err(|e| WitnessRefusal::Malformed(format!("checkpoint: {e}")))?;
        let key = self
            .logs
            .iter()
            .find(|k| k.origin() == cp.origin)
            .ok_or_else(|| WitnessRefusal::UnknownOrigin(cp.origin.clone()))?;
        // Signatures by unknown keys are ignored; one by the log's key
        // must verify (tlog-witness; signed-note §Signatures).
        note.verify(std::slice::from_ref(key.verifier()))
            .map_err(|e: NoteError| WitnessRefusal::BadSignature(e.to_string()))?;
        if req.old > cp.size {
            return Err(WitnessRefusal::Malformed(format!(
                "old size {} is larger than the checkpoint's {}",
                req.old, cp.size
            )));
        }
        let held = self.state.logs.get(&cp.origin);
        let held_size = held.map_or(0, |w| w.size);
        if req.old != held_size {
            return Err(WitnessRefusal::Conflict { held: held_size });
        }
        let held_root = match held {
            Some(w) => Some(
                base64::decode(&w.root)
                    .and_then(|v| Hash::try_from(v).ok())
                    .ok_or_else(|| WitnessRefusal::State("stored root is not a hash".into()))?,
            ),
            None => None,
        };
        if req.old == 0 && !req.proof.is_empty() {
            return Err(WitnessRefusal::Malformed(
                "a consistency proof from size 0".into(),
            ));
        }
        match held_root {
            // Same size: the same root or nothing (never two roots for one
            // size), and no proof.
            Some(r) if cp.size == req.old => {
                if !req.proof.is_empty() {
                    return Err(WitnessRefusal::Malformed(
                        "a consistency proof between equal sizes".into(),
                    ));
                }
                if r != cp.root {
                    return Err(WitnessRefusal::Conflict { held: held_size });
                }
            }
            // A grown tree from a non-empty one: RFC 6962 §2.1.2
            // consistency (verified as RFC 9162 §2.1.4.2 does).
            Some(r) if req.old > 0 => {
                verify_consistency(req.old, cp.size, &r, &cp.root, &req.proof).map_err(|_| {
                    WitnessRefusal::BadProof {
                        old: req.old,
                        new: cp.size,
                    }
                })?
            }
            // Nothing held (or an empty tree held): nothing to prove.
            _ => {}
        }
        let line = cosign(&self.signer, note.text(), now)
            .map_err(|e| WitnessRefusal::State(format!("cosigning: {e}")))?;
        if held.is_some_and(|w| w.size == cp.size) {
            // A heartbeat of the tree held (same size, same root, checked
            // above): nothing that rollback safety needs changes, so no
            // write — replayed heartbeats cost a signature, not an fsync.
            return Ok(line.line());
        }
        let mut next = self.state.logs.clone();
        next.insert(
            cp.origin.clone(),
            Witnessed {
                size: cp.size,
                root: base64::encode(&cp.root),
                note: String::from_utf8_lossy(req.note).into_owned(),
                cosigned_at: now,
            },
        );
        let bytes = serde_json::to_vec_pretty(&State { logs: next.clone() })
            .map_err(|e| WitnessRefusal::State(e.to_string()))?;
        write_atomic(&self.dir, STATE_FILE, &bytes)
            .map_err(|e| WitnessRefusal::State(e.to_string()))?;
        self.state.logs = next;
        Ok(line.line())
    }
}

/// True when `body` is an `add-checkpoint` request whose checkpoint is
/// signed by one of `logs` (no state read or written: a cheap check made
/// before rate limiting, so that the log itself is never limited by what
/// other sources do).
pub fn signed_by_known_log(body: &[u8], logs: &[LogKey]) -> bool {
    let Ok(req) = parse_request(body) else {
        return false;
    };
    let Ok(note) = Note::parse(req.note) else {
        return false;
    };
    let Ok(cp) = Checkpoint::parse_text(note.text()) else {
        return false;
    };
    logs.iter()
        .filter(|k| k.origin() == cp.origin)
        .any(|k| note.verify(std::slice::from_ref(k.verifier())).is_ok())
}

/// The witnesses whose cosignatures a checkpoint that grows the tree must
/// carry, from the directory held (`witnesses`, `witness_quorum`): at least
/// `quorum` distinct ones of them, each a `cosignature/v1` line that
/// verifies (C2SP tlog-cosignature).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WitnessPolicy {
    /// The listed witnesses' keys.
    pub witnesses: Vec<CosignatureVerifier>,
    /// How many of them must have cosigned (0: none).
    pub quorum: usize,
}

impl WitnessPolicy {
    /// The policy a directory states. A listed key that does not parse is
    /// left out (it can give no valid cosignature), so is one that is the
    /// log's own key (`log`): the log cannot witness itself.
    pub fn from_directory(d: &caliopen_proto::pb::directory::Directory, log: &LogKey) -> Self {
        let mut witnesses: Vec<CosignatureVerifier> = Vec::new();
        for w in &d.witnesses {
            match CosignatureVerifier::parse(&w.vkey) {
                Ok(k) if k.public_key() == log.verifier().public_key() => {
                    tracing::warn!(witness = %w.name, "membership log: the directory lists the log's own key as a witness; ignored");
                }
                Ok(k) if !witnesses.contains(&k) => witnesses.push(k),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(witness = %w.name, error = %e, "membership log: a witness key in the directory does not parse");
                }
            }
        }
        Self {
            witnesses,
            quorum: d.witness_quorum as usize,
        }
    }

    /// Distinct listed witnesses (by public key) with a valid cosignature
    /// on `note`.
    pub fn cosigned_by(&self, note: &str) -> usize {
        let Ok(n) = caliopen_tlog::Note::parse(note.as_bytes()) else {
            return 0;
        };
        let mut keys: Vec<&[u8; 32]> = Vec::new();
        for w in &self.witnesses {
            if matches!(w.timestamp(&n), Ok(Some(_))) && !keys.contains(&w.public_key()) {
                keys.push(w.public_key());
            }
        }
        keys.len()
    }

    /// Whether `note` meets the quorum.
    pub fn check(&self, note: &str) -> Result<(), super::LogError> {
        if self.quorum == 0 {
            return Ok(());
        }
        let have = self.cosigned_by(note);
        if have < self.quorum {
            return Err(super::LogError::Quorum {
                have,
                need: self.quorum,
            });
        }
        Ok(())
    }
}

/// The cosignature/v1 verifier key of a witness key.
pub fn verifier_key_of(signer: &Signer) -> CosignatureVerifier {
    CosignatureVerifier::new(signer.verifier().name(), *signer.verifier().public_key())
}

/// Reads the witness key at `path` (PKCS#8 DER), making it on first use
/// (mode 0600, written to a temporary file, synced, renamed), named `name`.
pub fn load_or_create_key(path: &Path, name: &str) -> Result<Signer, WitnessRefusal> {
    match std::fs::read(path) {
        Ok(der) => Signer::from_pkcs8(name, &der)
            .map_err(|e| WitnessRefusal::State(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, pkcs8) = Signer::generate(name)
                .map_err(|e| WitnessRefusal::State(format!("witness key: {e}")))?;
            if write_key(path, &pkcs8)? {
                Ok(signer)
            } else {
                // Another process (`caliopen witness key` while the daemon
                // starts) made it first: its key is the one.
                let der = std::fs::read(path).map_err(|e| state_err(path, e))?;
                Signer::from_pkcs8(name, &der)
                    .map_err(|e| WitnessRefusal::State(format!("{}: {e}", path.display())))
            }
        }
        Err(e) => Err(state_err(path, e)),
    }
}

/// Writes a new key at `path` unless one is there: a temporary file of
/// this process, synced, then linked to `path` (which fails when `path`
/// exists, so two processes never replace each other's key). Returns
/// false when another key was there first.
fn write_key(path: &Path, der: &[u8]) -> Result<bool, WitnessRefusal> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
    static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| state_err(&tmp, e))?;
    f.write_all(der)
        .and_then(|_| f.sync_all())
        .map_err(|e| state_err(&tmp, e))?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(state_err(path, e)),
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| state_err(dir, e))?;
    Ok(true)
}

fn state_err(path: &Path, e: std::io::Error) -> WitnessRefusal {
    WitnessRefusal::State(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use caliopen_tlog::{consistency_proof, sign_timestamped, MemoryTree};

    const ORIGIN: &str = "caliopen.invalid/test/00000000";

    struct Log {
        signer: Signer,
        tree: MemoryTree,
    }

    impl Log {
        fn new() -> Self {
            Self {
                signer: Signer::from_seed(ORIGIN, &[7; 32]).unwrap(),
                tree: MemoryTree::new(),
            }
        }
        fn grow(&mut self, n: u64) {
            for _ in 0..n {
                let i = self.tree.size();
                self.tree.push_entry(&i.to_be_bytes());
            }
        }
        fn note_at(&self, size: u64, t: u64) -> String {
            let c = Checkpoint {
                origin: ORIGIN.into(),
                size,
                root: self.tree.root_at(size),
                extensions: vec![],
            };
            sign_timestamped(&c, &self.signer, t).unwrap()
        }
        fn body(&self, old: u64, size: u64) -> String {
            let proof = if old == 0 || old == size {
                vec![]
            } else {
                consistency_proof(&self.tree, old, size).unwrap()
            };
            request_body(old, &proof, &self.note_at(size, 1000 + size))
        }
        fn key(&self) -> LogKey {
            LogKey::new(self.signer.verifier().clone())
        }
    }

    fn witness(dir: &Path, log: &Log) -> Witness {
        let w = Signer::from_seed("alpha.test/witness", &[9; 32]).unwrap();
        Witness::open(dir, w, vec![log.key()]).unwrap()
    }

    fn check_line(w: &Witness, body: &str, line: &str, at: u64) {
        let note = parse_request(body.as_bytes()).unwrap().note;
        let full = format!("{}{line}", std::str::from_utf8(note).unwrap());
        let n = Note::parse(full.as_bytes()).unwrap();
        assert_eq!(w.verifier_key().timestamp(&n).unwrap(), Some(at));
        // The line parses as a note signature line of the witness's name.
        assert!(line.starts_with("\u{2014} alpha.test/witness "), "{line}");
        assert!(line.ends_with('\n') && line.lines().count() == 1);
    }

    #[test]
    fn cosigns_first_grown_and_heartbeat_checkpoints_and_keeps_state() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Log::new();
        log.grow(5);
        let mut w = witness(tmp.path(), &log);
        // First checkpoint: old 0, no proof.
        let b = log.body(0, 5);
        let line = w.add_checkpoint(b.as_bytes(), 100).unwrap();
        check_line(&w, &b, &line, 100);
        assert_eq!(w.witnessed(ORIGIN).unwrap().size, 5);
        // A grown tree with its proof, for sizes across a power of two.
        for (old, new) in [(5, 8), (8, 13), (13, 300)] {
            log.grow(new - log.tree.size());
            let b = log.body(old, new);
            let line = w.add_checkpoint(b.as_bytes(), 100 + new).unwrap();
            check_line(&w, &b, &line, 100 + new);
        }
        // Same size, same root, a later note: a heartbeat.
        let b = request_body(300, &[], &log.note_at(300, 5000));
        let line = w.add_checkpoint(b.as_bytes(), 6000).unwrap();
        check_line(&w, &b, &line, 6000);
        // The state survives a reopen: the old size must now be 300.
        drop(w);
        let mut w = witness(tmp.path(), &log);
        assert_eq!(w.witnessed(ORIGIN).unwrap().size, 300);
        assert_eq!(
            w.add_checkpoint(log.body(0, 300).as_bytes(), 7000),
            Err(WitnessRefusal::Conflict { held: 300 })
        );
        log.grow(1);
        assert!(w
            .add_checkpoint(log.body(300, 301).as_bytes(), 7001)
            .is_ok());
        // The key is kept too.
        let k = tmp.path().join("witness.key");
        let a = load_or_create_key(&k, "alpha.test/witness").unwrap();
        let b = load_or_create_key(&k, "alpha.test/witness").unwrap();
        assert_eq!(a.verifier(), b.verifier());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let vk = verifier_key_of(&a);
        assert_eq!(CosignatureVerifier::parse(&vk.to_string()).unwrap(), vk);
        // Made at once by several (threads here, processes in life): all
        // end with the one key on disk.
        let k2 = tmp.path().join("raced.key");
        let keys: Vec<_> = (0..8)
            .map(|_| {
                let k2 = k2.clone();
                std::thread::spawn(move || load_or_create_key(&k2, "alpha.test/witness"))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().unwrap().verifier().clone())
            .collect();
        let on_disk = load_or_create_key(&k2, "alpha.test/witness").unwrap();
        assert!(keys.iter().all(|v| v == on_disk.verifier()));
    }

    #[test]
    fn refuses_rollbacks_bad_proofs_bad_signatures_and_forks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Log::new();
        log.grow(20);
        let mut w = witness(tmp.path(), &log);
        w.add_checkpoint(log.body(0, 10).as_bytes(), 1).unwrap();
        w.add_checkpoint(log.body(10, 20).as_bytes(), 2).unwrap();
        // A rollback: the client's old size is not ours (409 with ours), or
        // ours but larger than the checkpoint (400).
        let r = w
            .add_checkpoint(log.body(10, 15).as_bytes(), 3)
            .unwrap_err();
        assert_eq!(r, WitnessRefusal::Conflict { held: 20 });
        assert_eq!((r.status(), r.body().as_str()), (409, "20\n"));
        let b = request_body(20, &[], &log.note_at(15, 3));
        assert_eq!(w.add_checkpoint(b.as_bytes(), 3).unwrap_err().status(), 400);
        // A bad proof (422): a hash flipped, or the proof of other sizes.
        log.grow(10);
        let mut proof = consistency_proof(&log.tree, 20, 30).unwrap();
        proof[0][0] ^= 1;
        let b = request_body(20, &proof, &log.note_at(30, 4));
        assert_eq!(
            w.add_checkpoint(b.as_bytes(), 4),
            Err(WitnessRefusal::BadProof { old: 20, new: 30 })
        );
        let other = consistency_proof(&log.tree, 19, 30).unwrap();
        let b = request_body(20, &other, &log.note_at(30, 4));
        assert_eq!(w.add_checkpoint(b.as_bytes(), 4).unwrap_err().status(), 422);
        // A fork: the same size with another root (409), and a larger tree
        // that does not extend ours (422).
        let mut fork = Log::new();
        fork.grow(19);
        fork.tree.push_entry(b"other");
        let b = request_body(20, &[], &fork.note_at(20, 5));
        assert_eq!(
            w.add_checkpoint(b.as_bytes(), 5),
            Err(WitnessRefusal::Conflict { held: 20 })
        );
        fork.grow(10);
        let b = request_body(20, &consistency_proof(&fork.tree, 20, 30).unwrap(), &{
            fork.note_at(30, 6)
        });
        assert_eq!(w.add_checkpoint(b.as_bytes(), 6).unwrap_err().status(), 422);
        // A bad signature (403): another key under the log's name, or a
        // signature altered; an unknown origin (404).
        let stranger = Signer::from_seed(ORIGIN, &[8; 32]).unwrap();
        let c = Checkpoint {
            origin: ORIGIN.into(),
            size: 30,
            root: log.tree.root_at(30),
            extensions: vec![],
        };
        let forged = sign_timestamped(&c, &stranger, 7).unwrap();
        let proof = consistency_proof(&log.tree, 20, 30).unwrap();
        let b = request_body(20, &proof, &forged);
        assert_eq!(w.add_checkpoint(b.as_bytes(), 7).unwrap_err().status(), 403);
        let good = log.note_at(30, 7);
        let n = Note::parse(good.as_bytes()).unwrap();
        let mut sig = n.signatures()[0].clone();
        sig.signature[3] ^= 1;
        let altered = format!("{}\n{}", n.text(), sig.line());
        let b = request_body(20, &proof, &altered);
        assert!(matches!(
            w.add_checkpoint(b.as_bytes(), 7),
            Err(WitnessRefusal::BadSignature(_))
        ));
        let elsewhere = Signer::from_seed("elsewhere.test/log", &[7; 32]).unwrap();
        let c2 = Checkpoint {
            origin: "elsewhere.test/log".into(),
            ..c.clone()
        };
        let b = request_body(0, &[], &sign_timestamped(&c2, &elsewhere, 7).unwrap());
        assert_eq!(w.add_checkpoint(b.as_bytes(), 7).unwrap_err().status(), 404);
        // Nothing refused changed the state.
        assert_eq!(w.witnessed(ORIGIN).unwrap().size, 20);
        assert!(w.add_checkpoint(log.body(20, 30).as_bytes(), 8).is_ok());
    }

    #[test]
    fn malformed_bodies_are_400() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Log::new();
        log.grow(4);
        let mut w = witness(tmp.path(), &log);
        let note = log.note_at(4, 1);
        let h = base64::encode(&[1u8; 32]);
        let too_many = format!("old 0\n{}\n{note}", format!("{h}\n").repeat(64));
        let huge = format!("old 0\n\n{note}{}", "x".repeat(MAX_BODY));
        for body in [
            String::new(),
            "old 0".to_owned(),
            format!("old 00\n\n{note}"),
            format!("old -1\n\n{note}"),
            format!("old  0\n\n{note}"),
            format!("new 0\n\n{note}"),
            format!("old 0\n{note}"),
            format!("old 0\nnot base64!\n\n{note}"),
            format!("old 0\n{}\n\n{note}", base64::encode(&[1u8; 31])),
            format!("old 0\n{h}\n\n{note}"),
            format!("old 5\n\n{note}"),
            format!("old 0\n\n{}", note.replace('\u{2014}', "-")),
            format!(
                "old 0\n\nnot a checkpoint\n\n{}",
                note.lines().last().unwrap()
            ),
            too_many,
            huge,
        ] {
            let r = w.add_checkpoint(body.as_bytes(), 1).unwrap_err();
            assert_eq!(r.status(), 400, "{body:?}: {r}");
        }
        assert!(w.witnessed(ORIGIN).is_none());
        // Split at every byte: a prefix without the log's whole signature
        // line is never taken.
        let good = log.body(0, 4);
        let dash = good.find('\u{2014}').unwrap();
        let signed = dash + good[dash..].find('\n').unwrap() + 1;
        for i in 0..signed {
            assert!(w.add_checkpoint(&good.as_bytes()[..i], 1).is_err(), "{i}");
        }
        assert!(w.add_checkpoint(good.as_bytes(), 1).is_ok());
    }

    /// The note of `body` with the cosignatures of `who` appended.
    fn cosigned(ws: &mut [Witness], body: &str, who: &[usize], at: u64) -> String {
        let mut out = std::str::from_utf8(parse_request(body.as_bytes()).unwrap().note)
            .unwrap()
            .to_owned();
        for &i in who {
            out.push_str(&ws[i].add_checkpoint(body.as_bytes(), at).unwrap());
        }
        out
    }

    /// The member side: a checkpoint that grows the tree is taken only
    /// with the directory's quorum of distinct listed witnesses.
    #[test]
    fn a_member_takes_a_grown_tree_only_with_the_quorum() {
        use super::super::view::{LogView, Offer};
        use super::super::LogError;
        use caliopen_proto::pb::directory::{Directory, DirectoryWitness};
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Log::new();
        log.grow(8);
        let mut ws: Vec<Witness> = (0..3u8)
            .map(|i| {
                let s = Signer::from_seed(&format!("w{i}.test/witness"), &[20 + i; 32]).unwrap();
                Witness::open(&tmp.path().join(format!("w{i}")), s, vec![log.key()]).unwrap()
            })
            .collect();
        let listed = |ws: &[Witness]| Directory {
            witnesses: ws
                .iter()
                .enumerate()
                .map(|(i, w)| DirectoryWitness {
                    name: format!("w{i}"),
                    vkey: w.verifier_key().to_string(),
                    url: "https://w.test/witness".into(),
                })
                .collect(),
            witness_quorum: 2,
            ..Default::default()
        };
        // w2 is not listed: its cosignature does not count.
        let policy = WitnessPolicy::from_directory(&listed(&ws[..2]), &log.key());
        assert_eq!(policy.witnesses.len(), 2);
        let mut view = LogView::open(&tmp.path().join("view"), log.key()).unwrap();
        view.set_witness_policy(policy);
        let quorum = |have| Err(LogError::Quorum { have, need: 2 });

        // The first checkpoint: the log's signature alone, or one listed
        // witness and an unlisted one, is not enough.
        let body = log.body(0, 8);
        let plain = cosigned(&mut ws, &body, &[], 10);
        assert_eq!(view.offer(&plain, None, None, 1), quorum(0));
        let one = cosigned(&mut ws, &body, &[0, 2], 10);
        assert_eq!(view.offer(&one, None, None, 1), quorum(1));
        // The same witness's line twice counts once.
        let line0 = one.lines().rev().nth(1).unwrap();
        assert!(line0.starts_with("\u{2014} w0.test/witness "), "{one}");
        let twice = format!("{one}{line0}\n");
        assert_eq!(view.offer(&twice, None, None, 1), quorum(1));
        // A forged line of the other listed witness does not count.
        let w1 = ws[1].add_checkpoint(log.body(0, 8).as_bytes(), 11).unwrap();
        let mut raw = base64::decode(w1.trim_end().rsplit(' ').next().unwrap()).unwrap();
        raw[20] ^= 1;
        let forged = format!("\u{2014} w1.test/witness {}\n", base64::encode(&raw));
        assert_eq!(
            view.offer(&format!("{one}{forged}"), None, None, 1),
            quorum(1)
        );
        let both = format!("{one}{w1}");
        assert_eq!(
            view.offer(&both, None, None, 1),
            Ok(Offer::Taken { grew: true })
        );

        // A grown tree needs the quorum too.
        log.grow(4);
        let mut path = consistency_proof(&log.tree, 8, 12).unwrap();
        path.insert(0, log.tree.root_at(8));
        let body = log.body(8, 12);
        let plain = cosigned(&mut ws, &body, &[], 20);
        assert_eq!(view.offer(&plain, None, Some(&path), 2), quorum(0));
        let full = cosigned(&mut ws, &body, &[0, 1], 20);
        assert_eq!(
            view.offer(&full, None, Some(&path), 2),
            Ok(Offer::Taken { grew: true })
        );
        // The same note with as many listed cosignatures, or fewer,
        // changes nothing (with more it replaces the held one: below).
        let more = cosigned(&mut ws, &log.body(12, 12), &[0, 1], 20);
        assert_eq!(view.offer(&more, None, None, 2), Ok(Offer::Unchanged));
        let held_before = view.held().unwrap().note.clone();
        assert_eq!(view.offer(&plain, None, None, 2), Ok(Offer::Unchanged));
        assert_eq!(view.held().unwrap().note, held_before);
        // A heartbeat of the same tree grows nothing: the log's signature
        // suffices.
        let heartbeat = log.note_at(12, 9999);
        assert_eq!(
            view.offer(&heartbeat, None, None, 3),
            Ok(Offer::Taken { grew: false })
        );
        // Then the same heartbeat cosigned: taken for its cosignature.
        let hb = cosigned(&mut ws, &request_body(12, &[], &heartbeat), &[0], 30);
        assert_eq!(
            view.offer(&hb, None, None, 3),
            Ok(Offer::Taken { grew: false })
        );
        assert_eq!(view.held().unwrap().note, hb);
        assert_eq!(view.offer(&heartbeat, None, None, 3), Ok(Offer::Unchanged));

        // The log's own key listed as a witness is ignored; without a
        // quorum in the directory, the log's signature suffices.
        let mut d = listed(&ws[..2]);
        d.witnesses.push(DirectoryWitness {
            name: "log".into(),
            vkey: CosignatureVerifier::for_log(log.key().verifier()).to_string(),
            url: String::new(),
        });
        assert_eq!(
            WitnessPolicy::from_directory(&d, &log.key())
                .witnesses
                .len(),
            2
        );
        d.witness_quorum = 0;
        view.set_witness_policy(WitnessPolicy::from_directory(&d, &log.key()));
        log.grow(1);
        let path = consistency_proof(&log.tree, 12, 13).unwrap();
        let plain = log.note_at(13, 10_000);
        assert_eq!(
            view.offer(&plain, None, Some(&path), 4),
            Ok(Offer::Taken { grew: true })
        );
    }
}

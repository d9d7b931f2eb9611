//! The member's view of the association's membership log: the newest
//! checkpoint it verified, kept on disk, and the proof of a split view once
//! one is found. Plain decisions over notes and proofs (no network); the
//! [`super::LogMonitor`] fetches the proofs these decisions ask for.

use super::evidence::{judge, PathVerdict, SplitView};
use super::witness::WitnessPolicy;
use caliopen_tlog::{open_timestamped, Checkpoint, CosignatureVerifier, Hash, Verifier};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File of the held checkpoint in the view's directory.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint.json";
/// File of the split-view proof, while one is held.
pub(crate) const SPLIT_VIEW_FILE: &str = "split-view.json";

/// Older heads remembered as proven consistent with the held one, so that
/// a peer replaying old checkpoints costs no proof fetch (in memory only).
pub(crate) const KNOWN_HEADS: usize = 1024;

/// Why a checkpoint, a proof or the view's state is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    /// Not a checkpoint of this log validly signed and dated by its key.
    #[error("checkpoint refused: {0}")]
    BadCheckpoint(String),
    /// The association offered a smaller tree than the one held.
    #[error("checkpoint refused: tree size {offered} rolls back the {held} held")]
    Rollback {
        /// Size offered.
        offered: u64,
        /// Size held.
        held: u64,
    },
    /// The consistency proof obtained does not belong to the tree the
    /// larger checkpoint signs (malformed, or leads to another root). Not a
    /// split view: it proves nothing.
    #[error("consistency proof from {old} to {new} refused: {why}")]
    BadProof {
        /// Smaller size.
        old: u64,
        /// Larger size.
        new: u64,
        /// What is wrong with it.
        why: String,
    },
    /// No consistency proof could be had (association unreachable, tiles
    /// missing): the checkpoint is neither taken nor held against the log.
    #[error("consistency proof from {old} to {new} unavailable: {why}")]
    Unverifiable {
        /// Smaller size.
        old: u64,
        /// Larger size.
        new: u64,
        /// Why.
        why: String,
    },
    /// A split-view proof pushed by a peer does not hold.
    #[error("split-view proof refused: {0}")]
    BadEvidence(String),
    /// The state on disk cannot be read, written or trusted.
    #[error("membership log state: {0}")]
    State(String),
    /// A checkpoint that grows the tree lacks the witness cosignatures the
    /// directory requires ([`WitnessPolicy`]).
    #[error(
        "checkpoint refused: {have} valid witness cosignature(s), the directory requires {need}"
    )]
    Quorum {
        /// Distinct listed witnesses whose cosignature verifies.
        have: usize,
        /// The quorum.
        need: usize,
    },
}

/// The checkpoint held, as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The signed note as received.
    pub note: String,
    /// What it states.
    pub checkpoint: Checkpoint,
    /// Its `cosignature/v1` time by the log key (Unix seconds): as of then,
    /// the association said this was its largest tree.
    pub timestamp: u64,
    /// Who it came from: a member id, or `None` for the association.
    pub source: Option<String>,
    /// Unix seconds when this member verified it.
    pub verified_at: i64,
}

/// What became of an offered checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// It is the held checkpoint now: a larger tree, proven consistent with
    /// the one held (`grew`), or the same tree with a later timestamp (a
    /// heartbeat: `grew` false).
    Taken {
        /// The tree grew (a new head worth gossiping).
        grew: bool,
    },
    /// Nothing new: the same head, not later, or an older head proven
    /// consistent with the held one (a peer behind us).
    Unchanged,
    /// A consistency proof from `old` to `new` leaves is needed to decide.
    NeedProof {
        /// Smaller size.
        old: u64,
        /// Larger size.
        new: u64,
    },
    /// It contradicts the held checkpoint: a split view, now held.
    SplitView(Box<SplitView>),
}

/// What is stored in [`CHECKPOINT_FILE`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    note: String,
    source: Option<String>,
    verified_at: i64,
}

/// The log key a member pins, from the association's `log.pub`
/// (`<origin>+<key id>+<base64 key>`): checkpoints must be signed by it and
/// dated by its `cosignature/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    note: Verifier,
    cosigner: CosignatureVerifier,
}

impl LogKey {
    /// Parses a verifier key line (surrounding whitespace ignored).
    pub fn parse(vkey: &str) -> Result<Self, LogError> {
        let note = Verifier::parse(vkey.trim())
            .map_err(|e| LogError::State(format!("log verifier key: {e}")))?;
        Ok(Self::new(note))
    }

    /// The key of a log whose signed-note verifier is `note`.
    pub fn new(note: Verifier) -> Self {
        let cosigner = CosignatureVerifier::for_log(&note);
        Self { note, cosigner }
    }

    /// The log's origin (its key name).
    pub fn origin(&self) -> &str {
        self.note.name()
    }

    /// The signed-note verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.note
    }

    /// The log's own timestamping key.
    pub fn cosigner(&self) -> &CosignatureVerifier {
        &self.cosigner
    }

    /// Opens a published checkpoint: signed by the key, origin its name,
    /// dated by its `cosignature/v1`.
    pub fn open(&self, note: &str) -> Result<(Checkpoint, u64), LogError> {
        open_timestamped(note.as_bytes(), &self.note)
            .map_err(|e| LogError::BadCheckpoint(e.to_string()))
    }
}

/// The member's view of the log. Not synchronised: the monitor serialises
/// offers.
#[derive(Debug)]
pub(crate) struct LogView {
    dir: PathBuf,
    key: LogKey,
    held: Option<Held>,
    split: Option<SplitView>,
    /// Heads proven to be prefixes of the held one (or to have been held).
    known: std::collections::HashSet<(u64, Hash)>,
    /// What a checkpoint that grows the tree must be cosigned by.
    witnesses: WitnessPolicy,
}

impl LogView {
    /// Opens (creating) the view kept in `dir`. A held checkpoint or
    /// split-view proof that does not verify with `key` (a changed key, a
    /// damaged file) is an error: the operator decides, nothing is dropped.
    pub(crate) fn open(dir: &Path, key: LogKey) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
        let mut view = Self {
            dir: dir.to_owned(),
            key,
            held: None,
            split: None,
            known: std::collections::HashSet::new(),
            witnesses: WitnessPolicy::default(),
        };
        let path = dir.join(CHECKPOINT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let s: Stored = serde_json::from_slice(&bytes)
                    .map_err(|e| LogError::State(format!("{}: {e}", path.display())))?;
                let (checkpoint, timestamp) = view.key.open(&s.note).map_err(|e| {
                    LogError::State(format!("{}: held checkpoint: {e}", path.display()))
                })?;
                view.held = Some(Held {
                    note: s.note,
                    checkpoint,
                    timestamp,
                    source: s.source,
                    verified_at: s.verified_at,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(state_err(&path, e)),
        }
        let path = dir.join(SPLIT_VIEW_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let sv: SplitView = serde_json::from_slice(&bytes)
                    .map_err(|e| LogError::State(format!("{}: {e}", path.display())))?;
                sv.verify(view.key.verifier()).map_err(|e| {
                    LogError::State(format!("{}: split-view proof: {e}", path.display()))
                })?;
                view.split = Some(sv);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(state_err(&path, e)),
        }
        Ok(view)
    }

    /// The pinned key.
    pub(crate) fn key(&self) -> &LogKey {
        &self.key
    }

    /// The checkpoint held.
    pub(crate) fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// The split-view proof held, if any.
    pub(crate) fn split_view(&self) -> Option<&SplitView> {
        self.split.as_ref()
    }

    /// Decides on `note` from `source` (`None`: the association). `path`
    /// is the prefix path a previous call asked for ([`Offer::NeedProof`]),
    /// or `None`. Takes, and writes durably, what it accepts.
    pub(crate) fn offer(
        &mut self,
        note: &str,
        source: Option<&str>,
        path: Option<&[Hash]>,
        now: i64,
    ) -> Result<Offer, LogError> {
        let (cp, ts) = self.key.open(note)?;
        let Some(held) = &self.held else {
            // The first checkpoint has nothing to be consistent with: it is
            // taken on the key's signature (trust on first use of the log,
            // the key itself being pinned at join).
            return self.take_grown(note, cp, ts, source, now);
        };
        let (h, rh) = (held.checkpoint.size, held.checkpoint.root);
        if cp.size == h {
            if cp.root != rh {
                return self.split(note, Vec::new(), source, now);
            }
            if ts > held.timestamp || self.more_cosigned(note, ts) {
                self.take(note, cp, ts, source, now)?;
                return Ok(Offer::Taken { grew: false });
            }
            return Ok(Offer::Unchanged);
        }
        if cp.size < h && source.is_some() && self.known.contains(&(cp.size, cp.root)) {
            return Ok(Offer::Unchanged);
        }
        if cp.size < h && source.is_none() {
            // The association's head must not go back. (A peer's older head
            // is checked below: a peer behind us may show a fork.)
            return Err(LogError::Rollback {
                offered: cp.size,
                held: h,
            });
        }
        let (old, new) = (cp.size.min(h), cp.size.max(h));
        // From an empty tree nothing needs proving (its head is the empty
        // root, or a lie `judge` sees).
        let path = match path {
            Some(p) => p,
            None if old == 0 => &[],
            None => return Ok(Offer::NeedProof { old, new }),
        };
        let verdict = if cp.size > h {
            judge(h, &rh, cp.size, &cp.root, path)
        } else {
            judge(cp.size, &cp.root, h, &rh, path)
        };
        match verdict {
            PathVerdict::Consistent if cp.size > h => self.take_grown(note, cp, ts, source, now),
            PathVerdict::Consistent => {
                self.remember(cp.size, cp.root);
                Ok(Offer::Unchanged)
            }
            PathVerdict::Inconsistent => self.split(note, path.to_vec(), source, now),
            PathVerdict::Bogus(why) => Err(LogError::BadProof {
                old,
                new,
                why: why.to_owned(),
            }),
        }
    }

    /// Takes a split-view proof shown by a peer, once verified, when none is
    /// held. Returns whether it was taken.
    pub(crate) fn adopt_split_view(&mut self, sv: SplitView) -> Result<bool, LogError> {
        sv.verify(self.key.verifier())
            .map_err(|e| LogError::BadEvidence(e.to_string()))?;
        if self.split.is_some() {
            return Ok(false);
        }
        write_atomic(
            &self.dir,
            SPLIT_VIEW_FILE,
            &serde_json::to_vec_pretty(&sv).map_err(|e| LogError::State(e.to_string()))?,
        )?;
        self.split = Some(sv);
        Ok(true)
    }

    /// The operator's decision after a split view: the proof is moved aside
    /// (kept as `split-view.<unix time>.json`); with `forget_head` the held
    /// checkpoint is dropped too, so that the next one is taken afresh (after
    /// the association rebuilt its log, say). Returns whether a proof was
    /// held.
    pub(crate) fn clear_split_view(
        &mut self,
        forget_head: bool,
        now: i64,
    ) -> Result<bool, LogError> {
        let had = self.split.take().is_some();
        if had {
            let from = self.dir.join(SPLIT_VIEW_FILE);
            let to = self.dir.join(format!("split-view.{now}.json"));
            std::fs::rename(&from, &to).map_err(|e| state_err(&from, e))?;
            sync_dir(&self.dir)?;
        }
        if forget_head && self.held.take().is_some() {
            self.known.clear();
            let p = self.dir.join(CHECKPOINT_FILE);
            std::fs::remove_file(&p).map_err(|e| state_err(&p, e))?;
            sync_dir(&self.dir)?;
        }
        Ok(had)
    }

    /// Sets what a checkpoint that grows the tree must be cosigned by
    /// (from the directory held; see [`super::LogMonitor::offer`]).
    pub(crate) fn set_witness_policy(&mut self, policy: WitnessPolicy) {
        self.witnesses = policy;
    }

    /// Whether `note`, dated `ts`, is the held checkpoint (same tree, same
    /// time) with more valid cosignatures of listed witnesses: the
    /// association publishes a checkpoint at once and again once its
    /// witnesses cosigned it.
    fn more_cosigned(&self, note: &str, ts: u64) -> bool {
        self.held.as_ref().is_some_and(|h| {
            ts == h.timestamp
                && self.witnesses.cosigned_by(note) > self.witnesses.cosigned_by(&h.note)
        })
    }

    /// Takes a checkpoint that grows the tree (or is the first), once it
    /// carries the witness cosignatures required.
    fn take_grown(
        &mut self,
        note: &str,
        checkpoint: Checkpoint,
        timestamp: u64,
        source: Option<&str>,
        now: i64,
    ) -> Result<Offer, LogError> {
        self.witnesses.check(note)?;
        self.take(note, checkpoint, timestamp, source, now)?;
        Ok(Offer::Taken { grew: true })
    }

    fn remember(&mut self, size: u64, root: Hash) {
        if self.known.len() >= KNOWN_HEADS {
            self.known.clear();
        }
        self.known.insert((size, root));
    }

    fn take(
        &mut self,
        note: &str,
        checkpoint: Checkpoint,
        timestamp: u64,
        source: Option<&str>,
        now: i64,
    ) -> Result<(), LogError> {
        let stored = Stored {
            note: note.to_owned(),
            source: source.map(str::to_owned),
            verified_at: now,
        };
        write_atomic(
            &self.dir,
            CHECKPOINT_FILE,
            &serde_json::to_vec_pretty(&stored).map_err(|e| LogError::State(e.to_string()))?,
        )?;
        // Every head held before is a prefix of this one (proven step by step).
        if let Some(h) = &self.held {
            let (size, root) = (h.checkpoint.size, h.checkpoint.root);
            if size < checkpoint.size {
                self.remember(size, root);
            }
        }
        self.held = Some(Held {
            note: stored.note,
            checkpoint,
            timestamp,
            source: stored.source,
            verified_at: now,
        });
        Ok(())
    }

    fn split(
        &mut self,
        note: &str,
        proof: Vec<Hash>,
        source: Option<&str>,
        now: i64,
    ) -> Result<Offer, LogError> {
        let first = self
            .held
            .as_ref()
            .map(|h| h.note.clone())
            .unwrap_or_default();
        let sv = SplitView {
            first,
            second: note.to_owned(),
            proof,
            source: source.map(str::to_owned),
            detected_at: now,
        };
        // A second split while one is held changes nothing: the first proof
        // stands until the operator clears it.
        if self.split.is_none() {
            self.adopt_split_view(sv.clone())?;
        }
        Ok(Offer::SplitView(Box::new(sv)))
    }
}

fn state_err(path: &Path, e: std::io::Error) -> LogError {
    LogError::State(format!("{}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| state_err(dir, e))
}

/// Writes `dir/name` so that a crash leaves the old or the new content:
/// a temporary file, synced, renamed over, the directory synced.
pub(super) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| state_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| state_err(&tmp, e))?;
    drop(f);
    let to = dir.join(name);
    std::fs::rename(&tmp, &to).map_err(|e| state_err(&to, e))?;
    sync_dir(dir)
}

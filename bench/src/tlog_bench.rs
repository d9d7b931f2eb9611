//! The membership log at mesh scale (issue 18): how long a revocation takes
//! to reach every member as a verified checkpoint, how long a split view
//! takes to be known by every member, what a checkpoint with witness
//! cosignatures costs to verify, and how big the log and its proofs grow.
//!
//! The members are the scale benchmark's real nodes (QUIC, mutual TLS),
//! each with a real [`LogMonitor`] (state on disk, fsync per new head);
//! their proofs come from a mirror of the association's log in this process
//! instead of HTTPS tiles, so the figures are the gossip, the verification
//! and the durable write, not the association's HTTP service.

use crate::mesh::{Fed, Member};
use crate::report::{ms, Report};
use anyhow::{bail, Context, Result};
use caliopen_ca::tlog::cosignature::cosign;
use caliopen_ca::tlog::{
    consistency_proof, inclusion_proof, root, sign_timestamped, Checkpoint, CosignatureVerifier,
    Hash, MemoryTree, Note, Signer,
};
use caliopen_ca::RevokeTarget;
use caliopen_federation::BoxFuture;
use caliopen_federation::LogMonitor;
use caliopen_federation::{Leaf, LogKey, ProofSource};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The association's log, mirrored in memory (entries and tree).
#[derive(Debug, Default)]
struct Mirror {
    tree: MemoryTree,
    entries: Vec<Vec<u8>>,
    checkpoint: String,
}

#[derive(Debug, Clone)]
struct MirrorProofs(Arc<Mutex<Mirror>>);

impl MirrorProofs {
    fn refresh(&self, fed: &Fed) -> Result<()> {
        let entries = fed.ca.log_entry_bytes()?;
        let mut m = self.0.lock().expect("mirror");
        for e in &entries[m.entries.len()..] {
            m.tree.push_entry(e);
        }
        m.entries = entries;
        m.checkpoint = fed.ca.log_checkpoint()?;
        Ok(())
    }
}

impl ProofSource for MirrorProofs {
    fn prefix_path(&self, old: u64, new: u64) -> BoxFuture<Result<Vec<Hash>, String>> {
        let m = self.0.lock().expect("mirror");
        let r = consistency_proof(&m.tree, old, new)
            .map_err(|e| e.to_string())
            .and_then(|mut p| {
                if old.is_power_of_two() {
                    p.insert(0, root(&m.tree, old).map_err(|e| e.to_string())?);
                }
                Ok(p)
            });
        Box::pin(async move { r })
    }
    fn leaf(&self, index: u64, size: u64) -> BoxFuture<Result<Leaf, String>> {
        let m = self.0.lock().expect("mirror");
        let r = inclusion_proof(&m.tree, index, size)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                let e = m.entries.get(index as usize).ok_or("no such entry")?;
                Ok((e.clone(), p))
            });
        Box::pin(async move { r })
    }
    fn checkpoint(&self) -> BoxFuture<Result<String, String>> {
        let c = self.0.lock().expect("mirror").checkpoint.clone();
        Box::pin(async move { Ok(c) })
    }
}

fn log_signer(fed: &Fed) -> Result<Signer> {
    use base64::Engine;
    let text = std::fs::read_to_string(fed.ca.dir().join("log.key.pem"))?;
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD.decode(b64)?;
    Ok(Signer::from_pkcs8(fed.ca.log_verifier().name(), &der)?)
}

fn unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn until_all(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> usize,
    n: usize,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let k = done();
        if k >= n {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!("{what}: {k} of {n} members after {limit:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Runs on the scale benchmark's connected members (`members[0]` and
/// `[1]` are the hubs everyone dialed; `skip` are members no longer
/// there, e.g. the one revoked by the CRL row).
pub async fn at_scale(
    work: &std::path::Path,
    fed: &Fed,
    members: &[&Member],
    report: &mut Report,
) -> Result<()> {
    let n = members.len();
    let case = format!("{} members", n + 1);
    let mirror = MirrorProofs(Arc::default());
    mirror.refresh(fed)?;
    let key = LogKey::parse(&fed.ca.log_verifier().to_string())?;
    let dirs = tempfile::tempdir_in(work)?;
    let mut monitors = Vec::with_capacity(n);
    let first = mirror.0.lock().expect("mirror").checkpoint.clone();
    for m in members {
        let mon = LogMonitor::open(
            &dirs.path().join(&m.id),
            key.clone(),
            Arc::new(mirror.clone()),
            Some(m.trust.clone()),
        )?;
        mon.offer(&first, None).await?;
        m.node.attach_log(mon.clone());
        monitors.push(mon);
    }

    // A revocation: the association's new checkpoint reaches one member (as
    // its Watch stream would carry it); mesh gossip does the rest, each
    // member checking consistency with the head it holds.
    let victim = members.last().context("no members")?;
    fed.ca.revoke(
        &RevokeTarget::Serial(victim.serial.clone()),
        "keyCompromise",
    )?;
    mirror.refresh(fed)?;
    let (note, size) = {
        let m = mirror.0.lock().expect("mirror");
        (m.checkpoint.clone(), m.tree.size())
    };
    let entry = monitors.get(2).context("need three members")?;
    entry.offer(&note, None).await?;
    let took = until_all(
        "revocation checkpoint",
        Duration::from_secs(60),
        || {
            monitors
                .iter()
                .filter(|m| m.head().is_some_and(|h| h.0 >= size))
                .count()
        },
        n,
    )
    .await?;
    report.add(
        "membership-log",
        &case,
        "revocation → verified ms",
        ms(took),
        Some("<= 2000"),
        &format!(
            "the revocation's checkpoint offered to one member (as by Watch); mesh gossip until all {n} members hold it, each after a consistency proof and an fsync'd write (target ≤ 2 s, as the CRL)"
        ),
    );

    // A split view: the log key signs a second checkpoint of the same size
    // with another root (what a coerced association shows one member).
    let signer = log_signer(fed)?;
    let forged = sign_timestamped(
        &Checkpoint {
            origin: signer.verifier().name().to_owned(),
            size,
            root: [0x5a; 32],
            extensions: vec![],
        },
        &signer,
        unix() + 1,
    )?;
    let _ = entry.offer(&forged, None).await;
    let took = until_all(
        "split view",
        Duration::from_secs(60),
        || monitors.iter().filter(|m| m.split_view().is_some()).count(),
        n,
    )
    .await?;
    report.add(
        "membership-log",
        &case,
        "split view → all ms",
        ms(took),
        Some("<= 2000"),
        &format!(
            "a forged checkpoint (same size, other root) shown to one member; its proof pushed over the mesh until all {n} members hold it verified, directory updates suspended (target ≤ 2 s)"
        ),
    );
    Ok(())
}

/// Checkpoint cost with witnesses and log and proof sizes (no network).
pub fn sizes_and_costs(report: &mut Report, quick: bool) -> Result<()> {
    // A checkpoint note with the log's signature, its timestamp and 10
    // witness cosignatures: what a member verifies for each new head.
    let log = Signer::from_seed("bench.invalid/log", &[7; 32])?;
    let witnesses: Vec<Signer> = (0..10u8)
        .map(|i| Signer::from_seed(&format!("witness{i}.bench.invalid"), &[i + 20; 32]))
        .collect::<std::result::Result<_, _>>()?;
    let c = Checkpoint {
        origin: "bench.invalid/log".into(),
        size: 1_000_000,
        root: [9; 32],
        extensions: vec![],
    };
    let t = unix();
    let base = sign_timestamped(&c, &log, t)?;
    let text = Note::parse(base.as_bytes())?.text().to_owned();
    let rounds = if quick { 200 } else { 2000 };
    let t0 = Instant::now();
    let mut note = base.clone();
    for _ in 0..rounds {
        note = base.clone();
        for w in &witnesses {
            note.push_str(&cosign(w, &text, t)?.line());
        }
    }
    let sign_us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let verifiers: Vec<CosignatureVerifier> = witnesses
        .iter()
        .map(|w| CosignatureVerifier::new(w.verifier().name(), *w.verifier().public_key()))
        .collect();
    let t0 = Instant::now();
    for _ in 0..rounds {
        let (cp, _) = caliopen_ca::tlog::open_timestamped(note.as_bytes(), log.verifier())?;
        let parsed = Note::parse(note.as_bytes())?;
        let mut ok = 0;
        for v in &verifiers {
            if v.timestamp(&parsed)?.is_some() {
                ok += 1;
            }
        }
        if ok != 10 || cp.size != c.size {
            bail!("only {ok} cosignatures verified");
        }
    }
    let verify_us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    report.add(
        "membership-log",
        "checkpoint + 10 witnesses",
        "verify µs",
        verify_us,
        None,
        &format!(
            "parse and verify the log signature, its timestamp and 10 cosignature/v1 lines ({} bytes); making the 10 cosignatures: {sign_us:.0} µs",
            note.len()
        ),
    );

    // Log and proof sizes: an issuance entry is ~1 KiB (certificate DER
    // and framing); revocations are ~40 bytes. Simulated trees of 10,000 and
    // 1,000,000 entries.
    let sizes: &[u64] = if quick {
        &[10_000]
    } else {
        &[10_000, 1_000_000]
    };
    for &n in sizes {
        let mut tree = MemoryTree::new();
        let mut bytes = 0u64;
        for i in 0..n {
            let len = if i % 10 == 9 { 40 } else { 1_100 };
            let mut e = vec![0u8; len];
            e[..8].copy_from_slice(&i.to_be_bytes());
            bytes += len as u64;
            tree.push_entry(&e);
        }
        let hashes: u64 = tree.levels().iter().map(|l| l.len() as u64).sum();
        let incl = inclusion_proof(&tree, n / 3, n)?.len();
        let cons = consistency_proof(&tree, n / 2 + 1, n)?.len();
        // Tiles a member fetches to check one peer's certificate: the entry
        // bundle and one hash tile per tile level.
        let levels = (64 - (n - 1).leading_zeros()).div_ceil(8);
        report.add(
            "membership-log",
            &format!("{n} entries"),
            "log MiB",
            (bytes + hashes * 32) as f64 / 1048576.0,
            None,
            &format!(
                "entries {:.1} MiB + {hashes} stored hashes; inclusion proof {incl} hashes ({} B), consistency proof {cons} hashes ({} B); an inclusion check fetches 1 entry bundle (~270 KiB) + {levels} hash tiles (≤ 8 KiB each), full ones cached",
                bytes as f64 / 1048576.0,
                incl * 32,
                cons * 32
            ),
        );
    }
    Ok(())
}

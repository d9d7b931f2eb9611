//! The membership log kept by the association: every membership change is
//! an entry in the same commit as the change, each commit signs a new
//! checkpoint, the directory names the size it covers, and associations
//! made before the log get their records as its first entries.

use caliopen_ca::tlog::{self, Checkpoint, Entry, EntryKind, MemoryTree, Verifier};
use caliopen_ca::{files, internal, Authority, RevokeTarget, Settings, SignRequest};
use caliopen_proto::pb::directory::{Directory, SignedDirectory};
use prost::Message;
use rcgen::{CertificateParams, KeyPair};
use std::path::Path;

fn csr(key: &KeyPair, domain: &str) -> Vec<u8> {
    CertificateParams::new(vec![domain.to_owned()])
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

fn sign(
    ca: &Authority,
    member: &str,
    key: &KeyPair,
    at: time::OffsetDateTime,
) -> caliopen_ca::Issued {
    internal::sign_at(
        ca,
        &SignRequest {
            csr: csr(key, &format!("{member}.test")),
            member_id: member.into(),
            charter_version: "1.0".into(),
            successor: None,
            endpoints: vec!["127.0.0.1:7443".into()],
            days: None,
        },
        at,
    )
    .expect("sign")
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

fn verifier(dir: &Path) -> Verifier {
    let text = std::fs::read_to_string(dir.join(files::LOG_PUB)).expect("log.pub");
    Verifier::parse(text.trim_end()).expect("verifier key")
}

/// The entries as stored, rebuilt as a tree.
fn rebuild(ca: &Authority) -> (Vec<Entry>, MemoryTree) {
    let mut tree = MemoryTree::new();
    let mut entries = Vec::new();
    for e in export(ca) {
        tree.push_entry(&e);
        entries.push(Entry::decode(&e).expect("decode"));
    }
    (entries, tree)
}

fn export(ca: &Authority) -> Vec<Vec<u8>> {
    ca.log_entry_bytes().expect("entry bytes")
}

/// A small association with every kind of change: 3 issuances, a renewal,
/// a revocation, a baseline.
fn populated(dir: &Path) -> (Authority, Vec<String>) {
    let ca = Authority::init(dir, "Log Test", 3650, Settings::default()).expect("init");
    let keys: Vec<KeyPair> = (0..3).map(|_| KeyPair::generate().expect("key")).collect();
    let mut serials = Vec::new();
    let mut pems = Vec::new();
    // Distinct issuance seconds, so that the order migration recovers from
    // the records is the order of the operations.
    let t0 = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    for (i, k) in keys.iter().enumerate() {
        let issued = sign(
            &ca,
            &format!("m{i}"),
            k,
            t0 + time::Duration::seconds(i as i64),
        );
        serials.push(issued.record.serial.clone());
        pems.push(issued.record.certificate_pem);
    }
    let renewed = internal::renew_at(
        &ca,
        &der(&pems[0]),
        &csr(&keys[0], "m0.test"),
        t0 + time::Duration::seconds(10),
    )
    .expect("renew");
    serials.push(renewed.record.serial.clone());
    ca.revoke(&RevokeTarget::Serial(serials[1].clone()), "keyCompromise")
        .expect("revoke");
    ca.set_baseline("0.2.0").expect("baseline");
    (ca, serials)
}

#[test]
fn every_change_is_logged_and_signed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("assoc");
    let (ca, serials) = populated(&dir);

    // The key files: private 0600, verifier public and matching.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(files::LOG_KEY))
        .expect("log key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let v = verifier(&dir);
    assert_eq!(&v, ca.log_verifier());

    let kinds: Vec<&str> = ca
        .log_entries()
        .expect("entries")
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "issuance",
            "issuance",
            "issuance",
            "renewal",
            "revocation",
            "baseline"
        ]
    );
    let infos = ca.log_entries().expect("entries");
    assert_eq!(infos[0].serial.as_deref(), Some(serials[0].as_str()));
    assert_eq!(infos[0].member_id.as_deref(), Some("m0"));
    assert_eq!(infos[3].renewed_from.as_deref(), Some(serials[0].as_str()));
    assert_eq!(infos[4].serial.as_deref(), Some(serials[1].as_str()));
    assert_eq!(infos[4].reason.as_deref(), Some("keyCompromise"));
    assert_eq!(infos[5].min_software_version.as_deref(), Some("0.2.0"));

    let (entries, tree) = rebuild(&ca);
    assert_eq!(entries.len(), 6);
    if let EntryKind::Issuance { cert_der } = &entries[1].kind {
        let rec = ca
            .list()
            .expect("list")
            .into_iter()
            .find(|e| e.record.serial == serials[1])
            .expect("record");
        assert_eq!(cert_der, &der(&rec.record.certificate_pem));
    } else {
        panic!("entry 1 is not an issuance");
    }

    // The checkpoint: signed by the log key, over the recomputed head.
    let cp = ca.log_checkpoint().expect("checkpoint");
    let (c, _) = Checkpoint::open(cp.as_bytes(), &v).expect("verifies");
    assert_eq!(c.size, 6);
    assert_eq!(c.root, tree.root_at(6));
    assert_eq!(c.origin, v.name());
    assert_eq!(ca.published().log_size, 6);
    assert_eq!(*ca.published().checkpoint, cp);
    let ok = ca.verify_log().expect("verify");
    assert_eq!((ok.size, ok.root), (6, c.root));

    // Every entry is provably included in the checkpoint's tree.
    for (i, e) in export(&ca).iter().enumerate() {
        let p = tlog::inclusion_proof(&tree, i as u64, 6).expect("proof");
        tlog::verify_inclusion(&tlog::leaf_hash(e), i as u64, 6, &p, &c.root).expect("included");
    }

    // The directory names the log size it reflects.
    let signed = SignedDirectory::decode(ca.published().directory.as_slice()).expect("signed");
    let d = Directory::decode(signed.directory.as_slice()).expect("directory");
    assert_eq!(d.log_size, 6);

    // A revocation later: the new checkpoint is consistent with the old.
    ca.revoke(&RevokeTarget::Serial(serials[2].clone()), "")
        .expect("revoke");
    let cp2 = ca.log_checkpoint().expect("checkpoint");
    let (c2, _) = Checkpoint::open(cp2.as_bytes(), &v).expect("verifies");
    assert_eq!(c2.size, 7);
    let (_, tree2) = rebuild(&ca);
    let p = tlog::consistency_proof(&tree2, 6, 7).expect("proof");
    tlog::verify_consistency(6, 7, &c.root, &c2.root, &p).expect("consistent");
    // Revoking again changes nothing, logs nothing.
    ca.revoke(&RevokeTarget::Serial(serials[2].clone()), "")
        .expect("revoke");
    assert_eq!(ca.published().log_size, 7);
    // A refused operation logs nothing either.
    assert!(ca.set_baseline("not a version").is_err());
    assert_eq!(ca.published().log_size, 7);
    ca.verify_log().expect("verify");
}

#[test]
fn an_association_older_than_the_log_is_migrated_at_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("assoc");
    let (ca, serials) = populated(&dir);
    // Make the state an association older than the log left: no log trees,
    // no log key.
    internal::wipe_log(&ca).expect("wipe");
    drop(ca);
    std::fs::remove_file(dir.join(files::LOG_KEY)).expect("rm key");
    std::fs::remove_file(dir.join(files::LOG_PUB)).expect("rm pub");

    let ca = Authority::open(&dir, Settings::default()).expect("open migrates");
    assert!(
        dir.join(files::LOG_KEY).exists(),
        "log key made at first open"
    );
    let infos = ca.log_entries().expect("entries");
    let kinds: Vec<&str> = infos.iter().map(|e| e.kind).collect();
    // Records in issuance order, then the revocation, then the baseline.
    assert_eq!(
        kinds,
        [
            "issuance",
            "issuance",
            "issuance",
            "renewal",
            "revocation",
            "baseline"
        ]
    );
    let order: Vec<&str> = infos[..4]
        .iter()
        .map(|e| e.serial.as_deref().expect("serial"))
        .collect();
    assert_eq!(
        order,
        serials.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(infos[4].serial.as_deref(), Some(serials[1].as_str()));
    let ok = ca.verify_log().expect("verify");
    assert_eq!(ok.size, 6);
    let audit = std::fs::read_to_string(dir.join(files::AUDIT_LOG)).expect("audit");
    assert!(audit.contains("\"log_migrated\""));
    // Opening again migrates nothing more.
    drop(ca);
    let ca = Authority::open(&dir, Settings::default()).expect("reopen");
    assert_eq!(ca.published().log_size, 6);
    drop(ca);

    // Losing the key of an existing log is an error, not a new key.
    std::fs::remove_file(dir.join(files::LOG_KEY)).expect("rm key");
    let err = Authority::open(&dir, Settings::default()).expect_err("refused");
    assert!(
        err.to_string().contains("restore it from the backup"),
        "{err}"
    );
}

#[test]
fn verify_finds_a_tampered_entry() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("assoc");
    let (ca, _) = populated(&dir);
    drop(ca);
    {
        let db = sled::open(dir.join(files::STATE)).expect("sled");
        let t = db.open_tree("log_entries").expect("tree");
        let mut v = t
            .get(2u64.to_be_bytes())
            .expect("get")
            .expect("entry")
            .to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        t.insert(2u64.to_be_bytes(), v).expect("insert");
        db.flush().expect("flush");
    }
    let ca = Authority::open(&dir, Settings::default()).expect("open");
    let err = ca.verify_log().expect_err("tampered");
    assert!(err.to_string().contains("log verification failed"), "{err}");
}

/// An implementation we did not write checks the checkpoint signature:
/// Python's `cryptography` (`.ci/run` installs it; missing, the test fails).
#[test]
fn python_verifies_the_checkpoint_signature() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "python3 with the cryptography module is needed: `python3 -m pip install cryptography` (.ci/run installs it)"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("assoc");
    let (ca, _) = populated(&dir);
    let cp = ca.log_checkpoint().expect("checkpoint");
    let vkey = ca.log_verifier().to_string();
    let script = r#"
import sys, base64, hashlib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
vkey, note = sys.argv[1], open(sys.argv[2], encoding="utf-8").read()
name, keyid, key = vkey.split("+", 2)
raw = base64.b64decode(key)
assert raw[0] == 1 and len(raw) == 33
pub = raw[1:]
assert hashlib.sha256(name.encode() + b"\n\x01" + pub).digest()[:4].hex() == keyid
text, sigs = note.rsplit("\n\n", 1)
text += "\n"
lines = text.split("\n")
assert lines[0] == name and int(lines[1]) >= 0 and len(base64.b64decode(lines[2])) == 32
ok = 0
for line in sigs.splitlines():
    assert line.startswith("\u2014 ")
    n, b64 = line[2:].split(" ")
    sig = base64.b64decode(b64)
    if n == name and sig[:4].hex() == keyid:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig[4:], text.encode())
        ok += 1
assert ok == 1
print("OK", lines[1])
"#;
    let note_path = tmp.path().join("checkpoint");
    std::fs::write(&note_path, &cp).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-c", script, &vkey, note_path.to_str().expect("path")])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python refused the checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK 6");
    // And refuses a forged one.
    std::fs::write(&note_path, cp.replacen("\n6\n", "\n7\n", 1)).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-c", script, &vkey, note_path.to_str().expect("path")])
        .output()
        .expect("python3");
    assert!(!out.status.success());
}

/// The heartbeat: with nothing changing, the checkpoint is re-signed once
/// the interval passed, same tree head, later timestamp, durably; a clock
/// that went back signs nothing; a change dates its checkpoint too.
#[test]
fn an_unchanged_checkpoint_is_re_signed_after_the_interval() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("assoc");
    let settings = Settings {
        checkpoint_interval: time::Duration::seconds(30),
        ..Settings::default()
    };
    let ca = Authority::init(&dir, "Heartbeat", 3650, settings.clone()).expect("init");
    let v = verifier(&dir);
    let cp0 = ca.log_checkpoint().expect("checkpoint");
    let (c0, t0) = tlog::open_timestamped(cp0.as_bytes(), &v).expect("dated checkpoint");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    assert!(t0.abs_diff(now) < 60, "signed at {t0}, now {now}");
    assert_eq!(ca.next_heartbeat_at(), t0 as i64 + 30);
    let at = |t: u64| time::OffsetDateTime::from_unix_timestamp(t as i64).expect("time");

    // Before the interval: nothing; a clock before the last signature:
    // nothing.
    assert!(!internal::heartbeat_if_due_at(&ca, at(t0 + 29)).expect("heartbeat"));
    assert!(!internal::heartbeat_if_due_at(&ca, at(t0 - 3600)).expect("heartbeat"));
    assert_eq!(ca.log_checkpoint().expect("checkpoint"), cp0);

    // After it: the same head, dated later, published.
    let mut rx = ca.subscribe();
    rx.borrow_and_update();
    assert!(internal::heartbeat_if_due_at(&ca, at(t0 + 30)).expect("heartbeat"));
    let cp1 = ca.log_checkpoint().expect("checkpoint");
    assert_ne!(cp1, cp0);
    let (c1, t1) = tlog::open_timestamped(cp1.as_bytes(), &v).expect("dated checkpoint");
    assert_eq!((c1.clone(), t1), (c0.clone(), t0 + 30));
    assert!(rx.has_changed().expect("sender"));
    assert_eq!(*ca.published().checkpoint, cp1);
    // The log's own note signature is unchanged (deterministic Ed25519):
    // only the cosignature/v1 line moved.
    let n0 = tlog::Note::parse(cp0.as_bytes()).expect("note");
    let n1 = tlog::Note::parse(cp1.as_bytes()).expect("note");
    assert_eq!(n0.signatures()[0], n1.signatures()[0]);
    assert_ne!(n0.signatures()[1], n1.signatures()[1]);
    assert_eq!(ca.verify_log().expect("verify").signed_at, Some(t0 + 30));
    assert!(!internal::heartbeat_if_due_at(&ca, at(t0 + 59)).expect("heartbeat"));

    // Durable: a reopened association serves the re-signed checkpoint and
    // counts from its timestamp.
    drop(rx);
    drop(ca);
    let ca = Authority::open(&dir, settings).expect("reopen");
    assert_eq!(ca.log_checkpoint().expect("checkpoint"), cp1);
    assert_eq!(ca.next_heartbeat_at(), (t0 + 60) as i64);

    // A change signs a new head, dated no earlier than the last heartbeat.
    ca.set_baseline("0.3.0").expect("baseline");
    let (c2, t2) = tlog::open_timestamped(ca.log_checkpoint().expect("cp").as_bytes(), &v)
        .expect("dated checkpoint");
    assert_eq!(c2.size, 1);
    assert!(t2 >= t1);
}

/// A checkpoint stored before checkpoints were dated (no cosignature/v1
/// line) opens, verifies, and is dated by the first heartbeat.
#[test]
fn an_undated_checkpoint_is_dated_by_the_first_heartbeat() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("assoc");
    let (ca, _) = populated(&dir);
    let v = verifier(&dir);
    let cp = ca.log_checkpoint().expect("checkpoint");
    let n = tlog::Note::parse(cp.as_bytes()).expect("note");
    let undated = format!("{}\n{}", n.text(), n.signatures()[0].line());
    assert!(tlog::open_timestamped(undated.as_bytes(), &v).is_err());
    Checkpoint::open(undated.as_bytes(), &v).expect("still a valid checkpoint");
    internal::replace_checkpoint(&ca, &undated).expect("replace");
    drop(ca);
    let ca = Authority::open(&dir, Settings::default()).expect("reopen");
    assert_eq!(ca.verify_log().expect("verify").signed_at, None);
    assert_eq!(ca.next_heartbeat_at(), 0);
    assert!(ca.heartbeat_if_due().expect("heartbeat"));
    let (c, _) =
        tlog::open_timestamped(ca.log_checkpoint().expect("cp").as_bytes(), &v).expect("dated now");
    assert_eq!(c.size, 6);
    assert!(ca.verify_log().expect("verify").signed_at.is_some());
}

/// A CSR for several domains.
fn csr_for(key: &KeyPair, domains: &[&str]) -> Vec<u8> {
    CertificateParams::new(domains.iter().map(|d| d.to_string()).collect::<Vec<_>>())
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

#[test]
fn a_handover_goes_to_the_named_successor_only_and_is_logged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(&tmp.path().join("a"), "Handover", 3650, Settings::default())
        .expect("init");
    let t0 = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let (ko, ks, kx) = (
        KeyPair::generate().expect("k"),
        KeyPair::generate().expect("k"),
        KeyPair::generate().expect("k"),
    );
    let issue = |member: &str, key: &KeyPair, successor: Option<&str>| {
        internal::sign_at(
            &ca,
            &SignRequest {
                csr: csr(key, &format!("{member}.test")),
                member_id: member.into(),
                charter_version: "1.0".into(),
                successor: successor.map(str::to_owned),
                endpoints: vec!["127.0.0.1:7443".into()],
                days: None,
            },
            t0,
        )
        .expect("sign")
    };
    // "old" names its successor by one of its domains.
    issue("old", &ko, Some("succ.test"));
    let succ = issue("succ", &ks, None);
    issue("other", &kx, None);

    // Not the named successor, no successor named, unknown members: refused.
    let err = ca
        .handover("old", "other")
        .expect_err("not named")
        .to_string();
    assert!(err.contains("names succ.test as its successor"), "{err}");
    let err = ca.handover("other", "succ").expect_err("none").to_string();
    assert!(err.contains("names no successor"), "{err}");
    assert!(ca.handover("ghost", "succ").is_err());
    assert!(ca.handover("old", "old").is_err());
    let before = ca.log_entries().expect("entries").len();

    // By domain or by id: one entry, the directory names the successor.
    let h = ca.handover("old", "succ.test").expect("handover");
    assert_eq!(
        (h.to.as_str(), h.domains.clone()),
        ("succ", vec!["old.test".to_owned()])
    );
    let again = ca.handover("old", "succ").expect("again");
    assert_eq!(again, h);
    let entries = ca.log_entries().expect("entries");
    assert_eq!(entries.len(), before + 1, "run again: nothing more logged");
    let last = entries.last().expect("last");
    assert_eq!(last.kind, "handover");
    assert_eq!(last.member_id.as_deref(), Some("old"));
    assert_eq!(last.successor.as_deref(), Some("succ"));
    let (_, tree) = rebuild(&ca);
    assert_eq!(tree.size(), entries.len() as u64);
    ca.verify_log().expect("the log verifies");
    let signed = SignedDirectory::decode(ca.published().directory.as_slice()).expect("signed");
    let dir = Directory::decode(signed.directory.as_slice()).expect("dir");
    let by = |id: &str| {
        dir.members
            .iter()
            .find(|m| m.member_id == id)
            .expect("member")
    };
    assert_eq!(by("old").handed_over_to, "succ");
    assert_eq!(by("succ").handed_over_to, "");
    assert!(ca.handover("old", "other").is_err(), "handed over already");
    // A member that names the closed one as its successor cannot hand
    // over to it (no forwarding loop through a member that left).
    let ky = KeyPair::generate().expect("k");
    issue("late", &ky, Some("old.test"));
    let err = ca.handover("late", "old").expect_err("closed").to_string();
    assert!(err.contains("closed itself"), "{err}");

    // The successor renews with the old domain added; nobody else may.
    let renewed = internal::renew_at(
        &ca,
        &der(&succ.record.certificate_pem),
        &csr_for(&ks, &["succ.test", "old.test"]),
        t0 + time::Duration::seconds(5),
    )
    .expect("renew with the inherited domain");
    assert_eq!(renewed.record.domains, vec!["succ.test", "old.test"]);
    let err = internal::renew_at(
        &ca,
        &der(&renewed.record.certificate_pem),
        &csr_for(&ks, &["succ.test", "old.test", "other.test"]),
        t0 + time::Duration::seconds(6),
    )
    .expect_err("a domain not handed over");
    assert!(err.to_string().contains("current domains"), "{err}");
}

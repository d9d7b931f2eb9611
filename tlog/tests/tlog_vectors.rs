//! The log's Merkle code against test vectors we did not write: the
//! transparency-dev/merkle proof corpus and the RFC 6962 reference roots
//! (`tests/data/tlog/README.md` says where each came from).

use caliopen_tlog::{
    base64, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion, Hash,
    MemoryTree,
};
use std::path::{Path, PathBuf};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tlog")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("entry").path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
}

/// A base64 field as a hash; `None` when it is not 32 bytes (those cases
/// are expected to fail: a verifier taking typed hashes cannot even be
/// called with them).
fn hash(v: &serde_json::Value) -> Option<Hash> {
    base64::decode(v.as_str()?)?.try_into().ok()
}

fn hashes(v: &serde_json::Value) -> Option<Vec<Hash>> {
    match v {
        serde_json::Value::Null => Some(Vec::new()),
        v => v.as_array()?.iter().map(hash).collect(),
    }
}

fn load(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

#[test]
fn transparency_dev_inclusion_vectors() {
    let mut files = Vec::new();
    json_files(
        &data().join("transparency-dev-merkle/inclusion"),
        &mut files,
    );
    let (mut good, mut bad) = (0, 0);
    for f in &files {
        let v = load(f);
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        let index = v["leafIdx"].as_u64().expect("leafIdx");
        let size = v["treeSize"].as_u64().expect("treeSize");
        let got = match (hash(&v["leafHash"]), hash(&v["root"]), hashes(&v["proof"])) {
            (Some(leaf), Some(root), Some(proof)) => {
                verify_inclusion(&leaf, index, size, &proof, &root).is_ok()
            }
            _ => false,
        };
        assert_eq!(got, !want_err, "{}", f.display());
        if want_err {
            bad += 1;
        } else {
            good += 1;
        }
    }
    assert!(good >= 5 && bad >= 50, "{good} valid, {bad} invalid cases");
}

#[test]
fn transparency_dev_consistency_vectors() {
    let mut files = Vec::new();
    json_files(
        &data().join("transparency-dev-merkle/consistency"),
        &mut files,
    );
    let (mut good, mut bad) = (0, 0);
    for f in &files {
        let v = load(f);
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        let m = v["size1"].as_u64().expect("size1");
        let n = v["size2"].as_u64().expect("size2");
        // A few "sizes equal" cases use placeholder roots that are not
        // hashes ("don't care"): only their equality matters, so they stand
        // as a hash of their bytes (never the empty tree's head).
        let root = |r: &serde_json::Value| {
            hash(r).or_else(|| {
                let raw = base64::decode(r.as_str()?)?;
                Some(caliopen_tlog::leaf_hash(&raw))
            })
        };
        let got = match (root(&v["root1"]), root(&v["root2"]), hashes(&v["proof"])) {
            (Some(r1), Some(r2), Some(proof)) => verify_consistency(m, n, &r1, &r2, &proof).is_ok(),
            _ => false,
        };
        assert_eq!(got, !want_err, "{}", f.display());
        if want_err {
            bad += 1;
        } else {
            good += 1;
        }
    }
    assert!(good >= 5 && bad >= 50, "{good} valid, {bad} invalid cases");
}

/// The 8 standard leaves: every root, and our own proofs match the corpus'
/// happy paths (same leaves) byte for byte.
#[test]
fn rfc6962_reference_tree() {
    let text = std::fs::read_to_string(data().join("rfc6962-roots.txt")).expect("read");
    let mut tree = MemoryTree::new();
    let mut checked = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split(' ').collect();
        let size: u64 = f[0].parse().expect("size");
        match f[1] {
            "-" => {}
            "\"\"" => tree.push_entry(b""),
            h => tree.push_entry(&hex::decode(h).expect("hex")),
        }
        assert_eq!(tree.size(), size);
        assert_eq!(hex::encode(tree.root_at(size)), f[2], "root of size {size}");
        checked += 1;
    }
    assert_eq!(checked, 9);

    let mut files = Vec::new();
    json_files(&data().join("transparency-dev-merkle"), &mut files);
    let mut matched = 0;
    for f in files.iter().filter(|f| f.ends_with("happy-path.json")) {
        let v = load(f);
        let want = hashes(&v["proof"]).expect("proof");
        let ours = if let Some(i) = v["leafIdx"].as_u64() {
            let n = v["treeSize"].as_u64().expect("treeSize");
            if n > 8 {
                continue;
            }
            inclusion_proof(&tree, i, n).expect("proof")
        } else {
            let (m, n) = (
                v["size1"].as_u64().expect("m"),
                v["size2"].as_u64().expect("n"),
            );
            if m == 0 || n > 8 {
                continue;
            }
            consistency_proof(&tree, m, n).expect("proof")
        };
        assert_eq!(ours, want, "{}", f.display());
        matched += 1;
    }
    assert!(matched >= 8, "only {matched} happy paths compared");
}

//! Writes the seed corpus of the fuzz targets: `cargo run -p caliopen-ca
//! --example fuzz_seeds -- fuzz/corpus`.

use caliopen_ca::{Authority, Settings, SignRequest};
use caliopen_proto::Label;
use std::path::Path;

/// Name of the fixed log key the `checkpoint` fuzz target knows.
const FUZZ_LOG_NAME: &str = "caliopen.invalid/fuzz";
/// Its seed (a test key, public on purpose).
const FUZZ_LOG_SEED: [u8; 32] = [0x42; 32];

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: fuzz_seeds CORPUS_DIR"))?;
    let out = Path::new(&out);
    let write = |target: &str, name: &str, data: &[u8]| -> anyhow::Result<()> {
        let d = out.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), data)?;
        Ok(())
    };

    for (i, successor) in [None, Some("beta.test")].into_iter().enumerate() {
        let l = Label {
            version: 1,
            member_id: "alpha".into(),
            charter_version: "1.0".into(),
            successor: successor.map(str::to_owned),
        };
        write("label_der", &format!("label-{i}.der"), &l.to_der()?)?;
    }

    let mut csrs = Vec::new();
    for (name, alg, domains) in [
        (
            "p256",
            &rcgen::PKCS_ECDSA_P256_SHA256,
            vec!["alpha.test", "mail.alpha.test"],
        ),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384, vec!["beta.test"]),
        ("ed25519", &rcgen::PKCS_ED25519, vec!["gamma.test"]),
    ] {
        let key = rcgen::KeyPair::generate_for(alg)?;
        let params = rcgen::CertificateParams::new(
            domains.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        )?;
        let csr = params.serialize_request(&key)?;
        write("csr_parse", &format!("{name}.pem"), csr.pem()?.as_bytes())?;
        write("csr_parse", &format!("{name}.der"), csr.der())?;
        csrs.push((name, csr.pem()?));
    }

    // The membership log: a checkpoint signed by the fuzz target's fixed
    // key, one by another key, an entry of each kind, and proof blobs (two
    // sizes, an index, then hashes) taken from a real tree.
    {
        use caliopen_ca::tlog::{self, Checkpoint, Entry, EntryKind, MemoryTree, Signer};
        let key = Signer::from_seed(FUZZ_LOG_NAME, &FUZZ_LOG_SEED)?;
        println!("fuzz log verifier key: {}", key.verifier());
        let mut tree = MemoryTree::new();
        let entries = [
            EntryKind::Issuance {
                cert_der: vec![0x30, 0x03, 2, 1, 1],
            },
            EntryKind::Renewal {
                renewed_from: vec![0x40, 1],
                cert_der: vec![0x30, 0x03, 2, 1, 2],
            },
            EntryKind::Revocation {
                serial: vec![0x40, 1],
                reason: "keyCompromise".into(),
            },
            EntryKind::Baseline {
                min_software_version: "0.2.0".into(),
            },
        ];
        for (i, kind) in entries.into_iter().enumerate() {
            let e = Entry {
                time: 1_700_000_000 + i as u64,
                kind,
            }
            .encode()?;
            tree.push_entry(&e);
            write("checkpoint", &format!("entry-{i}.bin"), &e)?;
        }
        for _ in 0..3 {
            tree.push_entry(b"filler");
        }
        let size = tree.size();
        let c = Checkpoint {
            origin: FUZZ_LOG_NAME.into(),
            size,
            root: tree.root_at(size),
            extensions: vec![],
        };
        write("checkpoint", "checkpoint.txt", c.sign(&key)?.as_bytes())?;
        let other = Signer::from_seed(FUZZ_LOG_NAME, &[7; 32])?;
        write(
            "checkpoint",
            "checkpoint-other-key.txt",
            c.sign(&other)?.as_bytes(),
        )?;
        write(
            "checkpoint",
            "verifier-key.txt",
            key.verifier().to_string().as_bytes(),
        )?;
        let blob = |a: u64, b: u64, c: u64, x: &tlog::Hash, y: &tlog::Hash, p: &[tlog::Hash]| {
            let mut v = Vec::new();
            for n in [a, b, c] {
                v.extend_from_slice(&n.to_be_bytes());
            }
            v.extend_from_slice(x);
            v.extend_from_slice(y);
            for h in p {
                v.extend_from_slice(h);
            }
            v
        };
        let incl = tlog::inclusion_proof(&tree, 2, size)?;
        let leaf = tree.levels()[0][2];
        write(
            "checkpoint",
            "inclusion-proof.bin",
            &blob(0, size, 2, &leaf, &c.root, &incl),
        )?;
        let cons = tlog::consistency_proof(&tree, 3, size)?;
        write(
            "checkpoint",
            "consistency-proof.bin",
            &blob(3, size, 0, &tree.root_at(3), &c.root, &cons),
        )?;
    }

    let tmp = std::env::temp_dir().join(format!("caliopen-fuzz-seeds-{}", std::process::id()));
    let ca = Authority::init(&tmp, "Fuzz Seeds", 30, Settings::default())?;
    for (name, pem) in &csrs {
        ca.sign(&SignRequest {
            csr: pem.clone().into_bytes(),
            member_id: (*name).into(),
            charter_version: "1.0".into(),
            successor: None,
            endpoints: vec!["127.0.0.1:7443".into()],
            days: None,
        })?;
    }
    let (_, signed) = ca.issue_directory()?;
    write("directory_decode", "directory.bin", &signed)?;
    drop(ca);
    std::fs::remove_dir_all(&tmp)?;
    println!("seeds written under {}", out.display());
    Ok(())
}

//! Writes the seed corpus of the fuzz targets: `cargo run -p caliopen-ca
//! --example fuzz_seeds -- fuzz/corpus`.

use caliopen_ca::{Authority, Settings, SignRequest};
use caliopen_proto::Label;
use std::path::Path;

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

//! Signs a privacy fixture with the committed DKIM test key (Ed25519), for
//! `tests/privacy/`. Test material only: the key is public in this repository.
//!
//! ```text
//! cargo run -p caliopen-instance --example dkim_sign_fixture -- IN.eml OUT.eml
//! ```
//! Prints the DNS TXT record (`caliopen-test._domainkey.example.test`) that verifies it.

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        return Err("usage: dkim_sign_fixture IN.eml OUT.eml".into());
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/privacy");
    let key_path = dir.join("dkim-test-key.pk8");
    let pk8 = match std::fs::read(&key_path) {
        Ok(k) => k,
        Err(_) => {
            let k = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
            std::fs::write(&key_path, &k).map_err(|e| e.to_string())?;
            k
        }
    };
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(&pk8).map_err(|e| e.to_string())?;
    use aws_lc_rs::signature::KeyPair;
    let public = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    let raw = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let key = Ed25519Key::from_pkcs8_der(&pk8).map_err(|e| e.to_string())?;
    let sig = DkimSigner::from_key(key)
        .domain("example.test")
        .selector("caliopen-test")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(&raw)
        .map_err(|e| e.to_string())?;
    let mut out = sig.to_header().into_bytes();
    out.extend_from_slice(&raw);
    std::fs::write(output, out).map_err(|e| format!("{output}: {e}"))?;
    println!("caliopen-test._domainkey.example.test TXT \"v=DKIM1; k=ed25519; p={public}\"");
    Ok(())
}

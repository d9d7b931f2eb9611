//! The `caliopen-ca` command-line contract, driven from outside like an
//! operator would, with openssl as the independent judge of every certificate
//! and CRL.

use caliopen_proto::pb::directory::SignedDirectory;
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_caliopen-ca");
const LABEL_OID: &str = "2.25.116668997575035149051309086194491928148.1";

fn ca(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run caliopen-ca")
}

fn ok(args: &[&str]) -> String {
    let o = ca(args);
    assert!(
        o.status.success(),
        "caliopen-ca {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

/// Asserts a refusal: non-zero exit, exactly one line on stderr, no panic.
fn refused(args: &[&str]) -> String {
    let o = ca(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "caliopen-ca {args:?} should fail");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "caliopen-ca {args:?}: expected one stderr line, got {err:?}"
    );
    assert!(err.starts_with("caliopen-ca: error: "), "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    err
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (.ci/run installs it)")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

struct Assoc {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
}

impl Assoc {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        let dir = root.join("assoc");
        ok(&["init", "--dir", p(&dir), "--name", "Test Association"]);
        Self {
            _tmp: tmp,
            root,
            dir,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    fn d(&self) -> &str {
        p(&self.dir)
    }
    fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// A CSR made by `openssl req` with the given extra `-addext` values.
    fn openssl_csr(&self, name: &str, addext: &[&str]) -> PathBuf {
        let csr = self.path(&format!("{name}.csr"));
        let key = self.path(&format!("{name}.key"));
        let mut args = vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            p(&key),
            "-subj",
            "/CN=member",
            "-out",
            p(&csr),
        ];
        for e in addext {
            args.push("-addext");
            args.push(e);
        }
        let o = openssl(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        csr
    }
    fn sign(&self, csr: &Path, member: &str, out: &str) -> (PathBuf, String) {
        let out = self.path(out);
        let stdout = ok(&[
            "sign",
            "--dir",
            self.d(),
            "--csr",
            p(csr),
            "--member-id",
            member,
            "--charter-version",
            "1.0",
            "--endpoint",
            "127.0.0.1:7443",
            "--out",
            p(&out),
        ]);
        let serial = stdout
            .split_whitespace()
            .nth(2)
            .expect("serial in sign output")
            .to_owned();
        (out, serial)
    }
    fn crl(&self, out: &str) -> (PathBuf, u64) {
        let out = self.path(out);
        let stdout = ok(&["crl", "--dir", self.d(), "--out", p(&out)]);
        let n = stdout
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .expect("CRL number in crl output");
        (out, n)
    }
    fn count_certs(&self) -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&["list", "--dir", self.d(), "--json"])).expect("json");
        v.as_array().expect("array").len()
    }
}

#[test]
fn openssl_csr_signed_verified_then_revoked() {
    let a = Assoc::new();
    let csr = a.openssl_csr(
        "alpha",
        &["subjectAltName=DNS:alpha.test,DNS:mail.alpha.test"],
    );
    let (cert, serial) = a.sign(&csr, "alpha", "alpha.pem");

    let o = openssl(&["verify", "-CAfile", p(&a.ca_pem()), p(&cert)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": OK"));

    // The profile as openssl reads it.
    let text = String::from_utf8(openssl(&["x509", "-in", p(&cert), "-noout", "-text"]).stdout)
        .expect("utf-8");
    assert!(text.contains(LABEL_OID), "label extension missing:\n{text}");
    assert!(text.contains("alpha"), "member id missing from the label");
    assert!(text.contains("DNS:alpha.test, DNS:mail.alpha.test"));
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
    assert!(text.contains("CA:FALSE"));
    assert!(text.contains("X509v3 Authority Key Identifier"));
    assert!(text.contains("X509v3 Subject Key Identifier"));
    // The label is not critical: "<oid>: critical" would be printed otherwise.
    assert!(!text.contains(&format!("{LABEL_OID}: critical")));
    let serial_line =
        String::from_utf8(openssl(&["x509", "-in", p(&cert), "-noout", "-serial"]).stdout)
            .expect("utf-8");
    assert_eq!(
        serial_line.trim(),
        format!("serial={}", serial.to_uppercase())
    );
    assert_eq!(serial.len(), 32, "128-bit serial");

    let (crl_before, n_before) = a.crl("before.crl");
    let before = openssl(&["crl", "-in", p(&crl_before), "-noout", "-text"]);
    assert!(before.status.success());

    let out = ok(&[
        "revoke",
        "--dir",
        a.d(),
        "--serial",
        &serial,
        "--reason",
        "keyCompromise",
    ]);
    assert!(out.contains(&format!("revoked {serial}")));
    let (crl, n_after) = a.crl("after.crl");
    assert!(
        n_after > n_before,
        "CRL number must increase: {n_before} -> {n_after}"
    );

    let crl_text = String::from_utf8(openssl(&["crl", "-in", p(&crl), "-noout", "-text"]).stdout)
        .expect("utf-8");
    assert!(crl_text.contains("Next Update"), "{crl_text}");
    assert!(crl_text.contains("X509v3 CRL Number"), "{crl_text}");
    assert!(crl_text.contains(&serial.to_uppercase()), "{crl_text}");
    assert!(crl_text.contains("Key Compromise"), "{crl_text}");
    let crl_sig = openssl(&["crl", "-in", p(&crl), "-CAfile", p(&a.ca_pem()), "-noout"]);
    assert!(
        String::from_utf8_lossy(&crl_sig.stderr).contains("verify OK")
            || String::from_utf8_lossy(&crl_sig.stdout).contains("verify OK"),
        "CRL signature: {crl_sig:?}"
    );

    let o = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        p(&a.ca_pem()),
        "-CRLfile",
        p(&crl),
        p(&cert),
    ]);
    assert!(!o.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("certificate revoked"), "{all}");

    // The CRL from before the revocation still lets it through: the check above is real.
    let o = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        p(&a.ca_pem()),
        "-CRLfile",
        p(&crl_before),
        p(&cert),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn hostile_inputs_exit_non_zero_with_one_line() {
    let a = Assoc::new();
    let good = a.openssl_csr("good", &["subjectAltName=DNS:good.test"]);
    a.sign(&good, "good", "good.pem");
    let issued = a.count_certs();

    let write = |name: &str, data: &[u8]| {
        let f = a.path(name);
        std::fs::write(&f, data).expect("write");
        f
    };
    let good_pem = std::fs::read_to_string(&good).expect("read");
    let good_der = pem::parse(&good_pem).expect("pem").into_contents();
    let mut bad_sig = good_der.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    let bad_sig_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bad_sig));
    let truncated_pem = &good_pem[..good_pem.len() / 2];
    let truncated_der_pem = pem::encode(&pem::Pem::new(
        "CERTIFICATE REQUEST",
        good_der[..good_der.len() - 10].to_vec(),
    ));
    let mut trailing = good_der.clone();
    trailing.extend_from_slice(&[0, 0]);
    let second =
        std::fs::read_to_string(a.openssl_csr("second", &["subjectAltName=DNS:second.test"]))
            .expect("read");
    let mut trailing_der_junk = good_der.clone();
    trailing_der_junk.extend_from_slice(&good_der);
    let binary: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("empty file", write("empty.csr", b""), "empty"),
        ("binary noise", write("noise.csr", &binary), "CSR"),
        ("text garbage", write("text.csr", b"hello, CA\n"), "CSR"),
        (
            "truncated PEM",
            write("trunc.csr", truncated_pem.as_bytes()),
            "CSR",
        ),
        (
            "truncated DER",
            write("truncder.csr", truncated_der_pem.as_bytes()),
            "CSR",
        ),
        (
            "trailing bytes",
            write("trailing.csr", &trailing),
            "trailing",
        ),
        (
            "PEM followed by junk",
            write("junk.csr", format!("{good_pem}junk\n").as_bytes()),
            "trailing bytes after the PEM block",
        ),
        (
            "PEM followed by a second CSR",
            write("two.csr", format!("{good_pem}{second}").as_bytes()),
            "2 PEM blocks",
        ),
        (
            "DER followed by a second CSR",
            write("two.der", &trailing_der_junk),
            "trailing bytes",
        ),
        (
            "bad signature",
            write("badsig.csr", bad_sig_pem.as_bytes()),
            "signature",
        ),
        (
            "a certificate, not a CSR",
            a.path("good.pem"),
            "not a CERTIFICATE REQUEST",
        ),
        (
            "CA:TRUE",
            a.openssl_csr(
                "ca",
                &[
                    "basicConstraints=critical,CA:TRUE",
                    "subjectAltName=DNS:evil.test",
                ],
            ),
            "CA",
        ),
        (
            "keyCertSign",
            a.openssl_csr(
                "ku",
                &[
                    "keyUsage=critical,keyCertSign",
                    "subjectAltName=DNS:evil.test",
                ],
            ),
            "keyCertSign",
        ),
        ("no SAN", a.openssl_csr("nosan", &[]), "subjectAltName"),
        (
            "IP SAN only",
            a.openssl_csr("ipsan", &["subjectAltName=IP:127.0.0.1"]),
            "DNS",
        ),
        (
            "wildcard",
            a.openssl_csr("wild", &["subjectAltName=DNS:*.evil.test"]),
            "invalid domain",
        ),
        (
            "domain of another member",
            a.openssl_csr("thief", &["subjectAltName=DNS:good.test"]),
            "already held",
        ),
        (
            "missing file",
            a.path("does-not-exist.csr"),
            "does-not-exist",
        ),
        ("a directory", a.root.clone(), "read"),
    ];
    for (what, csr, needle) in &cases {
        let err = refused(&[
            "sign",
            "--dir",
            a.d(),
            "--csr",
            p(csr),
            "--member-id",
            "intruder",
            "--charter-version",
            "1.0",
            "--out",
            p(&a.path("x.pem")),
        ]);
        assert!(
            err.contains(needle),
            "{what}: {err:?} should mention {needle:?}"
        );
    }
    // Other bad flags.
    let other = a.openssl_csr("other", &["subjectAltName=DNS:other.test"]);
    let y = a.path("y.pem");
    for (args, needle) in [
        (
            vec!["--member-id", "other", "--charter-version", "0.1"],
            "charter version",
        ),
        (
            vec!["--member-id", "Bad Id", "--charter-version", "1.0"],
            "member id",
        ),
        (
            vec![
                "--member-id",
                "other",
                "--charter-version",
                "1.0",
                "--days",
                "0",
            ],
            "--days",
        ),
        (
            vec![
                "--member-id",
                "other",
                "--charter-version",
                "1.0",
                "--endpoint",
                "nohost",
            ],
            "endpoint",
        ),
        (
            vec![
                "--member-id",
                "other",
                "--charter-version",
                "1.0",
                "--successor",
                "not a domain",
            ],
            "domain",
        ),
    ] {
        let mut full = vec!["sign", "--dir", a.d(), "--csr", p(&other), "--out", p(&y)];
        full.extend(args);
        let err = refused(&full);
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    assert!(!a.path("x.pem").exists() && !a.path("y.pem").exists());
    assert_eq!(
        a.count_certs(),
        issued,
        "a refused request issued something"
    );

    // Revocation and command-line mistakes.
    refused(&["revoke", "--dir", a.d(), "--serial", "nothex"]);
    refused(&["revoke", "--dir", a.d(), "--serial", "0123456789abcdef"]);
    refused(&["revoke", "--dir", a.d(), "--domain", "nobody.test"]);
    refused(&[
        "revoke",
        "--dir",
        a.d(),
        "--domain",
        "good.test",
        "--reason",
        "spite",
    ]);
    refused(&["revoke", "--dir", a.d()]);
    refused(&["list", "--dir", p(&a.path("nowhere"))]);
    refused(&["init", "--dir", a.d(), "--name", "Again"]);
    refused(&["frobnicate"]);
}

#[test]
fn a_ca_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let a = Assoc::new();
    let key = a.dir.join("ca.key.pem");
    let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key must be written 0600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = refused(&["list", "--dir", a.d()]);
    assert!(err.contains("chmod 600"), "{err}");
    let csr = a.openssl_csr("m", &["subjectAltName=DNS:m.test"]);
    refused(&[
        "sign",
        "--dir",
        a.d(),
        "--csr",
        p(&csr),
        "--member-id",
        "m",
        "--charter-version",
        "1.0",
        "--out",
        p(&a.path("m.pem")),
    ]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ok(&["list", "--dir", a.d()]);
}

#[test]
fn state_persists_and_revocation_is_idempotent() {
    let a = Assoc::new();
    let c1 = a.openssl_csr("one", &["subjectAltName=DNS:one.test"]);
    let c2 = a.openssl_csr("two", &["subjectAltName=DNS:two.test,DNS:two.example"]);
    let (_, s1) = a.sign(&c1, "one", "one.pem");
    let (_, s2) = a.sign(&c2, "two", "two.pem");

    let out = ok(&["revoke", "--dir", a.d(), "--domain", "TWO.example"]);
    assert!(out.contains(&format!("revoked {s2}")), "{out}");
    let (_, n) = a.crl("a.crl");
    let again = ok(&["revoke", "--dir", a.d(), "--domain", "two.test"]);
    assert!(again.contains(&format!("already revoked {s2}")), "{again}");
    assert!(
        again.contains(&format!("current CRL number {n}")),
        "idempotent revoke issued a CRL: {again}"
    );

    // Each invocation reopened the state: what we see was persisted.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["list", "--dir", a.d(), "--json"])).expect("json");
    let status = |serial: &str| {
        v.as_array()
            .expect("array")
            .iter()
            .find(|e| e["serial"] == serial)
            .map(|e| e["status"].as_str().unwrap_or("").to_owned())
    };
    assert_eq!(status(&s1).as_deref(), Some("active"));
    assert_eq!(status(&s2).as_deref(), Some("revoked"));
    let text = ok(&["list", "--dir", a.d()]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&s2) && l.contains("revoked")),
        "{text}"
    );

    // The freed domain can be given to a new member now.
    let c3 = a.openssl_csr("three", &["subjectAltName=DNS:two.test"]);
    a.sign(&c3, "three", "three.pem");

    let audit = std::fs::read_to_string(a.dir.join("audit.log")).expect("audit log");
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect();
    let count = |e: &str| events.iter().filter(|v| v["event"] == e).count();
    assert_eq!(count("issue"), 3);
    assert_eq!(count("revoke"), 1);
    assert!(events
        .iter()
        .any(|v| v["event"] == "revoke" && v["serial"] == s2.as_str()));
}

#[test]
fn directory_verifies_with_the_ca_certificate_alone() {
    let a = Assoc::new();
    let csr = a.openssl_csr("alpha", &["subjectAltName=DNS:alpha.test"]);
    let (cert, _) = a.sign(&csr, "alpha", "alpha.pem");
    ok(&["baseline", "--dir", a.d(), "--min-version", "0.1.0"]);
    let dir_file = a.path("directory.bin");
    ok(&["directory", "--dir", a.d(), "--out", p(&dir_file)]);

    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "verify-directory",
        "--ca",
        p(&a.ca_pem()),
        "--in",
        p(&dir_file),
    ]))
    .expect("json");
    assert_eq!(json["min_software_version"], "0.1.0");
    assert_eq!(json["members"][0]["member_id"], "alpha");
    assert_eq!(json["members"][0]["domains"][0], "alpha.test");
    assert_eq!(json["members"][0]["endpoints"][0], "127.0.0.1:7443");
    let fp = openssl(&["x509", "-in", p(&cert), "-noout", "-fingerprint", "-sha256"]);
    let fp = String::from_utf8_lossy(&fp.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or("")
        .replace(':', "")
        .to_lowercase();
    assert_eq!(json["members"][0]["cert_sha256"][0], fp.as_str());
    assert!(json["valid_until"].as_i64() > json["issued_at"].as_i64());

    // openssl, knowing nothing of Caliopen, checks the same signature.
    let signed = SignedDirectory::decode(std::fs::read(&dir_file).expect("read").as_slice())
        .expect("SignedDirectory");
    std::fs::write(a.path("dir.raw"), &signed.directory).expect("write");
    std::fs::write(a.path("dir.sig"), &signed.signature).expect("write");
    let pubkey = openssl(&["x509", "-in", p(&a.ca_pem()), "-noout", "-pubkey"]);
    std::fs::write(a.path("ca.pub"), &pubkey.stdout).expect("write");
    let o = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        p(&a.path("ca.pub")),
        "-signature",
        p(&a.path("dir.sig")),
        p(&a.path("dir.raw")),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Verified OK"),
        "{o:?}"
    );

    // One flipped bit and it is refused.
    let mut tampered = signed.clone();
    let i = tampered.directory.len() / 2;
    tampered.directory[i] ^= 0x20;
    std::fs::write(a.path("tampered.bin"), tampered.encode_to_vec()).expect("write");
    let err = refused(&[
        "verify-directory",
        "--ca",
        p(&a.ca_pem()),
        "--in",
        p(&a.path("tampered.bin")),
    ]);
    assert!(err.contains("signature"), "{err}");
    // And a different association's root does not verify it.
    let b = Assoc::new();
    refused(&[
        "verify-directory",
        "--ca",
        p(&b.ca_pem()),
        "--in",
        p(&dir_file),
    ]);
}

/// `log key|checkpoint|entries|verify`: the key openssl reads from
/// log.key.pem is the one printed, every change shows up as an entry and
/// in the checkpoint, verify says OK in one line and fails in one line on a
/// tampered state.
#[test]
fn log_commands() {
    let a = Assoc::new();
    let csr = a.openssl_csr("alpha", &["subjectAltName=DNS:alpha.test"]);
    let (_, serial) = a.sign(&csr, "alpha", "alpha.pem");
    ok(&["baseline", "--dir", a.d(), "--min-version", "0.2.0"]);
    ok(&["revoke", "--dir", a.d(), "--serial", &serial]);

    let key = ok(&["log", "key", "--dir", a.d()]);
    let key = key.trim_end();
    let parts: Vec<&str> = key.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3, "{key}");
    assert!(parts[0].starts_with("caliopen.invalid/test-association/"));
    // openssl's view of the private key file gives the same public key.
    let o = openssl(&[
        "pkey",
        "-in",
        p(&a.dir.join("log.key.pem")),
        "-pubout",
        "-outform",
        "DER",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spki_pub = &o.stdout[o.stdout.len() - 32..];
    let v = caliopen_ca::tlog::Verifier::parse(key).expect("verifier key");
    assert_eq!(&v.public_key()[..], spki_pub);

    let cp = ok(&["log", "checkpoint", "--dir", a.d()]);
    let (c, _) = caliopen_ca::tlog::Checkpoint::open(cp.as_bytes(), &v).expect("verifies");
    assert_eq!(c.size, 3);

    let text = ok(&["log", "entries", "--dir", a.d()]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].contains("issuance") && lines[1].contains(&serial),
        "{text}"
    );
    assert!(
        lines[2].contains("baseline") && lines[2].contains("0.2.0"),
        "{text}"
    );
    assert!(
        lines[3].contains("revocation") && lines[3].contains(&serial),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["log", "entries", "--dir", a.d(), "--json"])).expect("json");
    let arr = json.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["kind"], "issuance");
    assert_eq!(arr[0]["member_id"], "alpha");
    assert_eq!(arr[2]["reason"], "unspecified");

    let out = ok(&["log", "verify", "--dir", a.d()]);
    assert_eq!(out.lines().count(), 1);
    assert!(out.starts_with("OK: 3 entries"), "{out}");

    // A stored hash changed behind the association's back.
    {
        let db = sled::open(a.dir.join("state")).expect("sled");
        let t = db.open_tree("log_nodes").expect("tree");
        let (k, mut v) = t.first().expect("read").expect("a hash");
        let mut raw = v.to_vec();
        raw[0] ^= 0xff;
        v = raw.into();
        t.insert(k, v).expect("insert");
        db.flush().expect("flush");
    }
    let err = refused(&["log", "verify", "--dir", a.d()]);
    assert!(err.contains("log verification failed"), "{err}");
    refused(&["log", "verify", "--dir", p(&a.path("nowhere"))]);
    refused(&["log", "entries"]);
}

#[test]
fn log_witness_commands_register_witnesses_and_the_directory_lists_them() {
    use caliopen_ca::tlog::{CosignatureVerifier, Signer};
    let a = Assoc::new();
    let vkey = |seed: u8, name: &str| {
        let s = Signer::from_seed(name, &[seed; 32]).expect("key");
        CosignatureVerifier::new(name, *s.verifier().public_key()).to_string()
    };
    let (k1, k2) = (vkey(1, "w1.test/witness"), vkey(2, "w2.test/witness"));
    let add = |name: &str, k: &str, url: &str, extra: &[&str]| {
        let mut args = vec![
            "log",
            "witness",
            "add",
            "--dir",
            a.d(),
            "--name",
            name,
            "--vkey",
            k,
            "--url",
            url,
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let bad = |v: Vec<String>| refused(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(add("w1", &k1, "https://w1.test/witness", &[]));
    assert!(out.contains("1 witness(es), quorum 0"), "{out}");
    let ca_pem = a.ca_pem();
    run(add(
        "w2",
        &k2,
        "https://127.0.0.1:8443/witness/",
        &["--ca", p(&ca_pem)],
    ));

    // Refused: a signed-note key (type 0x01) for a cosignature key, a bad
    // URL, a bad name, the same key twice, a quorum above the count, a CA
    // file without a certificate.
    let note_key = Signer::from_seed("w3.test", &[3; 32])
        .expect("key")
        .verifier()
        .to_string();
    let e = bad(add("w3", &note_key, "https://w3.test", &[]));
    assert!(e.contains("witness key"), "{e}");
    bad(add("w3", &vkey(3, "w3.test"), "http://w3.test", &[]));
    bad(add("w 3", &vkey(3, "w3.test"), "https://w3.test", &[]));
    bad(add("w3", &k1, "https://w3.test", &[]));
    // … the same public key under another name, and the log's own key.
    let e = bad(add(
        "w3",
        &vkey(1, "w3.test/witness"),
        "https://w3.test",
        &[],
    ));
    assert!(e.contains("already registered"), "{e}");
    let log_pub =
        std::fs::read_to_string(std::path::Path::new(a.d()).join("log.pub")).expect("log.pub");
    let log_key = caliopen_ca::tlog::Verifier::parse(log_pub.trim()).expect("log key");
    let own = CosignatureVerifier::for_log(&log_key).to_string();
    let e = bad(add("w3", &own, "https://w3.test", &[]));
    assert!(e.contains("log's own key"), "{e}");
    let junk = a.path("junk.pem");
    std::fs::write(&junk, "nothing\n").expect("write");
    bad(add(
        "w3",
        &vkey(3, "w3.test"),
        "https://w3.test",
        &["--ca", p(&junk)],
    ));
    let e = refused(&["log", "witness", "quorum", "--dir", a.d(), "3"]);
    assert!(e.contains("more than the 2"), "{e}");
    ok(&["log", "witness", "quorum", "--dir", a.d(), "2"]);
    let e = refused(&["log", "witness", "remove", "--dir", a.d(), "w1"]);
    assert!(e.contains("quorum"), "{e}");
    refused(&["log", "witness", "remove", "--dir", a.d(), "nobody"]);

    let list: serde_json::Value =
        serde_json::from_str(&ok(&["log", "witness", "list", "--dir", a.d(), "--json"]))
            .expect("json");
    assert_eq!(list["quorum"], 2);
    let ws = list["witnesses"].as_array().expect("array");
    assert_eq!(ws.len(), 2);
    assert_eq!(ws[0]["name"], "w1");
    assert_eq!(ws[0]["vkey"], k1.as_str());
    assert_eq!(ws[1]["url"], "https://127.0.0.1:8443/witness");
    assert_eq!(ws[1]["ca"], true);
    let text = ok(&["log", "witness", "list", "--dir", a.d()]);
    assert!(
        text.starts_with("quorum: 2\n") && text.contains(&k2),
        "{text}"
    );

    // The directory publishes them (name, key, URL) and the quorum.
    let out = a.path("dir.bin");
    ok(&["directory", "--dir", a.d(), "--out", p(&out)]);
    let signed =
        SignedDirectory::decode(std::fs::read(&out).expect("read").as_slice()).expect("signed");
    let d = caliopen_proto::pb::directory::Directory::decode(signed.directory.as_slice())
        .expect("directory");
    assert_eq!(d.witness_quorum, 2);
    let names: Vec<_> = d.witnesses.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(d.witnesses[1].vkey, k2);
    assert_eq!(d.witnesses[0].url, "https://w1.test/witness");
    let shown: serde_json::Value = serde_json::from_str(&ok(&[
        "verify-directory",
        "--ca",
        p(&a.ca_pem()),
        "--in",
        p(&out),
    ]))
    .expect("json");
    assert_eq!(shown["witness_quorum"], 2);
    assert_eq!(shown["witnesses"][1]["vkey"], k2.as_str());

    ok(&["log", "witness", "quorum", "--dir", a.d(), "1"]);
    ok(&["log", "witness", "remove", "--dir", a.d(), "w1"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["log", "witness", "list", "--dir", a.d(), "--json"]))
            .expect("json");
    assert_eq!(list["quorum"], 1);
    assert_eq!(list["witnesses"].as_array().expect("array").len(), 1);
}

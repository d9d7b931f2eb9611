//! ACME with a server we did not write: Debian's `pebble` (Let's Encrypt's
//! test server) and its `pebble-challtestsrv` as the DNS that names every
//! host 127.0.0.1, both started here on loopback. Challenges are validated
//! for real (no `PEBBLE_VA_ALWAYS_VALID`): HTTP-01 against the daemon's
//! plain-HTTP listener, TLS-ALPN-01 against its web listener. `openssl
//! s_client` on the MX (STARTTLS), IMAP (STARTTLS) and web ports shows the
//! certificate pebble issued, chained to pebble's root, and a new one after
//! the renewal at two thirds of its (30-second) lifetime — without a
//! restart. An unreachable ACME server raises the alarm metric at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::free_port;

use common::caliopen_ok as caliopen;
use common::{Daemon, Killed};

fn wait_port(port: u16, what: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what} does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pebble on `acme`, validating HTTP-01 on `http` and TLS-ALPN-01 on
/// `tls`, resolving names through challtestsrv; certificates last
/// `validity` seconds. Returns the processes, pebble's HTTPS certificate
/// (to trust for the ACME API) and its management port.
fn start_pebble(dir: &Path, http: u16, tls: u16, validity: u64) -> (Vec<Killed>, String, u16) {
    let (acme, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
    // pebble's own HTTPS: a leaf for 127.0.0.1 signed by a CA of the test
    // (`pebble-ca.pem`, what the daemon is told to trust).
    let (key, cert) = (dir.join("pebble.key"), dir.join("pebble.pem"));
    let (ca_key, ca) = (dir.join("pebble-ca.key"), dir.join("pebble-ca.pem"));
    let csr = dir.join("pebble.csr");
    let ext = dir.join("pebble.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    let p = |p: &Path| p.to_str().expect("utf-8").to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ACME test CA",
        "-keyout",
        &p(&ca_key),
        "-out",
        &p(&ca),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca),
        "-CAkey",
        &p(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    let cfg = dir.join("pebble.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"pebble":{{"listenAddress":"127.0.0.1:{acme}","managementListenAddress":"127.0.0.1:{mgmt}","certificate":"{}","privateKey":"{}","httpPort":{http},"tlsPort":{tls},"ocspResponderURL":"","externalAccountBindingRequired":false,"certificateValidityPeriod":{validity}}}}}"#,
            cert.display(),
            key.display()
        ),
    )
    .expect("pebble config");
    let dns_addr = format!("127.0.0.1:{dns}");
    let cts = Command::new("pebble-challtestsrv")
        .args([
            "-dns01",
            &dns_addr,
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv (Debian package pebble)");
    let cts = Killed(cts);
    wait_port(dns_mgmt, "pebble-challtestsrv");
    let log = std::fs::File::create(dir.join("pebble.log")).expect("log");
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(&cfg)
        .args(["-dnsserver", &dns_addr])
        // Validation at once, and no nonce refused on purpose: the test is
        // about the daemon's flow, not the client library's retries.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("pebble (Debian package pebble)");
    let pebble = Killed(pebble);
    wait_port(acme, "pebble");
    (
        vec![pebble, cts],
        format!("https://127.0.0.1:{acme}/dir"),
        mgmt,
    )
}

/// `caliopen init` of `domain` with the web listener on `web`; `[acme]`
/// appended. Returns the configuration's path.
fn init(data: &Path, domain: &str, web: u16, acme: &str) -> String {
    let web = format!("127.0.0.1:{web}");
    caliopen(
        &[
            "init",
            "--data",
            data.to_str().expect("utf-8"),
            "--domain",
            domain,
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--imap",
            "127.0.0.1:0",
            "--web",
            &web,
        ],
        None,
    );
    let cfg = data.join("caliopen.toml");
    // init names the host mx.DOMAIN: the certificate's first name.
    let text = std::fs::read_to_string(&cfg).expect("config");
    assert!(
        text.contains(&format!("hostname = \"mx.{domain}\"")),
        "{text}"
    );
    std::fs::write(&cfg, format!("{text}\n[acme]\n{acme}")).expect("write config");
    cfg.to_str().expect("utf-8").to_owned()
}

/// The certificate chain (PEM, leaf first) served on `port`, after
/// STARTTLS when `starttls` names the protocol.
fn served(port: u16, starttls: Option<&str>, sni: &str) -> String {
    // Bounded: a stuck listener fails the test instead of hanging it.
    let mut cmd = Command::new("timeout");
    cmd.args([
        "10",
        "openssl",
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
    ])
    .args(["-servername", sni, "-showcerts"])
    .stdin(Stdio::null())
    .stderr(Stdio::null());
    if let Some(p) = starttls {
        cmd.args(["-starttls", p]);
    }
    let out = cmd.output().expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut chain = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
        }
        if inside {
            chain.push_str(l);
            chain.push('\n');
        }
        if l.starts_with("-----END CERTIFICATE") {
            inside = false;
        }
    }
    chain
}

/// `openssl x509` of the first certificate of `chain`: (serial, issuer,
/// the SAN line).
fn facts(dir: &Path, chain: &str) -> (String, String, String) {
    let p = dir.join("leaf.pem");
    std::fs::write(&p, chain).expect("write");
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-serial",
            "-issuer",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(&p)
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let san = text
        .lines()
        .skip_while(|l| !l.contains("Subject Alternative Name"))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    (get("serial="), get("issuer="), san)
}

/// Pebble's root (its management interface; a new root each start).
fn pebble_root(dir: &Path, mgmt: u16) -> std::path::PathBuf {
    let p = dir.join("pebble-root.pem");
    let ok = Command::new("curl")
        .args(["-sSfk", "-o"])
        .arg(&p)
        .arg(format!("https://127.0.0.1:{mgmt}/roots/0"))
        .status()
        .expect("curl")
        .success();
    assert!(ok, "pebble's root");
    p
}

/// Waits until `port` serves a certificate issued by pebble whose serial
/// is not `not`; returns its chain.
fn wait_issued(
    port: u16,
    starttls: Option<&str>,
    sni: &str,
    dir: &Path,
    not: &str,
    log: &Path,
    secs: u64,
) -> String {
    let t0 = Instant::now();
    loop {
        let chain = served(port, starttls, sni);
        let (serial, issuer, _) = facts(dir, &chain);
        if issuer.contains("Pebble") && serial != not {
            return chain;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no new pebble certificate on port {port} (issuer {issuer:?}); daemon log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn verify(dir: &Path, root: &Path, chain: &str) {
    let certs: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    assert!(certs.len() >= 2, "a leaf and its intermediate: {chain}");
    let (leaf, rest) = (dir.join("v-leaf.pem"), dir.join("v-rest.pem"));
    std::fs::write(&leaf, certs[0]).expect("write");
    std::fs::write(&rest, certs[1..].concat()).expect("write");
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(&rest)
        .arg(&leaf)
        .output()
        .expect("openssl verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pebble_issues_and_renews_over_http01_and_tls_alpn01_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (http_a, web_a, web_b) = (free_port(), free_port(), free_port());
    // Certificates of 30 s: renewed at 20 s.
    let (_procs, directory, mgmt) = start_pebble(tmp.path(), http_a, web_b, 30);

    // A answers HTTP-01 on its plain-HTTP listener.
    let a_cfg = init(
        &tmp.path().join("a"),
        "alpha.test",
        web_a,
        &format!(
            "directory = \"{directory}\"\ncontact = [\"mailto:postmaster@alpha.test\"]\nca = \"{}\"\nhttp_listen = \"127.0.0.1:{http_a}\"\n",
            tmp.path().join("pebble-ca.pem").display()
        ),
    );
    let a_log = tmp.path().join("a.log");
    let (child, a) = common::spawn_daemon(
        Path::new(&a_cfg),
        Stdio::from(std::fs::File::create(&a_log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _a = Daemon(child);
    assert_eq!(a.acme_http.map(|h| h.port()), Some(http_a));

    // B answers TLS-ALPN-01 on its web listener.
    let b_cfg = init(
        &tmp.path().join("b"),
        "beta.test",
        web_b,
        &format!(
            "directory = \"{directory}\"\nca = \"{}\"\nchallenge = \"tls-alpn-01\"\n",
            tmp.path().join("pebble-ca.pem").display()
        ),
    );
    let b_log = tmp.path().join("b.log");
    let (child, b) = common::spawn_daemon(
        Path::new(&b_cfg),
        Stdio::from(std::fs::File::create(&b_log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _b = Daemon(child);
    assert_eq!(b.acme_http, None);

    // Every listener of A serves pebble's certificate, for every name,
    // chained to pebble's root.
    let web = wait_issued(web_a, None, "mx.alpha.test", tmp.path(), "", &a_log, 60);
    let root = pebble_root(tmp.path(), mgmt);
    verify(tmp.path(), &root, &web);
    let (serial1, issuer, san) = facts(tmp.path(), &web);
    assert!(issuer.contains("Pebble Intermediate"), "{issuer}");
    for n in [
        "mx.alpha.test",
        "mta-sts.alpha.test",
        "autoconfig.alpha.test",
        "autodiscover.alpha.test",
    ] {
        assert!(san.contains(&format!("DNS:{n}")), "{n} in {san}");
    }
    let mx = wait_issued(
        a.smtp.port(),
        Some("smtp"),
        "mx.alpha.test",
        tmp.path(),
        "",
        &a_log,
        10,
    );
    // The same certificate (or, on a slow machine, already its renewal).
    verify(tmp.path(), &root, &mx);
    let imap = a.imap.expect("imap").port();
    let im = wait_issued(
        imap,
        Some("imap"),
        "mx.alpha.test",
        tmp.path(),
        "",
        &a_log,
        10,
    );
    verify(tmp.path(), &root, &im);
    let a_text = std::fs::read_to_string(&a_log).expect("log");
    assert!(a_text.contains("HTTP-01 challenge asked"), "{a_text}");
    // The key on disk stays the owner's.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("a/tls.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "tls.key mode {mode:o}");
    let account = tmp.path().join("a/acme/account.json");
    let mode = std::fs::metadata(&account)
        .expect("account")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "account.json mode {mode:o}");

    // The operator's view of it.
    let shown: serde_json::Value = serde_json::from_str(&caliopen(
        &["certificate", "--config", &a_cfg, "--json"],
        None,
    ))
    .expect("certificate --json");
    assert!(
        shown["issuer"].as_str().unwrap_or("").contains("Pebble"),
        "{shown}"
    );
    assert_eq!(shown["self_signed"], false, "{shown}");
    assert_eq!(shown["acme"]["account"], true, "{shown}");
    assert_eq!(shown["acme"]["challenge"], "Http01", "{shown}");
    let text = caliopen(&["certificate", "--config", &a_cfg], None);
    assert!(
        text.contains("mta-sts.alpha.test") && text.contains("renewal"),
        "{text}"
    );

    // B got its certificate through TLS-ALPN-01 on its web listener.
    let b_web = wait_issued(web_b, None, "mx.beta.test", tmp.path(), "", &b_log, 60);
    verify(tmp.path(), &root, &b_web);
    assert!(facts(tmp.path(), &b_web)
        .2
        .contains("DNS:mta-sts.beta.test"));

    // Plain HTTP redirects everything but challenges to the web listener.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["-H", "Host: mx.alpha.test"])
        .arg(format!("http://127.0.0.1:{http_a}/login"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("301 https://mx.alpha.test:{web_a}/login")
    );

    // Renewal at two thirds of the lifetime: a new certificate on every
    // listener of the running daemon.
    let web2 = wait_issued(
        web_a,
        None,
        "mx.alpha.test",
        tmp.path(),
        &serial1,
        &a_log,
        60,
    );
    let serial2 = facts(tmp.path(), &web2).0;
    verify(tmp.path(), &root, &web2);
    let mx2 = wait_issued(
        a.smtp.port(),
        Some("smtp"),
        "mx.alpha.test",
        tmp.path(),
        &serial1,
        &a_log,
        10,
    );
    assert_ne!(facts(tmp.path(), &mx2).0, serial1);
    let im2 = wait_issued(
        imap,
        Some("imap"),
        "mx.alpha.test",
        tmp.path(),
        &serial1,
        &a_log,
        10,
    );
    assert_ne!(facts(tmp.path(), &im2).0, serial1);
    let m = a.metrics.expect("metrics");
    assert!(common::metric(m, "caliopen_acme_certificates_total{outcome=\"issued\"}") >= 2);
    assert_ne!(serial2, serial1);
}

#[test]
fn an_unreachable_acme_server_raises_the_alarm_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (web, http) = (free_port(), free_port());
    // Nothing listens there: the first attempt fails, and with a
    // self-signed certificate served that is already urgent.
    let dead = free_port();
    let cfg = init(
        &tmp.path().join("c"),
        "gamma.test",
        web,
        &format!(
            "directory = \"https://127.0.0.1:{dead}/dir\"\nhttp_listen = \"127.0.0.1:{http}\"\n"
        ),
    );
    let log = tmp.path().join("c.log");
    let (child, c) = common::spawn_daemon(
        Path::new(&cfg),
        Stdio::from(std::fs::File::create(&log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _c = Daemon(child);
    let m = c.metrics.expect("metrics");
    let t0 = Instant::now();
    while common::metric(m, "caliopen_acme_renewal_failing") != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no alarm; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        common::metric(m, "caliopen_acme_certificates_total{outcome=\"failed\"}"),
        1
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("ACME: renewal keeps failing"), "{text}");
    // The operator is told what is served and that renewal is due.
    let text = caliopen(&["certificate", "--config", &cfg], None);
    assert!(text.contains("(self-signed)"), "{text}");
    assert!(
        text.contains("due now: the certificate served is self-signed"),
        "{text}"
    );
    // The self-signed certificate is still served.
    let (_, issuer, _) = facts(tmp.path(), &served(web, None, "mx.gamma.test"));
    assert!(!issuer.contains("Pebble") && !issuer.is_empty(), "{issuer}");

    // A configuration that cannot work is refused in one line.
    let bad = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&bad, text.replace("https://127.0.0.1", "http://127.0.0.1")).expect("write");
    let (ok, _, err) =
        common::run_caliopen(&["run", "--config", bad.to_str().expect("utf-8")], None);
    assert!(!ok);
    assert!(err.contains("acme.directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

//! Deliverability with tools we did not write: mail submitted to an outside
//! address leaves through the relay — Postfix's `smtp-sink` here — with an
//! Ed25519 and an RSA DKIM signature that `dkimpy` verifies against the
//! records `caliopen dns --json` prints (and a tampered copy fails); the web
//! listener's Thunderbird autoconfig and Outlook autodiscover documents
//! parse (Python's XML parser) and name the instance's real ports; its
//! MTA-STS policy is what RFC 8461 asks.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::free_port;

use common::caliopen_ok as caliopen;
use common::{python, Daemon};

/// `smtp-sink` on `port`, writing each message under `dir`.
fn smtp_sink(port: u16, dir: &Path) -> common::Killed {
    let bin = ["/usr/sbin/smtp-sink", "smtp-sink"]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").output().is_ok())
        .expect("Postfix's smtp-sink (scripts/test-deps installs it)");
    let mut c = Command::new(bin);
    // As root it must drop to another user, which then writes the dumps.
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.parent().expect("parent"), dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        c.args(["-u", "nobody"]);
    }
    let child = c
        .args(["-d", &format!("{}/msg-", dir.display())])
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn smtp-sink");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "smtp-sink does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    common::Killed(child)
}

/// `caliopen init` of alpha.test in `data` with submission, IMAP and web
/// on these ports (and `extra` arguments); returns what init printed.
fn init_alpha(data: &Path, sub: u16, imap: u16, web: u16, extra: &[&str]) -> String {
    let (sub, imap, web) = (
        format!("127.0.0.1:{sub}"),
        format!("127.0.0.1:{imap}"),
        format!("127.0.0.1:{web}"),
    );
    let mut args = vec![
        "init",
        "--data",
        data.to_str().expect("utf-8"),
        "--domain",
        "alpha.test",
        "--smtp",
        "127.0.0.1:0",
        "--submission",
        &sub,
        "--metrics",
        "127.0.0.1:0",
        "--imap",
        &imap,
        "--web",
        &web,
    ];
    args.extend_from_slice(extra);
    caliopen(&args, None)
}

#[test]
fn outgoing_mail_is_dkim_signed_and_clients_configure_themselves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dumps = tmp.path().join("sink");
    std::fs::create_dir(&dumps).expect("dir");
    let sink_port = free_port();
    let _sink = smtp_sink(sink_port, &dumps);

    let (sub, imap, web) = (free_port(), free_port(), free_port());
    let data = tmp.path().join("a");
    let relay = format!("127.0.0.1:{sink_port}");
    let init = init_alpha(&data, sub, imap, web, &["--relay", &relay]);
    // `init` makes the keys and says what to do next.
    assert!(init.contains("DKIM keys for alpha.test"), "{init}");
    assert!(init.contains("caliopen dns --config"), "{init}");
    let cfg = data.join("caliopen.toml");
    let cfg_s = cfg.to_str().expect("utf-8");
    caliopen(
        &[
            "user",
            "add",
            "--config",
            cfg_s,
            "alice",
            "--password-stdin",
        ],
        Some("alice password\n"),
    );
    let records = caliopen(&["dns", "--config", cfg_s, "--json"], None);
    let records_path = tmp.path().join("records.json");
    std::fs::write(&records_path, &records).expect("write");
    let log = tmp.path().join("a.log");
    let (child, bound) = common::spawn_daemon(
        &cfg,
        Stdio::from(std::fs::File::create(&log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _d = Daemon(child);
    assert_eq!(bound.submission.port(), sub);

    let tls = data.join("tls.pem");
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {sub}, timeout=10)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["carol@outside.test"],
  b"From: Alice <alice@alpha.test>\r\nTo: carol@outside.test\r\nSubject: signed twice\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <dkim-1@alpha.test>\r\n\r\nHello Carol,\r\n\r\nthis one is signed.\r\n")
s.quit()
"#,
        tls = tls.display()
    ));
    let t0 = Instant::now();
    let dump = loop {
        let found = std::fs::read_dir(&dumps)
            .expect("dumps")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        if let Some(p) = found {
            // smtp-sink writes the file whole at the end of DATA; let it finish.
            std::thread::sleep(Duration::from_millis(200));
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "nothing reached smtp-sink; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // dkimpy, with the DNS answered from `caliopen dns --json`.
    let verdicts = python(&format!(
        r#"
import json, re, dkim
records = json.load(open("{records}"))
txt = {{}}
for r in records:
    if r["type"] == "TXT":
        txt.setdefault(r["name"].lower() + ".", []).append(r["value"].encode())
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    vals = txt.get(name.lower(), [])
    return vals[0] if vals else None
raw = open("{dump}", "rb").read()
# smtp-sink stores lines with LF and its own trace fields first: back to the wire form.
raw = re.sub(rb"\r?\n", b"\r\n", raw)
head, _, _ = raw.partition(b"\r\n\r\n")
sigs = [l for l in head.split(b"\r\n") if l.lower().startswith(b"dkim-signature:")]
assert len(sigs) == 2, head
algos = sorted(re.search(rb"a=([a-z0-9-]+)", s).group(1).decode() for s in sigs)
assert algos == ["ed25519-sha256", "rsa-sha256"], algos
errors = []
def check(msg):
    out = []
    for i in range(2):
        try:
            out.append(dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc))
        except dkim.DKIMException as e:
            errors.append(str(e))
            out.append(False)
    return out
good = check(raw)
bad = check(raw.replace(b"this one is signed.", b"this one was altered."))
bad_hdr = check(raw.replace(b"Subject: signed twice", b"Subject: signed once"))
print(json.dumps({{"good": good, "bad": bad, "bad_hdr": bad_hdr, "algos": algos, "errors": errors}}))
"#,
        records = records_path.display(),
        dump = dump.display()
    ));
    let v: serde_json::Value = serde_json::from_str(verdicts.trim()).expect("json");
    assert_eq!(v["good"], serde_json::json!([true, true]), "{v}");
    assert_eq!(v["bad"], serde_json::json!([false, false]), "{v}");
    assert_eq!(v["bad_hdr"], serde_json::json!([false, false]), "{v}");
    // The sent copy keeps the bytes as submitted.
    let sent = caliopen(
        &[
            "mail",
            "list",
            "--config",
            cfg_s,
            "--user",
            "alice",
            "--mailbox",
            "sent",
            "--json",
        ],
        None,
    );
    let sent: Vec<serde_json::Value> = serde_json::from_str(&sent).expect("json");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let id = sent[0]["id"].as_str().expect("id").to_owned();
    let raw = caliopen(
        &["mail", "show", "--config", cfg_s, "--user", "alice", &id],
        None,
    );
    assert!(!raw.contains("DKIM-Signature"), "{raw}");

    // Mail clients and MTA-STS, from the web listener.
    let out = python(&format!(
        r#"
import ssl, urllib.request, xml.etree.ElementTree as ET, json
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
base = "https://127.0.0.1:{web}"
def get(path, data=None):
    req = urllib.request.Request(base + path, data=data)
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode()
out = {{}}
for path in ["/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"]:
    ct, body = get(path)
    root = ET.fromstring(body)
    p = root.find("emailProvider")
    inc = p.find("incomingServer")
    outg = p.find("outgoingServer")
    out[path] = {{
        "ct": ct, "domains": [d.text for d in p.findall("domain")],
        "imap": [inc.get("type"), inc.find("hostname").text, int(inc.find("port").text), inc.find("socketType").text],
        "smtp": [outg.get("type"), outg.find("hostname").text, int(outg.find("port").text), outg.find("socketType").text],
    }}
req = b'<?xml version="1.0"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>alice@alpha.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>'
ct, body = get("/autodiscover/autodiscover.xml", req)
ns = {{"a": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}}
root = ET.fromstring(body)
protos = root.findall(".//a:Protocol", ns)
out["autodiscover"] = [[p.find("a:Type", ns).text, p.find("a:Server", ns).text, int(p.find("a:Port", ns).text), p.find("a:LoginName", ns).text] for p in protos]
ct, body = get("/.well-known/mta-sts.txt")
out["mta_sts"] = {{"ct": ct, "lines": body.splitlines()}}
print(json.dumps(out))
"#,
        tls = tls.display(),
        web = web
    ));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    for path in [
        "/.well-known/autoconfig/mail/config-v1.1.xml",
        "/mail/config-v1.1.xml",
    ] {
        let a = &v[path];
        assert_eq!(a["domains"], serde_json::json!(["alpha.test"]), "{v}");
        assert_eq!(
            a["imap"],
            serde_json::json!(["imap", "mx.alpha.test", imap, "STARTTLS"]),
            "{v}"
        );
        assert_eq!(
            a["smtp"],
            serde_json::json!(["smtp", "mx.alpha.test", sub, "STARTTLS"]),
            "{v}"
        );
        assert!(a["ct"].as_str().is_some_and(|c| c.contains("xml")), "{v}");
    }
    assert_eq!(
        v["autodiscover"],
        serde_json::json!([
            ["IMAP", "mx.alpha.test", imap, "alice@alpha.test"],
            ["SMTP", "mx.alpha.test", sub, "alice@alpha.test"]
        ]),
        "{v}"
    );
    assert_eq!(
        v["mta_sts"]["lines"],
        serde_json::json!([
            "version: STSv1",
            "mode: testing",
            "mx: mx.alpha.test",
            "max_age: 604800"
        ]),
        "{v}"
    );
    assert!(v["mta_sts"]["ct"]
        .as_str()
        .is_some_and(|c| c.starts_with("text/plain")));
    // The policy's id in DNS is the one of the policy served.
    let recs: Vec<serde_json::Value> = serde_json::from_str(&records).expect("json");
    let id = recs
        .iter()
        .find(|r| r["name"] == "_mta-sts.alpha.test")
        .and_then(|r| r["value"].as_str())
        .expect("_mta-sts record")
        .to_owned();
    assert!(id.starts_with("v=STSv1; id="), "{id}");

    // The metrics count the signature.
    let metrics = python(&format!(
        r#"
import urllib.request
print(urllib.request.urlopen("http://{}/metrics", timeout=10).read().decode())
"#,
        bound.metrics.expect("metrics")
    ));
    assert!(
        metrics.contains("caliopen_dkim_messages_total{outcome=\"signed\"} 1"),
        "{metrics}"
    );
}

/// The SHA-256 of the certificate `openssl s_client` is shown on `port`
/// (`starttls`: `smtp`, `imap`, or none for implicit TLS).
fn served_fingerprint(port: u16, starttls: Option<&str>) -> String {
    let mut args = vec![
        "s_client".to_owned(),
        "-connect".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    if let Some(p) = starttls {
        args.extend(["-starttls".to_owned(), p.to_owned()]);
    }
    let mut c = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    drop(c.stdin.take());
    let out = c.wait_with_output().expect("s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate from port {port}: {text}"));
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .expect("end of certificate")
        + start
        + "-----END CERTIFICATE-----".len();
    let der = pem_der(&text[start..end]);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    hex::encode(d.as_ref())
}

/// A P-256 self-signed certificate made by openssl (`extra`: its name).
fn openssl_self_signed(key: &Path, cert: &Path, extra: &[&str]) {
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30"])
        .args(["-keyout", key.to_str().expect("utf-8")])
        .args(["-out", cert.to_str().expect("utf-8")])
        .args(extra)
        .output()
        .expect("openssl req");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn pem_der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("pem").into_contents()
}

/// A certificate replaced on disk (made here by openssl, as certbot or an
/// operator would) is what every listener serves next, without a restart;
/// a broken replacement is refused and the previous one stays.
#[test]
fn a_renewed_certificate_is_served_by_every_listener_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (sub, imap, web) = (free_port(), free_port(), free_port());
    let data = tmp.path().join("a");
    init_alpha(&data, sub, imap, web, &[]);
    let cfg = data.join("caliopen.toml");
    let log = tmp.path().join("a.log");
    let (child, bound) = common::spawn_daemon(
        &cfg,
        Stdio::from(std::fs::File::create(&log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _d = Daemon(child);
    let old = pem_der(&std::fs::read_to_string(data.join("tls.pem")).expect("pem"));
    let old = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &old).as_ref());
    let listeners = [
        (sub, Some("smtp")),
        (bound.smtp.port(), Some("smtp")),
        (imap, Some("imap")),
        (web, None),
    ];
    for (port, st) in listeners {
        assert_eq!(served_fingerprint(port, st), old, "port {port}");
    }
    // A new pair from openssl, written key first then certificate (as a
    // renewal tool does), each replaced by rename.
    let new_key = tmp.path().join("new.key");
    let new_cert = tmp.path().join("new.pem");
    openssl_self_signed(
        &new_key,
        &new_cert,
        &[
            "-subj",
            "/CN=mx.alpha.test",
            "-addext",
            "subjectAltName=DNS:mx.alpha.test",
        ],
    );
    let new_fp = {
        let der = pem_der(&std::fs::read_to_string(&new_cert).expect("pem"));
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref())
    };
    std::fs::rename(&new_key, data.join("tls.key")).expect("key");
    std::fs::rename(&new_cert, data.join("tls.pem")).expect("cert");
    let t0 = Instant::now();
    while served_fingerprint(sub, Some("smtp")) != new_fp {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the new certificate is not served; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (port, st) in listeners {
        assert_eq!(served_fingerprint(port, st), new_fp, "port {port}");
    }
    // A certificate that does not match the key: refused, logged, counted.
    let other_path = tmp.path().join("other.pem");
    openssl_self_signed(Path::new("/dev/null"), &other_path, &["-subj", "/CN=other"]);
    let other = std::fs::read_to_string(&other_path).expect("pem");
    assert!(other.contains("BEGIN CERTIFICATE"), "{other}");
    std::fs::rename(&other_path, data.join("tls.pem")).expect("rename");
    let metrics = bound.metrics.expect("metrics");
    let t0 = Instant::now();
    loop {
        let m = python(&format!(
            "import urllib.request\nprint(urllib.request.urlopen('http://{metrics}/metrics', timeout=10).read().decode())"
        ));
        if m.contains("caliopen_tls_certificate_reloads_total{outcome=\"refused\"} 1") {
            assert!(
                m.contains("caliopen_tls_certificate_reloads_total{outcome=\"served\"} 1"),
                "{m}"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{m}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(served_fingerprint(sub, Some("smtp")), new_fp);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("cannot be used: still serving the previous one"),
        "{text}"
    );
}

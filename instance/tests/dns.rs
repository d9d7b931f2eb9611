//! DNS-backed mail on loopback, against a small authoritative DNS server
//! run by this test on 127.0.0.1 (no query leaves the machine): A delivers
//! directly to B's MX found by an MX lookup, B checks SPF and DMARC of that
//! mail and DKIM of a message signed with the test key, and a null MX
//! bounces.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::caliopen_ok as caliopen;
use common::Daemon;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_MX: u16 = 15;
const TYPE_TXT: u16 = 16;
const TYPE_SRV: u16 = 33;

/// Records: (lowercase name without the final dot, type) → RDATAs.
type Zone = HashMap<(String, u16), Vec<Vec<u8>>>;

fn name_wire(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn txt(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(255) {
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

fn mx(pref: u16, host: &str) -> Vec<u8> {
    let mut out = pref.to_be_bytes().to_vec();
    out.extend(name_wire(host));
    out
}

fn srv(value: &str) -> Vec<u8> {
    let f: Vec<&str> = value.split_whitespace().collect();
    assert_eq!(f.len(), 4, "SRV value {value:?}");
    let mut out = Vec::new();
    for n in &f[..3] {
        out.extend_from_slice(&n.parse::<u16>().expect("SRV number").to_be_bytes());
    }
    out.extend(name_wire(f[3]));
    out
}

/// The wire form of one record printed by `caliopen dns --json`.
fn published(r: &serde_json::Value) -> (String, u16, Vec<u8>) {
    let name = r["name"].as_str().expect("name").to_owned();
    let value = r["value"].as_str().expect("value");
    match r["type"].as_str().expect("type") {
        "MX" => {
            let (pref, host) = value.split_once(' ').expect("MX value");
            (name, TYPE_MX, mx(pref.parse().expect("preference"), host))
        }
        "TXT" => (name, TYPE_TXT, txt(value)),
        "SRV" => (name, TYPE_SRV, srv(value)),
        "CNAME" => (name, TYPE_CNAME, name_wire(value)),
        t => panic!("record type {t} in {r}"),
    }
}

/// Answers one query from `zone`; `None` for a packet that is not a query.
fn answer(zone: &Zone, q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    let question_end = pos + 4;
    q.get(pos..question_end)?;
    let name = labels.join(".");
    let known = zone.keys().any(|(n, _)| *n == name);
    let rdatas = zone.get(&(name, qtype)).cloned().unwrap_or_default();
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    let rd = q[2] & 0x01;
    r.push(0x84 | rd); // response, authoritative, RD copied
    r.push(if known { 0 } else { 3 }); // NOERROR / NXDOMAIN
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(rdatas.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..question_end]);
    for rdata in rdatas {
        r.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        // A short TTL: tests change records while the daemons run.
        r.extend_from_slice(&1u32.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    Some(r)
}

struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    zone: Arc<std::sync::Mutex<Zone>>,
}

impl DnsServer {
    /// Replaces the records of `name` and type `t`.
    fn set(&self, name: &str, t: u16, rdatas: Vec<Vec<u8>>) {
        self.zone
            .lock()
            .expect("zone")
            .insert((name.to_ascii_lowercase(), t), rdatas);
    }

    /// Publishes one more record.
    fn add(&self, name: &str, t: u16, rdata: Vec<u8>) {
        self.zone
            .lock()
            .expect("zone")
            .entry((name.to_ascii_lowercase(), t))
            .or_default()
            .push(rdata);
    }

    fn start(zone: Zone) -> Self {
        let zone = Arc::new(std::sync::Mutex::new(zone));
        let z = zone.clone();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let r = answer(&z.lock().expect("zone"), &buf[..len]);
                if let Some(r) = r {
                    n.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&r, from);
                }
            }
        });
        Self {
            addr,
            stop,
            queries,
            zone,
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn instance(root: &Path, name: &str, domain: &str, dns: SocketAddr, extra_smtp: &str) -> String {
    let data = root.join(name);
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
        ],
        None,
    );
    let cfg = data.join("caliopen.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen("[smtp]\n", &format!("[smtp]\n{extra_smtp}"), 1)
        + &format!("\n[dns]\nenabled = true\nservers = [\"{dns}\"]\ntimeout_seconds = 2\n");
    std::fs::write(&cfg, text).expect("write config");
    cfg.to_str().expect("utf-8").to_owned()
}

fn list(cfg: &str, user: &str) -> Vec<serde_json::Value> {
    let out = caliopen(
        &["mail", "list", "--config", cfg, "--user", user, "--json"],
        None,
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn wait_for(cfg: &str, user: &str, n: usize, log: &Path) -> Vec<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        let l = list(cfg, user);
        if l.len() >= n {
            return l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{user} has {} of {n} messages; log:\n{}",
            l.len(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn list_box(cfg: &str, user: &str, mailbox: &str) -> Vec<serde_json::Value> {
    let out = caliopen(
        &[
            "mail",
            "list",
            "--config",
            cfg,
            "--user",
            user,
            "--mailbox",
            mailbox,
            "--json",
        ],
        None,
    );
    serde_json::from_str::<serde_json::Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn python(script: &str) {
    common::python(script);
}

#[test]
fn direct_mx_delivery_and_sender_checks_with_a_loopback_dns() {
    let mut zone: Zone = HashMap::new();
    let mut add = |n: &str, t: u16, r: Vec<u8>| {
        zone.entry((n.to_owned(), t)).or_default().push(r);
    };
    add("beta.test", TYPE_MX, mx(10, "mx.beta.test"));
    add("mx.beta.test", TYPE_A, vec![127, 0, 0, 1]);
    // alpha.test publishes what `caliopen dns` prints (below), and the
    // address of its MX, which its SPF record (`mx`) names.
    add("mx.alpha.test", TYPE_A, vec![127, 0, 0, 1]);
    add("example.test", TYPE_TXT, txt("v=spf1 ip4:127.0.0.1 -all"));
    add("_dmarc.example.test", TYPE_TXT, txt("v=DMARC1; p=none"));
    add(
        "caliopen-test._domainkey.example.test",
        TYPE_TXT,
        txt("v=DKIM1; k=ed25519; p=KljoPXc81OxIhm7hSM7y/UtEmzOssBhnsmKoeA8Kptc="),
    );
    add("nomail.test", TYPE_MX, mx(0, "."));
    // Junk and refusals at B: a domain asking for quarantine, one whose SPF
    // allows nobody, one allowing loopback whose client a blocklist lists.
    add("quar.test", TYPE_TXT, txt("v=spf1 ip4:127.0.0.1 -all"));
    add("_dmarc.quar.test", TYPE_TXT, txt("v=DMARC1; p=quarantine"));
    add("nobody.test", TYPE_TXT, txt("v=spf1 -all"));
    add("loop.test", TYPE_TXT, txt("v=spf1 ip4:127.0.0.0/8 -all"));
    add("2.0.0.127.bl.test", TYPE_A, vec![127, 0, 0, 2]);
    let dns = DnsServer::start(zone);

    let tmp = tempfile::tempdir().expect("tmp");
    let b_cfg = instance(tmp.path(), "b", "beta.test", dns.addr, "");
    // B asks a blocklist about its clients (the [dns] section is last).
    let text = std::fs::read_to_string(&b_cfg).expect("config") + "blocklists = [\"bl.test\"]\n";
    std::fs::write(&b_cfg, text).expect("write config");
    caliopen(
        &["user", "add", "--config", &b_cfg, "bob", "--password-stdin"],
        Some("bob password\n"),
    );
    let b_log = tmp.path().join("b.log");
    let (child, b) = common::spawn_daemon(
        Path::new(&b_cfg),
        Stdio::from(std::fs::File::create(&b_log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _b = Daemon(child);

    // A has no relay: with DNS on, it delivers to the MX of each domain,
    // on B's port (port 25 in production).
    let a_cfg = instance(
        tmp.path(),
        "a",
        "alpha.test",
        dns.addr,
        &format!("delivery_port = {}\n", b.smtp.port()),
    );
    caliopen(
        &[
            "user",
            "add",
            "--config",
            &a_cfg,
            "alice",
            "--password-stdin",
        ],
        Some("alice password\n"),
    );
    // `caliopen dns check` asks the resolver of the configuration: nothing
    // is published yet, then everything `caliopen dns --json` lists is.
    let (ok, out, _) = common::run_caliopen(&["dns", "check", "--config", &a_cfg], None);
    assert!(!ok, "{out}");
    assert!(
        out.contains("MISSING   MX    alpha.test 10 mx.alpha.test."),
        "{out}"
    );
    assert!(out.contains("-ed25519._domainkey.alpha.test"), "{out}");
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&caliopen(&["dns", "--config", &a_cfg, "--json"], None))
            .expect("dns --json");
    for r in &records {
        let (name, t, rdata) = published(r);
        dns.add(&name, t, rdata);
    }
    let types: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    for t in ["MX", "TXT", "SRV"] {
        assert!(types.contains(&t), "{types:?}");
    }
    let out = caliopen(&["dns", "check", "--config", &a_cfg], None);
    assert!(
        out.contains(&format!(
            "{n} records: {n} as expected, 0 to fix",
            n = records.len()
        )),
        "{out}"
    );

    let a_log = tmp.path().join("a.log");
    let (child, a) = common::spawn_daemon(
        Path::new(&a_cfg),
        Stdio::from(std::fs::File::create(&a_log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _a = Daemon(child);

    let a_tls = tmp.path().join("a/tls.pem");
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["bob@beta.test"], b"From: alice@alpha.test\r\nTo: bob@beta.test\r\nSubject: found by MX\r\n\r\nHi Bob.\r\n")
s.sendmail("alice@alpha.test", ["x@nomail.test"], b"From: alice@alpha.test\r\nTo: x@nomail.test\r\nSubject: to a null MX\r\n\r\nHello?\r\n")
s.quit()
"#,
        tls = a_tls.display(),
        port = a.submission.port()
    ));
    let got = wait_for(&b_cfg, "bob", 1, &a_log);
    let m = &got[0];
    assert_eq!(m["subject"], "found by MX", "{m}");
    assert_eq!(m["via"], "smtp");
    assert_eq!(m["transport"]["tls_version"], "TLSv1_3", "{m}");
    assert_eq!(m["transport"]["spf"], "pass", "{m}");
    assert_eq!(m["transport"]["dmarc"], "pass", "{m}");
    // Signed by A with both keys, checked by B against the published records.
    assert_eq!(m["transport"]["dkim"], "pass", "{m}");
    let features: Vec<&str> = m["privacy"]["explanation"]
        .as_array()
        .expect("explanation")
        .iter()
        .filter_map(|e| e["feature"].as_str())
        .collect();
    assert!(features.contains(&"auth.spf_pass"), "{features:?}");
    assert!(features.contains(&"auth.dmarc_pass"), "{features:?}");
    // A logs how it delivered once B has answered its final 250, which
    // can be after B has stored the message: wait for the line.
    let t0 = Instant::now();
    let a_text = loop {
        let a_text = std::fs::read_to_string(&a_log).expect("log");
        if a_text.contains("starttls-unverified") {
            break a_text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no starttls-unverified delivery logged by A:\n{a_text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(a_text.contains("direct=true"), "{a_text}");

    // The null MX bounces to alice at once (permanent).
    let bounces = wait_for(&a_cfg, "alice", 1, &a_log);
    assert_eq!(bounces[0]["subject"], "Undelivered Mail Returned to Sender");

    // A DKIM-signed message from the outside: B verifies it with the key from DNS.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/privacy/24-dkim-valid.eml");
    let tampered = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/privacy/25-dkim-tampered.eml");
    python(&format!(
        r#"
import smtplib
for path in ["{good}", "{bad}"]:
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
    s.sendmail("bob@example.test", ["bob@beta.test"], open(path, "rb").read())
    s.quit()
"#,
        good = fixture.display(),
        bad = tampered.display(),
        port = b.smtp.port()
    ));
    let got = wait_for(&b_cfg, "bob", 3, &b_log);
    let signed = got
        .iter()
        .find(|m| m["subject"] == "Signed by its domain")
        .expect("signed message");
    assert_eq!(signed["transport"]["dkim"], "pass", "{signed}");
    assert_eq!(signed["transport"]["spf"], "pass", "{signed}");
    let altered = got
        .iter()
        .find(|m| m["subject"] == "Signed by its domain, then altered")
        .expect("altered message");
    assert_eq!(altered["transport"]["dkim"], "fail", "{altered}");
    assert!(
        signed["privacy"]["technic"].as_u64() > altered["privacy"]["technic"].as_u64(),
        "{signed} {altered}"
    );

    // An alias of A forwards to bob@beta.test: the envelope sender is
    // rewritten (SRS) so that B's SPF check of A passes, and the message
    // keeps its DKIM signature, which B verifies.
    caliopen(
        &[
            "alias",
            "add",
            "--config",
            &a_cfg,
            "fwd@alpha.test",
            "bob@beta.test",
        ],
        None,
    );
    python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.sendmail("bob@example.test", ["fwd@alpha.test"], open("{good}", "rb").read())
s.quit()
"#,
        good = fixture.display(),
        port = a.smtp.port()
    ));
    let got = wait_for(&b_cfg, "bob", 4, &a_log);
    let fwd = got
        .iter()
        .find(|m| m["from"].as_str().is_some_and(|f| f.starts_with("SRS0=")))
        .expect("the forwarded copy");
    let srs = fwd["from"].as_str().expect("from").to_owned();
    assert!(srs.ends_with("=example.test=bob@alpha.test"), "{srs}");
    assert_eq!(fwd["subject"], "Signed by its domain", "{fwd}");
    assert_eq!(fwd["transport"]["spf"], "pass", "{fwd}");
    assert_eq!(fwd["transport"]["dkim"], "pass", "{fwd}");
    // A bounce to the rewritten sender is taken (and sent on to the
    // original sender); a forged one is refused.
    let forged = srs.replacen("=example.test=bob", "=example.test=eve", 1);
    let codes = common::python(&format!(
        r#"
import smtplib
for rcpt in ["{srs}", "{forged}"]:
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
    s.ehlo("bounces.example.test")
    s.mail("")
    print(s.rcpt(rcpt)[0])
    s.quit()
"#,
        port = a.smtp.port()
    ));
    assert_eq!(
        codes.split_whitespace().collect::<Vec<_>>(),
        ["250", "550"],
        "{codes}"
    );
    assert!(
        common::metric(
            a.metrics.expect("metrics"),
            "caliopen_forwarded_total{kind=\"alias\"}"
        ) >= 1
    );

    // Sender checks that refuse or file as junk, over B's MX.
    let out = common::python(&format!(
        r#"
import smtplib
def send(mail_from, frm, subject, source="127.0.0.1"):
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=10, source_address=(source, 0))
    try:
        s.sendmail(mail_from, ["bob@beta.test"], ("From: %s\r\nTo: bob@beta.test\r\nSubject: %s\r\n\r\nHello.\r\n" % (frm, subject)).encode())
        r = "250"
    except smtplib.SMTPDataError as e:
        r = "%d %s" % (e.smtp_code, e.smtp_error.decode())
    s.quit()
    print(subject, "=>", r)
# alpha.test publishes p=reject; this one is not signed by it and comes from example.test.
send("bob@example.test", "alice@alpha.test", "forged alpha")
send("bob@example.test", "someone@quar.test", "quarantined")
send("x@nobody.test", "x@nobody.test", "spf fails")
send("y@loop.test", "y@loop.test", "listed client", source="127.0.0.2")
"#,
        port = b.smtp.port()
    ));
    assert!(
        out.contains("forged alpha => 550 5.7.1 Rejected: the message fails DMARC"),
        "{out}"
    );
    for s in ["quarantined", "spf fails", "listed client"] {
        assert!(out.contains(&format!("{s} => 250")), "{out}");
    }
    let t0 = Instant::now();
    let junk = loop {
        let j = list_box(&b_cfg, "bob", "junk");
        if j.len() >= 3 || t0.elapsed() > Duration::from_secs(30) {
            break j;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let reason = |subject: &str| -> String {
        let m = junk
            .iter()
            .find(|m| m["subject"] == subject)
            .unwrap_or_else(|| panic!("{subject} not in junk: {junk:?}"));
        let features: Vec<&str> = m["privacy"]["explanation"]
            .as_array()
            .expect("explanation")
            .iter()
            .filter_map(|e| e["feature"].as_str())
            .collect();
        assert!(features.contains(&"filter.junk"), "{m}");
        m["transport"]["junk"].as_str().expect("reason").to_owned()
    };
    assert!(reason("quarantined").contains("quarantine"));
    assert!(reason("spf fails").contains("SPF failed"));
    assert!(reason("listed client").contains("127.0.0.2 is listed by bl.test"));
    let inbox = list(&b_cfg, "bob");
    assert!(
        !inbox
            .iter()
            .any(|m| m["subject"] == "forged alpha" || m["subject"] == "quarantined"),
        "{inbox:?}"
    );
    println!(
        "{} DNS queries answered by the loopback server",
        dns.queries.load(Ordering::Relaxed)
    );
}

/// A's direct delivery to B under B's MTA-STS policy (`mode: enforce`),
/// fetched over HTTPS from B's web listener: while beta.test's MX is a host
/// the policy does not name, the message waits in A's queue; once DNS names
/// the policy's MX it leaves over verified STARTTLS.
#[test]
fn mta_sts_enforce_holds_mail_until_the_mx_matches_the_policy() {
    let mut zone: Zone = HashMap::new();
    let mut add = |n: &str, t: u16, r: Vec<u8>| {
        zone.entry((n.to_owned(), t)).or_default().push(r);
    };
    add("beta.test", TYPE_MX, mx(10, "mail.beta.test"));
    for h in [
        "mail.beta.test",
        "mx.beta.test",
        "mta-sts.beta.test",
        "mx.alpha.test",
    ] {
        add(h, TYPE_A, vec![127, 0, 0, 1]);
    }
    let dns = DnsServer::start(zone);
    let tmp = tempfile::tempdir().expect("tmp");
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // B checks its own policy over HTTPS with `dns check` (its certificate
    // is self-signed: it names it as a root).
    let b_extra = format!(
        "mta_sts = \"enforce\"\nmta_sts_port = {web}\nmta_sts_ca = \"{}\"\n",
        tmp.path().join("b/tls.pem").display()
    );
    let b_cfg = instance(tmp.path(), "b", "beta.test", dns.addr, &b_extra);
    let text = std::fs::read_to_string(&b_cfg).expect("config")
        + &format!("\n[web]\nlisten = \"127.0.0.1:{web}\"\n");
    std::fs::write(&b_cfg, text).expect("write");
    caliopen(
        &["user", "add", "--config", &b_cfg, "bob", "--password-stdin"],
        Some("bob password\n"),
    );
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&caliopen(&["dns", "--config", &b_cfg, "--json"], None))
            .expect("json");
    let sts = records
        .iter()
        .find(|r| r["name"] == "_mta-sts.beta.test")
        .expect("B publishes an MTA-STS record");
    let (name, t, rdata) = published(sts);
    dns.add(&name, t, rdata);
    let b_log = tmp.path().join("b.log");
    let (child, b) = common::spawn_daemon(
        Path::new(&b_cfg),
        Stdio::from(std::fs::File::create(&b_log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _b = Daemon(child);
    let (_, out, _) = common::run_caliopen(&["dns", "check", "--config", &b_cfg], None);
    assert!(
        out.contains("ok        HTTPS https://mta-sts.beta.test/.well-known/mta-sts.txt"),
        "{out}"
    );
    assert!(out.contains("ok        TXT   _mta-sts.beta.test"), "{out}");

    // A trusts B's certificate (self-signed: a private PKI) for MTA-STS.
    let b_cert = tmp.path().join("b/tls.pem");
    let a_cfg = instance(
        tmp.path(),
        "a",
        "alpha.test",
        dns.addr,
        &format!(
            "delivery_port = {}\nmta_sts_port = {web}\nmta_sts_ca = \"{}\"\nretry_initial_seconds = 1\nretry_max_seconds = 1\n",
            b.smtp.port(),
            b_cert.display()
        ),
    );
    caliopen(
        &[
            "user",
            "add",
            "--config",
            &a_cfg,
            "alice",
            "--password-stdin",
        ],
        Some("alice password\n"),
    );
    let a_log = tmp.path().join("a.log");
    let (child, a) = common::spawn_daemon(
        Path::new(&a_cfg),
        Stdio::from(std::fs::File::create(&a_log).expect("log")),
        &[("RUST_LOG", "info")],
    );
    let _a = Daemon(child);
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["bob@beta.test"], b"From: alice@alpha.test\r\nTo: bob@beta.test\r\nSubject: under MTA-STS\r\n\r\nHi Bob.\r\n")
s.quit()
"#,
        tls = tmp.path().join("a/tls.pem").display(),
        port = a.submission.port()
    ));
    let metrics = a.metrics.expect("metrics");
    let t0 = Instant::now();
    while common::metric(metrics, "caliopen_mta_sts_total{outcome=\"refused\"}") < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no refusal; log:\n{}",
            std::fs::read_to_string(&a_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        list(&b_cfg, "bob").is_empty(),
        "delivered to a host the policy does not name"
    );
    let log = std::fs::read_to_string(&a_log).expect("log");
    assert!(log.contains("MTA-STS policy fetched"), "{log}");
    assert!(
        log.contains("no MX host of beta.test is named by its policy"),
        "{log}"
    );

    // DNS now names the policy's MX: the next attempt delivers, verified.
    dns.set("beta.test", TYPE_MX, vec![mx(10, "mx.beta.test")]);
    let got = wait_for(&b_cfg, "bob", 1, &a_log);
    assert_eq!(got[0]["subject"], "under MTA-STS");
    assert_eq!(got[0]["transport"]["tls_version"], "TLSv1_3", "{}", got[0]);
    assert_eq!(
        common::metric(metrics, "caliopen_mta_sts_total{outcome=\"enforced\"}"),
        1
    );
    let log = std::fs::read_to_string(&a_log).expect("log");
    assert!(
        log.contains("tls=starttls ") || log.contains("tls=\"starttls\""),
        "{log}"
    );

    // TLS reporting (RFC 8460): beta.test asks for reports over HTTPS (a
    // Python server with B's certificate) and by mail; A sends the report
    // of today's sessions when asked.
    caliopen(
        &[
            "user",
            "add",
            "--config",
            &b_cfg,
            "tlsrpt",
            "--password-stdin",
        ],
        Some("tlsrpt password\n"),
    );
    let rpt_port = common::free_port();
    let posted = tmp.path().join("posted");
    let server = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import http.server, os, ssl
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("{out}.tmp", "wb") as f:
            f.write(self.headers.get("Content-Type", "").encode() + b"\n" + self.path.encode() + b"\n" + body)
        os.rename("{out}.tmp", "{out}")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", {rpt_port}), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("{cert}", "{key}")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
# Until the report came (the test's own probe of the port is one request).
while not os.path.exists("{out}"):
    srv.handle_request()
"#,
            out = posted.display(),
            cert = b_cert.display(),
            key = tmp.path().join("b/tls.key").display(),
        ))
        .spawn()
        .expect("python3");
    let _server = common::Killed(server);
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", rpt_port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "report server");
        std::thread::sleep(Duration::from_millis(50));
    }
    dns.add(
        "_smtp._tls.beta.test",
        TYPE_TXT,
        txt(&format!(
            "v=TLSRPTv1; rua=https://mta-sts.beta.test:{rpt_port}/tlsrpt,mailto:tlsrpt@beta.test"
        )),
    );
    let sent: serde_json::Value = serde_json::from_str(&caliopen(
        &[
            "tlsrpt",
            "send",
            "--config",
            &a_cfg,
            "--include-today",
            "--json",
        ],
        None,
    ))
    .expect("tlsrpt send --json");
    let sent = sent.as_array().expect("array");
    let outcome = |uri: &str| {
        sent.iter()
            .find(|s| s["uri"] == uri)
            .map(|s| s["outcome"].clone())
    };
    assert_eq!(
        outcome(&format!("https://mta-sts.beta.test:{rpt_port}/tlsrpt")),
        Some("sent".into()),
        "{sent:?}"
    );
    assert_eq!(
        outcome("mailto:tlsrpt@beta.test"),
        Some("queued".into()),
        "{sent:?}"
    );
    // The report as posted: gzipped JSON of RFC 8460, read by Python.
    let report = common::python(&format!(
        r#"
import gzip, json
data = open("{p}", "rb").read()
ctype, path, body = data.split(b"\n", 2)
assert ctype == b"application/tlsrpt+gzip", ctype
assert path == b"/tlsrpt", path
print(json.dumps(json.loads(gzip.decompress(body))))
"#,
        p = posted.display()
    ));
    let report: serde_json::Value = serde_json::from_str(report.trim()).expect("report json");
    assert_eq!(report["organization-name"], "mx.alpha.test", "{report}");
    assert_eq!(report["contact-info"], "postmaster@alpha.test", "{report}");
    let sts = report["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["policy"]["policy-type"] == "sts")
        .cloned()
        .expect("an sts policy");
    assert_eq!(sts["policy"]["policy-domain"], "beta.test", "{sts}");
    assert_eq!(sts["policy"]["mx-host"][0], "mx.beta.test", "{sts}");
    assert!(
        sts["summary"]["total-successful-session-count"].as_u64() >= Some(1),
        "{sts}"
    );
    let details = sts["failure-details"].as_array().expect("failures");
    assert!(
        details
            .iter()
            .any(|d| d["result-type"] == "validation-failure"
                && d["receiving-mx-hostname"] == "mail.beta.test"),
        "{sts}"
    );
    // The same report by mail, at B.
    let got = wait_for(&b_cfg, "tlsrpt", 1, &a_log);
    let subject = got[0]["subject"].as_str().unwrap_or("");
    assert!(
        subject.starts_with("Report Domain: beta.test Submitter: mx.alpha.test Report-ID: <"),
        "{subject}"
    );
    let id = got[0]["id"].as_str().expect("id").to_owned();
    let raw = tmp.path().join("report.eml");
    let (ok, bytes, _) = common::run_caliopen(
        &["mail", "show", "--config", &b_cfg, "--user", "tlsrpt", &id],
        None,
    );
    assert!(ok);
    std::fs::write(&raw, bytes).expect("write");
    let mailed = common::python(&format!(
        r#"
import email, gzip, json
m = email.message_from_binary_file(open("{p}", "rb"))
assert m.get_content_type() == "multipart/report", m.get_content_type()
assert m.get_param("report-type") == "tlsrpt"
assert m["TLS-Report-Domain"] == "beta.test"
assert m["TLS-Report-Submitter"] == "mx.alpha.test"
parts = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
assert len(parts) == 1 and parts[0].get_filename().endswith(".json.gz"), parts
print(json.loads(gzip.decompress(parts[0].get_payload(decode=True)))["report-id"])
"#,
        p = raw.display()
    ));
    assert_eq!(mailed.trim(), report["report-id"].as_str().unwrap_or(""));
}

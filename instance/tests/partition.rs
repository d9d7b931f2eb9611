//! Network partitions with a network namespace made by the test: member
//! alpha runs inside namespace NS, joined to the host by a veth pair; the
//! association and members beta and gamma run on the host side. Cutting the
//! link partitions alpha from everyone.
//!
//! While cut off, alpha keeps accepting and queuing mail; the association
//! revokes gamma. When the link heals, alpha delivers its queue to beta
//! exactly once, learns the revocation, and enforces it: gamma is refused
//! and alpha's mail for gamma no longer travels over the mesh.
//!
//! Needs root and `ip` (iproute2); otherwise it prints why and passes
//! without running. The namespace is always removed (Drop guard).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
mod reliab;

use reliab::{Assoc, Instance};

struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

impl Netns {
    /// A namespace `name` linked to the host: host side `host_ip`/30 on
    /// `<name>h`, namespace side `ns_ip`/30 on `<name>n`, loopback up.
    fn create(name: &str, host_ip: Ipv4Addr, ns_ip: Ipv4Addr) -> Result<Self, String> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        let (h, n) = (ns.host_if(), ns.ns_if());
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &n])?;
        ip(&["link", "set", &n, "netns", name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &h])?;
        ip(&["link", "set", &h, "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &n])?;
        ns.exec(&["ip", "link", "set", &n, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    fn host_if(&self) -> String {
        format!("{}h", self.name)
    }
    fn ns_if(&self) -> String {
        format!("{}n", self.name)
    }
    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["netns", "exec", &self.name];
        v.extend_from_slice(args);
        ip(&v)
    }
    /// Runs a command inside; returns stdout.
    fn output(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }
    fn cut(&self) {
        self.exec(&["ip", "link", "set", &self.ns_if(), "down"])
            .expect("cut");
    }
    fn heal(&self) {
        self.exec(&["ip", "link", "set", &self.ns_if(), "up"])
            .expect("heal");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not remove namespace {}: {e}", self.name);
        }
        let _ = ip(&["link", "del", &self.host_if()]);
    }
}

/// Why the test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Fetches alpha's metrics from inside the namespace.
fn ns_metric(ns: &Netns, addr: SocketAddr, name: &str) -> Option<f64> {
    let script = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{addr}/metrics', timeout=5).read().decode())"
    );
    let (ok, out) = ns.output(&["python3", "-c", &script]);
    if !ok {
        return None;
    }
    out.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Submits at alpha from inside the namespace.
fn ns_submit(ns: &Netns, alpha: &Instance, to: &str, subject: &str) {
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile="{tls}")
ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.starttls(context=ctx)
s.login("alice@alpha.test", "alice password")
s.sendmail("alice@alpha.test", ["{to}"], b"From: alice@alpha.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nhi\r\n")
s.quit()
"#,
        tls = alpha.data.join("tls.pem").display(),
        port = alpha.submission().port()
    );
    let (ok, out) = ns.output(&["python3", "-c", &script]);
    assert!(ok, "submission inside the namespace: {out}");
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    t0.elapsed()
}

#[test]
fn a_cut_off_member_queues_and_enforces_a_revocation_made_meanwhile_once_healed() {
    if let Some(why) = unsupported() {
        println!("SKIPPED partition test: {why}");
        return;
    }
    // A /30 per run, from the pid, in 10.213.0.0/16.
    let k = std::process::id() % 16_000;
    let (o3, o4) = ((k / 64) as u8, ((k % 64) * 4) as u8);
    let host_ip = Ipv4Addr::new(10, 213, o3, o4 + 1);
    let ns_ip = Ipv4Addr::new(10, 213, o3, o4 + 2);
    let name = format!("clp{}", std::process::id());
    let ns = match Netns::create(&name, host_ip, ns_ip) {
        Ok(ns) => ns,
        Err(e) => {
            // Root in a container without CAP_SYS_ADMIN, for instance.
            println!("SKIPPED partition test: cannot make a network namespace here: {e}");
            return;
        }
    };

    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let assoc = Assoc::start(root, SocketAddr::new(host_ip.into(), 0));
    let port = reliab::free_udp_port;

    // gamma: on the host, its MX reachable from the namespace (alpha's relay).
    let g_mx = SocketAddr::new(
        host_ip.into(),
        std::net::TcpListener::bind((host_ip, 0))
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port(),
    );
    let mut gamma = Instance::init(
        root,
        "gamma",
        "gamma.test",
        Some(format!("{host_ip}:{}", port())),
        None,
        Some((g_mx, "127.0.0.1:0".parse().expect("addr"))),
    );
    let mut beta = Instance::init(
        root,
        "beta",
        "beta.test",
        Some(format!("{host_ip}:{}", port())),
        None,
        None,
    );
    // alpha inside the namespace: listeners on its own loopback.
    let mut alpha = Instance::init(
        root,
        "alpha",
        "alpha.test",
        Some(format!("{ns_ip}:7443")),
        Some(&g_mx.to_string()),
        Some((
            "127.0.0.1:2525".parse().expect("addr"),
            "127.0.0.1:5587".parse().expect("addr"),
        )),
    );
    alpha.set("metrics", "listen = \"127.0.0.1:9925\"");
    alpha.wrapper = vec!["ip".into(), "netns".into(), "exec".into(), name.clone()];
    for (i, id) in [(&alpha, "alpha"), (&beta, "beta"), (&gamma, "gamma")] {
        i.join(&assoc, id);
    }
    alpha.add_user("alice", "alice password");
    beta.add_user("bob", "bob password");
    gamma.add_user("carol", "carol password");
    gamma.start();
    beta.start();
    alpha.start();
    let metrics: SocketAddr = "127.0.0.1:9925".parse().expect("addr");

    // Connected: a message to each over the mesh.
    ns_submit(&ns, &alpha, "bob@beta.test", "before");
    ns_submit(&ns, &alpha, "carol@gamma.test", "before");
    let b0 = beta.wait_for("bob", 1, Duration::from_secs(30));
    let c0 = gamma.wait_for("carol", 1, Duration::from_secs(30));
    assert_eq!(b0[0]["via"], "mesh", "{b0:?}");
    assert_eq!(c0[0]["via"], "mesh", "{c0:?}");
    let crl_before = ns_metric(&ns, metrics, "caliopen_trust_crl_number").expect("crl metric");

    // The partition.
    ns.cut();
    let t_cut = Instant::now();
    for i in 0..3 {
        ns_submit(&ns, &alpha, "bob@beta.test", &format!("during {i}"));
    }
    ns_submit(&ns, &alpha, "carol@gamma.test", "during");
    // The association revokes gamma; beta hears it, alpha cannot.
    assoc
        .ca
        .revoke(
            &caliopen_ca::RevokeTarget::Domain("gamma.test".into()),
            "privilegeWithdrawn",
        )
        .expect("revoke");
    std::thread::sleep(Duration::from_secs(6));
    let queued = ns_metric(&ns, metrics, "caliopen_mesh_outbox_size").expect("outbox metric");
    println!(
        "cut off for {:?}: alpha's outbox holds {queued}, its CRL is still number {crl_before}",
        t_cut.elapsed()
    );
    assert_eq!(queued, 4.0, "alpha does not queue while cut off");
    assert_eq!(beta.list("bob").len(), 1, "delivered through a cut link?");
    assert_eq!(
        ns_metric(&ns, metrics, "caliopen_trust_crl_number"),
        Some(crl_before),
        "alpha heard of the revocation through a cut link?"
    );

    // Heal.
    ns.heal();
    let t_heal = Instant::now();
    let learnt = wait_until(
        "alpha to learn the revocation",
        Duration::from_secs(90),
        || ns_metric(&ns, metrics, "caliopen_trust_crl_number").is_some_and(|n| n > crl_before),
    );
    println!("healed: alpha learnt of the revocation {learnt:?} after the link came back");
    let bob = beta.wait_for("bob", 4, Duration::from_secs(90));
    println!(
        "healed: alpha's queue for beta delivered {:?} after the link came back",
        t_heal.elapsed()
    );
    let mut subjects: Vec<String> = bob
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or("").to_owned())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["before", "during 0", "during 1", "during 2"],
        "each queued message exactly once"
    );
    assert!(bob.iter().all(|m| m["via"] == "mesh"));

    // Enforced: gamma, revoked, can no longer reach alpha over the mesh
    // (alpha refuses it as revoked), and alpha's mail for gamma takes SMTP.
    let carol = gamma.wait_for("carol", 2, Duration::from_secs(120));
    let during = carol
        .iter()
        .find(|m| m["subject"] == "during")
        .expect("queued mail for gamma");
    println!(
        "alpha's mail for gamma queued during the partition arrived via {} {:?} after healing",
        during["via"],
        t_heal.elapsed()
    );
    assert_eq!(carol.len(), 2, "{carol:?}");
    assert_eq!(
        during["via"], "smtp",
        "mail queued for gamma went over the mesh after gamma's revocation: {during}"
    );
    ns_submit(&ns, &alpha, "carol@gamma.test", "after");
    let carol = gamma.wait_for("carol", 3, Duration::from_secs(60));
    let after = carol
        .iter()
        .find(|m| m["subject"] == "after")
        .expect("after");
    assert_eq!(
        after["via"], "smtp",
        "mail for a revoked member went over the mesh: {after}"
    );
    assert!(
        ns_metric(&ns, metrics, "caliopen_mesh_peers_connected").unwrap_or(0.0) <= 1.0,
        "alpha still connected to gamma"
    );
    alpha.stop();
    beta.stop();
    gamma.stop();
    drop(ns);
    assert!(
        !Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&name))
            .unwrap_or(false),
        "namespace left behind"
    );
}

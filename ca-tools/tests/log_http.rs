//! The membership log over HTTPS on the association service's listener
//! (C2SP tlog-tiles under /log/), fetched by plain HTTP/1.1 clients (a raw
//! TLS stream, and curl when installed); the heartbeat of a running
//! service, seen over HTTPS and over Watch.

use caliopen_ca::tlog::{self, Entry, EntryKind, Tile, TileSet};
use caliopen_ca::{files, Authority, BoundService, Settings, SignRequest};
use caliopen_proto::pb::association::association_client::AssociationClient;
use caliopen_proto::pb::association::{watch_event, WatchRequest};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    tmp: tempfile::TempDir,
    ca: Arc<Authority>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<caliopen_ca::Result<()>>>,
}

impl Running {
    async fn start(settings: Settings, prepare: impl FnOnce(&Authority)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("assoc");
        let ca = Authority::init(&dir, "Tiles Test", 3650, settings).expect("init");
        prepare(&ca);
        let ca = Arc::new(ca);
        let bound = BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
            .await
            .expect("bind");
        let addr = bound.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.run(async move {
            let _ = rx.await;
        }));
        Self {
            tmp,
            ca,
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("service stops in time")
                .expect("join")
                .expect("service ran cleanly");
        }
    }

    fn verifier(&self) -> tlog::Verifier {
        let text = std::fs::read_to_string(self.tmp.path().join("assoc").join(files::LOG_PUB))
            .expect("log.pub");
        tlog::Verifier::parse(text.trim_end()).expect("verifier key")
    }
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh TLS connection offering only ALPN http/1.1, the
/// request written by hand and the answer read to the end.
async fn get(addr: SocketAddr, root_pem: &str, path: &str) -> Answer {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.expect("root pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let rest = &raw[split + 4..];
    let a = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    let body = if a
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        let len: usize = a
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("length");
        assert_eq!(rest.len(), len, "body length");
        rest.to_vec()
    };
    Answer { body, ..a }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).expect("hex"), 16)
            .expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn csr(key: &KeyPair, domain: &str) -> Vec<u8> {
    CertificateParams::new(vec![domain.to_owned()])
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
        .into_bytes()
}

/// An association whose log spans more than one full tile: a certificate
/// first, then 299 baseline changes (300 entries: a full level-0 tile, a
/// partial one of 44, a partial level-1 tile of 1).
fn populate(ca: &Authority) {
    ca.sign(&SignRequest {
        csr: csr(&KeyPair::generate().expect("key"), "alpha.test"),
        member_id: "alpha".into(),
        charter_version: "1.0".into(),
        successor: None,
        endpoints: vec!["127.0.0.1:7443".into()],
        days: None,
    })
    .expect("sign");
    for i in 0..299 {
        ca.set_baseline(&format!("0.1.{i}")).expect("baseline");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiles_over_https_rebuild_the_checkpoint_and_prove_inclusion() {
    let s = Running::start(Settings::default(), populate).await;
    let root = s.ca.root_pem().to_owned();
    let v = s.verifier();

    // The checkpoint, verified with log.pub and dated.
    let a = get(s.addr, &root, "/log/checkpoint").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        a.header("cache-control"),
        Some(caliopen_ca::CACHE_CHECKPOINT)
    );
    let (cp, _) = tlog::open_timestamped(&a.body, &v).expect("checkpoint verifies");
    assert_eq!(cp.size, 300);

    // Every hash tile the size needs: the head recomputed from them alone.
    let mut set = TileSet::new();
    let needed = tlog::tiles::tiles_for_size(cp.size);
    assert_eq!(needed.len(), 3);
    for t in &needed {
        let a = get(s.addr, &root, &format!("/log/tile/{}", t.path())).await;
        assert_eq!(a.status, 200, "{}", t.path());
        assert_eq!(a.header("content-type"), Some("application/octet-stream"));
        let want = if t.is_full() {
            caliopen_ca::CACHE_IMMUTABLE
        } else {
            caliopen_ca::CACHE_PARTIAL
        };
        assert_eq!(a.header("cache-control"), Some(want), "{}", t.path());
        set.insert(t, &a.body).expect("tile of the right size");
    }
    assert_eq!(tlog::root(&set, cp.size).expect("head"), cp.root);

    // The entry bundles: each entry hashes to its level-0 tile hash; the
    // certificate (entry 0) is proved included in the checkpoint.
    let mut entries = Vec::new();
    for path in ["entries/000", "entries/001.p/44"] {
        let a = get(s.addr, &root, &format!("/log/tile/{path}")).await;
        assert_eq!(a.status, 200, "{path}");
        entries.extend(tlog::tiles::decode_bundle(&a.body).expect("bundle"));
    }
    assert_eq!(entries.len(), 300);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            tlog::NodeSource::node(&set, 0, i as u64).expect("leaf"),
            tlog::leaf_hash(e),
            "entry {i}"
        );
    }
    let first = Entry::decode(&entries[0]).expect("entry");
    let EntryKind::Issuance { cert_der } = first.kind else {
        panic!("entry 0 is not the issuance");
    };
    let listed = s.ca.list().expect("list");
    assert_eq!(
        cert_der,
        pem::parse(&listed[0].record.certificate_pem)
            .expect("pem")
            .into_contents()
    );
    for i in [0u64, 255, 256, 299] {
        let proof = tlog::inclusion_proof(&set, i, cp.size).expect("proof from tiles");
        tlog::verify_inclusion(
            &tlog::leaf_hash(&entries[i as usize]),
            i,
            cp.size,
            &proof,
            &cp.root,
        )
        .expect("included");
    }
    // An older partial tile (a client holding the checkpoint at 290) is
    // still served, and is a prefix of the current one.
    let a = get(s.addr, &root, "/log/tile/0/001.p/34").await;
    assert_eq!(a.status, 200);
    let cur =
        s.ca.log_tile(&Tile::parse("0/001.p/44").expect("path"))
            .expect("tile")
            .expect("exists");
    assert_eq!(a.body, cur[..34 * 32]);

    // Refusals: not in the tree 404, malformed 400, elsewhere 404.
    for (path, status) in [
        ("/log/tile/0/001", 404),
        ("/log/tile/0/002.p/1", 404),
        ("/log/tile/0/001.p/45", 404),
        ("/log/tile/entries/001", 404),
        ("/log/tile/1/000", 404),
        ("/log/tile/9/000", 404),
        ("/log/tile/0/1", 400),
        ("/log/tile/0/x000/001", 400),
        ("/log/tile/00/000", 400),
        ("/log/tile/64/000", 400),
        ("/log/tile/0/000.p/0", 400),
        ("/log/tile/0/000.p/256", 400),
        ("/log/tile/0/%30%30%30", 400),
        (
            "/log/tile/entries/x999/x999/x999/x999/x999/x999/x999/999",
            400,
        ),
        ("/log/tile/", 400),
        ("/log/checkpoint/x", 404),
        ("/log/", 404),
        ("/log/nothing", 404),
        ("/", 404),
    ] {
        let a = get(s.addr, &root, path).await;
        assert_eq!(
            a.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    let long = format!("/log/tile/0/{}", "x001/".repeat(2000));
    assert_eq!(get(s.addr, &root, &long).await.status, 400);

    // curl (an independent HTTP client; .ci/run installs it): the same bytes.
    let have_curl = std::process::Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(have_curl, "curl is needed (.ci/run installs it)");
    {
        let ca_file = s.tmp.path().join("assoc").join(files::CA_CERT);
        let curl = |path: &str, http1: bool| {
            let mut c = std::process::Command::new("curl");
            c.args(["-sS", "--fail", "--max-time", "10", "-D", "-", "--cacert"])
                .arg(&ca_file);
            if http1 {
                c.arg("--http1.1");
            }
            let out = c
                .arg(format!("https://{}{path}", s.addr))
                .output()
                .expect("curl");
            assert!(
                out.status.success(),
                "curl {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        for http1 in [true, false] {
            let raw = curl("/log/tile/0/000", http1);
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("headers");
            let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
            assert!(
                head.contains(&format!("cache-control: {}", caliopen_ca::CACHE_IMMUTABLE)),
                "{head}"
            );
            let body = &raw[split + 4..];
            let mut t = TileSet::new();
            t.insert(&Tile::parse("0/000").expect("path"), body)
                .expect("curl's tile");
            assert_eq!(
                body,
                s.ca.log_tile(&Tile::parse("0/000").expect("path"))
                    .expect("tile")
                    .expect("exists")
            );
            let raw = curl("/log/checkpoint", http1);
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("headers");
            tlog::open_timestamped(&raw[split + 4..], &v).expect("curl's checkpoint verifies");
        }
        println!("curl fetched the tile and checkpoint over HTTP/1.1 and HTTP/2");
    }
    s.stop().await;
}

/// A running service re-signs its unchanged checkpoint every interval: the
/// new one is served over HTTPS and pushed over Watch, same size and head,
/// later timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_heartbeats_its_checkpoint() {
    let settings = Settings {
        checkpoint_interval: time::Duration::seconds(1),
        ..Settings::default()
    };
    let s = Running::start(settings, |_| {}).await;
    let v = s.verifier();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(s.ca.root_pem()));
    let ch = Channel::from_shared(format!("https://{}", s.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut stream = AssociationClient::new(ch)
        .watch(WatchRequest {
            known_crl_number: u64::MAX,
            known_directory_serial: u64::MAX,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen: Vec<(tlog::Checkpoint, u64)> = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a checkpoint within the wait")
            .expect("stream")
            .expect("event");
        match ev.event {
            Some(watch_event::Event::Checkpoint(cp)) => {
                seen.push(tlog::open_timestamped(cp.note.as_bytes(), &v).expect("verifies"))
            }
            other => panic!("only checkpoints expected, got {other:?}"),
        }
    }
    assert!(seen.iter().all(|(c, _)| *c == seen[0].0), "same tree head");
    assert!(
        seen.windows(2).all(|w| w[1].1 > w[0].1),
        "timestamps increase: {:?}",
        seen.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    let a = get(s.addr, s.ca.root_pem(), "/log/checkpoint").await;
    let (c, t) = tlog::open_timestamped(&a.body, &v).expect("verifies");
    assert_eq!(c, seen[0].0);
    assert!(t >= seen[2].1);
    s.stop().await;
}

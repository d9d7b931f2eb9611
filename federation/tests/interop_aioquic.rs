//! Interop with an independent QUIC implementation (Python aioquic, installed
//! by `.ci/run`): without a member certificate it is refused; with one it
//! completes the handshake and gets a mesh answer.

mod common;
use caliopen_ca::{Authority, Settings, SignRequest};
use caliopen_federation::{IdentitySlot, MeshConfig, MeshNode, TrustStore};
use caliopen_proto::pb::directory::SignedDirectory;
use caliopen_proto::pb::mesh::{response, Response};
use common::{csr, Refusing};
use prost::Message;
use rcgen::KeyPair;
use std::path::Path;
use std::sync::Arc;

fn run_client(port: u16, dir: &Path, with_cert: bool) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aioquic_client.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .arg("alpha.test")
        .arg(dir.join("ca.pem"));
    if with_cert {
        cmd.arg(dir.join("py.pem")).arg(dir.join("py.key"));
    }
    let out = cmd
        .output()
        .expect("python3 must be installed, with aioquic (`python3 -m pip install aioquic`; .ci/run does it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "aioquic is not installed: `python3 -m pip install aioquic` (.ci/run does it)\n{stderr}"
    );
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("client output {line:?} ({e}); stderr: {stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_is_refused_without_a_member_certificate_and_admitted_with_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = Authority::init(
        &tmp.path().join("assoc"),
        "Interop",
        3650,
        Settings::default(),
    )
    .expect("init");
    let trust = Arc::new(TrustStore::new(ca.root_pem(), vec!["1.0".into()]).expect("trust"));
    let identity = IdentitySlot::new();
    let node = MeshNode::start(
        MeshConfig::new("alpha"),
        "127.0.0.1:0".parse().expect("addr"),
        trust.clone(),
        identity.clone(),
        Arc::new(Refusing),
    )
    .await
    .expect("start");
    let port = node.local_addr().expect("addr").port();
    let key = KeyPair::generate().expect("key");
    let issued = ca
        .sign(&SignRequest {
            csr: csr(&key, "alpha.test"),
            member_id: "alpha".into(),
            charter_version: "1.0".into(),
            endpoints: vec![format!("127.0.0.1:{port}")],
            ..Default::default()
        })
        .expect("sign");
    identity
        .set_pem(
            &issued.record.certificate_pem,
            &key.serialize_pem(),
            trust.provider(),
        )
        .expect("identity");
    // The Python peer is a labelled member too.
    let py_key = KeyPair::generate().expect("key");
    let py = ca
        .sign(&SignRequest {
            csr: csr(&py_key, "py.test"),
            member_id: "pyclient".into(),
            charter_version: "1.0".into(),
            ..Default::default()
        })
        .expect("sign");
    let p = ca.published();
    trust.offer_crl(&p.crl_der, None).expect("crl");
    trust
        .offer_directory(
            &SignedDirectory::decode(p.directory.as_slice()).expect("dir"),
            None,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .expect("dir");
    let dir = tmp.path();
    std::fs::write(dir.join("ca.pem"), ca.root_pem()).expect("write");
    std::fs::write(dir.join("py.pem"), &py.record.certificate_pem).expect("write");
    std::fs::write(dir.join("py.key"), py_key.serialize_pem()).expect("write");

    let port2 = port;
    let d = dir.to_owned();
    let anon = tokio::task::spawn_blocking(move || run_client(port2, &d, false))
        .await
        .expect("join");
    assert_eq!(anon["handshake"], false, "{anon}");
    println!("aioquic without a certificate: {}", anon["error"]);
    assert!(node.connected_peers().is_empty());

    let d = dir.to_owned();
    let member = tokio::task::spawn_blocking(move || run_client(port, &d, true))
        .await
        .expect("join");
    assert_eq!(member["handshake"], true, "{member}");
    let bytes = hex::decode(member["response_hex"].as_str().expect("hex")).expect("hex");
    let resp: Response = caliopen_federation::wire::decode_single(&bytes, 1 << 20).expect("frame");
    match resp.body {
        Some(response::Body::Hello(h)) => assert_eq!(h.member_id, "alpha"),
        other => panic!("expected Hello, got {other:?}"),
    }
    println!("aioquic with a member certificate: Hello answered");
    node.shutdown().await;
}

//! Labelled instances for tests: `caliopen init`, a label signed by an
//! in-process association, `caliopen join`, and a daemon on loopback.

use super::caliopen_ok as caliopen;
use caliopen_ca::{Authority, SignRequest};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A free UDP port on loopback (for a mesh endpoint).
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A free TCP port on loopback.
pub(crate) fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// One labelled instance; its daemon is killed on drop.
pub(crate) struct Member {
    pub id: String,
    pub data: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub smtp: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    pub imap: Option<u16>,
}

impl Member {
    /// The configuration file, as a string.
    pub(crate) fn c(&self) -> &str {
        self.config.to_str().expect("utf-8")
    }

    /// Starts the daemon (its log in DATA/daemon.log).
    pub(crate) fn start(&mut self) {
        let stderr = Stdio::from(std::fs::File::create(self.data.join("daemon.log")).expect("log"));
        let (child, b) = super::spawn_daemon(&self.config, stderr, &[("RUST_LOG", "info")]);
        self.smtp = Some(b.smtp);
        self.submission = Some(b.submission);
        self.child = Some(child);
    }

    /// Stops the daemon with SIGTERM and checks that it exited cleanly.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill");
            assert!(
                c.wait().expect("wait").success(),
                "daemon exit: {}",
                self.log()
            );
        }
    }

    /// The daemon's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("daemon.log")).unwrap_or_default()
    }

    /// Adds a user with a password.
    pub(crate) fn add_user(&self, localpart: &str, password: &str) {
        caliopen(
            &[
                "user",
                "add",
                "--config",
                self.c(),
                localpart,
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes a member `id` serving `domain` (with an IMAP listener), labelled
/// by `ca` (naming `successor` in its label) and joined to the association
/// at `url`.
pub(crate) fn make_member(
    root: &Path,
    ca: &Authority,
    url: &str,
    id: &str,
    domain: &str,
    successor: Option<&str>,
) -> Member {
    let data = root.join(id);
    let d = data.to_str().expect("utf-8");
    let mesh = format!("127.0.0.1:{}", free_udp_port());
    let imap = free_tcp_port();
    let imap_addr = format!("127.0.0.1:{imap}");
    caliopen(
        &[
            "init",
            "--data",
            d,
            "--domain",
            domain,
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--imap",
            &imap_addr,
            "--mesh",
            &mesh,
        ],
        None,
    );
    let csr = std::fs::read(data.join("member.csr.pem")).expect("csr");
    let issued = ca
        .sign(&SignRequest {
            csr,
            member_id: id.into(),
            charter_version: "1.0".into(),
            successor: successor.map(str::to_owned),
            endpoints: vec![mesh],
            ..Default::default()
        })
        .expect("sign");
    let cert = root.join(format!("{id}.signed.pem"));
    std::fs::write(&cert, issued.record.certificate_pem).expect("write");
    let ca_file = root.join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).expect("write");
    let config = data.join("caliopen.toml");
    let out = caliopen(
        &[
            "join",
            "--config",
            config.to_str().expect("utf-8"),
            "--ca",
            ca_file.to_str().expect("utf-8"),
            "--cert",
            cert.to_str().expect("utf-8"),
            "--association",
            url,
        ],
        None,
    );
    assert!(out.contains(&format!("joined as member {id}")), "{out}");
    Member {
        id: id.to_owned(),
        data,
        config,
        child: None,
        smtp: None,
        submission: None,
        imap: Some(imap),
    }
}

impl Member {
    /// A member known by its configuration file only (for CLI calls).
    pub(crate) fn config_only(config: &str) -> Member {
        let config = PathBuf::from(config);
        Member {
            id: String::new(),
            data: config.parent().map(Path::to_path_buf).unwrap_or_default(),
            config,
            child: None,
            smtp: None,
            submission: None,
            imap: None,
        }
    }
}

/// An association (in process) with its service on loopback.
pub(crate) struct Association {
    pub ca: std::sync::Arc<Authority>,
    pub url: String,
    stop: tokio_util::sync::CancellationToken,
    service: tokio::task::JoinHandle<Result<(), caliopen_ca::CaError>>,
}

impl Association {
    /// Makes one in `dir` and serves it.
    pub(crate) async fn start(dir: &Path, name: &str) -> Association {
        let ca = std::sync::Arc::new(
            Authority::init(dir, name, 3650, caliopen_ca::Settings::default()).expect("init"),
        );
        let bound =
            caliopen_ca::BoundService::bind(ca.clone(), "127.0.0.1:0".parse().expect("addr"), &[])
                .await
                .expect("bind");
        let url = format!("https://{}", bound.local_addr().expect("addr"));
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let service = tokio::spawn(bound.run(async move { s.cancelled().await }));
        Association {
            ca,
            url,
            stop,
            service,
        }
    }

    /// Stops the service.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.service.await;
    }
}

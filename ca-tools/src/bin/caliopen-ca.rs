//! `caliopen-ca`: the association's command-line tool (DESIGN.md §7).
//!
//! Thin: parses arguments, sets up logging, and calls the library, either
//! directly on the association directory or, while `serve` runs there,
//! through its admin socket.

use anyhow::{bail, Context};
use caliopen_ca::{
    connect_admin, status_to_error, Authority, BoundService, ListEntry, RevokeTarget, Settings,
    SignRequest,
};
use caliopen_proto::pb::ca_admin::{self as pb, revoke_request, witness_request};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `println!` that reports a closed stdout as an error instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {
        writeln!(std::io::stdout(), $($t)*)?
    };
}

#[derive(Parser)]
#[command(
    name = "caliopen-ca",
    version,
    about = "The Caliopen association's certificate authority"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct DirArg {
    /// The association directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new association: root key and certificate, state, first CRL and directory.
    Init {
        #[command(flatten)]
        dir: DirArg,
        /// The association's name (root certificate CN and O).
        #[arg(long)]
        name: String,
        /// Root certificate lifetime in days.
        #[arg(long, default_value_t = 3650)]
        root_days: u32,
    },
    /// Issue a member certificate from a CSR.
    Sign {
        #[command(flatten)]
        dir: DirArg,
        /// The member's CSR (PEM or DER).
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Identifier of the member.
        #[arg(long)]
        member_id: String,
        /// Charter version the operator signed.
        #[arg(long)]
        charter_version: String,
        /// Domain of the successor member.
        #[arg(long, value_name = "DOMAIN")]
        successor: Option<String>,
        /// Mesh endpoint (repeatable).
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Vec<String>,
        /// Lifetime in days (default 30).
        #[arg(long)]
        days: Option<u32>,
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Revoke a member certificate by serial, or every certificate holding a domain.
    Revoke {
        #[command(flatten)]
        dir: DirArg,
        /// Serial (hex; colons allowed).
        #[arg(long, conflicts_with = "domain", required_unless_present = "domain")]
        serial: Option<String>,
        /// Domain.
        #[arg(long)]
        domain: Option<String>,
        /// RFC 5280 reason (keyCompromise, cessationOfOperation, privilegeWithdrawn, …).
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Issue a new CRL and write it (PEM).
    Crl {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Issue a new signed directory and write it (protobuf `SignedDirectory`).
    Directory {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// List every member certificate with its status.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set the security baseline (minimum software version) published in the directory.
    Baseline {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, value_name = "VERSION")]
        min_version: String,
    },
    /// Record that a member closes and hands its users and domains over to its
    /// successor (the one its label names); a new directory maps its domains to it.
    Handover {
        #[command(flatten)]
        dir: DirArg,
        /// The member that closes (member id).
        #[arg(long, value_name = "MEMBER")]
        from: String,
        /// Its successor (member id, or a domain of it).
        #[arg(long, value_name = "SUCCESSOR")]
        to: String,
    },
    /// Verify a signed directory with a root certificate and print it as JSON.
    VerifyDirectory {
        /// Association root certificate(s), PEM.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The signed directory.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
    },
    /// The membership transparency log: its key, checkpoint and entries.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// Run the association service (TLS): CRL, directory, renewal, watch.
    Serve {
        #[command(flatten)]
        dir: DirArg,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Extra name or IP for the service certificate (repeatable).
        #[arg(long)]
        hostname: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LogCmd {
    /// Print the log's verifier key (`<origin>+<key id>+<key>`, signed-note format).
    Key {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print the latest signed checkpoint (tlog-checkpoint).
    Checkpoint {
        #[command(flatten)]
        dir: DirArg,
    },
    /// List the log's entries: index, kind, time, what changed.
    Entries {
        #[command(flatten)]
        dir: DirArg,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the whole tree from the entries and check it against the
    /// stored hashes and the latest checkpoint.
    Verify {
        #[command(flatten)]
        dir: DirArg,
    },
    /// The log's witnesses (C2SP tlog-witness) and their quorum, published
    /// in the directory.
    Witness {
        #[command(subcommand)]
        cmd: WitnessCmd,
    },
}

#[derive(Subcommand)]
enum WitnessCmd {
    /// Register a witness (or replace one of that name); issues a directory.
    Add {
        #[command(flatten)]
        dir: DirArg,
        /// The association's name for it.
        #[arg(long)]
        name: String,
        /// Its cosignature/v1 verifier key (`caliopen witness key` prints it).
        #[arg(long, value_name = "VKEY")]
        vkey: String,
        /// Its submission prefix: https://HOST[:PORT]/PREFIX (POST
        /// PREFIX/add-checkpoint; a Caliopen instance serves /witness).
        #[arg(long)]
        url: String,
        /// PEM certificate(s) its HTTPS certificate must chain to (default:
        /// the public web roots).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Remove a witness; issues a directory.
    Remove {
        #[command(flatten)]
        dir: DirArg,
        /// Its name.
        name: String,
    },
    /// Set how many distinct witnesses must cosign a checkpoint that grows
    /// the log before members take it (0: none); issues a directory.
    Quorum {
        #[command(flatten)]
        dir: DirArg,
        /// The quorum.
        n: u32,
    },
    /// List the witnesses and the quorum.
    List {
        #[command(flatten)]
        dir: DirArg,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

async fn run_witness(cmd: WitnessCmd) -> anyhow::Result<()> {
    let (dir, op, json) = match cmd {
        WitnessCmd::Add {
            dir,
            name,
            vkey,
            url,
            ca,
        } => {
            let ca_pem = match ca {
                Some(f) => {
                    std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?
                }
                None => String::new(),
            };
            let add = pb::WitnessAdd {
                name,
                vkey,
                url,
                ca_pem,
            };
            (dir, witness_request::Op::Add(add), false)
        }
        WitnessCmd::Remove { dir, name } => (dir, witness_request::Op::Remove(name), false),
        WitnessCmd::Quorum { dir, n } => (dir, witness_request::Op::Quorum(n), false),
        WitnessCmd::List { dir, json } => (dir, witness_request::Op::List(true), json),
    };
    let listing = matches!(op, witness_request::Op::List(_));
    let r = match backend(&dir.dir).await? {
        Backend::Remote(mut c) => c
            .witness(pb::WitnessRequest { op: Some(op) })
            .await
            .map_err(status_to_error)?
            .into_inner(),
        Backend::Local(ca) => {
            tokio::task::spawn_blocking(move || caliopen_ca::witness_op(&ca, op)).await??
        }
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.witnesses_json)?;
    if json {
        let v = serde_json::json!({"quorum": r.quorum, "witnesses": list});
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if !listing {
        out!(
            "{} witness(es), quorum {}; directory serial {}",
            list.len(),
            r.quorum,
            r.directory_serial
        );
        return Ok(());
    }
    out!("quorum: {}", r.quorum);
    for w in &list {
        out!(
            "{}  {}  {}",
            w["name"].as_str().unwrap_or(""),
            w["vkey"].as_str().unwrap_or(""),
            w["url"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Opens the directory itself for a `log` command (these read the state
/// database, which a running service holds).
async fn open_local(dir: &Path, what: &str) -> anyhow::Result<Authority> {
    if connect_admin(dir).await.is_some() {
        bail!(
            "the association service is running on {}: `log {what}` reads the state itself, \
             stop the service first",
            dir.display()
        );
    }
    let dir = dir.to_owned();
    Ok(tokio::task::spawn_blocking(move || Authority::open(&dir, Settings::default())).await??)
}

async fn run_log(cmd: LogCmd) -> anyhow::Result<()> {
    match cmd {
        LogCmd::Witness { cmd } => run_witness(cmd).await?,
        LogCmd::Key { dir } => {
            // log.pub is public and kept by every open: no need for the state.
            let path = dir.dir.join(caliopen_ca::files::LOG_PUB);
            let key = match std::fs::read_to_string(&path) {
                Ok(k) => k.trim_end().to_owned(),
                Err(_) => open_local(&dir.dir, "key")
                    .await?
                    .log_verifier()
                    .to_string(),
            };
            caliopen_ca::tlog::Verifier::parse(&key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            out!("{key}");
        }
        LogCmd::Checkpoint { dir } => {
            let ca = open_local(&dir.dir, "checkpoint").await?;
            let cp = tokio::task::spawn_blocking(move || ca.log_checkpoint()).await??;
            write!(std::io::stdout(), "{cp}")?;
        }
        LogCmd::Entries { dir, json } => {
            let ca = open_local(&dir.dir, "entries").await?;
            let entries = tokio::task::spawn_blocking(move || ca.log_entries()).await??;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &entries)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(out, "{:<7} {:<10} {:<20} WHAT", "INDEX", "KIND", "TIME")?;
            for e in &entries {
                let t = i64::try_from(e.time)
                    .ok()
                    .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<7} {:<10} {:<20} {}",
                    e.index,
                    e.kind,
                    t,
                    e.summary()
                )?;
            }
        }
        LogCmd::Verify { dir } => {
            let ca = open_local(&dir.dir, "verify").await?;
            let v = tokio::task::spawn_blocking(move || ca.verify_log()).await??;
            let signed = match v.signed_at {
                Some(t) => format!("signed at {t}"),
                None => "undated (the next heartbeat of `serve` dates it)".to_owned(),
            };
            out!(
                "OK: {} entries, tree head {}, match the stored hashes and the signed checkpoint ({signed})",
                v.size,
                caliopen_ca::tlog::base64::encode(&v.root)
            );
        }
    }
    Ok(())
}

fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn write_out(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("write {}", path.display()))
}

fn crl_pem(der: Vec<u8>) -> String {
    pem::encode(&pem::Pem::new("X509 CRL", der))
}

/// Either the running service (admin socket) or the directory itself.
enum Backend {
    Remote(pb::ca_admin_client::CaAdminClient<tonic::transport::Channel>),
    Local(Box<Authority>),
}

async fn backend(dir: &Path) -> anyhow::Result<Backend> {
    if let Some(c) = connect_admin(dir).await {
        tracing::debug!("using the running service's admin socket");
        return Ok(Backend::Remote(c));
    }
    let dir = dir.to_owned();
    let ca =
        tokio::task::spawn_blocking(move || Authority::open(&dir, Settings::default())).await??;
    Ok(Backend::Local(Box::new(ca)))
}

fn print_list(entries: &[ListEntry], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, entries)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<34} {:<10} {:<20} {:<20} DOMAINS",
        "SERIAL", "STATUS", "MEMBER", "NOT_AFTER"
    )?;
    for e in entries {
        let status = serde_json::to_value(e.status)?;
        let not_after = time::OffsetDateTime::from_unix_timestamp(e.record.not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:<34} {:<10} {:<20} {:<20} {}",
            e.record.serial,
            status.as_str().unwrap_or("?"),
            e.record.member_id,
            not_after,
            e.record.domains.join(",")
        )?;
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init {
            dir,
            name,
            root_days,
        } => {
            let d = dir.dir.clone();
            let ca = tokio::task::spawn_blocking(move || {
                Authority::init(&d, &name, root_days, Settings::default())
            })
            .await??;
            out!(
                "association {:?} created in {}; root certificate: {}",
                ca.name(),
                dir.dir.display(),
                dir.dir.join(caliopen_ca::files::CA_CERT).display()
            );
        }
        Cmd::Sign {
            dir,
            csr,
            member_id,
            charter_version,
            successor,
            endpoint,
            days,
            out,
        } => {
            let csr_bytes =
                std::fs::read(&csr).with_context(|| format!("read {}", csr.display()))?;
            if csr_bytes.len() > caliopen_ca::MAX_CSR_LEN {
                bail!(
                    "invalid CSR: larger than {} bytes",
                    caliopen_ca::MAX_CSR_LEN
                );
            }
            let (pem, serial) = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    // The admin API carries PEM; a DER request is wrapped as such.
                    let csr_pem = if csr_bytes.first() == Some(&0x30) {
                        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr_bytes))
                    } else {
                        String::from_utf8(csr_bytes)
                            .map_err(|_| anyhow::anyhow!("invalid CSR: neither PEM text nor DER"))?
                    };
                    let r = c
                        .sign(pb::SignRequest {
                            csr_pem,
                            member_id,
                            charter_version,
                            successor: successor.unwrap_or_default(),
                            endpoints: endpoint,
                            days: days.unwrap_or(0),
                        })
                        .await
                        .map_err(status_to_error)?
                        .into_inner();
                    (r.certificate_pem, r.serial)
                }
                Backend::Local(ca) => {
                    let req = SignRequest {
                        csr: csr_bytes,
                        member_id,
                        charter_version,
                        successor,
                        endpoints: endpoint,
                        days,
                    };
                    let issued = tokio::task::spawn_blocking(move || ca.sign(&req)).await??;
                    (issued.record.certificate_pem, issued.record.serial)
                }
            };
            write_out(&out, pem.as_bytes())?;
            out!("issued certificate {serial} -> {}", out.display());
        }
        Cmd::Revoke {
            dir,
            serial,
            domain,
            reason,
        } => {
            let (target, pb_target) = match (serial, domain) {
                (Some(s), _) => (
                    RevokeTarget::Serial(s.clone()),
                    revoke_request::Target::Serial(s),
                ),
                (None, Some(d)) => (
                    RevokeTarget::Domain(d.clone()),
                    revoke_request::Target::Domain(d),
                ),
                (None, None) => bail!("give --serial or --domain"),
            };
            let (newly, already, crl_number) = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    let r = c
                        .revoke(pb::RevokeRequest {
                            target: Some(pb_target),
                            reason,
                        })
                        .await
                        .map_err(status_to_error)?
                        .into_inner();
                    (r.newly_revoked, r.already_revoked, r.crl_number)
                }
                Backend::Local(ca) => {
                    let o =
                        tokio::task::spawn_blocking(move || ca.revoke(&target, &reason)).await??;
                    (o.newly_revoked, o.already_revoked, o.crl_number)
                }
            };
            for s in &newly {
                out!("revoked {s}");
            }
            for s in &already {
                out!("already revoked {s}");
            }
            out!("current CRL number {crl_number}");
        }
        Cmd::Crl { dir, out } => {
            let (number, der) = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    let r = c
                        .issue_crl(pb::IssueCrlRequest {})
                        .await
                        .map_err(status_to_error)?
                        .into_inner();
                    (r.crl_number, r.crl_der)
                }
                Backend::Local(ca) => tokio::task::spawn_blocking(move || ca.issue_crl()).await??,
            };
            write_out(&out, crl_pem(der).as_bytes())?;
            out!("CRL number {number} -> {}", out.display());
        }
        Cmd::Directory { dir, out } => {
            let (serial, bytes) = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    let r = c
                        .issue_directory(pb::IssueDirectoryRequest {})
                        .await
                        .map_err(status_to_error)?
                        .into_inner();
                    (r.serial, r.signed_directory)
                }
                Backend::Local(ca) => {
                    tokio::task::spawn_blocking(move || ca.issue_directory()).await??
                }
            };
            write_out(&out, &bytes)?;
            out!("directory serial {serial} -> {}", out.display());
        }
        Cmd::List { dir, json } => {
            let entries: Vec<ListEntry> = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    let r = c
                        .list(pb::ListRequest {})
                        .await
                        .map_err(status_to_error)?
                        .into_inner();
                    let v: Vec<serde_json::Value> = serde_json::from_str(&r.records_json)?;
                    if json {
                        out!("{}", serde_json::to_string_pretty(&v)?);
                        return Ok(());
                    }
                    serde_json::from_str::<Vec<RemoteEntry>>(&r.records_json)?
                        .into_iter()
                        .map(RemoteEntry::into_entry)
                        .collect()
                }
                Backend::Local(ca) => tokio::task::spawn_blocking(move || ca.list()).await??,
            };
            print_list(&entries, json)?;
        }
        Cmd::Baseline { dir, min_version } => {
            let serial = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    c.set_baseline(pb::SetBaselineRequest {
                        min_software_version: min_version,
                    })
                    .await
                    .map_err(status_to_error)?
                    .into_inner()
                    .directory_serial
                }
                Backend::Local(ca) => {
                    tokio::task::spawn_blocking(move || ca.set_baseline(&min_version)).await??
                }
            };
            out!("baseline set; directory serial {serial}");
        }
        Cmd::Handover { dir, from, to } => {
            let who = from.clone();
            let (to, domains) = match backend(&dir.dir).await? {
                Backend::Remote(mut c) => {
                    let r = c
                        .handover(pb::HandoverRequest { from, to })
                        .await
                        .map_err(status_to_error)?
                        .into_inner();
                    (r.to, r.domains)
                }
                Backend::Local(ca) => {
                    let h = tokio::task::spawn_blocking(move || ca.handover(&from, &to)).await??;
                    (h.to, h.domains)
                }
            };
            out!(
                "{who} hands over to {to}: {} now served by {to}; run `caliopen handover` on {who}'s instance",
                domains.join(", ")
            );
        }
        Cmd::VerifyDirectory { ca, input } => {
            let ca_text =
                std::fs::read_to_string(&ca).with_context(|| format!("read {}", ca.display()))?;
            let roots = pem::parse_many(&ca_text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?
                .into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| caliopen_proto::RootKey::from_cert_der(p.contents()))
                .collect::<Result<Vec<_>, _>>()?;
            if roots.is_empty() {
                bail!("{}: no certificate", ca.display());
            }
            let bytes =
                std::fs::read(&input).with_context(|| format!("read {}", input.display()))?;
            let d = caliopen_proto::decode_and_verify(&bytes, &roots)?;
            let members: Vec<serde_json::Value> = d
                .members
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "member_id": m.member_id, "domains": m.domains, "endpoints": m.endpoints,
                        "cert_sha256": m.cert_sha256.iter().map(hex::encode).collect::<Vec<_>>(),
                        "charter_version": m.charter_version, "successor": m.successor,
                        "not_after": m.not_after,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "association": d.association, "serial": d.serial, "issued_at": d.issued_at,
                "valid_until": d.valid_until, "min_software_version": d.min_software_version,
                "members": members, "log_size": d.log_size,
                "witnesses": d.witnesses.iter().map(|w| serde_json::json!({
                    "name": w.name, "vkey": w.vkey, "url": w.url,
                })).collect::<Vec<_>>(),
                "witness_quorum": d.witness_quorum,
            });
            out!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Log { cmd } => run_log(cmd).await?,
        Cmd::Serve {
            dir,
            listen,
            hostname,
        } => {
            let d = dir.dir.clone();
            let ca = Arc::new(
                tokio::task::spawn_blocking(move || Authority::open(&d, Settings::default()))
                    .await??,
            );
            let bound = BoundService::bind(ca.clone(), listen, &hostname).await?;
            let addr = bound.local_addr()?;
            let p = ca.published();
            tracing::info!(%addr, crl_number = p.crl_number, directory_serial = p.directory_serial,
                "association service listening");
            out!("listening on https://{addr}");
            std::io::stdout().flush()?;
            bound.run(shutdown_signal()).await?;
            tracing::info!("association service stopped");
        }
    }
    Ok(())
}

/// A list entry as it comes back from the admin socket.
#[derive(serde::Deserialize)]
struct RemoteEntry {
    status: String,
    #[serde(flatten)]
    record: caliopen_ca::CertRecord,
}

impl RemoteEntry {
    fn into_entry(self) -> ListEntry {
        let status = match self.status.as_str() {
            "active" => caliopen_ca::Status::Active,
            "revoked" => caliopen_ca::Status::Revoked,
            "pending" => caliopen_ca::Status::Pending,
            "superseded" => caliopen_ca::Status::Superseded,
            _ => caliopen_ca::Status::Expired,
        };
        ListEntry {
            status,
            record: self.record,
        }
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print normally; a usage error is one line.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let head = text.split("\n\nUsage:").next().unwrap_or("");
            let line = head.split_whitespace().collect::<Vec<_>>().join(" ");
            let line = line.trim_start_matches("error:").trim();
            eprintln!("caliopen-ca: error: {line} (see --help)");
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.cmd, Cmd::Serve { .. });
    init_logging(cli.log_json, if serving { "info" } else { "warn" });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caliopen-ca: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `caliopen-ca list | head`: the reader left, nothing is wrong.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("caliopen-ca: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

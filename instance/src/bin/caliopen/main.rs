//! `caliopen`: the instance daemon and its command-line tool (DESIGN.md §7).
//!
//! Thin: parses arguments, sets up logging, and calls the library. Commands
//! that touch the database go through the running daemon's admin socket, or
//! open the database themselves when no daemon runs.

mod demo;

use anyhow::{bail, Context};
use caliopen_instance::admin::{connect, valid_localpart, with_token, Op, OpOutput, Runner};
use caliopen_instance::config::{Config, LogFormat};
use caliopen_instance::daemon;
use caliopen_instance::login::hash_password;
use caliopen_instance::report;
use caliopen_instance::setup;
use caliopen_instance::store::Store;
use caliopen_instance::transfer;
use caliopen_proto::pb::instance_admin::PutUserRequest;
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `println!` that reports a closed stdout as an error instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {
        writeln!(std::io::stdout(), $($t)*)?
    };
}

#[derive(Parser)]
#[command(
    name = "caliopen",
    version,
    about = "A Caliopen instance: private correspondence, federated"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create an instance: DIR/caliopen.toml, the member key and CSR, a STARTTLS certificate.
    Init {
        /// Data directory to create.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Primary mail domain.
        #[arg(long)]
        domain: String,
        /// MX listener address.
        #[arg(long, value_name = "ADDR")]
        smtp: Option<SocketAddr>,
        /// Submission listener address.
        #[arg(long, value_name = "ADDR")]
        submission: Option<SocketAddr>,
        /// Mesh (QUIC) address.
        #[arg(long, value_name = "ADDR")]
        mesh: Option<SocketAddr>,
        /// Health and metrics endpoint address (default 127.0.0.1:9925).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Client API address (gRPC over TLS with the instance certificate).
        #[arg(long, value_name = "ADDR")]
        api: Option<SocketAddr>,
        /// IMAP address (STARTTLS; set `[imap] implicit_tls = true` for port 993).
        #[arg(long, value_name = "ADDR")]
        imap: Option<SocketAddr>,
        /// Web client address (HTTPS with the instance certificate).
        #[arg(long, value_name = "ADDR")]
        web: Option<SocketAddr>,
        /// Outbound relay HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        relay: Option<String>,
    },
    /// Join the association: install the signed member certificate and the association's root.
    Join {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The association's root certificate (PEM).
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The member certificate the association signed from member.csr.pem.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The association service, https://HOST:PORT.
        #[arg(long, value_name = "URL")]
        association: String,
        /// The association's membership-log key (its log.pub), to check the log with.
        #[arg(long, value_name = "FILE")]
        log_key: Option<PathBuf>,
    },
    /// The membership-log checkpoint this member holds (verified), and any split view found.
    Log {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// A whole labelled federation on loopback: association, three members, the outside world.
    Demo {
        /// Leave the federation running afterwards (Ctrl-C stops it).
        #[arg(long)]
        keep: bool,
    },
    /// Run the daemon (without --config: embedded defaults, data in ./caliopen-data).
    Run {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Read mailboxes.
    Mail {
        #[command(subcommand)]
        cmd: MailCmd,
    },
    /// Close this member: stream every account to the successor the association recorded
    /// (`caliopen-ca handover`) over the mesh, verify each, then forward all mail for the
    /// served domains to it. Resumable: run it again after an interruption.
    ///
    /// Two passes: the first while mail is still delivered here, then forwarding starts and
    /// a second pass carries what arrived in between. The daemon must run (it holds the
    /// mesh connection). Exits non-zero when an account could not be verified.
    Handover {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only these accounts (repeatable; one pass, no forwarding; default: every
        /// account, two passes, then forwarding).
        #[arg(long, value_name = "LOCALPART")]
        user: Vec<String>,
        /// One JSON object per account and pass on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Move whole accounts: every message with its facts, the password hash, quota, settings, aliases.
    Account {
        #[command(subcommand)]
        cmd: AccountCmd,
    },
    /// Check or repair the message store.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// The DNS records to publish for the instance's domains (`dns check`: compare with DNS).
    #[command(args_conflicts_with_subcommands = true)]
    Dns {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// JSON output: an array of {"name","type","value"}.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: Option<DnsCmd>,
    },
    /// The TLS certificate every listener serves: names, issuer, validity,
    /// and with [acme] when the daemon renews it.
    Certificate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// SMTP TLS reports (RFC 8460) of direct deliveries.
    Tlsrpt {
        #[command(subcommand)]
        cmd: TlsrptCmd,
    },
    /// DKIM keys: list them, rotate them.
    Dkim {
        #[command(subcommand)]
        cmd: DkimCmd,
    },
    /// The membership log's witness (`[witness] enabled`).
    Witness {
        #[command(subcommand)]
        cmd: WitnessCmd,
    },
    /// Manage aliases (an address for one or more accounts; @domain: catch-all).
    Alias {
        #[command(subcommand)]
        cmd: AliasCmd,
    },
    /// A contact's privacy index and public level (asked across the mesh), and the user's own.
    Privacy {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// The contact's address.
        #[arg(long, value_name = "ADDRESS")]
        contact: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Write one account into a new archive file (a digest of it is printed and kept in the file).
    Export {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// The archive to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept a user's move from another member: prints a one-time code to give to
    /// their old operator (for `caliopen account move`).
    Accept {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The member the user leaves (member id).
        #[arg(long, value_name = "MEMBER")]
        from: String,
        /// The account's name there (local part).
        #[arg(long, value_name = "LOCALPART")]
        account: String,
        /// Its name here (default: the same).
        #[arg(long = "as", value_name = "LOCALPART")]
        as_name: Option<String>,
        /// How long the code is valid.
        #[arg(long, default_value_t = 72)]
        hours: u32,
    },
    /// Move an account to another labelled member over the mesh, verified there; then
    /// mail for it is refused with `551 5.1.6` and the new address.
    Move {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// The new address (its domain served by the receiving member).
        #[arg(long, value_name = "ADDRESS")]
        to: String,
        /// The code the receiving operator gave (`caliopen account accept`).
        #[arg(long)]
        code: String,
        /// How long senders are told the new address (then: unknown user).
        #[arg(long, default_value_t = 180)]
        redirect_days: u32,
    },
    /// Make an account from an archive and check that what is stored matches its digest.
    ///
    /// The archive is believed for what it says of each message's journey (how
    /// it came, TLS, the mesh member), so its privacy index comes along: import
    /// only archives you got from the user or the member they leave. Its quota
    /// is kept up to this instance's default; aliases that exist here are left out.
    Import {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The archive.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The account's name here (default: its name in the archive).
        #[arg(long, value_name = "LOCALPART")]
        user: Option<String>,
        /// Go on with an import that was cut short (the account exists).
        #[arg(long)]
        resume: bool,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DnsCmd {
    /// Ask the instance's resolver for every record and say what is missing or different.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TlsrptCmd {
    /// Send the reports of finished days now (the daemon sends them after
    /// each UTC midnight by itself), through the running daemon.
    Send {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Today's sessions so far too.
        #[arg(long)]
        include_today: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Every key pair, its selectors and its state (pending, signing, overlap, retired).
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Make a new key pair per domain: published now, signing after --publish-hours;
    /// the pair it replaces stays published --overlap-days longer, then retires.
    Rotate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only this domain (repeatable; default: every domain of the configuration).
        #[arg(long, value_name = "DOMAIN")]
        domain: Vec<String>,
        /// Hours between publication and the first signature.
        #[arg(long, value_name = "N", default_value_t = caliopen_instance::dkim::DEFAULT_PUBLISH_HOURS)]
        publish_hours: u64,
        /// Days the replaced pair stays published after the new one signs.
        #[arg(long, value_name = "N", default_value_t = caliopen_instance::dkim::DEFAULT_OVERLAP_DAYS)]
        overlap_days: u64,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create a user (or set its password).
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Local part of the address.
        localpart: String,
        /// Read the password from standard input (otherwise one is generated and printed).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users: address, quota used and limit, messages.
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user and everything their account holds.
    Remove {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        localpart: String,
    },
    /// Set a user's quota (0: no limit), or give them the default again.
    Quota {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        localpart: String,
        /// Bytes of stored mail.
        #[arg(long, value_name = "N", conflicts_with = "default")]
        bytes: Option<u64>,
        /// Messages.
        #[arg(long, value_name = "N", conflicts_with = "default")]
        messages: Option<u64>,
        /// Back to the default of [accounts].
        #[arg(long)]
        default: bool,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Make (or replace) an alias for one or more users, or one that
    /// forwards to addresses of other domains (the envelope sender is
    /// rewritten with SRS; the message and its DKIM signatures are kept).
    Add {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// ALIAS@DOMAIN, or @DOMAIN for the domain's catch-all.
        alias: String,
        /// The users it reaches (local parts or their addresses), and
        /// addresses elsewhere it forwards to.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// List aliases.
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove an alias.
    Remove {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        alias: String,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Verify every body against its hash and every index entry against a body
    /// (through the running daemon, or on the data directory when none runs).
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Quarantine damaged bodies and correct wrong counts (a message whose body
        /// is gone is reported, never deleted).
        #[arg(long)]
        repair: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MailCmd {
    /// List a user's messages.
    List {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// A mailbox name or role (inbox, sent, drafts, trash, junk, archive); default: inbox.
        #[arg(long, value_name = "NAME")]
        mailbox: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a message exactly as stored.
    Show {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// The message id (as `mail list` shows it).
        id: String,
    },
    /// Write a user's mail out: every mailbox as Maildir++ (folders, flags,
    /// dates), or one mailbox as mboxrd.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["maildir", "mbox"])))]
    Export {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// A new (or empty) directory for a Maildir++ of every mailbox.
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
        /// A new mbox file for one mailbox (see --mailbox).
        #[arg(long, value_name = "FILE")]
        mbox: Option<PathBuf>,
        /// The mailbox an mbox export writes (name or role); default: inbox.
        #[arg(long, value_name = "NAME", requires = "mbox")]
        mailbox: Option<String>,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring mail in: a Maildir++ (every folder), an mbox (into one mailbox),
    /// or every folder of an account on another IMAP server. Runs again
    /// without copying anything twice.
    #[command(group(clap::ArgGroup::new("from").required(true).args(["maildir", "mbox", "imap"])))]
    Import {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "LOCALPART")]
        user: String,
        /// A Maildir++ directory.
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
        /// An mbox file (mboxrd; Status/X-Status/X-Keywords give the flags).
        #[arg(long, value_name = "FILE")]
        mbox: Option<PathBuf>,
        /// The mailbox an mbox goes into (name or role; made if missing); default: inbox.
        #[arg(long, value_name = "NAME", requires = "mbox")]
        mailbox: Option<String>,
        /// An IMAP server, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        imap: Option<String>,
        /// The login at the IMAP server.
        #[arg(long, value_name = "NAME", requires = "imap")]
        login: Option<String>,
        /// Read the IMAP password from standard input (first line).
        #[arg(long, requires = "imap")]
        password_stdin: bool,
        /// STARTTLS on the plain port (the default).
        #[arg(long, requires = "imap", conflicts_with = "tls")]
        starttls: bool,
        /// TLS from the first byte (port 993).
        #[arg(long, requires = "imap")]
        tls: bool,
        /// Trust this CA (PEM) for the IMAP server's certificate, besides the web PKI.
        #[arg(long, value_name = "FILE", requires = "imap")]
        ca: Option<PathBuf>,
        /// Messages per IMAP fetch: a run cut short resumes after the last whole one.
        #[arg(long, value_name = "N", default_value_t = 200, requires = "imap",
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        chunk: u32,
        /// No progress lines.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: LogFormat, filter: Option<&str>, default: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| filter.map(str::to_owned))
        .unwrap_or_else(|| default.to_owned());
    // html5ever warns about every malformed table it repairs: a sender would
    // choose how much the log grows (the web client parses their HTML).
    let filter = if filter.contains("html5ever") {
        filter
    } else {
        format!("{filter},html5ever=error")
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

fn init(o: &setup::InitOptions) -> anyhow::Result<()> {
    let made = setup::init(o)?;
    let domain = &made.domain;
    out!("instance for {domain} created in {}", o.data.display());
    out!("configuration: {}", made.config.display());
    out!("member CSR for the association: {}", made.csr.display());
    out!("DKIM keys for {domain}: {}", made.dkim.display());
    let cfg = made.config.display();
    out!("next:");
    out!("  1. join the association: send member.csr.pem, then `caliopen join --config {cfg} --ca CA.pem --cert MEMBER.pem --association URL`");
    out!("  2. publish the DNS records `caliopen dns --config {cfg}` prints, and check them with `caliopen dns check --config {cfg}`");
    out!("  3. add users: `caliopen user add --config {cfg} LOCALPART`, then `caliopen run --config {cfg}`");
    Ok(())
}

async fn join(o: setup::JoinOptions<'_>) -> anyhow::Result<()> {
    let j = setup::join(o).await?;
    out!(
        "joined as member {}; directory serial {}, CRL number {}",
        j.member,
        j.directory_serial,
        j.crl_number
    );
    Ok(())
}

async fn user_add(config: &Path, localpart: &str, password_stdin: bool) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let localpart = localpart.to_ascii_lowercase();
    if !valid_localpart(&localpart) {
        bail!("invalid user name {localpart:?}: 1-64 of a-z 0-9 . _ -");
    }
    let (password, generated) = if password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut s)
            .context("read password from stdin")?;
        let p = s.trim_end_matches(['\r', '\n']).to_owned();
        if p.len() < 8 {
            bail!("password too short (8 characters at least)");
        }
        if p.len() > caliopen_instance::login::MAX_PASSWORD_LEN {
            bail!(
                "password too long ({} bytes at most)",
                caliopen_instance::login::MAX_PASSWORD_LEN
            );
        }
        (p, false)
    } else {
        let mut b = [0u8; 15];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("random generator failed"))?;
        (hex::encode(b), true)
    };
    let hash = tokio::task::spawn_blocking(move || hash_password(&password).map(|h| (h, password)))
        .await?
        .map_err(anyhow::Error::msg)?;
    let (hash, password) = hash;
    let dir = cfg.data_dir();
    if let Some((mut c, token)) = connect(&dir).await {
        let r = c
            .put_user(with_token(
                PutUserRequest {
                    localpart: localpart.clone(),
                    password_hash: hash,
                },
                &token,
            ))
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        out!("user {} ready", r.into_inner().addresses.join(", "));
    } else {
        let store = Store::open_with(&dir.join("db"), &cfg.store.options())?;
        store.put_user(&localpart, &hash).await?;
        let addrs: Vec<String> = cfg
            .domains
            .iter()
            .map(|d| format!("{localpart}@{d}"))
            .collect();
        out!("user {} ready", addrs.join(", "));
    }
    if generated {
        out!("password: {password}");
    }
    Ok(())
}

/// Runs an operation through the running daemon, or on the database when
/// none runs.
async fn run_op(config: &Path, op: Op) -> anyhow::Result<OpOutput> {
    let cfg = Config::load(config)?;
    let runner = Runner::open(&cfg).await?;
    let out = runner.run(&op, Vec::new()).await?;
    runner.close().await?;
    Ok(out)
}

enum ImportFrom {
    Maildir(PathBuf),
    Mbox(PathBuf, String),
    Imap {
        addr: String,
        login: String,
        tls: bool,
        ca: Option<PathBuf>,
        chunk: usize,
    },
}

/// Prints an export or import summary, and what was left out.
fn print_summary(verb: &str, s: &transfer::Summary, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(s)?);
    } else {
        out!(
            "{verb} {} messages ({:.1} MB) in {} folders; {} were already there",
            s.messages,
            s.bytes as f64 / 1e6,
            s.folders,
            s.duplicates
        );
        if s.keywords_dropped > 0 {
            out!(
                "{} keywords were not valid IMAP keywords and were left out",
                s.keywords_dropped
            );
        }
        for k in &s.skipped {
            out!("left out: {k}");
        }
    }
    Ok(())
}

fn user_arg(user: &str) -> anyhow::Result<String> {
    let u = user.to_ascii_lowercase();
    if !valid_localpart(&u) {
        bail!("invalid user name {user:?}");
    }
    Ok(u)
}

async fn mail_export(
    config: &Path,
    user: &str,
    maildir: Option<PathBuf>,
    mbox: Option<PathBuf>,
    mailbox: Option<String>,
    quiet: bool,
    json: bool,
) -> anyhow::Result<()> {
    let user = user_arg(user)?;
    let cfg = Config::load(config)?;
    let runner = Runner::open(&cfg).await?;
    let progress = transfer::Progress::new("export", quiet);
    let r = match (maildir, mbox) {
        (Some(dir), _) => transfer::maildir::export(&runner, &user, &dir, progress).await,
        (_, Some(file)) => {
            let mailbox = mailbox.unwrap_or_else(|| "inbox".into());
            transfer::mbox::export(&runner, &user, &mailbox, &file, progress).await
        }
        _ => bail!("one of --maildir or --mbox is needed"),
    };
    runner.close().await?;
    print_summary("exported", &r?, json)
}

async fn mail_import(
    config: &Path,
    user: &str,
    from: ImportFrom,
    quiet: bool,
    json: bool,
) -> anyhow::Result<()> {
    let user = user_arg(user)?;
    let cfg = Config::load(config)?;
    // Read before anything else: the password comes first on stdin.
    let imap = match &from {
        ImportFrom::Imap {
            addr,
            login,
            tls,
            ca,
            chunk,
        } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']).to_owned();
            if password.is_empty() {
                bail!("--password-stdin: no password on standard input");
            }
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| {
                    Some((
                        h.trim_matches(['[', ']']).to_owned(),
                        p.parse::<u16>().ok()?,
                    ))
                })
                .with_context(|| format!("--imap {addr:?}: expected HOST:PORT"))?;
            let extra_roots = match ca {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("--ca {}", p.display()))?),
                None => None,
            };
            Some(transfer::imap::Source {
                host,
                port,
                login: login.clone(),
                password,
                security: if *tls {
                    transfer::imap::Security::Tls
                } else {
                    transfer::imap::Security::StartTls
                },
                extra_roots,
                timeout: std::time::Duration::from_secs(120),
                chunk: *chunk,
            })
        }
        _ => None,
    };
    let runner = Runner::open(&cfg).await?;
    let mut imp = transfer::Importer::new(&runner, &user, transfer::Progress::new("import", quiet));
    let r = match (&from, &imap) {
        (ImportFrom::Maildir(dir), _) => transfer::maildir::import(&mut imp, dir).await,
        (ImportFrom::Mbox(file, mailbox), _) => {
            transfer::mbox::import(&mut imp, file, mailbox).await
        }
        (ImportFrom::Imap { .. }, Some(src)) => transfer::imap::import(&mut imp, src).await,
        _ => Ok(()),
    };
    // What was copied before a failure stays, and is said.
    let summary = match r {
        Ok(()) => imp.finish().await,
        Err(e) => {
            let s: transfer::Summary = imp.finish().await.unwrap_or_default();
            runner.close().await?;
            if s.messages > 0 || s.duplicates > 0 {
                print_summary("imported before the error:", &s, json)?;
            }
            return Err(e.into());
        }
    };
    runner.close().await?;
    print_summary("imported", &summary?, json)
}

/// `caliopen store check`: the report, one problem per line; exit 1 when a
/// problem remains.
fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn dkim_keys(cfg: &Config) -> anyhow::Result<Option<caliopen_instance::dkim::DkimKeys>> {
    Ok(report::dkim_keys(cfg)?)
}

fn dkim_rotate(
    config: &Path,
    domains: Vec<String>,
    publish_hours: u64,
    overlap_days: u64,
) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let Some(keys) = dkim_keys(&cfg)? else {
        bail!(
            "DKIM signing is off in {} ([dkim] sign = false)",
            config.display()
        );
    };
    let domains = if domains.is_empty() {
        cfg.domains.clone()
    } else {
        for d in &domains {
            if !cfg.domains.iter().any(|c| c.eq_ignore_ascii_case(d)) {
                bail!("{d} is not one of the domains of {}", config.display());
            }
        }
        domains
    };
    let now = now_unix();
    let made = keys.rotate(
        &domains,
        now,
        std::time::Duration::from_secs(publish_hours.saturating_mul(3600)),
        std::time::Duration::from_secs(overlap_days.saturating_mul(86400)),
    )?;
    for (d, p) in &made {
        out!(
            "{d}: new pair {} (selectors {} and {}); publish these now, it signs in {publish_hours} h:",
            p.name,
            p.ed25519_selector(),
            p.rsa_selector()
        );
        for r in keys.records(d, now) {
            if r.name.starts_with(&p.name) {
                out!(
                    "  {}.\tIN TXT\t{}",
                    r.name,
                    caliopen_instance::publish::zone_txt(&r.value)
                );
            }
        }
    }
    out!("the running daemon picks the change up within a minute; `caliopen dkim list` shows the schedule");
    Ok(())
}

async fn store_check(config: &Path, repair: bool, json: bool) -> anyhow::Result<()> {
    let out = run_op(
        config,
        Op::StoreCheck {
            repair,
            live: false,
        },
    )
    .await?;
    let r: caliopen_instance::store::CheckReport = serde_json::from_value(out.json.clone())?;
    if json {
        out!("{}", out.json);
    } else {
        for p in &r.problems {
            out!("{p}");
        }
        if r.problem_count > r.problems.len() as u64 {
            out!("... and {} more", r.problem_count - r.problems.len() as u64);
        }
        let size = |b: u64| match b {
            b if b >= 10 << 20 => format!("{} MiB", b >> 20),
            b if b >= 10 << 10 => format!("{} KiB", b >> 10),
            b => format!("{b} B"),
        };
        out!(
            "{} bodies ({}, {} stored), {} messages, {} segments ({}), {} still in sled, {} quarantined: {} problems, {} repaired",
            r.bodies,
            size(r.raw_bytes),
            size(r.stored_bytes),
            r.messages,
            r.segments,
            size(r.segment_bytes),
            r.legacy,
            r.quarantined,
            r.problem_count,
            r.repaired
        );
    }
    if r.problem_count > r.repaired {
        std::process::exit(1);
    }
    Ok(())
}

/// A JSON array of strings, comma-separated.
fn names(v: &serde_json::Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn limits_text(q: &serde_json::Value) -> String {
    let part = |v: &serde_json::Value, unit: &str| match v.as_u64() {
        Some(0) | None => format!("no {unit} limit"),
        Some(n) => format!("{n} {unit}"),
    };
    format!(
        "{}, {}{}",
        part(&q["limit_bytes"], "bytes"),
        part(&q["limit_messages"], "messages"),
        if q["own_limits"].as_bool() == Some(true) {
            ""
        } else {
            " (default)"
        }
    )
}

/// `caliopen log`: reads the view the daemon keeps (read-only; it may run).
#[derive(Subcommand)]
enum WitnessCmd {
    /// Print the witness's cosignature/v1 verifier key, for the association
    /// (`caliopen-ca log witness add --vkey`); makes the key on first use.
    Key {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn witness_key(config: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let path = cfg
        .data_dir()
        .join(caliopen_instance::web::witness::KEY_FILE);
    let signer = caliopen_federation::witness::load_or_create_key(&path, &cfg.witness_name())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    writeln!(
        std::io::stdout(),
        "{}",
        caliopen_federation::witness::verifier_key_of(&signer)
    )?;
    Ok(())
}

/// `caliopen handover`: every account (or the ones named) to the successor,
/// two passes around the start of forwarding.
async fn handover(config: &Path, only: Vec<String>, json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let runner = Runner::open(&cfg).await?;
    if !runner.is_daemon() {
        bail!(
            "the daemon of {} is not running: a handover goes over its mesh connection (start it with `caliopen run`)",
            config.display()
        );
    }
    let status = runner.run(&Op::HandoverStatus, Vec::new()).await?.json;
    let Some(succ) = status["successor"].as_str().map(str::to_owned) else {
        bail!(
            "the directory records no handover for this member: the association runs `caliopen-ca handover --from MEMBER --to SUCCESSOR` first"
        );
    };
    let users: Vec<String> = if only.is_empty() {
        runner
            .run(&Op::UserList, Vec::new())
            .await?
            .json
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["localpart"].as_str().map(str::to_owned))
            .collect()
    } else {
        only.iter()
            .map(|u| user_arg(u))
            .collect::<anyhow::Result<_>>()?
    };
    if !json {
        out!("handing {} accounts over to {succ}", users.len());
    }
    let mut failed = Vec::new();
    let passes: &[u32] = if only.is_empty() { &[1, 2] } else { &[1] };
    for &pass in passes {
        if pass == 2 {
            runner
                .run(&Op::HandoverForward { on: true }, Vec::new())
                .await?;
            if !json {
                out!("forwarding every served domain to {succ}; second pass");
            }
        }
        for u in &users {
            let r = runner
                .run(
                    &Op::HandoverAccount {
                        user: u.clone(),
                        pass,
                    },
                    Vec::new(),
                )
                .await;
            match r {
                Ok(o) if o.json["complete"] == true => {
                    if json {
                        out!("{}", o.json);
                    } else {
                        let how = if o.json["same"] == true {
                            "digest verified"
                        } else {
                            "every message there (keywords and folders changed since pass 1 stay as then)"
                        };
                        out!(
                            "{u}: pass {pass}: {} messages, {} bytes, {how} at {succ}, digest {} ({:.1} s)",
                            o.json["stored"]["messages"],
                            o.json["stored"]["bytes"],
                            o.json["stored"]["digest"].as_str().unwrap_or(""),
                            o.json["seconds"].as_f64().unwrap_or(0.0)
                        );
                    }
                }
                Ok(o) => {
                    if json {
                        out!("{}", o.json);
                    } else {
                        out!(
                            "{u}: pass {pass}: DIFFERS at {succ}: stored {} here {}",
                            o.json["stored"],
                            o.json["archive"]
                        );
                    }
                    failed.push(u.clone());
                }
                Err(e) => {
                    if json {
                        out!(
                            "{}",
                            serde_json::json!({"account": u, "pass": pass, "error": e.to_string()})
                        );
                    } else {
                        out!("{u}: pass {pass}: FAILED: {e}");
                    }
                    failed.push(u.clone());
                }
            }
        }
        if !failed.is_empty() {
            break;
        }
    }
    runner.close().await?;
    if !failed.is_empty() {
        bail!(
            "{} of {} accounts not handed over ({}): fix and run again (forwarding starts, or stays on, only after a first pass of every account)",
            failed.len(),
            users.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

async fn user_list(config: &Path, json: bool) -> anyhow::Result<()> {
    let out = run_op(config, Op::UserList).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&out.json)?);
        return Ok(());
    }
    out!(
        "{:<40} {:>9} {:>14} {:>14}",
        "ADDRESS",
        "MESSAGES",
        "USED BYTES",
        "LIMIT BYTES"
    );
    for u in out.json.as_array().into_iter().flatten() {
        let limit = match u["quota"]["limit_bytes"].as_u64() {
            Some(0) | None => "none".to_owned(),
            Some(n) => n.to_string(),
        };
        out!(
            "{:<40} {:>9} {:>14} {:>14}",
            u["address"].as_str().unwrap_or(""),
            u["messages"].as_u64().unwrap_or(0),
            u["quota"]["used_bytes"].as_u64().unwrap_or(0),
            limit
        );
    }
    Ok(())
}

async fn mail_list(
    config: &Path,
    user: String,
    mailbox: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let v = run_op(config, Op::MailList { user, mailbox }).await?.json;
    if json {
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    out!(
        "{:<18} {:<6} {:>7} {:<30} SUBJECT",
        "ID",
        "VIA",
        "PRIVACY",
        "FROM"
    );
    for m in v.as_array().into_iter().flatten() {
        out!(
            "{:<18} {:<6} {:>7} {:<30} {}",
            m["id"].as_str().unwrap_or(""),
            m["via"].as_str().unwrap_or(""),
            m["privacy"]["total"].as_u64().unwrap_or(0),
            m["from"].as_str().unwrap_or(""),
            m["subject"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Prints a report as JSON or as text.
fn show(r: report::Report, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(&r.json)?);
    } else {
        std::io::stdout().write_all(r.text.as_bytes())?;
    }
    Ok(())
}

/// SIGTERM or SIGINT, with the handlers installed now (not when first
/// polled): a stop that arrives while the daemon starts is a clean shutdown.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init {
            data,
            domain,
            smtp,
            submission,
            mesh,
            metrics,
            api,
            imap,
            web,
            relay,
        } => init(&setup::InitOptions {
            data,
            domain,
            smtp,
            submission,
            mesh,
            metrics,
            api,
            imap,
            web,
            relay,
        }),
        Cmd::Join {
            config,
            ca,
            cert,
            association,
            log_key,
        } => {
            join(setup::JoinOptions {
                config: &config,
                ca: &ca,
                cert: &cert,
                url: &association,
                log_key: log_key.as_deref(),
            })
            .await
        }
        Cmd::Log { config, json } => show(report::membership_log(&Config::load(&config)?)?, json),
        Cmd::Demo { keep } => {
            init_logging(LogFormat::Human, None, "warn");
            demo::run(keep).await.map_err(anyhow::Error::msg)
        }
        Cmd::Run { config } => {
            let cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::embedded_defaults(),
            };
            init_logging(cfg.log.format, cfg.log.filter.as_deref(), "info");
            let stop = shutdown_signal()?;
            daemon::run(cfg, stop, |b| {
                let _ = writeln!(
                    std::io::stdout(),
                    "smtp {} submission {} metrics {} api {} imap {} web {} acme-http {}",
                    b.smtp,
                    b.submission,
                    b.metrics.map_or("off".to_owned(), |a| a.to_string()),
                    b.api.map_or("off".to_owned(), |a| a.to_string()),
                    b.imap.map_or("off".to_owned(), |a| a.to_string()),
                    b.web.map_or("off".to_owned(), |a| a.to_string()),
                    b.acme_http.map_or("off".to_owned(), |a| a.to_string())
                );
                let _ = std::io::stdout().flush();
            })
            .await
            .map_err(anyhow::Error::msg)
        }
        Cmd::User {
            cmd:
                UserCmd::Add {
                    config,
                    localpart,
                    password_stdin,
                },
        } => user_add(&config, &localpart, password_stdin).await,
        Cmd::Mail {
            cmd:
                MailCmd::List {
                    config,
                    user,
                    mailbox,
                    json,
                },
        } => mail_list(&config, user, mailbox, json).await,
        Cmd::Mail {
            cmd:
                MailCmd::Export {
                    config,
                    user,
                    maildir,
                    mbox,
                    mailbox,
                    quiet,
                    json,
                },
        } => mail_export(&config, &user, maildir, mbox, mailbox, quiet, json).await,
        Cmd::Mail {
            cmd:
                MailCmd::Import {
                    config,
                    user,
                    maildir,
                    mbox,
                    mailbox,
                    imap,
                    login,
                    password_stdin,
                    starttls: _,
                    tls,
                    ca,
                    chunk,
                    quiet,
                    json,
                },
        } => {
            let from = match (maildir, mbox, imap) {
                (Some(d), _, _) => ImportFrom::Maildir(d),
                (_, Some(f), _) => ImportFrom::Mbox(f, mailbox.unwrap_or_else(|| "inbox".into())),
                (_, _, Some(addr)) => {
                    let Some(login) = login else {
                        bail!("--imap needs --login NAME");
                    };
                    if !password_stdin {
                        bail!("--imap needs --password-stdin (the password is read from standard input)");
                    }
                    ImportFrom::Imap {
                        addr,
                        login,
                        tls,
                        ca,
                        chunk: chunk as usize,
                    }
                }
                _ => bail!("one of --maildir, --mbox or --imap is needed"),
            };
            mail_import(&config, &user, from, quiet, json).await
        }
        Cmd::Handover { config, user, json } => handover(&config, user, json).await,
        Cmd::Account {
            cmd:
                AccountCmd::Accept {
                    config,
                    from,
                    account,
                    as_name,
                    hours,
                },
        } => {
            let account = user_arg(&account)?;
            let as_name = as_name.map(|a| user_arg(&a)).transpose()?;
            let out = run_op(
                &config,
                Op::MoveAccept {
                    from,
                    as_name: as_name.unwrap_or_else(|| account.clone()),
                    account,
                    hours,
                },
            )
            .await?;
            out!(
                "move of {}@{} accepted here as {}; code {} (valid until {}): give it to the old operator",
                out.json["account"].as_str().unwrap_or(""),
                out.json["member"].as_str().unwrap_or(""),
                out.json["as"].as_str().unwrap_or(""),
                out.json["code"].as_str().unwrap_or(""),
                out.json["expires"]
            );
            Ok(())
        }
        Cmd::Account {
            cmd:
                AccountCmd::Move {
                    config,
                    user,
                    to,
                    code,
                    redirect_days,
                },
        } => {
            let user = user_arg(&user)?;
            let cfg = Config::load(&config)?;
            let runner = Runner::open(&cfg).await?;
            if !runner.is_daemon() {
                bail!("the daemon is not running: a move goes over its mesh connection (start it with `caliopen run`)");
            }
            let out = runner
                .run(
                    &Op::MoveAccount {
                        user,
                        to,
                        code,
                        redirect_days,
                    },
                    Vec::new(),
                )
                .await?;
            runner.close().await?;
            out!(
                "{} moved to {} at {}: {} messages, digest {} verified there; mail for it now gets 551 5.1.6",
                out.json["account"].as_str().unwrap_or(""),
                out.json["to"].as_str().unwrap_or(""),
                out.json["successor"].as_str().unwrap_or(""),
                out.json["stored"]["messages"],
                out.json["stored"]["digest"].as_str().unwrap_or("")
            );
            Ok(())
        }
        Cmd::Account {
            cmd:
                AccountCmd::Export {
                    config,
                    user,
                    out,
                    quiet,
                    json,
                },
        } => {
            let user = user_arg(&user)?;
            let cfg = Config::load(&config)?;
            let runner = Runner::open(&cfg).await?;
            let r = transfer::account::export(
                &runner,
                &user,
                &out,
                transfer::Progress::new("export", quiet),
            )
            .await;
            runner.close().await?;
            let (summary, end) = r?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"summary": summary, "end": end})
                    )?
                );
            } else {
                print_summary("exported", &summary, false)?;
                out!("digest {}", end.digest);
            }
            Ok(())
        }
        Cmd::Account {
            cmd:
                AccountCmd::Import {
                    config,
                    input,
                    user,
                    resume,
                    quiet,
                    json,
                },
        } => {
            let user = user.map(|u| user_arg(&u)).transpose()?;
            let cfg = Config::load(&config)?;
            let runner = Runner::open(&cfg).await?;
            let r = transfer::account::import(
                &runner,
                &input,
                user.as_deref(),
                resume,
                None,
                transfer::Progress::new("import", quiet),
            )
            .await;
            runner.close().await?;
            let r = r?;
            if json {
                out!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_summary("imported", &r.summary, false)?;
                for a in &r.aliases {
                    out!("alias {a}");
                }
                for a in &r.aliases_left {
                    out!("alias left out: {a}");
                }
                if let Some(q) = &r.quota {
                    out!("quota: {q}");
                }
            }
            if r.stored != r.archive {
                bail!(
                    "the account here ({} messages, {} bytes, digest {}) differs from the archive ({} messages, {} bytes, digest {})",
                    r.stored.messages, r.stored.bytes, r.stored.digest,
                    r.archive.messages, r.archive.bytes, r.archive.digest
                );
            }
            if !json {
                out!(
                    "verified: {} messages, digest {}",
                    r.stored.messages,
                    r.stored.digest
                );
            }
            Ok(())
        }
        Cmd::Mail {
            cmd: MailCmd::Show { config, user, id },
        } => {
            let out = run_op(&config, Op::MailShow { user, id }).await?;
            std::io::stdout().write_all(&out.raw)?;
            Ok(())
        }
        Cmd::User {
            cmd: UserCmd::List { config, json },
        } => user_list(&config, json).await,
        Cmd::Dns {
            cmd: Some(DnsCmd::Check { config, json }),
            ..
        } => {
            let (r, bad) = report::dns_check(&Config::load(&config)?).await?;
            show(r, json)?;
            if bad > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Dns {
            config: Some(config),
            json,
            cmd: None,
        } => show(report::dns(&Config::load(&config)?)?, json),
        Cmd::Dns { .. } => bail!("caliopen dns: --config FILE is required"),
        Cmd::Certificate { config, json } => {
            show(report::certificate(&Config::load(&config)?)?, json)
        }
        Cmd::Tlsrpt {
            cmd:
                TlsrptCmd::Send {
                    config,
                    include_today,
                    json,
                },
        } => {
            let out = run_op(&config, Op::TlsReportSend { include_today }).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&out.json)?);
                return Ok(());
            }
            let list = out.json.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                out!("no TLS sessions recorded for the days asked");
            }
            for s in &list {
                out!(
                    "{} {} {}: {}",
                    s["day"].as_str().unwrap_or(""),
                    s["domain"].as_str().unwrap_or(""),
                    match s["uri"].as_str().unwrap_or("") {
                        "" => "-",
                        u => u,
                    },
                    s["outcome"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Cmd::Dkim {
            cmd: DkimCmd::List { config, json },
        } => show(report::dkim_list(&Config::load(&config)?)?, json),
        Cmd::Witness {
            cmd: WitnessCmd::Key { config },
        } => witness_key(&config),
        Cmd::Dkim {
            cmd:
                DkimCmd::Rotate {
                    config,
                    domain,
                    publish_hours,
                    overlap_days,
                },
        } => dkim_rotate(&config, domain, publish_hours, overlap_days),
        Cmd::Store {
            cmd:
                StoreCmd::Check {
                    config,
                    repair,
                    json,
                },
        } => store_check(&config, repair, json).await,
        Cmd::User {
            cmd: UserCmd::Remove { config, localpart },
        } => {
            let out = run_op(&config, Op::UserRemove { localpart }).await?;
            out!(
                "user {} removed ({} messages, {} bytes)",
                out.json["removed"].as_str().unwrap_or(""),
                out.json["messages"],
                out.json["bytes"]
            );
            Ok(())
        }
        Cmd::User {
            cmd:
                UserCmd::Quota {
                    config,
                    localpart,
                    bytes,
                    messages,
                    default,
                },
        } => {
            let out = run_op(
                &config,
                Op::UserQuota {
                    localpart,
                    bytes,
                    messages,
                    default,
                },
            )
            .await?;
            let q = &out.json["quota"];
            out!(
                "{}: {} (used {} bytes, {} messages)",
                out.json["localpart"].as_str().unwrap_or(""),
                limits_text(q),
                q["used_bytes"],
                q["used_messages"]
            );
            Ok(())
        }
        Cmd::Alias {
            cmd:
                AliasCmd::Add {
                    config,
                    alias,
                    targets,
                },
        } => {
            let out = run_op(
                &config,
                Op::AliasAdd {
                    alias,
                    targets,
                    only_new: false,
                },
            )
            .await?;
            out!(
                "alias {} -> {}",
                out.json["alias"].as_str().unwrap_or(""),
                names(&out.json["targets"])
            );
            Ok(())
        }
        Cmd::Alias {
            cmd: AliasCmd::List { config, json },
        } => {
            let out = run_op(&config, Op::AliasList).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&out.json)?);
                return Ok(());
            }
            for a in out.json.as_array().into_iter().flatten() {
                out!(
                    "{:<40} {}",
                    a["alias"].as_str().unwrap_or(""),
                    names(&a["targets"])
                );
            }
            Ok(())
        }
        Cmd::Alias {
            cmd: AliasCmd::Remove { config, alias },
        } => {
            let out = run_op(&config, Op::AliasRemove { alias }).await?;
            out!(
                "alias {} removed",
                out.json["removed"].as_str().unwrap_or("")
            );
            Ok(())
        }
        Cmd::Privacy {
            config,
            user,
            contact,
            json,
        } => show(
            report::privacy(&Config::load(&config)?, &user, &contact).await?,
            json,
        ),
    }
}

fn main() -> ExitCode {
    // Databases, keys and configuration this program writes are the owner's alone.
    caliopen_instance::limits::restrict_umask();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let head = text.split("\n\nUsage:").next().unwrap_or("");
            let line = head.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!(
                "caliopen: error: {} (see --help)",
                line.trim_start_matches("error:").trim()
            );
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caliopen: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "caliopen: error: {}",
                format!("{e:#}").replace(['\n', '\r'], " ")
            );
            ExitCode::FAILURE
        }
    }
}

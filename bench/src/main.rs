//! `caliopen-bench`: runs the benchmarks of issue #7 and writes
//! `OUT/latest.json` and `OUT/latest.md`. See `bench/run.sh` for the one
//! command that prepares Postfix and builds everything first.

use anyhow::{Context, Result};
use caliopen_bench::{mesh, smtp, storage, sys, Report};
use clap::Parser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "caliopen-bench", about = "Caliopen benchmarks (issue #7)")]
struct Args {
    /// Small counts: a smoke run of every section in a minute or two.
    #[arg(long)]
    quick: bool,
    /// Sections to run (comma-separated): sys, smtp, outbound, imap, relay, privacy, scale, storage, mailbox, login, web, transfer.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sys,smtp,outbound,imap,relay,handover,privacy,scale,tlog,storage,mailbox,login,web,transfer"
    )]
    only: Vec<String>,
    /// Where results are written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Scratch directory for data (on the disk being measured).
    #[arg(long, default_value = "/var/tmp/caliopen-bench")]
    work: PathBuf,
    /// The `caliopen` binary (release build).
    #[arg(long, default_value = "target/release/caliopen")]
    caliopen: PathBuf,
    /// Postfix's SMTP listener (from bench/postfix.sh); without it, the
    /// Postfix side is skipped.
    #[arg(long)]
    postfix: Option<SocketAddr>,
    /// The Maildir Postfix delivers into.
    #[arg(long)]
    postfix_maildir: Option<PathBuf>,
    /// The recipient Postfix delivers into that Maildir.
    #[arg(long, default_value = "benchmb@bench.test")]
    postfix_rcpt: String,
    /// Dovecot's IMAP listener (STARTTLS, from bench/dovecot.sh); without
    /// it, the Dovecot side of IMAP is skipped.
    #[arg(long)]
    dovecot: Option<SocketAddr>,
    /// Dovecot's benchmark login.
    #[arg(long, default_value = "bench")]
    dovecot_user: String,
    /// Its password.
    #[arg(long, default_value = "bench-password")]
    dovecot_password: String,
    /// The Dovecot account's Maildir (`bench/dovecot.sh` makes
    /// /var/tmp/caliopen-bench/dovecot/home/bench/Maildir): with `--imap-big`,
    /// its large folder is written as files instead of APPENDed.
    #[arg(long)]
    dovecot_maildir: Option<PathBuf>,
    /// Messages imported into each server's INBOX (default 10000, quick 1000).
    #[arg(long)]
    imap_messages: Option<usize>,
    /// Concurrent IMAP clients of each case, each on its own connection.
    #[arg(long, value_delimiter = ',', default_value = "1,20")]
    imap_clients: Vec<usize>,
    /// Seconds each IMAP case runs (default 3, quick 1).
    #[arg(long)]
    imap_seconds: Option<f64>,
    /// Deliveries timed for the IDLE wake-up latency.
    #[arg(long, default_value_t = 50)]
    imap_idle_deliveries: usize,
    /// Also time SELECT of a large folder (imports --imap-big-messages more
    /// into each server: minutes).
    #[arg(long)]
    imap_big: bool,
    /// Messages of that folder.
    #[arg(long, default_value_t = 100_000)]
    imap_big_messages: usize,
    /// Messages per SMTP case (default: 5000, quick 500).
    #[arg(long)]
    smtp_messages: Option<usize>,
    /// Messages per 2 KB relay case (100 KB cases send a fifth; default 10000, quick 1000).
    #[arg(long)]
    relay_messages: Option<usize>,
    /// Relay body sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "2048,102400")]
    relay_sizes: Vec<usize>,
    /// Relay concurrency (streams, producers, SMTP sessions).
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    relay_streams: Vec<usize>,
    /// The mesh relay's target rate (msg/s): the 2 KB cases with 64 or more
    /// streams are also run paced at it, for latency under that load
    /// (0: skip).
    #[arg(long, default_value_t = 10_000.0)]
    relay_rate: f64,
    /// Runs of each targeted relay case (2 KB, 64 or more streams),
    /// interleaved; the median is reported and every run listed (default 3,
    /// quick 1).
    #[arg(long)]
    relay_repeat: Option<usize>,
    /// Relay cases (comma-separated): node, outbox, smtp (default: all).
    #[arg(long, value_delimiter = ',')]
    relay_cases: Vec<String>,
    /// Mesh sizes (default: 100,500,1000; quick 20,50).
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,
    /// Accounts in the storage run (default 50000, quick 500).
    #[arg(long)]
    accounts: Option<usize>,
    /// Messages in the storage run (default 1000000, quick 10000).
    #[arg(long)]
    store_messages: Option<usize>,
    /// The store's `[store] cache_mb` in the storage run (default: the store's default).
    #[arg(long)]
    store_cache_mb: Option<u64>,
    /// Messages in the one large mailbox (default 100000, quick 10000).
    #[arg(long)]
    mailbox_messages: Option<usize>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&a.work).with_context(|| format!("create {}", a.work.display()))?;
    std::fs::create_dir_all(&a.out)?;
    let mut report = Report {
        machine: sys::machine(&a.work),
        started: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        mode: if a.quick { "quick" } else { "full" }.into(),
        ..Default::default()
    };
    eprintln!("machine: {}", report.machine);
    let on = |s: &str| a.only.iter().any(|o| o == s);
    let q = a.quick;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    if on("sys") {
        eprintln!("== physical bounds");
        let secs = if q { 1 } else { 3 };
        for (kind, what) in [
            (sys::SyncKind::AppendFsync, "append 512 B + fsync"),
            (
                sys::SyncKind::OverwriteFdatasync,
                "overwrite 512 B + fdatasync",
            ),
        ] {
            match sys::fsync_rate(&a.work, kind, Duration::from_secs(secs)) {
                Ok(r) => report.add(
                    "bounds",
                    &format!("disk: {what}"),
                    "syncs/s",
                    r,
                    None,
                    "serial, in the data dir",
                ),
                Err(e) => report.skipped.push(format!("fsync rate: {e}")),
            }
        }
        let bytes = if q { 256 << 20 } else { 2 << 30 };
        match sys::loopback_throughput(bytes) {
            Ok(r) => report.add(
                "bounds",
                "loopback TCP",
                "MB/s",
                r,
                None,
                "one stream, 256 KiB writes",
            ),
            Err(e) => report.skipped.push(format!("loopback: {e}")),
        }
    }

    if on("smtp") {
        eprintln!("== SMTP acceptance and delivery (smtp-source)");
        if let Err(e) = smtp_section(&a, &mut report) {
            eprintln!("smtp section failed: {e:#}");
            report.skipped.push(format!("smtp: {e:#}"));
        }
    }

    if on("outbound") {
        eprintln!("== outbound SMTP with and without DKIM signing (smtp-sink as relay)");
        if let Err(e) = outbound_section(&a, &rt, &mut report) {
            eprintln!("outbound section failed: {e:#}");
            report.skipped.push(format!("outbound: {e:#}"));
        }
    }

    if on("imap") {
        eprintln!("== IMAP against Dovecot");
        let p = caliopen_bench::imap_bench::ImapParams {
            messages: a.imap_messages.unwrap_or(if q { 1000 } else { 10_000 }),
            clients: a.imap_clients.clone(),
            duration: Duration::from_secs_f64(a.imap_seconds.unwrap_or(if q { 1.0 } else { 3.0 })),
            idle_deliveries: a.imap_idle_deliveries,
            big: a.imap_big.then_some(a.imap_big_messages),
        };
        let dovecot = a.dovecot.map(|addr| caliopen_bench::imap_bench::Dovecot {
            addr,
            user: a.dovecot_user.clone(),
            password: a.dovecot_password.clone(),
            maildir: a.dovecot_maildir.clone(),
        });
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = caliopen_bench::imap_bench::run(
                &a.caliopen,
                &a.work,
                dovecot.as_ref(),
                &p,
                &mut sub,
            )
            .await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        report.skipped.extend(r.0.skipped);
        if let Err(e) = r.1 {
            eprintln!("imap section failed: {e:#}");
            report.skipped.push(format!("imap: {e:#}"));
        }
    }

    if on("relay") {
        eprintln!("== mesh relay");
        let n = a.relay_messages.unwrap_or(if q { 1000 } else { 10_000 });
        let work = a.work.clone();
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = async {
                for &size in &a.relay_sizes {
                    let count = if size > 16 * 1024 {
                        (n / 5).max(100)
                    } else {
                        n
                    };
                    quiesce();
                    mesh::relay(
                        &work,
                        &mesh::RelayParams {
                            messages: count,
                            streams: a.relay_streams.clone(),
                            sizes: vec![size],
                            rate: (a.relay_rate > 0.0).then_some(a.relay_rate),
                            cases: a.relay_cases.clone(),
                            repeat: a.relay_repeat.unwrap_or(if q { 1 } else { 3 }),
                        },
                        &mut sub,
                    )
                    .await?;
                }
                anyhow::Ok(())
            }
            .await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("relay section failed: {e:#}");
            report.skipped.push(format!("mesh relay: {e:#}"));
        }
    }
    if on("handover") {
        eprintln!("== successor handover over the mesh");
        let work = a.work.clone();
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let mut res = Ok(());
            for (size, count) in [
                (2048usize, if q { 2000 } else { 10_000 }),
                (100 * 1024, if q { 200 } else { 2000 }),
            ] {
                quiesce();
                res = mesh::handover(&work, count, size, &mut sub).await;
                if res.is_err() {
                    break;
                }
            }
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("handover section failed: {e:#}");
            report.skipped.push(format!("handover: {e:#}"));
        }
    }
    if on("login") {
        eprintln!("== login floods (client API)");
        let p = caliopen_bench::login::LoginParams {
            clients: if q { 64 } else { 256 },
            duration: Duration::from_secs(if q { 3 } else { 10 }),
            burst: if q { 500 } else { 2304 },
        };
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = caliopen_bench::login::run(&a.caliopen, &a.work, &p, &mut sub).await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("login section failed: {e:#}");
            report.skipped.push(format!("login: {e:#}"));
        }
    }
    if on("privacy") {
        eprintln!("== privacy queries");
        let (users, queries, peers) = if q {
            (200, 2000, 10)
        } else {
            (2000, 20_000, 100)
        };
        let work = a.work.clone();
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = mesh::privacy(&work, users, queries, peers, &mut sub).await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("privacy section failed: {e:#}");
            report.skipped.push(format!("privacy queries: {e:#}"));
        }
    }

    if on("scale") {
        eprintln!("== mesh scale");
        let sizes = a.scale.clone().unwrap_or(if q {
            vec![20, 50]
        } else {
            vec![100, 500, 1000]
        });
        for n in sizes {
            let work = a.work.clone();
            let r = rt.block_on(async {
                let mut sub = Report::default();
                let res = mesh::scale(&work, n, &mut sub).await;
                (sub, res)
            });
            report.rows.extend(r.0.rows);
            report.skipped.extend(r.0.skipped);
            if let Err(e) = r.1 {
                eprintln!("scale {n} failed: {e:#}");
                report.skipped.push(format!("mesh scale {n}: {e:#}"));
            }
        }
    }

    if on("tlog") {
        eprintln!("== membership log: witness cosignatures, log and proof sizes");
        if let Err(e) = caliopen_bench::tlog_bench::sizes_and_costs(&mut report, q) {
            eprintln!("membership log section failed: {e:#}");
            report.skipped.push(format!("tlog: {e:#}"));
        }
    }

    if on("storage") {
        eprintln!("== storage scale");
        let p = storage::StorageParams {
            accounts: a.accounts.unwrap_or(if q { 500 } else { 50_000 }),
            messages: a
                .store_messages
                .unwrap_or(if q { 10_000 } else { 1_000_000 }),
            size: 2048,
            writers: 64,
            cache_mb: a.store_cache_mb,
        };
        let work = a.work.clone();
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = storage::run(&work, &p, &mut sub).await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("storage failed: {e:#}");
            report.skipped.push(format!("storage: {e:#}"));
        }
        if let Err(e) = storage::codecs(&mut report) {
            report.skipped.push(format!("storage codecs: {e:#}"));
        }
    }

    if on("mailbox") {
        eprintln!("== one large mailbox");
        let p = caliopen_bench::mailbox::MailboxParams {
            messages: a
                .mailbox_messages
                .unwrap_or(if q { 10_000 } else { 100_000 }),
            page: 50,
            probes: if q { 500 } else { 5000 },
            writers: 64,
        };
        let work = a.work.clone();
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = caliopen_bench::mailbox::run(&work, &p, &mut sub).await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("mailbox failed: {e:#}");
            report.skipped.push(format!("mailbox: {e:#}"));
        }
    }

    if on("web") {
        eprintln!("== web client pages");
        let p = caliopen_bench::web::WebParams {
            messages: a
                .mailbox_messages
                .unwrap_or(if q { 10_000 } else { 100_000 }),
            probes: if q { 100 } else { 500 },
            writers: 64,
        };
        let work = a.work.clone();
        let r = rt.block_on(async {
            let mut sub = Report::default();
            let res = caliopen_bench::web::run(&work, &p, &mut sub).await;
            (sub, res)
        });
        report.rows.extend(r.0.rows);
        if let Err(e) = r.1 {
            eprintln!("web failed: {e:#}");
            report.skipped.push(format!("web: {e:#}"));
        }
    }

    if on("transfer") {
        eprintln!("== Maildir import and export, next to mbsync");
        if let Err(e) = transfer_section(&a, &mut report) {
            eprintln!("transfer section failed: {e:#}");
            report.skipped.push(format!("transfer: {e:#}"));
        }
    }

    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(a.out.join("latest.json"), json)?;
    let md = report.markdown();
    std::fs::write(a.out.join("latest.md"), &md)?;
    std::fs::write(a.out.join("summary.md"), report.summary_markdown())?;
    println!("{md}");
    eprintln!(
        "written: {}/latest.json, {}/latest.md",
        a.out.display(),
        a.out.display()
    );
    // Dropping the stores would have sled persist its whole page cache
    // (minutes after a million messages): scratch data, so leave at once.
    rt.shutdown_background();
    std::process::exit(0)
}

fn transfer_section(a: &Args, report: &mut Report) -> Result<()> {
    use caliopen_bench::transfer;
    for (size, n) in [
        (2048usize, if a.quick { 1000 } else { 10_000 }),
        (100 * 1024, if a.quick { 200 } else { 2000 }),
    ] {
        quiesce();
        let o = transfer::measure(&a.caliopen, &a.work.join("transfer"), n, size)?;
        let case = format!("{} KB, {n} messages in 3 folders", size / 1024);
        for (label, (rate, mb), note) in [
            (
                "caliopen mail import --maildir",
                o.import,
                "no daemon; one group commit (fsync) per batch of 256",
            ),
            (
                "caliopen mail export --maildir",
                o.export,
                "one syncfs at the end",
            ),
            (
                "mbsync Maildir to Maildir (reference)",
                o.mbsync,
                "isync, FSync yes (each message)",
            ),
        ] {
            report.add(
                "transfer",
                &format!("{label}, {case}"),
                "msg/s",
                rate,
                None,
                note,
            );
            report.add(
                "transfer",
                &format!("{label}, {case}"),
                "MB/s",
                mb,
                None,
                note,
            );
        }
        report.add(
            "transfer",
            &format!("import / mbsync, {case}"),
            "ratio",
            o.import.0 / o.mbsync.0,
            None,
            "same data, same run",
        );
        report.add(
            "transfer",
            &format!("export / mbsync, {case}"),
            "ratio",
            o.export.0 / o.mbsync.0,
            None,
            "same data, same run",
        );
    }
    Ok(())
}

/// Writes out what earlier cases left dirty in the page cache (`sync`), so
/// that its writeback does not land on the next case's disk time: a 100 KB
/// case leaves half a gigabyte behind.
fn quiesce() {
    match std::process::Command::new("sync").status() {
        Ok(s) if s.success() => {}
        other => eprintln!("  sync before a case failed: {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(500));
}

fn outbound_section(a: &Args, rt: &tokio::runtime::Runtime, report: &mut Report) -> Result<()> {
    use caliopen_bench::outbound;
    let n = a.smtp_messages.unwrap_or(if a.quick { 300 } else { 3000 });
    for size in [2048usize, 100 * 1024] {
        let us = outbound::sign_cost(
            &a.work.join("dkim-cost"),
            size,
            if a.quick { 50 } else { 500 },
        )?;
        report.add(
            "outbound",
            &format!("DKIM signing alone, {} KB", size / 1024),
            "µs/msg",
            us,
            None,
            "Ed25519 + RSA-2048, relaxed/relaxed, one thread",
        );
        for sessions in [1usize, 20] {
            let case = format!(
                "{} KB, {sessions} session{}",
                size / 1024,
                if sessions > 1 { "s" } else { "" }
            );
            let mut by = [None, None];
            // Unsigned first, then signed, then both again: the better of two
            // runs each, so that one slow moment of a shared machine does
            // not decide the ratio.
            for round in 0..2 {
                for (i, sign) in [false, true].into_iter().enumerate() {
                    quiesce();
                    let dir = a.work.join(format!("outbound-{i}-{round}"));
                    let o =
                        rt.block_on(outbound::run(&a.caliopen, &dir, sign, n, sessions, size))?;
                    if sign && o.signed < n as u64 {
                        anyhow::bail!("only {} of {n} messages were signed", o.signed);
                    }
                    if !sign && o.signed != 0 {
                        anyhow::bail!("{} messages signed with [dkim] sign = false", o.signed);
                    }
                    by[i] = Some(o.better(by[i]));
                }
            }
            let (Some(plain), Some(signed)) = (by[0], by[1]) else {
                anyhow::bail!("no outbound result");
            };
            for (label, o) in [("unsigned", plain), ("DKIM-signed", signed)] {
                report.add(
                    "outbound",
                    &format!("caliopen {case}, {label}"),
                    "msg/s relayed",
                    o.delivered_per_s,
                    None,
                    &format!(
                        "{n} msgs submitted (STARTTLS, AUTH) until all are handed to smtp-sink; accepted {:.0} msg/s; best of 2",
                        o.accepted_per_s
                    ),
                );
            }
            report.add(
                "outbound",
                &format!("caliopen {case}"),
                "signed/unsigned relayed",
                signed.delivered_per_s / plain.delivered_per_s,
                Some("≥ 0.90"),
                "outbound throughput with signing over without, same run",
            );
            report.add(
                "outbound",
                &format!("caliopen {case}"),
                "signed/unsigned accepted",
                signed.accepted_per_s / plain.accepted_per_s,
                None,
                "submission answers with signing over without (signing is on the 250's path)",
            );
        }
    }
    Ok(())
}

fn smtp_section(a: &Args, report: &mut Report) -> Result<()> {
    let n = a.smtp_messages.unwrap_or(if a.quick { 500 } else { 5000 });
    let timeout = Duration::from_secs(900);
    let dir = a.work.join("caliopen-smtp");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let daemon = smtp::Daemon::start(&a.caliopen, &dir, "bench.test", "benchmb")
        .with_context(|| format!("start {}", a.caliopen.display()))?;
    let cal_rcpt = "benchmb@bench.test";
    let postfix = match (a.postfix, &a.postfix_maildir) {
        (Some(addr), Some(md)) => Some((addr, md.clone())),
        _ => {
            report
                .skipped
                .push("Postfix side of SMTP: no --postfix/--postfix-maildir given".into());
            None
        }
    };
    // Warm both up (process pools, caches) outside the timings.
    if let Some((addr, md)) = &postfix {
        let c = |p: &Path| smtp::maildir_count(p);
        smtp::timed_run(*addr, 2, 50, 2048, &a.postfix_rcpt, &|| c(md), timeout)?;
    }
    smtp::timed_run(
        daemon.smtp,
        2,
        50,
        2048,
        cal_rcpt,
        &|| daemon.stored_smtp(),
        timeout,
    )?;
    for size in [2048usize, 100 * 1024] {
        for sessions in [1usize, 20] {
            let case = format!(
                "{} KB, {sessions} session{}",
                size / 1024,
                if sessions > 1 { "s" } else { "" }
            );
            let mut pf = None;
            if let Some((addr, md)) = &postfix {
                smtp::maildir_clear(md)?;
                quiesce();
                let (acc, del) = smtp::timed_run(
                    *addr,
                    sessions,
                    n,
                    size,
                    &a.postfix_rcpt,
                    &|| smtp::maildir_count(md),
                    timeout,
                )?;
                let (ra, rd) = (n as f64 / acc.as_secs_f64(), n as f64 / del.as_secs_f64());
                report.add(
                    "smtp",
                    &format!("Postfix {case}"),
                    "msg/s delivered",
                    rd,
                    None,
                    &format!(
                        "{n} msgs until all are files in the Maildir (default settings, fsync on)"
                    ),
                );
                report.add(
                    "smtp",
                    &format!("Postfix {case}"),
                    "msg/s accepted",
                    ra,
                    None,
                    "until smtp-source had every 250",
                );
                pf = Some((ra, rd));
            }
            quiesce();
            let (acc, del) = smtp::timed_run(
                daemon.smtp,
                sessions,
                n,
                size,
                cal_rcpt,
                &|| daemon.stored_smtp(),
                timeout,
            )?;
            let (ra, rd) = (n as f64 / acc.as_secs_f64(), n as f64 / del.as_secs_f64());
            report.add(
                "smtp",
                &format!("caliopen {case}"),
                "msg/s delivered",
                rd,
                None,
                &format!(
                    "{n} msgs until all are counted stored (after the group commit's fdatasync)"
                ),
            );
            report.add(
                "smtp",
                &format!("caliopen {case}"),
                "msg/s accepted",
                ra,
                None,
                "until smtp-source had every 250",
            );
            if let Some((pa, pd)) = pf {
                let target = if sessions >= 20 { ">= 3" } else { ">= 1.5" };
                report.add(
                    "smtp",
                    &format!("caliopen/Postfix {case}"),
                    "ratio delivered",
                    rd / pd,
                    Some(target),
                    "same run, same disk",
                );
                report.add(
                    "smtp",
                    &format!("caliopen/Postfix {case}"),
                    "ratio accepted",
                    ra / pa,
                    None,
                    "",
                );
            }
        }
    }
    report.add(
        "smtp",
        "caliopen daemon",
        "RSS MiB",
        daemon.rss() as f64 / 1048576.0,
        None,
        "after all SMTP cases",
    );
    daemon.stop()?;
    Ok(())
}

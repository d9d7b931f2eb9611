//! Login floods against a `caliopen run` daemon (release build) through its
//! client API over TLS: how many password checks per second it makes and how
//! much memory it takes while clients ask for more than it can hash, beside
//! the raw argon2 rate of one core measured in the same run.

use crate::report::Report;
use crate::smtp::{metric, Daemon};
use anyhow::{Context, Result};
use caliopen_proto::pb::client as pb;
use caliopen_proto::pb::client::client_client::ClientClient;
use std::path::Path;
use std::time::{Duration, Instant};

/// Parameters of the login benchmark.
#[derive(Debug, Clone)]
pub struct LoginParams {
    /// Clients logging in with the right password, each retrying at once
    /// after a temporary refusal.
    pub clients: usize,
    /// How long they run.
    pub duration: Duration,
    /// Calls of the burst (wrong passwords, each given up after 10 ms).
    pub burst: usize,
}

/// argon2 checks per second on one thread (the reference).
fn raw_rate(duration: Duration) -> Result<f64> {
    let hash = caliopen_instance::login::hash_password("a benchmark password")
        .map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < duration {
        anyhow::ensure!(caliopen_instance::login::argon2_verify(
            &hash,
            b"a benchmark password"
        ));
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

async fn channel(d: &Daemon, source: std::net::IpAddr) -> Result<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let pem = std::fs::read(d.data.join("tls.pem"))?;
    let api = d.api.context("the daemon has no client API")?;
    Ok(Endpoint::from_shared(format!("https://{api}"))?
        .local_address(Some(source))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name("bench.test"),
        )?
        .connect()
        .await?)
}

/// Runs the login section.
pub async fn run(bin: &Path, work: &Path, p: &LoginParams, report: &mut Report) -> Result<()> {
    let raw = tokio::task::spawn_blocking(|| raw_rate(Duration::from_secs(2))).await??;
    let tmp = tempfile::tempdir_in(work)?;
    let d = Daemon::start_with(
        bin,
        &tmp.path().join("inst"),
        "bench.test",
        "bench",
        &["--api", "127.0.0.1:0"],
    )?;
    let rss0 = d.peak_rss();
    // Clients come from 32 loopback addresses (8 clients each at the
    // default size): one address may have only so many logins in flight,
    // since each counts as a failure until it succeeds.
    let mut chans = Vec::new();
    for i in 0..32u8 {
        chans.push(channel(&d, std::net::IpAddr::from([127, 0, 1, 10 + i])).await?);
    }
    let one = channel(&d, std::net::IpAddr::from([127, 0, 2, 1])).await?;

    // Right passwords: granted logins are not throttled, so this is the
    // hashing rate the daemon allows itself under a flood of them.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..p.clients {
        let mut c = ClientClient::new(chans[i % chans.len()].clone());
        let until = t + p.duration;
        set.spawn(async move {
            let (mut ok, mut busy, mut throttled, mut other) = (0u64, 0u64, 0u64, 0u64);
            while Instant::now() < until {
                match c
                    .login(pb::LoginRequest {
                        address: "bench@bench.test".into(),
                        password: "a benchmark password".into(),
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        throttled += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => other += 1,
                }
            }
            (ok, busy, throttled, other)
        });
    }
    let (mut ok, mut busy, mut throttled, mut other) = (0, 0, 0, 0);
    while let Some(r) = set.join_next().await {
        let (a, b, c, e) = r?;
        ok += a;
        busy += b;
        throttled += c;
        other += e;
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = ok as f64 / secs;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    report.add(
        "login",
        &format!("right passwords, {} clients", p.clients),
        "checks/s",
        rate,
        None,
        &format!(
            "{ok} granted in {secs:.1} s from 32 addresses, {busy} refused for now (UNAVAILABLE, retried), {throttled} throttled, {other} other; \
             reference: raw argon2 on one thread {raw:.1}/s, so {:.2} of {cores} cores' worth",
            rate / raw
        ),
    );

    // A burst of wrong passwords from one address, each call given up after
    // 10 ms (the probe that reached 19.5 GB).
    let checked0 = metric(d.metrics, "caliopen_password_checks_total{kind=\"argon2\"}")?;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..p.burst {
        let mut c = ClientClient::new(one.clone());
        set.spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(10),
                c.login(pb::LoginRequest {
                    address: "bench@bench.test".into(),
                    password: format!("guess {i}"),
                }),
            )
            .await;
        });
    }
    while set.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(500)).await;
    let burst_secs = t.elapsed().as_secs_f64();
    let checked = metric(d.metrics, "caliopen_password_checks_total{kind=\"argon2\"}")? - checked0;
    report.add(
        "login",
        &format!("{} wrong guesses at once, one address", p.burst),
        "hashed",
        checked as f64,
        None,
        &format!(
            "calls cancelled after 10 ms; every guess counted before its check, the rest throttled; {burst_secs:.1} s"
        ),
    );
    let peak = d.peak_rss();
    report.add(
        "login",
        "daemon peak RSS under both floods",
        "MiB",
        peak as f64 / f64::from(1 << 20),
        None,
        &format!(
            "peak before the floods {:.0} MiB; hashes at once: the number of cores ({cores}), 19 MiB each",
            rss0 as f64 / f64::from(1 << 20)
        ),
    );
    d.stop()?;
    Ok(())
}

//! The physical bounds: the disk's serial fsync rate and loopback TCP
//! throughput; and the process's resident memory.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How a probe makes its write durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Append 512 bytes, then `fsync` (the file grows: a journal commit each time).
    AppendFsync,
    /// Overwrite 512 bytes in place, then `fdatasync` (no metadata to commit).
    OverwriteFdatasync,
}

/// Serial syncs per second of a small (512-byte) write into a file in
/// `dir`, over about `duration`.
pub fn fsync_rate(dir: &Path, kind: SyncKind, duration: Duration) -> std::io::Result<f64> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 512];
    if kind == SyncKind::OverwriteFdatasync {
        f.write_all(&block)?;
        f.sync_all()?;
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < duration {
        if kind == SyncKind::OverwriteFdatasync {
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&block)?;
            f.sync_data()?;
        } else {
            f.write_all(&block)?;
            f.sync_all()?;
        }
        n += 1;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Loopback TCP throughput in MB/s (10^6 bytes): one thread writes `total`
/// bytes in 256 KiB chunks, another reads them.
pub fn loopback_throughput(total: u64) -> std::io::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![0xa5u8; 256 * 1024];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let got = reader
        .join()
        .map_err(|_| std::io::Error::other("reader thread panicked"))??;
    let secs = t0.elapsed().as_secs_f64();
    Ok(got as f64 / secs / 1e6)
}

/// Resident set size of this process in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Total size in bytes of the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// One line describing the machine: CPU model, cores, memory, kernel, and
/// the filesystem of `dir`.
pub fn machine(dir: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let fs = std::process::Command::new("df")
        .args(["--output=source,fstype", &dir.to_string_lossy()])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gb:.0} GiB RAM, Linux {kernel}, data on {fs}")
}

/// CPU time (user + system) this process has used so far, from
/// `/proc/self/stat` (clock ticks of 10 ms).
pub fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(Duration::from_millis((utime + stime) * 10))
        })
        .unwrap_or_default()
}

//! Maildir import and export (`caliopen mail import|export --maildir`)
//! next to mbsync (isync) copying the same Maildir into another one, in
//! the same run: messages/s and MB/s of each. The tool works on the
//! database itself (no daemon), as an operator moving an account would.
//!
//! What each side makes durable differs and is said in the report: the
//! import commits every batch of 256 messages with one group commit
//! (fsync) and acknowledges nothing before it; the export writes each file
//! and syncs the file system once at the end; mbsync (`FSync yes`, its
//! default) fsyncs each message it writes.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One case's figures.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Messages per second and MB per second of the import.
    pub import: (f64, f64),
    /// Of the export.
    pub export: (f64, f64),
    /// Of mbsync's Maildir-to-Maildir copy of the same source.
    pub mbsync: (f64, f64),
}

/// A Maildir of `n` messages of about `size` bytes in three folders, every
/// third one seen, every fifth flagged.
pub fn make_maildir(dir: &Path, n: usize, size: usize) -> Result<u64> {
    let mut bytes = 0;
    for folder in ["", ".Work", ".Lists"] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(folder).join(sub))?;
        }
    }
    for i in 0..n {
        let folder = ["", ".Work", ".Lists"][i % 3];
        let mut flags = String::new();
        if i % 5 == 0 {
            flags.push('F');
        }
        if i % 3 == 0 {
            flags.push('S');
        }
        let mut m = crate::smtp::message(
            &format!("s{i}@example.net"),
            "bench@bench.test",
            &format!("transfer {i}"),
            size,
        );
        m.splice(
            0..0,
            format!("Message-ID: <t{i}@example.net>\r\n").into_bytes(),
        );
        bytes += m.len() as u64;
        let name = format!("{}.M{i}P1.bench:2,{flags}", 1_700_000_000 + i);
        std::fs::write(dir.join(folder).join("cur").join(name), m)?;
    }
    Ok(bytes)
}

/// Writes out what is dirty in the page cache, so that one case's
/// writeback does not land on the next one's time.
fn sync_disk() {
    let _ = Command::new("sync").status();
}

fn run(cmd: &mut Command, what: &str) -> Result<f64> {
    let t = Instant::now();
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(secs)
}

/// Imports, exports and copies with mbsync `n` messages of `size` bytes.
pub fn measure(bin: &Path, work: &Path, n: usize, size: usize) -> Result<Outcome> {
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    let src = work.join("src");
    let bytes = make_maildir(&src, n, size)? as f64;
    let data = work.join("data");
    let o = Command::new(bin)
        .args(["init", "--data"])
        .arg(&data)
        .args([
            "--domain",
            "bench.test",
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
        ])
        .output()?;
    if !o.status.success() {
        bail!("caliopen init: {}", String::from_utf8_lossy(&o.stderr));
    }
    let config = data.join("caliopen.toml");
    let mut add = Command::new(bin)
        .args(["user", "add", "--config"])
        .arg(&config)
        .args(["bench", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        add.stdin
            .take()
            .context("stdin")?
            .write_all(b"a long bench password\n")?;
    }
    if !add.wait()?.success() {
        bail!("caliopen user add failed");
    }
    sync_disk();
    let t_import = run(
        Command::new(bin)
            .args(["mail", "import", "--quiet", "--config"])
            .arg(&config)
            .args(["--user", "bench", "--maildir"])
            .arg(&src),
        "caliopen mail import",
    )?;
    sync_disk();
    let out = work.join("out");
    let t_export = run(
        Command::new(bin)
            .args(["mail", "export", "--quiet", "--config"])
            .arg(&config)
            .args(["--user", "bench", "--maildir"])
            .arg(&out),
        "caliopen mail export",
    )?;
    let near = work.join("mbsync");
    std::fs::create_dir_all(&near)?;
    let rc = work.join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "MaildirStore far\nInbox {}/\nSubFolders Maildir++\n\n\
             MaildirStore near\nInbox {}/\nSubFolders Maildir++\n\n\
             Channel c\nFar :far:\nNear :near:\nPatterns *\nCreate Near\nSync Pull\nSyncState *\n",
            src.display(),
            near.display()
        ),
    )?;
    sync_disk();
    let t_mbsync = run(
        Command::new("mbsync").arg("-c").arg(&rc).arg("-a"),
        "mbsync (Debian's isync)",
    )?;
    let rate = |secs: f64| (n as f64 / secs, bytes / 1e6 / secs);
    Ok(Outcome {
        import: rate(t_import),
        export: rate(t_export),
        mbsync: rate(t_mbsync),
    })
}

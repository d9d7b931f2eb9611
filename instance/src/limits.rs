//! Process and listener limits: the file-descriptor budget, the umask and
//! file modes of the data directory, per-address connection slots and the
//! admission gate every listener uses (SMTP, IMAP, the client API), and the
//! client API's guarded accept loop (connection caps before the TLS
//! handshake, a handshake timeout, an idle timeout on every connection).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for everything that is not a client connection (the
/// database, the mesh socket, logs, outbound connections, DNS).
pub const FD_HEADROOM: u64 = 512;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (l.current, l.maximum) {
        if cur < max {
            l.current = Some(max);
            if let Err(e) = setrlimit(Resource::Nofile, l) {
                tracing::warn!(error = %e, "could not raise the open-file limit");
            }
        }
    } else if l.current.is_some() && l.maximum.is_none() {
        // Unlimited hard limit: a generous soft one.
        l.current = Some(1 << 20);
        let _ = setrlimit(Resource::Nofile, l);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Fits the listeners' connection caps into `limit` descriptors with
/// [`FD_HEADROOM`] kept free: when their sum does not fit, each cap is
/// scaled down in proportion (at least 1), so that a flood on one port
/// cannot take the descriptors another one needs. Returns true when caps
/// were lowered.
pub fn budget(caps: &mut [&mut usize], limit: u64) -> bool {
    let avail = limit.saturating_sub(FD_HEADROOM).max(caps.len() as u64);
    let sum: u64 = caps.iter().map(|c| **c as u64).sum();
    if sum <= avail {
        return false;
    }
    for c in caps.iter_mut() {
        **c = ((**c as u64 * avail / sum) as usize).max(1);
    }
    true
}

/// The daemon's umask: files it makes are its own alone.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Removes group and other access from everything under `dir` (files 0600
/// or tighter, directories 0700), as left by an older version or a copy;
/// returns how many entries were changed. Symbolic links are not followed.
pub fn tighten_permissions(dir: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = 0;
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&d)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if meta.is_dir() {
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode & 0o700))?;
                changed += 1;
            }
            if depth < 8 {
                for e in std::fs::read_dir(&d)? {
                    stack.push((e?.path(), depth + 1));
                }
            }
        } else if meta.is_file() && mode & 0o077 != 0 {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode & 0o700))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Connections counted per client address.
#[derive(Debug, Clone, Default)]
pub struct PerIp {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its address; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    /// Takes a slot for `ip` if it holds fewer than `max`.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            map: self.map.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Admission of a listener's connections: a cap on all of them and one
/// per client address (SMTP, IMAP and the client API share it).
#[derive(Debug)]
pub struct Gate {
    slots: Arc<Semaphore>,
    per_ip: PerIp,
    per_ip_max: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds `max_connections_per_ip` already.
    PerIp,
    /// The listener holds `max_connections` already.
    Full,
}

/// The slots an admitted connection holds until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _slot: IpSlot,
}

impl Gate {
    /// A gate for at most `max` connections, `per_ip_max` from one address.
    pub fn new(max: usize, per_ip_max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            per_ip: PerIp::default(),
            per_ip_max,
        }
    }

    /// Admits a connection from `ip`, or says which cap it hits.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refused> {
        let slot = self
            .per_ip
            .take(ip, self.per_ip_max)
            .ok_or(Refused::PerIp)?;
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        Ok(Admitted {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// The next connection of `listener`, or `None` once `token` is cancelled.
/// A failed accept (out of descriptors, most likely) is logged and retried
/// after 50 ms rather than spun on.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    token: &tokio_util::sync::CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = token.cancelled() => return None,
        }
    }
}

/// Limits of a TLS listener that hands connections to a server (the
/// client API, the web client).
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one address.
    pub max_connections_per_ip: usize,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

/// A connection that holds its slots and closes itself when idle.
pub struct GuardedConn<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    _slots: Admitted,
}

impl<S> GuardedConn<S> {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn touch(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        std::future::Future::poll(self.deadline.as_mut(), cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle")
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedConn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedConn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> tonic::transport::server::Connected for GuardedConn<S> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

/// Counters of a guarded listener.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Connections refused: the listener's cap.
    pub refused_total: std::sync::atomic::AtomicU64,
    /// Connections refused: the per-address cap.
    pub refused_per_ip: std::sync::atomic::AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failed: std::sync::atomic::AtomicU64,
}

/// Accepts on `listener` within `limits`, does the TLS handshake with
/// `tls` under its timeout, and yields the connections for a server
/// (`serve_with_incoming`). Connections over a cap are closed at once,
/// before any TLS work. Ends when `token` is cancelled.
pub fn guarded_tls_incoming(
    what: &'static str,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnLimits,
    metrics: Arc<ListenerMetrics>,
    token: tokio_util::sync::CancellationToken,
) -> impl tokio_stream::Stream<
    Item = Result<
        GuardedConn<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        std::io::Error,
    >,
> {
    use std::sync::atomic::Ordering::Relaxed;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let gate = Gate::new(limits.max_connections, limits.max_connections_per_ip);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Some((tcp, peer)) = accept(&listener, &token, what).await {
            let admitted = match gate.admit(peer.ip()) {
                Ok(a) => a,
                Err(Refused::PerIp) => {
                    metrics.refused_per_ip.fetch_add(1, Relaxed);
                    continue;
                }
                Err(Refused::Full) => {
                    metrics.refused_total.fetch_add(1, Relaxed);
                    continue;
                }
            };
            let (tx, acceptor, metrics) = (tx.clone(), acceptor.clone(), metrics.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let local = tcp.local_addr().ok();
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = GuardedConn {
                            inner: tls,
                            idle: limits.idle_timeout,
                            deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                            local,
                            remote: peer,
                            _slots: admitted,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.handshake_failed.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, error = %e, listener = what, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.handshake_failed.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, listener = what, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::check_private_dir;

    #[test]
    fn caps_are_scaled_into_the_budget() {
        let (mut a, mut b, mut c) = (1000usize, 1000usize, 2000usize);
        assert!(!budget(&mut [&mut a, &mut b, &mut c], 100_000));
        assert_eq!((a, b, c), (1000, 1000, 2000));
        assert!(budget(&mut [&mut a, &mut b, &mut c], 1024));
        assert_eq!((a, b, c), (128, 128, 256));
        assert!(a + b + c <= 1024 - FD_HEADROOM as usize);
    }

    #[test]
    fn per_ip_slots_are_released() {
        let p = PerIp::default();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = p.take(ip, 2);
        let b = p.take(ip, 2);
        assert!(a.is_some() && b.is_some());
        assert!(p.take(ip, 2).is_none());
        assert!(p.take(IpAddr::from([127, 0, 0, 2]), 2).is_some());
        drop(a);
        assert!(p.take(ip, 2).is_some());
    }

    #[test]
    fn permissions_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join("db");
        std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
        let f = sub.join("conf");
        std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("{e}"));
        for p in [dir.path(), sub.as_path()] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(check_private_dir(dir.path()).is_err());
        assert_eq!(tighten_permissions(dir.path()).ok(), Some(3));
        let mode = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        assert_eq!(mode(dir.path()), Some(0o700));
        assert_eq!(mode(&f), Some(0o600));
        assert!(check_private_dir(dir.path()).is_ok());
    }
}

/// What tells one version of a file from the next: modification time,
/// size, inode and change time (a copy that keeps the mtime, `cp -p`,
/// still changes the inode or the ctime). Compared by the readers that
/// re-read a file when it changes (TLS certificate, DKIM schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    modified: std::time::SystemTime,
    len: u64,
    inode: u64,
    ctime: (i64, i64),
}

/// The current version of `path` (none when it cannot be read).
pub fn file_version(path: &Path) -> Option<FileVersion> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileVersion {
        modified: m.modified().ok()?,
        len: m.len(),
        inode: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

//! Files the instance writes whole: configuration, keys, certificates and
//! small state files all go through [`write_atomic`], so that a crash or a
//! full disk leaves the old content or the new one, never a part of it.
//!
//! The recipe is the one POSIX makes safe: write a temporary file of the
//! writer's own beside the target (same filesystem), `fsync` it, `rename`
//! it over the target (atomic, POSIX `rename(2)`), then `fsync` the
//! directory so that the rename itself survives a power cut. Each writer
//! has its own temporary name, so two processes writing the same file at
//! once (the CLI and the daemon) end with one of the two contents whole.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// A file could not be written or checked: the path and the system's
/// error (always a local failure).
#[derive(Debug, Error)]
#[error("{what} {}: {source}", path.display())]
pub struct FileError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl FileError {
    fn new(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        FileError {
            what,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The system's error.
    pub fn io(&self) -> &std::io::Error {
        &self.source
    }
}

/// Replaces (or creates) `path` with `data`, with permissions `mode`,
/// durably and atomically (see the module documentation).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        // The umask may have narrowed `mode` at creation.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::new("write", path, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::new("replace", path, e));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::new("sync the directory of", path, e))
}

/// [`write_atomic`] for a file only the instance's user may read (keys,
/// tokens, state): mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FileError> {
    write_atomic(path, data, 0o600)
}

/// Why a data directory is refused.
#[derive(Debug, Error)]
pub enum PrivateDirError {
    /// It could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// Others may enter it.
    #[error("{} is accessible to other users (mode {mode:o}); the data directory holds password hashes and keys: chmod 700 it", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses a data directory that other users may enter: it holds password
/// hashes and keys.
pub fn check_private_dir(dir: &Path) -> Result<(), PrivateDirError> {
    let meta = std::fs::metadata(dir).map_err(|e| FileError::new("read", dir, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PrivateDirError::Open {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"first", 0o644).unwrap();
        write_private(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("f");
        let e = write_atomic(&p, b"x", 0o600).unwrap_err();
        assert_eq!(e.path(), p.as_path());
        assert!(e.to_string().starts_with("write "), "{e}");
        // A target that is a directory cannot be replaced by a file.
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("inner"), b"kept").unwrap();
        assert!(write_atomic(&d, b"x", 0o600).is_err());
        assert_eq!(std::fs::read(d.join("inner")).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn writers_racing_on_one_file_leave_one_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("race");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || write_atomic(p, &[i; 4096], 0o600).unwrap());
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(got.iter().all(|b| *b == got[0]));
    }
}

//! Private key and state files: written 0600, and refused when others can read them.

use crate::error::{CaError, Result};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `path` with mode 0600 and writes `data`, fsyncing it. Fails if it exists.
pub(crate) fn write_private_new(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CaError::io(format!("create {}", path.display()), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| CaError::io(format!("write {}", path.display()), e))
}

/// Writes a public file atomically (temporary file, fsync, rename) with `mode`.
pub(crate) fn write_file_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    res.map_err(|e| CaError::io(format!("write {}", path.display()), e))
}

/// Reads a private file after checking that neither group nor others can
/// read or write it.
pub(crate) fn read_private(path: &Path) -> Result<Vec<u8>> {
    let meta =
        fs::metadata(path).map_err(|e| CaError::io(format!("read {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::State(format!(
            "refusing to use {}: its mode is {mode:04o}, readable beyond its owner (chmod 600 it)",
            path.display()
        )));
    }
    fs::read(path).map_err(|e| CaError::io(format!("read {}", path.display()), e))
}

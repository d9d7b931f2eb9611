//! The append-only audit log (`audit.log`, JSON lines, 0600): every
//! issuance, renewal, revocation, CRL, directory and witness change.

use super::{files, now, Authority};
use crate::error::{CaError, Result};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

impl Authority {
    pub(super) fn audit(&self, event: &serde_json::Value) -> Result<()> {
        let path = self.dir.join(files::AUDIT_LOG);
        let mut line = serde_json::json!({"ts": now().unix_timestamp()});
        if let (Some(obj), Some(ev)) = (line.as_object_mut(), event.as_object()) {
            obj.extend(ev.clone());
        }
        let mut text = line.to_string();
        text.push('\n');
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CaError::io(format!("open {}", path.display()), e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| CaError::io(format!("append to {}", path.display()), e))
    }
}

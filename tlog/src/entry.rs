//! The entries of the membership log: one per operation that changes
//! membership, in a small self-describing binary encoding.
//!
//! ```text
//! entry      = version kind time body        ; no trailing bytes
//! version    = 0x01
//! kind       = 0x01 issuance | 0x02 renewal | 0x03 revocation | 0x04 baseline
//!            | 0x05 handover
//! time       = uint64 big-endian, Unix seconds of the operation
//! issuance   = cert
//! renewal    = serial cert                   ; serial: the certificate renewed
//! revocation = serial reason
//! baseline   = string                        ; minimum software version ("" clears)
//! handover   = string string                 ; the member that closes, its successor
//! cert       = uint24 length, certificate DER
//! serial     = uint8 length (1..=20), serial number bytes (RFC 5280 §4.1.2.2)
//! reason     = uint8 length, RFC 5280 reason name, ASCII
//! string     = uint8 length, UTF-8
//! ```
//!
//! The leaf hashed into the tree is exactly these bytes (RFC 6962 leaf =
//! SHA-256(0x00 || entry)), so the encoding is fixed: one value, one spelling.

use thiserror::Error;

/// Encoding version written first in every entry.
pub const ENTRY_VERSION: u8 = 1;

/// Largest certificate an entry carries (bytes; uint24 allows 16 MiB, a
/// member certificate is under 2 KiB).
pub const MAX_ENTRY_CERT_LEN: usize = 64 * 1024;

/// Why entry bytes are refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EntryError {
    /// The bytes are not an entry of a known version and kind.
    #[error("malformed log entry: {0}")]
    Malformed(&'static str),
}

/// What one log entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A member certificate issued by `sign`.
    Issuance {
        /// The certificate, DER.
        cert_der: Vec<u8>,
    },
    /// A member certificate issued by renewal of an earlier one.
    Renewal {
        /// Serial of the certificate presented to renew.
        renewed_from: Vec<u8>,
        /// The new certificate, DER.
        cert_der: Vec<u8>,
    },
    /// A certificate revoked.
    Revocation {
        /// Its serial.
        serial: Vec<u8>,
        /// RFC 5280 reason name (`keyCompromise`, …).
        reason: String,
    },
    /// The security baseline changed.
    Baseline {
        /// The new minimum software version.
        min_software_version: String,
    },
    /// A member closes and hands its users and domains over to its
    /// successor (the one its label names).
    Handover {
        /// The member that closes.
        from: String,
        /// Its successor.
        to: String,
    },
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When the operation happened (Unix seconds).
    pub time: u64,
    /// What it did.
    pub kind: EntryKind,
}

impl EntryKind {
    /// Short name: `issuance`, `renewal`, `revocation`, `baseline`, `handover`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Issuance { .. } => "issuance",
            Self::Renewal { .. } => "renewal",
            Self::Revocation { .. } => "revocation",
            Self::Baseline { .. } => "baseline",
            Self::Handover { .. } => "handover",
        }
    }
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EntryError> {
    let n = u8::try_from(b.len()).map_err(|_| EntryError::Malformed("field too long"))?;
    out.push(n);
    out.extend_from_slice(b);
    Ok(())
}

fn put_serial(out: &mut Vec<u8>, s: &[u8]) -> Result<(), EntryError> {
    if s.is_empty() || s.len() > 20 {
        return Err(EntryError::Malformed("serial must be 1-20 bytes"));
    }
    put_short(out, s)
}

fn put_cert(out: &mut Vec<u8>, der: &[u8]) -> Result<(), EntryError> {
    if der.is_empty() || der.len() > MAX_ENTRY_CERT_LEN {
        return Err(EntryError::Malformed("certificate size out of range"));
    }
    let n = der.len() as u32;
    out.extend_from_slice(&n.to_be_bytes()[1..]);
    out.extend_from_slice(der);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }
    fn short(&mut self) -> Result<&'a [u8], EntryError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn serial(&mut self) -> Result<Vec<u8>, EntryError> {
        let s = self.short()?;
        if s.is_empty() || s.len() > 20 {
            return Err(EntryError::Malformed("serial must be 1-20 bytes"));
        }
        Ok(s.to_vec())
    }
    fn cert(&mut self) -> Result<Vec<u8>, EntryError> {
        let l = self.take(3)?;
        let n = (usize::from(l[0]) << 16) | (usize::from(l[1]) << 8) | usize::from(l[2]);
        if n == 0 || n > MAX_ENTRY_CERT_LEN {
            return Err(EntryError::Malformed("certificate size out of range"));
        }
        Ok(self.take(n)?.to_vec())
    }
    fn text(&mut self) -> Result<String, EntryError> {
        let s = self.short()?;
        String::from_utf8(s.to_vec()).map_err(|_| EntryError::Malformed("text is not UTF-8"))
    }
}

impl Entry {
    /// The entry's bytes (what the leaf hash covers).
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let mut out = vec![ENTRY_VERSION];
        match &self.kind {
            EntryKind::Issuance { cert_der } => {
                out.push(1);
                out.extend_from_slice(&self.time.to_be_bytes());
                put_cert(&mut out, cert_der)?;
            }
            EntryKind::Renewal {
                renewed_from,
                cert_der,
            } => {
                out.push(2);
                out.extend_from_slice(&self.time.to_be_bytes());
                put_serial(&mut out, renewed_from)?;
                put_cert(&mut out, cert_der)?;
            }
            EntryKind::Revocation { serial, reason } => {
                out.push(3);
                out.extend_from_slice(&self.time.to_be_bytes());
                put_serial(&mut out, serial)?;
                if !reason.is_ascii() {
                    return Err(EntryError::Malformed("reason is not ASCII"));
                }
                put_short(&mut out, reason.as_bytes())?;
            }
            EntryKind::Baseline {
                min_software_version,
            } => {
                out.push(4);
                out.extend_from_slice(&self.time.to_be_bytes());
                put_short(&mut out, min_software_version.as_bytes())?;
            }
            EntryKind::Handover { from, to } => {
                out.push(5);
                out.extend_from_slice(&self.time.to_be_bytes());
                if from.is_empty() || to.is_empty() {
                    return Err(EntryError::Malformed("a handover names two members"));
                }
                put_short(&mut out, from.as_bytes())?;
                put_short(&mut out, to.as_bytes())?;
            }
        }
        // Served in tlog-tiles entry bundles, whose length prefix is a
        // uint16: a longer entry could be logged but never published.
        if out.len() > super::tiles::MAX_BUNDLE_ENTRY_LEN {
            return Err(EntryError::Malformed(
                "entry longer than an entry bundle can carry (65,535 bytes)",
            ));
        }
        Ok(out)
    }

    /// Decodes entry bytes; anything but exactly one entry of a known
    /// version and kind is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader(bytes);
        if r.u8()? != ENTRY_VERSION {
            return Err(EntryError::Malformed("unknown version"));
        }
        let kind = r.u8()?;
        let time = u64::from_be_bytes(
            r.take(8)?
                .try_into()
                .map_err(|_| EntryError::Malformed("truncated"))?,
        );
        let kind = match kind {
            1 => EntryKind::Issuance {
                cert_der: r.cert()?,
            },
            2 => EntryKind::Renewal {
                renewed_from: r.serial()?,
                cert_der: r.cert()?,
            },
            3 => {
                let serial = r.serial()?;
                let reason = r.text()?;
                if !reason.is_ascii() {
                    return Err(EntryError::Malformed("reason is not ASCII"));
                }
                EntryKind::Revocation { serial, reason }
            }
            4 => EntryKind::Baseline {
                min_software_version: r.text()?,
            },
            5 => {
                let (from, to) = (r.text()?, r.text()?);
                if from.is_empty() || to.is_empty() {
                    return Err(EntryError::Malformed("a handover names two members"));
                }
                EntryKind::Handover { from, to }
            }
            _ => return Err(EntryError::Malformed("unknown kind")),
        };
        if !r.0.is_empty() {
            return Err(EntryError::Malformed("trailing bytes"));
        }
        Ok(Self { time, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Entry> {
        vec![
            Entry {
                time: 1,
                kind: EntryKind::Issuance {
                    cert_der: vec![0x30, 0x03, 1, 2, 3],
                },
            },
            Entry {
                time: u64::MAX,
                kind: EntryKind::Renewal {
                    renewed_from: vec![0x40; 16],
                    cert_der: vec![9; 70_000 / 2],
                },
            },
            Entry {
                time: 1_700_000_000,
                kind: EntryKind::Revocation {
                    serial: vec![1],
                    reason: "keyCompromise".into(),
                },
            },
            Entry {
                time: 5,
                kind: EntryKind::Baseline {
                    min_software_version: "0.2.0".into(),
                },
            },
            Entry {
                time: 6,
                kind: EntryKind::Handover {
                    from: "old-member".into(),
                    to: "successor".into(),
                },
            },
        ]
    }

    #[test]
    fn round_trip_and_every_truncation_refused() {
        for e in samples() {
            let b = e.encode().unwrap();
            assert_eq!(Entry::decode(&b).unwrap(), e);
            for cut in 0..b.len() {
                assert!(
                    Entry::decode(&b[..cut]).is_err(),
                    "{} cut {cut}",
                    e.kind.name()
                );
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(Entry::decode(&longer).is_err());
            let mut v2 = b.clone();
            v2[0] = 2;
            assert!(Entry::decode(&v2).is_err());
        }
    }

    #[test]
    fn bad_values_are_not_encoded() {
        let e = |kind| Entry { time: 0, kind };
        assert!(e(EntryKind::Issuance { cert_der: vec![] })
            .encode()
            .is_err());
        assert!(e(EntryKind::Revocation {
            serial: vec![0; 21],
            reason: "x".into()
        })
        .encode()
        .is_err());
        assert!(e(EntryKind::Baseline {
            min_software_version: "x".repeat(256)
        })
        .encode()
        .is_err());
    }
}

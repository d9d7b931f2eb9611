//! The Caliopen charter in machine-readable form (`charter/charter.toml`): its
//! version, the earlier versions still accepted, and the obligation ids.
#![forbid(unsafe_code)]

use serde::Deserialize;
use thiserror::Error;

/// The charter shipped with this build.
pub const EMBEDDED_CHARTER_TOML: &str = include_str!("../charter.toml");

/// One obligation a member takes on by signing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Obligation {
    /// Stable identifier (`personal-data-protection`, …).
    pub id: String,
    /// One-sentence summary.
    pub summary: String,
}

/// The parsed charter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Charter {
    /// Current charter version.
    pub version: String,
    /// Earlier versions whose signatories remain labelled.
    #[serde(default)]
    pub accepted_versions: Vec<String>,
    /// The obligations.
    #[serde(rename = "obligation")]
    pub obligations: Vec<Obligation>,
}

/// A charter file that cannot be used.
#[derive(Debug, Error)]
pub enum CharterError {
    /// Not valid TOML or not the expected shape.
    #[error("invalid charter.toml: {0}")]
    Parse(String),
    /// Semantically invalid (empty version, duplicate obligation ids…).
    #[error("invalid charter.toml: {0}")]
    Invalid(String),
}

impl Charter {
    /// Parses and validates a `charter.toml`.
    pub fn parse(text: &str) -> Result<Self, CharterError> {
        let c: Charter = toml::from_str(text).map_err(|e| {
            CharterError::Parse(e.to_string().lines().next().unwrap_or("").to_owned())
        })?;
        if c.version.trim().is_empty() {
            return Err(CharterError::Invalid("empty `version`".into()));
        }
        if c.obligations.is_empty() {
            return Err(CharterError::Invalid("no `obligation`".into()));
        }
        let mut ids: Vec<&str> = c.obligations.iter().map(|o| o.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(CharterError::Invalid(format!(
                "duplicate obligation id `{}`",
                w[0]
            )));
        }
        Ok(c)
    }

    /// The charter embedded in this build.
    pub fn embedded() -> Self {
        #[allow(clippy::expect_used)]
        Self::parse(EMBEDDED_CHARTER_TOML).expect("embedded charter.toml is valid (tested)")
    }

    /// True when `v` is the current version or an accepted earlier one.
    pub fn accepts(&self, v: &str) -> bool {
        self.version == v || self.accepted_versions.iter().any(|a| a == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_charter_lists_the_design_obligations() {
        let c = Charter::embedded();
        assert_eq!(c.version, "1.0");
        assert!(c.accepts("1.0"));
        assert!(!c.accepts("0.9"));
        let ids: Vec<&str> = c.obligations.iter().map(|o| o.id.as_str()).collect();
        for want in [
            "personal-data-protection",
            "simple-terms",
            "successor-member",
            "police-requests-conduct",
            "security-updates",
        ] {
            assert!(ids.contains(&want), "missing {want}");
        }
    }

    #[test]
    fn bad_charters_are_refused() {
        assert!(Charter::parse("version = ''\n[[obligation]]\nid='a'\nsummary='b'").is_err());
        assert!(Charter::parse("version = '1'").is_err());
        assert!(Charter::parse(
            "version='1'\n[[obligation]]\nid='a'\nsummary='b'\n[[obligation]]\nid='a'\nsummary='c'"
        )
        .is_err());
        assert!(Charter::parse("not toml [").is_err());
    }
}

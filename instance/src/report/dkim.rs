//! `caliopen dkim list`: the DKIM key pairs and their schedule.

use super::{Report, ReportError};
use crate::config::Config;
use std::fmt::Write as _;

/// `caliopen dkim list`: every key pair and where it stands.
pub fn dkim_list(cfg: &Config) -> Result<Report, ReportError> {
    let Some(keys) = super::dns::dkim_keys(cfg)? else {
        return Err(ReportError::Input(format!(
            "DKIM signing is off in {} ([dkim] sign = false)",
            cfg.source.clone().unwrap_or_default().display()
        )));
    };
    let list = keys.list(crate::store::now_unix());
    let json = serde_json::to_value(&list).unwrap_or_default();
    let mut text = String::new();
    let out = &mut text;
    if list.is_empty() {
        w!(
            out,
            "no DKIM keys yet: `caliopen run` makes them at start, or run `caliopen dkim rotate`"
        );
    }
    let when = super::certificate::rfc3339;
    for p in &list {
        w!(
            out,
            "{} {} {:?}: selectors {} and {}, signs from {}{}",
            p.domain,
            p.pair.name,
            p.state,
            p.ed25519_selector,
            p.rsa_selector,
            when(p.pair.sign_from),
            p.pair
                .retire_at
                .map(|r| format!(", retired at {}", when(r)))
                .unwrap_or_default()
        );
    }
    Ok(Report { json, text })
}

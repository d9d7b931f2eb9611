//! `caliopen certificate`: the TLS certificate served, and its renewal plan.

use super::{Report, ReportError};
use crate::config::Config;
use std::fmt::Write as _;

/// A Unix time as RFC 3339 (the number itself when out of range).
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// `caliopen certificate`: the certificate every listener serves and, with
/// `[acme]`, when it is renewed.
pub fn certificate(cfg: &Config) -> Result<Report, ReportError> {
    use crate::acme;
    let path = cfg.in_data(&cfg.smtp.tls_cert);
    let text = std::fs::read_to_string(&path).map_err(|source| ReportError::Read {
        path: path.clone(),
        source,
    })?;
    let bad = |e: &dyn std::fmt::Display| ReportError::Input(format!("{}: {e}", path.display()));
    let leaf = pem::parse_many(&text)
        .map_err(|e| bad(&e))?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or_else(|| bad(&"no certificate in it"))?;
    let f = acme::cert_facts(leaf.contents()).map_err(|e| bad(&e))?;
    let issuer = x509_parser::parse_x509_certificate(leaf.contents())
        .map(|(_, c)| c.issuer().to_string())
        .unwrap_or_default();
    let now = crate::store::now_unix();
    let settings = cfg.acme_settings();
    let renewal = settings.as_ref().map(|s| match acme::due(&f, &s.names, now) {
        Ok(at) => serde_json::json!({"at": at, "reason": "two thirds of its lifetime (earlier if the CA's renewal information says so)"}),
        Err(why) => serde_json::json!({"at": now, "reason": why}),
    });
    let json = serde_json::json!({
        "file": path.display().to_string(),
        "names": f.names,
        "issuer": issuer,
        "self_signed": f.self_signed,
        "not_before": f.not_before,
        "not_after": f.not_after,
        "seconds_left": f.not_after - now,
        "acme": settings.as_ref().map(|s| serde_json::json!({
            "directory": s.directory,
            "names": s.names,
            "challenge": format!("{:?}", s.challenge),
            "account": cfg.data_dir().join("acme/account.json").exists(),
            "renewal": renewal,
        })),
    });
    let mut text = String::new();
    let out = &mut text;
    let when = rfc3339;
    w!(out, "certificate {}", path.display());
    w!(out, "  names:  {}", f.names.join(", "));
    w!(
        out,
        "  issuer: {issuer}{}",
        if f.self_signed { " (self-signed)" } else { "" }
    );
    w!(
        out,
        "  valid:  {} to {} ({})",
        when(f.not_before),
        when(f.not_after),
        if f.not_after <= now {
            "EXPIRED".to_owned()
        } else {
            format!("{} days left", (f.not_after - now) / 86_400)
        }
    );
    match &settings {
        None => w!(out, "  ACME:   off (the files are kept by hand; see [acme] in deploy/caliopen.example.toml)"),
        Some(s) => {
            w!(out, "  ACME:   {} ({:?}) for {}", s.directory, s.challenge, s.names.join(", "));
            match acme::due(&f, &s.names, now) {
                Ok(at) => w!(out, "  renewal: at {} at the latest", when(at)),
                Err(why) => w!(out, "  renewal: due now: {why} (the running daemon asks at once)"),
            }
        }
    }
    Ok(Report { json, text })
}

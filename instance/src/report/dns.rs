//! `caliopen dns [check]`: the records an operator publishes, and what the
//! resolver finds of them.

use super::{Report, ReportError};
use crate::config::Config;
use std::fmt::Write as _;

/// The instance's DKIM keys, when it signs.
pub fn dkim_keys(cfg: &Config) -> Result<Option<crate::dkim::DkimKeys>, ReportError> {
    if !cfg.dkim.sign {
        return Ok(None);
    }
    crate::dkim::DkimKeys::open(&cfg.data_dir())
        .map(Some)
        .map_err(|e| ReportError::Other(e.to_string()))
}

/// `caliopen dns`: every record to publish, for each domain.
pub fn dns(cfg: &Config) -> Result<Report, ReportError> {
    let keys = dkim_keys(cfg)?;
    let records = crate::publish::records(cfg, keys.as_ref(), crate::store::now_unix());
    let json = serde_json::to_value(&records).unwrap_or_default();
    let mut text = String::new();
    let out = &mut text;
    let host = cfg.hostname.trim_end_matches('.');
    w!(
        out,
        "; DNS records for {} (zone-file form; --json for a list)",
        cfg.domains.join(", ")
    );
    w!(out, "; also needed: A/AAAA records of {host} naming this server's public addresses, and a PTR record of each naming {host}");
    if keys.is_none() {
        w!(
            out,
            "; DKIM signing is off ([dkim] sign = false): no DKIM records"
        );
    }
    let mut why = "";
    for r in &records {
        if r.why != why {
            w!(out, "; {}", r.why);
            why = r.why;
        }
        let value = if r.rtype == "TXT" {
            crate::publish::zone_txt(&r.value)
        } else {
            r.value.clone()
        };
        w!(out, "{}.\tIN {}\t{value}", r.name, r.rtype);
    }
    if let Some(p) = crate::publish::mta_sts_policy(cfg).filter(|_| cfg.web.listen.is_some()) {
        w!(out, "; the MTA-STS policy the web listener serves at https://mta-sts.<domain>/.well-known/mta-sts.txt:");
        for l in p.lines() {
            w!(out, ";   {l}");
        }
    }
    Ok(Report { json, text })
}

/// `caliopen dns check`: asks the configured resolver for each record (and
/// fetches each domain's MTA-STS policy as a sender would); the report and
/// how many records are to fix.
pub async fn dns_check(cfg: &Config) -> Result<(Report, usize), ReportError> {
    use crate::publish::Found;
    let keys = dkim_keys(cfg)?;
    let records = crate::publish::records(cfg, keys.as_ref(), crate::store::now_unix());
    let resolver = crate::sender_auth::SenderAuth::new(
        &cfg.dns.servers,
        std::time::Duration::from_secs(cfg.dns.timeout_seconds),
    )
    .map_err(|e| ReportError::Other(e.to_string()))?;
    let mut lines = crate::publish::check(&records, &resolver).await;
    // The MTA-STS policy as senders fetch it: over HTTPS, from mta-sts.DOMAIN.
    if let (Some(want), true) = (
        crate::publish::mta_sts_policy(cfg),
        cfg.web.listen.is_some(),
    ) {
        let roots = match &cfg.smtp.mta_sts_ca {
            Some(p) => {
                let p = cfg.in_data(p);
                Some(std::fs::read(&p).map_err(|source| ReportError::Read {
                    path: p.clone(),
                    source,
                })?)
            }
            None => None,
        };
        let client = crate::mta_sts::MtaSts::new(
            resolver.clone(),
            roots.as_deref(),
            cfg.smtp.mta_sts_port,
            None,
        )
        .map_err(ReportError::Other)?;
        for d in &cfg.domains {
            let record = crate::publish::Record {
                name: format!("https://mta-sts.{d}/.well-known/mta-sts.txt"),
                rtype: "HTTPS",
                value: want.replace("\r\n", "; ").trim_end_matches("; ").to_owned(),
                why: "the MTA-STS policy as senders fetch it",
            };
            let (found, published) = match client.fetch(d).await {
                Ok(text) if text == want => (Found::Ok, Vec::new()),
                Ok(text) => (Found::Different, vec![text.replace("\r\n", "; ")]),
                Err(e) => (Found::Error, vec![e.to_string()]),
            };
            lines.push(crate::publish::CheckLine {
                record,
                found,
                published,
            });
        }
    }
    let bad = lines.iter().filter(|l| l.found != Found::Ok).count();
    let json = serde_json::to_value(&lines).unwrap_or_default();
    let mut text = String::new();
    let out = &mut text;
    {
        for l in &lines {
            let verdict = match l.found {
                Found::Ok => "ok",
                Found::Missing => "MISSING",
                Found::Different => "DIFFERENT",
                Found::Error => "ERROR",
            };
            w!(
                out,
                "{verdict:<9} {:<5} {} {}",
                l.record.rtype,
                l.record.name,
                l.record.value
            );
            if l.found != Found::Ok && !l.published.is_empty() {
                for p in &l.published {
                    w!(out, "          published: {p}");
                }
            }
        }
        w!(
            out,
            "{} records: {} as expected, {bad} to fix",
            lines.len(),
            lines.len() - bad
        );
    }
    Ok((Report { json, text }, bad))
}

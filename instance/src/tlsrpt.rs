//! SMTP TLS reporting (RFC 8460) of the mail this instance delivers to
//! other domains' MX hosts.
//!
//! - **Recording**: every direct delivery session (one SMTP connection to
//!   one MX address) is counted per UTC day and recipient domain, under
//!   the policy that applied: `sts` (the domain's MTA-STS policy, testing
//!   or enforce) or `no-policy-found`. A session is successful when TLS
//!   was negotiated as the policy asks (under `sts`: STARTTLS with a
//!   certificate verified for the MX name; without a policy: any
//!   STARTTLS); otherwise it is a failure with its RFC 8460 result type
//!   (`starttls-not-supported`, `certificate-host-mismatch`,
//!   `certificate-expired`, `certificate-not-trusted`,
//!   `validation-failure`), the MX host and address. Kept in the sled tree
//!   `tlsrpt` (one JSON record per day and domain, at most
//!   [`MAX_FAILURE_DETAILS`] distinct failures each).
//! - **Reporting**: for each finished day, each domain that publishes
//!   `_smtp._tls.DOMAIN TXT "v=TLSRPTv1; rua=..."` gets one report (the
//!   JSON of RFC 8460 §4) at each of its URIs: `https:` — POSTed gzipped
//!   as `application/tlsrpt+gzip` over verified TLS (web PKI and `[smtp]
//!   mta_sts_ca`); `mailto:` — a `multipart/report; report-type="tlsrpt"`
//!   message with the gzipped report attached (RFC 8460 §5.3), DKIM-signed
//!   and queued like any outgoing mail. A day's records go once its
//!   reports were handed over (or when its domains publish no address);
//!   records older than [`KEEP_DAYS`] go whatever happened.

use crate::mta_sts::HttpsError;
use crate::sender_auth::{LookupType, SenderAuth};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The local part reports are mailed from (`tlsrpt-noreply@` the primary
/// domain): such mail is delivered whatever TLS allows and not counted.
pub(crate) const SENDER_LOCAL: &str = "tlsrpt-noreply@";

/// Distinct failure details kept per day, domain and policy.
pub(crate) const MAX_FAILURE_DETAILS: usize = 100;
/// Records older than this many days are dropped unreported.
pub(crate) const KEEP_DAYS: u32 = 7;
/// Report URIs used per domain at most.
const MAX_RUA: usize = 5;
/// One HTTPS report upload may take this long.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// The result types of RFC 8460 §4.3.2.1 that a session here can end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Failure {
    /// The MX did not offer STARTTLS (or it failed before certificates).
    #[serde(rename = "starttls-not-supported")]
    StarttlsNotSupported,
    /// The certificate does not name the MX host.
    #[serde(rename = "certificate-host-mismatch")]
    HostMismatch,
    /// The certificate has expired.
    #[serde(rename = "certificate-expired")]
    Expired,
    /// The certificate does not chain to a trusted root.
    #[serde(rename = "certificate-not-trusted")]
    NotTrusted,
    /// Any other validation failure (an MX host the policy does not list).
    #[serde(rename = "validation-failure")]
    Validation,
}

impl Failure {
    /// The failure of a verified STARTTLS attempt, from its error text
    /// (rustls' certificate errors as lettre reports them).
    pub fn of_tls_error(e: &str) -> Self {
        let lower = e.to_ascii_lowercase();
        if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            Failure::HostMismatch
        } else if lower.contains("expired") {
            Failure::Expired
        } else if lower.contains("unknownissuer") || lower.contains("badsignature") {
            Failure::NotTrusted
        } else if lower.contains("certificate") {
            Failure::Validation
        } else {
            Failure::StarttlsNotSupported
        }
    }
}

/// The MTA-STS policy a session was under, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StsFacts {
    /// The policy's lines.
    pub lines: Vec<String>,
    /// Its `mx` patterns.
    pub mx: Vec<String>,
}

impl StsFacts {
    /// The facts of a fetched policy.
    pub fn of(p: &crate::mta_sts::Policy) -> Self {
        let mode = match p.mode {
            crate::mta_sts::Mode::Enforce => "enforce",
            crate::mta_sts::Mode::Testing => "testing",
            crate::mta_sts::Mode::None => "none",
        };
        let mut lines = vec!["version: STSv1".to_owned(), format!("mode: {mode}")];
        lines.extend(p.mx.iter().map(|m| format!("mx: {m}")));
        lines.push(format!("max_age: {}", p.max_age));
        Self {
            lines,
            mx: p.mx.clone(),
        }
    }
}

/// One failure detail with its count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Detail {
    result: Failure,
    mx: String,
    ip: Option<IpAddr>,
    info: Option<String>,
    count: u64,
}

/// The sessions of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct Sessions {
    sts: Option<StsFacts>,
    success: u64,
    failure: u64,
    details: Vec<Detail>,
}

/// One day's record for one domain: `sts` and `no-policy-found` sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct DayRecord {
    policies: BTreeMap<String, Sessions>,
    /// The id of this day's report once one was sent somewhere: a URI
    /// that failed gets the same report again, with the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report_id: Option<String>,
    /// The URIs that have it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    done: Vec<String>,
}

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// TLS as the policy asks.
    Success,
    /// Not: why, with which MX host and address.
    Failure {
        /// The result type.
        result: Failure,
        /// The MX host.
        mx: String,
        /// Its address.
        ip: Option<IpAddr>,
        /// Said in `additional-information`.
        info: Option<String>,
    },
}

/// The UTC day of a Unix time.
pub(crate) fn day_of(unix: i64) -> u32 {
    u32::try_from(unix.max(0) / 86_400).unwrap_or(u32::MAX)
}

fn key(day: u32, domain: &str) -> Vec<u8> {
    let mut k = day.to_be_bytes().to_vec();
    k.extend_from_slice(domain.to_ascii_lowercase().as_bytes());
    k
}

/// The recorded sessions (sled tree `tlsrpt`).
#[derive(Debug, Clone)]
pub struct TlsReports {
    tree: sled::Tree,
}

impl TlsReports {
    /// The tree in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, String> {
        Ok(Self {
            tree: db.open_tree("tlsrpt").map_err(|e| e.to_string())?,
        })
    }

    /// Counts one session to `domain` at `now` under `sts` (none:
    /// `no-policy-found`). A failed write is logged: reports are advisory.
    pub fn record(&self, now: i64, domain: &str, sts: Option<&StsFacts>, outcome: &Outcome) {
        let r = self.tree.update_and_fetch(key(day_of(now), domain), |old| {
            let mut rec: DayRecord = old
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            let name = if sts.is_some() {
                "sts"
            } else {
                "no-policy-found"
            };
            let s = rec.policies.entry(name.to_owned()).or_default();
            if let Some(f) = sts {
                s.sts = Some(f.clone());
            }
            match outcome {
                Outcome::Success => s.success += 1,
                Outcome::Failure {
                    result,
                    mx,
                    ip,
                    info,
                } => {
                    s.failure += 1;
                    let full = s.details.len() >= MAX_FAILURE_DETAILS;
                    match s
                        .details
                        .iter_mut()
                        .find(|d| d.result == *result && d.mx == *mx && d.ip == *ip)
                    {
                        Some(d) => d.count += 1,
                        None if !full => s.details.push(Detail {
                            result: *result,
                            mx: mx.clone(),
                            ip: *ip,
                            info: info.clone(),
                            count: 1,
                        }),
                        None => {}
                    }
                }
            }
            serde_json::to_vec(&rec).ok()
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, domain, "TLS report: a session could not be recorded");
        }
    }

    /// The days that have records, oldest first.
    pub fn days(&self) -> Vec<u32> {
        let mut days: Vec<u32> = self
            .tree
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| Some(u32::from_be_bytes(k.get(..4)?.try_into().ok()?)))
            .collect();
        days.dedup();
        days
    }

    /// The domains recorded on `day`, with their report as RFC 8460 JSON
    /// (without `report-id`, `organization-name` and `contact-info`).
    fn day(&self, day: u32) -> Vec<(String, DayRecord)> {
        self.tree
            .scan_prefix(day.to_be_bytes())
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| {
                let domain = String::from_utf8(k.get(4..)?.to_vec()).ok()?;
                Some((domain, serde_json::from_slice(&v).ok()?))
            })
            .collect()
    }

    /// Keeps a report's id and the URIs that have it (finished days only:
    /// their sessions no longer change).
    fn progress(&self, day: u32, domain: &str, (id, done): (String, Vec<String>)) {
        let r = self.tree.update_and_fetch(key(day, domain), |old| {
            let mut rec: DayRecord = serde_json::from_slice(old?).ok()?;
            rec.report_id = (!id.is_empty()).then(|| id.clone());
            rec.done = done.clone();
            serde_json::to_vec(&rec).ok()
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, domain, "TLS report: progress not kept");
        }
    }

    fn forget(&self, day: u32, domain: &str) {
        if let Err(e) = self.tree.remove(key(day, domain)) {
            tracing::warn!(error = %e, domain, "TLS report: a record could not be removed");
        }
    }
}

/// Sends the reports of finished days soon after each UTC midnight (at a
/// random minute of the first hour, so that senders do not all post at
/// once) and once at start, until `token` is cancelled.
pub(crate) async fn run_daily(
    reporter: std::sync::Arc<Reporter>,
    svc: crate::delivery::MailService,
    token: tokio_util::sync::CancellationToken,
) {
    let mut first = true;
    loop {
        let now = crate::delivery::now_unix();
        let wait = if first {
            Duration::from_secs(60)
        } else {
            let mut r = [0u8; 2];
            let _ = aws_lc_rs::rand::fill(&mut r);
            let jitter = i64::from(u16::from_be_bytes(r) % 3600);
            let next = (i64::from(day_of(now)) + 1) * 86_400 + 300 + jitter;
            Duration::from_secs(u64::try_from(next - now).unwrap_or(60))
        };
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => return,
        }
        let sent = reporter
            .run(&svc, day_of(crate::delivery::now_unix()), false)
            .await;
        let failed = sent
            .iter()
            .filter(|s| !matches!(s.outcome.as_str(), "sent" | "queued" | "no-record"))
            .count();
        if !sent.is_empty() {
            tracing::info!(
                reports = sent.len(),
                failed,
                "SMTP TLS reports of finished days sent"
            );
        }
    }
}

/// The report of one day for one domain (RFC 8460 §4.4).
pub(crate) fn report_json(
    day: u32,
    domain: &str,
    organization: &str,
    contact: &str,
    report_id: &str,
    rec: &serde_json::Value,
) -> serde_json::Value {
    let start = i64::from(day) * 86_400;
    let fmt = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    let mut policies = Vec::new();
    if let Some(map) = rec["policies"].as_object() {
        for (name, s) in map {
            let mut policy = serde_json::json!({
                "policy-type": name,
                "policy-domain": domain,
            });
            if name == "sts" {
                policy["policy-string"] = s["sts"]["lines"].clone();
                policy["mx-host"] = s["sts"]["mx"].clone();
            }
            let details: Vec<serde_json::Value> = s["details"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            let mut v = serde_json::json!({
                                "result-type": d["result"],
                                "receiving-mx-hostname": d["mx"],
                                "failed-session-count": d["count"],
                            });
                            if !d["ip"].is_null() {
                                v["receiving-ip"] = d["ip"].clone();
                            }
                            // Free text goes in `failure-reason-code`
                            // (`additional-information` is a URI).
                            if !d["info"].is_null() {
                                v["failure-reason-code"] = d["info"].clone();
                            }
                            v
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut p = serde_json::json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": s["success"],
                    "total-failure-session-count": s["failure"],
                },
            });
            if !details.is_empty() {
                p["failure-details"] = serde_json::Value::Array(details);
            }
            policies.push(p);
        }
    }
    serde_json::json!({
        "organization-name": organization,
        "date-range": {
            "start-datetime": fmt(start),
            "end-datetime": fmt(start + 86_399),
        },
        "contact-info": contact,
        "report-id": report_id,
        "policies": policies,
    })
}

/// The report URIs a `_smtp._tls` TXT record names (RFC 8460 §3): `None`
/// when it is not a TLSRPTv1 record.
pub(crate) fn parse_record(txt: &str) -> Option<Vec<String>> {
    let mut parts = txt.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("v=TLSRPTv1") {
        return None;
    }
    let mut rua = Vec::new();
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("rua") {
                for u in v.split(',').map(str::trim) {
                    let lower = u.to_ascii_lowercase();
                    if (lower.starts_with("mailto:") || lower.starts_with("https://"))
                        && rua.len() < MAX_RUA
                    {
                        rua.push(u.to_owned());
                    }
                }
            }
        }
    }
    (!rua.is_empty()).then_some(rua)
}

/// Gzip of `data`.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// What a report run did, per domain and URI.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    /// The UTC day reported (`YYYY-MM-DD`).
    pub day: String,
    /// The domain.
    pub domain: String,
    /// The URI (empty: the domain publishes none).
    pub uri: String,
    /// `sent`, `queued`, `no-record` or the error.
    pub outcome: String,
}

/// Sends the reports of recorded days.
#[derive(Debug)]
pub struct Reporter {
    /// The records.
    pub reports: TlsReports,
    /// DNS (for `_smtp._tls`).
    pub resolver: SenderAuth,
    /// HTTPS uploads (the MTA-STS client: web PKI + `[smtp] mta_sts_ca`).
    pub https: std::sync::Arc<crate::mta_sts::MtaSts>,
    /// `organization-name` (the host name).
    pub organization: String,
    /// One run at a time (the daily task and `caliopen tlsrpt send`).
    pub running: tokio::sync::Mutex<()>,
}

impl Reporter {
    /// Reports every recorded day before `today` (and `today` too when
    /// `include_today`): one report per domain and URI. A day's records go
    /// once every URI of theirs had the report (or they publish none).
    pub async fn run(
        &self,
        svc: &crate::delivery::MailService,
        today: u32,
        include_today: bool,
    ) -> Vec<Sent> {
        let _one = self.running.lock().await;
        let mut out = Vec::new();
        for day in self.reports.days() {
            if day > today || (day == today && !include_today) {
                continue;
            }
            let stale = today.saturating_sub(day) > KEEP_DAYS;
            for (domain, rec) in self.reports.day(day) {
                // Today's report is a preview: its record stays, and the
                // whole day is reported once it is over.
                if day == today {
                    let mut preview = rec.clone();
                    preview.done.clear();
                    preview.report_id = None;
                    // Its outcomes are in `out`; nothing is kept of it.
                    let _ = self.report(svc, day, &domain, &preview, &mut out).await;
                    continue;
                }
                match self.report(svc, day, &domain, &rec, &mut out).await {
                    Ok(()) => self.reports.forget(day, &domain),
                    Err(_) if stale => self.reports.forget(day, &domain),
                    Err(progress) => self.reports.progress(day, &domain, progress),
                }
            }
        }
        out
    }

    /// One domain's report of one day: `Ok` when nothing is left to do,
    /// else the report id and the URIs that have it.
    async fn report(
        &self,
        svc: &crate::delivery::MailService,
        day: u32,
        domain: &str,
        rec: &DayRecord,
        out: &mut Vec<Sent>,
    ) -> Result<(), (String, Vec<String>)> {
        let date = time::OffsetDateTime::from_unix_timestamp(i64::from(day) * 86_400)
            .map(|t| t.date().to_string())
            .unwrap_or_default();
        let mut said = |uri: &str, outcome: String| {
            out.push(Sent {
                day: date.clone(),
                domain: domain.to_owned(),
                uri: uri.to_owned(),
                outcome,
            })
        };
        let name = format!("_smtp._tls.{domain}");
        let rua = match self.resolver.lookup(&name, LookupType::Txt).await {
            // More than one TLSRPTv1 record is no record (RFC 8460 §3).
            Ok(txts) => {
                let mut found = txts.iter().filter_map(|t| parse_record(t));
                match (found.next(), found.next()) {
                    (Some(r), None) => Some(r),
                    _ => None,
                }
            }
            Err(e) => {
                said("", format!("DNS: {e}"));
                return Err((rec.report_id.clone().unwrap_or_default(), rec.done.clone()));
            }
        };
        let Some(rua) = rua else {
            said("", "no-record".into());
            return Ok(());
        };
        let primary = svc.primary_domain().to_owned();
        let contact = format!("postmaster@{primary}");
        let report_id = rec.report_id.clone().unwrap_or_else(|| {
            let mut id = [0u8; 8];
            let _ = aws_lc_rs::rand::fill(&mut id);
            format!(
                "{}{}@{}",
                date.replace('-', ""),
                hex::encode(id),
                self.organization
            )
        });
        let rec_json = serde_json::to_value(rec).unwrap_or_default();
        let json = report_json(
            day,
            domain,
            &self.organization,
            &contact,
            &report_id,
            &rec_json,
        );
        let body = serde_json::to_vec(&json).unwrap_or_default();
        let gz = gzip(&body);
        let mut done = rec.done.clone();
        let mut all = true;
        for uri in rua {
            if done.contains(&uri) {
                continue;
            }
            let r = if uri.to_ascii_lowercase().starts_with("https://") {
                tokio::time::timeout(POST_TIMEOUT, self.https.post_report(&uri, &gz))
                    .await
                    .unwrap_or_else(|_| Err(HttpsError::Timeout(format!("posting to {uri}"))))
                    .map(|_| "sent".to_owned())
                    .map_err(|e| e.to_string())
            } else {
                self.mail(svc, &uri[7..], domain, &report_id, day, &gz)
                    .await
                    .map(|_| "queued".to_owned())
            };
            match r {
                Ok(o) => {
                    said(&uri, o);
                    done.push(uri);
                }
                Err(e) => {
                    tracing::warn!(%domain, %uri, error = %e, "TLS report not delivered");
                    all = false;
                    said(&uri, e)
                }
            }
        }
        if all {
            Ok(())
        } else {
            Err((report_id, done))
        }
    }

    /// The report as mail to `to` (RFC 8460 §5.3), signed and queued.
    async fn mail(
        &self,
        svc: &crate::delivery::MailService,
        to: &str,
        domain: &str,
        report_id: &str,
        day: u32,
        gz: &[u8],
    ) -> Result<(), String> {
        let to = to.split('?').next().unwrap_or_default();
        if to
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | '"'))
            || to.parse::<lettre::Address>().is_err()
        {
            return Err(format!("{to:?} is not an address"));
        }
        let primary = svc.primary_domain().to_owned();
        let from = format!("{SENDER_LOCAL}{primary}");
        let start = i64::from(day) * 86_400;
        let mut boundary = [0u8; 12];
        let _ = aws_lc_rs::rand::fill(&mut boundary);
        let boundary = format!("tlsrpt-{}", hex::encode(boundary));
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let b64 = {
            use base64::Engine;
            let s = base64::engine::general_purpose::STANDARD.encode(gz);
            s.as_bytes()
                .chunks(76)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("\r\n")
        };
        let org = &self.organization;
        let msg = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nDate: {date}\r\n\
             Subject: Report Domain: {domain} Submitter: {org} Report-ID: <{report_id}>\r\n\
             Message-ID: <{report_id}>\r\nTLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {org}\r\n\
             Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             SMTP TLS report (RFC 8460) from {org} for {domain}.\r\n\r\n\
             --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"{org}!{domain}!{start}!{end}!{id}.json.gz\"\r\n\r\n\
             {b64}\r\n--{boundary}--\r\n",
            end = start + 86_399,
            // RFC 8460 §5.1: the unique id is letters and digits.
            id = report_id
                .split('@')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>(),
        );
        svc.send_signed_out(&from, vec![to.to_owned()], msg.as_bytes())
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_keep_their_uris() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:a@b.test,https://r.test/x"),
            Some(vec!["mailto:a@b.test".into(), "https://r.test/x".into()])
        );
        assert_eq!(parse_record("v=TLSRPTv1;rua=http://r.test/x"), None);
        assert_eq!(parse_record("v=spf1 -all"), None);
        assert_eq!(parse_record("v=TLSRPTv1"), None);
    }

    #[test]
    fn failures_are_told_apart_by_their_tls_error() {
        let f = Failure::of_tls_error;
        assert_eq!(
            f("invalid peer certificate: UnknownIssuer"),
            Failure::NotTrusted
        );
        assert_eq!(
            f("invalid peer certificate: NotValidForName"),
            Failure::HostMismatch
        );
        assert_eq!(f("invalid peer certificate: Expired"), Failure::Expired);
        assert_eq!(
            f("invalid peer certificate: certificate expired: verification time 1, but certificate is not valid after 0"),
            Failure::Expired
        );
        assert_eq!(
            f("STARTTLS is not supported by the server"),
            Failure::StarttlsNotSupported
        );
    }

    #[test]
    fn sessions_add_up_per_day_domain_and_policy() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = sled::open(dir.path()).expect("db");
        let r = TlsReports::open(&db).expect("open");
        let sts = StsFacts {
            lines: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx: vec!["mx.b.test".into()],
        };
        let t = 20_000 * 86_400 + 100;
        r.record(t, "B.test", None, &Outcome::Success);
        r.record(t, "b.test", None, &Outcome::Success);
        let fail = Outcome::Failure {
            result: Failure::NotTrusted,
            mx: "mx.b.test".into(),
            ip: Some("127.0.0.1".parse().expect("ip")),
            info: None,
        };
        r.record(t, "b.test", Some(&sts), &fail);
        r.record(t, "b.test", Some(&sts), &fail);
        r.record(t + 86_400, "c.test", None, &Outcome::Success);
        assert_eq!(r.days(), vec![20_000, 20_001]);
        let day = r.day(20_000);
        assert_eq!(day.len(), 1);
        let v = serde_json::to_value(&day[0].1).expect("json");
        let j = report_json(
            20_000,
            "b.test",
            "mx.a.test",
            "postmaster@a.test",
            "id1",
            &v,
        );
        assert_eq!(j["date-range"]["start-datetime"], "2024-10-04T00:00:00Z");
        assert_eq!(j["date-range"]["end-datetime"], "2024-10-04T23:59:59Z");
        let p = j["policies"].as_array().expect("policies");
        assert_eq!(p.len(), 2);
        let none = p
            .iter()
            .find(|p| p["policy"]["policy-type"] == "no-policy-found")
            .expect("none");
        assert_eq!(none["summary"]["total-successful-session-count"], 2);
        assert_eq!(none["summary"]["total-failure-session-count"], 0);
        let s = p
            .iter()
            .find(|p| p["policy"]["policy-type"] == "sts")
            .expect("sts");
        assert_eq!(s["policy"]["mx-host"][0], "mx.b.test");
        assert_eq!(s["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(s["summary"]["total-failure-session-count"], 2);
        let d = &s["failure-details"][0];
        assert_eq!(d["result-type"], "certificate-not-trusted");
        assert_eq!(d["receiving-mx-hostname"], "mx.b.test");
        assert_eq!(d["receiving-ip"], "127.0.0.1");
        assert_eq!(d["failed-session-count"], 2);
        // A report that reached one URI of two keeps its id and that URI.
        r.progress(
            20_000,
            "b.test",
            ("id1".into(), vec!["https://r.test/x".into()]),
        );
        let kept = &r.day(20_000)[0].1;
        assert_eq!(kept.report_id.as_deref(), Some("id1"));
        assert_eq!(kept.done, vec!["https://r.test/x".to_owned()]);
        assert_eq!(
            kept.policies, day[0].1.policies,
            "the counts stay as they were"
        );
        r.forget(20_000, "b.test");
        assert_eq!(r.days(), vec![20_001]);
    }
}

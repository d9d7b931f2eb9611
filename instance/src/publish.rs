//! What an operator publishes for the instance's domains, derived from the
//! configuration and the DKIM keys: the DNS records (`caliopen dns`), their
//! check against a resolver (`caliopen dns check`), the MTA-STS policy
//! (RFC 8461) and the mail-client autoconfiguration documents (Thunderbird's
//! `config-v1.1.xml`, Microsoft's `autodiscover.xml`), which the web
//! listener serves.

use crate::config::{Config, MtaStsMode};
use crate::dkim::DkimKeys;
use crate::sender_auth::{LookupType, SenderAuth};
use serde::Serialize;

/// One DNS record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The owner name, without the final dot.
    pub name: String,
    /// `MX`, `TXT`, `SRV` or `CNAME`.
    #[serde(rename = "type")]
    pub rtype: &'static str,
    /// The value in presentation form (names with their final dot; a TXT
    /// value as one string, to be split in 255-byte strings by the zone).
    pub value: String,
    /// Why it is there (not published; shown by `caliopen dns`).
    #[serde(skip)]
    pub why: &'static str,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

/// The MTA-STS policy served at `https://mta-sts.<domain>/.well-known/mta-sts.txt`
/// (one for every domain: they share the MX); `None` when off.
pub fn mta_sts_policy(config: &Config) -> Option<String> {
    let mode = match config.smtp.mta_sts {
        MtaStsMode::Off => return None,
        // Withdrawing: senders replace their cached policy with this one.
        MtaStsMode::None => {
            return Some("version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n".into())
        }
        MtaStsMode::Testing => "testing",
        MtaStsMode::Enforce => "enforce",
    };
    Some(format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {}\r\nmax_age: 604800\r\n",
        config.hostname.trim_end_matches('.').to_ascii_lowercase()
    ))
}

/// The policy's `id` (RFC 8461 §3.1): it changes whenever the policy does.
pub fn mta_sts_id(policy: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, policy.as_bytes());
    hex::encode(&d.as_ref()[..10])
}

fn spf(config: &Config) -> String {
    match config
        .smtp
        .relay
        .as_deref()
        .and_then(crate::config::parse_host_port)
    {
        Some((host, _)) => match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => format!("v=spf1 ip4:{ip} -all"),
            Ok(std::net::IpAddr::V6(ip)) => format!("v=spf1 ip6:{ip} -all"),
            Err(_) => format!("v=spf1 a:{} -all", host.trim_end_matches('.')),
        },
        None => "v=spf1 mx -all".into(),
    }
}

/// Every record to publish for every domain of `config` at `now`.
pub fn records(config: &Config, keys: Option<&DkimKeys>, now: i64) -> Vec<Record> {
    let host = fqdn(&config.hostname);
    let policy = mta_sts_policy(config).filter(|_| config.web.listen.is_some());
    let mut out = Vec::new();
    for d in &config.domains {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        let mut add = |name: String, rtype: &'static str, value: String, why: &'static str| {
            out.push(Record {
                name,
                rtype,
                value,
                why,
            })
        };
        add(
            d.clone(),
            "MX",
            format!("10 {host}"),
            "mail for the domain goes to this instance",
        );
        add(
            d.clone(),
            "TXT",
            spf(config),
            "SPF: only this instance (or its relay) sends the domain's mail",
        );
        if let Some(k) = keys {
            for r in k.records(&d, now) {
                add(
                    r.name,
                    "TXT",
                    r.value,
                    "DKIM: the key that signs the domain's mail",
                );
            }
        }
        add(
            format!("_dmarc.{d}"),
            "TXT",
            "v=DMARC1; p=reject".into(),
            "DMARC: receivers refuse mail From: the domain that fails SPF and DKIM",
        );
        if let Some(p) = &policy {
            add(
                format!("_mta-sts.{d}"),
                "TXT",
                format!("v=STSv1; id={}", mta_sts_id(p)),
                "MTA-STS: senders must use TLS to the MX",
            );
            add(
                format!("mta-sts.{d}"),
                "CNAME",
                host.clone(),
                "MTA-STS: the policy is served by the web listener (HTTPS on port 443)",
            );
        }
        add(
            format!("_smtp._tls.{d}"),
            "TXT",
            format!("v=TLSRPTv1; rua=mailto:postmaster@{d}"),
            "TLS-RPT: where senders report TLS failures",
        );
        add(
            format!("_submission._tcp.{d}"),
            "SRV",
            format!("0 1 {} {host}", config.smtp.submission.port()),
            "RFC 6186: mail clients find submission (STARTTLS)",
        );
        let (imap, imaps) = match config.imap.listen {
            Some(a) if config.imap.implicit_tls => {
                ("0 0 0 .".to_owned(), format!("0 1 {} {host}", a.port()))
            }
            Some(a) => (format!("0 1 {} {host}", a.port()), "0 0 0 .".to_owned()),
            None => ("0 0 0 .".to_owned(), "0 0 0 .".to_owned()),
        };
        add(
            format!("_imap._tcp.{d}"),
            "SRV",
            imap,
            "RFC 6186: mail clients find IMAP with STARTTLS (\"0 0 0 .\": none)",
        );
        add(
            format!("_imaps._tcp.{d}"),
            "SRV",
            imaps,
            "RFC 6186: mail clients find IMAP over TLS (\"0 0 0 .\": none)",
        );
        if config.web.listen.is_some() {
            add(
                format!("autoconfig.{d}"),
                "CNAME",
                host.clone(),
                "Thunderbird and others configure themselves from the web listener",
            );
            add(
                format!("autodiscover.{d}"),
                "CNAME",
                host.clone(),
                "Outlook configures itself from the web listener",
            );
        }
    }
    out
}

/// Splits a TXT value into quoted 255-byte strings, as a zone file holds it.
pub fn zone_txt(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c).replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `caliopen dns check` found for one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Found {
    /// Published as printed.
    Ok,
    /// Nothing of that type at that name.
    Missing,
    /// Something else is published there (shown).
    Different,
    /// The lookup failed (timeout, SERVFAIL): unknown.
    Error,
}

/// One record and what the resolver has.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    /// The record expected.
    #[serde(flatten)]
    pub record: Record,
    /// The verdict.
    pub found: Found,
    /// What the resolver answered (values), or the error.
    pub published: Vec<String>,
}

fn normalise(rtype: &str, v: &str) -> String {
    match rtype {
        // Whitespace between tags does not matter to DKIM, DMARC, SPF.
        "TXT" => v.split_whitespace().collect::<Vec<_>>().join(" "),
        _ => v.trim().to_ascii_lowercase(),
    }
}

/// SPF, DMARC, MTA-STS and TLS-RPT share their names with other TXT
/// records: only the one of the same kind is compared.
fn txt_kind(v: &str) -> &str {
    let v = v.trim_start();
    for k in ["v=spf1", "v=DMARC1", "v=STSv1", "v=TLSRPTv1", "v=DKIM1"] {
        if v.len() >= k.len() && v[..k.len()].eq_ignore_ascii_case(k) {
            return k;
        }
    }
    ""
}

/// Asks `resolver` for every record (all at once: a slow resolver costs
/// one timeout, not one per record) and compares.
pub async fn check(records: &[Record], resolver: &SenderAuth) -> Vec<CheckLine> {
    futures_util::future::join_all(records.iter().map(|r| check_one(r, resolver))).await
}

async fn check_one(r: &Record, resolver: &SenderAuth) -> CheckLine {
    let t = match r.rtype {
        "MX" => LookupType::Mx,
        "SRV" => LookupType::Srv,
        "CNAME" => LookupType::Cname,
        _ => LookupType::Txt,
    };
    let (found, published) = match resolver.lookup(&r.name, t).await {
        Err(e) => (Found::Error, vec![e]),
        Ok(values) => {
            let want = normalise(r.rtype, &r.value);
            let same_kind: Vec<&String> = if r.rtype == "TXT" {
                values
                    .iter()
                    .filter(|v| txt_kind(v) == txt_kind(&r.value))
                    .collect()
            } else {
                values.iter().collect()
            };
            let found = if same_kind.iter().any(|v| normalise(r.rtype, v) == want) {
                Found::Ok
            } else if same_kind.is_empty() {
                Found::Missing
            } else {
                Found::Different
            };
            (found, values)
        }
    };
    CheckLine {
        record: r.clone(),
        found,
        published,
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The IMAP endpoint clients are told: (port, TLS from the start).
fn imap_endpoint(config: &Config) -> Option<(u16, bool)> {
    config
        .imap
        .listen
        .map(|a| (a.port(), config.imap.implicit_tls))
}

/// Thunderbird's autoconfiguration (`config-v1.1.xml`): IMAP and
/// submission on the instance's host name, the whole address as login.
pub fn autoconfig_xml(config: &Config) -> String {
    let host = xml_escape(config.hostname.trim_end_matches('.'));
    let primary = xml_escape(&config.domains[0]);
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n",
    );
    x.push_str(&format!("  <emailProvider id=\"{primary}\">\n"));
    for d in &config.domains {
        x.push_str(&format!("    <domain>{}</domain>\n", xml_escape(d)));
    }
    x.push_str(&format!(
        "    <displayName>{primary}</displayName>\n    <displayShortName>{primary}</displayShortName>\n"
    ));
    if let Some((port, tls)) = imap_endpoint(config) {
        x.push_str(&format!(
            "    <incomingServer type=\"imap\">\n      <hostname>{host}</hostname>\n      <port>{port}</port>\n      <socketType>{}</socketType>\n      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n    </incomingServer>\n",
            if tls { "SSL" } else { "STARTTLS" }
        ));
    }
    x.push_str(&format!(
        "    <outgoingServer type=\"smtp\">\n      <hostname>{host}</hostname>\n      <port>{}</port>\n      <socketType>STARTTLS</socketType>\n      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n    </outgoingServer>\n",
        config.smtp.submission.port()
    ));
    x.push_str("  </emailProvider>\n</clientConfig>\n");
    x
}

/// The address in an Outlook autodiscover request body, when it is one of
/// this instance's domains.
pub fn autodiscover_address(config: &Config, body: &str) -> Option<String> {
    let start = body.find("<EMailAddress>")? + "<EMailAddress>".len();
    let len = body[start..].find("</EMailAddress>")?;
    let addr = body[start..start + len].trim();
    let (local, domain) = addr.rsplit_once('@')?;
    let ok_local = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    let domain = domain.to_ascii_lowercase();
    (ok_local
        && config
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&domain)))
    .then(|| format!("{local}@{domain}"))
}

/// Microsoft's autodiscover answer (the POX "outlook" schema) for `email`.
pub fn autodiscover_xml(config: &Config, email: Option<&str>) -> String {
    let host = xml_escape(config.hostname.trim_end_matches('.'));
    let login = email
        .map(|e| format!("        <LoginName>{}</LoginName>\n", xml_escape(e)))
        .unwrap_or_default();
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n",
    );
    if let Some((port, tls)) = imap_endpoint(config) {
        x.push_str(&format!(
            "      <Protocol>\n        <Type>IMAP</Type>\n        <Server>{host}</Server>\n        <Port>{port}</Port>\n{login}        <SPA>off</SPA>\n        <Encryption>{}</Encryption>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
            if tls { "SSL" } else { "TLS" }
        ));
    }
    x.push_str(&format!(
        "      <Protocol>\n        <Type>SMTP</Type>\n        <Server>{host}</Server>\n        <Port>{}</Port>\n{login}        <SPA>off</SPA>\n        <Encryption>TLS</Encryption>\n        <AuthRequired>on</AuthRequired>\n        <UsePOPAuth>off</UsePOPAuth>\n        <SMTPLast>off</SMTPLast>\n      </Protocol>\n",
        config.smtp.submission.port()
    ));
    x.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    x
}

/// The documents the web listener serves to mail servers and mail
/// clients without a login, made once from the configuration.
#[derive(Debug)]
pub struct WellKnown {
    /// The MTA-STS policy (none: `[smtp] mta_sts = "none"`).
    pub mta_sts: Option<String>,
    /// Thunderbird's autoconfiguration.
    pub autoconfig: String,
    config: Config,
}

impl WellKnown {
    /// The documents for `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            mta_sts: mta_sts_policy(config),
            autoconfig: autoconfig_xml(config),
            config: config.clone(),
        }
    }

    /// The autodiscover answer to a request body.
    pub fn autodiscover(&self, body: &str) -> String {
        autodiscover_xml(
            &self.config,
            autodiscover_address(&self.config, body).as_deref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "domains = [\"example.org\", \"example.net\"]\nhostname = \"mx.example.org\"\n[smtp]\nlisten = \"0.0.0.0:25\"\nsubmission = \"0.0.0.0:587\"\n{extra}"
        ))
        .expect("config")
    }

    #[test]
    fn every_domain_gets_its_records() {
        let c = config("[imap]\nlisten = \"0.0.0.0:993\"\nimplicit_tls = true\n[web]\nlisten = \"0.0.0.0:443\"\n");
        let rs = records(&c, None, 0);
        let find = |n: &str, t: &str| {
            rs.iter()
                .filter(|r| r.name == n && r.rtype == t)
                .map(|r| r.value.as_str())
                .collect::<Vec<_>>()
        };
        for d in ["example.org", "example.net"] {
            assert_eq!(find(d, "MX"), vec!["10 mx.example.org."]);
            assert_eq!(find(d, "TXT"), vec!["v=spf1 mx -all"]);
            assert_eq!(
                find(&format!("_dmarc.{d}"), "TXT"),
                vec!["v=DMARC1; p=reject"]
            );
            assert_eq!(
                find(&format!("_submission._tcp.{d}"), "SRV"),
                vec!["0 1 587 mx.example.org."]
            );
            assert_eq!(find(&format!("_imap._tcp.{d}"), "SRV"), vec!["0 0 0 ."]);
            assert_eq!(
                find(&format!("_imaps._tcp.{d}"), "SRV"),
                vec!["0 1 993 mx.example.org."]
            );
            assert_eq!(
                find(&format!("mta-sts.{d}"), "CNAME"),
                vec!["mx.example.org."]
            );
            assert_eq!(
                find(&format!("autoconfig.{d}"), "CNAME"),
                vec!["mx.example.org."]
            );
            let sts = find(&format!("_mta-sts.{d}"), "TXT");
            assert!(sts[0].starts_with("v=STSv1; id="), "{sts:?}");
            assert_eq!(
                find(&format!("_smtp._tls.{d}"), "TXT"),
                vec![format!("v=TLSRPTv1; rua=mailto:postmaster@{d}").as_str()]
            );
        }
        // Without a web listener: no MTA-STS and no autoconfig names.
        let c = config("");
        let rs = records(&c, None, 0);
        assert!(!rs
            .iter()
            .any(|r| r.name.starts_with("mta-sts.") || r.name.starts_with("autoconfig.")));
        // With a relay, SPF names it.
        let c = config("relay = \"192.0.2.7:587\"\n");
        assert!(records(&c, None, 0)
            .iter()
            .any(|r| r.value == "v=spf1 ip4:192.0.2.7 -all"));
        let c = config("relay = \"smtp.relay.example:587\"\n");
        assert!(records(&c, None, 0)
            .iter()
            .any(|r| r.value == "v=spf1 a:smtp.relay.example -all"));
    }

    #[test]
    fn the_policy_id_follows_the_policy() {
        let a = mta_sts_policy(&config("")).expect("policy");
        assert!(
            a.contains("mode: testing\r\n") && a.contains("mx: mx.example.org\r\n"),
            "{a}"
        );
        let b = mta_sts_policy(&config("mta_sts = \"enforce\"\n")).expect("policy");
        assert_ne!(mta_sts_id(&a), mta_sts_id(&b));
        assert_eq!(mta_sts_id(&a), mta_sts_id(&a.clone()));
        assert!(mta_sts_id(&a).bytes().all(|c| c.is_ascii_alphanumeric()));
        let none = mta_sts_policy(&config("mta_sts = \"none\"\n")).expect("withdrawal policy");
        assert!(
            none.contains("mode: none\r\n") && !none.contains("mx:"),
            "{none}"
        );
        assert_ne!(mta_sts_id(&none), mta_sts_id(&a));
        assert_eq!(mta_sts_policy(&config("mta_sts = \"off\"\n")), None);
    }

    #[test]
    fn txt_values_split_at_255_bytes() {
        let long = "p=".to_owned() + &"A".repeat(400);
        let z = zone_txt(&long);
        assert_eq!(z.matches('"').count(), 4, "{z}");
        assert!(z.starts_with("\"p=AAA"));
    }

    #[test]
    fn autodiscover_takes_only_our_addresses() {
        let c = config("[imap]\nlisten = \"0.0.0.0:143\"\n");
        let body = "<Autodiscover><Request><EMailAddress>Alice@Example.NET</EMailAddress></Request></Autodiscover>";
        assert_eq!(
            autodiscover_address(&c, body).as_deref(),
            Some("Alice@example.net")
        );
        assert_eq!(
            autodiscover_address(&c, "<EMailAddress>a@evil.test</EMailAddress>"),
            None
        );
        assert_eq!(
            autodiscover_address(&c, "<EMailAddress><x>@example.org</EMailAddress>"),
            None
        );
        let x = autodiscover_xml(&c, Some("alice@example.net"));
        assert!(
            x.contains("<Type>IMAP</Type>") && x.contains("<Port>143</Port>"),
            "{x}"
        );
        assert!(
            x.contains("<LoginName>alice@example.net</LoginName>"),
            "{x}"
        );
        let a = autoconfig_xml(&c);
        assert!(a.contains("<domain>example.net</domain>"), "{a}");
        assert!(a.contains("<socketType>STARTTLS</socketType>"), "{a}");
    }
}

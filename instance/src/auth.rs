//! Sender authentication of inbound mail (DKIM, SPF, DMARC with mail-auth)
//! and the DNS resolver the instance uses (also for MX lookups of direct
//! delivery). DNS is off unless `[dns] enabled = true`: a disabled or
//! failing resolver is never an error — the results are then "temperror"
//! or absent, and the privacy index reads them as "not checked".

pub use crate::mail::Verdict;
use crate::privacy::AuthResult;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, Parameters, ResolverCache,
    SpfResult, Txt,
};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the checks found, as recorded with the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// DKIM (the best of the signatures).
    pub dkim: Option<Verdict>,
    /// SPF of the MAIL FROM identity.
    pub spf: Option<Verdict>,
    /// DMARC of the From: domain.
    pub dmarc: Option<Verdict>,
    /// The From: domain's DMARC policy, when DMARC failed.
    pub dmarc_policy: Option<DmarcPolicy>,
}

/// What a domain's DMARC record asks receivers to do with mail that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// `p=none`: only report.
    None,
    /// `p=quarantine`: treat as suspicious (junk).
    Quarantine,
    /// `p=reject`: refuse it.
    Reject,
}

/// Reads a recorded verdict for the privacy index.
pub fn auth_result(v: Option<Verdict>) -> Option<AuthResult> {
    v.map(|v| match v {
        Verdict::Pass => AuthResult::Pass,
        Verdict::Fail | Verdict::SoftFail | Verdict::PermError => AuthResult::Fail,
        Verdict::None => AuthResult::None,
        Verdict::Neutral | Verdict::TempError => AuthResult::Unchecked,
    })
}

/// A TXT cache, also used to hold keys given by hand (tests, pinned keys).
#[derive(Default)]
pub struct TxtCache {
    map: Mutex<HashMap<Box<str>, (Txt, std::time::Instant)>>,
}

impl TxtCache {
    /// Adds a DKIM key record (`v=DKIM1; k=…; p=…`) for `selector._domainkey.domain`.
    pub fn add_dkim_key(&self, name: &str, record: &str) -> Result<(), String> {
        let key = mail_auth::common::verify::DomainKey::parse(record.as_bytes())
            .map_err(|e| format!("DKIM key record for {name}: {e}"))?;
        let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                fqdn.into_boxed_str(),
                (
                    Txt::from(key),
                    std::time::Instant::now() + Duration::from_secs(10 * 365 * 86400),
                ),
            );
        Ok(())
    }
}

impl TxtCache {
    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }
}

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.get(name)
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .map(|(t, _)| t)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: std::time::Instant) {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() > 50_000 {
            let now = std::time::Instant::now();
            m.retain(|_, (_, u)| *u > now);
        }
        m.insert(key, (value, valid_until));
    }
}

/// The instance's resolver and sender checks.
#[derive(Clone)]
pub struct SenderAuth {
    resolver: MessageAuthenticator,
    enabled: bool,
    timeout: Duration,
    txt: Arc<TxtCache>,
}

impl std::fmt::Debug for SenderAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderAuth")
            .field("enabled", &self.enabled)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The resolver could not be set up (a local failure: its configuration
/// or the system's `/etc/resolv.conf`).
#[derive(Debug, thiserror::Error)]
#[error("resolver: {0}")]
pub struct ResolverError(#[source] mail_auth::hickory_resolver::net::NetError);

impl SenderAuth {
    /// A resolver that never sends a query: checks report "temperror"
    /// unless the TXT cache already holds the answer (pinned keys).
    pub fn offline() -> Result<Self, ResolverError> {
        Ok(Self {
            resolver: MessageAuthenticator::new(
                ResolverConfig::from_name_servers(Vec::new()),
                ResolverOpts::default(),
            )
            .map_err(ResolverError)?,
            enabled: false,
            timeout: Duration::from_secs(1),
            txt: Arc::new(TxtCache::default()),
        })
    }

    /// The system resolver (`/etc/resolv.conf`), or the given name servers.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, ResolverError> {
        let resolver = if servers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let ns = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut opts = ResolverOpts::default();
            opts.timeout = timeout;
            opts.attempts = 2;
            MessageAuthenticator::new(ResolverConfig::from_name_servers(ns), opts)
        }
        .map_err(ResolverError)?;
        Ok(Self {
            resolver,
            enabled: true,
            timeout,
            txt: Arc::new(TxtCache::default()),
        })
    }

    /// True when DNS lookups are made.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The TXT cache (to pin keys).
    pub fn txt_cache(&self) -> &TxtCache {
        &self.txt
    }

    /// DKIM only, against the cache first (no other check).
    pub async fn dkim(&self, raw: &[u8]) -> Option<Verdict> {
        let msg = parse_authenticated(raw)?;
        if msg.dkim_headers.is_empty() {
            return Some(Verdict::None);
        }
        let out = tokio::time::timeout(
            self.timeout,
            self.resolver
                .verify_dkim(Parameters::new(&msg).with_txt_cache(self.txt.as_ref())),
        )
        .await
        .ok()?;
        Some(best_dkim(out.iter().map(|o| o.result())))
    }

    /// Each DKIM signature's result in the order of the message's
    /// `DKIM-Signature` fields, against the cache first.
    pub async fn dkim_each(&self, raw: &[u8]) -> Vec<Verdict> {
        let Some(msg) = parse_authenticated(raw) else {
            return Vec::new();
        };
        let out = match tokio::time::timeout(
            self.timeout,
            self.resolver
                .verify_dkim(Parameters::new(&msg).with_txt_cache(self.txt.as_ref())),
        )
        .await
        {
            Ok(out) => out,
            Err(_) => return vec![Verdict::TempError; msg.dkim_headers.len()],
        };
        out.iter()
            .map(|o| best_dkim(std::iter::once(o.result())))
            .collect()
    }

    /// DKIM, SPF (MAIL FROM, or HELO for the null sender) and DMARC of one
    /// inbound message from `ip`. Bounded by the configured timeout.
    pub async fn check(
        &self,
        raw: &[u8],
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        host: &str,
    ) -> Verdicts {
        if !self.enabled {
            if self.txt.is_empty() {
                return Verdicts::default();
            }
            return Verdicts {
                dkim: self
                    .dkim(raw)
                    .await
                    .filter(|d| matches!(d, Verdict::Pass | Verdict::Fail)),
                ..Default::default()
            };
        }
        let Some(msg) = parse_authenticated(raw) else {
            return Verdicts::default();
        };
        let run = async {
            let dkim = self
                .resolver
                .verify_dkim(Parameters::new(&msg).with_txt_cache(self.txt.as_ref()))
                .await;
            let spf_params = if mail_from.is_empty() {
                mail_auth::spf::verify::SpfParameters::verify_ehlo(ip, helo, host)
            } else {
                mail_auth::spf::verify::SpfParameters::verify_mail_from(ip, helo, host, mail_from)
            };
            let spf = self
                .resolver
                .verify_spf(Parameters::new(spf_params).with_txt_cache(self.txt.as_ref()))
                .await;
            let from_domain = mail_from
                .rsplit_once('@')
                .map_or(helo, |(_, d)| d)
                .to_ascii_lowercase();
            let dmarc = self
                .resolver
                .verify_dmarc(
                    Parameters::new(mail_auth::dmarc::verify::DmarcParameters::new(
                        &msg,
                        &dkim,
                        &from_domain,
                        &spf,
                    ))
                    .with_txt_cache(self.txt.as_ref()),
                )
                .await;
            let dkim_v = if msg.dkim_headers.is_empty() {
                Verdict::None
            } else {
                best_dkim(dkim.iter().map(|o| o.result()))
            };
            let spf_v = match spf.result() {
                SpfResult::Pass => Verdict::Pass,
                SpfResult::Fail => Verdict::Fail,
                SpfResult::SoftFail => Verdict::SoftFail,
                SpfResult::Neutral => Verdict::Neutral,
                SpfResult::TempError => Verdict::TempError,
                SpfResult::PermError => Verdict::PermError,
                SpfResult::None => Verdict::None,
            };
            let dmarc_v = match (dmarc.dkim_result(), dmarc.spf_result()) {
                // RFC 7489 §4.2: a pass of either aligned identifier passes.
                (DmarcResult::Pass, _) | (_, DmarcResult::Pass) => Verdict::Pass,
                (DmarcResult::None, DmarcResult::None) => Verdict::None,
                (DmarcResult::TempError(_), _) | (_, DmarcResult::TempError(_)) => {
                    Verdict::TempError
                }
                (DmarcResult::PermError(_), _) | (_, DmarcResult::PermError(_)) => {
                    Verdict::PermError
                }
                _ => Verdict::Fail,
            };
            let dmarc_policy = (dmarc_v == Verdict::Fail).then(|| match dmarc.policy() {
                mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
                mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
                _ => DmarcPolicy::None,
            });
            Verdicts {
                dkim: Some(dkim_v),
                spf: Some(spf_v),
                dmarc: Some(dmarc_v),
                dmarc_policy,
            }
        };
        match tokio::time::timeout(self.timeout * 3, run).await {
            Ok(v) => v,
            Err(_) => {
                tracing::info!("sender checks timed out: recorded as temperror");
                Verdicts {
                    dkim: Some(Verdict::TempError),
                    spf: Some(Verdict::TempError),
                    dmarc: Some(Verdict::TempError),
                    dmarc_policy: None,
                }
            }
        }
    }

    /// The first of `zones` (DNS blocklists, RFC 5782) that lists `ip`:
    /// an A record in 127.0.0.0/8 for the reversed address under the zone
    /// (127.255.255.0/24 is a list's error code, not a listing). A failed
    /// lookup lists nothing.
    pub async fn blocklisted(&self, ip: IpAddr, zones: &[String]) -> Option<String> {
        if !self.enabled || zones.is_empty() {
            return None;
        }
        let reversed = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(v6) => v6
                .octets()
                .iter()
                .rev()
                .flat_map(|b| [b & 0x0f, b >> 4])
                .map(|n| format!("{n:x}"))
                .collect::<Vec<_>>()
                .join("."),
        };
        for zone in zones {
            let name = format!("{reversed}.{}.", zone.trim_end_matches('.'));
            let r = tokio::time::timeout(
                self.timeout,
                self.resolver.resolver().lookup(
                    name.as_str(),
                    mail_auth::hickory_resolver::proto::rr::RecordType::A,
                ),
            )
            .await;
            if let Ok(Ok(l)) = r {
                let listed = l.answers().iter().any(|rec| match &rec.data {
                    mail_auth::hickory_resolver::proto::rr::RData::A(a) => {
                        let o = a.0.octets();
                        o[0] == 127 && !(o[1] == 255 && o[2] == 255)
                    }
                    _ => false,
                });
                if listed {
                    return Some(zone.clone());
                }
            }
        }
        None
    }

    /// The addresses of `host` through this resolver (never the system's).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if !self.enabled {
            return Err("DNS is disabled ([dns] enabled = false)".into());
        }
        let name = format!("{}.", host.trim_end_matches('.'));
        match tokio::time::timeout(self.timeout * 2, self.resolver.resolver().lookup_ip(name)).await
        {
            Err(_) => Err(format!("address lookup for {host} timed out")),
            Ok(Err(e)) => Err(format!("address lookup for {host}: {e}")),
            Ok(Ok(l)) => Ok(l.iter().take(4).collect()),
        }
    }

    /// The mail exchangers of `domain`, best first (empty when it has none
    /// or DNS is off); RFC 5321 §5.1: no MX record means the domain itself.
    pub async fn mx(&self, domain: &str) -> Result<Vec<String>, String> {
        if !self.enabled {
            return Err("DNS is disabled ([dns] enabled = false)".into());
        }
        let name = format!("{}.", domain.trim_end_matches('.'));
        match tokio::time::timeout(
            self.timeout * 2,
            self.resolver.mx_lookup(
                name.as_str(),
                None::<&mail_auth::common::cache::NoCache<_, _>>,
            ),
        )
        .await
        {
            Err(_) => Err(format!("MX lookup for {domain} timed out")),
            Ok(Ok(set)) => {
                let mut mx: Vec<_> = set.rrset.iter().cloned().collect();
                mx.sort_by_key(|m| m.preference);
                let hosts: Vec<String> = mx
                    .iter()
                    .flat_map(|m| m.exchanges.iter())
                    .map(|h| h.trim_end_matches('.').to_owned())
                    .collect();
                // A null MX (RFC 7505): the domain accepts no mail.
                if hosts.iter().all(String::is_empty) && !hosts.is_empty() {
                    return Err(format!("{domain} accepts no mail (null MX)"));
                }
                Ok(if hosts.is_empty() {
                    vec![domain.to_owned()]
                } else {
                    hosts
                })
            }
            Ok(Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(code))))
                if code != mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain =>
            {
                Ok(vec![domain.to_owned()])
            }
            Ok(Err(e)) => Err(format!("MX lookup for {domain}: {e}")),
        }
    }
}

/// A record type `caliopen dns check` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupType {
    /// MX.
    Mx,
    /// TXT.
    Txt,
    /// SRV.
    Srv,
    /// CNAME.
    Cname,
}

impl SenderAuth {
    /// The records of `name` of type `t` through this resolver, in
    /// presentation form (`10 mx.example.org.`, TXT strings joined,
    /// `0 1 587 mx.example.org.`, `mx.example.org.`); empty when the name
    /// has none or does not exist.
    pub async fn lookup(&self, name: &str, t: LookupType) -> Result<Vec<String>, String> {
        use mail_auth::hickory_resolver::proto::rr::{RData, RecordType};
        if !self.enabled {
            return Err("DNS is disabled ([dns] enabled = false)".into());
        }
        let rtype = match t {
            LookupType::Mx => RecordType::MX,
            LookupType::Txt => RecordType::TXT,
            LookupType::Srv => RecordType::SRV,
            LookupType::Cname => RecordType::CNAME,
        };
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let lookup = match tokio::time::timeout(
            self.timeout * 2,
            self.resolver.resolver().lookup(fqdn.as_str(), rtype),
        )
        .await
        {
            Err(_) => return Err(format!("{rtype} lookup for {name} timed out")),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Ok(Err(e)) => return Err(format!("{rtype} lookup for {name}: {e}")),
            Ok(Ok(l)) => l,
        };
        let lower = |n: &dyn std::fmt::Display| {
            let s = n.to_string().to_ascii_lowercase();
            if s.ends_with('.') {
                s
            } else {
                format!("{s}.")
            }
        };
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match (&r.data, t) {
                (RData::MX(mx), LookupType::Mx) => {
                    Some(format!("{} {}", mx.preference, lower(&mx.exchange)))
                }
                (RData::TXT(txt), LookupType::Txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<String>(),
                ),
                (RData::SRV(srv), LookupType::Srv) => Some(format!(
                    "{} {} {} {}",
                    srv.priority,
                    srv.weight,
                    srv.port,
                    lower(&srv.target)
                )),
                (RData::CNAME(c), LookupType::Cname) => Some(lower(&c.0)),
                _ => None,
            })
            .collect())
    }
}

/// mail-auth's parser, with a panic read as "not parsable" (see
/// `privacy::parse_guarded`).
fn parse_authenticated(raw: &[u8]) -> Option<AuthenticatedMessage<'_>> {
    std::panic::catch_unwind(|| AuthenticatedMessage::parse(raw)).unwrap_or_else(|_| {
        tracing::warn!(
            size = raw.len(),
            "mail-auth's parser panicked; no sender checks"
        );
        None
    })
}

fn best_dkim<'a>(results: impl Iterator<Item = &'a DkimResult>) -> Verdict {
    let mut best = Verdict::None;
    for r in results {
        let v = match r {
            DkimResult::Pass => return Verdict::Pass,
            DkimResult::Fail(_) => Verdict::Fail,
            // A body that no longer matches its hash was altered (RFC 6376 §6.3).
            DkimResult::Neutral(mail_auth::Error::Dkim(
                mail_auth::dkim::DkimError::FailedBodyHashMatch,
            )) => Verdict::Fail,
            DkimResult::Neutral(_) => Verdict::Neutral,
            DkimResult::PermError(_) => Verdict::PermError,
            DkimResult::TempError(_) => Verdict::TempError,
            DkimResult::None => Verdict::None,
        };
        // Prefer a definite failure over errors, errors over nothing.
        let rank = |v: Verdict| match v {
            Verdict::Fail => 3,
            Verdict::PermError | Verdict::Neutral => 2,
            Verdict::TempError => 1,
            _ => 0,
        };
        if rank(v) > rank(best) {
            best = v;
        }
    }
    best
}

//! The instance's DNS resolver: its set-up (the system's or the configured
//! name servers, never another), a TXT cache that keys can be pinned in,
//! the lookups direct delivery (MX, RFC 5321 §5.1), blocklists (RFC 5782)
//! and `caliopen dns check` make.

use super::SenderAuth;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::{MessageAuthenticator, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

impl SenderAuth {
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
                // RFC 5321 §5.1: lowest preference value first (equal ones
                // keep the resolver's order, not shuffled).
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
            // RFC 5321 §5.1, the implicit MX: a name with no MX record (but
            // not a name that does not exist) is its own mail exchanger.
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

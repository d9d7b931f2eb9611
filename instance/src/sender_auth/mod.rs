//! Sender authentication of inbound mail (DKIM RFC 6376, SPF RFC 7208,
//! DMARC RFC 7489, with mail-auth) and, in [`dns`], the DNS resolver the
//! instance uses for them and for everything else it looks up (MX hosts of
//! direct delivery, blocklists, `caliopen dns check`). DNS is off unless
//! `[dns] enabled = true`: a disabled or failing resolver is never an
//! error — the results are then "temperror" or absent, and the privacy
//! index reads them as "not checked".

mod dns;

pub(crate) use crate::mail::Verdict;
pub use dns::{LookupType, ResolverError, TxtCache};

use crate::privacy::AuthResult;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, MessageAuthenticator, Parameters, SpfResult,
};
use std::net::IpAddr;
use std::sync::Arc;
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

impl SenderAuth {
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

//! The SMTP session's decisions, answered by the router: who may be a
//! recipient (an account, alias or catch-all here, not over quota; for an
//! authenticated submitter, a member or the outside too), and whom a
//! submitter may send as.

use super::session::{Kind, Policy, RcptVerdict};
use crate::config::FromCheck;
use crate::delivery::{split_address, MailService, Route};

impl Policy for MailService {
    fn rcpt(&self, kind: Kind, authenticated: bool, address: &str) -> RcptVerdict {
        use std::sync::atomic::Ordering::Relaxed;
        // A user who moved to another member: the new address, for a while.
        match self.moved(address) {
            Some(Some(to)) => return RcptVerdict::Moved(to),
            Some(None) => {
                self.metrics().rcpt_unknown_user.fetch_add(1, Relaxed);
                return RcptVerdict::UnknownUser;
            }
            None => {}
        }
        match self.route(address) {
            // A bounce of forwarded mail: sent on to its original sender.
            Route::Reverse(_) => RcptVerdict::Accept,
            // Forwarded elsewhere: taken even when the accounts here are full.
            Route::Forward(targets, _) if targets.is_empty() || !self.mailbox_full(&targets) => {
                RcptVerdict::Accept
            }
            Route::Local(targets) | Route::Forward(targets, _) => {
                if self.mailbox_full(&targets) {
                    self.metrics().rcpt_mailbox_full.fetch_add(1, Relaxed);
                    RcptVerdict::MailboxFull
                } else {
                    RcptVerdict::Accept
                }
            }
            Route::None if self.is_local_domain(address) => {
                self.metrics().rcpt_unknown_user.fetch_add(1, Relaxed);
                RcptVerdict::UnknownUser
            }
            // Authenticated users may send to other labelled members (mesh)
            // and, when a relay or direct delivery is configured, to the
            // rest of the world (SMTP queue). Without one, mail for the
            // outside is refused rather than lost.
            Route::Mesh(_) | Route::Smtp if kind == Kind::Submission && authenticated => {
                RcptVerdict::Accept
            }
            // A served domain, handed over: forwarded to the successor.
            Route::Mesh(_) if self.is_local_domain(address) => RcptVerdict::Accept,
            _ => {
                self.metrics().rcpt_relay_denied.fetch_add(1, Relaxed);
                RcptVerdict::RelayDenied
            }
        }
    }

    fn may_send_as(&self, user: &str, address: &str) -> bool {
        // The user's local part at any of the instance's domains, or an
        // address (alias, plus address) that reaches the user.
        let Some((ul, _)) = split_address(user) else {
            return false;
        };
        match self.route(address) {
            Route::Local(targets) | Route::Forward(targets, _) => {
                split_address(address).is_some_and(|(al, _)| al == ul)
                    || targets.iter().any(|t| t.owner == ul)
            }
            _ => false,
        }
    }

    fn header_from_allowed(&self, user: &str, data: &[u8]) -> Result<(), String> {
        let Some(msg) = crate::mail::parse_headers_guarded(data) else {
            return Ok(());
        };
        let mut bad = Vec::new();
        let mut any_header = false;
        for h in msg.headers() {
            if !h.name.as_str().eq_ignore_ascii_case("from") {
                continue;
            }
            any_header = true;
            let addrs: Vec<String> = match h.value.as_address() {
                Some(a) => a
                    .iter()
                    .filter_map(|a| a.address.as_deref().map(str::to_owned))
                    .collect(),
                None => Vec::new(),
            };
            if addrs.is_empty() {
                bad.push("(no address)".to_owned());
            }
            bad.extend(addrs.into_iter().filter(|a| !self.may_send_as(user, a)));
        }
        if !any_header || bad.is_empty() {
            return Ok(());
        }
        let shown = bad.join(", ");
        match self.from_check() {
            FromCheck::Enforce => {
                tracing::warn!(user, from = %shown, "submission refused: From: header is not the user's address");
                self.metrics()
                    .from_header_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(format!("{user} may not send as {shown}"))
            }
            FromCheck::Warn => {
                tracing::warn!(user, from = %shown, "From: header is not the user's address (accepted: [submission] from_check = \"warn\")");
                Ok(())
            }
        }
    }
}

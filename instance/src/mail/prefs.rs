//! A user's web client settings: the remote-content policy and allow list,
//! the interface language, and the daily history of their privacy level
//! (the "progress over time" of the privacy page).

use serde::{Deserialize, Serialize};

/// Most senders on one allow list.
pub(crate) const MAX_ALLOWED_SENDERS: usize = 500;
/// Days of level history kept.
pub(crate) const HISTORY_DAYS: usize = 365;

/// What a message's remote content (images, style sheets) does by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemotePolicy {
    /// Blocked, unless the sender is on the allow list or the user asks
    /// for one message.
    #[default]
    Block,
    /// Blocked for every message, allow list or not (the user asks each time).
    Never,
}

/// Interface language.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// From the browser's `Accept-Language`.
    #[default]
    Auto,
    /// English.
    En,
    /// French.
    Fr,
}

/// A user's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prefs {
    /// Remote content policy.
    #[serde(default)]
    pub remote: RemotePolicy,
    /// Senders (normalised addresses) whose remote content loads.
    #[serde(default)]
    pub remote_allow: Vec<String>,
    /// Interface language.
    #[serde(default)]
    pub lang: Lang,
    /// (day number since the Unix epoch, level 0–100), oldest first, one per day.
    #[serde(default)]
    pub history: Vec<(i64, u8)>,
}

impl Prefs {
    /// True when remote content of mail from `sender` loads by default.
    pub fn remote_allowed(&self, sender: &str) -> bool {
        self.remote == RemotePolicy::Block
            && self
                .remote_allow
                .iter()
                .any(|a| a.eq_ignore_ascii_case(sender))
    }

    /// Adds `sender` (normalised) to the allow list; false when it is full
    /// or already there.
    pub fn allow(&mut self, sender: &str) -> bool {
        if self.remote_allowed(sender) || self.remote_allow.len() >= MAX_ALLOWED_SENDERS {
            return false;
        }
        self.remote_allow.push(sender.to_ascii_lowercase());
        self.remote_allow.sort();
        true
    }

    /// Removes `sender` from the allow list.
    pub fn disallow(&mut self, sender: &str) -> bool {
        let before = self.remote_allow.len();
        self.remote_allow
            .retain(|a| !a.eq_ignore_ascii_case(sender));
        before != self.remote_allow.len()
    }

    /// Records today's level (one point per day, the last one of the day
    /// kept); returns true when the history changed.
    pub fn record_level(&mut self, now: i64, level: u8) -> bool {
        let day = now.div_euclid(86_400);
        match self.history.last_mut() {
            Some((d, l)) if *d == day => {
                if *l == level {
                    return false;
                }
                *l = level;
            }
            Some((d, _)) if *d > day => return false,
            _ => self.history.push((day, level)),
        }
        if self.history.len() > HISTORY_DAYS {
            let cut = self.history.len() - HISTORY_DAYS;
            self.history.drain(..cut);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_and_policy() {
        let mut p = Prefs::default();
        assert!(!p.remote_allowed("a@b.test"));
        assert!(p.allow("A@B.test"));
        assert!(!p.allow("a@b.test"));
        assert!(p.remote_allowed("a@b.test"));
        p.remote = RemotePolicy::Never;
        assert!(!p.remote_allowed("a@b.test"));
        assert!(p.disallow("a@b.TEST"));
        assert!(p.remote_allow.is_empty());
    }

    #[test]
    fn history_keeps_one_point_a_day_and_a_year() {
        let mut p = Prefs::default();
        assert!(p.record_level(10, 20));
        assert!(!p.record_level(20, 20));
        assert!(p.record_level(30, 25));
        assert_eq!(p.history, vec![(0, 25)]);
        assert!(
            !p.record_level(-90_000, 1),
            "a clock gone back adds nothing"
        );
        for d in 1..400 {
            p.record_level(d * 86_400, (d % 100) as u8);
        }
        assert_eq!(p.history.len(), HISTORY_DAYS);
        assert_eq!(p.history.last().map(|h| h.0), Some(399));
    }
}

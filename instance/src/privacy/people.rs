//! The index of people: a user (whose total is their public level) and a
//! contact, plus achievements. Pure functions over the counters the store
//! keeps, like the message index.

use super::{Acc, Dimension, PrivacyIndex};
use crate::mail::{ContactRecord, Counters, UserStats};
use serde::Serialize;

fn pct(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        0.0
    } else {
        (part / whole).clamp(0.0, 1.0)
    }
}

fn points(max: f64, share: f64) -> i32 {
    (max * share).round() as i32
}

fn merged(a: &Counters, b: &Counters) -> Counters {
    Counters {
        messages: a.messages + b.messages,
        mesh: a.mesh + b.mesh,
        tls: a.tls + b.tls,
        plain: a.plain + b.plain,
        local: a.local + b.local,
        encrypted: a.encrypted + b.encrypted,
        signed: a.signed + b.signed,
    }
}

/// Scores a user from their counters. The total is the user's global level,
/// the one published to the mesh unless they opted out.
pub fn score_user(s: &UserStats) -> PrivacyIndex {
    use Dimension::*;
    let mut a = Acc { items: Vec::new() };
    let mut hints = Vec::new();
    let all = merged(&s.received, &s.sent);
    let n = all.messages as f64;
    if all.messages == 0 {
        a.add(
            "user.no_mail",
            Technic,
            50,
            "No mail yet: a neutral value until there is.",
        );
        a.add(
            "user.no_mail",
            Context,
            50,
            "No mail yet: a neutral value until there is.",
        );
    } else {
        let private = pct(all.mesh as f64 + all.local as f64, n);
        let tls = pct(all.tls as f64, n);
        let plain = pct(all.plain as f64, n);
        a.add(
            "user.paths",
            Technic,
            points(60.0, private + 0.5 * tls),
            format!(
                "{:.0}% of your mail travels over the mesh or stays on this instance, {:.0}% by email with TLS, {:.0}% in clear text.",
                private * 100.0,
                tls * 100.0,
                plain * 100.0
            ),
        );
        let enc = pct(all.encrypted as f64, n);
        a.add(
            "user.encrypted",
            Technic,
            points(40.0, enc),
            format!("{:.0}% of your mail is encrypted end to end.", enc * 100.0),
        );
        a.add(
            "user.instance",
            Context,
            30,
            "Your account is on a Caliopen instance.",
        );
        a.add(
            "user.labelled_share",
            Context,
            points(50.0, private),
            format!(
                "{:.0}% of your mail stays within labelled instances.",
                private * 100.0
            ),
        );
        if all.plain > 0 {
            a.add(
                "user.plain_share",
                Context,
                -points(30.0, plain),
                format!(
                    "{:.0}% of your mail crossed the internet in clear text.",
                    plain * 100.0
                ),
            );
        }
        if enc < 0.5 {
            hints.push(
                "Exchange keys with your contacts (Autocrypt) to encrypt more of your mail."
                    .to_owned(),
            );
        }
        if private < 0.5 {
            hints.push(
                "Invite your correspondents to a labelled Caliopen instance: mail between members takes the mesh."
                    .to_owned(),
            );
        }
    }
    if s.contacts == 0 {
        a.add(
            "user.no_contacts",
            Comportment,
            50,
            "No contacts yet: a neutral value until there are.",
        );
    } else {
        a.add(
            "user.contacts",
            Comportment,
            30,
            format!("You correspond with {} contact(s).", s.contacts),
        );
        let keys = pct(s.contacts_with_key as f64, s.contacts as f64);
        a.add(
            "user.contacts_keys",
            Comportment,
            points(50.0, keys),
            format!(
                "{} of your {} contacts have a key.",
                s.contacts_with_key, s.contacts
            ),
        );
        if s.sent.encrypted > 0 {
            a.add(
                "user.sends_encrypted",
                Comportment,
                20,
                "You send encrypted mail.",
            );
        }
    }
    a.finish(hints)
}

/// A user's global level (the total of [`score_user`]).
pub fn user_level(s: &UserStats) -> u8 {
    score_user(s).total
}

/// What the index of a contact looks at.
#[derive(Debug, Clone)]
pub struct ContactFacts<'a> {
    /// The contact book entry.
    pub record: &'a ContactRecord,
    /// The labelled member serving the contact's domain, from the directory.
    pub labelled_member: Option<String>,
    /// The contact is a user of this same instance.
    pub same_instance: bool,
}

/// Scores a contact.
pub fn score_contact(f: &ContactFacts<'_>) -> PrivacyIndex {
    use Dimension::*;
    let c = f.record;
    let mut a = Acc { items: Vec::new() };
    let mut hints = Vec::new();
    let all = merged(&c.received, &c.sent);
    let n = all.messages as f64;
    match &c.autocrypt {
        Some(k) => {
            a.add(
                "contact.key",
                Technic,
                35,
                format!(
                    "You hold a key for {} (Autocrypt): you can encrypt to them.",
                    c.address
                ),
            );
            if k.prefer_encrypt_mutual {
                a.add(
                    "contact.prefers_encrypted",
                    Technic,
                    5,
                    "They prefer encrypted mail.",
                );
            }
        }
        None => hints.push(format!(
            "Ask {} to publish a key (Autocrypt) so that your messages can be encrypted end to end.",
            c.address
        )),
    }
    if f.same_instance {
        a.add(
            "contact.same_instance",
            Technic,
            40,
            "They are on this instance: your mail never leaves it.",
        );
    } else if let Some(m) = &f.labelled_member {
        a.add(
            "contact.mesh_path",
            Technic,
            40,
            format!(
                "Mail with them goes over the mesh to {m}, encrypted and mutually authenticated."
            ),
        );
    } else if all.messages > 0 {
        let tls = pct(all.tls as f64, n);
        a.add(
            "contact.tls",
            Technic,
            points(30.0, tls),
            format!(
                "{:.0}% of your mail with them was encrypted in transit (TLS).",
                tls * 100.0
            ),
        );
    }
    if all.messages > 0 {
        let enc = pct(all.encrypted as f64, n);
        a.add(
            "contact.encrypted_share",
            Technic,
            points(20.0, enc),
            format!(
                "{:.0}% of your mail with them is encrypted end to end.",
                enc * 100.0
            ),
        );
    }

    if f.same_instance {
        a.add(
            "contact.local",
            Context,
            60,
            "They are a user of this instance.",
        );
    } else if let Some(m) = &f.labelled_member {
        a.add(
            "contact.labelled",
            Context,
            60,
            format!(
                "{} is on a labelled instance ({m}): it signed the charter.",
                c.address
            ),
        );
    } else {
        a.add(
            "contact.internet",
            Context,
            20,
            format!("{} is on the open internet.", c.address),
        );
        hints.push(format!(
            "Invite {} to a labelled Caliopen instance: your mail would take the mesh.",
            c.address
        ));
    }
    if all.plain > 0 {
        let plain = pct(all.plain as f64, n);
        a.add(
            "contact.plain",
            Context,
            -points(20.0, plain),
            format!(
                "{:.0}% of your mail with them crossed the internet in clear text.",
                plain * 100.0
            ),
        );
    }

    if c.known() {
        a.add(
            "contact.known",
            Comportment,
            30,
            "You already correspond with them.",
        );
    } else {
        a.add("contact.new", Comportment, 10, "A new correspondent.");
    }
    if c.sent.messages > 0 && c.received.messages > 0 {
        a.add(
            "contact.two_way",
            Comportment,
            15,
            "You write to each other.",
        );
    }
    match &c.public_level {
        Some(l) => a.add(
            "contact.public_level",
            Comportment,
            i32::from(l.level.min(100)) / 4,
            format!(
                "Their public privacy level is {} (answered by {}).",
                l.level, l.member
            ),
        ),
        None if f.labelled_member.is_some() => a.add(
            "contact.no_public_level",
            Comportment,
            0,
            "Their member publishes no level for them (not asked yet, or they opted out).",
        ),
        None => {}
    }
    if f.labelled_member.is_some() || f.same_instance {
        a.add(
            "contact.member_user",
            Comportment,
            10,
            "They use a labelled Caliopen instance.",
        );
    }
    a.finish(hints)
}

/// Something a user did for their privacy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Achievement {
    /// Stable id.
    pub id: &'static str,
    /// Short title.
    pub title: &'static str,
    /// Earned yet.
    pub earned: bool,
    /// When it was earned (Unix seconds), if known.
    pub at: Option<i64>,
}

/// A user's achievements, earned or not, from the same counters.
pub fn achievements(s: &UserStats) -> Vec<Achievement> {
    let all = merged(&s.received, &s.sent);
    vec![
        Achievement {
            id: "first_encrypted",
            title: "First encrypted message",
            earned: s.first_encrypted_at.is_some(),
            at: s.first_encrypted_at,
        },
        Achievement {
            id: "first_mesh",
            title: "First message over the labelled mesh",
            earned: s.first_mesh_at.is_some(),
            at: s.first_mesh_at,
        },
        Achievement {
            id: "contact_key",
            title: "A contact of yours has a key",
            earned: s.contacts_with_key > 0,
            at: None,
        },
        Achievement {
            id: "no_clear_text",
            title: "Ten messages and none in clear text",
            earned: all.messages >= 10 && all.plain == 0,
            at: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::{AutocryptKey, PathClass, SeenLevel};

    fn explained(i: &PrivacyIndex) {
        for d in [
            Dimension::Technic,
            Dimension::Context,
            Dimension::Comportment,
        ] {
            let sum: i32 = i
                .explanation
                .iter()
                .filter(|e| e.dimension == d)
                .map(|e| e.effect)
                .sum();
            let got = match d {
                Dimension::Technic => i.technic,
                Dimension::Context => i.context,
                Dimension::Comportment => i.comportment,
            };
            assert_eq!(i32::from(got), sum.clamp(0, 100), "{d:?}: {i:?}");
        }
    }

    #[test]
    fn mesh_and_encryption_raise_a_users_level() {
        let mut plain = UserStats::default();
        let mut mesh = UserStats::default();
        for _ in 0..10 {
            plain.received.count(PathClass::Plain, false, false);
            mesh.received.count(PathClass::Mesh, false, false);
        }
        let mut enc = mesh.clone();
        enc.sent.count(PathClass::Mesh, true, false);
        let (p, m, e) = (score_user(&plain), score_user(&mesh), score_user(&enc));
        assert!(p.total < m.total && m.total < e.total, "{p:?} {m:?} {e:?}");
        for i in [&p, &m, &e, &score_user(&UserStats::default())] {
            explained(i);
        }
        assert!(!p.hints.is_empty());
        assert_eq!(user_level(&UserStats::default()), 50);
    }

    #[test]
    fn a_labelled_contact_with_a_key_ranks_above_an_unknown_one() {
        let mut c = ContactRecord {
            address: "bob@beta.test".into(),
            ..Default::default()
        };
        c.received.count(PathClass::Plain, false, false);
        let stranger = score_contact(&ContactFacts {
            record: &c,
            labelled_member: None,
            same_instance: false,
        });
        let mut friend = c.clone();
        friend.sent.count(PathClass::Mesh, true, false);
        friend.autocrypt = Some(AutocryptKey {
            key_sha256: "00".into(),
            keydata: "AAAA".into(),
            prefer_encrypt_mutual: true,
            seen_at: 1,
        });
        friend.public_level = Some(SeenLevel {
            level: 80,
            member: "beta".into(),
            fetched_at: 1,
        });
        let f = score_contact(&ContactFacts {
            record: &friend,
            labelled_member: Some("beta".into()),
            same_instance: false,
        });
        assert!(f.total > stranger.total && f.technic > stranger.technic);
        explained(&f);
        explained(&stranger);
        assert!(stranger.hints.iter().any(|h| h.contains("labelled")));
        assert!(f
            .explanation
            .iter()
            .any(|e| e.feature == "contact.public_level" && e.text.contains("80")));
    }

    #[test]
    fn achievements_follow_the_counters() {
        let mut s = UserStats::default();
        assert!(achievements(&s).iter().all(|a| !a.earned));
        s.mark(PathClass::Mesh, true, 42);
        let a = achievements(&s);
        assert!(a
            .iter()
            .any(|x| x.id == "first_encrypted" && x.at == Some(42)));
        assert!(a.iter().any(|x| x.id == "first_mesh" && x.earned));
    }
}

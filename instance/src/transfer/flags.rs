//! Keywords in the store's names (`$seen`, `$answered`, `$flagged`,
//! `$draft`, `$forwarded`, `$deleted`, user keywords) and in the names of
//! the formats we read and write: Maildir's info letters (with Dovecot's
//! `dovecot-keywords` letters a–z for user keywords), mbox's `Status` /
//! `X-Status` / `X-Keywords` headers, IMAP flags.

/// The Maildir info letters (in the ASCII order the format asks for) and
/// the keyword of each.
pub(crate) const MAILDIR_LETTERS: [(char, &str); 6] = [
    ('D', "$draft"),
    ('F', "$flagged"),
    ('P', "$forwarded"),
    ('R', "$answered"),
    ('S', "$seen"),
    ('T', "$deleted"),
];

/// How many user keywords a Maildir folder can carry (letters a–z).
pub(crate) const MAILDIR_USER_KEYWORDS: usize = 26;

/// The keyword of an IMAP flag (`\Seen` → `$seen`, `$Forwarded` →
/// `$forwarded`, `\Deleted` → `$deleted`); `None` for `\Recent` and for the
/// privacy class keywords, which the store computes.
pub(crate) fn from_imap(flag: &str) -> Option<String> {
    let lower = flag.to_ascii_lowercase();
    match lower.as_str() {
        "\\recent" => None,
        "\\deleted" => Some("$deleted".into()),
        "\\seen" => Some("$seen".into()),
        "\\answered" => Some("$answered".into()),
        "\\flagged" => Some("$flagged".into()),
        "\\draft" => Some("$draft".into()),
        l if l.starts_with("$caliopen") => None,
        // An unknown system flag is not a keyword.
        l if l.starts_with('\\') => None,
        _ => Some(lower),
    }
}

/// The keywords of a Maildir file name's info (`…:2,FRS` and lowercase
/// letters named by `user` — the folder's `dovecot-keywords`).
pub(crate) fn from_maildir(info: &str, user: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for c in info.chars() {
        if let Some((_, k)) = MAILDIR_LETTERS.iter().find(|(l, _)| *l == c) {
            out.push((*k).to_owned());
        } else if c.is_ascii_lowercase() {
            if let Some(k) = user.get((c as u8 - b'a') as usize) {
                if let Some(k) = from_imap(k) {
                    out.push(k);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Maildir info letters of `keywords`, user keywords given letters
/// from `user` (the folder's keyword list, extended as new ones come, up
/// to 26; those past it are left out and counted in the return value).
pub(crate) fn to_maildir(keywords: &[String], user: &mut Vec<String>) -> (String, usize) {
    let mut letters: Vec<char> = Vec::new();
    let mut lost = 0;
    for k in keywords {
        if let Some((l, _)) = MAILDIR_LETTERS.iter().find(|(_, kk)| kk == k) {
            letters.push(*l);
            continue;
        }
        if k.starts_with("$caliopen") {
            continue;
        }
        let i = match user.iter().position(|u| u.eq_ignore_ascii_case(k)) {
            Some(i) => i,
            None if user.len() < MAILDIR_USER_KEYWORDS => {
                user.push(k.clone());
                user.len() - 1
            }
            None => {
                lost += 1;
                continue;
            }
        };
        letters.push((b'a' + i as u8) as char);
    }
    letters.sort_unstable();
    letters.dedup();
    (letters.into_iter().collect(), lost)
}

/// The mbox `Status` and `X-Status` values of `keywords` (as mutt,
/// Python's `mailbox` and Dovecot write them), and the user keywords for
/// `X-Keywords`.
pub(crate) fn to_mbox(keywords: &[String]) -> (String, String, Vec<String>) {
    let has = |k: &str| keywords.iter().any(|x| x == k);
    let mut status = String::new();
    if has("$seen") {
        status.push('R');
    }
    status.push('O');
    let mut x = String::new();
    for (l, k) in [
        ('A', "$answered"),
        ('F', "$flagged"),
        ('T', "$draft"),
        ('D', "$deleted"),
    ] {
        if has(k) {
            x.push(l);
        }
    }
    let user = keywords
        .iter()
        .filter(|k| {
            !k.starts_with("$caliopen")
                && !["$seen", "$answered", "$flagged", "$draft", "$deleted"].contains(&k.as_str())
        })
        .cloned()
        .collect();
    (status, x, user)
}

/// The keywords of mbox `Status`, `X-Status` and `X-Keywords` values.
pub(crate) fn from_mbox(status: &str, x_status: &str, x_keywords: &str) -> Vec<String> {
    let mut out = Vec::new();
    if status.contains('R') {
        out.push("$seen".to_owned());
    }
    for (l, k) in [
        ('A', "$answered"),
        ('F', "$flagged"),
        ('T', "$draft"),
        ('D', "$deleted"),
    ] {
        if x_status.contains(l) {
            out.push(k.to_owned());
        }
    }
    for k in x_keywords
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        if let Some(k) = from_imap(k) {
            out.push(k);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildir_letters_go_both_ways() {
        let mut user = vec!["$junk".to_owned()];
        let kw: Vec<String> = ["$seen", "$answered", "work", "$junk", "$caliopenmesh"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (info, lost) = to_maildir(&kw, &mut user);
        assert_eq!(info, "RSab");
        assert_eq!(lost, 0);
        assert_eq!(user, vec!["$junk".to_owned(), "work".to_owned()]);
        assert_eq!(
            from_maildir(&info, &user),
            vec!["$answered", "$junk", "$seen", "work"]
        );
    }

    #[test]
    fn a_27th_user_keyword_is_counted_lost() {
        let mut user: Vec<String> = (0..26).map(|i| format!("k{i}")).collect();
        let (info, lost) = to_maildir(&["new".to_owned(), "k3".to_owned()], &mut user);
        assert_eq!((info.as_str(), lost), ("d", 1));
    }

    #[test]
    fn mbox_headers_go_both_ways() {
        let kw: Vec<String> = ["$seen", "$flagged", "$draft", "todo"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (s, x, user) = to_mbox(&kw);
        assert_eq!((s.as_str(), x.as_str()), ("RO", "FT"));
        assert_eq!(
            from_mbox(&s, &x, &user.join(" ")),
            vec!["$draft", "$flagged", "$seen", "todo"]
        );
        assert!(from_mbox("O", "", "").is_empty());
    }

    #[test]
    fn imap_flags_map() {
        assert_eq!(from_imap("\\Seen").as_deref(), Some("$seen"));
        assert_eq!(from_imap("\\Deleted").as_deref(), Some("$deleted"));
        assert_eq!(from_imap("$Forwarded").as_deref(), Some("$forwarded"));
        assert_eq!(from_imap("\\Recent"), None);
        assert_eq!(from_imap("$CaliopenMesh"), None);
        assert_eq!(from_imap("\\Unknown"), None);
    }
}

//! Which local accounts an address reaches: aliases (an address for one or
//! more accounts), plus-addressing (`alice+news@` → alice, detail `news`)
//! and a per-domain catch-all (an alias for `@domain`, off until made).

/// Largest number of accounts one alias may reach.
pub(crate) const MAX_ALIAS_TARGETS: usize = 100;

/// One account an address reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The account (local part).
    pub owner: String,
    /// The plus detail (`news` of `alice+news@`), lowercased.
    pub detail: Option<String>,
}

/// Where an address leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Accounts of this instance (at least one; no account twice).
    Local(Vec<Target>),
    /// An alias that also (or only) forwards to addresses of other
    /// domains: the accounts here (maybe none) and those addresses.
    Forward(Vec<Target>, Vec<String>),
    /// A served domain, but no account, alias nor catch-all for it.
    Unknown,
    /// Not a domain of this instance.
    NotLocal,
}

/// The key of an alias: `local@domain` lowercased, or `@domain` for a catch-all.
pub(crate) fn alias_key(address: &str) -> Option<String> {
    let (l, d) = address.rsplit_once('@')?;
    if d.is_empty() || d.contains('@') {
        return None;
    }
    Some(format!(
        "{}@{}",
        l.to_ascii_lowercase(),
        d.to_ascii_lowercase()
    ))
}

/// Resolves `address` (`local@domain`) for an instance serving `domains`
/// (lowercase), with `exists` telling accounts and `alias` reading the
/// alias table (by [`alias_key`]). Order: an alias of the exact address, an
/// account, the same two for the address without its plus detail, the
/// domain's catch-all. Alias targets that are no (longer an) account are
/// left out; targets with an `@` are addresses elsewhere (forwarding).
pub(crate) fn resolve(
    address: &str,
    domains: &[String],
    exists: impl Fn(&str) -> bool,
    alias: impl Fn(&str) -> Option<Vec<String>>,
) -> Resolution {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Resolution::NotLocal;
    };
    let (local, domain) = (local.to_ascii_lowercase(), domain.to_ascii_lowercase());
    if local.is_empty() || !domains.contains(&domain) {
        return Resolution::NotLocal;
    }
    let forwards = std::cell::RefCell::new(Vec::<String>::new());
    let via_alias = |key: &str, detail: Option<&str>| -> Option<Vec<Target>> {
        let mut out: Vec<Target> = Vec::new();
        let mut fwd = Vec::new();
        for owner in alias(key)? {
            if owner.contains('@') {
                if !fwd.contains(&owner) {
                    fwd.push(owner);
                }
            } else if exists(&owner) && !out.iter().any(|t| t.owner == owner) {
                out.push(Target {
                    owner,
                    detail: detail.map(str::to_owned),
                });
            }
        }
        if out.is_empty() && fwd.is_empty() {
            return None;
        }
        *forwards.borrow_mut() = fwd;
        Some(out)
    };
    let account = |l: &str, detail: Option<&str>| {
        exists(l).then(|| {
            vec![Target {
                owner: l.to_owned(),
                detail: detail.map(str::to_owned),
            }]
        })
    };
    let found = via_alias(&format!("{local}@{domain}"), None)
        .or_else(|| account(&local, None))
        .or_else(|| {
            let (base, detail) = local.split_once('+')?;
            let detail = (!detail.is_empty()).then_some(detail);
            if base.is_empty() {
                return None;
            }
            via_alias(&format!("{base}@{domain}"), detail).or_else(|| account(base, detail))
        })
        .or_else(|| via_alias(&format!("@{domain}"), None));
    let forwards = forwards.into_inner();
    match found {
        Some(t) if !forwards.is_empty() => Resolution::Forward(t, forwards),
        Some(t) => Resolution::Local(t),
        None => Resolution::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: &str) -> Resolution {
        let domains = vec!["a.test".to_owned(), "b.test".to_owned()];
        let users = ["alice", "bob", "carol"];
        resolve(
            addr,
            &domains,
            |l| users.contains(&l),
            |k| match k {
                "team@a.test" => Some(vec![
                    "alice".into(),
                    "bob".into(),
                    "gone".into(),
                    "alice".into(),
                ]),
                "ghost@a.test" => Some(vec!["gone".into()]),
                "fwd@a.test" => Some(vec!["alice".into(), "x@out.test".into()]),
                "ext@a.test" => Some(vec!["x@out.test".into(), "gone".into()]),
                "@b.test" => Some(vec!["carol".into()]),
                _ => None,
            },
        )
    }

    fn local(owner: &str, detail: Option<&str>) -> Target {
        Target {
            owner: owner.into(),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn accounts_aliases_plus_and_catch_all() {
        assert_eq!(
            run("Alice@A.test"),
            Resolution::Local(vec![local("alice", None)])
        );
        assert_eq!(
            run("team@a.test"),
            Resolution::Local(vec![local("alice", None), local("bob", None)])
        );
        assert_eq!(
            run("alice+News@a.test"),
            Resolution::Local(vec![local("alice", Some("news"))])
        );
        assert_eq!(
            run("team+x@a.test"),
            Resolution::Local(vec![local("alice", Some("x")), local("bob", Some("x"))])
        );
        assert_eq!(
            run("alice+@a.test"),
            Resolution::Local(vec![local("alice", None)])
        );
        assert_eq!(
            run("nobody@a.test"),
            Resolution::Unknown,
            "no catch-all on a.test"
        );
        assert_eq!(
            run("ghost@a.test"),
            Resolution::Unknown,
            "an alias of removed accounts"
        );
        assert_eq!(run("+x@a.test"), Resolution::Unknown);
        assert_eq!(
            run("nobody@b.test"),
            Resolution::Local(vec![local("carol", None)])
        );
        assert_eq!(
            run("bob@b.test"),
            Resolution::Local(vec![local("bob", None)])
        );
        assert_eq!(run("alice@elsewhere.test"), Resolution::NotLocal);
        assert_eq!(run("no-at-sign"), Resolution::NotLocal);
        // Forwarding aliases: accounts here and addresses elsewhere.
        assert_eq!(
            run("fwd@a.test"),
            Resolution::Forward(vec![local("alice", None)], vec!["x@out.test".into()])
        );
        assert_eq!(
            run("ext+tag@a.test"),
            Resolution::Forward(Vec::new(), vec!["x@out.test".into()])
        );
    }
}

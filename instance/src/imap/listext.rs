//! LIST-EXTENDED (RFC 5258) with SPECIAL-USE (RFC 6154) and LIST-STATUS
//! (RFC 5819) selection and return options, which imap-codec's grammar
//! does not know: the options are taken off the command line here, and
//! what is left is an ordinary `LIST reference pattern` for the codec.
//!
//! Only lines without literals are rewritten (a client that sends a
//! literal mailbox name in an extended LIST gets `BAD` from the codec).
//! ESEARCH (RFC 4731) return options of SEARCH are taken off the same way.

/// The extended parts of one LIST.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Selection options, uppercase (`SUBSCRIBED`, `SPECIAL-USE`, `REMOTE`, `RECURSIVEMATCH`).
    pub select: Vec<String>,
    /// Return options, uppercase, without `STATUS`.
    pub ret: Vec<String>,
    /// `RETURN (STATUS (…))` items, uppercase.
    pub status: Option<Vec<String>>,
    /// Every pattern, when a list of patterns was given.
    pub patterns: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Atom(Vec<u8>),
    Quoted(Vec<u8>),
    Group(Vec<Tok>),
}

fn tokens(b: &[u8], i: &mut usize, depth: usize) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    while *i < b.len() {
        match b[*i] {
            b' ' => *i += 1,
            b')' if depth > 0 => {
                *i += 1;
                return Some(out);
            }
            b'(' => {
                if depth >= 3 {
                    return None;
                }
                *i += 1;
                out.push(Tok::Group(tokens(b, i, depth + 1)?));
            }
            b'"' => {
                *i += 1;
                let mut s = Vec::new();
                loop {
                    match *b.get(*i)? {
                        b'\\' => {
                            s.push(*b.get(*i + 1)?);
                            *i += 2;
                        }
                        b'"' => {
                            *i += 1;
                            break;
                        }
                        c => {
                            s.push(c);
                            *i += 1;
                        }
                    }
                }
                out.push(Tok::Quoted(s));
            }
            // A literal, a line end inside the line, or a `)` closing nothing.
            b'{' | b'\r' | b'\n' | b')' => return None,
            _ => {
                let start = *i;
                while *i < b.len() && !b" ()\"\r\n".contains(&b[*i]) {
                    *i += 1;
                }
                out.push(Tok::Atom(b[start..*i].to_vec()));
            }
        }
    }
    (depth == 0).then_some(out)
}

fn upper(t: &Tok) -> Option<String> {
    match t {
        Tok::Atom(a) => Some(String::from_utf8_lossy(a).to_ascii_uppercase()),
        _ => None,
    }
}

fn write(out: &mut Vec<u8>, t: &Tok) {
    match t {
        Tok::Atom(a) => out.extend_from_slice(a),
        Tok::Quoted(q) => {
            out.push(b'"');
            for &c in q {
                if c == b'"' || c == b'\\' {
                    out.push(b'\\');
                }
                out.push(c);
            }
            out.push(b'"');
        }
        Tok::Group(_) => {}
    }
}

/// When `message` is an extended LIST, the plain LIST to decode instead
/// and its options; `None` for anything else (decoded as it is).
pub(crate) fn rewrite(message: &[u8]) -> Option<(Vec<u8>, ListOptions)> {
    let line = message
        .strip_suffix(b"\r\n")
        .or_else(|| message.strip_suffix(b"\n"))?;
    let mut i = 0;
    let toks = tokens(line, &mut i, 0)?;
    let [tag, cmd, rest @ ..] = toks.as_slice() else {
        return None;
    };
    if !matches!(tag, Tok::Atom(_)) || upper(cmd).as_deref() != Some("LIST") {
        return None;
    }
    let mut opts = ListOptions::default();
    let mut rest = rest;
    let mut extended = false;
    if let [Tok::Group(sel), tail @ ..] = rest {
        opts.select = sel.iter().map(upper).collect::<Option<_>>()?;
        rest = tail;
        extended = true;
    }
    let [reference, pattern, tail @ ..] = rest else {
        return None;
    };
    let first = match pattern {
        Tok::Group(ps) => {
            for p in ps {
                match p {
                    Tok::Atom(a) | Tok::Quoted(a) => opts.patterns.push(a.clone()),
                    Tok::Group(_) => return None,
                }
            }
            extended = true;
            ps.first()?.clone()
        }
        p => p.clone(),
    };
    match tail {
        [] => {}
        [r, Tok::Group(items)] if upper(r).as_deref() == Some("RETURN") => {
            extended = true;
            let mut it = items.iter();
            while let Some(t) = it.next() {
                let name = upper(t)?;
                if name == "STATUS" {
                    let Some(Tok::Group(st)) = it.next() else {
                        return None;
                    };
                    opts.status = Some(st.iter().map(upper).collect::<Option<_>>()?);
                } else {
                    opts.ret.push(name);
                }
            }
        }
        _ => return None,
    }
    if !extended || matches!(reference, Tok::Group(_)) {
        return None;
    }
    let mut plain = Vec::new();
    write(&mut plain, tag);
    plain.extend_from_slice(b" LIST ");
    write(&mut plain, reference);
    plain.push(b' ');
    write(&mut plain, &first);
    plain.extend_from_slice(b"\r\n");
    Some((plain, opts))
}

/// When `message` is a SEARCH with ESEARCH return options (RFC 4731:
/// `[UID] SEARCH RETURN (MIN MAX COUNT ALL) criteria`), the plain SEARCH
/// to decode instead and the options, uppercase (empty: `ALL`).
pub(crate) fn rewrite_search(message: &[u8]) -> Option<(Vec<u8>, Vec<String>)> {
    let mut words = Vec::new();
    let mut i = 0;
    // tag, [UID], SEARCH, RETURN: atoms separated by one space.
    while words.len() < 4 {
        let start = i;
        while i < message.len() && !b" \r\n".contains(&message[i]) {
            i += 1;
        }
        words.push((start, &message[start..i]));
        if message.get(i) != Some(&b' ') {
            return None;
        }
        i += 1;
        if words.len() == 2 && !words[1].1.eq_ignore_ascii_case(b"UID") {
            // No UID: the third word read is already RETURN's place.
            words.insert(1, (start, &message[start..start]));
        }
    }
    if !words[2].1.eq_ignore_ascii_case(b"SEARCH") || !words[3].1.eq_ignore_ascii_case(b"RETURN") {
        return None;
    }
    if message.get(i) != Some(&b'(') {
        return None;
    }
    let close = i + message[i..].iter().position(|&b| b == b')')?;
    let opts: Vec<String> = message[i + 1..close]
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).to_ascii_uppercase())
        .collect();
    if opts
        .iter()
        .any(|o| !matches!(o.as_str(), "MIN" | "MAX" | "COUNT" | "ALL"))
    {
        return None;
    }
    let rest = message.get(close + 1..)?.strip_prefix(b" ")?;
    let mut plain = message[..words[3].0].to_vec();
    plain.extend_from_slice(rest);
    Some((plain, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esearch_options_are_taken_off() {
        let (p, o) =
            rewrite_search(b"a UID SEARCH RETURN (MIN COUNT) UNSEEN\r\n").expect("esearch");
        assert_eq!(p, b"a UID SEARCH UNSEEN\r\n");
        assert_eq!(o, ["MIN", "COUNT"]);
        let (p, o) = rewrite_search(b"b search return () TEXT {5}\r\nhello\r\n").expect("esearch");
        assert_eq!(p, b"b search TEXT {5}\r\nhello\r\n");
        assert!(o.is_empty());
        assert!(rewrite_search(b"a SEARCH ALL\r\n").is_none());
        assert!(rewrite_search(b"a UID SEARCH ALL\r\n").is_none());
        assert!(rewrite_search(b"a SEARCH RETURN (BOGUS) ALL\r\n").is_none());
        assert!(rewrite_search(b"a SEARCH RETURN (MIN\r\n").is_none());
    }

    #[test]
    fn extended_lists_become_plain_ones() {
        let (p, o) = rewrite(b"a1 LIST (SPECIAL-USE) \"\" \"*\"\r\n").expect("extended");
        assert_eq!(p, b"a1 LIST \"\" \"*\"\r\n");
        assert_eq!(o.select, ["SPECIAL-USE"]);
        let (p, o) =
            rewrite(b"a2 LIST \"\" % RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))\r\n")
                .expect("extended");
        assert_eq!(p, b"a2 LIST \"\" %\r\n");
        assert_eq!(o.ret, ["SUBSCRIBED", "CHILDREN"]);
        assert_eq!(o.status, Some(vec!["MESSAGES".into(), "UNSEEN".into()]));
        let (p, o) = rewrite(b"a3 list \"\" (\"INBOX\" \"Sent\")\r\n").expect("extended");
        assert_eq!(p, b"a3 LIST \"\" \"INBOX\"\r\n");
        assert_eq!(o.patterns, [b"INBOX".to_vec(), b"Sent".to_vec()]);
        // Plain LIST, other commands, literals and junk are left to the codec.
        assert!(rewrite(b"a LIST \"\" *\r\n").is_none());
        assert!(rewrite(b"a SELECT INBOX\r\n").is_none());
        assert!(rewrite(b"a LIST (X) {5}\r\nINBOX *\r\n").is_none());
        assert!(rewrite(b"a LIST ((((( \"\" *\r\n").is_none());
        assert!(rewrite(b"a LIST () \"\" * RETURN\r\n").is_none());
        assert!(rewrite(b"a LIST \"\" * RETURN (STATUS)\r\n").is_none());
        // Found by fuzzing: a `)` closing nothing looped for ever (before login).
        assert!(rewrite(b"a)\r\n").is_none());
        assert!(rewrite(b"a LIST ) \"\" *\r\n").is_none());
        assert!(rewrite(b"a LIST (X)) \"\" *\r\n").is_none());
    }
}

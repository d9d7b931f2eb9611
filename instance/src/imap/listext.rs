//! LIST-EXTENDED (RFC 5258) with SPECIAL-USE (RFC 6154) and LIST-STATUS
//! (RFC 5819) selection and return options, which imap-codec's grammar
//! does not know: the options are taken off the command line here, and
//! what is left is an ordinary `LIST reference pattern` for the codec.
//!
//! Only lines without literals are rewritten (a client that sends a
//! literal mailbox name in an extended LIST gets `BAD` from the codec).

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
            b'{' | b'\r' | b'\n' => return None,
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
pub fn rewrite(message: &[u8]) -> Option<(Vec<u8>, ListOptions)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}

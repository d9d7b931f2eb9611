//! The `add-checkpoint` request of C2SP `tlog-witness`, both ways: what a
//! log sends ([`request_body`]) and what a witness reads
//! ([`parse_request`]). Plain functions over bytes.

use super::base64;
use super::merkle::Hash;

/// Most consistency proof lines (tlog-witness §add-checkpoint: "The client
/// MUST NOT send more than 63 consistency proof lines").
pub const MAX_PROOF_LINES: usize = 63;

/// Content type of a 409 answer's body, the witness's size and a newline
/// (tlog-witness §add-checkpoint).
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// The path of the call below a witness's submission prefix.
pub const ADD_CHECKPOINT: &str = "/add-checkpoint";

/// A parsed add-checkpoint request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The old size line's value.
    pub old: u64,
    /// The consistency proof.
    pub proof: Vec<Hash>,
    /// The checkpoint note (everything after the empty line), unparsed.
    pub note: &'a [u8],
}

/// An add-checkpoint body: `old <size>`, the proof one base64 hash a line,
/// an empty line, the checkpoint note.
pub fn request_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut s = format!("old {old}\n");
    for h in proof {
        s.push_str(&base64::encode(h));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(note);
    s
}

/// Parses an add-checkpoint body: `old N` (a canonical decimal), zero to
/// [`MAX_PROOF_LINES`] base64 hashes, an empty line, then the note (left
/// for the caller to parse). Every line ends in a newline.
pub fn parse_request(body: &[u8]) -> Result<Request<'_>, &'static str> {
    let mut rest = body;
    let mut line = || -> Result<&[u8], &'static str> {
        let i = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("line without a newline")?;
        let (l, r) = rest.split_at(i);
        rest = &r[1..];
        Ok(l)
    };
    let old = line()?
        .strip_prefix(b"old ")
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(parse_decimal)
        .ok_or("first line is not `old <size>`")?;
    let mut proof = Vec::new();
    loop {
        let l = line()?;
        if l.is_empty() {
            break;
        }
        if proof.len() == MAX_PROOF_LINES {
            return Err("more than 63 consistency proof lines");
        }
        let h: Hash = std::str::from_utf8(l)
            .ok()
            .and_then(base64::decode)
            .and_then(|v| v.try_into().ok())
            .ok_or("proof line is not base64 of a 32-byte hash")?;
        proof.push(h);
    }
    Ok(Request {
        old,
        proof,
        note: rest,
    })
}

/// Parses the body of a 409 answer: a canonical decimal and a newline.
pub fn parse_size_body(body: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(body.strip_suffix(b"\n")?).ok()?;
    parse_decimal(s)
}

/// A canonical ASCII decimal (no sign, no leading zero but `0`).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_parses_and_round_trips() {
        // tlog-witness §add-checkpoint, its example request body.
        let body = "old 20852014\n\
            PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\
            jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n\
            5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n\
            /6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\
            \n\
            example.com/behind-the-sofa\n\
            20852163\n\
            CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
            \n\
            \u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
        let r = parse_request(body.as_bytes()).unwrap();
        assert_eq!(r.old, 20852014);
        assert_eq!(r.proof.len(), 4);
        let note = std::str::from_utf8(r.note).unwrap();
        assert!(note.starts_with("example.com/behind-the-sofa\n20852163\n"));
        assert_eq!(request_body(r.old, &r.proof, note), body);
        // What the fuzz target checks, on every prefix: a body that parses
        // writes back to the same bytes; a cut one needs its newline.
        for i in 0..=body.len() {
            let part = &body.as_bytes()[..i];
            if let Ok(r) = parse_request(part) {
                // (A cut inside the em dash leaves no UTF-8 note.)
                if let Ok(note) = std::str::from_utf8(r.note) {
                    assert_eq!(request_body(r.old, &r.proof, note).as_bytes(), part);
                }
            }
        }
        assert!(parse_request(b"old 1\nAAAA\n\n").is_err());
        assert_eq!(parse_size_body(b"20852014\n"), Some(20852014));
        for bad in [&b"01\n"[..], b"1", b"-1\n", b"\n", b"1 \n"] {
            assert_eq!(parse_size_body(bad), None);
        }
    }
}

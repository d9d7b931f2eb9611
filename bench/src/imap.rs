//! A small IMAP client for the load generator: STARTTLS (any certificate
//! accepted, the handshake's signature still checked, so that both servers
//! pay for the same TLS), LOGIN, tagged commands, and responses read with
//! their literals (`{n}\r\n` then exactly n octets, as many times as a
//! response has them).

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Longest wait for any one response line (a server that stops answering
/// fails the case instead of hanging the run).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest literal accepted from a server (a guard against a garbled length).
const MAX_LITERAL: usize = 256 << 20;

/// Accepts any certificate (the servers' are self-signed) but verifies the
/// handshake signature with the provider's algorithms.
#[derive(Debug)]
struct AnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The TLS client configuration (aws-lc-rs, safe defaults, any certificate).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let algs = provider.signature_verification_algorithms;
    let cfg = rustls::ClientConfig::builder_with_provider(provider as Arc<CryptoProvider>)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(algs)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// How a tagged command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NO`.
    No,
    /// `BAD`.
    Bad,
}

/// One response: a line, with any literals it carries inlined.
#[derive(Debug, Clone, Default)]
pub struct Line {
    /// The bytes, CRLFs of the line and literal headers included.
    pub bytes: Vec<u8>,
    /// Octets that came in literals.
    pub literal_octets: usize,
}

impl Line {
    /// `* N WORD ...`: the number and the word (`EXISTS`, `FETCH`, ...).
    pub fn numbered(&self) -> Option<(u64, &[u8])> {
        let rest = self.bytes.strip_prefix(b"* ")?;
        let sp = rest.iter().position(|&b| b == b' ')?;
        let n = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        let rest = &rest[sp + 1..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        Some((n, &rest[..end]))
    }

    /// The line as text (lossy), without the final CRLF.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim_end().to_owned()
    }
}

/// A finished command: its untagged responses and how it ended.
#[derive(Debug, Clone)]
pub struct Done {
    /// Untagged responses, in order.
    pub untagged: Vec<Line>,
    /// The tagged status.
    pub status: Status,
    /// The tagged line's text after the status.
    pub text: String,
}

impl Done {
    /// Fails unless the command ended in `OK`.
    pub fn ok(self, what: &str) -> Result<Self> {
        if self.status != Status::Ok {
            bail!("{what}: {:?} {}", self.status, self.text);
        }
        Ok(self)
    }

    /// Untagged `* N WORD` responses with this word (`FETCH`, `EXISTS`).
    pub fn count(&self, word: &[u8]) -> usize {
        self.untagged
            .iter()
            .filter(|l| {
                l.numbered()
                    .is_some_and(|(_, w)| w.eq_ignore_ascii_case(word))
            })
            .count()
    }

    /// The last `* N EXISTS`.
    pub fn exists(&self) -> Option<u64> {
        self.untagged.iter().rev().find_map(|l| {
            l.numbered()
                .filter(|(_, w)| w.eq_ignore_ascii_case(b"EXISTS"))
                .map(|(n, _)| n)
        })
    }

    /// The numbers of `* SEARCH` responses.
    pub fn search(&self) -> Vec<u64> {
        let mut v = Vec::new();
        for l in &self.untagged {
            let t = l.text();
            if let Some(rest) = t.strip_prefix("* SEARCH") {
                v.extend(
                    rest.split_whitespace()
                        .filter_map(|x| x.parse::<u64>().ok()),
                );
            }
        }
        v
    }

    /// Octets received in literals over all untagged responses.
    pub fn literal_octets(&self) -> usize {
        self.untagged.iter().map(|l| l.literal_octets).sum()
    }
}

/// One logged-in (or about to be) IMAP connection over TLS.
pub struct Client {
    io: BufReader<TlsStream<TcpStream>>,
    next_tag: u64,
    /// Capabilities after login.
    pub caps: Vec<String>,
    /// `LOGINDISABLED` was advertised before STARTTLS.
    pub login_disabled_in_clear: bool,
    /// The negotiated TLS version and cipher suite.
    pub tls: String,
}

/// Reads one response line with its literals from `r`.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Line> {
    let mut line = Line::default();
    loop {
        let start = line.bytes.len();
        let n = tokio::time::timeout(READ_TIMEOUT, r.read_until(b'\n', &mut line.bytes))
            .await
            .context("no answer from the IMAP server in time")??;
        if n == 0 {
            bail!(
                "IMAP server closed the connection (after {:?})",
                String::from_utf8_lossy(&line.bytes)
            );
        }
        let part = &line.bytes[start..];
        match literal_len(part) {
            Some(len) => {
                if len > MAX_LITERAL {
                    bail!("literal of {len} octets announced");
                }
                let at = line.bytes.len();
                line.bytes.resize(at + len, 0);
                tokio::time::timeout(READ_TIMEOUT, r.read_exact(&mut line.bytes[at..]))
                    .await
                    .context("literal not sent in time")??;
                line.literal_octets += len;
            }
            None => return Ok(line),
        }
    }
}

/// `{n}\r\n` (or `{n+}`, `~{n}`) at the end of a line: the literal's length.
fn literal_len(part: &[u8]) -> Option<usize> {
    let s = part
        .strip_suffix(b"\r\n")
        .or_else(|| part.strip_suffix(b"\n"))?;
    let s = s.strip_suffix(b"}")?;
    let open = s.iter().rposition(|&b| b == b'{')?;
    let digits = &s[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An IMAP quoted string.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

impl Client {
    /// Connects, reads the greeting, STARTTLS, and logs in.
    pub async fn login(
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        user: &str,
        password: &str,
    ) -> Result<Self> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .with_context(|| format!("connect to {addr} timed out"))?
            .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let mut plain = BufReader::new(tcp);
        let greeting = read_line(&mut plain).await?;
        if !greeting.bytes.starts_with(b"* OK") {
            bail!("greeting from {addr}: {}", greeting.text());
        }
        let mut disabled = greeting.text().contains("LOGINDISABLED");
        plain.get_mut().write_all(b"s1 CAPABILITY\r\n").await?;
        loop {
            let l = read_line(&mut plain).await?;
            if l.bytes.starts_with(b"s1 ") {
                break;
            }
            disabled |= l.text().contains("LOGINDISABLED");
        }
        plain.get_mut().write_all(b"s2 STARTTLS\r\n").await?;
        loop {
            let l = read_line(&mut plain).await?;
            if l.bytes.starts_with(b"s2 OK") {
                break;
            }
            if l.bytes.starts_with(b"s2 ") {
                bail!("STARTTLS refused: {}", l.text());
            }
        }
        if !plain.buffer().is_empty() {
            bail!("server sent data after its STARTTLS answer");
        }
        let tcp = plain.into_inner();
        let name = ServerName::try_from("imap.bench.test")?.to_owned();
        let tls_stream = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
        let (_, conn) = tls_stream.get_ref();
        let tls_desc = format!(
            "{:?} {:?}",
            conn.protocol_version()
                .map_or("?".into(), |v| format!("{v:?}")),
            conn.negotiated_cipher_suite()
                .map_or("?".into(), |s| format!("{:?}", s.suite()))
        )
        .replace('"', "");
        let mut c = Self {
            io: BufReader::with_capacity(64 * 1024, tls_stream),
            next_tag: 1,
            caps: Vec::new(),
            login_disabled_in_clear: disabled,
            tls: tls_desc,
        };
        let d = c
            .cmd(&format!("LOGIN {} {}", quote(user), quote(password)))
            .await?
            .ok("LOGIN")?;
        let caps_text = d
            .untagged
            .iter()
            .map(Line::text)
            .find(|t| t.starts_with("* CAPABILITY"))
            .unwrap_or_else(|| d.text.clone());
        c.caps = caps_text
            .replace(['[', ']'], " ")
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        if !c.caps.iter().any(|x| x == "IMAP4REV1") {
            let d = c.cmd("CAPABILITY").await?.ok("CAPABILITY")?;
            c.caps = d
                .untagged
                .iter()
                .flat_map(|l| {
                    l.text()
                        .split_whitespace()
                        .map(str::to_ascii_uppercase)
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        Ok(c)
    }

    fn tag(&mut self) -> String {
        let t = format!("b{}", self.next_tag);
        self.next_tag += 1;
        t
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.io.get_mut();
        tokio::time::timeout(READ_TIMEOUT, async {
            w.write_all(bytes).await?;
            w.flush().await
        })
        .await
        .context("write to the IMAP server timed out")??;
        Ok(())
    }

    /// Reads one response line (with its literals).
    pub async fn read(&mut self) -> Result<Line> {
        read_line(&mut self.io).await
    }

    async fn finish(&mut self, tag: &str) -> Result<Done> {
        let mut untagged = Vec::new();
        loop {
            let l = self.read().await?;
            if let Some(rest) = l.bytes.strip_prefix(tag.as_bytes()) {
                if let Some(rest) = rest.strip_prefix(b" ") {
                    let text = String::from_utf8_lossy(rest).trim_end().to_owned();
                    let (word, text) = text.split_once(' ').unwrap_or((&text, ""));
                    let status = match word.to_ascii_uppercase().as_str() {
                        "OK" => Status::Ok,
                        "NO" => Status::No,
                        "BAD" => Status::Bad,
                        _ => bail!("tagged response {tag} without a status: {}", l.text()),
                    };
                    return Ok(Done {
                        untagged,
                        status,
                        text: text.to_owned(),
                    });
                }
            }
            if l.bytes.starts_with(b"+") {
                bail!("unexpected continuation request: {}", l.text());
            }
            untagged.push(l);
        }
    }

    /// Sends one command (without tag or CRLF) and reads until its tagged answer.
    pub async fn cmd(&mut self, command: &str) -> Result<Done> {
        let tag = self.tag();
        self.write(format!("{tag} {command}\r\n").as_bytes())
            .await?;
        self.finish(&tag).await
    }

    /// Whether the server advertised a capability (after login).
    pub fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// `APPEND mailbox (flags) {n}` with `message`: a non-synchronizing
    /// literal when the server has LITERAL+, else waits for the `+`.
    pub async fn append(&mut self, mailbox: &str, flags: &str, message: &[u8]) -> Result<Done> {
        let tag = self.tag();
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" ({flags})")
        };
        let n = message.len();
        if self.has("LITERAL+") {
            let mut buf =
                format!("{tag} APPEND {}{flags} {{{n}+}}\r\n", quote(mailbox)).into_bytes();
            buf.extend_from_slice(message);
            buf.extend_from_slice(b"\r\n");
            self.write(&buf).await?;
        } else {
            self.write(format!("{tag} APPEND {}{flags} {{{n}}}\r\n", quote(mailbox)).as_bytes())
                .await?;
            let l = self.read().await?;
            if !l.bytes.starts_with(b"+") {
                bail!("APPEND: no continuation request: {}", l.text());
            }
            let mut buf = message.to_vec();
            buf.extend_from_slice(b"\r\n");
            self.write(&buf).await?;
        }
        self.finish(&tag).await
    }

    /// Starts IDLE; returns its tag once the server's `+` came (untagged
    /// responses before it are returned too).
    pub async fn idle(&mut self) -> Result<(String, Vec<Line>)> {
        let tag = self.tag();
        self.write(format!("{tag} IDLE\r\n").as_bytes()).await?;
        let mut before = Vec::new();
        loop {
            let l = self.read().await?;
            if l.bytes.starts_with(b"+") {
                return Ok((tag, before));
            }
            if l.bytes.starts_with(tag.as_bytes()) {
                bail!("IDLE refused: {}", l.text());
            }
            before.push(l);
        }
    }

    /// Ends IDLE started with `tag`.
    pub async fn idle_done(&mut self, tag: &str) -> Result<Done> {
        self.write(b"DONE\r\n").await?;
        self.finish(tag).await
    }

    /// LOGOUT (errors ignored: the connection is going anyway).
    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.cmd("LOGOUT")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_lengths_are_found_at_the_end_of_a_line_only() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {123}\r\n"), Some(123));
        assert_eq!(literal_len(b"a APPEND INBOX {5+}\r\n"), Some(5));
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] ~{7}\r\n"), Some(7));
        assert_eq!(literal_len(b"* OK {x}\r\n"), None);
        assert_eq!(literal_len(b"* OK {}\r\n"), None);
        assert_eq!(literal_len(b"* OK {12} more\r\n"), None);
        assert_eq!(literal_len(b"* 3 EXISTS\r\n"), None);
    }

    #[tokio::test]
    async fn a_response_with_two_literals_is_read_whole() {
        let data: &[u8] =
            b"* 1 FETCH (BODY[HEADER] {4}\r\nab\r\n BODY[TEXT] {3}\r\n{1})\r\n* 2 EXISTS\r\n";
        let mut r = BufReader::new(data);
        let l = read_line(&mut r).await.expect("line");
        assert_eq!(l.literal_octets, 7);
        assert!(l.bytes.ends_with(b"{1})\r\n"), "{:?}", l.text());
        assert_eq!(l.numbered().map(|(n, _)| n), Some(1));
        let l = read_line(&mut r).await.expect("line");
        assert_eq!(
            l.numbered().map(|(n, w)| (n, w.to_vec())),
            Some((2, b"EXISTS".to_vec()))
        );
        assert!(read_line(&mut r).await.is_err());
    }

    #[test]
    fn quoted_strings_escape_quotes_and_backslashes() {
        assert_eq!(quote(r#"a "b"\c"#), r#""a \"b\"\\c""#);
    }
}

//! `caliopen mail import --imap`: an IMAP client that copies every folder
//! of an account on another server (Dovecot, Gmail, a Caliopen instance).
//!
//! It speaks IMAP4rev1 (what every server offers), over TLS only (implicit,
//! or STARTTLS before anything is sent), logs in with `AUTHENTICATE PLAIN`
//! (or `LOGIN` when that is all the server offers), reads the folders with
//! `LIST` and their special use, and copies each selectable folder with
//! `EXAMINE` (read-only: nothing changes at the source) and `UID FETCH`
//! of `UID FLAGS INTERNALDATE BODY.PEEK[]` in chunks. After each chunk is
//! durable, the folder's `UIDVALIDITY` and highest copied UID are recorded
//! in the account (`import_mark`), so that the next run asks only for newer
//! UIDs; a changed `UIDVALIDITY` makes it read the folder again, and the
//! per-message keys (folder, digest and date) keep what was copied from
//! coming twice. Responses are cut and decoded by imap-codec.

use super::{digest, key_of, Importer, Item, TransferError};
use crate::admin::Op;
use crate::mail::Role;
use imap_codec::fragmentizer::Fragmentizer;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{FlagFetch, FlagNameAttribute};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response, Status, StatusKind};
use imap_codec::ResponseCodec;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `STARTTLS` on the plain port (143) before anything else.
    StartTls,
    /// TLS from the first byte (993).
    Tls,
}

/// Where to import from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login name.
    pub login: String,
    /// Password.
    pub password: String,
    /// How the connection is secured.
    pub security: Security,
    /// Trust anchors besides the web PKI (PEM), for a server with a
    /// private certificate authority.
    pub extra_roots: Option<Vec<u8>>,
    /// How long to wait for the server at any step.
    pub timeout: Duration,
    /// UIDs per `UID FETCH` (the unit of resumption).
    pub chunk: usize,
}

impl Source {
    /// The source's name in the account's import marks.
    pub fn id(&self) -> String {
        format!("imap://{}@{}:{}", self.login, self.host, self.port)
    }
}

/// The connection: plain until STARTTLS, then TLS.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What one server response says, in owned form.
#[derive(Debug)]
enum Event {
    /// A tagged completion.
    Done { tag: String, ok: bool, text: String },
    /// `+`: the server waits for more of the command.
    Continue,
    /// `* LIST`.
    List {
        attrs: Vec<String>,
        delimiter: Option<char>,
        name: String,
        /// The name as sent (what SELECT and EXAMINE must send back).
        wire: String,
    },
    /// `* CAPABILITY`, or a `[CAPABILITY …]` code.
    Capability(Vec<String>),
    /// `[UIDVALIDITY n]`.
    UidValidity(u32),
    /// `* n EXISTS`.
    Exists(u32),
    /// `* n FETCH`.
    Fetch(Fetched),
    /// `* BYE`.
    Bye(String),
    /// Anything else (ignored).
    Other,
}

/// One `FETCH` response.
#[derive(Debug, Default)]
struct Fetched {
    uid: Option<u32>,
    flags: Vec<String>,
    internal_date: Option<i64>,
    size: Option<u32>,
    body: Option<Vec<u8>>,
}

struct Client {
    io: Stream,
    frag: Fragmentizer,
    next_tag: u32,
    timeout: Duration,
    buf: Vec<u8>,
}

/// A mailbox's name decoded from modified UTF-7, and as the server sent it.
fn mailbox_name(m: &Mailbox<'_>) -> (String, String) {
    match m {
        Mailbox::Inbox => ("INBOX".into(), "INBOX".into()),
        Mailbox::Other(o) => {
            let raw = String::from_utf8_lossy(o.as_ref()).into_owned();
            (
                crate::imap::render::utf7_decode(&raw).unwrap_or(raw.clone()),
                raw,
            )
        }
    }
}

fn event_of(r: Response<'_>) -> Event {
    match r {
        Response::CommandContinuationRequest(_) => Event::Continue,
        Response::Status(Status::Tagged(t)) => Event::Done {
            tag: t.tag.as_ref().to_owned(),
            ok: t.body.kind == StatusKind::Ok,
            text: t.body.text.as_ref().to_owned(),
        },
        Response::Status(Status::Bye(b)) => Event::Bye(b.text.as_ref().to_owned()),
        Response::Status(Status::Untagged(b)) => match b.code {
            Some(Code::UidValidity(v)) => Event::UidValidity(v.get()),
            Some(Code::Capability(c)) => {
                Event::Capability(c.as_ref().iter().map(|c| c.to_string()).collect())
            }
            _ => Event::Other,
        },
        Response::Data(Data::Capability(c)) => {
            Event::Capability(c.as_ref().iter().map(|c| c.to_string()).collect())
        }
        Response::Data(Data::List {
            items,
            delimiter,
            mailbox,
        }) => {
            let (name, wire) = mailbox_name(&mailbox);
            Event::List {
                attrs: items
                    .iter()
                    .map(|a: &FlagNameAttribute<'_>| a.to_string())
                    .collect(),
                delimiter: delimiter.map(|d| d.inner()),
                name,
                wire,
            }
        }
        Response::Data(Data::Exists(n)) => Event::Exists(n),
        Response::Data(Data::Fetch { items, .. }) => Event::Fetch(fetched(items)),
        _ => Event::Other,
    }
}

fn fetched(items: Vec1<MessageDataItem<'_>>) -> Fetched {
    let mut f = Fetched::default();
    for i in items.into_iter() {
        match i {
            MessageDataItem::Uid(u) => f.uid = Some(u.get()),
            MessageDataItem::Flags(fl) => {
                f.flags = fl
                    .iter()
                    .filter_map(|x| match x {
                        FlagFetch::Flag(fl) => Some(fl.to_string()),
                        FlagFetch::Recent => None,
                    })
                    .collect()
            }
            MessageDataItem::InternalDate(d) => f.internal_date = Some(d.as_ref().timestamp()),
            MessageDataItem::Rfc822Size(s) => f.size = Some(s),
            MessageDataItem::BodyExt { data, .. } | MessageDataItem::Rfc822(data) => {
                f.body = data.0.map(|s| s.as_ref().to_vec())
            }
            _ => {}
        }
    }
    f
}

fn imap_err(e: impl std::fmt::Display) -> TransferError {
    TransferError::Imap(e.to_string())
}

/// A quoted IMAP string, if the text can be one.
fn quoted(s: &str) -> Result<String, TransferError> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(TransferError::Imap(
            "a login, password or folder name with a line break cannot be sent".into(),
        ));
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

impl Client {
    fn new(io: Stream, timeout: Duration) -> Self {
        Self {
            io,
            frag: Fragmentizer::new(
                (crate::admin::MAX_IMPORT_MESSAGE as u32).saturating_add(1 << 16),
            ),
            next_tag: 1,
            timeout,
            buf: vec![0; 64 * 1024],
        }
    }

    /// The next response.
    async fn next(&mut self) -> Result<Event, TransferError> {
        loop {
            if let Some(_f) = self.frag.progress() {
                if !self.frag.is_message_complete() {
                    continue;
                }
                if self.frag.is_max_message_size_exceeded() {
                    return Err(TransferError::Imap(format!(
                        "the server sent a response over {} bytes",
                        crate::admin::MAX_IMPORT_MESSAGE
                    )));
                }
                return match self.frag.decode_message(&ResponseCodec::default()) {
                    Ok(r) => Ok(event_of(r)),
                    Err(_) => {
                        let bytes = self.frag.message_bytes();
                        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
                            .trim_end()
                            .to_owned();
                        // A response we cannot read is fatal only when it
                        // could be mail; others (an odd untagged status) pass.
                        if head.contains("FETCH") || !head.starts_with('*') {
                            Err(TransferError::Imap(format!(
                                "cannot read the server's response {head:?}"
                            )))
                        } else {
                            tracing::warn!(response = %head, "unreadable IMAP response ignored");
                            Ok(Event::Other)
                        }
                    }
                };
            }
            let n = tokio::time::timeout(self.timeout, self.io.read(&mut self.buf))
                .await
                .map_err(|_| TransferError::Imap("the server did not answer in time".into()))?
                .map_err(imap_err)?;
            if n == 0 {
                return Err(TransferError::Imap(
                    "the server closed the connection".into(),
                ));
            }
            self.frag.enqueue_bytes(&self.buf[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), TransferError> {
        tokio::time::timeout(self.timeout, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| TransferError::Imap("the server did not take the command in time".into()))?
        .map_err(imap_err)
    }

    /// Sends a command and gathers its responses until its completion;
    /// a `NO` or `BAD` is an error naming the command.
    async fn run(&mut self, cmd: &str, what: &str) -> Result<Vec<Event>, TransferError> {
        let tag = self.start(cmd).await?;
        self.finish(&tag, what).await
    }

    /// Like [`Client::run`], with the server's `NO` or `BAD` text as the
    /// inner error (the session goes on).
    async fn try_run(&mut self, cmd: &str) -> Result<Result<Vec<Event>, String>, TransferError> {
        let tag = self.start(cmd).await?;
        self.collect(&tag, cmd.split(' ').next().unwrap_or(cmd))
            .await
    }

    async fn start(&mut self, cmd: &str) -> Result<String, TransferError> {
        let tag = format!("c{}", self.next_tag);
        self.next_tag += 1;
        self.send(format!("{tag} {cmd}\r\n").as_bytes()).await?;
        Ok(tag)
    }

    async fn finish(&mut self, tag: &str, what: &str) -> Result<Vec<Event>, TransferError> {
        self.collect(tag, what)
            .await?
            .map_err(|text| TransferError::Imap(format!("{what} refused: {text}")))
    }

    /// The responses until `tag`'s completion; a `NO` or `BAD` is the
    /// inner error, a `BYE` the outer one.
    async fn collect(
        &mut self,
        tag: &str,
        what: &str,
    ) -> Result<Result<Vec<Event>, String>, TransferError> {
        let mut out = Vec::new();
        loop {
            match self.next().await? {
                Event::Done { tag: t, ok, text } if t == tag => {
                    return Ok(if ok { Ok(out) } else { Err(text) });
                }
                Event::Bye(text) => {
                    return Err(TransferError::Imap(format!(
                        "the server closed the session during {what}: {text}"
                    )))
                }
                e => out.push(e),
            }
        }
    }
}

fn tls_config(extra: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, TransferError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra {
        let blocks = pem::parse_many(pem).map_err(|e| imap_err(format!("--ca: {e}")))?;
        let mut n = 0;
        for b in blocks {
            if b.tag() == "CERTIFICATE" {
                roots
                    .add(b.into_contents().into())
                    .map_err(|e| imap_err(format!("--ca: {e}")))?;
                n += 1;
            }
        }
        if n == 0 {
            return Err(imap_err("--ca: no certificate in the file"));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(imap_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

async fn connect(src: &Source) -> Result<Client, TransferError> {
    let addr = format!("{}:{}", src.host, src.port);
    let tcp = tokio::time::timeout(src.timeout, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| TransferError::Imap(format!("{addr}: no connection in time")))?
        .map_err(|e| TransferError::Imap(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(tls_config(src.extra_roots.as_deref())?);
    let name = rustls_pki_types::ServerName::try_from(src.host.clone())
        .map_err(|e| imap_err(format!("{}: {e}", src.host)))?;
    let handshake = |tcp| async {
        tokio::time::timeout(src.timeout, tls.connect(name.clone(), tcp))
            .await
            .map_err(|_| TransferError::Imap(format!("{addr}: TLS handshake timed out")))?
            .map_err(|e| {
                let hint = if e.to_string().contains("UnknownIssuer") {
                    " (a server with a private CA: name it with --ca FILE)"
                } else {
                    ""
                };
                TransferError::Imap(format!("{addr}: TLS: {e}{hint}"))
            })
    };
    let mut c = match src.security {
        Security::Tls => {
            let s = handshake(tcp).await?;
            let mut c = Client::new(Stream::Tls(Box::new(s)), src.timeout);
            greeting(&mut c).await?;
            c
        }
        Security::StartTls => {
            let mut plain = Client::new(Stream::Plain(tcp), src.timeout);
            greeting(&mut plain).await?;
            let tag = plain.start("STARTTLS").await?;
            plain.finish(&tag, "STARTTLS").await?;
            // The plain stream back; whatever the server sent after its
            // OK (a STARTTLS injection) is dropped with the old buffer.
            let Stream::Plain(tcp) = plain.io else {
                return Err(imap_err("STARTTLS on a connection already in TLS"));
            };
            let s = handshake(tcp).await?;
            Client::new(Stream::Tls(Box::new(s)), src.timeout)
        }
    };
    c.next_tag = 100;
    Ok(c)
}

async fn greeting(c: &mut Client) -> Result<(), TransferError> {
    loop {
        match c.next().await? {
            Event::Bye(t) => {
                return Err(TransferError::Imap(format!("the server refused us: {t}")))
            }
            Event::Other | Event::Capability(_) => return Ok(()),
            _ => continue,
        }
    }
}

/// A folder at the source.
#[derive(Debug, Clone)]
struct Folder {
    /// Its name as the server spells it (decoded from modified UTF-7).
    name: String,
    /// Its name as sent (for EXAMINE).
    wire: String,
    /// Its path here (`/`-separated).
    path: String,
    attrs: Vec<String>,
}

impl Folder {
    fn has(&self, attr: &str) -> bool {
        self.attrs.iter().any(|a| a.eq_ignore_ascii_case(attr))
    }

    /// The role its special-use attribute (RFC 6154) names.
    fn role(&self) -> Option<Role> {
        [
            ("\\Sent", Role::Sent),
            ("\\Drafts", Role::Drafts),
            ("\\Trash", Role::Trash),
            ("\\Junk", Role::Junk),
            ("\\Archive", Role::Archive),
        ]
        .into_iter()
        .find(|(a, _)| self.has(a))
        .map(|(_, r)| r)
    }
}

async fn login(c: &mut Client, src: &Source) -> Result<(), TransferError> {
    let caps: Vec<String> = c
        .run("CAPABILITY", "CAPABILITY")
        .await?
        .into_iter()
        .flat_map(|e| match e {
            Event::Capability(v) => v,
            _ => Vec::new(),
        })
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if caps.iter().any(|c| c == "AUTH=PLAIN") {
        use base64::Engine as _;
        let tag = c.start("AUTHENTICATE PLAIN").await?;
        loop {
            match c.next().await? {
                Event::Continue => break,
                Event::Done { tag: t, text, .. } if t == tag => {
                    return Err(TransferError::Imap(format!("login refused: {text}")))
                }
                Event::Bye(t) => return Err(TransferError::Imap(format!("login refused: {t}"))),
                _ => {}
            }
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", src.login, src.password));
        c.send(format!("{token}\r\n").as_bytes()).await?;
        return c.finish(&tag, "login").await.map(|_| ());
    }
    if caps.iter().any(|c| c == "LOGINDISABLED") {
        return Err(TransferError::Imap(
            "the server offers neither AUTH=PLAIN nor LOGIN".into(),
        ));
    }
    let cmd = format!("LOGIN {} {}", quoted(&src.login)?, quoted(&src.password)?);
    c.run(&cmd, "login").await.map(|_| ())
}

async fn folders(c: &mut Client) -> Result<Vec<Folder>, TransferError> {
    let mut out = Vec::new();
    for e in c.run("LIST \"\" \"*\"", "LIST").await? {
        if let Event::List {
            attrs,
            delimiter,
            name,
            wire,
        } = e
        {
            let path = match delimiter {
                Some(d) if d != '/' => name
                    .split(d)
                    .map(|p| p.replace('/', "-"))
                    .collect::<Vec<_>>()
                    .join("/"),
                _ => name.clone(),
            };
            out.push(Folder {
                name,
                wire,
                path,
                attrs,
            });
        }
    }
    // Parents before children (made with their own names), the inbox first.
    out.sort_by(|a, b| {
        (!a.name.eq_ignore_ascii_case("inbox"), &a.path)
            .cmp(&(!b.name.eq_ignore_ascii_case("inbox"), &b.path))
    });
    Ok(out)
}

/// Copies every selectable folder of `src` into the importer's account.
pub async fn import(imp: &mut Importer<'_>, src: &Source) -> Result<(), TransferError> {
    let mut c = connect(src).await?;
    login(&mut c, src).await?;
    let source = src.id();
    let marks = imp
        .runner()
        .run(
            &Op::ImportMarks {
                user: imp.user().to_owned(),
                source: source.clone(),
            },
            Vec::new(),
        )
        .await?
        .json;
    for f in folders(&mut c).await? {
        // Not a folder of messages, or a view of others (Gmail's All Mail,
        // Starred and Important hold copies of what the other folders hold).
        if [
            "\\Noselect",
            "\\NonExistent",
            "\\All",
            "\\Flagged",
            "\\Important",
        ]
        .iter()
        .any(|a| f.has(a))
        {
            continue;
        }
        let target = super::target_mailbox(&f.path, f.role());
        let mailbox = match imp.ensure(&target).await {
            Ok(m) => m,
            Err(TransferError::Store(crate::admin::RunError::Op(
                crate::admin::OpError::Invalid(why),
            ))) => {
                imp.summary
                    .skipped
                    .push(format!("folder {:?}: not made here: {why}", f.name));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut uid_validity = 0;
        let mut exists = 0;
        // A folder the server will not open is said and left; the others
        // are still copied.
        let examined = match c.try_run(&format!("EXAMINE {}", quoted(&f.wire)?)).await? {
            Ok(events) => events,
            Err(why) => {
                imp.summary.skipped.push(format!(
                    "folder {:?}: the server did not open it: {why}",
                    f.name
                ));
                continue;
            }
        };
        for e in examined {
            match e {
                Event::UidValidity(v) => uid_validity = v,
                Event::Exists(n) => exists = n,
                _ => {}
            }
        }
        // A server that gives no UIDVALIDITY (0 is not one) cannot be
        // resumed by UID: the folder is read again and the keys keep what
        // was copied from coming twice.
        let mark = &marks[f.name.as_str()];
        let from = match mark["last_uid"].as_u64() {
            Some(last)
                if uid_validity != 0
                    && mark["uid_validity"].as_u64() == Some(uid_validity.into()) =>
            {
                match u32::try_from(last).ok().and_then(|l| l.checked_add(1)) {
                    Some(n) => n,
                    // The folder's last UID is copied: nothing can come after.
                    None => {
                        imp.progress.tick(&imp.summary, &f.name, true);
                        continue;
                    }
                }
            }
            _ => 1,
        };
        if exists > 0 {
            copy_folder(&mut c, imp, src, &source, &f, &mailbox, from, uid_validity).await?;
        }
        let folder = f.name.clone();
        imp.progress.tick(&imp.summary, &folder, true);
    }
    let _ = c.run("LOGOUT", "LOGOUT").await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn copy_folder(
    c: &mut Client,
    imp: &mut Importer<'_>,
    src: &Source,
    source: &str,
    f: &Folder,
    mailbox: &str,
    from: u32,
    uid_validity: u32,
) -> Result<(), TransferError> {
    // The UIDs and sizes to copy, then the messages in chunks.
    let mut todo: Vec<(u32, u64)> = Vec::new();
    for e in c
        .run(
            &format!("UID FETCH {from}:* (UID RFC822.SIZE)"),
            "UID FETCH",
        )
        .await?
    {
        if let Event::Fetch(m) = e {
            if let Some(u) = m.uid.filter(|u| *u >= from) {
                let size = m.size.unwrap_or(0) as u64;
                if size > crate::admin::MAX_IMPORT_MESSAGE {
                    imp.summary.skipped.push(format!(
                        "folder {:?} UID {u}: {size} bytes, over the import limit of {}",
                        f.name,
                        crate::admin::MAX_IMPORT_MESSAGE
                    ));
                    continue;
                }
                todo.push((u, size));
            }
        }
    }
    todo.sort_unstable();
    todo.dedup_by_key(|t| t.0);
    let mut start = 0;
    while start < todo.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < todo.len()
            && end - start < src.chunk.max(1)
            && (end == start || bytes + todo[end].1 <= crate::admin::MAX_BATCH_BYTES / 2)
        {
            bytes += todo[end].1;
            end += 1;
        }
        let set: Vec<String> = todo[start..end]
            .iter()
            .map(|(u, _)| u.to_string())
            .collect();
        // Each message is handed on as it arrives (the server's sizes are
        // not trusted to bound the memory of a chunk).
        let tag = c
            .start(&format!(
                "UID FETCH {} (UID FLAGS INTERNALDATE BODY.PEEK[])",
                set.join(",")
            ))
            .await?;
        let mut got = std::collections::HashSet::new();
        loop {
            let m = match c.next().await? {
                Event::Done { tag: t, ok, text } if t == tag => {
                    if ok {
                        break;
                    }
                    return Err(TransferError::Imap(format!("UID FETCH refused: {text}")));
                }
                Event::Bye(text) => {
                    return Err(TransferError::Imap(format!(
                        "the server closed the session during UID FETCH: {text}"
                    )))
                }
                Event::Fetch(m) => m,
                _ => continue,
            };
            let (Some(uid), Some(raw)) = (m.uid, m.body) else {
                continue;
            };
            got.insert(uid);
            // Without an INTERNALDATE the key takes none (so that a run
            // again finds the same key) and the message is dated now.
            let keyed_date = m.internal_date.unwrap_or(0);
            let when = m.internal_date.unwrap_or_else(crate::store::now_unix);
            let keywords = m
                .flags
                .iter()
                .filter_map(|fl| super::flags::from_imap(fl))
                .collect();
            let d = digest(&raw);
            // Not the server's name or address: the same account reached
            // by another name is the same source.
            let key = key_of(&[b"imap", f.name.as_bytes(), &d, &keyed_date.to_be_bytes()]);
            imp.push(
                mailbox,
                Item {
                    raw,
                    keywords,
                    received_at: when,
                    key,
                    facts: None,
                },
            )
            .await?;
        }
        imp.flush().await?;
        // Asked for but not sent (expunged meanwhile, or a server that
        // would not give it): said, so that nothing goes missing unseen.
        for (u, _) in &todo[start..end] {
            if !got.contains(u) {
                imp.summary.skipped.push(format!(
                    "folder {:?} UID {u}: the server did not send it (expunged meanwhile?)",
                    f.name
                ));
            }
        }
        let last = todo[end - 1].0;
        imp.runner()
            .run(
                &Op::ImportMark {
                    user: imp.user().to_owned(),
                    source: source.to_owned(),
                    folder: f.name.clone(),
                    uid_validity,
                    last_uid: last,
                },
                Vec::new(),
            )
            .await?;
        start = end;
    }
    Ok(())
}

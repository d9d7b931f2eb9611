//! Setting an instance up, as `caliopen init` and `caliopen join` do: the
//! command-line tool only prints what these return.
//!
//! - [`init`] makes a new data directory: the configuration (written as
//!   TOML by the `toml` crate, parsed back before it is kept), the member
//!   key and its CSR for the association, a self-signed TLS pair for every
//!   listener until a real certificate replaces it, and DKIM keys.
//! - [`join`] checks the certificate the association issued — it carries a
//!   Caliopen label, matches the member key, and is signed by the given
//!   root (RFC 5280 §6.1.3 (a)(1)) — fetches the association's CRL and
//!   directory once, and adds the `[association]` section to the
//!   configuration.
//!
//! Every file goes through [`crate::files::write_atomic`].

use crate::config::Config;
use crate::files::{write_atomic, FileError, PrivateDirError};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why an instance could not be set up. `Input` is the operator's to fix
/// (a bad file given, a directory in use); the others are local failures
/// or the association's.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A file given, or the state found, is not what the step needs.
    #[error("{0}")]
    Input(String),
    /// The configuration file could not be read or does not parse.
    #[error(transparent)]
    Load(#[from] crate::config::ConfigError),
    /// The configuration that would be written does not parse (a bad
    /// domain or address given).
    #[error("{0}")]
    Config(String),
    /// The data directory is open to other users.
    #[error(transparent)]
    PrivateDir(#[from] PrivateDirError),
    /// A file or directory could not be read or made.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A key or request could not be made.
    #[error("key: {0}")]
    Key(#[from] rcgen::Error),
    /// The DKIM keys could not be made.
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    /// The association did not answer as it should (its CRL or directory).
    #[error("association {url}: {message}")]
    Association {
        /// The association's address.
        url: String,
        /// What went wrong.
        message: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(|source| SetupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// What `caliopen init` is asked for.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The new data directory (made 0700; an existing one must be private).
    pub data: PathBuf,
    /// The instance's first domain.
    pub domain: String,
    /// The MX listener.
    pub smtp: Option<SocketAddr>,
    /// The submission listener.
    pub submission: Option<SocketAddr>,
    /// The mesh listener.
    pub mesh: Option<SocketAddr>,
    /// Health and metrics (default 127.0.0.1:9925).
    pub metrics: Option<SocketAddr>,
    /// The client API.
    pub api: Option<SocketAddr>,
    /// IMAP.
    pub imap: Option<SocketAddr>,
    /// The web client.
    pub web: Option<SocketAddr>,
    /// An SMTP relay (`HOST:PORT`) for mail to the outside.
    pub relay: Option<String>,
}

/// The default health and metrics listener.
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9925);

/// What `caliopen init` made.
#[derive(Debug, Clone)]
pub struct Initialised {
    /// The domain, lower-cased.
    pub domain: String,
    /// The configuration file.
    pub config: PathBuf,
    /// The member CSR to send to the association.
    pub csr: PathBuf,
    /// The DKIM key directory.
    pub dkim: PathBuf,
}

fn table(entries: impl IntoIterator<Item = (&'static str, Option<String>)>) -> toml::Table {
    entries
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), toml::Value::String(v))))
        .collect()
}

/// The configuration `init` writes for `o` (every key is explained in
/// `deploy/caliopen.example.toml`).
pub fn config_text(o: &InitOptions) -> String {
    let domain = o.domain.to_ascii_lowercase();
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    let mut root = toml::Table::new();
    root.insert("data_dir".into(), ".".into());
    root.insert(
        "domains".into(),
        toml::Value::Array(vec![domain.clone().into()]),
    );
    root.insert("hostname".into(), format!("mx.{domain}").into());
    let sections = [
        (
            "smtp",
            table([
                ("listen", addr(o.smtp)),
                ("submission", addr(o.submission)),
                ("relay", o.relay.clone()),
            ]),
            true,
        ),
        ("mesh", table([("listen", addr(o.mesh))]), true),
        (
            "metrics",
            table([("listen", addr(Some(o.metrics.unwrap_or(DEFAULT_METRICS))))]),
            true,
        ),
        ("api", table([("listen", addr(o.api))]), false),
        ("imap", table([("listen", addr(o.imap))]), false),
        ("web", table([("listen", addr(o.web))]), false),
    ];
    for (name, t, always) in sections {
        if always || !t.is_empty() {
            root.insert(name.into(), toml::Value::Table(t));
        }
    }
    format!(
        "# Caliopen instance configuration; every key is explained in deploy/caliopen.example.toml.\n{}",
        toml::to_string(&root).unwrap_or_default()
    )
}

/// Makes a new instance's data directory (see the module documentation).
/// Refuses a directory that already holds a configuration.
pub fn init(o: &InitOptions) -> Result<Initialised, SetupError> {
    let domain = o.domain.to_ascii_lowercase();
    let data = &o.data;
    let cfg_path = data.join("caliopen.toml");
    if cfg_path.exists() {
        return Err(SetupError::Input(format!(
            "{} already exists",
            cfg_path.display()
        )));
    }
    if data.exists() {
        // An existing directory others can enter would expose the hashes and keys.
        crate::files::check_private_dir(data)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data)
        .map_err(|source| SetupError::Io {
            what: "create",
            path: data.clone(),
            source,
        })?;
    let text = config_text(o);
    // Refuse to write what we would refuse to read.
    Config::parse(&text).map_err(SetupError::Config)?;

    // The member key never leaves the instance; the CSR goes to the association.
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(vec![domain.clone()])?.serialize_request(&key)?;
    let csr_path = data.join("member.csr.pem");
    write_atomic(
        &data.join("member.key.pem"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomic(&csr_path, csr.pem()?.as_bytes(), 0o644)?;
    let (cert, tkey) = crate::daemon::self_signed_tls(&[
        format!("mx.{domain}"),
        domain.clone(),
        format!("mta-sts.{domain}"),
        format!("autoconfig.{domain}"),
        format!("autodiscover.{domain}"),
        "localhost".into(),
    ])?;
    write_atomic(&data.join("tls.key"), tkey.as_bytes(), 0o600)?;
    write_atomic(&data.join("tls.pem"), cert.as_bytes(), 0o644)?;
    crate::dkim::DkimKeys::open(data)?
        .ensure(std::slice::from_ref(&domain), crate::store::now_unix())?;
    // Last: a directory with a configuration is a finished one.
    write_atomic(&cfg_path, text.as_bytes(), 0o644)?;
    Ok(Initialised {
        domain,
        config: cfg_path,
        csr: csr_path,
        dkim: data.join("dkim"),
    })
}

/// What `caliopen join` is given.
#[derive(Debug, Clone, Copy)]
pub struct JoinOptions<'a> {
    /// The instance's configuration file.
    pub config: &'a Path,
    /// The association's root certificate (PEM).
    pub ca: &'a Path,
    /// The member certificate the association issued (PEM).
    pub cert: &'a Path,
    /// The association's service address.
    pub url: &'a str,
    /// The membership log's verifier key, to pin.
    pub log_key: Option<&'a Path>,
}

/// What `caliopen join` found.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The member id in the certificate's label.
    pub member: String,
    /// The directory serial fetched.
    pub directory_serial: u64,
    /// The CRL number fetched.
    pub crl_number: u64,
}

/// Checks that `cert_pem` is signed by `ca_pem`'s key (RFC 5280 §6.1.3
/// (a)(1): the signature verifies with the issuer's public key).
fn check_issued_by(cert_pem: &str, ca_pem: &str, o: &JoinOptions<'_>) -> Result<(), SetupError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad =
        |p: &Path, e: &dyn std::fmt::Display| SetupError::Input(format!("{}: {e}", p.display()));
    let root_der = pem::parse(ca_pem)
        .map_err(|e| bad(o.ca, &e))?
        .into_contents();
    let leaf_der = pem::parse(cert_pem)
        .map_err(|e| bad(o.cert, &e))?
        .into_contents();
    let (_, root) = X509Certificate::from_der(&root_der).map_err(|e| bad(o.ca, &e))?;
    let (_, leaf) = X509Certificate::from_der(&leaf_der).map_err(|e| bad(o.cert, &e))?;
    leaf.verify_signature(Some(root.public_key())).map_err(|_| {
        SetupError::Input(format!(
            "{} was not issued by {}",
            o.cert.display(),
            o.ca.display()
        ))
    })
}

/// Joins the association (see the module documentation). The
/// configuration is extended only once every check has passed.
pub async fn join(o: JoinOptions<'_>) -> Result<Joined, SetupError> {
    let cfg = Config::load(o.config)?;
    if cfg.association.is_some() {
        return Err(SetupError::Input(format!(
            "{} already names an association",
            o.config.display()
        )));
    }
    let log_key_text = match o.log_key {
        Some(p) => {
            let t = read("read", p)?;
            caliopen_federation::LogKey::parse(t.trim())
                .map_err(|e| SetupError::Input(format!("{}: {e}", p.display())))?;
            Some(format!("{}\n", t.trim()))
        }
        None => None,
    };
    let dir = cfg.data_dir();
    let ca_pem = read("read", o.ca)?;
    let cert_pem = read("read", o.cert)?;
    let key_pem = std::fs::read_to_string(dir.join("member.key.pem")).map_err(|e| {
        SetupError::Input(format!(
            "read the member key (run `caliopen init` first): {e}"
        ))
    })?;
    // The certificate must carry a label, chain to the given root, and match our key.
    let member = crate::mesh::member_id_of(&cert_pem)
        .map_err(|e| SetupError::Input(format!("{}: {e}", o.cert.display())))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    caliopen_federation::IdentitySlot::new()
        .set_pem(&cert_pem, &key_pem, &provider)
        .map_err(|e| SetupError::Input(format!("{}: {e}", o.cert.display())))?;
    check_issued_by(&cert_pem, &ca_pem, &o)?;
    // The association must answer: fetch its CRL and directory now.
    let association = |message: String| SetupError::Association {
        url: o.url.to_owned(),
        message,
    };
    let trust = caliopen_federation::TrustStore::new(
        &ca_pem,
        caliopen_federation::default_accepted_charters(),
    )
    .map_err(|e| SetupError::Input(format!("{}: {e}", o.ca.display())))?;
    let link = caliopen_federation::AssociationLink::new(o.url, ca_pem.clone());
    link.poll_once(&trust)
        .await
        .map_err(|e| association(e.to_string()))?;
    trust
        .save(&dir.join("trust"))
        .map_err(|e| association(format!("keeping its CRL and directory: {e}")))?;
    write_atomic(&dir.join("association-ca.pem"), ca_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join("member.pem"), cert_pem.as_bytes(), 0o644)?;
    // Appended, so that the operator's comments and layout stay as they are.
    let mut section = toml::Table::new();
    section.insert("url".into(), o.url.into());
    if let Some(k) = &log_key_text {
        write_atomic(&dir.join("association-log.pub"), k.as_bytes(), 0o644)?;
        section.insert("log_key".into(), "association-log.pub".into());
    }
    let mut appended = toml::Table::new();
    appended.insert("association".into(), toml::Value::Table(section));
    let mut text = read("read", o.config)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&toml::to_string(&appended).unwrap_or_default());
    Config::parse(&text).map_err(SetupError::Config)?;
    write_atomic(o.config, text.as_bytes(), 0o644)?;
    let st = trust.current();
    Ok(Joined {
        member,
        directory_serial: st.directory_serial(),
        crl_number: st.crl_number(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_written_reads_back_with_what_was_asked() {
        let o = InitOptions {
            data: "/nonexistent".into(),
            domain: "Example.ORG".into(),
            smtp: Some("127.0.0.1:2525".parse().unwrap()),
            submission: Some("127.0.0.1:2587".parse().unwrap()),
            imap: Some("[::1]:1143".parse().unwrap()),
            relay: Some("relay.example.net:25".into()),
            ..Default::default()
        };
        let text = config_text(&o);
        assert!(text.starts_with("# Caliopen instance configuration"));
        assert!(text.contains("domains = [\"example.org\"]\n"), "{text}");
        assert!(
            text.contains("relay = \"relay.example.net:25\"\n"),
            "{text}"
        );
        assert!(text.contains("[smtp]\n"), "{text}");
        assert!(!text.contains("[web]"), "{text}");
        let cfg = Config::parse(&text).expect("parses");
        assert_eq!(cfg.domains, vec!["example.org".to_owned()]);
        assert_eq!(cfg.hostname, "mx.example.org");
        assert_eq!(cfg.imap.listen, o.imap);
        // A value that needs quoting stays one value.
        let tricky = InitOptions {
            relay: Some("a\"b\nc:25".into()),
            ..o
        };
        let t = config_text(&tricky);
        let v: toml::Table = toml::from_str(t.trim_start_matches(|c| c != '\n')).expect("toml");
        assert_eq!(v["smtp"]["relay"].as_str(), Some("a\"b\nc:25"));
    }

    #[test]
    fn init_makes_a_private_directory_once() {
        let tmp = tempfile::tempdir().unwrap();
        let o = InitOptions {
            data: tmp.path().join("inst"),
            domain: "a.test".into(),
            ..Default::default()
        };
        let made = init(&o).expect("init");
        assert_eq!(made.domain, "a.test");
        for f in [
            "caliopen.toml",
            "member.key.pem",
            "member.csr.pem",
            "tls.key",
            "tls.pem",
        ] {
            assert!(o.data.join(f).is_file(), "{f}");
        }
        Config::load(&made.config).expect("loads");
        let again = init(&o).unwrap_err();
        assert!(again.to_string().ends_with("already exists"), "{again}");
    }
}

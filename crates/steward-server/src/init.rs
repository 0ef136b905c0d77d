//! `steward server init`: a data directory with the platform PKI, the listener certificates,
//! a documented configuration, the database and the first admin account.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use steward_pki::{OffsetDateTime, Thumbprint};
use steward_store::{PolicyRecord, SqliteStore, Store};

use crate::ServerError;
use crate::config::{self, Agents, Config, Crl, DataDir, Database, FIRST_ADMIN, Listen};
use crate::password::{self, MIN_PASSWORD_LEN};
use crate::pki::{Pki, write_cert, write_key, write_secret};
use crate::secret;
use crate::service::AGENT_SETTINGS;

/// What `init` is asked to set up.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data directory (created mode 0700 if absent; may exist empty).
    pub data_dir: PathBuf,
    /// Names agents use to reach the server (at least one).
    pub fqdns: Vec<String>,
    /// IP addresses to put in the agent-site certificate.
    pub ip_addrs: Vec<IpAddr>,
    /// The first admin's password; generated (24 characters) when `None`.
    pub admin_password: Option<String>,
    /// Agent-site listener; default `0.0.0.0:4726`.
    pub agent_addr: Option<SocketAddr>,
    /// Console listener; default `127.0.0.1:4727`.
    pub console_addr: Option<SocketAddr>,
    /// CRL listener; default `0.0.0.0:4728`. Its port must not be 0: it is written into every
    /// certificate.
    pub crl_addr: Option<SocketAddr>,
}

impl InitOptions {
    /// Defaults for everything but the directory and the names.
    pub fn new(data_dir: impl Into<PathBuf>, fqdns: Vec<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            fqdns,
            ip_addrs: Vec::new(),
            admin_password: None,
            agent_addr: None,
            console_addr: None,
            crl_addr: None,
        }
    }
}

/// What `init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// `steward.toml`.
    pub config_path: PathBuf,
    /// The first admin account's name (`admin`).
    pub admin_username: String,
    /// The generated password, when none was given. Shown once; only its hash is stored.
    pub generated_admin_password: Option<String>,
    /// The file holding a bearer token for the admin API (mode 0600).
    pub admin_token_path: PathBuf,
    /// The platform root certificate (the trust anchor agents receive).
    pub root_cert_path: PathBuf,
    /// SHA-256 thumbprint of the root (upper-case hex), to compare out of band.
    pub root_sha256: String,
    /// Names and addresses in the agent-site certificate.
    pub agent_site_names: Vec<String>,
    /// The CRL distribution point written into every certificate.
    pub crl_url: String,
}

fn mkdir_private(path: &Path) -> Result<(), ServerError> {
    std::fs::create_dir_all(path).map_err(|e| ServerError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ServerError::io(path, e))?;
    }
    Ok(())
}

/// Initialises a server data directory. Refuses a directory that already holds a server.
pub async fn init(opts: InitOptions) -> Result<InitReport, ServerError> {
    let cfg = Config {
        fqdns: opts.fqdns.clone(),
        ip_addrs: opts.ip_addrs.clone(),
        listen: Listen {
            agent: opts.agent_addr.unwrap_or(Listen::default().agent),
            console: opts.console_addr.unwrap_or(Listen::default().console),
            crl: opts.crl_addr.unwrap_or(Listen::default().crl),
            ..Listen::default()
        },
        database: Database::default(),
        agents: Agents::default(),
        crl: Crl::default(),
        auth: crate::config::Auth::default(),
        certs: Default::default(),
        limits: Default::default(),
    };
    cfg.validate().map_err(ServerError::InvalidOptions)?;
    if let Some(p) = &opts.admin_password
        && p.chars().count() < MIN_PASSWORD_LEN
    {
        return Err(ServerError::InvalidOptions(format!(
            "the admin password is shorter than {MIN_PASSWORD_LEN} characters"
        )));
    }

    let dir = DataDir::new(&opts.data_dir);
    for marker in [dir.config(), dir.root_cert(), dir.root_key()] {
        if marker.exists() {
            return Err(ServerError::AlreadyInitialised(opts.data_dir.clone()));
        }
    }
    mkdir_private(dir.root())?;
    mkdir_private(&dir.pki())?;
    mkdir_private(&dir.run())?;

    let now = OffsetDateTime::now_utc();
    let pki = Pki::create(&cfg, now)?;
    write_cert(&dir.root_cert(), pki.root.cert())?;
    write_key(&dir.root_key(), pki.root.key_pkcs8())?;
    write_cert(&dir.issuing_cert(), pki.issuing.cert())?;
    write_key(&dir.issuing_key(), pki.issuing.key_pkcs8())?;

    let crl_url = cfg.issuing_crl_url();
    let agent = pki.issue_listener(
        cfg.primary_name(),
        cfg.fqdns.clone(),
        cfg.ip_addrs.clone(),
        &crl_url,
        now,
    )?;
    write_cert(&dir.agent_cert(), &agent.cert)?;
    write_key(&dir.agent_key(), &agent.key_pkcs8)?;

    // The console listens on loopback by default and the CLI on this host reaches it there,
    // so its certificate always covers the loopback names too.
    let mut console_dns = cfg.fqdns.clone();
    if !console_dns
        .iter()
        .any(|n| n.eq_ignore_ascii_case("localhost"))
    {
        console_dns.push("localhost".to_owned());
    }
    let mut console_ips = cfg.ip_addrs.clone();
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        if !console_ips.contains(&ip) {
            console_ips.push(ip);
        }
    }
    let console =
        pki.issue_listener(cfg.primary_name(), console_dns, console_ips, &crl_url, now)?;
    write_cert(&dir.console_cert(), &console.cert)?;
    write_key(&dir.console_key(), &console.key_pkcs8)?;

    let store = SqliteStore::open(&dir.database(&cfg)).await?;
    store
        .ensure_policy(&PolicyRecord {
            name: AGENT_SETTINGS.to_owned(),
            target: "all".to_owned(),
            values: BTreeMap::new(),
            updated_at: now.unix_timestamp(),
        })
        .await?;
    let (password, generated) = match opts.admin_password {
        Some(p) => (p, false),
        None => (secret::new_password(24)?, true),
    };
    let pw = password.clone();
    let phc = tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))??;
    store.create_admin(FIRST_ADMIN, &phc).await?;
    store.close().await;

    let token = secret::new_token()?;
    write_secret(&dir.admin_token(), &format!("{token}\n"))?;

    // Written last: its presence is what marks the directory as initialised for `run`.
    let config_path = dir.config();
    write_secret(&config_path, &config::render(&cfg))?;

    let mut names = cfg.fqdns.clone();
    names.extend(cfg.ip_addrs.iter().map(ToString::to_string));
    tracing::info!(
        data_dir = %dir.root().display(),
        root_sha256 = %Thumbprint::of(pki.root.cert()).sha256_hex(),
        names = %names.join(","),
        "server initialised"
    );
    Ok(InitReport {
        data_dir: opts.data_dir,
        config_path,
        admin_username: FIRST_ADMIN.to_owned(),
        generated_admin_password: generated.then_some(password),
        admin_token_path: dir.admin_token(),
        root_cert_path: dir.root_cert(),
        root_sha256: Thumbprint::of(pki.root.cert()).sha256_hex(),
        agent_site_names: names,
        crl_url,
    })
}

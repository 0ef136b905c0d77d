//! The data directory's layout and `steward.toml`.
//!
//! Every key is documented next to its default in the file `init` writes ([`render`]); unknown
//! keys are refused, so a typo is named instead of silently ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use steward_proto::AgentSettings;

use crate::ServerError;

/// Default agent-site listener (all interfaces, ITMS's port).
pub const DEFAULT_AGENT_ADDR: &str = "0.0.0.0:4726";
/// Default console/admin API listener (loopback: exposing it is a decision).
pub const DEFAULT_CONSOLE_ADDR: &str = "127.0.0.1:4727";
/// Default CRL distribution point listener.
pub const DEFAULT_CRL_ADDR: &str = "0.0.0.0:4728";
/// Default plain-HTTP agent-site listener (used only with `protocol = "http"`).
pub const DEFAULT_AGENT_HTTP_ADDR: &str = "0.0.0.0:4729";
/// The local admin account `init` creates.
pub const FIRST_ADMIN: &str = "admin";

/// Where everything lives in a server's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `steward.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("steward.toml")
    }
    /// `pki/`: CA and listener certificates (PEM) and keys (PKCS#8 PEM, mode 0600).
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    /// `pki/root.crt`: the platform root CA, the trust anchor agents get.
    pub fn root_cert(&self) -> PathBuf {
        self.pki().join("root.crt")
    }
    /// `pki/root.key`.
    pub fn root_key(&self) -> PathBuf {
        self.pki().join("root.key")
    }
    /// `pki/issuing.crt`: the online issuing CA.
    pub fn issuing_cert(&self) -> PathBuf {
        self.pki().join("issuing.crt")
    }
    /// `pki/issuing.key`.
    pub fn issuing_key(&self) -> PathBuf {
        self.pki().join("issuing.key")
    }
    /// `pki/agent-site.crt`: the agent site's certificate (leaf only; the issuing CA is added
    /// when serving).
    pub fn agent_cert(&self) -> PathBuf {
        self.pki().join("agent-site.crt")
    }
    /// `pki/agent-site.key`.
    pub fn agent_key(&self) -> PathBuf {
        self.pki().join("agent-site.key")
    }
    /// `pki/console.crt`: the console/admin API certificate (leaf only).
    pub fn console_cert(&self) -> PathBuf {
        self.pki().join("console.crt")
    }
    /// `pki/console.key`.
    pub fn console_key(&self) -> PathBuf {
        self.pki().join("console.key")
    }
    /// `admin-token`: a bearer token for the admin API, for the CLI on this host (mode 0600).
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin-token")
    }
    /// `run/`: files describing the running server.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    /// `run/addresses.json`: the bound addresses of the running server.
    pub fn addresses(&self) -> PathBuf {
        self.run().join("addresses.json")
    }
    /// The database path from the configuration, relative paths taken from the data dir.
    pub fn database(&self, config: &Config) -> PathBuf {
        let p = Path::new(&config.database.path);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.root.join(p)
        }
    }
}

/// `steward.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names agents use to reach the server; all are in the agent-site certificate, the first
    /// is in every CRL distribution point.
    pub fqdns: Vec<String>,
    /// IP addresses in the agent-site certificate.
    #[serde(default)]
    pub ip_addrs: Vec<IpAddr>,
    /// Listeners.
    #[serde(default)]
    pub listen: Listen,
    /// Database.
    #[serde(default)]
    pub database: Database,
    /// Agent defaults.
    #[serde(default)]
    pub agents: Agents,
    /// CRL publication.
    #[serde(default)]
    pub crl: Crl,
    /// How admins (console, admin API) and, optionally, agents authenticate.
    #[serde(default)]
    pub auth: Auth,
    /// Certificate lifetimes and renewal (`[certs]`).
    #[serde(default)]
    pub certs: crate::lifecycle::Certs,
    /// Admission control on the agent site (`[limits]`).
    #[serde(default)]
    pub limits: crate::admission::Limits,
}

/// An authentication provider of `[auth] providers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// HTTP Negotiate (SPNEGO with Kerberos) against the keytab.
    Negotiate,
    /// Local accounts: `POST /api/v1/login`, the console's form, and HTTP Basic.
    Password,
}

impl Provider {
    /// The name used in config, logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Negotiate => "negotiate",
            Provider::Password => "password",
        }
    }
}

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything the admin API and console offer.
    Admin,
    /// Read only: GET requests; every change is refused with `AUTH-ROLE-FORBIDDEN`.
    Viewer,
}

impl Role {
    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Providers in the order a 401 offers them.
    pub providers: Vec<Provider>,
    /// Keytab holding `HTTP/<name>` for every name in `fqdns` (needed by `negotiate`).
    pub keytab: Option<PathBuf>,
    /// Authenticate once per TLS connection and keep the principal for the connection's later
    /// requests (IIS's `authPersistNonNTLM = true`), or authenticate every request.
    pub persist_per_connection: bool,
    /// Kerberos principal → role (`"alice@EXAMPLE.NET" = "admin"`). A principal not listed
    /// is authenticated but not authorised (403 `AUTH-PRINCIPAL-UNKNOWN`).
    pub roles: BTreeMap<String, Role>,
    /// Let agents on domain-joined hosts enroll with the host's Kerberos identity
    /// (`host/<fqdn>@REALM` from the system keytab) instead of a bootstrap token.
    pub agent_kerberos_enrollment: bool,
    /// Tags given to agents enrolled with Kerberos.
    pub agent_kerberos_tags: Vec<String>,
    /// An LDAP directory (`ldap://dc1.example.net`, `ldaps://dc1.example.net:636`) where
    /// `steward doctor kerberos` looks for duplicate SPNs.
    pub ldap_url: Option<String>,
    /// The search base of that check (`dc=example,dc=net`); needed with `ldap_url`.
    pub ldap_base: Option<String>,
    /// The name to bind as for the search (a DN, or `user@domain` on Active Directory);
    /// anonymous without it.
    pub ldap_bind_dn: Option<String>,
    /// A file whose first line is the bind password (relative: to the data directory).
    pub ldap_bind_password_file: Option<PathBuf>,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            providers: vec![Provider::Password],
            keytab: None,
            persist_per_connection: true,
            roles: BTreeMap::new(),
            agent_kerberos_enrollment: false,
            agent_kerberos_tags: Vec::new(),
            ldap_url: None,
            ldap_base: None,
            ldap_bind_dn: None,
            ldap_bind_password_file: None,
        }
    }
}

impl Auth {
    /// Whether `p` is configured.
    pub fn allows(&self, p: Provider) -> bool {
        self.providers.contains(&p)
    }

    /// Whether anything accepts Kerberos (the negotiate provider or agent enrollment).
    pub fn uses_kerberos(&self) -> bool {
        self.allows(Provider::Negotiate) || self.agent_kerberos_enrollment
    }

    /// The role of a Kerberos principal, if it has one.
    pub fn role_of(&self, principal: &str) -> Option<Role> {
        self.roles.get(principal).copied()
    }

    fn validate(&self) -> Result<(), String> {
        if self.providers.is_empty() {
            return Err("auth.providers is empty: nobody could log in".to_owned());
        }
        let mut seen = Vec::new();
        for p in &self.providers {
            if seen.contains(p) {
                return Err(format!("auth.providers lists {:?} twice", p.as_str()));
            }
            seen.push(*p);
        }
        if self.uses_kerberos()
            && self
                .keytab
                .as_ref()
                .is_none_or(|k| k.as_os_str().is_empty())
        {
            return Err(
                "auth.keytab is not set: the negotiate provider and Kerberos enrollment need the keytab with \
                 HTTP/<name> for every name in fqdns"
                    .to_owned(),
            );
        }
        for principal in self.roles.keys() {
            if !principal.contains('@') {
                return Err(format!(
                    "auth.roles: {principal:?} is not a Kerberos principal (name@REALM)"
                ));
            }
        }
        self.validate_ldap()
    }

    /// The directory of the duplicate-SPN check: all or nothing, and well-formed.
    fn validate_ldap(&self) -> Result<(), String> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let Some(url) = self.ldap_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            if set(&self.ldap_base)
                || set(&self.ldap_bind_dn)
                || self.ldap_bind_password_file.is_some()
            {
                return Err(
                    "auth.ldap_base, ldap_bind_dn and ldap_bind_password_file need \
                            auth.ldap_url (the directory to search)"
                        .to_owned(),
                );
            }
            return Ok(());
        };
        validate_ldap_url(url).map_err(|e| {
            format!(
                "auth.ldap_url {url:?} is not an LDAP URL: {e} (expected ldap://host[:port] or \
                 ldaps://host[:port])"
            )
        })?;
        match self.ldap_base.as_deref().filter(|b| !b.trim().is_empty()) {
            None => {
                return Err(format!(
                    "auth.ldap_base is not set: the duplicate-SPN search in {url} needs its base \
                     (the domain's DN, e.g. \"dc=example,dc=net\")"
                ));
            }
            Some(base) if !looks_like_dn(base) => {
                return Err(format!(
                    "auth.ldap_base {base:?} is not a DN (attribute=value pairs separated by \
                     commas, e.g. \"dc=example,dc=net\")"
                ));
            }
            Some(_) => {}
        }
        match (set(&self.ldap_bind_dn), &self.ldap_bind_password_file) {
            (true, None) => Err(
                "auth.ldap_bind_dn is set without auth.ldap_bind_password_file (a file whose \
                 first line is the password)"
                    .to_owned(),
            ),
            (false, Some(_)) => Err(
                "auth.ldap_bind_password_file is set without auth.ldap_bind_dn (the name to bind \
                 as); remove both to search anonymously"
                    .to_owned(),
            ),
            (true, Some(p)) if p.as_os_str().is_empty() => {
                Err("auth.ldap_bind_password_file is empty".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// `ldap://host[:port][/]` or `ldaps://…`; no search parameters in the URL (they have their
/// own settings).
fn validate_ldap_url(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("ldap://")
        .or_else(|| lower.strip_prefix("ldaps://"))
        .ok_or("the scheme must be ldap:// or ldaps://")?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains(['/', '?', '#', ' ']) {
        return Err("put the search base in auth.ldap_base, not in the URL".to_owned());
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an IPv6 address lacks its ']'")?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n != 0)
    {
        return Err(format!("the port {p:?} is not a number from 1 to 65535"));
    }
    Ok(())
}

/// Whether `dn` is attribute=value pairs separated by commas (escaped commas allowed).
fn looks_like_dn(dn: &str) -> bool {
    let mut rdns = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in dn.chars() {
        match c {
            ',' if !escaped => rdns.push(std::mem::take(&mut cur)),
            '\\' if !escaped => {
                escaped = true;
                cur.push(c);
                continue;
            }
            _ => cur.push(c),
        }
        escaped = false;
    }
    rdns.push(cur);
    rdns.iter().all(|r| {
        r.split_once('=')
            .is_some_and(|(a, v)| !a.trim().is_empty() && !v.trim().is_empty())
    })
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// Agent site (mutual TLS).
    pub agent: SocketAddr,
    /// Console and admin API (HTTPS).
    pub console: SocketAddr,
    /// CRL distribution point (HTTP).
    pub crl: SocketAddr,
    /// How agents on the LAN talk to the agent site: `https` (default) or `http` (plain
    /// HTTP on [`Listen::agent_http`] next to the HTTPS site, requests and answers signed).
    pub protocol: steward_proto::Protocol,
    /// Plain-HTTP agent site, bound only with `protocol = "http"`.
    pub agent_http: SocketAddr,
}

fn addr(s: &str) -> SocketAddr {
    // The defaults are literals of this file; a parse failure would be a typo caught by the
    // unit test, and the unspecified address is a safe stand-in.
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            agent: addr(DEFAULT_AGENT_ADDR),
            console: addr(DEFAULT_CONSOLE_ADDR),
            crl: addr(DEFAULT_CRL_ADDR),
            protocol: steward_proto::Protocol::Https,
            agent_http: addr(DEFAULT_AGENT_HTTP_ADDR),
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// SQLite file, relative to the data directory unless absolute.
    pub path: String,
}

impl Default for Database {
    fn default() -> Self {
        Self {
            path: "steward.db".to_owned(),
        }
    }
}

/// `[agents]`: the site defaults of the built-in agent-settings policy, and the grace period.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agents {
    /// Seconds between check-ins.
    pub checkin_interval_secs: u64,
    /// Random spread of the interval, percent.
    pub jitter_percent: u8,
    /// How long a long-poll waits for work.
    pub long_poll_secs: u64,
    /// Task output kept per task.
    pub task_output_max_bytes: u64,
    /// Seconds beyond two check-in intervals before a device is shown Offline.
    pub online_grace_secs: u64,
}

impl Default for Agents {
    fn default() -> Self {
        let d = AgentSettings::default();
        Self {
            checkin_interval_secs: d.checkin_interval_secs,
            jitter_percent: d.jitter_percent,
            long_poll_secs: d.long_poll_secs,
            task_output_max_bytes: d.task_output_max_bytes,
            online_grace_secs: 30,
        }
    }
}

impl Agents {
    /// As agent settings.
    pub fn settings(&self) -> AgentSettings {
        AgentSettings {
            checkin_interval_secs: self.checkin_interval_secs,
            jitter_percent: self.jitter_percent,
            long_poll_secs: self.long_poll_secs,
            task_output_max_bytes: self.task_output_max_bytes,
            ..AgentSettings::default()
        }
    }
}

/// `[crl]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Crl {
    /// Seconds between re-signings.
    pub resign_interval_secs: u64,
    /// Seconds from a CRL's thisUpdate to its nextUpdate.
    pub validity_secs: u64,
}

impl Default for Crl {
    fn default() -> Self {
        Self {
            resign_interval_secs: 3600,
            validity_secs: 2 * 24 * 3600,
        }
    }
}

/// Limits for the agent settings, shared by the config file and the agent-settings policy.
pub(crate) mod limits {
    /// Check-in interval: at least 5 s (tests, demos), at most a day.
    pub(crate) const INTERVAL: (u64, u64) = (5, 86_400);
    /// Jitter percent.
    pub(crate) const JITTER: (u64, u64) = (0, 100);
    /// Long-poll: at least 1 s, at most 10 minutes (proxies cut idle connections).
    pub(crate) const LONG_POLL: (u64, u64) = (1, 600);
    /// Task output: 1 KiB to half the agent body limit (room for several results a batch).
    pub(crate) const OUTPUT: (u64, u64) = (1024, (steward_proto::MAX_AGENT_BODY_BYTES / 2) as u64);
}

fn in_range(key: &str, v: u64, (lo, hi): (u64, u64)) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{key} = {v} is out of range ({lo} to {hi})"));
    }
    Ok(())
}

/// Checks agent settings against [`limits`].
pub(crate) fn validate_settings(s: &AgentSettings) -> Result<(), String> {
    in_range(
        "checkin_interval_secs",
        s.checkin_interval_secs,
        limits::INTERVAL,
    )?;
    in_range(
        "jitter_percent",
        u64::from(s.jitter_percent),
        limits::JITTER,
    )?;
    in_range("long_poll_secs", s.long_poll_secs, limits::LONG_POLL)?;
    in_range(
        "task_output_max_bytes",
        s.task_output_max_bytes,
        limits::OUTPUT,
    )?;
    Ok(())
}

/// Checks a DNS name for the certificate and profile: letters, digits, hyphens and dots,
/// labels of 1–63 characters, no leading or trailing hyphen. A leading `*.` is refused: agents
/// need a concrete name to connect to.
pub(crate) fn validate_fqdn(name: &str) -> Result<(), String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(ok_label) {
        return Err(format!(
            "{name:?} is not a DNS name (letters, digits, hyphens, dots; no wildcard)"
        ));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address: give it as an IP address, not a name"
        ));
    }
    Ok(())
}

impl Config {
    /// Reads and validates `steward.toml`.
    pub fn load(dir: &DataDir) -> Result<Self, ServerError> {
        let path = dir.config();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ServerError::NotInitialised(dir.root().to_owned()));
            }
            Err(e) => return Err(ServerError::io(&path, e)),
        };
        let cfg: Config = toml::from_str(&text).map_err(|e| ServerError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        cfg.validate()
            .map_err(|reason| ServerError::Config { path, reason })?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.fqdns.is_empty() {
            return Err(
                "fqdns is empty: agents need at least one name to reach the server".to_owned(),
            );
        }
        for f in &self.fqdns {
            validate_fqdn(f).map_err(|e| format!("fqdns: {e}"))?;
        }
        if self.listen.crl.port() == 0 {
            return Err(
                "listen.crl has port 0: the CRL port is written into every certificate and \
                 must be fixed"
                    .to_owned(),
            );
        }
        if self.listen.protocol == steward_proto::Protocol::Http
            && self.listen.agent_http.port() == self.listen.agent.port()
            && self.listen.agent_http.port() != 0
        {
            return Err(format!(
                "listen.agent_http and listen.agent both use port {}: the plain-HTTP agent \
                 site needs a port of its own (the HTTPS one stays up for gateways and as the \
                 fallback)",
                self.listen.agent.port()
            ));
        }
        validate_settings(&self.agents.settings()).map_err(|e| format!("agents.{e}"))?;
        if self.crl.resign_interval_secs < 60 {
            return Err("crl.resign_interval_secs must be at least 60".to_owned());
        }
        if self.crl.validity_secs < 2 * self.crl.resign_interval_secs {
            return Err(
                "crl.validity_secs must be at least twice crl.resign_interval_secs, so a CRL \
                 is replaced well before it goes stale"
                    .to_owned(),
            );
        }
        if self.database.path.is_empty() {
            return Err("database.path is empty".to_owned());
        }
        self.auth.validate()?;
        self.certs.validate()?;
        self.limits.validate()?;
        Ok(())
    }

    /// The CRL distribution point of the issuing CA, written into every certificate it issues.
    pub fn issuing_crl_url(&self) -> String {
        self.crl_url("issuing.crl")
    }

    /// The CRL distribution point of the root CA, written into the issuing CA's certificate.
    pub fn root_crl_url(&self) -> String {
        self.crl_url("root.crl")
    }

    fn crl_url(&self, file: &str) -> String {
        format!(
            "http://{}:{}/crl/{file}",
            self.primary_name(),
            self.listen.crl.port()
        )
    }

    /// The first configured name: the host of CRL URLs and the listener certificates' CN.
    /// (`validate` guarantees there is one; `localhost` stands in otherwise.)
    pub fn primary_name(&self) -> &str {
        self.fqdns.first().map_or("localhost", String::as_str)
    }
}

fn toml_str(s: &str) -> String {
    // Names and paths here are plain; escape the two characters that end a basic string.
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The documented `steward.toml` for these values.
pub(crate) fn render(cfg: &Config) -> String {
    let ips: Vec<String> = cfg.ip_addrs.iter().map(ToString::to_string).collect();
    let d = Agents::default();
    let c = Crl::default();
    format!(
        r#"# Steward server configuration, written by `steward server init`.
# Every key is shown with its value; the comment above it gives the default. Unknown keys are
# an error (SERVER-CONFIG-INVALID), so a typo never goes unnoticed. Check a change with
# `steward server run --data-dir DIR --check-config` before restarting.

# Names agents use to reach this server (tried in order). Every name is a subjectAltName of the
# agent-site certificate; the first is the host of every CRL distribution point. Changing them
# needs a new agent-site certificate. Required; no default.
fqdns = {fqdns}

# IP addresses in the agent-site certificate, for agents that connect by address.
# Default: [] (none).
ip_addrs = {ips}

[listen]
# Agent site: enrollment and check-ins, TLS with client certificates.
# Default: "{agent_d}"
agent = "{agent}"
# Console and admin API (HTTPS, its own certificate). Loopback by default: exposing the
# console is a decision.
# Default: "{console_d}"
console = "{console}"
# CRL distribution point (plain HTTP, as CRLs are signed). Its port is written into every
# certificate the platform CA issues, so it must be fixed (not 0) and reachable by agents.
# Default: "{crl_d}"
crl = "{crl}"
# How agents on the LAN reach the agent site: "https" or "http". With "http" the server also
# serves the agent routes in plain HTTP on agent_http below, and agents on the LAN use it
# (falling back to the HTTPS site). WARNING: inventory and task output then cross the LAN
# readable by anyone on it (identity and integrity still hold: every request is signed with
# the agent's certificate key, every answer with the agent site's key). Enrollment, gateways
# and agents that come through a gateway always use HTTPS; the HTTPS site stays up.
# Switching either way is this line and a restart: agents follow at their next check-in.
# Default: "https"
protocol = "{protocol}"
# Plain-HTTP agent site (bound only with protocol = "http"). Default: "{agent_http_d}"
agent_http = "{agent_http}"

[database]
# SQLite database file, relative to the data directory unless absolute.
# Default: "steward.db"
path = {db}

[agents]
# Site defaults of the built-in `agent-settings` policy. Values set in that policy (admin API
# or console) override these for the devices it targets.
# Seconds between check-ins ({il} to {ih}). Default: {interval}
checkin_interval_secs = {c_interval}
# Random spread added to each interval, percent of it, so agents do not synchronise.
# Default: {jitter}
jitter_percent = {c_jitter}
# Seconds a long-poll waits for work before the server answers "nothing" ({ll} to {lh}).
# Default: {long_poll}
long_poll_secs = {c_long_poll}
# Task output kept per task, in bytes; the rest is cut and flagged. Default: {output}
task_output_max_bytes = {c_output}
# A device is Online while its last check-in is younger than two check-in intervals plus this
# many seconds. Default: {grace}
online_grace_secs = {c_grace}

[crl]
# Seconds between re-signings of the CRLs. Default: {resign}
resign_interval_secs = {c_resign}
# Seconds from a CRL's thisUpdate to its nextUpdate (at least twice the re-signing interval).
# Default: {validity}
validity_secs = {c_validity}

{limits}
[auth]
# How admins authenticate to the console and admin API, in the order a 401 offers them:
# "negotiate" (Kerberos via SPNEGO, with the keytab below) and "password" (local accounts:
# POST /api/v1/login, the console's form, HTTP Basic). NTLM is not supported (docs/kerberos.md).
# Default: ["password"]
providers = {providers}
# Keytab with HTTP/<name>@REALM for every name in fqdns (needed by "negotiate"). The server
# runs with KRB5_KTNAME set to it. Check it with `steward doctor kerberos`. Default: none.
{keytab}
# true: authenticate once per TLS connection and keep the principal for that connection's later
# requests (IIS's authPersistNonNTLM = True); false: authenticate every request. Default: true
persist_per_connection = {persist}
# Let agents on domain-joined hosts enroll with host/<fqdn>@REALM from their system keytab
# (`steward-agent enroll --kerberos`) instead of a bootstrap token. Default: false
agent_kerberos_enrollment = {agent_krb}
# Tags given to agents enrolled that way. Default: []
agent_kerberos_tags = {agent_tags}
# An LDAP directory where `steward doctor kerberos` looks for duplicate SPNs: it searches
# (servicePrincipalName=HTTP/<name>) under ldap_base for every name in fqdns, and names every
# object holding one (KRB-DUPLICATE-SPN). ldap://host[:port] or ldaps://host[:port] (TLS, checked
# against the system's roots). Without it the check is reported as not done. Default: none.
{ldap}
# The search base: the domain's DN. Needed with ldap_url. Default: none.
{ldap_base}
# Bind for that search (Active Directory refuses anonymous searches): a DN or user@domain, and
# a file whose first line is its password (mode 0600; relative: to the data directory).
# Default: anonymous.
{ldap_bind_dn}
{ldap_pw}

# Kerberos principal -> role ("admin": everything; "viewer": read only). A principal not
# listed is authenticated but not authorised (403 AUTH-PRINCIPAL-UNKNOWN). Default: none.
[auth.roles]
{roles}"#,
        fqdns = toml_list(&cfg.fqdns),
        ips = toml_list(&ips),
        agent_d = DEFAULT_AGENT_ADDR,
        console_d = DEFAULT_CONSOLE_ADDR,
        crl_d = DEFAULT_CRL_ADDR,
        agent = cfg.listen.agent,
        console = cfg.listen.console,
        crl = cfg.listen.crl,
        protocol = match cfg.listen.protocol {
            steward_proto::Protocol::Https => "https",
            steward_proto::Protocol::Http => "http",
        },
        agent_http_d = DEFAULT_AGENT_HTTP_ADDR,
        agent_http = cfg.listen.agent_http,
        db = toml_str(&cfg.database.path),
        il = limits::INTERVAL.0,
        ih = limits::INTERVAL.1,
        ll = limits::LONG_POLL.0,
        lh = limits::LONG_POLL.1,
        interval = d.checkin_interval_secs,
        jitter = d.jitter_percent,
        long_poll = d.long_poll_secs,
        output = d.task_output_max_bytes,
        grace = d.online_grace_secs,
        c_interval = cfg.agents.checkin_interval_secs,
        c_jitter = cfg.agents.jitter_percent,
        c_long_poll = cfg.agents.long_poll_secs,
        c_output = cfg.agents.task_output_max_bytes,
        c_grace = cfg.agents.online_grace_secs,
        resign = c.resign_interval_secs,
        validity = c.validity_secs,
        c_resign = cfg.crl.resign_interval_secs,
        c_validity = cfg.crl.validity_secs,
        limits = cfg.limits.render(),
        providers = toml_list(
            &cfg.auth
                .providers
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect::<Vec<_>>()
        ),
        keytab = match &cfg.auth.keytab {
            Some(k) => format!("keytab = {}", toml_str(&k.display().to_string())),
            None => "# keytab = \"/etc/steward/http.keytab\"".to_owned(),
        },
        persist = cfg.auth.persist_per_connection,
        agent_krb = cfg.auth.agent_kerberos_enrollment,
        agent_tags = toml_list(&cfg.auth.agent_kerberos_tags),
        ldap = match &cfg.auth.ldap_url {
            Some(u) => format!("ldap_url = {}", toml_str(u)),
            None => "# ldap_url = \"ldap://dc1.example.net\"".to_owned(),
        },
        ldap_base = match &cfg.auth.ldap_base {
            Some(b) => format!("ldap_base = {}", toml_str(b)),
            None => "# ldap_base = \"dc=example,dc=net\"".to_owned(),
        },
        ldap_bind_dn = match &cfg.auth.ldap_bind_dn {
            Some(d) => format!("ldap_bind_dn = {}", toml_str(d)),
            None =>
                "# ldap_bind_dn = \"cn=steward-reader,ou=services,dc=example,dc=net\"".to_owned(),
        },
        ldap_pw = match &cfg.auth.ldap_bind_password_file {
            Some(p) => format!(
                "ldap_bind_password_file = {}",
                toml_str(&p.display().to_string())
            ),
            None => "# ldap_bind_password_file = \"/etc/steward/ldap-password\"".to_owned(),
        },
        roles = if cfg.auth.roles.is_empty() {
            "# \"alice@EXAMPLE.NET\" = \"admin\"\n".to_owned()
        } else {
            cfg.auth
                .roles
                .iter()
                .map(|(p, r)| format!("{} = \"{}\"\n", toml_str(p), r.as_str()))
                .collect::<String>()
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Config {
        Config {
            fqdns: vec!["smp.example.net".into(), "localhost".into()],
            ip_addrs: vec!["127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))],
            listen: Listen::default(),
            database: Database::default(),
            agents: Agents::default(),
            crl: Crl::default(),
            auth: Auth::default(),
            certs: Default::default(),
            limits: Default::default(),
        }
    }

    #[test]
    fn the_agent_site_protocol_round_trips_and_needs_its_own_port() {
        let mut cfg = sample();
        assert_eq!(cfg.listen.protocol, steward_proto::Protocol::Https);
        assert_eq!(cfg.listen.agent_http.port(), 4729);
        cfg.listen.protocol = steward_proto::Protocol::Http;
        let text = render(&cfg);
        assert!(text.contains("protocol = \"http\""), "{text}");
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg);
        assert!(cfg.validate().is_ok());
        cfg.listen.agent_http = cfg.listen.agent;
        assert!(cfg.validate().unwrap_err().contains("port of its own"));
        // A configuration written before the setting existed reads as https.
        let old = text
            .lines()
            .filter(|l| !l.starts_with("protocol =") && !l.starts_with("agent_http ="))
            .collect::<Vec<_>>()
            .join("\n");
        let back: Config = toml::from_str(&old).unwrap_or_else(|e| panic!("{e}\n{old}"));
        assert_eq!(back.listen.protocol, steward_proto::Protocol::Https);
        let err = toml::from_str::<Config>(&text.replace("\"http\"", "\"ftp\""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ftp"), "{err}");
    }

    #[test]
    fn rendered_config_parses_back_to_itself() {
        let cfg = sample();
        assert_eq!(Listen::default().agent.port(), 4726);
        let text = render(&cfg);
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg);
        assert_eq!(
            cfg.issuing_crl_url(),
            "http://smp.example.net:4728/crl/issuing.crl"
        );
    }

    #[test]
    fn the_auth_section_round_trips_and_is_validated() {
        let mut cfg = sample();
        assert_eq!(cfg.auth.providers, vec![Provider::Password]);
        assert!(cfg.auth.persist_per_connection);
        cfg.auth.providers = vec![Provider::Negotiate, Provider::Password];
        cfg.auth.keytab = Some(PathBuf::from("/etc/steward/http.keytab"));
        cfg.auth.persist_per_connection = false;
        cfg.auth
            .roles
            .insert("alice@EXAMPLE.NET".into(), Role::Admin);
        cfg.auth
            .roles
            .insert("bob@EXAMPLE.NET".into(), Role::Viewer);
        let text = render(&cfg);
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg);
        assert_eq!(back.auth.role_of("alice@EXAMPLE.NET"), Some(Role::Admin));
        assert_eq!(back.auth.role_of("mallory@EXAMPLE.NET"), None);
        assert!(cfg.validate().is_ok());

        let mut bad = cfg.clone();
        bad.auth.keytab = None;
        assert!(bad.validate().unwrap_err().contains("auth.keytab"));
        let mut bad = cfg.clone();
        bad.auth.providers = vec![];
        assert!(bad.validate().unwrap_err().contains("empty"));
        let mut bad = cfg.clone();
        bad.auth.providers = vec![Provider::Password, Provider::Password];
        assert!(bad.validate().unwrap_err().contains("twice"));
        let mut bad = cfg.clone();
        bad.auth.roles.insert("alice".into(), Role::Admin);
        assert!(bad.validate().unwrap_err().contains("name@REALM"));

        // The duplicate-SPN directory: round-trips, and bad values are named.
        cfg.auth.ldap_url = Some("ldaps://dc1.example.net:636".into());
        cfg.auth.ldap_base = Some("dc=example,dc=net".into());
        cfg.auth.ldap_bind_dn = Some("cn=reader\\, steward,dc=example,dc=net".into());
        cfg.auth.ldap_bind_password_file = Some(PathBuf::from("ldap-password"));
        assert_eq!(cfg.validate(), Ok(()));
        let text = render(&cfg);
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, cfg);
        for (change, words) in [
            (
                (|a: &mut Auth| a.ldap_url = Some("http://dc1".into())) as fn(&mut Auth),
                "ldap://",
            ),
            (
                |a| a.ldap_url = Some("ldap://dc1/dc=example,dc=net".into()),
                "ldap_base",
            ),
            (|a| a.ldap_url = Some("ldap://dc1:99999".into()), "port"),
            (|a| a.ldap_url = Some("ldap://:389".into()), "no host"),
            (|a| a.ldap_base = None, "ldap_base is not set"),
            (|a| a.ldap_base = Some("example.net".into()), "not a DN"),
            (
                |a| a.ldap_bind_password_file = None,
                "without auth.ldap_bind_password_file",
            ),
            (|a| a.ldap_bind_dn = None, "without auth.ldap_bind_dn"),
            (|a| a.ldap_url = None, "need auth.ldap_url"),
        ] {
            let mut bad = cfg.clone();
            change(&mut bad.auth);
            let e = bad.validate().unwrap_err();
            assert!(e.contains(words), "{words}: {e}");
        }
        let mut anon = cfg.clone();
        anon.auth.ldap_url = Some("ldap://127.0.0.1:3389".into());
        anon.auth.ldap_bind_dn = None;
        anon.auth.ldap_bind_password_file = None;
        assert_eq!(anon.validate(), Ok(()));
        let err = toml::from_str::<Config>(&text.replace("\"negotiate\"", "\"ntlm\""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ntlm"), "{err}");
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let text = render(&sample()).replace("long_poll_secs", "long_pol_secs");
        let err = toml::from_str::<Config>(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("long_pol_secs"), "{err}");
        let mut cfg = sample();
        cfg.agents.checkin_interval_secs = 1;
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("checkin_interval_secs")
        );
        let mut cfg = sample();
        cfg.listen.crl = "0.0.0.0:0".parse().unwrap_or(cfg.listen.crl);
        assert!(cfg.validate().unwrap_err().contains("port 0"));
        assert!(validate_fqdn("*.example.net").is_err());
        assert!(validate_fqdn("127.0.0.1").is_err());
        assert!(validate_fqdn("a-b.example").is_ok());
    }
}

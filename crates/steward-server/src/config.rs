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
    /// An LDAP directory (`ldap://dc1.example.net`) where `steward doctor kerberos` would look
    /// for duplicate SPNs.
    pub ldap_url: Option<String>,
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
        Ok(())
    }
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
# An LDAP directory where `steward doctor kerberos` would look for duplicate SPNs (the check is
# reported as not done without one). Default: none.
{ldap}

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
        }
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
        let mut bad = cfg;
        bad.auth.roles.insert("alice".into(), Role::Admin);
        assert!(bad.validate().unwrap_err().contains("name@REALM"));
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

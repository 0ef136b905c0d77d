//! `steward doctor kerberos`: gathers the evidence for the server's Kerberos setup — the
//! keytab, krb5.conf, the KDC (reachability and clock), name resolution, and a service ticket
//! from the caller's credential cache (the `klist` check, which also gives the KDC's key
//! version), and with an LDAP directory the holders of each `HTTP/<name>` (duplicate SPNs) —
//! and prints the findings of `steward_kerberos::doctor`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use steward_kerberos::doctor::{
    DEFAULT_MAX_SKEW_SECS, KerberosEvidence, KerberosReport, KeytabRead, LdapEvidence, TicketProbe,
};
use steward_kerberos::ldap::LdapSettings;
use steward_kerberos::probe::{self, KdcProbeError};

use crate::cli::Format;

#[derive(Debug, Args)]
pub(crate) struct KerberosArgs {
    /// The server's data directory: its steward.toml gives the keytab, the names (fqdns) and
    /// the LDAP directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// The keytab [default: [auth] keytab from the data directory, else KRB5_KTNAME, else
    /// /etc/krb5.keytab].
    #[arg(long, value_name = "FILE")]
    pub(crate) keytab: Option<PathBuf>,
    /// A name the server answers to (repeatable) [default: fqdns from the data directory].
    #[arg(long = "name", value_name = "FQDN")]
    pub(crate) names: Vec<String>,
    /// The realm [default: default_realm of krb5.conf].
    #[arg(long, value_name = "REALM")]
    pub(crate) realm: Option<String>,
    /// Allowed clock difference to the KDC, seconds.
    #[arg(long, default_value_t = DEFAULT_MAX_SKEW_SECS, value_name = "SECONDS")]
    pub(crate) max_skew: i64,
    /// Seconds allowed for each KDC exchange.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub(crate) timeout: u64,
    /// The LDAP directory to search for duplicate SPNs (`ldap://host[:port]`,
    /// `ldaps://host[:port]`) [default: [auth] ldap_url from the data directory].
    #[arg(long, value_name = "URL")]
    pub(crate) ldap_url: Option<String>,
    /// The search base (`dc=example,dc=net`) [default: [auth] ldap_base].
    #[arg(long, value_name = "DN")]
    pub(crate) ldap_base: Option<String>,
    /// Bind as this DN (or user@domain) [default: [auth] ldap_bind_dn, else anonymous].
    #[arg(long, value_name = "DN", requires = "ldap_bind_password_file")]
    pub(crate) ldap_bind_dn: Option<String>,
    /// A file whose first line is the bind password [default: [auth]
    /// ldap_bind_password_file].
    #[arg(long, value_name = "FILE", requires = "ldap_bind_dn")]
    pub(crate) ldap_bind_password_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
}

/// The directory settings of the duplicate-SPN check, before the password is read.
#[derive(Debug, Default)]
struct LdapConfig {
    url: Option<String>,
    base: Option<String>,
    bind_dn: Option<String>,
    password_file: Option<PathBuf>,
}

struct FromConfig {
    keytab: Option<PathBuf>,
    names: Vec<String>,
    ldap: LdapConfig,
}

fn from_data_dir(dir: &Path) -> anyhow::Result<FromConfig> {
    let dd = steward_server::DataDir::new(dir);
    let cfg = steward_server::Config::load(&dd)?;
    let in_dir = |k: PathBuf| {
        if k.is_absolute() {
            k
        } else {
            dd.root().join(k)
        }
    };
    Ok(FromConfig {
        keytab: cfg.auth.keytab.map(in_dir),
        names: cfg.fqdns,
        ldap: LdapConfig {
            url: cfg.auth.ldap_url,
            base: cfg.auth.ldap_base,
            bind_dn: cfg.auth.ldap_bind_dn,
            password_file: cfg.auth.ldap_bind_password_file.map(in_dir),
        },
    })
}

/// The duplicate-SPN evidence: nothing without a directory, else the search of every
/// `HTTP/<name>`. A password file that cannot be read is a failed bind (the doctor says which
/// file).
fn ldap_evidence(cfg: LdapConfig, names: &[String], timeout: Duration) -> LdapEvidence {
    let (Some(url), Some(base)) = (cfg.url, cfg.base) else {
        return LdapEvidence::NotConfigured;
    };
    let bind = match (cfg.bind_dn, cfg.password_file) {
        (Some(dn), Some(file)) => match std::fs::read_to_string(&file) {
            Ok(text) => Some((dn, text.lines().next().unwrap_or_default().to_owned())),
            Err(e) => {
                return LdapEvidence::BindFailed {
                    url,
                    bind_dn: dn,
                    error: format!("the password file {} cannot be read: {e}", file.display()),
                };
            }
        },
        _ => None,
    };
    let spns: Vec<String> = names
        .iter()
        .map(|n| format!("HTTP/{}", n.to_ascii_lowercase()))
        .collect();
    steward_kerberos::ldap::search_spns(
        &LdapSettings {
            url,
            base,
            bind,
            timeout,
        },
        &spns,
    )
}

fn default_keytab() -> PathBuf {
    std::env::var("KRB5_KTNAME")
        .ok()
        .map(|v| {
            PathBuf::from(
                v.strip_prefix("FILE:")
                    .or_else(|| v.strip_prefix("WRFILE:"))
                    .unwrap_or(&v),
            )
        })
        .unwrap_or_else(|| PathBuf::from("/etc/krb5.keytab"))
}

pub(crate) fn run(args: &KerberosArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.data_dir {
        Some(d) => Some(from_data_dir(d)?),
        None => None,
    };
    // The flags win over the data directory's [auth] settings, each on its own.
    let mut ldap = cfg
        .as_mut()
        .map(|c| std::mem::take(&mut c.ldap))
        .unwrap_or_default();
    if let Some(u) = &args.ldap_url {
        ldap.url = Some(u.clone());
    }
    if let Some(b) = &args.ldap_base {
        ldap.base = Some(b.clone());
    }
    if let (Some(dn), Some(file)) = (&args.ldap_bind_dn, &args.ldap_bind_password_file) {
        ldap.bind_dn = Some(dn.clone());
        ldap.password_file = Some(file.clone());
    }
    if ldap.url.is_some() && ldap.base.is_none() {
        anyhow::bail!(
            "the LDAP directory needs its search base: --ldap-base DN (e.g. dc=example,dc=net)"
        );
    }
    let keytab_path = args
        .keytab
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.keytab.clone()))
        .unwrap_or_else(default_keytab);
    let names = if args.names.is_empty() {
        cfg.as_ref().map(|c| c.names.clone()).unwrap_or_default()
    } else {
        args.names.clone()
    };
    if names.is_empty() {
        anyhow::bail!("give the names the server answers to: --name FQDN, or --data-dir DIR");
    }
    let conf = probe::read_krb5_conf(&probe::krb5_conf_path());
    let realm = args.realm.clone().or_else(|| conf.default_realm.clone());
    let timeout = Duration::from_secs(args.timeout.clamp(1, 60));
    let kdc = match &realm {
        Some(r) => probe::probe_kdc(&conf, r, timeout),
        None => Err(KdcProbeError::NoKdc(
            "(no default_realm in krb5.conf)".into(),
        )),
    };
    let resolution = names.iter().map(|n| probe::resolve(n)).collect();
    // The klist check: a service ticket per name, from the caller's credential cache. A
    // bare krb5 token (not SPNEGO) carries the ticket where its key version can be read.
    let tickets = names
        .iter()
        .map(|n| TicketProbe {
            host: n.to_ascii_lowercase(),
            outcome: steward_kerberos::negotiate::initiate_krb5("HTTP", &n.to_ascii_lowercase())
                .map(|init| probe::ticket_facts(&init.token_bytes())),
        })
        .collect();
    let ldap = ldap_evidence(ldap, &names, timeout);
    let ev = KerberosEvidence {
        keytab_path: keytab_path.display().to_string(),
        keytab: KeytabRead::from(steward_kerberos::read_keytab(&keytab_path)),
        names,
        realm,
        conf,
        kdc,
        max_skew_secs: args.max_skew.max(0),
        resolution,
        tickets,
        ldap,
    };
    let report = KerberosReport::new(&ev);
    match args.format {
        Format::Text => print!("{}", report.to_text()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(ExitCode::from(report.exit_code()))
}

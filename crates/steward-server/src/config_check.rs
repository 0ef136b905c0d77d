//! `--check-config`: the configuration, keys and certificates of a data directory, judged
//! before anything listens. `Server::start` runs the same checks and refuses to start on an
//! error, so a broken certificate is named at startup instead of failing every handshake.

use std::path::{Path, PathBuf};

use serde::Serialize;
use steward_pki::{CertFacts, ChainEnd, OffsetDateTime, SanEntry, SignatureCheck, build_chain};
use time::Duration;

use crate::ServerError;
use crate::config::{Config, DataDir};
use crate::pki::{read_cert, read_key};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The server must not start.
    Error,
    /// Works now, needs attention.
    Warning,
    /// Checked and fine.
    Ok,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable ID (docs/diagnostics.md).
    pub id: &'static str,
    /// Severity.
    pub severity: Severity,
    /// What was found, with the evidence.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        };
        write!(f, "{sev:7} {:26} {}", self.id, self.message)
    }
}

/// The outcome of [`check_config`].
#[derive(Debug, Clone)]
pub struct ConfigReport {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The parsed configuration.
    pub config: Config,
    /// Every check, in order.
    pub findings: Vec<Finding>,
}

impl ConfigReport {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The findings that are errors or warnings.
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity != Severity::Ok)
    }
}

/// Warn this long before a server certificate expires.
const EXPIRY_WARNING: Duration = Duration::days(30);

/// Validates `steward.toml`, the CA and listener certificates and keys of `data_dir`: files
/// readable, each key the key of its certificate, each certificate chaining to the platform
/// root with valid signatures, within its validity (warning 30 days before the end), the
/// agent-site certificate covering every configured name, its CRL distribution point matching
/// the configured CRL listener, and private keys not readable by others.
///
/// Returns `Err` only when there is nothing to check (no or unparseable configuration).
pub fn check_config(data_dir: &Path) -> Result<ConfigReport, ServerError> {
    let dir = DataDir::new(data_dir);
    let config = Config::load(&dir)?;
    let now = OffsetDateTime::now_utc();
    let mut findings = Vec::new();
    findings.push(Finding {
        id: "SERVER-CONFIG-INVALID",
        severity: Severity::Ok,
        message: format!("{} parses and validates", dir.config().display()),
    });

    if config.listen.protocol == steward_proto::Protocol::Http {
        findings.push(Finding {
            id: "CONFIG-AGENT-HTTP",
            severity: Severity::Warning,
            message: format!(
                "listen.protocol = \"http\": agents on the LAN talk to the agent site in plain \
                 HTTP on {}; inventory and task output cross the LAN readable by anyone on it \
                 (confidentiality is lost; identity and integrity hold: every request is signed \
                 with the agent's certificate key, every answer with the agent site's key). \
                 Enrollment, gateways and agents that come through a gateway keep using HTTPS \
                 on {}, which stays up",
                config.listen.agent_http, config.listen.agent
            ),
        });
    }
    let mut pair = |what: &str, cert: PathBuf, key: PathBuf| -> Option<CertFacts> {
        let facts = match read_cert(&cert).map(|c| CertFacts::from_der(&c)) {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                findings.push(err(
                    "SERVER-PKI-FILE",
                    format!("{what}: {} does not parse: {e}", cert.display()),
                ));
                return None;
            }
            Err(e) => {
                findings.push(err("SERVER-PKI-FILE", format!("{what}: {e}")));
                return None;
            }
        };
        match read_key(&key) {
            Err(e) => findings.push(err("SERVER-PKI-FILE", format!("{what} key: {e}"))),
            Ok(k) => {
                let k = rustls_pki_types::PrivateKeyDer::Pkcs8(k);
                match steward_pki::key_matches_cert(&k, &facts.spki_der) {
                    Ok(true) => findings.push(ok(
                        "SERVER-KEY-MISMATCH",
                        format!("{what}: {} is the key of {}", key.display(), cert.display()),
                    )),
                    Ok(false) => findings.push(err(
                        "SERVER-KEY-MISMATCH",
                        format!(
                            "{what}: {} is not the key of {} ({})",
                            key.display(),
                            cert.display(),
                            facts.subject
                        ),
                    )),
                    Err(e) => findings.push(err(
                        "SERVER-KEY-MISMATCH",
                        format!("{what}: {} cannot be used: {e}", key.display()),
                    )),
                }
                findings.extend(key_permissions(what, &key));
            }
        }
        findings.push(validity(what, &facts, now));
        Some(facts)
    };

    let root = pair("platform root CA", dir.root_cert(), dir.root_key());
    let issuing = pair("issuing CA", dir.issuing_cert(), dir.issuing_key());
    let agent = pair("agent-site certificate", dir.agent_cert(), dir.agent_key());
    let console = pair("console certificate", dir.console_cert(), dir.console_key());

    if let (Some(root), Some(issuing)) = (&root, &issuing) {
        findings.push(chain("issuing CA", issuing, &[], root));
        // A third-party certificate (`steward server cert import`) chains to its own root,
        // which the profile carries; a platform-issued one to the platform root.
        for (what, leaf, l) in [
            (
                "agent-site certificate",
                &agent,
                crate::renew::Listener::Agent,
            ),
            (
                "console certificate",
                &console,
                crate::renew::Listener::Console,
            ),
        ] {
            let Some(leaf) = leaf else { continue };
            match crate::replace::third_party_chain(&dir, l) {
                Some((intermediates, own_root)) => {
                    findings.push(chain(what, leaf, &intermediates, &own_root));
                }
                None => findings.push(chain(what, leaf, std::slice::from_ref(issuing), root)),
            }
        }
    }
    if let Some(agent) = &agent {
        findings.push(names(agent, &config));
        // A third-party certificate names its own CA's distribution point, not ours.
        if !crate::replace::live_root_path(&dir, crate::renew::Listener::Agent).exists() {
            findings.push(crl_url(agent, &config));
        }
    }
    findings.extend(keytab(&dir, &config));
    Ok(ConfigReport {
        data_dir: data_dir.to_owned(),
        config,
        findings,
    })
}

/// With Kerberos configured (the `negotiate` provider or Kerberos enrollment), the keytab of
/// `[auth] keytab` (relative: to the data directory): readable, holding keys, and one
/// `HTTP/<name>` per name in `fqdns` — the doctor's checks, under the doctor's IDs
/// (`KRB-KEYTAB-*`, `KRB-SPN-*`), in any realm (the server accepts every key of its keytab).
fn keytab(dir: &DataDir, config: &Config) -> Vec<Finding> {
    let auth = &config.auth;
    let Some(path) = auth.keytab.as_ref().filter(|_| auth.uses_kerberos()) else {
        return Vec::new();
    };
    let path = if path.is_absolute() {
        path.clone()
    } else {
        dir.root().join(path)
    };
    let read = steward_kerberos::doctor::KeytabRead::from(steward_kerberos::read_keytab(&path));
    let (found, _) = steward_kerberos::doctor::keytab_findings(
        &path.display().to_string(),
        &read,
        &config.fqdns,
        None,
    );
    found
        .into_iter()
        .map(|f| Finding {
            id: f.id,
            severity: match f.severity {
                steward_doctor::Severity::Ok => Severity::Ok,
                steward_doctor::Severity::Warning => Severity::Warning,
                steward_doctor::Severity::Error => Severity::Error,
            },
            message: match f.remedy {
                Some(fix) => format!("{} (fix: {fix})", f.message),
                None => f.message,
            },
        })
        .collect()
}

fn err(id: &'static str, message: String) -> Finding {
    Finding {
        id,
        severity: Severity::Error,
        message,
    }
}

fn ok(id: &'static str, message: String) -> Finding {
    Finding {
        id,
        severity: Severity::Ok,
        message,
    }
}

fn validity(what: &str, f: &CertFacts, now: OffsetDateTime) -> Finding {
    let na = steward_pki::rfc3339(f.not_after);
    if f.not_before > now {
        return err(
            "SERVER-CERT-EXPIRED",
            format!(
                "{what} is not valid before {} (this host's clock says {}): check the clock",
                steward_pki::rfc3339(f.not_before),
                steward_pki::rfc3339(now)
            ),
        );
    }
    if f.not_after <= now {
        return err(
            "SERVER-CERT-EXPIRED",
            format!("{what} expired at {na}: agents refuse it"),
        );
    }
    if f.not_after - now < EXPIRY_WARNING {
        return Finding {
            id: "SERVER-CERT-EXPIRES-SOON",
            severity: Severity::Warning,
            message: format!(
                "{what} expires at {na}, in {} days",
                (f.not_after - now).whole_days()
            ),
        };
    }
    ok("SERVER-CERT-EXPIRED", format!("{what} is valid until {na}"))
}

fn chain(what: &str, leaf: &CertFacts, supplied: &[CertFacts], root: &CertFacts) -> Finding {
    let c = build_chain(leaf.clone(), supplied, std::slice::from_ref(root));
    let bad_sig = c.links.iter().find_map(|l| match &l.signature {
        SignatureCheck::Invalid(e) | SignatureCheck::Unsupported(e) => {
            Some(format!("{}: {e}", l.cert.subject))
        }
        _ => None,
    });
    match (&c.end, bad_sig) {
        (ChainEnd::Anchor, None) => ok(
            "SERVER-CHAIN-BROKEN",
            format!(
                "{what} chains to its root ({})",
                c.links
                    .iter()
                    .map(|l| l.cert.subject.as_str())
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        ),
        (_, Some(sig)) => err(
            "SERVER-CHAIN-BROKEN",
            format!("{what}: a signature does not verify ({sig})"),
        ),
        (end, None) => err(
            "SERVER-CHAIN-BROKEN",
            format!(
                "{what} ({}) does not chain to its root (pki/root.crt, or for a third-party certificate pki/<listener>.root.pem): {end:?}",
                leaf.subject
            ),
        ),
    }
}

fn names(agent: &CertFacts, config: &Config) -> Finding {
    let sans = agent.sans.clone().unwrap_or_default();
    let has_dns = |n: &str| {
        sans.iter()
            .any(|s| matches!(s, SanEntry::Dns(d) if d.eq_ignore_ascii_case(n)))
    };
    let has_ip =
        |ip: &std::net::IpAddr| sans.iter().any(|s| matches!(s, SanEntry::Ip(i) if i == ip));
    let mut missing: Vec<String> = config
        .fqdns
        .iter()
        .filter(|n| !has_dns(n))
        .cloned()
        .collect();
    missing.extend(
        config
            .ip_addrs
            .iter()
            .filter(|ip| !has_ip(ip))
            .map(ToString::to_string),
    );
    let have = sans
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if missing.is_empty() {
        ok(
            "SERVER-CERT-NAMES",
            format!("the agent-site certificate covers every configured name ({have})"),
        )
    } else {
        err(
            "SERVER-CERT-NAMES",
            format!(
                "the agent-site certificate does not cover {} (it has {have}); agents using \
                 those names fail with a name mismatch",
                missing.join(", ")
            ),
        )
    }
}

fn crl_url(agent: &CertFacts, config: &Config) -> Finding {
    let want = config.issuing_crl_url();
    if agent.crl_urls.iter().any(|u| u == &want) {
        ok(
            "SERVER-CRL-URL-MISMATCH",
            format!("certificates name the CRL at {want}, which this server publishes"),
        )
    } else {
        Finding {
            id: "SERVER-CRL-URL-MISMATCH",
            severity: Severity::Warning,
            message: format!(
                "the agent-site certificate names the CRL at {} but this configuration \
                 publishes it at {want} (fqdns[0] or listen.crl changed after init); clients \
                 that check revocation cannot fetch it",
                agent.crl_urls.join(", ")
            ),
        }
    }
}

#[cfg(unix)]
fn key_permissions(what: &str, key: &Path) -> Option<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(key).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| Finding {
        id: "SERVER-KEY-PERMISSIONS",
        severity: Severity::Warning,
        message: format!(
            "{what}: {} has mode {mode:03o}; other users can read the private key \
             (chmod 600 it)",
            key.display()
        ),
    })
}

#[cfg(not(unix))]
fn key_permissions(_what: &str, _key: &Path) -> Option<Finding> {
    None
}

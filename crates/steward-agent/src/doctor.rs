//! `steward-agent doctor`: check every way to the server from this host, with the agent's own
//! profile and identity — each LAN server, then each gateway — step by step (DNS, TCP, TLS,
//! certificate, thumbprint, ping), using `steward_probe::path`.
//!
//! It only reads the data directory (never the lock, never a write), so it can run next to a
//! running agent; the key is mode 0600, so it needs the agent's user (or root) for the ping
//! step, and says so when it cannot read it.

use std::path::Path;
use std::time::Duration;

use steward_doctor::{Finding, Severity};
use steward_probe::path::{self, PathIdentity, PathsReport, check_path, ids};
use steward_proto::{AgentConfig, CommunicationProfile};

use crate::net::{self, ClientIdentity};
use crate::store::{self, DataDir, Identity};

/// Per-step time limit of the checks.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Check every way of the agent's stored profile. Never fails: what cannot be read is a
/// finding (`PATH-AGENT-STATE`) in the report.
pub async fn doctor(data_dir: &Path, timeout: Duration) -> PathsReport {
    let dir = DataDir::new(data_dir);
    let source = format!("agent data directory {}", data_dir.display());
    let mut findings = Vec::new();
    let identity = match store::read_json::<Identity>(&dir.identity_path()) {
        Ok(Some(i)) => i,
        Ok(None) => {
            findings.push(state_error(format!(
                "{} holds no identity: this agent is not enrolled",
                data_dir.display()
            )));
            return PathsReport::new(source, findings, Vec::new());
        }
        Err(e) => {
            findings.push(state_error(format!("cannot read the identity: {e}")));
            return PathsReport::new(source, findings, Vec::new());
        }
    };
    let profile = current_profile(&dir, &identity, &mut findings);
    let client = client_identity(&dir, &identity, &mut findings);

    let (targets, unreadable) = path::profile_targets(&profile);
    findings.extend(unreadable);

    let mut paths = Vec::with_capacity(targets.len());
    for t in &targets {
        paths.push(check_path(t, client.as_ref(), timeout).await);
    }

    if profile.gateways.is_empty() {
        let lan_works = paths.iter().any(|p| p.works());
        findings.push(if lan_works {
            Finding::ok(
                ids::NO_GATEWAYS,
                format!(
                    "the profile (version {}) lists no internet gateway: fine on a LAN-only site, where a LAN server works",
                    profile.version
                ),
            )
        } else {
            Finding {
                id: ids::NO_GATEWAYS,
                severity: Severity::Warning,
                message: format!(
                    "the profile (version {}) lists no internet gateway and no LAN server works from here: off the LAN this agent has no way to the server",
                    profile.version
                ),
                remedy: Some(
                    "Join a gateway (steward gateway token / join / run) and let this agent check in once on the LAN so it receives a profile with the gateway; or bring the host onto the LAN or VPN."
                        .to_owned(),
                ),
            }
        });
    }
    PathsReport::new(source, findings, paths)
}

/// The profile the agent uses: the stored configuration's when it is usable (as `run` does),
/// otherwise the one from enrollment.
fn current_profile(
    dir: &DataDir,
    identity: &Identity,
    findings: &mut Vec<Finding>,
) -> CommunicationProfile {
    match store::read_json::<AgentConfig>(&dir.config_path()) {
        Ok(Some(c)) if net::check_profile(&c.profile).is_ok() => c.profile,
        Ok(_) => identity.profile.clone(),
        Err(e) => {
            findings.push(Finding {
                id: ids::AGENT_STATE,
                severity: Severity::Warning,
                message: format!(
                    "cannot read the stored configuration ({e}); checked the enrollment profile instead, as the agent would"
                ),
                remedy: Some(
                    "Let the agent check in once: it stores the current configuration again."
                        .to_owned(),
                ),
            });
            identity.profile.clone()
        }
    }
}

fn client_identity(
    dir: &DataDir,
    identity: &Identity,
    findings: &mut Vec<Finding>,
) -> Option<PathIdentity> {
    let key = match store::read_bytes(&dir.key_path()) {
        Ok(Some(k)) => String::from_utf8_lossy(&k).into_owned(),
        Ok(None) => {
            findings.push(state_error(format!(
                "{} is missing: the ping step (the whole way to the server) is skipped",
                dir.key_path().display()
            )));
            return None;
        }
        Err(e) => {
            findings.push(Finding {
                id: ids::AGENT_STATE,
                severity: Severity::Warning,
                message: format!(
                    "cannot read the agent's key ({e}): the ping step (the whole way to the server) is skipped"
                ),
                remedy: Some(
                    "Run the doctor as the agent's user or root: the key is readable by them only."
                        .to_owned(),
                ),
            });
            return None;
        }
    };
    match ClientIdentity::from_pem(&identity.cert_pem, &identity.chain_pem, &key) {
        Ok(id) => Some(PathIdentity {
            chain: id.chain,
            key: id.key,
        }),
        Err(e) => {
            findings.push(state_error(format!(
                "the stored identity cannot be used: {e}; the ping step is skipped"
            )));
            None
        }
    }
}

fn state_error(message: String) -> Finding {
    Finding {
        id: path::ids::AGENT_STATE,
        severity: Severity::Error,
        message,
        remedy: Some(
            "Enroll the agent again: steward-agent enroll --force --package FILE --data-dir DIR."
                .to_owned(),
        ),
    }
}

//! `status`: what the agent is and how its last check-ins went, from the data directory alone
//! (it works whether or not `run` is running, and needs no network).

use std::fmt;
use std::path::Path;

use serde::Serialize;
use steward_pki::{CertFacts, OffsetDateTime};
use steward_proto::{AgentError, ConnectionPath, FailedAttempt};

use crate::agent::effective_settings;
use crate::events::rfc3339;
use crate::net;
use crate::store::{DataDir, Outbox, StoreError};

/// The agent's client certificate, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// notAfter (RFC 3339).
    pub not_after: String,
    /// Whole days until notAfter (negative once expired).
    pub days_left: i64,
    /// SHA-256 thumbprint, upper-case hex.
    pub sha256: String,
}

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The data directory.
    pub data_dir: String,
    /// Whether it holds an identity.
    pub enrolled: bool,
    /// Device ID.
    pub device_id: Option<String>,
    /// The client certificate.
    pub certificate: Option<CertStatus>,
    /// The server of the last successful check-in (`https://host:port`).
    pub server: Option<String>,
    /// Servers of the profile in force, in the order tried.
    pub profile_servers: Vec<String>,
    /// How the last successful check-in reached the server.
    pub connection: Option<ConnectionPath>,
    /// Last successful check-in.
    pub last_checkin_at: Option<String>,
    /// Last attempt.
    pub last_attempt_at: Option<String>,
    /// Failed attempts since then.
    pub consecutive_failures: u32,
    /// The most recent fault.
    pub last_error: Option<AgentError>,
    /// Failed ways to the server not yet reported to it (one per address and kind).
    pub failed_attempts: Vec<FailedAttempt>,
    /// Configuration version in force (0: none received yet).
    pub config_version: u64,
    /// Check-in interval in force (seconds).
    pub checkin_interval_secs: u64,
    /// Task results waiting for the server's acknowledgement.
    pub outbox_results: usize,
    /// When `run` last wrote its state.
    pub state_updated_at: Option<String>,
}

/// Gather the status of the data directory at `dir`.
pub fn status(dir: &Path) -> Result<StatusReport, StoreError> {
    let d = DataDir::new(dir);
    let identity = if d.identity_path().exists() {
        d.load_identity()?
    } else {
        None
    };
    let state = d.load_state()?;
    let config = d.load_config().ok().flatten();
    let certificate = identity.as_ref().and_then(|i| {
        let der = net::parse_certs(&i.cert_pem).ok()?.into_iter().next()?;
        let f = CertFacts::from_der(&der).ok()?;
        Some(CertStatus {
            subject: f.subject.clone(),
            issuer: f.issuer.clone(),
            not_after: rfc3339(f.not_after),
            days_left: (f.not_after - OffsetDateTime::now_utc()).whole_days(),
            sha256: f.thumbprint.sha256_hex(),
        })
    });
    let profile = config
        .as_ref()
        .map(|c| &c.profile)
        .or(identity.as_ref().map(|i| &i.profile));
    // Counted, not opened: `status` must not sweep or quarantine files under a running agent.
    let outbox_results = Outbox::count_waiting(&d.outbox_dir());
    Ok(StatusReport {
        data_dir: dir.display().to_string(),
        enrolled: identity.is_some(),
        device_id: identity.as_ref().map(|i| i.device_id.clone()),
        certificate,
        server: state.server.clone(),
        profile_servers: profile
            .map(|p| p.servers.iter().map(|s| s.base_url()).collect())
            .unwrap_or_default(),
        connection: state.connection.clone(),
        last_checkin_at: state.last_checkin_at.clone(),
        last_attempt_at: state.last_attempt_at.clone(),
        consecutive_failures: state.consecutive_failures,
        last_error: state.last_error.clone(),
        failed_attempts: state.failed_attempts.clone(),
        config_version: config.as_ref().map_or(0, |c| c.version),
        checkin_interval_secs: effective_settings(&config.map(|c| c.settings).unwrap_or_default())
            .checkin_interval_secs,
        outbox_results,
        state_updated_at: state.updated_at,
    })
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = "-";
        writeln!(f, "data directory:  {}", self.data_dir)?;
        if !self.enrolled {
            return writeln!(
                f,
                "enrolled:        no (run `steward-agent enroll --package FILE`)"
            );
        }
        writeln!(
            f,
            "device:          {}",
            self.device_id.as_deref().unwrap_or(none)
        )?;
        match &self.certificate {
            Some(c) => {
                writeln!(f, "certificate:     {}", c.subject)?;
                writeln!(f, "  issuer:        {}", c.issuer)?;
                let left = if c.days_left < 0 {
                    "EXPIRED".to_owned()
                } else {
                    format!("{} day(s) left", c.days_left)
                };
                writeln!(f, "  expires:       {} ({left})", c.not_after)?;
                writeln!(f, "  sha256:        {}", c.sha256)?;
            }
            None => writeln!(f, "certificate:     unreadable")?,
        }
        writeln!(
            f,
            "server:          {}",
            self.server.as_deref().unwrap_or(none)
        )?;
        writeln!(f, "profile servers: {}", self.profile_servers.join(", "))?;
        let path = match &self.connection {
            Some(ConnectionPath::Lan { server }) => format!("lan ({server})"),
            Some(ConnectionPath::Gateway { gateway, via }) => {
                format!("gateway {via} ({gateway})")
            }
            None => none.to_owned(),
        };
        writeln!(f, "connection:      {path}")?;
        writeln!(
            f,
            "last check-in:   {}",
            self.last_checkin_at.as_deref().unwrap_or("never")
        )?;
        if self.consecutive_failures > 0 {
            writeln!(
                f,
                "failing:         {} attempt(s) since, last at {}",
                self.consecutive_failures,
                self.last_attempt_at.as_deref().unwrap_or(none)
            )?;
        }
        match &self.last_error {
            Some(e) => writeln!(f, "last error:      {} {} ({})", e.id, e.message, e.at)?,
            None => writeln!(f, "last error:      none")?,
        }
        for a in &self.failed_attempts {
            let way = match &a.gateway {
                Some(g) => format!("gateway {g} {}", a.address),
                None => format!("lan {}", a.address),
            };
            writeln!(
                f,
                "failed way:      {way}: {} ×{} (last {}), not reported yet",
                a.id, a.count, a.last_at
            )?;
        }
        writeln!(
            f,
            "configuration:   version {}, check-in every {} s",
            self.config_version, self.checkin_interval_secs
        )?;
        writeln!(
            f,
            "outbox:          {} result(s) waiting",
            self.outbox_results
        )
    }
}

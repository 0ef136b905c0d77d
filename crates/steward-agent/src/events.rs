//! The agent log: stable event IDs and the one-line format `steward doctor logs` reads.
//!
//! Every line is `<RFC 3339 UTC> <LEVEL> <EVENT-ID> <message>`. The IDs are a contract with
//! administrators (they search for them), with `steward-doctor`'s log reader and with
//! `docs/diagnostics.md`; a test checks all three agree. Messages are single lines: embedded
//! newlines are escaped so one event can never be mistaken for two.

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;
use std::path::Path;

use time::OffsetDateTime;
use time::macros::format_description;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The agent's event IDs. Faults are logged at ERROR or WARN, everything else at INFO.
pub mod ids {
    /// `run` started (version, device, data directory).
    pub const STARTED: &str = "AGENT-STARTED";
    /// `run` is stopping on a signal.
    pub const STOPPED: &str = "AGENT-STOPPED";
    /// Enrollment succeeded: the device has its certificate.
    pub const ENROLLED: &str = "AGENT-ENROLLED";
    /// A check-in succeeded (logged on the first one, and again after any fault or change of
    /// server, so the log shows every recovery without a line per minute).
    pub const CONNECTED: &str = "AGENT-CONNECTED";
    /// A new configuration (profile, settings, policies) was stored and applied.
    pub const CONFIG_UPDATED: &str = "AGENT-CONFIG-UPDATED";
    /// A configuration from the server was refused because it would strand the agent.
    pub const CONFIG_REJECTED: &str = "AGENT-CONFIG-REJECTED";
    /// The inventory was sent and accepted.
    pub const INVENTORY_SENT: &str = "AGENT-INVENTORY-SENT";
    /// A task started.
    pub const TASK_STARTED: &str = "AGENT-TASK-STARTED";
    /// A task ended and its result is in the durable outbox.
    pub const TASK_FINISHED: &str = "AGENT-TASK-FINISHED";
    /// A re-delivered task that had already been started was not run again.
    pub const TASK_SKIPPED: &str = "AGENT-TASK-SKIPPED";
    /// The server committed a task result; it left the outbox.
    pub const RESULT_ACKED: &str = "AGENT-RESULT-ACKED";
    /// The agent's own certificate expires soon (or has expired).
    pub const CERT_EXPIRING: &str = "AGENT-CERT-EXPIRING";
    /// The bootstrap package is unreadable, corrupt, truncated or not a package.
    pub const PACKAGE_INVALID: &str = "AGENT-PACKAGE-INVALID";
    /// Enrollment with the host's Kerberos identity failed (no host keytab, no ticket for the
    /// server's `HTTP/` principal, or the server refused it).
    pub const ENROLL_KERBEROS: &str = "AGENT-ENROLL-KERBEROS";
    /// The stored identity (key, certificate) is missing, unreadable or does not match.
    pub const IDENTITY_INVALID: &str = "AGENT-IDENTITY-INVALID";
    /// A server name does not resolve.
    pub const DNS_FAILED: &str = "AGENT-DNS-FAILED";
    /// The server's port refused the connection.
    pub const CONNECTION_REFUSED: &str = "AGENT-CONNECTION-REFUSED";
    /// Connect, handshake or response did not finish in time.
    pub const CONNECTION_TIMEOUT: &str = "AGENT-CONNECTION-TIMEOUT";
    /// No route, or the connection broke mid-exchange.
    pub const CONNECTION_FAILED: &str = "AGENT-CONNECTION-FAILED";
    /// The server's certificate chains to no trust anchor of the profile.
    pub const TLS_UNTRUSTED: &str = "AGENT-TLS-UNTRUSTED";
    /// A certificate of the server's chain is expired or not yet valid.
    pub const TLS_EXPIRED: &str = "AGENT-TLS-EXPIRED";
    /// The server's certificate does not cover the name the agent connected to.
    pub const TLS_NAME_MISMATCH: &str = "AGENT-TLS-NAME-MISMATCH";
    /// The server's certificate is revoked.
    pub const TLS_REVOKED: &str = "AGENT-TLS-REVOKED";
    /// The server refused the agent's client certificate.
    pub const TLS_CLIENT_REJECTED: &str = "AGENT-TLS-CLIENT-REJECTED";
    /// Any other TLS failure (not TLS at all, no common parameters, bad signature).
    pub const TLS_FAILED: &str = "AGENT-TLS-FAILED";
    /// The server answered with an HTTP error and an API error ID.
    pub const SERVER_REJECTED: &str = "AGENT-SERVER-REJECTED";
    /// The server's answer could not be understood.
    pub const PROTOCOL_ERROR: &str = "AGENT-PROTOCOL-ERROR";
    /// The data directory could not be written (outbox, configuration, state).
    pub const STORE_FAILED: &str = "AGENT-STORE-FAILED";
    /// A gateway presented a certificate whose SHA-256 the profile does not list for it.
    pub const GATEWAY_THUMBPRINT: &str = "AGENT-GATEWAY-THUMBPRINT";
    /// Every way to the server failed this round; the message names the delay before the next.
    pub const BACKOFF: &str = "AGENT-BACKOFF";
    /// The client certificate was renewed (new key made here) and is in use from now on.
    pub const CERT_RENEWED: &str = "AGENT-CERT-RENEWED";
    /// A renewal the server asked for failed; the current certificate keeps working and the
    /// renewal is tried again at the next check-in.
    pub const CERT_RENEW_FAILED: &str = "AGENT-CERT-RENEW-FAILED";
    /// The agent site's certificate was untrusted; the signed trust bundle supplied the new
    /// root and the agent reconnected (it slept through a certificate rollover).
    pub const TRUST_RECOVERED: &str = "AGENT-TRUST-RECOVERED";
    /// The signed trust bundle could not be fetched or verified after an untrusted
    /// certificate; the agent keeps retrying.
    pub const TRUST_RECOVERY_FAILED: &str = "AGENT-TRUST-RECOVERY-FAILED";
    /// The server answered 503 `SERVER-BUSY` (admission control): the agent comes back after
    /// its `Retry-After` plus jitter; not a fault of the way, nothing is set aside.
    pub const SERVER_BUSY: &str = "AGENT-SERVER-BUSY";
    /// The persistent connection (long-poll) failed several times in a row; the agent checks
    /// in at its interval only for a while, then tries to hold it again.
    pub const PERSISTENT_FALLBACK: &str = "AGENT-PERSISTENT-FALLBACK";

    /// A plain-HTTP answer (`protocol: http`) whose signature or signing certificate did not
    /// verify: not believed; the agent falls back to the server's HTTPS port.
    pub const HTTP_RESPONSE_UNVERIFIED: &str = "AGENT-HTTP-RESPONSE-UNVERIFIED";

    /// Every ID the agent writes.
    pub const ALL: &[&str] = &[
        HTTP_RESPONSE_UNVERIFIED,
        STARTED,
        STOPPED,
        ENROLLED,
        CONNECTED,
        CONFIG_UPDATED,
        CONFIG_REJECTED,
        INVENTORY_SENT,
        TASK_STARTED,
        TASK_FINISHED,
        TASK_SKIPPED,
        RESULT_ACKED,
        CERT_EXPIRING,
        PACKAGE_INVALID,
        ENROLL_KERBEROS,
        IDENTITY_INVALID,
        DNS_FAILED,
        CONNECTION_REFUSED,
        CONNECTION_TIMEOUT,
        CONNECTION_FAILED,
        TLS_UNTRUSTED,
        TLS_EXPIRED,
        TLS_NAME_MISMATCH,
        TLS_REVOKED,
        TLS_CLIENT_REJECTED,
        TLS_FAILED,
        SERVER_REJECTED,
        PROTOCOL_ERROR,
        STORE_FAILED,
        GATEWAY_THUMBPRINT,
        BACKOFF,
        CERT_RENEWED,
        CERT_RENEW_FAILED,
        TRUST_RECOVERED,
        TRUST_RECOVERY_FAILED,
        SERVER_BUSY,
        PERSISTENT_FALLBACK,
    ];
}

/// How the log is written.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Also write to stderr (as well as the files).
    pub stderr: bool,
    /// Rotated daily files kept, the current one included.
    pub keep_files: usize,
    /// Lowest level written.
    pub level: LevelFilter,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            stderr: std::io::stderr().is_terminal(),
            keep_files: 7,
            level: LevelFilter::INFO,
        }
    }
}

/// The log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory or file could not be created.
    #[error("cannot open the agent log in {dir}: {reason}")]
    Open {
        /// The log directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
    /// A global logger was already installed (the process set one up twice).
    #[error("the agent log is already set up in this process")]
    AlreadySet,
}

/// Install the agent log: daily files `agent.YYYY-MM-DD.log` in `dir` with `agent.log` always
/// linking to the current one (so `steward doctor logs DIR/logs/agent.log` needs no date), and
/// stderr when asked. Writes are synchronous: an event logged before a crash is on disk, which
/// matters more here than the microseconds a background writer would save.
pub fn init(dir: &Path, opts: &LogOptions) -> Result<(), LogError> {
    let open_err = |reason: String| LogError::Open {
        dir: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    // The appender's "latest" link names its target by the path it was given; an absolute
    // directory keeps the link valid whatever the current directory of a reader.
    let dir = std::path::absolute(dir).map_err(|e| open_err(e.to_string()))?;
    let files = RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix("agent")
        .filename_suffix("log")
        .max_log_files(opts.keep_files.max(1))
        .latest_symlink("agent.log")
        .build(&dir)
        .map_err(|e| open_err(e.to_string()))?;
    // Only the agent's own events: dependencies speak in their own terms, without IDs.
    let filter = Targets::new().with_target("steward_agent", opts.level);
    let file_layer = tracing_subscriber::fmt::layer()
        .event_format(LineFormat)
        .with_ansi(false)
        .with_writer(files);
    let stderr_layer = opts.stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(LineFormat)
            .with_ansi(false)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .with(filter)
        .try_init()
        .map_err(|_| LogError::AlreadySet)
}

/// Install a stderr-only log (for commands run before a data directory exists).
pub fn init_stderr(level: LevelFilter) -> Result<(), LogError> {
    let filter = Targets::new().with_target("steward_agent", level);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(LineFormat)
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .try_init()
        .map_err(|_| LogError::AlreadySet)
}

/// `2026-11-05T10:00:00.123Z`: fixed width, UTC, so lines sort and compare as text.
pub fn timestamp(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// RFC 3339 with seconds, as used in wire messages and state files.
pub fn rfc3339(t: OffsetDateTime) -> String {
    steward_pki::rfc3339(t)
}

/// The line format: `<time> <LEVEL> <ID> <message>`. An event without an `id` field gets `-`
/// so the columns still line up for readers.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = format_line(
            OffsetDateTime::now_utc(),
            *event.metadata().level(),
            fields.id.as_deref().unwrap_or("-"),
            &fields.message,
        );
        writeln!(writer, "{line}")
    }
}

/// One log line (without the newline). Public so tests and the doctor's samples agree.
pub fn format_line(t: OffsetDateTime, level: Level, id: &str, message: &str) -> String {
    format!("{} {} {} {}", timestamp(t), level, id, one_line(message))
}

/// Escape line breaks so a message (which may quote a server's error text) stays one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Fields {
    id: Option<String>,
    message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "id" => self.id = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            other => {
                let _ = write!(self.message, " {other}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "id" => self.id = Some(format!("{value:?}")),
            other => {
                let _ = write!(self.message, " {other}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_four_columns_and_stay_on_one_line() {
        let t = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let l = format_line(t, Level::ERROR, ids::DNS_FAILED, "a\nb\u{7}c");
        assert_eq!(
            l,
            "2026-09-21T14:13:20.000Z ERROR AGENT-DNS-FAILED a\\nb\\u{7}c"
        );
    }

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for id in ids::ALL {
            assert!(seen.insert(id), "{id} twice");
            assert!(id.starts_with("AGENT-"));
            assert!(id.chars().all(|c| c.is_ascii_uppercase() || c == '-'));
        }
    }
}

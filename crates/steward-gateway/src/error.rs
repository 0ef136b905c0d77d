//! The gateway's failures, each with a stable ID (docs/diagnostics.md, `## Gateway`).

use std::path::PathBuf;

/// Everything that can stop `steward gateway join` or `run`.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A file of the data directory or the token could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds something other than what the gateway wrote (edited, truncated, foreign).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory already holds a joined gateway; joining again would replace its
    /// identity, so it is refused.
    #[error("{0} already holds a joined gateway; use another --data-dir")]
    AlreadyJoined(PathBuf),
    /// Making keys, a CSR or a TLS configuration failed.
    #[error("{0}")]
    Crypto(String),
    /// The server could not be reached (DNS, refused, timeout, TLS).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was requested.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server refused, with its stable ID.
    #[error("{url} refused: {id}: {message}")]
    Refused {
        /// What was requested.
        url: String,
        /// The server's error ID (for example `GATEWAY-TOKEN-USED`).
        id: String,
        /// Its message.
        message: String,
        /// The answer's `Retry-After` (a 503 `SERVER-BUSY`: the server's admission control
        /// turned the request away before reading it).
        retry_after: Option<std::time::Duration>,
    },
    /// The CRL could not be fetched or is not a CRL the verifier accepts.
    #[error("the CRL {url} is unusable: {reason}")]
    Crl {
        /// Where it was fetched.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An imported certificate was refused: a `steward doctor cert` rule found an error (or
    /// the certificate expires too soon to be rolled out); the report holds every finding.
    #[error("the certificate was refused: {}", refused_ids(report))]
    CertRefused {
        /// The findings under the `steward` profile.
        report: Box<steward_doctor::CertReport>,
    },
    /// The server URL is not `https://`: agents that come through a gateway always reach the
    /// server over mutual TLS, so a plain-HTTP upstream (for example the LAN's
    /// `protocol = "http"` agent site) is refused before anything is sent.
    #[error(
        "{0} is not an https:// URL: a gateway always forwards its agents over mutual TLS; give \
         the server's HTTPS agent site (the `agent` listener, 4726 by default), never its plain-HTTP one"
    )]
    UpstreamNotHttps(String),
    /// Another renewal holds the data directory's renewal lock (the running gateway renewing
    /// while `steward gateway cert renew` runs, or the other way round).
    #[error("another renewal is under way ({0} is locked); try again in a minute")]
    RenewBusy(PathBuf),
    /// An imported certificate's file does not hold its chain up to a self-signed root, which
    /// agents need (it is distributed to them before the certificate goes live).
    #[error(
        "the file does not hold the full chain up to a self-signed root ({end}); export it again \
         with every certificate of the certification path, root included"
    )]
    CertNoRoot {
        /// Where the chain in the file stops.
        end: String,
    },
}

fn refused_ids(report: &steward_doctor::CertReport) -> String {
    let ids: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.severity != steward_doctor::Severity::Ok)
        .map(|f| f.id)
        .collect();
    ids.join(", ")
}

impl GatewayError {
    /// The stable ID of this failure.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Io { .. } | Self::Corrupt { .. } => "GATEWAY-STATE",
            Self::AlreadyJoined(_) => "GATEWAY-ALREADY-JOINED",
            Self::Crypto(_) => "GATEWAY-CRYPTO",
            Self::Unreachable { .. } => "GATEWAY-SERVER-UNREACHABLE",
            Self::Refused { .. } => "GATEWAY-SERVER-REFUSED",
            Self::Crl { .. } => "GATEWAY-CRL-UNAVAILABLE",
            Self::Bind { .. } => "GATEWAY-BIND",
            Self::CertRefused { .. } => "GATEWAY-CERT-REFUSED",
            Self::CertNoRoot { .. } => "GATEWAY-CERT-NO-ROOT",
            Self::RenewBusy(_) => "GATEWAY-RENEW-BUSY",
            Self::UpstreamNotHttps(_) => "GATEWAY-UPSTREAM-NOT-HTTPS",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

//! Errors: [`ServerError`] for setting up and running the server, [`ApiFailure`] for one
//! refused request (an HTTP status plus a stable ID, sent as a `steward_proto::ApiError` body).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use steward_proto::ApiError;
use steward_store::StoreError;

use crate::config_check::Finding;

/// Failures of `init`, `check_config` and `Server::start`. Each has a stable diagnosis ID
/// ([`ServerError::id`]) documented in docs/diagnostics.md.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `[auth]` lists `negotiate` but GSSAPI cannot use the keytab (missing, unreadable, empty).
    #[error(
        "AUTH-KEYTAB-UNUSABLE: the negotiate provider cannot start: {0}. Check the keytab with \
         `steward doctor kerberos`"
    )]
    Kerberos(String),
    /// `init` found a server already initialised in the directory and will not overwrite its
    /// CA (agents trust it; a new one would strand every enrolled agent).
    #[error(
        "SERVER-ALREADY-INITIALISED: {0} already holds a Steward server (its platform CA or \
         steward.toml exists); refusing to overwrite it. Use another --data-dir, or run the \
         server from this one"
    )]
    AlreadyInitialised(PathBuf),
    /// Another server runs on this data directory (it holds `run/server.lock`).
    #[error(
        "SERVER-ALREADY-RUNNING: a Steward server already runs on {0} (it holds run/server.lock); \
         stop it first, or give this one its own --data-dir"
    )]
    AlreadyRunning(PathBuf),
    /// The directory holds no initialised server (no steward.toml).
    #[error(
        "SERVER-NOT-INITIALISED: {0} holds no Steward server (no steward.toml); run \
         `steward server init --data-dir DIR --fqdn NAME` first"
    )]
    NotInitialised(PathBuf),
    /// steward.toml does not parse or holds an invalid value.
    #[error("SERVER-CONFIG-INVALID: {path}: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// `init` was given unusable options (no name, a CRL port of 0, a bad name).
    #[error("SERVER-CONFIG-INVALID: {0}")]
    InvalidOptions(String),
    /// A file or directory could not be read or written.
    #[error("SERVER-IO: {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificate or key material could not be made, read or used.
    #[error("SERVER-PKI: {what}: {reason}")]
    Pki {
        /// Which material.
        what: String,
        /// Why.
        reason: String,
    },
    /// The configuration check found errors; the server does not start on them.
    #[error("the configuration check failed:\n{}", render(.0))]
    CheckFailed(Vec<Finding>),
    /// The database failed.
    #[error("SERVER-DATABASE: {0}")]
    Store(#[from] StoreError),
    /// A listener could not bind its address (in use, no permission for a low port, an address
    /// this host does not have).
    #[error("SERVER-BIND: cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the material.
    #[error("SERVER-TLS: {0}")]
    Tls(String),
    /// A fault inside the server (no randomness, a hash that cannot be computed).
    #[error("SERVER-INTERNAL: {0}")]
    Internal(String),
}

fn render(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("  {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ServerError {
    /// The stable diagnosis ID.
    pub fn id(&self) -> &'static str {
        match self {
            ServerError::AlreadyInitialised(_) => "SERVER-ALREADY-INITIALISED",
            ServerError::NotInitialised(_) => "SERVER-NOT-INITIALISED",
            ServerError::AlreadyRunning(_) => "SERVER-ALREADY-RUNNING",
            ServerError::Config { .. } | ServerError::InvalidOptions(_) => "SERVER-CONFIG-INVALID",
            ServerError::Io { .. } => "SERVER-IO",
            ServerError::Pki { .. } => "SERVER-PKI",
            ServerError::CheckFailed(f) => f
                .iter()
                .find(|f| f.severity == crate::config_check::Severity::Error)
                .map_or("SERVER-CONFIG-INVALID", |f| f.id),
            ServerError::Store(_) => "SERVER-DATABASE",
            ServerError::Bind { .. } => "SERVER-BIND",
            ServerError::Tls(_) => "SERVER-TLS",
            ServerError::Internal(_) => "SERVER-INTERNAL",
            ServerError::Kerberos(_) => "AUTH-KEYTAB-UNUSABLE",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServerError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pki(what: impl Into<String>, reason: impl ToString) -> Self {
        ServerError::Pki {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// A refused request: HTTP status, stable ID and message, answered as an
/// [`ApiError`] JSON body. The service layer returns these so that the JSON API and the HTML
/// console can render the same fault each in its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable ID, documented in docs/diagnostics.md.
    pub id: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiFailure {
    /// A failure with the given status, ID and message.
    pub fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
        }
    }

    /// 400 with an ID.
    pub fn bad_request(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, id, message)
    }

    /// 404 with an ID.
    pub fn not_found(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, id, message)
    }

    /// 500 for a fault of the server itself; the detail goes to the log, not to the client.
    pub fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(id = "SERVER-INTERNAL", what, error = %e, "request failed inside the server");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SERVER-INTERNAL",
            format!("the server failed while {what}; its log has the details"),
        )
    }

    /// The wire body.
    pub fn body(&self) -> ApiError {
        ApiError {
            id: self.id.to_owned(),
            message: self.message.clone(),
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.id, self.message)
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        // Overload, not a fault: every database connection stayed busy for the pool's whole
        // wait. Answered 503 SERVER-BUSY (the agent site adds Retry-After), never a 500.
        if let StoreError::Database(m) = &e
            && m.contains("pool timed out")
        {
            return crate::admission::pool_busy(m);
        }
        ApiFailure::internal("using the database", e)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

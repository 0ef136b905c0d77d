//! The Steward server: the agent site (enrollment, check-ins, long-polls over mutual TLS), the
//! console and admin API (HTTPS on their own listener and certificate), the platform CA and
//! its CRL distribution point. The `steward` binary calls [`init`], [`check_config`] and
//! [`Server::start`] / [`run`].
//!
//! Layers: `agent`, `admin` and `console` translate HTTP to and from [`Service`], which holds
//! the logic and talks to a [`steward_store::Store`]. Every refusal is an [`ApiFailure`] with
//! a stable ID (docs/diagnostics.md).
//!
//! Architecture invariants:
//! - Nothing is acknowledged before it is committed (enrollments, results, tasks, policies).
//! - The check-in of an unchanged agent does not write to the database (last-seen is batched).
//! - Every route of the agent site but enrollment requires a client certificate that rustls
//!   verified against the platform root and both CRLs; the device is the certificate's owner.
#![forbid(unsafe_code)]

mod admin;
mod admission;
mod agent;
mod auth;
#[cfg(test)]
mod checkin_writes;
mod config;
mod config_check;
mod console;
mod crl;
mod error;
mod forwarded;
mod held;
mod http;
mod http_site;
mod init;
mod lifecycle;
mod openapi;
mod password;
mod pki;
mod renew;
mod replace;
mod secret;
mod server;
mod service;
mod tls;
mod trust;

pub use admin::request_token;
pub use admission::{
    Admission, CONNECTED_GRACE, Connected, HeldGuard, Limits, Resolved as ResolvedLimits,
    SERVER_BUSY, Slot, Stats,
};
pub use auth::{AuthState, ConnAuth, Identity};
pub use config::{
    Agents, Auth, Config, Crl, DEFAULT_AGENT_ADDR, DEFAULT_AGENT_HTTP_ADDR, DEFAULT_CONSOLE_ADDR,
    DEFAULT_CRL_ADDR, DataDir, Database, FIRST_ADMIN, Listen, Provider, Role,
};
pub use config_check::{ConfigReport, Finding, Severity, check_config};
pub use error::{ApiFailure, ServerError};
pub use http::Peer;
pub use init::{InitOptions, InitReport, init};
pub use lifecycle::{Certs, EXPIRY_WARNING_SECS};
pub use openapi::document as openapi_document;
pub use password::MIN_PASSWORD_LEN;
pub use server::{Addresses, RunningServer, SEEN_FLUSH_INTERVAL, Server, ServerOverrides, run};
pub use service::{
    AGENT_SETTINGS, AGENT_SETTINGS_KEYS, AdminUser, AgentCaller, LOCAL_TOKEN_USER, LOCK_SECS,
    LONG_POLL_MARGIN, MAX_FAILED_LOGINS, PeerCert, SESSION_COOKIE, SESSION_SECS, Service,
    missing_credentials, rfc3339,
};

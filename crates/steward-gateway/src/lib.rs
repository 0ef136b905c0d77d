//! The Steward internet gateway (ITMS's "Internet gateway", cloud-enabled management).
//!
//! `join` makes two key pairs locally and trades their CSRs and a single-use token for an
//! identity certificate (gateway→server, client) and a server certificate for its external
//! names. `run` listens for agents, authenticates each by its client certificate against the
//! platform root and the current CRL (fetched periodically; the verifier is rebuilt without a
//! restart), and forwards their agent-site requests to the server over its own mutually
//! authenticated, pooled connection, stating the agent's certificate in
//! [`steward_proto::AGENT_CERT_HEADER`]. It reports itself (external name, the port it really
//! bound, thumbprints, version, health) on start and periodically; the server derives the
//! profile's gateway entries from those reports.
//!
//! Architecture invariants: the gateway stores nothing but its identity and configuration;
//! the agent identity it forwards is always the one it verified itself (a header sent by the
//! agent is replaced, never passed on); the server re-verifies it and trusts it only from an
//! enrolled gateway.
#![forbid(unsafe_code)]

mod error;
mod join;
mod run;
mod state;

pub use error::GatewayError;
pub use join::{DEFAULT_LISTEN, JoinOptions, join};
pub use run::{Gateway, RunOptions, RunningGateway};
pub use state::{GatewayConfig, GatewayDir};

/// The gateway's version, reported to the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

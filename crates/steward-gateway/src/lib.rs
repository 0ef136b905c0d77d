//! The Steward internet gateway (ITMS's "Internet gateway", cloud-enabled management).
//!
//! `join` makes two key pairs locally and trades their CSRs and a single-use token for an
//! identity certificate (gateway→server, client) and a server certificate for its external
//! names. `run` listens for agents, authenticates each by its client certificate against the
//! platform root and the current CRL (fetched periodically; the verifier is rebuilt without a
//! restart), and forwards their agent-site requests to the server over its own mutually
//! authenticated HTTP/2 link (`upstream`), stating the agent's certificate in
//! [`steward_proto::AGENT_CERT_HEADER`]. It reports itself (external name, the port it really
//! bound, thumbprints, version, health) on start and periodically; the server derives the
//! profile's gateway entries from those reports.
//!
//! The server's answer to each report drives three things the gateway does by itself: it
//! tests its own external address from its side (`probe`: resolve, connect, TLS, own
//! thumbprint) and reports the outcome at once when it changes; after `set_port` (a phased
//! port change) it serves the previous addresses until every agent has the new port, then
//! closes them; and a certificate staged by `import_cert` (judged by the `steward doctor
//! cert` rules) is announced with its root and served only once every agent has both.
//!
//! Both platform-issued certificates renew without a gap (`renew`): when the server's answer
//! says one is due, or on `steward gateway cert renew`, new keys are made here and only their
//! CSRs leave; the identity switches at once (the server accepts both until the new one's
//! first use), the server certificate is staged as next and rolled out like an import.
//!
//! Architecture invariants: the gateway stores nothing but its identity and configuration
//! (`gateway.json`, and `certs.json` with the imported or renewed certificates it names);
//! the agent identity it forwards is always the one it verified itself (a header sent by the
//! agent is replaced, never passed on); the server re-verifies it and trusts it only from an
//! enrolled gateway.
#![forbid(unsafe_code)]

mod cert;
mod error;
mod forward;
mod join;
mod port;
mod probe;
mod renew;
mod run;
mod state;
mod upstream;

pub use cert::{Staged, import_cert};
pub use error::GatewayError;
pub use join::{DEFAULT_LISTEN, JoinOptions, join};
pub use port::{PortChange, set_port};
pub use probe::{SELF_PROBE_STEP_TIMEOUT, self_probe};
pub use renew::{Recovered, RenewWhat, Renewed, recover, renew_certs};
pub use run::{Gateway, RunOptions, RunningGateway};
pub use state::{CertSlots, GatewayConfig, GatewayDir};

/// The gateway's version, reported to the server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

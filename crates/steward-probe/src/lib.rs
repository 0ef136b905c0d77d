//! Steward's network probes: gather the evidence a diagnosis needs from the network — the
//! certificate chain a TLS endpoint really sends, and the CRL a distribution point really
//! serves — and, when that fails, say *where* it failed (DNS, refused, timeout, not TLS, TLS
//! alert, HTTP status) with the address, the OS error text and the elapsed time.
//!
//! The probes judge nothing. A chain is captured without trusting it, because an untrusted,
//! expired or incomplete chain is exactly what `steward doctor` needs to see; the doctor's rules
//! (in `steward-doctor`) decide what is wrong with it. Keeping I/O here and rules there is what
//! lets the rules be tested without sockets.
//!
//! Used by `steward doctor cert`; [`path`] checks the way from an agent to the server step by
//! step for `steward-agent doctor` and `steward doctor gateway`.
#![forbid(unsafe_code)]

mod crl;
mod endpoint;
mod error;
mod net;
pub mod path;
mod tls;

pub use crl::{USER_AGENT, fetch_crl};
pub use endpoint::parse_endpoint;
pub use error::{ProbeError, Stage};
pub use tls::{ClientAuthRequest, PeerChain, fetch_chain};

/// Re-exported so callers name the same certificate type the probes return.
pub use rustls::pki_types::CertificateDer;

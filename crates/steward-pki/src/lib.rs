//! Steward's PKI core: the platform CA, certificate issuance, CRLs, PKCS#12/PEM/DER reading and
//! writing, thumbprints, and the *facts* of a certificate chain (what a certificate says, which
//! issuer signed it, whether the signature verifies).
//!
//! Architecture invariant: this crate does no network or disk I/O and never reads the clock on
//! its own; callers pass bytes in and get bytes or facts out, and pass "now" where time matters.
//! That keeps every check reproducible in tests and usable from the server, the gateway, the
//! agent and the CLI alike.
#![forbid(unsafe_code)]

mod authority;
mod chain;
mod crl;
mod error;
mod facts;
mod keyspec;
mod material;
mod resumption;
mod revocation;
mod thumbprint;

pub use authority::{
    Authority, IssuedCert, LeafRequest, Revoked, Usage, make_csr, verify_detached,
};
pub use chain::{Chain, ChainEnd, Link, LinkSource, SignatureCheck, build_chain};
pub use crl::{CrlFacts, CrlSignature, parse_crl};
pub use error::{Error, MaterialError};
pub use facts::{
    CertFacts, CertIdentity, Eku, HashAlg, KeyAlg, KeyUsageBits, SanEntry, SignatureAlg, rfc3339,
};
pub use keyspec::{KeySpec, RsaBits, RsaHash};
pub use material::{
    Material, MaterialFormat, Pkcs12Encryption, key_matches_cert, read_material, write_pkcs12,
};
pub use resumption::AgentResumption;
pub use revocation::{RevocationDepth, crl_client_verifier};
pub use thumbprint::Thumbprint;

pub use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
pub use time::OffsetDateTime;

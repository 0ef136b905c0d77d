//! Gateway certificate renewal (issue 5): a joined gateway trades CSRs for new key pairs made on
//! the gateway for a new identity and/or server certificate, over its current identity
//! ([`crate::paths::GATEWAY_RENEW`]); and the certificate status the console shows per gateway.

use serde::{Deserialize, Serialize};

/// `POST /gateway/v1/renew`: CSRs (PEM) for new keys made on the gateway. At least one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRenewRequest {
    /// CSR for a new identity (gateway→server client certificate; CN = gateway ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_csr_pem: Option<String>,
    /// CSR for a new server certificate (what agents see at the edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_csr_pem: Option<String>,
    /// The names the server certificate must cover: must be the gateway's external names as
    /// joined (a renewal never changes them; joining again does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_names: Vec<String>,
}

/// The renewed certificates. The new identity is accepted next to the current one until its
/// first use (which revokes the old); the new server certificate is staged on the gateway as
/// "next" and goes live once every agent holds its thumbprint (then the old one is revoked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRenewResponse {
    /// The new identity certificate (PEM), if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_cert_pem: Option<String>,
    /// The new server certificate (PEM), if one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cert_pem: Option<String>,
    /// Issuing chain above them (PEM).
    pub chain_pem: Vec<String>,
    /// notAfter of the new identity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_not_after: Option<String>,
    /// notAfter of the new server certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_not_after: Option<String>,
}

/// One of a gateway's platform-issued certificates as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCertStatus {
    /// `identity` (gateway→server) or `server` (what agents see).
    pub role: String,
    /// Serial (upper-case hex) of the certificate in use.
    pub serial: String,
    /// SHA-256 (hex) of the certificate in use.
    pub sha256: String,
    /// Its expiry (RFC 3339).
    pub not_after: String,
    /// A renewed certificate issued but not in use yet: its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sha256: Option<String>,
    /// `CERT-EXPIRING-SOON: ...` when it expires within 30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

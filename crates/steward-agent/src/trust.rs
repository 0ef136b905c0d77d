//! Reconnecting after a certificate rollover the agent slept through.
//!
//! While an agent is off, the server may stage a third-party certificate (its root goes to the
//! agents in a new profile version), see every other agent acknowledge it, and put it live.
//! The sleeper comes back holding only the old anchors: its TLS to the agent site fails as
//! untrusted. It then fetches the [`SignedTrustBundle`] from the plain-HTTP distribution point
//! named in its own client certificate (next to the CRLs), verifies the signature with the
//! platform root — the issuer of its own certificate's issuing CA, which it already trusts —
//! and only then adds the bundle's anchors and retries. Nothing unsigned, or signed by anyone
//! else, is ever added; an older bundle than the profile it holds is refused.

use std::time::Duration;

use base64::Engine as _;
use steward_pki::{CertFacts, verify_detached};
use steward_proto::{SignedTrustBundle, TRUST_BUNDLE_PATH, TrustBundle};

use crate::net;
use crate::store::Identity;

/// Largest bundle read.
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// Why no verified bundle was obtained.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The agent's certificate names no HTTP distribution point to fetch the bundle from.
    #[error(
        "this agent's certificate names no HTTP distribution point to fetch the trust bundle from"
    )]
    NoDistributionPoint,
    /// The platform root (the issuer of this agent's issuing CA) is not among the anchors.
    #[error("the platform root that issued this agent's CA is not among its trust anchors")]
    NoPlatformRoot,
    /// Fetching failed at every distribution point.
    #[error("the trust bundle could not be fetched: {0}")]
    Fetch(String),
    /// The answer is not a signed bundle.
    #[error("{url} did not answer with a signed trust bundle: {reason}")]
    Malformed {
        /// Where it came from.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the platform root: not from this platform.
    #[error("the trust bundle from {0} is not signed by this platform's root; ignored")]
    BadSignature(String),
    /// Older than the profile the agent holds (a replay).
    #[error(
        "the trust bundle from {url} is for profile version {got}, older than this agent's {have}; ignored"
    )]
    Stale {
        /// Where it came from.
        url: String,
        /// The agent's profile version.
        have: u64,
        /// The bundle's.
        got: u64,
    },
}

/// `http://host:port/trust/bundle.json` for each HTTP distribution point of the certificate.
fn bundle_urls(cert_pem: &str) -> Vec<String> {
    let Some(facts) = net::parse_certs(cert_pem)
        .ok()
        .and_then(|c| c.first().and_then(|d| CertFacts::from_der(d).ok()))
    else {
        return Vec::new();
    };
    facts
        .crl_urls
        .iter()
        .filter_map(|u| {
            let rest = u.strip_prefix("http://")?;
            let authority = rest.split('/').next()?;
            Some(format!("http://{authority}{TRUST_BUNDLE_PATH}"))
        })
        .collect()
}

/// The platform root among `anchors`: the issuer of the agent's issuing CA.
fn platform_root(identity: &Identity, anchors: &[String]) -> Option<Vec<u8>> {
    let issuing = identity
        .chain_pem
        .first()
        .and_then(|p| net::parse_certs(p).ok())
        .and_then(|c| c.first().and_then(|d| CertFacts::from_der(d).ok()))?;
    anchors.iter().find_map(|pem| {
        let der = net::parse_certs(pem).ok()?.into_iter().next()?;
        let f = CertFacts::from_der(&der).ok()?;
        (f.subject_raw == issuing.issuer_raw).then(|| der.to_vec())
    })
}

/// Fetches and verifies the trust bundle. `anchors` and `version` are the profile the agent
/// holds. Returns where it came from and the verified bundle.
pub async fn fetch(
    identity: &Identity,
    anchors: &[String],
    version: u64,
    timeout: Duration,
) -> Result<(String, TrustBundle), TrustError> {
    let urls = bundle_urls(&identity.cert_pem);
    if urls.is_empty() {
        return Err(TrustError::NoDistributionPoint);
    }
    let root = platform_root(identity, anchors).ok_or(TrustError::NoPlatformRoot)?;
    let mut faults = Vec::new();
    for url in urls {
        let bytes = match steward_probe::fetch_crl(&url, timeout, MAX_BUNDLE_BYTES).await {
            Ok(b) => b,
            Err(e) => {
                faults.push(format!("{url}: {e}"));
                continue;
            }
        };
        let malformed = |reason: String| TrustError::Malformed {
            url: url.clone(),
            reason,
        };
        let signed: SignedTrustBundle =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = b64
            .decode(signed.bundle_base64.trim())
            .map_err(|e| malformed(format!("bundle: {e}")))?;
        let sig = b64
            .decode(signed.signature_base64.trim())
            .map_err(|e| malformed(format!("signature: {e}")))?;
        if !verify_detached(&root, &raw, &sig) {
            return Err(TrustError::BadSignature(url));
        }
        let bundle: TrustBundle =
            serde_json::from_slice(&raw).map_err(|e| malformed(e.to_string()))?;
        if bundle.format != TrustBundle::FORMAT {
            return Err(malformed(format!("unknown format {:?}", bundle.format)));
        }
        if bundle.profile_version < version {
            return Err(TrustError::Stale {
                url,
                have: version,
                got: bundle.profile_version,
            });
        }
        return Ok((url, bundle));
    }
    Err(TrustError::Fetch(faults.join("; ")))
}

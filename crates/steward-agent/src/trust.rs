//! Reconnecting after a certificate rollover the agent slept through.
//!
//! While an agent is off, the server may stage a third-party certificate (its root goes to the
//! agents in a new profile version), see every other agent acknowledge it, and put it live.
//! The sleeper comes back holding only the old anchors: its TLS to the agent site fails as
//! untrusted. It then fetches the [`SignedTrustBundle`] from the plain-HTTP distribution point
//! named in its own client certificate (next to the CRLs), verifies the signature with the
//! platform root — the issuer of its own certificate's issuing CA, which it already trusts
//! (after a root roll either root: the bundle is signed by both during the overlap) —
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

/// The platform roots among `anchors`: the issuers of the agent's issuing CA. After a root
/// roll the chain holds the issuing CA's certificate under each root (same name and key), so
/// there may be two.
fn platform_roots(identity: &Identity, anchors: &[String]) -> Vec<Vec<u8>> {
    let issuers: Vec<Vec<u8>> = identity
        .chain_pem
        .iter()
        .filter_map(|p| net::parse_certs(p).ok())
        .flatten()
        .filter_map(|d| CertFacts::from_der(&d).ok())
        .map(|f| f.issuer_raw)
        .collect();
    anchors
        .iter()
        .filter_map(|pem| {
            let der = net::parse_certs(pem).ok()?.into_iter().next()?;
            let f = CertFacts::from_der(&der).ok()?;
            issuers.contains(&f.subject_raw).then(|| der.to_vec())
        })
        .collect()
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
    let roots = platform_roots(identity, anchors);
    if roots.is_empty() {
        return Err(TrustError::NoPlatformRoot);
    }
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
        // The first signature is by the root every agent knows (during a root roll's
        // overlap, the previous one); further ones by the new root. Any that verifies with a
        // platform root this agent holds will do.
        let mut sigs = Vec::new();
        for s in std::iter::once(&signed.signature_base64).chain(&signed.more_signatures_base64) {
            sigs.push(
                b64.decode(s.trim())
                    .map_err(|e| malformed(format!("signature: {e}")))?,
            );
        }
        if !sigs
            .iter()
            .any(|sig| roots.iter().any(|root| verify_detached(root, &raw, sig)))
        {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use steward_pki::{Authority, KeySpec, LeafRequest, OffsetDateTime, Usage};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            body.join("\n")
        )
    }

    /// Serves `body` to every request on a loopback port; returns the port.
    async fn serve(body: Vec<u8>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            }
        });
        port
    }

    struct Roll {
        r1: Authority,
        r2: Authority,
        issuing: Authority,
        /// The issuing CA under the new root (same name and key).
        i2: Vec<u8>,
    }

    fn roll() -> Roll {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let r1 = Authority::new_root("R1", KeySpec::EcdsaP256, now - day, now + day * 30).unwrap();
        let issuing = r1
            .new_intermediate("I", KeySpec::EcdsaP256, now - day, now + day * 30, &[])
            .unwrap();
        let r2 = Authority::new_root("R2", KeySpec::EcdsaP256, now - day, now + day * 30).unwrap();
        let i2 = r2
            .certify_ca(&issuing, 0, now - day, now + day * 30, &[])
            .unwrap()
            .to_vec();
        Roll {
            r1,
            r2,
            issuing,
            i2,
        }
    }

    fn identity(r: &Roll, port: u16, chain: Vec<String>) -> Identity {
        let now = OffsetDateTime::now_utc();
        let leaf = r
            .issuing
            .issue(&LeafRequest {
                common_name: "device".into(),
                dns_names: vec![],
                ip_addrs: vec![],
                usage: Usage::Client,
                not_before: now - time::Duration::hours(1),
                not_after: now + time::Duration::days(1),
                crl_urls: vec![format!("http://127.0.0.1:{port}/crl/issuing.crl")],
                key: KeySpec::EcdsaP256,
            })
            .unwrap();
        Identity {
            device_id: "device".into(),
            cert_pem: pem(&leaf.cert),
            chain_pem: chain,
            profile: steward_proto::CommunicationProfile {
                version: 1,
                servers: vec![],
                protocol: steward_proto::Protocol::Https,
                trust_anchors_pem: vec![],
                gateways: vec![],
            },
            enrolled_at: String::new(),
            enrolled_via: String::new(),
        }
    }

    fn signed(r: &Roll, signers: &[&Authority]) -> Vec<u8> {
        let bundle = TrustBundle {
            format: TrustBundle::FORMAT.into(),
            profile_version: 5,
            issued_at: String::new(),
            trust_anchors_pem: vec![pem(r.r2.cert()), pem(r.r1.cert())],
        };
        let raw = serde_json::to_vec(&bundle).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let sigs: Vec<String> = signers
            .iter()
            .map(|a| b64.encode(a.sign_detached(&raw).unwrap()))
            .collect();
        serde_json::to_vec(&SignedTrustBundle {
            bundle_base64: b64.encode(&raw),
            signature_base64: sigs[0].clone(),
            more_signatures_base64: sigs[1..].to_vec(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_bundle_signed_during_a_root_roll_verifies_for_agents_of_either_root() {
        let r = roll();
        let t = Duration::from_secs(5);
        // Signed as during the overlap: the old root first, then the new one.
        let port = serve(signed(&r, &[&r.r1, &r.r2])).await;
        // An agent that slept through the roll: old chain, old root only.
        let old = identity(&r, port, vec![pem(r.issuing.cert())]);
        let (_, b) = fetch(&old, &[pem(r.r1.cert())], 1, t).await.unwrap();
        assert_eq!(b.trust_anchors_pem.len(), 2);
        // An agent that knows only the new root (its chain has the issuing CA under both):
        // the second signature is the one it can check.
        let new = identity(&r, port, vec![pem(r.issuing.cert()) + &pem(&r.i2)]);
        fetch(&new, &[pem(r.r2.cert())], 1, t).await.unwrap();
    }

    #[tokio::test]
    async fn a_bundle_signed_only_by_a_root_the_agent_lacks_is_refused() {
        let r = roll();
        let t = Duration::from_secs(5);
        let port = serve(signed(&r, &[&r.r2])).await;
        let old = identity(&r, port, vec![pem(r.issuing.cert())]);
        let e = fetch(&old, &[pem(r.r1.cert())], 1, t).await.unwrap_err();
        assert!(matches!(e, TrustError::BadSignature(_)), "{e}");
    }
}

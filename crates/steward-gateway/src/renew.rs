//! Renewal of the gateway's two platform-issued certificates, without a gap for anyone.
//!
//! New key pairs are made here and only their CSRs leave the gateway
//! (`POST /gateway/v1/renew`, over the current identity). Then:
//!
//! - **identity** (gateway→server): written as `identity.key.next` and `identity.pem.next`,
//!   then renamed key first, certificate second. A crash between the renames is finished by
//!   [`recover`] at the next start (or renewal). The server accepts the old and the new
//!   identity until the new one's first use, which revokes the old, so the switch is
//!   immediate: a running gateway notices the new `identity.pem` before its next report.
//! - **server certificate** (what agents see): written to `certs/<sha256>/` (like an import,
//!   without `root.pem`: agents trust the platform root) and staged as `next` in `certs.json`
//!   — one atomic write. From there the import's rollout takes over: the thumbprint is
//!   reported, the profile entry lists both, and the edge switches only once the server says
//!   every active agent holds that profile; the server then revokes the old certificate. A
//!   device that never comes back would hold the rollout forever: just before the served
//!   certificate expires (its last tenth of lifetime, at most a day) the gateway switches anyway
//!   (`GATEWAY-CERT-FORCED-SWITCH`), since every agent would fail at expiry.
//!
//! The running gateway renews when a report's answer says so (`renew_identity`,
//! `renew_server`: the server applies `[certs] renew_at_percent` to the dates it recorded);
//! `steward gateway cert renew` does the same on demand, whether the gateway runs or not.

use std::path::Path;
use std::time::Duration;

use steward_pki::{CertFacts, KeySpec, Thumbprint, make_csr};
use steward_proto::{GatewayRenewRequest, GatewayRenewResponse, error_chain, paths};

use crate::GatewayError;
use crate::join::refused;
use crate::state::write_atomic;
use crate::state::{GatewayDir, IMPORTED_CHAIN, IMPORTED_KEY, certs_from_pem, pem, read_certs};
use crate::upstream::upstream_client;

/// Longest renewal request.
const RENEW_TIMEOUT: Duration = Duration::from_secs(60);

/// Which certificates to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewWhat {
    /// The identity certificate (gateway→server).
    pub identity: bool,
    /// The server certificate agents see (platform-issued only).
    pub server: bool,
}

impl RenewWhat {
    /// Both certificates.
    pub const BOTH: Self = Self {
        identity: true,
        server: true,
    };
}

/// What [`renew_certs`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renewed {
    /// SHA-256 of the new identity certificate, in use from now on.
    pub identity: Option<String>,
    /// SHA-256 of the new server certificate, staged as next.
    pub server: Option<String>,
    /// Requested but not done, and why (an imported certificate is served, a staged one is
    /// still being rolled out).
    pub skipped: Vec<String>,
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovered {
    /// Nothing was left half done.
    Nothing,
    /// A renewed identity whose renames were cut short is now in place.
    IdentityCommitted,
    /// A renewed key without its certificate (cut short before it was written) was removed;
    /// the current identity stays.
    IdentityDiscarded,
}

/// Finishes an identity renewal cut short (see the module documentation). Idempotent.
pub fn recover(data_dir: &Path) -> Result<Recovered, GatewayError> {
    let dir = GatewayDir::new(data_dir);
    let (key_next, cert_next) = (dir.identity_key_next(), dir.identity_cert_next());
    let outcome = match (key_next.exists(), cert_next.exists()) {
        // Both written, neither renamed: the renewal had completed; commit it.
        (true, true) => {
            commit_identity(&dir)?;
            Recovered::IdentityCommitted
        }
        // The key is in place already: the certificate follows.
        (false, true) => {
            rename(&cert_next, &dir.identity_cert())?;
            sync_dir(data_dir);
            Recovered::IdentityCommitted
        }
        // The certificate never reached the disk: the key alone is useless.
        (true, false) => {
            std::fs::remove_file(&key_next).map_err(|e| GatewayError::io(&key_next, e))?;
            Recovered::IdentityDiscarded
        }
        (false, false) => Recovered::Nothing,
    };
    if outcome != Recovered::Nothing {
        tracing::warn!(id = "GATEWAY-RENEW-RECOVERED", outcome = ?outcome, "an interrupted identity renewal was finished");
    }
    Ok(outcome)
}

fn rename(from: &Path, to: &Path) -> Result<(), GatewayError> {
    std::fs::rename(from, to).map_err(|e| GatewayError::io(to, e))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the renames durable; a failure here is not worth failing the renewal.
        let _ = d.sync_all();
    }
}

/// The two renames: key first, so a crash in between leaves `identity.pem.next`, which
/// [`recover`] renames.
fn commit_identity(dir: &GatewayDir) -> Result<(), GatewayError> {
    rename(&dir.identity_key_next(), &dir.identity_key())?;
    rename(&dir.identity_cert_next(), &dir.identity_cert())?;
    if let Some(parent) = dir.identity_cert().parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// The gateway's identity chain as presented to the server: `identity.pem` holds the leaf
/// (after `join`) or the leaf and its issuing chain (after a renewal; the issuing CA may have
/// changed); `chain.pem` completes the former.
pub(crate) fn identity_chain(
    dir: &GatewayDir,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, GatewayError> {
    let mut identity = read_certs(&dir.identity_cert())?;
    if identity.len() == 1 {
        identity.extend(read_certs(&dir.chain())?);
    }
    Ok(identity)
}

/// SHA-256 of the identity certificate on disk (the leaf).
pub(crate) fn identity_sha256(dir: &GatewayDir) -> Result<String, GatewayError> {
    let certs = read_certs(&dir.identity_cert())?;
    Ok(certs
        .first()
        .map(|c| Thumbprint::of(c).sha256_hex())
        .unwrap_or_default())
}

pub(crate) fn read_anchors(dir: &GatewayDir) -> Result<Vec<String>, GatewayError> {
    let anchors =
        std::fs::read_to_string(dir.anchors()).map_err(|e| GatewayError::io(dir.anchors(), e))?;
    Ok(vec![anchors])
}

/// The advisory lock of a renewal; released when dropped.
fn lock(dir: &GatewayDir) -> Result<std::fs::File, GatewayError> {
    let path = dir.renew_lock();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| GatewayError::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(GatewayError::RenewBusy(path)),
        Err(std::fs::TryLockError::Error(e)) => Err(GatewayError::io(&path, e)),
    }
}

/// Renews the gateway's certificates now (see the module documentation). Works whether the
/// gateway runs or not: a running gateway takes the new identity before its next report and
/// announces the staged server certificate with it.
pub async fn renew_certs(data_dir: &Path, what: RenewWhat) -> Result<Renewed, GatewayError> {
    let dir = GatewayDir::new(data_dir);
    let _lock = lock(&dir)?;
    recover(data_dir)?;
    let config = dir.read_config()?;
    let mut out = Renewed::default();

    let mut server = what.server;
    if server {
        let slots = dir.read_slots()?;
        let current = dir.load_current()?;
        if current.root_pem.is_some() {
            server = false;
            out.skipped.push(format!(
                "server certificate: the one served ({}) is imported, not platform-issued; \
                 replace it with `steward gateway cert import`",
                current.sha256
            ));
        } else if let Some(next) = slots.next.filter(|n| *n != current.sha256) {
            server = false;
            out.skipped.push(format!(
                "server certificate: {next} is staged already and goes live once every agent \
                 holds its thumbprint"
            ));
        }
    }
    if !what.identity && !server {
        return Ok(out);
    }

    let crypto = |e: steward_pki::Error| GatewayError::Crypto(e.to_string());
    let identity_csr = if what.identity {
        Some(make_csr(KeySpec::EcdsaP256, "steward-gateway").map_err(crypto)?)
    } else {
        None
    };
    let server_csr = if server {
        Some(make_csr(KeySpec::EcdsaP256, &config.external_name).map_err(crypto)?)
    } else {
        None
    };
    let (client, _) = upstream_client(&dir, &read_anchors(&dir)?, RENEW_TIMEOUT)?;
    let url = format!("{}{}", config.server_url, paths::GATEWAY_RENEW);
    let resp = client
        .post(&url)
        .json(&GatewayRenewRequest {
            identity_csr_pem: identity_csr.as_ref().map(|c| c.0.clone()),
            server_csr_pem: server_csr.as_ref().map(|c| c.0.clone()),
            external_names: vec![config.external_name.clone()],
        })
        .send()
        .await
        .map_err(|e| GatewayError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    if !resp.status().is_success() {
        return Err(refused(&url, resp).await);
    }
    let answer: GatewayRenewResponse =
        resp.json().await.map_err(|e| GatewayError::Unreachable {
            url: url.clone(),
            reason: format!("the answer is not a renewal response: {e}"),
        })?;
    let chain: String = answer.chain_pem.concat();
    let bad = |reason: String| GatewayError::Refused {
        url: url.clone(),
        id: "GATEWAY-RENEW-ANSWER".to_owned(),
        message: reason,
        retry_after: None,
    };

    // The server certificate first: staging it changes nothing agents see yet.
    if let Some((_, key)) = server_csr {
        let leaf = answer
            .server_cert_pem
            .as_deref()
            .ok_or_else(|| bad("no server certificate in the answer".to_owned()))?;
        let der = certs_from_pem(leaf.as_bytes()).map_err(bad)?;
        let sha = Thumbprint::of(&der[0]).sha256_hex();
        let target = dir.imported(&sha);
        std::fs::create_dir_all(&target).map_err(|e| GatewayError::io(&target, e))?;
        write_atomic(
            &target.join(IMPORTED_KEY),
            pem("PRIVATE KEY", &key).as_bytes(),
            0o600,
        )?;
        write_atomic(
            &target.join(IMPORTED_CHAIN),
            format!("{leaf}{chain}").as_bytes(),
            0o644,
        )?;
        // Checked from disk, so what `run` loads is what was issued.
        dir.load_imported(&sha)?;
        let mut slots = dir.read_slots()?;
        slots.next = Some(sha.clone());
        // The one step that stages it.
        dir.write_slots(&slots)?;
        tracing::info!(id = "GATEWAY-CERT-STAGED", thumbprint = %sha, "renewed server certificate staged; served once every agent holds its thumbprint");
        out.server = Some(sha);
    }

    if let Some((_, key)) = identity_csr {
        let leaf = answer
            .identity_cert_pem
            .as_deref()
            .ok_or_else(|| bad("no identity certificate in the answer".to_owned()))?;
        let der = certs_from_pem(leaf.as_bytes()).map_err(bad)?;
        let facts = CertFacts::from_der(&der[0]).map_err(bad)?;
        if facts.common_names.first() != Some(&config.gateway_id) {
            return Err(bad(format!(
                "the renewed identity names {:?}, not this gateway ({})",
                facts.common_names, config.gateway_id
            )));
        }
        write_atomic(
            &dir.identity_key_next(),
            pem("PRIVATE KEY", &key).as_bytes(),
            0o600,
        )?;
        write_atomic(
            &dir.identity_cert_next(),
            format!("{leaf}{chain}").as_bytes(),
            0o644,
        )?;
        commit_identity(&dir)?;
        let sha = facts.thumbprint.sha256_hex();
        tracing::info!(id = "GATEWAY-IDENTITY-SWITCHED", thumbprint = %sha, "renewed identity in place; the server retires the previous one at its first use");
        out.identity = Some(sha);
    }
    Ok(out)
}

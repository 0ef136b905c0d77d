//! Renewing the agent's own client certificate over its authenticated channel.
//!
//! The server asks (`renew_certificate` in a check-in answer) once the configured share of the
//! certificate's lifetime has passed. A new key is made here and written (0600, as
//! `agent.key.pending`) before its CSR leaves; the server signs it and keeps the current
//! certificate valid until the first request made with the new one. The new pair is committed
//! exactly like an enrollment (see [`crate::enroll`]): identity staged as
//! `identity.json.pending`, then two renames, key first, and [`DataDir::load_identity`]
//! finishes a commit a crash interrupted. At every instant the files on disk hold a pair the
//! server accepts: the old one until the renames, the new one after.

use std::fs;

use steward_pki::{CertFacts, KeySpec};
use steward_proto::{RenewRequest, RenewResponse, paths};

use crate::net::{self, ClientIdentity, Connection, Fault};
use crate::store::{self, DataDir, Identity, PRIVATE, PUBLIC, StoreError};

/// Why a renewal failed. The current identity keeps working in every case.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The key pair or CSR could not be made.
    #[error("cannot make the new key pair: {0}")]
    Key(String),
    /// The data directory could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not be asked, or refused.
    #[error("{0}")]
    Request(Fault),
    /// The server's answer is not a usable certificate for the new key and this device.
    #[error("the renewed certificate is unusable: {0}")]
    BadAnswer(String),
}

/// A committed renewal.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The new identity (as now on disk).
    pub identity: Identity,
    /// The new private key (PEM, as now on disk).
    pub key_pem: String,
    /// The new certificate's serial.
    pub serial: String,
    /// Its notAfter (RFC 3339).
    pub not_after: String,
}

/// Renews over `conn` (a connection authenticated with the current identity) and commits the
/// new key and certificate to `dir`.
pub async fn renew(
    dir: &DataDir,
    identity: &Identity,
    conn: &mut Connection,
    timeout: std::time::Duration,
) -> Result<Renewed, RenewError> {
    let (csr_pem, key_der) = steward_pki::make_csr(KeySpec::EcdsaP256, &identity.device_id)
        .map_err(|e| RenewError::Key(e.to_string()))?;
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key_der));
    // Leftovers of an earlier renewal that never committed are replaced.
    let _ = fs::remove_file(dir.pending_identity_path());
    store::write_atomic(&dir.pending_key_path(), key_pem.as_bytes(), PRIVATE)?;
    let answer: Result<RenewResponse, Fault> = conn
        .post_json(paths::RENEW, &RenewRequest { csr_pem }, timeout)
        .await;
    let resp = match answer {
        Ok(r) => r,
        Err(f) => {
            let _ = fs::remove_file(dir.pending_key_path());
            return Err(RenewError::Request(f));
        }
    };
    let checked = check_answer(&resp, &key_pem, &identity.device_id);
    let serial = match checked {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(dir.pending_key_path());
            return Err(e);
        }
    };
    let renewed = Identity {
        cert_pem: resp.cert_pem,
        chain_pem: resp.chain_pem,
        ..identity.clone()
    };
    store::write_json(&dir.pending_identity_path(), &renewed, PUBLIC)?;
    let io = |path: std::path::PathBuf, source: std::io::Error| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    fs::rename(dir.pending_key_path(), dir.key_path()).map_err(|e| io(dir.key_path(), e))?;
    store::sync_dir(dir.root())?;
    fs::rename(dir.pending_identity_path(), dir.identity_path())
        .map_err(|e| io(dir.identity_path(), e))?;
    store::sync_dir(dir.root())?;
    Ok(Renewed {
        identity: renewed,
        key_pem,
        serial,
        not_after: resp.not_after,
    })
}

/// The certificate matches the new key and names this device; returns its serial.
fn check_answer(
    resp: &RenewResponse,
    key_pem: &str,
    device_id: &str,
) -> Result<String, RenewError> {
    ClientIdentity::from_pem(&resp.cert_pem, &resp.chain_pem, key_pem)
        .map_err(|e| RenewError::BadAnswer(e.to_string()))?;
    let certs = net::parse_certs(&resp.cert_pem).map_err(RenewError::BadAnswer)?;
    let facts = certs
        .first()
        .ok_or_else(|| RenewError::BadAnswer("no certificate".to_owned()))
        .and_then(|c| CertFacts::from_der(c).map_err(|e| RenewError::BadAnswer(e.to_string())))?;
    if !facts.common_names.iter().any(|cn| cn == device_id) {
        return Err(RenewError::BadAnswer(format!(
            "it names {:?}, not this device {device_id}",
            facts.common_names
        )));
    }
    Ok(facts.serial)
}

//! The gateway's data directory: its identity and configuration, nothing else (it stores no
//! agent data). Keys are written 0600; every file is written atomically (temp, fsync, rename).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::GatewayError;

/// `gateway.json`: what `join` learned and `run` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// The gateway's ID (CN of its identity certificate).
    pub gateway_id: String,
    /// The server's agent site (`https://host:port`), the upstream of every request.
    pub server_url: String,
    /// The external name agents use (reported to the server; in the profile).
    pub external_name: String,
    /// Where to listen for agents.
    pub listen: SocketAddr,
    /// The issuing CA's CRL distribution point given at join (kept for reference: `run`
    /// fetches the CRL from the agent site, `/gateway/v1/crl`, over its own link).
    pub crl_url: String,
}

/// Paths inside the data directory.
#[derive(Debug, Clone)]
pub struct GatewayDir {
    root: PathBuf,
}

impl GatewayDir {
    /// The data directory at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// `gateway.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("gateway.json")
    }
    /// The identity (client) key for the gateway→server link.
    pub fn identity_key(&self) -> PathBuf {
        self.root.join("identity.key")
    }
    /// The identity (client) certificate.
    pub fn identity_cert(&self) -> PathBuf {
        self.root.join("identity.pem")
    }
    /// The key of the certificate agents see.
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    /// The certificate agents see.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    /// The issuing chain above both certificates.
    pub fn chain(&self) -> PathBuf {
        self.root.join("chain.pem")
    }
    /// The platform trust anchors.
    pub fn anchors(&self) -> PathBuf {
        self.root.join("anchors.pem")
    }

    /// Reads `gateway.json`.
    pub fn read_config(&self) -> Result<GatewayConfig, GatewayError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| GatewayError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| GatewayError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }
}

/// Writes a file atomically with the given mode: a reader (or a crash) never sees half of it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GatewayError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(|e| GatewayError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| GatewayError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| GatewayError::io(path, e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        // Makes the rename itself durable; a failure here is not worth failing the write.
        let _ = d.sync_all();
    }
    Ok(())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path).map_err(|e| GatewayError::io(path, e))
}

/// Every certificate of a PEM file.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let bytes = read_bytes(path)?;
    certs_from_pem(&bytes).map_err(|reason| GatewayError::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

/// Every certificate of PEM text; at least one.
pub(crate) fn certs_from_pem(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".to_owned());
    }
    Ok(certs)
}

/// A PKCS#8 key from a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, GatewayError> {
    let bytes = read_bytes(path)?;
    PrivatePkcs8KeyDer::from_pem_slice(&bytes)
        .map(PrivateKeyDer::Pkcs8)
        .map_err(|e| GatewayError::Corrupt {
            path: path.to_owned(),
            reason: format!("not a PKCS#8 PEM key: {e}"),
        })
}

/// PEM text of one DER object.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

//! The gateway's data directory: its identity and configuration, nothing else (it stores no
//! agent data). Keys are written 0600; every file is written atomically (temp, fsync, rename).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
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
    /// Addresses listened on before `steward gateway set-port`: still served, because an
    /// agent on the internet can learn the new port only through the old one, until the
    /// server says every agent has the new profile. Absent in files written before port
    /// changes existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_listen: Vec<SocketAddr>,
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

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
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
    /// A renewed identity key, written before the commit renames it over `identity.key`.
    pub fn identity_key_next(&self) -> PathBuf {
        self.root.join("identity.key.next")
    }
    /// A renewed identity certificate (leaf and issuing chain), written before the commit
    /// renames it over `identity.pem`. Its presence at start means the commit was cut short:
    /// [`crate::recover`] finishes it.
    pub fn identity_cert_next(&self) -> PathBuf {
        self.root.join("identity.pem.next")
    }
    /// Held (an advisory lock) while a renewal runs, so `steward gateway cert renew` and the
    /// running gateway never renew at the same time.
    pub fn renew_lock(&self) -> PathBuf {
        self.root.join("renew.lock")
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

    /// `certs.json`: which imported server certificate is current and which is staged.
    /// Absent until the first `steward gateway cert import`.
    pub fn cert_slots(&self) -> PathBuf {
        self.root.join("certs.json")
    }
    /// The directory of one imported (or renewed) server certificate, named by its SHA-256
    /// (a renewed platform certificate has no `root.pem`): written once,
    /// never changed, so switching certificates is one atomic write of `certs.json`.
    pub fn imported(&self, sha256: &str) -> PathBuf {
        self.root.join("certs").join(sha256)
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

    /// Writes `gateway.json` atomically.
    pub fn write_config(&self, cfg: &GatewayConfig) -> Result<(), GatewayError> {
        let json =
            serde_json::to_string_pretty(cfg).map_err(|e| GatewayError::Crypto(e.to_string()))?;
        write_atomic(&self.config(), json.as_bytes(), 0o644)
    }

    /// Reads `certs.json`; no file means no imported certificate.
    pub fn read_slots(&self) -> Result<CertSlots, GatewayError> {
        let path = self.cert_slots();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| GatewayError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CertSlots::default()),
            Err(e) => Err(GatewayError::io(&path, e)),
        }
    }

    /// Writes `certs.json` atomically: the one step that stages or promotes a certificate.
    pub fn write_slots(&self, slots: &CertSlots) -> Result<(), GatewayError> {
        let json =
            serde_json::to_string_pretty(slots).map_err(|e| GatewayError::Crypto(e.to_string()))?;
        write_atomic(&self.cert_slots(), json.as_bytes(), 0o644)
    }

    /// The server certificate agents see now: the imported current one, else the platform
    /// certificate from `join`.
    pub(crate) fn load_current(&self) -> Result<ServerCert, GatewayError> {
        match self.read_slots()?.current {
            Some(sha) => self.load_imported(&sha),
            None => {
                let mut chain = read_certs(&self.server_cert())?;
                chain.extend(read_certs(&self.chain())?);
                Ok(ServerCert::new(chain, read_key(&self.server_key())?, None))
            }
        }
    }

    /// An imported certificate by its SHA-256 (see [`GatewayDir::imported`]).
    pub(crate) fn load_imported(&self, sha256: &str) -> Result<ServerCert, GatewayError> {
        let dir = self.imported(sha256);
        let chain = read_certs(&dir.join(IMPORTED_CHAIN))?;
        let key = read_key(&dir.join(IMPORTED_KEY))?;
        // No root file: a renewed platform certificate (agents trust the platform root).
        let root = match std::fs::read_to_string(dir.join(IMPORTED_ROOT)) {
            Ok(r) => Some(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(GatewayError::io(dir.join(IMPORTED_ROOT), e)),
        };
        let cert = ServerCert::new(chain, key, root);
        if cert.sha256 != sha256 {
            return Err(GatewayError::Corrupt {
                path: dir,
                reason: format!("holds the certificate {}, not {sha256}", cert.sha256),
            });
        }
        Ok(cert)
    }
}

/// Files of an imported certificate's directory.
pub(crate) const IMPORTED_CHAIN: &str = "chain.pem";
pub(crate) const IMPORTED_KEY: &str = "key.pem";
pub(crate) const IMPORTED_ROOT: &str = "root.pem";

/// `certs.json`: the imported server certificates in use, by SHA-256 (hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSlots {
    /// The imported certificate served now; `None`: the platform certificate from `join`.
    #[serde(default)]
    pub current: Option<String>,
    /// Staged by `steward gateway cert import`: announced to agents (thumbprint and root)
    /// and served once the server says every agent has it.
    #[serde(default)]
    pub next: Option<String>,
}

/// A server certificate with its key, as the edge serves it.
#[derive(Debug)]
pub(crate) struct ServerCert {
    /// Leaf first, then the issuers the edge sends (never the root of an import).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 (hex) of the leaf: what agents pin.
    pub sha256: String,
    /// The root (PEM) agents must trust for an imported certificate; `None` for the
    /// platform's, which agents trust already.
    pub root_pem: Option<String>,
}

impl ServerCert {
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        root_pem: Option<String>,
    ) -> Self {
        let sha256 = chain
            .first()
            .map(|c| steward_pki::Thumbprint::of(c).sha256_hex())
            .unwrap_or_default();
        Self {
            chain,
            key,
            sha256,
            root_pem,
        }
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

/// A private key from a PEM file: PKCS#8 (what `join` writes), or PKCS#1/SEC1 (an imported
/// certificate's key is kept in the form it came in).
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, GatewayError> {
    let bytes = read_bytes(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| GatewayError::Corrupt {
        path: path.to_owned(),
        reason: format!("not a PEM private key: {e}"),
    })
}

/// PEM text of a private key, with the label of its form.
pub(crate) fn key_pem(key: &PrivateKeyDer<'_>) -> String {
    match key {
        PrivateKeyDer::Pkcs1(k) => pem("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => pem("EC PRIVATE KEY", k.secret_sec1_der()),
        other => pem("PRIVATE KEY", other.secret_der()),
    }
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

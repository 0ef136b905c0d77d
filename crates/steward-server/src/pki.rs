//! The server's PKI on disk: the platform CAs, the listener certificates, and the CRLs signed
//! from them. Private keys are written once, mode 0600, and never logged.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use steward_pki::{Authority, IssuedCert, KeySpec, LeafRequest, OffsetDateTime, Revoked, Usage};
use time::Duration;

use crate::ServerError;
use crate::config::{Config, DataDir};
use crate::secret::{pem, unhex};

/// Validity of the platform root.
pub(crate) const ROOT_DAYS: i64 = 3652;
/// Validity of the issuing CA.
pub(crate) const ISSUING_DAYS: i64 = 1826;
/// Validity of listener certificates: 397 days, the longest public CAs issue and the longest
/// browsers accept for the console.
pub(crate) const LISTENER_DAYS: i64 = 397;
/// Validity of agent certificates (renewed over the authenticated channel in a later issue).
pub(crate) const AGENT_DAYS: i64 = 365;
/// Backdating of notBefore, for clients whose clocks run a little behind.
pub(crate) const BACKDATE: Duration = Duration::minutes(5);

/// Reads the first certificate of a PEM file.
pub(crate) fn read_cert(path: &Path) -> Result<CertificateDer<'static>, ServerError> {
    CertificateDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

/// Reads a PKCS#8 private key from a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivatePkcs8KeyDer<'static>, ServerError> {
    PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| pem_err(path, e))
}

fn pem_err(path: &Path, e: rustls_pki_types::pem::Error) -> ServerError {
    match e {
        rustls_pki_types::pem::Error::Io(io) => ServerError::io(path, io),
        other => ServerError::pki(path.display().to_string(), other),
    }
}

/// Writes a new file (never replacing one) with the given mode.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServerError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| ServerError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ServerError::io(path, e))
}

/// Writes a private key (PKCS#8 PEM), owner-only.
pub(crate) fn write_key(path: &Path, pkcs8: &[u8]) -> Result<(), ServerError> {
    write_new(path, pem("PRIVATE KEY", pkcs8).as_bytes(), 0o600)
}

/// Writes a secret that is not a key (the admin token), owner-only.
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), ServerError> {
    write_new(path, text.as_bytes(), 0o600)
}

/// Writes a certificate (PEM), world-readable: certificates are public.
pub(crate) fn write_cert(path: &Path, der: &[u8]) -> Result<(), ServerError> {
    write_new(path, pem("CERTIFICATE", der).as_bytes(), 0o644)
}

/// The platform CAs, loaded.
#[derive(Debug)]
pub(crate) struct Pki {
    /// The root (its key signs the root CRL).
    pub root: Authority,
    /// The issuing CA.
    pub issuing: Authority,
    /// The root in PEM: the trust anchor of every profile.
    pub root_pem: String,
    /// The issuing CA in PEM: the chain sent with every agent certificate.
    pub issuing_pem: String,
}

impl Pki {
    /// Loads the CAs from the data directory.
    pub(crate) fn load(dir: &DataDir) -> Result<Self, ServerError> {
        let load = |cert: &Path, key: &Path, what: &str| -> Result<Authority, ServerError> {
            let c = read_cert(cert)?;
            let k = read_key(key)?;
            Authority::from_der(c, k.secret_pkcs8_der(), KeySpec::EcdsaP256)
                .map_err(|e| ServerError::pki(what, e))
        };
        let root = load(&dir.root_cert(), &dir.root_key(), "the platform root CA")?;
        let issuing = load(&dir.issuing_cert(), &dir.issuing_key(), "the issuing CA")?;
        Ok(Self {
            root_pem: pem("CERTIFICATE", root.cert()),
            issuing_pem: pem("CERTIFICATE", issuing.cert()),
            root,
            issuing,
        })
    }

    /// Creates a new platform root and issuing CA (ECDSA P-256).
    pub(crate) fn create(cfg: &Config, now: OffsetDateTime) -> Result<Self, ServerError> {
        let root = Authority::new_root(
            "Steward Platform Root CA",
            KeySpec::EcdsaP256,
            now - BACKDATE,
            now + Duration::days(ROOT_DAYS),
        )
        .map_err(|e| ServerError::pki("the platform root CA", e))?;
        let issuing = root
            .new_intermediate(
                "Steward Issuing CA",
                KeySpec::EcdsaP256,
                now - BACKDATE,
                now + Duration::days(ISSUING_DAYS),
                &[cfg.root_crl_url()],
            )
            .map_err(|e| ServerError::pki("the issuing CA", e))?;
        Ok(Self {
            root_pem: pem("CERTIFICATE", root.cert()),
            issuing_pem: pem("CERTIFICATE", issuing.cert()),
            root,
            issuing,
        })
    }

    /// Issues a listener certificate (serverAuth) for these names.
    pub(crate) fn issue_listener(
        &self,
        common_name: &str,
        dns_names: Vec<String>,
        ip_addrs: Vec<IpAddr>,
        crl_url: &str,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, ServerError> {
        self.issuing
            .issue(&LeafRequest {
                common_name: common_name.to_owned(),
                dns_names,
                ip_addrs,
                usage: Usage::Server,
                not_before: now - BACKDATE,
                not_after: now + Duration::days(LISTENER_DAYS),
                crl_urls: vec![crl_url.to_owned()],
                key: KeySpec::EcdsaP256,
            })
            .map_err(|e| ServerError::pki(format!("the {common_name} certificate"), e))
    }

    /// Signs both CRLs. `revoked` are device certificate serials (hex) with their revocation
    /// times; the root CRL revokes nothing yet (the issuing CA is never revoked in place).
    pub(crate) fn sign_crls(
        &self,
        revoked: &[(String, i64)],
        now: OffsetDateTime,
        validity: Duration,
        number: u64,
    ) -> Result<Crls, ServerError> {
        let entries: Vec<Revoked> = revoked
            .iter()
            .filter_map(|(serial, at)| {
                Some(Revoked {
                    serial: unhex(serial)?,
                    at: OffsetDateTime::from_unix_timestamp(*at).ok()?,
                })
            })
            .collect();
        // A minute of backdating: a verifier whose clock is slightly behind must not see a CRL
        // from the future.
        let this_update = now - Duration::minutes(1);
        let issuing = self
            .issuing
            .sign_crl(&entries, this_update, now + validity, number)
            .map_err(|e| ServerError::pki("the issuing CA's CRL", e))?;
        let root = self
            .root
            .sign_crl(&[], this_update, now + validity, number)
            .map_err(|e| ServerError::pki("the root CA's CRL", e))?;
        Ok(Crls { issuing, root })
    }
}

/// Both CRLs, DER.
#[derive(Debug, Clone)]
pub(crate) struct Crls {
    /// The issuing CA's CRL (revokes agent and listener certificates).
    pub issuing: CertificateRevocationListDer<'static>,
    /// The root's CRL (revokes issuing CAs).
    pub root: CertificateRevocationListDer<'static>,
}

/// A listener's certificate and key, loaded.
#[derive(Debug)]
pub(crate) struct ListenerCert {
    /// Leaf, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl ListenerCert {
    /// Loads a certificate file and its key. A file holding only the leaf is platform-issued:
    /// the issuing CA is appended. A file holding a chain (a third-party certificate, leaf
    /// then intermediates, see `steward server cert import`) is served as it is.
    pub(crate) fn load(cert: &Path, key: &Path, pki: &Pki) -> Result<Self, ServerError> {
        let mut chain = read_certs(cert)?;
        let key = read_key(key)?;
        if chain.len() == 1 {
            chain.push(pki.issuing.cert().clone());
        }
        Ok(Self {
            chain,
            key: Arc::new(PrivateKeyDer::Pkcs8(key)),
        })
    }
}

/// Reads every certificate of a PEM file, in order; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(ServerError::pki(
            path.display().to_string(),
            "no CERTIFICATE in the file",
        ));
    }
    Ok(certs)
}

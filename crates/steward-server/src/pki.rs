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
    /// The issuing CA in PEM: the chain sent with every agent certificate. After a root roll
    /// it holds the issuing CA's certificate under the previous root and, second, the one
    /// under the new root (same name and key), so verifiers that know either root build a path.
    pub issuing_pem: String,
    /// After a root roll (`steward server ca roll finalize`): the previous root, still trusted
    /// for client certificates, still signing its CRL and co-signing the trust bundle, until
    /// it is retired.
    pub previous_root: Option<Authority>,
    /// The issuing CA's certificate under the previous root.
    pub previous_issuing: Option<CertificateDer<'static>>,
    /// When the last root roll was finalized (Unix seconds; the time `previous-root.crt` was
    /// written): agent certificates issued before it carry a chain to the previous root only
    /// and are renewed at the next check-in.
    pub rolled_at: Option<i64>,
    /// Set when a root roll is finalized while the server runs: the CAs as they are on disk
    /// now. Everything that holds this `Pki` asks [`Pki::live`] and so follows at once,
    /// without a restart; the next start loads the new state directly.
    successor: std::sync::RwLock<Option<Arc<Pki>>>,
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
        let rolled_at = std::fs::metadata(previous_root_cert(dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let (previous_root, previous_issuing) = if previous_root_cert(dir).exists() {
            (
                Some(load(
                    &previous_root_cert(dir),
                    &previous_root_key(dir),
                    "the previous platform root CA",
                )?),
                Some(read_cert(&previous_issuing_cert(dir))?),
            )
        } else {
            (None, None)
        };
        // During the overlap the certificate under the previous root goes first: every
        // client trusts that root still, and path builders that do not backtrack (OpenSSL)
        // take the first issuer whose name matches.
        let mut issuing_pem = String::new();
        if let Some(prev) = &previous_issuing {
            issuing_pem.push_str(&pem("CERTIFICATE", prev));
        }
        issuing_pem.push_str(&pem("CERTIFICATE", issuing.cert()));
        Ok(Self {
            root_pem: pem("CERTIFICATE", root.cert()),
            issuing_pem,
            root,
            issuing,
            previous_root,
            previous_issuing,
            rolled_at,
            successor: std::sync::RwLock::new(None),
        })
    }

    /// The CAs as they are now: the successor a finalized root roll installed, else these.
    pub(crate) fn live(self: &Arc<Self>) -> Arc<Pki> {
        self.successor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.clone())
    }

    fn with_live<R>(&self, f: impl FnOnce(&Pki) -> R) -> R {
        let s = self
            .successor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match s {
            Some(s) => f(&s),
            None => f(self),
        }
    }

    /// Installs the CAs a finalized root roll left on disk (see [`Pki::live`]).
    pub(crate) fn set_successor(&self, next: Arc<Pki>) {
        *self.successor.write().unwrap_or_else(|p| p.into_inner()) = Some(next);
    }

    /// The roots a client certificate may chain to: the platform root and, during a root
    /// roll's overlap, the previous one.
    pub(crate) fn client_anchors(&self) -> Vec<CertificateDer<'static>> {
        self.with_live(|p| {
            std::iter::once(p.root.cert().clone())
                .chain(p.previous_root.as_ref().map(|r| r.cert().clone()))
                .collect()
        })
    }

    /// The issuing CA's certificates to send after a leaf: during a roll's overlap the one
    /// under the previous root first (see [`Pki::load`]), then the one under the platform root.
    pub(crate) fn issuing_chain(&self) -> Vec<CertificateDer<'static>> {
        self.with_live(|p| {
            p.previous_issuing
                .clone()
                .into_iter()
                .chain(std::iter::once(p.issuing.cert().clone()))
                .collect()
        })
    }

    /// [`Pki::rolled_at`] of the live CAs.
    pub(crate) fn live_rolled_at(&self) -> Option<i64> {
        self.with_live(|p| p.rolled_at)
    }

    /// [`Pki::issuing_pem`] of the live CAs.
    pub(crate) fn live_issuing_pem(&self) -> String {
        self.with_live(|p| p.issuing_pem.clone())
    }

    /// [`Pki::root_pem`] of the live CAs, then the previous root's (PEM).
    pub(crate) fn live_roots_pem(&self) -> Vec<String> {
        self.with_live(|p| {
            std::iter::once(p.root_pem.clone())
                .chain(
                    p.previous_root
                        .as_ref()
                        .map(|r| pem("CERTIFICATE", r.cert())),
                )
                .collect()
        })
    }

    /// Detached signatures of the trust bundle: first by the root every agent enrolled so
    /// far knows (the previous root during a roll's overlap, else the platform root), then
    /// by the platform root when that is another.
    pub(crate) fn sign_bundle(&self, msg: &[u8]) -> Result<Vec<Vec<u8>>, ServerError> {
        self.with_live(|p| {
            let mut out = Vec::new();
            if let Some(prev) = &p.previous_root {
                out.push(
                    prev.sign_detached(msg)
                        .map_err(|e| ServerError::pki("the previous root CA", e))?,
                );
            }
            out.push(
                p.root
                    .sign_detached(msg)
                    .map_err(|e| ServerError::pki("the platform root CA", e))?,
            );
            Ok(out)
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
            previous_root: None,
            previous_issuing: None,
            rolled_at: None,
            successor: std::sync::RwLock::new(None),
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
        self.with_live(|p| {
            p.issuing.issue(&LeafRequest {
                common_name: common_name.to_owned(),
                dns_names,
                ip_addrs,
                usage: Usage::Server,
                not_before: now - BACKDATE,
                not_after: now + Duration::days(LISTENER_DAYS),
                crl_urls: vec![crl_url.to_owned()],
                key: KeySpec::EcdsaP256,
            })
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
        if let Some(next) = self
            .successor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return next.sign_crls(revoked, now, validity, number);
        }
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
        let sign = |r: &Authority| {
            r.sign_crl(&[], this_update, now + validity, number)
                .map_err(|e| ServerError::pki("a root CA's CRL", e))
        };
        // `/crl/root.crl` is what the issuing CA's first certificate names: during a roll's
        // overlap that is the previous root's CRL; the new root's is published at its own
        // distribution point (`/crl/roots/...`, see [`root_crl_file`]).
        let (root, more_roots) = match &self.previous_root {
            Some(prev) => (sign(prev)?, vec![sign(&self.root)?]),
            None => (sign(&self.root)?, Vec::new()),
        };
        Ok(Crls {
            issuing,
            root,
            more_roots,
        })
    }

    /// The CRL of the live platform root or previous root whose distribution point file is
    /// `file` ([`root_crl_file`]), signed now.
    pub(crate) fn root_crl_by_file(
        &self,
        file: &str,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Option<Result<CertificateRevocationListDer<'static>, ServerError>> {
        self.with_live(|p| {
            let root = std::iter::once(&p.root)
                .chain(p.previous_root.as_ref())
                .find(|r| root_crl_file(r.cert()) == file)?;
            let number = u64::try_from(now.unix_timestamp()).unwrap_or(0);
            Some(
                root.sign_crl(&[], now - Duration::minutes(1), now + validity, number)
                    .map_err(|e| ServerError::pki("a root CA's CRL", e)),
            )
        })
    }
}

/// Where a rolled-in root's CRL is published on the CRL listener, below `/crl/roots/`: the
/// first 16 hex digits of its SHA-256, `.crl`. Named in the issuing CA's certificate under it.
pub(crate) fn root_crl_file(root: &CertificateDer<'_>) -> String {
    let sha = steward_pki::Thumbprint::of(root).sha256_hex();
    format!("{}.crl", sha[..16].to_ascii_lowercase())
}

/// Both CRLs, DER.
#[derive(Debug, Clone)]
pub(crate) struct Crls {
    /// The issuing CA's CRL (revokes agent and listener certificates).
    pub issuing: CertificateRevocationListDer<'static>,
    /// The root's CRL (revokes issuing CAs).
    pub root: CertificateRevocationListDer<'static>,
    /// During a root roll's overlap, `root` is the previous root's CRL (served at
    /// `/crl/root.crl`, named by the issuing CA's certificate under it) and this holds the
    /// platform root's (served at `/crl/roots/...`).
    pub more_roots: Vec<CertificateRevocationListDer<'static>>,
}

impl Crls {
    /// Every CRL, for a verifier that checks whole chains.
    pub(crate) fn all(&self) -> Vec<CertificateRevocationListDer<'static>> {
        [self.issuing.clone(), self.root.clone()]
            .into_iter()
            .chain(self.more_roots.iter().cloned())
            .collect()
    }
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
            chain.extend(pki.issuing_chain());
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

// ---------------------------------------------------------------------------------------------
// Rolling the platform root (`steward server ca roll`): the files on disk.
//
// `pki/staged-ca/` holds a staged roll: `root.crt`/`root.key` (the new root), `issuing.crt`
// (the issuing CA's name and key certified by the new root), copies of the current root,
// its key and the issuing CA's certificate (`old-*`), and `stage.json`, written last (the
// commit point of the stage). Finalize writes `finalizing` (its commit point) and then copies
// everything into place; [`recover_roll`] repeats that copy at start when a crash interrupted
// it, so the files on disk are either all old or all new. The issuing key never changes.

/// `pki/previous-root.crt`: the root before the last roll, trusted until it is retired.
pub(crate) fn previous_root_cert(dir: &DataDir) -> std::path::PathBuf {
    dir.pki().join("previous-root.crt")
}

/// `pki/previous-root.key`.
pub(crate) fn previous_root_key(dir: &DataDir) -> std::path::PathBuf {
    dir.pki().join("previous-root.key")
}

/// `pki/previous-issuing.crt`: the issuing CA's certificate under the previous root.
pub(crate) fn previous_issuing_cert(dir: &DataDir) -> std::path::PathBuf {
    dir.pki().join("previous-issuing.crt")
}

/// `pki/staged-ca/`.
pub(crate) fn staged_ca_dir(dir: &DataDir) -> std::path::PathBuf {
    dir.pki().join("staged-ca")
}

fn staged_ca_done(dir: &DataDir) -> std::path::PathBuf {
    dir.pki().join("staged-ca.done")
}

/// `staged-ca/stage.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RollMeta {
    /// The new root's subject.
    pub root_subject: String,
    /// Its SHA-256 (upper-case hex).
    pub root_sha256: String,
    /// Its notAfter (RFC 3339).
    pub root_not_after: String,
    /// When it was staged (RFC 3339).
    pub staged_at: String,
    /// The first profile version that carries the new root.
    pub profile_version: u64,
}

/// The staged roll, if one is committed (`stage.json` present).
pub(crate) fn roll_staged(dir: &DataDir) -> Option<RollMeta> {
    let text = std::fs::read_to_string(staged_ca_dir(dir).join("stage.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether anything of a staged roll is on disk (a complete stage, or an interrupted one).
pub(crate) fn roll_files_exist(dir: &DataDir) -> bool {
    staged_ca_dir(dir).exists()
}

/// Makes the new root and the issuing CA's certificate under it, and writes them with copies
/// of the current CAs to `staged-ca/` (replacing leftovers). Nothing is signed by the new
/// root that anyone must accept yet. Returns the new root's certificate.
pub(crate) fn stage_roll(
    dir: &DataDir,
    cfg: &Config,
    live: &Pki,
    now: OffsetDateTime,
) -> Result<CertificateDer<'static>, ServerError> {
    use crate::replace::write_atomic;
    let name = format!(
        "Steward Platform Root CA {}",
        crate::service::rfc3339(now.unix_timestamp())
    );
    let root = Authority::new_root(
        &name,
        KeySpec::EcdsaP256,
        now - BACKDATE,
        now + Duration::days(ROOT_DAYS),
    )
    .map_err(|e| ServerError::pki("the new platform root CA", e))?;
    // The new root's CRL has its own distribution point: `/crl/root.crl` stays the previous
    // root's while the issuing CA's certificate under it is in use.
    let crl_url = cfg.root_crl_url().replace(
        "/crl/root.crl",
        &format!("/crl/roots/{}", root_crl_file(root.cert())),
    );
    let issuing = root
        .certify_ca(
            &live.issuing,
            0,
            now - BACKDATE,
            now + Duration::days(ISSUING_DAYS),
            &[crl_url],
        )
        .map_err(|e| ServerError::pki("the issuing CA under the new root", e))?;
    remove_roll(dir)?;
    let d = staged_ca_dir(dir);
    std::fs::create_dir_all(&d).map_err(|e| ServerError::io(&d, e))?;
    let cert = |der: &[u8]| pem("CERTIFICATE", der);
    let key = |k: &[u8]| pem("PRIVATE KEY", k);
    write_atomic(
        &d.join("old-root.key"),
        key(live.root.key_pkcs8()).as_bytes(),
        0o600,
    )?;
    write_atomic(
        &d.join("old-root.crt"),
        cert(live.root.cert()).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &d.join("old-issuing.crt"),
        cert(live.issuing.cert()).as_bytes(),
        0o644,
    )?;
    write_atomic(&d.join("issuing.crt"), cert(&issuing).as_bytes(), 0o644)?;
    write_atomic(&d.join("root.key"), key(root.key_pkcs8()).as_bytes(), 0o600)?;
    // Last of the material: from here its root counts as a trust anchor (see
    // `replace::trust_anchors`), before `stage.json` records the version that carries it.
    write_atomic(&d.join("root.crt"), cert(root.cert()).as_bytes(), 0o644)?;
    sync_dir(&d)?;
    Ok(root.cert().clone())
}

/// Writes `stage.json`: the commit point of a stage.
pub(crate) fn write_roll_meta(dir: &DataDir, meta: &RollMeta) -> Result<(), ServerError> {
    let text = serde_json::to_vec_pretty(meta).map_err(|e| ServerError::Internal(e.to_string()))?;
    crate::replace::write_atomic(&staged_ca_dir(dir).join("stage.json"), &text, 0o644)
}

/// Removes a staged roll (rollback).
pub(crate) fn remove_roll(dir: &DataDir) -> Result<(), ServerError> {
    let d = staged_ca_dir(dir);
    for f in ["finalizing", "stage.json"] {
        match std::fs::remove_file(d.join(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ServerError::io(d.join(f), e)),
        }
    }
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServerError::io(&d, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ServerError::io(dir, e))
}

/// Finalizes a staged roll on disk: writes the commit point, then puts the files in place
/// ([`recover_roll`] finishes it after a crash).
pub(crate) fn finalize_roll(dir: &DataDir) -> Result<(), ServerError> {
    let d = staged_ca_dir(dir);
    crate::replace::write_atomic(&d.join("finalizing"), b"finalizing\n", 0o644)?;
    sync_dir(&d)?;
    apply_roll(dir)
}

/// Copies a finalized roll's files into place (idempotent), then drops `staged-ca/`.
fn apply_roll(dir: &DataDir) -> Result<(), ServerError> {
    let d = staged_ca_dir(dir);
    let copy = |from: &str, to: &Path, mode: u32| -> Result<(), ServerError> {
        let src = d.join(from);
        let bytes = std::fs::read(&src).map_err(|e| ServerError::io(&src, e))?;
        crate::replace::write_atomic(to, &bytes, mode)
    };
    // The previous CAs first, so no moment lacks them; the root's key before its certificate,
    // as for listener renewals. The issuing key is the same before and after.
    copy("old-root.key", &previous_root_key(dir), 0o600)?;
    copy("old-root.crt", &previous_root_cert(dir), 0o644)?;
    copy("old-issuing.crt", &previous_issuing_cert(dir), 0o644)?;
    copy("issuing.crt", &dir.issuing_cert(), 0o644)?;
    copy("root.key", &dir.root_key(), 0o600)?;
    copy("root.crt", &dir.root_cert(), 0o644)?;
    sync_dir(&dir.pki())?;
    let done = staged_ca_done(dir);
    let _ = std::fs::remove_dir_all(&done);
    std::fs::rename(&d, &done).map_err(|e| ServerError::io(&d, e))?;
    sync_dir(&dir.pki())?;
    std::fs::remove_dir_all(&done).map_err(|e| ServerError::io(&done, e))
}

/// At start, before the CAs are read: finishes a finalize a crash interrupted, drops the
/// remains of a finished one, and drops a stage interrupted before its commit point.
pub(crate) fn recover_roll(dir: &DataDir) -> Result<(), ServerError> {
    let d = staged_ca_dir(dir);
    if d.join("finalizing").exists() {
        apply_roll(dir)?;
        tracing::info!(
            id = "SERVER-CA-ROLL-FINALIZED",
            "an interrupted root roll finalize was completed"
        );
    } else if d.exists() && !d.join("stage.json").exists() {
        remove_roll(dir)?;
        tracing::info!("an interrupted root roll stage was dropped");
    }
    let done = staged_ca_done(dir);
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| ServerError::io(&done, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod roll_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{InitOptions, init};

    async fn data() -> (tempfile::TempDir, DataDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut opts = InitOptions::new(&data, vec!["localhost".into()]);
        opts.admin_password = Some("correct horse battery".into());
        init(opts).await.unwrap();
        let dd = DataDir::new(&data);
        let cfg = Config::load(&dd).unwrap();
        (dir, dd, cfg)
    }

    fn stage(dd: &DataDir, cfg: &Config) -> CertificateDer<'static> {
        let pki = Pki::load(dd).unwrap();
        let root = stage_roll(dd, cfg, &pki, OffsetDateTime::now_utc()).unwrap();
        write_roll_meta(
            dd,
            &RollMeta {
                root_subject: "new".into(),
                root_sha256: String::new(),
                root_not_after: String::new(),
                staged_at: String::new(),
                profile_version: 2,
            },
        )
        .unwrap();
        root
    }

    #[tokio::test]
    async fn a_finalize_interrupted_anywhere_is_completed_at_start() {
        let (_t, dd, cfg) = data().await;
        let old = Pki::load(&dd).unwrap();
        let old_root = old.root.cert().clone();
        // Every point between the commit point and the end: `steps` files copied.
        for steps in 0..=6 {
            let new_root = stage(&dd, &cfg);
            let d = staged_ca_dir(&dd);
            crate::replace::write_atomic(&d.join("finalizing"), b"finalizing\n", 0o644).unwrap();
            let plan = [
                ("old-root.key", previous_root_key(&dd)),
                ("old-root.crt", previous_root_cert(&dd)),
                ("old-issuing.crt", previous_issuing_cert(&dd)),
                ("issuing.crt", dd.issuing_cert()),
                ("root.key", dd.root_key()),
                ("root.crt", dd.root_cert()),
            ];
            for (from, to) in plan.iter().take(steps) {
                std::fs::copy(d.join(from), to).unwrap();
            }
            recover_roll(&dd).unwrap();
            assert!(!staged_ca_dir(&dd).exists());
            let p = Pki::load(&dd).unwrap();
            assert_eq!(p.root.cert(), &new_root, "after {steps} step(s)");
            assert_eq!(p.previous_root.as_ref().unwrap().cert(), &old_root);
            assert_eq!(p.issuing_chain().len(), 2);
            assert_eq!(p.client_anchors().len(), 2);
            // Back to the old state for the next round.
            std::fs::copy(previous_root_key(&dd), dd.root_key()).unwrap();
            std::fs::copy(previous_root_cert(&dd), dd.root_cert()).unwrap();
            std::fs::copy(previous_issuing_cert(&dd), dd.issuing_cert()).unwrap();
            for f in [
                previous_root_key(&dd),
                previous_root_cert(&dd),
                previous_issuing_cert(&dd),
            ] {
                std::fs::remove_file(f).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_stage_interrupted_before_its_commit_point_is_dropped_and_a_committed_one_kept() {
        let (_t, dd, cfg) = data().await;
        let pki = Pki::load(&dd).unwrap();
        stage_roll(&dd, &cfg, &pki, OffsetDateTime::now_utc()).unwrap();
        // No `stage.json`: dropped at start, the CAs untouched.
        recover_roll(&dd).unwrap();
        assert!(!staged_ca_dir(&dd).exists());
        assert_eq!(Pki::load(&dd).unwrap().root.cert(), pki.root.cert());
        stage(&dd, &cfg);
        recover_roll(&dd).unwrap();
        assert!(roll_staged(&dd).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(staged_ca_dir(&dd).join("root.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        remove_roll(&dd).unwrap();
        assert!(roll_staged(&dd).is_none());
        assert!(!roll_files_exist(&dd));
    }

    #[tokio::test]
    async fn a_successor_is_followed_by_everything_holding_the_old_pki() {
        let (_t, dd, cfg) = data().await;
        let pki = Arc::new(Pki::load(&dd).unwrap());
        let new_root = stage(&dd, &cfg);
        finalize_roll(&dd).unwrap();
        pki.set_successor(Arc::new(Pki::load(&dd).unwrap()));
        assert_eq!(pki.live().root.cert(), &new_root);
        assert_eq!(pki.client_anchors().len(), 2);
        let crls = pki
            .sign_crls(&[], OffsetDateTime::now_utc(), Duration::hours(1), 7)
            .unwrap();
        assert_eq!(crls.all().len(), 3);
        // Each root's CRL at its own distribution point, as the issuing CA's certificates
        // under them name it.
        let live = pki.live();
        for (root, issuing) in [
            (live.root.cert(), live.issuing.cert().clone()),
            (
                live.previous_root.as_ref().unwrap().cert(),
                live.previous_issuing.clone().unwrap(),
            ),
        ] {
            let cdp = &steward_pki::CertFacts::from_der(&issuing).unwrap().crl_urls[0];
            let file = cdp.rsplit('/').next().unwrap();
            let crl = if file == "root.crl" {
                crls.root.clone()
            } else {
                assert_eq!(file, root_crl_file(root));
                pki.root_crl_by_file(file, OffsetDateTime::now_utc(), Duration::hours(1))
                    .unwrap()
                    .unwrap()
            };
            let facts = steward_pki::parse_crl(&crl).unwrap();
            assert_eq!(
                facts.verify_signed_by(&steward_pki::CertFacts::from_der(root).unwrap()),
                steward_pki::CrlSignature::Valid
            );
        }
        assert!(
            pki.root_crl_by_file("0000.crl", OffsetDateTime::now_utc(), Duration::hours(1))
                .is_none()
        );
        assert_eq!(pki.sign_bundle(b"x").unwrap().len(), 2);
        assert!(steward_pki::verify_detached(
            pki.root.cert(),
            b"x",
            &pki.sign_bundle(b"x").unwrap()[0]
        ));
    }
}

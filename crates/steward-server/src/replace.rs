//! Replacing a listener's certificate with a third-party one (`steward server cert import`),
//! in phases, so no agent ever meets a certificate it cannot verify:
//!
//! 1. **stage** — the file (PKCS#12, PEM or DER) is judged with the `steward doctor cert`
//!    rules for the listener's names and refused, with the findings, on any error (and when
//!    it expires within 30 days); otherwise its chain, key and root are written to
//!    `pki/staged-<listener>/` (`staged.json` last: the commit point) and the root joins the
//!    communication profile's trust anchors (a new profile version).
//! 2. **distribute** — every agent acknowledges the new profile version on its next check-in
//!    (`devices.profile_version_acked`); the status counts them and names who has not.
//! 3. **finalize** — the staged certificate becomes the listener's (written like a renewal,
//!    see [`crate::renew`]) and is served from the next connection on, without a restart.
//!    Refused while agents have not acknowledged, unless forced (the answer names the agents
//!    left stranded and how they come back).
//! 4. **rollback** — before finalize, the staged files are removed and the root leaves the
//!    profile; nothing else ever changed.
//!
//! The vocabulary is the gateway's (`steward gateway cert import`: current and next).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use steward_doctor::CertReport;
use steward_doctor::binding::{Refusal, judge_for_binding};
use steward_pki::{CertFacts, OffsetDateTime, PrivateKeyDer};

use crate::ServerError;
use crate::config::DataDir;
use crate::renew::Listener;
use crate::secret::pem;

/// What `staged.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StagedMeta {
    /// SHA-256 (upper-case hex) of the staged leaf.
    pub sha256: String,
    /// Its subject.
    pub subject: String,
    /// The subject of its root, now in the profile.
    pub root_subject: String,
    /// Its notAfter (RFC 3339).
    pub not_after: String,
    /// When it was staged (RFC 3339).
    pub staged_at: String,
    /// The first profile version that carries its root: agents that acknowledged this
    /// version (or a later one) trust it.
    pub profile_version: u64,
}

/// A judged import, ready to be written.
#[derive(Debug)]
pub(crate) struct Judged {
    /// Leaf then intermediates (PEM), as the listener will serve them.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// The root (PEM).
    pub root_pem: String,
    /// SHA-256 of the leaf (upper-case hex).
    pub sha256: String,
    /// Leaf subject.
    pub subject: String,
    /// Root subject.
    pub root_subject: String,
    /// Leaf notAfter.
    pub not_after: OffsetDateTime,
    /// The findings (none an error).
    pub report: CertReport,
}

/// The file stem of a listener's certificate in `pki/`.
fn stem(l: Listener) -> &'static str {
    match l {
        Listener::Agent => "agent-site",
        Listener::Console => "console",
    }
}

/// `pki/<listener>.root.pem`: the third-party root of the certificate the listener serves,
/// kept in the profile while it is live. Absent for platform-issued certificates.
pub(crate) fn live_root_path(dir: &DataDir, l: Listener) -> PathBuf {
    dir.pki().join(format!("{}.root.pem", stem(l)))
}

/// `pki/staged-<listener>/`.
pub(crate) fn staged_dir(dir: &DataDir, l: Listener) -> PathBuf {
    dir.pki().join(format!("staged-{}", stem(l)))
}

/// The staged certificate of a listener, if one is committed.
pub(crate) fn staged(dir: &DataDir, l: Listener) -> Option<StagedMeta> {
    let text = std::fs::read_to_string(staged_dir(dir, l).join("staged.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The trust anchors of the profile: the platform root, then the roots of live third-party
/// listener certificates, then those of staged ones (each once).
pub(crate) fn trust_anchors(dir: &DataDir, platform_root_pem: &str) -> Vec<String> {
    let mut out = vec![platform_root_pem.to_owned()];
    // A root roll (`steward server ca roll`): the root on disk (the new one, from the moment
    // a finalize put it there), the previous root while it is kept, and a staged new root
    // from the moment its file is written.
    for path in [
        dir.root_cert(),
        crate::pki::previous_root_cert(dir),
        crate::pki::staged_ca_dir(dir).join("root.crt"),
    ] {
        if let Ok(pem) = std::fs::read_to_string(&path)
            && !out.iter().any(|p| p.trim() == pem.trim())
        {
            out.push(pem);
        }
    }
    for l in Listener::ALL {
        let live = std::fs::read_to_string(live_root_path(dir, l)).ok();
        // A staged root counts from the moment its file is written, before `staged.json`
        // records the profile version that carries it (which needs this very list).
        let staged = std::fs::read_to_string(staged_dir(dir, l).join("root.pem")).ok();
        for pem in [live, staged].into_iter().flatten() {
            if !out.iter().any(|p| p.trim() == pem.trim()) {
                out.push(pem);
            }
        }
    }
    out
}

/// Judges certificate material for a listener whose agents use `names`
/// ([`steward_doctor::binding`], shared with the gateway's import). `Err` carries the report
/// whose findings refused it.
pub(crate) fn judge(
    bytes: &[u8],
    password: Option<&str>,
    names: Vec<String>,
    label: &str,
    now: OffsetDateTime,
) -> Result<Judged, Box<CertReport>> {
    let bound = judge_for_binding(bytes, password, names, label, now).map_err(|r| match r {
        // Without a root in the file the chain is incomplete, and the report says so
        // (CERT-CHAIN-INCOMPLETE): that is the refusal an admin reads.
        Refusal::Findings(report) | Refusal::NoRoot { report, .. } => report,
    })?;
    // The listeners load PKCS#8 keys (what every PKCS#12 export holds).
    let PrivateKeyDer::Pkcs8(k) = &bound.key else {
        return Err(Box::new(bound.report));
    };
    let key_pem = pem("PRIVATE KEY", k.secret_pkcs8_der());
    let chain_pem: String = bound
        .served_der()
        .into_iter()
        .map(|der| pem("CERTIFICATE", der))
        .collect();
    let leaf = bound.chain.leaf();
    Ok(Judged {
        chain_pem,
        key_pem,
        root_pem: pem("CERTIFICATE", &bound.root.der),
        sha256: leaf.thumbprint.sha256_hex(),
        subject: leaf.subject.clone(),
        root_subject: bound.root.subject.clone(),
        not_after: leaf.not_after,
        report: bound.report,
    })
}

/// Writes `bytes` to `path` atomically (temp, fsync, rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ServerError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(|e| ServerError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ServerError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ServerError::io(path, e))
}

/// Writes the staged certificate's files (replacing an earlier stage); its root counts as a
/// trust anchor from here on. [`write_staged_meta`] then commits the stage.
pub(crate) fn write_staged(dir: &DataDir, l: Listener, j: &Judged) -> Result<(), ServerError> {
    let d = staged_dir(dir, l);
    remove_staged(dir, l)?;
    std::fs::create_dir_all(&d).map_err(|e| ServerError::io(&d, e))?;
    write_atomic(&d.join("key.pem"), j.key_pem.as_bytes(), 0o600)?;
    write_atomic(&d.join("chain.pem"), j.chain_pem.as_bytes(), 0o644)?;
    write_atomic(&d.join("root.pem"), j.root_pem.as_bytes(), 0o644)
}

/// Writes `staged.json`: the commit point of a stage.
pub(crate) fn write_staged_meta(
    dir: &DataDir,
    l: Listener,
    meta: &StagedMeta,
) -> Result<(), ServerError> {
    let text = serde_json::to_vec_pretty(meta).map_err(|e| ServerError::Internal(e.to_string()))?;
    write_atomic(&staged_dir(dir, l).join("staged.json"), &text, 0o644)
}

/// Whether anything of a stage is on disk (a complete one, or one a crash interrupted).
pub(crate) fn staged_files_exist(dir: &DataDir, l: Listener) -> bool {
    staged_dir(dir, l).exists()
}

/// Removes a listener's staged files (rollback, or after finalize).
pub(crate) fn remove_staged(dir: &DataDir, l: Listener) -> Result<(), ServerError> {
    let d = staged_dir(dir, l);
    // `staged.json` first: without it nothing is staged, whatever else is left.
    match std::fs::remove_file(d.join("staged.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::io(d.join("staged.json"), e)),
    }
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServerError::io(&d, e)),
    }
}

/// For a listener serving a third-party certificate: the intermediates of its certificate
/// file and its root, to check the chain against (instead of the platform root).
pub(crate) fn third_party_chain(dir: &DataDir, l: Listener) -> Option<(Vec<CertFacts>, CertFacts)> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let root = CertificateDer::from_pem_file(live_root_path(dir, l)).ok()?;
    let root = CertFacts::from_der(&root).ok()?;
    let (cert_path, _) = l.paths(dir);
    let intermediates = crate::pki::read_certs(&cert_path)
        .ok()?
        .iter()
        .skip(1)
        .filter_map(|c| CertFacts::from_der(c).ok())
        .collect();
    Some((intermediates, root))
}

//! `steward gateway cert import`: a third-party server certificate (a SAN certificate from an
//! enterprise or commercial CA, `.pfx` or PEM/DER) is judged by the rules of `steward doctor
//! cert` and, when none is an error, staged as the gateway's NEXT certificate. `run` announces
//! its thumbprint and root to agents and serves it only once the server says every agent has
//! them, so no agent ever meets a certificate it cannot verify.

use std::path::Path;

use steward_doctor::CertReport;
use steward_doctor::binding::{Refusal, judge_for_binding};
use steward_pki::{CertFacts, OffsetDateTime};

use crate::GatewayError;
use crate::state::{
    GatewayDir, IMPORTED_CHAIN, IMPORTED_KEY, IMPORTED_ROOT, key_pem, pem, write_atomic,
};

/// A certificate staged by [`import_cert`].
#[derive(Debug, Clone)]
pub struct Staged {
    /// SHA-256 (hex) of the staged certificate: the thumbprint agents will be told.
    pub sha256: String,
    /// Subject of the root agents will be given for it.
    pub root_subject: String,
    /// The names it was checked against (the gateway's external name and the names of its
    /// current certificate).
    pub names: Vec<String>,
    /// A certificate staged before and now replaced, if any.
    pub replaced_next: Option<String>,
    /// It is the certificate served now: nothing was staged.
    pub already_current: bool,
    /// The findings (none is an error; warnings are worth showing).
    pub report: CertReport,
}

/// Reads certificate material (`bytes`: PKCS#12, PEM or DER; `label` names it in the report),
/// judges it under the `steward` profile for the gateway's names, and stages it as the next
/// server certificate. The current certificate stays in service.
pub fn import_cert(
    data_dir: &Path,
    bytes: &[u8],
    password: Option<&str>,
    label: &str,
    now: OffsetDateTime,
) -> Result<Staged, GatewayError> {
    let dir = GatewayDir::new(data_dir);
    let config = dir.read_config()?;
    // A replacement must keep working for every name agents use today.
    let mut names = vec![config.external_name.clone()];
    let current = dir.load_current()?;
    if let Some(leaf) = current
        .chain
        .first()
        .and_then(|c| CertFacts::from_der(c).ok())
    {
        for n in leaf.dns_names() {
            if !names.iter().any(|have| have.eq_ignore_ascii_case(n)) {
                names.push(n.to_owned());
            }
        }
    }

    let bound =
        judge_for_binding(bytes, password, names.clone(), label, now).map_err(|r| match r {
            Refusal::Findings(report) => GatewayError::CertRefused { report },
            Refusal::NoRoot { end, .. } => GatewayError::CertNoRoot { end },
        })?;
    // What the edge sends: the leaf and its intermediates, not the root (agents hold it).
    let served: String = bound
        .served_der()
        .into_iter()
        .map(|der| pem("CERTIFICATE", der))
        .collect();
    let root = &bound.root;
    let sha256 = bound.chain.leaf().thumbprint.sha256_hex();
    let target = dir.imported(&sha256);
    std::fs::create_dir_all(&target).map_err(|e| GatewayError::io(&target, e))?;
    write_atomic(
        &target.join(IMPORTED_KEY),
        key_pem(&bound.key).as_bytes(),
        0o600,
    )?;
    write_atomic(&target.join(IMPORTED_CHAIN), served.as_bytes(), 0o644)?;
    write_atomic(
        &target.join(IMPORTED_ROOT),
        pem("CERTIFICATE", &root.der).as_bytes(),
        0o644,
    )?;
    // Checked once more from disk, so what `run` will load is what was judged.
    dir.load_imported(&sha256)?;
    let mut slots = dir.read_slots()?;
    let already_current = current.sha256 == sha256;
    let replaced_next = if already_current {
        None
    } else {
        let old = slots.next.replace(sha256.clone());
        // The one step that stages it: a crash before leaves the old slots intact.
        dir.write_slots(&slots)?;
        tracing::info!(id = "GATEWAY-CERT-STAGED", thumbprint = %sha256, "certificate staged as the next server certificate");
        old.filter(|n| *n != sha256)
    };
    Ok(Staged {
        sha256,
        root_subject: root.subject.clone(),
        names,
        replaced_next,
        already_current,
        report: bound.report,
    })
}

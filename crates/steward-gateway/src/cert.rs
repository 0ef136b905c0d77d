//! `steward gateway cert import`: a third-party server certificate (a SAN certificate from an
//! enterprise or commercial CA, `.pfx` or PEM/DER) is judged by the rules of `steward doctor
//! cert` and, when none is an error, staged as the gateway's NEXT certificate. `run` announces
//! its thumbprint and root to agents and serves it only once the server says every agent has
//! them, so no agent ever meets a certificate it cannot verify.

use std::path::Path;

use steward_doctor::cert::{CertEvidence, Input, KeyEvidence, ReadOutcome, Revocation};
use steward_doctor::{CertReport, Profile, Severity};
use steward_pki::{
    CertFacts, ChainEnd, MaterialError, MaterialFormat, OffsetDateTime, build_chain,
    key_matches_cert, read_material,
};

use crate::GatewayError;
use crate::state::{
    GatewayDir, IMPORTED_CHAIN, IMPORTED_KEY, IMPORTED_ROOT, key_pem, pem, write_atomic,
};

/// Rules that refuse an import although they are only warnings under the `steward` profile:
/// a certificate goes live only after every agent has its root, which can take longer than
/// the few days such a certificate has left (ITMS refuses them at import for the same reason).
const REFUSED_AT_IMPORT: &[&str] = &["CERT-EXPIRES-SOON"];

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

    let mut ev = CertEvidence {
        read: ReadOutcome::Read,
        input: Input::File { format: None },
        chain: None,
        key: KeyEvidence::Missing,
        names: names.clone(),
        // The gateway in the DMZ often cannot reach a third-party CA's distribution points;
        // revocation of the agents' view is the CA's to publish, not the import's to fetch.
        revocation: Revocation::Disabled,
    };
    let refuse = |ev: &CertEvidence| GatewayError::CertRefused {
        report: Box::new(CertReport::new(label, ev, Profile::Steward, now)),
    };
    let material = match read_material(bytes, password) {
        Ok(m) => m,
        Err(e) => {
            ev.read = ReadOutcome::Material(e);
            return Err(refuse(&ev));
        }
    };
    ev.input = Input::File {
        format: Some(material.format),
    };
    let mut facts = Vec::with_capacity(material.certs.len());
    for (index, der) in material.certs.iter().enumerate() {
        match CertFacts::from_der(der) {
            Ok(f) => facts.push(f),
            Err(reason) => {
                ev.read = ReadOutcome::Material(MaterialError::BadCertificate { index, reason });
                return Err(refuse(&ev));
            }
        }
    }
    let Some(leaf_index) = material.leaf_index() else {
        ev.read = ReadOutcome::Material(MaterialError::Unrecognised(match material.format {
            MaterialFormat::Pkcs12 => "the PKCS#12 file holds no certificate".into(),
            _ => "no certificate".into(),
        }));
        return Err(refuse(&ev));
    };
    let leaf = facts.remove(leaf_index);
    // Binding needs the key, whatever the container: no key is PFX-NO-KEY.
    let key = material.keys.first();
    ev.key = match key {
        None => KeyEvidence::Missing,
        Some(key) => match key_matches_cert(key, &leaf.spki_der) {
            Ok(true) => KeyEvidence::Matches,
            Ok(false) => KeyEvidence::Mismatch,
            Err(why) => KeyEvidence::Unloadable(why),
        },
    };

    // The root comes from the file: agents get it through the profile, so the chain must be
    // complete up to a self-signed root, which then counts as the anchor.
    let walked = build_chain(leaf.clone(), &facts, &[]);
    let root = match &walked.end {
        ChainEnd::UntrustedRoot => walked.links.last().map(|l| l.cert.clone()),
        _ => None,
    };
    let Some(root) = root else {
        return Err(GatewayError::CertNoRoot {
            end: match &walked.end {
                ChainEnd::MissingIssuer { issuer, .. } => {
                    format!("the issuer {issuer} is not in the file")
                }
                ChainEnd::TooLong => "the chain does not end (a loop)".to_owned(),
                ChainEnd::Anchor | ChainEnd::UntrustedRoot => "no root".to_owned(),
            },
        });
    };
    let chain = build_chain(leaf, &facts, std::slice::from_ref(&root));
    ev.chain = Some(chain.clone());
    let report = CertReport::new(label, &ev, Profile::Steward, now);
    let refused = report.findings.iter().any(|f| {
        f.severity == Severity::Error
            || (f.severity != Severity::Ok && REFUSED_AT_IMPORT.contains(&f.id))
    });
    if refused {
        return Err(GatewayError::CertRefused {
            report: Box::new(report),
        });
    }
    let Some(key) = key else {
        // Unreachable: a missing key is PFX-NO-KEY, an error, refused above.
        return Err(GatewayError::CertRefused {
            report: Box::new(report),
        });
    };

    // What the edge sends: the leaf and its intermediates, not the root (agents hold it).
    let mut served = String::new();
    for link in &chain.links {
        if link.cert.der != root.der {
            served.push_str(&pem("CERTIFICATE", &link.cert.der));
        }
    }
    let sha256 = chain.leaf().thumbprint.sha256_hex();
    let target = dir.imported(&sha256);
    std::fs::create_dir_all(&target).map_err(|e| GatewayError::io(&target, e))?;
    write_atomic(&target.join(IMPORTED_KEY), key_pem(key).as_bytes(), 0o600)?;
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
        report,
    })
}

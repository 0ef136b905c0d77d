//! CRLs as facts: who signed them, when they were made, when the next is due, what they revoke.

use rustls_pki_types::pem::{PemObject, SectionKind};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::CertFacts;

/// Outcome of checking a CRL's signature against the certificate's issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlSignature {
    /// Signed by the issuer.
    Valid,
    /// The CRL names another issuer than the certificate's.
    WrongIssuer {
        /// The CRL's issuer DN.
        crl_issuer: String,
    },
    /// The names match but the signature does not verify with the issuer's key.
    Invalid(String),
}

/// One parsed CRL.
#[derive(Debug, Clone)]
pub struct CrlFacts {
    /// The CRL's issuer DN.
    pub issuer: String,
    /// Raw DER of the issuer name.
    pub issuer_raw: Vec<u8>,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate, when present.
    pub next_update: Option<OffsetDateTime>,
    /// Revoked serials (as encoded, leading zeros stripped) with their revocation date.
    pub revoked: Vec<(Vec<u8>, OffsetDateTime)>,
    /// The CRL in DER.
    pub der: Vec<u8>,
}

/// Parse a CRL given as DER or PEM (`X509 CRL`). The error says what the bytes looked like, for
/// the common case of a web server answering the CRL URL with an HTML page.
pub fn parse_crl(bytes: &[u8]) -> Result<CrlFacts, String> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        let mut found = None;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            if let Ok((SectionKind::Crl, der)) = item {
                found = Some(der);
                break;
            }
        }
        found.ok_or_else(|| "PEM without an X509 CRL section".to_owned())?
    } else {
        bytes.to_vec()
    };
    let (_, crl) = CertificateRevocationList::from_der(&der).map_err(|e| {
        let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(24)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        format!("not a CRL ({e}); the body starts with {head:?}")
    })?;
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| {
            (
                strip_zeros(r.raw_serial()).to_vec(),
                r.revocation_date.to_datetime(),
            )
        })
        .collect();
    Ok(CrlFacts {
        issuer: crl.issuer().to_string(),
        issuer_raw: crl.issuer().as_raw().to_vec(),
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        revoked,
        der: der.clone(),
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[first..]
}

impl CrlFacts {
    /// Check that `issuer` (the certificate's issuer) signed this CRL.
    pub fn verify_signed_by(&self, issuer: &CertFacts) -> CrlSignature {
        if self.issuer_raw != issuer.subject_raw {
            return CrlSignature::WrongIssuer {
                crl_issuer: self.issuer.clone(),
            };
        }
        let Ok((_, crl)) = CertificateRevocationList::from_der(&self.der) else {
            return CrlSignature::Invalid("the CRL does not parse".to_owned());
        };
        let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&issuer.spki_der)
        else {
            return CrlSignature::Invalid("the issuer's public key does not parse".to_owned());
        };
        match crl.verify_signature(&spki) {
            Ok(()) => CrlSignature::Valid,
            Err(e) => CrlSignature::Invalid(e.to_string()),
        }
    }

    /// When `cert` is listed as revoked, its revocation date.
    pub fn revocation_of(&self, cert: &CertFacts) -> Option<OffsetDateTime> {
        let serial = strip_zeros(&cert.serial_raw);
        self.revoked
            .iter()
            .find(|(s, _)| s == serial)
            .map(|(_, t)| *t)
    }
}

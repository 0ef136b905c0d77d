//! Building the chain from a leaf up to a trust anchor, and verifying each signature on the way.
//!
//! This is path building for *diagnosis*: it never gives up at the first fault but walks as far
//! as it can and reports where and why it stopped, so the doctor can name "the intermediate
//! `CN=Example Issuing CA` is missing" instead of "unknown issuer".

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::CertFacts;

/// Where a certificate of the chain came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSource {
    /// Supplied with the target (in the file, or sent by the server in the handshake).
    Target,
    /// One of the trust anchors.
    Anchor,
}

/// Outcome of verifying a certificate's signature with its issuer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The signature verifies.
    Valid,
    /// The signature does not verify with the issuer's key.
    Invalid(String),
    /// The algorithm cannot be verified here (MD5, MD2, DSA...).
    Unsupported(String),
    /// Not checked: trust anchors are trusted as they are, and a chain that stops has no issuer
    /// for its last certificate.
    NotChecked,
}

/// One certificate in the built chain.
#[derive(Debug, Clone)]
pub struct Link {
    /// The certificate.
    pub cert: CertFacts,
    /// Where it came from.
    pub source: LinkSource,
    /// Its signature, verified with the next link's key.
    pub signature: SignatureCheck,
}

/// Why the chain ends where it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEnd {
    /// At a trust anchor: the chain is complete and trusted (signatures aside).
    Anchor,
    /// At a certificate whose issuer was neither supplied nor an anchor.
    MissingIssuer {
        /// The issuer's DN.
        issuer: String,
        /// caIssuers URLs (AIA) naming where that issuer can be downloaded.
        ca_issuers_urls: Vec<String>,
    },
    /// At a self-signed root that is not a trust anchor.
    UntrustedRoot,
    /// The chain would be longer than any sane deployment (a loop of cross-certificates).
    TooLong,
}

/// The chain from the leaf (index 0) upwards.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Leaf first.
    pub links: Vec<Link>,
    /// Why it ends there.
    pub end: ChainEnd,
    /// Supplied certificates that are not part of the chain (stray or duplicate).
    pub unused: Vec<CertFacts>,
}

impl Chain {
    /// The leaf.
    pub fn leaf(&self) -> &CertFacts {
        &self.links[0].cert
    }
}

const MAX_DEPTH: usize = 10;

fn is_anchor(c: &CertFacts, anchors: &[CertFacts]) -> bool {
    // Anchors are a name and a key (RFC 5280 §6.1.1 (d)); a re-issued root with the same key
    // is the same anchor.
    anchors
        .iter()
        .any(|a| a.subject_raw == c.subject_raw && a.spki_der == c.spki_der)
}

/// Verify `cert`'s signature with `issuer`'s public key.
pub(crate) fn verify_signed_by(cert: &CertFacts, issuer_spki_der: &[u8]) -> SignatureCheck {
    let Ok((_, parsed)) = X509Certificate::from_der(&cert.der) else {
        return SignatureCheck::Invalid("the certificate does not parse".to_owned());
    };
    let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(issuer_spki_der) else {
        return SignatureCheck::Invalid("the issuer's public key does not parse".to_owned());
    };
    match parsed.verify_signature(Some(&spki)) {
        Ok(()) => SignatureCheck::Valid,
        Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
            SignatureCheck::Unsupported(cert.signature.name.clone())
        }
        Err(e) => SignatureCheck::Invalid(e.to_string()),
    }
}

/// Whether `cert` reaches one of `anchors` by names (and key identifiers) through
/// `supplied`; signatures are checked by the walk itself.
fn leads_to_anchor(
    cert: &CertFacts,
    supplied: &[CertFacts],
    anchors: &[CertFacts],
    depth: usize,
) -> bool {
    if is_anchor(cert, anchors) {
        return true;
    }
    if depth == 0 || cert.is_self_issued() {
        return false;
    }
    let issued_by = |c: &CertFacts| {
        c.subject_raw == cert.issuer_raw
            && match (&cert.authority_key_id, &c.subject_key_id) {
                (Some(aki), Some(ski)) => aki == ski,
                _ => true,
            }
    };
    anchors.iter().any(issued_by)
        || supplied
            .iter()
            .filter(|s| issued_by(s) && s.der != cert.der)
            .any(|s| leads_to_anchor(s, supplied, anchors, depth - 1))
}

/// Build the chain from `leaf` through `supplied` certificates to one of `anchors`.
pub fn build_chain(leaf: CertFacts, supplied: &[CertFacts], anchors: &[CertFacts]) -> Chain {
    let mut links = vec![Link {
        cert: leaf,
        source: LinkSource::Target,
        signature: SignatureCheck::NotChecked,
    }];
    let mut used = vec![false; supplied.len()];
    // The leaf may itself appear among the supplied certificates.
    for (i, s) in supplied.iter().enumerate() {
        if s.der == links[0].cert.der {
            used[i] = true;
        }
    }
    let end = loop {
        let cur = &links[links.len() - 1];
        if is_anchor(&cur.cert, anchors) {
            break ChainEnd::Anchor;
        }
        if links.len() > MAX_DEPTH {
            break ChainEnd::TooLong;
        }
        if cur.cert.is_self_issued() {
            let check = verify_signed_by(&cur.cert, &cur.cert.spki_der);
            let last = links.len() - 1;
            links[last].signature = check;
            // A self-issued certificate that is not an anchor: the chain ends at an untrusted
            // root (or a self-signed leaf, which the doctor words differently).
            break ChainEnd::UntrustedRoot;
        }
        // Candidates by name; prefer an anchor (trust decides), then a verifying signature.
        let cur_cert = cur.cert.clone();
        let name_match = |c: &CertFacts| {
            c.subject_raw == cur_cert.issuer_raw
                && match (&cur_cert.authority_key_id, &c.subject_key_id) {
                    (Some(aki), Some(ski)) => aki == ski,
                    _ => true,
                }
        };
        let mut candidates: Vec<(LinkSource, Option<usize>, &CertFacts)> = Vec::new();
        candidates.extend(
            anchors
                .iter()
                .filter(|a| name_match(a))
                .map(|a| (LinkSource::Anchor, None, a)),
        );
        candidates.extend(
            supplied
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    !used[*i] && name_match(s) && !links.iter().any(|l| l.cert.der == s.der)
                })
                .map(|(i, s)| (LinkSource::Target, Some(i), s)),
        );
        if candidates.is_empty() {
            break ChainEnd::MissingIssuer {
                issuer: cur_cert.issuer.clone(),
                ca_issuers_urls: cur_cert.ca_issuers_urls.clone(),
            };
        }
        let checks: Vec<SignatureCheck> = candidates
            .iter()
            .map(|(_, _, c)| verify_signed_by(&cur_cert, &c.spki_der))
            .collect();
        // Several issuers can carry the same name and key (after a root roll the issuing CA
        // has a certificate under each root): prefer one that leads to an anchor.
        let valid = |i: usize| checks[i] == SignatureCheck::Valid;
        let pick = (0..candidates.len())
            .find(|&i| {
                valid(i)
                    && (candidates[i].0 == LinkSource::Anchor
                        || leads_to_anchor(candidates[i].2, supplied, anchors, MAX_DEPTH))
            })
            .or_else(|| (0..candidates.len()).find(|&i| valid(i)))
            .unwrap_or(0);
        let (source, idx, issuer) = candidates[pick];
        let last = links.len() - 1;
        links[last].signature = checks[pick].clone();
        if let Some(i) = idx {
            used[i] = true;
        }
        links.push(Link {
            cert: issuer.clone(),
            source,
            signature: SignatureCheck::NotChecked,
        });
    };
    // A supplied copy of an anchor that the chain went through via the anchor list is used too.
    for (i, s) in supplied.iter().enumerate() {
        if links
            .iter()
            .any(|l| l.cert.subject_raw == s.subject_raw && l.cert.spki_der == s.spki_der)
        {
            used[i] = true;
        }
    }
    let unused = supplied
        .iter()
        .zip(used)
        .filter(|(_, u)| !u)
        .map(|(s, _)| s.clone())
        .collect();
    Chain { links, end, unused }
}

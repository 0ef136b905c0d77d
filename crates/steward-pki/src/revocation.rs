//! A client-certificate verifier that checks revocation against CRLs whose signatures were
//! verified once, not at every handshake.
//!
//! rustls's `WebPkiClientVerifier` hands the CRLs to webpki, which verifies the signature of
//! each authoritative CRL every time it consults it (webpki issue #81): two ECDSA verifications
//! per full mutual-TLS handshake on the agent site (the agent's certificate against the issuing
//! CA's CRL, the issuing CA against the root's), a quarter of the server's CPU per handshake.
//! A CRL only changes when the server re-signs it, and every re-signing builds a new verifier,
//! so its signature needs checking once per issuer per verifier.
//!
//! The semantics are webpki's, with the policies both Steward sites use: every certificate of
//! the path is checked (or the end entity only), a certificate whose issuer has no CRL is
//! refused (unknown status), a CRL past its next update still counts. webpki builds the path
//! and verifies every certificate signature, validity and purpose as before; for each
//! candidate path it calls back here, and the callback checks each certificate's serial
//! against the first CRL with the certificate's issuer name, whose signature under that
//! issuer's key (and the issuer's cRLSign usage) was verified once and remembered.
//!
//! Any refusal is handed to rustls's own verifier with the CRLs, so a refused handshake fails
//! with exactly the error (and TLS alert) it always did: `certificate_revoked` stays
//! `certificate_revoked`. The fast path only ever accepts what that verifier accepts.
//! CRLs with an issuing distribution point (never Steward's own) take rustls's verifier
//! directly.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::prelude::FromDer;

/// Which certificates of a client's path are checked against the CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationDepth {
    /// The client's certificate and every CA under the trust anchor (the server's agent site).
    Chain,
    /// The client's certificate only (a gateway, which holds only the issuing CA's CRL).
    EndEntity,
}

/// A client-certificate verifier for `roots` and `crls`; see the module documentation.
/// `allow_unauthenticated` lets a client without a certificate through the handshake (the
/// agent site's enrollment route).
///
/// # Errors
/// The CRLs or roots are unusable, as rustls's verifier builder reports it.
pub fn crl_client_verifier(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: Arc<CryptoProvider>,
    depth: RevocationDepth,
    allow_unauthenticated: bool,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierBuilderError> {
    let fast = CrlVerifier::new(roots, crls, provider, depth, allow_unauthenticated)?;
    Ok(match fast {
        Ok(v) => Arc::new(v),
        Err(exact) => exact,
    })
}

/// rustls's verifier for `roots` and `crls` with Steward's policies (see the module doc).
fn webpki_verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: &Arc<CryptoProvider>,
    depth: RevocationDepth,
    allow_unauthenticated: bool,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierBuilderError> {
    let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls);
    if depth == RevocationDepth::EndEntity {
        b = b.only_check_end_entity_revocation();
    }
    if allow_unauthenticated {
        b = b.allow_unauthenticated();
    }
    b.build()
}

/// A CRL, parsed for serial lookups, and its DER for the one signature check.
#[derive(Debug)]
struct Parsed {
    crl: webpki::CertRevocationList<'static>,
    der: CertificateRevocationListDer<'static>,
}

/// What an issuer is remembered by ([`IssuedBy::key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Issuer {
    /// A CA certificate of the path (its whole DER: the key and the key usage it carries).
    Ca(Vec<u8>),
    /// The trust anchor, by position in the roots (webpki does not track an anchor's key
    /// usage, so only its key matters).
    Anchor(usize),
}

/// Most issuers a verifier remembers; a path's issuers are CAs under the platform root, so a
/// handful at most. Beyond it, the answer is computed and not kept.
const MAX_ISSUERS: usize = 64;

#[derive(Debug)]
struct CrlVerifier {
    /// rustls's verifier without CRLs: answers everything but the certificate check.
    plain: Arc<dyn ClientCertVerifier>,
    /// rustls's verifier with the CRLs: what a refused certificate goes through, for its error.
    exact: Arc<dyn ClientCertVerifier>,
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    crls: Vec<Parsed>,
    depth: RevocationDepth,
    /// Per issuer: the position of the CRL that speaks for the certificates it issued, its
    /// signature under the issuer's key verified; `None` when no CRL can (unknown status, a
    /// bad signature, an issuer without cRLSign).
    issuers: RwLock<HashMap<Issuer, Option<usize>>>,
}

impl CrlVerifier {
    /// The verifier, or rustls's own (`Err`) where the fast path does not apply: no CRLs, or a
    /// CRL scoped by an issuing distribution point.
    fn new(
        roots: Arc<RootCertStore>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        provider: Arc<CryptoProvider>,
        depth: RevocationDepth,
        allow_unauthenticated: bool,
    ) -> Result<Result<Self, Arc<dyn ClientCertVerifier>>, VerifierBuilderError> {
        // rustls parses the CRLs here and refuses unusable ones: the same errors as before.
        let exact = webpki_verifier(
            &roots,
            crls.clone(),
            &provider,
            depth,
            allow_unauthenticated,
        )?;
        let mut parsed = Vec::with_capacity(crls.len());
        for der in crls {
            let crl: Option<webpki::CertRevocationList<'static>> =
                webpki::OwnedCertRevocationList::from_der(der.as_ref())
                    .ok()
                    .map(Into::into);
            match crl {
                Some(crl) if crl.issuing_distribution_point().is_none() => {
                    parsed.push(Parsed { crl, der });
                }
                // A scoped CRL needs webpki's distribution-point matching: rustls's verifier.
                _ => return Ok(Err(exact)),
            }
        }
        if parsed.is_empty() {
            return Ok(Err(exact));
        }
        Ok(Ok(Self {
            plain: webpki_verifier(&roots, Vec::new(), &provider, depth, allow_unauthenticated)?,
            exact,
            roots,
            algs: provider.signature_verification_algorithms,
            crls: parsed,
            depth,
            issuers: RwLock::default(),
        }))
    }

    /// The certificate check without rustls's verifier: webpki's path building with the
    /// revocation callback.
    fn fast(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), webpki::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)?;
        let check = |path: &webpki::VerifiedPath<'_>| self.check_path(path);
        cert.verify_for_usage(
            self.algs.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            Some(&check),
        )
        .map(|_| ())
    }

    /// webpki's revocation check of one candidate path, with the CRL signatures remembered.
    fn check_path(&self, path: &webpki::VerifiedPath<'_>) -> Result<(), webpki::Error> {
        let anchor = self
            .roots
            .roots
            .iter()
            .position(|a| std::ptr::eq(a, path.anchor()))
            .ok_or(webpki::Error::UnknownIssuer)?;
        // End entity first; certificate i is issued by certificate i + 1, the last by the anchor.
        let end_entity: &webpki::Cert<'_> = path.end_entity();
        let certs: Vec<&webpki::Cert<'_>> = std::iter::once(end_entity)
            .chain(path.intermediate_certificates())
            .collect();
        let checked = match self.depth {
            RevocationDepth::Chain => certs.len(),
            RevocationDepth::EndEntity => 1,
        };
        for (i, cert) in certs.iter().take(checked).enumerate() {
            let by = match certs.get(i + 1) {
                Some(ca) => IssuedBy::Ca(ca),
                None => IssuedBy::Anchor(anchor),
            };
            let crl = self
                .crl_for(cert.issuer(), &by)
                .ok_or(webpki::Error::UnknownRevocationStatus)?;
            if self.crls[crl].crl.find_serial(cert.serial())?.is_some() {
                return Err(webpki::Error::CertRevoked);
            }
        }
        Ok(())
    }

    /// The CRL that speaks for what `by` issued (remembered).
    fn crl_for(&self, issuer_name: &[u8], by: &IssuedBy<'_, '_>) -> Option<usize> {
        let key = by.key();
        if let Some(known) = self
            .issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return *known;
        }
        let found = self.verify_crl_of(issuer_name, by);
        let mut issuers = self.issuers.write().unwrap_or_else(|p| p.into_inner());
        if issuers.len() < MAX_ISSUERS {
            issuers.insert(key, found);
        }
        found
    }

    /// As webpki: the first CRL whose issuer is the certificate's issuer, signed by the
    /// issuer's key, from an issuer whose key usage (if it states one) includes cRLSign.
    fn verify_crl_of(&self, issuer_name: &[u8], by: &IssuedBy<'_, '_>) -> Option<usize> {
        let idx = self
            .crls
            .iter()
            .position(|p| p.crl.issuer() == issuer_name)?;
        let spki_der = match by {
            IssuedBy::Ca(ca) => {
                let der = ca.der();
                let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
                // webpki: an issuer that states a key usage must state cRLSign.
                match parsed.key_usage() {
                    Ok(Some(ku)) if !ku.value.crl_sign() => return None,
                    Ok(_) => {}
                    Err(_) => return None,
                }
                ca.subject_public_key_info().as_ref().to_vec()
            }
            IssuedBy::Anchor(i) => {
                der_sequence(self.roots.roots.get(*i)?.subject_public_key_info.as_ref())?
            }
        };
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).ok()?;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(
            self.crls[idx].der.as_ref(),
        )
        .ok()?;
        crl.verify_signature(&spki).ok()?;
        Some(idx)
    }
}

/// The issuer of a certificate in a verified path.
enum IssuedBy<'a, 'p> {
    /// A CA certificate of the path.
    Ca(&'a webpki::Cert<'p>),
    /// The trust anchor, by position in the roots.
    Anchor(usize),
}

impl IssuedBy<'_, '_> {
    /// What the issuer is remembered by.
    fn key(&self) -> Issuer {
        match self {
            Self::Ca(ca) => Issuer::Ca(ca.der().as_ref().to_vec()),
            Self::Anchor(i) => Issuer::Anchor(*i),
        }
    }
}

/// `contents` as a DER SEQUENCE (a trust anchor keeps its key without the outer tag).
fn der_sequence(contents: &[u8]) -> Option<Vec<u8>> {
    let len = contents.len();
    let mut out = Vec::with_capacity(len + 4);
    out.push(0x30);
    if len < 0x80 {
        out.push(u8::try_from(len).ok()?);
    } else if len <= 0xff {
        out.extend([0x81, u8::try_from(len).ok()?]);
    } else {
        let len = u16::try_from(len).ok()?;
        out.push(0x82);
        out.extend(len.to_be_bytes());
    }
    out.extend_from_slice(contents);
    Some(out)
}

impl ClientCertVerifier for CrlVerifier {
    fn offer_client_auth(&self) -> bool {
        self.plain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.plain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.plain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.fast(end_entity, intermediates, now) {
            Ok(()) => Ok(ClientCertVerified::assertion()),
            // Refused: rustls's verifier says why, in its own words and alert.
            Err(_) => self
                .exact
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.plain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.plain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.plain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{Authority, CertFacts, IssuedCert, KeySpec, LeafRequest, Revoked, Usage};
    use time::{Duration, OffsetDateTime};

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn root(cn: &str) -> Authority {
        Authority::new_root(
            cn,
            KeySpec::EcdsaP256,
            now() - Duration::days(1),
            now() + Duration::days(3650),
        )
        .unwrap()
    }

    fn issuing(root: &Authority, cn: &str) -> Authority {
        root.new_intermediate(
            cn,
            KeySpec::EcdsaP256,
            now() - Duration::days(1),
            now() + Duration::days(1825),
            &[],
        )
        .unwrap()
    }

    fn leaf(ca: &Authority, usage: Usage, not_after: OffsetDateTime) -> IssuedCert {
        ca.issue(&LeafRequest {
            common_name: "agent".into(),
            dns_names: vec![],
            ip_addrs: vec![],
            usage,
            not_before: now() - Duration::days(2),
            not_after,
            crl_urls: vec![],
            key: KeySpec::EcdsaP256,
        })
        .unwrap()
    }

    fn revoked(cert: &CertificateDer<'_>) -> Revoked {
        Revoked {
            serial: CertFacts::from_der(cert).unwrap().serial_raw,
            at: now() - Duration::minutes(5),
        }
    }

    fn crl(ca: &Authority, revoked: &[Revoked]) -> CertificateRevocationListDer<'static> {
        ca.sign_crl(
            revoked,
            now() - Duration::minutes(1),
            now() + Duration::hours(1),
            1,
        )
        .unwrap()
    }

    fn roots(anchors: &[&Authority]) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        for a in anchors {
            r.add(a.cert().clone()).unwrap();
        }
        Arc::new(r)
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// The platform: a root, its issuing CA, agents, and the CRLs of both.
    struct Platform {
        root: Authority,
        issuing: Authority,
        good: IssuedCert,
        revoked: IssuedCert,
    }

    fn platform() -> Platform {
        let root = root("Steward Platform Root CA");
        let issuing = issuing(&root, "Steward Issuing CA");
        let good = leaf(&issuing, Usage::Client, now() + Duration::days(30));
        let revoked = leaf(&issuing, Usage::Client, now() + Duration::days(30));
        Platform {
            root,
            issuing,
            good,
            revoked,
        }
    }

    /// Both verifiers answer `ee` + `chain` alike; returns the answer.
    fn same(
        anchors: &[&Authority],
        crls: &[CertificateRevocationListDer<'static>],
        depth: RevocationDepth,
        ee: &CertificateDer<'static>,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), rustls::Error> {
        let ours =
            crl_client_verifier(roots(anchors), crls.to_vec(), provider(), depth, false).unwrap();
        let theirs =
            webpki_verifier(&roots(anchors), crls.to_vec(), &provider(), depth, false).unwrap();
        let t = UnixTime::now();
        // Twice: the second answer comes from the remembered CRL checks.
        let first = ours.verify_client_cert(ee, chain, t).map(|_| ());
        let again = ours.verify_client_cert(ee, chain, t).map(|_| ());
        let reference = theirs.verify_client_cert(ee, chain, t).map(|_| ());
        assert_eq!(first, reference);
        assert_eq!(again, reference);
        first
    }

    #[test]
    fn answers_as_rustls_does_for_every_kind_of_certificate() {
        let p = platform();
        let chain = [p.issuing.cert().clone()];
        let crls = [
            crl(&p.issuing, &[revoked(&p.revoked.cert)]),
            crl(&p.root, &[]),
        ];
        let chain_depth = RevocationDepth::Chain;
        let anchors = [&p.root];

        assert_eq!(
            same(&anchors, &crls, chain_depth, &p.good.cert, &chain),
            Ok(())
        );
        let err = same(&anchors, &crls, chain_depth, &p.revoked.cert, &chain).unwrap_err();
        assert_eq!(err, rustls::CertificateError::Revoked.into());

        // Expired, server-only, from a CA under another root, without the issuing CA.
        let expired = leaf(&p.issuing, Usage::Server, now() - Duration::days(1));
        assert!(same(&anchors, &crls, chain_depth, &expired.cert, &chain).is_err());
        let server_only = leaf(&p.issuing, Usage::Server, now() + Duration::days(30));
        assert!(same(&anchors, &crls, chain_depth, &server_only.cert, &chain).is_err());
        let stranger_root = root("Steward Platform Root CA");
        let stranger_ca = issuing(&stranger_root, "Steward Issuing CA");
        let stranger = leaf(&stranger_ca, Usage::Client, now() + Duration::days(30));
        let err = same(
            &anchors,
            &crls,
            chain_depth,
            &stranger.cert,
            &[stranger_ca.cert().clone()],
        )
        .unwrap_err();
        assert_eq!(err, rustls::CertificateError::BadSignature.into());
        assert!(same(&anchors, &crls, chain_depth, &p.good.cert, &[]).is_err());
    }

    #[test]
    fn a_revoked_issuing_ca_or_a_missing_or_forged_crl_refuses_the_agent() {
        let p = platform();
        let chain = [p.issuing.cert().clone()];
        let depth = RevocationDepth::Chain;
        let anchors = [&p.root];
        let issuing_crl = crl(&p.issuing, &[]);

        // The root revoked the issuing CA.
        let crls = [
            issuing_crl.clone(),
            crl(&p.root, &[revoked(p.issuing.cert())]),
        ];
        let err = same(&anchors, &crls, depth, &p.good.cert, &chain).unwrap_err();
        assert_eq!(err, rustls::CertificateError::Revoked.into());
        // ... which a gateway, checking the agent's certificate only, does not know.
        assert_eq!(
            same(
                &anchors,
                &crls,
                RevocationDepth::EndEntity,
                &p.good.cert,
                &chain
            ),
            Ok(())
        );

        // No CRL for the issuing CA: unknown status.
        let err = same(&anchors, &[crl(&p.root, &[])], depth, &p.good.cert, &chain).unwrap_err();
        assert_eq!(
            err,
            rustls::CertificateError::UnknownRevocationStatus.into()
        );

        // A CRL in the issuing CA's name signed by another key (listing nothing) is no CRL.
        let impostor = issuing(&p.root, "Steward Issuing CA");
        let forged = [crl(&impostor, &[]), crl(&p.root, &[])];
        let err = same(&anchors, &forged, depth, &p.revoked.cert, &chain).unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertRevocationList(_)),
            "{err:?}"
        );
        assert!(same(&anchors, &forged, depth, &p.good.cert, &chain).is_err());
    }

    /// A root roll: the issuing CA under either root (same name and key), one CRL for both.
    #[test]
    fn agents_of_a_rolled_root_pass_through_either_path() {
        let p = platform();
        let r2 = root("Steward Platform Root CA 2");
        let i_new = r2
            .certify_ca(
                &p.issuing,
                0,
                now() - Duration::days(1),
                now() + Duration::days(1825),
                &[],
            )
            .unwrap();
        let chain = [p.issuing.cert().clone(), i_new];
        let crls = [
            crl(&p.issuing, &[revoked(&p.revoked.cert)]),
            crl(&p.root, &[]),
            crl(&r2, &[]),
        ];
        for anchors in [&[&p.root, &r2][..], &[&r2][..], &[&p.root][..]] {
            let depth = RevocationDepth::Chain;
            assert_eq!(same(anchors, &crls, depth, &p.good.cert, &chain), Ok(()));
            assert!(same(anchors, &crls, depth, &p.revoked.cert, &chain).is_err());
        }
    }

    /// The point of it all: an accepted certificate is accepted by the fast path (rustls's
    /// verifier is not consulted), and each issuer's CRL signature is checked once.
    #[test]
    fn the_fast_path_accepts_and_checks_each_crl_signature_once() {
        let p = platform();
        let chain = [p.issuing.cert().clone()];
        let crls = vec![
            crl(&p.issuing, &[revoked(&p.revoked.cert)]),
            crl(&p.root, &[]),
        ];
        let Ok(Ok(v)) = CrlVerifier::new(
            roots(&[&p.root]),
            crls,
            provider(),
            RevocationDepth::Chain,
            true,
        ) else {
            panic!("the fast path applies to Steward's CRLs");
        };
        assert!(
            !v.client_auth_mandatory(),
            "enrollment comes without a certificate"
        );
        let t = UnixTime::now();
        for _ in 0..3 {
            assert_eq!(v.fast(&p.good.cert, &chain, t), Ok(()));
            assert_eq!(
                v.fast(&p.revoked.cert, &chain, t),
                Err(webpki::Error::CertRevoked)
            );
        }
        let issuers = v.issuers.read().unwrap();
        assert_eq!(issuers.len(), 2, "the issuing CA and the root: {issuers:?}");
        assert!(issuers.values().all(Option::is_some));
        drop(issuers);

        // A gateway's edge: the issuing CA's CRL only, the agent's certificate only.
        let Ok(Ok(edge)) = CrlVerifier::new(
            roots(&[&p.root]),
            vec![crl(&p.issuing, &[revoked(&p.revoked.cert)])],
            provider(),
            RevocationDepth::EndEntity,
            false,
        ) else {
            panic!("the fast path applies to the issuing CA's CRL");
        };
        for _ in 0..3 {
            assert_eq!(edge.fast(&p.good.cert, &chain, t), Ok(()));
            assert_eq!(
                edge.fast(&p.revoked.cert, &chain, t),
                Err(webpki::Error::CertRevoked)
            );
        }
        assert_eq!(edge.issuers.read().unwrap().len(), 1, "the issuing CA");
    }

    #[test]
    fn a_scoped_crl_or_none_at_all_takes_rustls_verifier() {
        let p = platform();
        let fast = |crls: Vec<CertificateRevocationListDer<'static>>| {
            CrlVerifier::new(
                roots(&[&p.root]),
                crls,
                provider(),
                RevocationDepth::Chain,
                false,
            )
            .unwrap()
            .is_ok()
        };
        assert!(!fast(Vec::new()));
        // The issuing CA's CRL scoped to a distribution point, as Steward never signs one.
        let scoped = rcgen::CertificateRevocationListParams {
            this_update: now() - Duration::minutes(1),
            next_update: now() + Duration::hours(1),
            crl_number: rcgen::SerialNumber::from(1_u64),
            issuing_distribution_point: Some(rcgen::CrlIssuingDistributionPoint {
                distribution_point: rcgen::CrlDistributionPoint {
                    uris: vec!["http://127.0.0.1:1/crl/issuing.crl".into()],
                },
                scope: Some(rcgen::CrlScope::UserCertsOnly),
            }),
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&p.issuing.issuer().unwrap())
        .unwrap()
        .der()
        .clone();
        let crls = vec![scoped, crl(&p.root, &[])];
        assert!(!fast(crls.clone()));
        let chain = [p.issuing.cert().clone()];
        let anchors = [&p.root];
        assert_eq!(
            same(
                &anchors,
                &crls,
                RevocationDepth::Chain,
                &p.good.cert,
                &chain
            ),
            Ok(())
        );
        assert!(fast(vec![crl(&p.issuing, &[]), crl(&p.root, &[])]));

        assert_eq!(der_sequence(&[1, 2]), Some(vec![0x30, 2, 1, 2]));
        assert_eq!(der_sequence(&[0; 200]).unwrap()[..3], [0x30, 0x81, 200]);
        assert_eq!(der_sequence(&[0; 300]).unwrap()[..4], [0x30, 0x82, 1, 44]);
    }
}

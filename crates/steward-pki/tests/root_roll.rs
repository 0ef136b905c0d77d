//! Rolling the platform root: a new root certifies the existing issuing CA's name and key, so
//! every certificate that CA issued (before or after the roll) chains to either root, and one
//! CRL signed by its key keeps speaking for all of them. Checked with `build_chain` and with
//! rustls-webpki (through rustls' verifiers), which is what agents, gateways and the server run.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a panic is a failed test

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use steward_pki::*;
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

fn leaf(issuing: &Authority, usage: Usage) -> IssuedCert {
    issuing
        .issue(&LeafRequest {
            common_name: "smp.example.net".into(),
            dns_names: vec!["smp.example.net".into()],
            ip_addrs: vec![],
            usage,
            not_before: now() - Duration::hours(1),
            not_after: now() + Duration::days(30),
            crl_urls: vec!["http://127.0.0.1:1/crl/issuing.crl".into()],
            key: KeySpec::EcdsaP256,
        })
        .unwrap()
}

struct Rolled {
    r1: Authority,
    r2: Authority,
    issuing: Authority,
    /// The issuing CA's certificate under the old root.
    i_old: CertificateDer<'static>,
    /// Under the new root (same name and key).
    i_new: CertificateDer<'static>,
}

fn rolled() -> Rolled {
    let r1 = root("Steward Platform Root CA");
    let issuing = r1
        .new_intermediate(
            "Steward Issuing CA",
            KeySpec::EcdsaP256,
            now() - Duration::days(1),
            now() + Duration::days(1825),
            &["http://127.0.0.1:1/crl/root.crl".into()],
        )
        .unwrap();
    let r2 = root("Steward Platform Root CA 2");
    let i_new = r2
        .certify_ca(
            &issuing,
            0,
            now() - Duration::days(1),
            now() + Duration::days(1825),
            &["http://127.0.0.1:1/crl/root.crl".into()],
        )
        .unwrap();
    Rolled {
        i_old: issuing.cert().clone(),
        r1,
        r2,
        issuing,
        i_new,
    }
}

fn facts(der: &[u8]) -> CertFacts {
    CertFacts::from_der(der).unwrap()
}

fn crls(r: &Rolled, revoked: &[Revoked]) -> Vec<CertificateRevocationListDer<'static>> {
    let (t, n) = (now() - Duration::minutes(1), now() + Duration::hours(1));
    vec![
        r.issuing.sign_crl(revoked, t, n, 1).unwrap(),
        r.r1.sign_crl(&[], t, n, 1).unwrap(),
        r.r2.sign_crl(&[], t, n, 1).unwrap(),
    ]
}

fn server_verifier(
    anchor: &Authority,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Arc<WebPkiServerVerifier> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor.cert().clone()).unwrap();
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .with_crls(crls)
    .build()
    .unwrap()
}

fn verify_server(
    v: &WebPkiServerVerifier,
    leaf: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    v.verify_server_cert(
        leaf,
        chain,
        &ServerName::try_from("smp.example.net").unwrap(),
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
}

#[test]
fn the_new_root_certifies_the_issuing_ca_without_changing_its_name_or_key() {
    let r = rolled();
    let (old, new) = (facts(&r.i_old), facts(&r.i_new));
    assert_eq!(old.subject_raw, new.subject_raw);
    assert_eq!(old.spki_der, new.spki_der);
    assert_eq!(old.subject_key_id, new.subject_key_id);
    assert_ne!(old.issuer_raw, new.issuer_raw);
    assert_eq!(new.issuer_raw, facts(r.r2.cert()).subject_raw);
    assert!(new.is_ca);
}

#[test]
fn a_leaf_chains_to_either_root_with_build_chain() {
    let r = rolled();
    let l = leaf(&r.issuing, Usage::Server);
    let supplied = [facts(&r.i_new), facts(&r.i_old)];
    for (anchor, via) in [(&r.r1, &r.i_old), (&r.r2, &r.i_new)] {
        let chain = build_chain(facts(&l.cert), &supplied, &[facts(anchor.cert())]);
        assert_eq!(chain.end, ChainEnd::Anchor, "{chain:?}");
        assert_eq!(chain.links.len(), 3);
        assert_eq!(chain.links[1].cert.der.as_ref(), via.as_ref());
        assert!(
            chain.links[..2]
                .iter()
                .all(|l| l.signature == SignatureCheck::Valid),
            "{chain:?}"
        );
    }
    // Without the certificate under the new root, the new root alone is not reached.
    let chain = build_chain(facts(&l.cert), &[facts(&r.i_old)], &[facts(r.r2.cert())]);
    assert_ne!(chain.end, ChainEnd::Anchor);
}

#[test]
fn webpki_accepts_the_served_chain_under_either_root_and_revocation_still_works() {
    let r = rolled();
    let l = leaf(&r.issuing, Usage::Server);
    // What a listener serves after the roll: both certificates of the issuing CA.
    let served = [r.i_new.clone(), r.i_old.clone()];
    for anchor in [&r.r1, &r.r2] {
        let v = server_verifier(anchor, crls(&r, &[]));
        verify_server(&v, &l.cert, &served).unwrap();
        // In the other order too (path building backtracks).
        verify_server(&v, &l.cert, &[r.i_old.clone(), r.i_new.clone()]).unwrap();
    }
    // A leaf issued before the roll, sent with the old chain only: the old root still works.
    verify_server(
        &server_verifier(&r.r1, crls(&r, &[])),
        &l.cert,
        std::slice::from_ref(&r.i_old),
    )
    .unwrap();
    // One CRL from the issuing key revokes the leaf whichever root the path ends at.
    let revoked = [Revoked {
        serial: facts(&l.cert).serial_raw.clone(),
        at: now() - Duration::minutes(2),
    }];
    for anchor in [&r.r1, &r.r2] {
        let v = server_verifier(anchor, crls(&r, &revoked));
        let e = verify_server(&v, &l.cert, &served).unwrap_err();
        assert!(format!("{e:?}").contains("Revoked"), "{e:?}");
    }
}

#[test]
fn agent_certificates_pass_a_client_verifier_trusting_both_roots_or_only_the_old_one() {
    let r = rolled();
    let agent = leaf(&r.issuing, Usage::Client);
    for anchors in [vec![&r.r1, &r.r2], vec![&r.r1], vec![&r.r2]] {
        let mut roots = rustls::RootCertStore::empty();
        for a in &anchors {
            roots.add(a.cert().clone()).unwrap();
        }
        let v = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_crls(crls(&r, &[]))
        .build()
        .unwrap();
        // The chain a renewed or newly enrolled agent sends after the roll.
        v.verify_client_cert(
            &agent.cert,
            &[r.i_new.clone(), r.i_old.clone()],
            UnixTime::now(),
        )
        .unwrap();
        // An agent enrolled before the roll sends the old chain: fine wherever the old root is
        // trusted (the server keeps it until the old root is retired).
        let old =
            v.verify_client_cert(&agent.cert, std::slice::from_ref(&r.i_old), UnixTime::now());
        assert_eq!(old.is_ok(), anchors.iter().any(|a| std::ptr::eq(*a, &r.r1)));
    }
}

#[test]
fn a_ca_not_made_by_steward_is_refused_rather_than_certified_under_another_name() {
    let r = rolled();
    // Re-certifying works for any Steward CA, including a root (cross-certification).
    let x =
        r.r1.certify_ca(&r.r2, 1, now(), now() + Duration::days(10), &[])
            .unwrap();
    assert_eq!(facts(&x).subject_raw, facts(r.r2.cert()).subject_raw);
    assert_eq!(facts(&x).issuer_raw, facts(r.r1.cert()).subject_raw);
}

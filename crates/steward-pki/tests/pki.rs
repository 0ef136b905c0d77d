//! The PKI core end to end, in memory: a root, an issuing CA, leaves, PKCS#12 round trips,
//! chains and CRLs.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a panic is a failed test

use steward_pki::*;
use time::{Duration, OffsetDateTime};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn platform(spec: KeySpec) -> (Authority, Authority) {
    let root = Authority::new_root(
        "Test Root",
        spec,
        now() - Duration::days(1),
        now() + Duration::days(3650),
    )
    .unwrap();
    let issuing = root
        .new_intermediate(
            "Test Issuing",
            spec,
            now() - Duration::days(1),
            now() + Duration::days(1825),
            &["http://127.0.0.1:1/root.crl".to_owned()],
        )
        .unwrap();
    (root, issuing)
}

fn server_request(spec: KeySpec) -> LeafRequest {
    LeafRequest {
        common_name: "smp.example.net".into(),
        dns_names: vec!["smp.example.net".into(), "*.example.com".into()],
        ip_addrs: vec!["127.0.0.1".parse().unwrap()],
        usage: Usage::Server,
        not_before: now() - Duration::hours(1),
        not_after: now() + Duration::days(397),
        crl_urls: vec!["http://127.0.0.1:1/issuing.crl".into()],
        key: spec,
    }
}

#[test]
fn issues_chains_that_verify_for_every_key_kind() {
    for spec in [
        KeySpec::EcdsaP256,
        KeySpec::EcdsaP384,
        KeySpec::Ed25519,
        KeySpec::RSA_2048,
        "rsa3072-sha384".parse().unwrap(),
    ] {
        let (root, issuing) = platform(spec);
        let leaf = issuing.issue(&server_request(spec)).unwrap();
        let facts = CertFacts::from_der(&leaf.cert).unwrap();
        assert_eq!(facts.common_names, vec!["smp.example.net"]);
        assert!(facts.eku.as_ref().unwrap().server_auth);
        assert!(!facts.is_ca);
        assert_eq!(facts.crl_urls, vec!["http://127.0.0.1:1/issuing.crl"]);
        assert!(facts.dns_names().any(|d| d == "*.example.com"));
        match spec {
            KeySpec::Rsa { .. } => assert!(matches!(facts.key, KeyAlg::Rsa { bits: 2048 | 3072 })),
            KeySpec::Ed25519 => assert_eq!(facts.key, KeyAlg::Ed25519),
            _ => assert!(matches!(facts.key, KeyAlg::Ec { .. })),
        }
        let supplied = vec![CertFacts::from_der(issuing.cert()).unwrap()];
        let anchors = vec![CertFacts::from_der(root.cert()).unwrap()];
        let chain = build_chain(facts, &supplied, &anchors);
        assert_eq!(chain.end, ChainEnd::Anchor, "{spec}");
        assert_eq!(chain.links.len(), 3);
        assert_eq!(chain.links[0].signature, SignatureCheck::Valid, "{spec}");
        assert_eq!(chain.links[1].signature, SignatureCheck::Valid);
        assert_eq!(chain.links[2].source, LinkSource::Anchor);
        assert!(chain.unused.is_empty());
        let key = PrivateKeyDer::Pkcs8(leaf.key_pkcs8.clone().into());
        assert_eq!(
            key_matches_cert(&key, &chain.links[0].cert.spki_der),
            Ok(true)
        );
        assert_eq!(
            key_matches_cert(&key, &chain.links[1].cert.spki_der),
            Ok(false)
        );
    }
}

#[test]
fn chain_names_the_missing_intermediate_and_the_untrusted_root() {
    let (root, issuing) = platform(KeySpec::EcdsaP256);
    let leaf = CertFacts::from_der(
        &issuing
            .issue(&server_request(KeySpec::EcdsaP256))
            .unwrap()
            .cert,
    )
    .unwrap();
    let root_f = CertFacts::from_der(root.cert()).unwrap();
    let chain = build_chain(leaf.clone(), &[], std::slice::from_ref(&root_f));
    match chain.end {
        ChainEnd::MissingIssuer { issuer, .. } => {
            assert!(issuer.contains("Test Issuing"), "{issuer}")
        }
        other => panic!("{other:?}"),
    }
    let issuing_f = CertFacts::from_der(issuing.cert()).unwrap();
    let chain = build_chain(leaf.clone(), &[issuing_f.clone(), root_f.clone()], &[]);
    assert_eq!(chain.end, ChainEnd::UntrustedRoot);
    assert_eq!(chain.links.len(), 3);
    assert_eq!(
        chain.links[2].signature,
        SignatureCheck::Valid,
        "root self-signature"
    );
    // A different CA with the same name but another key is not the issuer (AKI/SKI differ).
    let (_, impostor) = platform(KeySpec::EcdsaP256);
    let chain = build_chain(
        leaf.clone(),
        &[CertFacts::from_der(impostor.cert()).unwrap()],
        std::slice::from_ref(&root_f),
    );
    assert!(
        matches!(chain.end, ChainEnd::MissingIssuer { .. }),
        "{:?}",
        chain.end
    );
    // A tampered signature (last byte of the DER is the signature's last byte) does not verify.
    let mut der = leaf.der.to_vec();
    *der.last_mut().unwrap() ^= 0x01;
    let tampered = CertFacts::from_der(&der).unwrap();
    let chain = build_chain(tampered, &[issuing_f], &[root_f]);
    assert!(
        matches!(chain.links[0].signature, SignatureCheck::Invalid(_)),
        "{:?}",
        chain.links[0].signature
    );
}

#[test]
fn pkcs12_round_trips_in_both_encryptions_and_rejects_a_wrong_password() {
    let (root, issuing) = platform(KeySpec::RSA_2048);
    let leaf = issuing.issue(&server_request(KeySpec::RSA_2048)).unwrap();
    let chain = vec![
        leaf.cert.clone(),
        issuing.cert().clone(),
        root.cert().clone(),
    ];
    for enc in [Pkcs12Encryption::Aes256, Pkcs12Encryption::TripleDes] {
        let pfx = write_pkcs12(&leaf.key_pkcs8, &chain, "s3cret", "smp", enc).unwrap();
        let m = read_material(&pfx, Some("s3cret")).unwrap();
        assert_eq!(m.format, MaterialFormat::Pkcs12);
        assert_eq!(m.certs.len(), 3);
        assert_eq!(m.keys.len(), 1);
        assert_eq!(m.certs[m.leaf_index().unwrap()], leaf.cert);
        assert_eq!(
            read_material(&pfx, Some("wrong")).unwrap_err(),
            MaterialError::WrongPassword
        );
        assert_eq!(
            read_material(&pfx, None).unwrap_err(),
            MaterialError::PasswordRequired
        );
    }
}

#[test]
fn pem_in_any_order_and_der() {
    let (root, issuing) = platform(KeySpec::EcdsaP256);
    let leaf = issuing.issue(&server_request(KeySpec::EcdsaP256)).unwrap();
    let pem = |label: &str, der: &[u8]| {
        use base64_like::encode;
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            encode(der)
        )
    };
    // Root first, key in the middle, leaf last: the reader must still find the leaf.
    let text = pem("CERTIFICATE", root.cert())
        + &pem("PRIVATE KEY", &leaf.key_pkcs8)
        + &pem("CERTIFICATE", issuing.cert())
        + &pem("CERTIFICATE", &leaf.cert);
    let m = read_material(text.as_bytes(), None).unwrap();
    assert_eq!(
        (m.format, m.certs.len(), m.keys.len()),
        (MaterialFormat::Pem, 3, 1)
    );
    assert_eq!(m.certs[m.leaf_index().unwrap()], leaf.cert);
    // Without the key the bottom of the chain is still found.
    let text = pem("CERTIFICATE", issuing.cert()) + &pem("CERTIFICATE", &leaf.cert);
    let m = read_material(text.as_bytes(), None).unwrap();
    assert_eq!(m.certs[m.leaf_index().unwrap()], leaf.cert);
    let m = read_material(&leaf.cert, None).unwrap();
    assert_eq!(m.format, MaterialFormat::Der);
    assert!(matches!(
        read_material(pem("PRIVATE KEY", &leaf.key_pkcs8).as_bytes(), None),
        Err(MaterialError::PemWithoutCertificate { .. })
    ));
    assert_eq!(
        read_material(b"  \n", None).unwrap_err(),
        MaterialError::Empty
    );
    assert!(matches!(
        read_material(b"hello world", None),
        Err(MaterialError::Unrecognised(_))
    ));
    let truncated = &pem("CERTIFICATE", &leaf.cert)[..200];
    assert!(matches!(
        read_material(truncated.as_bytes(), None),
        Err(MaterialError::PemMalformed(_))
    ));
}

#[test]
fn crl_lists_revoked_serials_and_checks_its_signer() {
    let (root, issuing) = platform(KeySpec::EcdsaP256);
    let a = CertFacts::from_der(
        &issuing
            .issue(&server_request(KeySpec::EcdsaP256))
            .unwrap()
            .cert,
    )
    .unwrap();
    let b = CertFacts::from_der(
        &issuing
            .issue(&server_request(KeySpec::EcdsaP256))
            .unwrap()
            .cert,
    )
    .unwrap();
    let crl = issuing
        .sign_crl(
            &[Revoked {
                serial: a.serial_raw.clone(),
                at: now(),
            }],
            now(),
            now() + Duration::hours(2),
            7,
        )
        .unwrap();
    let facts = parse_crl(&crl).unwrap();
    assert!(facts.revocation_of(&a).is_some());
    assert!(facts.revocation_of(&b).is_none());
    assert!(facts.next_update.unwrap() > now());
    let issuing_f = CertFacts::from_der(issuing.cert()).unwrap();
    assert_eq!(facts.verify_signed_by(&issuing_f), CrlSignature::Valid);
    let root_f = CertFacts::from_der(root.cert()).unwrap();
    assert!(matches!(
        facts.verify_signed_by(&root_f),
        CrlSignature::WrongIssuer { .. }
    ));
    let err = parse_crl(b"<html><body>Not found</body></html>").unwrap_err();
    assert!(err.contains("<html>"), "{err}");
}

#[test]
fn authority_reloads_from_der() {
    let (_, issuing) = platform(KeySpec::RSA_2048);
    let again = Authority::from_der(
        issuing.cert().clone(),
        issuing.key_pkcs8(),
        KeySpec::RSA_2048,
    )
    .unwrap();
    let leaf = again.issue(&server_request(KeySpec::EcdsaP256)).unwrap();
    let f = CertFacts::from_der(&leaf.cert).unwrap();
    assert_eq!(f.signature.hash, HashAlg::Sha256);
    let (_, other) = platform(KeySpec::EcdsaP256);
    assert!(
        Authority::from_der(
            issuing.cert().clone(),
            other.key_pkcs8(),
            KeySpec::EcdsaP256
        )
        .is_err()
    );
}

/// Minimal standard base64 for building PEM fixtures without another dependency.
mod base64_like {
    pub(super) fn encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for (i, chunk) in data.chunks(3).enumerate() {
            if i > 0 && i % 16 == 0 {
                out.push('\n');
            }
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for j in 0..4 {
                if j <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * j) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[test]
fn csr_enrollment_keeps_the_key_with_the_requester() {
    let (root, issuing) = platform(KeySpec::EcdsaP256);
    let (csr, key) = make_csr(KeySpec::EcdsaP256, "ignored-by-the-ca").unwrap();
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    let mut req = server_request(KeySpec::EcdsaP256);
    req.common_name = "device-42".into();
    req.dns_names.clear();
    req.ip_addrs.clear();
    req.usage = Usage::Client;
    let cert = issuing.sign_csr(&csr, &req).unwrap();
    let facts = CertFacts::from_der(&cert).unwrap();
    assert_eq!(facts.common_names, vec!["device-42"]);
    assert!(facts.eku.as_ref().unwrap().client_auth && !facts.eku.as_ref().unwrap().server_auth);
    let key = PrivateKeyDer::Pkcs8(key.into());
    assert_eq!(key_matches_cert(&key, &facts.spki_der), Ok(true));
    let chain = build_chain(
        facts,
        &[CertFacts::from_der(issuing.cert()).unwrap()],
        &[CertFacts::from_der(root.cert()).unwrap()],
    );
    assert_eq!(chain.end, ChainEnd::Anchor);
    // A CSR whose signature was tampered with proves nothing and is refused.
    use rustls_pki_types::pem::PemObject;
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    *der.last_mut().unwrap() ^= 0x01;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64_like::encode(&der)
    );
    assert!(matches!(
        issuing.sign_csr(&tampered, &req),
        Err(Error::Csr(_))
    ));
    assert!(matches!(
        issuing.sign_csr("not a csr", &req),
        Err(Error::Csr(_))
    ));
}

/// Issue 5: the platform root signs the trust bundle agents fetch after a rollover; only that
/// root's signature over exactly those bytes verifies.
#[test]
fn detached_signatures_verify_only_with_the_signer_and_the_same_bytes() {
    let now = OffsetDateTime::now_utc();
    for spec in [
        KeySpec::EcdsaP256,
        KeySpec::EcdsaP384,
        KeySpec::Ed25519,
        KeySpec::Rsa {
            bits: RsaBits::B2048,
            hash: RsaHash::Sha384,
        },
    ] {
        let root = Authority::new_root(
            "Bundle Root",
            spec,
            now - Duration::days(1),
            now + Duration::days(9),
        )
        .unwrap();
        let other = Authority::new_root(
            "Other Root",
            spec,
            now - Duration::days(1),
            now + Duration::days(9),
        )
        .unwrap();
        let msg = b"{\"trust_anchors_pem\":[]}";
        let sig = root.sign_detached(msg).unwrap();
        assert!(verify_detached(root.cert(), msg, &sig), "{spec:?}");
        assert!(
            !verify_detached(root.cert(), b"{\"trust_anchors_pem\":[1]}", &sig),
            "{spec:?}"
        );
        assert!(!verify_detached(other.cert(), msg, &sig), "{spec:?}");
        assert!(!verify_detached(b"not a certificate", msg, &sig));
    }
}

/// The lean identity parse the agent site does per connection says exactly what the full facts
/// say, for a root, an intermediate, a server and a client certificate, and refuses what the
/// facts refuse.
#[test]
fn cert_identity_agrees_with_cert_facts() {
    let (root, issuing) = platform(KeySpec::EcdsaP256);
    let server = issuing.issue(&server_request(KeySpec::EcdsaP256)).unwrap();
    let mut client = server_request(KeySpec::EcdsaP256);
    client.common_name = "3a3f14eb-6d52-41a8-81ac-17e98befbbe9".into();
    client.dns_names = vec![];
    client.usage = Usage::Client;
    let client = issuing.issue(&client).unwrap();
    for der in [root.cert(), issuing.cert(), &server.cert, &client.cert] {
        let facts = CertFacts::from_der(der).unwrap();
        let id = CertIdentity::from_der(der).unwrap();
        assert_eq!(id.sha256, facts.thumbprint.sha256_hex());
        assert_eq!(id.serial, facts.serial);
        assert_eq!(id.common_name.as_ref(), facts.common_names.first());
        assert!(id.common_name.is_some());
    }
    let mut trailing = client.cert.to_vec();
    trailing.push(0);
    assert!(CertFacts::from_der(&trailing).is_err());
    assert!(CertIdentity::from_der(&trailing).is_err());
    assert!(CertIdentity::from_der(b"not a certificate").is_err());
}

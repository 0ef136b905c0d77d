//! Every rule under every profile: start from a certificate that passes everything, break one
//! thing, and check the severity each profile gives the rule that must fire.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a panic is a failed test

use steward_doctor::cert::{
    CertEvidence, CrlEvidence, Input, KeyEvidence, ProbeFailure, ReadOutcome, Revocation, evaluate,
};
use steward_doctor::{Finding, Profile, RULES, Severity};
use steward_pki::*;
use time::{Duration, OffsetDateTime};

const CDP: &str = "http://127.0.0.1:9/issuing.crl";

struct World {
    now: OffsetDateTime,
    issuing: Authority,
    good: CertEvidence,
}

fn world() -> World {
    let now = OffsetDateTime::now_utc();
    let root = Authority::new_root(
        "Rules Root",
        KeySpec::RSA_2048,
        now - Duration::days(10),
        now + Duration::days(3650),
    )
    .unwrap();
    let issuing = root
        .new_intermediate(
            "Rules Issuing",
            KeySpec::RSA_2048,
            now - Duration::days(10),
            now + Duration::days(1800),
            &[],
        )
        .unwrap();
    let leaf = issuing
        .issue(&LeafRequest {
            common_name: "smp.example.net".into(),
            dns_names: vec!["smp.example.net".into(), "*.example.com".into()],
            ip_addrs: vec![],
            usage: Usage::Server,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(365),
            crl_urls: vec![CDP.into()],
            key: KeySpec::RSA_2048,
        })
        .unwrap();
    let leaf_f = CertFacts::from_der(&leaf.cert).unwrap();
    let chain = build_chain(
        leaf_f,
        &[CertFacts::from_der(issuing.cert()).unwrap()],
        &[CertFacts::from_der(root.cert()).unwrap()],
    );
    assert_eq!(chain.end, ChainEnd::Anchor);
    let crl = parse_crl(
        &issuing
            .sign_crl(&[], now - Duration::hours(1), now + Duration::days(1), 1)
            .unwrap(),
    )
    .unwrap();
    let good = CertEvidence {
        read: ReadOutcome::Read,
        input: Input::File {
            format: Some(MaterialFormat::Pkcs12),
        },
        chain: Some(chain),
        key: KeyEvidence::Matches,
        names: vec!["smp.example.net".into(), "gw.example.com".into()],
        revocation: Revocation::Checked(vec![CrlEvidence {
            link: 0,
            url: CDP.into(),
            fetched: Ok(crl),
        }]),
    };
    World { now, issuing, good }
}

fn severities(ev: &CertEvidence, now: OffsetDateTime, id: &str) -> [Severity; 3] {
    Profile::ALL.map(|p| find(&evaluate(ev, p, now), id).severity)
}

fn find<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no finding {id}"))
}

fn leaf(ev: &mut CertEvidence) -> &mut CertFacts {
    &mut ev.chain.as_mut().unwrap().links[0].cert
}

use Severity::{Error as E, Ok as O, Warning as W};

type Mutation = Box<dyn Fn(&World, &mut CertEvidence)>;

fn cases() -> Vec<(&'static str, &'static str, Mutation, [Severity; 3])> {
    vec![
        (
            "CERT-PARSE",
            "random bytes",
            Box::new(|_, ev| {
                ev.read = ReadOutcome::Material(MaterialError::Unrecognised("x".into()))
            }),
            [E, E, E],
        ),
        (
            "PFX-PASSWORD",
            "wrong password",
            Box::new(|_, ev| ev.read = ReadOutcome::Material(MaterialError::WrongPassword)),
            [E, E, E],
        ),
        (
            "PFX-PASSWORD",
            "no password",
            Box::new(|_, ev| ev.read = ReadOutcome::Material(MaterialError::PasswordRequired)),
            [E, E, E],
        ),
        (
            "PFX-NO-KEY",
            "no key bag",
            Box::new(|_, ev| ev.key = KeyEvidence::Missing),
            [E, E, E],
        ),
        (
            "PFX-KEY-MISMATCH",
            "other key",
            Box::new(|_, ev| ev.key = KeyEvidence::Mismatch),
            [E, E, E],
        ),
        (
            "CERT-EXPIRED",
            "leaf expired",
            Box::new(|w, ev| leaf(ev).not_after = w.now - Duration::days(2)),
            [E, E, E],
        ),
        (
            "CERT-EXPIRED",
            "intermediate expired",
            Box::new(|w, ev| {
                ev.chain.as_mut().unwrap().links[1].cert.not_after = w.now - Duration::days(2)
            }),
            [E, E, E],
        ),
        (
            "CERT-NOT-YET-VALID",
            "starts tomorrow",
            Box::new(|w, ev| leaf(ev).not_before = w.now + Duration::days(1)),
            [E, E, E],
        ),
        (
            "CERT-EXPIRES-SOON",
            "10 days left",
            Box::new(|w, ev| leaf(ev).not_after = w.now + Duration::days(10)),
            [W, E, E],
        ),
        (
            "CERT-NAME-MISMATCH",
            "other name",
            Box::new(|_, ev| ev.names = vec!["smp.example.org".into()]),
            [E, E, E],
        ),
        (
            "CERT-NAME-MISMATCH",
            "wildcard is one label",
            Box::new(|_, ev| ev.names = vec!["a.b.example.com".into()]),
            [E, E, E],
        ),
        (
            "CERT-NO-SAN",
            "CN matches",
            Box::new(|_, ev| {
                leaf(ev).sans = None;
                ev.names = vec!["smp.example.net".into()];
            }),
            [E, W, W],
        ),
        (
            "CERT-NO-SAN",
            "CN does not match",
            Box::new(|_, ev| {
                leaf(ev).sans = None;
                ev.names = vec!["other.example.net".into()];
            }),
            [E, E, E],
        ),
        (
            "CERT-EKU-SERVER-AUTH",
            "clientAuth only",
            Box::new(|_, ev| {
                leaf(ev).eku = Some(Eku {
                    client_auth: true,
                    purposes: vec!["clientAuth".into()],
                    ..Eku::default()
                })
            }),
            [E, E, E],
        ),
        (
            "CERT-EKU-SERVER-AUTH",
            "no EKU extension",
            Box::new(|_, ev| leaf(ev).eku = None),
            [W, E, E],
        ),
        (
            "CERT-HASH-WEAK",
            "SHA-1 leaf",
            Box::new(|_, ev| {
                leaf(ev).signature = SignatureAlg {
                    name: "sha1WithRSAEncryption".into(),
                    hash: HashAlg::Sha1,
                }
            }),
            [E, W, O],
        ),
        (
            "CERT-HASH-WEAK",
            "SHA-1 intermediate",
            Box::new(|_, ev| {
                ev.chain.as_mut().unwrap().links[1].cert.signature.hash = HashAlg::Sha1
            }),
            [E, W, O],
        ),
        (
            "CERT-HASH-BROKEN",
            "MD5 leaf",
            Box::new(|_, ev| {
                leaf(ev).signature = SignatureAlg {
                    name: "md5WithRSAEncryption".into(),
                    hash: HashAlg::Md5,
                }
            }),
            [E, E, E],
        ),
        (
            "CERT-KEY-ALG",
            "ECDSA P-256",
            Box::new(|_, ev| {
                leaf(ev).key = KeyAlg::Ec {
                    curve: "P-256".into(),
                }
            }),
            [O, E, E],
        ),
        (
            "CERT-KEY-ALG",
            "Ed25519",
            Box::new(|_, ev| leaf(ev).key = KeyAlg::Ed25519),
            [O, E, E],
        ),
        (
            "CERT-KEY-ALG",
            "ECDSA P-521",
            Box::new(|_, ev| {
                leaf(ev).key = KeyAlg::Ec {
                    curve: "P-521".into(),
                }
            }),
            [E, E, E],
        ),
        (
            "CERT-KEY-ALG",
            "DSA",
            Box::new(|_, ev| leaf(ev).key = KeyAlg::Dsa { bits: 2048 }),
            [E, E, E],
        ),
        (
            "CERT-KEY-SIZE",
            "RSA 1024",
            Box::new(|_, ev| leaf(ev).key = KeyAlg::Rsa { bits: 1024 }),
            [E, E, E],
        ),
        (
            "CERT-LEAF-IS-CA",
            "CA:TRUE",
            Box::new(|_, ev| leaf(ev).is_ca = true),
            [E, W, W],
        ),
        (
            "CERT-KEY-USAGE",
            "keyCertSign only",
            Box::new(|_, ev| {
                leaf(ev).key_usage = Some(KeyUsageBits {
                    key_cert_sign: true,
                    ..Default::default()
                })
            }),
            [W, W, W],
        ),
        (
            "CERT-KEY-USAGE",
            "RSA keyEncipherment only",
            Box::new(|_, ev| {
                leaf(ev).key_usage = Some(KeyUsageBits {
                    key_encipherment: true,
                    ..Default::default()
                })
            }),
            [W, W, W],
        ),
        (
            "CERT-CHAIN-INCOMPLETE",
            "intermediate missing",
            Box::new(|_, ev| {
                let chain = ev.chain.as_mut().unwrap();
                chain.links.truncate(1);
                chain.end = ChainEnd::MissingIssuer {
                    issuer: chain.links[0].cert.issuer.clone(),
                    ca_issuers_urls: vec![],
                };
            }),
            [E, E, E],
        ),
        (
            "CERT-UNTRUSTED-ROOT",
            "root not an anchor",
            Box::new(|_, ev| {
                let chain = ev.chain.as_mut().unwrap();
                chain.links[2].source = LinkSource::Target;
                chain.end = ChainEnd::UntrustedRoot;
            }),
            [E, E, E],
        ),
        (
            "CERT-SELF-SIGNED",
            "self-signed leaf",
            Box::new(|_, ev| {
                let chain = ev.chain.as_mut().unwrap();
                chain.links.truncate(1);
                let l = &mut chain.links[0].cert;
                l.issuer_raw = l.subject_raw.clone();
                chain.end = ChainEnd::UntrustedRoot;
            }),
            [W, W, W],
        ),
        (
            "CERT-SIGNATURE",
            "bad signature",
            Box::new(|_, ev| {
                ev.chain.as_mut().unwrap().links[0].signature =
                    SignatureCheck::Invalid("tampered".into())
            }),
            [E, E, E],
        ),
        (
            "CERT-SIGNATURE",
            "unverifiable algorithm",
            Box::new(|_, ev| {
                ev.chain.as_mut().unwrap().links[0].signature =
                    SignatureCheck::Unsupported("md5WithRSAEncryption".into())
            }),
            [E, E, E],
        ),
        (
            "CERT-REVOKED",
            "leaf revoked",
            Box::new(|w, ev| {
                let serial = leaf(ev).serial_raw.clone();
                let crl = w
                    .issuing
                    .sign_crl(
                        &[Revoked {
                            serial,
                            at: w.now - Duration::hours(1),
                        }],
                        w.now - Duration::hours(1),
                        w.now + Duration::days(1),
                        2,
                    )
                    .unwrap();
                ev.revocation = Revocation::Checked(vec![CrlEvidence {
                    link: 0,
                    url: CDP.into(),
                    fetched: Ok(parse_crl(&crl).unwrap()),
                }]);
            }),
            [E, E, E],
        ),
        (
            "CERT-CRL-UNREACHABLE",
            "connection refused",
            Box::new(|_, ev| {
                ev.revocation = Revocation::Checked(vec![CrlEvidence {
                    link: 0,
                    url: CDP.into(),
                    fetched: Err("connection refused".into()),
                }])
            }),
            [E, E, E],
        ),
        (
            "CERT-CRL-STALE",
            "past next-update",
            Box::new(|w, ev| {
                let crl = w
                    .issuing
                    .sign_crl(&[], w.now - Duration::days(9), w.now - Duration::days(2), 3)
                    .unwrap();
                ev.revocation = Revocation::Checked(vec![CrlEvidence {
                    link: 0,
                    url: CDP.into(),
                    fetched: Ok(parse_crl(&crl).unwrap()),
                }]);
            }),
            [E, E, E],
        ),
        (
            "CERT-CRL-STALE",
            "not yet valid (clock skew)",
            Box::new(|w, ev| {
                let crl = w
                    .issuing
                    .sign_crl(
                        &[],
                        w.now + Duration::hours(3),
                        w.now + Duration::days(2),
                        4,
                    )
                    .unwrap();
                ev.revocation = Revocation::Checked(vec![CrlEvidence {
                    link: 0,
                    url: CDP.into(),
                    fetched: Ok(parse_crl(&crl).unwrap()),
                }]);
            }),
            [E, E, E],
        ),
    ]
}

#[test]
fn a_sound_rsa_certificate_passes_every_rule_under_every_profile() {
    let w = world();
    for p in Profile::ALL {
        let findings = evaluate(&w.good, p, w.now);
        assert_eq!(findings.len(), RULES.len());
        for f in &findings {
            assert_eq!(f.severity, Severity::Ok, "{p}: {f:?}");
            assert!(
                !f.message.starts_with("skipped"),
                "{p}: nothing may be skipped here: {f:?}"
            );
        }
    }
}

#[test]
fn each_rule_fires_with_its_severity_per_profile() {
    let w = world();
    for (id, case, mutate, want) in cases() {
        let mut ev = w.good.clone();
        mutate(&w, &mut ev);
        let got = severities(&ev, w.now, id);
        assert_eq!(got, want, "{id} ({case}): steward/itms-8.8/itms-7.5");
        let f = &evaluate(&ev, Profile::Steward, w.now);
        let f = find(f, id);
        assert!(!f.message.is_empty());
        if f.severity != Severity::Ok {
            assert!(
                f.remedy.as_deref().is_some_and(|r| !r.is_empty()),
                "{id} has a remedy"
            );
        }
    }
}

#[test]
fn every_rule_has_a_case() {
    let ids: Vec<&str> = cases().into_iter().map(|c| c.0).collect();
    for r in RULES {
        assert!(ids.contains(&r.id), "no test case fires {}", r.id);
    }
}

#[test]
fn the_evidence_is_in_the_message() {
    let w = world();
    let mut ev = w.good.clone();
    ev.names = vec!["smp.example.org".into()];
    let f = evaluate(&ev, Profile::Steward, w.now);
    let m = &find(&f, "CERT-NAME-MISMATCH").message;
    assert!(
        m.contains("smp.example.org") && m.contains("DNS:smp.example.net"),
        "{m}"
    );

    let mut ev = w.good.clone();
    let chain = ev.chain.as_mut().unwrap();
    chain.links.truncate(1);
    chain.end = ChainEnd::MissingIssuer {
        issuer: "CN=Rules Issuing".into(),
        ca_issuers_urls: vec!["http://ca/issuing.crt".into()],
    };
    let f = evaluate(&ev, Profile::Steward, w.now);
    let m = &find(&f, "CERT-CHAIN-INCOMPLETE").message;
    assert!(
        m.contains("CN=Rules Issuing") && m.contains("http://ca/issuing.crt"),
        "{m}"
    );

    let mut ev = w.good.clone();
    leaf(&mut ev).not_after = w.now + Duration::days(10);
    let f = evaluate(&ev, Profile::Itms88, w.now);
    assert!(find(&f, "CERT-EXPIRES-SOON").message.contains("days left"));
}

#[test]
fn a_crl_whose_issuer_is_missing_is_reported_as_unchecked_not_verified() {
    let w = world();
    let mut ev = w.good.clone();
    let chain = ev.chain.as_mut().unwrap();
    chain.links.truncate(1);
    // As build_chain leaves it: with no issuer, the leaf's signature is not checked.
    chain.links[0].signature = SignatureCheck::NotChecked;
    chain.end = ChainEnd::MissingIssuer {
        issuer: chain.links[0].cert.issuer.clone(),
        ca_issuers_urls: vec![],
    };
    let f = evaluate(&ev, Profile::Steward, w.now);
    let stale = find(&f, "CERT-CRL-STALE");
    assert_eq!(stale.severity, Severity::Ok);
    assert!(stale.message.contains("not checked"), "{}", stale.message);
    assert!(
        !stale.message.contains("signed by their issuer"),
        "{}",
        stale.message
    );
    assert!(find(&f, "CERT-SIGNATURE").message.starts_with("skipped"));
}

#[test]
fn unreadable_targets_skip_the_rest_and_probe_failures_come_first() {
    let w = world();
    let mut ev = w.good.clone();
    ev.chain = None;
    ev.read = ReadOutcome::Probe(ProbeFailure {
        id: "NET-REFUSED",
        message: "127.0.0.1:1 refused".into(),
        remedy: "start it".into(),
    });
    let f = evaluate(&ev, Profile::Steward, w.now);
    assert_eq!(f[0].id, "NET-REFUSED");
    assert_eq!(f[0].severity, Severity::Error);
    assert!(
        f[1..]
            .iter()
            .all(|x| x.severity == Severity::Ok && x.message.starts_with("skipped"))
    );
}

#[test]
fn no_revocation_skips_the_crl_rules() {
    let w = world();
    let mut ev = w.good.clone();
    ev.revocation = Revocation::Disabled;
    let f = evaluate(&ev, Profile::Steward, w.now);
    for id in ["CERT-REVOKED", "CERT-CRL-UNREACHABLE", "CERT-CRL-STALE"] {
        assert!(find(&f, id).message.contains("--no-revocation"));
    }
}

#[test]
fn every_id_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/diagnostics.md"
    ))
    .unwrap();
    for id in RULES
        .iter()
        .map(|r| r.id)
        .chain(steward_doctor::rules::PROBE_IDS.iter().copied())
    {
        assert!(
            doc.contains(&format!("### {id}")),
            "docs/diagnostics.md has no section for {id}"
        );
    }
}

/// Issue 5: the doctor gives each CRL's age and next-update, and a CRL that is not yet valid
/// names the clock skew.
#[test]
fn crl_age_next_update_and_skew_are_named() {
    let w = world();
    let mut ev = w.good.clone();
    let crl = w
        .issuing
        .sign_crl(
            &[],
            w.now - Duration::minutes(30),
            w.now + Duration::hours(47),
            5,
        )
        .unwrap();
    ev.revocation = Revocation::Checked(vec![CrlEvidence {
        link: 0,
        url: CDP.into(),
        fetched: Ok(parse_crl(&crl).unwrap()),
    }]);
    let f = evaluate(&ev, Profile::Steward, w.now);
    let stale = find(&f, "CERT-CRL-STALE");
    assert_eq!(stale.severity, Severity::Ok);
    assert!(stale.message.contains("(age 30 min)"), "{}", stale.message);
    assert!(stale.message.contains("(in 47 h)"), "{}", stale.message);

    let crl = w
        .issuing
        .sign_crl(
            &[],
            w.now + Duration::minutes(10),
            w.now + Duration::days(2),
            6,
        )
        .unwrap();
    ev.revocation = Revocation::Checked(vec![CrlEvidence {
        link: 0,
        url: CDP.into(),
        fetched: Ok(parse_crl(&crl).unwrap()),
    }]);
    let f = evaluate(&ev, Profile::Steward, w.now);
    let stale = find(&f, "CERT-CRL-STALE");
    assert_eq!(stale.severity, Severity::Error);
    assert!(
        stale.message.contains("not yet valid")
            && stale.message.contains("clock skew")
            && stale.message.contains("at least 10 min behind"),
        "{}",
        stale.message
    );
}

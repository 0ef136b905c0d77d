//! The duplicate-SPN search against a real OpenLDAP `slapd` on loopback (a throwaway directory
//! with AD's `servicePrincipalName` in its schema): holders found case-insensitively, a bind
//! that is refused, a base that does not exist, and a directory that is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use steward_kerberos::doctor::{LdapEvidence, SpnHolders};
use steward_kerberos::ldap::{LdapSettings, search_spns};
use steward_kerberos::testldap::{ADMIN_PASSWORD, TestLdap};

fn settings(ldap: &TestLdap, bind: Option<(String, String)>) -> LdapSettings {
    LdapSettings {
        url: ldap.url(),
        base: ldap.suffix().to_owned(),
        bind,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn the_search_finds_each_holder_and_names_what_fails() {
    let mut ldap = TestLdap::start("dc=steward,dc=test").expect("slapd starts");
    let svc = ldap
        .add_spn_holder("steward-svc", &["HTTP/smp.steward.test", "HTTP/smp"])
        .unwrap();
    // A stale computer account with the same SPN in other case: AD compares SPNs
    // case-insensitively, and so does the schema.
    let stale = ldap
        .add_spn_holder("OLDWEB01", &["http/SMP.steward.test"])
        .unwrap();
    let spns = vec![
        "HTTP/smp.steward.test".to_owned(),
        "HTTP/smp".to_owned(),
        "HTTP/nowhere.steward.test".to_owned(),
    ];
    let want = |url: String| LdapEvidence::Searched {
        url,
        base: "dc=steward,dc=test".into(),
        spns: vec![
            SpnHolders {
                spn: "HTTP/smp.steward.test".into(),
                holders: {
                    let mut v = vec![svc.clone(), stale.clone()];
                    v.sort();
                    v
                },
            },
            SpnHolders {
                spn: "HTTP/smp".into(),
                holders: vec![svc.clone()],
            },
            SpnHolders {
                spn: "HTTP/nowhere.steward.test".into(),
                holders: vec![],
            },
        ],
    };
    // Anonymous, and bound as the directory's administrator: the same answer.
    assert_eq!(search_spns(&settings(&ldap, None), &spns), want(ldap.url()));
    let admin = Some((ldap.admin_dn(), ADMIN_PASSWORD.to_owned()));
    assert_eq!(
        search_spns(&settings(&ldap, admin), &spns),
        want(ldap.url())
    );

    // A wrong password: the bind is refused with invalidCredentials.
    let wrong = Some((ldap.admin_dn(), "wrong".to_owned()));
    match search_spns(&settings(&ldap, wrong), &spns) {
        LdapEvidence::BindFailed { bind_dn, error, .. } => {
            assert_eq!(bind_dn, ldap.admin_dn());
            assert!(error.contains("49"), "{error}");
        }
        other => panic!("{other:?}"),
    }

    // A base that does not exist.
    let mut s = settings(&ldap, None);
    s.base = "dc=elsewhere,dc=test".into();
    match search_spns(&s, &spns) {
        LdapEvidence::SearchFailed { base, error, .. } => {
            assert_eq!(base, "dc=elsewhere,dc=test");
            assert!(error.contains("noSuchObject"), "{error}");
        }
        other => panic!("{other:?}"),
    }

    // The directory is down.
    let s = settings(&ldap, None);
    ldap.stop();
    match search_spns(&s, &spns) {
        LdapEvidence::Unreachable { url, error } => {
            assert_eq!(url, s.url);
            assert!(!error.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

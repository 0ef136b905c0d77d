//! Device certificates through renewal and deletion, over real mutual TLS on 127.0.0.1: the
//! server asks for a renewal at the configured share of the lifetime, both certificates work
//! until the new one is used, the old one is then refused and put in the CRL; a deleted
//! device is refused and its serial stays in the CRL.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestServer, checkin_request, client, decode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use steward_pki::{CertFacts, KeySpec, make_csr, parse_crl};
use steward_proto::admin::{DeviceSummary, paths as admin};
use steward_proto::{RenewRequest, RenewResponse, paths};

/// Short-lived agent certificates, renewed after 1% of their life (under a second).
async fn server() -> TestServer {
    let mut ts = TestServer::start().await;
    let cfg = ts.data_dir().join("steward.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[certs]\nagent_validity_secs = 60\nrenew_at_percent = 1\n");
    std::fs::write(&cfg, text).unwrap();
    ts.restart().await;
    ts
}

async fn crl_serials(ts: &TestServer) -> Vec<String> {
    let url = &ts.running().addresses.crl_url;
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    parse_crl(&bytes)
        .unwrap()
        .revoked
        .iter()
        .map(|(s, _)| s.iter().map(|b| format!("{b:02X}")).collect())
        .collect()
}

fn serial_of(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    CertFacts::from_der(&der)
        .unwrap()
        .serial
        .trim_start_matches('0')
        .to_owned()
}

async fn summary(ts: &TestServer, id: &str) -> DeviceSummary {
    let all: Vec<DeviceSummary> = ts.get_admin(admin::DEVICES).await.unwrap();
    all.into_iter().find(|d| d.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_without_a_gap_and_the_old_certificate_is_retired() {
    let ts = server().await;
    let pkg = ts.package(3600, 2, &[]).await;
    let a = ts.enroll(&pkg.token, "renewer").await.unwrap();
    let other = ts.enroll(&pkg.token, "bystander").await.unwrap();
    let first = summary(&ts, &a.id).await;
    assert!(first.cert_expires_at.is_some());
    assert!(
        first
            .cert_warning
            .as_deref()
            .is_some_and(|w| w.starts_with("CERT-EXPIRING-SOON")),
        "a 60 s certificate is within 30 days of expiry: {first:?}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = a.checkin(&checkin_request(0)).await.unwrap();
    assert!(answer.renew_certificate, "the server asks for a renewal");

    // A CSR that is not one is refused by ID.
    let bad = decode::<RenewResponse>(
        a.http
            .post(format!("{}{}", a.base, paths::RENEW))
            .json(&RenewRequest {
                csr_pem: "not a CSR".into(),
            })
            .send()
            .await
            .unwrap(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!((bad.0, bad.1.id.as_str()), (400, "AGENT-RENEW-CSR-INVALID"));

    let (csr_pem, key) = make_csr(KeySpec::EcdsaP256, "renewer").unwrap();
    let renewed: RenewResponse = decode(
        a.http
            .post(format!("{}{}", a.base, paths::RENEW))
            .json(&RenewRequest { csr_pem })
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let new_der = CertificateDer::from_pem_slice(renewed.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        CertFacts::from_der(&new_der).unwrap().common_names,
        vec![a.id.clone()]
    );
    assert!(summary(&ts, &a.id).await.cert_renewal_pending);

    // Both work until the new one is used: the old one still checks in.
    a.checkin(&checkin_request(0)).await.unwrap();
    let mut chain = vec![new_der];
    for c in &renewed.chain_pem {
        chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
    }
    let new_http = client(
        &ts.root_pem,
        Some((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))),
        Some(ts.running().agent_addr),
    );
    let resp = new_http
        .post(format!("{}{}", a.base, paths::CHECKIN))
        .json(&checkin_request(0))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let after = summary(&ts, &a.id).await;
    assert!(!after.cert_renewal_pending);
    assert_eq!(
        after.cert_expires_at.as_deref(),
        Some(renewed.not_after.as_str())
    );

    // The first use retired the old one: refused by the server at once, and in the CRL from
    // the next re-signing (the deletion below triggers one).
    let refused = a.checkin(&checkin_request(0)).await.err().unwrap();
    assert_eq!(
        (refused.0, refused.1.id.as_str()),
        (403, "AGENT-UNKNOWN-DEVICE")
    );
    let old_serial = serial_of(&a.enrolled.cert_pem);
    // Deleting the bystander re-signs the CRLs; they then list both serials.
    let del = ts
        .admin
        .delete(ts.console(&admin::DEVICE.replace("{id}", &other.id)))
        .bearer_auth(&ts.token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let serials = crl_serials(&ts).await;
    assert!(
        serials.contains(&old_serial),
        "{serials:?} lacks {old_serial}"
    );
    let other_serial = serial_of(&other.enrolled.cert_pem);
    assert!(
        serials.contains(&other_serial),
        "{serials:?} lacks {other_serial}"
    );
    assert!(!serials.contains(&serial_of(&renewed.cert_pem)));

    // The deleted device is gone and refused (at the TLS layer now that the CRL lists it,
    // or by the server: either way it never checks in again).
    let gone: Result<DeviceSummary, _> = ts
        .get_admin(&admin::DEVICE.replace("{id}", &other.id))
        .await;
    assert_eq!(gone.err().unwrap().1.id, "DEVICE-NOT-FOUND");
    let resp = other
        .http
        .post(format!("{}{}", other.base, paths::CHECKIN))
        .json(&checkin_request(0))
        .send()
        .await;
    assert!(
        resp.as_ref().map_or(true, |r| r.status() != 200),
        "a deleted device checked in: {resp:?}"
    );
    // The renewed agent is untouched by all this.
    let resp = new_http
        .post(format!("{}{}", a.base, paths::CHECKIN))
        .json(&checkin_request(0))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

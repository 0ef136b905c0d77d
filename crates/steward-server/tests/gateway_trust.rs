//! Gateways at the server, over real mutual TLS on 127.0.0.1: join tokens (single use, not
//! interchangeable with enrollment tokens), the agent identity a gateway states (trusted only
//! from an enrolled, unrevoked gateway, and verified again), and the profile's gateway
//! entries derived from the gateways' reports.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use common::{Agent, TestServer, checkin_request, client, decode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::atomic::Ordering;
use steward_pki::{Authority, KeySpec, LeafRequest, OffsetDateTime, Usage, make_csr};
use steward_proto::admin::{GatewaySummary, GatewayToken, NewGatewayToken, paths as admin};

use steward_proto::{
    AGENT_CERT_HEADER, AGENT_CERT_KNOWN_HEADER, AGENT_CERT_SHA256_HEADER, ApiError,
    CheckinResponse, GatewayJoinRequest, GatewayJoinResponse, GatewayReport, GatewayReportResponse,
    paths,
};

async fn gateway_token(ts: &TestServer) -> GatewayToken {
    ts.post_admin(
        admin::GATEWAY_TOKENS,
        &NewGatewayToken { expires_secs: 600 },
    )
    .await
    .unwrap()
}

async fn join(
    ts: &TestServer,
    token: &str,
) -> Result<(GatewayJoinResponse, Vec<u8>), (u16, ApiError)> {
    let (client_csr_pem, key) = make_csr(KeySpec::EcdsaP256, "gw").unwrap();
    let (server_csr_pem, _) = make_csr(KeySpec::EcdsaP256, "gw.example.net").unwrap();
    let resp = ts
        .anonymous_agent()
        .post(ts.agent_url(paths::GATEWAY_JOIN))
        .json(&GatewayJoinRequest {
            token: token.into(),
            client_csr_pem,
            server_csr_pem,
            external_names: vec!["gw.example.net".into()],
            version: "0.1.0-test".into(),
        })
        .send()
        .await
        .unwrap();
    decode(resp).await.map(|j| (j, key))
}

/// An HTTPS client presenting the gateway's identity certificate.
fn gateway_client(ts: &TestServer, joined: &GatewayJoinResponse, key: &[u8]) -> reqwest::Client {
    let mut chain =
        vec![CertificateDer::from_pem_slice(joined.client_cert_pem.as_bytes()).unwrap()];
    for c in &joined.chain_pem {
        chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
    }
    client(
        &ts.root_pem,
        Some((
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )),
        Some(ts.running().agent_addr),
    )
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

async fn forwarded_checkin(
    ts: &TestServer,
    http: &reqwest::Client,
    agent_cert: &str,
) -> Result<CheckinResponse, (u16, ApiError)> {
    checkin_naming(ts, http, AGENT_CERT_HEADER, agent_cert)
        .await
        .0
}

async fn report(
    ts: &TestServer,
    http: &reqwest::Client,
    port: u16,
    thumb: &str,
) -> Result<(), (u16, ApiError)> {
    let resp = http
        .post(ts.agent_url(paths::GATEWAY_REPORT))
        .json(&GatewayReport {
            external_name: "gw.example.net".into(),
            listen_port: port,
            thumbprints: vec![thumb.into()],
            version: "0.1.0-test".into(),
            health: "ok".into(),
            previous_ports: vec![],
            trust_anchors_pem: vec![],
            probes: vec![],
        })
        .send()
        .await
        .unwrap();
    decode::<GatewayReportResponse>(resp).await.map(|_| ())
}

/// Revokes a device through the admin API, which re-signs the CRLs before it answers.
async fn revoke_device(ts: &TestServer, id: &str) {
    let resp = ts
        .admin
        .post(ts.console(&admin::DEVICE_REVOKE.replace("{id}", id)))
        .bearer_auth(&ts.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

async fn enrolled(ts: &TestServer, host: &str) -> Agent {
    let pkg = ts.package(600, 1, &[]).await;
    ts.enroll(&pkg.token, host).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_and_not_enrollment_tokens() {
    let ts = TestServer::start().await;
    let t = gateway_token(&ts).await;
    assert_eq!(t.trust_anchors_pem, vec![ts.root_pem.clone()]);

    // A gateway token does not enroll an agent, and an enrollment token does not join.
    let (status, e) = ts.enroll(&t.token, "pc").await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "ENROLL-TOKEN-INVALID"));
    let pkg = ts.package(600, 5, &[]).await;
    let (status, e) = join(&ts, &pkg.token).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-TOKEN-INVALID"));

    let (joined, _) = join(&ts, &t.token).await.unwrap();
    assert!(joined.client_cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(joined.crl_url.ends_with("/crl/issuing.crl"));
    let server = CertificateDer::from_pem_slice(joined.server_cert_pem.as_bytes()).unwrap();
    let facts = steward_pki::CertFacts::from_der(&server).unwrap();
    assert_eq!(
        facts.dns_names().collect::<Vec<_>>(),
        vec!["gw.example.net"]
    );

    let (status, e) = join(&ts, &t.token).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-TOKEN-USED"));

    let listed: Vec<GatewaySummary> = ts.get_admin(admin::GATEWAYS).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, joined.gateway_id);
    assert!(listed[0].report.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_enrolled_gateway_may_state_an_agent_identity() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let b = enrolled(&ts, "pc-b").await;
    let a_cert = b64(&a.chain[0]);

    // An agent (not a gateway) stating another agent's identity: refused, by ID.
    let (status, e) = forwarded_checkin(&ts, &b.http, &a_cert)
        .await
        .err()
        .unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));
    // Without a client certificate at all: the same.
    let (status, e) = forwarded_checkin(&ts, &ts.anonymous_agent(), &a_cert)
        .await
        .err()
        .unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));

    // An enrolled gateway: the request is A's.
    let t = gateway_token(&ts).await;
    let (joined, key) = join(&ts, &t.token).await.unwrap();
    let gw = gateway_client(&ts, &joined, &key);
    let r = forwarded_checkin(&ts, &gw, &a_cert).await.unwrap();
    assert_eq!(r.device_id, a.id);

    // What the gateway forwards is verified again: garbage, and a certificate from a foreign
    // CA with a real device's ID as CN, are refused.
    let (status, e) = forwarded_checkin(&ts, &gw, "not base64!")
        .await
        .err()
        .unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-AGENT-CERT-INVALID"));
    let now = OffsetDateTime::now_utc();
    let foreign = Authority::new_root(
        "Foreign Root",
        KeySpec::EcdsaP256,
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap();
    let forged = foreign
        .issue(&LeafRequest {
            common_name: a.id.clone(),
            dns_names: vec![],
            ip_addrs: vec![],
            usage: Usage::Client,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
            crl_urls: vec![],
            key: KeySpec::EcdsaP256,
        })
        .unwrap();
    let (status, e) = forwarded_checkin(&ts, &gw, &b64(&forged.cert))
        .await
        .err()
        .unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-AGENT-CERT-INVALID"));

    // A gateway cannot use its own identity as an agent's.
    let own = CertificateDer::from_pem_slice(joined.client_cert_pem.as_bytes()).unwrap();
    let (status, e) = forwarded_checkin(&ts, &gw, &b64(&own)).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "AGENT-UNKNOWN-DEVICE"));

    // Revoked: the gateway's word is no longer taken.
    let store = ts.running().service().store().clone();
    assert!(
        store
            .revoke_gateway(&joined.gateway_id, now.unix_timestamp())
            .await
            .unwrap()
    );
    let (status, e) = forwarded_checkin(&ts, &gw, &a_cert).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));
}

/// A check-in a gateway forwards with the agent's certificate named by `header`: the answer,
/// and whether it told the gateway the server now knows the certificate.
async fn checkin_naming(
    ts: &TestServer,
    http: &reqwest::Client,
    header: &str,
    value: &str,
) -> (Result<CheckinResponse, (u16, ApiError)>, bool) {
    let resp = http
        .post(ts.agent_url(paths::CHECKIN))
        .header(header, value)
        .json(&checkin_request(0))
        .send()
        .await
        .unwrap();
    let known = resp
        .headers()
        .get(AGENT_CERT_KNOWN_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        known.is_none() || known.as_deref() == Some("sha256"),
        "{known:?}"
    );
    (decode(resp).await, known.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_names_a_certificate_by_thumbprint_only_once_the_server_verified_it() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let b = enrolled(&ts, "pc-b").await;
    let c = enrolled(&ts, "pc-c").await;
    let t = gateway_token(&ts).await;
    let (joined, key) = join(&ts, &t.token).await.unwrap();
    let gw = gateway_client(&ts, &joined, &key);
    let a_whole = b64(&a.chain[0]);
    let a_named = steward_pki::Thumbprint::of(&a.chain[0]).sha256_hex();
    let stats = || {
        let service = ts.running().service();
        let s = &service.admission().stats;
        [
            s.forwarded_whole.load(Ordering::Relaxed),
            s.forwarded_by_thumbprint.load(Ordering::Relaxed),
            s.forwarded_unknown.load(Ordering::Relaxed),
        ]
    };
    let unknown = |r: (Result<CheckinResponse, (u16, ApiError)>, bool)| {
        let (status, e) = r.0.err().unwrap();
        assert_eq!((status, e.id.as_str()), (412, "GATEWAY-AGENT-CERT-UNKNOWN"));
        assert!(e.message.contains("send it whole"), "{}", e.message);
        assert!(!r.1, "a refusal told the gateway the certificate is known");
    };

    // Never verified here: not known by its thumbprint.
    unknown(checkin_naming(&ts, &gw, AGENT_CERT_SHA256_HEADER, &a_named).await);
    // Forwarded whole and verified: the answer says so, and the thumbprint (either case) now
    // names A.
    let (r, known) = checkin_naming(&ts, &gw, AGENT_CERT_HEADER, &a_whole).await;
    assert_eq!(r.unwrap().device_id, a.id);
    assert!(known, "a verified certificate was not acknowledged");
    for named in [a_named.clone(), a_named.to_ascii_lowercase()] {
        let (r, known) = checkin_naming(&ts, &gw, AGENT_CERT_SHA256_HEADER, &named).await;
        assert_eq!(r.unwrap().device_id, a.id);
        assert!(!known);
    }
    assert_eq!(stats(), [1, 2, 1]);
    // Sent both ways at once, the whole certificate is the one that counts.
    let c_named = steward_pki::Thumbprint::of(&c.chain[0]).sha256_hex();
    let resp = gw
        .post(ts.agent_url(paths::CHECKIN))
        .header(AGENT_CERT_HEADER, &a_whole)
        .header(AGENT_CERT_SHA256_HEADER, &c_named)
        .json(&checkin_request(0))
        .send()
        .await
        .unwrap();
    assert_eq!(
        decode::<CheckinResponse>(resp).await.unwrap().device_id,
        a.id
    );

    // Not a thumbprint at all: refused as an invalid forwarded identity, not as unknown.
    for bad in ["", "not hex", &a_named[..40], &format!("{a_named}00")] {
        let (r, _) = checkin_naming(&ts, &gw, AGENT_CERT_SHA256_HEADER, bad).await;
        let (status, e) = r.err().unwrap();
        assert_eq!(
            (status, e.id.as_str()),
            (403, "GATEWAY-AGENT-CERT-INVALID"),
            "{bad:?}"
        );
    }
    // Only a gateway may name one: an agent naming A's thumbprint is refused like an agent
    // forwarding A's certificate, and a direct check-in is not acknowledged.
    let (r, _) = checkin_naming(&ts, &b.http, AGENT_CERT_SHA256_HEADER, &a_named).await;
    let (status, e) = r.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));
    let resp = a
        .http
        .post(ts.agent_url(paths::CHECKIN))
        .json(&checkin_request(0))
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key(AGENT_CERT_KNOWN_HEADER));

    // Revoking B re-signs the CRLs: a new verifier, which has verified nothing yet. A is
    // unknown by thumbprint until it is forwarded whole once more.
    let before = stats();
    revoke_device(&ts, &b.id).await;
    unknown(checkin_naming(&ts, &gw, AGENT_CERT_SHA256_HEADER, &a_named).await);
    let (r, known) = checkin_naming(&ts, &gw, AGENT_CERT_HEADER, &a_whole).await;
    assert_eq!(r.unwrap().device_id, a.id);
    assert!(known);
    let (r, _) = checkin_naming(&ts, &gw, AGENT_CERT_SHA256_HEADER, &a_named).await;
    assert_eq!(r.unwrap().device_id, a.id);
    let after = stats();
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [1, 1, 1]
    );
    // B's certificate, revoked, is refused whole; its thumbprint was never learned.
    let (r, known) = checkin_naming(&ts, &gw, AGENT_CERT_HEADER, &b64(&b.chain[0])).await;
    assert_eq!(r.err().unwrap().0, 403);
    assert!(!known);
    let b_named = steward_pki::Thumbprint::of(&b.chain[0]).sha256_hex();
    unknown(checkin_naming(&ts, &gw, AGENT_CERT_SHA256_HEADER, &b_named).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_gateways_are_derived_from_reports() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let first = a
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    assert!(first.profile.gateways.is_empty());

    let t = gateway_token(&ts).await;
    let (joined, key) = join(&ts, &t.token).await.unwrap();
    let gw = gateway_client(&ts, &joined, &key);
    // Only the gateway itself may report: an agent's report is refused.
    let (status, e) = report(&ts, &a.http, 8443, &"AB".repeat(32))
        .await
        .err()
        .unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));
    let (status, e) = report(&ts, &gw, 0, &"AB".repeat(32)).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (400, "GATEWAY-REPORT-INVALID"));

    report(&ts, &gw, 8443, &"AB".repeat(32)).await.unwrap();
    let second = a
        .checkin(&checkin_request(first.version))
        .await
        .unwrap()
        .config
        .expect("a new report changes the configuration");
    assert!(second.profile.version > first.profile.version);
    assert_eq!(second.profile.gateways.len(), 1);
    let g = &second.profile.gateways[0];
    assert_eq!(
        (g.name.as_str(), g.host.as_str(), g.port),
        (joined.gateway_id.as_str(), "gw.example.net", 8443)
    );
    assert_eq!(g.thumbprints, vec!["AB".repeat(32)]);

    // The same report again changes nothing; a new port does, and agents get it.
    report(&ts, &gw, 8443, &"AB".repeat(32)).await.unwrap();
    assert!(
        a.checkin(&checkin_request(second.version))
            .await
            .unwrap()
            .config
            .is_none()
    );
    report(&ts, &gw, 9443, &"AB".repeat(32)).await.unwrap();
    let third = a
        .checkin(&checkin_request(second.version))
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(third.profile.gateways[0].port, 9443);
    assert!(third.profile.version > second.profile.version);

    // Derived entries survive a restart (which binds a new agent-site port here, so the
    // profile changes for that reason).
    let mut ts = ts;
    ts.restart().await;
    let mut a = a;
    a.reconnect(&ts);
    let after = a
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(after.profile.gateways, third.profile.gateways);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_gateway_is_refused_and_leaves_the_profile() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let t = gateway_token(&ts).await;
    let (joined, key) = join(&ts, &t.token).await.unwrap();
    report(
        &ts,
        &gateway_client(&ts, &joined, &key),
        8443,
        &"AB".repeat(32),
    )
    .await
    .unwrap();
    let before = a
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    assert_eq!(before.profile.gateways.len(), 1);

    let revoke = |id: &str| admin::GATEWAY_REVOKE.replace("{id}", id);
    let (status, e) = ts
        .post_admin::<_, serde_json::Value>(&revoke("nope"), &serde_json::json!({}))
        .await
        .err()
        .unwrap();
    assert_eq!((status, e.id.as_str()), (404, "GATEWAY-NOT-FOUND"));
    let resp = ts
        .admin
        .post(ts.console(&revoke(&joined.gateway_id)))
        .bearer_auth(&ts.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    let listed: Vec<GatewaySummary> = ts.get_admin(admin::GATEWAYS).await.unwrap();
    assert!(listed[0].revoked);
    let after = a
        .checkin(&checkin_request(before.version))
        .await
        .unwrap()
        .config
        .unwrap();
    assert!(after.profile.gateways.is_empty());
    assert!(after.profile.version > before.profile.version);
    // The CRL was re-signed before the answer: a new connection with the gateway's identity
    // fails the handshake.
    let refused = gateway_client(&ts, &joined, &key)
        .post(ts.agent_url(paths::GATEWAY_REPORT))
        .json(&serde_json::json!({}))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

async fn gateway_crl(http: &reqwest::Client, ts: &TestServer) -> Result<Vec<u8>, (u16, ApiError)> {
    let resp = http
        .get(ts.agent_url(paths::GATEWAY_CRL))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        return Ok(resp.bytes().await.unwrap().to_vec());
    }
    Err((status, resp.json().await.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_gets_the_crl_on_the_agent_site_and_nobody_else_does() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let t = gateway_token(&ts).await;
    let (joined, key) = join(&ts, &t.token).await.unwrap();
    let gw = gateway_client(&ts, &joined, &key);
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let cdp = || async {
        let r = plain.get(&joined.crl_url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.unwrap().to_vec()
    };

    // The gateway: the issuing CA's current CRL, the same as at the distribution point.
    let crl = gateway_crl(&gw, &ts).await.unwrap();
    steward_pki::parse_crl(&crl).unwrap();
    assert_eq!(crl, cdp().await);

    // An agent and an anonymous client: refused, by ID.
    let (status, e) = gateway_crl(&a.http, &ts).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));
    let (status, e) = gateway_crl(&ts.anonymous_agent(), &ts).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (401, "GATEWAY-CERT-REQUIRED"));

    // A revocation re-signs it: the gateway sees the new CRL at once.
    let b = enrolled(&ts, "pc-b").await;
    revoke_device(&ts, &b.id).await;
    let fresh = gateway_crl(&gw, &ts).await.unwrap();
    assert_ne!(fresh, crl);
    assert_eq!(fresh, cdp().await);
}

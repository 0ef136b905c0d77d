//! The server's view of its gateways, over real mutual TLS on 127.0.0.1: the answer to a
//! gateway's report (what to probe, who does not hold its current entry yet), green/red with
//! the reasons in the admin API, agents' failed attempts on their devices and against the
//! gateway, and the side-effect-free ping.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use common::{Agent, TestServer, checkin_request, client, decode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sqlx::Connection;
use steward_pki::{KeySpec, make_csr};
use steward_proto::admin::{
    DeviceSummary, GatewayStatus, GatewaySummary, GatewayToken, NewGatewayToken, paths as admin,
};
use steward_proto::{
    AGENT_CERT_HEADER, ApiError, CheckinRequest, FailedAttempt, FailureKind, GatewayJoinRequest,
    GatewayJoinResponse, GatewayReport, GatewayReportResponse, MAX_FAILED_ATTEMPTS, Pong,
    ProbeTarget, ReachProbe, paths,
};

const HOST: &str = "gw.example.net";

/// A joined gateway: its ID and a client presenting its identity certificate.
struct Gw {
    id: String,
    http: reqwest::Client,
}

async fn join(ts: &TestServer) -> Gw {
    let t: GatewayToken = ts
        .post_admin(
            admin::GATEWAY_TOKENS,
            &NewGatewayToken { expires_secs: 600 },
        )
        .await
        .unwrap();
    let (client_csr_pem, key) = make_csr(KeySpec::EcdsaP256, "gw").unwrap();
    let (server_csr_pem, _) = make_csr(KeySpec::EcdsaP256, HOST).unwrap();
    let resp = ts
        .anonymous_agent()
        .post(ts.agent_url(paths::GATEWAY_JOIN))
        .json(&GatewayJoinRequest {
            token: t.token,
            client_csr_pem,
            server_csr_pem,
            external_names: vec![HOST.into()],
            version: "0.1.0-test".into(),
        })
        .send()
        .await
        .unwrap();
    let joined: GatewayJoinResponse = decode(resp).await.unwrap();
    let mut chain =
        vec![CertificateDer::from_pem_slice(joined.client_cert_pem.as_bytes()).unwrap()];
    for c in &joined.chain_pem {
        chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
    }
    Gw {
        id: joined.gateway_id,
        http: client(
            &ts.root_pem,
            Some((chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))),
            Some(ts.running().agent_addr),
        ),
    }
}

fn report(port: u16) -> GatewayReport {
    GatewayReport {
        external_name: HOST.into(),
        listen_port: port,
        thumbprints: vec!["AB".repeat(32)],
        version: "0.1.0-test".into(),
        health: "ok".into(),
        previous_ports: vec![],
        trust_anchors_pem: vec![],
        probes: vec![],
    }
}

fn probe(port: u16, failure: Option<FailureKind>, detail: &str) -> ReachProbe {
    ReachProbe {
        target: ProbeTarget {
            host: HOST.into(),
            port,
        },
        failure,
        detail: detail.into(),
        at: "2027-01-15T08:00:00Z".into(),
    }
}

async fn send(ts: &TestServer, gw: &Gw, r: &GatewayReport) -> GatewayReportResponse {
    let resp = gw
        .http
        .post(ts.agent_url(paths::GATEWAY_REPORT))
        .json(r)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    decode(resp).await.unwrap()
}

async fn enrolled(ts: &TestServer, host: &str) -> Agent {
    let pkg = ts.package(600, 1, &[]).await;
    ts.enroll(&pkg.token, host).await.unwrap()
}

async fn gateway(ts: &TestServer, id: &str) -> GatewaySummary {
    let list: Vec<GatewaySummary> = ts.get_admin(admin::GATEWAYS).await.unwrap();
    list.into_iter().find(|g| g.id == id).unwrap()
}

fn ids(g: &GatewaySummary) -> Vec<&str> {
    g.problems.iter().map(|p| p.id.as_str()).collect()
}

/// Checks in holding the current configuration and profile, as an agent does once it has
/// applied what the server sent.
async fn catch_up(a: &Agent) -> u64 {
    let config = a
        .checkin(&checkin_request(0))
        .await
        .unwrap()
        .config
        .unwrap();
    let mut req = checkin_request(config.version);
    req.profile_version = config.profile.version;
    let r = a.checkin(&req).await.unwrap();
    assert!(r.config.is_none());
    config.profile.version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_change_waits_for_every_agent_and_names_who_has_not() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let b = enrolled(&ts, "pc-b").await;
    let gw = join(&ts).await;

    // The first report creates the entry: both devices hold an older profile.
    let r = send(&ts, &gw, &report(8443)).await;
    assert_eq!(
        r.probe,
        vec![ProbeTarget {
            host: HOST.into(),
            port: 8443
        }]
    );
    assert!(!r.all_agents_current);
    assert_eq!(r.pending_total, 2);
    assert_eq!(
        r.pending_devices,
        vec![format!("pc-a ({})", a.id), format!("pc-b ({})", b.id)]
    );

    // A takes the new profile: it drops out of the list.
    let v1 = catch_up(&a).await;
    let r = send(&ts, &gw, &report(8443)).await;
    assert_eq!(
        (r.pending_total, r.pending_devices.clone()),
        (1, vec![format!("pc-b ({})", b.id)])
    );
    assert!(!r.all_agents_current);
    // B too: every agent is current, the gateway may close previous ports.
    assert_eq!(catch_up(&b).await, v1);
    let r = send(&ts, &gw, &report(8443)).await;
    assert!(r.all_agents_current);
    assert_eq!((r.pending_total, r.pending_devices.len()), (0, 0));

    // The port changes; the gateway still answers on the old one. The new entry is pending
    // on both devices again, and the console shows who; with the new address tested fine,
    // pending alone is not red.
    let mut moved = report(9443);
    moved.previous_ports = vec![8443];
    moved.probes = vec![probe(9443, None, "reached; own thumbprint")];
    let r = send(&ts, &gw, &moved).await;
    assert_eq!(r.probe[0].port, 9443, "probe the port agents are now told");
    assert!(!r.all_agents_current);
    assert_eq!(r.pending_total, 2);
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(g.pending_total, 2);
    assert_eq!(
        g.pending_devices,
        vec![format!("pc-a ({})", a.id), format!("pc-b ({})", b.id)]
    );
    assert_eq!(g.status, GatewayStatus::Green, "{:?}", g.problems);
    assert!(g.problems.is_empty());

    // A check-in still holding the old profile changes nothing; the new one ends it.
    let mut stale = checkin_request(0);
    stale.profile_version = v1;
    a.checkin(&stale).await.unwrap();
    assert_eq!(send(&ts, &gw, &moved).await.pending_total, 2);
    let v2 = catch_up(&a).await;
    assert!(v2 > v1);
    catch_up(&b).await;
    let r = send(&ts, &gw, &moved).await;
    assert!(r.all_agents_current);
    assert_eq!(gateway(&ts, &gw.id).await.pending_total, 0);

    // A revoked device is not waited for.
    let c = enrolled(&ts, "pc-c").await;
    let mut again = report(10443);
    again.probes = vec![probe(10443, None, "reached")];
    assert_eq!(send(&ts, &gw, &again).await.pending_total, 3);
    let resp = ts
        .admin
        .post(ts.console(&admin::DEVICE_REVOKE.replace("{id}", &c.id)))
        .bearer_auth(&ts.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    catch_up(&a).await;
    catch_up(&b).await;
    assert!(send(&ts, &gw, &again).await.all_agents_current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_red_with_each_reason_and_green_when_all_is_well() {
    let ts = TestServer::start().await;
    let gw = join(&ts).await;
    let silent = join(&ts).await;

    // Joined, never reported.
    let g = gateway(&ts, &silent.id).await;
    assert_eq!(g.status, GatewayStatus::Red);
    assert_eq!(ids(&g), vec!["GATEWAY-NEVER-REPORTED"]);

    // Reported, but the address agents are given has not been tested yet.
    send(&ts, &gw, &report(8443)).await;
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(g.status, GatewayStatus::Red);
    assert_eq!(ids(&g), vec!["GATEWAY-PROBE-PENDING"]);
    assert!(g.problems[0].message.contains("gw.example.net:8443"));

    // The firewall drops the port: named, with the port and the evidence.
    let mut r = report(8443);
    r.probes = vec![probe(
        8443,
        Some(FailureKind::Timeout),
        "no answer within 5 s from 203.0.113.7",
    )];
    send(&ts, &gw, &r).await;
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(g.status, GatewayStatus::Red);
    assert_eq!(ids(&g), vec!["GATEWAY-PORT-FILTERED"]);
    assert!(g.problems[0].message.contains("gw.example.net:8443"));
    assert!(g.problems[0].message.contains("no answer within 5 s"));

    // Each kind has its own ID.
    for (kind, id) in [
        (FailureKind::Refused, "GATEWAY-PORT-REFUSED"),
        (FailureKind::Dns, "GATEWAY-NAME-UNRESOLVED"),
        (FailureKind::Tls, "GATEWAY-PROBE-TLS"),
        (FailureKind::WrongPeer, "GATEWAY-PROBE-WRONG-PEER"),
    ] {
        r.probes = vec![probe(8443, Some(kind), "evidence")];
        send(&ts, &gw, &r).await;
        assert_eq!(ids(&gateway(&ts, &gw.id).await), vec![id]);
    }

    // A probe of an address agents are no longer given does not count; the current one
    // still has to be tested.
    r.probes = vec![probe(7443, Some(FailureKind::Timeout), "old port")];
    send(&ts, &gw, &r).await;
    assert_eq!(
        ids(&gateway(&ts, &gw.id).await),
        vec!["GATEWAY-PROBE-PENDING"]
    );
    // ...unless the gateway still answers on it during a port change.
    r.previous_ports = vec![7443];
    r.probes = vec![
        probe(8443, None, "reached"),
        probe(7443, Some(FailureKind::Refused), "refused"),
    ];
    send(&ts, &gw, &r).await;
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(ids(&g), vec!["GATEWAY-PORT-REFUSED"]);
    assert!(g.problems[0].message.contains("gw.example.net:7443"));

    // Unhealthy: the health text is the evidence.
    r.previous_ports = vec![];
    r.probes = vec![probe(8443, None, "reached")];
    r.health = "the CRL could not be fetched: timeout".into();
    send(&ts, &gw, &r).await;
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(ids(&g), vec!["GATEWAY-UNHEALTHY"]);
    assert!(
        g.problems[0]
            .message
            .contains("the CRL could not be fetched")
    );

    // All well: green, no problems.
    r.health = "ok".into();
    send(&ts, &gw, &r).await;
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(g.status, GatewayStatus::Green, "{:?}", g.problems);
    assert!(g.problems.is_empty());

    // Revoked: that is the reason, whatever it reported.
    let resp = ts
        .admin
        .post(ts.console(&admin::GATEWAY_REVOKE.replace("{id}", &gw.id)))
        .bearer_auth(&ts.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(g.status, GatewayStatus::Red);
    assert_eq!(ids(&g), vec!["GATEWAY-REVOKED"]);
    assert_eq!(
        g.pending_total, 0,
        "nothing is pending for a gateway out of the profile"
    );
}

fn attempt(gateway: &str, port: u16, kind: FailureKind) -> FailedAttempt {
    FailedAttempt {
        gateway: Some(gateway.into()),
        address: format!("{HOST}:{port}"),
        kind,
        id: "AGENT-CONNECTION-FAILED".into(),
        detail: "connect timed out after 10 s".into(),
        last_at: "2027-01-15T08:00:00Z".into(),
        count: 4,
    }
}

async fn devices(ts: &TestServer) -> Vec<DeviceSummary> {
    ts.get_admin(admin::DEVICES).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_failed_attempts_show_on_the_device_and_turn_the_gateway_red() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let b = enrolled(&ts, "pc-b").await;
    let gw = join(&ts).await;
    let mut r = report(8443);
    r.probes = vec![probe(8443, None, "reached")];
    send(&ts, &gw, &r).await;
    assert_eq!(gateway(&ts, &gw.id).await.status, GatewayStatus::Green);

    // Both agents failed to reach the gateway's port, and say so on the LAN.
    let mut req = checkin_request(0);
    req.failed_attempts = vec![attempt(&gw.id, 8443, FailureKind::Timeout)];
    a.checkin(&req).await.unwrap();
    req.failed_attempts = vec![attempt(&gw.id, 8443, FailureKind::Refused)];
    b.checkin(&req).await.unwrap();

    let list = devices(&ts).await;
    let da = list.iter().find(|d| d.id == a.id).unwrap();
    assert_eq!(
        da.failed_attempts,
        vec![attempt(&gw.id, 8443, FailureKind::Timeout)]
    );
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(g.status, GatewayStatus::Red);
    assert_eq!(ids(&g), vec!["GATEWAY-AGENTS-FAILING"]);
    let m = &g.problems[0].message;
    assert!(m.contains("2 device(s)"), "{m}");
    assert!(m.contains("gw.example.net:8443"), "{m}");
    assert!(
        m.contains("connection refused") && m.contains("filtered"),
        "{m}"
    );
    assert!(m.contains("pc-a") && m.contains("pc-b"), "{m}");

    // A check-in with nothing new keeps the last report; a new report replaces it.
    a.checkin(&checkin_request(0)).await.unwrap();
    let da = devices(&ts)
        .await
        .into_iter()
        .find(|d| d.id == a.id)
        .unwrap();
    assert_eq!(da.failed_attempts.len(), 1);
    let mut lan_only = checkin_request(0);
    lan_only.failed_attempts = vec![FailedAttempt {
        gateway: None,
        address: "smp.example.net:4726".into(),
        kind: FailureKind::Dns,
        id: "AGENT-CONNECTION-FAILED".into(),
        detail: "no such host".into(),
        last_at: "2027-01-15T08:01:00Z".into(),
        count: 1,
    }];
    a.checkin(&lan_only).await.unwrap();
    let da = devices(&ts)
        .await
        .into_iter()
        .find(|d| d.id == a.id)
        .unwrap();
    assert_eq!(da.failed_attempts, lan_only.failed_attempts);
    // A LAN failure is not the gateway's: only B still counts against it.
    let g = gateway(&ts, &gw.id).await;
    assert_eq!(ids(&g), vec!["GATEWAY-AGENTS-FAILING"]);
    assert!(g.problems[0].message.contains("1 device(s)"));
    assert!(!g.problems[0].message.contains("pc-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_failed_attempts_are_refused_and_nothing_is_stored() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let refused = |req: CheckinRequest| {
        let a = &a;
        async move {
            let (status, e): (u16, ApiError) = a.checkin(&req).await.err().unwrap();
            assert_eq!(
                (status, e.id.as_str()),
                (400, "CHECKIN-FAILED-ATTEMPTS-INVALID")
            );
            e.message
        }
    };
    let mut req = checkin_request(0);
    req.failed_attempts = vec![attempt("gw", 8443, FailureKind::Timeout); MAX_FAILED_ATTEMPTS + 1];
    let m = refused(req.clone()).await;
    assert!(m.contains(&MAX_FAILED_ATTEMPTS.to_string()), "{m}");
    let mut long = attempt("gw", 8443, FailureKind::Tls);
    long.detail = "x".repeat(64 * 1024);
    req.failed_attempts = vec![long];
    refused(req.clone()).await;
    let mut empty = attempt("gw", 8443, FailureKind::Tls);
    empty.address = String::new();
    req.failed_attempts = vec![empty];
    refused(req.clone()).await;

    // Nothing of the refused check-ins was kept, not even the sighting.
    let d = devices(&ts)
        .await
        .into_iter()
        .find(|d| d.id == a.id)
        .unwrap();
    assert!(d.failed_attempts.is_empty());
    assert!(d.last_checkin.is_none());
    // The limit itself is accepted.
    req.failed_attempts = vec![attempt("gw", 8443, FailureKind::Timeout); MAX_FAILED_ATTEMPTS];
    a.checkin(&req).await.unwrap();
    let d = devices(&ts)
        .await
        .into_iter()
        .find(|d| d.id == a.id)
        .unwrap();
    assert_eq!(d.failed_attempts.len(), MAX_FAILED_ATTEMPTS);
}

async fn data_version(c: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(c)
        .await
        .unwrap()
}

async fn ping(ts: &TestServer, http: &reqwest::Client, forwarded: Option<&str>) -> Pong {
    let mut req = http.get(ts.agent_url(paths::PING));
    if let Some(cert) = forwarded {
        req = req.header(AGENT_CERT_HEADER, cert);
    }
    decode(req.send().await.unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_directly_and_through_a_gateway_and_writes_nothing() {
    let ts = TestServer::start().await;
    let a = enrolled(&ts, "pc-a").await;
    let b = enrolled(&ts, "pc-b").await;
    let gw = join(&ts).await;
    let cert = base64::engine::general_purpose::STANDARD.encode(&a.chain[0]);
    // SQLite's own count of commits by other connections, read on a connection of the
    // test's own: any write a ping made would move it.
    let db = ts.data_dir().join("steward.db");
    let mut observer = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&db),
    )
    .await
    .unwrap();
    let before = data_version(&mut observer).await;

    let direct = ping(&ts, &a.http, None).await;
    assert_eq!(
        (direct.device_id.as_str(), direct.via_gateway),
        (a.id.as_str(), None)
    );
    time::OffsetDateTime::parse(
        &direct.server_time,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let tunnelled = ping(&ts, &gw.http, Some(&cert)).await;
    assert_eq!(tunnelled.device_id, a.id);
    assert_eq!(tunnelled.via_gateway.as_deref(), Some(gw.id.as_str()));

    // Authenticated like a check-in: no certificate, or an agent vouching for another, fails.
    let resp = ts
        .anonymous_agent()
        .get(ts.agent_url(paths::PING))
        .send()
        .await
        .unwrap();
    let (status, e) = decode::<Pong>(resp).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (401, "AGENT-CERT-REQUIRED"));
    let resp = b
        .http
        .get(ts.agent_url(paths::PING))
        .header(AGENT_CERT_HEADER, &cert)
        .send()
        .await
        .unwrap();
    let (status, e) = decode::<Pong>(resp).await.err().unwrap();
    assert_eq!((status, e.id.as_str()), (403, "GATEWAY-NOT-TRUSTED"));

    // Nothing was written or even noted: no commit, no sighting, no connection path.
    let flushed = ts.running().service().store().flush_seen().await.unwrap();
    assert_eq!(flushed, 0, "a ping noted a sighting");
    assert_eq!(
        data_version(&mut observer).await,
        before,
        "a ping committed"
    );
    let d = devices(&ts)
        .await
        .into_iter()
        .find(|d| d.id == a.id)
        .unwrap();
    assert!(d.last_checkin.is_none() && d.connection_path.is_none());
}

//! Server, gateway and agent in one process, on loopback: 127.0.0.1 is the server's LAN,
//! 127.0.0.2 the gateway's external address, and 127.0.0.3 a LAN address nothing answers on
//! (the agent has left the LAN). Shows: the gateway's reported port reaches the agent through
//! its profile; the agent falls back from the dead LAN address to the gateway and the device's
//! path is the gateway; the agent refuses a gateway whose thumbprint the profile does not
//! list; the gateway refuses agents without a platform certificate; and the identity the
//! server sees is the one the gateway verified, whatever header the agent sends.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Once, capture_logs, fetch, https, leave_lan, logged, read_config, run_once, run_once_with,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use steward_gateway::RunningGateway;
use steward_pki::{Authority, KeySpec, LeafRequest, OffsetDateTime, Usage};
use steward_proto::admin::{DeviceSummary, GatewaySummary, paths as admin};
use steward_proto::{AGENT_CERT_HEADER, ApiError, CheckinResponse, ConnectionPath, paths};

/// `steward agent run --once --gateways-only`.
const GATEWAYS_ONLY: Once = Once {
    gateway_set_aside: None,
    gateways_only: true,
};

/// The common rig with its gateway started.
struct Rig {
    rig: common::Rig,
    gateway: RunningGateway,
}

impl Deref for Rig {
    type Target = common::Rig;

    fn deref(&self) -> &common::Rig {
        &self.rig
    }
}

impl Rig {
    async fn start() -> Self {
        let rig = common::Rig::start("127.0.0.2:0".parse().unwrap()).await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in ["identity.key", "server.key"] {
                let mode = std::fs::metadata(rig.gateway_dir.join(key))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
        // The CRL comes over the gateway's own link to the agent site (a DMZ may reach nothing
        // else): the distribution point given at join is made unreachable, and revocations
        // must still reach the edge.
        let config_file = rig.gateway_dir.join("gateway.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_file).unwrap()).unwrap();
        assert!(
            config["crl_url"]
                .as_str()
                .unwrap()
                .ends_with("/crl/issuing.crl")
        );
        config["crl_url"] = "http://127.0.0.1:1/crl/issuing.crl".into();
        std::fs::write(&config_file, serde_json::to_vec(&config).unwrap()).unwrap();
        // Reports are made on start; the periodic one is pushed out of the test's way.
        let gateway = rig.gateway(Duration::from_secs(3600)).await;
        assert_eq!(gateway.config.gateway_id, rig.gateway_id);
        Self { rig, gateway }
    }

    async fn stop(self) {
        self.gateway.shutdown().await;
        self.rig.server.shutdown().await.unwrap();
    }
}

fn agent_identity(data_dir: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let dir = steward_agent::store::DataDir::new(data_dir);
    let id = dir.load_identity().unwrap().unwrap();
    let mut chain = vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()];
    for c in &id.chain_pem {
        chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
    }
    let key = PrivatePkcs8KeyDer::from_pem_file(dir.key_path()).unwrap();
    (chain, PrivateKeyDer::Pkcs8(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_off_the_lan_checks_in_through_the_gateway() {
    capture_logs();
    let rig = Rig::start().await;
    let gw_port = rig.gateway.addr.port();
    assert_eq!(rig.gateway.addr.ip().to_string(), "127.0.0.2");

    // The server learned the gateway from its report.
    let gws: Vec<GatewaySummary> = rig.admin_get(admin::GATEWAYS).await;
    let report = gws[0].report.clone().unwrap();
    assert_eq!(
        (report.external_name.as_str(), report.listen_port),
        ("127.0.0.2", gw_port)
    );
    assert_eq!(report.health, "ok");

    // On the LAN, the agent receives a profile listing the gateway with the port it bound.
    let pc = rig.agent("pc").await;
    run_once(&pc).await.unwrap();
    let cfg = read_config(&pc);
    assert_eq!(cfg.profile.gateways.len(), 1);
    let entry = cfg.profile.gateways[0].clone();
    assert_eq!(
        (entry.name.as_str(), entry.host.as_str(), entry.port),
        (rig.gateway.config.gateway_id.as_str(), "127.0.0.2", gw_port)
    );
    assert_eq!(entry.thumbprints, report.thumbprints);

    // Off the LAN: the LAN address refuses, the gateway carries the check-in.
    leave_lan(&pc, |_| {});
    run_once(&pc).await.unwrap();
    let state = steward_agent::store::DataDir::new(&pc)
        .load_state()
        .unwrap();
    assert_eq!(
        state.connection,
        Some(ConnectionPath::Gateway {
            gateway: entry.name.clone(),
            via: format!("127.0.0.2:{gw_port}"),
        })
    );
    assert!(state.pending_error.is_none());
    let devices: Vec<DeviceSummary> = rig.admin_get(admin::DEVICES).await;
    assert_eq!(devices.len(), 1);
    assert_eq!(
        devices[0].connection_path.as_deref(),
        Some(format!("gateway {} via 127.0.0.2:{gw_port}", entry.name).as_str())
    );
    let log = logged();
    assert!(
        log.contains(&format!(
            "through gateway 127.0.0.2:{gw_port} ({})",
            entry.name
        )),
        "{log}"
    );
    // The failed LAN attempt is what the agent reported as its last error.
    let last = devices[0].last_error.clone().unwrap();
    assert_eq!(last.id, "AGENT-CONNECTION-REFUSED");

    // A wrong thumbprint in the profile: the agent refuses the gateway and names both values.
    leave_lan(&pc, |c| {
        c.profile.gateways[0].thumbprints = vec!["00".repeat(32)]
    });
    let err = run_once(&pc).await.err().unwrap();
    assert_eq!(err.id(), "AGENT-GATEWAY-THUMBPRINT");
    let msg = err.to_string();
    assert!(msg.contains(&entry.thumbprints[0]), "{msg}");
    assert!(msg.contains(&"00".repeat(32)), "{msg}");

    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_only_tries_the_internet_path_from_the_lan() {
    let rig = Rig::start().await;
    let gw = format!("127.0.0.2:{}", rig.gateway.addr.port());
    let pc = rig.agent("pc").await;
    let path = |pc: &Path| {
        steward_agent::store::DataDir::new(pc)
            .load_state()
            .unwrap()
            .connection
    };
    // The first contact (no profile with gateways yet) is on the LAN.
    run_once(&pc).await.unwrap();
    assert!(matches!(path(&pc), Some(ConnectionPath::Lan { .. })));
    // The LAN server answers, yet the gateway carries the check-in.
    run_once_with(&pc, GATEWAYS_ONLY).await.unwrap();
    assert_eq!(
        path(&pc),
        Some(ConnectionPath::Gateway {
            gateway: rig.gateway.config.gateway_id.clone(),
            via: gw.clone(),
        })
    );
    // Without gateways in the profile there is no way, and the fault says why.
    leave_lan(&pc, |c| c.profile.gateways.clear());
    let err = run_once_with(&pc, GATEWAYS_ONLY).await.err().unwrap();
    assert!(err.to_string().contains("--gateways-only"), "{err}");
    rig.stop().await;
}

/// A check-in held as the long-poll (`wait=SECS` on the check-in) streams through the gateway:
/// its answer reaches the agent at once, the wake-up later on the same response. A gateway
/// that gathered the whole answer first would hand over both only at the end of the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_check_in_streams_through_the_gateway() {
    let rig = Rig::start().await;
    let pc = rig.agent("pc").await;
    // On the LAN first: configuration and inventory in place, so the next check-in through
    // the gateway leaves the agent nothing to do, and may be held.
    run_once(&pc).await.unwrap();
    let config = read_config(&pc);
    let state = steward_agent::store::DataDir::new(&pc)
        .load_state()
        .unwrap();
    let device = state.device_id.clone().unwrap();
    let request = steward_proto::CheckinRequest {
        protocol: steward_proto::PROTOCOL_VERSION,
        agent_version: "test".into(),
        config_version: config.version,
        inventory_hash: state.inventory_hash.clone().unwrap(),
        inventory: None,
        results: vec![],
        last_error: None,
        connection: ConnectionPath::Gateway {
            gateway: rig.gateway_id.clone(),
            via: format!("127.0.0.2:{}", rig.gateway.addr.port()),
        },
        profile_version: config.profile.version,
        failed_attempts: vec![],
    };
    let client = https(&rig.root_pem, Some(agent_identity(&pc)));
    let port = rig.gateway.addr.port();
    let held = |wait: u64| {
        client
            .post(format!(
                "https://127.0.0.2:{port}{}?wait={wait}&{}",
                paths::CHECKIN,
                steward_proto::WAIT_CARRY_TASKS
            ))
            .json(&request)
            .send()
    };
    let mut resp = held(30).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        steward_proto::CHECKIN_HELD_CONTENT_TYPE
    );
    let mut buf = Vec::new();
    let mut line = async |resp: &mut reqwest::Response| {
        loop {
            if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                return Some(buf.drain(..=end).collect::<Vec<u8>>());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("the held answer went quiet")
                .unwrap()?;
            buf.extend_from_slice(&chunk);
        }
    };
    let answer: CheckinResponse = serde_json::from_slice(&line(&mut resp).await.unwrap()).unwrap();
    assert_eq!(answer.device_id, device);
    // Still held: nothing more comes while there is no work.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), resp.chunk())
            .await
            .is_err(),
        "the hold ended without work"
    );
    let task: steward_proto::admin::TaskCreated = fetch(
        rig.admin
            .post(format!("{}{}", rig.server.console_url(), admin::TASKS))
            .bearer_auth(&rig.token)
            .json(&steward_proto::admin::NewTask {
                command: "true".into(),
                args: vec![],
                timeout_secs: 30,
                target: format!("device:{device}"),
            }),
    )
    .await;
    let wake: steward_proto::WakeUp =
        serde_json::from_slice(&line(&mut resp).await.unwrap()).unwrap();
    assert_eq!(wake.reason, "tasks");
    assert_eq!(
        wake.tasks.iter().map(|t| t.task_id).collect::<Vec<_>>(),
        vec![task.id]
    );
    assert!(
        line(&mut resp).await.is_none(),
        "the body ends after the wake-up"
    );

    // An agent that leaves after the first line (a laptop shut) does not cancel the held
    // stream upstream (see the gateway's `forward`): the hold goes on at the server until its
    // end, and the rest of its answer is read and dropped.
    let open_polls = || rig.server.service().admission().connected.open_polls();
    let mut resp = held(8).await.unwrap();
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        steward_proto::CHECKIN_HELD_CONTENT_TYPE
    );
    let answer: CheckinResponse = serde_json::from_slice(&line(&mut resp).await.unwrap()).unwrap();
    assert_eq!(answer.device_id, device);
    // The hold starts as the first line leaves.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open_polls() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the check-in is not held at the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached = std::time::Instant::now();
    drop(resp);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        open_polls(),
        1,
        "the agent's leaving cancelled its held check-in at the server"
    );
    // Held 6 s (the agent listens 8 s, the server answers 2 s before), then gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_polls() != 0 {
        assert!(std::time::Instant::now() < deadline, "the hold never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reached.elapsed() >= Duration::from_secs(4),
        "the hold ended {:?} after the first line, before its time",
        reached.elapsed()
    );

    // The server goes away during the hold (a restart): the agent's answer ends as an empty
    // hold would, not with its connection to the gateway cut, and the next request meets the
    // server's absence as a 502. Cutting the connection made every agent of a restarted
    // server handshake with its gateway again at once (BENCHMARKS.md, round 11).
    let mut resp = held(30).await.unwrap();
    let answer: CheckinResponse = serde_json::from_slice(&line(&mut resp).await.unwrap()).unwrap();
    assert_eq!(answer.device_id, device);
    let Rig { rig, gateway } = rig;
    rig.server.shutdown().await.unwrap();
    assert!(
        line(&mut resp).await.is_none(),
        "a held answer ends empty when the server goes away"
    );
    let again = held(30).await.unwrap();
    assert_eq!(again.status().as_u16(), 502);
    let err: steward_proto::ApiError = again.json().await.unwrap();
    assert_eq!(err.id, "GATEWAY-UPSTREAM-UNREACHABLE");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_vouches_only_for_agents_it_verified() {
    let rig = Rig::start().await;
    let url = format!(
        "https://127.0.0.2:{}{}",
        rig.gateway.addr.port(),
        paths::CHECKIN
    );
    let pc = rig.agent("pc").await;
    let other = rig.agent("other").await;
    let body = serde_json::json!({
        "protocol": 1, "agent_version": "test", "config_version": 0, "inventory_hash": "x",
        "inventory": null, "results": [], "last_error": null,
        "connection": { "kind": "gateway", "gateway": "g", "via": "127.0.0.2" }
    });

    // A real agent, stating someone else's identity in the header: the gateway replaces the
    // header with the certificate it verified, so the server sees this agent.
    let (chain, key) = agent_identity(&pc);
    let (other_chain, _) = agent_identity(&other);
    let forged = steward_pki::CertFacts::from_der(&other_chain[0]).unwrap();
    let resp = https(&rig.root_pem, Some((chain, key)))
        .post(&url)
        .header(AGENT_CERT_HEADER, base64_der(&other_chain[0]))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let r: CheckinResponse = resp.json().await.unwrap();
    let own = steward_agent::store::DataDir::new(&pc)
        .load_identity()
        .unwrap()
        .unwrap()
        .device_id;
    assert_eq!(r.device_id, own);
    assert_ne!(forged.common_names.first(), Some(&own));

    // A long-poll passes with its query: an agent without configuration is woken at once.
    let (chain, key) = agent_identity(&pc);
    let wake: steward_proto::WakeUp = fetch(https(&rig.root_pem, Some((chain, key))).get(format!(
        "https://127.0.0.2:{}{}?config_version=0",
        rig.gateway.addr.port(),
        paths::WAIT
    )))
    .await;
    assert_eq!(wake.reason, "config");

    // Enrollment is not tunnelled.
    let (chain, key) = agent_identity(&pc);
    let resp = https(&rig.root_pem, Some((chain, key)))
        .post(format!(
            "https://127.0.0.2:{}{}",
            rig.gateway.addr.port(),
            paths::ENROLL
        ))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let e: ApiError = resp.json().await.unwrap();
    assert_eq!(e.id, "GATEWAY-ROUTE-NOT-FORWARDED");

    // No client certificate, or one from a foreign CA: refused in the handshake.
    let err = https(&rig.root_pem, None)
        .post(&url)
        .json(&body)
        .send()
        .await;
    assert!(err.is_err(), "{err:?}");
    let now = OffsetDateTime::now_utc();
    let foreign = Authority::new_root(
        "Foreign Root",
        KeySpec::EcdsaP256,
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap();
    let leaf = foreign
        .issue(&LeafRequest {
            common_name: own.clone(),
            dns_names: vec![],
            ip_addrs: vec![],
            usage: Usage::Client,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(1),
            crl_urls: vec![],
            key: KeySpec::EcdsaP256,
        })
        .unwrap();
    let identity = (
        vec![leaf.cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8.clone())),
    );
    let err = https(&rig.root_pem, Some(identity))
        .post(&url)
        .json(&body)
        .send()
        .await;
    assert!(err.is_err(), "{err:?}");

    // Revoked: the server re-signs its CRL before answering the revocation; once the gateway
    // has fetched it (its periodic refresh, run here at once), the agent is refused at the edge.
    let (chain, key) = agent_identity(&pc);
    let before = https(&rig.root_pem, Some((chain, key)))
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status().as_u16(), 200);
    rig.revoke_device(&own).await;
    rig.gateway.refresh_crl().await.unwrap();
    let (chain, key) = agent_identity(&pc);
    let err = https(&rig.root_pem, Some((chain, key)))
        .post(&url)
        .json(&body)
        .send()
        .await;
    assert!(err.is_err(), "{err:?}");
    // Another agent still gets through.
    let (chain, key) = agent_identity(&other);
    let ok = https(&rig.root_pem, Some((chain, key)))
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    rig.stop().await;
}

fn base64_der(der: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// One mutual-TLS handshake with the gateway's edge and a ping through it: how the handshake
/// went, and the status line of the answer.
async fn ping_through(
    addr: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.2").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!(
            "GET {} HTTP/1.1\r\nhost: 127.0.0.2\r\nconnection: close\r\n\r\n",
            paths::PING
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    (kind, text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_crl_refreshes_until_a_revocation() {
    let rig = Rig::start().await;
    let pc = rig.agent("pc").await;
    let (chain, key) = agent_identity(&pc);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(rig.root_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap(),
    );
    let (kind, status) = ping_through(rig.gateway.addr, &cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert!(status.contains(" 200 "), "{status}");
    // A CRL refresh rebuilds the edge's TLS configuration; the agent still resumes.
    rig.gateway.refresh_crl().await.unwrap();
    let (kind, status) = ping_through(rig.gateway.addr, &cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Resumed);
    assert!(status.contains(" 200 "), "{status}");

    // A CRL that revokes it ends resumption: the next connection is a full handshake, and the
    // edge refuses the certificate (no HTTP answer at all).
    let id = steward_agent::store::DataDir::new(&pc)
        .load_identity()
        .unwrap()
        .unwrap()
        .device_id;
    rig.revoke_device(&id).await;
    rig.gateway.refresh_crl().await.unwrap();
    let (kind, status) = ping_through(rig.gateway.addr, &cfg).await;
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert_eq!(status, "", "refused at the edge, not by the server");
    rig.stop().await;
}

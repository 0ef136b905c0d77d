//! Renewal of a gateway's two platform-issued certificates against the real server and real
//! agents in one process, on loopback (127.0.0.1 the server's LAN, 127.0.0.2 the gateway's
//! external address): both certificates renewed while agents keep checking in through the
//! gateway (none fails), the profile listing both thumbprints during the transition, the edge
//! switching only after every agent acknowledged, the old serials in the CRL, a restart in the
//! middle; an identity commit cut short by a crash finished at start; and the server route's
//! refusals.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Once, Rig, capture_logs, logged, read_config};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use steward_gateway::{GatewayDir, Recovered, RenewWhat};
use steward_pki::{CertFacts, KeySpec, make_csr};
use steward_proto::{ApiError, GatewayRenewRequest, paths};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One check-in through the gateway only (the LAN is never tried).
async fn through_gateway(data_dir: &Path) -> Result<(), steward_agent::RunError> {
    common::run_once_with(
        data_dir,
        Once {
            gateway_set_aside: Some(Duration::from_secs(0)),
            gateways_only: true,
        },
    )
    .await
}

async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn served_thumbprint(addr: SocketAddr) -> String {
    let peer = steward_probe::fetch_chain(
        &addr.ip().to_string(),
        addr.port(),
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    steward_pki::Thumbprint::of(&peer.certs[0]).sha256_hex()
}

fn leaf_facts(path: &Path) -> CertFacts {
    let pem = std::fs::read(path).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    CertFacts::from_der(&der).unwrap()
}

/// Serials (raw) the issuing CA's CRL revokes, fetched over plain HTTP as agents would.
async fn crl_serials(gateway_dir: &Path) -> Vec<Vec<u8>> {
    let url = GatewayDir::new(gateway_dir).read_config().unwrap().crl_url;
    let der = steward_probe::fetch_crl(&url, Duration::from_secs(5), 32 << 20)
        .await
        .unwrap();
    steward_pki::parse_crl(&der)
        .unwrap()
        .revoked
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// Agents checking in through the gateway over and over, counting every outcome.
struct Swarm {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Swarm {
    fn start(agents: Vec<PathBuf>, ok: Arc<AtomicUsize>, failed: Arc<AtomicUsize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            while !s.load(Ordering::SeqCst) {
                for a in &agents {
                    match through_gateway(a).await {
                        Ok(()) => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            f.fetch_add(1, Ordering::SeqCst);
                            errors.push(format!("{}: {e}", a.display()));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            errors
        });
        Self { stop, task }
    }

    /// Stops after the round under way; the errors seen.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_certificates_renew_while_agents_keep_checking_in() {
    capture_logs();
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(listen).await;
    let gateway = rig.gateway(Duration::from_secs(1)).await;
    let gw = GatewayDir::new(&rig.gateway_dir);
    let old_server = gateway.thumbprints()[0].clone();
    let old_identity = gateway.identity_thumbprint();
    let old_server_serial = leaf_facts(&gw.server_cert()).serial_raw;
    let old_identity_serial = leaf_facts(&gw.identity_cert()).serial_raw;
    assert_eq!(
        old_server,
        leaf_facts(&gw.server_cert()).thumbprint.sha256_hex()
    );

    // The console shows both certificates, due in about a year: no warning, no renewal.
    let s = rig.summary().await;
    assert_eq!(s.certificates.len(), 2, "{s:?}");
    assert!(s.certificates.iter().all(|c| c.warning.is_none()), "{s:?}");
    assert!(s.renewal.is_none());

    // Three agents learn the gateway on the LAN; two keep checking in through it throughout,
    // the third ("late") only when the test says so: it holds the rollout.
    let mut agents = Vec::new();
    for name in ["pc-a", "pc-b", "late"] {
        let a = rig.agent(name).await;
        common::run_once(&a).await.unwrap();
        common::run_once(&a).await.unwrap();
        through_gateway(&a).await.unwrap();
        agents.push(a);
    }
    let late = agents.pop().unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let swarm = Swarm::start(agents.clone(), ok.clone(), failed.clone());
    let mut errors = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Forced renewal of both, the gateway running (`steward gateway cert renew`).
    let done = gateway.renew(RenewWhat::BOTH).await.unwrap();
    let new_identity = done.identity.clone().unwrap();
    let new_server = done.server.clone().unwrap();
    assert!(done.skipped.is_empty(), "{done:?}");
    assert_ne!(new_identity, old_identity);
    assert_ne!(new_server, old_server);
    // The identity switches at once; the server promotes it at first use and revokes the old.
    assert_eq!(gateway.identity_thumbprint(), new_identity);
    assert_eq!(
        gw.read_slots().unwrap().next.as_deref(),
        Some(new_server.as_str())
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            crl_serials(&rig.gateway_dir)
                .await
                .contains(&old_identity_serial)
        })
        .await,
        "the old identity is not in the CRL: {}",
        logged()
    );

    // The server certificate is staged: reported as next, in the profile next to the current
    // one, and not served while an agent lacks it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            rig.summary()
                .await
                .report
                .is_some_and(|r| r.thumbprints == vec![old_server.clone(), new_server.clone()])
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            read_config(&agents[0]).profile.gateways[0].thumbprints
                == vec![old_server.clone(), new_server.clone()]
        })
        .await,
        "{:?}",
        read_config(&agents[0]).profile.gateways
    );
    // The agents acknowledge the profile one by one: agents[0] having it says nothing of
    // the others, so the count is awaited, not read once.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let renewal = rig.summary().await.renewal.unwrap_or_default();
            renewal.contains("next certificate staged") && renewal.contains("1 agent(s) pending")
        })
        .await,
        "{:?}",
        rig.summary().await
    );
    let s = rig.summary().await;
    assert!(
        s.certificates
            .iter()
            .any(|c| c.role == "server" && c.next_sha256.as_deref() == Some(new_server.as_str())),
        "{s:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(served_thumbprint(listen).await, old_server);

    // The gateway restarts in the middle (the agents wait meanwhile): it comes back with the
    // new identity and the staged certificate, still serving the old one.
    errors.extend(swarm.stop().await);
    gateway.shutdown().await;
    let gateway = rig.gateway(Duration::from_secs(1)).await;
    assert_eq!(gateway.identity_thumbprint(), new_identity);
    assert_eq!(
        gateway.thumbprints(),
        vec![old_server.clone(), new_server.clone()]
    );
    assert_eq!(served_thumbprint(listen).await, old_server);
    let swarm = Swarm::start(agents.clone(), ok.clone(), failed.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(served_thumbprint(listen).await, old_server);

    // The last agent checks in and acknowledges: the edge switches by itself.
    through_gateway(&late).await.unwrap();
    through_gateway(&late).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            served_thumbprint(listen).await == new_server
        })
        .await,
        "{}",
        logged()
    );
    assert_eq!(gateway.thumbprints(), vec![new_server.clone()]);
    // The server hears it is served, revokes the old server certificate, and the profile
    // drops the old thumbprint.
    assert!(
        eventually(Duration::from_secs(15), || async {
            crl_serials(&rig.gateway_dir)
                .await
                .contains(&old_server_serial)
        })
        .await,
        "the old server certificate is not in the CRL: {}",
        logged()
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            read_config(&agents[0]).profile.gateways[0].thumbprints == vec![new_server.clone()]
        })
        .await
    );
    through_gateway(&late).await.unwrap();
    // The new certificates are not revoked.
    let new_identity_serial = leaf_facts(&gw.identity_cert()).serial_raw;
    let crl = crl_serials(&rig.gateway_dir).await;
    assert!(!crl.contains(&new_identity_serial));
    let s = rig.summary().await;
    assert!(s.renewal.is_none(), "{s:?}");
    let server_status = s.certificates.iter().find(|c| c.role == "server").unwrap();
    assert_eq!(server_status.sha256, new_server);
    assert_eq!(server_status.next_sha256, None);

    errors.extend(swarm.stop().await);
    assert!(
        errors.is_empty() && failed.load(Ordering::SeqCst) == 0,
        "agents failed: {errors:?}"
    );
    assert!(ok.load(Ordering::SeqCst) > 4);
    let log = logged();
    for id in [
        "GATEWAY-IDENTITY-RENEWED",
        "GATEWAY-CERT-PROMOTED",
        "GATEWAY-SERVER-CERT-RENEWED",
    ] {
        assert!(log.contains(id), "{id} not logged");
    }

    // A second renewal, offline this time, from the renewed state.
    gateway.shutdown().await;
    let again = steward_gateway::renew_certs(
        &rig.gateway_dir,
        RenewWhat {
            identity: true,
            server: false,
        },
    )
    .await
    .unwrap();
    assert!(again.identity.is_some() && again.server.is_none());
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    assert_eq!(gateway.identity_thumbprint(), again.identity.unwrap());
    through_gateway(&late).await.unwrap();
    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_commit_cut_short_is_finished_at_start() {
    capture_logs();
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(listen).await;
    let gw = GatewayDir::new(&rig.gateway_dir);
    let old_pem = std::fs::read(gw.identity_cert()).unwrap();
    let done = steward_gateway::renew_certs(
        &rig.gateway_dir,
        RenewWhat {
            identity: true,
            server: false,
        },
    )
    .await
    .unwrap();
    let new_identity = done.identity.unwrap();

    // A crash between the two renames: the new key in place, the old certificate, the new
    // certificate still under its temporary name.
    std::fs::rename(gw.identity_cert(), gw.identity_cert_next()).unwrap();
    std::fs::write(gw.identity_cert(), &old_pem).unwrap();
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    assert_eq!(gateway.identity_thumbprint(), new_identity);
    assert!(!gw.identity_cert_next().exists());
    assert!(logged().contains("GATEWAY-RENEW-RECOVERED"));
    // It works end to end: an agent through it.
    let pc = rig.agent("pc").await;
    common::run_once(&pc).await.unwrap();
    common::run_once(&pc).await.unwrap();
    through_gateway(&pc).await.unwrap();
    gateway.shutdown().await;

    // A crash before the certificate was written: the lone key is dropped, nothing changes.
    std::fs::write(gw.identity_key_next(), b"half a renewal").unwrap();
    assert_eq!(
        steward_gateway::recover(&rig.gateway_dir).unwrap(),
        Recovered::IdentityDiscarded
    );
    assert!(!gw.identity_key_next().exists());
    assert_eq!(
        steward_gateway::recover(&rig.gateway_dir).unwrap(),
        Recovered::Nothing
    );
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    assert_eq!(gateway.identity_thumbprint(), new_identity);
    through_gateway(&pc).await.unwrap();
    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

/// The gateway's identity (chain and key) from its data directory.
fn gateway_identity(gw: &GatewayDir) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(gw.identity_cert())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    if chain.len() == 1 {
        chain.extend(
            CertificateDer::pem_file_iter(gw.chain())
                .unwrap()
                .map(Result::unwrap),
        );
    }
    (
        chain,
        PrivateKeyDer::from_pem_file(gw.identity_key()).unwrap(),
    )
}

/// POSTs a renewal; the error ID of a refusal (or the transport error's text).
async fn renew_id(client: &reqwest::Client, url: &str, req: &GatewayRenewRequest) -> String {
    match client.post(url).json(req).send().await {
        Ok(r) if r.status().is_success() => "OK".to_owned(),
        Ok(r) => r.json::<ApiError>().await.unwrap().id,
        Err(e) => format!("TRANSPORT: {e}"),
    }
}

fn csr(cn: &str) -> String {
    make_csr(KeySpec::EcdsaP256, cn).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_renewal_route_refuses_what_a_join_would() {
    capture_logs();
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(listen).await;
    let gw = GatewayDir::new(&rig.gateway_dir);
    let url = format!(
        "https://127.0.0.1:{}{}",
        rig.server.agent_addr.port(),
        paths::GATEWAY_RENEW
    );
    let ok_names = vec!["127.0.0.2".to_owned()];
    let good = || GatewayRenewRequest {
        identity_csr_pem: Some(csr("steward-gateway")),
        server_csr_pem: Some(csr("127.0.0.2")),
        external_names: ok_names.clone(),
    };

    // No client certificate.
    let anonymous = common::https(&rig.root_pem, None);
    assert_eq!(
        renew_id(&anonymous, &url, &good()).await,
        "GATEWAY-CERT-REQUIRED"
    );
    // Not a gateway: an enrolled agent's identity.
    let pc = rig.agent("pc").await;
    let agent_dir = steward_agent::store::DataDir::new(&pc);
    let identity = agent_dir.load_identity().unwrap().unwrap();
    let mut agent_chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    for c in &identity.chain_pem {
        agent_chain.extend(CertificateDer::pem_slice_iter(c.as_bytes()).map(Result::unwrap));
    }
    let agent_key = PrivateKeyDer::from_pem_file(agent_dir.key_path()).unwrap();
    let agent = common::https(&rig.root_pem, Some((agent_chain, agent_key)));
    assert_eq!(renew_id(&agent, &url, &good()).await, "GATEWAY-NOT-TRUSTED");

    let client = common::https(&rig.root_pem, Some(gateway_identity(&gw)));
    // Nothing asked for.
    assert_eq!(
        renew_id(&client, &url, &GatewayRenewRequest::default()).await,
        "GATEWAY-RENEW-INVALID"
    );
    // Other names than the gateway's.
    let mut bad = good();
    bad.external_names = vec!["evil.example.com".into()];
    assert_eq!(renew_id(&client, &url, &bad).await, "GATEWAY-RENEW-NAMES");
    let mut bad = good();
    bad.external_names = vec!["127.0.0.2".into(), "evil.example.com".into()];
    assert_eq!(renew_id(&client, &url, &bad).await, "GATEWAY-RENEW-NAMES");
    // A CSR naming another host.
    let mut bad = good();
    bad.server_csr_pem = Some(csr("evil.example.com"));
    assert_eq!(renew_id(&client, &url, &bad).await, "GATEWAY-RENEW-NAMES");
    // One key for both certificates.
    let mut bad = good();
    bad.server_csr_pem = bad.identity_csr_pem.clone();
    assert_eq!(
        renew_id(&client, &url, &bad).await,
        "GATEWAY-RENEW-KEY-REUSED"
    );
    // The key in use again (a CSR made by openssl from the gateway's own identity key).
    let pki = rig.root.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("openssl.cnf"), common::OPENSSL_CNF).unwrap();
    common::openssl(
        &pki,
        "req -new -subj /CN=steward-gateway -out reuse.csr -key",
        &[gw.identity_key().to_str().unwrap()],
    );
    let mut bad = good();
    bad.identity_csr_pem = Some(std::fs::read_to_string(pki.join("reuse.csr")).unwrap());
    assert_eq!(
        renew_id(&client, &url, &bad).await,
        "GATEWAY-RENEW-KEY-REUSED"
    );
    // Not a CSR.
    let mut bad = good();
    bad.identity_csr_pem = Some(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
    );
    assert_eq!(renew_id(&client, &url, &bad).await, "GATEWAY-CSR-INVALID");
    // Nothing of that was recorded: the summary shows no renewed certificate.
    let s = rig.summary().await;
    assert!(
        s.certificates.iter().all(|c| c.next_sha256.is_none()),
        "{s:?}"
    );

    // A good request passes.
    assert_eq!(renew_id(&client, &url, &good()).await, "OK");

    // Revoked: refused (at the handshake once the CRL has it, or by the route).
    let resp = rig
        .admin
        .post(format!(
            "{}{}",
            rig.server.console_url(),
            steward_proto::admin::paths::GATEWAY_REVOKE.replace("{id}", &rig.gateway_id)
        ))
        .bearer_auth(&rig.token)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let fresh = common::https(&rig.root_pem, Some(gateway_identity(&gw)));
    let id = renew_id(&fresh, &url, &good()).await;
    assert!(
        id == "GATEWAY-NOT-TRUSTED" || id.starts_with("TRANSPORT"),
        "a revoked gateway renewed: {id}"
    );
    let id = renew_id(&client, &url, &good()).await;
    assert!(
        id == "GATEWAY-NOT-TRUSTED" || id.starts_with("TRANSPORT"),
        "a revoked gateway renewed: {id}"
    );
    rig.server.shutdown().await.unwrap();
}

/// What the store records of a certificate file's leaf, with other dates.
fn recorded_as(path: &Path, not_before: i64, not_after: i64) -> steward_store::GatewayCert {
    let f = leaf_facts(path);
    steward_store::GatewayCert {
        serial: f.serial.clone(),
        sha256: f.thumbprint.sha256_hex(),
        spki_sha256: steward_pki::Thumbprint::of(&f.spki_der).sha256_hex(),
        not_before,
        not_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_asks_for_renewal_when_due_and_the_console_warns() {
    use steward_store::{GatewayCertRole, Store};
    capture_logs();
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(listen).await;
    let gw = GatewayDir::new(&rig.gateway_dir);
    // Reports only when the test says (no report between the recording and the warning).
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    let old_server = gateway.thumbprints()[0].clone();
    let old_identity = gateway.identity_thumbprint();
    let pc = rig.agent("pc").await;
    common::run_once(&pc).await.unwrap();
    common::run_once(&pc).await.unwrap();
    through_gateway(&pc).await.unwrap();

    // Both certificates as if issued 360 days ago, expiring in 5 days (recorded through the
    // store, as the server would have): due, and within the console's 30-day warning.
    let store = steward_store::SqliteStore::open(&rig.root.join("server").join("steward.db"))
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (born, dies) = (now - 360 * 86_400, now + 5 * 86_400);
    for (role, file) in [
        (GatewayCertRole::Identity, gw.identity_cert()),
        (GatewayCertRole::Server, gw.server_cert()),
    ] {
        let c = recorded_as(&file, born, dies);
        assert!(
            store
                .stage_gateway_cert(&rig.gateway_id, role, &c, now)
                .await
                .unwrap()
        );
        assert!(
            store
                .promote_gateway_cert(&rig.gateway_id, role, &c.sha256, now)
                .await
                .unwrap()
        );
    }
    store.close().await;
    let s = rig.summary().await;
    let warned: Vec<&str> = s
        .problems
        .iter()
        .filter(|p| p.id == "CERT-EXPIRING-SOON")
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(warned.len(), 2, "{s:?}");
    assert!(
        warned
            .iter()
            .all(|m| m.contains("4 day(s)") || m.contains("5 day(s)")),
        "{warned:?}"
    );

    // The next report's answer says both are due: the gateway renews by itself, switches its
    // identity and stages the server certificate.
    gateway.report().await.unwrap();
    assert!(
        gateway.identity_thumbprint() != old_identity && gateway.thumbprints().len() == 2,
        "{}",
        logged()
    );
    let new_server = gateway.thumbprints()[1].clone();
    // The agent learns both thumbprints and acknowledges; the edge switches.
    assert!(
        eventually(Duration::from_secs(20), || async {
            through_gateway(&pc).await.unwrap();
            gateway.report().await.unwrap();
            served_thumbprint(listen).await == new_server
        })
        .await,
        "{}",
        logged()
    );
    assert_ne!(new_server, old_server);
    // Renewed, so no longer warned about.
    assert!(
        eventually(Duration::from_secs(10), || async {
            gateway.report().await.unwrap();
            let s = rig.summary().await;
            s.problems.iter().all(|p| p.id != "CERT-EXPIRING-SOON")
                && s.certificates
                    .iter()
                    .all(|c| c.warning.is_none() && c.next_sha256.is_none())
        })
        .await,
        "{:?}",
        rig.summary().await
    );
    through_gateway(&pc).await.unwrap();
    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

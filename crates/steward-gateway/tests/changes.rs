//! Changes at the gateway, against the real server and a real agent in one process, on
//! loopback (127.0.0.1 is the server's LAN, 127.0.0.2 the gateway's external address, 127.0.0.3
//! a LAN address nothing answers on): a phased port change (both ports answer until every agent
//! has the new profile, then the old one closes and leaves the configuration), self-probes of
//! the gateway's own address (as the server asks, and of a closed port), and an imported
//! certificate announced first and served only once every agent has it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Once, Rig, capture_logs, logged, openssl, openssl_root, read_config};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use steward_gateway::GatewayDir;
use steward_proto::{ConnectionPath, FailureKind, ProbeTarget};

/// A port on 127.0.0.2 free right now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One check-in, the gateway never set aside after a failure.
async fn run_once(data_dir: &Path) -> Result<(), steward_agent::RunError> {
    common::run_once_with(
        data_dir,
        Once {
            gateway_set_aside: Some(Duration::from_secs(0)),
            gateways_only: false,
        },
    )
    .await
}

/// The agent leaves the LAN: its LAN address becomes one nothing answers on.
fn leave_lan(data_dir: &Path) {
    common::leave_lan(data_dir, |_| {});
}

fn via(data_dir: &Path) -> Option<String> {
    match steward_agent::store::DataDir::new(data_dir)
        .load_state()
        .unwrap()
        .connection
    {
        Some(ConnectionPath::Gateway { via, .. }) => Some(via),
        _ => None,
    }
}

async fn answers(addr: SocketAddr) -> bool {
    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Waits up to `limit` for `cond`.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_change_keeps_the_old_port_until_every_agent_has_the_new_one() {
    capture_logs();
    let old: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(old).await;
    let gateway = rig.gateway(Duration::from_secs(1)).await;
    assert_eq!(gateway.addr, old);

    // An agent learns the gateway on the LAN, then leaves: only the gateway reaches it now.
    let pc = rig.agent("pc").await;
    run_once(&pc).await.unwrap();
    assert_eq!(read_config(&pc).profile.gateways[0].port, old.port());
    leave_lan(&pc);
    run_once(&pc).await.unwrap();
    assert_eq!(via(&pc), Some(old.to_string()));

    // `steward gateway set-port`: the old address becomes a previous one; a restart serves both.
    let new: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let change = steward_gateway::set_port(&rig.gateway_dir, new).unwrap();
    assert_eq!(change.replaced, Some(old));
    assert_eq!(change.config.previous_listen, vec![old]);
    gateway.shutdown().await;
    let gateway = rig.gateway(Duration::from_secs(1)).await;
    assert_eq!((gateway.addr, gateway.previous.clone()), (new, vec![old]));
    assert!(answers(old).await && answers(new).await);
    let report = rig.summary().await.report.unwrap();
    assert_eq!(
        (report.listen_port, report.previous_ports.clone()),
        (new.port(), vec![old.port()])
    );

    // The agent is not current yet: the old port stays open however many reports go by, and
    // the gateway names who it waits for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(answers(old).await);
    assert_eq!(gateway.previous_listening(), vec![old]);
    let log = logged();
    assert!(log.contains("GATEWAY-ROLLOUT-PENDING"), "{log}");
    assert!(log.contains("pending_total=1"), "{log}");

    // The agent, off the LAN, checks in through the old port and receives the new one (it
    // acknowledges it at once, in a second check-in; here the new profile has put the LAN
    // address back, so that one goes over the LAN)...
    let through_old = format!("through gateway {old}");
    let before = logged().matches(&through_old).count();
    run_once(&pc).await.unwrap();
    assert_eq!(logged().matches(&through_old).count(), before + 1);
    assert_eq!(read_config(&pc).profile.gateways[0].port, new.port());
    // ...and uses it from then on, which acknowledges the profile.
    leave_lan(&pc);
    run_once(&pc).await.unwrap();
    assert_eq!(via(&pc), Some(new.to_string()));

    // The next report hears that every agent is current: the old port closes by itself and
    // leaves the configuration.
    assert!(
        eventually(Duration::from_secs(15), || async { !answers(old).await }).await,
        "the old port still answers: {}",
        logged()
    );
    assert!(gateway.previous_listening().is_empty());
    assert!(answers(new).await);
    let cfg = GatewayDir::new(&rig.gateway_dir).read_config().unwrap();
    assert_eq!((cfg.listen, cfg.previous_listen.clone()), (new, vec![]));
    let log = logged();
    assert!(log.contains("GATEWAY-PORT-RETIRED"), "{log}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            rig.summary()
                .await
                .report
                .is_some_and(|r| r.previous_ports.is_empty())
        })
        .await
    );
    // The agent still checks in through the new port.
    leave_lan(&pc);
    run_once(&pc).await.unwrap();
    assert_eq!(via(&pc), Some(new.to_string()));

    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_probes_its_own_address_from_its_side() {
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(listen).await;
    let gateway = rig.gateway(Duration::from_secs(3600)).await;

    // Asked by the server (its answer to the first report): the address agents are given is
    // tested, and the outcome reported at once, not at the next periodic report.
    assert!(
        eventually(Duration::from_secs(20), || async {
            rig.summary().await.report.is_some_and(|r| {
                r.probes.iter().any(|p| {
                    p.target.host == "127.0.0.2"
                        && p.target.port == listen.port()
                        && p.failure.is_none()
                })
            })
        })
        .await,
        "{:?}",
        rig.summary().await
    );
    let own = gateway.probes();
    assert_eq!(own.len(), 1, "{own:?}");
    assert!(own[0].detail.contains(&gateway.thumbprints()[0]), "{own:?}");

    // A name that resolves, on a port nothing listens on: refused, and the port is named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = gateway
        .self_probe(&ProbeTarget {
            host: "localhost".into(),
            port: closed,
        })
        .await;
    assert!(
        matches!(p.failure, Some(FailureKind::Refused | FailureKind::Timeout)),
        "{p:?}"
    );
    assert!(p.detail.contains(&format!(":{closed}")), "{p:?}");
    // A name that does not resolve.
    let p = gateway
        .self_probe(&ProbeTarget {
            host: "gateway.invalid".into(),
            port: 8443,
        })
        .await;
    assert_eq!(p.failure, Some(FailureKind::Dns), "{p:?}");
    // Something else answers there (the server's agent site, as a NAT to the wrong host would).
    let p = gateway
        .self_probe(&ProbeTarget {
            host: "127.0.0.1".into(),
            port: rig.server.agent_addr.port(),
        })
        .await;
    assert_eq!(p.failure, Some(FailureKind::WrongPeer), "{p:?}");
    // The right address.
    let p = gateway
        .self_probe(&ProbeTarget {
            host: "127.0.0.2".into(),
            port: listen.port(),
        })
        .await;
    assert_eq!(p.failure, None, "{p:?}");
    chrono_like(&p.at);

    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

/// `at` is RFC 3339.
fn chrono_like(at: &str) {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
}

// ---------------------------------------------------------------------------------------------
// An imported certificate: announced, then served

/// An openssl-made enterprise CA and a SAN certificate for 127.0.0.2 (the rig's external
/// name) and the split domains, exported as a PFX with its full chain.
fn enterprise_pfx(dir: &Path) -> PathBuf {
    openssl_root(dir);
    std::fs::write(
        dir.join("san.ext"),
        "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.2,DNS:smp.example.net,DNS:gateway.example.com\n",
    )
    .unwrap();
    openssl(
        dir,
        "req -new -newkey rsa:2048 -nodes -keyout san.key -out san.csr",
        &["-subj", "/O=Example/CN=gateway.example.com"],
    );
    openssl(
        dir,
        "x509 -req -in san.csr -CA root.pem -CAkey root.key -CAcreateserial -out san.pem \
         -days 365 -extfile san.ext -sha256",
        &[],
    );
    openssl(
        dir,
        "pkcs12 -export -in san.pem -inkey san.key -certfile root.pem -out san.pfx \
         -passout pass:secret",
        &[],
    );
    dir.join("san.pfx")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_certificate_goes_live_once_every_agent_has_it() {
    capture_logs();
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let rig = Rig::start(listen).await;
    let gateway = rig.gateway(Duration::from_secs(1)).await;
    let platform = gateway.thumbprints();
    assert_eq!(platform.len(), 1);
    let pc = rig.agent("pc").await;
    run_once(&pc).await.unwrap();
    run_once(&pc).await.unwrap();

    // Imported while the gateway runs.
    let pki = rig.root.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let pfx = enterprise_pfx(&pki);
    let staged = steward_gateway::import_cert(
        &rig.gateway_dir,
        &std::fs::read(&pfx).unwrap(),
        Some("secret"),
        "san.pfx",
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let root_pem = std::fs::read_to_string(pki.join("root.pem")).unwrap();

    // Announced with its root at the next report; the platform certificate is still served.
    assert!(
        eventually(Duration::from_secs(10), || async {
            rig.summary().await.report.is_some_and(|r| {
                r.thumbprints == vec![platform[0].clone(), staged.sha256.clone()]
                    && r.trust_anchors_pem.len() == 1
            })
        })
        .await,
        "{:?}",
        rig.summary().await
    );
    let report = rig.summary().await.report.unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(report.trust_anchors_pem[0].as_bytes()).unwrap(),
        CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(served_thumbprint(listen).await, platform[0]);

    // The agent receives the profile with both thumbprints and the root, and acknowledges it.
    run_once(&pc).await.unwrap();
    let entry = read_config(&pc).profile.gateways[0].clone();
    assert_eq!(
        entry.thumbprints,
        vec![platform[0].clone(), staged.sha256.clone()]
    );
    run_once(&pc).await.unwrap();

    // Then the gateway switches, without a restart, and reports the new thumbprint alone.
    assert!(
        eventually(Duration::from_secs(15), || async {
            served_thumbprint(listen).await == staged.sha256
        })
        .await,
        "{}",
        logged()
    );
    assert!(logged().contains("GATEWAY-CERT-PROMOTED"));
    assert_eq!(gateway.thumbprints(), vec![staged.sha256.clone()]);
    let slots = GatewayDir::new(&rig.gateway_dir).read_slots().unwrap();
    assert_eq!(
        (slots.current.as_deref(), slots.next.as_deref()),
        (Some(staged.sha256.as_str()), None)
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            rig.summary()
                .await
                .report
                .is_some_and(|r| r.thumbprints == vec![staged.sha256.clone()])
        })
        .await
    );

    // A restart serves the promoted certificate too.
    gateway.shutdown().await;
    let gateway = rig.gateway(Duration::from_secs(3600)).await;
    assert_eq!(served_thumbprint(listen).await, staged.sha256);

    // The agent, off the LAN, accepts the new certificate through the gateway.
    run_once(&pc).await.unwrap();
    leave_lan(&pc);
    run_once(&pc).await.unwrap();
    assert_eq!(via(&pc), Some(listen.to_string()));

    gateway.shutdown().await;
    rig.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_turned_away_busy_is_sent_again_after_retry_after_not_an_interval() {
    capture_logs();
    let listen: SocketAddr = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    // One request slot, a short queue wait, Retry-After 1 s.
    let rig = Rig::start_with(
        listen,
        &[
            ("max_in_flight = 0", "max_in_flight = 1"),
            ("max_queued = 0", "max_queued = 1"),
            ("queue_wait_ms = 10000", "queue_wait_ms = 300"),
            ("retry_after_secs = 5", "retry_after_secs = 1"),
        ],
    )
    .await;
    let every = Duration::from_secs(10);
    let _gateway = rig.gateway(every).await;
    let first = rig.summary().await.reported_at;
    assert!(first.is_some(), "the first report did not arrive");

    // The server's only slot is taken: the next periodic report is turned away busy.
    let service = rig.server.service();
    let admission = service.admission();
    let slot = admission.admit().await.unwrap();
    let busy = || {
        admission
            .stats
            .busy
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = busy();
    assert!(
        eventually(every + Duration::from_secs(5), || async { busy() > before }).await,
        "no report was turned away"
    );
    let refused = Instant::now();
    drop(slot);

    // Sent again after the Retry-After (1 s, plus up to as much again), not an interval later.
    assert!(
        eventually(Duration::from_secs(30), || async {
            rig.summary().await.reported_at != first
        })
        .await,
        "no report after the busy one"
    );
    let again = refused.elapsed();
    assert!(
        again < every / 2,
        "reported again {again:?} after the busy answer (interval {every:?})"
    );
    let log = logged();
    assert!(
        log.contains("SERVER-BUSY") && log.contains("retry_in_s"),
        "{log}"
    );
}

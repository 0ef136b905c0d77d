//! Changes at the gateway, against the real server and a real agent in one process, on
//! loopback (127.0.0.1 is the server's LAN, 127.0.0.2 the gateway's external address, 127.0.0.3
//! a LAN address nothing answers on): a phased port change (both ports answer until every agent
//! has the new profile, then the old one closes and leaves the configuration), self-probes of
//! the gateway's own address (as the server asks, and of a closed port), and an imported
//! certificate announced first and served only once every agent has it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use steward_gateway::{Gateway, GatewayDir, JoinOptions, RunOptions, RunningGateway};
use steward_proto::admin::{
    GatewaySummary, GatewayToken, LoginRequest, LoginResponse, NewGatewayToken, NewPackage,
    paths as admin,
};
use steward_proto::{AgentConfig, BootstrapPackage, ConnectionPath, FailureKind, ProbeTarget};
use steward_server::{InitOptions, RunningServer, Server, ServerOverrides};

const PASSWORD: &str = "correct horse battery";

static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .try_init();
}

fn logged() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

fn https(root_pem: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap()
}

/// A port on 127.0.0.2 free right now (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rig {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server: RunningServer,
    admin: reqwest::Client,
    token: String,
    gateway_dir: PathBuf,
}

impl Rig {
    /// A server, and a gateway joined to listen on `listen` (not started).
    async fn start(listen: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let crl_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut opts = InitOptions::new(root.join("server"), vec!["localhost".into()]);
        opts.ip_addrs = vec!["127.0.0.1".parse().unwrap()];
        opts.admin_password = Some(PASSWORD.into());
        opts.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], crl_port)));
        let report = steward_server::init(opts).await.unwrap();
        let root_pem = std::fs::read_to_string(&report.root_cert_path).unwrap();
        let loopback = Some("127.0.0.1:0".parse().unwrap());
        let server = Server::start(
            &root.join("server"),
            ServerOverrides {
                agent_addr: loopback,
                console_addr: loopback,
                crl_addr: None,
            },
        )
        .await
        .unwrap();
        let admin = https(&root_pem);
        let login: LoginResponse = admin
            .post(format!("{}{}", server.console_url(), admin::LOGIN))
            .json(&LoginRequest {
                username: "admin".into(),
                password: PASSWORD.into(),
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token: GatewayToken = admin
            .post(format!("{}{}", server.console_url(), admin::GATEWAY_TOKENS))
            .bearer_auth(&login.token)
            .json(&NewGatewayToken { expires_secs: 600 })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token_file = root.join("gateway.token");
        std::fs::write(&token_file, serde_json::to_vec(&token).unwrap()).unwrap();
        steward_gateway::join(&JoinOptions {
            server_url: format!("https://127.0.0.1:{}", server.agent_addr.port()),
            token_file,
            data_dir: root.join("gateway"),
            external_name: "127.0.0.2".into(),
            listen,
        })
        .await
        .unwrap();
        Self {
            _dir: dir,
            gateway_dir: root.join("gateway"),
            root,
            server,
            admin,
            token: login.token,
        }
    }

    async fn gateway(&self, report_interval: Duration) -> RunningGateway {
        Gateway::start(
            &self.gateway_dir,
            RunOptions {
                listen: None,
                crl_refresh: Duration::from_secs(3600),
                report_interval,
            },
        )
        .await
        .unwrap()
    }

    async fn summary(&self) -> GatewaySummary {
        let gws: Vec<GatewaySummary> = self
            .admin
            .get(format!("{}{}", self.server.console_url(), admin::GATEWAYS))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        gws.into_iter().next().unwrap()
    }

    /// Enrolls a real agent (on the LAN) into `name`.
    async fn agent(&self, name: &str) -> PathBuf {
        let pkg: BootstrapPackage = self
            .admin
            .post(format!("{}{}", self.server.console_url(), admin::PACKAGES))
            .bearer_auth(&self.token)
            .json(&NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let file = self.root.join(format!("{name}.package"));
        std::fs::write(&file, serde_json::to_vec(&pkg).unwrap()).unwrap();
        let data_dir = self.root.join(name);
        steward_agent::enroll(&steward_agent::EnrollOptions {
            name: None,
            package: file,
            data_dir: data_dir.clone(),
            force: false,
        })
        .await
        .unwrap();
        data_dir
    }
}

async fn run_once(data_dir: &Path) -> Result<(), steward_agent::RunError> {
    steward_agent::run(
        steward_agent::RunOptions {
            data_dir: data_dir.to_owned(),
            once: true,
            crls: Vec::new(),
            gateway_set_aside: Some(Duration::from_secs(0)),
            gateways_only: false,
        },
        std::future::pending(),
    )
    .await
}

fn config_path(data_dir: &Path) -> PathBuf {
    steward_agent::store::DataDir::new(data_dir).config_path()
}

fn read_config(data_dir: &Path) -> AgentConfig {
    serde_json::from_slice(&std::fs::read(config_path(data_dir)).unwrap()).unwrap()
}

/// The agent leaves the LAN: its LAN address becomes one nothing answers on.
fn leave_lan(data_dir: &Path) {
    let mut c = read_config(data_dir);
    for s in &mut c.profile.servers {
        s.host = "127.0.0.3".into();
    }
    std::fs::write(config_path(data_dir), serde_json::to_vec(&c).unwrap()).unwrap();
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

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

fn openssl(dir: &Path, cmd: &str, extra: &[&str]) {
    let out = Command::new("openssl")
        .args(cmd.split_whitespace())
        .args(extra)
        .current_dir(dir)
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An openssl-made enterprise CA and a SAN certificate for 127.0.0.2 (the rig's external
/// name) and the split domains, exported as a PFX with its full chain.
fn enterprise_pfx(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).unwrap();
    openssl(
        dir,
        "req -x509 -extensions ca_ext -newkey rsa:2048 -nodes -keyout root.key -out root.pem \
         -days 3650 -sha256",
        &["-subj", "/O=Example/CN=Example Enterprise Root"],
    );
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

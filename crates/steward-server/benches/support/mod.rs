//! Shared by the benchmarks: a real server in a temporary directory on 127.0.0.1, and a fleet
//! of devices loaded straight into its database.
//!
//! The fleet goes in through [`SqliteStore::import_devices`]: the same `devices` table,
//! primary-key index and constraints as an enrollment, with the state an agent that has
//! checked in before leaves behind (configuration acknowledged, inventory stored and hashed,
//! last-seen set). Only the certificates are not real: the check-in matches the
//! certificate's CN and SHA-256 against the row, so the benchmark presents a [`PeerCert`] with
//! the row's values; the TLS layer that would have produced it is measured by the HTTPS
//! benchmark, whose agents are really enrolled.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use steward_pki::{KeySpec, make_csr};
use steward_proto::admin::NewPackage;
use steward_proto::{
    CheckinRequest, CheckinResponse, ConnectionPath, Disk, EnrollRequest, EnrollResponse,
    Inventory, NetInterface, PROTOCOL_VERSION, paths,
};
use steward_server::{
    AdminUser, Config, DataDir, InitOptions, PeerCert, RunningServer, Server, ServerOverrides,
    Service,
};
use steward_store::{Device, ImportedDevice, NewDevice, SqliteStore};

/// The admin password of the benchmark server.
pub(crate) const PASSWORD: &str = "correct horse battery";
/// The inventory hash every fleet device holds (and sends).
pub(crate) const INVENTORY_HASH: &str =
    "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
/// The connection path agents report.
pub(crate) const SERVER: &str = "localhost:4726";

/// A server started for a benchmark; stop it with [`BenchServer::stop`].
pub(crate) struct BenchServer {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) server: Option<RunningServer>,
    pub(crate) root_pem: String,
    pub(crate) service: Arc<Service>,
    /// The configuration version every untagged device gets (it depends on the bound port,
    /// which is in the communication profile).
    pub(crate) config_version: u64,
}

fn loopback0() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl BenchServer {
    /// `steward server init` in a temporary directory, then a server on 127.0.0.1 (OS-chosen
    /// ports), as the integration tests do.
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut opts = InitOptions::new(dir.path().join("data"), vec!["localhost".into()]);
        opts.ip_addrs = vec!["127.0.0.1".parse().expect("an IP address")];
        opts.admin_password = Some(PASSWORD.into());
        opts.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        let report = steward_server::init(opts).await.expect("server init");
        let root_pem = std::fs::read_to_string(&report.root_cert_path).expect("the root");
        let server = Server::start(
            &dir.path().join("data"),
            ServerOverrides {
                agent_addr: loopback0(),
                console_addr: loopback0(),
                crl_addr: None,
            },
        )
        .await
        .expect("server start");
        let service = server.service();
        let config_version = service.device_config(&untagged_device()).version;
        Self {
            dir,
            server: Some(server),
            root_pem,
            service,
            config_version,
        }
    }

    pub(crate) fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    /// The database file.
    pub(crate) fn database(&self) -> std::path::PathBuf {
        let dd = DataDir::new(self.dir.path().join("data"));
        let cfg = Config::load(&dd).expect("steward.toml");
        dd.database(&cfg)
    }

    /// Loads `n` devices that have checked in before (see the module's comment) into the
    /// running server's database, through a second store on the same file, in one
    /// transaction; returns the identities to present for each.
    pub(crate) async fn load_fleet(&self, n: usize, seed: u64) -> Vec<PeerCert> {
        let (devices, peers) = fleet(n, self.config_version, seed);
        let store = SqliteStore::open(&self.database())
            .await
            .expect("the database");
        for chunk in devices.chunks(50_000) {
            store.import_devices(chunk).await.expect("import");
        }
        store.close().await;
        peers
    }

    /// A package token for `uses` enrollments.
    pub(crate) async fn token(&self, uses: u32) -> String {
        self.service
            .new_package(
                &AdminUser {
                    username: "bench".into(),
                },
                NewPackage {
                    expires_secs: 3600,
                    max_uses: uses,
                    tags: vec![],
                },
            )
            .await
            .expect("a package")
            .token
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("clean shutdown");
        }
    }
}

/// A device as the service sees it, only for asking which configuration an untagged device
/// gets.
fn untagged_device() -> Device {
    Device {
        id: "00000000-0000-4000-8000-000000000000".into(),
        name: "probe".into(),
        cert_serial: String::new(),
        cert_sha256: String::new(),
        tags: vec![],
        created_at: 0,
        last_seen: None,
        connection_path: None,
        last_error: None,
        config_version_acked: 0,
        profile_version_acked: 0,
        failed_attempts: vec![],
        failed_attempts_at: None,
        os: None,
        inventory_hash: None,
        inventory_at: None,
        revoked: false,
        cert_not_after: None,
        next_cert_sha256: None,
    }
}

/// SplitMix64: reproducible pseudo-random IDs and thumbprints without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn hex(&mut self, digits: usize) -> String {
        let mut s = String::with_capacity(digits + 16);
        while s.len() < digits {
            s.push_str(&format!("{:016X}", self.next()));
        }
        s.truncate(digits);
        s
    }

    /// A version-4 UUID in the lower-case form the server makes.
    fn uuid(&mut self) -> String {
        let h = self.hex(32).to_lowercase();
        format!(
            "{}-{}-4{}-8{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    /// A Fisher-Yates shuffle of `0..n`.
    pub(crate) fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap_or(0);
            v.swap(i, j);
        }
        v
    }
}

/// An inventory of the size a real agent sends (about 1 KB of JSON: three disks, three
/// interfaces), so the table's rows and pages are as large as in production.
pub(crate) fn inventory(host: &str) -> Inventory {
    Inventory {
        hostname: host.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12.41+deb13-amd64".into(),
        cpu_model: "Intel(R) Core(TM) i5-8365U CPU @ 1.60GHz".into(),
        cpu_count: 8,
        memory_total_bytes: 16 << 30,
        disks: ["/", "/home", "/boot/efi"]
            .iter()
            .map(|m| Disk {
                mount: (*m).into(),
                fs: "ext4".into(),
                total_bytes: 250 << 30,
                available_bytes: 120 << 30,
            })
            .collect(),
        interfaces: ["lo", "enp0s31f6", "wlp2s0"]
            .iter()
            .enumerate()
            .map(|(i, n)| NetInterface {
                name: (*n).into(),
                mac: format!("8c:16:45:3a:0{i}:7e"),
                addresses: vec![
                    format!("10.20.{i}.17/24"),
                    format!("fe80::8e16:45ff:fe3a:{i}7e/64"),
                ],
            })
            .collect(),
        agent_version: "0.1.0".into(),
    }
}

/// `n` devices that have checked in before, and the identities they present.
pub(crate) fn fleet(
    n: usize,
    config_version: u64,
    seed: u64,
) -> (Vec<ImportedDevice>, Vec<PeerCert>) {
    let mut rng = Rng::new(seed);
    let now = steward_pki::OffsetDateTime::now_utc().unix_timestamp();
    let mut devices = Vec::with_capacity(n);
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let id = rng.uuid();
        let serial = rng.hex(32);
        let sha256 = rng.hex(64);
        let name = format!("host-{i:06}.corp.example");
        peers.push(PeerCert {
            sha256: sha256.clone(),
            serial: serial.clone(),
            common_name: Some(id.clone()),
        });
        devices.push(ImportedDevice {
            device: NewDevice {
                id,
                name: name.clone(),
                cert_serial: serial,
                cert_sha256: sha256,
                tags: vec![],
                created_at: now - 86_400,
                profile_version: 0,
                cert_not_after: None,
            },
            config_version_acked: config_version,
            // As `unchanged()` reports, so the fleet's check-ins stay write-free.
            profile_version_acked: 0,
            inventory: Some((inventory(&name), INVENTORY_HASH.into())),
            inventory_at: Some(now - 3_600),
            last_seen: Some(now - 60),
            connection_path: Some(format!("lan via {SERVER}")),
        });
    }
    (devices, peers)
}

/// The check-in of an agent with nothing new: same configuration, same inventory, no
/// results, no fault.
pub(crate) fn unchanged(config_version: u64) -> CheckinRequest {
    CheckinRequest {
        protocol: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        config_version,
        inventory_hash: INVENTORY_HASH.into(),
        inventory: None,
        results: vec![],
        last_error: None,
        connection: ConnectionPath::Lan {
            server: SERVER.into(),
        },
        profile_version: 0,
        failed_attempts: vec![],
    }
}

/// Whether `r` is the answer to an unchanged check-in (nothing to do).
pub(crate) fn nothing_new(r: &steward_proto::CheckinResponse) -> bool {
    r.config.is_none() && r.tasks.is_empty() && r.acked_results.is_empty() && !r.send_inventory
}

/// Whether the benchmark was started by `cargo bench` (criterion and cargo pass `--bench`);
/// otherwise (`cargo test --benches`) each benchmark runs a short smoke version.
pub(crate) fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

// ---------------------------------------------------------------------------------------------
// Really enrolled agents, over HTTPS

/// A request that takes longer than this counts as an error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An enrolled agent's identity.
pub(crate) struct Identity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The private key, PKCS#8 DER.
    pub(crate) key: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conn {
    KeepAlive,
    /// A new TCP connection and full mutual-TLS handshake for every check-in.
    New,
}

/// An HTTPS client trusting `root_pem` and presenting `identity` (if any), connecting as `conn`
/// says; the host name "localhost" resolves to the address `localhost` (the server's agent
/// site).
pub(crate) fn client(
    root_pem: &str,
    identity: Option<&Identity>,
    conn: Conn,
    localhost: SocketAddr,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).expect("the root PEM"))
        .expect("the root");
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let mut cfg = match identity {
        Some(id) => b
            .with_client_auth_cert(
                id.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone())),
            )
            .expect("the agent's identity"),
        None => b.with_no_client_auth(),
    };
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .resolve("localhost", localhost);
    if conn == Conn::New {
        // Every check-in pays the full handshake, client certificate verification included.
        cfg.resumption = Resumption::disabled();
        builder = builder.pool_max_idle_per_host(0);
    }
    builder
        .tls_backend_preconfigured(cfg)
        .build()
        .expect("an HTTPS client")
}

/// `path` on the agent site at `agent_addr`, by the name `localhost` (see [`client`]).
pub(crate) fn agent_url(agent_addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", agent_addr.port())
}

/// Enrolls agent `i` at the agent site on `agent_addr` with the package `token`: its own key
/// pair from `steward_pki::make_csr`, its own certificate from the server's CA.
pub(crate) async fn enroll(
    root_pem: &str,
    agent_addr: SocketAddr,
    token: &str,
    i: usize,
) -> Identity {
    let host = format!("bench-agent-{i:04}");
    let (csr_pem, key) = make_csr(KeySpec::EcdsaP256, &host).expect("a CSR");
    let resp = client(root_pem, None, Conn::KeepAlive, agent_addr)
        .post(agent_url(agent_addr, paths::ENROLL))
        .json(&EnrollRequest {
            token: token.into(),
            csr_pem,
            hostname: host,
            agent_version: "0.1.0-bench".into(),
        })
        .send()
        .await
        .expect("the enrollment request");
    assert!(resp.status().is_success(), "enrollment: {}", resp.status());
    let e: EnrollResponse = resp.json().await.expect("the enrollment response");
    let mut chain =
        vec![CertificateDer::from_pem_slice(e.cert_pem.as_bytes()).expect("the certificate")];
    for c in &e.chain_pem {
        chain.push(CertificateDer::from_pem_slice(c.as_bytes()).expect("the chain"));
    }
    Identity { chain, key }
}

/// One check-in; on [`Conn::New`] the connection is closed after it.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    req: &CheckinRequest,
    conn: Conn,
) -> Result<CheckinResponse, String> {
    let mut r = http.post(url).json(req);
    if conn == Conn::New {
        r = r.header(reqwest::header::CONNECTION, "close");
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    resp.json().await.map_err(|e| e.to_string())
}

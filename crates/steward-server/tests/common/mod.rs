//! A real server in a temporary directory on 127.0.0.1 (ports chosen by the OS), and clients
//! for it: the admin API over HTTPS trusting the platform root, and agents over mutual TLS
//! with keys made by `steward_pki::make_csr`, as the agent does.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use steward_pki::{KeySpec, make_csr};
use steward_proto::admin::{LoginRequest, LoginResponse, NewPackage};
use steward_proto::{
    ApiError, BootstrapPackage, CheckinRequest, CheckinResponse, ConnectionPath, EnrollRequest,
    EnrollResponse, paths,
};
use steward_server::{InitOptions, RunningServer, Server, ServerOverrides};

pub const PASSWORD: &str = "correct horse battery";

/// A port free right now on 127.0.0.1 (for the CRL listener, whose port goes into
/// certificates and so must be known before `init`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn loopback0() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub root_pem: String,
    pub admin: reqwest::Client,
    pub token: String,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(root_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    roots
}

/// An HTTPS client trusting `root_pem`, optionally presenting a client certificate.
pub fn client(
    root_pem: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    resolve: Option<SocketAddr>,
) -> reqwest::Client {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(root_pem));
    let cfg = match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(90))
        .no_proxy();
    if let Some(addr) = resolve {
        builder = builder.resolve("localhost", addr);
    }
    builder.build().unwrap()
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = InitOptions::new(dir.path().join("data"), vec!["localhost".into()]);
        opts.ip_addrs = vec!["127.0.0.1".parse().unwrap()];
        opts.admin_password = Some(PASSWORD.into());
        opts.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
        let report = steward_server::init(opts).await.unwrap();
        assert!(report.generated_admin_password.is_none());
        let root_pem = std::fs::read_to_string(&report.root_cert_path).unwrap();
        let mut s = Self {
            dir,
            server: None,
            admin: client(&root_pem, None, None),
            root_pem,
            token: String::new(),
        };
        s.restart().await;
        s
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Starts (again) on fresh loopback ports and logs in.
    pub async fn restart(&mut self) {
        if let Some(old) = self.server.take() {
            old.shutdown().await.unwrap();
        }
        let server = Server::start(
            &self.data_dir(),
            ServerOverrides {
                agent_addr: loopback0(),
                console_addr: loopback0(),
                crl_addr: None,
            },
        )
        .await
        .unwrap();
        self.server = Some(server);
        let login: LoginResponse = self
            .post_admin(
                steward_proto::admin::paths::LOGIN,
                &LoginRequest {
                    username: "admin".into(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .unwrap();
        self.token = login.token;
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn console(&self, path: &str) -> String {
        format!("{}{path}", self.running().console_url())
    }

    pub fn agent_url(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.running().agent_addr.port()
        )
    }

    pub async fn post_admin<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, (u16, ApiError)> {
        let mut req = self.admin.post(self.console(path)).json(body);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        decode(req.send().await.unwrap()).await
    }

    pub async fn get_admin<T: DeserializeOwned>(&self, path: &str) -> Result<T, (u16, ApiError)> {
        decode(
            self.admin
                .get(self.console(path))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn package(
        &self,
        expires_secs: u64,
        max_uses: u32,
        tags: &[&str],
    ) -> BootstrapPackage {
        self.post_admin(
            steward_proto::admin::paths::PACKAGES,
            &NewPackage {
                expires_secs,
                max_uses,
                tags: tags.iter().map(|s| s.to_string()).collect(),
            },
        )
        .await
        .unwrap()
    }

    /// A client for the agent site without a client certificate.
    pub fn anonymous_agent(&self) -> reqwest::Client {
        client(&self.root_pem, None, Some(self.running().agent_addr))
    }

    pub async fn enroll(&self, token: &str, hostname: &str) -> Result<Agent, (u16, ApiError)> {
        let (csr_pem, key) = make_csr(KeySpec::EcdsaP256, hostname).unwrap();
        let resp = self
            .anonymous_agent()
            .post(self.agent_url(paths::ENROLL))
            .json(&EnrollRequest {
                token: token.into(),
                csr_pem,
                hostname: hostname.into(),
                agent_version: "0.1.0-test".into(),
            })
            .send()
            .await
            .unwrap();
        let enrolled: EnrollResponse = decode(resp).await?;
        let mut chain = vec![CertificateDer::from_pem_slice(enrolled.cert_pem.as_bytes()).unwrap()];
        for c in &enrolled.chain_pem {
            chain.push(CertificateDer::from_pem_slice(c.as_bytes()).unwrap());
        }
        let http = client(
            &self.root_pem,
            Some((
                chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
            )),
            Some(self.running().agent_addr),
        );
        Ok(Agent {
            id: enrolled.device_id.clone(),
            enrolled,
            http,
            base: self.agent_url(""),
            chain,
            key,
        })
    }
}

/// An enrolled fake agent.
#[derive(Clone)]
pub struct Agent {
    pub id: String,
    pub enrolled: EnrollResponse,
    pub http: reqwest::Client,
    pub base: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

pub fn checkin_request(config_version: u64) -> CheckinRequest {
    CheckinRequest {
        protocol: steward_proto::PROTOCOL_VERSION,
        agent_version: "0.1.0-test".into(),
        config_version,
        inventory_hash: "none".into(),
        inventory: None,
        results: vec![],
        last_error: None,
        connection: ConnectionPath::Lan {
            server: "localhost:4726".into(),
        },
        profile_version: 0,
        failed_attempts: vec![],
    }
}

impl Agent {
    /// Points the agent at the server's current agent-site address (after a restart).
    pub fn reconnect(&mut self, ts: &TestServer) {
        self.http = client(
            &ts.root_pem,
            Some((
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )),
            Some(ts.running().agent_addr),
        );
        self.base = ts.agent_url("");
    }

    pub async fn checkin(&self, req: &CheckinRequest) -> Result<CheckinResponse, (u16, ApiError)> {
        decode(
            self.http
                .post(format!("{}{}", self.base, paths::CHECKIN))
                .json(req)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The tasks an otherwise unchanged check-in hands out.
    pub async fn tasks_handed_out(
        &self,
        config_version: u64,
    ) -> Vec<steward_proto::TaskAssignment> {
        self.checkin(&checkin_request(config_version))
            .await
            .unwrap()
            .tasks
    }

    /// A long-poll: `Some(reason)` on 200, `None` on 204.
    pub async fn wait(&self, config_version: u64) -> Option<String> {
        self.long_poll(&format!("config_version={config_version}"))
            .await
            .map(|w| w.reason)
    }

    /// A long-poll asking for its tasks in the wake-up (`tasks=carry`).
    pub async fn wait_carry(&self, config_version: u64) -> Option<steward_proto::WakeUp> {
        self.long_poll(&format!(
            "config_version={config_version}&{}",
            steward_proto::WAIT_CARRY_TASKS
        ))
        .await
    }

    /// A long-poll with this query: the wake-up on 200, `None` on 204.
    pub async fn long_poll(&self, query: &str) -> Option<steward_proto::WakeUp> {
        let resp = self
            .http
            .get(format!("{}{}?{query}", self.base, paths::WAIT))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            204 => None,
            200 => Some(resp.json().await.unwrap()),
            s => panic!(
                "wait answered {s}: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
    }
}

pub async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, (u16, ApiError)> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    if (200..300).contains(&status) {
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status} body does not decode: {e}: {bytes:?}")))
    } else {
        let err: ApiError = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status} error body is not an ApiError: {e}: {bytes:?}"));
        Err((status, err))
    }
}

//! Shared by the gateway's integration tests: log capture, an HTTPS client, a rig of a real
//! server on loopback with a gateway joined to it and real agents enrolled from packages, the
//! agent's one-shot run and configuration file, and the `openssl` CLI helpers.
// Each test file uses a subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use steward_gateway::{Gateway, JoinOptions, RunOptions, RunningGateway};
use steward_proto::AgentConfig;
use steward_proto::BootstrapPackage;
use steward_proto::admin::{
    GatewaySummary, GatewayToken, LoginRequest, LoginResponse, NewGatewayToken, NewPackage,
    paths as admin,
};
use steward_server::{InitOptions, RunningServer, Server, ServerOverrides};

pub(crate) const PASSWORD: &str = "correct horse battery";

// ---------------------------------------------------------------------------------------------
// Logs

/// Everything logged in this test process (the agent's event lines among it).
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

pub(crate) fn capture_logs() {
    // Once per process; a second call (another test) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .try_init();
}

pub(crate) fn logged() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// HTTPS

/// A client trusting `root_pem`, presenting `identity` if given.
pub(crate) fn https(
    root_pem: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap()
}

/// Sends `req` and reads its JSON answer.
pub(crate) async fn fetch<T: serde::de::DeserializeOwned>(req: reqwest::RequestBuilder) -> T {
    req.send().await.unwrap().json().await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// The rig

pub(crate) struct Rig {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) server: RunningServer,
    pub(crate) root_pem: String,
    pub(crate) admin: reqwest::Client,
    /// The admin session's bearer token.
    pub(crate) token: String,
    pub(crate) gateway_dir: PathBuf,
    /// The gateway ID `steward gateway join` was given.
    pub(crate) gateway_id: String,
}

impl Rig {
    /// A server on 127.0.0.1 (admin logged in), and a gateway joined with external name
    /// 127.0.0.2 to listen on `listen` (not started).
    pub(crate) async fn start(listen: SocketAddr) -> Self {
        Self::start_with(listen, &[]).await
    }

    /// As [`Rig::start`], with lines of the server's `steward.toml` replaced before it starts
    /// (`(from, to)` pairs; each `from` must be there).
    pub(crate) async fn start_with(listen: SocketAddr, config: &[(&str, &str)]) -> Self {
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
        let toml = root.join("server").join("steward.toml");
        let mut text = std::fs::read_to_string(&toml).unwrap();
        for (from, to) in config {
            assert!(text.contains(from), "{from} not in steward.toml");
            text = text.replace(from, to);
        }
        std::fs::write(&toml, text).unwrap();
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
        let admin = https(&root_pem, None);
        let login: LoginResponse = fetch(
            admin
                .post(format!("{}{}", server.console_url(), admin::LOGIN))
                .json(&LoginRequest {
                    username: "admin".into(),
                    password: PASSWORD.into(),
                }),
        )
        .await;

        // `steward gateway token`, then `steward gateway join` with the file it writes.
        let token: GatewayToken = fetch(
            admin
                .post(format!("{}{}", server.console_url(), admin::GATEWAY_TOKENS))
                .bearer_auth(&login.token)
                .json(&NewGatewayToken { expires_secs: 600 }),
        )
        .await;
        let token_file = root.join("gateway.token");
        std::fs::write(&token_file, serde_json::to_vec(&token).unwrap()).unwrap();
        let joined = steward_gateway::join(&JoinOptions {
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
            root_pem,
            admin,
            token: login.token,
            gateway_id: joined.gateway_id,
        }
    }

    /// Starts the joined gateway (the CRL refresh pushed out of the test's way).
    pub(crate) async fn gateway(&self, report_interval: Duration) -> RunningGateway {
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

    /// GET `path` on the admin API, as the logged-in admin.
    pub(crate) async fn admin_get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        fetch(
            self.admin
                .get(format!("{}{path}", self.server.console_url()))
                .bearer_auth(&self.token),
        )
        .await
    }

    /// Revokes a device through the admin API, which re-signs the CRLs before it answers.
    pub(crate) async fn revoke_device(&self, id: &str) {
        let resp = self
            .admin
            .post(format!(
                "{}{}",
                self.server.console_url(),
                admin::DEVICE_REVOKE.replace("{id}", id)
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
    }

    /// The (only) gateway the server knows.
    pub(crate) async fn summary(&self) -> GatewaySummary {
        let gws: Vec<GatewaySummary> = self.admin_get(admin::GATEWAYS).await;
        gws.into_iter().next().unwrap()
    }

    /// Enrolls a real agent (on the LAN) into `name`.
    pub(crate) async fn agent(&self, name: &str) -> PathBuf {
        let pkg: BootstrapPackage = fetch(
            self.admin
                .post(format!("{}{}", self.server.console_url(), admin::PACKAGES))
                .bearer_auth(&self.token)
                .json(&NewPackage {
                    expires_secs: 600,
                    max_uses: 1,
                    tags: vec![],
                }),
        )
        .await;
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

// ---------------------------------------------------------------------------------------------
// The agent

/// How [`run_once_with`] runs the agent.
#[derive(Clone, Copy, Default)]
pub(crate) struct Once {
    pub(crate) gateway_set_aside: Option<Duration>,
    pub(crate) gateways_only: bool,
}

/// One check-in of the agent in `data_dir`, with the default options.
pub(crate) async fn run_once(data_dir: &Path) -> Result<(), steward_agent::RunError> {
    run_once_with(data_dir, Once::default()).await
}

/// One check-in of the agent in `data_dir`.
pub(crate) async fn run_once_with(
    data_dir: &Path,
    once: Once,
) -> Result<(), steward_agent::RunError> {
    steward_agent::run(
        steward_agent::RunOptions {
            data_dir: data_dir.to_owned(),
            once: true,
            crls: Vec::new(),
            gateway_set_aside: once.gateway_set_aside,
            gateways_only: once.gateways_only,
        },
        std::future::pending(),
    )
    .await
}

pub(crate) fn config_path(data_dir: &Path) -> PathBuf {
    steward_agent::store::DataDir::new(data_dir).config_path()
}

pub(crate) fn read_config(data_dir: &Path) -> AgentConfig {
    serde_json::from_slice(&std::fs::read(config_path(data_dir)).unwrap()).unwrap()
}

/// The agent leaves the LAN: its LAN address becomes one nothing answers on; `edit` changes
/// the rest of its configuration.
pub(crate) fn leave_lan(data_dir: &Path, edit: impl FnOnce(&mut AgentConfig)) {
    let mut c = read_config(data_dir);
    for s in &mut c.profile.servers {
        s.host = "127.0.0.3".into();
    }
    edit(&mut c);
    std::fs::write(config_path(data_dir), serde_json::to_vec(&c).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The openssl CLI

pub(crate) const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

/// Runs `openssl` in `dir` (file names relative to it); panics with its stderr on failure.
pub(crate) fn openssl(dir: &Path, cmd: &str, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(cmd.split_whitespace())
        .args(extra)
        .current_dir(dir)
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .stdin(Stdio::null())
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {cmd} {extra:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`OPENSSL_CNF`] and an openssl-made root CA (RSA 2048, SHA-256) in `dir`: `openssl.cnf`,
/// `root.key`, `root.pem`.
pub(crate) fn openssl_root(dir: &Path) {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).unwrap();
    openssl(
        dir,
        "req -x509 -extensions ca_ext -newkey rsa:2048 -nodes -keyout root.key -out root.pem \
         -days 3650 -sha256",
        &["-subj", "/O=Example/CN=Example Enterprise Root"],
    );
}

//! A real agent run inside a test process, and bounded waiting: shared by the integration
//! tests that drive `steward_agent::run` against a real server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use steward_agent::{EnrollOptions, RunOptions};
use steward_proto::admin::{NewPackage, Policy};
use steward_server::{AdminUser, InitOptions, RunningServer, Server, ServerOverrides};
use tokio::sync::oneshot;

/// The agent's `run` on its own thread and current-thread runtime, as the binary runs it.
pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RunningAgent {
    pub fn start(data_dir: PathBuf) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(steward_agent::run(
                RunOptions {
                    data_dir,
                    once: false,
                    crls: Vec::new(),
                    gateway_set_aside: None,
                    gateways_only: false,
                },
                async move {
                    let _ = stopped.await;
                },
            ))
            .map_err(|e| e.to_string())
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("agent thread").expect("agent run");
        }
    }
}

/// Polls `probe` every 20 ms until it gives a value; fails the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The admin the tests act as.
pub fn admin() -> AdminUser {
    AdminUser {
        username: "persistent".to_owned(),
    }
}

/// A server on 127.0.0.1 with `steward.toml` edited by `toml_edits` (each `(from, to)` must
/// match), the agent-settings policy `settings`, and one agent enrolled in `tmp/agent` (not
/// running). Returns the server, the agent's data directory and its device ID.
pub async fn server_with_agent(
    tmp: &Path,
    settings: &[(&str, &str)],
    toml_edits: &[(&str, &str)],
) -> (RunningServer, PathBuf, String) {
    let server_dir = tmp.join("server");
    let mut init = InitOptions::new(server_dir.clone(), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    steward_server::init(init).await.expect("server init");
    let toml = server_dir.join("steward.toml");
    let mut text = std::fs::read_to_string(&toml).expect("steward.toml");
    for (from, to) in toml_edits {
        assert!(text.contains(from), "{from} not in steward.toml");
        text = text.replace(from, to);
    }
    std::fs::write(&toml, text).expect("write steward.toml");
    let server = Server::start(
        &server_dir,
        ServerOverrides {
            agent_addr: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
            console_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            crl_addr: None,
        },
    )
    .await
    .expect("server starts");
    let service = server.service();
    service
        .put_policy(
            &admin(),
            Policy {
                name: steward_server::AGENT_SETTINGS.to_owned(),
                target: "all".to_owned(),
                values: settings
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            },
        )
        .await
        .expect("policy");
    let package = service
        .new_package(
            &admin(),
            NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            },
        )
        .await
        .expect("package");
    let pkg_path = tmp.join("agent.pkg");
    std::fs::write(&pkg_path, serde_json::to_vec(&package).expect("json")).expect("write");
    let agent_dir = tmp.join("agent");
    let enrolled = steward_agent::enroll(&EnrollOptions {
        name: None,
        package: pkg_path,
        data_dir: agent_dir.clone(),
        force: false,
    })
    .await
    .expect("enroll");
    (server, agent_dir, enrolled.device_id)
}

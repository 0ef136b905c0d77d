//! Admission control as the agent meets it: a server whose admission queue is full answers
//! 503 `SERVER-BUSY` with `Retry-After` at once; the agent logs `AGENT-SERVER-BUSY`, comes
//! back after that delay plus jitter, and neither reports a failed way nor an error: the
//! server was reachable and answered. (One test binary: the agent log is process-global.)

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::running::{RunningAgent, eventually};
use steward_agent::EnrollOptions;
use steward_agent::events::{self, LogOptions};
use steward_proto::admin::{NewPackage, Policy};
use steward_server::{AdminUser, InitOptions, RunningServer, Server, ServerOverrides};
use tracing_subscriber::filter::LevelFilter;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn admin() -> AdminUser {
    AdminUser {
        username: "persistent".to_owned(),
    }
}

/// A server with the agent-settings policy `settings`, and one enrolled agent (not running).
async fn setup(tmp: &Path, settings: &[(&str, &str)]) -> (RunningServer, PathBuf, String) {
    let server_dir = tmp.join("server");
    let mut init = InitOptions::new(server_dir.clone(), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    steward_server::init(init).await.expect("server init");
    // One request at a time, one waiting for at most 20 ms, and come back after 1 s.
    let toml = server_dir.join("steward.toml");
    let text = std::fs::read_to_string(&toml).expect("steward.toml");
    let text = text
        .replace("max_in_flight = 0", "max_in_flight = 1")
        .replace("max_queued = 0", "max_queued = 1")
        .replace("queue_wait_ms = 10000", "queue_wait_ms = 20")
        .replace("retry_after_secs = 5", "retry_after_secs = 1");
    assert!(text.contains("retry_after_secs = 1\n"), "{text}");
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
    events::init(
        &agent_dir.join("logs"),
        &LogOptions {
            stderr: false,
            keep_files: 2,
            level: LevelFilter::INFO,
        },
    )
    .expect("agent log");
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

fn log_text(agent_dir: &Path) -> String {
    let mut all = String::new();
    if let Ok(entries) = std::fs::read_dir(agent_dir.join("logs")) {
        for e in entries.flatten() {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_is_retried_after_retry_after_and_is_no_failed_way() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, agent_dir, device) = setup(tmp.path(), &[("checkin_interval_secs", "60")]).await;
    let service = server.service();
    let admission = service.admission();
    // The test takes the only slot: every check-in finds the queue busy.
    let slot = admission.admit().await.expect("the only slot");
    let agent = RunningAgent::start(agent_dir.clone());
    eventually("two busy answers", Duration::from_secs(30), || {
        let n = admission.stats.busy.load(Ordering::Relaxed);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let log = eventually("the busy line in the log", Duration::from_secs(10), || {
        let log = log_text(&agent_dir);
        async move { log.contains("AGENT-SERVER-BUSY").then_some(log) }
    })
    .await;
    assert!(log.contains("Retry-After 1 s"), "{log}");
    assert!(!log.contains("AGENT-SERVER-REJECTED"), "{log}");
    assert!(!log.contains("AGENT-BACKOFF"), "{log}");
    // Let it in: it checks in within Retry-After plus jitter (at most 2 s), with no error
    // and no failed way to report.
    drop(slot);
    let detail = eventually(
        "the check-in after the busy spell",
        Duration::from_secs(15),
        || {
            let service = service.clone();
            let device = device.clone();
            async move {
                let d = service.device(&device).await.ok()?;
                d.summary.last_checkin.is_some().then_some(d)
            }
        },
    )
    .await;
    assert_eq!(detail.summary.last_error, None);
    assert!(detail.summary.failed_attempts.is_empty());
    let state = steward_agent::store::DataDir::new(&agent_dir)
        .load_state()
        .expect("state");
    assert!(
        state.failed_attempts.is_empty(),
        "{:?}",
        state.failed_attempts
    );
    assert_eq!(state.consecutive_failures, 0);
    agent.stop();
    server.shutdown().await.expect("shutdown");
}

//! Failed ways to the server are kept (across restarts), aggregated per address and kind, sent
//! with the next check-in that works — through another way in the same round too — and cleared
//! only once the server answered that check-in; and `steward-agent doctor` checks the agent's
//! own ways with its own identity. Against the real server, in-process on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use steward_agent::events::ids;
use steward_agent::store::DataDir;
use steward_agent::{EnrollOptions, RunOptions};
use steward_proto::admin::NewPackage;
use steward_proto::{AgentConfig, FailureKind, ServerEndpoint};
use steward_server::{AdminUser, InitOptions, RunningServer, Server, ServerOverrides};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_server(data: &Path, agent_port: u16) -> RunningServer {
    Server::start(
        data,
        ServerOverrides {
            agent_addr: Some(SocketAddr::from(([127, 0, 0, 1], agent_port))),
            console_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            crl_addr: None,
        },
    )
    .await
    .expect("server starts")
}

/// A server in `tmp/server` on a fixed agent port, and an agent enrolled from its package.
async fn server_and_agent(tmp: &Path) -> (PathBuf, u16, RunningServer, PathBuf, String) {
    let server_dir = tmp.join("server");
    let mut init = InitOptions::new(server_dir.clone(), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    steward_server::init(init).await.expect("server init");
    let port = free_port();
    let server = start_server(&server_dir, port).await;
    let package = server
        .service()
        .new_package(
            &AdminUser {
                username: "test".to_owned(),
            },
            NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            },
        )
        .await
        .expect("package");
    let pkg = tmp.join("agent.pkg");
    std::fs::write(&pkg, serde_json::to_vec(&package).expect("json")).expect("write");
    let agent_dir = tmp.join("agent");
    let enrolled = steward_agent::enroll(&EnrollOptions {
        name: None,
        package: pkg,
        data_dir: agent_dir.clone(),
        force: false,
    })
    .await
    .expect("enroll");
    (server_dir, port, server, agent_dir, enrolled.device_id)
}

async fn once(agent_dir: &Path) -> Result<(), steward_agent::RunError> {
    steward_agent::run(
        RunOptions {
            data_dir: agent_dir.to_path_buf(),
            once: true,
            crls: Vec::new(),
            gateway_set_aside: None,
            gateways_only: false,
        },
        std::future::pending(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_kept_aggregated_sent_and_cleared_only_after_an_answer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server_dir, port, server, agent_dir, device) = server_and_agent(tmp.path()).await;
    let dir = DataDir::new(&agent_dir);

    // The server is down: two runs (two processes' worth of restarts) fail the same way.
    server.shutdown().await.expect("server stops");
    for _ in 0..2 {
        let e = once(&agent_dir).await.expect_err("no server");
        assert_eq!(e.id(), ids::CONNECTION_REFUSED, "{e}");
    }
    // The server's profile lists it twice (localhost and 127.0.0.1): one entry per address.
    let state = dir.load_state().expect("state");
    assert_eq!(
        state.failed_attempts.len(),
        2,
        "{:?}",
        state.failed_attempts
    );
    for kept in &state.failed_attempts {
        assert_eq!(kept.kind, FailureKind::Refused);
        assert_eq!(kept.id, ids::CONNECTION_REFUSED);
        assert_eq!(kept.gateway, None);
        assert_eq!(kept.count, 2, "aggregated across restarts: {kept:?}");
        assert!(kept.address.ends_with(&format!(":{port}")), "{kept:?}");
        assert!(kept.detail.contains("refused"), "{kept:?}");
    }
    let kept = state.failed_attempts[0].clone();

    // The server is back: the next check-in carries them, and once it is answered they go.
    let server = start_server(&server_dir, port).await;
    once(&agent_dir).await.expect("check-in");
    assert!(
        dir.load_state().expect("state").failed_attempts.is_empty(),
        "cleared after the answer"
    );
    let seen = server
        .service()
        .device(&device)
        .await
        .expect("device")
        .summary
        .failed_attempts;
    let reported = seen
        .iter()
        .find(|a| a.address == kept.address && a.kind == FailureKind::Refused)
        .unwrap_or_else(|| panic!("the server has the outage: {seen:?}"));
    assert_eq!(reported.count, 2);

    // A dead LAN address before the real one: it fails, the next way works in the same round,
    // and that check-in reports the failure that just happened.
    let dead = free_port();
    let mut config: AgentConfig =
        serde_json::from_slice(&std::fs::read(agent_dir.join("config.json")).expect("config.json"))
            .expect("config");
    config.profile.servers.insert(
        0,
        ServerEndpoint {
            host: "127.0.0.1".to_owned(),
            port: dead,
            http_port: None,
        },
    );
    dir.store_config(&config).expect("store config");
    once(&agent_dir)
        .await
        .expect("check-in through the second server");
    assert!(dir.load_state().expect("state").failed_attempts.is_empty());
    let seen = server
        .service()
        .device(&device)
        .await
        .expect("device")
        .summary
        .failed_attempts;
    let lan = seen
        .iter()
        .find(|a| a.address == format!("127.0.0.1:{dead}"))
        .unwrap_or_else(|| panic!("the dead address is reported: {seen:?}"));
    assert_eq!((lan.kind, lan.count), (FailureKind::Refused, 1));

    // A check-in that is refused keeps them: revoke the device, fail, and look.
    server
        .service()
        .revoke_device(
            &AdminUser {
                username: "test".to_owned(),
            },
            &device,
        )
        .await
        .expect("revoke");
    let e = once(&agent_dir).await.expect_err("revoked");
    let state = dir.load_state().expect("state");
    assert!(
        state
            .failed_attempts
            .iter()
            .any(|a| a.address == format!("127.0.0.1:{dead}")),
        "kept after a refused check-in ({e}): {:?}",
        state.failed_attempts
    );
    // The refusal itself is recorded against the server's own address. (Whether a revoked
    // certificate shows as a TLS alert or as the server closing the connection after a TLS 1.3
    // handshake depends on timing, so the kind is not pinned here.)
    assert!(
        state
            .failed_attempts
            .iter()
            .any(|a| a.address == kept.address && a.count == 1),
        "the refusal itself is recorded ({e}): {:?}",
        state.failed_attempts
    );
    server.shutdown().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_checks_the_agents_own_way_and_exits_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server_dir, port, server, agent_dir, device) = server_and_agent(tmp.path()).await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_steward-agent"))
            .args(["doctor", "--format", "json", "--data-dir"])
            .arg(&agent_dir)
            .output()
            .expect("run steward-agent doctor")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["verdict"], "ok", "{stdout}");
    // The server's profile: localhost and 127.0.0.1, no gateway.
    let paths = report["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "two LAN addresses, no gateway: {stdout}");
    for path in paths {
        assert_eq!(path["kind"], "lan");
        assert!(
            path["target"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!(":{port}"))),
            "{stdout}"
        );
        let ids: Vec<&str> = path["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter_map(|f| f["id"].as_str())
            .collect();
        assert_eq!(
            ids,
            ["PATH-DNS", "PATH-TCP", "PATH-TLS", "PATH-CERT", "PATH-OK"],
            "{stdout}"
        );
        let ok = &path["findings"][4];
        assert!(
            ok["message"].as_str().is_some_and(|m| m.contains(&device)),
            "the ping names this device: {stdout}"
        );
    }
    let general: Vec<(&str, &str)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| Some((f["id"].as_str()?, f["severity"].as_str()?)))
        .collect();
    assert_eq!(general, [("PATH-NO-GATEWAYS", "ok")], "{stdout}");
    server.shutdown().await.expect("server stops");
}

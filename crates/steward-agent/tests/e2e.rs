//! The agent against the real server, in-process on 127.0.0.1: enroll from a package the
//! server made, check in over mutual TLS, receive a task through the long-poll within seconds,
//! deliver its result; then the same through a server outage, where the result waits in the
//! outbox and arrives exactly once after the restart.
//!
//! The server is a dev-dependency only: the agent itself never depends on it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::running::{RunningAgent, eventually};
use steward_agent::EnrollOptions;
use steward_agent::events::{self, LogOptions, ids};
use steward_agent::store::Outbox;
use steward_proto::admin::{NewPackage, NewTask, TaskState};
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
        username: "e2e".to_owned(),
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_check_in_run_a_task_and_survive_a_server_outage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent_dir = tmp.path().join("agent");
    events::init(
        &agent_dir.join("logs"),
        &LogOptions {
            stderr: false,
            keep_files: 2,
            level: LevelFilter::INFO,
        },
    )
    .expect("agent log");

    // Server: init a data directory, start it on a fixed agent port (so a restart keeps the
    // address in the agent's profile).
    let server_dir = tmp.path().join("server");
    let mut init = InitOptions::new(server_dir.clone(), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    steward_server::init(init).await.expect("server init");
    let agent_port = free_port();
    let server = start_server(&server_dir, agent_port).await;

    // Enroll from a package the server made.
    let package = server
        .service()
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
    let pkg_path = tmp.path().join("agent.pkg");
    std::fs::write(&pkg_path, serde_json::to_vec(&package).expect("json")).expect("write");
    let enrolled = steward_agent::enroll(&EnrollOptions {
        name: None,
        package: pkg_path.clone(),
        data_dir: agent_dir.clone(),
        force: false,
    })
    .await
    .expect("enroll");
    let device = enrolled.device_id.clone();
    let key_mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(agent_dir.join("agent.key"))
            .expect("key")
            .permissions()
            .mode()
    };
    assert_eq!(key_mode & 0o777, 0o600);

    // The token was single-use: a second enrollment is refused, and says why.
    let again = steward_agent::enroll(&EnrollOptions {
        name: None,
        package: pkg_path,
        data_dir: tmp.path().join("agent2"),
        force: false,
    })
    .await
    .expect_err("token used up");
    assert_eq!(again.id(), ids::SERVER_REJECTED);
    assert!(
        again
            .api_id()
            .is_some_and(|id| id.starts_with("ENROLL-TOKEN-")),
        "{again}"
    );

    let agent = RunningAgent::start(agent_dir.clone());

    // It checks in: the server sees it with its inventory and connection path.
    let service = server.service();
    let detail = eventually("the first check-in", Duration::from_secs(20), || {
        let service = service.clone();
        let device = device.clone();
        async move {
            let d = service.device(&device).await.ok()?;
            (d.summary.last_checkin.is_some() && d.inventory.is_some()).then_some(d)
        }
    })
    .await;
    assert!(
        detail.summary.connection_path.is_some(),
        "{:?}",
        detail.summary
    );
    let inv = detail.inventory.expect("inventory");
    assert!(!inv.hostname.is_empty() && inv.cpu_count >= 1);

    // A task reaches it through the long-poll (not at the 60 s check-in) and its result comes
    // back within seconds.
    let started = Instant::now();
    let task = service
        .create_task(
            &admin(),
            NewTask {
                command: "sh".to_owned(),
                args: vec!["-c".to_owned(), "echo hello from $0".to_owned()],
                timeout_secs: 30,
                target: format!("device:{device}"),
            },
        )
        .await
        .expect("task");
    let result = eventually("the task result", Duration::from_secs(20), || {
        let service = service.clone();
        async move {
            let t = service.task(task.id).await.ok()?;
            t.results
                .into_iter()
                .find(|r| r.state == TaskState::Succeeded)
        }
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result.output.as_deref(), Some("hello from sh\n"));
    assert_eq!(result.exit_code, Some(0));
    eventually(
        "the ack to empty the outbox",
        Duration::from_secs(10),
        || async { (Outbox::count_waiting(&agent_dir.join("outbox")) == 0).then_some(()) },
    )
    .await;

    // Outage: a task is delivered, the server goes away while it runs, the result waits in
    // the outbox; after the restart it arrives, exactly once.
    let slow = service
        .create_task(
            &admin(),
            NewTask {
                command: "sh".to_owned(),
                args: vec!["-c".to_owned(), "sleep 2; echo survived".to_owned()],
                timeout_secs: 30,
                target: format!("device:{device}"),
            },
        )
        .await
        .expect("task");
    // Started on the agent, not only handed out: the server marks a task running when it
    // commits the hand-out, a moment before the answer carrying it is on its way (a stop in
    // between leaves it to the redelivery an interval later).
    let log_file = agent_dir.join("logs/agent.log");
    let started_line = format!(" {} task {} started", ids::TASK_STARTED, slow.id);
    eventually(
        "the slow task to start on the agent",
        Duration::from_secs(15),
        || async {
            std::fs::read_to_string(&log_file)
                .ok()?
                .contains(&started_line)
                .then_some(())
        },
    )
    .await;
    let t = service.task(slow.id).await.expect("task");
    assert_eq!(t.results[0].state, TaskState::Running);
    drop(service);
    server.shutdown().await.expect("server stops");
    let outbox_file = agent_dir.join(format!("outbox/{}.json", slow.id));
    eventually(
        "the result in the outbox",
        Duration::from_secs(15),
        || async { outbox_file.exists().then_some(()) },
    )
    .await;
    // Let the agent fail at least one check-in against the stopped server.
    eventually("a failed check-in", Duration::from_secs(15), || async {
        let s = steward_agent::status::status(&agent_dir).ok()?;
        (s.consecutive_failures > 0).then_some(s)
    })
    .await;

    let server = start_server(&server_dir, agent_port).await;
    let service = server.service();
    let result = eventually(
        "the result after the restart",
        Duration::from_secs(40),
        || {
            let service = service.clone();
            async move {
                let t = service.task(slow.id).await.ok()?;
                t.results
                    .into_iter()
                    .find(|r| r.state == TaskState::Succeeded)
            }
        },
    )
    .await;
    assert_eq!(result.output.as_deref(), Some("survived\n"));
    let t = service.task(slow.id).await.expect("task");
    assert_eq!(t.results.len(), 1, "exactly one result per device");
    eventually(
        "the ack after the restart",
        Duration::from_secs(15),
        || async { (!outbox_file.exists()).then_some(()) },
    )
    .await;

    // The agent reported the outage as its last error, and the log names it and the recovery.
    // The state file is written at the end of the check-in that carried the ack.
    let status = eventually(
        "the state after recovery",
        Duration::from_secs(10),
        || async {
            let s = steward_agent::status::status(&agent_dir).ok()?;
            (s.consecutive_failures == 0).then_some(s)
        },
    )
    .await;
    assert_eq!(status.device_id.as_deref(), Some(device.as_str()));
    assert!(status.last_checkin_at.is_some());
    let last = status.last_error.expect("the outage is remembered");
    assert_eq!(last.id, ids::CONNECTION_REFUSED, "{last:?}");
    let d = service.device(&device).await.expect("device");
    assert_eq!(
        d.summary.last_error.map(|e| e.id).as_deref(),
        Some(ids::CONNECTION_REFUSED),
        "the console shows the fault the agent met"
    );

    agent.stop();
    server.shutdown().await.expect("server stops");

    let log = std::fs::read_to_string(agent_dir.join("logs/agent.log")).expect("log");
    for id in [
        ids::ENROLLED,
        ids::STARTED,
        ids::CONNECTED,
        ids::CONFIG_UPDATED,
        ids::INVENTORY_SENT,
        ids::TASK_STARTED,
        ids::TASK_FINISHED,
        ids::RESULT_ACKED,
        ids::CONNECTION_REFUSED,
        ids::STOPPED,
    ] {
        assert!(
            log.contains(&format!(" {id} ")),
            "no {id} in the log:\n{log}"
        );
    }
    if std::env::var_os("E2E_SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    let findings = steward_doctor::logs::analyze(&log);
    let refused = findings
        .iter()
        .find(|f| f.id == ids::CONNECTION_REFUSED)
        .expect("the doctor names the outage");
    assert_eq!(
        refused.severity,
        steward_doctor::Severity::Warning,
        "recovered"
    );
}

/// A server in `tmp/server`, started on a fixed agent port.
async fn server_in(tmp: &Path) -> (PathBuf, u16, RunningServer) {
    let server_dir = tmp.join("server");
    let mut init = InitOptions::new(server_dir.clone(), vec!["localhost".to_owned()]);
    init.ip_addrs = vec!["127.0.0.1".parse().expect("ip")];
    init.admin_password = Some("correct horse battery".to_owned());
    init.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    steward_server::init(init).await.expect("server init");
    let port = free_port();
    let server = start_server(&server_dir, port).await;
    (server_dir, port, server)
}

fn agent_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_steward-agent"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_survives_kill_9_mid_task_without_running_it_twice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server_dir, _port, server) = server_in(tmp.path()).await;
    let service = server.service();
    let agent_dir = tmp.path().join("agent");

    // enroll: a corrupt package is refused with its ID and exit status 2.
    let bad = tmp.path().join("bad.pkg");
    std::fs::write(&bad, b"{\"format\":\"steward-bootstrap/1\",\"profile\":").expect("write");
    let out = agent_bin()
        .args(["enroll", "--package"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(&agent_dir)
        .output()
        .expect("enroll");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("AGENT-PACKAGE-INVALID: "), "{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let package = service
        .new_package(
            &admin(),
            NewPackage {
                expires_secs: 600,
                max_uses: 5,
                tags: vec![],
            },
        )
        .await
        .expect("package");
    let pkg = tmp.path().join("agent.pkg");
    std::fs::write(&pkg, serde_json::to_vec(&package).expect("json")).expect("write");
    let enroll = |force: bool| {
        let mut c = agent_bin();
        c.args(["enroll", "--package"])
            .arg(&pkg)
            .arg("--data-dir")
            .arg(&agent_dir);
        if force {
            c.arg("--force");
        }
        c.output().expect("enroll")
    };
    let out = enroll(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("enrolled as device "), "{stdout}");
    // Enrolling again refuses without --force.
    let out = enroll(false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    let run = || {
        agent_bin()
            .args(["run", "--data-dir"])
            .arg(&agent_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run")
    };
    let mut agent = run();
    let status_json = || -> Option<serde_json::Value> {
        let out = agent_bin()
            .args(["status", "--format", "json", "--data-dir"])
            .arg(&agent_dir)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let status = eventually("a check-in", Duration::from_secs(20), || async {
        let s = status_json()?;
        s.get("last_checkin_at")?.as_str()?;
        Some(s)
    })
    .await;
    let device = status["device_id"].as_str().expect("device id").to_owned();
    assert!(
        status["certificate"]["sha256"]
            .as_str()
            .is_some_and(|s| s.len() == 64)
    );
    assert_eq!(status["connection"]["kind"], "lan");

    // A task that writes a marker each time it starts, then runs long.
    let marker = tmp.path().join("runs");
    let script = format!("echo run >> {}; sleep 30", marker.display());
    let task = service
        .create_task(
            &admin(),
            NewTask {
                command: "sh".to_owned(),
                args: vec!["-c".to_owned(), script],
                timeout_secs: 60,
                target: format!("device:{device}"),
            },
        )
        .await
        .expect("task");
    eventually("the task to start", Duration::from_secs(15), || async {
        marker.exists().then_some(())
    })
    .await;
    // kill -9 while it runs: no result was written.
    agent.kill().expect("SIGKILL");
    let _ = agent.wait();
    assert_eq!(
        steward_agent::store::Outbox::count_waiting(&agent_dir.join("outbox")),
        0
    );

    let mut agent = run();
    let result = eventually(
        "the interrupted task's result",
        Duration::from_secs(20),
        || {
            let service = service.clone();
            async move {
                let t = service.task(task.id).await.ok()?;
                t.results.into_iter().find(|r| r.state == TaskState::Failed)
            }
        },
    )
    .await;
    assert!(
        result
            .output
            .as_deref()
            .is_some_and(|o| o.contains("not run again")),
        "{result:?}"
    );
    let runs = std::fs::read_to_string(&marker).expect("marker");
    assert_eq!(runs.lines().count(), 1, "the task ran twice");

    // SIGTERM is a graceful stop.
    let pid = rustix::process::Pid::from_raw(i32::try_from(agent.id()).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = agent.wait().expect("wait");
    assert!(status.success(), "{status:?}");

    let log = std::fs::read_to_string(agent_dir.join("logs/agent.log")).expect("log");
    assert!(log.contains(" WARN AGENT-TASK-SKIPPED task "), "{log}");
    assert!(log.contains(" INFO AGENT-STOPPED "), "{log}");
    drop(service);
    server.shutdown().await.expect("server stops");
}

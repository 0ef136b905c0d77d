//! Admission control as the agent meets it: a server whose admission queue is full answers
//! 503 `SERVER-BUSY` with `Retry-After` at once; the agent logs `AGENT-SERVER-BUSY`, comes
//! back after that delay plus jitter, and neither reports a failed way nor an error: the
//! server was reachable and answered. (One test binary: the agent log is process-global.)

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::running::{RunningAgent, eventually, server_with_agent};
use steward_agent::events::{self, LogOptions};
use tracing_subscriber::filter::LevelFilter;

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
    // The agent's log, read back below, is set up before it enrolls.
    events::init(
        &tmp.path().join("agent").join("logs"),
        &LogOptions {
            stderr: false,
            keep_files: 2,
            level: LevelFilter::INFO,
        },
    )
    .expect("agent log");
    // One request at a time, one waiting for at most 20 ms, and come back after 1 s.
    let (server, agent_dir, device) = server_with_agent(
        tmp.path(),
        &[("checkin_interval_secs", "60")],
        &[
            ("max_in_flight = 0", "max_in_flight = 1"),
            ("max_queued = 0", "max_queued = 1"),
            ("queue_wait_ms = 10000", "queue_wait_ms = 20"),
            ("retry_after_secs = 5", "retry_after_secs = 1"),
        ],
    )
    .await;
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

    // Enrollment meets the same queue: a busy answer is waited out (it comes before the
    // token is looked at, so no use of it is spent), and the agent enrolls once let in.
    let slot = admission.admit().await.expect("the only slot");
    let package = service
        .new_package(
            &common::running::admin(),
            steward_proto::admin::NewPackage {
                expires_secs: 600,
                max_uses: 1,
                tags: vec![],
            },
        )
        .await
        .expect("package");
    let pkg_path = tmp.path().join("second.pkg");
    std::fs::write(&pkg_path, serde_json::to_vec(&package).expect("json")).expect("write");
    let busy_before = admission.stats.busy.load(Ordering::Relaxed);
    let opts = steward_agent::EnrollOptions {
        name: Some("second".to_owned()),
        package: pkg_path,
        data_dir: tmp.path().join("second"),
        force: false,
    };
    let enrolling = tokio::spawn(async move { steward_agent::enroll(&opts).await });
    eventually(
        "a busy answer to the enrollment",
        Duration::from_secs(10),
        || {
            let n = admission.stats.busy.load(Ordering::Relaxed);
            async move { (n > busy_before).then_some(()) }
        },
    )
    .await;
    assert!(
        !enrolling.is_finished(),
        "enrollment gave up on a busy server"
    );
    drop(slot);
    let enrolled = tokio::time::timeout(Duration::from_secs(15), enrolling)
        .await
        .expect("enrolled within Retry-After plus jitter")
        .expect("task")
        .expect("enrolled");
    assert!(service.device(&enrolled.device_id).await.is_ok());
    server.shutdown().await.expect("shutdown");
}

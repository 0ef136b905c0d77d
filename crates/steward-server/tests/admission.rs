//! Admission control on the agent site, against the real server on 127.0.0.1:
//! - a full admission queue is answered at once with 503 `SERVER-BUSY` and `Retry-After`, never
//!   a 500 or a time-out, and the long-poll is not held up by it;
//! - the accept loop survives running out of file descriptors (`EMFILE`): it pauses without
//!   spinning, and serves again once descriptors are free.
//!
//! The descriptor test lowers this process's own open-files limit, so the tests of this file
//! take turns.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{TestServer, checkin_request};
use steward_proto::admin::{NewTask, TaskCreated, paths as admin};
use steward_proto::{ApiError, EnrollRequest, paths};

/// The descriptor test lowers this process's limit: the tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `true` on every device.
fn task_for_all() -> NewTask {
    NewTask {
        command: "true".into(),
        args: Vec::new(),
        timeout_secs: 30,
        target: "all".into(),
    }
}

fn set_limits(ts: &TestServer, lines: &[(&str, &str)]) {
    let toml = ts.data_dir().join("steward.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    for (from, to) in lines {
        assert!(text.contains(from), "{from} not in steward.toml");
        text = text.replace(from, to);
    }
    std::fs::write(&toml, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_answered_503_with_retry_after_at_once() {
    let _turn = SERIAL.lock().await;
    let mut ts = TestServer::start().await;
    set_limits(
        &ts,
        &[
            ("max_in_flight = 0", "max_in_flight = 1"),
            ("max_queued = 0", "max_queued = 1"),
            ("queue_wait_ms = 10000", "queue_wait_ms = 1000"),
            ("retry_after_secs = 5", "retry_after_secs = 7"),
        ],
    );
    ts.restart().await;
    let pkg = ts.package(3600, 5, &[]).await;
    let agent = ts.enroll(&pkg.token, "busy-1").await.unwrap();
    let first = agent.checkin(&checkin_request(0)).await.unwrap();
    let version = first.config.unwrap().version;

    let service = ts.running().service();
    let admission = service.admission();
    assert_eq!(admission.limits().max_in_flight, 1);
    let slot = admission.admit().await.unwrap();

    // Enrollment and check-in are gated: 503, the ID, Retry-After, within the queue wait.
    let started = Instant::now();
    let resp = ts
        .anonymous_agent()
        .post(ts.agent_url(paths::ENROLL))
        .json(&EnrollRequest {
            token: pkg.token.clone(),
            csr_pem: String::new(),
            hostname: "busy-2".into(),
            agent_version: "test".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    let body: ApiError = resp.json().await.unwrap();
    assert_eq!(body.id, "SERVER-BUSY");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, err) = agent.checkin(&checkin_request(version)).await.unwrap_err();
    assert_eq!((status, err.id.as_str()), (503, "SERVER-BUSY"));
    assert!(admission.stats.busy.load(Ordering::Relaxed) >= 2);

    // The long-poll is not gated: it is held (and the device is connected) while busy.
    let connected = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let devices = service.devices().await.unwrap();
        devices.iter().any(|d| d.id == agent.id && d.connected)
    };
    tokio::select! {
        w = agent.wait(version) => panic!("the long-poll was answered, not held: {w:?}"),
        c = connected => assert!(c, "a device with an open long-poll shows as connected"),
    }

    // A task created while the server is busy, before the agent's next long-poll: that poll
    // must still find it at once (its first look reads without a slot). Skipping the look
    // would lose the wake-up, which fired before the poll registered, and the agent would
    // hear of the task only at its next interval.
    let created: TaskCreated = ts.post_admin(admin::TASKS, &task_for_all()).await.unwrap();
    assert_eq!(created.targets, 1);
    let reason = tokio::time::timeout(Duration::from_secs(5), agent.wait(version))
        .await
        .expect("a long-poll started after the task was created is answered at once, even busy");
    assert_eq!(reason.as_deref(), Some("tasks"));
    // Asked to carry the tasks while busy, the poll queues for a slot (taking them is a
    // write) and, with none within the queue wait, only says "tasks": the check-in fetches
    // them.
    let busy_wake = tokio::time::timeout(Duration::from_secs(5), agent.wait_carry(version))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(busy_wake.reason, "tasks");
    assert!(busy_wake.tasks.is_empty(), "{busy_wake:?}");

    // Free again: the poll carries the task, and the check-in has nothing left to hand out.
    drop(slot);
    let carried = agent.wait_carry(version).await.unwrap();
    assert_eq!(carried.reason, "tasks");
    let ids: Vec<u64> = carried.tasks.iter().map(|t| t.task_id).collect();
    assert_eq!(ids, vec![created.id]);
    assert!(agent.tasks_handed_out(version).await.is_empty());

    // A held poll woken while busy queues for a slot rather than answering "check in now",
    // and carries the task once one comes free within the queue wait.
    let slot = admission.admit().await.unwrap();
    let held = tokio::spawn({
        let agent = agent.clone();
        async move { agent.wait_carry(version).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued: TaskCreated = ts.post_admin(admin::TASKS, &task_for_all()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!held.is_finished(), "a woken poll waits for a slot");
    drop(slot);
    let woke = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ids: Vec<u64> = woke.tasks.iter().map(|t| t.task_id).collect();
    assert_eq!((woke.reason.as_str(), ids), ("tasks", vec![queued.id]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_survives_running_out_of_file_descriptors() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let _turn = SERIAL.lock().await;

    let ts = TestServer::start().await;
    let service = ts.running().service();
    let stats = &service.admission().stats;
    let addr = ts.running().agent_addr;
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let before = getrlimit(Resource::Nofile);
    let mut low = before;
    low.current = Some(open + 24);
    setrlimit(Resource::Nofile, low).unwrap();

    // Connections until this process (client and server side alike) is out of descriptors:
    // some wait in the kernel's backlog, and the server's accept meets EMFILE.
    let mut held = Vec::new();
    for _ in 0..64 {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let errors = stats.accept_errors.load(Ordering::Relaxed);
    assert!(errors > 0, "the server met no accept error");
    // A pause that grows (50 ms doubling to 1 s), not a spin: a handful in 1.5 s.
    assert!(errors < 30, "{errors} accept errors: the loop spins");

    // Descriptors free again: the server serves on.
    drop(held);
    setrlimit(Resource::Nofile, before).unwrap();
    let mut served = false;
    for _ in 0..50 {
        let r = ts
            .anonymous_agent()
            .get(ts.agent_url(paths::PING))
            .send()
            .await;
        if let Ok(resp) = r {
            // No client certificate: refused, by a server that is serving.
            assert_eq!(resp.status().as_u16(), 401);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the agent site did not serve again");
}

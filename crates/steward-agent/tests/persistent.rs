//! The persistent connection against the real server, in-process on 127.0.0.1:
//! - the long-poll is answered before the agent's deadline, so the agent checks in over the
//!   same kept-alive connection interval after interval: N intervals, one TLS handshake; and
//!   each check-in goes on as that long-poll (held), without a long-poll request of its own;
//! - with the policy's `persistent_connection` on, the device shows as connected and a task
//!   reaches the agent in well under a second; with it off, the agent holds nothing, is not
//!   connected, and gets the task at its next check-in;
//! - a quick task's result goes back over the held connection: no handshake per task.
//!
//! Bounds are loose on purpose (the machine is shared): these are not timing benchmarks.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::running::{RunningAgent, admin, eventually, server_with_agent};
use steward_proto::admin::{NewTask, TaskState};
use steward_server::Service;

async fn connected(service: &Arc<Service>, device: &str) -> bool {
    service
        .devices()
        .await
        .expect("devices")
        .iter()
        .any(|d| d.id == device && d.connected)
}

/// Waits (at most 30 s) until the device holds its persistent connection.
async fn until_connected(service: &Arc<Service>, device: &str) {
    eventually(
        "the device to be connected",
        Duration::from_secs(30),
        || {
            let service = service.clone();
            let device = device.to_owned();
            async move { connected(&service, &device).await.then_some(()) }
        },
    )
    .await;
}

/// The device's last check-in (RFC 3339) as the server saw it.
async fn last_checkin(service: &Arc<Service>, device: &str) -> Option<String> {
    service.device(device).await.ok()?.summary.last_checkin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_checks_in_interval_after_interval_over_one_connection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The shortest interval a policy allows, no jitter: three intervals in 16 s. The long-poll
    // (50 s) is longer than the interval: the server must answer at the agent's `wait`.
    let (server, agent_dir, device) = server_with_agent(
        tmp.path(),
        &[("checkin_interval_secs", "5"), ("jitter_percent", "0")],
        &[],
    )
    .await;
    let service = server.service();
    let stats = &service.admission().stats;
    let agent = RunningAgent::start(agent_dir);
    let first = eventually("the first check-in", Duration::from_secs(30), || {
        let service = service.clone();
        let device = device.clone();
        async move { last_checkin(&service, &device).await }
    })
    .await;
    // Enrollment was one connection, the agent's first check-in another.
    let handshakes = stats.handshakes.load(Ordering::Relaxed);
    assert!(handshakes >= 2, "handshakes are counted: {handshakes}");
    let polls = stats.long_polls.load(Ordering::Relaxed);
    let held = stats.held_checkins.load(Ordering::Relaxed);
    // Three more check-ins (the last-seen time moves on each; it has second resolution, so
    // each is waited for separately).
    let mut seen = first;
    for i in 0..3 {
        seen = eventually(
            &format!("check-in {} after the first", i + 1),
            Duration::from_secs(20),
            || {
                let service = service.clone();
                let device = device.clone();
                let before = seen.clone();
                async move {
                    last_checkin(&service, &device)
                        .await
                        .filter(|t| *t != before)
                }
            },
        )
        .await;
    }
    assert_eq!(
        stats.handshakes.load(Ordering::Relaxed),
        handshakes,
        "every check-in after the first went over the kept-alive connection"
    );
    // And each went on as the long-poll until the next (the interval is shorter than the
    // server's hold): no long-poll request of its own. (One may have followed the first
    // check-in, which brought the configuration and so was not held.)
    let held = stats.held_checkins.load(Ordering::Relaxed) - held;
    assert!(held >= 3, "{held} check-ins held");
    assert!(
        stats.long_polls.load(Ordering::Relaxed) <= polls + 1,
        "long-polls of their own: {} before, {} after",
        polls,
        stats.long_polls.load(Ordering::Relaxed)
    );
    assert!(connected(&service, &device).await);
    agent.stop();
    server.shutdown().await.expect("shutdown");
}

/// The time from the task's creation until the agent has it (running, or already finished).
async fn delivery(service: &Arc<Service>, device: &str) -> (Duration, Duration) {
    let created = Instant::now();
    let task = service
        .create_task(
            &admin(),
            NewTask {
                command: "true".to_owned(),
                args: vec![],
                timeout_secs: 30,
                target: format!("device:{device}"),
            },
        )
        .await
        .expect("task");
    let state = |service: Arc<Service>| async move {
        let t = service.task(task.id).await.ok()?;
        t.results.first().map(|r| r.state)
    };
    let started = eventually(
        "the agent to take the task",
        Duration::from_secs(30),
        || {
            let s = state(service.clone());
            async move { s.await.filter(|s| *s != TaskState::Pending) }
        },
    )
    .await;
    let took = created.elapsed();
    if started != TaskState::Succeeded {
        eventually("the task's result", Duration::from_secs(30), || {
            let s = state(service.clone());
            async move { s.await.filter(|s| *s == TaskState::Succeeded) }
        })
        .await;
    }
    (took, created.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_task_is_reported_over_the_held_connection() {
    // The task comes with a wake-up; it ends at once. Its report must not abandon a long-poll
    // (and the connection with it): in a fan-out that would be a TLS handshake per agent.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, agent_dir, device) =
        server_with_agent(tmp.path(), &[("checkin_interval_secs", "60")], &[]).await;
    let service = server.service();
    let stats = &service.admission().stats;
    let agent = RunningAgent::start(agent_dir);
    until_connected(&service, &device).await;
    let handshakes = stats.handshakes.load(Ordering::Relaxed);
    for round in 0..2 {
        let (took, result) = delivery(&service, &device).await;
        eprintln!("round {round}: task taken after {took:?}, result after {result:?}");
        assert!(
            took < Duration::from_secs(2),
            "round {round}: a task reached a connected agent after {took:?}"
        );
        assert!(
            result < Duration::from_secs(10),
            "round {round}: {result:?}"
        );
    }
    assert_eq!(
        stats.handshakes.load(Ordering::Relaxed),
        handshakes,
        "both tasks were taken and reported over the connection held before them"
    );
    agent.stop();
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_agent_gets_a_task_at_once_and_an_unconnected_one_at_its_interval() {
    // On (the default): an interval of a minute, yet the task arrives in well under a second.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, agent_dir, device) =
        server_with_agent(tmp.path(), &[("checkin_interval_secs", "60")], &[]).await;
    let service = server.service();
    let agent = RunningAgent::start(agent_dir);
    until_connected(&service, &device).await;
    let (took, result) = delivery(&service, &device).await;
    eprintln!("persistent: task taken after {took:?}, result after {result:?}");
    assert!(
        took < Duration::from_secs(2),
        "a task reached a connected agent after {took:?}"
    );
    assert!(result < Duration::from_secs(20), "{result:?}");
    agent.stop();
    server.shutdown().await.expect("shutdown");

    // Off: nothing is held; the task waits for the next check-in (interval 10 s).
    let tmp = tempfile::tempdir().expect("tempdir");
    let (server, agent_dir, device) = server_with_agent(
        tmp.path(),
        &[
            ("checkin_interval_secs", "10"),
            ("jitter_percent", "0"),
            ("persistent_connection", "false"),
        ],
        &[],
    )
    .await;
    let service = server.service();
    let agent = RunningAgent::start(agent_dir);
    eventually("the first check-in", Duration::from_secs(30), || {
        let service = service.clone();
        let device = device.clone();
        async move { last_checkin(&service, &device).await }
    })
    .await;
    // Held connections would show within a moment; none does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!connected(&service, &device).await);
    let detail = service.device(&device).await.expect("device");
    assert!(
        detail.applied_policies.iter().any(|p| p
            .values
            .get("persistent_connection")
            .map(String::as_str)
            == Some("false")),
        "{:?}",
        detail.applied_policies
    );
    let (took, _) = delivery(&service, &device).await;
    // At the next check-in: at most one interval (10 s) from now, with some slack; and not
    // pushed (the check-in is 8 s away at least, give or take the loaded machine).
    assert!(took < Duration::from_secs(16), "{took:?}");
    assert!(
        took > Duration::from_secs(2),
        "pushed without a held connection? {took:?}"
    );
    assert!(!connected(&service, &device).await);
    agent.stop();
    server.shutdown().await.expect("shutdown");
}

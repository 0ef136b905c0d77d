//! The bench against a real in-process server on loopback: identities enrolled through the
//! enrollment route, a small swarm in both modes (with a task fan-out over held connections),
//! the same swarm spread over two child processes, the handshake ceiling's bare server, and
//! the JSON report.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_bench::net::Target;
use steward_bench::report::SwarmReport;
use steward_bench::swarm::{SwarmOptions, TaskLaunch};
use steward_bench::{BenchError, ProgressBar, handshake, identity, multi, swarm};
use steward_proto::admin::{NewPackage, NewTask};
use steward_server::{
    AdminUser, DataDir, InitOptions, RunningServer, Server, ServerOverrides, Service,
};

const AGENTS: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn admin() -> AdminUser {
    AdminUser {
        username: "bench-test".into(),
    }
}

/// Without `persistent`: a 2 s interval for 5 s. With it: a 4 s interval for 10 s and the
/// task at 6.5 s, once every agent has checked in and most have checked in unchanged once
/// (over their held connection); an agent that got the task only at its next check-in would
/// have waited at least 3.6 s, a long-poll wakes it at once.
fn options(persistent: bool) -> SwarmOptions {
    let (interval, duration, task) = if persistent {
        (4, 10, 6500)
    } else {
        (2, 5, 4500)
    };
    SwarmOptions {
        agents: AGENTS,
        interval: Duration::from_secs(interval),
        jitter_percent: 10,
        duration: Duration::from_secs(duration),
        persistent,
        task_after: Duration::from_millis(task),
        sources: 4,
        timeout: Duration::from_secs(10),
        resumption: true,
        server_pid: Some(std::process::id()),
        resume: None,
    }
}

fn assert_clean(r: &SwarmReport) {
    assert!(
        r.errors.is_empty(),
        "errors: {:?} {:?}",
        r.errors,
        r.error_examples
    );
    assert_eq!(r.agents_checked_in, AGENTS as u64);
    assert_eq!(r.first_contact.count, AGENTS as u64);
    // Every agent checks in within the first interval, then every interval ± 10% (and twice
    // more for a task): a handful each, never a loop.
    assert!(r.checkins >= AGENTS as u64, "{} check-ins", r.checkins);
    assert!(r.checkins <= 8 * AGENTS as u64, "{} check-ins", r.checkins);
    assert!(r.latency.count > 0);
    assert!(r.full_handshakes >= AGENTS as u64);
    assert_eq!(r.aborted, 0);
    let server = r.server.unwrap();
    assert!(server.rss_end_mib > 1.0);
    assert_eq!(r.limits_hit.len(), 0);
}

/// A server initialised in `data` and started on loopback.
async fn start_server(data: &Path) -> RunningServer {
    let mut opts = InitOptions::new(data, vec!["localhost".into()]);
    opts.ip_addrs = vec!["127.0.0.1".parse().unwrap()];
    opts.admin_password = Some("correct horse battery".into());
    opts.crl_addr = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
    steward_server::init(opts).await.unwrap();
    let loopback = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    Server::start(
        data,
        ServerOverrides {
            agent_addr: loopback,
            console_addr: loopback,
            crl_addr: None,
        },
    )
    .await
    .unwrap()
}

/// The fan-out task, created through the service as the admin API does.
fn task_for_all(svc: Arc<Service>) -> TaskLaunch {
    Box::pin(async move {
        svc.create_task(
            &admin(),
            NewTask {
                command: "true".into(),
                args: vec![],
                timeout_secs: 30,
                target: "all".into(),
            },
        )
        .await
        .map(|c| c.id)
        .map_err(|e| format!("{e:?}"))
    })
}

/// `steward bench prepare` of `n` identities into `out`, from one package of the server's.
async fn prepare(
    service: &steward_server::Service,
    out: &std::path::Path,
    n: usize,
) -> identity::PrepareReport {
    let package = service
        .new_package(
            &admin(),
            NewPackage {
                expires_secs: 600,
                max_uses: n as u32,
                tags: vec![],
            },
        )
        .await
        .unwrap();
    identity::prepare(
        &package,
        &identity::PrepareOptions {
            agents: n,
            concurrency: 4,
            out: out.to_path_buf(),
            timeout: Duration::from_secs(10),
        },
        &ProgressBar::hidden(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_then_swarm_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(&data).await;
    let service = server.service();

    // prepare: every identity enrolled, the private keys readable by the owner only.
    let ids_dir = dir.path().join("ids");
    let report = prepare(&service, &ids_dir, AGENTS).await;
    assert_eq!(report.enrolled, AGENTS, "{report:?}");
    assert!(report.errors.is_empty());
    assert!(report.rate_per_sec > 0.0);
    let mode = |p: &str| {
        std::fs::metadata(ids_dir.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("identities.jsonl"), 0o600);
    assert_eq!(mode(""), 0o700);
    assert!(matches!(
        identity::load(&ids_dir, AGENTS + 1),
        Err(BenchError::TooFewIdentities { have, .. }) if have == AGENTS
    ));
    let (meta, ids) = identity::load(&ids_dir, AGENTS).unwrap();
    assert_eq!(meta.count, AGENTS);
    let devices: std::collections::HashSet<_> = ids.iter().map(|i| &i.device_id).collect();
    assert_eq!(
        devices.len(),
        AGENTS,
        "each identity is a device of its own"
    );
    let server_addr = meta.servers.first().unwrap();
    let target = Target::resolve(&server_addr.host, server_addr.port).unwrap();

    // A connection per check-in.
    let r = swarm::run(
        ids.clone(),
        &meta.trust_anchors_pem,
        target.clone(),
        false,
        options(false),
        None,
        ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_clean(&r);
    assert_eq!(r.full_handshakes + r.resumed_handshakes, r.checkins);
    // 20 agents fit the server's session cache: later connections resume.
    assert!(r.resumed_handshakes > 0, "{r:?}");

    // Held connections with the long-poll, and a task for all of them at 6.5 s.
    let task = task_for_all(service.clone());
    let r = swarm::run(
        ids.clone(),
        &meta.trust_anchors_pem,
        target.clone(),
        false,
        options(true),
        Some(task),
        ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_clean(&r);
    let fan = r.fan_out.clone().unwrap();
    assert_eq!(fan.woken, AGENTS as u64, "{fan:?}");
    assert_eq!(fan.results, AGENTS as u64, "{fan:?}");
    // Woken by the long-poll, well before the next check-in was due (at least 3.6 s).
    assert!(fan.wake_latency.max_ms.unwrap() < 2500.0, "{fan:?}");
    assert!(fan.all_results_s.unwrap() < 3.4, "{fan:?}");
    // The long-poll is answered before the check-in is due (`wait`), so every agent kept its
    // one connection across its intervals and the fan-out: one handshake each.
    assert_eq!(
        r.full_handshakes + r.resumed_handshakes,
        AGENTS as u64,
        "{r:?}"
    );
    assert!((r.connections_per_agent - 1.0).abs() < 1e-9, "{r:?}");
    assert_eq!(r.busy, 0);
    // Every check-in that left the agent nothing to do went on as the long-poll after it:
    // the unchanged ones and those that delivered the results. (Not the first, which brings
    // the configuration, nor one that met the new task and brought it.)
    assert!(r.latency.count > 0, "{r:?}");
    assert_eq!(r.checkins_held, r.latency.count + fan.results, "{r:?}");

    // Resumed as a restarted fleet: the versions held before, no inventory. The agents keep
    // the profile acknowledged (one that forgot it would acknowledge it again: a device write
    // per agent that a restarted fleet does not make).
    let held = swarm::Resume {
        config_version: r.config_version.unwrap(),
        profile_version: r.profile_version.unwrap(),
    };
    assert!(held.profile_version > 0, "{r:?}");
    let resumed = swarm::run(
        ids,
        &meta.trust_anchors_pem,
        target,
        false,
        SwarmOptions {
            resume: Some(held),
            ..options(false)
        },
        None,
        ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_clean(&resumed);
    assert_eq!(resumed.config_version, Some(held.config_version));
    assert_eq!(resumed.profile_version, Some(held.profile_version));

    // The JSON report is one document that reads back.
    let json = serde_json::to_string(&r).unwrap();
    let back: SwarmReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.checkins, r.checkins);
    assert!(r.text().contains("fan-out:"));

    // The handshake ceiling's bare server, briefly.
    let dd = DataDir::new(&data);
    let cfg = handshake::bare_config(
        &dd.agent_cert(),
        &dd.issuing_cert(),
        &dd.agent_key(),
        &dd.root_cert(),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, serving) = handshake::serve_bare(cfg, stop.clone()).await.unwrap();
    let (_, few) = identity::load(&ids_dir, 2).unwrap();
    let mut bare = Target::resolve("localhost", addr.port()).unwrap();
    bare.addr = addr;
    for resumed in [false, true] {
        let f = handshake::measure(
            "bare",
            &bare,
            &few,
            &meta.trust_anchors_pem,
            resumed,
            Duration::from_millis(500),
            &|| None,
        )
        .await
        .unwrap();
        assert!(f.handshakes > 0 && f.errors.is_empty(), "{f:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    serving.await.unwrap();
    server.shutdown().await.unwrap();
}

/// Set in a child of `swarm_over_two_processes`: what it runs (a [`ChildSpec`] in JSON).
const CHILD_ENV: &str = "STEWARD_BENCH_TEST_SWARM_CHILD";

#[derive(Serialize, Deserialize)]
struct ChildSpec {
    ids: PathBuf,
    slice: usize,
    processes: usize,
    opts: SwarmOptions,
}

/// Not a test of its own: the child swarm process of `swarm_over_two_processes`, which starts
/// this test binary again with only this test and CHILD_ENV set, as `steward bench swarm`
/// starts itself with `--slice K/P`. Without CHILD_ENV it does nothing.
#[test]
fn swarm_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: ChildSpec = serde_json::from_str(&spec).unwrap();
    let range = multi::slice(spec.opts.agents, spec.slice, spec.processes);
    let (meta, ids) = identity::load_range(&spec.ids, range.clone()).unwrap();
    let at = meta.servers.first().unwrap();
    let target = Target::resolve(&at.host, at.port).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(multi::run_child(
        ids,
        range.start,
        &meta.trust_anchors_pem,
        target,
        spec.opts,
    ))
    .unwrap();
}

/// The persistent swarm with its fan-out, its 40 agents in two child processes of 20: one
/// report, as if one process had run them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_over_two_processes() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data")).await;
    let service = server.service();
    let ids_dir = dir.path().join("ids");
    let enrolled = prepare(&service, &ids_dir, N).await;
    assert_eq!(enrolled.enrolled, N);

    let opts = SwarmOptions {
        agents: N,
        ..options(true)
    };
    let exe = std::env::current_exe().unwrap();
    let child_opts = opts.clone();
    let spawn = move |k: usize| {
        let spec = ChildSpec {
            ids: ids_dir.clone(),
            slice: k,
            processes: 2,
            opts: child_opts.clone(),
        };
        let mut cmd = std::process::Command::new(&exe);
        // `--quiet`: the harness would otherwise print "test swarm_child_process ... " at the
        // start of the line of the child's first protocol message.
        cmd.args(["swarm_child_process", "--exact", "--quiet", "--nocapture"])
            .env(CHILD_ENV, serde_json::to_string(&spec).unwrap());
        cmd
    };
    let r = multi::run_parent(
        spawn,
        multi::ParentOptions {
            processes: 2,
            opts,
            target: "loopback".into(),
            via_gateway: false,
        },
        Some(task_for_all(service.clone())),
        ProgressBar::hidden(),
    )
    .await
    .unwrap();

    assert_eq!(r.processes, 2);
    assert_eq!(r.agents, N);
    assert!(
        r.errors.is_empty(),
        "errors: {:?} {:?}",
        r.errors,
        r.error_examples
    );
    assert_eq!(r.aborted, 0);
    // Every agent of both processes checked in, and every check-in is in the per-second
    // series the children's series were added into.
    assert_eq!(r.agents_checked_in, N as u64);
    assert_eq!(r.first_contact.count, N as u64);
    assert!(
        r.checkins >= N as u64 && r.checkins <= 8 * N as u64,
        "{r:?}"
    );
    assert_eq!(
        r.timeline.iter().map(|s| s.checkins).sum::<u64>(),
        r.checkins
    );
    // Held connections: one handshake per agent, over both processes.
    assert_eq!(r.full_handshakes + r.resumed_handshakes, N as u64, "{r:?}");
    // The fan-out, created by the parent, measured by the children from the parent's instant:
    // every agent woken by its long-poll well before its next check-in (at least 3.6 s).
    let fan = r.fan_out.clone().unwrap();
    assert!(fan.task_id.is_some());
    assert_eq!(fan.woken, N as u64, "{fan:?}");
    assert_eq!(fan.results, N as u64, "{fan:?}");
    assert_eq!(fan.result_latency.count, N as u64);
    assert!(fan.wake_latency.max_ms.unwrap() < 2500.0, "{fan:?}");
    assert!(fan.all_results_s.unwrap() < 3.4, "{fan:?}");
    assert!((6.4..7.5).contains(&fan.created_at_s), "{fan:?}");
    // The server sampled by the parent, the swarm's use summed over the children.
    assert!(r.server.unwrap().rss_end_mib > 1.0);
    let own = r.swarm.unwrap();
    assert_eq!(own.pid, std::process::id());
    // Read after the agents stopped, so no held sockets; two processes' threads at least.
    assert!(own.rss_end_mib > 1.0 && own.threads_end >= 2, "{own:?}");
    assert!(r.text().contains("in 2 processes"), "{}", r.text());
    server.shutdown().await.unwrap();
}

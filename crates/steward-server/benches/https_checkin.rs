//! The full HTTPS path of an unchanged check-in: an in-process server on 127.0.0.1 and fake
//! agents in the same process, each really enrolled (its own key pair from
//! `steward_pki::make_csr`, its own certificate from the server's CA) and checking in over
//! mutual TLS. Prints a table of check-ins/s and latency (p50/p99/max, measured by the client
//! from the moment the request was due) for each scenario:
//!
//! - `keep-alive`, closed loop: K agents, each sending its next check-in as soon as the last
//!   one is answered, over one persistent connection each: the most the server does.
//! - `keep-alive`, paced: P agents together at the design's 1,700 check-ins/s (100,000 agents,
//!   60 s interval): the latency at the budget's load.
//! - `new conn.`: the same, but every check-in opens a new connection with a full mutual-TLS
//!   handshake (no session resumption), as an agent whose idle connection was closed does.
//!
//! Every loop is bounded in time (`STEWARD_BENCH_SECS`, default 10 s per scenario) and in
//! count; everything stays on loopback. Knobs: `STEWARD_BENCH_DEVICES` (fleet already in the
//! database, default 10,000), `STEWARD_BENCH_AGENTS` (closed-loop K list, default 1,16,64),
//! `STEWARD_BENCH_RATE` (default 1700), `STEWARD_BENCH_PACED_AGENTS` (default 256).
//!
//! Run: `cargo bench -p steward-server --bench https_checkin`. Under `cargo test --benches` (no
//! `--bench` argument) it runs a smoke version of about five seconds.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use steward_proto::paths;
use support::{
    BenchServer, Conn, Identity, enroll, full_run, inventory, nothing_new, post, unchanged,
};

/// Most check-ins one agent makes in one scenario, whatever the time left.
const MAX_PER_AGENT: usize = 2_000_000;

struct Settings {
    secs: u64,
    devices: usize,
    closed: Vec<usize>,
    rate: u32,
    paced_agents: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Self {
        if !full_run() {
            return Self {
                secs: 1,
                devices: 100,
                closed: vec![2],
                rate: 40,
                paced_agents: 4,
            };
        }
        let closed = std::env::var("STEWARD_BENCH_AGENTS")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|k| k.trim().parse().ok())
                    .filter(|&k| k > 0)
                    .collect::<Vec<usize>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![1, 16, 64]);
        Self {
            secs: env_or("STEWARD_BENCH_SECS", 10u64).clamp(1, 600),
            devices: env_or("STEWARD_BENCH_DEVICES", 10_000usize).min(1_000_000),
            closed,
            rate: env_or("STEWARD_BENCH_RATE", 1_700u32).max(1),
            paced_agents: env_or("STEWARD_BENCH_PACED_AGENTS", 256usize).clamp(1, 4096),
        }
    }
}

fn client(server: &BenchServer, identity: Option<&Identity>, conn: Conn) -> reqwest::Client {
    support::client(
        &server.root_pem,
        identity,
        conn,
        server.running().agent_addr,
    )
}

fn agent_url(server: &BenchServer, path: &str) -> String {
    support::agent_url(server.running().agent_addr, path)
}

/// First contact of an enrolled agent: take the configuration, send the inventory. From then
/// on its check-ins are unchanged.
async fn prepare(server: &BenchServer, id: &Identity) {
    let http = client(server, Some(id), Conn::KeepAlive);
    let url = agent_url(server, paths::CHECKIN);
    let mut first = unchanged(0);
    first.inventory = Some(inventory("bench-agent"));
    let r = post(&http, &url, &first, Conn::KeepAlive).await.unwrap();
    assert_eq!(
        r.config.map(|c| c.version),
        Some(server.config_version),
        "the configuration of an untagged device"
    );
    let r = post(
        &http,
        &url,
        &unchanged(server.config_version),
        Conn::KeepAlive,
    )
    .await
    .unwrap();
    assert!(nothing_new(&r), "not unchanged after first contact: {r:?}");
}

#[derive(Default)]
struct Outcome {
    /// Microseconds from when each check-in was due to its answer.
    latencies_us: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

/// One agent's run: closed loop when `period` is `None`, else one check-in every `period`
/// starting at `first`, latency counted from when each was due (so a slow server is not
/// hidden by agents that fall behind).
async fn agent_run(
    http: reqwest::Client,
    url: String,
    config_version: u64,
    conn: Conn,
    deadline: Instant,
    pace: Option<(tokio::time::Instant, Duration)>,
) -> Outcome {
    let req = unchanged(config_version);
    let mut out = Outcome::default();
    let mut interval = pace.map(|(first, period)| {
        let mut i = tokio::time::interval_at(first, period);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    while out.latencies_us.len() + out.errors < MAX_PER_AGENT {
        let due = match &mut interval {
            Some(i) => i.tick().await.into_std(),
            None => Instant::now(),
        };
        if due >= deadline {
            break;
        }
        match post(&http, &url, &req, conn).await {
            Ok(r) if nothing_new(&r) => {
                let us = due.elapsed().as_micros();
                out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(r) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert(format!("not unchanged: {r:?}"));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    out
}

/// Names of the server runtime's threads; the agents' are [`AGENT_THREADS`]. The server's
/// database work runs on sqlx's own threads (`sqlx-sqlite-worker-N`), also counted as server.
const SERVER_THREADS: &str = "steward-server";
const AGENT_THREADS: &str = "bench-agent";

/// User + system CPU time of this process's threads, split into server and agents, from
/// /proc/self/task (USER_HZ = 100: 10 ms resolution, fine over seconds).
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: Duration,
    agents: Duration,
}

fn cpu_time() -> Option<Cpu> {
    let mut cpu = Cpu::default();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // The thread ended meanwhile.
        };
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        // Fields after the command name; utime and stime are the 14th and 15th of the line.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let t = Duration::from_millis(ticks * 10);
        if comm.starts_with(SERVER_THREADS) || comm.starts_with("sqlx-sqlite") {
            cpu.server += t;
        } else if comm.starts_with(AGENT_THREADS) {
            cpu.agents += t;
        }
    }
    Some(cpu)
}

struct Row {
    name: String,
    agents: usize,
    target: String,
    checkins: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU per check-in, microseconds: (server, agents).
    cpu_us: Option<(f64, f64)>,
    errors: usize,
}

fn percentile(sorted: &[u32], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1000.0
}

async fn scenario(
    server: &BenchServer,
    ids: &[Identity],
    conn: Conn,
    agents: usize,
    rate: Option<u32>,
    secs: u64,
) -> Row {
    let url = agent_url(server, paths::CHECKIN);
    let clients: Vec<reqwest::Client> = ids[..agents]
        .iter()
        .map(|id| client(server, Some(id), conn))
        .collect();
    // Open the keep-alive connections before the clock starts.
    if conn == Conn::KeepAlive {
        for c in &clients {
            post(c, &url, &unchanged(server.config_version), conn)
                .await
                .unwrap();
        }
    }
    let start = Instant::now();
    let t0 = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let cpu0 = cpu_time();
    let period = rate.map(|r| Duration::from_secs_f64(agents as f64 / f64::from(r)));
    let mut runs = tokio::task::JoinSet::new();
    for (i, http) in clients.into_iter().enumerate() {
        // Paced agents are spread evenly over one period.
        let pace = period.map(|p| (t0 + p.mul_f64(i as f64 / agents as f64), p));
        runs.spawn(agent_run(
            http,
            url.clone(),
            server.config_version,
            conn,
            deadline,
            pace,
        ));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(r) = runs.join_next().await {
        let o = r.unwrap();
        all.extend(o.latencies_us);
        errors += o.errors;
        if first_error.is_none() {
            first_error = o.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu0.zip(cpu_time()).map(|(a, b)| {
        (
            b.server.saturating_sub(a.server),
            b.agents.saturating_sub(a.agents),
        )
    });
    if let Some(e) = first_error {
        eprintln!("https_checkin: {errors} error(s); the first: {e}");
    }
    all.sort_unstable();
    Row {
        name: match conn {
            Conn::KeepAlive => "keep-alive".into(),
            Conn::New => "new conn.".into(),
        },
        agents,
        target: rate.map_or_else(|| "max".to_owned(), |r| format!("{r}/s")),
        checkins: all.len(),
        secs: elapsed,
        p50_ms: percentile(&all, 50),
        p99_ms: percentile(&all, 99),
        max_ms: all.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        cpu_us: cpu.filter(|_| !all.is_empty()).map(|(server, agents)| {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / all.len() as f64;
            (per(server), per(agents))
        }),
        errors,
    }
}

fn print(rows: &[Row]) {
    println!(
        "{:<11} {:>6} {:>7} {:>9} {:>11} {:>8} {:>8} {:>8} {:>15} {:>6}",
        "connection",
        "agents",
        "target",
        "check-ins",
        "check-ins/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "CPU us srv/agt",
        "errors"
    );
    for r in rows {
        println!(
            "{:<11} {:>6} {:>7} {:>9} {:>11.0} {:>8.2} {:>8.2} {:>8.1} {:>15} {:>6}",
            r.name,
            r.agents,
            r.target,
            r.checkins,
            r.checkins as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.cpu_us
                .map_or_else(|| "-".to_owned(), |(s, a)| format!("{s:.0} / {a:.0}")),
            r.errors
        );
    }
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let s = Settings::from_env();
    // The server and the agents on runtimes of their own, so that the CPU each uses can be told
    // apart (they still share the machine's cores).
    let server_rt = runtime(SERVER_THREADS);
    let agent_rt = runtime(AGENT_THREADS);
    let started = Instant::now();
    let agents = s
        .closed
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(s.paced_agents);
    let (server, token) = server_rt.block_on(async {
        let server = BenchServer::start().await;
        server.load_fleet(s.devices, 0xB0B).await;
        let token = server.token(u32::try_from(agents).unwrap()).await;
        (server, token)
    });
    agent_rt.block_on(async {
        let mut ids = Vec::with_capacity(agents);
        for i in 0..agents {
            let id = enroll(&server.root_pem, server.running().agent_addr, &token, i).await;
            prepare(&server, &id).await;
            ids.push(id);
        }
        eprintln!(
            "https_checkin: {} devices in the database, {agents} agents enrolled, in {:.1} s; \
             {} s per scenario",
            s.devices + agents,
            started.elapsed().as_secs_f64(),
            s.secs
        );
        let mut rows = Vec::new();
        for conn in [Conn::KeepAlive, Conn::New] {
            for &k in &s.closed {
                rows.push(scenario(&server, &ids, conn, k, None, s.secs).await);
            }
            rows.push(scenario(&server, &ids, conn, s.paced_agents, Some(s.rate), s.secs).await);
        }
        print(&rows);
    });
    server_rt.block_on(server.stop());
}

//! What the internet gateway adds: the same unchanged check-in, by enrolled agents over mutual
//! TLS, sent straight to the server's agent site and sent through a gateway, side by side.
//! The server runs in this process on 127.0.0.1; the gateway runs in a child process (this
//! same executable, started again with `STEWARD_BENCH_GATEWAY_DIR` set) on 127.0.0.2, so its
//! memory and CPU can be read on their own from /proc.
//!
//! Prints one table row per scenario (check-ins/s, latency p50/p99/max measured by the client,
//! the gateway's CPU per check-in), then the gateway's resident memory per tunnelled connection:
//! `M` agent connections are opened through the gateway, each carries one check-in and stays
//! open (keep-alive), and the growth of the gateway's RSS is divided by `M`.
//!
//! Every loop is bounded in time and count; everything stays on loopback. Knobs:
//! `STEWARD_BENCH_SECS` (10 s per scenario), `STEWARD_BENCH_AGENTS` (closed-loop agent
//! counts, "1,16"), `STEWARD_BENCH_CONNS` (M, 2000).
//!
//! Run: `cargo bench -p steward-gateway --bench through_gateway`. Under `cargo test --benches`
//! it runs a smoke version of a few seconds.
#![allow(clippy::unwrap_used)]

// The server-side benchmark support (a real server in a temporary directory, the fleet
// loader, the unchanged check-in), shared rather than copied.
#[path = "../../steward-server/benches/support/mod.rs"]
mod support;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steward_gateway::{Gateway, JoinOptions, RunOptions};
use steward_proto::admin::NewGatewayToken;
use steward_proto::paths;
use steward_server::AdminUser;
use support::{
    BenchServer, Conn, Identity, enroll, full_run, inventory, nothing_new, post, unchanged,
};

/// Set in the child: run the gateway from this data directory.
const GATEWAY_ENV: &str = "STEWARD_BENCH_GATEWAY_DIR";
/// Most check-ins one agent makes in one scenario, whatever the time left.
const MAX_PER_AGENT: usize = 2_000_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Settings {
    secs: u64,
    closed: Vec<usize>,
    conns: usize,
}

impl Settings {
    fn from_env() -> Self {
        if !full_run() {
            return Self {
                secs: 1,
                closed: vec![2],
                conns: 20,
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
            .unwrap_or_else(|| vec![1, 16]);
        Self {
            secs: env_or("STEWARD_BENCH_SECS", 10u64).clamp(1, 600),
            closed,
            conns: env_or("STEWARD_BENCH_CONNS", 2_000usize).clamp(1, 20_000),
        }
    }
}

/// The child: a real gateway until its stdin closes.
fn gateway_child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let gw = Gateway::start(
            std::path::Path::new(dir),
            RunOptions {
                listen: Some("127.0.0.2:0".parse().unwrap()),
                crl_refresh: Duration::from_secs(3600),
                report_interval: Duration::from_secs(3600),
            },
        )
        .await
        .unwrap();
        println!("LISTEN {}", gw.addr);
        std::io::stdout().flush().unwrap();
        // The parent closes stdin (or dies) when it is done.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
        })
        .await
        .unwrap();
        gw.shutdown().await;
    });
}

/// The gateway child process; killed on drop.
struct GatewayProc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProc {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(GATEWAY_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .unwrap_or_else(|| panic!("the gateway child said {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// Resident set size, kB.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// User + system CPU time so far (USER_HZ = 100).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Gateway,
}

struct Target {
    root_pem: String,
    direct: SocketAddr,
    gateway: SocketAddr,
}

impl Target {
    fn url(&self, path: Path, route: &str) -> String {
        match path {
            Path::Direct => support::agent_url(self.direct, route),
            // The gateway's certificate covers its external name, 127.0.0.2.
            Path::Gateway => format!("https://127.0.0.2:{}{route}", self.gateway.port()),
        }
    }

    fn client(&self, identity: Option<&Identity>, conn: Conn) -> reqwest::Client {
        support::client(&self.root_pem, identity, conn, self.direct)
    }
}

/// First contact: take the configuration, send the inventory, then one check-in on each
/// path so that both leave nothing to write. Returns the configuration version.
async fn prepare(t: &Target, id: &Identity) -> u64 {
    let http = t.client(Some(id), Conn::KeepAlive);
    let mut first = unchanged(0);
    first.inventory = Some(inventory("bench-agent"));
    let r = post(
        &http,
        &t.url(Path::Direct, paths::CHECKIN),
        &first,
        Conn::KeepAlive,
    )
    .await
    .unwrap();
    let version = r.config.map(|c| c.version).unwrap();
    for path in [Path::Gateway, Path::Direct] {
        post(
            &http,
            &t.url(path, paths::CHECKIN),
            &unchanged(version),
            Conn::KeepAlive,
        )
        .await
        .unwrap();
    }
    version
}

struct Row {
    path: Path,
    conn: Conn,
    agents: usize,
    checkins: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The gateway process's CPU per check-in, microseconds (gateway rows only).
    gateway_cpu_us: Option<f64>,
    errors: usize,
}

fn percentile(sorted: &[u32], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1000.0
}

#[allow(clippy::too_many_arguments)]
async fn scenario(
    t: &Target,
    gw: &GatewayProc,
    ids: &[Identity],
    version: u64,
    path: Path,
    conn: Conn,
    agents: usize,
    secs: u64,
) -> Row {
    let url = t.url(path, paths::CHECKIN);
    let req = unchanged(version);
    let clients: Vec<reqwest::Client> = ids[..agents]
        .iter()
        .map(|id| t.client(Some(id), conn))
        .collect();
    if conn == Conn::KeepAlive {
        for c in &clients {
            post(c, &url, &req, conn).await.unwrap();
        }
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let cpu0 = gw.cpu();
    let mut runs = tokio::task::JoinSet::new();
    for http in clients {
        let (url, req) = (url.clone(), req.clone());
        runs.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            while Instant::now() < deadline && lat.len() + errors < MAX_PER_AGENT {
                let t0 = Instant::now();
                match post(&http, &url, &req, conn).await {
                    Ok(r) if nothing_new(&r) => {
                        lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok(r) => {
                        errors += 1;
                        first_error.get_or_insert(format!("not unchanged: {r:?}"));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (lat, errors, first_error)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(r) = runs.join_next().await {
        let (lat, e, first) = r.unwrap();
        all.extend(lat);
        errors += e;
        if let Some(first) = first {
            eprintln!("through_gateway: an error: {first}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let gw_cpu = gw.cpu().saturating_sub(cpu0);
    all.sort_unstable();
    Row {
        path,
        conn,
        agents,
        checkins: all.len(),
        secs,
        p50_ms: percentile(&all, 50),
        p99_ms: percentile(&all, 99),
        max_ms: all.last().map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        gateway_cpu_us: (path == Path::Gateway && !all.is_empty())
            .then(|| gw_cpu.as_secs_f64() * 1e6 / all.len() as f64),
        errors,
    }
}

fn print(rows: &[Row]) {
    println!(
        "{:<8} {:<11} {:>6} {:>9} {:>11} {:>8} {:>8} {:>8} {:>14} {:>6}",
        "path",
        "connection",
        "agents",
        "check-ins",
        "check-ins/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "gateway CPU us",
        "errors"
    );
    for r in rows {
        println!(
            "{:<8} {:<11} {:>6} {:>9} {:>11.0} {:>8.2} {:>8.2} {:>8.1} {:>14} {:>6}",
            match r.path {
                Path::Direct => "direct",
                Path::Gateway => "gateway",
            },
            match r.conn {
                Conn::KeepAlive => "keep-alive",
                Conn::New => "new conn.",
            },
            r.agents,
            r.checkins,
            r.checkins as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.gateway_cpu_us
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}")),
            r.errors
        );
    }
}

/// Opens `m` agent connections through the gateway (one check-in each, then idle
/// keep-alive) and returns the gateway's RSS growth per connection, in kB.
async fn memory_per_connection(
    t: &Target,
    gw: &GatewayProc,
    id: &Identity,
    version: u64,
    m: usize,
) -> (u64, u64, f64) {
    let url = t.url(Path::Gateway, paths::CHECKIN);
    let req = unchanged(version);
    // Settle: allocator pools warmed by the scenarios are reused, not counted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = gw.rss_kb();
    let mut held = Vec::with_capacity(m);
    for chunk in 0..m.div_ceil(100) {
        let mut batch = tokio::task::JoinSet::new();
        for _ in (chunk * 100)..((chunk + 1) * 100).min(m) {
            let http = t.client(Some(id), Conn::KeepAlive);
            let (url, req) = (url.clone(), req.clone());
            batch.spawn(async move {
                post(&http, &url, &req, Conn::KeepAlive).await.unwrap();
                http
            });
        }
        while let Some(c) = batch.join_next().await {
            held.push(c.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = gw.rss_kb();
    drop(held);
    let per = after.saturating_sub(before) as f64 / m as f64;
    (before, after, per)
}

fn main() {
    if let Ok(dir) = std::env::var(GATEWAY_ENV) {
        gateway_child(&dir);
        return;
    }
    let s = Settings::from_env();
    let agents = s.closed.iter().copied().max().unwrap_or(1);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, token, gateway_dir) = server_rt.block_on(async {
        let server = BenchServer::start().await;
        let token = server.token(u32::try_from(agents).unwrap()).await;
        // `steward gateway token`, then `steward gateway join`, on the benchmark server.
        let gw_token = server
            .service
            .new_gateway_token(
                &AdminUser {
                    username: "bench".into(),
                },
                NewGatewayToken { expires_secs: 600 },
            )
            .await
            .unwrap();
        let token_file = server.dir.path().join("gateway.token");
        std::fs::write(&token_file, serde_json::to_vec(&gw_token).unwrap()).unwrap();
        let gateway_dir = server.dir.path().join("gateway");
        steward_gateway::join(&JoinOptions {
            server_url: format!("https://127.0.0.1:{}", server.running().agent_addr.port()),
            token_file,
            data_dir: gateway_dir.clone(),
            external_name: "127.0.0.2".into(),
            listen: "127.0.0.2:0".parse().unwrap(),
        })
        .await
        .unwrap();
        (server, token, gateway_dir)
    });
    let gw = GatewayProc::start(&gateway_dir);
    let t = Target {
        root_pem: server.root_pem.clone(),
        direct: server.running().agent_addr,
        gateway: gw.addr,
    };
    server_rt.block_on(async {
        let mut ids = Vec::with_capacity(agents);
        let mut version = 0;
        for i in 0..agents {
            let id = enroll(&t.root_pem, t.direct, &token, i).await;
            version = prepare(&t, &id).await;
            ids.push(id);
        }
        let mut rows = Vec::new();
        for &k in &s.closed {
            for path in [Path::Direct, Path::Gateway] {
                rows.push(scenario(&t, &gw, &ids, version, path, Conn::KeepAlive, k, s.secs).await);
            }
        }
        for path in [Path::Direct, Path::Gateway] {
            rows.push(scenario(&t, &gw, &ids, version, path, Conn::New, agents, s.secs).await);
        }
        print(&rows);
        let (before, after, per) = memory_per_connection(&t, &gw, &ids[0], version, s.conns).await;
        println!(
            "gateway RSS: {before} kB idle, {after} kB with {} tunnelled connections open: \
             {per:.1} kB per connection",
            s.conns
        );
    });
    drop(gw);
    server_rt.block_on(server.stop());
}

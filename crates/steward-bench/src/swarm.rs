//! N simulated agents in one process (`steward bench swarm`).
//!
//! Each agent behaves as `steward-agent`'s check-in loop does, with its own identity:
//! - its first check-in holds configuration version 0 and the inventory, so it takes the
//!   configuration and the server stores the inventory; later ones are unchanged (same
//!   configuration version, same inventory hash, no inventory);
//! - the first check-ins are spread uniformly over one interval (a fleet's steady state),
//!   then each agent checks in every interval ± its jitter (10%, the agent-settings default);
//! - a failed check-in backs off exactly as the agent does (`steward_agent::agent::backoff_delay`);
//! - with `persistent`, it keeps its connection after a check-in and long-polls
//!   `GET /agent/v1/wait?config_version=N&wait=SECS` on it until the next check-in is due, as
//!   the agent does (`SECS`: until the check-in is due, plus 2 s): the server answers 204 two
//!   seconds before `SECS` runs out, when the check-in is due, which then goes over the same
//!   kept-alive connection (one TLS handshake per agent for the whole run); a wake-up means
//!   check in now; a dropped long-poll means reconnect after a
//!   random 1 s to interval/4 (at most 15 s), as the agent does after a server restart;
//! - a check-in answered 503 `SERVER-BUSY` (admission control) is retried after its
//!   `Retry-After` plus jitter (`steward_agent::agent::busy_delay`) on the same connection,
//!   counted as "busy", not as an error, and not as an outage; without `persistent`,
//!   every check-in opens a new connection (the TLS session cache makes it a resumed
//!   handshake when the server still knows the session) and closes it;
//! - a task is answered with a succeeded result at once (the command is not run: the swarm
//!   measures the server and the path, not `true`), sent by an immediate check-in, as the
//!   agent sends a finished result at once.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use rustls::HandshakeKind;
use steward_proto::{
    CheckinRequest, CheckinResponse, ConnectionPath, Disk, Inventory, NetInterface,
    PROTOCOL_VERSION, TaskOutcome, TaskResult, WakeUp, paths,
};

use crate::BenchError;
use crate::identity::Identity;
use crate::limits::{self, ProcSample};
use crate::net::{self, Conn, ErrorKind, Failure, Sources, Target};
use crate::report::{FanOut, Latencies, ProcUse, Recovery, Second, SwarmReport};

/// A long-poll shorter than this is not started (the agent's `MIN_LONG_POLL`).
const MIN_LONG_POLL: Duration = Duration::from_secs(1);
/// The server answers a long-poll this long before the `wait` the agent gave it (the agent's
/// and the server's `LONG_POLL_MARGIN`).
const LONG_POLL_MARGIN: Duration = Duration::from_secs(2);
/// How long past its deadline a long-poll's answer is still awaited (the agent's `POLL_GRACE`).
const POLL_GRACE: Duration = Duration::from_secs(5);
/// Agents still busy this long after the end are stopped and counted as aborted.
const END_GRACE: Duration = Duration::from_secs(5);

/// The task to create for the fan-out: a future that creates it through the admin API and
/// returns its ID (it is not polled before it is due).
pub type TaskLaunch = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// Agents (the first N identities of the store).
    pub agents: usize,
    /// Check-in interval.
    pub interval: Duration,
    /// Jitter of the interval, percent (the agent's default is 10).
    pub jitter_percent: u8,
    /// How long the swarm runs.
    pub duration: Duration,
    /// Hold connections and long-poll between check-ins.
    pub persistent: bool,
    /// When to create the fan-out task, from the start (with `persistent` and a task).
    pub task_after: Duration,
    /// Source addresses to spread over on loopback.
    pub sources: usize,
    /// Connect + handshake timeout, and request timeout.
    pub timeout: Duration,
    /// Keep a TLS session cache per agent.
    pub resumption: bool,
    /// Sample this process as the server.
    pub server_pid: Option<u32>,
    /// Start as agents that have checked in before and kept their state, as a restarted
    /// `steward-agent` does: this configuration version, and the inventory hash only (the
    /// server has the inventory from an earlier run; it asks for it if not). `None`: a first
    /// contact (configuration version 0, the inventory sent).
    pub resume_config: Option<u64>,
}

#[derive(Default)]
struct Counters {
    checkins: AtomicU64,
    errors: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    checked_in: AtomicU64,
    held_dropped: AtomicU64,
    polls_empty: AtomicU64,
    busy: AtomicU64,
    woken: AtomicU64,
    results: AtomicU64,
}

#[derive(Default)]
struct SecondCells {
    checkins: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
}

struct Ctx {
    start: Instant,
    deadline: Instant,
    opts: SwarmOptions,
    target: Target,
    sources: Sources,
    counters: Counters,
    timeline: Vec<SecondCells>,
    /// When the fan-out task was created (set just before the admin request goes out).
    task_at: OnceLock<Instant>,
}

impl Ctx {
    fn second(&self) -> Option<&SecondCells> {
        let s = self.start.elapsed().as_secs() as usize;
        self.timeline.get(s)
    }

    fn count_handshake(&self, kind: HandshakeKind) {
        let resumed = kind == HandshakeKind::Resumed;
        let (total, per) = match (resumed, self.second()) {
            (true, s) => (&self.counters.resumed, s.map(|s| &s.resumed)),
            (false, s) => (&self.counters.full, s.map(|s| &s.full)),
        };
        total.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = per {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What one agent saw.
#[derive(Default)]
struct Outcome {
    first: Latencies,
    steady: Latencies,
    /// Later check-ins that carried results or inventory, or brought tasks or configuration.
    work: Latencies,
    errors: BTreeMap<ErrorKind, (u64, String)>,
    wake: Option<Duration>,
    result: Option<Duration>,
    /// Seconds from the start: first failure after having checked in, and when it checked in
    /// again (if it did).
    outage: Option<(f64, Option<f64>)>,
    /// The configuration version it holds at the end.
    config_version: u64,
}

/// A small PRNG per agent (xorshift64*): the jitter needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A realistic inventory (three disks, three interfaces; about 1 KB of JSON) of its own.
fn inventory(hostname: &str, i: usize) -> Inventory {
    let disk = |mount: &str, total: u64| Disk {
        mount: mount.into(),
        fs: "ext4".into(),
        total_bytes: total,
        available_bytes: total / 3,
    };
    let nic = |name: &str, n: usize| NetInterface {
        name: name.into(),
        mac: format!(
            "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
            n,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ),
        addresses: vec![format!("10.{}.{}.{}", n, (i >> 8) & 0xff, i & 0xff)],
    };
    Inventory {
        hostname: hostname.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12.0-amd64".into(),
        cpu_model: "AMD EPYC".into(),
        cpu_count: 4,
        memory_total_bytes: 16 << 30,
        disks: vec![
            disk("/", 256 << 30),
            disk("/home", 512 << 30),
            disk("/boot", 1 << 30),
        ],
        interfaces: vec![nic("eth0", 0), nic("eth1", 1), nic("wlan0", 2)],
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Run the swarm. `task` (with `persistent`) is created at `task_after` for the fan-out.
pub async fn run(
    identities: Vec<Identity>,
    anchors_pem: &[String],
    target: Target,
    via_gateway: bool,
    opts: SwarmOptions,
    task: Option<TaskLaunch>,
    progress: indicatif::ProgressBar,
) -> Result<SwarmReport, BenchError> {
    let nofile = limits::raise_nofile();
    let roots = Arc::new(net::roots(anchors_pem)?);
    let sources = Sources::for_target(&target, opts.sources);
    let start = Instant::now();
    let secs = opts.duration.as_secs() as usize + 1;
    let ctx = Arc::new(Ctx {
        start,
        deadline: start + opts.duration,
        target: target.clone(),
        sources,
        counters: Counters::default(),
        timeline: (0..secs + END_GRACE.as_secs() as usize + 60)
            .map(|_| SecondCells::default())
            .collect(),
        task_at: OnceLock::new(),
        opts: opts.clone(),
    });

    let mut agents = tokio::task::JoinSet::new();
    for (i, id) in identities.into_iter().enumerate() {
        let config = net::client_config(roots.clone(), Some((id.chain, id.key)), opts.resumption)?;
        let ctx = ctx.clone();
        agents.spawn(agent(i, id.hostname, config, ctx));
    }

    // Fan-out: created at `task_after`, through the admin API.
    let fan = task.filter(|_| opts.persistent).map(|launch| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((ctx.start + ctx.opts.task_after).into()).await;
            let t0 = Instant::now();
            let _ = ctx.task_at.set(t0);
            let r = launch.await;
            (r, t0.elapsed())
        })
    });

    // Progress and /proc sampling, once a second, until told to stop.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let ctx = ctx.clone();
        let pids: Vec<u32> = ctx
            .opts
            .server_pid
            .into_iter()
            .chain(std::iter::once(std::process::id()))
            .collect();
        tokio::spawn(async move {
            let first: Vec<Option<ProcSample>> = pids.iter().map(|&p| limits::sample(p)).collect();
            let mut peak: Vec<u64> = first.iter().map(|s| s.map_or(0, |s| s.rss_bytes)).collect();
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tick.tick() => {}
                }
                for (k, &p) in pids.iter().enumerate() {
                    if let (Some(s), Some(pk)) = (limits::sample(p), peak.get_mut(k)) {
                        *pk = (*pk).max(s.rss_bytes);
                    }
                }
                let c = &ctx.counters;
                let el = ctx.start.elapsed().as_secs_f64();
                progress.set_position(el.min(ctx.opts.duration.as_secs_f64()) as u64);
                progress.set_message(format!(
                    "{} in, {} check-ins ({:.0}/s), {} errors, TLS {} full/{} resumed, {} woken, {} results",
                    c.checked_in.load(Ordering::Relaxed),
                    c.checkins.load(Ordering::Relaxed),
                    c.checkins.load(Ordering::Relaxed) as f64 / el.max(1e-9),
                    c.errors.load(Ordering::Relaxed),
                    c.full.load(Ordering::Relaxed),
                    c.resumed.load(Ordering::Relaxed),
                    c.woken.load(Ordering::Relaxed),
                    c.results.load(Ordering::Relaxed),
                ));
            }
            progress.finish_and_clear();
            pids.into_iter()
                .zip(first)
                .zip(peak)
                .map(|((p, f), k)| (p, f, k))
                .collect::<Vec<_>>()
        })
    };

    let mut outcomes = Vec::with_capacity(opts.agents);
    let hard_end = ctx.deadline + ctx.opts.timeout + END_GRACE;
    let mut aborted = 0u64;
    loop {
        match tokio::time::timeout_at(hard_end.into(), agents.join_next()).await {
            Ok(Some(Ok(o))) => outcomes.push(o),
            Ok(Some(Err(_))) => aborted += 1,
            Ok(None) => break,
            Err(_) => {
                aborted += agents.len() as u64;
                agents.abort_all();
                break;
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let samples = sampler.await.unwrap_or_default();
    let mut procs = samples.into_iter().map(|(pid, first, peak)| {
        let now = limits::sample(pid)?;
        let first = first?;
        let cpu = now.cpu.saturating_sub(first.cpu).as_secs_f64();
        Some(ProcUse {
            pid,
            rss_end_mib: now.rss_bytes as f64 / 1_048_576.0,
            rss_peak_mib: peak.max(now.rss_bytes) as f64 / 1_048_576.0,
            cpu_secs: cpu,
            cores: cpu / wall.max(1e-9),
            fds_end: now.fds,
            threads_end: now.threads,
        })
    });
    let server = if opts.server_pid.is_some() {
        procs.next().flatten()
    } else {
        None
    };
    let swarm = procs.next().flatten();

    let fan_out = match fan {
        Some(h) => {
            let (r, create) = h
                .await
                .map_err(|e| BenchError::Task(format!("the task launcher stopped: {e}")))?;
            Some((r.map_err(BenchError::Task)?, create))
        }
        None => None,
    };
    let mut report = summarise(&ctx, outcomes, wall, fan_out);
    report.aborted = aborted;
    report.via_gateway = via_gateway;
    report.nofile_limit = nofile.now;
    report.server = server;
    report.swarm = swarm;
    Ok(report)
}

/// One agent's life until the deadline.
async fn agent(
    i: usize,
    hostname: String,
    config: Arc<rustls::ClientConfig>,
    ctx: Arc<Ctx>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut rng = Rng::new(i as u64 ^ 0x5157_4152_4d00);
    let interval = ctx.opts.interval;
    let source = ctx.sources.get(i);
    let inv = inventory(&hostname, i);
    let hash = steward_agent::inventory::hash(&inv);
    let mut conn: Option<Conn> = None;
    let mut config_version = ctx.opts.resume_config.unwrap_or(0);
    let mut profile_version = 0u64;
    let mut send_inventory = ctx.opts.resume_config.is_none();
    let mut results: Vec<TaskResult> = Vec::new();
    let mut executed: HashSet<u64> = HashSet::new();
    let mut failures = 0u32;
    let mut checked_in = false;
    let mut fast_polls = 0u32;
    // Bounded in count as well as in time: no agent checks in more than this.
    let max_checkins = 16 + 8 * (ctx.opts.duration.as_secs() / interval.as_secs().max(1)) as usize;
    let mut due = ctx.start + interval.mul_f64(rng.unit());
    for _ in 0..max_checkins {
        if due >= ctx.deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let req = CheckinRequest {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            config_version,
            inventory_hash: hash.clone(),
            inventory: send_inventory.then(|| inv.clone()),
            results: results.clone(),
            last_error: None,
            connection: ConnectionPath::Lan {
                server: ctx.target.host_header.clone(),
            },
            profile_version,
            failed_attempts: Vec::new(),
        };
        let left = ctx.opts.timeout;
        let r = checkin(&ctx, &mut conn, source, &config, &req, left).await;
        let now = Instant::now();
        // Told to come back later: no long-poll meanwhile either (as the agent).
        let busy = matches!(&r, Err(f) if f.kind == ErrorKind::HttpStatus(503));
        let next = match r {
            Ok(resp) => {
                let took = now.duration_since(due);
                let unchanged = req.inventory.is_none()
                    && req.results.is_empty()
                    && resp.config.is_none()
                    && resp.tasks.is_empty()
                    && resp.acked_results.is_empty();
                if checked_in && unchanged {
                    out.steady.push(took);
                } else if checked_in {
                    out.work.push(took);
                } else {
                    out.first.push(took);
                    ctx.counters.checked_in.fetch_add(1, Ordering::Relaxed);
                    checked_in = true;
                }
                ctx.counters.checkins.fetch_add(1, Ordering::Relaxed);
                if let Some(s) = ctx.second() {
                    s.checkins.fetch_add(1, Ordering::Relaxed);
                }
                if let Some((_, back @ None)) = &mut out.outage {
                    *back = Some(ctx.start.elapsed().as_secs_f64());
                }
                failures = 0;
                if req.inventory.is_some() {
                    send_inventory = false;
                }
                send_inventory |= resp.send_inventory && req.inventory.is_none();
                if let Some(c) = &resp.config {
                    config_version = c.version;
                    profile_version = c.profile.version;
                }
                out.config_version = config_version;
                let task_at = ctx.task_at.get().copied();
                if let Some(t0) = task_at
                    && out.result.is_none()
                    && req
                        .results
                        .iter()
                        .any(|r| resp.acked_results.contains(&r.task_id))
                {
                    out.result = Some(now.duration_since(t0));
                    ctx.counters.results.fetch_add(1, Ordering::Relaxed);
                }
                results.retain(|r| !resp.acked_results.contains(&r.task_id));
                for t in &resp.tasks {
                    // A re-delivered task is not run again (the agent's at-most-once rule).
                    if executed.insert(t.task_id) {
                        results.push(succeeded(t.task_id));
                        if let (Some(t0), None) = (task_at, out.wake) {
                            // Given by a check-in rather than a long-poll wake-up.
                            out.wake = Some(now.duration_since(t0));
                            ctx.counters.woken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if !ctx.opts.persistent {
                    conn = None;
                }
                if !results.is_empty() || send_inventory {
                    now
                } else {
                    now + jittered(interval, ctx.opts.jitter_percent, rng.unit())
                }
            }
            Err(f) if f.kind == ErrorKind::HttpStatus(503) => {
                // Admission control: come back after Retry-After plus jitter, as the agent
                // does, on the same connection; not an error and not an outage.
                ctx.counters.busy.fetch_add(1, Ordering::Relaxed);
                let retry = conn
                    .as_ref()
                    .and_then(|c| c.retry_after)
                    .unwrap_or(Duration::from_secs(10));
                now + steward_agent::agent::busy_delay(retry, rng.unit())
            }
            Err(f) => {
                conn = None;
                note_error(&ctx, &mut out, f);
                if checked_in && out.outage.is_none() {
                    out.outage = Some((ctx.start.elapsed().as_secs_f64(), None));
                }
                failures = failures.saturating_add(1);
                now + steward_agent::agent::backoff_delay(
                    failures,
                    interval.as_secs().max(1),
                    rng.unit(),
                )
            }
        };
        due = next;
        // The wait phase: long-poll on the held connection until the check-in is due.
        while ctx.opts.persistent && !busy && fast_polls < 3 {
            let Some(c) = conn.as_mut().filter(|c| c.is_open()) else {
                break;
            };
            let until = due.min(ctx.deadline);
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining <= MIN_LONG_POLL {
                break;
            }
            let started = Instant::now();
            let path = format!(
                "{}?config_version={config_version}&wait={}",
                paths::WAIT,
                (remaining + LONG_POLL_MARGIN).as_secs()
            );
            match c
                .request(Method::GET, &path, None, remaining + POLL_GRACE)
                .await
            {
                Ok((StatusCode::NO_CONTENT, _)) => {
                    ctx.counters.polls_empty.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() < MIN_LONG_POLL {
                        fast_polls += 1;
                    }
                }
                Ok((s, body))
                    if s.is_success() && serde_json::from_slice::<WakeUp>(&body).is_ok() =>
                {
                    let now = Instant::now();
                    if let (Some(t0), None) = (ctx.task_at.get(), out.wake) {
                        out.wake = Some(now.duration_since(*t0));
                        ctx.counters.woken.fetch_add(1, Ordering::Relaxed);
                    }
                    fast_polls = if started.elapsed() < MIN_LONG_POLL {
                        fast_polls + 1
                    } else {
                        0
                    };
                    due = now;
                    break;
                }
                Ok((s, body)) => {
                    conn = None;
                    let kind = if s.is_success() {
                        ErrorKind::Protocol
                    } else {
                        ErrorKind::HttpStatus(s.as_u16())
                    };
                    note_error(
                        &ctx,
                        &mut out,
                        Failure {
                            kind,
                            detail: format!(
                                "long-poll: {}",
                                String::from_utf8_lossy(body.get(..200).unwrap_or(&body))
                            ),
                        },
                    );
                    break;
                }
                Err(f) if f.kind == ErrorKind::ResponseTimeout => {
                    // Our own deadline (the check-in is due): the connection is spent, as in
                    // the agent, which then checks in on a new one.
                    conn = None;
                    break;
                }
                Err(_) => {
                    // Dropped (a server restart): reconnect after a short random delay.
                    conn = None;
                    ctx.counters.held_dropped.fetch_add(1, Ordering::Relaxed);
                    if checked_in && out.outage.is_none() {
                        out.outage = Some((ctx.start.elapsed().as_secs_f64(), None));
                    }
                    let spread = (interval.as_secs_f64() / 4.0).clamp(1.0, 15.0);
                    let delay = Duration::from_secs_f64(1.0 + (spread - 1.0) * rng.unit());
                    due = due.min(Instant::now() + delay);
                    break;
                }
            }
        }
    }
    out
}

fn note_error(ctx: &Ctx, out: &mut Outcome, f: Failure) {
    ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
    if let Some(s) = ctx.second() {
        s.errors.fetch_add(1, Ordering::Relaxed);
    }
    out.errors.entry(f.kind).or_insert_with(|| (0, f.detail)).0 += 1;
}

/// The interval ± `jitter_percent` (the agent's `jittered`).
fn jittered(interval: Duration, jitter_percent: u8, r: f64) -> Duration {
    let spread = f64::from(jitter_percent) / 100.0;
    interval
        .mul_f64((1.0 + spread * (2.0 * r - 1.0)).max(0.0))
        .max(Duration::from_millis(100))
}

fn succeeded(task_id: u64) -> TaskResult {
    let now = steward_pki::rfc3339(steward_pki::OffsetDateTime::now_utc());
    TaskResult {
        task_id,
        outcome: TaskOutcome::Succeeded,
        exit_code: Some(0),
        output: String::new(),
        truncated: false,
        started_at: now.clone(),
        finished_at: now,
    }
}

/// One check-in, on the held connection when it is open, else a new one. A held connection
/// the server closed while idle is not a fault: reconnect once, as the agent does.
async fn checkin(
    ctx: &Ctx,
    conn: &mut Option<Conn>,
    source: Option<std::net::IpAddr>,
    config: &Arc<rustls::ClientConfig>,
    req: &CheckinRequest,
    timeout: Duration,
) -> Result<CheckinResponse, Failure> {
    let reused = conn.as_ref().is_some_and(Conn::is_open);
    if !reused {
        *conn = None;
    }
    for attempt in 0..2 {
        if conn.is_none() {
            let c = net::connect(&ctx.target, source, config.clone(), timeout).await?;
            ctx.count_handshake(c.handshake);
            *conn = Some(c);
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.post_json(paths::CHECKIN, req, timeout).await {
            Err(f) if reused && attempt == 0 && f.kind == ErrorKind::ConnectionClosed => {
                *conn = None;
            }
            r => return r,
        }
    }
    Err(Failure {
        kind: ErrorKind::ConnectionClosed,
        detail: "closed twice".into(),
    })
}

fn summarise(
    ctx: &Ctx,
    outcomes: Vec<Outcome>,
    wall: f64,
    fan_out: Option<(u64, Duration)>,
) -> SwarmReport {
    let opts = &ctx.opts;
    let mut first = Latencies::default();
    let mut steady = Latencies::default();
    let mut work = Latencies::default();
    let mut errors: BTreeMap<ErrorKind, u64> = BTreeMap::new();
    let mut examples = BTreeMap::new();
    let mut wake = Latencies::default();
    let mut result = Latencies::default();
    let mut all_results: Option<Duration> = Some(Duration::ZERO);
    let mut rec = Recovery::default();
    let config_version = outcomes
        .iter()
        .map(|o| o.config_version)
        .max()
        .filter(|&v| v > 0);
    for o in outcomes.iter() {
        for (k, (n, ex)) in &o.errors {
            *errors.entry(*k).or_insert(0) += n;
            examples.entry(k.label()).or_insert_with(|| ex.clone());
        }
        if let Some(w) = o.wake {
            wake.push(w);
        }
        match (o.result, &mut all_results) {
            (Some(r), Some(a)) => {
                result.push(r);
                *a = (*a).max(r);
            }
            (Some(r), None) => result.push(r),
            (None, a) => *a = None,
        }
        if let Some((failed, back)) = o.outage {
            rec.agents_affected += 1;
            rec.first_failure_s = Some(rec.first_failure_s.map_or(failed, |f: f64| f.min(failed)));
            match back {
                Some(b) => {
                    rec.last_recovered_s = Some(rec.last_recovered_s.map_or(b, |l: f64| l.max(b)));
                }
                None => rec.still_down += 1,
            }
        }
    }
    for mut o in outcomes {
        first.extend(std::mem::take(&mut o.first));
        steady.extend(std::mem::take(&mut o.steady));
        work.extend(std::mem::take(&mut o.work));
    }
    rec.all_back_after_s = match (rec.first_failure_s, rec.last_recovered_s, rec.still_down) {
        (Some(f), Some(l), 0) => Some(l - f),
        _ => None,
    };
    let c = &ctx.counters;
    let timeline: Vec<Second> = ctx
        .timeline
        .iter()
        .take(wall.ceil() as usize)
        .map(|s| Second {
            checkins: s.checkins.load(Ordering::Relaxed),
            full: s.full.load(Ordering::Relaxed),
            resumed: s.resumed.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
        })
        .collect();
    let ramp = opts.interval.as_secs() as usize;
    let run_secs = opts.duration.as_secs() as usize;
    let steady_checkins: u64 = timeline
        .iter()
        .take(run_secs)
        .skip(ramp)
        .map(|s| s.checkins)
        .sum();
    let checkins = c.checkins.load(Ordering::Relaxed);
    let limits_hit = errors
        .keys()
        .filter_map(|k| {
            k.limit()
                .map(|l| format!("{l}: {} failures", errors.get(k).copied().unwrap_or(0)))
        })
        .collect();
    SwarmReport {
        agents: opts.agents,
        interval_s: opts.interval.as_secs_f64(),
        duration_s: opts.duration.as_secs_f64(),
        persistent: opts.persistent,
        target: ctx.target.addr.to_string(),
        via_gateway: false,
        sources: ctx.sources.len(),
        nofile_limit: 0,
        agents_checked_in: c.checked_in.load(Ordering::Relaxed),
        checkins,
        checkins_per_s: checkins as f64 / opts.duration.as_secs_f64().max(1e-9),
        steady_checkins_per_s: if run_secs > ramp {
            steady_checkins as f64 / (run_secs - ramp) as f64
        } else {
            0.0
        },
        first_contact: first.percentiles(),
        latency: steady.percentiles(),
        work_latency: work.percentiles(),
        errors: errors.iter().map(|(k, n)| (k.label(), *n)).collect(),
        error_examples: examples,
        limits_hit,
        full_handshakes: c.full.load(Ordering::Relaxed),
        resumed_handshakes: c.resumed.load(Ordering::Relaxed),
        full_per_s: c.full.load(Ordering::Relaxed) as f64 / wall.max(1e-9),
        resumed_per_s: c.resumed.load(Ordering::Relaxed) as f64 / wall.max(1e-9),
        held_dropped: c.held_dropped.load(Ordering::Relaxed),
        polls_empty: c.polls_empty.load(Ordering::Relaxed),
        busy: c.busy.load(Ordering::Relaxed),
        connections_per_agent: (c.full.load(Ordering::Relaxed) + c.resumed.load(Ordering::Relaxed))
            as f64
            / (c.checked_in.load(Ordering::Relaxed).max(1)) as f64,
        fan_out: fan_out.map(|(id, create)| FanOut {
            task_id: Some(id),
            created_at_s: ctx
                .task_at
                .get()
                .map_or(0.0, |t| t.duration_since(ctx.start).as_secs_f64()),
            create_ms: create.as_secs_f64() * 1000.0,
            woken: wake.len() as u64,
            wake_latency: wake.percentiles(),
            results: result.len() as u64,
            result_latency: result.percentiles(),
            all_results_s: all_results
                .filter(|_| !result.is_empty())
                .map(|d| d.as_secs_f64()),
        }),
        recovery: rec,
        config_version,
        server: None,
        swarm: None,
        aborted: 0,
        timeline,
    }
}

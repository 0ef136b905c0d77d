//! N simulated agents in one process (`steward bench swarm`; a swarm spread over several
//! processes runs a slice of them in each: [`crate::multi`]).
//!
//! Each agent behaves as `steward-agent`'s check-in loop does, with its own identity:
//! - its first check-in holds configuration version 0 and the inventory, so it takes the
//!   configuration and the server stores the inventory; later ones are unchanged (same
//!   configuration version, same inventory hash, no inventory);
//! - the first check-ins are spread uniformly over one interval (a fleet's steady state),
//!   then each agent checks in every interval ± its jitter (10%, the agent-settings default),
//!   or, after it was turned away busy or kept waiting over 2 s, anywhere from half an interval
//!   to one and a half, once (`steward_agent::agent::next_checkin_delay`);
//! - a failed check-in backs off exactly as the agent does (`steward_agent::agent::backoff_delay`);
//! - with `persistent`, it keeps its connection after a check-in and long-polls
//!   `GET /agent/v1/wait?config_version=N&wait=SECS` on it until the next check-in is due, as
//!   the agent does (`SECS`: until the check-in is due, plus 2 s): the server answers 204 two
//!   seconds before `SECS` runs out, when the check-in is due, which then goes over the same
//!   kept-alive connection (one TLS handshake per agent for the whole run); a wake-up means
//!   check in now (or, with the tasks in it, run them and check in with the results);
//! - with `persistent`, each check-in asks to go on as that long-poll (`wait=SECS&tasks=carry`
//!   on the check-in, its next check-in planned before it is sent), as the agent does: a
//!   held answer's first line is the check-in's answer, its rest the long-poll's, and no
//!   long-poll request of its own follows; a dropped long-poll means reconnect after a
//!   random 1 s to interval/4 (at most 15 s), as the agent does after a server restart;
//! - a check-in answered 503 `SERVER-BUSY` (admission control) is retried after its
//!   `Retry-After` plus jitter (`steward_proto::busy_delay`) on the same connection,
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
use serde::{Deserialize, Serialize};
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
pub(crate) const END_GRACE: Duration = Duration::from_secs(5);

/// The task to create for the fan-out: a future that creates it through the admin API and
/// returns its ID (it is not polled before it is due).
pub type TaskLaunch = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

/// Settings of [`run`].
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `steward-agent` does: these versions, and the inventory hash only (the server has the
    /// inventory from an earlier run; it asks for it if not). `None`: a first contact
    /// (configuration version 0, the inventory sent).
    pub resume: Option<Resume>,
}

/// What a restarted agent still holds from before (`steward-agent` keeps it in state.json).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The configuration version.
    pub config_version: u64,
    /// The communication profile version it acknowledged. Without it (0) each agent's first
    /// check-in acknowledges the profile again, a device write the server would not see from
    /// a restarted fleet: 100,000 of them in the first minute of a `--resume` run before
    /// round 8, which queued it (BENCHMARKS.md).
    pub profile_version: u64,
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
    checkins_held: AtomicU64,
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
    /// When the fan-out task was created (set just before the admin request goes out, by this
    /// process or, in a child swarm process, from the parent's word).
    task_at: Arc<OnceLock<Instant>>,
}

impl Ctx {
    fn progress(&self) -> Progress {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Progress {
            checked_in: load(&c.checked_in),
            checkins: load(&c.checkins),
            errors: load(&c.errors),
            full: load(&c.full),
            resumed: load(&c.resumed),
            woken: load(&c.woken),
            results: load(&c.results),
        }
    }

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
    /// The unchanged check-ins of the settled window (see [`RawReport::settled`]).
    settled: Latencies,
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
    /// The profile version it acknowledges at the end.
    profile_version: u64,
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

/// The counters so far, for a progress line (also sent by a child swarm process to its parent
/// once a second, so that the parent's progress bar shows the whole swarm).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// Agents that checked in at least once.
    pub checked_in: u64,
    /// Successful check-ins.
    pub checkins: u64,
    /// Failures.
    pub errors: u64,
    /// Full handshakes.
    pub full: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Agents given the fan-out task.
    pub woken: u64,
    /// Fan-out results acknowledged.
    pub results: u64,
}

impl Progress {
    /// Add another process's counters.
    pub fn add(&mut self, o: &Progress) {
        self.checked_in += o.checked_in;
        self.checkins += o.checkins;
        self.errors += o.errors;
        self.full += o.full;
        self.resumed += o.resumed;
        self.woken += o.woken;
        self.results += o.results;
    }

    /// The progress bar's message, `elapsed_s` into the run.
    pub fn message(&self, elapsed_s: f64) -> String {
        format!(
            "{} in, {} check-ins ({:.0}/s), {} errors, TLS {} full/{} resumed, {} woken, {} results",
            self.checked_in,
            self.checkins,
            self.checkins as f64 / elapsed_s.max(1e-9),
            self.errors,
            self.full,
            self.resumed,
            self.woken,
            self.results,
        )
    }
}

/// The final values of the counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RawCounters {
    /// Successful check-ins.
    pub checkins: u64,
    /// Failures.
    pub errors: u64,
    /// Full handshakes.
    pub full: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Agents that checked in at least once.
    pub checked_in: u64,
    /// Held connections dropped.
    pub held_dropped: u64,
    /// Long-polls answered 204.
    pub polls_empty: u64,
    /// Check-ins that went on as the long-poll.
    pub checkins_held: u64,
    /// Check-ins answered 503 SERVER-BUSY.
    pub busy: u64,
    /// Agents given the fan-out task.
    pub woken: u64,
    /// Fan-out results acknowledged.
    pub results: u64,
}

impl RawCounters {
    fn add(&mut self, o: &RawCounters) {
        self.checkins += o.checkins;
        self.errors += o.errors;
        self.full += o.full;
        self.resumed += o.resumed;
        self.checked_in += o.checked_in;
        self.held_dropped += o.held_dropped;
        self.polls_empty += o.polls_empty;
        self.checkins_held += o.checkins_held;
        self.busy += o.busy;
        self.woken += o.woken;
        self.results += o.results;
    }
}

/// Failures of one kind, with the first one's text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorCount {
    /// The kind.
    pub kind: ErrorKind,
    /// How many.
    pub count: u64,
    /// The first one's text.
    pub example: String,
}

/// What one swarm process measured, before any statistics: the raw latency samples, counters,
/// per-second series, outage times. A child swarm process sends it to its parent, which
/// merges the children's ([`RawReport::merge`]) and makes one [`SwarmReport`] of them
/// ([`finish`]) exactly as a single process makes its own, so the report means the same
/// whatever the number of processes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawReport {
    /// Agents run.
    pub agents: usize,
    /// From the start until the last agent stopped, seconds.
    pub wall_s: f64,
    /// The counters at the end.
    pub counters: RawCounters,
    /// First check-in latencies.
    pub first: Latencies,
    /// Unchanged check-in latencies.
    pub steady: Latencies,
    /// Those of them due in the settled window: from two intervals after the start (the
    /// first contacts, a reconnection storm on `--resume`, and the wave of retries behind it
    /// have passed) until the fan-out task, if any, is created.
    #[serde(default)]
    pub settled: Latencies,
    /// Check-ins with work.
    pub work: Latencies,
    /// From the fan-out task's creation until each agent got it.
    pub wake: Latencies,
    /// From the fan-out task's creation until each agent's result was acknowledged.
    pub result: Latencies,
    /// The slowest result, seconds, when every agent's result was acknowledged; `None` when
    /// one was missing.
    pub all_results_s: Option<f64>,
    /// Failures by kind, in the order first seen.
    pub errors: Vec<ErrorCount>,
    /// Outages (`all_back_after_s` is left to [`finish`]).
    pub recovery: Recovery,
    /// The highest configuration version an agent held at the end.
    pub config_version: Option<u64>,
    /// The profile version that agent acknowledged.
    #[serde(default)]
    pub profile_version: Option<u64>,
    /// Per second from the start.
    pub timeline: Vec<Second>,
    /// When the fan-out task was created, seconds from the start.
    pub task_at_s: Option<f64>,
    /// This process's use.
    pub swarm: Option<ProcUse>,
    /// Agents stopped at the hard end.
    pub aborted: u64,
    /// The soft open-file limit the process ran with.
    pub nofile_limit: u64,
    /// Source addresses used.
    pub sources: usize,
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl RawReport {
    /// One report of several processes' (on the same timeline): counters, per-second series
    /// and error counts added, latency samples pooled (so percentiles are those of the union),
    /// the earliest first failure and the latest recovery, the processes' use summed.
    pub fn merge(parts: Vec<RawReport>) -> RawReport {
        let mut m = RawReport {
            all_results_s: Some(0.0),
            ..RawReport::default()
        };
        let mut nofile: Option<u64> = None;
        let mut swarm: Option<ProcUse> = None;
        for p in parts {
            m.agents += p.agents;
            m.wall_s = m.wall_s.max(p.wall_s);
            m.counters.add(&p.counters);
            m.first.extend(p.first);
            m.steady.extend(p.steady);
            m.settled.extend(p.settled);
            m.work.extend(p.work);
            m.wake.extend(p.wake);
            m.result.extend(p.result);
            m.all_results_s = match (m.all_results_s, p.all_results_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            for e in p.errors {
                match m.errors.iter_mut().find(|x| x.kind == e.kind) {
                    Some(x) => x.count += e.count,
                    None => m.errors.push(e),
                }
            }
            let (r, q) = (&mut m.recovery, &p.recovery);
            r.agents_affected += q.agents_affected;
            r.still_down += q.still_down;
            r.first_failure_s = min_opt(r.first_failure_s, q.first_failure_s);
            r.last_recovered_s = max_opt(r.last_recovered_s, q.last_recovered_s);
            if (p.config_version, p.profile_version) > (m.config_version, m.profile_version) {
                m.config_version = p.config_version;
                m.profile_version = p.profile_version;
            }
            if m.timeline.len() < p.timeline.len() {
                m.timeline.resize(p.timeline.len(), Second::default());
            }
            for (s, q) in m.timeline.iter_mut().zip(&p.timeline) {
                s.checkins += q.checkins;
                s.full += q.full;
                s.resumed += q.resumed;
                s.errors += q.errors;
            }
            m.task_at_s = min_opt(m.task_at_s, p.task_at_s);
            if let Some(u) = p.swarm {
                let s = swarm.get_or_insert(ProcUse {
                    pid: u.pid,
                    ..ProcUse::default()
                });
                s.rss_end_mib += u.rss_end_mib;
                // The sum of each process's peak: an upper bound of the swarm's peak (the
                // processes need not peak at the same second).
                s.rss_peak_mib += u.rss_peak_mib;
                s.cpu_secs += u.cpu_secs;
                s.cores += u.cores;
                s.fds_end += u.fds_end;
                s.threads_end += u.threads_end;
            }
            m.aborted += p.aborted;
            nofile = Some(nofile.map_or(p.nofile_limit, |n| n.min(p.nofile_limit)));
            m.sources = m.sources.max(p.sources);
        }
        m.swarm = swarm;
        m.nofile_limit = nofile.unwrap_or(0);
        m
    }
}

/// What [`finish`] needs besides the raw measurements.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Where the agents connected (several gateways: their addresses, comma-separated).
    pub target: String,
    /// Through a gateway.
    pub via_gateway: bool,
    /// Swarm processes.
    pub processes: usize,
    /// The server's use, with `--server-pid`.
    pub server: Option<ProcUse>,
    /// The fan-out task's ID and how long its creation took, when it was created.
    pub fan_out: Option<(u64, Duration)>,
}

/// The open-file limit, the agents' client configurations and the task clock, ready to run.
#[derive(Debug)]
pub struct Swarm {
    opts: SwarmOptions,
    target: Target,
    first_index: usize,
    agents: Vec<(String, Arc<rustls::ClientConfig>)>,
    task_at: Arc<OnceLock<Instant>>,
    nofile: limits::NofileLimit,
}

/// Where the instant the fan-out task was created is noted, for the agents to measure from.
#[derive(Debug, Clone)]
pub struct TaskClock(Arc<OnceLock<Instant>>);

impl TaskClock {
    /// The fan-out task's create request goes out at `at` (only the first call counts).
    pub fn mark(&self, at: Instant) {
        let _ = self.0.set(at);
    }
}

/// Reads of a process's RSS and CPU over a run: the first, the peak, the last.
pub(crate) struct ProcWatch {
    pid: u32,
    first: Option<ProcSample>,
    peak: u64,
}

impl ProcWatch {
    pub(crate) fn new(pid: u32) -> Self {
        let first = limits::sample(pid);
        Self {
            pid,
            first,
            peak: first.map_or(0, |s| s.rss_bytes),
        }
    }

    pub(crate) fn tick(&mut self) {
        if let Some(s) = limits::sample(self.pid) {
            self.peak = self.peak.max(s.rss_bytes);
        }
    }

    /// The use since [`ProcWatch::new`], over `wall` seconds; `None` when unreadable.
    pub(crate) fn finish(&self, wall: f64) -> Option<ProcUse> {
        let now = limits::sample(self.pid)?;
        let first = self.first?;
        let cpu = now.cpu.saturating_sub(first.cpu).as_secs_f64();
        Some(ProcUse {
            pid: self.pid,
            rss_end_mib: now.rss_bytes as f64 / 1_048_576.0,
            rss_peak_mib: self.peak.max(now.rss_bytes) as f64 / 1_048_576.0,
            cpu_secs: cpu,
            cores: cpu / wall.max(1e-9),
            fds_end: now.fds,
            threads_end: now.threads,
        })
    }
}

impl Swarm {
    /// Raise the open-file limit and build each agent's client configuration. The agents are
    /// `identities`, numbered from `first_index` (their place in the store: it seeds their
    /// jitter and picks their source address, so a slice of the swarm in a child process
    /// behaves as the same agents in one process).
    pub fn prepare(
        identities: Vec<Identity>,
        first_index: usize,
        anchors_pem: &[String],
        target: Target,
        opts: SwarmOptions,
    ) -> Result<Self, BenchError> {
        let nofile = limits::raise_nofile();
        let roots = Arc::new(net::roots(anchors_pem)?);
        let mut agents = Vec::with_capacity(identities.len());
        for id in identities {
            let config =
                net::client_config(roots.clone(), Some((id.chain, id.key)), opts.resumption)?;
            agents.push((id.hostname, config));
        }
        Ok(Self {
            opts,
            target,
            first_index,
            agents,
            task_at: Arc::new(OnceLock::new()),
            nofile,
        })
    }

    /// Agents in this swarm.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// No agents.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The handle on which the fan-out task's creation is noted.
    pub fn task_clock(&self) -> TaskClock {
        TaskClock(self.task_at.clone())
    }

    /// Run the agents on the timeline that begins at `start` (it may be slightly ahead: the
    /// agents wait for it), until every one has stopped. Samples this process, and the
    /// server's when `server_pid` is given; `tick` is called about once a second with the
    /// counters and the seconds since the start.
    pub async fn run(
        self,
        start: Instant,
        server_pid: Option<u32>,
        mut tick: impl FnMut(Progress, f64) + Send + 'static,
    ) -> (RawReport, Option<ProcUse>) {
        let opts = self.opts;
        let sources = Sources::for_target(&self.target, opts.sources);
        let secs = opts.duration.as_secs() as usize + 1;
        let ctx = Arc::new(Ctx {
            start,
            deadline: start + opts.duration,
            target: self.target,
            sources,
            counters: Counters::default(),
            timeline: (0..secs + END_GRACE.as_secs() as usize + 60)
                .map(|_| SecondCells::default())
                .collect(),
            task_at: self.task_at,
            opts,
        });

        let count = self.agents.len();
        let mut agents = tokio::task::JoinSet::new();
        for (n, (hostname, config)) in self.agents.into_iter().enumerate() {
            agents.spawn(agent(self.first_index + n, hostname, config, ctx.clone()));
        }

        // Progress and /proc sampling, once a second, until told to stop.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sampler = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut server = server_pid.map(ProcWatch::new);
                let mut own = ProcWatch::new(std::process::id());
                let mut every = tokio::time::interval(Duration::from_millis(1000));
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        _ = every.tick() => {}
                    }
                    if let Some(s) = server.as_mut() {
                        s.tick();
                    }
                    own.tick();
                    tick(ctx.progress(), ctx.start.elapsed().as_secs_f64());
                }
                (server, own)
            })
        };

        // This process's agents (`opts.agents` is the whole swarm's in a child process).
        let mut outcomes = Vec::with_capacity(count);
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
        let (server, own) = match sampler.await {
            Ok((server, own)) => (server.and_then(|s| s.finish(wall)), own.finish(wall)),
            Err(_) => (None, None),
        };
        let mut raw = summarise(&ctx, outcomes, wall);
        raw.aborted = aborted;
        raw.nofile_limit = self.nofile.now;
        raw.swarm = own;
        (raw, server)
    }
}

/// Run the swarm in this process. `task` (with `persistent`) is created at `task_after` for
/// the fan-out.
pub async fn run(
    identities: Vec<Identity>,
    anchors_pem: &[String],
    target: Target,
    via_gateway: bool,
    opts: SwarmOptions,
    task: Option<TaskLaunch>,
    progress: indicatif::ProgressBar,
) -> Result<SwarmReport, BenchError> {
    let label = target.addr.to_string();
    let swarm = Swarm::prepare(identities, 0, anchors_pem, target, opts.clone())?;
    let start = Instant::now();

    // Fan-out: created at `task_after`, through the admin API.
    let clock = swarm.task_clock();
    let task_after = opts.task_after;
    let fan = task.filter(|_| opts.persistent).map(|launch| {
        tokio::spawn(async move {
            tokio::time::sleep_until((start + task_after).into()).await;
            let t0 = Instant::now();
            clock.mark(t0);
            let r = launch.await;
            (r, t0.elapsed())
        })
    });

    let bar = progress.clone();
    let duration = opts.duration.as_secs_f64();
    let (raw, server) = swarm
        .run(start, opts.server_pid, move |p, el| {
            bar.set_position(el.min(duration) as u64);
            bar.set_message(p.message(el));
        })
        .await;
    progress.finish_and_clear();

    let fan_out = match fan {
        Some(h) => {
            let (r, create) = h
                .await
                .map_err(|e| BenchError::Task(format!("the task launcher stopped: {e}")))?;
            Some((r.map_err(BenchError::Task)?, create))
        }
        None => None,
    };
    Ok(finish(
        raw,
        &opts,
        RunInfo {
            target: label,
            via_gateway,
            processes: 1,
            server,
            fan_out,
        },
    ))
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
    let resume = ctx.opts.resume.unwrap_or_default();
    let mut config_version = resume.config_version;
    let mut profile_version = resume.profile_version;
    let mut send_inventory = ctx.opts.resume.is_none();
    let mut results: Vec<TaskResult> = Vec::new();
    let mut executed: HashSet<u64> = HashSet::new();
    let mut failures = 0u32;
    let mut checked_in = false;
    let mut fast_polls = 0u32;
    // Turned away busy or kept waiting since the last check-in that set the next one (the
    // agent's `disturbed`).
    let mut disturbed = false;
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
        // A persistent agent asks for the check-in to go on as its long-poll, until the next
        // check-in, planned now (as the agent does). One draw per check-in for the delay
        // after it, whichever way it is taken.
        let draw = rng.unit();
        let planned = (ctx.opts.persistent && fast_polls < 3).then(|| {
            steward_agent::agent::next_checkin_delay(
                interval,
                ctx.opts.jitter_percent,
                disturbed,
                draw,
            )
        });
        let hold = planned.map(|p| {
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            (p.min(left) + LONG_POLL_MARGIN).as_secs()
        });
        let r = checkin(&ctx, &mut conn, source, &config, &req, hold, left).await;
        let now = Instant::now();
        // Told to come back later: no long-poll meanwhile either (as the agent).
        let busy = matches!(&r, Err(f) if f.kind == ErrorKind::HttpStatus(503));
        let next = match r {
            Ok(resp) => {
                let held = conn.as_ref().is_some_and(Conn::is_held);
                if held {
                    ctx.counters.checkins_held.fetch_add(1, Ordering::Relaxed);
                }
                let took = now.duration_since(due);
                let unchanged = req.inventory.is_none()
                    && req.results.is_empty()
                    && resp.config.is_none()
                    && resp.tasks.is_empty()
                    && resp.acked_results.is_empty();
                if checked_in && unchanged {
                    out.steady.push(took);
                    if due >= ctx.start + 2 * interval && ctx.task_at.get().is_none() {
                        out.settled.push(took);
                    }
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
                out.profile_version = profile_version;
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
                let slow = took > steward_agent::agent::SLOW_CHECKIN;
                if !results.is_empty() || send_inventory {
                    disturbed |= slow;
                    now
                } else if let (true, Some(p)) = (held, planned) {
                    // The hold runs until the planned check-in; a slow check-in spreads the
                    // one after it instead.
                    disturbed = slow;
                    now + p
                } else {
                    disturbed |= slow;
                    now + steward_agent::agent::next_checkin_delay(
                        interval,
                        ctx.opts.jitter_percent,
                        std::mem::take(&mut disturbed),
                        draw,
                    )
                }
            }
            Err(f) if f.kind == ErrorKind::HttpStatus(503) => {
                // Admission control: come back after Retry-After plus jitter, as the agent
                // does, on the same connection; not an error and not an outage.
                ctx.counters.busy.fetch_add(1, Ordering::Relaxed);
                disturbed = true;
                let retry = conn
                    .as_ref()
                    .and_then(|c| c.retry_after)
                    .unwrap_or(Duration::from_secs(10));
                now + steward_proto::busy_delay(retry, draw)
            }
            Err(f) => {
                conn = None;
                note_error(&ctx, &mut out, f);
                if checked_in && out.outage.is_none() {
                    out.outage = Some((ctx.start.elapsed().as_secs_f64(), None));
                }
                failures = failures.saturating_add(1);
                now + steward_agent::agent::backoff_delay(failures, interval.as_secs().max(1), draw)
            }
        };
        due = next;
        // The wait phase: long-poll on the held connection until the check-in is due.
        while ctx.opts.persistent && !busy && fast_polls < 3 {
            let Some(c) = conn.as_mut().filter(|c| c.is_open() || c.is_held()) else {
                break;
            };
            let until = due.min(ctx.deadline);
            let remaining = until.saturating_duration_since(Instant::now());
            if remaining <= MIN_LONG_POLL && !c.is_held() {
                break;
            }
            let started = Instant::now();
            let answer = if c.is_held() {
                // The check-in went on as this long-poll: its rest is the answer.
                c.held_rest(remaining + POLL_GRACE)
                    .await
                    .map(|rest| match rest {
                        Some(line) => (StatusCode::OK, line),
                        None => (StatusCode::NO_CONTENT, Default::default()),
                    })
            } else {
                let path = format!(
                    "{}?config_version={config_version}&wait={}&{}",
                    paths::WAIT,
                    (remaining + LONG_POLL_MARGIN).as_secs(),
                    steward_proto::WAIT_CARRY_TASKS
                );
                c.request(Method::GET, &path, None, remaining + POLL_GRACE)
                    .await
            };
            match answer {
                Ok((StatusCode::NO_CONTENT, _)) => {
                    ctx.counters.polls_empty.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() < MIN_LONG_POLL {
                        fast_polls += 1;
                    }
                }
                Ok((s, body))
                    if let Some(w) = s
                        .is_success()
                        .then(|| serde_json::from_slice::<WakeUp>(&body).ok())
                        .flatten() =>
                {
                    let now = Instant::now();
                    if let (Some(t0), None) = (ctx.task_at.get(), out.wake) {
                        out.wake = Some(now.duration_since(*t0));
                        ctx.counters.woken.fetch_add(1, Ordering::Relaxed);
                    }
                    // Tasks carried by the wake-up run at once (as in the agent); the check-in
                    // that follows delivers their results.
                    for t in &w.tasks {
                        if executed.insert(t.task_id) {
                            results.push(succeeded(t.task_id));
                        }
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
    hold: Option<u64>,
    timeout: Duration,
) -> Result<CheckinResponse, Failure> {
    let reused = conn.as_ref().is_some_and(Conn::is_open);
    let path = match hold {
        Some(secs) => format!(
            "{}?wait={secs}&{}",
            paths::CHECKIN,
            steward_proto::WAIT_CARRY_TASKS
        ),
        None => paths::CHECKIN.to_owned(),
    };
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
        match c.post_held(&path, req, timeout).await {
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

/// The raw measurements of this process's agents.
fn summarise(ctx: &Ctx, outcomes: Vec<Outcome>, wall: f64) -> RawReport {
    let mut raw = RawReport {
        agents: outcomes.len(),
        wall_s: wall,
        all_results_s: Some(0.0),
        sources: ctx.sources.len(),
        task_at_s: ctx
            .task_at
            .get()
            .map(|t| t.saturating_duration_since(ctx.start).as_secs_f64()),
        ..RawReport::default()
    };
    let held = outcomes
        .iter()
        .map(|o| (o.config_version, o.profile_version))
        .max()
        .filter(|&(v, _)| v > 0);
    raw.config_version = held.map(|h| h.0);
    raw.profile_version = held.map(|h| h.1);
    let rec = &mut raw.recovery;
    for o in outcomes {
        for (k, (n, ex)) in o.errors {
            match raw.errors.iter_mut().find(|e| e.kind == k) {
                Some(e) => e.count += n,
                None => raw.errors.push(ErrorCount {
                    kind: k,
                    count: n,
                    example: ex,
                }),
            }
        }
        if let Some(w) = o.wake {
            raw.wake.push(w);
        }
        match (o.result, &mut raw.all_results_s) {
            (Some(r), Some(a)) => {
                raw.result.push(r);
                *a = a.max(r.as_secs_f64());
            }
            (Some(r), None) => raw.result.push(r),
            (None, a) => *a = None,
        }
        if let Some((failed, back)) = o.outage {
            rec.agents_affected += 1;
            rec.first_failure_s = min_opt(rec.first_failure_s, Some(failed));
            match back {
                Some(b) => rec.last_recovered_s = max_opt(rec.last_recovered_s, Some(b)),
                None => rec.still_down += 1,
            }
        }
        raw.first.extend(o.first);
        raw.steady.extend(o.steady);
        raw.settled.extend(o.settled);
        raw.work.extend(o.work);
    }
    let c = &ctx.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    raw.counters = RawCounters {
        checkins: load(&c.checkins),
        errors: load(&c.errors),
        full: load(&c.full),
        resumed: load(&c.resumed),
        checked_in: load(&c.checked_in),
        held_dropped: load(&c.held_dropped),
        polls_empty: load(&c.polls_empty),
        checkins_held: load(&c.checkins_held),
        busy: load(&c.busy),
        woken: load(&c.woken),
        results: load(&c.results),
    };
    raw.timeline = ctx
        .timeline
        .iter()
        .take(wall.ceil() as usize)
        .map(|s| Second {
            checkins: load(&s.checkins),
            full: load(&s.full),
            resumed: load(&s.resumed),
            errors: load(&s.errors),
        })
        .collect();
    raw
}

/// The report of a run: the statistics of `raw` (one process's, or several merged).
pub fn finish(mut raw: RawReport, opts: &SwarmOptions, info: RunInfo) -> SwarmReport {
    let wall = raw.wall_s;
    let mut rec = raw.recovery;
    rec.all_back_after_s = match (rec.first_failure_s, rec.last_recovered_s, rec.still_down) {
        (Some(f), Some(l), 0) => Some(l - f),
        _ => None,
    };
    let timeline: Vec<Second> = raw
        .timeline
        .into_iter()
        .take(wall.ceil() as usize)
        .collect();
    let ramp = opts.interval.as_secs() as usize;
    let run_secs = opts.duration.as_secs() as usize;
    let steady_checkins: u64 = timeline
        .iter()
        .take(run_secs)
        .skip(ramp)
        .map(|s| s.checkins)
        .sum();
    // Sorted by kind, as the single-process report always listed them.
    raw.errors.sort_by_key(|e| e.kind);
    let limits_hit = raw
        .errors
        .iter()
        .filter_map(|e| e.kind.limit().map(|l| format!("{l}: {} failures", e.count)))
        .collect();
    let c = raw.counters;
    SwarmReport {
        agents: opts.agents,
        interval_s: opts.interval.as_secs_f64(),
        duration_s: opts.duration.as_secs_f64(),
        persistent: opts.persistent,
        target: info.target,
        via_gateway: info.via_gateway,
        sources: raw.sources,
        nofile_limit: raw.nofile_limit,
        agents_checked_in: c.checked_in,
        checkins: c.checkins,
        checkins_per_s: c.checkins as f64 / opts.duration.as_secs_f64().max(1e-9),
        steady_checkins_per_s: if run_secs > ramp {
            steady_checkins as f64 / (run_secs - ramp) as f64
        } else {
            0.0
        },
        first_contact: raw.first.percentiles(),
        latency: raw.steady.percentiles(),
        latency_settled: raw.settled.percentiles(),
        work_latency: raw.work.percentiles(),
        errors: raw
            .errors
            .iter()
            .map(|e| (e.kind.label(), e.count))
            .collect(),
        error_examples: raw
            .errors
            .iter()
            .map(|e| (e.kind.label(), e.example.clone()))
            .collect(),
        limits_hit,
        full_handshakes: c.full,
        resumed_handshakes: c.resumed,
        full_per_s: c.full as f64 / wall.max(1e-9),
        resumed_per_s: c.resumed as f64 / wall.max(1e-9),
        held_dropped: c.held_dropped,
        polls_empty: c.polls_empty,
        checkins_held: c.checkins_held,
        busy: c.busy,
        connections_per_agent: (c.full + c.resumed) as f64 / (c.checked_in.max(1)) as f64,
        fan_out: info.fan_out.map(|(id, create)| FanOut {
            task_id: Some(id),
            created_at_s: raw.task_at_s.unwrap_or(0.0),
            create_ms: create.as_secs_f64() * 1000.0,
            woken: raw.wake.len() as u64,
            wake_latency: raw.wake.percentiles(),
            results: raw.result.len() as u64,
            result_latency: raw.result.percentiles(),
            all_results_s: raw.all_results_s.filter(|_| !raw.result.is_empty()),
        }),
        recovery: rec,
        config_version: raw.config_version,
        profile_version: raw.profile_version,
        server: info.server,
        swarm: raw.swarm,
        aborted: raw.aborted,
        processes: info.processes.max(1),
        timeline,
    }
}

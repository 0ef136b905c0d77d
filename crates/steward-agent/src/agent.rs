//! `run`: check in, apply configuration, run tasks, long-poll, repeat.
//!
//! # Delivery and execution semantics
//!
//! **Results are exactly-once at the server.** A result is written to the durable outbox
//! (`outbox/<task_id>.json`, atomically) before anything else happens with it, is re-sent with
//! every check-in until the server lists its task ID in `acked_results`, and only then
//! deleted. The server stores the first copy and acknowledges every copy, so a crash between
//! "server committed" and "agent deleted" causes a harmless re-send, never a duplicate, and no
//! crash, outage or restart can lose a result.
//!
//! **Execution is at-most-once.** A task's ID is recorded durably in `executed.json` as soon
//! as the check-in that delivers it returns, *before* the program can start, and marked
//! finished once its result is in the outbox. If the agent dies in between (kill -9, power
//! loss, a crash while the task runs or waits for a slot), the next start finds the task
//! started-but-unfinished, does not run it again, and stores a `failed` result saying the run
//! was interrupted (event `AGENT-TASK-SKIPPED`), so the task never hangs as "running" on the
//! server. A task delivered again (a server may re-deliver one without a committed result) is
//! never run a second time either. Management commands are rarely idempotent (install,
//! reboot, delete, send a mail): running one twice silently is worse than asking an
//! administrator to re-run one that was interrupted, which the console shows plainly. A
//! graceful stop (SIGTERM) kills running tasks and reports them the same way.
//!
//! # Timing
//!
//! After a successful check-in the agent long-polls the wait route until the next check-in is
//! due (the interval from the agent-settings policy, ± its jitter), so a new task reaches it
//! within seconds. A finished task triggers a check-in at once, so its result arrives within
//! seconds too. When every way failed it retries with exponential backoff (2 s doubling,
//! capped at the interval, with full jitter so a fleet that lost its server does not return in
//! lock-step; event `AGENT-BACKOFF` names each delay), trying every LAN server and then every
//! gateway of the profile each time. A gateway that failed is set aside (one hour by default,
//! as ITMS does) while another way remains.
//!
//! # Failed attempts
//!
//! Every way that failed (LAN server or gateway, `host:port`) is kept in the state file as a
//! [`FailedAttempt`], one entry per address and failure kind with a count, at most
//! [`MAX_FAILED_ATTEMPTS`] (the least recent dropped first). They travel with the next
//! check-in that works — including one through a gateway in the same round — and are cleared
//! only when that check-in is answered 200, so a firewall, NAT or DNS fault on one way is
//! reported through another instead of staying silent. An internet agent's LAN attempt fails
//! every time; it is still reported (one entry, counting up): the console decides what is noise.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateRevocationListDer;
use steward_pki::{CertFacts, OffsetDateTime};
use steward_proto::{
    AgentConfig, AgentError, AgentSettings, CheckinRequest, CheckinResponse, CommunicationProfile,
    ConnectionPath, FailedAttempt, GatewayEntry, MAX_FAILED_ATTEMPTS, PROTOCOL_VERSION,
    TaskAssignment, TaskResult, paths,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::events::{ids, rfc3339};
use crate::net::{self, ClientIdentity, Connection, Connector, Fault, IdentityError};
use crate::store::{self, AgentState, DataDir, ExecutedSet, Identity, Outbox, StoreError};
use crate::{inventory, task};

/// Tasks run at the same time; more wait (the server delivers them again next time).
pub const MAX_CONCURRENT_TASKS: usize = 4;
/// Result bytes sent per check-in, well under the server's 4 MiB body limit; the rest follow
/// in immediate further check-ins.
pub const RESULTS_BUDGET_BYTES: usize = 3 * 1024 * 1024;
/// The inventory is sent in full at least this often.
pub const INVENTORY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The agent warns when its certificate expires within this many days.
pub const CERT_WARNING_DAYS: i64 = 30;
/// A long-poll answered faster than this is not repeated until the next check-in (a server
/// that does not hold the request must not turn the wait into a busy loop).
const MIN_LONG_POLL: Duration = Duration::from_secs(1);
/// The agent tells the server how long it listens for a long-poll's answer (`wait=SECS`): the
/// time until its next check-in plus this; the server answers this much before `wait` runs out
/// (its `LONG_POLL_MARGIN`), that is when the check-in is due, and the agent checks in at once
/// over the same connection: no gap in which a task would not be pushed, no new handshake.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(2);
/// How long past the check-in deadline the agent still listens for a long-poll's answer
/// (more than [`LONG_POLL_MARGIN`]): a server that answers a little late must not cost the
/// connection.
const POLL_GRACE: Duration = Duration::from_secs(5);
/// Long-polls failed in a row (the connection dropped, no answer) after which the agent stops
/// holding the persistent connection for [`PERSISTENT_FALLBACK`] (event
/// `AGENT-PERSISTENT-FALLBACK`): a middlebox that kills idle connections must not turn into a
/// reconnection every few seconds.
pub const PERSISTENT_FAILURES: u32 = 3;
/// How long the agent only checks in at its interval after [`PERSISTENT_FAILURES`].
pub const PERSISTENT_FALLBACK: Duration = Duration::from_secs(30 * 60);
/// Without the persistent connection, the connection is kept only when the next check-in is
/// due sooner than this (the server closes connections idle for 30 s).
const IDLE_KEEP: Duration = Duration::from_secs(20);
/// How long a graceful stop waits for killed tasks to write their results.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// After a task starts, the agent waits this long for it before it long-polls again. A
/// long-poll in flight when a task ends is abandoned for the check-in that reports it, and the
/// connection with it (HTTP/1.1 cannot cancel a request), so that check-in would pay a new TLS
/// handshake: in a fan-out of a quick task, one per agent. A task that runs longer is worth
/// the handshake; for this long, a wake-up from the server waits for the report's check-in.
pub const TASK_REPORT_WAIT: Duration = Duration::from_secs(5);

/// What `run` needs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Check in, run what arrives, deliver the results, and return (instead of looping).
    pub once: bool,
    /// CRLs to check server certificates against (none: revocation is not checked).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// How long a gateway that failed is skipped while another way remains
    /// (`None`: [`DEFAULT_GATEWAY_SET_ASIDE`]).
    pub gateway_set_aside: Option<Duration>,
    /// Skip the profile's LAN servers and use only its gateways: the internet path, tried from
    /// a computer on the LAN (before sending laptops out, or in `steward demo`).
    pub gateways_only: bool,
}

/// How long a failing gateway is set aside by default (as ITMS does).
pub const DEFAULT_GATEWAY_SET_ASIDE: Duration = Duration::from_secs(3600);

/// One way to the server: a LAN address, or a gateway of the profile.
#[derive(Debug, Clone)]
enum Route {
    Lan(steward_proto::ServerEndpoint),
    /// A LAN server's plain-HTTP site (`protocol: http`); its `port` is the HTTP port. Tried
    /// before the same server's HTTPS port, which is the fallback. Never a gateway.
    LanHttp(steward_proto::ServerEndpoint),
    Gateway(GatewayEntry),
}

impl Route {
    fn endpoint(&self) -> steward_proto::ServerEndpoint {
        match self {
            Route::Lan(s) | Route::LanHttp(s) => s.clone(),
            Route::Gateway(g) => steward_proto::ServerEndpoint {
                host: g.host.clone(),
                port: g.port,
                http_port: None,
            },
        }
    }

    fn path(&self) -> ConnectionPath {
        match self {
            Route::Lan(s) | Route::LanHttp(s) => ConnectionPath::Lan {
                server: host_port(s),
            },
            Route::Gateway(g) => ConnectionPath::Gateway {
                gateway: g.name.clone(),
                via: g.authority(),
            },
        }
    }
}

/// Why `run` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory holds no identity.
    #[error("{0} is not enrolled: run `steward-agent enroll --package FILE --data-dir DIR` first")]
    NotEnrolled(String),
    /// The stored identity cannot be used.
    #[error("the stored identity cannot be used: {0}; enroll again with --force")]
    Identity(String),
    /// The data directory cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--once`: the check-in failed.
    #[error("check-in failed: {0}")]
    CheckinFailed(Fault),
}

impl RunError {
    /// The event ID of this failure.
    pub fn id(&self) -> &'static str {
        match self {
            RunError::NotEnrolled(_) | RunError::Identity(_) => ids::IDENTITY_INVALID,
            RunError::Store(_) => ids::STORE_FAILED,
            RunError::CheckinFailed(f) => f.id(),
        }
    }
}

/// Settings as the agent applies them: the policy's values within sane bounds, so a typo in a
/// policy (an interval of 0, a 10 GB output cap) cannot turn agents into a flood or a crash.
pub fn effective_settings(s: &AgentSettings) -> AgentSettings {
    AgentSettings {
        checkin_interval_secs: s.checkin_interval_secs.clamp(5, 24 * 3600),
        jitter_percent: s.jitter_percent.min(50),
        long_poll_secs: s.long_poll_secs.clamp(1, 3600),
        task_output_max_bytes: s.task_output_max_bytes.min(1024 * 1024),
        persistent_connection: s.persistent_connection,
    }
}

/// Run the agent until `shutdown` completes (or, with `once`, after one round).
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let mut agent = Agent::load(&opts)?;
    tracing::info!(
        id = ids::STARTED,
        "steward-agent {} started: device {}, data directory {}, {} result(s) waiting in the outbox",
        env!("CARGO_PKG_VERSION"),
        agent.identity.device_id,
        agent.dir.root().display(),
        agent.outbox.load().map(|(r, _)| r.len()).unwrap_or(0)
    );
    agent.report_interrupted();
    agent.check_cert_expiry();
    tokio::pin!(shutdown);
    let outcome = if opts.once {
        tokio::select! {
            biased;
            () = shutdown.as_mut() => Ok(()),
            r = agent.run_once() => r,
        }
    } else {
        agent.run_loop(&mut shutdown).await;
        Ok(())
    };
    agent.stop().await;
    outcome
}

/// What woke the wait phase.
enum Wake {
    Shutdown,
    TaskDone(Option<Joined>),
    /// A wake-up; `tasks` are those it carried (already handed out to this agent).
    Work {
        fast: bool,
        tasks: Vec<TaskAssignment>,
    },
    PollEnded {
        fast: bool,
    },
    PollFailed(Option<Fault>),
    Due,
}

/// The persistent connection's health: long-polls failed in a row, and the fallback to polling
/// at the interval only that [`PERSISTENT_FAILURES`] of them start for [`PERSISTENT_FALLBACK`].
#[derive(Debug, Default)]
struct PollHealth {
    failures: u32,
    off_until: Option<Instant>,
}

/// Whether the persistent connection may be held now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    Yes,
    /// A fallback to polling is running.
    No,
    /// A fallback to polling just ended: held again (said once).
    Again,
}

impl PollHealth {
    /// A long-poll ended normally (answered, not cut).
    fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A long-poll failed; `true` when this failure starts the fallback to polling.
    fn failed(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures < PERSISTENT_FAILURES {
            return false;
        }
        self.failures = 0;
        self.off_until = Some(now + PERSISTENT_FALLBACK);
        true
    }

    fn allowed(&mut self, now: Instant) -> Allowed {
        match self.off_until {
            None => Allowed::Yes,
            Some(t) if now < t => Allowed::No,
            Some(_) => {
                self.off_until = None;
                Allowed::Again
            }
        }
    }
}

/// A finished task as the JoinSet hands it back.
type Joined = Result<(tokio::task::Id, TaskResult), tokio::task::JoinError>;

struct Agent {
    dir: DataDir,
    identity: Identity,
    key_pem: String,
    crls: Vec<CertificateRevocationListDer<'static>>,
    config: Option<AgentConfig>,
    settings: AgentSettings,
    profile: CommunicationProfile,
    connector: Connector,
    /// Connectors for gateways with their own extra trust anchors, by gateway name.
    gateway_connectors: HashMap<String, Connector>,
    conn: Option<Connection>,
    state: AgentState,
    outbox: Outbox,
    executed: ExecutedSet,
    /// Results whose outbox write failed (disk full): kept in memory and sent all the same.
    unsaved: Vec<TaskResult>,
    running: HashMap<tokio::task::Id, u64>,
    /// Received and recorded, waiting for a free slot.
    queued: VecDeque<TaskAssignment>,
    tasks: JoinSet<TaskResult>,
    cancel: watch::Sender<bool>,
    inventory_requested: bool,
    connected_reported: bool,
    rejected_config: Option<u64>,
    /// Consecutive long-poll wake-ups answered at once.
    fast_wakes: u32,
    /// Gateways that failed, by name, and until when they are skipped.
    set_aside: HashMap<String, Instant>,
    set_aside_for: Duration,
    /// See [`RunOptions::gateways_only`].
    gateways_only: bool,
    /// When the trust bundle was last fetched (at most once a minute).
    trust_tried_at: Option<Instant>,
    /// Failed long-polls in a row, and the fallback to polling they may have started.
    poll_health: PollHealth,
    /// The `Retry-After` of the last 503 `SERVER-BUSY` answer, until it is used.
    busy_retry: Option<Duration>,
    /// The server turned this agent away busy, or kept a check-in waiting, since the last
    /// check-in that set the next one: that one is then drawn over a whole interval
    /// ([`next_checkin_delay`]).
    disturbed: bool,
    /// When the last task started (see [`TASK_REPORT_WAIT`]).
    task_started: Option<Instant>,
}

impl Agent {
    fn load(opts: &RunOptions) -> Result<Self, RunError> {
        let dir = DataDir::new(&opts.data_dir);
        let identity = dir
            .load_identity()
            .map_err(|e| RunError::Identity(e.to_string()))?
            .ok_or_else(|| RunError::NotEnrolled(opts.data_dir.display().to_string()))?;
        let key_pem = store::read_bytes(&dir.key_path())?
            .ok_or_else(|| RunError::Identity(format!("{} is missing", dir.key_path().display())))
            .map(|b| String::from_utf8_lossy(&b).into_owned())?;
        store::sweep_temps(dir.root())?;
        let outbox = Outbox::open(dir.outbox_dir())?;
        let executed = ExecutedSet::load(dir.executed_path())?;
        let mut state = dir.load_state()?;
        let config = match dir.load_config() {
            Ok(c) => c,
            Err(e) => {
                // A configuration is only a cache of what the server will send again: start
                // from the enrollment profile rather than refuse to run.
                tracing::error!(
                    id = ids::STORE_FAILED,
                    "{e}; starting from the enrollment profile"
                );
                None
            }
        };
        let (profile, settings) = match &config {
            Some(c) if net::check_profile(&c.profile).is_ok() => {
                (c.profile.clone(), effective_settings(&c.settings))
            }
            _ => (
                identity.profile.clone(),
                effective_settings(&AgentSettings::default()),
            ),
        };
        let connector = build_connector(&profile, &identity, &key_pem, &opts.crls)?;
        let gateway_connectors =
            build_gateway_connectors(&profile, &identity, &key_pem, &opts.crls);
        state.pid = Some(std::process::id());
        state.device_id = Some(identity.device_id.clone());
        state.config_version = config.as_ref().map_or(0, |c| c.version);
        let (cancel, _) = watch::channel(false);
        Ok(Self {
            dir,
            identity,
            key_pem,
            crls: opts.crls.clone(),
            config,
            settings,
            profile,
            connector,
            gateway_connectors,
            conn: None,
            state,
            outbox,
            executed,
            unsaved: Vec::new(),
            running: HashMap::new(),
            queued: VecDeque::new(),
            tasks: JoinSet::new(),
            cancel,
            inventory_requested: false,
            connected_reported: false,
            rejected_config: None,
            fast_wakes: 0,
            set_aside: HashMap::new(),
            set_aside_for: opts.gateway_set_aside.unwrap_or(DEFAULT_GATEWAY_SET_ASIDE),
            gateways_only: opts.gateways_only,
            trust_tried_at: None,
            poll_health: PollHealth::default(),
            busy_retry: None,
            disturbed: false,
            task_started: None,
        })
    }

    async fn run_loop(&mut self, shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>) {
        loop {
            let now = Instant::now();
            // Holding the persistent connection, and no task running whose report would need
            // the connection free: the check-in may go on as the long-poll until the next one,
            // planned now (see `Connection::post_checkin_held`).
            let planned = (self.persistent_allowed()
                && self.fast_wakes < 3
                && self.tasks.is_empty()
                && self.queued.is_empty())
            .then(|| self.planned_interval());
            // A stop must not wait for a check-in stuck on unreachable servers (each step has
            // its own timeout, and there may be several servers); abandoning one is safe, as
            // nothing is acknowledged or deleted before its response is in hand.
            let outcome = tokio::select! {
                biased;
                () = shutdown.as_mut() => return,
                r = self.checkin(planned) => r,
            };
            // Told to come back later: no long-poll meanwhile either (it would only bring the
            // agent back before Retry-After, as a configuration it lacks wakes it at once).
            let busy = matches!(&outcome, Err(f) if net::is_server_busy(f));
            let held = self.conn.as_ref().is_some_and(Connection::is_held);
            // Kept waiting: a queue on the server, or a way that failed before another answered.
            let slow = busy || now.elapsed() > SLOW_CHECKIN;
            let mut deadline = match outcome {
                Ok(true) => {
                    // Another round at once: a long-poll held on the connection would keep it
                    // busy until its end.
                    if held {
                        self.conn = None;
                    }
                    self.disturbed |= slow;
                    now
                }
                Ok(false) => match planned {
                    // Held until the planned check-in, which used up `disturbed`: a slow
                    // check-in spreads the one after it instead.
                    Some(p) if held => {
                        self.disturbed = slow;
                        now + p
                    }
                    _ => {
                        self.disturbed |= slow;
                        now + self.next_interval()
                    }
                },
                Err(f) if net::is_server_busy(&f) => {
                    self.disturbed |= slow;
                    // Admission control: the server is up and asks to be left alone for a
                    // while. Not a failed way and not a fault; the connection is kept.
                    let retry = self.busy_retry.take().unwrap_or(Duration::from_secs(10));
                    let delay = steward_proto::busy_delay(retry, random_unit());
                    tracing::info!(
                        id = ids::SERVER_BUSY,
                        "the server is busy (503 SERVER-BUSY, Retry-After {} s); next check-in in {:.1} s",
                        retry.as_secs(),
                        delay.as_secs_f64()
                    );
                    now + delay
                }
                Err(_) => {
                    self.disturbed |= slow;
                    let delay = self.backoff();
                    // Info: the faults themselves were logged as errors just before; this
                    // line only says when the agent tries again.
                    tracing::info!(
                        id = ids::BACKOFF,
                        "every way to the server failed ({} round(s) in a row); next attempt in {:.1} s (backoff, capped at the {} s check-in interval)",
                        self.state.consecutive_failures,
                        delay.as_secs_f64(),
                        self.settings.checkin_interval_secs
                    );
                    now + delay
                }
            };
            // Three wake-ups in a row that came back at once and led nowhere mean the server and
            // agent disagree about what is new: stop polling until the next interval rather
            // than spin.
            let persistent = self.persistent_allowed();
            if !persistent && deadline.saturating_duration_since(Instant::now()) > IDLE_KEEP {
                // Checking in at the interval only: an idle connection held until then would
                // only tie up a socket on the server (which closes idle ones after 30 s).
                self.conn = None;
            }
            let mut may_poll = persistent
                && !busy
                && self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.is_open() || c.is_held())
                && self.fast_wakes < 3;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                // The server answers when `remaining` runs out (see LONG_POLL_MARGIN); the
                // answer (204) leaves the connection ready for the check-in then due.
                // A task that started a moment ago may end any moment: wait for it without a
                // long-poll, so that its report goes over this connection (TASK_REPORT_WAIT).
                let report_wait = self
                    .task_started
                    .map(|t| t + TASK_REPORT_WAIT)
                    .filter(|&t| !self.tasks.is_empty() && t < deadline && t > Instant::now());
                // A held check-in's long-poll is already under way: it is read to its end (the
                // server ends it at the deadline).
                let held = self.conn.as_ref().is_some_and(Connection::is_held);
                let poll = may_poll && (held || remaining > MIN_LONG_POLL) && report_wait.is_none();
                // While a long-poll runs, its answer is awaited a little past the deadline.
                let wake_at = if poll {
                    deadline + POLL_GRACE
                } else {
                    report_wait.unwrap_or(deadline)
                };
                // A rejected configuration is "seen": the server must not wake us for it again.
                let config_version = self.rejected_config.unwrap_or(self.state.config_version);
                let started = Instant::now();
                let wake = tokio::select! {
                    biased;
                    () = shutdown.as_mut() => Wake::Shutdown,
                    done = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                        Wake::TaskDone(done)
                    }
                    r = long_poll(&mut self.conn, config_version, remaining), if poll => match r {
                        Ok(Some(w)) => Wake::Work {
                            fast: started.elapsed() < MIN_LONG_POLL,
                            tasks: w.tasks,
                        },
                        Ok(None) => Wake::PollEnded { fast: started.elapsed() < MIN_LONG_POLL },
                        Err(f) => Wake::PollFailed(f),
                    },
                    () = tokio::time::sleep_until(wake_at) => Wake::Due,
                };
                match wake {
                    Wake::Shutdown => return,
                    Wake::TaskDone(done) => {
                        self.task_done(done);
                        // Deliver the result now rather than at the next interval.
                        break;
                    }
                    Wake::Work { tasks, .. } if !tasks.is_empty() => {
                        // The tasks came with the wake-up: no check-in to fetch them. They
                        // run now; their completion wakes this loop to deliver the results.
                        self.fast_wakes = 0;
                        self.poll_health.succeeded();
                        self.accept_tasks(&tasks);
                        self.save_state();
                    }
                    Wake::Work { fast, .. } => {
                        self.fast_wakes = if fast { self.fast_wakes + 1 } else { 0 };
                        self.poll_health.succeeded();
                        break;
                    }
                    // The wait for a starting task ran out: long-poll until the deadline.
                    Wake::Due if Instant::now() < deadline => {}
                    Wake::Due => {
                        self.fast_wakes = 0;
                        break;
                    }
                    Wake::PollEnded { fast } => {
                        may_poll = !fast;
                        if !fast {
                            self.poll_health.succeeded();
                        }
                    }
                    Wake::PollFailed(fault) => {
                        // The connection dropped: the server or gateway restarted, often with
                        // a change (a new port, a new profile) the agent should hear of soon.
                        // Check in again after a short random delay, spread so that a restart
                        // under many agents is not met by all of them at once, and longer
                        // with each failure in a row. That check-in says what is wrong, if
                        // anything is, with its own evidence.
                        self.conn = None;
                        may_poll = false;
                        let in_a_row = self.poll_health.failures.saturating_add(1);
                        if self.poll_health.failed(Instant::now()) {
                            self.log_fallback(in_a_row, fault.as_ref());
                        }
                        let delay = self
                            .reconnect_delay()
                            .mul_f64(f64::from(in_a_row.clamp(1, 8)));
                        deadline = deadline.min(Instant::now() + delay);
                    }
                }
            }
        }
    }

    async fn run_once(&mut self) -> Result<(), RunError> {
        // Bounded: each round either delivers results or starts tasks; a server that keeps
        // sending work would otherwise keep `--once` going forever.
        for _ in 0..16 {
            let more = self.checkin(None).await.map_err(RunError::CheckinFailed)?;
            if self.tasks.is_empty() && !more {
                return Ok(());
            }
            while let Some(done) = self.tasks.join_next_with_id().await {
                self.task_done(Some(done));
            }
        }
        Ok(())
    }

    /// Stop: kill running tasks (they write their results), report queued ones as not run,
    /// save the state.
    async fn stop(&mut self) {
        while let Some(t) = self.queued.pop_front() {
            self.store_result(not_run(
                t.task_id,
                "the agent stopped before this task could start; it was not run",
            ));
            self.mark_finished(t.task_id);
        }
        if !self.tasks.is_empty() {
            tracing::info!(
                id = ids::STOPPED,
                "stopping: {} running task(s) are killed and reported as interrupted",
                self.tasks.len()
            );
            let _ = self.cancel.send(true);
            let deadline = Instant::now() + STOP_GRACE;
            while !self.tasks.is_empty() {
                match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                    Ok(done) => self.task_done(done),
                    Err(_) => break,
                }
            }
        } else {
            tracing::info!(id = ids::STOPPED, "stopping");
        }
        self.save_state();
    }

    /// The wait until the next check-in, drawn before a check-in that may be held until then
    /// (`disturbed` is used up only if it is).
    fn planned_interval(&self) -> Duration {
        next_checkin_delay(
            Duration::from_secs(self.settings.checkin_interval_secs),
            self.settings.jitter_percent,
            self.disturbed,
            random_unit(),
        )
    }

    /// The wait until the next check-in after one that succeeded; it uses up `disturbed`.
    fn next_interval(&mut self) -> Duration {
        next_checkin_delay(
            Duration::from_secs(self.settings.checkin_interval_secs),
            self.settings.jitter_percent,
            std::mem::take(&mut self.disturbed),
            random_unit(),
        )
    }

    fn backoff(&self) -> Duration {
        backoff_delay(
            self.state.consecutive_failures,
            self.settings.checkin_interval_secs,
            random_unit(),
        )
    }

    /// Whether to hold the persistent connection now: the policy wants it
    /// (`persistent_connection`), and no fallback to polling is running.
    fn persistent_allowed(&mut self) -> bool {
        if !self.settings.persistent_connection {
            return false;
        }
        match self.poll_health.allowed(Instant::now()) {
            Allowed::Yes => true,
            Allowed::No => false,
            Allowed::Again => {
                tracing::info!(
                    id = ids::PERSISTENT_FALLBACK,
                    "trying the persistent connection again after {} min of checking in at the interval only",
                    PERSISTENT_FALLBACK.as_secs() / 60
                );
                true
            }
        }
    }

    /// [`PERSISTENT_FAILURES`] long-polls failed in a row: say why, and that the agent checks
    /// in at the interval only for [`PERSISTENT_FALLBACK`].
    fn log_fallback(&self, in_a_row: u32, last: Option<&Fault>) {
        let why = last.map_or_else(
            || "no answer before the check-in was due".to_owned(),
            ToString::to_string,
        );
        tracing::warn!(
            id = ids::PERSISTENT_FALLBACK,
            "the persistent connection failed {in_a_row} times in a row (last: {why}); something on the way may cut idle connections. Checking in every {} s only, without holding a connection, for {} min",
            self.settings.checkin_interval_secs,
            PERSISTENT_FALLBACK.as_secs() / 60
        );
    }

    /// After a dropped long-poll: uniform in [1 s, a quarter of the interval, at most 15 s].
    fn reconnect_delay(&self) -> Duration {
        let spread = (self.settings.checkin_interval_secs as f64 / 4.0).clamp(1.0, 15.0);
        Duration::from_secs_f64(1.0 + (spread - 1.0) * random_unit())
    }

    fn config_version(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.version)
    }

    /// One check-in against the servers of the profile, in order. `Ok(true)` asks for another
    /// one right away (more results to deliver, inventory asked for).
    ///
    /// With `planned` (the time to the next check-in), the server is asked to let this one go
    /// on as the long-poll until then; whether it did is the connection's
    /// ([`Connection::is_held`]). Not asked when more results wait to be sent: the next round
    /// is at once.
    async fn checkin(&mut self, planned: Option<Duration>) -> Result<bool, Fault> {
        let now = OffsetDateTime::now_utc();
        self.state.last_attempt_at = Some(rfc3339(now));
        let inv = inventory::collect();
        let hash = inventory::hash(&inv);
        let reason = if self.inventory_requested {
            Some("requested by the server")
        } else if self.state.inventory_hash.as_deref() != Some(hash.as_str()) {
            Some("changed")
        } else if self.inventory_stale(now) {
            Some("daily")
        } else {
            None
        };
        let (results, more_results) = self.pending_results();
        let sent_ids: Vec<u64> = results.iter().map(|r| r.task_id).collect();
        let mut request = CheckinRequest {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            config_version: self.config_version(),
            inventory_hash: hash.clone(),
            inventory: reason.is_some().then_some(inv),
            results,
            last_error: self.state.pending_error.clone(),
            connection: ConnectionPath::Lan {
                server: String::new(),
            },
            profile_version: self.profile.version,
            failed_attempts: self.state.failed_attempts.clone(),
        };

        // Due for renewal by the agent's own reckoning: the renewal goes over this connection
        // right after the answer, so it must not be held.
        let own_renewal_due = self.own_renewal_due();
        // The server holds at most `wait` less its margin: until the planned check-in.
        let hold = planned
            .filter(|_| !more_results && !own_renewal_due)
            .map(|p| (p + LONG_POLL_MARGIN).as_secs());
        let mut answer = self.send_checkin(&mut request, hold).await;
        // Untrusted: perhaps a certificate rollover happened while this agent was away. The
        // signed trust bundle may supply the new root; then the round is tried once more.
        if let Err(fault) = &answer
            && fault.id() == ids::TLS_UNTRUSTED
            && self.recover_trust().await
        {
            request.last_error = self.state.pending_error.clone();
            answer = self.send_checkin(&mut request, hold).await;
        }
        let (server, response) = match answer {
            Ok(ok) => ok,
            Err(fault) => {
                if !net::is_server_busy(&fault) {
                    self.state.consecutive_failures =
                        self.state.consecutive_failures.saturating_add(1);
                }
                self.save_state();
                return Err(fault);
            }
        };

        // Answered 200: the server has what was sent. Only now are the attempts forgotten, so
        // a check-in lost on the way sends them again rather than losing them.
        self.state.failed_attempts.clear();
        let recovered = self.state.consecutive_failures > 0 || !self.connected_reported;
        let moved = self.state.server.as_deref() != Some(server.as_str());
        self.state.consecutive_failures = 0;
        self.state.pending_error = None;
        self.state.last_checkin_at = Some(rfc3339(OffsetDateTime::now_utc()));
        self.state.connection = Some(request.connection.clone());
        self.state.server = Some(server.clone());
        self.state.device_id = Some(response.device_id.clone());
        if recovered || moved {
            let path = match &request.connection {
                ConnectionPath::Lan { .. } => "path lan".to_owned(),
                ConnectionPath::Gateway { gateway, via } => {
                    format!(
                        "through gateway {via} ({gateway}), its certificate thumbprint validated against the profile"
                    )
                }
            };
            tracing::info!(
                id = ids::CONNECTED,
                "connected to {server}, {path} (device {}, configuration version {})",
                response.device_id,
                self.config_version()
            );
            self.connected_reported = true;
        }
        if let Some(why) = reason {
            self.state.inventory_hash = Some(hash.clone());
            self.state.inventory_sent_at = self.state.last_checkin_at.clone();
            tracing::info!(
                id = ids::INVENTORY_SENT,
                "inventory sent ({why}; hash {})",
                hash.get(..16).unwrap_or(&hash)
            );
        }
        // Asked for while we did not send it: send next time, which is right away.
        self.inventory_requested = response.send_inventory && reason.is_none();

        self.ack(&response.acked_results);
        let unacked = sent_ids
            .iter()
            .any(|id| !response.acked_results.contains(id));
        let profile_before = self.profile.version;
        if let Some(config) = response.config {
            self.apply_config(config);
        }
        // A new profile is acknowledged at once (the next check-in says which version it
        // holds): a gateway's port change or certificate switch waits for every agent's word,
        // and should not wait a whole interval for it.
        let new_profile = self.profile.version != profile_before;
        // Renewed now, and confirmed by the immediate next check-in (the first request with
        // the new certificate is what makes the server retire the old one).
        let renewed =
            (response.renew_certificate || own_renewal_due) && self.renew_certificate().await;
        self.check_cert_expiry();
        self.accept_tasks(&response.tasks);
        self.save_state();
        // Another round now if results remain that did not fit, inventory was asked for, or a
        // new profile is to be acknowledged — but not when the server left results we just
        // sent unacknowledged (it would only leave them again) or only started tasks (their
        // completion wakes the loop).
        Ok((more_results && !unacked) || self.inventory_requested || new_profile || renewed)
    }

    /// Whether 90% of this certificate's lifetime has passed. The server normally asks first
    /// (its `[certs] renew_at_percent`, at most 90); this covers servers that do not know the
    /// certificate's expiry (devices enrolled before it was recorded).
    fn own_renewal_due(&self) -> bool {
        let Some(facts) = net::parse_certs(&self.identity.cert_pem)
            .ok()
            .and_then(|c| c.first().and_then(|d| CertFacts::from_der(d).ok()))
        else {
            return false;
        };
        let life = (facts.not_after - facts.not_before).whole_seconds().max(1);
        let elapsed = (OffsetDateTime::now_utc() - facts.not_before).whole_seconds();
        elapsed.saturating_mul(10) >= life.saturating_mul(9)
    }

    /// Fetches the signed trust bundle and adds its new anchors to the profile; `true` when
    /// anchors were added (the caller retries). At most once a minute.
    async fn recover_trust(&mut self) -> bool {
        let now = Instant::now();
        if self
            .trust_tried_at
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return false;
        }
        self.trust_tried_at = Some(now);
        let timeout = self.connector.timeouts.request;
        let fetched = crate::trust::fetch(
            &self.identity,
            &self.profile.trust_anchors_pem,
            self.profile.version,
            timeout,
        )
        .await;
        let (url, bundle) = match fetched {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    id = ids::TRUST_RECOVERY_FAILED,
                    "the agent site's certificate is untrusted and no trust bundle helped: {e}"
                );
                return false;
            }
        };
        let added: Vec<String> = bundle
            .trust_anchors_pem
            .iter()
            .filter(|a| {
                !self
                    .profile
                    .trust_anchors_pem
                    .iter()
                    .any(|h| h.trim() == a.trim())
            })
            .cloned()
            .collect();
        if added.is_empty() {
            tracing::warn!(
                id = ids::TRUST_RECOVERY_FAILED,
                "the signed trust bundle from {url} (profile version {}) adds no anchor this agent lacks; the certificate is untrusted for another reason",
                bundle.profile_version
            );
            return false;
        }
        let mut profile = self.profile.clone();
        profile.trust_anchors_pem.extend(added.iter().cloned());
        let connector = match build_connector(&profile, &self.identity, &self.key_pem, &self.crls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    id = ids::TRUST_RECOVERY_FAILED,
                    "the anchors of the trust bundle from {url} are unusable: {e}"
                );
                return false;
            }
        };
        // Kept on disk too, so a restart before the next configuration still connects. The
        // configuration version is left as it was: the server sends the whole new one.
        if let Some(cfg) = self.config.as_mut() {
            cfg.profile.trust_anchors_pem = profile.trust_anchors_pem.clone();
            if let Err(e) = self.dir.store_config(cfg) {
                tracing::warn!(
                    id = ids::STORE_FAILED,
                    "cannot store the recovered trust anchors: {e}"
                );
            }
        }
        self.connector = connector;
        self.gateway_connectors =
            build_gateway_connectors(&profile, &self.identity, &self.key_pem, &self.crls);
        self.conn = None;
        self.profile = profile;
        let subjects: Vec<String> = added
            .iter()
            .filter_map(|p| {
                net::parse_certs(p)
                    .ok()?
                    .first()
                    .and_then(|d| CertFacts::from_der(d).ok())
            })
            .map(|f| f.subject)
            .collect();
        let message = format!(
            "the agent site's certificate was untrusted (a certificate rollover while this agent was away); the trust bundle from {url}, signed by the platform root, added {} ({}); reconnecting",
            subjects.join(", "),
            if added.len() == 1 {
                "1 anchor".to_owned()
            } else {
                format!("{} anchors", added.len())
            }
        );
        tracing::info!(id = ids::TRUST_RECOVERED, "{message}");
        self.set_pending(ids::TRUST_RECOVERED, message);
        true
    }

    /// Renews the client certificate over the open connection (still authenticated with the
    /// current one) and switches to the new identity; `false` when it did not happen (the
    /// current identity keeps working and the server asks again next time).
    async fn renew_certificate(&mut self) -> bool {
        let timeout = self.connector.timeouts.request;
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let renewed = match crate::renew::renew(&self.dir, &self.identity, conn, timeout).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    id = ids::CERT_RENEW_FAILED,
                    "renewing the client certificate failed: {e}; the current one keeps working and renewal is tried again at the next check-in"
                );
                return false;
            }
        };
        // On disk already: from here on only the new pair is used, by every connection.
        match build_connector(
            &self.profile,
            &renewed.identity,
            &renewed.key_pem,
            &self.crls,
        ) {
            Ok(c) => self.connector = c,
            Err(e) => {
                // Not expected (the pair was checked before it was committed); the restart
                // that a broken connector forces would load the same committed files.
                tracing::error!(
                    id = ids::IDENTITY_INVALID,
                    "the renewed identity cannot be used: {e}"
                );
                return false;
            }
        }
        self.gateway_connectors = build_gateway_connectors(
            &self.profile,
            &renewed.identity,
            &renewed.key_pem,
            &self.crls,
        );
        self.conn = None;
        tracing::info!(
            id = ids::CERT_RENEWED,
            "client certificate renewed (serial {}, valid until {}); the previous one is retired once the server sees the new one",
            renewed.serial,
            renewed.not_after
        );
        self.identity = renewed.identity;
        self.key_pem = renewed.key_pem;
        self.state.cert_warned_at = None;
        true
    }

    /// The ways to try, in order: the LAN servers, then the gateways not set aside (all of
    /// them when every one is, so a set-aside never leaves an internet agent with nothing).
    fn routes(&mut self) -> Vec<Route> {
        let now = Instant::now();
        self.set_aside.retain(|_, until| *until > now);
        let mut routes: Vec<Route> = if self.gateways_only {
            Vec::new()
        } else {
            // `protocol: http`: each server's plain-HTTP site first, its HTTPS site as the
            // fallback. Gateways below are always HTTPS, whatever the profile says.
            let http = self.profile.protocol == steward_proto::Protocol::Http;
            self.profile
                .servers
                .iter()
                .flat_map(|s| {
                    let plain = s.http_port.filter(|_| http).map(|p| {
                        Route::LanHttp(steward_proto::ServerEndpoint {
                            host: s.host.clone(),
                            port: p,
                            http_port: Some(p),
                        })
                    });
                    plain.into_iter().chain([Route::Lan(s.clone())])
                })
                .collect()
        };
        let gateways = &self.profile.gateways;
        let usable: Vec<&GatewayEntry> = gateways
            .iter()
            .filter(|g| !self.set_aside.contains_key(&g.name))
            .collect();
        let chosen = if usable.is_empty() {
            gateways.iter().collect()
        } else {
            usable
        };
        routes.extend(chosen.into_iter().cloned().map(Route::Gateway));
        routes
    }

    async fn send_checkin(
        &mut self,
        request: &mut CheckinRequest,
        hold: Option<u64>,
    ) -> Result<(String, CheckinResponse), Fault> {
        let mut order = self.routes();
        // The route of the open connection first: it worked a moment ago.
        let current = self.conn.as_ref().map(|c| c.host_port().to_owned());
        if let Some(cur) = &current {
            order.sort_by_key(|r| host_port(&r.endpoint()) != *cur);
        }
        let mut last = None;
        for route in order {
            let server = route.endpoint();
            let hp = host_port(&server);
            request.connection = route.path();
            let reused = self
                .conn
                .as_ref()
                .is_some_and(|c| c.is_open() && c.host_port() == hp);
            if !reused {
                self.conn = None;
            }
            let mut attempt = self.post_checkin(&route, request, hold).await;
            if reused && matches!(&attempt, Err(f) if f.is_stale_connection()) {
                // The server closed the idle keep-alive connection: not a fault, reconnect.
                self.conn = None;
                attempt = self.post_checkin(&route, request, hold).await;
            }
            match attempt {
                Ok(resp) => {
                    if let Route::Gateway(g) = &route {
                        self.set_aside.remove(&g.name);
                    }
                    let url = match &route {
                        Route::LanHttp(s) => s.http_url().unwrap_or_else(|| s.base_url()),
                        _ => server.base_url(),
                    };
                    return Ok((url, resp));
                }
                Err(fault) if net::is_server_busy(&fault) => {
                    // Admission control: the server is reachable and answered; another way
                    // leads to the same server. The connection stays open for the retry.
                    self.busy_retry = self.conn.as_ref().and_then(Connection::retry_after);
                    return Err(fault);
                }
                Err(fault) => {
                    self.conn = None;
                    match &route {
                        // One line per fault (`steward doctor logs` counts lines per ID), so
                        // the set-aside is said on the fault's own line.
                        Route::Gateway(g) => {
                            self.set_aside
                                .insert(g.name.clone(), Instant::now() + self.set_aside_for);
                            self.fault_noted(
                                &fault,
                                &format!(
                                    "; gateway {} set aside for {} s while another way remains",
                                    g.name,
                                    self.set_aside_for.as_secs()
                                ),
                            );
                        }
                        Route::Lan(_) | Route::LanHttp(_) => self.fault(&fault),
                    }
                    // Reported by the next way that works, in this same round: a fallback to
                    // a gateway must not hide why the LAN failed.
                    request.last_error = Some(fault.to_agent_error(OffsetDateTime::now_utc()));
                    note_failed_attempt(
                        &mut self.state.failed_attempts,
                        failed_attempt(&route, &fault, OffsetDateTime::now_utc()),
                    );
                    request.failed_attempts = self.state.failed_attempts.clone();
                    last = Some(fault);
                }
            }
        }
        Err(last.unwrap_or_else(|| Fault::ConnectionFailed {
            addr: String::new(),
            reason: if self.gateways_only {
                "run with --gateways-only, but the profile lists no gateway (has one joined \
                 and reported to the server?)"
                    .to_owned()
            } else {
                "the profile lists no server".to_owned()
            },
        }))
    }

    /// `hold`: the `wait=SECS` that asks for the check-in to go on as the long-poll (not over
    /// plain HTTP, whose answers are signed whole).
    async fn post_checkin(
        &mut self,
        route: &Route,
        request: &CheckinRequest,
        hold: Option<u64>,
    ) -> Result<CheckinResponse, Fault> {
        let server = route.endpoint();
        if self.conn.is_none() {
            let conn = match route {
                Route::Lan(_) => self.connector.connect(&server).await?,
                Route::LanHttp(s) => self.connector.connect_http(s).await?,
                Route::Gateway(g) => {
                    // The chain is checked against the profile's anchors (and this gateway's
                    // own extra roots); the thumbprint then proves it is this gateway.
                    let connector = self
                        .gateway_connectors
                        .get(&g.name)
                        .unwrap_or(&self.connector);
                    connector.connect_gateway(g).await?
                }
            };
            self.conn = Some(conn);
        }
        let timeout = self.connector.timeouts.request;
        let hold = hold.filter(|_| !matches!(route, Route::LanHttp(_)));
        match (self.conn.as_mut(), hold) {
            (Some(conn), Some(secs)) => {
                let path = format!(
                    "{}?wait={secs}&{}",
                    paths::CHECKIN,
                    steward_proto::WAIT_CARRY_TASKS
                );
                conn.post_checkin_held(&path, request, timeout).await
            }
            (Some(conn), None) => conn.post_json(paths::CHECKIN, request, timeout).await,
            (None, _) => Err(Fault::ConnectionFailed {
                addr: server.base_url(),
                reason: "no connection".to_owned(),
            }),
        }
    }

    fn inventory_stale(&self, now: OffsetDateTime) -> bool {
        let Some(sent) = self.state.inventory_sent_at.as_deref() else {
            return true;
        };
        match OffsetDateTime::parse(sent, &time::format_description::well_known::Rfc3339) {
            Ok(t) => (now - t) >= INVENTORY_MAX_AGE,
            Err(_) => true,
        }
    }

    /// Results to send now (oldest first, within the byte budget) and whether more wait.
    fn pending_results(&mut self) -> (Vec<TaskResult>, bool) {
        let mut all = match self.outbox.load() {
            Ok((results, quarantined)) => {
                for q in quarantined {
                    self.log_store_fault(&format!(
                        "an outbox file could not be read and was moved to {}: {}",
                        q.path, q.reason
                    ));
                }
                results
            }
            Err(e) => {
                self.log_store_fault(&format!("cannot read the outbox: {e}"));
                Vec::new()
            }
        };
        for r in &self.unsaved {
            if !all.iter().any(|a| a.task_id == r.task_id) {
                all.push(r.clone());
            }
        }
        let mut used = 0usize;
        let mut batch = Vec::new();
        let total = all.len();
        for r in all {
            let size = r.output.len() + 256;
            if !batch.is_empty() && used + size > RESULTS_BUDGET_BYTES {
                break;
            }
            used += size;
            batch.push(r);
        }
        let more = batch.len() < total;
        (batch, more)
    }

    fn ack(&mut self, acked: &[u64]) {
        if acked.is_empty() {
            return;
        }
        self.unsaved.retain(|r| !acked.contains(&r.task_id));
        match self.outbox.ack(acked) {
            Ok(removed) => {
                for id in removed {
                    tracing::info!(
                        id = ids::RESULT_ACKED,
                        "result of task {id} committed by the server; removed from the outbox"
                    );
                }
            }
            Err(e) => self.log_store_fault(&format!(
                "cannot remove acknowledged results from the outbox: {e} (they will be sent again; the server ignores copies)"
            )),
        }
    }

    fn apply_config(&mut self, config: AgentConfig) {
        if Some(config.version) == self.config.as_ref().map(|c| c.version) {
            return;
        }
        let connector = match net::check_profile(&config.profile)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                build_connector(&config.profile, &self.identity, &self.key_pem, &self.crls)
                    .map_err(|e| e.to_string())
            }) {
            Ok(c) => c,
            Err(reason) => {
                if self.rejected_config != Some(config.version) {
                    let message = format!(
                        "configuration version {} not applied, it would strand this agent: {reason}; keeping version {}",
                        config.version,
                        self.config_version()
                    );
                    tracing::warn!(id = ids::CONFIG_REJECTED, "{message}");
                    self.set_pending(ids::CONFIG_REJECTED, message);
                    self.rejected_config = Some(config.version);
                }
                return;
            }
        };
        if let Err(e) = self.dir.store_config(&config) {
            // Not applied either: the version the server sees must be the one on disk, or a
            // restart would silently go back to the old one.
            self.log_store_fault(&format!(
                "cannot store configuration version {}: {e}",
                config.version
            ));
            return;
        }
        let profile_changed = config.profile != self.profile;
        if profile_changed {
            self.connector = connector;
            self.gateway_connectors = build_gateway_connectors(
                &config.profile,
                &self.identity,
                &self.key_pem,
                &self.crls,
            );
            // The open connection was made under the old profile's trust; the next request
            // must prove the new one works.
            self.conn = None;
        }
        self.settings = effective_settings(&config.settings);
        self.profile = config.profile.clone();
        self.rejected_config = None;
        self.state.config_version = config.version;
        let servers: Vec<String> = config.profile.servers.iter().map(host_port).collect();
        tracing::info!(
            id = ids::CONFIG_UPDATED,
            "configuration version {} applied: profile version {} (servers {}; {} trust anchor(s)), check-in every {} s ±{}%, {} policy(ies)",
            config.version,
            config.profile.version,
            servers.join(", "),
            config.profile.trust_anchors_pem.len(),
            self.settings.checkin_interval_secs,
            self.settings.jitter_percent,
            config.policies.len()
        );
        self.config = Some(config);
    }

    /// Take the tasks of a check-in: record each durably (before it can run, and before a
    /// crash could make it look never received), then queue it.
    fn accept_tasks(&mut self, tasks: &[TaskAssignment]) {
        for t in tasks {
            if self.executed.contains(t.task_id)
                || self.queued.iter().any(|q| q.task_id == t.task_id)
                || self.outbox.contains(t.task_id)
            {
                // Delivered again (a server may re-deliver a task with no committed result):
                // it is running, queued, or its result is on the way; or it was interrupted,
                // which the start-up check already reported. Never a second run.
                continue;
            }
            if let Err(e) = self.executed.record(t.task_id) {
                // Without the mark a crash could run it twice, so it does not run at all; the
                // failure goes to the server as a result, so the task does not hang.
                let message = format!("cannot record task {} before running it: {e}", t.task_id);
                self.log_store_fault(&message);
                self.store_result(not_run(t.task_id, &message));
                continue;
            }
            self.queued.push_back(t.clone());
        }
        self.launch_queued();
    }

    /// Start queued tasks while fewer than [`MAX_CONCURRENT_TASKS`] run.
    fn launch_queued(&mut self) {
        while self.running.len() < MAX_CONCURRENT_TASKS {
            let Some(t) = self.queued.pop_front() else {
                return;
            };
            tracing::info!(
                id = ids::TASK_STARTED,
                "task {} started: {} with {} argument(s), timeout {} s",
                t.task_id,
                t.command,
                t.args.len(),
                t.timeout_secs
            );
            let task_id = t.task_id;
            let outbox = self.outbox.clone();
            let max = usize::try_from(self.settings.task_output_max_bytes).unwrap_or(usize::MAX);
            let mut cancel = self.cancel.subscribe();
            let handle = self.tasks.spawn(async move {
                let stop = async move {
                    let _ = cancel.wait_for(|stop| *stop).await;
                };
                let result = task::run(&t, max, stop).await;
                // Durable before anything else: from here on the result survives a crash.
                let saved = outbox.put(&result);
                log_finished(&result, saved.as_ref().err());
                result
            });
            self.running.insert(handle.id(), task_id);
            self.task_started = Some(Instant::now());
        }
    }

    /// At start: tasks recorded as started whose result never reached the outbox were cut off
    /// by a crash (or were waiting to run). They are reported as failed, never run again.
    fn report_interrupted(&mut self) {
        for id in self.executed.unfinished() {
            if !self.outbox.contains(id) {
                tracing::warn!(
                    id = ids::TASK_SKIPPED,
                    "task {id} was started (or waiting to start) when the agent last stopped, and its result was never recorded; not run again, reported as failed"
                );
                self.store_result(not_run(
                    id,
                    "the agent stopped while this task was running or waiting to run, before its result was recorded; it was not run again (tasks run at most once) — check the device and run it again if needed",
                ));
            }
            self.mark_finished(id);
        }
    }

    /// Put a result in the outbox, or keep it in memory when the disk refuses.
    fn store_result(&mut self, result: TaskResult) {
        if let Err(e) = self.outbox.put(&result) {
            self.log_store_fault(&format!(
                "cannot store the result of task {}: {e}; kept in memory until acknowledged",
                result.task_id
            ));
            self.unsaved.push(result);
        }
    }

    fn mark_finished(&mut self, id: u64) {
        if let Err(e) = self.executed.finish(id) {
            // Harmless beyond the log line: at the next start the task would be reported as
            // interrupted, and the server keeps the first result it got.
            self.log_store_fault(&format!("cannot record that task {id} finished: {e}"));
        }
    }

    fn task_done(&mut self, done: Option<Joined>) {
        let Some(done) = done else {
            return;
        };
        let (handle, outcome) = match done {
            Ok((handle, result)) => (handle, Ok(result)),
            Err(e) => (e.id(), Err(e)),
        };
        let task_id = self.running.remove(&handle);
        match outcome {
            Ok(result) => {
                let id = result.task_id;
                if !self.outbox.contains(id) {
                    // The write failed (already logged): keep it in memory, send it anyway.
                    self.unsaved.push(result);
                }
                self.mark_finished(id);
            }
            Err(e) => {
                if let Some(id) = task_id {
                    self.store_result(not_run(id, &format!("the task runner failed: {e}")));
                    self.mark_finished(id);
                }
            }
        }
        self.launch_queued();
    }

    fn check_cert_expiry(&mut self) {
        let Ok(certs) = net::parse_certs(&self.identity.cert_pem) else {
            return;
        };
        let Some(facts) = certs.first().and_then(|c| CertFacts::from_der(c).ok()) else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let days = (facts.not_after - now).whole_days();
        if days >= CERT_WARNING_DAYS {
            return;
        }
        let warned_recently = self
            .state
            .cert_warned_at
            .as_deref()
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_some_and(|t| (now - t) < INVENTORY_MAX_AGE);
        if warned_recently {
            return;
        }
        let message = if facts.not_after <= now {
            format!(
                "this agent's certificate ({}) expired at {}: the server will refuse it; enroll again with a new package",
                facts.subject,
                rfc3339(facts.not_after)
            )
        } else {
            format!(
                "this agent's certificate ({}) expires at {} ({days} day(s)) and has not been renewed yet; if renewals fail (this log says why), enroll again with a new package before then",
                facts.subject,
                rfc3339(facts.not_after)
            )
        };
        tracing::warn!(id = ids::CERT_EXPIRING, "{message}");
        self.set_pending(ids::CERT_EXPIRING, message);
        self.state.cert_warned_at = Some(rfc3339(now));
    }

    fn fault(&mut self, fault: &Fault) {
        self.fault_noted(fault, "");
    }

    /// Log a fault with `note` appended to its line, and keep it for the next check-in.
    fn fault_noted(&mut self, fault: &Fault, note: &str) {
        tracing::error!(id = fault.id(), "{fault}{note}");
        let e = fault.to_agent_error(OffsetDateTime::now_utc());
        self.record_error(e);
    }

    fn log_store_fault(&mut self, message: &str) {
        tracing::error!(id = ids::STORE_FAILED, "{message}");
        self.set_pending(ids::STORE_FAILED, message.to_owned());
    }

    fn set_pending(&mut self, id: &str, message: String) {
        self.record_error(AgentError {
            id: id.to_owned(),
            message,
            at: rfc3339(OffsetDateTime::now_utc()),
        });
    }

    fn record_error(&mut self, e: AgentError) {
        self.state.last_error = Some(e.clone());
        self.state.pending_error = Some(e);
        self.connected_reported = false;
    }

    fn save_state(&mut self) {
        self.state.updated_at = Some(rfc3339(OffsetDateTime::now_utc()));
        if let Err(e) = self.dir.store_state(&self.state) {
            // Logged only: the state file is for `status`; the agent goes on without it.
            tracing::error!(id = ids::STORE_FAILED, "cannot write the state file: {e}");
        }
    }
}

/// A failed result for a task that did not (fully) run, explaining why in its output.
fn not_run(task_id: u64, why: &str) -> TaskResult {
    let now = rfc3339(OffsetDateTime::now_utc());
    TaskResult {
        task_id,
        outcome: steward_proto::TaskOutcome::Failed,
        exit_code: None,
        output: format!("[steward-agent: {why}]\n"),
        truncated: false,
        started_at: now.clone(),
        finished_at: now,
    }
}

fn log_finished(result: &TaskResult, save_error: Option<&StoreError>) {
    let outcome = match result.outcome {
        steward_proto::TaskOutcome::Succeeded => "succeeded",
        steward_proto::TaskOutcome::Failed => "failed",
        steward_proto::TaskOutcome::TimedOut => "timed out",
    };
    let exit = result
        .exit_code
        .map_or_else(|| "no exit code".to_owned(), |c| format!("exit code {c}"));
    match save_error {
        None => tracing::info!(
            id = ids::TASK_FINISHED,
            "task {} {outcome} ({exit}, {} byte(s) of output{}); result stored in the outbox",
            result.task_id,
            result.output.len(),
            if result.truncated { ", truncated" } else { "" }
        ),
        Some(e) => tracing::error!(
            id = ids::STORE_FAILED,
            "task {} {outcome} ({exit}) but its result could not be stored: {e}; kept in memory until acknowledged",
            result.task_id
        ),
    }
}

/// One long-poll on the held connection until the check-in is due in `remaining`: the server
/// is told `remaining` + [`LONG_POLL_MARGIN`] and answers that margin earlier; the answer is
/// awaited until [`POLL_GRACE`] past `remaining`. `Err` with the fault when the poll failed
/// (`None`: no connection).
async fn long_poll(
    conn: &mut Option<Connection>,
    config_version: u64,
    remaining: Duration,
) -> Result<Option<steward_proto::WakeUp>, Option<Fault>> {
    let Some(c) = conn.as_mut() else {
        return Err(None);
    };
    let listen = remaining + POLL_GRACE;
    let answer = if c.is_held() {
        // The check-in goes on as this long-poll: its answer is the rest of that response.
        c.held_rest(listen).await
    } else {
        c.wait_for(config_version, remaining + LONG_POLL_MARGIN, listen)
            .await
    };
    match answer {
        Ok(w) => Ok(w),
        // Busy (admission control): the connection is fine; wait for the check-in instead.
        Err(f) if net::is_server_busy(&f) => Ok(None),
        Err(f) => {
            tracing::debug!(id = f.id(), "long-poll ended: {f}");
            Err(Some(f))
        }
    }
}

fn host_port(s: &steward_proto::ServerEndpoint) -> String {
    if s.host.contains(':') && !s.host.starts_with('[') {
        format!("[{}]:{}", s.host, s.port)
    } else {
        format!("{}:{}", s.host, s.port)
    }
}

fn build_connector(
    profile: &CommunicationProfile,
    identity: &Identity,
    key_pem: &str,
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Connector, RunError> {
    let id = ClientIdentity::from_pem(&identity.cert_pem, &identity.chain_pem, key_pem).map_err(
        |e: IdentityError| RunError::Identity(format!("{e} (files identity.json and agent.key)")),
    )?;
    Connector::new(profile, Some(id), crls.to_vec()).map_err(|e| RunError::Identity(e.to_string()))
}

/// Connectors for the gateways that carry their own extra trust anchors. A gateway whose extra
/// anchors are unusable is logged and tried with the profile's anchors alone: one bad entry
/// must not make the agent refuse a configuration that still works for every other way.
fn build_gateway_connectors(
    profile: &CommunicationProfile,
    identity: &Identity,
    key_pem: &str,
    crls: &[CertificateRevocationListDer<'static>],
) -> HashMap<String, Connector> {
    let mut out = HashMap::new();
    for g in profile
        .gateways
        .iter()
        .filter(|g| !g.trust_anchors_pem.is_empty())
    {
        let built = ClientIdentity::from_pem(&identity.cert_pem, &identity.chain_pem, key_pem)
            .map_err(|e| e.to_string())
            .and_then(|id| {
                Connector::for_gateway(profile, g, Some(id), crls.to_vec())
                    .map_err(|e| e.to_string())
            });
        match built {
            Ok(c) => {
                out.insert(g.name.clone(), c);
            }
            Err(e) => tracing::warn!(
                id = ids::CONFIG_REJECTED,
                "the extra trust anchors of gateway {} ({}) are unusable: {e}; it is tried with the profile's anchors only",
                g.name,
                g.authority()
            ),
        }
    }
    out
}

/// One failed way as the server is told about it.
fn failed_attempt(route: &Route, fault: &Fault, at: OffsetDateTime) -> FailedAttempt {
    let (gateway, address) = match route {
        Route::Lan(s) | Route::LanHttp(s) => (None, host_port(s)),
        Route::Gateway(g) => (Some(g.name.clone()), g.authority()),
    };
    FailedAttempt {
        gateway,
        address,
        kind: fault.kind(),
        id: fault.id().to_owned(),
        detail: fault.to_string(),
        last_at: rfc3339(at),
        count: 1,
    }
}

/// Add `attempt` to `list`: one entry per (address, kind), counting repeats and keeping the
/// latest evidence; the most recently failed entry last, and at most [`MAX_FAILED_ATTEMPTS`],
/// the least recent dropped first (an old fault matters less than the one happening now).
pub fn note_failed_attempt(list: &mut Vec<FailedAttempt>, attempt: FailedAttempt) {
    let merged = match list
        .iter()
        .position(|a| a.address == attempt.address && a.kind == attempt.kind)
    {
        Some(i) => {
            let old = list.remove(i);
            FailedAttempt {
                count: old.count.saturating_add(attempt.count),
                ..attempt
            }
        }
        None => attempt,
    };
    list.push(merged);
    if list.len() > MAX_FAILED_ATTEMPTS {
        let excess = list.len() - MAX_FAILED_ATTEMPTS;
        list.drain(..excess);
    }
}

/// A check-in answered later than this after it was sent was kept waiting: in the server's
/// admission queue, or behind a way that failed before another answered. An unchanged check-in
/// takes milliseconds, one with a full inventory well under a second.
pub const SLOW_CHECKIN: Duration = Duration::from_secs(2);

/// The wait until the next check-in after one that succeeded, placed by `r` (uniform in
/// [0, 1)): the interval ± `jitter_percent`, or, when `disturbed` (the server turned the agent
/// away busy or kept a check-in waiting since the last one), anywhere from half an interval to
/// one and a half, once.
///
/// Why: agents a server serves together after a queue (a restart's reconnection, a fleet's
/// first contact, a fan-out's results) would come back together one interval later, queue
/// again, and keep the fleet in waves: ±10 % takes many intervals to part them, and each crest
/// brings busy answers that re-form it. Drawn over a whole interval, a crest is spread out in
/// one cycle; the mean wait, and so the server's load, is the same.
pub fn next_checkin_delay(
    interval: Duration,
    jitter_percent: u8,
    disturbed: bool,
    r: f64,
) -> Duration {
    let r = if r.is_finite() {
        r.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let factor = if disturbed {
        0.5 + r
    } else {
        1.0 + f64::from(jitter_percent.min(100)) / 100.0 * (2.0 * r - 1.0)
    };
    interval.mul_f64(factor).max(Duration::from_millis(100))
}

/// First step of the backoff.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Shortest wait after a failed round: full jitter may draw almost zero, and an immediate
/// retry against a server that just failed only adds load.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);

/// The wait after the `failures`-th failed round in a row: a step of [`BACKOFF_BASE`] doubling
/// each time, capped at the check-in interval, and "full jitter" — uniform between
/// [`BACKOFF_MIN`] and that step, placed by `r` in [0, 1) — so a fleet that lost its server
/// spreads its return over the whole step instead of coming back in lock-step.
pub fn backoff_delay(failures: u32, cap_secs: u64, r: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let step = (BACKOFF_BASE.as_secs_f64() * f64::from(1u32 << exp))
        .min(cap_secs as f64)
        .max(BACKOFF_MIN.as_secs_f64());
    let r = if r.is_finite() {
        r.clamp(0.0, 1.0)
    } else {
        0.5
    };
    Duration::from_secs_f64((step * r).max(BACKOFF_MIN.as_secs_f64()))
}

/// A uniform random number in [0, 1), for jitter (not for secrets).
pub(crate) fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jittered(interval_secs: u64, jitter_percent: u8, r: f64) -> Duration {
        next_checkin_delay(Duration::from_secs(interval_secs), jitter_percent, false, r)
    }

    #[test]
    fn intervals_stay_within_the_jitter() {
        assert_eq!(jittered(60, 10, 0.0), Duration::from_secs(54));
        assert_eq!(jittered(60, 10, 0.5), Duration::from_secs(60));
        assert!(jittered(60, 10, 0.999_999) <= Duration::from_secs(66));
        assert_eq!(jittered(60, 0, 0.9), Duration::from_secs(60));
        assert_eq!(jittered(60, 10, f64::NAN), Duration::from_secs(60));
        for _ in 0..1000 {
            let d = jittered(60, 10, random_unit());
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_disturbed_check_in_draws_the_next_over_a_whole_interval() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            next_checkin_delay(minute, 10, true, 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(next_checkin_delay(minute, 10, true, 0.5), minute);
        assert_eq!(
            next_checkin_delay(minute, 10, true, 1.0),
            Duration::from_secs(90)
        );
        // A crest of agents served together leaves spread over the whole interval, with the
        // same mean wait as undisturbed ones (so the same load on the server).
        let draws: Vec<f64> = (0..4000)
            .map(|_| next_checkin_delay(minute, 10, true, random_unit()).as_secs_f64())
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 60.0).abs() < 2.0, "mean {mean}");
        for (lo, hi) in [(30.0, 45.0), (45.0, 60.0), (60.0, 75.0), (75.0, 90.0)] {
            let share = draws.iter().filter(|d| (lo..hi).contains(*d)).count() as f64 / 4000.0;
            assert!((0.2..0.3).contains(&share), "{lo}..{hi}: {share}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped_by_the_interval() {
        let top = |n| backoff_delay(n, 60, 1.0);
        assert_eq!(top(1), Duration::from_secs(2));
        assert_eq!(top(2), Duration::from_secs(4));
        assert_eq!(top(5), Duration::from_secs(32));
        assert_eq!(top(6), Duration::from_secs(60));
        assert_eq!(top(u32::MAX), Duration::from_secs(60));
        // Full jitter: the draw places the delay anywhere in the step, never below the floor.
        assert_eq!(backoff_delay(1, 60, 0.0), BACKOFF_MIN);
        assert_eq!(backoff_delay(40, 60, 0.5), Duration::from_secs(30));
        assert_eq!(backoff_delay(3, 60, f64::NAN), Duration::from_secs(4));
    }

    #[test]
    fn backoff_is_jittered_over_the_whole_step_and_bounded() {
        for failures in 1..=12u32 {
            let step = (2.0 * f64::from(1u32 << (failures - 1).min(16))).min(60.0);
            let draws: Vec<f64> = (0..2000)
                .map(|_| backoff_delay(failures, 60, random_unit()).as_secs_f64())
                .collect();
            let (lo, hi) = draws
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), &d| (lo.min(d), hi.max(d)));
            assert!(
                lo >= BACKOFF_MIN.as_secs_f64() && hi <= step,
                "{failures}: {lo}..{hi}"
            );
            // Spread over the step, not bunched at its top (as "equal jitter" would be).
            assert!(
                lo < step * 0.25 + BACKOFF_MIN.as_secs_f64(),
                "{failures}: lowest {lo}"
            );
            assert!(hi > step * 0.75, "{failures}: highest {hi}");
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!(
                (mean - step / 2.0).abs() < step * 0.1,
                "{failures}: mean {mean}"
            );
        }
    }

    fn attempt(address: &str, kind: steward_proto::FailureKind, at: &str) -> FailedAttempt {
        FailedAttempt {
            gateway: None,
            address: address.to_owned(),
            kind,
            id: ids::CONNECTION_REFUSED.to_owned(),
            detail: format!("{address} failed at {at}"),
            last_at: at.to_owned(),
            count: 1,
        }
    }

    #[test]
    fn failed_attempts_aggregate_per_address_and_kind_and_are_capped() {
        use steward_proto::FailureKind::{Refused, Timeout};
        let mut list = Vec::new();
        note_failed_attempt(&mut list, attempt("lan:4726", Refused, "t1"));
        note_failed_attempt(&mut list, attempt("gw:8443", Timeout, "t2"));
        note_failed_attempt(&mut list, attempt("lan:4726", Refused, "t3"));
        note_failed_attempt(&mut list, attempt("lan:4726", Timeout, "t4"));
        assert_eq!(list.len(), 3);
        let lan = list
            .iter()
            .find(|a| a.address == "lan:4726" && a.kind == Refused)
            .expect("lan entry");
        assert_eq!((lan.count, lan.last_at.as_str()), (2, "t3"));
        assert_eq!(lan.detail, "lan:4726 failed at t3");
        // The most recent last; the cap drops the least recent.
        for i in 0..MAX_FAILED_ATTEMPTS {
            note_failed_attempt(&mut list, attempt(&format!("h{i}:1"), Refused, "later"));
        }
        assert_eq!(list.len(), MAX_FAILED_ATTEMPTS);
        assert!(list.iter().all(|a| a.address.starts_with('h')));
        note_failed_attempt(&mut list, attempt("h0:1", Refused, "latest"));
        assert_eq!(list.len(), MAX_FAILED_ATTEMPTS);
        let last = list.last().expect("entry");
        assert_eq!((last.address.as_str(), last.count), ("h0:1", 2));
    }

    #[test]
    fn settings_are_kept_sane() {
        let wild = AgentSettings {
            checkin_interval_secs: 0,
            jitter_percent: 250,
            long_poll_secs: 0,
            task_output_max_bytes: u64::MAX,
            persistent_connection: true,
        };
        let s = effective_settings(&wild);
        assert_eq!(s.checkin_interval_secs, 5);
        assert_eq!(s.jitter_percent, 50);
        assert_eq!(s.long_poll_secs, 1);
        assert_eq!(s.task_output_max_bytes, 1024 * 1024);
        let d = AgentSettings::default();
        assert_eq!(effective_settings(&d), d);
        let off = AgentSettings {
            persistent_connection: false,
            ..AgentSettings::default()
        };
        assert!(!effective_settings(&off).persistent_connection);
    }

    #[test]
    fn three_failed_long_polls_in_a_row_fall_back_to_polling_for_a_while() {
        let t0 = Instant::now();
        let mut h = PollHealth::default();
        assert_eq!(h.allowed(t0), Allowed::Yes);
        // Two failures, then a long-poll that worked: the count starts again.
        assert!(!h.failed(t0));
        assert!(!h.failed(t0));
        h.succeeded();
        assert!(!h.failed(t0));
        assert!(!h.failed(t0));
        assert_eq!(h.allowed(t0), Allowed::Yes);
        // The third in a row: polling at the interval only, for PERSISTENT_FALLBACK.
        assert!(h.failed(t0));
        assert_eq!(h.allowed(t0), Allowed::No);
        assert_eq!(
            h.allowed(t0 + PERSISTENT_FALLBACK - Duration::from_secs(1)),
            Allowed::No
        );
        // Then held again, said once, with a fresh count.
        assert_eq!(h.allowed(t0 + PERSISTENT_FALLBACK), Allowed::Again);
        assert_eq!(h.allowed(t0 + PERSISTENT_FALLBACK), Allowed::Yes);
        assert!(!h.failed(t0 + PERSISTENT_FALLBACK));
    }
}

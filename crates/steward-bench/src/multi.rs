//! One swarm over several processes (`steward bench swarm --processes P`).
//!
//! A process can hold no more connections than its open-file limit, and an unprivileged user
//! cannot raise the hard limit; so a swarm larger than that runs as a parent and P children of
//! the same executable, child K running identities `[K·N/P, (K+1)·N/P)` ([`slice`]). The
//! parent runs no agents: it starts the children, gives them one common timeline, samples the
//! server, creates the fan-out task, shows the progress, and merges the children's raw
//! measurements into one [`SwarmReport`] made exactly as a single process makes its own
//! ([`swarm::finish`]).
//!
//! The child protocol: one JSON object per line.
//! - child → parent, on the child's stdout: `{"ready":{"agents":N}}` once its identities are
//!   loaded and its TLS configurations built; then `{"progress":{…}}` about once a second
//!   ([`Progress`]); at the end `{"report":{…}}` ([`RawReport`]: the raw latency samples,
//!   counters, per-second series, outages, fan-out samples, its own RSS and CPU). Lines that
//!   do not begin with `{` are not the protocol and are kept only to explain a failure.
//! - parent → child, on the child's stdin: `{"start":{"unix_us":T}}` once every child is
//!   ready: the common start (wall clock, µs since the Unix epoch; same host, same clock);
//!   with a fan-out, `{"task_sent":{"unix_us":T}}` just before the task's create request goes
//!   out (before, not after: an agent woken before its process knew when the task was created
//!   could not measure its wake-up), and `{"task_created":{"id":ID}}` once it is created.
//!   Its stdin closing before the end means the parent is gone: the child stops at once (it
//!   also asks the kernel for SIGKILL when its parent dies).

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::BenchError;
use crate::identity::Identity;
use crate::net::Target;
use crate::report::SwarmReport;
use crate::swarm::{
    self, END_GRACE, ProcWatch, Progress, RawReport, RunInfo, Swarm, SwarmOptions, TaskLaunch,
};

/// How far ahead of "every child is ready" the common start is set, so that every child has
/// read it before the timeline begins.
const START_AHEAD: Duration = Duration::from_millis(300);
/// Lines of a child's stderr kept to explain its failure.
const TAIL_LINES: usize = 30;
/// How long a child that sent its report may take to exit.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long a child may take to load its identities and build its TLS configurations (a few
/// seconds for 20,000 on a busy machine): a silent child is not waited for forever.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long after its agents' hard end (the end, the request timeout, the end grace) a child's
/// report may take.
const REPORT_GRACE: Duration = Duration::from_secs(60);

/// Parent → child.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToChild {
    /// The timeline's start, µs since the Unix epoch.
    Start {
        /// Wall clock.
        unix_us: u64,
    },
    /// The fan-out task's create request is going out now (µs since the Unix epoch).
    TaskSent {
        /// Wall clock.
        unix_us: u64,
    },
    /// The fan-out task was created with this ID.
    TaskCreated {
        /// The task's ID.
        id: u64,
    },
}

/// Child → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromChild {
    /// Identities loaded, configurations built: ready for the start.
    Ready {
        /// Agents in its slice.
        agents: usize,
    },
    /// The counters so far.
    Progress(Progress),
    /// The raw measurements, at the end.
    Report(Box<RawReport>),
}

/// The identities of child `k` of `p` among the first `agents`: `[k·agents/p, (k+1)·agents/p)`.
pub fn slice(agents: usize, k: usize, p: usize) -> std::ops::Range<usize> {
    let p = p.max(1);
    let at = |k: usize| {
        // In u128: 1,000,000 agents × 1,000 processes does not overflow usize on 64 bits,
        // but it costs nothing to be sure.
        usize::try_from(agents as u128 * k as u128 / p as u128).unwrap_or(agents)
    };
    at(k.min(p))..at((k + 1).min(p))
}

/// Microseconds since the Unix epoch of `t`.
pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The `Instant` of this process that is the wall-clock time `unix_us` (past or future).
pub fn instant_at(unix_us: u64) -> Instant {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at = UNIX_EPOCH + Duration::from_micros(unix_us);
    match at.duration_since(wall) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

/// Parse one line a child wrote on stdout: `Ok(None)` for a line that is not the protocol
/// (it does not begin with `{`), an error for one that begins as the protocol and is not.
pub fn parse_child_line(line: &str) -> Result<Option<FromChild>, String> {
    if !line.starts_with('{') {
        return Ok(None);
    }
    serde_json::from_str(line).map(Some).map_err(|e| {
        let head: String = line.chars().take(120).collect();
        format!("malformed report line ({e}): {head}")
    })
}

fn line_of<T: Serialize>(msg: &T) -> Result<String, BenchError> {
    let mut s = serde_json::to_string(msg).map_err(|e| BenchError::Parent(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

/// Write one protocol line on this process's stdout (blocking: the lines are short but the
/// last, and a child has nothing else to do then).
fn emit(msg: &FromChild) -> Result<(), BenchError> {
    use std::io::Write;
    let line = line_of(msg)?;
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| BenchError::Parent(format!("cannot write to the parent: {e}")))
}

/// Run as child swarm process: `identities` are its slice, the first being number
/// `first_index` of the store; `opts` are the whole swarm's (its `server_pid` is ignored:
/// the parent samples the server). Speaks the child protocol on stdin and stdout.
pub async fn run_child(
    identities: Vec<Identity>,
    first_index: usize,
    anchors_pem: &[String],
    target: Target,
    mut opts: SwarmOptions,
) -> Result<(), BenchError> {
    // A child left behind by a parent killed with SIGKILL would hold its connections until
    // its own end; the closing of stdin below covers every other way the parent may go.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    opts.server_pid = None;
    let swarm = Swarm::prepare(identities, first_index, anchors_pem, target, opts)?;
    let clock = swarm.task_clock();

    // stdin on a thread of its own: a blocking read cannot be cancelled, and in the runtime
    // it would hold up the runtime's shutdown until the parent closes its end.
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<ToChild, String>>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let msg = match line {
                Ok(l) if l.trim().is_empty() => continue,
                Ok(l) => serde_json::from_str::<ToChild>(&l)
                    .map_err(|e| format!("malformed line from the parent ({e}): {l}")),
                Err(e) => Err(format!("cannot read stdin: {e}")),
            };
            let stop = msg.is_err();
            if tx.send(msg).is_err() || stop {
                return;
            }
        }
        // End of input: the parent is gone (dropping `tx` says so).
    });
    let gone = || BenchError::Parent("the parent closed its end (stdin) before the end".into());

    emit(&FromChild::Ready {
        agents: swarm.len(),
    })?;
    let start = match rx.recv().await {
        Some(Ok(ToChild::Start { unix_us })) => instant_at(unix_us),
        Some(Ok(other)) => {
            return Err(BenchError::Parent(format!(
                "expected the start, got {other:?}"
            )));
        }
        Some(Err(e)) => return Err(BenchError::Parent(e)),
        None => return Err(gone()),
    };

    let run = swarm.run(start, None, |p, _| {
        // A parent that stopped reading is noticed on stdin; nothing to do here.
        let _ = emit(&FromChild::Progress(p));
    });
    tokio::pin!(run);
    let raw = loop {
        tokio::select! {
            raw = &mut run => break raw.0,
            msg = rx.recv() => match msg {
                Some(Ok(ToChild::TaskSent { unix_us })) => clock.mark(instant_at(unix_us)),
                // The agents answer any task; the ID is the parent's to report.
                Some(Ok(ToChild::TaskCreated { .. })) => {}
                Some(Ok(ToChild::Start { .. })) => {
                    return Err(BenchError::Parent("a second start".into()));
                }
                Some(Err(e)) => return Err(BenchError::Parent(e)),
                None => return Err(gone()),
            },
        }
    };
    emit(&FromChild::Report(Box::new(raw)))
}

/// What the parent needs besides the children.
#[derive(Debug, Clone)]
pub struct ParentOptions {
    /// Child processes.
    pub processes: usize,
    /// The whole swarm's settings (`agents`: all of them; `server_pid`: sampled by the parent).
    pub opts: SwarmOptions,
    /// Where the agents connect, for the report.
    pub target: String,
    /// Through a gateway (or gateways).
    pub via_gateway: bool,
}

/// Why a child is being given up on.
struct Failed {
    index: usize,
    detail: String,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

fn push_tail(tail: &Tail, line: String) {
    if let Ok(mut t) = tail.lock() {
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }
}

fn tail_text(tail: &Tail) -> String {
    tail.lock()
        .map(|t| t.iter().map(|l| format!("  {l}\n")).collect())
        .unwrap_or_default()
}

/// What a child's stdout reader saw.
enum Event {
    Msg(FromChild),
    Bad(String),
    Eof,
}

struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    tail: Tail,
    ready: bool,
    progress: Progress,
    report: Option<RawReport>,
}

/// Kill every child (they are also killed when dropped) and make the error for `f`, with the
/// failed child's stderr.
async fn give_up(children: &mut [ChildProc], of: usize, f: Failed) -> BenchError {
    // Its exit status says more than "its output ended", and its stderr reader needs a moment
    // to take in the last lines.
    let mut detail = f.detail;
    if let Some(c) = children.get_mut(f.index) {
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), c.child.wait()).await {
            detail = format!("{detail} ({status})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in children.iter_mut() {
        let _ = c.child.start_kill();
    }
    BenchError::Child {
        index: f.index,
        of,
        detail,
        stderr: children
            .get(f.index)
            .map(|c| tail_text(&c.tail))
            .unwrap_or_default(),
    }
}

async fn send_all(children: &mut [ChildProc], msg: &ToChild) -> Result<(), Failed> {
    let line = line_of(msg).map_err(|e| Failed {
        index: 0,
        detail: e.to_string(),
    })?;
    for (index, c) in children.iter_mut().enumerate() {
        let Some(stdin) = c.stdin.as_mut() else {
            continue;
        };
        let r = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        };
        if let Err(e) = r.await {
            return Err(Failed {
                index,
                detail: format!("cannot write to its stdin: {e}"),
            });
        }
    }
    Ok(())
}

/// Run the swarm as a parent of `popts.processes` children; `spawn(k)` makes the command of
/// child `k` (the same executable in child mode with slice `k`; its stdio is set here). The
/// parent shows `progress`, samples the server, creates `task` at `task_after`, and merges the
/// children's reports. A child that cannot start, fails, exits early or breaks the protocol
/// fails the run with its stderr; every child is then killed.
pub async fn run_parent(
    mut spawn: impl FnMut(usize) -> std::process::Command,
    popts: ParentOptions,
    task: Option<TaskLaunch>,
    progress: indicatif::ProgressBar,
) -> Result<SwarmReport, BenchError> {
    let p = popts.processes.max(1);
    let opts = popts.opts.clone();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut children: Vec<ChildProc> = Vec::with_capacity(p);
    for k in 0..p {
        let mut cmd = tokio::process::Command::from(spawn(k));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let f = Failed {
                    index: k,
                    detail: format!("cannot start: {e}"),
                };
                return Err(give_up(&mut children, p, f).await);
            }
        };
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        if let Some(err) = stderr {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    push_tail(&tail, l);
                }
            });
        }
        if let Some(out) = stdout {
            let (tx, tail) = (ev_tx.clone(), tail.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                let ev = loop {
                    match lines.next_line().await {
                        Ok(Some(l)) => match parse_child_line(&l) {
                            Ok(Some(m)) => {
                                if tx.send((k, Event::Msg(m))).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => push_tail(&tail, format!("(stdout) {l}")),
                            Err(e) => break Event::Bad(e),
                        },
                        Ok(None) => break Event::Eof,
                        Err(e) => break Event::Bad(format!("cannot read its stdout: {e}")),
                    }
                };
                let _ = tx.send((k, ev));
            });
        }
        children.push(ChildProc {
            child,
            stdin,
            tail,
            ready: false,
            progress: Progress::default(),
            report: None,
        });
    }
    drop(ev_tx);

    // Every child ready (identities loaded, configurations built) before the clock starts.
    let ready_by = tokio::time::Instant::now() + READY_TIMEOUT;
    while let Some(waiting) = children.iter().position(|c| !c.ready) {
        let Ok(ev) = tokio::time::timeout_at(ready_by, ev_rx.recv()).await else {
            let f = Failed {
                index: waiting,
                detail: format!("not ready after {} s", READY_TIMEOUT.as_secs()),
            };
            return Err(give_up(&mut children, p, f).await);
        };
        let failed = match ev {
            Some((k, Event::Msg(FromChild::Ready { .. }))) => {
                if let Some(c) = children.get_mut(k) {
                    c.ready = true;
                }
                None
            }
            Some((k, Event::Msg(other))) => Some(Failed {
                index: k,
                detail: format!("sent {} before it was ready", kind_of(&other)),
            }),
            Some((k, Event::Bad(e))) => Some(Failed {
                index: k,
                detail: e,
            }),
            Some((k, Event::Eof)) => Some(Failed {
                index: k,
                detail: "exited before it was ready".into(),
            }),
            None => Some(Failed {
                index: 0,
                detail: "no child output".into(),
            }),
        };
        if let Some(f) = failed {
            return Err(give_up(&mut children, p, f).await);
        }
    }

    let start = Instant::now() + START_AHEAD;
    let start_msg = ToChild::Start {
        unix_us: unix_us(SystemTime::now() + START_AHEAD),
    };
    if let Err(f) = send_all(&mut children, &start_msg).await {
        return Err(give_up(&mut children, p, f).await);
    }
    let mut server = opts.server_pid.map(ProcWatch::new);

    let mut task = task.filter(|_| opts.persistent);
    let fan_timer = tokio::time::sleep_until((start + opts.task_after).into());
    tokio::pin!(fan_timer);
    let mut launching: Option<(TaskLaunch, Instant)> = None;
    let mut fan_out: Option<(u64, Duration)> = None;
    let mut task_at_s: Option<f64> = None;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let report_by = start + opts.duration + opts.timeout + END_GRACE + REPORT_GRACE;

    loop {
        let reports_in = children.iter().all(|c| c.report.is_some());
        if reports_in && launching.is_none() {
            break;
        }
        let failed: Option<Failed> = tokio::select! {
            ev = ev_rx.recv(), if !reports_in => match ev {
                Some((k, Event::Msg(FromChild::Progress(pr)))) => {
                    if let Some(c) = children.get_mut(k) {
                        c.progress = pr;
                    }
                    None
                }
                Some((k, Event::Msg(FromChild::Report(r)))) => {
                    if let Some(c) = children.get_mut(k) {
                        c.report = Some(*r);
                        // Nothing more to tell it; its stdin closing is no longer a stop.
                        c.stdin = None;
                    }
                    None
                }
                Some((k, Event::Msg(FromChild::Ready { .. }))) => Some(Failed {
                    index: k,
                    detail: "said it was ready twice".into(),
                }),
                Some((k, Event::Bad(e))) => Some(Failed { index: k, detail: e }),
                Some((k, Event::Eof)) => children
                    .get(k)
                    .filter(|c| c.report.is_none())
                    .map(|_| Failed {
                        index: k,
                        detail: "exited before sending its report".into(),
                    }),
                None => Some(Failed {
                    index: children.iter().position(|c| c.report.is_none()).unwrap_or(0),
                    detail: "its output ended without a report".into(),
                }),
            },
            _ = tokio::time::sleep_until(report_by.into()), if !reports_in => Some(Failed {
                index: children.iter().position(|c| c.report.is_none()).unwrap_or(0),
                detail: format!(
                    "no report {} s after its agents' hard end",
                    REPORT_GRACE.as_secs()
                ),
            }),
            _ = every.tick() => {
                if let Some(s) = server.as_mut() {
                    s.tick();
                }
                let mut sum = Progress::default();
                for c in &children {
                    sum.add(&c.progress);
                }
                let el = start.elapsed().as_secs_f64();
                progress.set_position(el.min(opts.duration.as_secs_f64()) as u64);
                progress.set_message(format!("{} ({p} processes)", sum.message(el)));
                None
            }
            _ = &mut fan_timer, if task.is_some() => {
                // Tell the children first: their agents measure from this instant.
                let t0 = Instant::now();
                let sent = ToChild::TaskSent { unix_us: unix_us(SystemTime::now()) };
                task_at_s = Some(t0.saturating_duration_since(start).as_secs_f64());
                match send_all(&mut children, &sent).await {
                    Ok(()) => {
                        launching = task.take().map(|l| (l, t0));
                        None
                    }
                    Err(f) => Some(f),
                }
            }
            r = async {
                match launching.as_mut() {
                    Some((l, _)) => l.await,
                    None => std::future::pending().await,
                }
            } => {
                let create = launching.take().map_or(Duration::ZERO, |(_, t0)| t0.elapsed());
                match r {
                    Ok(id) => {
                        fan_out = Some((id, create));
                        // Children that already reported have no stdin to tell.
                        send_all(&mut children, &ToChild::TaskCreated { id }).await.err()
                    }
                    Err(e) => {
                        for c in children.iter_mut() {
                            let _ = c.child.start_kill();
                        }
                        return Err(BenchError::Task(e));
                    }
                }
            }
        };
        if let Some(f) = failed {
            return Err(give_up(&mut children, p, f).await);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    progress.finish_and_clear();

    // Every child exits cleanly after its report.
    for k in 0..children.len() {
        let Some(c) = children.get_mut(k) else {
            continue;
        };
        let status = tokio::time::timeout(EXIT_GRACE, c.child.wait()).await;
        let failed = match status {
            Ok(Ok(s)) if s.success() => None,
            Ok(Ok(s)) => Some(format!("failed after its report ({s})")),
            Ok(Err(e)) => Some(format!("cannot wait for it: {e}")),
            Err(_) => Some(format!(
                "still running {} s after its report",
                EXIT_GRACE.as_secs()
            )),
        };
        if let Some(detail) = failed {
            return Err(give_up(&mut children, p, Failed { index: k, detail }).await);
        }
    }

    let parts: Vec<RawReport> = children
        .iter_mut()
        .filter_map(|c| c.report.take())
        .collect();
    let mut raw = RawReport::merge(parts);
    if let Some(s) = raw.swarm.as_mut() {
        s.pid = std::process::id();
    }
    // The parent created the task; its instant is the one the children measured from.
    if task_at_s.is_some() {
        raw.task_at_s = task_at_s;
    }
    let server = server.and_then(|s| s.finish(wall));
    Ok(swarm::finish(
        raw,
        &opts,
        RunInfo {
            target: popts.target,
            via_gateway: popts.via_gateway,
            processes: p,
            server,
            fan_out,
        },
    ))
}

fn kind_of(m: &FromChild) -> &'static str {
    match m {
        FromChild::Ready { .. } => "ready",
        FromChild::Progress(_) => "progress",
        FromChild::Report(_) => "its report",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::net::ErrorKind;
    use crate::report::{ProcUse, Second};
    use crate::swarm::{ErrorCount, RawCounters};

    #[test]
    fn slices_cover_every_identity_once() {
        for (n, p) in [(40, 2), (100_000, 6), (7, 3), (3, 5), (0, 2)] {
            let mut next = 0;
            for k in 0..p {
                let r = slice(n, k, p);
                assert_eq!(r.start, next, "{n} agents, {p} processes, slice {k}");
                next = r.end;
                assert!(r.len() <= n.div_ceil(p));
            }
            assert_eq!(next, n);
        }
        assert_eq!(slice(40, 1, 2), 20..40);
    }

    #[test]
    fn wall_clock_converts_to_the_same_instant() {
        let wall = SystemTime::now() + Duration::from_millis(500);
        let at = instant_at(unix_us(wall));
        let ahead = at.saturating_duration_since(Instant::now());
        assert!(ahead > Duration::from_millis(450) && ahead <= Duration::from_millis(500));
        let past = instant_at(unix_us(SystemTime::now() - Duration::from_secs(2)));
        let ago = past.elapsed();
        assert!(ago >= Duration::from_secs(2) && ago < Duration::from_millis(2100));
    }

    #[test]
    fn child_lines_parse_or_fail_clearly() {
        assert!(parse_child_line("running 1 test").unwrap().is_none());
        assert!(matches!(
            parse_child_line(r#"{"ready":{"agents":20}}"#).unwrap(),
            Some(FromChild::Ready { agents: 20 })
        ));
        let e = parse_child_line(r#"{"report":{"agents":"#).err().unwrap();
        assert!(e.contains("malformed"), "{e}");
        assert!(parse_child_line(r#"{"surprise":1}"#).is_err());
        // The parent's messages read back as sent.
        let m = ToChild::TaskSent { unix_us: 42 };
        let line = line_of(&m).unwrap();
        assert_eq!(serde_json::from_str::<ToChild>(&line).unwrap(), m);
    }

    fn opts() -> SwarmOptions {
        SwarmOptions {
            agents: 40,
            interval: Duration::from_secs(4),
            jitter_percent: 10,
            duration: Duration::from_secs(8),
            persistent: true,
            task_after: Duration::from_secs(4),
            sources: 4,
            timeout: Duration::from_secs(10),
            resumption: true,
            server_pid: None,
            resume: None,
        }
    }

    async fn parent_of(script: &'static [&'static str]) -> BenchError {
        let spawn = |k: usize| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(script.get(k).copied().unwrap_or("exit 0"));
            c
        };
        let popts = ParentOptions {
            processes: script.len(),
            opts: opts(),
            target: "nowhere".into(),
            via_gateway: false,
        };
        run_parent(spawn, popts, None, indicatif::ProgressBar::hidden())
            .await
            .err()
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_child_fails_the_run_with_its_stderr() {
        // Child 1 dies before it is ready; child 0 (ready, waiting for the start) is killed.
        let e = parent_of(&[
            r#"echo '{"ready":{"agents":20}}'; exec sleep 30"#,
            "echo 'cannot read IDS' >&2; exit 3",
        ])
        .await;
        let BenchError::Child {
            index, of, stderr, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!((*index, *of), (1, 2), "{e}");
        assert!(stderr.contains("cannot read IDS"), "{e}");
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }

    #[tokio::test]
    async fn a_child_breaking_the_protocol_fails_the_run() {
        let e = parent_of(&[r#"echo 'not the protocol'; echo '{"ready":'; exec sleep 30"#]).await;
        let text = e.to_string();
        assert!(text.contains("malformed report line"), "{text}");
        // Lines that are not the protocol are kept to explain the failure.
        assert!(text.contains("not the protocol"), "{text}");
        // Ready, then gone without a report once started.
        let e = parent_of(&[r#"echo '{"ready":{"agents":20}}'; read start; exit 0"#]).await;
        assert!(
            e.to_string().contains("exited before sending its report"),
            "{e}"
        );
    }

    fn ms(v: &[u64]) -> crate::report::Latencies {
        let mut l = crate::report::Latencies::default();
        for &x in v {
            l.push(Duration::from_millis(x));
        }
        l
    }

    fn part(
        steady: &[u64],
        checkins: u64,
        timeline: &[u64],
        failure: Option<(f64, f64)>,
        all_results: Option<f64>,
    ) -> RawReport {
        RawReport {
            agents: 20,
            wall_s: 8.0 + checkins as f64 / 1000.0,
            counters: RawCounters {
                checkins,
                checked_in: 20,
                full: 20,
                results: 20,
                ..RawCounters::default()
            },
            first: ms(&[5; 20]),
            steady: ms(steady),
            result: ms(&[100, 200]),
            all_results_s: all_results,
            errors: vec![ErrorCount {
                kind: ErrorKind::HttpStatus(500),
                count: 2,
                example: format!("from {checkins}"),
            }],
            recovery: crate::report::Recovery {
                agents_affected: u64::from(failure.is_some()),
                first_failure_s: failure.map(|f| f.0),
                last_recovered_s: failure.map(|f| f.1),
                ..Default::default()
            },
            config_version: Some(checkins),
            timeline: timeline
                .iter()
                .map(|&c| Second {
                    checkins: c,
                    ..Second::default()
                })
                .collect(),
            swarm: Some(ProcUse {
                pid: 1,
                rss_end_mib: 10.0,
                rss_peak_mib: 12.0,
                cpu_secs: 1.5,
                cores: 0.2,
                fds_end: 25,
                threads_end: 3,
            }),
            nofile_limit: 20_000 - checkins,
            sources: 4,
            ..RawReport::default()
        }
    }

    #[test]
    fn merged_reports_sum_and_pool() {
        let a = part(
            &[1, 2, 3, 4],
            60,
            &[10, 20, 30],
            Some((3.0, 5.0)),
            Some(0.3),
        );
        let b = part(&[10, 20, 30, 40], 40, &[1, 2], Some((2.0, 4.0)), Some(0.5));
        // Through JSON, as a child sends it.
        let b: RawReport = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let m = RawReport::merge(vec![a, b]);
        assert_eq!(m.agents, 40);
        assert_eq!(m.counters.checkins, 100);
        assert_eq!(m.counters.checked_in, 40);
        assert_eq!(m.counters.results, 40);
        assert_eq!(m.errors.len(), 1);
        assert_eq!(m.errors.first().map(|e| e.count), Some(4));
        assert_eq!(
            m.timeline.iter().map(|s| s.checkins).collect::<Vec<_>>(),
            [11, 22, 30]
        );
        assert_eq!(m.recovery.agents_affected, 2);
        assert_eq!(m.recovery.first_failure_s, Some(2.0));
        assert_eq!(m.recovery.last_recovered_s, Some(5.0));
        assert_eq!(m.all_results_s, Some(0.5));
        assert_eq!(m.config_version, Some(60));
        assert_eq!(m.nofile_limit, 19_940);
        let s = m.swarm.unwrap();
        assert_eq!((s.fds_end, s.threads_end), (50, 6));
        assert!((s.cpu_secs - 3.0).abs() < 1e-9 && (s.rss_peak_mib - 24.0).abs() < 1e-9);

        let mut opts = opts();
        let r = swarm::finish(
            m.clone(),
            &opts,
            RunInfo {
                processes: 2,
                fan_out: Some((7, Duration::from_millis(3))),
                ..RunInfo::default()
            },
        );
        // Percentiles of the union of the samples: 1,2,3,4,10,20,30,40.
        assert_eq!(r.latency.count, 8);
        assert_eq!(r.latency.p50_ms, Some(4.0));
        assert_eq!(r.latency.max_ms, Some(40.0));
        assert_eq!(r.first_contact.count, 40);
        assert_eq!(r.recovery.all_back_after_s, Some(3.0));
        assert_eq!(r.processes, 2);
        assert_eq!(r.errors.get("HTTP 500"), Some(&4));
        assert!((r.connections_per_agent - 1.0).abs() < 1e-9);
        let fan = r.fan_out.unwrap();
        assert_eq!((fan.task_id, fan.results), (Some(7), 4));
        assert_eq!(fan.all_results_s, Some(0.5));
        // One child without every result: not "all in".
        let c = part(&[1], 1, &[], None, None);
        opts.agents = 60;
        let r = swarm::finish(RawReport::merge(vec![m, c]), &opts, RunInfo::default());
        assert_eq!(r.recovery.agents_affected, 2);
        assert!(r.fan_out.is_none());
        let again = RawReport::merge(vec![
            part(&[1], 1, &[], None, None),
            part(&[1], 1, &[], None, Some(1.0)),
        ]);
        assert_eq!(again.all_results_s, None);
    }
}

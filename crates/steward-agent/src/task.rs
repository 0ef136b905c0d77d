//! Running one task: a program with arguments (no shell), a timeout, output capped.
//!
//! The program runs in its own process group so that a timeout kills everything it started
//! (a script's children included), not just the direct child whose grandchildren would keep the
//! output pipes — and the task — alive.

use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use steward_proto::{TaskAssignment, TaskOutcome, TaskResult};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};

use crate::events::rfc3339;

/// Longest a task may ask for; a larger (or zero) timeout is cut to this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// After the program exits, how long output from processes it left behind is still collected
/// before the result is written (they keep running; only their output is no longer read).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// After a kill, how long to wait for the pipes to close.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// Run `task`, keeping at most `max_output` bytes of combined stdout and stderr, and stop it
/// early when `cancel` completes (the agent is shutting down). Never fails: every way a task
/// can end is a [`TaskResult`].
pub async fn run(
    task: &TaskAssignment,
    max_output: usize,
    cancel: impl Future<Output = ()>,
) -> TaskResult {
    let started = OffsetDateTime::now_utc();
    let timeout = match task.timeout_secs {
        0 => MAX_TIMEOUT,
        s => Duration::from_secs(s).min(MAX_TIMEOUT),
    };
    let mut cmd = Command::new(&task.command);
    cmd.args(&task.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return TaskResult {
                task_id: task.task_id,
                outcome: TaskOutcome::Failed,
                exit_code: None,
                output: format!("steward-agent: cannot start {:?}: {e}", task.command),
                truncated: false,
                started_at: rfc3339(started),
                finished_at: rfc3339(OffsetDateTime::now_utc()),
            };
        }
    };
    let mut capture = Capture::new(max_output);
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out_buf = [0u8; 4096];
    let mut err_buf = [0u8; 4096];
    let mut status: Option<ExitStatus> = None;
    let mut ending: Option<Ending> = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut drain_until: Option<tokio::time::Instant> = None;
    tokio::pin!(cancel);
    let mut cancelled = false;

    loop {
        if stdout.is_none() && stderr.is_none() && status.is_some() {
            break;
        }
        let drain_deadline = drain_until.unwrap_or(deadline);
        tokio::select! {
            r = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => match r {
                Some(n) => capture.push(&out_buf[..n]),
                None => stdout = None,
            },
            r = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => match r {
                Some(n) => capture.push(&err_buf[..n]),
                None => stderr = None,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.unwrap_or_else(|_| failed_status()));
                drain_until.get_or_insert(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = &mut cancel, if !cancelled => {
                cancelled = true;
                if status.is_none() {
                    kill_group(&mut child);
                    ending = Some(Ending::Cancelled);
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_KILL);
                }
            }
            () = tokio::time::sleep_until(drain_deadline), if drain_until.is_some() || ending.is_none() => {
                if drain_until.is_some() {
                    // Exited (or killed) and the pipes are still open: something it started
                    // holds them. Stop reading; the result is complete enough.
                    if status.is_none() {
                        status = Some(child.wait().await.unwrap_or_else(|_| failed_status()));
                    }
                    break;
                }
                kill_group(&mut child);
                ending = Some(Ending::TimedOut);
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_KILL);
            }
        }
    }
    let finished = OffsetDateTime::now_utc();
    let (mut output, truncated) = capture.finish();
    let status = status.unwrap_or_else(failed_status);
    let (outcome, exit_code) = match ending {
        Some(Ending::TimedOut) => {
            note(
                &mut output,
                &format!(
                    "steward-agent: killed after the {} s timeout",
                    timeout.as_secs()
                ),
            );
            (TaskOutcome::TimedOut, status.code())
        }
        Some(Ending::Cancelled) => {
            note(
                &mut output,
                "steward-agent: killed because the agent stopped; not run again (at-most-once)",
            );
            (TaskOutcome::Failed, status.code())
        }
        None => match status.code() {
            Some(0) => (TaskOutcome::Succeeded, Some(0)),
            Some(c) => (TaskOutcome::Failed, Some(c)),
            None => {
                note(&mut output, &format!("steward-agent: {}", describe(status)));
                (TaskOutcome::Failed, None)
            }
        },
    };
    TaskResult {
        task_id: task.task_id,
        outcome,
        exit_code,
        output,
        truncated,
        started_at: rfc3339(started),
        finished_at: rfc3339(finished),
    }
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    TimedOut,
    Cancelled,
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match r {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        // Never reached: the select! branch is disabled for a closed pipe.
        None => std::future::pending().await,
    }
}

fn note(output: &mut String, line: &str) {
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    output.push('[');
    output.push_str(line);
    output.push_str("]\n");
}

#[cfg(unix)]
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status.signal() {
        Some(sig) => format!("terminated by signal {sig}"),
        None => format!("ended with {status}"),
    }
}

#[cfg(not(unix))]
fn describe(status: ExitStatus) -> String {
    format!("ended with {status}")
}

#[cfg(unix)]
fn failed_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    // The status could not be collected; report it as killed (SIGKILL's raw wait status).
    ExitStatus::from_raw(9)
}

#[cfg(not(unix))]
fn failed_status() -> ExitStatus {
    use std::os::windows::process::ExitStatusExt as _;
    ExitStatus::from_raw(1)
}

/// Kill the task's whole process group (it leads one: `process_group(0)`), then the child
/// itself in case the group is gone or was left.
fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.start_kill();
}

/// Combined output, kept up to a cap; the rest is read and dropped so the program never blocks
/// on a full pipe.
struct Capture {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf
            .extend_from_slice(data.get(..room.min(data.len())).unwrap_or(data));
    }

    fn finish(self) -> (String, bool) {
        let mut bytes = self.buf;
        if self.truncated {
            // Do not leave half a UTF-8 character at the cut.
            let valid = match std::str::from_utf8(&bytes) {
                Ok(_) => bytes.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => bytes.len(),
            };
            bytes.truncate(valid);
        }
        (String::from_utf8_lossy(&bytes).into_owned(), self.truncated)
    }
}

//! Statistics and the report, as text for people and JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency samples in microseconds (u32: 71 minutes at most, far beyond any timeout here).
/// Serialized as the raw samples, so that the reports of several swarm processes merge into
/// exact percentiles of the union.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    /// Add one sample.
    pub fn push(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Add all of another's samples.
    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// p50/p95/p99/max (nearest rank), milliseconds.
    pub fn percentiles(&mut self) -> Percentiles {
        self.0.sort_unstable();
        let n = self.0.len();
        let at = |p: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            let i = rank.clamp(1, n) - 1;
            self.0.get(i).map(|&us| f64::from(us) / 1000.0)
        };
        Percentiles {
            count: n as u64,
            p50_ms: at(50.0),
            p95_ms: at(95.0),
            p99_ms: at(99.0),
            max_ms: self.0.last().map(|&us| f64::from(us) / 1000.0),
        }
    }
}

/// A latency distribution's summary.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Largest, ms.
    pub max_ms: Option<f64>,
}

impl Percentiles {
    fn text(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        format!(
            "p50 {} / p95 {} / p99 {} / max {} ms ({} samples)",
            f(self.p50_ms),
            f(self.p95_ms),
            f(self.p99_ms),
            f(self.max_ms),
            self.count
        )
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Second {
    /// Successful check-ins.
    pub checkins: u64,
    /// Full TLS handshakes completed.
    pub full: u64,
    /// Resumed TLS handshakes completed.
    pub resumed: u64,
    /// Failures (every kind).
    pub errors: u64,
}

/// A process's use over the run (the server's with `--server-pid`, the swarm's own).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ProcUse {
    /// The process ID.
    pub pid: u32,
    /// RSS at the end, MiB.
    pub rss_end_mib: f64,
    /// Largest RSS seen (sampled every second), MiB.
    pub rss_peak_mib: f64,
    /// CPU time used during the run, seconds.
    pub cpu_secs: f64,
    /// CPU used ÷ wall time: 1.0 is one core busy.
    pub cores: f64,
    /// Open file descriptors at the end.
    pub fds_end: u64,
    /// Threads at the end.
    pub threads_end: u64,
}

/// How the agents that lost the server came back.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Recovery {
    /// Agents whose check-in or held connection failed after they had checked in.
    pub agents_affected: u64,
    /// Seconds from the start to the first such failure.
    pub first_failure_s: Option<f64>,
    /// Seconds from the start to the last of them checking in again.
    pub last_recovered_s: Option<f64>,
    /// `last_recovered_s − first_failure_s`: how long until every one was back.
    pub all_back_after_s: Option<f64>,
    /// Affected agents that had not checked in again by the end.
    pub still_down: u64,
}

/// The task fan-out over held connections.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanOut {
    /// The task's ID.
    pub task_id: Option<u64>,
    /// Seconds from the start at which the task was created.
    pub created_at_s: f64,
    /// How long the admin API took to create it (it answers after the task is committed and
    /// the long-polls are woken), ms.
    pub create_ms: f64,
    /// Agents woken by their long-poll (or given the task by a check-in).
    pub woken: u64,
    /// From creation until each agent's long-poll returned.
    pub wake_latency: Percentiles,
    /// Results acknowledged by the server.
    pub results: u64,
    /// From creation until each agent's result was acknowledged.
    pub result_latency: Percentiles,
    /// From creation until the last result was in, seconds (when all were).
    pub all_results_s: Option<f64>,
}

fn one() -> usize {
    1
}

/// Everything a swarm run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmReport {
    /// Agents simulated.
    pub agents: usize,
    /// Check-in interval, seconds.
    pub interval_s: f64,
    /// Run length, seconds.
    pub duration_s: f64,
    /// Agents held a connection and long-polled between check-ins.
    pub persistent: bool,
    /// Where they connected.
    pub target: String,
    /// Through a gateway.
    pub via_gateway: bool,
    /// Source addresses used.
    pub sources: usize,
    /// The open-file limit (soft) the swarm ran with.
    pub nofile_limit: u64,
    /// Agents that checked in at least once.
    pub agents_checked_in: u64,
    /// Successful check-ins.
    pub checkins: u64,
    /// Check-ins per second over the whole run.
    pub checkins_per_s: f64,
    /// Check-ins per second after the first interval (the ramp, when every agent makes its
    /// first contact).
    pub steady_checkins_per_s: f64,
    /// Latency of the first check-in of each agent (configuration taken, inventory sent).
    pub first_contact: Percentiles,
    /// Latency of every later unchanged check-in (nothing sent, nothing new), from when it
    /// was due (connect and handshake included when one was needed).
    pub latency: Percentiles,
    /// The same, of the check-ins due in the settled window only: from two intervals after
    /// the start (first contacts, a reconnection storm and the retries behind it are over)
    /// until the fan-out task, if any, is created. The steady state of scenario 1.
    #[serde(default)]
    pub latency_settled: Percentiles,
    /// Latency of later check-ins that carried results or inventory or brought tasks or
    /// configuration (the server writes for them).
    pub work_latency: Percentiles,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first failure's text for each kind.
    pub error_examples: BTreeMap<String, String>,
    /// Machine limits the failures point at.
    pub limits_hit: Vec<String>,
    /// Full handshakes in total.
    pub full_handshakes: u64,
    /// Resumed handshakes in total.
    pub resumed_handshakes: u64,
    /// Full handshakes per second over the run.
    pub full_per_s: f64,
    /// Resumed handshakes per second over the run.
    pub resumed_per_s: f64,
    /// Held connections the server closed or lost (long-polls that failed).
    pub held_dropped: u64,
    /// Long-polls answered "no work" (204), held check-ins whose hold ended empty included.
    pub polls_empty: u64,
    /// Check-ins that went on as the long-poll after them (`wait=SECS` on the check-in, see
    /// `steward_proto::CHECKIN_HELD_CONTENT_TYPE`): each one a request fewer.
    #[serde(default)]
    pub checkins_held: u64,
    /// Check-ins answered 503 `SERVER-BUSY` (admission control), retried after `Retry-After`
    /// plus jitter as the agent does; not errors.
    #[serde(default)]
    pub busy: u64,
    /// TLS connections opened per agent over the run (1.0: every agent kept one connection
    /// across all its intervals).
    #[serde(default)]
    pub connections_per_agent: f64,
    /// The task fan-out, with `--persistent` and a task.
    pub fan_out: Option<FanOut>,
    /// Failures and recoveries (a server restart).
    pub recovery: Recovery,
    /// The configuration version the agents held at the end (for `--resume` next time).
    pub config_version: Option<u64>,
    /// The profile version they acknowledged with it (for `--resume` next time).
    pub profile_version: Option<u64>,
    /// The server's use, with `--server-pid`.
    pub server: Option<ProcUse>,
    /// The swarm process's own use.
    pub swarm: Option<ProcUse>,
    /// Agents still running at the hard end and stopped.
    pub aborted: u64,
    /// Swarm processes the agents were spread over (`--processes`; the file-descriptor limit
    /// is per process). With more than one, `swarm` is their sum.
    #[serde(default = "one")]
    pub processes: usize,
    /// Per second of the run.
    pub timeline: Vec<Second>,
}

impl SwarmReport {
    /// The readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "swarm: {} agents{}, {} s interval, {} s, {} to {}{}, {} source addresses, fd limit {}",
            self.agents,
            if self.processes > 1 {
                format!(" in {} processes", self.processes)
            } else {
                String::new()
            },
            self.interval_s,
            self.duration_s,
            if self.persistent {
                "held connections + long-poll"
            } else {
                "a connection per check-in"
            },
            self.target,
            if self.via_gateway { " (gateway)" } else { "" },
            self.sources,
            self.nofile_limit
        );
        let _ = writeln!(
            s,
            "check-ins:   {} ({:.1}/s overall, {:.1}/s after the first interval); {} of {} agents checked in",
            self.checkins,
            self.checkins_per_s,
            self.steady_checkins_per_s,
            self.agents_checked_in,
            self.agents
        );
        let _ = writeln!(s, "first contact: {}", self.first_contact.text());
        let _ = writeln!(s, "unchanged:   {}", self.latency.text());
        if self.latency_settled.count > 0 {
            let _ = writeln!(
                s,
                "  settled:   {} (due 2 intervals after the start, before any task)",
                self.latency_settled.text()
            );
        }
        if self.work_latency.count > 0 {
            let _ = writeln!(s, "with work:   {}", self.work_latency.text());
        }
        let _ = writeln!(
            s,
            "handshakes:  {} full ({:.1}/s), {} resumed ({:.1}/s)",
            self.full_handshakes, self.full_per_s, self.resumed_handshakes, self.resumed_per_s
        );
        if self.persistent {
            let _ = writeln!(
                s,
                "long-poll:   {} empty answers, {} check-ins held as long-polls, {} held connections dropped; {:.2} connections per agent",
                self.polls_empty, self.checkins_held, self.held_dropped, self.connections_per_agent
            );
        }
        if self.busy > 0 {
            let _ = writeln!(
                s,
                "busy:        {} check-ins answered 503 SERVER-BUSY (retried after Retry-After + jitter; not errors)",
                self.busy
            );
        }
        let total: u64 = self.errors.values().sum();
        if total == 0 {
            let _ = writeln!(s, "errors:      none");
        } else {
            let _ = writeln!(s, "errors:      {total}");
            for (k, n) in &self.errors {
                let ex = self.error_examples.get(k).map_or("", String::as_str);
                let _ = writeln!(s, "  {n:>8}  {k}  (e.g. {ex})");
            }
        }
        for l in &self.limits_hit {
            let _ = writeln!(s, "LIMIT HIT:   {l}");
        }
        let r = &self.recovery;
        if r.agents_affected > 0 {
            let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} s"));
            let _ = writeln!(
                s,
                "recovery:    {} agents lost the server (first at {}); all back {} after the first failure (last at {}); {} still down",
                r.agents_affected,
                f(r.first_failure_s),
                f(r.all_back_after_s),
                f(r.last_recovered_s),
                r.still_down
            );
        }
        if let Some(t) = &self.fan_out {
            let _ = writeln!(
                s,
                "fan-out:     task {} created at {:.1} s (API {:.0} ms); {} woken: {}",
                t.task_id.map_or_else(|| "?".to_owned(), |i| i.to_string()),
                t.created_at_s,
                t.create_ms,
                t.woken,
                t.wake_latency.text()
            );
            let _ = writeln!(
                s,
                "             {} results in: {}; all in after {}",
                t.results,
                t.result_latency.text(),
                t.all_results_s
                    .map_or_else(|| "- (not all)".to_owned(), |v| format!("{v:.2} s"))
            );
        }
        for (name, p) in [("server", &self.server), ("swarm", &self.swarm)] {
            if let Some(p) = p {
                let who = if name == "swarm" && self.processes > 1 {
                    format!("{} processes (sum)", self.processes)
                } else {
                    format!("pid {}", p.pid)
                };
                let _ = writeln!(
                    s,
                    "{name:<7}      {who}: RSS {:.0} MiB (peak {:.0}), CPU {:.1} s = {:.2} cores, {} fds, {} threads",
                    p.rss_end_mib, p.rss_peak_mib, p.cpu_secs, p.cores, p.fds_end, p.threads_end
                );
            }
        }
        if self.aborted > 0 {
            let _ = writeln!(
                s,
                "aborted:     {} agents still busy at the hard end",
                self.aborted
            );
        }
        s
    }
}

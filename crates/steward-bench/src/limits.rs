//! The machine's limits that a swarm meets first, and what a local server process uses.

use std::time::Duration;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use serde::Serialize;

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NofileLimit {
    /// Soft limit found.
    pub before: u64,
    /// Soft limit now.
    pub now: u64,
    /// Hard limit (the most an unprivileged process may set).
    pub hard: u64,
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit: each simulated agent holds a
/// socket, and the default soft limit (often 1,024) would stop a swarm long before the server.
pub fn raise_nofile() -> NofileLimit {
    let cur = getrlimit(Resource::Nofile);
    let before = cur.current.unwrap_or(u64::MAX);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let now = if before < hard
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: cur.maximum,
            },
        )
        .is_ok()
    {
        hard
    } else {
        before
    };
    NofileLimit { before, now, hard }
}

/// Descriptors a swarm process keeps for other things than its agents' sockets (the runtime,
/// stdio, pipes to a parent, a socket being replaced while its successor connects).
pub const FD_MARGIN: u64 = 1_000;

/// This process's open-file limit as it stands (nothing raised).
pub fn nofile() -> NofileLimit {
    let cur = getrlimit(Resource::Nofile);
    let before = cur.current.unwrap_or(u64::MAX);
    NofileLimit {
        before,
        now: before,
        hard: cur.maximum.unwrap_or(u64::MAX),
    }
}

/// Agents one swarm process can hold a connection for under the hard limit `hard` (a swarm
/// process raises its soft limit to the hard one): one descriptor each, less [`FD_MARGIN`].
pub fn agents_per_process(hard: u64) -> usize {
    usize::try_from(hard.saturating_sub(FD_MARGIN))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Swarm processes `agents` need under the hard limit `hard`: the fewest that keep each
/// within [`agents_per_process`].
pub fn processes_for(agents: usize, hard: u64) -> usize {
    agents.div_ceil(agents_per_process(hard)).max(1)
}

/// The local ephemeral port range (`net.ipv4.ip_local_port_range`), if readable.
pub fn ephemeral_ports() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// One reading of a process from /proc.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time so far.
    #[serde(skip)]
    pub cpu: Duration,
    /// Voluntary context switches so far (sleeps: each is a wake-up later).
    pub voluntary_ctxt_switches: u64,
    /// Involuntary context switches so far.
    pub nonvoluntary_ctxt_switches: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// Clock ticks per second of /proc/PID/stat's times. Linux reports them in USER_HZ, 100 on
/// every architecture Steward runs on.
const USER_HZ: u64 = 100;

/// Read `pid`'s RSS, CPU time and context switches; `None` when it is gone or unreadable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let base = format!("/proc/{pid}");
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("{base}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcSample {
        rss_bytes: field("VmRSS:") * 1024,
        cpu: Duration::from_millis(ticks * 1000 / USER_HZ),
        voluntary_ctxt_switches: field("voluntary_ctxt_switches:"),
        nonvoluntary_ctxt_switches: field("nonvoluntary_ctxt_switches:"),
        threads: field("Threads:"),
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_follow_the_hard_limit() {
        // This machine: 20,000 hard, so 19,000 agents a process.
        assert_eq!(agents_per_process(20_000), 19_000);
        assert_eq!(processes_for(19_000, 20_000), 1);
        assert_eq!(processes_for(19_001, 20_000), 2);
        assert_eq!(processes_for(100_000, 20_000), 6);
        assert_eq!(processes_for(0, 20_000), 1);
        // No limit, or one below the margin: never zero agents a process.
        assert_eq!(processes_for(1_000_000, u64::MAX), 1);
        assert_eq!(agents_per_process(10), 1);
    }
}

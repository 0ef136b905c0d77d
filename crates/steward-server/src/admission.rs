//! Admission control on the agent site, and the registry of held persistent connections.
//!
//! **Invariant: overload is answered, never timed out.** Three bounds keep a server that falls
//! behind (a reconnect storm, 100,000 first contacts) from collapsing into pool time-outs,
//! HTTP 500s and `EMFILE`:
//! - the accept loop holds at most `[limits] max_handshakes` TLS handshakes at once; the rest
//!   wait in the kernel's backlog (`http::serve_limited`), and it survives `EMFILE`/`ENFILE`;
//! - requests that touch the database (enrollment, check-in, renewal, gateway join and report)
//!   pass a bounded admission queue ([`Admission::admit`]): `max_in_flight` run at once,
//!   `max_queued` wait at most `queue_wait_ms`; any more are answered at once with **503
//!   `SERVER-BUSY` and `Retry-After`**, which agents honour with jitter and do not count as a
//!   failed way;
//! - the long-poll never waits for a slot to probe: its database probes use one when one is
//!   free and otherwise skip the probe (a wake-up is then answered without it), so held
//!   connections do not compete with check-ins;
//! - a woken long-poll that takes its tasks does need a slot (taking is a write), but at most
//!   `max_in_flight` such polls are in the queue at once ([`Admission::admit_take`]): a task
//!   for the whole fleet wakes every held poll together, and the check-ins that report its
//!   results must not wait behind all of them.
//!
//! [`Connected`] is the in-memory registry of devices whose long-poll is open now (the
//! persistent connection); the admin API and the console show it as "connected".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use steward_proto::paths;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiFailure;
use crate::service::Service;

/// The diagnosis ID of an overload answer.
pub const SERVER_BUSY: &str = "SERVER-BUSY";

/// `[limits]` of steward.toml. A value of 0 means "chosen from the machine" (see
/// [`Limits::resolved`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// TLS handshakes on the agent site at once (0: 64 per core).
    pub max_handshakes: u32,
    /// Requests that touch the database running at once (0: 32 per core). Most of a write's
    /// time in its slot is spent waiting for the group commit's fsync, and only writes in
    /// flight together can share a commit and an fsync (`steward_store`'s `combine`): with 8
    /// a fan-out to 19,000 agents took 4.4-5.9 s, with 64 3.6-3.7 s (BENCHMARKS.md, round 6).
    pub max_in_flight: u32,
    /// Requests waiting for one of those slots (0: 32,768 per core). A waiting request holds
    /// only its connection (already open) and a few hundred bytes: the bound that matters is
    /// the time, `queue_wait_ms`; this one only caps memory. A fan-out wakes every held agent
    /// at once, so it should exceed the agents a server is expected to wake together.
    pub max_queued: u32,
    /// Longest wait for a slot, in milliseconds, before the request is answered 503.
    pub queue_wait_ms: u64,
    /// The `Retry-After` of a 503 `SERVER-BUSY`, in seconds (agents add up to as much again
    /// at random).
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_handshakes: 0,
            max_in_flight: 0,
            max_queued: 0,
            queue_wait_ms: 10_000,
            retry_after_secs: 5,
        }
    }
}

/// Limits with every "auto" value chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// See [`Limits::max_handshakes`].
    pub max_handshakes: usize,
    /// See [`Limits::max_in_flight`].
    pub max_in_flight: usize,
    /// See [`Limits::max_queued`].
    pub max_queued: usize,
    /// See [`Limits::queue_wait_ms`].
    pub queue_wait: Duration,
    /// See [`Limits::retry_after_secs`].
    pub retry_after_secs: u64,
}

/// Cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

impl Limits {
    /// The values in force on a machine with `cores` cores.
    pub fn resolved(&self, cores: usize) -> Resolved {
        let auto = |v: u32, per_core: usize, min: usize| {
            if v == 0 {
                (per_core * cores).max(min)
            } else {
                v as usize
            }
        };
        Resolved {
            max_handshakes: auto(self.max_handshakes, 64, 64),
            max_in_flight: auto(self.max_in_flight, 32, 32),
            max_queued: auto(self.max_queued, 32_768, 32_768),
            queue_wait: Duration::from_millis(self.queue_wait_ms),
            retry_after_secs: self.retry_after_secs,
        }
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.retry_after_secs) {
            return Err(format!(
                "limits.retry_after_secs = {} is out of range (1 to 3600)",
                self.retry_after_secs
            ));
        }
        if self.queue_wait_ms > 60_000 {
            return Err(format!(
                "limits.queue_wait_ms = {} is over 60000: a queued request must be answered \
                 (503) well before agents time out",
                self.queue_wait_ms
            ));
        }
        Ok(())
    }

    /// The `[limits]` section of the documented steward.toml.
    pub(crate) fn render(&self) -> String {
        let d = Limits::default();
        let r = self.resolved(cores());
        format!(
            r#"[limits]
# Admission control on the agent site: a server that falls behind answers 503 SERVER-BUSY with
# Retry-After at once (agents come back later, with jitter) instead of letting requests time out.
# 0 means "chosen from this machine" (the values in force here are in the comments).
# TLS handshakes at once; more connections wait in the kernel's backlog. Default: 0 (64 per
# core; here {hs})
max_handshakes = {c_hs}
# Requests that touch the database running at once (enrollment, check-in, renewal); writes in
# flight together share a commit and its fsync. Default: 0 (32 per core; here {inf})
max_in_flight = {c_inf}
# Requests waiting for one of those (a task for every device wakes them all at once); beyond
# this they are answered 503 at once. Default: 0 (32768 per core; here {q})
max_queued = {c_q}
# Longest wait for a slot in milliseconds before a 503 (at most 60000). Default: {wait}
queue_wait_ms = {c_wait}
# Retry-After of a 503, in seconds (1 to 3600); agents wait that plus up to as much again.
# Default: {retry}
retry_after_secs = {c_retry}
"#,
            hs = r.max_handshakes,
            inf = r.max_in_flight,
            q = r.max_queued,
            wait = d.queue_wait_ms,
            retry = d.retry_after_secs,
            c_hs = self.max_handshakes,
            c_inf = self.max_in_flight,
            c_q = self.max_queued,
            c_wait = self.queue_wait_ms,
            c_retry = self.retry_after_secs,
        )
    }
}

/// Counters of the agent site, for tests, benchmarks and the log.
#[derive(Debug, Default)]
pub struct Stats {
    /// TLS handshakes completed on the agent site (full and resumed).
    pub handshakes: AtomicU64,
    /// Requests answered 503 `SERVER-BUSY`.
    pub busy: AtomicU64,
    /// Failed `accept` calls (out of file descriptors and the like).
    pub accept_errors: AtomicU64,
    /// Long-polls asked for on their own (`GET` [`paths::WAIT`]).
    pub long_polls: AtomicU64,
    /// Check-ins that went on as the long-poll after them (`wait=SECS` on a check-in whose
    /// answer left the agent nothing to do): each one a long-poll request saved.
    pub held_checkins: AtomicU64,
    /// Requests from gateways that carried the agent's certificate whole.
    pub forwarded_whole: AtomicU64,
    /// Requests from gateways that named the agent's certificate by a thumbprint the server
    /// knew.
    pub forwarded_by_thumbprint: AtomicU64,
    /// Requests from gateways that named a certificate by a thumbprint the server did not know
    /// (answered 412 `GATEWAY-AGENT-CERT-UNKNOWN`; the gateway sends it again whole).
    pub forwarded_unknown: AtomicU64,
}

/// The agent site's bounds and counters, shared by the accept loop and the routes.
#[derive(Debug)]
pub struct Admission {
    limits: Resolved,
    handshakes: Arc<Semaphore>,
    work: Arc<Semaphore>,
    /// Turns of woken long-polls to enter the `work` queue ([`Admission::admit_take`]).
    takes: Arc<Semaphore>,
    /// Requests holding or waiting for a `work` slot.
    admitted: AtomicUsize,
    /// Counters.
    pub stats: Stats,
    /// Devices holding a long-poll now.
    pub connected: Connected,
}

/// A request's slot: released when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    _permit: OwnedSemaphorePermit,
    _counted: Counted<'a>,
    /// A take's turn ([`Admission::admit_take`]), given back with the slot.
    _turn: Option<OwnedSemaphorePermit>,
}

/// One request counted in `admitted` (waiting or running), uncounted when dropped. A guard
/// rather than a decrement at the end of [`Admission::admit`]: a request whose client goes
/// away while it waits in the queue has its future dropped mid-wait, and a lost decrement
/// would shrink the queue for good (after enough of them, every request is refused).
#[derive(Debug)]
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Bounds from `[limits]` on this machine.
    pub fn new(limits: &Limits) -> Self {
        let r = limits.resolved(cores());
        Self {
            limits: r,
            handshakes: Arc::new(Semaphore::new(r.max_handshakes.max(1))),
            work: Arc::new(Semaphore::new(r.max_in_flight.max(1))),
            takes: Arc::new(Semaphore::new(r.max_in_flight.max(1))),
            admitted: AtomicUsize::new(0),
            stats: Stats::default(),
            connected: Connected::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Resolved {
        self.limits
    }

    /// The handshake bound, for the accept loop.
    pub(crate) fn handshake_permits(&self) -> Arc<Semaphore> {
        self.handshakes.clone()
    }

    /// A slot for work that touches the database: at once when one is free, after a bounded
    /// wait in the queue otherwise, and `SERVER-BUSY` when the queue is full or the wait ran
    /// out.
    pub async fn admit(&self) -> Result<Slot<'_>, ApiFailure> {
        let cap = self.limits.max_in_flight + self.limits.max_queued;
        let over = self.admitted.fetch_add(1, Ordering::AcqRel) >= cap;
        let counted = Counted(&self.admitted);
        if over {
            return Err(self.busy("the admission queue is full"));
        }
        let permit = match self.work.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout(
                    self.limits.queue_wait,
                    self.work.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(self.busy("no slot came free within the queue wait")),
                }
            }
        };
        Ok(Slot {
            _permit: permit,
            _counted: counted,
            _turn: None,
        })
    }

    /// [`Admission::admit`], giving up at `deadline` as well (`None`): for a woken long-poll,
    /// whose agent stops listening then.
    pub async fn admit_until(&self, deadline: tokio::time::Instant) -> Option<Slot<'_>> {
        tokio::time::timeout_at(deadline, self.admit())
            .await
            .ok()?
            .ok()
    }

    /// A slot only if one is free right now (the long-poll's probes: they may be skipped).
    pub fn try_admit(&self) -> Option<Slot<'_>> {
        let p = self.work.clone().try_acquire_owned().ok()?;
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Some(Slot {
            _permit: p,
            _counted: Counted(&self.admitted),
            _turn: None,
        })
    }

    /// A slot for a woken long-poll to take its tasks, giving up at `deadline` (`None`), as
    /// [`Admission::admit_until`]; but at most `max_in_flight` such polls are in the queue
    /// (waiting or running) at once, and the rest wait for their turn outside it.
    ///
    /// Why: a task for the whole fleet wakes every held poll at once. In the queue they were
    /// ahead of everything that came after them, the check-ins reporting the task's results
    /// among them, which then waited out `queue_wait_ms`, were answered busy and came back to
    /// wait again until the takes had drained (100,000 agents: 251,137 busy answers, and 42 %
    /// of the results within a minute; BENCHMARKS.md, round 8). Behind at most `max_in_flight`
    /// takes, a result waits for a few of them only, and the takes still keep every slot busy.
    pub async fn admit_take(&self, deadline: tokio::time::Instant) -> Option<Slot<'_>> {
        let turn = tokio::time::timeout_at(deadline, self.takes.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let mut slot = self.admit_until(deadline).await?;
        slot._turn = Some(turn);
        Some(slot)
    }

    fn busy(&self, why: &str) -> ApiFailure {
        let n = self.stats.busy.fetch_add(1, Ordering::Relaxed);
        // One line per thousand refusals: an overload is a burst of them.
        if n.is_multiple_of(1000) {
            tracing::warn!(
                id = SERVER_BUSY,
                refused = n + 1,
                in_flight = self.limits.max_in_flight,
                queued = self.limits.max_queued,
                "server busy: {why}; answering 503 with Retry-After {} s ([limits] in steward.toml)",
                self.limits.retry_after_secs
            );
        }
        busy_failure(self.limits.retry_after_secs)
    }

    /// The Retry-After of a busy answer.
    pub fn retry_after_secs(&self) -> u64 {
        self.limits.retry_after_secs
    }
}

/// 503 `SERVER-BUSY` (the middleware adds `Retry-After`).
pub(crate) fn busy_failure(retry_after_secs: u64) -> ApiFailure {
    ApiFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        SERVER_BUSY,
        format!(
            "the server is busy; try again in {retry_after_secs} s (Retry-After). Nothing of \
             this request was stored."
        ),
    )
}

/// 503 `SERVER-BUSY` for a database pool that stayed exhausted (logged once per thousand).
pub(crate) fn pool_busy(detail: &str) -> ApiFailure {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    if COUNT.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
        tracing::warn!(
            id = SERVER_BUSY,
            "the database pool stayed exhausted ({detail}); answering 503 with Retry-After"
        );
    }
    ApiFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        SERVER_BUSY,
        "the server is busy; try again after Retry-After. Nothing of this request was stored.",
    )
}

/// Whether a route is gated by the admission queue: the routes that write to the database.
fn gated(method: &Method, path: &str) -> bool {
    *method == Method::POST
        && [
            paths::ENROLL,
            paths::ENROLL_KERBEROS,
            paths::CHECKIN,
            paths::RENEW,
            paths::GATEWAY_JOIN,
            paths::GATEWAY_REPORT,
        ]
        .contains(&path)
}

/// The agent site's middleware: database work passes the admission queue, and every 503 carries
/// `Retry-After`.
pub(crate) async fn gate(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let adm = svc.admission();
    let mut response = if gated(req.method(), req.uri().path()) {
        match adm.admit().await {
            Ok(slot) => {
                let r = next.run(req).await;
                drop(slot);
                r
            }
            Err(f) => f.into_response(),
        }
    } else {
        next.run(req).await
    };
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(adm.retry_after_secs()),
        );
    }
    response
}

/// How long after its last long-poll ended a device still counts as connected: the agent
/// checks in over the same connection between two long-polls (a few seconds at most).
pub const CONNECTED_GRACE: Duration = Duration::from_secs(15);

/// Devices with a long-poll open now, and when the last one ended.
#[derive(Debug, Default)]
pub struct Connected {
    map: Mutex<HashMap<String, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    open: u32,
    ended: Option<Instant>,
}

/// Marks a device connected while it lives (a long-poll in progress).
#[derive(Debug)]
pub struct HeldGuard<'a> {
    registry: &'a Connected,
    device: String,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if let Some(h) = map.get_mut(&self.device) {
            h.open = h.open.saturating_sub(1);
            h.ended = Some(Instant::now());
        }
    }
}

impl Connected {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        // Every update is a single field change; a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A long-poll of `device` begins; it ends when the guard is dropped (answered, or the
    /// connection closed under it).
    pub fn hold(&self, device: &str) -> HeldGuard<'_> {
        self.lock()
            .entry(device.to_owned())
            .or_insert(Held {
                open: 0,
                ended: None,
            })
            .open += 1;
        HeldGuard {
            registry: self,
            device: device.to_owned(),
        }
    }

    /// Whether `device` holds its persistent connection now.
    pub fn is_connected(&self, device: &str) -> bool {
        self.lock()
            .get(device)
            .is_some_and(|h| h.open > 0 || h.ended.is_some_and(|e| e.elapsed() < CONNECTED_GRACE))
    }

    /// Long-polls held open now (a device counts as connected a little longer: see
    /// [`CONNECTED_GRACE`]).
    pub fn open_polls(&self) -> usize {
        self.lock().values().map(|h| h.open as usize).sum()
    }

    /// Devices connected now.
    pub fn count(&self) -> usize {
        let mut map = self.lock();
        map.retain(|_, h| h.open > 0 || h.ended.is_some_and(|e| e.elapsed() < CONNECTED_GRACE));
        map.len()
    }
}

/// The open-files limit of this process, from /proc (for the log line of an `EMFILE`). Read
/// once, when the accept loop starts: at an `EMFILE` there is no descriptor left to open
/// /proc/self/limits with, which is exactly when the line needs it.
pub(crate) fn nofile_limit() -> String {
    static LIMIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LIMIT.get_or_init(read_nofile_limit).clone()
}

fn read_nofile_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    format!(
                        "soft {}, hard {}",
                        f.get(3).unwrap_or(&"?"),
                        f.get(4).unwrap_or(&"?")
                    )
                })
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auto_limits_follow_the_machine_and_explicit_ones_win() {
        let d = Limits::default();
        let two = d.resolved(2);
        assert_eq!(
            (two.max_handshakes, two.max_in_flight, two.max_queued),
            (128, 64, 65_536)
        );
        let eight = d.resolved(8);
        assert_eq!(
            (eight.max_handshakes, eight.max_in_flight, eight.max_queued),
            (512, 256, 262_144)
        );
        let set = Limits {
            max_handshakes: 10,
            max_in_flight: 3,
            max_queued: 5,
            ..Limits::default()
        }
        .resolved(2);
        assert_eq!(
            (set.max_handshakes, set.max_in_flight, set.max_queued),
            (10, 3, 5)
        );
        assert!(d.validate().is_ok());
        let bad = Limits {
            retry_after_secs: 0,
            ..Limits::default()
        };
        assert!(bad.validate().unwrap_err().contains("retry_after_secs"));
    }

    #[tokio::test]
    async fn a_full_queue_is_answered_busy_at_once_and_slots_come_back() {
        let adm = Admission::new(&Limits {
            max_in_flight: 1,
            max_queued: 1,
            queue_wait_ms: 50,
            ..Limits::default()
        });
        let first = adm.admit().await.unwrap();
        // The second waits in the queue and runs out of time: busy, not an error.
        let t = Instant::now();
        let second = adm.admit().await.unwrap_err();
        assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.id, SERVER_BUSY);
        assert!(t.elapsed() < Duration::from_secs(5));
        // With the queue full (one running, one waiting), a third is refused without waiting.
        let waiting = {
            let adm = &adm;
            async move { adm.admit().await.map(|_| ()) }
        };
        let (w, third) = tokio::join!(waiting, async {
            tokio::task::yield_now().await;
            let t = Instant::now();
            let r = adm.admit().await;
            (r.map(|_| ()), t.elapsed())
        });
        assert!(w.is_err());
        assert_eq!(third.0.unwrap_err().id, SERVER_BUSY);
        assert!(third.1 < Duration::from_millis(40), "{:?}", third.1);
        assert!(adm.try_admit().is_none());
        drop(first);
        let again = adm.admit().await.unwrap();
        drop(again);
        assert!(adm.try_admit().is_some());
        assert_eq!(adm.admitted.load(Ordering::Acquire), 0);
        assert!(adm.stats.busy.load(Ordering::Relaxed) >= 2);
    }

    /// A request whose client goes away while it waits in the queue is dropped mid-wait: it
    /// must leave the queue as it was, or the queue shrinks for good.
    #[tokio::test]
    async fn a_wait_abandoned_in_the_queue_gives_its_place_back() {
        let adm = Admission::new(&Limits {
            max_in_flight: 1,
            max_queued: 1,
            queue_wait_ms: 10_000,
            ..Limits::default()
        });
        let running = adm.admit().await.unwrap();
        for _ in 0..3 {
            // Waits in the queue, then is dropped (as hyper drops a handler whose connection
            // closed): the only queue place is free again each time.
            let abandoned = tokio::time::timeout(Duration::from_millis(20), adm.admit()).await;
            assert!(abandoned.is_err(), "still waiting when dropped");
            assert_eq!(adm.admitted.load(Ordering::Acquire), 1);
        }
        // The same through the long-poll's deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        assert!(adm.admit_until(deadline).await.is_none());
        assert_eq!(adm.admitted.load(Ordering::Acquire), 1);
        drop(running);
        assert!(
            adm.admit_until(tokio::time::Instant::now() + Duration::from_secs(1))
                .await
                .is_some()
        );
        assert_eq!(adm.admitted.load(Ordering::Acquire), 0);
    }

    /// A fan-out wakes every held poll at once: the check-in reporting a result must wait
    /// behind at most `max_in_flight` of their takes, not all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn woken_takes_enter_the_queue_a_few_at_a_time() {
        let adm: &'static Admission = Box::leak(Box::new(Admission::new(&Limits {
            max_in_flight: 2,
            max_queued: 100,
            queue_wait_ms: 10_000,
            ..Limits::default()
        })));
        // Both slots busy while the fleet is woken.
        let running = [adm.admit().await.unwrap(), adm.admit().await.unwrap()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let taken = Arc::new(AtomicUsize::new(0));
        let mut takes = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let taken = taken.clone();
            takes.spawn(async move {
                let slot = adm.admit_take(deadline).await;
                assert!(slot.is_some(), "a take ran out of time");
                tokio::time::sleep(Duration::from_millis(20)).await;
                taken.fetch_add(1, Ordering::SeqCst);
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Two running, two takes in the queue; the other eight wait outside it.
        assert_eq!(adm.admitted.load(Ordering::Acquire), 4);
        // A result's check-in arrives now, behind those two takes only.
        let (reported, ()) = tokio::join!(
            async {
                adm.admit().await.unwrap();
                taken.load(Ordering::SeqCst)
            },
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(running);
            }
        );
        assert!(reported <= 2, "the check-in waited behind {reported} takes");
        while let Some(done) = takes.join_next().await {
            done.unwrap();
        }
        assert_eq!(taken.load(Ordering::SeqCst), 10);
        assert_eq!(adm.admitted.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_registry_counts_open_long_polls() {
        let c = Connected::default();
        assert!(!c.is_connected("d1"));
        let g = c.hold("d1");
        let g2 = c.hold("d1");
        assert!(c.is_connected("d1"));
        drop(g);
        assert!(c.is_connected("d1"));
        drop(g2);
        // Ended just now: still within the grace between two long-polls.
        assert!(c.is_connected("d1"));
        assert_eq!(c.count(), 1);
        assert!(!c.is_connected("d2"));
    }
}

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
//!   failed way; so is a request whose queue ahead would not be served within the wait at the
//!   recent pace, told when to come back ([`Admission::admit`]);
//! - the long-poll never waits for a slot: its database probes use one when one is free and
//!   otherwise skip the probe (a wake-up is then answered without it), so held connections do
//!   not compete with check-ins.
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
    /// Requests that touch the database running at once (0: 4 per core, at least 8; the
    /// SQLite pool is one writer and four readers).
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
            max_in_flight: auto(self.max_in_flight, 4, 8),
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
# Requests that touch the database running at once (enrollment, check-in, renewal). Default: 0
# (4 per core, at least 8; here {inf})
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
}

/// The agent site's bounds and counters, shared by the accept loop and the routes.
#[derive(Debug)]
pub struct Admission {
    limits: Resolved,
    handshakes: Arc<Semaphore>,
    work: Arc<Semaphore>,
    /// Requests holding or waiting for a `work` slot.
    admitted: AtomicUsize,
    /// How long a request holds its slot, on average lately: what the queue's wait is
    /// predicted from.
    hold: Mutex<HoldTime>,
    /// Counters.
    pub stats: Stats,
    /// Devices holding a long-poll now.
    pub connected: Connected,
}

/// The moving average of how long requests hold a slot (seconds).
#[derive(Debug, Default, Clone, Copy)]
struct HoldTime {
    mean_secs: f64,
    samples: u64,
}

/// Slot releases before the average is trusted for predictions.
const HOLD_SAMPLES_MIN: u64 = 64;
/// Weight of each new sample in the moving average: about the last few hundred requests, so
/// the prediction follows the machine (a CPU shared with a build, a slower disk) within a
/// fraction of a second at the rates where it matters.
const HOLD_WEIGHT: f64 = 1.0 / 256.0;
/// The longest `Retry-After` a predicted wait is turned into (agents add up to as much again).
const RETRY_AFTER_MAX_SECS: u64 = 60;

impl HoldTime {
    fn add(&mut self, secs: f64) {
        self.mean_secs = if self.samples == 0 {
            secs
        } else {
            self.mean_secs + HOLD_WEIGHT * (secs - self.mean_secs)
        };
        self.samples += 1;
    }
}

/// A request's slot: released when dropped.
#[derive(Debug)]
pub struct Slot<'a> {
    _permit: OwnedSemaphorePermit,
    admission: &'a Admission,
    since: Instant,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.admission.admitted.fetch_sub(1, Ordering::AcqRel);
        let held = self.since.elapsed().as_secs_f64();
        self.admission.hold_lock().add(held);
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
            admitted: AtomicUsize::new(0),
            hold: Mutex::new(HoldTime::default()),
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
    ///
    /// A request that would queue is refused at once, not after the wait, when the queue ahead
    /// of it cannot be served within the wait at the rate slots are being released (its length
    /// × the recent mean hold time ÷ the slots): under a sustained overload, a queue that only
    /// times out makes every request wait the whole bound and then fail, so nothing is served
    /// and the retries come back together. Refused at once, it is told in `Retry-After` when
    /// the queue ahead will have shrunk enough for it to wait within the bound, which spreads
    /// the retries over what the server can do.
    pub async fn admit(&self) -> Result<Slot<'_>, ApiFailure> {
        let cap = self.limits.max_in_flight + self.limits.max_queued;
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        if before >= cap {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(self.busy("the admission queue is full", self.limits.retry_after_secs));
        }
        let permit = match self.work.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => {
                let ahead = before.saturating_sub(self.limits.max_in_flight) + 1;
                if let Some(wait) = self.predicted_wait(ahead)
                    && wait > self.limits.queue_wait
                {
                    self.admitted.fetch_sub(1, Ordering::AcqRel);
                    // Back when the queue ahead will have shrunk to what the wait allows, not
                    // when it will have drained: a fan-out's wake-ups arrive together and
                    // should come back as the queue makes room, not all after it emptied.
                    let secs = wait
                        .saturating_sub(self.limits.queue_wait)
                        .as_secs()
                        .saturating_add(1)
                        .clamp(self.limits.retry_after_secs, RETRY_AFTER_MAX_SECS);
                    return Err(self.busy(
                        "the queue ahead would not be served within the queue wait",
                        secs,
                    ));
                }
                match tokio::time::timeout(
                    self.limits.queue_wait,
                    self.work.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(p)) => Ok(p),
                    _ => Err(()),
                }
            }
        };
        match permit {
            Ok(p) => Ok(Slot {
                _permit: p,
                admission: self,
                since: Instant::now(),
            }),
            Err(()) => {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
                Err(self.busy(
                    "no slot came free within the queue wait",
                    self.limits.retry_after_secs,
                ))
            }
        }
    }

    /// How long `ahead` requests take to pass the slots at the recent mean hold time; `None`
    /// until enough requests have been served to know.
    fn predicted_wait(&self, ahead: usize) -> Option<Duration> {
        let hold = *self.hold_lock();
        if hold.samples < HOLD_SAMPLES_MIN {
            return None;
        }
        let secs = ahead as f64 * hold.mean_secs / self.limits.max_in_flight.max(1) as f64;
        Duration::try_from_secs_f64(secs).ok()
    }

    fn hold_lock(&self) -> std::sync::MutexGuard<'_, HoldTime> {
        // A plain value under the lock: a poisoned one is still usable.
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot only if one is free right now (the long-poll's probes: they may be skipped).
    pub fn try_admit(&self) -> Option<Slot<'_>> {
        let p = self.work.clone().try_acquire_owned().ok()?;
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Some(Slot {
            _permit: p,
            admission: self,
            since: Instant::now(),
        })
    }

    fn busy(&self, why: &str, retry_after_secs: u64) -> ApiFailure {
        let n = self.stats.busy.fetch_add(1, Ordering::Relaxed);
        // One line per thousand refusals: an overload is a burst of them.
        if n.is_multiple_of(1000) {
            tracing::warn!(
                id = SERVER_BUSY,
                refused = n + 1,
                in_flight = self.limits.max_in_flight,
                queued = self.limits.max_queued,
                "server busy: {why}; answering 503 with Retry-After {retry_after_secs} s ([limits] in steward.toml)",
            );
        }
        busy_failure(retry_after_secs)
    }

    /// The Retry-After of a busy answer.
    pub fn retry_after_secs(&self) -> u64 {
        self.limits.retry_after_secs
    }
}

/// 503 `SERVER-BUSY` (the middleware adds `Retry-After`).
pub(crate) fn busy_failure(retry_after_secs: u64) -> ApiFailure {
    let mut f = ApiFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        SERVER_BUSY,
        format!(
            "the server is busy; try again in {retry_after_secs} s (Retry-After). Nothing of \
             this request was stored."
        ),
    );
    f.retry_after_secs = Some(retry_after_secs);
    f
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
            (128, 8, 65_536)
        );
        let eight = d.resolved(8);
        assert_eq!(
            (eight.max_handshakes, eight.max_in_flight, eight.max_queued),
            (512, 32, 262_144)
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

    #[tokio::test]
    async fn a_queue_that_would_not_drain_in_time_is_refused_at_once_with_when_to_return() {
        let adm = Arc::new(Admission::new(&Limits {
            max_in_flight: 1,
            max_queued: 100,
            queue_wait_ms: 1000,
            retry_after_secs: 1,
            ..Limits::default()
        }));
        // Too few requests served to know the pace: a request queues as before.
        adm.hold_lock().add(0.3);
        assert_eq!(adm.predicted_wait(10), None);
        for _ in 1..HOLD_SAMPLES_MIN {
            adm.hold_lock().add(0.3);
        }
        let first = adm.admit().await.unwrap();
        // Three wait: 0.3, 0.6 and 0.9 s of work ahead of them, within the 1 s wait.
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let a = adm.clone();
            waiting.push(tokio::spawn(async move { a.admit().await.map(drop) }));
        }
        while adm.admitted.load(Ordering::Acquire) < 4 {
            tokio::task::yield_now().await;
        }
        // A fourth would have 1.2 s ahead: refused now, not after waiting 1 s.
        let t = Instant::now();
        let refused = adm.admit().await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(refused.id, SERVER_BUSY);
        assert_eq!(refused.retry_after_secs, Some(1));
        let r = refused.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        // The queued ones are served as slots come free (a hold far shorter than predicted).
        drop(first);
        for w in waiting {
            assert!(w.await.unwrap().is_ok());
        }
        assert_eq!(adm.admitted.load(Ordering::Acquire), 0);
        // Told to come back when the queue will have room within the wait: with 5 s of
        // work ahead and a 1 s wait, after 4 s (rounded up).
        *adm.hold_lock() = HoldTime::default();
        for _ in 0..HOLD_SAMPLES_MIN {
            adm.hold_lock().add(5.0);
        }
        let held = adm.admit().await.unwrap();
        let refused = adm.admit().await.unwrap_err();
        assert_eq!(refused.retry_after_secs, Some(5));
        drop(held);
        // A far longer predicted wait is capped.
        for _ in 0..4096 {
            adm.hold_lock().add(500.0);
        }
        let _held = adm.admit().await.unwrap();
        let refused = adm.admit().await.unwrap_err();
        assert_eq!(refused.retry_after_secs, Some(RETRY_AFTER_MAX_SECS));
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

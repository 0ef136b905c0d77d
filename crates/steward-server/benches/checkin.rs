//! The check-in of an unchanged agent, at the service layer, against the real SQLite store of
//! a running server holding N devices (N = 100 … 100,000). Its cost must not grow with N: no
//! full-table work, and no write beyond the batched last-seen flush.
//!
//! `checkin/unchanged/N` times what the agent route does once the TLS layer has verified the
//! certificate: find the device by the certificate's CN and check its thumbprint
//! (`Service::agent_device`), then `Service::checkin` (note last-seen in memory, compare
//! configuration version and inventory hash, probe for pending tasks). Devices are visited in
//! a shuffled order covering the whole fleet, so the reads hit the whole table, not a few hot
//! rows, each device having checked in once before the timing starts (a server one interval
//! after its start: the store has cached what a check-in reads). Every `FLUSH_BATCH` check-ins the benchmark flushes last-seen itself, outside the
//! timing, as the server's flush loop would (at 1,700 check-ins/s and one flush every 5 s a
//! flush holds about 8,500 devices).
//!
//! `checkin/flush_per_device/N` is that flush, per device written: the amortised share of the
//! batched last-seen write in each check-in.
//!
//! Run: `cargo bench -p steward-server --bench checkin` (`STEWARD_BENCH_SIZES=100,100000` to
//! choose the fleet sizes). Under `cargo test --benches` only N = 100 is set up and each routine
//! runs once.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use steward_server::{PeerCert, Service};
use steward_store::{Seen, SqliteStore, Store};
use support::{BenchServer, Rng, full_run, nothing_new, unchanged};

/// Devices written by one last-seen flush: 1,700 check-ins/s (the design's budget) × 5 s (the
/// server's flush interval), or the whole fleet when it is smaller.
const FLUSH_BATCH: usize = 8_500;

struct Fleet {
    server: BenchServer,
    /// A second handle on the server's database, for the flushes the benchmark drives.
    store: SqliteStore,
    service: Arc<Service>,
    peers: Vec<PeerCert>,
    /// The order devices check in: a shuffle of the whole fleet.
    order: Vec<usize>,
    next: AtomicUsize,
    since_flush: AtomicUsize,
    config_version: u64,
}

impl Fleet {
    async fn new(n: usize) -> Self {
        let server = BenchServer::start().await;
        let started = Instant::now();
        let peers = server.load_fleet(n, 0x5EED ^ n as u64).await;
        let db = server.database();
        let size = |suffix: &str| {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            std::fs::metadata(p).map_or(0, |m| m.len())
        };
        eprintln!(
            "checkin: {n} devices loaded in {:.1} s; database {:.1} MB (+ WAL {:.1} MB)",
            started.elapsed().as_secs_f64(),
            size("") as f64 / 1e6,
            size("-wal") as f64 / 1e6
        );
        let store = SqliteStore::open(&server.database()).await.unwrap();
        let service = server.service.clone();
        let config_version = server.config_version;
        let fleet = Self {
            order: Rng::new(n as u64).permutation(n),
            server,
            store,
            service,
            peers,
            next: AtomicUsize::new(0),
            since_flush: AtomicUsize::new(0),
            config_version,
        };
        // Every device checks in once before anything is timed, as in a server that has run
        // for one interval: the steady state, whatever the server keeps from a first check-in
        // (the store's cache). The premise is checked on the way: these really are unchanged
        // check-ins.
        for _ in 0..n {
            let peer = fleet.next_peer();
            let device = fleet.service.agent_device(Some(peer)).await.unwrap();
            let r = fleet
                .service
                .checkin(&device, unchanged(fleet.config_version))
                .await
                .unwrap();
            assert!(nothing_new(&r), "not an unchanged check-in: {r:?}");
        }
        fleet
    }

    fn next_peer(&self) -> &PeerCert {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.order.len();
        &self.peers[self.order[i]]
    }

    /// `iters` check-ins; only the check-ins are timed, not the flushes between them. Run on a
    /// worker thread of the runtime, as the server runs a request (criterion's own thread would
    /// park and be woken at every database round trip, which the server's workers are not).
    async fn checkins(self: Arc<Self>, iters: u64) -> Duration {
        tokio::spawn(async move { self.checkins_here(iters).await })
            .await
            .unwrap()
    }

    async fn checkins_here(&self, iters: u64) -> Duration {
        let batch = FLUSH_BATCH.min(self.peers.len());
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            let peer = self.next_peer();
            let req = unchanged(self.config_version);
            let start = Instant::now();
            let device = self.service.agent_device(Some(peer)).await.unwrap();
            let r = self.service.checkin(&device, req).await.unwrap();
            timed += start.elapsed();
            std::hint::black_box(r);
            if self.since_flush.fetch_add(1, Ordering::Relaxed) + 1 >= batch {
                self.since_flush.store(0, Ordering::Relaxed);
                self.server.service.store().flush_seen().await.unwrap();
            }
        }
        timed
    }

    /// Flushes of `FLUSH_BATCH` distinct devices (or the fleet) until `iters` devices were
    /// written; only the flushes are timed. On a worker thread, like the server's flush loop.
    async fn flushes(self: Arc<Self>, iters: u64) -> Duration {
        tokio::spawn(async move { self.flushes_here(iters).await })
            .await
            .unwrap()
    }

    async fn flushes_here(&self, iters: u64) -> Duration {
        let batch = FLUSH_BATCH.min(self.peers.len()) as u64;
        let now = steward_pki::OffsetDateTime::now_utc().unix_timestamp();
        let mut timed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let k = left.min(batch);
            for _ in 0..k {
                let id = self.next_peer().common_name.as_deref().unwrap();
                self.store.note_seen(
                    id,
                    Seen {
                        at: now,
                        connection_path: Some("lan via localhost:4726".into()),
                    },
                );
            }
            let start = Instant::now();
            let written = self.store.flush_seen().await.unwrap();
            timed += start.elapsed();
            assert_eq!(written as u64, k);
            left -= k;
        }
        timed
    }

    async fn stop(self: Arc<Self>) {
        let Ok(fleet) = Arc::try_unwrap(self) else {
            panic!("a benchmark routine still holds the fleet");
        };
        fleet.store.close().await;
        fleet.server.stop().await;
    }
}

fn checkin(c: &mut Criterion) {
    let sizes: Vec<usize> = if full_run() {
        std::env::var("STEWARD_BENCH_SIZES")
            .ok()
            .map(|v| {
                v.split(',')
                    .filter_map(|n| n.trim().parse().ok())
                    .filter(|&n| n > 0 && n <= 1_000_000)
                    .collect::<Vec<usize>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![100, 1_000, 10_000, 100_000])
    } else {
        vec![100]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("checkin");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for &n in &sizes {
        let fleet = Arc::new(rt.block_on(Fleet::new(n)));
        group.bench_with_input(BenchmarkId::new("unchanged", n), &fleet, |b, f| {
            b.to_async(&rt)
                .iter_custom(|iters| f.clone().checkins(iters));
        });
        group.bench_with_input(BenchmarkId::new("flush_per_device", n), &fleet, |b, f| {
            b.to_async(&rt)
                .iter_custom(|iters| f.clone().flushes(iters));
        });
        rt.block_on(fleet.stop());
    }
    group.finish();
}

criterion_group!(benches, checkin);
criterion_main!(benches);

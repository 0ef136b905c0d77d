//! Write transactions per second through the SQLite store, with 1 and 64 concurrent writers.
//!
//! Each write is `Store::save_inventory` of a distinct device (an auto-commit UPDATE of one
//! row, as a first check-in does), `Store::commit_results` of one result (as a task result
//! does) or `Store::take_tasks` of one pending task (as the check-in a fan-out's wake-up
//! prompts does; the writers take at once, one round per timed write). All must be on disk
//! before they return, so what this measures is how many commits share one fsync of the WAL:
//! with one writer, each commit has its own; with 64, as many as commit while one fsync runs.
//! Results and takes of concurrent writers also share commits (`combine.rs`): with 64 writers
//! one commit carries as many of them as were waiting.
//!
//! The database lives under Cargo's target directory, not in `/tmp`, which may be a tmpfs
//! whose fsync costs nothing. Each sample times a fixed batch of `WRITES_PER_WRITER` writes per
//! writer.
//!
//! After each case the benchmark prints how many writes it made and how many fsyncs of the WAL
//! the store's durability barrier made for them (`SqliteStore::wal_syncs`): the group-commit
//! factor, which says more than the rate on a disk whose fsync is cheap.
//!
//! Run: `cargo bench -p steward-store --bench writes`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use steward_proto::{Inventory, TaskOutcome, TaskResult};
use steward_store::{ImportedDevice, NewDevice, NewTaskRecord, SqliteStore, Store};

/// Writes each writer makes in one timed batch.
const WRITES_PER_WRITER: usize = 16;
/// The concurrency levels measured.
const WRITERS: [usize; 2] = [1, 64];
/// Devices in the fleet: every writer of the largest level has its own.
const DEVICES: usize = 64;

fn inventory(host: &str) -> Inventory {
    Inventory {
        hostname: host.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "13".into(),
        kernel: "6.12".into(),
        cpu_model: "cpu".into(),
        cpu_count: 2,
        memory_total_bytes: 1 << 30,
        disks: vec![],
        interfaces: vec![],
        agent_version: "0.1.0".into(),
    }
}

async fn open_fleet(dir: &std::path::Path) -> (Arc<SqliteStore>, Vec<String>) {
    let store = SqliteStore::open(&dir.join("steward.db")).await.unwrap();
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("device-{i:04}")).collect();
    let fleet: Vec<ImportedDevice> = ids
        .iter()
        .map(|id| ImportedDevice {
            device: NewDevice {
                id: id.clone(),
                name: id.clone(),
                cert_serial: format!("S{id}"),
                cert_sha256: format!("H{id}"),
                tags: vec![],
                created_at: 1,
                profile_version: 0,
                cert_not_after: None,
            },
            config_version_acked: 0,
            profile_version_acked: 0,
            inventory: Some((inventory(id), "H0".into())),
            inventory_at: Some(1),
            last_seen: None,
            connection_path: None,
        })
        .collect();
    store.import_devices(&fleet).await.unwrap();
    (Arc::new(store), ids)
}

/// Writes made and WAL fsyncs the store made during them, across timed batches.
#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    syncs: AtomicU64,
}

impl Counts {
    /// Prints and resets the counts of one case.
    fn report(&self, case: &str, writers: usize) {
        let w = self.writes.swap(0, Ordering::SeqCst);
        let s = self.syncs.swap(0, Ordering::SeqCst);
        eprintln!(
            "writes/{case}/{writers}: {w} writes, {s} WAL fsyncs, {:.1} writes per fsync",
            w as f64 / s.max(1) as f64
        );
    }
}

/// Runs `writers` tasks each making `WRITES_PER_WRITER` writes with `write`, `iters` times;
/// returns the time taken.
async fn run<F, Fut>(
    store: &SqliteStore,
    counts: &Counts,
    writers: usize,
    iters: u64,
    write: F,
) -> Duration
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let syncs = store.wal_syncs();
    let started = Instant::now();
    for _ in 0..iters {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let write = write.clone();
                tokio::spawn(async move {
                    for n in 0..WRITES_PER_WRITER {
                        write(w, n).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let elapsed = started.elapsed();
    counts.writes.fetch_add(
        iters * (writers * WRITES_PER_WRITER) as u64,
        Ordering::SeqCst,
    );
    counts
        .syncs
        .fetch_add(store.wal_syncs() - syncs, Ordering::SeqCst);
    elapsed
}

fn writes(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (store, ids) = rt.block_on(open_fleet(dir.path()));
    let ids = Arc::new(ids);
    let counts = Arc::new(Counts::default());

    let mut group = c.benchmark_group("writes");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for writers in WRITERS {
        group.throughput(Throughput::Elements((writers * WRITES_PER_WRITER) as u64));
        group.bench_function(BenchmarkId::new("save_inventory", writers), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (store, ids, counts) = (store.clone(), ids.clone(), counts.clone());
                async move {
                    let s = store.clone();
                    run(&s, &counts, writers, iters, move |w, n| {
                        let (store, ids) = (store.clone(), ids.clone());
                        async move {
                            let id = &ids[w];
                            store
                                .save_inventory(id, &inventory(id), &format!("H{n}"), 2)
                                .await
                                .unwrap();
                        }
                    })
                    .await
                }
            });
        });
        counts.report("save_inventory", writers);
        group.bench_function(BenchmarkId::new("commit_results", writers), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (store, ids, counts) = (store.clone(), ids.clone(), counts.clone());
                async move {
                    // One task per device and write, outside the timing; each result is then
                    // a real state change (pending to finished), not an idempotent repeat.
                    let mut tasks = Vec::new();
                    for _ in 0..iters as usize * WRITES_PER_WRITER {
                        let task = NewTaskRecord {
                            command: "true".into(),
                            args: vec![],
                            timeout_secs: 60,
                            target: "all".into(),
                            created_at: 1,
                            created_by: "bench".into(),
                        };
                        tasks.push(store.create_task(&task, &ids[..writers]).await.unwrap());
                    }
                    let mut total = Duration::ZERO;
                    for batch in tasks.chunks(WRITES_PER_WRITER) {
                        let (s, ids, batch) =
                            (store.clone(), ids.clone(), Arc::new(batch.to_vec()));
                        total += run(&store, &counts, writers, 1, move |w, n| {
                            let (store, ids, batch) = (s.clone(), ids.clone(), batch.clone());
                            async move {
                                let result = TaskResult {
                                    task_id: batch[n],
                                    outcome: TaskOutcome::Succeeded,
                                    exit_code: Some(0),
                                    output: String::new(),
                                    truncated: false,
                                    started_at: "2026-01-01T00:00:00Z".into(),
                                    finished_at: "2026-01-01T00:00:00Z".into(),
                                };
                                store.commit_results(&ids[w], &[result], 3).await.unwrap();
                            }
                        })
                        .await;
                    }
                    total
                }
            });
        });
        counts.report("commit_results", writers);
        group.bench_function(BenchmarkId::new("take_tasks", writers), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (store, ids, counts) = (store.clone(), ids.clone(), counts.clone());
                async move {
                    // As in a fan-out: a task for every writer's device (outside the timing),
                    // then every writer takes its one pending task at once, as the woken
                    // agents' check-ins do; each take is a real change (pending to running).
                    let mut total = Duration::ZERO;
                    for _ in 0..iters as usize * WRITES_PER_WRITER {
                        let task = NewTaskRecord {
                            command: "true".into(),
                            args: vec![],
                            timeout_secs: 60,
                            target: "all".into(),
                            created_at: 1,
                            created_by: "bench".into(),
                        };
                        let id = store.create_task(&task, &ids[..writers]).await.unwrap();
                        let syncs = store.wal_syncs();
                        let started = Instant::now();
                        let takes: Vec<_> = (0..writers)
                            .map(|w| {
                                let (store, ids) = (store.clone(), ids.clone());
                                tokio::spawn(async move {
                                    let taken = store.take_tasks(&ids[w], 2, -58).await.unwrap();
                                    assert_eq!(taken.len(), 1);
                                })
                            })
                            .collect();
                        for t in takes {
                            t.await.unwrap();
                        }
                        total += started.elapsed();
                        counts.writes.fetch_add(writers as u64, Ordering::SeqCst);
                        counts
                            .syncs
                            .fetch_add(store.wal_syncs() - syncs, Ordering::SeqCst);
                        // Finished, outside the timing, as the agents' results would: a
                        // device's open tasks stay few, as in a fleet that reports back.
                        for d in &ids[..writers] {
                            let result = TaskResult {
                                task_id: id,
                                outcome: TaskOutcome::Succeeded,
                                exit_code: Some(0),
                                output: String::new(),
                                truncated: false,
                                started_at: "2026-01-01T00:00:00Z".into(),
                                finished_at: "2026-01-01T00:00:00Z".into(),
                            };
                            store.commit_results(d, &[result], 3).await.unwrap();
                        }
                    }
                    total
                }
            });
        });
        counts.report("take_tasks", writers);
    }
    group.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, writes);
criterion_main!(benches);

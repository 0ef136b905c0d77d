//! Combined writes: the single-statement writes of concurrent requests, committed together.
//!
//! In a fan-out every woken agent takes its task (one `UPDATE … RETURNING`) and then sends its
//! result (one `UPDATE`). As auto-commit statements each of those is a commit of its own on
//! the one writer connection: WAL frames written, the WAL index updated, and every reader's
//! page cache invalidated (a reader that starts after a commit re-reads the pages it had,
//! `pcache1TruncateUnsafe` in the server's profile). Here they queue for one task that takes
//! every write waiting (up to [`MAX_BATCH`]) and runs them in one transaction, so a burst of
//! N writes costs one commit, not N. Nothing waits for a batch to fill: a write that finds the
//! writer idle runs alone at once, and the ones that arrive while it runs form the next batch.
//!
//! Durability is unchanged: each caller waits for the durability barrier covering the commit
//! that included its write before it returns ([`crate::durable`]). The writer task itself
//! never waits for a sync, so the next batch runs while the last one is being synced.
//!
//! A batch that fails (a statement error, `SQLITE_BUSY` from another process) is rolled back
//! and every write in it is run again alone: one bad write fails only itself.

use std::collections::{BTreeMap, HashMap};

use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::{Executor, Row, Sqlite, SqliteConnection};
use steward_proto::TaskResult;
use tokio::sync::{mpsc, oneshot};

use crate::sqlite::{RESULTS_MANY, TAKE_TASKS, TAKE_TASKS_MANY, Writer, result_update};
use crate::state_str;
use crate::{Result, StoreError};
use steward_proto::admin::TaskState;

/// The most writes committed together. Large enough that a fan-out's burst becomes a few
/// commits; small enough that a batch holds the writer connection for milliseconds, not
/// longer (other writes wait for it).
pub(crate) const MAX_BATCH: usize = 512;

/// Task output carried in one batch's results statement, at most (then the rest of the batch's
/// results run as statements of their own): a burst of large outputs is not copied into one
/// huge JSON text.
const MAX_BATCH_OUTPUT: usize = 4 << 20;

/// Writes waiting for the writer task; a caller beyond this waits to enqueue (the admission
/// queue in front of the server bounds how many can be waiting anyway).
const QUEUE: usize = 4096;

/// One write to combine.
#[derive(Debug)]
pub(crate) enum Op {
    /// [`crate::Store::take_tasks`]: the rows of [`TAKE_TASKS`].
    Take {
        device_id: String,
        now: i64,
        redeliver_before: i64,
    },
    /// One task's result ([`crate::Store::commit_results`] with one result): rows changed.
    Result {
        device_id: String,
        task_id: i64,
        result: Box<TaskResult>,
        now: i64,
    },
}

/// What a write returned.
#[derive(Debug)]
pub(crate) enum Done {
    /// The rows a take returned.
    Taken(Vec<SqliteRow>),
    /// The rows a result's update changed.
    Updated(u64),
}

/// A write, and where its outcome goes: the outcome and the sequence number of the commit
/// that made it (for the durability barrier).
struct Job {
    op: Op,
    reply: oneshot::Sender<Result<(Done, u64)>>,
}

/// The handle to the writer task.
#[derive(Debug, Clone)]
pub(crate) struct Combiner {
    jobs: mpsc::Sender<Job>,
}

impl Combiner {
    /// Starts the writer task on the current Tokio runtime; it ends when every handle is gone.
    pub(crate) fn start(writer: Writer) -> Self {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, rx));
        Self { jobs }
    }

    /// Runs `op` with whatever other writes are waiting, and returns once its commit is on
    /// disk.
    pub(crate) async fn write(&self, writer: &Writer, op: Op) -> Result<Done> {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        let (done, seq) = outcome.await.map_err(|_| StoreError::Closed)??;
        writer.durability.wait(seq).await?;
        Ok(done)
    }
}

async fn run(writer: Writer, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        if jobs.len() > 1 {
            match together(&writer, &jobs).await {
                Ok((done, seq)) => {
                    for (job, d) in jobs.drain(..).zip(done) {
                        // A caller that went away does not need its answer; its write stands.
                        let _ = job.reply.send(Ok((d, seq)));
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(
                        writes = jobs.len(),
                        "combined write failed, each write runs alone: {e}"
                    );
                }
            }
        }
        for job in jobs.drain(..) {
            let outcome = alone(&writer, &job.op).await;
            let _ = job.reply.send(outcome);
        }
    }
}

/// Every write in one transaction: their outcomes, in order, and the commit's sequence number.
/// The takes go in one statement per (time, redelivery bound) over every device of the batch
/// ([`TAKE_TASKS_MANY`]), the results in one per time ([`RESULTS_MANY`]) — in practice one
/// or two statements a batch: a round trip to SQLite's thread per write was the server's
/// largest cost in a fan-out (waking that thread, BENCHMARKS.md round 6).
async fn together(writer: &Writer, jobs: &[Job]) -> Result<(Vec<Done>, u64)> {
    let mut tx = writer.pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut done: Vec<Option<Done>> = jobs.iter().map(|_| None).collect();
    let mut takes: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    let mut results: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut output_bytes = 0;
    for (i, job) in jobs.iter().enumerate() {
        match &job.op {
            Op::Take {
                now,
                redeliver_before,
                ..
            } => takes.entry((*now, *redeliver_before)).or_default().push(i),
            // Outputs are copied into the statement's JSON: past a bound, the rest run alone.
            Op::Result { result, now, .. } if output_bytes < MAX_BATCH_OUTPUT => {
                output_bytes += result.output.len();
                results.entry(*now).or_default().push(i);
            }
            Op::Result { .. } => done[i] = Some(apply(&mut tx, &job.op).await?),
        }
    }
    for (now, members) in results {
        // The same result twice in one batch (a resent copy): the first is stored and the
        // later ones change nothing, as if they had run one after the other.
        let mut first: HashMap<(&str, i64), usize> = HashMap::new();
        let mut rows = Vec::with_capacity(members.len());
        for &i in &members {
            done[i] = Some(Done::Updated(0));
            if let Op::Result {
                device_id,
                task_id,
                result,
                ..
            } = &jobs[i].op
                && !first.contains_key(&(device_id.as_str(), *task_id))
            {
                first.insert((device_id.as_str(), *task_id), i);
                rows.push(serde_json::json!([
                    device_id,
                    task_id,
                    state_str(TaskState::from(result.outcome)),
                    result.exit_code,
                    result.output,
                    i64::from(result.truncated),
                    result.finished_at,
                ]));
            }
        }
        let rows = serde_json::to_string(&rows).map_err(|e| StoreError::Corrupt {
            what: "task_devices.output",
            reason: e.to_string(),
        })?;
        let changed = tx
            .fetch_all(sqlx::query::<Sqlite>(RESULTS_MANY).bind(now).bind(rows))
            .await?;
        for row in changed {
            let device: String = row.try_get(0)?;
            let task: i64 = row.try_get(1)?;
            if let Some(&i) = first.get(&(device.as_str(), task)) {
                done[i] = Some(Done::Updated(1));
            }
        }
    }
    for ((now, bound), members) in takes {
        // A device taken twice in one batch: the first take gets its rows and the later ones
        // none, as if they had run one after the other.
        let mut first: HashMap<&str, usize> = HashMap::new();
        for &i in &members {
            if let Op::Take { device_id, .. } = &jobs[i].op {
                first.entry(device_id.as_str()).or_insert(i);
            }
            done[i] = Some(Done::Taken(Vec::new()));
        }
        let ids: Vec<&str> = first.keys().copied().collect();
        let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt {
            what: "task_devices.device_id",
            reason: e.to_string(),
        })?;
        let rows = tx
            .fetch_all(
                sqlx::query::<Sqlite>(TAKE_TASKS_MANY)
                    .bind(now)
                    .bind(ids)
                    .bind(bound),
            )
            .await?;
        for row in rows {
            let device: String = row.try_get("device_id")?;
            if let Some(Some(Done::Taken(mine))) = first.get(device.as_str()).map(|&i| &mut done[i])
            {
                mine.push(row);
            }
        }
    }
    let done = done
        .into_iter()
        .map(|d| d.ok_or_else(|| StoreError::Database("a combined write lost its outcome".into())))
        .collect::<Result<Vec<_>>>()?;
    let committing = writer.durability.committing();
    tx.commit().await?;
    Ok((done, committing.committed()))
}

/// One write as an auto-commit statement.
async fn alone(writer: &Writer, op: &Op) -> Result<(Done, u64)> {
    let mut conn = writer.pool.acquire().await?;
    let committing = writer.durability.committing();
    let done = apply(&mut conn, op).await?;
    Ok((done, committing.committed()))
}

async fn apply(conn: &mut SqliteConnection, op: &Op) -> Result<Done> {
    Ok(match op {
        Op::Take {
            device_id,
            now,
            redeliver_before,
        } => Done::Taken(
            conn.fetch_all(
                sqlx::query::<Sqlite>(TAKE_TASKS)
                    .bind(*now)
                    .bind(device_id.as_str())
                    .bind(*redeliver_before),
            )
            .await?,
        ),
        Op::Result {
            device_id,
            task_id,
            result,
            now,
        } => {
            let r: SqliteQueryResult = conn
                .execute(result_update(device_id, *task_id, result, *now))
                .await?;
            Done::Updated(r.rows_affected())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqliteStore, Store};

    fn job(op: Op) -> (Job, oneshot::Receiver<Result<(Done, u64)>>) {
        let (reply, rx) = oneshot::channel();
        (Job { op, reply }, rx)
    }

    fn take(device: &str) -> Op {
        Op::Take {
            device_id: device.to_owned(),
            now: 10,
            redeliver_before: 0,
        }
    }

    fn task_ids(d: &Done) -> Vec<i64> {
        match d {
            Done::Taken(rows) => {
                let mut ids: Vec<i64> = rows.iter().map(|r| r.get("task_id")).collect();
                ids.sort_unstable();
                ids
            }
            Done::Updated(_) => panic!("not a take"),
        }
    }

    /// One batch, one statement for its takes and one for its results: each device gets its
    /// own rows, a device taken twice gets them once (the first take), a device with nothing
    /// gets nothing; each result changes its own row, a second copy changes nothing.
    #[tokio::test]
    async fn a_batch_gives_each_take_and_result_its_own_outcome_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).await.unwrap();
        store
            .import_devices(&crate::sqlite::bare_fleet(&["a", "b", "idle"]))
            .await
            .unwrap();
        let task = |target: &str| crate::sqlite::true_task(target, 1);
        let both = i64::try_from(
            store
                .create_task(&task("all"), &["a".into(), "b".into()])
                .await
                .unwrap(),
        )
        .unwrap();
        let only_b = i64::try_from(
            store
                .create_task(&task("device:b"), &["b".into()])
                .await
                .unwrap(),
        )
        .unwrap();
        let (jobs, _rx): (Vec<Job>, Vec<_>) = [take("a"), take("b"), take("a"), take("idle")]
            .into_iter()
            .map(job)
            .unzip();
        let (done, _) = together(store.writer(), &jobs).await.unwrap();
        let got: Vec<Vec<i64>> = done.iter().map(task_ids).collect();
        assert_eq!(got, vec![vec![both], vec![both, only_b], vec![], vec![]]);
        assert!(!store.has_pending_tasks("a").await.unwrap());
        assert!(!store.has_pending_tasks("b").await.unwrap());

        // One batch, one statement for its results: each changes its own row, a second copy
        // changes nothing (the first is kept), a result for a task never given changes nothing.
        let result =
            |device: &str, task_id: i64, output: &str, exit_code: Option<i32>| Op::Result {
                device_id: device.to_owned(),
                task_id,
                result: Box::new(TaskResult {
                    task_id: u64::try_from(task_id).unwrap(),
                    outcome: if exit_code == Some(0) {
                        steward_proto::TaskOutcome::Succeeded
                    } else {
                        steward_proto::TaskOutcome::Failed
                    },
                    exit_code,
                    output: output.to_owned(),
                    truncated: exit_code.is_none(),
                    started_at: "2027-01-01T00:00:00Z".into(),
                    finished_at: "2027-01-01T00:00:01Z".into(),
                }),
                now: 11,
            };
        let (jobs, _rx): (Vec<Job>, Vec<_>) = [
            result("a", both, "first \"quoted\" ü", Some(0)),
            result("b", both, "", None),
            result("a", both, "second copy", Some(0)),
            result("idle", both, "never given", Some(0)),
            take("b"),
        ]
        .into_iter()
        .map(job)
        .unzip();
        let (done, _) = together(store.writer(), &jobs).await.unwrap();
        let changed: Vec<Option<u64>> = done
            .iter()
            .map(|d| match d {
                Done::Updated(n) => Some(*n),
                Done::Taken(_) => None,
            })
            .collect();
        assert_eq!(changed, vec![Some(1), Some(1), Some(0), Some(0), None]);
        let a = store.device_tasks("a", 10).await.unwrap();
        assert_eq!(a[0].output.as_deref(), Some("first \"quoted\" ü"));
        assert_eq!(a[0].exit_code, Some(0));
        let b = store.device_tasks("b", 10).await.unwrap();
        let b_both = b
            .iter()
            .find(|t| t.task_id == u64::try_from(both).unwrap())
            .unwrap();
        assert_eq!((b_both.exit_code, b_both.truncated), (None, true));
        assert_eq!(b_both.state, steward_proto::admin::TaskState::Failed);
        store.close().await;
    }
}

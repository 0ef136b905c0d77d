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

use sqlx::sqlite::{SqliteQueryResult, SqliteRow};
use sqlx::{Sqlite, SqliteConnection};
use steward_proto::TaskResult;
use tokio::sync::{mpsc, oneshot};

use crate::sqlite::{TAKE_TASKS, Writer, result_update};
use crate::{Result, StoreError};

/// The most writes committed together. Large enough that a fan-out's burst becomes a few
/// commits; small enough that a batch holds the writer connection for milliseconds, not
/// longer (other writes wait for it).
pub(crate) const MAX_BATCH: usize = 512;

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
async fn together(writer: &Writer, jobs: &[Job]) -> Result<(Vec<Done>, u64)> {
    let mut tx = writer.pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut done = Vec::with_capacity(jobs.len());
    for job in jobs {
        done.push(apply(&mut tx, &job.op).await?);
    }
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
    use sqlx::Executor;
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

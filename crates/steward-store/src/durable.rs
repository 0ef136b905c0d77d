//! The durability barrier: group commit over SQLite's write-ahead log.
//!
//! The store promises that nothing is acknowledged before it is committed, and committed means
//! on disk. `synchronous = FULL` kept that promise with one fsync of the WAL per commit, made
//! while the single writer connection waited: the server's write rate was one over the fsync
//! time. The writer now runs with `synchronous = NORMAL` and every write passes this barrier
//! after its commit and before it returns: one fsync of the WAL, made off the writer
//! connection, covers every commit that happened before it started, however many.
//!
//! # Why an fsync of the WAL file makes a NORMAL commit durable
//!
//! SQLite's documentation of `PRAGMA synchronous`
//! (<https://www.sqlite.org/pragma.html#pragma_synchronous>): "In WAL mode when synchronous is
//! NORMAL (1), the WAL file is synchronized before each checkpoint and the database file is
//! synchronized after each completed checkpoint and the WAL file header is synchronized when a
//! WAL file begins to be reused after a checkpoint" — and in WAL mode with NORMAL a commit
//! is atomic and survives a process crash, but not necessarily a power loss. The WAL page
//! (<https://www.sqlite.org/wal.html>): "Writers sync the WAL on every transaction commit if
//! PRAGMA synchronous is set to FULL but omit this sync if PRAGMA synchronous is set to
//! NORMAL". So the one thing FULL adds per commit is an fsync of the WAL after the commit's
//! frames are written, and that is what the barrier does, for many commits at once. SQLite's
//! developers give the same recipe on the forum ("Switching pragma synchronous to upgrade
//! durability", <https://sqlite.org/forum/forumpost/d1a6bc7c4cd2baca>): in WAL mode with
//! NORMAL, flushing the WAL file makes the previously committed transactions durable.
//!
//! Where a committed transaction's frames can be when the barrier runs:
//!
//! - In the `-wal` file, written with `write()` before the commit returned. An fsync through
//!   any descriptor of that file flushes them (the page cache belongs to the inode), and
//!   `fdatasync` also flushes the file size needed to read them back.
//! - Copied into the main database by a checkpoint. A checkpoint that copied every frame
//!   fsyncs the database file before it records the frames as copied (`walCheckpoint` in
//!   SQLite 3.51, the version bundled here), and only then may the WAL be reset (written again
//!   from its start, its header synced), truncated (`wal_checkpoint(TRUNCATE)`) or deleted (the
//!   last connection's close, "if the checkpoint completed and fsynced"). So frames that are no
//!   longer in the WAL are in a database file that was fsync'd after they reached it.
//!
//! Hence the barrier: open the `-wal` file fresh each time (SQLite may delete and re-create
//! it), `fdatasync` it. When it is absent or empty its frames went through a completed
//! checkpoint; the barrier then also fsyncs the database file itself, which the checkpoint
//! already did (cheap, and it does not rest the promise on that alone).
//!
//! # The directory
//!
//! On Unix SQLite opens the WAL as a new journal (`isNewJrnl`, `UNIXFILE_DIRSYNC`) and, unless
//! built with `SQLITE_DISABLE_DIRSYNC` (libsqlite3-sys does not), fsyncs the directory once
//! after the first sync of the file, so that a power loss cannot forget the file's directory
//! entry. With FULL that happens at the first commit; with NORMAL only at the first
//! checkpoint. The barrier does what FULL does: it fsyncs the directory at its first sync and
//! whenever the WAL file is a different file (device and inode) from the one whose entry it
//! last made durable.
//!
//! # What readers see
//!
//! A commit is visible as soon as it returns, a moment (one fsync) before it is durable.
//! Nothing acknowledges it in that moment: the write itself returns only after the barrier;
//! a later write that read it returns after a sync begun after its own commit, which covers
//! every earlier commit too (the WAL is one file written in order); a write transaction that
//! read it and rolled back waits for [`Durability::fence`], which covers every commit that had
//! returned. A reader on the read pool can show a commit (an admin's task list) that a power
//! loss in that moment then takes back, unacknowledged: its writer retries.
//!
//! # Coalescing and failure
//!
//! A write takes a sequence number after its commit ([`Committing::committed`]) and waits
//! ([`Durability::wait`]) until a sync that began after that number was taken has finished.
//! The first waiter to find no sync running becomes the syncer: it reads the latest sequence
//! number, syncs on a blocking thread, and publishes that number as durable; every waiter at or
//! below it returns. Writers that commit during a sync wait for the next one, which covers them
//! all. N concurrent writers therefore cost about two fsyncs per fsync-time, not N.
//!
//! A failed fsync poisons the barrier: every later write returns an error (after committing,
//! so the caller does not acknowledge it). Linux may drop the dirty pages of a failed fsync and
//! report success next time, so a later success would prove nothing; a restart replays the WAL.

use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Mutex;

use crate::{Result, StoreError};

/// A file's identity (device, inode): the WAL re-created by SQLite is another file.
#[cfg(unix)]
type FileId = (u64, u64);
#[cfg(not(unix))]
type FileId = ();

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_m: &std::fs::Metadata) -> FileId {}

/// A test's hook, run on the blocking thread at the start of every sync (before the fsync).
#[cfg(test)]
pub(crate) type SyncHook = Arc<dyn Fn() + Send + Sync>;

/// The files a sync touches.
#[derive(Debug)]
struct Files {
    /// The database file, as SQLite resolved it.
    db: PathBuf,
    /// Its write-ahead log: `db` + `-wal`.
    wal: PathBuf,
    /// The directory holding both.
    dir: PathBuf,
}

/// What the syncer remembers between syncs (kept under the sync lock).
#[derive(Debug, Default)]
struct SyncState {
    /// The WAL whose directory entry is known durable: `None` before the first sync,
    /// `Some(None)` when the WAL was absent then.
    dir_synced_for: Option<Option<FileId>>,
}

/// The group-commit barrier of one database. See the module documentation.
pub(crate) struct Durability {
    /// `None` for a database that is not a file (`:memory:`): nothing to sync.
    files: Option<Arc<Files>>,
    /// The latest sequence number handed out ([`Committing::committed`], [`Durability::fence`]).
    committed: AtomicU64,
    /// Commits begun ([`Durability::committing`]) whose sequence number is not taken yet.
    in_flight: AtomicU64,
    /// Every sequence number up to this one is durable.
    durable: AtomicU64,
    /// Held by the one sync in progress.
    sync: Mutex<SyncState>,
    /// Syncs completed (for tests and benchmarks).
    syncs: AtomicU64,
    /// An fsync failed: nothing can be promised durable any more.
    poisoned: AtomicBool,
    #[cfg(test)]
    hook: std::sync::Mutex<Option<SyncHook>>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("wal", &self.files.as_ref().map(|f| &f.wal))
            .field("committed", &self.committed)
            .field("durable", &self.durable)
            .field("syncs", &self.syncs)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// A commit in progress ([`Durability::committing`]). Dropped without
/// [`Committing::committed`] (the commit failed, or its future was dropped) it still takes a
/// sequence number: the commit may have happened.
pub(crate) struct Committing<'a> {
    durability: &'a Durability,
    done: bool,
}

impl Committing<'_> {
    /// The commit has returned: its sequence number, for [`Durability::wait`].
    pub(crate) fn committed(mut self) -> u64 {
        self.finish()
    }

    fn finish(&mut self) -> u64 {
        self.done = true;
        let seq = self.durability.next_seq();
        self.durability.in_flight.fetch_sub(1, Ordering::SeqCst);
        seq
    }
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish();
        }
    }
}

impl Durability {
    /// The barrier of the database at `db`, the path SQLite resolved (`PRAGMA database_list`;
    /// empty for an in-memory database).
    pub(crate) fn new(db: PathBuf) -> Self {
        let files = (!db.as_os_str().is_empty()).then(|| {
            let mut wal = db.clone().into_os_string();
            wal.push("-wal");
            let dir = match db.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            Arc::new(Files {
                db,
                wal: wal.into(),
                dir,
            })
        });
        Self {
            files,
            committed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            syncs: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            #[cfg(test)]
            hook: std::sync::Mutex::new(None),
        }
    }

    /// Notes a commit about to be made; call before the statement that commits, and
    /// [`Committing::committed`] once it has returned.
    pub(crate) fn committing(&self) -> Committing<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Committing {
            durability: self,
            done: false,
        }
    }

    /// A fresh sequence number: a sync that starts after this call covers every commit that
    /// returned before it.
    fn next_seq(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The sequence number to wait for so that every commit that has returned is durable, for
    /// a transaction that rolled back after reading them. When no commit is between its
    /// statement and its sequence number, that is the latest number (and waiting costs nothing
    /// when it is durable already); otherwise a fresh one.
    pub(crate) fn fence(&self) -> u64 {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.committed.load(Ordering::SeqCst)
        } else {
            self.next_seq()
        }
    }

    /// Commits noted so far (each [`Committing`] takes one number): tests count commits.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Fsyncs completed so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn set_hook(&self, hook: Option<SyncHook>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn check_poisoned(&self, files: &Files) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Database(format!(
                "an earlier fsync of {} failed: the store can no longer make commits durable \
                 and must be restarted",
                files.wal.display()
            )));
        }
        Ok(())
    }

    /// Returns once the commit numbered `seq` is on disk: a sync that started after `seq` was
    /// taken has completed.
    pub(crate) async fn wait(&self, seq: u64) -> Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        loop {
            if self.durable.load(Ordering::SeqCst) >= seq {
                return Ok(());
            }
            self.check_poisoned(files)?;
            let mut state = self.sync.lock().await;
            // The sync that held the lock may have covered this commit.
            if self.durable.load(Ordering::SeqCst) >= seq {
                return Ok(());
            }
            self.check_poisoned(files)?;
            // Every commit numbered up to `target` returned before this point, so its frames
            // are in the WAL (or checkpointed) before the fsync below starts.
            let target = self.committed.load(Ordering::SeqCst);
            let task_files = files.clone();
            let dir_synced_for = state.dir_synced_for;
            #[cfg(test)]
            let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let synced = tokio::task::spawn_blocking(move || {
                #[cfg(test)]
                if let Some(hook) = hook {
                    hook();
                }
                sync_files(&task_files, dir_synced_for)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            match synced {
                Ok(wal) => {
                    state.dir_synced_for = Some(wal);
                    self.syncs.fetch_add(1, Ordering::SeqCst);
                    self.durable.fetch_max(target, Ordering::SeqCst);
                }
                Err(e) => {
                    self.poisoned.store(true, Ordering::SeqCst);
                    tracing::error!(
                        wal = %files.wal.display(),
                        error = %e,
                        "fsync of the database's write-ahead log failed; writes are refused \
                         until the server is restarted"
                    );
                    return Err(StoreError::Database(format!(
                        "cannot make the commit durable: fsync of {}: {e}",
                        files.wal.display()
                    )));
                }
            }
        }
    }
}

/// One sync: the WAL's data, the directory when the WAL is a file whose entry was not made
/// durable yet, the database file when the WAL is absent or empty. Returns the WAL's identity
/// (`None`: absent).
fn sync_files(files: &Files, dir_synced_for: Option<Option<FileId>>) -> io::Result<Option<FileId>> {
    let wal = match OpenOptions::new().read(true).write(true).open(&files.wal) {
        Ok(f) => {
            f.sync_data()?;
            let meta = f.metadata()?;
            if meta.len() == 0 {
                sync_db(files)?;
            }
            Some(file_id(&meta))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            sync_db(files)?;
            None
        }
        Err(e) => return Err(e),
    };
    if dir_synced_for != Some(wal) {
        sync_dir(files)?;
    }
    Ok(wal)
}

/// The main database file: where a checkpoint put the frames of an absent or empty WAL.
fn sync_db(files: &Files) -> io::Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files.db)?
        .sync_data()
}

/// The directory's entries (SQLite's `UNIXFILE_DIRSYNC`). Like SQLite, a directory that cannot
/// be opened is not an error.
/// Nor is a failed fsync of it: SQLite ignores that too (some systems cannot sync a directory).
#[cfg(unix)]
fn sync_dir(files: &Files) -> io::Result<()> {
    if let Ok(d) = std::fs::File::open(&files.dir)
        && let Err(e) = d.sync_all()
    {
        tracing::debug!(dir = %files.dir.display(), error = %e, "directory fsync failed");
    }
    Ok(())
}

/// Windows has no directory fsync; NTFS journals its metadata.
#[cfg(not(unix))]
fn sync_dir(_files: &Files) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a WAL the barrier syncs the database file; a new WAL gets a directory sync.
    #[tokio::test]
    async fn absent_then_created_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.db");
        std::fs::write(&db, b"x").unwrap();
        let files = Files {
            db: db.clone(),
            wal: dir.path().join("d.db-wal"),
            dir: dir.path().to_owned(),
        };
        assert_eq!(sync_files(&files, None).unwrap(), None);
        std::fs::write(&files.wal, b"frames").unwrap();
        let id = sync_files(&files, Some(None)).unwrap();
        assert!(id.is_some());

        let d = Durability::new(db);
        for _ in 0..3 {
            let seq = d.committing().committed();
            d.wait(seq).await.unwrap();
        }
        assert_eq!(d.syncs(), 3);
        // Nothing committed since: no sync needed.
        d.wait(d.fence()).await.unwrap();
        assert_eq!(d.syncs(), 3);
        // A commit between its statement and its number: the fence waits for a new sync.
        let committing = d.committing();
        d.wait(d.fence()).await.unwrap();
        assert_eq!(d.syncs(), 4);
        d.wait(committing.committed()).await.unwrap();
        assert_eq!(d.syncs(), 5);
    }

    /// A failed fsync poisons the barrier: that write and every later one fail.
    #[tokio::test]
    async fn a_failed_sync_refuses_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        // Neither the WAL nor the database exists: the database's sync fails.
        let d = Durability::new(dir.path().join("missing.db"));
        let seq = d.committing().committed();
        assert!(d.wait(seq).await.is_err());
        let seq = d.committing().committed();
        let e = d.wait(seq).await.unwrap_err();
        assert!(e.to_string().contains("restarted"), "{e}");
        assert_eq!(d.syncs(), 0);
    }
}

//! The data directory: everything the agent keeps, each file replaced atomically.
//!
//! ```text
//! DIR/agent.key        private key, PKCS#8 PEM, mode 0600; made here, never sent anywhere
//! DIR/identity.json    device ID, client certificate and chain, enrollment profile
//! DIR/config.json      the last configuration applied (profile, settings, policies)
//! DIR/state.json       what `status` shows: server, path, last check-in, last error, inventory hash
//! DIR/executed.json    tasks started, and whether each finished (at-most-once execution)
//! DIR/outbox/<id>.json one finished task result each, until the server acknowledges it
//! DIR/logs/agent.log   link to today's agent.YYYY-MM-DD.log
//! DIR/.lock            flock held by the one `run` or `enroll` using the directory
//! ```
//!
//! Every write is write-temp, fsync, rename, fsync-directory: a crash (kill -9, power loss)
//! leaves either the old file or the new one, never a torn one. Temporary files start with `.`
//! and end in `.tmp`; readers never look at them and `open` sweeps leftovers away.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use steward_proto::{
    AgentConfig, AgentError, CommunicationProfile, ConnectionPath, FailedAttempt, TaskResult,
};

/// A file of the data directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file exists but does not hold what the agent wrote there (edited by hand, or the disk
    /// corrupted it).
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value could not be encoded (never expected; reported rather than unwrapped).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being written.
        what: String,
        /// The encoder's message.
        reason: String,
    },
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Files a reader may ever open are small; this bounds a corrupt or hostile one.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Mode of files that may hold secrets or task output.
pub const PRIVATE: u32 = 0o600;
/// Mode of files anyone on the host may read (`status` by a non-root administrator).
pub const PUBLIC: u32 = 0o644;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replace `path` with `bytes` atomically and durably, creating it with `mode` (Unix).
///
/// The temporary file is created with `mode` from the start (never wider, even for an
/// instant), synced, renamed over `path`, and the directory is synced so the rename itself
/// survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = parent_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = create_with_mode(&tmp, mode).map_err(|e| io_err(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn create_with_mode(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

#[cfg(not(unix))]
fn create_with_mode(path: &Path, _mode: u32) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// fsync a directory so renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Serialize `value` as pretty JSON and write it atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Encode {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

/// Read a whole file, bounded; `None` when it does not exist.
pub fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let mut out = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(f, MAX_FILE_BYTES + 1), &mut out)
        .map_err(|e| io_err(path, e))?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            reason: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(Some(out))
}

/// Read a JSON file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match read_bytes(path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
    }
}

/// Remove leftover temporary files (from a crash mid-write) in `dir`.
pub fn sweep_temps(dir: &Path) -> Result<usize, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The agent's data directory and the names of its files.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (nothing is created until [`DataDir::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Create the directory tree. The outbox is private: task output may be sensitive.
    pub fn create(&self) -> Result<(), StoreError> {
        for (dir, mode) in [
            (self.root.clone(), 0o755),
            (self.outbox_dir(), 0o700),
            (self.logs_dir(), 0o755),
        ] {
            fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err(&dir, e))?;
            }
            #[cfg(not(unix))]
            let _ = mode;
        }
        Ok(())
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `agent.key`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("agent.key")
    }
    /// `identity.json`.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }
    /// `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// `state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// `executed.json`.
    pub fn executed_path(&self) -> PathBuf {
        self.root.join("executed.json")
    }
    /// `outbox/`.
    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }
    /// `logs/`.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Where a new key waits while enrollment is in flight.
    pub fn pending_key_path(&self) -> PathBuf {
        self.root.join("agent.key.pending")
    }
    /// Where a new identity waits between the two renames that commit an enrollment.
    pub fn pending_identity_path(&self) -> PathBuf {
        self.root.join("identity.json.pending")
    }

    /// Whether this directory holds an identity.
    pub fn is_enrolled(&self) -> bool {
        self.identity_path().exists() || self.pending_identity_path().exists()
    }

    /// Load the identity, first finishing an enrollment whose commit was interrupted between
    /// its two renames (key renamed, identity not yet): see [`crate::enroll`].
    pub fn load_identity(&self) -> Result<Option<Identity>, StoreError> {
        let pending = self.pending_identity_path();
        if pending.exists() && !self.pending_key_path().exists() {
            fs::rename(&pending, self.identity_path()).map_err(|e| io_err(&pending, e))?;
            sync_dir(&self.root)?;
        }
        read_json(&self.identity_path())
    }

    /// The stored configuration, if any.
    pub fn load_config(&self) -> Result<Option<AgentConfig>, StoreError> {
        read_json(&self.config_path())
    }

    /// Replace the stored configuration.
    pub fn store_config(&self, config: &AgentConfig) -> Result<(), StoreError> {
        write_json(&self.config_path(), config, PUBLIC)
    }

    /// The state file; a missing file is a fresh state.
    pub fn load_state(&self) -> Result<AgentState, StoreError> {
        Ok(read_json(&self.state_path())?.unwrap_or_default())
    }

    /// Replace the state file.
    pub fn store_state(&self, state: &AgentState) -> Result<(), StoreError> {
        write_json(&self.state_path(), state, PUBLIC)
    }
}

/// An exclusive hold on a data directory: one `run` or `enroll` at a time, since two agents
/// sharing an outbox and an executed-task set would break both their guarantees. Released when
/// dropped (or when the process dies: it is an advisory `flock`).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DataDir {
    /// Take the directory's lock, or say that another process holds it.
    pub fn lock(&self) -> Result<DirLock, StoreError> {
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        #[cfg(unix)]
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| StoreError::Io {
                path: path.display().to_string(),
                source: if e == rustix::io::Errno::WOULDBLOCK {
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "another steward-agent process is using this data directory",
                    )
                } else {
                    io::Error::from(e)
                },
            },
        )?;
        Ok(DirLock { _file: file })
    }
}

/// Who the agent is: stored once by `enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Device ID (the certificate's CN).
    pub device_id: String,
    /// Client certificate (PEM).
    pub cert_pem: String,
    /// Issuing chain above it (PEM), presented with it.
    pub chain_pem: Vec<String>,
    /// The profile as of enrollment; superseded by `config.json` once a configuration arrives.
    pub profile: CommunicationProfile,
    /// When enrollment completed (RFC 3339).
    pub enrolled_at: String,
    /// The server that enrolled it (`https://host:port`).
    pub enrolled_via: String,
}

/// What `run` records for `status` and for itself across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// The device ID, as the server last confirmed it.
    pub device_id: Option<String>,
    /// Base URL of the server of the last successful check-in.
    pub server: Option<String>,
    /// How the last successful check-in reached the server.
    pub connection: Option<ConnectionPath>,
    /// Last successful check-in (RFC 3339).
    pub last_checkin_at: Option<String>,
    /// Last check-in attempt, successful or not (RFC 3339).
    pub last_attempt_at: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The most recent fault (kept after recovery, for `status`).
    pub last_error: Option<AgentError>,
    /// The fault to report with the next successful check-in.
    pub pending_error: Option<AgentError>,
    /// Version of the configuration in force.
    pub config_version: u64,
    /// Hash of the last inventory the server accepted.
    pub inventory_hash: Option<String>,
    /// When that inventory was sent (RFC 3339).
    pub inventory_sent_at: Option<String>,
    /// When the agent last warned that its certificate expires soon (RFC 3339).
    pub cert_warned_at: Option<String>,
    /// Every way to the server that failed since the last check-in the server answered 200,
    /// one entry per address and kind (see [`crate::agent`]); sent with the next check-in.
    pub failed_attempts: Vec<FailedAttempt>,
    /// Process ID of the `run` that wrote this file.
    pub pid: Option<u32>,
    /// When this file was written (RFC 3339).
    pub updated_at: Option<String>,
}

/// Task results waiting for the server's acknowledgement, one file per task.
///
/// A result is written here before anything else happens with it, and deleted only when its
/// task ID comes back in `acked_results`. The server stores the first copy of a result and
/// acknowledges every copy, so sending one again after a crash is harmless, while deleting one
/// early would lose it: hence delete-on-ack only.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

/// A file in the outbox that could not be read; it is moved aside (`.corrupt`) so it cannot
/// block the queue, and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The file's new name.
    pub path: String,
    /// Why it could not be read.
    pub reason: String,
}

impl Outbox {
    /// Open (creating) the outbox in `dir` and sweep temporaries a crash left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        sweep_temps(&dir)?;
        Ok(Self { dir })
    }

    /// How many results wait in the outbox at `dir`, without touching anything (for `status`).
    pub fn count_waiting(dir: &Path) -> usize {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_suffix(".json")
                            .is_some_and(|stem| stem.parse::<u64>().is_ok())
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn path_of(&self, task_id: u64) -> PathBuf {
        self.dir.join(format!("{task_id}.json"))
    }

    /// Store a result durably. Returns `false` (and keeps the stored one) when a result for
    /// this task is already waiting: the first result of a task is the one that counts.
    pub fn put(&self, result: &TaskResult) -> Result<bool, StoreError> {
        let path = self.path_of(result.task_id);
        if path.exists() {
            return Ok(false);
        }
        write_json(&path, result, PRIVATE)?;
        Ok(true)
    }

    /// Whether a result for `task_id` is waiting.
    pub fn contains(&self, task_id: u64) -> bool {
        self.path_of(task_id).exists()
    }

    /// Every waiting result, oldest first (by finish time, then task ID). Unreadable files are
    /// moved aside and returned as [`Quarantined`].
    pub fn load(&self) -> Result<(Vec<TaskResult>, Vec<Quarantined>), StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let mut results = Vec::new();
        let mut bad = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(task_id) = stem.parse::<u64>() else {
                continue;
            };
            let path = entry.path();
            let problem = match read_json::<TaskResult>(&path) {
                Ok(Some(r)) if r.task_id == task_id => {
                    results.push(r);
                    continue;
                }
                Ok(Some(r)) => format!("holds the result of task {}", r.task_id),
                Ok(None) => continue,
                Err(e) => e.to_string(),
            };
            let aside = self.dir.join(format!("{name}.corrupt"));
            fs::rename(&path, &aside).map_err(|e| io_err(&path, e))?;
            bad.push(Quarantined {
                path: aside.display().to_string(),
                reason: problem,
            });
        }
        results.sort_by(|a, b| {
            (a.finished_at.as_str(), a.task_id).cmp(&(b.finished_at.as_str(), b.task_id))
        });
        Ok((results, bad))
    }

    /// Delete the results the server acknowledged; returns the IDs actually removed.
    pub fn ack(&self, task_ids: &[u64]) -> Result<Vec<u64>, StoreError> {
        let mut removed = Vec::new();
        for &id in task_ids {
            let path = self.path_of(id);
            match fs::remove_file(&path) {
                Ok(()) => removed.push(id),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Task IDs this agent has started, and whether each one's result was recorded: a task
/// started and never finished was interrupted by a crash, and is reported as such at the next
/// start instead of being run again (see [`crate::agent`] for the at-most-once decision).
/// Bounded: only recent tasks can still matter.
#[derive(Debug, Clone)]
pub struct ExecutedSet {
    path: PathBuf,
    order: VecDeque<u64>,
    finished: BTreeMap<u64, bool>,
}

/// How many task IDs [`ExecutedSet`] remembers.
pub const EXECUTED_CAPACITY: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct ExecutedEntry {
    task_id: u64,
    #[serde(default)]
    finished: bool,
}

impl ExecutedSet {
    /// Load the set from `path` (empty when missing).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let list: Vec<ExecutedEntry> = read_json(&path)?.unwrap_or_default();
        let mut set = Self {
            path,
            order: VecDeque::new(),
            finished: BTreeMap::new(),
        };
        for e in list {
            set.push(e.task_id, e.finished);
        }
        Ok(set)
    }

    fn push(&mut self, id: u64, finished: bool) {
        if self.finished.insert(id, finished).is_none() {
            self.order.push_back(id);
            while self.order.len() > EXECUTED_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.finished.remove(&old);
                }
            }
        }
    }

    fn persist(&self) -> Result<(), StoreError> {
        let list: Vec<ExecutedEntry> = self
            .order
            .iter()
            .map(|&task_id| ExecutedEntry {
                task_id,
                finished: self.finished.get(&task_id).copied().unwrap_or(false),
            })
            .collect();
        write_json(&self.path, &list, PUBLIC)
    }

    /// Whether `id` was started before.
    pub fn contains(&self, id: u64) -> bool {
        self.finished.contains_key(&id)
    }

    /// Whether `id` was started and its result recorded.
    pub fn is_finished(&self, id: u64) -> bool {
        self.finished.get(&id).copied().unwrap_or(false)
    }

    /// Record that `id` is starting, durably; returns once it is on disk.
    pub fn record(&mut self, id: u64) -> Result<(), StoreError> {
        self.push(id, false);
        self.persist()
    }

    /// Record that `id`'s result is in the outbox.
    pub fn finish(&mut self, id: u64) -> Result<(), StoreError> {
        self.push(id, true);
        self.finished.insert(id, true);
        self.persist()
    }

    /// Tasks started and never finished, oldest first.
    pub fn unfinished(&self) -> Vec<u64> {
        self.order
            .iter()
            .copied()
            .filter(|id| !self.is_finished(*id))
            .collect()
    }

    /// Number of IDs remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no ID is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

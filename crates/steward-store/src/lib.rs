//! Steward's storage: the [`Store`] trait the server is written against, and [`SqliteStore`],
//! the embedded default. A PostgreSQL implementation can follow behind the same trait.
//!
//! Architecture invariants:
//! - Nothing is acknowledged before it is committed: every method that changes state returns
//!   only after its transaction committed, so a caller that answers a client afterwards never
//!   acknowledges something a crash (kill -9, power loss) could take back.
//! - The check-in of an unchanged agent writes nothing: last-seen times are kept in memory
//!   ([`Store::note_seen`]) and written in one batched transaction ([`Store::flush_seen`]) every
//!   few seconds and at shutdown. Reads merge the unflushed values in. SQLite keeps them in a
//!   narrow table of their own, written in key order, so a flush dirties few pages.
//! - Every read a check-in makes is an index probe (tested with EXPLAIN QUERY PLAN): its cost
//!   does not grow with the number of devices.
//! - The SQLite store is its database's only writer while it runs (the server holds
//!   `run/server.lock`): it keeps devices and their "no task" facts in memory ([`cache`]),
//!   and every write that changes them tells the cache when it ends, even one whose caller
//!   stopped waiting. An unchanged agent's check-in and long-poll then read nothing.
//! - Times are Unix seconds (UTC); the server formats them for the wire.
#![forbid(unsafe_code)]

mod cache;
mod combine;
mod durable;
mod seen;
mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use steward_proto::admin::{DeviceTaskState, TaskState};
use steward_proto::{
    AgentError, FailedAttempt, GatewayReport, Inventory, TaskAssignment, TaskResult,
};

pub use seen::{Seen, SeenBatch, SeenBuffer};
pub use sqlite::SqliteStore;

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created (path, permissions, not a database).
    #[error("cannot open the database {path}: {reason}")]
    Open {
        /// The database file.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// Applying the embedded schema migrations failed (for example a database written by a
    /// newer Steward, or a modified migration).
    #[error("cannot migrate the database schema: {0}")]
    Migrate(String),
    /// A query failed (disk full, I/O error, database locked for longer than the busy timeout).
    #[error("database error: {0}")]
    Database(String),
    /// A stored value does not decode (a JSON column edited by hand, an out-of-range number).
    #[error("corrupt stored value in {what}: {reason}")]
    Corrupt {
        /// Table and column.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An insert collided with an existing row (an admin of that name already exists).
    #[error("{0} already exists")]
    Exists(String),
    /// The store's writer task has stopped (the runtime is shutting down): the write was not
    /// made, or its outcome is unknown.
    #[error("the database writer has stopped")]
    Closed,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Result type of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A device as stored, with unflushed last-seen values merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// UUID; also the client certificate's CN.
    pub id: String,
    /// Host name (from enrollment, then from the inventory).
    pub name: String,
    /// Serial of its current client certificate (upper-case hex).
    pub cert_serial: String,
    /// SHA-256 of its current client certificate (upper-case hex).
    pub cert_sha256: String,
    /// Tags (targets of policies and tasks).
    pub tags: Vec<String>,
    /// Enrollment time.
    pub created_at: i64,
    /// Last check-in or long-poll.
    pub last_seen: Option<i64>,
    /// How it connected last (`lan via host:port`).
    pub connection_path: Option<String>,
    /// The last fault it reported.
    pub last_error: Option<AgentError>,
    /// The configuration version the agent last said it holds.
    pub config_version_acked: u64,
    /// The communication-profile version the agent last said it holds (at enrollment: the
    /// version it was given). Gateways' port changes wait for it.
    pub profile_version_acked: u64,
    /// The ways to the server that failed, as the agent last reported them.
    pub failed_attempts: Vec<FailedAttempt>,
    /// When that report arrived (server time).
    pub failed_attempts_at: Option<i64>,
    /// `OS name version` from the inventory.
    pub os: Option<String>,
    /// Hash of the stored inventory (as the agent computed it).
    pub inventory_hash: Option<String>,
    /// When the stored inventory arrived.
    pub inventory_at: Option<i64>,
    /// Revoked devices are refused on every route.
    pub revoked: bool,
    /// When its current client certificate expires (`None` for devices enrolled before the
    /// server recorded it).
    pub cert_not_after: Option<i64>,
    /// SHA-256 of a renewed certificate issued but not yet used: accepted alongside the
    /// current one until the agent's first request with it promotes it.
    pub next_cert_sha256: Option<String>,
}

/// A client certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    /// Serial (upper-case hex).
    pub serial: String,
    /// SHA-256 (upper-case hex).
    pub sha256: String,
    /// Expiry.
    pub not_after: i64,
}

/// A device to insert at enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// UUID.
    pub id: String,
    /// Host name.
    pub name: String,
    /// Serial of the issued client certificate (upper-case hex).
    pub cert_serial: String,
    /// SHA-256 of the issued client certificate (upper-case hex).
    pub cert_sha256: String,
    /// Tags (from the enrollment token).
    pub tags: Vec<String>,
    /// Enrollment time.
    pub created_at: i64,
    /// The communication-profile version handed out with its certificate.
    pub profile_version: u64,
    /// When the issued client certificate expires.
    pub cert_not_after: Option<i64>,
}

/// A device with the state its enrollment and check-ins would have left, for bulk loading with
/// [`SqliteStore::import_devices`] (a fleet moved from another server; a benchmark's fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedDevice {
    /// Identity, name, certificate and tags, as at enrollment.
    pub device: NewDevice,
    /// The configuration version the agent holds.
    pub config_version_acked: u64,
    /// The communication-profile version the agent holds.
    pub profile_version_acked: u64,
    /// Its inventory and the agent's hash of it, when it sent one.
    pub inventory: Option<(Inventory, String)>,
    /// When the inventory arrived.
    pub inventory_at: Option<i64>,
    /// Last check-in.
    pub last_seen: Option<i64>,
    /// How it connected last.
    pub connection_path: Option<String>,
}

/// An enrollment token to store. Only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentToken {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Expiry.
    pub expires_at: i64,
    /// How many enrollments it allows.
    pub max_uses: u32,
    /// Tags given to devices enrolled with it.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: i64,
    /// The admin who made it.
    pub created_by: String,
}

/// What an enrollment token allows, judged against "now".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Usable (for [`Store::enroll_device`]: consumed, and the device inserted).
    Usable {
        /// Tags for the device.
        tags: Vec<String>,
    },
    /// No such token: forged, mistyped, or from another server.
    Unknown,
    /// Past its expiry.
    Expired {
        /// When it expired.
        expires_at: i64,
    },
    /// Every use is spent.
    Exhausted {
        /// How many uses it had.
        max_uses: u32,
    },
}

/// A gateway to insert when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGateway {
    /// UUID; also its client certificate's CN.
    pub id: String,
    /// Serial of its client (identity) certificate (upper-case hex).
    pub cert_serial: String,
    /// SHA-256 of its client certificate (upper-case hex).
    pub cert_sha256: String,
    /// Join time.
    pub created_at: i64,
}

/// A gateway as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    /// UUID; also its client certificate's CN.
    pub id: String,
    /// Serial of its client certificate (upper-case hex).
    pub cert_serial: String,
    /// SHA-256 of its client certificate (upper-case hex).
    pub cert_sha256: String,
    /// A revoked gateway is refused, and so is every agent identity it vouches for.
    pub revoked: bool,
    /// What it last said about itself.
    pub report: Option<GatewayReport>,
    /// When.
    pub reported_at: Option<i64>,
    /// The profile version at which its current profile entry (host, port, thumbprints,
    /// anchors) first appeared; 0 before it had one. Agents that hold an older profile do
    /// not know the entry yet.
    pub entry_since_version: u64,
}

/// Which of a gateway's two platform-issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayCertRole {
    /// gateway→server client certificate (CN = gateway ID).
    Identity,
    /// The certificate agents see at the gateway's edge.
    Server,
}

impl GatewayCertRole {
    /// The stored (and shown) name: `identity` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Server => "server",
        }
    }
}

/// A platform-issued gateway certificate as recorded (migration 0006).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCert {
    /// Serial (upper-case hex).
    pub serial: String,
    /// SHA-256 of the certificate (hex).
    pub sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo (hex): a renewal must bring a different key.
    pub spki_sha256: String,
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

/// A gateway's recorded certificates: per role the one in use and a renewed one not in use
/// yet. Empty for gateways joined before migration 0006 until their first renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayCerts {
    /// The external names it joined with (`None` for gateways joined before 0006).
    pub external_names: Option<Vec<String>>,
    /// Identity in use (its serial and SHA-256 are also `GatewayRecord`'s).
    pub identity: Option<GatewayCert>,
    /// Renewed identity, accepted until its first use promotes it.
    pub next_identity: Option<GatewayCert>,
    /// Server certificate in use (as last confirmed by a report).
    pub server: Option<GatewayCert>,
    /// Renewed server certificate, staged on the gateway until every agent has it.
    pub next_server: Option<GatewayCert>,
}

/// Active devices that do not hold a given profile version yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileLag {
    /// `(id, name)` of the first of them by name, up to the limit asked for.
    pub devices: Vec<(String, String)>,
    /// How many there are.
    pub total: u64,
}

/// One device's latest report of failed ways to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFailures {
    /// Device ID.
    pub id: String,
    /// Device name.
    pub name: String,
    /// What failed.
    pub attempts: Vec<FailedAttempt>,
    /// When the report arrived (server time).
    pub at: i64,
    /// How the device connected last (`gateway ID via host:port`, `lan via host:port`).
    pub connection_path: Option<String>,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTaskRecord {
    /// Program.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Seconds before the agent kills it.
    pub timeout_secs: u64,
    /// Target expression as given.
    pub target: String,
    /// Creation time.
    pub created_at: i64,
    /// The admin who started it.
    pub created_by: String,
}

/// A stored task with its progress counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Task ID.
    pub id: u64,
    /// Program.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Seconds before the agent kills it.
    pub timeout_secs: u64,
    /// Target expression.
    pub target: String,
    /// Creation time.
    pub created_at: i64,
    /// The admin who started it.
    pub created_by: String,
    /// Devices targeted.
    pub targets: usize,
    /// Devices in a final state.
    pub finished: usize,
}

/// A stored policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Unique name.
    pub name: String,
    /// `all` or `tag:NAME`.
    pub target: String,
    /// Settings.
    pub values: BTreeMap<String, String>,
    /// Last change.
    pub updated_at: i64,
}

/// A local admin account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Account name.
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Failed logins since the last success or lock.
    pub failed_logins: u32,
    /// Locked until then, when locked.
    pub locked_until: Option<i64>,
}

/// The storage the server is written against. Every state change is committed before the
/// method returns.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    // ---- settings ---------------------------------------------------------------------------

    /// A server setting (profile version, CRL number, ...).
    async fn setting(&self, key: &str) -> Result<Option<String>>;
    /// Sets a server setting.
    async fn set_setting(&self, key: &str, value: &str) -> Result<()>;
    /// Increments the integer setting `key` (absent counts as 0) and returns the new value,
    /// atomically.
    async fn next_counter(&self, key: &str) -> Result<u64>;

    // ---- enrollment -------------------------------------------------------------------------

    /// Stores a new enrollment token (by hash).
    async fn create_enrollment_token(&self, token: &NewEnrollmentToken) -> Result<()>;
    /// Says whether a token would be accepted now, without consuming it.
    async fn check_enrollment_token(&self, token_hash: &str, now: i64) -> Result<TokenCheck>;
    /// Consumes one use of the token and inserts the device, in one transaction. The use is
    /// taken by a single conditional `UPDATE` (unexpired and uses left), so concurrent
    /// enrollments can never exceed `max_uses`. Returns what the token allowed; the device is
    /// inserted only when that is [`TokenCheck::Usable`], with the token's tags added to its
    /// own; the returned tags are the device's.
    async fn enroll_device(
        &self,
        token_hash: &str,
        now: i64,
        device: &NewDevice,
    ) -> Result<TokenCheck>;

    // ---- gateways ---------------------------------------------------------------------------

    /// Stores a single-use gateway join token (kind `gateway`; never usable for enrollment).
    async fn create_gateway_token(&self, token: &NewEnrollmentToken) -> Result<()>;
    /// Judges a gateway join token without consuming it.
    async fn check_gateway_token(&self, token_hash: &str, now: i64) -> Result<TokenCheck>;
    /// Consumes one use of a gateway token and inserts the gateway, atomically.
    async fn join_gateway(
        &self,
        token_hash: &str,
        now: i64,
        gateway: &NewGateway,
    ) -> Result<TokenCheck>;
    /// A gateway by ID.
    async fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>>;
    /// Every gateway, by ID.
    async fn gateways(&self) -> Result<Vec<GatewayRecord>>;
    /// Replaces a gateway's latest report.
    async fn save_gateway_report(&self, id: &str, report: &GatewayReport, now: i64) -> Result<()>;
    /// Records that a gateway's current profile entry first appeared in profile `version`.
    async fn set_gateway_entry_since(&self, id: &str, version: u64) -> Result<()>;
    /// Unrevoked devices whose acknowledged profile version is below `version`: the first
    /// `limit` by name, and how many in all.
    async fn devices_behind_profile(&self, version: u64, limit: u32) -> Result<ProfileLag>;
    /// Unrevoked devices whose latest failed-attempts report arrived at or after `since`.
    async fn failures_since(&self, since: i64) -> Result<Vec<DeviceFailures>>;
    /// Revokes a gateway; `false` when there was no such unrevoked gateway.
    async fn revoke_gateway(&self, id: &str, now: i64) -> Result<bool>;
    /// A gateway's recorded certificates and external names (migration 0006).
    async fn gateway_certs(&self, id: &str) -> Result<GatewayCerts>;
    /// Records what a join issued: the external names and both certificates in use.
    async fn record_gateway_join(
        &self,
        id: &str,
        external_names: &[String],
        identity: &GatewayCert,
        server: &GatewayCert,
        now: i64,
    ) -> Result<()>;
    /// Records a renewed certificate for an unrevoked gateway as its `next` of that role; an
    /// earlier `next` never used is revoked (superseded) in the same transaction. `false` when
    /// there is no such unrevoked gateway.
    async fn stage_gateway_cert(
        &self,
        id: &str,
        role: GatewayCertRole,
        cert: &GatewayCert,
        now: i64,
    ) -> Result<bool>;
    /// Revokes and forgets the `next` certificate of that role with this SHA-256: issued, but
    /// the gateway never took it (a crash, an import staged over it). `false` when no such
    /// certificate is staged.
    async fn drop_gateway_cert(
        &self,
        id: &str,
        role: GatewayCertRole,
        sha256: &str,
        now: i64,
    ) -> Result<bool>;
    /// Makes the `next` certificate of that role with this SHA-256 the one in use and revokes
    /// the one it replaces (for the identity, `gateways.cert_serial`/`cert_sha256` follow), in
    /// one transaction; `false` when no such certificate is staged.
    async fn promote_gateway_cert(
        &self,
        id: &str,
        role: GatewayCertRole,
        sha256: &str,
        now: i64,
    ) -> Result<bool>;
    /// Revokes a device; `false` when there was no such unrevoked device.
    async fn revoke_device(&self, id: &str, now: i64) -> Result<bool>;
    /// Deletes a device and its task rows, keeping its certificates' serials (current and a
    /// renewed one not yet confirmed) as revoked, in the same transaction; `false` when there
    /// was no such device.
    async fn delete_device(&self, id: &str, now: i64) -> Result<bool>;
    /// Records a renewed certificate for an unrevoked device, accepted alongside its current
    /// one until [`Store::promote_device_cert`]; replaces an earlier unconfirmed one (whose
    /// serial is revoked). `false` when there is no such unrevoked device.
    async fn stage_device_cert(&self, id: &str, cert: &DeviceCert, now: i64) -> Result<bool>;
    /// Makes the staged certificate with this SHA-256 the device's current one and revokes
    /// the one it replaces, in one transaction; `false` when no such certificate is staged.
    async fn promote_device_cert(&self, id: &str, sha256: &str, now: i64) -> Result<bool>;

    // ---- devices ----------------------------------------------------------------------------

    /// One device by ID.
    async fn device(&self, id: &str) -> Result<Option<Device>>;
    /// Every device, ordered by name.
    async fn devices(&self) -> Result<Vec<Device>>;
    /// Devices whose name equals `name` (ASCII case-insensitive).
    async fn devices_named(&self, name: &str) -> Result<Vec<Device>>;
    /// The IDs of the devices not revoked, all of them or those carrying `tag`: a task's
    /// targets, without reading whole device rows (a fleet of 100,000 is one narrow scan).
    async fn live_device_ids(&self, tag: Option<&str>) -> Result<Vec<String>>;
    /// A device's stored inventory.
    async fn device_inventory(&self, id: &str) -> Result<Option<Inventory>>;
    /// Stores a device's inventory and its hash; the device's name follows the host name.
    async fn save_inventory(
        &self,
        id: &str,
        inventory: &Inventory,
        hash: &str,
        now: i64,
    ) -> Result<()>;
    /// Stores the last fault a device reported.
    async fn save_last_error(&self, id: &str, error: &AgentError) -> Result<()>;
    /// Stores the configuration version a device said it holds.
    async fn save_config_acked(&self, id: &str, version: u64) -> Result<()>;
    /// Stores the communication-profile version a device said it holds.
    async fn save_profile_acked(&self, id: &str, version: u64) -> Result<()>;
    /// Replaces a device's failed-attempts report (received at `now`).
    async fn save_failed_attempts(
        &self,
        id: &str,
        attempts: &[FailedAttempt],
        now: i64,
    ) -> Result<()>;
    /// Records that a device was seen, in memory only (no write); see [`Store::flush_seen`].
    fn note_seen(&self, id: &str, seen: Seen);
    /// Writes the last-seen values noted since the last flush in one transaction; returns how
    /// many devices were written. On failure the values are kept for the next flush.
    async fn flush_seen(&self) -> Result<usize>;
    /// Serials (upper-case hex) and revocation times of revoked device and gateway identity
    /// certificates, including those of deleted devices and superseded renewals.
    async fn revoked_serials(&self) -> Result<Vec<(String, i64)>>;

    // ---- tasks ------------------------------------------------------------------------------

    /// Creates a task pending on `device_ids`; returns its ID.
    async fn create_task(&self, task: &NewTaskRecord, device_ids: &[String]) -> Result<u64>;
    /// Whether a task is pending for the device (an index probe).
    async fn has_pending_tasks(&self, device_id: &str) -> Result<bool>;
    /// Whether the device has a task without a result: pending, or delivered and still
    /// running (an index probe). Check-ins use this; long-polls wake only on pending ones.
    async fn has_open_tasks(&self, device_id: &str) -> Result<bool>;
    /// The tasks to hand out in a check-in, in one transaction: every pending task (marked
    /// running, delivered now), and every running task last delivered at or before
    /// `redeliver_before` (delivered again now). A check-in answer can be lost on the way or
    /// the agent can die before recording it; without re-delivery such a task would stay
    /// running forever. Agents never run a task twice, so sending one again is safe.
    async fn take_tasks(
        &self,
        device_id: &str,
        now: i64,
        redeliver_before: i64,
    ) -> Result<Vec<TaskAssignment>>;
    /// Stores results exactly once: a row moves to its final state only from pending or
    /// running, so a result re-sent after a lost acknowledgement changes nothing. Returns the
    /// task IDs the agent may drop from its outbox: every result now committed (first time or
    /// before) and every result for a task this device was never given (nothing could ever
    /// store it). Results for tasks of other devices are never written.
    async fn commit_results(
        &self,
        device_id: &str,
        results: &[TaskResult],
        now: i64,
    ) -> Result<Vec<u64>>;
    /// One task.
    async fn task(&self, id: u64) -> Result<Option<TaskRecord>>;
    /// Each device's state of one task, ordered by device name.
    async fn task_results(&self, id: u64) -> Result<Vec<DeviceTaskState>>;
    /// The newest tasks first, at most `limit`.
    async fn tasks(&self, limit: u32) -> Result<Vec<TaskRecord>>;
    /// The newest tasks of one device first, at most `limit`.
    async fn device_tasks(&self, device_id: &str, limit: u32) -> Result<Vec<DeviceTaskState>>;

    // ---- policies ---------------------------------------------------------------------------

    /// Every policy, ordered by name.
    async fn policies(&self) -> Result<Vec<PolicyRecord>>;
    /// Creates or replaces a policy by name.
    async fn put_policy(&self, policy: &PolicyRecord) -> Result<()>;
    /// Creates a policy unless one of that name exists; returns whether it was created.
    async fn ensure_policy(&self, policy: &PolicyRecord) -> Result<bool>;

    // ---- admins and sessions ----------------------------------------------------------------

    /// Creates an admin account; [`StoreError::Exists`] when the name is taken.
    async fn create_admin(&self, username: &str, password_hash: &str) -> Result<()>;
    /// One admin account.
    async fn admin(&self, username: &str) -> Result<Option<Admin>>;
    /// Counts a failed login; when the count reaches `max_failures` the account is locked
    /// until `now + lock_secs` and the count restarts. Returns the lock's end when it locked.
    async fn record_login_failure(
        &self,
        username: &str,
        now: i64,
        max_failures: u32,
        lock_secs: i64,
    ) -> Result<Option<i64>>;
    /// Clears the failure count and any lock after a successful login.
    async fn record_login_success(&self, username: &str) -> Result<()>;
    /// Stores a session by the hash of its token.
    async fn create_session(&self, token_hash: &str, username: &str, expires_at: i64)
    -> Result<()>;
    /// The user of an unexpired session.
    async fn session(&self, token_hash: &str, now: i64) -> Result<Option<String>>;
    /// Ends a session.
    async fn delete_session(&self, token_hash: &str) -> Result<()>;
    /// Deletes expired sessions; returns how many.
    async fn purge_expired_sessions(&self, now: i64) -> Result<u64>;
}

/// `TaskState` as stored.
pub fn state_str(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::TimedOut => "timed_out",
    }
}

/// Parses a stored `TaskState`.
pub fn parse_state(s: &str) -> Option<TaskState> {
    Some(match s {
        "pending" => TaskState::Pending,
        "running" => TaskState::Running,
        "succeeded" => TaskState::Succeeded,
        "failed" => TaskState::Failed,
        "timed_out" => TaskState::TimedOut,
        _ => return None,
    })
}

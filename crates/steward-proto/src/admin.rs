//! The admin API (JSON over HTTPS on the console listener), shared by the server, the `steward`
//! admin commands and the console. Every route but login needs `Authorization: Bearer TOKEN`
//! (or the console's session cookie); errors are [`crate::ApiError`] bodies.

use serde::{Deserialize, Serialize};

use crate::{AgentError, AppliedPolicy, BootstrapPackage, Inventory, TaskOutcome};

/// Paths of the admin API.
pub mod paths {
    /// POST [`super::LoginRequest`] → [`super::LoginResponse`].
    pub const LOGIN: &str = "/api/v1/login";
    /// GET → `Vec<`[`super::DeviceSummary`]`>`.
    pub const DEVICES: &str = "/api/v1/devices";
    /// GET `/api/v1/devices/{id-or-name}` → [`super::DeviceDetail`].
    pub const DEVICE: &str = "/api/v1/devices/{id}";
    /// GET → `Vec<`[`super::TaskSummary`]`>`; POST [`super::NewTask`] → [`super::TaskCreated`].
    pub const TASKS: &str = "/api/v1/tasks";
    /// GET `/api/v1/tasks/{id}` → [`super::TaskDetail`].
    pub const TASK: &str = "/api/v1/tasks/{id}";
    /// GET → `Vec<`[`super::Policy`]`>`; POST [`super::Policy`] creates or replaces by name.
    pub const POLICIES: &str = "/api/v1/policies";
    /// POST [`super::NewPackage`] → [`crate::BootstrapPackage`].
    pub const PACKAGES: &str = "/api/v1/enrollment-packages";
    /// POST [`super::NewGatewayToken`] → [`super::GatewayToken`].
    pub const GATEWAY_TOKENS: &str = "/api/v1/gateway-tokens";
    /// GET → `Vec<`[`super::GatewaySummary`]`>`.
    pub const GATEWAYS: &str = "/api/v1/gateways";
    /// POST `/api/v1/gateways/{id}/revoke` → 204: the gateway's identity is revoked (refused
    /// at once, and in the CRL).
    pub const GATEWAY_REVOKE: &str = "/api/v1/gateways/{id}/revoke";
    /// POST `/api/v1/devices/{id-or-name}/revoke` → 204: the device's certificate is revoked
    /// (refused at once by the server, and in the CRL gateways fetch).
    pub const DEVICE_REVOKE: &str = "/api/v1/devices/{id}/revoke";
    /// GET → the OpenAPI 3.1 document of this API.
    pub const OPENAPI: &str = "/api/v1/openapi.json";
    /// GET → `Vec<`[`super::ListenerCertStatus`]`>`: the server's listener certificates.
    pub const SERVER_CERTS: &str = "/api/v1/server/certs";
    /// POST `/api/v1/server/certs/{listener}/renew` (`agent` or `console`) →
    /// [`super::ListenerCertStatus`]: a new certificate from the platform CA, served from the
    /// next connection on.
    pub const SERVER_CERT_RENEW: &str = "/api/v1/server/certs/{listener}/renew";
    /// POST [`super::CertImport`] → [`super::ListenerCertStatus`]: stage a third-party
    /// certificate (judged by the doctor's rules; refused with the findings on any error).
    pub const SERVER_CERT_IMPORT: &str = "/api/v1/server/certs/{listener}/import";
    /// POST [`super::CertFinalize`] → [`super::CertFinalized`]: the staged certificate goes
    /// live (refused while agents have not acknowledged its root, unless forced).
    pub const SERVER_CERT_FINALIZE: &str = "/api/v1/server/certs/{listener}/finalize";
    /// POST → [`super::ListenerCertStatus`]: the staged certificate and its root are dropped.
    pub const SERVER_CERT_ROLLBACK: &str = "/api/v1/server/certs/{listener}/rollback";
    /// GET → [`super::CaRollStatus`]: the platform root, a staged roll and its distribution.
    pub const SERVER_CA_ROLL: &str = "/api/v1/server/ca/roll";
    /// POST → [`super::CaRollStatus`]: stage a new platform root (into the profile).
    pub const SERVER_CA_ROLL_STAGE: &str = "/api/v1/server/ca/roll/stage";
    /// POST [`super::CertFinalize`] → [`super::CaRollFinalized`]: the new root becomes the
    /// platform root (refused while agents have not acknowledged it, unless forced).
    pub const SERVER_CA_ROLL_FINALIZE: &str = "/api/v1/server/ca/roll/finalize";
    /// POST → [`super::CaRollStatus`]: the staged root is dropped (before finalize).
    pub const SERVER_CA_ROLL_ROLLBACK: &str = "/api/v1/server/ca/roll/rollback";
}

/// A third-party certificate to stage for a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertImport {
    /// The file (PKCS#12, PEM or DER), base64 (standard alphabet).
    pub file_base64: String,
    /// The PKCS#12 password, if any.
    #[serde(default)]
    pub password: Option<String>,
    /// The file's name, for the report.
    #[serde(default)]
    pub label: String,
}

/// Finalize a staged certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFinalize {
    /// Go live although agents have not acknowledged the new root.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a finalize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFinalized {
    /// The listener as it is now.
    pub status: ListenerCertStatus,
    /// Agents (`name (id)`) that had not acknowledged the root when a forced finalize went
    /// live: they cannot verify the new certificate until they recover.
    #[serde(default)]
    pub stranded: Vec<String>,
    /// How stranded agents recover, when there are any.
    #[serde(default)]
    pub recovery: Option<String>,
}

/// A CA certificate, briefly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertInfo {
    /// Subject DN.
    pub subject: String,
    /// SHA-256 thumbprint (upper-case hex).
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
}

/// The platform root and a root roll (`steward server ca roll`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRollStatus {
    /// `idle` (nothing staged), `staged` (distributing the new root), `overlap` (finalized;
    /// the previous root is still trusted).
    pub phase: String,
    /// The platform root now.
    pub root: CaCertInfo,
    /// The issuing CA (its certificate under the platform root).
    pub issuing: CaCertInfo,
    /// The previous root, still trusted during the overlap.
    #[serde(default)]
    pub previous_root: Option<CaCertInfo>,
    /// The staged new root and how far it has reached the agents.
    #[serde(default)]
    pub staged: Option<StagedCert>,
}

/// The answer to a root roll's finalize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRollFinalized {
    /// The roll as it is now.
    pub status: CaRollStatus,
    /// Agents (`name (id)`) that had not acknowledged the new root when a forced finalize
    /// went ahead.
    #[serde(default)]
    pub stranded: Vec<String>,
    /// How they come back, when there are any.
    #[serde(default)]
    pub recovery: Option<String>,
    /// The listener certificates re-issued and served from the next connection on.
    #[serde(default)]
    pub listeners: Vec<ListenerCertStatus>,
}

/// A staged third-party certificate and how far its root has reached the agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedCert {
    /// SHA-256 (upper-case hex) of the staged leaf.
    pub sha256: String,
    /// Its subject.
    pub subject: String,
    /// Its root's subject (in the profile since `profile_version`).
    pub root_subject: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub staged_at: String,
    /// The profile version that first carries its root.
    pub profile_version: u64,
    /// Active (unrevoked) devices that acknowledged that version or a later one.
    pub acknowledged: u64,
    /// Active devices in all.
    pub total: u64,
    /// Devices (`name (id)`) that have not, the first 50.
    pub pending: Vec<String>,
}

/// One of the server's listener certificates, as served now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerCertStatus {
    /// `agent` or `console`.
    pub listener: String,
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// SHA-256 thumbprint (upper-case hex).
    pub sha256: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whether automatic renewal is due (it runs hourly).
    #[serde(default)]
    pub renewal_due: bool,
    /// `CERT-EXPIRING-SOON: ...` within 30 days of expiry.
    #[serde(default)]
    pub warning: Option<String>,
    /// The certificate served is a third-party one (its root is in the profile).
    #[serde(default)]
    pub third_party: bool,
    /// A third-party certificate staged to replace it, and the distribution's progress.
    #[serde(default)]
    pub staged: Option<StagedCert>,
    /// Findings of the doctor's rules (after an import: the warnings worth reading).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

/// Log in with a local account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// Account name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// A bearer token for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The token.
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// Online or not, judged from the last check-in against the interval plus a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Checked in within the interval plus grace.
    Online,
    /// Not seen for longer.
    Offline,
}

/// A device in lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// Device ID.
    pub id: String,
    /// Host name.
    pub name: String,
    /// `OS name version`, when inventory arrived.
    pub os: Option<String>,
    /// Online/Offline.
    pub status: DeviceStatus,
    /// RFC 3339; `None` before the first check-in.
    pub last_checkin: Option<String>,
    /// How it connected last (`lan via smp.example.net:4726`).
    pub connection_path: Option<String>,
    /// The last fault it reported.
    pub last_error: Option<AgentError>,
    /// The ways to the server that failed, as it last reported them (which gateway, which
    /// port, why), so a blocked port is visible even while another way works.
    #[serde(default)]
    pub failed_attempts: Vec<crate::FailedAttempt>,
    /// Tags (targets for policies and tasks).
    pub tags: Vec<String>,
    /// When its client certificate expires (RFC 3339), when the server recorded it.
    #[serde(default)]
    pub cert_expires_at: Option<String>,
    /// `CERT-EXPIRING-SOON` with the date when the certificate expires within 30 days (the
    /// agent renews well before; this means renewal is not happening).
    #[serde(default)]
    pub cert_warning: Option<String>,
    /// A renewed certificate is issued and waits for the agent's first use of it.
    #[serde(default)]
    pub cert_renewal_pending: bool,
    /// The agent holds its persistent connection (a long-poll) to this server now: a task
    /// reaches it in well under a second instead of at its next check-in.
    #[serde(default)]
    pub connected: bool,
}

/// One device in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: DeviceSummary,
    /// Last inventory.
    pub inventory: Option<Inventory>,
    /// Policies that apply, with their values (agent settings first).
    pub applied_policies: Vec<AppliedPolicy>,
    /// Recent tasks on this device.
    pub tasks: Vec<DeviceTaskState>,
}

/// Where a task stands on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Not yet picked up.
    Pending,
    /// Delivered to the agent, no result yet.
    Running,
    /// Exit status 0.
    Succeeded,
    /// Failed.
    Failed,
    /// Killed at the timeout.
    TimedOut,
}

impl From<TaskOutcome> for TaskState {
    fn from(o: TaskOutcome) -> Self {
        match o {
            TaskOutcome::Succeeded => TaskState::Succeeded,
            TaskOutcome::Failed => TaskState::Failed,
            TaskOutcome::TimedOut => TaskState::TimedOut,
        }
    }
}

impl TaskState {
    /// Whether the task is over on that device.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }
}

/// A task's state and result on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTaskState {
    /// Task ID.
    pub task_id: u64,
    /// Device ID.
    pub device_id: String,
    /// Device name.
    pub device_name: String,
    /// State.
    pub state: TaskState,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Output (capped by the agent).
    pub output: Option<String>,
    /// Whether the output was cut.
    pub truncated: bool,
    /// RFC 3339, when finished.
    pub finished_at: Option<String>,
}

/// Start a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// Program (no shell).
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Seconds before the agent kills it.
    pub timeout_secs: u64,
    /// `all`, `tag:NAME` or `device:NAME-OR-ID`.
    pub target: String,
}

/// A created task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreated {
    /// Task ID.
    pub id: u64,
    /// How many devices it targets.
    pub targets: usize,
}

/// A task in lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Task ID.
    pub id: u64,
    /// Program.
    pub command: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Target expression.
    pub target: String,
    /// RFC 3339.
    pub created_at: String,
    /// Devices targeted.
    pub targets: usize,
    /// Devices finished (any final state).
    pub finished: usize,
}

/// A task with every device's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: TaskSummary,
    /// One entry per targeted device.
    pub results: Vec<DeviceTaskState>,
}

/// A named policy: key/value settings for the devices its target selects. The built-in
/// `agent-settings` policy holds the agent settings (`checkin_interval_secs`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// `all` or `tag:NAME`.
    pub target: String,
    /// Settings.
    pub values: std::collections::BTreeMap<String, String>,
}

/// Ask for an enrollment package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPackage {
    /// Seconds until the token expires.
    pub expires_secs: u64,
    /// How many agents may enroll with it.
    pub max_uses: u32,
    /// Tags given to devices enrolled with it.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The package as returned (the same document `steward package agent` writes).
pub type Package = BootstrapPackage;

/// Ask for a gateway join token (`steward gateway token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGatewayToken {
    /// Seconds until the token expires.
    pub expires_secs: u64,
}

/// A single-use gateway join token; shown only here (the server keeps its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayToken {
    /// The token.
    pub token: String,
    /// When it stops working (RFC 3339).
    pub expires_at: String,
    /// The platform's trust anchors (PEM): the joining gateway verifies the server with them,
    /// so the token file is all it needs, as a bootstrap package is for an agent.
    pub trust_anchors_pem: Vec<String>,
}

/// A gateway as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySummary {
    /// Its ID (CN of its identity certificate).
    pub id: String,
    /// Revoked gateways are refused.
    pub revoked: bool,
    /// What it last reported, if it ever did.
    pub report: Option<crate::GatewayReport>,
    /// When (RFC 3339).
    pub reported_at: Option<String>,
    /// Green or red, derived from its report, its self-probes and the agents' failures.
    #[serde(default)]
    pub status: GatewayStatus,
    /// Why it is red (empty when green): each reason with its ID and evidence.
    #[serde(default)]
    pub problems: Vec<GatewayProblem>,
    /// During a port change or certificate staging: devices that have not acknowledged the
    /// profile holding the gateway's current entry (capped), and how many.
    #[serde(default)]
    pub pending_devices: Vec<String>,
    /// See `pending_devices`.
    #[serde(default)]
    pub pending_total: u64,
    /// Its platform-issued certificates (identity, server) with expiry and the 30-day
    /// warning; empty for gateways joined before the server recorded them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<crate::GatewayCertStatus>,
    /// A server-certificate renewal or replacement in progress: "next certificate staged,
    /// N agents pending".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<String>,
}

/// A gateway's colour in the console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayStatus {
    /// Reporting, healthy, reachable at every address agents are given.
    Green,
    /// Something is wrong: see the problems.
    #[default]
    Red,
}

/// One reason a gateway is red.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayProblem {
    /// Stable ID (docs/diagnostics.md), e.g. `GATEWAY-PORT-FILTERED`.
    pub id: String,
    /// What is wrong, with the evidence (the blocked port, the agents that failed).
    pub message: String,
}

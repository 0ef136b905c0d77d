//! The service layer: everything the server does, independent of HTTP. The agent site, the
//! admin API and the console are thin adapters over [`Service`]; each refusal is an
//! [`ApiFailure`] with a stable ID that every adapter renders in its own way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use steward_pki::{CertFacts, KeySpec, LeafRequest, OffsetDateTime, Thumbprint, Usage};
use steward_proto::admin::{
    DeviceDetail, DeviceStatus, DeviceSummary, LoginRequest, LoginResponse, NewPackage, NewTask,
    Policy, TaskCreated, TaskDetail, TaskSummary,
};
use steward_proto::{
    AgentConfig, AgentSettings, AppliedPolicy, BootstrapPackage, CheckinRequest, CheckinResponse,
    CommunicationProfile, ConnectionPath, EnrollRequest, EnrollResponse, FailedAttempt,
    MAX_FAILED_ATTEMPTS, Pong, TaskResult, WakeUp,
};
use steward_store::{
    Device, NewDevice, NewEnrollmentToken, NewTaskRecord, PolicyRecord, Seen, Store, TaskRecord,
    TokenCheck,
};
use tokio::sync::Notify;

mod certs;
mod gateway;

pub use gateway::AgentCaller;
pub(crate) use gateway::{actual_path, gateway_entries, gateway_identity, stamp_version};

use crate::ApiFailure;
use crate::config::{Config, validate_settings};
use crate::password;
use crate::pki::{BACKDATE, Pki};
use crate::secret::{self, pem};

/// Name of the built-in agent-settings policy.
pub const AGENT_SETTINGS: &str = "agent-settings";
/// The keys of the agent-settings policy.
pub const AGENT_SETTINGS_KEYS: [&str; 5] = [
    "checkin_interval_secs",
    "jitter_percent",
    "long_poll_secs",
    "task_output_max_bytes",
    "persistent_connection",
];
/// A long-poll is answered this long before the agent's own deadline (`?wait=SECS`), so the
/// 204 arrives while the agent still listens and the connection is kept for the check-in.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(2);
/// Failed logins before an account is locked.
pub const MAX_FAILED_LOGINS: u32 = 5;
/// How long a lock lasts.
pub const LOCK_SECS: i64 = 300;
/// How long an admin session (bearer token) lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
/// The console's session cookie; it carries the same token as the bearer header.
pub const SESSION_COOKIE: &str = "steward_session";
/// Tasks shown on a device page.
const DEVICE_TASKS: u32 = 50;
/// Tasks listed.
const TASK_LIST: u32 = 500;
/// Longest task timeout.
const MAX_TASK_TIMEOUT: u64 = 7 * 24 * 3600;
/// Longest validity of an enrollment package.
const MAX_PACKAGE_SECS: u64 = 365 * 24 * 3600;
/// The principal of requests authenticated with the data directory's admin-token file.
pub const LOCAL_TOKEN_USER: &str = "admin-token";

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(t: i64) -> String {
    steward_pki::rfc3339(
        OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

/// An authenticated admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUser {
    /// Account name ([`LOCAL_TOKEN_USER`] for the admin-token file), named in audit lines.
    pub username: String,
}

/// The identity an agent presented at the TLS layer (already verified by rustls against the
/// platform root and the CRLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// SHA-256 of the certificate (upper-case hex).
    pub sha256: String,
    /// Serial (upper-case hex).
    pub serial: String,
    /// Subject CN: the device ID.
    pub common_name: Option<String>,
}

impl PeerCert {
    /// Facts of a DER client certificate; `None` if it does not parse (it passed rustls, so
    /// this would be a parser disagreement, treated as no certificate).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let id = steward_pki::CertIdentity::from_der(der).ok()?;
        Some(Self {
            sha256: id.sha256,
            serial: id.serial,
            common_name: id.common_name,
        })
    }

    /// The facts of a certificate already parsed.
    pub(crate) fn from_facts(f: &CertFacts) -> Self {
        Self {
            sha256: f.thumbprint.sha256_hex(),
            serial: f.serial.clone(),
            common_name: f.common_names.first().cloned(),
        }
    }
}

/// Per-device wake-ups for long-polls.
#[derive(Debug, Default)]
struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // Every update is a single insert; a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Arc<Notify> {
        self.lock().entry(id.to_owned()).or_default().clone()
    }

    fn wake(&self, id: &str) {
        let n = self.lock().get(id).cloned();
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self.lock().values().cloned().collect();
        for n in all {
            n.notify_waiters();
        }
    }
}

/// What a target expression selects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    All,
    Tag(String),
    Device(String),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_target(s: &str, allow_device: bool) -> Result<Target, String> {
    let expected = if allow_device {
        "all, tag:NAME or device:NAME-OR-ID"
    } else {
        "all or tag:NAME"
    };
    if s == "all" {
        return Ok(Target::All);
    }
    if let Some(tag) = s.strip_prefix("tag:") {
        if valid_name(tag) {
            return Ok(Target::Tag(tag.to_owned()));
        }
        return Err(format!(
            "tag {tag:?} is not a valid tag (letters, digits, '-', '_', '.'; at most 64)"
        ));
    }
    if allow_device
        && let Some(dev) = s.strip_prefix("device:")
        && !dev.is_empty()
    {
        return Ok(Target::Device(dev.to_owned()));
    }
    Err(format!("target {s:?} is not {expected}"))
}

fn applies(target: &str, tags: &[String]) -> bool {
    match parse_target(target, false) {
        Ok(Target::All) => true,
        Ok(Target::Tag(t)) => tags.contains(&t),
        _ => false,
    }
}

/// Overlays agent-settings policy values on the site defaults. Values were validated when the
/// policy was saved; one that no longer parses is skipped (and the default kept).
fn overlay(
    mut s: AgentSettings,
    values: &BTreeMap<String, String>,
) -> Result<AgentSettings, String> {
    for (k, v) in values {
        if k == "persistent_connection" {
            s.persistent_connection = match v.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => true,
                "false" | "no" | "off" | "0" => false,
                _ => return Err(format!("{k} = {v:?} is not true or false")),
            };
            continue;
        }
        let n: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("{k} = {v:?} is not a whole number"))?;
        match k.as_str() {
            "checkin_interval_secs" => s.checkin_interval_secs = n,
            "jitter_percent" => {
                s.jitter_percent =
                    u8::try_from(n).map_err(|_| format!("jitter_percent = {n} is over 100"))?;
            }
            "long_poll_secs" => s.long_poll_secs = n,
            "task_output_max_bytes" => s.task_output_max_bytes = n,
            other => {
                return Err(format!(
                    "{other:?} is not an agent setting (known: {})",
                    AGENT_SETTINGS_KEYS.join(", ")
                ));
            }
        }
    }
    Ok(s)
}

/// Cuts `s` to at most `max` bytes on a character boundary; says whether it cut.
fn cap(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

fn forbidden(id: &'static str, message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::FORBIDDEN, id, message)
}

/// Everything the server does.
#[derive(Debug)]
pub struct Service {
    store: Arc<dyn Store>,
    config: Config,
    pki: Arc<Pki>,
    profile: RwLock<Arc<CommunicationProfile>>,
    policies: RwLock<Arc<Vec<PolicyRecord>>>,
    waiters: Waiters,
    /// Admission control and the registry of held persistent connections (agent site).
    admission: Arc<crate::admission::Admission>,
    local_token_hash: Option<String>,
    /// Verifies agent certificates that gateways forward (and remembers what it accepted);
    /// `None` until the first CRLs load.
    forwarded: RwLock<Option<Arc<crate::forwarded::Forwarded>>>,
    /// The issuing CA's current CRL (DER), served to gateways on the agent site.
    issuing_crl: RwLock<Option<axum::body::Bytes>>,
    /// Serialises profile changes (each stamps the next version).
    profile_lock: tokio::sync::Mutex<()>,
    /// Asks the CRL loop to re-sign now; it answers once the new CRLs are in service.
    crl_kick: RwLock<Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>>>,
    /// The listener certificates (set once the listeners are built).
    listeners: std::sync::OnceLock<Arc<crate::renew::Listeners>>,
    /// Devices' configurations, made once per set of tags (see [`ConfigCache`]).
    configs: Mutex<ConfigCache>,
}

/// At most this many sets of tags have their configuration kept; past it the cache starts
/// over (a fleet has few distinct sets; this bounds one that has many).
const MAX_CACHED_CONFIGS: usize = 4096;

/// Every check-in and long-poll needs its device's configuration version, and making the
/// configuration (cloning the profile, settings and policies, serializing them to JSON and
/// hashing that) was a fifth of the server's instructions per request in a steady state
/// (BENCHMARKS.md, swarm round 13). It depends only on the profile, the policies and the
/// device's tags, so it is made once per set of tags and kept until the profile or the
/// policies in use are other ones (they are replaced whole, so a pointer comparison tells).
#[derive(Debug, Default)]
struct ConfigCache {
    /// The profile and the policies the entries were made from.
    made_from: Option<(Arc<CommunicationProfile>, Arc<Vec<PolicyRecord>>)>,
    by_tags: HashMap<Vec<String>, Arc<AgentConfig>>,
}

impl ConfigCache {
    /// Empties the cache unless it was made from `profile` and `policies`.
    fn align(&mut self, profile: &Arc<CommunicationProfile>, policies: &Arc<Vec<PolicyRecord>>) {
        let same = self
            .made_from
            .as_ref()
            .is_some_and(|(p, q)| Arc::ptr_eq(p, profile) && Arc::ptr_eq(q, policies));
        if !same {
            self.by_tags.clear();
            self.made_from = Some((profile.clone(), policies.clone()));
        }
    }
}

impl Service {
    pub(crate) async fn new(
        store: Arc<dyn Store>,
        config: Config,
        pki: Arc<Pki>,
        profile: CommunicationProfile,
        local_token: Option<String>,
    ) -> Result<Self, steward_store::StoreError> {
        let policies = store.policies().await?;
        let admission = Arc::new(crate::admission::Admission::new(&config.limits));
        Ok(Self {
            store,
            config,
            pki,
            profile: RwLock::new(Arc::new(profile)),
            policies: RwLock::new(Arc::new(policies)),
            waiters: Waiters::default(),
            admission,
            local_token_hash: local_token.map(|t| secret::token_hash(&t)),
            forwarded: RwLock::new(None),
            issuing_crl: RwLock::new(None),
            profile_lock: tokio::sync::Mutex::new(()),
            crl_kick: RwLock::new(None),
            listeners: std::sync::OnceLock::new(),
            configs: Mutex::new(ConfigCache::default()),
        })
    }

    /// Admission control, counters and the registry of held persistent connections.
    pub fn admission(&self) -> &crate::admission::Admission {
        &self.admission
    }

    pub(crate) fn admission_arc(&self) -> Arc<crate::admission::Admission> {
        self.admission.clone()
    }

    /// The storage.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration the server runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current communication profile.
    pub fn profile(&self) -> Arc<CommunicationProfile> {
        self.profile
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn policy_cache(&self) -> Arc<Vec<PolicyRecord>> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn reload_policies(&self) -> Result<(), ApiFailure> {
        let fresh = Arc::new(self.store.policies().await?);
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The agent settings that apply to a device with these tags.
    pub fn settings_for(&self, tags: &[String]) -> AgentSettings {
        self.settings_from(&self.policy_cache(), tags)
    }

    fn settings_from(&self, policies: &[PolicyRecord], tags: &[String]) -> AgentSettings {
        let base = self.config.agents.settings();
        match policies
            .iter()
            .find(|p| p.name == AGENT_SETTINGS && applies(&p.target, tags))
        {
            Some(p) => overlay(base.clone(), &p.values).unwrap_or(base),
            None => base,
        }
    }

    /// The full configuration of a device; its version is a hash of everything in it.
    pub fn device_config(&self, device: &Device) -> Arc<AgentConfig> {
        let profile = self.profile();
        let policies = self.policy_cache();
        {
            let mut cache = self.configs.lock().unwrap_or_else(|p| p.into_inner());
            cache.align(&profile, &policies);
            if let Some(made) = cache.by_tags.get(&device.tags) {
                return made.clone();
            }
        }
        let settings = self.settings_from(&policies, &device.tags);
        let applied: Vec<AppliedPolicy> = policies
            .iter()
            .filter(|p| p.name != AGENT_SETTINGS && applies(&p.target, &device.tags))
            .map(|p| AppliedPolicy {
                name: p.name.clone(),
                values: p.values.clone(),
            })
            .collect();
        let version = config_version(&profile, &settings, &applied);
        let made = Arc::new(AgentConfig {
            version,
            profile: (*profile).clone(),
            settings,
            policies: applied,
        });
        let mut cache = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        // Entries always belong to the snapshot in `made_from`: if another profile or
        // policies came in meanwhile, this one is kept under its own until the next look-up.
        cache.align(&profile, &policies);
        if cache.by_tags.len() >= MAX_CACHED_CONFIGS {
            cache.by_tags.clear();
        }
        cache.by_tags.insert(device.tags.clone(), made.clone());
        made
    }

    /// Whether a device counts as Online: seen within two of its check-in intervals plus the
    /// configured grace (one missed check-in is not an outage; two are).
    pub fn status(&self, device: &Device, now: i64) -> DeviceStatus {
        let s = self.settings_for(&device.tags);
        let window = s
            .checkin_interval_secs
            .saturating_mul(2)
            .saturating_add(self.config.agents.online_grace_secs);
        match device.last_seen {
            Some(t) if now.saturating_sub(t) <= i64::try_from(window).unwrap_or(i64::MAX) => {
                DeviceStatus::Online
            }
            _ => DeviceStatus::Offline,
        }
    }

    fn summary(&self, d: &Device, now: i64) -> DeviceSummary {
        let mut s = DeviceSummary {
            id: d.id.clone(),
            name: d.name.clone(),
            os: d.os.clone(),
            status: self.status(d, now),
            last_checkin: d.last_seen.map(rfc3339),
            connection_path: d.connection_path.clone(),
            last_error: d.last_error.clone(),
            failed_attempts: d.failed_attempts.clone(),
            tags: d.tags.clone(),
            cert_expires_at: None,
            cert_warning: None,
            cert_renewal_pending: false,
            connected: self.admission.connected.is_connected(&d.id),
        };
        certs::cert_fields(&mut s, d, now);
        s
    }

    // ---- admin: authentication --------------------------------------------------------------

    /// Logs in with a local account: argon2 verification, a lock after
    /// [`MAX_FAILED_LOGINS`] failures for [`LOCK_SECS`], a random bearer token valid
    /// [`SESSION_SECS`] (only its hash is stored).
    pub async fn login(&self, req: LoginRequest) -> Result<LoginResponse, ApiFailure> {
        if !self.config.auth.allows(crate::config::Provider::Password) {
            tracing::warn!(id = "AUTH-PASSWORD-DISABLED", user = %req.username, "password login refused");
            return Err(password_disabled());
        }
        self.check_password(&req.username, &req.password).await?;
        let token = secret::new_token().map_err(|e| ApiFailure::internal("making a token", e))?;
        let expires = now() + SESSION_SECS;
        self.store
            .create_session(&secret::token_hash(&token), &req.username, expires)
            .await?;
        tracing::info!(user = %req.username, provider = "password", "admin logged in");
        Ok(LoginResponse {
            token,
            expires_at: rfc3339(expires),
        })
    }

    /// Verifies a local account's password (argon2), with the lockout of [`Self::login`].
    pub async fn check_password(&self, username: &str, password: &str) -> Result<(), ApiFailure> {
        let req = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let now = now();
        let failed = || {
            ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "AUTH-FAILED",
                "wrong user name or password",
            )
        };
        let locked = |until: i64| {
            ApiFailure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "AUTH-LOCKED",
                format!(
                    "the account {:?} is locked after {MAX_FAILED_LOGINS} failed logins until \
                     {} (in {} s)",
                    req.username,
                    rfc3339(until),
                    until.saturating_sub(now).max(0)
                ),
            )
        };
        let admin = self.store.admin(&req.username).await?;
        let Some(admin) = admin else {
            // Same cost as a real verification, so timing does not reveal account names.
            let pw = req.password.clone();
            let _ =
                tokio::task::spawn_blocking(move || password::verify(&pw, password::decoy())).await;
            tracing::warn!(user = %req.username, "AUTH-FAILED: login for an unknown account");
            return Err(failed());
        };
        if let Some(until) = admin.locked_until
            && until > now
        {
            tracing::warn!(user = %req.username, "AUTH-LOCKED: login refused, account locked");
            return Err(locked(until));
        }
        let pw = req.password.clone();
        let phc = admin.password_hash.clone();
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &phc))
            .await
            .map_err(|e| ApiFailure::internal("verifying a password", e))?;
        if !ok {
            let lock = self
                .store
                .record_login_failure(&req.username, now, MAX_FAILED_LOGINS, LOCK_SECS)
                .await?;
            return match lock {
                Some(until) => {
                    tracing::warn!(user = %req.username, until = %rfc3339(until), "AUTH-LOCKED: account locked after repeated failed logins");
                    Err(locked(until))
                }
                None => {
                    tracing::warn!(user = %req.username, "AUTH-FAILED: wrong password");
                    Err(failed())
                }
            };
        }
        self.store.record_login_success(&req.username).await?;
        Ok(())
    }

    /// Opens a session (bearer token / console cookie) for a principal authenticated another
    /// way (the console's Kerberos sign-in).
    pub async fn open_session(&self, principal: &str) -> Result<LoginResponse, ApiFailure> {
        let token = secret::new_token().map_err(|e| ApiFailure::internal("making a token", e))?;
        let expires = now() + SESSION_SECS;
        self.store
            .create_session(&secret::token_hash(&token), principal, expires)
            .await?;
        Ok(LoginResponse {
            token,
            expires_at: rfc3339(expires),
        })
    }

    /// Ends the session of a token (the console's log-out).
    pub async fn logout(&self, token: &str) -> Result<(), ApiFailure> {
        self.store
            .delete_session(&secret::token_hash(token))
            .await?;
        Ok(())
    }

    /// The admin a bearer token (session or the admin-token file) belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<AdminUser, ApiFailure> {
        let hash = secret::token_hash(token);
        if self.local_token_hash.as_deref() == Some(hash.as_str()) {
            return Ok(AdminUser {
                username: LOCAL_TOKEN_USER.to_owned(),
            });
        }
        match self.store.session(&hash, now()).await? {
            Some(username) => Ok(AdminUser { username }),
            None => Err(auth_required(
                "the token is unknown or expired; log in again",
            )),
        }
    }

    // ---- admin: devices ---------------------------------------------------------------------

    /// Every device.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, ApiFailure> {
        let now = now();
        Ok(self
            .store
            .devices()
            .await?
            .iter()
            .map(|d| self.summary(d, now))
            .collect())
    }

    async fn find_device(&self, id_or_name: &str) -> Result<Device, ApiFailure> {
        if let Some(d) = self.store.device(id_or_name).await? {
            return Ok(d);
        }
        let mut named = self.store.devices_named(id_or_name).await?;
        match named.len() {
            0 => Err(ApiFailure::not_found(
                "DEVICE-NOT-FOUND",
                format!("no device has the ID or name {id_or_name:?}"),
            )),
            1 => Ok(named.remove(0)),
            n => Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "DEVICE-NAME-AMBIGUOUS",
                format!(
                    "{n} devices are named {id_or_name:?} ({}); use an ID",
                    named
                        .iter()
                        .map(|d| d.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Revokes a device: refused at once by the agent site, and in the CRLs, which are
    /// re-signed before this returns (gateways refuse it at their next CRL refresh).
    pub async fn revoke_device(
        &self,
        user: &AdminUser,
        id_or_name: &str,
    ) -> Result<(), ApiFailure> {
        let d = self.find_device(id_or_name).await?;
        if self.store.revoke_device(&d.id, now()).await? {
            tracing::info!(user = %user.username, device = %d.id, name = %d.name, "device revoked");
        }
        self.resign_crls().await;
        Ok(())
    }

    pub(crate) fn set_crl_kick(
        &self,
        kick: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    ) {
        *self.crl_kick.write().unwrap_or_else(|p| p.into_inner()) = Some(kick);
    }

    /// Has the CRL loop re-sign now and waits (bounded) until the new CRLs are in service.
    pub(crate) async fn resign_crls(&self) {
        let kick = self
            .crl_kick
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(kick) = kick else { return };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if kick.send(tx).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .is_err()
        {
            // The revocation is committed and the server refuses the identity already; the
            // scheduled re-signing publishes it to CRL clients.
            tracing::warn!("the CRLs were not re-signed within 30 s; the next scheduled run will");
        }
    }

    /// One device by ID or name, with inventory, applied policies and recent tasks.
    pub async fn device(&self, id_or_name: &str) -> Result<DeviceDetail, ApiFailure> {
        let d = self.find_device(id_or_name).await?;
        let inventory = self.store.device_inventory(&d.id).await?;
        let tasks = self.store.device_tasks(&d.id, DEVICE_TASKS).await?;
        Ok(DeviceDetail {
            summary: self.summary(&d, now()),
            inventory,
            applied_policies: self.applied_policies(&d.tags),
            tasks,
        })
    }

    /// The policies that apply to a device with these tags: the effective agent settings first,
    /// then each custom policy whose target selects it.
    pub fn applied_policies(&self, tags: &[String]) -> Vec<AppliedPolicy> {
        let s = self.settings_for(tags);
        let mut out = vec![AppliedPolicy {
            name: AGENT_SETTINGS.to_owned(),
            values: BTreeMap::from([
                (
                    "checkin_interval_secs".to_owned(),
                    s.checkin_interval_secs.to_string(),
                ),
                ("jitter_percent".to_owned(), s.jitter_percent.to_string()),
                ("long_poll_secs".to_owned(), s.long_poll_secs.to_string()),
                (
                    "task_output_max_bytes".to_owned(),
                    s.task_output_max_bytes.to_string(),
                ),
                (
                    "persistent_connection".to_owned(),
                    s.persistent_connection.to_string(),
                ),
            ]),
        }];
        out.extend(
            self.policy_cache()
                .iter()
                .filter(|p| p.name != AGENT_SETTINGS && applies(&p.target, tags))
                .map(|p| AppliedPolicy {
                    name: p.name.clone(),
                    values: p.values.clone(),
                }),
        );
        out
    }

    // ---- admin: tasks -----------------------------------------------------------------------

    /// Creates a task on every device the target selects and wakes their long-polls.
    pub async fn create_task(
        &self,
        user: &AdminUser,
        task: NewTask,
    ) -> Result<TaskCreated, ApiFailure> {
        let invalid = |m: String| ApiFailure::bad_request("TASK-INVALID", m);
        if task.command.trim().is_empty() || task.command.len() > 4096 {
            return Err(invalid(
                "command is empty or longer than 4096 bytes".to_owned(),
            ));
        }
        if task.args.len() > 256 || task.args.iter().any(|a| a.len() > 32 * 1024) {
            return Err(invalid(
                "at most 256 arguments of at most 32 KiB each".to_owned(),
            ));
        }
        if task.timeout_secs == 0 || task.timeout_secs > MAX_TASK_TIMEOUT {
            return Err(invalid(format!(
                "timeout_secs must be between 1 and {MAX_TASK_TIMEOUT}"
            )));
        }
        let target = parse_target(&task.target, true)
            .map_err(|m| ApiFailure::bad_request("TASK-TARGET-INVALID", m))?;
        let ids: Vec<String> = match &target {
            // IDs only: the target of a fan-out to 100,000 devices is read in one narrow scan
            // rather than as 100,000 whole device rows (BENCHMARKS.md, swarm round 5).
            Target::All => self.store.live_device_ids(None).await?,
            Target::Tag(t) => self.store.live_device_ids(Some(t)).await?,
            Target::Device(s) => match self.store.device(s).await? {
                Some(d) => vec![d],
                // Every device of that name: re-enrolled hosts can share one, and the
                // returned count shows how many were reached.
                None => self.store.devices_named(s).await?,
            }
            .into_iter()
            .filter(|d| !d.revoked)
            .map(|d| d.id)
            .collect(),
        };
        if ids.is_empty() {
            return Err(ApiFailure::bad_request(
                "TASK-NO-TARGETS",
                format!("no enrolled device matches {:?}", task.target),
            ));
        }
        let id = self
            .store
            .create_task(
                &NewTaskRecord {
                    command: task.command.clone(),
                    args: task.args.clone(),
                    timeout_secs: task.timeout_secs,
                    target: task.target.clone(),
                    created_at: now(),
                    created_by: user.username.clone(),
                },
                &ids,
            )
            .await?;
        for d in &ids {
            self.waiters.wake(d);
        }
        tracing::info!(user = %user.username, task = id, command = %task.command, target = %task.target, devices = ids.len(), "task created");
        Ok(TaskCreated {
            id,
            targets: ids.len(),
        })
    }

    fn task_summary(t: TaskRecord) -> TaskSummary {
        TaskSummary {
            id: t.id,
            command: t.command,
            args: t.args,
            target: t.target,
            created_at: rfc3339(t.created_at),
            targets: t.targets,
            finished: t.finished,
        }
    }

    /// Recent tasks, newest first.
    pub async fn tasks(&self) -> Result<Vec<TaskSummary>, ApiFailure> {
        Ok(self
            .store
            .tasks(TASK_LIST)
            .await?
            .into_iter()
            .map(Self::task_summary)
            .collect())
    }

    /// One task with each device's state and output.
    pub async fn task(&self, id: u64) -> Result<TaskDetail, ApiFailure> {
        let t = self
            .store
            .task(id)
            .await?
            .ok_or_else(|| ApiFailure::not_found("TASK-NOT-FOUND", format!("no task {id}")))?;
        let results = self.store.task_results(id).await?;
        Ok(TaskDetail {
            summary: Self::task_summary(t),
            results,
        })
    }

    // ---- admin: policies --------------------------------------------------------------------

    /// Every policy (the agent-settings policy holds only the values set in it; the site
    /// defaults come from steward.toml).
    pub async fn policies(&self) -> Result<Vec<Policy>, ApiFailure> {
        Ok(self
            .policy_cache()
            .iter()
            .map(|p| Policy {
                name: p.name.clone(),
                target: p.target.clone(),
                values: p.values.clone(),
            })
            .collect())
    }

    /// Creates or replaces a policy and wakes every long-poll (configurations changed).
    pub async fn put_policy(&self, user: &AdminUser, policy: Policy) -> Result<Policy, ApiFailure> {
        let invalid = |m: String| ApiFailure::bad_request("POLICY-INVALID", m);
        if !valid_name(&policy.name) {
            return Err(invalid(format!(
                "policy name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                policy.name
            )));
        }
        parse_target(&policy.target, false).map_err(invalid)?;
        let values: BTreeMap<String, String> = policy
            .values
            .iter()
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        if policy.name == AGENT_SETTINGS {
            let s = overlay(self.config.agents.settings(), &values).map_err(invalid)?;
            validate_settings(&s).map_err(invalid)?;
        } else if values.len() > 256
            || values
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 4096)
        {
            return Err(invalid(
                "at most 256 keys; keys 1-128 bytes, values at most 4096 bytes".to_owned(),
            ));
        }
        let rec = PolicyRecord {
            name: policy.name.clone(),
            target: policy.target.clone(),
            values,
            updated_at: now(),
        };
        self.store.put_policy(&rec).await?;
        self.reload_policies().await?;
        self.waiters.wake_all();
        tracing::info!(user = %user.username, policy = %rec.name, target = %rec.target, "policy saved");
        Ok(Policy {
            name: rec.name,
            target: rec.target,
            values: rec.values,
        })
    }

    // ---- admin: enrollment packages ---------------------------------------------------------

    /// Makes an enrollment package: the current profile and a new random token (only its hash
    /// is stored), expiring and use-limited.
    pub async fn new_package(
        &self,
        user: &AdminUser,
        req: NewPackage,
    ) -> Result<BootstrapPackage, ApiFailure> {
        let invalid = |m: String| ApiFailure::bad_request("PACKAGE-INVALID", m);
        if req.expires_secs == 0 || req.expires_secs > MAX_PACKAGE_SECS {
            return Err(invalid(format!(
                "expires_secs must be between 1 and {MAX_PACKAGE_SECS}"
            )));
        }
        if req.max_uses == 0 {
            return Err(invalid("max_uses must be at least 1".to_owned()));
        }
        if let Some(bad) = req.tags.iter().find(|t| !valid_name(t)) {
            return Err(invalid(format!(
                "tag {bad:?} must be 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        let now = now();
        let expires = now.saturating_add(i64::try_from(req.expires_secs).unwrap_or(i64::MAX));
        let token = secret::new_token().map_err(|e| ApiFailure::internal("making a token", e))?;
        self.store
            .create_enrollment_token(&NewEnrollmentToken {
                token_hash: secret::token_hash(&token),
                expires_at: expires,
                max_uses: req.max_uses,
                tags: req.tags.clone(),
                created_at: now,
                created_by: user.username.clone(),
            })
            .await?;
        tracing::info!(user = %user.username, expires_at = %rfc3339(expires), max_uses = req.max_uses, tags = %req.tags.join(","), "enrollment package created");
        Ok(BootstrapPackage {
            format: BootstrapPackage::FORMAT.to_owned(),
            profile: (*self.profile()).clone(),
            token,
            expires_at: rfc3339(expires),
        })
    }

    // ---- agent site -------------------------------------------------------------------------

    /// Enrolls a device: checks the token, signs the CSR (client certificate, CN = a new device
    /// ID, one year), and stores the device while consuming one use of the token atomically.
    pub async fn enroll(
        &self,
        req: EnrollRequest,
        peer_addr: &str,
    ) -> Result<EnrollResponse, ApiFailure> {
        let now_t = OffsetDateTime::now_utc();
        let now = now_t.unix_timestamp();
        let hash = secret::token_hash(&req.token);
        // Judge the token before spending a signature on the request.
        token_verdict(
            self.store.check_enrollment_token(&hash, now).await?,
            peer_addr,
        )?;
        let key = csr_key_spec(&req.csr_pem)
            .map_err(|m| ApiFailure::bad_request("ENROLL-CSR-INVALID", m))?;
        let id = secret::new_uuid().map_err(|e| ApiFailure::internal("making a device ID", e))?;
        let cert = self
            .pki
            .issuing
            .sign_csr(
                &req.csr_pem,
                &LeafRequest {
                    common_name: id.clone(),
                    dns_names: Vec::new(),
                    ip_addrs: Vec::new(),
                    usage: Usage::Client,
                    not_before: now_t - BACKDATE,
                    not_after: now_t + self.agent_validity(),
                    crl_urls: vec![self.config.issuing_crl_url()],
                    key,
                },
            )
            .map_err(|e| ApiFailure::bad_request("ENROLL-CSR-INVALID", e.to_string()))?;
        let facts = CertFacts::from_der(&cert)
            .map_err(|e| ApiFailure::internal("reading the issued certificate", e))?;
        let name = clean_hostname(&req.hostname);
        // One snapshot for both the stored acknowledgement and the answer: the device holds
        // exactly the profile it is given, so a port change waits for it only when it is
        // newer than this one.
        let profile = self.profile();
        let verdict = self
            .store
            .enroll_device(
                &hash,
                now,
                &NewDevice {
                    id: id.clone(),
                    name: name.clone(),
                    cert_serial: facts.serial.clone(),
                    cert_sha256: Thumbprint::of(&cert).sha256_hex(),
                    tags: Vec::new(),
                    created_at: now,
                    profile_version: profile.version,
                    cert_not_after: Some((now_t + self.agent_validity()).unix_timestamp()),
                },
            )
            .await?;
        // Checked again: a concurrent enrollment may have taken the last use meanwhile.
        let tags = token_verdict(verdict, peer_addr)?;
        tracing::info!(device = %id, name = %name, peer = peer_addr, agent_version = %req.agent_version, tags = %tags.join(","), "device enrolled");
        Ok(EnrollResponse {
            device_id: id,
            cert_pem: pem("CERTIFICATE", &cert),
            chain_pem: vec![self.pki.live_issuing_pem()],
            profile: (*profile).clone(),
        })
    }

    /// The device a verified client certificate belongs to: 401 without one, 403 when no
    /// enrolled, unrevoked device holds exactly that certificate.
    pub async fn agent_device(&self, peer: Option<&PeerCert>) -> Result<Device, ApiFailure> {
        let Some(peer) = peer else {
            return Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "AGENT-CERT-REQUIRED",
                "this agent route needs the agent's client certificate; enroll first \
                 (steward-agent enroll)",
            ));
        };
        let unknown = |m: String| {
            tracing::warn!(id = "AGENT-UNKNOWN-DEVICE", serial = %peer.serial, "{m}");
            forbidden("AGENT-UNKNOWN-DEVICE", m)
        };
        let Some(cn) = &peer.common_name else {
            return Err(unknown(
                "the client certificate names no device (no CN)".to_owned(),
            ));
        };
        let Some(device) = self.store.device(cn).await? else {
            return Err(unknown(format!(
                "no device {cn} is enrolled on this server; enroll again"
            )));
        };
        if device.revoked {
            return Err(unknown(format!("device {cn} is revoked")));
        }
        if !device.cert_sha256.eq_ignore_ascii_case(&peer.sha256) {
            // Its renewed certificate, used for the first time: that use is the confirmation.
            if let Some(renewed) = self.promote_if_renewed(device.clone(), peer).await?
                && renewed.cert_sha256.eq_ignore_ascii_case(&peer.sha256)
            {
                return Ok(renewed);
            }
            return Err(unknown(format!(
                "device {cn} presented certificate {} but holds {}; a replaced or copied \
                 identity",
                peer.serial, device.cert_serial
            )));
        }
        Ok(device)
    }

    /// A check-in: notes last-seen (memory only), stores what changed (inventory, last error,
    /// results — committed before the answer), returns the configuration when the agent's
    /// version differs, and hands out pending tasks (marked running).
    pub async fn checkin(
        &self,
        device: &Device,
        mut req: CheckinRequest,
    ) -> Result<CheckinResponse, ApiFailure> {
        // Refused before anything is noted or stored: a malformed check-in changes nothing.
        valid_failed_attempts(&req.failed_attempts).map_err(|m| {
            tracing::warn!(id = "CHECKIN-FAILED-ATTEMPTS-INVALID", device = %device.id, "{m}");
            ApiFailure::bad_request("CHECKIN-FAILED-ATTEMPTS-INVALID", m)
        })?;
        let now = now();
        let path = match &req.connection {
            ConnectionPath::Lan { server } => format!("lan via {server}"),
            ConnectionPath::Gateway { gateway, via } => format!("gateway {gateway} via {via}"),
        };
        self.store.note_seen(
            &device.id,
            Seen {
                at: now,
                connection_path: Some(path),
            },
        );
        if let Some(err) = &req.last_error
            && device.last_error.as_ref() != Some(err)
        {
            self.store.save_last_error(&device.id, err).await?;
        }
        let mut send_inventory = false;
        match &req.inventory {
            Some(inv) => {
                self.store
                    .save_inventory(&device.id, inv, &req.inventory_hash, now)
                    .await?;
            }
            None => {
                send_inventory =
                    device.inventory_hash.as_deref() != Some(req.inventory_hash.as_str());
            }
        }
        let config = self.device_config(device);
        let max = usize::try_from(config.settings.task_output_max_bytes).unwrap_or(usize::MAX);
        for r in &mut req.results {
            if cap(&mut r.output, max) {
                r.truncated = true;
            }
        }
        let acked = self.commit(device, &req.results, now).await?;
        if device.config_version_acked != req.config_version {
            self.store
                .save_config_acked(&device.id, req.config_version)
                .await?;
        }
        // Only on change, like the configuration version: an agent that holds the current
        // profile checks in without a write.
        if device.profile_version_acked != req.profile_version {
            self.store
                .save_profile_acked(&device.id, req.profile_version)
                .await?;
        }
        // Each report covers the failures since the previous one, so a non-empty one
        // replaces it; an empty one means "nothing new" and keeps the last evidence (it
        // ages out of the gateway's status instead).
        if !req.failed_attempts.is_empty() {
            self.store
                .save_failed_attempts(&device.id, &req.failed_attempts, now)
                .await?;
        }
        // The existence probe keeps an unchanged check-in free of writes.
        let tasks = if self.store.has_open_tasks(&device.id).await? {
            self.store
                .take_tasks(&device.id, now, redeliver_before(now, &config.settings))
                .await?
        } else {
            Vec::new()
        };
        if !tasks.is_empty() {
            tracing::debug!(device = %device.id, tasks = tasks.len(), "tasks delivered");
        }
        Ok(CheckinResponse {
            device_id: device.id.clone(),
            config: (req.config_version != config.version).then(|| (*config).clone()),
            tasks,
            acked_results: acked,
            send_inventory,
            renew_certificate: self.renewal_due(device, now),
        })
    }

    /// The answer to a ping: who the certificate (or the gateway's forwarded one) says the
    /// agent is, and through which gateway. Reads only: a doctor may ping as often as it
    /// likes without moving last-seen, the connection path or anything else.
    pub fn ping(&self, device: &Device, via_gateway: Option<String>) -> Pong {
        Pong {
            device_id: device.id.clone(),
            via_gateway,
            server_time: rfc3339(now()),
        }
    }

    async fn commit(
        &self,
        device: &Device,
        results: &[TaskResult],
        now: i64,
    ) -> Result<Vec<u64>, ApiFailure> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let acked = self.store.commit_results(&device.id, results, now).await?;
        tracing::debug!(device = %device.id, results = acked.len(), "results committed");
        Ok(acked)
    }

    /// Why a device's long-poll should return now, if it should: a new configuration (no
    /// database work), or pending tasks (one probe, only when an admission slot is free now;
    /// after a wake-up without one, an unprobed "wake").
    ///
    /// With `carry` the pending tasks are taken and sent in the answer, saving the check-in
    /// that would fetch them (in a fan-out, one request of three per agent). Taking is a
    /// write, so it waits for a slot in the admission queue, as that check-in would have,
    /// until the poll's `deadline`, a few at a time ([`crate::admission::Admission::admit_take`]);
    /// a woken poll that gets none by then says "wake".
    async fn work_for(
        &self,
        device: &Device,
        config_version: Option<u64>,
        woken: bool,
        carry: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Option<WakeUp>, ApiFailure> {
        let wake = |reason: &str| {
            Some(WakeUp {
                reason: reason.to_owned(),
                tasks: Vec::new(),
            })
        };
        if let Some(v) = config_version
            && v != self.device_config(device).version
        {
            return Ok(wake("config"));
        }
        let mut slot = self.admission.try_admit();
        if slot.is_none() && woken {
            if !carry {
                // Busy: the check-in a wake-up prompts finds out what is new, through
                // admission.
                return Ok(wake("wake"));
            }
            slot = self.admission.admit_take(deadline).await;
            if slot.is_none() {
                return Ok(wake("wake"));
            }
        }
        // Not woken (the poll's first look): look even without a slot, one indexed read.
        // Skipping it would lose a wake-up that fired before this poll registered (a task
        // created while the agent was checking in), and the agent would hear of the task only
        // at its next interval: in a fan-out to 19,000 agents, the last results came 17 s
        // late, all of them from such polls.
        if !self.store.has_pending_tasks(&device.id).await? {
            return Ok(None);
        }
        if !carry {
            return Ok(wake("tasks"));
        }
        if slot.is_none() {
            slot = self.admission.admit_take(deadline).await;
        }
        if slot.is_none() {
            return Ok(wake("tasks"));
        }
        // The probe is a read, the take a write: probing first keeps polls without work off
        // the single writer. Taken exactly as a check-in takes them (running tasks due again
        // come along), so an answer lost on the way is delivered again an interval later.
        let now = now();
        let tasks = self
            .store
            .take_tasks(
                &device.id,
                now,
                redeliver_before(now, &self.settings_for(&device.tags)),
            )
            .await?;
        if tasks.is_empty() {
            // A check-in took them between the probe and the take; its answer carries them.
            return Ok(None);
        }
        tracing::debug!(device = %device.id, tasks = tasks.len(), "tasks delivered by wake-up");
        Ok(Some(WakeUp {
            reason: "tasks".to_owned(),
            tasks,
        }))
    }

    /// How long a long-poll is held: the device's `long_poll_secs`, and when the agent said
    /// how long it will listen (`wait`), [`LONG_POLL_MARGIN`] less than that, so the answer
    /// arrives before the agent gives up on it and the connection survives for the check-in.
    pub fn long_poll_hold(&self, device: &Device, agent_wait_secs: Option<u64>) -> Duration {
        let policy = Duration::from_secs(self.settings_for(&device.tags).long_poll_secs);
        match agent_wait_secs {
            Some(w) => policy.min(Duration::from_secs(w).saturating_sub(LONG_POLL_MARGIN)),
            None => policy,
        }
    }

    /// A long-poll — the persistent connection: answers at once when tasks are pending or the
    /// configuration changed, otherwise waits (see [`Service::long_poll_hold`]) for a wake-up.
    /// `None`: nothing. While it waits the device counts as connected. Its first probe looks
    /// even without an admission slot (one indexed read, usually answered by the cache); after
    /// a wake-up without a free slot it answers unprobed, or, carrying tasks, waits for a
    /// take's turn (see `work_for`).
    pub async fn wait(
        &self,
        device: &Device,
        config_version: Option<u64>,
        agent_wait_secs: Option<u64>,
        carry: bool,
    ) -> Result<Option<WakeUp>, ApiFailure> {
        let _held = self.admission.connected.hold(&device.id);
        self.store.note_seen(
            &device.id,
            Seen {
                at: now(),
                connection_path: None,
            },
        );
        let notify = self.waiters.get(&device.id);
        // Registered before looking, so a task created between the look and the wait still
        // wakes this poll.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let deadline = tokio::time::Instant::now() + self.long_poll_hold(device, agent_wait_secs);
        if let Some(w) = self
            .work_for(device, config_version, false, carry, deadline)
            .await?
        {
            return Ok(Some(w));
        }
        loop {
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
            notified.set(notify.notified());
            notified.as_mut().enable();
            if let Some(w) = self
                .work_for(device, config_version, true, carry, deadline)
                .await?
            {
                return Ok(Some(w));
            }
        }
    }
}

/// Tasks still running are sent again once a check-in interval has passed since their last
/// delivery, in case the answer that carried them never reached the agent (the agent skips
/// tasks it already has): those delivered at or before this time.
fn redeliver_before(now: i64, settings: &AgentSettings) -> i64 {
    now.saturating_sub(i64::try_from(settings.checkin_interval_secs).unwrap_or(i64::MAX))
}

fn auth_required(message: &str) -> ApiFailure {
    ApiFailure::new(StatusCode::UNAUTHORIZED, "AUTH-REQUIRED", message)
}

/// 403 AUTH-PASSWORD-DISABLED: `[auth] providers` does not list `password`.
pub(crate) fn password_disabled() -> ApiFailure {
    ApiFailure::new(
        StatusCode::FORBIDDEN,
        "AUTH-PASSWORD-DISABLED",
        "password authentication is not enabled on this server ([auth] providers does not list \
         \"password\"); sign in with Kerberos (kinit, then Negotiate)",
    )
}

/// 401 AUTH-REQUIRED for a request without credentials.
pub fn missing_credentials() -> ApiFailure {
    auth_required(
        "this route needs credentials: the providers offered in WWW-Authenticate (Negotiate with \
         a Kerberos ticket, Basic with a local account), `Authorization: Bearer TOKEN` (POST \
         /api/v1/login), or the console's session cookie",
    )
}

fn token_verdict(v: TokenCheck, peer: &str) -> Result<Vec<String>, ApiFailure> {
    let refuse = |id: &'static str, m: String| {
        tracing::warn!(id, peer, "enrollment refused: {m}");
        Err(forbidden(id, m))
    };
    match v {
        TokenCheck::Usable { tags } => Ok(tags),
        TokenCheck::Unknown => refuse(
            "ENROLL-TOKEN-INVALID",
            "the enrollment token is not known to this server (mistyped, forged, or from \
             another server's package)"
                .to_owned(),
        ),
        TokenCheck::Expired { expires_at } => refuse(
            "ENROLL-TOKEN-EXPIRED",
            format!(
                "the enrollment token expired at {}; ask for a new package",
                rfc3339(expires_at)
            ),
        ),
        TokenCheck::Exhausted { max_uses } => refuse(
            "ENROLL-TOKEN-EXHAUSTED",
            format!(
                "the enrollment token has been used its {max_uses} time(s); ask for a new \
                 package or one with more uses"
            ),
        ),
    }
}

/// Longest text field of a failed attempt: a gateway name, an address, an event ID, a time.
const MAX_ATTEMPT_FIELD: usize = 512;
/// Longest evidence text of a failed attempt (an OS error, a TLS alert, resolved addresses).
const MAX_ATTEMPT_DETAIL: usize = 2048;

/// Checks an agent's failed-attempts report: at most [`MAX_FAILED_ATTEMPTS`] entries (what
/// the agent keeps), each with bounded text, so one agent cannot bloat its device row or the
/// console. `Err` says what is wrong.
fn valid_failed_attempts(attempts: &[FailedAttempt]) -> Result<(), String> {
    if attempts.len() > MAX_FAILED_ATTEMPTS {
        return Err(format!(
            "{} failed attempts reported; at most {MAX_FAILED_ATTEMPTS} are accepted",
            attempts.len()
        ));
    }
    for (i, a) in attempts.iter().enumerate() {
        let short = [
            ("gateway", a.gateway.as_deref().unwrap_or("")),
            ("address", a.address.as_str()),
            ("id", a.id.as_str()),
            ("last_at", a.last_at.as_str()),
        ];
        if let Some((field, v)) = short.iter().find(|(_, v)| v.len() > MAX_ATTEMPT_FIELD) {
            return Err(format!(
                "failed attempt {i}: {field} is {} bytes; at most {MAX_ATTEMPT_FIELD}",
                v.len()
            ));
        }
        if a.detail.len() > MAX_ATTEMPT_DETAIL {
            return Err(format!(
                "failed attempt {i}: detail is {} bytes; at most {MAX_ATTEMPT_DETAIL}",
                a.detail.len()
            ));
        }
        if a.address.is_empty() {
            return Err(format!("failed attempt {i}: address is empty"));
        }
    }
    Ok(())
}

fn clean_hostname(h: &str) -> String {
    let h: String = h
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(253)
        .collect();
    if h.is_empty() {
        "unnamed".to_owned()
    } else {
        h
    }
}

/// The key type of a CSR, to choose keyUsage bits; refuses keys no agent should have.
fn csr_key_spec(csr_pem: &str) -> Result<KeySpec, String> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;

    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| format!("csr_pem is not a PEM certificate request: {e}"))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| format!("the certificate request does not parse: {e}"))?;
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(k)) => {
            let bits = k.key_size();
            if bits < 2048 {
                return Err(format!(
                    "an RSA key of {bits} bits is too weak (2048 at least)"
                ));
            }
            Ok(KeySpec::RSA_2048)
        }
        Ok(PublicKey::EC(_)) => Ok(KeySpec::EcdsaP256),
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => Ok(KeySpec::Ed25519),
        _ => Err(format!(
            "unsupported key algorithm {} (use ECDSA, Ed25519 or RSA)",
            spki.algorithm.algorithm.to_id_string()
        )),
    }
}

/// A stable version for a configuration: a hash of its content, cut to 53 bits so it survives
/// JavaScript (the console) and never 0 (which means "none" on the agent).
fn config_version(
    profile: &CommunicationProfile,
    settings: &AgentSettings,
    policies: &[AppliedPolicy],
) -> u64 {
    let bytes = serde_json::to_vec(&(profile, settings, policies)).unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_ref()[..8]);
    let v = u64::from_be_bytes(b) & ((1 << 53) - 1);
    v.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_apply() {
        assert_eq!(parse_target("all", true), Ok(Target::All));
        assert_eq!(
            parse_target("tag:lab", false),
            Ok(Target::Tag("lab".into()))
        );
        assert_eq!(
            parse_target("device:web-1", true),
            Ok(Target::Device("web-1".into()))
        );
        assert!(parse_target("device:web-1", false).is_err());
        assert!(parse_target("tag:", true).is_err());
        assert!(parse_target("everyone", true).is_err());
        assert!(applies("all", &[]));
        assert!(applies("tag:a", &["a".into()]));
        assert!(!applies("tag:a", &["b".into()]));
    }

    #[test]
    fn agent_settings_overlay_and_validate() {
        let base = AgentSettings::default();
        let v = BTreeMap::from([("checkin_interval_secs".to_owned(), "15".to_owned())]);
        assert_eq!(
            overlay(base.clone(), &v).map(|s| s.checkin_interval_secs),
            Ok(15)
        );
        let bad = BTreeMap::from([("checkin_interval_secs".to_owned(), "soon".to_owned())]);
        assert!(overlay(base.clone(), &bad).is_err());
        let unknown = BTreeMap::from([("colour".to_owned(), "1".to_owned())]);
        assert!(overlay(base.clone(), &unknown).is_err());
        let mut s = "héllo".to_owned();
        assert!(cap(&mut s, 2));
        assert_eq!(s, "h");
    }

    #[test]
    fn config_versions_are_stable_and_nonzero() {
        let p = CommunicationProfile {
            version: 1,
            servers: vec![],
            protocol: Default::default(),
            trust_anchors_pem: vec![],
            gateways: Vec::new(),
        };
        let s = AgentSettings::default();
        let a = config_version(&p, &s, &[]);
        assert_eq!(a, config_version(&p, &s, &[]));
        assert!(a > 0 && a < (1 << 53));
        let mut s2 = s.clone();
        s2.long_poll_secs += 1;
        assert_ne!(a, config_version(&p, &s2, &[]));
    }
}

//! Enrollment: package in, identity out.
//!
//! The key pair is made here and written (0600) before anything is sent, so a crash after the
//! server has consumed the token never leaves a certificate without its key. The new key and
//! identity are staged as `*.pending` and committed by two renames, key first; if a crash falls
//! between them, [`DataDir::load_identity`] finishes the commit (the pending identity whose key
//! is already in place). A failed `--force` re-enrollment therefore leaves the old identity
//! working.

use std::fs;
use std::path::PathBuf;

use steward_pki::{CertFacts, KeySpec, OffsetDateTime};
use steward_proto::{EnrollRequest, EnrollResponse, paths};

use crate::events::{ids, rfc3339};
use crate::net::{self, ClientIdentity, Connector, Fault};
use crate::package::{self, PackageError};
use crate::store::{self, DataDir, Identity, PRIVATE, PUBLIC, StoreError};

/// How long enrollment waits out a busy server (503 `SERVER-BUSY`, retried after its
/// `Retry-After` plus jitter) before it gives up and reports the refusal.
pub const ENROLL_BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The bootstrap package.
    pub package: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Replace an existing identity.
    pub force: bool,
    /// The name the console shows for this device; the host name when `None`. Several agents
    /// on one host (the demo, a lab) are told apart this way.
    pub name: Option<String>,
}

/// Enrollment succeeded.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The device ID.
    pub device_id: String,
    /// The server that enrolled it.
    pub server: String,
    /// The certificate's subject.
    pub subject: String,
    /// The certificate's notAfter (RFC 3339).
    pub not_after: String,
    /// Results of a previous identity that were moved aside (never sent as this device).
    pub moved_outbox: Option<String>,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The package is unusable.
    #[error("{path}: {source}")]
    Package {
        /// The package path.
        path: String,
        /// What is wrong.
        #[source]
        source: PackageError,
    },
    /// The data directory already holds an identity and `--force` was not given.
    #[error(
        "{dir} is already enrolled as device {device_id}; pass --force to replace that identity"
    )]
    AlreadyEnrolled {
        /// The data directory.
        dir: String,
        /// The current device ID.
        device_id: String,
    },
    /// The data directory could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key pair or CSR could not be made.
    #[error("cannot make the key pair: {0}")]
    Key(String),
    /// The server refused the enrollment (token invalid, expired, exhausted, ...).
    #[error("{0}")]
    Rejected(Fault),
    /// No server of the profile could be reached; one fault per server tried.
    #[error("no server of the profile could be reached: {}", join_faults(.0))]
    Unreachable(Vec<Fault>),
    /// No Kerberos token could be made as this host (no keytab entry for `host/<name>`, no
    /// KDC, clock skew), for every server of the profile.
    #[error("cannot authenticate as this host with Kerberos: {0}")]
    Kerberos(String),
    /// The server's answer is unusable (certificate not for our key, unreadable PEM).
    #[error("the enrollment answer from {server} is unusable: {reason}")]
    BadAnswer {
        /// The server.
        server: String,
        /// What is wrong.
        reason: String,
    },
}

fn join_faults(f: &[Fault]) -> String {
    f.iter()
        .map(|f| format!("{} {f}", f.id()))
        .collect::<Vec<_>>()
        .join("; ")
}

impl EnrollError {
    /// The event ID of this failure.
    pub fn id(&self) -> &'static str {
        match self {
            EnrollError::Package { .. } => ids::PACKAGE_INVALID,
            EnrollError::AlreadyEnrolled { .. } | EnrollError::Key(_) => ids::IDENTITY_INVALID,
            EnrollError::Store(_) => ids::STORE_FAILED,
            EnrollError::Rejected(f) => f.id(),
            EnrollError::Unreachable(f) => f.last().map_or(ids::CONNECTION_FAILED, Fault::id),
            EnrollError::BadAnswer { .. } => ids::PROTOCOL_ERROR,
            EnrollError::Kerberos(_) => "AGENT-ENROLL-KERBEROS",
        }
    }

    /// The server's error ID when the server refused (`ENROLL-TOKEN-EXPIRED`, ...).
    pub fn api_id(&self) -> Option<&str> {
        match self {
            EnrollError::Rejected(Fault::ServerRejected { api_id, .. }) => Some(api_id),
            _ => None,
        }
    }
}

/// Event ID of a Kerberos enrollment that could not make its token (docs/diagnostics.md).
#[cfg(feature = "kerberos")]
use crate::events::ids::ENROLL_KERBEROS;

/// How the agent proves it may enroll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proof {
    /// The package's bootstrap token.
    Token,
    /// The host's Kerberos identity (`host/<fqdn>` from the client keytab).
    #[cfg(feature = "kerberos")]
    Kerberos,
}

/// Enroll the data directory with the server named in the package. Every failure is also
/// written to the agent log under its event ID.
pub async fn enroll(opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    enroll_with(opts, Proof::Token).await
}

/// Enroll with the host's Kerberos identity instead of the package's token (the package still
/// gives the servers and the trust anchors). The principal is `host/<this host's name>@REALM`,
/// its key read from the client keytab (`KRB5_CLIENT_KTNAME=/etc/krb5.keytab`); the server
/// must allow it (`[auth] agent_kerberos_enrollment`).
#[cfg(feature = "kerberos")]
pub async fn enroll_kerberos(opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    enroll_with(opts, Proof::Kerberos).await
}

async fn enroll_with(opts: &EnrollOptions, proof: Proof) -> Result<Enrolled, EnrollError> {
    let outcome = enroll_inner(opts, proof).await;
    if let Err(e) = &outcome {
        match e {
            // Logged where they happened, once per server tried.
            EnrollError::Rejected(_) | EnrollError::Unreachable(_) => {}
            other => tracing::error!(id = other.id(), "enrollment failed: {other}"),
        }
    }
    outcome
}

// Only the Kerberos path leaves the loop over servers from inside the retry loop.
#[cfg_attr(not(feature = "kerberos"), allow(unused_labels))]
async fn enroll_inner(opts: &EnrollOptions, proof: Proof) -> Result<Enrolled, EnrollError> {
    let pkg = package::read_package(&opts.package).map_err(|source| EnrollError::Package {
        path: opts.package.display().to_string(),
        source,
    })?;
    let dir = DataDir::new(&opts.data_dir);
    dir.create()?;
    if dir.is_enrolled() && !opts.force {
        let device_id = dir
            .load_identity()
            .ok()
            .flatten()
            .map_or_else(|| "(unreadable identity)".to_owned(), |i| i.device_id);
        return Err(EnrollError::AlreadyEnrolled {
            dir: opts.data_dir.display().to_string(),
            device_id,
        });
    }
    // Leftovers of an enrollment that never committed.
    for p in [dir.pending_key_path(), dir.pending_identity_path()] {
        let _ = fs::remove_file(p);
    }
    store::sweep_temps(dir.root())?;

    let hostname = match &opts.name {
        Some(name) => name.clone(),
        None => sysinfo::System::host_name().unwrap_or_else(|_| "unknown".to_owned()),
    };
    let (csr_pem, key_der) = steward_pki::make_csr(KeySpec::EcdsaP256, &hostname)
        .map_err(|e| EnrollError::Key(e.to_string()))?;
    let key_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key_der));
    store::write_atomic(&dir.pending_key_path(), key_pem.as_bytes(), PRIVATE)?;

    let request = EnrollRequest {
        token: pkg.token.clone(),
        csr_pem,
        hostname,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let connector =
        Connector::new(&pkg.profile, None, Vec::new()).map_err(|e| EnrollError::Package {
            path: opts.package.display().to_string(),
            source: PackageError::Malformed(e.to_string()),
        })?;
    let mut faults = Vec::new();
    #[cfg(feature = "kerberos")]
    let mut kerberos_faults: Vec<String> = Vec::new();
    let _ = proof;
    let mut answer = None;
    // A busy server (503 SERVER-BUSY: admission control, before the token is looked at) is
    // waited out, as a check-in is: a fleet enrolling at once must not fail for it.
    let busy_until = std::time::Instant::now() + ENROLL_BUSY_PATIENCE;
    'servers: for server in &pkg.profile.servers {
        let result = loop {
            #[cfg(feature = "kerberos")]
            let kerberos = match proof {
                Proof::Token => None,
                // A token per server and attempt: the SPN is HTTP/<that server's name>, and a
                // token's authenticator is valid for minutes only. GSSAPI blocks while it gets
                // the host's ticket; enrollment runs nothing else meanwhile.
                Proof::Kerberos => match steward_kerberos::initiate_as_host(&server.host) {
                    Ok(init) => Some(steward_proto::KerberosEnrollRequest {
                        negotiate_token: init.token,
                        csr_pem: request.csr_pem.clone(),
                        agent_version: request.agent_version.clone(),
                    }),
                    Err(e) => {
                        tracing::error!(
                            id = ENROLL_KERBEROS,
                            "no Kerberos token for HTTP/{} as this host: {e}",
                            server.host
                        );
                        kerberos_faults.push(format!("HTTP/{}: {e}", server.host));
                        continue 'servers;
                    }
                },
            };
            let mut conn = match connector.connect(server).await {
                Ok(c) => c,
                Err(f) => break Err(f),
            };
            #[cfg(feature = "kerberos")]
            let sent = match &kerberos {
                Some(k) => {
                    conn.post_json(paths::ENROLL_KERBEROS, k, connector.timeouts.request)
                        .await
                }
                None => {
                    conn.post_json(paths::ENROLL, &request, connector.timeouts.request)
                        .await
                }
            };
            #[cfg(not(feature = "kerberos"))]
            let sent = conn
                .post_json(paths::ENROLL, &request, connector.timeouts.request)
                .await;
            match sent {
                Ok(resp) => {
                    break Ok::<(String, EnrollResponse), Fault>((
                        conn.base_url().to_owned(),
                        resp,
                    ));
                }
                Err(f) if net::is_server_busy(&f) && std::time::Instant::now() < busy_until => {
                    let retry = conn
                        .retry_after()
                        .unwrap_or(std::time::Duration::from_secs(10));
                    let delay = steward_proto::busy_delay(retry, crate::agent::random_unit());
                    tracing::info!(
                        id = ids::SERVER_BUSY,
                        "the server is busy (503 SERVER-BUSY, Retry-After {} s); enrolling again in {:.1} s",
                        retry.as_secs(),
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(f) => break Err(f),
            }
        };
        match result {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            // The server judged the token: another server would judge it the same way (and a
            // retry could spend a use of it), so stop here.
            Err(f @ Fault::ServerRejected { .. }) => {
                tracing::error!(id = f.id(), "enrollment refused: {f}");
                let _ = fs::remove_file(dir.pending_key_path());
                return Err(EnrollError::Rejected(f));
            }
            Err(f) => {
                tracing::error!(id = f.id(), "enrollment via {}: {f}", server.base_url());
                faults.push(f);
            }
        }
    }
    let Some((server, resp)) = answer else {
        let _ = fs::remove_file(dir.pending_key_path());
        #[cfg(feature = "kerberos")]
        if faults.is_empty() && !kerberos_faults.is_empty() {
            return Err(EnrollError::Kerberos(kerberos_faults.join("; ")));
        }
        return Err(EnrollError::Unreachable(faults));
    };

    let bad = |reason: String| EnrollError::BadAnswer {
        server: server.clone(),
        reason,
    };
    ClientIdentity::from_pem(&resp.cert_pem, &resp.chain_pem, &key_pem)
        .map_err(|e| bad(e.to_string()))?;
    let leaf = net::parse_certs(&resp.cert_pem).map_err(&bad)?;
    let facts = leaf
        .first()
        .ok_or_else(|| bad("no certificate".to_owned()))
        .and_then(|c| CertFacts::from_der(c).map_err(&bad))?;
    // The server's current profile supersedes the package's, unless it is unusable (then the
    // package's, which just worked, is kept rather than stranding the agent).
    let profile = match net::check_profile(&resp.profile) {
        Ok(()) => resp.profile,
        Err(e) => {
            tracing::warn!(
                id = ids::CONFIG_REJECTED,
                "the server's profile (version {}) is unusable ({e}); keeping the package's",
                resp.profile.version
            );
            pkg.profile.clone()
        }
    };
    let identity = Identity {
        device_id: resp.device_id.clone(),
        cert_pem: resp.cert_pem,
        chain_pem: resp.chain_pem,
        profile,
        enrolled_at: rfc3339(OffsetDateTime::now_utc()),
        enrolled_via: server.clone(),
    };
    store::write_json(&dir.pending_identity_path(), &identity, PUBLIC)?;

    // Whatever belonged to a previous identity must not be used by this one: its configuration
    // names the old profile, its state the old device, and its unsent results are another
    // device's (moved aside, never deleted).
    let moved_outbox = retire_previous(&dir)?;

    fs::rename(dir.pending_key_path(), dir.key_path())
        .map_err(|e| io(&dir.key_path().display().to_string(), e))?;
    store::sync_dir(dir.root())?;
    fs::rename(dir.pending_identity_path(), dir.identity_path())
        .map_err(|e| io(&dir.identity_path().display().to_string(), e))?;
    store::sync_dir(dir.root())?;

    let not_after = rfc3339(facts.not_after);
    tracing::info!(
        id = ids::ENROLLED,
        "enrolled as device {} via {server}; certificate {} valid until {not_after}",
        identity.device_id,
        facts.subject
    );
    Ok(Enrolled {
        device_id: identity.device_id,
        server,
        subject: facts.subject,
        not_after,
        moved_outbox,
    })
}

fn io(path: &str, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn retire_previous(dir: &DataDir) -> Result<Option<String>, StoreError> {
    for p in [dir.config_path(), dir.state_path(), dir.executed_path()] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p.display().to_string(), e)),
        }
    }
    let outbox = dir.outbox_dir();
    let waiting = fs::read_dir(&outbox)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .unwrap_or(false);
    let mut moved = None;
    if waiting {
        let stamp = OffsetDateTime::now_utc().unix_timestamp();
        let aside = dir.root().join(format!("outbox.previous-{stamp}"));
        fs::rename(&outbox, &aside).map_err(|e| io(&outbox.display().to_string(), e))?;
        moved = Some(aside.display().to_string());
    }
    dir.create()?;
    store::sync_dir(dir.root())?;
    Ok(moved)
}

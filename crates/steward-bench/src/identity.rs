//! Identities in bulk (`steward bench prepare`): each its own P-256 key pair made here and a
//! CSR, enrolled through the real enrollment route with a package token, stored for reuse.
//!
//! The store is a directory (0700) with `swarm.json` (where the agent site is, its trust
//! anchors, the issuing chain, the enrollment figures) and `identities.jsonl` (0600: one line
//! per identity with its private key), so a swarm of 100,000 reads two files rather than
//! 200,000.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use steward_pki::{KeySpec, make_csr};
use steward_proto::{BootstrapPackage, EnrollRequest, EnrollResponse, ServerEndpoint, paths};

use crate::BenchError;
use crate::net::{self, Sources, Target};
use crate::report::Latencies;

/// `swarm.json`'s `format`.
pub const FORMAT: &str = "steward-bench-identities/1";
const META: &str = "swarm.json";
const IDENTITIES: &str = "identities.jsonl";
/// Attempts per identity before its failure counts.
const ATTEMPTS: usize = 3;

/// What `swarm.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreMeta {
    /// [`FORMAT`].
    pub format: String,
    /// The agent site(s), from the package's communication profile.
    pub servers: Vec<ServerEndpoint>,
    /// The platform's trust anchors (PEM).
    pub trust_anchors_pem: Vec<String>,
    /// The issuing chain sent with every agent certificate (PEM).
    pub chain_pem: Vec<String>,
    /// Identities written.
    pub count: usize,
    /// The enrollment run that wrote them.
    pub enrollment: Option<PrepareReport>,
    /// The configuration version the agents held after the last swarm (`--resume`).
    #[serde(default)]
    pub config_version: Option<u64>,
    /// The profile version they acknowledged with it (`--resume`; absent in stores written
    /// before it was kept: the agents then acknowledge the profile again).
    #[serde(default)]
    pub profile_version: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredIdentity {
    device_id: String,
    hostname: String,
    cert_pem: String,
    key_pkcs8: String,
}

/// One identity, ready for a TLS client configuration.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The device ID the server assigned (the certificate's CN).
    pub device_id: String,
    /// The host name it enrolled with.
    pub hostname: String,
    /// Its certificate, then the issuing chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key, PKCS#8 DER.
    pub key: Vec<u8>,
}

/// What an enrollment run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareReport {
    /// Identities asked for.
    pub requested: usize,
    /// Identities enrolled and stored.
    pub enrolled: usize,
    /// Wall time, seconds.
    pub secs: f64,
    /// Enrollments per second (key pair + CSR + TLS + the server's signing and commit).
    pub rate_per_sec: f64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Latency of the enrollment request (connect, handshake, answer), milliseconds.
    pub latency_ms: crate::report::Percentiles,
    /// Failed attempts by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first failure's text, if any.
    pub first_error: Option<String>,
}

/// Settings of [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Identities to make.
    pub agents: usize,
    /// Enrollments in flight at once.
    pub concurrency: usize,
    /// The store directory (created; replaced if it holds a store).
    pub out: PathBuf,
    /// Per-request timeout.
    pub timeout: Duration,
}

fn write_private(path: &Path) -> Result<std::fs::File, BenchError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BenchError::io(path, e))
}

/// Enroll `opts.agents` identities with the package's token and store them. Enrolled
/// identities are kept even when some fail; the report says how many.
pub async fn prepare(
    package: &BootstrapPackage,
    opts: &PrepareOptions,
    progress: &indicatif::ProgressBar,
) -> Result<PrepareReport, BenchError> {
    use std::os::unix::fs::DirBuilderExt;
    let server = package
        .profile
        .servers
        .first()
        .ok_or_else(|| BenchError::Address {
            addr: "(profile)".into(),
            detail: "the package's profile names no server".into(),
        })?;
    let target = Target::resolve(&server.host, server.port)?;
    let roots = Arc::new(net::roots(&package.profile.trust_anchors_pem)?);
    // Enrollment has no client certificate; one configuration (and session cache) serves all.
    let config = net::client_config(roots, None, true)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.out)
        .map_err(|e| BenchError::io(&opts.out, e))?;
    let ids_path = opts.out.join(IDENTITIES);
    let mut file = std::io::BufWriter::new(write_private(&ids_path)?);
    let sources = Sources::for_target(&target, 16);

    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let start = Instant::now();
    let concurrency = opts.concurrency.clamp(1, 1024);
    for w in 0..concurrency {
        let (next, tx, target, config) = (next.clone(), tx.clone(), target.clone(), config.clone());
        let (token, n, timeout, source) = (
            package.token.clone(),
            opts.agents,
            opts.timeout,
            sources.get(w),
        );
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut outcome = Vec::new();
                for _ in 0..ATTEMPTS {
                    let r = enroll_one(&target, source, &config, &token, i, timeout).await;
                    let ok = r.is_ok();
                    outcome.push(r);
                    if ok {
                        break;
                    }
                }
                if tx.send(outcome).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut enrolled = 0usize;
    let mut chain_pem = Vec::new();
    let mut errors = BTreeMap::new();
    let mut first_error = None;
    let mut lat = Latencies::default();
    while let Some(attempts) = rx.recv().await {
        for a in attempts {
            match a {
                Ok((stored, chain, took)) => {
                    lat.push(took);
                    if chain_pem.is_empty() {
                        chain_pem = chain;
                    }
                    let line =
                        serde_json::to_string(&stored).map_err(|e| BenchError::BadStore {
                            path: ids_path.clone(),
                            detail: e.to_string(),
                        })?;
                    writeln!(file, "{line}").map_err(|e| BenchError::io(&ids_path, e))?;
                    enrolled += 1;
                    progress.inc(1);
                }
                Err(f) => {
                    *errors.entry(f.kind.label()).or_insert(0) += 1;
                    first_error.get_or_insert_with(|| format!("{}: {}", f.kind.label(), f.detail));
                }
            }
        }
    }
    file.flush().map_err(|e| BenchError::io(&ids_path, e))?;
    let secs = start.elapsed().as_secs_f64();
    let report = PrepareReport {
        requested: opts.agents,
        enrolled,
        secs,
        rate_per_sec: enrolled as f64 / secs.max(1e-9),
        concurrency,
        latency_ms: lat.percentiles(),
        errors,
        first_error,
    };
    let meta = StoreMeta {
        format: FORMAT.into(),
        servers: package.profile.servers.clone(),
        trust_anchors_pem: package.profile.trust_anchors_pem.clone(),
        chain_pem,
        count: enrolled,
        enrollment: Some(report.clone()),
        config_version: None,
        profile_version: None,
    };
    let meta_path = opts.out.join(META);
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| BenchError::BadStore {
        path: meta_path.clone(),
        detail: e.to_string(),
    })?;
    std::fs::write(&meta_path, json).map_err(|e| BenchError::io(&meta_path, e))?;
    Ok(report)
}

type Enrolled = (StoredIdentity, Vec<String>, Duration);

async fn enroll_one(
    target: &Target,
    source: Option<std::net::IpAddr>,
    config: &Arc<rustls::ClientConfig>,
    token: &str,
    i: usize,
    timeout: Duration,
) -> Result<Enrolled, net::Failure> {
    let hostname = format!("swarm-{i:06}");
    let (csr_pem, key) = make_csr(KeySpec::EcdsaP256, &hostname).map_err(|e| net::Failure {
        kind: net::ErrorKind::Protocol,
        detail: format!("CSR: {e}"),
    })?;
    let start = Instant::now();
    // A new connection per enrollment, as each real agent makes its own.
    let mut conn = net::connect(target, source, config.clone(), timeout).await?;
    let request = EnrollRequest {
        token: token.to_owned(),
        csr_pem,
        hostname: hostname.clone(),
        agent_version: concat!("steward-bench/", env!("CARGO_PKG_VERSION")).into(),
    };
    // A 503 SERVER-BUSY (admission control) is retried after Retry-After plus jitter on the
    // same connection, a bounded number of times; the wait counts in the latency.
    let mut busy = 0u32;
    let resp: EnrollResponse = loop {
        match conn.post_json(paths::ENROLL, &request, timeout).await {
            Err(f) if f.kind == net::ErrorKind::HttpStatus(503) && busy < 20 => {
                busy += 1;
                let retry = conn.retry_after.unwrap_or(Duration::from_secs(10));
                let r = (i as f64 * 0.618_033_988_7 + f64::from(busy) * 0.414_213_562_3).fract();
                tokio::time::sleep(steward_proto::busy_delay(retry, r)).await;
            }
            other => break other?,
        }
    };
    Ok((
        StoredIdentity {
            device_id: resp.device_id,
            hostname,
            cert_pem: resp.cert_pem,
            key_pkcs8: B64.encode(key),
        },
        resp.chain_pem,
        start.elapsed(),
    ))
}

/// Read the store's metadata and its first `want` identities.
pub fn load(dir: &Path, want: usize) -> Result<(StoreMeta, Vec<Identity>), BenchError> {
    load_range(dir, 0..want)
}

/// Read the store's metadata only.
pub fn load_meta(dir: &Path) -> Result<StoreMeta, BenchError> {
    let meta_path = dir.join(META);
    let text = std::fs::read(&meta_path).map_err(|e| BenchError::io(&meta_path, e))?;
    let meta: StoreMeta = serde_json::from_slice(&text).map_err(|e| BenchError::BadStore {
        path: meta_path.clone(),
        detail: e.to_string(),
    })?;
    if meta.format != FORMAT {
        return Err(BenchError::BadStore {
            path: meta_path,
            detail: format!("format {:?}, expected {FORMAT:?}", meta.format),
        });
    }
    Ok(meta)
}

/// Read the store's metadata and the identities `range` of its lines (a child swarm
/// process's slice): the lines before the range are skipped without being parsed.
pub fn load_range(
    dir: &Path,
    range: std::ops::Range<usize>,
) -> Result<(StoreMeta, Vec<Identity>), BenchError> {
    let meta = load_meta(dir)?;
    let want = range.end;
    let mut chain_rest = Vec::new();
    for pem in &meta.chain_pem {
        chain_rest.extend(net::certs_from_pem(pem)?);
    }
    let ids_path = dir.join(IDENTITIES);
    let f = std::fs::File::open(&ids_path).map_err(|e| BenchError::io(&ids_path, e))?;
    let mut out = Vec::with_capacity(range.len().min(meta.count));
    let mut seen = 0;
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        if seen >= want {
            break;
        }
        let line = line.map_err(|e| BenchError::io(&ids_path, e))?;
        seen += 1;
        if n < range.start {
            continue;
        }
        let bad = |detail: String| BenchError::BadStore {
            path: ids_path.clone(),
            detail: format!("line {}: {detail}", n + 1),
        };
        let s: StoredIdentity = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let key = B64.decode(&s.key_pkcs8).map_err(|e| bad(e.to_string()))?;
        let mut chain = net::certs_from_pem(&s.cert_pem)?;
        if chain.is_empty() {
            return Err(bad("no certificate".into()));
        }
        chain.extend(chain_rest.iter().cloned());
        out.push(Identity {
            device_id: s.device_id,
            hostname: s.hostname,
            chain,
            key,
        });
    }
    if seen < want {
        return Err(BenchError::TooFewIdentities {
            dir: dir.to_path_buf(),
            have: seen,
            want,
        });
    }
    Ok((meta, out))
}

/// Note the configuration and profile versions a swarm's agents ended with, for `--resume`.
pub fn save_config_version(
    dir: &Path,
    version: u64,
    profile_version: Option<u64>,
) -> Result<(), BenchError> {
    let meta_path = dir.join(META);
    let text = std::fs::read(&meta_path).map_err(|e| BenchError::io(&meta_path, e))?;
    let mut meta: StoreMeta = serde_json::from_slice(&text).map_err(|e| BenchError::BadStore {
        path: meta_path.clone(),
        detail: e.to_string(),
    })?;
    meta.config_version = Some(version);
    meta.profile_version = profile_version;
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| BenchError::BadStore {
        path: meta_path.clone(),
        detail: e.to_string(),
    })?;
    let tmp = dir.join(format!("{META}.tmp"));
    std::fs::write(&tmp, json).map_err(|e| BenchError::io(&tmp, e))?;
    std::fs::rename(&tmp, &meta_path).map_err(|e| BenchError::io(&meta_path, e))
}

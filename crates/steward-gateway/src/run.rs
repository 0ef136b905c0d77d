//! `steward gateway run`: the edge listeners, the forwarding, the CRL refresh, the reports and
//! what the server's answers set off (self-probes, retiring previous ports, promoting a staged
//! certificate).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::CertificateRevocationListDer;
use steward_proto::{
    GatewayReport, GatewayReportResponse, ProbeTarget, ReachProbe, error_chain, paths,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::forward::{AgentCert, Target, forward};
use crate::join::{provider, refused, roots};
use crate::probe::{MAX_TARGETS, SELF_PROBE_STEP_TIMEOUT, changed, self_probe};
use crate::renew::{RenewWhat, read_anchors, recover, renew_certs};
use crate::state::{GatewayConfig, GatewayDir, ServerCert};
use crate::upstream::Upstream;
use crate::{GatewayError, VERSION};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest upstream request: above the longest long-poll an agent is configured for.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// A report (and its answer) must finish within this: the report loop must never hang.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest CRL accepted.
const MAX_CRL_BYTES: usize = 32 * 1024 * 1024;
/// Largest report answer read.
const MAX_REPORT_RESPONSE_BYTES: usize = 1024 * 1024;
/// Reports made in a row after an answer changed something (a probe outcome, a retired port,
/// a promoted certificate); bounded so a flapping probe cannot turn into a report storm.
const MAX_REPORTS_IN_A_ROW: usize = 4;
/// Pending devices named in the log line of each report.
const PENDING_NAMED: usize = 5;

/// How `run` behaves; the defaults suit production.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Listen here instead of the configured address (tests bind `127.0.0.1:0`). Previous
    /// addresses (after `set-port`) are still served as configured.
    pub listen: Option<SocketAddr>,
    /// How often the CRL is fetched again.
    pub crl_refresh: Duration,
    /// How often the gateway reports itself.
    pub report_interval: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            listen: None,
            crl_refresh: Duration::from_secs(300),
            report_interval: Duration::from_secs(60),
        }
    }
}

/// The gateway, not yet started.
#[derive(Debug)]
pub struct Gateway;

/// A running gateway; stop it with [`RunningGateway::shutdown`].
#[derive(Debug)]
pub struct RunningGateway {
    /// The bound current address.
    pub addr: SocketAddr,
    /// The bound previous addresses (after `set-port`), as at start; see
    /// [`RunningGateway::previous_listening`] for those still served.
    pub previous: Vec<SocketAddr>,
    /// Its configuration, as at start.
    pub config: GatewayConfig,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// A previous listen address still served during a port change.
#[derive(Debug)]
struct Previous {
    /// As configured in `gateway.json` (what is removed from it when retired).
    configured: SocketAddr,
    /// As bound.
    bound: SocketAddr,
    /// Stops its accept loop (and drops its connections).
    stop: watch::Sender<bool>,
}

/// The server certificates: the one served, and a staged one announced to agents.
#[derive(Debug)]
struct Certs {
    current: Arc<ServerCert>,
    next: Option<Arc<ServerCert>>,
}

/// What every connection and loop shares.
#[derive(Debug)]
struct Shared {
    config: GatewayConfig,
    dir: GatewayDir,
    /// The server's agent site and the client to it (its identity rebuilt by a renewal).
    target: Arc<Target>,
    /// Replaced when a fresh CRL arrives or a certificate is promoted; each accepted
    /// connection uses the current one.
    edge: RwLock<Arc<ServerConfig>>,
    /// Kept across edge rebuilds, so agents resume their sessions; replaced when a CRL
    /// revokes something new (see [`refresh_crl`]).
    resumption: RwLock<Resumption>,
    /// The CRL in service, kept to rebuild the edge when the certificate changes.
    crl: RwLock<CertificateRevocationListDer<'static>>,
    certs: RwLock<Certs>,
    anchors_pem: Vec<String>,
    health: Mutex<String>,
    port: u16,
    previous: Mutex<Vec<Previous>>,
    /// Outcomes of the last self-probes, sent with every report.
    probes: Mutex<Vec<ReachProbe>>,
}

/// A poisoned lock only means a thread panicked while holding it; every value kept here is
/// replaced whole, so it is still consistent.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn edge(&self) -> Arc<ServerConfig> {
        read(&self.edge).clone()
    }

    fn dir_path(&self) -> &Path {
        self.dir.root()
    }

    fn set_health(&self, h: String) {
        *lock(&self.health) = h;
    }

    fn health(&self) -> String {
        lock(&self.health).clone()
    }

    /// SHA-256 of the served certificate, then of the staged one.
    fn thumbprints(&self) -> Vec<String> {
        let c = read(&self.certs);
        let mut t = vec![c.current.sha256.clone()];
        if let Some(n) = &c.next {
            t.push(n.sha256.clone());
        }
        t
    }

    /// Roots agents need for imported certificates (served or staged).
    fn imported_roots(&self) -> Vec<String> {
        let c = read(&self.certs);
        let mut roots: Vec<String> = Vec::new();
        for r in std::iter::once(&c.current)
            .chain(c.next.as_ref())
            .filter_map(|c| c.root_pem.clone())
        {
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
        roots
    }

    fn previous_ports(&self) -> Vec<u16> {
        lock(&self.previous)
            .iter()
            .map(|p| p.bound.port())
            .collect()
    }
}

/// Session resumption state made once per run and kept across rebuilds of the edge
/// configuration (every CRL refresh, a promoted certificate). A resumed session skips the
/// edge's CRL check of that handshake, not revocation: the server verifies the forwarded agent
/// certificate against its current CRLs on every request.
#[derive(Debug, Clone)]
struct Resumption(steward_pki::AgentResumption);

impl Resumption {
    fn new() -> Result<Self, GatewayError> {
        steward_pki::AgentResumption::new()
            .map(Self)
            .map_err(|e| GatewayError::Crypto(format!("the session ticket key: {e}")))
    }
}

/// The edge TLS configuration: the gateway's server certificate, and a client certificate
/// required from every agent, chained to the platform root and not revoked by the CRL.
fn edge_config(
    cert: &ServerCert,
    anchors_pem: &[String],
    crl: CertificateRevocationListDer<'static>,
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, GatewayError> {
    let provider = provider();
    // Only the agent's own certificate is checked against the CRL: the gateway fetches the
    // issuing CA's CRL, which cannot speak for the issuing CA itself.
    // Its signature is verified once per verifier (each CRL fetch), not per handshake.
    let verifier = steward_pki::crl_client_verifier(
        Arc::new(roots(anchors_pem)?),
        vec![crl],
        provider.clone(),
        steward_pki::RevocationDepth::EndEntity,
        false,
    )
    .map_err(|e| GatewayError::Crypto(format!("the agent certificate verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Crypto(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| GatewayError::Crypto(format!("the gateway's server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    resumption.0.apply(&mut cfg);
    Ok(Arc::new(cfg))
}

/// Where the CRL comes from: the server's agent site, over the gateway's own mutually
/// authenticated link (not the certificate's CDP URL), so the DMZ needs one port only.
fn crl_url(config: &GatewayConfig) -> String {
    format!("{}{}", config.server_url, paths::GATEWAY_CRL)
}

async fn fetch_crl(
    client: &reqwest::Client,
    url: &str,
) -> Result<CertificateRevocationListDer<'static>, GatewayError> {
    let fail = |reason: String| GatewayError::Crl {
        url: url.to_owned(),
        reason,
    };
    let mut resp = client
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| fail(error_chain(&e)))?;
    if !resp.status().is_success() {
        // The server's answer names why (GATEWAY-NOT-TRUSTED for a revoked gateway, ...).
        return Err(fail(match refused(url, resp).await {
            GatewayError::Refused { id, message, .. } => {
                format!("refused by the server: {id}: {message}")
            }
            other => other.to_string(),
        }));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(error_chain(&e)))? {
        if body.len() + chunk.len() > MAX_CRL_BYTES {
            return Err(fail(format!("larger than {MAX_CRL_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    // Parsed here so a bad CRL is named as such, not as a verifier failure.
    steward_pki::parse_crl(&body).map_err(fail)?;
    Ok(CertificateRevocationListDer::from(body))
}

async fn bind(want: SocketAddr) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let listener = TcpListener::bind(want)
        .await
        .map_err(|source| GatewayError::Bind { addr: want, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { addr: want, source })?;
    Ok((listener, addr))
}

impl Gateway {
    /// Loads the identity, fetches the CRL, binds the current and every previous address,
    /// reports itself once, and starts serving.
    pub async fn start(data_dir: &Path, opts: RunOptions) -> Result<RunningGateway, GatewayError> {
        let dir = GatewayDir::new(data_dir);
        // An identity renewal cut short by a crash is finished first.
        recover(data_dir)?;
        let config = dir.read_config()?;
        let anchors_pem = read_anchors(&dir)?;
        let current = Arc::new(dir.load_current()?);
        let next = load_next(&dir, &current.sha256)?;

        // One link for every agent (no connection yet), and a client for the gateway's own
        // requests.
        let upstream = Upstream::new(&dir, &anchors_pem, &config.server_url, UPSTREAM_TIMEOUT)?;

        // No CRL, no edge: agents are refused rather than let in unchecked.
        let crl = fetch_crl(&upstream.client(), &crl_url(&config)).await?;
        let resumption = Resumption::new()?;
        let edge = edge_config(&current, &anchors_pem, crl.clone(), &resumption)?;

        let (listener, addr) = bind(opts.listen.unwrap_or(config.listen)).await?;
        // Every previous address is served too: agents that have not learnt the new port yet
        // can learn it only through an old one.
        let mut previous = Vec::new();
        let mut previous_listeners = Vec::new();
        for configured in &config.previous_listen {
            let (l, bound) = bind(*configured).await?;
            let (stop, stopped) = watch::channel(false);
            previous.push(Previous {
                configured: *configured,
                bound,
                stop,
            });
            previous_listeners.push((l, stopped));
        }
        let previous_addrs: Vec<SocketAddr> = previous.iter().map(|p| p.bound).collect();

        let shared = Arc::new(Shared {
            config: config.clone(),
            dir,
            target: Arc::new(Target {
                server_url: config.server_url.clone(),
                upstream,
            }),
            edge: RwLock::new(edge),
            resumption: RwLock::new(resumption),
            crl: RwLock::new(crl),
            certs: RwLock::new(Certs { current, next }),
            anchors_pem,
            health: Mutex::new("ok".to_owned()),
            port: addr.port(),
            previous: Mutex::new(previous),
            probes: Mutex::new(Vec::new()),
        });

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // The current listener's own stop is never sent: it stops with the gateway.
        let (current_stop, current_stopped) = watch::channel(false);
        tasks.spawn(accept_loop(
            listener,
            shared.clone(),
            shutdown_rx.clone(),
            current_stopped,
            current_stop,
        ));
        for (l, stopped) in previous_listeners {
            let (keep, _) = watch::channel(false);
            tasks.spawn(accept_loop(
                l,
                shared.clone(),
                shutdown_rx.clone(),
                stopped,
                keep,
            ));
        }
        // Listening before the first report: the answer may ask for a probe of this very
        // listener.
        // A failure does not stop the start: the periodic report retries, and agents with a
        // profile already naming this gateway can use it meanwhile.
        let first = report(&shared).await;
        tasks.spawn(crl_loop(
            shared.clone(),
            opts.crl_refresh,
            shutdown_rx.clone(),
        ));
        tasks.spawn(report_loop(
            shared.clone(),
            opts.report_interval,
            first,
            shutdown_rx,
        ));
        tracing::info!(gateway = %config.gateway_id, listen = %addr, previous = ?previous_addrs, server = %config.server_url, "gateway started");
        Ok(RunningGateway {
            addr,
            previous: previous_addrs,
            config,
            shared,
            shutdown_tx,
            tasks,
        })
    }
}

/// The staged certificate, unless it is the one served already.
fn load_next(dir: &GatewayDir, current: &str) -> Result<Option<Arc<ServerCert>>, GatewayError> {
    match dir.read_slots()?.next {
        Some(sha) if sha != current => Ok(Some(Arc::new(dir.load_imported(&sha)?))),
        _ => Ok(None),
    }
}

impl RunningGateway {
    /// Fetches the CRL and rebuilds the edge verifier now (the periodic refresh does the same).
    pub async fn refresh_crl(&self) -> Result<(), GatewayError> {
        refresh_crl(&self.shared).await
    }

    /// Reports itself to the server now and acts on the answer (probes, retiring previous
    /// ports, promoting a staged certificate), reporting again while that changes something.
    pub async fn report(&self) -> Result<(), GatewayError> {
        let answer = report(&self.shared).await?;
        follow_up(&self.shared, answer).await;
        Ok(())
    }

    /// Renews the gateway's certificates now, as `steward gateway cert renew` does, takes the
    /// new identity at once and reports (announcing a staged server certificate).
    pub async fn renew(&self, what: RenewWhat) -> Result<crate::Renewed, GatewayError> {
        let done = renew_certs(self.shared.dir_path(), what).await?;
        reload_identity(&self.shared);
        let answer = report(&self.shared).await?;
        follow_up(&self.shared, answer).await;
        Ok(done)
    }

    /// SHA-256 of the identity certificate in use towards the server.
    pub fn identity_thumbprint(&self) -> String {
        self.shared.target.upstream.thumbprint()
    }

    /// Previous addresses still served (empty once every agent has the new port).
    pub fn previous_listening(&self) -> Vec<SocketAddr> {
        lock(&self.shared.previous)
            .iter()
            .map(|p| p.bound)
            .collect()
    }

    /// SHA-256 (hex) of the served certificate, then of the staged one.
    pub fn thumbprints(&self) -> Vec<String> {
        self.shared.thumbprints()
    }

    /// The outcomes of the last self-probes.
    pub fn probes(&self) -> Vec<ReachProbe> {
        lock(&self.shared.probes).clone()
    }

    /// Tests `target` from the gateway's side against its own thumbprints, as the server's
    /// report answers ask.
    pub async fn self_probe(&self, target: &ProbeTarget) -> ReachProbe {
        self_probe(target, &self.shared.thumbprints(), SELF_PROBE_STEP_TIMEOUT).await
    }

    /// Serves until SIGINT or SIGTERM, then stops.
    pub async fn run_until_signal(self) {
        use tokio::signal::unix::{SignalKind, signal};
        // Service managers stop with SIGTERM; a terminal with SIGINT. If SIGTERM cannot be
        // watched, SIGINT still works.
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("signal received; stopping");
        self.shutdown().await;
    }

    /// Stops listening and drops open connections (the gateway holds no state to save).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The serials a CRL revokes (an unreadable one revokes nothing new: it was parsed on fetch).
fn revoked_serials(crl: &CertificateRevocationListDer<'_>) -> std::collections::BTreeSet<Vec<u8>> {
    steward_pki::parse_crl(crl.as_ref())
        .map(|f| f.revoked.into_iter().map(|(serial, _)| serial).collect())
        .unwrap_or_default()
}

/// Fetches the CRL and rebuilds the edge with it. Sessions keep resuming across refreshes,
/// except when the new CRL revokes a certificate the old one did not: then the session store
/// and ticket key are replaced, so the revoked agent's next connection is a full handshake
/// and is refused at the edge (resuming skips the handshake's certificate check).
async fn refresh_crl(shared: &Shared) -> Result<(), GatewayError> {
    let outcome = async {
        let crl = fetch_crl(&shared.target.upstream.client(), &crl_url(&shared.config)).await?;
        let newly_revoked = !revoked_serials(&crl).is_subset(&revoked_serials(&read(&shared.crl)));
        let resumption = if newly_revoked {
            Resumption::new()?
        } else {
            read(&shared.resumption).clone()
        };
        let current = read(&shared.certs).current.clone();
        let cfg = edge_config(&current, &shared.anchors_pem, crl.clone(), &resumption)?;
        Ok::<_, GatewayError>((crl, cfg, resumption))
    }
    .await;
    match outcome {
        Ok((crl, cfg, resumption)) => {
            *write(&shared.crl) = crl;
            *write(&shared.resumption) = resumption;
            *write(&shared.edge) = cfg;
            shared.set_health("ok".to_owned());
            Ok(())
        }
        Err(e) => {
            // The previous CRL stays in service; the server sees the problem in the report.
            shared.set_health(format!("{}: {e}", e.id()));
            Err(e)
        }
    }
}

/// A report and what it announced.
#[derive(Debug)]
struct Answer {
    response: GatewayReportResponse,
    /// The staged certificate the report listed, if any: only an answer to a report that
    /// listed it can clear it for promotion.
    announced_next: Option<String>,
}

async fn report(shared: &Shared) -> Result<Answer, GatewayError> {
    // A certificate staged by `cert import` or `cert renew` while running is picked up here,
    // so it reaches agents without a restart; so is an identity renewed by `cert renew`.
    pick_up_staged(shared);
    reload_identity(shared);
    let thumbprints = shared.thumbprints();
    let announced_next = thumbprints.get(1).cloned();
    let url = format!("{}{}", shared.config.server_url, paths::GATEWAY_REPORT);
    let body = GatewayReport {
        external_name: shared.config.external_name.clone(),
        listen_port: shared.port,
        thumbprints,
        version: VERSION.to_owned(),
        health: shared.health(),
        previous_ports: shared.previous_ports(),
        trust_anchors_pem: shared.imported_roots(),
        probes: lock(&shared.probes).clone(),
    };
    let unreachable = |reason: String| GatewayError::Unreachable {
        url: url.clone(),
        reason,
    };
    let mut resp = shared
        .target
        .upstream
        .client()
        .post(&url)
        .timeout(REPORT_TIMEOUT)
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(refused(&url, resp).await);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_REPORT_RESPONSE_BYTES {
            return Err(unreachable(format!(
                "the answer is larger than {MAX_REPORT_RESPONSE_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    // A server that only stores reports answers 204 with no body: nothing to probe, and no
    // word that agents are current, so nothing is retired or promoted.
    let response = if bytes.iter().all(u8::is_ascii_whitespace) {
        GatewayReportResponse::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| unreachable(format!("the answer is not a gateway report response: {e}")))?
    };
    Ok(Answer {
        response,
        announced_next,
    })
}

/// Loads a certificate staged since the last look (a failure keeps the previous state: the
/// import checked the files, so this is a damaged data directory, and it is logged).
fn pick_up_staged(shared: &Shared) {
    let current = read(&shared.certs).current.sha256.clone();
    let wanted = match shared.dir.read_slots() {
        Ok(s) => s.next.filter(|n| *n != current),
        Err(e) => {
            tracing::warn!(id = e.id(), error = %e, "the certificate slots cannot be read");
            return;
        }
    };
    let have = read(&shared.certs).next.as_ref().map(|n| n.sha256.clone());
    if wanted == have {
        return;
    }
    let next = match wanted {
        None => None,
        Some(sha) => match shared.dir.load_imported(&sha) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::warn!(id = e.id(), error = %e, "the staged certificate cannot be loaded");
                return;
            }
        },
    };
    if let Some(n) = &next {
        tracing::info!(thumbprint = %n.sha256, "staged certificate announced to agents; the current one is served until every agent has it");
    }
    write(&shared.certs).next = next;
}

/// Acts on the server's answer, reporting again at once while that changes what the server
/// should know (bounded).
async fn follow_up(shared: &Shared, mut answer: Answer) {
    for _ in 0..MAX_REPORTS_IN_A_ROW {
        if !react(shared, &answer).await {
            return;
        }
        answer = match report(shared).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(id = e.id(), error = %e, "report to the server failed");
                return;
            }
        };
    }
}

/// Takes a renewed identity from disk (see [`Upstream::reload`]); a failure keeps the one in
/// use, which the server still accepts.
fn reload_identity(shared: &Shared) {
    if let Err(e) = shared
        .target
        .upstream
        .reload(&shared.dir, &shared.anchors_pem)
    {
        tracing::warn!(id = e.id(), error = %e, "the renewed identity cannot be loaded; the current one stays in use");
    }
}

/// Renews what the server's answer says is due; true when something was renewed (the next
/// report then uses the new identity and announces the staged server certificate).
async fn renew_due(shared: &Shared, r: &GatewayReportResponse) -> bool {
    if !r.renew_identity && !r.renew_server {
        return false;
    }
    let what = RenewWhat {
        identity: r.renew_identity,
        server: r.renew_server,
    };
    match renew_certs(shared.dir_path(), what).await {
        Ok(done) => {
            for s in &done.skipped {
                tracing::info!("renewal: {s}");
            }
            reload_identity(shared);
            pick_up_staged(shared);
            done.identity.is_some() || done.server.is_some()
        }
        Err(e) => {
            tracing::warn!(id = "GATEWAY-CERT-RENEW-FAILED", cause = e.id(), error = %e, "certificate renewal failed; the current certificates stay in use and the next report retries");
            false
        }
    }
}

/// Acts on one answer; true when the next report would tell the server something new.
async fn react(shared: &Shared, answer: &Answer) -> bool {
    let r = &answer.response;
    let mut again = renew_due(shared, r).await;
    let rollout = !lock(&shared.previous).is_empty() || answer.announced_next.is_some();
    if r.all_agents_current {
        again |= retire_previous(shared);
        if let Some(next) = &answer.announced_next {
            match promote(shared, next) {
                Ok(true) => again = true,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id = e.id(), error = %e, "the staged certificate could not be promoted; the current one stays in service");
                }
            }
        }
    } else if let Some(next) = answer
        .announced_next
        .as_ref()
        .filter(|_| current_expires_imminently(shared))
    {
        // The certificate served now is about to expire: every agent would fail at expiry, so
        // the staged one goes live; those that lack its thumbprint would fail either way.
        let named: Vec<&str> = r
            .pending_devices
            .iter()
            .take(PENDING_NAMED)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            id = "GATEWAY-CERT-FORCED-SWITCH",
            pending_total = r.pending_total,
            pending = %named.join(", "),
            next = %next,
            "the served certificate is about to expire; switching to the staged one although not every agent has its thumbprint"
        );
        match promote(shared, next) {
            Ok(true) => again = true,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(id = e.id(), error = %e, "the staged certificate could not be promoted; the current one stays in service");
            }
        }
    } else if rollout {
        let named: Vec<&str> = r
            .pending_devices
            .iter()
            .take(PENDING_NAMED)
            .map(String::as_str)
            .collect();
        tracing::info!(
            id = "GATEWAY-ROLLOUT-PENDING",
            pending_total = r.pending_total,
            pending = %named.join(", "),
            previous_ports = ?shared.previous_ports(),
            next = answer.announced_next.as_deref().unwrap_or("-"),
            "waiting for every agent to have the new profile"
        );
    }
    let targets: Vec<ProbeTarget> = r.probe.iter().take(MAX_TARGETS).cloned().collect();
    if !targets.is_empty() || !lock(&shared.probes).is_empty() {
        let own = shared.thumbprints();
        let mut set = JoinSet::new();
        for (i, t) in targets.into_iter().enumerate() {
            let own = own.clone();
            set.spawn(async move { (i, self_probe(&t, &own, SELF_PROBE_STEP_TIMEOUT).await) });
        }
        let mut done = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(p) = joined {
                done.push(p);
            }
        }
        done.sort_by_key(|(i, _)| *i);
        let outcomes: Vec<ReachProbe> = done.into_iter().map(|(_, p)| p).collect();
        for p in &outcomes {
            match p.failure {
                None => {
                    tracing::debug!(target_host = %p.target.host, port = p.target.port, detail = %p.detail, "self-probe reached this gateway")
                }
                Some(kind) => {
                    tracing::warn!(id = "GATEWAY-SELF-PROBE-FAILED", target_host = %p.target.host, port = p.target.port, kind = ?kind, detail = %p.detail, "this gateway cannot be reached the way agents are told to")
                }
            }
        }
        let mut kept = lock(&shared.probes);
        again |= changed(&kept, &outcomes);
        *kept = outcomes;
    }
    again
}

/// Whether the served certificate expires so soon that the staged one must go live even
/// though not every agent acknowledged it: within a tenth of its lifetime, at most a day.
fn current_expires_imminently(shared: &Shared) -> bool {
    let current = read(&shared.certs).current.clone();
    let Some(facts) = current
        .chain
        .first()
        .and_then(|c| steward_pki::CertFacts::from_der(c).ok())
    else {
        return false;
    };
    switch_deadline_passed(
        facts.not_before.unix_timestamp(),
        facts.not_after.unix_timestamp(),
        steward_pki::OffsetDateTime::now_utc().unix_timestamp(),
    )
}

/// See [`current_expires_imminently`].
fn switch_deadline_passed(not_before: i64, not_after: i64, now: i64) -> bool {
    let margin = (not_after.saturating_sub(not_before) / 10).clamp(0, 86_400);
    now >= not_after.saturating_sub(margin)
}

/// Stops every previous listener and removes it from `gateway.json`; true when any was.
fn retire_previous(shared: &Shared) -> bool {
    let retired: Vec<Previous> = std::mem::take(&mut *lock(&shared.previous));
    if retired.is_empty() {
        return false;
    }
    // Read again from disk: `set-port` may have changed the file since start.
    match shared.dir.read_config() {
        Ok(mut cfg) => {
            cfg.previous_listen
                .retain(|a| !retired.iter().any(|r| r.configured == *a));
            if let Err(e) = shared.dir.write_config(&cfg) {
                tracing::warn!(id = e.id(), error = %e, "retired ports could not be removed from the configuration; they are retired again at the next start");
            }
        }
        Err(e) => {
            tracing::warn!(id = e.id(), error = %e, "retired ports could not be removed from the configuration; they are retired again at the next start");
        }
    }
    for p in retired {
        let _ = p.stop.send(true);
        tracing::info!(id = "GATEWAY-PORT-RETIRED", port = p.bound.port(), addr = %p.bound, "every agent has the new port; stopped listening on the previous one");
    }
    true
}

/// Makes the staged certificate `next` the served one: `certs.json` first (so a restart
/// serves it too), then the edge, without a restart. Ok(false): nothing to promote.
fn promote(shared: &Shared, next: &str) -> Result<bool, GatewayError> {
    let staged = match &read(&shared.certs).next {
        Some(n) if n.sha256 == next => n.clone(),
        _ => return Ok(false),
    };
    let mut slots = shared.dir.read_slots()?;
    if slots.next.as_deref() != Some(next) {
        // Replaced on disk by a newer import since the report: that one must be announced
        // first.
        return Ok(false);
    }
    let crl = read(&shared.crl).clone();
    // Built before anything changes, so a certificate the TLS stack refuses stays staged.
    let resumption = read(&shared.resumption).clone();
    let edge = edge_config(&staged, &shared.anchors_pem, crl, &resumption)?;
    let old = read(&shared.certs).current.sha256.clone();
    slots.current = Some(next.to_owned());
    slots.next = None;
    shared.dir.write_slots(&slots)?;
    {
        let mut certs = write(&shared.certs);
        certs.current = staged;
        certs.next = None;
    }
    *write(&shared.edge) = edge;
    tracing::info!(id = "GATEWAY-CERT-PROMOTED", thumbprint = %next, previous = %old, "every agent has the staged certificate; it is now served");
    Ok(true)
}

async fn crl_loop(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = refresh_crl(&shared).await {
            tracing::warn!(id = e.id(), error = %e, "CRL refresh failed; the previous CRL stays in service");
        }
    }
}

async fn report_loop(
    shared: Arc<Shared>,
    every: Duration,
    first: Result<Answer, GatewayError>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = first;
    loop {
        let wait = match last {
            Ok(a) => {
                tokio::select! {
                    () = follow_up(&shared, a) => {}
                    _ = shutdown.changed() => return,
                }
                every
            }
            Err(e) => {
                let wait = wait_after(&e, every);
                tracing::warn!(id = e.id(), error = %e, retry_in_s = wait.as_secs_f64(), "report to the server failed");
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        last = report(&shared).await;
    }
}

/// When to report again after a failed report: as the server said when its admission control
/// turned the report away (503 `SERVER-BUSY` with `Retry-After`: nothing was read, and the
/// server's view of this gateway, with any certificate waiting to be promoted, would go stale
/// by a whole interval), otherwise at the next interval.
fn wait_after(e: &GatewayError, every: Duration) -> Duration {
    match busy_retry(e) {
        Some(retry) => steward_proto::busy_delay(retry, random_unit()).min(every),
        None => every,
    }
}

/// The `Retry-After` of a 503 `SERVER-BUSY` answer.
fn busy_retry(e: &GatewayError) -> Option<Duration> {
    match e {
        GatewayError::Refused {
            id, retry_after, ..
        } if id == "SERVER-BUSY" => *retry_after,
        _ => None,
    }
}

/// A number in [0, 1) for jitter (0.5 if the system has no randomness to give).
fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if provider().secure_random.fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Accepts until the gateway stops (`shutdown`) or this listener is retired (`stopped`).
/// `_keep` holds the sender of `stopped` when no one else does, so it never fires by itself.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
    _keep: watch::Sender<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    conns.spawn(connection(tcp, addr, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // The listening socket closes here: the port stops answering.
    drop(listener);
    conns.shutdown().await;
}

async fn connection(tcp: TcpStream, addr: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(shared.edge()).accept(tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let no_cert = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::NoCertificatesPresented));
            if no_cert {
                // Not an agent: the gateway's own self-probe (it checks the server side of
                // the handshake only), a health check or a scanner. Agents always present one.
                tracing::debug!(peer = %addr, "TLS client without a certificate refused");
            } else {
                // Unknown CAs, revoked or expired agent certificates end here.
                tracing::info!(id = "GATEWAY-AGENT-REFUSED", peer = %addr, error = %e, "agent TLS handshake refused");
            }
            return;
        }
        Err(_) => {
            tracing::info!(peer = %addr, "agent TLS handshake timed out");
            return;
        }
    };
    // The verifier requires a certificate, so one is always there after the handshake.
    let Some(agent_cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| AgentCert::new(c.as_ref()))
    else {
        return;
    };
    let agent_cert = Arc::new(agent_cert);
    let target = Arc::clone(&shared.target);
    drop(shared);
    let svc =
        hyper::service::service_fn(move |req| forward(target.clone(), agent_cert.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        // The whole chain: hyper's own message is only "connection error" and the like.
        tracing::debug!(peer = %addr, error = %error_chain(&e), "agent connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::switch_deadline_passed;

    #[test]
    fn a_staged_certificate_is_forced_live_only_just_before_the_current_one_expires() {
        let year = 365 * 86_400;
        // A year-long certificate: the last day.
        assert!(!switch_deadline_passed(0, year, year - 86_400 - 1));
        assert!(switch_deadline_passed(0, year, year - 86_400));
        // A short-lived one: its last tenth.
        assert!(!switch_deadline_passed(0, 1_000, 899));
        assert!(switch_deadline_passed(0, 1_000, 900));
        assert!(switch_deadline_passed(0, 1_000, 5_000));
    }
}

//! Starting, running and stopping the server: three listeners (agent site, console, CRL) and
//! the background work (last-seen flushes, CRL re-signing, session clean-up).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_pki::OffsetDateTime;
use steward_proto::{CommunicationProfile, Protocol, ServerEndpoint};
use steward_store::{PolicyRecord, SqliteStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::ServerError;
use crate::config::{Config, DataDir};
use crate::config_check::{Severity, check_config};
use crate::crl::CrlStore;
use crate::http::{Transport, serve};
use crate::http_site::HttpSite;
use crate::pki::{Crls, Pki};
use crate::renew::Listeners;
use crate::service::{AGENT_SETTINGS, Service, gateway_entries, stamp_version};
use crate::tls::{forwarded_trust, forwarded_verifier};

/// How often last-seen times are written (one transaction for all devices seen meanwhile).
/// A crash loses at most this much last-seen history, which the next check-in restores.
pub const SEEN_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Listen addresses that replace the configured ones for this run (tests and the demo bind
/// `127.0.0.1:0`).
#[derive(Debug, Clone, Default)]
pub struct ServerOverrides {
    /// Agent site.
    pub agent_addr: Option<SocketAddr>,
    /// Console and admin API.
    pub console_addr: Option<SocketAddr>,
    /// CRL distribution point.
    pub crl_addr: Option<SocketAddr>,
}

/// `run/addresses.json`: where a running server listens, for the CLI and tests on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// Process ID of the server.
    pub pid: u32,
    /// Bound agent-site address.
    pub agent: SocketAddr,
    /// Bound console address.
    pub console: SocketAddr,
    /// Bound CRL address.
    pub crl: SocketAddr,
    /// The agent site as agents reach it (first configured name, bound port).
    pub agent_url: String,
    /// The console/admin API as a client on this host reaches it (its certificate covers
    /// `localhost`, 127.0.0.1 and ::1).
    pub console_url: String,
    /// The issuing CA's CRL on this listener.
    pub crl_url: String,
    /// Bound plain-HTTP agent-site address (`[listen] protocol = "http"` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_http: Option<SocketAddr>,
}

impl Addresses {
    /// Reads `run/addresses.json` of a data directory.
    pub fn read(data_dir: &Path) -> Result<Self, ServerError> {
        let path = DataDir::new(data_dir).addresses();
        let text = std::fs::read_to_string(&path).map_err(|e| ServerError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| ServerError::Config {
            path,
            reason: e.to_string(),
        })
    }
}

/// The server, not yet started.
#[derive(Debug)]
pub struct Server;

/// A running server. Stop it with [`RunningServer::shutdown`]; dropping it without doing so
/// stops the listeners without the final last-seen flush.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound agent-site address.
    pub agent_addr: SocketAddr,
    /// Bound console/admin API address.
    pub console_addr: SocketAddr,
    /// Bound CRL address.
    pub crl_addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The addresses as written to `run/addresses.json`.
    pub addresses: Addresses,
    service: Arc<Service>,
    sqlite: Arc<SqliteStore>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// `run/server.lock`, locked while this server runs (see [`lock_data_dir`]).
    _lock: std::fs::File,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, what, source })
}

fn local_url(scheme: &str, bound: SocketAddr, fallback_host: &str) -> String {
    let host = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() || ip.is_loopback() => {
            Ipv4Addr::LOCALHOST.to_string()
        }
        IpAddr::V6(ip) if ip.is_unspecified() || ip.is_loopback() => {
            format!("[{}]", Ipv6Addr::LOCALHOST)
        }
        _ => fallback_host.to_owned(),
    };
    format!("{scheme}://{host}:{}", bound.port())
}

async fn sign_crls(pki: &Pki, store: &dyn Store, cfg: &Config) -> Result<Crls, ServerError> {
    let number = store.next_counter("crl_number").await?;
    let revoked = store.revoked_serials().await?;
    pki.sign_crls(
        &revoked,
        OffsetDateTime::now_utc(),
        time::Duration::seconds(i64::try_from(cfg.crl.validity_secs).unwrap_or(i64::MAX)),
        number,
    )
}

/// The profile for this run; its version goes up whenever its content differs from the last
/// run's (new names, a new port, a new anchor, a new protocol, a gateway's new report), so
/// agents can tell newer from older. With plain HTTP (`http_port`), every LAN server lists
/// the HTTP port next to the HTTPS one, which stays the fallback.
async fn profile(
    store: &dyn Store,
    cfg: &Config,
    dir: &DataDir,
    agent_port: u16,
    http_port: Option<u16>,
    root_pem: &str,
) -> Result<CommunicationProfile, ServerError> {
    let mut servers: Vec<ServerEndpoint> = cfg
        .fqdns
        .iter()
        .map(|h| ServerEndpoint {
            host: h.clone(),
            port: agent_port,
            http_port,
        })
        .collect();
    servers.extend(cfg.ip_addrs.iter().map(|ip| ServerEndpoint {
        host: ip.to_string(),
        port: agent_port,
        http_port,
    }));
    let api = |e: crate::ApiFailure| ServerError::Internal(e.to_string());
    let mut p = CommunicationProfile {
        version: 0,
        servers,
        protocol: if http_port.is_some() {
            Protocol::Http
        } else {
            Protocol::Https
        },
        // The platform root, and the roots of third-party listener certificates, live or
        // staged (`steward server cert import`).
        trust_anchors_pem: crate::replace::trust_anchors(dir, root_pem),
        gateways: gateway_entries(store).await.map_err(api)?,
    };
    stamp_version(store, &mut p).await.map_err(api)?;
    Ok(p)
}

fn write_addresses(dir: &DataDir, a: &Addresses) -> Result<(), ServerError> {
    let run = dir.run();
    std::fs::create_dir_all(&run).map_err(|e| ServerError::io(&run, e))?;
    let tmp = run.join("addresses.json.tmp");
    let text = serde_json::to_string_pretty(a).map_err(|e| ServerError::Internal(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| ServerError::io(&tmp, e))?;
    // Renamed into place so a reader never sees half a file.
    std::fs::rename(&tmp, dir.addresses()).map_err(|e| ServerError::io(dir.addresses(), e))
}

/// Locks `run/server.lock` for as long as the returned file is open: one server per data
/// directory. The store caches what agents read on the premise that it is the database's only
/// writer (`steward_store`'s cache), so a second server on the same database would serve
/// stale devices, a revoked one among them. The lock is the kernel's, released with the
/// process however it ends.
fn lock_data_dir(dir: &DataDir) -> Result<std::fs::File, ServerError> {
    let run = dir.run();
    std::fs::create_dir_all(&run).map_err(|e| ServerError::io(&run, e))?;
    let path = run.join("server.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServerError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(ServerError::AlreadyRunning(dir.root().to_owned()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(ServerError::io(&path, e)),
    }
}

impl Server {
    /// Checks the configuration (refusing to start on an error), opens the database, binds
    /// the three listeners and starts serving. Returns once everything listens.
    pub async fn start(
        data_dir: &Path,
        overrides: ServerOverrides,
    ) -> Result<RunningServer, ServerError> {
        let dir = DataDir::new(data_dir);
        // Before anything reads the listener certificates: a renewal a crash interrupted is
        // finished (or dropped), so key and certificate on disk match.
        crate::renew::recover(&dir)?;
        let report = check_config(data_dir)?;
        if report.has_errors() {
            return Err(ServerError::CheckFailed(
                report.problems().cloned().collect(),
            ));
        }
        for w in report
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
        {
            tracing::warn!(id = w.id, "{}", w.message);
        }
        let mut cfg = report.config;
        if let Some(a) = overrides.agent_addr {
            cfg.listen.agent = a;
        }
        if let Some(a) = overrides.console_addr {
            cfg.listen.console = a;
        }
        let configured_crl_port = cfg.listen.crl.port();
        if let Some(a) = overrides.crl_addr {
            cfg.listen.crl = a;
        }

        let lock = lock_data_dir(&dir)?;
        let pki = Arc::new(Pki::load(&dir)?);
        let sqlite = Arc::new(SqliteStore::open(&dir.database(&cfg)).await?);
        let started = std::time::Instant::now();
        let cached = sqlite.warm_caches().await?;
        tracing::info!(
            devices = cached,
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "caches filled"
        );
        let store: Arc<dyn Store> = sqlite.clone();
        store
            .ensure_policy(&PolicyRecord {
                name: AGENT_SETTINGS.to_owned(),
                target: "all".to_owned(),
                values: Default::default(),
                updated_at: OffsetDateTime::now_utc().unix_timestamp(),
            })
            .await?;

        let crls = sign_crls(&pki, store.as_ref(), &cfg).await?;
        let listeners = Arc::new(Listeners::load(&dir, &cfg, pki.clone(), &crls)?);
        let agent_tls = listeners.agent_tls.clone();
        // HTTP/2 stream limits depend on whether the peer is a gateway (`http::H2Peer`).
        agent_tls.set_gateway_lookup(store.clone());
        let crl_store = Arc::new(CrlStore::new(&crls));

        let agent_l = bind(cfg.listen.agent, "agent site").await?;
        let console_l = bind(cfg.listen.console, "console").await?;
        let crl_l = bind(cfg.listen.crl, "CRL distribution point").await?;
        // The plain-HTTP agent site, next to the HTTPS one (which gateways, enrollment and
        // the fallback need): only when the configuration asks for it.
        let http_l = match cfg.listen.protocol {
            Protocol::Http => Some(bind(cfg.listen.agent_http, "plain-HTTP agent site").await?),
            Protocol::Https => None,
        };
        let local = |l: &TcpListener, a| {
            l.local_addr()
                .map_err(|e| ServerError::io(format!("{a}"), e))
        };
        let agent_addr = local(&agent_l, cfg.listen.agent)?;
        let console_addr = local(&console_l, cfg.listen.console)?;
        let crl_addr = local(&crl_l, cfg.listen.crl)?;
        let http_addr = match &http_l {
            Some(l) => Some(local(l, cfg.listen.agent_http)?),
            None => None,
        };
        if crl_addr.port() != configured_crl_port {
            tracing::warn!(
                id = "SERVER-CRL-URL-MISMATCH",
                "the CRL listener is on port {} but certificates name {}; clients that check \
                 revocation cannot fetch the CRL",
                crl_addr.port(),
                // The configuration's CRL URL, not this run's.
                {
                    let mut c = cfg.clone();
                    c.listen.crl.set_port(configured_crl_port);
                    c.issuing_crl_url()
                }
            );
        }

        let profile = profile(
            store.as_ref(),
            &cfg,
            &dir,
            agent_addr.port(),
            http_addr.map(|a| a.port()),
            &pki.root_pem,
        )
        .await?;
        let local_token = match std::fs::read_to_string(dir.admin_token()) {
            Ok(t) => Some(t.trim().to_owned()).filter(|t| !t.is_empty()),
            Err(e) => {
                tracing::warn!(path = %dir.admin_token().display(), error = %e, "no local admin token; the CLI on this host must log in");
                None
            }
        };
        let service = Arc::new(
            Service::new(
                store.clone(),
                cfg.clone(),
                pki.clone(),
                profile,
                local_token,
            )
            .await?,
        );
        service.set_forwarded_verifier(
            forwarded_verifier(&pki, &crls)?,
            forwarded_trust(&pki, &crls),
        );
        let http_site = Arc::new(HttpSite::new(
            forwarded_verifier(&pki, &crls)?,
            pki.issuing.cert().clone(),
            listeners.clone(),
        ));
        service.set_issuing_crl(crls.issuing.as_ref());
        service.set_listeners(listeners.clone());
        let (crl_kick, crl_kicks) = tokio::sync::mpsc::channel(16);
        service.set_crl_kick(crl_kick);

        let addresses = Addresses {
            pid: std::process::id(),
            agent: agent_addr,
            console: console_addr,
            crl: crl_addr,
            agent_url: format!("https://{}:{}", cfg.primary_name(), agent_addr.port()),
            console_url: local_url("https", console_addr, cfg.primary_name()),
            crl_url: format!(
                "{}/crl/issuing.crl",
                local_url("http", crl_addr, cfg.primary_name())
            ),
            agent_http: http_addr,
        };
        write_addresses(&dir, &addresses)?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::http::serve_limited(
            agent_l,
            Transport::SwappableTls(agent_tls.clone()),
            crate::agent::router(service.clone()),
            shutdown_rx.clone(),
            "agent site",
            Some(service.admission_arc()),
        ));
        if let (Some(l), Some(a)) = (http_l, http_addr) {
            tracing::info!(
                addr = %a,
                "plain-HTTP agent site listening (signed requests and answers); the HTTPS \
                 agent site {agent_addr} stays up for enrollment, gateways and as the fallback"
            );
            tasks.spawn(serve(
                l,
                Transport::Plain,
                crate::http_site::router(service.clone(), http_site.clone()),
                shutdown_rx.clone(),
                "plain-HTTP agent site",
            ));
        }
        let auth = Arc::new(
            crate::auth::AuthState::new(service.clone())
                .map_err(|e| ServerError::Kerberos(e.to_string()))?,
        );
        let console_router = crate::admin::routes()
            .merge(crate::console::routes())
            .fallback(crate::agent::not_found)
            .method_not_allowed_fallback(crate::agent::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                auth,
                crate::auth::layer,
            ))
            .with_state(service.clone());
        tasks.spawn(serve(
            console_l,
            Transport::SwappableTls(listeners.console_tls.clone()),
            console_router,
            shutdown_rx.clone(),
            "console",
        ));
        tasks.spawn(serve(
            crl_l,
            Transport::Plain,
            // The signed trust bundle lives next to the CRLs: plain HTTP, reachable by an
            // agent whose TLS no longer verifies.
            crate::crl::router(crl_store.clone()).merge(crate::trust::router(service.clone())),
            shutdown_rx.clone(),
            "CRL",
        ));
        tasks.spawn(flush_loop(store.clone(), shutdown_rx.clone()));
        tasks.spawn(crl_loop(
            pki.clone(),
            store.clone(),
            cfg.clone(),
            listeners.clone(),
            crl_store,
            service.clone(),
            http_site,
            crl_kicks,
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::renew::renew_loop(listeners, shutdown_rx.clone()));
        tasks.spawn(session_loop(store.clone(), shutdown_rx));

        tracing::info!(
            agent = %agent_addr, console = %console_addr, crl = %crl_addr,
            agent_http = ?http_addr,
            data_dir = %data_dir.display(), "server started"
        );
        Ok(RunningServer {
            agent_addr,
            console_addr,
            crl_addr,
            data_dir: data_dir.to_owned(),
            addresses,
            service,
            sqlite,
            shutdown_tx,
            tasks,
            _lock: lock,
        })
    }
}

/// Starts the server and serves until SIGINT or SIGTERM, then stops cleanly.
pub async fn run(data_dir: &Path, overrides: ServerOverrides) -> Result<(), ServerError> {
    Server::start(data_dir, overrides)
        .await?
        .run_until_signal()
        .await
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl RunningServer {
    /// The service layer (for the console and in-process tests).
    pub fn service(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// The agent site's URL (first configured name, bound port).
    pub fn agent_url(&self) -> &str {
        &self.addresses.agent_url
    }

    /// The console's URL as reached from this host.
    pub fn console_url(&self) -> &str {
        &self.addresses.console_url
    }

    /// Serves until SIGINT or SIGTERM, then [`RunningServer::shutdown`].
    pub async fn run_until_signal(self) -> Result<(), ServerError> {
        signal().await;
        tracing::info!("signal received; stopping");
        self.shutdown().await
    }

    /// Stops the listeners (open requests are dropped; nothing uncommitted was acknowledged),
    /// writes the last-seen times noted since the last flush, closes the database and removes
    /// `run/addresses.json`.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.shutdown_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
        let flushed = self.sqlite.flush_seen().await;
        self.sqlite.close().await;
        let _ = std::fs::remove_file(DataDir::new(&self.data_dir).addresses());
        let n = flushed?;
        tracing::info!(last_seen_flushed = n, "server stopped");
        Ok(())
    }
}

async fn flush_loop(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SEEN_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = store.flush_seen().await {
                    tracing::warn!(id = "SERVER-DATABASE", error = %e, "last-seen flush failed; retrying at the next one");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn crl_loop(
    pki: Arc<Pki>,
    store: Arc<dyn Store>,
    cfg: Config,
    listeners: Arc<Listeners>,
    crls: Arc<CrlStore>,
    service: Arc<Service>,
    http_site: Arc<HttpSite>,
    mut kicks: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(cfg.crl.resign_interval_secs);
    loop {
        // A revocation asks for new CRLs at once and waits for them (`ack`).
        let ack = tokio::select! {
            () = tokio::time::sleep(every) => None,
            Some(ack) = kicks.recv() => Some(ack),
            _ = shutdown.changed() => return,
        };
        let fresh = match sign_crls(&pki, store.as_ref(), &cfg).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(id = e.id(), error = %e, "re-signing the CRLs failed; the previous ones stay in service");
                continue;
            }
        };
        crls.set(&fresh);
        service.set_issuing_crl(fresh.issuing.as_ref());
        match listeners.set_crls(&fresh) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(id = e.id(), error = %e, "rebuilding the agent-site TLS configuration failed");
            }
        }
        // Agents that gateways vouch for are checked against the same, fresh CRLs.
        match forwarded_verifier(&pki, &fresh) {
            Ok(v) => {
                // Signed plain-HTTP requests are checked against the same, fresh CRLs too.
                http_site.set_verifier(v.clone());
                service.set_forwarded_verifier(v, forwarded_trust(&pki, &fresh));
            }
            Err(e) => {
                tracing::error!(id = e.id(), error = %e, "rebuilding the forwarded-agent verifier failed");
            }
        }
        tracing::debug!("CRLs re-signed");
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

async fn session_loop(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = store.purge_expired_sessions(now).await {
            tracing::warn!(error = %e, "purging expired sessions failed");
        }
    }
}

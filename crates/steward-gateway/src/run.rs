//! `steward gateway run`: the edge listener, the forwarding, the CRL refresh and the reports.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use steward_pki::Thumbprint;
use steward_proto::{AGENT_CERT_HEADER, ApiError, GatewayReport, MAX_AGENT_BODY_BYTES, paths};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::join::{error_chain, provider, refused, roots};
use crate::state::{GatewayConfig, GatewayDir, read_certs, read_key};
use crate::{GatewayError, VERSION};

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest upstream request: above the longest long-poll an agent is configured for.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest CRL accepted.
const MAX_CRL_BYTES: usize = 32 * 1024 * 1024;

/// How `run` behaves; the defaults suit production.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Listen here instead of the configured address (tests bind `127.0.0.1:0`).
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
    /// The bound address.
    pub addr: SocketAddr,
    /// Its configuration.
    pub config: GatewayConfig,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// What every connection and loop shares.
#[derive(Debug)]
struct Shared {
    config: GatewayConfig,
    upstream: reqwest::Client,
    /// Replaced when a fresh CRL arrives; each accepted connection uses the current one.
    edge: RwLock<Arc<ServerConfig>>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Arc<PrivateKeyDer<'static>>,
    anchors_pem: Vec<String>,
    thumbprints: Vec<String>,
    health: Mutex<String>,
    port: u16,
}

impl Shared {
    fn edge(&self) -> Arc<ServerConfig> {
        // Replacing an Arc cannot leave it half-written, so a poisoned lock is still usable.
        self.edge.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_health(&self, h: String) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = h;
    }

    fn health(&self) -> String {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The edge TLS configuration: the gateway's server certificate, and a client certificate
/// required from every agent, chained to the platform root and not revoked by the CRL.
fn edge_config(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    anchors_pem: &[String],
    crl: CertificateRevocationListDer<'static>,
) -> Result<Arc<ServerConfig>, GatewayError> {
    let provider = provider();
    // Only the agent's own certificate is checked against the CRL: the gateway fetches the
    // issuing CA's CRL, which cannot speak for the issuing CA itself.
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(anchors_pem)?),
        provider.clone(),
    )
    .with_crls([crl])
    .only_check_end_entity_revocation()
    .build()
    .map_err(|e| GatewayError::Crypto(format!("the agent certificate verifier: {e}")))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Crypto(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| GatewayError::Crypto(format!("the gateway's server certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
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

impl Gateway {
    /// Loads the identity, fetches the CRL, binds, reports itself once, and starts serving.
    pub async fn start(data_dir: &Path, opts: RunOptions) -> Result<RunningGateway, GatewayError> {
        let dir = GatewayDir::new(data_dir);
        let config = dir.read_config()?;
        let chain_above = read_certs(&dir.chain())?;
        let anchors = std::fs::read_to_string(dir.anchors())
            .map_err(|e| GatewayError::io(dir.anchors(), e))?;
        let anchors_pem = vec![anchors];
        let mut identity = read_certs(&dir.identity_cert())?;
        identity.extend(chain_above.iter().cloned());
        let identity_key = read_key(&dir.identity_key())?;
        let mut server_chain = read_certs(&dir.server_cert())?;
        let thumbprints = vec![Thumbprint::of(&server_chain[0]).sha256_hex()];
        server_chain.extend(chain_above);
        let server_key = Arc::new(read_key(&dir.server_key())?);

        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| GatewayError::Crypto(e.to_string()))?
            .with_root_certificates(roots(&anchors_pem)?)
            .with_client_auth_cert(identity, identity_key)
            .map_err(|e| GatewayError::Crypto(format!("the gateway identity: {e}")))?;
        // One pooled client for every agent: connections to the server are reused.
        let upstream = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(UPSTREAM_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| GatewayError::Crypto(e.to_string()))?;

        // No CRL, no edge: agents are refused rather than let in unchecked.
        let crl = fetch_crl(&upstream, &crl_url(&config)).await?;
        let edge = edge_config(&server_chain, &server_key, &anchors_pem, crl)?;

        let want = opts.listen.unwrap_or(config.listen);
        let listener = TcpListener::bind(want)
            .await
            .map_err(|source| GatewayError::Bind { addr: want, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: want, source })?;

        let shared = Arc::new(Shared {
            config: config.clone(),
            upstream,
            edge: RwLock::new(edge),
            server_chain,
            server_key,
            anchors_pem,
            thumbprints,
            health: Mutex::new("ok".to_owned()),
            port: addr.port(),
        });
        if let Err(e) = report(&shared).await {
            // Serving starts anyway: the periodic report retries, and agents with a profile
            // already naming this gateway can use it meanwhile.
            tracing::warn!(id = e.id(), error = %e, "the first report to the server failed");
        }

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared.clone(), shutdown_rx.clone()));
        tasks.spawn(crl_loop(
            shared.clone(),
            opts.crl_refresh,
            shutdown_rx.clone(),
        ));
        tasks.spawn(report_loop(
            shared.clone(),
            opts.report_interval,
            shutdown_rx,
        ));
        tracing::info!(gateway = %config.gateway_id, listen = %addr, server = %config.server_url, "gateway started");
        Ok(RunningGateway {
            addr,
            config,
            shared,
            shutdown_tx,
            tasks,
        })
    }
}

impl RunningGateway {
    /// Fetches the CRL and rebuilds the edge verifier now (the periodic refresh does the same).
    pub async fn refresh_crl(&self) -> Result<(), GatewayError> {
        refresh_crl(&self.shared).await
    }

    /// Reports itself to the server now.
    pub async fn report(&self) -> Result<(), GatewayError> {
        report(&self.shared).await
    }

    /// Serves until SIGINT or SIGTERM, then stops.
    pub async fn run_until_signal(self) {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("signal received; stopping");
        self.shutdown().await;
    }

    /// Stops listening and drops open connections (the gateway holds no state to save).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn refresh_crl(shared: &Shared) -> Result<(), GatewayError> {
    let outcome = async {
        let crl = fetch_crl(&shared.upstream, &crl_url(&shared.config)).await?;
        edge_config(
            &shared.server_chain,
            &shared.server_key,
            &shared.anchors_pem,
            crl,
        )
    }
    .await;
    match outcome {
        Ok(cfg) => {
            *shared.edge.write().unwrap_or_else(|p| p.into_inner()) = cfg;
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

async fn report(shared: &Shared) -> Result<(), GatewayError> {
    let url = format!("{}{}", shared.config.server_url, paths::GATEWAY_REPORT);
    let resp = shared
        .upstream
        .post(&url)
        .json(&GatewayReport {
            external_name: shared.config.external_name.clone(),
            listen_port: shared.port,
            thumbprints: shared.thumbprints.clone(),
            version: VERSION.to_owned(),
            health: shared.health(),
            previous_ports: Vec::new(),
            trust_anchors_pem: Vec::new(),
            probes: Vec::new(),
        })
        .send()
        .await
        .map_err(|e| GatewayError::Unreachable {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
    if !resp.status().is_success() {
        return Err(refused(&url, resp).await);
    }
    Ok(())
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

async fn report_loop(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = report(&shared).await {
            tracing::warn!(id = e.id(), error = %e, "report to the server failed");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
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
            // Unknown CAs, revoked or expired agent certificates end here.
            tracing::info!(id = "GATEWAY-AGENT-REFUSED", peer = %addr, error = %e, "agent TLS handshake refused");
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
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c.as_ref()))
    else {
        return;
    };
    let Ok(agent_cert) = HeaderValue::from_str(&agent_cert) else {
        return;
    };
    let svc =
        hyper::service::service_fn(move |req| forward(shared.clone(), agent_cert.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!(peer = %addr, error = %e, "agent connection ended with an error");
    }
}

/// A response body fed by a channel: the upstream answer is passed on as it arrives, and an
/// upstream failure mid-answer aborts the agent's connection instead of ending the body early.
#[derive(Debug)]
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn full(
    status: StatusCode,
    body: Bytes,
    content_type: Option<HeaderValue>,
) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::channel(1);
    // The channel has room for this one message; the receiver is alive.
    let _ = tx.try_send(Ok(body));
    let mut resp = Response::new(ChannelBody { rx });
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}

fn api_error(status: StatusCode, id: &str, message: String) -> Response<ChannelBody> {
    let body = serde_json::to_vec(&ApiError {
        id: id.to_owned(),
        message,
    })
    .unwrap_or_default();
    full(
        status,
        Bytes::from(body),
        Some(HeaderValue::from_static("application/json")),
    )
}

/// Forwards one agent request to the server's agent site, with the agent's verified
/// certificate in the identity header, and passes the answer back.
async fn forward(
    shared: Arc<Shared>,
    agent_cert: HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<ChannelBody>, Infallible> {
    let path = req.uri().path();
    // Only the agent site's authenticated routes: enrollment needs no client certificate and
    // happens on the LAN, and nothing else of the server is reachable through the gateway.
    if !path.starts_with("/agent/v1/") || path == paths::ENROLL {
        return Ok(api_error(
            StatusCode::NOT_FOUND,
            "GATEWAY-ROUTE-NOT-FORWARDED",
            format!("{path} is not forwarded by the gateway"),
        ));
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.to_owned());
    let url = format!("{}{path_and_query}", shared.config.server_url);
    let method = req.method().clone();
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let body = match Limited::new(req.into_body(), MAX_AGENT_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Ok(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST-TOO-LARGE",
                format!(
                    "the request body could not be read within {MAX_AGENT_BODY_BYTES} bytes: {e}"
                ),
            ));
        }
    };
    // The identity header is set here, never copied from the agent's request.
    let mut up = shared
        .upstream
        .request(method, &url)
        .header(AGENT_CERT_HEADER, agent_cert)
        .body(body);
    if let Some(ct) = content_type {
        up = up.header(CONTENT_TYPE, ct);
    }
    let mut resp = match up.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = error_chain(&e);
            tracing::warn!(id = "GATEWAY-UPSTREAM-UNREACHABLE", url = %url, error = %reason, "the server did not answer");
            return Ok(api_error(
                StatusCode::BAD_GATEWAY,
                "GATEWAY-UPSTREAM-UNREACHABLE",
                format!("the gateway cannot reach the server at {url}: {reason}"),
            ));
        }
    };
    let status = resp.status();
    let ct = resp.headers().get(CONTENT_TYPE).cloned();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(error_chain(&e)))).await;
                    return;
                }
            }
        }
    });
    let mut out = Response::new(ChannelBody { rx });
    *out.status_mut() = status;
    if let Some(ct) = ct {
        out.headers_mut().insert(CONTENT_TYPE, ct);
    }
    Ok(out)
}

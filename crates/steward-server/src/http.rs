//! Serving: one accept loop per listener, TLS via tokio-rustls, HTTP/1.1 via hyper, routing via
//! axum. Serving each connection ourselves (instead of `axum::serve`) lets the verified client
//! certificate of the TLS session travel with every request as an extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ApiFailure;
use crate::admission::Admission;
use crate::service::PeerCert;
use crate::tls::SwappableConfig;

/// A TLS handshake must finish within this, or the connection is dropped (slow clients must
/// not hold sockets open).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is on the other end of a request: the TCP peer and, on the agent site, the client
/// certificate rustls verified during the handshake. Inserted into every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// The verified client certificate, if one was presented.
    pub cert: Option<Arc<PeerCert>>,
    /// Authentication state of this connection (shared by all its requests), for
    /// `[auth] persist_per_connection`.
    pub conn: Arc<crate::auth::ConnAuth>,
}

impl Peer {
    /// A peer on a new connection.
    pub fn new(addr: SocketAddr, cert: Option<Arc<PeerCert>>) -> Self {
        Self {
            addr,
            cert,
            conn: Arc::default(),
        }
    }
}

/// How a listener speaks.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// Plain HTTP (the CRL distribution point).
    Plain,
    /// TLS with a configuration that can be replaced while serving: new CRLs (agent site), a
    /// renewed or replaced certificate (agent site, console).
    SwappableTls(Arc<SwappableConfig>),
}

/// Reads a JSON body of at most `limit` bytes: 413 `REQUEST-TOO-LARGE` above it, 400
/// `REQUEST-MALFORMED` (and a log line naming the peer) when it is not the expected JSON.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    route: &str,
    who: &str,
) -> Result<T, ApiFailure> {
    let too_large = || {
        tracing::warn!(
            id = "REQUEST-TOO-LARGE",
            route,
            peer = who,
            limit,
            "request body over the limit refused"
        );
        ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST-TOO-LARGE",
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            tracing::warn!(id = "REQUEST-MALFORMED", route, peer = who, error = %e, "request body could not be read");
            return Err(ApiFailure::bad_request(
                "REQUEST-MALFORMED",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        tracing::warn!(id = "REQUEST-MALFORMED", route, peer = who, error = %e, "malformed request body refused");
        ApiFailure::bad_request(
            "REQUEST-MALFORMED",
            format!("the request body is not a valid {route} request: {e}"),
        )
    })
}

/// Accepts connections until `shutdown` turns true, then drops every open connection (all
/// state changes are committed before a response is sent, so an interrupted request loses
/// nothing; the client retries it).
pub(crate) async fn serve(
    listener: TcpListener,
    transport: Transport,
    router: Router,
    shutdown: watch::Receiver<bool>,
    name: &'static str,
) {
    serve_limited(listener, transport, router, shutdown, name, None).await;
}

/// Linux's `EMFILE` and `ENFILE`: this process's, or the system's, open-file limit.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// The pause after a failed `accept` (the connection stays in the kernel's backlog).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause during a long burst of failures.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// [`serve`], with the agent site's admission control: at most `[limits] max_handshakes` TLS
/// handshakes at once (the accept loop does not accept while that many are in progress, so
/// further connections wait in the kernel's backlog rather than in memory), each one counted;
/// and an accept loop that survives running out of file descriptors (one log line per burst,
/// naming the limit; a pause that grows to a second; serving goes on).
pub(crate) async fn serve_limited(
    listener: TcpListener,
    transport: Transport,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
    admission: Option<Arc<Admission>>,
) {
    let permits = admission.as_ref().map(|a| a.handshake_permits());
    // Read now, while a descriptor can still be opened (see `nofile_limit`).
    let _ = crate::admission::nofile_limit();
    let mut conns = JoinSet::new();
    // The burst of accept failures in progress: when it began, how many, the current pause.
    let mut burst: Option<(Instant, u64, Duration)> = None;
    loop {
        let next = async {
            let permit = match &permits {
                Some(p) => p.clone().acquire_owned().await.ok(),
                None => None,
            };
            (permit, listener.accept().await)
        };
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            (permit, accepted) = next => match accepted {
                Ok((tcp, addr)) => {
                    if let Some((since, n, _)) = burst.take() {
                        tracing::info!(
                            listener = name,
                            failures = n,
                            "accepting connections again after {n} failed accept(s) over {:.1} s",
                            since.elapsed().as_secs_f64()
                        );
                    }
                    let tls = match &transport {
                        Transport::Plain => None,
                        Transport::SwappableTls(s) => Some(s.get()),
                    };
                    conns.spawn(connection(
                        tcp,
                        addr,
                        tls,
                        router.clone(),
                        name,
                        permit,
                        admission.clone(),
                    ));
                }
                Err(e) => {
                    drop(permit);
                    if let Some(a) = &admission {
                        a.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let pause = match &mut burst {
                        Some((_, n, pause)) => {
                            *n += 1;
                            *pause = (*pause * 2).min(ACCEPT_PAUSE_MAX);
                            *pause
                        }
                        None => {
                            // Once per burst: the first failure, with the limit when it is one.
                            let fd = matches!(e.raw_os_error(), Some(EMFILE | ENFILE));
                            if fd {
                                tracing::warn!(
                                    id = "SERVER-FD-LIMIT",
                                    listener = name,
                                    error = %e,
                                    open_connections = conns.len(),
                                    "cannot accept connections: out of file descriptors \
                                     (open-files limit: {}); new connections wait in the \
                                     kernel's backlog until some close. Raise the limit \
                                     (LimitNOFILE= in the service unit, ulimit -n)",
                                    crate::admission::nofile_limit()
                                );
                            } else {
                                tracing::warn!(
                                    id = "SERVER-ACCEPT-FAILED",
                                    listener = name,
                                    error = %e,
                                    "accept failed; pausing and serving on"
                                );
                            }
                            burst = Some((Instant::now(), 1, ACCEPT_PAUSE));
                            ACCEPT_PAUSE
                        }
                    };
                    // Pause instead of spinning; the open connections are served meanwhile
                    // by their own tasks.
                    tokio::time::sleep(pause).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    name: &'static str,
    permit: Option<OwnedSemaphorePermit>,
    admission: Option<Arc<Admission>>,
) {
    let _ = tcp.set_nodelay(true);
    let Some(cfg) = tls else {
        drop(permit);
        return http(TokioIo::new(tcp), Peer::new(addr, None), router, name).await;
    };
    let handshake =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp)).await;
    // The handshake is what the bound is for; the connection itself is held on without it.
    drop(permit);
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Unknown CAs, revoked or expired client certificates end here, refused by rustls.
            tracing::info!(listener = name, peer = %addr, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(listener = name, peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    if let Some(a) = &admission {
        a.stats.handshakes.fetch_add(1, Ordering::Relaxed);
    }
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| PeerCert::from_der(c))
        .map(Arc::new);
    http(TokioIo::new(stream), Peer::new(addr, cert), router, name).await;
}

async fn http<I>(io: TokioIo<I>, peer: Peer, router: Router, name: &'static str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(listener = name, peer = %addr, error = %e, "connection ended with an error");
    }
}

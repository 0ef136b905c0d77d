//! Serving: one accept loop per listener, TLS via tokio-rustls, HTTP/1.1 via hyper, routing via
//! axum. Serving each connection ourselves (instead of `axum::serve`) lets the verified client
//! certificate of the TLS session travel with every request as an extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ApiFailure;
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
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
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
                    let tls = match &transport {
                        Transport::Plain => None,
                        Transport::SwappableTls(s) => Some(s.get()),
                    };
                    conns.spawn(connection(tcp, addr, tls, router.clone(), name));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
) {
    let _ = tcp.set_nodelay(true);
    let Some(cfg) = tls else {
        return http(TokioIo::new(tcp), Peer::new(addr, None), router, name).await;
    };
    let stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp)).await {
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

//! Serving: one accept loop per listener, TLS via tokio-rustls, HTTP/1.1 (and, on the agent
//! site, HTTP/2 when ALPN chose it) via hyper, routing via axum. Serving each connection
//! ourselves (instead of `axum::serve`) lets the verified client certificate of the TLS session
//! travel with every request as an extension.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
use steward_store::Store;

/// A TLS handshake must finish within this, or the connection is dropped (slow clients must
/// not hold sockets open).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 stream limit (SETTINGS_MAX_CONCURRENT_STREAMS) of a connection authenticated by an
/// enrolled gateway's identity. Every agent behind it holds a long-poll on it (one stream each,
/// for up to a minute) and checks in over it, so the limit must exceed its whole fleet: 2^18
/// is the 100,000-agent target's long-polls plus as many concurrent check-ins, with room for
/// agents failing over from another gateway. Above it, the gateway queues requests rather
/// than opening another connection, so too small a limit would delay, not refuse. A stream
/// costs the server a task and a few hundred bytes of HTTP/2 state, far less than the
/// connection (socket, TLS buffers) each agent held with HTTP/1.1.
pub(crate) const GATEWAY_MAX_STREAMS: u32 = 262_144;
/// HTTP/2 stream limit of any other peer (an agent's own certificate, enrollment without
/// one): an agent needs two (long-poll and check-in); 100 is the floor RFC 9113 recommends,
/// and it keeps one peer from holding thousands of handlers (and long-polls) on one socket.
pub(crate) const OTHER_MAX_STREAMS: u32 = 100;
/// HTTP/2 keep-alive: a PING after this long without a frame from the peer, and the
/// connection is closed if its answer takes longer than [`H2_PING_TIMEOUT`]. One dead
/// gateway connection strands every long-poll riding it, so it is noticed within 40 s instead
/// of at the kernel's retransmission timeout (minutes).
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// An HTTP/2 connection with no request open for this long is closed (GOAWAY; a request the
/// client already sent completes). For peers other than gateways this is what HTTP/1.1's
/// header-read timeout does for an idle kept-alive connection: an idle socket is not held.
const H2_IDLE: Duration = HEADER_TIMEOUT;
/// The same for a gateway's connection: longer than the gateway's pool idle timeout (reqwest's
/// 90 s), so normally the gateway closes an unused connection first and a GOAWAY never races
/// its next request.
const H2_GATEWAY_IDLE: Duration = Duration::from_secs(300);
/// A connection whose peer could not be classified (the store failed) gets the small limit and
/// is closed gracefully after this, so a gateway reconnects and is classified again instead of
/// being held at the small limit for the connection's whole life.
const H2_RECLASSIFY_AFTER: Duration = Duration::from_secs(60);
/// Connection-level receive window of a gateway's HTTP/2 connection. It is shared by all its
/// streams, and request bodies waiting for the admission queue are not read yet: with hyper's
/// default (1 MiB) a few hundred queued check-ins would stop every upload on the connection.
const GATEWAY_CONN_WINDOW: u32 = 32 * 1024 * 1024;
/// Streams a gateway may reset before the server accepted them, before the connection is
/// closed as abusive (hyper's default is 20: right for one client, but a gateway resets a
/// stream whenever one of its agents hangs up, and a GOAWAY would cut off its whole fleet).
const GATEWAY_MAX_PENDING_RESETS: usize = 4096;

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
                    let (tls, gateways) = match &transport {
                        Transport::Plain => (None, None),
                        Transport::SwappableTls(s) => (Some(s.get()), s.gateway_lookup()),
                    };
                    conns.spawn(connection(
                        tcp,
                        addr,
                        tls,
                        gateways,
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

#[allow(clippy::too_many_arguments)] // one call site, every argument a different thing
async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    gateways: Option<Arc<dyn Store>>,
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
    let session = stream.get_ref().1;
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| PeerCert::from_der(c))
        .map(Arc::new);
    // Only a configuration that offers `h2` (the agent site's) can have negotiated it.
    let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
    let peer = Peer::new(addr, cert);
    if h2 {
        let class = H2Peer::classify(peer.cert.as_deref(), gateways.as_deref()).await;
        return http2(TokioIo::new(stream), peer, router, name, class).await;
    }
    http(TokioIo::new(stream), peer, router, name).await;
}

/// How much of an unread HTTP/2 request body is read after the answer, and for how long.
const DRAIN_MAX_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// An HTTP/2 request body that, dropped before its end (answered without being read: a 503
/// from the admission queue, a 401), is read to its end in the background, within
/// [`DRAIN_MAX_BYTES`] and [`DRAIN_TIME`]. Cut off instead, the stream is reset while the
/// client is still sending, and clients differ on whether the answer then counts: curl
/// reports a framing error instead of the 401 it was sent; and each such reset counts
/// against h2's cap of resets over the connection's life.
struct DrainOnDrop(Option<Incoming>);

impl DrainOnDrop {
    fn new(body: Incoming) -> Self {
        Self(Some(body))
    }
}

impl hyper::body::Body for DrainOnDrop {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.0.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(hyper::body::Body::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.as_ref().map_or_else(
            || hyper::body::SizeHint::with_exact(0),
            hyper::body::Body::size_hint,
        )
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if hyper::body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                let mut read = 0usize;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, |d| d.len());
                    if read > DRAIN_MAX_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
}

/// Who is on the other end of an HTTP/2 connection, as far as its settings go; decided once,
/// after the handshake, from the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum H2Peer {
    /// An enrolled, unrevoked gateway's current or renewed identity.
    Gateway,
    /// Anyone else: an agent's own certificate, or none (enrollment).
    Other,
    /// The look-up failed: treated as `Other`, and closed gracefully after
    /// [`H2_RECLASSIFY_AFTER`] so that it is looked up again.
    Unknown,
}

impl H2Peer {
    /// Looks the certificate up in the gateway registry: one or two indexed reads per HTTP/2
    /// connection (none for HTTP/1.1 ones), where a certificate convention cannot tell:
    /// gateway identities and agent certificates are issued alike (clientAuth, CN = a UUID).
    /// This is `Service::peer_gateway`'s recognition without its side effect (promoting a
    /// renewed identity), which the connection's first request still performs.
    pub(crate) async fn classify(cert: Option<&PeerCert>, gateways: Option<&dyn Store>) -> Self {
        let (Some(cert), Some(store)) = (cert, gateways) else {
            return Self::Other;
        };
        match crate::service::gateway_identity(store, cert).await {
            Ok(Some(_)) => Self::Gateway,
            Ok(None) => Self::Other,
            Err(e) => {
                tracing::warn!(serial = %cert.serial, error = %e, "could not tell whether an HTTP/2 peer is a gateway; serving it with the small stream limit for now");
                Self::Unknown
            }
        }
    }

    /// SETTINGS_MAX_CONCURRENT_STREAMS for this peer.
    pub(crate) fn max_streams(self) -> u32 {
        match self {
            Self::Gateway => GATEWAY_MAX_STREAMS,
            Self::Other | Self::Unknown => OTHER_MAX_STREAMS,
        }
    }

    fn idle(self) -> Duration {
        match self {
            Self::Gateway => H2_GATEWAY_IDLE,
            Self::Other | Self::Unknown => H2_IDLE,
        }
    }
}

/// Requests open on an HTTP/2 connection, and when the last one ended: what its idle timeout
/// is measured from.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    last: std::sync::Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// When the connection will have been idle for `idle`, if nothing starts meanwhile; a
    /// connection with requests open is looked at again `idle` from now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        // A plain instant under the lock: a poisoned one still holds a usable value.
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Acquire) > 0 {
            Instant::now() + idle
        } else {
            last + idle
        }
    }
}

/// Ends one request's share of [`Activity`] when dropped (answered or cancelled).
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves an HTTP/2 connection (agent site, ALPN `h2`) with the same router and `Peer` as
/// HTTP/1.1; each stream is a request, passing admission control (`admission::gate`) on its
/// own exactly as a request on its own connection would.
async fn http2<I>(io: TokioIo<I>, peer: Peer, router: Router, name: &'static str, class: H2Peer)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let activity = Arc::new(Activity::new());
    let counted = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(DrainOnDrop::new);
        req.extensions_mut().insert(peer.clone());
        let guard = counted.begin();
        let answer = router.clone().oneshot(req);
        async move {
            let r = answer.await;
            drop(guard);
            r
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(class.max_streams())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    if class == H2Peer::Gateway {
        builder
            .initial_connection_window_size(GATEWAY_CONN_WINDOW)
            .max_pending_accept_reset_streams(GATEWAY_MAX_PENDING_RESETS)
            // No cap on the streams the server itself resets. Every answer given before its
            // request body was read (a 503 SERVER-BUSY from the admission queue, a refusal)
            // ends with such a reset, and h2 counts them over the connection's whole life:
            // at its default (1,024) a gateway's connection was closed with GOAWAY in the
            // first minute of an overload, failing every long-poll and check-in on it at
            // once (502 to 37,000 agents; BENCHMARKS.md, swarm round 5). The cap guards
            // against a peer provoking resets to exhaust the server (RUSTSEC-2024-0003);
            // this peer is an enrolled gateway authenticated by its certificate.
            .max_local_error_reset_streams(None);
    }
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let reclassify = (class == H2Peer::Unknown).then(|| Instant::now() + H2_RECLASSIFY_AFTER);
    let mut closing = false;
    loop {
        let mut deadline = activity.idle_deadline(class.idle());
        if let Some(r) = reclassify {
            deadline = deadline.min(r);
        }
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(listener = name, peer = %addr, error = %steward_proto::error_chain(&e), "HTTP/2 connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline.into()), if !closing => {
                let now = Instant::now();
                let idle = activity.idle_deadline(class.idle()) <= now;
                if idle || reclassify.is_some_and(|r| r <= now) {
                    // GOAWAY: open streams finish, new ones go to a new connection.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
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
        tracing::debug!(listener = name, peer = %addr, error = %steward_proto::error_chain(&e), "connection ended with an error");
    }
}

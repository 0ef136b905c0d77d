//! Connections as the agent makes them (TCP, rustls, HTTP/1.1 over hyper), spread over many
//! loopback source addresses, with every failure classified.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use steward_agent::net::{HeldReadError, HeldReader};

use crate::BenchError;

/// Largest response body read (the agent's own bound is of the same order).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
const USER_AGENT: &str = concat!("steward-bench/", env!("CARGO_PKG_VERSION"));

/// What went wrong with one connection or request. The resource kinds ([`Self::FdLimit`],
/// [`Self::EphemeralPorts`], [`Self::Memory`]) are named apart because they are limits of the
/// machine running the swarm, not faults of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// TCP connect refused (nothing listening: a server being restarted).
    ConnectRefused,
    /// TCP connect did not complete in time (a full accept queue drops SYNs).
    ConnectTimeout,
    /// No local port left for this source address (EADDRNOTAVAIL).
    EphemeralPorts,
    /// This process's file-descriptor limit (EMFILE) or the system's (ENFILE).
    FdLimit,
    /// The kernel had no memory or buffers for the socket (ENOMEM, ENOBUFS).
    Memory,
    /// Any other TCP connect error.
    ConnectOther,
    /// The TLS handshake did not complete in time.
    TlsTimeout,
    /// The server closed or reset the connection during the TLS handshake.
    TlsClosed,
    /// The TLS handshake failed (an alert, a certificate rejected).
    Tls,
    /// The connection was closed or reset while a request was on it.
    ConnectionClosed,
    /// No complete response in time.
    ResponseTimeout,
    /// The server answered with a non-success HTTP status.
    HttpStatus(u16),
    /// A success status with a body that is not the expected message.
    Protocol,
}

impl ErrorKind {
    /// A short stable label, used as the key of the error counts.
    pub fn label(&self) -> String {
        match self {
            Self::ConnectRefused => "connect refused".into(),
            Self::ConnectTimeout => "connect timeout".into(),
            Self::EphemeralPorts => "ephemeral ports exhausted (EADDRNOTAVAIL)".into(),
            Self::FdLimit => "file-descriptor limit (EMFILE/ENFILE)".into(),
            Self::Memory => "kernel memory (ENOMEM/ENOBUFS)".into(),
            Self::ConnectOther => "connect error".into(),
            Self::TlsTimeout => "TLS handshake timeout".into(),
            Self::TlsClosed => "TLS: closed by server during handshake".into(),
            Self::Tls => "TLS error".into(),
            Self::ConnectionClosed => "connection closed during request".into(),
            Self::ResponseTimeout => "response timeout".into(),
            Self::HttpStatus(s) => format!("HTTP {s}"),
            Self::Protocol => "unexpected response body".into(),
        }
    }

    /// The machine-side limit this failure means, if it is one.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::FdLimit => Some(
                "the file-descriptor limit (RLIMIT_NOFILE; the hard limit can only be raised by a privileged user)",
            ),
            Self::EphemeralPorts => Some(
                "ephemeral ports (net.ipv4.ip_local_port_range per source address; use more --sources)",
            ),
            Self::Memory => Some("kernel memory for sockets"),
            _ => None,
        }
    }
}

/// One failure: its kind and the first words of the underlying error.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The classification.
    pub kind: ErrorKind,
    /// The error as the library reported it.
    pub detail: String,
}

impl Failure {
    fn new(kind: ErrorKind, detail: impl std::fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }
}

fn classify_io(e: &std::io::Error, connecting: bool) -> ErrorKind {
    use rustix::io::Errno;
    match Errno::from_io_error(e) {
        Some(Errno::MFILE | Errno::NFILE) => return ErrorKind::FdLimit,
        Some(Errno::ADDRNOTAVAIL | Errno::ADDRINUSE) => return ErrorKind::EphemeralPorts,
        Some(Errno::NOMEM | Errno::NOBUFS) => return ErrorKind::Memory,
        _ => {}
    }
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
        std::io::ErrorKind::TimedOut if connecting => ErrorKind::ConnectTimeout,
        _ if connecting => ErrorKind::ConnectOther,
        _ => ErrorKind::ConnectionClosed,
    }
}

/// Where the agents connect: one resolved address and the name the certificate must carry.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address connected to.
    pub addr: SocketAddr,
    /// The TLS server name (SNI, certificate check).
    pub name: ServerName<'static>,
    /// The `Host` header.
    pub host_header: String,
}

impl Target {
    /// Resolve `host:port` once (the swarm measures the server, not the resolver).
    pub fn resolve(host: &str, port: u16) -> Result<Self, BenchError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let bad = |detail: String| BenchError::Address {
            addr: format!("{host}:{port}"),
            detail,
        };
        let name = ServerName::try_from(bare.to_owned()).map_err(|e| bad(e.to_string()))?;
        let addr = match bare.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(bare, port))
                .map_err(|e| bad(e.to_string()))?
                // The agent tries the addresses in order; IPv4 first keeps the source spread
                // over 127.0.0.0/8 usable for "localhost".
                .min_by_key(|a| !a.is_ipv4())
                .ok_or_else(|| bad("no address".into()))?,
        };
        let host_header = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        Ok(Self {
            addr,
            name,
            host_header,
        })
    }

    /// From an `https://host:port` URL.
    pub fn from_url(url: &str) -> Result<Self, BenchError> {
        let bad = |detail: &str| BenchError::Address {
            addr: url.to_owned(),
            detail: detail.to_owned(),
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("not an https:// URL"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, 443),
        };
        Self::resolve(host, port)
    }
}

/// Local source addresses for the client sockets. A TCP connection is unique by its 4-tuple,
/// so one source address gives at most `ip_local_port_range` (about 28,000) connections to one
/// server port; spreading over 127.0.0.0/8 (all of it is loopback on Linux) lifts that.
#[derive(Debug, Clone)]
pub struct Sources(Vec<Ipv4Addr>);

impl Sources {
    /// `count` addresses 127.0.1.1, 127.0.1.2, … when the target is on loopback, else none
    /// (the OS picks, as for any remote server).
    pub fn for_target(target: &Target, count: usize) -> Self {
        if !target.addr.ip().is_loopback() || !target.addr.is_ipv4() || count == 0 {
            return Self(Vec::new());
        }
        Self(
            (0..count.min(250 * 250))
                .map(|i| Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8))
                .collect(),
        )
    }

    /// The source address of agent `i`.
    pub fn get(&self, i: usize) -> Option<IpAddr> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(i % self.0.len()).copied().map(IpAddr::V4)
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// None: the OS chooses.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parse PEM certificates.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, BenchError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::Tls(format!("a PEM certificate: {e}")))
}

/// Trust anchors from PEM.
pub fn roots(anchors_pem: &[String]) -> Result<RootCertStore, BenchError> {
    let mut roots = RootCertStore::empty();
    for pem in anchors_pem {
        for c in certs_from_pem(pem)? {
            roots
                .add(c)
                .map_err(|e| BenchError::Tls(format!("a trust anchor: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(BenchError::Tls("no trust anchor".into()));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client configuration as the agent builds it (aws-lc-rs, safe defaults, the platform roots
/// as anchors, its own certificate). `resumption`: keep a small session cache of this
/// agent's own, as a real agent process does (it only ever talks to a few servers).
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, Vec<u8>)>,
    resumption: bool,
) -> Result<Arc<ClientConfig>, BenchError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((chain, key)) => b
            .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .map_err(|e| BenchError::Tls(format!("the agent's certificate and key: {e}")))?,
        None => b.with_no_client_auth(),
    };
    cfg.resumption = if resumption {
        Resumption::in_memory_sessions(4)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

/// Aborts the connection's I/O task when the connection is dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One open HTTP/1.1-over-TLS connection.
#[derive(Debug)]
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host_header: String,
    /// Whether the handshake was full or resumed.
    pub handshake: HandshakeKind,
    /// How long TCP connect + TLS handshake took.
    pub setup: Duration,
    poisoned: bool,
    /// `Retry-After` (seconds) of the last response, when it had one (a 503 `SERVER-BUSY`).
    pub retry_after: Option<Duration>,
    /// The rest of a held check-in's response, still coming (the long-poll it goes on as).
    held: Option<HeldReader>,
    _driver: AbortOnDrop,
}

/// Connect from `source` (or the OS's choice), handshake, and start HTTP/1.1.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Conn, Failure> {
    let start = Instant::now();
    let socket = match target.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| Failure::new(classify_io(&e, true), e))?;
    if let Some(ip) = source {
        // SO_REUSEADDR lets a port whose earlier connection is in TIME_WAIT be bound again;
        // the 4-tuple still differs because the server side of that connection is closed.
        let _ = socket.set_reuseaddr(true);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| Failure::new(classify_io(&e, true), format!("bind {ip}: {e}")))?;
    }
    let tcp = match tokio::time::timeout(timeout, socket.connect(target.addr)).await {
        Err(_) => return Err(Failure::new(ErrorKind::ConnectTimeout, "connect")),
        Ok(Err(e)) => return Err(Failure::new(classify_io(&e, true), e)),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let left = timeout.saturating_sub(start.elapsed());
    let tls = match tokio::time::timeout(
        left,
        TlsConnector::from(config).connect(target.name.clone(), tcp),
    )
    .await
    {
        Err(_) => return Err(Failure::new(ErrorKind::TlsTimeout, "handshake")),
        Ok(Err(e)) => {
            let kind = if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                ErrorKind::Tls
            } else {
                match classify_io(&e, false) {
                    ErrorKind::ConnectionClosed => ErrorKind::TlsClosed,
                    k => k,
                }
            };
            return Err(Failure::new(kind, e));
        }
        Ok(Ok(t)) => t,
    };
    let handshake = tls
        .get_ref()
        .1
        .handshake_kind()
        .unwrap_or(HandshakeKind::Full);
    let setup = start.elapsed();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| Failure::new(ErrorKind::ConnectionClosed, e))?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    Ok(Conn {
        sender,
        host_header: target.host_header.clone(),
        handshake,
        setup,
        poisoned: false,
        retry_after: None,
        held: None,
        _driver: driver,
    })
}

impl Conn {
    /// Whether another request can go on this connection (not while a held check-in's long-poll
    /// is still on it).
    pub fn is_open(&self) -> bool {
        !self.poisoned && !self.sender.is_closed()
    }

    /// Whether a held check-in's long-poll is on this connection (see [`Self::held_rest`]).
    pub fn is_held(&self) -> bool {
        self.held.is_some() && !self.sender.is_closed()
    }

    /// One request, the whole response read (bounded), within `timeout`.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        self.exchange(method, path, body, false, timeout).await
    }

    /// One request; when `held_ok` and the answer is a held check-in
    /// ([`steward_proto::CHECKIN_HELD_CONTENT_TYPE`]), only its first line is read and the
    /// rest is kept for [`Self::held_rest`] ([`Self::is_held`]); otherwise the whole
    /// response is read. Within `timeout`.
    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        held_ok: bool,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        self.held = None;
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host_header)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::new(ErrorKind::Protocol, e))?;
        // Until the exchange completes the connection's state is unknown (as in the agent).
        self.poisoned = true;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| Failure::new(ErrorKind::ConnectionClosed, e))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| Failure::new(ErrorKind::ConnectionClosed, e))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(steward_proto::parse_retry_after);
            let held = held_ok
                && status.is_success()
                && resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
                    v.as_bytes() == steward_proto::CHECKIN_HELD_CONTENT_TYPE.as_bytes()
                });
            if held {
                let mut rest = HeldReader::new(resp.into_body());
                let line = rest.first_line().await.map_err(held_failure)?;
                return Ok::<_, Failure>((status, line, Some(rest), retry_after));
            }
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| Failure::new(ErrorKind::ConnectionClosed, e))?
                .to_bytes();
            Ok::<_, Failure>((status, body, None, retry_after))
        };
        let (status, body, held, retry_after) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| Failure::new(ErrorKind::ResponseTimeout, "no response in time"))??;
        self.retry_after = retry_after;
        // A held answer keeps the connection busy until its rest is read.
        self.poisoned = held.is_some();
        self.held = held;
        Ok((status, body))
    }

    /// The rest of a held check-in's response, read to its end within `timeout`: the wake-up
    /// line, or `None` when the hold ended empty (the long-poll's 204). The connection is free
    /// again after it.
    pub async fn held_rest(&mut self, timeout: Duration) -> Result<Option<Bytes>, Failure> {
        let Some(mut held) = self.held.take() else {
            return Err(Failure::new(
                ErrorKind::Protocol,
                "no held check-in on this connection",
            ));
        };
        let rest = tokio::time::timeout(timeout, held.read_to_end())
            .await
            .map_err(|_| Failure::new(ErrorKind::ResponseTimeout, "no response in time"))?
            .map_err(held_failure)?;
        self.poisoned = false;
        Ok(rest)
    }

    /// POST JSON as a check-in that may be held (`path` carries `wait=SECS`): the answer; the
    /// connection then carries its long-poll if it was held ([`Self::is_held`], read it with
    /// [`Self::held_rest`]). Non-2xx is [`ErrorKind::HttpStatus`].
    pub async fn post_held<Q: Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<R, Failure> {
        self.post(path, body, true, timeout).await
    }

    /// POST JSON, parse a JSON answer; non-2xx is [`ErrorKind::HttpStatus`].
    pub async fn post_json<Q: Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<R, Failure> {
        self.post(path, body, false, timeout).await
    }

    /// POST JSON, a held answer allowed or not (see [`Self::exchange`]), and parse the JSON
    /// answer.
    async fn post<Q: Serialize, R: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Q,
        held_ok: bool,
        timeout: Duration,
    ) -> Result<R, Failure> {
        let bytes = serde_json::to_vec(body).map_err(|e| Failure::new(ErrorKind::Protocol, e))?;
        let (status, body) = self
            .exchange(Method::POST, path, Some(bytes), held_ok, timeout)
            .await?;
        json_answer(status, &body)
    }
}

/// A JSON answer; non-2xx is [`ErrorKind::HttpStatus`].
fn json_answer<R: serde::de::DeserializeOwned>(
    status: StatusCode,
    body: &[u8],
) -> Result<R, Failure> {
    if !status.is_success() {
        return Err(Failure::new(
            ErrorKind::HttpStatus(status.as_u16()),
            String::from_utf8_lossy(body.get(..200).unwrap_or(body)),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Failure::new(ErrorKind::Protocol, e))
}

/// A held answer that could not be read: a closed connection, or a malformed answer.
fn held_failure(e: HeldReadError) -> Failure {
    match e {
        HeldReadError::Body(h) => Failure::new(ErrorKind::ConnectionClosed, h),
        other => Failure::new(ErrorKind::Protocol, other),
    }
}

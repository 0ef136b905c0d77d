//! The gateway's connections to the server's agent site, both mutually authenticated with the
//! gateway's identity:
//!
//! - **the link** that every agent request rides: one HTTP/2 connection, made with hyper
//!   directly ([`Upstream::send`]);
//! - a `reqwest` client for the gateway's own few requests (its report, the CRL, renewals),
//!   where JSON and error handling matter more than the cost of a request.
//!
//! Why agents' requests do not go through `reqwest`: per forwarded request it parsed the URL
//! and went through its redirect and retry layers and hyper-util's pool, about a quarter of
//! the gateway's instructions per request (BENCHMARKS.md, swarm round 13). And a pool that
//! learns only from a handshake's ALPN that the server speaks HTTP/2 opens one connection per
//! waiting request whenever it has none, which is every agent's at once after a server
//! restart (352 to 2,162 handshakes started and given up, round 11). The link makes one
//! connection at a time, and every request that waited for it rides it or shares its failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use steward_pki::Thumbprint;
use steward_proto::error_chain;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::GatewayError;
use crate::join::{provider, roots};
use crate::renew::identity_chain;
use crate::state::{GatewayDir, read_key};

/// HTTP/2 keep-alive of the upstream connections: one dead connection would strand every
/// agent's request on it until the request timeout (minutes, as long-polls are long), so a
/// PING unanswered within `H2_PING_TIMEOUT` closes it, and the next request opens a new one.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Upstream HTTP/2 receive windows: per answer, and for the whole connection (32 answers
/// stalled by slow agents before the others wait). Not adaptive (BDP pings): answers are small
/// JSON on a LAN, and fixed windows keep the memory a connection may buffer known.
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
const H2_CONN_WINDOW: u32 = 32 * 1024 * 1024;
/// TCP connect, TLS handshake and HTTP/2 preface together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an agent's request got no answer from the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// No TCP connection to the agent site (DNS, refused, unreachable).
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS handshake with the agent site failed: its certificate is not one the gateway
    /// trusts, or it refused the gateway's identity.
    #[error("the TLS handshake with {addr}: {source}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// rustls's error, wrapped by tokio-rustls.
        source: std::io::Error,
    },
    /// The agent site did not agree to HTTP/2, which every Steward server offers: something
    /// else answers at that address, or a proxy in between terminates TLS.
    #[error(
        "{addr} did not agree to HTTP/2 (ALPN {alpn}); a Steward server's agent site always \
         does: check that server_url names it and that nothing in between terminates TLS"
    )]
    NotHttp2 {
        /// `host:port`.
        addr: String,
        /// What was negotiated instead (`none` when nothing was).
        alpn: String,
    },
    /// Connecting took longer than its limit (a firewall dropping packets, a server too busy
    /// to complete handshakes).
    #[error("no connection to {addr} within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
    },
    /// The connection or the exchange failed: the server closed the connection (a restart),
    /// reset the request's stream, or did not answer a keep-alive PING.
    #[error("the exchange with the server failed")]
    Exchange(#[source] hyper::Error),
    /// The server did not answer within the gateway's upstream timeout.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// This request waited for a connection attempt that failed; that attempt's failure.
    #[error(transparent)]
    Waited(Arc<LinkError>),
}

/// Where the agent site is.
#[derive(Debug)]
struct Site {
    /// `host:port`, to connect to and for messages.
    addr: String,
    /// The name the server's certificate must bear.
    name: ServerName<'static>,
    /// For every request's URI (HTTP/2 needs its `:authority`).
    authority: Authority,
}

impl Site {
    /// `server_url` of `config` (the gateway's configuration file).
    fn parse(server_url: &str, config: &std::path::Path) -> Result<Self, GatewayError> {
        let bad = |reason: String| GatewayError::Corrupt {
            path: config.to_owned(),
            reason: format!("server_url {server_url:?}: {reason}"),
        };
        let uri: Uri = server_url.parse().map_err(|e| bad(format!("{e}")))?;
        if uri.scheme() != Some(&Scheme::HTTPS) {
            return Err(GatewayError::UpstreamNotHttps(server_url.to_owned()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("no host".to_owned()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| bad(format!("the host is not a DNS name or address: {e}")))?;
        let port = authority.port_u16().unwrap_or(443);
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            addr,
            name,
            authority,
        })
    }
}

/// The identity in use, in both forms.
#[derive(Debug)]
struct Identity {
    /// For the gateway's own requests.
    client: reqwest::Client,
    /// For the link. It offers HTTP/1.1 too, so that a peer speaking only that is named in
    /// [`LinkError::NotHttp2`] rather than refusing the handshake.
    tls: Arc<rustls::ClientConfig>,
    /// SHA-256 of the identity certificate.
    sha: String,
}

impl Identity {
    fn load(
        dir: &GatewayDir,
        anchors_pem: &[String],
        timeout: Duration,
    ) -> Result<Self, GatewayError> {
        let (tls, sha) = identity_tls(dir, anchors_pem)?;
        Ok(Self {
            tls: Arc::new(tls.clone()),
            client: reqwest_client(tls, timeout)?,
            sha,
        })
    }
}

/// Which identity an exchange went with (see [`Upstream::is_current`]); comparing it costs a
/// pointer comparison, not a thumbprint per request.
#[derive(Debug, Clone)]
pub(crate) struct SentWith(Arc<Identity>);

/// The link's connection of the moment.
#[derive(Debug, Clone)]
struct Live {
    send: SendRequest<Full<Bytes>>,
    /// The identity it was made with.
    identity: Arc<Identity>,
}

/// Shared by the running gateway: its identity (rebuilt when the one on disk changed) and
/// the link.
#[derive(Debug)]
pub(crate) struct Upstream {
    site: Site,
    timeout: Duration,
    identity: RwLock<Arc<Identity>>,
    live: Mutex<Option<Live>>,
    /// Held while a connection is being made; holds the failure of the last attempt.
    connecting: tokio::sync::Mutex<Option<Arc<LinkError>>>,
    /// Connection attempts finished so far.
    attempts: AtomicU64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upstream {
    /// The identity on disk and the agent site at `server_url`; no connection is made yet.
    /// `timeout` bounds every exchange, answer included.
    pub(crate) fn new(
        dir: &GatewayDir,
        anchors_pem: &[String],
        server_url: &str,
        timeout: Duration,
    ) -> Result<Arc<Self>, GatewayError> {
        Ok(Arc::new(Self {
            site: Site::parse(server_url, &dir.config())?,
            timeout,
            identity: RwLock::new(Arc::new(Identity::load(dir, anchors_pem, timeout)?)),
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        }))
    }

    /// The client for the gateway's own requests (cheap: reqwest clients share their pool).
    pub(crate) fn client(&self) -> reqwest::Client {
        read(&self.identity).client.clone()
    }

    /// SHA-256 of the identity in use.
    pub(crate) fn thumbprint(&self) -> String {
        read(&self.identity).sha.clone()
    }

    /// Whether `sent` is the identity in use (a renewal may have replaced it since).
    pub(crate) fn is_current(&self, sent: &SentWith) -> bool {
        Arc::ptr_eq(&sent.0, &read(&self.identity))
    }

    /// The longest an exchange may take, answer included.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The absolute URI of `path_and_query` on the agent site (HTTP/2 needs the authority).
    pub(crate) fn uri(&self, path_and_query: PathAndQuery) -> Result<Uri, hyper::http::Error> {
        Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.site.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// Sends an agent's request over the link, connecting first when there is no live
    /// connection. Returns the answer's head (its body follows as it arrives) and the identity
    /// it went with.
    pub(crate) async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, SentWith), LinkError> {
        let mut live = self.connection().await?;
        let resp = live
            .send
            .send_request(req)
            .await
            .map_err(LinkError::Exchange)?;
        Ok((resp, SentWith(live.identity)))
    }

    /// The live connection with the identity in use, or a new one.
    async fn connection(&self) -> Result<Live, LinkError> {
        if let Some(l) = self.current() {
            return Ok(l);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut last_failure = self.connecting.lock().await;
        if let Some(l) = self.current() {
            return Ok(l);
        }
        // An attempt ended while this request waited for it, and failed: its failure is this
        // request's too, rather than one more attempt per waiting request.
        if self.attempts.load(Ordering::Acquire) != seen
            && let Some(e) = &*last_failure
        {
            return Err(LinkError::Waited(e.clone()));
        }
        let identity = read(&self.identity).clone();
        let made = self.connect(&identity).await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match made {
            Ok(send) => {
                *last_failure = None;
                let l = Live { send, identity };
                *lock(&self.live) = Some(l.clone());
                Ok(l)
            }
            Err(e) => {
                let e = Arc::new(e);
                *last_failure = Some(e.clone());
                Err(LinkError::Waited(e))
            }
        }
    }

    /// The connection of the moment, if it is open and made with the identity in use.
    fn current(&self) -> Option<Live> {
        let live = lock(&self.live);
        let l = live.as_ref()?;
        (!l.send.is_closed() && Arc::ptr_eq(&l.identity, &read(&self.identity))).then(|| l.clone())
    }

    async fn connect(&self, identity: &Identity) -> Result<SendRequest<Full<Bytes>>, LinkError> {
        let addr = &self.site.addr;
        let made = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| LinkError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let tls = TlsConnector::from(identity.tls.clone())
                .connect(self.site.name.clone(), tcp)
                .await
                .map_err(|source| LinkError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            let alpn = tls.get_ref().1.alpn_protocol();
            if alpn != Some(b"h2".as_slice()) {
                return Err(LinkError::NotHttp2 {
                    addr: addr.clone(),
                    alpn: alpn.map_or_else(
                        || "none".to_owned(),
                        |a| String::from_utf8_lossy(a).into_owned(),
                    ),
                });
            }
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(true)
                // The connection's receive window is shared by every agent's answer; an agent
                // that reads slowly holds at most a stream window of it.
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .handshake(TokioIo::new(tls))
                .await
                .map_err(LinkError::Exchange)?;
            let addr = addr.clone();
            tokio::spawn(async move {
                // Ends when the server closes it (a restart), a PING goes unanswered, or the
                // identity changed and the last request on it finished.
                match conn.await {
                    Ok(()) => tracing::debug!(server = %addr, "the link to the server closed"),
                    Err(e) => {
                        tracing::info!(server = %addr, error = %error_chain(&e), "the link to the server ended");
                    }
                }
            });
            Ok(send)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, made).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::ConnectTimeout { addr: addr.clone() }),
        }
    }

    /// Rebuilds the identity when `identity.pem` on disk is another certificate than the one
    /// in use (a renewal, by this process or by `steward gateway cert renew`). Requests under
    /// way finish on their connections; new ones use the new identity.
    pub(crate) fn reload(
        &self,
        dir: &GatewayDir,
        anchors_pem: &[String],
    ) -> Result<bool, GatewayError> {
        let on_disk = crate::renew::identity_sha256(dir)?;
        if read(&self.identity).sha == on_disk {
            return Ok(false);
        }
        let fresh = Identity::load(dir, anchors_pem, self.timeout)?;
        tracing::info!(thumbprint = %fresh.sha, "the gateway uses its renewed identity from now on");
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(true)
    }
}

/// The gateway's mutual-TLS client configuration with the identity on disk (ALPN `h2`, then
/// `http/1.1`), and that identity's SHA-256.
fn identity_tls(
    dir: &GatewayDir,
    anchors_pem: &[String],
) -> Result<(rustls::ClientConfig, String), GatewayError> {
    let identity = identity_chain(dir)?;
    let sha = identity
        .first()
        .map(|c| Thumbprint::of(c).sha256_hex())
        .unwrap_or_default();
    let key = read_key(&dir.identity_key())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Crypto(e.to_string()))?
        .with_root_certificates(roots(anchors_pem)?)
        .with_client_auth_cert(identity, key)
        .map_err(|e| GatewayError::Crypto(format!("the gateway identity: {e}")))?;
    // reqwest leaves a preconfigured rustls configuration as it is, so ALPN is set here or not
    // at all.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((tls, sha))
}

fn reqwest_client(
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Result<reqwest::Client, GatewayError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .http2_keep_alive_interval(H2_PING_INTERVAL)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .no_proxy()
        .build()
        .map_err(|e| GatewayError::Crypto(e.to_string()))
}

/// A client for the gateway's own requests with the identity on disk, and that identity's
/// SHA-256 (`steward gateway cert renew`, which runs without the gateway).
pub(crate) fn upstream_client(
    dir: &GatewayDir,
    anchors_pem: &[String],
    timeout: Duration,
) -> Result<(reqwest::Client, String), GatewayError> {
    let (tls, sha) = identity_tls(dir, anchors_pem)?;
    Ok((reqwest_client(tls, timeout)?, sha))
}

#[cfg(test)]
mod tests {
    use super::Site;
    use std::path::Path;

    #[test]
    fn the_server_url_gives_the_address_to_connect_to_and_the_name_to_verify() {
        let cfg = Path::new("gateway.json");
        let s = Site::parse("https://server.example:4726", cfg).unwrap();
        assert_eq!(s.addr, "server.example:4726");
        assert_eq!(s.authority.as_str(), "server.example:4726");
        assert_eq!(s.name.to_str(), "server.example");
        // No port: HTTPS's.
        assert_eq!(
            Site::parse("https://server.example", cfg).unwrap().addr,
            "server.example:443"
        );
        // IPv6: bracketed to connect to, bare as the name the certificate must bear.
        let s = Site::parse("https://[::1]:4726", cfg).unwrap();
        assert_eq!(s.addr, "[::1]:4726");
        assert_eq!(s.name.to_str(), "::1");
    }

    #[test]
    fn a_server_url_that_is_not_https_or_not_a_url_is_refused_by_name() {
        let cfg = Path::new("/data/gateway.json");
        let e = Site::parse("http://server.example:4726", cfg).unwrap_err();
        assert_eq!(e.id(), "GATEWAY-UPSTREAM-NOT-HTTPS", "{e}");
        let e = Site::parse("https://", cfg).unwrap_err();
        assert_eq!(e.id(), "GATEWAY-STATE", "{e}");
        assert!(
            e.to_string().starts_with("/data/gateway.json: server_url"),
            "{e}"
        );
        let e = Site::parse("not a url at all", cfg).unwrap_err();
        assert_eq!(e.id(), "GATEWAY-STATE", "{e}");
    }
}

//! Reaching the server: resolve, connect, TLS (trusting only the profile's anchors), HTTP/1.1 —
//! and when any step fails, a [`Fault`] that names the step and carries the evidence.
//!
//! Classification follows `steward-probe`: the stage (DNS, TCP, TLS, HTTP) decides the family,
//! and for TLS the rustls `CertificateError` decides the event (UnknownIssuer → untrusted,
//! Expired/NotValidYet → expired, NotValidForName → name mismatch, Revoked → revoked). The
//! certificate the server presented is recorded by a wrapping verifier so a failure can quote
//! its subject, issuer and dates: the first thing an administrator needs after a renewal.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use steward_pki::{CertFacts, OffsetDateTime};
use steward_proto::{
    AgentError, ApiError, CommunicationProfile, FailureKind, GatewayEntry, ServerEndpoint, WakeUp,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::events::ids;

/// Largest response body read from the server (a configuration with its profile is a few KB;
/// the bound keeps a broken or hostile peer from exhausting the agent's memory).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// The User-Agent sent with every request, so server logs show the agent version.
pub const USER_AGENT: &str = concat!("steward-agent/", env!("CARGO_PKG_VERSION"));

/// Per-step time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Name resolution.
    pub resolve: Duration,
    /// Each TCP connection attempt.
    pub connect: Duration,
    /// The TLS handshake.
    pub handshake: Duration,
    /// A request (other than a long-poll) until its whole response is read.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            resolve: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(15),
            request: Duration::from_secs(60),
        }
    }
}

/// A communication profile the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// No server is listed.
    #[error("the profile lists no server")]
    NoServers,
    /// A server entry is unusable.
    #[error("server {index} of the profile is unusable: {reason}")]
    BadServer {
        /// Position (1-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// No trust anchor is listed.
    #[error("the profile has no trust anchor")]
    NoTrustAnchors,
    /// A trust anchor is not a usable CA certificate.
    #[error("trust anchor {index} of the profile is not a usable certificate: {reason}")]
    BadTrustAnchor {
        /// Position (1-based).
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Check that a profile can be used: servers that can be dialled, trust anchors that parse.
pub fn check_profile(p: &CommunicationProfile) -> Result<(), ProfileError> {
    if p.servers.is_empty() {
        return Err(ProfileError::NoServers);
    }
    for (i, s) in p.servers.iter().enumerate() {
        let bad = |reason: String| ProfileError::BadServer {
            index: i + 1,
            reason,
        };
        if s.port == 0 || s.http_port == Some(0) {
            return Err(bad(format!("{}: port 0", s.host)));
        }
        server_name(&s.host).map_err(|e| bad(format!("{:?}: {e}", s.host)))?;
    }
    parse_anchors(&p.trust_anchors_pem).map(|_| ())
}

/// The trust anchors of a profile as DER certificates.
pub fn parse_anchors(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, ProfileError> {
    if pems.is_empty() {
        return Err(ProfileError::NoTrustAnchors);
    }
    let mut out = Vec::new();
    for (i, text) in pems.iter().enumerate() {
        let bad = |reason: String| ProfileError::BadTrustAnchor {
            index: i + 1,
            reason,
        };
        let blocks = pem::parse_many(text).map_err(|e| bad(format!("bad PEM: {e}")))?;
        let certs: Vec<_> = blocks.iter().filter(|b| b.tag() == "CERTIFICATE").collect();
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE section".to_owned()));
        }
        for b in certs {
            CertFacts::from_der(b.contents()).map_err(|e| bad(format!("not X.509: {e}")))?;
            let mut probe = RootCertStore::empty();
            let der = CertificateDer::from(b.contents().to_vec());
            probe
                .add(der.clone())
                .map_err(|e| bad(format!("not usable as a trust anchor: {e}")))?;
            out.push(der);
        }
    }
    Ok(out)
}

/// The roots an agent accepts for `gateway`: the profile's, then the gateway's own extra ones.
pub fn gateway_anchors(profile: &CommunicationProfile, gateway: &GatewayEntry) -> Vec<String> {
    let mut all = profile.trust_anchors_pem.clone();
    all.extend(gateway.trust_anchors_pem.iter().cloned());
    all
}

/// PEM text → DER certificates (the client certificate and its chain).
pub fn parse_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("bad PEM: {e}"))?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err("no CERTIFICATE section".to_owned());
    }
    Ok(certs)
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_owned()).map_err(|e| format!("not a host name: {e}"))
}

/// The agent's certificate and key, presented on every agent route but enrollment.
#[derive(Debug)]
pub struct ClientIdentity {
    /// Leaf first, then the chain above it.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// The stored identity cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate (or chain) is not readable.
    #[error("the client certificate is unreadable: {0}")]
    Certificate(String),
    /// The key is not readable.
    #[error("the private key is unreadable: {0}")]
    Key(String),
    /// The key is not the certificate's.
    #[error("the private key does not belong to the client certificate")]
    Mismatch,
}

impl ClientIdentity {
    /// Build from PEM texts, checking that the key belongs to the certificate.
    pub fn from_pem(
        cert_pem: &str,
        chain_pem: &[String],
        key_pem: &str,
    ) -> Result<Self, IdentityError> {
        let mut chain = parse_certs(cert_pem).map_err(IdentityError::Certificate)?;
        chain.truncate(1);
        for c in chain_pem {
            chain.extend(parse_certs(c).map_err(IdentityError::Certificate)?);
        }
        let block = pem::parse(key_pem).map_err(|e| IdentityError::Key(e.to_string()))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(IdentityError::Key(format!(
                "a {} section where a PKCS#8 PRIVATE KEY was expected",
                block.tag()
            )));
        }
        let key = PrivateKeyDer::Pkcs8(block.into_contents().into());
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Certificate("empty".to_owned()))?;
        let facts = CertFacts::from_der(leaf).map_err(IdentityError::Certificate)?;
        match steward_pki::key_matches_cert(&key, &facts.spki_der) {
            Ok(true) => Ok(Self { chain, key }),
            Ok(false) => Err(IdentityError::Mismatch),
            Err(e) => Err(IdentityError::Key(e)),
        }
    }
}

/// The TLS client could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// The profile is unusable.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// rustls refused the client certificate or key.
    #[error("the client certificate cannot be used: {0}")]
    Identity(String),
    /// rustls refused the verifier settings (a CRL that does not parse).
    #[error("the TLS verifier cannot be built: {0}")]
    Verifier(String),
}

/// What a server presented, kept for the evidence of a failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// SANs as `DNS:x` / `IP:y`.
    pub names: Vec<String>,
}

impl Presented {
    fn of(der: &[u8]) -> Option<Self> {
        let f = CertFacts::from_der(der).ok()?;
        Some(Self {
            subject: f.subject.clone(),
            issuer: f.issuer.clone(),
            not_before: f.not_before,
            not_after: f.not_after,
            names: f.sans.iter().flatten().map(ToString::to_string).collect(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned slot only means a callback panicked mid-record; the evidence is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Verifies exactly as rustls's WebPKI verifier does, and remembers the leaf it was shown when
/// that verification fails.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Option<Presented>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if verdict.is_err() {
            *lock(&self.seen) = Presented::of(end_entity);
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Opens TLS connections to the servers of one profile. Rebuilt when the profile changes.
///
/// One connection at a time: the presented-certificate evidence is a single slot, which is
/// all the agent (strictly sequential) needs.
#[derive(Debug, Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    seen: Arc<Mutex<Option<Presented>>>,
    anchors: usize,
    /// Signs plain-HTTP requests and verifies their answers (with an identity only).
    http: Option<Arc<crate::signing::HttpSigner>>,
    /// Time limits.
    pub timeouts: Timeouts,
}

impl Connector {
    /// A connector trusting only `profile`'s anchors, presenting `identity` when given (none
    /// for enrollment), checking server certificates against `crls` when any are given.
    pub fn new(
        profile: &CommunicationProfile,
        identity: Option<ClientIdentity>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsSetupError> {
        Self::with_anchors(&profile.trust_anchors_pem, identity, crls)
    }

    /// A connector for one gateway of `profile`: it trusts the profile's anchors and the
    /// gateway's own extra roots (a third-party certificate bound on that gateway only). The
    /// thumbprint check ([`Connector::connect_gateway`]) still decides whether it is that
    /// gateway, so an extra root never widens trust beyond the listed certificates.
    pub fn for_gateway(
        profile: &CommunicationProfile,
        gateway: &GatewayEntry,
        identity: Option<ClientIdentity>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsSetupError> {
        Self::with_anchors(&gateway_anchors(profile, gateway), identity, crls)
    }

    /// A connector trusting exactly `anchors_pem`.
    pub fn with_anchors(
        anchors_pem: &[String],
        identity: Option<ClientIdentity>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, TlsSetupError> {
        let anchors = parse_anchors(anchors_pem)?;
        let mut roots = RootCertStore::empty();
        let count = anchors.len();
        for a in anchors {
            roots
                .add(a)
                .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !crls.is_empty() {
            // The agent is given CRLs for the issuing CA it cares about, not for every CA of
            // the chain: judge the server's own certificate, and do not fail on CAs no CRL
            // covers.
            builder = builder
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = builder
            .build()
            .map_err(|e| TlsSetupError::Verifier(e.to_string()))?;
        let seen = Arc::new(Mutex::new(None));
        // Plain HTTP (`protocol: http`): the same key signs requests, the same verifier
        // judges the certificate that signs the answers.
        let http = identity.as_ref().and_then(|id| {
            crate::signing::HttpSigner::new(&id.chain, &id.key, inner.clone())
                .map_err(|e| tracing::warn!(id = ids::IDENTITY_INVALID, "plain HTTP unusable: {e}"))
                .ok()
                .map(Arc::new)
        });
        let verifier = Arc::new(RecordingVerifier {
            inner,
            seen: seen.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Verifier(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| TlsSetupError::Identity(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            config: Arc::new(config),
            seen,
            anchors: count,
            http,
            timeouts: Timeouts::default(),
        })
    }

    /// Connect to a gateway of the profile and check that the certificate it presented
    /// (already verified against this connector's anchors) is one the profile lists for it.
    pub async fn connect_gateway(&self, gateway: &GatewayEntry) -> Result<Connection, Fault> {
        let conn = self
            .connect(&ServerEndpoint {
                host: gateway.host.clone(),
                port: gateway.port,
                http_port: None,
            })
            .await?;
        let presented = conn.peer_sha256().unwrap_or_default();
        if !gateway
            .thumbprints
            .iter()
            .any(|t| t.eq_ignore_ascii_case(presented))
        {
            return Err(Fault::GatewayThumbprint {
                gateway: gateway.name.clone(),
                addr: gateway.authority(),
                presented: presented.to_owned(),
                expected: gateway.thumbprints.join(", "),
            });
        }
        Ok(conn)
    }

    /// Resolve, connect and handshake with `server`.
    pub async fn connect(&self, server: &ServerEndpoint) -> Result<Connection, Fault> {
        let base_url = server.base_url();
        let name = server_name(&server.host).map_err(|reason| Fault::TlsFailed {
            addr: base_url.clone(),
            detail: reason,
        })?;
        let addrs = resolve(&server.host, server.port, self.timeouts.resolve).await?;
        let (tcp, addr) = connect_any(&server.host, &addrs, self.timeouts.connect).await?;
        // Nagle only delays our small request/response exchanges.
        let _ = tcp.set_nodelay(true);
        let shown = if server
            .host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok()
        {
            addr.to_string()
        } else {
            format!("{} ({addr})", host_header(server))
        };
        *lock(&self.seen) = None;
        let connector = TlsConnector::from(self.config.clone());
        let start = Instant::now();
        let tls = match tokio::time::timeout(
            self.timeouts.handshake,
            connector.connect(name.clone(), tcp),
        )
        .await
        {
            Err(_) => {
                return Err(Fault::Timeout {
                    stage: "TLS handshake",
                    addr: shown,
                    after_ms: elapsed_ms(start),
                });
            }
            Ok(Err(e)) => {
                let seen = lock(&self.seen).take();
                return Err(classify_tls_io(&shown, &name, &e, seen, self.anchors));
            }
            Ok(Ok(tls)) => tls,
        };
        let peer_sha256 = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| steward_pki::Thumbprint::of(c).sha256_hex());
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| classify_hyper(&shown, &name, &e))?;
        // The connection future does the socket I/O and must stop when the Connection is
        // dropped, rather than linger holding the socket.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok(Connection {
            sender,
            host_header: host_header(server),
            base_url,
            shown,
            name,
            poisoned: false,
            peer_sha256,
            http: None,
            retry_after: None,
            held: None,
            _driver: driver,
        })
    }
}

impl Connector {
    /// Connect to `server`'s plain-HTTP agent site (its `http_port`, `protocol: http`). No
    /// TLS: every request on it is signed with the client certificate's key and every answer
    /// must be signed by the agent site ([`crate::signing`]). Never used for gateways.
    pub async fn connect_http(&self, server: &ServerEndpoint) -> Result<Connection, Fault> {
        let url = server.http_url().unwrap_or_else(|| server.base_url());
        let Some(port) = server.http_port else {
            return Err(Fault::ConnectionFailed {
                addr: url,
                reason: "the profile names no plain-HTTP port for this server".to_owned(),
            });
        };
        let Some(signer) = self.http.clone() else {
            return Err(Fault::ConnectionFailed {
                addr: url,
                reason: "no identity to sign plain-HTTP requests with".to_owned(),
            });
        };
        let name = server_name(&server.host).map_err(|reason| Fault::ConnectionFailed {
            addr: url.clone(),
            reason,
        })?;
        let addrs = resolve(&server.host, port, self.timeouts.resolve).await?;
        let (tcp, addr) = connect_any(&server.host, &addrs, self.timeouts.connect).await?;
        let _ = tcp.set_nodelay(true);
        let plain = ServerEndpoint {
            host: server.host.clone(),
            port,
            http_port: Some(port),
        };
        let shown = if server
            .host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok()
        {
            format!("http://{addr}")
        } else {
            format!("http://{} ({addr})", host_header(&plain))
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| classify_hyper(&shown, &name, &e))?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok(Connection {
            sender,
            host_header: host_header(&plain),
            base_url: url,
            shown,
            name,
            poisoned: false,
            peer_sha256: None,
            retry_after: None,
            http: Some(signer),
            held: None,
            _driver: driver,
        })
    }
}

fn host_header(s: &ServerEndpoint) -> String {
    if s.host.contains(':') && !s.host.starts_with('[') {
        format!("[{}]:{}", s.host, s.port)
    } else {
        format!("{}:{}", s.host, s.port)
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, Fault> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let start = Instant::now();
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((bare, port)))
        .await
        .map_err(|_| Fault::Timeout {
            stage: "name resolution",
            addr: format!("{bare}:{port}"),
            after_ms: elapsed_ms(start),
        })?
        .map_err(|e| Fault::Dns {
            host: bare.to_owned(),
            reason: e.to_string(),
        })?;
    let addrs: Vec<SocketAddr> = found.collect();
    if addrs.is_empty() {
        return Err(Fault::Dns {
            host: bare.to_owned(),
            reason: "the resolver returned no addresses".to_owned(),
        });
    }
    Ok(addrs)
}

async fn connect_any(
    host: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Fault> {
    let mut last = Fault::ConnectionFailed {
        addr: host.to_owned(),
        reason: "no addresses to connect to".to_owned(),
    };
    // The name as the profile spells it, with the address it resolved to: an administrator
    // searching the log knows the name, the firewall knows the address.
    let is_literal = host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok();
    for &sock in addrs {
        let addr = if is_literal {
            sock.to_string()
        } else {
            format!("{host}:{} ({sock})", sock.port())
        };
        let start = Instant::now();
        match tokio::time::timeout(timeout, TcpStream::connect(sock)).await {
            Ok(Ok(s)) => return Ok((s, sock)),
            Ok(Err(e)) => {
                last = match e.kind() {
                    io::ErrorKind::ConnectionRefused => Fault::Refused { addr },
                    io::ErrorKind::TimedOut => Fault::Timeout {
                        stage: "TCP connect",
                        addr,
                        after_ms: elapsed_ms(start),
                    },
                    _ => Fault::ConnectionFailed {
                        addr,
                        reason: e.to_string(),
                    },
                }
            }
            Err(_) => {
                last = Fault::Timeout {
                    stage: "TCP connect",
                    addr,
                    after_ms: elapsed_ms(start),
                }
            }
        }
    }
    Err(last)
}

/// An open HTTP/1.1-over-TLS connection to one server. Requests go one at a time.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host_header: String,
    base_url: String,
    shown: String,
    name: ServerName<'static>,
    poisoned: bool,
    /// SHA-256 (upper-case hex) of the certificate the peer presented.
    peer_sha256: Option<String>,
    /// Plain HTTP: requests are signed and answers verified with this.
    http: Option<Arc<crate::signing::HttpSigner>>,
    /// `Retry-After` of the last response (seconds form), if it had one.
    retry_after: Option<Duration>,
    /// The rest of a held check-in's response, still to come: the long-poll it goes on as
    /// (see [`Connection::post_checkin_held`]).
    held: Option<HeldRest>,
    _driver: AbortOnDrop,
}

/// What is left of a held check-in's response, and the names its faults are reported with.
#[derive(Debug)]
struct HeldRest {
    reader: HeldReader,
    shown: String,
    name: ServerName<'static>,
    url: String,
}

/// Reads a held check-in's answer ([`steward_proto::CHECKIN_HELD_CONTENT_TYPE`]) from its
/// body: the check-in's line as soon as it is in, the rest when the hold ends. Bounded by
/// [`MAX_RESPONSE_BYTES`] as any answer. The swarm benchmark reads held answers with it too.
#[derive(Debug)]
pub struct HeldReader {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

/// Why a held check-in's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeldReadError {
    /// The connection failed under the body.
    #[error("error reading a body from connection: {0}")]
    Body(#[source] hyper::Error),
    /// The answer grew past [`MAX_RESPONSE_BYTES`].
    #[error("the response is too large: a held check-in past {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The body ended before the check-in's line did.
    #[error("a held check-in's answer ended before its first line did")]
    Truncated,
}

impl HeldReader {
    /// A reader of `body`, nothing read yet.
    pub fn new(body: hyper::body::Incoming) -> Self {
        Self {
            body,
            buf: Vec::new(),
        }
    }

    /// Reads up to the first newline: the check-in's answer. What came after it stays.
    pub async fn first_line(&mut self) -> Result<Bytes, HeldReadError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Bytes::from(line));
            }
            if !self.more().await? {
                return Err(HeldReadError::Truncated);
            }
        }
    }

    /// Reads to the end: what remains (trimmed), or `None` when nothing does (the hold ended
    /// empty).
    pub async fn read_to_end(&mut self) -> Result<Option<Bytes>, HeldReadError> {
        while self.more().await? {}
        let rest = self.buf.trim_ascii();
        Ok((!rest.is_empty()).then(|| Bytes::copy_from_slice(rest)))
    }

    /// One more data frame into the buffer; `false` at the end.
    async fn more(&mut self) -> Result<bool, HeldReadError> {
        loop {
            match self.body.frame().await {
                None => return Ok(false),
                Some(Err(e)) => return Err(HeldReadError::Body(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if self.buf.len() + data.len() > MAX_RESPONSE_BYTES {
                        return Err(HeldReadError::TooLarge);
                    }
                    self.buf.extend_from_slice(&data);
                    return Ok(true);
                }
            }
        }
    }
}

impl Connection {
    /// `https://host:port` of the server.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `host:port` as the profile names it.
    pub fn host_port(&self) -> &str {
        &self.host_header
    }

    /// SHA-256 (upper-case hex) of the certificate the peer presented (already verified
    /// against the profile's anchors); a gateway's is checked against the profile too.
    pub fn peer_sha256(&self) -> Option<&str> {
        self.peer_sha256.as_deref()
    }

    /// Whether another request can be sent on this connection (not while a held check-in's
    /// long-poll is on it).
    pub fn is_open(&self) -> bool {
        !self.poisoned && !self.sender.is_closed()
    }

    /// Whether the last check-in goes on as a long-poll on this connection (read its answer
    /// with [`Connection::held_rest`]).
    pub fn is_held(&self) -> bool {
        self.held.is_some() && !self.sender.is_closed()
    }

    /// Send one request and read the whole response (bounded), within `timeout`.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Fault> {
        self.exchange(method, path_and_query, body, false, timeout)
            .await
    }

    /// One request. With `held_ok`, an answer that is a held check-in
    /// ([`steward_proto::CHECKIN_HELD_CONTENT_TYPE`]) is read up to its first line only, and
    /// its rest kept for [`Connection::held_rest`]; any other answer is read whole (bounded).
    /// Within `timeout`.
    async fn exchange(
        &mut self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        held_ok: bool,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Fault> {
        self.held = None;
        let url = format!("{}{}", self.base_url, path_and_query);
        let method_name = method.as_str().to_owned();
        let method_name = method_name.as_str();
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.host_header)
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let body = Bytes::from(body.unwrap_or_default());
        // Plain HTTP: the signature stands in for the client certificate of mutual TLS.
        let signed = match &self.http {
            Some(s) => {
                let signed =
                    s.sign(method_name, path_and_query, &body)
                        .map_err(|e| Fault::Protocol {
                            url: url.clone(),
                            detail: format!("cannot sign the request: {e}"),
                        })?;
                for (k, v) in &signed.headers {
                    builder = builder.header(*k, v);
                }
                Some(signed.nonce)
            }
            None => None,
        };
        let request = builder.body(Full::new(body)).map_err(|e| Fault::Protocol {
            url: url.clone(),
            detail: format!("cannot build the request: {e}"),
        })?;
        // Until the exchange completes the connection is in an unknown state: if this future is
        // dropped or fails half-way, it must not be reused.
        self.poisoned = true;
        let start = Instant::now();
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| classify_hyper(&self.shown, &self.name, &e))?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| classify_hyper(&self.shown, &self.name, &e))?;
            let status = response.status();
            let retry_after = retry_after(response.headers());
            // Never over plain HTTP: a signature covers a whole answer, which a held one is not
            // (the agent does not ask there, and the server does not hold there).
            let held = held_ok
                && signed.is_none()
                && status.is_success()
                && response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| {
                        v.as_bytes() == steward_proto::CHECKIN_HELD_CONTENT_TYPE.as_bytes()
                    });
            if held {
                let mut rest = HeldRest {
                    reader: HeldReader::new(response.into_body()),
                    shown: self.shown.clone(),
                    name: self.name.clone(),
                    url: url.clone(),
                };
                let line = rest.first_line().await?;
                return Ok::<_, Fault>((status, line, retry_after, Some(rest)));
            }
            let answer_headers = signed.as_ref().map(|_| response.headers().clone());
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    match e.downcast::<hyper::Error>() {
                        Ok(h) => classify_hyper(&self.shown, &self.name, &h),
                        // The only other error Limited produces is its length limit.
                        Err(other) => Fault::Protocol {
                            url: url.clone(),
                            detail: format!("the response is too large: {other}"),
                        },
                    }
                })?
                .to_bytes();
            // Plain HTTP: nothing in an answer is believed before the agent site's signature
            // over it (bound to this request's nonce) and its certificate chain verify.
            if let (Some(nonce), Some(headers), Some(s)) = (&signed, &answer_headers, &self.http) {
                s.verify_response(nonce, status.as_u16(), headers, &body, &self.name)
                    .map_err(|detail| Fault::HttpResponseUnverified {
                        url: url.clone(),
                        detail,
                    })?;
            }
            Ok::<_, Fault>((status, body, retry_after, None))
        };
        let (status, body, retry_after, held) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| self.response_timeout(start))??;
        // A held answer keeps the connection busy until its rest is read.
        self.poisoned = held.is_some();
        self.held = held;
        self.retry_after = retry_after;
        Ok((status, body))
    }

    /// The rest of a held check-in's response, read to its end within `timeout`: the wake-up
    /// when there was work within the hold, `None` when it ended empty (the long-poll's 204).
    /// The connection is free for the next request after it.
    pub async fn held_rest(&mut self, timeout: Duration) -> Result<Option<WakeUp>, Fault> {
        let Some(mut rest) = self.held.take() else {
            return Err(Fault::Protocol {
                url: format!("{}{}", self.base_url, steward_proto::paths::CHECKIN),
                detail: "no held check-in on this connection".to_owned(),
            });
        };
        let start = Instant::now();
        let line = tokio::time::timeout(timeout, rest.read_to_end())
            .await
            .map_err(|_| self.response_timeout(start))??;
        self.poisoned = false;
        match line {
            None => Ok(None),
            Some(l) => serde_json::from_slice(&l)
                .map(Some)
                .map_err(|e| Fault::Protocol {
                    url: rest.url,
                    detail: format!(
                        "a held check-in's long-poll answered what is not a wake-up: {e}"
                    ),
                }),
        }
    }

    /// POST a check-in that may go on as the long-poll after it (`path` carries `wait=SECS`,
    /// see [`steward_proto::CHECKIN_HELD_CONTENT_TYPE`]): its answer; the connection then
    /// carries that long-poll if the server held it ([`Connection::is_held`]). Servers from
    /// before it answer whole, as to [`Connection::post_json`].
    pub async fn post_checkin_held<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<R, Fault> {
        self.post(path, body, true, timeout).await
    }

    /// No (whole) answer within the time given, counted from `start`.
    fn response_timeout(&self, start: Instant) -> Fault {
        Fault::Timeout {
            stage: "HTTP response",
            addr: self.shown.clone(),
            after_ms: elapsed_ms(start),
        }
    }

    /// The `Retry-After` of the last response, when it carried one (a 503 `SERVER-BUSY`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// POST `body` as JSON and parse a JSON answer; non-2xx answers become
    /// [`Fault::ServerRejected`] with the server's [`ApiError`].
    pub async fn post_json<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Q,
        timeout: Duration,
    ) -> Result<R, Fault> {
        self.post(path, body, false, timeout).await
    }

    /// POST `body` as JSON, a held answer allowed or not (see [`Connection::exchange`]), and
    /// parse the JSON answer.
    async fn post<Q: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &Q,
        held_ok: bool,
        timeout: Duration,
    ) -> Result<R, Fault> {
        let url = format!("{}{}", self.base_url, path);
        let bytes = serde_json::to_vec(body).map_err(|e| Fault::Protocol {
            url: url.clone(),
            detail: format!("cannot encode the request: {e}"),
        })?;
        let (status, body) = self
            .exchange(Method::POST, path, Some(bytes), held_ok, timeout)
            .await?;
        json_answer(&url, status, &body)
    }

    /// Long-poll the wait route: `Some` when the server has work (tasks, configuration),
    /// `None` when its long-poll period ended without any.
    pub async fn wait(
        &mut self,
        config_version: u64,
        timeout: Duration,
    ) -> Result<Option<WakeUp>, Fault> {
        self.wait_for(config_version, timeout, timeout).await
    }

    /// [`Connection::wait`], telling the server to answer within `wait` and listening for
    /// `timeout` (a little longer, so a late answer does not cost the connection).
    pub async fn wait_for(
        &mut self,
        config_version: u64,
        wait: Duration,
        timeout: Duration,
    ) -> Result<Option<WakeUp>, Fault> {
        // `wait`: how long this agent listens, so the server answers (204) before then and
        // the connection stays usable for the next check-in (servers before it ignore it).
        // `tasks=carry`: pending tasks come in the wake-up itself, without a check-in for them.
        let path = format!(
            "{}?config_version={config_version}&wait={}&{}",
            steward_proto::paths::WAIT,
            wait.as_secs(),
            steward_proto::WAIT_CARRY_TASKS
        );
        let url = format!("{}{}", self.base_url, path);
        let (status, body) = self.request(Method::GET, &path, None, timeout).await?;
        match status {
            StatusCode::NO_CONTENT => Ok(None),
            s if s.is_success() => {
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| Fault::Protocol {
                        url,
                        detail: format!("HTTP {s} with a body that is not a wake-up: {e}"),
                    })
            }
            s => Err(rejected(&url, s, &body)),
        }
    }
}

/// A JSON answer; non-2xx answers become [`Fault::ServerRejected`] with the server's
/// [`ApiError`].
fn json_answer<R: DeserializeOwned>(
    url: &str,
    status: StatusCode,
    body: &[u8],
) -> Result<R, Fault> {
    if !status.is_success() {
        return Err(rejected(url, status, body));
    }
    serde_json::from_slice(body).map_err(|e| Fault::Protocol {
        url: url.to_owned(),
        detail: format!("HTTP {status} with a body that is not the expected JSON: {e}"),
    })
}

impl HeldRest {
    async fn first_line(&mut self) -> Result<Bytes, Fault> {
        let r = self.reader.first_line().await;
        r.map_err(|e| self.fault(e))
    }

    async fn read_to_end(&mut self) -> Result<Option<Bytes>, Fault> {
        let r = self.reader.read_to_end().await;
        r.map_err(|e| self.fault(e))
    }

    /// A failed read as the agent reports it: a broken connection as any other's.
    fn fault(&self, e: HeldReadError) -> Fault {
        match e {
            HeldReadError::Body(h) => classify_hyper(&self.shown, &self.name, &h),
            other => Fault::Protocol {
                url: self.url.clone(),
                detail: other.to_string(),
            },
        }
    }
}

/// `Retry-After` in seconds (the form Steward's server sends; an HTTP date is ignored).
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    steward_proto::parse_retry_after(headers.get(header::RETRY_AFTER)?.to_str().ok()?)
}

/// Whether the server answered "busy, come back later" (503, `SERVER-BUSY`): admission
/// control, not a fault of the way taken — no way is set aside and no failure is reported.
pub fn is_server_busy(fault: &Fault) -> bool {
    matches!(fault, Fault::ServerRejected { status: 503, .. })
}

fn rejected(url: &str, status: StatusCode, body: &[u8]) -> Fault {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(api) => Fault::ServerRejected {
            url: url.to_owned(),
            status: status.as_u16(),
            api_id: api.id,
            message: api.message,
        },
        Err(_) => Fault::ServerRejected {
            url: url.to_owned(),
            status: status.as_u16(),
            api_id: format!("HTTP-{}", status.as_u16()),
            message: String::from_utf8_lossy(body.get(..200).unwrap_or(body))
                .trim()
                .to_owned(),
        },
    }
}

/// Aborts the connection driver when the connection is dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A failure to talk to the server, classified by its event ID, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The server's name does not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Dns {
        /// The name looked up.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// TCP reset: nothing listens there, or a firewall rejects.
    #[error(
        "connection to {addr} refused (nothing listens on that port, or a firewall rejects it)"
    )]
    Refused {
        /// The address.
        addr: String,
    },
    /// A step did not finish in time.
    #[error("{stage} with {addr} timed out after {after_ms} ms")]
    Timeout {
        /// Which step.
        stage: &'static str,
        /// The peer.
        addr: String,
        /// Measured wait.
        after_ms: u64,
    },
    /// No route to the host, or the connection broke mid-exchange.
    #[error("connection with {addr} failed: {reason}")]
    ConnectionFailed {
        /// The peer.
        addr: String,
        /// The OS or protocol error.
        reason: String,
    },
    /// The server's certificate does not chain to a trust anchor of the profile.
    #[error("TLS with {addr}: {detail}")]
    TlsUntrusted {
        /// The peer.
        addr: String,
        /// What was presented and why it is not trusted.
        detail: String,
    },
    /// A certificate of the server's chain is outside its validity period.
    #[error("TLS with {addr}: {detail}")]
    TlsExpired {
        /// The peer.
        addr: String,
        /// Which certificate, and its dates.
        detail: String,
    },
    /// The server's certificate does not cover the name connected to.
    #[error("TLS with {addr}: {detail}")]
    TlsNameMismatch {
        /// The peer.
        addr: String,
        /// Expected and presented names.
        detail: String,
    },
    /// The server's certificate is revoked.
    #[error("TLS with {addr}: {detail}")]
    TlsRevoked {
        /// The peer.
        addr: String,
        /// Which certificate.
        detail: String,
    },
    /// The server refused the agent's client certificate (alert).
    #[error("TLS with {addr}: {detail}")]
    TlsClientRejected {
        /// The peer.
        addr: String,
        /// The alert and what it means.
        detail: String,
    },
    /// Any other TLS failure.
    #[error("TLS with {addr} failed: {detail}")]
    TlsFailed {
        /// The peer.
        addr: String,
        /// The reason.
        detail: String,
    },
    /// The server answered with an HTTP error.
    #[error("{url} answered HTTP {status} {api_id}: {message}")]
    ServerRejected {
        /// The URL requested.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's error ID (`ENROLL-TOKEN-EXPIRED`, ...), or `HTTP-<status>` when the
        /// body was not an API error.
        api_id: String,
        /// The server's message.
        message: String,
    },
    /// A gateway's certificate chains to a trust anchor but is not one the profile lists for
    /// that gateway: something else answers on its name and port, or its certificate was
    /// replaced without the server learning of it.
    #[error(
        "gateway {gateway} at {addr} presented a certificate with SHA-256 {presented}, but the \
         profile lists {expected} for it; the gateway is refused"
    )]
    GatewayThumbprint {
        /// The gateway's name in the profile.
        gateway: String,
        /// `host:port` connected to.
        addr: String,
        /// SHA-256 of the presented certificate.
        presented: String,
        /// The thumbprints the profile lists, comma-separated.
        expected: String,
    },
    /// A plain-HTTP answer whose signature or signing certificate does not verify: it was
    /// altered or injected on the LAN, or something else answers on the HTTP port.
    #[error("the plain-HTTP answer from {url} is not believed: {detail}")]
    HttpResponseUnverified {
        /// The URL requested.
        url: String,
        /// What did not verify.
        detail: String,
    },
    /// The server's answer could not be understood.
    #[error("unexpected answer from {url}: {detail}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

impl Fault {
    /// The event ID of this fault.
    pub fn id(&self) -> &'static str {
        match self {
            Fault::Dns { .. } => ids::DNS_FAILED,
            Fault::Refused { .. } => ids::CONNECTION_REFUSED,
            Fault::Timeout { .. } => ids::CONNECTION_TIMEOUT,
            Fault::ConnectionFailed { .. } => ids::CONNECTION_FAILED,
            Fault::TlsUntrusted { .. } => ids::TLS_UNTRUSTED,
            Fault::TlsExpired { .. } => ids::TLS_EXPIRED,
            Fault::TlsNameMismatch { .. } => ids::TLS_NAME_MISMATCH,
            Fault::TlsRevoked { .. } => ids::TLS_REVOKED,
            Fault::TlsClientRejected { .. } => ids::TLS_CLIENT_REJECTED,
            Fault::TlsFailed { .. } => ids::TLS_FAILED,
            Fault::ServerRejected { .. } => ids::SERVER_REJECTED,
            Fault::Protocol { .. } => ids::PROTOCOL_ERROR,
            Fault::GatewayThumbprint { .. } => ids::GATEWAY_THUMBPRINT,
            Fault::HttpResponseUnverified { .. } => ids::HTTP_RESPONSE_UNVERIFIED,
        }
    }

    /// The class an administrator acts on, as reported in a failed attempt.
    pub fn kind(&self) -> FailureKind {
        match self {
            Fault::Dns { .. } => FailureKind::Dns,
            // No route and a connection broken before any answer both mean "could not get
            // there": the same class as a reset for whoever opens the firewall.
            Fault::Refused { .. } | Fault::ConnectionFailed { .. } => FailureKind::Refused,
            Fault::Timeout { .. } => FailureKind::Timeout,
            Fault::TlsUntrusted { .. }
            | Fault::TlsExpired { .. }
            | Fault::TlsNameMismatch { .. }
            | Fault::TlsRevoked { .. }
            | Fault::TlsClientRejected { .. }
            | Fault::TlsFailed { .. } => FailureKind::Tls,
            Fault::GatewayThumbprint { .. } | Fault::HttpResponseUnverified { .. } => {
                FailureKind::WrongPeer
            }
            Fault::ServerRejected { .. } | Fault::Protocol { .. } => FailureKind::Http,
        }
    }

    /// As reported to the server in the next check-in.
    pub fn to_agent_error(&self, at: OffsetDateTime) -> AgentError {
        AgentError {
            id: self.id().to_owned(),
            message: self.to_string(),
            at: crate::events::rfc3339(at),
        }
    }

    /// Whether this fault arose on a reused connection in a way a fresh connection may not
    /// repeat (the server closed an idle keep-alive connection).
    pub fn is_stale_connection(&self) -> bool {
        matches!(self, Fault::ConnectionFailed { .. })
    }
}

fn describe(p: &Option<Presented>) -> String {
    match p {
        Some(p) => format!("(subject {}, issuer {})", p.subject, p.issuer),
        None => "(not parseable)".to_owned(),
    }
}

fn date(t: OffsetDateTime) -> String {
    steward_pki::rfc3339(t)
}

fn unix_date(t: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
        .map(date)
        .unwrap_or_else(|_| format!("{} s after 1970", t.as_secs()))
}

fn show_name(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Classify a rustls error met during (or right after) the handshake with `addr`.
pub fn classify_rustls(
    addr: &str,
    expected: &ServerName<'_>,
    e: &rustls::Error,
    presented: Option<Presented>,
    anchors: usize,
) -> Fault {
    let addr = addr.to_owned();
    let cert = describe(&presented);
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => Fault::TlsUntrusted {
                addr,
                detail: format!(
                    "the server's certificate {cert} does not chain to any of the profile's {anchors} trust anchor(s) (UnknownIssuer)"
                ),
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                let when = match c {
                    CertificateError::ExpiredContext { time, not_after } => format!(
                        "expired at {} (agent clock: {})",
                        unix_date(*not_after),
                        unix_date(*time)
                    ),
                    _ => "has expired".to_owned(),
                };
                let which = match &presented {
                    Some(p) if p.not_after < OffsetDateTime::now_utc() => {
                        format!("the server's certificate {cert}")
                    }
                    _ => format!("a CA certificate in the chain above {cert}"),
                };
                Fault::TlsExpired {
                    addr,
                    detail: format!("{which} {when} (Expired)"),
                }
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                let when = match c {
                    CertificateError::NotValidYetContext { time, not_before } => format!(
                        "is not valid until {} (agent clock: {}; check the clocks)",
                        unix_date(*not_before),
                        unix_date(*time)
                    ),
                    _ => "is not valid yet (check the clocks)".to_owned(),
                };
                Fault::TlsExpired {
                    addr,
                    detail: format!("a certificate of the chain {cert} {when} (NotValidYet)"),
                }
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let names = match (c, &presented) {
                    (CertificateError::NotValidForNameContext { presented, .. }, _) => {
                        presented.join(", ")
                    }
                    (_, Some(p)) => p.names.join(", "),
                    _ => "unknown names".to_owned(),
                };
                let names = if names.is_empty() {
                    "no subjectAltName at all".to_owned()
                } else {
                    names
                };
                Fault::TlsNameMismatch {
                    addr,
                    detail: format!(
                        "the server's certificate {cert} is valid for [{names}], not for {} (NotValidForName)",
                        show_name(expected)
                    ),
                }
            }
            CertificateError::Revoked => Fault::TlsRevoked {
                addr,
                detail: format!("the server's certificate {cert} is revoked by its CA (Revoked)"),
            },
            other => Fault::TlsFailed {
                addr,
                detail: format!("the server's certificate {cert} is unusable ({other:?})"),
            },
        },
        rustls::Error::AlertReceived(a) => match a {
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied => Fault::TlsClientRejected {
                addr,
                detail: format!(
                    "the server refused this agent's client certificate (alert {a:?}: {})",
                    alert_meaning(*a)
                ),
            },
            _ => Fault::TlsFailed {
                addr,
                detail: format!("the server sent alert {a:?}"),
            },
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            Fault::TlsFailed {
                addr,
                detail: format!(
                    "the peer does not speak TLS as expected ({e}): the port may serve plain HTTP or another protocol"
                ),
            }
        }
        other => Fault::TlsFailed {
            addr,
            detail: other.to_string(),
        },
    }
}

fn alert_meaning(a: AlertDescription) -> &'static str {
    match a {
        AlertDescription::UnknownCA => {
            "it does not trust the CA that issued it (was the server's CA replaced?)"
        }
        AlertDescription::CertificateRevoked => "it has been revoked",
        AlertDescription::CertificateExpired => "it has expired",
        AlertDescription::CertificateRequired => "none was presented",
        AlertDescription::AccessDenied => "the device is not allowed",
        _ => "it was not accepted",
    }
}

fn rustls_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

fn classify_tls_io(
    addr: &str,
    expected: &ServerName<'_>,
    e: &io::Error,
    presented: Option<Presented>,
    anchors: usize,
) -> Fault {
    if let Some(r) = rustls_in(e) {
        return classify_rustls(addr, expected, r, presented, anchors);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Fault::TlsFailed {
            addr: addr.to_owned(),
            detail: "the server closed the connection during the TLS handshake".to_owned(),
        },
        _ => Fault::ConnectionFailed {
            addr: addr.to_owned(),
            reason: format!("during the TLS handshake: {e}"),
        },
    }
}

fn classify_hyper(addr: &str, expected: &ServerName<'_>, e: &hyper::Error) -> Fault {
    if let Some(r) = rustls_in(e) {
        // With TLS 1.3 the server judges the client certificate after the client finished its
        // handshake, so its refusal arrives here, on the first request.
        return classify_rustls(addr, expected, r, None, 0);
    }
    let mut reason = if e.is_incomplete_message() {
        "the server closed the connection before answering".to_owned()
    } else {
        e.to_string()
    };
    steward_proto::push_causes(&mut reason, e);
    Fault::ConnectionFailed {
        addr: addr.to_owned(),
        reason,
    }
}

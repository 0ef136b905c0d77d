//! The handshake ceiling: mutual-TLS handshakes per second, full and resumed, against bare
//! rustls on this machine and against Steward's agent site, with the same clients.
//!
//! The bare server is tokio-rustls with rustls's defaults, the agent site's certificate and key
//! and a client-certificate verifier on the platform root (no CRLs, no HTTP): what rustls
//! itself does on this machine. It runs in this process on a runtime of its own with two
//! worker threads, like the Steward server. Each handshake is a new TCP connection, closed as
//! soon as the handshake is done; nothing else is sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::identity::Identity;
use crate::net::{self, Sources, Target};

/// One measured series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandshakeFigures {
    /// `bare rustls` or `steward agent site`.
    pub server: String,
    /// `full` (resumption off) or `resumed` (resumption on).
    pub mode: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds measured.
    pub secs: f64,
    /// Handshakes of the asked kind completed.
    pub handshakes: u64,
    /// Handshakes per second.
    pub per_sec: f64,
    /// Handshakes that came out of the other kind (a resumed series that had to do full ones).
    pub other_kind: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// The server's CPU per handshake, microseconds (when its CPU could be read).
    pub server_cpu_us: Option<f64>,
}

fn bad(path: &Path, detail: impl std::fmt::Display) -> BenchError {
    BenchError::BadStore {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// The bare rustls server's configuration from a Steward data directory's files.
pub fn bare_config(
    cert: &Path,
    issuing: &Path,
    key: &Path,
    root: &Path,
) -> Result<Arc<ServerConfig>, BenchError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| BenchError::io(p, e));
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e))?;
    chain.extend(
        CertificateDer::pem_slice_iter(&read(issuing)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(issuing, e))?,
    );
    let key_bytes = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
        .or_else(|_| PrivateKeyDer::try_from(key_bytes.clone()))
        .map_err(|e| bad(key, e))?;
    let root_pem = String::from_utf8_lossy(&read(root)?).into_owned();
    let roots = Arc::new(net::roots(&[root_pem])?);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Serve bare handshakes on 127.0.0.1 (OS-chosen port) until `stop`.
pub async fn serve_bare(
    config: Arc<ServerConfig>,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BenchError> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::io("127.0.0.1:0", e))?;
    let addr = l
        .local_addr()
        .map_err(|e| BenchError::io("127.0.0.1:0", e))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let h = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let Ok(Ok((tcp, _))) =
                tokio::time::timeout(Duration::from_millis(200), l.accept()).await
            else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                // The handshake is all that is measured; the stream is then dropped.
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    Ok((addr, h))
}

/// `clients` loops, each with its own identity, handshaking against `target` for `secs`.
pub async fn measure(
    server: &str,
    target: &Target,
    ids: &[Identity],
    anchors_pem: &[String],
    resumed: bool,
    secs: Duration,
    cpu: &(dyn Fn() -> Option<Duration> + Sync),
) -> Result<HandshakeFigures, BenchError> {
    let roots = Arc::new(net::roots(anchors_pem)?);
    let sources = Sources::for_target(target, 16);
    let mut configs = Vec::new();
    for id in ids {
        configs.push(net::client_config(
            roots.clone(),
            Some((id.chain.clone(), id.key.clone())),
            resumed,
        )?);
    }
    // One warm-up handshake each, outside the clock: fills the session caches.
    for (i, c) in configs.iter().enumerate() {
        let _ = handshake_once(target, sources.get(i), c.clone()).await;
    }
    let cpu0 = cpu();
    let start = Instant::now();
    let deadline = start + secs;
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in configs.into_iter().enumerate() {
        let (target, source) = (target.clone(), sources.get(i));
        set.spawn(async move {
            let (mut wanted, mut other) = (0u64, 0u64);
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            // Bounded by count too: no loop does more than this many.
            for _ in 0..10_000_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                match handshake_once(&target, source, c.clone()).await {
                    Ok(kind) => {
                        if (kind == HandshakeKind::Resumed) == resumed {
                            wanted += 1;
                        } else {
                            other += 1;
                        }
                    }
                    Err(f) => *errors.entry(f.kind.label()).or_insert(0) += 1,
                }
            }
            (wanted, other, errors)
        });
    }
    let mut f = HandshakeFigures {
        server: server.into(),
        mode: if resumed { "resumed" } else { "full" }.into(),
        clients: ids.len(),
        ..Default::default()
    };
    while let Some(r) = set.join_next().await {
        if let Ok((w, o, e)) = r {
            f.handshakes += w;
            f.other_kind += o;
            for (k, n) in e {
                *f.errors.entry(k).or_insert(0) += n;
            }
        }
    }
    f.secs = start.elapsed().as_secs_f64();
    f.per_sec = f.handshakes as f64 / f.secs;
    f.server_cpu_us = cpu0.zip(cpu()).and_then(|(a, b)| {
        let n = f.handshakes + f.other_kind;
        (n > 0).then(|| b.saturating_sub(a).as_secs_f64() * 1e6 / n as f64)
    });
    Ok(f)
}

/// CPU time of this process's threads whose name starts with `prefix` (/proc/self/task).
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for t in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(t.ok()?.path().join("stat")) else {
            continue;
        };
        let (head, rest) = stat.rsplit_once(')')?;
        if !head.split_once('(')?.1.starts_with(prefix) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        total += Duration::from_millis(ticks * 10);
    }
    Some(total)
}

/// One connection: TCP, the handshake, then close_notify and read to the end. The reading is
/// what takes in the TLS 1.3 session tickets the server sends after the handshake (without it
/// no later handshake could resume); both servers close at once, so it costs each the same.
async fn handshake_once(
    target: &Target,
    source: Option<std::net::IpAddr>,
    config: Arc<rustls::ClientConfig>,
) -> Result<HandshakeKind, net::Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |kind, detail: String| net::Failure { kind, detail };
    let socket = tokio::net::TcpSocket::new_v4()
        .map_err(|e| fail(net::ErrorKind::ConnectOther, e.to_string()))?;
    // Closed with a reset, not into TIME_WAIT (see the end of this function).
    let _ = socket.set_zero_linger();
    if let Some(ip) = source {
        let _ = socket.set_reuseaddr(true);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| fail(net::ErrorKind::EphemeralPorts, e.to_string()))?;
    }
    let limit = Duration::from_secs(10);
    let tcp = tokio::time::timeout(limit, socket.connect(target.addr))
        .await
        .map_err(|_| fail(net::ErrorKind::ConnectTimeout, "connect".into()))?
        .map_err(|e| fail(net::ErrorKind::ConnectOther, e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(
        limit,
        tokio_rustls::TlsConnector::from(config).connect(target.name.clone(), tcp),
    )
    .await
    .map_err(|_| fail(net::ErrorKind::TlsTimeout, "handshake".into()))?
    .map_err(|e| fail(net::ErrorKind::Tls, e.to_string()))?;
    let kind = tls
        .get_ref()
        .1
        .handshake_kind()
        .unwrap_or(HandshakeKind::Full);
    // close_notify without a TCP FIN: the server, which answers with its own and closes, is
    // then the side that closes first, and this socket's reset on drop (zero linger) ends
    // both. A client that closes first keeps its port in TIME_WAIT for a minute, and binding
    // a source address searches past every such port: with 120,000 piled up, a series fell
    // from 3,500 to under 900 handshakes a second and measured the kernel's port search.
    tls.get_mut().1.send_close_notify();
    let _ = tls.flush().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut sink)).await;
    Ok(kind)
}

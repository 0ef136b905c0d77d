//! Resolving and connecting, with each step timed and each failure classified.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::{ProbeError, Stage};

/// Milliseconds since `start`, for evidence in error messages.
pub(crate) fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Run `fut` with `timeout`, turning expiry into a [`ProbeError::Timeout`] for `stage` that
/// carries the measured wait.
pub(crate) async fn within<F: Future>(
    stage: Stage,
    addr: &str,
    timeout: Duration,
    fut: F,
) -> Result<F::Output, ProbeError> {
    let start = Instant::now();
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ProbeError::Timeout {
            stage,
            addr: addr.to_owned(),
            after_ms: elapsed_ms(start),
        })
}

/// `host` without the brackets users put around IPv6 literals.
pub(crate) fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Resolve `host` to socket addresses. An IP literal skips DNS entirely, so a probe by address
/// never fails (or waits) on the resolver.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ProbeError> {
    let host = bare_host(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let target = format!("{host}:{port}");
    let found = within(
        Stage::Resolve,
        &target,
        timeout,
        tokio::net::lookup_host((host, port)),
    )
    .await?
    .map_err(|e| ProbeError::Dns {
        host: host.to_owned(),
        reason: e.to_string(),
    })?;
    let addrs: Vec<SocketAddr> = found.collect();
    if addrs.is_empty() {
        return Err(ProbeError::Dns {
            host: host.to_owned(),
            reason: "the resolver returned no addresses".to_owned(),
        });
    }
    Ok(addrs)
}

/// Connect to each address in turn (as a client library would), returning the first that
/// accepts. If none does, the last failure is reported: with one address that is simply the
/// failure, and with several it is the one closest to what the real client will end up seeing.
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ProbeError> {
    let mut last = ProbeError::Unreachable {
        addr: String::new(),
        reason: "no addresses to connect to".to_owned(),
    };
    for &addr in addrs {
        let shown = addr.to_string();
        let start = Instant::now();
        match within(Stage::Connect, &shown, timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => last = classify_connect(&shown, &e, start),
            Err(timeout) => last = timeout,
        }
    }
    Err(last)
}

fn classify_connect(addr: &str, e: &io::Error, start: Instant) -> ProbeError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeError::Refused {
            addr: addr.to_owned(),
        },
        // The kernel gave up before our own timer did (SYN retries exhausted).
        io::ErrorKind::TimedOut => ProbeError::Timeout {
            stage: Stage::Connect,
            addr: addr.to_owned(),
            after_ms: elapsed_ms(start),
        },
        // No route, network unreachable, address not available, permission denied by a local
        // firewall: all "cannot get there from here", told apart by the OS text.
        _ => ProbeError::Unreachable {
            addr: addr.to_owned(),
            reason: e.to_string(),
        },
    }
}

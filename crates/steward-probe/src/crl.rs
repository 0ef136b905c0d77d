//! Fetching a CRL from its HTTP distribution point, as a relying party would.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::net::{connect, resolve, within};
use crate::{ProbeError, Stage};

/// The User-Agent sent with every fetch, so web-server logs show who asked.
pub const USER_AGENT: &str = concat!("steward-doctor/", env!("CARGO_PKG_VERSION"));

/// Fetch a CRL over plain HTTP and return its bytes (DER or PEM, as served; not parsed here).
///
/// Only `http://` is fetched — CRL distribution points are plain HTTP by convention, since a
/// relying party cannot check revocation of the TLS server serving the CRL without a CRL — so
/// `https`, `ldap` and `file` URLs give [`ProbeError::UnsupportedScheme`]. Redirects are not
/// followed (many relying parties do not follow them either), so a 3xx is reported as
/// [`ProbeError::Http`]. Bodies over `max_bytes` are rejected from `Content-Length` before
/// reading and while streaming otherwise (chunked, or a lying header).
///
/// `timeout` applies separately to name resolution, to each connection attempt, to waiting for
/// the response head, and to reading the body.
pub async fn fetch_crl(
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Vec<u8>, ProbeError> {
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| ProbeError::InvalidTarget(format!("{url:?}: {e}")))?;
    if parsed.scheme() != "http" {
        return Err(ProbeError::UnsupportedScheme(url.trim().to_owned()));
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => {
            return Err(ProbeError::InvalidTarget(format!(
                "{url:?}: the URL has no host"
            )));
        }
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    if port == 0 {
        return Err(ProbeError::InvalidTarget(format!(
            "{url:?}: port 0 is not a port a service listens on"
        )));
    }
    let shown_url = parsed.as_str().to_owned();
    // As the URL spells it: brackets for IPv6, and the port only when it is not the default
    // (the url crate already drops a spelled-out default port).
    let host_header = match (parsed.host_str(), parsed.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => host.clone(),
    };
    let path = &parsed[url::Position::BeforePath..url::Position::AfterQuery];
    let request = Request::get(path)
        .header(header::HOST, host_header)
        .header(header::USER_AGENT, USER_AGENT)
        .header(
            header::ACCEPT,
            "application/pkix-crl, application/x-pkcs7-crl, */*",
        )
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::InvalidTarget(format!("{url:?}: {e}")))?;

    let addrs = resolve(&host, port, timeout).await?;
    let (tcp, addr) = connect(&addrs, timeout).await?;
    let shown = addr.to_string();

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| hyper_error(&shown, &e))?;
    // The connection future does the socket I/O; it must run while we wait on the sender and
    // the body, and must stop when we return early (timeout, too large) rather than linger.
    let _driver = AbortOnDrop(tokio::spawn(connection));

    let response = within(
        Stage::Response,
        &shown,
        timeout,
        sender.send_request(request),
    )
    .await?
    .map_err(|e| hyper_error(&shown, &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProbeError::Http {
            url: shown_url,
            status: status.as_u16(),
        });
    }
    let too_large = || ProbeError::BodyTooLarge {
        url: shown_url.clone(),
        limit: max_bytes,
    };
    let declared = content_length(response.headers());
    if declared.is_some_and(|n| n > max_bytes as u64) {
        return Err(too_large());
    }

    let mut body = response.into_body();
    let read = async {
        // Pre-size from the declared length (already checked against the limit).
        let mut out = Vec::with_capacity(
            declared
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
                .min(max_bytes),
        );
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| hyper_error(&shown, &e))?;
            if let Ok(data) = frame.into_data() {
                if out.len().saturating_add(data.len()) > max_bytes {
                    return Err(too_large());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    };
    within(Stage::Response, &shown, timeout, read).await?
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Turn a hyper error into evidence: hyper's own words plus the OS error underneath, if any.
fn hyper_error(addr: &str, e: &hyper::Error) -> ProbeError {
    let mut reason = if e.is_parse() {
        format!("the reply is not valid HTTP/1.x ({e})")
    } else if e.is_incomplete_message() {
        "the server closed the connection before sending a complete response".to_owned()
    } else {
        e.to_string()
    };
    steward_proto::push_causes(&mut reason, e);
    ProbeError::Io {
        addr: addr.to_owned(),
        reason,
    }
}

/// Aborts the spawned connection task when the fetch ends, however it ends.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

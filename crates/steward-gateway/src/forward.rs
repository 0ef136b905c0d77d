//! The forwarding of agent requests to the server's agent site: what the gateway does for
//! every request, so what its cost per request is made of.
//!
//! An exchange upstream is never cancelled because the agent went away. Cancelled HTTP/2
//! streams whose answers were already on their way come back as frames on streams h2 no
//! longer tracks (it remembers few resets); it resets each of those itself, and after 1,024
//! such resets in a connection's life closes the whole connection (`too_many_internal_resets`),
//! failing every other agent's request on it with 502. That is what 100,000 agents leaving at
//! once did (BENCHMARKS.md, round 7). So the request and the answer are polled where hyper
//! polls them, on the agent connection's task, and only when the agent leaves early is the
//! rest moved to a task of its own ([`Detached`], [`AgentBody`]'s drop): the exchange runs to
//! its end there and the answer is read and dropped (a long-poll stays open upstream until
//! the server answers it, at most the hold, under a minute).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use steward_proto::{
    AGENT_CERT_HEADER, AGENT_CERT_KNOWN_HEADER, AGENT_CERT_SHA256_HEADER, ApiError,
    CHECKIN_HELD_CONTENT_TYPE, GATEWAY_TIME_HEADER, MAX_AGENT_BODY_BYTES, error_chain, paths,
};

use crate::upstream::{LinkError, Upstream};

/// Where agent requests go: the server's agent site, with the gateway's identity of the
/// moment.
#[derive(Debug)]
pub(crate) struct Target {
    /// `https://host:port` of the server's agent site, no trailing slash.
    pub(crate) server_url: String,
    /// Rebuilt when the identity on disk changes (a renewal).
    pub(crate) upstream: Arc<Upstream>,
}

/// The certificate of the agent on one connection, as the gateway states it to the server:
/// whole until the server says it verified it ([`AGENT_CERT_KNOWN_HEADER`]), by thumbprint
/// after. The whole certificate is about 1 KB of base64 per request that HPACK cannot index
/// (different for every agent, a 4 KB table), so its coding was a fifth of the gateway's
/// instructions per forwarded request (BENCHMARKS.md, round 13).
#[derive(Debug)]
pub(crate) struct AgentCert {
    /// Base64 of the DER ([`AGENT_CERT_HEADER`]).
    whole: HeaderValue,
    /// SHA-256 thumbprint, upper-case hex ([`AGENT_CERT_SHA256_HEADER`]).
    sha256: HeaderValue,
    /// The server acknowledged the whole certificate on this connection and has not said it
    /// forgot it since. Servers that do not know thumbprints never acknowledge.
    known: AtomicBool,
}

impl AgentCert {
    /// The agent's certificate as it presented it (DER).
    pub(crate) fn new(der: &[u8]) -> Option<Self> {
        use base64::Engine;
        let whole = base64::engine::general_purpose::STANDARD.encode(der);
        let sha256 = steward_pki::Thumbprint::sha256_hex_of(der);
        Some(Self {
            whole: HeaderValue::from_str(&whole).ok()?,
            sha256: HeaderValue::from_str(&sha256).ok()?,
            known: AtomicBool::new(false),
        })
    }

    /// Whether the next request names the certificate by thumbprint.
    fn by_thumbprint(&self) -> bool {
        self.known.load(Ordering::Relaxed)
    }

    /// The identity header of a request, whole or by thumbprint.
    fn header(&self, by_thumbprint: bool) -> (&'static str, HeaderValue) {
        if by_thumbprint {
            (AGENT_CERT_SHA256_HEADER, self.sha256.clone())
        } else {
            (AGENT_CERT_HEADER, self.whole.clone())
        }
    }
}

/// A response body for the agent: the gateway's own answer, or the server's, passed on as it
/// arrives. An upstream failure mid-answer aborts the agent's connection instead of ending the
/// body early, so the agent cannot take a cut answer for a whole one; except in a held
/// check-in's long-poll, see [`FromServer::held`].
#[derive(Debug)]
pub(crate) enum AgentBody {
    /// The gateway's own answer, whole (`None` once written).
    Whole(Option<Bytes>),
    /// The server's answer.
    Upstream(FromServer),
}

/// The server's answer, being passed on.
#[derive(Debug)]
pub(crate) struct FromServer {
    /// `None` once it ended.
    body: Option<Incoming>,
    /// When the exchange's time is up (`Upstream::timeout`, from the request's start).
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// For a held check-in (`steward_proto::CHECKIN_HELD_CONTENT_TYPE`, lines of JSON): whether
    /// what was passed on so far ends with a whole line. Past its first line the answer is a
    /// long-poll, and an upstream failure there (the server restarting, its connection lost)
    /// ends the body as an empty hold would: the agent asks again on the same connection and
    /// meets the failure as a 502 it retries. Aborting the connection instead made every agent
    /// of a server restart connect and handshake again at once (BENCHMARKS.md, round 11).
    held: Option<bool>,
}

impl Body for AgentBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            AgentBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            AgentBody::Upstream(up) => loop {
                let Some(body) = &mut up.body else {
                    return Poll::Ready(None);
                };
                // A server that stopped sending without closing fails as a cut answer does
                // (the stream is reset when the body is dropped).
                let frame = match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(f) => f.map(|r| r.map_err(|e| error_chain(&e))),
                    Poll::Pending => {
                        ready!(up.deadline.as_mut().poll(cx));
                        Some(Err(
                            "the server's answer did not end within the gateway's upstream timeout"
                                .to_owned(),
                        ))
                    }
                };
                match frame {
                    Some(Ok(frame)) => {
                        // Data only: trailers have no place on the agent's HTTP/1.1
                        // connection, and the agent site sends none.
                        if let Ok(data) = frame.into_data() {
                            if let (Some(whole_lines), Some(last)) = (&mut up.held, data.last()) {
                                *whole_lines = *last == b'\n';
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Some(Err(reason)) => {
                        up.body = None;
                        if up.held == Some(true) {
                            tracing::debug!(error = %reason, "a held check-in's long-poll failed upstream; ended as an empty hold");
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(std::io::Error::other(reason))));
                    }
                    None => {
                        up.body = None;
                        return Poll::Ready(None);
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AgentBody::Whole(b) => b.is_none(),
            AgentBody::Upstream(up) => up.body.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AgentBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            AgentBody::Upstream(up) => up
                .body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}

impl Drop for AgentBody {
    fn drop(&mut self) {
        // The agent left before the end of the answer: read the rest (see the module's doc).
        if let AgentBody::Upstream(up) = self
            && let Some(body) = up.body.take()
            && !body.is_end_stream()
        {
            detach(drain(body));
        }
    }
}

/// Reads a body to its end and drops it.
async fn drain(mut body: Incoming) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// Runs `fut` on a task of its own, when there is a runtime to run it (a drop during the
/// runtime's shutdown has none, and then nothing is left to finish anyway).
fn detach(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}

/// The upstream exchange, polled in place; dropped before it finished (the agent left), it is
/// finished on a task of its own and its answer drained (see the module's doc).
struct Detached<F>
where
    F: Future<Output = Result<Response<Incoming>, LinkError>> + Send + 'static,
{
    fut: Option<Pin<Box<F>>>,
}

impl<F> Future for Detached<F>
where
    F: Future<Output = Result<Response<Incoming>, LinkError>> + Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(fut) = self.fut.as_mut() else {
            // Polled again after it finished (a misuse): it stays pending rather than panic.
            return Poll::Pending;
        };
        let out = ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl<F> Drop for Detached<F>
where
    F: Future<Output = Result<Response<Incoming>, LinkError>> + Send + 'static,
{
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            detach(async move {
                if let Ok(resp) = fut.await {
                    drain(resp.into_body()).await;
                }
            });
        }
    }
}

/// The gateway's own answer.
fn whole(
    status: StatusCode,
    body: Bytes,
    content_type: Option<HeaderValue>,
) -> Response<AgentBody> {
    let mut resp = Response::new(AgentBody::Whole(Some(body)));
    *resp.status_mut() = status;
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}

fn api_error(status: StatusCode, id: &str, message: String) -> Response<AgentBody> {
    let body = serde_json::to_vec(&ApiError {
        id: id.to_owned(),
        message,
    })
    .unwrap_or_default();
    whole(
        status,
        Bytes::from(body),
        Some(HeaderValue::from_static("application/json")),
    )
}

/// Forwards one agent request to the server's agent site, with the agent's verified
/// certificate in the identity header, and passes the answer back.
pub(crate) async fn forward(
    target: Arc<Target>,
    agent_cert: Arc<AgentCert>,
    req: Request<Incoming>,
) -> Result<Response<AgentBody>, Infallible> {
    // Only the agent site's authenticated routes: enrollment needs no client certificate and
    // happens on the LAN, and nothing else of the server is reachable through the gateway.
    // (No path and query: an asterisk- or authority-form target, never an agent's.)
    let path_and_query = req.uri().path_and_query().cloned();
    let path = path_and_query.as_ref().map_or("", |pq| pq.path());
    if !path.starts_with("/agent/v1/") || path == paths::ENROLL {
        return Ok(api_error(
            StatusCode::NOT_FOUND,
            "GATEWAY-ROUTE-NOT-FORWARDED",
            format!("{path} is not forwarded by the gateway"),
        ));
    }
    let deadline = tokio::time::Instant::now() + target.upstream.timeout();
    let uri = match path_and_query.clone().map(|pq| target.upstream.uri(pq)) {
        Some(Ok(uri)) => uri,
        _ => {
            return Ok(api_error(
                StatusCode::BAD_REQUEST,
                "GATEWAY-ROUTE-NOT-FORWARDED",
                format!("{path} is not a request target the gateway can forward"),
            ));
        }
    };
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
    // The identity header is set here, never copied from the agent's request. Nothing else of
    // the agent's request is copied but its content type: in particular no hop-by-hop header
    // (Connection, Keep-Alive, Transfer-Encoding, Upgrade, TE), which belong to the agent's
    // HTTP/1.1 connection and are malformed in the HTTP/2 request upstream.
    let upstream = Arc::clone(&target.upstream);
    let exchange = async move {
        let request = |by_thumbprint: bool| {
            let mut up = Request::new(Full::new(body.clone()));
            *up.method_mut() = method.clone();
            *up.uri_mut() = uri.clone();
            let (name, value) = agent_cert.header(by_thumbprint);
            up.headers_mut().insert(name, value);
            if let Some(ct) = &content_type {
                up.headers_mut().insert(CONTENT_TYPE, ct.clone());
            }
            up
        };
        let by_thumbprint = agent_cert.by_thumbprint();
        let (mut resp, mut sent_with) = upstream.send(request(by_thumbprint)).await?;
        // Named by thumbprint and not taken: the server forgot the certificate (412: it
        // restarted, or a certificate was revoked), or it is an older one that reads the
        // request as the gateway's own (403). Once more with the certificate whole, which
        // both settle.
        if by_thumbprint
            && matches!(
                resp.status(),
                StatusCode::PRECONDITION_FAILED | StatusCode::FORBIDDEN
            )
        {
            agent_cert.known.store(false, Ordering::Relaxed);
            drain(resp.into_body()).await;
            (resp, sent_with) = upstream.send(request(false)).await?;
        }
        // Sent with the identity a renewal just replaced: the server may have retired it
        // in the meantime (the new one's first use). Once more with the new one, so no
        // agent sees it.
        if resp.status() == StatusCode::FORBIDDEN && !upstream.is_current(&sent_with) {
            drain(resp.into_body()).await;
            (resp, _) = upstream.send(request(agent_cert.by_thumbprint())).await?;
        }
        if resp.headers().contains_key(AGENT_CERT_KNOWN_HEADER) {
            agent_cert.known.store(true, Ordering::Relaxed);
        }
        Ok(resp)
    };
    let exchange = Detached {
        fut: Some(Box::pin(exchange)),
    };
    let resp = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(r)) => r,
        outcome => {
            let reason = match outcome {
                Ok(Err(e)) => error_chain(&e),
                _ => error_chain(&LinkError::Timeout(target.upstream.timeout())),
            };
            let url = format!("{}{path}", target.server_url);
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
    // A 503 SERVER-BUSY's Retry-After reaches the agent as the server said it.
    let retry_after = resp.headers().get(RETRY_AFTER).cloned();
    // Nothing passed on yet: a failure before the first line (the check-in's own answer)
    // aborts, as in any other answer.
    let held = ct
        .as_ref()
        .is_some_and(|c| c.as_bytes() == CHECKIN_HELD_CONTENT_TYPE.as_bytes())
        .then_some(false);
    let mut out = Response::new(AgentBody::Upstream(FromServer {
        body: Some(resp.into_body()),
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        held,
    }));
    *out.status_mut() = status;
    if let Some(ct) = ct {
        out.headers_mut().insert(CONTENT_TYPE, ct);
    }
    if let Some(r) = retry_after {
        out.headers_mut().insert(RETRY_AFTER, r);
    }
    // Our clock, for clock-skew diagnosis between agent, gateway and server.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out.headers_mut()
        .insert(GATEWAY_TIME_HEADER, HeaderValue::from(secs));
    Ok(out)
}

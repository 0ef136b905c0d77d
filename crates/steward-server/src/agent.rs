//! The agent site's routes (steward_proto::paths). Every route but enrollment needs the
//! client certificate verified at the TLS layer; the device is the one that certificate was
//! issued to.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use steward_proto::{
    CheckinRequest, CheckinResponse, EnrollRequest, EnrollResponse, GatewayJoinRequest,
    GatewayJoinResponse, GatewayReport, GatewayReportResponse, MAX_AGENT_BODY_BYTES, Pong,
    RenewRequest, RenewResponse, paths,
};

use crate::ApiFailure;
use crate::http::{Peer, read_json};
use crate::service::{Service, actual_path};

/// The agent site's router.
pub(crate) fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(paths::ENROLL, post(enroll))
        .route(paths::ENROLL_KERBEROS, post(enroll_kerberos))
        .route(paths::CHECKIN, post(checkin))
        .route(paths::WAIT, get(wait))
        .route(paths::PING, get(ping))
        .route(paths::GATEWAY_JOIN, post(gateway_join))
        .route(paths::GATEWAY_REPORT, post(gateway_report))
        .route(paths::GATEWAY_CRL, get(gateway_crl))
        .route(paths::GATEWAY_RENEW, post(gateway_renew))
        .route(paths::RENEW, post(renew))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            crate::admission::gate,
        ))
        .with_state(service)
}

async fn enroll(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EnrollResponse>, ApiFailure> {
    let who = peer.addr.to_string();
    let req: EnrollRequest =
        read_json(&headers, body, MAX_AGENT_BODY_BYTES, "enroll", &who).await?;
    Ok(Json(svc.enroll(req, &who).await?))
}

/// Enrollment with the host's Kerberos identity (see [`crate::auth::enroll_kerberos`]).
async fn enroll_kerberos(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EnrollResponse>, ApiFailure> {
    let who = peer.addr.to_string();
    let req: steward_proto::KerberosEnrollRequest = read_json(
        &headers,
        body,
        MAX_AGENT_BODY_BYTES,
        "Kerberos enroll",
        &who,
    )
    .await?;
    Ok(Json(crate::auth::enroll_kerberos(&svc, req, &who).await?))
}

async fn checkin(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    signed_http: Option<Extension<crate::http_site::SignedHttp>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiFailure> {
    let caller = svc.agent_identity(peer.cert.as_deref(), &headers).await?;
    let (device, via_gateway) = (caller.device, caller.gateway);
    let who = format!("{} (device {})", peer.addr, device.id);
    let mut req: CheckinRequest =
        read_json(&headers, body, MAX_AGENT_BODY_BYTES, "check-in", &who).await?;
    req.connection = actual_path(req.connection, via_gateway);
    let signed = signed_http.is_some();
    // The transport the server saw, not the one the agent claims: a signed request on the
    // plain-HTTP site is recorded as `lan via http://host:port`.
    if signed && let steward_proto::ConnectionPath::Lan { server } = &mut req.connection {
        *server = format!("http://{server}");
    }
    let config_version = req.config_version;
    let answer = svc.checkin(&device, req).await?;
    // Asked to go on as the long-poll, and nothing in the answer for the agent to act on
    // first: the answer is sent at once, and the same response then waits as a long-poll for
    // the configuration the agent now holds (no `config` in the answer: it is current). Never
    // on the plain-HTTP site, whose answers are signed whole.
    let resp = match wait_param(query.as_deref()) {
        Some(secs) if holdable(&answer) && !signed => {
            svc.admission()
                .stats
                .held_checkins
                .fetch_add(1, Ordering::Relaxed);
            let carry = carry_param(query.as_deref());
            held_checkin(svc, device, &answer, config_version, secs, carry)
        }
        _ => Json(answer).into_response(),
    };
    Ok(acknowledged(resp, caller.learned))
}

/// `resp`, telling the gateway that forwarded the agent's certificate whole that it may name
/// it by thumbprint from now on, when it did and the certificate was accepted.
fn acknowledged(mut resp: Response, learned: bool) -> Response {
    if learned {
        resp.headers_mut().insert(
            steward_proto::AGENT_CERT_KNOWN_HEADER,
            axum::http::HeaderValue::from_static("sha256"),
        );
    }
    resp
}

/// Whether a check-in's answer leaves the agent nothing to do at once (acknowledged results
/// only need forgetting), so it may be held as a long-poll.
fn holdable(a: &CheckinResponse) -> bool {
    a.tasks.is_empty() && a.config.is_none() && !a.send_inventory && !a.renew_certificate
}

/// A check-in answer followed, on the same response, by a long-poll (see
/// [`steward_proto::CHECKIN_HELD_CONTENT_TYPE`]). The long-poll runs as the body is read, so
/// an agent that goes away drops it with its connection.
fn held_checkin(
    svc: Arc<Service>,
    device: steward_store::Device,
    answer: &CheckinResponse,
    config_version: u64,
    secs: u64,
    carry: bool,
) -> Response {
    let mut first = serde_json::to_vec(answer).unwrap_or_default();
    first.push(b'\n');
    let hold = async move {
        match svc
            .wait(&device, Some(config_version), Some(secs), carry)
            .await
        {
            Ok(Some(w)) => {
                let mut line = serde_json::to_vec(&w).unwrap_or_default();
                line.push(b'\n');
                Some(Bytes::from(line))
            }
            Ok(None) => None,
            // The check-in itself is answered and committed; a failed look for work ends the
            // hold like an empty long-poll, and the agent checks in when due.
            Err(f) => {
                tracing::warn!(id = f.id, device = %device.id, "the long-poll of a held check-in failed: {}", f.message);
                None
            }
        }
    };
    let body = crate::held::HeldBody::new(Bytes::from(first), hold);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            steward_proto::CHECKIN_HELD_CONTENT_TYPE,
        )],
        Body::new(body),
    )
        .into_response()
}

async fn wait(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiFailure> {
    let caller = svc.agent_identity(peer.cert.as_deref(), &headers).await?;
    svc.admission()
        .stats
        .long_polls
        .fetch_add(1, Ordering::Relaxed);
    let version = config_version_param(query.as_deref())?;
    let agent_wait = wait_param(query.as_deref());
    let carry = carry_param(query.as_deref());
    let resp = match svc.wait(&caller.device, version, agent_wait, carry).await? {
        Some(w) => Json(w).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    Ok(acknowledged(resp, caller.learned))
}

/// Authenticated exactly as a check-in (directly, or through a gateway's forwarded identity),
/// and nothing else: no last-seen, no path, no write.
async fn ping(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let caller = svc.agent_identity(peer.cert.as_deref(), &headers).await?;
    let pong: Pong = svc.ping(&caller.device, caller.gateway);
    Ok(acknowledged(Json(pong).into_response(), caller.learned))
}

/// Authenticated like a check-in (directly or through a gateway): the current identity (or
/// an already staged renewal) asks for the next one.
async fn renew(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiFailure> {
    let caller = svc.agent_identity(peer.cert.as_deref(), &headers).await?;
    let who = format!("{} (device {})", peer.addr, caller.device.id);
    let req: RenewRequest =
        read_json(&headers, body, MAX_AGENT_BODY_BYTES, "renewal", &who).await?;
    let renewed: RenewResponse = svc.renew(&caller.device, req).await?;
    Ok(acknowledged(Json(renewed).into_response(), caller.learned))
}

async fn gateway_join(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GatewayJoinResponse>, ApiFailure> {
    let who = peer.addr.to_string();
    let req: GatewayJoinRequest =
        read_json(&headers, body, MAX_AGENT_BODY_BYTES, "gateway join", &who).await?;
    Ok(Json(svc.join_gateway(req, &who).await?))
}

async fn gateway_report(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GatewayReportResponse>, ApiFailure> {
    let who = peer.addr.to_string();
    let req: GatewayReport =
        read_json(&headers, body, MAX_AGENT_BODY_BYTES, "gateway report", &who).await?;
    Ok(Json(svc.gateway_report(peer.cert.as_deref(), req).await?))
}

/// A gateway renews its certificates over its current identity (see
/// [`Service::gateway_renew`]).
async fn gateway_renew(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<steward_proto::GatewayRenewResponse>, ApiFailure> {
    let who = peer.addr.to_string();
    let req: steward_proto::GatewayRenewRequest = read_json(
        &headers,
        body,
        MAX_AGENT_BODY_BYTES,
        "gateway renewal",
        &who,
    )
    .await?;
    Ok(Json(svc.gateway_renew(peer.cert.as_deref(), req).await?))
}

async fn gateway_crl(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
) -> Result<Response, ApiFailure> {
    let crl = svc.gateway_crl(peer.cert.as_deref()).await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/pkix-crl"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        crl,
    )
        .into_response())
}

/// `config_version=N` from the query; other parameters are ignored (added by newer agents).
fn config_version_param(query: Option<&str>) -> Result<Option<u64>, ApiFailure> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("config_version=") {
            return v.parse().map(Some).map_err(|_| {
                ApiFailure::bad_request(
                    "REQUEST-MALFORMED",
                    format!("config_version={v:?} is not a whole number"),
                )
            });
        }
    }
    Ok(None)
}

/// `wait=SECS` from the query: how long the agent listens for this long-poll's answer (agents
/// from before it send none; an unreadable value is ignored, as if absent).
fn wait_param(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|p| p.strip_prefix("wait=")?.parse().ok())
}

/// Whether the agent asked for its tasks in the wake-up ([`steward_proto::WAIT_CARRY_TASKS`]).
fn carry_param(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == steward_proto::WAIT_CARRY_TASKS))
}

pub(crate) async fn not_found() -> ApiFailure {
    ApiFailure::not_found("NOT-FOUND", "no such route")
}

pub(crate) async fn method_not_allowed() -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD-NOT-ALLOWED",
        "this route does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameter() {
        assert_eq!(config_version_param(None), Ok(None));
        assert_eq!(config_version_param(Some("config_version=7")), Ok(Some(7)));
        assert_eq!(
            config_version_param(Some("x=1&config_version=8")),
            Ok(Some(8))
        );
        assert!(config_version_param(Some("config_version=-1")).is_err());
        assert_eq!(wait_param(Some("config_version=7&wait=58")), Some(58));
        assert_eq!(wait_param(Some("config_version=7")), None);
        assert_eq!(wait_param(Some("wait=soon")), None);
        assert!(carry_param(Some("config_version=7&wait=58&tasks=carry")));
        assert!(!carry_param(Some("config_version=7&wait=58")));
        assert!(!carry_param(Some("tasks=carryall")));
        assert!(!carry_param(None));
    }
}

//! The admin API (steward_proto::admin) on the console listener. Handlers only translate
//! between HTTP and [`Service`]; authentication is the [`AdminUser`] extractor: the
//! [`Identity`] the `[auth]` middleware ([`crate::auth::layer`]) established from the
//! `Authorization` header (Negotiate, Basic, Bearer) or the connection, else the console's
//! session cookie.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use steward_proto::BootstrapPackage;
use steward_proto::admin::{
    DeviceDetail, DeviceSummary, GatewaySummary, GatewayToken, LoginRequest, LoginResponse,
    NewGatewayToken, NewPackage, NewTask, Policy, TaskCreated, TaskDetail, TaskSummary, paths,
};

use crate::ApiFailure;
use crate::auth::{Identity, check_role, token_identity};
use crate::http::{Peer, read_json};
use crate::service::{AdminUser, SESSION_COOKIE, Service, missing_credentials};

/// Largest admin API request body.
pub(crate) const MAX_ADMIN_BODY_BYTES: usize = 1024 * 1024;

/// The admin API routes, to be merged with the console's and given the state.
pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route(paths::LOGIN, post(login))
        .route(paths::DEVICES, get(devices))
        .route(paths::DEVICE, get(device).delete(delete_device))
        .route(paths::TASKS, get(tasks).post(create_task))
        .route(paths::TASK, get(task))
        .route(paths::POLICIES, get(policies).post(put_policy))
        .route(paths::PACKAGES, post(new_package))
        .route(paths::GATEWAY_TOKENS, post(new_gateway_token))
        .route(paths::GATEWAYS, get(gateways))
        .route(paths::GATEWAY_REVOKE, post(revoke_gateway))
        .route(paths::DEVICE_REVOKE, post(revoke_device))
        .route(paths::OPENAPI, get(openapi))
        .route(paths::SERVER_CERTS, get(server_certs))
        .route(paths::SERVER_CERT_RENEW, post(renew_server_cert))
        .route(paths::SERVER_CERT_IMPORT, post(import_server_cert))
        .route(paths::SERVER_CERT_FINALIZE, post(finalize_server_cert))
        .route(paths::SERVER_CERT_ROLLBACK, post(rollback_server_cert))
        .route(paths::SERVER_CA_ROLL, get(ca_roll_status))
        .route(paths::SERVER_CA_ROLL_STAGE, post(ca_roll_stage))
        .route(paths::SERVER_CA_ROLL_FINALIZE, post(ca_roll_finalize))
        .route(paths::SERVER_CA_ROLL_ROLLBACK, post(ca_roll_rollback))
}

/// The token of a request: `Authorization: Bearer TOKEN`, else the session cookie.
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    bearer.or_else(|| {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == SESSION_COOKIE)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|t| !t.is_empty())
    })
}

impl FromRequestParts<Arc<Service>> for AdminUser {
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(id) = parts.extensions.get::<Identity>() {
            return Ok(AdminUser {
                username: id.principal.clone(),
            });
        }
        // No Authorization header (the middleware handled those): the console's cookie.
        let token = request_token(&parts.headers).ok_or_else(missing_credentials)?;
        let id = token_identity(state, &token).await?;
        check_role(&id, &parts.method)?;
        Ok(AdminUser {
            username: id.principal,
        })
    }
}

fn who(peer: &Peer) -> String {
    peer.addr.to_string()
}

async fn login(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LoginResponse>, ApiFailure> {
    let req: LoginRequest =
        read_json(&headers, body, MAX_ADMIN_BODY_BYTES, "login", &who(&peer)).await?;
    Ok(Json(svc.login(req).await?))
}

async fn devices(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
) -> Result<Json<Vec<DeviceSummary>>, ApiFailure> {
    Ok(Json(svc.devices().await?))
}

async fn device(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiFailure> {
    Ok(Json(svc.device(&id).await?))
}

async fn tasks(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
) -> Result<Json<Vec<TaskSummary>>, ApiFailure> {
    Ok(Json(svc.tasks().await?))
}

async fn create_task(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TaskCreated>, ApiFailure> {
    let req: NewTask = read_json(
        &headers,
        body,
        MAX_ADMIN_BODY_BYTES,
        "new task",
        &who(&peer),
    )
    .await?;
    Ok(Json(svc.create_task(&user, req).await?))
}

async fn task(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<TaskDetail>, ApiFailure> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiFailure::not_found("TASK-NOT-FOUND", format!("no task {id:?}")))?;
    Ok(Json(svc.task(id).await?))
}

async fn policies(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
) -> Result<Json<Vec<Policy>>, ApiFailure> {
    Ok(Json(svc.policies().await?))
}

async fn put_policy(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Policy>, ApiFailure> {
    let req: Policy =
        read_json(&headers, body, MAX_ADMIN_BODY_BYTES, "policy", &who(&peer)).await?;
    Ok(Json(svc.put_policy(&user, req).await?))
}

async fn new_package(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BootstrapPackage>, ApiFailure> {
    let req: NewPackage = read_json(
        &headers,
        body,
        MAX_ADMIN_BODY_BYTES,
        "enrollment package",
        &who(&peer),
    )
    .await?;
    Ok(Json(svc.new_package(&user, req).await?))
}

async fn new_gateway_token(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GatewayToken>, ApiFailure> {
    let req: NewGatewayToken = read_json(
        &headers,
        body,
        MAX_ADMIN_BODY_BYTES,
        "gateway token",
        &who(&peer),
    )
    .await?;
    Ok(Json(svc.new_gateway_token(&user, req).await?))
}

async fn gateways(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
) -> Result<Json<Vec<GatewaySummary>>, ApiFailure> {
    Ok(Json(svc.gateways().await?))
}

async fn revoke_gateway(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiFailure> {
    svc.revoke_gateway(&user, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

async fn revoke_device(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiFailure> {
    svc.revoke_device(&user, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Deleting a device revokes its certificate (the CRLs are re-signed before the answer).
async fn delete_device(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiFailure> {
    svc.delete_device(&user, &id).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

async fn server_certs(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
) -> Result<Json<Vec<steward_proto::admin::ListenerCertStatus>>, ApiFailure> {
    Ok(Json(svc.listener_cert_status().await?))
}

async fn import_server_cert(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    user: AdminUser,
    Path(listener): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<steward_proto::admin::ListenerCertStatus>, ApiFailure> {
    let req: steward_proto::admin::CertImport = read_json(
        &headers,
        body,
        MAX_ADMIN_BODY_BYTES,
        "certificate import",
        &who(&peer),
    )
    .await?;
    Ok(Json(svc.stage_listener_cert(&user, &listener, req).await?))
}

async fn finalize_server_cert(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    user: AdminUser,
    Path(listener): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<steward_proto::admin::CertFinalized>, ApiFailure> {
    let req: steward_proto::admin::CertFinalize = read_json(
        &headers,
        body,
        MAX_ADMIN_BODY_BYTES,
        "certificate finalize",
        &who(&peer),
    )
    .await?;
    Ok(Json(
        svc.finalize_listener_cert(&user, &listener, req).await?,
    ))
}

async fn rollback_server_cert(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Path(listener): Path<String>,
) -> Result<Json<steward_proto::admin::ListenerCertStatus>, ApiFailure> {
    Ok(Json(svc.rollback_listener_cert(&user, &listener).await?))
}

async fn renew_server_cert(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
    Path(listener): Path<String>,
) -> Result<Json<steward_proto::admin::ListenerCertStatus>, ApiFailure> {
    Ok(Json(svc.renew_listener(&user, &listener).await?))
}

async fn ca_roll_status(
    State(svc): State<Arc<Service>>,
    _user: AdminUser,
) -> Result<Json<steward_proto::admin::CaRollStatus>, ApiFailure> {
    Ok(Json(svc.ca_roll_status().await?))
}

async fn ca_roll_stage(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
) -> Result<Json<steward_proto::admin::CaRollStatus>, ApiFailure> {
    Ok(Json(svc.stage_ca_roll(&user).await?))
}

async fn ca_roll_finalize(
    State(svc): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    user: AdminUser,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<steward_proto::admin::CaRollFinalized>, ApiFailure> {
    let req: steward_proto::admin::CertFinalize = read_json(
        &headers,
        body,
        MAX_ADMIN_BODY_BYTES,
        "root roll finalize",
        &who(&peer),
    )
    .await?;
    Ok(Json(svc.finalize_ca_roll(&user, req).await?))
}

async fn ca_roll_rollback(
    State(svc): State<Arc<Service>>,
    user: AdminUser,
) -> Result<Json<steward_proto::admin::CaRollStatus>, ApiFailure> {
    Ok(Json(svc.rollback_ca_roll(&user).await?))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_header_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(request_token(&h), None);
        h.insert(
            "cookie",
            "a=b; steward_session=tok1"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(request_token(&h).as_deref(), Some("tok1"));
        h.insert(
            "authorization",
            "Bearer tok2".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert_eq!(request_token(&h).as_deref(), Some("tok2"));
    }
}

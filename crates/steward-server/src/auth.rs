//! Authentication of the console listener: the `[auth]` providers in their configured order.
//!
//! One middleware ([`layer`]) reads the `Authorization` header of every console-listener
//! request — `Negotiate` (SPNEGO/Kerberos through GSSAPI), `Basic` (local accounts), `Bearer`
//! (session or admin-token) — or, with `persist_per_connection`, the principal already
//! authenticated on the same TLS connection. It maps the principal to a role, puts the
//! [`Identity`] into the request, and runs the handler inside a span naming the principal and
//! the provider, so every log line of the request says who it was (the reference article's
//! "which identity was this?"). A 401 from the admin API offers the providers in order.
//!
//! NTLM is refused with a 401 that says why ([`steward_kerberos::NTLM_REASON`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use steward_kerberos::{Acceptor, NegotiateError};
use tracing::Instrument as _;

use steward_proto::{EnrollRequest, EnrollResponse, KerberosEnrollRequest};
use steward_store::NewEnrollmentToken;

use crate::ApiFailure;
use crate::config::{Provider, Role};
use crate::http::Peer;
use crate::service::{LOCAL_TOKEN_USER, Service};

/// Who made a request, and how that was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The principal: a Kerberos principal (`alice@EXAMPLE.NET`) or a local account name.
    pub principal: String,
    /// The provider that authenticated it: `negotiate`, `password` or `admin-token`.
    pub provider: &'static str,
    /// What it may do.
    pub role: Role,
    /// Taken from the connection's earlier authentication (`persist_per_connection`).
    pub persisted: bool,
}

/// Per-connection authentication state (one per TLS connection of the console listener).
#[derive(Debug, Default)]
pub struct ConnAuth {
    identity: Mutex<Option<Identity>>,
}

impl ConnAuth {
    fn get(&self) -> Option<Identity> {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set(&self, id: &Identity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
    }
}

/// The console listener's authentication: the service and, with `negotiate`, the acceptor.
#[derive(Debug)]
pub struct AuthState {
    svc: Arc<Service>,
    acceptor: Option<Acceptor>,
    accepts: AtomicU64,
}

impl AuthState {
    /// Builds the state; acquires the Kerberos acceptor credentials when `negotiate` is
    /// configured (the keytab must be usable, or the server does not start).
    pub fn new(svc: Arc<Service>) -> Result<Self, NegotiateError> {
        let acceptor = if svc.config().auth.uses_kerberos() {
            Some(shared_acceptor()?)
        } else {
            None
        };
        Ok(Self {
            svc,
            acceptor,
            accepts: AtomicU64::new(0),
        })
    }

    /// GSSAPI accepts performed since start.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Relaxed)
    }
}

/// The process's acceptor credentials, acquired once: the keytab is process-wide
/// (`KRB5_KTNAME`), and the console and the agent site share it.
fn shared_acceptor() -> Result<Acceptor, NegotiateError> {
    static ACCEPTOR: OnceLock<Result<Acceptor, NegotiateError>> = OnceLock::new();
    ACCEPTOR.get_or_init(Acceptor::new).clone()
}

/// `POST /agent/v1/enroll/kerberos`: an agent on a domain-joined host enrolls with
/// `host/<fqdn>@REALM` (its system keytab) instead of a bootstrap token, when `[auth]
/// agent_kerberos_enrollment` allows it. The device is named after the principal's host, and
/// stored exactly as a token enrollment is: through a single-use token minted for it.
pub(crate) async fn enroll_kerberos(
    svc: &Service,
    req: KerberosEnrollRequest,
    peer: &str,
) -> Result<EnrollResponse, ApiFailure> {
    let auth = &svc.config().auth;
    if !auth.agent_kerberos_enrollment {
        tracing::warn!(
            id = "ENROLL-KERBEROS-DISABLED",
            peer,
            "Kerberos enrollment refused"
        );
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "ENROLL-KERBEROS-DISABLED",
            "this server does not allow enrollment with the host's Kerberos identity ([auth] \
             agent_kerberos_enrollment = false); enroll with a bootstrap package's token",
        ));
    }
    let failed = |why: String| {
        tracing::warn!(
            id = "ENROLL-KERBEROS-FAILED",
            peer,
            "Kerberos enrollment refused: {why}"
        );
        ApiFailure::new(StatusCode::UNAUTHORIZED, "ENROLL-KERBEROS-FAILED", why)
    };
    let acceptor = shared_acceptor().map_err(|e| failed(e.to_string()))?;
    let token = match steward_kerberos::negotiate::decode_token(&req.negotiate_token) {
        Ok(t) => t,
        Err(e @ NegotiateError::Malformed(_)) => {
            return Err(malformed(
                &e.to_string(),
                peer,
                "negotiate_token must be the base64 SPNEGO token `steward-agent enroll --kerberos` \
                 makes",
            ));
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    let accepted = tokio::task::spawn_blocking(move || acceptor.accept(&token))
        .await
        .map_err(|e| ApiFailure::internal("accepting a Kerberos token", e))?
        .map_err(|e| failed(e.to_string()))?;
    let principal = accepted.principal;
    let host = principal
        .strip_prefix("host/")
        .and_then(|rest| rest.split_once('@'))
        .map(|(h, _)| h)
        .filter(|h| !h.is_empty() && !h.contains('/'));
    let Some(host) = host else {
        tracing::warn!(id = "ENROLL-KERBEROS-NOT-HOST", peer, principal = %principal, "Kerberos enrollment refused: not a host principal");
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "ENROLL-KERBEROS-NOT-HOST",
            format!(
                "{principal} is not a host principal (host/<fqdn>@REALM): agents enroll with the \
                 host's keytab, not a user's ticket"
            ),
        ));
    };
    let one_use = crate::secret::new_token()
        .map_err(|e| ApiFailure::internal("making an enrollment token", e))?;
    let now = crate::service::now();
    svc.store()
        .create_enrollment_token(&NewEnrollmentToken {
            token_hash: crate::secret::token_hash(&one_use),
            expires_at: now + 60,
            max_uses: 1,
            tags: auth.agent_kerberos_tags.clone(),
            created_at: now,
            created_by: principal.clone(),
        })
        .await?;
    tracing::info!(principal = %principal, provider = "negotiate", peer, "agent enrolls with the host's Kerberos identity");
    svc.enroll(
        EnrollRequest {
            token: one_use,
            csr_pem: req.csr_pem,
            hostname: host.to_owned(),
            agent_version: req.agent_version,
        },
        peer,
    )
    .await
}

/// The `WWW-Authenticate` challenges of a 401, one per provider, in the configured order.
pub(crate) fn challenges(svc: &Service) -> Vec<HeaderValue> {
    svc.config()
        .auth
        .providers
        .iter()
        .map(|p| match p {
            Provider::Negotiate => HeaderValue::from_static("Negotiate"),
            Provider::Password => {
                HeaderValue::from_static("Basic realm=\"Steward\", charset=\"UTF-8\"")
            }
        })
        .collect()
}

fn unauthorized(id: &'static str, message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::UNAUTHORIZED, id, message)
}

/// The role of an authenticated principal, or the 403 that names it.
pub(crate) async fn role_for(
    svc: &Service,
    principal: &str,
    provider: &'static str,
) -> Result<Role, ApiFailure> {
    if provider != "negotiate" {
        // Local accounts and the admin-token file are administrators.
        return Ok(Role::Admin);
    }
    match svc.config().auth.role_of(principal) {
        Some(r) => Ok(r),
        None => {
            tracing::warn!(
                id = "AUTH-PRINCIPAL-UNKNOWN",
                principal,
                provider,
                "authenticated by Kerberos but not authorised: the principal has no role in [auth.roles]"
            );
            Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "AUTH-PRINCIPAL-UNKNOWN",
                format!(
                    "{principal} is authenticated (Kerberos) but not authorised: it has no role \
                     in [auth.roles] of steward.toml"
                ),
            ))
        }
    }
}

/// The identity of a session or admin token: the provider that created it is read from the
/// name (Kerberos principals contain `@` and are not local accounts).
pub(crate) async fn token_identity(svc: &Service, token: &str) -> Result<Identity, ApiFailure> {
    let user = svc.authenticate(token).await?;
    let provider = if user.username == LOCAL_TOKEN_USER {
        "admin-token"
    } else if user.username.contains('@') && svc.store().admin(&user.username).await?.is_none() {
        "negotiate"
    } else {
        "password"
    };
    let role = role_for(svc, &user.username, provider).await?;
    Ok(Identity {
        principal: user.username,
        provider,
        role,
        persisted: false,
    })
}

/// A Negotiate accept on a blocking thread (GSSAPI may read the keytab and replay cache).
/// Returns the identity and the server's mutual-authentication token.
pub(crate) async fn negotiate(
    state: &AuthState,
    b64: &str,
    peer: &str,
) -> Result<(Identity, Option<String>), ApiFailure> {
    let acceptor = state
        .acceptor
        .clone()
        .filter(|_| state.svc.config().auth.allows(Provider::Negotiate));
    let Some(acceptor) = acceptor else {
        return Err(unauthorized(
            "AUTH-PROVIDER-DISABLED",
            "Negotiate (Kerberos) is not enabled on this server: [auth] providers does not list \
             \"negotiate\"",
        ));
    };
    let token = match steward_kerberos::negotiate::decode_token(b64) {
        Ok(t) => t,
        Err(e) => return Err(negotiate_failure(&e, peer)),
    };
    state.accepts.fetch_add(1, Ordering::Relaxed);
    let n = state.accepts();
    tracing::info!(peer, accepts = n, "gssapi accept");
    let accepted = tokio::task::spawn_blocking(move || acceptor.accept(&token))
        .await
        .map_err(|e| ApiFailure::internal("accepting a Kerberos token", e))?
        .map_err(|e| negotiate_failure(&e, peer))?;
    let role = role_for(&state.svc, &accepted.principal, "negotiate").await?;
    Ok((
        Identity {
            principal: accepted.principal,
            provider: "negotiate",
            role,
            persisted: false,
        },
        accepted.reply,
    ))
}

fn negotiate_failure(e: &NegotiateError, peer: &str) -> ApiFailure {
    match e {
        NegotiateError::Ntlm => ntlm_refused(peer),
        NegotiateError::Malformed(_) => malformed(
            &e.to_string(),
            peer,
            "send `Authorization: Negotiate <base64 SPNEGO token>` on one line (curl --negotiate \
             -u : does)",
        ),
        NegotiateError::NoAcceptor(_) => {
            tracing::error!(id = "AUTH-NEGOTIATE-FAILED", peer, error = %e, "Kerberos accept impossible");
            unauthorized("AUTH-NEGOTIATE-FAILED", e.to_string())
        }
        _ => {
            tracing::warn!(id = "AUTH-NEGOTIATE-FAILED", peer, error = %e, "Negotiate refused");
            unauthorized("AUTH-NEGOTIATE-FAILED", e.to_string())
        }
    }
}

/// 400 `AUTH-NEGOTIATE-MALFORMED`: what the client sent as a Negotiate token is not one (empty,
/// not base64, too large, not a GSS-API token); it never reaches GSSAPI.
fn malformed(why: &str, peer: &str, fix: &str) -> ApiFailure {
    tracing::warn!(
        id = "AUTH-NEGOTIATE-MALFORMED",
        peer,
        "malformed Negotiate token refused: {why}"
    );
    ApiFailure::new(
        StatusCode::BAD_REQUEST,
        "AUTH-NEGOTIATE-MALFORMED",
        format!("{why}; {fix}"),
    )
}

fn ntlm_refused(peer: &str) -> ApiFailure {
    tracing::warn!(
        id = "AUTH-NTLM-NOT-SUPPORTED",
        peer,
        "the client offered NTLM only; {}",
        steward_kerberos::NTLM_REASON
    );
    unauthorized(
        "AUTH-NTLM-NOT-SUPPORTED",
        format!(
            "the client offered only NTLM. {}",
            steward_kerberos::NTLM_REASON
        ),
    )
}

async fn basic(svc: &Service, b64: &str, peer: &str) -> Result<Identity, ApiFailure> {
    if !svc.config().auth.allows(Provider::Password) {
        tracing::warn!(
            id = "AUTH-PASSWORD-DISABLED",
            peer,
            "password authentication refused"
        );
        return Err(crate::service::password_disabled());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| unauthorized("AUTH-FAILED", "the Basic credentials are not base64 UTF-8"))?;
    let (user, password) = raw
        .split_once(':')
        .ok_or_else(|| unauthorized("AUTH-FAILED", "the Basic credentials have no ':'"))?;
    svc.check_password(user, password).await?;
    Ok(Identity {
        principal: user.to_owned(),
        provider: "password",
        role: Role::Admin,
        persisted: false,
    })
}

/// The scheme and the rest of an `Authorization` header. A value that is not visible ASCII
/// is read lossily, so its scheme still decides (a mangled `Negotiate` token is then named as
/// not base64).
fn scheme(headers: &HeaderMap) -> Option<(String, String)> {
    let v = String::from_utf8_lossy(headers.get(header::AUTHORIZATION)?.as_bytes()).into_owned();
    let v = v.trim();
    let (s, rest) = v.split_once(' ').unwrap_or((v, ""));
    Some((s.to_ascii_lowercase(), rest.trim().to_owned()))
}

/// Whether a request only reads (the viewer role may make it).
fn read_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a change by a viewer.
pub(crate) fn check_role(id: &Identity, method: &Method) -> Result<(), ApiFailure> {
    if id.role == Role::Viewer && !read_only(method) {
        tracing::warn!(id = "AUTH-ROLE-FORBIDDEN", principal = %id.principal, provider = id.provider, "change refused for the viewer role");
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "AUTH-ROLE-FORBIDDEN",
            format!(
                "{} has the viewer role, which may only read; changes need the admin role",
                id.principal
            ),
        ));
    }
    Ok(())
}

/// Adds the challenges to a 401 of the admin API that has none.
fn add_challenges(svc: &Service, path: &str, resp: &mut Response) {
    if resp.status() == StatusCode::UNAUTHORIZED
        && path.starts_with("/api/")
        && !resp.headers().contains_key(header::WWW_AUTHENTICATE)
    {
        for c in challenges(svc) {
            resp.headers_mut().append(header::WWW_AUTHENTICATE, c);
        }
    }
}

/// The middleware of the console listener (see the module comment).
pub(crate) async fn layer(
    State(state): State<Arc<AuthState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let svc = state.svc.clone();
    let peer = req.extensions().get::<Peer>().cloned();
    let peer_s = peer
        .as_ref()
        .map(|p| p.addr.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let persist = svc.config().auth.persist_per_connection;
    let conn = peer.as_ref().map(|p| p.conn.clone());

    let mut reply = None;
    let outcome: Result<Option<Identity>, ApiFailure> = match scheme(req.headers()) {
        // A token that is presented is always accepted, even on an authenticated connection:
        // the client may be another user behind the same connection, and it expects the
        // server's mutual-authentication token back.
        Some((s, rest)) if s == "negotiate" => {
            negotiate(&state, &rest, &peer_s).await.map(|(id, r)| {
                reply = r;
                Some(id)
            })
        }
        Some((s, _)) if s == "ntlm" => Err(ntlm_refused(&peer_s)),
        Some((s, rest)) if s == "basic" => basic(&svc, &rest, &peer_s).await.map(Some),
        Some((s, rest)) if s == "bearer" => token_identity(&svc, &rest).await.map(Some),
        Some((s, _)) => Err(unauthorized(
            "AUTH-REQUIRED",
            format!("the authorization scheme {s:?} is not supported"),
        )),
        // IIS's authPersistNonNTLM: a later request on an authenticated connection needs no
        // credentials (no second accept, no second replay-cache write).
        None if persist => Ok(conn.as_ref().and_then(|c| c.get()).map(|mut id| {
            id.persisted = true;
            id
        })),
        None => Ok(None),
    };
    let identity = match outcome {
        Ok(id) => id,
        Err(f) => {
            let mut resp = f.into_response();
            add_challenges(&svc, &path, &mut resp);
            return resp;
        }
    };
    let Some(identity) = identity else {
        // No credentials: the route decides (the login page and OpenAPI need none; the
        // extractors answer 401 or send the browser to the login page).
        let mut resp = next.run(req).await;
        add_challenges(&svc, &path, &mut resp);
        return resp;
    };
    if let Err(f) = check_role(&identity, &method) {
        return f.into_response();
    }
    if persist
        && !identity.persisted
        && matches!(identity.provider, "negotiate" | "password")
        && let Some(c) = &conn
    {
        c.set(&identity);
    }
    let span = tracing::info_span!(
        "request",
        principal = %identity.principal,
        provider = identity.provider,
    );
    req.extensions_mut().insert(identity.clone());
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            path = %path,
            status = resp.status().as_u16(),
            role = identity.role.as_str(),
            persisted = identity.persisted,
            peer = %peer_s,
            "admin request"
        );
    });
    if let Some(token) = reply
        && let Ok(v) = HeaderValue::from_str(&format!("Negotiate {token}"))
    {
        // Mutual authentication: the client checks this token proves the server's key.
        resp.headers_mut().append(header::WWW_AUTHENTICATE, v);
    }
    add_challenges(&svc, &path, &mut resp);
    resp
}

//! The web console: server-rendered HTML pages on the console listener, next to the admin
//! API. Pages call [`crate::Service`] directly (never the JSON API), authenticate with the
//! [`crate::service::SESSION_COOKIE`] cookie (the same token `Service::login` returns; the
//! [`crate::AdminUser`] extractor accepts it), and render [`crate::ApiFailure`]s as HTML.
//!
//! No JavaScript: every page works with plain links and forms; the task page refreshes itself
//! with `<meta http-equiv="refresh">` while a device is still pending or running.
//!
//! Routes: `GET /` (→ `/devices`), `GET|POST /login`, `POST /logout`, `GET /devices`,
//! `GET /devices/{id}`, `GET|POST /tasks`, `GET /tasks/{id}`, `GET /gateways`. Every page but `/login` needs a
//! session and sends the browser to `/login?next=...` without one.
//!
//! Every value that reaches a page goes through [`html::Esc`] (HTML text and attribute
//! escaping); the few values put into URLs go through [`html::Enc`] (percent-encoding).
//!
//! # CSRF
//!
//! Every state-changing request is a `POST` from one of the console's forms, and each is
//! checked twice:
//! 1. **Origin.** A browser sends `Origin` with every `POST`; when present it must be this
//!    console's own origin (`https://` + the `Host` the request was sent to). This is the only
//!    check the login form can have (no session yet), and it stops login CSRF — a foreign page
//!    logging the administrator into an attacker's account. Without `Origin` (a non-browser
//!    client) `Sec-Fetch-Site`, when present, must say same-origin.
//! 2. **A per-session token** in a hidden `csrf` field of every form behind the login: the
//!    SHA-256 of a fixed label and the session token ([`csrf_token`]). It needs no table (it is
//!    derived), differs per session, ends with it, and cannot be computed without the
//!    HttpOnly cookie. It is compared in constant time.
//!
//! The session cookie is also `SameSite=Strict`, which alone keeps cross-site form posts from
//! carrying it. The token does not rely on that: SameSite treats sibling subdomains of the same
//! registrable domain as "same site" (a compromised `intranet.example.com` could post to
//! `steward.example.com`), and it is only as good as the browser that enforces it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use steward_proto::admin::{LoginRequest, NewTask};

use crate::ApiFailure;
use crate::auth::{Identity, check_role, token_identity};
use crate::config::Provider;
use crate::service::{AdminUser, SESSION_COOKIE, SESSION_SECS, Service, now};

/// Appends formatted text to a `String` (which cannot fail).
macro_rules! w {
    ($dst:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = write!($dst, $($arg)*);
    }};
}

mod html;
mod pages;

use pages::{Nav, Section, TaskFormValues};

/// Where a page goes after login when it was not sent from another page.
const HOME: &str = "/devices";

/// The Content-Security-Policy of every page: nothing but the page itself and its inline
/// style sheet; no scripts at all, no framing, forms only to this origin.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, merged with the admin API's on the console listener.
pub(crate) fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/", get(root))
        .route("/login", get(login_page).post(login))
        .route("/login/negotiate", get(login_negotiate))
        .route("/logout", post(logout))
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .route("/tasks", get(tasks).post(start_task))
        .route("/tasks/{id}", get(task))
        .route("/gateways", get(gateways))
        .route("/certificates", get(certificates))
}

// ---- responses ------------------------------------------------------------------------------

/// An HTML page with the console's security headers.
fn page(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the CSRF
    // check refuses.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// 303 See Other to a path of this console.
fn see_other(location: &str) -> Response {
    let value = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static(HOME));
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut().insert(header::LOCATION, value);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The session cookie: HttpOnly (no script reads it), Secure (the console is HTTPS only),
/// SameSite=Strict (never sent with a request started by another site), for the session's life.
fn session_cookie_header(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={SESSION_SECS}"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

/// Removes the session cookie.
fn clear_cookie_header() -> HeaderValue {
    HeaderValue::from_static(
        "steward_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
    )
}

fn with_cookie(mut r: Response, cookie: HeaderValue) -> Response {
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

/// A failure of the service layer as a page (a lost session goes back to the login form).
fn failure(nav: Option<&Nav>, f: &ApiFailure) -> Response {
    if f.status == StatusCode::UNAUTHORIZED {
        return with_cookie(see_other("/login"), clear_cookie_header());
    }
    page(f.status, pages::failure(nav, f))
}

/// A form body that could not be read (wrong content type, not URL-encoded, too large).
fn bad_form(nav: Option<&Nav>, route: &str, e: &FormRejection) -> Response {
    tracing::warn!(id = "REQUEST-MALFORMED", route, error = %e, "console form refused");
    let f = ApiFailure::new(
        e.status(),
        "REQUEST-MALFORMED",
        format!("the form could not be read: {}", e.body_text()),
    );
    page(f.status, pages::failure(nav, &f))
}

// ---- sessions and CSRF ----------------------------------------------------------------------

/// The session token from the `steward_session` cookie (the console authenticates with the
/// cookie only; a bearer header is for the JSON API).
fn session_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The CSRF token of a session: hex SHA-256 of a label and the session token. Derived, so
/// nothing is stored; the label keeps it distinct from the session hash kept in the database.
pub(crate) fn csrf_token(session_token: &str) -> String {
    let mut input = Vec::with_capacity(32 + session_token.len());
    input.extend_from_slice(b"steward-console-csrf/1\0");
    input.extend_from_slice(session_token.as_bytes());
    crate::secret::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input).as_ref())
}

/// Whether a submitted CSRF token is the session's; constant time in the token's content.
pub(crate) fn csrf_matches(session_token: &str, submitted: &str) -> bool {
    let expected = csrf_token(session_token);
    let (a, b) = (expected.as_bytes(), submitted.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `POST` comes from a page of this console (see the module documentation). `Err`
/// says why not.
pub(crate) fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "the request has no Host header".to_owned())?;
    let expected = format!("https://{host}");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        return if origin.eq_ignore_ascii_case(&expected) {
            Ok(())
        } else {
            Err(format!(
                "the form was sent from {origin:?}, not from this console ({expected})"
            ))
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(other) => Err(format!("the form was sent from a {other} page")),
    }
}

fn csrf_failure(user: &str, reason: &str) -> ApiFailure {
    tracing::warn!(id = "CONSOLE-CSRF", user, reason, "console form refused");
    ApiFailure::new(
        StatusCode::FORBIDDEN,
        "CONSOLE-CSRF",
        format!(
            "this form was not accepted: {reason}. Open the page again from the console and \
             resend it"
        ),
    )
}

/// A logged-in console user: who, and the session the forms' CSRF token derives from.
#[derive(Debug)]
pub(crate) struct ConsoleSession {
    user: AdminUser,
    token: String,
}

impl ConsoleSession {
    fn nav(&self, section: Section) -> Nav {
        Nav {
            user: self.user.username.clone(),
            csrf: csrf_token(&self.token),
            section,
        }
    }

    /// Both CSRF checks for a form posted in this session.
    fn check_post(&self, headers: &HeaderMap, submitted: &str) -> Result<(), ApiFailure> {
        same_origin(headers).map_err(|r| csrf_failure(&self.user.username, &r))?;
        if !csrf_matches(&self.token, submitted) {
            return Err(csrf_failure(
                &self.user.username,
                "its CSRF token is missing or belongs to another session",
            ));
        }
        Ok(())
    }
}

/// Sends the browser to the login form, to come back to `parts`'s page (GET only) afterwards.
fn to_login(parts: &Parts) -> Response {
    let back = if parts.method == axum::http::Method::GET {
        parts
            .uri
            .path_and_query()
            .map_or(HOME, |p| p.as_str())
            .to_owned()
    } else {
        parts.uri.path().to_owned()
    };
    see_other(&format!("/login?next={}", html::Enc(&back)))
}

impl FromRequestParts<Arc<Service>> for ConsoleSession {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        svc: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = session_from_cookie(&parts.headers) else {
            return Err(to_login(parts));
        };
        match token_identity(svc, &token).await {
            Ok(id) => {
                if let Err(f) = check_role(&id, &parts.method) {
                    return Err(failure(None, &f));
                }
                Ok(Self {
                    user: AdminUser {
                        username: id.principal,
                    },
                    token,
                })
            }
            // Expired or logged out elsewhere: drop the stale cookie on the way.
            Err(f) if f.status == StatusCode::UNAUTHORIZED => {
                Err(with_cookie(to_login(parts), clear_cookie_header()))
            }
            Err(f) => Err(failure(None, &f)),
        }
    }
}

/// `next` of the login form, if it is a path of this console; otherwise the devices page.
/// Never another site (`//evil.example`, `/\evil.example`), the login page or log-out.
pub(crate) fn safe_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.starts_with("/login")
        && !next.starts_with("/logout")
        && next.len() <= 2048
        && next.chars().all(|c| c.is_ascii_graphic());
    if ok { next } else { HOME }
}

// ---- handlers -------------------------------------------------------------------------------

async fn root() -> Response {
    see_other(HOME)
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

async fn login_page(State(svc): State<Arc<Service>>, Query(q): Query<NextQuery>) -> Response {
    let next = safe_next(&q.next);
    page(
        StatusCode::OK,
        kerberos_link(&svc, pages::login("", next, None), next),
    )
}

/// With the negotiate provider, the login page also offers Kerberos sign-in (the browser's
/// domain logon ticket, no password typed).
fn kerberos_link(svc: &Service, html: String, next: &str) -> String {
    if !svc.config().auth.allows(Provider::Negotiate) {
        return html;
    }
    let link = format!(
        "<p><a href=\"/login/negotiate?next={}\" id=\"login-kerberos\">Sign in with Kerberos \
         (your domain logon)</a></p>",
        html::Enc(next)
    );
    match html.find("</form></div>") {
        Some(i) => {
            let at = i + "</form>".len();
            format!("{}{link}{}", &html[..at], &html[at..])
        }
        None => html,
    }
}

/// `GET /login/negotiate`: Kerberos sign-in for browsers. The `[auth]` middleware has already
/// accepted the `Authorization: Negotiate` token (and added the mutual-authentication token to
/// the answer); this opens a console session for the principal. Without a token it answers 401
/// `WWW-Authenticate: Negotiate`, which makes a browser with a ticket retry with one.
async fn login_negotiate(
    State(svc): State<Arc<Service>>,
    Query(q): Query<NextQuery>,
    identity: Option<axum::Extension<Identity>>,
) -> Response {
    let next = safe_next(&q.next);
    if !svc.config().auth.allows(Provider::Negotiate) {
        let f = ApiFailure::new(
            StatusCode::NOT_FOUND,
            "AUTH-PROVIDER-DISABLED",
            "Kerberos sign-in is not enabled on this server ([auth] providers)",
        );
        return page(f.status, pages::login("", next, Some(&f)));
    }
    match identity {
        Some(axum::Extension(id)) if id.provider == "negotiate" => {
            match svc.open_session(&id.principal).await {
                Ok(r) => {
                    tracing::info!(principal = %id.principal, provider = "negotiate", "admin logged in to the console");
                    with_cookie(see_other(next), session_cookie_header(&r.token))
                }
                Err(f) => page(f.status, pages::login("", next, Some(&f))),
            }
        }
        _ => {
            let f = ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "AUTH-REQUIRED",
                "your browser sent no Kerberos ticket for this server: log on to the domain (or \
                 kinit), allow this site for Negotiate in the browser, or sign in with a password",
            );
            let body = kerberos_link(&svc, pages::login("", next, Some(&f)), next);
            let mut r = page(f.status, body);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Negotiate"),
            );
            r
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

async fn login(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return bad_form(None, "login", &e),
    };
    let next = safe_next(&form.next);
    if let Err(reason) = same_origin(&headers) {
        let f = csrf_failure(&form.username, &reason);
        return page(f.status, pages::login(&form.username, next, Some(&f)));
    }
    let req = LoginRequest {
        username: form.username.trim().to_owned(),
        password: form.password,
    };
    match svc.login(req).await {
        Ok(r) => with_cookie(see_other(next), session_cookie_header(&r.token)),
        Err(f) => page(
            f.status,
            kerberos_link(&svc, pages::login(&form.username, next, Some(&f)), next),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(svc): State<Arc<Service>>,
    session: ConsoleSession,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let nav = session.nav(Section::None);
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return bad_form(Some(&nav), "logout", &e),
    };
    if let Err(f) = session.check_post(&headers, &form.csrf) {
        return failure(Some(&nav), &f);
    }
    if let Err(f) = svc.logout(&session.token).await {
        return failure(Some(&nav), &f);
    }
    tracing::info!(user = %session.user.username, "admin logged out of the console");
    with_cookie(see_other("/login"), clear_cookie_header())
}

async fn devices(State(svc): State<Arc<Service>>, session: ConsoleSession) -> Response {
    let nav = session.nav(Section::Devices);
    match svc.devices().await {
        Ok(list) => {
            let mut html = pages::devices(&nav, &list, now());
            // `protocol = "http"` is a warned-about choice: said where devices are watched.
            let listen = &svc.config().listen;
            if listen.protocol == steward_proto::Protocol::Http {
                html = html.replacen(
                    "<h1>Devices</h1>",
                    &format!(
                        "<h1>Devices</h1>{}",
                        pages::http_warning(&listen.agent_http.to_string())
                    ),
                    1,
                );
            }
            page(StatusCode::OK, html)
        }
        Err(f) => failure(Some(&nav), &f),
    }
}

async fn certificates(State(svc): State<Arc<Service>>, session: ConsoleSession) -> Response {
    let nav = session.nav(Section::Certificates);
    match svc.listener_cert_status().await {
        Ok(list) => {
            // The root roll's phase and progress; the listeners are shown without it.
            let roll = svc.ca_roll_status().await.ok();
            page(
                StatusCode::OK,
                pages::certificates(&nav, &list, roll.as_ref()),
            )
        }
        Err(f) => failure(Some(&nav), &f),
    }
}

async fn gateways(State(svc): State<Arc<Service>>, session: ConsoleSession) -> Response {
    let nav = session.nav(Section::Gateways);
    match svc.gateways().await {
        Ok(list) => page(StatusCode::OK, pages::gateways(&nav, &list, now())),
        Err(f) => failure(Some(&nav), &f),
    }
}

async fn device(
    State(svc): State<Arc<Service>>,
    session: ConsoleSession,
    Path(id): Path<String>,
) -> Response {
    let nav = session.nav(Section::Devices);
    let detail = match svc.device(&id).await {
        Ok(d) => d,
        Err(f) => return failure(Some(&nav), &f),
    };
    // The device's task rows carry IDs only; the task list names their commands.
    let commands: HashMap<u64, (String, Vec<String>)> = match svc.tasks().await {
        Ok(list) => list
            .into_iter()
            .map(|t| (t.id, (t.command, t.args)))
            .collect(),
        Err(f) => return failure(Some(&nav), &f),
    };
    page(
        StatusCode::OK,
        pages::device(&nav, &detail, &commands, now()),
    )
}

/// The tasks page, with the start form holding `values` and, after a refused start, its error.
async fn tasks_page(
    svc: &Service,
    nav: &Nav,
    values: &TaskFormValues,
    error: Option<&ApiFailure>,
) -> Response {
    match svc.tasks().await {
        Ok(list) => page(
            error.map_or(StatusCode::OK, |f| f.status),
            pages::tasks(nav, &list, values, error, now()),
        ),
        Err(f) => failure(Some(nav), &f),
    }
}

async fn tasks(State(svc): State<Arc<Service>>, session: ConsoleSession) -> Response {
    let nav = session.nav(Section::Tasks);
    tasks_page(&svc, &nav, &TaskFormValues::default(), None).await
}

#[derive(Debug, Deserialize)]
struct TaskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    timeout_secs: String,
}

/// The arguments field: **one argument per line**, taken literally — spaces inside a line are
/// part of the argument, nothing is quoted, split or expanded (tasks run without a shell).
/// Lines that are empty or only blanks are skipped; the CR of the browser's CRLF is dropped.
pub(crate) fn parse_args(text: &str) -> Vec<String> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The form's task, or why it is not one (before the service's own checks).
fn new_task(form: &TaskForm) -> Result<NewTask, ApiFailure> {
    let timeout = form.timeout_secs.trim();
    let timeout_secs = timeout.parse::<u64>().map_err(|_| {
        ApiFailure::bad_request(
            "TASK-INVALID",
            format!("the timeout {timeout:?} is not a whole number of seconds"),
        )
    })?;
    Ok(NewTask {
        command: form.command.trim().to_owned(),
        args: parse_args(&form.args),
        timeout_secs,
        target: form.target.trim().to_owned(),
    })
}

async fn start_task(
    State(svc): State<Arc<Service>>,
    session: ConsoleSession,
    headers: HeaderMap,
    form: Result<Form<TaskForm>, FormRejection>,
) -> Response {
    let nav = session.nav(Section::Tasks);
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return bad_form(Some(&nav), "start task", &e),
    };
    let values = TaskFormValues {
        command: form.command.clone(),
        args: form.args.clone(),
        target: form.target.clone(),
        timeout_secs: form.timeout_secs.clone(),
    };
    if let Err(f) = session.check_post(&headers, &form.csrf) {
        return tasks_page(&svc, &nav, &values, Some(&f)).await;
    }
    let created = match new_task(&form) {
        Ok(t) => svc.create_task(&session.user, t).await,
        Err(f) => Err(f),
    };
    match created {
        Ok(c) => see_other(&format!("/tasks/{}", c.id)),
        Err(f) if f.status == StatusCode::UNAUTHORIZED => failure(Some(&nav), &f),
        Err(f) => tasks_page(&svc, &nav, &values, Some(&f)).await,
    }
}

async fn task(
    State(svc): State<Arc<Service>>,
    session: ConsoleSession,
    Path(id): Path<String>,
) -> Response {
    let nav = session.nav(Section::Tasks);
    let Ok(n) = id.parse::<u64>() else {
        return failure(
            Some(&nav),
            &ApiFailure::not_found("TASK-NOT-FOUND", format!("no task {id:?}")),
        );
    };
    match svc.task(n).await {
        Ok(t) => page(StatusCode::OK, pages::task(&nav, &t, now())),
        Err(f) => failure(Some(&nav), &f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn csrf_tokens_are_per_session_and_checked_exactly() {
        let a = csrf_token("session-a");
        assert_eq!(a, csrf_token("session-a"), "derived, so stable");
        assert_ne!(a, csrf_token("session-b"));
        assert_eq!(a.len(), 64);
        // Not the database's session hash.
        assert_ne!(a, crate::secret::token_hash("session-a"));
        assert!(csrf_matches("session-a", &a));
        assert!(!csrf_matches("session-b", &a), "another session's token");
        assert!(!csrf_matches("session-a", ""));
        assert!(!csrf_matches("session-a", &a[..63]));
        assert!(!csrf_matches("session-a", &format!("{a}0")));
        let mut flipped = a.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        assert!(!csrf_matches(
            "session-a",
            &String::from_utf8(flipped).unwrap_or_default()
        ));
    }

    #[test]
    fn posts_must_come_from_this_console() {
        let host = "127.0.0.1:4727";
        let ok = headers(&[("host", host), ("origin", "https://127.0.0.1:4727")]);
        assert_eq!(same_origin(&ok), Ok(()));
        let case = headers(&[
            ("host", "Steward.Example:4727"),
            ("origin", "https://steward.example:4727"),
        ]);
        assert_eq!(same_origin(&case), Ok(()));
        for bad in [
            "https://evil.example",
            "http://127.0.0.1:4727",
            "https://127.0.0.1:4728",
            "null",
        ] {
            let mut h = headers(&[("host", host)]);
            h.insert("origin", HeaderValue::from_static(bad));
            let e = same_origin(&h).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        // No Origin: a non-browser client, unless fetch metadata says another site sent it.
        assert_eq!(same_origin(&headers(&[("host", host)])), Ok(()));
        assert_eq!(
            same_origin(&headers(&[
                ("host", host),
                ("sec-fetch-site", "same-origin")
            ])),
            Ok(())
        );
        assert!(
            same_origin(&headers(&[
                ("host", host),
                ("sec-fetch-site", "cross-site")
            ]))
            .is_err()
        );
        assert!(same_origin(&headers(&[("host", host), ("sec-fetch-site", "same-site")])).is_err());
        assert!(same_origin(&headers(&[("origin", "https://127.0.0.1:4727")])).is_err());
    }

    #[test]
    fn session_check_wants_both_origin_and_token() {
        let s = ConsoleSession {
            user: AdminUser {
                username: "admin".into(),
            },
            token: "tok".into(),
        };
        let good = csrf_token("tok");
        let same = headers(&[("host", "h:1"), ("origin", "https://h:1")]);
        let foreign = headers(&[("host", "h:1"), ("origin", "https://evil.example")]);
        assert!(s.check_post(&same, &good).is_ok());
        let e = s.check_post(&same, "").unwrap_err();
        assert_eq!((e.status, e.id), (StatusCode::FORBIDDEN, "CONSOLE-CSRF"));
        let e = s.check_post(&foreign, &good).unwrap_err();
        assert_eq!(e.id, "CONSOLE-CSRF");
        assert!(e.message.contains("evil.example"), "{}", e.message);
    }

    #[test]
    fn session_cookie_is_read_and_set_safely() {
        let h = headers(&[("cookie", "a=b; steward_session=t0k; c=d")]);
        assert_eq!(session_from_cookie(&h).as_deref(), Some("t0k"));
        assert_eq!(
            session_from_cookie(&headers(&[("cookie", "steward_session=")])),
            None
        );
        let bearer = headers(&[("authorization", "Bearer x")]);
        assert_eq!(
            session_from_cookie(&bearer),
            None,
            "pages use the cookie only"
        );
        let c = session_cookie_header("t0k");
        let c = c.to_str().unwrap_or_default();
        for attr in [
            "steward_session=t0k",
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
        ] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(
            clear_cookie_header()
                .to_str()
                .unwrap_or_default()
                .starts_with(&format!("{SESSION_COOKIE}=;"))
        );
    }

    #[test]
    fn next_stays_on_this_console() {
        assert_eq!(safe_next("/tasks/3"), "/tasks/3");
        assert_eq!(safe_next("/devices?x=1"), "/devices?x=1");
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "/login",
            "/login?next=/x",
            "/logout",
            "devices",
            "/a b",
            "/a\r\nSet-Cookie: x",
            "/é",
        ] {
            assert_eq!(safe_next(bad), HOME, "{bad:?}");
        }
    }

    #[test]
    fn arguments_are_one_per_line() {
        assert_eq!(parse_args("hello-console"), vec!["hello-console"]);
        assert_eq!(
            parse_args("-n\r\nhello world\r\n\r\n  \n two  "),
            vec!["-n", "hello world", " two  "]
        );
        assert!(parse_args("").is_empty());
        let form = TaskForm {
            csrf: String::new(),
            command: " echo ".into(),
            args: "a\nb c".into(),
            target: " all ".into(),
            timeout_secs: " 30 ".into(),
        };
        let t = new_task(&form).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t,
            NewTask {
                command: "echo".into(),
                args: vec!["a".into(), "b c".into()],
                timeout_secs: 30,
                target: "all".into(),
            }
        );
        let bad = TaskForm {
            timeout_secs: "soon".into(),
            ..form
        };
        assert_eq!(new_task(&bad).unwrap_err().id, "TASK-INVALID");
    }
}

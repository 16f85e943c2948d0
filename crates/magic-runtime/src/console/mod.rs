//! The operator console: server-rendered HTML pages at `/console` for controllers, executions,
//! the audit log, approvals and health.
//!
//! Owns: console sessions (login with an API key or bearer token, an HttpOnly SameSite=Strict
//! cookie naming a server-side session, logout), the CSRF token of every state-changing form
//! (the login form's own: a pre-session cookie and a hidden field that must match), and the
//! pages. Failed sign-ins count against the address's `MAGIC_AUTH_FAILURE_LIMIT`, as the API's
//! do. Identities and permissions are the API's: a session keeps the credential it
//! was opened with (in memory only, never in the cookie) and re-authenticates it on every
//! request through [`crate::api::identify`], so revoking a key or an expired token ends the
//! session too; every page checks the permission of the matching API route.
//!
//! Must never: put a credential in a cookie, URL or page; accept a state-changing form from a
//! session without its CSRF token; show a page before its permission check; redirect to
//! another origin after login; need JavaScript or load anything from another origin.

pub mod activity;
pub mod html;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;

use crate::api::{credentials, Credentials};
use crate::auth::Identity;
use crate::rbac::Permission;
use crate::Runtime;
use html::{esc, Chrome};

/// Name of the session cookie.
pub const COOKIE: &str = "magic_console";
/// Name of the login form's pre-session CSRF cookie.
pub const LOGIN_COOKIE: &str = "magic_login_csrf";
/// How long a console session lives (absolute, from login).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once (expired ones are dropped first; beyond it the oldest goes).
pub const MAX_SESSIONS: usize = 10_000;

/// The credential a session was opened with.
#[derive(Clone)]
enum Secret {
    ApiKey(String),
    Bearer(String),
}

struct Session {
    secret: Secret,
    csrf: String,
    expires: Instant,
}

/// Console sessions of this node (in memory: a restart or another node asks to log in again).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_token() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    fn open(&self, secret: Secret) -> Option<(String, String)> {
        let mut map = self.map.lock().ok()?;
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let (id, csrf) = (random_token(), random_token());
        map.insert(
            id.clone(),
            Session {
                secret,
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        Some((id, csrf))
    }

    fn get(&self, id: &str) -> Option<(Secret, String)> {
        let mut map = self.map.lock().ok()?;
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some((s.secret.clone(), s.csrf.clone())),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// The console's shared state.
#[derive(Clone)]
pub struct Console {
    rt: Arc<Runtime>,
    sessions: Arc<Sessions>,
    /// The last audit verification: (when, report).
    verified: Arc<Mutex<Option<(String, magic_audit::VerifyReport)>>>,
}

/// Who is looking at a page, and the CSRF token their forms must carry (`None` when the
/// request authenticated with a header, which a browser cannot forge cross-site).
#[derive(Clone)]
pub struct Viewer {
    /// The identity, exactly as the API would see it.
    pub identity: Identity,
    /// The session's CSRF token.
    pub csrf: Option<String>,
}

/// The value of cookie `name` in `headers`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where to go after login: only a console path, never another origin.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/console" || n.starts_with("/console/"))
                && !n.contains("//")
                && !n.contains('\\')
                && !n.bytes().any(|b| b.is_ascii_control()) =>
        {
            n
        }
        _ => "/console/controllers",
    }
}

/// Whether a form's CSRF token matches the session's (always true without a session).
pub fn csrf_ok(session: Option<&str>, presented: Option<&str>) -> bool {
    match session {
        None => true,
        Some(expected) => presented.is_some_and(|p| {
            !p.is_empty() && crate::auth::constant_time_eq(p.as_bytes(), expected.as_bytes())
        }),
    }
}

/// Build the console router (merged into the API router by `api::router`).
pub fn router<S: Clone + Send + Sync + 'static>(rt: Arc<Runtime>) -> Router<S> {
    let state = Console {
        rt,
        sessions: Arc::new(Sessions::default()),
        verified: Arc::new(Mutex::new(None)),
    };
    let protected = Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/controllers") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/controllers") }),
        )
        .route("/console/logout", post(logout))
        .route("/console/controllers", get(pages::controllers))
        .route("/console/controllers/{name}", get(pages::controller))
        .route(
            "/console/controllers/{name}/rollback",
            get(pages::rollback_confirm).post(pages::rollback),
        )
        .route("/console/executions", get(pages::executions))
        .route("/console/executions/{request_id}", get(pages::execution))
        .route("/console/audit", get(pages::audit))
        .route("/console/approvals", get(pages::approvals))
        .route("/console/approvals/{id}", post(pages::decide))
        .route("/console/health", get(pages::health))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .route("/console/assets/console.css", get(css))
        .merge(protected)
        .with_state(state)
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        html::CSS,
    )
        .into_response()
}

/// An HTML response with the console's security headers.
pub fn html_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn authenticate(State(c): State<Console>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let mut ip = None;
    let (creds, csrf): (Credentials<'_>, Option<String>);
    let session;
    match credentials(headers) {
        Credentials::None => {
            session = cookie(headers, COOKIE).and_then(|id| c.sessions.get(id));
            match &session {
                Some((Secret::ApiKey(k), token)) => {
                    creds = Credentials::ApiKey(k);
                    csrf = Some(token.clone());
                }
                Some((Secret::Bearer(t), token)) => {
                    creds = Credentials::Bearer(t);
                    csrf = Some(token.clone());
                }
                None => {
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/console");
                    let to = format!("/console/login?next={}", html::url_enc(path));
                    return Redirect::to(&to).into_response();
                }
            }
        }
        other => {
            ip = crate::api::client_addr(&c.rt, headers, req.extensions());
            if let Err(retry_after) = crate::api::failure_gate(&c.rt, ip) {
                return crate::api::with_retry_after(
                    crate::api::too_many_failures(retry_after).into_envelope(&request_id(&req)),
                    retry_after,
                );
            }
            creds = other;
            csrf = None;
        }
    }
    let identity = match crate::api::identify(&c.rt, creds, None).await {
        Ok(i) => i,
        Err(e) if csrf.is_some() => {
            // The session's key was revoked or its token expired: log in again.
            if let Some(id) = cookie(req.headers(), COOKIE) {
                c.sessions.close(id);
            }
            return login_form(
                StatusCode::UNAUTHORIZED,
                Some(&e.message),
                safe_next(Some(req.uri().path())),
                is_https(req.headers()),
            );
        }
        Err(e) => {
            crate::api::count_failure(&c.rt, ip, &e);
            return e.into_envelope(&request_id(&req));
        }
    };
    req.extensions_mut().insert(Viewer { identity, csrf });
    next.run(req).await
}

fn request_id(req: &Request) -> String {
    req.extensions()
        .get::<crate::api::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// `Err(403 page)` unless the viewer holds `permission`.
#[allow(clippy::result_large_err)]
pub fn need(v: &Viewer, permission: Permission, section: &str) -> Result<(), Response> {
    if v.identity.may(permission) {
        return Ok(());
    }
    let roles: Vec<&str> = v.identity.roles.iter().map(|r| r.as_str()).collect();
    let body = html::notice(
        "error",
        &format!(
            "Not permitted (E4002): {} (role {}) lacks the {permission:?} permission this page needs.",
            esc(&v.identity.name),
            esc(&roles.join(", "))
        ),
    );
    Err(html_response(
        StatusCode::FORBIDDEN,
        html::page(
            &Chrome {
                title: "Not permitted",
                section,
                who: Some(&v.identity.name),
                csrf: v.csrf.as_deref(),
                refresh: None,
            },
            &body,
        ),
    ))
}

/// `Err(403 page)` when a form's CSRF token is missing or wrong.
#[allow(clippy::result_large_err)]
pub fn need_csrf(v: &Viewer, presented: Option<&str>, section: &str) -> Result<(), Response> {
    if csrf_ok(v.csrf.as_deref(), presented) {
        return Ok(());
    }
    Err(html_response(
        StatusCode::FORBIDDEN,
        html::page(
            &Chrome {
                title: "Form expired",
                section,
                who: Some(&v.identity.name),
                csrf: v.csrf.as_deref(),
                refresh: None,
            },
            &html::notice(
                "error",
                "The form's CSRF token is missing or wrong: nothing was changed. Reload the page and try again.",
            ),
        ),
    ))
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    login_form(
        StatusCode::OK,
        None,
        safe_next(q.next.as_deref()),
        is_https(&headers),
    )
}

/// The sign-in page, with a fresh login CSRF token in a pre-session cookie and in the form.
fn login_form(status: StatusCode, error: Option<&str>, next: &str, secure: bool) -> Response {
    let token = random_token();
    let mut body = String::new();
    if let Some(e) = error {
        body.push_str(&html::notice(
            "error",
            &format!("Sign-in failed: {}", esc(e)),
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/console/login\" class=\"login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <p><label for=\"credential\">API key or bearer token</label>\
         <input id=\"credential\" name=\"credential\" type=\"password\" autocomplete=\"off\" required size=\"48\"></p>\
         <p><button type=\"submit\">Sign in</button></p></form>\
         <p>Use a key from <code>magic keys create</code> (or the admin key). The console shows \
         what your role may see, exactly as the API does.</p>",
        esc(next)
    ));
    let mut r = html_response(
        status,
        html::page(
            &Chrome {
                title: "Sign in to the console",
                section: "",
                who: None,
                csrf: None,
                refresh: None,
            },
            &body,
        ),
    );
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{LOGIN_COOKIE}={token}; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    credential: String,
    next: Option<String>,
    csrf: Option<String>,
}

/// Whether a login form's CSRF field matches its pre-session cookie (double submit): both
/// present, non-empty and equal. Pure.
pub fn login_csrf_ok(cookie: Option<&str>, field: Option<&str>) -> bool {
    match (cookie, field) {
        (Some(c), Some(f)) => {
            !c.is_empty() && crate::auth::constant_time_eq(c.as_bytes(), f.as_bytes())
        }
        _ => false,
    }
}

/// Whether the request came over HTTPS (directly or through a proxy saying so).
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

async fn login(
    State(c): State<Console>,
    headers: HeaderMap,
    extensions: http::Extensions,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref()).to_string();
    let https = is_https(&headers);
    if !login_csrf_ok(cookie(&headers, LOGIN_COOKIE), f.csrf.as_deref()) {
        return login_form(
            StatusCode::FORBIDDEN,
            Some("the sign-in form expired or did not come from this console; try again"),
            &next,
            https,
        );
    }
    let ip = crate::api::client_addr(&c.rt, &headers, &extensions);
    if let Err(retry_after) = crate::api::failure_gate(&c.rt, ip) {
        return crate::api::with_retry_after(
            login_form(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "too many failed sign-ins from this address (E4003); retry after {retry_after}s"
                )),
                &next,
                https,
            ),
            retry_after,
        );
    }
    let credential = f.credential.trim().to_string();
    let jwt_like = c.rt.config.jwt.is_some() && credential.matches('.').count() == 2;
    let (secret, creds) = if jwt_like {
        (
            Secret::Bearer(credential.clone()),
            Credentials::Bearer(&credential),
        )
    } else {
        (
            Secret::ApiKey(credential.clone()),
            Credentials::ApiKey(&credential),
        )
    };
    let identity = match crate::api::identify(&c.rt, creds, None).await {
        Ok(i) => i,
        Err(e) => {
            crate::api::count_failure(&c.rt, ip, &e);
            return login_form(e.status(), Some(&e.message), &next, https);
        }
    };
    let Some((id, _csrf)) = c.sessions.open(secret) else {
        return login_form(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("the session store is unavailable"),
            &next,
            https,
        );
    };
    tracing::info!(event = "console_login", actor = %identity.name);
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    // The login token has served its purpose.
    r.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "magic_login_csrf=; Path=/console/login; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(c): State<Console>,
    Extension(v): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = need_csrf(&v, f.csrf.as_deref(), "") {
        return r;
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        c.sessions.close(id);
    }
    let mut r = Redirect::to("/console/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "magic_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_in_the_console() {
        for (next, want) in [
            (None, "/console/controllers"),
            (Some("/console/audit?x=1"), "/console/audit?x=1"),
            (Some("/console"), "/console"),
            (
                Some("https://evil.example/console/"),
                "/console/controllers",
            ),
            (Some("//evil.example/console/"), "/console/controllers"),
            (Some("/console//evil.example"), "/console/controllers"),
            (Some("/console/\\evil"), "/console/controllers"),
            (Some("/consolex"), "/console/controllers"),
            (Some("/api/admin/keys"), "/console/controllers"),
            (Some("/console/\nSet-Cookie:x"), "/console/controllers"),
        ] {
            assert_eq!(safe_next(next), want, "{next:?}");
        }
    }

    #[test]
    fn csrf_table() {
        for (session, presented, ok) in [
            (None, None, true),
            (None, Some("x"), true),
            (Some("tok"), None, false),
            (Some("tok"), Some(""), false),
            (Some("tok"), Some("tok2"), false),
            (Some("tok"), Some("TOK"), false),
            (Some("tok"), Some("tok"), true),
        ] {
            assert_eq!(csrf_ok(session, presented), ok, "{session:?} {presented:?}");
        }
    }

    #[test]
    fn login_csrf_table() {
        for (cookie, field, ok) in [
            (None, None, false),
            (Some("tok"), None, false),
            (None, Some("tok"), false),
            (Some(""), Some(""), false),
            (Some("tok"), Some(""), false),
            (Some("tok"), Some("tok2"), false),
            (Some("tok"), Some("TOK"), false),
            (Some("tok"), Some("tok"), true),
        ] {
            assert_eq!(login_csrf_ok(cookie, field), ok, "{cookie:?} {field:?}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; magic_console_x=2; magic_console=abc"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let (id, csrf) = s.open(Secret::ApiKey("k".into())).expect("open");
        assert_ne!(id, csrf);
        assert_eq!(id.len(), 64);
        assert!(s.get(&id).is_some());
        assert!(s.get("nope").is_none());
        if let Ok(mut m) = s.map.lock() {
            if let Some(x) = m.get_mut(&id) {
                x.expires = Instant::now() - Duration::from_secs(1);
            }
        }
        assert!(s.get(&id).is_none());
        let (id2, _) = s.open(Secret::ApiKey("k".into())).expect("open");
        s.close(&id2);
        assert!(s.get(&id2).is_none());
    }
}

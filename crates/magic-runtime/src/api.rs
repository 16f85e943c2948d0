//! The HTTP API (axum): execute, health, readiness, metrics, OpenAPI and the admin API the
//! CLI uses.
//!
//! Owns: routing, request IDs, authentication of each request (API key or JWT bearer), the
//! permission check of each endpoint (the table is `rbac`'s), body limits, and mapping every
//! outcome to the response or error envelope of DESIGN.md. Must never: answer an error
//! without the envelope and request ID, let an unauthenticated request past the open
//! endpoints (health, readyz, metrics), or run a protected handler's work before its
//! permission check.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use magic_contract::ErrorCode;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::auth::Identity;
use crate::error::{ApiError, Failure};
use crate::rbac::Permission;
use crate::registry::{parse_version, ControllerStatus, ControllerSummary, DeployOutcome};
use crate::Runtime;

/// The request ID of the request being handled.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Build the router.
pub fn router(rt: Arc<Runtime>) -> Router {
    let protected = Router::new()
        .route("/api/execute/{controller}", post(execute))
        .route("/api/admin/controllers", get(list_controllers).post(deploy))
        .route("/api/admin/controllers/{name}", get(controller_status))
        .route("/api/admin/controllers/{name}/rollback", post(rollback))
        .route(
            "/api/admin/controllers/{name}/versions/{version}/package",
            get(export_package),
        )
        .route("/api/admin/secrets", get(list_secrets))
        .route(
            "/api/admin/secrets/{controller}/{name}",
            axum::routing::put(set_secret).delete(delete_secret),
        )
        .route("/api/admin/rawsql", get(list_rawsql))
        .route(
            "/api/admin/rawsql/{controller}",
            axum::routing::put(approve_rawsql).delete(revoke_rawsql),
        )
        .route("/api/admin/triggers", get(list_triggers))
        .route(
            "/api/admin/triggers/{controller}",
            axum::routing::put(set_trigger).delete(remove_trigger),
        )
        .route("/api/admin/audit/verify", get(audit_verify))
        .route("/api/admin/audit/records", get(audit_records))
        .route("/api/admin/keys", get(list_keys).post(create_key))
        .route("/api/admin/keys/{key}", axum::routing::delete(revoke_key))
        .route("/api/openapi.json", get(openapi))
        // Deploy approvals (security plane).
        .route("/api/admin/approvals", get(list_approvals))
        .route("/api/admin/approvals/{id}", get(get_approval))
        .route("/api/admin/approvals/{id}/approve", post(approve_deploy))
        .route("/api/admin/approvals/{id}/reject", post(reject_deploy))
        .route_layer(middleware::from_fn_with_state(rt.clone(), authenticate));
    let tls = rt.config.tls;
    let origins = rt.config.allowed_origins.clone();
    let app = Router::new()
        .route("/api/health", get(health))
        .route("/api/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(protected)
        .merge(crate::console::router(rt.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn(request_id))
        .layer(middleware::map_response(node_header(&rt)))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let path = crate::hardening::path_of(&req);
            async move {
                let mut response = next.run(req).await;
                crate::hardening::security_headers(&path, tls, &mut response);
                response
            }
        }))
        .with_state(rt);
    match origins {
        Some(origins) => app.layer(crate::hardening::cors_layer(&origins)),
        None => app,
    }
}

/// Adds `X-Magic-Node` (this node's name) to every response (extension: which node of a
/// cluster answered).
fn node_header(
    rt: &Runtime,
) -> impl Fn(Response) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    let value = rt
        .node_id
        .get()
        .and_then(|id| HeaderValue::from_str(id).ok());
    move |mut response: Response| {
        if let Some(v) = &value {
            response.headers_mut().insert("x-magic-node", v.clone());
        }
        std::future::ready(response)
    }
}

/// `X-Request-ID`: taken from the request when it is sane (1–128 of `[A-Za-z0-9._:-]`),
/// generated otherwise, and always echoed.
pub fn accept_request_id(presented: Option<&str>) -> String {
    match presented {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                }) =>
        {
            id.to_string()
        }
        _ => format!("req_{}", uuid::Uuid::new_v4().simple()),
    }
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = accept_request_id(
        req.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The credentials a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// None at all.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// `X-API-Key`.
    ApiKey(&'a str),
    /// An `Authorization` header of another scheme, or one that is not text.
    Unsupported,
}

/// Which credentials `headers` present. A bearer token wins over an API key: a request is
/// authenticated by exactly one of them, never a mix.
pub fn credentials(headers: &HeaderMap) -> Credentials<'_> {
    if let Some(auth) = headers.get(http::header::AUTHORIZATION) {
        let Ok(auth) = auth.to_str() else {
            return Credentials::Unsupported;
        };
        return match auth.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Credentials::Bearer(token.trim())
            }
            _ => Credentials::Unsupported,
        };
    }
    match headers.get("x-api-key").map(|v| v.to_str()) {
        Some(Ok(k)) => Credentials::ApiKey(k),
        Some(Err(_)) => Credentials::Unsupported,
        None => Credentials::None,
    }
}

/// The identity `credentials` authenticate, or why not (E4001; E5002 when the key store is
/// down). Shared by the API and the console, so both accept exactly the same identities.
pub(crate) async fn identify(
    rt: &Runtime,
    credentials: Credentials<'_>,
    peer: Option<&crate::tls::PeerNames>,
) -> Result<Identity, ApiError> {
    let refuse = |msg: String| ApiError::new(ErrorCode::NotAuthenticated, msg);
    match credentials {
        Credentials::None => match (peer, &rt.config.tls_settings) {
            // A verified client certificate (mTLS) is the credential.
            (Some(names), Some(tls)) => tls.roles.identity(&names.0).ok_or_else(|| {
                refuse(format!(
                    "client certificate {:?} has no role (MAGIC_MTLS_ROLES)",
                    names.0
                ))
            }),
            _ => Err(refuse(
                "missing credentials: send an X-API-Key or Authorization: Bearer header".into(),
            )),
        },
        Credentials::Unsupported => Err(refuse(
            "unsupported Authorization header: use Bearer <JWT> or X-API-Key".into(),
        )),
        Credentials::Bearer(token) => match &rt.config.jwt {
            None => Err(refuse(
                "bearer tokens are not enabled on this runtime (JWT_SECRET, JWT_JWKS_URL or OIDC_ISSUER)".into(),
            )),
            Some(jwt) => crate::jwks::authenticate(jwt, rt.jwks.as_deref(), token)
                .await
                .map_err(|e| match e {
                    crate::jwt::JwtError::KeysUnavailable => {
                        ApiError::new(ErrorCode::BackendUnavailable, e.to_string())
                    }
                    e => refuse(e.to_string()),
                }),
        },
        Credentials::ApiKey(key) => match rt.keys.authenticate(key).await {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(refuse("invalid, expired or revoked API key".into())),
            Err(e) => {
                tracing::error!(error = %e, "api key lookup failed");
                Err(ApiError::new(
                    ErrorCode::BackendUnavailable,
                    "the runtime store is unavailable",
                ))
            }
        },
    }
}

/// The address `req` comes from (`None` when the server did not record the peer, e.g. in
/// in-process tests).
pub(crate) fn client_addr(
    rt: &Runtime,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> Option<std::net::IpAddr> {
    let peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(crate::hardening::client_ip(
        peer,
        &forwarded,
        &rt.config.trusted_proxies,
    ))
}

/// 429 `E4003` with `Retry-After` when `ip` used up its failed authentications
/// (`MAGIC_AUTH_FAILURE_LIMIT`).
pub(crate) fn failure_gate(rt: &Runtime, ip: Option<std::net::IpAddr>) -> Result<(), u64> {
    match (&rt.auth_failures, ip) {
        (Some(limiter), Some(ip)) => limiter.check(ip),
        _ => Ok(()),
    }
}

/// Count a refused authentication (401 `E4001` only: an unavailable store is no guess).
pub(crate) fn count_failure(rt: &Runtime, ip: Option<std::net::IpAddr>, error: &ApiError) {
    if let (Some(limiter), Some(ip), ErrorCode::NotAuthenticated) =
        (&rt.auth_failures, ip, error.code)
    {
        limiter.failed(ip);
        tracing::info!(event = "auth_failed", client = %ip, "authentication failed");
    }
}

/// The 429 answer to an address over its failed-authentication limit.
pub(crate) fn too_many_failures(retry_after: u64) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!(
            "too many failed authentications from this address (MAGIC_AUTH_FAILURE_LIMIT); retry after {retry_after}s"
        ),
    )
    .with_details(serde_json::json!({ "retry_after_seconds": retry_after }))
}

/// `response` with `Retry-After: retry_after`.
pub(crate) fn with_retry_after(mut response: Response, retry_after: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    response
}

async fn authenticate(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req.extensions().get::<crate::tls::PeerNames>().cloned();
    let presented = credentials(req.headers());
    // Brute force: only requests presenting a credential are judged (none at all is no guess).
    let ip = match presented {
        Credentials::None => None,
        _ => client_addr(&rt, req.headers(), req.extensions()),
    };
    if let Err(retry_after) = failure_gate(&rt, ip) {
        return with_retry_after(
            too_many_failures(retry_after).into_envelope(&rid.0),
            retry_after,
        );
    }
    let identity = match identify(&rt, presented, peer.as_ref()).await {
        Ok(identity) => identity,
        Err(e) => {
            count_failure(&rt, ip, &e);
            return e.into_envelope(&rid.0);
        }
    };
    if let Some(limiter) = &rt.limiter {
        if let Err(retry_after) = limiter.check(&identity.name, &identity.roles).await {
            let mut response = ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "{} exceeded its request-rate limit (MAGIC_RATE_LIMIT); retry after {retry_after}s",
                    identity.name
                ),
            )
            .with_details(serde_json::json!({ "retry_after_seconds": retry_after }))
            .into_envelope(&rid.0);
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
            return response;
        }
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}

/// 403 E4002 unless one of the identity's roles grants `permission`.
fn require(identity: &Identity, permission: Permission, rid: &RequestId) -> Result<(), Failure> {
    if identity.may(permission) {
        Ok(())
    } else {
        let roles: Vec<&str> = identity.roles.iter().map(|r| r.as_str()).collect();
        Err(fail(
            rid,
            ApiError::new(
                ErrorCode::NotPermitted,
                format!(
                    "{} (role {}) lacks the {permission:?} permission",
                    identity.name,
                    roles.join(", ")
                ),
            ),
        ))
    }
}

pub(crate) fn fail(rid: &RequestId, error: ApiError) -> Failure {
    Failure {
        request_id: rid.0.clone(),
        error,
    }
}

/// Read a body up to `limit` bytes: 413 beyond it.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::InputInvalid,
            format!("request body exceeds the {limit}-byte limit"),
        )
        .with_status(413)
    };
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::new(
            ErrorCode::InputInvalid,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// Read a small JSON admin body; `expected` shows the caller the shape on a mismatch.
async fn admin_body<T: serde::de::DeserializeOwned>(
    rid: &RequestId,
    headers: &HeaderMap,
    body: Body,
    expected: &str,
) -> Result<T, Failure> {
    let bytes = read_body(body, headers, 64 * 1024)
        .await
        .map_err(|e| fail(rid, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        fail(
            rid,
            ApiError::new(ErrorCode::InputInvalid, format!("expected {expected}: {e}")),
        )
    })
}

/// Audit an admin action by `identity` (answered only once the record is committed).
#[allow(
    clippy::too_many_arguments,
    reason = "one flat call per admin handler reads better than a builder"
)]
pub(crate) async fn audit_admin(
    rt: &Runtime,
    rid: &RequestId,
    identity: &Identity,
    action: &str,
    controller: &str,
    version: Option<&str>,
    target: Option<String>,
    mut details: serde_json::Value,
) -> Result<(), Failure> {
    let mut event = crate::audit_event("admin_action", &rid.0, None, Some(&identity.name));
    event.controller = Some(controller.to_string());
    event.version = version.map(str::to_string);
    event.target = target;
    event.outcome = Some("ok".into());
    details["action"] = action.into();
    event.details = details;
    rt.audit(event).await.map_err(|e| fail(rid, e))
}

/// `?version=` of execute.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ExecuteQuery {
    /// Run this version instead of the active one.
    pub version: Option<String>,
}

/// The 200 body of execute.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecuteResponse {
    /// Request ID (also in `X-Request-ID`).
    pub request_id: String,
    /// Controller name.
    pub controller: String,
    /// Version that ran.
    pub version: String,
    /// The controller's output (valid against the output schema).
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
    /// Execution metrics.
    pub metrics: ExecuteMetrics,
}

/// `metrics` of an execute response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecuteMetrics {
    /// Milliseconds from input validation to output validation.
    pub duration_ms: f64,
    /// Capabilities used successfully.
    pub capabilities_used: Vec<String>,
}

/// Execute a controller.
#[utoipa::path(
    post, path = "/api/execute/{controller}", tag = "execute",
    params(("controller" = String, Path, description = "Controller name"), ExecuteQuery,
           ("X-Request-ID" = Option<String>, Header, description = "Correlation ID, generated when absent")),
    request_body(content = Object, description = "Input, valid against the contract's input schema"),
    responses(
        (status = 200, body = ExecuteResponse),
        (status = 400, description = "E1002 input invalid", body = crate::error::Envelope),
        (status = 401, description = "E4001", body = crate::error::Envelope),
        (status = 403, description = "E4002 not permitted (role or key scope); E2xxx capability denial escaped the controller", body = crate::error::Envelope),
        (status = 404, description = "E1001", body = crate::error::Envelope),
        (status = 413, description = "body too large", body = crate::error::Envelope),
        (status = 429, description = "E3004 concurrency; E4003 request-rate limit of the identity, or too many failed authentications from the address (Retry-After)", body = crate::error::Envelope),
        (status = 500, description = "E5001", body = crate::error::Envelope),
        (status = 502, description = "E1003", body = crate::error::Envelope),
        (status = 503, description = "E5002/E5003", body = crate::error::Envelope),
        (status = 504, description = "E3001", body = crate::error::Envelope),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
async fn execute(
    State(rt): State<Arc<Runtime>>,
    Path(controller): Path<String>,
    Query(query): Query<ExecuteQuery>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ExecuteResponse>, Failure> {
    if !identity.may_execute(&controller) {
        return Err(fail(
            &rid,
            ApiError::new(
                ErrorCode::NotPermitted,
                format!("{} may not execute {controller}", identity.name),
            ),
        ));
    }
    rt.execute(
        &rid.0,
        &controller,
        query.version.as_deref(),
        &identity,
        &headers,
        body,
    )
    .await
    .map(Json)
    .map_err(|e| fail(&rid, e))
}

impl Runtime {
    /// Execute `controller` with the input in `body`: the one path HTTP requests and queue
    /// triggers share (limits, schema checks, worker, audit, metrics, log line).
    pub(crate) async fn execute(
        &self,
        request_id: &str,
        controller: &str,
        version: Option<&str>,
        identity: &Identity,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<ExecuteResponse, ApiError> {
        let version = version.map(parse_version).transpose()?;
        let (deployed, slots) = self.registry.resolve(controller, version.as_ref())?;
        if let Some(policy) = &self.config.policy {
            // A version deployed before the policy tightened does not run past it.
            let verdict = deployed
                .policy_verdict
                .get_or_init(|| policy.check_execute(&deployed.contract).err());
            if let Some(refusal) = verdict {
                return Err(refusal.clone());
            }
        }
        let name = deployed.name.as_str();
        let admitted = crate::slots::admit(
            &slots,
            self.cluster_slots.as_ref(),
            name,
            self.config.max_concurrent,
        )
        .await;
        let Ok(_permit) = admitted else {
            self.metrics
                .executions
                .with_label_values(&[name, "rejected"])
                .inc();
            self.metrics
                .errors
                .with_label_values(&[name, "E3004"])
                .inc();
            self.metrics
                .resource_limit_exceeded
                .with_label_values(&[name, "concurrency"])
                .inc();
            return Err(ApiError::new(
                ErrorCode::ConcurrencyLimit,
                format!(
                    "{name} already runs {} executions{} (CONTROLLER_MAX_CONCURRENT); retry later",
                    self.config.max_concurrent,
                    if self.cluster_slots.is_some() {
                        " across the nodes"
                    } else {
                        ""
                    }
                ),
            ));
        };
        let started = std::time::Instant::now();
        let trace = crate::trace::TraceContext::continue_or_start(
            headers.get("traceparent").and_then(|v| v.to_str().ok()),
        );
        let outcome = self
            .execute_admitted(request_id, &deployed, identity, (headers, &trace), body)
            .await;
        let duration = started.elapsed();
        let (result, used) = match outcome {
            Ok((output, used)) => (Ok(output), used),
            Err((e, used)) => (Err(e), used),
        };
        let status = match &result {
            Ok(_) => "success",
            Err(e) if e.code == ErrorCode::Timeout => "timeout",
            Err(_) => "error",
        };
        self.metrics
            .executions
            .with_label_values(&[name, status])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[name])
            .observe(duration.as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .errors
                .with_label_values(&[name, e.code.as_str()])
                .inc();
        }
        let duration_ms = (duration.as_secs_f64() * 1e6).round() / 1e3;
        let used_json = serde_json::to_string(&used).unwrap_or_default();
        let version_str = deployed.version_text.clone();
        match &result {
            Ok(_) => tracing::info!(
                controller = name, version = %version_str, request_id, trace_id = %trace.trace_id, event = "execution_completed",
                status, duration_ms, capabilities_used = %used_json, actor = %identity.name
            ),
            Err(e) => tracing::warn!(
                controller = name, version = %version_str, request_id, trace_id = %trace.trace_id, event = "execution_completed",
                status, error_code = e.code.as_str(), error = %e.message, duration_ms,
                capabilities_used = %used_json, actor = %identity.name
            ),
        }
        self.metrics
            .activity
            .record(crate::console::activity::ExecutionSummary {
                request_id: request_id.to_string(),
                controller: name.to_string(),
                version: version_str.clone(),
                status: status.to_string(),
                error_code: result.as_ref().err().map(|e| e.code.as_str().to_string()),
                duration_ms,
                capabilities_used: used.clone(),
                actor: identity.name.clone(),
                finished_at: magic_audit::record::now_timestamp(),
            });
        let output = result?;
        Ok(ExecuteResponse {
            request_id: request_id.to_string(),
            controller: name.to_string(),
            version: version_str,
            output,
            metrics: ExecuteMetrics {
                duration_ms,
                capabilities_used: used,
            },
        })
    }

    #[allow(clippy::type_complexity)]
    async fn execute_admitted(
        &self,
        request_id: &str,
        deployed: &Arc<crate::registry::DeployedVersion>,
        identity: &Identity,
        (headers, trace): (&HeaderMap, &crate::trace::TraceContext),
        body: Body,
    ) -> Result<(serde_json::Value, Vec<String>), (ApiError, Vec<String>)> {
        let bytes = read_body(body, headers, self.config.max_body_bytes)
            .await
            .map_err(|e| (e, vec![]))?;
        let input: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            (
                ApiError::new(
                    ErrorCode::InputInvalid,
                    format!("the request body is not valid JSON: {e}"),
                ),
                vec![],
            )
        })?;
        if let Err(violations) = deployed.compiled.validate_input(&input) {
            return Err((
                ApiError::new(
                    ErrorCode::InputInvalid,
                    format!(
                        "input does not match the contract's input schema: {}",
                        summarize(&violations)
                    ),
                )
                .with_details(serde_json::json!({ "violations": violations })),
                vec![],
            ));
        }
        let mut base = crate::audit_event(
            "execution_start",
            request_id,
            Some(deployed.as_ref()),
            Some(&identity.name),
        );
        base.details = serde_json::json!({
            "trace_id": trace.trace_id, "span_id": trace.span_id, "parent_span_id": trace.parent_id
        });
        // Written before the first capability call, or with the final record (one commit).
        let start = Arc::new(magic_broker::ExecutionStart::new(
            self.audit.clone(),
            base.clone(),
        ));
        let outcome = self
            .executor
            .execute(
                request_id,
                deployed,
                &input,
                Some(&trace.traceparent()),
                start.clone(),
            )
            .await;
        let used = outcome.capabilities_used;
        let result = outcome.result.and_then(|output| {
            deployed
                .compiled
                .validate_output(&output)
                .map(|()| output)
                .map_err(|violations| {
                    ApiError::new(
                        ErrorCode::OutputInvalid,
                        format!(
                            "the controller's output does not match the contract's output schema: {}",
                            summarize(&violations)
                        ),
                    )
                    .with_details(serde_json::json!({ "violations": violations }))
                })
        });
        let mut end = base;
        match &result {
            Ok(_) => {
                end.event = "execution_complete".into();
                end.outcome = Some("ok".into());
            }
            Err(e) => {
                end.event = if outcome.timed_out {
                    "execution_timeout".into()
                } else {
                    "execution_error".into()
                };
                end.outcome = Some(e.code.as_str().into());
                end.details["message"] = e.message.clone().into();
            }
        }
        end.details["capabilities_used"] = serde_json::json!(used);
        start.finish(end).await.map_err(|e| {
            tracing::error!(error = %e, "audit append failed");
            (
                ApiError::new(
                    ErrorCode::BackendUnavailable,
                    "the audit log is unavailable",
                ),
                used.clone(),
            )
        })?;
        match result {
            Ok(output) => Ok((output, used)),
            Err(e) => Err((e, used)),
        }
    }
}

fn summarize(violations: &[magic_contract::SchemaViolation]) -> String {
    let mut parts: Vec<String> = violations
        .iter()
        .take(3)
        .map(|v| {
            if v.path.is_empty() {
                v.message.clone()
            } else {
                format!("{}: {}", v.path, v.message)
            }
        })
        .collect();
    if violations.len() > 3 {
        parts.push(format!("and {} more", violations.len() - 3));
    }
    parts.join("; ")
}

/// Liveness.
#[utoipa::path(get, path = "/api/health", tag = "operations",
    responses((status = 200, description = "The runtime is up", body = Object)))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

/// Readiness: the store answers and every component's migrations are applied.
#[utoipa::path(get, path = "/api/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Object),
              (status = 503, description = "Not ready, with the failing checks", body = Object)))]
async fn readyz(State(rt): State<Arc<Runtime>>) -> Response {
    let (ready, checks) = rt.readiness().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks })),
    )
        .into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        rt.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)),
    security(("api_key" = []), ("bearer" = [])))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// A package upload: relative path → base64 content.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageFiles {
    /// Files of the package folder, `/`-separated relative path → base64.
    pub files: BTreeMap<String, String>,
}

/// Deploy a controller version and make it active once it is ready.
#[utoipa::path(post, path = "/api/admin/controllers", tag = "admin",
    request_body = PackageFiles,
    responses(
        (status = 201, description = "Deployed", body = DeployOutcome),
        (status = 200, description = "Same content already deployed", body = DeployOutcome),
        (status = 202, description = "Stored, waiting for approval (approvals on and the version adds or widens capabilities): {name, version, digest, result: pending_approval, approval_id, diff}", body = Object),
        (status = 400, description = "E1004 with every problem in details.problems", body = crate::error::Envelope),
        (status = 403, description = "E4002: CONTROLLER_ALLOWLIST or the policy file (details.violations: [{rule, message}])", body = crate::error::Envelope),
        (status = 409, description = "E1005 version exists with other content", body = crate::error::Envelope),
        (status = 413, description = "package too large", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn deploy(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Failure> {
    require(&identity, Permission::Deploy, &rid)?;
    let bytes = read_body(body, &headers, crate::config::MAX_DEPLOY_BODY)
        .await
        .map_err(|mut e| {
            // A package that cannot be read is an invalid package (413 stays 413).
            e.code = ErrorCode::ContractInvalid;
            fail(&rid, e)
        })?;
    let upload: PackageFiles = serde_json::from_slice(&bytes).map_err(|e| {
        fail(
            &rid,
            ApiError::new(
                ErrorCode::ContractInvalid,
                format!("the deploy body is not a package ({{\"files\": {{path: base64}}}}): {e}"),
            ),
        )
    })?;
    let mut files = BTreeMap::new();
    for (path, content) in upload.files {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content.as_bytes())
            .map_err(|e| {
                fail(
                    &rid,
                    ApiError::new(
                        ErrorCode::ContractInvalid,
                        format!("file {path:?} is not valid base64: {e}"),
                    ),
                )
            })?;
        files.insert(path, bytes);
    }
    if let crate::approvals::Gate::Pending(approval, _) = rt
        .approval_gate(&rid.0, &files, &identity)
        .await
        .map_err(|e| fail(&rid, e))?
    {
        let body = serde_json::json!({
            "name": approval.controller, "version": approval.version, "digest": approval.digest,
            "result": "pending_approval", "approval_id": approval.id, "diff": approval.diff,
        });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let outcome = rt
        .registry
        .deploy(files, &identity.name)
        .await
        .map_err(|e| fail(&rid, e))?;
    if outcome.result == "deployed" {
        audit_admin(
            &rt,
            &rid,
            &identity,
            "deploy",
            &outcome.name,
            Some(&outcome.version),
            Some(format!("{}@{}", outcome.name, outcome.version)),
            serde_json::json!({ "digest": outcome.digest, "previous_version": outcome.previous_version }),
        )
        .await?;
        tracing::info!(request_id = %rid.0, event = "controller_deployed", controller = %outcome.name, version = %outcome.version, actor = %identity.name);
    }
    let status = if outcome.result == "deployed" {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)).into_response())
}

/// Every deployed controller.
#[utoipa::path(get, path = "/api/admin/controllers", tag = "admin",
    responses((status = 200, body = Vec<ControllerSummary>)), security(("api_key" = []), ("bearer" = [])))]
async fn list_controllers(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<ControllerSummary>>, Failure> {
    require(&identity, Permission::List, &rid)?;
    Ok(Json(rt.registry.list()))
}

/// Every version of one controller and which one is active.
#[utoipa::path(get, path = "/api/admin/controllers/{name}", tag = "admin",
    params(("name" = String, Path, description = "Controller name")),
    responses((status = 200, body = ControllerStatus), (status = 404, description = "E1001", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn controller_status(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<ControllerStatus>, Failure> {
    require(&identity, Permission::Status, &rid)?;
    rt.registry
        .status(&name)
        .map(Json)
        .map_err(|e| fail(&rid, e))
}

/// Body of rollback.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RollbackRequest {
    /// The version to make active (`1.0.0` or `v1.0.0`).
    pub version: String,
}

/// Result of rollback.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RollbackResponse {
    /// Controller.
    pub name: String,
    /// The version that was active.
    pub previous_version: String,
    /// The version now active.
    pub active_version: String,
}

/// Make an earlier (or any deployed) version active.
#[utoipa::path(post, path = "/api/admin/controllers/{name}/rollback", tag = "admin",
    params(("name" = String, Path, description = "Controller name")),
    request_body = RollbackRequest,
    responses((status = 200, body = RollbackResponse), (status = 404, description = "E1001", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn rollback(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RollbackResponse>, Failure> {
    require(&identity, Permission::Rollback, &rid)?;
    let req: RollbackRequest = admin_body(&rid, &headers, body, "{\"version\": \"X.Y.Z\"}").await?;
    let version = parse_version(&req.version).map_err(|e| fail(&rid, e))?;
    let (previous, active) = rt
        .registry
        .rollback(&name, &version, &identity.name)
        .await
        .map_err(|e| fail(&rid, e))?;
    audit_admin(
        &rt,
        &rid,
        &identity,
        "rollback",
        &name,
        Some(&active),
        Some(format!("{name}@{active}")),
        serde_json::json!({ "previous_version": previous }),
    )
    .await?;
    tracing::info!(request_id = %rid.0, event = "controller_rolled_back", controller = %name, from = %previous, to = %active, actor = %identity.name);
    Ok(Json(RollbackResponse {
        name,
        previous_version: previous,
        active_version: active,
    }))
}

/// The files of one version (export).
#[utoipa::path(get, path = "/api/admin/controllers/{name}/versions/{version}/package", tag = "admin",
    params(("name" = String, Path, description = "Controller name"), ("version" = String, Path, description = "Version")),
    responses((status = 200, body = PackageFiles), (status = 404, description = "E1001", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn export_package(
    State(rt): State<Arc<Runtime>>,
    Path((name, version)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<PackageFiles>, Failure> {
    require(&identity, Permission::Export, &rid)?;
    let version = parse_version(&version).map_err(|e| fail(&rid, e))?;
    let files = rt
        .registry
        .package_files(&name, &version)
        .await
        .map_err(|e| fail(&rid, e))?;
    Ok(Json(PackageFiles {
        files: files
            .into_iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect(),
    }))
}

/// The result of verifying the audit chain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditVerifyResponse {
    /// True when no record was edited, removed, inserted, reordered or truncated.
    pub intact: bool,
    /// Records checked before the first bad one (all of them when intact).
    pub records_checked: u64,
    /// Seq of the last good record.
    pub head_seq: u64,
    /// Hash of the last good record.
    pub head_hash: String,
    /// Signed checkpoints compared with the records.
    pub checkpoints_checked: u64,
    /// The first bad record: `{"seq", "reason"}`.
    #[schema(value_type = Option<Object>)]
    pub first_bad: Option<magic_audit::BadRecord>,
    /// Hex Ed25519 public key that signs this node's checkpoints.
    pub public_key: String,
}

/// Verify the whole audit chain and its signed checkpoints.
#[utoipa::path(get, path = "/api/admin/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerifyResponse)), security(("api_key" = []), ("bearer" = [])))]
async fn audit_verify(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<AuditVerifyResponse>, Failure> {
    require(&identity, Permission::AuditRead, &rid)?;
    let report = rt.audit_chain.verify().await.map_err(|e| {
        tracing::error!(error = %e, "audit verification could not run");
        fail(
            &rid,
            ApiError::new(
                ErrorCode::BackendUnavailable,
                "the audit log is unavailable",
            ),
        )
    })?;
    Ok(Json(AuditVerifyResponse {
        intact: report.is_ok(),
        records_checked: report.records_checked,
        head_seq: report.head_seq,
        head_hash: report.head_hash,
        checkpoints_checked: report.checkpoints_checked,
        first_bad: report.first_bad,
        public_key: rt.audit_chain.public_key_hex(),
    }))
}

/// Which audit records to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// First record (inclusive): a seq, or an RFC 3339 time.
    pub from: Option<String>,
    /// Last record (inclusive): a seq, or an RFC 3339 time.
    pub to: Option<String>,
    /// The newest N records (instead of from/to).
    pub last: Option<u64>,
}

/// A record position as users write it: a seq (`42`) or an RFC 3339 time.
pub fn parse_position(v: &str) -> Option<magic_audit::Position> {
    if let Ok(seq) = v.parse::<u64>() {
        return Some(magic_audit::Position::Seq(seq));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| magic_audit::Position::Time(t.with_timezone(&chrono::Utc)))
}

/// Most records one request returns; page with `from`.
pub const MAX_AUDIT_PAGE: usize = 10_000;

/// Audit records, oldest first (at most 10,000 per request; continue with `from`).
#[utoipa::path(get, path = "/api/admin/audit/records", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "Records in chain order", body = Vec<Object>)),
    security(("api_key" = []), ("bearer" = [])))]
async fn audit_records(
    State(rt): State<Arc<Runtime>>,
    Query(q): Query<AuditQuery>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<serde_json::Value>>, Failure> {
    use futures::StreamExt as _;
    use magic_audit::{Position, ReadRange};
    require(&identity, Permission::AuditRead, &rid)?;
    let position = |v: Option<&str>, which: &str| -> Result<Option<Position>, Failure> {
        v.map(|v| {
            parse_position(v).ok_or_else(|| {
                fail(
                    &rid,
                    ApiError::new(
                        ErrorCode::InputInvalid,
                        format!("{which}={v:?} is neither a record seq nor an RFC 3339 time"),
                    ),
                )
            })
        })
        .transpose()
    };
    let range = match q.last {
        Some(n) => ReadRange::last(n.max(1)),
        None => ReadRange {
            from: position(q.from.as_deref(), "from")?,
            to: position(q.to.as_deref(), "to")?,
        },
    };
    let mut stream = rt.audit_chain.read(range);
    let mut out = Vec::new();
    while let Some(record) = stream.next().await {
        let record = record.map_err(|e| {
            fail(
                &rid,
                ApiError::new(
                    ErrorCode::BackendUnavailable,
                    format!("audit read failed: {e}"),
                ),
            )
        })?;
        out.push(serde_json::from_str(&record.to_json_line()).unwrap_or_default());
        if out.len() >= MAX_AUDIT_PAGE {
            break;
        }
    }
    Ok(Json(out))
}

fn admin_failure(rid: &RequestId, e: magic_broker::AdminError) -> Failure {
    if e.code() == ErrorCode::BackendUnavailable {
        tracing::error!(request_id = %rid.0, error = %e, "admin action failed");
        return fail(
            rid,
            ApiError::new(e.code(), "the runtime store is unavailable"),
        );
    }
    fail(rid, ApiError::new(e.code(), e.to_string()))
}

/// Body of a secret write.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SecretValue {
    /// The secret's value (stored encrypted; never returned).
    pub value: String,
}

/// Which controller's secrets to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SecretsQuery {
    /// Only this controller's secrets.
    pub controller: Option<String>,
}

/// Set (create or replace) a controller's secret. The value is never returned or logged.
#[utoipa::path(put, path = "/api/admin/secrets/{controller}/{name}", tag = "admin",
    params(("controller" = String, Path, description = "Controller name"), ("name" = String, Path, description = "Secret name")),
    request_body = SecretValue, responses((status = 204, description = "Stored")), security(("api_key" = []), ("bearer" = [])))]
async fn set_secret(
    State(rt): State<Arc<Runtime>>,
    Path((controller, name)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Failure> {
    require(&identity, Permission::Secrets, &rid)?;
    let value: SecretValue = admin_body(&rid, &headers, body, "{\"value\": \"...\"}").await?;
    rt.broker
        .set_secret(&identity.name, &controller, &name, &value.value)
        .await
        .map_err(|e| admin_failure(&rid, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a controller's secret.
#[utoipa::path(delete, path = "/api/admin/secrets/{controller}/{name}", tag = "admin",
    params(("controller" = String, Path, description = "Controller name"), ("name" = String, Path, description = "Secret name")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such secret", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn delete_secret(
    State(rt): State<Arc<Runtime>>,
    Path((controller, name)): Path<(String, String)>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<StatusCode, Failure> {
    require(&identity, Permission::Secrets, &rid)?;
    let existed = rt
        .broker
        .delete_secret(&identity.name, &controller, &name)
        .await
        .map_err(|e| admin_failure(&rid, e))?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(fail(
            &rid,
            ApiError::new(
                ErrorCode::SecretNotAllowed,
                format!("{controller} has no secret {name:?}"),
            )
            .with_status(404),
        ))
    }
}

/// Secret names (never values), optionally of one controller.
#[utoipa::path(get, path = "/api/admin/secrets", tag = "admin", params(SecretsQuery),
    responses((status = 200, description = "Names, owners and update times", body = Vec<Object>)),
    security(("api_key" = []), ("bearer" = [])))]
async fn list_secrets(
    State(rt): State<Arc<Runtime>>,
    Query(q): Query<SecretsQuery>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<magic_broker::SecretInfo>>, Failure> {
    require(&identity, Permission::Secrets, &rid)?;
    rt.broker
        .list_secrets(&identity.name, q.controller.as_deref())
        .await
        .map(Json)
        .map_err(|e| admin_failure(&rid, e))
}

/// Approve `db:rawsql` for every version of a controller (audited).
#[utoipa::path(put, path = "/api/admin/rawsql/{controller}", tag = "admin",
    params(("controller" = String, Path, description = "Controller name")),
    responses((status = 204, description = "Approved")), security(("api_key" = []), ("bearer" = [])))]
async fn approve_rawsql(
    State(rt): State<Arc<Runtime>>,
    Path(controller): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<StatusCode, Failure> {
    require(&identity, Permission::RawSql, &rid)?;
    rt.broker
        .approve_rawsql(&identity.name, &controller)
        .await
        .map_err(|e| admin_failure(&rid, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Withdraw a controller's `db:rawsql` approval (audited).
#[utoipa::path(delete, path = "/api/admin/rawsql/{controller}", tag = "admin",
    params(("controller" = String, Path, description = "Controller name")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No approval", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn revoke_rawsql(
    State(rt): State<Arc<Runtime>>,
    Path(controller): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<StatusCode, Failure> {
    require(&identity, Permission::RawSql, &rid)?;
    let existed = rt
        .broker
        .revoke_rawsql(&identity.name, &controller)
        .await
        .map_err(|e| admin_failure(&rid, e))?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(fail(
            &rid,
            ApiError::new(
                ErrorCode::RawSqlNotApproved,
                format!("{controller} has no db:rawsql approval"),
            )
            .with_status(404),
        ))
    }
}

/// Standing `db:rawsql` approvals.
#[utoipa::path(get, path = "/api/admin/rawsql", tag = "admin",
    responses((status = 200, body = Vec<Object>)), security(("api_key" = []), ("bearer" = [])))]
async fn list_rawsql(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<magic_broker::RawSqlApproval>>, Failure> {
    require(&identity, Permission::RawSql, &rid)?;
    rt.broker
        .rawsql_approvals()
        .await
        .map(Json)
        .map_err(|e| admin_failure(&rid, e))
}

/// Body of a trigger.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TriggerRequest {
    /// Queue whose messages execute the controller (its contract must subscribe to it).
    pub queue: String,
}

/// Execute `controller` once per message of a queue (at-least-once, retries, dead letters).
#[utoipa::path(put, path = "/api/admin/triggers/{controller}", tag = "admin",
    params(("controller" = String, Path, description = "Controller name")), request_body = TriggerRequest,
    responses((status = 200, body = crate::triggers::Trigger),
              (status = 403, description = "E2005: the contract does not subscribe to the queue", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn set_trigger(
    State(rt): State<Arc<Runtime>>,
    Path(controller): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::triggers::Trigger>, Failure> {
    require(&identity, Permission::Triggers, &rid)?;
    let req: TriggerRequest = admin_body(&rid, &headers, body, "{\"queue\": \"name\"}").await?;
    let trigger = rt
        .triggers
        .set(&rt, &controller, &req.queue, &identity.name)
        .await
        .map_err(|e| fail(&rid, e))?;
    audit_admin(
        &rt,
        &rid,
        &identity,
        "trigger_set",
        &controller,
        None,
        Some(req.queue.clone()),
        serde_json::json!({}),
    )
    .await?;
    Ok(Json(trigger))
}

/// Stop a controller consuming its queue.
#[utoipa::path(delete, path = "/api/admin/triggers/{controller}", tag = "admin",
    params(("controller" = String, Path, description = "Controller name")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No trigger", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn remove_trigger(
    State(rt): State<Arc<Runtime>>,
    Path(controller): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<StatusCode, Failure> {
    require(&identity, Permission::Triggers, &rid)?;
    if !rt
        .triggers
        .remove(&controller)
        .await
        .map_err(|e| fail(&rid, e))?
    {
        return Err(fail(
            &rid,
            ApiError::new(
                ErrorCode::ControllerNotFound,
                format!("{controller} has no trigger"),
            ),
        ));
    }
    audit_admin(
        &rt,
        &rid,
        &identity,
        "trigger_remove",
        &controller,
        None,
        None,
        serde_json::json!({}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every queue trigger.
#[utoipa::path(get, path = "/api/admin/triggers", tag = "admin",
    responses((status = 200, body = Vec<crate::triggers::Trigger>)), security(("api_key" = []), ("bearer" = [])))]
async fn list_triggers(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<crate::triggers::Trigger>>, Failure> {
    require(&identity, Permission::Triggers, &rid)?;
    rt.triggers
        .list()
        .await
        .map(Json)
        .map_err(|e| fail(&rid, e))
}

/// Body of a key creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Name (1-64 of `[A-Za-z0-9._-]`, unique among active keys); the audit actor is
    /// `apikey:NAME`.
    pub name: String,
    /// Role: admin, deployer, secrets-admin, operator, auditor, executor or approver.
    pub role: String,
    /// Lifetime (`30d`, `12h`, `90s`); absent = no expiry.
    pub expires_in: Option<String>,
    /// Controllers the key may execute; absent = every one its role allows.
    pub controllers: Option<Vec<String>>,
}

/// Longest key lifetime accepted (10 years).
const MAX_KEY_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 86_400);

fn key_failure(rid: &RequestId, e: crate::auth::KeyError) -> Failure {
    use crate::auth::KeyError;
    match e {
        KeyError::Store(e) => {
            tracing::error!(request_id = %rid.0, error = %e, "api key store failed");
            fail(
                rid,
                ApiError::new(
                    ErrorCode::BackendUnavailable,
                    "the runtime store is unavailable",
                ),
            )
        }
        KeyError::NameTaken(_) => fail(
            rid,
            ApiError::new(ErrorCode::InputInvalid, e.to_string()).with_status(409),
        ),
        other => fail(
            rid,
            ApiError::new(ErrorCode::InputInvalid, other.to_string()),
        ),
    }
}

async fn audit_key_action(
    rt: &Runtime,
    rid: &RequestId,
    identity: &Identity,
    action: &str,
    key: &crate::auth::KeyInfo,
) -> Result<(), Failure> {
    let mut event = crate::audit_event("admin_action", &rid.0, None, Some(&identity.name));
    event.target = Some(format!("apikey:{}", key.name));
    event.outcome = Some("ok".into());
    event.details = serde_json::json!({
        "action": action, "key_id": key.id, "role": key.role,
        "controllers": key.controllers, "expires_at": key.expires_at,
    });
    rt.audit(event).await.map_err(|e| fail(rid, e))
}

/// Create an API key. The key is in this response only; it is stored as a hash.
#[utoipa::path(post, path = "/api/admin/keys", tag = "admin", request_body = CreateKeyRequest,
    responses((status = 201, body = crate::auth::CreatedKey),
              (status = 400, description = "E1002 bad name, role, lifetime or controllers", body = crate::error::Envelope),
              (status = 409, description = "an active key has this name", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn create_key(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<crate::auth::CreatedKey>), Failure> {
    require(&identity, Permission::Keys, &rid)?;
    let req: CreateKeyRequest = admin_body(
        &rid,
        &headers,
        body,
        "{\"name\": \"...\", \"role\": \"...\", \"expires_in\"?: \"30d\", \"controllers\"?: [\"...\"]}",
    )
    .await?;
    let expires_at = match &req.expires_in {
        None => None,
        Some(text) => {
            let bad = || {
                fail(
                    &rid,
                    ApiError::new(
                        ErrorCode::InputInvalid,
                        format!("expires_in {text:?} is not a lifetime between 1s and 10 years (e.g. 30d, 12h)"),
                    ),
                )
            };
            let d = humantime::parse_duration(text).map_err(|_| bad())?;
            if d.is_zero() || d > MAX_KEY_LIFETIME {
                return Err(bad());
            }
            let d = chrono::Duration::from_std(d).map_err(|_| bad())?;
            Some(chrono::Utc::now() + d)
        }
    };
    let created = rt
        .keys
        .create(&req.name, &req.role, expires_at, req.controllers)
        .await
        .map_err(|e| key_failure(&rid, e))?;
    audit_key_action(&rt, &rid, &identity, "key_create", &created.info).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every API key (never the key itself).
#[utoipa::path(get, path = "/api/admin/keys", tag = "admin",
    responses((status = 200, body = Vec<crate::auth::KeyInfo>)), security(("api_key" = []), ("bearer" = [])))]
async fn list_keys(
    State(rt): State<Arc<Runtime>>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<crate::auth::KeyInfo>>, Failure> {
    require(&identity, Permission::Keys, &rid)?;
    rt.keys
        .list()
        .await
        .map(Json)
        .map_err(|e| key_failure(&rid, e.into()))
}

/// Revoke the active key with this ID or name (refused at once from then on).
#[utoipa::path(delete, path = "/api/admin/keys/{key}", tag = "admin",
    params(("key" = String, Path, description = "Key ID or name")),
    responses((status = 200, description = "The revoked key(s)", body = Vec<crate::auth::KeyInfo>),
              (status = 404, description = "No such active key", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn revoke_key(
    State(rt): State<Arc<Runtime>>,
    Path(key): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<crate::auth::KeyInfo>>, Failure> {
    require(&identity, Permission::Keys, &rid)?;
    let revoked = rt
        .keys
        .revoke(&key)
        .await
        .map_err(|e| key_failure(&rid, e.into()))?;
    if revoked.is_empty() {
        return Err(fail(
            &rid,
            ApiError::new(
                ErrorCode::ControllerNotFound,
                format!("no active API key with ID or name {key:?}"),
            ),
        ));
    }
    for k in &revoked {
        audit_key_action(&rt, &rid, &identity, "key_revoke", k).await?;
    }
    Ok(Json(revoked))
}

/// `?status=` of the approvals list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ApprovalsQuery {
    /// `pending`, `approved` or `rejected`; absent = every request.
    pub status: Option<String>,
}

/// Optional body of approve and reject.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    /// Why (kept with the request and in the audit record).
    pub reason: Option<String>,
}

/// Deploy approval requests, newest first.
#[utoipa::path(get, path = "/api/admin/approvals", tag = "admin", params(ApprovalsQuery),
    responses((status = 200, body = Vec<crate::approvals::Approval>),
              (status = 400, description = "E1002 unknown status", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn list_approvals(
    State(rt): State<Arc<Runtime>>,
    Query(query): Query<ApprovalsQuery>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<Vec<crate::approvals::Approval>>, Failure> {
    require(&identity, Permission::Approve, &rid)?;
    rt.approvals
        .list(query.status.as_deref())
        .await
        .map(Json)
        .map_err(|e| fail(&rid, e))
}

/// One deploy approval request with its capability diff.
#[utoipa::path(get, path = "/api/admin/approvals/{id}", tag = "admin",
    params(("id" = String, Path, description = "Approval ID")),
    responses((status = 200, body = crate::approvals::Approval),
              (status = 404, description = "E1001", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn get_approval(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
) -> Result<Json<crate::approvals::Approval>, Failure> {
    require(&identity, Permission::Approve, &rid)?;
    rt.approvals
        .get(&id)
        .await
        .map(Json)
        .map_err(|e| fail(&rid, e))
}

async fn decide(
    rt: &Runtime,
    rid: &RequestId,
    identity: &Identity,
    id: &str,
    decision: crate::approvals::Decision,
    headers: &HeaderMap,
    body: Body,
) -> Result<Json<crate::approvals::Approval>, Failure> {
    require(identity, Permission::Approve, rid)?;
    let bytes = read_body(body, headers, 64 * 1024)
        .await
        .map_err(|e| fail(rid, e))?;
    let req: DecisionRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        DecisionRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            fail(
                rid,
                ApiError::new(
                    ErrorCode::InputInvalid,
                    format!("expected {{\"reason\"?: \"...\"}}: {e}"),
                ),
            )
        })?
    };
    rt.approvals
        .decide(rt, &rid.0, id, decision, identity, req.reason)
        .await
        .map(Json)
        .map_err(|e| fail(rid, e))
}

/// Approve a pending deploy: the stored package is deployed and becomes active. The
/// identity that requested it cannot approve it (403 E4002).
#[utoipa::path(post, path = "/api/admin/approvals/{id}/approve", tag = "admin",
    params(("id" = String, Path, description = "Approval ID")), request_body(content = DecisionRequest, description = "Optional"),
    responses((status = 200, body = crate::approvals::Approval),
              (status = 403, description = "E4002: no approve permission, or the requester itself", body = crate::error::Envelope),
              (status = 404, description = "E1001", body = crate::error::Envelope),
              (status = 409, description = "already decided", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn approve_deploy(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::approvals::Approval>, Failure> {
    use crate::approvals::Decision;
    decide(&rt, &rid, &identity, &id, Decision::Approve, &headers, body).await
}

/// Reject a pending deploy (nothing is deployed). The requester cannot reject it either.
#[utoipa::path(post, path = "/api/admin/approvals/{id}/reject", tag = "admin",
    params(("id" = String, Path, description = "Approval ID")), request_body(content = DecisionRequest, description = "Optional"),
    responses((status = 200, body = crate::approvals::Approval),
              (status = 403, description = "E4002", body = crate::error::Envelope),
              (status = 404, description = "E1001", body = crate::error::Envelope),
              (status = 409, description = "already decided", body = crate::error::Envelope)),
    security(("api_key" = []), ("bearer" = [])))]
async fn reject_deploy(
    State(rt): State<Arc<Runtime>>,
    Path(id): Path<String>,
    Extension(rid): Extension<RequestId>,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::approvals::Approval>, Failure> {
    use crate::approvals::Decision;
    decide(&rt, &rid, &identity, &id, Decision::Reject, &headers, body).await
}

async fn not_found(Extension(rid): Extension<RequestId>, req: Request) -> Failure {
    fail(
        &rid,
        ApiError::new(
            ErrorCode::ControllerNotFound,
            format!("no endpoint {} {}", req.method(), req.uri().path()),
        ),
    )
}

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                utoipa::openapi::security::HttpBuilder::new()
                    .scheme(utoipa::openapi::security::HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the whole API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Magic Runtime", description = "Execute contract-bound controllers; deploy, inspect and roll them back."),
    paths(execute, health, readyz, metrics, openapi, deploy, list_controllers, controller_status, rollback, export_package,
          audit_verify, audit_records, set_secret, delete_secret, list_secrets, approve_rawsql, revoke_rawsql, list_rawsql,
          set_trigger, remove_trigger, list_triggers, create_key, list_keys, revoke_key,
          list_approvals, get_approval, approve_deploy, reject_deploy),
    components(schemas(ExecuteResponse, ExecuteMetrics, PackageFiles, RollbackRequest, RollbackResponse,
                       DeployOutcome, ControllerSummary, ControllerStatus, crate::registry::VersionInfo, AuditVerifyResponse, SecretValue,
                       TriggerRequest, crate::triggers::Trigger, CreateKeyRequest, crate::auth::KeyInfo,
                       crate::auth::CreatedKey, crate::approvals::Approval, DecisionRequest)),
    modifiers(&ApiKeyScheme),
    tags((name = "execute"), (name = "admin"), (name = "audit"), (name = "operations"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        assert_eq!(accept_request_id(Some("req_abc-1.2:3")), "req_abc-1.2:3");
        for bad in [
            None,
            Some(""),
            Some("has space"),
            Some("new\nline"),
            Some("ü"),
        ] {
            let id = accept_request_id(bad);
            assert!(id.starts_with("req_") && id.len() == 36, "{bad:?} -> {id}");
        }
        let long = "a".repeat(129);
        assert_ne!(accept_request_id(Some(&long)), long);
    }

    #[test]
    fn credentials_table() {
        let h = |pairs: &[(&'static str, &[u8])]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_bytes(v).unwrap());
            }
            m
        };
        let cases: Vec<(HeaderMap, Credentials<'static>)> = vec![
            (h(&[]), Credentials::None),
            (h(&[("x-api-key", b"k")]), Credentials::ApiKey("k")),
            (
                h(&[("authorization", b"Bearer t.t.t")]),
                Credentials::Bearer("t.t.t"),
            ),
            (
                h(&[("authorization", b"bearer t")]),
                Credentials::Bearer("t"),
            ),
            (
                h(&[("authorization", b"Basic dTpw")]),
                Credentials::Unsupported,
            ),
            (h(&[("authorization", b"Bearer")]), Credentials::Unsupported),
            (
                h(&[("authorization", b"Bearer t"), ("x-api-key", b"k")]),
                Credentials::Bearer("t"),
            ),
            (
                h(&[("authorization", b"Basic x"), ("x-api-key", b"k")]),
                Credentials::Unsupported,
            ),
            (h(&[("x-api-key", b"\xff")]), Credentials::Unsupported),
        ];
        for (headers, want) in &cases {
            assert_eq!(&credentials(headers), want, "{headers:?}");
        }
    }

    #[test]
    fn audit_positions_are_seqs_or_times() {
        use magic_audit::Position;
        assert_eq!(parse_position("42"), Some(Position::Seq(42)));
        assert!(matches!(
            parse_position("2026-11-22T00:00:00Z"),
            Some(Position::Time(_))
        ));
        assert!(matches!(
            parse_position("2026-11-22T01:00:00+01:00"),
            Some(Position::Time(_))
        ));
        for bad in ["", "-1", "yesterday", "2026-11-22", "1e3"] {
            assert_eq!(parse_position(bad), None, "{bad}");
        }
    }

    #[test]
    fn openapi_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/execute/{controller}",
            "/api/health",
            "/api/readyz",
            "/metrics",
            "/api/openapi.json",
            "/api/admin/controllers",
            "/api/admin/controllers/{name}",
            "/api/admin/controllers/{name}/rollback",
            "/api/admin/controllers/{name}/versions/{version}/package",
            "/api/admin/audit/verify",
            "/api/admin/audit/records",
            "/api/admin/secrets",
            "/api/admin/secrets/{controller}/{name}",
            "/api/admin/rawsql",
            "/api/admin/rawsql/{controller}",
            "/api/admin/triggers",
            "/api/admin/triggers/{controller}",
            "/api/admin/keys",
            "/api/admin/keys/{key}",
            "/api/admin/approvals",
            "/api/admin/approvals/{id}",
            "/api/admin/approvals/{id}/approve",
            "/api/admin/approvals/{id}/reject",
        ] {
            assert!(paths.contains_key(p), "missing {p}");
        }
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}

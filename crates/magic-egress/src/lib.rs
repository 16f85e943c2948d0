//! Outbound HTTP for controllers (`http:egress`).
//!
//! Owns: deciding whether a URL may be fetched under a contract's [`EgressGrant`]
//! (allowlist matching, literal-IP parsing, address classification), resolving and pinning
//! the address that was checked, and performing the request with bounded time and size.
//!
//! Must never: connect to an address it did not check, follow a redirect without re-checking
//! it, or let a controller set hop-by-hop or `Host` headers.
//!
//! # Use
//! One [`Egress`] per process: `Egress::new(EgressConfig::from_env()?)` (reads
//! `EGRESS_RESOLVE_MODE`), then `egress.send(&grant, request).await` for every
//! `self.http.*` call. The caller writes the audit record and metrics from the
//! [`EgressResponse`] (host, resolved IP, status, latency) or from the [`EgressError`]
//! (code, host, reason).
//!
//! # Decisions (in order, per hop)
//! 1. The raw URL: at most [`policy::MAX_URL_LEN`] bytes, no control characters or whitespace
//!    (the WHATWG parser would silently drop them), then parsed once by the `url` crate, the
//!    parser the client connects with. Method in GET/HEAD/POST/PUT/PATCH/DELETE/OPTIONS.
//! 2. [`Target`]: `http`/`https` only, no credentials, host as parsed (IDNA ASCII, IPv4 number
//!    forms decoded, trailing dot removed), effective port.
//! 3. An allow entry must match ([`allow`]); an IP-literal URL only matches an entry naming
//!    that exact IP, and its address must pass step 5.
//! 4. The resolver ([`resolve`]) resolves the name once (DNS, or the grant's `resolve` map in
//!    static mode), refusing names no entry names.
//! 5. Every address is classified ([`addr`]); any non-public address not covered by
//!    `allow_ips` refuses the whole answer (E2008). The connector gets only these addresses.
//! 6. TLS verifies the certificate against the URL's host name (SNI is that name).
//! 7. Redirects: at most [`EgressConfig::max_redirects`], each hop goes through 1-6 again.

pub mod addr;
pub mod allow;
pub mod fuzzing;
pub mod headers;
pub mod policy;
pub mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use magic_contract::{EgressGrant, ErrorCode};

pub use crate::addr::{classify, AddrClass};
pub use crate::allow::{AllowEntry, Target, TargetHost};
pub use crate::policy::Policy;
pub use crate::resolve::{HostLookup, MapLookup, ResolveMode, SystemLookup};

/// One outbound request as a controller asked for it.
#[derive(Debug, Clone)]
pub struct EgressRequest {
    /// `GET`, `POST`, `PUT`, `DELETE`, …
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Request headers (sanitized before sending).
    pub headers: BTreeMap<String, String>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Propagated as `X-Request-ID`.
    pub request_id: String,
    /// W3C `traceparent` of the execution, propagated as is (replacing a controller's own).
    pub traceparent: Option<String>,
    /// The execution's deadline; the request never outlives it.
    pub deadline: Instant,
}

/// The answer, with what the audit record needs.
#[derive(Debug, Clone)]
pub struct EgressResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: BTreeMap<String, String>,
    /// Response body (capped).
    pub body: Vec<u8>,
    /// Host that was contacted (of the final hop).
    pub host: String,
    /// Address that was connected to (of the final hop).
    pub resolved_ip: Option<IpAddr>,
    /// Time taken.
    pub latency: Duration,
    /// URL of the final hop (after redirects).
    pub final_url: String,
}

/// Why a request was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    /// Destination not in the allow list (E2002).
    #[error("egress to {host} is not allowed: {reason}")]
    NotAllowed {
        /// Host as parsed.
        host: String,
        /// Why.
        reason: String,
    },
    /// Destination resolved to a private or reserved address (E2008).
    #[error("egress to {host} resolved to {ip}, a {class} address")]
    PrivateAddress {
        /// Host as parsed.
        host: String,
        /// Offending address.
        ip: IpAddr,
        /// Its class (`loopback`, `private`, …).
        class: String,
    },
    /// The URL could not be parsed (E2002: it cannot be an allowed destination).
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// The method or a header is not acceptable (E5001).
    #[error("invalid egress request: {0}")]
    InvalidRequest(String),
    /// More redirects than allowed (E5001).
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// The response body is larger than the cap (E5001).
    #[error("response body larger than {limit} bytes")]
    BodyTooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// Deadline passed (E3001).
    #[error("egress request timed out")]
    Timeout,
    /// Connection, TLS or protocol failure (E5001).
    #[error("egress request failed: {0}")]
    Failed(String),
}

impl EgressError {
    /// The public error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            EgressError::NotAllowed { .. } | EgressError::InvalidUrl(_) => {
                ErrorCode::EgressNotAllowed
            }
            EgressError::PrivateAddress { .. } => ErrorCode::EgressPrivateAddress,
            EgressError::Timeout => ErrorCode::Timeout,
            EgressError::InvalidRequest(_)
            | EgressError::TooManyRedirects(_)
            | EgressError::BodyTooLarge { .. }
            | EgressError::Failed(_) => ErrorCode::ControllerFailed,
        }
    }
}

/// Problems in a grant (invalid allow entries, `allow_ips`, `resolve` keys), for contract
/// validation at deploy time. Empty for a valid grant. At run time invalid entries match
/// nothing.
pub fn grant_problems(grant: &EgressGrant) -> Vec<String> {
    Policy::from_grant(grant).problems().to_vec()
}

/// Default cap on a response body.
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;
/// Default number of redirects followed.
pub const DEFAULT_MAX_REDIRECTS: usize = 5;

/// Methods a controller may use.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// How the egress client is built. The runtime creates one with [`EgressConfig::from_env`]
/// (or [`Default`]) and then one [`Egress`] for the whole process.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// `EGRESS_RESOLVE_MODE`: DNS at connect time, or the grant's static map only.
    pub resolve_mode: ResolveMode,
    /// Where DNS answers come from in `dns` mode (tests map names to loopback servers here).
    pub lookup: Arc<dyn HostLookup>,
    /// Extra trusted root certificates (PEM), e.g. a test CA or a corporate CA.
    pub extra_root_certs_pem: Vec<Vec<u8>>,
    /// Trust the built-in (webpki) roots. Tests turn this off to trust only their CA.
    pub builtin_roots: bool,
    /// Redirects followed at most (each hop re-checked).
    pub max_redirects: usize,
    /// Response body cap in bytes.
    pub max_body_bytes: usize,
    /// Connect timeout (the request's deadline bounds it further).
    pub connect_timeout: Duration,
    /// DNS lookup timeout.
    pub dns_timeout: Duration,
    /// Upper bound on one request even when the deadline is further away.
    pub max_request_time: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            resolve_mode: ResolveMode::Dns,
            lookup: Arc::new(SystemLookup),
            extra_root_certs_pem: Vec::new(),
            builtin_roots: true,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            max_body_bytes: DEFAULT_MAX_BODY,
            connect_timeout: Duration::from_secs(10),
            dns_timeout: Duration::from_secs(5),
            max_request_time: Duration::from_secs(300),
        }
    }
}

impl EgressConfig {
    /// Defaults, with `EGRESS_RESOLVE_MODE` (`dns` or `static`) read from the environment.
    pub fn from_env() -> Result<Self, String> {
        let mode = match std::env::var("EGRESS_RESOLVE_MODE") {
            Ok(v) => v.parse()?,
            Err(_) => ResolveMode::Dns,
        };
        Ok(EgressConfig {
            resolve_mode: mode,
            ..EgressConfig::default()
        })
    }
}

/// Clients cached per grant (bounded; cleared when full).
const MAX_CACHED_CLIENTS: usize = 256;

#[derive(Debug)]
struct Inner {
    config: EgressConfig,
    /// One client per distinct grant: its resolver and redirect policy carry that grant, and
    /// its connection pool is never shared with a different grant.
    clients: Mutex<HashMap<String, (Arc<Policy>, reqwest::Client)>>,
}

/// The egress client (one per runtime; cheap to clone and share).
#[derive(Debug, Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress::new(EgressConfig::default())
    }
}

/// Find an [`EgressError`] raised by our resolver or redirect policy inside a client error.
fn find_refusal(err: &(dyn std::error::Error + 'static)) -> Option<EgressError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<EgressError>() {
            return Some(found.clone());
        }
        cur = e.source();
    }
    None
}

fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
        cur = e.source();
    }
    msg
}

fn map_client_error(err: reqwest::Error) -> EgressError {
    if let Some(refusal) = find_refusal(&err) {
        return refusal;
    }
    if err.is_timeout() {
        return EgressError::Timeout;
    }
    EgressError::Failed(describe(&err))
}

impl Egress {
    /// One egress client for the process.
    pub fn new(config: EgressConfig) -> Self {
        Egress {
            inner: Arc::new(Inner {
                config,
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &EgressConfig {
        &self.inner.config
    }

    fn client_for(
        &self,
        grant: &EgressGrant,
    ) -> Result<(Arc<Policy>, reqwest::Client), EgressError> {
        let key = format!("{grant:?}");
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = clients.get(&key) {
            return Ok(found.clone());
        }
        let cfg = &self.inner.config;
        let policy = Arc::new(Policy::from_grant(grant));
        let resolver = resolve::PinningResolver {
            policy: policy.clone(),
            lookup: cfg.lookup.clone(),
            mode: cfg.resolve_mode,
            timeout: cfg.dns_timeout,
        };
        let redirect_policy = policy.clone();
        let max_redirects = cfg.max_redirects;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(EgressError::TooManyRedirects(max_redirects));
            }
            match redirect_policy.check_url(attempt.url()) {
                Ok(_) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .redirect(redirect)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .referer(false)
            .http1_only()
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .user_agent(concat!("magic-runtime-egress/", env!("CARGO_PKG_VERSION")))
            .tls_built_in_root_certs(cfg.builtin_roots);
        for pem in &cfg.extra_root_certs_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| EgressError::Failed(format!("bad extra root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| EgressError::Failed(format!("cannot build client: {}", describe(&e))))?;
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(key, (policy.clone(), client.clone()));
        Ok((policy, client))
    }

    /// The allowlist decision for `url` under `grant` without sending anything or resolving
    /// names (steps 1-3; an IP-literal URL also gets its address check). `send` makes the
    /// same decision and more; this is for callers that want to refuse or audit early.
    pub fn check_url(&self, grant: &EgressGrant, url: &str) -> Result<Target, EgressError> {
        Policy::from_grant(grant).check_url(&Policy::parse_url(url)?)
    }

    /// Perform `request` under `grant`.
    ///
    /// Checks the URL against the grant, sends with sanitized headers and `X-Request-ID`,
    /// re-checks every redirect hop, connects only to checked addresses, and reads at most
    /// [`EgressConfig::max_body_bytes`], all before `request.deadline`.
    pub async fn send(
        &self,
        grant: &EgressGrant,
        request: EgressRequest,
    ) -> Result<EgressResponse, EgressError> {
        let started = Instant::now();
        let cfg = &self.inner.config;
        let deadline = request.deadline.min(started + cfg.max_request_time);
        if deadline <= started {
            return Err(EgressError::Timeout);
        }
        let method_upper = request.method.to_ascii_uppercase();
        if !METHODS.contains(&method_upper.as_str()) {
            return Err(EgressError::InvalidRequest(format!(
                "method {:?} is not allowed",
                request.method
            )));
        }
        let method = reqwest::Method::from_bytes(method_upper.as_bytes())
            .map_err(|_| EgressError::InvalidRequest("bad method".into()))?;
        let url = Policy::parse_url(&request.url)?;
        let (policy, client) = self.client_for(grant)?;
        policy.check_url(&url)?;
        let mut headers = headers::sanitize_request(&request.headers)
            .map_err(|e| EgressError::InvalidRequest(e.to_string()))?;
        let rid = http::HeaderValue::from_str(&request.request_id)
            .map_err(|_| EgressError::InvalidRequest("request id is not a header value".into()))?;
        headers.insert("x-request-id", rid);
        if let Some(tp) = &request.traceparent {
            let tp = http::HeaderValue::from_str(tp).map_err(|_| {
                EgressError::InvalidRequest("traceparent is not a header value".into())
            })?;
            headers.insert("traceparent", tp);
        }

        let mut builder = client
            .request(method, url)
            .headers(headers)
            .timeout(deadline.saturating_duration_since(Instant::now()));
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let limit = cfg.max_body_bytes;
        let deadline_tokio = tokio::time::Instant::from_std(deadline);
        let fut = async move {
            let mut resp = builder.send().await.map_err(map_client_error)?;
            if resp.content_length().is_some_and(|n| n > limit as u64) {
                return Err(EgressError::BodyTooLarge { limit });
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(map_client_error)? {
                if body.len() + chunk.len() > limit {
                    return Err(EgressError::BodyTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok((resp, body))
        };
        let (resp, body) = tokio::time::timeout_at(deadline_tokio, fut)
            .await
            .map_err(|_| EgressError::Timeout)??;
        let host = Target::from_url(resp.url())
            .map(|t| t.host.to_string())
            .unwrap_or_else(|_| resp.url().host_str().unwrap_or_default().to_string());
        Ok(EgressResponse {
            status: resp.status().as_u16(),
            headers: headers::sanitize_response(resp.headers()),
            body,
            host,
            resolved_ip: resp.remote_addr().map(|a| a.ip()),
            latency: started.elapsed(),
            final_url: resp.url().to_string(),
        })
    }
}

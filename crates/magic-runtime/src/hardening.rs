//! HTTP hardening: security headers, CORS, the per-identity request-rate limit and the
//! per-address limit on failed authentications.
//!
//! Owns: the headers every response carries ([`security_headers`]), the CORS layer built from
//! `ALLOWED_ORIGINS` (none by default), parsing `MAGIC_RATE_LIMIT` ([`RateLimit::parse`]), and
//! the limiter itself: a token bucket per identity in process, or a fixed window per identity
//! in Redis (`REDIS_URL`) so that the limit holds across nodes; which address a request comes
//! from ([`client_ip`], `X-Forwarded-For` only from `MAGIC_TRUSTED_PROXIES`) and the
//! brute-force limiter ([`FailureLimiter`], `MAGIC_AUTH_FAILURE_LIMIT`). Must never: answer a
//! refused request without the envelope and `Retry-After`, let an unparsable setting start the
//! server, fail closed on a Redis outage (the limiter falls back to the in-process bucket,
//! loudly), believe `X-Forwarded-For` from a peer that is not a trusted proxy, or count a
//! successful authentication as a failure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Request};
use axum::response::Response;

use crate::rbac::Role;

/// One rate: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests allowed per period (also the burst).
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl Rate {
    /// Parse `100/s`, `6000/min`, `10/h` (also `sec`, `second`, `m`, `minute`, `hour`).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not N/s, N/min or N/h"))?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("{s:?}: the count must be a positive integer"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("{s:?}: unknown unit {other:?} (s, min or h)")),
        };
        Ok(Rate { count, period })
    }

    fn per_second(&self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64()
    }
}

/// `MAGIC_RATE_LIMIT`: a default rate and optional per-role rates
/// (`100/s,executor=1000/s,admin=20/s`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimit {
    /// Rate of identities no per-role rate covers (`None`: unlimited).
    pub default: Option<Rate>,
    /// Per-role rates; an identity with several roles gets the most generous.
    pub roles: Vec<(Role, Rate)>,
}

impl RateLimit {
    /// Parse the setting; every problem is reported.
    pub fn parse(s: &str) -> Result<RateLimit, String> {
        let mut limit = RateLimit::default();
        let mut problems = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((role, rate)) => match (Role::parse(role.trim()), Rate::parse(rate)) {
                    (Some(role), Ok(rate)) => limit.roles.push((role, rate)),
                    (None, _) => problems.push(format!("unknown role {:?}", role.trim())),
                    (_, Err(e)) => problems.push(e),
                },
                None => match Rate::parse(part) {
                    Ok(r) if limit.default.is_none() => limit.default = Some(r),
                    Ok(_) => problems.push("more than one default rate".into()),
                    Err(e) => problems.push(e),
                },
            }
        }
        if limit.default.is_none() && limit.roles.is_empty() && problems.is_empty() {
            problems.push("empty".into());
        }
        if problems.is_empty() {
            Ok(limit)
        } else {
            Err(problems.join("; "))
        }
    }

    /// The rate for an identity holding `roles` (`None`: unlimited).
    pub fn rate_for(&self, roles: &[Role]) -> Option<Rate> {
        let by_role = self
            .roles
            .iter()
            .filter(|(r, _)| roles.contains(r))
            .map(|(_, rate)| *rate)
            .max_by(|a, b| a.per_second().total_cmp(&b.per_second()));
        by_role.or(self.default)
    }
}

/// A token bucket: `tokens` left at `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Take one token from `bucket` at `now` under `rate`: `Ok` or `Err(seconds until one is
/// back)`. Pure.
fn take(bucket: &mut Bucket, rate: Rate, now: Instant) -> Result<(), u64> {
    let capacity = f64::from(rate.count);
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate.per_second()).min(capacity);
    bucket.at = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - bucket.tokens) / rate.per_second()).ceil().max(1.0) as u64)
    }
}

/// Upper bound on tracked identities before idle buckets are swept.
const MAX_BUCKETS: usize = 100_000;

/// Counts requests per identity.
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
    redis: Option<(
        redis::Client,
        String,
        tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    )>,
}

impl RateLimiter {
    /// A limiter; with `redis_url` the windows live in Redis (keys under `prefix`).
    pub fn new(
        limit: RateLimit,
        redis_url: Option<&str>,
        prefix: &str,
    ) -> Result<RateLimiter, String> {
        let redis = match redis_url {
            Some(url) => Some((
                redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?,
                format!("{prefix}ratelimit:"),
                tokio::sync::Mutex::new(None),
            )),
            None => None,
        };
        Ok(RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
            redis,
        })
    }

    /// Count one request by `identity`: `Ok` or `Err(Retry-After seconds)`.
    pub async fn check(&self, identity: &str, roles: &[Role]) -> Result<(), u64> {
        let Some(rate) = self.limit.rate_for(roles) else {
            return Ok(());
        };
        if let Some((client, prefix, conn)) = &self.redis {
            match redis_window(client, conn, prefix, identity, rate).await {
                Ok(r) => return r,
                Err(e) => {
                    tracing::warn!(event = "rate_limit_redis_unavailable", error = %e,
                        "rate limit falls back to this node's in-process bucket");
                }
            }
        }
        self.local(identity, rate, Instant::now())
    }

    fn local(&self, identity: &str, rate: Rate, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() >= MAX_BUCKETS {
            // Full buckets carry no state worth keeping.
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < rate.period);
        }
        let bucket = buckets.entry(identity.to_string()).or_insert(Bucket {
            tokens: f64::from(rate.count),
            at: now,
        });
        take(bucket, rate, now)
    }
}

async fn redis_window(
    client: &redis::Client,
    conn: &tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    prefix: &str,
    identity: &str,
    rate: Rate,
) -> Result<Result<(), u64>, String> {
    let mut manager = {
        let mut guard = conn.lock().await;
        match guard.as_ref() {
            Some(m) => m.clone(),
            None => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_response_timeout(Duration::from_secs(1))
                    .set_number_of_retries(1);
                let m = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| "connect timeout".to_string())?
                .map_err(|e| e.to_string())?;
                *guard = Some(m.clone());
                m
            }
        }
    };
    let period_ms = rate.period.as_millis().max(1) as u64;
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let window = now_ms / period_ms;
    // Identities are hashed into the key: names may hold any character.
    let id = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(identity.as_bytes())[..12]);
    let key = format!("{prefix}{id}:{window}");
    let (count,): (u64,) = redis::pipe()
        .atomic()
        .incr(&key, 1u64)
        .pexpire(&key, (period_ms + 1000) as i64)
        .ignore()
        .query_async(&mut manager)
        .await
        .map_err(|e| e.to_string())?;
    if count <= u64::from(rate.count) {
        Ok(Ok(()))
    } else {
        let left_ms = (window + 1) * period_ms - now_ms;
        Ok(Err(left_ms.div_ceil(1000).max(1)))
    }
}

/// Default `MAGIC_AUTH_FAILURE_LIMIT`: 30 failed authentications per minute per address (the
/// burst), refilled evenly.
pub const DEFAULT_AUTH_FAILURE_LIMIT: Rate = Rate {
    count: 30,
    period: Duration::from_secs(60),
};

/// `MAGIC_AUTH_FAILURE_LIMIT`: a rate (`30/min`) or `off`.
pub fn parse_failure_limit(s: &str) -> Result<Option<Rate>, String> {
    match s.trim() {
        "off" | "0" => Ok(None),
        other => Rate::parse(other).map(Some),
    }
}

/// The address a request comes from: the TCP peer, unless the peer is a trusted proxy
/// (`MAGIC_TRUSTED_PROXIES`); then the right-most `X-Forwarded-For` entry that is not itself
/// a trusted proxy (entries further left are whatever the client claimed). An unreadable entry
/// stops the walk at the last trusted hop. Pure.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The bucket an address counts against: an IPv4 address itself, an IPv6 address's /64 (one
/// host usually holds a whole /64). Pure.
pub fn failure_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

/// Failed authentications per client address, in process: each failure takes a token; an
/// address without tokens left is refused (429 `E4003`) before its credentials are even
/// looked at, so guessing stops; a successful authentication takes nothing.
pub struct FailureLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailureLimiter {
    /// A limiter allowing `rate` failures.
    pub fn new(rate: Rate) -> FailureLimiter {
        FailureLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// May `ip` try to authenticate now? `Err(Retry-After seconds)` when its failures used
    /// up the limit. Takes nothing.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Ok(buckets) = self.buckets.lock() else {
            return Ok(());
        };
        match buckets.get(&failure_key(ip)) {
            None => Ok(()),
            // Peek on a copy: checking takes nothing.
            Some(b) => take(&mut b.clone(), self.rate, Instant::now()),
        }
    }

    /// Count one failed authentication by `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        let now = Instant::now();
        if buckets.len() >= MAX_BUCKETS {
            let period = self.rate.period;
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < period);
        }
        let bucket = buckets.entry(failure_key(ip)).or_insert(Bucket {
            tokens: f64::from(self.rate.count),
            at: now,
        });
        let _ = take(bucket, self.rate, now);
    }
}

/// The Content-Security-Policy of `path`: the console's pages may load their own scripts and
/// styles; everything else is data and may load nothing.
pub fn content_security_policy(path: &str) -> &'static str {
    if path == "/console" || path.starts_with("/console/") {
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    } else {
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    }
}

/// Add the security headers to `response` (for a request to `path`; `tls`: served over TLS).
/// A Content-Security-Policy the handler already set (the console's pages set a stricter one)
/// is kept.
pub fn security_headers(path: &str, tls: bool, response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.entry("content-security-policy")
        .or_insert(HeaderValue::from_static(content_security_policy(path)));
    if tls {
        h.insert(
            "strict-transport-security",
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
}

/// Check `ALLOWED_ORIGINS` entries (`*` or `scheme://host[:port]`).
pub fn validate_origins(origins: &[String]) -> Result<(), String> {
    let ok = |o: &str| {
        o == "*"
            || (HeaderValue::from_str(o).is_ok()
                && o.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https")
                        && !rest.is_empty()
                        && !rest.contains(['/', '?', '#', ' ', '@'])
                }))
    };
    let bad: Vec<&String> = origins.iter().filter(|o| !ok(o)).collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not an origin (scheme://host[:port], no path) or *: {bad:?}"
        ))
    }
}

/// The CORS layer for `origins` (`ALLOWED_ORIGINS`).
pub fn cors_layer(origins: &[String]) -> tower_http::cors::CorsLayer {
    use http::{header, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

/// The path of a request (for the headers middleware).
pub fn path_of<B>(req: &Request<B>) -> String {
    req.uri().path().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handlers_own_csp_is_kept_and_the_default_fills_in() {
        let mut own = Response::new(axum::body::Body::empty());
        own.headers_mut().insert(
            "content-security-policy",
            HeaderValue::from_static("default-src 'none'; style-src 'self'"),
        );
        security_headers("/console", false, &mut own);
        assert_eq!(
            own.headers()["content-security-policy"],
            "default-src 'none'; style-src 'self'"
        );
        let mut plain = Response::new(axum::body::Body::empty());
        security_headers("/api/health", true, &mut plain);
        assert_eq!(
            plain.headers()["content-security-policy"],
            content_security_policy("/api/health")
        );
        assert_eq!(plain.headers()["x-frame-options"], "DENY");
        assert!(plain.headers().contains_key("strict-transport-security"));
    }

    #[test]
    fn rates_and_limits_parse() {
        let s = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for (text, count, period) in [
            ("100/s", 100, s),
            ("6000/min", 6000, m),
            (" 5 / m ", 5, m),
            ("10/h", 10, Duration::from_secs(3600)),
        ] {
            assert_eq!(Rate::parse(text), Ok(Rate { count, period }), "{text}");
        }
        for bad in ["", "100", "0/s", "-1/s", "x/s", "10/day", "10/"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let l = RateLimit::parse("100/s,executor=1000/s, admin=5/min").unwrap();
        assert_eq!(
            l.default,
            Some(Rate {
                count: 100,
                period: s
            })
        );
        assert_eq!(l.roles.len(), 2);
        assert_eq!(l.rate_for(&[Role::Deployer]).unwrap().count, 100);
        assert_eq!(l.rate_for(&[Role::Executor]).unwrap().count, 1000);
        assert_eq!(l.rate_for(&[Role::Admin]).unwrap().count, 5);
        assert_eq!(
            l.rate_for(&[Role::Admin, Role::Executor]).unwrap().count,
            1000
        );
        let only_roles = RateLimit::parse("executor=10/s").unwrap();
        assert_eq!(only_roles.rate_for(&[Role::Admin]), None);
        let e = RateLimit::parse("1/s,2/s,root=1/s,3/fortnight").unwrap_err();
        assert!(e.contains("more than one default"), "{e}");
        assert!(e.contains("unknown role \"root\""), "{e}");
        assert!(e.contains("fortnight"), "{e}");
        assert!(RateLimit::parse(" , ").is_err());
    }

    #[test]
    fn token_bucket_table() {
        let rate = Rate {
            count: 2,
            period: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 2.0,
            at: t0,
        };
        assert_eq!(take(&mut b, rate, t0), Ok(()));
        assert_eq!(take(&mut b, rate, t0), Ok(()));
        assert_eq!(take(&mut b, rate, t0), Err(1));
        // Half a second later one token is back.
        assert_eq!(take(&mut b, rate, t0 + Duration::from_millis(500)), Ok(()));
        assert!(take(&mut b, rate, t0 + Duration::from_millis(500)).is_err());
        // Never more than the capacity.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(take(&mut b, rate, later), Ok(()));
        assert_eq!(take(&mut b, rate, later), Ok(()));
        assert!(take(&mut b, rate, later).is_err());
        let slow = Rate {
            count: 1,
            period: Duration::from_secs(60),
        };
        let mut b = Bucket {
            tokens: 0.0,
            at: t0,
        };
        assert_eq!(take(&mut b, slow, t0), Err(60));
    }

    #[tokio::test]
    async fn identities_have_their_own_buckets() {
        let limiter = RateLimiter::new(RateLimit::parse("2/min").unwrap(), None, "x:").unwrap();
        for _ in 0..2 {
            assert!(limiter.check("a", &[Role::Admin]).await.is_ok());
        }
        assert!(limiter.check("a", &[Role::Admin]).await.is_err());
        assert!(limiter.check("b", &[Role::Admin]).await.is_ok());
    }

    #[test]
    fn client_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let proxies = [net("10.0.0.0/8"), net("127.0.0.1/32")];
        type Case<'a> = (&'a str, &'a [&'a str], &'a [ipnet::IpNet], &'a str);
        let cases: &[Case] = &[
            // No trusted proxies: the header is ignored.
            ("203.0.113.9", &["1.2.3.4"], &[], "203.0.113.9"),
            // A peer that is not a trusted proxy cannot speak for anyone.
            ("203.0.113.9", &["1.2.3.4"], &proxies, "203.0.113.9"),
            // Through a trusted proxy: the right-most untrusted hop.
            ("127.0.0.1", &["198.51.100.7"], &proxies, "198.51.100.7"),
            (
                "127.0.0.1",
                &["6.6.6.6, 198.51.100.7"],
                &proxies,
                "198.51.100.7",
            ),
            (
                "127.0.0.1",
                &["6.6.6.6, 198.51.100.7, 10.1.2.3"],
                &proxies,
                "198.51.100.7",
            ),
            (
                "127.0.0.1",
                &["6.6.6.6", "198.51.100.7"],
                &proxies,
                "198.51.100.7",
            ),
            // Only proxies: the left-most.
            ("127.0.0.1", &["10.9.9.9, 10.1.1.1"], &proxies, "10.9.9.9"),
            // No header, or garbage: the last trusted hop.
            ("127.0.0.1", &[], &proxies, "127.0.0.1"),
            ("127.0.0.1", &["not-an-ip"], &proxies, "127.0.0.1"),
            (
                "127.0.0.1",
                &["6.6.6.6, garbage, 10.1.1.1"],
                &proxies,
                "10.1.1.1",
            ),
            (
                "::ffff:127.0.0.1",
                &["198.51.100.7"],
                &proxies,
                "198.51.100.7",
            ),
        ];
        for (peer, xff, trusted, want) in cases {
            assert_eq!(
                client_ip(ip(peer), xff, trusted),
                ip(want),
                "{peer} {xff:?}"
            );
        }
        assert_eq!(
            failure_key(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(failure_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(failure_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn failed_authentications_run_out_per_address() {
        let limiter = FailureLimiter::new(Rate {
            count: 3,
            period: Duration::from_secs(60),
        });
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..10 {
            // Checking takes nothing.
            assert_eq!(limiter.check(a), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
            limiter.failed(a);
        }
        let retry = limiter.check(a).unwrap_err();
        assert!((1..=20).contains(&retry), "{retry}");
        assert_eq!(limiter.check(b), Ok(()));
        // Another address of the same IPv6 /64 shares its bucket.
        let (v6a, v6b) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ffff".parse().unwrap(),
        );
        for _ in 0..3 {
            limiter.failed(v6a);
        }
        assert!(limiter.check(v6b).is_err());
        assert_eq!(parse_failure_limit("off"), Ok(None));
        assert_eq!(parse_failure_limit("5/min").unwrap().unwrap().count, 5);
        assert!(parse_failure_limit("lots").is_err());
    }

    #[test]
    fn headers_and_origins() {
        assert!(content_security_policy("/api/health").contains("default-src 'none'"));
        assert!(content_security_policy("/console").contains("default-src 'self'"));
        assert!(content_security_policy("/console/app.js").contains("default-src 'self'"));
        assert!(content_security_policy("/consoles").contains("default-src 'none'"));
        let mut r = Response::new(axum::body::Body::empty());
        security_headers("/api/x", false, &mut r);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert!(r.headers().get("strict-transport-security").is_none());
        security_headers("/api/x", true, &mut r);
        assert!(r.headers().get("strict-transport-security").is_some());
        assert!(validate_origins(&["https://app.example.com".into(), "*".into()]).is_ok());
        assert!(validate_origins(&["http://localhost:3000".into()]).is_ok());
        for bad in [
            "app.example.com",
            "https://a.com/path",
            "ftp://a.com",
            "https://",
        ] {
            assert!(validate_origins(&[bad.into()]).is_err(), "{bad}");
        }
    }
}

//! The OIDC provider's signing keys (JWKS) in memory, and bearer-token authentication over
//! both verifiers (`JWT_SECRET` and the JWKS).
//!
//! Owns: discovery (`OIDC_ISSUER` → `/.well-known/openid-configuration` → `jwks_uri`, whose
//! `issuer` must be the configured one), fetching the key set (reqwest, timeouts, no redirects,
//! a body-size cap), the cache (replaced whole on each good fetch, refreshed in the background
//! when its `Cache-Control` lifetime runs out, and on an unknown `kid` at most once per
//! `JWT_JWKS_MIN_REFRESH`), and [`authenticate`]. The verification itself is `jwt.rs`'s (pure).
//! Must never: let a flood of unknown `kid`s turn into a flood of fetches, drop cached keys
//! because a fetch failed, block a request on a fetch when its key is cached, or panic on
//! anything the provider sends.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::jwt::{self, JwksSource, JwtConfig, JwtError, Route, VerifyKey};

/// Largest discovery or key-set document read (bytes).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Timeout of one fetch (connect included).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type Keys = Vec<(Option<String>, VerifyKey)>;

struct Fetch {
    /// When the last fetch (of any kind) started.
    last_attempt: Option<Instant>,
    /// The discovered `jwks_uri` (forgotten when a key-set fetch fails).
    jwks_uri: Option<String>,
}

/// The key set of one provider.
pub struct JwksCache {
    source: JwksSource,
    min_refresh: Duration,
    client: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    /// When the cached set should be fetched again.
    fresh_until: RwLock<Option<Instant>>,
    fetch: tokio::sync::Mutex<Fetch>,
    fetches: std::sync::atomic::AtomicU64,
}

/// Why a fetch failed (logged, never shown to a caller).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Transport or HTTP status.
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The document is not what it should be.
    #[error("{url}: {reason}")]
    Document {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl JwksCache {
    /// A cache for `source` (nothing fetched yet).
    pub fn new(source: JwksSource, min_refresh: Duration) -> Result<JwksCache, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("magic-runtime-jwks")
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(JwksCache {
            source,
            min_refresh,
            client,
            keys: RwLock::new(Arc::new(Vec::new())),
            fresh_until: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(Fetch {
                last_attempt: None,
                jwks_uri: None,
            }),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many key-set fetches were started (discovery not counted).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many keys are cached.
    pub fn key_count(&self) -> usize {
        self.current().len()
    }

    fn current(&self) -> Arc<Keys> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Fetch the key set now unless a fetch started less than `JWT_JWKS_MIN_REFRESH` ago
    /// (`force` skips that check: the periodic refresh). Concurrent callers wait for one
    /// fetch instead of starting their own. A failed fetch keeps the cached keys.
    pub async fn refresh(&self, force: bool) -> Result<(), FetchError> {
        let mut fetch = self.fetch.lock().await;
        let now = Instant::now();
        if !force
            && fetch
                .last_attempt
                .is_some_and(|t| now.saturating_duration_since(t) < self.min_refresh)
        {
            return Ok(());
        }
        fetch.last_attempt = Some(now);
        let result = self.fetch_keys(&mut fetch).await;
        match &result {
            Ok(n) => tracing::info!(
                event = "jwks_refreshed",
                keys = n,
                "identity provider keys fetched"
            ),
            Err(e) => {
                tracing::warn!(event = "jwks_fetch_failed", error = %e, cached_keys = self.key_count(),
                    "identity provider keys could not be fetched; cached keys stay in use")
            }
        }
        result.map(|_| ())
    }

    async fn fetch_keys(&self, fetch: &mut Fetch) -> Result<usize, FetchError> {
        let url = match (&self.source, &fetch.jwks_uri) {
            (JwksSource::Url(u), _) => u.clone(),
            (JwksSource::Issuer(_), Some(u)) => u.clone(),
            (JwksSource::Issuer(issuer), None) => {
                let u = self.discover(issuer).await?;
                fetch.jwks_uri = Some(u.clone());
                u
            }
        };
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (body, cache_control) = match self.get(&url).await {
            Ok(r) => r,
            Err(e) => {
                // The provider may have moved its keys: discover again next time.
                fetch.jwks_uri = None;
                return Err(e);
            }
        };
        let keys = jwt::parse_jwks(&body).map_err(|reason| FetchError::Document {
            url: url.clone(),
            reason,
        })?;
        if keys.is_empty() {
            return Err(FetchError::Document {
                url,
                reason: "no RS256/ES256 signing key in the set".into(),
            });
        }
        let n = keys.len();
        let lifetime = jwt::cache_lifetime(cache_control.as_deref());
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(keys);
        }
        if let Ok(mut f) = self.fresh_until.write() {
            *f = Some(Instant::now() + lifetime);
        }
        Ok(n)
    }

    /// `jwks_uri` of `issuer`, whose discovery document must name the same issuer.
    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let bad = |reason: String| FetchError::Document {
            url: url.clone(),
            reason,
        };
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("not an OpenID configuration: {e}")))?;
        if d.issuer != issuer {
            return Err(bad(format!(
                "names issuer {:?}, not OIDC_ISSUER {issuer:?}",
                d.issuer
            )));
        }
        if !jwt::key_url_ok(&d.jwks_uri) {
            return Err(bad(format!(
                "jwks_uri {:?} is not https:// (http:// only to localhost)",
                d.jwks_uri
            )));
        }
        Ok(d.jwks_uri)
    }

    /// GET `url`: a 2xx body of at most [`MAX_DOCUMENT_BYTES`] and its `Cache-Control`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<String>), FetchError> {
        let http = |reason: String| FetchError::Http {
            url: url.to_string(),
            reason,
        };
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| http(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(http(format!("status {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(http(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        let cache_control = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| http(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(http(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_control))
    }

    /// The key for a token routed to the JWKS. An unknown `kid` triggers one (rate-limited)
    /// refresh; with no keys at all after it: [`JwtError::KeysUnavailable`].
    pub async fn key_for(
        &self,
        kid: Option<&str>,
        alg: jsonwebtoken::Algorithm,
    ) -> Result<VerifyKey, JwtError> {
        if let Some(key) = jwt::find_key(&self.current(), kid, alg) {
            return Ok(key.clone());
        }
        let _ = self.refresh(false).await;
        let keys = self.current();
        match jwt::find_key(&keys, kid, alg) {
            Some(key) => Ok(key.clone()),
            None if keys.is_empty() => Err(JwtError::KeysUnavailable),
            None => Err(JwtError::Invalid(match kid {
                Some(_) => "unknown signing key (kid)".into(),
                None => "no kid, and the key set has no single key for its algorithm".into(),
            })),
        }
    }

    /// Keep the key set fresh in the background: fetch when its lifetime runs out (after a
    /// failure, again after `JWT_JWKS_MIN_REFRESH`, backing off to a minute). Ends when the
    /// cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let weak: Weak<JwksCache> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let wait = {
                    let Some(cache) = weak.upgrade() else { return };
                    let fresh_until = cache.fresh_until.read().ok().and_then(|f| *f);
                    match fresh_until {
                        Some(t) if failures == 0 => t.saturating_duration_since(Instant::now()),
                        _ => {
                            (cache.min_refresh * failures.clamp(1, 6)).min(Duration::from_secs(60))
                        }
                    }
                };
                tokio::time::sleep(wait).await;
                let Some(cache) = weak.upgrade() else { return };
                let due = cache
                    .fresh_until
                    .read()
                    .ok()
                    .and_then(|f| *f)
                    .is_none_or(|t| t <= Instant::now());
                if due || failures > 0 {
                    match cache.refresh(true).await {
                        Ok(()) => failures = 0,
                        Err(_) => failures = failures.saturating_add(1),
                    }
                }
            }
        });
    }
}

/// Verify a bearer `token` with whichever verifier its header asks for: HS256 with
/// `JWT_SECRET`, RS256/ES256 with the JWKS key its `kid` names (the key decides the algorithm).
pub async fn authenticate(
    config: &JwtConfig,
    jwks: Option<&JwksCache>,
    token: &str,
) -> Result<Identity, JwtError> {
    match jwt::route(token)? {
        Route::Secret => config.authenticate(token),
        Route::Jwks { kid, alg } => match jwks {
            None => Err(JwtError::Invalid(
                "RS256/ES256 tokens are not enabled (JWT_JWKS_URL or OIDC_ISSUER)".into(),
            )),
            Some(cache) => {
                let key = cache.key_for(kid.as_deref(), alg).await?;
                config.verify(token, &key)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::testkeys::{self, TestKey};
    use crate::rbac::Role;
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    /// A provider on 127.0.0.1: discovery and a key set that the test can rotate or take
    /// down; it counts the key-set requests it answers.
    struct Provider {
        url: String,
        keys: Arc<Mutex<serde_json::Value>>,
        up: Arc<std::sync::atomic::AtomicBool>,
        hits: Arc<AtomicU64>,
        cache_control: Arc<Mutex<Option<String>>>,
    }

    async fn provider() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(json!({"keys": []})));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hits = Arc::new(AtomicU64::new(0));
        let cache_control = Arc::new(Mutex::new(None::<String>));
        let (k, u, h, cc, issuer) = (
            keys.clone(),
            up.clone(),
            hits.clone(),
            cache_control.clone(),
            url.clone(),
        );
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let issuer = issuer.clone();
                    async move {
                        axum::Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}))
                    }
                }),
            )
            .route(
                "/keys",
                axum::routing::get(move || {
                    let (k, u, h, cc) = (k.clone(), u.clone(), h.clone(), cc.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        if !u.load(Ordering::SeqCst) {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        let mut r = axum::Json(k.lock().unwrap().clone()).into_response();
                        if let Some(v) = cc.lock().unwrap().clone() {
                            r.headers_mut().insert("cache-control", v.parse().unwrap());
                        }
                        r
                    }
                }),
            )
            .route(
                "/huge",
                axum::routing::get(|| async { "x".repeat(MAX_DOCUMENT_BYTES + 1) }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Provider {
            url,
            keys,
            up,
            hits,
            cache_control,
        }
    }

    use axum::response::IntoResponse as _;

    impl Provider {
        fn publish(&self, keys: &[(&TestKey, &str)]) {
            let set: Vec<_> = keys.iter().map(|(k, kid)| k.jwk(kid)).collect();
            *self.keys.lock().unwrap() = json!({ "keys": set });
        }
    }

    fn config(issuer: &str) -> JwtConfig {
        JwtConfig {
            secret: None,
            jwks: Some(JwksSource::Issuer(issuer.into())),
            issuer: Some(issuer.into()),
            audience: Some("magic".into()),
            role_claim: "groups".into(),
            role_map: Some(crate::jwt::RoleMap::parse("ops-team=operator").unwrap()),
            min_refresh: Duration::from_secs(1),
        }
    }

    fn claims(issuer: &str) -> serde_json::Value {
        json!({"sub": "dana", "groups": ["ops-team"], "iss": issuer, "aud": "magic",
               "exp": chrono::Utc::now().timestamp() + 600})
    }

    #[tokio::test]
    async fn discovery_rotation_flood_and_outage() {
        let p = provider().await;
        let (old, new) = (testkeys::rsa(), testkeys::ec());
        p.publish(&[(&old, "k1")]);
        let cfg = config(&p.url);
        assert!(cfg.validate().is_ok());
        let cache = JwksCache::new(cfg.jwks.clone().unwrap(), cfg.min_refresh).unwrap();
        let auth = |t: String| {
            let (cfg, cache) = (&cfg, &cache);
            async move { authenticate(cfg, Some(cache), &t).await }
        };
        let c = claims(&p.url);

        // First use fetches (discovery, then keys).
        let id = auth(old.sign(Some("k1"), &c)).await.unwrap();
        assert_eq!(
            (id.name.as_str(), id.roles.as_slice()),
            ("jwt:dana", &[Role::Operator][..])
        );
        assert_eq!(p.hits.load(Ordering::SeqCst), 1);
        // Cached: no fetch.
        auth(old.sign(Some("k1"), &c)).await.unwrap();
        assert_eq!(p.hits.load(Ordering::SeqCst), 1);

        // Rotation: a token with the new kid makes one refresh (once the minimum interval
        // has passed), which finds it.
        p.publish(&[(&old, "k1"), (&new, "k2")]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = auth(new.sign(Some("k2"), &c)).await.unwrap();
        assert_eq!(id.roles, vec![Role::Operator]);
        assert_eq!(p.hits.load(Ordering::SeqCst), 2);

        // A flood of random kids: at most one fetch per interval, whatever the count.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let before = p.hits.load(Ordering::SeqCst);
        let started = Instant::now();
        let flood = (0..200).map(|i| {
            let t = old.sign(Some(&format!("random-{i}")), &c);
            let (cfg, cache) = (&cfg, &cache);
            async move { authenticate(cfg, Some(cache), &t).await }
        });
        let results = futures::future::join_all(flood).await;
        assert!(results
            .iter()
            .all(|r| matches!(r, Err(JwtError::Invalid(_)))));
        let fetched = p.hits.load(Ordering::SeqCst) - before;
        let allowed = 1 + started.elapsed().as_secs();
        assert!(
            fetched >= 1 && fetched <= allowed,
            "{fetched} fetches for 200 unknown kids"
        );

        // The provider goes down: cached keys keep working, unknown kids are refused.
        p.up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(cache.refresh(true).await.is_err());
        assert_eq!(cache.key_count(), 2);
        auth(old.sign(Some("k1"), &c)).await.unwrap();
        auth(new.sign(Some("k2"), &c)).await.unwrap();
        assert!(matches!(
            auth(old.sign(Some("k3"), &c)).await,
            Err(JwtError::Invalid(_))
        ));

        // Back up: the periodic refresh drops a key the provider no longer publishes.
        p.up.store(true, Ordering::SeqCst);
        p.publish(&[(&new, "k2")]);
        cache.refresh(true).await.unwrap();
        assert!(auth(old.sign(Some("k1"), &c)).await.is_err());
        auth(new.sign(Some("k2"), &c)).await.unwrap();
    }

    #[tokio::test]
    async fn no_keys_at_all_is_unavailable_not_a_panic() {
        let p = provider().await;
        p.up.store(false, Ordering::SeqCst);
        let cfg = config(&p.url);
        let cache = JwksCache::new(cfg.jwks.clone().unwrap(), cfg.min_refresh).unwrap();
        let t = testkeys::ec().sign(Some("k"), &claims(&p.url));
        assert_eq!(
            authenticate(&cfg, Some(&cache), &t).await,
            Err(JwtError::KeysUnavailable)
        );
        // Nothing listens here.
        let gone = JwksCache::new(
            JwksSource::Url("http://127.0.0.1:9/keys".into()),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            authenticate(&cfg, Some(&gone), &t).await,
            Err(JwtError::KeysUnavailable)
        );
        // Without a JWKS, an RS256/ES256 token is simply refused.
        assert!(matches!(
            authenticate(&cfg, None, &t).await,
            Err(JwtError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn bad_documents_are_refused() {
        let p = provider().await;
        // A discovery document naming another issuer.
        let wrong = JwksCache::new(
            JwksSource::Issuer(format!("{}/", p.url)),
            Duration::from_secs(1),
        )
        .unwrap();
        let e = wrong.refresh(true).await.unwrap_err().to_string();
        assert!(e.contains("names issuer"), "{e}");
        // Too large.
        let huge = JwksCache::new(
            JwksSource::Url(format!("{}/huge", p.url)),
            Duration::from_secs(1),
        )
        .unwrap();
        let e = huge.refresh(true).await.unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        // A set with no usable key.
        *p.keys.lock().unwrap() = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        let direct = JwksCache::new(
            JwksSource::Url(format!("{}/keys", p.url)),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(direct.refresh(true).await.is_err());
        assert_eq!(direct.key_count(), 0);
    }

    #[tokio::test]
    async fn cache_control_sets_the_next_refresh() {
        let p = provider().await;
        p.publish(&[(&testkeys::ec(), "k")]);
        *p.cache_control.lock().unwrap() = Some("public, max-age=120".into());
        let cache = JwksCache::new(
            JwksSource::Url(format!("{}/keys", p.url)),
            Duration::from_secs(1),
        )
        .unwrap();
        cache.refresh(true).await.unwrap();
        let left = cache
            .fresh_until
            .read()
            .unwrap()
            .unwrap()
            .saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(100) && left <= Duration::from_secs(120),
            "{left:?}"
        );
    }
}

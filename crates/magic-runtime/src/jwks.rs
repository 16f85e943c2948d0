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

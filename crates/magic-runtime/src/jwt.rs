//! JWT bearer authentication (`Authorization: Bearer <JWT>`): HS256 with a shared secret and
//! RS256/ES256 with keys published by an OIDC provider (JWKS).
//!
//! Owns: the token settings (`JWT_SECRET`, `JWT_JWKS_URL`, `OIDC_ISSUER`, `JWT_ISSUER`,
//! `JWT_AUDIENCE`, `JWT_ROLE_CLAIM`, `JWT_ROLE_MAP`, `JWT_JWKS_MIN_REFRESH`) and the pure part of
//! verification: which key family a token asks for ([`route`]), which algorithm a published key
//! verifies ([`jwk_algorithm`], from the key, never from a token), reading a JWKS document
//! ([`parse_jwks`]), how long it may be cached ([`cache_lifetime`]), checking a token against
//! one key ([`JwtConfig::verify`]) and turning its claims into an [`Identity`] (`jwt:SUB`, roles
//! from the role claim, through `JWT_ROLE_MAP` when set). Fetching and caching the key set is
//! `jwks.rs`'s. Must never: accept `none`, an algorithm other than the one the key is for
//! (HS/RS confusion), a symmetric (`oct`) key from a JWKS, an expired or not-yet-valid token, a
//! token for another issuer or audience when those are configured, or a token without a known
//! role; nor log a token.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::{Identity, Role};

/// Shortest accepted `JWT_SECRET` (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Default `JWT_ROLE_CLAIM`: `role` (a string) or, when absent, `roles` (a list).
pub const DEFAULT_ROLE_CLAIM: &str = "role";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;
/// Default `JWT_JWKS_MIN_REFRESH`: at most one key-set fetch per this long on unknown `kid`s.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(10);
/// Key-set lifetime when the provider sends no `Cache-Control: max-age`.
pub const DEFAULT_KEYS_LIFETIME: Duration = Duration::from_secs(3600);
/// Shortest key-set lifetime honoured (a smaller or `no-cache` max-age is raised to it).
pub const MIN_KEYS_LIFETIME: Duration = Duration::from_secs(60);
/// Longest key-set lifetime honoured (a larger max-age is cut to it).
pub const MAX_KEYS_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Where the RS256/ES256 verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `JWT_JWKS_URL`: the key set itself.
    Url(String),
    /// `OIDC_ISSUER`: discovery through `<issuer>/.well-known/openid-configuration`.
    Issuer(String),
}

/// `JWT_ROLE_MAP` (`ops-team=operator,admins=admin`): claim values to roles. A value may be
/// listed with several roles; values not listed give no role.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleMap(pub Vec<(String, Role)>);

impl RoleMap {
    /// Parse `VALUE=ROLE,…`; every problem is reported.
    pub fn parse(s: &str) -> Result<RoleMap, String> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The value may itself contain `=` (not `,`): the role is after the last `=`.
            match part.rsplit_once('=') {
                Some((value, role)) if !value.trim().is_empty() => match Role::parse(role.trim()) {
                    Some(r) => out.push((value.trim().to_string(), r)),
                    None => problems.push(format!("unknown role {:?}", role.trim())),
                },
                _ => problems.push(format!("{part:?} is not VALUE=ROLE")),
            }
        }
        if out.is_empty() && problems.is_empty() {
            problems.push("empty".into());
        }
        if problems.is_empty() {
            Ok(RoleMap(out))
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Token settings.
#[derive(Clone)]
pub struct JwtConfig {
    /// `JWT_SECRET`: the HS256 secret (at least [`MIN_SECRET_BYTES`]); `None`: no HS256.
    pub secret: Option<Vec<u8>>,
    /// `JWT_JWKS_URL` or `OIDC_ISSUER`: RS256/ES256 keys; `None`: no RS256/ES256.
    pub jwks: Option<JwksSource>,
    /// Required `iss`, when set (`OIDC_ISSUER`, else `JWT_ISSUER`).
    pub issuer: Option<String>,
    /// Required `aud`, when set (`JWT_AUDIENCE`; required with a JWKS).
    pub audience: Option<String>,
    /// The claim holding the role(s): a string or a list of strings.
    pub role_claim: String,
    /// `JWT_ROLE_MAP`: claim values to roles; `None`: values that are role names are roles.
    pub role_map: Option<RoleMap>,
    /// `JWT_JWKS_MIN_REFRESH`: at most one key-set fetch per this long for unknown `kid`s.
    pub min_refresh: Duration,
}

impl JwtConfig {
    /// HS256 only, with `secret` and no issuer, audience or role map (tests, embedded use).
    pub fn hs256(secret: &[u8]) -> JwtConfig {
        JwtConfig {
            secret: Some(secret.to_vec()),
            jwks: None,
            issuer: None,
            audience: None,
            role_claim: DEFAULT_ROLE_CLAIM.into(),
            role_map: None,
            min_refresh: DEFAULT_MIN_REFRESH,
        }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("role_claim", &self.role_claim)
            .field("role_map", &self.role_map)
            .field("min_refresh", &self.min_refresh)
            .finish()
    }
}

/// Why a token was refused (the message is safe to answer with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Signature, algorithm, format, time or issuer/audience check failed.
    #[error("invalid bearer token: {0}")]
    Invalid(String),
    /// No `sub` claim.
    #[error("invalid bearer token: no sub claim")]
    NoSubject,
    /// No known role in the role claim.
    #[error("bearer token carries no known role in its {0:?} claim")]
    NoRole(String),
    /// The identity provider's keys could not be fetched and none are cached (E5003).
    #[error("the identity provider's signing keys are unavailable; try again later")]
    KeysUnavailable,
}

/// Whether `url` may serve keys: `https://`, or `http://` to a loopback host only (keys fetched
/// over plain HTTP from the network could be replaced by anyone on the path).
pub fn key_url_ok(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

impl JwtConfig {
    /// Check the settings: `Err((setting, reason))` names the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.secret.is_none() && self.jwks.is_none() {
            return Err((
                "JWT_SECRET",
                "set JWT_SECRET, JWT_JWKS_URL or OIDC_ISSUER".into(),
            ));
        }
        if let Some(secret) = &self.secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err((
                    "JWT_SECRET",
                    format!(
                        "must be at least {MIN_SECRET_BYTES} bytes (256 bits); it is {}",
                        secret.len()
                    ),
                ));
            }
        }
        if self.role_claim.is_empty() {
            return Err(("JWT_ROLE_CLAIM", "must not be empty".into()));
        }
        if let Some(source) = &self.jwks {
            let (setting, url) = match source {
                JwksSource::Url(u) => ("JWT_JWKS_URL", u),
                JwksSource::Issuer(i) => ("OIDC_ISSUER", i),
            };
            if !key_url_ok(url) {
                return Err((
                    setting,
                    format!("{url:?} must be an https:// URL (http:// only to localhost)"),
                ));
            }
            if self.audience.as_deref().is_none_or(str::is_empty) {
                return Err((
                    "JWT_AUDIENCE",
                    format!(
                        "is required with {setting}: without it a token the provider issued \
                         for any other application would be accepted"
                    ),
                ));
            }
            if let (JwksSource::Issuer(i), Some(iss)) = (source, &self.issuer) {
                if i != iss {
                    return Err((
                        "JWT_ISSUER",
                        format!("{iss:?} differs from OIDC_ISSUER {i:?} (set only one)"),
                    ));
                }
            }
        }
        if self.min_refresh < Duration::from_secs(1) {
            return Err(("JWT_JWKS_MIN_REFRESH", "must be at least 1s".into()));
        }
        Ok(())
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        // Exactly one algorithm, the key's: jsonwebtoken refuses a token whose header names
        // another one and a key of another family (`none` it does not even parse).
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present, not merely match when present.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        validation
    }

    /// Verify `token` with `key` (which verifies exactly one algorithm) and map it to an
    /// identity. Pure.
    pub fn verify(&self, token: &str, key: &VerifyKey) -> Result<Identity, JwtError> {
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &self.validation(key.alg),
        )
        .map_err(|e| JwtError::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::NoSubject)?;
        let roles = roles_from_claims(&claims, &self.role_claim, self.role_map.as_ref());
        if roles.is_empty() {
            return Err(JwtError::NoRole(self.role_claim.clone()));
        }
        Ok(Identity {
            name: format!("jwt:{sub}"),
            roles,
            scope: None,
        })
    }

    /// Verify an HS256 `token` with `JWT_SECRET` (refused when no secret is configured).
    pub fn authenticate(&self, token: &str) -> Result<Identity, JwtError> {
        let Some(secret) = &self.secret else {
            return Err(JwtError::Invalid(
                "HS256 tokens are not enabled (JWT_SECRET)".into(),
            ));
        };
        self.verify(
            token,
            &VerifyKey {
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            },
        )
    }
}

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
pub struct VerifyKey {
    /// The algorithm (from the key, never from a token).
    pub alg: Algorithm,
    /// The key.
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({:?})", self.alg)
    }
}

/// Which verifier a token is for, by its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// HS256: `JWT_SECRET`.
    Secret,
    /// RS256/ES256: the JWKS key with this `kid` (or the only key of that algorithm).
    Jwks {
        /// The header's `kid`.
        kid: Option<String>,
        /// The header's `alg` (only used to pick a key without `kid`; the key decides).
        alg: Algorithm,
    },
}

/// Which verifier `token` is for. Any algorithm other than HS256, RS256 and ES256 (and `none`,
/// which does not parse) is refused here. Pure.
pub fn route(token: &str) -> Result<Route, JwtError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| JwtError::Invalid("malformed token".into()))?;
    match header.alg {
        Algorithm::HS256 => Ok(Route::Secret),
        alg @ (Algorithm::RS256 | Algorithm::ES256) => Ok(Route::Jwks {
            kid: header.kid,
            alg,
        }),
        _ => Err(JwtError::Invalid(
            "algorithm not accepted (HS256, RS256 or ES256 only)".into(),
        )),
    }
}

/// One key of a JWKS document (the fields read; others are ignored).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RawJwk {
    /// Key type: `RSA`, `EC` (`oct`, `OKP` … are skipped).
    #[serde(default)]
    pub kty: String,
    /// Key ID.
    pub kid: Option<String>,
    /// Declared algorithm.
    pub alg: Option<String>,
    /// Declared use (`sig`; `enc` keys are skipped).
    #[serde(rename = "use")]
    pub use_: Option<String>,
    /// RSA modulus (base64url).
    pub n: Option<String>,
    /// RSA exponent (base64url).
    pub e: Option<String>,
    /// EC curve.
    pub crv: Option<String>,
    /// EC x (base64url).
    pub x: Option<String>,
    /// EC y (base64url).
    pub y: Option<String>,
}

/// The one algorithm a published key verifies, from the key itself: RSA keys RS256, P-256 EC
/// keys ES256, when their `alg` (if any) says the same and their `use` (if any) is `sig`.
/// Everything else (`oct` secrets, other curves, RS384 …) verifies nothing. Pure.
pub fn jwk_algorithm(jwk: &RawJwk) -> Option<Algorithm> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, name) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => (Algorithm::RS256, "RS256"),
        ("EC", Some("P-256")) => (Algorithm::ES256, "ES256"),
        _ => return None,
    };
    match jwk.alg.as_deref() {
        None => Some(alg),
        Some(a) if a == name => Some(alg),
        Some(_) => None,
    }
}

/// The verification key of `jwk`, when it verifies an accepted algorithm.
fn verify_key(jwk: &RawJwk) -> Option<VerifyKey> {
    let alg = jwk_algorithm(jwk)?;
    let key = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?),
        _ => DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?),
    }
    .ok()?;
    Some(VerifyKey { alg, key })
}

/// The usable keys of a JWKS document (`{"keys": [...]}`), by `kid`; keys that verify no
/// accepted algorithm or do not parse are skipped. `Err` when the document itself is not a key
/// set. Pure.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<(Option<String>, VerifyKey)>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<RawJwk>(k).ok())
        .filter_map(|jwk| verify_key(&jwk).map(|key| (jwk.kid.clone(), key)))
        .collect())
}

/// The key for a token routed to the JWKS: the key with its `kid`; without a `kid`, the only
/// key for its algorithm. Pure.
pub fn find_key<'a>(
    keys: &'a [(Option<String>, VerifyKey)],
    kid: Option<&str>,
    alg: Algorithm,
) -> Option<&'a VerifyKey> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|(k, _)| k.as_deref() == Some(kid))
            .map(|(_, key)| key),
        None => {
            let mut of_alg = keys.iter().filter(|(_, key)| key.alg == alg);
            match (of_alg.next(), of_alg.next()) {
                (Some((_, key)), None) => Some(key),
                _ => None,
            }
        }
    }
}

/// How long a key set fetched with `cache_control` may be used before it is fetched again:
/// its `max-age` within [`MIN_KEYS_LIFETIME`]..=[`MAX_KEYS_LIFETIME`]; `no-cache`/`no-store`
/// the minimum; none the default. Pure.
pub fn cache_lifetime(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return DEFAULT_KEYS_LIFETIME;
    };
    let mut lifetime = None;
    for d in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-cache" || d == "no-store" {
            return MIN_KEYS_LIFETIME;
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            lifetime = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    match lifetime {
        Some(s) => Duration::from_secs(s).clamp(MIN_KEYS_LIFETIME, MAX_KEYS_LIFETIME),
        None => DEFAULT_KEYS_LIFETIME,
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not yet valid (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidAlgorithm => "algorithm not accepted for this key".into(),
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        _ => "malformed token".into(),
    }
}

/// The known roles named in `claim` (a string or a list of strings). With the default claim
/// name, `roles` is also read. Without `map`, values that are role names are roles and others
/// are ignored; with it, only the values it lists give (its) roles.
pub fn roles_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    claim: &str,
    map: Option<&RoleMap>,
) -> Vec<Role> {
    let mut names: Vec<&serde_json::Value> = claims.get(claim).into_iter().collect();
    if claim == DEFAULT_ROLE_CLAIM {
        names.extend(claims.get("roles"));
    }
    let mut roles: Vec<Role> = names
        .into_iter()
        .flat_map(|v| match v {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        })
        .flat_map(|value| match map {
            None => Role::parse(value).into_iter().collect::<Vec<_>>(),
            Some(m) => {
                m.0.iter()
                    .filter(|(v, _)| v == value)
                    .map(|(_, r)| *r)
                    .collect()
            }
        })
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

/// Signing keys made at test time (RSA with the `openssl` CLI, EC P-256 with rcgen) and their
/// JWKS entries. Never committed.
#[cfg(test)]
pub(crate) mod testkeys {
    use base64::Engine as _;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    /// A private key, its public JWK (without `kid`) and its public key PEM.
    pub struct TestKey {
        pub alg: Algorithm,
        pub encoding: EncodingKey,
        pub jwk: serde_json::Value,
        pub public_pem: Vec<u8>,
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn openssl(args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A fresh 2048-bit RSA key.
    pub fn rsa() -> TestKey {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("k.pem");
        let pem = pem.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem,
        ]);
        let der = openssl(&["rsa", "-in", pem, "-outform", "DER", "-traditional"]);
        let modulus = String::from_utf8(openssl(&["rsa", "-in", pem, "-noout", "-modulus"]))
            .unwrap()
            .trim()
            .trim_start_matches("Modulus=")
            .to_string();
        let public_pem = openssl(&["rsa", "-in", pem, "-pubout"]);
        TestKey {
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk: serde_json::json!({"kty": "RSA", "use": "sig", "alg": "RS256",
                "n": b64(&hex::decode(modulus).unwrap()), "e": "AQAB"}),
            public_pem,
        }
    }

    /// A fresh P-256 key.
    pub fn ec() -> TestKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4));
        TestKey {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
                "x": b64(&raw[1..33]), "y": b64(&raw[33..])}),
            public_pem: kp.public_key_pem().into_bytes(),
        }
    }

    impl TestKey {
        /// The JWK with `kid`.
        pub fn jwk(&self, kid: &str) -> serde_json::Value {
            let mut j = self.jwk.clone();
            j["kid"] = kid.into();
            j
        }

        /// A token over `claims` signed by this key, header `kid`.
        pub fn sign(&self, kid: Option<&str>, claims: &serde_json::Value) -> String {
            let mut h = Header::new(self.alg);
            h.kid = kid.map(str::to_string);
            encode(&h, claims, &self.encoding).unwrap()
        }
    }

    /// A token with header `alg`/`kid` "signed" with HMAC-SHA256 over `secret` (for HS/RS
    /// confusion: the secret is a public key).
    pub fn hmac(kid: Option<&str>, secret: &[u8], claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    /// A token with `alg: none` and no signature.
    pub fn unsigned(kid: Option<&str>, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
        format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            issuer: Some("https://issuer.test".into()),
            audience: Some("magic".into()),
            ..JwtConfig::hs256(SECRET)
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "role": "deployer", "exp": now() + 600,
               "iss": "https://issuer.test", "aud": "magic"})
    }

    fn sign(alg: Algorithm, secret: &[u8], claims: &serde_json::Value) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn with(mut claims: serde_json::Value, key: &str, v: serde_json::Value) -> serde_json::Value {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = v;
        }
        claims
    }

    fn unsigned(claims: &serde_json::Value) -> String {
        testkeys::unsigned(None, claims)
    }
    #[test]
    fn a_good_token_maps_to_its_subject_and_role() {
        let id = config()
            .authenticate(&sign(Algorithm::HS256, SECRET, &good_claims()))
            .unwrap();
        assert_eq!(id.name, "jwt:alice");
        assert_eq!(id.roles, vec![Role::Deployer]);
        assert_eq!(id.scope, None);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let c = good_claims();
        let cases: Vec<(&str, String)> = vec![
            (
                "wrong secret",
                sign(Algorithm::HS256, b"another-secret-another-secret-xx", &c),
            ),
            ("HS384", sign(Algorithm::HS384, SECRET, &c)),
            ("HS512", sign(Algorithm::HS512, SECRET, &c)),
            ("alg none", unsigned(&c)),
            (
                "expired",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "exp", json!(now() - 60)),
                ),
            ),
            (
                "no exp",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "exp", json!(null)),
                ),
            ),
            (
                "future nbf",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "nbf", json!(now() + 600)),
                ),
            ),
            (
                "wrong iss",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "iss", json!("https://evil.test")),
                ),
            ),
            (
                "no iss",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "iss", json!(null)),
                ),
            ),
            (
                "wrong aud",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "aud", json!("other")),
                ),
            ),
            (
                "no aud",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "aud", json!(null)),
                ),
            ),
            (
                "no sub",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "sub", json!(null)),
                ),
            ),
            (
                "no role",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "role", json!(null)),
                ),
            ),
            (
                "unknown role",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "role", json!("root")),
                ),
            ),
            (
                "role not a string",
                sign(Algorithm::HS256, SECRET, &with(c.clone(), "role", json!(1))),
            ),
            ("garbage", "not.a.token".into()),
            ("empty", String::new()),
        ];
        for (what, token) in cases {
            assert!(
                config().authenticate(&token).is_err(),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn the_error_says_why() {
        let c = good_claims();
        let err = |t: String| config().authenticate(&t).unwrap_err().to_string();
        assert!(err(sign(Algorithm::HS384, SECRET, &c)).contains("algorithm"));
        assert!(err(sign(
            Algorithm::HS256,
            SECRET,
            &with(c.clone(), "exp", json!(now() - 60))
        ))
        .contains("expired"));
        assert!(err(sign(
            Algorithm::HS256,
            SECRET,
            &with(c.clone(), "role", json!(null))
        ))
        .contains("role"));
    }

    #[test]
    fn issuer_and_audience_are_checked_only_when_configured() {
        let mut cfg = config();
        cfg.issuer = None;
        cfg.audience = None;
        let claims = json!({"sub": "bob", "role": "auditor", "exp": now() + 60,
                            "iss": "anyone", "aud": "anything"});
        assert!(cfg
            .authenticate(&sign(Algorithm::HS256, SECRET, &claims))
            .is_ok());
    }

    #[test]
    fn role_claims() {
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        let cases: Vec<(serde_json::Value, &str, Vec<Role>)> = vec![
            (json!({"role": "admin"}), "role", vec![Role::Admin]),
            (
                json!({"roles": ["auditor", "executor", "nope"]}),
                "role",
                vec![Role::Auditor, Role::Executor],
            ),
            (
                json!({"role": "operator", "roles": ["operator"]}),
                "role",
                vec![Role::Operator],
            ),
            (
                json!({"groups": ["deployer"]}),
                "groups",
                vec![Role::Deployer],
            ),
            (json!({"roles": ["deployer"]}), "groups", vec![]),
            (
                json!({"role": ["secrets-admin"]}),
                "role",
                vec![Role::SecretsAdmin],
            ),
            (json!({"role": {"admin": true}}), "role", vec![]),
            (json!({}), "role", vec![]),
        ];
        for (claims, claim, want) in cases {
            assert_eq!(
                roles_from_claims(&m(claims.clone()), claim, None),
                want,
                "{claims} {claim}"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        let mut cfg = config();
        assert!(cfg.validate().is_ok());
        cfg.secret = Some(vec![b'x'; 31]);
        assert!(cfg.validate().is_err());
        cfg.secret = Some(vec![]);
        assert!(cfg.validate().is_err());
    }

    fn oidc_config() -> JwtConfig {
        JwtConfig {
            secret: Some(SECRET.to_vec()),
            jwks: Some(JwksSource::Issuer("https://issuer.test".into())),
            issuer: Some("https://issuer.test".into()),
            audience: Some("magic".into()),
            role_claim: "groups".into(),
            role_map: Some(
                RoleMap::parse("ops-team=operator,admins=admin,ci=deployer,ci=executor").unwrap(),
            ),
            min_refresh: DEFAULT_MIN_REFRESH,
        }
    }

    fn oidc_claims() -> serde_json::Value {
        json!({"sub": "carol", "groups": ["ops-team", "staff"], "exp": now() + 600,
               "iss": "https://issuer.test", "aud": "magic"})
    }

    #[test]
    fn rs256_and_es256_tokens_against_their_keys() {
        let (rsa, ec) = (testkeys::rsa(), testkeys::ec());
        let set = json!({"keys": [rsa.jwk("r1"), ec.jwk("e1")]}).to_string();
        let keys = parse_jwks(set.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        let cfg = oidc_config();
        let c = oidc_claims();
        let check = |token: &str| -> Result<Identity, JwtError> {
            match route(token)? {
                Route::Secret => cfg.authenticate(token),
                Route::Jwks { kid, alg } => {
                    let key = find_key(&keys, kid.as_deref(), alg)
                        .ok_or_else(|| JwtError::Invalid("unknown kid".into()))?;
                    cfg.verify(token, key)
                }
            }
        };
        type Case = (&'static str, String, Option<&'static [Role]>);
        let rsa_pub_der_n = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.jwk["n"].as_str().unwrap())
                .unwrap()
        };
        let cases: Vec<Case> = vec![
            (
                "valid RS256",
                rsa.sign(Some("r1"), &c),
                Some(&[Role::Operator]),
            ),
            (
                "valid ES256",
                ec.sign(Some("e1"), &c),
                Some(&[Role::Operator]),
            ),
            (
                "ci maps to two roles",
                ec.sign(Some("e1"), &with(c.clone(), "groups", json!(["ci"]))),
                Some(&[Role::Deployer, Role::Executor]),
            ),
            (
                "HS256 with JWT_SECRET still works",
                sign(
                    Algorithm::HS256,
                    SECRET,
                    &with(c.clone(), "groups", json!("admins")),
                ),
                Some(&[Role::Admin]),
            ),
            (
                "wrong iss",
                rsa.sign(
                    Some("r1"),
                    &with(c.clone(), "iss", json!("https://evil.test")),
                ),
                None,
            ),
            (
                "wrong aud",
                rsa.sign(Some("r1"), &with(c.clone(), "aud", json!("other-app"))),
                None,
            ),
            (
                "no aud",
                rsa.sign(Some("r1"), &with(c.clone(), "aud", json!(null))),
                None,
            ),
            (
                "expired",
                rsa.sign(Some("r1"), &with(c.clone(), "exp", json!(now() - 60))),
                None,
            ),
            (
                "future nbf",
                ec.sign(Some("e1"), &with(c.clone(), "nbf", json!(now() + 600))),
                None,
            ),
            ("alg none", testkeys::unsigned(Some("r1"), &c), None),
            (
                "HS/RS confusion: public key PEM as HMAC secret",
                testkeys::hmac(Some("r1"), &rsa.public_pem, &c),
                None,
            ),
            (
                "HS/RS confusion: modulus as HMAC secret",
                testkeys::hmac(Some("r1"), &rsa_pub_der_n, &c),
                None,
            ),
            (
                "HS/EC confusion",
                testkeys::hmac(Some("e1"), &ec.public_pem, &c),
                None,
            ),
            (
                "RS256 token naming the EC key",
                rsa.sign(Some("e1"), &c),
                None,
            ),
            (
                "ES256 token naming the RSA key",
                ec.sign(Some("r1"), &c),
                None,
            ),
            (
                "signed by a key not in the set",
                testkeys::ec().sign(Some("e1"), &c),
                None,
            ),
            ("unknown kid", rsa.sign(Some("r9"), &c), None),
            (
                "unmapped group only",
                rsa.sign(Some("r1"), &with(c.clone(), "groups", json!(["staff"]))),
                None,
            ),
            (
                "a role name is not a mapped value",
                rsa.sign(Some("r1"), &with(c.clone(), "groups", json!(["admin"]))),
                None,
            ),
            (
                "no sub",
                rsa.sign(Some("r1"), &with(c.clone(), "sub", json!(null))),
                None,
            ),
        ];
        for (what, token, want) in cases {
            let got = check(&token);
            match want {
                Some(roles) => {
                    let id = got.unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                    assert_eq!(id.roles, roles.to_vec(), "{what}");
                    assert_eq!(id.name, "jwt:carol", "{what}");
                }
                None => assert!(got.is_err(), "{what} was accepted"),
            }
        }
        // Without a secret, an HS256 token is refused whatever it is signed with.
        let mut no_secret = oidc_config();
        no_secret.secret = None;
        assert!(no_secret
            .authenticate(&testkeys::hmac(Some("r1"), &rsa.public_pem, &c))
            .is_err());
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let base = RawJwk {
            kty: "RSA".into(),
            ..RawJwk::default()
        };
        let ec = RawJwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            ..RawJwk::default()
        };
        let cases: Vec<(&str, RawJwk, Option<Algorithm>)> = vec![
            ("RSA", base.clone(), Some(Algorithm::RS256)),
            (
                "RSA RS256",
                RawJwk {
                    alg: Some("RS256".into()),
                    ..base.clone()
                },
                Some(Algorithm::RS256),
            ),
            (
                "RSA sig",
                RawJwk {
                    use_: Some("sig".into()),
                    ..base.clone()
                },
                Some(Algorithm::RS256),
            ),
            (
                "RSA enc",
                RawJwk {
                    use_: Some("enc".into()),
                    ..base.clone()
                },
                None,
            ),
            (
                "RSA RS384",
                RawJwk {
                    alg: Some("RS384".into()),
                    ..base.clone()
                },
                None,
            ),
            (
                "RSA PS256",
                RawJwk {
                    alg: Some("PS256".into()),
                    ..base.clone()
                },
                None,
            ),
            (
                "RSA HS256",
                RawJwk {
                    alg: Some("HS256".into()),
                    ..base.clone()
                },
                None,
            ),
            ("EC P-256", ec.clone(), Some(Algorithm::ES256)),
            (
                "EC ES256",
                RawJwk {
                    alg: Some("ES256".into()),
                    ..ec.clone()
                },
                Some(Algorithm::ES256),
            ),
            (
                "EC P-384",
                RawJwk {
                    crv: Some("P-384".into()),
                    ..ec.clone()
                },
                None,
            ),
            (
                "EC no curve",
                RawJwk {
                    crv: None,
                    ..ec.clone()
                },
                None,
            ),
            (
                "EC RS256",
                RawJwk {
                    alg: Some("RS256".into()),
                    ..ec.clone()
                },
                None,
            ),
            (
                "oct",
                RawJwk {
                    kty: "oct".into(),
                    alg: Some("HS256".into()),
                    ..RawJwk::default()
                },
                None,
            ),
            (
                "OKP",
                RawJwk {
                    kty: "OKP".into(),
                    crv: Some("Ed25519".into()),
                    ..RawJwk::default()
                },
                None,
            ),
            ("empty", RawJwk::default(), None),
        ];
        for (what, jwk, want) in cases {
            assert_eq!(jwk_algorithm(&jwk), want, "{what}");
        }
    }

    #[test]
    fn jwks_documents() {
        let rsa = testkeys::rsa();
        let set = json!({"keys": [
            rsa.jwk("r1"),
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "kid": "no-n"},
            {"kty": "EC", "kid": "weird", "crv": "P-256", "x": 5},
            "not an object",
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        let kids: Vec<Option<&str>> = keys.iter().map(|(k, _)| k.as_deref()).collect();
        assert_eq!(kids, vec![Some("r1")]);
        for bad in [&b"{}"[..], b"[]", b"not json", b"{\"keys\": 1}", b""] {
            assert!(parse_jwks(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_jwks(b"{\"keys\": []}").unwrap().is_empty());
        // Without a kid: only when one key has the token's algorithm.
        assert!(find_key(&keys, None, Algorithm::RS256).is_some());
        assert!(find_key(&keys, None, Algorithm::ES256).is_none());
        let two = parse_jwks(
            json!({"keys": [rsa.jwk("a"), rsa.jwk("b")]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(find_key(&two, None, Algorithm::RS256).is_none());
        assert!(find_key(&two, Some("b"), Algorithm::RS256).is_some());
        assert!(find_key(&two, Some("c"), Algorithm::RS256).is_none());
    }

    #[test]
    fn routes_by_header() {
        let c = good_claims();
        let header_only = |alg: Algorithm, kid: Option<&str>| {
            use base64::Engine as _;
            let mut h = Header::new(alg);
            h.kid = kid.map(str::to_string);
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            // Routing reads the header only; claims and signature do not matter to it.
            format!("{}.e30.c2ln", b.encode(serde_json::to_vec(&h).unwrap()))
        };
        assert_eq!(
            route(&header_only(Algorithm::RS256, Some("k"))),
            Ok(Route::Jwks {
                kid: Some("k".into()),
                alg: Algorithm::RS256
            })
        );
        assert_eq!(
            route(&header_only(Algorithm::ES256, None)),
            Ok(Route::Jwks {
                kid: None,
                alg: Algorithm::ES256
            })
        );
        for alg in [
            Algorithm::RS384,
            Algorithm::PS256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            assert!(route(&header_only(alg, Some("k"))).is_err(), "{alg:?}");
        }
        assert_eq!(
            route(&sign(Algorithm::HS256, SECRET, &c)),
            Ok(Route::Secret)
        );
        for (what, token) in [
            ("HS384", sign(Algorithm::HS384, SECRET, &c)),
            ("HS512", sign(Algorithm::HS512, SECRET, &c)),
            ("none", unsigned(&c)),
            ("garbage", "x.y.z".to_string()),
            ("empty", String::new()),
        ] {
            assert!(route(&token).is_err(), "{what}");
        }
    }

    #[test]
    fn key_set_lifetimes() {
        let s = Duration::from_secs;
        for (cc, want) in [
            (None, DEFAULT_KEYS_LIFETIME),
            (Some("max-age=300"), s(300)),
            (Some("public, max-age=7200, must-revalidate"), s(7200)),
            (Some("max-age=\"600\""), s(600)),
            (Some("Max-Age=600"), s(600)),
            (Some("max-age=0"), MIN_KEYS_LIFETIME),
            (Some("max-age=5"), MIN_KEYS_LIFETIME),
            (Some("max-age=99999999999"), MAX_KEYS_LIFETIME),
            (Some("max-age=-1"), DEFAULT_KEYS_LIFETIME),
            (Some("max-age=abc"), DEFAULT_KEYS_LIFETIME),
            (Some("no-cache"), MIN_KEYS_LIFETIME),
            (Some("max-age=600, no-store"), MIN_KEYS_LIFETIME),
            (Some("public"), DEFAULT_KEYS_LIFETIME),
        ] {
            assert_eq!(cache_lifetime(cc), want, "{cc:?}");
        }
    }

    #[test]
    fn role_maps() {
        let m = RoleMap::parse(
            "ops-team=operator, admins=admin,ci=deployer,ci=executor,team=audit=auditor",
        )
        .unwrap();
        assert_eq!(m.0.len(), 5);
        assert_eq!(m.0[4], ("team=audit".to_string(), Role::Auditor));
        for bad in ["", " , ", "ops=root", "justaname", "=admin"] {
            assert!(RoleMap::parse(bad).is_err(), "{bad:?}");
        }
        let claims = |v: serde_json::Value| json!({ "groups": v }).as_object().unwrap().clone();
        let cases: Vec<(serde_json::Value, Vec<Role>)> = vec![
            (json!(["ops-team"]), vec![Role::Operator]),
            (json!("admins"), vec![Role::Admin]),
            (json!(["ci", "staff"]), vec![Role::Deployer, Role::Executor]),
            (json!(["staff"]), vec![]),
            (json!(["admin"]), vec![]),
            (json!(["OPS-TEAM"]), vec![]),
            (json!(7), vec![]),
        ];
        for (v, want) in cases {
            assert_eq!(
                roles_from_claims(&claims(v.clone()), "groups", Some(&m)),
                want,
                "{v}"
            );
        }
        // Without a map, role names are roles (as before).
        assert_eq!(
            roles_from_claims(&claims(json!(["admin", "staff"])), "groups", None),
            vec![Role::Admin]
        );
    }

    #[test]
    fn jwks_settings_are_checked() {
        let ok = oidc_config();
        assert!(ok.validate().is_ok());
        let set = |f: &dyn Fn(&mut JwtConfig)| {
            let mut c = oidc_config();
            f(&mut c);
            c.validate().err().map(|(setting, _)| setting)
        };
        assert_eq!(set(&|c| c.audience = None), Some("JWT_AUDIENCE"));
        assert_eq!(
            set(&|c| c.audience = Some(String::new())),
            Some("JWT_AUDIENCE")
        );
        assert_eq!(
            set(&|c| c.issuer = Some("https://other.test".into())),
            Some("JWT_ISSUER")
        );
        assert_eq!(
            set(&|c| c.jwks = Some(JwksSource::Issuer("http://idp.example.com".into()))),
            Some("OIDC_ISSUER")
        );
        assert_eq!(
            set(&|c| c.jwks = Some(JwksSource::Url("ftp://idp/keys".into()))),
            Some("JWT_JWKS_URL")
        );
        assert_eq!(
            set(&|c| c.jwks = Some(JwksSource::Url("not a url".into()))),
            Some("JWT_JWKS_URL")
        );
        assert_eq!(
            set(&|c| c.min_refresh = Duration::from_millis(10)),
            Some("JWT_JWKS_MIN_REFRESH")
        );
        assert_eq!(
            set(&|c| {
                c.secret = None;
                c.jwks = None;
            }),
            Some("JWT_SECRET")
        );
        assert_eq!(
            set(&|c| {
                c.secret = None;
                c.issuer = None;
                c.jwks = Some(JwksSource::Url("http://127.0.0.1:9/jwks".into()));
            }),
            None
        );
        // JWKS without a secret is fine; the secret alone needs no audience.
        assert_eq!(set(&|c| c.secret = None), None);
        assert_eq!(
            set(&|c| {
                c.jwks = None;
                c.audience = None;
            }),
            None
        );
        for (url, ok) in [
            ("https://idp.example.com", true),
            (
                "https://idp.example.com/realms/x/protocol/openid-connect/certs",
                true,
            ),
            ("http://localhost:8080/jwks", true),
            ("http://127.0.0.1:1/", true),
            ("http://[::1]:1/", true),
            ("http://idp.example.com/jwks", false),
            ("http://10.0.0.1/jwks", false),
            ("file:///etc/jwks.json", false),
            ("", false),
        ] {
            assert_eq!(key_url_ok(url), ok, "{url}");
        }
    }
}

//! JWT bearer authentication (`Authorization: Bearer <JWT>`), HS256 with a shared secret.
//!
//! Owns: the token settings (`JWT_SECRET`, `JWT_ISSUER`, `JWT_AUDIENCE`, `JWT_ROLE_CLAIM`) and
//! turning a token into an [`Identity`] (`jwt:SUB`, roles from the role claim). Must never:
//! accept a token signed with another algorithm than HS256 (`none`, HS384, RS256 …), an
//! expired or not-yet-valid token, a token for another issuer or audience when those are
//! configured, or a token without a known role; nor log a token.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::{Identity, Role};

/// Shortest accepted `JWT_SECRET` (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Default `JWT_ROLE_CLAIM`: `role` (a string) or, when absent, `roles` (a list).
pub const DEFAULT_ROLE_CLAIM: &str = "role";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;

/// Token settings.
#[derive(Clone)]
pub struct JwtConfig {
    /// The HS256 secret (at least [`MIN_SECRET_BYTES`]).
    pub secret: Vec<u8>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// The claim holding the role(s): a string or a list of strings.
    pub role_claim: String,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("role_claim", &self.role_claim)
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
}

impl JwtConfig {
    /// Check the settings: the secret must be at least 256 bits.
    pub fn validate(&self) -> Result<(), String> {
        if self.secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "must be at least {MIN_SECRET_BYTES} bytes (256 bits); it is {}",
                self.secret.len()
            ));
        }
        if self.role_claim.is_empty() {
            return Err("JWT_ROLE_CLAIM must not be empty".into());
        }
        Ok(())
    }

    /// Verify `token` and map it to an identity.
    pub fn authenticate(&self, token: &str) -> Result<Identity, JwtError> {
        // Only HS256: the header's `alg` must be exactly this (jsonwebtoken refuses `none`,
        // which it does not even parse, and every algorithm not listed here).
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
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
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &DecodingKey::from_secret(&self.secret),
            &validation,
        )
        .map_err(|e| JwtError::Invalid(describe(e.kind())))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(JwtError::NoSubject)?;
        let roles = roles_from_claims(&claims, &self.role_claim);
        if roles.is_empty() {
            return Err(JwtError::NoRole(self.role_claim.clone()));
        }
        Ok(Identity {
            name: format!("jwt:{sub}"),
            roles,
            scope: None,
        })
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not yet valid (nbf)".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidAlgorithm => "algorithm not accepted (HS256 only)".into(),
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        _ => "malformed token".into(),
    }
}

/// The known roles named in `claim` (a string or a list of strings). With the default claim
/// name, `roles` is also read. Unknown role names are ignored.
pub fn roles_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    claim: &str,
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
        .filter_map(Role::parse)
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            secret: SECRET.to_vec(),
            issuer: Some("https://issuer.test".into()),
            audience: Some("magic".into()),
            role_claim: DEFAULT_ROLE_CLAIM.into(),
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
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b.encode(claims.to_string())
        )
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
                roles_from_claims(&m(claims.clone()), claim),
                want,
                "{claims} {claim}"
            );
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        let mut cfg = config();
        assert!(cfg.validate().is_ok());
        cfg.secret = vec![b'x'; 31];
        assert!(cfg.validate().is_err());
        cfg.secret = vec![];
        assert!(cfg.validate().is_err());
    }
}

//! JSON Web Token verification on HTTP routes: where the token is, which keys
//! and algorithms may sign it, which claims must hold, and which claims are
//! passed on to the upstream as request headers.
//!
//! Validation here checks the shape of the config; the keys themselves are
//! read and checked when the proxy compiles the route.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{is_protected_header, Validator};
use crate::values::{is_token, Duration};

/// Longest `clock_skew`: a wider leeway would make `exp` meaningless.
pub const MAX_JWT_CLOCK_SKEW: StdDuration = StdDuration::from_secs(600);

/// Verification of a bearer token on every request of a route. A request
/// without a valid token gets `401` with a `WWW-Authenticate: Bearer` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// The token's `iss` claim must equal this. Default: any issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The token's `aud` claim (a string or a list) must contain one of these.
    /// Default: the audience is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Signature algorithms accepted; a token signed otherwise is refused, and
    /// each key only verifies the algorithms of its type.
    #[serde(default = "jwt_defaults::algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// The verification keys, as a JSON Web Key Set: exactly one of
    /// `jwks_file` and `jwks`.
    pub keys: JwtKeys,
    /// Where the token is, tried in order; the first source that has one is used.
    #[serde(default = "jwt_defaults::from")]
    pub from: Vec<JwtSource>,
    /// Leeway for the time claims (`exp`, `nbf`, `iat`), at most `10m`.
    #[serde(default = "jwt_defaults::clock_skew")]
    pub clock_skew: Duration,
    /// Refuse tokens without an `exp` claim.
    #[serde(default = "jwt_defaults::yes")]
    pub require_expiry: bool,
    /// Claims passed on to the upstream: claim name → request header name. The
    /// headers are set on the forwarded request (strings as they are, numbers
    /// and booleans as text, other JSON compact).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Pass the token on to the upstream. `false` removes the headers of
    /// `header` sources from the forwarded request; cookies are left as they are.
    #[serde(default = "jwt_defaults::yes")]
    pub forward_token: bool,
}

/// A JWS signature algorithm (RFC 7518).
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// The name used in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }
}

/// Where the verification keys come from: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtKeys {
    /// Path of a JWKS file (`{"keys": [...]}`), read when the config is loaded
    /// and on every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// The JWKS itself, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
}

/// One place a token may be: `{ header: NAME, prefix: TEXT }` or `{ cookie: NAME }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSource {
    /// A request header (case-insensitive name) holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// With `header`: the text before the token (e.g. `"Bearer "`), matched
    /// case-insensitively and stripped. A value without it holds no token.
    /// Default: the whole value is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A cookie (case-sensitive name) holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

mod jwt_defaults {
    use super::*;

    pub fn algorithms() -> Vec<JwtAlgorithm> {
        vec![JwtAlgorithm::HS256, JwtAlgorithm::RS256, JwtAlgorithm::ES256]
    }
    pub fn from() -> Vec<JwtSource> {
        vec![JwtSource { header: Some("authorization".into()), prefix: Some("Bearer ".into()), cookie: None }]
    }
    pub fn clock_skew() -> Duration {
        Duration::from_std(StdDuration::from_secs(60))
    }
    pub fn yes() -> bool {
        true
    }
}

/// Checks a route's `jwt` section; `path` is the section's own path
/// (`listeners[0].routes[1].jwt`).
pub(crate) fn validate_jwt(v: &mut Validator, path: &str, jwt: &JwtAuth) {
    if let Some(issuer) = &jwt.issuer {
        if issuer.is_empty() {
            v.error(format!("{path}.issuer"), "must not be empty (leave it out to accept any issuer)");
        }
    }
    for (i, audience) in jwt.audiences.iter().enumerate() {
        if audience.is_empty() {
            v.error(format!("{path}.audiences[{i}]"), "must not be empty");
        }
    }
    if jwt.algorithms.is_empty() {
        v.error(format!("{path}.algorithms"), "must list at least one algorithm");
    }

    let keys = &jwt.keys;
    match (&keys.jwks_file, &keys.jwks) {
        (Some(_), Some(_)) | (None, None) => v.error(format!("{path}.keys"), "give exactly one of jwks_file, jwks"),
        (Some(file), None) if file.is_empty() => v.error(format!("{path}.keys.jwks_file"), "must not be empty"),
        (None, Some(text)) => {
            if let Err(message) = check_jwks_text(text) {
                v.error(format!("{path}.keys.jwks"), message);
            }
        }
        _ => {}
    }

    if jwt.from.is_empty() {
        v.error(format!("{path}.from"), "must list at least one token source");
    }
    for (i, source) in jwt.from.iter().enumerate() {
        let source_path = format!("{path}.from[{i}]");
        match (&source.header, &source.cookie) {
            (Some(_), Some(_)) | (None, None) => v.error(source_path.clone(), "give exactly one of header, cookie"),
            (Some(header), None) => {
                if !is_token(header) {
                    v.error(format!("{source_path}.header"), format!("invalid header name {header:?}"));
                }
            }
            (None, Some(cookie)) => {
                // RFC 6265: a cookie name is a token.
                if !is_token(cookie) {
                    v.error(format!("{source_path}.cookie"), format!("invalid cookie name {cookie:?}"));
                }
            }
        }
        if let Some(prefix) = &source.prefix {
            if source.header.is_none() {
                v.error(format!("{source_path}.prefix"), "only used with header");
            } else if !prefix.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                v.error(format!("{source_path}.prefix"), format!("invalid prefix {prefix:?}: use visible ASCII"));
            }
        }
    }

    if let Some(skew) = v.check(format!("{path}.clock_skew"), jwt.clock_skew.parse()) {
        if skew > MAX_JWT_CLOCK_SKEW {
            v.error(format!("{path}.clock_skew"), "must be at most 10m");
        }
    }

    let mut headers: HashMap<String, &str> = HashMap::new();
    for (claim, header) in &jwt.forward_claims {
        let claim_path = format!("{path}.forward_claims.{claim}");
        if claim.is_empty() {
            v.error(claim_path.clone(), "claim name must not be empty");
        }
        if !is_token(header) {
            v.error(claim_path, format!("invalid header name {header:?}"));
        } else if is_protected_header(header) {
            v.error(claim_path, format!("{header:?} is managed by the proxy and cannot be set from a claim"));
        } else if let Some(first) = headers.insert(header.to_ascii_lowercase(), claim) {
            v.error(claim_path, format!("header {header:?} is also set from claim {first:?}"));
        }
    }
}

/// The JWKS text must be a JSON object with a `keys` array; the keys
/// themselves are checked when the proxy compiles the route.
fn check_jwks_text(text: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| format!("invalid JSON: {error}"))?;
    match value.get("keys") {
        Some(serde_json::Value::Array(_)) => Ok(()),
        _ => Err("must be a JSON Web Key Set: an object with a \"keys\" array".into()),
    }
}

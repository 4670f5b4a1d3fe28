//! JWT verification of HTTP requests (RFC 7519 tokens signed as compact JWS,
//! RFC 7515; keys from a JWKS, RFC 7517; refusals per RFC 6750).
//!
//! A [`JwtVerifier`] is compiled once per config generation from a route's
//! [`config_model::JwtAuth`] and is immutable afterwards, so workers share it
//! behind an `Arc`. [`JwtVerifier::verify`] finds the token among the request
//! headers, picks the key (by `kid`, or the one key that fits the algorithm),
//! checks the signature with `jsonwebtoken` (aws-lc-rs underneath), then the
//! time, issuer and audience claims against a given `now`.
//!
//! Algorithm confusion is ruled out by construction: every key carries the
//! algorithms of its own type (an RSA key verifies only `RS*`/`PS*`), further
//! narrowed by the JWK's `alg` and the route's `algorithms`, and a token's
//! `alg` must be among its key's. An `HS256` token can therefore never be
//! checked with an RSA public key as the HMAC secret.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use config_model::{JwtAlgorithm, JwtAuth};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde_json::{Map, Value};

/// Longest token accepted; longer ones are [`JwtError::Malformed`].
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Smallest RSA modulus accepted in a JWKS (RFC 7518 §3.3 asks for 2048 bits).
const MIN_RSA_BITS: usize = 2048;

const RSA_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// The compiled `jwt` section of one route.
#[derive(Debug)]
pub struct JwtVerifier {
    keys: Vec<VerifyingKey>,
    sources: Vec<Source>,
    /// The route's `algorithms`.
    allowed: Vec<Algorithm>,
    issuer: Option<String>,
    audiences: Vec<String>,
    skew_seconds: f64,
    require_expiry: bool,
    /// Claim name → header set on the forwarded request.
    forward: Vec<(String, HeaderName)>,
    /// The headers of `forward`, deduplicated.
    claim_headers: Vec<HeaderName>,
    /// Header sources to strip when `forward_token` is off.
    strip: Vec<HeaderName>,
}

/// One usable key of the JWKS.
#[derive(Debug)]
struct VerifyingKey {
    kid: Option<String>,
    /// Algorithms this key verifies: those of its type, narrowed by the JWK's
    /// `alg` and the route's `algorithms`. Never empty.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

#[derive(Debug)]
enum Source {
    /// A header; `prefix` (if any) is matched case-insensitively and stripped.
    Header { name: HeaderName, prefix: Option<Vec<u8>> },
    /// A cookie of the `Cookie` header (case-sensitive name).
    Cookie { name: Vec<u8> },
}

/// What a verified token gives the forwarded request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Claim headers to set (replacing any the client sent): string claims as
    /// they are, numbers and booleans as text, other JSON compact. Claims that
    /// are absent or `null`, or whose text is not a valid header value, are
    /// left out.
    pub forward: Vec<(HeaderName, HeaderValue)>,
}

/// Why a request's token was refused. Messages never contain token contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("no key for the token's kid")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token without exp")]
    MissingExpiry,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
}

macro_rules! invalid_token {
    ($description:literal) => {
        HeaderValue::from_static(concat!(
            "Bearer realm=\"edgeplane\", error=\"invalid_token\", error_description=\"",
            $description,
            "\""
        ))
    };
}

impl JwtError {
    /// `WWW-Authenticate` per RFC 6750: `Bearer realm="edgeplane"` for
    /// [`JwtError::Missing`]; `Bearer realm="edgeplane", error="invalid_token",
    /// error_description="..."` otherwise (a fixed text per variant).
    pub fn www_authenticate(&self) -> HeaderValue {
        match self {
            JwtError::Missing => HeaderValue::from_static("Bearer realm=\"edgeplane\""),
            JwtError::Malformed(_) => invalid_token!("The token is malformed"),
            JwtError::UnknownKey => invalid_token!("The token's signing key is unknown"),
            JwtError::BadSignature => invalid_token!("The token's signature is invalid"),
            JwtError::Expired => invalid_token!("The token has expired"),
            JwtError::NotYetValid => invalid_token!("The token is not valid yet"),
            JwtError::MissingExpiry => invalid_token!("The token has no expiry"),
            JwtError::WrongIssuer => invalid_token!("The token's issuer is not accepted"),
            JwtError::WrongAudience => invalid_token!("The token's audience is not accepted"),
            JwtError::AlgorithmNotAllowed => invalid_token!("The token's signing algorithm is not accepted"),
        }
    }

    /// Short metric/log reason, e.g. `jwt_missing`, `jwt_expired`.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Missing => "jwt_missing",
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::UnknownKey => "jwt_unknown_key",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::MissingExpiry => "jwt_missing_expiry",
            JwtError::WrongIssuer => "jwt_wrong_issuer",
            JwtError::WrongAudience => "jwt_wrong_audience",
            JwtError::AlgorithmNotAllowed => "jwt_algorithm_not_allowed",
        }
    }
}

impl JwtVerifier {
    /// Reads the JWKS (file or inline) and builds the decoding keys. Errors
    /// name what is wrong, e.g. `jwks_file /x: key 2 (kid "a"): unsupported
    /// kty "foo"` (keys are counted from 0).
    pub fn compile(config: &JwtAuth) -> Result<JwtVerifier, String> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err("jsonwebtoken has no crypto provider (enable exactly one of its aws_lc_rs and rust_crypto \
                        features)"
                .into());
        }
        if config.algorithms.is_empty() {
            return Err("algorithms: none given".into());
        }
        let mut allowed: Vec<Algorithm> = Vec::new();
        for algorithm in config.algorithms.iter().map(|a| algorithm(*a)) {
            if !allowed.contains(&algorithm) {
                allowed.push(algorithm);
            }
        }

        let (label, text) = match (&config.keys.jwks_file, &config.keys.jwks) {
            (Some(path), None) => {
                let label = format!("jwks_file {path}");
                let text = std::fs::read_to_string(path).map_err(|error| format!("{label}: cannot read: {error}"))?;
                (label, text)
            }
            (None, Some(text)) => ("jwks".to_string(), text.clone()),
            _ => return Err("keys: give exactly one of jwks_file, jwks".into()),
        };
        let keys = parse_jwks(&label, &text, &allowed)?;

        let mut sources = Vec::with_capacity(config.from.len());
        for (i, source) in config.from.iter().enumerate() {
            sources.push(match (&source.header, &source.cookie) {
                (Some(header), None) => Source::Header {
                    name: header_name(header).map_err(|e| format!("from[{i}].header: {e}"))?,
                    prefix: source.prefix.as_ref().map(|prefix| prefix.as_bytes().to_vec()),
                },
                (None, Some(cookie)) if !cookie.is_empty() => Source::Cookie { name: cookie.as_bytes().to_vec() },
                _ => return Err(format!("from[{i}]: give exactly one of header, cookie")),
            });
        }
        if sources.is_empty() {
            return Err("from: no token source".into());
        }

        let skew = config.clock_skew.parse().map_err(|e| format!("clock_skew: {e}"))?;

        let mut forward = Vec::with_capacity(config.forward_claims.len());
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for (claim, header) in &config.forward_claims {
            let name = header_name(header).map_err(|e| format!("forward_claims.{claim}: {e}"))?;
            if !claim_headers.contains(&name) {
                claim_headers.push(name.clone());
            }
            forward.push((claim.clone(), name));
        }

        let mut strip: Vec<HeaderName> = Vec::new();
        if !config.forward_token {
            for source in &sources {
                if let Source::Header { name, .. } = source {
                    if !strip.contains(name) {
                        strip.push(name.clone());
                    }
                }
            }
        }

        Ok(JwtVerifier {
            keys,
            sources,
            allowed,
            issuer: config.issuer.clone(),
            audiences: config.audiences.clone(),
            skew_seconds: skew.as_secs_f64(),
            require_expiry: config.require_expiry,
            forward,
            claim_headers,
            strip,
        })
    }

    /// Finds the token among the request's headers (name, value pairs as raw
    /// bytes; names compared case-insensitively; `Cookie` headers parsed for
    /// cookie sources) and verifies it at `now`.
    pub fn verify<'h>(
        &self,
        headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
        now: SystemTime,
    ) -> Result<Verified, JwtError> {
        let token = self.find_token(headers).ok_or(JwtError::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("token too long"));
        }
        if !token.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(JwtError::Malformed("not base64url"));
        }
        if token.iter().filter(|b| **b == b'.').count() != 2 {
            return Err(JwtError::Malformed("not three parts"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed("bad header"))?;
        if !self.allowed.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let key = self.select_key(header.kid.as_deref(), header.alg)?;

        // Signature (and the header's `crit`/`b64` rules) by jsonwebtoken;
        // its claim checks are off, the claims are checked below against `now`.
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|error| map_error(error.kind()))?
            .claims;

        self.check_claims(&claims, now)?;
        Ok(Verified { forward: self.forward_headers(&claims) })
    }

    /// Header names to strip from the forwarded request when `forward_token`
    /// is false (header sources only; cookies are left as they are).
    pub fn strip_headers(&self) -> &[HeaderName] {
        &self.strip
    }

    /// Every header `forward_claims` may set. Remove these from the incoming
    /// request before setting [`Verified::forward`], so that a client cannot
    /// supply a claim header for a claim its token lacks.
    pub fn claim_headers(&self) -> &[HeaderName] {
        &self.claim_headers
    }

    fn find_token<'h>(&self, headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone) -> Option<&'h [u8]> {
        self.sources.iter().find_map(|source| match source {
            Source::Header { name, prefix } => headers.clone().find_map(|(header, value)| {
                if !header.eq_ignore_ascii_case(name.as_str().as_bytes()) {
                    return None;
                }
                let value = trim_ows(value);
                let token = match prefix {
                    Some(prefix) => {
                        let head = value.get(..prefix.len())?;
                        if !head.eq_ignore_ascii_case(prefix) {
                            return None;
                        }
                        trim_ows(&value[prefix.len()..])
                    }
                    None => value,
                };
                (!token.is_empty()).then_some(token)
            }),
            Source::Cookie { name } => headers.clone().find_map(|(header, value)| {
                if !header.eq_ignore_ascii_case(b"cookie") {
                    return None;
                }
                value.split(|b| *b == b';').find_map(|pair| {
                    let pair = trim_ows(pair);
                    let eq = pair.iter().position(|b| *b == b'=')?;
                    if trim_ows(&pair[..eq]) != name.as_slice() {
                        return None;
                    }
                    let mut cookie = trim_ows(&pair[eq + 1..]);
                    if cookie.len() >= 2 && cookie.starts_with(b"\"") && cookie.ends_with(b"\"") {
                        cookie = &cookie[1..cookie.len() - 1];
                    }
                    (!cookie.is_empty()).then_some(cookie)
                })
            }),
        })
    }

    fn select_key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<&VerifyingKey, JwtError> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|key| key.kid.as_deref() == Some(kid)).peekable();
                if named.peek().is_none() {
                    return Err(JwtError::UnknownKey);
                }
                // The key exists; a token naming it with an algorithm of
                // another type is an algorithm confusion attempt.
                named.find(|key| key.algorithms.contains(&algorithm)).ok_or(JwtError::AlgorithmNotAllowed)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|key| key.algorithms.contains(&algorithm));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(JwtError::AlgorithmNotAllowed),
                    (Some(_), Some(_)) => Err(JwtError::UnknownKey),
                }
            }
        }
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: SystemTime) -> Result<(), JwtError> {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(since) => since.as_secs_f64(),
            Err(error) => -error.duration().as_secs_f64(),
        };
        let time = |name: &'static str| -> Result<Option<f64>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value.as_f64().map(Some).ok_or(JwtError::Malformed(name)),
            }
        };
        match time("exp")? {
            Some(exp) if now >= exp + self.skew_seconds => return Err(JwtError::Expired),
            None if self.require_expiry => return Err(JwtError::MissingExpiry),
            _ => {}
        }
        if let Some(nbf) = time("nbf")? {
            if now < nbf - self.skew_seconds {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(iat) = time("iat")? {
            if iat > now + self.skew_seconds {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(JwtError::WrongIssuer);
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |aud: &str| self.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(accepted),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }

    fn forward_headers(&self, claims: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        self.forward
            .iter()
            .filter_map(|(claim, header)| {
                let value = match claims.get(claim)? {
                    Value::Null => return None,
                    Value::String(text) => HeaderValue::from_str(text).ok()?,
                    Value::Bool(flag) => HeaderValue::from_static(if *flag { "true" } else { "false" }),
                    Value::Number(number) => HeaderValue::from_str(&number.to_string()).ok()?,
                    other => HeaderValue::from_str(&other.to_string()).ok()?,
                };
                Some((header.clone(), value))
            })
            .collect()
    }
}

fn algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            JwtError::AlgorithmNotAllowed
        }
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            JwtError::Malformed("bad encoding")
        }
        ErrorKind::InvalidClaimFormat(_) => JwtError::Malformed("bad claim"),
        // Key problems the JWKS checks did not catch (an EC point off the
        // curve, say): the token cannot be verified with this key.
        _ => JwtError::BadSignature,
    }
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// Bytes encoded by unpadded base64url text of this length.
fn base64url_len(text: &str) -> usize {
    text.len() * 3 / 4
}

/// Parses a JWKS and keeps the keys usable with `allowed`.
fn parse_jwks(label: &str, text: &str, allowed: &[Algorithm]) -> Result<Vec<VerifyingKey>, String> {
    let set: Value = serde_json::from_str(text).map_err(|error| format!("{label}: invalid JSON: {error}"))?;
    let Some(Value::Array(entries)) = set.get("keys") else {
        return Err(format!("{label}: not a JSON Web Key Set (an object with a \"keys\" array)"));
    };
    let mut keys = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(Value::as_str);
        let what = match kid {
            Some(kid) => format!("{label}: key {i} (kid {kid:?})"),
            None => format!("{label}: key {i}"),
        };
        match parse_jwk(entry, allowed) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(message) => return Err(format!("{what}: {message}")),
        }
    }
    if keys.is_empty() {
        let names: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        return Err(format!("{label}: no signing key usable with the algorithms [{}]", names.join(", ")));
    }
    Ok(keys)
}

fn jwk_string<'a>(jwk: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, String> {
    match jwk.get(field) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn jwk_required<'a>(jwk: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, String> {
    jwk_string(jwk, field)?.filter(|text| !text.is_empty()).ok_or_else(|| format!("missing {field}"))
}

fn not_base64url(what: &'static str) -> impl Fn(jsonwebtoken::errors::Error) -> String {
    move |_| format!("{what} is not valid base64url")
}

/// One JWK: `None` when it is not for signatures or fits none of `allowed`.
fn parse_jwk(entry: &Value, allowed: &[Algorithm]) -> Result<Option<VerifyingKey>, String> {
    let Value::Object(jwk) = entry else {
        return Err("not a JSON object".into());
    };
    let string = |field: &'static str| jwk_string(jwk, field);
    let required = |field: &'static str| jwk_required(jwk, field);
    let kid = string("kid")?.map(str::to_owned);
    if string("use")?.is_some_and(|usage| usage != "sig") {
        return Ok(None);
    }
    let kty = string("kty")?.ok_or("missing kty")?;
    let alg = match string("alg")? {
        Some(name) => Some(Algorithm::from_str(name).map_err(|_| format!("unsupported alg {name:?}"))?),
        None => None,
    };

    let (key, family): (DecodingKey, Vec<Algorithm>) = match kty {
        "RSA" => {
            let key =
                DecodingKey::from_rsa_components(required("n")?, required("e")?).map_err(not_base64url("n or e"))?;
            if let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() {
                let n = &n[n.iter().position(|b| *b != 0).unwrap_or(n.len())..];
                let bits = match n.first() {
                    Some(first) => n.len() * 8 - first.leading_zeros() as usize,
                    None => 0,
                };
                if bits < MIN_RSA_BITS {
                    return Err(format!("RSA modulus of {bits} bits is too short (at least {MIN_RSA_BITS})"));
                }
                if e.iter().all(|b| *b == 0) {
                    return Err("RSA exponent is zero".into());
                }
            }
            (key, RSA_ALGORITHMS.to_vec())
        }
        "EC" => {
            let (algorithm, size) = match required("crv")? {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                other => return Err(format!("unsupported crv {other:?} (use P-256 or P-384)")),
            };
            let (x, y) = (required("x")?, required("y")?);
            if base64url_len(x) != size || base64url_len(y) != size {
                return Err(format!("x and y must be {size} bytes each"));
            }
            (DecodingKey::from_ec_components(x, y).map_err(not_base64url("x or y"))?, vec![algorithm])
        }
        "OKP" => {
            match required("crv")? {
                "Ed25519" => {}
                other => return Err(format!("unsupported crv {other:?} (use Ed25519)")),
            }
            let x = required("x")?;
            if base64url_len(x) != 32 {
                return Err("x must be 32 bytes".into());
            }
            (DecodingKey::from_ed_components(x).map_err(not_base64url("x"))?, vec![Algorithm::EdDSA])
        }
        "oct" => {
            let k = required("k")?;
            let minimal: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({ "kty": "oct", "k": k }))
                .map_err(|_| "k is not valid".to_string())?;
            let key = DecodingKey::from_jwk(&minimal).map_err(not_base64url("k"))?;
            let length = match key.kind() {
                DecodingKeyKind::SecretOrDer(secret) => secret.len(),
                DecodingKeyKind::RsaModulusExponent { .. } => 0,
            };
            // RFC 7518 §3.2: the secret is at least as long as the hash.
            let family: Vec<Algorithm> = [(Algorithm::HS256, 32), (Algorithm::HS384, 48), (Algorithm::HS512, 64)]
                .into_iter()
                .filter(|(_, least)| length >= *least)
                .map(|(algorithm, _)| algorithm)
                .collect();
            if family.is_empty() {
                return Err(format!("secret of {length} bytes is too short (HS256 needs at least 32)"));
            }
            if let Some(alg) = alg {
                if !family.contains(&alg) && alg.family() == key.family() {
                    return Err(format!("secret of {length} bytes is too short for {alg:?}"));
                }
            }
            (key, family)
        }
        other => return Err(format!("unsupported kty {other:?}")),
    };

    let mut algorithms = match alg {
        Some(alg) if family.contains(&alg) => vec![alg],
        Some(alg) => return Err(format!("alg {alg:?} does not fit kty {kty:?}")),
        None => family,
    };
    algorithms.retain(|algorithm| allowed.contains(algorithm));
    if algorithms.is_empty() {
        return Ok(None);
    }
    Ok(Some(VerifyingKey { kid, algorithms, key }))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::time::Duration;

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self as sig, KeyPair as _};
    use serde_json::json;

    use super::*;

    const NOW_SECS: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    fn b64url_decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in text.as_bytes().chunks(4) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, c)| n | (u32::from(value(*c)) << (18 - 6 * i)));
            for i in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    struct Keys {
        rsa: sig::RsaKeyPair,
        rsa2: sig::RsaKeyPair,
        ec: sig::EcdsaKeyPair,
        ed: sig::Ed25519KeyPair,
        secret: Vec<u8>,
    }

    /// Generated once: RSA key generation is slow in debug builds.
    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| Keys {
            rsa: sig::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            rsa2: sig::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            ec: sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ed: sig::Ed25519KeyPair::generate().unwrap(),
            secret: (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect(),
        })
    }

    fn rsa_jwk(key: &sig::RsaKeyPair, kid: Option<&str>) -> Value {
        let public = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key.public_key());
        let mut jwk = json!({ "kty": "RSA", "n": b64url(&public.n), "e": b64url(&public.e) });
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    fn ec_jwk(key: &sig::EcdsaKeyPair) -> Value {
        let point = key.public_key().as_ref();
        assert_eq!(point.len(), 65);
        json!({ "kty": "EC", "crv": "P-256", "kid": "ec", "x": b64url(&point[1..33]), "y": b64url(&point[33..]) })
    }

    /// One key of each type, each with a `kid`.
    fn jwks() -> String {
        let k = keys();
        json!({ "keys": [
            rsa_jwk(&k.rsa, Some("rsa")),
            ec_jwk(&k.ec),
            { "kty": "oct", "kid": "hmac", "k": b64url(&k.secret) },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url(k.ed.public_key().as_ref()) },
        ] })
        .to_string()
    }

    fn config(extra: Value) -> JwtAuth {
        let mut config = json!({
            "keys": { "jwks": jwks() },
            "algorithms": ["HS256", "RS256", "ES256", "PS256", "EdDSA"],
        });
        for (name, value) in extra.as_object().unwrap() {
            config[name] = value.clone();
        }
        serde_json::from_value(config).unwrap()
    }

    fn verifier(extra: Value) -> JwtVerifier {
        JwtVerifier::compile(&config(extra)).unwrap()
    }

    fn sign_with(alg: &str, message: &[u8]) -> Vec<u8> {
        let k = keys();
        let rng = SystemRandom::new();
        let rsa = |key: &sig::RsaKeyPair, padding: &'static dyn sig::RsaEncoding| {
            let mut out = vec![0; key.public_modulus_len()];
            key.sign(padding, &rng, message, &mut out).unwrap();
            out
        };
        match alg {
            "RS256" => rsa(&k.rsa, &sig::RSA_PKCS1_SHA256),
            "RS384" => rsa(&k.rsa, &sig::RSA_PKCS1_SHA384),
            "PS256" => rsa(&k.rsa, &sig::RSA_PSS_SHA256),
            "ES256" => k.ec.sign(&rng, message).unwrap().as_ref().to_vec(),
            "EdDSA" => k.ed.sign(message).as_ref().to_vec(),
            "HS256" => hmac(&k.secret, message),
            other => panic!("no test signer for {other}"),
        }
    }

    fn hmac(secret: &[u8], message: &[u8]) -> Vec<u8> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
    }

    fn token_parts(header: &Value, claims: &Value) -> String {
        format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
    }

    /// A token signed with the test key of `alg`; `kid` as given.
    fn token(alg: &str, kid: Option<&str>, claims: Value) -> String {
        let mut header = json!({ "alg": alg, "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let message = token_parts(&header, &claims);
        let signature = sign_with(alg, message.as_bytes());
        format!("{message}.{}", b64url(&signature))
    }

    fn fresh() -> Value {
        json!({ "sub": "alice", "exp": NOW_SECS + 300, "iat": NOW_SECS - 10 })
    }

    fn bearer(token: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b"host".to_vec(), b"example.com".to_vec()),
            (b"Authorization".to_vec(), format!("Bearer {token}").into_bytes()),
        ]
    }

    fn check(verifier: &JwtVerifier, headers: &[(Vec<u8>, Vec<u8>)]) -> Result<Verified, JwtError> {
        verifier.verify(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())), now())
    }

    fn check_token(verifier: &JwtVerifier, token: &str) -> Result<Verified, JwtError> {
        check(verifier, &bearer(token))
    }

    #[test]
    fn valid_tokens_of_every_key_type_pass() {
        let v = verifier(json!({}));
        for (alg, kid) in [("RS256", "rsa"), ("PS256", "rsa"), ("ES256", "ec"), ("HS256", "hmac"), ("EdDSA", "ed")] {
            assert_eq!(check_token(&v, &token(alg, Some(kid), fresh())), Ok(Verified::default()), "{alg}");
            // Without kid: the one key of the algorithm's type is used.
            assert_eq!(check_token(&v, &token(alg, None, fresh())), Ok(Verified::default()), "{alg} without kid");
        }
    }

    #[test]
    fn time_claims_are_checked_with_the_skew() {
        let v = verifier(json!({ "clock_skew": "60s" }));
        let at = |claims: Value| check_token(&v, &token("RS256", Some("rsa"), claims));
        assert_eq!(at(json!({ "exp": NOW_SECS - 120 })), Err(JwtError::Expired));
        assert_eq!(at(json!({ "exp": NOW_SECS - 60 })), Err(JwtError::Expired));
        assert!(at(json!({ "exp": NOW_SECS - 30 })).is_ok(), "expired within the skew");
        assert!(at(json!({ "exp": NOW_SECS as f64 + 0.5 })).is_ok(), "fractional exp");
        assert_eq!(at(json!({ "exp": NOW_SECS + 300, "nbf": NOW_SECS + 120 })), Err(JwtError::NotYetValid));
        assert!(at(json!({ "exp": NOW_SECS + 300, "nbf": NOW_SECS + 30 })).is_ok(), "nbf within the skew");
        assert_eq!(at(json!({ "exp": NOW_SECS + 300, "iat": NOW_SECS + 120 })), Err(JwtError::NotYetValid));
        assert!(at(json!({ "exp": NOW_SECS + 300, "iat": NOW_SECS + 30 })).is_ok(), "iat within the skew");
        assert_eq!(at(json!({ "exp": "tomorrow" })), Err(JwtError::Malformed("exp")));
        assert_eq!(at(json!({ "exp": NOW_SECS + 300, "nbf": null })), Err(JwtError::Malformed("nbf")));

        // exp is required unless require_expiry is off.
        assert_eq!(at(json!({ "sub": "alice" })), Err(JwtError::MissingExpiry));
        let lax = verifier(json!({ "require_expiry": false, "clock_skew": "0s" }));
        assert!(check_token(&lax, &token("RS256", Some("rsa"), json!({ "sub": "alice" }))).is_ok());
        let at = |claims: Value| check_token(&lax, &token("RS256", Some("rsa"), claims));
        assert_eq!(at(json!({ "exp": NOW_SECS - 1 })), Err(JwtError::Expired));
        assert_eq!(at(json!({ "exp": NOW_SECS })), Err(JwtError::Expired), "exp is exclusive");
    }

    #[test]
    fn issuer_and_audience_are_checked() {
        let v = verifier(json!({ "issuer": "https://issuer.example", "audiences": ["api", "web"] }));
        let at = |claims: Value| check_token(&v, &token("ES256", Some("ec"), claims));
        let exp = NOW_SECS + 300;
        assert!(at(json!({ "exp": exp, "iss": "https://issuer.example", "aud": "api" })).is_ok());
        assert!(at(json!({ "exp": exp, "iss": "https://issuer.example", "aud": ["other", "web"] })).is_ok());
        assert_eq!(
            at(json!({ "exp": exp, "iss": "https://issuer.example", "aud": "other" })),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            at(json!({ "exp": exp, "iss": "https://issuer.example", "aud": ["x", 1] })),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(at(json!({ "exp": exp, "iss": "https://issuer.example" })), Err(JwtError::WrongAudience));
        assert_eq!(at(json!({ "exp": exp, "iss": "https://evil.example", "aud": "api" })), Err(JwtError::WrongIssuer));
        assert_eq!(at(json!({ "exp": exp, "aud": "api" })), Err(JwtError::WrongIssuer));
        assert_eq!(
            at(json!({ "exp": exp, "iss": ["https://issuer.example"], "aud": "api" })),
            Err(JwtError::WrongIssuer)
        );
        // Without the settings anything goes.
        let open = verifier(json!({}));
        assert!(check_token(&open, &token("ES256", Some("ec"), json!({ "exp": exp, "iss": 5, "aud": "x" }))).is_ok());
    }

    #[test]
    fn tampered_tokens_fail_the_signature() {
        let v = verifier(json!({}));
        for (alg, kid) in [("RS256", "rsa"), ("ES256", "ec"), ("HS256", "hmac"), ("EdDSA", "ed")] {
            let good = token(alg, Some(kid), fresh());
            let (message, signature) = good.rsplit_once('.').unwrap();
            let mut raw = b64url_decode(signature);
            raw[5] ^= 0x01;
            let flipped = format!("{message}.{}", b64url(&raw));
            assert_eq!(check_token(&v, &flipped), Err(JwtError::BadSignature), "{alg}");

            // Claims changed after signing.
            let (header, _) = message.split_once('.').unwrap();
            let forged = json!({ "sub": "admin", "exp": NOW_SECS + 300 });
            let forged = format!("{header}.{}.{signature}", b64url(forged.to_string().as_bytes()));
            assert_eq!(check_token(&v, &forged), Err(JwtError::BadSignature), "{alg}");

            // Signature cut off or empty.
            assert!(check_token(&v, &format!("{message}.")).is_err(), "{alg}");
            assert!(check_token(&v, &format!("{message}.{}", &signature[..10])).is_err(), "{alg}");
        }
        // Signed by another RSA key that claims the kid.
        let other = {
            let header = json!({ "alg": "RS256", "kid": "rsa" });
            let message = token_parts(&header, &fresh());
            let mut out = vec![0; keys().rsa2.public_modulus_len()];
            keys().rsa2.sign(&sig::RSA_PKCS1_SHA256, &SystemRandom::new(), message.as_bytes(), &mut out).unwrap();
            format!("{message}.{}", b64url(&out))
        };
        assert_eq!(check_token(&v, &other), Err(JwtError::BadSignature));
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let k = keys();
        let rsa_only = json!({ "keys": [rsa_jwk(&k.rsa, Some("rsa"))] }).to_string();
        let v = verifier(json!({ "keys": { "jwks": rsa_only }, "algorithms": ["HS256", "RS256"] }));
        let public = k.rsa.public_key();
        let components = sig::RsaPublicKeyComponents::<Vec<u8>>::from(public);
        // HMAC secrets an attacker could derive from the public key.
        let secrets = [public.as_ref().to_vec(), components.n.clone(), rsa_jwk(&k.rsa, None).to_string().into_bytes()];
        for secret in &secrets {
            for kid in [Some("rsa"), None] {
                let mut header = json!({ "alg": "HS256" });
                if let Some(kid) = kid {
                    header["kid"] = json!(kid);
                }
                let message = token_parts(&header, &fresh());
                let forged = format!("{message}.{}", b64url(&hmac(secret, message.as_bytes())));
                assert_eq!(check_token(&v, &forged), Err(JwtError::AlgorithmNotAllowed), "kid {kid:?}");
            }
        }
        // The other way round: an RS256 token naming the HMAC key.
        let v = verifier(json!({}));
        assert_eq!(check_token(&v, &token("RS256", Some("hmac"), fresh())), Err(JwtError::AlgorithmNotAllowed));
        assert_eq!(check_token(&v, &token("ES256", Some("rsa"), fresh())), Err(JwtError::AlgorithmNotAllowed));

        // `alg: none` and algorithms outside the route's list.
        let none = format!("{}.", token_parts(&json!({ "alg": "none" }), &fresh()));
        assert!(matches!(check_token(&v, &none), Err(JwtError::Malformed(_))));
        let rs_only = verifier(json!({ "algorithms": ["RS256"] }));
        assert_eq!(check_token(&rs_only, &token("RS384", Some("rsa"), fresh())), Err(JwtError::AlgorithmNotAllowed));
        assert_eq!(check_token(&rs_only, &token("HS256", Some("hmac"), fresh())), Err(JwtError::AlgorithmNotAllowed));
        assert!(check_token(&rs_only, &token("RS256", Some("rsa"), fresh())).is_ok());

        // A JWK `alg` narrows its key.
        let mut pinned = rsa_jwk(&k.rsa, Some("rsa"));
        pinned["alg"] = json!("PS256");
        let v = verifier(json!({ "keys": { "jwks": json!({ "keys": [pinned] }).to_string() } }));
        assert_eq!(check_token(&v, &token("RS256", Some("rsa"), fresh())), Err(JwtError::AlgorithmNotAllowed));
        assert!(check_token(&v, &token("PS256", Some("rsa"), fresh())).is_ok());
    }

    #[test]
    fn keys_are_chosen_by_kid() {
        let v = verifier(json!({}));
        assert_eq!(check_token(&v, &token("RS256", Some("nope"), fresh())), Err(JwtError::UnknownKey));
        // Two RSA keys without kid: a token without kid is ambiguous.
        let k = keys();
        let two = json!({ "keys": [rsa_jwk(&k.rsa, None), rsa_jwk(&k.rsa2, None)] }).to_string();
        let v = verifier(json!({ "keys": { "jwks": two } }));
        assert_eq!(check_token(&v, &token("RS256", None, fresh())), Err(JwtError::UnknownKey));
        // With kids the right one is used.
        let two = json!({ "keys": [rsa_jwk(&k.rsa2, Some("old")), rsa_jwk(&k.rsa, Some("new"))] }).to_string();
        let v = verifier(json!({ "keys": { "jwks": two } }));
        assert!(check_token(&v, &token("RS256", Some("new"), fresh())).is_ok());
        assert_eq!(check_token(&v, &token("RS256", Some("old"), fresh())), Err(JwtError::BadSignature));
    }

    #[test]
    fn tokens_are_found_in_their_sources() {
        let good = token("HS256", Some("hmac"), fresh());
        let v = verifier(json!({}));
        let headers = |pairs: &[(&str, &str)]| -> Vec<(Vec<u8>, Vec<u8>)> {
            pairs.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
        };
        assert_eq!(check(&v, &headers(&[])), Err(JwtError::Missing));
        assert_eq!(check(&v, &headers(&[("authorization", "Basic YTpi")])), Err(JwtError::Missing));
        assert_eq!(check(&v, &headers(&[("authorization", "Bearer")])), Err(JwtError::Missing));
        assert_eq!(check(&v, &headers(&[("authorization", "Bearer   ")])), Err(JwtError::Missing));
        assert_eq!(check(&v, &headers(&[("x-other", &format!("Bearer {good}"))])), Err(JwtError::Missing));
        for prefix in ["Bearer ", "bearer ", "BEARER ", "bEaReR  "] {
            let value = format!("{prefix}{good}");
            assert!(check(&v, &headers(&[("AUTHORIZATION", &value)])).is_ok(), "{prefix:?}");
        }
        // A later header of the same name can hold it.
        let value = format!("Bearer {good}");
        assert!(check(&v, &headers(&[("authorization", "Basic YTpi"), ("authorization", &value)])).is_ok());
        assert_eq!(JwtError::Missing.www_authenticate(), "Bearer realm=\"edgeplane\"");

        // Cookies, after the header; a header without prefix.
        let v = verifier(json!({ "from": [
            { "header": "authorization", "prefix": "Bearer " },
            { "cookie": "access_token" },
            { "header": "x-token" },
        ] }));
        let cookie = format!("theme=dark; access_token={good}; other=1");
        assert!(check(&v, &headers(&[("cookie", "a=b"), ("Cookie", &cookie)])).is_ok());
        let quoted = format!("access_token=\"{good}\"");
        assert!(check(&v, &headers(&[("cookie", &quoted)])).is_ok());
        assert_eq!(check(&v, &headers(&[("cookie", &format!("Access_Token={good}"))])), Err(JwtError::Missing));
        assert_eq!(check(&v, &headers(&[("cookie", "access_token=")])), Err(JwtError::Missing));
        assert_eq!(check(&v, &headers(&[("cookie", "access_token")])), Err(JwtError::Missing));
        assert!(check(&v, &headers(&[("x-token", &good)])).is_ok());
        // The first source holding a token wins, even a bad one.
        let both = headers(&[("authorization", "Bearer x.y.z"), ("cookie", &cookie)]);
        assert!(matches!(check(&v, &both), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn claims_are_forwarded_as_headers() {
        let v = verifier(json!({ "forward_claims": {
            "sub": "x-jwt-sub", "n": "x-jwt-n", "admin": "x-jwt-admin", "roles": "x-jwt-roles",
            "gone": "x-jwt-gone", "nothing": "x-jwt-nothing", "bad": "x-jwt-bad", "name": "X-Jwt-Name",
        } }));
        let claims = json!({
            "sub": "alice", "n": 42, "admin": true, "roles": ["a", "b"], "nothing": null,
            "bad": "line\nbreak", "name": "Zoë", "exp": NOW_SECS + 300,
        });
        let verified = check_token(&v, &token("HS256", Some("hmac"), claims)).unwrap();
        let found: Vec<(String, Vec<u8>)> =
            verified.forward.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        let want: Vec<(String, Vec<u8>)> = [
            ("x-jwt-admin", "true"),
            ("x-jwt-n", "42"),
            ("x-jwt-name", "Zoë"),
            ("x-jwt-roles", "[\"a\",\"b\"]"),
            ("x-jwt-sub", "alice"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(found, want);
        let mut claim_headers: Vec<&str> = v.claim_headers().iter().map(HeaderName::as_str).collect();
        claim_headers.sort_unstable();
        assert_eq!(claim_headers.len(), 8);
        assert!(claim_headers.contains(&"x-jwt-name"));
    }

    #[test]
    fn token_headers_are_stripped_only_when_asked() {
        let from =
            json!([{ "header": "Authorization", "prefix": "Bearer " }, { "cookie": "t" }, { "header": "x-token" }]);
        let keep = verifier(json!({ "from": from }));
        assert!(keep.strip_headers().is_empty());
        let strip = verifier(json!({ "from": from, "forward_token": false }));
        let names: Vec<&str> = strip.strip_headers().iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["authorization", "x-token"]);
    }

    #[test]
    fn malformed_input_never_panics() {
        let v = verifier(json!({ "require_expiry": false }));
        let good = token("HS256", Some("hmac"), fresh());
        let long = format!("{}.{}.{}", "a".repeat(4000), "b".repeat(4000), "c".repeat(200));
        assert_eq!(check_token(&v, &long), Err(JwtError::Malformed("token too long")));
        let header = b64url(br#"{"alg":"HS256","kid":"hmac"}"#);
        let fixed = [
            "".to_string(),
            ".".into(),
            "..".into(),
            "...".into(),
            "a.b".into(),
            "a.b.c".into(),
            "a.b.c.d".into(),
            "!!!.???.***".into(),
            "é.é.é".into(),
            format!("{header}.."),
            format!("{header}.e30."),
            format!("{header}.W10.AAAA"),
            format!("{header}.bnVsbA.AAAA"),
            format!("{}.e30.AAAA", b64url(b"[]")),
            format!("{}.e30.AAAA", b64url(br#"{"alg":"HS256","crit":["exp"]}"#)),
            format!("{}.e30.AAAA", b64url(br#"{"alg":"HS256","kid":5}"#)),
            format!("{}.e30.AAAA", b64url(br#"{"alg":"RS256","jwk":{"kty":"oct","k":"AAAA"}}"#)),
            good.replace('.', ".."),
            format!("{good}."),
            format!(".{good}"),
        ];
        for text in &fixed {
            assert!(check_token(&v, text).is_err(), "{text:?} passed");
        }
        // Random strings from the token alphabet and beyond, and random
        // mutations of a valid token.
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet: Vec<u8> = (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9').chain(*b"-_.=+/ \"{}").collect();
        for _ in 0..3000 {
            let len = rng.usize(0..200);
            let text: String = (0..len).map(|_| alphabet[rng.usize(..alphabet.len())] as char).collect();
            let _ = check_token(&v, &text);
            let mut bytes = good.clone().into_bytes();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..bytes.len());
                bytes[at] = alphabet[rng.usize(..alphabet.len())];
            }
            let mutated = String::from_utf8(bytes).unwrap();
            if mutated != good {
                assert!(check_token(&v, &mutated).is_err(), "{mutated:?} passed");
            }
            // Raw bytes, not UTF-8, in the header value.
            let raw: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(&raw);
            let _ = check(&v, &[(b"authorization".to_vec(), value), (b"cookie".to_vec(), raw)]);
        }
        // Random claims JSON of the wrong shape, properly signed.
        for claims in [json!([]), json!(null), json!("x"), json!(1), json!({ "exp": [] }), json!({ "iat": {} })] {
            let message = token_parts(&json!({ "alg": "HS256", "kid": "hmac" }), &claims);
            let signed = format!("{message}.{}", b64url(&hmac(&keys().secret, message.as_bytes())));
            assert!(matches!(check_token(&v, &signed), Err(JwtError::Malformed(_))), "{claims}");
        }
    }

    #[test]
    fn errors_have_reasons_and_challenges() {
        let all = [
            JwtError::Missing,
            JwtError::Malformed("x"),
            JwtError::UnknownKey,
            JwtError::BadSignature,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::MissingExpiry,
            JwtError::WrongIssuer,
            JwtError::WrongAudience,
            JwtError::AlgorithmNotAllowed,
        ];
        let mut reasons = std::collections::HashSet::new();
        for error in all {
            assert!(error.reason().starts_with("jwt_"));
            assert!(reasons.insert(error.reason()), "duplicate reason {}", error.reason());
            let challenge = error.www_authenticate();
            let text = challenge.to_str().unwrap();
            assert!(text.starts_with("Bearer realm=\"edgeplane\""), "{text}");
            if error != JwtError::Missing {
                assert!(text.contains(", error=\"invalid_token\", error_description=\""), "{text}");
            }
        }
        assert_eq!(JwtError::Expired.reason(), "jwt_expired");
        assert_eq!(JwtError::BadSignature.reason(), "jwt_bad_signature");
        assert_eq!(JwtError::Missing.reason(), "jwt_missing");
    }

    fn compile_error(jwks: Value) -> String {
        let config = config(json!({ "keys": { "jwks": jwks.to_string() } }));
        JwtVerifier::compile(&config).unwrap_err()
    }

    #[test]
    fn bad_key_sets_are_explained() {
        let k = keys();
        let ec = ec_jwk(&k.ec);
        let cases = [
            (json!({ "keys": [{ "kid": "a", "kty": "foo" }] }), "jwks: key 0 (kid \"a\"): unsupported kty \"foo\""),
            (
                json!({ "keys": [ec.clone(), { "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }] }),
                "jwks: key 1: unsupported crv \"P-521\"",
            ),
            (
                json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA" }] }),
                "x and y must be 32 bytes each",
            ),
            (json!({ "keys": [{ "kty": "RSA", "n": "AQAB", "e": "AQAB" }] }), "RSA modulus of 17 bits is too short"),
            (json!({ "keys": [{ "kty": "RSA", "e": "AQAB" }] }), "missing n"),
            (json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }), "secret of 6 bytes is too short"),
            (json!({ "keys": [{ "kty": "oct", "k": "!!" }] }), "k is not valid base64url"),
            (json!({ "keys": [{ "kty": "OKP", "crv": "X25519", "x": "AA" }] }), "unsupported crv \"X25519\""),
            (json!({ "keys": [{ "kty": "EC", "kid": 7 }] }), "kid must be a string"),
            (json!({ "keys": [{ "n": "AQAB" }] }), "missing kty"),
            (json!({ "keys": ["x"] }), "key 0: not a JSON object"),
            (json!({ "keys": [{ "kty": "RSA", "alg": "XX1" }] }), "unsupported alg \"XX1\""),
            (json!({ "keys": [] }), "jwks: no signing key usable"),
            (json!({ "keys": {} }), "jwks: not a JSON Web Key Set"),
            (json!([1]), "jwks: not a JSON Web Key Set"),
        ];
        for (jwks, want) in cases {
            let error = compile_error(jwks);
            assert!(error.contains(want), "{error:?} lacks {want:?}");
        }
        let mut wrong = ec.clone();
        wrong["alg"] = json!("RS256");
        assert!(compile_error(json!({ "keys": [wrong] })).contains("alg RS256 does not fit kty \"EC\""));

        // Encryption keys are skipped; keys of algorithms not allowed too.
        let mut encryption = rsa_jwk(&k.rsa, Some("enc"));
        encryption["use"] = json!("enc");
        let config = config(json!({
            "keys": { "jwks": json!({ "keys": [encryption, ec] }).to_string() },
            "algorithms": ["RS256"],
        }));
        assert!(JwtVerifier::compile(&config)
            .unwrap_err()
            .contains("no signing key usable with the algorithms [RS256]"));

        let missing: JwtAuth =
            serde_json::from_value(json!({ "keys": { "jwks_file": "/nonexistent/jwks.json" } })).unwrap();
        let error = JwtVerifier::compile(&missing).unwrap_err();
        assert!(error.starts_with("jwks_file /nonexistent/jwks.json: cannot read"), "{error}");
    }

    #[test]
    fn jwks_files_are_read() {
        let path = std::env::temp_dir().join(format!("edgeplane-jwks-{}.json", std::process::id()));
        std::fs::write(&path, jwks()).unwrap();
        let config: JwtAuth =
            serde_json::from_value(json!({ "keys": { "jwks_file": path.to_str().unwrap() } })).unwrap();
        let result = JwtVerifier::compile(&config);
        std::fs::remove_file(&path).unwrap();
        let v = result.unwrap();
        // Default algorithms: HS256, RS256, ES256.
        assert!(check_token(&v, &token("ES256", Some("ec"), fresh())).is_ok());
        assert!(check_token(&v, &token("HS256", None, fresh())).is_ok());
        assert_eq!(check_token(&v, &token("EdDSA", Some("ed"), fresh())), Err(JwtError::AlgorithmNotAllowed));
    }

    #[test]
    fn verifiers_are_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<JwtVerifier>();
    }
}

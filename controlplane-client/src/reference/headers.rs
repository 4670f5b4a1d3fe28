//! The request headers the reference control plane reads: `If-None-Match`
//! (RFC 9110 §13.1.2), `Prefer: wait` (RFC 7240 §4.3) and `Authorization:
//! Bearer` (RFC 6750), and the ETags it makes.

use http::header::{AUTHORIZATION, IF_NONE_MATCH};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The ETag of something whose SHA-256 is `digest`: strong, quoted, the
/// first 16 hex digits (64 bits tell versions of one config apart; the
/// header stays short).
pub(super) fn etag(digest: &[u8; 32]) -> String {
    format!("\"{}\"", hex(&digest[..8]))
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// What a request's `If-None-Match` fields ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IfNoneMatch {
    /// `*`: any current version.
    Any,
    /// The opaque parts of the listed tags (`W/` dropped: `If-None-Match`
    /// compares weakly).
    Tags(Vec<String>),
}

impl IfNoneMatch {
    /// Whether `etag` (as [`etag`] makes them, quoted) is one the client
    /// already has.
    pub(super) fn matches(&self, etag: &str) -> bool {
        match self {
            IfNoneMatch::Any => true,
            IfNoneMatch::Tags(tags) => {
                let opaque = etag.trim_start_matches("W/").trim_matches('"');
                tags.iter().any(|tag| tag == opaque)
            }
        }
    }
}

/// Every `If-None-Match` field of the request, combined. A field that does
/// not parse is left out rather than refused: the worst it costs is a full
/// `200`, which a client always copes with.
pub(super) fn if_none_match(headers: &HeaderMap) -> Option<IfNoneMatch> {
    let mut tags = Vec::new();
    let mut present = false;
    for value in headers.get_all(IF_NONE_MATCH) {
        let Ok(value) = value.to_str() else { continue };
        if value.trim() == "*" {
            return Some(IfNoneMatch::Any);
        }
        if let Some(parsed) = parse_tags(value) {
            present = true;
            tags.extend(parsed);
        }
    }
    present.then_some(IfNoneMatch::Tags(tags))
}

/// `#entity-tag`: `"opaque"` or `W/"opaque"`, comma-separated, with
/// optional whitespace and empty list elements (RFC 9110 §5.6.1).
fn parse_tags(value: &str) -> Option<Vec<String>> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix("W/").unwrap_or(rest);
        let quoted = rest.strip_prefix('"')?;
        let end = quoted.find('"')?;
        tags.push(quoted[..end].to_owned());
        rest = &quoted[end + 1..];
        // Only whitespace or a comma may follow a tag.
        if !(rest.is_empty() || rest.starts_with([' ', '\t', ','])) {
            return None;
        }
    }
}

/// The `wait` preference in seconds, from every `Prefer` field. Invalid
/// preferences are ignored, as RFC 7240 §2 asks.
pub(super) fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for preference in value.split(',') {
            // Parameters after `;` do not apply to `wait`.
            let preference = preference.split(';').next().unwrap_or_default();
            let Some((name, seconds)) = preference.split_once('=') else { continue };
            if !name.trim().eq_ignore_ascii_case("wait") {
                continue;
            }
            let seconds = seconds.trim();
            let seconds = seconds.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(seconds);
            if let Ok(seconds) = seconds.parse::<u64>() {
                return Some(seconds);
            }
        }
    }
    None
}

/// The credentials of `Authorization: Bearer <token>`, if that is what the
/// request carries.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares two digests without an early exit, so the time taken says
/// nothing about how much of a guessed token was right (comparing digests
/// rather than tokens also hides the token's length).
pub(super) fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn etags_are_16_hex_digits_quoted() {
        let tag = etag(&sha256(b"{}"));
        assert_eq!(tag, "\"44136fa355b3678a\"");
    }

    #[test]
    fn if_none_match_lists_weak_tags_and_star() {
        let inm = if_none_match(&headers("if-none-match", &[r#""a", W/"b""#, r#""c,d""#])).unwrap();
        assert_eq!(inm, IfNoneMatch::Tags(vec!["a".into(), "b".into(), "c,d".into()]));
        assert!(inm.matches("\"b\""));
        assert!(inm.matches("\"a\""));
        assert!(!inm.matches("\"x\""));
        assert_eq!(if_none_match(&headers("if-none-match", &[" * "])), Some(IfNoneMatch::Any));
        assert_eq!(if_none_match(&HeaderMap::new()), None);
        // Unquoted or trailing garbage: not understood, so no match.
        assert_eq!(if_none_match(&headers("if-none-match", &["abc"])), None);
        assert_eq!(if_none_match(&headers("if-none-match", &[r#""a"x"#])), None);
        assert_eq!(if_none_match(&headers("if-none-match", &[r#""a"#])), None);
        // An empty list is a (non-matching) list.
        assert_eq!(if_none_match(&headers("if-none-match", &[","])), Some(IfNoneMatch::Tags(vec![])));
    }

    #[test]
    fn prefer_wait_is_found_among_preferences() {
        assert_eq!(prefer_wait(&headers("prefer", &["wait=10"])), Some(10));
        assert_eq!(prefer_wait(&headers("prefer", &["respond-async, WAIT = \"7\""])), Some(7));
        assert_eq!(prefer_wait(&headers("prefer", &["return=minimal", "wait=3;x=y"])), Some(3));
        assert_eq!(prefer_wait(&headers("prefer", &["wait=-1", "wait=soon"])), None);
        assert_eq!(prefer_wait(&headers("prefer", &["handling=lenient"])), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(&headers("authorization", &["Bearer abc"])), Some("abc"));
        assert_eq!(bearer(&headers("authorization", &["bearer   abc "])), Some("abc"));
        assert_eq!(bearer(&headers("authorization", &["Basic abc"])), None);
        assert_eq!(bearer(&headers("authorization", &["Bearer"])), None);
        assert!(same_digest(&sha256(b"x"), &sha256(b"x")));
        assert!(!same_digest(&sha256(b"x"), &sha256(b"y")));
    }
}

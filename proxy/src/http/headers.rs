//! Header handling shared by the HTTP paths: hop-by-hop headers, forwarding
//! headers, and the route's edits.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use config_model::ForwardedFor;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::route::HttpSettings;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection hop and must not be forwarded
/// (RFC 9110 §7.6.1), except where an upgrade keeps `connection`/`upgrade`.
/// (`Trailer` is end to end since RFC 9110.)
const HOP_BY_HOP: [&HeaderName; 5] =
    [&header::CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &header::TRANSFER_ENCODING, &header::TE];

/// Removes hop-by-hop headers, including any named in `Connection`. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive (WebSocket).
/// `te: trailers` survives too: it is how gRPC clients say they accept
/// trailers, and it is end-to-end in meaning.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers")));
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Adds `X-Forwarded-For`, `X-Forwarded-Proto` and (optionally) `Forwarded`
/// for the client, as the listener's settings say.
pub fn add_forwarding(headers: &mut HeaderMap, settings: &HttpSettings, client: SocketAddr, scheme: &'static str) {
    let ip = client.ip();
    match settings.forwarded_for {
        ForwardedFor::Off => {}
        ForwardedFor::Replace => {
            headers.insert(&X_FORWARDED_FOR, ip_value(ip));
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
        }
        ForwardedFor::Append => {
            let mut value = String::new();
            for existing in headers.get_all(&X_FORWARDED_FOR).iter() {
                if let Ok(text) = existing.to_str() {
                    value.push_str(text);
                    value.push_str(", ");
                }
            }
            let _ = write!(value, "{ip}");
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(&X_FORWARDED_FOR, value);
            }
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        }
    }
    if settings.forwarded {
        if let Ok(value) = HeaderValue::from_str(&forwarded_element(ip, scheme)) {
            headers.append(header::FORWARDED, value);
        }
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buffer = String::with_capacity(39);
    let _ = write!(buffer, "{ip}");
    HeaderValue::from_str(&buffer).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// An RFC 7239 element: IPv6 addresses are quoted and bracketed.
pub fn forwarded_element(ip: IpAddr, scheme: &str) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4};proto={scheme}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={scheme}"),
    }
}

/// Whether a request asks for a protocol upgrade (WebSocket and friends).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(forwarded_for: ForwardedFor, forwarded: bool) -> HttpSettings {
        HttpSettings {
            max_header_bytes: 1024,
            max_headers: 10,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            forwarded_for,
            forwarded,
            max_concurrent_streams: 10,
            redirect_https: None,
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(KEEP_ALIVE.clone(), HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["x-kept"], "1");
    }

    #[test]
    fn forwarding_headers() {
        let client: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        add_forwarding(&mut headers, &settings(ForwardedFor::Append, true), client, "http");
        assert_eq!(headers[&X_FORWARDED_FOR], "1.1.1.1, 10.1.2.3");
        assert_eq!(headers[header::FORWARDED], "for=10.1.2.3;proto=http");
        add_forwarding(&mut headers, &settings(ForwardedFor::Replace, false), client, "http");
        assert_eq!(headers[&X_FORWARDED_FOR], "10.1.2.3");
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(forwarded_element(v6.ip(), "http"), "for=\"[2001:db8::1]\";proto=http");
    }
}

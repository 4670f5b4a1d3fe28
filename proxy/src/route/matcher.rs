//! Compiled request matchers. Built once per config; matching allocates nothing.

use http::HeaderName;

/// What a matcher needs to see of a request. Implemented by the hyper path
/// (`http::request::Parts`) and the HTTP/1 fast path (httparse headers), so
/// both route identically.
pub trait RequestView {
    fn method(&self) -> &str;
    /// The path without the query string.
    fn path(&self) -> &str;
    /// `Host` header or `:authority`, as sent (may include a port).
    fn host(&self) -> Option<&str>;
    /// Every value of a header.
    fn header_values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;
    /// The TLS server name of the request's connection.
    fn sni(&self) -> Option<&str> {
        None
    }
    /// The original destination of the request's connection (transparent listeners).
    fn destination(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// The client address of the request's connection, when a route asks for it.
    fn source(&self) -> Option<std::net::IpAddr> {
        None
    }
}

/// A route's `match.source`: any of the networks.
#[derive(Debug)]
pub struct SourceMatcher {
    pub networks: Box<[config_model::Cidr]>,
}

impl SourceMatcher {
    pub fn matches(&self, source: Option<std::net::IpAddr>) -> bool {
        source.is_some_and(|ip| self.networks.iter().any(|net| net.contains(ip)))
    }
}

/// A route's `match.destination`: any of the networks (if given) and any of
/// the ports (if given).
#[derive(Debug)]
pub struct DestinationMatcher {
    pub networks: Box<[config_model::Cidr]>,
    pub ports: Box<[u16]>,
}

impl DestinationMatcher {
    /// A connection without a known destination matches no destination criterion.
    pub fn matches(&self, destination: Option<std::net::SocketAddr>) -> bool {
        let Some(destination) = destination else { return false };
        (self.networks.is_empty() || self.networks.iter().any(|net| net.contains(destination.ip())))
            && (self.ports.is_empty() || self.ports.contains(&destination.port()))
    }
}

#[derive(Debug)]
pub struct RouteMatcher {
    pub host: Option<HostMatcher>,
    pub path: Option<PathMatcher>,
    pub headers: Vec<(HeaderName, HeaderCheck)>,
    pub methods: Vec<Box<str>>,
}

impl RouteMatcher {
    pub fn matches(&self, request: &impl RequestView) -> bool {
        if let Some(host) = &self.host {
            if !request.host().is_some_and(|h| host.matches(h)) {
                return false;
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(request.path()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| &**m == request.method()) {
            return false;
        }
        self.headers.iter().all(|(name, check)| check.matches(request.header_values(name)))
    }

    /// True when the matcher needs nothing from an HTTP request (so it also
    /// applies to opaque TCP connections).
    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.path.is_none() && self.headers.is_empty() && self.methods.is_empty()
    }
}

#[derive(Debug)]
pub struct HostMatcher {
    /// Lower-case name; for wildcards the suffix including the dot (`.example.com`).
    name: Box<str>,
    wildcard: bool,
    port: Option<u16>,
}

impl HostMatcher {
    pub fn new(pattern: &str) -> Self {
        let pattern = pattern.to_ascii_lowercase();
        let (name, port) = split_host_port(&pattern);
        let (name, wildcard) = match name.strip_prefix('*') {
            Some(suffix) => (suffix, true),
            None => (name, false),
        };
        HostMatcher { name: name.into(), wildcard, port }
    }

    pub fn matches(&self, host: &str) -> bool {
        let (name, port) = split_host_port(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        if self.port.is_some() && self.port != port {
            return false;
        }
        if self.wildcard {
            name.len() > self.name.len()
                && name.as_bytes()[name.len() - self.name.len()..].eq_ignore_ascii_case(self.name.as_bytes())
        } else {
            name.eq_ignore_ascii_case(&self.name)
        }
    }
}

/// Splits `host:port`, `[v6]:port`, `[v6]`, `host`.
fn split_host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, tail)) => (addr, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

#[derive(Debug)]
pub enum PathMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(regex::Regex),
}

impl PathMatcher {
    /// Compiles a criterion; regexes are anchored to the whole input.
    pub fn compile(criterion: &config_model::PathMatch) -> Result<Self, regex::Error> {
        use config_model::PathMatch;
        Ok(match criterion {
            PathMatch::Exact(exact) => PathMatcher::Exact(exact.as_str().into()),
            PathMatch::Prefix(prefix) => PathMatcher::Prefix(prefix.as_str().into()),
            PathMatch::Regex(pattern) => PathMatcher::Regex(regex::Regex::new(&anchored(pattern))?),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(exact) => path == &**exact,
            PathMatcher::Prefix(prefix) => path.starts_with(&**prefix),
            PathMatcher::Regex(regex) => regex.is_match(path),
        }
    }
}

/// MQTT criteria of a route, matched against a CONNECT.
#[derive(Debug)]
pub struct MqttMatcher {
    pub client_id: Option<PathMatcher>,
    pub username: Option<PathMatcher>,
}

impl MqttMatcher {
    pub fn matches(&self, client_id: &str, username: Option<&str>) -> bool {
        self.client_id.as_ref().is_none_or(|m| m.matches(client_id))
            && self.username.as_ref().is_none_or(|m| username.is_some_and(|name| m.matches(name)))
    }
}

#[derive(Debug)]
pub enum HeaderCheck {
    Exact(Box<[u8]>),
    Regex(regex::bytes::Regex),
    Present(bool),
}

impl HeaderCheck {
    /// Any value of the header satisfies the check (or, for `present: false`,
    /// there is no value).
    pub fn matches<'a>(&self, mut values: impl Iterator<Item = &'a [u8]>) -> bool {
        match self {
            HeaderCheck::Exact(exact) => values.any(|v| v == &**exact),
            HeaderCheck::Regex(regex) => values.any(|v| regex.is_match(v)),
            HeaderCheck::Present(wanted) => values.next().is_some() == *wanted,
        }
    }
}

/// Anchors a user pattern so that it must match the whole input.
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let exact = HostMatcher::new("API.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("api.EXAMPLE.com:8080"));
        assert!(exact.matches("api.example.com."));
        assert!(!exact.matches("x.api.example.com"));
        let wild = HostMatcher::new("*.example.com");
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com:443"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("aexample.com"));
        let with_port = HostMatcher::new("example.com:8080");
        assert!(with_port.matches("example.com:8080"));
        assert!(!with_port.matches("example.com"));
        assert!(!with_port.matches("example.com:80"));
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host_port("::1"), ("::1", None));
    }

    #[test]
    fn paths_and_headers() {
        assert!(PathMatcher::Prefix("/v1".into()).matches("/v1/users"));
        assert!(!PathMatcher::Exact("/v1".into()).matches("/v1/"));
        let regex = PathMatcher::Regex(regex::Regex::new(&anchored("/v[0-9]+")).unwrap());
        assert!(regex.matches("/v12"));
        assert!(!regex.matches("/v12/x"));
        let values: [&[u8]; 2] = [b"a", b"true"];
        assert!(HeaderCheck::Exact((*b"true").into()).matches(values.iter().copied()));
        assert!(!HeaderCheck::Present(false).matches(values.iter().copied()));
        assert!(HeaderCheck::Present(false).matches(std::iter::empty()));
    }
}

//! Semantic validation: every problem in a config, each named by its path.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::model::*;
use crate::values::{is_header_value, is_hostname, is_token};

mod mqtt;
mod policies;
mod tls;

/// One problem in a config, e.g. `listeners[1].routes[0].split[2].weight: must be between 1 and 10000`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The path of a list item, `{parent}{list}[{index}]` (`listeners[0].routes[3]`),
/// written out only when an error names it.
pub(crate) struct Item<'a> {
    parent: &'a str,
    list: &'static str,
    index: usize,
}

impl fmt::Display for Item<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}[{}]", self.parent, self.list, self.index)
    }
}

/// Largest weight of a split entry or an endpoint.
pub const MAX_WEIGHT: u32 = 10_000;
/// The largest packet MQTT can express (a remaining length of 268,435,455 plus the fixed header).
pub const MAX_MQTT_PACKET: u32 = 268_435_460;
/// Largest endpoint priority (failover level).
pub const MAX_PRIORITY: u32 = 15;

/// Checks everything that deserialization does not: references, uniqueness,
/// bind conflicts, value syntax and ranges. Returns every problem found.
pub fn validate(config: &Config) -> Result<(), Vec<ValidationError>> {
    let mut v = Validator::default();
    v.config(config);
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

#[derive(Default)]
pub(crate) struct Validator {
    errors: Vec<ValidationError>,
}

impl Validator {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError { path: path.into(), message: message.into() });
    }

    pub(crate) fn check<T>(&mut self, path: impl Into<String>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    /// [`Self::check`] with a path made only if there is an error: a big
    /// config validates without formatting a path for every value it checks.
    pub(crate) fn check_at<T>(&mut self, path: impl FnOnce() -> String, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(path(), message);
                None
            }
        }
    }

    fn config(&mut self, config: &Config) {
        if let Some(version) = &config.version {
            if version.len() > 256 || version.chars().any(char::is_control) {
                self.error("version", "must be at most 256 printable characters");
            }
        }
        self.check("drain_timeout", config.drain_timeout.parse());
        if config.socket_mark == Some(0) {
            self.error("socket_mark", "must be at least 1 (leave it out for unmarked sockets)");
        }

        let mut binds: Vec<(String, SocketAddr)> = Vec::new();
        if let Some(addr) = self.check("admin.bind", config.admin.bind.parse()) {
            binds.push(("admin.bind".into(), addr));
        }

        let clusters = self.clusters(&config.clusters);
        if let Some(identity) = &config.identity {
            self.identity(identity);
        }
        for (index, cluster) in config.clusters.iter().enumerate() {
            if let Some(tls) = &cluster.tls {
                self.cluster_tls(&format!("clusters[{index}].tls"), tls, config.identity.is_some());
            }
        }

        let mut listener_names = HashMap::new();
        for (index, listener) in config.listeners.iter().enumerate() {
            let path = format!("listeners[{index}]");
            self.name(|| format!("{path}.name"), &listener.name);
            if let Some(first) = listener_names.insert(listener.name.as_str(), index) {
                self.error(
                    format!("{path}.name"),
                    format!("duplicate listener name {:?} (also listeners[{first}])", listener.name),
                );
            }
            if let Some(addr) = self.check(format!("{path}.bind"), listener.bind.parse()) {
                binds.push((format!("{path}.bind"), addr));
            }
            self.listener(&path, listener, &clusters, config.identity.is_some());
        }

        // Only binds of the same port can conflict: compare each with the
        // earlier binds of its port (in config order), not with all of them.
        let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, (path, addr)) in binds.iter().enumerate() {
            let earlier = by_port.entry(addr.port()).or_default();
            if let Some(&first) = earlier.iter().find(|&&j| binds_conflict(binds[j].1, *addr)) {
                self.error(path.clone(), format!("address {addr} conflicts with {}", binds[first].0));
            }
            earlier.push(i);
        }
    }

    fn name(&mut self, path: impl FnOnce() -> String, name: &str) {
        if name.is_empty() || name.len() > 128 {
            self.error(path(), "must be 1 to 128 characters");
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'|'))
        {
            self.error(path(), format!("invalid name {name:?}: use letters, digits and - _ . / : |"));
        }
    }

    /// Validates clusters and returns the cluster names with their index.
    fn clusters<'a>(&mut self, clusters: &'a [Cluster]) -> HashMap<&'a str, usize> {
        let mut names = HashMap::new();
        for (index, cluster) in clusters.iter().enumerate() {
            let path = Item { parent: "", list: "clusters", index };
            self.name(|| format!("{path}.name"), &cluster.name);
            if let Some(first) = names.insert(cluster.name.as_str(), index) {
                self.error(
                    format!("{path}.name"),
                    format!("duplicate cluster name {:?} (also clusters[{first}])", cluster.name),
                );
            }
            // Few endpoints (the common case) are compared directly; many through a set.
            let mut seen = HashSet::new();
            let few = cluster.endpoints.len() <= 16;
            for (e, endpoint) in cluster.endpoints.iter().enumerate() {
                let endpoint_path = || format!("{path}.endpoints[{e}]");
                let address = endpoint.address();
                self.check_at(endpoint_path, address.parse());
                let duplicate = if few {
                    cluster.endpoints[..e].iter().any(|earlier| earlier.address().as_str() == address.as_str())
                } else {
                    !seen.insert(address.as_str())
                };
                if duplicate {
                    self.error(endpoint_path(), format!("duplicate endpoint {:?}", address.as_str()));
                }
                if !(1..=MAX_WEIGHT).contains(&endpoint.weight()) {
                    self.error(format!("{}.weight", endpoint_path()), format!("must be between 1 and {MAX_WEIGHT}"));
                }
                if endpoint.priority() > MAX_PRIORITY {
                    self.error(
                        format!("{}.priority", endpoint_path()),
                        format!("must be between 0 and {MAX_PRIORITY}"),
                    );
                }
            }
            self.cluster_policies(&path, cluster);
            if let Some(connect) = self.check_at(|| format!("{path}.connect_timeout"), cluster.connect_timeout.parse())
            {
                if connect.is_zero() {
                    self.error(format!("{path}.connect_timeout"), "must be greater than 0");
                }
            }
            self.check_at(|| format!("{path}.pool.idle_timeout"), cluster.pool.idle_timeout.parse());
            if cluster.pool.max_concurrent_streams == 0 {
                self.error(format!("{path}.pool.max_concurrent_streams"), "must be at least 1");
            }
            match (&cluster.hash_on, cluster.lb) {
                (Some(_), lb) if lb != LbPolicy::RingHash => {
                    self.error(format!("{path}.hash_on"), "only used with lb: ring_hash")
                }
                (Some(HashOn::Header(name)), _) if !is_token(name) => {
                    self.error(format!("{path}.hash_on.header"), format!("invalid header name {name:?}"))
                }
                _ => {}
            }
        }
        names
    }

    fn listener(&mut self, path: &str, listener: &Listener, clusters: &HashMap<&str, usize>, has_identity: bool) {
        if let Some(detect) = self.check(format!("{path}.detect_timeout"), listener.detect_timeout.parse()) {
            if detect.is_zero() {
                self.error(format!("{path}.detect_timeout"), "must be greater than 0");
            }
        }
        let http = &listener.http;
        if !(1024..=1024 * 1024).contains(&http.max_header_bytes) {
            self.error(format!("{path}.http.max_header_bytes"), "must be between 1024 and 1048576");
        }
        if !(1..=1024).contains(&http.max_headers) {
            self.error(format!("{path}.http.max_headers"), "must be between 1 and 1024");
        }
        if http.max_concurrent_streams == 0 {
            self.error(format!("{path}.http.max_concurrent_streams"), "must be at least 1");
        }
        for (field, value) in [("header_read_timeout", &http.header_read_timeout), ("idle_timeout", &http.idle_timeout)]
        {
            if let Some(parsed) = self.check(format!("{path}.http.{field}"), value.parse()) {
                if parsed.is_zero() {
                    self.error(format!("{path}.http.{field}"), "must be greater than 0");
                }
            }
        }
        if let Some(idle) = self.check(format!("{path}.tcp.idle_timeout"), listener.tcp.idle_timeout.parse()) {
            if idle.is_zero() {
                self.error(format!("{path}.tcp.idle_timeout"), "must be greater than 0");
            }
        }

        self.mqtt(&format!("{path}.mqtt"), &listener.mqtt);
        if let Some(limit) = &listener.rate_limit {
            self.rate_limit(&format!("{path}.rate_limit"), limit);
            let kind = match listener.protocol {
                ListenerProtocol::Tcp => Some("tcp"),
                ListenerProtocol::Mqtt => Some("mqtt"),
                _ => None,
            };
            if let Some(kind) = kind {
                let hint =
                    if kind == "mqtt" { "mqtt.publish_rate or connection_rate_limit" } else { "connection_rate_limit" };
                self.error(format!("{path}.rate_limit"), format!("HTTP rate limit on a {kind} listener (use {hint})"));
            }
        }
        if let Some(limit) = &listener.connection_rate_limit {
            self.connection_rate_limit(&format!("{path}.connection_rate_limit"), limit);
        }
        self.bandwidth(&format!("{path}.bandwidth"), &listener.bandwidth);

        let mut route_names = HashMap::new();
        for (index, route) in listener.routes.iter().enumerate() {
            let route_path = Item { parent: path, list: ".routes", index };
            if let Some(name) = &route.name {
                self.name(|| format!("{route_path}.name"), name);
                if let Some(first) = route_names.insert(name.as_str(), index) {
                    self.error(
                        format!("{route_path}.name"),
                        format!("duplicate route name {name:?} (also routes[{first}])"),
                    );
                }
            }
            self.route(&route_path, route, clusters);
            if let Some(limit) = &route.connection_rate_limit {
                let limit_path = format!("{route_path}.connection_rate_limit");
                self.connection_rate_limit(&limit_path, limit);
                let relays_tcp = matches!(listener.protocol, ListenerProtocol::Tcp | ListenerProtocol::Auto)
                    && !route.matches.has_http_criteria()
                    && !route.matches.has_mqtt_criteria()
                    && route.direct_response.is_none();
                if !relays_tcp {
                    self.error(
                        limit_path,
                        "a route's connection limit needs an opaque TCP route (a tcp or auto listener, no HTTP \
                         or MQTT criteria, no direct response); use the listener's connection_rate_limit",
                    );
                }
            }
            if let Some(destination) = &route.matches.destination {
                self.destination(&route_path, destination, listener.transparent.is_some());
            }
            if let Some(source) = &route.matches.source {
                let source_path = format!("{route_path}.match.source.addresses");
                if source.addresses.is_empty() {
                    self.error(source_path.clone(), "give at least one address or network");
                }
                for (i, address) in source.addresses.iter().enumerate() {
                    if let Err(message) = address.parse::<crate::values::Cidr>() {
                        self.error(format!("{source_path}[{i}]"), message);
                    }
                }
            }
            match listener.protocol {
                ListenerProtocol::Tcp => {
                    self.tcp_only(&route_path, route, "tcp");
                    if route.matches.has_mqtt_criteria() {
                        self.error(format!("{route_path}.match"), "MQTT match criteria on a tcp listener");
                    }
                }
                ListenerProtocol::Mqtt => self.tcp_only(&route_path, route, "mqtt"),
                ListenerProtocol::Http if route.matches.has_mqtt_criteria() => {
                    self.error(format!("{route_path}.match"), "MQTT match criteria on an http listener never match");
                }
                _ => {}
            }
            if route.matches.has_http_criteria() && route.matches.has_mqtt_criteria() {
                self.error(format!("{route_path}.match"), "HTTP and MQTT criteria together never match");
            }
        }
        if listener.protocol == ListenerProtocol::Mqtt && listener.routes.is_empty() {
            self.error(format!("{path}.routes"), "an mqtt listener needs a route");
        }
        if listener.protocol == ListenerProtocol::Tcp {
            if listener.routes.is_empty() {
                self.error(format!("{path}.routes"), "a tcp listener needs a route");
            } else if let Some(catch_all) = listener.routes.iter().position(|route| {
                route.matches.sni.is_none() && route.matches.destination.is_none() && route.matches.source.is_none()
            }) {
                // Routes are tried by SNI, destination and source; the first with none takes the rest.
                if catch_all + 1 < listener.routes.len() {
                    self.error(
                        format!("{path}.routes[{}]", catch_all + 1),
                        format!(
                            "unreachable: routes[{catch_all}] has no `match.sni`, `match.destination` or `match.source` and takes every connection"
                        ),
                    );
                }
            }
        }
        if let Some(transparent) = &listener.transparent {
            self.positive(|| format!("{path}.transparent.connect_timeout"), &transparent.connect_timeout);
        }
        self.listener_tls(path, listener, has_identity);
    }

    fn destination(&mut self, route_path: &dyn fmt::Display, destination: &DestinationMatch, transparent: bool) {
        let path = format!("{route_path}.match.destination");
        if !transparent {
            self.error(
                path.clone(),
                "only a transparent listener knows a connection's original destination (set `transparent`)",
            );
        }
        if destination.addresses.is_empty() && destination.ports.is_empty() {
            self.error(path.clone(), "give addresses, ports or both");
        }
        for (i, address) in destination.addresses.iter().enumerate() {
            if let Err(message) = address.parse::<crate::values::Cidr>() {
                self.error(format!("{path}.addresses[{i}]"), message);
            }
        }
        for (i, port) in destination.ports.iter().enumerate() {
            if *port == 0 {
                self.error(format!("{path}.ports[{i}]"), "must be 1 to 65535");
            }
        }
    }

    /// Routes of a listener that does not speak HTTP (`kind`: tcp, mqtt).
    fn tcp_only(&mut self, path: &dyn fmt::Display, route: &Route, kind: &str) {
        if route.matches.has_http_criteria() {
            self.error(format!("{path}.match"), format!("HTTP match criteria on a {kind} listener"));
        }
        if route.timeout.is_some() {
            self.error(format!("{path}.timeout"), format!("HTTP timeout on a {kind} listener"));
        }
        if route.direct_response.is_some() {
            self.error(format!("{path}.direct_response"), format!("direct responses need HTTP, not a {kind} listener"));
        }
        if !route.request_headers.is_empty() {
            self.error(format!("{path}.request_headers"), format!("header edits on a {kind} listener"));
        }
        if !route.response_headers.is_empty() {
            self.error(format!("{path}.response_headers"), format!("header edits on a {kind} listener"));
        }
        if route.retry.is_some() {
            self.error(format!("{path}.retry"), format!("HTTP retries on a {kind} listener"));
        }
        if route.rate_limit.is_some() {
            self.error(
                format!("{path}.rate_limit"),
                format!("HTTP rate limit on a {kind} listener (use connection_rate_limit)"),
            );
        }
        if route.jwt.is_some() {
            self.error(format!("{path}.jwt"), format!("JWT verification needs HTTP, not a {kind} listener"));
        }
    }

    fn route(&mut self, path: &dyn fmt::Display, route: &Route, clusters: &HashMap<&str, usize>) {
        let m = &route.matches;
        if let Some(host) = &m.host {
            let (name, port) = match host.rsplit_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host.as_str(), None),
            };
            let name = name.strip_prefix("*.").unwrap_or(name);
            // Request hosts are compared without a trailing dot, so a pattern
            // with one could never match.
            if !is_hostname(name) || name.ends_with('.') || port.is_some_and(|port| port.parse::<u16>().is_err()) {
                self.error(
                    format!("{path}.match.host"),
                    format!("invalid host {host:?}: expected a host name, optionally starting with \"*.\" and ending with \":PORT\""),
                );
            }
        }
        match &m.path {
            Some(PathMatch::Exact(p)) | Some(PathMatch::Prefix(p)) if !p.starts_with('/') => {
                let kind = if matches!(m.path, Some(PathMatch::Exact(_))) { "exact" } else { "prefix" };
                self.error(format!("{path}.match.path.{kind}"), format!("{p:?} must start with \"/\""));
            }
            Some(PathMatch::Regex(pattern)) => self.regex(&format!("{path}.match.path.regex"), pattern),
            _ => {}
        }
        for (field, criterion) in [("client_id", &m.client_id), ("username", &m.username)] {
            if let Some(PathMatch::Regex(pattern)) = criterion {
                self.regex(&format!("{path}.match.{field}.regex"), pattern);
            }
        }
        for (name, matcher) in &m.headers {
            let header_path = format!("{path}.match.headers.{name}");
            if !is_token(name) {
                self.error(header_path.clone(), format!("invalid header name {name:?}"));
            }
            match matcher {
                HeaderMatch::Exact(value) => self.header_value(&header_path, value),
                HeaderMatch::Rule(rule) => {
                    let given = [rule.exact.is_some(), rule.regex.is_some(), rule.present.is_some()]
                        .iter()
                        .filter(|given| **given)
                        .count();
                    if given != 1 {
                        self.error(header_path.clone(), "give exactly one of exact, regex, present");
                    }
                    if let Some(value) = &rule.exact {
                        self.header_value(&format!("{header_path}.exact"), value);
                    }
                    if let Some(pattern) = &rule.regex {
                        self.regex(&format!("{header_path}.regex"), pattern);
                    }
                }
            }
        }
        if let Some(methods) = &m.method {
            if methods.as_slice().is_empty() {
                self.error(format!("{path}.match.method"), "empty method list");
            }
            for (i, method) in methods.as_slice().iter().enumerate() {
                if !is_token(method) {
                    let method_path = match methods {
                        OneOrMany::One(_) => format!("{path}.match.method"),
                        OneOrMany::Many(_) => format!("{path}.match.method[{i}]"),
                    };
                    self.error(method_path, format!("invalid method {method:?}"));
                }
            }
        }

        let actions = [route.cluster.is_some(), route.split.is_some(), route.direct_response.is_some()];
        match actions.iter().filter(|given| **given).count() {
            0 => self.error(path.to_string(), "give one of cluster, split, direct_response"),
            1 => {}
            _ => self.error(path.to_string(), "give only one of cluster, split, direct_response"),
        }
        if let Some(cluster) = &route.cluster {
            self.cluster_ref(|| format!("{path}.cluster"), cluster, clusters);
        }
        if let Some(split) = &route.split {
            if split.is_empty() {
                self.error(format!("{path}.split"), "must list at least one cluster");
            }
            let mut seen = HashSet::new();
            for (i, entry) in split.iter().enumerate() {
                let entry_path = format!("{path}.split[{i}]");
                self.cluster_ref(|| format!("{entry_path}.cluster"), &entry.cluster, clusters);
                if !seen.insert(entry.cluster.as_str()) {
                    self.error(
                        format!("{entry_path}.cluster"),
                        format!("cluster {:?} appears twice in the split", entry.cluster),
                    );
                }
                if !(1..=MAX_WEIGHT).contains(&entry.weight) {
                    self.error(format!("{entry_path}.weight"), format!("must be between 1 and {MAX_WEIGHT}"));
                }
            }
        }
        if let Some(direct) = &route.direct_response {
            if !(200..=599).contains(&direct.status) {
                self.error(format!("{path}.direct_response.status"), "must be between 200 and 599");
            }
            if direct.body.len() > 64 * 1024 {
                self.error(format!("{path}.direct_response.body"), "must be at most 64 KiB");
            }
            self.header_value(&format!("{path}.direct_response.content_type"), &direct.content_type);
        }
        if let Some(timeout) = &route.timeout {
            self.check_at(|| format!("{path}.timeout"), timeout.parse());
        }
        if !route.request_headers.is_empty() {
            self.header_edits(&format!("{path}.request_headers"), &route.request_headers);
        }
        if !route.response_headers.is_empty() {
            self.header_edits(&format!("{path}.response_headers"), &route.response_headers);
        }
        if let Some(retry) = &route.retry {
            self.retry(&format_args!("{path}.retry"), retry);
        }
        if let Some(limit) = &route.rate_limit {
            self.rate_limit(&format!("{path}.rate_limit"), limit);
        }
        if let Some(jwt) = &route.jwt {
            crate::jwt::validate_jwt(self, &format!("{path}.jwt"), jwt);
        }
    }

    fn cluster_ref(&mut self, path: impl FnOnce() -> String, name: &str, clusters: &HashMap<&str, usize>) {
        if !clusters.contains_key(name) {
            self.error(path(), format!("unknown cluster {name:?}"));
        }
    }

    pub(super) fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(error) = regex::Regex::new(pattern) {
            let detail = error.to_string();
            let last_line = detail.lines().last().unwrap_or("").trim();
            self.error(path, format!("invalid regex {pattern:?}: {last_line}"));
        }
    }

    pub(crate) fn header_value(&mut self, path: &str, value: &str) {
        if !is_header_value(value) {
            self.error(path, format!("invalid header value {value:?}"));
        }
    }

    fn header_edits(&mut self, path: &str, edits: &HeaderEdits) {
        for (name, value) in edits.add.iter().map(|e| ("add", e)).chain(edits.set.iter().map(|e| ("set", e))) {
            let (header, value) = value;
            let entry_path = format!("{path}.{name}.{header}");
            if !is_token(header) {
                self.error(entry_path.clone(), format!("invalid header name {header:?}"));
            } else if is_protected_header(header) {
                self.error(entry_path.clone(), format!("{header:?} is managed by the proxy and cannot be edited"));
            }
            self.header_value(&entry_path, value);
        }
        for (i, header) in edits.remove.iter().enumerate() {
            let entry_path = format!("{path}.remove[{i}]");
            if !is_token(header) {
                self.error(entry_path, format!("invalid header name {header:?}"));
            } else if is_protected_header(header) {
                self.error(entry_path, format!("{header:?} is managed by the proxy and cannot be edited"));
            }
        }
    }
}

/// Headers that carry framing or connection state; editing them would corrupt
/// the exchange or open a smuggling hole.
pub(crate) fn is_protected_header(name: &str) -> bool {
    const PROTECTED: [&str; 8] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
    ];
    PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(name)) || name.starts_with(':')
}

/// Two binds conflict when the kernel would refuse the second: same port and
/// the same address, or a wildcard address of an overlapping family.
fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    match (a.ip(), b.ip()) {
        (x, y) if x == y => true,
        (IpAddr::V4(x), IpAddr::V4(y)) => x.is_unspecified() || y.is_unspecified(),
        // `[::]` is dual-stack on Linux by default and takes the IPv4 port too.
        (IpAddr::V6(x), IpAddr::V6(y)) => x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(v6), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn bind_conflicts() {
        assert!(binds_conflict(bind("0.0.0.0:80"), bind("127.0.0.1:80")));
        assert!(binds_conflict(bind("127.0.0.1:80"), bind("127.0.0.1:80")));
        assert!(!binds_conflict(bind("127.0.0.1:80"), bind("127.0.0.2:80")));
        assert!(!binds_conflict(bind("127.0.0.1:80"), bind("127.0.0.1:81")));
        assert!(binds_conflict(bind("[::]:80"), bind("10.0.0.1:80")));
        assert!(!binds_conflict(bind("[::1]:80"), bind("127.0.0.1:80")));
        assert!(!binds_conflict(bind("127.0.0.1:0"), bind("127.0.0.1:0")));
    }

    #[test]
    fn a_bind_conflict_names_the_first_earlier_bind_it_conflicts_with() {
        let config = crate::from_yaml_str(
            "admin: { bind: 127.0.0.1:9000 }
listeners:
  - { name: a, bind: 127.0.0.1:8081, routes: [ { direct_response: { status: 200 } } ] }
  - { name: b, bind: 0.0.0.0:8080, routes: [ { direct_response: { status: 200 } } ] }
  - { name: c, bind: 127.0.0.1:8080, routes: [ { direct_response: { status: 200 } } ] }
  - { name: d, bind: 127.0.0.1:8080, routes: [ { direct_response: { status: 200 } } ] }
  - { name: e, bind: 127.0.0.1:9000, routes: [ { direct_response: { status: 200 } } ] }
",
        )
        .unwrap();
        let errors: Vec<String> = validate(&config).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "listeners[2].bind: address 127.0.0.1:8080 conflicts with listeners[1].bind",
                "listeners[3].bind: address 127.0.0.1:8080 conflicts with listeners[1].bind",
                "listeners[4].bind: address 127.0.0.1:9000 conflicts with admin.bind",
            ]
        );
    }
}

//! A deterministic, realistic sidecar / edge-gateway config of N services, as
//! a control plane would push it: JSON (compact) and YAML (block style) text
//! of the same config.
//!
//! Shared by `benches/config_scale.rs`, `examples/config_scale.rs` and
//! `tests/config_scale.rs` through `#[path = ...] mod scale_config;`, so no
//! test code lives in the product crate.
//!
//! Service `i` (`svc-0042.ns-42.svc.cluster.local`; 50 namespaces) has 4
//! endpoints, every one a distinct `10.b.c.d:port`, so N services have 4·N
//! endpoints. On the listener `outbound-http` each service gets a route
//! matching its host, plus:
//! - `i % 10 == 0` (10%): an SMI TrafficSplit: clusters `…-v1` and `…-v2`
//!   (2 endpoints each) split 90/10, and a route before it sending
//!   `x-canary: true` to v2;
//! - `i % 10 == 3`: a route before it for `/api/` (`GET`/`POST`) with a 5 s
//!   timeout and retries;
//! - `i % 50 == 7`: a route before it with a path regex;
//! - host routes: a 15 s timeout (`i % 3 == 0`), retries (`i % 4 == 1`), a
//!   request header (`i % 4 == 2`), a response header removed
//!   (`i % 25 == 17`), a rate limit per client IP (`i % 20 == 11`) or per
//!   tenant header (`i % 100 == 31`).
//!
//! Clusters: gRPC (`http2`, port 50051) for `i % 10 == 6`; least request
//! (`i % 10 == 8`), random (`i % 50 == 23`), ring hash on a header
//! (`i % 50 == 13`); weighted endpoints with a failover level for
//! `i % 10 == 9`; circuit-breaker thresholds (`i % 5 == 2`), osm-edge's
//! degrade breaker (`i % 25 == 4`), outlier ejection (`i % 10 == 5`), health
//! checks (`i % 20 == 9`), a cluster rate limit (`i % 100 == 57`).
//!
//! One `tcp` listener per 500 services (`i % 500 == 1`) routes to the
//! service's cluster. The first HTTP route answers `/healthz` itself.
#![allow(dead_code)]

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

/// The figure of the issue: 5,000 services, 20,000 endpoints.
pub const SERVICES: usize = 5_000;
/// Endpoints per service.
pub const ENDPOINTS_PER_SERVICE: usize = 4;
/// Namespaces the services are spread over.
pub const NAMESPACES: usize = 50;

/// What a config of `services` services holds, computed independently of the
/// generator's loop (by counting residues), for the test to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub services: usize,
    pub clusters: usize,
    pub endpoints: usize,
    pub listeners: usize,
    pub http_routes: usize,
    pub tcp_listeners: usize,
    pub split_routes: usize,
}

/// How many of `0..n` are `residue` modulo `modulus`.
fn count(n: usize, modulus: usize, residue: usize) -> usize {
    if n > residue {
        (n - residue).div_ceil(modulus)
    } else {
        0
    }
}

pub fn expected(services: usize) -> Expected {
    let splits = count(services, 10, 0);
    let tcp = count(services, 500, 1);
    Expected {
        services,
        // A split service has two clusters (v1, v2) instead of one.
        clusters: services + splits,
        endpoints: services * ENDPOINTS_PER_SERVICE,
        listeners: 1 + tcp,
        // /healthz, one host route per service, a canary route per split,
        // an /api/ route per `i % 10 == 3`, a regex route per `i % 50 == 7`.
        http_routes: 1 + services + splits + count(services, 10, 3) + count(services, 50, 7),
        tcp_listeners: tcp,
        split_routes: splits,
    }
}

/// The host (and cluster name) of service `i`.
pub fn host(i: usize) -> String {
    format!("svc-{i:04}.ns-{}.svc.cluster.local", i % NAMESPACES)
}

/// Endpoint `k` of the whole config (0-based) as `10.b.c.d`: distinct for
/// fewer than 250 · 256 · 256 endpoints, last octet 1 to 250.
fn endpoint_ip(k: usize) -> String {
    format!("10.{}.{}.{}", (k / (250 * 256)) % 256, (k / 250) % 256, k % 250 + 1)
}

fn object(entries: Vec<(&str, Value)>) -> Value {
    Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
}

/// The endpoints of service `i`, `first` being its first endpoint's global index.
fn endpoints(i: usize, first: usize, count: usize, port: u16) -> Vec<Value> {
    (0..count)
        .map(|j| {
            let address = format!("{}:{port}", endpoint_ip(first + j));
            if i % 10 == 9 {
                // Weighted, the last one in the neighbour POP (failover level 1).
                let mut spec = vec![("address", json!(address)), ("weight", json!(1 + j as u32 % 3))];
                if j + 1 == count {
                    spec.push(("priority", json!(1)));
                }
                object(spec)
            } else {
                json!(address)
            }
        })
        .collect()
}

fn cluster(i: usize, name: String, endpoints: Vec<Value>) -> Value {
    let mut c = vec![("name", json!(name)), ("endpoints", Value::Array(endpoints))];
    if i % 10 == 8 {
        c.push(("lb", json!("least_request")));
    } else if i % 50 == 23 {
        c.push(("lb", json!("random")));
    } else if i % 50 == 13 {
        c.push(("lb", json!("ring_hash")));
        c.push(("hash_on", json!({ "header": "x-user-id" })));
    }
    if i % 10 == 6 {
        c.push(("protocol", json!("http2")));
    }
    if i.is_multiple_of(2) {
        c.push(("connect_timeout", json!("1s")));
    }
    if i % 5 == 2 {
        c.push((
            "limits",
            json!({ "max_connections": 1024, "max_pending_requests": 128, "max_requests": 1024, "max_retries": 3 }),
        ));
    }
    if i % 25 == 4 {
        c.push((
            "breaker",
            json!({
                "stat_window": "10s", "min_requests": 20, "error_ratio": 0.5,
                "slow_time": "1s", "slow_ratio": 0.8, "degraded_window": "10s"
            }),
        ));
    }
    if i % 10 == 5 {
        c.push((
            "outlier_detection",
            json!({ "consecutive_5xx": 5, "base_ejection_time": "30s", "max_ejection_percent": 50 }),
        ));
    }
    if i % 20 == 9 {
        c.push(("health_check", json!({ "kind": "http", "path": "/healthz", "interval": "5s", "timeout": "1s" })));
    }
    if i % 100 == 57 {
        c.push(("rate_limit", json!({ "requests": 2000, "per": "1s" })));
    }
    object(c)
}

/// The config of `services` services as a JSON value (keys in model order).
pub fn config_value(services: usize) -> Value {
    let mut clusters = Vec::with_capacity(services + services / 10 + 1);
    let mut routes = Vec::with_capacity(services * 5 / 4 + 1);
    let mut tcp_listeners = Vec::new();
    routes.push(json!({
        "name": "healthz",
        "match": { "path": { "exact": "/healthz" } },
        "direct_response": { "status": 200, "body": "ok\n" }
    }));
    for i in 0..services {
        let host = host(i);
        let first = i * ENDPOINTS_PER_SERVICE;
        let port = if i % 10 == 6 { 50051 } else { 8080 };
        let name = format!("svc-{i:04}");

        // Where the host route sends traffic.
        let target = if i % 10 == 0 {
            let half = ENDPOINTS_PER_SERVICE / 2;
            let v1 = format!("svc-{i:04}-v1.ns-{}.svc.cluster.local", i % NAMESPACES);
            let v2 = format!("svc-{i:04}-v2.ns-{}.svc.cluster.local", i % NAMESPACES);
            clusters.push(cluster(i, v1.clone(), endpoints(i, first, half, port)));
            clusters.push(cluster(i, v2.clone(), endpoints(i, first + half, ENDPOINTS_PER_SERVICE - half, port)));
            routes.push(json!({
                "name": format!("{name}-canary"),
                "match": { "host": host, "headers": { "x-canary": "true" } },
                "cluster": v2
            }));
            ("split", json!([{ "cluster": v1, "weight": 90 }, { "cluster": v2, "weight": 10 }]))
        } else {
            clusters.push(cluster(i, host.clone(), endpoints(i, first, ENDPOINTS_PER_SERVICE, port)));
            ("cluster", json!(host))
        };

        if i % 10 == 3 {
            routes.push(json!({
                "name": format!("{name}-api"),
                "match": { "host": host, "path": { "prefix": "/api/" }, "method": ["GET", "POST"] },
                "cluster": host,
                "timeout": "5s",
                "retry": {
                    "attempts": 2, "retry_on": ["connect-failure", "gateway-error"],
                    "per_try_timeout": "2s", "backoff_base": "25ms"
                }
            }));
        }
        if i % 50 == 7 {
            routes.push(json!({
                "name": format!("{name}-items"),
                "match": { "host": host, "path": { "regex": "/v[0-9]+/items/[0-9a-f]{8,32}" } },
                "cluster": host,
                "timeout": "2s"
            }));
        }

        let mut route = vec![("name", json!(name)), ("match", json!({ "host": host })), target];
        if i % 3 == 0 {
            route.push(("timeout", json!("15s")));
        }
        if i % 4 == 2 {
            route.push(("request_headers", json!({ "set": { "x-mesh-service": name } })));
        }
        if i % 25 == 17 {
            route.push(("response_headers", json!({ "remove": ["server"] })));
        }
        if i % 4 == 1 {
            route.push((
                "retry",
                json!({ "attempts": 3, "retry_on": ["connect-failure", "refused-stream", "gateway-error"] }),
            ));
        }
        if i % 20 == 11 {
            route.push(("rate_limit", json!({ "requests": 500, "per": "1s", "burst": 100, "key": "client_ip" })));
        } else if i % 100 == 31 {
            route.push(("rate_limit", json!({ "requests": 100, "per": "1s", "key": { "header": "x-tenant-id" } })));
        }
        routes.push(object(route));

        if i % 500 == 1 {
            let k = tcp_listeners.len();
            tcp_listeners.push(json!({
                "name": format!("tcp-{name}"),
                "bind": format!("127.0.0.1:{}", 20_000 + k),
                "protocol": "tcp",
                "tcp": { "idle_timeout": "1h" },
                "routes": [{ "name": format!("{name}-tcp"), "cluster": host }]
            }));
        }
    }

    let mut listeners = vec![json!({
        "name": "outbound-http",
        "bind": "127.0.0.1:15001",
        "protocol": "http",
        "http": { "forwarded_for": "append" },
        "routes": routes
    })];
    listeners.extend(tcp_listeners);
    json!({
        "version": format!("scale-{services}"),
        "admin": { "bind": "127.0.0.1:15000" },
        "listeners": listeners,
        "clusters": clusters
    })
}

/// Compact JSON, as a control plane sends it.
pub fn json_text(services: usize) -> String {
    serde_json::to_string(&config_value(services)).expect("a JSON value serializes")
}

/// Block-style YAML of the same config.
pub fn yaml_text(services: usize) -> String {
    to_yaml(&config_value(services))
}

/// Block-style YAML of a JSON value (maps as `key: value`, lists as `- item`,
/// plain scalars where YAML reads them back as the same string, else
/// double-quoted with JSON escapes, which YAML shares).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => yaml_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => yaml_seq(&mut out, items, 0),
        scalar => {
            yaml_scalar(&mut out, scalar);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn is_empty_collection(value: &Value) -> bool {
    matches!(value, Value::Object(m) if m.is_empty()) || matches!(value, Value::Array(a) if a.is_empty())
}

/// Entries of a map at column `col`; the first line's indent is already written
/// when `first_inline` (a map that starts a list item).
fn yaml_map_entries(out: &mut String, map: &Map<String, Value>, col: usize, first_inline: bool) {
    for (n, (key, value)) in map.iter().enumerate() {
        if n > 0 || !first_inline {
            indent(out, col);
        }
        yaml_string(out, key);
        out.push(':');
        yaml_value_after_key(out, value, col);
    }
}

fn yaml_map(out: &mut String, map: &Map<String, Value>, col: usize) {
    yaml_map_entries(out, map, col, false);
}

fn yaml_value_after_key(out: &mut String, value: &Value, col: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml_map(out, map, col + 2);
        }
        // Lists under a key are not indented further (kubectl's style).
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            yaml_seq(out, items, col);
        }
        other => {
            out.push(' ');
            yaml_scalar(out, other);
            out.push('\n');
        }
    }
}

fn yaml_seq(out: &mut String, items: &[Value], col: usize) {
    for item in items {
        indent(out, col);
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => yaml_map_entries(out, map, col + 2, true),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_seq(out, inner, col + 2);
            }
            other => {
                yaml_scalar(out, other);
                out.push('\n');
            }
        }
    }
}

fn yaml_scalar(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => yaml_string(out, s),
        empty if is_empty_collection(empty) => out.push_str(if empty.is_object() { "{}" } else { "[]" }),
        _ => unreachable!("non-empty collections are written in block style"),
    }
}

/// A string plain when YAML 1.2 (core schema) reads it back as this string.
fn yaml_string(out: &mut String, s: &str) {
    let safe_chars = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'));
    let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_');
    let keyword = matches!(
        s.to_ascii_lowercase().as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
    );
    let numeric = s.parse::<f64>().is_ok() || s.starts_with("0x") || s.starts_with("0o");
    if safe_chars && first_ok && !keyword && !numeric && !s.ends_with(':') {
        out.push_str(s);
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    }
}

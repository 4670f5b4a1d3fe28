//! `Spec.Probes` → where the probe proxies send the kubelet's probes.
//!
//! osm-edge's injector rewrites each app probe to the sidecar
//! (`pkg/injector/health_probes.go`): liveness to `:15901`, readiness to
//! `:15902`, startup to `:15903`, `tcpSocket` probes to `:15904`, adding the
//! headers `Original-Http-Port` and `Original-Http-Path` (HTTP probes) or
//! `Original-Tcp-Port` (TCP and HTTPS probes). The sidecar reads those
//! headers from the rewritten probe in its config, not from the request
//! (`codebase/probes.js`): a request header naming a port would let anyone
//! who reaches `:15901` into the pod's loopback-only services.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::Value;

use super::conf::Inbound;
use super::{ProbeTarget, Probes};

/// The probe proxies' ports, as the injector writes them into the probes.
pub const LIVENESS_PORT: u16 = 15901;
pub const READINESS_PORT: u16 = 15902;
pub const STARTUP_PORT: u16 = 15903;

/// Resolves the three probes; `warn` gets one line per probe that cannot be
/// honoured as written.
pub(super) fn resolve(probes: Option<&Value>, inbound: Option<&Inbound>, warn: &mut dyn FnMut(String)) -> Probes {
    let app = app_port(inbound);
    const KINDS: [&str; 3] = ["LivenessProbes", "ReadinessProbes", "StartupProbes"];
    if probes.is_some_and(|p| !p.is_object() && !p.is_null()) {
        warn("Spec.Probes: not an object; ignored".into());
    }
    for key in probes.and_then(Value::as_object).into_iter().flat_map(|o| o.keys()) {
        if !KINDS.contains(&key.as_str()) {
            warn(format!("Spec.Probes.{key}: unknown field, ignored"));
        }
    }
    let first = |kind: &str| probes.and_then(|p| p.get(kind)).and_then(|list| list.get(0)).filter(|p| !p.is_null());
    let mut one = |kind: &str, port: u16| {
        let path = format!("Spec.Probes.{kind}[0]");
        resolve_one(first(kind), port, app, &path, warn)
    };
    Probes {
        liveness: one("LivenessProbes", LIVENESS_PORT),
        readiness: one("ReadinessProbes", READINESS_PORT),
        startup: one("StartupProbes", STARTUP_PORT),
    }
}

/// The app's HTTP port that probes without a target go to, as probes.js
/// picks it: among the inbound `http` ports in ascending order, the last one
/// open to every source, else the first.
fn app_port(inbound: Option<&Inbound>) -> Option<u16> {
    let mut ports: Vec<(u16, bool)> = inbound?
        .traffic_matches
        .iter()
        .filter(|(_, m)| m.protocol.eq_ignore_ascii_case("http"))
        .filter_map(|(key, m)| Some((m.port.or_else(|| key.parse().ok())?, m.source_ip_ranges.is_empty())))
        .collect();
    ports.sort_unstable();
    let mut chosen = None;
    for (port, open_to_all) in ports {
        if chosen.is_none() || open_to_all {
            chosen = Some(port);
        }
    }
    chosen
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn resolve_one(
    probe: Option<&Value>,
    own_port: u16,
    app: Option<u16>,
    path: &str,
    warn: &mut dyn FnMut(String),
) -> ProbeTarget {
    let to_app = || app.map_or(ProbeTarget::Refuse, |port| ProbeTarget::Tcp { target: loopback(port) });
    let Some(probe) = probe else { return to_app() };
    if let Some(get) = probe.get("httpGet").filter(|g| g.is_object()) {
        let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP").to_ascii_uppercase();
        let probe_path = get.get("path").and_then(Value::as_str).filter(|p| !p.is_empty());
        let Some(port) = port_of(get.get("port")) else {
            warn(format!("{path}.httpGet.port: not a port number (named ports are resolved by the injector); the probe goes to the app's port"));
            return to_app();
        };
        if port == own_port {
            return rewritten(get, &scheme, app, path, warn);
        }
        // The app's own probe, not yet rewritten: send it where it points.
        return match scheme.as_str() {
            "HTTP" => ProbeTarget::Http { target: loopback(port), path: origin_form(probe_path.unwrap_or("/")) },
            _ => ProbeTarget::Tcp { target: loopback(port) },
        };
    }
    if let Some(socket) = probe.get("tcpSocket").filter(|s| s.is_object()) {
        return match port_of(socket.get("port")) {
            Some(port) => ProbeTarget::Tcp { target: loopback(port) },
            None => {
                warn(format!("{path}.tcpSocket.port: not a port number; the probe goes to the app's port"));
                to_app()
            }
        };
    }
    // exec and grpc probes never reach the sidecar; a connection that does
    // goes to the app, as with osm-edge.
    to_app()
}

/// A probe the injector pointed at this probe port: its `Original-*` headers
/// say where the app's probe went.
fn rewritten(get: &Value, scheme: &str, app: Option<u16>, path: &str, warn: &mut dyn FnMut(String)) -> ProbeTarget {
    let mut target = app.map(loopback);
    let mut request_path = None;
    let mut health_check = false;
    let headers = get.get("httpHeaders").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (index, header) in headers.iter().enumerate() {
        let name = header.get("name").and_then(Value::as_str).unwrap_or_default();
        let value = header.get("value").and_then(Value::as_str).unwrap_or_default();
        if name.eq_ignore_ascii_case("Original-Http-Port") {
            match value.trim().parse::<u16>() {
                Ok(port) if port != 0 => target = Some(loopback(port)),
                _ => warn(format!("{path}.httpGet.httpHeaders[{index}]: Original-Http-Port {value:?} is not a port")),
            }
        } else if name.eq_ignore_ascii_case("Original-Tcp-Port") {
            health_check = true;
        } else if name.eq_ignore_ascii_case("Original-Http-Path") {
            request_path = Some(origin_form(value)).filter(|p| !p.is_empty());
        }
    }
    if health_check {
        // The port is checked per request by the health check, which reads
        // the header the kubelet sends.
        return ProbeTarget::HealthCheck;
    }
    let target = target.or(match scheme {
        "HTTP" => Some(loopback(80)),
        "HTTPS" => Some(loopback(443)),
        _ => None,
    });
    let Some(target) = target else { return ProbeTarget::Refuse };
    match scheme {
        "HTTP" => ProbeTarget::Http { target, path: request_path.unwrap_or_else(|| "/".to_owned()) },
        _ => ProbeTarget::Tcp { target },
    }
}

/// A probe path as a request target: the kubelet asks for `/<path>` when
/// the path lacks its leading slash.
fn origin_form(path: &str) -> String {
    let path = path.trim();
    match path {
        "" => String::new(),
        _ if path.starts_with('/') => path.to_owned(),
        _ => format!("/{path}"),
    }
}

/// A Kubernetes `IntOrString` port that is a number.
fn port_of(port: Option<&Value>) -> Option<u16> {
    match port? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|p| *p != 0),
        Value::String(s) => s.trim().parse().ok().filter(|p| *p != 0),
        _ => None,
    }
}

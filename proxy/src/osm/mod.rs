//! What osm-edge expects of its sidecar beside the traffic listeners: the
//! stats/admin port (`:15000`), the Prometheus port (`:15010`) with the
//! metric names the osm-edge dashboards query, and the probe proxies
//! (`:15901`-`:15904`, [`probes`]). Started only in the Pipy sidecar mode
//! (`edgeplane <repo URL>`).
//!
//! The osm families are derived at scrape time from edgeplane's own series
//! (parsed from their text encoding): the request path keeps one set of
//! counters, and nothing here runs per request.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::text;
use crate::app::Control;
use crate::state::Shared;

pub mod probes;

use probes::ProbePort;

/// Where the osm-edge ports listen.
#[derive(Clone, Debug)]
pub struct OsmPorts {
    /// osm-edge's `SidecarAdminPort` (`[::]:15000`).
    pub stats: SocketAddr,
    /// osm-edge's Prometheus port (`:15010`).
    pub prometheus: SocketAddr,
    /// The probe proxies: liveness, readiness, startup (`:15901`-`:15903`).
    pub liveness: SocketAddr,
    pub readiness: SocketAddr,
    pub startup: SocketAddr,
    /// The TCP health check (`:15904`).
    pub health_check: SocketAddr,
}

/// One of the servers on the osm-edge ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OsmServer {
    Stats,
    Prometheus,
    Probe(ProbePort),
}

impl OsmPorts {
    /// osm-edge's ports, or `EDGEPLANE_OSM_{STATS,PROMETHEUS,LIVENESS,
    /// READINESS,STARTUP,HEALTHCHECK}_BIND` (several sidecars on one host, tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<OsmPorts, String> {
        let bind = |name: &str, default: &str| {
            let text = get(name).filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned());
            text.parse::<SocketAddr>().map_err(|e| format!("{name}: {text:?}: {e}"))
        };
        Ok(OsmPorts {
            stats: bind("EDGEPLANE_OSM_STATS_BIND", "0.0.0.0:15000")?,
            prometheus: bind("EDGEPLANE_OSM_PROMETHEUS_BIND", "0.0.0.0:15010")?,
            liveness: bind("EDGEPLANE_OSM_LIVENESS_BIND", "0.0.0.0:15901")?,
            readiness: bind("EDGEPLANE_OSM_READINESS_BIND", "0.0.0.0:15902")?,
            startup: bind("EDGEPLANE_OSM_STARTUP_BIND", "0.0.0.0:15903")?,
            health_check: bind("EDGEPLANE_OSM_HEALTHCHECK_BIND", "0.0.0.0:15904")?,
        })
    }

    /// Every server, its address and its name for errors.
    pub fn servers(&self) -> [(OsmServer, SocketAddr, &'static str); 6] {
        [
            (OsmServer::Stats, self.stats, "osm stats"),
            (OsmServer::Prometheus, self.prometheus, "osm prometheus"),
            (OsmServer::Probe(ProbePort::Liveness), self.liveness, "osm liveness probe"),
            (OsmServer::Probe(ProbePort::Readiness), self.readiness, "osm readiness probe"),
            (OsmServer::Probe(ProbePort::Startup), self.startup, "osm startup probe"),
            (OsmServer::Probe(ProbePort::HealthCheck), self.health_check, "osm health check"),
        ]
    }
}

/// Serves one osm-edge port.
pub(crate) async fn run(
    server: OsmServer,
    listener: TcpListener,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
) {
    match server {
        OsmServer::Stats => serve(listener, shared, control, false).await,
        OsmServer::Prometheus => serve(listener, shared, control, true).await,
        OsmServer::Probe(port) => probes::serve(listener, shared, port).await,
    }
}

/// Labels osm-edge puts on its series, from the pod's environment.
#[derive(Clone, Debug)]
struct PodLabels {
    namespace: String,
    kind: String,
    name: String,
    pod: String,
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    prometheus_only: bool,
) {
    let context = config_model::pipy::SidecarContext::from_env(|name| std::env::var(name).ok());
    let pod = Arc::new(PodLabels {
        namespace: context.namespace,
        kind: context.controller_kind,
        name: context.service_account,
        pod: context.pod_name,
    });
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let (shared, control, pod) = (shared.clone(), control.clone(), pod.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = if prometheus_only {
                    prometheus(&request, &shared, &pod)
                } else {
                    stats(&request, peer, &shared, &control, &pod)
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn prometheus(request: &Request<Incoming>, shared: &Shared, pod: &PodLabels) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/stats/prometheus" | "/metrics" => text(StatusCode::OK, osm_metrics(shared, pod)),
        _ => text(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// osm-edge's `stats.js` paths.
fn stats(
    request: &Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    control: &mpsc::UnboundedSender<Control>,
    pod: &PodLabels,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/quitquitquit" && request.method() == Method::POST {
        if !peer.ip().to_canonical().is_loopback() {
            return text(StatusCode::FORBIDDEN, "only loopback callers may do this");
        }
        let _ = control.send(Control::Shutdown);
        return text(StatusCode::OK, "DONE");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    match path {
        "/ready" if shared.lifecycle.is_ready() => text(StatusCode::OK, "LIVE"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY"),
        "/listeners" => {
            let table = shared.table.load();
            let mut body = String::new();
            for listener in &table.config.listeners {
                let _ = writeln!(body, "{}-listener::{}", listener.name, listener.bind.as_str());
            }
            text(StatusCode::OK, body)
        }
        "/config_dump" => crate::admin::json_response(&*shared.table.load().config),
        "/certs" => crate::admin::json_response(&crate::admin::certs(shared)),
        "/stats" | "/clusters" => text(StatusCode::OK, stats_text(&osm_metrics(shared, pod), path == "/clusters")),
        _ => text(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// One sample of edgeplane's text encoding.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, name: &str) -> &str {
        self.labels.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v.as_str())
    }
}

/// osm-edge's `/stats` (and, without histogram buckets, `/clusters`): its
/// metric lines about clusters, retries and rate limits, with retries and
/// rate limits in the Envoy-style `key: value` form that `osm proxy get
/// stats` users grep for (as `stats.js` rewrites them).
fn stats_text(metrics: &str, clusters_only: bool) -> String {
    let mut body = String::new();
    let kept = metrics.lines().filter(|line| !line.starts_with('#')).filter(|line| {
        (line.contains("sidecar_cluster") || line.contains("_retry") || line.contains("rate_limit"))
            && !(clusters_only && line.contains("_bucket"))
    });
    for line in kept {
        let sample = parse_sample(line);
        let _ = match sample.as_ref().map(|s| (s.name, s)) {
            Some(("sidecar_cluster_upstream_rq_retry", sample)) => {
                writeln!(body, "cluster.{}.upstream_rq_retry: {}", sample.label("sidecar_cluster_name"), sample.value)
            }
            Some(("http_local_rate_limiter", sample)) => {
                writeln!(body, "http_local_rate_limiter.http_local_rate_limit.rate_limited: {}", sample.value)
            }
            Some(("sidecar_local_rate_limit_inbound", sample)) => {
                writeln!(body, "local_rate_limit.inbound_{}.rate_limited: {}", sample.label("label"), sample.value)
            }
            _ => writeln!(body, "{line}"),
        };
    }
    body
}

/// `name{a="x",b="y"} 1` (label values with `\"`, `\\`, `\n` escapes).
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample { name, labels: Vec::new(), value: value.trim().parse().ok()? });
        }
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            let value = after.trim().split(' ').next()?.parse().ok()?;
            return Some(Sample { name, labels, value });
        }
        let (label, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (index, '"') => break index,
                (_, c) => value.push(c),
            }
        };
        labels.push((label.trim_start_matches(','), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
}

/// osm-edge's `osm_request_duration_ms` buckets, each one of edgeplane's.
const OSM_BUCKETS_MS: [u32; 17] =
    [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];

/// The osm-edge families, from the proxy's own series.
fn osm_metrics(shared: &Shared, pod: &PodLabels) -> String {
    let table = shared.table.load();
    render(&shared.metrics.encode(), table.config.clusters.iter().map(|c| c.name.as_str()), pod)
}

/// The osm-edge families of `source` (edgeplane's exposition text), with a
/// series for each of `clusters`.
fn render<'a>(source: &str, clusters: impl Iterator<Item = &'a str>, pod: &PodLabels) -> String {
    // Every cluster of the config has its series, zero before traffic, as
    // osm-edge's sidecar sets them up at load.
    let zeros: BTreeMap<String, f64> = clusters.map(|name| (name.to_owned(), 0.0)).collect();
    let mut requests: BTreeMap<String, BTreeMap<String, f64>> =
        zeros.keys().map(|name| (name.clone(), BTreeMap::new())).collect();
    let (mut active, mut connect_timeouts, mut overflow) = (zeros.clone(), zeros.clone(), zeros.clone());
    let (mut retries, mut rx, mut tx) = (zeros.clone(), zeros.clone(), zeros.clone());
    let (mut timeouts, mut resets, mut cancelled) = (zeros.clone(), zeros.clone(), zeros.clone());
    let (mut connect_failed, mut closed_local, mut closed_remote) = (zeros.clone(), zeros.clone(), zeros);
    // cluster → status code → responses
    let mut codes: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    // destination cluster → (le in ms → cumulative count, sum, count)
    let mut durations: BTreeMap<String, (BTreeMap<u32, f64>, f64, f64)> = BTreeMap::new();
    // osm-edge's service and route throttles are clusters' and routes' limits here.
    let (mut throttled_services, mut throttled_routes) = (0.0, 0.0);
    // Inbound TCP port → connections its limit refused.
    let mut throttled_ports: BTreeMap<u16, f64> = BTreeMap::new();
    for sample in source.lines().filter_map(parse_sample) {
        let cluster = sample.label("cluster").to_owned();
        match sample.name {
            "edgeplane_http_requests_total" if !cluster.is_empty() => {
                *requests.entry(cluster).or_default().entry(sample.label("class").to_owned()).or_default() +=
                    sample.value;
            }
            "edgeplane_upstream_responses_total" => {
                *codes.entry(cluster).or_default().entry(sample.label("code").to_owned()).or_default() += sample.value;
            }
            "edgeplane_upstream_connections_active" => *active.entry(cluster).or_default() += sample.value,
            "edgeplane_upstream_connect_errors_total" if sample.label("reason") == "timeout" => {
                *connect_timeouts.entry(cluster).or_default() += sample.value;
            }
            "edgeplane_upstream_overflow_total" => *overflow.entry(cluster).or_default() += sample.value,
            "edgeplane_upstream_retries_total" => *retries.entry(cluster).or_default() += sample.value,
            "edgeplane_upstream_timeouts_total" => *timeouts.entry(cluster).or_default() += sample.value,
            "edgeplane_upstream_resets_total" => *resets.entry(cluster).or_default() += sample.value,
            "edgeplane_upstream_cancelled_total" => *cancelled.entry(cluster).or_default() += sample.value,
            "edgeplane_upstream_connect_failed_requests_total" => {
                *connect_failed.entry(cluster).or_default() += sample.value;
            }
            "edgeplane_upstream_connections_closed_mid_request_total" => {
                let map = if sample.label("by") == "remote" { &mut closed_remote } else { &mut closed_local };
                *map.entry(cluster).or_default() += sample.value;
            }
            "edgeplane_rate_limited_total" => {
                let limiter = sample.label("limiter");
                // The translator names an inbound TCP port's route `inbound/<port>/tcp`.
                let tcp_port = limiter
                    .strip_prefix("route/inbound/inbound/")
                    .and_then(|rest| rest.strip_suffix("/tcp/connections").and_then(|port| port.parse::<u16>().ok()));
                match tcp_port {
                    Some(port) => *throttled_ports.entry(port).or_default() += sample.value,
                    // Other connection limits have no osm-edge family.
                    None if limiter.ends_with("/connections") => {}
                    None if limiter.starts_with("cluster/") => throttled_services += sample.value,
                    None if limiter.starts_with("route/") => throttled_routes += sample.value,
                    None => {}
                }
            }
            "edgeplane_tcp_bytes_total" => {
                let map = if sample.label("direction") == "rx" { &mut rx } else { &mut tx };
                *map.entry(cluster).or_default() += sample.value;
            }
            "edgeplane_http_request_duration_seconds_bucket" if sample.label("listener") == "outbound" => {
                let Ok(le) = sample.label("le").parse::<f64>() else { continue };
                let le_ms = (le * 1000.0).round() as u32;
                if OSM_BUCKETS_MS.contains(&le_ms) {
                    *durations.entry(cluster).or_default().0.entry(le_ms).or_default() += sample.value;
                }
            }
            "edgeplane_http_request_duration_seconds_sum" if sample.label("listener") == "outbound" => {
                durations.entry(cluster).or_default().1 += sample.value * 1000.0;
            }
            "edgeplane_http_request_duration_seconds_count" if sample.label("listener") == "outbound" => {
                durations.entry(cluster).or_default().2 += sample.value;
            }
            _ => {}
        }
    }

    let mut out = String::with_capacity(8 * 1024);
    let source_labels = format!(
        "source_namespace=\"{}\",source_workload_kind=\"{}\",source_workload_name=\"{}\",source_workload_pod=\"{}\"",
        escape(&pod.namespace),
        escape(&pod.kind),
        escape(&pod.name),
        escape(&pod.pod)
    );
    let _ = writeln!(out, "# TYPE sidecar_server_live gauge\nsidecar_server_live 1");
    let cluster_label = |cluster: &str| format!("sidecar_cluster_name=\"{}\"", escape(cluster));
    let totals = || requests.iter().map(move |(cluster, classes)| (cluster_label(cluster), classes.values().sum()));
    let by_class = |prefix: String| {
        requests.iter().flat_map(move |(cluster, classes)| {
            let prefix = prefix.clone();
            classes.iter().filter_map(move |(class, count)| {
                let digit = class.strip_suffix("xx")?;
                Some((format!("{prefix}{},sidecar_response_code_class=\"{digit}\"", cluster_label(cluster)), *count))
            })
        })
    };
    let with_source = |(labels, value): (String, f64)| (format!("{source_labels},{labels}"), value);
    family(&mut out, "sidecar_cluster_upstream_rq_total", "counter", totals().map(with_source));
    family(&mut out, "sidecar_cluster_upstream_rq_xx", "counter", by_class(format!("{source_labels},")));
    // The per-code and completed families, as osm-edge's dashboards query
    // them: by cluster only.
    let by_code = codes.iter().flat_map(|(cluster, by_code)| {
        by_code
            .iter()
            .map(move |(code, count)| (format!("{},sidecar_response_code=\"{code}\"", cluster_label(cluster)), *count))
    });
    family(&mut out, "sidecar_cluster_external_upstream_rq", "counter", by_code);
    family(&mut out, "sidecar_cluster_external_upstream_rq_xx", "counter", by_class(String::new()));
    family(&mut out, "sidecar_cluster_external_upstream_rq_completed", "counter", totals());
    for (name, kind, values) in [
        ("sidecar_cluster_upstream_cx_active", "gauge", &active),
        ("sidecar_cluster_upstream_cx_connect_timeout", "counter", &connect_timeouts),
        ("sidecar_cluster_upstream_rq_pending_overflow", "counter", &overflow),
        ("sidecar_cluster_upstream_rq_retry", "counter", &retries),
        ("sidecar_cluster_upstream_rq_timeout", "counter", &timeouts),
        ("sidecar_cluster_upstream_rq_rx_reset", "counter", &resets),
        ("sidecar_cluster_upstream_rq_tx_reset", "counter", &cancelled),
        ("sidecar_cluster_upstream_rq_pending_failure_eject", "counter", &connect_failed),
        ("sidecar_cluster_upstream_cx_destroy_local_with_active_rq", "counter", &closed_local),
        ("sidecar_cluster_upstream_cx_destroy_remote_with_active_rq", "counter", &closed_remote),
        ("sidecar_cluster_upstream_cx_rx_bytes_total", "counter", &rx),
        ("sidecar_cluster_upstream_cx_tx_bytes_total", "counter", &tx),
    ] {
        family(&mut out, name, kind, values.iter().map(|(cluster, value)| (cluster_label(cluster), *value)));
    }
    let throttles = [("throttle-service", throttled_services), ("throttle-route", throttled_routes)];
    let throttles = throttles.map(|(throttle, value)| (format!("http_local_rate_limit=\"{throttle}\""), value));
    family(&mut out, "http_local_rate_limiter", "counter", throttles);
    // osm-edge's label: `<namespace>/<pod name up to its first dash>_<port>_<protocol>`.
    let pod_prefix = pod.pod.split('-').next().unwrap_or("");
    let ports = throttled_ports.iter().map(|(port, value)| {
        (format!("label=\"{}/{}_{port}_tcp\"", escape(&pod.namespace), escape(pod_prefix)), *value)
    });
    family(&mut out, "sidecar_local_rate_limit_inbound", "counter", ports);
    let _ = writeln!(out, "# TYPE osm_request_duration_ms histogram");
    for (cluster, (buckets, sum, count)) in &durations {
        // `ns/svc|port`: the destination's namespace and service.
        let (namespace, name) = cluster.split('|').next().unwrap_or("").split_once('/').unwrap_or(("", cluster));
        let labels = format!(
            "source_namespace=\"{}\",source_kind=\"{}\",source_name=\"{}\",source_pod=\"{}\",destination_namespace=\"{}\",destination_kind=\"\",destination_name=\"{}\",destination_pod=\"\"",
            escape(&pod.namespace),
            escape(&pod.kind),
            escape(&pod.name),
            escape(&pod.pod),
            escape(namespace),
            escape(name)
        );
        for (le, value) in buckets {
            let _ = writeln!(out, "osm_request_duration_ms_bucket{{{labels},le=\"{le}\"}} {value}");
        }
        let _ = writeln!(out, "osm_request_duration_ms_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "osm_request_duration_ms_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "osm_request_duration_ms_count{{{labels}}} {count}");
    }
    out
}

/// A family's `# TYPE` line and one sample per (labels, value).
fn family(out: &mut String, name: &str, kind: &str, samples: impl IntoIterator<Item = (String, f64)>) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_escapes() {
        let sample =
            parse_sample(r#"edgeplane_http_requests_total{listener="o",route="r\"1",cluster="ns/a|80",class="2xx"} 7"#)
                .unwrap();
        assert_eq!(sample.name, "edgeplane_http_requests_total");
        assert_eq!(sample.label("route"), "r\"1");
        assert_eq!(sample.label("cluster"), "ns/a|80");
        assert_eq!(sample.value, 7.0);
        let bare = parse_sample("edgeplane_config_generation 3").unwrap();
        assert_eq!((bare.name, bare.value), ("edgeplane_config_generation", 3.0));
        assert!(parse_sample("# HELP x y").is_none());
        assert!(parse_sample("broken{a=\"1\" 2").is_none());
    }

    /// Each edgeplane series lands in its osm-edge family, under the
    /// cluster's name; clusters without traffic get zeros.
    #[test]
    fn edgeplane_series_become_the_osm_families() {
        let source = r#"
edgeplane_upstream_timeouts_total{cluster="ns/a|80"} 1
edgeplane_upstream_resets_total{cluster="ns/a|80"} 2
edgeplane_upstream_cancelled_total{cluster="ns/a|80"} 3
edgeplane_upstream_connect_failed_requests_total{cluster="ns/a|80"} 4
edgeplane_upstream_connections_closed_mid_request_total{cluster="ns/a|80",by="local"} 5
edgeplane_upstream_connections_closed_mid_request_total{cluster="ns/a|80",by="remote"} 6
edgeplane_upstream_connect_errors_total{cluster="ns/a|80",reason="timeout"} 7
edgeplane_upstream_connect_errors_total{cluster="ns/a|80",reason="refused"} 100
edgeplane_upstream_retries_total{cluster="ns/a|80"} 8
edgeplane_upstream_overflow_total{cluster="ns/a|80",limit="max_requests"} 9
edgeplane_rate_limited_total{limiter="cluster/ns/a|80"} 10
edgeplane_rate_limited_total{limiter="cluster/ns/b|80"} 1
edgeplane_rate_limited_total{limiter="route/inbound/ns/a/0"} 11
edgeplane_rate_limited_total{limiter="listener/inbound/connections"} 50
edgeplane_rate_limited_total{limiter="route/inbound/inbound/9000/tcp/connections"} 12
"#;
        let pod = PodLabels {
            namespace: "ns".into(),
            kind: "Deployment".into(),
            name: "sa".into(),
            pod: "fortio-5d8f-x".into(),
        };
        let out = render(source, ["ns/a|80", "ns/idle|80"].into_iter(), &pod);
        let a = "{sidecar_cluster_name=\"ns/a|80\"}";
        for (family, value) in [
            ("sidecar_cluster_upstream_rq_timeout", 1),
            ("sidecar_cluster_upstream_rq_rx_reset", 2),
            ("sidecar_cluster_upstream_rq_tx_reset", 3),
            ("sidecar_cluster_upstream_rq_pending_failure_eject", 4),
            ("sidecar_cluster_upstream_cx_destroy_local_with_active_rq", 5),
            ("sidecar_cluster_upstream_cx_destroy_remote_with_active_rq", 6),
            ("sidecar_cluster_upstream_cx_connect_timeout", 7),
            ("sidecar_cluster_upstream_rq_retry", 8),
            ("sidecar_cluster_upstream_rq_pending_overflow", 9),
        ] {
            assert!(out.contains(&format!("{family}{a} {value}\n")), "no {family} {value} in\n{out}");
            let idle = format!("{family}{{sidecar_cluster_name=\"ns/idle|80\"}} 0\n");
            assert!(out.contains(&idle), "no {idle} in\n{out}");
        }
        assert!(out.contains("http_local_rate_limiter{http_local_rate_limit=\"throttle-service\"} 11\n"), "{out}");
        assert!(out.contains("http_local_rate_limiter{http_local_rate_limit=\"throttle-route\"} 11\n"), "{out}");
        assert!(out.contains("sidecar_local_rate_limit_inbound{label=\"ns/fortio_9000_tcp\"} 12\n"), "{out}");

        // `/stats` as `stats.js` writes retries and rate limits.
        let stats = stats_text(&out, false);
        assert!(stats.contains("cluster.ns/a|80.upstream_rq_retry: 8\n"), "{stats}");
        assert!(stats.contains("http_local_rate_limiter.http_local_rate_limit.rate_limited: 11\n"), "{stats}");
        assert!(stats.contains("local_rate_limit.inbound_ns/fortio_9000_tcp.rate_limited: 12\n"), "{stats}");
        assert!(stats.contains(&format!("sidecar_cluster_upstream_rq_tx_reset{a} 3\n")), "{stats}");
        assert!(!stats.contains('#'), "{stats}");
    }
}

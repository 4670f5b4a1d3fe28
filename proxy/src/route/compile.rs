//! Config → [`RouteTable`]. Everything the request path needs is prepared here:
//! matchers compiled, names resolved to indexes, header names parsed, metric
//! series resolved, balancer schedules built.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use config_model::{Config, HashOn, HeaderMatch, LbPolicy, ListenerProtocol, ParsedUpstream, PathMatch};
use http::{HeaderName, HeaderValue};

use super::matcher::{
    anchored, DestinationMatcher, HeaderCheck, HostMatcher, MqttMatcher, PathMatcher, RouteMatcher, SourceMatcher,
};
use super::*;
use crate::balance::Balancer;
use crate::metrics::{
    ConnectionLabels, DirectionLabels, LimiterLabels, ListenerLabels, LocalReplyLabels, Metrics, Name, RequestMetrics,
    TcpLabels,
};
use crate::mqtt::topic_metrics::TopicCounts;
use crate::policy::breaker::{BreakerSettings, DegradeBreaker};
use crate::policy::outlier::OutlierSettings;
use crate::policy::request_limit::RequestLimiter;
use crate::policy::retry::RetryPolicy;
use crate::state::Registry;

/// Why a validated config could still not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{path}: cannot resolve {host:?}: {reason}")]
    Resolve { path: String, host: String, reason: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A certificate, key or CA that cannot be used; the message names its path.
    #[error("{0}")]
    Tls(String),
}

/// Every local-reply reason, so each listener's series exist from the start.
pub const LOCAL_REPLY_REASONS: [&str; 16] = [
    "no_route",
    "overloaded",
    "degraded",
    "rate_limited",
    "no_endpoint",
    "connect_timeout",
    "connect_error",
    "upstream_timeout",
    "upstream_error",
    "bad_request",
    "headers_too_large",
    "request_timeout",
    "unsupported",
    "forbidden",
    "unauthorized",
    "https_redirect",
];

/// Compiles a *validated* config. Host names in endpoint addresses are
/// resolved here (blocking; this runs on the control thread, never a worker).
pub fn compile(
    config: Arc<Config>,
    config_hash: u64,
    generation: u64,
    registry: &Registry,
    metrics: &Metrics,
) -> Result<RouteTable, CompileError> {
    registry.start_compile(generation);
    let mut clusters = Vec::with_capacity(config.clusters.len());
    let mut cluster_index = HashMap::with_capacity(config.clusters.len());
    for (index, cluster) in config.clusters.iter().enumerate() {
        let mark = config.socket_mark.unwrap_or(0);
        clusters.push(compile_cluster(index, cluster, config.identity.as_ref(), mark, registry, metrics)?);
        cluster_index.insert(cluster.name.as_str(), (index, Name::new(&cluster.name)));
    }

    let mut listeners: Vec<Option<Arc<ListenerTable>>> = Vec::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{index}]");
        let slot = registry.listener_slot(&listener.name);
        if listeners.len() <= slot {
            listeners.resize_with(slot + 1, || None);
        }
        listeners[slot] = Some(Arc::new(compile_listener(
            &path,
            listener,
            &cluster_index,
            config.identity.as_ref(),
            registry,
            metrics,
        )?));
    }

    Ok(RouteTable {
        generation,
        config_hash,
        listeners,
        clusters,
        access_log: config.access_log.enabled,
        access_log_format: config.access_log.format,
        socket_mark: config.socket_mark.unwrap_or(0),
        config,
    })
}

/// Cluster name → its index in the table and its name as a label value.
type ClusterIndex<'a> = HashMap<&'a str, (usize, Name)>;

fn invalid(path: impl fmt::Display, message: impl fmt::Display) -> CompileError {
    CompileError::Invalid { path: path.to_string(), message: message.to_string() }
}

/// A duration; `path` is only formatted when the value does not parse.
fn duration(
    path: impl FnOnce() -> String,
    value: &config_model::Duration,
) -> Result<std::time::Duration, CompileError> {
    value.parse().map_err(|message| CompileError::Invalid { path: path(), message })
}

// Paths of config items, for error messages. They are formatted only when
// an error is reported: a big config compiles without building one string
// per cluster, endpoint and route.

/// `clusters[i]`
#[derive(Clone, Copy)]
struct ClusterPath(usize);

impl fmt::Display for ClusterPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clusters[{}]", self.0)
    }
}

/// `listeners[i].routes[j]`
#[derive(Clone, Copy)]
struct RoutePath<'a> {
    listener: &'a str,
    index: usize,
}

impl fmt::Display for RoutePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.routes[{}]", self.listener, self.index)
    }
}

fn compile_cluster(
    index: usize,
    cluster: &config_model::Cluster,
    identity: Option<&config_model::Identity>,
    socket_mark: u32,
    registry: &Registry,
    metrics: &Metrics,
) -> Result<ClusterTable, CompileError> {
    let path = ClusterPath(index);
    let name: Arc<str> = cluster.name.as_str().into();
    let state = registry.cluster_state(&cluster.name);
    let cluster_metrics = metrics.cluster(&cluster.name);
    state.configure(&cluster.limits, || cluster_metrics.overflow.clone());

    let tls = match &cluster.tls {
        Some(spec) => Some(Arc::new(
            crate::tls::client::ClientTls::compile(
                &cluster.name,
                &format!("{path}.tls"),
                spec,
                cluster.protocol,
                identity,
            )
            .map_err(CompileError::Tls)?,
        )),
        None => None,
    };
    let ring_hash = cluster.lb == LbPolicy::RingHash;
    let mut endpoints = Vec::with_capacity(cluster.endpoints.len());
    let mut weights = Vec::with_capacity(cluster.endpoints.len());
    let mut priorities = Vec::with_capacity(cluster.endpoints.len());
    // Ring positions are keyed by address; only the ring needs them.
    let mut keys = Vec::new();
    for (e, endpoint) in cluster.endpoints.iter().enumerate() {
        let endpoint_path = || format!("{path}.endpoints[{e}]");
        let parsed = endpoint.address().parse().map_err(|message| invalid(endpoint_path(), message))?;
        let resolved;
        let (addrs, host_name): (&[SocketAddr], Option<&str>) = match &parsed {
            ParsedUpstream::Ip(addr) => (std::slice::from_ref(addr), None),
            ParsedUpstream::Name { host, port } => {
                resolved = resolve(endpoint_path, host, *port)?;
                (&resolved, Some(host))
            }
        };
        for &addr in addrs {
            let endpoint_state =
                registry.endpoint(&cluster.name, addr, cluster.protocol, tls.is_some(), |id| EndpointState {
                    id,
                    cluster: name.clone(),
                    addr,
                    protocol: cluster.protocol,
                    tls: Default::default(),
                    active_requests: AtomicU32::new(0),
                    health: Default::default(),
                    cluster_state: state.clone(),
                    connections: AtomicU32::new(0),
                    idle: AtomicU32::new(0),
                    socket_mark: AtomicU32::new(0),
                    metrics: cluster_metrics.clone(),
                });
            endpoint_state.socket_mark.store(socket_mark, std::sync::atomic::Ordering::Relaxed);
            match &tls {
                Some(tls) => endpoint_state.tls.store(Some(Arc::new(EndpointTls {
                    tls: tls.clone(),
                    server_name: tls.name_for(host_name, addr.ip()),
                    handshake_errors: cluster_metrics.tls_handshake_errors.clone(),
                }))),
                // Plaintext stays plaintext: no store (a store waits out every reader).
                None if endpoint_state.tls.load().is_none() => {}
                None => endpoint_state.tls.store(None),
            }
            // One name may resolve to an address listed separately too.
            if endpoints.iter().any(|known: &Arc<EndpointState>| known.id == endpoint_state.id) {
                continue;
            }
            endpoints.push(endpoint_state);
            weights.push(endpoint.weight());
            priorities.push(endpoint.priority());
            if ring_hash {
                keys.push(addr.to_string());
            }
        }
    }

    let hash_header = match (&cluster.hash_on, cluster.lb) {
        (Some(HashOn::Header(header)), LbPolicy::RingHash) => {
            Some(HeaderName::from_bytes(header.as_bytes()).map_err(|e| invalid(format!("{path}.hash_on.header"), e))?)
        }
        _ => None,
    };

    let outlier = match &cluster.outlier_detection {
        Some(outlier) => {
            let p = format!("{path}.outlier_detection");
            Some(OutlierSettings {
                consecutive_5xx: outlier.consecutive_5xx,
                consecutive_gateway_errors: outlier.consecutive_gateway_errors,
                consecutive_connect_failures: outlier.consecutive_connect_failures,
                base_ejection_time: duration(|| format!("{p}.base_ejection_time"), &outlier.base_ejection_time)?,
                max_ejection_time: duration(|| format!("{p}.max_ejection_time"), &outlier.max_ejection_time)?,
                max_ejection_percent: outlier.max_ejection_percent,
            })
        }
        None => None,
    };
    // A new or changed outlier policy starts from a clean slate; so does a
    // cluster that drops it (nothing would ever return its ejected endpoints).
    let (_, outlier_changed) = registry.policy_state(
        format!("cluster/{}/outlier", cluster.name),
        policy_hash(&cluster.outlier_detection),
        || (),
    );
    if outlier_changed {
        for endpoint in &endpoints {
            endpoint.health.reset_outlier(&state);
        }
    }
    let breaker = match &cluster.breaker {
        Some(config) => {
            let p = format!("{path}.breaker");
            let settings = BreakerSettings {
                stat_window: duration(|| format!("{p}.stat_window"), &config.stat_window)?,
                min_requests: config.min_requests,
                error_count: config.error_count,
                error_ratio: config.error_ratio,
                slow_time: duration(|| format!("{p}.slow_time"), &config.slow_time)?,
                slow_count: config.slow_count,
                slow_ratio: config.slow_ratio,
                degraded_window: duration(|| format!("{p}.degraded_window"), &config.degraded_window)?,
            };
            let (breaker, _) =
                registry.policy_state(format!("cluster/{}/breaker", cluster.name), policy_hash(config), || {
                    DegradeBreaker::new(settings, tokio::time::Instant::now())
                });
            Some(Arc::new(BreakerPolicy {
                breaker,
                status: http::StatusCode::from_u16(config.degraded_status)
                    .map_err(|e| invalid(format!("{p}.degraded_status"), e))?,
                body: bytes::Bytes::from(config.degraded_body.clone()),
            }))
        }
        None => None,
    };

    Ok(ClusterTable {
        name,
        tls,
        protocol: cluster.protocol,
        connect_timeout: duration(|| format!("{path}.connect_timeout"), &cluster.connect_timeout)?,
        pool: PoolSettings {
            idle_timeout: duration(|| format!("{path}.pool.idle_timeout"), &cluster.pool.idle_timeout)?,
            max_idle: cluster.pool.max_idle_per_endpoint as usize,
            max_streams: cluster.pool.max_concurrent_streams,
        },
        levels: levels(cluster.lb, &weights, &priorities, &keys),
        overprovisioning_percent: (cluster.overprovisioning_factor * 100.0).round() as u32,
        outlier,
        breaker,
        rate_limit: request_limiter(
            registry,
            metrics,
            || format!("{path}.rate_limit"),
            || format!("cluster/{}", cluster.name),
            cluster.rate_limit.as_deref(),
        )?,
        health_check: match &cluster.health_check {
            Some(check) => Some(
                crate::health::HealthCheckSpec::compile(check, policy_hash(check))
                    .map_err(|m| invalid(format!("{path}.health_check"), m))?,
            ),
            None => None,
        },
        state,
        lb: cluster.lb,
        weights: weights.into_boxed_slice(),
        endpoints: endpoints.into_boxed_slice(),
        hash_header,
        hash_client_id: cluster.hash_on == Some(HashOn::ClientId) && cluster.lb == LbPolicy::RingHash,
    })
}

/// Groups endpoints by priority, lowest first, each level with its own balancer.
fn levels(lb: LbPolicy, weights: &[u32], priorities: &[u32], keys: &[String]) -> Box<[Level]> {
    let mut distinct: Vec<u32> = priorities.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        distinct.push(0);
    }
    distinct
        .into_iter()
        .map(|priority| {
            let members: Vec<u32> =
                (0..priorities.len() as u32).filter(|i| priorities[*i as usize] == priority).collect();
            let level_weights: Vec<u32> = members.iter().map(|i| weights[*i as usize]).collect();
            // Only the ring uses keys (`keys` is empty for other policies).
            let level_keys: Vec<String> =
                if keys.is_empty() { Vec::new() } else { members.iter().map(|i| keys[*i as usize].clone()).collect() };
            Level { priority, balancer: Balancer::new(lb, &level_weights, &level_keys), members: members.into() }
        })
        .collect()
}

/// The addresses of an endpoint given by name.
fn resolve(path: impl Fn() -> String, host: &str, port: u16) -> Result<Vec<SocketAddr>, CompileError> {
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| CompileError::Resolve { path: path(), host: host.to_owned(), reason: error.to_string() })?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(CompileError::Resolve { path: path(), host: host.to_owned(), reason: "no addresses".into() });
    }
    Ok(addrs)
}

fn compile_listener(
    path: &str,
    listener: &config_model::Listener,
    clusters: &ClusterIndex<'_>,
    identity: Option<&config_model::Identity>,
    registry: &Registry,
    metrics: &Metrics,
) -> Result<ListenerTable, CompileError> {
    let passthrough = listener.tls.as_ref().is_some_and(|tls| tls.mode == config_model::TlsMode::Passthrough);
    let tls = match &listener.tls {
        Some(_) if passthrough => None,
        Some(spec) => Some(Arc::new(
            crate::tls::server::ServerTls::compile(
                &listener.name,
                &format!("{path}.tls"),
                spec,
                listener.protocol,
                identity,
            )
            .map_err(CompileError::Tls)?,
        )),
        None => None,
    };
    let name: Arc<str> = listener.name.as_str().into();
    let label = Name::new(&listener.name);
    let mut routes = Vec::with_capacity(listener.routes.len());
    for (index, route) in listener.routes.iter().enumerate() {
        routes.push(compile_route(
            RoutePath { listener: path, index },
            index,
            &label,
            route,
            clusters,
            registry,
            metrics,
        )?);
    }
    let tcp_route = routes.iter().position(|route: &Route| {
        route.matcher.is_empty()
            && route.mqtt.is_none()
            && route.direct.is_none()
            && route.sni.is_none()
            && route.destination.is_none()
            && route.source.is_none()
    });
    let routes_by_source = routes.iter().any(|route| route.source.is_some());
    let routes_by_connection =
        routes_by_source || routes.iter().any(|route| route.sni.is_some() || route.destination.is_some());
    let http = &listener.http;
    let connection = |protocol| {
        metrics.connections_total.get_or_create(&ConnectionLabels { listener: listener.name.clone(), protocol }).clone()
    };
    let direction = |direction| {
        metrics.downstream_bytes.get_or_create(&DirectionLabels { listener: listener.name.clone(), direction }).clone()
    };
    Ok(ListenerTable {
        bind: listener.bind.parse().map_err(|m| invalid(format!("{path}.bind"), m))?,
        protocol: listener.protocol,
        detect_timeout: duration(|| format!("{path}.detect_timeout"), &listener.detect_timeout)?,
        http: HttpSettings {
            max_header_bytes: http.max_header_bytes as usize,
            max_headers: http.max_headers as usize,
            header_read_timeout: duration(|| format!("{path}.http.header_read_timeout"), &http.header_read_timeout)?,
            idle_timeout: duration(|| format!("{path}.http.idle_timeout"), &http.idle_timeout)?,
            forwarded_for: http.forwarded_for,
            forwarded: http.forwarded,
            max_concurrent_streams: http.max_concurrent_streams,
            redirect_https: match &http.redirect_https {
                Some(redirect) => Some((
                    http::StatusCode::from_u16(redirect.status)
                        .map_err(|e| invalid(format!("{path}.http.redirect_https.status"), e))?,
                    redirect.port,
                )),
                None => None,
            },
        },
        tcp_idle_timeout: duration(|| format!("{path}.tcp.idle_timeout"), &listener.tcp.idle_timeout)?,
        tcp_route: if listener.protocol == ListenerProtocol::Tcp {
            Some(0).filter(|_| !routes.is_empty())
        } else {
            tcp_route
        },
        routes,
        routes_by_connection,
        routes_by_source,
        transparent: match &listener.transparent {
            Some(transparent) => Some(TransparentSettings {
                unmatched: transparent.unmatched,
                connect_timeout: duration(
                    || format!("{path}.transparent.connect_timeout"),
                    &transparent.connect_timeout,
                )?,
            }),
            None => None,
        },
        tls,
        passthrough,
        access: listener.access.as_ref().map(crate::tls::AllowList::compile),
        mqtt: MqttSettings {
            max_packet_size: listener.mqtt.max_packet_size,
            connect_timeout: duration(|| format!("{path}.mqtt.connect_timeout"), &listener.mqtt.connect_timeout)?,
            keepalive_factor: listener.mqtt.keepalive_factor,
            publish_rate: match &listener.mqtt.publish_rate {
                Some(rate) => Some(
                    crate::mqtt::publish_rate::PublishRate::compile(rate)
                        .map_err(|m| invalid(format!("{path}.mqtt.publish_rate"), m))?,
                ),
                None => None,
            },
            access: crate::mqtt::access::Access::compile(&format!("{path}.mqtt"), &listener.mqtt)
                .map_err(|m| invalid(format!("{path}.mqtt"), m))?,
            topic_counts: listener.mqtt.topic_metrics.as_ref().map(|config| {
                let key = format!("listener/{}/mqtt_topic_metrics", listener.name);
                let name: Arc<str> = listener.name.as_str().into();
                registry.policy_state(key, policy_hash(config), || TopicCounts::new(metrics, &name, config)).0
            }),
            topic_alias_maximum: listener.mqtt.topic_alias_maximum,
        },
        metrics: ListenerMetrics {
            active: metrics
                .connections_active
                .get_or_create(&ListenerLabels { listener: listener.name.clone() })
                .clone(),
            accepted_http1: connection("http1"),
            accepted_http2: connection("http2"),
            accepted_tcp: connection("tcp"),
            accepted_unmatched: connection("unmatched_passthrough"),
            accepted_mqtt: connection("mqtt"),
            bytes_rx: direction("rx"),
            bytes_tx: direction("tx"),
            unrouted: RequestMetrics::new(metrics, &listener.name, "", ""),
            local_replies: ReasonCounters::new(&LOCAL_REPLY_REASONS, |reason| {
                let labels = LocalReplyLabels { listener: listener.name.clone(), reason };
                metrics.http_local_replies.get_or_create(&labels).clone()
            }),
            mqtt: crate::mqtt::metrics::MqttMetrics::new(metrics, &listener.name),
            tls_handshakes: ReasonCounters::new(crate::tls::HANDSHAKE_RESULTS, |reason| {
                let labels = LocalReplyLabels { listener: listener.name.clone(), reason };
                metrics.tls_handshakes.get_or_create(&labels).clone()
            }),
            access_denied: ReasonCounters::new(&["http", "tcp", "mqtt"], |reason| {
                let labels = LocalReplyLabels { listener: listener.name.clone(), reason };
                metrics.access_denied.get_or_create(&labels).clone()
            }),
        },
        rate_limit: request_limiter(
            registry,
            metrics,
            || format!("{path}.rate_limit"),
            || format!("listener/{}", listener.name),
            listener.rate_limit.as_ref(),
        )?,
        connection_rate_limit: connection_limiter(
            registry,
            metrics,
            || format!("{path}.connection_rate_limit.per"),
            format!("listener/{}/connections", listener.name),
            listener.connection_rate_limit.as_ref(),
        )?,
        bandwidth: crate::policy::throttle::BandwidthLimits::compile(
            &listener.bandwidth,
            registry,
            &format!("listener/{}/bandwidth", listener.name),
            policy_hash(&listener.bandwidth),
        )
        .map_err(|m| invalid(format!("{path}.bandwidth"), m))?,
        name,
    })
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    path: RoutePath<'_>,
    index: usize,
    listener: &Name,
    route: &config_model::Route,
    clusters: &ClusterIndex<'_>,
    registry: &Registry,
    metrics: &Metrics,
) -> Result<Route, CompileError> {
    let name: Arc<str> = match &route.name {
        Some(name) => name.as_str().into(),
        None => format!("route-{index}").into(),
    };
    let label = Name::new(&name);
    let m = &route.matches;
    let path_matcher = match &m.path {
        None => None,
        Some(PathMatch::Exact(exact)) => Some(PathMatcher::Exact(exact.as_str().into())),
        Some(PathMatch::Prefix(prefix)) => Some(PathMatcher::Prefix(prefix.as_str().into())),
        Some(PathMatch::Regex(pattern)) => Some(PathMatcher::Regex(
            regex::Regex::new(&anchored(pattern)).map_err(|e| invalid(format!("{path}.match.path.regex"), e))?,
        )),
    };
    let mut headers = Vec::new();
    for (header, check) in &m.headers {
        let header_path = || format!("{path}.match.headers.{header}");
        let name = HeaderName::from_bytes(header.as_bytes()).map_err(|e| invalid(header_path(), e))?;
        let check = match check {
            HeaderMatch::Exact(value) => HeaderCheck::Exact(value.as_bytes().into()),
            HeaderMatch::Rule(rule) => match (&rule.exact, &rule.regex, rule.present) {
                (Some(value), None, None) => HeaderCheck::Exact(value.as_bytes().into()),
                (None, Some(pattern), None) => HeaderCheck::Regex(
                    regex::bytes::Regex::new(&anchored(pattern)).map_err(|e| invalid(header_path(), e))?,
                ),
                (None, None, Some(present)) => HeaderCheck::Present(present),
                _ => return Err(invalid(header_path(), "give exactly one of exact, regex, present")),
            },
        };
        headers.push((name, check));
    }
    let string_matcher = |field: &str, criterion: &Option<PathMatch>| -> Result<Option<PathMatcher>, CompileError> {
        criterion
            .as_ref()
            .map(|criterion| {
                PathMatcher::compile(criterion).map_err(|e| invalid(format!("{path}.match.{field}.regex"), e))
            })
            .transpose()
    };
    let mqtt = m.has_mqtt_criteria().then_some(()).map(|()| -> Result<_, CompileError> {
        Ok(MqttMatcher {
            client_id: string_matcher("client_id", &m.client_id)?,
            username: string_matcher("username", &m.username)?,
        })
    });
    let mqtt = mqtt.transpose()?;
    let matcher = RouteMatcher {
        host: m.host.as_deref().map(HostMatcher::new),
        path: path_matcher,
        headers,
        methods: m
            .method
            .as_ref()
            .map(|methods| methods.as_slice().iter().map(|m| m.as_str().into()).collect())
            .unwrap_or_default(),
    };

    let entries: Vec<(&str, u32)> = match (&route.cluster, &route.split) {
        (Some(cluster), None) => vec![(cluster.as_str(), 1)],
        (None, Some(split)) => split.iter().map(|e| (e.cluster.as_str(), e.weight)).collect(),
        _ => Vec::new(),
    };
    let direct = match &route.direct_response {
        Some(direct) => Some(DirectResponse {
            status: http::StatusCode::from_u16(direct.status)
                .map_err(|e| invalid(format!("{path}.direct_response.status"), e))?,
            body: bytes::Bytes::from(direct.body.clone()),
            content_type: HeaderValue::from_str(&direct.content_type)
                .map_err(|e| invalid(format!("{path}.direct_response.content_type"), e))?,
            metrics: RequestMetrics::shared(metrics, listener, &label, &"".into()),
        }),
        None if entries.is_empty() => return Err(invalid(path, "give one of cluster, split, direct_response")),
        None => None,
    };
    let mut targets = Vec::with_capacity(entries.len());
    for (cluster, weight) in entries {
        let (index, cluster) =
            clusters.get(cluster).ok_or_else(|| invalid(path, format!("unknown cluster {cluster:?}")))?;
        let tcp_counter = |direction| {
            metrics
                .tcp_bytes
                .get_or_create(&TcpLabels { listener: listener.clone(), cluster: cluster.clone(), direction })
                .clone()
        };
        targets.push(Target {
            cluster: *index,
            weight,
            metrics: RequestMetrics::shared(metrics, listener, &label, cluster),
            tcp_bytes: matcher.is_empty().then(|| TcpBytes { rx: tcp_counter("rx"), tx: tcp_counter("tx") }),
        });
    }

    let timeout = match &route.timeout {
        Some(value) => Some(duration(|| format!("{path}.timeout"), value)?).filter(|t| !t.is_zero()),
        None => Some(config_model::defaults::route_timeout()),
    };
    Ok(Route {
        name: name.clone(),
        sni: m.sni.as_deref().map(HostMatcher::new),
        destination: match &m.destination {
            Some(destination) => Some(DestinationMatcher {
                networks: networks(|| format!("{path}.match.destination"), &destination.addresses)?,
                ports: destination.ports.as_slice().into(),
            }),
            None => None,
        },
        source: match &m.source {
            Some(source) => {
                Some(SourceMatcher { networks: networks(|| format!("{path}.match.source"), &source.addresses)? })
            }
            None => None,
        },
        access: route.access.as_deref().map(crate::tls::AllowList::compile),
        jwt: match &route.jwt {
            Some(jwt) => Some(Arc::new(
                crate::policy::jwt::JwtVerifier::compile(jwt).map_err(|m| invalid(format!("{path}.jwt"), m))?,
            )),
            None => None,
        },
        matcher,
        mqtt,
        direct,
        split: Split::new(targets),
        timeout,
        request_edits: header_edits(|| format!("{path}.request_headers"), &route.request_headers)?,
        response_edits: header_edits(|| format!("{path}.response_headers"), &route.response_headers)?,
        retry: match &route.retry {
            Some(retry) => Some(RetryPolicy::compile(retry).map_err(|m| invalid(format!("{path}.retry"), m))?),
            None => None,
        },
        rate_limit: request_limiter(
            registry,
            metrics,
            || format!("{path}.rate_limit"),
            || format!("route/{listener}/{name}"),
            route.rate_limit.as_deref(),
        )?,
        connection_rate_limit: connection_limiter(
            registry,
            metrics,
            || format!("{path}.connection_rate_limit.per"),
            format!("route/{listener}/{name}/connections"),
            route.connection_rate_limit.as_deref(),
        )?,
    })
}

/// The networks of a `match.destination` or `match.source` at `path`.
fn networks(path: impl Fn() -> String, addresses: &[String]) -> Result<Box<[config_model::Cidr]>, CompileError> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, text)| text.parse().map_err(|e| invalid(format!("{}.addresses[{i}]", path()), e)))
        .collect()
}

/// Hash of a policy's config, so its running state is kept while it is unchanged.
fn policy_hash<T: serde::Serialize>(policy: &T) -> u64 {
    let text = serde_json::to_vec(policy).unwrap_or_default();
    crate::balance::hash64(&text)
}

fn request_limiter(
    registry: &Registry,
    metrics: &Metrics,
    path: impl FnOnce() -> String,
    key: impl FnOnce() -> String,
    limit: Option<&config_model::RateLimit>,
) -> Result<Option<Arc<RequestLimiter>>, CompileError> {
    let Some(limit) = limit else { return Ok(None) };
    let key = key();
    let compiled = RequestLimiter::compile(limit, refusals(metrics, &key)).map_err(|m| invalid(path(), m))?;
    Ok(Some(registry.policy_state(key, policy_hash(limit), || compiled).0))
}

/// A connection rate limit's bucket (kept across reloads under `key`) and refusal counter.
fn connection_limiter(
    registry: &Registry,
    metrics: &Metrics,
    per_path: impl Fn() -> String,
    key: String,
    limit: Option<&config_model::ConnectionRateLimit>,
) -> Result<Option<ConnectionRateLimit>, CompileError> {
    let Some(limit) = limit else { return Ok(None) };
    let per = duration(per_path, &limit.per)?;
    let burst = limit.burst.unwrap_or(limit.connections);
    let refused = refusals(metrics, &key);
    let (bucket, _) = registry.policy_state(key, policy_hash(limit), || {
        crate::policy::rate_limit::TokenBucket::new(limit.connections, per, burst, tokio::time::Instant::now())
    });
    Ok(Some(ConnectionRateLimit { bucket, refused }))
}

/// The refusal counter of the rate limiter kept under `key`.
fn refusals(metrics: &Metrics, key: &str) -> prometheus_client::metrics::counter::Counter {
    metrics.rate_limited.get_or_create(&LimiterLabels { limiter: Name::new(key) }).clone()
}

fn header_edits(path: impl Fn() -> String, edits: &config_model::HeaderEdits) -> Result<HeaderEdits, CompileError> {
    if edits.is_empty() {
        return Ok(HeaderEdits::default());
    }
    let name = |text: &str| HeaderName::from_bytes(text.as_bytes()).map_err(|e| invalid(path(), e));
    let pair = |(n, v): (&String, &String)| -> Result<(HeaderName, HeaderValue), CompileError> {
        Ok((name(n)?, HeaderValue::from_str(v).map_err(|e| invalid(path(), e))?))
    };
    Ok(HeaderEdits {
        remove: edits.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
        set: edits.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: edits.add.iter().map(pair).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ConnFacts;

    /// A validated config, compiled as a first load.
    fn compiled(config: config_model::Config) -> RouteTable {
        config_model::validate(&config).unwrap();
        let (registry, metrics) = (crate::state::Registry::default(), Metrics::new());
        compile(Arc::new(config), 0, 1, &registry, &metrics).unwrap()
    }

    /// `match.source` as osm-edge's AllowedEndpoints use it: only listed
    /// clients reach the route, and a transparent listener refuses a
    /// connection no route would take from its client.
    #[test]
    fn routes_can_require_a_client_source() {
        let config = config_model::from_yaml_str(
            r#"
listeners:
  - name: inbound
    bind: 127.0.0.1:0
    protocol: tcp
    transparent: { unmatched: refuse }
    routes:
      - name: from-buyers
        match: { destination: { ports: [14001] }, source: { addresses: [10.244.1.7, "10.250.0.0/16"] } }
        cluster: app
clusters:
  - { name: app, endpoints: ["127.0.0.1:3"] }
"#,
        )
        .unwrap();
        let table = compiled(config);
        let inbound = table.listeners.iter().flatten().next().unwrap();
        assert!(inbound.routes_by_source && inbound.routes_by_connection);
        let facts = |source: &str| ConnFacts {
            destination: Some("10.244.2.9:14001".parse().unwrap()),
            source: Some(source.parse().unwrap()),
            ..ConnFacts::default()
        };
        assert!(inbound.tcp_route_for(&facts("10.244.1.7")).is_some());
        assert!(inbound.tcp_route_for(&facts("10.250.3.3")).is_some());
        assert!(inbound.tcp_route_for(&facts("10.244.1.8")).is_none(), "not listed");
        assert!(inbound.tcp_route_for(&ConnFacts::default()).is_none(), "unknown source");
        let destination = "10.244.2.9:14001".parse().unwrap();
        assert!(inbound.may_route(destination, "10.244.1.7".parse().unwrap()));
        assert!(!inbound.may_route(destination, "10.244.1.8".parse().unwrap()));
    }

    /// Routing by original destination, with the destination a transparent
    /// listener would read from the socket given directly.
    #[test]
    fn transparent_listeners_route_by_original_destination() {
        let config = config_model::from_yaml_str(
            r#"
listeners:
  - name: outbound
    bind: 127.0.0.1:0
    transparent: { unmatched: refuse }
    routes:
      - name: bookstore
        match: { destination: { addresses: [10.96.0.0/16, "fd00::/8"], ports: [8080] } }
        cluster: bookstore
      - name: any-port-of-db
        match: { destination: { addresses: [10.1.2.3] } }
        cluster: db
  - name: inbound
    bind: 127.0.0.1:0
    protocol: tcp
    transparent: {}
    routes:
      - match: { destination: { ports: [9000] } }
        cluster: app
clusters:
  - { name: bookstore, endpoints: ["127.0.0.1:1"] }
  - { name: db, endpoints: ["127.0.0.1:2"] }
  - { name: app, endpoints: ["127.0.0.1:3"] }
"#,
        )
        .unwrap();
        let table = compiled(config);
        let outbound = table.listeners.iter().flatten().find(|l| &*l.name == "outbound").unwrap();
        let inbound = table.listeners.iter().flatten().find(|l| &*l.name == "inbound").unwrap();
        assert_eq!(outbound.transparent.as_ref().unwrap().unmatched, config_model::Unmatched::Refuse);
        assert_eq!(inbound.transparent.as_ref().unwrap().unmatched, config_model::Unmatched::Passthrough);

        let client: std::net::IpAddr = "10.244.0.9".parse().unwrap();
        let to = |addr: &str| ConnFacts { destination: Some(addr.parse().unwrap()), ..ConnFacts::default() };
        let route =
            |listener: &ListenerTable, addr: &str| listener.tcp_route_for(&to(addr)).map(|r| r.name.to_string());
        assert_eq!(route(outbound, "10.96.3.4:8080").as_deref(), Some("bookstore"));
        assert_eq!(route(outbound, "[fd00::1]:8080").as_deref(), Some("bookstore"));
        assert_eq!(route(outbound, "[::ffff:10.96.0.1]:8080").as_deref(), Some("bookstore"), "v4-mapped");
        assert_eq!(route(outbound, "10.96.3.4:8081"), None, "wrong port");
        assert_eq!(route(outbound, "10.97.0.1:8080"), None, "outside the network");
        assert_eq!(route(outbound, "10.1.2.3:5432").as_deref(), Some("any-port-of-db"));
        assert!(outbound.may_route("10.1.2.3:1".parse().unwrap(), client));
        assert!(!outbound.may_route("192.0.2.1:80".parse().unwrap(), client), "no route: unmatched applies");
        // A connection without a known destination matches no destination criterion.
        assert_eq!(outbound.tcp_route_for(&ConnFacts::default()).map(|r| r.name.to_string()), None);

        assert_eq!(route(inbound, "10.0.0.5:9000").as_deref(), Some("route-0"));
        assert_eq!(route(inbound, "10.0.0.5:9001"), None);
    }
}

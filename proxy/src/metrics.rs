//! Prometheus metrics.
//!
//! The families live in one registry for the life of the process (so counters
//! stay monotonic across reloads). The hot path never looks a series up by
//! labels: the route-table compiler resolves every series a route, cluster or
//! listener will touch and stores the handles in the table, so recording a
//! request is a few atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A label value shared by many series: a route's, cluster's or listener's
/// name. A big config has a hundred thousand per-route and per-cluster
/// series; with `Name` every series of one route or cluster shares the name
/// (one pointer) instead of owning a copy, and a family hashes a label set
/// from hashes computed once per name instead of rehashing the text for
/// every lookup (a series is looked up three times when it is created, and
/// rehashed whenever its family grows). Compared and encoded as its text.
#[derive(Clone)]
pub struct Name(Arc<NameInner>);

struct NameInner {
    hash: u64,
    text: Box<str>,
}

impl Name {
    pub fn new(text: &str) -> Self {
        // Keyed per process, like the families' own hashers.
        static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
        let hash = std::hash::BuildHasher::hash_one(KEYS.get_or_init(std::hash::RandomState::new), text);
        Name(Arc::new(NameInner { hash, text: text.into() }))
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Self {
        Name::new(text)
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || (self.0.hash == other.0.hash && self.0.text == other.0.text)
    }
}

impl Eq for Name {}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Name,
    pub route: Name,
    pub cluster: Name,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: Name,
    pub route: Name,
    pub cluster: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub listener: String,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub listener: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalReplyLabels {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectErrorLabels {
    pub cluster: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    pub limiter: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedByLabels {
    pub cluster: Name,
    pub by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub cluster: Name,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub cluster: Name,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MqttPacketLabels {
    pub listener: String,
    pub direction: &'static str,
    pub packet: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MqttQosLabels {
    pub listener: String,
    pub qos: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MqttTopicLabels {
    pub listener: String,
    /// The first levels of the topic, or `#other` past the series bound
    /// (`#` cannot appear in a PUBLISH topic, so it never collides).
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub listener: Name,
    pub cluster: Name,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `listener NAME`, `cluster NAME`.
    pub used_by: String,
    pub subject: String,
    pub serial: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigInfoLabels {
    pub version: String,
    pub hash: String,
}

/// Latency buckets in seconds: 0.5 ms to an hour. The ones past 60 s are
/// osm-edge's (`osm_request_duration_ms`), for long polls and streams.
const LATENCY_BUCKETS: [f64; 20] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// A histogram updated with atomics only (prometheus-client's own takes a
/// mutex per observation).
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    /// Per-bucket counts (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
        self.inner.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); LATENCY_BUCKETS.len() + 1];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.inner.buckets[i].load(Ordering::Relaxed);
            count += n;
            *slot = (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n);
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_duration: Family<RouteLabels, LatencyHistogram>,
    pub http_local_replies: Family<LocalReplyLabels, Counter>,
    pub connections_active: Family<ListenerLabels, Gauge>,
    pub connections_total: Family<ConnectionLabels, Counter>,
    pub downstream_bytes: Family<DirectionLabels, Counter>,
    pub tcp_bytes: Family<TcpLabels, Counter>,
    /// The series of each cluster (`edgeplane_upstream_*`), outside families.
    clusters: Arc<ClusterSeries>,
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub mqtt_packets: Family<MqttPacketLabels, Counter>,
    pub mqtt_publishes: Family<MqttQosLabels, Counter>,
    pub mqtt_rejections: Family<LocalReplyLabels, Counter>,
    pub mqtt_topic_publishes: Family<MqttTopicLabels, Counter>,
    pub mqtt_topic_bytes: Family<MqttTopicLabels, Counter>,
    pub tls_handshakes: Family<LocalReplyLabels, Counter>,
    pub tls_cert_expiry: Family<CertLabels, Gauge>,
    pub tls_rotations: Family<ReloadLabels, Counter>,
    pub access_denied: Family<LocalReplyLabels, Counter>,
    pub rate_limited: Family<LimiterLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub config_generation: Gauge,
    pub config_last_success: Gauge,
    pub config_info: Family<ConfigInfoLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// For metrics owned elsewhere (the control-plane client's), registered
    /// before the proxy starts.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("edgeplane");
        let metrics = Metrics {
            http_requests: Family::default(),
            http_request_duration: Family::default(),
            http_local_replies: Family::default(),
            connections_active: Family::default(),
            connections_total: Family::default(),
            downstream_bytes: Family::default(),
            tcp_bytes: Family::default(),
            clusters: Arc::default(),
            endpoint_healthy: Family::default(),
            mqtt_packets: Family::default(),
            mqtt_publishes: Family::default(),
            mqtt_rejections: Family::default(),
            mqtt_topic_publishes: Family::default(),
            mqtt_topic_bytes: Family::default(),
            tls_handshakes: Family::default(),
            tls_cert_expiry: Family::default(),
            tls_rotations: Family::default(),
            access_denied: Family::default(),
            rate_limited: Family::default(),
            config_reloads: Family::default(),
            config_generation: Gauge::default(),
            config_last_success: Gauge::default(),
            config_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by listener, route, cluster and response status class",
            metrics.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request start to response headers",
            metrics.http_request_duration.clone(),
        );
        registry.register(
            "http_local_replies",
            "Responses generated by the proxy itself, by reason",
            metrics.http_local_replies.clone(),
        );
        registry.register(
            "downstream_connections_active",
            "Client connections open now",
            metrics.connections_active.clone(),
        );
        registry.register(
            "downstream_connections",
            "Client connections accepted, by detected protocol",
            metrics.connections_total.clone(),
        );
        registry.register(
            "downstream_bytes",
            "Bytes received from (rx) and sent to (tx) clients",
            metrics.downstream_bytes.clone(),
        );
        registry.register(
            "tcp_bytes",
            "Bytes relayed on opaque TCP connections, by direction (rx: from client, tx: to client)",
            metrics.tcp_bytes.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes of client connections by listener and result (ok, or why it failed)",
            metrics.tls_handshakes.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of each certificate in use",
            metrics.tls_cert_expiry.clone(),
        );
        registry.register(
            "tls_rotations",
            "Certificate reloads after their files changed, by result (applied or rejected)",
            metrics.tls_rotations.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests and connections refused by a local rate limit, by limiter (listener/<name>, \
             route/<listener>/<route>, cluster/<name>, listener/<name>/connections)",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "access_denied",
            "Connections and requests refused by identity-based access control, by listener and protocol",
            metrics.access_denied.clone(),
        );
        registry.register(
            "upstream_endpoint_healthy",
            "1 while an endpoint passes its active health checks, 0 while it fails them",
            metrics.endpoint_healthy.clone(),
        );
        registry.register(
            "mqtt_packets",
            "MQTT packets by type and direction (in: from clients, out: to clients)",
            metrics.mqtt_packets.clone(),
        );
        registry.register("mqtt_publishes", "PUBLISH packets from clients, by QoS", metrics.mqtt_publishes.clone());
        registry.register(
            "mqtt_rejections",
            "MQTT connections refused or closed for a protocol or policy reason",
            metrics.mqtt_rejections.clone(),
        );
        registry.register(
            "mqtt_topic_publishes",
            "PUBLISH packets from clients by topic prefix (listeners with mqtt.topic_metrics)",
            metrics.mqtt_topic_publishes.clone(),
        );
        registry.register(
            "mqtt_topic_publish_bytes",
            "PUBLISH bytes (whole packets) from clients by topic prefix",
            metrics.mqtt_topic_bytes.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reload attempts by result (success, failure, unchanged)",
            metrics.config_reloads.clone(),
        );
        registry.register(
            "config_generation",
            "Number of route tables published since start",
            metrics.config_generation.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last published config",
            metrics.config_last_success.clone(),
        );
        registry.register(
            "config_info",
            "The active config's version label and content hash (value 1)",
            metrics.config_info.clone(),
        );
        registry.register_collector(Box::new(ClusterCollector(metrics.clusters.clone())));
        Metrics { registry, ..metrics }
    }

    /// The series of a cluster, made the first time a config has it.
    pub fn cluster(&self, name: &str) -> Arc<ClusterMetrics> {
        self.clusters.get(name)
    }

    /// Drops the series of clusters the live config no longer has.
    pub fn retain_clusters(&self, live: impl Fn(&str) -> bool) {
        self.clusters.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|name, _| live(name));
    }

    /// Prometheus/OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// `reason` label values of `edgeplane_upstream_connect_errors_total`.
pub const CONNECT_ERROR_REASONS: [&str; 5] = ["timeout", "refused", "error", "handshake", "tls"];

/// The series of one cluster, shared by its endpoints.
///
/// They live outside label families: a mesh config has thousands of
/// clusters, and resolving seventeen family entries per cluster (a lock, a
/// hash and an insert each) was half the time of compiling a 5,000-service
/// config. Here a new cluster costs one map entry; the series are written
/// out at scrape time by [`ClusterCollector`] and leave `/metrics` when the
/// cluster leaves the config (as Envoy drops a removed cluster's stats).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub connections_active: Gauge,
    pub connections_total: Counter,
    pub requests_active: Gauge,
    pub pool_idle: Gauge,
    /// In [`CONNECT_ERROR_REASONS`] order.
    pub connect_errors: [Counter; 5],
    /// In [`OVERLOAD_REASONS`](crate::policy::limits::OVERLOAD_REASONS) order.
    pub overflow: [Counter; 4],
    pub ejections: Counter,
    pub retries: Counter,
    /// `edgeplane_tls_upstream_handshake_errors_total{cluster, reason="handshake"}`.
    pub tls_handshake_errors: Counter,
    /// `edgeplane_upstream_responses_total{cluster, code}`: HTTP responses
    /// for the cluster's routes by status code.
    pub responses: StatusCodes,
    /// Tries that got no response head in time / whose stream or
    /// connection failed before it.
    pub timeouts: Counter,
    pub resets: Counter,
    /// Tries edgeplane gave up before the response head: a timeout fired or
    /// the client went away (Envoy's `upstream_rq_tx_reset`).
    pub cancelled: Counter,
    /// Tries that failed because their connection could not be made
    /// (Envoy's `upstream_rq_pending_failure_eject`).
    pub connect_failed: Counter,
    /// Connections closed while a request was on them, in
    /// [`CLOSED_BY`] order (Envoy's `upstream_cx_destroy_{local,remote}_with_active_rq`).
    pub closed_mid_request: [Counter; 2],
}

/// `by` label values of `edgeplane_upstream_connections_closed_mid_request_total`.
pub const CLOSED_BY: [&str; 2] = ["local", "remote"];

/// Counts by HTTP status code (100-599). A class's hundred counters are
/// allocated at its first response, so a cluster pays for the classes it
/// sees: Envoy-style per-code stats without 500 counters per cluster.
#[derive(Debug, Default)]
pub struct StatusCodes([std::sync::OnceLock<Box<[AtomicU64; 100]>>; 5]);

impl StatusCodes {
    pub fn inc(&self, status: u16) {
        let Some(class) = self.0.get(usize::from(status / 100).wrapping_sub(1)) else { return };
        let counts = class.get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        counts[usize::from(status % 100)].fetch_add(1, Ordering::Relaxed);
    }

    /// The codes seen so far and their counts, in order.
    pub fn seen(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.0.iter().zip(1u16..).filter_map(|(class, hundreds)| Some((class.get()?, hundreds))).flat_map(
            |(counts, hundreds)| {
                counts
                    .iter()
                    .zip(0u16..)
                    .map(move |(count, unit)| (hundreds * 100 + unit, count.load(Ordering::Relaxed)))
                    .filter(|(_, count)| *count > 0)
            },
        )
    }
}

impl ClusterMetrics {
    /// Counts a try that ended without a response head, by why.
    pub fn try_failed(&self, error: &crate::error::ProxyError) {
        use crate::error::ProxyError;
        match error {
            ProxyError::UpstreamTimeout => {
                self.cancelled.inc();
                self.timeouts.inc()
            }
            ProxyError::Upstream(_) | ProxyError::RefusedStream => self.resets.inc(),
            ProxyError::Connect(error) if !matches!(error, crate::error::ConnectError::Overloaded(_)) => {
                self.connect_failed.inc()
            }
            _ => 0,
        };
    }

    /// Counts a connection that ended with a request on it.
    pub fn closed_mid_request(&self, by_remote: bool) {
        self.closed_mid_request[usize::from(by_remote)].inc();
    }

    /// Counts a try abandoned when the future driving it is dropped before
    /// [`TryWatch::settled`] (the client went away).
    pub fn watch_try(&self) -> TryWatch<'_> {
        TryWatch(Some(self))
    }

    pub fn connect_error(&self, reason: &'static str) {
        if let Some(index) = CONNECT_ERROR_REASONS.iter().position(|known| *known == reason) {
            self.connect_errors[index].inc();
        }
    }
}

/// See [`ClusterMetrics::watch_try`].
pub struct TryWatch<'a>(Option<&'a ClusterMetrics>);

impl TryWatch<'_> {
    /// The try ended one way or another while someone was waiting for it.
    pub fn settled(mut self) {
        self.0 = None;
    }
}

impl Drop for TryWatch<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.cancelled.inc();
        }
    }
}

/// Cluster name → its series. Only compiles (get) and publishes (retain)
/// take the lock, and scrapes for as long as it takes to copy the handles.
#[derive(Default)]
struct ClusterSeries(std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<ClusterMetrics>>>);

impl ClusterSeries {
    fn get(&self, name: &str) -> Arc<ClusterMetrics> {
        let mut clusters = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = clusters.get(name) {
            return existing.clone();
        }
        let made = Arc::new(ClusterMetrics::default());
        clusters.insert(name.into(), made.clone());
        made
    }

    /// The clusters with their series, by name.
    fn snapshot(&self) -> Vec<(Name, Arc<ClusterMetrics>)> {
        let clusters = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut snapshot: Vec<_> = clusters.iter().map(|(name, series)| (Name::new(name), series.clone())).collect();
        drop(clusters);
        snapshot.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        snapshot
    }
}

/// Writes every cluster's series at scrape time, family by family.
struct ClusterCollector(Arc<ClusterSeries>);

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl prometheus_client::collector::Collector for ClusterCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Help texts end with a full stop, as `Registry::register` writes them.
        let clusters = self.0.snapshot();
        let mut family = |name: &str,
                          help: &str,
                          metric_type: MetricType,
                          write: &dyn Fn(&mut MetricEncoder, &Name, &ClusterMetrics) -> Result<(), std::fmt::Error>|
         -> Result<(), std::fmt::Error> {
            let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (cluster, series) in &clusters {
                write(&mut metric, cluster, series)?;
            }
            Ok(())
        };
        // A series labelled with the cluster only.
        let one = |metric: &mut MetricEncoder, cluster: &Name, value: &dyn EncodeMetric| {
            value.encode(metric.encode_family(&ClusterLabels { cluster: cluster.clone() })?)
        };
        family("upstream_connections_active", "Upstream connections open now.", MetricType::Gauge, &|m, c, s| {
            one(m, c, &s.connections_active)
        })?;
        family("upstream_connections", "Upstream connections established.", MetricType::Counter, &|m, c, s| {
            one(m, c, &s.connections_total)
        })?;
        family(
            "upstream_connect_errors",
            "Failed upstream connection attempts, by reason.",
            MetricType::Counter,
            &|m, c, s| {
                for (reason, counter) in CONNECT_ERROR_REASONS.iter().zip(&s.connect_errors) {
                    counter.encode(m.encode_family(&ConnectErrorLabels { cluster: c.clone(), reason })?)?;
                }
                Ok(())
            },
        )?;
        family("upstream_requests_active", "Requests in flight to a cluster.", MetricType::Gauge, &|m, c, s| {
            one(m, c, &s.requests_active)
        })?;
        family(
            "upstream_pool_idle_connections",
            "Idle pooled HTTP/1 upstream connections.",
            MetricType::Gauge,
            &|m, c, s| one(m, c, &s.pool_idle),
        )?;
        family(
            "upstream_overflow",
            "Requests refused because a cluster limit was full, by limit.",
            MetricType::Counter,
            &|m, c, s| {
                for (limit, counter) in crate::policy::limits::OVERLOAD_REASONS.iter().zip(&s.overflow) {
                    counter.encode(m.encode_family(&LimitLabels { cluster: c.clone(), limit })?)?;
                }
                Ok(())
            },
        )?;
        family("upstream_ejections", "Endpoints ejected by outlier detection.", MetricType::Counter, &|m, c, s| {
            one(m, c, &s.ejections)
        })?;
        family("upstream_retries", "Retries sent to a cluster.", MetricType::Counter, &|m, c, s| {
            one(m, c, &s.retries)
        })?;
        family(
            "upstream_timeouts",
            "Tries to a cluster that got no response head in time (route or per-try timeout).",
            MetricType::Counter,
            &|m, c, s| one(m, c, &s.timeouts),
        )?;
        family(
            "upstream_resets",
            "Tries to a cluster whose connection or stream failed before the response head.",
            MetricType::Counter,
            &|m, c, s| one(m, c, &s.resets),
        )?;
        family(
            "upstream_cancelled",
            "Tries to a cluster given up before the response head: a timeout fired or the client went away.",
            MetricType::Counter,
            &|m, c, s| one(m, c, &s.cancelled),
        )?;
        family(
            "upstream_connect_failed_requests",
            "Tries to a cluster that failed because no connection could be made.",
            MetricType::Counter,
            &|m, c, s| one(m, c, &s.connect_failed),
        )?;
        family(
            "upstream_connections_closed_mid_request",
            "Upstream connections that closed with a request on them, by the side that closed them.",
            MetricType::Counter,
            &|m, c, s| {
                for (by, counter) in CLOSED_BY.iter().zip(&s.closed_mid_request) {
                    counter.encode(m.encode_family(&ClosedByLabels { cluster: c.clone(), by })?)?;
                }
                Ok(())
            },
        )?;
        family(
            "upstream_responses",
            "HTTP responses on a cluster's routes, by status code (codes seen so far).",
            MetricType::Counter,
            &|m, c, s| {
                for (code, count) in s.responses.seen() {
                    let counter = prometheus_client::metrics::counter::ConstCounter::new(count);
                    counter.encode(m.encode_family(&CodeLabels { cluster: c.clone(), code })?)?;
                }
                Ok(())
            },
        )?;
        family(
            "tls_upstream_handshake_errors",
            "Failed TLS handshakes with upstream endpoints, by cluster and reason.",
            MetricType::Counter,
            &|m, c, s| {
                let labels = ConnectErrorLabels { cluster: c.clone(), reason: "handshake" };
                s.tls_handshake_errors.encode(m.encode_family(&labels)?)
            },
        )
    }
}

/// Counters for one (listener, route, cluster): one per status class, plus the latency histogram.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    by_class: [Counter; 5],
    duration: LatencyHistogram,
    /// The cluster's series, for its by-code counts; none for direct responses.
    cluster: Option<Arc<ClusterMetrics>>,
}

impl RequestMetrics {
    pub fn new(metrics: &Metrics, listener: &str, route: &str, cluster: &str) -> Self {
        Self::shared(metrics, &listener.into(), &route.into(), &cluster.into())
    }

    /// As [`Self::new`], with names shared with other series.
    pub fn shared(metrics: &Metrics, listener: &Name, route: &Name, cluster: &Name) -> Self {
        let series = |class| {
            metrics
                .http_requests
                .get_or_create(&RequestLabels {
                    listener: listener.clone(),
                    route: route.clone(),
                    cluster: cluster.clone(),
                    class,
                })
                .clone()
        };
        RequestMetrics {
            by_class: [series("1xx"), series("2xx"), series("3xx"), series("4xx"), series("5xx")],
            duration: metrics
                .http_request_duration
                .get_or_create(&RouteLabels {
                    listener: listener.clone(),
                    route: route.clone(),
                    cluster: cluster.clone(),
                })
                .clone(),
            cluster: (!cluster.as_str().is_empty()).then(|| metrics.cluster(cluster.as_str())),
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed);
        if let Some(cluster) = &self.cluster {
            cluster.responses.inc(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_and_encode_as_their_text() {
        let (a, b) = (Name::new("svc-1.ns"), Name::new("svc-1.ns"));
        assert_eq!(a, b, "equal text, different allocations");
        assert_ne!(a, Name::new("svc-2.ns"));
        let state = std::hash::RandomState::new();
        assert_eq!(std::hash::BuildHasher::hash_one(&state, &a), std::hash::BuildHasher::hash_one(&state, &b));

        // Two handles made from equal names are one series, encoded with its text.
        let metrics = Metrics::new();
        let first = RequestMetrics::new(&metrics, "web", "r\"1", "svc-1.ns");
        let second = RequestMetrics::shared(&metrics, &"web".into(), &Name::new("r\"1"), &b);
        first.record(200, Duration::from_millis(3));
        second.record(200, Duration::from_millis(3));
        first.record(404, Duration::from_millis(1));
        let text = metrics.encode();
        for line in [
            r#"edgeplane_upstream_responses_total{cluster="svc-1.ns",code="200"} 2"#,
            r#"edgeplane_upstream_responses_total{cluster="svc-1.ns",code="404"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("code=\"500\""), "only the codes seen");
        let line = text
            .lines()
            .find(|line| line.starts_with("edgeplane_http_requests_total{") && line.contains("class=\"2xx\""))
            .expect("the 2xx series");
        assert_eq!(
            line,
            r#"edgeplane_http_requests_total{listener="web",route="r\"1",cluster="svc-1.ns",class="2xx"} 2"#
        );
    }

    #[test]
    fn status_codes_count_each_code_and_skip_what_is_not_http() {
        let codes = StatusCodes::default();
        for status in [200, 200, 201, 503, 599, 100, 0, 99, 600, 1000] {
            codes.inc(status);
        }
        assert_eq!(codes.seen().collect::<Vec<_>>(), [(100, 1), (200, 2), (201, 1), (503, 1), (599, 1)]);
        assert!(codes.0[2].get().is_none() && codes.0[3].get().is_none(), "no 3xx or 4xx counters allocated");
    }

    #[test]
    fn cluster_series_are_written_per_cluster_and_leave_with_it() {
        let metrics = Metrics::new();
        let web = metrics.cluster("web");
        assert!(Arc::ptr_eq(&web, &metrics.cluster("web")), "one set of series per cluster");
        web.connections_total.inc();
        web.connect_error("refused");
        web.overflow[2].inc();
        web.requests_active.inc();
        metrics.cluster("db");

        let text = metrics.encode();
        for line in [
            "# TYPE edgeplane_upstream_connections counter",
            r#"edgeplane_upstream_connections_total{cluster="web"} 1"#,
            r#"edgeplane_upstream_connections_total{cluster="db"} 0"#,
            r#"edgeplane_upstream_connect_errors_total{cluster="web",reason="refused"} 1"#,
            r#"edgeplane_upstream_connect_errors_total{cluster="web",reason="timeout"} 0"#,
            r#"edgeplane_upstream_overflow_total{cluster="web",limit="max_requests"} 1"#,
            r#"edgeplane_upstream_requests_active{cluster="web"} 1"#,
            r#"edgeplane_tls_upstream_handshake_errors_total{cluster="db",reason="handshake"} 0"#,
            "# HELP edgeplane_upstream_retries Retries sent to a cluster.",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Clusters in name order within each family.
        let db = text.find(r#"edgeplane_upstream_retries_total{cluster="db"}"#).unwrap();
        let web_at = text.find(r#"edgeplane_upstream_retries_total{cluster="web"}"#).unwrap();
        assert!(db < web_at);

        metrics.retain_clusters(|name| name == "web");
        let text = metrics.encode();
        assert!(!text.contains(r#"cluster="db""#), "a removed cluster's series are gone:\n{text}");
        assert!(text.contains(r#"edgeplane_upstream_connections_total{cluster="web"} 1"#));
    }
}

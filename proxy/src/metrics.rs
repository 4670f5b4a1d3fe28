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

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: String,
    pub route: String,
    pub cluster: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: String,
    pub route: String,
    pub cluster: String,
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
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectErrorLabels {
    pub cluster: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub cluster: String,
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
    pub listener: String,
    pub cluster: String,
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

/// Latency buckets in seconds: 0.5 ms to 60 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

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
    pub upstream_connections_active: Family<ClusterLabels, Gauge>,
    pub upstream_connections_total: Family<ClusterLabels, Counter>,
    pub upstream_connect_errors: Family<ConnectErrorLabels, Counter>,
    pub upstream_requests_active: Family<ClusterLabels, Gauge>,
    pub pool_idle: Family<ClusterLabels, Gauge>,
    pub upstream_overflow: Family<LimitLabels, Counter>,
    pub upstream_ejections: Family<ClusterLabels, Counter>,
    pub upstream_retries: Family<ClusterLabels, Counter>,
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub mqtt_packets: Family<MqttPacketLabels, Counter>,
    pub mqtt_publishes: Family<MqttQosLabels, Counter>,
    pub mqtt_rejections: Family<LocalReplyLabels, Counter>,
    pub mqtt_topic_publishes: Family<MqttTopicLabels, Counter>,
    pub mqtt_topic_bytes: Family<MqttTopicLabels, Counter>,
    pub tls_handshakes: Family<LocalReplyLabels, Counter>,
    pub tls_upstream_handshake_errors: Family<ConnectErrorLabels, Counter>,
    pub tls_cert_expiry: Family<CertLabels, Gauge>,
    pub tls_rotations: Family<ReloadLabels, Counter>,
    pub access_denied: Family<LocalReplyLabels, Counter>,
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
            upstream_connections_active: Family::default(),
            upstream_connections_total: Family::default(),
            upstream_connect_errors: Family::default(),
            upstream_requests_active: Family::default(),
            pool_idle: Family::default(),
            upstream_overflow: Family::default(),
            upstream_ejections: Family::default(),
            upstream_retries: Family::default(),
            endpoint_healthy: Family::default(),
            mqtt_packets: Family::default(),
            mqtt_publishes: Family::default(),
            mqtt_rejections: Family::default(),
            mqtt_topic_publishes: Family::default(),
            mqtt_topic_bytes: Family::default(),
            tls_handshakes: Family::default(),
            tls_upstream_handshake_errors: Family::default(),
            tls_cert_expiry: Family::default(),
            tls_rotations: Family::default(),
            access_denied: Family::default(),
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
            "upstream_connections_active",
            "Upstream connections open now",
            metrics.upstream_connections_active.clone(),
        );
        registry.register(
            "upstream_connections",
            "Upstream connections established",
            metrics.upstream_connections_total.clone(),
        );
        registry.register(
            "upstream_connect_errors",
            "Failed upstream connection attempts, by reason",
            metrics.upstream_connect_errors.clone(),
        );
        registry.register(
            "upstream_requests_active",
            "Requests in flight to a cluster",
            metrics.upstream_requests_active.clone(),
        );
        registry.register(
            "upstream_pool_idle_connections",
            "Idle pooled HTTP/1 upstream connections",
            metrics.pool_idle.clone(),
        );
        registry.register(
            "upstream_overflow",
            "Requests refused because a cluster limit was full, by limit",
            metrics.upstream_overflow.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Endpoints ejected by outlier detection",
            metrics.upstream_ejections.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes of client connections by listener and result (ok, or why it failed)",
            metrics.tls_handshakes.clone(),
        );
        registry.register(
            "tls_upstream_handshake_errors",
            "Failed TLS handshakes with upstream endpoints, by cluster and reason",
            metrics.tls_upstream_handshake_errors.clone(),
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
            "access_denied",
            "Connections and requests refused by identity-based access control, by listener and protocol",
            metrics.access_denied.clone(),
        );
        registry.register("upstream_retries", "Retries sent to a cluster", metrics.upstream_retries.clone());
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
        Metrics { registry, ..metrics }
    }

    /// Prometheus/OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Counters for one (listener, route, cluster): one per status class, plus the latency histogram.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    by_class: [Counter; 5],
    duration: LatencyHistogram,
}

impl RequestMetrics {
    pub fn new(metrics: &Metrics, listener: &str, route: &str, cluster: &str) -> Self {
        let series = |class| {
            metrics
                .http_requests
                .get_or_create(&RequestLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    cluster: cluster.to_owned(),
                    class,
                })
                .clone()
        };
        RequestMetrics {
            by_class: [series("1xx"), series("2xx"), series("3xx"), series("4xx"), series("5xx")],
            duration: metrics
                .http_request_duration
                .get_or_create(&RouteLabels {
                    listener: listener.to_owned(),
                    route: route.to_owned(),
                    cluster: cluster.to_owned(),
                })
                .clone(),
        }
    }

    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed);
    }
}

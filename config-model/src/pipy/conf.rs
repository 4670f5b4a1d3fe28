//! The PipyConf document as osm-edge's controller writes it
//! (`pkg/sidecar/providers/pipy/repo/types.go`). Every struct is lenient:
//! missing fields and `null`s default, and fields this model does not know
//! land in `extra` so the translation can report them instead of dropping
//! them silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Unknown fields of an object.
pub type Extra = BTreeMap<String, Value>;

/// `null` and absent both mean the default (Go marshals nil maps and slices as `null`).
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PipyConf {
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub ts: Option<Value>,
    #[serde(default)]
    pub version: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub spec: Spec,
    #[serde(default)]
    pub certificate: Option<Certificate>,
    #[serde(default)]
    pub inbound: Option<Inbound>,
    #[serde(default)]
    pub outbound: Option<Outbound>,
    #[serde(default)]
    pub forward: Option<Value>,
    #[serde(default)]
    pub allowed_endpoints: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub chains: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "DNSResolveDB")]
    pub dns_resolve_db: Option<Value>,
    /// FSM: whether the sidecar reports metrics.
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub metrics: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Spec {
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub sidecar_log_level: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub sidecar_timeout: Option<f64>,
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub remote_logging_level: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub traffic: Traffic,
    #[serde(default, deserialize_with = "nullable")]
    pub feature_flags: BTreeMap<String, Value>,
    #[serde(default)]
    pub probes: Option<Value>,
    #[serde(default)]
    pub cluster_set: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "LocalDNSProxy")]
    pub local_dns_proxy: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Traffic {
    #[serde(default)]
    pub enable_egress: bool,
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default, rename = "HTTP1PerRequestLoadBalancing")]
    pub http1_per_request_load_balancing: bool,
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default, rename = "HTTP2PerRequestLoadBalancing")]
    pub http2_per_request_load_balancing: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Certificate {
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub common_name: Option<String>,
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub subject_alt_names: Option<Vec<String>>,
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub expiration: Option<String>,
    #[serde(default)]
    pub cert_chain: String,
    #[serde(default)]
    pub private_key: String,
    #[serde(default, rename = "IssuingCA")]
    pub issuing_ca: String,
    // Known and informational: parsed so it is not reported as unknown.
    #[allow(dead_code)]
    #[serde(default)]
    pub osm_issued: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inbound {
    #[serde(default, deserialize_with = "nullable")]
    pub traffic_matches: BTreeMap<String, InboundMatch>,
    #[serde(default, deserialize_with = "nullable")]
    pub clusters_configs: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InboundMatch {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, rename = "SourceIPRanges", deserialize_with = "nullable")]
    pub source_ip_ranges: BTreeMap<String, Option<SourceRange>>,
    #[serde(default, deserialize_with = "nullable")]
    pub http_host_port2_service: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub http_service_route_rules: BTreeMap<String, ServiceRules>,
    #[serde(default)]
    pub tcp_service_route_rules: Option<TcpRules>,
    #[serde(default)]
    pub rate_limit: Option<TcpRateLimit>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SourceRange {
    #[serde(default, rename = "mTLS")]
    pub mtls: bool,
    #[serde(default)]
    pub skip_client_cert_validation: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub authenticated_principals: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A service's HTTP rules (inbound and outbound share the shape).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRules {
    #[serde(default, deserialize_with = "nullable")]
    pub route_rules: Vec<RouteRule>,
    #[serde(default)]
    pub plugins: Option<Value>,
    #[serde(default)]
    pub rate_limit: Option<HttpRateLimitHolder>,
    #[serde(default)]
    pub allowed_endpoints: Option<BTreeMap<String, String>>,
    /// Outbound: this sidecar's identity, sent as the `serviceidentity` header.
    #[serde(default)]
    pub service_identity: Option<String>,
    #[serde(default)]
    pub egress_forward_gateway: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteRule {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default, rename = "Type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub target_clusters: BTreeMap<String, u32>,
    #[serde(default)]
    pub allowed_services: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Option<HttpRateLimitHolder>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpRateLimitHolder {
    #[serde(default)]
    pub local: Option<HttpRateLimit>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpRateLimit {
    #[serde(default)]
    pub requests: u32,
    /// Seconds.
    #[serde(default)]
    pub stat_time_window: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub response_status_code: Option<u16>,
    #[serde(default, deserialize_with = "nullable")]
    pub response_headers_to_add: Vec<NameValue>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameValue {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TcpRules {
    #[serde(default, deserialize_with = "nullable")]
    pub target_clusters: BTreeMap<String, u32>,
    #[serde(default)]
    pub plugins: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TcpRateLimit {
    #[serde(default)]
    pub local: Option<TcpLocalRateLimit>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TcpLocalRateLimit {
    #[serde(default)]
    pub connections: u32,
    #[serde(default)]
    pub stat_time_window: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Outbound {
    /// Port → match entries, most specific first.
    #[serde(default, deserialize_with = "nullable")]
    pub traffic_matches: BTreeMap<String, Vec<OutboundMatch>>,
    #[serde(default, deserialize_with = "nullable")]
    pub clusters_configs: BTreeMap<String, OutboundCluster>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OutboundMatch {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, rename = "DestinationIPRanges", deserialize_with = "nullable")]
    pub destination_ip_ranges: BTreeMap<String, Option<Value>>,
    #[serde(default, deserialize_with = "nullable")]
    pub http_host_port2_service: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub http_service_route_rules: BTreeMap<String, ServiceRules>,
    #[serde(default)]
    pub tcp_service_route_rules: Option<TcpRules>,
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_egress_traffic: Option<bool>,
    #[serde(default)]
    pub egress_forward_gateway: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OutboundCluster {
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: BTreeMap<String, Option<EndpointAttributes>>,
    #[serde(default)]
    pub connection_settings: Option<ConnectionSettings>,
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default)]
    pub source_cert: Option<Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointAttributes {
    #[serde(default)]
    pub weight: Option<u32>,
    /// Multicluster: the remote cluster's key and path prefix.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectionSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Seconds.
    #[serde(default)]
    pub connect_timeout: Option<f64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpSettings {
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub circuit_breaking: Option<CircuitBreaking>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CircuitBreaking {
    #[serde(default)]
    pub stat_time_window: Option<f64>,
    #[serde(default)]
    pub min_request_amount: Option<u32>,
    #[serde(default)]
    pub degraded_time_window: Option<f64>,
    #[serde(default)]
    pub slow_time_threshold: Option<f64>,
    #[serde(default)]
    pub slow_amount_threshold: Option<u32>,
    #[serde(default)]
    pub slow_ratio_threshold: Option<f64>,
    #[serde(default)]
    pub error_amount_threshold: Option<u32>,
    #[serde(default)]
    pub error_ratio_threshold: Option<f64>,
    #[serde(default)]
    pub degraded_status_code: Option<u16>,
    #[serde(default)]
    pub degraded_response_content: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetryPolicy {
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub per_try_timeout: Option<f64>,
    #[serde(default)]
    pub num_retries: Option<u32>,
    #[serde(default)]
    pub retry_backoff_base_interval: Option<f64>,
    #[serde(flatten)]
    pub extra: Extra,
}

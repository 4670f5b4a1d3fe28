//! Resilience policies: limits, breakers, outlier ejection, health checks,
//! retries, rate and bandwidth limits. Field names follow Envoy where Envoy
//! has the concept and osm-edge's UpstreamTrafficSetting where it does not.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{ByteRate, Duration};

/// Envoy-style thresholds of one cluster, counted over all workers. A request
/// over a limit gets a fast `503` with `x-edgeplane-overloaded` naming the
/// limit. Unset means unlimited (osm-edge's default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterLimits {
    /// Most open upstream connections to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most requests waiting for an upstream connection (a new one being
    /// dialled because none is idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Most requests in flight to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Most retries in flight to the cluster (Envoy's default is 3).
    #[serde(default = "policy_defaults::max_retries")]
    pub max_retries: u32,
    /// Requests served by one upstream HTTP/1 connection before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
}

/// What a cluster without `limits` gets: the same as `limits: {}` (a derived
/// `Default` would make `max_retries` 0 and turn every retry off).
impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_retries: policy_defaults::max_retries(),
            max_requests_per_connection: None,
        }
    }
}

/// osm-edge's "degrade" circuit breaker: once a stats window has seen
/// `min_requests`, too many errors or slow requests open the breaker for
/// `degraded_window`; requests then get the degraded response, and a single
/// probe decides whether it closes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DegradeBreaker {
    /// The stats window.
    #[serde(default = "policy_defaults::breaker_window")]
    pub stat_window: Duration,
    /// Requests a window must see before thresholds apply.
    #[serde(default = "policy_defaults::breaker_min_requests")]
    pub min_requests: u32,
    /// Errors (status ≥ 500, connect failures) in a window that open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u32>,
    /// Share of errors in a window (0 < ratio ≤ 1) that opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ratio: Option<f64>,
    /// A request at least this slow (to the response head) counts as slow.
    #[serde(default = "policy_defaults::breaker_slow_time")]
    pub slow_time: Duration,
    /// Slow requests in a window that open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_count: Option<u32>,
    /// Share of slow requests in a window that opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_ratio: Option<f64>,
    /// How long the breaker stays open before a probe is let through.
    #[serde(default = "policy_defaults::breaker_window")]
    pub degraded_window: Duration,
    /// Status of the degraded response.
    #[serde(default = "policy_defaults::degraded_status")]
    pub degraded_status: u16,
    /// Body of the degraded response.
    #[serde(default = "policy_defaults::degraded_body")]
    pub degraded_body: String,
}

/// Envoy-style outlier detection: an endpoint that fails repeatedly is
/// ejected for `base_ejection_time` × the times it has been ejected (capped
/// by `max_ejection_time`), and returns when that time is up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive responses with status ≥ 500 (or connect failures) that eject. 0 disables.
    #[serde(default = "policy_defaults::consecutive_failures")]
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 responses or connect failures that eject. 0 disables.
    #[serde(default = "policy_defaults::consecutive_failures")]
    pub consecutive_gateway_errors: u32,
    /// Consecutive connect failures (refused, timed out) that eject. 0 disables.
    #[serde(default = "policy_defaults::consecutive_failures")]
    pub consecutive_connect_failures: u32,
    /// First ejection time; later ejections last longer.
    #[serde(default = "policy_defaults::base_ejection_time")]
    pub base_ejection_time: Duration,
    /// Longest ejection.
    #[serde(default = "policy_defaults::max_ejection_time")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percentage of the cluster; at
    /// least one endpoint can always be ejected.
    #[serde(default = "policy_defaults::max_ejection_percent")]
    pub max_ejection_percent: u32,
}

/// Active health checking of every endpoint of a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` sends `GET path` and checks the status; `tcp` only connects.
    #[serde(default)]
    pub kind: HealthCheckKind,
    /// Path of the HTTP check.
    #[serde(default = "policy_defaults::health_path")]
    pub path: String,
    /// `Host` header of the HTTP check. Default: the endpoint address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that mean healthy: codes (`200`) or ranges (`"200-399"`).
    #[serde(default = "policy_defaults::expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
    /// Time between checks of one endpoint.
    #[serde(default = "policy_defaults::health_interval")]
    pub interval: Duration,
    /// Time a check may take.
    #[serde(default = "policy_defaults::health_timeout")]
    pub timeout: Duration,
    /// Random extra delay added to each interval, so checks spread out.
    #[serde(default = "policy_defaults::health_jitter")]
    pub jitter: Duration,
    /// Consecutive passes that make an unhealthy endpoint healthy.
    #[serde(default = "policy_defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    #[serde(default = "policy_defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

/// A status code or an inclusive range: `200` or `"200-299"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusRange {
    Code(u16),
    Range(String),
}

impl StatusRange {
    /// The inclusive range, or why the text is not one.
    pub fn bounds(&self) -> Result<(u16, u16), String> {
        let (low, high) = match self {
            StatusRange::Code(code) => (*code, *code),
            StatusRange::Range(text) => {
                let parse =
                    |part: &str| part.trim().parse::<u16>().map_err(|_| format!("invalid status range {text:?}"));
                match text.split_once('-') {
                    Some((low, high)) => (parse(low)?, parse(high)?),
                    None => {
                        let code = parse(text)?;
                        (code, code)
                    }
                }
            }
        };
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(format!("status range {low}-{high} must lie within 100-599, low to high"));
        }
        Ok((low, high))
    }
}

/// Retries of one route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (Envoy's `num_retries`).
    #[serde(default = "policy_defaults::retry_attempts")]
    pub attempts: u32,
    /// What is retried: `connect-failure`, `refused-stream`, `reset`, `5xx`,
    /// `gateway-error` (502, 503, 504), `retriable-status-codes` (see `status_codes`).
    #[serde(default = "policy_defaults::retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Statuses retried with `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// Time one try may take to the response head. Default: only the route timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Backoff before retry n: a random time up to `base × min(10, 2^(n−1))`, at most `max_backoff`.
    #[serde(default = "policy_defaults::retry_backoff_base")]
    pub backoff_base: Duration,
    /// Longest backoff. Default: 10 × `backoff_base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
    /// Retries in flight are held to this share of the requests in flight to
    /// the cluster (Envoy's retry budget), so retries cannot multiply an overload.
    #[serde(default = "policy_defaults::retry_budget_percent")]
    pub budget_percent: f64,
    /// Retries allowed regardless of the budget (Envoy's `min_retry_concurrency`).
    #[serde(default = "policy_defaults::retry_min_concurrency")]
    pub min_retry_concurrency: u32,
    /// Retry a non-idempotent request (e.g. POST) that reached the upstream.
    /// Its body must have been buffered (up to 64 KiB). Requests that never
    /// reached the upstream (connect failures) are always retryable.
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetryOn {
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "refused-stream")]
    RefusedStream,
    #[serde(rename = "reset")]
    Reset,
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "gateway-error")]
    GatewayError,
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
}

/// A local token-bucket rate limit: `requests` per `per`, up to `burst` at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added every `per`.
    pub requests: u32,
    /// The refill period.
    #[serde(default = "policy_defaults::rate_limit_per")]
    pub per: Duration,
    /// Bucket size: requests that may pass at once. Default: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket for everyone (`none`), per client IP, or per value of a header.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Most keys tracked; beyond it idle buckets are forgotten first.
    #[serde(default = "policy_defaults::rate_limit_max_keys")]
    pub max_keys: u32,
    /// Requests that may wait for a token instead of being refused (osm-edge's backlog).
    #[serde(default)]
    pub backlog: u32,
    /// Status of the refusal.
    #[serde(default = "policy_defaults::rate_limited_status")]
    pub status: u16,
    /// Headers added to the refusal (`retry-after` is always set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
}

/// What a rate limit counts separately.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    #[default]
    None,
    ClientIp,
    /// The value of this request header (requests without it share one bucket).
    Header(String),
}

/// New TCP connections per `per` on a listener; excess connections are closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRateLimit {
    pub connections: u32,
    #[serde(default = "policy_defaults::rate_limit_per")]
    pub per: Duration,
    /// Connections that may open at once. Default: `connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Bandwidth limits of a listener, in bytes per second, each direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    /// Limits of each client connection.
    #[serde(default)]
    pub per_connection: Directions,
    /// Limits shared by all connections of the listener (over all workers).
    #[serde(default)]
    pub listener: Directions,
}

/// Byte rates (`"1MiB"`, `"64KB"`, `"100000"` per second) of each direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Directions {
    /// Client to upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<ByteRate>,
    /// Upstream to client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<ByteRate>,
}

impl Bandwidth {
    pub fn is_unlimited(&self) -> bool {
        self.per_connection == Directions::default() && self.listener == Directions::default()
    }
}

pub(crate) mod policy_defaults {
    use super::*;

    pub fn max_retries() -> u32 {
        3
    }
    pub fn breaker_window() -> Duration {
        Duration::from_std(StdDuration::from_secs(30))
    }
    pub fn breaker_min_requests() -> u32 {
        100
    }
    pub fn breaker_slow_time() -> Duration {
        Duration::from_std(StdDuration::from_secs(5))
    }
    pub fn degraded_status() -> u16 {
        409
    }
    pub fn degraded_body() -> String {
        "Coming soon ...".into()
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn base_ejection_time() -> Duration {
        Duration::from_std(StdDuration::from_secs(30))
    }
    pub fn max_ejection_time() -> Duration {
        Duration::from_std(StdDuration::from_secs(300))
    }
    pub fn max_ejection_percent() -> u32 {
        10
    }
    pub fn health_path() -> String {
        "/".into()
    }
    pub fn expected_statuses() -> Vec<StatusRange> {
        vec![StatusRange::Range("200-399".into())]
    }
    pub fn health_interval() -> Duration {
        Duration::from_std(StdDuration::from_secs(5))
    }
    pub fn health_timeout() -> Duration {
        Duration::from_std(StdDuration::from_secs(1))
    }
    pub fn health_jitter() -> Duration {
        Duration::from_std(StdDuration::from_millis(500))
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn retry_attempts() -> u32 {
        1
    }
    pub fn retry_on() -> Vec<RetryOn> {
        vec![RetryOn::ConnectFailure, RetryOn::RefusedStream, RetryOn::Reset]
    }
    pub fn retry_backoff_base() -> Duration {
        Duration::from_std(StdDuration::from_millis(25))
    }
    pub fn retry_budget_percent() -> f64 {
        20.0
    }
    pub fn retry_min_concurrency() -> u32 {
        3
    }
    pub fn rate_limit_per() -> Duration {
        Duration::from_std(StdDuration::from_secs(1))
    }
    pub fn rate_limit_max_keys() -> u32 {
        10_000
    }
    pub fn rate_limited_status() -> u16 {
        429
    }
    pub fn overprovisioning_factor() -> f64 {
        1.4
    }
}

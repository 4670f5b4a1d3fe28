//! Resilience policies, between routing and balancing: what may be sent, how
//! often, and what happens when upstreams fail.
//!
//! - [`limits`]: Envoy-style thresholds per cluster (connections, pending,
//!   requests, retries, requests per connection).
//! - [`breaker`]: osm-edge's degrade breaker per cluster.
//! - [`outlier`]: per-endpoint ejection after consecutive failures, and the
//!   availability flags that health checks share.
//! - [`retry`]: per-route retries with backoff and a budget.
//! - [`rate_limit`], [`bandwidth`]: token buckets for requests, connections and bytes.
//! - [`jwt`]: bearer-token (JWT) verification of HTTP routes.
//!
//! Counters that must outlive a reload live in [`ClusterState`] (per cluster
//! name) and in each endpoint's [`outlier::EndpointHealth`]; stateful
//! policies (breakers, limiters) are kept across reloads while their config
//! is unchanged and replaced when it changes (see
//! [`crate::state::Registry::policy_state`]).

pub mod bandwidth;
pub mod breaker;
pub mod jwt;
pub mod limits;
pub mod outlier;
pub mod rate_limit;
pub mod request_limit;
pub mod retry;
pub mod throttle;

pub use limits::{ClusterState, Overload};

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Milliseconds on the process clock (tokio's, so tests with paused time
/// drive it), for timestamps kept in atomics.
pub fn now_millis() -> u64 {
    millis_since_start(Instant::now())
}

pub fn millis_since_start(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| Instant::now() - Duration::from_secs(1));
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

/// The instant of a process-clock timestamp.
pub fn instant_of_millis(millis: u64) -> Instant {
    let now = Instant::now();
    let now_ms = millis_since_start(now);
    if millis >= now_ms {
        now + Duration::from_millis(millis - now_ms)
    } else {
        now - Duration::from_millis(now_ms - millis)
    }
}

//! Per-route retries: which failures are retried, how long to back off, and
//! the budget that keeps retries from multiplying an overload.

use std::time::Duration;

use config_model::RetryOn;

use super::ClusterState;
use crate::error::{ConnectError, ProxyError};

/// A route's retry policy, compiled.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    on_connect_failure: bool,
    on_reset: bool,
    on_refused_stream: bool,
    on_5xx: bool,
    on_gateway_error: bool,
    status_codes: Box<[u16]>,
    pub per_try_timeout: Option<Duration>,
    backoff_base: Duration,
    max_backoff: Duration,
    /// Retries in flight / requests in flight, in percent.
    budget_percent: f64,
    min_retry_concurrency: u32,
    pub retry_non_idempotent: bool,
}

/// Why a try failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: nothing reached the upstream.
    Connect,
    /// An HTTP/2 stream refused before processing (nothing was processed).
    RefusedStream,
    /// The connection broke or the try timed out before a response head.
    Reset,
    /// A complete response head with this status.
    Status(u16),
}

impl Failure {
    /// How a local error reads for retrying; `None` for errors no retry can fix.
    pub fn of(error: &ProxyError) -> Option<Failure> {
        match error {
            ProxyError::Connect(ConnectError::Overloaded(_)) => None,
            ProxyError::Connect(_) => Some(Failure::Connect),
            ProxyError::RefusedStream => Some(Failure::RefusedStream),
            ProxyError::Upstream(_) | ProxyError::UpstreamTimeout => Some(Failure::Reset),
            _ => None,
        }
    }

    /// Whether the request may have reached the upstream application.
    pub fn request_may_have_been_processed(self) -> bool {
        !matches!(self, Failure::Connect | Failure::RefusedStream)
    }
}

impl RetryPolicy {
    pub fn compile(policy: &config_model::RetryPolicy) -> Result<Self, String> {
        let per_try_timeout = policy.per_try_timeout.as_ref().map(|d| d.parse()).transpose()?;
        let backoff_base = policy.backoff_base.parse()?;
        let max_backoff = match &policy.max_backoff {
            Some(max) => max.parse()?,
            None => backoff_base.saturating_mul(10),
        };
        let on = |condition: RetryOn| policy.retry_on.contains(&condition);
        Ok(RetryPolicy {
            attempts: policy.attempts,
            on_connect_failure: on(RetryOn::ConnectFailure),
            on_reset: on(RetryOn::Reset),
            on_refused_stream: on(RetryOn::RefusedStream),
            on_5xx: on(RetryOn::ServerError),
            on_gateway_error: on(RetryOn::GatewayError),
            status_codes: if on(RetryOn::RetriableStatusCodes) {
                policy.status_codes.clone().into()
            } else {
                [].into()
            },
            per_try_timeout,
            backoff_base,
            max_backoff,
            budget_percent: policy.budget_percent,
            min_retry_concurrency: policy.min_retry_concurrency,
            retry_non_idempotent: policy.retry_non_idempotent,
        })
    }

    /// Whether the policy retries this failure at all.
    pub fn retries(&self, failure: Failure) -> bool {
        match failure {
            // Envoy's 5xx and gateway-error include connect failures and resets.
            Failure::Connect => self.on_connect_failure || self.on_5xx || self.on_gateway_error,
            Failure::RefusedStream => self.on_refused_stream || self.on_5xx,
            Failure::Reset => self.on_reset || self.on_5xx || self.on_gateway_error,
            Failure::Status(status) => {
                (self.on_5xx && status >= 500)
                    || (self.on_gateway_error && matches!(status, 502..=504))
                    || self.status_codes.contains(&status)
            }
        }
    }

    /// Whether try number `retry` (1-based) may go: attempts left, the request
    /// safe to repeat, and the cluster's retry budget and `max_retries` allow
    /// it. On `Ok`, a retry slot is held until the guard drops.
    pub fn admit<'a>(
        &self,
        retry: u32,
        failure: Failure,
        idempotent: bool,
        cluster: &'a ClusterState,
    ) -> Option<RetryGuard<'a>> {
        if retry > self.attempts || !self.retries(failure) {
            return None;
        }
        if failure.request_may_have_been_processed() && !idempotent && !self.retry_non_idempotent {
            return None;
        }
        // The budget: retries in flight may be at most a share of the
        // requests in flight, but a few are always allowed.
        let active = cluster.requests.load(std::sync::atomic::Ordering::Relaxed);
        let retrying = cluster.retries.load(std::sync::atomic::Ordering::Relaxed);
        let budget = ((f64::from(active) * self.budget_percent / 100.0) as u32).max(self.min_retry_concurrency);
        if retrying >= budget {
            return None;
        }
        cluster.admit_retry().then_some(RetryGuard(cluster))
    }

    /// osm-edge's backoff: a random time up to `base × min(10, 2^(n−1))`,
    /// capped at `max_backoff` ("full jitter", so retries of many clients
    /// do not arrive together).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(4);
        let ceiling = self.backoff_base.saturating_mul(factor.min(10)).min(self.max_backoff);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(nanos / 2..=nanos.max(1)))
    }
}

impl RetryPolicy {
    /// Waits out the backoff before retry `retry`, never past the route's deadline.
    pub async fn wait_backoff(&self, retry: u32, deadline: Option<tokio::time::Instant>) {
        let backoff = self.backoff(retry);
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + backoff)).await,
            None => tokio::time::sleep(backoff).await,
        }
    }
}

/// A retry slot of the cluster, released on drop.
pub struct RetryGuard<'a>(&'a ClusterState);

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        self.0.finish_retry();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        let parsed: config_model::RetryPolicy = serde_json::from_value(serde_json::from_str(yaml).unwrap()).unwrap();
        RetryPolicy::compile(&parsed).unwrap()
    }

    #[test]
    fn conditions() {
        let p = policy(r#"{"retry_on": ["5xx"]}"#);
        assert!(p.retries(Failure::Status(503)) && p.retries(Failure::Status(500)) && !p.retries(Failure::Status(404)));
        assert!(p.retries(Failure::Connect) && p.retries(Failure::Reset));
        let p = policy(r#"{"retry_on": ["retriable-status-codes"], "status_codes": [429]}"#);
        assert!(p.retries(Failure::Status(429)) && !p.retries(Failure::Status(503)) && !p.retries(Failure::Connect));
        let p = policy(r#"{"retry_on": ["gateway-error"]}"#);
        assert!(p.retries(Failure::Status(502)) && !p.retries(Failure::Status(500)));
    }

    #[test]
    fn safety_attempts_and_budget() {
        let cluster = ClusterState::default();
        let p = policy(r#"{"attempts": 2, "retry_on": ["5xx"]}"#);
        // A POST that reached the upstream is not retried; one that never connected is.
        assert!(p.admit(1, Failure::Status(503), false, &cluster).is_none());
        assert!(p.admit(1, Failure::Connect, false, &cluster).is_some());
        assert!(p.admit(2, Failure::Status(503), true, &cluster).is_some());
        assert!(p.admit(3, Failure::Status(503), true, &cluster).is_none());
        // min_retry_concurrency 3 (and max_retries 3) hold with no other load.
        let held: Vec<_> = (0..3).map(|_| p.admit(1, Failure::Status(503), true, &cluster).unwrap()).collect();
        assert!(p.admit(1, Failure::Status(503), true, &cluster).is_none());
        drop(held);
        assert!(p.admit(1, Failure::Status(503), true, &cluster).is_some());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(r#"{"backoff_base": "10ms"}"#);
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10), "{first:?}");
            let late = p.backoff(9);
            assert!(late <= Duration::from_millis(100), "{late:?}");
        }
    }
}

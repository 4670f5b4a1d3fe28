//! Validation of the resilience policies (see `crate::policy`).

use std::time::Duration as StdDuration;

use super::Validator;
use crate::model::Cluster;
use crate::policy::*;
use crate::values::{is_hostname, is_token, Duration};

impl Validator {
    /// A duration that must parse and be greater than zero. `path` is made
    /// only for an error (as in the helpers below).
    pub(super) fn positive(&mut self, path: impl Fn() -> String, value: &Duration) -> Option<StdDuration> {
        let parsed = self.check_at(&path, value.parse())?;
        if parsed.is_zero() {
            self.error(path(), "must be greater than 0");
            return None;
        }
        Some(parsed)
    }

    fn ratio(&mut self, path: impl FnOnce() -> String, value: Option<f64>) {
        if let Some(ratio) = value {
            if !(ratio > 0.0 && ratio <= 1.0) {
                self.error(path(), "must be greater than 0 and at most 1");
            }
        }
    }

    fn at_least_one(&mut self, path: impl FnOnce() -> String, value: Option<u32>) {
        if value == Some(0) {
            self.error(path(), "must be at least 1 (leave it out for no limit)");
        }
    }

    pub(super) fn cluster_policies(&mut self, path: &dyn std::fmt::Display, cluster: &Cluster) {
        let limits = &cluster.limits;
        self.at_least_one(|| format!("{path}.limits.max_connections"), limits.max_connections);
        self.at_least_one(|| format!("{path}.limits.max_pending_requests"), limits.max_pending_requests);
        self.at_least_one(|| format!("{path}.limits.max_requests"), limits.max_requests);
        self.at_least_one(|| format!("{path}.limits.max_requests_per_connection"), limits.max_requests_per_connection);

        if let Some(breaker) = &cluster.breaker {
            let p = format!("{path}.breaker");
            self.positive(|| format!("{p}.stat_window"), &breaker.stat_window);
            self.positive(|| format!("{p}.slow_time"), &breaker.slow_time);
            self.positive(|| format!("{p}.degraded_window"), &breaker.degraded_window);
            if breaker.min_requests == 0 {
                self.error(format!("{p}.min_requests"), "must be at least 1");
            }
            self.at_least_one(|| format!("{p}.error_count"), breaker.error_count);
            self.at_least_one(|| format!("{p}.slow_count"), breaker.slow_count);
            self.ratio(|| format!("{p}.error_ratio"), breaker.error_ratio);
            self.ratio(|| format!("{p}.slow_ratio"), breaker.slow_ratio);
            if breaker.error_count.is_none()
                && breaker.error_ratio.is_none()
                && breaker.slow_count.is_none()
                && breaker.slow_ratio.is_none()
            {
                self.error(p.clone(), "needs at least one of error_count, error_ratio, slow_count, slow_ratio");
            }
            if !(200..=599).contains(&breaker.degraded_status) {
                self.error(format!("{p}.degraded_status"), "must be between 200 and 599");
            }
            if breaker.degraded_body.len() > 64 * 1024 {
                self.error(format!("{p}.degraded_body"), "must be at most 64 KiB");
            }
        }

        if let Some(outlier) = &cluster.outlier_detection {
            let p = format!("{path}.outlier_detection");
            let base = self.positive(|| format!("{p}.base_ejection_time"), &outlier.base_ejection_time);
            let max = self.positive(|| format!("{p}.max_ejection_time"), &outlier.max_ejection_time);
            if let (Some(base), Some(max)) = (base, max) {
                if max < base {
                    self.error(format!("{p}.max_ejection_time"), "must be at least base_ejection_time");
                }
            }
            if outlier.max_ejection_percent > 100 {
                self.error(format!("{p}.max_ejection_percent"), "must be between 0 and 100");
            }
        }

        if let Some(check) = &cluster.health_check {
            let p = format!("{path}.health_check");
            if !check.path.starts_with('/')
                || check.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                self.error(
                    format!("{p}.path"),
                    format!("invalid path {:?}: must start with / and have no spaces", check.path),
                );
            }
            if let Some(host) = &check.host {
                let name = host.rsplit_once(':').map_or(host.as_str(), |(name, _)| name);
                if !is_hostname(name) && name.parse::<std::net::IpAddr>().is_err() {
                    self.error(format!("{p}.host"), format!("invalid host {host:?}"));
                }
            }
            if check.expected_statuses.is_empty() {
                self.error(format!("{p}.expected_statuses"), "must list at least one status");
            }
            for (i, range) in check.expected_statuses.iter().enumerate() {
                self.check(format!("{p}.expected_statuses[{i}]"), range.bounds());
            }
            let interval = self.positive(|| format!("{p}.interval"), &check.interval);
            let timeout = self.positive(|| format!("{p}.timeout"), &check.timeout);
            self.check(format!("{p}.jitter"), check.jitter.parse());
            if let (Some(interval), Some(timeout)) = (interval, timeout) {
                if timeout > interval {
                    self.error(format!("{p}.timeout"), "must not exceed the interval");
                }
            }
            if check.healthy_threshold == 0 {
                self.error(format!("{p}.healthy_threshold"), "must be at least 1");
            }
            if check.unhealthy_threshold == 0 {
                self.error(format!("{p}.unhealthy_threshold"), "must be at least 1");
            }
        }

        if !(1.0..=100.0).contains(&cluster.overprovisioning_factor) {
            self.error(format!("{path}.overprovisioning_factor"), "must be between 1.0 and 100.0");
        }
        if let Some(limit) = &cluster.rate_limit {
            self.rate_limit(&format!("{path}.rate_limit"), limit);
        }
    }

    pub(super) fn retry(&mut self, path: &dyn std::fmt::Display, retry: &RetryPolicy) {
        if retry.attempts > 16 {
            self.error(format!("{path}.attempts"), "must be at most 16");
        }
        if retry.retry_on.is_empty() {
            self.error(format!("{path}.retry_on"), "must list at least one condition");
        }
        let wants_codes = retry.retry_on.contains(&RetryOn::RetriableStatusCodes);
        if wants_codes && retry.status_codes.is_empty() {
            self.error(format!("{path}.status_codes"), "retriable-status-codes needs at least one status code");
        }
        if !wants_codes && !retry.status_codes.is_empty() {
            self.error(format!("{path}.status_codes"), "only used with retry_on: retriable-status-codes");
        }
        for (i, code) in retry.status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                self.error(format!("{path}.status_codes[{i}]"), "must be between 100 and 599");
            }
        }
        if let Some(per_try) = &retry.per_try_timeout {
            self.positive(|| format!("{path}.per_try_timeout"), per_try);
        }
        let base = self.positive(|| format!("{path}.backoff_base"), &retry.backoff_base);
        if let Some(max) = &retry.max_backoff {
            if let (Some(max), Some(base)) = (self.positive(|| format!("{path}.max_backoff"), max), base) {
                if max < base {
                    self.error(format!("{path}.max_backoff"), "must be at least backoff_base");
                }
            }
        }
        if !(0.0..=100.0).contains(&retry.budget_percent) {
            self.error(format!("{path}.budget_percent"), "must be between 0 and 100");
        }
    }

    pub(super) fn rate_limit(&mut self, path: &str, limit: &RateLimit) {
        if limit.requests == 0 {
            self.error(format!("{path}.requests"), "must be at least 1");
        }
        self.positive(|| format!("{path}.per"), &limit.per);
        self.at_least_one(|| format!("{path}.burst"), limit.burst);
        if let RateLimitKey::Header(name) = &limit.key {
            if !is_token(name) {
                self.error(format!("{path}.key.header"), format!("invalid header name {name:?}"));
            }
        }
        if !(1..=1_000_000).contains(&limit.max_keys) {
            self.error(format!("{path}.max_keys"), "must be between 1 and 1000000");
        }
        if limit.backlog > 10_000 {
            self.error(format!("{path}.backlog"), "must be at most 10000");
        }
        if !(400..=599).contains(&limit.status) {
            self.error(format!("{path}.status"), "must be between 400 and 599");
        }
        for (name, value) in &limit.response_headers {
            let entry = format!("{path}.response_headers.{name}");
            if !is_token(name) {
                self.error(entry.clone(), format!("invalid header name {name:?}"));
            } else if super::is_protected_header(name) {
                self.error(entry.clone(), format!("{name:?} is managed by the proxy and cannot be set"));
            }
            self.header_value(&entry, value);
        }
    }

    pub(super) fn connection_rate_limit(&mut self, path: &str, limit: &ConnectionRateLimit) {
        if limit.connections == 0 {
            self.error(format!("{path}.connections"), "must be at least 1");
        }
        self.positive(|| format!("{path}.per"), &limit.per);
        self.at_least_one(|| format!("{path}.burst"), limit.burst);
    }

    pub(super) fn bandwidth(&mut self, path: &str, bandwidth: &Bandwidth) {
        for (scope, directions) in [("per_connection", &bandwidth.per_connection), ("listener", &bandwidth.listener)] {
            for (direction, rate) in [("upload", &directions.upload), ("download", &directions.download)] {
                if let Some(rate) = rate {
                    self.check(format!("{path}.{scope}.{direction}"), rate.parse());
                }
            }
        }
    }
}

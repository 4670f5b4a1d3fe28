//! Endpoint availability: outlier ejection (passive) and the flag active
//! health checks set. An endpoint is available when no flag is set; every
//! change of availability is counted in the cluster's `unavailable` counter,
//! so balancing can skip all checks while it is zero.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::ClusterState;
use crate::route::EndpointState;

/// Failing active health checks.
pub const HEALTH_CHECK_FAILED: u8 = 1;
/// Ejected by outlier detection.
pub const EJECTED: u8 = 2;

/// Availability and outlier counters of one endpoint.
#[derive(Default)]
pub struct EndpointHealth {
    flags: AtomicU8,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_connect: AtomicU32,
    times_ejected: AtomicU32,
    /// Process-clock millis until which the endpoint is ejected.
    ejected_until: AtomicU64,
}

impl EndpointHealth {
    pub fn is_available(&self) -> bool {
        self.flags.load(Ordering::Relaxed) == 0
    }

    pub fn flags(&self) -> u8 {
        self.flags.load(Ordering::Relaxed)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    /// Sets or clears one flag; keeps the cluster's `unavailable` count exact.
    /// Returns whether the flag changed.
    pub fn set_flag(&self, cluster: &ClusterState, flag: u8, on: bool) -> bool {
        let before = if on {
            self.flags.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!flag, Ordering::AcqRel)
        };
        let after = if on { before | flag } else { before & !flag };
        if before == 0 && after != 0 {
            cluster.unavailable.fetch_add(1, Ordering::Relaxed);
        } else if before != 0 && after == 0 {
            cluster.unavailable.fetch_sub(1, Ordering::Relaxed);
        }
        before != after
    }

    /// Clears both flags and the outlier history: the endpoint leaves the config.
    pub fn reset(&self, cluster: &ClusterState) {
        self.set_flag(cluster, HEALTH_CHECK_FAILED, false);
        self.reset_outlier(cluster);
    }

    /// Forgets outlier history and returns an ejected endpoint (the outlier
    /// policy changed or went away).
    pub fn reset_outlier(&self, cluster: &ClusterState) {
        if self.set_flag(cluster, EJECTED, false) {
            cluster.ejected.fetch_sub(1, Ordering::Relaxed);
        }
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_connect.store(0, Ordering::Relaxed);
        self.times_ejected.store(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
    }
}

/// Outlier detection settings of a cluster, compiled.
#[derive(Clone, Debug)]
pub struct OutlierSettings {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// What one try to an endpoint came to, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryOutcome {
    Response(u16),
    /// A TCP connection was made (the only outcome a TCP relay sees).
    Connected,
    ConnectFailure,
    /// The connection broke or timed out before a response head.
    Failure,
}

/// Records a try's outcome; ejects the endpoint when a consecutive-failure
/// threshold is reached and the ejection cap allows it. Returns the ejection
/// time when it ejected: the caller schedules the return.
pub fn observe(
    settings: &OutlierSettings,
    endpoint: &EndpointState,
    cluster: &ClusterState,
    cluster_size: usize,
    outcome: TryOutcome,
) -> Option<Duration> {
    let health = &endpoint.health;
    let (server_error, gateway_error, connect_failure) = match outcome {
        TryOutcome::Response(status) => (status >= 500, matches!(status, 502..=504), false),
        TryOutcome::Connected => (false, false, false),
        TryOutcome::ConnectFailure => (true, true, true),
        TryOutcome::Failure => (true, true, false),
    };
    // Each counter counts a run; anything else ends it. The common case (a
    // success after a success) only loads.
    let bump = |counter: &AtomicU32, failed: bool| -> u32 {
        if failed {
            counter.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            if counter.load(Ordering::Relaxed) != 0 {
                counter.store(0, Ordering::Relaxed);
            }
            0
        }
    };
    let run_5xx = bump(&health.consecutive_5xx, server_error);
    let run_gateway = bump(&health.consecutive_gateway, gateway_error);
    let run_connect = bump(&health.consecutive_connect, connect_failure);
    let reached = |run: u32, threshold: u32| threshold > 0 && run >= threshold;
    if !(reached(run_5xx, settings.consecutive_5xx)
        || reached(run_gateway, settings.consecutive_gateway_errors)
        || reached(run_connect, settings.consecutive_connect_failures))
    {
        return None;
    }
    eject(settings, endpoint, cluster, cluster_size)
}

fn eject(
    settings: &OutlierSettings,
    endpoint: &EndpointState,
    cluster: &ClusterState,
    cluster_size: usize,
) -> Option<Duration> {
    let health = &endpoint.health;
    // Envoy's rule: at most max_ejection_percent of the cluster, but at least one endpoint.
    let cap = ((cluster_size as u64 * u64::from(settings.max_ejection_percent)) / 100).max(1) as u32;
    if cluster.ejected.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < cap).then_some(n + 1)).is_err() {
        return None;
    }
    if !health.set_flag(cluster, EJECTED, true) {
        // Another worker ejected it an instant ago.
        cluster.ejected.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let times = health.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
    let time = settings.base_ejection_time.saturating_mul(times).min(settings.max_ejection_time);
    health.ejected_until.store(super::now_millis() + time.as_millis() as u64, Ordering::Relaxed);
    health.consecutive_5xx.store(0, Ordering::Relaxed);
    health.consecutive_gateway.store(0, Ordering::Relaxed);
    health.consecutive_connect.store(0, Ordering::Relaxed);
    tracing::info!(cluster = %endpoint.cluster, endpoint = %endpoint.addr, ejection_ms = time.as_millis() as u64, times, "endpoint ejected");
    endpoint.metrics.ejections.inc();
    Some(time)
}

/// Returns an ejected endpoint once its time is up; run as a task after an
/// ejection. Keeps the endpoint's state alive while waiting, which is
/// harmless if it left the config meanwhile (its flags were cleared then).
pub async fn return_after(endpoint: Arc<EndpointState>, cluster: Arc<ClusterState>) {
    loop {
        let until = endpoint.health.ejected_until.load(Ordering::Relaxed);
        let now = super::now_millis();
        if now >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(until - now)).await;
    }
    if endpoint.health.set_flag(&cluster, EJECTED, false) {
        cluster.ejected.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(cluster = %endpoint.cluster, endpoint = %endpoint.addr, "ejected endpoint returns");
    }
}

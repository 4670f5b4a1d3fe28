//! Envoy-style cluster thresholds. Counters are per cluster over all
//! workers and survive reloads; the limits are re-set by every compile, so a
//! changed limit applies at once to the traffic already counted.

use std::sync::atomic::{AtomicU32, Ordering};

use prometheus_client::metrics::counter::Counter;

/// Which limit refused a request; the value of `x-edgeplane-overloaded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overload {
    MaxConnections,
    MaxPendingRequests,
    MaxRequests,
}

impl Overload {
    pub fn as_str(self) -> &'static str {
        match self {
            Overload::MaxConnections => "max_connections",
            Overload::MaxPendingRequests => "max_pending_requests",
            Overload::MaxRequests => "max_requests",
        }
    }
}

pub const OVERLOAD_REASONS: [&str; 4] = ["max_connections", "max_pending_requests", "max_requests", "max_retries"];

/// A cluster's load and limits. `u32::MAX` means unlimited.
pub struct ClusterState {
    pub connections: AtomicU32,
    pub pending: AtomicU32,
    pub requests: AtomicU32,
    pub retries: AtomicU32,
    pub max_connections: AtomicU32,
    pub max_pending: AtomicU32,
    pub max_requests: AtomicU32,
    pub max_retries: AtomicU32,
    /// 0: unlimited.
    pub max_requests_per_connection: AtomicU32,
    /// Endpoints currently ejected by outlier detection.
    pub ejected: AtomicU32,
    /// Endpoints currently unavailable (ejected or failing health checks):
    /// while zero, balancing skips every availability check.
    pub unavailable: AtomicU32,
    /// `edgeplane_upstream_overflow_total{cluster, limit}`, in [`OVERLOAD_REASONS`] order.
    overflow: std::sync::OnceLock<[Counter; 4]>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            connections: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            max_connections: AtomicU32::new(u32::MAX),
            max_pending: AtomicU32::new(u32::MAX),
            max_requests: AtomicU32::new(u32::MAX),
            max_retries: AtomicU32::new(3),
            max_requests_per_connection: AtomicU32::new(0),
            ejected: AtomicU32::new(0),
            unavailable: AtomicU32::new(0),
            overflow: std::sync::OnceLock::new(),
        }
    }
}

impl ClusterState {
    /// Sets the limits; `overflow` makes the overflow counters the first time.
    pub fn configure(&self, limits: &config_model::ClusterLimits, overflow: impl FnOnce() -> [Counter; 4]) {
        self.max_connections.store(limits.max_connections.unwrap_or(u32::MAX), Ordering::Relaxed);
        self.max_pending.store(limits.max_pending_requests.unwrap_or(u32::MAX), Ordering::Relaxed);
        self.max_requests.store(limits.max_requests.unwrap_or(u32::MAX), Ordering::Relaxed);
        self.max_retries.store(limits.max_retries, Ordering::Relaxed);
        self.max_requests_per_connection.store(limits.max_requests_per_connection.unwrap_or(0), Ordering::Relaxed);
        self.overflow.get_or_init(overflow);
    }

    fn count_overflow(&self, index: usize) {
        if let Some(counters) = self.overflow.get() {
            counters[index].inc();
        }
    }

    /// Admits a request to the cluster, or says which limit is full.
    pub fn admit_request(&self) -> Result<(), Overload> {
        if acquire(&self.requests, &self.max_requests) {
            Ok(())
        } else {
            self.count_overflow(2);
            Err(Overload::MaxRequests)
        }
    }

    pub fn finish_request(&self) {
        self.requests.fetch_sub(1, Ordering::Relaxed);
    }

    /// Admits a connection attempt: a request now waits for it (pending) and
    /// it will count as a connection once made.
    pub fn admit_connect(&self) -> Result<(), Overload> {
        if self.connections.load(Ordering::Relaxed) >= self.max_connections.load(Ordering::Relaxed) {
            self.count_overflow(0);
            return Err(Overload::MaxConnections);
        }
        if !acquire(&self.pending, &self.max_pending) {
            self.count_overflow(1);
            return Err(Overload::MaxPendingRequests);
        }
        Ok(())
    }

    pub fn connect_done(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes a retry slot (Envoy's `max_retries`: retries in flight).
    pub fn admit_retry(&self) -> bool {
        let admitted = acquire(&self.retries, &self.max_retries);
        if !admitted {
            self.count_overflow(3);
        }
        admitted
    }

    pub fn finish_retry(&self) {
        self.retries.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a connection that has served `served` requests may serve another.
    pub fn connection_reusable(&self, served: u32) -> bool {
        let max = self.max_requests_per_connection.load(Ordering::Relaxed);
        max == 0 || served < max
    }
}

/// Increments `counter` unless it has reached `limit`.
fn acquire(counter: &AtomicU32, limit: &AtomicU32) -> bool {
    let limit = limit.load(Ordering::Relaxed);
    if limit == u32::MAX {
        counter.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(requests: u32, pending: u32, connections: u32) -> ClusterState {
        let state = ClusterState::default();
        let limits = config_model::ClusterLimits {
            max_connections: Some(connections),
            max_pending_requests: Some(pending),
            max_requests: Some(requests),
            max_retries: 1,
            max_requests_per_connection: Some(2),
        };
        state.configure(&limits, || std::array::from_fn(|_| Counter::default()));
        state
    }

    #[test]
    fn requests_are_held_to_the_limit() {
        let state = limited(2, 10, 10);
        assert!(state.admit_request().is_ok());
        assert!(state.admit_request().is_ok());
        assert_eq!(state.admit_request(), Err(Overload::MaxRequests));
        state.finish_request();
        assert!(state.admit_request().is_ok());
    }

    #[test]
    fn pending_and_connections() {
        let state = limited(10, 1, 1);
        assert!(state.admit_connect().is_ok());
        assert_eq!(state.admit_connect(), Err(Overload::MaxPendingRequests));
        state.connect_done();
        state.connections.fetch_add(1, Ordering::Relaxed);
        assert_eq!(state.admit_connect(), Err(Overload::MaxConnections));
    }

    #[test]
    fn retries_and_reuse() {
        let state = limited(10, 10, 10);
        assert!(state.admit_retry());
        assert!(!state.admit_retry());
        state.finish_retry();
        assert!(state.admit_retry());
        assert!(state.connection_reusable(1));
        assert!(!state.connection_reusable(2));
    }
}

//! A LIFO stack of idle upstream connections for one endpoint on one worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::route::{EndpointState, PoolSettings};

/// A pooled connection that can tell whether it is still usable.
pub trait Reusable {
    /// Cheap check made at checkout and by the idle sweep.
    fn is_reusable(&mut self) -> bool;
}

pub struct IdleStack<T> {
    idle: Vec<(T, Instant)>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Set on first use; its counters and gauges track this stack's size.
    endpoint: Option<Arc<EndpointState>>,
}

impl<T> Default for IdleStack<T> {
    fn default() -> Self {
        IdleStack { idle: Vec::new(), idle_timeout: Duration::ZERO, max_idle: 0, endpoint: None }
    }
}

impl<T: Reusable> IdleStack<T> {
    /// Applies the cluster's current pool settings (they may change on reload).
    pub fn configure(&mut self, endpoint: &Arc<EndpointState>, settings: &PoolSettings) {
        self.idle_timeout = settings.idle_timeout;
        self.max_idle = settings.max_idle;
        if self.endpoint.is_none() {
            self.endpoint = Some(endpoint.clone());
        }
    }

    /// The most recently used connection that is still good.
    pub fn take(&mut self, now: Instant) -> Option<T> {
        while let Some((mut connection, since)) = self.idle.pop() {
            self.count(-1);
            if now.duration_since(since) < self.idle_timeout && connection.is_reusable() {
                return Some(connection);
            }
        }
        None
    }

    /// Returns a connection; it is dropped (closed) when the stack is full.
    pub fn put(&mut self, connection: T, now: Instant) {
        if self.idle.len() < self.max_idle {
            self.idle.push((connection, now));
            self.count(1);
        }
    }

    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.idle_timeout;
        let before = self.idle.len();
        self.idle.retain_mut(|(connection, since)| now.duration_since(*since) < timeout && connection.is_reusable());
        for _ in self.idle.len()..before {
            self.count(-1);
        }
    }

    pub fn clear(&mut self) {
        for _ in 0..self.idle.len() {
            self.count(-1);
        }
        self.idle.clear();
    }

    fn count(&self, delta: i32) {
        if let Some(endpoint) = &self.endpoint {
            if delta > 0 {
                endpoint.idle.fetch_add(1, Ordering::Relaxed);
                endpoint.metrics.pool_idle.inc();
            } else {
                endpoint.idle.fetch_sub(1, Ordering::Relaxed);
                endpoint.metrics.pool_idle.dec();
            }
        }
    }
}

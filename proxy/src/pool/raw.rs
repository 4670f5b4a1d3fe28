//! Plain upstream TCP connections for the HTTP/1 fast path, which speaks
//! HTTP/1 on them itself.

use std::sync::Arc;

use tokio::time::Instant;

use super::idle::Reusable;
use super::POOLS;
use crate::io::UpstreamStream;
use crate::route::{EndpointState, PoolSettings};

impl Reusable for UpstreamStream {
    /// An idle HTTP/1 connection must have nothing to read: data or EOF
    /// means the upstream closed it or broke the protocol (over TLS, a
    /// close_notify). tokio answers from its cached readiness without a
    /// syscall in the common case.
    fn is_reusable(&mut self) -> bool {
        self.io_mut().is_quiet()
    }
}

/// An idle connection to the endpoint, if this worker has one.
pub fn checkout(endpoint: &Arc<EndpointState>, settings: &PoolSettings) -> Option<UpstreamStream> {
    POOLS.with_borrow_mut(|pools| {
        let pool = pools.raw(endpoint.id);
        pool.configure(endpoint, settings);
        pool.take(Instant::now())
    })
}

/// Returns a connection whose last exchange ended cleanly.
pub fn checkin(endpoint: &Arc<EndpointState>, connection: UpstreamStream) {
    if !connection.may_serve_more() {
        return;
    }
    // The thread-local may be gone while the worker shuts down.
    let _ = POOLS.try_with(|pools| pools.borrow_mut().raw(endpoint.id).put(connection, Instant::now()));
}

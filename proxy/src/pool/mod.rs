//! Upstream connection pools.
//!
//! Pools are per worker thread (a thread-local table indexed by endpoint id):
//! a worker never shares a connection with another, so checkout and return
//! take no lock and touch no shared cache line. The endpoint ids come from
//! [`crate::state::Registry`] and are stable across reloads, so a reload keeps
//! every pooled connection.
//!
//! - HTTP/1: a LIFO stack of idle plain TCP connections per endpoint
//!   ([`raw`]); the fast path and the HTTP/1 client used for requests that
//!   come through hyper both speak HTTP/1 on them. A connection returns to
//!   the stack when its response has been read to the end.
//! - Upgrades (WebSocket) get a connection of their own ([`send_upgrade`]).
//! - HTTP/2: a few shared connections per endpoint, each carrying up to
//!   `max_concurrent_streams` requests; another is dialled when all are full,
//!   with at most one dial in flight per endpoint.

mod h2;
mod idle;
pub mod raw;
mod upgrade;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use config_model::ClusterProtocol;
use http::{Request, Response};

use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::route::{EndpointState, PoolSettings};

pub use upgrade::send_upgrade;

/// The lease of a pooled connection for one request; dropping it returns the
/// connection (HTTP/1) or frees its stream slot (HTTP/2).
pub enum PoolGuard {
    /// An HTTP/2 stream slot. (HTTP/1 bodies return their own connection.)
    Http2(h2::Lease),
    None,
}

/// Sends a request to an endpoint over a pooled (or new) connection.
pub async fn send(
    endpoint: &Arc<EndpointState>,
    settings: &PoolSettings,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<(Response<ProxyBody>, PoolGuard), ProxyError> {
    match endpoint.protocol {
        ClusterProtocol::Http1 => {
            let response = crate::http::h1::client::send(endpoint, settings, connect_timeout, request).await?;
            Ok((response, PoolGuard::None))
        }
        ClusterProtocol::Http2 => {
            let (response, lease) = h2::send(endpoint, settings, connect_timeout, request).await?;
            Ok((response.map(ProxyBody::Incoming), PoolGuard::Http2(lease)))
        }
    }
}

thread_local! {
    static POOLS: RefCell<WorkerPools> = RefCell::new(WorkerPools::default());
}

#[derive(Default)]
struct WorkerPools {
    http2: Vec<h2::EndpointPool>,
    raw: Vec<idle::IdleStack<crate::io::UpstreamStream>>,
}

impl WorkerPools {
    fn raw(&mut self, id: usize) -> &mut idle::IdleStack<crate::io::UpstreamStream> {
        slot(&mut self.raw, id)
    }

    fn http2(&mut self, id: usize) -> &mut h2::EndpointPool {
        slot(&mut self.http2, id)
    }
}

/// The entry for an endpoint id, created empty on first use.
fn slot<T: Default>(pools: &mut Vec<T>, id: usize) -> &mut T {
    if pools.len() <= id {
        pools.resize_with(id + 1, Default::default);
    }
    &mut pools[id]
}

/// Closes this worker's idle connections that have outlived their idle
/// timeout. Called periodically by each worker.
pub fn sweep_idle() {
    let now = tokio::time::Instant::now();
    POOLS.with_borrow_mut(|pools| {
        for pool in &mut pools.http2 {
            pool.sweep(now);
        }
        for pool in &mut pools.raw {
            pool.sweep(now);
        }
    });
}

/// Drops this worker's pools of endpoints that left the config.
pub fn release(ids: &[usize]) {
    POOLS.with_borrow_mut(|pools| {
        for id in ids {
            if let Some(pool) = pools.http2.get_mut(*id) {
                pool.clear();
            }
            if let Some(pool) = pools.raw.get_mut(*id) {
                pool.clear();
            }
        }
    });
}
